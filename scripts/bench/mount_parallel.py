#!/usr/bin/env python3
"""Many processes reading the same model through the mount against the plain directory.

Usage (root: it drops the page cache)::

    python scripts/bench/mount_parallel.py [--size-gib 1] [--readers 8] [--repeat 3]
                                           [--mode seq|tensors] [--workdir DIR] [--keep]
                                           [--commit-mib 256] [--json OUT.json]

Writes a synthetic f16 model (``scripts/synth_model.py``), commits it to a fresh
repository and, ``--repeat`` times, after ``drop_caches`` each time:

``plain``   ``--readers`` processes started together, each reading the model from the
            plain directory (``seq``: 1 MiB ``readv`` from start to end; ``tensors``:
            ``safe_open`` + every tensor); wall time until the last one ends;
``mount``   the same through a fresh mount (``tags/bench/``); ratio mount / plain
            (target <= 1.2);
``commit``  both again while ``tvcfs commit`` writes ``--commit-mib`` MiB of new random
            bytes to another branch of the same repository (started with the readers;
            each round commits new bytes); ratio mount / plain under the same commit.

Each figure is the median of the runs; each ratio the median of the per-run ratios.
The load average before and after is printed: other jobs on the machine move the
absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.append(ROOT)  # after PYTHONPATH: ab.py runs each revision through it
sys.path.insert(0, HERE)

from e2e import drop_caches, load_synth, loadavg  # noqa: E402
from tvcfs.fs import mount  # noqa: E402
from tvcfs.repo import Author, Repo  # noqa: E402

MIB = 1 << 20

READER = r'''
import mmap, os, sys
mode, path = sys.argv[1], sys.argv[2]
if mode == "seq":
    buf = mmap.mmap(-1, 1 << 20)
    mv = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    while os.readv(fd, [mv]):
        pass
    os.close(fd)
else:
    from safetensors import safe_open
    with safe_open(path, "np") as f:
        for k in f.keys():
            f.get_tensor(k)
'''


def readers(path: str, n: int, mode: str, during=None) -> float:
    """Start ``n`` reader processes on ``path`` at once (and ``during()``, a callable
    returning a Popen, with them); wall seconds until every reader has ended."""
    t = time.perf_counter()
    side = during() if during else None
    procs = [subprocess.Popen([sys.executable, "-c", READER, mode, path]) for _ in range(n)]
    try:
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError(f"a reader of {path} failed ({p.returncode})")
        return time.perf_counter() - t
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if side is not None:
            side.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mode", choices=("seq", "tensors"), default="seq")
    ap.add_argument("--commit-mib", type=int, default=256, help="bytes the concurrent commit writes (0: skip)")
    ap.add_argument("--mount-args", default="")
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("mount_parallel.py: needs root (drop_caches)", file=sys.stderr)
        return 2
    synth = load_synth()
    work = a.workdir or tempfile.mkdtemp(prefix="tvcfs-bench-par-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    res: dict = {"readers": a.readers, "mode": a.mode, "loadavg_start": loadavg()}
    try:
        model_dir = os.path.join(work, "model")
        os.makedirs(model_dir, exist_ok=True)
        native = os.path.join(model_dir, "model.safetensors")
        info = synth.write_model(native, synth.config_for_size(a.size_gib, "f16"), "f16", seed=0)
        res["model_bytes"] = info["bytes"]
        repo_dir = os.path.join(work, "repo")
        shutil.rmtree(repo_dir, ignore_errors=True)
        with Repo.init(repo_dir) as repo:
            cid = repo.commit_dir(model_dir, "main", "bench", Author("bench", "bench@example.org")).cid
            repo.create_tag("bench", cid, force=True)
        side_dir = os.path.join(work, "side")
        os.makedirs(side_dir, exist_ok=True)
        rnd = [0]

        def prepare_side():
            # new random bytes each round (nothing deduplicated), written before the clock
            rnd[0] += 1
            with open(os.path.join(side_dir, "blob.bin"), "wb") as f:
                for _ in range(a.commit_mib // 16):
                    f.write(os.urandom(16 * MIB))

        def commit():
            """Start ``tvcfs commit`` of the side directory to branch ``side``."""
            return subprocess.Popen([sys.executable, "-m", "tvcfs.cli", "-C", repo_dir, "commit", side_dir,
                                     "-b", "side", "-m", f"side {rnd[0]}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=dict(os.environ, TVCFS_AUTHOR_NAME="bench",
                                             TVCFS_AUTHOR_EMAIL="bench@example.org"))

        mnt = os.path.join(work, "mnt")
        margs = tuple(a.mount_args.split())
        runs: dict = {k: [] for k in ("plain", "mount", "plain_commit", "mount_commit")}
        for _ in range(a.repeat):
            for label in ("", "_commit") if a.commit_mib else ("",):
                start = commit if label else None
                if label:
                    prepare_side()
                drop_caches()
                runs["plain" + label].append(readers(native, a.readers, a.mode, start))
                if label:
                    prepare_side()
                with mount(repo_dir, mnt, extra_args=margs) as m:
                    path = os.path.join(m, "tags", "bench", "model.safetensors")
                    os.path.getsize(path)
                    drop_caches()
                    runs["mount" + label].append(readers(path, a.readers, a.mode, start))
        res["loadavg_end"] = loadavg()
        res["runs_s"] = runs
        for label in ("", "_commit"):
            if runs["mount" + label]:
                res["plain" + label + "_s"] = statistics.median(runs["plain" + label])
                res["mount" + label + "_s"] = statistics.median(runs["mount" + label])
                res["ratio" + label] = statistics.median(
                    [m / p for m, p in zip(runs["mount" + label], runs["plain" + label])])
    finally:
        if not a.keep and not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    gb = a.readers * res["model_bytes"] / 1e9
    print(f"{a.readers} readers ({a.mode}) of a {res['model_bytes'] / 2**30:.2f} GiB model; load average "
          f"{res['loadavg_start']} -> {res['loadavg_end']}")
    for label, what in (("", ""), ("_commit", f" while committing {a.commit_mib} MiB to another branch")):
        if "ratio" + label in res:
            print(f"wall time{what}: mount {res['mount' + label + '_s']:.2f} s, plain directory "
                  f"{res['plain' + label + '_s']:.2f} s ({gb / res['plain' + label + '_s']:.2f} GB/s delivered); "
                  f"ratio {res['ratio' + label]:.2f} (target <= 1.2)")
    out = json.dumps(res, indent=1)
    print(out)
    if a.json:
        with open(a.json, "w") as f:
            f.write(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
