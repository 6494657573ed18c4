"""The embedded block store: one LMDB environment per repository (docs/repository.md).

Named sub-databases:

``blocks``  binary CID → block bytes (hot blocks, read zero-copy)
``packed``  binary CID → a packed value (:mod:`tvcfs.store.encodings`): header + zstd frame
``packbase`` base CID ‖ delta CID → ``b""`` (which stored deltas need which base)
``refs``    ``refs/heads/NAME``, ``refs/tags/NAME`` → binary CID; ``HEAD`` → ``ref: refs/heads/NAME``
``reflog``  ``REF \\0 seq(8 bytes BE)`` → JSON ``{old, new, time, message, rejected}``
``pins``    binary CID → JSON ``{name, time}``
``meta``    str keys → JSON values (format version, remotes, config)
``sums``    binary CID → 8 bytes: the xxh3-64 checksum (big-endian) of the block's bytes
            (decoded bytes for a packed block), recorded when the block was stored

The environment is opened with ``writemap=True, map_async=True`` and synced once per
write transaction (``env.sync(True)``): 1 GiB puts at ~2.5 GB/s instead of 0.4, durable
when :meth:`LMDBStore.write` returns. A killed process leaves the last committed
transaction intact (LMDB's copy-on-write B+tree). Reads use zero-copy buffers inside
a read transaction (:meth:`LMDBStore.read`).

Every block read for its bytes goes through :meth:`LMDBStore.check` (or
:meth:`LMDBStore.get`, a copy of it), which checks it the first time this process
reads it (a bounded per-environment :class:`VerifiedSet`): a disk or file-system
fault that changed a stored block is an error naming the CID, never wrong bytes.

Blocks are verified on entry and checksummed at rest, as git does (objects hashed
when fetched or written; zlib's Adler-32 and the pack index's CRC32 re-checked on
read; ``git fsck`` for the full hash). Every block enters the store through
:meth:`WriteTxn.put_block`, whose callers established that its bytes hash to its CID
(a commit computed the CID from them; blocks from outside pass
:func:`tvcfs.store.verify.verify_and_put`); in the same transaction its xxh3-64
checksum (:func:`checksum`, ~20 GB/s per core against sha-256's ~1.7) goes into
``sums``. A read compares the bytes with that checksum; a block without one (stored
by older code) is hashed with sha-256 against its CID. ``verify.reads = "cid"`` in
the repository's configuration (:mod:`tvcfs.config`) hashes every block against its
CID as before; ``tvcfs fsck`` always does, and records the checksums a store made
before them lacks (docs/repository.md, "Verified reads").
``LMDBStore.verify_reads = False`` (``--no-verify``) skips the check.

Disk space is reserved before it is written. With ``writemap`` LMDB writes new pages
straight into the map of a sparse ``data.mdb``; on a full file system the kernel
cannot allocate a block for such a page and kills the process with ``SIGBUS`` (no
error, no message). So every write transaction first allocates the file range its
new pages can land in (``posix_fallocate`` past the last used page, ahead of the
bytes it puts, in growing steps): a full disk then raises :class:`StoreFull` before
any page is touched, the transaction is aborted and nothing committed is lost.

Packed blocks (``tvcfs pack``, docs/repository.md "Packing") live in ``packed``,
under the same CID: every read (:meth:`LMDBView.get`, :meth:`LMDBStore.get`,
``get_many``, ``has``, iteration, ``stat``) sees them, decoding on the fly (bases
first, a chain of at most :data:`~tvcfs.store.encodings.MAX_DEPTH`) and hashing
every decoded block against its CID; decoded blocks are kept in a small per-process
cache (:class:`DecodedCache`, which also hands out the buffers blocks are decoded
into: slots of a huge-page map, reused once nothing refers to them). A packed block reads as a read-only ``memoryview`` of
the ``uint8`` array it was decoded into, not a buffer into the map
(:func:`is_map_buffer` tells them apart); reading a packed value advises the kernel
to read the values after it (:meth:`LMDBStore._read_ahead`). A delta whose base is
missing raises :class:`MissingBase` (a :class:`CorruptBlock`), never wrong bytes. A block that stored deltas use as their
base is never turned into a delta itself, and deleting it first re-encodes those
deltas without it (:meth:`WriteTxn.delete_block`).

LMDB must not be opened twice in one process: environments are shared through a
per-process registry keyed by real path.
"""

from __future__ import annotations

import collections
import errno
import json
import mmap
import os
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import lmdb

from ..encoding.cid import VerifiedSet, cid_str
from ..errors import BlockNotFound, CorruptBlock, RefConflict, TvcfsError
from . import encodings
from .base import MAP_OFFSETS, PERSISTENT, TRANSACTIONS, ZERO_COPY

DEFAULT_MAP_SIZE = 1 << 40  # bytes of address space (sparse); 1 TiB
_DBS = (b"blocks", b"refs", b"reflog", b"pins", b"meta", b"packed", b"packbase", b"sums")
DECODED_CACHE = 128 << 20  # bytes of decoded packed blocks kept per environment
DECODED_SPARE = 32 << 20   # bytes of decode buffers beyond the cache (in flight, still read)
SLOT = 1 << 20             # bytes: a decode buffer slot (the largest leaf, docs/format.md)
SLOT_MIN = 128 << 10       # bytes: smaller blocks are decoded into plain arrays
PACKED_AHEAD = 8 << 20     # bytes of data.mdb advised after a packed value or a delta base read
ADVISE_PIECE = 1 << 20     # bytes per posix_fadvise call (the kernel reads at most ~ra_pages each)

_registry: dict[str, tuple[lmdb.Environment, dict, list]] = {}
_xxh3 = None
SUM_BYTES = 8  # bytes of a recorded checksum (xxh3-64, big-endian)


def checksum(data) -> bytes:
    """The at-rest checksum of a block's bytes ``data`` (bytes-like): its xxh3-64
    digest, 8 bytes big-endian (``xxhash``; ~20 GB/s per core here). Not a CID: it
    detects bytes that changed on disk since they were stored, not a forged block."""
    global _xxh3
    if _xxh3 is None:
        import xxhash

        _xxh3 = xxhash.xxh3_64_digest
    return _xxh3(data)
_registry_lock = threading.Lock()


# madvise(2) advice values (<sys/mman.h>, Linux)
MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED, MADV_DONTNEED = 0, 1, 2, 3, 4
_madvise_fn = None


def madvise(addr: int, length: int, advice: int) -> bool:
    """``madvise(addr, length, advice)`` through libc (``addr`` page-aligned); returns
    ``False`` when unavailable or refused. Used for page-cache hints on the store's
    map; errors are not raised (a hint only)."""
    global _madvise_fn
    if _madvise_fn is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).madvise
            fn.argtypes, fn.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
            _madvise_fn = fn
        except (OSError, AttributeError):
            _madvise_fn = False
    return bool(_madvise_fn) and _madvise_fn(addr, length, advice) == 0


_buffer_api = None


def is_map_buffer(buf) -> bool:
    """Whether ``buf`` (what a view's ``get`` returned) is a zero-copy buffer into the
    store's map (a raw block, py-lmdb's ``memoryview`` of no Python object), not a
    decoded packed block (a ``memoryview`` of a numpy array)."""
    return isinstance(buf, memoryview) and buf.obj is None


def buffer_address(buf) -> int:
    """Address of the first byte of a contiguous buffer (read-only ones included, e.g.
    a zero-copy LMDB value: its offset in ``data.mdb`` is this minus the start of
    :meth:`LMDBStore.map_range`). Through the buffer protocol (``PyObject_GetBuffer``,
    ~1.3 µs), not numpy: the mount's first read must not import numpy (0.4 s from a
    cold page cache)."""
    global _buffer_api
    if _buffer_api is None:
        import ctypes

        class PyBuffer(ctypes.Structure):  # Py_buffer (Include/pybuffer.h)
            _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                        ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                        ("internal", ctypes.c_void_p)]

        get, release = ctypes.pythonapi.PyObject_GetBuffer, ctypes.pythonapi.PyBuffer_Release
        get.argtypes, get.restype = (ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int), ctypes.c_int
        release.argtypes, release.restype = (ctypes.POINTER(PyBuffer),), None
        _buffer_api = (PyBuffer, get, release, ctypes.byref)
    cls, get, release, byref = _buffer_api
    view = cls()
    get(buf, byref(view), 0)  # PyBUF_SIMPLE: raises TypeError/BufferError like memoryview()
    try:
        return view.buf or 0
    finally:
        release(byref(view))


def store_exists(path: str) -> bool:
    """True if ``path`` holds an LMDB store (its ``data.mdb``)."""
    return os.path.isfile(os.path.join(path, "data.mdb"))


class StoreFull(TvcfsError):
    """The LMDB map or the disk is full; the transaction was rolled back, nothing lost."""


class StoreDamaged(TvcfsError):
    """LMDB cannot read the store's ``data.mdb`` itself (empty, truncated, a B-tree page
    overwritten: ``MDB_INVALID``, ``MDB_CORRUPTED``, ``MDB_PAGE_NOTFOUND``), as opposed
    to a block whose bytes are wrong (:class:`~tvcfs.errors.CorruptBlock`, which
    ``tvcfs fsck`` lists). The message names the file and what to do."""


# LMDB's answers for a data file it cannot read (not for a full disk or a bad call)
_DAMAGE_ERRORS = (lmdb.CorruptedError, lmdb.InvalidError, lmdb.PageNotFoundError, lmdb.PanicError,
                  lmdb.VersionMismatchError, lmdb.BadTxnError)
_opened: list = []  # real paths of the stores this process opened, oldest first (damage_error)


def damage_error(e: BaseException, path: str | None = None) -> StoreDamaged | None:
    """The :class:`StoreDamaged` for an LMDB error ``e`` that says the data file of
    the store at ``path`` (default: the stores this process opened) cannot be read,
    else ``None`` (``e`` is something else)."""
    if not isinstance(e, _DAMAGE_ERRORS):
        return None
    paths = [path] if path else _opened[-2:] or ["the repository store"]
    files = " or ".join(os.path.join(p, "data.mdb") for p in paths)
    reason = str(e).split(": ", 1)[-1] if ": MDB_" in str(e) else str(e)
    return StoreDamaged(f"{files}: the repository store is damaged ({reason}); LMDB cannot read it, so "
                        "tvcfs fsck cannot repair it: restore the .tvcfs/store directory from a backup, "
                        "or clone the repository again from a remote")


class MissingBase(CorruptBlock):
    """A packed delta's base block is not in the store (the store is damaged: the
    delta cannot be decoded). ``.cid``: the delta; ``.base``: the missing base."""

    def __init__(self, cid, base: bytes | None = None, path: str = ""):
        if base is None:  # a message alone (re-raised with a path prefixed: errors.naming)
            self.cid = self.base = None
            super().__init__(cid)
            return
        self.cid, self.base = cid, base
        super().__init__(f"stored block {cid_str(cid)} is a delta against {cid_str(base)}, which is "
                         f"missing from the store {path}: it cannot be decoded "
                         "(tvcfs fsck lists the damaged blocks; fetch the block again from a peer)")


class DecodedCache:
    """Decoded packed blocks (read-only ``memoryview`` objects over ``uint8`` arrays,
    checked against their CIDs), least recently used dropped first once more than
    ``limit`` bytes are held. Thread-safe. Blocks are immutable, so entries never go
    stale. :meth:`claim` lets one thread decode a block while others wanting it wait
    for the result instead of decoding it again (the mount's preload threads and its
    reader often want the same leaf).

    :meth:`buffer` gives the arrays blocks are decoded into: for blocks of
    :data:`SLOT_MIN` to :data:`SLOT` bytes, a slot of one anonymous map advised for
    transparent huge pages. A fresh process (a new mount) decoding into new ``numpy``
    arrays first touches every page of them — the cache's 128 MiB, one page fault
    and a zeroed 4 KiB page each (~190 faults per MiB of a fresh mount's packed read)
    — where a huge page costs one fault per 2 MiB (~52 per MiB left, 6-8 % less CPU
    per GB: docs/performance.md "Packed blocks", fourth round). A slot is free again only once nothing refers to its
    memory: it is handed out as an array over a ``memoryview`` of the slot (the
    array's ``base``), which every slice and ``memoryview`` of the array keeps alive
    (numpy's views keep the array or its base, Python's the array), and a
    finalizer of that ``memoryview`` returns the slot — a reader never sees a slot's next bytes."""

    def __init__(self, limit: int = DECODED_CACHE, slots: int | None = None):
        self.limit, self.size = limit, 0
        self.nslots = (limit + DECODED_SPARE) // SLOT if slots is None else slots
        self._arena = None  # mmap of nslots * SLOT bytes, made on first use
        self._free: list = []  # free slot numbers (list.append/pop: atomic under the GIL)
        self._d: "dict[bytes, memoryview]" = {}
        self._lock = threading.Lock()
        self._busy: "dict[bytes, threading.Event]" = {}

    def claim(self, cid: bytes) -> "threading.Event | None":
        """``None`` when the caller is to decode ``cid`` (then :meth:`release` it);
        else the event another thread decoding it sets when done."""
        with self._lock:
            ev = self._busy.get(cid)
            if ev is None:
                self._busy[cid] = threading.Event()
            return ev

    def release(self, cid: bytes) -> None:
        """End the decode of ``cid`` claimed with :meth:`claim`: wake the threads waiting for
        it."""
        with self._lock:
            ev = self._busy.pop(cid, None)
        if ev is not None:
            ev.set()

    def __contains__(self, cid: bytes) -> bool:
        """Whether ``cid`` is held (a hint: it may be dropped right after)."""
        return cid in self._d

    def busy(self, cid: bytes) -> bool:
        """Whether a thread is decoding ``cid`` now (claimed, not released yet: a
        hint)."""
        return cid in self._busy

    def get(self, cid: bytes):
        """The decoded block ``cid`` (a read-only ``memoryview``), marked most recently used,
        or ``None`` if not held."""
        with self._lock:
            v = self._d.pop(cid, None)
            if v is not None:
                self._d[cid] = v  # most recent last
            return v

    def buffer(self, n: int):
        """A writable, contiguous ``uint8`` numpy array of ``n`` bytes to decode a
        block into (contents undefined): a free slot of the arena when ``n`` is
        between :data:`SLOT_MIN` and :data:`SLOT` and one is free, else a new array."""
        np = encodings.np
        if SLOT_MIN <= n <= SLOT and self.nslots:
            if self._arena is None:
                self.warm()
            try:
                k = self._free.pop()
            except IndexError:
                pass
            else:
                arr = np.frombuffer(memoryview(self._arena)[k * SLOT:k * SLOT + n], np.uint8)
                # the finalizer goes on the array's own base (numpy takes a new
                # memoryview of what it is given): the array and all its views hold it
                weakref.finalize(arr.base, self._free.append, k).atexit = False
                return arr
        return np.empty(n, np.uint8)

    def warm(self) -> None:
        """Make the arena of :meth:`buffer` now (the mount daemon does at start-up when
        its store holds packed blocks): a process's first ``MADV_HUGEPAGE`` waits
        ~10 ms in the kernel (no CPU), which the first decode of a fresh mount's
        first read paid, while that request waited and no preload thread had work
        yet (docs/performance.md "Packed blocks", eighth round)."""
        if self.nslots and self._arena is None:
            with self._lock:
                if self._arena is None:
                    self._arena = self._map()

    def _map(self):
        """The arena: ``nslots`` slots of :data:`SLOT` bytes in one anonymous map
        (address space only until touched), advised for huge pages where the kernel
        has them."""
        m = mmap.mmap(-1, self.nslots * SLOT, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except (AttributeError, OSError):  # no transparent huge pages: 4 KiB pages
            pass
        self._free.extend(range(self.nslots - 1, -1, -1))
        return m

    def put(self, cid: bytes, data) -> None:
        """Hold ``data`` (a ``memoryview`` of a decoded block) for ``cid``, dropping
        the least recently used beyond ``limit``."""
        if len(data) > self.limit // 4:
            return
        with self._lock:
            if cid in self._d:
                return
            self._d[cid] = data
            self.size += len(data)
            while self.size > self.limit:
                old = next(iter(self._d))
                self.size -= len(self._d.pop(old))


@dataclass(frozen=True)
class BlockInfo:
    """How a block is stored: ``stored`` bytes on disk (the value), ``raw`` bytes of
    the block, ``encoding`` (``"raw"``, ``"zstd"``, ``"grouped"``, ``"delta"``),
    ``base`` (the delta base's CID or ``None``), ``depth`` (delta chain bound, 0 for
    self-contained), ``elem`` (element size used for byte grouping)."""

    stored: int
    raw: int
    encoding: str
    base: bytes | None = None
    depth: int = 0
    elem: int = 1


RESERVE_MIN = 1 << 20  # bytes: smallest step by which the allocated part of data.mdb grows
RESERVE_MAX = 64 << 20  # bytes: largest step (steps are 1/8 of what is in use, between these)
TXN_SLACK = 1 << 20  # bytes reserved for a transaction's B-tree, freelist, refs and meta pages


class _Reservation:
    """The allocated (not sparse) prefix of one environment's ``data.mdb`` as far as this
    process knows; shared by the :class:`LMDBStore` instances of a path. Used only
    inside write transactions, which LMDB serialises."""

    def __init__(self, path: str, psize: int):
        self.path = path
        self.psize = psize
        self.fd = -1
        self.allocated = 0  # bytes from offset 0 known to have blocks
        self.supported = True

    def ensure(self, end: int) -> None:
        """Make sure bytes ``[0, end)`` of ``data.mdb`` have disk blocks. Raises
        :class:`StoreFull` (ENOSPC, EDQUOT, EFBIG) naming the path and the bytes asked for."""
        if end <= self.allocated or not self.supported:
            return
        step = min(RESERVE_MAX, max(RESERVE_MIN, end // 8))
        target = -(-(end + step) // self.psize) * self.psize
        try:
            if self.fd < 0:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            start = self.allocated // self.psize * self.psize
            os.posix_fallocate(self.fd, start, target - start)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                # take what is there: the transaction may still fit
                try:
                    os.posix_fallocate(self.fd, self.allocated, max(0, end - self.allocated))
                except OSError:
                    raise StoreFull(f"no space left on the disk of {self.path}: "
                                    f"{end - self.allocated} more bytes needed "
                                    f"({os.strerror(e.errno)}); nothing was written, "
                                    f"what was committed before is intact") from None
                self.allocated = end
                return
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self.supported = False  # a file system without fallocate: no reservation
                return
            raise
        self.allocated = target

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_env(path: str, map_size: int):
    real = os.path.realpath(path)
    with _registry_lock:
        if real in _registry:
            env, dbs, count = _registry[real]
            count[0] += 1
            return real, env, dbs
        os.makedirs(real, exist_ok=True)
        data = os.path.join(real, "data.mdb")
        if os.path.isfile(data) and os.path.getsize(data) == 0:
            # LMDB would make a new, empty environment of it: the store was cut to nothing
            raise damage_error(lmdb.InvalidError("data.mdb is empty"), real)
        try:
            env = lmdb.open(real, map_size=map_size, max_dbs=len(_DBS) + 2, writemap=True,
                            map_async=True, max_readers=512, readahead=True)
        except _DAMAGE_ERRORS as e:
            raise damage_error(e, real) from None
        except lmdb.Error as e:  # the OS refused (a directory, no permission, ...): say which
            reason = str(e).split(": ", 1)[-1]
            raise TvcfsError(f"{real}: LMDB cannot open the store ({reason}): data.mdb and lock.mdb there "
                             "must be files this user may read and write, on a disk with space") from None
        reservation = _Reservation(data, env.stat()["psize"])
        try:
            # open_db writes the sub-databases' records on a fresh environment
            reservation.ensure((env.info()["last_pgno"] + 1) * reservation.psize + TXN_SLACK)
            dbs = {name.decode(): env.open_db(name) for name in _DBS}
        except BaseException as e:  # noqa: BLE001 - closed, then re-raised (as StoreDamaged if it says so)
            reservation.close()
            env.close()
            raise (damage_error(e, real) or e) from None
        if real not in _opened:
            _opened.append(real)
        _registry[real] = (env, dbs, [1, reservation, VerifiedSet(), DecodedCache()])
        return real, env, dbs


def _close_env(real: str):
    with _registry_lock:
        ent = _registry.get(real)
        if not ent:
            return
        ent[2][0] -= 1
        if ent[2][0] == 0:
            ent[2][1].close()
            ent[0].close()
            del _registry[real]


def _reservation(real: str) -> _Reservation:
    with _registry_lock:
        return _registry[real][2][1]


def _verified(real: str) -> VerifiedSet:
    with _registry_lock:
        return _registry[real][2][2]


def _decoded(real: str) -> DecodedCache:
    with _registry_lock:
        return _registry[real][2][3]


def _info(txn, dbs: dict, cid: bytes) -> BlockInfo | None:
    v = txn.get(cid, db=dbs["blocks"])
    if v is not None:
        return BlockInfo(len(v), len(v), "raw")
    p = txn.get(cid, db=dbs["packed"])
    if p is None:
        return None
    h = encodings.header(p)
    return BlockInfo(len(p), h.raw_len, h.name, h.base, h.depth, h.elem)


def _dependents(txn, dbs: dict, base: bytes) -> list:
    out = []
    with txn.cursor(db=dbs["packbase"]) as cur:
        if cur.set_range(base):
            for k in cur.iternext(keys=True, values=False):
                if k[:len(base)] != base:
                    break
                out.append(bytes(k[len(base):]))
    return out


class WriteTxn:
    """One LMDB write transaction: blocks, refs, reflog, pins and meta change together
    or not at all. Obtained from :meth:`LMDBStore.write`."""

    def __init__(self, store: "LMDBStore", txn: lmdb.Transaction):
        self.store = store
        self.txn = txn
        self.db = store.dbs
        self.new_bytes = 0
        self.new_blocks = 0
        self.ref_changes: list = []
        # new blocks whose bytes the caller just hashed against their CIDs (put_block's
        # ``verified``): added to the store's VerifiedSet once the transaction commits
        self.verified_new: list = []
        # disk space for the pages this transaction may add past the last used one
        self._res = store._reservation
        self._top = (store.env.info()["last_pgno"] + 1) * self._res.psize + TXN_SLACK
        self._res.ensure(self._top)

    def _grow(self, nbytes: int) -> None:
        """Reserve disk space for ``nbytes`` more bytes of values (plus their overflow
        page rounding and copied B-tree pages) before LMDB writes them; raises
        :class:`StoreFull`."""
        self._top += nbytes + 3 * self._res.psize
        if self._top > self._res.allocated:
            self._res.ensure(self._top)

    # blocks
    def put_block(self, cid: bytes, block, verified: bool = False) -> bool:
        """Store a block unless present (raw or packed); return ``True`` if it was new
        (and count it in ``new_bytes`` / ``new_blocks``). Raises :class:`StoreFull`
        when the disk is full.

        ``block`` must be bytes that hash to ``cid``: computed from them (a commit) or
        checked (:func:`tvcfs.store.verify.verify_and_put`). Their :func:`checksum` is
        recorded with them, and later reads trust bytes that match it.

        ``verified``: this process has just hashed ``block`` against ``cid`` (a fetch,
        :func:`tvcfs.store.verify.verify_many`): when the block is new, it joins the
        store's :attr:`LMDBStore.verified` set once the transaction commits, so its
        first read in this process makes no at-rest check (docs/repository.md,
        "Verified reads"). A block already stored is not marked: its bytes on disk
        are not the ones hashed."""
        self._grow(len(block))
        if self.txn.get(cid, db=self.db["packed"]) is not None:
            return False
        if self.txn.put(cid, block, overwrite=False, db=self.db["blocks"]):
            self.txn.put(cid, checksum(block), db=self.db["sums"])
            self.new_bytes += len(block)
            self.new_blocks += 1
            if verified:
                self.verified_new.append(cid)
            return True
        return False

    def record_checksum(self, cid: bytes, digest: bytes) -> bool:
        """Record ``digest`` (:func:`checksum` of the block's bytes, 8 bytes, those
        bytes just hashed against the CID) for block ``cid`` (fsck, for blocks stored
        before checksums were, or to replace a damaged record). ``False`` (nothing
        recorded) when the block is no longer held."""
        if len(digest) != SUM_BYTES:
            raise ValueError(f"a checksum is {SUM_BYTES} bytes, not {len(digest)}")
        if not self.has_block(cid):
            return False
        self._grow(64)
        self.txn.put(cid, digest, db=self.db["sums"])
        return True

    def has_block(self, cid: bytes) -> bool:
        """Whether block ``cid`` is stored (raw or packed), as seen by this transaction."""
        return (self.txn.get(cid, db=self.db["blocks"]) is not None
                or self.txn.get(cid, db=self.db["packed"]) is not None)

    def get_block(self, cid: bytes):
        """The block's bytes (a buffer, or decoded ``bytes`` when packed) or ``None``;
        unverified when raw. Raises :class:`CorruptBlock` / :class:`MissingBase` for a
        packed block that does not decode to its CID."""
        return self.store._lookup(self.txn, cid, verify=False)

    def delete_block(self, cid: bytes) -> bool:
        """Delete a block (raw or packed); ``True`` if it was there. Deltas stored
        against it are first re-encoded without it (self-contained), so no stored
        block loses its base."""
        self._grow(0)  # copied B-tree pages
        for dep in self.dependents(cid):
            self._rebase(dep)
        self.txn.delete(cid, db=self.db["sums"])
        if self.txn.delete(cid, db=self.db["blocks"]):
            return True
        v = self.txn.get(cid, db=self.db["packed"])
        if v is None:
            return False
        self._forget_base(cid, v)
        return self.txn.delete(cid, db=self.db["packed"])

    # packing (tvcfs pack; docs/repository.md "Packing")
    def dependents(self, base: bytes) -> list:
        """CIDs of the stored deltas whose base is ``base``."""
        return _dependents(self.txn, self.db, base)

    def info(self, cid: bytes) -> "BlockInfo | None":
        """How block ``cid`` is stored (:class:`BlockInfo`), or ``None``."""
        return _info(self.txn, self.db, cid)

    def _forget_base(self, cid: bytes, value) -> None:
        h = encodings.header(value)
        if h.base is not None:
            self.txn.delete(h.base + cid, db=self.db["packbase"])

    def _rebase(self, cid: bytes) -> None:
        """Re-encode the delta ``cid`` without its base (self-contained, or raw)."""
        v = self.txn.get(cid, db=self.db["packed"])
        if v is None:
            return
        h = encodings.header(v)
        data = self.store._lookup(self.txn, cid, verify=True)
        value = encodings.encode(data, h.elem, version=encodings.LOCAL_VERSION)
        if value is None:
            self.unpack_block(cid)
        else:
            self.pack_block(cid, value)

    def pack_block(self, cid: bytes, value: bytes) -> int:
        """Store block ``cid`` (held raw or packed) as packed value ``value`` (made by
        :func:`tvcfs.store.encodings.encode` from its bytes: the caller checks that it
        decodes to them). Returns the change in stored bytes (negative: saved).

        Raises ``ValueError`` when the block is not held, when ``value`` is a delta and
        ``cid`` is itself the base of stored deltas (chains must not grow behind
        their back), when its base is missing, is ``cid`` itself, or is deeper than
        the value's depth allows."""
        h = encodings.header(value)
        raw = self.txn.get(cid, db=self.db["blocks"])
        old = self.txn.get(cid, db=self.db["packed"]) if raw is None else None
        if raw is None and old is None:
            raise ValueError(f"block {cid_str(cid)} is not in the store")
        if h.base is not None:
            if h.base == cid:
                raise ValueError(f"block {cid_str(cid)} cannot be its own delta base")
            if self.dependents(cid):
                raise ValueError(f"block {cid_str(cid)} is the base of stored deltas: it may be "
                                 "packed only self-contained")
            bd = self.base_depth(h.base)
            if bd is None:
                raise ValueError(f"delta base {cid_str(h.base)} of {cid_str(cid)} is not in the store")
            if bd + 1 > h.depth:
                raise ValueError(f"delta of {cid_str(cid)} on {cid_str(h.base)} (depth {bd}) "
                                 f"claims depth {h.depth}")
        before = len(raw) if raw is not None else len(old)
        self._grow(len(value))
        if old is not None:
            self._forget_base(cid, old)
        else:
            self.txn.delete(cid, db=self.db["blocks"])
        self.txn.put(cid, value, db=self.db["packed"])
        if h.base is not None:
            self.txn.put(h.base + cid, b"", db=self.db["packbase"])
        return len(value) - before

    def unpack_block(self, cid: bytes) -> int:
        """Store packed block ``cid`` raw again (decoded and checked against its CID);
        returns the change in stored bytes (0 when it was not packed). Raises
        :class:`CorruptBlock` / :class:`MissingBase` when it does not decode."""
        v = self.txn.get(cid, db=self.db["packed"])
        if v is None:
            return 0
        data = self.store._lookup(self.txn, cid, verify=True)
        before = len(v)
        self._grow(len(data))
        self._forget_base(cid, v)
        self.txn.delete(cid, db=self.db["packed"])
        self.txn.put(cid, data, db=self.db["blocks"])
        return len(data) - before

    def base_depth(self, cid: bytes) -> int | None:
        """Delta depth of a stored block (0 raw or self-contained), ``None`` if absent."""
        if self.txn.get(cid, db=self.db["blocks"]) is not None:
            return 0
        v = self.txn.get(cid, db=self.db["packed"])
        return None if v is None else encodings.header(v).depth

    # refs
    def get_ref(self, name: str) -> bytes | None:
        """The value of ref ``name`` (a binary CID) as seen by this transaction, or ``None``."""
        v = self.txn.get(name.encode(), db=self.db["refs"])
        return bytes(v) if v is not None else None

    def set_ref(self, name: str, new: bytes | None, expected: bytes | None, *, message: str = "",
                check: bool = True) -> None:
        """Compare-and-swap ``name`` from ``expected`` to ``new`` (``None`` deletes).

        Raises :class:`RefConflict` if the current value is not ``expected`` (nothing
        is changed then; the caller decides whether to keep the transaction). Every
        change is appended to the reflog.
        """
        cur = self.get_ref(name)
        if check and cur != expected:
            raise RefConflict(name, expected, cur, new)
        key = name.encode()
        if new is None:
            self.txn.delete(key, db=self.db["refs"])
        else:
            self.txn.put(key, new, db=self.db["refs"])
        self.append_reflog(name, cur, new, message)
        self.ref_changes.append((name, cur, new))

    def append_reflog(self, name: str, old: bytes | None, new: bytes | None, message: str,
                      rejected: bool = False) -> None:
        """Append one reflog entry for ``name`` (binary CIDs or ``None``)."""
        prefix = name.encode() + b"\x00"
        seq = 0
        with self.txn.cursor(db=self.db["reflog"]) as cur:
            if cur.set_range(name.encode() + b"\x01"):
                ok = cur.prev()
            else:
                ok = cur.last()
            if ok and cur.key().startswith(prefix):
                seq = int.from_bytes(cur.key()[len(prefix):], "big") + 1
        entry = {
            "old": cid_str(old) if old else None,
            "new": cid_str(new) if new else None,
            "time": int(time.time()),
            "message": message,
        }
        if rejected:
            entry["rejected"] = True
        self.txn.put(prefix + seq.to_bytes(8, "big"), json.dumps(entry).encode(), db=self.db["reflog"])

    def set_symref(self, name: str, target: str) -> None:
        """Set a symbolic ref (``HEAD`` → ``refs/heads/main``)."""
        self.txn.put(name.encode(), b"ref: " + target.encode(), db=self.db["refs"])

    # pins / meta
    def pin(self, cid: bytes, name: str = "") -> None:
        """Pin ``cid`` (kept by gc) with label ``name`` and the time now (seconds since the
        epoch)."""
        self.txn.put(cid, json.dumps({"name": name, "time": int(time.time())}).encode(), db=self.db["pins"])

    def unpin(self, cid: bytes) -> bool:
        """Unpin ``cid``; ``True`` if it was pinned."""
        return self.txn.delete(cid, db=self.db["pins"])

    def set_meta(self, key: str, value) -> None:
        """Set metadata ``key`` to the JSON-serialisable ``value`` (``None`` deletes it)."""
        if value is None:
            self.txn.delete(key.encode(), db=self.db["meta"])
        else:
            self.txn.put(key.encode(), json.dumps(value).encode(), db=self.db["meta"])

    def get_meta(self, key: str, default=None):
        """Metadata ``key`` (decoded JSON) as seen by this transaction, or ``default``."""
        v = self.txn.get(key.encode(), db=self.db["meta"])
        return json.loads(bytes(v)) if v is not None else default


class LMDBView:
    """A read snapshot of the store (one LMDB read transaction): ``get(cid)`` gives a
    zero-copy, read-only buffer into the map (a hot block), decoded ``bytes`` (a packed
    block), or ``None``; ``block(cid)`` the same but raises :class:`BlockNotFound`;
    ``has(cid)``. Buffers are valid until :meth:`close`. With ``verify`` every raw
    buffer is checked first (:meth:`LMDBStore.check`: once per CID per process); a
    decoded block is checked on every decode whatever ``verify`` says. Obtained from
    :meth:`LMDBStore.view` (a ``with`` block) or :meth:`LMDBStore.snapshot` (closed by
    the caller, e.g. renewed every second by the mount's reader)."""

    __slots__ = ("store", "txn", "db", "packed", "verify")

    def __init__(self, store: "LMDBStore", verify: bool = True):
        self.store, self.db, self.verify = store, store.dbs["blocks"], verify
        self.packed = store.dbs["packed"]
        self.txn = store.env.begin(buffers=True)

    def get(self, cid: bytes):
        """Block ``cid``: a zero-copy read-only buffer (raw; checked with
        :meth:`LMDBStore.check` when ``verify``), decoded ``bytes`` (packed) or ``None``.
        Raises :class:`CorruptBlock` for a block that does not match its CID."""
        v = self.txn.get(cid, db=self.db)
        if v is None:
            p = self.txn.get(cid, db=self.packed)
            return None if p is None else self.store._unpack(self.txn, cid, p)
        if self.verify:
            self.store.check(cid, v, self.txn)
        return v

    def block(self, cid: bytes):
        """As :meth:`get`, but raises :class:`BlockNotFound` for a block not held."""
        v = self.get(cid)
        if v is None:
            raise BlockNotFound(cid)
        return v

    def has(self, cid: bytes) -> bool:
        """Whether block ``cid`` is stored (raw or packed) in this snapshot."""
        return (self.txn.get(cid, db=self.db) is not None
                or self.txn.get(cid, db=self.packed) is not None)

    def is_packed(self, cid: bytes) -> bool:
        """True if the block is stored packed (reads decode it)."""
        return self.txn.get(cid, db=self.packed) is not None

    def recorded_checksum(self, cid: bytes) -> bytes | None:
        """The :func:`checksum` recorded when block ``cid`` was stored (8 bytes), or
        ``None`` (stored by code older than checksums, or not held)."""
        return self.store._recorded(self.txn, cid)

    def info(self, cid: bytes) -> BlockInfo | None:
        """How block ``cid`` is stored (:class:`BlockInfo`), or ``None`` if it is not.
        Raises :class:`CorruptBlock` for a packed value with a bad header."""
        return _info(self.txn, self.store.dbs, cid)

    def dependents(self, base: bytes) -> list:
        """CIDs of the stored deltas whose base is ``base``."""
        return _dependents(self.txn, self.store.dbs, base)

    def items(self):
        """Every ``(cid, block bytes)`` stored, raw blocks first then packed ones
        (decoded: raises :class:`CorruptBlock` for a damaged one), each group in key
        order; raw buffers *unverified*."""
        for cid, v, packed in self.stored():
            yield cid, (self.store._unpack(self.txn, cid, v) if packed else v)

    def stored(self):
        """Every ``(cid, stored value, packed)`` — the bytes as they sit on disk, raw
        blocks then packed values, unverified and not decoded (for fsck and the garbage
        collector's sweep)."""
        for db, packed in ((self.db, False), (self.packed, True)):
            with self.txn.cursor(db=db) as cur:
                for k, v in cur.iternext():
                    yield bytes(k), v, packed

    def decode(self, cid: bytes, value, fresh: bool = False) -> bytes:
        """The block bytes of packed value ``value`` of ``cid`` (bases read from this
        snapshot), checked against the CID; ``fresh``: decoded and hashed now even if
        cached (fsck). Raises :class:`CorruptBlock`, :class:`MissingBase`."""
        return self.store._unpack(self.txn, cid, value, fresh=fresh)

    def close(self) -> None:
        """End the snapshot (abort its read transaction); its buffers are invalid after."""
        self.txn.abort()


class LMDBStore:
    """The LMDB environment of a repository at ``path`` (a directory).

    Implements :class:`tvcfs.store.BlockStore` plus refs, reflog, pins and meta.
    Thread-safe: LMDB allows one writer and many readers across threads and processes.
    Raises :class:`StoreFull` when the map or the disk fills (the failed transaction
    is aborted; nothing already committed is lost).
    """

    capabilities = frozenset({ZERO_COPY, MAP_OFFSETS, PERSISTENT, TRANSACTIONS})

    def __init__(self, path: str, map_size: int = DEFAULT_MAP_SIZE):
        self.path = path
        self._real, self.env, self.dbs = _open_env(path, map_size)
        self._reservation = _reservation(self._real)
        # blocks of this environment already checked against their CIDs in this
        # process (shared by its LMDBStore objects); see block()
        self.verified = _verified(self._real)
        self.decoded = _decoded(self._real)
        self.verify_reads = True
        # "cid": hash every block against its CID (config verify.reads); else trust
        # bytes matching the checksum recorded when they were stored
        try:
            self.verify_cid = self.get_meta("verify.reads") == "cid"
        except ValueError:  # a damaged record: the safer mode; RepoConfig.get names it
            self.verify_cid = True
        self._closed = False
        self.blocks_read = 0  # count of block gets (for tests of lazy behaviour)
        # stored blocks hashed on a read (checksum or CID) since open: a block is hashed
        # once per process, and not at all after a fetch marked it verified
        # (.tvcfs/stats "read_checks"; approximate under threads)
        self.read_checks = 0
        self._advise_fd = -1
        self._data_fd_lock = threading.Lock()
        self._map_span: tuple | None = None  # map_range(), read once (see _file_offset)
        self._ahead: collections.deque = collections.deque(maxlen=8)  # (lo, hi) advised
        self.advised_bytes = 0  # bytes _read_ahead advised (for tests: each once)
        self._psize = self.env.stat()["psize"]

    def map_range(self) -> tuple[int, int] | None:
        """``(start, end)`` addresses of this process's mapping of ``data.mdb``, read
        from ``/proc/self/maps`` (py-lmdb's ``env.info()["map_addr"]`` is 0), or
        ``None`` if not found. A zero-copy value's file offset is its address minus
        ``start``."""
        real = os.path.join(self._real, "data.mdb")
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split(None, 5)
                    if len(parts) == 6 and parts[5].rstrip("\n") == real:
                        lo, hi = parts[0].split("-")
                        return int(lo, 16), int(hi, 16)
        except (OSError, ValueError):
            pass
        return None

    def close(self) -> None:
        """Close the LMDB environment (once; later calls do nothing)."""
        if not self._closed:
            self._closed = True
            if self._advise_fd >= 0:
                os.close(self._advise_fd)
                self._advise_fd = -1
            _close_env(self._real)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # transactions
    @contextmanager
    def write(self, sync: bool = True):
        """A write transaction as a :class:`WriteTxn`; committed (and synced to disk
        when ``sync``) when the block exits normally, aborted on an exception."""
        txn = self.env.begin(write=True)
        try:
            w = WriteTxn(self, txn)
        except BaseException:
            txn.abort()
            raise
        try:
            yield w
        except BaseException as e:
            txn.abort()
            if isinstance(e, (lmdb.MapFullError, lmdb.DiskError)):
                raise StoreFull(f"repository store is full: {e}") from None
            raise
        try:
            txn.commit()
        except (lmdb.MapFullError, lmdb.DiskError) as e:
            raise StoreFull(f"repository store is full: {e}") from None
        for cid in w.verified_new:
            self.verified.add(cid)
        if sync:
            self.env.sync(True)

    @contextmanager
    def read(self):
        """A read transaction with zero-copy buffers: values are memoryviews valid only
        inside the ``with`` block."""
        txn = self.env.begin(buffers=True)
        try:
            yield txn
        finally:
            txn.abort()

    @contextmanager
    def view(self, verify: bool = True):
        """A zero-copy :class:`LMDBView` (a :class:`~tvcfs.store.base.BlockView`) for
        the ``with`` block; ``verify=False`` skips the CID check (fsck, gc)."""
        v = LMDBView(self, verify)
        try:
            yield v
        finally:
            v.close()

    def snapshot(self, verify: bool = True) -> LMDBView:
        """An :class:`LMDBView` the caller closes (long-lived readers)."""
        return LMDBView(self, verify)

    # map offsets: what readahead above the store may use (capability MAP_OFFSETS)
    VALUE_HEADER = 16  # bytes: an LMDB overflow value starts this far into its first page

    @property
    def page_size(self) -> int:
        """Bytes per LMDB page (values over ~2 KiB take whole overflow pages)."""
        return self._psize

    @property
    def map_size(self) -> int:
        """Bytes of address space the map reserves."""
        return self.env.info()["map_size"]

    def value_span(self, size: int) -> int:
        """Bytes of ``data.mdb`` an overflow value of ``size`` bytes occupies (LMDB
        lays a commit's leaves out one after another, each rounded up to pages)."""
        page = self._psize
        return (size + self.VALUE_HEADER + page - 1) // page * page

    def advise(self, offset: int, length: int) -> None:
        """``posix_fadvise(WILLNEED)`` bytes ``[offset, offset+length)`` of ``data.mdb``:
        the kernel reads them asynchronously. A hint: errors are ignored."""
        try:
            os.posix_fadvise(self._data_fd(), offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass

    def _read_ahead(self, buf) -> None:
        """``buf`` (a zero-copy value: a packed value or a delta's base) was just read:
        advise (:meth:`advise`) the :data:`PACKED_AHEAD` bytes of ``data.mdb`` after
        it, unless a recent call covered them, and ``buf`` itself when no earlier
        advice covered it. ``tvcfs pack`` writes a commit's values
        in file order, and a base file's leaves (raw or packed) lie in order too, so
        the next leaves' values are there: without this, each is read by synchronous
        page faults, ``read_ahead_kb`` at a time (one disk round trip per 128 KiB, and
        under load a wait for the CPU after each). Nothing for other buffers."""
        off = self._file_offset(buf)
        if off is None:
            return
        end = off + len(buf)
        stop = end + PACKED_AHEAD
        with self._data_fd_lock:
            # a value no advised run covers (the first of a read) is advised itself too:
            # its decode touches it next, and would otherwise read it by page faults,
            # one 4 KiB disk read each while the map is MADV_RANDOM (docs/performance.md
            # "Packed blocks", eighth round)
            start = off
            for k, (lo, hi) in enumerate(self._ahead):
                if lo <= end <= hi:  # a run already advised up to hi: continue it
                    if end + PACKED_AHEAD // 2 <= hi:
                        return
                    start = hi  # only the bytes not advised yet (each advice walks its pages)
                    del self._ahead[k]
                    break
            self._ahead.append((end, stop))
            self.advised_bytes += stop - start
        for o in range(start, stop, ADVISE_PIECE):
            self.advise(o, min(ADVISE_PIECE, stop - o))

    def file_span(self, buf) -> tuple[int, int] | None:
        """Where the bytes of ``buf`` (what a view's ``get`` returned) sit in
        ``data.mdb``: ``(fd, offset)``, a read-only descriptor of the file (owned by the
        store: do not close it) and the byte offset of ``buf[0]``, or ``None`` for a
        buffer that is not in the map (a decoded packed block, a copy). For
        ``os.sendfile``: the bytes at that offset are ``buf``'s only while the read
        snapshot ``buf`` came from stays open (LMDB reuses freed pages once no reader
        needs them). Raises ``OSError`` when ``data.mdb`` cannot be opened."""
        off = self._file_offset(buf)
        return None if off is None else (self._data_fd(), off)

    def _file_offset(self, buf) -> int | None:
        """The byte offset of ``buf[0]`` in ``data.mdb``, or ``None`` for a buffer that
        is not wholly in the map. The map's address range is read once
        (:meth:`map_range`) and again only when a buffer falls outside it."""
        if not is_map_buffer(buf):
            return None
        a = buffer_address(buf)
        span = self._map_span
        if span is None or not span[0] <= a < span[1]:
            span = self._map_span = self.map_range() or (0, 0)  # the map moved (or first use)
        if not (span[0] <= a and a + len(buf) <= span[1]):
            return None
        return a - span[0]

    def _data_fd(self) -> int:
        """A read-only descriptor of ``data.mdb`` (for :meth:`advise`), opened on
        first use by whichever thread needs it first, closed with the store. Raises
        ``OSError``."""
        if self._advise_fd < 0:
            with self._data_fd_lock:
                if self._advise_fd < 0:
                    self._advise_fd = os.open(os.path.join(self._real, "data.mdb"), os.O_RDONLY | os.O_CLOEXEC)
        return self._advise_fd

    def random_access(self, on: bool) -> None:
        """``MADV_RANDOM`` on the whole map (page faults read exactly the pages
        touched) or back to ``MADV_NORMAL`` (faults read around). A hint."""
        r = self.map_range()
        if r:
            madvise(r[0], self.map_size, MADV_RANDOM if on else MADV_NORMAL)

    def touch_index(self, stop) -> None:
        """Read every B-tree page of every sub-database once (keys only, no values), so
        a later ``get`` misses only on the value it reads; ``stop()`` returning true
        ends it early. Errors (the environment closing) end it silently."""
        try:
            with self.env.begin(buffers=True) as txn:
                for db in self.dbs.values():
                    with txn.cursor(db=db) as cur:
                        for n, _ in enumerate(cur.iternext(keys=True, values=False)):
                            if n & 1023 == 0 and stop():
                                return
        except lmdb.Error:
            pass

    # verified reads
    def check(self, cid: bytes, data, txn=None, recorded: bytes | None = None) -> None:
        """Check stored bytes ``data`` (bytes-like) of block ``cid``, once per CID per
        process (see :class:`VerifiedSet`): against the :func:`checksum` recorded when
        it was stored (xxh3-64, ~20 GB/s per core), or, when none is recorded or
        :attr:`verify_cid` is set, against the CID (sha-256, ~1.7 GB/s per core). Both
        release the GIL for large buffers, so threads may call this in parallel.
        ``txn``: the read or write transaction ``data`` came from (else a short read
        transaction looks the checksum up). ``recorded``: the checksum the caller
        already read from that transaction (:meth:`LMDBView.recorded_checksum`, e.g.
        before paging the block in), so the check makes no LMDB call. Nothing when
        :attr:`verify_reads` is off. Raises :class:`CorruptBlock` naming the CID and
        the store."""
        if not self.verify_reads or cid in self.verified:
            return
        self._check(cid, data, txn, recorded=recorded)

    def _check(self, cid: bytes, data, txn, always: bool = False, what: str = "", strict: bool = False,
               recorded: bytes | None = None) -> None:
        """:meth:`check` whatever :attr:`verify_reads` says; ``always``: whatever the
        cache says too (bytes decoded afresh); ``strict``: against the CID whatever
        is recorded (fsck); ``what`` replaces "does" in the error (``"is packed and
        decodes to bytes that do"``); ``recorded``: see :meth:`check`."""
        self.read_checks += 1
        want = None if strict or self.verify_cid else (recorded or self._recorded(txn, cid))
        if want is not None:
            if checksum(data) != want:
                raise CorruptBlock(f"stored block {cid_str(cid)} {what or 'does'} not match the checksum "
                                   f"recorded when it was stored ({len(data)} bytes): the store "
                                   f"{self.path} is damaged (tvcfs fsck lists the damaged blocks)")
            self.verified.add(cid)
            return
        try:
            self.verified.check(cid, data, always=always)
        except CorruptBlock:
            raise CorruptBlock(f"stored block {cid_str(cid)} {what or 'does'} not hash to its CID "
                               f"({len(data)} bytes): the store {self.path} is damaged "
                               "(tvcfs fsck lists the damaged blocks)") from None

    def has_checksum(self, cid: bytes, txn=None) -> bool:
        """Whether an at-rest :func:`checksum` is recorded for block ``cid`` (so that
        :meth:`check` costs an xxh3, not a sha-256); ``txn``: a read transaction to
        look in (else a short one)."""
        return self._recorded(txn, cid) is not None

    def _recorded(self, txn, cid: bytes) -> bytes | None:
        """The checksum recorded for ``cid`` in ``txn`` (or a fresh read transaction)."""
        if txn is None:
            with self.env.begin(buffers=True) as t:
                return self._recorded(t, cid)
        v = txn.get(cid, db=self.dbs["sums"])
        return None if v is None or len(v) < SUM_BYTES else bytes(v[:SUM_BYTES])

    # packed blocks
    def _lookup(self, txn, cid: bytes, verify: bool = True):
        """Block ``cid`` in read or write transaction ``txn``: a raw buffer (checked
        when ``verify``), decoded ``bytes``, or ``None``."""
        v = txn.get(cid, db=self.dbs["blocks"])
        if v is not None:
            if verify:
                self.check(cid, v, txn)
            return v
        p = txn.get(cid, db=self.dbs["packed"])
        return None if p is None else self._unpack(txn, cid, p)

    def _unpack(self, txn, cid: bytes, value, fresh: bool = False) -> bytes:
        """The bytes of packed ``value`` of block ``cid`` (bases from ``txn``): from the
        decoded cache, else decoded (one thread per block at a time: others wait for
        its result), checked (:meth:`check`: its recorded checksum, else its CID)
        unless :attr:`verify_reads` is off, and cached. ``fresh``: decoded and hashed
        against the CID now whatever the cache and the checksums hold (fsck).
        Raises :class:`CorruptBlock` naming the CID, :class:`MissingBase`."""
        if fresh:
            return self._decode(txn, cid, value, check=True, strict=True)
        hit = self.decoded.get(cid)
        if hit is not None:
            return hit
        ev = self.decoded.claim(cid)
        if ev is not None:  # another thread is decoding it
            ev.wait(10)
            hit = self.decoded.get(cid)
            return hit if hit is not None else self._decode(txn, cid, value, self.verify_reads)
        try:
            data = self._decode(txn, cid, value, self.verify_reads)
            self.decoded.put(cid, data)
            return data
        finally:
            self.decoded.release(cid)

    def _decode(self, txn, cid: bytes, value, check: bool, depth: int = 0, strict: bool = False,
                out=None, chain: int = encodings.MAX_DEPTH):
        """Decode packed ``value`` of ``cid``; with ``check`` compare the result with
        its recorded checksum (with ``strict``, or none recorded: hash it against the
        CID). Bases met on the way are decoded unchecked (the final check covers them;
        only when it fails are they checked, to name the damaged one), each into a
        per-thread scratch buffer (:func:`encodings.scratch`, one slot per depth: a
        base is read once per file, so it is not cached). Returns a read-only
        ``memoryview`` of a new ``uint8`` array (no ``bytes`` copy: the mount serves
        slices of it), or fills ``out`` and returns it. When the decode fails or its
        result does not check, the bases are checked (at most ``chain`` of them: a
        cycle of damaged values ends) so that the error names the damaged block."""
        bcid = bplanes = None
        self._read_ahead(value)
        try:
            with self._naming(cid):
                h = encodings.header(value)
                base = None
                if h.base is not None:
                    if depth >= encodings.MAX_DEPTH:
                        raise CorruptBlock(f"its delta chain is longer than {encodings.MAX_DEPTH}")
                    bcid = h.base
                    base = txn.get(bcid, db=self.dbs["blocks"])
                    if base is not None:
                        self._read_ahead(base)
                    else:
                        bv = txn.get(bcid, db=self.dbs["packed"])
                        if bv is None:
                            raise MissingBase(cid, bcid, self.path)
                        base = self.decoded.get(bcid)
                        if base is None:
                            with self._naming(bcid):
                                bh = encodings.header(bv)
                            if h.elem == bh.elem > 1:  # XOR on the planes: one un-grouping
                                bplanes = self._planes(txn, bcid, bv, bh, depth + 1)
                            if bplanes is None:
                                base = self._decode(txn, bcid, bv, False, depth + 1,
                                                    out=encodings.scratch(bh.raw_len, depth + 1))
                if out is None:
                    out = self.decoded.buffer(h.raw_len)
                # bplanes is this thread's scratch: the delta's planes are decoded into it in place
                encodings.decode_into(value, out, base, h, base_planes=bplanes, spend_base=True)
        except MissingBase:
            raise
        except CorruptBlock:
            if not depth and bcid is not None and chain:  # a damaged base? name it, not the delta
                self._check_chain(txn, bcid, strict, chain - 1)
            raise
        if depth:
            return out
        data = memoryview(out).toreadonly()
        if check:
            try:
                self._check(cid, data, txn, always=True, strict=strict,
                            what="is packed and decodes to bytes that do")
            except CorruptBlock:
                if bcid is not None and chain:  # name the damaged block: the delta or a base
                    self._check_chain(txn, bcid, strict, chain - 1)
                raise
        return data

    def _planes(self, txn, cid: bytes, value, h, depth: int):
        """The bytes of packed block ``cid`` (``value``, header ``h``) grouped by its
        element size (:func:`encodings.planes_into`), in the per-thread scratch slot
        ``depth``, unchecked; ``None`` when its chain reaches a raw base or changes
        element size (grouping those would cost what it saves: decode instead)."""
        with self._naming(cid):
            if depth > encodings.MAX_DEPTH:
                raise CorruptBlock(f"its delta chain is longer than {encodings.MAX_DEPTH}")
        self._read_ahead(value)
        bplanes = None
        if h.base is not None:
            if txn.get(h.base, db=self.dbs["blocks"]) is not None:
                return None
            bv = txn.get(h.base, db=self.dbs["packed"])
            if bv is None:
                raise MissingBase(cid, h.base, self.path)
            with self._naming(h.base):
                bh = encodings.header(bv)
            if bh.elem != h.elem:
                return None
            bplanes = self._planes(txn, h.base, bv, bh, depth + 1)
            if bplanes is None:
                return None
        # on its base's planes in place (a scratch of the depth below, not needed after)
        out = encodings.scratch(h.raw_len, depth) if bplanes is None else bplanes
        with self._naming(cid):
            encodings.planes_into(value, out, bplanes, h)
        return out

    @contextmanager
    def _naming(self, cid: bytes):
        """Re-raise a :class:`CorruptBlock` of decoding packed block ``cid`` as one
        naming it and the store (unless it names a block already: a base's error, a
        :class:`MissingBase`), so that a damaged base met while decoding a delta is
        reported as itself, not as the delta."""
        try:
            yield
        except MissingBase:
            raise
        except CorruptBlock as e:
            if str(e).startswith("stored block"):
                raise
            raise CorruptBlock(f"stored block {cid_str(cid)} is packed and does not decode ({e}): "
                               f"the store {self.path} is damaged (tvcfs fsck lists the damaged "
                               "blocks)") from None

    def _check_chain(self, txn, cid: bytes, strict: bool = False, chain: int = encodings.MAX_DEPTH) -> None:
        """Check base ``cid`` (and up to ``chain`` of its bases; against the CID when
        ``strict``); raises :class:`CorruptBlock` naming the first that is damaged."""
        v = txn.get(cid, db=self.dbs["blocks"])
        if v is None:
            self._decode(txn, cid, txn.get(cid, db=self.dbs["packed"]), check=True, strict=strict, chain=chain)
        else:
            self._check(cid, v, txn, always=strict, strict=strict)

    def info(self, cid: bytes) -> BlockInfo | None:
        """How block ``cid`` is stored (:meth:`LMDBView.info`)."""
        with self.view(verify=False) as v:
            return v.info(cid)

    # BlockStore protocol
    def get(self, cid: bytes) -> bytes | None:
        """The block's bytes (a copy, checked by :meth:`check`), or ``None``. Raises
        :class:`CorruptBlock`."""
        self.blocks_read += 1
        blocks = LMDBView(self)
        try:
            v = blocks.get(cid)
            return bytes(v) if v is not None else None
        finally:
            blocks.close()

    def get_many(self, cids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes | None]]:
        """``(cid, bytes | None)`` in input order, each checked. Raises :class:`CorruptBlock`."""
        with self.env.begin(buffers=True) as txn:
            for cid in cids:
                self.blocks_read += 1
                v = self._lookup(txn, cid)
                yield cid, (bytes(v) if v is not None else None)

    def has(self, cid: bytes) -> bool:
        """Whether block ``cid`` is stored, raw or packed."""
        with self.env.begin(buffers=True) as txn:
            return (txn.get(cid, db=self.dbs["blocks"]) is not None
                    or txn.get(cid, db=self.dbs["packed"]) is not None)

    def put(self, cid: bytes, block) -> bool:
        """Store ``block`` under ``cid`` in a write transaction of its own; ``True`` if it was
        new. Raises :class:`StoreFull` when the map or the disk is full."""
        with self.write() as w:
            return w.put_block(cid, block)

    def put_many(self, blocks: Iterable[tuple[bytes, bytes]], sync: bool = True,
                 verified: bool = False) -> int:
        """Store blocks in one transaction; return how many were new. ``sync=False``
        skips the msync (call :meth:`sync` once after a batch of batches);
        ``verified``: this process has just hashed every block against its CID (see
        :meth:`WriteTxn.put_block`)."""
        with self.write(sync=sync) as w:
            n = 0
            for cid, block in blocks:
                n += w.put_block(cid, block, verified)
            return n

    def sync(self) -> None:
        """Flush written transactions to disk (durable when it returns)."""
        self.env.sync(True)

    def delete(self, cid: bytes) -> bool:
        """Delete block ``cid`` (raw or packed, see :meth:`WriteTxn.delete_block`); ``True`` if
        it was there."""
        with self.write() as w:
            return w.delete_block(cid)

    def __iter__(self) -> Iterator[bytes]:
        """Every CID held, raw blocks then packed ones."""
        with self.env.begin() as txn:
            for db in (self.dbs["blocks"], self.dbs["packed"]):
                with txn.cursor(db=db) as cur:
                    for key in cur.iternext(keys=True, values=False):
                        yield bytes(key)

    def stat(self) -> dict:
        """``{"blocks": count (raw and packed), "packed": count of packed blocks,
        "bytes": approximate stored bytes on disk}``."""
        with self.env.begin() as txn:
            raw = txn.stat(self.dbs["blocks"])["entries"]
            packed = txn.stat(self.dbs["packed"])["entries"]
        info = self.env.info()
        return {"blocks": raw + packed, "packed": packed,
                "bytes": info["last_pgno"] * self.env.stat()["psize"]}

    def get_meta(self, key: str, default=None):
        """Metadata ``key`` (decoded JSON), or ``default``."""
        with self.env.begin() as txn:
            v = txn.get(key.encode(), db=self.dbs["meta"])
            return json.loads(v) if v is not None else default
