//! The bound every task input, task output and process parameter satisfies.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value that can cross a task boundary: it is stored on disk between tasks, so it must
/// be serializable, deserializable into an owned value, sendable across threads and free
/// of borrowed data.
///
/// Implemented for every `T: Serialize + DeserializeOwned + Send + 'static`; you never
/// implement it by hand.
///
/// # Examples
///
/// ```
/// use procession::Data;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Order { id: u64, amount: f64 }
///
/// fn assert_data<T: Data>() {}
/// assert_data::<Order>();
/// assert_data::<Vec<String>>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot cross a task boundary",
    label = "task inputs, outputs and process parameters are stored on disk",
    note = "a value that crosses a task boundary must implement `Serialize`, `DeserializeOwned` and `Send`, and must own its data (`'static`)",
    note = "for your own types add `#[derive(serde::Serialize, serde::Deserialize)]`; for borrowed data use an owned type (`String` for `&str`, `Vec<T>` for `&[T]`)"
)]
pub trait Data: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Data for T {}
