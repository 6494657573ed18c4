"""Storage encodings below the CID: how a packed block is stored (docs/format.md,
"Packed blocks").

A block's CID is always the sha2-256 of its raw bytes; an encoding only changes how
those bytes sit on disk. A packed value is a fixed header followed by its body — in
version 1 one zstd frame of the (grouped) bytes, in version 2 one section per plane::

    offset size  field
    0      1     version: 1 (one zstd frame) or 2 (one section per plane)
    1      1     encoding: 1 zstd, 2 byte-grouped zstd, 3 XOR delta then byte-grouped zstd
    2      1     element size e in bytes (1, 2, 4 or 8; 1 = no grouping)
    3      1     delta depth: 0 for self-contained encodings, else an upper bound of the
                 number of bases a read decodes (at most MAX_DEPTH)
    4      4     raw length in bytes (u32 little-endian)
    8      36    base CID (encoding 3 only): the block whose bytes are XORed in
    8|44   ...   version 1: zstd frame (content size written); version 2: per plane
                 (``e`` planes of ``len // e`` bytes; one plane of ``len`` bytes when
                 ``e == 1``) a section — tag (u8), payload length (u32 LE), payload —
                 then the ``len % e`` trailing bytes as they are

Section tags (version 2; :func:`_section` writes them): ``0`` the plane's bytes as they are; ``1``
a zstd frame of them; ``2`` *sparse*: ``k`` (u32 LE), the length of the gaps' zstd
frame (u32 LE), that frame (``k`` bytes: gap from the previous nonzero position +1,
1–255; a longer gap goes in steps of 255 with a zero value), then a zstd frame of the
``k`` values — the plane is zero but at those positions. For a delta's planes where
few bytes changed (the high planes of a fine-tune), the sparse section is smaller than
zstd's and decodes by XORing ``k`` values into the base's plane, without
decompressing a plane of zeros (docs/performance.md "Packed blocks", seventh round).

*Byte grouping* (one plane per byte of the element, after ZipNN): the ``n = len // e``
elements are split into ``e`` planes, plane ``j`` holding byte ``j`` of every element
(for float weights the sign/exponent plane compresses well, the low mantissa planes do
not); the ``len % e`` trailing bytes follow the planes as they are. *XOR delta*: the
block XOR a base block of the same length (the same tensor in another commit), so
bytes that did not change become zero.

The functions here are pure (bytes in, bytes out); :mod:`tvcfs.store.lmdb_store`
stores the values and checks every decoded block against its CID. ``zstandard`` is
imported on first use.

*Kernels.* Byte (un)grouping, the XOR with a delta's base and the expansion of a
sparse section run in the compiled module :mod:`tvcfs.store._planes` (one pass each,
the GIL released; docs/performance.md "Packed blocks", ninth round) when it was built
at install time, else in numpy: the same bytes, the same errors. ``TVCFS_NO_C=1`` in
the environment forces numpy; :data:`KERNELS` says which is in use.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass


from ..encoding.car import MAX_SECTION
from ..errors import CorruptBlock

VERSION = 1             # what encode() writes by default: every tvcfs reads it (S3 packs;
                        # thin values to a peer that did not say it reads version 2)
LOCAL_VERSION = 2       # what the local store packs (pack.py): read by tvcfs >= 2026-12-07 evening
VERSIONS = (1, 2)       # what decodes
ZSTD, GROUPED, XOR_DELTA = 1, 2, 3
RAW_PLANE, ZSTD_PLANE, SPARSE_PLANE = 0, 1, 2  # section tags of version 2
SPARSE_MAX = 0.25       # a plane is tried sparse only with at most this fraction nonzero (denser:
                        # decodes slower than zstd, docs/performance.md "Packed blocks", seventh round)
_SEC = struct.Struct("<BI")
_SPARSE = struct.Struct("<II")
NAMES = {0: "raw", ZSTD: "zstd", GROUPED: "grouped", XOR_DELTA: "delta"}
MAX_DEPTH = 4           # bases a read of one delta may decode, at most
MAX_RAW = MAX_SECTION   # bytes: the largest raw length a value may claim — the largest block a
# store takes in (a CAR section, a gateway body; peers send at most 2 MiB, leaves are 1 MiB).
# A sparse section does not say how long its plane is, so nothing else bounds a damaged or
# hostile length field: 0xFFFFFFFF decoded to 4 GiB of zeros (8 GiB of memory, 40 s) before
# the CID check could refuse it. Larger blocks are kept raw.
LEVEL = 1               # zstd level of packing (any level decodes: the frame is plain zstd)
# Level 1 over 3 (measured on issue 22's models, docs/performance.md "Packed blocks"):
# float planes gain little from matches, and level 3's short matches cost more than
# they save — level 1 stores less (bf16 base 0.684 vs 0.709, bf16 delta 0.1524 vs
# 0.1530, fp32 delta 0.397 vs 0.404) and its frames decompress ~1.3x faster.
STRATEGY, MIN_MATCH = 2, 7  # level 1 with zstd's "dfast" match finder and 7-byte matches
# (seventh round): fewer, longer matches — every frame of the four benchmark sets
# smaller (bf16 base 0.6840 -> 0.6813, delta 0.1524 -> 0.1505; fp32 delta 0.3972 ->
# 0.3963, base 0.8300 -> 0.8288) and decoded with 4-10 % less CPU. Not part of the
# format either: a decoder reads any zstd frame.
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


def _kernels():
    """The compiled kernels (:mod:`tvcfs.store._planes`), or ``None``: not built (no C
    compiler at install time) or ``TVCFS_NO_C`` set to anything but ``""``/``0``."""
    if os.environ.get("TVCFS_NO_C", "") not in ("", "0"):
        return None
    import importlib

    try:
        return importlib.import_module(__package__ + "._planes")
    except ImportError:
        return None


_c = _kernels()
KERNELS = "numpy" if _c is None else "c"  # which decode kernels this process uses

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
        z = _zstd()
        c = _local.c = z.ZstdCompressor(compression_params=z.ZstdCompressionParameters.from_level(
            LEVEL, strategy=STRATEGY, min_match=MIN_MATCH, write_checksum=0, write_content_size=1))
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
    CID or ``None``), ``offset`` (where the body starts in the value), ``version``
    (1: the body is one zstd frame; 2: one section per plane)."""

    encoding: int
    elem: int
    depth: int
    raw_len: int
    base: bytes | None
    offset: int
    version: int = 1

    @property
    def name(self) -> str:
        """The encoding's name (``NAMES``), or ``"encoding N"`` for an unknown number."""
        return NAMES.get(self.encoding, f"encoding {self.encoding}")


def header(value) -> Header:
    """Parse the header of packed value ``value`` (bytes-like). Raises
    :class:`CorruptBlock` for a short value, an unknown version or encoding, an element
    size other than 1, 2, 4, 8, a depth over :data:`MAX_DEPTH` or a raw length over
    :data:`MAX_RAW` bytes (before anything of that length is allocated)."""
    if len(value) < _HDR.size:
        raise CorruptBlock(f"packed value of {len(value)} bytes is shorter than its header")
    version, enc, elem, depth, raw_len = _HDR.unpack_from(value, 0)
    if version not in VERSIONS or enc not in (ZSTD, GROUPED, XOR_DELTA) or elem not in _UINT \
            or depth > MAX_DEPTH or (enc == XOR_DELTA) != (depth > 0):
        raise CorruptBlock(f"packed value has a bad header (version {version}, encoding {enc}, "
                           f"element size {elem}, depth {depth})")
    if raw_len > MAX_RAW:
        raise CorruptBlock(f"packed value claims a raw length of {raw_len} bytes, more than any "
                           f"block ({MAX_RAW})")
    if enc == XOR_DELTA:
        if len(value) < _HDR.size + CID_LEN:
            raise CorruptBlock("packed delta is shorter than its header")
        return Header(enc, elem, depth, raw_len, bytes(value[_HDR.size:_HDR.size + CID_LEN]),
                      _HDR.size + CID_LEN, version)
    return Header(enc, elem, depth, raw_len, None, _HDR.size, version)


def group(data, elem: int, base=None) -> bytes:
    """``data`` (bytes-like) as ``elem`` byte planes followed by the ``len % elem``
    trailing bytes; ``elem == 1`` returns the bytes unchanged. ``base`` (bytes-like of
    the same length): group the XOR of ``data`` with it (a delta) instead. Raises
    ``ValueError`` when ``base`` has another length."""
    if base is not None:
        if len(base) != len(data):
            raise ValueError(f"XOR of {len(data)} and {len(base)} bytes")
        if _c is None or elem == 1:
            data = xor(data, base)
            base = None
    a = np.frombuffer(data, np.uint8)
    n = len(a) // elem
    if elem == 1 or n == 0:
        return bytes(a) if base is None else xor(a, base).tobytes()
    out = np.empty(len(a), np.uint8)
    if _c is not None:
        _c.group(a, elem, out, base)
        return out.data
    cols = a[:n * elem].reshape(n, elem)
    planes = out[:n * elem].reshape(elem, n)
    for j in range(elem):
        planes[j] = cols[:, j]
    out[n * elem:] = a[n * elem:]
    return out.data


def ungroup(data, elem: int, out=None, base=None) -> np.ndarray:
    """Inverse of :func:`group`: the block's bytes as a ``uint8`` array — ``out`` (a
    writable ``uint8`` array of ``len(data)`` bytes, filled) or a new one. ``out``
    must not overlap ``data``. ``base`` (bytes-like of the same length, not
    overlapping ``out``): the result XORed with it (a delta on a raw base, in the
    same pass when the kernels are compiled)."""
    a = np.frombuffer(data, np.uint8)
    if out is None:
        out = np.empty(len(a), np.uint8)
    if _c is not None:
        _c.ungroup(a, elem, out, base)
        return out
    _ungroup_numpy(a, elem, out)
    if base is not None:
        _xor_into(out, np.frombuffer(base, np.uint8))
    return out


def _ungroup_numpy(a, elem: int, out) -> None:
    """:func:`ungroup` of ``uint8`` array ``a`` into ``out`` with numpy."""
    n = len(a) // elem
    if elem == 1 or n == 0:
        out[:] = a
        return
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


def _value(version: int, enc: int, elem: int, depth: int, raw_len: int, base: bytes | None,
           body) -> bytes:
    return _HDR.pack(version, enc, elem, depth, raw_len) + (base or b"") + body


def _body(grouped, elem: int, version: int) -> bytes:
    """The body of a value whose grouped bytes are ``grouped``: one zstd frame
    (version 1) or one section per plane (version 2, :func:`_section`)."""
    c = _compressor()
    if version == 1:
        return c.compress(grouped)
    a = np.frombuffer(grouped, np.uint8)
    n = len(a) // elem
    parts = [_section(a[j * n:(j + 1) * n], c) for j in range(elem)]
    parts.append(bytes(a[elem * n:]))
    return b"".join(parts)


def _section(p, c) -> bytes:
    """The smallest section of plane ``p`` (a ``uint8`` array): its bytes, a zstd
    frame, or sparse positions and values (tried when at most :data:`SPARSE_MAX`
    of its bytes are nonzero)."""
    z = c.compress(p)
    tag, best = (ZSTD_PLANE, z) if len(z) < len(p) else (RAW_PLANE, p.tobytes())
    if len(p) and np.count_nonzero(p) <= SPARSE_MAX * len(p):
        sp = _sparse(p, c)
        if len(sp) < len(best):
            tag, best = SPARSE_PLANE, sp
    return _SEC.pack(tag, len(best)) + best


def _sparse(p, c) -> bytes:
    """Sparse section payload of plane ``p``: ``k``, the gaps' frame length, the
    gaps' zstd frame (each 1–255: a gap over 255 goes in steps of 255 whose value
    is 0), the values' zstd frame."""
    idx = np.flatnonzero(p)
    gaps = np.diff(idx, prepend=-1)
    extra = (gaps - 1) // 255          # filler steps of 255 before each nonzero byte
    counts = extra + 1
    k = int(counts.sum())
    at = np.cumsum(counts) - 1         # where each real entry lands
    g = np.full(k, 255, np.uint8)
    g[at] = gaps - 255 * extra
    v = np.zeros(k, np.uint8)
    v[at] = p[idx]
    gf = c.compress(g)
    return _SPARSE.pack(k, len(gf)) + gf + c.compress(v)


def encode(data, elem: int = 1, base: bytes | None = None, base_data=None, base_depth: int = 0,
           pays: float = PAYS, version: int = VERSION) -> bytes | None:
    """The smallest packed value for block bytes ``data``, or ``None`` when no encoding
    gets below ``pays`` × its length or the block is over :data:`MAX_RAW` bytes (keep
    it raw).

    ``elem``: element size in bytes (1, 2, 4, 8; from the tensor's dtype). ``base`` /
    ``base_data``: the CID and bytes of a delta base of the same length (its own
    chain ``base_depth`` long, so the delta's depth is ``base_depth + 1`` ≤
    :data:`MAX_DEPTH`); without one only the self-contained encodings are tried.
    ``version``: the body's format (1: one zstd frame, read by every tvcfs — the
    default, for values other tvcfs versions may read; 2: per-plane sections, what
    the local store packs). Raises ``ValueError`` for a bad element size or
    version, or a base too deep."""
    if elem not in _UINT:
        raise ValueError(f"element size must be 1, 2, 4 or 8, got {elem}")
    if version not in VERSIONS:
        raise ValueError(f"packed value version must be one of {VERSIONS}, got {version}")
    n = len(data)
    if n > MAX_RAW:
        return None
    enc = GROUPED if elem > 1 else ZSTD
    best = _value(version, enc, elem, 0, n, None, _body(group(data, elem), elem, version))
    if base is not None and base_data is not None and len(base_data) == n:
        if base_depth + 1 > MAX_DEPTH:
            raise ValueError(f"a delta on a base of depth {base_depth} exceeds {MAX_DEPTH}")
        d = _value(version, XOR_DELTA, elem, base_depth + 1, n, bytes(base),
                   _body(group(data, elem, base_data), elem, version))
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


def decode_into(value, out, base_data=None, h: Header | None = None, base_planes=None,
                spend_base: bool = False) -> None:
    """Decode packed value ``value`` into ``out``, a writable ``uint8`` numpy array of
    its raw length (``h``: its :func:`header`, if parsed already), without making
    ``bytes`` on the way: the zstd frame is decompressed into a per-thread scratch
    buffer, un-grouped into ``out``, and a delta's base XORed in place. A delta's
    base is ``base_data`` (its bytes) or ``base_planes`` (its bytes grouped by this
    value's element size, as :func:`planes_into` gives them for a packed base: XOR
    commutes with grouping, so the XOR is done on the planes and only the result is
    un-grouped). ``spend_base``: ``base_planes`` is a writable work buffer of the
    caller's that may be overwritten — the delta's planes are decoded into it in
    place, without first copying the base's planes. The heavy parts (zstd, the
    kernels) release the GIL. Errors as :func:`decode`; ``ValueError`` too when
    ``out`` has another length than the block."""
    if h is None:
        h = header(value)
    if len(out) != h.raw_len:
        raise ValueError(f"decode of a {h.raw_len}-byte block into {len(out)} bytes")
    if h.elem == 1:  # nothing to un-group: straight into the output
        planes_into(value, out, base_planes if base_planes is not None else base_data, h)
        return
    raw_base = _base_array(base_data, h) if h.encoding == XOR_DELTA and base_planes is None else None
    planes = base_planes if spend_base and base_planes is not None else scratch(h.raw_len)
    planes_into(value, planes, base_planes, h, need_base=base_data is None)
    ungroup(planes, h.elem, out, raw_base)  # a raw base's XOR in the same pass


def planes_into(value, out, base_planes=None, h: Header | None = None, need_base: bool = True) -> None:
    """The bytes of packed value ``value``'s block grouped by its element size (what
    :func:`group` makes of them; the bytes themselves for element size 1) into
    ``out``, a writable ``uint8`` array of its raw length. A delta needs
    ``base_planes``: its base's bytes grouped by the same element size (unless
    ``need_base`` is false: then ``out`` holds the grouped XOR with the base).
    ``out`` may be ``base_planes`` itself (the same object): the planes are then
    XORed into it in place. Errors as :func:`decode`."""
    if h is None:
        h = header(value)
    if h.version == 2:
        _sections_into(value, out, base_planes, h, need_base)
        return
    frame = memoryview(value)[h.offset:]
    if h.encoding == XOR_DELTA and (base_planes is not None or need_base):
        bp = _base_array(base_planes, h)
        if base_planes is out:
            t = scratch(len(out), SLOT_PLANE)
            _unzstd_into(frame, t, "packed value")
            _xor_into(out, t)
            return
        _unzstd_into(frame, out, "packed value")
        _xor_into(out, bp)
        return
    _unzstd_into(frame, out, "packed value")


def _unzstd_into(frame, out, what: str) -> None:
    """Decompress zstd ``frame`` into ``out`` (a ``uint8`` array), which it must fill
    exactly (its content size written); :class:`CorruptBlock` naming ``what`` else."""
    z = _zstd()
    try:
        size = z.frame_content_size(frame)
        if size != len(out):
            raise CorruptBlock(f"{what} decodes to {size} bytes, its header says {len(out)}")
        got = _decompressor().stream_reader(frame, read_size=len(frame),
                                             read_across_frames=False).readinto(out) if len(out) else 0
    except z.ZstdError as e:
        raise CorruptBlock(f"{what} does not decompress: {e}") from None
    if got != len(out):
        raise CorruptBlock(f"{what} decodes to {got} bytes, its header says {len(out)}")


def _sections_into(value, out, base_planes, h: Header, need_base: bool) -> None:
    """:func:`planes_into` for a version-2 value: each plane's section decoded into
    its part of ``out``, XORed with the base's plane when ``base_planes`` is given (a
    sparse section only at its nonzero positions; in place when ``out`` is
    ``base_planes``)."""
    bp = None
    if h.encoding == XOR_DELTA and (base_planes is not None or need_base):
        bp = _base_array(base_planes, h)
    inplace = bp is not None and base_planes is out
    mv = memoryview(value)
    e = h.elem
    n = h.raw_len // e
    off = h.offset
    for j in range(e):
        if off + _SEC.size > len(mv):
            raise CorruptBlock(f"packed value is truncated in the section of plane {j}")
        tag, ln = _SEC.unpack_from(mv, off)
        off += _SEC.size
        payload = mv[off:off + ln]
        off += ln
        if len(payload) != ln:
            raise CorruptBlock(f"packed value is truncated in the section of plane {j}")
        o = out[j * n:(j + 1) * n]
        b = None if bp is None else o if inplace else bp[j * n:(j + 1) * n]
        what = f"plane {j} of the packed value"
        if tag == RAW_PLANE:
            if ln != n:
                raise CorruptBlock(f"{what} has {ln} bytes, not {n}")
            src = np.frombuffer(payload, np.uint8)
        elif tag == ZSTD_PLANE:
            src = scratch(n, SLOT_PLANE) if inplace else o
            _unzstd_into(payload, src, what)
        elif tag == SPARSE_PLANE:
            _sparse_into(payload, o, b, what)
            continue
        else:
            raise CorruptBlock(f"{what} has an unknown section tag {tag}")
        _plane_into(o, src, b)
    tail = mv[off:]
    if len(tail) != h.raw_len - e * n:
        raise CorruptBlock(f"packed value has {len(tail)} bytes after its planes, not {h.raw_len - e * n}")
    o = out[e * n:]
    _plane_into(o, np.frombuffer(tail, np.uint8), None if bp is None else o if inplace else bp[e * n:])


def _plane_into(o, src, b) -> None:
    """``o`` becomes ``src`` XOR ``b`` (``uint8`` arrays of one length; ``b`` may be
    ``None``: a copy, or ``o`` itself: XOR in place; ``src`` may be ``o``)."""
    if b is o:
        _xor_into(o, src)
        return
    if src is not o:
        o[:] = src
    if b is not None:
        _xor_into(o, b)


def _sparse_into(payload, o, b, what: str) -> None:
    """Decode sparse section ``payload`` into plane ``o``: its bytes (zero but at the
    listed positions), or with ``b`` (the base's plane; ``o`` itself: in place) the
    base XOR them."""
    if len(payload) < _SPARSE.size:
        raise CorruptBlock(f"{what} is truncated")
    k, gl = _SPARSE.unpack_from(payload, 0)
    if k > len(o) or _SPARSE.size + gl > len(payload):
        raise CorruptBlock(f"{what} lists {k} positions in {len(o)} bytes or is truncated")
    g = scratch(k, SLOT_GAPS)
    v = scratch(k, SLOT_VALUES)
    _unzstd_into(payload[_SPARSE.size:_SPARSE.size + gl], g, what)
    _unzstd_into(payload[_SPARSE.size + gl:], v, what)
    if _c is not None:  # one pass: no array of positions, no fancy indexing
        try:
            _c.sparse_apply(o, b, g, v)
        except ValueError:
            raise CorruptBlock(f"{what} lists a position outside its {len(o)} bytes") from None
        return
    pos = np.cumsum(g, dtype=np.intp)
    if k and (pos[-1] > len(o) or not g.all()):
        raise CorruptBlock(f"{what} lists a position outside its {len(o)} bytes")
    pos -= 1
    if b is None:
        o[:] = 0
        o[pos] = v
    else:
        if b is not o:
            o[:] = b
        o[pos] ^= v


def _base_array(base, h: Header) -> np.ndarray:
    """A delta's base (bytes-like) as a ``uint8`` array; ``ValueError`` when there is
    none, :class:`CorruptBlock` when its length is not the delta's."""
    if base is None:
        raise ValueError("a delta needs its base")
    if len(base) != h.raw_len:
        raise CorruptBlock(f"delta base has {len(base)} bytes, the delta {h.raw_len}")
    return np.frombuffer(base, np.uint8)


SCRATCH_MAX = 16 << 20  # bytes of the largest scratch buffer a thread keeps
SLOT_GAPS, SLOT_VALUES = 16, 17  # scratch slots of a sparse section (the store uses 0..MAX_DEPTH+1)
SLOT_PLANE = 18         # a plane decompressed to be XORed into its base's plane in place


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
