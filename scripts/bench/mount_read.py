#!/usr/bin/env python3
"""Reads through the tvcfs mount against the same file on plain disk (issue 3).

Usage (root: it drops the page cache and raises the mount's readahead)::

    python scripts/bench/mount_read.py [--size-gib 1] [--repeat 3] [--workdir DIR]
                                       [--keep] [--json OUT.json] [--compare-no-verify]

Writes a ~1 GiB LLaMA-style f16 safetensors model with ``scripts/synth_model.py``,
commits it to a fresh repository, mounts it (``tvcfs.fs.mount``: a real FUSE mount in
a child process) and measures, in one run, with the same file on the same disk:

``cold``      sequential read (1 MiB ``readv`` into a page-aligned buffer) after
              ``sync; echo 3 > /proc/sys/vm/drop_caches``: mount / native (target >= 0.9)
``warm``      the second read, from the page cache (``keep_cache``): mount / native
              (target >= 0.7); also the third read (see docs/performance.md), and the
              same reads through ``scripts/bench/minifs.py`` (the smallest pyfuse3 file
              system serving the same bytes): mount / minifs tells tvcfs's cost from
              the kernel's FUSE page-cache path
``rand4k``    random 4 KiB ``pread`` per second: from the page cache (buffered, warm)
              and uncached (``O_DIRECT``: every read reaches the mount process / the disk)
``load_all``  ``safe_open`` + ``get_tensor`` of every tensor after dropping caches:
              mount / native (target <= 1.3)
``load_one``  bytes read from disk by the mount process (``/proc/PID/io``
              ``read_bytes``) and bytes served from leaves (``.tvcfs/stats``) to load
              one tensor after dropping caches / that tensor's bytes (target <= 1.1),
              for a typical layer matrix and for the largest tensor; the layer matrix
              also with ``--read-ahead-kb 256`` (the kernel reads ``read_ahead_kb``
              around each mmap fault)

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
import importlib.util
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
sys.path.insert(0, ROOT)

from tvcfs.fs import mount  # noqa: E402
from tvcfs.fs.daemon import _pidfile, is_mounted, set_readahead  # noqa: E402
from tvcfs.repo import Author, Repo  # noqa: E402

MIB = 1 << 20


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


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
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("mount_read.py: needs root (drop_caches, read_ahead_kb)", file=sys.stderr)
        return 2

    spec = importlib.util.spec_from_file_location("synth_model", os.path.join(ROOT, "scripts", "synth_model.py"))
    synth = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synth)

    work = args.workdir or tempfile.mkdtemp(prefix="tvcfs-bench-mount-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    model_dir = os.path.join(work, "model")
    os.makedirs(model_dir, exist_ok=True)
    native = os.path.join(model_dir, "model.safetensors")
    mnt = os.path.join(work, "mnt")
    result: dict = {"size_gib": args.size_gib, "repeat": args.repeat}
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
            deadline = time.monotonic() + 10  # the pidfile is written just after mounting
            while True:
                try:
                    return int(open(_pidfile(os.path.join(repo_dir, ".tvcfs"), m)).read())
                except (OSError, ValueError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)

        size = os.path.getsize(native)
        r: dict = {k: [] for k in ("cold_native", "cold_mount", "warm_native", "warm_mount",
                                   "warm3_native", "warm3_mount", "warm_minifs", "warm3_minifs", "req_kib",
                                   "load_native", "load_mount", "cold_noverify", "load_noverify")}
        one = {name: {"bytes": sz, "disk_read_mount": [], "leaf_bytes_mount": [], "disk_read_native": []}
               for sz, name in picks}
        one_ra = {"name": picks[0][1], "bytes": picks[0][0], "read_ahead_kb": 256, "leaf_bytes_mount": []}
        for rep in range(args.repeat):
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
        with mounted() as m:
            mfile = os.path.join(m, "tags", "bench", "model.safetensors")
            seq_read(native)
            seq_read(mfile)  # both in the page cache
            rand["warm_native"] = rand_reads(native, args.rand_seconds, direct=False)
            rand["warm_mount"] = rand_reads(mfile, args.rand_seconds, direct=False)
            rand["direct_native"] = rand_reads(native, args.rand_seconds, direct=True)
            rand["direct_mount"] = rand_reads(mfile, args.rand_seconds, direct=True)

        summary = {
            "cold_GBps": {"native": med(r["cold_native"]), "mount": med(r["cold_mount"])},
            "cold_ratio": med([a / b for a, b in zip(r["cold_mount"], r["cold_native"])]),
            "warm_GBps": {"native": med(r["warm_native"]), "mount": med(r["warm_mount"])},
            "warm_ratio": med([a / b for a, b in zip(r["warm_mount"], r["warm_native"])]),
            "warm3_ratio": med([a / b for a, b in zip(r["warm3_mount"], r["warm3_native"])]),
            "warm_minifs_GBps": med(r["warm_minifs"]),
            "warm_minifs_ratio": med([a / b for a, b in zip(r["warm_minifs"], r["warm_native"])]),
            "warm_mount_over_minifs": med([a / b for a, b in zip(r["warm_mount"], r["warm_minifs"])]),
            "cold_request_KiB": med(r["req_kib"]),
            "rand4k_per_s": {k: round(v) for k, v in rand.items()},
            "load_all_s": {"native": med(r["load_native"]), "mount": med(r["load_mount"])},
            "load_all_ratio": med([a / b for a, b in zip(r["load_mount"], r["load_native"])]),
            "load_one": [{"tensor": name, "tensor_bytes": o["bytes"],
                          "disk_read_ratio_mount": med(o["disk_read_mount"]) / o["bytes"],
                          "leaf_bytes_ratio_mount": med(o["leaf_bytes_mount"]) / o["bytes"],
                          "disk_read_ratio_native": med(o["disk_read_native"]) / o["bytes"]}
                         for name, o in one.items()],
            "load_one_read_ahead_256": {"tensor": one_ra["name"], "read_ahead_kb": one_ra["read_ahead_kb"],
                                        "leaf_bytes_ratio_mount": med(one_ra["leaf_bytes_mount"]) / one_ra["bytes"]},
            "runs": r, "load_one_runs": one,
        }
        if args.compare_no_verify:
            summary["verify_cost"] = {
                "cold_GBps_no_verify": med(r["cold_noverify"]),
                "cold_ratio": med([a / b for a, b in zip(r["cold_mount"], r["cold_noverify"])]),
                "load_all_s_no_verify": med(r["load_noverify"]),
                "load_all_ratio": med([a / b for a, b in zip(r["load_mount"], r["load_noverify"])]),
            }
        result.update(summary)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    def f(x):
        return f"{x:.2f}"

    print(f"model: {result['model']['bytes'] / 2**30:.2f} GiB, {result['model']['tensors']} tensors; "
          f"read_ahead_kb {result['read_ahead_kb']}; cold read requests {result['cold_request_KiB']:.0f} KiB avg")
    print(f"cold sequential  mount {f(result['cold_GBps']['mount'])} GB/s  native {f(result['cold_GBps']['native'])} GB/s"
          f"  ratio {f(result['cold_ratio'])} (target >= 0.9)")
    print(f"warm sequential  mount {f(result['warm_GBps']['mount'])} GB/s  native {f(result['warm_GBps']['native'])} GB/s"
          f"  ratio {f(result['warm_ratio'])} (target >= 0.7); third read ratio {f(result['warm3_ratio'])}")
    print(f"warm, smallest pyfuse3 fs (minifs.py)  {f(result['warm_minifs_GBps'])} GB/s  minifs / native "
          f"{f(result['warm_minifs_ratio'])}  mount / minifs {f(result['warm_mount_over_minifs'])}")
    rr = result["rand4k_per_s"]
    print(f"random 4 KiB/s   page cache: mount {rr['warm_mount']}  native {rr['warm_native']};"
          f"  O_DIRECT: mount {rr['direct_mount']}  native {rr['direct_native']}")
    print(f"safe_open + all tensors (cold)  mount {f(result['load_all_s']['mount'])} s  native "
          f"{f(result['load_all_s']['native'])} s  ratio {f(result['load_all_ratio'])} (target <= 1.3)")
    for lo in result["load_one"]:
        print(f"one tensor ({lo['tensor']}, {lo['tensor_bytes'] / MIB:.1f} MiB, cold): disk read by the mount "
              f"{f(lo['disk_read_ratio_mount'])}x, leaf bytes served {f(lo['leaf_bytes_ratio_mount'])}x "
              f"(target <= 1.1); native: disk read {f(lo['disk_read_ratio_native'])}x")
    vc = result.get("verify_cost")
    if vc:
        print(f"verification  cold read verified / --no-verify {f(vc['cold_ratio'])} (target >= 0.9);"
              f"  safe_open + all tensors verified / --no-verify {f(vc['load_all_ratio'])} (target <= 1.1)")
    lr = result["load_one_read_ahead_256"]
    print(f"one tensor ({lr['tensor']}) with --read-ahead-kb {lr['read_ahead_kb']}: leaf bytes served "
          f"{f(lr['leaf_bytes_ratio_mount'])}x (target <= 1.1)")
    out = json.dumps(result, indent=1, default=float)
    print(out)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
