#!/usr/bin/env python3
"""Commit / checkout / deduplication benchmark of tvcfs against plain tools (issue 2).

Usage::

    python scripts/bench/commit.py [--size-gib 1] [--repeat 3] [--cold] [--workdir DIR] [--json OUT]
                                   [--max-load 1.0 [--wait-idle 600]]

What it does, in one run:

1. synthesises a LLaMA-style fp16 safetensors model of about ``--size-gib`` GiB and a
   fine-tune of it (about 10 % of the tensor bytes perturbed, one tensor added whose
   name sorts early, so every later tensor moves) with ``scripts/synth_model.py``;
2. times ``sha256sum BASE`` and ``tvcfs commit BASE_DIR`` into a fresh repository,
   alternately, ``--repeat`` times each (every commit starts from an empty repository,
   so every byte is hashed *and* stored);
3. commits the fine-tune on top and records the bytes it stored (``tvcfs commit``
   prints them) against the bytes of the changed (and added) tensors;
4. times ``tvcfs checkout main DIR`` against ``cp FILE DIR/``, alternately, both
   writing a new file on the same file system;
5. measures the per-CID cost of the hot path (binary prefix ‖ sha-256 digest) and of
   building/printing a ``multiformats.CID``, against hashing one 1 MiB leaf.

All times are wall-clock seconds of the real commands (``subprocess``, so the
``tvcfs`` start-up of ~0.3 s is included); ratios are of the medians. Warm runs by
default: the source files are read once before measuring so both sides read from
the page cache. ``--cold`` drops the page cache (``sync; echo 3 >
/proc/sys/vm/drop_caches``, needs root) before every timed command instead.
On a shared machine ``--max-load`` waits before each timed pair until the 1-minute
load average is below the given value; the load averages are reported with the
results, and the per-pair ratios next to the ratio of the medians. Targets (issue 2): commit ≤ 0.8 × sha256sum, checkout ≤ 2 × cp, fine-tune growth
≤ 1.02 × changed bytes. Results go to stdout (a table and one JSON line) and to
``--json``; ``docs/performance.md`` records them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MIB = 1 << 20


def load_synth():
    """The ``scripts/synth_model.py`` module, loaded by path."""
    spec = importlib.util.spec_from_file_location("synth_model", os.path.join(ROOT, "scripts", "synth_model.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tvcfs_cmd() -> list:
    """argv prefix of the installed ``tvcfs`` console script (next to this Python)."""
    exe = os.path.join(os.path.dirname(sys.executable), "tvcfs")
    return [exe] if os.path.exists(exe) else [shutil.which("tvcfs") or "tvcfs"]


def drop_caches() -> None:
    """Write back dirty pages and drop the page cache (root only)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def warm(path: str) -> None:
    """Read a file or every file of a directory once (into the page cache)."""
    paths = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    for p in paths:
        # only the allocated extents: LMDB's data.mdb is a sparse file of the map size
        fd = os.open(p, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            off = 0
            while off < size:
                try:
                    start = os.lseek(fd, off, os.SEEK_DATA)
                except OSError:  # ENXIO: no data after off
                    break
                end = os.lseek(fd, start, os.SEEK_HOLE)
                while start < end:
                    n = len(os.pread(fd, min(16 * MIB, end - start), start))
                    if not n:
                        break
                    start += n
                off = end
        finally:
            os.close(fd)


def load1() -> float:
    """The 1-minute load average (runnable tasks; this machine has 2 cores)."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def wait_idle(max_load: float | None, timeout: float) -> float:
    """Wait (up to ``timeout`` seconds) until the 1-minute load average is below
    ``max_load``; return the load average then. ``None`` does not wait."""
    deadline = time.monotonic() + timeout
    while max_load is not None and load1() >= max_load and time.monotonic() < deadline:
        time.sleep(5)
    return load1()


def timed(argv: list, cold: bool, env=None, inputs=()) -> tuple[float, str]:
    """Run ``argv``; return ``(wall seconds, stdout)``. Raises on failure.

    ``inputs``: files or directories the command reads. Cold: the page cache is dropped
    first. Warm: they are read once right before (other processes on a shared
    machine may drop the page cache at any time, so a warm-up at the start of the run
    is not enough)."""
    if cold:
        drop_caches()
    else:
        for path in inputs:
            warm(path)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed (exit {p.returncode}): {p.stderr.strip()}")
    # CPU seconds (user + system) of the command, all its threads: unlike wall time it
    # does not depend on how many cores other processes leave free
    timed.last_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return dt, p.stdout


def sha256_of(path: str) -> bytes:
    """sha-256 of a file, read in 4 MiB pieces (no whole-file buffer)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.digest()


def cid_overhead(n: int = 2000) -> dict:
    """Per-CID costs (µs) against sha-256 of a 1 MiB leaf (µs), same process."""
    from multiformats import CID, multihash

    from tvcfs.encoding.cid import RAW, cid_from_digest, cid_str, make_cid

    leaf = os.urandom(MIB)
    digest = hashlib.sha256(leaf).digest()
    t = time.perf_counter()
    for _ in range(50):
        hashlib.sha256(leaf).digest()
    sha_us = (time.perf_counter() - t) / 50 * 1e6
    t = time.perf_counter()
    for _ in range(50):
        make_cid(RAW, leaf)
    make_us = (time.perf_counter() - t) / 50 * 1e6
    t = time.perf_counter()
    for _ in range(n):
        cid_from_digest(RAW, digest)
    prefix_us = (time.perf_counter() - t) / n * 1e6
    cid = cid_from_digest(RAW, digest)
    t = time.perf_counter()
    for _ in range(n):
        cid_str(cid)
    str_us = (time.perf_counter() - t) / n * 1e6
    m = max(50, n // 10)
    t = time.perf_counter()
    for _ in range(m):
        CID("base32", 1, "raw", multihash.wrap(digest, "sha2-256"))
    mf_build_us = (time.perf_counter() - t) / m * 1e6
    mcid = CID.decode(cid)
    t = time.perf_counter()
    for _ in range(m):
        mcid.encode("base32")
    mf_str_us = (time.perf_counter() - t) / m * 1e6
    return {
        "sha256_1MiB_us": round(sha_us, 1),
        "make_cid_1MiB_us": round(make_us, 1),
        "cid_from_digest_us": round(prefix_us, 3),
        "cid_str_us": round(str_us, 2),
        "multiformats_build_us": round(mf_build_us, 1),
        "multiformats_print_us": round(mf_str_us, 1),
        "hot_path_overhead_pct": round(100 * prefix_us / sha_us, 4),
        "multiformats_overhead_pct": round(100 * (mf_build_us + mf_str_us) / sha_us, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=1.0, help="base model size (GiB)")
    ap.add_argument("--change-fraction", type=float, default=0.10)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each command (median reported)")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every timed command")
    ap.add_argument("--workdir", default=None, help="directory for the models and repositories (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--max-load", type=float, default=None,
                    help="before each timed pair, wait until the 1-minute load average is below this")
    ap.add_argument("--wait-idle", type=float, default=600, help="longest wait for --max-load (s)")
    a = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="tvcfs-bench-", dir=a.workdir)
    tv = tvcfs_cmd()
    env = dict(os.environ, TVCFS_AUTHOR_NAME="bench", TVCFS_AUTHOR_EMAIL="bench@example.org")
    try:
        synth = load_synth()
        base_dir, ft_dir = os.path.join(work, "base"), os.path.join(work, "ft")
        os.makedirs(base_dir)
        os.makedirs(ft_dir)
        base = os.path.join(base_dir, "model.safetensors")
        ft = os.path.join(ft_dir, "model.safetensors")
        t = time.perf_counter()
        cfg = synth.config_for_size(a.size_gib, "f16")
        info = synth.write_model(base, cfg, "f16", seed=0)
        hidden = cfg.hidden_size
        diff = synth.finetune(base, ft, a.change_fraction, [("model.layers.0.adapter.weight", (64, hidden))], seed=1)
        print(f"synthesised {info['bytes'] / MIB:.0f} MiB base ({info['tensors']} tensors, {info['params'] / 1e6:.0f} M "
              f"params, h={hidden}, {cfg.num_layers} layers) and fine-tune ({len(diff['changed'])} tensors changed, "
              f"{diff['changed_bytes'] / MIB:.1f} MiB = {100 * diff['change_fraction']:.1f} %, "
              f"+{diff['added_bytes']} bytes added) in {time.perf_counter() - t:.1f} s", flush=True)

        # 1. commit vs sha256sum, alternating, each commit into an empty repository
        sha, commit, loads, sha_cpu, commit_cpu, co_cpu, cp_cpu = [], [], [], [], [], [], []
        for i in range(a.repeat):
            loads.append(wait_idle(a.max_load, a.wait_idle))
            dt, _ = timed(["sha256sum", base], a.cold, inputs=[base])
            sha.append(dt)
            sha_cpu.append(timed.last_cpu)
            repo = os.path.join(work, f"repo{i}")
            timed(tv + ["init", repo], False)
            dt, out = timed(tv + ["--repo", repo, "commit", base_dir, "-m", "base"], a.cold, env, inputs=[base_dir])
            commit.append(dt)
            commit_cpu.append(timed.last_cpu)
            if i < a.repeat - 1:
                shutil.rmtree(repo)
        repo = os.path.join(work, f"repo{a.repeat - 1}")
        print(f"sha256sum {[round(x, 2) for x in sha]} s; tvcfs commit {[round(x, 2) for x in commit]} s", flush=True)

        # 2. the fine-tune on top: stored bytes
        dt_ft, out = timed(tv + ["--repo", repo, "commit", ft_dir, "-m", "fine-tune"], a.cold, env, inputs=[ft_dir])
        new_bytes = int(re.search(r"\((\d+) bytes\)", out).group(1))
        sha_ft, _ = timed(["sha256sum", ft], a.cold, inputs=[ft])

        # 3. checkout vs cp, alternating (and alternating which goes first), both to a
        #    new file on the same file system
        co, co_inner, cp = [], [], []

        def run_cp():
            dst = os.path.join(work, "cp-out")
            os.makedirs(dst)
            dt, _ = timed(["cp", ft, dst + "/"], a.cold, inputs=[ft])
            cp.append(dt)
            cp_cpu.append(timed.last_cpu)
            shutil.rmtree(dst)

        def run_checkout(verify: bool):
            dst = os.path.join(work, "co-out")
            dt, out = timed(tv + ["--repo", repo, "checkout", "main", dst], a.cold,
                           inputs=[os.path.join(repo, ".tvcfs", "store", "data.mdb")])
            co.append(dt)
            co_cpu.append(timed.last_cpu)
            co_inner.append(float(re.search(r", ([\d.]+) s\)", out).group(1)))
            if verify and sha256_of(os.path.join(dst, "model.safetensors")) != sha256_of(ft):
                raise RuntimeError("checkout is not byte-identical")
            shutil.rmtree(dst)

        for i in range(a.repeat):
            loads.append(wait_idle(a.max_load, a.wait_idle))
            if i % 2 == 0:
                run_cp()
                run_checkout(verify=(i == 0))
            else:
                run_checkout(verify=False)
                run_cp()
        print(f"cp {[round(x, 2) for x in cp]} s; tvcfs checkout {[round(x, 2) for x in co]} s "
              f"(of which checkout work {co_inner} s, the rest is start-up)", flush=True)

        # start-up of the tvcfs command itself (interpreter, imports, argument parser)
        tv_start = [timed(tv + ["--version"], False)[0] for _ in range(a.repeat)]

        # python's hashlib on the same file (OpenSSL, SHA-NI), for context
        if not a.cold:
            warm(base)
        t = time.perf_counter()
        h = hashlib.sha256()
        with open(base, "rb") as f:
            while chunk := f.read(4 * MIB):
                h.update(chunk)
        hashlib_s = time.perf_counter() - t

        med = statistics.median
        res = {
            "size_bytes": info["bytes"],
            "tensors": info["tensors"],
            "mode": "cold" if a.cold else "warm",
            "repeat": a.repeat,
            "sha256sum_s": [round(x, 3) for x in sha],
            "commit_s": [round(x, 3) for x in commit],
            "commit_over_sha256sum": round(med(commit) / med(sha), 3),
            "commit_over_sha256sum_pairs": [round(c / h, 3) for c, h in zip(commit, sha)],
            "sha256sum_cpu_s": [round(x, 3) for x in sha_cpu],
            "commit_cpu_s": [round(x, 3) for x in commit_cpu],
            "commit_cpu_over_sha256sum_cpu": round(med(commit_cpu) / med(sha_cpu), 3),
            "python_hashlib_sha256_s": round(hashlib_s, 3),
            "commit_over_hashlib": round(med(commit) / hashlib_s, 3),
            "finetune_commit_s": round(dt_ft, 3),
            "finetune_commit_over_sha256sum": round(dt_ft / sha_ft, 3),
            "changed_bytes": diff["changed_bytes"],
            "added_bytes": diff["added_bytes"],
            "changed_tensors": len(diff["changed"]),
            "change_fraction": diff["change_fraction"],
            "finetune_new_bytes": new_bytes,
            "growth_over_changed": round(new_bytes / diff["changed_bytes"], 5),
            "growth_over_changed_plus_added": round(new_bytes / (diff["changed_bytes"] + diff["added_bytes"]), 5),
            "cp_s": [round(x, 3) for x in cp],
            "checkout_s": [round(x, 3) for x in co],
            "checkout_work_s": co_inner,
            "cp_cpu_s": [round(x, 3) for x in cp_cpu],
            "checkout_cpu_s": [round(x, 3) for x in co_cpu],
            "tvcfs_startup_s": round(med(tv_start), 3),
            "checkout_over_cp": round(med(co) / med(cp), 3),
            "checkout_over_cp_pairs": [round(c / h, 3) for c, h in zip(co, cp)],
            "load1_before_pairs": loads,
            "load1_end": load1(),
            "cid": cid_overhead(),
        }
        targets = {"commit_over_sha256sum": 0.8, "checkout_over_cp": 2.0, "growth_over_changed": 1.02}
        print()
        print(f"{'measure':<34} {'value':>10} {'target':>8}")
        for k, lim in targets.items():
            flag = "ok" if res[k] <= lim else "MISSED"
            print(f"{k:<34} {res[k]:>10.3f} {'<= ' + str(lim):>8} {flag}")
        print(f"{'commit_over_hashlib (context)':<34} {res['commit_over_hashlib']:>10.3f}")
        print(f"{'finetune_commit_over_sha256sum':<34} {res['finetune_commit_over_sha256sum']:>10.3f}")
        print(f"{'tvcfs start-up (s, --version)':<34} {res['tvcfs_startup_s']:>10.3f}")
        print(f"CPU seconds: sha256sum {res['sha256sum_cpu_s']}, commit {res['commit_cpu_s']} "
              f"(ratio {res['commit_cpu_over_sha256sum_cpu']}); cp {res['cp_cpu_s']}, checkout {res['checkout_cpu_s']}")
        print(f"per-pair ratios: commit/sha256sum {res['commit_over_sha256sum_pairs']}, "
              f"checkout/cp {res['checkout_over_cp_pairs']}; 1-min load average before each pair {loads}")
        c = res["cid"]
        print(f"per-CID hot path {c['cid_from_digest_us']} µs = {c['hot_path_overhead_pct']} % of sha-256 of 1 MiB "
              f"({c['sha256_1MiB_us']} µs); multiformats build+print {c['multiformats_build_us'] + c['multiformats_print_us']:.0f} µs "
              f"= {c['multiformats_overhead_pct']} %")
        print(json.dumps(res))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=2)
        return 0
    finally:
        if a.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
