"""Block reads for the mount: leaf indexes, zero-copy LMDB reads, readahead.

The mount reads leaves from the repository's LMDB store inside one read transaction
that is renewed between requests (so its buffers are zero-copy and a request that a
single leaf can answer is served without copying). Readahead uses the kernel: the
file offset of a leaf inside ``data.mdb`` is known from its buffer's address, so
``posix_fadvise(WILLNEED)`` schedules the leaves of a tensor, a sequential window or a
whole prefetched file for asynchronous read from disk. Memory stays bounded (the page
cache holds it; the process keeps only indexes).
"""

from __future__ import annotations

import collections
import logging
import os
import threading

import numpy as np

from ..chunking.safetensors import NotSafetensors, parse_header
from ..dag import FileIndex
from ..encoding.cid import cid_str, verify_block
from ..errors import BlockNotFound, CorruptBlock, MalformedObject

log = logging.getLogger("tvcfs.fs")

# Fetch priorities (higher is more urgent; DESIGN.md §4): a foreground read waits on
# its leaves; readahead of the rest of a tensor; a growing sequential window; an
# explicit prefetch of whole files, which yields to everything else.
PRIO_FOREGROUND, PRIO_TENSOR, PRIO_SEQUENTIAL, PRIO_PREFETCH = 3, 2, 1, 0

SEQ_WINDOW_MIN = 4 << 20   # bytes; first sequential readahead window
SEQ_WINDOW_MAX = 64 << 20  # bytes; the window doubles up to this
INDEX_CACHE = 256          # file indexes kept (LRU)


class Stats:
    """Counters of a mount (exported under ``.tvcfs/stats``): ``reads`` (requests),
    ``bytes_served`` (to the kernel), ``leaf_bytes`` (read from the store),
    ``leaves``, ``readahead_bytes`` (scheduled), ``errors`` (EIO replies)."""

    def __init__(self):
        self.reads = 0
        self.bytes_served = 0
        self.leaf_bytes = 0
        self.leaves = 0
        self.readahead_bytes = 0
        self.prefetch_bytes = 0
        self.errors = 0

    def as_dict(self) -> dict:
        return dict(vars(self))


class TensorMap:
    """Tensor byte ranges of a safetensors file: sorted ``starts``/``ends`` (bytes)."""

    __slots__ = ("starts", "ends")

    def __init__(self, starts, ends):
        self.starts, self.ends = starts, ends

    def tensor_at(self, offset: int):
        """``(start, end)`` of the tensor holding ``offset``, or ``None``."""
        import bisect

        i = bisect.bisect_right(self.starts, offset) - 1
        if i >= 0 and offset < self.ends[i]:
            return self.starts[i], self.ends[i]
        return None


class BlockReader:
    """Reads file ranges for the mount from an :class:`~tvcfs.store.lmdb_store.LMDBStore`.

    ``verify``: hash every leaf the first time it is served in this process (blocks
    were verified when they entered the store; this also catches disk corruption at
    ~1.5 GB/s of CPU). Size mismatches are always detected. Errors: reads raise
    :class:`BlockNotFound` / :class:`CorruptBlock` naming the CID; the mount turns
    them into ``EIO`` for that request only.
    """

    def __init__(self, store, verify: bool = False):
        self.store = store
        self.db = store.dbs["blocks"]
        self.verify = verify
        self.verified: set[bytes] = set()
        self._txn = store.env.begin(buffers=True)
        self._lock = threading.Lock()
        self.indexes: collections.OrderedDict = collections.OrderedDict()
        self.tensors: dict[bytes, TensorMap | None] = {}
        self.stats = Stats()
        self._map_addr = store.env.info()["map_addr"]
        self._fd = os.open(os.path.join(store._real, "data.mdb"), os.O_RDONLY)
        self.seq: dict[int, list] = {}  # fh -> [next_offset, window, ra_until]
        # Remote block source of a lazy mount (tvcfs.fs.remote), or None: an object
        # with ``async fetch(cids, priority)`` and ``schedule(cids, priority)``.
        self.remote = None

    def close(self):
        try:
            self._txn.abort()
        finally:
            os.close(self._fd)

    def renew(self):
        """Start a fresh read snapshot (called between requests, e.g. every second,
        so the transaction does not pin old pages forever)."""
        old = self._txn
        self._txn = self.store.env.begin(buffers=True)
        old.abort()

    # blocks -------------------------------------------------------------------
    def get(self, cid: bytes):
        """Zero-copy buffer of a block (valid until :meth:`renew`). Raises
        :class:`BlockNotFound` / :class:`CorruptBlock`."""
        v = self._txn.get(cid, db=self.db)
        if v is None:
            raise BlockNotFound(cid)
        if self.verify and cid not in self.verified:
            verify_block(cid, v)
            self.verified.add(cid)
        return v

    def index(self, cid: bytes) -> FileIndex:
        """The cached :class:`FileIndex` of file ``cid``."""
        idx = self.indexes.get(cid)
        if idx is not None:
            self.indexes.move_to_end(cid)
            return idx
        idx = FileIndex.build(lambda c: bytes(self.get(c)), cid)
        self.indexes[cid] = idx
        if len(self.indexes) > INDEX_CACHE:
            old, _ = self.indexes.popitem(last=False)
            self.tensors.pop(old, None)
        return idx

    def tensor_map(self, idx: FileIndex) -> TensorMap | None:
        """Tensor ranges if the file is safetensors (parsed from its header leaves)."""
        if idx.cid in self.tensors:
            return self.tensors[idx.cid]
        tm = None
        try:
            first = idx.read(self.get, 0, 8)
            if len(first) == 8:
                n = int.from_bytes(first, "little")
                if 2 <= n <= (100 << 20) and 8 + n <= idx.size:
                    hdr = parse_header(idx.read(self.get, 0, 8 + n), idx.size)
                    tm = TensorMap([t.start for t in hdr.tensors], [t.end for t in hdr.tensors])
        except (NotSafetensors, BlockNotFound, CorruptBlock, MalformedObject):
            tm = None
        self.tensors[idx.cid] = tm
        return tm

    async def read_async(self, idx: FileIndex, offset: int, size: int):
        """:meth:`read`, first fetching missing leaves from the remote source at
        foreground priority when there is one. Raises :class:`BlockNotFound` when
        they cannot be had (the remote's timeout), :class:`CorruptBlock`."""
        if self.remote is not None:
            miss = self.missing(idx, offset, size)
            if miss:
                await self.remote.fetch(miss, PRIO_FOREGROUND)
                self.renew()
        return self.read(idx, offset, size)

    async def index_async(self, cid: bytes) -> FileIndex:
        """:meth:`index`, fetching missing internal file nodes from the remote."""
        while True:
            try:
                return self.index(cid)
            except BlockNotFound as e:
                if self.remote is None:
                    raise
                await self.remote.fetch([e.cid], PRIO_FOREGROUND)
                self.renew()

    def read(self, idx: FileIndex, offset: int, size: int):
        """Bytes ``[offset, offset+size)`` of the file (a zero-copy buffer when one leaf
        covers the request). Raises :class:`BlockNotFound`, :class:`CorruptBlock`."""
        end = min(offset + size, idx.size)
        if offset >= end:
            return b""
        rng = idx.leaf_range(offset, end - offset)
        st = self.stats
        st.reads += 1
        parts = []
        for i in rng:
            s = idx.starts[i]
            data = idx.leaf_data(self.get, i)
            ln = idx.sizes[i]
            if len(data) != ln:
                raise CorruptBlock(f"block {cid_str(idx.leaves[i])} has {len(data)} bytes, expected {ln}")
            lo = offset - s if offset > s else 0
            hi = end - s if end - s < ln else ln
            st.leaves += 1
            st.leaf_bytes += hi - lo
            parts.append(data[lo:hi] if (lo or hi != ln) else data)
        st.bytes_served += end - offset
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    # readahead ----------------------------------------------------------------
    def _fadvise_leaves(self, idx: FileIndex, rng: range) -> int:
        n = 0
        get = self._txn.get
        for i in rng:
            if i in idx.inline:
                continue
            v = get(idx.leaves[i], db=self.db)
            if v is None:
                continue
            addr = np.frombuffer(v, dtype=np.uint8).__array_interface__["data"][0]
            off = addr - self._map_addr
            try:
                os.posix_fadvise(self._fd, off, len(v), os.POSIX_FADV_WILLNEED)
            except OSError:
                return n
            n += len(v)
        return n

    def missing(self, idx: FileIndex, offset: int, size: int) -> list:
        """CIDs of the leaves of ``[offset, offset+size)`` not in the local store."""
        get = self._txn.get
        return [idx.leaves[i] for i in idx.leaf_range(offset, size)
                if i not in idx.inline and get(idx.leaves[i], db=self.db) is None]

    def _schedule(self, idx: FileIndex, lo: int, hi: int, priority: int) -> int:
        """Readahead of bytes ``[lo, hi)``: local leaves are handed to the kernel
        (``posix_fadvise``), missing ones to the remote source at ``priority``."""
        rng = idx.leaf_range(lo, hi - lo)
        if self.remote is not None:
            miss = self.missing(idx, lo, hi - lo)
            if miss:
                self.remote.schedule(miss, priority)
        return self._fadvise_leaves(idx, rng)

    def readahead(self, fh: int, idx: FileIndex, offset: int, size: int) -> None:
        """Schedule readahead after a read of ``[offset, offset+size)`` on handle
        ``fh``: the rest of the tensor holding ``offset`` (safetensors), and a
        sequential window that doubles while reads stay sequential."""
        try:
            tm = self.tensor_map(idx)
            if tm is not None:
                t = tm.tensor_at(offset)
                if t is not None and t[1] > offset + size:
                    s = self.seq.get(fh)
                    done = s[2] if s else 0
                    lo = max(offset + size, done)
                    if lo < t[1]:
                        self.stats.readahead_bytes += self._schedule(idx, lo, t[1], PRIO_TENSOR)
                        self.seq.setdefault(fh, [offset + size, SEQ_WINDOW_MIN, 0])[2] = t[1]
            s = self.seq.get(fh)
            if s is None:
                self.seq[fh] = [offset + size, SEQ_WINDOW_MIN, 0]
                return
            if offset != s[0]:
                s[0], s[1] = offset + size, SEQ_WINDOW_MIN
                return
            s[0] = offset + size
            target = min(offset + size + s[1], idx.size)
            if target > s[2]:
                lo = max(s[2], offset + size)
                self.stats.readahead_bytes += self._schedule(idx, lo, target, PRIO_SEQUENTIAL)
                s[2] = target
                s[1] = min(s[1] * 2, SEQ_WINDOW_MAX)
        except (BlockNotFound, CorruptBlock, MalformedObject):
            pass

    def prefetch(self, idx: FileIndex) -> int:
        """Schedule a whole file for reading (lowest priority: the kernel reads it in
        the background). Returns the bytes scheduled."""
        n = self._schedule(idx, 0, idx.size, PRIO_PREFETCH)
        self.stats.prefetch_bytes += n
        return n

    def forget_handle(self, fh: int) -> None:
        self.seq.pop(fh, None)
