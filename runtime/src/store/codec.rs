//! Encodings of stored values: records in JSON, task rows in `MessagePack` (JSON rows as
//! written by schema 1 are still read).

use super::{StoreError, TaskRow};
use crate::record::{ProcessRecord, SCHEMA_VERSION};

pub(super) fn decode_record(
    path: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<ProcessRecord, StoreError> {
    #[derive(serde::Deserialize)]
    struct Version {
        schema: u32,
    }
    let corrupt = |message: String| StoreError::Corrupt {
        path: path.to_owned(),
        key: String::from_utf8_lossy(key).into_owned(),
        message,
    };
    let v: Version = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if v.schema > SCHEMA_VERSION {
        return Err(StoreError::Incompatible {
            path: path.to_owned(),
            found: v.schema,
            supported: SCHEMA_VERSION,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records are plain data")
}

/// Task rows are the bulk of a store (one or two writes per task): `MessagePack` with
/// fields by position is about a third of their JSON size, and sled's write cost grows
/// with the bytes written.
pub(super) fn encode_row(row: &TaskRow) -> Vec<u8> {
    rmp_serde::to_vec(row).expect("task rows are plain data")
}

/// Decodes a task row: `MessagePack`, or JSON as written by schema 1 (a JSON object
/// starts with `{`, which is a positive fixint in `MessagePack` and never starts a row).
pub(super) fn decode_row(bytes: &[u8]) -> Result<TaskRow, String> {
    if bytes.first() == Some(&b'{') {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    } else {
        rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
    }
}
