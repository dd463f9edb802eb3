//! Task rows in blocks: the layout of the `tasks` tree since store schema 5.
//!
//! sled 0.34 costs several microseconds per key written (a tree descent, a log message
//! with its header and checksum, a node version replaced), whatever the key's size: one
//! key per task row made a run on sled slower than raw sled batched inserts of one record
//! per task. The rows of a run are therefore kept [`BLOCK_ROWS`] to a key: the rows of
//! node indexes `b * BLOCK_ROWS ..` live under `<run id>\0<b: u32 BE>b`, one value holding
//! each row's node index and bytes (the row's own encoding, unchanged), in index order.
//! A write of some rows of a block reads the block, replaces or adds those rows and
//! writes the block again, in the same atomic sled batch as before, so a block is always
//! the latest state of each of its rows.
//!
//! A row of [`OWN_KEY_FROM`] bytes or more (a large result) goes to a key of its own,
//! `<run id>\0<index: u32 BE>`, and its block holds a mark in its place ([`Entry::Outside`]):
//! a block rewritten for its other rows then copies a few bytes, not the large row. A row
//! written small again goes back into its block, and its own key is removed in the same
//! write.
//!
//! Rows written by schema 1 to 4 stores (one key per row, the same key) are still read;
//! a row in a block is newer than the same row in a key of its own (no build writes a row
//! there while its block holds it), so the block's wins, unless the block marks it as
//! outside.

/// Task rows per block. 64 rows of about 100 bytes make a 6-7 KiB value: sled splits a
/// leaf above 16 keys, so a leaf of blocks stays under the 128 KiB from which sled writes a
/// node to a file of its own.
pub(super) const BLOCK_ROWS: u32 = 64;

/// Last byte of a block key (after the block number); a row's key has no fifth byte.
const BLOCK_TAG: u8 = b'b';

/// Rows of this many encoded bytes or more are kept in a key of their own.
pub(super) const OWN_KEY_FROM: usize = 2048;

/// The length written for a row kept in a key of its own.
const OUTSIDE: u32 = u32::MAX;

/// A row's place in a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Entry<'a> {
    /// The row's bytes.
    Row(&'a [u8]),
    /// The row is in a key of its own.
    Outside,
}

/// First byte of a block's value: a byte `MessagePack` never uses and JSON never starts
/// with, so an older build reading a block as a row reports it damaged.
const BLOCK_MAGIC: u8 = 0xc1;

/// The key of block `block` of run `id`.
pub(super) fn block_key(id: &str, block: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 6);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k.extend_from_slice(&block.to_be_bytes());
    k.push(BLOCK_TAG);
    k
}

/// What a key under a run's prefix (of `prefix_len` bytes) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RowKey {
    /// A row of its own (schema 1 to 4), with its node index.
    Row(u32),
    /// A block, with its number.
    Block(u32),
    /// Not one of ours.
    Other,
}

pub(super) fn classify(prefix_len: usize, key: &[u8]) -> RowKey {
    let Some(tail) = key.get(prefix_len..) else {
        return RowKey::Other;
    };
    match tail {
        [a, b, c, d] => RowKey::Row(u32::from_be_bytes([*a, *b, *c, *d])),
        [a, b, c, d, BLOCK_TAG] => RowKey::Block(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => RowKey::Other,
    }
}

/// Encodes a block from its rows (`None`: kept in a key of its own), sorted by node index
/// with no index twice, each row shorter than [`OWN_KEY_FROM`].
pub(super) fn encode_block<B: AsRef<[u8]>>(rows: &[(u32, Option<B>)]) -> Vec<u8> {
    let len: usize = rows
        .iter()
        .map(|(_, r)| r.as_ref().map_or(0, |r| r.as_ref().len()) + 8)
        .sum();
    let mut out = Vec::with_capacity(len + 1);
    out.push(BLOCK_MAGIC);
    for (order, row) in rows {
        out.extend_from_slice(&order.to_be_bytes());
        match row {
            Some(row) => {
                let row = row.as_ref();
                // Rows in a block are short (see `OWN_KEY_FROM`); a longer one would be
                // cut, and then read back as damaged, never as another row.
                let len = u32::try_from(row.len())
                    .unwrap_or(OUTSIDE - 1)
                    .min(OUTSIDE - 1);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(row);
            }
            None => out.extend_from_slice(&OUTSIDE.to_be_bytes()),
        }
    }
    out
}

/// Decodes block `block`: its rows' node indexes and bytes, in index order. Damage (a
/// wrong first byte, a length past the end, an index out of the block or out of order)
/// is an error, never a panic.
pub(super) fn decode_block(block: u32, bytes: &[u8]) -> Result<Vec<(u32, Entry<'_>)>, String> {
    let Some((&BLOCK_MAGIC, mut rest)) = bytes.split_first() else {
        return Err("not a block of task rows".into());
    };
    let first = u64::from(block) * u64::from(BLOCK_ROWS);
    let end = first + u64::from(BLOCK_ROWS);
    let mut out = Vec::new();
    let mut last: Option<u32> = None;
    while !rest.is_empty() {
        let (Some(order), Some(len)) = (rest.get(..4), rest.get(4..8)) else {
            return Err(format!("block {block}: a row header is cut short"));
        };
        let order = u32::from_be_bytes([order[0], order[1], order[2], order[3]]);
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        if !(first..end).contains(&u64::from(order)) || last.is_some_and(|l| l >= order) {
            return Err(format!("block {block}: row index {order} out of place"));
        }
        last = Some(order);
        if len == OUTSIDE {
            out.push((order, Entry::Outside));
            rest = &rest[8..];
            continue;
        }
        let len = len as usize;
        let Some(row) = rest.get(8..8 + len) else {
            return Err(format!("block {block}: row {order} is cut short"));
        };
        out.push((order, Entry::Row(row)));
        rest = &rest[8 + len..];
    }
    Ok(out)
}

/// Block `block` with `updates` applied (`None`: the row was written to a key of its
/// own): `old`'s rows (decoded), each replaced by or merged with the new rows, in write
/// order (a later row of the same index wins). Also returns the indexes whose own keys
/// are to be removed: rows that were outside and are now back in the block.
pub(super) fn merge_block(
    block: u32,
    old: Option<&[u8]>,
    updates: Vec<(u32, Option<Vec<u8>>)>,
) -> Result<(Vec<u8>, Vec<u32>), String> {
    let mut rows: Vec<(u32, Option<Vec<u8>>)> = match old {
        Some(bytes) => decode_block(block, bytes)?
            .into_iter()
            .map(|(o, e)| match e {
                Entry::Row(r) => (o, Some(r.to_vec())),
                Entry::Outside => (o, None),
            })
            .collect(),
        None => Vec::with_capacity(updates.len()),
    };
    let mut back = Vec::new();
    for (order, row) in updates {
        match rows.binary_search_by_key(&order, |(o, _)| *o) {
            Ok(i) => {
                if rows[i].1.is_none() && row.is_some() {
                    back.push(order);
                }
                rows[i].1 = row;
            }
            Err(i) => rows.insert(i, (order, row)),
        }
    }
    Ok((encode_block(&rows), back))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_reads_back_its_rows_and_damage_is_an_error() {
        let rows = vec![
            (64, Some(b"a".to_vec())),
            (70, Some(Vec::new())),
            (100, None),
            (127, Some(vec![7; 300])),
        ];
        let bytes = encode_block(&rows);
        let back: Vec<(u32, Option<Vec<u8>>)> = decode_block(1, &bytes)
            .unwrap()
            .into_iter()
            .map(|(o, e)| match e {
                Entry::Row(r) => (o, Some(r.to_vec())),
                Entry::Outside => (o, None),
            })
            .collect();
        assert_eq!(back, rows);
        assert_eq!(decode_block(1, &[BLOCK_MAGIC]).unwrap(), vec![]);
        // The wrong block, cut short, a wrong marker, rows out of order: errors.
        assert!(decode_block(0, &bytes).is_err());
        for cut in 1..bytes.len() {
            if let Ok(r) = decode_block(1, &bytes[..cut]) {
                // Only a cut between two rows reads, and then as fewer rows.
                assert!(r.len() < rows.len());
            }
        }
        assert!(decode_block(1, &[]).is_err());
        assert!(decode_block(1, b"\x92\x01").is_err());
        let swapped = encode_block(&[(70, Some(&b"x"[..])), (64, Some(&b"y"[..]))]);
        assert!(decode_block(1, &swapped).is_err());
        let last = encode_block(&[(u32::MAX, Some(b"z"))]);
        assert!(decode_block(u32::MAX / BLOCK_ROWS, &last).is_ok());
    }

    #[test]
    fn a_merge_replaces_and_adds_rows_in_index_order() {
        let old = encode_block(&[(1, Some(&b"one"[..])), (5, Some(&b"five"[..])), (9, None)]);
        let (merged, back) = merge_block(
            0,
            Some(&old),
            vec![
                (5, Some(b"5a".to_vec())),
                (3, Some(b"3".to_vec())),
                (5, Some(b"5b".to_vec())),
                (1, None),
                (9, Some(b"9".to_vec())),
            ],
        )
        .unwrap();
        let rows = decode_block(0, &merged).unwrap();
        assert_eq!(
            rows,
            vec![
                (1, Entry::Outside),
                (3, Entry::Row(b"3")),
                (5, Entry::Row(b"5b")),
                (9, Entry::Row(b"9"))
            ]
        );
        // Row 9 came back from its own key, which goes.
        assert_eq!(back, vec![9]);
        assert!(merge_block(0, Some(b"junk"), vec![]).is_err());
    }

    #[test]
    fn keys_tell_rows_from_blocks() {
        let k = block_key("run", 3);
        assert_eq!(classify(4, &k), RowKey::Block(3));
        assert_eq!(classify(4, b"run\0\0\0\0\x09"), RowKey::Row(9));
        assert_eq!(classify(4, b"run\0\0\0"), RowKey::Other);
        assert_eq!(classify(4, b"run\0\0\0\0\0x"), RowKey::Other);
    }
}
