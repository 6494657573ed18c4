"""Read access to a safetensors file stored as a UnixFS DAG, tensor by tensor.

Used by :mod:`tvcfs.diff` and the repository merge. Only the header leaves are read
to open a file; tensor identity comes from leaf CIDs (the chunker starts a leaf at
every tensor, docs/format.md), tensor data is read only on request.

Tensor data is streamed leaf by leaf: :func:`data_reader` opens one LMDB read
transaction whose ``get`` returns zero-copy views of the memory map, and
:meth:`StoredSafetensors.view` returns a piece of a tensor as such a view when it lies
inside one leaf. :class:`DataReader` also passes page-cache hints for those views to
the kernel (``madvise``): ``MADV_WILLNEED`` ahead of use, so cold reads are queued
before they are needed, and ``MADV_DONTNEED`` once a piece is done, so the map pages
a long diff or merge has touched do not pile up in the process's resident set (they
stay in the page cache; the next access maps them again).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from math import prod
from typing import Callable, Iterator

from ..chunking.safetensors import NotSafetensors, SafetensorsHeader, TensorInfo, read_header_with
from ..dag import FileIndex
from ..errors import BlockNotFound
from ..store.lmdb_store import MADV_DONTNEED, MADV_WILLNEED, buffer_address, is_map_buffer, madvise

Getter = Callable[[bytes], "bytes | memoryview"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class DataReader:
    """Zero-copy block reads inside one LMDB read transaction, with page-cache hints.

    ``get(cid)`` returns a read-only ``memoryview`` into the LMDB memory map, valid
    only while the reader is open (see :func:`data_reader`; LMDB wants one thread at
    a time in a transaction, so take views in one thread and hand them on), checked
    against its CID the first time this process reads it (the store's verified read,
    :meth:`~tvcfs.store.lmdb_store.LMDBStore.check`); it counts in the store's
    ``blocks_read`` and raises :class:`~tvcfs.errors.BlockNotFound` for a missing
    block, :class:`~tvcfs.errors.CorruptBlock` for a damaged one. :meth:`willneed` /
    :meth:`dontneed` are no-ops for buffers that do not lie
    inside the map (bytes objects, inline data), so they can be called on anything.
    """

    def __init__(self, store, blocks, fallback=None):
        self.store = store
        self._blocks = blocks
        self._fallback = fallback
        self._map = store.map_range()

    def get(self, cid: bytes):
        """Block ``cid`` as a read-only buffer valid while the reader is open (falling back to
        the later store tiers). Raises :class:`~tvcfs.errors.BlockNotFound`,
        :class:`~tvcfs.errors.CorruptBlock`."""
        self.store.blocks_read += 1
        v = self._blocks.get(cid)
        if v is None and self._fallback is not None:
            v = self._fallback.get(cid)  # the block layer's later tiers (a lazy clone's peers)
        if v is None:
            raise BlockNotFound(cid)
        return v

    def _advise(self, buf, advice: int, inward: bool) -> None:
        if self._map is None or not is_map_buffer(buf) or not buf.nbytes:
            return
        a = buffer_address(buf)
        e = a + buf.nbytes
        if inward:  # only pages lying wholly inside the buffer
            lo, hi = -(-a // _PAGE) * _PAGE, e // _PAGE * _PAGE
        else:
            lo, hi = a // _PAGE * _PAGE, -(-e // _PAGE) * _PAGE
        lo, hi = max(lo, self._map[0]), min(hi, self._map[1])
        if hi > lo:
            madvise(lo, hi - lo, advice)

    def willneed(self, buf) -> None:
        """Ask the kernel to start reading ``buf``'s pages into the page cache now
        (asynchronous; a hint)."""
        self._advise(buf, MADV_WILLNEED, False)

    def dontneed(self, buf) -> None:
        """Unmap ``buf``'s pages from this process (the data stays in the page cache
        and on disk; a later access maps it again). Only pages wholly inside ``buf``
        and inside the LMDB map are affected; for a shared file mapping this never
        loses data (dirty pages stay dirty in the page cache)."""
        self._advise(buf, MADV_DONTNEED, True)


@contextmanager
def data_reader(store, fallback=None) -> Iterator[DataReader]:
    """Open a :class:`DataReader` on ``store`` (a :class:`~tvcfs.store.lmdb_store.LMDBStore`)
    for the duration of the ``with`` block; blocks it lacks come from ``fallback`` (the
    repository's block layer, ``Repo.blocks``, when it has more tiers than the store).
    Views obtained from it must not be used after the block ends."""
    with store.view() as blocks:
        yield DataReader(store, blocks, None if fallback is store else fallback)


class StoredSafetensors:
    """A safetensors file in the store.

    ``index``: its :class:`~tvcfs.dag.FileIndex`; ``header``: the parsed
    :class:`~tvcfs.chunking.safetensors.SafetensorsHeader`; ``tensors``: ``{name:
    TensorInfo}`` in file order; ``metadata``: the ``__metadata__`` map.
    """

    def __init__(self, get: Getter, index: FileIndex, header: SafetensorsHeader):
        self.get = get
        self.index = index
        self.header = header
        self.tensors: dict[str, TensorInfo] = {t.name: t for t in header.tensors}
        self.metadata: dict = dict(header.metadata)

    @property
    def cid(self) -> bytes:
        """The file's binary CID."""
        return self.index.cid

    @property
    def size(self) -> int:
        """The file's size in bytes."""
        return self.index.size

    def leaf_ids(self, t: TensorInfo, off: int = 0, length: int | None = None) -> tuple | None:
        """CIDs of the leaves covering bytes ``[off, off+length)`` of tensor ``t``
        (relative to the tensor's start; default: the whole tensor), or ``None`` if
        that range does not start and end on leaf boundaries (then identity must be
        decided from bytes). An empty range gives ``()``."""
        if length is None:
            length = t.nbytes - off
        if length <= 0:
            return ()
        a = t.start + off
        idx = self.index
        r = idx.leaf_range(a, length)
        if not r or idx.starts[r.start] != a:
            return None
        last = r.stop - 1
        if idx.starts[last] + idx.sizes[last] != a + length:
            return None
        return tuple(idx.leaves[i] for i in r)

    def fingerprint(self, t: TensorInfo):
        """``(dtype, shape, leaf CIDs)`` — equal fingerprints mean equal tensors; a
        ``None`` leaf list means "compare bytes"."""
        return (t.dtype, t.shape, self.leaf_ids(t))

    def read(self, t: TensorInfo, off: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[off, off+length)`` of tensor ``t`` (default: all of it)."""
        if length is None:
            length = t.nbytes - off
        return self.index.read(self.get, t.start + off, length)

    def view(self, t: TensorInfo, off: int, length: int, get: Getter | None = None):
        """Bytes ``[off, off+length)`` of tensor ``t`` without copying when they lie in
        one leaf: a ``memoryview`` of the block returned by ``get`` (default: this
        file's getter; pass :meth:`DataReader.get` for zero-copy views of the store's
        map), else a joined ``bytes`` copy. Raises what
        :meth:`~tvcfs.dag.FileIndex.leaf_data` raises."""
        get = get or self.get
        idx = self.index
        a = t.start + off
        r = idx.leaf_range(a, length)
        if len(r) != 1:
            return idx.read(get, a, length)
        i = r[0]
        lo = a - idx.starts[i]
        return memoryview(idx.leaf_data(get, i))[lo:lo + length]


def tensors_equal(a: StoredSafetensors, ta: TensorInfo, b: StoredSafetensors, tb: TensorInfo) -> bool:
    """Exact equality of two stored tensors (dtype, shape, bytes). Decided from leaf
    CIDs when both are leaf-aligned (no data read), else by comparing bytes."""
    if ta.dtype != tb.dtype or tuple(ta.shape) != tuple(tb.shape) or ta.nbytes != tb.nbytes:
        return False
    la, lb = a.leaf_ids(ta), b.leaf_ids(tb)
    if la is not None and lb is not None:
        return la == lb
    return a.read(ta) == b.read(tb)


def open_safetensors(get: Getter, cid: bytes, index: FileIndex | None = None) -> StoredSafetensors | None:
    """Open the stored file ``cid`` as safetensors, or return ``None`` if it is not a
    well-formed safetensors file (same test as the chunker). Reads only the header."""
    idx = index or FileIndex.build(get, cid)
    try:
        header = read_header_with(lambda offset, length: idx.read(get, offset, length), idx.size)
    except NotSafetensors:
        return None
    return StoredSafetensors(get, idx, header)


def numel(shape) -> int:
    """Number of elements of ``shape`` (1 for a scalar ``()``)."""
    return int(prod(shape))
