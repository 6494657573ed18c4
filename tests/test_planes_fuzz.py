"""Property tests of the packed-block decode on both kernels (docs/format.md "Packed
blocks"; docs/testing.md "Fuzzing the decode kernels").

Random blocks of every element size, lengths that are not multiples of it, raw and
packed bases, delta chains up to ``MAX_DEPTH``, versions 1 and 2: encoded, then
decoded with the compiled kernels (``tvcfs.store._planes``) and with numpy — the
same bytes, equal to the input. Then the values damaged (bits flipped, cut,
extended, header fields and section headers changed): both kernels raise the same
error (:class:`CorruptBlock` or ``ValueError``) or give the same bytes, and a real
:class:`LMDBStore` holding the damaged value either serves the right bytes or
refuses them with a :class:`CorruptBlock` naming the block — never wrong bytes,
never a crash. ``TVCFS_PLANES_EXAMPLES`` sets the number of examples (default 150;
``scripts/asan_planes.sh`` runs thousands under AddressSanitizer).
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tvcfs.encoding.cid import RAW, cid_str, make_cid
from tvcfs.errors import CorruptBlock
from tvcfs.store import encodings
from tvcfs.store.lmdb_store import LMDBStore

C = encodings._c
EXAMPLES = int(os.environ.get("TVCFS_PLANES_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
needs_c = pytest.mark.skipif(C is None, reason="the compiled kernels are not in use (TVCFS_NO_C, or not built)")


class Kernels:
    """``with Kernels(c):`` runs the body with the compiled kernels (``c`` true) or
    numpy's (``encodings._c`` unset), then restores them."""

    def __init__(self, c: bool):
        self.c = c

    def __enter__(self):
        self.saved = encodings._c
        encodings._c = C if self.c else None

    def __exit__(self, *exc):
        encodings._c = self.saved


def on_both(fn):
    """``fn()`` with each kernel: ``[("c", outcome), ("numpy", outcome)]``, an
    outcome being ``("ok", bytes)`` or ``("error", type, message)``. Any exception
    other than :class:`CorruptBlock` or ``ValueError`` fails the test."""
    got = []
    for c in (True, False):
        with Kernels(c):
            try:
                got.append(("ok", bytes(fn())))
            except (CorruptBlock, ValueError) as e:
                got.append(("error", type(e), str(e)))
    return got


# --------------------------------------------------------------------------- blocks
def chain_blocks(seed: int, n: int, depth: int, kind: str, density: float) -> list[bytes]:
    """``depth + 1`` distinct blocks of ``n`` bytes, each a few bytes off the one
    before (a fine-tune's chain); the first random (``kind`` "random"), of few
    values ("low") or mostly zero ("sparse": self-contained sparse planes)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        b = rng.integers(0, 256, n, dtype=np.uint8)
    elif kind == "low":
        b = (rng.integers(0, 4, n, dtype=np.uint8) * 3).astype(np.uint8)
    else:
        b = np.where(rng.random(n) < 0.05, rng.integers(1, 256, n, dtype=np.uint8), 0).astype(np.uint8)
    out = [b.tobytes()]
    while len(out) <= depth:
        m = rng.random(n) < density
        m[rng.integers(0, n)] = True  # at least one byte changed
        nxt = b.copy()
        nxt[m] ^= rng.integers(1, 256, int(m.sum()), dtype=np.uint8)
        if nxt.tobytes() in out:  # (tiny blocks: changes that cancel out)
            continue
        b = nxt
        out.append(b.tobytes())
    return out


def body(grouped: bytes, elem: int, version: int, sections: str) -> bytes:
    """The body of a value of grouped bytes ``grouped``: the packer's
    (``sections`` "best") or, in version 2, every plane's section of one kind
    ("raw", "zstd", "sparse" — valid for any plane, whatever it costs) or a kind
    per plane in turn ("mixed"), so that small blocks have every kind of section."""
    if version == 1 or sections == "best":
        return encodings._body(grouped, elem, version)
    c = encodings._compressor()
    a = np.frombuffer(grouped, np.uint8)
    n = len(a) // elem
    parts = []
    for j in range(elem):
        p = a[j * n:(j + 1) * n]
        tag = {"raw": 0, "zstd": 1, "sparse": 2}.get(sections, j % 3)
        payload = (p.tobytes(), c.compress(p), encodings._sparse(p, c))[tag]
        parts.append(encodings._SEC.pack(tag, len(payload)) + payload)
    parts.append(a[elem * n:].tobytes())
    return b"".join(parts)


def delta_value(data: bytes, elem: int, base: bytes, depth: int, version: int, sections: str) -> bytes:
    """A delta of ``data`` on ``base`` whatever it saves (``encode`` keeps the
    smallest encoding, and a tiny block's delta is larger than its CID)."""
    return encodings._value(version, encodings.XOR_DELTA, elem, depth, len(data), make_cid(RAW, base),
                            body(encodings.group(data, elem, base), elem, version, sections))


def self_value(data: bytes, elem: int, version: int, sections: str) -> bytes:
    """``data`` packed self-contained whatever it saves."""
    enc = encodings.GROUPED if elem > 1 else encodings.ZSTD
    return encodings._value(version, enc, elem, 0, len(data), None,
                            body(encodings.group(data, elem), elem, version, sections))


blocks = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "elem": st.sampled_from([1, 2, 4, 8]),
    "n": st.one_of(st.integers(0, 17), st.integers(0, 5000)),
    "version": st.sampled_from(encodings.VERSIONS),
    "depth": st.integers(0, encodings.MAX_DEPTH),
    "packed_base": st.booleans(),
    "kind": st.sampled_from(["random", "low", "sparse"]),
    "density": st.sampled_from([0.0, 0.001, 0.02, 0.3]),
    "sections": st.sampled_from(["best", "raw", "zstd", "sparse", "mixed"]),
})


def make_chain(p: dict):
    """``(blocks, values)``: the chain's blocks and their packed values (``None``
    for a base kept raw), every link a delta on the one before."""
    depth = p["depth"] if p["n"] else 0
    bs = chain_blocks(p["seed"], p["n"], depth, p["kind"], p["density"])
    elem, version = p["elem"], p["version"]
    sec = p["sections"]
    vals = [self_value(bs[0], elem, version, sec) if p["packed_base"] else None]
    for i in range(1, len(bs)):  # delta i has depth i (a base raw or self-contained: 0)
        vals.append(delta_value(bs[i], elem, bs[i - 1], i, version, sec))
    return bs, vals


def new_store(tmp: str, bs: list[bytes], vals: list) -> tuple[LMDBStore, list[bytes]]:
    """A real store holding the chain (raw blocks put, then packed in order with
    :meth:`pack_block`); returns it and the blocks' CIDs."""
    st_ = LMDBStore(tmp)
    cids = [make_cid(RAW, b) for b in bs]
    for c, b in zip(cids, bs):
        st_.put(c, b)
    with st_.write() as w:
        for c, v in zip(cids, vals):
            if v is not None:
                w.pack_block(c, v)
    return st_, cids


def forget(st_: LMDBStore) -> None:
    """Forget what the store decoded and verified (a new process's view)."""
    st_.decoded.__init__()
    st_.verified.__init__()


# --------------------------------------------------------------------------- round trips
@needs_c
@FUZZ
@given(p=blocks)
def test_random_chains_round_trip_identically_on_both_kernels(p):
    """Every value of a random chain decodes to its block on both kernels: alone
    (``decode`` with its base's bytes), on its base's planes (kept or spent, as the
    store does) and through a real store; ``encode`` makes the same value with
    both, and it decodes."""
    bs, vals = make_chain(p)
    elem, version = p["elem"], p["version"]
    for i, (b, v) in enumerate(zip(bs, vals)):
        base = bs[i - 1] if i else None
        if v is None:
            continue
        assert on_both(lambda: encodings.decode(v, base)) == [("ok", b)] * 2
        if base is not None:
            gb = np.frombuffer(encodings.group(base, elem), np.uint8)
            for spend in (False, True):
                def on_planes():
                    out, work = np.empty(len(b), np.uint8), gb.copy()
                    encodings.decode_into(v, out, None, base_planes=work, spend_base=spend)
                    assert spend or (work == gb).all()
                    return out
                assert on_both(on_planes) == [("ok", b)] * 2, spend
        enc = []
        for c in (True, False):
            with Kernels(c):
                enc.append(encodings.encode(b, elem, make_cid(RAW, base) if base else None, base, max(i - 1, 0),
                                            pays=1e9, version=version))
        assert enc[0] == enc[1]
        if enc[0] is not None:
            assert on_both(lambda: encodings.decode(enc[0], base)) == [("ok", b)] * 2
    tmp = tempfile.mkdtemp(prefix="tvcfs-planes-")
    try:
        st_, cids = new_store(tmp, bs, vals)
        with st_:
            for c in (True, False):
                with Kernels(c):
                    forget(st_)
                    assert [bytes(st_.get(cid)) for cid in reversed(cids)] == bs[::-1], c
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- damaged values
def section_heads(value: bytes) -> list[tuple[int, int, int]]:
    """``[(offset of the section's tag, tag, payload length)]`` of a version-2
    value's planes, as far as its bytes go."""
    h = encodings.header(value)
    out, off = [], h.offset
    for _ in range(h.elem):
        if off + encodings._SEC.size > len(value):
            break
        tag, ln = encodings._SEC.unpack_from(value, off)
        out.append((off, tag, ln))
        off += encodings._SEC.size + ln
    return out


MUTATIONS = ["flip", "flip", "truncate", "extend", "elem", "raw_len", "version", "encoding", "depth",
             "tag", "section_len", "sparse_k", "sparse_gaps_len"]


def mutate(value: bytes, kind: str, draw) -> bytes | None:
    """``value`` damaged by mutation ``kind`` with parameters from ``draw`` (a
    hypothesis ``data.draw``); ``None`` when ``kind`` does not apply to it."""
    v = bytearray(value)
    u8 = lambda at, x: v.__setitem__(at, x)  # noqa: E731
    if kind == "flip":
        at = draw(st.integers(0, len(v) - 1))
        v[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del v[draw(st.integers(0, len(v) - 1)):]
    elif kind == "extend":
        v += draw(st.binary(min_size=1, max_size=16))
    elif kind == "elem":
        u8(2, draw(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 255])))
    elif kind == "raw_len":
        n = struct.unpack_from("<I", v, 4)[0]
        # (up to MAX_RAW it is decoded, sparse planes filled that long: then the CID refuses it)
        new = draw(st.one_of(st.integers(max(0, n - 9), n + 9), st.integers(0, 2 * n + 64),
                             st.integers(0, encodings.MAX_RAW + 1), st.integers(0, 2**32 - 1)))
        struct.pack_into("<I", v, 4, new)
    elif kind == "version":
        u8(0, draw(st.sampled_from([0, 1, 2, 3])))
    elif kind == "encoding":
        u8(1, draw(st.sampled_from([0, 1, 2, 3, 4])))
    elif kind == "depth":
        u8(3, draw(st.integers(0, 6)))
    else:
        if value[0] != 2:
            return None
        heads = section_heads(value)
        if not heads:
            return None
        at, tag, ln = draw(st.sampled_from(heads))
        if kind == "tag":
            u8(at, draw(st.sampled_from([0, 1, 2, 3, 255])))
        elif kind == "section_len":
            struct.pack_into("<I", v, at + 1, draw(st.one_of(st.integers(max(0, ln - 9), ln + 9),
                                                              st.integers(0, 2**32 - 1))))
        else:
            if tag != encodings.SPARSE_PLANE or ln < encodings._SPARSE.size:
                return None
            k, gl = encodings._SPARSE.unpack_from(value, at + 5)
            x = k if kind == "sparse_k" else gl
            new = draw(st.one_of(st.integers(max(0, x - 3), x + 3), st.integers(0, 2**32 - 1)))
            struct.pack_into("<I", v, at + 5 + (0 if kind == "sparse_k" else 4), new)
    return bytes(v)


@needs_c
@FUZZ
@given(p=blocks, kind=st.sampled_from(MUTATIONS), data=st.data())
def test_damaged_values_are_errors_or_bytes_the_store_refuses(p, kind, data):
    """A value damaged anywhere decodes on both kernels to the same outcome — the
    same :class:`CorruptBlock`/``ValueError`` or the same bytes — and a store
    holding it in place of the real value serves the block's bytes or refuses with
    a :class:`CorruptBlock` naming the damaged block (its checksum and CID check
    every decoded block): never other bytes, never a crash."""
    bs, vals = make_chain({**p, "packed_base": p["packed_base"] or not p["depth"] or not p["n"]})
    packed = [i for i, v in enumerate(vals) if v is not None]
    i = data.draw(st.sampled_from(packed))
    bad = mutate(vals[i], kind, data.draw)
    if bad is None or bad == vals[i]:
        event(f"{kind}: not applicable")
        return
    base = bs[i - 1] if i else None
    got = on_both(lambda: encodings.decode(bad, base))
    assert got[0] == got[1], (kind, got)
    event(f"{kind}: {'wrong bytes' if got[0][0] == 'ok' and got[0][1] != bs[i] else got[0][0]}")
    tmp = tempfile.mkdtemp(prefix="tvcfs-planes-")
    try:
        st_, cids = new_store(tmp, bs, vals)
        with st_:
            with st_.env.begin(write=True) as txn:  # damage it behind tvcfs's back
                txn.put(cids[i], bad, db=st_.dbs["packed"])
            for c in (True, False):
                with Kernels(c):
                    forget(st_)
                    try:
                        served = st_.get(cids[i])
                    except CorruptBlock as e:
                        assert cid_str(cids[i]) in str(e), (kind, str(e))
                    else:
                        assert bytes(served) == bs[i], kind  # a harmless change (bytes after a frame)
                    forget(st_)
                    try:  # the top of the chain: its bytes or an error naming the damaged block
                        assert bytes(st_.get(cids[-1])) == bs[-1], kind
                    except CorruptBlock as e:
                        assert cid_str(cids[i]) in str(e), (kind, i, len(cids), str(e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- threads
@needs_c
def test_kernels_in_two_threads_at_once_give_the_right_bytes():
    """The kernels release the GIL: two threads un-grouping (fused with a base's
    XOR), grouping and expanding sparse sections at once, each into its own
    output, both get exactly the bytes of the same call made alone."""
    n = (4 << 20) + 5
    rng = np.random.default_rng(11)
    src = [rng.integers(0, 256, n, dtype=np.uint8) for _ in range(2)]
    base = [rng.integers(0, 256, n, dtype=np.uint8) for _ in range(2)]
    gaps = [rng.integers(1, 4, n // 3, dtype=np.uint8) for _ in range(2)]
    vals = [rng.integers(0, 256, n // 3, dtype=np.uint8) for _ in range(2)]

    def calls(k: int) -> list[bytes]:
        outs = []
        for elem in (2, 4, 8):
            for fn in (C.ungroup, C.group):
                o = np.empty(n, np.uint8)
                fn(src[k], elem, o, base[k])
                outs.append(o.tobytes())
        o = np.empty(n, np.uint8)
        C.sparse_apply(o, base[k], gaps[k], vals[k])
        outs.append(o.tobytes())
        return outs

    alone = [calls(0), calls(1)]
    got, errors = [[], []], []

    def work(k: int) -> None:
        try:
            for _ in range(3):
                got[k].append(calls(k))
        except BaseException as e:  # reported below: a thread's exception is not the test's
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in ts)
    for k in (0, 1):
        assert got[k] == [alone[k]] * 3, k


@needs_c
@pytest.mark.parametrize("fn,held", [("ungroup", "out"), ("group", "out"), ("sparse_apply", "out"),
                                     ("ungroup", "src"), ("sparse_apply", "base")])
def test_a_buffer_cannot_be_resized_while_a_kernel_holds_it(fn, held):
    """A kernel holds its buffers (the buffer protocol's export) until it returns:
    another thread resizing a ``bytearray`` argument meanwhile — which it can do
    only because the kernel released the GIL — gets ``BufferError``, so the memory
    cannot move or be freed under the kernel; and the kernel's bytes are right."""
    import time

    n = 32 << 20
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    gaps, vals = np.full(n // 300, 255, np.uint8), rng.integers(0, 256, n // 300, dtype=np.uint8)

    def call(buf, out):
        """The call with ``buf`` in the held place, writing ``out``."""
        src = buf if held in ("src", "base") else data
        if fn == "sparse_apply":
            getattr(C, fn)(out, src, gaps, vals)
        else:
            getattr(C, fn)(src, 8, out)

    want = np.empty(n, np.uint8)
    call(data, want)
    buf = bytearray(n) if held == "out" else bytearray(data)
    out = buf if held == "out" else np.empty(n, np.uint8)
    refused, done = [], threading.Event()

    def resize() -> None:
        while not done.is_set():
            try:
                buf.extend(b"x")
            except BufferError:
                refused.append(1)
            else:  # before the kernel took it, or after: undo
                del buf[n:]
            time.sleep(0)  # (lets the kernel's thread in: the GIL)

    t = threading.Thread(target=resize)
    t.start()
    deadline = time.monotonic() + 60
    try:
        while not refused and time.monotonic() < deadline:
            try:
                call(buf, out)
            except ValueError:  # the other thread had it one byte longer when we asked
                continue
            assert bytes(memoryview(out)[:n]) == want.tobytes()  # (buf may have one byte more since)
    finally:
        done.set()
        t.join(30)
    assert refused, "no resize was attempted while the kernel ran"
    assert len(buf) == n


# --------------------------------------------------------------------------- raw length
@pytest.mark.parametrize("c", [True, False], ids=["c", "numpy"])
def test_a_raw_length_past_any_block_is_refused_before_decoding(c, tmp_path):
    """A value whose raw-length field claims more than any block tvcfs holds
    (:data:`encodings.MAX_RAW`) is :class:`CorruptBlock` from its header on, in
    ``decode``, from a peer (``decode_thin``) and in a store (naming the block):
    nothing that length is allocated, filled or hashed. (Sparse sections do not
    say how long their plane is: a value of sparse planes with a high bit flipped
    in its length decoded before to gigabytes of zeros — 8 GiB of memory and 40 s
    for 0xFFFFFFFF, the mount or a receiving peer killed for memory — only for the
    CID check to refuse them.)"""
    if c and C is None:
        pytest.skip("the compiled kernels are not in use (TVCFS_NO_C, or not built)")
    from tvcfs.transport.session import decode_thin

    data = chain_blocks(5, 4000, 0, "sparse", 0.0)[0]
    cid = make_cid(RAW, data)
    good = self_value(data, 1, 2, "sparse")
    bad = bytearray(good)
    struct.pack_into("<I", bad, 4, 64 << 20)  # beyond MAX_RAW, yet quick to fill if it were decoded
    bad = bytes(bad)
    with Kernels(c):
        assert encodings.decode(good) == data
        with pytest.raises(CorruptBlock, match="raw length"):
            encodings.header(bad)
        with pytest.raises(CorruptBlock, match="raw length"):
            encodings.decode(bad)
        with pytest.raises(CorruptBlock, match="raw length"):
            decode_thin(cid, bad, lambda _: None)
        with LMDBStore(str(tmp_path / "s")) as st_:
            st_.put(cid, data)
            with st_.write() as w:
                w.pack_block(cid, good)
            with st_.env.begin(write=True) as txn:
                txn.put(cid, bad, db=st_.dbs["packed"])
            forget(st_)
            with pytest.raises(CorruptBlock, match=cid_str(cid)):
                st_.get(cid)
    assert encodings.encode(bytes(encodings.MAX_RAW + 1), pays=2) is None  # kept raw: no such value is made


@pytest.mark.parametrize("c", [True, False], ids=["c", "numpy"])
def test_a_damaged_base_is_named_when_its_delta_is_read(c, tmp_path):
    """A delta read on the planes of its packed base (same element size), the base's
    value damaged — its header, its body cut, or (sparse planes, which do not say
    their length) its raw length, so that it decodes to a block of another length
    than the delta's — is a :class:`CorruptBlock` naming the base, the block to
    fetch again, not the delta; a delta whose own raw length is damaged is named
    itself (found by the property test above: the delta was named)."""
    if c and C is None:
        pytest.skip("the compiled kernels are not in use (TVCFS_NO_C, or not built)")
    bs, vals = make_chain({"seed": 9, "elem": 2, "n": 3001, "version": 2, "depth": 2, "packed_base": True,
                           "kind": "random", "density": 0.02, "sections": "sparse"})

    def longer(v: bytes) -> bytes:
        return v[:4] + struct.pack("<I", struct.unpack_from("<I", v, 4)[0] + 2) + v[8:]

    for k, (damaged, bad) in enumerate(((0, b"\x02\x02\x00" + vals[0][3:]), (0, vals[0][:len(vals[0]) // 2]),
                                        (1, vals[1][:len(vals[1]) - 5]), (0, longer(vals[0])),
                                        (1, longer(vals[1])), (2, longer(vals[2])))):
        st_, cids = new_store(str(tmp_path / str(k)), bs, vals)
        with Kernels(c), st_:
            with st_.env.begin(write=True) as txn:
                txn.put(cids[damaged], bad, db=st_.dbs["packed"])
            for top in range(damaged, len(cids)):
                forget(st_)
                with pytest.raises(CorruptBlock, match=cid_str(cids[damaged])):
                    st_.get(cids[top])
