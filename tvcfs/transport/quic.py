"""QUIC (RFC 9000) on trio: drive a sans-I/O ``QuicConnection`` over a UDP socket.

This module knows nothing of tvcfs messages. It turns the engine's state machine
(``qh3`` by default, or ``aioquic``; choose with the ``engine`` argument or
``TVCFS_QUIC_ENGINE``) into trio tasks and exposes each bidirectional QUIC stream
(RFC 9000 §2) as a :class:`QuicStream` with the ``trio.abc.HalfCloseableStream``
methods (``send_all``, ``receive_some``, ``send_eof``, ``aclose``), so protocol
code runs unchanged over ``trio.SSLStream`` (TLS-over-TCP, :mod:`.tcp`).

Entry points:

* :func:`connect_quic` — async context manager giving a client :class:`QuicConn`;
  it pins and verifies the server's peer ID (see :mod:`.identity`).
* :func:`serve_quic` — a server: one UDP socket, one handler task per incoming
  stream.

How a connection is driven (all synchronous engine calls run on the trio thread):

* one receive task per UDP socket drains every datagram the kernel holds
  (``recvfrom`` until ``EAGAIN``), feeds them to the connection (qh3:
  ``receive_many_datagrams`` in one native call once the handshake is complete),
  then *services* it: engine events → streams, ``datagrams_to_send`` → ``sendto``;
* one timer task per connection sleeps until ``get_timer()`` and calls
  ``handle_timer`` (loss detection, ACK delay, idle timeout; RFC 9002);
* writers service the connection immediately after ``send_stream_data`` and block
  while more than ``send_high_water`` bytes of that stream are still queued.

Connections are demultiplexed by remote address (no connection migration).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

import trio

from ..errors import TvcfsError
from .engines import ALPN, ENGINES, Engine, engine as _engine  # noqa: F401 (re-exported)
from .identity import NodeIdentity, PeerIdMismatch, peer_id_from_certificate_der
from .malloc import tune_malloc
from .tickets import CLIENT_TICKETS, ServerTickets, SessionTickets  # noqa: F401 (re-exported)

__all__ = [
    "ALPN",
    "ENGINES",
    "QuicConn",
    "QuicConnectionLost",
    "QuicSettings",
    "QuicStream",
    "ServerTickets",
    "SessionTickets",
    "TransportError",
    "connect_quic",
    "default_engine",
    "serve_quic",
]

log = logging.getLogger(__name__)

_RECV_BATCH = 256
MIB = 1 << 20


class TransportError(TvcfsError):
    """A connection could not be set up (timeout, handshake failure, bad address)."""


class QuicConnectionLost(trio.BrokenResourceError):
    """The QUIC connection ended (closed by either side, idle timeout, or error).

    Attributes: ``error_code`` (int, RFC 9000 §20 or application code),
    ``reason`` (str).
    """

    def __init__(self, error_code: int = 0, reason: str = ""):
        self.error_code = error_code
        self.reason = reason
        super().__init__(f"QUIC connection closed (code {error_code:#x}): {reason}")


def default_engine() -> str:
    """The engine named by ``TVCFS_QUIC_ENGINE`` (``qh3`` or ``aioquic``), else ``qh3``."""
    name = os.environ.get("TVCFS_QUIC_ENGINE", "qh3").strip().lower() or "qh3"
    if name not in ENGINES:
        raise ValueError(f"TVCFS_QUIC_ENGINE must be one of {ENGINES}, not {name!r}")
    return name


@dataclass
class QuicSettings:
    """Tunables of a QUIC endpoint. Sizes in bytes, times in seconds.

    ``max_datagram_size``: UDP payload the engine builds (RFC 9000 §14; ≥ 1200).
    ``None`` picks :attr:`loopback_datagram_size` for loopback peers and 1452
    (1500-byte Ethernet MTU minus IPv6+UDP headers) otherwise.
    ``max_data`` / ``max_stream_data``: the flow-control windows we grant
    (RFC 9000 §4). ``socket_buffer``: SO_RCVBUF/SO_SNDBUF (SO_*BUFFORCE as root).
    ``send_high_water``: a stream's ``send_all`` blocks while more than this many
    bytes are queued in the engine. ``receive_high_water``: a client stops reading
    its UDP socket while a stream holds more than this many received bytes its
    reader has not taken, until they drop to half (the engines extend the peer's
    flow-control window as soon as they deliver data, so without this a reader
    slower than the network would buffer the whole transfer in memory), except
    while a writer waits for send room (it needs the peer's ACKs); the server,
    one socket for all peers, does not pause. ``connect_timeout``:
    handshake deadline. ``answer_timeout``: a client session (QUIC or TLS/TCP)
    waiting this long for any message of its peer gives up (a peer that finished
    the handshake, then stalled: its QUIC stack still answers PINGs, so the idle
    timeout never fires); ``TVCFS_ANSWER_TIMEOUT`` (seconds) overrides the default.
    The windows granted are capped at half the receive buffer the kernel gave
    (``SO_RCVBUF``): the peer can then never overflow our socket.
    """

    engine: str | None = None
    max_datagram_size: int | None = None
    loopback_datagram_size: int | None = None  # None: 65000 for qh3, 16384 for aioquic
    max_data: int = 64 * MIB
    max_stream_data: int = 32 * MIB
    idle_timeout: float = 30.0
    socket_buffer: int = 32 * MIB
    send_high_water: int = 2 * MIB
    receive_high_water: int = 16 * MIB
    connect_timeout: float = 5.0
    answer_timeout: float = field(default_factory=lambda: _env_seconds("TVCFS_ANSWER_TIMEOUT", 60.0))
    congestion_control: str = "cubic"  # aioquic only: "reno" or "cubic"
    ping_interval: float = 1.0  # a stream reader waiting this long pings the peer
    # a server closes a connection whose peer opens no stream within this many
    # seconds of the handshake's start (PINGs alone would otherwise hold it for ever)
    first_stream_timeout: float = 10.0
    # qh3 clients offer the hybrid X25519+ML-KEM-768 key share by default; tvcfs
    # peers are pinned by peer ID and the session keys are short-lived, so the
    # default is plain X25519 (faster handshake). True restores qh3's default.
    post_quantum: bool = False
    initial_rtt: float | None = None

    def engine_name(self) -> str:
        """The QUIC engine to use: ``engine``, else :func:`default_engine`."""
        return self.engine or default_engine()

    def datagram_size_for(self, host: str, engine: str = "qh3") -> int:
        """Datagram size (bytes) for a peer at ``host``: measured best on loopback
        (aioquic fails above 16 KiB), Ethernet-safe 1452 elsewhere."""
        if self.max_datagram_size:
            return self.max_datagram_size
        env = os.environ.get("TVCFS_QUIC_DATAGRAM")
        if env:  # benchmarking knob: force a size (bytes)
            return max(1200, min(int(env), 65000))
        if not _is_loopback(host):
            return 1452
        return self.loopback_datagram_size or (65000 if engine == "qh3" else 16384)


def _env_seconds(name: str, default: float) -> float:
    """Seconds from environment variable ``name`` (a positive number), else
    ``default``. Raises :class:`TransportError` naming the variable for another value."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise TransportError(f"{name}={text!r} is not a number of seconds > 0")
    return value


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


# ------------------------------------------------------------------ UDP socket
class _UdpSocket:
    """Non-blocking UDP socket with a send backlog for EAGAIN."""

    def __init__(self, family: int, settings: QuicSettings):
        tune_malloc()  # datagram and send buffers: reuse freed heap (see .malloc)
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.rcvbuf, self.sndbuf = _set_buffers(self.sock, settings.socket_buffer)
        self._backlog: deque = deque()
        self._backlog_event = trio.Event()
        self.closed = False
        # client sockets are connected: the kernel then reports ICMP port
        # unreachable (nobody listens: server gone or QUIC disabled) as ECONNREFUSED
        self.on_refused = None

    def send(self, datagrams) -> None:
        """Send ``[(bytes, addr)]`` now; what the kernel refuses waits in a backlog."""
        if self._backlog:
            self._backlog.extend(datagrams)
            return
        sendto = self.sock.sendto
        for i, (data, addr) in enumerate(datagrams):
            try:
                sendto(data, addr)
            except BlockingIOError:
                self._backlog.extend(datagrams[i:])
                self._backlog_event.set()
                return
            except OSError as e:  # unreachable etc.: UDP may drop, QUIC recovers
                if self.closed:
                    return
                if e.errno == errno.ECONNREFUSED and self.on_refused is not None:
                    self.on_refused()
                    return
                log.debug("sendto %s: %s", addr, e)

    async def flush_loop(self) -> None:
        while True:
            await self._backlog_event.wait()
            self._backlog_event = trio.Event()
            while self._backlog:
                await trio.lowlevel.wait_writable(self.sock)
                while self._backlog:
                    data, addr = self._backlog[0]
                    try:
                        self.sock.sendto(data, addr)
                    except BlockingIOError:
                        break
                    except OSError:
                        pass
                    self._backlog.popleft()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


def _set_buffers(sock: socket.socket, size: int) -> tuple[int, int]:
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
        # SO_RCVBUFFORCE (33) / SO_SNDBUFFORCE (32) bypass rmem_max as root (Linux).
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
            except OSError:
                pass
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
    )


def _recv_batch(sock: socket.socket, on_refused=None) -> list:
    out = []
    recvfrom = sock.recvfrom
    for _ in range(_RECV_BATCH):
        try:
            out.append(recvfrom(65536))
        except BlockingIOError:
            break
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                if e.errno == errno.ECONNREFUSED and on_refused is not None:
                    on_refused()
                continue
            raise
    return out


def _recv_batch_connected(sock: socket.socket, addr, on_refused) -> list:
    out = []
    recv = sock.recv
    for _ in range(_RECV_BATCH):
        try:
            out.append((recv(65536), addr))
        except BlockingIOError:
            break
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                if e.errno == errno.ECONNREFUSED:
                    on_refused()
                continue
            raise
    return out


# ------------------------------------------------------------------ streams
class QuicStream(trio.abc.HalfCloseableStream):
    """One bidirectional QUIC stream (RFC 9000 §2–3) as a trio stream.

    ``receive_some(max_bytes)`` returns ``bytes`` (``b""`` once the peer sent FIN);
    ``send_all(data)`` queues bytes and blocks while the stream's send backlog is
    above ``send_high_water``; ``send_eof()`` sends FIN; ``aclose()`` sends FIN if
    not sent and stops reading (STOP_SENDING). Raises :class:`QuicConnectionLost`
    (a ``trio.BrokenResourceError``) when the connection is gone or the peer reset
    the stream, ``trio.ClosedResourceError`` after ``aclose``.
    """

    def __init__(self, conn: "QuicConn", stream_id: int):
        self.connection = conn
        self.stream_id = stream_id
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof_received = False
        self._eof_sent = False
        self._closed = False
        self._reset_code: int | None = None
        self._stopped_code: int | None = None
        self._readable = trio.Event()
        self._over = False  # counted in connection._rx_over (above receive_high_water)

    # internal, called by the connection
    def _on_data(self, data: bytes, end: bool) -> None:
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > self.connection._rx_high and not self._over:
                self._over = True
                self.connection._rx_over += 1
        if end:
            self._eof_received = True
        self._readable.set()

    def _wake(self) -> None:
        self._readable.set()

    @property
    def buffered(self) -> int:
        """Bytes received on this stream and not yet read."""
        return self._buffered

    def _taken(self) -> None:
        """The reader took data: let the connection read its socket again once
        this stream holds at most half of ``receive_high_water``."""
        if self._over and self._buffered <= self.connection._rx_high // 2:
            self._over = False
            self.connection._rx_room()

    async def _wait_readable(self) -> None:
        """Wait until the stream holds data, the peer's FIN or a reset (no
        checkpoint when it already does). Raises ``trio.ClosedResourceError``
        after :meth:`aclose`, :class:`QuicConnectionLost` when the connection is
        gone."""
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream closed")
            if self._chunks or self._reset_code is not None or self._eof_received:
                return
            conn = self.connection
            conn._raise_if_lost()
            self._readable = trio.Event()
            # a reader that hears nothing pings the peer: a dead peer's host then
            # answers ICMP port unreachable (the connection ends at once, see
            # _UdpSocket.on_refused) instead of after the idle timeout
            with trio.move_on_after(conn.settings.ping_interval):
                await self._readable.wait()
            if not self._readable.is_set():
                conn.ping()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` (default 1 MiB) received bytes; ``b""`` at the peer's end of
        stream. Raises :class:`QuicConnectionLost` if the peer reset the stream or the
        connection was lost, ValueError for ``max_bytes`` < 1."""
        await trio.lowlevel.checkpoint()
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        await self._wait_readable()
        if self._chunks:
            return self._take(max_bytes or 1 << 20)
        if self._reset_code is not None:
            raise QuicConnectionLost(self._reset_code, "stream reset by peer")
        return b""

    async def receive_chunks(self) -> list:
        """Every chunk of stream data buffered now, as the engine delivered them (no
        joining copy; each up to one datagram's payload), waiting for at least one;
        ``[]`` after the peer's FIN. Raises like :meth:`receive_some`."""
        if self._chunks and not self._closed:
            await trio.lowlevel.checkpoint_if_cancelled()
            out = self._take_all()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return out
        await trio.lowlevel.checkpoint()
        await self._wait_readable()
        # what arrived while waiting is taken as it is too (not joined): a reader
        # that keeps up with the network waits before nearly every batch
        if self._chunks:
            return self._take_all()
        if self._reset_code is not None:
            raise QuicConnectionLost(self._reset_code, "stream reset by peer")
        return []

    def _take_all(self) -> list:
        out = list(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._taken()
        return out

    def _take(self, limit: int) -> bytes:
        chunks = self._chunks
        first = chunks[0]
        if len(first) >= limit:
            self._buffered -= limit
            self._taken()
            if len(first) == limit:
                chunks.popleft()
                return first
            chunks[0] = first[limit:]
            return first[:limit]
        parts = [chunks.popleft()]
        n = len(first)
        while chunks and n + len(chunks[0]) <= limit:
            c = chunks.popleft()
            parts.append(c)
            n += len(c)
        self._buffered -= n
        self._taken()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def send_all(self, data) -> None:
        """Send ``data`` on the stream, waiting for flow-control room. Raises
        ``trio.ClosedResourceError`` after :meth:`send_eof`/:meth:`aclose`,
        :class:`QuicConnectionLost` if the peer stopped reading or the connection was lost."""
        conn = self.connection
        if self._closed or self._eof_sent:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("stream closed for sending")
        conn._raise_if_lost()
        if self._stopped_code is not None:
            raise QuicConnectionLost(self._stopped_code, "peer stopped reading the stream")
        if len(data):
            conn._call(conn._quic.send_stream_data, self.stream_id, data, False)
            conn._service()
        await conn._wait_send_room(self)

    async def send_parts(self, parts) -> None:
        """``send_all`` of several buffers in a row, with one service of the
        connection (fewer Python calls and datagrams than one call per part)."""
        conn = self.connection
        if self._closed or self._eof_sent:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("stream closed for sending")
        conn._raise_if_lost()
        if self._stopped_code is not None:
            raise QuicConnectionLost(self._stopped_code, "peer stopped reading the stream")
        send = conn._quic.send_stream_data
        for data in parts:
            if len(data):
                conn._call(send, self.stream_id, data, False)
        conn._service()
        await conn._wait_send_room(self)

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the stream's send buffer has room."""
        await self.connection._wait_send_room(self)

    async def send_eof(self) -> None:
        """End the sending side (FIN); again does nothing. Raises :class:`QuicConnectionLost`
        if the connection was lost."""
        await trio.lowlevel.checkpoint()
        if self._eof_sent:
            return
        conn = self.connection
        conn._raise_if_lost()
        self._eof_sent = True
        conn._call(conn._quic.send_stream_data, self.stream_id, b"", True)
        conn._service()

    async def aclose(self) -> None:
        """Send FIN if not sent and stop reading; again does nothing."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        conn = self.connection
        try:
            if not conn._lost:
                if not self._eof_sent:
                    self._eof_sent = True
                    try:
                        conn._quic.send_stream_data(self.stream_id, b"", True)
                    except Exception:  # noqa: BLE001 - engine already closed
                        pass
                if not self._eof_received and self._reset_code is None:
                    try:
                        conn._quic.stop_stream(self.stream_id, 0)
                    except Exception:  # noqa: BLE001 - engine refuses on finished streams
                        pass
                conn._service()
        finally:
            self._closed = True
            self._chunks.clear()
            self._buffered = 0
            self._taken()
            self._readable.set()
        await trio.lowlevel.checkpoint()

    def reset(self, error_code: int = 0) -> None:
        """Abort sending with RESET_STREAM (RFC 9000 §19.4)."""
        conn = self.connection
        if not conn._lost and not self._eof_sent:
            self._eof_sent = True
            try:
                conn._quic.reset_stream(self.stream_id, error_code)
            except Exception:  # noqa: BLE001
                pass
            conn._service()


# ------------------------------------------------------------------ connection
class QuicConn:
    """One QUIC connection driven from trio.

    Attributes: ``engine`` (str), ``is_client`` (bool), ``remote_address``
    (tuple), ``peer_id`` (bytes | None: the server's verified peer ID on a
    client; None on a server, which authenticates clients at the protocol
    layer), ``datagram_size`` (bytes).
    """

    def __init__(self, engine: Engine, quic, udp: _UdpSocket, remote, *,
                 is_client: bool, settings: QuicSettings):
        self.engine = engine.name
        self._eng = engine
        self._quic = quic
        self._udp = udp
        self.remote_address = remote
        self.is_client = is_client
        self.settings = settings
        self.peer_id: bytes | None = None
        self.datagram_size = quic.configuration.max_datagram_size if hasattr(
            quic, "configuration") else None
        self._streams: dict[int, QuicStream] = {}
        self._incoming: deque[QuicStream] = deque()
        self._incoming_event = trio.Event()
        self._handshake = trio.Event()
        self._lost: QuicConnectionLost | None = None
        self._terminated = trio.Event()
        self._timer_kick = trio.Event()
        self._timer_armed: float | None = None
        self._progress = trio.Event()
        self._rx_high = settings.receive_high_water
        self._rx_over = 0  # streams holding more than _rx_high unread bytes
        self._rx_resume = trio.Event()
        self._send_waiters = 0  # writers waiting for send room (they need the peer's ACKs)
        self._handshake_done = False
        self._many = engine.name == "qh3"
        self.bytes_received = 0
        self.bytes_sent = 0
        self.datagrams_received = 0
        self.closed_by_peer = False
        self._ping_uid = 0
        self.resumed = False  # client: the handshake resumed a session (ticket)
        self.early_data = False  # client: first data went out as 0-RTT
        self.first_stream: QuicStream | None = None
        self._verified = False

    # ---- engine plumbing (synchronous) ----
    def _feed(self, batch: list) -> None:
        self.datagrams_received += len(batch)
        now = trio.current_time()
        quic = self._quic
        if self._many and self._handshake_done and len(batch) > 1:
            quic.receive_many_datagrams([d for d, _ in batch], batch[0][1], now)
        else:
            for data, addr in batch:
                quic.receive_datagram(data, addr, now)
        self._service()

    def _service(self) -> None:
        quic = self._quic
        ev = quic.next_event()
        if ev is not None:
            eng = self._eng
            while ev is not None:
                if isinstance(ev, eng.StreamDataReceived):
                    self._on_stream_data(ev)
                elif isinstance(ev, eng.StreamReset):
                    s = self._streams.get(ev.stream_id)
                    if s is not None:
                        s._reset_code = ev.error_code
                        s._wake()
                elif eng.StopSendingReceived and isinstance(ev, eng.StopSendingReceived):
                    s = self._streams.get(ev.stream_id)
                    if s is not None:
                        s._stopped_code = ev.error_code
                        self._progress.set()
                elif isinstance(ev, eng.HandshakeCompleted):
                    self._handshake_done = True
                    self._handshake.set()
                elif isinstance(ev, eng.ConnectionTerminated):
                    if self._lost is None:
                        self.closed_by_peer = True
                    self._on_terminated(ev.error_code, ev.reason_phrase or "")
                ev = quic.next_event()
        if not self._udp.closed:
            try:
                out = quic.datagrams_to_send(trio.current_time())
            except Exception as e:  # noqa: BLE001 - an engine error ends the connection
                # (e.g. qh3 probing an unanswered 0-RTT flight: "missing OneRtt packet key")
                if self._lost is None:
                    self._on_terminated(0x1, f"engine refused: {e}")
                return
            if out:
                self._udp.send(out)
        self._progress.set()
        t = quic.get_timer()
        armed = self._timer_armed
        if t is not None and (armed is None or t < armed):
            self._timer_kick.set()

    def ping(self) -> None:
        """Send a PING frame (RFC 9000 §19.2): an ack-eliciting probe of the peer."""
        if self._lost is None:
            self._ping_uid += 1
            try:
                self._quic.send_ping(self._ping_uid)
            except Exception:  # noqa: BLE001 - engine closing
                return
            self._service()

    def _on_stream_data(self, ev) -> None:
        sid = ev.stream_id
        s = self._streams.get(sid)
        if s is None:
            local = (sid & 1) == (0 if self.is_client else 1)
            if local:  # data for a local stream we already forgot (closed): drop
                return
            s = self._streams[sid] = QuicStream(self, sid)
            self._incoming.append(s)
            self._incoming_event.set()
        self.bytes_received += len(ev.data)
        s._on_data(ev.data, ev.end_stream)

    def _rx_room(self) -> None:
        self._rx_over -= 1
        if not self._rx_over:
            self._rx_resume.set()

    async def _wait_rx_room(self) -> None:
        """Wait while a stream holds more unread data than ``receive_high_water``
        (the socket is then not read: see :class:`QuicSettings`), unless a writer
        waits for send room: it needs the peer's ACKs, which arrive on the socket
        (a reader that writes before it reads would otherwise stall)."""
        while self._rx_over and not self._send_waiters and self._lost is None:
            self._rx_resume = trio.Event()
            await self._rx_resume.wait()

    def _on_terminated(self, code: int, reason: str) -> None:
        if self._lost is None:
            self._lost = QuicConnectionLost(code, reason)
        self._rx_resume.set()
        self._terminated.set()
        self._handshake.set()
        self._incoming_event.set()
        self._progress.set()
        self._timer_kick.set()
        for s in self._streams.values():
            s._wake()

    def _call(self, fn, *args):
        """Call an engine method; an engine error means the connection is gone."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - engines raise their own error types
            if self._lost is None:
                self._on_terminated(0x1, f"engine refused: {e}")
            raise QuicConnectionLost(self._lost.error_code, self._lost.reason) from e

    def _raise_if_lost(self) -> None:
        lost = self._lost
        if lost is not None:
            # a fresh instance per raise: one object raised in several tasks would
            # share (and corrupt) its traceback and context
            raise QuicConnectionLost(lost.error_code, lost.reason)

    async def _wait_send_room(self, stream: QuicStream) -> None:
        high = self.settings.send_high_water
        backlog = self._eng.send_backlog
        while True:
            self._raise_if_lost()
            if stream._stopped_code is not None:
                raise QuicConnectionLost(stream._stopped_code, "peer stopped reading the stream")
            if backlog(self._quic, stream.stream_id) <= high:
                await trio.lowlevel.checkpoint()
                return
            self._progress = trio.Event()
            # a paused socket (see _wait_rx_room) would also hold back the ACKs
            # this writer waits for: read it while anyone waits here
            self._send_waiters += 1
            self._rx_resume.set()
            try:
                await self._progress.wait()
            finally:
                self._send_waiters -= 1

    async def _timer_loop(self) -> None:
        quic = self._quic
        while not self._terminated.is_set():
            t = quic.get_timer()
            self._timer_kick = trio.Event()
            self._timer_armed = t
            with trio.move_on_at(math.inf if t is None else t) as scope:
                await self._timer_kick.wait()
            if scope.cancelled_caught:
                now = trio.current_time()
                t2 = quic.get_timer()
                if t2 is not None and t2 <= now:
                    try:
                        self._call(quic.handle_timer, now)  # an engine error ends it
                    except QuicConnectionLost:
                        return
                self._service()

    # ---- public API ----
    @property
    def closed(self) -> bool:
        """True once the connection has terminated."""
        return self._lost is not None

    async def open_stream(self) -> QuicStream:
        """Open a new bidirectional stream. Raises :class:`QuicConnectionLost`."""
        await trio.lowlevel.checkpoint()
        self._raise_if_lost()
        sid = self._quic.get_next_available_stream_id()
        s = self._streams[sid] = QuicStream(self, sid)
        return s

    async def accept_stream(self) -> QuicStream:
        """Wait for the next peer-initiated stream. Raises :class:`QuicConnectionLost`."""
        while not self._incoming:
            self._raise_if_lost()
            self._incoming_event = trio.Event()
            await self._incoming_event.wait()
        await trio.lowlevel.checkpoint()
        return self._incoming.popleft()

    def forget_stream(self, stream: QuicStream) -> None:
        """Drop our bookkeeping for a finished stream."""
        self._streams.pop(stream.stream_id, None)

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Send CONNECTION_CLOSE (RFC 9000 §10.2) without waiting; idempotent."""
        if self._lost is None:
            try:
                self._quic.close(error_code=error_code, reason_phrase=reason)
            except Exception:  # noqa: BLE001
                pass
            self._service()
            if self._lost is None:
                self._lost = QuicConnectionLost(error_code, reason or "closed locally")
                self._on_terminated(error_code, reason)

    async def aclose(self) -> None:
        """Close the connection (see :meth:`close`)."""
        self.close()
        await trio.lowlevel.checkpoint()

    async def wait_closed(self) -> None:
        """Wait until the connection has terminated."""
        await self._terminated.wait()



# ------------------------------------------------------------------ client
def _single(exc: BaseException) -> BaseException | None:
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def _collapse_groups():
    """Re-raise a nursery's one-exception group as that exception (strict groups
    would otherwise hide e.g. TransportError or a caller's own error)."""
    try:
        yield
    except BaseExceptionGroup as eg:
        one = _single(eg)
        if one is None:
            raise
        raise one from None


async def run_stream_handler(handler, stream, on_failure: Callable[[], None]) -> None:
    """``await handler(stream)`` for a server (QUIC stream or TLS connection): a
    closed connection (``BrokenResourceError``/``ClosedResourceError``, alone or
    in an exception group, e.g. a session's reader and writer both noticing a
    killed client) ends it quietly; cancellation propagates on its own; any other
    error is logged ("stream handler failed") and ``on_failure()`` is called.
    One bad stream must not stop the server: nothing else is raised."""
    try:
        await handler(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except BaseExceptionGroup as eg:
        _, rest = eg.split((trio.BrokenResourceError, trio.ClosedResourceError))
        if rest is not None:
            cancelled, rest = rest.split(trio.Cancelled)
            if rest is not None:
                log.error("stream handler failed", exc_info=rest)
                on_failure()
            elif cancelled is not None:
                raise cancelled from None
    except Exception:  # noqa: BLE001 - one bad stream must not stop the server
        log.exception("stream handler failed")
        on_failure()


async def aclose_quietly(stream, timeout: float = 1.0) -> None:
    """Close ``stream`` (any trio stream) within ``timeout`` seconds, even when the
    caller is being cancelled; a stream already broken or closed is no error."""
    with trio.move_on_after(timeout) as scope:
        scope.shield = True
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _resolve(host: str, port: int) -> tuple[int, tuple]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise TransportError(f"cannot resolve {host}")
    fam, _, _, _, addr = infos[0]
    return fam, addr[:2]


@asynccontextmanager
async def connect_quic(
    host: str,
    port: int,
    *,
    expected_peer_id: bytes | None = None,
    settings: QuicSettings | None = None,
    engine: str | None = None,
    tickets: SessionTickets | None = CLIENT_TICKETS,
    first_data: bytes | None = None,
) -> AsyncIterator[QuicConn]:
    """Connect to a QUIC server; yields a :class:`QuicConn` after the handshake.

    ``tickets``: where session tickets are kept per peer (default: this
    process's :data:`CLIENT_TICKETS`; None: no resumption). With a ticket from an
    earlier connection to the same peer the handshake resumes (no certificate is
    sent; ``conn.resumed``), and ``first_data`` — bytes for a first stream, e.g.
    the protocol's first requests — goes out in the first flight as 0-RTT early
    data (``conn.early_data``; the engines re-send it if the server refuses early
    data). Without a ticket ``first_data`` is sent right after the handshake. The
    stream it went out on is ``conn.first_stream``.

    ``expected_peer_id``: the binary peer ID the server's certificate key must
    hash to (pinning, see :mod:`.identity`); None accepts any server (its ID is
    still in ``conn.peer_id``). ``engine`` overrides ``settings.engine``.

    Raises :class:`TransportError` when no handshake completes within
    ``settings.connect_timeout`` seconds or the handshake fails,
    :class:`~tvcfs.transport.identity.PeerIdMismatch` when the peer ID differs.
    On exit the connection is closed (CONNECTION_CLOSE sent) and the socket freed.
    """
    settings = settings or QuicSettings()
    eng = _engine(engine or settings.engine_name())
    fam, addr = _resolve(host, port)
    udp = _UdpSocket(fam, settings)
    key = SessionTickets.key(eng.name, host, port, expected_peer_id)
    entry = tickets.take(key) if tickets is not None else None
    cfg = eng.make_config(settings, is_client=True, host=host, identity=None,
                          rcvbuf=udp.rcvbuf, session_ticket=entry[0] if entry else None)
    try:
        udp.sock.bind(("::", 0) if fam == socket.AF_INET6 else ("0.0.0.0", 0))
        udp.sock.connect(addr)
        new_tickets: list = []

        def on_ticket(ticket):
            # a ticket may arrive before the peer ID is checked: kept until then
            if conn.peer_id is not None and tickets is not None and conn._verified:
                tickets.put(key, ticket, conn.peer_id)
            else:
                new_tickets.append(ticket)

        quic = eng.new_client(cfg, ticket_handler=on_ticket)
        conn = QuicConn(eng, quic, udp, addr, is_client=True, settings=settings)
        conn.datagram_size = cfg.max_datagram_size

        def refused():
            if conn._lost is None:
                conn._on_terminated(
                    0x0, f"{host}:{port} refused UDP (no QUIC server listening: "
                         "it stopped, or serves TCP only)")

        udp.on_refused = refused
        async with _collapse_groups(), trio.open_nursery() as nursery:

            async def recv_loop():
                sock = udp.sock
                while True:
                    if conn._rx_over:
                        await conn._wait_rx_room()
                    await trio.lowlevel.wait_readable(sock)
                    # connected socket: only the server's datagrams arrive
                    batch = _recv_batch_connected(sock, addr, refused)
                    if batch:
                        conn._feed(batch)

            nursery.start_soon(recv_loop)
            nursery.start_soon(udp.flush_loop)
            nursery.start_soon(conn._timer_loop)
            quic.connect(addr, now=trio.current_time())
            early = (first_data is not None and entry is not None
                     and entry[0].max_early_data_size)
            if early:
                # 0-RTT: the first requests leave with the ClientHello
                conn.first_stream = await conn.open_stream()
                conn._call(quic.send_stream_data, conn.first_stream.stream_id, first_data,
                           False)
                conn.early_data = True
            conn._service()
            with trio.move_on_after(settings.connect_timeout):
                await conn._handshake.wait()
            if not conn._handshake_done:
                # nothing came back: the peer gave no answer, whatever the engine
                # made of that (qh3 fails its 0-RTT probe instead of timing out)
                reason = conn._lost.reason if conn._lost and conn.datagrams_received else \
                    "no answer"
                conn.close(0x1, "handshake timeout")
                raise TransportError(
                    f"QUIC handshake with {host}:{port} failed: {reason}"
                )
            der = eng.peer_certificate_der(quic)
            if der:
                conn.peer_id = peer_id_from_certificate_der(der)
            elif entry is not None:
                # resumed: the ticket's secret authenticated the server that issued it
                conn.peer_id, conn.resumed = entry[1], True
            if expected_peer_id is not None and conn.peer_id != expected_peer_id:
                conn.close(0x100, "peer ID mismatch")
                raise PeerIdMismatch(expected_peer_id, conn.peer_id or b"")
            conn._verified = True
            if tickets is not None and conn.peer_id is not None:
                for t in new_tickets:
                    tickets.put(key, t, conn.peer_id)
            new_tickets.clear()
            if first_data is not None and conn.first_stream is None:
                conn.first_stream = await conn.open_stream()
                await conn.first_stream.send_all(first_data)
            try:
                yield conn
            finally:
                conn.close()
                nursery.cancel_scope.cancel()
    finally:
        udp.close()


# ------------------------------------------------------------------ server
StreamHandler = Callable[[QuicStream], Awaitable[None]]


@dataclass
class QuicServer:
    """A running QUIC server. ``address``: bound (host, port); ``connections``:
    live connections by remote address."""

    address: tuple
    engine: str
    connections: dict = field(default_factory=dict)
    udp: _UdpSocket | None = None
    datagram_size: int = 0


async def serve_quic(
    handler: StreamHandler,
    host: str,
    port: int,
    *,
    identity: NodeIdentity,
    settings: QuicSettings | None = None,
    engine: str | None = None,
    tickets: ServerTickets | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve QUIC on ``host:port`` (UDP) until cancelled.

    Clients get session tickets (``tickets``, a new :class:`ServerTickets` by
    default), so a reconnecting client resumes without certificates and may send
    its first requests as 0-RTT early data.

    Every peer-initiated stream runs ``await handler(stream)`` in its own task;
    an exception in a handler is logged and resets that stream only. The
    certificate is ``identity``'s self-signed Ed25519 certificate. With
    ``nursery.start(serve_quic, ...)`` the start value is a :class:`QuicServer`
    (``address`` gives the bound port when ``port`` is 0).
    Raises ``OSError`` if the address cannot be bound.
    """
    settings = settings or QuicSettings()
    eng = _engine(engine or settings.engine_name())
    tickets = tickets if tickets is not None else ServerTickets()
    fam, addr = _resolve(host, port)
    udp = _UdpSocket(fam, settings)
    cfg = eng.make_config(settings, is_client=False, host=host, identity=identity,
                          rcvbuf=udp.rcvbuf)
    try:
        udp.sock.bind(addr)
        server = QuicServer(udp.sock.getsockname()[:2], eng.name, udp=udp,
                            datagram_size=cfg.max_datagram_size)
        conns = server.connections
        async with trio.open_nursery() as nursery:
            nursery.start_soon(udp.flush_loop)

            async def run_handler(stream: QuicStream):
                try:
                    await run_stream_handler(handler, stream, lambda: stream.reset(0x1))
                finally:
                    stream.connection.forget_stream(stream)

            async def conn_main(conn: QuicConn):
                async with trio.open_nursery() as n:
                    n.start_soon(conn._timer_loop)
                    try:
                        first = None
                        with trio.move_on_after(settings.first_stream_timeout):
                            first = await conn.accept_stream()
                        if first is None:
                            log.warning("closed connection from %s:%s: no stream within %g s",
                                        conn.remote_address[0], conn.remote_address[1],
                                        settings.first_stream_timeout)
                            conn.close(0, "no stream opened")
                        else:
                            n.start_soon(run_handler, first)
                            while True:
                                s = await conn.accept_stream()
                                n.start_soon(run_handler, s)
                    except QuicConnectionLost:
                        pass
                    await conn.wait_closed()
                    n.cancel_scope.cancel()
                lost = conn._lost
                if lost is not None and lost.error_code not in (0, 0x1) and conn.closed_by_peer:
                    log.warning("connection from %s:%s closed by the client: %s (code %#x)",
                                conn.remote_address[0], conn.remote_address[1],
                                lost.reason or "no reason", lost.error_code)
                if conns.get(conn.remote_address) is conn:
                    del conns[conn.remote_address]

            task_status.started(server)
            sock = udp.sock
            while True:
                await trio.lowlevel.wait_readable(sock)
                batch = _recv_batch(sock)
                if not batch:
                    continue
                # group consecutive datagrams per peer
                groups: dict = {}
                for item in batch:
                    groups.setdefault(item[1], []).append(item)
                for raddr, items in groups.items():
                    conn = conns.get(raddr)
                    if conn is None or conn.closed:
                        odcid = eng.initial_dcid(items[0][0])
                        if odcid is None:
                            continue
                        quic = eng.new_server(cfg, odcid, tickets)
                        conn = QuicConn(eng, quic, udp, raddr, is_client=False,
                                        settings=settings)
                        conn.datagram_size = cfg.max_datagram_size
                        conns[raddr] = conn
                        nursery.start_soon(conn_main, conn)
                    try:
                        conn._feed(items)
                    except Exception:  # noqa: BLE001 - engine bug on hostile input
                        log.exception("QUIC engine failed on input from %s", raddr)
                        conn.close(0x1, "internal error")
    finally:
        for conn in list(locals().get("conns", {}).values()):
            conn.close(0, "server shutting down")
        udp.close()
