"""The embedded block store: one LMDB environment per repository (docs/repository.md).

Named sub-databases:

``blocks``  binary CID → block bytes
``refs``    ``refs/heads/NAME``, ``refs/tags/NAME`` → binary CID; ``HEAD`` → ``ref: refs/heads/NAME``
``reflog``  ``REF \\0 seq(8 bytes BE)`` → JSON ``{old, new, time, message, rejected}``
``pins``    binary CID → JSON ``{name, time}``
``meta``    str keys → JSON values (format version, remotes, config)

The environment is opened with ``writemap=True, map_async=True`` and synced once per
write transaction (``env.sync(True)``): 1 GiB puts at ~2.5 GB/s instead of 0.4, durable
when :meth:`LMDBStore.write` returns. A killed process leaves the last committed
transaction intact (LMDB's copy-on-write B+tree). Reads use zero-copy buffers inside
a read transaction (:meth:`LMDBStore.read`).

Every block read for its bytes goes through :meth:`LMDBStore.check` (or
:meth:`LMDBStore.get`, a copy of it), which checks it against its CID the first time
this process reads it (a bounded per-environment :class:`VerifiedSet`): a disk or
file-system fault that changed a stored block is an error naming the CID, never
wrong bytes. ``LMDBStore.verify_reads = False`` (``--no-verify``) skips the check.

Disk space is reserved before it is written. With ``writemap`` LMDB writes new pages
straight into the map of a sparse ``data.mdb``; on a full file system the kernel
cannot allocate a block for such a page and kills the process with ``SIGBUS`` (no
error, no message). So every write transaction first allocates the file range its
new pages can land in (``posix_fallocate`` past the last used page, ahead of the
bytes it puts, in growing steps): a full disk then raises :class:`StoreFull` before
any page is touched, the transaction is aborted and nothing committed is lost.

LMDB must not be opened twice in one process: environments are shared through a
per-process registry keyed by real path.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

import lmdb

from ..encoding.cid import VerifiedSet, cid_str
from ..errors import BlockNotFound, CorruptBlock, RefConflict, TvcfsError
from .base import MAP_OFFSETS, PERSISTENT, TRANSACTIONS, ZERO_COPY

DEFAULT_MAP_SIZE = 1 << 40  # bytes of address space (sparse); 1 TiB
_DBS = (b"blocks", b"refs", b"reflog", b"pins", b"meta")

_registry: dict[str, tuple[lmdb.Environment, dict, list]] = {}
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
        env = lmdb.open(real, map_size=map_size, max_dbs=len(_DBS) + 2, writemap=True,
                        map_async=True, max_readers=512, readahead=True)
        reservation = _Reservation(os.path.join(real, "data.mdb"), env.stat()["psize"])
        try:
            # open_db writes the sub-databases' records on a fresh environment
            reservation.ensure((env.info()["last_pgno"] + 1) * reservation.psize + TXN_SLACK)
            dbs = {name.decode(): env.open_db(name) for name in _DBS}
        except BaseException:
            reservation.close()
            env.close()
            raise
        _registry[real] = (env, dbs, [1, reservation, VerifiedSet()])
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
    def put_block(self, cid: bytes, block) -> bool:
        """Store a block unless present; return ``True`` if it was new (and count it in
        ``new_bytes`` / ``new_blocks``). Raises :class:`StoreFull` when the disk is full."""
        self._grow(len(block))
        if self.txn.put(cid, block, overwrite=False, db=self.db["blocks"]):
            self.new_bytes += len(block)
            self.new_blocks += 1
            return True
        return False

    def has_block(self, cid: bytes) -> bool:
        return self.txn.get(cid, db=self.db["blocks"]) is not None

    def get_block(self, cid: bytes):
        return self.txn.get(cid, db=self.db["blocks"])

    def delete_block(self, cid: bytes) -> bool:
        self._grow(0)  # copied B-tree pages
        return self.txn.delete(cid, db=self.db["blocks"])

    # refs
    def get_ref(self, name: str) -> bytes | None:
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
        self.txn.put(cid, json.dumps({"name": name, "time": int(time.time())}).encode(), db=self.db["pins"])

    def unpin(self, cid: bytes) -> bool:
        return self.txn.delete(cid, db=self.db["pins"])

    def set_meta(self, key: str, value) -> None:
        if value is None:
            self.txn.delete(key.encode(), db=self.db["meta"])
        else:
            self.txn.put(key.encode(), json.dumps(value).encode(), db=self.db["meta"])

    def get_meta(self, key: str, default=None):
        v = self.txn.get(key.encode(), db=self.db["meta"])
        return json.loads(bytes(v)) if v is not None else default


class LMDBView:
    """A read snapshot of the store (one LMDB read transaction): ``get(cid)`` gives a
    zero-copy, read-only buffer into the map or ``None``; ``block(cid)`` the same but
    raises :class:`BlockNotFound`; ``has(cid)``. Buffers are valid until
    :meth:`close`. With ``verify`` every buffer is checked first
    (:meth:`LMDBStore.check`: once per CID per process). Obtained from
    :meth:`LMDBStore.view` (a ``with`` block) or :meth:`LMDBStore.snapshot` (closed by
    the caller, e.g. renewed every second by the mount's reader)."""

    __slots__ = ("store", "txn", "db", "verify")

    def __init__(self, store: "LMDBStore", verify: bool = True):
        self.store, self.db, self.verify = store, store.dbs["blocks"], verify
        self.txn = store.env.begin(buffers=True)

    def get(self, cid: bytes):
        v = self.txn.get(cid, db=self.db)
        if v is not None and self.verify:
            self.store.check(cid, v)
        return v

    def block(self, cid: bytes):
        v = self.txn.get(cid, db=self.db)
        if v is None:
            raise BlockNotFound(cid)
        if self.verify:
            self.store.check(cid, v)
        return v

    def has(self, cid: bytes) -> bool:
        return self.txn.get(cid, db=self.db) is not None

    def items(self):
        """Every ``(cid, buffer)`` stored, in key order, *unverified* (for fsck and the
        garbage collector's sweep)."""
        with self.txn.cursor(db=self.db) as cur:
            for k, v in cur.iternext():
                yield bytes(k), v

    def close(self) -> None:
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
        self.verify_reads = True
        self._closed = False
        self.blocks_read = 0  # count of block gets (for tests of lazy behaviour)
        self._advise_fd = -1
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
        fd = self._advise_fd
        if fd < 0:
            try:
                fd = self._advise_fd = os.open(os.path.join(self._real, "data.mdb"), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass

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
    def check(self, cid: bytes, data) -> None:
        """Check stored bytes ``data`` (bytes-like) of block ``cid`` against the CID,
        once per CID per process (see :class:`VerifiedSet`; sha-256 at ~1.5 GB/s per
        core, the GIL released, so threads may call this in parallel). Nothing when
        :attr:`verify_reads` is off. Raises :class:`CorruptBlock` naming the CID and
        the store."""
        if not self.verify_reads or cid in self.verified:
            return
        try:
            self.verified.check(cid, data)
        except CorruptBlock:
            raise CorruptBlock(f"stored block {cid_str(cid)} does not hash to its CID "
                               f"({len(data)} bytes): the store {self.path} is damaged "
                               "(tvcfs fsck lists the damaged blocks)") from None

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
            db = self.dbs["blocks"]
            for cid in cids:
                self.blocks_read += 1
                v = txn.get(cid, db=db)
                if v is not None:
                    self.check(cid, v)
                yield cid, (bytes(v) if v is not None else None)

    def has(self, cid: bytes) -> bool:
        with self.env.begin(buffers=True) as txn:
            return txn.get(cid, db=self.dbs["blocks"]) is not None

    def put(self, cid: bytes, block) -> bool:
        with self.write() as w:
            return w.put_block(cid, block)

    def put_many(self, blocks: Iterable[tuple[bytes, bytes]], sync: bool = True) -> int:
        """Store blocks in one transaction; return how many were new. ``sync=False``
        skips the msync (call :meth:`sync` once after a batch of batches)."""
        with self.write(sync=sync) as w:
            n = 0
            for cid, block in blocks:
                n += w.put_block(cid, block)
            return n

    def sync(self) -> None:
        """Flush written transactions to disk (durable when it returns)."""
        self.env.sync(True)

    def delete(self, cid: bytes) -> bool:
        with self.write() as w:
            return w.delete_block(cid)

    def __iter__(self) -> Iterator[bytes]:
        with self.env.begin() as txn:
            with txn.cursor(db=self.dbs["blocks"]) as cur:
                for key in cur.iternext(keys=True, values=False):
                    yield bytes(key)

    def stat(self) -> dict:
        """``{"blocks": count, "bytes": approximate stored bytes on disk}``."""
        with self.env.begin() as txn:
            st = txn.stat(self.dbs["blocks"])
        info = self.env.info()
        return {"blocks": st["entries"], "bytes": info["last_pgno"] * self.env.stat()["psize"]}

    def get_meta(self, key: str, default=None):
        with self.env.begin() as txn:
            v = txn.get(key.encode(), db=self.dbs["meta"])
            return json.loads(v) if v is not None else default
