"""Storage encodings below the CID: how a packed block is stored (docs/format.md,
"Packed blocks").

A block's CID is always the sha2-256 of its raw bytes; an encoding only changes how
those bytes sit on disk. A packed value is a fixed header followed by one zstd frame::

    offset size  field
    0      1     version (1)
    1      1     encoding: 1 zstd, 2 byte-grouped zstd, 3 XOR delta then byte-grouped zstd
    2      1     element size e in bytes (1, 2, 4 or 8; 1 = no grouping)
    3      1     delta depth: 0 for self-contained encodings, else an upper bound of the
                 number of bases a read decodes (at most MAX_DEPTH)
    4      4     raw length in bytes (u32 little-endian)
    8      36    base CID (encoding 3 only): the block whose bytes are XORed in
    8|44   ...   zstd frame (content size and checksum written)

*Byte grouping* (one plane per byte of the element, after ZipNN): the ``n = len // e``
elements are split into ``e`` planes, plane ``j`` holding byte ``j`` of every element
(for float weights the sign/exponent plane compresses well, the low mantissa planes do
not); the ``len % e`` trailing bytes follow the planes as they are. *XOR delta*: the
block XOR a base block of the same length (the same tensor in another commit), so
bytes that did not change become zero.

The functions here are pure (bytes in, bytes out); :mod:`tvcfs.store.lmdb_store`
stores the values and checks every decoded block against its CID. ``zstandard`` is
imported on first use.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass


from ..errors import CorruptBlock

VERSION = 1
ZSTD, GROUPED, XOR_DELTA = 1, 2, 3
NAMES = {0: "raw", ZSTD: "zstd", GROUPED: "grouped", XOR_DELTA: "delta"}
MAX_DEPTH = 4           # bases a read of one delta may decode, at most
LEVEL = 1               # zstd level of packing (any level decodes: the frame is plain zstd)
# Level 1 over 3 (measured on issue 22's models, docs/performance.md "Packed blocks"):
# float planes gain little from matches, and level 3's short matches cost more than
# they save — level 1 stores less (bf16 base 0.684 vs 0.709, bf16 delta 0.1524 vs
# 0.1530, fp32 delta 0.397 vs 0.404) and its frames decompress ~1.3x faster.
PAYS = 0.95             # an encoding is kept only below this fraction of the raw length
_HDR = struct.Struct("<BBBBI")
CID_LEN = 36
_UINT = {1: "uint8", 2: "uint16", 4: "uint32", 8: "uint64"}  # element size -> numpy dtype name


class _Numpy:
    """numpy, imported on first use: ``import tvcfs`` (and the CLI's start-up) must not
    pay for it when nothing is packed or unpacked."""

    def __getattr__(self, name):
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


np = _Numpy()

_local = threading.local()


def _zstd():
    import zstandard

    return zstandard


def warm() -> None:
    """Import what decoding needs (numpy, ``zstandard``) now. The mount daemon calls
    it at start-up when its store holds packed blocks: imported lazily, they came in
    on the first read of a packed leaf, from the disk after a ``drop_caches``
    (~0.1-0.5 s measured, docs/performance.md "Packed blocks"), while every preload
    thread waited on the import lock."""
    np.uint8  # noqa: B018 (the attribute imports numpy)
    _zstd()


def _compressor():
    c = getattr(_local, "c", None)
    if c is None:
        c = _local.c = _zstd().ZstdCompressor(level=LEVEL, write_checksum=False, write_content_size=True)
    return c


def _decompressor():
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = _zstd().ZstdDecompressor()
    return d


@dataclass(frozen=True)
class Header:
    """The header of a packed value: ``encoding`` (1–3), ``elem`` (bytes per element),
    ``depth`` (delta chain bound), ``raw_len`` (bytes of the block), ``base`` (binary
    CID or ``None``), ``offset`` (where the zstd frame starts in the value)."""

    encoding: int
    elem: int
    depth: int
    raw_len: int
    base: bytes | None
    offset: int

    @property
    def name(self) -> str:
        """The encoding's name (``NAMES``), or ``"encoding N"`` for an unknown number."""
        return NAMES.get(self.encoding, f"encoding {self.encoding}")


def header(value) -> Header:
    """Parse the header of packed value ``value`` (bytes-like). Raises
    :class:`CorruptBlock` for a short value, an unknown version or encoding, an element
    size other than 1, 2, 4, 8, or a depth over :data:`MAX_DEPTH`."""
    if len(value) < _HDR.size:
        raise CorruptBlock(f"packed value of {len(value)} bytes is shorter than its header")
    version, enc, elem, depth, raw_len = _HDR.unpack_from(value, 0)
    if version != VERSION or enc not in (ZSTD, GROUPED, XOR_DELTA) or elem not in _UINT \
            or depth > MAX_DEPTH or (enc == XOR_DELTA) != (depth > 0):
        raise CorruptBlock(f"packed value has a bad header (version {version}, encoding {enc}, "
                           f"element size {elem}, depth {depth})")
    if enc == XOR_DELTA:
        if len(value) < _HDR.size + CID_LEN:
            raise CorruptBlock("packed delta is shorter than its header")
        return Header(enc, elem, depth, raw_len, bytes(value[_HDR.size:_HDR.size + CID_LEN]),
                      _HDR.size + CID_LEN)
    return Header(enc, elem, depth, raw_len, None, _HDR.size)


def group(data, elem: int) -> bytes:
    """``data`` (bytes-like) as ``elem`` byte planes followed by the ``len % elem``
    trailing bytes; ``elem == 1`` returns the bytes unchanged."""
    a = np.frombuffer(data, np.uint8)
    n = len(a) // elem
    if elem == 1 or n == 0:
        return bytes(a)
    out = np.empty(len(a), np.uint8)
    cols = a[:n * elem].reshape(n, elem)
    planes = out[:n * elem].reshape(elem, n)
    for j in range(elem):
        planes[j] = cols[:, j]
    out[n * elem:] = a[n * elem:]
    return out.data


def ungroup(data, elem: int, out=None) -> np.ndarray:
    """Inverse of :func:`group`: the block's bytes as a ``uint8`` array — ``out`` (a
    writable ``uint8`` array of ``len(data)`` bytes, filled) or a new one. ``out``
    must not overlap ``data``."""
    a = np.frombuffer(data, np.uint8)
    if out is None:
        out = np.empty(len(a), np.uint8)
    n = len(a) // elem
    if elem == 1 or n == 0:
        out[:] = a
        return out
    planes = [a[j * n:(j + 1) * n] for j in range(elem)]
    width = 1
    while len(planes) > 1:  # pairs of planes into words twice as wide: ~5 GB/s
        t = getattr(np, _UINT[2 * width])
        last = len(planes) == 2
        nxt = []
        for lo, hi in zip(planes[0::2], planes[1::2]):
            # the last pair is combined in the output itself: no temporary, no copy
            w = out[:n * elem].view(t) if last else np.empty(n, t)
            np.copyto(w, hi, casting="unsafe")
            w <<= t(8 * width)
            w |= lo
            nxt.append(w)
        planes, width = nxt, 2 * width
    out[n * elem:] = a[n * elem:]
    return out


def xor(a, b) -> np.ndarray:
    """Bytewise XOR of two equally long bytes-like objects (a new ``uint8`` array).
    Raises ``ValueError`` when the lengths differ."""
    x, y = np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)
    if len(x) != len(y):
        raise ValueError(f"XOR of {len(x)} and {len(y)} bytes")
    out = x.copy()
    _xor_into(out, y)
    return out


def _xor_into(out: np.ndarray, y: np.ndarray) -> None:
    """``out ^= y`` for ``uint8`` arrays of one length, eight bytes at a time."""
    k = len(out) // 8 * 8
    try:
        np.bitwise_xor(out[:k].view(np.uint64), y[:k].view(np.uint64), out=out[:k].view(np.uint64))
    except ValueError:  # an unaligned buffer: bytewise
        k = 0
    np.bitwise_xor(out[k:], y[k:], out=out[k:])


def _value(enc: int, elem: int, depth: int, raw_len: int, base: bytes | None, frame: bytes) -> bytes:
    return _HDR.pack(VERSION, enc, elem, depth, raw_len) + (base or b"") + frame


def encode(data, elem: int = 1, base: bytes | None = None, base_data=None, base_depth: int = 0,
           pays: float = PAYS) -> bytes | None:
    """The smallest packed value for block bytes ``data``, or ``None`` when no encoding
    gets below ``pays`` × its length (keep it raw).

    ``elem``: element size in bytes (1, 2, 4, 8; from the tensor's dtype). ``base`` /
    ``base_data``: the CID and bytes of a delta base of the same length (its own
    chain ``base_depth`` long, so the delta's depth is ``base_depth + 1`` ≤
    :data:`MAX_DEPTH`); without one only the self-contained encodings are tried.
    Raises ``ValueError`` for a bad element size or a base too deep."""
    if elem not in _UINT:
        raise ValueError(f"element size must be 1, 2, 4 or 8, got {elem}")
    n = len(data)
    if n >= 1 << 32:
        return None
    c = _compressor()
    best = None
    enc = GROUPED if elem > 1 else ZSTD
    best = _value(enc, elem, 0, n, None, c.compress(group(data, elem)))
    if base is not None and base_data is not None and len(base_data) == n:
        if base_depth + 1 > MAX_DEPTH:
            raise ValueError(f"a delta on a base of depth {base_depth} exceeds {MAX_DEPTH}")
        d = _value(XOR_DELTA, elem, base_depth + 1, n, bytes(base),
                   c.compress(group(xor(data, base_data), elem)))
        if len(d) < len(best):
            best = d
    return best if len(best) < pays * n else None


def decode(value, base_data=None, buffer: bool = False):
    """The block bytes of packed value ``value``; ``base_data``: the decoded bytes of
    its base (a delta only). Not checked against a CID (the store does that). Raises
    :class:`CorruptBlock` when the value is damaged (bad header, zstd error or checksum
    mismatch, wrong length) and ``ValueError`` when a delta is given no base.
    ``buffer``: return a read-only ``memoryview`` of the decoded array instead of
    ``bytes`` (no copy of the block: a lazy mount stores it and drops it)."""
    h = header(value)
    out = np.empty(h.raw_len, np.uint8)
    decode_into(value, out, base_data, h)
    return out.data.toreadonly() if buffer else out.tobytes()


def decode_into(value, out, base_data=None, h: Header | None = None, base_planes=None) -> None:
    """Decode packed value ``value`` into ``out``, a writable ``uint8`` numpy array of
    its raw length (``h``: its :func:`header`, if parsed already), without making
    ``bytes`` on the way: the zstd frame is decompressed into a per-thread scratch
    buffer, un-grouped into ``out``, and a delta's base XORed in place. A delta's
    base is ``base_data`` (its bytes) or ``base_planes`` (its bytes grouped by this
    value's element size, as :func:`planes_into` gives them for a packed base: XOR
    commutes with grouping, so the XOR is done on the planes and only the result is
    un-grouped). The heavy parts (zstd, numpy on whole planes) release the GIL.
    Errors as :func:`decode`; ``ValueError`` too when ``out`` has another length
    than the block."""
    if h is None:
        h = header(value)
    if len(out) != h.raw_len:
        raise ValueError(f"decode of a {h.raw_len}-byte block into {len(out)} bytes")
    if h.elem == 1:  # nothing to un-group: straight into the output
        planes_into(value, out, base_planes if base_planes is not None else base_data, h)
        return
    planes = scratch(h.raw_len)
    planes_into(value, planes, base_planes, h, need_base=base_data is None)
    ungroup(planes, h.elem, out)
    if h.encoding == XOR_DELTA and base_planes is None:
        _xor_into(out, _base_array(base_data, h))


def planes_into(value, out, base_planes=None, h: Header | None = None, need_base: bool = True) -> None:
    """The bytes of packed value ``value``'s block grouped by its element size (what
    :func:`group` makes of them; the bytes themselves for element size 1) into
    ``out``, a writable ``uint8`` array of its raw length. A delta needs
    ``base_planes``: its base's bytes grouped by the same element size (unless
    ``need_base`` is false: then ``out`` holds the grouped XOR with the base).
    Errors as :func:`decode`."""
    if h is None:
        h = header(value)
    frame = memoryview(value)[h.offset:]
    z = _zstd()
    try:
        size = z.frame_content_size(frame)
        if size != h.raw_len:
            raise CorruptBlock(f"packed value decodes to {size} bytes, its header says {h.raw_len}")
        got = _decompressor().stream_reader(frame, read_size=len(frame),
                                             read_across_frames=False).readinto(out) if h.raw_len else 0
    except z.ZstdError as e:
        raise CorruptBlock(f"packed value does not decompress: {e}") from None
    if got != h.raw_len:
        raise CorruptBlock(f"packed value decodes to {got} bytes, its header says {h.raw_len}")
    if h.encoding == XOR_DELTA and (base_planes is not None or need_base):
        _xor_into(out, _base_array(base_planes, h))


def _base_array(base, h: Header) -> np.ndarray:
    """A delta's base (bytes-like) as a ``uint8`` array; ``ValueError`` when there is
    none, :class:`CorruptBlock` when its length is not the delta's."""
    if base is None:
        raise ValueError("a delta needs its base")
    if len(base) != h.raw_len:
        raise CorruptBlock(f"delta base has {len(base)} bytes, the delta {h.raw_len}")
    return np.frombuffer(base, np.uint8)


SCRATCH_MAX = 16 << 20  # bytes of the largest scratch buffer a thread keeps


def scratch(n: int, slot: int = 0) -> np.ndarray:
    """A per-thread ``uint8`` work buffer of ``n`` bytes (its contents undefined), one
    per ``slot``: reused by the next call in this thread with the same slot, so it is
    only valid until then. Buffers over :data:`SCRATCH_MAX` are not kept."""
    bufs = getattr(_local, "scratch", None)
    if bufs is None:
        bufs = _local.scratch = {}
    b = bufs.get(slot)
    if b is None or len(b) < n:
        b = np.empty(n, np.uint8)
        if n <= SCRATCH_MAX:
            bufs[slot] = b
    return b[:n]
