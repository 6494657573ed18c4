"""Chunking: the tensor-aligned safetensors plan, the fallback to content-defined
chunking for malformed files, dtype-agnostic byte-identical round trips
(docs/format.md, "Chunking"). Bounded memory on large files, measured in
subprocesses: tests/test_chunking_memory.py."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from support import MIB
from support.model import make_finetune
from support.safetensors import write_safetensors_raw
from tvcfs.chunking import plan_spans
from tvcfs.chunking.cdc import cdc_spans
from tvcfs.chunking.safetensors import MAX_LEAF, NotSafetensors, parse_header, read_header, tensor_spans


def spans_of(path: str) -> list:
    with open(path, "rb") as f:
        return plan_spans(f)


def header_of(path: str):
    with open(path, "rb") as f:
        return read_header(f, os.fstat(f.fileno()).st_size)


def check_cover(spans, size):
    pos = 0
    for off, ln in spans:
        assert off == pos and 0 < ln <= MAX_LEAF, (off, ln, pos)
        pos += ln
    assert pos == size


def leaf_hashes(path, spans):
    with open(path, "rb") as f:
        return [hashlib.sha256(os.pread(f.fileno(), ln, off)).digest() for off, ln in spans]


# --------------------------------------------------------------------------- the plan
def test_real_model_plan(real_model_dir):
    path = os.path.join(real_model_dir, "model.safetensors")
    size = os.path.getsize(path)
    hdr = header_of(path)
    spans = spans_of(path)
    check_cover(spans, size)
    # the 8-byte length plus the JSON header form the first leaf
    assert spans[0] == (0, hdr.data_start)
    starts = {off for off, _ in spans}
    ends = {off + ln for off, ln in spans}
    assert len(hdr.tensors) == 6 * 16 + 6 + 2  # 6 layers of 16, 6 embeddings tensors, pooler
    for t in hdr.tensors:
        if t.nbytes:
            assert t.start in starts, t.name  # every tensor starts a leaf
            assert t.end in ends, t.name  # and no leaf runs past its end
    # a tensor larger than 1 MiB is cut into 1 MiB pieces counted from its own start
    big = max(hdr.tensors, key=lambda t: t.nbytes)
    inside = [(o, n) for o, n in spans if big.start <= o < big.end]
    assert inside == [(o, min(MAX_LEAF, big.end - o)) for o in range(big.start, big.end, MAX_LEAF)]


def test_unchanged_tensors_keep_their_leaves_when_offsets_move(real_model_dir, tmp_path):
    ft = make_finetune(real_model_dir, str(tmp_path / "ft"))
    old = os.path.join(real_model_dir, "model.safetensors")
    assert len(ft.moved) >= ft.n_tensors - 10  # nearly every tensor moved
    h_old, h_new = header_of(old), header_of(ft.path)
    s_old, s_new = spans_of(old), spans_of(ft.path)
    by_old = dict(zip(s_old, leaf_hashes(old, s_old)))
    by_new = dict(zip(s_new, leaf_hashes(ft.path, s_new)))
    old_t = h_old.by_name()
    for t in h_new.tensors:
        if t.name in ft.changed or t.name == ft.added:
            continue
        o = old_t[t.name]
        a = [by_old[s] for s in s_old if o.start <= s[0] < o.end]
        b = [by_new[s] for s in s_new if t.start <= s[0] < t.end]
        assert a == b, t.name
    new_leaves = set(by_new.values()) - set(by_old.values())
    # new leaves: the header, the two changed tensors, the added one
    assert len(new_leaves) <= 1 + sum(-(-h_new.by_name()[n].nbytes // MAX_LEAF) for n in ft.changed) + 1


def test_large_header_padding_trailing_and_empty_tensors(tmp_path):
    path = str(tmp_path / "x.safetensors")
    big = os.urandom(int(2.5 * MIB))
    tensors = [("a", "F32", [4], os.urandom(16)), ("empty", "F16", [0], b""),
               ("big", "U8", [len(big)], big), ("z", "I64", [3], os.urandom(24))]
    meta = {"notes": "x" * int(1.5 * MIB)}  # header over 1 MiB
    write_safetensors_raw(path, tensors, meta, header_pad=5)
    with open(path, "ab") as f:
        f.write(b"trailing bytes")
    hdr = header_of(path)
    assert hdr.data_start > MAX_LEAF
    spans = spans_of(path)
    check_cover(spans, os.path.getsize(path))
    assert spans[0] == (0, MAX_LEAF) and spans[1] == (MAX_LEAF, hdr.data_start - MAX_LEAF)
    t = hdr.by_name()
    assert (t["a"].start, 16) in spans and (t["z"].start, 24) in spans
    assert [s for s in spans if t["big"].start <= s[0] < t["big"].end] == [
        (t["big"].start, MIB), (t["big"].start + MIB, MIB), (t["big"].start + 2 * MIB, len(big) - 2 * MIB)]
    assert spans[-1] == (t["z"].end, len(b"trailing bytes"))


def test_padding_between_tensors_gets_its_own_leaf():
    hdr_json = json.dumps({"a": {"dtype": "U8", "shape": [10], "data_offsets": [0, 10]},
                           "b": {"dtype": "U8", "shape": [10], "data_offsets": [16, 26]}}).encode()
    prefix = len(hdr_json).to_bytes(8, "little") + hdr_json
    size = len(prefix) + 26
    hdr = parse_header(prefix, size)
    ds = hdr.data_start
    assert tensor_spans(hdr, size) == [(0, ds), (ds, 10), (ds + 10, 6), (ds + 16, 10)]


# --------------------------------------------------------------------------- malformed
def _hdr(obj) -> bytes:
    return json.dumps(obj).encode()


def _good_entry(b, e):
    return {"dtype": "F32", "shape": [(e - b) // 4], "data_offsets": [b, e]}


MALFORMED = {
    "length_huge": lambda data: (1 << 40).to_bytes(8, "little") + data,
    "length_past_eof": lambda data: (len(data) + 100).to_bytes(8, "little") + data,
    "length_zero": lambda data: (0).to_bytes(8, "little") + data,
    "bad_json": lambda data: (lambda h: len(h).to_bytes(8, "little") + h + data)(b'{"a": {"dtype": '),
    "not_utf8": lambda data: (lambda h: len(h).to_bytes(8, "little") + h + data)(b'{"\xff\xfe": 1}'),
    "json_array": lambda data: (lambda h: len(h).to_bytes(8, "little") + h + data)(b"[1, 2, 3]"),
    "entry_not_object": lambda data: (lambda h: len(h).to_bytes(8, "little") + h + data)(_hdr({"a": 5})),
    "offsets_outside": lambda data: (lambda h: len(h).to_bytes(8, "little") + h + data)(
        _hdr({"a": _good_entry(0, len(data) + 4)})),
    "offsets_reversed": lambda data: (lambda h: len(h).to_bytes(8, "little") + h + data)(
        _hdr({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})),
    "negative_offset": lambda data: (lambda h: len(h).to_bytes(8, "little") + h + data)(
        _hdr({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})),
    "overlapping": lambda data: (lambda h: len(h).to_bytes(8, "little") + h + data)(
        _hdr({"a": _good_entry(0, 1 << 20), "b": _good_entry(1 << 19, (1 << 20) + (1 << 19))})),
    "metadata_not_object": lambda data: (lambda h: len(h).to_bytes(8, "little") + h + data)(
        _hdr({"__metadata__": [1], "a": _good_entry(0, 16)})),
    "shorter_than_8": lambda data: b"\x01\x02",
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_safetensors_fall_back_to_cdc(kind, tmp_path, tmp_repo):
    data = np.random.default_rng(len(kind)).integers(0, 256, 3 * MIB, dtype=np.uint8).tobytes()
    blob = MALFORMED[kind](data)
    d = tmp_path / "m"
    d.mkdir()
    p = d / "model.safetensors"
    p.write_bytes(blob)
    with pytest.raises(NotSafetensors):
        header_of(str(p))
    spans = spans_of(str(p))
    check_cover(spans, len(blob))
    with open(p, "rb") as f:
        assert spans == list(cdc_spans(f, 0, len(blob)))
    # stored without error and checked out byte-identically
    res = tmp_repo.commit_dir(str(d), message=kind)
    assert res.changed
    out = tmp_path / "out"
    tmp_repo.checkout("main", str(out))
    assert (out / "model.safetensors").read_bytes() == blob
    assert b"".join(tmp_repo.read_file("main", "model.safetensors")) == blob


# --------------------------------------------------------------------------- dtypes
def test_every_dtype_round_trips_byte_identically(tmp_path, tmp_repo):
    import torch
    from safetensors import safe_open

    rng = np.random.default_rng(7)
    f32 = rng.standard_normal((64, 48)).astype(np.float32)
    t_bf16 = torch.from_numpy(f32).to(torch.bfloat16)
    t_e4m3 = torch.from_numpy(f32).to(torch.float8_e4m3fn)
    t_e5m2 = torch.from_numpy(f32).to(torch.float8_e5m2)

    def tb(t):
        return t.contiguous().view(torch.uint8).numpy().tobytes()

    tensors = [
        ("w.f16", "F16", [64, 48], f32.astype(np.float16).tobytes()),
        ("w.bf16", "BF16", [64, 48], tb(t_bf16)),
        ("w.f8_e4m3", "F8_E4M3", [64, 48], tb(t_e4m3)),
        ("w.f8_e5m2", "F8_E5M2", [64, 48], tb(t_e5m2)),
        ("w.f32", "F32", [64, 48], f32.tobytes()),
        ("w.f64", "F64", [5], rng.standard_normal(5).tobytes()),
        ("i.i8", "I8", [7], rng.integers(-128, 127, 7, dtype=np.int8).tobytes()),
        ("i.u8", "U8", [7], rng.integers(0, 255, 7, dtype=np.uint8).tobytes()),
        ("i.i64", "I64", [3], np.arange(3, dtype=np.int64).tobytes()),
        ("i.bool", "BOOL", [4], bytes([1, 0, 1, 1])),
        ("big.bf16", "BF16", [1024, 768], tb(torch.randn(1024, 768, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16))),
        ("x.future", "F4_E2M1", [16], os.urandom(8)),  # a dtype tvcfs has never heard of
    ]
    meta = {"format": "pt", "note": "fine-tuné ✓", "json": '{"a": [1, 2.5]}'}
    d = tmp_path / "m"
    d.mkdir()
    path = str(d / "model.safetensors")
    write_safetensors_raw(path, tensors, meta, header_pad=3)
    src = open(path, "rb").read()
    # tensor-aligned, not the fallback: dtypes are just bytes to the chunker
    hdr = header_of(path)
    spans = spans_of(path)
    assert {t.start for t in hdr.tensors} <= {o for o, _ in spans}

    tmp_repo.commit_dir(str(d), message="dtypes")
    out = tmp_path / "out"
    tmp_repo.checkout("main", str(out))
    got = (out / "model.safetensors").read_bytes()
    assert got == src
    assert b"".join(tmp_repo.read_file("HEAD", "model.safetensors")) == src
    # readable by safetensors itself: metadata and values intact (fp8/bf16 through torch)
    known = [t for t in tensors if t[1] != "F4_E2M1"]
    keep = str(tmp_path / "known.safetensors")
    write_safetensors_raw(keep, known, meta)
    d2 = tmp_path / "m2"
    d2.mkdir()
    os.replace(keep, d2 / "model.safetensors")
    tmp_repo.commit_dir(str(d2), branch="known")
    out2 = tmp_path / "out2"
    tmp_repo.checkout("known", str(out2))
    with safe_open(str(out2 / "model.safetensors"), "pt") as f:
        assert f.metadata() == meta
        assert torch.equal(f.get_tensor("w.bf16").view(torch.int16), t_bf16.view(torch.int16))
        assert torch.equal(f.get_tensor("w.f8_e4m3").view(torch.uint8), t_e4m3.view(torch.uint8))
        assert torch.equal(f.get_tensor("w.f8_e5m2").view(torch.uint8), t_e5m2.view(torch.uint8))
        assert f.get_tensor("w.f8_e4m3").dtype == torch.float8_e4m3fn
        assert np.array_equal(f.get_tensor("w.f16").numpy(), f32.astype(np.float16))
