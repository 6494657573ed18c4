#!/usr/bin/env python3
"""CPU per leaf of the mount's preload path, with and without its check (issue 14).

Uses the repository ``mount_read.py --workdir DIR --keep`` leaves (``DIR/repo``). For
every raw block over 64 KiB (the model's leaves), in one process, pages warm, each
variant ``--repeat`` times, alternating, CPU time of this thread (``thread_time``):

* ``unverified``: a read snapshot, ``get`` (py-lmdb touches every page), close —
  what a preload thread does with ``--no-verify``;
* ``check, own txn``: the same, then :meth:`LMDBStore.check` looking the checksum up
  in a read transaction of its own (what the preload threads did before 2026-12-07);
* ``check, same txn``: the checksum read first from the snapshot, then the page-in,
  then the xxh3 against it (what :class:`tvcfs.fs.reader.Preloader` does).

The check is forced (``_check``: the per-process cache of checked CIDs is bypassed),
so every round hashes every leaf. Prints the median and minimum µs per leaf.

    python scripts/bench/verify_leaf.py --workdir DIR [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(os.path.dirname(os.path.dirname(HERE)))  # after PYTHONPATH (ab.py)
sys.path.insert(0, HERE)

from e2e import loadavg  # noqa: E402
from tvcfs.repo import Repo  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    with Repo.open(os.path.join(a.workdir, "repo")) as repo:
        store = repo.store
        with store.view(verify=False) as v:
            cids = [c for c, val, packed in v.stored() if not packed and len(val) > 65536]
        sizes = []

        def unverified(c):
            b = store.snapshot(verify=False)
            v = b.get(c)
            sizes.append(len(v))
            b.close()

        def own_txn(c):
            b = store.snapshot(verify=False)
            store._check(c, b.get(c), None)
            b.close()

        def same_txn(c):
            b = store.snapshot(verify=False)
            want = b.recorded_checksum(c)
            store._check(c, b.get(c), b.txn, recorded=want)
            b.close()

        variants = {"unverified": unverified, "check, own txn": own_txn, "check, same txn": same_txn}
        for c in cids:  # pages in
            unverified(c)
        mib = sum(sizes) / len(sizes) / (1 << 20)
        print(f"{len(cids)} leaves of {mib:.2f} MiB on average; load average {loadavg()}")
        res: dict = {k: [] for k in variants}
        for _ in range(a.repeat):
            for name, f in variants.items():
                t = time.thread_time()
                for c in cids:
                    f(c)
                res[name].append((time.thread_time() - t) / len(cids) * 1e6)
        for name, v in res.items():
            v.sort()
            print(f"{name:16} {v[len(v) // 2]:7.1f} µs per leaf (median; min {v[0]:.1f})")
        print(f"load average {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
