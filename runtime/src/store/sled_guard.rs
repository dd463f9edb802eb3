//! What the sled store keeps beside sled: recovery from an interrupted open, and the
//! write sequence that tells a damaged data file from an intact one.
//!
//! sled 0.34 drops everything after the first damaged message of its log and carries on,
//! so a bit flip or a truncation would come back as an older (or empty) store without an
//! error. The store therefore counts its writes: every write carries the next number of a
//! monotonic *write sequence*, kept in sled under [`SEQ_KEY`] (in the same batch or right
//! after the write, in the same flush group), and after each flush the number reached is
//! written to a sidecar file, [`SIDECAR`], outside sled's log. At open, sled's number must
//! not be behind the sidecar's.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Key of the write sequence in the `tasks` tree. Run ids are UTF-8, whose encoding never
/// holds the byte `0xFF`, so no task row key (`run id`, `0`, node index) can equal or
/// start with it.
pub(super) const SEQ_KEY: &[u8] = b"\xffprocession.seq";

/// Name of the sidecar file in the store directory.
pub(super) const SIDECAR: &str = "procession.seq";

/// First bytes of the sidecar: a format marker.
const MAGIC: &[u8; 8] = b"procseq1";

/// Decodes the write sequence stored in sled (absent: no write was counted yet).
pub(super) fn decode_seq(bytes: Option<&[u8]>) -> Result<u64, String> {
    match bytes {
        None => Ok(0),
        Some(b) => <[u8; 8]>::try_from(b)
            .map(u64::from_be_bytes)
            .map_err(|_| format!("the write sequence marker is damaged ({} bytes)", b.len())),
    }
}

/// Prepares a store directory that sled left behind in the middle of an open.
///
/// sled 0.34 writes a snapshot at every open, as `snap.<lsn>.generating`, fsyncs it and
/// renames it to `snap.<lsn>`, then removes the older snapshots. A kill at any point of
/// this leaves one of three states:
///
/// - a `snap.<lsn>.generating` file, empty or partial: never a valid snapshot, and sled
///   reads it as the newest one ("Read corrupted data at file offset None") at every later
///   open. It is removed.
/// - a `snap.<lsn>` file of 12 bytes or less (sled's own "empty" threshold: a snapshot ends
///   with an 8-byte length and a 4-byte CRC): not something sled writes, since it fsyncs
///   before the rename, but a file system that loses the data of a renamed file on power
///   loss can leave it. It is moved aside to `procession-invalid.snap.<lsn>` so that sled
///   falls back to an older snapshot or to its log; the write sequence then tells whether
///   anything was lost.
/// - several complete `snap.*` files: sled reads the newest (complete, since it was
///   fsynced before its rename) and removes the others at its next snapshot. Left as is.
///
/// A larger snapshot whose checksum fails is damage, not an interrupted open: it is left
/// for sled to report. Nothing is touched while another process has the store open (it
/// holds sled's lock on `db`, and may be writing its snapshot right now): sled then
/// reports the lock. Returns the files removed or moved aside.
pub(super) fn clear_interrupted_open(dir: &Path) -> io::Result<Vec<PathBuf>> {
    // sled locks `db` (flock) for as long as the store is open, from before it writes its
    // snapshot: holding the same lock while clearing keeps a live open's file alive.
    let _lock = match fs::File::open(dir.join("db")) {
        Ok(f) => match f.try_lock() {
            Ok(()) => Some(f),
            Err(fs::TryLockError::WouldBlock) => return Ok(Vec::new()),
            Err(fs::TryLockError::Error(e)) => return Err(e),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut cleared = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("snap.") else {
            continue;
        };
        let path = entry.path();
        if rest.ends_with(".generating") {
            let len = entry.metadata().map_or(0, |m| m.len());
            fs::remove_file(&path)?;
            tracing::warn!(
                file = %path.display(),
                bytes = len,
                "removed a snapshot that sled was writing when it was stopped (sled issue 1527)"
            );
            cleared.push(path);
        } else if rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit()) {
            let len = entry.metadata()?.len();
            if len <= 12 {
                let aside = dir.join(format!("procession-invalid.{name}"));
                fs::rename(&path, &aside)?;
                tracing::warn!(
                    file = %path.display(),
                    moved_to = %aside.display(),
                    bytes = len,
                    "moved aside an empty sled snapshot; sled recovers from its log"
                );
                cleared.push(path);
            }
        }
    }
    Ok(cleared)
}

/// The sidecar file: the write sequence that the last successful flush made durable.
#[derive(Debug)]
pub(super) struct Sidecar {
    path: PathBuf,
    temp: PathBuf,
    dir: PathBuf,
    /// The number in the file (0: no file yet), and the file kept open for the next
    /// number.
    written: Mutex<Written>,
}

#[derive(Debug, Default)]
struct Written {
    seq: u64,
    file: Option<fs::File>,
}

impl Sidecar {
    pub(super) fn new(dir: &Path) -> Sidecar {
        Sidecar {
            path: dir.join(SIDECAR),
            temp: dir.join(format!("{SIDECAR}.tmp")),
            dir: dir.to_path_buf(),
            written: Mutex::default(),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The number in the file: `None` when there is no file.
    pub(super) fn read(&self) -> Result<Option<u64>, String> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read `{}`: {e}", self.path.display())),
        };
        let n = decode_sidecar(&bytes).ok_or_else(|| {
            format!(
                "`{}` is damaged, so the store cannot be checked for lost writes; delete it \
                 to open the store as it is",
                self.path.display()
            )
        })?;
        self.lock().seq = n;
        Ok(Some(n))
    }

    /// Records that sled made writes up to `seq` durable. Does nothing when the file
    /// already says `seq` or more.
    ///
    /// The 24 bytes are written over the old ones in place, by one write at offset 0 into
    /// the file kept open (a kill lands before or after a write, never inside it), which
    /// costs a fraction of a new file and a rename (two of them in every run's write path
    /// on sled). When `strict`, they go to a temporary file that is fsynced and renamed
    /// over the sidecar, and the directory fsynced: on a power loss the file holds the old
    /// or the new number, never a mix (a mix would be read as damaged, refusing the open).
    pub(super) fn record(&self, seq: u64, strict: bool) -> io::Result<()> {
        let mut written = self.lock();
        if seq <= written.seq {
            return Ok(());
        }
        #[cfg(unix)]
        if !strict {
            use std::os::unix::fs::FileExt;
            if written.file.is_none() {
                written.file = Some(
                    fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&self.path)?,
                );
            }
            if let Some(f) = &written.file {
                f.write_all_at(&encode_sidecar(seq), 0)?;
            }
            written.seq = seq;
            return Ok(());
        }
        // The rename replaces the file: a handle on the old one must not be written.
        written.file = None;
        let mut f = fs::File::create(&self.temp)?;
        f.write_all(&encode_sidecar(seq))?;
        if strict {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&self.temp, &self.path)?;
        if strict {
            // The rename itself must reach the disk too.
            fs::File::open(&self.dir)?.sync_all()?;
        }
        written.seq = seq;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Written> {
        self.written.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `MAGIC`, the number, and its complement (so that a damaged file is not read as a
/// smaller number, which would hide lost writes).
fn encode_sidecar(seq: u64) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&seq.to_be_bytes());
    out[16..].copy_from_slice(&(!seq).to_be_bytes());
    out
}

fn decode_sidecar(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != 24 || &bytes[..8] != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(bytes[8..16].try_into().ok()?);
    let check = u64::from_be_bytes(bytes[16..].try_into().ok()?);
    (check == !seq).then_some(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "procession-guard-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sidecar_round_trips_and_never_goes_back() {
        let dir = temp_dir("sidecar");
        let side = Sidecar::new(&dir);
        assert_eq!(side.read(), Ok(None));
        side.record(7, false).unwrap();
        side.record(3, true).unwrap();
        let again = Sidecar::new(&dir);
        assert_eq!(again.read(), Ok(Some(7)));
        again.record(9, true).unwrap();
        assert_eq!(Sidecar::new(&dir).read(), Ok(Some(9)));
        assert!(!dir.join(format!("{SIDECAR}.tmp")).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    // Numbers written in place follow each other in the one file (no temporary file is
    // left), and a number written after a strict one (a rename, which replaces the file)
    // goes to the new file, not to the replaced one.
    #[test]
    fn sidecar_written_in_place_and_after_a_rename() {
        let dir = temp_dir("inplace");
        let side = Sidecar::new(&dir);
        for n in [5, 6, 40] {
            side.record(n, false).unwrap();
            assert_eq!(Sidecar::new(&dir).read(), Ok(Some(n)));
        }
        assert!(!dir.join(format!("{SIDECAR}.tmp")).exists());
        assert_eq!(fs::read(side.path()).unwrap().len(), 24);
        side.record(41, true).unwrap();
        side.record(42, false).unwrap();
        assert_eq!(Sidecar::new(&dir).read(), Ok(Some(42)));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn damaged_sidecar_is_refused_not_read_as_zero() {
        let dir = temp_dir("badside");
        let side = Sidecar::new(&dir);
        side.record(300, false).unwrap();
        let mut bytes = fs::read(side.path()).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 0x10;
            fs::write(side.path(), &bytes).unwrap();
            let err = Sidecar::new(&dir).read().unwrap_err();
            assert!(err.contains("procession.seq"), "{err}");
            bytes[i] ^= 0x10;
        }
        fs::write(side.path(), &bytes[..10]).unwrap();
        assert!(Sidecar::new(&dir).read().is_err());
        fs::write(side.path(), b"").unwrap();
        assert!(Sidecar::new(&dir).read().is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn sequence_marker_decodes() {
        assert_eq!(decode_seq(None), Ok(0));
        assert_eq!(decode_seq(Some(&5u64.to_be_bytes())), Ok(5));
        assert!(decode_seq(Some(b"abc")).is_err());
    }

    #[test]
    fn interrupted_open_leftovers_are_cleared_and_valid_snapshots_kept() {
        let dir = temp_dir("leftovers");
        let keep_old = dir.join("snap.0000000000000010");
        let keep_new = dir.join("snap.00000000000000A0");
        fs::write(&keep_old, vec![1u8; 40]).unwrap();
        fs::write(&keep_new, vec![2u8; 40]).unwrap();
        fs::write(dir.join("snap.00000000000000B0.generating"), b"").unwrap();
        fs::write(dir.join("snap.00000000000000A0.generating"), b"partial").unwrap();
        fs::write(dir.join("snap.00000000000000C0"), b"").unwrap();
        fs::write(dir.join("db"), b"data").unwrap();
        let mut cleared = clear_interrupted_open(&dir).unwrap();
        cleared.sort();
        assert_eq!(
            cleared,
            vec![
                dir.join("snap.00000000000000A0.generating"),
                dir.join("snap.00000000000000B0.generating"),
                dir.join("snap.00000000000000C0"),
            ]
        );
        assert!(keep_old.exists() && keep_new.exists() && dir.join("db").exists());
        assert!(dir
            .join("procession-invalid.snap.00000000000000C0")
            .exists());
        // While another handle holds the store's lock, nothing is touched.
        let leftover = dir.join("snap.00000000000000D0.generating");
        fs::write(&leftover, b"").unwrap();
        let held = fs::File::open(dir.join("db")).unwrap();
        held.lock().unwrap();
        assert!(clear_interrupted_open(&dir).unwrap().is_empty());
        assert!(leftover.exists());
        drop(held);
        assert_eq!(clear_interrupted_open(&dir).unwrap(), vec![leftover]);
        assert!(clear_interrupted_open(&dir).unwrap().is_empty());
        assert!(clear_interrupted_open(&dir.join("missing"))
            .unwrap()
            .is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
