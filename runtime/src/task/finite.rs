//! Finds the floats JSON cannot hold in a value about to be stored.
//!
//! `serde_json` writes NaN and the infinities as `null`, so a result holding one would be
//! stored as something no reader decodes back: such a result is the task's error
//! ([`OutputNotSerializable`](crate::OutputNotSerializable)), never a success with a lost
//! value. The check walks the value with a serializer that writes nothing; it runs only
//! when the JSON text holds a `null` (a non-finite float always shows as one), so results
//! without `null` pay nothing.

use std::fmt::{self, Write as _};

use serde::ser::{self, Serialize};

/// Why a value cannot be stored (empty: some other serializer error, not ours to report).
#[derive(Debug)]
struct NonFinite(String);

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NonFinite {}

impl ser::Error for NonFinite {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        NonFinite(String::new())
    }
}

/// Checks that `json` (the text `value` serialized to) lost nothing: `Err` names the first
/// NaN or infinite float in `value`, where it is and what to do instead.
pub(crate) fn check<T: Serialize + ?Sized>(value: &T, json: &str) -> Result<(), String> {
    // A number, a string or a boolean holds no float that could be lost (a lost one is a
    // `null`, or inside an array or object): one byte tells, before any search.
    if matches!(
        json.as_bytes().first(),
        Some(b'0'..=b'9' | b'-' | b'"' | b't' | b'f') | None
    ) {
        return Ok(());
    }
    // A byte search for the `n` first: most results (numbers, plain text) have none, and
    // it costs less than setting up the substring search.
    if !json.as_bytes().contains(&b'n') || !json.contains("null") {
        return Ok(());
    }
    let mut path = String::new();
    match value.serialize(Finder { path: &mut path }) {
        // Another serializer error cannot happen here (the value was just serialized to
        // JSON), and would be no reason to refuse the result.
        Err(NonFinite(msg)) if !msg.is_empty() => Err(msg),
        _ => Ok(()),
    }
}

/// Serializes nothing; fails on the first non-finite float, naming its path.
struct Finder<'a> {
    path: &'a mut String,
}

impl<'a> Finder<'a> {
    fn float(self, finite: bool, shown: &dyn fmt::Display) -> Result<(), NonFinite> {
        if finite {
            return Ok(());
        }
        let at = if self.path.is_empty() {
            "the value".to_owned()
        } else {
            format!("`{}`", self.path)
        };
        Err(NonFinite(format!(
            "{at} is {shown}, which JSON cannot hold (it would be stored as `null`); \
             return an `Option` or a string for values that may not be finite"
        )))
    }

    fn compound(self) -> Compound<'a> {
        let base = self.path.len();
        Compound {
            path: self.path,
            base,
            index: 0,
            key: String::new(),
        }
    }
}

/// A sequence, tuple, map or struct being walked: each element extends the path.
struct Compound<'a> {
    path: &'a mut String,
    base: usize,
    index: usize,
    key: String,
}

impl Compound<'_> {
    fn at<T: Serialize + ?Sized>(
        &mut self,
        seg: fmt::Arguments<'_>,
        v: &T,
    ) -> Result<(), NonFinite> {
        self.path.truncate(self.base);
        let _ = self.path.write_fmt(seg);
        v.serialize(Finder {
            path: &mut *self.path,
        })?;
        self.path.truncate(self.base);
        Ok(())
    }

    fn next<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NonFinite> {
        let i = self.index;
        self.index += 1;
        self.at(format_args!("[{i}]"), v)
    }
}

macro_rules! ok {
    ($($name:ident: $ty:ty),* $(,)?) => {
        $(fn $name(self, _v: $ty) -> Result<(), NonFinite> { Ok(()) })*
    };
}

impl<'a> ser::Serializer for Finder<'a> {
    type Ok = ();
    type Error = NonFinite;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    ok!(
        serialize_bool: bool,
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128,
        serialize_char: char,
        serialize_str: &str,
        serialize_bytes: &[u8],
        serialize_unit_struct: &'static str,
    );

    fn serialize_f32(self, v: f32) -> Result<(), NonFinite> {
        self.float(v.is_finite(), &v)
    }

    fn serialize_f64(self, v: f64) -> Result<(), NonFinite> {
        self.float(v.is_finite(), &v)
    }

    fn serialize_none(self) -> Result<(), NonFinite> {
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), NonFinite> {
        v.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), NonFinite> {
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
    ) -> Result<(), NonFinite> {
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        v: &T,
    ) -> Result<(), NonFinite> {
        v.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), NonFinite> {
        self.compound().at(format_args!(".{variant}"), v)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, NonFinite> {
        Ok(self.compound())
    }

    fn serialize_tuple(self, _len: usize) -> Result<Compound<'a>, NonFinite> {
        Ok(self.compound())
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, NonFinite> {
        Ok(self.compound())
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, NonFinite> {
        let _ = write!(self.path, ".{variant}");
        Ok(self.compound())
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, NonFinite> {
        Ok(self.compound())
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Compound<'a>, NonFinite> {
        Ok(self.compound())
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, NonFinite> {
        let _ = write!(self.path, ".{variant}");
        Ok(self.compound())
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NonFinite> {
        self.next(v)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NonFinite> {
        self.next(v)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NonFinite> {
        self.next(v)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NonFinite> {
        self.next(v)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), NonFinite> {
        // A key is shown as JSON text; a float key is checked like any value.
        let shown = serde_json::to_string(key).unwrap_or_else(|_| "?".to_owned());
        self.at(format_args!("[{shown}]"), key)?;
        self.key = shown;
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NonFinite> {
        let key = std::mem::take(&mut self.key);
        self.at(format_args!("[{key}]"), v)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        v: &T,
    ) -> Result<(), NonFinite> {
        self.at(format_args!(".{name}"), v)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        v: &T,
    ) -> Result<(), NonFinite> {
        self.at(format_args!(".{name}"), v)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    fn run<T: serde::Serialize>(v: &T) -> Result<(), String> {
        check(v, &serde_json::to_string(v).unwrap())
    }

    #[test]
    fn finds_non_finite_floats_and_their_path() {
        assert!(run(&1.5f64).is_ok());
        // Told by their first byte: numbers, strings (even one reading `null`), booleans.
        assert!(run(&-3i64).is_ok());
        assert!(run(&"null").is_ok());
        assert!(run(&false).is_ok());
        assert!(run(&(f64::NAN, 1)).is_err());
        assert!(run(&Option::<f64>::None).is_ok());
        assert!(run(&f64::NAN).unwrap_err().starts_with("the value is NaN"));
        assert!(run(&vec![1.0, f64::INFINITY])
            .unwrap_err()
            .starts_with("`[1]` is inf"));
        let mut m = std::collections::BTreeMap::new();
        m.insert("a", vec![(1u8, f32::NEG_INFINITY)]);
        assert!(
            run(&m).unwrap_err().starts_with("`[\"a\"][0][1]` is -inf"),
            "{:?}",
            run(&m)
        );
        assert!(run(&serde_json::json!({"x": [null, 1]})).is_ok());
    }
}
