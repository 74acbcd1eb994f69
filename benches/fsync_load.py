#!/usr/bin/env python3
"""The disk's own fsync latency under the write pattern of Runnel's Raft
loop, without Runnel: NODES processes (the nodes of a dev-cluster sharing
one disk), each appending MBPS MB/s spread over FILES files (partition
logs) and, every round, fdatasync-ing all its files from one thread per
file at once (as a Raft round's parallel fsync does). Prints the
distribution of single fdatasync calls and of rounds (a round waits for
its slowest fsync), so acks=all latency can be put next to what the disk
itself does in the same minute.

    benches/fsync_load.py [--nodes 3] [--mbps 40] [--files 8] [--seconds 10] [--dir DIR]

--mode syncfs replaces the per-file fsyncs by one syncfs(2) per round.
"""
import argparse
import ctypes
import os
import shutil
import tempfile
import threading
import time
import multiprocessing as mp


def node(i, args, out):
    d = os.path.join(args.dir, str(i))
    os.makedirs(d, exist_ok=True)
    fds = [os.open(os.path.join(d, str(j)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
           for j in range(args.files)]
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    calls, rounds, lock = [], [], threading.Lock()
    t0 = last = time.monotonic()
    while time.monotonic() - t0 < args.seconds:
        now = time.monotonic()
        due = int((now - last) * args.mbps * 1e6 / args.files)
        last = now
        buf = b"x" * max(due, 4096)
        for fd in fds:
            os.write(fd, buf)
        start = time.monotonic()
        if args.mode == "syncfs":
            if libc.syncfs(fds[0]) != 0:
                raise OSError(ctypes.get_errno(), "syncfs")
        else:
            def sync(fd):
                s = time.monotonic()
                os.fdatasync(fd)
                with lock:
                    calls.append(time.monotonic() - s)
            ts = [threading.Thread(target=sync, args=(fd,)) for fd in fds]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        rounds.append(time.monotonic() - start)
    out.put((calls, rounds))


def summary(name, xs, seconds):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return f"{name}: none"
    pct = lambda p: xs[min(n - 1, int(n * p))] * 1e3
    return (f"{name}: {n} ({n / seconds:.0f}/s), mean {sum(xs) / n * 1e3:.2f} ms, "
            f"p50 {pct(.5):.2f}, p90 {pct(.9):.2f}, p99 {pct(.99):.2f}, max {xs[-1] * 1e3:.2f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--mbps", type=float, default=40.0, help="MB/s appended by each node")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--mode", choices=["fdatasync", "syncfs"], default="fdatasync")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir under target/)")
    args = ap.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target")
    os.makedirs(root, exist_ok=True)
    own = args.dir is None
    args.dir = args.dir or tempfile.mkdtemp(prefix="fsync-load-", dir=root)
    try:
        q = mp.Queue()
        ps = [mp.Process(target=node, args=(i, args, q)) for i in range(args.nodes)]
        for p in ps:
            p.start()
        results = [q.get() for _ in ps]
        for p in ps:
            p.join()
    finally:
        if own:
            shutil.rmtree(args.dir, ignore_errors=True)
    calls = sum((c for c, _ in results), [])
    rounds = sum((r for _, r in results), [])
    print(f"{args.nodes} nodes x {args.files} files, {args.mbps} MB/s per node, {args.seconds} s, {args.mode}")
    if calls:
        print("  " + summary("fdatasync calls", calls, args.seconds))
    print("  " + summary("rounds", rounds, args.seconds))


if __name__ == "__main__":
    main()
