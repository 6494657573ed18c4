"""Wire protocol (sans-I/O) and identity; fuzzing a live server with hypothesis."""

from __future__ import annotations

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvcfs.repo import Repo
from tvcfs.transport import protocol as P
from tvcfs.transport.backend import RepoBackend
from tvcfs.transport.client import open_session
from tvcfs.transport.identity import (IdentityError, NodeIdentity, auth_message, b58decode,
                                      b58encode, parse_peer_id, verify_signature)
from tvcfs.transport.quic import connect_quic
from tvcfs.transport.server import ServerConfig

from support.server import start_server
from support.repo import all_cids, make_repo, rnd

CID = b"\x01\x55\x12\x20" + bytes(range(32))

SAMPLES = [
    P.Hello(1, "models"),
    P.Welcome(1, b"\x00\x24" + b"k" * 36, b"n" * 32, 4 << 20, 4096, 1 << 26, 1),
    P.Auth(b"\x08\x01\x12\x20" + b"p" * 32, b"s" * 64),
    P.AuthOk(b"peer", True),
    P.WantList([P.WantEntry(CID, 7, P.WANT_HAVE), P.WantEntry(CID, 0, P.CANCEL)], True),
    P.Block(CID, b"data" * 100),
    P.Have(CID),
    P.DontHave(CID),
    P.DagRequest(3, CID, P.Selector(P.SEL_RANGE, "a/b", 5, 99, True), [CID], [CID, CID], 9),
    P.DagRequest(6, CID, P.Selector(P.SEL_ALL, history=True, skeleton=True), [], [CID], 1,
                 [CID[:-1] + b"\x07", CID[:-1] + b"\x08"]),
    P.DagDone(3, P.DONE_PARTIAL, 10, 12345, "x"),
    P.Cancel(3),
    P.ListRefs(4, "refs/heads/"),
    P.Refs(4, {"refs/heads/main": CID, "refs/tags/v1": CID}, "refs/heads/main"),
    P.RefUpdate(5, "refs/heads/main", None, CID),
    P.RefResult(5, False, CID, "stale"),
    P.Error(0, P.E_LIMIT, "too big"),
]


def test_roundtrip_all_messages_in_one_stream_split_anywhere():
    wire = b"".join(P.encode(m) for m in SAMPLES)
    for step in (1, 7, 1000):
        dec = P.FrameDecoder()
        out = []
        for i in range(0, len(wire), step):
            dec.feed(wire[i : i + step])
            while (m := dec.next()) is not None:
                out.append(m)
        assert out == SAMPLES


def test_large_frames_split_anywhere_decode_alike_in_both_modes():
    """Blocks larger than one chunk are collected as the chunks they arrive in
    (zero_copy: a BlockParts, no copy; else bytes joined once); the CID and
    length may straddle chunks; large non-Block frames and small frames around
    them decode as usual; fed bytearrays may be reused by the caller."""
    import random

    rng = random.Random(5)
    big1 = bytes(rng.getrandbits(8) for _ in range(200_000))
    big2 = bytes(range(256)) * 1200
    msgs = [P.Block(CID, big1), P.Have(CID), P.Block(CID[:-1] + b"\x01", big2),
            P.WantList([P.WantEntry(CID, i) for i in range(2000)]),  # > 64 KiB
            P.DagDone(1, P.DONE_OK, 2, 3), P.Block(CID, b"small")]
    wire = b"".join(P.encode(m) for m in msgs)
    starts = []
    pos = 0
    for m in msgs:
        starts.append(pos)
        pos += len(P.encode(m))
    # cuts at random places, right after each frame start (header split), and
    # one-byte and 100 KiB chunks
    cut_sets = [sorted(rng.sample(range(1, len(wire)), 40)),
                sorted({s + k for s in starts for k in (1, 3, 37) if 0 < s + k < len(wire)}),
                list(range(100_000, len(wire), 100_000))]
    for cuts in cut_sets:
        for zero_copy in (False, True):
            for as_bytearray in (False, True):
                dec = P.FrameDecoder(zero_copy=zero_copy)
                out = []
                edges = [0] + cuts + [len(wire)]
                for a, b in zip(edges, edges[1:]):
                    chunk = bytearray(wire[a:b]) if as_bytearray else wire[a:b]
                    dec.feed(chunk)
                    if as_bytearray:
                        chunk[:] = b"\0" * len(chunk)  # the caller reuses its buffer
                    while (m := dec.next()) is not None:
                        out.append(m)
                assert dec.buffered == 0
                got = [P.Block(m.cid, P.block_bytes(m.data)) if isinstance(m, P.Block) else m
                       for m in out]
                assert got == msgs
                if zero_copy:
                    assert isinstance(out[0].data, P.BlockParts) and len(out[0].data) == len(big1)
                else:
                    assert type(out[0].data) is bytes
    # a one-byte feed at a time also works for a large block
    dec = P.FrameDecoder(zero_copy=True)
    w = P.encode(msgs[0])
    for i in range(len(w)):
        dec.feed(w[i:i + 1])
    assert P.block_bytes(dec.next().data) == big1


def test_large_block_filled_in_place_through_receive_buffer():
    """A driver that can write received bytes in place (TLS/TCP) gets the block's own
    buffer from the decoder, sized from the frame header: the Block's data is that
    bytearray, no chunk list and no join. Bytes fed while it is being filled (the
    driver's other path) land in it too, and what follows the frame decodes as usual."""
    import random

    rng = random.Random(7)
    big = bytes(rng.getrandbits(8) for _ in range(300_000))
    wire = P.encode(P.Block(CID, big)) + P.encode(P.Have(CID)) + P.encode(P.Block(CID, big[:100_000]))
    first_end = len(P.encode(P.Block(CID, big)))
    dec = P.FrameDecoder(zero_copy=True)
    assert dec.receive_buffer() is None  # no frame in progress
    dec.feed(wire[:1000])
    assert dec.next() is None
    view = dec.receive_buffer()
    assert len(view) == first_end - 1000
    pos = 1000
    for step in (1, 65_536, 100_000):  # the driver writes some pieces in place
        view = dec.receive_buffer()
        view[:step] = wire[pos:pos + step]
        dec.filled(step)
        pos += step
        assert dec.next() is None
    dec.feed(wire[pos:pos + 5])  # and some arrive by feed
    pos += 5
    view = dec.receive_buffer()
    assert len(view) == first_end - pos
    with pytest.raises(ValueError):
        dec.filled(len(view) + 1)
    dec.feed(wire[pos:])  # the rest of the block and the next two frames in one chunk
    block = dec.next()
    assert type(block.data) is bytearray and block.data == big and block.cid == CID
    assert dec.next() == P.Have(CID)
    assert P.block_bytes(dec.next().data) == big[:100_000]
    assert dec.next() is None and dec.buffered == 0
    assert dec.bytes_in == len(wire)
    # without zero_copy the decoder keeps collecting chunks (the caller wants bytes)
    dec = P.FrameDecoder()
    dec.feed(wire[:1000])
    assert dec.next() is None and dec.receive_buffer() is None


def test_receive_buffer_checks_the_header_before_allocating():
    lim = P.Limits(max_block=100_000)
    head = P._uv(1 + 1 + 36 + 3 + 150_000) + b"\x11" + P._uv(36) + CID + P._uv(150_000)
    dec = P.FrameDecoder(lim, zero_copy=True)
    dec.feed(head + b"x" * 1000)
    assert dec.next() is None
    with pytest.raises(P.ProtocolError, match="exceeds limit"):
        dec.receive_buffer()


def test_large_block_frame_errors():
    lim = P.Limits(max_block=100_000)
    bad = [P._uv(1 + 1 + 36 + 3 + 150_000) + b"\x11" + P._uv(36) + CID + P._uv(150_000),  # > max_block
           P._uv(1 + 1 + 36 + 3 + 90_000) + b"\x11" + P._uv(36) + CID + P._uv(80_000),  # trailing
           P._uv(1 + 1 + 36 + 3 + 90_000) + b"\x11" + P._uv(36) + CID + P._uv(95_000)]  # truncated
    sizes = [150_000, 90_000, 90_000]
    for head, n in zip(bad, sizes):
        for zero_copy in (False, True):
            dec = P.FrameDecoder(lim, zero_copy=zero_copy)
            dec.feed(head + b"x" * 1000)
            assert dec.next() is None
            dec.feed(b"x" * (n - 1000))
            with pytest.raises(P.ProtocolError):
                dec.next()


def _payload(m):
    wire = P.encode(m)
    i = 0
    while wire[i] & 0x80:
        i += 1
    return wire[i + 1 :]


def test_limits():
    lim = P.Limits(max_message=1000, max_wantlist=2, max_block=100)
    dec = P.FrameDecoder(lim)
    dec.feed(P._uv(10_000))  # announced size alone is enough to refuse
    with pytest.raises(P.ProtocolError, match="exceeds limit"):
        dec.next()
    with pytest.raises(P.ProtocolError, match="exceeds limit"):
        P.decode_message(_payload(P.WantList([P.WantEntry(CID)] * 3)), lim)
    with pytest.raises(P.ProtocolError):
        P.decode_message(_payload(P.Block(CID, b"x" * 101)), lim)
    with pytest.raises(P.ProtocolError, match="trailing"):
        P.decode_message(_payload(P.Have(CID)) + b"\0")
    with pytest.raises(P.ProtocolError, match="unknown message type"):
        P.decode_message(b"\x55")


def test_dag_request_several_roots_and_skeleton():
    """One root keeps the original layout (no trailing list); several roots and the
    skeleton flag are for the all-selector only; unknown selector flags are refused."""
    one = P.DagRequest(1, CID, P.Selector(P.SEL_ALL, history=True), [], [CID])
    assert _payload(one).endswith(P._uv(1) + P._bytes(CID))  # have_roots last
    assert P.decode_message(_payload(one)).roots == [CID]
    for bad in (P.DagRequest(1, CID, P.Selector(P.SEL_PATH, "a"), more_roots=[CID]),
                P.DagRequest(1, CID, P.Selector(P.SEL_RANGE, "", 0, 9, skeleton=True))):
        with pytest.raises(P.ProtocolError, match="all-selector"):
            P.decode_message(_payload(bad))
    raw = bytearray(_payload(P.DagRequest(1, CID)))
    flags_at = 1 + 1 + 1 + 36 + 1 + 1 + 1 + 1  # type, id, len+CID, kind, path, start, end
    assert raw[flags_at] == 0
    raw[flags_at] = 4  # thin
    assert P.decode_message(bytes(raw)).selector.thin
    raw[flags_at] = 4 | 8  # thin, planes (version-2 values)
    sel = P.decode_message(bytes(raw)).selector
    assert sel.thin and sel.planes
    raw[flags_at] = 16
    with pytest.raises(P.ProtocolError, match="selector flags"):
        P.decode_message(bytes(raw))
    with pytest.raises(P.ProtocolError, match="more roots"):
        P.decode_message(_payload(P.DagRequest(1, CID)) + b"\0")


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_decoder_never_raises_anything_but_protocol_error(data):
    dec = P.FrameDecoder(P.Limits(max_message=1 << 16))
    dec.feed(data)
    try:
        while dec.next() is not None:
            pass
    except P.ProtocolError:
        pass


def test_identity_file_peer_id_and_signatures(tmp_path):
    path = tmp_path / ".tvcfs" / "node.key"
    a = NodeIdentity.load_or_create(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    b = NodeIdentity.load_or_create(path)
    assert a.peer_id == b.peer_id and str(a).startswith("12D3KooW")
    assert parse_peer_id(str(a)) == a.peer_id
    assert b58decode(b58encode(b"\0\0abc")) == b"\0\0abc"
    msg = auth_message(b"server", b"n" * 32)
    assert verify_signature(a.public_key_proto, msg, a.sign(msg)) == a.peer_id
    with pytest.raises(IdentityError):
        verify_signature(a.public_key_proto, msg + b"x", a.sign(msg))
    with pytest.raises(IdentityError):
        parse_peer_id("12D3KooWnot-base58!")


async def _fuzz_one(url, chunks):
    """Connect over QUIC, say Hello, then send garbage; the server must end this
    connection (or answer Error) without affecting others."""
    from tvcfs.transport.client import parse_url

    u = parse_url(url)
    async with connect_quic(u.host, u.port) as conn:
        s = await conn.open_stream()
        await s.send_all(P.encode(P.Hello()))
        for c in chunks:
            await s.send_all(c)
        await s.send_eof()
        with trio.move_on_after(3):
            try:
                while await s.receive_some():
                    pass
            except trio.BrokenResourceError:
                pass


@given(st.lists(st.one_of(
    st.binary(min_size=1, max_size=200),
    st.sampled_from([P.encode(m) for m in SAMPLES]),
    st.just(P._uv(1 << 30)),  # oversized announcement
), min_size=1, max_size=6))
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzing_client_does_not_disturb_others(tmp_path_factory, chunks):
    tmp = tmp_path_factory.mktemp("fz")
    src = make_repo(tmp / "a", {"f.bin": rnd(600_000, 11)})
    dst = Repo.init(str(tmp / "b" / "repo"))
    cfg = ServerConfig(RepoBackend(src), NodeIdentity.generate())

    async def main():
        async with trio.open_nursery() as n:
            url = await start_server(n, cfg)
            res = {}

            async def clone():
                async with open_session(url) as sess:
                    refs, _ = await sess.list_refs()
                    res["st"] = await sess.fetch(RepoBackend(dst), list(refs.values()))

            with trio.fail_after(20):
                async with trio.open_nursery() as m:
                    m.start_soon(_fuzz_one, url, chunks)
                    m.start_soon(clone)
            assert res["st"].missing == []
            assert all_cids(dst) == all_cids(src)
            n.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        src.close()
        dst.close()
