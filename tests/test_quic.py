"""QUIC-on-trio layer (tvcfs.transport.quic) on real loopback UDP, both engines."""

from __future__ import annotations

import pytest
import trio

from support.server import echo_stream
from tvcfs.transport.identity import NodeIdentity, PeerIdMismatch
from tvcfs.transport.quic import (QuicConnectionLost, QuicSettings, TransportError,
                                  connect_quic, serve_quic)

ENGINES = ["qh3", "aioquic"]


async def _start(nursery, handler, ident, engine, **kw):
    return await nursery.start(lambda task_status: serve_quic(
        handler, "127.0.0.1", 0, identity=ident, settings=QuicSettings(engine=engine, **kw),
        task_status=task_status))


BLOCK = bytes(range(256)) * 4096  # 1 MiB
_TWICE = BLOCK * 2


def _block_sender(total: int):
    """A server stream handler: after the client's first bytes, ``total`` bytes of
    ``BLOCK`` in 1 MiB writes, then FIN."""
    async def sender(stream):
        await stream.receive_some()
        for _ in range(total // len(BLOCK)):
            await stream.send_all(BLOCK)
        await stream.send_eof()
    return sender


def _check_chunks(chunks, got: int) -> int:
    """Assert ``chunks`` continue the ``BLOCK`` stream at offset ``got``; the new offset."""
    for c in chunks:
        off = got % len(BLOCK)
        assert c == _TWICE[off:off + len(c)]
        got += len(c)
    return got


@pytest.mark.parametrize("engine", ENGINES)
def test_echo_many_streams_and_half_close(engine):
    ident = NodeIdentity.generate()

    async def main():
        async with trio.open_nursery() as n:
            srv = await _start(n, echo_stream, ident, engine)
            async with connect_quic("127.0.0.1", srv.address[1], expected_peer_id=ident.peer_id,
                                    engine=engine) as conn:
                assert conn.peer_id == ident.peer_id and conn.engine == engine

                async def one(i):
                    s = await conn.open_stream()
                    payload = bytes([i]) * (300_000 + i)
                    await s.send_all(payload)
                    await s.send_eof()
                    got = bytearray()
                    while chunk := await s.receive_some(65536):
                        got += chunk
                    assert got == payload
                    await s.aclose()

                async with trio.open_nursery() as m:
                    for i in range(5):
                        m.start_soon(one, i)
            n.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("engine", ENGINES)
def test_server_close_reaches_client(engine):
    ident = NodeIdentity.generate()

    async def closer(stream):
        await stream.receive_some()
        stream.connection.close(0x42, "bye")

    async def main():
        async with trio.open_nursery() as n:
            srv = await _start(n, closer, ident, engine)
            async with connect_quic("127.0.0.1", srv.address[1], engine=engine) as conn:
                s = await conn.open_stream()
                await s.send_all(b"x")
                with trio.fail_after(5):
                    with pytest.raises(QuicConnectionLost):
                        await s.receive_some()
                assert conn.closed
            n.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("engine", ENGINES)
def test_peer_id_pin_and_timeout(engine):
    ident, other = NodeIdentity.generate(), NodeIdentity.generate()

    async def main():
        async with trio.open_nursery() as n:
            srv = await _start(n, echo_stream, ident, engine)
            with pytest.raises(PeerIdMismatch):
                async with connect_quic("127.0.0.1", srv.address[1],
                                        expected_peer_id=other.peer_id, engine=engine):
                    pass
            n.cancel_scope.cancel()
        # nobody listening: the handshake times out with a clear error
        import socket

        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(TransportError, match="handshake"):
            async with connect_quic("127.0.0.1", port, engine=engine,
                                    settings=QuicSettings(connect_timeout=0.3)):
                pass
        s.close()

    trio.run(main)


@pytest.mark.parametrize("engine", ENGINES)
def test_idle_timeout_detects_dead_server(engine):
    ident = NodeIdentity.generate()

    async def main():
        async with trio.open_nursery() as n:
            scope = trio.CancelScope()

            async def server(task_status):
                with scope:
                    await serve_quic(echo_stream, "127.0.0.1", 0, identity=ident,
                                     settings=QuicSettings(engine=engine),
                                     task_status=task_status)

            srv = await n.start(server)
            st = QuicSettings(engine=engine, idle_timeout=0.5)
            async with connect_quic("127.0.0.1", srv.address[1], settings=st) as conn:
                s = await conn.open_stream()
                await s.send_all(b"ping")
                assert await s.receive_some() == b"ping"
                scope.cancel()  # the server vanishes without a word
                with trio.fail_after(5):
                    with pytest.raises(QuicConnectionLost):
                        while True:
                            await s.receive_some()
            n.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("engine", ENGINES)
def test_slow_reader_bounds_what_the_client_buffers(engine):
    """A client reading slower than the network stops reading its socket above
    receive_high_water (the engines grant the peer more window as soon as they
    deliver data), so it holds about that much, not the whole transfer; every
    byte still arrives, in order."""
    ident = NodeIdentity.generate()
    total = 24 << 20

    async def main():
        async with trio.open_nursery() as n:
            srv = await _start(n, _block_sender(total), ident, engine)
            high = 1 << 20
            st = QuicSettings(engine=engine, receive_high_water=high)
            async with connect_quic("127.0.0.1", srv.address[1], settings=st) as conn:
                s = await conn.open_stream()
                await s.send_all(b"go")
                await trio.sleep(0.5)  # not reading: the sender runs ahead
                # at most one receive batch (256 datagrams) past the high-water mark
                assert high <= s.buffered <= high + 256 * conn.datagram_size
                got = 0
                peak = 0
                while chunks := await s.receive_chunks():
                    got = _check_chunks(chunks, got)
                    peak = max(peak, s.buffered)
                    await trio.sleep(0.001)
                assert got == total
                assert peak <= high + 256 * conn.datagram_size
            n.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("engine", ENGINES)
def test_receive_chunks_after_waiting_does_not_join(engine):
    """A reader that keeps up with the network waits before nearly every batch;
    what arrived meanwhile comes back as the engine's chunks (each at most one
    datagram's payload), not joined into one buffer on the event loop."""
    ident = NodeIdentity.generate()
    total = 8 << 20

    async def main():
        async with trio.open_nursery() as n:
            srv = await _start(n, _block_sender(total), ident, engine)
            async with connect_quic("127.0.0.1", srv.address[1], engine=engine) as conn:
                s = await conn.open_stream()
                await s.send_all(b"go")
                got, waited_for_several = 0, 0
                while True:
                    waits = not s.buffered
                    chunks = await s.receive_chunks()
                    if not chunks:
                        break
                    waited_for_several += waits and len(chunks) > 1
                    assert max(map(len, chunks)) <= conn.datagram_size
                    got = _check_chunks(chunks, got)
                assert got == total
                assert waited_for_several  # the case this test is about happened
            n.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("engine", ENGINES)
def test_writer_is_not_stalled_by_a_paused_socket(engine):
    """A client holding more unread data than receive_high_water (socket not
    read) that then writes more than send_high_water on the connection still
    gets its peer's ACKs: the write completes, then the reader gets everything."""
    ident = NodeIdentity.generate()
    down, up = 24 << 20, 8 << 20
    chunk = b"d" * (1 << 20)

    async def handler(stream):
        async def send():
            for _ in range(down // len(chunk)):
                await stream.send_all(chunk)
            await stream.send_eof()

        got = 0
        async with trio.open_nursery() as n:
            n.start_soon(send)
            while data := await stream.receive_some():
                got += len(data)
        assert got == up

    async def main():
        async with trio.open_nursery() as n:
            srv = await _start(n, handler, ident, engine)
            st = QuicSettings(engine=engine, receive_high_water=1 << 20,
                              send_high_water=1 << 20)
            async with connect_quic("127.0.0.1", srv.address[1], settings=st) as conn:
                s = await conn.open_stream()
                await s.send_all(b"u")
                await trio.sleep(0.5)  # over the receive high-water mark: socket paused
                assert s.buffered >= 1 << 20
                with trio.fail_after(20):
                    await s.send_all(b"u" * (up - 1))
                    await s.send_eof()
                    got = 0
                    while chunks := await s.receive_chunks():
                        got += sum(len(c) for c in chunks)
                assert got == down
            n.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("engine", ENGINES)
def test_server_closes_a_connection_that_opens_no_stream(engine):
    """A client that completes the handshake, opens no stream and keeps the
    connection alive with PINGs is closed after ``first_stream_timeout`` (before:
    held for as long as it pinged — a socket entry and a task per connection an
    attacker could pile up); a client that opens its stream in time is served."""
    ident = NodeIdentity.generate()

    async def main():
        async with trio.open_nursery() as n:
            srv = await _start(n, echo_stream, ident, engine, first_stream_timeout=1.0)
            async with connect_quic("127.0.0.1", srv.address[1], engine=engine, tickets=None) as idle:
                t0 = trio.current_time()
                while not idle.closed and trio.current_time() - t0 < 8:
                    idle.ping()
                    await trio.sleep(0.2)
                assert idle.closed, "a stream-less, pinging connection was held"
                assert trio.current_time() - t0 >= 0.5
            async with connect_quic("127.0.0.1", srv.address[1], engine=engine, tickets=None) as conn:
                await trio.sleep(0.3)
                s = await conn.open_stream()
                await s.send_all(b"ping")
                await s.send_eof()
                assert await s.receive_some(100) == b"ping"
                await trio.sleep(1.5)  # past the timeout: a connection with a stream is kept
                assert not conn.closed
            n.cancel_scope.cancel()

    trio.run(main)
