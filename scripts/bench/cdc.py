#!/usr/bin/env python3
"""Throughput of tvcfs.chunking.cdc against SHA-256 of the same bytes, same run.

Usage: ``python scripts/bench/cdc.py [--mib 256] [--file PATH] [--repeat 3]``

Without ``--file`` it chunks ``--mib`` MiB of random bytes in memory (``cdc_cuts``)
and from a temporary file (``cdc_spans``, os.preadv in 4 MiB windows). Prints one
JSON object per measurement (MB/s = 10^6 bytes per second, best of ``--repeat``),
plus the chunk-size statistics (bytes). SHA-256 (hashlib, OpenSSL) is the yardstick:
every leaf is hashed for its CID anyway, so chunking should cost well under that.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # after PYTHONPATH (ab.py)
from tvcfs.chunking.cdc import cdc_cuts, cdc_spans  # noqa: E402


def best_of(fn, repeat: int) -> tuple[float, object]:
    """Fastest wall time (seconds) of ``repeat`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def sha256_file(path: str, window: int = 4 << 20) -> bytes:
    """SHA-256 of a file read in ``window``-byte pieces."""
    h = hashlib.sha256()
    buf = bytearray(window)
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(mv[:n])
    return h.digest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="random input size in MiB")
    ap.add_argument("--file", help="chunk this file instead of random bytes")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    def report(name: str, nbytes: int, seconds: float, lengths=None) -> None:
        row = {"bench": name, "bytes": nbytes, "seconds": round(seconds, 4), "MB_per_s": round(nbytes / seconds / 1e6, 1)}
        if lengths is not None and len(lengths):
            a = np.asarray(lengths)
            row.update(chunks=len(a), mean=int(a.mean()), p5=int(np.percentile(a, 5)), p50=int(np.median(a)), p95=int(np.percentile(a, 95)), max=int(a.max()))
        print(json.dumps(row), flush=True)

    tmp = None
    if args.file:
        path = args.file
    else:
        data = np.random.default_rng(0).integers(0, 256, args.mib << 20, dtype=np.uint8).tobytes()
        t, _ = best_of(lambda: hashlib.sha256(data).digest(), args.repeat)
        report("sha256 in memory", len(data), t)
        t, lengths = best_of(lambda: cdc_cuts(data), args.repeat)
        report("cdc_cuts in memory", len(data), t, lengths)
        fd, tmp = tempfile.mkstemp(prefix="tvcfs-bench-cdc-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        del data
        path = tmp
    try:
        size = os.path.getsize(path)
        t, _ = best_of(lambda: sha256_file(path), args.repeat)
        report("sha256 file", size, t)

        def spans():
            with open(path, "rb") as f:
                return [n for _, n in cdc_spans(f, 0, size)]

        t, lengths = best_of(spans, args.repeat)
        report("cdc_spans file", size, t, lengths)
    finally:
        if tmp:
            os.unlink(tmp)


if __name__ == "__main__":
    main()
