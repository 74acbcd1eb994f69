//! What the storage benchmarks share: where they write (a directory on the
//! real disk, never tmpfs), how they make the page cache cold and check that
//! it is, sizes from environment variables, and a record of the figures
//! criterion does not report (fsyncs per append, page-cache residency).
//!
//! Included by each bench binary with `mod disk;`; not every binary uses
//! every function.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Whether this process measures: `cargo bench` passes `--bench`. Under
/// `cargo test --benches` (no `--bench`) or `cargo bench -- --test`, every
/// routine runs once and every size shrinks to a smoke test of a few MiB.
pub(crate) fn benchmarking() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

/// `name` from the environment as a number, else `default` under
/// `cargo bench` and `smoke` under `cargo test`.
pub(crate) fn env_u64(name: &str, default: u64, smoke: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) if benchmarking() => default,
        Err(_) => smoke,
    }
}

/// `name` from the environment as a comma-separated list of numbers.
pub(crate) fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a list of numbers"))
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Name of the file system holding `path`, from `statfs`.
pub(crate) fn fs_type(path: &Path) -> String {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path without NUL");
    // SAFETY: statfs fills the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    assert_eq!(
        rc,
        0,
        "statfs {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as i64 {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794c_7630 => "overlayfs".into(),
        TMPFS_MAGIC => "tmpfs".into(),
        RAMFS_MAGIC => "ramfs".into(),
        other => format!("0x{other:x}"),
    }
}

/// The directory benchmarks write to: `RUNNEL_BENCH_DIR`, else
/// `target/runnel-bench` of the workspace. Refuses tmpfs and ramfs: the
/// figures must come from the disk.
pub(crate) fn data_dir() -> PathBuf {
    let dir = match std::env::var_os("RUNNEL_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/runnel-bench"),
    };
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let dir = dir.canonicalize().expect("canonical bench directory");
    let fs = fs_type(&dir);
    assert!(
        fs != "tmpfs" && fs != "ramfs",
        "{} is on {fs}: set RUNNEL_BENCH_DIR to a directory on the disk",
        dir.display()
    );
    dir
}

/// A fresh, empty directory under the bench directory, removed on drop.
pub(crate) fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(data_dir())
        .expect("scratch directory")
}

/// `syncfs` of the file system holding `dir`: lets the disk finish the
/// writeback and discards of an untimed step before the next timed one.
pub(crate) fn sync_fs(dir: &Path) {
    let f = File::open(dir).expect("open directory for syncfs");
    // SAFETY: plain syscall on a descriptor we own.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    assert_eq!(rc, 0, "syncfs: {}", std::io::Error::last_os_error());
}

/// How a benchmark makes the page cache cold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Evict {
    /// `echo 3 > /proc/sys/vm/drop_caches` (needs root; drops every
    /// clean page of the machine).
    DropCaches,
    /// `posix_fadvise(POSIX_FADV_DONTNEED)` on each file (clean pages of
    /// those files only).
    Fadvise,
}

impl Evict {
    /// `RUNNEL_BENCH_COLD=drop|fadvise`; default `drop` when permitted.
    pub(crate) fn from_env() -> Evict {
        match std::env::var("RUNNEL_BENCH_COLD").as_deref() {
            Ok("fadvise") => Evict::Fadvise,
            Ok("drop") | Err(_) => {
                if fs::OpenOptions::new()
                    .write(true)
                    .open("/proc/sys/vm/drop_caches")
                    .is_ok()
                {
                    Evict::DropCaches
                } else {
                    eprintln!(
                        "[runnel-bench] drop_caches is not writable: using posix_fadvise(DONTNEED)"
                    );
                    Evict::Fadvise
                }
            }
            Ok(other) => panic!("RUNNEL_BENCH_COLD={other:?}: use drop or fadvise"),
        }
    }

    /// Name for reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Evict::DropCaches => "drop_caches",
            Evict::Fadvise => "fadvise_dontneed",
        }
    }

    /// Evicts `files` from the page cache. Pages still mapped by this
    /// process are not evicted by either method: drop maps first.
    pub(crate) fn evict(self, files: &[PathBuf]) {
        match self {
            Evict::DropCaches => {
                fs::write("/proc/sys/vm/drop_caches", "3\n")
                    .expect("write /proc/sys/vm/drop_caches");
            }
            Evict::Fadvise => {
                for path in files {
                    let f =
                        File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                    // SAFETY: plain syscall on a descriptor we own.
                    let rc = unsafe {
                        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
                    };
                    assert_eq!(rc, 0, "posix_fadvise {}", path.display());
                }
            }
        }
    }
}

/// Fraction of the bytes `[0, len)` of each `(file, len)` resident in the
/// page cache (`mincore`).
pub(crate) fn resident_fraction(extents: &[(PathBuf, u64)]) -> f64 {
    let (mut resident, mut total) = (0u64, 0u64);
    let page = 4096u64;
    for (path, len) in extents {
        let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let len = (*len).min(f.metadata().expect("stat").len());
        if len == 0 {
            continue;
        }
        // SAFETY: read-only map of a file nobody truncates during the call.
        let map = unsafe { memmap2::MmapOptions::new().len(len as usize).map(&f) }
            .expect("map for mincore");
        let pages = len.div_ceil(page) as usize;
        let mut vec = vec![0u8; pages];
        // SAFETY: `vec` has one byte per page of the mapped range.
        let rc = unsafe {
            libc::mincore(
                map.as_ptr() as *mut libc::c_void,
                map.len(),
                vec.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        resident += vec.iter().filter(|b| **b & 1 == 1).count() as u64 * page;
        total += pages as u64 * page;
    }
    if total == 0 {
        0.0
    } else {
        resident as f64 / total as f64
    }
}

/// `len` bytes of deterministic noise (xorshift64*), so that no layer below
/// can compress or deduplicate what the benchmarks write.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Figures criterion does not report, per benchmark id, one value per
/// measured iteration (warm-up iterations included).
static EXTRAS: Mutex<BTreeMap<String, BTreeMap<String, Vec<f64>>>> = Mutex::new(BTreeMap::new());

/// Notes `fields` for one iteration of benchmark `id`.
pub(crate) fn note(id: &str, fields: &[(&str, f64)]) {
    let mut all = EXTRAS.lock().expect("extras lock");
    let per_id = all.entry(id.to_owned()).or_default();
    for (k, v) in fields {
        per_id.entry((*k).to_owned()).or_default().push(*v);
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Prints the medians of the noted figures and writes them, with every
/// value, to `RUNNEL_BENCH_EXTRAS` (default `<bench dir>/extras-<bench>.json`).
pub(crate) fn finish(bench: &str) {
    let all = EXTRAS.lock().expect("extras lock");
    if all.is_empty() {
        return;
    }
    let path = std::env::var_os("RUNNEL_BENCH_EXTRAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir().join(format!("extras-{bench}.json")));
    let mut json = String::from("{\n");
    for (i, (id, fields)) in all.iter().enumerate() {
        let mut line = format!("[runnel-bench] {id}:");
        json.push_str(&format!("  \"{id}\": {{"));
        for (j, (k, v)) in fields.iter().enumerate() {
            let m = median(v);
            line.push_str(&format!(" {k}={m:.4}"));
            let values: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
            json.push_str(&format!(
                "{}\"{k}\": {{\"median\": {m}, \"n\": {}, \"values\": [{}]}}",
                if j == 0 { "" } else { ", " },
                v.len(),
                values.join(", ")
            ));
        }
        json.push_str(if i + 1 == all.len() { "}\n" } else { "},\n" });
        eprintln!(
            "{line} (medians of {} iterations)",
            fields.values().next().map_or(0, Vec::len)
        );
    }
    json.push_str("}\n");
    let mut f = File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(json.as_bytes()).expect("write extras");
    eprintln!("[runnel-bench] extras written to {}", path.display());
}
