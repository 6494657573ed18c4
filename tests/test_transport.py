"""End-to-end transport tests: real QUIC (both engines) and TLS-over-TCP on
loopback, real LMDB repositories, no mocks."""

from __future__ import annotations


import pytest
import trio

from support.repo import all_cids, make_repo, rnd, write_files
from support.server import start_server

from tvcfs.encoding.cid import RAW
from tvcfs.repo import Repo
from tvcfs.transport import protocol as P
from tvcfs.transport.backend import RepoBackend
from tvcfs.transport.client import RemoteError, open_session, parse_url
from tvcfs.transport.identity import NodeIdentity, PeerIdMismatch, format_peer_id
from tvcfs.transport.server import ServerConfig, missing_in_dag

ENGINES = ["qh3", "aioquic"]


@pytest.mark.parametrize("transport,engine", [("quic", "qh3"), ("quic", "aioquic"), ("tcp", None)])
def test_clone_fetch_only_new_blocks(tmp_path, transport, engine):
    src = make_repo(tmp_path / "a", {"model.bin": rnd(3 << 20, 1), "cfg/x.json": b"{}"})
    dst = Repo.init(str(tmp_path / "b" / "repo"))
    cfg = ServerConfig(RepoBackend(src), NodeIdentity.generate())

    async def main():
        async with trio.open_nursery() as n:
            url = await start_server(n, cfg, transport, engine or "qh3")
            async with open_session(url, engine=engine) as sess:
                assert sess.peer_id == cfg.identity.peer_id
                refs, head = await sess.list_refs()
                assert head == "refs/heads/main" and refs == src.refs()
                st = await sess.fetch(RepoBackend(dst), list(refs.values()))
                assert st.missing == [] and st.bad_blocks == 0
                assert all_cids(dst) == all_cids(src)
                assert st.blocks == len(all_cids(src))
                # new commit on the remote: a fetch moves only the new blocks
                before = all_cids(src)
                write_files(tmp_path / "a" / "wt", {"extra.bin": rnd(2 << 20, 2)})
                src.commit_dir(str(tmp_path / "a" / "wt"), message="c2", timestamp=1_700_000_100)
                new = all_cids(src) - before
                refs2, _ = await sess.list_refs()
                st2 = await sess.fetch(RepoBackend(dst), list(refs2.values()),
                                       complete=set(refs.values()))
                assert st2.blocks == len(new)
                assert all_cids(dst) == all_cids(src)
            n.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("transport", ["quic", "tcp"])
def test_peer_id_mismatch_and_unauthorised_push(tmp_path, transport):
    src = make_repo(tmp_path / "a", {"f": b"hello"})
    cfg = ServerConfig(RepoBackend(src), NodeIdentity.generate())
    other = NodeIdentity.generate()

    async def main():
        async with trio.open_nursery() as n:
            url = await start_server(n, cfg, transport)
            bad = url.replace(format_peer_id(cfg.identity.peer_id), format_peer_id(other.peer_id))
            with pytest.raises(PeerIdMismatch, match="peer ID mismatch"):
                async with open_session(bad):
                    pass
            async with open_session(url, identity=other) as sess:
                assert not sess.can_push
                with pytest.raises(RemoteError, match="unauthorised"):
                    await sess.push(RepoBackend(src), "refs/heads/main", src.head(),
                                    expected_old=src.head())
            n.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("transport,engine", [("quic", "qh3"), ("quic", "aioquic"), ("tcp", None)])
def test_push_cas(tmp_path, transport, engine):
    remote = make_repo(tmp_path / "r", {"f": rnd(100_000, 3)})
    local = Repo.init(str(tmp_path / "l" / "repo"))
    me = NodeIdentity.generate()
    cfg = ServerConfig(RepoBackend(remote), NodeIdentity.generate(), allow_push={me.peer_id})

    async def main():
        async with trio.open_nursery() as n:
            url = await start_server(n, cfg, transport, engine or "qh3")
            async with open_session(url, identity=me, engine=engine) as sess:
                assert sess.can_push
                refs, _ = await sess.list_refs()
                base = refs["refs/heads/main"]
                await sess.fetch(RepoBackend(local), [base])
                local.update_ref("refs/heads/main", base, None)
                write_files(tmp_path / "l" / "wt", {"f": rnd(100_000, 3), "g": rnd(50_000, 4)})
                c2 = local.commit_dir(str(tmp_path / "l" / "wt"), message="local").cid
                # the remote moves on meanwhile
                write_files(tmp_path / "r" / "wt", {"h": b"remote change"})
                remote.commit_dir(str(tmp_path / "r" / "wt"), message="remote")
                moved = remote.head()
                blocks_before = all_cids(remote)
                with pytest.raises(RemoteError, match="stale base"):
                    await sess.push(RepoBackend(local), "refs/heads/main", c2,
                                    expected_old=base, remote_complete={base})
                assert remote.head() == moved
                # nothing the ref reaches changed; pushed blocks are unreferenced until gc
                assert blocks_before <= all_cids(remote)
                # a push with the right base succeeds and sends only missing blocks
                nb, _ = await sess.push(RepoBackend(local), "refs/heads/other", c2,
                                        expected_old=None, remote_complete={base})
                assert nb == 0  # the rejected push already delivered them (has_many skips)
                assert remote.refs()["refs/heads/other"] == c2
                assert missing_in_dag(RepoBackend(remote), c2, set()) == []
            n.cancel_scope.cancel()

    trio.run(main)


def test_bad_block_from_one_remote_is_fetched_from_another(tmp_path):
    src = make_repo(tmp_path / "a", {"model.bin": rnd(3 << 20, 5)})
    dst = Repo.init(str(tmp_path / "b" / "repo"))
    flipped = []

    def corrupt(cid, data):
        if cid[1] == RAW and not flipped:
            flipped.append(cid)
            data = bytearray(data)
            data[10] ^= 0xFF
            return bytes(data)
        return data

    evil = ServerConfig(RepoBackend(src), NodeIdentity.generate(), corrupt_hook=corrupt)
    good = ServerConfig(RepoBackend(src), NodeIdentity.generate())

    async def main():
        async with trio.open_nursery() as n:
            u1 = await start_server(n, evil)
            u2 = await start_server(n, good)
            root = src.head()
            async with open_session(u1) as s1:
                st = await s1.fetch(RepoBackend(dst), [root], max_rounds=1)
            assert st.bad_blocks == 1 and st.bad_cids == flipped
            assert flipped[0] in st.missing and not dst.has(flipped[0])
            async with open_session(u2) as s2:
                st2 = await s2.fetch(RepoBackend(dst), [root])
            assert st2.missing == [] and st2.blocks == 1
            assert all_cids(dst) == all_cids(src)
            n.cancel_scope.cancel()

    trio.run(main)


def test_tls_receive_into_decrypts_into_the_callers_buffer(tmp_path):
    """TLSStream.receive_into writes plaintext into the given buffer (a block's own,
    see FrameDecoder.receive_buffer), as many bytes as are there up to its size, and
    leaves the rest of the stream to the next receive; 0 at the end of the stream."""
    import functools

    from tvcfs.transport.tcp import connect_tcp, serve_tcp

    ident = NodeIdentity.generate()
    payload = rnd(3 << 20, 9)

    async def handler(stream):
        await stream.send_all(payload)
        await stream.aclose()

    async def main():
        async with trio.open_nursery() as n:
            host, port = await n.start(functools.partial(serve_tcp, identity=ident), handler, "127.0.0.1", 0)
            with trio.fail_after(20):
                async with connect_tcp(host, port, expected_peer_id=ident.peer_id) as stream:
                    buf = bytearray(len(payload) - 1000)
                    view = memoryview(buf)
                    got = 0
                    calls = 0
                    while got < len(buf):
                        k = await stream.receive_into(view[got:])
                        assert 0 < k <= len(buf) - got
                        got += k
                        calls += 1
                    assert buf == payload[:-1000]
                    assert calls < 64  # records decrypted in bulk, not one per call
                    rest = b"".join([c async for c in _chunks(stream)])
                    assert rest == payload[-1000:]
                    assert await stream.receive_into(bytearray(10)) == 0
            n.cancel_scope.cancel()

    trio.run(main)


def test_tls_channel_receives_blocks_into_their_own_buffers(tmp_path):
    """Over TLS/TCP a zero-copy channel reads between blocks in small steps, so each
    block's bytes are decrypted straight into the block's own buffer (a bytearray:
    no chunk list, no join), also when the whole block is already waiting in the
    socket; small frames around the blocks and a large non-Block frame decode as
    usual."""
    import fcntl
    import functools
    import struct
    import termios

    from tvcfs.transport.channel import MessageChannel
    from tvcfs.transport.tcp import connect_tcp, serve_tcp

    ident = NodeIdentity.generate()
    blocks = [(bytes([1, 0x55, 0x12, 0x20]) + bytes([k]) * 32, rnd(80_000 + 17 * k, k))
              for k in range(4)]
    wants = P.WantList([P.WantEntry(blocks[0][0], i) for i in range(3000)])  # > 64 KiB

    async def handler(stream):
        ch = MessageChannel(stream)
        for k, (cid, data) in enumerate(blocks):
            await ch.send_block(cid, data)
            await ch.send(P.Have(cid))
            if k == 1:
                await ch.send(wants)
        await trio.sleep_forever()

    def readable(sock) -> int:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]

    async def main():
        async with trio.open_nursery() as n:
            host, port = await n.start(functools.partial(serve_tcp, identity=ident), handler,
                                       "127.0.0.1", 0)
            with trio.fail_after(20):
                async with connect_tcp(host, port, expected_peer_id=ident.peer_id) as stream:
                    while readable(stream.transport_stream.socket) < 90_000:  # the first block, whole
                        await trio.sleep(0.01)
                    ch = MessageChannel(stream, zero_copy=True)
                    for k, (cid, data) in enumerate(blocks):
                        msg = await ch.receive()
                        assert msg.cid == cid and type(msg.data) is bytearray
                        assert msg.data == data
                        assert await ch.receive() == P.Have(cid)
                        if k == 1:
                            assert await ch.receive() == wants
            n.cancel_scope.cancel()

    trio.run(main)


async def _chunks(stream):
    while chunks := await stream.receive_chunks():
        for c in chunks:
            yield c


def test_tcp_fallback_when_udp_unanswered(tmp_path):
    src = make_repo(tmp_path / "a", {"f": rnd(200_000, 6)})
    dst = Repo.init(str(tmp_path / "b" / "repo"))
    cfg = ServerConfig(RepoBackend(src), NodeIdentity.generate())

    async def main():
        async with trio.open_nursery() as n:
            url = await start_server(n, cfg, "tcp")  # no QUIC listener at all
            auto = url.replace("tvcfs+tcp://", "tvcfs://")
            with trio.fail_after(10):
                async with open_session(auto, fallback_timeout=0.5) as sess:
                    assert sess.transport == "tcp"
                    st = await sess.fetch(RepoBackend(dst), [src.head()])
            assert st.missing == [] and all_cids(dst) == all_cids(src)
            n.cancel_scope.cancel()

    trio.run(main)


def test_wantlist_and_selectors(tmp_path):
    data = rnd(3 << 20, 7)
    src = make_repo(tmp_path / "a", {"d/model.bin": data, "other.bin": rnd(1 << 20, 8)})
    cfg = ServerConfig(RepoBackend(src), NodeIdentity.generate())
    from tvcfs.dag import FileIndex, resolve_path

    tree = src.read_commit(src.head()).tree
    fcid = resolve_path(src.get, tree, "d/model.bin").cid
    idx = FileIndex.build(src.get, fcid)

    async def main():
        async with trio.open_nursery() as n:
            url = await start_server(n, cfg)
            async with open_session(url) as sess:
                got = await sess.want([idx.leaves[0], b"\x01\x55\x12\x20" + b"\0" * 32])
                assert list(got) == [idx.leaves[0]]
                assert await sess.has_many([idx.leaves[1], b"\x01\x55\x12\x20" + b"\1" * 32]) \
                    == {idx.leaves[1]}
                # byte-range selector: the path's nodes, the file's interior, 1 leaf
                sel = P.Selector(P.SEL_RANGE, "d/model.bin", 1 << 20, (1 << 20) + 10)
                await sess.ch.send(P.DagRequest(9, src.head(), sel))
                cids = []
                while True:
                    m = await sess.ch.receive()
                    if isinstance(m, P.DagDone):
                        break
                    cids.append(m.cid)
                assert m.status == P.DONE_OK
                want = [idx.leaves[i] for i in idx.leaf_range(1 << 20, 10)]
                assert len(want) == 1
                assert cids[0] == src.head() and cids[1] == tree and cids[-1] == want[0]
                assert fcid in cids
                assert not (set(idx.leaves) - set(want)) & set(cids)
            n.cancel_scope.cancel()

    trio.run(main)


def test_parse_url():
    ident = NodeIdentity.generate()
    u = parse_url(f"tvcfs://{ident}@example.org:1234/models")
    assert (u.transport, u.host, u.port, u.peer_id, u.repo) == ("auto", "example.org", 1234,
                                                                ident.peer_id, "models")
    assert str(u) == f"tvcfs://{ident}@example.org:1234/models"
    with pytest.raises(ValueError):
        parse_url("http://x")


def test_interrupted_clone_resumes_with_only_missing_bytes(tmp_path):
    files = {f"m{i}.bin": rnd(4 << 20, 20 + i) for i in range(5)}  # 20 MiB
    src = make_repo(tmp_path / "a", files)
    dst = Repo.init(str(tmp_path / "b" / "repo"))
    total = sum(len(src.get(c)) for c in all_cids(src))
    sent = [0]

    def die_midway(cid, data):
        sent[0] += len(data)
        if sent[0] > total // 2:
            raise RuntimeError("server killed")  # the session dies mid-transfer
        return data

    dying = ServerConfig(RepoBackend(src), NodeIdentity.generate(), corrupt_hook=die_midway)
    healthy = ServerConfig(RepoBackend(src), NodeIdentity.generate())

    async def main():
        async with trio.open_nursery() as n:
            u1 = await start_server(n, dying)
            u2 = await start_server(n, healthy)
            with pytest.raises((trio.BrokenResourceError, RemoteError)):
                async with open_session(u1) as s1:
                    await s1.fetch(RepoBackend(dst), [src.head()])
            have = sum(len(dst.get(c)) for c in all_cids(dst))
            assert 0 < have < total
            missing = total - have
            async with open_session(u2) as s2:
                st = await s2.fetch(RepoBackend(dst), [src.head()])
            assert st.missing == [] and all_cids(dst) == all_cids(src)
            assert st.wire_bytes < missing * 1.05, (st.wire_bytes, missing)
            n.cancel_scope.cancel()

    trio.run(main)
