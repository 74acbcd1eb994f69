//! Durable file operations: fsync of directories, atomic small-file writes,
//! and the fault-injection seam tests use to fail writes and
//! fsyncs from the inside.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};

use crate::error::{Result, StorageError};
use crate::filename::TMP_SUFFIX;

/// Injected failures for tests (practice: faults from the inside).
///
/// Shared through [`crate::LogConfig::faults`]; every data write and fsync of
/// a log consults it. Production code leaves it `None`.
#[derive(Debug, Default)]
pub struct Faults {
    writes_before_failure: AtomicI64,
    fail_sync: AtomicBool,
    errno: AtomicI32,
}

impl Faults {
    /// No faults armed.
    pub fn new() -> Self {
        Faults {
            writes_before_failure: AtomicI64::new(-1),
            fail_sync: AtomicBool::new(false),
            errno: AtomicI32::new(libc::EIO),
        }
    }

    /// Fail the write after `n` more successful writes with `errno`
    /// (e.g. `libc::ENOSPC`). The failing write stores half its bytes first,
    /// as a torn write would.
    pub fn fail_write_after(&self, n: i64, errno: i32) {
        self.errno.store(errno, Ordering::SeqCst);
        self.writes_before_failure.store(n, Ordering::SeqCst);
    }

    /// Make every following fsync fail with EIO.
    pub fn fail_syncs(&self, on: bool) {
        self.fail_sync.store(on, Ordering::SeqCst);
    }

    /// Disarm everything.
    pub fn clear(&self) {
        self.writes_before_failure.store(-1, Ordering::SeqCst);
        self.fail_sync.store(false, Ordering::SeqCst);
    }

    fn take_write_failure(&self) -> Option<io::Error> {
        let prev =
            self.writes_before_failure
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    if n > 0 { Some(n - 1) } else { None }
                });
        match prev {
            Err(0) => {
                self.writes_before_failure.store(-1, Ordering::SeqCst);
                Some(io::Error::from_raw_os_error(
                    self.errno.load(Ordering::SeqCst),
                ))
            }
            _ => None,
        }
    }
}

/// Writes `buf` at `pos`, honouring injected faults.
pub(crate) fn write_at(
    file: &File,
    path: &Path,
    buf: &[u8],
    pos: u64,
    faults: Option<&Faults>,
) -> Result<()> {
    if let Some(err) = faults.and_then(Faults::take_write_failure) {
        let half = buf.len() / 2;
        let _partial = file.write_all_at(&buf[..half], pos);
        return Err(StorageError::io("write", path, err));
    }
    file.write_all_at(buf, pos)
        .map_err(|e| StorageError::io("write", path, e))
}

/// `fdatasync`, honouring injected faults.
pub(crate) fn sync_data(file: &File, path: &Path, faults: Option<&Faults>) -> Result<()> {
    if faults.is_some_and(|f| f.fail_sync.load(Ordering::SeqCst)) {
        return Err(StorageError::io(
            "fsync",
            path,
            io::Error::from_raw_os_error(libc::EIO),
        ));
    }
    file.sync_data()
        .map_err(|e| StorageError::io("fsync", path, e))
}

/// fsyncs a directory so that creations, renames and unlinks in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

/// Replaces `path` with `contents` atomically: temp file, fsync, rename,
/// fsync of the directory. A crash leaves either the old or the new file.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = Path::new(&tmp);
    let mut f = File::create(tmp).map_err(|e| StorageError::io("create", tmp, e))?;
    f.write_all(contents)
        .map_err(|e| StorageError::io("write", tmp, e))?;
    f.sync_all()
        .map_err(|e| StorageError::io("fsync", tmp, e))?;
    fs::rename(tmp, path).map_err(|e| StorageError::io("rename", path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    sync_dir(dir)
}

/// Opens (creating if needed) a file for reading and writing.
pub(crate) fn open_rw(path: &Path, create: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(|e| StorageError::io("open", path, e))
}

/// Sets a file's length.
pub(crate) fn set_len(file: &File, path: &Path, len: u64) -> Result<()> {
    file.set_len(len)
        .map_err(|e| StorageError::io("truncate", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomically_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        write_atomically(&p, b"one").unwrap();
        write_atomically(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn faults_fire_once_after_n_writes() {
        let f = Faults::new();
        f.fail_write_after(2, libc::ENOSPC);
        assert!(f.take_write_failure().is_none());
        assert!(f.take_write_failure().is_none());
        let e = f.take_write_failure().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(f.take_write_failure().is_none());
    }
}
