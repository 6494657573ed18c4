"""tvcfs.dtypes against torch 2.13 CPU casts, bit for bit."""

import numpy as np
import pytest

from tvcfs import dtypes

torch = pytest.importorskip("torch")

TORCH = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
UINT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def torch_bytes(t):
    """Raw bytes of a torch tensor (via an integer view, so no numpy float8 needed)."""
    t = t.contiguous()
    return t.view(UINT[t.element_size()]).numpy().tobytes()


def probe_values():
    """float32 values that exercise rounding: random bit patterns, every midpoint
    between neighbouring bf16 / f16 / fp8 values and its float32 neighbours,
    specials, overflow thresholds and subnormals."""
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)]
    parts.append(rng.normal(0, 1, 20_000).astype(np.float32))
    parts.append((rng.normal(0, 1, 20_000) * 1e-3).astype(np.float32))
    mids = []
    # bf16 and f16: exact midpoints are the codes' values plus half an ulp
    bf = (np.arange(0, 0x7F80, 7, dtype=np.uint32) << 16).view(np.float32)
    bf_next = ((np.arange(0, 0x7F80, 7, dtype=np.uint32) + 1) << 16).view(np.float32)
    mids.append(((bf.astype(np.float64) + bf_next.astype(np.float64)) / 2).astype(np.float32))
    f16 = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids.append(((f16[:-1] + f16[1:]) / 2).astype(np.float32))
    for table in (dtypes._E4M3_TABLE, dtypes._E5M2_TABLE):
        v = np.sort(np.unique(np.abs(table[np.isfinite(table)]).astype(np.float64)))
        v = np.append(v, [464.0, 480.0, 500.0, 57344.0, 61440.0, 65536.0, 70000.0])
        mids.append(((v[:-1] + v[1:]) / 2).astype(np.float32))
        mids.append(v.astype(np.float32))
    m = np.concatenate(mids)
    mids = [m, np.nextafter(m, np.float32(np.inf)), np.nextafter(m, np.float32(0))]
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, 3.4e38, -3.4e38, 1e-40], dtype=np.float32)
    nan_bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0x7FA00000, 0x7F812345], dtype=np.uint32)
    x = np.concatenate(parts + mids + [specials, nan_bits.view(np.float32)])
    return np.concatenate([x, -x])


@pytest.mark.parametrize("name", ["F32", "F64", "F16", "BF16", "F8_E4M3", "F8_E5M2", "BOOL"])
def test_encode_float_matches_torch(name):
    x = probe_values()
    got = dtypes.from_float32(x, name)
    want = torch_bytes(torch.from_numpy(x).to(TORCH[name]))
    if got != want:
        g = np.frombuffer(got, dtype=f"u{dtypes.itemsize(name)}")
        w = np.frombuffer(want, dtype=f"u{dtypes.itemsize(name)}")
        bad = np.nonzero(g != w)[0][:10]
        pytest.fail(f"{name}: {len(np.nonzero(g != w)[0])} mismatches, e.g. "
                    + ", ".join(f"{x[i]!r} (0x{x.view(np.uint32)[i]:08x}) -> 0x{g[i]:x} want 0x{w[i]:x}" for i in bad))


@pytest.mark.parametrize("name", ["F16", "BF16", "F8_E4M3", "F8_E5M2"])
def test_decode_every_code_matches_torch(name):
    size = dtypes.itemsize(name)
    codes = np.arange(2 ** (8 * size), dtype=np.uint64).astype(f"<u{size}")
    raw = codes.tobytes()
    got = dtypes.to_float32(raw, name)
    t = torch.frombuffer(bytearray(raw), dtype=UINT[size]).view(TORCH[name]).to(torch.float32).numpy()
    assert got.dtype == np.float32 and got.shape == (len(codes),)
    nan = np.isnan(t)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], t.view(np.uint32)[~nan])


def test_bf16_decode_is_bit_shift_and_roundtrip():
    codes = np.arange(65536, dtype=np.uint32).astype("<u2")
    f = dtypes.to_float32(codes.tobytes(), "BF16")
    np.testing.assert_array_equal(f.view(np.uint32), codes.astype(np.uint32) << 16)
    finite = np.isfinite(f) | np.isinf(f)
    back = np.frombuffer(dtypes.from_float32(f[finite], "BF16"), dtype="<u2")
    np.testing.assert_array_equal(back, codes[finite])


@pytest.mark.parametrize("name", ["F8_E4M3", "F8_E5M2"])
def test_fp8_roundtrip_all_non_nan_codes(name):
    codes = np.arange(256, dtype=np.uint8)
    f = dtypes.to_float32(codes.tobytes(), name)
    keep = ~np.isnan(f)
    back = np.frombuffer(dtypes.from_float32(f[keep], name), dtype=np.uint8)
    np.testing.assert_array_equal(back, codes[keep])


def test_fp8_known_values():
    # OCP spec: E4M3FN max 448 (0x7E), min subnormal 2**-9 (0x01); E5M2 max 57344 (0x7B), inf 0x7C
    e4 = dtypes.to_float32(bytes([0x7E, 0x01, 0x08, 0xFE, 0x7F]), "F8_E4M3")
    assert e4[:4].tolist() == [448.0, 2.0**-9, 2.0**-6, -448.0] and np.isnan(e4[4])
    e5 = dtypes.to_float32(bytes([0x7B, 0x7C, 0x01, 0x3C]), "F8_E5M2")
    assert e5.tolist() == [57344.0, np.inf, 2.0**-16, 1.0]


@pytest.mark.parametrize("name", ["I64", "I32", "I16", "I8", "U8"])
def test_integers_decode_exact_and_encode_in_range(name):
    t = TORCH[name]
    info = torch.iinfo(t)
    vals = torch.tensor([info.min, info.min + 1, -1 if info.min < 0 else 0, 0, 1, 7, info.max - 1, info.max], dtype=t)
    raw = torch_bytes(vals)
    dec = dtypes.decode(raw, name)
    assert dec.tolist() == vals.tolist()
    # integral float32 values in range encode exactly like torch (no rounding involved)
    small = np.array([0, 1, 5, 100, 127], dtype=np.float32)
    if info.min < 0:
        small = np.concatenate([small, -small])
    assert dtypes.from_float32(small, name) == torch_bytes(torch.from_numpy(small).to(t))


def test_integer_encode_rounds_half_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1e10, -1e10, np.nan, np.inf], dtype=np.float32)
    got = np.frombuffer(dtypes.from_float32(x, "I8"), dtype=np.int8).tolist()
    assert got == [0, 2, 2, 0, -2, 127, -128, 0, 127]
    got = np.frombuffer(dtypes.from_float32(x, "I64"), dtype="<i8").tolist()
    assert got[:5] == [0, 2, 2, 0, -2] and got[5] == 10_000_000_000 and got[7] == 0
    assert got[8] == 2**63 - 1


def test_itemsize_and_errors():
    assert [dtypes.itemsize(n) for n in ("F64", "F32", "F16", "BF16", "F8_E4M3", "I64", "BOOL")] == [8, 4, 2, 2, 1, 8, 1]
    with pytest.raises(dtypes.UnsupportedDTypeError, match="unknown"):
        dtypes.itemsize("F12")
    with pytest.raises(dtypes.UnsupportedDTypeError, match="not supported"):
        dtypes.decode(b"\0" * 8, "C64")
    with pytest.raises(ValueError, match="multiple"):
        dtypes.decode(b"\0" * 3, "F16")
    with pytest.raises(ValueError, match="shape"):
        dtypes.decode(b"\0" * 8, "F16", (3,))
    assert dtypes.decode(b"\0" * 8, "F16", (2, 2)).shape == (2, 2)


def test_f64_decode_exact():
    x = np.array([1 / 3, 1e300, -2.5], dtype="<f8")
    np.testing.assert_array_equal(dtypes.decode(x.tobytes(), "F64"), x)
    np.testing.assert_array_equal(dtypes.to_float64(x.tobytes(), "F64"), x)
    with np.errstate(over="ignore"):
        assert dtypes.to_float32(x.tobytes(), "F64").tolist() == x.astype(np.float32).tolist()


@pytest.mark.parametrize("name", sorted(dtypes.DTYPES))
def test_decode_into_equals_decode(name):
    """decode_into fills a preallocated float32/float64 buffer with decode()'s values
    (every code for 8/16-bit dtypes, probe values for wider ones), NaN bits kept."""
    d = dtypes.dtype_info(name)
    if d.itemsize <= 2:
        raw = np.arange(2 ** (8 * d.itemsize), dtype=np.uint16 if d.itemsize == 2 else np.uint8).tobytes()
    elif d.kind == "f":
        raw = dtypes.from_float32(probe_values(), name)
    else:
        raw = np.random.default_rng(2).integers(-2**62, 2**62, 5000).astype(d.storage).tobytes()
    n = len(raw) // d.itemsize
    for out_dt in (np.float32, np.float64):
        out = np.full(n + 3, 7, dtype=out_dt)
        with np.errstate(over="ignore", invalid="ignore"):
            got = dtypes.decode_into(raw, name, out)
            want = dtypes.decode(raw, name).astype(out_dt)
        assert got.shape == (n,) and got.dtype == out_dt
        assert np.shares_memory(got, out) and out[n] == 7
        if out_dt == np.float32 and d.kind == "f":
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
        else:
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="float32/float64"):
        dtypes.decode_into(raw, name, np.empty(n - 1, np.float32))
    with pytest.raises(ValueError, match="float32/float64"):
        dtypes.decode_into(raw, name, np.empty(n, np.int32))
