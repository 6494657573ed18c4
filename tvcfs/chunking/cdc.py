"""Content-defined chunking (FastCDC-style) for files that are not safetensors.

Sources
-------
* W. Xia, Y. Zhou, H. Jiang, D. Feng, Y. Hua, Y. Hu, Q. Liu, Y. Zhang, "FastCDC: a
  Fast and Efficient Content-Defined Chunking Approach for Data Deduplication",
  USENIX ATC 2016: gear-based rolling hash, cut-point skipping below the minimum
  size, and *normalized chunking* (a stricter cut condition before the expected
  size and a looser one after it, which narrows the chunk-size distribution).
* Gear hash: W. Xia et al., "Ddelta: A deduplication-inspired fast delta compression
  approach", Performance Evaluation 2014 (``h = (h << 1) + G[byte]``).

How it is computed here (docs/format.md, "Chunking")
-------------------------------------------------
A per-byte Python loop would run at a few MB/s, so the rolling hash of *every*
position of a read window is computed at once with numpy. The gear recurrence
``h_i = (h_{i-1} << 1) + G[b_i]`` on a w-bit word is the sliding sum
``h_i = sum_{j<w} G[b_{i-j}] << j  (mod 2^w)``, which is computed by doubling
(``H1 = G[b]``, ``H2_i = H1_i + (H1_{i-1} << 1)``, ``H4_i = H2_i + (H2_{i-2} << 2)``,
...), one vectorised pass per doubling. Measured on the 2-core development machine a
64-bit word costs ~3x a 32-bit one (memory traffic), so the hash is:

* ``G``: a fixed byte permutation (derived from SHA-256, so it never changes between
  versions or numpy releases: cut points are part of content addresses), applied
  with ``bytes.translate``;
* 32-bit gear sum over 32 bytes (5 doubling passes, wrap-around arithmetic);
* two 32-byte halves combined, ``H64_i = H32_i + C2 * H32_{i-32}``: the hash of
  position ``i`` depends on exactly the 64 bytes ``b[i-63 .. i]``;
* a final multiplication by an odd constant so that the *top* bits, which are the
  ones tested, depend on every bit of the sum.

A position is a *candidate* when the top bits of its hash are all ones, i.e.
``h >= 2^32 - T`` (same as ``(h & mask) == mask`` for a top-bits mask; FastCDC tests
``(h & mask) == 0``, but here a run of the byte that the gear table maps to 0 hashes
to 0, and would otherwise flood that run with minimum-size chunks); ``T`` is
``2^32 / (avg << nc)`` for the strict test and ``2^32 / (avg >> nc)`` for the loose
one (normalization level ``nc``, 2 by default as recommended in the paper). With
the default sizes no run of a single repeated byte value is a candidate, so
constant regions (zero padding) become ``max_size`` chunks.
Strict candidates are a subset of loose ones. The cut of a chunk starting at ``s``
is then chosen with ``np.searchsorted`` on the candidate arrays:

* the first strict candidate giving a length in ``[min_size, avg_size)``;
* else the first loose candidate giving a length in ``[avg_size, max_size]``;
* else ``max_size`` (or the rest of the input, whichever is shorter).

A chunk of length ``L`` ends at byte ``s + L - 1`` and is cut there when that
position is a candidate. Because ``min_size >= 64`` the 64-byte hash window of any
position that can be a cut lies inside the chunk, so the result is exactly that of
running FastCDC chunk by chunk, depends only on the bytes (not on how they were
read), and an insertion only moves cut points near it: later chunks re-synchronise
and keep their boundaries (shifted by the insertion length).

Memory is bounded by the read window (4 MiB by default) plus a few MiB of hash
scratch, whatever the file size.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Callable, Iterator

import numpy as np

__all__ = [
    "DEFAULT_MIN_SIZE",
    "DEFAULT_AVG_SIZE",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_READ_SIZE",
    "WINDOW",
    "cdc_spans",
    "cdc_cuts",
]

DEFAULT_MIN_SIZE = 64 << 10  # bytes
DEFAULT_AVG_SIZE = 256 << 10  # bytes
DEFAULT_MAX_SIZE = 1 << 20  # bytes (= the leaf limit of docs/format.md)
DEFAULT_READ_SIZE = 4 << 20  # bytes read per window by cdc_spans
WINDOW = 64  # bytes that determine the hash of a position

_BLOCK = 1 << 17  # positions hashed per numpy pass (scratch stays in cache)
_CTX = WINDOW - 1  # bytes of left context a position needs
_C1 = np.uint32(0x9E3779B1)  # odd; final mixing multiplier
_C2 = np.uint32(0x85EBCA6B)  # odd; weight of the older 32-byte half


def _gear_table() -> bytes:
    """The fixed gear permutation of the 256 byte values, defined by SHA-256."""
    order = sorted(range(256), key=lambda b: hashlib.sha256(b"tvcfs-cdc-gear-v1" + bytes([b])).digest())
    table = bytearray(256)
    for i, b in enumerate(order):
        table[b] = i
    return bytes(table)


_GEAR = _gear_table()


def _params(min_size: int, avg_size: int, max_size: int, normalization: int) -> tuple[int, int]:
    """Validate sizes (bytes) and return the (strict, loose) thresholds on the hash."""
    for name, v in (("min_size", min_size), ("avg_size", avg_size), ("max_size", max_size)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if min_size < WINDOW:
        raise ValueError(f"min_size must be >= {WINDOW} bytes (the hash window), got {min_size}")
    if not (min_size <= avg_size <= max_size):
        raise ValueError(f"need min_size <= avg_size <= max_size, got {min_size}, {avg_size}, {max_size}")
    if not (0 <= normalization <= 8):
        raise ValueError(f"normalization must be in 0..8, got {normalization}")
    strict = (1 << 32) // (avg_size << normalization)
    loose = min((1 << 32) * (1 << normalization) // avg_size, 1 << 32)
    if strict < 1:
        raise ValueError(f"avg_size {avg_size} too large for normalization {normalization}")
    return strict, loose


class _Scanner:
    """Hashes a stream window by window and keeps the candidate cut positions.

    Positions are absolute offsets (int64) of the *last* byte of a possible chunk.
    Only the last ``_CTX`` bytes of input are kept between windows.
    """

    def __init__(self, origin: int, strict: int, loose: int, read_size: int):
        self.strict_t = np.uint32((1 << 32) - strict)
        self.loose_t = np.uint32((1 << 32) - loose)
        self.read_size = read_size
        # buf = [ _CTX bytes of context | read window ]
        self.buf = bytearray(_CTX + read_size)
        self.view = memoryview(self.buf)
        self.ctx_len = 0  # valid context bytes before the window
        self.scanned = origin  # every position < scanned has been hashed
        self.lpos = np.empty(0, np.int64)  # loose candidates (includes strict ones)
        self.spos = np.empty(0, np.int64)  # strict candidates
        n = min(_BLOCK, read_size) + _CTX
        self._h = np.empty(n, np.uint32)
        self._t = np.empty(n, np.uint32)
        self._b = np.empty(n, np.bool_)
        self._h16 = np.empty(n, np.uint16)
        self._t16 = np.empty(n, np.uint16)

    def feed(self, n: int) -> None:
        """Hash ``n`` new bytes just written at ``view[_CTX:_CTX+n]``."""
        base = self.scanned - self.ctx_len  # absolute offset of the first byte used
        first = _CTX - self.ctx_len
        g = np.frombuffer(self.buf.translate(_GEAR), np.uint8)[first : _CTX + n]
        lnew, snew = [], []
        total = self.ctx_len + n
        # Blocks of positions [a, b) (indices into g), each hashed with _CTX bytes of
        # left context; positions with less than _CTX bytes before them in g are
        # only those at the very start of the stream, never a possible cut.
        a = self.ctx_len
        while a < total:
            b = min(a + _BLOCK, total)
            lo = max(a - _CTX, 0)
            m = b - lo
            h, t = self._h[:m], self._t[:m]
            # passes 1-3 (window 8) cannot exceed 255 * 255 < 2^16: do them on
            # uint16 (half the memory traffic), then widen to uint32.
            h16, t16 = self._h16[:m], self._t16[:m]
            np.copyto(h16, g[lo:b])
            for k in (1, 2, 4):
                np.left_shift(h16[:-k], k, out=t16[:-k])
                h16[k:] += t16[:-k]
            np.copyto(h, h16)
            for k in (8, 16):
                np.left_shift(h[:-k], k, out=t[:-k])
                h[k:] += t[:-k]
            if m > 32:
                np.multiply(h[:-32], _C2, out=t[:-32])
                h[32:] += t[:-32]
            h *= _C1
            np.greater_equal(h, self.loose_t, out=self._b[:m])
            idx = np.flatnonzero(self._b[:m])
            idx = idx[idx >= a - lo]
            if idx.size:
                hv = h[idx]
                pos = idx + (base + lo)
                lnew.append(pos)
                snew.append(pos[hv >= self.strict_t])
            a = b
        if lnew:
            self.lpos = np.concatenate([self.lpos, *lnew])
            self.spos = np.concatenate([self.spos, *snew])
        self.scanned += n
        # keep the last _CTX bytes as context for the next window
        keep = min(_CTX, total)
        src = _CTX + n - keep
        self.buf[_CTX - keep : _CTX] = self.buf[src : src + keep]
        self.ctx_len = keep

    def drop_before(self, pos: int) -> None:
        """Forget candidates before absolute offset ``pos``."""
        if self.lpos.size and self.lpos[0] < pos:
            self.lpos = self.lpos[np.searchsorted(self.lpos, pos) :]
        if self.spos.size and self.spos[0] < pos:
            self.spos = self.spos[np.searchsorted(self.spos, pos) :]


def _chunk_spans(
    readinto: Callable[[memoryview, int], int],
    start: int,
    end: int,
    min_size: int,
    avg_size: int,
    max_size: int,
    normalization: int,
    read_size: int,
) -> Iterator[tuple[int, int]]:
    """Core loop shared by :func:`cdc_spans` and :func:`cdc_cuts`.

    ``readinto(dest, offset)`` fills ``dest`` with the bytes at absolute ``offset``
    and returns how many it wrote (fewer only at end of input).
    """
    strict_t, loose_t = _params(min_size, avg_size, max_size, normalization)
    if start < 0 or end < start:
        raise ValueError(f"bad range [{start}, {end})")
    if read_size < 1:
        raise ValueError(f"read_size must be >= 1 byte, got {read_size}")
    if end - start <= min_size:
        # no cut can fall inside: every chunk but the last is at least min_size
        if end > start:
            yield start, end - start
        return
    # the cuts do not depend on the window size: do not allocate more than the range
    read_size = min(read_size, end - start)
    sc = _Scanner(start, strict_t, loose_t, read_size)
    s = start
    while s < end:
        limit = min(max_size, end - s)
        need = s + limit
        while sc.scanned < need:
            want = min(read_size, end - sc.scanned)
            dest = sc.view[_CTX : _CTX + want]
            got = 0
            while got < want:
                r = readinto(dest[got:], sc.scanned + got)
                if not r:
                    raise EOFError(f"input ended at byte {sc.scanned + got}, before {end}")
                got += r
            sc.feed(want)
        length = limit
        if limit > min_size:
            sc.drop_before(s + min_size - 1)
            sp = sc.spos
            if sp.size and sp[0] - s + 1 < min(avg_size, limit + 1):
                length = int(sp[0]) - s + 1
            else:
                lp = sc.lpos
                i = np.searchsorted(lp, s + avg_size - 1)
                if i < lp.size and lp[i] - s + 1 <= limit:
                    length = int(lp[i]) - s + 1
        yield (s, length)
        s += length


def cdc_spans(
    f,
    start: int,
    end: int | None,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    avg_size: int = DEFAULT_AVG_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    normalization: int = 2,
    read_size: int = DEFAULT_READ_SIZE,
) -> Iterator[tuple[int, int]]:
    """Content-defined chunk spans ``(offset, length)`` (bytes) covering ``[start, end)`` of a file.

    Parameters
    ----------
    f : seekable binary file
        A file object with ``fileno()`` (read with ``os.preadv``, which neither uses
        nor moves the file position) or any object with ``seek`` and ``readinto``
        (e.g. ``io.BytesIO``; its position is moved).
    start, end : int
        Absolute byte range to chunk; ``end=None`` means the end of the file.
    min_size, avg_size, max_size : int
        Chunk sizes in bytes (FastCDC's minimum, expected/"normal" and maximum size);
        ``64 <= min_size <= avg_size <= max_size``. Defaults 64 KiB / 256 KiB / 1 MiB.
    normalization : int
        FastCDC normalization level ``nc``: candidates are ``2^nc`` times rarer before
        ``avg_size`` and ``2^nc`` times more frequent after it. 0 disables it.
    read_size : int
        Bytes read per window (memory is about twice this plus ~3 MiB). The spans do
        not depend on it.

    Yields
    ------
    tuple[int, int]
        Consecutive ``(offset, length)`` spans; every length is ``<= max_size`` and,
        except the last, ``>= min_size``. An empty range yields nothing.

    Raises
    ------
    ValueError
        Bad sizes or range. TypeError: non-int sizes.
    EOFError
        The file ends before ``end``.

    The spans depend only on the bytes of ``[start, end)`` (see the module docstring;
    FastCDC, Xia et al., USENIX ATC 2016, with a 64-byte gear hash).
    """
    fd = None
    try:
        fd = f.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = None
    if end is None:
        if fd is not None:
            end = os.fstat(fd).st_size
        else:
            end = f.seek(0, io.SEEK_END)
    if fd is not None and hasattr(os, "preadv"):

        def readinto(dest: memoryview, off: int) -> int:
            return os.preadv(fd, [dest], off)

    else:

        def readinto(dest: memoryview, off: int) -> int:
            f.seek(off)
            return f.readinto(dest) or 0

    return _chunk_spans(readinto, start, end, min_size, avg_size, max_size, normalization, read_size)


def cdc_cuts(
    data,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    avg_size: int = DEFAULT_AVG_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    normalization: int = 2,
    read_size: int = DEFAULT_READ_SIZE,
) -> list[int]:
    """Chunk lengths (bytes) for an in-memory buffer, in order; they sum to ``len(data)``.

    ``data`` is any C-contiguous bytes-like object (``bytes``, ``bytearray``,
    ``memoryview``, numpy array; read as raw bytes). Same result as
    :func:`cdc_spans` over the same bytes with the same sizes. Raises ValueError /
    TypeError for bad sizes (see :func:`cdc_spans`).
    """
    mv = memoryview(data).cast("B")
    n = mv.nbytes

    def readinto(dest: memoryview, off: int) -> int:
        k = min(len(dest), n - off)
        dest[:k] = mv[off : off + k]
        return k

    return [
        length
        for _, length in _chunk_spans(
            readinto, 0, n, min_size, avg_size, max_size, normalization, min(read_size, max(n, 1))
        )
    ]
