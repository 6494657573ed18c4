#!/usr/bin/env python3
"""S3 verbs benchmark: one run against moto on loopback, ~1 GiB synthetic model (f16).

    python scripts/bench/s3.py [--size-gib 1] [--workdir DIR] [--keep]

Starts moto's standalone S3 server (``moto_server``) in its own process on a free
loopback port — not in this process: a page fault on the mount from this process
holds the GIL, which an in-process server would need to answer it — builds the synthetic safetensors model
(``scripts/synth_model.py``) and commits it, then measures, in the same run:

1. ``tvcfs push`` of the model into an empty bucket / boto3's raw upload of the
   same bytes as pack-sized (64 MiB) objects (``upload_fileobj``, boto3's default
   managed multipart transfer) — throughput ratio (target >= 0.7). Raw objects are
   pack-sized because moto copies a whole object for every ranged GET: one 1 GiB
   object would make every raw read below ~1 s per request;
2. ``tvcfs clone`` from the bucket / boto3's raw download of those objects
   (``download_fileobj``, concurrent ranged GETs) — ratio (target >= 0.7; the clone
   verifies every block and stores it in LMDB);
3. ``tvcfs mount s3://…``: time to the first tensor (``safe_open`` + the first
   layer's ``input_layernorm``; target <= 50 ms), next to the latency of one raw
   4 KiB ranged GET of the model object (the floor: one request);
4. sequential read of the whole model file through a fresh lazy mount / raw ranged
   GETs of the same objects (16 MiB ranges, 8 at a time, the S3 store's own shape) —
   ratio (target >= 0.7).

Prints one line per figure and a JSON summary. moto is a Python server: it, not the
client, bounds these rates; the ratios compare tvcfs with boto3 against the same
server in the same run. The machine's other jobs swing single runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


lazy = _load("lazy")          # tvcfs(), load_synth(), remote(), quiet()
clients = _load("s3_clients")  # _boto()


PIECE = 64 * MIB  # raw objects are pack-sized: moto copies a whole object for every ranged GET


def pieces(size: int) -> list:
    """``[(key, offset, length)]``: the model's bytes as pack-sized raw objects."""
    return [(f"model/{i // PIECE:04d}", i, min(PIECE, size - i)) for i in range(0, size, PIECE)]


def raw_upload(c, path: str, size: int) -> float:
    """Seconds to upload the file as pack-sized objects, one after another, each with
    boto3's default managed transfer (multipart, threads)."""
    import io

    t = time.perf_counter()
    with open(path, "rb") as f:
        for key, off, n in pieces(size):
            f.seek(off)
            c.upload_fileobj(io.BytesIO(f.read(n)), "raw", key)
    return time.perf_counter() - t


def raw_download(c, size: int) -> float:
    """Seconds to download those objects, one after another, with boto3's default
    managed transfer (concurrent ranged GETs)."""
    import io

    t = time.perf_counter()
    for key, _, n in pieces(size):
        buf = io.BytesIO()
        c.download_fileobj("raw", key, buf)
        assert buf.getbuffer().nbytes == n
    return time.perf_counter() - t


def raw_ranged_read(c, size: int, rng: int = 16 * MIB, threads: int = 8) -> float:
    """Seconds to read those objects as ``rng``-byte ranged GETs, ``threads`` at a
    time (the S3 store's own request shape)."""
    def get(job):
        key, start, end = job
        return len(c.get_object(Bucket="raw", Key=key, Range=f"bytes={start}-{end - 1}")["Body"].read())

    jobs = [(key, o, min(o + rng, n)) for key, _, n in pieces(size) for o in range(0, n, rng)]
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        assert sum(ex.map(get, jobs)) == size
    return time.perf_counter() - t


def moto_process():
    """``(Popen, endpoint)`` of ``moto_server`` on a free loopback port, answering."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start")
            time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    from safetensors import safe_open

    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    srv, endpoint = moto_process()
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    work = a.workdir or tempfile.mkdtemp(prefix="tvcfs-s3-bench-")
    os.makedirs(work, exist_ok=True)
    os.environ["TVCFS_CACHE_DIR"] = os.path.join(work, "cache")
    res: dict = {"load_avg_before": os.getloadavg()}
    try:
        wt, src = os.path.join(work, "wt"), os.path.join(work, "src")
        model = os.path.join(wt, "model.safetensors")
        if not os.path.isdir(os.path.join(src, ".tvcfs")):
            os.makedirs(wt, exist_ok=True)
            synth = lazy.load_synth()
            info = synth.write_model(model, synth.config_for_size(a.size_gib, "f16"), "f16", seed=0)
            lazy.tvcfs("init", src)
            lazy.tvcfs("-C", src, "commit", wt, "-b", "main", "-m", "synthetic model")
            print(f"model {info['bytes'] / 2**30:.2f} GiB, {info['tensors']} tensors")
        size = os.path.getsize(model)
        c = clients._boto(endpoint, 10)
        c.create_bucket(Bucket="raw")
        c.create_bucket(Bucket="models")

        # 1. push vs raw upload
        raw_up = raw_upload(c, model, size)
        lazy.tvcfs("-C", src, "remote", "add", "origin", "s3://models/synth", check=False)
        t = time.perf_counter()
        lazy.tvcfs("-C", src, "push", "-q")
        push = time.perf_counter() - t
        res.update(raw_upload_s=round(raw_up, 2), push_s=round(push, 2), push_ratio=round(raw_up / push, 3))
        print(f"push {size / MIB / push:.0f} MiB/s in {push:.2f} s; raw upload {size / MIB / raw_up:.0f} MiB/s "
              f"in {raw_up:.2f} s; ratio {raw_up / push:.2f}")

        # 2. clone vs raw download
        raw_down = raw_download(c, size)
        clone = os.path.join(work, "clone")
        shutil.rmtree(clone, ignore_errors=True)
        t = time.perf_counter()
        lazy.tvcfs("clone", "-q", "s3://models/synth", clone)
        cl = time.perf_counter() - t
        res.update(raw_download_s=round(raw_down, 2), clone_s=round(cl, 2), clone_ratio=round(raw_down / cl, 3))
        print(f"clone {size / MIB / cl:.0f} MiB/s in {cl:.2f} s; raw download {size / MIB / raw_down:.0f} MiB/s "
              f"in {raw_down:.2f} s; ratio {raw_down / cl:.2f}")
        shutil.rmtree(clone, ignore_errors=True)

        # 3. lazy mount: first tensor
        from tvcfs.fs import mount

        mnt = os.path.join(work, "mnt")
        path = os.path.join(mnt, "branches", "main", "model.safetensors")
        with mount("s3://models/synth", mnt, log_path=os.path.join(work, "mount.log")) as m:
            lazy.quiet(m)  # the mount's start-up fetches (headers) done
            with safe_open(model, "np") as f:  # library start-up is not the mount's
                f.get_tensor("model.norm.weight")
            t0 = time.perf_counter()
            with safe_open(path, "np") as f:
                f.get_tensor("model.layers.0.input_layernorm.weight")
            first = time.perf_counter() - t0
            res["first_tensor_ms"] = round(first * 1000, 2)
            # the floor under it: one small ranged GET of a pack-sized object (moto
            # copies the whole object for every ranged GET)
            lat = []
            for i in range(5):
                t = time.perf_counter()
                c.get_object(Bucket="raw", Key=pieces(size)[0][0], Range=f"bytes={i * MIB}-{i * MIB + 4095}")["Body"].read()
                lat.append(time.perf_counter() - t)
            res["raw_small_get_ms"] = round(sorted(lat)[2] * 1000, 2)
            print(f"lazy mount: first tensor in {first * 1000:.1f} ms (one raw 4 KiB ranged GET of a 64 MiB object: "
                  f"{res['raw_small_get_ms']:.1f} ms, median of 5)")
        shutil.rmtree(os.environ["TVCFS_CACHE_DIR"], ignore_errors=True)

        # 4. sequential read through a fresh lazy mount vs raw ranged GETs
        raw_seq = raw_ranged_read(c, size)
        with mount("s3://models/synth", mnt, log_path=os.path.join(work, "mount.log")) as m:
            lazy.quiet(m)
            t = time.perf_counter()
            with open(path, "rb", buffering=0) as f:
                n = 0
                while True:
                    b = f.read(4 * MIB)
                    if not b:
                        break
                    n += len(b)
            seq = time.perf_counter() - t
            assert n == size
            moved = lazy.remote(m)["s3"]["bytes"]
        res.update(raw_ranged_s=round(raw_seq, 2), seq_read_s=round(seq, 2), seq_ratio=round(raw_seq / seq, 3),
                   seq_moved_ratio=round(moved / size, 3))
        print(f"sequential read {size / MIB / seq:.0f} MiB/s in {seq:.2f} s ({moved / size:.3f}x moved); raw "
              f"ranged GETs {size / MIB / raw_seq:.0f} MiB/s in {raw_seq:.2f} s; ratio {raw_seq / seq:.2f}")
        res["load_avg_after"] = os.getloadavg()
        print(json.dumps(res))
    finally:
        srv.terminate()
        srv.wait()
        if not a.keep and not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
