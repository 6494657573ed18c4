"""Packed blocks: storage encodings below the CID (docs/format.md "Packed blocks",
docs/repository.md "Packing"): byte-grouped zstd and XOR deltas of tensors, chains
bounded, every decoded block checked against its CID, gc keeping the bases kept
deltas need, corrupted or base-less packed blocks refused (never wrong bytes), and
checkouts and mount reads of packed commits byte-identical."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest
from support.safetensors import write_safetensors_raw
from support.model import model_pair, perturb, tensor_bytes
from support.trees import assert_same_tree

from tvcfs.dtypes import DTYPES
from tvcfs.encoding.cid import RAW, cid_codec, cid_str, make_cid
from tvcfs.errors import CorruptBlock
from tvcfs.gc import collect_garbage, fsck
from tvcfs.pack import commit_storage, pack
from tvcfs.store import encodings
from tvcfs.store.lmdb_store import LMDBStore, MissingBase

AUTHOR = {"TVCFS_AUTHOR_NAME": "t", "TVCFS_AUTHOR_EMAIL": "t@example.org"}


# --------------------------------------------------------------------------- helpers
def file_sha(repo, commit, path="model.safetensors") -> str:
    return hashlib.sha256(b"".join(bytes(b) for b in repo.read_file(commit, path))).hexdigest()


def disk_sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def packed_infos(repo) -> dict:
    """``{cid: BlockInfo}`` of every packed block."""
    out = {}
    with repo.store.view(verify=False) as v:
        for cid, _, packed in v.stored():
            if packed:
                out[cid] = v.info(cid)
    return out


def fresh_reads(repo) -> None:
    """Forget what this process decoded and verified (a new process's view)."""
    repo.store.decoded.__init__()
    repo.store.verified.__init__()


def run_readers(reader, n: int, timeout: float) -> int:
    """Run ``reader(k)`` for k in 0..n-1 in threads at once; returns how many are
    still running after ``timeout`` seconds (hung)."""
    import threading

    threads = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return sum(t.is_alive() for t in threads)


def chain_length(repo, cid) -> int:
    n = 0
    with repo.store.view(verify=False) as v:
        info = v.info(cid)
        while info is not None and info.base is not None:
            n += 1
            info = v.info(info.base)
    return n


@pytest.fixture(params=["c", "numpy"])
def kernels(request, monkeypatch):
    """Run the test with the compiled decode kernels (``tvcfs.store._planes``) and
    again with numpy's (``encodings._c`` unset for the test): both must give the
    same bytes and the same errors. The "c" run is skipped when the kernels are not
    in use here (``TVCFS_NO_C`` set; unbuilt, ``test_the_compiled_kernels_are_built``
    fails)."""
    if request.param == "numpy":
        monkeypatch.setattr(encodings, "_c", None)
    elif encodings._c is None:
        pytest.skip("the compiled kernels are not in use (TVCFS_NO_C, or not built)")
    return request.param


def put_raw_value(repo, db: str, cid: bytes, value: bytes | None) -> None:
    """Damage the store behind tvcfs's back: set (or delete) ``cid`` in sub-database
    ``db`` with a plain LMDB write."""
    st = repo.store
    with st.env.begin(write=True) as txn:
        if value is None:
            txn.delete(cid, db=st.dbs[db])
        else:
            txn.put(cid, value, db=st.dbs[db])


# --------------------------------------------------------------------------- encodings
@pytest.mark.parametrize("version", encodings.VERSIONS)
@pytest.mark.parametrize("elem", [1, 2, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 7, 4099, 1 << 16])
def test_group_ungroup_and_encode_round_trip(elem, n, version, kernels):
    rng = np.random.default_rng(n * 10 + elem)
    data = (rng.integers(0, 4, n, dtype=np.uint8) * 3).tobytes()
    assert encodings.ungroup(encodings.group(data, elem), elem).tobytes() == data
    base = bytes(rng.integers(0, 4, n, dtype=np.uint8))
    bcid = make_cid(RAW, base)
    if n == 0:
        assert encodings.encode(data, elem, pays=1e9) is None  # nothing to gain: raw
        return
    near = data[:-1] + b"\x01"  # a base the delta wins against
    for b in (None, base, near):
        value = encodings.encode(data, elem, bcid if b else None, b, 2, pays=1e9, version=version)
        h = encodings.header(value)
        assert h.raw_len == n and h.elem == elem and h.version == version
        if b is near and n > 1000:  # (tiny blocks: the base CID costs more than it saves)
            assert h.encoding == encodings.XOR_DELTA and h.depth == 3 and h.base == bcid
        assert encodings.decode(value, b if h.base else None) == data


def test_encode_refuses_too_deep_a_base_and_header_checks():
    data = bytes(4096)
    with pytest.raises(ValueError, match="exceeds"):
        encodings.encode(data, 4, make_cid(RAW, data), data, encodings.MAX_DEPTH)
    v = bytearray(encodings.encode(data, 4, make_cid(RAW, b"x" * 4096), b"x" * 4096, 1))
    v[3] = encodings.MAX_DEPTH + 1  # the depth byte
    with pytest.raises(CorruptBlock, match="bad header"):
        encodings.header(bytes(v))
    with pytest.raises(CorruptBlock):
        encodings.decode(b"\x01\x02")


def sparse_pair(elem: int, n: int, seed: int = 3) -> tuple[bytes, bytes]:
    """A base of ``n`` random bytes and a "fine-tune" of it where ~2 % of the bytes
    changed, none in a stretch of 3000 (gaps over 255: filler steps), the first and
    the last byte changed (positions at both ends of a plane)."""
    rng = np.random.default_rng(seed * 10 + elem)
    base = rng.integers(0, 256, n, dtype=np.uint8)
    ft = base.copy()
    m = rng.random(n) < 0.02
    m[1000:4000] = False
    m[0] = m[-1] = True
    ft[m] ^= rng.integers(1, 256, int(m.sum()), dtype=np.uint8)
    return base.tobytes(), ft.tobytes()


def sections(value) -> list:
    """``[(tag, payload offset, payload length)]`` of a version-2 value's planes."""
    h = encodings.header(value)
    out, off = [], h.offset
    for _ in range(h.elem):
        tag, ln = encodings._SEC.unpack_from(value, off)
        out.append((tag, off + encodings._SEC.size, ln))
        off += encodings._SEC.size + ln
    return out


@pytest.mark.parametrize("elem", [1, 2, 4, 8])
def test_sparse_planes_round_trip_every_element_size(elem, kernels):
    """A delta where few bytes changed packs its planes sparse (version 2, section
    tag 2: positions and values), smaller than the one-frame value of version 1, and
    decodes to the same bytes whole, as planes XORed into its base's planes (the
    store's path for a packed base) and as planes of the XOR alone."""
    n = 200_003
    base, data = sparse_pair(elem, n)
    bcid = make_cid(RAW, base)
    v1 = encodings.encode(data, elem, bcid, base, 0, version=1)
    v2 = encodings.encode(data, elem, bcid, base, 0, version=2)
    h = encodings.header(v2)
    assert h.version == 2 and h.encoding == encodings.XOR_DELTA
    assert [t for t, *_ in sections(v2)] == [encodings.SPARSE_PLANE] * elem
    assert len(v2) < len(v1)
    assert encodings.decode(v2, base) == encodings.decode(v1, base) == data
    planes = np.empty(n, np.uint8)
    encodings.planes_into(v2, planes, np.frombuffer(encodings.group(base, elem), np.uint8), h)
    assert planes.tobytes() == bytes(encodings.group(data, elem))
    encodings.planes_into(v2, planes, None, h, need_base=False)
    assert planes.tobytes() == bytes(encodings.group(encodings.xor(data, base), elem))
    with pytest.raises(ValueError, match="needs its base"):
        encodings.decode(v2)


def test_a_bf16_fine_tune_packs_smaller_with_sparse_planes(tmp_repo, tmp_path):
    """The deterministic figure of this change: ``tvcfs pack`` of a bf16 fine-tune
    (``model_pair``: every element perturbed a little, so its high plane barely
    changes) stores its new blocks in fewer bytes than version 1's one frame per
    value did (0.0998 -> 0.0624 of raw here; the benchmark's bf16 fine-tune 0.1506 ->
    0.1085, docs/performance.md "Packed blocks", seventh round)."""
    repo = tmp_repo
    base, ft = model_pair(str(tmp_path / "src"), ["BF16"], n_elems=600_001)
    repo.commit_dir(base, message="base")
    c2 = repo.commit_dir(ft, message="ft").cid
    pack(repo, keep_hot=0)
    st = commit_storage(repo, c2)
    fresh_reads(repo)
    assert file_sha(repo, c2) == disk_sha(os.path.join(ft, "model.safetensors"))
    print(f"\nbf16 fine-tune stored / raw {st['new_stored'] / st['new_raw']:.4f}")
    assert st["new_stored"] < 0.08 * st["new_raw"], st


def test_damaged_sparse_sections_are_errors_never_wrong_bytes(kernels, tmp_path):
    """A version-2 value cut anywhere, with an unknown section tag, a count of
    positions larger than the plane, a position past the plane's end, a zero gap, or
    bytes after its planes raises :class:`CorruptBlock`; and a store holding such a
    value refuses it by the block's CID."""
    elem, n = 2, 50_001
    base, data = sparse_pair(elem, n)
    bcid = make_cid(RAW, base)
    value = encodings.encode(data, elem, bcid, base, 0, version=2)
    secs = sections(value)
    assert secs[1][0] == encodings.SPARSE_PLANE
    for cut in [len(value) - 1, len(value) - 7] + list(range(encodings.header(value).offset, len(value), 997)):
        with pytest.raises(CorruptBlock):
            encodings.decode(value[:cut], base)
    with pytest.raises(CorruptBlock, match="after its planes"):
        encodings.decode(value + b"\x00", base)
    tag_at = secs[1][1] - encodings._SEC.size
    with pytest.raises(CorruptBlock, match="unknown section tag"):
        encodings.decode(value[:tag_at] + b"\x09" + value[tag_at + 1:], base)
    _, at, ln = secs[1]
    payload = value[at:at + ln]
    k, gl = encodings._SPARSE.unpack_from(payload, 0)
    c = encodings._compressor()

    def with_payload(p: bytes) -> bytes:
        return value[:tag_at] + encodings._SEC.pack(encodings.SPARSE_PLANE, len(p)) + p + value[at + ln:]

    gaps = np.frombuffer(encodings._zstd().ZstdDecompressor().decompress(payload[8:8 + gl]), np.uint8)
    vals = payload[8 + gl:]
    for bad, msg in (
        (encodings._SPARSE.pack(n, gl) + payload[8:], "positions"),                 # k > the plane
        (encodings._SPARSE.pack(k + 1, gl) + payload[8:], "decodes to"),             # frames shorter than k
        (encodings._SPARSE.pack(k, gl + 5) + payload[8:], "positions|truncated|decompress|decodes"),
    ):
        with pytest.raises(CorruptBlock, match=msg):
            encodings.decode(with_payload(bad), base)
    for g in (np.concatenate([gaps[:-1], [255]]).astype(np.uint8),           # last position past the end
              np.concatenate([[0], gaps[1:]]).astype(np.uint8)):             # a zero gap
        gf = c.compress(g.tobytes())
        bad = encodings._SPARSE.pack(k, len(gf)) + gf + vals
        with pytest.raises(CorruptBlock, match="outside"):
            encodings.decode(with_payload(bad), base)
    # a changed value decodes, to other bytes: the store's CID check refuses it
    bad = bytearray(value)
    bad[len(bad) - 3] ^= 0x20
    with LMDBStore(str(tmp_path / "store")) as st:
        cid = make_cid(RAW, data)
        st.put(bcid, base)
        st.put(cid, data)
        with st.write() as w:
            w.pack_block(cid, bytes(bad))
        st.decoded.__init__()
        st.verified.__init__()
        with pytest.raises(CorruptBlock, match=cid_str(cid)):
            st.get(cid)


def test_version_1_values_still_decode_alone_and_in_mixed_chains(tmp_path, kernels):
    """Values packed before version 2 (one zstd frame: old stores, S3 packs, thin
    transfers from older peers) still decode, also in chains mixing versions: a
    version-2 delta on a version-1 packed base and the reverse, read through the
    store (XOR on the planes) to the right bytes."""
    elem, n = 2, 300_001
    b0, b1 = sparse_pair(elem, n, seed=1)
    b2 = bytes(np.frombuffer(b1, np.uint8) ^ encodings.xor(*sparse_pair(elem, n, seed=2)))  # b1, a few bytes changed
    cids = [make_cid(RAW, b) for b in (b0, b1, b2)]
    for versions in ((1, 1, 1), (1, 2, 1), (2, 1, 2)):
        with LMDBStore(str(tmp_path / "-".join(map(str, versions)))) as st:
            for c, b in zip(cids, (b0, b1, b2)):
                st.put(c, b)
            with st.write() as w:
                w.pack_block(cids[0], encodings.encode(b0, elem, version=versions[0], pays=2))
                w.pack_block(cids[1], encodings.encode(b1, elem, cids[0], b0, 0, version=versions[1]))
                w.pack_block(cids[2], encodings.encode(b2, elem, cids[1], b1, 1, version=versions[2]))
            st.decoded.__init__()
            st.verified.__init__()
            with st.view() as v:
                for c in cids:
                    assert encodings.header(v.txn.get(c, db=st.dbs["packed"])).version == versions[cids.index(c)]
            assert [bytes(st.get(c)) for c in cids] == [b0, b1, b2], versions


# --------------------------------------------------------------------------- compiled kernels
def test_the_compiled_kernels_are_built():
    """The C kernels of the decode (``tvcfs.store._planes``, built by ``pip install
    -e``/scripts/install.sh) import here and are what encodings uses, so the suite
    never falls back to numpy unnoticed; ``TVCFS_NO_C=1`` switches them off in a
    new process. Skipped only when this run sets ``TVCFS_NO_C`` itself."""
    import subprocess
    import sys

    if os.environ.get("TVCFS_NO_C", "") not in ("", "0"):
        pytest.skip("TVCFS_NO_C is set: the numpy kernels are tested")
    import tvcfs.store._planes as planes

    assert encodings._c is planes and encodings.KERNELS == "c"
    code = "from tvcfs.store import encodings; print(encodings.KERNELS)"
    for env, want in (({"TVCFS_NO_C": "1"}, "numpy"), ({"TVCFS_NO_C": "0"}, "c")):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True,
                             capture_output=True, text=True).stdout.strip()
        assert out == want, env


def both_kernels(monkeypatch, fn):
    """``fn()`` with the compiled kernels, then with numpy's: ``(c, numpy)``."""
    got_c = fn()
    with monkeypatch.context() as m:
        m.setattr(encodings, "_c", None)
        return got_c, fn()


@pytest.mark.parametrize("elem", [1, 2, 4, 8])
def test_compiled_and_numpy_kernels_give_identical_bytes(elem, monkeypatch):
    """Grouping, un-grouping (alone and fused with a base's XOR), sparse sections
    (into zeros and into a base's plane) and whole encode/decode round trips give the
    same bytes with the C kernels as with numpy: empty blocks, blocks shorter than an
    element, lengths not divisible by the element size, deltas on raw and on packed
    bases (their planes kept, or spent: decoded into in place, as the store does),
    values of version 1 and 2, each encoded by one path and decoded by the other."""
    if encodings._c is None:
        pytest.skip("the compiled kernels are not in use (TVCFS_NO_C, or not built)")
    rng = np.random.default_rng(elem)
    for n in (0, 1, elem - 1, elem + 1, 7, 4099, 65_536 + 3, 300_001):
        a = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        b = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        for base in (None, b):
            c, py = both_kernels(monkeypatch, lambda: bytes(encodings.group(a, elem, base)))
            assert c == py, (n, base is None)
            c, py = both_kernels(monkeypatch, lambda: encodings.ungroup(a, elem, base=base).tobytes())
            assert c == py, (n, base is None)
            assert bytes(encodings.group(encodings.ungroup(a, elem, base=base), elem, base)) == a
    n = 250_007
    base, data = sparse_pair(elem, n, seed=7)
    bcid = make_cid(RAW, base)
    for version in encodings.VERSIONS:
        for b in (None, base):
            cv, pv = both_kernels(monkeypatch, lambda: encodings.encode(data, elem, bcid if b else None, b, 0,
                                                                         version=version, pays=2))
            assert cv == pv, (version, b is None)
            for value in (cv, pv):
                c, py = both_kernels(monkeypatch, lambda: encodings.decode(value, b))
                assert c == py == data
                if b is not None:  # the store's path for a packed base: XOR on the planes
                    gb = np.frombuffer(encodings.group(base, elem), np.uint8)

                    def on_planes(spend: bool):
                        out, work = np.empty(n, np.uint8), gb.copy()
                        encodings.decode_into(value, out, None, base_planes=work, spend_base=spend)
                        assert spend or (work == gb).all()  # kept unless spent (in place)
                        return out.tobytes()

                    for spend in (False, True):
                        c, py = both_kernels(monkeypatch, lambda: on_planes(spend))
                        assert c == py == data, spend
    plane = np.where(rng.random(n) < 0.2, rng.integers(1, 256, n, dtype=np.uint8), 0).astype(np.uint8)
    plane[0] = plane[-1] = 9
    payload = encodings._sparse(plane, encodings._compressor())
    bp = np.frombuffer(base, np.uint8)
    for b in (None, bp):
        def expand():
            o = np.full(n, 0xAA, np.uint8)  # garbage before: the section overwrites all of it
            encodings._sparse_into(memoryview(payload), o, b, "plane")
            return o.tobytes()

        c, py = both_kernels(monkeypatch, expand)
        assert c == py == (plane if b is None else plane ^ bp).tobytes()


def test_compiled_kernels_refuse_hostile_input_and_never_write_out_of_bounds():
    """``_planes.sparse_apply`` given a zero gap, a position past the plane, more
    entries than the plane could hold, gaps and values of different lengths, a base
    of another length or overlapping buffers raises ``ValueError`` (encodings reports
    it as :class:`CorruptBlock`, test above) and leaves every byte outside the plane
    as it was; ``group``/``ungroup`` refuse other element sizes, lengths and overlaps."""
    if encodings._c is None:
        pytest.skip("the compiled kernels are not in use (TVCFS_NO_C, or not built)")
    planes = encodings._c
    n = 1000
    arena = np.full(n + 64, 0x5A, np.uint8)
    o = arena[32:32 + n]  # guard bytes on both sides
    base = np.arange(n, dtype=np.uint8)

    def guards_intact():
        return (arena[:32] == 0x5A).all() and (arena[32 + n:] == 0x5A).all()

    ok = np.array([1, 255, 255, 3], np.uint8)
    planes.sparse_apply(o, base, ok, np.array([1, 2, 3, 4], np.uint8))
    want = base.copy()
    want[[0, 255, 510, 513]] ^= np.array([1, 2, 3, 4], np.uint8)
    assert (o == want).all() and guards_intact()
    for gaps, vals, b in (
        (np.array([1, 0, 4], np.uint8), np.ones(3, np.uint8), base),             # a zero gap
        (np.full(5, 255, np.uint8), np.ones(5, np.uint8), base),                  # past the end (1275)
        (np.ones(n + 1, np.uint8), np.ones(n + 1, np.uint8), None),               # k > the plane
        (np.array([200, 255, 255, 255, 36], np.uint8), np.ones(5, np.uint8), base),  # one past: position n
        (np.ones(3, np.uint8), np.ones(2, np.uint8), base),                       # lengths differ
        (np.ones(3, np.uint8), np.ones(3, np.uint8), base[:-1]),                  # base of another length
        (arena[40:43], np.ones(3, np.uint8), None),                               # gaps inside the output
    ):
        with pytest.raises(ValueError):
            planes.sparse_apply(o, b, gaps, vals)
        assert guards_intact()
    planes.sparse_apply(o, None, np.array([200, 255, 255, 255, 35], np.uint8), np.ones(5, np.uint8))
    assert o[n - 1] == 1 and guards_intact()  # the last byte of the plane is in bounds
    src = np.arange(16, dtype=np.uint8)
    for args in ((src, 3, np.empty(16, np.uint8)), (src, 2, np.empty(15, np.uint8)),
                 (src, 2, np.empty(16, np.uint8), np.zeros(15, np.uint8)), (src, 2, src),
                 (arena[:16], 2, arena[8:24])):
        for fn in (planes.group, planes.ungroup):
            with pytest.raises(ValueError):
                fn(*args)
    with pytest.raises(TypeError):  # read-only output
        planes.ungroup(src, 2, bytes(16))


# --------------------------------------------------------------------------- every dtype
ALL_DTYPES = ["F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I8", "I16", "I32", "I64", "U8", "BOOL", "F64",
              "U16", "U32", "U64"]


def test_every_dtype_round_trips_packed_and_unpacked(tmp_repo, tmp_path):
    base, ft = model_pair(str(tmp_path / "src"), ALL_DTYPES)
    repo = tmp_repo
    c1 = repo.commit_dir(base, message="base").cid
    c2 = repo.commit_dir(ft, message="ft").cid
    res = pack(repo, keep_hot=0)
    assert res.packed > 0 and res.deltas > 0 and res.saved > 0
    infos = packed_infos(repo)
    # every tensor leaf of the fine-tune is a delta on the base's, grouped by its dtype's size
    from tvcfs.pack import file_leaves

    leaves = file_leaves(repo.get, repo.entry(c2, "model.safetensors").cid)
    seen = set()
    for lf in leaves:
        if lf.tensor is None:
            continue
        info = infos.get(lf.cid)
        assert info is not None, f"{lf.tensor} leaf stayed raw"
        assert info.encoding == "delta" and info.depth == 1, (lf.tensor, info)
        assert info.elem == DTYPES[lf.dtype].itemsize
        seen.add(lf.dtype)
    assert seen == set(ALL_DTYPES)
    fresh_reads(repo)
    assert file_sha(repo, c1) == disk_sha(os.path.join(base, "model.safetensors"))
    assert file_sha(repo, c2) == disk_sha(os.path.join(ft, "model.safetensors"))
    assert fsck(repo) == []
    # hot again: the head's blocks go back to raw, reads unchanged
    res = pack(repo, keep_hot=1)
    assert res.unpacked > 0
    for lf in leaves:
        assert repo.store.info(lf.cid).encoding == "raw"
    fresh_reads(repo)
    assert file_sha(repo, c1) == disk_sha(os.path.join(base, "model.safetensors"))
    assert file_sha(repo, c2) == disk_sha(os.path.join(ft, "model.safetensors"))
    assert fsck(repo) == []


# --------------------------------------------------------------------------- missing bases
def two_commits_packed(repo, tmp_path, dtypes=("F32",), n_elems: int = 70_001):
    """Commit a base model and its fine-tune (:func:`support.model.model_pair` of
    ``dtypes``, ``n_elems`` elements per tensor, under ``tmp_path / "src"``) to ``repo``
    one after the other, pack it (``keep_hot=0``: the fine-tune's leaves as deltas) and
    forget what was decoded and verified; returns ``(base dir, fine-tune dir, base
    commit CID, fine-tune commit CID)``."""
    base, ft = model_pair(str(tmp_path / "src"), dtypes, n_elems=n_elems)
    c1 = repo.commit_dir(base, message="base").cid
    c2 = repo.commit_dir(ft, message="ft").cid
    pack(repo, keep_hot=0)
    fresh_reads(repo)
    return base, ft, c1, c2


def test_delta_whose_base_is_missing_is_a_clear_error(tmp_repo, tmp_path, tvcfs_cli):
    repo = tmp_repo
    base, ft, c1, c2 = two_commits_packed(repo, tmp_path)
    deltas = {c: i for c, i in packed_infos(repo).items() if i.encoding == "delta"}
    cid, info = next(iter(deltas.items()))
    # the base goes missing behind tvcfs's back (a damaged store)
    with repo.store.view(verify=False) as v:
        where = "blocks" if not v.is_packed(info.base) else "packed"
    put_raw_value(repo, where, info.base, None)
    fresh_reads(repo)
    with pytest.raises(MissingBase) as e:
        repo.store.get(cid)
    assert cid_str(cid) in str(e.value) and cid_str(info.base) in str(e.value)
    assert isinstance(e.value, CorruptBlock)
    with pytest.raises(CorruptBlock):
        file_sha(repo, c2)
    problems = fsck(repo)
    assert any(cid_str(cid) in p and "missing" in p for p in problems), problems
    r = tvcfs_cli("-C", repo.root, "cat", f"{cid_str(c2)}:model.safetensors", ok=False)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and err.startswith("tvcfs: error: ")
    assert "missing from the store" in err and "Traceback" not in err


def test_deleting_a_base_reencodes_its_deltas(tmp_repo, tmp_path):
    repo = tmp_repo
    base, ft, c1, c2 = two_commits_packed(repo, tmp_path)
    deltas = {c: i for c, i in packed_infos(repo).items() if i.encoding == "delta"}
    cid, info = next(iter(deltas.items()))
    assert repo.store.delete(info.base)
    after = repo.store.info(cid)
    assert after is not None and after.base is None
    fresh_reads(repo)
    assert hashlib.sha256(repo.store.get(cid)).digest() == cid[4:]


# --------------------------------------------------------------------------- chains
def test_delta_chains_stay_bounded(tmp_repo, tmp_path):
    """Ten fine-tunes in a row, each of the one before: every chain ≤ MAX_DEPTH, and
    every commit reads back; the store refuses deltas that would lengthen a chain."""
    repo = tmp_repo
    rng = np.random.default_rng(1)
    raw, x = tensor_bytes("BF16", 200_000, rng)
    shas, commits = [], []
    src = tmp_path / "m"
    src.mkdir()
    for i in range(10):
        path = str(src / "model.safetensors")
        write_safetensors_raw(path, [("w", "BF16", (200_000,), raw)])
        commits.append(repo.commit_dir(str(src), message=f"step {i}").cid)
        shas.append(disk_sha(path))
        x = perturb("BF16", x, rng)
        raw, _ = tensor_bytes("BF16", 200_000, rng, values=x)
    pack(repo, keep_hot=0)
    infos = packed_infos(repo)
    depths = [i.depth for i in infos.values()]
    assert max(depths) == encodings.MAX_DEPTH and min(depths) == 0
    for c in infos:
        assert chain_length(repo, c) <= encodings.MAX_DEPTH
    fresh_reads(repo)
    for c, sha in zip(commits, shas):
        assert file_sha(repo, c) == sha
    # a block that deltas use as base may not become a delta itself
    based = next(i.base for i in infos.values() if i.base is not None)
    other = next(c for c in infos if c != based)
    data = repo.store.get(based)
    value = encodings.encode(data, 2, other, repo.store.get(other), 0, pays=1e9)
    with pytest.raises(ValueError, match="base of stored deltas"):
        with repo.store.write() as w:
            w.pack_block(based, value)


# --------------------------------------------------------------------------- gc
def test_gc_keeps_the_bases_kept_deltas_need(tmp_repo, tmp_path):
    """A fine-tune recorded as a root commit of its own branch, naming its base with
    ``delta_base`` (what ``tvcfs commit --delta-base`` records): once the base's
    branch is deleted and its reflog expired, gc deletes what only the base used but
    keeps the base leaves the fine-tune's deltas need."""
    repo = tmp_repo
    base, ft = model_pair(str(tmp_path / "src"), ["F32", "BF16"], n_elems=70_001)
    c1 = repo.commit_dir(base, branch="main", message="base").cid
    tree = repo.commit_dir(ft, branch="tmp", message="x").tree
    c2 = repo.commit_tree(tree, branch="ft", message="ft", parents=[], expected=None,
                          metadata={"delta_base": cid_str(c1)}).cid
    repo.delete_branch("tmp")
    assert not repo.read_commit(c2).parents
    res = pack(repo, keep_hot=0)
    assert res.deltas > 0
    needed = {i.base for i in packed_infos(repo).values() if i.base is not None}
    assert needed
    repo.set_head("ft")
    repo.delete_branch("main")
    r = collect_garbage(repo, expire_days=-1)
    assert r["deleted"] > 0  # the base's commit, tree, header, config: gone
    assert not repo.has(c1)
    for c in needed:
        assert repo.has(c), f"gc deleted delta base {cid_str(c)}"
    fresh_reads(repo)
    assert file_sha(repo, c2) == disk_sha(os.path.join(ft, "model.safetensors"))
    assert fsck(repo) == []


# --------------------------------------------------------------------------- corruption
def test_corrupted_packed_block_is_rejected_by_its_cid(tmp_repo, tmp_path, tvcfs_cli):
    repo = tmp_repo
    base, ft, c1, c2 = two_commits_packed(repo, tmp_path, dtypes=("F32", "BF16"))
    infos = packed_infos(repo)
    grouped = next(c for c, i in infos.items() if i.encoding == "grouped" and i.raw > 4096)
    with repo.store.view(verify=False) as v:
        value = bytearray(bytes(v.txn.get(grouped, db=repo.store.dbs["packed"])))
    # one flipped bit in the middle of the zstd frame: decodes (or not) to other bytes
    value[len(value) // 2] ^= 0x10
    put_raw_value(repo, "packed", grouped, bytes(value))
    fresh_reads(repo)
    with pytest.raises(CorruptBlock) as e:
        repo.store.get(grouped)
    assert cid_str(grouped) in str(e.value)
    problems = fsck(repo)
    assert any(cid_str(grouped) in p for p in problems), problems
    r = tvcfs_cli("-C", repo.root, "fsck", ok=False)
    assert r.returncode == 1 and cid_str(grouped) in r.stdout.decode()
    r = tvcfs_cli("-C", repo.root, "cat", f"{cid_str(c1)}:model.safetensors", ok=False)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.startswith("tvcfs: error: ") and err.count("\n") == 1
    assert cid_str(grouped) in err


# --------------------------------------------------------------------------- CLI, checkout
def test_cli_pack_show_log_stat_and_checkout(tmp_path, tvcfs_cli):
    env = dict(os.environ, **AUTHOR)
    root = str(tmp_path / "repo")
    base, ft = model_pair(str(tmp_path / "src"), ["F32", "BF16", "I32"], n_elems=70_001)
    tvcfs_cli("init", root, env=env)
    tvcfs_cli("-C", root, "commit", base, "-m", "base", env=env)
    tvcfs_cli("-C", root, "tag", "v0", env=env)
    tvcfs_cli("-C", root, "commit", ft, "-m", "ft", "--delta-base", "v0", env=env)
    r = tvcfs_cli("-C", root, "pack", "--keep-hot", "0", "--json", env=env)
    import json

    res = json.loads(r.stdout)
    assert res["deltas"] > 0 and res["keep_hot"] == 0
    log = json.loads(tvcfs_cli("-C", root, "log", "--stat", "--json", env=env).stdout)
    ft_stat = log[0]["storage"]
    assert log[0]["metadata"]["delta_base"] == log[1]["commit"]
    assert 0 < ft_stat["new_stored"] < 0.7 * ft_stat["new_raw"]
    assert ft_stat["encodings"].get("delta", 0) > 0
    text = tvcfs_cli("-C", root, "log", "--stat", env=env).stdout.decode()
    assert "stored:" in text and "model.safetensors" in text
    show = json.loads(tvcfs_cli("-C", root, "show", "HEAD:model.safetensors", "--json", env=env).stdout)
    for t in show["tensors"]:
        assert t["encodings"] == {"delta": t["leaves"]} and t["stored"] < t["bytes"]
    text = tvcfs_cli("-C", root, "show", "HEAD", env=env).stdout.decode()
    assert "stored:" in text
    # checkouts of both packed commits are byte-identical (another process: cold reads)
    tvcfs_cli("-C", root, "checkout", "HEAD", str(tmp_path / "co2"), env=env)
    tvcfs_cli("-C", root, "checkout", "v0", str(tmp_path / "co1"), env=env)
    assert_same_tree(ft, str(tmp_path / "co2"))
    assert_same_tree(base, str(tmp_path / "co1"))
    r = tvcfs_cli("-C", root, "gc", "--pack", env=env)
    assert "packed" in r.stdout.decode()
    tvcfs_cli("-C", root, "fsck", env=env)
    r = tvcfs_cli("-C", root, "pack", "--keep-hot", "-1", ok=False, env=env)
    assert r.returncode == 1 and r.stderr.decode().startswith("tvcfs: error: --keep-hot")


@pytest.mark.fuse
def test_mount_reads_of_a_packed_commit_are_byte_identical(tmp_path):
    from support.mount import Mounted

    from tvcfs.repo import Repo

    with Repo.init(str(tmp_path / "repo")) as repo:
        base, ft, c1, _ = two_commits_packed(repo, tmp_path, ["F32", "BF16", "F8_E4M3"], 300_001)
        assert commit_storage(repo, c1)["new_stored"] < commit_storage(repo, c1)["new_raw"]
    with Mounted(tmp_path / "repo", tmp_path / "mnt") as m:
        assert_same_tree(ft, m.branch("main"))
        assert_same_tree(base, m.path("commits", cid_str(c1)))
        # random offsets across leaf boundaries (1 MiB leaves, decoded once, served in pieces)
        path = m.branch("main", "model.safetensors")
        with open(os.path.join(ft, "model.safetensors"), "rb") as f:
            want = f.read()
        rng = np.random.default_rng(3)
        fd = os.open(path, os.O_RDONLY)
        try:
            for _ in range(200):
                off = int(rng.integers(0, len(want)))
                n = int(rng.integers(1, 3 << 20))
                assert os.pread(fd, n, off) == want[off:off + n]
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- store level
def test_put_of_a_packed_block_is_not_new_and_iteration_sees_it(tmp_path):
    st = LMDBStore(str(tmp_path / "s"))
    try:
        data = np.arange(100_000, dtype=np.float32).tobytes()
        cid = make_cid(RAW, data)
        assert st.put(cid, data)
        with st.write() as w:
            w.pack_block(cid, encodings.encode(data, 4))
        assert st.info(cid).encoding == "grouped"
        assert st.put(cid, data) is False
        assert st.has(cid) and list(st) == [cid]
        assert st.stat()["blocks"] == 1 and st.stat()["packed"] == 1
        got = st.get(cid)
        assert isinstance(got, bytes) and got == data
        assert dict(st.get_many([cid])) == {cid: data}
        with st.view() as v:
            assert v.get(cid) == data and v.has(cid)
            assert dict(v.items()) == {cid: data}
        assert cid_codec(cid) == RAW
        assert st.delete(cid) and not st.has(cid)
    finally:
        st.close()


def test_packing_marks_the_repository_format(tmp_repo, real_model_dir):
    """A repository that holds packed blocks says so, so that a tvcfs without the
    decoder refuses it instead of reporting its packed blocks missing."""
    from tvcfs.pack import pack
    from tvcfs.repo import PACKED_FORMAT, Repo

    tmp_repo.commit_dir(real_model_dir, message="one")
    assert tmp_repo.config.get("format") == 1
    pack(tmp_repo, keep_hot=0)
    assert tmp_repo.config.get("format") == PACKED_FORMAT
    tmp_repo.config.set("format", PACKED_FORMAT + 1)
    try:
        Repo.open(tmp_repo.root)
    except Exception as e:  # noqa: BLE001 - the one clear refusal is what is tested
        assert f"repository format {PACKED_FORMAT + 1} is newer" in str(e)
    else:
        raise AssertionError("a newer format was opened")


def test_reads_completing_out_of_order_keep_the_sequential_readahead(tmp_repo, tmp_path):
    """A sequential read whose 1 MiB requests complete out of order (the kernel sends
    several at once; a packed leaf's decode holds one back) is still one run: its
    readahead window grows and runs past the current tensor, instead of starting
    over at 4 MiB within the tensor on every late request (the preload threads of a
    packed commit then ran 1-5 leaves ahead of the reader, docs/performance.md
    "Packed blocks")."""
    from tvcfs.fs.reader import SEQ_WINDOW_MIN, BlockReader

    mib = 1 << 20
    rng = np.random.default_rng(0)
    tensors = [(f"t{k}", "BF16", (3 * mib // 2,), rng.bytes(3 * mib)) for k in range(12)]
    src = tmp_path / "src"
    src.mkdir()
    write_safetensors_raw(str(src / "model.safetensors"), tensors)
    c = tmp_repo.commit_dir(str(src), message="m").cid
    reader = BlockReader(tmp_repo.store)
    try:
        idx = reader.index(tmp_repo.entry(c, "model.safetensors").cid)
        order = []  # 1 MiB requests, each pair completing second one first
        for k in range(0, idx.size // mib - 1, 2):
            order += [k + 1, k]
        for k in order:
            reader.readahead(7, idx, k * mib, mib)
        end, window, until = reader.seq[7]
        assert window > SEQ_WINDOW_MIN, reader.seq[7]
        assert reader.seq_run[7][1] >= 2  # moved on tensor by tensor: a scan
    finally:
        reader.close()


def test_decode_into_rejects_damaged_frames_and_is_thread_safe(kernels):
    """:func:`encodings.decode_into` (zstd straight into a per-thread scratch buffer,
    un-grouped into the output): a truncated frame, a frame of another length than
    the header says and a short output are errors, never wrong bytes; threads
    decoding at once (each with its own scratch buffers) all get the right bytes."""
    import threading

    rng = np.random.default_rng(5)
    data = (rng.standard_normal(300_001).astype(np.float32) * 1e-2).tobytes()
    base = bytearray(data)
    base[::7] = b"\x00" * len(base[::7])
    bcid = make_cid(RAW, bytes(base))
    value = encodings.encode(data, 4, bcid, bytes(base))
    assert encodings.header(value).name == "delta"
    out = np.empty(len(data), np.uint8)
    encodings.decode_into(value, out, bytes(base))
    assert out.tobytes() == data
    h = encodings.header(value)
    with pytest.raises(CorruptBlock):
        encodings.decode_into(value[:-100], out, bytes(base))
    other = encodings._compressor().compress(b"\x00" * (len(data) - 4))  # a frame 4 bytes short
    with pytest.raises(CorruptBlock, match="decodes to"):
        encodings.decode_into(value[:h.offset] + other, out, bytes(base))
    with pytest.raises(ValueError, match="into"):
        encodings.decode_into(value, out[:-1], bytes(base))
    grouped = encodings.encode(data, 4)
    wrong = []

    def work():
        for _ in range(20):
            if encodings.decode(value, bytes(base)) != data or encodings.decode(grouped) != data:
                wrong.append(1)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not wrong


def test_a_decoded_leaf_is_served_from_one_buffer_and_is_not_cold(tmp_repo, tmp_path):
    """A packed leaf decodes into one buffer that reads return views of (no ``bytes``
    copy per read: the mount serves slices of it), and once the preload threads have
    decoded it the mount's reader does not hand the request to a worker thread
    (``Preloader.cold``), as it does for a raw leaf already paged in."""
    from tvcfs.fs.reader import BlockReader
    from tvcfs.pack import file_leaves

    _, ft, _, c2 = two_commits_packed(tmp_repo, tmp_path, ("BF16",))
    st = tmp_repo.store
    fcid = tmp_repo.entry(c2, "model.safetensors").cid
    leaf = next(lf for lf in file_leaves(tmp_repo.get, fcid) if st.info(lf.cid).encoding == "delta")
    with st.view() as v:
        a, b = v.get(leaf.cid), v.get(leaf.cid)
        assert isinstance(a, memoryview) and a.readonly
        assert a.obj is b.obj  # one decoded buffer, cached
        assert bytes(a[3:50]) == bytes(st.get(leaf.cid))[3:50]
    reader = BlockReader(st)
    try:
        idx = reader.index(fcid)
        i = idx.leaves.index(leaf.cid)
        fresh_reads(tmp_repo)
        assert i in reader.preloader.cold(idx, idx.starts[i], 1)
        reader.preloader.load(idx, [i])  # what a preload thread does
        assert reader.preloader.cold(idx, idx.starts[i], 1) == []
        with open(os.path.join(ft, "model.safetensors"), "rb") as f:
            f.seek(idx.starts[i])
            assert bytes(reader.read(idx, idx.starts[i], idx.sizes[i])) == f.read(idx.sizes[i])
    finally:
        reader.close()


def test_a_preload_thread_never_waits_for_a_leaf_another_thread_is_decoding(tmp_repo, tmp_path):
    """A preload thread that takes a queued packed leaf which another thread is
    decoding (a request's worker thread got there first: ``DecodedCache.claim``)
    leaves it to that thread and goes on with the next leaves; it used to wait for
    that decode (up to 10 s), idle while the reader's next requests waited for it
    (18-120 ms of the preload threads' time per cold read of the benchmark's bf16
    fine-tune: docs/performance.md "Packed blocks", eighth round). One preload
    thread, the first leaf claimed by this test's thread: the next leaf must be
    decoded while the claim is held."""
    import time

    from tvcfs.fs.reader import BlockReader, Preloader
    from tvcfs.pack import file_leaves

    *_, c2 = two_commits_packed(tmp_repo, tmp_path, ("BF16",), 1_000_001)
    st = tmp_repo.store
    fcid = tmp_repo.entry(c2, "model.safetensors").cid
    reader = BlockReader(st)
    pre = Preloader(st, threads=1)
    try:
        idx = reader.index(fcid)
        packed = [i for i, lf in enumerate(file_leaves(tmp_repo.get, fcid)) if st.info(lf.cid).encoding == "delta"]
        assert len(packed) >= 2, packed
        first, second = idx.leaves[packed[0]], idx.leaves[packed[1]]
        assert st.decoded.claim(first) is None  # this thread "decodes" the first leaf
        try:
            pre.schedule(idx, packed[:2], 1)
            deadline = time.monotonic() + 5
            while second not in st.decoded and time.monotonic() < deadline:
                time.sleep(0.01)
            assert second in st.decoded, "the preload thread waited for the claimed leaf"
            assert pre.skipped == 1 and first not in st.decoded
        finally:
            st.decoded.release(first)
    finally:
        pre.close()
        reader.close()


def test_decoded_leaves_reuse_huge_page_slots_only_once_nobody_holds_them(tmp_repo, tmp_path):
    """Packed leaves of 128 KiB to 1 MiB decode into slots of the decoded cache's
    huge-page map (a fresh mount then does not take a page fault per 4 KiB of what
    it decodes), and a slot is decoded into again only when nothing refers to the
    leaf it held: a reader holding a slice (a ``memoryview`` of it, or a numpy view)
    keeps its bytes while other leaves come and go."""
    import mmap

    from tvcfs.pack import file_leaves
    from tvcfs.store.lmdb_store import SLOT, SLOT_MIN, DecodedCache, buffer_address

    _, _, _, c2 = two_commits_packed(tmp_repo, tmp_path, ("BF16", "F32", "F16"))
    st = tmp_repo.store
    fcid = tmp_repo.entry(c2, "model.safetensors").cid
    leaves = [lf for lf in file_leaves(tmp_repo.get, fcid)
              if st.info(lf.cid).encoding == "delta" and SLOT_MIN <= lf.size <= SLOT]
    with st.view() as v:  # what the mount gets: a view of an array in a slot of the map
        d = v.get(leaves[0].cid)
        assert isinstance(d.obj.base, memoryview) and isinstance(d.obj.base.obj, mmap.mmap)
        del d
    n = leaves[0].size
    blocks = [bytes(st.get(lf.cid)) for lf in leaves if lf.size == n][:2]  # bf16, f16
    assert len(blocks) == 2

    cache = DecodedCache(limit=4 * n, slots=6)  # holds four leaves
    keep = []

    def decode(k):  # as LMDBView._decode and _unpack do; returns the slot's address
        a = cache.buffer(n)
        a[:] = np.frombuffer(blocks[k % 2], np.uint8)
        view = memoryview(a).toreadonly()
        cache.put(k, view)
        return buffer_address(view)

    at = [decode(0)]
    v0 = cache.get(0)
    held, held_np = v0[7:], np.frombuffer(v0, np.uint8)[3:][2:]  # what readers keep
    del v0
    at += [decode(k) for k in range(1, 6)]  # drop leaves 0 (held: its slot stays taken) and 1
    assert len(set(at)) == 6
    assert decode(6) == at[1]  # leaf 1's slot (nobody held it), not leaf 0's
    assert bytes(cache.get(6)) == blocks[0]
    assert bytes(held) == blocks[0][7:] and held_np.tobytes() == blocks[0][5:]
    keep.append(cache.buffer(n))  # leaf 2's slot (dropped by leaf 6)
    assert buffer_address(keep[0]) == at[2]
    assert cache.buffer(n).base is None  # no slot free: a plain array
    del held
    assert cache.buffer(n).base is None  # the numpy view still holds leaf 0
    del held_np
    assert buffer_address(cache.buffer(n)) == at[0]  # now its slot is free
    assert cache.buffer(SLOT_MIN - 1).base is None  # small blocks: plain arrays


@pytest.mark.fuse
def test_concurrent_mount_readers_never_see_a_reused_slot(tmp_path):
    """Four readers at once through a real mount, over two packed files whose leaves
    are more than the decoded cache holds (so the daemon drops leaves and decodes
    others into their slots while reads of them are in flight), each checking every
    byte it reads."""
    from support.mount import Mounted

    from tvcfs.repo import Repo
    from tvcfs.store.lmdb_store import DECODED_CACHE

    with Repo.init(str(tmp_path / "repo")) as repo:
        base, ft, c1, _ = two_commits_packed(repo, tmp_path, ["BF16", "F32"], 14_000_001)
    srcs = [os.path.join(d, "model.safetensors") for d in (base, ft)]
    assert sum(os.path.getsize(p) for p in srcs) > DECODED_CACHE * 1.2
    wants = []
    for p in srcs:
        with open(p, "rb") as f:
            wants.append(f.read())
    errors: list = []
    with Mounted(tmp_path / "repo", tmp_path / "mnt") as m:
        paths = [m.path("commits", cid_str(c1), "model.safetensors"), m.branch("main", "model.safetensors")]

        def reader(k: int):
            want = wants[k % 2]
            rng = np.random.default_rng(k)
            fd = os.open(paths[k % 2], os.O_RDONLY)
            try:
                off = (k // 2) * len(want) // 2  # two readers per file, from its start and its middle
                for _ in range(2 * len(want) // (3 << 20)):
                    n = int(rng.integers(1, 3 << 20))
                    got = os.pread(fd, n, off)
                    if got != want[off:off + n]:
                        errors.append((k, off, n))
                        return
                    off = (off + n) % len(want)
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append((k, repr(e)))
            finally:
                os.close(fd)

        assert run_readers(reader, 4, 120) == 0
    assert errors == []


@pytest.mark.fuse
@pytest.mark.timeout(180)
def test_a_corrupt_packed_leaf_read_by_concurrent_readers_is_eio_for_all(tmp_path):
    """Six readers at once read sequentially through a fresh mount into a packed leaf
    whose stored value was damaged, while the preload threads decode the leaves ahead
    of them (requests then wait for a decode another thread is doing, the store's
    ``DecodedCache.claim``): every reader gets EIO at the damaged leaf (none hangs,
    none gets bytes), again on a second try, and the leaves before it read right."""
    import errno
    import threading

    from support.mount import Mounted, stats

    from tvcfs.repo import Repo

    with Repo.init(str(tmp_path / "repo")) as repo:
        _, ft, _, c2 = two_commits_packed(repo, tmp_path, ["BF16"], 20_000_001)
        idx = repo.file_index(repo.entry(c2, "model.safetensors").cid)
        infos = packed_infos(repo)
        i = len(idx.leaves) * 3 // 4
        bad, bad_start = idx.leaves[i], idx.starts[i]
        assert bad in infos and idx.sizes[i] == 1 << 20
        with repo.store.view(verify=False) as v:
            value = bytearray(bytes(v.txn.get(bad, db=repo.store.dbs["packed"])))
        value[len(value) // 2] ^= 0x10
        put_raw_value(repo, "packed", bad, bytes(value))
    with open(os.path.join(ft, "model.safetensors"), "rb") as f:
        want = f.read()
    start = bad_start - (16 << 20)
    assert start > 0
    results: list = []
    with Mounted(tmp_path / "repo", tmp_path / "mnt", allow_errors=(cid_str(bad),)) as m:
        path = m.branch("main", "model.safetensors")
        gate = threading.Barrier(6)  # the readers start together (reusable: once per attempt)
        for attempt in range(2):
            results.clear()

            def reader(k: int):
                fd = os.open(path, os.O_RDONLY)
                try:
                    gate.wait(30)
                    off = start + k * (64 << 10)
                    while off < len(want):
                        try:
                            got = os.pread(fd, 128 << 10, off)
                        except OSError as e:
                            results.append((k, off, e.errno))
                            return
                        if got != want[off:off + len(got)]:
                            results.append((k, off, "wrong bytes"))
                            return
                        off += len(got)
                    results.append((k, off, "no error"))
                finally:
                    os.close(fd)

            assert run_readers(reader, 6, 60) == 0, f"a reader hangs (attempt {attempt})"
            assert sorted(r[2] for r in results) == [errno.EIO] * 6, results
            assert all(bad_start - (128 << 10) < r[1] < bad_start + (1 << 20) for r in results), results
        stats_errors = stats(str(tmp_path / "mnt"))["errors"]
    assert stats_errors >= 12


_RESIDENT_AFTER_READ = r"""
import ctypes, mmap, os, sys, time
from tvcfs.store.lmdb_store import LMDBStore, buffer_address

path, cid = sys.argv[1], bytes.fromhex(sys.argv[2])
data = os.path.join(path, "data.mdb")
fd = os.open(data, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # nothing of the store in memory
st = LMDBStore(path)
with st.view(verify=False) as v:
    v.get(cid)  # decode the first packed leaf
    value = v.txn.get(cid, db=st.dbs["packed"])
    end = buffer_address(value) - st.map_range()[0] + len(value)
size = os.fstat(fd).st_size
lo, hi = (end + (1 << 20)) // 4096 * 4096, min(end + (4 << 20), size) // 4096 * 4096
assert hi - lo >= 1 << 20, (lo, hi, size)
mm = mmap.mmap(fd, hi - lo, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE, offset=lo)
base = ctypes.addressof(ctypes.c_char.from_buffer(mm)) - lo  # never written: the file's pages
libc = ctypes.CDLL(None, use_errno=True)
vec = (ctypes.c_ubyte * ((hi - lo) // 4096))()
deadline = time.monotonic() + 10
while True:
    assert libc.mincore(ctypes.c_void_p(base + lo), ctypes.c_size_t(hi - lo), vec) == 0
    share = sum(b & 1 for b in vec) / len(vec)
    if share > 0.9 or time.monotonic() > deadline:
        break
    time.sleep(0.05)
print(share)
"""


def test_reading_a_packed_leaf_reads_the_next_values_ahead(tmp_path):
    """Reading a packed value (or a delta's base) advises the kernel to read the
    bytes of ``data.mdb`` after it (``tvcfs pack`` writes a commit's values in file
    order: the next leaves' values are there), so a sequential read of packed
    history is not one synchronous page fault per ``read_ahead_kb``: in a fresh
    process with nothing of the store cached, decoding the first packed leaf of a
    file brings the next 1-4 MiB of the file into the page cache."""
    import subprocess
    import sys

    from tvcfs.pack import file_leaves
    from tvcfs.repo import Repo

    with Repo.init(str(tmp_path / "repo")) as repo:
        *_, c2 = two_commits_packed(repo, tmp_path, ["F32"], 6_000_001)  # 24 MB
        leaves = file_leaves(repo.get, repo.entry(c2, "model.safetensors").cid)
        first = next(lf.cid for lf in leaves if repo.store.info(lf.cid).encoding == "delta")
        path = repo.store.path
    r = subprocess.run([sys.executable, "-c", _RESIDENT_AFTER_READ, path, first.hex()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout) > 0.9, r.stdout


def test_a_sequential_read_of_packed_history_advises_each_byte_once(tmp_path):
    """The read-ahead of packed values (``LMDBStore._read_ahead``) advises the kernel
    only the bytes of ``data.mdb`` no earlier advice covered: a sequential read of a
    packed commit (its deltas and their packed bases, two runs of values) advises
    each byte about once. Each ``posix_fadvise(WILLNEED)`` walks the page cache over
    its whole range, cached or not; the run used to be advised again from each
    value's end once it came within half of ``PACKED_AHEAD`` of the advised end,
    so every byte twice (docs/performance.md "Packed blocks", sixth round)."""
    from tvcfs.pack import file_leaves
    from tvcfs.repo import Repo
    from tvcfs.store.lmdb_store import PACKED_AHEAD

    with Repo.init(str(tmp_path / "repo")) as repo:
        *_, c2 = two_commits_packed(repo, tmp_path, ["F32"], 12_000_001)  # 48 MB
        leaves = file_leaves(repo.get, repo.entry(c2, "model.safetensors").cid)
        st = repo.store
        values = 0
        with st.view(verify=False) as v:
            for lf in leaves:
                pv = v.txn.get(lf.cid, db=st.dbs["packed"])
                if pv is None:  # kept raw (a leaf that did not pay): not read ahead
                    continue
                h = encodings.header(pv)
                values += len(pv)
                if h.base is not None:
                    values += len(v.txn.get(h.base, db=st.dbs["packed"]) or v.txn.get(h.base, db=st.dbs["blocks"]))
        st._ahead.clear()
        before = st.advised_bytes
        for lf in leaves:
            assert st.get(lf.cid) is not None
            st.decoded._d.clear()
            st.decoded.size = 0
        advised = st.advised_bytes - before
    assert values > 4 * PACKED_AHEAD, values
    # once each, plus at most one PACKED_AHEAD past the end of each run (and of a
    # run restarted where B-tree pages sit between values)
    print(f"\nvalues read {values / 2**20:.1f} MiB, advised {advised / 2**20:.1f} MiB")
    assert advised <= values + 4 * PACKED_AHEAD, (advised, values)


def test_values_packed_at_another_zstd_level_still_decode():
    """The packing level (:data:`encodings.LEVEL`, 1 since issue 22's second round;
    3 before) is not part of the format: a value whose frame was written at level 3
    (a repository packed by an earlier tvcfs) decodes to the same bytes."""
    import zstandard

    rng = np.random.default_rng(9)
    data = rng.standard_normal(200_003).astype(np.float32).tobytes()
    new = encodings.encode(data, 4)
    h = encodings.header(new)
    level3 = zstandard.ZstdCompressor(level=3, write_checksum=False, write_content_size=True)
    old = new[:h.offset] + level3.compress(encodings.group(data, 4))
    assert old != new
    assert encodings.decode(old) == encodings.decode(new) == data


def test_packing_uses_fewer_longer_matches_than_plain_level_1():
    """The packer's zstd parameters (:data:`encodings.STRATEGY`, :data:`encodings.MIN_MATCH`:
    level 1 with the "dfast" match finder and 7-byte matches, seventh round of
    docs/performance.md "Packed blocks") store a bf16 fine-tune's delta and its base
    in fewer bytes than plain level 1 did (0.1524 -> 0.1505 and 0.684 -> 0.681 of
    raw on the benchmark's model), and the frames still decode with any zstd."""
    import zstandard

    rng = np.random.default_rng(5)
    w = (rng.standard_normal(1 << 20) * 0.02).astype(np.float32)

    def bf16(a):
        return (a.view(np.uint32) >> 16).astype(np.uint16).tobytes()

    base = bf16(w)
    ft = bf16(w + rng.standard_normal(w.size).astype(np.float32) * 0.02e-3)
    level1 = zstandard.ZstdCompressor(level=1, write_checksum=False, write_content_size=True)
    for data, bdata in ((ft, base), (base, None)):
        value = encodings.encode(data, 2, base=b"b" * encodings.CID_LEN if bdata else None, base_data=bdata)
        h = encodings.header(value)
        plain = level1.compress(encodings.group(encodings.xor(data, bdata) if bdata else data, 2))
        assert len(value) - h.offset < len(plain), (len(value) - h.offset, len(plain))
        assert zstandard.ZstdDecompressor().decompress(value[h.offset:]) == zstandard.ZstdDecompressor().decompress(plain)
        assert encodings.decode(value, bdata) == data


@pytest.mark.fuse
def test_a_cold_read_of_packed_leaves_never_reads_the_store_page_by_page(tmp_path):
    """The mount's first page-in of a packed file's leaf does not switch the store's
    map to exact reads (``MADV_RANDOM``, meant for raw leaves whose place in
    ``data.mdb`` is not known yet): the packed value and its base were then read by
    page faults, one 4 KiB disk read each — ~160 of them, ~25 ms, for the first 1 MiB
    leaf of a cold read of the benchmark's bf16 fine-tune, while the preload threads
    had nothing queued yet (docs/performance.md "Packed blocks", eighth round). A
    packed value is read whole and advised first (``LMDBStore._read_ahead``).
    ``preload_exact`` of ``.tvcfs/stats`` counts the page-ins done with exact reads:
    none for cold sequential reads of a packed fine-tune and its packed base (before:
    the first leaves of each file), and the bytes are the source's."""
    from support.mount import Mounted

    from tvcfs.repo import Repo

    with Repo.init(str(tmp_path / "repo")) as repo:
        base, ft, c1, _ = two_commits_packed(repo, tmp_path, ["F32", "BF16"], 1_000_001)
    with Mounted(tmp_path / "repo", tmp_path / "mnt") as m:
        for src, path in ((ft, m.branch("main", "model.safetensors")),
                          (base, m.path("commits", cid_str(c1), "model.safetensors"))):
            with open(os.path.join(src, "model.safetensors"), "rb") as f:
                want = f.read()
            assert len(want) > 4 << 20  # several 1 MiB leaves
            got = bytearray()
            with open(path, "rb", buffering=0) as f:
                while b := f.read(1 << 20):
                    got += b
            assert got == want
        s = m.stats()
    assert s["cold_reads"] > 0, s  # the reads were cold: leaves were paged in for them
    assert s["preload_exact"] == 0, s


@pytest.mark.fuse
def test_the_mount_imports_the_decoders_before_the_first_read_of_a_packed_store(tmp_path):
    """A daemon over a store with packed blocks has zstandard and numpy loaded once
    mounted (they came in on the first read, stalling every reader on the import
    lock), and the decoded cache's arena mapped and advised for huge pages (the
    process's first ``MADV_HUGEPAGE`` waits ~10 ms, which the first request of a cold
    read paid: docs/performance.md "Packed blocks", eighth round); over a store
    without any, neither."""
    from support.mount import Mounted

    from tvcfs.repo import Repo
    from tvcfs.store.lmdb_store import DECODED_CACHE, DECODED_SPARE, SLOT

    arena_kib = (DECODED_CACHE + DECODED_SPARE) // SLOT * SLOT >> 10

    def hugepage_arena(pid: int) -> bool:
        """Whether process ``pid`` has an anonymous map of the arena's size advised
        for huge pages (``hg`` in its ``VmFlags``)."""
        size = None
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if line.startswith("Size:"):
                    size = int(line.split()[1])
                elif line.startswith("VmFlags:") and size == arena_kib and " hg" in line:
                    return True
        return False

    base, ft = model_pair(str(tmp_path / "src"), ["BF16"])
    for name, packed in (("packed", True), ("raw", False)):
        with Repo.init(str(tmp_path / name)) as repo:
            repo.commit_dir(base, message="base")
            repo.commit_dir(ft, message="ft")
            if packed:
                pack(repo, keep_hot=0)
        with Mounted(tmp_path / name, tmp_path / f"mnt-{name}") as m:
            with open(f"/proc/{m.pid}/maps") as f:
                maps = f.read()
            assert ("zstandard" in maps and "numpy" in maps) == packed, name
            assert hugepage_arena(m.pid) == packed, name
