#!/usr/bin/env python3
"""CPU per FUSE read request of tvcfs's read path, without FUSE: the lazy scan's case.

    PYTHONPATH=TREE python scripts/bench/read_path.py REPO [--request-kib 128] [--repeat 5]

``REPO``: a repository holding a ``.safetensors`` file whole (e.g. the ``src`` of a
``scripts/bench/s3.py --workdir DIR`` run). Replays what the mount's trio thread does
for a sequential read of the file in ``--request-kib`` requests (the lazy mount's
``read_ahead_kb``: 128): :meth:`BlockReader.read_async` then
:meth:`BlockReader.readahead`, with a block source installed (as a lazy mount has)
that never has anything to fetch, and every leaf marked resident (as a lazy mount's
S3 source marks each leaf it stores, ``Preloader.mark_resident``). Prints the
thread CPU microseconds per request of each pass (the best is the figure; the
pyfuse3 and trio overhead and the kernel's copy of the reply are not in it:
``s3_lazy_ab.py --profile`` shows them). docs/performance.md, "sixth round".
"""

from __future__ import annotations

import argparse
import time

import trio

from tvcfs.fs.reader import BlockReader
from tvcfs.repo import Repo


class NothingToFetch:
    """A lazy mount's block source whose blocks are all stored already."""

    scan_lead_div = 4

    def schedule_range(self, idx, lo, hi, cids, priority) -> None:
        pass

    def schedule(self, cids, priority) -> None:
        pass

    async def fetch(self, cids, priority) -> None:
        raise AssertionError("a stored leaf was fetched")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo")
    ap.add_argument("--request-kib", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    step = a.request_kib << 10
    with Repo.open(a.repo) as repo:
        cid = next(e.cid for p, e in repo.walk(repo.head()) if p.endswith(".safetensors"))
        r = BlockReader(repo.store)
        try:
            r.remote = NothingToFetch()
            idx = r.index(cid)
            r.preloader.mark_resident(idx.leaves)
            for i in range(len(idx.leaves)):  # the pages in memory, each leaf checked once
                r.read(idx, idx.starts[i], 1)

            async def passes() -> list:
                out = []
                for _ in range(a.repeat):
                    t, n = time.thread_time(), 0
                    for off in range(0, idx.size, step):
                        d = await r.read_async(idx, off, step, True)
                        r.readahead(1, idx, off, sum(map(len, d)) if isinstance(d, tuple) else len(d))
                        n += 1
                    out.append((time.thread_time() - t) / n)
                    r.forget_handle(1)
                return out

            per = trio.run(passes)
        finally:
            r.close()
    print(f"{idx.size / (1 << 30):.2f} GiB in {step >> 10} KiB requests: "
          + ", ".join(f"{x * 1e6:.1f}" for x in per) + f" µs each (best {min(per) * 1e6:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
