"""Block reads for the mount: leaf indexes, zero-copy LMDB reads, readahead.

The mount reads leaves from the repository's LMDB store inside one read transaction
that is renewed between requests (so its buffers are zero-copy and a request that a
single leaf can answer is served without copying). Readahead uses the kernel: the
file offset of a leaf inside ``data.mdb`` is known from its buffer's address, so
``posix_fadvise(WILLNEED)`` schedules the leaves of a tensor, a sequential window or a
whole prefetched file for asynchronous read from disk. Memory stays bounded (the page
cache holds it; the process keeps only indexes).

Every block is checked against its CID before its bytes are first served
(:meth:`~tvcfs.store.lmdb_store.LMDBStore.check`, unless the store's
``verify_reads`` is off): the preload threads that page leaves in hash them there,
ahead of the reader and on the other core, so the trio thread finds them verified.
"""

from __future__ import annotations

import bisect
import collections
import heapq
import logging
import os
import threading
import time


from ..chunking.safetensors import NotSafetensors, parse_header
from ..dag import FileIndex
from ..errors import BlockNotFound, CorruptBlock, MalformedObject
from ..store.base import PRIO_FOREGROUND, PRIO_PREFETCH, PRIO_SEQUENTIAL, PRIO_TENSOR  # noqa: F401 (the fetch priorities)
from ..store.lmdb_store import buffer_address, is_map_buffer

log = logging.getLogger("tvcfs.fs")


SEQ_WINDOW_MIN = 4 << 20   # bytes; first sequential readahead window
SEQ_WINDOW_MAX = 64 << 20  # bytes; the window doubles up to this
SCAN_TENSORS = 2           # times a sequential run must move on to a later tensor to be a scan
SCAN_LEAD_DIV = 32         # a lazy mount's scan reads ahead of its tensor 1/32 of what the run read
#                            (unless its block source asks for another share: ``scan_lead_div``)
SCAN_LEAD_MIN = 1 << 20    # bytes: ... or at least this (the next tensor's first leaf)
SEQ_REORDER = 1 << 20      # bytes: concurrent reads complete out of order, still sequential
SPILL_MAX = 2 << 20        # bytes: how far the kernel's readahead may run past what is read
SEQ_REMOTE_STEP = 2 << 20  # bytes: a lazy mount's sequential window grows in requests this big
INDEX_CACHE = 256          # file indexes kept (LRU)
RECENT_BLOCKS = 8          # blocks of the current snapshot kept for the next requests


def _continues(end: int, offset: int, size: int) -> bool:
    """Whether a read of ``[offset, offset+size)`` continues a sequential run that has
    read up to byte ``end``: it starts at most ``SEQ_REORDER`` past it, and it ends at
    most ``SEQ_REORDER`` before it. Concurrent requests (the kernel's readahead sends
    several; a packed leaf's decode holds one back) complete out of order: a read that
    started before the last one completed ends ``size`` bytes or more before ``end``."""
    return end - SEQ_REORDER <= offset + size and offset <= end + SEQ_REORDER


class Stats:
    """Counters of a mount (exported under ``.tvcfs/stats``): ``reads`` (requests),
    ``bytes_served`` (to the kernel), ``leaf_bytes`` (read from the store),
    ``leaves``, ``readahead_bytes`` (scheduled), ``errors`` (EIO replies),
    ``cold_reads`` (requests that waited for leaves to be paged in and hashed: the
    preload threads had not got there first), ``cold_wait_s`` (seconds they
    waited, in all), ``joined_bytes`` (bytes of requests spanning several leaves
    copied into one ``bytes`` to answer them: 0 when pyfuse3 takes the parts, see
    :meth:`BlockReader.read`) and ``scan_lead_max`` (bytes: the furthest a scan's
    sequential readahead ran past the end of the tensor being read; a lazy mount's
    lead, see :meth:`BlockReader.readahead`) and ``remote_checks`` (a lazy mount's
    requests whose leaves were looked up in the store before they were served: not
    all known to be stored and in memory, see :meth:`BlockReader.read_async`)."""

    def __init__(self):
        self.joined_bytes = 0
        self.cold_reads = 0
        self.cold_wait_s = 0.0
        self.reads = 0
        self.bytes_served = 0
        self.leaf_bytes = 0
        self.leaves = 0
        self.readahead_bytes = 0
        self.prefetch_bytes = 0
        self.errors = 0
        self.scan_lead_max = 0
        self.remote_checks = 0

    def as_dict(self) -> dict:
        """The counters as a plain ``dict`` (for ``.tvcfs/stats``)."""
        return dict(vars(self))


class TensorMap:
    """Tensor byte ranges of a safetensors file: sorted ``starts``/``ends`` (bytes)."""

    __slots__ = ("starts", "ends")

    def __init__(self, starts, ends):
        self.starts, self.ends = starts, ends

    def tensor_at(self, offset: int):
        """``(start, end)`` of the tensor holding ``offset``, or ``None``."""
        i = bisect.bisect_right(self.starts, offset) - 1
        if i >= 0 and offset < self.ends[i]:
            return self.starts[i], self.ends[i]
        return None

    def tensor_of(self, offset: int, size: int):
        """``(start, end)`` of the tensor a read of ``[offset, offset+size)`` is for, or
        ``None`` (the header). A page fault in an mmap makes the kernel read around
        the faulting page (``read_ahead_kb`` centred on it, clamped at offset 0), so
        a fault at a tensor's first byte arrives as a request that starts in the
        tensor before: the tensor meant is the one holding the last byte of the
        request's middle page."""
        if not self.starts or offset < self.starts[0]:
            return None
        page = _middle_page(offset, size)
        return self.tensor_at(min(page + 4095, offset + size - 1)) or self.tensor_at(offset)

    def ambiguous(self, offset: int, size: int) -> bool:
        """Whether the middle page of a read of ``[offset, offset+size)`` holds the end
        of one tensor and the start of the next: a fault at the next tensor's first
        byte and a fault at this tensor's last byte (``memmove``'s tail probe, see
        :meth:`BlockReader._probe`) then arrive as the same request, so the read alone
        cannot say which tensor it is for (the reads after it do)."""
        if not self.starts or offset < self.starts[0]:
            return False
        page = _middle_page(offset, size)
        first = self.tensor_at(max(page, offset))
        return first is not None and first[1] < min(page + 4096, offset + size)


def _middle_page(offset: int, size: int) -> int:
    """Start (bytes) of the 4 KiB page holding the middle byte of ``[offset, offset+size)``:
    the page the kernel's read-around was centred on (the faulting page)."""
    mid = offset + size // 2
    return mid - mid % 4096


class BlockReader:
    """Reads file ranges for the mount from an :class:`~tvcfs.store.lmdb_store.LMDBStore`.

    Blocks are read with the store's verified read (:meth:`LMDBStore.check`): each is
    hashed against its CID the first time this process serves it (leaves by the
    preload threads, see :class:`Preloader`), unless ``store.verify_reads`` is off;
    a leaf of another length than its parent says is always an error. Errors: reads
    raise :class:`BlockNotFound` / :class:`CorruptBlock` naming the CID; the mount
    turns them into ``EIO`` for that request only.
    """

    def __init__(self, store):
        self.store = store
        self._view = store.snapshot()
        self._recent: dict = {}  # cid -> buffer from this snapshot (see get)
        self._lock = threading.Lock()
        self.indexes: collections.OrderedDict = collections.OrderedDict()
        self.tensors: dict[bytes, TensorMap | None] = {}
        self.stats = Stats()
        self._map_addr = _map_base(store)
        # Leaves are paged in by threads, never by the trio thread (see Preloader).
        self.preloader = Preloader(store, self._map_addr, check=store.check)
        self.seq: dict[int, list] = {}  # fh -> [next_offset, window, ra_until]
        # fh -> [anchor, times moved on] of the current sequential run (see _remote_run)
        self.seq_run: dict[int, list] = {}
        # Block source of a lazy mount (tvcfs.store.source.BlockSource: the peer tier's
        # fetcher or an S3 bucket; installed by tvcfs.fs.lazy), or None.
        self.remote = None

    def close(self):
        """Stop the preload threads and close the store snapshot."""
        self.preloader.close()
        self._recent = {}
        self._view.close()

    def renew(self):
        """Start a fresh read snapshot (called between requests, e.g. every second,
        so the transaction does not pin old pages forever)."""
        old = self._view
        self._view = self.store.snapshot()
        self._recent = {}
        old.close()

    # blocks -------------------------------------------------------------------
    def get(self, cid: bytes):
        """Zero-copy buffer of a block (valid until :meth:`renew`), verified. Raises
        :class:`BlockNotFound` / :class:`CorruptBlock`. The last few blocks got from
        this snapshot are kept: a sequential reader asks for each leaf once per
        request (8 times for a 1 MiB leaf read in 128 KiB requests), and each LMDB
        ``get`` touches every page of the value (py-lmdb's preload)."""
        v = self._recent.get(cid)
        if v is None:
            v = self._view.block(cid)
            if len(self._recent) >= RECENT_BLOCKS:
                self._recent.clear()
            self._recent[cid] = v
        return v

    def index(self, cid: bytes) -> FileIndex:
        """The cached :class:`FileIndex` of file ``cid``."""
        idx = self.indexes.get(cid)
        if idx is not None:
            self.indexes.move_to_end(cid)
            return idx
        nodes = []

        def get(c):
            v = self.get(c)
            nodes.append(v)
            return bytes(v)

        idx = FileIndex.build(get, cid)
        if len(nodes) > 1 or (nodes and len(idx.leaves) > 1):
            self.preloader.guess(idx, [buffer_address(v) for v in nodes if is_map_buffer(v)])
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
        except BlockNotFound as e:
            if self.remote is not None:
                # header leaves not fetched yet (lazy mount): fetch them, ask again later
                self.remote.schedule([e.cid], PRIO_TENSOR)
                return None
            tm = None
        except (NotSafetensors, CorruptBlock, MalformedObject):
            tm = None
        self.tensors[idx.cid] = tm
        return tm

    async def read_async(self, idx: FileIndex, offset: int, size: int, parts: bool = False):
        """:meth:`read` (``parts`` as there), first fetching missing leaves from the
        remote source at foreground priority when there is one. Raises
        :class:`BlockNotFound` when they cannot be had (the remote's timeout),
        :class:`CorruptBlock`."""
        cold = self.preloader.cold(idx, offset, size)
        if self.remote is not None:
            if not cold:
                # every leaf is known stored and in memory (fetched, or paged in): serve
                # it from the snapshot without looking each leaf up first (a lazy scan's
                # requests all come here); a leaf stored after the snapshot began, or
                # evicted since, takes the lookup below
                try:
                    return self.read(idx, offset, size, parts)
                except BlockNotFound:
                    pass
            self.stats.remote_checks += 1
            if await self.fetch_missing(idx, offset, size):
                cold = self.preloader.cold(idx, offset, size)
        if cold:
            # py-lmdb touches every page of a value inside get(): for leaves not in
            # memory that is a synchronous disk read, done here in a worker thread
            # (GIL released) so the trio thread keeps serving other requests.
            import trio

            t = time.perf_counter()
            await trio.to_thread.run_sync(self.preloader.load, idx, cold)
            self.stats.cold_reads += 1
            self.stats.cold_wait_s += time.perf_counter() - t
        try:
            return self.read(idx, offset, size, parts)
        except BlockNotFound:
            # maybe committed after this snapshot began (a branch view follows another
            # process's commit at once): renew and try once more; the buffers of the
            # failed attempt are dropped with it
            self.renew()
            if self.remote is not None:
                # or evicted from a bounded cache (an s3:// mount's --cache-size) after
                # the snapshot that called it local began, and that snapshot was renewed
                # at an await above: fetch what the fresh snapshot lacks (the file is
                # open, so its leaves are pinned from now on)
                await self.fetch_missing(idx, offset, size)
            return self.read(idx, offset, size, parts)

    async def fetch_missing(self, idx: FileIndex, offset: int, size: int) -> bool:
        """Fetch from the remote source, at foreground priority, the leaves of bytes
        ``[offset, offset+size)`` of ``idx`` that are not in the local store, then renew
        the snapshot so that reads see them; whether any were missing. Only with a
        remote source. Raises :class:`BlockNotFound` when they cannot be had (the
        source's timeout)."""
        miss = self.missing(idx, offset, size)
        if not miss:
            return False
        await self.remote.fetch(miss, PRIO_FOREGROUND)
        self.renew()
        return True

    async def index_async(self, cid: bytes) -> FileIndex:
        """:meth:`index`, fetching missing internal file nodes from the remote."""
        renewed = False
        while True:
            try:
                return self.index(cid)
            except BlockNotFound as e:
                if self.remote is None:
                    if renewed:
                        raise
                    renewed = True  # maybe committed after this snapshot began
                else:
                    await self.remote.fetch([e.cid], PRIO_FOREGROUND)
                self.renew()

    def read(self, idx: FileIndex, offset: int, size: int, parts: bool = False):
        """Bytes ``[offset, offset+size)`` of the file (a zero-copy buffer when one leaf
        covers the request). A range over several leaves (most 1 MiB requests: leaves
        follow the tensors, not the file's MiB boundaries) is joined into one
        ``bytes``, or with ``parts`` given as a tuple of zero-copy buffers, one per
        leaf, in order (what a pyfuse3 built with packaging/pyfuse3-read-reply-nogil.patch
        writes to the kernel with one ``fuse_reply_iov``: no 1 MiB copy under the
        GIL; their total length is the range's). Raises :class:`BlockNotFound`,
        :class:`CorruptBlock`."""
        end = min(offset + size, idx.size)
        if offset >= end:
            return b""
        rng = idx.leaf_range(offset, end - offset)
        bufs = []
        get, starts, sizes = self.get, idx.starts, idx.sizes
        for i in rng:
            s = starts[i]
            data = idx.leaf_data(get, i)
            ln = sizes[i]
            lo = offset - s if offset > s else 0
            hi = end - s if end - s < ln else ln
            bufs.append(data[lo:hi] if (lo or hi != ln) else data)
        # counted once the request is answered (a lazy mount's read may raise
        # BlockNotFound here and be answered after a fetch)
        st = self.stats
        st.reads += 1
        st.leaves += len(rng)
        st.leaf_bytes += end - offset
        st.bytes_served += end - offset
        if len(bufs) == 1:
            return bufs[0]
        if parts:
            return tuple(bufs)
        st.joined_bytes += end - offset
        return b"".join(bufs)

    # readahead ----------------------------------------------------------------
    def _fadvise_leaves(self, idx: FileIndex, rng: range, priority: int = PRIO_SEQUENTIAL) -> int:
        """Hand the leaves ``rng`` of ``idx`` to the preload threads at ``priority``;
        returns their bytes. (A ``get()`` here would read them synchronously: py-lmdb
        pages in the whole value.)"""
        return self.preloader.schedule(idx, [i for i in rng if i not in idx.inline], priority)

    def missing(self, idx: FileIndex, offset: int, size: int) -> list:
        """CIDs of the leaves of ``[offset, offset+size)`` not in the local store."""
        has = self._view.has
        return [idx.leaves[i] for i in idx.leaf_range(offset, size)
                if i not in idx.inline and not has(idx.leaves[i])]

    def _schedule(self, idx: FileIndex, lo: int, hi: int, priority: int) -> int:
        """Readahead of bytes ``[lo, hi)``: local leaves are handed to the page-in
        threads (:class:`Preloader`), missing ones to the remote source at
        ``priority`` (which marks them resident as it stores them: a page-in thread
        that took one before it arrived found nothing, after switching the whole map
        to exact reads and back). Returns the bytes scheduled: the missing leaves'
        and those newly queued for page-in."""
        rng = idx.leaf_range(lo, hi - lo)
        if self.remote is not None:
            miss = self.missing(idx, lo, hi - lo)
            if miss:
                # one byte-range request per contiguous run (tvcfs.store.source)
                self.remote.schedule_range(idx, lo, hi, miss, priority)
                gone = set(miss)
                fetched = sum(idx.sizes[i] for i in rng if idx.leaves[i] in gone)
                return fetched + self._fadvise_leaves(
                    idx, [i for i in rng if idx.leaves[i] not in gone], priority)
        return self._fadvise_leaves(idx, rng, priority)

    def readahead(self, fh: int, idx: FileIndex, offset: int, size: int) -> None:
        """Schedule readahead after a read of ``[offset, offset+size)`` on handle
        ``fh``: the rest of the tensor the read is for (safetensors; its last leaf
        first), and a sequential window that doubles while reads stay sequential."""
        try:
            tm = self.tensor_map(idx)
            spill = scan = False
            if tm is not None and tm.ambiguous(offset, size):
                # one tensor's last page and the next one's first: a fault at either
                # (memmove's tail probe of one, the head of the other) is this same
                # request, so the reads that follow decide (scheduling the wrong
                # tensor would read all of it for nothing)
                return
            if tm is not None and self._probe(fh, tm, offset, size):
                self._probed(fh, idx, tm)
                return
            if tm is not None:  # local mounts too: loading one tensor reads ~only it
                spill, scan = self._remote_run(fh, tm, offset, size)
            if tm is not None and not spill:
                t = tm.tensor_of(offset, size)
                if t is not None and t[1] > offset + size:
                    s = self.seq.get(fh)
                    # what this handle scheduled counts only if its last read was in this tensor
                    done = s[2] if s and tm.tensor_at(max(s[0] - 1, 0)) == t else 0
                    lo = max(offset + size, done)
                    if lo < t[1]:
                        # the tensor's last leaf first: a copy out of an mmap asks for it
                        # next (see _probe), then the rest from the head
                        tail = idx.starts[idx.leaf_range(t[1] - 1, 1)[0]]
                        if tail > lo:
                            self.stats.readahead_bytes += self._schedule(idx, tail, t[1], PRIO_TENSOR)
                        self.stats.readahead_bytes += self._schedule(idx, lo, t[1], PRIO_TENSOR)
                        self.seq.setdefault(fh, [offset + size, SEQ_WINDOW_MIN, 0])[2] = t[1]
            s = self.seq.get(fh)
            if s is None:
                self.seq[fh] = [offset + size, SEQ_WINDOW_MIN, 0]
                return
            if not _continues(s[0], offset, size):
                s[0], s[1] = offset + size, SEQ_WINDOW_MIN
                return
            s[0] = max(s[0], offset + size)
            target = min(offset + size + s[1], idx.size)
            if tm is not None and (not scan or self.remote is not None):
                # the window stays inside the current tensor (none on a spill) until the
                # run is a scan (local mounts too: the disk and page cache are not free).
                # On a lazy mount a scan's window runs past the tensor by a share of what
                # the run has read, so a reader that stops (one layer's tensors, then
                # another part of the file) has moved at most ~1/SCAN_LEAD_DIV more
                # bytes over the network than it read
                t = tm.tensor_of(offset, size)
                end = offset + size if spill or t is None else max(t[1], offset + size)
                if scan:
                    # the source may ask for a larger share: an S3 bucket's GETs cost
                    # tens of milliseconds each, so its scan keeps several in flight
                    div = getattr(self.remote, "scan_lead_div", None) or SCAN_LEAD_DIV
                    run = self.seq_run.get(fh)
                    end += max((s[0] - run[2]) // div if run else 0, SCAN_LEAD_MIN)
                    if t is not None and not spill:
                        self.stats.scan_lead_max = max(self.stats.scan_lead_max, min(target, end) - t[1])
                target = min(target, end)
            if target > s[2] and (self.remote is None or target >= idx.size
                                  or target - max(s[2], offset + size) >= SEQ_REMOTE_STEP):
                lo = max(s[2], offset + size)
                self.stats.readahead_bytes += self._schedule(idx, lo, target, PRIO_SEQUENTIAL)
                s[2] = target
                s[1] = min(s[1] * 2, SEQ_WINDOW_MAX)
        except (BlockNotFound, CorruptBlock, MalformedObject):
            pass

    def _probe(self, fh: int, tm: TensorMap, offset: int, size: int) -> bool:
        """Whether ``[offset, offset+size)`` is a probe of the last bytes of the tensor
        this handle's run is reading, ahead of the run.

        Copying a tensor out of an mmap (``safe_open().get_tensor``, ``torch.load``
        with ``mmap=True``) goes through ``memmove``, which loads the last bytes of
        the source before copying forward: the kernel sees a fault at the tensor's
        head, one at its tail, then sequential faults from the head. The tail fault
        must not reset the run (its sequential window, its count of tensors read in
        a row): a model loaded tensor by tensor would never look like a scan, and
        every tensor would start cold."""
        s = self.seq.get(fh)
        if s is None or s[0] <= 0 or offset <= s[0] + SEQ_REORDER:
            return False
        t = tm.tensor_at(s[0] - 1)
        return t is not None and offset < t[1] <= offset + size and tm.tensor_at(offset) == t

    def _probed(self, fh: int, idx: FileIndex, tm: TensorMap) -> None:
        """After a probe (:meth:`_probe`): the program is copying the tensor its run
        is in, whatever the run took its first reads for (the head of a tensor that
        follows a small one is within ``SPILL_MAX`` of the run's anchor and looked
        like the kernel's readahead spilling over): the run is anchored at that
        tensor's end and its rest is scheduled at tensor priority."""
        s, run = self.seq[fh], self.seq_run.get(fh)
        t = tm.tensor_at(s[0] - 1)
        if run is not None and run[0] < t[1]:
            run[0] = t[1]
            run[1] += 1
        if s[2] < t[1]:
            self.stats.readahead_bytes += self._schedule(idx, max(s[0], s[2]), t[1], PRIO_TENSOR)
            s[2] = t[1]

    def _remote_run(self, fh: int, tm: TensorMap, offset: int, size: int) -> tuple[bool, bool]:
        """``(spill, scan)`` for a read of ``[offset, offset+size)`` (safetensors).

        A sequential run is anchored at the end of the tensor it is reading. *spill*:
        the read continues the run less than ``SPILL_MAX`` past the anchor: it may be
        the kernel's readahead (mmap read-around, async readahead) spilling over the
        tensor's end, so it triggers no readahead of the next tensor. Further on, the
        program is reading on: the run is anchored at the tensor it is in now.
        *scan*: the run has moved on ``SCAN_TENSORS`` times: its readahead window may
        run past the current tensor. Reads completing out of order (within
        ``SEQ_REORDER``) continue the run."""
        here = tm.tensor_of(offset, size)
        s = self.seq.get(fh)
        run = self.seq_run.get(fh)  # [anchor, times moved on, where the run began]
        if run is None or s is None or not _continues(s[0], offset, size):
            # a new run
            self.seq_run[fh] = [here[1] if here else offset + size, 0, here[0] if here else offset]
            return False, False
        if offset < run[0]:
            return False, run[1] >= SCAN_TENSORS
        if offset < run[0] + SPILL_MAX:
            return True, run[1] >= SCAN_TENSORS
        run[0] = here[1] if here else offset + size
        run[1] += 1
        return False, run[1] >= SCAN_TENSORS

    def prefetch(self, idx: FileIndex) -> int:
        """Schedule a whole file for reading (lowest priority: the kernel reads it in
        the background). Returns the bytes scheduled."""
        n = self._schedule(idx, 0, idx.size, PRIO_PREFETCH)
        self.stats.prefetch_bytes += n
        return n

    def forget_handle(self, fh: int) -> None:
        """Drop the sequential-read state of file handle ``fh``."""
        self.seq.pop(fh, None)
        self.seq_run.pop(fh, None)


def _map_base(store) -> int:
    """Address of this process's mapping of the store's ``data.mdb`` (py-lmdb's
    ``env.info()["map_addr"]`` is 0): a leaf's file offset is its buffer's address
    minus this. 0 if unknown (readahead hints are then skipped)."""
    r = store.map_range()
    return r[0] if r else 0


PAGE = 4096
ADVISE_AHEAD = 64 << 20  # bytes of queued leaves advised ahead of the one being read
ADVISE_SLACK = 16 << 10  # bytes added to an advised run
ADVISE_CHUNK = 1 << 20   # bytes per posix_fadvise call


class Preloader:
    """Threads that page leaves of the LMDB store in ahead of the kernel's requests.

    py-lmdb's ``get()`` touches every page of a value (with the GIL released), so a
    ``get()`` in a worker thread reads the leaf into the page cache, mapped in this
    process, while the trio thread keeps serving; the trio thread then copies from
    memory. Before that, the leaves queued next are advised to the kernel
    (``posix_fadvise(WILLNEED)``: one large asynchronous read) at their predicted
    file offsets: a leaf's offset is its buffer address minus the map's base, known
    once it was read, and LMDB lays out the leaves of a commit one after another
    (each rounded up to pages), so the next ones follow from a known one; every
    read corrects the prediction. Queued leaves go highest priority first (tensor >
    sequential > prefetch), FIFO within a priority; at most ``max_pending`` wait.
    ``threads``: how many (default one per core, 2 to 8).
    ``resident`` remembers the last ``max_resident`` leaves paged in (a hint: the
    kernel may evict them; the trio thread's read then faults them in itself).
    Memory stays bounded: the data lives in the page cache, which the kernel sizes.
    ``check(cid, buffer)``: the store's verification
    (:meth:`~tvcfs.store.lmdb_store.LMDBStore.check`), run on each leaf as it is
    paged in, in these threads (hashlib releases the GIL), so the reader finds it
    verified; a leaf that fails it is not marked resident (the reader's own read
    then raises :class:`CorruptBlock`).
    """

    def __init__(self, store, map_addr: int = 0, threads: int | None = None, max_pending: int = 1 << 16,
                 max_resident: int | None = None, check=None):
        if threads is None:
            # hashing (sha-256, ~1.75 GB/s per core here) is ~40 % of a cold read's CPU
            # in the mount: one thread per core (2..8) so it scales with the machine
            threads = min(8, max(2, os.cpu_count() or 2))
        if max_resident is None:  # leaves (<= 1 MiB) in half of the RAM
            try:
                max_resident = max(1024, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (2 << 20))
            except (ValueError, OSError):
                max_resident = 8192
        # the store's layout (capability map-offsets): value spans, advice, index warm-up
        self.store, self.map_addr = store, map_addr
        self.span, self.value_header = store.value_span, store.VALUE_HEADER
        self.check = check
        # decoded packed blocks (a leaf held there needs no page-in); a set-like view
        self.decoded = getattr(store, "decoded", None) or ()
        self.decoding = getattr(self.decoded, "busy", None)  # cid -> whether a thread decodes it now
        self.skipped = 0  # queued packed leaves found decoded or being decoded (.tvcfs/stats preload_skipped)
        self.exact = 0  # threads reading with the map's read-around off (see _exact_reads)
        self.absent = 0  # page-ins of leaves not in the store (.tvcfs/stats preload_absent)
        self.exact_page_ins = 0  # page-ins with the map's read-around off (.tvcfs/stats preload_exact)
        self.nthreads, self.max_pending, self.max_resident = threads, max_pending, max_resident
        self.cv = threading.Condition()
        self.heap: list = []
        self.pending: dict[bytes, int] = {}  # cid -> best queued priority
        self.resident: collections.OrderedDict = collections.OrderedDict()
        self.offsets: dict[bytes, int] = {}  # leaf cid -> file offset of its data
        self.anchors: dict[bytes, tuple] = {}  # file cid -> (leaf index, offset, verified)
        self.advised: set = set()
        # files with packed leaves (tvcfs pack): no map offsets to predict, and their
        # page faults read around (a packed value is read whole, then decoded)
        self.packed_files: set = set()
        self.cums: collections.OrderedDict = collections.OrderedDict()  # file cid -> span prefix sums
        self.threads: list = []
        self.closed = False
        self.seq = 0
        self.warm = None
        if map_addr:
            self.warm = threading.Thread(target=self._warm_btree, name="tvcfs-btree", daemon=True)
            self.warm.start()

    def mark_resident(self, cids) -> None:
        """``cids`` were just written through the map (a lazy mount's fetched leaves),
        so they are in memory: reading them needs no page-in. Thread-safe (the lazy
        source's storing thread calls it)."""
        res = self.resident
        with self.cv:
            for c in cids:
                res[c] = True
                res.move_to_end(c)
            while len(res) > self.max_resident:
                res.popitem(last=False)

    def cold(self, idx: FileIndex, offset: int, size: int) -> list:
        """Leaf indexes of ``[offset, offset+size)`` not known to be in memory: neither
        paged in (raw) nor decoded in the store's cache (packed: the preload threads
        decode them ahead, and the reader's request then needs no worker thread)."""
        if offset >= idx.size:
            return []
        res, dec = self.resident, self.decoded
        return [i for i in idx.leaf_range(offset, min(size, idx.size - offset))
                if i not in idx.inline and idx.leaves[i] not in res and idx.leaves[i] not in dec]

    def schedule(self, idx: FileIndex, leaves, priority: int) -> int:
        """Queue leaves ``leaves`` (indexes) of ``idx`` for paging in; returns the
        bytes newly queued."""
        n = 0
        with self.cv:
            if self.closed:
                return 0
            for i in leaves:
                cid = idx.leaves[i]
                if cid in self.resident or self.pending.get(cid, -1) >= priority:
                    continue
                if cid not in self.pending and len(self.pending) >= self.max_pending:
                    break
                self.pending[cid] = priority
                self.seq += 1
                heapq.heappush(self.heap, (-priority, self.seq, cid, idx, i))
                n += idx.sizes[i]
            if n:
                if len(self.threads) < self.nthreads:
                    for k in range(len(self.threads), self.nthreads):
                        t = threading.Thread(target=self._run, name=f"tvcfs-preload-{k}", daemon=True)
                        t.start()
                        self.threads.append(t)
                self.cv.notify_all()
        return n

    def guess(self, idx: FileIndex, node_addrs) -> None:
        """A first, unverified anchor for file ``idx`` from the addresses of its
        internal nodes: tvcfs's importer stores a file's leaves in order and then its
        nodes, so the first node in an overflow page follows the last leaf."""
        if not self.map_addr or not idx.leaves or (len(idx.leaves) - 1) in idx.inline:
            return
        offs = [a - self.map_addr for a in node_addrs]
        offs = [o for o in offs if 0 <= o and o % PAGE == self.value_header]
        if offs:
            n = len(idx.leaves) - 1
            with self.cv:
                self.anchors.setdefault(idx.cid, (n, min(offs) - self.span(idx.sizes[n]), False))

    def load(self, idx: FileIndex, leaves) -> None:
        """Page leaves ``leaves`` (indexes) of ``idx`` in now, in the calling thread."""
        self._advise(idx, leaves[0], leaves[-1] + 1)
        for i in leaves:
            self._page_in(idx, i)

    # internals (worker threads) ------------------------------------------------
    def _cum(self, idx: FileIndex) -> list:
        with self.cv:
            c = self.cums.get(idx.cid)
            if c is not None:
                self.cums.move_to_end(idx.cid)
                return c
        c = [0]
        span = self.span
        for i, size in enumerate(idx.sizes):
            c.append(c[-1] + (0 if i in idx.inline else span(size)))
        with self.cv:
            self.cums[idx.cid] = c
            while len(self.cums) > 64:
                self.cums.popitem(last=False)
        return c

    def _predict(self, idx: FileIndex, i: int, cum: list) -> tuple | None:
        """``(offset, distance)``: predicted file offset of leaf ``i``'s data from the
        nearest leaf whose offset is known (within 64 leaves, else the file's last
        one read), and how many leaves away that was; or ``None``."""
        offs, leaves = self.offsets, idx.leaves
        for d in range(0, 65):
            for k in ((i - d, i + d) if d else (i,)):
                if 0 <= k < len(leaves) and k not in idx.inline:
                    o = offs.get(leaves[k])
                    if o is not None:
                        return o + cum[i] - cum[k], d
        a = self.anchors.get(idx.cid)
        if a is not None and a[0] < len(leaves):
            return a[1] + cum[i] - cum[a[0]], abs(i - a[0]) + (0 if a[2] else 64)
        return None

    def _advise(self, idx: FileIndex, first: int, stop: int) -> None:
        """``posix_fadvise(WILLNEED)`` the predicted range of leaves ``first`` ..
        ``stop - 1`` and of the queued leaves that follow (up to ADVISE_AHEAD)."""
        if not self.map_addr or idx.cid in self.packed_files:
            return
        cum = self._cum(idx)
        with self.cv:
            k, nbytes = first, 0
            lo_i = hi_i = None
            while k < len(idx.leaves) and nbytes < ADVISE_AHEAD:
                cid = idx.leaves[k]
                if k >= stop and cid not in self.pending and cid not in self.resident:
                    break
                if k not in idx.inline and cid not in self.advised and cid not in self.resident:
                    self.advised.add(cid)
                    lo_i = k if lo_i is None else lo_i
                    hi_i = k
                nbytes += idx.sizes[k]
                k += 1
            if len(self.advised) > (1 << 16):
                self.advised.clear()
        if lo_i is None:
            return
        pred = self._predict(idx, lo_i, cum)
        if pred is None:
            return
        # B-tree pages allocated between leaves shift later ones by a page now and
        # then (~1 in 50 here): widen the range with the distance from the anchor
        base, dist = pred
        slack = PAGE * (1 + dist // 16)
        lo = max(base - self.value_header - slack, 0)
        hi = base - self.value_header + cum[hi_i + 1] - cum[lo_i] + slack + ADVISE_SLACK
        # the kernel reads at most max(io_pages, ra_pages) per WILLNEED call: advise
        # in pieces no larger than that on any disk
        for o in range(lo, hi, ADVISE_CHUNK):
            self.store.advise(o, min(ADVISE_CHUNK, hi - o))

    def _page_in(self, idx: FileIndex, i: int) -> None:
        cid = idx.leaves[i]
        # reads are exact (no read-around) until the file's layout is verified; never
        # for a packed leaf (its value is read whole, and advised: LMDBStore._read_ahead)
        a = self.anchors.get(idx.cid)
        exact = (self.map_addr and len(idx.leaves) > 1 and not (a and a[2]) and cid not in self.offsets
                 and idx.cid not in self.packed_files)
        try:
            blocks = self.store.snapshot(verify=False)
            try:
                if exact and blocks.is_packed(cid):
                    exact = False
                # the leaf's checksum is read before its page-in, from the same read
                # transaction: once the pages are in, the check is the hash alone (no
                # LMDB call, one GIL hand-off) before the leaf is marked resident
                want = None
                if self.check is not None and self.store.verify_reads and cid not in self.store.verified:
                    want = blocks.recorded_checksum(cid)
                if exact:
                    self.exact_page_ins += 1
                    self._exact_reads(True)
                try:
                    v = blocks.get(cid)
                finally:
                    if exact:
                        self._exact_reads(False)
                if v is None:
                    self.absent += 1
                    return
                # a packed block arrives decoded (a view of a numpy array, cached by
                # the store), not as a buffer into the map: no file offset to learn
                addr = buffer_address(v) if is_map_buffer(v) else 0
                if self.check is not None:
                    self.check(cid, v, blocks.txn, want)  # the pages are in memory now: CPU only
            finally:
                blocks.close()
        except Exception:  # environment closing, map full, a corrupt leaf...: a hint only
            return
        if not addr:  # packed: decoded into the store's bounded cache, never "resident"
            with self.cv:
                if len(self.packed_files) > 4096:
                    self.packed_files.clear()
                self.packed_files.add(idx.cid)
            return
        with self.cv:
            if self.map_addr:
                if len(self.offsets) >= (1 << 20):  # ~100 MB of hints: start over
                    self.offsets.clear()
                self.offsets[cid] = addr - self.map_addr
                self.anchors[idx.cid] = (i, addr - self.map_addr, True)
            self.resident[cid] = True
            self.resident.move_to_end(cid)
            while len(self.resident) > self.max_resident:
                self.resident.popitem(last=False)

    def _exact_reads(self, on: bool) -> None:
        """While any thread reads a leaf whose place is not known yet, the map is
        ``MADV_RANDOM``: its page faults read exactly the pages touched. Otherwise
        (``MADV_NORMAL``) every miss reads the disk's ``read_ahead_kb`` around it (8 MiB
        here) and starts read-ahead chains: several times the bytes needed."""
        with self.cv:
            self.exact += 1 if on else -1
            n = self.exact
        if (on and n == 1) or (not on and n == 0):
            self.store.random_access(on)

    def _warm_btree(self) -> None:
        """Touch every B-tree page of the store once, exactly (keys only, no values):
        a later ``get()`` then misses only on the leaf it reads, which is advised."""
        if not self.map_addr:
            return
        deadline = time.monotonic() + 10
        self._exact_reads(True)
        try:
            self.store.touch_index(lambda: self.closed or time.monotonic() > deadline)
        finally:
            self._exact_reads(False)

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.heap and not self.closed:
                    self.cv.wait()
                if self.closed:
                    return
                prio, _, cid, idx, i = heapq.heappop(self.heap)
                if self.pending.get(cid) != -prio:
                    continue  # superseded by a higher-priority entry
                del self.pending[cid]
                if cid in self.resident:
                    continue
            if cid in self.decoded or (self.decoding is not None and self.decoding(cid)):
                # packed, and decoded already or being decoded by another thread (a
                # request's worker that got there first): waiting for that decode
                # would idle this thread while the leaves after it wait
                self.skipped += 1
                continue
            self._advise(idx, i, i + 1)
            self._page_in(idx, i)

    def close(self) -> None:
        """Stop the preload threads: drop queued work, wake them and join each (up to 10 s)."""
        with self.cv:
            self.closed = True
            self.heap.clear()
            self.pending.clear()
            self.cv.notify_all()
        for t in self.threads + ([self.warm] if self.warm else []):
            t.join(timeout=10)
