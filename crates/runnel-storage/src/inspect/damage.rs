//! Test code: damaging a partition directory on purpose, and proving that a
//! read-only tool left it alone.
//!
//! One file serves two test suites: the inspect unit tests (`tests.rs`
//! beside this file) and the black-box tests of `runnel log dump` and
//! `runnel log verify` (`tests/log_tools.rs`, which includes this file with
//! `#[path]`). It therefore names nothing of either crate: std only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every file of the directory `dir` and its bytes. Two equal snapshots,
/// taken before and after a tool ran, prove that it modified nothing.
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Rewrites the file at `path` with `f` applied to its bytes.
pub(crate) fn modify(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// An append cut short by a crash: writes the first half of `batch` (a
/// whole batch, already stamped with its offset, term and Raft index) over
/// the file at `path` from byte `at`, which is where the data of the
/// active segment ends (growing the file as an append would).
pub(crate) fn write_torn_append(path: &Path, at: u64, batch: &[u8]) {
    let half = &batch[..batch.len() / 2];
    let end = at as usize + half.len();
    modify(path, |b| {
        if b.len() < end {
            b.resize(end, 0);
        }
        b[at as usize..end].copy_from_slice(half)
    });
}
