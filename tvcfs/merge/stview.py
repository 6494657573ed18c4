"""Read access to a safetensors file stored as a UnixFS DAG, tensor by tensor.

Used by :mod:`tvcfs.diff` and the repository merge. Only the header leaves are read
to open a file; tensor identity comes from leaf CIDs (the chunker starts a leaf at
every tensor, DESIGN.md §1), tensor data is read only on request.
"""

from __future__ import annotations

from math import prod
from typing import Callable, Iterator

from ..chunking.safetensors import MAX_HEADER, NotSafetensors, SafetensorsHeader, TensorInfo, parse_header
from ..dag import FileIndex

Getter = Callable[[bytes], "bytes | memoryview"]


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
        return self.index.cid

    @property
    def size(self) -> int:
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

    def iter_chunks(self, t: TensorInfo, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(offset, bytes)`` pieces of tensor ``t`` of at most ``chunk_bytes``."""
        off = 0
        while off < t.nbytes:
            ln = min(chunk_bytes, t.nbytes - off)
            yield off, self.read(t, off, ln)
            off += ln


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
    if idx.size < 10:
        return None
    first = idx.read(get, 0, 8)
    n = int.from_bytes(first, "little")
    if n < 2 or n > MAX_HEADER or 8 + n > idx.size:
        return None
    try:
        header = parse_header(first + idx.read(get, 8, n), idx.size)
    except NotSafetensors:
        return None
    return StoredSafetensors(get, idx, header)


def numel(shape) -> int:
    """Number of elements of ``shape`` (1 for a scalar ``()``)."""
    return int(prod(shape))
