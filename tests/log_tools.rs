//! Black-box tests of `runnel log dump` and `runnel log verify`: build a real
//! partition directory with `runnel_storage::Log`, damage it on purpose, and
//! run the built `runnel` binary on it as an operator would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use runnel_batch::{BatchBuilder, Compression, ControlKind, NewRecord};
use runnel_storage::{FlushPolicy, Log, LogConfig};
use serde_json::Value;

/// Damaging a partition on purpose and snapshotting it: the code the
/// storage crate's inspect tests use too.
#[path = "../crates/runnel-storage/src/inspect/damage.rs"]
mod damage;
use damage::{modify, snapshot, write_torn_append};

/// Batches appended by [`build_log`] after its leading control batch.
const BATCHES: u64 = 300;
/// Records per data batch.
const RECORDS: u64 = 3;
/// Record timestamps start here (ms).
const T0: i64 = 1_700_000_000_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        max_batch_bytes: 16 << 10,
        index_interval_bytes: 1024,
        index_max_bytes: 4096,
        flush: FlushPolicy::Never,
        retention_ms: None,
        segment_ms: None,
        ..Default::default()
    }
}

/// Key and value of record `j` of data batch `i`. The value carries 200
/// pseudo-random hex digits (a fixed xorshift sequence), so that compressed
/// batches stay large and the log rolls.
fn record(i: u64, j: u64) -> (String, String) {
    let mut x = (i * RECORDS + j + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let noise: String = (0..25)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:08x}", x as u32)
        })
        .collect();
    (format!("key-{i}"), format!("value-{i}-{j}-{noise}"))
}

/// A partition of one Raft no-op (offset 0, as a new leader writes) and
/// [`BATCHES`] data batches of [`RECORDS`] records each (offsets 1..), in
/// terms 1..=4, mixing compressions, over several 64 KiB segments. The
/// log is dropped without closing, as after a crash.
fn build_log(dir: &Path) {
    let log = Log::open(dir, config()).unwrap();
    let noop = BatchBuilder::control(ControlKind::RaftNoop, b"", T0).unwrap();
    log.append(&noop, 1).unwrap();
    for i in 0..BATCHES {
        let compression = [Compression::None, Compression::Lz4, Compression::Zstd][i as usize % 3];
        let mut b = BatchBuilder::new(compression);
        let records: Vec<_> = (0..RECORDS).map(|j| record(i, j)).collect();
        for (j, (key, value)) in records.iter().enumerate() {
            b.push(NewRecord {
                key: Some(key.as_bytes()),
                value: value.as_bytes(),
                headers: &[("trace", b"t1")],
                timestamp: T0 + (i * RECORDS) as i64 + j as i64,
            });
        }
        log.append(&b.finish().unwrap(), 1 + i / 80).unwrap();
    }
    assert!(log.segments().unwrap().len() >= 3, "the log must roll");
}

fn runnel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .env_remove("RUNNEL_OUTPUT")
        .output()
        .expect("run the runnel binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `runnel log dump --output json` parsed, one value per line.
fn dump_json(dir: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["log", "dump", path_str(dir), "--output", "json"];
    args.extend_from_slice(extra);
    let out = runnel(&args);
    assert_eq!(out.status.code(), Some(0), "dump failed: {}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

fn verify_json(dir: &Path) -> (Option<i32>, Value) {
    let out = runnel(&["log", "verify", path_str(dir), "--output", "json"]);
    let report = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("bad JSON: {e}\n{}", stdout(&out)));
    (out.status.code(), report)
}

#[test]
fn help_describes_commands_and_options() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &["log", "Examples:", "Exit status:", "RUNNEL_OUTPUT"],
        ),
        (
            &["log", "--help"],
            &["dump", "verify", "partition.state", "Examples:"],
        ),
        (
            &["log", "dump", "--help"],
            &[
                "--from-offset",
                "--max",
                "--print-records",
                "--output",
                "PARTITION_DIR",
                "Examples:",
                "JSON Lines",
            ],
        ),
        (
            &["log", "verify", "--help"],
            &["--output", "PARTITION_DIR", "Examples:", "Exit status"],
        ),
    ];
    for (i, (args, wanted)) in cases.iter().enumerate() {
        let out = runnel(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "case {i}: {args:?}: {}",
            stderr(&out)
        );
        let text = stdout(&out);
        for w in *wanted {
            assert!(
                text.contains(w),
                "case {i}: {args:?} help lacks {w:?}:\n{text}"
            );
        }
    }
}

#[test]
fn usage_errors_exit_2() {
    let cases: &[&[&str]] = &[
        &[],
        &["log"],
        &["log", "dump"],
        &["log", "dump", "/tmp", "--max", "0"],
        &["log", "verify", "--bogus", "/tmp"],
    ];
    for (i, args) in cases.iter().enumerate() {
        let out = runnel(args);
        assert_eq!(out.status.code(), Some(2), "case {i}: {args:?}");
    }
}

#[test]
fn missing_directory_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-partition");
    for verb in ["dump", "verify"] {
        let out = runnel(&["log", verb, path_str(&missing)]);
        assert_eq!(out.status.code(), Some(2), "{verb}");
        let err = stderr(&out);
        assert!(
            err.contains(path_str(&missing)) && err.contains("does not exist"),
            "{verb}: {err}"
        );
        assert!(
            err.contains("check the path"),
            "{verb} says what to do: {err}"
        );
        assert!(stdout(&out).is_empty(), "{verb}");
    }
    // A segment file instead of its directory: the error names the directory.
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path());
    let file = dir.path().join("00000000000000000000.log");
    let out = runnel(&["log", "verify", path_str(&file)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("({})", dir.path().display())),
        "{}",
        stderr(&out)
    );
    // An empty directory is not a partition.
    let empty = tempfile::tempdir().unwrap();
    let out = runnel(&["log", "dump", path_str(empty.path())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no segment"), "{}", stderr(&out));
    let out = runnel(&["log", "verify", path_str(empty.path())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("no segment"), "{}", stdout(&out));
}

#[test]
fn dump_prints_every_batch_and_record() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path());
    let events = dump_json(dir.path(), &["--print-records"]);
    let segments = of_type(&events, "segment");
    let batches = of_type(&events, "batch");
    assert!(segments.len() >= 3);
    assert_eq!(batches.len() as u64, 1 + BATCHES);
    assert_eq!(of_type(&events, "end").len(), segments.len());

    // The leading control batch.
    let noop = batches[0];
    assert_eq!(
        (noop["base_offset"].as_u64(), noop["last_offset"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(noop["control"], true);
    assert_eq!(noop["control_kind"], "raft_noop");

    let mut next_offset = 0;
    for (k, b) in batches.iter().enumerate() {
        assert_eq!(b["base_offset"].as_u64(), Some(next_offset), "batch {k}");
        assert_eq!(b["raft_index"].as_u64(), Some(k as u64 + 1), "batch {k}");
        assert_eq!(b["crc_ok"], true, "batch {k}");
        for field in [
            "position",
            "size",
            "raft_term",
            "first_timestamp",
            "max_timestamp",
            "compression",
            "record_count",
        ] {
            assert!(!b[field].is_null(), "batch {k} lacks {field}");
        }
        next_offset = b["last_offset"].as_u64().unwrap() + 1;
        if k == 0 {
            continue;
        }
        let i = k as u64 - 1;
        assert_eq!(b["raft_term"].as_u64(), Some(1 + i / 80), "batch {k}");
        assert_eq!(
            b["compression"],
            ["none", "lz4", "zstd"][i as usize % 3],
            "batch {k}"
        );
        assert_eq!(b["record_count"].as_u64(), Some(RECORDS));
        let records = b["records"].as_array().unwrap();
        assert_eq!(records.len() as u64, RECORDS);
        for (j, r) in records.iter().enumerate() {
            let (key, value) = record(i, j as u64);
            assert_eq!(r["offset"].as_u64(), Some(1 + i * RECORDS + j as u64));
            assert_eq!(
                r["timestamp"].as_i64(),
                Some(T0 + (i * RECORDS) as i64 + j as i64)
            );
            assert_eq!(
                (r["key"].as_str(), r["key_encoding"].as_str()),
                (Some(key.as_str()), Some("utf8"))
            );
            assert_eq!(r["value"].as_str(), Some(value.as_str()));
            assert_eq!(r["headers"][0]["name"], "trace");
            assert_eq!(r["headers"][0]["value"], "t1");
        }
    }
    assert_eq!(next_offset, 1 + BATCHES * RECORDS);
    // Positions are consistent: each segment's batches are back to back.
    let ends = of_type(&events, "end");
    assert_eq!(ends.last().unwrap()["how"], "end_of_file");
    assert!(
        ends[..ends.len() - 1]
            .iter()
            .all(|e| e["how"] == "end_of_file")
    );

    // The text output says the same.
    let out = runnel(&["log", "dump", path_str(dir.path()), "--print-records"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("offsets ")).count() as u64,
        1 + BATCHES
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("  record offset "))
            .count() as u64,
        1 + BATCHES * RECORDS
    );
    assert!(text.contains("offsets 0..=0 position 0 "), "{text}");
    assert!(text.contains("control yes (raft_noop)"));
    let (key, value) = record(5, 2);
    let line = format!(
        "  record offset {} ts {} key {key:?} value {value:?} headers \"trace\"=\"t1\"",
        1 + 5 * RECORDS + 2,
        T0 + 17
    );
    assert!(text.lines().any(|l| l == line), "no line {line:?}");
    assert!(text.contains("(end of file)"));
}

#[test]
fn dump_honors_from_offset_and_max() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path());
    // (from offset, max, expected base offsets of the batches shown)
    let cases: &[(u64, Option<u64>, &[u64])] = &[
        (0, Some(2), &[0, 1]),
        (1, Some(1), &[1]),
        (2, Some(3), &[1, 4, 7]),    // offset 2 lies inside the batch 1..=3
        (361, Some(2), &[361, 364]), // deep in a later segment, found through its index
        (
            1 + (BATCHES - 1) * RECORDS + 2,
            None,
            &[1 + (BATCHES - 1) * RECORDS],
        ),
        (1 + BATCHES * RECORDS, None, &[]), // the log end
        (1_000_000, None, &[]),
    ];
    for (i, (from, max, want)) in cases.iter().enumerate() {
        let from_s = from.to_string();
        let max_s = max.map(|m| m.to_string());
        let mut args = vec!["--from-offset", from_s.as_str()];
        if let Some(m) = &max_s {
            args.extend(["--max", m.as_str()]);
        }
        let events = dump_json(dir.path(), &args);
        let got: Vec<u64> = of_type(&events, "batch")
            .iter()
            .map(|b| b["base_offset"].as_u64().unwrap())
            .collect();
        assert_eq!(got, *want, "case {i}: --from-offset {from} --max {max:?}");
    }
    let out = runnel(&[
        "log",
        "dump",
        path_str(dir.path()),
        "--from-offset",
        "1000000",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains(&format!("the log ends at offset {}", 1 + BATCHES * RECORDS)),
        "{}",
        stdout(&out)
    );
    let out = runnel(&["log", "dump", path_str(dir.path()), "--max", "2"]);
    assert!(
        stdout(&out).contains("stopped after 2 batches"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn dump_shows_binary_values_as_hex() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    let mut b = BatchBuilder::new(Compression::None);
    b.push(NewRecord {
        key: None,
        value: &[0xde, 0xad, 0x00, 0xff],
        headers: &[("bin", &[0x01])],
        timestamp: 5,
    });
    b.push(NewRecord {
        key: Some(b"k"),
        value: "caf\u{e9}".as_bytes(),
        headers: &[],
        timestamp: 9,
    });
    log.append(&b.finish().unwrap(), 1).unwrap();
    drop(log);
    let out = runnel(&["log", "dump", path_str(dir.path()), "--print-records"]);
    let text = stdout(&out);
    assert!(
        text.contains("record offset 0 ts 5 key none value 0xdead00ff headers \"bin\"=0x01"),
        "{text}"
    );
    assert!(
        text.contains("record offset 1 ts 9 key \"k\" value \"caf\u{e9}\""),
        "{text}"
    );
    let events = dump_json(dir.path(), &["--print-records"]);
    let r = &of_type(&events, "batch")[0]["records"];
    assert_eq!(
        (r[0]["value"].as_str(), r[0]["value_encoding"].as_str()),
        (Some("dead00ff"), Some("hex"))
    );
    assert!(r[0]["key"].is_null());
}

#[test]
fn verify_passes_a_clean_multi_segment_log_and_modifies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path());
    // Reopen once more, as a restarted broker would (recovery, a new session).
    drop(Log::open(dir.path(), config()).unwrap());
    let before = snapshot(dir.path());

    let out = runnel(&["log", "verify", path_str(dir.path())]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.starts_with("ok: "), "{text}");
    assert!(
        text.contains(&format!(
            "{} batches, {} records",
            1 + BATCHES,
            1 + BATCHES * RECORDS
        )),
        "{text}"
    );

    let (code, report) = verify_json(dir.path());
    assert_eq!(code, Some(0));
    assert_eq!(report["ok"], true);
    assert!(report["segments"].as_u64().unwrap() >= 3);
    assert_eq!(report["batches"].as_u64(), Some(1 + BATCHES));
    assert_eq!(report["records"].as_u64(), Some(1 + BATCHES * RECORDS));
    assert_eq!(report["end_offset"].as_u64(), Some(1 + BATCHES * RECORDS));
    assert_eq!(report["last_index"].as_u64(), Some(1 + BATCHES));
    assert!(report["bytes"].as_u64().unwrap() > 0);
    assert_eq!(report["problems"].as_array().unwrap().len(), 0);

    assert_eq!(before, snapshot(dir.path()), "verify modified a file");
}

/// Where [`damaged`] put the damage: file and byte position.
struct Damage {
    file: PathBuf,
    position: u64,
    kind: &'static str,
}

/// Builds a log, applies one kind of damage, and returns where it is.
fn damaged(dir: &Path, what: &str) -> Damage {
    build_log(dir);
    let events = dump_json(dir, &[]);
    let batches = of_type(&events, "batch");
    let in_file = |f: &PathBuf| -> Vec<&Value> {
        batches
            .iter()
            .copied()
            .filter(|b| b["file"].as_str() == f.to_str())
            .collect()
    };
    let segments: Vec<PathBuf> = of_type(&events, "segment")
        .iter()
        .map(|s| PathBuf::from(s["file"].as_str().unwrap()))
        .collect();
    match what {
        "flipped byte in a sealed segment" => {
            let file = segments[1].clone();
            let position = in_file(&file)[5]["position"].as_u64().unwrap();
            modify(&file, |b| b[position as usize + 120] ^= 0x20);
            Damage {
                file,
                position,
                kind: "crc_mismatch",
            }
        }
        "torn tail" => {
            let file = segments.last().unwrap().clone();
            let end = of_type(&events, "end").last().unwrap()["position"]
                .as_u64()
                .unwrap();
            let mut b = BatchBuilder::new(Compression::None);
            b.push(NewRecord {
                value: &[7u8; 600],
                timestamp: T0,
                ..Default::default()
            });
            let mut batch = b.finish().unwrap().to_vec();
            runnel_batch::stamp(&mut batch, 1 + BATCHES * RECORDS, 4, 2 + BATCHES);
            write_torn_append(&file, end, &batch);
            Damage {
                file,
                position: end,
                kind: "torn_tail",
            }
        }
        "damaged index entry" => {
            let file = segments[0].with_extension("index");
            // Entry 1's position field (bytes 8..12 of the entry) moves by one.
            modify(&file, |b| b[12 + 8] = b[12 + 8].wrapping_add(1));
            Damage {
                file,
                position: 12,
                kind: "index_entry",
            }
        }
        other => panic!("unknown damage {other}"),
    }
}

#[test]
fn verify_names_the_file_and_position_of_damage() {
    for (i, what) in [
        "flipped byte in a sealed segment",
        "torn tail",
        "damaged index entry",
    ]
    .iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let damage = damaged(dir.path(), what);
        let before = snapshot(dir.path());

        let out = runnel(&["log", "verify", path_str(dir.path())]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "case {i} ({what}): {}",
            stdout(&out)
        );
        let text = stdout(&out);
        let first = format!(
            "first bad position: {} at byte {}",
            damage.file.display(),
            damage.position
        );
        assert!(
            text.contains(&first),
            "case {i} ({what}): want {first:?} in\n{text}"
        );
        assert!(
            text.contains("  next:   "),
            "case {i} ({what}): a hint of what to do:\n{text}"
        );

        let (code, report) = verify_json(dir.path());
        assert_eq!(code, Some(1), "case {i} ({what})");
        assert_eq!(report["ok"], false);
        let p = &report["problems"][0];
        assert_eq!(
            p["file"].as_str(),
            damage.file.to_str(),
            "case {i} ({what}): {p}"
        );
        assert_eq!(
            p["position"].as_u64(),
            Some(damage.position),
            "case {i} ({what}): {p}"
        );
        assert_eq!(p["kind"], damage.kind, "case {i} ({what}): {p}");
        assert!(
            !p["reason"].as_str().unwrap().is_empty() && !p["hint"].as_str().unwrap().is_empty()
        );
        if damage.kind == "torn_tail" {
            let hint = p["hint"].as_str().unwrap();
            assert!(
                hint.contains("truncates")
                    && hint.contains(&format!("to byte {}", damage.position)),
                "{hint}"
            );
        }

        assert_eq!(
            before,
            snapshot(dir.path()),
            "case {i} ({what}): verify modified a file"
        );
    }
}

#[test]
fn dump_flags_damaged_batches() {
    let dir = tempfile::tempdir().unwrap();
    let damage = damaged(dir.path(), "flipped byte in a sealed segment");
    let before = snapshot(dir.path());
    let out = runnel(&["log", "dump", path_str(dir.path()), "--print-records"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    let bad: Vec<&str> = text.lines().filter(|l| l.ends_with("crc BAD")).collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].contains(&format!(" position {} ", damage.position)),
        "{}",
        bad[0]
    );
    assert!(text.contains("records not shown: the CRC does not match"));
    assert_eq!(before, snapshot(dir.path()), "dump modified a file");

    let dir = tempfile::tempdir().unwrap();
    let damage = damaged(dir.path(), "torn tail");
    let out = runnel(&["log", "dump", path_str(dir.path()), "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    // The torn half-batch runs past the end of the file: the walk ends
    // there, naming it unreadable.
    let last: Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["type"].as_str(), last["how"].as_str()),
        (Some("end"), Some("unreadable")),
        "{last}"
    );
    assert_eq!(last["position"].as_u64(), Some(damage.position));
}

/// The golden partition in `tests/fixtures/partition-v1`: a log written by
/// format version 1, committed so that every later build must still read
/// it (an upgrade never strands data) and so that a newcomer has a real
/// partition to point the tools at.
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/partition-v1"
);

/// Records of the golden partition: batch `i` (0..12) holds `i % 3 + 1`
/// records; every batch is one Raft entry, terms 1 then 2 from batch 6.
fn golden_records(i: u64) -> Vec<(String, String, i64)> {
    (0..i % 3 + 1)
        .map(|j| {
            (
                format!("order-{i}"),
                format!("event {i}.{j}: shipped"),
                T0 + (i * 10 + j) as i64,
            )
        })
        .collect()
}

/// Regenerates the golden partition. Run only on a deliberate format
/// change: `cargo test -p runnel-cli --test log_tools -- --ignored regenerate`.
#[test]
#[ignore]
fn regenerate_golden_partition() {
    let dir = Path::new(GOLDEN);
    let _ = std::fs::remove_dir_all(dir);
    let config = LogConfig {
        segment_bytes: 4096,
        max_batch_bytes: 4096,
        index_interval_bytes: 256,
        index_max_bytes: 120,
        flush: FlushPolicy::Always,
        retention_ms: None,
        segment_ms: None,
        ..Default::default()
    };
    let log = Log::open(dir, config).unwrap();
    let noop = BatchBuilder::control(ControlKind::RaftNoop, b"", T0).unwrap();
    log.append(&noop, 1).unwrap();
    for i in 0..12u64 {
        let compression = [Compression::None, Compression::Lz4, Compression::Zstd][i as usize % 3];
        let mut b = BatchBuilder::new(compression);
        let recs = golden_records(i);
        for (k, v, ts) in &recs {
            b.push(NewRecord {
                key: Some(k.as_bytes()),
                value: v.as_bytes(),
                headers: &[("source", b"golden")],
                timestamp: *ts,
            });
        }
        log.append(&b.finish().unwrap(), if i < 6 { 1 } else { 2 })
            .unwrap();
        // Pad with larger batches so that the log rolls.
        let pad = "x".repeat(900);
        let mut b = BatchBuilder::new(Compression::None);
        b.push(NewRecord {
            key: None,
            value: pad.as_bytes(),
            headers: &[],
            timestamp: T0 + i as i64 * 10 + 5,
        });
        log.append(&b.finish().unwrap(), if i < 6 { 1 } else { 2 })
            .unwrap();
    }
    log.close().unwrap();
}

#[test]
fn golden_partition_still_reads_and_verifies() {
    let golden = Path::new(GOLDEN);
    let out = runnel(&["log", "verify", path_str(golden)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify: {}{}",
        stdout(&out),
        stderr(&out)
    );
    // Open a copy with the storage engine (opening may write) and check
    // every record of the data batches.
    let work = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(golden).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), work.path().join(entry.file_name())).unwrap();
    }
    let log = Log::open(work.path(), config()).unwrap();
    assert_eq!(log.last_index().unwrap(), 25, "no-op + 12 x (data, pad)");
    assert!(
        log.segments().unwrap().len() >= 3,
        "the golden log spans segments"
    );
    let mut offset = 1;
    for i in 0..12u64 {
        let read = log.read(offset, u64::MAX, 1).unwrap();
        let view = runnel_batch::BatchView::new(&read.bytes).unwrap();
        assert_eq!(view.base_offset(), offset);
        let records = view.records().unwrap();
        let got: Vec<(String, String, i64)> = records
            .iter()
            .map(|r| {
                let r = r.unwrap();
                let headers: Vec<_> = r.headers().collect();
                assert_eq!(headers, vec![("source", &b"golden"[..])]);
                (
                    String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                    String::from_utf8(r.value.to_vec()).unwrap(),
                    r.timestamp,
                )
            })
            .collect();
        assert_eq!(got, golden_records(i), "batch {i}");
        assert_eq!(view.header().raft_term, if i < 6 { 1 } else { 2 });
        offset = view.next_offset() + 1; // skip the pad batch (one record)
    }
    assert_eq!(log.log_end_offset().unwrap(), offset);
}
