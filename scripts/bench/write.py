#!/usr/bin/env python3
"""Benchmark writes into a mounted branch: ``cp`` of a ~1 GiB safetensors file into
``MOUNT/branches/main/`` until its commit exists, against ``cp`` to plain disk plus
``sha256sum`` of the copy, in the same run (issue 4).

For each repetition:

* ``plain``: ``cp SRC PLAIN/model.safetensors && sha256sum PLAIN/model.safetensors``;
* ``mount``: ``cp SRC MNT/branches/main/model.safetensors``, then wait for the commit
  made by the quiet-period trigger (``--commit-delay``, the ref is polled every
  5 ms): time from the start of ``cp`` until the branch ref moves. Also reported:
  ``cp`` alone, and the commit latency after ``cp`` (its last close) returned;
* ``plain-openssl``: context only, ``cp`` + ``openssl dgst -sha256`` (coreutils
  ``sha256sum`` does not use the CPU's SHA instructions; OpenSSL does, as the
  mount's hashing does);
* ``mount-fsync``: the same ``cp``, then ``fsync`` of the branch directory (the
  commit happens inside the fsync; no quiet period). This is the figure compared
  with the target.

Each mount run starts from a fresh repository (new blocks every time: the
worst case, no deduplication). The source file is read once beforehand so every
variant reads it from the page cache. Target: write + commit <= 1.5 x (cp + sha256sum).

Usage::

    python scripts/bench/write.py [--size-gib 1] [--repeat 3] [--commit-delay 0.2] [--dir DIR]

Prints one JSON object (seconds; medians and every run). ``cpu`` is CPU seconds
(user + system) of ``cp`` and ``sha256sum``, or of ``cp`` plus the mount process
(all its threads) from the start of ``cp`` to the commit: a figure that other load
on the machine disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.append(ROOT)  # after PYTHONPATH: ab.py runs each revision through it


def _synth():
    spec = importlib.util.spec_from_file_location("synth_model", os.path.join(ROOT, "scripts", "synth_model.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(cmd) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Mount:
    def __init__(self, repo: str, mnt: str, commit_delay: float, log: str):
        from tvcfs.fs.daemon import is_mounted

        os.makedirs(mnt, exist_ok=True)
        self.mnt = mnt
        self.logf = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "tvcfs.cli", "--repo", repo, "mount", "-f",
                                      "--commit-delay", str(commit_delay), repo, mnt],
                                     stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"mount failed, see {log}")
            time.sleep(0.02)

    def close(self) -> None:
        from tvcfs.fs.daemon import is_mounted

        if is_mounted(self.mnt):
            if subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True).returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()


def run_plain(src: str, work: str, hasher=("sha256sum",)) -> dict:
    d = os.path.join(work, "plain")
    os.makedirs(d, exist_ok=True)
    dst = os.path.join(d, "model.safetensors")
    c0 = _children_cpu()
    t0 = time.perf_counter()
    _run(["cp", src, dst])
    t1 = time.perf_counter()
    _run([*hasher, dst])
    t2 = time.perf_counter()
    cpu = _children_cpu() - c0
    os.unlink(dst)
    return {"cp": t1 - t0, "hash": t2 - t1, "total": t2 - t0, "cpu": cpu}


def run_mount(src: str, work: str, commit_delay: float, use_fsync: bool, i: int) -> dict:
    from tvcfs.repo import Repo

    repo_dir = os.path.join(work, f"repo{i}{'f' if use_fsync else 'q'}")
    seed = os.path.join(work, "seed")
    os.makedirs(seed, exist_ok=True)
    with open(os.path.join(seed, "README.md"), "w") as f:
        f.write("bench\n")
    with Repo.init(repo_dir) as repo:
        repo.commit_dir(seed, message="seed")
        base = repo.ref_db.get("refs/heads/main")
        mnt = os.path.join(work, f"mnt{i}")
        m = Mount(repo_dir, mnt, commit_delay, os.path.join(work, f"mount{i}.log"))
        try:
            dst = os.path.join(mnt, "branches", "main", "model.safetensors")
            c0, d0 = _children_cpu(), _proc_cpu(m.proc.pid)
            t0 = time.perf_counter()
            _run(["cp", src, dst])
            t1 = time.perf_counter()
            if use_fsync:
                fd = os.open(os.path.join(mnt, "branches", "main"), os.O_RDONLY | os.O_DIRECTORY)
                os.fsync(fd)
                os.close(fd)
            while repo.ref_db.get("refs/heads/main") == base:
                time.sleep(0.005)
                if time.perf_counter() - t1 > 600:
                    raise RuntimeError("no commit within 600 s")
            t2 = time.perf_counter()
            cpu = _children_cpu() - c0 + _proc_cpu(m.proc.pid) - d0
            new = repo.ref_db.get("refs/heads/main")
            stored = repo.entry(new, "model.safetensors").size
        finally:
            m.close()
    shutil.rmtree(repo_dir, ignore_errors=True)
    assert stored == os.path.getsize(src)
    return {"cp": t1 - t0, "commit_after_close": t2 - t1, "total": t2 - t0, "cpu": cpu}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--commit-delay", type=float, default=0.2)
    ap.add_argument("--dir", help="work directory (default: a temporary directory under /tmp)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)

    work = args.dir or tempfile.mkdtemp(prefix="tvcfs-bench-write-")
    os.makedirs(work, exist_ok=True)
    try:
        synth = _synth()
        src = os.path.join(work, "src.safetensors")
        info = synth.write_model(src, synth.config_for_size(args.size_gib, args.dtype), args.dtype, seed=0)
        with open(src, "rb") as f:  # warm the page cache for every variant
            while f.read(1 << 24):
                pass
        runs = {"plain": [], "plain-openssl": [], "mount": [], "mount-fsync": []}
        for i in range(args.repeat):
            runs["plain"].append(run_plain(src, work))
            runs["plain-openssl"].append(run_plain(src, work, ("openssl", "dgst", "-sha256")))
            runs["mount"].append(run_mount(src, work, args.commit_delay, False, i))
            runs["mount-fsync"].append(run_mount(src, work, args.commit_delay, True, i))
        med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
        out = {
            "file_bytes": info["bytes"],
            "tensors": info["tensors"],
            "dtype": args.dtype,
            "commit_delay": args.commit_delay,
            "repeat": args.repeat,
            "median": med,
            "ratio_fsync": med["mount-fsync"]["total"] / med["plain"]["total"],
            "ratio_quiet": med["mount"]["total"] / med["plain"]["total"],
            "ratio_fsync_cpu": med["mount-fsync"]["cpu"] / med["plain"]["cpu"],
            "ratio_fsync_vs_openssl": med["mount-fsync"]["total"] / med["plain-openssl"]["total"],
            "loadavg_1min_at_end": os.getloadavg()[0],
            "mount_cp_MBps": info["bytes"] / med["mount"]["cp"] / 1e6,
            "plain_cp_MBps": info["bytes"] / med["plain"]["cp"] / 1e6,
            "target": 1.5,
            "runs": runs,
            "cpus": os.cpu_count(),
        }
        print(json.dumps(out, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
