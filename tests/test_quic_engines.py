"""The QUIC engines' internals tvcfs relies on (tvcfs/transport/engines.py), and
session resumption with 0-RTT early data (tvcfs/transport/quic.py), both engines.

The internals test fails loudly, naming the attribute, when a qh3 or aioquic
release changes what the documented qh3 client subclass or the aioquic adapter
uses; the functional tests check that what they are for still happens (large
datagrams from the server, no post-quantum key share unless asked)."""

from __future__ import annotations

import os
import stat

import pytest
import trio

from tvcfs.repo import Repo
from tvcfs.transport.backend import RepoBackend
from tvcfs.transport.client import open_session
from tvcfs.transport.engines import EngineChanged, check_internals, engine
from tvcfs.transport.identity import NodeIdentity, PeerIdMismatch
from tvcfs.transport.quic import (QuicSettings, SessionTickets, connect_quic, serve_quic)
from tvcfs.transport.server import ServerConfig, handle_session

from support.server import echo_stream
from support.repo import make_repo, rnd

ENGINES = ["qh3", "aioquic"]


def _pair(name: str, settings: QuicSettings, ident: NodeIdentity):
    """A client and a server connection of engine ``name``, in memory."""
    eng = engine(name)
    ccfg = eng.make_config(settings, is_client=True, host="127.0.0.1")
    scfg = eng.make_config(settings, is_client=False, host="127.0.0.1", identity=ident)
    client = eng.new_client(ccfg)
    client.connect(("127.0.0.1", 4433), now=_CLOCK[0])
    first = client.datagrams_to_send(now=_CLOCK[0])
    server = eng.new_server(scfg, eng.initial_dcid(first[0][0]))
    return client, server, first


_CLOCK = [0.0]


def _pump(client, server, pending, rounds=200):
    """Move datagrams both ways until quiet (a clock advancing 1 ms a round);
    returns the server's datagram sizes."""
    sizes = []
    for _ in range(rounds):
        _CLOCK[0] += 0.001
        now = _CLOCK[0]
        for data, _addr in pending:
            server.receive_datagram(data, ("127.0.0.1", 5000), now)
        while server.next_event() is not None:
            pass
        out = server.datagrams_to_send(now)
        sizes += [len(d) for d, _ in out]
        for data, _addr in out:
            client.receive_datagram(data, ("127.0.0.1", 4433), now)
        while client.next_event() is not None:
            pass
        pending = client.datagrams_to_send(now)
        if not pending and not out:
            break
    return sizes


@pytest.mark.parametrize("name", ENGINES)
def test_engine_internals_still_exist(name):
    ident = NodeIdentity.generate()
    client, server, first = _pair(name, QuicSettings(engine=name), ident)
    if name == "qh3":
        check_internals(name, bridge=client._tls)
    else:
        sid = client.get_next_available_stream_id()
        client.send_stream_data(sid, b"x")
        check_internals(name, connection=client, stream=client._streams[sid])
    # the checker names what is gone instead of failing somewhere later
    with pytest.raises(EngineChanged, match="tvcfs uses it"):
        check_internals(name, bridge=object(), connection=object(), stream=object())


def test_qh3_client_subclass_does_what_it_is_for():
    ident = NodeIdentity.generate()
    size = 16384
    client, server, first = _pair("qh3", QuicSettings(engine="qh3", max_datagram_size=size),
                                  ident)
    _pump(client, server, first)
    sid = client.get_next_available_stream_id()
    client.send_stream_data(sid, b"go", False)
    _pump(client, server, client.datagrams_to_send(_CLOCK[0]))
    server.send_stream_data(sid, os.urandom(200_000), True)
    sizes = _pump(client, server, [])
    # the server sends datagrams larger than qh3's hard-coded 1472 once told it may
    assert max(sizes) > 1472 and max(sizes) <= size
    # no hybrid post-quantum key share by default: a smaller first flight
    _, _, pq_first = _pair("qh3", QuicSettings(engine="qh3", post_quantum=True), ident)
    assert sum(len(d) for d, _ in first) + 500 < sum(len(d) for d, _ in pq_first)


def test_peer_certificate_and_send_backlog_adapters():
    ident = NodeIdentity.generate()
    for name in ENGINES:
        eng = engine(name)
        client, server, first = _pair(name, QuicSettings(engine=name), ident)
        _pump(client, server, first)
        assert eng.peer_certificate_der(client) == ident.certificate_der
        sid = client.get_next_available_stream_id()
        client.send_stream_data(sid, b"y" * 5000, False)
        assert eng.send_backlog(client, sid) > 0
        _pump(client, server, client.datagrams_to_send(_CLOCK[0]))


# ---------------------------------------------------------------- resumption, 0-RTT
async def _wait_for_ticket(tickets: SessionTickets) -> None:
    """The ticket comes after the handshake: wait for it (10 s at most)."""
    with trio.fail_after(10):
        while not tickets._entries:
            await trio.sleep(0.01)


async def _stoppable_server(nursery, ident, name="qh3"):
    """An echo server; returns ``(port, cancel scope that stops it)``."""
    scope = trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await serve_quic(echo_stream, "127.0.0.1", 0, identity=ident,
                             settings=QuicSettings(engine=name), task_status=task_status)

    return (await nursery.start(run)).address[1], scope

@pytest.mark.parametrize("name", ENGINES)
def test_reconnect_resumes_and_sends_early_data(name, tmp_path):
    ident = NodeIdentity.generate()
    path = str(tmp_path / "tickets.json")

    async def main():
        async with trio.open_nursery() as n:
            srv = await n.start(lambda task_status: serve_quic(
                echo_stream, "127.0.0.1", 0, identity=ident, settings=QuicSettings(engine=name),
                task_status=task_status))
            port = srv.address[1]
            tickets = SessionTickets(path)
            seen = []
            for i in range(3):
                if i == 2:
                    tickets = SessionTickets(path)  # another process: from the file
                async with connect_quic("127.0.0.1", port, expected_peer_id=ident.peer_id,
                                        engine=name, tickets=tickets,
                                        first_data=b"first %d" % i) as conn:
                    got = await conn.first_stream.receive_some()
                    seen.append((conn.resumed, conn.early_data, conn.peer_id, got))
                    await _wait_for_ticket(tickets)
            assert seen[0] == (False, False, ident.peer_id, b"first 0")
            assert seen[1] == (True, True, ident.peer_id, b"first 1")
            assert seen[2] == (True, True, ident.peer_id, b"first 2")
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            n.cancel_scope.cancel()

    trio.run(main)


def test_a_ticket_does_not_vouch_for_another_server_on_the_same_port():
    a, b = NodeIdentity.generate(), NodeIdentity.generate()
    tickets = SessionTickets()

    async def main():
        async with trio.open_nursery() as n:
            port, scope = await _stoppable_server(n, a)
            async with connect_quic("127.0.0.1", port, tickets=tickets) as conn:
                assert conn.peer_id == a.peer_id
                await _wait_for_ticket(tickets)
            scope.cancel()
            await trio.sleep(0.1)
            # server B on the same port, URL pinned to A: the ticket is not B's,
            # so B must show its certificate, and the pin refuses it
            await n.start(lambda task_status: serve_quic(
                echo_stream, "127.0.0.1", port, identity=b, task_status=task_status))
            with pytest.raises(PeerIdMismatch):
                async with connect_quic("127.0.0.1", port, expected_peer_id=a.peer_id,
                                        tickets=tickets, first_data=b"x"):
                    pass
            n.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("private", [False, True])
def test_refs_asked_with_hello_in_early_data(tmp_path, private):
    """The session's first flight (Hello + ListRefs) as 0-RTT on a resumed
    connection; on a private server the early ListRefs is refused and asked again
    after authenticating."""
    src = make_repo(tmp_path / "a", {"f.bin": rnd(50_000, 2)})
    client_id = NodeIdentity.generate()
    cfg = ServerConfig(RepoBackend(src), NodeIdentity.generate(), private=private,
                       allow_read={client_id.peer_id})
    tickets = SessionTickets()

    async def main():
        async with trio.open_nursery() as n:
            srv = await n.start(lambda task_status: serve_quic(
                lambda s: handle_session(s, cfg), "127.0.0.1", 0, identity=cfg.identity,
                task_status=task_status))
            url = f"tvcfs+quic://{cfg.identity.peer_id_str}@127.0.0.1:{srv.address[1]}/"
            early = []
            for _ in range(2):
                async with open_session(url, identity=client_id, auth="auto",
                                        refs_prefix="refs/", tickets=tickets) as sess:
                    refs, head = await sess.list_refs("refs/")
                    assert refs == src.refs() and head == "refs/heads/main"
                    early.append(sess.early_data)
                    await _wait_for_ticket(tickets)
            assert early == [False, True]
            n.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        src.close()


@pytest.mark.parametrize("name", ENGINES)
def test_early_data_to_a_peer_that_stopped_answering_fails_cleanly(name):
    """A ticket, then the peer goes silent (its port held by a socket that reads
    nothing): the resumed attempt fails as "no answer" within the connect
    timeout, not with an engine error (qh3 fails its 0-RTT probe with "missing
    OneRtt packet key")."""
    import socket

    from tvcfs.transport.quic import TransportError

    ident = NodeIdentity.generate()
    tickets = SessionTickets()

    async def main():
        async with trio.open_nursery() as n:
            port, scope = await _stoppable_server(n, ident, name)
            async with connect_quic("127.0.0.1", port, engine=name, tickets=tickets):
                await _wait_for_ticket(tickets)
            scope.cancel()
            await trio.sleep(0.1)
            silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            silent.bind(("127.0.0.1", port))
            try:
                with pytest.raises(TransportError, match="no answer"):
                    async with connect_quic("127.0.0.1", port, engine=name, tickets=tickets,
                                            first_data=b"x",
                                            settings=QuicSettings(engine=name,
                                                                  connect_timeout=3)):
                        pass
            finally:
                silent.close()
            n.cancel_scope.cancel()

    trio.run(main)


def test_fetches_of_a_repository_resume_from_its_ticket_file(tmp_path):
    """The tickets of a repository's transfers live in REPO/.tvcfs/quic-tickets.json
    (mode 0600): the next command that talks to the same peer — another process;
    here the in-process cache is dropped — resumes and sends its first requests
    as 0-RTT early data."""
    from support.server import Server
    from support.wait import wait_until

    from tvcfs import sync
    from tvcfs.transport import runner
    from support.repo import write_files

    make_repo(tmp_path / "a", {"f.bin": rnd(300_000, 4)}).close()
    srv = Server(str(tmp_path / "a" / "repo"))
    try:
        repo, res = sync.clone(srv.url, str(tmp_path / "b"), quiet=True)
        assert not res.stats[0][1].resumed
        path = os.path.join(repo.control, "quic-tickets.json")
        wait_until(lambda: os.path.exists(path), 10, what="the session ticket (it comes after the handshake)")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        runner._TICKETS.clear()  # as if this were the next `tvcfs fetch`
        src = Repo.open(str(tmp_path / "a" / "repo"))
        write_files(tmp_path / "a" / "wt", {"g.bin": rnd(200_000, 5)})
        src.commit_dir(str(tmp_path / "a" / "wt"), message="c2", timestamp=1_700_000_100)
        src.close()
        res = sync.fetch(repo, "origin")
        st = res.stats[0][1]
        assert st.resumed and st.early_data and st.blocks > 0 and not st.missing
        repo.close()
    finally:
        srv.kill()
