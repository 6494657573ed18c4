"""The one verify-and-store path: every block that enters tvcfs from outside (a peer,
a CAR file, a remote backend) is hashed against its CID here before it is stored or
served (``docs/format.md``: CIDv1 sha2-256).

This is what lets the local store trust its blocks later: :meth:`WriteTxn.put_block
<tvcfs.store.lmdb_store.WriteTxn.put_block>` records an at-rest checksum of each block
it stores, and reads compare against that instead of the CID (docs/repository.md,
"Verified reads"), so nothing unverified may reach it.

Hashing releases the GIL (hashlib does for buffers over 2 KiB), so large batches are
split over a small thread pool and use the machine's other cores.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Iterable

from ..encoding.cid import DAG_CBOR, DAG_PB, RAW, cid_str, verify_block
from ..errors import CorruptBlock
from .base import TRANSACTIONS

__all__ = ["verify_block", "verify_many", "verify_and_put", "put_verified", "PutResult"]

PARALLEL_BYTES = 4 << 20  # bytes: batches smaller than this are hashed on the calling thread
_pool: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """The process's verify pool (2–4 threads): hashing releases the GIL, so blocks
    checked here use the other cores."""
    return _executor()


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)),
                                   thread_name_prefix="tvcfs-verify")
    return _pool


_PREFIXES = {bytes((1, codec, 0x12, 0x20)) for codec in (RAW, DAG_PB, DAG_CBOR)}


def _ok(item) -> bool:
    """A CIDv1 sha2-256 of a codec tvcfs reads, whose digest the data hashes to."""
    cid, data = item
    return len(cid) == 36 and bytes(cid[:4]) in _PREFIXES and hashlib.sha256(data).digest() == bytes(cid[4:])


def verify_many(blocks: Iterable[tuple[bytes, bytes]]) -> tuple[list, list]:
    """Hash every ``(cid, data)`` pair; return ``(good, bad)``: ``good`` the pairs whose
    data hashes to their CID, in input order; ``bad`` the CIDs that do not, or that are
    no CIDv1 sha2-256 of a codec tvcfs reads (raw, dag-pb, dag-cbor)."""
    items = list(blocks)
    if sum(len(d) for _, d in items) < PARALLEL_BYTES or len(items) < 2:
        oks = list(map(_ok, items))
    else:
        oks = list(_executor().map(_ok, items))
    good = [it for it, ok in zip(items, oks) if ok]
    bad = [it[0] for it, ok in zip(items, oks) if not ok]
    return good, bad


@dataclass
class PutResult:
    """Outcome of :func:`verify_and_put`: ``stored`` blocks new to the store,
    ``good`` blocks that verified (new or not), ``bad`` CIDs whose data did not hash
    to them (not stored), ``bytes_new`` bytes of the new blocks."""

    stored: int = 0
    good: int = 0
    bytes_new: int = 0
    bad: list = field(default_factory=list)

    def raise_for_bad(self, source: str = "") -> None:
        """Raise :class:`CorruptBlock` naming the first bad CID (and ``source``)."""
        if self.bad:
            where = f" from {source}" if source else ""
            raise CorruptBlock(f"block {cid_str(self.bad[0])}{where} does not hash to its CID"
                               + (f" (and {len(self.bad) - 1} more)" if len(self.bad) > 1 else ""))


def verify_and_put(store, blocks: Iterable[tuple[bytes, bytes]], txn=None) -> PutResult:
    """Verify ``(cid, data)`` pairs and store the good ones in ``store`` (a
    :class:`~tvcfs.store.base.BlockStore`) — or in the open write transaction ``txn``
    (its ``put_block``) so that they land together with other changes. Bad blocks are
    reported in the result, never stored. Raises what the store raises (for example
    :class:`~tvcfs.store.lmdb_store.StoreFull`). A transaction stores them as
    ``verified`` (hashed by this process: their first read here makes no at-rest
    check, :meth:`~tvcfs.store.lmdb_store.WriteTxn.put_block`)."""
    good, bad = verify_many(blocks)
    return put_verified(store, good, txn, PutResult(good=len(good), bad=bad))


def put_verified(store, good: list, txn=None, res: PutResult | None = None) -> PutResult:
    """Store ``(cid, data)`` pairs this process has just hashed against their CIDs
    (:func:`verify_many`) in ``store`` or in the open write transaction ``txn``: a
    transactional store keeps them as ``verified``, so their first read here makes no
    at-rest check (:meth:`~tvcfs.store.lmdb_store.WriteTxn.put_block`); another store
    gets ``put``. Counts into ``res`` (a new :class:`PutResult` when ``None``) and
    returns it. Raises what the store raises."""
    if res is None:
        res = PutResult(good=len(good))
    if txn is None and good and TRANSACTIONS in getattr(store, "capabilities", ()):
        with store.write() as w:
            return _put_all(partial(w.put_block, verified=True), good, res)
    return _put_all(partial(txn.put_block, verified=True) if txn is not None else store.put, good, res)


def _put_all(put, good, res: PutResult) -> PutResult:
    for cid, data in good:
        if put(cid, data):
            res.stored += 1
            res.bytes_new += len(data)
    return res
