#!/usr/bin/env python3
"""S3 client choice for tvcfs's S3 backend: ``obstore`` against ``boto3``, same run.

    python scripts/bench/s3_clients.py [--total-mib 256] [--object-mib 64] [--part-mib 8]
                                       [--range-mib 1] [--threads 8] [--repeat 3]

Starts moto's standalone S3 server (``moto.server.ThreadedMotoServer``) on a free
loopback port in this process and, for each library, in the same run:

* ``upload``: ``--total-mib`` of random bytes as objects of ``--object-mib`` each, by
  multipart upload in ``--part-mib`` parts with ``--threads`` parts in flight (boto3:
  ``upload_fileobj`` with a ``TransferConfig``; obstore: ``obstore.put`` with
  ``chunk_size``/``max_concurrency``) — how packs are written;
* ``ranged GET``: every byte of those objects read back as ``--range-mib`` ranges,
  ``--threads`` at a time (boto3: ``get_object(Range=...)`` on a thread pool;
  obstore: ``get_range`` on the same thread pool, and ``get_ranges`` — one call per
  object, concurrency inside the Rust runtime) — how ``S3Store.get_many`` reads;
  ``get_whole``: each object in one GET, all objects at once (what ``get_ranges``
  makes of neighbouring ranges: it merges them), the same request count for both;
* conditional writes: ``If-None-Match: *`` on an existing key and ``If-Match`` with a
  stale ETag must both be refused with 412 (how refs are moved).

Reports MB/s (10^6 bytes/s), the median of ``--repeat`` rounds (each round printed).
Caveat: moto is a Python server, so on loopback it, not the client, bounds the
throughput (moto copies the whole object for each ranged GET, so small ranges of a
64 MiB object are slow whoever asks, and ``get_ranges`` wins there by merging
neighbouring ranges into one request); the figures compare the clients against the
same server. The
machine's other jobs swing single runs: quote same-run ratios.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

MiB = 1 << 20


def _server():
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    return srv, f"http://{host}:{port}"


def _boto(endpoint, threads):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=threads + 2))


def _obstore(endpoint, bucket):
    from obstore.store import S3Store

    return S3Store(bucket, endpoint=endpoint, allow_http=True, region="us-east-1",
                   access_key_id="testing", secret_access_key="testing")


def run_boto(endpoint, bucket, blobs, a) -> dict:
    from boto3.s3.transfer import TransferConfig

    c = _boto(endpoint, a.threads)
    cfg = TransferConfig(multipart_threshold=a.part_mib * MiB, multipart_chunksize=a.part_mib * MiB,
                         max_concurrency=a.threads, use_threads=True)
    t0 = time.perf_counter()
    for i, b in enumerate(blobs):
        c.upload_fileobj(io.BytesIO(b), bucket, f"boto/{i}", Config=cfg)
    up = time.perf_counter() - t0
    jobs = [(i, off) for i, b in enumerate(blobs) for off in range(0, len(b), a.range_mib * MiB)]

    def one(job):
        i, off = job
        end = min(off + a.range_mib * MiB, len(blobs[i])) - 1
        return len(c.get_object(Bucket=bucket, Key=f"boto/{i}", Range=f"bytes={off}-{end}")["Body"].read())

    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.threads) as pool:
        got = sum(pool.map(one, jobs))
    get = time.perf_counter() - t0
    assert got == sum(map(len, blobs))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.threads) as pool:
        whole = sum(pool.map(lambda i: len(c.get_object(Bucket=bucket, Key=f"boto/{i}")["Body"].read()),
                             range(len(blobs))))
    get_whole = time.perf_counter() - t0
    return {"upload": got / up / 1e6, "get_pool": got / get / 1e6, "get_whole": whole / get_whole / 1e6}


def run_obstore(endpoint, bucket, blobs, a) -> dict:
    import obstore

    s = _obstore(endpoint, bucket)
    t0 = time.perf_counter()
    for i, b in enumerate(blobs):
        obstore.put(s, f"obs/{i}", io.BytesIO(b), use_multipart=True, chunk_size=a.part_mib * MiB,
                    max_concurrency=a.threads)
    up = time.perf_counter() - t0
    total = sum(map(len, blobs))
    jobs = [(i, off) for i, b in enumerate(blobs) for off in range(0, len(b), a.range_mib * MiB)]

    def one(job):
        i, off = job
        end = min(off + a.range_mib * MiB, len(blobs[i]))
        return len(obstore.get_range(s, f"obs/{i}", start=off, end=end))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.threads) as pool:
        got = sum(pool.map(one, jobs))
    get_pool = time.perf_counter() - t0
    assert got == total
    t0 = time.perf_counter()
    got = 0
    for i, b in enumerate(blobs):
        starts = list(range(0, len(b), a.range_mib * MiB))
        ends = [min(x + a.range_mib * MiB, len(b)) for x in starts]
        got += sum(len(r) for r in obstore.get_ranges(s, f"obs/{i}", starts=starts, ends=ends))
    get_native = time.perf_counter() - t0
    assert got == total
    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.threads) as pool:
        got = sum(pool.map(lambda i: len(obstore.get(s, f"obs/{i}").bytes()), range(len(blobs))))
    get_whole = time.perf_counter() - t0
    assert got == total
    return {"upload": total / up / 1e6, "get_pool": total / get_pool / 1e6, "get_ranges": total / get_native / 1e6,
            "get_whole": total / get_whole / 1e6}


def conditional(endpoint, bucket) -> dict:
    """Whether each library exposes create-only and ETag-matched puts that moto honours."""
    import obstore
    from botocore.exceptions import ClientError

    out = {}
    c = _boto(endpoint, 1)
    r = c.put_object(Bucket=bucket, Key="cond/boto", Body=b"1", IfNoneMatch="*")
    refused = 0
    for kw in ({"IfNoneMatch": "*"}, {"IfMatch": '"0000"'}):
        try:
            c.put_object(Bucket=bucket, Key="cond/boto", Body=b"2", **kw)
        except ClientError as e:
            refused += e.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    c.put_object(Bucket=bucket, Key="cond/boto", Body=b"3", IfMatch=r["ETag"])
    out["boto3"] = refused == 2
    s = _obstore(endpoint, bucket)
    r = obstore.put(s, "cond/obs", b"1", mode="create")
    refused = 0
    for mode in ("create", {"e_tag": '"0000"'}):
        try:
            obstore.put(s, "cond/obs", b"2", mode=mode)
        except (obstore.exceptions.AlreadyExistsError, obstore.exceptions.PreconditionError):
            refused += 1
    obstore.put(s, "cond/obs", b"3", mode={"e_tag": r["e_tag"]})
    out["obstore"] = refused == 2
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--total-mib", type=int, default=256)
    ap.add_argument("--object-mib", type=int, default=64)
    ap.add_argument("--part-mib", type=int, default=8)
    ap.add_argument("--range-mib", type=int, default=1)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)
    import boto3
    import obstore

    print(f"boto3 {boto3.__version__}, obstore {obstore.__version__}; {a.total_mib} MiB as "
          f"{a.object_mib} MiB objects, {a.part_mib} MiB parts, {a.range_mib} MiB ranges, {a.threads} threads")
    srv, endpoint = _server()
    try:
        _boto(endpoint, 1).create_bucket(Bucket="bench")
        print("conditional writes refused with 412 as they should:", conditional(endpoint, "bench"))
        blobs = [os.urandom(a.object_mib * MiB) for _ in range(a.total_mib // a.object_mib)]
        rounds: dict = {}
        for r in range(a.repeat):
            for name, fn in (("boto3", run_boto), ("obstore", run_obstore)):
                res = fn(endpoint, "bench", blobs, a)
                print(f"round {r + 1} {name:8s} " + "  ".join(f"{k} {v:7.1f} MB/s" for k, v in res.items()),
                      flush=True)
                for k, v in res.items():
                    rounds.setdefault((name, k), []).append(v)
        print("median:")
        for (name, k), vs in rounds.items():
            print(f"  {name:8s} {k:10s} {statistics.median(vs):7.1f} MB/s")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
