"""safetensors dtypes: item sizes and conversion between raw bytes and numpy.

safetensors stores every tensor as raw little-endian bytes tagged with a dtype
string (``"F32"``, ``"BF16"``, ``"F8_E4M3"`` ...; the list is the ``Dtype`` enum of
the safetensors Rust crate). numpy has no bfloat16 and no float8 types, so those
are converted through their raw bit patterns:

* decoding (bytes -> float32) is exact for every supported dtype whose values are
  representable in float32 (all floats up to 32 bits, all 8/16-bit integers, and
  integers of magnitude <= 2**24); :func:`decode` returns exact native arrays for
  64-bit floats and all integers;
* encoding (float32 -> bytes) rounds to nearest, ties to even, and is bit-for-bit
  identical to ``torch.Tensor.to(dtype)`` of torch 2.13 on CPU, NaN and infinity
  included (checked in ``tests/unit/test_dtypes.py``):

  - BF16: ``(bits + 0x7FFF + ((bits >> 16) & 1)) >> 16`` (the rounding used by
    c10::BFloat16); every NaN becomes ``0xFFFF`` as torch 2.13 produces.
  - F16: numpy's IEEE conversion (round to nearest even); NaNs are rebuilt as torch
    does: ``sign | 0x7E00 | (mantissa >> 13)`` (quiet, top payload bits kept).
  - F8_E4M3 (OCP E4M3FN: bias 7, no infinities, NaN = S.1111.111, max 448):
    round to nearest even; magnitudes above 448 and +-inf saturate to +-448 (torch
    2.13's CPU cast saturates); NaN -> ``0x7F | sign``.
  - F8_E5M2 (bias 15, IEEE-like with infinities, max 57344): round to nearest
    even; overflow gives +-inf; NaN -> ``0x7F | sign``.
    Both float8 casts follow c10's ``fp8e4m3fn_from_fp32_value`` /
    ``fp8e5m2_from_fp32_value`` bit algorithms (subnormals by adding a magic
    power of two in float32, normals by biased integer rounding).
  - integers: round half to even, saturate to the type's range, NaN -> 0. This
    deliberately differs from torch, whose float -> int cast truncates toward zero
    and is undefined out of range: a merged integer tensor (e.g. an averaged
    counter) should be the nearest representable value.
  - BOOL: ``x != 0`` (NaN is True), as torch.

Errors: :class:`UnsupportedDTypeError` (a ``ValueError``) for dtype strings that are
unknown or not supported here (complex, sub-byte floats, FNUZ/E8M0 float8), and
``ValueError`` when a buffer's length is not a multiple of the item size or does
not match the given shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Sequence

import numpy as np

from .chunking.safetensors import DTYPE_BYTES

__all__ = [
    "DType",
    "DTYPES",
    "UnsupportedDTypeError",
    "dtype_info",
    "itemsize",
    "is_float",
    "decode",
    "to_float32",
    "to_float64",
    "decode_into",
    "from_float32",
    "encode_like",
]


class UnsupportedDTypeError(ValueError):
    """A safetensors dtype string that tvcfs cannot convert."""


@dataclass(frozen=True)
class DType:
    """One safetensors dtype.

    ``name``: the safetensors string; ``itemsize``: bytes per element;
    ``kind``: ``"f"`` float, ``"i"`` signed int, ``"u"`` unsigned int, ``"b"`` bool;
    ``storage``: the little-endian numpy dtype holding the raw elements (for BF16
    and float8 an unsigned integer holding the bits); ``native``: the numpy dtype
    :func:`decode` returns.
    """

    name: str
    itemsize: int
    kind: str
    storage: np.dtype
    native: np.dtype


def _d(name: str, kind: str, storage: str, native: str) -> DType:
    return DType(name, DTYPE_BYTES[name], kind, np.dtype(storage), np.dtype(native))


DTYPES: dict[str, DType] = {
    d.name: d
    for d in [
        _d("F64", "f", "<f8", "<f8"),
        _d("F32", "f", "<f4", "<f4"),
        _d("F16", "f", "<f2", "<f2"),
        _d("BF16", "f", "<u2", "<f4"),
        _d("F8_E4M3", "f", "u1", "<f4"),
        _d("F8_E5M2", "f", "u1", "<f4"),
        _d("I64", "i", "<i8", "<i8"),
        _d("I32", "i", "<i4", "<i4"),
        _d("I16", "i", "<i2", "<i2"),
        _d("I8", "i", "i1", "i1"),
        _d("U64", "u", "<u8", "<u8"),
        _d("U32", "u", "<u4", "<u4"),
        _d("U16", "u", "<u2", "<u2"),
        _d("U8", "u", "u1", "u1"),
        _d("BOOL", "b", "u1", "?"),
    ]
}

# Known to safetensors but not convertible here.
_KNOWN_UNSUPPORTED = {"C64", "F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"}


def dtype_info(name: str) -> DType:
    """The :class:`DType` for a safetensors dtype string.

    Raises :class:`UnsupportedDTypeError` for unknown or unsupported names.
    """
    try:
        return DTYPES[name]
    except KeyError:
        if name in _KNOWN_UNSUPPORTED:
            raise UnsupportedDTypeError(f"safetensors dtype {name!r} is not supported by tvcfs") from None
        raise UnsupportedDTypeError(f"unknown safetensors dtype {name!r}") from None


def itemsize(name: str) -> int:
    """Bytes per element of safetensors dtype ``name`` (e.g. ``"BF16"`` -> 2)."""
    return dtype_info(name).itemsize


def is_float(name: str) -> bool:
    """True for floating-point dtypes (F64, F32, F16, BF16, F8_*)."""
    return dtype_info(name).kind == "f"


# --------------------------------------------------------------------------- float8 tables


def _fp8_table(exp_bits: int, man_bits: int, bias: int, ieee_special: bool) -> np.ndarray:
    """float32 value of each of the 256 codes of a float8 format."""
    out = np.empty(256, dtype=np.float32)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        e = (code >> man_bits) & ((1 << exp_bits) - 1)
        m = code & ((1 << man_bits) - 1)
        emax = (1 << exp_bits) - 1
        if ieee_special and e == emax:
            v = float("inf") if m == 0 else float("nan")
        elif not ieee_special and e == emax and m == (1 << man_bits) - 1:
            v = float("nan")
        elif e == 0:
            v = m * 2.0 ** (1 - bias - man_bits)
        else:
            v = (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)
        out[code] = sign * v
    return out


# OCP 8-bit floating point specification (E4M3FN and E5M2), also c10/util/Float8_*.h
_E4M3_TABLE = _fp8_table(4, 3, 7, ieee_special=False)
_E5M2_TABLE = _fp8_table(5, 2, 15, ieee_special=True)


def _f32_bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def _encode_bf16(x: np.ndarray) -> np.ndarray:
    u = _f32_bits(x)
    out = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0xFFFF
    return out


def _encode_f16(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        out = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        u = x.view(np.uint32)[nan]
        out[nan] = (((u >> 16) & 0x8000) | 0x7E00 | ((u & 0x7FFFFF) >> 13)).astype(np.uint16)
    return out


def _encode_fp8(x: np.ndarray, e4m3: bool) -> np.ndarray:
    """Float32 -> float8 codes, following c10's fp8e4m3fn/fp8e5m2_from_fp32_value."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    sign = (u >> np.uint32(24)) & np.uint32(0x80)
    a = u & np.uint32(0x7FFFFFFF)
    nan = a > np.uint32(0x7F800000)
    if e4m3:
        man_shift, sub_limit, magic, exp_adj = 20, 121, 141, 7 - 127
        a = np.minimum(a, np.uint32(0x43E00000))  # saturate at 448 (and +-inf)
    else:
        man_shift, sub_limit, magic, exp_adj = 21, 113, 134, 15 - 127
        a = np.minimum(a, np.uint32(143 << 23))  # >= 65536 -> inf below
    res = np.empty_like(a)
    sub = a < np.uint32(sub_limit << 23)
    if sub.any():
        magic_bits = np.uint32(magic << 23)
        f = a[sub].view(np.float32) + magic_bits.view(np.float32)
        res[sub] = f.view(np.uint32) - magic_bits
    nor = ~sub
    if nor.any():
        an = a[nor]
        odd = (an >> np.uint32(man_shift)) & np.uint32(1)
        bias_add = np.uint32(((exp_adj << 23) + (1 << (man_shift - 1)) - 1) & 0xFFFFFFFF)
        res[nor] = (an + bias_add + odd) >> np.uint32(man_shift)
    if not e4m3:
        res = np.minimum(res, np.uint32(0x7C))  # 65536 and above -> inf
    res = res | sign
    if nan.any():
        res[nan] = np.uint32(0x7F) | sign[nan]
    return res.astype(np.uint8)


def _encode_int(x: np.ndarray, dt: np.dtype) -> np.ndarray:
    info = np.iinfo(dt)
    r = np.rint(np.asarray(x, dtype=np.float64))
    r = np.nan_to_num(r, nan=0.0)
    out = np.empty(r.shape, dtype=dt)
    hi = r >= float(info.max)  # float(2**63-1) == 2**63, so compare with >=
    lo = r <= float(info.min)
    mid = ~(hi | lo)
    out[mid] = r[mid].astype(dt)
    out[hi] = info.max
    out[lo] = info.min
    return out


# --------------------------------------------------------------------------- public API


def _raw(buf, d: DType, shape: Sequence[int] | None) -> np.ndarray:
    mv = memoryview(buf).cast("B")
    if len(mv) % d.itemsize:
        raise ValueError(f"{len(mv)} bytes is not a multiple of the {d.name} item size {d.itemsize}")
    arr = np.frombuffer(mv, dtype=d.storage)
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if prod(shape) != arr.size:
            raise ValueError(f"{arr.size} {d.name} elements do not fill shape {shape}")
        arr = arr.reshape(shape)
    return arr


def decode(buf, dtype: str, shape: Sequence[int] | None = None) -> np.ndarray:
    """Raw little-endian bytes -> numpy array, exactly.

    ``buf``: any buffer (bytes, memoryview, mmap slice); ``dtype``: safetensors
    dtype string; ``shape``: optional shape (default 1-D). Returns a read-only view
    where possible. Native numpy types are used where they exist (F64, F32, F16,
    integers, BOOL as ``bool``); BF16 and F8_* become float32 (exact: every value of
    those formats is a float32 value).
    """
    d = dtype_info(dtype)
    raw = _raw(buf, d, shape)
    if d.name == "BF16":
        return (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if d.name == "F8_E4M3":
        return _E4M3_TABLE[raw]
    if d.name == "F8_E5M2":
        return _E5M2_TABLE[raw]
    if d.name == "BOOL":
        return raw != 0
    return raw


def to_float32(buf, dtype: str, shape: Sequence[int] | None = None) -> np.ndarray:
    """Raw bytes -> float32 array (a new writable array, or a view for F32).

    Exact for all float dtypes of <= 32 bits and integers of magnitude <= 2**24;
    F64 and wider integers are rounded to nearest float32. BOOL gives 0.0 / 1.0.
    """
    a = decode(buf, dtype, shape)
    if a.dtype == np.float32:
        return a
    with np.errstate(over="ignore", invalid="ignore"):
        return a.astype(np.float32)


def decode_into(buf, dtype: str, out: np.ndarray) -> np.ndarray:
    """Decode raw bytes into the preallocated float array ``out`` (1-D float32 or
    float64, at least as many elements as ``buf`` holds) without a temporary of the
    buffer's size; returns the filled view ``out[:n]``.

    Values are those of :func:`decode` cast to ``out``'s dtype: exact for every
    supported dtype into float64 (64-bit integers beyond 2**53 are rounded); into
    float32 as :func:`to_float32` (F64 and wide integers rounded to nearest). BF16
    goes through its raw bits (``bits << 16``, written straight into a float32
    ``out``), float8 through a 256-entry table.
    Raises :class:`UnsupportedDTypeError`, and ``ValueError`` when ``out`` is too
    short or not float32/float64.
    """
    d = dtype_info(dtype)
    raw = _raw(buf, d, None)
    n = raw.size
    if out.dtype not in (np.float32, np.float64) or out.ndim != 1 or out.size < n:
        raise ValueError(f"decode_into needs a 1-D float32/float64 array of >= {n} elements")
    o = out[:n]
    if d.name == "BF16" and o.dtype == np.float32:
        np.left_shift(raw, np.uint32(16), out=o.view(np.uint32), dtype=np.uint32)
    elif d.name == "BF16":  # float64 output: through a float32 temporary
        np.copyto(o, (raw.astype(np.uint32) << np.uint32(16)).view(np.float32))
    elif d.name in ("F8_E4M3", "F8_E5M2"):
        table = _E4M3_TABLE if d.name == "F8_E4M3" else _E5M2_TABLE
        np.take(table if o.dtype == np.float32 else table.astype(np.float64), raw, out=o)
    elif d.name == "BOOL":
        np.copyto(o, raw != 0)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            np.copyto(o, raw, casting="unsafe")
    return o


def to_float64(buf, dtype: str, shape: Sequence[int] | None = None) -> np.ndarray:
    """Raw bytes -> float64 array (exact for every supported dtype except 64-bit
    integers beyond 2**53). Used for numeric diff summaries."""
    return decode(buf, dtype, shape).astype(np.float64)


def from_float32(arr, dtype: str) -> bytes:
    """float32 array (any shape, C order) -> raw little-endian bytes of ``dtype``.

    Rounding and special values as described in the module docstring (bit-exact
    with torch 2.13 CPU casts for float dtypes). F64 is exact.
    """
    d = dtype_info(dtype)
    x = np.ascontiguousarray(arr, dtype=np.float32)
    if d.name == "F32":
        out = x
    elif d.name == "F64":
        with np.errstate(invalid="ignore"):
            out = x.astype("<f8")
    elif d.name == "F16":
        out = _encode_f16(x)
    elif d.name == "BF16":
        out = _encode_bf16(x)
    elif d.name == "F8_E4M3":
        out = _encode_fp8(x, e4m3=True)
    elif d.name == "F8_E5M2":
        out = _encode_fp8(x, e4m3=False)
    elif d.name == "BOOL":
        out = (x != 0).astype(np.uint8)
    else:
        out = _encode_int(x, d.storage)
    return np.ascontiguousarray(out).astype(out.dtype.newbyteorder("<"), copy=False).tobytes()


def encode_like(arr, dtype: str) -> bytes:
    """Alias of :func:`from_float32` that also accepts float64 input: float64 is
    first rounded to float32 (so merge arithmetic done in float64 follows the same
    float32 -> dtype rounding), except for F64 output, which keeps float64."""
    if dtype == "F64":
        return np.ascontiguousarray(arr, dtype="<f8").tobytes()
    return from_float32(np.asarray(arr, dtype=np.float32), dtype)
