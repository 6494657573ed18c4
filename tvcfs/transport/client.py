"""TensorSwap client: sessions to a remote, fetch (verified, resumable) and push.

URLs: ``tvcfs://PEERID@HOST:PORT/REPO`` (QUIC, falling back to TLS-over-TCP on
the same port number when QUIC gets no answer within ``fallback_timeout``
seconds), ``tvcfs+quic://…`` (QUIC only), ``tvcfs+tcp://…`` (TCP only). ``PEERID``
(base58btc) pins the server; without it any server key is accepted and the
session's ``peer_id`` reports it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable
from urllib.parse import urlsplit

import trio

from ..encoding.cid import cid_codec, verify_block
from ..errors import CorruptBlock, InvalidCID, TvcfsError
from ..store.verify import verify_many
from . import protocol as P
from .backend import BlockBackend, is_leaf
from .channel import MessageChannel
from .identity import NodeIdentity, PeerIdMismatch, auth_message, parse_peer_id
from .quic import QuicSettings, TransportError, _collapse_groups, connect_quic
from .server import iter_selection, missing_in_dag
from .tcp import connect_tcp

__all__ = [
    "DEFAULT_PORT",
    "FetchStats",
    "PushRejected",
    "RemoteError",
    "RemoteSession",
    "RemoteURL",
    "open_session",
    "parse_url",
]

log = logging.getLogger(__name__)
DEFAULT_PORT = 4740


class RemoteError(TvcfsError):
    """The remote refused a request (unauthorised, rejected push, protocol error)."""


class PushRejected(RemoteError):
    """The remote refused a ref update; ``current`` is the remote ref's value."""

    def __init__(self, message: str, current: bytes | None = None):
        super().__init__(message)
        self.current = current


@dataclass
class RemoteURL:
    """A parsed remote address. ``transport``: "auto", "quic" or "tcp"."""

    transport: str
    host: str
    port: int
    peer_id: bytes | None
    repo: str = ""

    def __str__(self) -> str:
        from .identity import format_peer_id

        scheme = {"auto": "tvcfs", "quic": "tvcfs+quic", "tcp": "tvcfs+tcp"}[self.transport]
        who = format_peer_id(self.peer_id) + "@" if self.peer_id else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{who}{host}:{self.port}/{self.repo}"


def parse_url(url: str) -> RemoteURL:
    """Parse ``tvcfs[+quic|+tcp]://[PEERID@]HOST[:PORT][/REPO]``.

    Raises ``ValueError`` for another scheme or a malformed peer ID.
    """
    u = urlsplit(url)
    transports = {"tvcfs": "auto", "tvcfs+quic": "quic", "tvcfs+tcp": "tcp"}
    if u.scheme not in transports:
        raise ValueError(f"not a tvcfs URL (tvcfs://PEERID@HOST:PORT/REPO): {url}")
    peer = parse_peer_id(u.username) if u.username else None
    if not u.hostname:
        raise ValueError(f"no host in {url}")
    return RemoteURL(transports[u.scheme], u.hostname, u.port or DEFAULT_PORT, peer,
                     u.path.strip("/"))


@dataclass
class FetchStats:
    """Outcome of a fetch: ``blocks``/``nbytes`` stored (new, verified),
    ``bad_blocks`` (failed verification, dropped), ``bad_cids``, ``missing``
    (frontier CIDs still absent), ``seconds``, ``first_block_s`` (time to the
    first block of the first request, seconds)."""

    blocks: int = 0
    nbytes: int = 0
    wire_bytes: int = 0
    bad_blocks: int = 0
    bad_cids: list = field(default_factory=list)
    dont_have: int = 0
    missing: list = field(default_factory=list)
    seconds: float = 0.0
    first_block_s: float | None = None
    first_block_at: float | None = None  # time.perf_counter() at the first block
    transport: str = ""


ProgressFn = Callable[[int, int], None]  # (blocks, bytes) so far


class RemoteSession:
    """Client side of one session. Requests are issued one after another.

    ``peer_id``: the server's verified peer ID; ``welcome``: the server's
    :class:`~.protocol.Welcome`; ``can_push``: set after :meth:`authenticate`.
    """

    def __init__(self, ch: MessageChannel, transport_peer: bytes | None, transport: str):
        self.ch = ch
        self.peer_id = transport_peer
        self.transport = transport
        self.welcome: P.Welcome | None = None
        self.can_push = False
        self._rid = 0

    def _next_id(self) -> int:
        self._rid += 1
        return self._rid

    async def _recv(self) -> P.Message:
        msg = await self.ch.receive()
        if msg is None:
            raise RemoteError("remote closed the session")
        if isinstance(msg, P.Error) and msg.request_id == 0:
            raise RemoteError(f"remote error: {msg.message}")
        return msg

    async def start(self, identity: NodeIdentity | None = None, auth: str = "always",
                    repo: str = "") -> P.Welcome:
        """Send Hello, check the Welcome (its peer ID must equal the TLS-verified one),
        then authenticate with ``identity`` when given: ``auth="always"``, or
        ``"auto"`` = only when the server says reads are private. Raises
        :class:`RemoteError`."""
        await self.ch.send(P.Hello(P.PROTOCOL_VERSION, repo))
        w = await self._recv()
        if not isinstance(w, P.Welcome):
            raise RemoteError(f"unexpected {type(w).__name__} instead of Welcome")
        if self.peer_id is not None and w.peer_id != self.peer_id:
            raise PeerIdMismatch(self.peer_id, w.peer_id)
        self.peer_id = w.peer_id
        self.welcome = w
        if identity is not None and (auth == "always" or (w.flags & 1)):
            if callable(identity):  # created on demand (a fresh clone needs no key)
                identity = identity()
            await self.authenticate(identity)
        return w

    async def authenticate(self, identity: NodeIdentity) -> bool:
        """Prove ``identity`` to the server (signed nonce); returns whether it may push."""
        msg = auth_message(self.welcome.peer_id, self.welcome.nonce)
        await self.ch.send(P.Auth(identity.public_key_proto, identity.sign(msg)))
        r = await self._recv()
        if not isinstance(r, P.AuthOk):
            raise RemoteError(f"authentication failed: {getattr(r, 'message', r)}")
        self.can_push = r.can_push
        return r.can_push

    async def list_refs(self, prefix: str = "") -> tuple[dict[str, bytes], str]:
        """``({full ref name: CID}, head ref name)`` of the remote."""
        rid = self._next_id()
        await self.ch.send(P.ListRefs(rid, prefix))
        r = await self._recv()
        if isinstance(r, P.Error):
            raise RemoteError(r.message)
        if not isinstance(r, P.Refs) or r.request_id != rid:
            raise RemoteError(f"unexpected {type(r).__name__}")
        return r.refs, r.head

    async def fetch(self, backend: BlockBackend, roots: list[bytes], *,
                    complete: set[bytes] = frozenset(), history: bool = True,
                    progress: ProgressFn | None = None, max_rounds: int = 2,
                    stop_on_bad: bool = False) -> FetchStats:
        """Fetch every block under ``roots`` that ``backend`` lacks and store it.

        Resumable, and every block crosses the wire at most once per fetch: each
        round walks what is already stored from all ``roots`` together and asks
        for the missing frontier in multi-root whole-DAG requests (the server
        walks the roots of one request with one visited set, so blocks that
        several refs share are sent once; ``have_roots`` = ``complete``, commits
        known to be fully stored, prunes what the server can infer). A server
        cannot know which blocks the client holds under a node the client lacks
        (an interrupted fetch, refs sharing most of their blocks), so unless
        ``backend`` holds no block at all (a fresh clone: nothing to skip), the
        missing interior nodes come first (``skeleton`` selector: commits,
        directories, file interior nodes, no raw leaves), and then exactly the
        missing leaves. Every block is hashed against its CID (in a worker
        thread) before ``put_many``; bad blocks are dropped and listed in
        ``bad_cids``; with ``stop_on_bad`` they are not asked of this peer again
        (the caller asks another remote). Returns :class:`FetchStats`;
        ``missing`` is non-empty when this remote could not supply everything.
        """
        st = FetchStats(transport=self.transport)
        t0 = time.perf_counter()
        wire0 = self.ch.bytes_in
        complete = set(complete)
        roots = list(dict.fromkeys(roots))
        window = min(64, P.DEFAULT_LIMITS.max_requests)

        async def frontier_of():
            return await trio.to_thread.run_sync(missing_in_dag, backend, roots, complete,
                                                 history)

        try:
            for _round in range(max_rounds):
                frontier = await frontier_of()
                if not frontier:
                    break
                before, bad_before = st.blocks, st.bad_blocks
                interior = [c for c in frontier if not is_leaf(c)]
                if interior and not await trio.to_thread.run_sync(_is_empty, backend):
                    # the shape first (small), so that the leaves asked next are
                    # exactly the missing ones
                    await self._fetch_frontier(backend, interior, complete, history, st, t0,
                                               progress, window, skeleton=True)
                    if stop_on_bad and st.bad_blocks > bad_before:
                        break
                    frontier = await frontier_of()
                    if not frontier:
                        break
                clean = await self._fetch_frontier(backend, frontier, complete, history, st,
                                                   t0, progress, window)
                if clean:
                    # every answer complete, every block verified and stored: the
                    # DAGs are whole without walking them again
                    st.missing = []
                    return st
                if st.blocks == before or (stop_on_bad and st.bad_blocks > bad_before):
                    break
        finally:
            st.seconds = time.perf_counter() - t0
            st.wire_bytes = self.ch.bytes_in - wire0
            sync = getattr(backend, "sync", None)
            if sync is not None and st.blocks:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(sync)
        st.missing = await trio.to_thread.run_sync(missing_in_dag, backend, roots, complete,
                                                   history, 1000)
        return st

    async def _fetch_frontier(self, backend, frontier, complete, history, st, t0, progress,
                              window, skeleton=False):
        # pipeline: this task receives and frames blocks (each as the chunks it
        # arrived in, no copy); _WORKERS threads each take a batch, join its blocks
        # (one copy), hash them against their CIDs and store the good ones with
        # put_many (hashlib, bytes.join of bytes and LMDB release the GIL; no
        # msync: one sync at the end of the fetch)
        batch_send, batch_recv = trio.open_memory_channel(2)
        have_roots = [c for c in complete if _is_commit(c)][:1000]

        def verify_and_store(batch):
            good, nbytes, bad = _verify(batch)
            if good:
                backend.put_many(good)
            return len(good), nbytes, bad

        async def worker(recv):
            async with recv:
                async for batch in recv:
                    n, nbytes, bad = await trio.to_thread.run_sync(verify_and_store, batch)
                    st.bad_blocks += len(bad)
                    st.bad_cids += bad
                    st.blocks += n
                    st.nbytes += nbytes
                    if progress and n:
                        progress(st.blocks, st.nbytes)

        error: Exception | None = None
        zc = self.ch.zero_copy
        self.ch.zero_copy = True
        try:
            async with _collapse_groups(), trio.open_nursery() as nursery:
                for _ in range(_WORKERS):
                    nursery.start_soon(worker, batch_recv.clone())
                await batch_recv.aclose()
                async with batch_send:
                    pending: dict[int, list] = {}
                    # several roots per request: one answer sends a block they share once
                    queue = [frontier[i:i + _ROOTS_PER_REQUEST]
                             for i in range(0, len(frontier), _ROOTS_PER_REQUEST)]
                    sel = P.Selector(P.SEL_ALL, history=history, skeleton=skeleton)
                    # leaves are asked exactly: no pruning to compute for them
                    hr = have_roots if any(not is_leaf(c) for c in frontier) else []
                    bad_before, dont_have_before = st.bad_blocks, st.dont_have
                    all_ok = True
                    batch: list = []
                    batch_bytes = 0
                    try:
                        while queue or pending:
                            reqs = []
                            while queue and len(pending) < window:
                                rid = self._next_id()
                                group = queue.pop(0)
                                pending[rid] = group
                                reqs.append(P.DagRequest(rid, group[0], sel, [], hr,
                                                         more_roots=group[1:]))
                            if reqs:
                                await self.ch.send_many(reqs)
                            msg = await self._recv()
                            t = type(msg)
                            if t is P.Block:
                                if st.first_block_s is None:
                                    st.first_block_at = time.perf_counter()
                                    st.first_block_s = st.first_block_at - t0
                                batch.append((msg.cid, msg.data))
                                batch_bytes += len(msg.data)
                                if batch_bytes >= _BATCH_BYTES or len(batch) >= 512:
                                    await batch_send.send(batch)
                                    batch, batch_bytes = [], 0
                            elif t is P.DontHave:
                                st.dont_have += 1
                            elif t is P.DagDone:
                                pending.pop(msg.request_id, None)
                                if msg.status != P.DONE_OK:
                                    all_ok = False
                            elif t is P.Error:
                                pending.pop(msg.request_id, None)
                                raise RemoteError(f"remote refused request: {msg.message}")
                            else:
                                raise RemoteError(f"unexpected {t.__name__} during fetch")
                    except Exception as e:  # noqa: BLE001 - keep what arrived, then re-raise
                        error = e
                    if batch:
                        # on success and on interruption alike: what arrived is verified and kept
                        await batch_send.send(batch)
        finally:
            self.ch.zero_copy = zc
        if error is not None:
            raise error
        return (all_ok and st.bad_blocks == bad_before and st.dont_have == dont_have_before)

    async def want(self, cids: list[bytes], priority: int = 1) -> dict[bytes, bytes]:
        """Bitswap-style: ask for blocks by CID; returns ``{cid: verified data}`` for
        those the server had (others are absent from the result)."""
        out: dict[bytes, bytes] = {}
        lim = self.welcome.max_wantlist if self.welcome else 1024
        for i in range(0, len(cids), lim):
            chunk = cids[i : i + lim]
            await self.ch.send(P.WantList([P.WantEntry(c, priority) for c in chunk]))
            waiting = set(chunk)
            while waiting:
                msg = await self._recv()
                if isinstance(msg, P.Block) and msg.cid in waiting:
                    waiting.discard(msg.cid)
                    try:
                        verify_block(msg.cid, msg.data)
                        out[msg.cid] = msg.data
                    except CorruptBlock:
                        pass
                elif isinstance(msg, P.DontHave):
                    waiting.discard(msg.cid)
        return out

    async def has_many(self, cids: list[bytes]) -> set[bytes]:
        """Which of ``cids`` the remote holds (want-have entries)."""
        found: set[bytes] = set()
        lim = self.welcome.max_wantlist if self.welcome else 1024
        for i in range(0, len(cids), lim):
            chunk = cids[i : i + lim]
            await self.ch.send(P.WantList([P.WantEntry(c, 1, P.WANT_HAVE | P.SEND_DONT_HAVE)
                                           for c in chunk]))
            waiting = set(chunk)
            while waiting:
                msg = await self._recv()
                if isinstance(msg, (P.Have, P.DontHave)):
                    waiting.discard(msg.cid)
                    if isinstance(msg, P.Have):
                        found.add(msg.cid)
                elif isinstance(msg, P.Error):
                    raise RemoteError(msg.message)
        return found

    async def push(self, backend: BlockBackend, ref: str, new: bytes, *,
                   expected_old: bytes | None, remote_complete: set[bytes] = frozenset(),
                   progress: ProgressFn | None = None) -> tuple[int, int]:
        """Send the blocks of ``new`` the remote lacks, then compare-and-swap ``ref``
        from ``expected_old`` to ``new``. ``remote_complete``: commits the remote
        holds completely (its ref values that we also have). Returns
        ``(blocks sent, bytes sent)``. Raises :class:`RemoteError` with the
        server's reason when the update is refused (stale base, unauthorised).
        """
        if not self.can_push:
            # no blocks: ask for the ref update only, so the server refuses (and logs) it
            rid = self._next_id()
            await self.ch.send(P.RefUpdate(rid, ref, expected_old, new))
            reason = "unauthorised: this peer ID may not push"
            while True:
                r = await self._recv()
                if isinstance(r, P.RefResult) and r.request_id == rid:
                    reason = r.message or reason
                    break
                if isinstance(r, P.Error):
                    reason = r.message
                    break
            raise PushRejected(f"push refused by the remote: {reason}")
        have_roots = [c for c in remote_complete if backend.has(c)]
        req = P.DagRequest(0, new, P.Selector(P.SEL_ALL, history=True), [], have_roots)
        cands = await trio.to_thread.run_sync(
            lambda: [c for c, d in iter_selection(backend, req) if d is not None])
        present = await self.has_many(cands) if cands else set()
        nb = nbytes = 0
        for c in cands:
            if c in present:
                continue
            data = backend.get(c)
            await self.ch.send(P.Block(c, data))
            nb += 1
            nbytes += len(data)
            if progress:
                progress(nb, nbytes)
        rid = self._next_id()
        await self.ch.send(P.RefUpdate(rid, ref, expected_old, new))
        while True:
            r = await self._recv()
            if isinstance(r, P.RefResult) and r.request_id == rid:
                break
            if isinstance(r, P.Error):
                raise RemoteError(r.message)
        if not r.ok:
            raise PushRejected(f"push to {ref} refused: {r.message}", current=r.current)
        return nb, nbytes

    async def aclose(self) -> None:
        await self.ch.aclose()


def _is_empty(backend) -> bool:
    """Whether ``backend`` holds no block at all (``False`` when it cannot tell)."""
    count = getattr(backend, "block_count", None)
    return count is not None and count() == 0


def _is_commit(c: bytes) -> bool:
    try:
        return cid_codec(c) == 0x71
    except InvalidCID:
        return False


_WORKERS = 2  # verify+store threads: measured faster than 1 or 3 on 2 cores
_CODECS = (0x55, 0x70, 0x71)  # raw, dag-pb, dag-cbor (one-byte varints)
_BATCH_BYTES = 4 << 20
_ROOTS_PER_REQUEST = 4096  # ~150 KB of CIDs per DagRequest (limit: Limits.max_list)


def _verify(batch):
    """``(good [(cid, data)], good bytes, bad [cid])`` of a batch (run in a thread)."""
    # the one copy of a received block (its received chunks joined), off the event loop
    good, bad = verify_many([(cid, data.tobytes() if type(data) is P.BlockParts else data)
                             for cid, data in batch])
    return good, sum(len(d) for _, d in good), bad


@asynccontextmanager
async def open_session(
    url: RemoteURL | str,
    *,
    identity: NodeIdentity | None = None,
    settings: QuicSettings | None = None,
    engine: str | None = None,
    fallback_timeout: float = 1.5,
    auth: str = "always",
) -> AsyncIterator[RemoteSession]:
    """Connect to ``url`` and yield a started :class:`RemoteSession`.

    ``identity`` (optional) authenticates (``auth="always"``, or ``"auto"``: only
    when the server is private). Transport "auto" tries QUIC
    for ``fallback_timeout`` seconds, then TLS-over-TCP. Raises
    :class:`~.quic.TransportError`, :class:`~.identity.PeerIdMismatch`,
    :class:`RemoteError`.
    """
    if isinstance(url, str):
        url = parse_url(url)
    settings = settings or QuicSettings()
    async with AsyncExitStack() as stack:
        sess = None
        if url.transport in ("auto", "quic"):
            s = settings
            if url.transport == "auto":
                s = dataclasses.replace(
                    settings, connect_timeout=min(settings.connect_timeout, fallback_timeout))
            try:
                conn = await stack.enter_async_context(
                    connect_quic(url.host, url.port, expected_peer_id=url.peer_id,
                                 settings=s, engine=engine))
            except TransportError:
                if url.transport == "quic":
                    raise
                log.info("QUIC to %s:%s got no answer; falling back to TLS over TCP",
                         url.host, url.port)
            else:
                stream = await conn.open_stream()
                sess = RemoteSession(MessageChannel(stream), conn.peer_id, f"quic/{conn.engine}")
        if sess is None:
            stream = await stack.enter_async_context(
                connect_tcp(url.host, url.port, expected_peer_id=url.peer_id,
                            connect_timeout=settings.connect_timeout))
            sess = RemoteSession(MessageChannel(stream), stream.peer_id, "tcp")
        await sess.start(identity, auth=auth, repo=url.repo)
        yield sess
        await sess.aclose()
