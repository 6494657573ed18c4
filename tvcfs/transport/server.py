"""TensorSwap server: answers sessions over QUIC streams or TLS-over-TCP.

One session = one bidirectional byte stream (a QUIC stream, or the TLS stream of a
TCP connection). Conversation (docs/protocol.md): ``Hello`` → ``Welcome`` (with a
fresh nonce), optional ``Auth`` → ``AuthOk``, then any number of requests. A reader
task parses requests; a worker task answers want-list entries (highest priority
first, Bitswap) before DAG requests, re-checking the want-list between blocks so
foreground wants pre-empt bulk transfers. Pushed blocks are verified against
their CIDs and stored in batches; ``RefUpdate`` is applied with compare-and-swap
after checking that the new commit's DAG is complete.

A :class:`~.protocol.ProtocolError` (malformed or oversized input, limit
exceeded) ends that session only: the server sends an ``Error`` and closes the
stream (and, for QUIC, that connection).
"""

from __future__ import annotations

import collections
import logging
import os
from dataclasses import dataclass, field

import trio

from ..encoding.cid import DAG_CBOR, DAG_PB, cid_codec, cid_str
from ..errors import CorruptBlock, InvalidCID, RefConflict, TvcfsError
from . import protocol as P
from .backend import BlockBackend, is_leaf, links_of, read_view
from .channel import MessageChannel
from .ledger import PeerLedger
from .quic import _collapse_groups
from .identity import (IdentityError, NodeIdentity, auth_message, format_peer_id,
                       verify_signature)

__all__ = ["ServerConfig", "ServerStats", "handle_session", "iter_selection", "missing_in_dag"]

log = logging.getLogger(__name__)


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

    ``backend``: the repository (:class:`~.backend.BlockBackend`); ``identity``:
    the node key; ``private``: reads need an authenticated peer ID in ``allow_read``
    or ``allow_push``; ``allow_push``: binary peer IDs that may push; ``limits``;
    ``corrupt_hook``: test hook ``f(cid, data) -> data`` applied to outgoing blocks.
    """

    backend: BlockBackend
    identity: NodeIdentity
    private: bool = False
    allow_push: set = field(default_factory=set)
    allow_read: set = field(default_factory=set)
    limits: P.Limits = P.DEFAULT_LIMITS
    stats: ServerStats = field(default_factory=ServerStats)
    corrupt_hook: object = None
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


# ---------------------------------------------------------------- traversal
# Leaf indexes of files recently answered with byte-range selectors ({file CID:
# (FileIndex, interior node CIDs)}): a lazy mount asks many ranges of one file, and
# rebuilding the index of a 1 GiB file costs more than sending a leaf.
_RANGE_INDEX: collections.OrderedDict = collections.OrderedDict()
def iter_selection(backend: BlockBackend, req: P.DagRequest):
    """Yield ``(cid, data | None)`` for the blocks ``req`` selects, depth-first
    pre-order; ``None`` data = the server does not have it (its sub-graph is skipped).

    Each block is yielded at most once per request, however many of ``req.roots``
    (``SEL_ALL``) reach it. With ``selector.skeleton`` raw leaves are neither read
    nor yielded. Blocks in ``req.have`` are traversed but not yielded; sub-graphs
    under ``req.have_roots`` (and blocks reachable from those commits' trees) are
    pruned. Raises ``TvcfsError`` subclasses (path not found, malformed object).
    """
    get = backend.get
    sel = req.selector
    have = set(req.have)
    known: set[bytes] = set()
    for hr in req.have_roots:
        known.add(hr)
        data = get(hr)
        if data is not None and cid_codec(hr) == DAG_CBOR:
            # blocks of the commit's tree that the client already holds
            for c, _ in _walk(backend, links_of(hr, data, history=False)[:1], set(), set(),
                              False, read_have=False):
                known.add(c)
    if sel.kind == P.SEL_ALL:
        yield from _walk(backend, req.roots, have, known, sel.history, leaves=not sel.skeleton)
        return
    # PATH / RANGE: the chain of nodes down to the target, then the target's sub-graph
    from ..dag import FileIndex, dir_lookup

    node = req.root
    data = get(node)
    if data is None:
        yield node, None
        return
    if node not in have:
        yield node, data
    if cid_codec(node) == DAG_CBOR:
        node = links_of(node, data, history=False)[0]
        data = get(node)
        if data is None:
            yield node, None
            return
        if node not in have:
            yield node, data
    parts = [p for p in sel.path.strip("/").split("/") if p and p != "."]
    for part in parts:
        cache = {node: data}
        shards = []  # the HAMT shard nodes on the way to ``part`` (none in a plain directory)

        def dir_get(c):
            if c not in cache:
                b = get(c)
                if b is None:
                    from ..errors import BlockNotFound

                    raise BlockNotFound(c)
                cache[c] = b
                shards.append(c)
            return cache[c]

        link = dir_lookup(dir_get, node, part)
        for c in shards:
            if c not in have:
                yield c, cache[c]
        if link is None:
            from ..errors import PathNotFound

            raise PathNotFound(f"path not found: {sel.path}")
        node = link.hash
        data = get(node)
        if data is None:
            yield node, None
            return
        if node not in have:
            yield node, data
    if sel.kind == P.SEL_PATH:
        yield from ((c, d) for c, d in _walk(backend, [node], have, known, False) if c != node)
        return
    # RANGE: interior nodes of the file (recorded while indexing), then leaves in range
    cached = _RANGE_INDEX.get(node)  # a lazy mount sends many ranges of one big file
    if cached is not None:
        _RANGE_INDEX.move_to_end(node)
        idx, interior = cached
        blocks = {}
    else:
        interior: list[bytes] = []
        blocks = {node: data}

        def rec_get(c):
            b = blocks.get(c)
            if b is None:
                b = get(c)
                if b is None:
                    raise KeyError(c)
                blocks[c] = b
            if c != node and cid_codec(c) == DAG_PB:
                interior.append(c)
            return b

        try:
            idx = FileIndex.build(rec_get, node)
        except KeyError as e:
            yield e.args[0], None
            return
        _RANGE_INDEX[node] = (idx, interior)  # content-addressed: valid for any store
        if len(_RANGE_INDEX) > 64:
            _RANGE_INDEX.popitem(last=False)
    for c in interior:
        if c not in have:
            yield c, blocks[c] if c in blocks else get(c)
    end = sel.end or idx.size
    for i in idx.leaf_range(sel.start, end - sel.start):
        c = idx.leaves[i]
        if i in idx.inline or c in have or c in known:
            continue
        yield c, get(c)


def _walk(backend, roots, have, known, history, read_have=True, leaves=True):
    # one ``seen`` set for all roots: a block they share is yielded once
    get = backend.get
    seen: set[bytes] = set()
    stack = list(reversed(roots))
    while stack:
        c = stack.pop()
        if c in seen or c in known:
            continue
        seen.add(c)
        leaf = is_leaf(c)
        if leaf and (c in have or not leaves):
            continue
        if leaf and not read_have:
            yield c, None
            continue
        data = get(c)
        if data is None:
            yield c, None
            continue
        if c not in have:
            yield c, data
        try:
            stack.extend(reversed(links_of(c, data, history)))
        except (InvalidCID, TvcfsError):
            continue


def missing_in_dag(backend: BlockBackend, root: bytes | list[bytes], complete: set[bytes],
                   history: bool = True, limit: int | None = None) -> list[bytes]:
    """CIDs under ``root`` (one CID or a list of them) that ``backend`` lacks, found
    by walking what is present; each CID once, in walk order.

    Sub-graphs under ``complete`` (commits known to be fully stored, e.g. ref
    values) are not walked. A missing block is reported, not descended into: the
    result is the *frontier* (request each with a whole-DAG selector).
    Stops after ``limit`` CIDs when given.
    """
    out: list[bytes] = []
    seen: set[bytes] = set()
    stack = [root] if isinstance(root, (bytes, bytearray)) else list(reversed(root))
    get = backend.get
    while stack:
        c = stack.pop()
        if c in seen or c in complete:
            continue
        seen.add(c)
        if is_leaf(c):
            if not backend.has(c):
                out.append(c)
        else:
            data = get(c)
            if data is None:
                out.append(c)
            else:
                stack.extend(reversed(links_of(c, data, history)))
        if limit is not None and len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------- session
class _Session:
    def __init__(self, ch: MessageChannel, cfg: ServerConfig, tls_peer: bytes | None):
        self.ch = ch
        self.cfg = cfg
        self.nonce = os.urandom(32)
        self.peer: bytes | None = None
        self.can_push = False
        self.wants: dict[bytes, P.WantEntry] = {}
        self.requests: list[P.DagRequest] = []
        self.cancelled: set[int] = set()
        self.work = trio.Event()
        self.pending: list[tuple[bytes, bytes]] = []
        self.pending_bytes = 0
        self.addr = _peer_address(ch.stream)
        # {cid: sequence number} of blocks sent on this session while requests were
        # outstanding: an answer skips a block sent after its request arrived (the
        # client gets it from the other answer; a foreground want answered first is
        # not sent twice by a DAG answer, nor the other way round)
        self.sent_seq: dict[bytes, int] = {}
        self.seq = 0

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
        return f"{format_peer_id(self.peer) if self.peer else 'anonymous'} ({self.addr})"

    def may_read(self) -> bool:
        if not self.cfg.private:
            return True
        return self.peer is not None and (
            self.peer in self.cfg.allow_read or self.peer in self.cfg.allow_push)

    async def run(self):
        ch, cfg = self.ch, self.cfg
        hello = await ch.receive()
        if not isinstance(hello, P.Hello):
            raise P.ProtocolError("expected Hello")
        if hello.version != P.PROTOCOL_VERSION:
            await ch.send(P.Error(0, P.E_PROTOCOL, f"unsupported version {hello.version}"))
            return
        if cfg.resolve is not None:
            sub = await trio.to_thread.run_sync(cfg.resolve, hello.repo)
            if sub is None:
                await ch.send(P.Error(0, P.E_NOT_FOUND, f"no repository {hello.repo!r} on this server"))
                return
            self.cfg = cfg = sub
        lim = cfg.limits
        await ch.send(P.Welcome(P.PROTOCOL_VERSION, cfg.identity.peer_id, self.nonce,
                                lim.max_message, lim.max_wantlist, lim.max_inflight,
                                int(cfg.private)))
        async with _collapse_groups(), trio.open_nursery() as nursery:
            nursery.start_soon(self.worker)
            try:
                await self.reader()
            finally:
                nursery.cancel_scope.cancel()

    async def reader(self):
        ch, cfg = self.ch, self.cfg
        while True:
            msg = await ch.receive()
            if msg is None:
                await self.flush_pending()
                # drain outstanding work before ending
                while self.wants or self.requests:
                    await trio.sleep(0.001)
                return
            t = type(msg)
            if t is P.Block:
                await self.on_pushed_block(msg)
            elif t is P.WantList:
                self.on_wantlist(msg)
            elif t is P.DagRequest:
                if not self.may_read():
                    await ch.send(P.Error(msg.request_id, P.E_UNAUTHORIZED,
                                          self.private_refusal()))
                    continue
                if len(self.requests) >= cfg.limits.max_requests:
                    raise P.ProtocolError("too many outstanding requests")
                msg.arrival = self.seq
                self.requests.append(msg)
                self.work.set()
            elif t is P.Cancel:
                self.cancelled.add(msg.request_id)
            elif t is P.ListRefs:
                if not self.may_read():
                    await ch.send(P.Error(msg.request_id, P.E_UNAUTHORIZED,
                                          self.private_refusal()))
                    continue
                refs = {k: v for k, v in cfg.backend.refs().items() if k.startswith(msg.prefix)}
                await ch.send(P.Refs(msg.request_id, refs, cfg.backend.head()))
            elif t is P.Auth:
                await self.on_auth(msg)
            elif t is P.RefUpdate:
                await self.on_ref_update(msg)
            else:
                raise P.ProtocolError(f"unexpected message {t.__name__}")

    async def on_auth(self, msg: P.Auth):
        try:
            peer = verify_signature(msg.public_key,
                                    auth_message(self.cfg.identity.peer_id, self.nonce),
                                    msg.signature)
        except IdentityError as e:
            await self.ch.send(P.Error(0, P.E_UNAUTHORIZED, f"authentication failed: {e}"))
            raise P.ProtocolError(f"bad Auth: {e}") from None
        self.peer = peer
        self.can_push = peer in self.cfg.allow_push
        await self.ch.send(P.AuthOk(peer, self.can_push))

    def on_wantlist(self, msg: P.WantList):
        if msg.full:
            self.wants.clear()
        for e in msg.entries:
            if e.cancel:
                self.wants.pop(e.cid, None)
            else:
                e.arrival = self.seq
                self.wants[e.cid] = e
        if len(self.wants) > self.cfg.limits.max_wantlist:
            raise P.ProtocolError("want-list too long")
        self.work.set()

    async def on_pushed_block(self, msg: P.Block):
        from ..encoding.cid import verify_block
        from ..errors import CorruptBlock

        if not self.can_push:
            await self.ch.send(P.Error(0, P.E_UNAUTHORIZED, "push not allowed for this peer"))
            raise P.ProtocolError("unauthorised push")
        try:
            cid_codec(msg.cid)
            verify_block(msg.cid, msg.data)
        except (InvalidCID, CorruptBlock) as e:
            self.cfg.stats.bad_blocks_received += 1
            raise P.ProtocolError(f"pushed block rejected: {e}") from None
        self.cfg.stats.blocks_received += 1
        self.pending.append((msg.cid, msg.data))
        self.pending_bytes += len(msg.data)
        if self.pending_bytes >= min(self.cfg.limits.max_inflight, 32 << 20):
            await self.flush_pending()

    async def flush_pending(self):
        if self.pending:
            batch, self.pending, self.pending_bytes = self.pending, [], 0
            async with self.cfg.write_lock:
                await trio.to_thread.run_sync(self.cfg.backend.put_many, batch)

    async def on_ref_update(self, msg: P.RefUpdate):
        ch, cfg = self.ch, self.cfg
        if not self.can_push:
            who = format_peer_id(self.peer) if self.peer else "an unauthenticated peer"
            log.warning("refused push to %s from %s (%s): peer ID not in the allow-list",
                        msg.name, who, self.addr)
            await ch.send(P.RefResult(
                msg.request_id, False, cfg.backend.refs().get(msg.name),
                f"unauthorised: peer ID {who} may not push to this repository; ask its owner "
                + cfg.grant_hint.format(peer=who if self.peer else "PEERID", private="")))
            return
        await self.flush_pending()
        if msg.new is not None:
            complete = set(cfg.backend.refs().values())
            missing = await trio.to_thread.run_sync(
                lambda: missing_in_dag(cfg.backend, msg.new, complete, True, 1))
            if missing:
                await ch.send(P.RefResult(msg.request_id, False, cfg.backend.refs().get(msg.name),
                                          f"incomplete push: block {cid_str(missing[0])} missing"))
                return
        try:
            async with cfg.write_lock:
                cfg.backend.update_ref(msg.name, msg.new, msg.old)
        except RefConflict as e:
            log.warning("rejected push to %s from %s: stale base", msg.name, self.who())
            cur = cid_str(e.actual)[:16] if e.actual else "(none)"
            base = cid_str(msg.old)[:16] if msg.old else "(none)"
            await ch.send(P.RefResult(
                msg.request_id, False, e.actual,
                f"rejected: {msg.name} has moved (stale base: you expected {base}, it is at "
                f"{cur}); fetch and merge, then push again"))
            return
        except TvcfsError as e:
            await ch.send(P.RefResult(msg.request_id, False, None, f"rejected: {e}"))
            return
        log.info("push from %s: %s -> %s", self.who(), msg.name,
                 cid_str(msg.new) if msg.new else "(deleted)")
        await ch.send(P.RefResult(msg.request_id, True, msg.new, "ok"))

    async def send_block(self, cid: bytes, data) -> None:
        hook = self.cfg.corrupt_hook
        if hook is not None:
            data = hook(cid, data)
        if self.cfg.ledger is not None:
            await self.cfg.ledger.turn(self.peer or self.addr, len(data))
        if self.cfg.rate_limit is not None:
            await self.cfg.rate_limit.take(len(data))
        await self.ch.send_block(cid, data)  # header + data, no copy of the data
        self.seq += 1
        if len(self.sent_seq) < 65536:
            self.sent_seq[cid] = self.seq
        st = self.cfg.stats
        st.blocks_sent += 1
        st.bytes_sent += len(data)

    async def serve_wants(self, min_priority: int = -1) -> None:
        """Answer want-list entries, highest priority first, down to ``min_priority``."""
        backend = self.cfg.backend
        while self.wants:
            cid, e = max(self.wants.items(), key=lambda kv: kv[1].priority)
            if e.priority < min_priority:
                return
            del self.wants[cid]
            if not self.may_read():
                await self.ch.send(P.DontHave(cid))
                continue
            if not e.want_have and self.sent_seq.get(cid, -1) > getattr(e, "arrival", self.seq):
                continue  # sent since it was asked for (by a DAG answer): on its way
            if e.want_have:
                msg = P.Have(cid) if backend.has(cid) else P.DontHave(cid)
                await self.ch.send(msg)
                continue
            try:
                data = backend.get(cid)  # checked against its CID (the store's verified read)
            except CorruptBlock as err:
                log.error("not sending a damaged block: %s", err)
                data = None
            if data is None:
                if e.flags & P.SEND_DONT_HAVE:
                    await self.ch.send(P.DontHave(cid))
            else:
                await self.send_block(cid, data)

    async def worker(self):
        while True:
            if not self.wants and not self.requests:
                self.sent_seq.clear()
                self.work = trio.Event()
                await self.work.wait()
            # wants at or above the best request's priority first, the rest after it
            top = max((r.priority for r in self.requests), default=-1)
            await self.serve_wants(top)
            if self.requests:
                req = max(self.requests, key=lambda r: r.priority)
                try:
                    await self.serve_dag(req)
                finally:
                    self.requests.remove(req)

    async def serve_dag(self, req: P.DagRequest):
        nblocks = nbytes = 0
        status, message = P.DONE_OK, ""
        try:
            # one read transaction per answer: raw leaves go out as zero-copy views
            with read_view(self.cfg.backend) as backend:
                for cid, data in iter_selection(backend, req):
                    if req.request_id in self.cancelled:
                        status, message = P.DONE_ERROR, "cancelled"
                        break
                    if data is None:
                        await self.ch.send(P.DontHave(cid))
                        status = P.DONE_PARTIAL
                        continue
                    if self.sent_seq.get(cid, -1) > getattr(req, "arrival", self.seq):
                        continue  # sent since this request arrived (e.g. to a foreground want)
                    await self.send_block(cid, data)
                    nblocks += 1
                    nbytes += len(data)
                    # pre-emption: wants at or above this request's priority, and
                    # requests of a strictly higher priority, go before its next block
                    if self.wants:
                        await self.serve_wants(req.priority)
                    if len(self.requests) > 1:
                        higher = [r for r in self.requests if r.priority > req.priority]
                        if higher:
                            r2 = max(higher, key=lambda r: r.priority)
                            try:
                                await self.serve_dag(r2)
                            finally:
                                self.requests.remove(r2)
        except TvcfsError as e:
            if isinstance(e, CorruptBlock):
                log.error("DAG answer stopped at a damaged block: %s", e)
            status, message = P.DONE_ERROR, str(e)
        self.cancelled.discard(req.request_id)
        await self.ch.send(P.DagDone(req.request_id, status, nblocks, nbytes, message))


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

    Never raises for client misbehaviour: a :class:`~.protocol.ProtocolError` is
    answered with ``Error`` and the stream is closed; transport errors just end it.
    For QUIC streams the whole connection is closed on a protocol error.
    """
    ch = MessageChannel(stream, cfg.limits)
    cfg.stats.sessions += 1
    try:
        await _Session(ch, cfg, tls_peer).run()
    except P.ProtocolError as e:
        cfg.stats.protocol_errors += 1
        log.warning("closed session from %s: protocol error: %s", _peer_address(stream), e)
        with trio.move_on_after(1):
            try:
                await ch.send(P.Error(0, P.E_PROTOCOL, str(e)[:500]))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        conn = getattr(stream, "connection", None)
        if conn is not None and hasattr(conn, "close"):
            conn.close(0x1, "protocol error")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await ch.aclose()
