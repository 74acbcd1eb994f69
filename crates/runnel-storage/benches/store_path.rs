//! Which way should the active segment store bytes: `pwrite` or a `memcpy`
//! into a writable map of the preallocated file? The architecture asks the
//! crate docs to say, with numbers. This measures both on the same sizes,
//! without the log around them, on the real disk:
//!
//! | id | what one iteration does (timed part) |
//! |---|---|
//! | `{pwrite,mmap}/none/{chunk}` | stores `RUNNEL_BENCH_STORE_MIB` in chunks, no sync: the page-cache cost |
//! | `{pwrite,mmap}/end/{chunk}` | the same, then one `fdatasync` / `msync(MS_SYNC)` of everything (flush never + close) |
//! | `{pwrite,mmap}/each/{chunk}` | a sync of each chunk after storing it (flush always, one writer) |
//! | `pwrite_overwrite/each/{chunk}` | `pwrite` + `fdatasync` each chunk into blocks already written and synced: what an fsync costs without converting unwritten extents |
//! | `pwrite_grow/{none,end,each}/{chunk}` | `pwrite` at the end of a file that grows (no preallocation: the segment write path since e3bc054) |
//! | `pwrite_keepsize/{none,end,each}/{chunk}` | the same into blocks reserved by `fallocate(FALLOC_FL_KEEP_SIZE)`: the file still grows, its blocks are allocated up front |
//!
//! The `pwrite` and `mmap` files are new and `fallocate`d to their final
//! size (a map must not reach unallocated blocks: a full disk would be
//! `SIGBUS`); `overwrite` files are written and synced before; `grow` files
//! start empty.
//!
//! ```text
//! cargo bench -p runnel-storage --bench store_path
//! RUNNEL_BENCH_STORE_MIB=64 cargo bench -p runnel-storage --bench store_path -- each
//! ```
//! Environment: `RUNNEL_BENCH_STORE_MIB` (256), `RUNNEL_BENCH_STORE_CHUNK_KIB`
//! (`64,1024`), `RUNNEL_BENCH_DIR`, `RUNNEL_BENCH_SAMPLES`.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use memmap2::{MmapMut, MmapOptions};

mod disk;

const MIB: u64 = 1 << 20;
/// Source bytes, cycled: larger than the CPU caches.
const SOURCE_BYTES: usize = 64 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Pwrite,
    Mmap,
    PwriteOverwrite,
    PwriteGrow,
    PwriteKeepSize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sync {
    None,
    End,
    Each,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Pwrite => "pwrite",
            Method::Mmap => "mmap",
            Method::PwriteOverwrite => "pwrite_overwrite",
            Method::PwriteGrow => "pwrite_grow",
            Method::PwriteKeepSize => "pwrite_keepsize",
        }
    }
}

impl Sync {
    fn name(self) -> &'static str {
        match self {
            Sync::None => "none",
            Sync::End => "end",
            Sync::Each => "each",
        }
    }
}

fn fallocate(file: &File, mode: libc::c_int, len: u64) {
    // SAFETY: plain syscall on a descriptor we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, 0, len as libc::off_t) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
}

/// A new file of `total` bytes prepared as `method` needs, made durable
/// (file and directory) before the timed part, as a new segment is.
fn prepare(dir: &Path, method: Method, total: u64, source: &[u8]) -> File {
    let path = dir.join("segment");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create");
    match method {
        Method::Pwrite | Method::Mmap => fallocate(&file, 0, total),
        Method::PwriteKeepSize => fallocate(&file, libc::FALLOC_FL_KEEP_SIZE, total),
        Method::PwriteOverwrite => {
            let mut pos = 0;
            while pos < total {
                let n = (total - pos).min(source.len() as u64);
                file.write_all_at(&source[..n as usize], pos)
                    .expect("prefill");
                pos += n;
            }
        }
        Method::PwriteGrow => {}
    }
    file.sync_all().expect("fsync");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync directory");
    file
}

/// Stores `total` bytes in `chunk`-byte pieces; returns the timed duration.
fn store(
    file: &File,
    method: Method,
    sync: Sync,
    total: u64,
    chunk: u64,
    source: &[u8],
) -> Duration {
    let mut map: Option<MmapMut> = (method == Method::Mmap)
        // SAFETY: the file is ours, preallocated to `total`, and outlives the map.
        .then(|| unsafe { MmapOptions::new().len(total as usize).map_mut(file) }.expect("map"));
    let pieces = total / chunk;
    let t = Instant::now();
    for i in 0..pieces {
        let pos = i * chunk;
        let from = (pos as usize) % (source.len() - chunk as usize + 1);
        let src = &source[from..from + chunk as usize];
        match &mut map {
            Some(m) => m[pos as usize..(pos + chunk) as usize].copy_from_slice(src),
            None => file.write_all_at(src, pos).expect("pwrite"),
        }
        if sync == Sync::Each {
            match &map {
                Some(m) => m.flush_range(pos as usize, chunk as usize).expect("msync"),
                None => file.sync_data().expect("fdatasync"),
            }
        }
    }
    if sync == Sync::End {
        match &map {
            Some(m) => m.flush().expect("msync"),
            None => file.sync_data().expect("fdatasync"),
        }
    }
    t.elapsed()
}

fn main() {
    let total_mib = disk::env_u64("RUNNEL_BENCH_STORE_MIB", 256, 4);
    let chunks = disk::env_list("RUNNEL_BENCH_STORE_CHUNK_KIB", &[64, 1024]);
    let samples = disk::env_u64("RUNNEL_BENCH_SAMPLES", 10, 10) as usize;
    let source = disk::noise(SOURCE_BYTES, 42);
    let data_dir = disk::data_dir();
    eprintln!(
        "[runnel-bench] dir {} ({})",
        data_dir.display(),
        disk::fs_type(&data_dir)
    );
    let mut c = Criterion::default()
        .sample_size(samples)
        .configure_from_args();
    let mut g = c.benchmark_group("store_path");
    g.sample_size(samples)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    let cases = [
        (Method::Pwrite, Sync::None),
        (Method::Mmap, Sync::None),
        (Method::Pwrite, Sync::End),
        (Method::Mmap, Sync::End),
        (Method::Pwrite, Sync::Each),
        (Method::Mmap, Sync::Each),
        (Method::PwriteOverwrite, Sync::Each),
        (Method::PwriteGrow, Sync::None),
        (Method::PwriteGrow, Sync::End),
        (Method::PwriteGrow, Sync::Each),
        (Method::PwriteKeepSize, Sync::None),
        (Method::PwriteKeepSize, Sync::End),
        (Method::PwriteKeepSize, Sync::Each),
    ];
    for &kib in &chunks {
        let chunk = kib * 1024;
        let total = (total_mib * MIB / chunk).max(1) * chunk;
        g.throughput(Throughput::Bytes(total));
        for (method, sync) in cases {
            let id = format!(
                "{}/{}/{}",
                method.name(),
                sync.name(),
                if kib >= 1024 {
                    format!("{}MiB", kib / 1024)
                } else {
                    format!("{kib}KiB")
                }
            );
            g.bench_function(&id, |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let dir = disk::scratch_dir("store-path-");
                        let file = prepare(dir.path(), method, total, &source);
                        let d = store(&file, method, sync, total, chunk, &source);
                        timed += d;
                        disk::note(
                            &format!("store_path/{id}"),
                            &[("MB_per_s", total as f64 / d.as_secs_f64() / 1e6)],
                        );
                        drop(file);
                        drop(dir);
                        disk::sync_fs(&data_dir);
                    }
                    timed
                });
            });
        }
    }
    g.finish();
    c.final_summary();
    disk::finish("store_path");
}
