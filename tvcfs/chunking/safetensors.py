"""Structure of safetensors files, and the tensor-aligned leaf plan.

Format (https://huggingface.co/docs/safetensors/index#format): ``u64 little-endian N``
‖ ``N bytes of UTF-8 JSON`` ‖ data. The JSON maps tensor names to
``{"dtype": str, "shape": [int], "data_offsets": [begin, end]}`` (offsets relative to
the start of the data region, in bytes) and may hold ``"__metadata__": {str: str}``.

The leaf plan (docs/format.md, "Chunking"): the 8-byte length plus the JSON header form the first
leaf (several if the header is over 1 MiB); every tensor's byte range starts a new
leaf; a tensor larger than ``max_leaf`` is cut into ``max_leaf`` pieces counted from its
own start. So an unchanged tensor keeps its leaf CIDs however the offsets around it move.
Bytes outside any tensor (padding, trailing bytes) get leaves of their own.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Iterator

MAX_HEADER = 100 << 20  # bytes; safetensors itself refuses headers over 100 MB
MAX_LEAF = 1 << 20

# Bytes per element of the safetensors dtypes with a whole-byte size (the ``Dtype`` enum
# of the safetensors crate): a tensor of one of these must span exactly
# ``prod(shape) * size`` bytes, as safetensors itself checks. Sub-byte dtypes (F4,
# F6_*) and names never heard of are not checked (docs/format.md, "Chunking").
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "F8_E8M0": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "C64": 8,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}


class NotSafetensors(ValueError):
    """The bytes are not a well-formed safetensors file (the reason is the message)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file: ``name``, ``dtype`` (safetensors string such
    as ``"F16"``, ``"BF16"``, ``"F8_E4M3"``), ``shape`` (tuple of int) and its absolute
    byte range ``[start, end)`` in the file."""

    name: str
    dtype: str
    shape: tuple
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.end - self.start


@dataclass
class SafetensorsHeader:
    """A parsed header. ``header_len`` is N; ``data_start`` = 8 + N (bytes);
    ``tensors`` are sorted by ``start``; ``metadata`` is the ``__metadata__`` map."""

    header_len: int
    tensors: list
    metadata: dict = field(default_factory=dict)
    raw_json: bytes = b""

    @property
    def data_start(self) -> int:
        """Byte offset of the data section in the file: 8 (the length prefix) + ``header_len``."""
        return 8 + self.header_len

    def by_name(self) -> dict:
        """``{name: TensorInfo}``."""
        return {t.name: t for t in self.tensors}


def parse_header(prefix: bytes, file_size: int) -> SafetensorsHeader:
    """Parse and validate a safetensors header.

    ``prefix``: the file's first bytes, at least ``8 + N`` of them (read 8 bytes, then
    N more); ``file_size``: total bytes. Raises :class:`NotSafetensors` for a bad
    header length, non-JSON (nested too deep included) or non-object header, bad entries,
    offsets outside the file, overlapping tensors, or a tensor of a dtype in
    :data:`DTYPE_BYTES` whose shape and dtype disagree with its byte span (safetensors
    refuses all of these). Empty tensors (begin == end) are allowed.
    """
    if file_size < 8 or len(prefix) < 8:
        raise NotSafetensors("shorter than 8 bytes")
    n = int.from_bytes(prefix[:8], "little")
    if n < 2 or n > MAX_HEADER or 8 + n > file_size:
        raise NotSafetensors(f"bad header length {n}")
    if len(prefix) < 8 + n:
        raise NotSafetensors("header truncated")
    raw = bytes(prefix[8:8 + n])
    if raw[:1] != b"{":
        raise NotSafetensors("header does not start with '{'")
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise NotSafetensors("header is not JSON: nested too deep") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise NotSafetensors(f"header is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise NotSafetensors("header is not a JSON object")
    data_start = 8 + n
    data_len = file_size - data_start
    metadata = obj.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise NotSafetensors("__metadata__ is not an object")
    tensors = []
    for name, info in obj.items():
        try:
            dtype = info["dtype"]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise NotSafetensors(f"bad entry for tensor {name!r}") from None
        if not isinstance(dtype, str) or any(s < 0 for s in shape):
            raise NotSafetensors(f"bad dtype or shape for tensor {name!r}")
        if not 0 <= begin <= end <= data_len:
            raise NotSafetensors(f"tensor {name!r} offsets [{begin}, {end}) outside the data ({data_len} bytes)")
        size = DTYPE_BYTES.get(dtype)
        if size is not None and math.prod(shape) * size != end - begin:
            raise NotSafetensors(f"tensor {name!r} of dtype {dtype} and shape {list(shape)} does not span "
                                 f"its {end - begin} bytes")
        tensors.append(TensorInfo(name, dtype, shape, data_start + begin, data_start + end))
    tensors.sort(key=lambda t: (t.start, t.end))
    prev_end = data_start
    for t in tensors:
        if t.start < prev_end and t.start != t.end:
            raise NotSafetensors(f"tensor {t.name!r} overlaps the previous tensor")
        prev_end = max(prev_end, t.end)
    return SafetensorsHeader(n, tensors, metadata, raw)


def read_header_with(read, file_size: int) -> SafetensorsHeader:
    """The one safetensors-header reader: ``read(offset, length) -> bytes`` reads the
    file (a local file, a stored file DAG, a remote one); ``file_size`` in bytes. Reads
    the 8-byte length, checks it (2 ≤ N ≤ :data:`MAX_HEADER`, 8 + N ≤ ``file_size``)
    before reading N more bytes, then :func:`parse_header`. Raises
    :class:`NotSafetensors`; whatever ``read`` raises passes through."""
    if file_size < 8:
        raise NotSafetensors("shorter than 8 bytes")
    first = bytes(read(0, 8))
    if len(first) < 8:
        raise NotSafetensors("shorter than 8 bytes")
    n = int.from_bytes(first, "little")
    if n < 2 or n > MAX_HEADER or 8 + n > file_size:
        raise NotSafetensors(f"bad header length {n}")
    return parse_header(first + bytes(read(8, n)), file_size)


def read_header(f, file_size: int) -> SafetensorsHeader:
    """Read and parse the header of an open binary file (``pread``; position unchanged).
    Raises :class:`NotSafetensors`."""
    fd = f.fileno()
    return read_header_with(lambda offset, length: os.pread(fd, length, offset), file_size)


def _pieces(start: int, end: int, max_leaf: int) -> Iterator[tuple[int, int]]:
    off = start
    while off < end:
        ln = min(max_leaf, end - off)
        yield off, ln
        off += ln


def tensor_spans(header: SafetensorsHeader, file_size: int, max_leaf: int = MAX_LEAF) -> list:
    """The leaf plan of a safetensors file: list of ``(offset, length)`` spans (bytes)
    covering ``[0, file_size)`` exactly, in file order, each ``<= max_leaf``."""
    spans: list[tuple[int, int]] = []
    spans.extend(_pieces(0, header.data_start, max_leaf))
    pos = header.data_start
    for t in header.tensors:
        if t.start == t.end:
            continue
        if t.start > pos:  # padding between tensors
            spans.extend(_pieces(pos, t.start, max_leaf))
            pos = t.start
        spans.extend(_pieces(pos, t.end, max_leaf))
        pos = t.end
    spans.extend(_pieces(pos, file_size, max_leaf))
    return spans
