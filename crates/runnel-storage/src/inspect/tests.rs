use std::path::{Path, PathBuf};

use proptest::prelude::*;
use runnel_batch::{BatchBuilder, Compression, NewRecord};

use super::damage::{modify, snapshot, write_torn_append};
use super::*;
use crate::filename::{INDEX_EXT, LOG_EXT, TIME_INDEX_EXT};
use crate::state::{PartitionState, STATE_FILE};
use crate::{FlushPolicy, Log, LogConfig};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 << 10,
        index_interval_bytes: 512,
        index_max_bytes: 1200,
        max_batch_bytes: 8 << 10,
        flush: FlushPolicy::Never,
        retention_ms: None,
        segment_ms: None,
        ..Default::default()
    }
}

fn batch(i: u64, compression: Compression) -> bytes::Bytes {
    let mut b = BatchBuilder::new(compression);
    for j in 0..3u64 {
        let value = format!("value {i}.{j} {}", "x".repeat(90));
        // Timestamps go up and down so the time index is exercised.
        let ts = 1_000 + (i as i64 % 7) * 100 + j as i64;
        b.push(NewRecord {
            key: Some(b"key"),
            value: value.as_bytes(),
            headers: &[("h", b"1")],
            timestamp: ts,
        });
    }
    b.finish().unwrap()
}

/// A log of 200 batches of 3 records over several segments, written in
/// two sessions (so recovery ran once), with terms rising.
fn build(dir: &Path) {
    for session in 0..2u64 {
        let log = Log::open(dir, config()).unwrap();
        for i in session * 100..(session + 1) * 100 {
            let c = if i % 3 == 0 {
                Compression::Lz4
            } else {
                Compression::None
            };
            log.append(&batch(i, c), 1 + i / 40).unwrap();
        }
    }
}

fn log_path(dir: &Path, k: usize) -> PathBuf {
    list(dir).unwrap().segments[k].log.clone()
}

/// The active (last) segment's `.log` file.
fn active_log(dir: &Path) -> PathBuf {
    list(dir).unwrap().segments.last().unwrap().log.clone()
}

/// Where the walkable data of a `.log` file ends.
fn data_end(path: &Path) -> u64 {
    let f = LogFile::open(path).unwrap();
    let mut it = f.batches(0);
    it.by_ref().for_each(drop);
    it.end().unwrap().position()
}

fn batch_positions(path: &Path) -> Vec<u64> {
    let f = LogFile::open(path).unwrap();
    f.batches(0).map(|b| b.unwrap().position).collect()
}

#[test]
fn clean_log_verifies_and_is_not_modified() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let before = snapshot(dir.path());
    let report = verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert!(report.segments > 3, "rolled: {}", report.segments);
    assert_eq!(report.batches, 200);
    assert_eq!(report.records, 600);
    assert_eq!(report.first_offset, Some(0));
    assert_eq!(report.end_offset, Some(600));
    assert_eq!(
        (report.first_index, report.last_index),
        (Some(1), Some(200))
    );
    assert_eq!(report.log_start_offset, Some(0));
    assert_eq!(before, snapshot(dir.path()), "verify modified a file");
}

#[test]
fn clean_after_retention_truncation_and_delete_records() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let log = Log::open(dir.path(), config()).unwrap();
    log.truncate_from_index(150).unwrap();
    log.append(&batch(7, Compression::Zstd), 9).unwrap();
    log.delete_records(300).unwrap();
    let r = log.apply_retention(0, u64::MAX).unwrap();
    assert!(r.deleted_segments > 0);
    drop(log);
    let report = verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert_eq!(report.last_index, Some(150));
    assert_eq!(report.log_start_offset, Some(300));
}

#[test]
fn leftovers_of_interrupted_operations_are_notes() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    // Retention that crashed after persisting the state, before unlinking.
    let first = list(dir.path()).unwrap().segments[0].clone();
    let kept: Vec<(PathBuf, Vec<u8>)> = [&first.log, &first.index, &first.time_index]
        .iter()
        .map(|p| (p.to_path_buf(), std::fs::read(p).unwrap()))
        .collect();
    let log = Log::open(dir.path(), config()).unwrap();
    log.delete_records(first.base_offset + 1).unwrap();
    let seg1 = log.segments().unwrap()[1].base_offset;
    log.delete_records(seg1).unwrap();
    assert_eq!(
        log.apply_retention(0, u64::MAX).unwrap().deleted_segments,
        1
    );
    drop(log);
    for (p, bytes) in &kept {
        std::fs::write(p, bytes).unwrap();
    }
    std::fs::write(dir.path().join("00000000000000000003.log.deleted"), b"x").unwrap();
    let report = verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{:#?}", report.problems);
    let kinds: Vec<NoteKind> = report.notes.iter().map(|n| n.kind).collect();
    assert_eq!(kinds, [NoteKind::Leftover, NoteKind::BelowCompactedIndex]);
}

#[test]
fn fresh_empty_log_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    drop(Log::open(dir.path(), config()).unwrap());
    let report = verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert_eq!((report.segments, report.batches), (1, 0));
}

/// Damage done to a built log, and the first problem verify must name:
/// its code, file (by name suffix) and byte position.
type Damage = fn(&Path) -> (String, &'static str, u64);

#[test]
fn damage_is_found_where_it_is() {
    let cases: &[(&str, Damage)] = &[
        ("flipped byte in a sealed segment", |d| {
            let path = log_path(d, 1);
            let pos = batch_positions(&path)[5];
            modify(&path, |b| b[pos as usize + 100] ^= 0x01);
            (name(&path), "crc_mismatch", pos)
        }),
        ("torn tail in the active segment", |d| {
            let path = active_log(d);
            let end = data_end(&path);
            let mut whole = batch(1, Compression::None).to_vec();
            runnel_batch::stamp(&mut whole, 600, 5, 201);
            write_torn_append(&path, end, &whole);
            (name(&path), "torn_tail", end)
        }),
        ("index entry off a batch boundary", |d| {
            let path = list(d).unwrap().segments[0].index.clone();
            modify(&path, |b| b[12 + 8] ^= 0x01);
            (name(&path), "index_entry", 12)
        }),
        ("time index entry with a wrong timestamp", |d| {
            let path = list(d).unwrap().segments[1].time_index.clone();
            modify(&path, |b| b[24] = b[24].wrapping_add(1));
            (name(&path), "time_index_entry", 24)
        }),
        ("ragged index file", |d| {
            let path = list(d).unwrap().segments[0].index.clone();
            let len = std::fs::metadata(&path).unwrap().len();
            modify(&path, |b| b.push(7));
            (name(&path), "index_length", len)
        }),
        ("missing middle segment", |d| {
            let files = list(d).unwrap();
            for p in [
                &files.segments[1].log,
                &files.segments[1].index,
                &files.segments[1].time_index,
            ] {
                std::fs::remove_file(p).unwrap();
            }
            (name(&files.segments[2].log), "segment_gap", 0)
        }),
        ("sealed segment never trimmed (interrupted roll)", |d| {
            let path = log_path(d, 0);
            let len = std::fs::metadata(&path).unwrap().len();
            modify(&path, |b| b.resize(b.len() + 4096, 0));
            (name(&path), "sealed_segment_not_trimmed", len)
        }),
        ("garbage header in a sealed segment", |d| {
            let path = log_path(d, 2);
            let pos = batch_positions(&path)[3];
            modify(&path, |b| b[pos as usize + 32] = 9); // format version
            (name(&path), "unreadable_batch", pos)
        }),
        ("damaged state file", |d| {
            let path = d.join(STATE_FILE);
            modify(&path, |b| b[6] ^= 0xff);
            (STATE_FILE.to_string(), "state_corrupt", 0)
        }),
        ("missing state file", |d| {
            std::fs::remove_file(d.join(STATE_FILE)).unwrap();
            (STATE_FILE.to_string(), "state_missing", 0)
        }),
        ("log start past the log end", |d| {
            let mut s = PartitionState::load(d).unwrap().unwrap();
            s.log_start_offset = 10_000;
            std::fs::write(d.join(STATE_FILE), s.encode()).unwrap();
            (STATE_FILE.to_string(), "log_start_out_of_range", 0)
        }),
        ("term runs disagree with the batches", |d| {
            let mut s = PartitionState::load(d).unwrap().unwrap();
            s.term_runs[1].1 += 3;
            std::fs::write(d.join(STATE_FILE), s.encode()).unwrap();
            (STATE_FILE.to_string(), "term_run_mismatch", 0)
        }),
    ];
    for (i, (what, damage)) in cases.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path());
        let (file, code, position) = damage(dir.path());
        let before = snapshot(dir.path());
        let report = verify(dir.path()).unwrap();
        assert_eq!(
            before,
            snapshot(dir.path()),
            "case {i} ({what}): verify modified a file"
        );
        let first = report
            .problems
            .first()
            .unwrap_or_else(|| panic!("case {i} ({what}): clean"));
        assert_eq!(first.kind.code(), code, "case {i} ({what}): {first}");
        assert_eq!(name(&first.path), file, "case {i} ({what}): {first}");
        assert_eq!(first.position, position, "case {i} ({what}): {first}");
        assert!(!first.hint().is_empty());
    }
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn torn_tail_hint_names_the_truncation_point() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let path = active_log(dir.path());
    let end = data_end(&path);
    modify(&path, |b| {
        b.resize(b.len().max(end as usize + 40), 0);
        b[end as usize..end as usize + 40].fill(0xab)
    });
    let report = verify(dir.path()).unwrap();
    let first = &report.problems[0];
    assert_eq!(first.kind.code(), "torn_tail", "{first}");
    assert!(
        first.hint().contains(&format!("to byte {end}")),
        "{}",
        first.hint()
    );
    // The broker agrees: opening the log cuts exactly there.
    let (_, open) = Log::open_with_report(dir.path(), config()).unwrap();
    assert_eq!(open.recovery.valid_end, end);
    assert!(verify(dir.path()).unwrap().is_clean());
}

#[test]
fn walk_reports_how_data_ends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.log");
    let b = batch(0, Compression::None);
    let len = b.len() as u64;
    let cases: Vec<(Vec<u8>, usize, DataEnd)> = vec![
        (vec![], 0, DataEnd::EndOfFile { position: 0 }),
        (b.to_vec(), 1, DataEnd::EndOfFile { position: len }),
        (
            [&b[..], &[0u8; 500]].concat(),
            1,
            DataEnd::Preallocated {
                position: len,
                bytes: 500,
            },
        ),
        (
            [&b[..], &[0u8; 100], &[1u8]].concat(),
            1,
            DataEnd::Unreadable {
                position: len,
                reason: Unreadable::StrayBytes {
                    first_non_zero: len + 100,
                },
            },
        ),
        (
            b[..b.len() - 1].to_vec(),
            0,
            DataEnd::Unreadable {
                position: 0,
                reason: Unreadable::PastEnd {
                    batch_len: len as u32,
                    available: len - 1,
                },
            },
        ),
    ];
    for (i, (bytes, count, end)) in cases.into_iter().enumerate() {
        std::fs::write(&path, &bytes).unwrap();
        let f = LogFile::open(&path).unwrap();
        let mut it = f.batches(0);
        let n = it
            .by_ref()
            .map(|b| b.unwrap())
            .filter(StoredBatch::crc_ok)
            .count();
        assert_eq!(n, count, "case {i}");
        assert_eq!(it.end(), Some(&end), "case {i}");
    }
}

#[test]
fn scan_start_uses_only_entries_that_check_out() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let files = list(dir.path()).unwrap();
    let seg = &files.segments[0];
    let log = LogFile::open(&seg.log).unwrap();
    let boundaries = batch_positions(&seg.log);
    let last = log.batches(0).map(|b| b.unwrap()).last().unwrap().header;
    for offset in [0, 1, 20, last.base_offset, last.last_offset()] {
        let at = scan_start(seg, &log, offset).unwrap();
        assert!(boundaries.contains(&at), "offset {offset}: {at}");
        let h = log.batch_at(at).unwrap().unwrap().header;
        assert!(h.base_offset <= offset, "offset {offset}");
    }
    assert!(
        scan_start(seg, &log, last.last_offset()).unwrap() > 0,
        "the index is used"
    );
    modify(&seg.index, |b| {
        b.iter_mut().for_each(|x| *x = x.wrapping_add(3))
    });
    assert_eq!(
        scan_start(seg, &log, last.last_offset()).unwrap(),
        0,
        "a bad index is ignored"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Garbage in any file never panics and is reported as problems.
    #[test]
    fn garbage_never_panics(
        log in proptest::collection::vec(any::<u8>(), 0..600),
        index in proptest::collection::vec(any::<u8>(), 0..60),
        zeros in 0usize..200,
        keep_header in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut data = if keep_header { batch(0, Compression::None).to_vec() } else { Vec::new() };
        data.extend_from_slice(&log);
        data.resize(data.len() + zeros, 0);
        for base in [0u64, 5] {
            std::fs::write(dir.path().join(crate::filename::segment_file_name(base, LOG_EXT)), &data).unwrap();
            std::fs::write(dir.path().join(crate::filename::segment_file_name(base, INDEX_EXT)), &index).unwrap();
            std::fs::write(dir.path().join(crate::filename::segment_file_name(base, TIME_INDEX_EXT)), &index).unwrap();
        }
        std::fs::write(dir.path().join(STATE_FILE), &index).unwrap();
        let report = verify(dir.path()).unwrap();
        prop_assert!(!report.is_clean());
        for p in &report.problems {
            let _ = (p.to_string(), p.hint());
        }
    }
}
