"""TensorSwap sessions without I/O: the protocol's state machines (after aioquic).

A session is one conversation on one byte stream (docs/protocol.md). The two
classes here hold everything that conversation needs to decide — decoding, the
handshake, want-lists, priorities, cancels, DAG requests and their selectors,
limits, authentication, push checks — and do no I/O: bytes go in
(``receive_data``), and what to send comes out (``data_to_send``, ``next_block``)
together with *events* for the few things only the driver can do (wait, run a
thread, take a lock). The drivers — :func:`.server.handle_session`, the client's
:class:`.client.RemoteSession` and :class:`.wants.MuxSession` — only move bytes
between a session and a QUIC stream or TLS connection, so these classes are
tested without sockets (``tests/unit/test_transport_session.py``).

:class:`ServerSession` — the server's side of one session::

    s = ServerSession(cfg, addr="1.2.3.4:5")
    s.receive_data(chunk)
    while (ev := s.next_event()) is not None:   # handle messages, in order
        ...                                      # ResolveRepository, StoreBlocks, UpdateRef, Closed
    out = s.data_to_send()                       # control frames (Welcome, Refs, DagDone, ...)
    blk = s.next_block()                         # the next block to send, by priority (or None)

:class:`ClientSession` — the client's side: requests are methods that queue
frames (``list_refs``, ``request_dag``, ``want``, ``cancel`` …) and return request
ids; ``next_event`` returns each validated answer (the protocol's message
objects) after the session's bookkeeping (outstanding requests and wants).
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass

from ..encoding.cid import cid_codec, cid_str, verify_block
from ..errors import CorruptBlock, InvalidCID, RefConflict, TvcfsError
from . import protocol
from .base import is_leaf, read_view
from .identity import (IdentityError, PeerIdMismatch, auth_message, format_peer_id,
                       verify_signature)
from .selection import held_blocks, iter_selection, missing_in_dag, thin_plan

__all__ = [
    "ClientSession",
    "Closed",
    "OutgoingBlock",
    "PushRejected",
    "RemoteError",
    "ResolveRepository",
    "ServerSession",
    "SessionError",
    "StoreBlocks",
    "UpdateRef",
]

log = logging.getLogger("tvcfs.transport.server")

PUSH_FLUSH = 32 << 20  # pushed bytes buffered before they are handed over to be stored


class RemoteError(TvcfsError):
    """The remote refused a request (unauthorised, rejected push), ended the
    session with an ``Error``, or speaks another protocol version."""


class PushRejected(RemoteError):
    """The remote refused a ref update; ``current`` is the remote ref's value."""

    def __init__(self, message: str, current: bytes | None = None):
        super().__init__(message)
        self.current = current


class UnaskedBlocks(RemoteError):
    """The remote sent more blocks of no asked DAG than a fetch tolerates
    (:data:`~tvcfs.transport.client.STRAY_LIMIT`): it is broken or hostile, and the
    same fetch from it again would meet the same answer."""

    resumable = False


SessionError = RemoteError  # what ClientSession raises for a session-level Error


# ====================================================================== server
@dataclass
class ResolveRepository:
    """Event: the ``Hello`` names repository ``name`` and the configuration has a
    ``resolve``: the driver calls ``cfg.resolve(name)`` (it may block: run it in
    a thread) and hands the result to :meth:`ServerSession.repository_resolved`."""

    name: str


@dataclass
class StoreBlocks:
    """Event: verified pushed blocks ``[(cid, bytes)]`` to store
    (``backend.put_many``, under the configuration's write lock)."""

    blocks: list


@dataclass
class UpdateRef:
    """Event: an authorised ``RefUpdate``; the driver calls
    :meth:`ServerSession.check_ref_update` (blocking: a walk of the new DAG),
    then, when that returns True, :meth:`ServerSession.apply_ref_update` under the
    write lock."""

    message: protocol.RefUpdate


@dataclass
class Closed:
    """Event: the session is over. ``error``: the protocol violation that ended it
    ("" for a clean end); an ``Error`` frame for the client is in
    :meth:`ServerSession.data_to_send`. The driver sends it and closes the
    connection (for QUIC the whole connection when ``error``)."""

    error: str = ""


@dataclass
class OutgoingBlock:
    """A block to send now: ``cid``, ``data`` (a buffer valid until the next call
    of :meth:`ServerSession.next_block`), and ``peer`` (the ledger key). For a thin
    answer ``base``/``base_data``/``elem`` name a block the client holds to send it
    against, ``version`` the packed value's format the client reads (1 or 2): the
    driver calls :meth:`thin_value` (off the event loop) and sends a ``DeltaBlock``
    when that gives a value."""

    cid: bytes
    data: object
    peer: object
    base: bytes | None = None
    base_data: object = None
    elem: int = 1
    version: int = 1

    def thin_value(self) -> bytes | None:
        """The packed value to send instead of ``data`` (the XOR with the base or
        plain byte-grouped compression, whichever is smaller; version 2 when the
        request said the client reads it), or ``None`` when neither saves 5 % (send
        the block raw)."""
        return thin_value(self.data, self.elem, self.base, self.base_data, self.version)


def thin_value(data, elem: int, base: bytes | None, base_data, version: int = 1) -> bytes | None:
    """A packed value of block bytes ``data`` for a thin transfer (see
    :func:`tvcfs.store.encodings.encode`; the receiver decodes it at once, so the
    delta's depth is 1), or ``None`` when sending it raw is as good. ``version``:
    the packed value's format — 2 (per-plane sections) only to a peer that said it
    reads it (``WELCOME_PLANES``, a selector's ``planes``), else 1."""
    from ..store import encodings

    return encodings.encode(data, elem, base, base_data, 0, version=version)


def decode_thin(cid: bytes, value, get) -> bytes:
    """The block bytes of a received ``DeltaBlock`` value, checked against ``cid``.
    ``get(base CID) -> bytes | None`` reads the receiver's store. Raises
    :class:`CorruptBlock` when the value does not decode, its base is not held, or
    the result does not hash to ``cid``."""
    from ..store import encodings

    h = encodings.header(value)
    base = None
    if h.base is not None:
        base = get(h.base)
        if base is None:
            raise CorruptBlock(f"the delta of block {cid_str(cid)} needs base {cid_str(h.base)}, "
                               "which this store does not hold")
    data = encodings.decode(value, base)
    verify_block(cid, data)
    return data


class _Answer:
    """A DAG request being answered: its traversal and read snapshot."""

    __slots__ = ("req", "arrival", "it", "stack", "blocks", "nbytes", "status", "message",
                 "cancelled", "thin", "view")

    def __init__(self, req: protocol.DagRequest, arrival: int):
        self.req = req
        self.arrival = arrival
        self.it = None
        self.stack: ExitStack | None = None
        self.blocks = 0
        self.nbytes = 0
        self.status = protocol.DONE_OK
        self.message = ""
        self.cancelled = False
        self.thin: dict = {}  # {leaf CID: (element size, base CID)} of a thin request
        self.view = None

    @property
    def priority(self) -> int:
        return self.req.priority


class ServerSession:
    """The server's side of one session, without I/O (see the module docstring).

    ``cfg``: a :class:`~.server.ServerConfig` (``backend``, ``identity``,
    ``private``, ``allow_push``, ``allow_read``, ``limits``, ``stats``,
    ``resolve``, ``grant_hint``, ``corrupt_hook``, ``ledger``); ``addr``: the
    peer's address (for logs and, unauthenticated, the ledger); ``nonce``: the
    32-byte authentication challenge (random by default).

    Order of answers: want-list entries at or above the priority of the best
    pending DAG request first; between two blocks of a DAG answer, wants of at
    least its priority and requests of a strictly higher priority (nested); a
    block sent after a request arrived is not sent again for it. Input errors
    (malformed frames, limits, an unauthorised push, a bad pushed block) end the
    session with an ``Error`` frame and a :class:`Closed` event; they never raise.
    """

    def __init__(self, cfg, addr: str = "?", nonce: bytes | None = None):
        self.cfg = cfg
        self.addr = addr
        self.nonce = nonce if nonce is not None else os.urandom(32)
        self.decoder = protocol.FrameDecoder(cfg.limits, zero_copy=False)
        self.peer: bytes | None = None
        self.can_push = False
        self.state = "hello"  # hello → resolving → open → closed
        self.wants: dict[bytes, tuple[protocol.WantEntry, int]] = {}  # cid → (entry, arrival)
        self.queued: list[_Answer] = []  # DAG requests not started, arrival order
        self.active: list[_Answer] = []  # started answers; the last one is sending
        self.eof = False
        self._resolving = ""
        self._out: list = []
        self._events: list = []
        self.pushed: list = []
        self.pushed_bytes = 0
        # {cid: sequence number} of blocks sent while requests were outstanding
        self.sent_seq: dict[bytes, int] = {}
        self.seq = 0
        self._thin_cache: dict = {}  # {frozenset(have_roots): thin plan}
        self._held_cache: dict = {}  # {frozenset(have_roots): blocks the client holds}

    # ---------------------------------------------------------------- output
    def data_to_send(self) -> bytes:
        """Control frames queued so far (possibly empty), in order."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def _send(self, msg: protocol.Message) -> None:
        self._out.append(protocol.encode(msg))

    @property
    def has_work(self) -> bool:
        """Whether :meth:`next_block` has wants or DAG requests to answer."""
        return bool(self.wants or self.queued or self.active)

    @property
    def closed(self) -> bool:
        """Whether the session has ended."""
        return self.state == "closed"

    # ---------------------------------------------------------------- input
    def receive_data(self, data) -> None:
        """Bytes received from the client (any split). Call :meth:`next_event`."""
        if self.state != "closed":
            self.decoder.feed(data)

    def receive_eof(self) -> None:
        """The client finished sending: pushed blocks are handed over, outstanding
        answers still go out, then :meth:`next_event` says :class:`Closed`."""
        self.eof = True

    def next_event(self):
        """Handle received messages in order until one needs the driver; returns
        that event (:class:`ResolveRepository`, :class:`StoreBlocks`,
        :class:`UpdateRef`, :class:`Closed`) or ``None`` when all input is handled."""
        while True:
            if self._events:
                return self._events.pop(0)
            if self.state in ("closed", "resolving"):
                return None
            try:
                msg = self.decoder.next()
                if msg is None:
                    if self.eof:
                        if self.decoder.buffered:
                            raise protocol.ProtocolError("stream ended inside a message")
                        if self.pushed:
                            return self._flush_pushed()
                        if not self.has_work:
                            self.close()
                            return Closed()
                    return None
                self._handle(msg)
            except protocol.ProtocolError as e:
                return self._violation(str(e))

    def _violation(self, reason: str) -> Closed:
        self.cfg.stats.protocol_errors += 1
        log.warning("closed session from %s: protocol error: %s", self.addr, reason)
        self._send(protocol.Error(0, protocol.E_PROTOCOL, reason[:500]))
        self.close()
        return Closed(reason)

    def close(self) -> None:
        """End the session: drop its work and release the read snapshots it holds."""
        self.state = "closed"
        for a in self.active + self.queued:
            _end_answer(a)
        self.active, self.queued = [], []
        self.wants.clear()
        self._events.clear()

    def _handle(self, msg: protocol.Message) -> None:
        t = type(msg)
        if self.state == "hello":
            self._on_hello(msg)
        elif t is protocol.Block:
            self._on_pushed_block(msg)
        elif t is protocol.DeltaBlock:
            self._on_pushed_delta(msg)
        elif t is protocol.WantList:
            self._on_wantlist(msg)
        elif t is protocol.DagRequest:
            self._on_dag_request(msg)
        elif t is protocol.Cancel:
            self._on_cancel(msg.request_id)
        elif t is protocol.ListRefs:
            if not self.may_read():
                self._send(protocol.Error(msg.request_id, protocol.E_UNAUTHORIZED, self.private_refusal()))
                return
            backend = self.cfg.backend
            refs = {k: v for k, v in backend.refs().items() if k.startswith(msg.prefix)}
            self._send(protocol.Refs(msg.request_id, refs, backend.head()))
        elif t is protocol.Auth:
            self._on_auth(msg)
        elif t is protocol.RefUpdate:
            self._on_ref_update(msg)
        else:
            raise protocol.ProtocolError(f"unexpected message {t.__name__}")

    # ---------------------------------------------------------------- handshake
    def _on_hello(self, msg) -> None:
        if type(msg) is not protocol.Hello:
            raise protocol.ProtocolError("expected Hello")
        if msg.version != protocol.PROTOCOL_VERSION:
            self._send(protocol.Error(0, protocol.E_PROTOCOL, f"unsupported version {msg.version}"))
            self.close()
            self._events.append(Closed())
            return
        if self.cfg.resolve is not None:
            self.state = "resolving"
            self._resolving = msg.repo
            self._events.append(ResolveRepository(msg.repo))
            return
        self._welcome()

    def repository_resolved(self, cfg) -> None:
        """The answer to :class:`ResolveRepository`: that repository's
        configuration, or ``None`` (not found: the session ends with ``Error``)."""
        if cfg is None:
            self._send(protocol.Error(0, protocol.E_NOT_FOUND,
                               f"no repository {self._resolving!r} on this server"))
            self.close()
            self._events.append(Closed())
            return
        self.cfg = cfg
        self._welcome()

    def _welcome(self) -> None:
        cfg, lim = self.cfg, self.cfg.limits
        self.decoder.limits = lim
        self.state = "open"
        self._send(protocol.Welcome(protocol.PROTOCOL_VERSION, cfg.identity.peer_id, self.nonce,
                             lim.max_message, lim.max_wantlist, lim.max_inflight,
                             (protocol.WELCOME_PRIVATE if cfg.private else 0)
                             | (protocol.WELCOME_THIN | protocol.WELCOME_PLANES if self.thin else 0)))

    @property
    def thin(self) -> bool:
        """Whether this server does thin transfers (``cfg.thin``, default on)."""
        return bool(getattr(self.cfg, "thin", True))

    def _on_auth(self, msg: protocol.Auth) -> None:
        try:
            peer = verify_signature(msg.public_key,
                                    auth_message(self.cfg.identity.peer_id, self.nonce),
                                    msg.signature)
        except IdentityError as e:
            self._send(protocol.Error(0, protocol.E_UNAUTHORIZED, f"authentication failed: {e}"))
            raise protocol.ProtocolError(f"bad Auth: {e}") from None
        self.peer = peer
        self.can_push = peer in self.cfg.allow_push
        self._send(protocol.AuthOk(peer, self.can_push))

    # ---------------------------------------------------------------- reads
    def may_read(self) -> bool:
        """Whether this session's peer may read (always, unless the server is
        private: then an authenticated peer ID in ``allow_read`` or ``allow_push``)."""
        if not self.cfg.private:
            return True
        return self.peer is not None and (
            self.peer in self.cfg.allow_read or self.peer in self.cfg.allow_push)

    def private_refusal(self) -> str:
        """The reason a read is refused on a private server (also logged)."""
        if self.peer is None:
            return "this server is private: authenticate first"
        pid = format_peer_id(self.peer)
        log.warning("refused read from %s: peer ID not allowed on this private server",
                    self.who())
        return (f"this server is private and peer ID {pid} may not read it; ask its owner "
                + self.cfg.grant_hint.format(peer=pid, private="--private "))

    def who(self) -> str:
        """The peer for log lines: its peer ID (or ``anonymous``) and address."""
        return f"{format_peer_id(self.peer) if self.peer else 'anonymous'} ({self.addr})"

    def _on_wantlist(self, msg: protocol.WantList) -> None:
        seq = self.seq
        _apply_wantlist(self.wants, msg, lambda e: (e, seq))
        if len(self.wants) > self.cfg.limits.max_wantlist:
            raise protocol.ProtocolError("want-list too long")

    def _on_dag_request(self, msg: protocol.DagRequest) -> None:
        if not self.may_read():
            self._send(protocol.Error(msg.request_id, protocol.E_UNAUTHORIZED, self.private_refusal()))
            return
        if len(self.queued) + len(self.active) >= self.cfg.limits.max_requests:
            raise protocol.ProtocolError("too many outstanding requests")
        self.queued.append(_Answer(msg, self.seq))

    def _on_cancel(self, rid: int) -> None:
        for a in self.active:
            if a.req.request_id == rid:
                a.cancelled = True
                return
        for a in self.queued:
            if a.req.request_id == rid:
                self.queued.remove(a)
                self._send(protocol.DagDone(rid, protocol.DONE_ERROR, 0, 0, "cancelled"))
                return

    def next_block(self) -> OutgoingBlock | None:
        """The next block to send, in priority order (see the class docstring), or
        ``None`` when nothing is left to send now. Frames that go before it
        (``Have``, ``DontHave``, ``DagDone``) are queued for :meth:`data_to_send`:
        send those first, then the block. Its ``data`` stays valid until the next
        call."""
        while self.state == "open":
            active = self.active
            if active:
                cur = active[-1]
                if cur.cancelled:
                    cur.status, cur.message = protocol.DONE_ERROR, "cancelled"
                    self._finish(cur)
                    continue
                if self.wants:
                    served, blk = self._serve_want(cur.priority)
                    if blk is not None:
                        return blk
                    if served:
                        continue
                higher = [a for a in self.queued if a.priority > cur.priority]
                if higher:
                    self._start(max(higher, key=lambda a: a.priority))
                    continue
                blk = self._advance(cur)
                if blk is not None:
                    return blk
                continue
            top = max((a.priority for a in self.queued), default=-1)
            if self.wants:
                served, blk = self._serve_want(top)
                if blk is not None:
                    return blk
                if served:
                    continue
            if self.queued:
                self._start(max(self.queued, key=lambda a: a.priority))
                continue
            self.sent_seq.clear()
            return None
        return None

    def _serve_want(self, min_priority: int) -> tuple[bool, OutgoingBlock | None]:
        """Answer the best want at or above ``min_priority``: ``(False, None)``
        when there is none, else ``(True, block to send or None)``."""
        best = None
        for cid, (e, arrival) in self.wants.items():
            if best is None or e.priority > best[1].priority:
                best = (cid, e, arrival)
        if best is None or best[1].priority < min_priority:
            return False, None
        cid, e, arrival = best
        del self.wants[cid]
        if not self.may_read():
            self._send(protocol.DontHave(cid))
            return True, None
        backend = self.cfg.backend
        if e.want_have:
            self._send(protocol.Have(cid) if backend.has(cid) else protocol.DontHave(cid))
            return True, None
        if self.sent_seq.get(cid, -1) > arrival:
            return True, None  # sent since it was asked for (by a DAG answer): on its way
        try:
            data = backend.get(cid)  # checked against its CID (the store's verified read)
        except CorruptBlock as err:
            log.error("not sending a damaged block: %s", err)
            data = None
        if data is None:
            if e.flags & protocol.SEND_DONT_HAVE:
                self._send(protocol.DontHave(cid))
            return True, None
        return True, self._outgoing(cid, data)

    def _start(self, a: _Answer) -> None:
        self.queued.remove(a)
        a.stack = ExitStack()
        try:
            # one read snapshot per answer: raw leaves go out as zero-copy views
            view = a.stack.enter_context(read_view(self.cfg.backend))
            known = self._held(view, a.req.have_roots) if a.req.have_roots else None
            a.it = iter_selection(view, a.req, known)
            if a.req.selector.thin and self.thin:
                a.view = view
                a.thin = self._thin_plan(view, a.req, known)
        except TvcfsError as e:
            a.status, a.message = protocol.DONE_ERROR, str(e)
        self.active.append(a)

    def _advance(self, a: _Answer) -> OutgoingBlock | None:
        """The next block of answer ``a`` (``None`` after queuing a frame or
        finishing it)."""
        if a.it is None:
            self._finish(a)
            return None
        try:
            item = next(a.it, None)
        except TvcfsError as e:
            if isinstance(e, CorruptBlock):
                log.error("DAG answer stopped at a damaged block: %s", e)
            a.status, a.message = protocol.DONE_ERROR, str(e)
            self._finish(a)
            return None
        if item is None:
            self._finish(a)
            return None
        cid, data = item
        if data is None:
            self._send(protocol.DontHave(cid))
            a.status = protocol.DONE_PARTIAL
            return None
        if self.sent_seq.get(cid, -1) > a.arrival:
            return None  # sent since this request arrived (e.g. to a foreground want)
        blk = self._outgoing(cid, data)
        plan = a.thin.get(cid) if a.thin else None
        if plan is not None:
            try:
                bdata = a.view.get(plan[1])
            except TvcfsError:
                bdata = None
            if bdata is not None and len(bdata) == len(data):
                blk.elem, blk.base, blk.base_data = plan[0], plan[1], bdata
                blk.version = 2 if a.req.selector.planes else 1
        a.blocks += 1
        a.nbytes += len(blk.data)
        return blk

    def _held(self, view, have_roots) -> set:
        """:func:`~.selection.held_blocks` of ``have_roots``, cached for the session
        (a fetch sends many requests with the same have-roots; a ref update on this
        server does not change what the client holds)."""
        key = frozenset(have_roots)
        known = self._held_cache.get(key)
        if known is None:
            if len(self._held_cache) >= 4:
                self._held_cache.clear()
            known = self._held_cache[key] = held_blocks(view, have_roots)
        return known

    def _thin_plan(self, view, req: protocol.DagRequest, known: set | None = None) -> dict:
        """How the leaves this thin request may select can go out as deltas: planned
        over the server's refs and the request's commit roots, against the blocks of
        the client's ``have_roots`` (cached per set of have-roots for the session).
        Blocking (reads commits, trees, file indexes): a few per session."""
        key = frozenset(req.have_roots)
        cache = self._thin_cache
        if key not in cache:
            heads = [c for c in req.roots if not is_leaf(c)] + list(self.cfg.backend.refs().values())
            try:
                cache[key] = thin_plan(view, heads, req.have_roots, known)
            except TvcfsError as e:
                log.warning("no thin plan for a request from %s: %s", self.addr, e)
                cache[key] = {}
        return cache[key]

    def _finish(self, a: _Answer) -> None:
        self.active.remove(a)
        _end_answer(a)
        self._send(protocol.DagDone(a.req.request_id, a.status, a.blocks, a.nbytes, a.message))

    def _outgoing(self, cid: bytes, data) -> OutgoingBlock:
        hook = self.cfg.corrupt_hook
        if hook is not None:
            data = hook(cid, data)
        self.seq += 1
        if len(self.sent_seq) < 65536:
            self.sent_seq[cid] = self.seq
        stats = self.cfg.stats
        stats.blocks_sent += 1
        stats.bytes_sent += len(data)
        return OutgoingBlock(cid, data, self.peer or self.addr)

    # ---------------------------------------------------------------- push
    def _on_pushed_block(self, msg: protocol.Block, verified: bool = False) -> None:
        if not self.can_push:
            self._send(protocol.Error(0, protocol.E_UNAUTHORIZED, "push not allowed for this peer"))
            raise protocol.ProtocolError("unauthorised push")
        try:
            cid_codec(msg.cid)
            if not verified:
                verify_block(msg.cid, msg.data)
        except (InvalidCID, CorruptBlock) as e:
            self.cfg.stats.bad_blocks_received += 1
            raise protocol.ProtocolError(f"pushed block rejected: {e}") from None
        self.cfg.stats.blocks_received += 1
        self.pushed.append((msg.cid, msg.data))
        self.pushed_bytes += len(msg.data)
        if self.pushed_bytes >= min(self.cfg.limits.max_inflight, PUSH_FLUSH):
            self._events.append(self._flush_pushed())

    def _on_pushed_delta(self, msg: protocol.DeltaBlock) -> None:
        """A pushed ``DeltaBlock``: decoded against its base (which this store must
        hold), checked against its CID, then handled as a pushed ``Block``."""
        if not self.thin:
            raise protocol.ProtocolError("DeltaBlock sent to a server that did not offer thin transfers")
        if not self.can_push:
            self._send(protocol.Error(0, protocol.E_UNAUTHORIZED, "push not allowed for this peer"))
            raise protocol.ProtocolError("unauthorised push")
        try:
            cid_codec(msg.cid)
            data = decode_thin(msg.cid, msg.value, self.cfg.backend.get)
        except (InvalidCID, CorruptBlock) as e:
            self.cfg.stats.bad_blocks_received += 1
            raise protocol.ProtocolError(f"pushed block rejected: {e}") from None
        self._on_pushed_block(protocol.Block(msg.cid, data), verified=True)

    def _flush_pushed(self) -> StoreBlocks:
        batch, self.pushed, self.pushed_bytes = self.pushed, [], 0
        return StoreBlocks(batch)

    def _on_ref_update(self, msg: protocol.RefUpdate) -> None:
        cfg = self.cfg
        if not self.can_push:
            who = format_peer_id(self.peer) if self.peer else "an unauthenticated peer"
            log.warning("refused push to %s from %s (%s): peer ID not in the allow-list",
                        msg.name, who, self.addr)
            self._send(protocol.RefResult(
                msg.request_id, False, cfg.backend.refs().get(msg.name),
                f"unauthorised: peer ID {who} may not push to this repository; ask its owner "
                + cfg.grant_hint.format(peer=who if self.peer else "PEERID", private="")))
            return
        if self.pushed:
            self._events.append(self._flush_pushed())
        self._events.append(UpdateRef(msg))

    def check_ref_update(self, msg: protocol.RefUpdate) -> bool:
        """Whether the DAG of ``msg.new`` is complete in the store (blocking: run
        it in a thread); when it is not, the refusal is queued and False returned."""
        backend = self.cfg.backend
        if msg.new is None:
            return True
        missing = missing_in_dag(backend, msg.new, set(backend.refs().values()), True, 1)
        if missing:
            self._send(protocol.RefResult(msg.request_id, False, backend.refs().get(msg.name),
                                   f"incomplete push: block {cid_str(missing[0])} missing"))
            return False
        return True

    def apply_ref_update(self, msg: protocol.RefUpdate) -> None:
        """Compare-and-swap the ref (call under the write lock); queues the
        ``RefResult``."""
        backend = self.cfg.backend
        try:
            backend.update_ref(msg.name, msg.new, msg.old)
        except RefConflict as e:
            log.warning("rejected push to %s from %s: stale base", msg.name, self.who())
            cur = cid_str(e.actual)[:16] if e.actual else "(none)"
            base = cid_str(msg.old)[:16] if msg.old else "(none)"
            self._send(protocol.RefResult(
                msg.request_id, False, e.actual,
                f"rejected: {msg.name} has moved (stale base: you expected {base}, it is at "
                f"{cur}); fetch and merge, then push again"))
            return
        except TvcfsError as e:
            self._send(protocol.RefResult(msg.request_id, False, None, f"rejected: {e}"))
            return
        log.info("push from %s: %s -> %s", self.who(), msg.name,
                 cid_str(msg.new) if msg.new else "(deleted)")
        self._send(protocol.RefResult(msg.request_id, True, msg.new, "ok"))


def _apply_wantlist(table: dict, msg: protocol.WantList, value) -> None:
    """Apply a want-list update to ``table`` (``{cid: value(entry)}``): ``full``
    replaces it, cancels remove entries, others add or replace theirs."""
    if msg.full:
        table.clear()
    for e in msg.entries:
        if e.cancel:
            table.pop(e.cid, None)
        else:
            table[e.cid] = value(e)


def _end_answer(a: _Answer) -> None:
    it, a.it = a.it, None
    if it is not None and hasattr(it, "close"):
        it.close()
    if a.stack is not None:
        a.stack.close()
        a.stack = None


# ====================================================================== client
# messages only a server sends (a client receiving anything else: protocol error)
_TO_CLIENT = frozenset((protocol.Welcome, protocol.AuthOk, protocol.Block, protocol.DeltaBlock, protocol.Have, protocol.DontHave,
                        protocol.DagDone, protocol.Refs, protocol.RefResult, protocol.Error))


class ClientSession:
    """The client's side of one session, without I/O (see the module docstring).

    ``expected_peer``: the server's peer ID as the transport verified it (its TLS
    certificate; ``None``: accept the one ``Welcome`` names). ``limits``: the
    limits applied to what the server sends; ``zero_copy``: large received
    blocks' ``data`` is a :class:`~.protocol.BlockParts` (see
    :class:`~.protocol.FrameDecoder`).

    Requests queue frames and return request ids. :meth:`next_event` returns
    the next answer as the protocol's message object (``Welcome``, ``AuthOk``,
    ``Refs``, ``Block``, ``Have``, ``DontHave``, ``DagDone``, ``RefResult``, and
    ``Error`` about a request), after checking it: a session-level ``Error`` or
    a version mismatch raises :class:`SessionError`, a ``Welcome`` naming another
    peer raises :class:`~.identity.PeerIdMismatch`, a malformed frame or one only
    a client may send raises :class:`~.protocol.ProtocolError`.

    Bookkeeping: ``requests`` (outstanding DAG request ids → their request),
    ``wanted`` (outstanding want-list CIDs → priority; an answer removes them;
    a ``Block`` the session did not want is still returned: the caller verifies
    every block). ``max_wantlist`` (after ``Welcome``) splits long want-lists.
    """

    def __init__(self, expected_peer: bytes | None = None,
                 limits: protocol.Limits = protocol.DEFAULT_LIMITS, zero_copy: bool = False):
        self.decoder = protocol.FrameDecoder(limits, zero_copy=zero_copy)
        self.peer_id = expected_peer
        self.welcome: protocol.Welcome | None = None
        self.can_push = False
        self.requests: dict[int, protocol.DagRequest] = {}
        self.ref_requests: set[int] = set()
        self.wanted: dict[bytes, int] = {}
        self._rid = 0
        self._out: list = []
        self.hello_sent = False

    # ---------------------------------------------------------------- output
    def data_to_send(self) -> list:
        """Buffers to send, in order (frames; a pushed block as header and data)."""
        out, self._out = self._out, []
        return out

    def next_id(self) -> int:
        """A new request id (ids are never reused within a session)."""
        self._rid += 1
        return self._rid

    @property
    def max_wantlist(self) -> int:
        """Entries the server accepts in one want-list (its ``Welcome``; 1024 before it)."""
        return self.welcome.max_wantlist if self.welcome else 1024

    def send(self, msg: protocol.Message) -> None:
        """Queue any request message, with its bookkeeping (a ``DagRequest`` is
        outstanding until its ``DagDone``, want-list entries until answered or
        cancelled, ``ListRefs``/``RefUpdate`` until their answer)."""
        t = type(msg)
        if t is protocol.DagRequest:
            self.requests[msg.request_id] = msg
        elif t is protocol.WantList:
            _apply_wantlist(self.wanted, msg, lambda e: e.priority)
        elif t is protocol.ListRefs or t is protocol.RefUpdate:
            self.ref_requests.add(msg.request_id)
        self._out.append(protocol.encode(msg))

    def hello(self, repo: str = "") -> None:
        """Queue ``Hello`` (the first frame of a session)."""
        self.hello_sent = True
        self.send(protocol.Hello(protocol.PROTOCOL_VERSION, repo))

    def authenticate(self, identity) -> None:
        """Queue ``Auth``: ``identity``'s signature of the server's nonce (needs
        the ``Welcome``)."""
        if self.welcome is None:
            raise SessionError("cannot authenticate before the server's Welcome")
        msg = auth_message(self.welcome.peer_id, self.welcome.nonce)
        self.send(protocol.Auth(identity.public_key_proto, identity.sign(msg)))

    def list_refs(self, prefix: str = "") -> int:
        """Queue ``ListRefs``; returns its request id."""
        rid = self.next_id()
        self.send(protocol.ListRefs(rid, prefix))
        return rid

    def request_dag(self, roots: list, selector: protocol.Selector | None = None, *,
                    have=(), have_roots=(), priority: int = 1, rid: int | None = None) -> int:
        """Queue a ``DagRequest`` for ``roots`` (several only with the all-selector);
        returns its request id. Raises ``ValueError`` for more than one root with
        another selector (the server would end the session)."""
        selector = selector or protocol.Selector()
        roots = list(roots)
        if not roots or (len(roots) > 1 and selector.kind != protocol.SEL_ALL):
            raise ValueError("a DAG request has one root, or several with the all-selector")
        rid = self.next_id() if rid is None else rid
        self.send(protocol.DagRequest(rid, roots[0], selector, list(have), list(have_roots), priority,
                               roots[1:]))
        return rid

    def request_range(self, root: bytes, start: int, end: int, *, have=(),
                      priority: int = 1, rid: int | None = None) -> int:
        """Queue a byte-range request: the blocks of file ``root`` overlapping bytes
        ``[start, end)`` (its interior nodes, then the leaves in file order),
        except ``have``. Returns the request id."""
        return self.request_dag([root], protocol.Selector(protocol.SEL_RANGE, "", start, end), have=have,
                                priority=priority, rid=rid)

    def cancel(self, rid: int) -> None:
        """Queue ``Cancel`` of DAG request ``rid`` (its ``DagDone`` still comes)."""
        if rid in self.requests:
            self.send(protocol.Cancel(rid))

    def want(self, cids, priority: int = 1, flags: int = protocol.SEND_DONT_HAVE) -> None:
        """Queue want-list entries (split into lists of at most ``max_wantlist``)."""
        cids = list(cids)
        lim = self.max_wantlist
        for i in range(0, len(cids), lim):
            self.send(protocol.WantList([protocol.WantEntry(c, priority, flags) for c in cids[i:i + lim]]))

    def want_entries(self, entries) -> None:
        """Queue want-list entries as given (their own priorities and flags)."""
        entries = list(entries)
        if entries:
            self.send(protocol.WantList(entries))

    def cancel_wants(self, cids) -> None:
        """Queue cancels of want-list entries."""
        cids = list(cids)
        if cids:
            self.send(protocol.WantList([protocol.WantEntry(c, 0, protocol.CANCEL) for c in cids]))

    @property
    def thin(self) -> bool:
        """Whether the server offered thin transfers (``Welcome`` flag
        ``WELCOME_THIN``): requests may ask for ``DeltaBlock`` answers and a push
        may send them."""
        return bool(self.welcome is not None and self.welcome.flags & protocol.WELCOME_THIN)

    @property
    def planes(self) -> bool:
        """Whether the server reads version-2 packed values (``Welcome`` flag
        ``WELCOME_PLANES``): a push's ``DeltaBlock`` values and a thin request's
        answers may be version 2."""
        return bool(self.thin and self.welcome.flags & protocol.WELCOME_PLANES)

    def push_block(self, cid: bytes, data, delta: bool = False) -> None:
        """Queue a pushed ``Block`` (header and data as two buffers: no copy);
        ``delta``: ``data`` is a packed value, sent as a ``DeltaBlock`` (only to a
        server that offered thin transfers: raises ``ValueError`` otherwise)."""
        if delta and not self.thin:
            raise ValueError("the server did not offer thin transfers")
        self._out.append(protocol.block_frame_header(cid, len(data), protocol.DeltaBlock.TYPE if delta else protocol.Block.TYPE))
        self._out.append(data)

    def update_ref(self, name: str, old: bytes | None, new: bytes | None) -> int:
        """Queue ``RefUpdate`` (compare-and-swap ``name`` from ``old`` to ``new``)."""
        rid = self.next_id()
        self.send(protocol.RefUpdate(rid, name, old, new))
        return rid

    # ---------------------------------------------------------------- input
    def receive_data(self, data) -> None:
        """Bytes received from the server (any split)."""
        self.decoder.feed(data)

    def next_event(self):
        """The next checked answer (see the class docstring), or ``None``."""
        msg = self.decoder.next()
        if msg is None:
            return None
        return self.handle_message(msg)

    def handle_message(self, msg: protocol.Message):
        """Check and book one decoded message (what :meth:`next_event` does after
        decoding); returns it."""
        t = type(msg)
        if t is protocol.Block:
            self.wanted.pop(msg.cid, None)
        elif t is protocol.DagDone:
            self.requests.pop(msg.request_id, None)
        elif t is protocol.DontHave or t is protocol.Have:
            self.wanted.pop(msg.cid, None)
        elif t is protocol.Error:
            if msg.request_id == 0:
                raise SessionError(f"remote error: {msg.message}")
            self.requests.pop(msg.request_id, None)
            self.ref_requests.discard(msg.request_id)
        elif t is protocol.Refs or t is protocol.RefResult:
            if msg.request_id not in self.ref_requests:
                raise protocol.ProtocolError(f"{t.__name__} for request {msg.request_id}, "
                                      "which was not asked")
            self.ref_requests.discard(msg.request_id)
        elif t is protocol.Welcome:
            if self.welcome is not None:
                raise protocol.ProtocolError("a second Welcome")
            if msg.version != protocol.PROTOCOL_VERSION:
                raise SessionError(f"the remote speaks protocol version {msg.version}, "
                                   f"this tvcfs {protocol.PROTOCOL_VERSION}")
            if self.peer_id is not None and msg.peer_id != self.peer_id:
                raise PeerIdMismatch(self.peer_id, msg.peer_id)
            self.peer_id = msg.peer_id
            self.welcome = msg
        elif t is protocol.AuthOk:
            self.can_push = msg.can_push
        elif t not in _TO_CLIENT:
            raise protocol.ProtocolError(f"a server does not send {t.__name__}")
        return msg
