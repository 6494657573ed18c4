"""Protocol sessions without sockets (tvcfs/transport/session.py): bytes in, frames and
blocks out. Priorities, pre-emption and de-duplication, cancels, DAG selectors,
limits, malformed input, authentication, push, the client's checks and
bookkeeping, and the fairness ledger's decisions — on a real repository (LMDB),
with no network and no event loop."""

from __future__ import annotations


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvcfs.dag import FileIndex, resolve_path
from tvcfs.encoding.cid import DAG_PB, cid_codec
from tvcfs.repo import Repo
from tvcfs.transport import protocol as P
from tvcfs.transport.backend import RepoBackend
from tvcfs.transport.identity import NodeIdentity, PeerIdMismatch
from tvcfs.transport.ledger import PeerLedger
from tvcfs.transport.server import ServerConfig
from tvcfs.transport.session import (ClientSession, Closed, RemoteError, ServerSession,
                                     StoreBlocks, UpdateRef)

from support.repo import make_repo, repo_with_file, rnd

MIB = 1 << 20
CID = b"\x01\x55\x12\x20" + bytes(range(32))


# ---------------------------------------------------------------- helpers
def decode_all(data: bytes) -> list:
    dec = P.FrameDecoder()
    dec.feed(data)
    out = []
    while (m := dec.next()) is not None:
        out.append(m)
    return out


def feed(server: ServerSession, *msgs) -> list:
    """Deliver ``msgs`` to ``server``; returns the events it raised."""
    server.receive_data(b"".join(P.encode(m) for m in msgs))
    events = []
    while (ev := server.next_event()) is not None:
        events.append(ev)
    return events


def take(server: ServerSession, limit: int | None = None) -> list:
    """Run the server's sending: every frame and block it sends, in order, as
    messages (blocks as ``Block`` with ``bytes`` data), up to ``limit`` blocks."""
    out = decode_all(server.data_to_send())
    n = 0
    while limit is None or n < limit:
        blk = server.next_block()
        out += decode_all(server.data_to_send())
        if blk is None:
            break
        out.append(P.Block(blk.cid, bytes(blk.data)))
        n += 1
    return out


def opened(cfg, **kw) -> ServerSession:
    s = ServerSession(cfg, addr="test", **kw)
    feed(s, P.Hello())
    (w,) = decode_all(s.data_to_send())
    assert isinstance(w, P.Welcome) and w.peer_id == cfg.identity.peer_id
    return s


@pytest.fixture
def big_file(tmp_path):
    repo, idx, interior = repo_with_file(tmp_path, 12 * MIB, 3)
    cfg = ServerConfig(RepoBackend(repo), NodeIdentity.generate(), ledger=None)
    yield repo, cfg, idx, interior
    repo.close()


# ---------------------------------------------------------------- server: order
def test_priorities_preempt_and_nothing_is_sent_twice(big_file):
    repo, cfg, idx, interior = big_file
    s = opened(cfg)
    n = len(idx.leaves)
    # background: the whole file at priority 0
    feed(s, P.DagRequest(1, idx.cid, P.Selector(P.SEL_RANGE, "", 0, idx.size), interior, [], 0))
    first = take(s, 3)
    assert [m.cid for m in first] == idx.leaves[:3]
    # a tensor-priority range near the end, then a foreground want in the middle
    lo, hi = n - 4, n - 1
    mid = n // 2
    feed(s, P.DagRequest(2, idx.cid, P.Selector(P.SEL_RANGE, "", idx.starts[lo],
                                                idx.starts[hi] + idx.sizes[hi]),
                         interior, [], 2),
         P.WantList([P.WantEntry(idx.leaves[mid], 3)]))
    rest = take(s)
    blocks = [m.cid for m in rest if type(m) is P.Block]
    # the want first, then request 2 whole, then the rest of request 1
    assert blocks[0] == idx.leaves[mid]
    assert blocks[1:1 + (hi - lo + 1)] == idx.leaves[lo:hi + 1]
    done = [m for m in rest if type(m) is P.DagDone]
    assert [d.request_id for d in done] == [2, 1]
    assert all(d.status == P.DONE_OK for d in done)
    # request 2 is answered before request 1's next block
    assert rest.index(done[0]) == 1 + (hi - lo + 1)
    every = [m.cid for m in first] + blocks
    assert len(every) == len(set(every)) == n  # each leaf once, none missing
    assert s.next_block() is None and not s.has_work


def test_wants_at_or_above_the_best_request_go_first(big_file):
    repo, cfg, idx, interior = big_file
    s = opened(cfg)
    feed(s, P.DagRequest(1, idx.cid, P.Selector(P.SEL_RANGE, "", 0, idx.size), interior, [], 2),
         P.WantList([P.WantEntry(idx.leaves[5], 1), P.WantEntry(idx.leaves[7], 2),
                     P.WantEntry(CID, 2, P.SEND_DONT_HAVE)]))
    out = take(s, 2)
    # priority-2 wants before the priority-2 request; the lower one waits
    assert out[0] == P.Block(idx.leaves[7], repo.get(idx.leaves[7]))
    assert out[1] == P.DontHave(CID)
    assert out[2].cid == idx.leaves[0]


def test_want_have_and_dont_have(big_file):
    repo, cfg, idx, interior = big_file
    s = opened(cfg)
    feed(s, P.WantList([P.WantEntry(idx.leaves[0], 1, P.WANT_HAVE),
                        P.WantEntry(CID, 1, P.WANT_HAVE),
                        P.WantEntry(CID[:-1] + b"\x01", 1, 0)]))  # no send-dont-have
    assert take(s) == [P.Have(idx.leaves[0]), P.DontHave(CID)]


def test_cancel_active_and_queued_requests(big_file):
    repo, cfg, idx, interior = big_file
    s = opened(cfg)
    sel = P.Selector(P.SEL_RANGE, "", 0, idx.size)
    feed(s, P.DagRequest(1, idx.cid, sel, interior, [], 1),
         P.DagRequest(2, idx.cid, sel, interior, [], 1))
    assert len(take(s, 2)) == 2
    # request 2 has not started: its DagDone comes at once; 1 stops before its next block
    feed(s, P.Cancel(2), P.Cancel(1), P.Cancel(99))
    out = take(s)
    assert out == [P.DagDone(2, P.DONE_ERROR, 0, 0, "cancelled"),
                   P.DagDone(1, P.DONE_ERROR, 2, sum(idx.sizes[:2]), "cancelled")]
    assert not s.has_work


def test_a_want_answered_first_is_skipped_by_a_dag_answer(big_file):
    repo, cfg, idx, interior = big_file
    s = opened(cfg)
    feed(s, P.WantList([P.WantEntry(idx.leaves[1], 3)]),
         P.DagRequest(1, idx.cid, P.Selector(P.SEL_RANGE, "", 0, idx.starts[3]), interior, [], 1))
    out = [m.cid for m in take(s) if type(m) is P.Block]
    assert out == [idx.leaves[1], idx.leaves[0], idx.leaves[2]]


# ---------------------------------------------------------------- server: selectors
def test_dag_selectors(tmp_path):
    data = rnd(3 * MIB, 5)
    src = make_repo(tmp_path / "a", {"d/model.bin": data, "other.bin": rnd(MIB, 6)})
    try:
        cfg = ServerConfig(RepoBackend(src), NodeIdentity.generate(), ledger=None)
        head = src.head()
        tree = src.read_commit(head).tree
        fcid = resolve_path(src.get, tree, "d/model.bin").cid
        ocid = resolve_path(src.get, tree, "other.bin").cid
        idx = FileIndex.build(src.get, fcid)

        def answer(req):
            s = opened(cfg)
            feed(s, req)
            out = take(s)
            assert type(out[-1]) is P.DagDone
            return [m.cid for m in out[:-1]], out[-1]

        # all: every block of the commit once, parents before children
        every, done = answer(P.DagRequest(1, head))
        assert every[0] == head and every[1] == tree and len(every) == len(set(every))
        assert set(idx.leaves) <= set(every) and done.status == P.DONE_OK
        assert done.blocks == len(every)
        # skeleton: no raw leaf
        skel, _ = answer(P.DagRequest(2, head, P.Selector(P.SEL_ALL, skeleton=True)))
        assert all(cid_codec(c) != 0x55 for c in skel) and fcid in skel
        # path: the chain down, then the sub-DAG of other.bin
        path, _ = answer(P.DagRequest(3, head, P.Selector(P.SEL_PATH, "other.bin")))
        assert path[:3] == [head, tree, ocid] and not set(idx.leaves) & set(path)
        # byte range: the chain, the file's interior nodes, the one overlapping leaf
        rng, _ = answer(P.DagRequest(4, head, P.Selector(P.SEL_RANGE, "d/model.bin", MIB,
                                                          MIB + 10)))
        want = [idx.leaves[i] for i in idx.leaf_range(MIB, 10)]
        assert rng[-1] == want[-1] and fcid in rng
        assert not (set(idx.leaves) - set(want)) & set(rng)
        # have: not sent; have_roots: pruned
        some, _ = answer(P.DagRequest(5, head, P.Selector(), [tree]))
        assert tree not in some and fcid in some
        none, done = answer(P.DagRequest(6, head, P.Selector(), [], [head]))
        assert none == [] and done.status == P.DONE_OK
        # several roots: a block they share is sent once
        two, _ = answer(P.DagRequest(7, fcid, P.Selector(), more_roots=[ocid, fcid]))
        assert len(two) == len(set(two))
        # a missing root: DontHave, partial
        s = opened(cfg)
        feed(s, P.DagRequest(8, CID))
        assert take(s) == [P.DontHave(CID), P.DagDone(8, P.DONE_PARTIAL, 0, 0, "")]
        # a path that does not exist: an error for that request, the session goes on
        s = opened(cfg)
        feed(s, P.DagRequest(9, head, P.Selector(P.SEL_PATH, "nope")), P.ListRefs(10))
        out = take(s)
        assert type(out[0]) is P.Refs
        assert out[-1].status == P.DONE_ERROR and "nope" in out[-1].message
    finally:
        src.close()


# ---------------------------------------------------------------- server: limits, bad input
def _closed_with(events, s, text):
    assert [type(e) for e in events] == [Closed] and text in events[0].error
    out = decode_all(s.data_to_send())
    assert out and type(out[-1]) is P.Error and out[-1].code == P.E_PROTOCOL
    assert s.closed and s.next_block() is None


def test_limits(big_file):
    repo, cfg, idx, interior = big_file
    lim = P.Limits(max_wantlist=4, max_requests=3, max_message=1000)
    cfg.limits = lim
    s = opened(cfg)
    ev = feed(s, *[P.DagRequest(i, idx.cid, P.Selector()) for i in range(1, 5)])
    _closed_with(ev, s, "too many outstanding requests")
    s = opened(cfg)
    ev = feed(s, P.WantList([P.WantEntry(c) for c in idx.leaves[:3]]),
              P.WantList([P.WantEntry(c) for c in idx.leaves[3:5]]))
    _closed_with(ev, s, "want-list too long")
    s = opened(cfg)
    s.receive_data(P._uv(5000))
    _closed_with([s.next_event()], s, "exceeds limit")
    # nothing more is read after the end
    s.receive_data(P.encode(P.ListRefs(1)))
    assert s.next_event() is None and s.data_to_send() == b""


def test_malformed_and_out_of_order_input(big_file):
    repo, cfg, idx, interior = big_file
    s = ServerSession(cfg)
    _closed_with(feed(s, P.ListRefs(1)), s, "expected Hello")
    s = opened(cfg)
    _closed_with(feed(s, P.Welcome(1, b"x", b"n" * 32, 1, 1, 1)), s, "unexpected message")
    s = opened(cfg)
    s.receive_data(b"\x02\x7e\x00")  # unknown type
    _closed_with([s.next_event()], s, "unknown message type")
    s = opened(cfg)
    s.receive_data(P.encode(P.ListRefs(1))[:-1])
    s.receive_eof()
    _closed_with([s.next_event()], s, "inside a message")
    s = ServerSession(cfg)
    assert feed(s, P.Hello(version=9)) == [Closed()]
    assert decode_all(s.data_to_send())[0].message == "unsupported version 9"


@given(st.lists(st.one_of(st.binary(min_size=1, max_size=64),
                          st.sampled_from([P.encode(P.WantList([P.WantEntry(CID)])),
                                           P.encode(P.Cancel(1)), P.encode(P.ListRefs(2)),
                                           P.encode(P.DagRequest(1, CID))])),
                min_size=1, max_size=8))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_input_ends_in_frames_or_a_clean_close(big_file, chunks):
    repo, cfg, idx, interior = big_file
    s = opened(cfg)
    for c in chunks:
        s.receive_data(c)
        while (ev := s.next_event()) is not None:
            assert type(ev) is Closed
        take(s)
    s.receive_eof()
    while (ev := s.next_event()) is not None:
        assert type(ev) is Closed
        take(s)
    take(s)
    assert s.next_event() in (None, Closed()) or s.closed


def test_eof_drains_outstanding_work_then_closes(big_file):
    repo, cfg, idx, interior = big_file
    s = opened(cfg)
    feed(s, P.DagRequest(1, idx.cid, P.Selector(P.SEL_RANGE, "", 0, idx.starts[2]), interior))
    s.receive_eof()
    assert s.next_event() is None  # answers still to send
    assert [type(m) for m in take(s)] == [P.Block, P.Block, P.DagDone]
    assert s.next_event() == Closed() and s.closed


# ---------------------------------------------------------------- server: auth, push
def test_private_server_auth_and_push(tmp_path):
    src = make_repo(tmp_path / "a", {"f.bin": rnd(200_000, 1)})
    dst = Repo.init(str(tmp_path / "b"))
    try:
        client_id = NodeIdentity.generate()
        cfg = ServerConfig(RepoBackend(dst), NodeIdentity.generate(), private=True,
                           allow_push={client_id.peer_id}, ledger=None)
        s = ServerSession(cfg)
        c = ClientSession(cfg.identity.peer_id)
        c.hello()
        for part in c.data_to_send():
            s.receive_data(part)
        assert s.next_event() is None
        c.receive_data(s.data_to_send())
        assert type(c.next_event()) is P.Welcome and c.welcome.flags & 1
        # a read before authenticating is refused, the session goes on
        feed(s, P.DagRequest(1, src.head()), P.ListRefs(2))
        out = take(s)
        assert [(type(m), m.request_id, m.code) for m in out] == [
            (P.Error, 1, P.E_UNAUTHORIZED), (P.Error, 2, P.E_UNAUTHORIZED)]
        c.authenticate(client_id)
        for part in c.data_to_send():
            s.receive_data(part)
        assert s.next_event() is None
        c.receive_data(s.data_to_send())
        ok = c.next_event()
        assert type(ok) is P.AuthOk and ok.can_push and c.can_push
        # push every block of the commit, then the ref update
        blocks = [(k, src.get(k)) for k in src.store]
        for cid, data in blocks:
            c.push_block(cid, bytes(data))
        rid = c.update_ref("refs/heads/main", None, src.head())
        for part in c.data_to_send():
            s.receive_data(part)
        events = []
        while (ev := s.next_event()) is not None:
            events.append(ev)
        assert [type(e) for e in events] == [StoreBlocks, UpdateRef]
        dst.store.put_many(events[0].blocks)
        assert s.check_ref_update(events[1].message)
        s.apply_ref_update(events[1].message)
        c.receive_data(s.data_to_send())
        res = c.next_event()
        assert type(res) is P.RefResult and res.request_id == rid and res.ok
        assert dst.ref_db.get("refs/heads/main") == src.head()
        # a bad pushed block ends the session
        ev = feed(s, P.Block(CID, b"not it"))
        _closed_with(ev, s, "pushed block rejected")
    finally:
        src.close()
        dst.close()


def test_unauthorised_push_is_refused(big_file):
    repo, cfg, idx, interior = big_file
    s = opened(cfg)
    feed(s, P.RefUpdate(1, "refs/heads/main", None, CID))
    (r,) = take(s)
    assert type(r) is P.RefResult and not r.ok and "unauthorised" in r.message
    ev = feed(s, P.Block(idx.leaves[0], repo.get(idx.leaves[0])))
    assert [type(e) for e in ev] == [Closed] and "unauthorised push" in ev[0].error


# ---------------------------------------------------------------- client
def test_client_checks_what_the_server_sends():
    server_peer = NodeIdentity.generate().peer_id
    c = ClientSession(server_peer)
    c.hello()
    # a Welcome naming another peer
    c.receive_data(P.encode(P.Welcome(1, b"other", b"n" * 32, 1, 1, 1)))
    with pytest.raises(PeerIdMismatch):
        c.next_event()
    c = ClientSession(server_peer)
    c.receive_data(P.encode(P.Welcome(2, server_peer, b"n" * 32, 1, 1, 1)))
    with pytest.raises(RemoteError, match="protocol version 2"):
        c.next_event()
    c = ClientSession()
    c.receive_data(P.encode(P.Error(0, P.E_LIMIT, "too big")))
    with pytest.raises(RemoteError, match="too big"):
        c.next_event()
    for bad in (P.Hello(), P.DagRequest(1, CID), P.Refs(5), P.RefResult(5, True, None)):
        c = ClientSession()
        c.receive_data(P.encode(bad))
        with pytest.raises(P.ProtocolError):
            c.next_event()
    c = ClientSession()
    c.receive_data(b"\xff\xff\xff\xff\xff\x01")
    with pytest.raises(P.ProtocolError):
        c.next_event()


def test_client_bookkeeping_of_requests_and_wants():
    c = ClientSession()
    c.receive_data(P.encode(P.Welcome(1, b"p", b"n" * 32, 1 << 20, 2, 1)))
    c.next_event()
    rid = c.request_dag([CID], P.Selector(P.SEL_ALL, skeleton=True))
    rid2 = c.request_range(CID, 0, 10, priority=2)
    with pytest.raises(ValueError):
        c.request_dag([CID, CID], P.Selector(P.SEL_PATH, "x"))
    c.want([b"a" * 36, b"b" * 36, b"c" * 36], priority=3)
    msgs = decode_all(b"".join(c.data_to_send()))
    # split at the server's max_wantlist (2)
    assert [len(m.entries) for m in msgs if type(m) is P.WantList] == [2, 1]
    assert set(c.requests) == {rid, rid2} and len(c.wanted) == 3
    c.cancel(rid2)
    c.cancel(12345)  # not outstanding: nothing sent
    assert decode_all(b"".join(c.data_to_send())) == [P.Cancel(rid2)]
    c.receive_data(P.encode(P.DagDone(rid2, P.DONE_ERROR, 0, 0, "cancelled"))
                   + P.encode(P.Block(b"a" * 36, b"x")) + P.encode(P.DontHave(b"b" * 36))
                   + P.encode(P.DagDone(777)))  # an unknown id: tolerated (a cancel race)
    got = [c.next_event() for _ in range(4)]
    assert [type(m) for m in got] == [P.DagDone, P.Block, P.DontHave, P.DagDone]
    assert set(c.requests) == {rid} and set(c.wanted) == {b"c" * 36}
    c.cancel_wants([b"c" * 36])
    assert not c.wanted


def test_client_and_server_sessions_clone_in_memory(tmp_path):
    """A whole conversation with bytes moved by hand: refs, a multi-root DAG
    request, blocks verified and stored."""
    src = make_repo(tmp_path / "a", {"m.bin": rnd(3 * MIB, 9), "n.bin": rnd(1000, 1)})
    dst = Repo.init(str(tmp_path / "b"))
    try:
        cfg = ServerConfig(RepoBackend(src), NodeIdentity.generate(), ledger=None)
        s = ServerSession(cfg)
        c = ClientSession(cfg.identity.peer_id, zero_copy=True)
        c.hello()
        rid = c.list_refs("refs/")
        received = []

        def pump():
            for part in c.data_to_send():
                s.receive_data(part)
            while s.next_event() is not None:
                pass
            while True:
                c.receive_data(s.data_to_send())
                blk = s.next_block()
                c.receive_data(s.data_to_send())
                if blk is None:
                    break
                c.receive_data(P.block_frame_header(blk.cid, len(blk.data)))
                data = bytes(blk.data)
                for i in range(0, len(data), 1400):  # datagram-sized pieces
                    c.receive_data(data[i:i + 1400])
            while (m := c.next_event()) is not None:
                received.append(m)

        pump()
        assert [type(m) for m in received] == [P.Welcome, P.Refs]
        refs = received[1].refs
        assert received[1].request_id == rid and refs == src.refs()
        received.clear()
        c.request_dag(list(refs.values()), P.Selector(P.SEL_ALL, history=True))
        pump()
        blocks = [(m.cid, P.block_bytes(m.data)) for m in received if type(m) is P.Block]
        assert type(received[-1]) is P.DagDone and received[-1].status == P.DONE_OK
        dst.store.put_many(blocks)
        assert not c.requests
        assert {cid for cid, _ in blocks} == {k for k in src.store}
        assert all(cid_codec(cid) in (0x55, DAG_PB, 0x71) for cid, _ in blocks)
    finally:
        src.close()
        dst.close()


# ---------------------------------------------------------------- ledger
def test_ledger_decisions():
    led = PeerLedger(quantum=100, idle=2.0)
    led.arrive("a", 0.0)
    assert not led.ahead("a")  # alone: never held
    led.book("a", 1000, 0.0)
    led.depart("a")
    led.arrive("b", 0.5)  # a newcomer starts at the level of the least-served active peer
    assert led.sent["b"] == 1000
    led.arrive("a", 0.5)
    led.book("a", 500, 0.5)
    assert led.ahead("a") and not led.ahead("b")  # a is 500 ahead of waiting b
    led.book("b", 450, 0.6)
    assert not led.ahead("a")  # within the quantum again
    led.depart("b")
    assert not led.ahead("a")  # nobody else waiting: work-conserving
    led.depart("a")
    led.arrive("c", 10.0)  # everyone idle: starts at zero
    assert led.sent["c"] == 0
    assert led.snapshot() == {"a": 1500, "b": 450}
