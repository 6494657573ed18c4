#!/usr/bin/env python3
"""Where the time of a whole-model ``safe_open`` load through the mount goes.

Uses the work directory that ``mount_read.py --workdir DIR --keep``-style runs leave
(``DIR/model/model.safetensors`` and ``DIR/repo`` with the tag ``bench``). For each
``--order`` (``file``: ``safe_open().keys()`` order; ``natural``: module order, layer
2 before layer 10), ``--repeat`` times, each on a fresh ``tvcfs mount -f`` (extra
arguments with ``--mount-args``) after dropping the page cache: loads every tensor
through the mount and from plain disk, and prints both times, their ratio, the mount
daemon's CPU seconds (all its threads, from ``/proc/PID/stat``) and minor faults,
and the loader's own CPU. Needs root (``drop_caches``).

Usage: ``python scripts/bench/mount_load.py --workdir /tmp/mrb [--order file,natural]
[--repeat 3] [--mount-args "--read-ahead-kb 4096"]``; prefix with
``OPENBLAS_NUM_THREADS=…`` to compare the daemon's BLAS threads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(ROOT)  # after PYTHONPATH: ab.py runs each revision through it

from tvcfs.fs.daemon import is_mounted  # noqa: E402


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def natural(key: str):
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", key)]


def load(path: str, order: str) -> float:
    """``safe_open`` + ``get_tensor`` of every tensor; seconds."""
    from safetensors import safe_open

    t = time.perf_counter()
    with safe_open(path, "np") as f:
        keys = list(f.keys())
        if order == "natural":
            keys.sort(key=natural)
        for k in keys:
            f.get_tensor(k)
    return time.perf_counter() - t


def proc_cpu(pid: int) -> tuple[float, int]:
    """(user + system CPU seconds, minor faults) of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK"), int(x[7])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--order", default="file,natural")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mount-args", default="")
    args = ap.parse_args()
    native = os.path.join(args.workdir, "model", "model.safetensors")
    repo = os.path.join(args.workdir, "repo")
    mnt = os.path.join(args.workdir, "mnt")
    os.makedirs(mnt, exist_ok=True)
    for order in args.order.split(","):
        for _ in range(args.repeat):
            drop_caches()
            c0 = os.times()
            tn = load(native, order)
            c1 = os.times()
            proc = subprocess.Popen([sys.executable, "-P", "-m", "tvcfs.cli", "--repo", repo, "mount", "-f",
                                     *args.mount_args.split(), repo, mnt],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 30
                while not is_mounted(mnt):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("mount failed")
                    time.sleep(0.02)
                drop_caches()
                d0, l0 = proc_cpu(proc.pid), os.times()
                tm = load(os.path.join(mnt, "tags", "bench", "model.safetensors"), order)
                d1, l1 = proc_cpu(proc.pid), os.times()
                with open(os.path.join(mnt, ".tvcfs", "stats")) as f:
                    reads = json.load(f)["reads"]
            finally:
                subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
                if is_mounted(mnt):
                    subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
                proc.wait()
            print(f"{order:8s} native {tn:.2f} s (CPU {c1.user - c0.user + c1.system - c0.system:.2f})  "
                  f"mount {tm:.2f} s  ratio {tm / tn:.2f}  daemon CPU {d1[0] - d0[0]:.2f} s, "
                  f"{d1[1] - d0[1]} minor faults  loader CPU {l1.user - l0.user + l1.system - l0.system:.2f} s  "
                  f"{reads} requests", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
