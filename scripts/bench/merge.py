#!/usr/bin/env python3
"""Benchmark tensor-level diff and merge against reading the files from disk.

Builds a synthetic base model (F32 tensors, ``--size-mib`` total) and two
fine-tunes of it: each changes ``--changed`` tensors (one of them changed by both,
so the merge needs a strategy), commits base → ours on ``main`` and base → theirs on
``ft``, then measures, each in a fresh subprocess (peak RSS from ``ru_maxrss``):

* reading both fine-tune files once from disk (``read2``) and all three (``read3``);
* ``tvcfs diff`` of the two fine-tunes (Python API ``diff_commits``);
* ``tvcfs merge`` with ``average-ours-theirs``.

Targets (issue 7): diff ≤ 0.2 × read2, merge ≤ 2 × read3, peak RSS ≤ 4 × largest
tensor + 200 MB. Prints a JSON summary. Page cache is warm for every run (the files
were just written / committed); use ``--drop-caches`` (root) for cold runs.

Usage: python scripts/bench/merge.py [--size-mib 1024] [--tensor-mib 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def build(tmp: str, size_mib: int, tensor_mib: int, changed: int) -> dict:
    from safetensors.numpy import save_file

    from tvcfs.repo import Repo

    n = max(3, size_mib // tensor_mib)
    elems = tensor_mib * (1 << 20) // 4
    rng = np.random.default_rng(0)
    base = {f"layer.{i:03d}.weight": rng.standard_normal(elems, dtype=np.float32) for i in range(n)}
    names = sorted(base)
    ours_set = names[:changed]
    theirs_set = names[changed - 1: 2 * changed - 1]  # overlaps ours in one tensor
    files = {}
    for label, chg in (("base", []), ("ours", ours_set), ("theirs", theirs_set)):
        sd = dict(base)
        for k in chg:
            sd[k] = base[k] + rng.standard_normal(elems, dtype=np.float32) * np.float32(1e-3)
        d = os.path.join(tmp, label)
        os.makedirs(d)
        save_file(sd, os.path.join(d, "model.safetensors"))
        files[label] = os.path.join(d, "model.safetensors")
        del sd
    del base
    repo = Repo.init(os.path.join(tmp, "repo"))
    t0 = time.perf_counter()
    c_base = repo.commit_dir(os.path.dirname(files["base"]), message="base", timestamp=1).cid
    commit_s = time.perf_counter() - t0
    repo.create_branch("ft", c_base)
    repo.commit_dir(os.path.dirname(files["ours"]), message="ours", timestamp=2)
    repo.commit_dir(os.path.dirname(files["theirs"]), branch="ft", message="theirs", timestamp=3)
    repo.close()
    return {"files": files, "repo": os.path.join(tmp, "repo"), "tensors": n, "tensor_bytes": elems * 4,
            "file_bytes": os.path.getsize(files["base"]), "commit_base_s": commit_s}


CHILD = r"""
import json, os, resource, sys, time
mode, arg = sys.argv[1], json.loads(sys.argv[2])
if mode != "read":
    import numpy, tvcfs.repo, tvcfs.diff, tvcfs.merge.core  # imports are not timed
t0 = time.perf_counter()
out = {}
if mode == "read":
    n = 0
    for p in arg["paths"]:
        with open(p, "rb", buffering=0) as f:
            while True:
                b = f.read(8 << 20)
                if not b:
                    break
                n += len(b)
    out["bytes"] = n
elif mode == "diff":
    from tvcfs.repo import Repo
    from tvcfs.diff import diff_commits
    with Repo.open(arg["repo"]) as r:
        d = diff_commits(r, "main", "ft")
        out["modified"] = sum(1 for f in d.files for t in f.tensors if t.status == "modified")
        out["blocks_read"] = r.store.blocks_read
elif mode == "merge":
    from tvcfs.repo import Repo
    from tvcfs.merge.core import merge
    with Repo.open(arg["repo"]) as r:
        res = merge(r, "ft", branch=arg["branch"], strategies="average-ours-theirs")
        out["kind"] = res.kind
        out["stats"] = res.stats
out["seconds"] = time.perf_counter() - t0
# VmHWM: peak RSS of this process image (ru_maxrss would include the parent's peak,
# which Linux carries across fork+exec)
with open("/proc/self/status") as f:
    out["maxrss_mb"] = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
print(json.dumps(out))
"""


def child(mode: str, arg: dict, drop: bool) -> dict:
    if drop:
        subprocess.run(["sync"])
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    p = subprocess.run([sys.executable, "-c", CHILD, mode, json.dumps(arg)], capture_output=True, text=True,
                       check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def baseline_rss() -> float:
    return child("read", {"paths": []}, False)["maxrss_mb"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--tensor-mib", type=int, default=64)
    ap.add_argument("--changed", type=int, default=2, help="tensors changed per fine-tune")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--drop-caches", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tvcfs-bench-merge-")
    try:
        info = build(tmp, a.size_mib, a.tensor_mib, a.changed)
        f = info["files"]
        res = {"read2": [], "read3": [], "diff": [], "merge": []}
        rss = {"diff": 0.0, "merge": 0.0}
        last = {}
        from tvcfs.repo import Repo

        for i in range(a.repeat):
            res["read2"].append(child("read", {"paths": [f["ours"], f["theirs"]]}, a.drop_caches)["seconds"])
            res["read3"].append(child("read", {"paths": [f["base"], f["ours"], f["theirs"]]}, a.drop_caches)["seconds"])
            d = child("diff", {"repo": info["repo"]}, a.drop_caches)
            res["diff"].append(d["seconds"])
            rss["diff"] = max(rss["diff"], d["maxrss_mb"])
            with Repo.open(info["repo"]) as r:  # a fresh branch at main for each merge run
                r.create_branch(f"m{i}", r.resolve("main"))
            m = child("merge", {"repo": info["repo"], "branch": f"m{i}"}, a.drop_caches)
            assert m["kind"] == "merged", m
            res["merge"].append(m["seconds"])
            rss["merge"] = max(rss["merge"], m["maxrss_mb"])
            last = {"diff": d, "merge": m}
        med = {k: statistics.median(v) for k, v in res.items()}
        base_rss = baseline_rss()
        tb = info["tensor_bytes"] / 1e6
        summary = {
            "file_mb": info["file_bytes"] / 1e6,
            "tensors": info["tensors"],
            "largest_tensor_mb": tb,
            "commit_base_s": round(info["commit_base_s"], 3),
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "runs_s": {k: [round(x, 4) for x in v] for k, v in res.items()},
            "diff_over_read2": round(med["diff"] / med["read2"], 3),
            "merge_over_read3": round(med["merge"] / med["read3"], 3),
            "peak_rss_mb": {k: round(v, 1) for k, v in rss.items()},
            "python_baseline_rss_mb": round(base_rss, 1),
            "rss_target_mb": round(4 * tb + 200, 1),
            "diff_detail": last.get("diff"),
            "merge_stats": last.get("merge", {}).get("stats"),
            "cold": a.drop_caches,
        }
        print(json.dumps(summary, indent=2))
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
