#!/usr/bin/env python3
"""Where a cold read through the mount spends its time: the mount daemon's CPU.

Uses the work directory ``mount_read.py --workdir DIR`` leaves (``DIR/model/
model.safetensors`` and ``DIR/repo`` with the tag ``bench``). For each entry of
``--variants`` (mount arguments; ``-`` for none), ``--repeat`` times, alternating:
drops the page cache, reads the native file (``--mode seq``: 1 MiB ``readv``;
``load``: ``safe_open`` + every tensor), then a fresh mount's file the same way, and
prints the mount's throughput (or load time) beside native and the disk's ``O_DIRECT``
limit, the daemon's CPU (user, system) and page faults (``/proc/PID/stat``), the
bytes it read from disk (``/proc/PID/io``) and the requests it served (and its main
thread's CPU per request: the FUSE loop; ``--variants "--read-ahead-kb 128"`` for a
lazy mount's request size). ``--perf`` runs
``perf record -g`` on the daemon during the read (``--perf-out``), ``--py-spy`` runs
``py-spy record --threads --idle`` (``pip install .[bench]``) into ``--spy-out``.
Needs root (``drop_caches``).

    python scripts/bench/mount_profile.py --workdir DIR [--mode seq|load] [--repeat 2]
        [--variants "-,--no-verify"] [--perf] [--py-spy]
    perf report -i perf.data --no-children --sort dso --stdio -g none
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(os.path.dirname(os.path.dirname(HERE)))  # after PYTHONPATH (ab.py)
sys.path.insert(0, HERE)

from e2e import daemon_pid, drop_caches, loadavg, odirect_read  # noqa: E402
from mount_read import load_all, seq_read, stats  # noqa: E402
from tvcfs.fs import mount  # noqa: E402


def proc_stat(pid: int) -> dict:
    """CPU seconds (user, sys) and faults (minflt, majflt) of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return {"user": int(x[11]) / tck, "sys": int(x[12]) / tck, "minflt": int(x[7]), "majflt": int(x[9])}


def thread_cpu(pid: int) -> dict:
    """CPU seconds (user + sys) of each thread of process ``pid``: ``{tid: s}``
    (``/proc/PID/task/TID/stat``; threads that ended are missing)."""
    tck, out = os.sysconf("SC_CLK_TCK"), {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                x = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(x[11]) + int(x[12])) / tck
    return out


def proc_read_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))


def run(path: str, mode: str) -> str:
    if mode == "seq":
        dt, n = seq_read(path)
        return f"{n / dt / 1e9:.2f} GB/s"
    dt, _ = load_all(path)
    return f"{dt:.2f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--mode", choices=("seq", "load"), default="seq")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--variants", default="-,--no-verify", help="comma list of mount arguments ('-': none)")
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--perf-out", default="perf.data")
    ap.add_argument("--py-spy", action="store_true")
    ap.add_argument("--spy-out", default="spy.txt")
    a = ap.parse_args()
    native = os.path.join(a.workdir, "model", "model.safetensors")
    repo = os.path.join(a.workdir, "repo")
    mnt = os.path.join(a.workdir, "mnt")
    store = os.path.join(repo, ".tvcfs", "store", "data.mdb")
    print(f"load average {loadavg()}")
    for _ in range(a.repeat):
        for v in a.variants.split(","):
            args = tuple(v.split()) if v != "-" else ()
            drop_caches()
            dt, n = odirect_read(store, limit=os.path.getsize(native))
            limit = n / dt / 1e9
            drop_caches()
            nat = run(native, a.mode)
            with mount(repo, mnt, extra_args=args) as m:
                pid = daemon_pid(repo, m)
                path = os.path.join(m, "tags", "bench", "model.safetensors")
                os.path.getsize(path)
                time.sleep(0.5)  # the B-tree warm-up of a fresh mount
                drop_caches()
                s0, p0, b0, t0 = stats(m), proc_stat(pid), proc_read_bytes(pid), thread_cpu(pid)
                side = None
                if a.perf:
                    side = subprocess.Popen(["perf", "record", "-g", "-p", str(pid), "-o", a.perf_out],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                elif a.py_spy:
                    side = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "200", "-f", "raw",
                                             "-o", a.spy_out, "--threads", "--idle", "--nonblocking"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if side:
                    time.sleep(1.0)
                fig = run(path, a.mode)
                s1, p1, b1, t1 = stats(m), proc_stat(pid), proc_read_bytes(pid), thread_cpu(pid)
                if side:
                    side.send_signal(2)
                    side.wait()
            gib = (s1["bytes_served"] - s0["bytes_served"]) / 2**30
            d = {k: p1[k] - p0[k] for k in p0}
            # the main thread runs trio (the FUSE loop); the others page in and check
            main_s = t1.get(pid, 0) - t0.get(pid, 0)
            others = sum(v - t0.get(k, 0) for k, v in t1.items() if k != pid)
            reqs = max(1, s1["reads"] - s0["reads"])
            print(f"[{v}] mount {fig}  native {nat}  O_DIRECT {limit:.2f} GB/s | daemon per GiB served: "
                  f"user {d['user'] / gib:.2f} s, sys {d['sys'] / gib:.2f} s, {d['minflt'] / gib:.0f} minor / "
                  f"{d['majflt'] / gib:.0f} major faults, CPU s main thread {main_s / gib:.2f} / other threads "
                  f"{others / gib:.2f}, disk read {(b1 - b0) / 2**30 / gib:.2f} GiB, "
                  f"{reqs / gib:.0f} requests (main thread {main_s / reqs * 1e6:.0f} µs each), "
                  f"{(s1['cold_reads'] - s0['cold_reads']) / gib:.0f} "
                  f"of them waited {s1['cold_wait_s'] - s0['cold_wait_s']:.2f} s for a page-in", flush=True)
    print(f"load average {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
