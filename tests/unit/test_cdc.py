"""Tests for tvcfs.chunking.cdc (FastCDC-style content-defined chunking)."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc

import numpy as np
import pytest

from tvcfs.chunking.cdc import (
    DEFAULT_AVG_SIZE,
    DEFAULT_MAX_SIZE,
    DEFAULT_MIN_SIZE,
    cdc_cuts,
    cdc_spans,
)

SMALL = dict(min_size=256, avg_size=1024, max_size=4096)


def rand(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def prng(n: int) -> bytes:
    """Pseudo-random bytes defined by SHA-256 alone (independent of numpy)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"tvcfs-cdc-golden-%d" % i).digest()
        i += 1
    return bytes(out[:n])


def check_bounds(lengths, total, min_size, max_size):
    assert sum(lengths) == total
    assert all(0 < n <= max_size for n in lengths)
    assert all(n >= min_size for n in lengths[:-1])


def test_empty_and_tiny():
    assert cdc_cuts(b"") == []
    assert list(cdc_spans(io.BytesIO(b""), 0, 0)) == []
    assert cdc_cuts(b"x") == [1]
    assert cdc_cuts(b"abc" * 10) == [30]
    data = rand(DEFAULT_MIN_SIZE)
    assert cdc_cuts(data) == [DEFAULT_MIN_SIZE]
    assert list(cdc_spans(io.BytesIO(b"hello"), 1, 4)) == [(1, 3)]


def test_bounds_and_average_small_params():
    data = rand(2 << 20, seed=1)
    lengths = cdc_cuts(data, **SMALL)
    check_bounds(lengths, len(data), 256, 4096)
    mean = np.mean(lengths[:-1])
    assert 1024 / 2 <= mean <= 1024 * 2, mean


def test_bounds_and_average_defaults():
    data = rand(24 << 20, seed=2)
    lengths = cdc_cuts(data)
    check_bounds(lengths, len(data), DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE)
    mean = np.mean(lengths[:-1])
    assert DEFAULT_AVG_SIZE / 2 <= mean <= DEFAULT_AVG_SIZE * 2, mean


@pytest.mark.parametrize("nc", [0, 1, 3])
def test_normalization_levels(nc):
    data = rand(1 << 20, seed=3)
    lengths = cdc_cuts(data, normalization=nc, **SMALL)
    check_bounds(lengths, len(data), 256, 4096)


def test_golden_cut_points():
    """Cut points are part of content addresses: they must never change silently."""
    data = prng(4 << 20)
    assert cdc_cuts(data) == [
        321007, 336607, 309478, 319274, 348372, 291169, 434603,
        296259, 345114, 346634, 340957, 411452, 93378,
    ]  # fmt: skip
    assert cdc_cuts(data[:200000], **SMALL)[:12] == [
        1388, 1222, 1572, 1010, 1076, 1329, 1072, 1267, 1104, 1110, 1572, 1058,
    ]  # fmt: skip


def test_spans_equal_cuts_for_any_read_size(tmp_path):
    data = rand(300_000, seed=4)
    expected = cdc_cuts(data, **SMALL)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    for read_size in (63, 1000, 4096, 65537, 1 << 20):
        assert cdc_cuts(data, read_size=read_size, **SMALL) == expected
        spans = list(cdc_spans(io.BytesIO(data), 0, len(data), read_size=read_size, **SMALL))
        assert [n for _, n in spans] == expected
        with open(path, "rb") as f:  # os.preadv path
            spans2 = list(cdc_spans(f, 0, None, read_size=read_size, **SMALL))
        assert spans2 == spans
    # offsets are consecutive
    off = 0
    for o, n in spans:
        assert o == off
        off += n
    assert off == len(data)


def test_subrange_depends_only_on_its_bytes(tmp_path):
    data = rand(400_000, seed=5)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    start, end = 12_345, 345_678
    with open(path, "rb") as f:
        spans = list(cdc_spans(f, start, end, read_size=7000, **SMALL))
    assert spans[0][0] == start and sum(n for _, n in spans) == end - start
    assert [n for _, n in spans] == cdc_cuts(data[start:end], **SMALL)


def test_insertion_near_start_keeps_later_boundaries():
    data = rand(8 << 20, seed=6)
    ins = data[:5000] + rand(100, seed=7) + data[5000:]
    a = np.cumsum(cdc_cuts(data))
    b = np.cumsum(cdc_cuts(ins)) - 100
    later = set(a[a > 5000 + DEFAULT_MAX_SIZE].tolist())
    assert later and later <= set(b.tolist())
    # also with small chunks: everything after the first couple of cuts realigns
    a = np.cumsum(cdc_cuts(data[: 1 << 20], **SMALL))
    b = np.cumsum(cdc_cuts(ins[: (1 << 20) + 100], **SMALL)) - 100
    common = set(a.tolist()) & set(b.tolist())
    assert len(common) >= 0.98 * len(a)


def test_constant_runs_give_max_size_chunks():
    """No byte value makes a constant run a candidate at the default thresholds, so
    zero-filled regions become max-size chunks, not floods of min-size ones."""
    n = DEFAULT_AVG_SIZE + DEFAULT_MIN_SIZE
    for v in range(256):
        assert cdc_cuts(bytes([v]) * n) == [n], v
    assert cdc_cuts(bytes(3 << 20)) == [DEFAULT_MAX_SIZE] * 3


def test_accepts_bytes_likes():
    data = rand(50_000, seed=8)
    expected = cdc_cuts(data, **SMALL)
    assert cdc_cuts(bytearray(data), **SMALL) == expected
    assert cdc_cuts(memoryview(data), **SMALL) == expected
    assert cdc_cuts(np.frombuffer(data, np.uint8), **SMALL) == expected
    assert cdc_cuts(np.frombuffer(data, np.uint32), **SMALL) == expected


def test_errors(tmp_path):
    with pytest.raises(ValueError):
        cdc_cuts(b"x", min_size=32, avg_size=1024, max_size=4096)
    with pytest.raises(ValueError):
        cdc_cuts(b"x", min_size=2048, avg_size=1024, max_size=4096)
    with pytest.raises(ValueError):
        cdc_cuts(b"x", min_size=256, avg_size=8192, max_size=4096)
    with pytest.raises(TypeError):
        cdc_cuts(b"x", min_size=256.0, avg_size=1024, max_size=4096)
    with pytest.raises(ValueError):
        list(cdc_spans(io.BytesIO(b"abc"), 2, 1))
    path = tmp_path / "short.bin"
    path.write_bytes(b"a" * 1000)
    with open(path, "rb") as f, pytest.raises(EOFError):
        list(cdc_spans(f, 0, 5000, **SMALL))


def test_large_sparse_file_memory_bounded(tmp_path):
    """A 320 MB file streams through with a few MiB of Python/numpy allocations."""
    size = 320 << 20
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: zeros cost no disk
        for i in range(0, size, 40 << 20):  # some random islands
            f.seek(i + 12345)
            f.write(rand(1 << 20, seed=i))
    tracemalloc.start()
    try:
        count = total = 0
        with open(path, "rb") as f:
            for off, n in cdc_spans(f, 0, size):
                assert off == total and 0 < n <= DEFAULT_MAX_SIZE
                total += n
                count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert count >= size // DEFAULT_MAX_SIZE
    assert peak < 24 << 20, peak
    os.unlink(path)
