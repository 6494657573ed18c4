"""TensorSwap server: the driver that runs server sessions on QUIC streams and TLS.

One session = one bidirectional byte stream (a QUIC stream, or the TLS stream of a
TCP connection). Everything the conversation decides — the handshake, want-lists
and DAG requests in priority order, cancels, limits, authentication, push checks
— is :class:`~.session.ServerSession` (no I/O). :func:`handle_session` only moves
bytes: a reader task feeds what arrives into the session and carries out its
events (resolving a hub's repository, storing pushed blocks, a ref update: the
blocking parts, in threads, under the write lock); a writer task sends the
session's frames and, block by block, what :meth:`~.session.ServerSession.next_block`
chooses, after the fairness ledger (:class:`~.ledger.PeerLedger`) and the rate
limit (:class:`RateLimit`) let it.

A protocol error ends that session only: the session queues an ``Error`` and the
driver closes the stream (and, for QUIC, that connection).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import trio

from ..errors import TvcfsError
from . import protocol
from .base import BlockBackend
from .identity import NodeIdentity
from .ledger import PeerLedger
from .quic import _collapse_groups, aclose_quietly
from .selection import iter_selection, missing_in_dag
from .session import Closed, ResolveRepository, ServerSession, StoreBlocks, UpdateRef

__all__ = ["RateLimit", "ServerConfig", "ServerStats", "handle_session", "iter_selection",
           "missing_in_dag"]

log = logging.getLogger(__name__)
HELLO_TIMEOUT = 10.0  # seconds a new session has to send its whole Hello


@dataclass
class ServerStats:
    """Counters of one server (all sessions): blocks/bytes sent and received."""

    sessions: int = 0
    blocks_sent: int = 0
    bytes_sent: int = 0
    blocks_received: int = 0
    bad_blocks_received: int = 0
    protocol_errors: int = 0


class RateLimit:
    """Server-wide send pacing, shared by every session of the server: a token
    bucket filled at ``rate`` bytes per second holding at most ``burst`` bytes
    (default: one second of the rate). Time spent idle refills the bucket only up
    to ``burst``, so over any interval of ``t`` seconds at most ``burst + rate * t``
    bytes go out (a sustained rate, like rsync's ``--bwlimit``; an idle server
    does not bank credit). A block larger than the tokens left is sent and leaves
    the bucket in debt, which the next sender waits out. Raises ``ValueError``
    for a rate or burst that is not positive."""

    def __init__(self, rate: float, burst: float | None = None):
        if rate <= 0:
            raise ValueError("rate limit must be positive (bytes per second)")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else self.rate
        if self.burst <= 0:
            raise ValueError("rate limit burst must be positive (bytes)")
        self.tokens = self.burst
        self.last: float | None = None  # trio time of the last refill

    async def take(self, n: int) -> None:
        """Account ``n`` bytes about to be sent; sleep until the bucket is out of debt."""
        now = trio.current_time()
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            await trio.sleep(-self.tokens / self.rate)


@dataclass
class ServerConfig:
    """What a server serves and to whom.

    ``backend``: the repository (:class:`~.base.BlockBackend`); ``identity``:
    the node key; ``private``: reads need an authenticated peer ID in ``allow_read``
    or ``allow_push``; ``allow_push``: binary peer IDs that may push; ``limits``;
    ``corrupt_hook``: test hook ``f(cid, data) -> data`` applied to outgoing blocks;
    ``thin``: offer thin transfers (``WELCOME_THIN``: deltas against blocks the peer
    holds, docs/protocol.md "Thin transfers"; off: behave as a server before them).
    ``hello_timeout``: seconds a new session may take to deliver its whole ``Hello``
    (from the moment the stream is handed to :func:`handle_session`); a client that
    sends nothing, or trickles bytes, is then disconnected so it holds no socket or
    task for ever. Once the ``Hello`` is in, an idle session is legitimate (a mount's
    peer connection) and is kept.
    """

    backend: BlockBackend
    identity: NodeIdentity
    private: bool = False
    allow_push: set = field(default_factory=set)
    allow_read: set = field(default_factory=set)
    limits: protocol.Limits = protocol.DEFAULT_LIMITS
    stats: ServerStats = field(default_factory=ServerStats)
    corrupt_hook: object = None
    thin: bool = True
    write_lock: trio.Lock = field(default_factory=trio.Lock)
    # bytes sent per peer; shares sending fairly between peers (None: no gate)
    ledger: PeerLedger | None = field(default_factory=PeerLedger)
    # optional server-wide bandwidth limit
    rate_limit: RateLimit | None = None
    # several repositories behind one endpoint (a hub): ``resolve(name)`` gives the
    # ServerConfig of the repository a session's Hello names, or None (not found)
    resolve: object = None
    # what a refused peer is told to ask for ({peer}: its peer ID; {private}: the
    # "--private " of a read refusal)
    grant_hint: str = "to run `tvcfs serve {private}--allow-push {peer}`"
    hello_timeout: float = HELLO_TIMEOUT


def _peer_address(stream) -> str:
    """``host:port`` of the other end of a QUIC stream or TLS-over-TCP stream."""
    try:
        conn = getattr(stream, "connection", None)
        if conn is not None:
            addr = conn.remote_address
        else:
            addr = stream.transport_stream.socket.getpeername()
        return f"{addr[0]}:{addr[1]}"
    except Exception:  # noqa: BLE001 - only for log lines
        return "?"


async def handle_session(stream, cfg: ServerConfig, tls_peer: bytes | None = None) -> None:
    """Run one session on ``stream`` (a trio byte stream) until the client ends it.

    Never raises for client misbehaviour: a protocol error is answered with
    ``Error`` and the stream is closed (for QUIC streams the whole connection);
    transport errors just end it.
    """
    cfg.stats.sessions += 1
    sess = ServerSession(cfg, _peer_address(stream))
    driver = _Driver(stream, sess)
    try:
        closed = await driver.run()
        if closed is not None and closed.error:
            conn = getattr(stream, "connection", None)
            if conn is not None and hasattr(conn, "close"):
                conn.close(0x1, "protocol error")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        sess.close()
        with trio.CancelScope(shield=True):
            await _receiving(sess, False)
        await aclose_quietly(stream)


RECEIVING_RENEW = 60.0  # seconds between renewals of a push's record while it stores blocks


async def _receiving(sess: ServerSession, started: bool) -> None:
    """Record that ``sess`` is storing pushed blocks (``started``; renewed at most every
    :data:`RECEIVING_RENEW` seconds while it goes on), or that it no longer is, in a
    backend that keeps such records (``receiving``: a repository's, which ``tvcfs gc``
    reads and ignores once not renewed for an hour: docs/repository.md)."""
    key = getattr(sess, "receiving_key", None)
    record = getattr(getattr(sess.cfg, "backend", None), "receiving", None)
    if record is None:
        return
    if (key is not None) == started:
        if not started or trio.current_time() - getattr(sess, "receiving_at", 0.0) < RECEIVING_RENEW:
            return
    sess.receiving_key = f"{os.getpid()}:{id(sess)}" if started else None
    sess.receiving_at = trio.current_time()
    try:
        await trio.to_thread.run_sync(record, sess.receiving_key or key, started)
    except TvcfsError as e:  # a full or damaged store: gc may then delete what it stores
        log.warning("cannot record the push being received: %s", e)


class _Driver:
    """Moves bytes between a :class:`~.session.ServerSession` and its stream."""

    def __init__(self, stream, sess: ServerSession):
        self.stream = stream
        self.sess = sess
        self.lock = trio.Lock()  # frames never interleave
        self.work = trio.Event()
        self.idle = trio.Event()
        self.idle.set()
        self._send_parts = getattr(stream, "send_parts", None)
        chunks = getattr(stream, "receive_chunks", None)
        self._receive = chunks if chunks is not None else self._receive_some

    async def _receive_some(self) -> list:
        data = await self.stream.receive_some(1 << 20)
        return [data] if data else []

    async def flush(self, extra=()) -> None:
        """Send the session's queued frames, then ``extra`` buffers (a block)."""
        async with self.lock:
            data = self.sess.data_to_send()
            parts = [data, *extra] if data else list(extra)
            if not parts:
                return
            if self._send_parts is not None:
                await self._send_parts(parts)
            else:
                for p in parts:
                    await self.stream.send_all(p)

    def kick(self) -> None:
        if self.sess.has_work:
            if self.idle.is_set():
                self.idle = trio.Event()
            self.work.set()

    async def events(self):
        """Carry out the session's events; returns a :class:`~.session.Closed` or None."""
        sess = self.sess
        while True:
            ev = sess.next_event()
            if ev is None:
                return None
            t = type(ev)
            if t is Closed:
                return ev
            cfg = sess.cfg
            if t is ResolveRepository:
                sess.repository_resolved(await trio.to_thread.run_sync(cfg.resolve, ev.name))
            elif t is StoreBlocks:
                await _receiving(sess, True)  # before the first block is stored
                async with cfg.write_lock:
                    await trio.to_thread.run_sync(cfg.backend.put_many, ev.blocks)
            elif t is UpdateRef:
                if await trio.to_thread.run_sync(sess.check_ref_update, ev.message):
                    async with cfg.write_lock:
                        sess.apply_ref_update(ev.message)
                await _receiving(sess, False)

    async def run(self):
        async with _collapse_groups(), trio.open_nursery() as nursery:
            nursery.start_soon(self.writer)
            try:
                closed = await self.reader()
            finally:
                # at once: the writer may hold a block of a read snapshot the
                # session has just released
                nursery.cancel_scope.cancel()
        if closed is not None:
            with trio.move_on_after(1):
                try:
                    await self.flush()  # the Error frame, if any
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        return closed

    async def reader(self):
        sess = self.sess
        hello_by = trio.current_time() + sess.cfg.hello_timeout
        while True:
            if sess.state == "hello":  # an absolute deadline: trickled bytes do not extend it
                chunks = None
                with trio.move_on_at(hello_by):
                    chunks = await self._receive()
                if chunks is None:
                    log.warning("closed session from %s: no Hello within %g s", sess.addr,
                                sess.cfg.hello_timeout)
                    sess.close()
                    return None
            else:
                chunks = await self._receive()
            for c in chunks:
                sess.receive_data(c)
                closed = await self.events()
                if closed is not None:
                    return closed
            if not chunks:
                sess.receive_eof()
                closed = await self.events()  # pushed blocks are stored first
                if closed is not None:
                    return closed
                self.kick()
                while sess.has_work or not self.idle.is_set():
                    await self.idle.wait()
                return await self.events()
            await self.flush()
            self.kick()

    async def writer(self):
        sess = self.sess
        while True:
            blk = sess.next_block()
            if blk is None:
                await self.flush()
                if sess.has_work:
                    continue
                self.work = trio.Event()
                self.idle.set()
                await self.work.wait()
                continue
            cfg = sess.cfg
            data, kind = blk.data, protocol.Block.TYPE
            if blk.base is not None:  # a thin answer: the delta, when it pays
                value = await trio.to_thread.run_sync(blk.thin_value)
                if value is not None:
                    data, kind = value, protocol.DeltaBlock.TYPE
                    cfg.stats.bytes_sent -= len(blk.data) - len(value)
            n = len(data)
            if cfg.ledger is not None:
                await cfg.ledger.turn(blk.peer, n)
            if cfg.rate_limit is not None:
                await cfg.rate_limit.take(n)
            # header + data, no copy of the data
            await self.flush((protocol.block_frame_header(blk.cid, n, kind), data))
