//! Encodings of stored values: records in JSON, task rows in `MessagePack` (JSON rows as
//! written by schema 1 are still read).

use super::{ResumeRow, StoreError, TaskRow};
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

/// Decodes what a resumption needs of a task row: a `MessagePack` row is read field by
/// field, skipping the others without building them (no names, errors or logs
/// allocated); a JSON row (schema 1) is decoded whole.
pub(super) fn decode_resume_row(bytes: &[u8]) -> Result<ResumeRow, String> {
    use serde::de::IgnoredAny;
    /// [`TaskRow`] by position (`encode_row` writes fields in declaration order),
    /// keeping four fields: every field of `TaskRow` has its slot here, in the same
    /// order (the test below fails when they drift apart).
    #[derive(serde::Deserialize)]
    struct Lite {
        _task: IgnoredAny,
        _node: IgnoredAny,
        state: crate::record::State,
        attempts: u32,
        _started_at: IgnoredAny,
        _ended_at: IgnoredAny,
        elapsed_ns: u64,
        _skipped: IgnoredAny,
        _error: IgnoredAny,
        #[serde(default)]
        _chain: IgnoredAny,
        #[serde(default)]
        _progress: IgnoredAny,
        #[serde(default)]
        _log: IgnoredAny,
        #[serde(default)]
        result: Option<smol_str::SmolStr>,
        #[serde(default)]
        _lease: IgnoredAny,
        #[serde(default)]
        _optional: IgnoredAny,
    }
    if bytes.first() == Some(&b'{') {
        return decode_row(bytes).map(ResumeRow::from);
    }
    let lite: Lite = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(ResumeRow {
        state: lite.state,
        attempts: lite.attempts,
        elapsed_ns: lite.elapsed_ns,
        result: lite.result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{LogEntry, Progress, State};

    fn row(state: State, result: Option<&str>) -> TaskRow {
        TaskRow {
            task: "task".into(),
            node: "each[3]/task".into(),
            state,
            attempts: 3,
            started_at: Some(1),
            ended_at: Some(2),
            elapsed_ns: 12_345,
            skipped: false,
            error: Some("boom".into()),
            chain: vec!["cause".into()],
            progress: Progress {
                percent: Some(50.0),
                message: Some("half".into()),
            },
            log: vec![LogEntry {
                timestamp: 5,
                level: crate::record::Level::Info,
                message: "hello".into(),
                data: None,
            }],
            result: result.map(Into::into),
            lease: 7,
            optional: true,
        }
    }

    // The light decoding reads the same four fields as the full one, from MessagePack
    // and from JSON (schema 1) rows.
    #[test]
    fn a_resume_row_reads_what_the_full_row_holds() {
        for r in [
            row(State::Done, Some("{\"a\":[1,2]}")),
            row(State::Running, None),
            row(State::Failed, None),
        ] {
            let full = ResumeRow::from(r.clone());
            assert_eq!(decode_resume_row(&encode_row(&r)).unwrap(), full);
            let json = serde_json::to_vec(&r).unwrap();
            assert_eq!(decode_resume_row(&json).unwrap(), full);
        }
        assert!(decode_resume_row(&[0xc1]).is_err());
    }
}
