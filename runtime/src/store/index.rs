//! The secondary index of process records, shared by the sled and memory stores.
//!
//! Each record has a few index keys, one per question the runtime asks; a key ends with
//! the record's creation time (8 bytes, big-endian) and its id, so that every index lists
//! records in the order of [`Query`]'s pages and a [`Cursor`] is a position in any of them.
//! Record ids, parents, roots and process types never contain NUL (ids are checked by
//! the runtime), which separates the variable-length parts.

use std::ops::Bound;

use super::{Cursor, Page, Query, StoreError};
use crate::record::{ProcessRecord, State};

const ALL: u8 = b'a';
const PARENT: u8 = b'p';
const ROOT: u8 = b'r';
const STATE: u8 = b's';
const TYPE: u8 = b't';
const DEFINITION: u8 = b'd';
const SCHEDULED: u8 = b'S';

fn state_byte(s: State) -> u8 {
    State::ALL.iter().position(|&x| x == s).unwrap_or(0) as u8
}

fn push_tail(k: &mut Vec<u8>, created_at: u64, id: &str) {
    k.extend_from_slice(&created_at.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
}

fn named(tag: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 2);
    k.push(tag);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

/// The index keys of `r`.
pub(super) fn keys(r: &ProcessRecord) -> Vec<Vec<u8>> {
    let mut prefixes = vec![
        vec![ALL],
        named(ROOT, &r.root),
        vec![STATE, state_byte(r.status.state)],
        named(TYPE, &r.process_type),
    ];
    if let Some(p) = &r.parent {
        prefixes.push(named(PARENT, p));
    }
    if !r.adhoc && r.depth == 0 {
        prefixes.push(vec![DEFINITION]);
    }
    if r.schedule.is_some() {
        prefixes.push(vec![SCHEDULED]);
    }
    for k in &mut prefixes {
        push_tail(k, r.created_at, &r.id);
    }
    prefixes
}

/// Which index answers `q`, and whether it answers it alone (no record needs decoding to
/// check a remaining condition).
fn plan(q: &Query) -> (Vec<u8>, bool) {
    let others = |used: usize| {
        let set = [
            !q.states.is_empty(),
            q.process_type.is_some(),
            q.root.is_some(),
            q.parent.is_some(),
            !q.metadata.is_empty(),
            q.definitions,
            q.scheduled,
        ];
        set.iter().filter(|&&b| b).count() == used
    };
    if let Some(p) = &q.parent {
        (named(PARENT, p), others(1))
    } else if let Some(r) = &q.root {
        (named(ROOT, r), others(1))
    } else if q.scheduled {
        (vec![SCHEDULED], others(1))
    } else if q.definitions {
        (vec![DEFINITION], others(1))
    } else if let [s] = q.states.as_slice() {
        (vec![STATE, state_byte(*s)], others(1))
    } else if let Some(t) = &q.process_type {
        (named(TYPE, t), others(1))
    } else {
        (vec![ALL], others(0))
    }
}

/// Creation time and id of an index key, after its prefix.
fn split(tail: &[u8]) -> Option<(u64, &str)> {
    let (t, id) = tail.split_at_checked(8)?;
    let t = u64::from_be_bytes(t.try_into().ok()?);
    Some((t, std::str::from_utf8(id).ok()?))
}

/// The keys of an index a listing walks: from `lower` up, or (`rev`) from `upper` down.
pub(super) struct Span {
    /// The lowest key.
    pub lower: Bound<Vec<u8>>,
    /// The highest key.
    pub upper: Bound<Vec<u8>>,
    /// Whether keys come in descending order.
    pub rev: bool,
}

/// The smallest key greater than every key starting with `prefix` (`None`: there is none).
fn past(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut k = prefix.to_vec();
    while let Some(last) = k.pop() {
        if last < u8::MAX {
            k.push(last + 1);
            return Some(k);
        }
    }
    None
}

/// Where a listing of `q` runs in its index (`None`: nowhere, the range is empty), and
/// the index's prefix.
fn start(q: &Query) -> (Vec<u8>, Option<Span>, bool) {
    let (prefix, exact) = plan(q);
    let at = |t: u64, id: &str| {
        let mut k = prefix.clone();
        push_tail(&mut k, t, id);
        k
    };
    if !q.newest_first {
        let lower = match (&q.after, q.created_from) {
            (Some(c), _) => Bound::Excluded(at(c.created_at, &c.id)),
            (None, Some(t)) => Bound::Included(at(t, "")),
            (None, None) => Bound::Included(prefix.clone()),
        };
        let span = Span {
            lower,
            upper: Bound::Unbounded,
            rev: false,
        };
        return (prefix, Some(span), exact);
    }
    // Newest first: down from the lower of the cursor and the end of the time range.
    let lower = at(q.created_from.unwrap_or(0), "");
    let until = q.created_until.map(|t| at(t, ""));
    let upper = match (q.after.as_ref().map(|c| at(c.created_at, &c.id)), until) {
        (Some(c), Some(u)) => Bound::Excluded(c.min(u)),
        (Some(k), None) | (None, Some(k)) => Bound::Excluded(k),
        (None, None) => past(&prefix).map_or(Bound::Unbounded, Bound::Excluded),
    };
    // An empty range would make the stores' range scans panic.
    let empty = matches!(&upper, Bound::Excluded(u) if *u <= lower);
    let span = (!empty).then_some(Span {
        lower: Bound::Included(lower),
        upper,
        rev: true,
    });
    (prefix, span, exact)
}

/// Keys of an index over a [`Span`], in its order: what a store provides to [`list`]
/// and [`count`].
pub(super) type Keys<'a> = Box<dyn Iterator<Item = Result<Vec<u8>, StoreError>> + 'a>;

/// The (creation time, id) of each entry of `q`'s index from where `q` starts, in its
/// direction, until the index's prefix or `q`'s time range ends: the walk [`list`] and
/// [`count`] share.
fn entries<'a>(
    q: &Query,
    scan: impl FnOnce(Span) -> Keys<'a>,
) -> (
    bool,
    impl Iterator<Item = Result<(u64, String), StoreError>> + 'a,
) {
    let (prefix, range, exact) = start(q);
    let until = q.created_until;
    // Newest first, the walk ends below the time range (forward, a cursor may lie below it).
    let from = q.created_from.filter(|_| q.newest_first);
    let mut keys = range.map_or_else(|| Box::new(std::iter::empty()) as Keys<'a>, scan);
    let walk = std::iter::from_fn(move || loop {
        let k = match keys.next()? {
            Ok(k) => k,
            Err(e) => return Some(Err(e)),
        };
        // Leaving the prefix ends the walk.
        let tail = k.strip_prefix(prefix.as_slice())?;
        // A key that does not split is not one of ours: skipped, never trusted.
        let Some((created, id)) = split(tail) else {
            continue;
        };
        if until.is_some_and(|u| created >= u) || from.is_some_and(|f| created < f) {
            return None;
        }
        return Some(Ok((created, id.to_owned())));
    });
    (exact, walk)
}

/// One page of `q`, from the index keys `scan` yields and the records `get` reads.
pub(super) fn list<'a>(
    q: &Query,
    scan: impl FnOnce(Span) -> Keys<'a>,
    get: impl Fn(&str) -> Result<Option<ProcessRecord>, StoreError>,
) -> Result<Page, StoreError> {
    let limit = q.limit.unwrap_or(usize::MAX);
    let mut page = Page::default();
    if limit == 0 {
        return Ok(page);
    }
    for e in entries(q, scan).1 {
        let (created, id) = e?;
        // An index key whose record is gone (or moved) is skipped, never trusted.
        let Some(r) = get(&id)? else { continue };
        if r.created_at != created || !q.matches(&r) {
            continue;
        }
        if page.records.len() == limit {
            page.next = page.records.last().map(Cursor::after);
            break;
        }
        page.records.push(r);
    }
    Ok(page)
}

/// How many records match `q` (page bounds ignored).
pub(super) fn count<'a>(
    q: &Query,
    scan: impl FnOnce(Span) -> Keys<'a>,
    get: impl Fn(&str) -> Result<Option<ProcessRecord>, StoreError>,
) -> Result<u64, StoreError> {
    let q = Query {
        after: None,
        limit: None,
        newest_first: false,
        ..q.clone()
    };
    let (exact, walk) = entries(&q, scan);
    let mut n = 0u64;
    for e in walk {
        let (_, id) = e?;
        if exact || get(&id)?.is_some_and(|r| q.matches(&r)) {
            n += 1;
        }
    }
    Ok(n)
}
