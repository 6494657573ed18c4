"""Lazy remote mount benchmark: one run on loopback, ~1 GiB synthetic model (f16).

    python scripts/bench/lazy.py [--size-gib 1] [--workdir DIR] [--keep]

Builds a LLaMA-style synthetic safetensors model (``scripts/synth_model.py``, f16: numpy reads it)
plus a 256 MiB random ``blob.bin``, commits them, serves the repository with
``tvcfs serve`` (QUIC, qh3) in its own process, and measures through a lazy mount
(``tvcfs clone --lazy`` + ``tvcfs mount``):

1. time to first tensor: ``open`` + ``safe_open`` header + the first layer's
   ``input_layernorm`` (3 KiB) and ``q_proj`` (4.5 MiB) tensors, with the mount's
   peer connection up (target <= 50 ms);
2. bytes moved to load one layer (all ``model.layers.7.*`` tensors with
   ``safe_open``) / that layer's bytes (target <= 1.1);
3. foreground 4 KiB random reads of ``blob.bin`` (each a remote fetch), p50/p99,
   alone and while ``tvcfs prefetch`` pulls the whole model in the background
   (target p99 ratio <= 2);
4. full sequential read throughput of the model through a fresh lazy mount /
   throughput of ``tvcfs clone`` of the same repository (target >= 0.8).

Prints one line per figure and a JSON summary. The VM's memory balloon and shared
cores make runs vary: quote medians of several runs for anything important.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MIB = 1 << 20


def tvcfs(*args, check=True, **kw) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "tvcfs")
    argv = [exe] if os.path.exists(exe) else [sys.executable, "-m", "tvcfs.cli"]
    return subprocess.run(argv + [str(a) for a in args], check=check, capture_output=True,
                          text=True, **kw)


def load_synth():
    spec = importlib.util.spec_from_file_location("synth_model", os.path.join(ROOT, "scripts", "synth_model.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def serve(repo: str):
    exe = os.path.join(os.path.dirname(sys.executable), "tvcfs")
    argv = [exe] if os.path.exists(exe) else [sys.executable, "-m", "tvcfs.cli"]
    proc = subprocess.Popen(argv + ["serve", repo, "--listen", "127.0.0.1:0", "--no-tcp", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("tvcfs"):
            raise RuntimeError("tvcfs serve did not start")
        yield url.replace("tvcfs://", "tvcfs+quic://", 1)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def mounted(repo: str, mnt: str, *args):
    from tvcfs.fs import mount

    with mount(repo, mnt, extra_args=tuple(str(a) for a in args)) as m:
        deadline = time.monotonic() + 20
        while True:  # a peer connected, and the mount's start-up fetches (headers) done
            r = remote(m)
            if any(p["state"] == "ready" for p in r["peers"].values()) and not r["pending_wants"]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("no peer connected")
            time.sleep(0.01)
        res_ready = time.monotonic() - (deadline - 20)
        print(f"mount ready (peer connected, headers fetched) {res_ready * 1000:.0f} ms after it was up")
        yield m


def remote(mnt: str) -> dict:
    with open(os.path.join(mnt, ".tvcfs", "stats")) as f:
        return json.load(f)["remote"]


def quiet(mnt: str, timeout: float = 10.0) -> dict:
    """Wait until the mount has nothing in flight (readahead done or cancelled), so
    bytes received are counted in full; returns the remote stats."""
    deadline = time.monotonic() + timeout
    while True:
        r = remote(mnt)
        if (not r["pending_wants"] and not r["queued_jobs"]) or time.monotonic() > deadline:
            return r
        time.sleep(0.02)


def drop_caches() -> None:
    try:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def random_reads(path: str, offsets) -> list:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        out = []
        for off in offsets:
            t = time.perf_counter()
            os.pread(fd, 4096, off)
            out.append(time.perf_counter() - t)
        return out
    finally:
        os.close(fd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--blob-mib", type=int, default=256)
    ap.add_argument("--reads", type=int, default=100, help="random reads per latency phase")
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--skip", default="", help="comma list of phases to skip: first,layer,latency,seq")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    from safetensors import safe_open

    work = a.workdir or tempfile.mkdtemp(prefix="tvcfs-lazy-bench-")
    os.makedirs(work, exist_ok=True)
    res: dict = {}
    try:
        wt = os.path.join(work, "wt")
        src = os.path.join(work, "src")
        model = os.path.join(wt, "model.safetensors")
        if not os.path.isdir(os.path.join(src, ".tvcfs")):
            os.makedirs(wt, exist_ok=True)
            synth = load_synth()
            info = synth.write_model(model, synth.config_for_size(a.size_gib, "f16"), "f16", seed=0)
            import numpy as np

            with open(os.path.join(wt, "blob.bin"), "wb") as f:
                rng = np.random.default_rng(3)
                for _ in range(a.blob_mib // 64):
                    f.write(rng.bytes(64 * MIB))
            tvcfs("init", src)
            t = time.perf_counter()
            tvcfs("-C", src, "commit", wt, "-b", "main", "-m", "synthetic model")
            print(f"model {info['bytes'] / 2**30:.2f} GiB, {info['tensors']} tensors; committed in "
                  f"{time.perf_counter() - t:.1f} s")
        size = os.path.getsize(model)
        hdr = synth_header(model)
        with serve(src) as url:
            print(f"server {url}")
            # --- lazy clone
            clone = os.path.join(work, "clone")
            shutil.rmtree(clone, ignore_errors=True)
            t = time.perf_counter()
            tvcfs("clone", "--lazy", "-q", url, clone)
            res["lazy_clone_s"] = round(time.perf_counter() - t, 3)
            print(f"lazy clone: {res['lazy_clone_s']:.2f} s (tvcfs process included)")
            mnt = os.path.join(work, "mnt")
            os.makedirs(mnt, exist_ok=True)
            path = os.path.join(mnt, "branches", "main", "model.safetensors")
            with mounted(clone, mnt, "--fetch-timeout", 60) as m:
                # 1. time to first tensor
                if "first" not in skip:
                    # the same code on the local file first: library start-up and a
                    # warm-cache baseline are not the mount's
                    with safe_open(model, "np") as f:
                        f.get_tensor("model.norm.weight")
                    t0 = time.perf_counter()
                    with safe_open(model, "np") as f:
                        f.get_tensor("model.layers.0.input_layernorm.weight")
                    res["first_tensor_local_ms"] = round((time.perf_counter() - t0) * 1000, 2)
                    t0 = time.perf_counter()
                    with safe_open(path, "np") as f:
                        t_hdr = time.perf_counter() - t0
                        x = f.get_tensor("model.layers.0.input_layernorm.weight")
                        t_small = time.perf_counter() - t0
                        t1 = time.perf_counter()
                        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
                        t_q = time.perf_counter() - t1
                    res["first_tensor_ms"] = round(t_small * 1000, 2)
                    res["header_ms"] = round(t_hdr * 1000, 2)
                    res["q_proj_4.5MiB_ms"] = round(t_q * 1000, 2)
                    print(f"time to first tensor: {t_small * 1000:.1f} ms (open + header "
                          f"{t_hdr * 1000:.1f} ms, {x.nbytes} B input_layernorm; the same on "
                          f"the local file {res['first_tensor_local_ms']:.1f} ms); then q_proj "
                          f"{q.nbytes / MIB:.1f} MiB in {t_q * 1000:.1f} ms")
                # 2. bytes moved for one layer
                if "layer" not in skip:
                    names = [k for k in hdr if k.startswith("model.layers.7.")]
                    layer_bytes = sum(hdr[k]["data_offsets"][1] - hdr[k]["data_offsets"][0] for k in names)
                    r0 = remote(m)
                    w0 = r0["wire_bytes"]
                    t = time.perf_counter()
                    with safe_open(path, "np") as f:
                        for k in names:
                            f.get_tensor(k)
                    dt = time.perf_counter() - t
                    r1 = quiet(m)
                    moved = r1["wire_bytes"] - w0
                    by_class = {k: round((v["bytes"] - r0["classes"][k]["bytes"]) / MIB, 1)
                                for k, v in r1["classes"].items()}
                    res["layer_MiB_by_class"] = by_class
                    res["layer_bytes"] = layer_bytes
                    res["layer_moved"] = moved
                    res["layer_ratio"] = round(moved / layer_bytes, 4)
                    print(f"load layer 7 ({len(names)} tensors, {layer_bytes / MIB:.1f} MiB): moved "
                          f"{moved / MIB:.1f} MiB = {moved / layer_bytes:.3f}x in {dt:.2f} s (MiB by class: {by_class})")
                # 3. foreground latency with / without background prefetch
                if "latency" not in skip:
                    blob = os.path.join(mnt, "branches", "main", "blob.bin")
                    bsize = os.path.getsize(blob)
                    rnd = random.Random(5)
                    offs = [rnd.randrange(0, bsize - 4096) for _ in range(2 * a.reads)]
                    offs2 = [rnd.randrange(0, bsize - 4096) for _ in range(30)]
                    unloaded = random_reads(blob, offs[: a.reads])
                    with open(os.path.join(m, ".tvcfs", "prefetch"), "w") as f:
                        f.write("branches/main/model.safetensors\n")
                    deadline = time.monotonic() + 30
                    while remote(m)["classes"]["prefetch"]["bytes"] < 16 * MIB:
                        if time.monotonic() > deadline:
                            raise RuntimeError("prefetch did not start")
                        time.sleep(0.005)
                    p0 = remote(m)["classes"]["prefetch"]["bytes"]
                    t = time.perf_counter()
                    loaded = random_reads(blob, offs[a.reads:])
                    dt = time.perf_counter() - t
                    p1 = remote(m)["classes"]["prefetch"]["bytes"]
                    # single reads landing in the running prefetch (one every 100 ms)
                    spaced = []
                    for off in offs2:
                        time.sleep(0.1)
                        spaced += random_reads(blob, [off])
                    p2 = remote(m)["classes"]["prefetch"]["bytes"]
                    r = {"unloaded_p50_ms": pct(unloaded, 0.5) * 1e3, "unloaded_p99_ms": pct(unloaded, 0.99) * 1e3,
                         "loaded_p50_ms": pct(loaded, 0.5) * 1e3, "loaded_p99_ms": pct(loaded, 0.99) * 1e3,
                         "spaced_p50_ms": pct(spaced, 0.5) * 1e3, "spaced_p99_ms": pct(spaced, 0.99) * 1e3,
                         "prefetch_MBps_during": (p1 - p0) / dt / 1e6,
                         "prefetch_MB_during_spaced": (p2 - p1) / 1e6,
                         "prefetch_still_running": p2 < size}
                    r = {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}
                    r["p99_ratio"] = round(r["loaded_p99_ms"] / r["unloaded_p99_ms"], 3)
                    r["p50_ratio"] = round(r["loaded_p50_ms"] / r["unloaded_p50_ms"], 3)
                    r["spaced_p99_ratio"] = round(r["spaced_p99_ms"] / r["unloaded_p99_ms"], 3)
                    r["spaced_p50_ratio"] = round(r["spaced_p50_ms"] / r["unloaded_p50_ms"], 3)
                    res["latency"] = r
                    print(f"foreground 4 KiB remote reads: alone p50 {r['unloaded_p50_ms']:.1f} ms "
                          f"p99 {r['unloaded_p99_ms']:.1f} ms; during background prefetch p50 "
                          f"{r['loaded_p50_ms']:.1f} ms p99 {r['loaded_p99_ms']:.1f} ms "
                          f"(p99 ratio {r['p99_ratio']:.2f}, p50 ratio {r['p50_ratio']:.2f}; prefetch "
                          f"{r['prefetch_MBps_during']:.0f} MB/s meanwhile); single reads every "
                          f"100 ms into the running prefetch: p50 {r['spaced_p50_ms']:.1f} ms p99 "
                          f"{r['spaced_p99_ms']:.1f} ms (ratios {r['spaced_p50_ratio']:.2f} / "
                          f"{r['spaced_p99_ratio']:.2f}; prefetch {r['prefetch_MB_during_spaced']:.0f} MB "
                          f"meanwhile)")
            # 4. full sequential read through a fresh lazy mount vs clone
            if "seq" not in skip:
                clone2 = os.path.join(work, "clone2")
                shutil.rmtree(clone2, ignore_errors=True)
                tvcfs("clone", "--lazy", "-q", url, clone2)
                drop_caches()
                with mounted(clone2, mnt, "--fetch-timeout", 60) as m:
                    t = time.perf_counter()
                    n = 0
                    with open(path, "rb", buffering=0) as f:
                        while True:
                            b = f.read(MIB)
                            if not b:
                                break
                            n += len(b)
                    dt = time.perf_counter() - t
                    r = remote(m)
                lazy_mbps = n / dt / 1e6
                full = os.path.join(work, "full")
                shutil.rmtree(full, ignore_errors=True)
                t = time.perf_counter()
                out = tvcfs("clone", url, full)
                cdt = time.perf_counter() - t
                blob_size = os.path.getsize(os.path.join(wt, "blob.bin"))
                m_ = re.search(r"Received \d+ blocks, .*?\((\d+) bytes.*? in ([\d.]+) s", out.stderr)
                clone_bytes = size + blob_size
                clone_mbps = clone_bytes / cdt / 1e6
                inner = None
                if m_:
                    inner = int(m_.group(1)) / float(m_.group(2)) / 1e6
                res["seq"] = {"lazy_read_MBps": round(lazy_mbps, 1), "clone_MBps": round(clone_mbps, 1),
                              "clone_transfer_MBps": round(inner, 1) if inner else None,
                              "ratio": round(lazy_mbps / clone_mbps, 3),
                              "ratio_vs_transfer": round(lazy_mbps / inner, 3) if inner else None,
                              "wire_over_file": round(r["wire_bytes"] / size, 4)}
                s = res["seq"]
                print(f"full sequential read through the lazy mount: {lazy_mbps:.0f} MB/s "
                      f"({r['wire_bytes'] / size:.3f}x bytes on the wire); tvcfs clone: "
                      f"{clone_mbps:.0f} MB/s wall (process included)"
                      + (f", {inner:.0f} MB/s transfer as it reports" if inner else "")
                      + f"; ratio {s['ratio']:.2f}"
                      + (f" ({s['ratio_vs_transfer']:.2f} vs transfer)" if inner else ""))
        print(json.dumps(res, indent=1))
    finally:
        if not a.keep and not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def synth_header(path: str) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


if __name__ == "__main__":
    sys.exit(main())
