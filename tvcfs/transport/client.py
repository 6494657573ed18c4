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
from dataclasses import dataclass
from typing import AsyncIterator, Callable
from urllib.parse import urlsplit

import trio

from ..encoding.cid import cid_codec, verify_block
from ..errors import CorruptBlock, InvalidCID, TvcfsError
from ..names import printable_name
from ..store.verify import verify_many
from . import protocol
from .base import BlockBackend, FetchStats, is_leaf, links_of
from .channel import MessageChannel
from .identity import NodeIdentity, parse_peer_id
from .quic import CLIENT_TICKETS, QuicSettings, TransportError, _collapse_groups, connect_quic
from .selection import iter_selection, missing_in_dag, thin_plan
from .session import ClientSession, PushRejected, RemoteError, UnaskedBlocks, decode_thin, thin_value
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

_SILENT = object()  # RemoteSession._recv: nothing came in time

log = logging.getLogger(__name__)
DEFAULT_PORT = 4740


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


ProgressFn = Callable[[int, int], None]  # (blocks, bytes) so far


class RemoteSession:
    """Client side of one session: the I/O around a :class:`~.session.ClientSession`.

    ``ch``: the :class:`~.channel.MessageChannel` on the session's stream (it
    decodes with the protocol session's decoder); ``proto``: the
    :class:`~.session.ClientSession` holding the conversation's state; ``peer_id``:
    the server's verified peer ID; ``welcome``: the server's
    :class:`~.protocol.Welcome`; ``can_push``: set after :meth:`authenticate`;
    ``answer_timeout``: seconds a wait for the peer's next message may take before
    :class:`RemoteError` (``QuicSettings.answer_timeout``); ``where``: the peer's
    ``HOST:PORT`` (for messages).
    Requests are issued one after another (:class:`~.wants.MuxSession` runs many
    at once on the same classes).
    """

    def __init__(self, ch: MessageChannel, transport_peer: bytes | None, transport: str,
                 proto: ClientSession | None = None):
        self.proto = proto or ClientSession(transport_peer, ch.limits)
        if transport_peer is not None:
            self.proto.peer_id = transport_peer
        ch.use_decoder(self.proto.decoder)
        self.ch = ch
        self.transport = transport
        self.resumed = False  # QUIC: the handshake resumed a session (ticket)
        self.early_data = False  # QUIC: the first requests went out as 0-RTT
        self._early_refs: tuple = (None, None)  # (request id, prefix) sent with Hello
        self._early_answer: protocol.Message | None = None
        self.answer_timeout = QuicSettings().answer_timeout  # seconds; open_session sets its settings
        self.where = "the remote"

    @property
    def peer_id(self) -> bytes | None:
        """The server's verified peer ID (bytes), or ``None`` before authentication."""
        return self.proto.peer_id

    @property
    def welcome(self) -> protocol.Welcome | None:
        """The server's ``Welcome`` (its version and limits), or ``None`` before it arrived."""
        return self.proto.welcome

    @property
    def can_push(self) -> bool:
        """Whether the server granted this client push (``AuthOk``)."""
        return self.proto.can_push

    async def flush(self) -> None:
        """Send what the protocol session has queued."""
        parts = self.proto.data_to_send()
        if parts:
            await self.ch.send_parts(parts)

    async def _recv(self, keep_early: bool = True) -> protocol.Message:
        """The next checked message; the answer to the refs asked with ``Hello``
        is put aside for :meth:`list_refs` (unless ``keep_early`` is False)."""
        while True:
            msg = _SILENT
            with trio.move_on_after(self.answer_timeout):
                msg = await self.ch.receive()
            if msg is _SILENT:  # the session is unusable now: the caller ends it
                raise RemoteError(f"{self.where} sent nothing for {self.answer_timeout:g} s (it "
                                  "stalled): run the command again to resume, or ask another "
                                  "remote (TVCFS_ANSWER_TIMEOUT sets the wait)")
            if msg is None:
                raise RemoteError("remote closed the session")
            msg = self.proto.handle_message(msg)
            rid = self._early_refs[0]
            if (keep_early and rid is not None and type(msg) in (protocol.Refs, protocol.Error)
                    and msg.request_id == rid):
                self._early_answer = msg
                self._early_refs = (None, self._early_refs[1])
                continue
            return msg

    async def start(self, identity: NodeIdentity | None = None, auth: str = "always",
                    repo: str = "") -> protocol.Welcome:
        """Send Hello, check the Welcome (its peer ID must equal the TLS-verified one),
        then authenticate with ``identity`` when given: ``auth="always"``, or
        ``"auto"`` = only when the server says reads are private. Raises
        :class:`RemoteError`, :class:`~.identity.PeerIdMismatch`."""
        if not self.proto.hello_sent:
            self.proto.hello(repo)
            await self.flush()
        w = await self._recv()
        if not isinstance(w, protocol.Welcome):
            raise RemoteError(f"unexpected {type(w).__name__} instead of Welcome")
        if identity is not None and (auth == "always" or (w.flags & 1)):
            if callable(identity):  # created on demand (a fresh clone needs no key)
                identity = identity()
            await self.authenticate(identity)
        return w

    async def authenticate(self, identity: NodeIdentity) -> bool:
        """Prove ``identity`` to the server (signed nonce); returns whether it may push."""
        self.proto.authenticate(identity)
        await self.flush()
        r = await self._recv()
        if not isinstance(r, protocol.AuthOk):
            raise RemoteError(f"authentication failed: {getattr(r, 'message', r)}")
        return r.can_push

    async def list_refs(self, prefix: str = "") -> tuple[dict[str, bytes], str]:
        """``({full ref name: CID}, head ref name)`` of the remote."""
        early_rid, early_prefix = self._early_refs
        if early_prefix == prefix and (early_rid is not None or self._early_answer is not None):
            self._early_refs = (None, None)
            r = self._early_answer
            self._early_answer = None
            while r is None:  # asked with Hello: its answer is on its way
                r = await self._recv(keep_early=False)
                if type(r) not in (protocol.Refs, protocol.Error) or r.request_id != early_rid:
                    raise RemoteError(f"unexpected {type(r).__name__}")
            if not (type(r) is protocol.Error and r.code == protocol.E_UNAUTHORIZED):
                if type(r) is protocol.Error:
                    raise RemoteError(r.message)
                return r.refs, r.head
            # refused before authenticating: ask again (authenticated by now, or refused)
        rid = self.proto.list_refs(prefix)
        await self.flush()
        r = await self._recv()
        if isinstance(r, protocol.Error):
            raise RemoteError(r.message)
        if not isinstance(r, protocol.Refs) or r.request_id != rid:
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
        ``missing`` is non-empty when this remote could not supply everything: it
        comes from a walk of what is stored, never from the server's word that its
        answers were complete (a hostile peer may end an answer "ok" having sent
        blocks of no DAG that was asked for).
        """
        st = FetchStats(transport=self.transport, resumed=self.resumed,
                        early_data=self.early_data)
        t0 = time.perf_counter()
        wire0 = self.ch.bytes_in
        complete = set(complete)
        roots = list(dict.fromkeys(roots))
        wanted = _Wanted(history)

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
                                               progress, wanted, skeleton=True)
                    if stop_on_bad and st.bad_blocks > bad_before:
                        break
                    frontier = await frontier_of()
                    if not frontier:
                        break
                clean = await self._fetch_frontier(backend, frontier, complete, history, st,
                                                   t0, progress, wanted)
                if clean:
                    # every answer said complete and every block verified; but a peer
                    # can say so having sent other blocks than the DAG's: the walk
                    # below is what proves the DAGs whole
                    break
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
                              wanted, skeleton=False) -> bool:
        """Ask for ``frontier`` in pipelined multi-root requests and store what comes
        (blocks ``wanted``, a :class:`_Wanted`, allows; the others are dropped);
        True when every answer was complete and every block good."""
        wanted.cids.update(frontier)
        have_roots = [c for c in complete if _is_commit(c)][:1000]
        # several roots per request: one answer sends a block they share once
        groups = [frontier[i:i + _ROOTS_PER_REQUEST]
                  for i in range(0, len(frontier), _ROOTS_PER_REQUEST)]
        # thin: leaves may come as deltas against blocks of the commits we hold
        thin = self.proto.thin and not skeleton
        sel = protocol.Selector(protocol.SEL_ALL, history=history, skeleton=skeleton, thin=thin,
                                planes=thin and self.proto.planes)
        # leaves are asked exactly: no pruning to compute for them (but a thin
        # answer needs the have-roots to know which bases we hold)
        hr = have_roots if thin or any(not is_leaf(c) for c in frontier) else []
        bad_before, dont_have_before = st.bad_blocks, st.dont_have
        async with _storing(backend, st, progress) as store:
            answers = await self._receive_answers(groups, sel, hr, st, t0, store, wanted)
        return answers and st.bad_blocks == bad_before and st.dont_have == dont_have_before

    async def _receive_answers(self, groups, sel, have_roots, st, t0, store, wanted) -> bool:
        """Send the requests for ``groups`` (at most ``_WINDOW`` outstanding) and
        hand every block ``wanted`` accepts to ``store`` (the others are counted in
        ``st.stray_blocks`` and dropped; more than :data:`STRAY_LIMIT` raise
        :class:`RemoteError`); True when every ``DagDone`` said ok.
        What arrived before an error is stored; the error is re-raised."""
        proto, ch = self.proto, self.ch
        zero_copy = ch.zero_copy
        ch.zero_copy = True  # blocks are joined by the storing threads, off the event loop
        pending = proto.requests
        queue = list(reversed(groups))
        all_ok = True
        try:
            while queue or pending:
                if queue and len(pending) < _WINDOW:
                    while queue and len(pending) < _WINDOW:
                        proto.request_dag(queue.pop(), sel, have_roots=have_roots)
                    await self.flush()
                msg = await self._recv()
                t = type(msg)
                if t is protocol.Block or t is protocol.DeltaBlock:
                    if st.first_block_s is None:
                        st.first_block_at = time.perf_counter()
                        st.first_block_s = st.first_block_at - t0
                    if t is protocol.Block and wanted.accept(msg.cid, msg.data):
                        await store.add(msg.cid, msg.data)
                    elif t is protocol.DeltaBlock and wanted.accept(msg.cid, None):
                        await store.add(msg.cid, _Thin(msg.value))
                    else:
                        st.stray_blocks += 1
                        if st.stray_blocks > STRAY_LIMIT:
                            raise UnaskedBlocks(
                                f"{self.where} sent more than {STRAY_LIMIT} blocks of no DAG that "
                                "was asked for (none of them was kept): fetch from another remote")
                elif t is protocol.DontHave:
                    st.dont_have += 1
                elif t is protocol.DagDone:
                    if msg.status != protocol.DONE_OK:
                        all_ok = False
                elif t is protocol.Error:
                    raise RemoteError(f"remote refused request: {msg.message}")
                else:
                    raise RemoteError(f"unexpected {t.__name__} during fetch")
        finally:
            ch.zero_copy = zero_copy
        return all_ok

    async def want(self, cids: list[bytes], priority: int = 1) -> dict[bytes, bytes]:
        """Bitswap-style: ask for blocks by CID; returns ``{cid: verified data}`` for
        those the server had (others are absent from the result)."""
        out: dict[bytes, bytes] = {}
        proto = self.proto
        lim = proto.max_wantlist
        for i in range(0, len(cids), lim):
            chunk = cids[i:i + lim]
            proto.want(chunk, priority)
            await self.flush()
            waiting = set(chunk)
            while waiting:
                msg = await self._recv()
                t = type(msg)
                if t is protocol.Block and msg.cid in waiting:
                    waiting.discard(msg.cid)
                    try:
                        verify_block(msg.cid, msg.data)
                        out[msg.cid] = msg.data
                    except CorruptBlock:
                        pass
                elif t is protocol.DontHave:
                    waiting.discard(msg.cid)
                elif t is protocol.Error:
                    raise RemoteError(msg.message)
        return out

    async def has_many(self, cids: list[bytes]) -> set[bytes]:
        """Which of ``cids`` the remote holds (want-have entries)."""
        found: set[bytes] = set()
        proto = self.proto
        lim = proto.max_wantlist
        for i in range(0, len(cids), lim):
            chunk = cids[i:i + lim]
            proto.want(chunk, 1, protocol.WANT_HAVE | protocol.SEND_DONT_HAVE)
            await self.flush()
            waiting = set(chunk)
            while waiting:
                msg = await self._recv()
                t = type(msg)
                if t is protocol.Have or t is protocol.DontHave:
                    waiting.discard(msg.cid)
                    if t is protocol.Have:
                        found.add(msg.cid)
                elif t is protocol.Error:
                    raise RemoteError(msg.message)
        return found

    async def _ref_result(self, rid: int) -> protocol.RefResult:
        while True:
            r = await self._recv()
            if type(r) is protocol.RefResult and r.request_id == rid:
                return r
            if type(r) is protocol.Error:
                raise RemoteError(r.message)

    async def push(self, backend: BlockBackend, ref: str, new: bytes, *,
                   expected_old: bytes | None, remote_complete: set[bytes] = frozenset(),
                   progress: ProgressFn | None = None) -> tuple[int, int]:
        """Send the blocks of ``new`` the remote lacks, then compare-and-swap ``ref``
        from ``expected_old`` to ``new``. ``remote_complete``: commits the remote
        holds completely (its ref values that we also have). To a server that
        offers thin transfers, tensor leaves go as ``DeltaBlock`` against the same
        tensor in the pushed commit's named delta base or parent when the remote
        holds that block (:func:`~.selection.thin_plan`). Returns ``(blocks sent,
        bytes sent)`` (bytes on the wire: encoded values as sent). Raises :class:`RemoteError` with the
        server's reason when the update is refused (stale base, unauthorised).
        """
        proto = self.proto
        if not self.can_push:
            # no blocks: ask for the ref update only, so the server refuses (and logs) it
            rid = proto.update_ref(ref, expected_old, new)
            await self.flush()
            try:
                r = await self._ref_result(rid)
                reason = r.message or "unauthorised: this peer ID may not push"
            except RemoteError as e:
                reason = str(e)
            raise PushRejected(f"push refused by the remote: {reason}")
        have_roots = [c for c in remote_complete if backend.has(c)]
        req = protocol.DagRequest(0, new, protocol.Selector(protocol.SEL_ALL, history=True), [], have_roots)
        cands = await trio.to_thread.run_sync(
            lambda: [c for c, d in iter_selection(backend, req) if d is not None])
        present = await self.has_many(cands) if cands else set()
        plan = {}
        if proto.thin and have_roots:  # leaves as deltas against blocks the remote holds
            plan = await trio.to_thread.run_sync(thin_plan, backend, [new], have_roots)
        nb = nbytes = 0
        for c in cands:
            if c in present:
                continue
            data = backend.get(c)
            value = None
            if c in plan:
                elem, base = plan[c]
                value = await trio.to_thread.run_sync(thin_value, data, elem, base, backend.get(base),
                                                      2 if proto.planes else 1)
            proto.push_block(c, data if value is None else value, delta=value is not None)
            await self.flush()
            nb += 1
            nbytes += len(data if value is None else value)
            if progress:
                progress(nb, nbytes)
        rid = proto.update_ref(ref, expected_old, new)
        await self.flush()
        r = await self._ref_result(rid)
        if not r.ok:
            # the ref (a local name) and the server's words, escaped: one line, no terminal codes
            raise PushRejected(printable_name(f"push to {ref} refused: {r.message}"), current=r.current)
        return nb, nbytes

    async def aclose(self) -> None:
        """Close the session's message channel."""
        await self.ch.aclose()


STRAY_LIMIT = 64  # blocks of no asked DAG a fetch drops before it gives up on the remote


class _Wanted:
    """The CIDs one fetch may store: those it asked for and the links of every
    interior block it accepted. A DAG answer comes in depth-first pre-order, parents
    before children (docs/protocol.md, "DAG requests"; a block the server skips as
    sent already still had its parent sent, so it is here too), so any other block is
    of no DAG that was asked for: a stray, not stored. ``history``: a commit's parents
    are wanted (the selector's flag). An interior block is hashed against its CID
    here (small: commits, directories, file nodes) before its links are trusted; a
    raw leaf has none and is hashed by the store's workers."""

    def __init__(self, history: bool):
        self.history = history
        self.cids: set[bytes] = set()

    def accept(self, cid: bytes, data) -> bool:
        """Whether block ``cid`` (``data``: bytes-like or :class:`protocol.BlockParts`;
        ``None`` for a thin leaf) is wanted; if it is an interior block whose bytes
        hash to ``cid``, its links become wanted. A bad interior block is accepted
        (the store's workers count it bad) but its links are not."""
        if cid not in self.cids:
            return False
        if data is not None and not is_leaf(cid):
            raw = data.tobytes() if type(data) is protocol.BlockParts else data
            try:
                verify_block(cid, raw)
                self.cids.update(links_of(cid, raw, self.history))
            except TvcfsError:  # CorruptBlock, MalformedObject, InvalidCID
                pass
        return True


class _Thin:
    """A received ``DeltaBlock`` value waiting for :class:`_Store` to decode it."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __len__(self) -> int:
        return len(self.value)


class _Store:
    """The receiving end of a fetch: blocks (each as the chunks it arrived in) are
    collected into batches of ``_BATCH_BYTES``; ``_WORKERS`` threads each take a
    batch, join its blocks (one copy), hash them against their CIDs and store
    the good ones with ``put_many`` (hashlib, ``bytes.join`` of ``bytes`` and LMDB
    release the GIL; no msync: one sync at the end of the fetch). Leaving the
    ``async with`` hands over the last batch and waits for the threads, also
    when the transfer failed: what arrived is verified and kept."""

    def __init__(self, backend, st: FetchStats, progress):
        self.backend = backend
        self.stats = st
        self.progress = progress
        self.batch: list = []
        self.batch_bytes = 0

    def _verify_and_store(self, batch):
        if any(type(d) is _Thin for _, d in batch):
            batch = [(c, self._decode(c, d.value) if type(d) is _Thin else d) for c, d in batch]
        good, nbytes, bad = _verify([(c, d) for c, d in batch if d is not None])
        bad += [c for c, d in batch if d is None]
        if good:
            self.backend.put_many(good)
        return len(good), nbytes, bad

    def _decode(self, cid: bytes, value) -> bytes | None:
        """A thin block's bytes, decoded against its base from our store (``None``,
        counted bad, when it does not decode or its base is not here)."""
        try:
            return decode_thin(cid, value, self.backend.get)
        except CorruptBlock as e:
            log.warning("dropping a thin block: %s", e)
            return None

    async def _worker(self, recv) -> None:
        st = self.stats
        async with recv:
            async for batch in recv:
                n, nbytes, bad = await trio.to_thread.run_sync(self._verify_and_store, batch)
                st.bad_blocks += len(bad)
                st.bad_cids += bad
                st.blocks += n
                st.nbytes += nbytes
                if self.progress and n:
                    self.progress(st.blocks, st.nbytes)

    async def add(self, cid: bytes, data) -> None:
        batch = self.batch
        batch.append((cid, data))
        self.batch_bytes += len(data)
        if self.batch_bytes >= _BATCH_BYTES or len(batch) >= 512:
            self.batch, self.batch_bytes = [], 0
            await self.send.send(batch)


@asynccontextmanager
async def _storing(backend, st: FetchStats, progress) -> AsyncIterator[_Store]:
    """A :class:`_Store` with its threads running (see there)."""
    store = _Store(backend, st, progress)
    error: Exception | None = None
    async with _collapse_groups(), trio.open_nursery() as nursery:
        store.send, recv = trio.open_memory_channel(2)
        for _ in range(_WORKERS):
            nursery.start_soon(store._worker, recv.clone())
        await recv.aclose()
        async with store.send:
            try:
                yield store
            except Exception as e:  # noqa: BLE001 - keep what arrived, then re-raise
                error = e
            if store.batch:
                await store.send.send(store.batch)
    if error is not None:
        raise error


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
_WINDOW = min(64, protocol.DEFAULT_LIMITS.max_requests)  # DAG requests outstanding in a fetch


def _verify(batch):
    """``(good [(cid, data)], good bytes, bad [cid])`` of a batch (run in a thread)."""
    # the one copy of a received block (its received chunks joined), off the event loop
    good, bad = verify_many([(cid, data.tobytes() if type(data) is protocol.BlockParts else data)
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
    refs_prefix: str | None = None,
    tickets=CLIENT_TICKETS,
) -> AsyncIterator[RemoteSession]:
    """Connect to ``url`` and yield a started :class:`RemoteSession`.

    ``identity`` (optional) authenticates (``auth="always"``, or ``"auto"``: only
    when the server is private). Transport "auto" tries QUIC
    for ``fallback_timeout`` seconds, then TLS-over-TCP. ``refs_prefix``: also
    ask for the remote's refs under that prefix in the first flight, behind
    ``Hello`` (:meth:`RemoteSession.list_refs` with the same prefix then answers
    without another round trip). Over QUIC, with a session ticket from an earlier
    connection to the same peer (``tickets``: :data:`~.quic.CLIENT_TICKETS` by
    default, or a :class:`~.quic.SessionTickets`), that first flight is 0-RTT
    early data (``sess.early_data``). Raises :class:`~.quic.TransportError`,
    :class:`~.identity.PeerIdMismatch`, :class:`RemoteError`.
    """
    if isinstance(url, str):
        url = parse_url(url)
    settings = settings or QuicSettings()
    proto = ClientSession(url.peer_id)
    proto.hello(url.repo)
    early_rid = proto.list_refs(refs_prefix) if refs_prefix is not None else None
    first = b"".join(proto.data_to_send())
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
                                 settings=s, engine=engine, tickets=tickets, first_data=first))
            except TransportError:
                if url.transport == "quic":
                    raise
                log.info("QUIC to %s:%s got no answer; falling back to TLS over TCP",
                         url.host, url.port)
            else:
                sess = RemoteSession(MessageChannel(conn.first_stream), conn.peer_id,
                                     f"quic/{conn.engine}", proto=proto)
                sess.resumed, sess.early_data = conn.resumed, conn.early_data
        if sess is None:
            stream = await stack.enter_async_context(
                connect_tcp(url.host, url.port, expected_peer_id=url.peer_id,
                            connect_timeout=settings.connect_timeout))
            await stream.send_all(first)
            sess = RemoteSession(MessageChannel(stream), stream.peer_id, "tcp", proto=proto)
        sess._early_refs = (early_rid, refs_prefix)
        sess.answer_timeout, sess.where = settings.answer_timeout, f"remote {url.host}:{url.port}"
        await sess.start(identity, auth=auth, repo=url.repo)
        yield sess
        await sess.aclose()
