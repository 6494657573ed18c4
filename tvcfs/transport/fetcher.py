"""The peer tier's prioritised fetcher: blocks by priority from one or several peers.

:class:`RemoteFetcher` is a block source (:class:`tvcfs.store.source.BlockSource`)
of the block layer: the lazy mount's reader asks it for leaves it lacks
(``tvcfs.fs.lazy.attach_remote`` builds it through
:func:`tvcfs.store.peers.peer_source`; the mount never sees the wire protocol). It
runs in the caller's trio loop, keeps one multiplexed session
(:class:`~tvcfs.transport.wants.MuxSession`) per peer, and verifies every block
before it stores it into the local store.

Priorities (docs/lazy.md; ``tvcfs.store.base.PRIO_*``): foreground read (3) >
tensor readahead (2) > sequential readahead (1) > background prefetch (0).

* A foreground read's missing leaves are sent at once as want-list entries
  (Bitswap) and the read waits for them, at most ``timeout`` seconds; then it fails
  with ``BlockNotFound`` (``EIO``) and its wants are cancelled; the next read tries
  again.
* Readahead arrives as byte ranges (:meth:`RemoteFetcher.schedule_range`): each
  contiguous run of missing leaves becomes **one** byte-range DAG request (the
  server answers it in one round trip; the file's interior nodes are listed as
  ``have``). Touching a tensor of a safetensors file thus fetches the rest of the
  tensor as one request at tensor priority.
* Background prefetch is cut into chunks; at most ``prefetch_window`` bytes are in
  flight, no new chunk is sent while a foreground read is waiting or for
  ``prefetch_grace`` seconds after one, and only one leaf at a time for
  ``prefetch_polite`` seconds after one.
* Every block is hashed against its CID (in a worker thread) before it is stored;
  a bad block penalises the sending peer and the CID is asked of another peer.
* Peers are chosen by the expected completion time (latency + outstanding bytes /
  throughput, times a penalty for bad blocks: :class:`~tvcfs.transport.peerscore.PeerScore`).
  A peer whose connection breaks is dropped and reconnected with the back-off of
  :class:`~tvcfs.transport.peerscore.Backoff`; a peer silent for ``stall_timeout``
  seconds with requests outstanding is marked suspect and its wants move to other
  peers. Wants answered elsewhere, or no longer needed, are cancelled.
* :meth:`RemoteFetcher.stats_dict` (in the mount's ``.tvcfs/stats`` under
  ``"remote"``) reports bytes per priority class and per peer, cache hits,
  pending wants, latencies and peer scores.

See docs/lazy.md.
"""

from __future__ import annotations

import collections
import contextlib
import json
import heapq
import itertools
import logging
import os
import time
from dataclasses import dataclass

import trio

from ..encoding.cid import DAG_PB, cid_codec, cid_str
from ..errors import BlockNotFound, CorruptBlock, InvalidCID, TvcfsError
from ..store.base import (DEFAULT_FETCH_TIMEOUT as DEFAULT_TIMEOUT, PRIO_FOREGROUND, PRIO_NAMES,
                          PRIO_PREFETCH, PRIO_SEQUENTIAL)
from ..store.source import SourceBase
from ..store.verify import verify_many
from . import protocol
from .peerscore import Backoff, PeerScore

__all__ = ["FetchSettings", "RemoteFetcher"]

log = logging.getLogger("tvcfs.transport.fetcher")

MIB = 1 << 20
DEFAULT_LEAF = 1 * MIB        # size assumed for a CID whose size is not known
FAIL_HOLDOFF = 1.0            # seconds a CID that just timed out fails at once
INLINE_STORE = 2 * MIB        # foreground blocks up to this are verified+stored in the loop
ARRIVING = 2 * MIB            # a read waits for a leaf this close to the head of a streaming answer


@dataclass
class FetchSettings:
    """Tunables of a :class:`RemoteFetcher` (times in seconds, sizes in bytes).

    ``timeout``: a foreground read fails with EIO after this long without its
    blocks. ``stall_timeout``: a peer with requests outstanding that sends nothing
    for this long is suspect (its wants move elsewhere); None = ``timeout/4``
    clamped to [0.5, 2]. ``prefetch_window``: background-prefetch bytes in flight;
    ``prefetch_chunk``: bytes per prefetch request; ``prefetch_grace``: prefetch
    sends nothing while a foreground read waits and for this long after one (a
    burst of reads never queues behind prefetch data); ``prefetch_polite``: for this
    long after a foreground read, prefetch keeps only one leaf in flight (a read
    that comes then waits behind at most that). ``max_requests`` /
    ``max_wants``: DAG requests / want-list entries outstanding per peer (the
    server allows 64 / 4096). ``connect_timeout``: per connection attempt.
    ``bulk_batch``: bytes verified and stored per worker-thread call;
    ``rx_buffer``: received-but-unstored bytes before reading pauses.
    ``hung_timeout``: a suspect peer silent this long with requests outstanding
    is taken for hung (a host that stopped, a path that drops everything: no
    error ever arrives, QUIC would wait for its idle timeout): its session is
    ended and it is reconnected with the usual back-off; None = ``timeout/2``
    clamped to [2 x stall, 10].
    """

    timeout: float = DEFAULT_TIMEOUT
    stall_timeout: float | None = None
    prefetch_window: int = 4 * MIB
    prefetch_chunk: int = 1 * MIB
    prefetch_grace: float = 0.05
    prefetch_polite: float = 1.0
    max_requests: int = 32
    max_wants: int = 2048
    connect_timeout: float = 3.0
    engine: str | None = None
    bulk_batch: int = 4 * MIB
    rx_buffer: int = 32 * MIB
    hung_timeout: float | None = None

    def stall(self) -> float:
        """Seconds of silence after which a peer with requests outstanding is suspect:
        ``stall_timeout``, else ``timeout/4`` clamped to [0.5, 2]."""
        if self.stall_timeout is not None:
            return self.stall_timeout
        return max(0.5, min(2.0, self.timeout / 4))

    def hung(self) -> float:
        """Seconds of silence after which a suspect peer's session is ended: ``hung_timeout``,
        else ``timeout/2`` clamped to [2*stall, 10]."""
        if self.hung_timeout is not None:
            return self.hung_timeout
        return max(2 * self.stall(), min(10.0, self.timeout / 2))


class _Want:
    """One CID the mount wants: its priority, where it is outstanding (``at``:
    ``{peer: request id, 0 = want-list entry}``), peers that failed it, waiters."""

    __slots__ = ("cid", "prio", "size", "at", "tried", "event", "foreground_waiters", "pending", "sent_at",
                 "t0", "prefetch_counted")

    def __init__(self, cid: bytes, prio: int, size: int, now: float):
        self.cid = cid
        self.prio = prio
        self.size = size
        self.at: dict = {}
        self.tried: set = set()
        self.event = trio.Event()
        self.foreground_waiters = 0  # foreground reads waiting on it
        self.pending = False   # received, being verified/stored
        self.sent_at = now
        self.t0 = now
        self.prefetch_counted = 0  # bytes of it counted in the prefetch window


class _Req:
    """A byte-range DAG request outstanding at a peer."""

    __slots__ = ("rid", "prio", "cids", "sent_at", "first", "prefetch", "root", "order")

    def __init__(self, rid: int, prio: int, root: bytes, now: float):
        self.rid = rid
        self.prio = prio
        self.root = root
        self.cids: set = set()
        self.order: list = []  # the leaves in the order the server sends them
        self.sent_at = now
        self.first = False
        self.prefetch = prio == PRIO_PREFETCH


class _Job:
    """Readahead/prefetch work not yet sent: ``items`` = ``[(leaf index | None, cid,
    size)]`` of file ``idx`` (or no file), consumed from ``pos``."""

    __slots__ = ("prio", "idx", "items", "pos")

    def __init__(self, prio: int, idx, items):
        self.prio = prio
        self.idx = idx
        self.items = items
        self.pos = 0


class Peer:
    """State and statistics of one remote (``url``)."""

    def __init__(self, url: str):
        from .client import parse_url

        self.url = url
        u = parse_url(url)
        self.name = f"{u.host}:{u.port}"
        self.peer_id = u.peer_id
        self.transport = ""
        self.mux = None
        self.state = "connecting"
        self.since = time.time()  # Unix time of the last state change
        self.suspect = False
        self.last_error = ""
        self.scope = None         # cancel scope of the current session (watchdog: hung peer)
        self.hung = ""            # why the watchdog ended the session
        self.kick = trio.Event()
        self.outbox: list = []
        self.out_ev = trio.Event()
        self.wants: dict = {}
        self.reqs: dict = {}
        self.out_bytes = 0
        self.busy_since = 0.0
        self.last_rx = 0.0
        self.rating = PeerScore()  # latency, throughput, penalty for bad blocks
        self.backoff = Backoff(0.2, 5.0)  # reconnection attempts
        self.tick_bytes = 0
        self.wire_done = 0        # framed bytes received on finished sessions
        # counters
        self.blocks = 0
        self.nbytes = 0
        self.bad_blocks = 0
        self.dont_have = 0
        self.dup_blocks = 0
        self.dup_bytes = 0
        self.stalls = 0
        self.failures = 0
        self.connects = 0
        self.cancels = 0
        self.requests = 0
        self.by_class = {n: 0 for n in PRIO_NAMES.values()}

    @property
    def ready(self) -> bool:
        """Whether the peer is connected and can take requests."""
        return self.state == "ready" and self.mux is not None

    def wire_bytes(self) -> int:
        """Framed bytes received from this peer over all its sessions."""
        return self.wire_done + (self.mux.bytes_in if self.mux is not None else 0)

    def est(self, nbytes: int) -> float:
        """Expected seconds until ``nbytes`` more would be delivered by this peer."""
        return self.rating.est(self.out_bytes, nbytes)

    def score(self) -> float:
        """Higher is better: 1 / the expected seconds for a 1 MiB request now."""
        return self.rating.score(self.out_bytes)

    def send(self, msg) -> None:
        """Queue message ``msg`` for the peer's sender task."""
        self.outbox.append(msg)
        self.out_ev.set()


class RemoteFetcher(SourceBase):
    """Block source of a lazy mount: fetches blocks by priority from ``urls``.

    ``store``: the repository's :class:`~tvcfs.store.lmdb_store.LMDBStore` (blocks
    are verified, then stored there); ``identity``: this node's key (peers see an
    authenticated peer ID, which their fair-share ledger uses). The reader calls
    :meth:`fetch` (blocking, foreground), :meth:`schedule` and
    :meth:`schedule_range` (non-blocking). Start :meth:`run` in the mount's
    nursery.

    Hooks the caller may set (all optional): ``on_started()`` runs once the
    fetcher serves requests (the mount warms its files there); ``on_stored(cids)``
    runs in the storing worker thread after ``cids`` were written (the mount's
    page-in threads learn they are resident); ``read_count()`` gives the reads
    served so far (``cache_hit_reads`` in :meth:`stats_dict`).
    """

    def __init__(self, store, urls, *, settings: FetchSettings | None = None,
                 identity=None):
        if not urls:
            raise ValueError("a remote fetcher needs at least one peer URL")
        self.store = store
        self.settings = settings or FetchSettings()
        self.identity = identity
        self.on_started = None
        self.on_stored = None
        self.read_count = None
        self.peers = [Peer(u) for u in dict.fromkeys(urls)]
        self.wants: dict[bytes, _Want] = {}
        self.orphans: list[_Want] = []
        self.jobs: list = []
        self._seq = itertools.count()
        self.fg_waiting = 0
        self.fg_last = -1e9  # trio time of the last foreground fetch
        self.prefetch_inflight = 0
        self._wake = trio.Event()
        self._rx = {True: collections.deque(), False: collections.deque()}
        self._rx_ev = {True: trio.Event(), False: trio.Event()}
        self._rx_bytes = 0
        self._rx_space = trio.Event()
        self._interior: collections.OrderedDict = collections.OrderedDict()
        self._nursery = None
        self._unsynced = 0
        # statistics
        self.classes = {n: {"blocks": 0, "bytes": 0, "requested": 0} for n in PRIO_NAMES.values()}
        self.fetch_calls = 0
        self.fetch_timeouts = 0
        self.fetch_blocks_local = 0
        self.bad_blocks = 0
        self.dup_blocks = 0
        self.dup_bytes = 0
        self.unsolicited = 0
        self.cancels = 0
        self.fg_latency = collections.deque(maxlen=2000)
        # CIDs whose fetch just timed out: the kernel retries a failed readahead page
        # at once with a synchronous read; that retry fails fast (FAIL_HOLDOFF)
        self._failed: dict[bytes, float] = {}
        self._last_connect = 0.0
        self.started = time.time()
        # the status file (``status_path``, set by the mount daemon): peer states and the
        # last failed read, for ``tvcfs status``; rewritten when they change
        self.status_path: str | None = None
        self.mountpoint = ""
        self.last_read_error: dict | None = None
        self._status_dirty = True

    # ------------------------------------------------------------------ API
    async def fetch(self, cids, priority: int = PRIO_FOREGROUND) -> None:
        """Fetch ``cids`` now and return once all are stored (verified) locally.

        Raises :class:`BlockNotFound` (naming the first missing CID) when they cannot
        be had within ``settings.timeout`` seconds: no peer reachable, every peer
        lacks it or sent it corrupt. Its wants are then cancelled; a later call
        starts afresh."""
        self.fetch_calls += 1
        now = trio.current_time()
        cids = list(dict.fromkeys(cids))
        local = self._local_mask(cids)
        todo = [c for c, here in zip(cids, local) if not here]
        self.fetch_blocks_local += len(cids) - len(todo)
        if not todo:
            return
        if self._nursery is None:
            raise BlockNotFound(todo[0], f"block {cid_str(todo[0])} is not stored locally "
                                         "and the remote fetcher is not running")
        if not any(p.ready for p in self.peers):
            for p in self.peers:
                p.kick.set()  # reconnect now rather than after the back-off
        if self._failed:
            for c in todo:
                t = self._failed.get(c)
                if t is not None and now - t < FAIL_HOLDOFF and t > self._last_connect:
                    self.fetch_timeouts += 1
                    raise BlockNotFound(c, f"block {cid_str(c)} could not be fetched "
                                           f"{now - t:.1f} s ago ({self._peer_summary()})")
            if len(self._failed) > 4096:
                self._failed = {c: t for c, t in self._failed.items() if now - t < FAIL_HOLDOFF}
        ws = []
        send_to: dict = {}
        for c in todo:
            w = self.wants.get(c)
            if w is None:
                w = self._new_want(c, priority, DEFAULT_LEAF, now)
            if priority > w.prio:
                w.prio = priority
            w.foreground_waiters += 1
            ws.append(w)
            if w.pending:
                continue
            if any(rid == 0 and q.ready and not q.suspect for q, rid in w.at.items()):
                continue  # already a want-list entry at a live peer
            if self._arriving(w):
                continue  # next in a readahead answer that is streaming: a want would race it
            # prefer a peer that has it in a DAG answer: the server then skips it there
            p = next((q for q in w.at if q.ready and not q.suspect), None)
            if p is not None:
                self._detach(w, p)  # now a want-list entry there, not part of the request
            else:
                p = self._pick(w.tried, w.size)
            if p is None:
                self._orphan(w)
                continue
            send_to.setdefault(p, []).append(w)
        for p, lst in send_to.items():
            self._send_wants(p, lst, priority)
        self.fg_waiting += 1
        self.fg_last = now
        self.classes[PRIO_NAMES[priority]]["requested"] += len(ws)
        try:
            with trio.move_on_after(self.settings.timeout):
                for w in ws:
                    await w.event.wait()
        finally:
            self.fg_waiting -= 1
            self.fg_last = trio.current_time()
            for w in ws:
                w.foreground_waiters -= 1
        missing = [w for w in ws if not w.event.is_set()]
        self.fg_latency.append(trio.current_time() - now)
        if missing:
            self.fetch_timeouts += 1
            self._status_dirty = True
            t_fail = trio.current_time()
            for w in missing:
                self._failed[w.cid] = t_fail
                if w.foreground_waiters == 0:
                    self._abandon(w)
            raise BlockNotFound(missing[0].cid, (
                f"block {cid_str(missing[0].cid)} could not be fetched within "
                f"{self.settings.timeout:g} s ({self._peer_summary()})"))

    def schedule(self, cids, priority: int) -> None:
        """Fetch ``cids`` in the background at ``priority`` (non-blocking)."""
        cids = list(cids)
        if not cids:
            return
        self._push_job(_Job(priority, None, [(None, c, DEFAULT_LEAF) for c in cids]))

    def schedule_range(self, idx, lo: int, hi: int, cids, priority: int) -> None:
        """Fetch the missing leaves ``cids`` of bytes ``[lo, hi)`` of file ``idx``
        (a :class:`~tvcfs.dag.FileIndex`) in the background at ``priority``: each
        contiguous run becomes one byte-range DAG request (prefetch: in chunks)."""
        want = set(cids)
        if not want:
            return
        items = [(i, idx.leaves[i], idx.sizes[i]) for i in idx.leaf_range(lo, hi - lo)
                 if i not in idx.inline and idx.leaves[i] in want]
        if items:
            self._push_job(_Job(priority, idx, items))

    async def _start(self, n) -> None:
        """(:meth:`run`, of :class:`~tvcfs.store.source.SourceBase`: connect to the
        peers and serve wants until cancelled.)"""
        for p in self.peers:
            n.start_soon(self._peer_main, p)
        n.start_soon(self._dispatcher)
        n.start_soon(self._storer, True)
        n.start_soon(self._storer, False)
        n.start_soon(self._watchdog)

    def close(self) -> None:
        """Make what was stored durable (one msync); remove the status file."""
        self.sync_stored()
        if self.status_path:
            with contextlib.suppress(OSError):
                os.unlink(self.status_path)

    async def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until at least one peer is connected (tests, benchmarks)."""
        with trio.move_on_after(timeout):
            while not any(p.ready for p in self.peers):
                await trio.sleep(0.01)
            return True
        return False

    # ------------------------------------------------------------------ bookkeeping
    def _new_want(self, cid: bytes, prio: int, size: int, now: float) -> _Want:
        w = _Want(cid, prio, size, now)
        self.wants[cid] = w
        return w

    def _local_mask(self, cids) -> list:
        with self.store.view(verify=False) as blocks:
            has = blocks.has
            return [has(c) for c in cids]

    def _kick(self) -> None:
        self._wake.set()

    def _push_job(self, job: _Job) -> None:
        heapq.heappush(self.jobs, (-job.prio, next(self._seq), job))
        self.classes[PRIO_NAMES[job.prio]]["requested"] += len(job.items)
        self._kick()

    def _orphan(self, w: _Want) -> None:
        self.orphans.append(w)
        self._kick()

    def _attach(self, w: _Want, p: Peer, rid: int) -> None:
        if p in w.at:
            self._detach(w, p)
        w.at[p] = rid
        if rid == 0:
            p.wants[w.cid] = w
        else:
            p.reqs[rid].cids.add(w.cid)
        if p.out_bytes <= 0:
            p.busy_since = trio.current_time()
            p.out_bytes = 0
        p.out_bytes += w.size
        if w.prio == PRIO_PREFETCH and not w.prefetch_counted:
            w.prefetch_counted = w.size  # counted in the prefetch window until answered or moved
            self.prefetch_inflight += w.size

    def _detach(self, w: _Want, p: Peer):
        rid = w.at.pop(p, None)
        if rid is None:
            return None
        p.out_bytes -= w.size
        if rid == 0:
            p.wants.pop(w.cid, None)
        else:
            r = p.reqs.get(rid)
            if r is not None:
                r.cids.discard(w.cid)
        if w.prefetch_counted and not w.at:
            self.prefetch_inflight -= w.prefetch_counted
            w.prefetch_counted = 0
            self._kick()
        if not p.wants and not any(r.cids for r in p.reqs.values()):
            p.out_bytes = 0
        return rid

    def _cancel_at(self, w: _Want, p: Peer) -> None:
        """``p`` need not send ``w`` any more: cancel the want-list entry, or the
        whole DAG request once nothing in it is wanted from ``p``."""
        rid = self._detach(w, p)
        if rid is None or not p.ready:
            return
        if rid == 0:
            p.send(protocol.WantList([protocol.WantEntry(w.cid, 0, protocol.CANCEL)]))
            p.cancels += 1
            self.cancels += 1
        else:
            r = p.reqs.get(rid)
            if r is not None and not r.cids:
                p.send(protocol.Cancel(rid))
                p.cancels += 1
                self.cancels += 1

    def _abandon(self, w: _Want) -> None:
        """No reader waits for ``w`` any more (timeout): cancel it everywhere."""
        for p in list(w.at):
            self._cancel_at(w, p)
        if self.wants.get(w.cid) is w:
            del self.wants[w.cid]

    def _pick(self, exclude=(), nbytes: int = DEFAULT_LEAF, need_slot: bool = False):
        """The peer expected to deliver ``nbytes`` soonest (ready, not in
        ``exclude``; suspect peers only when no other is left)."""
        best = None
        best_est = 0.0
        fallback = None
        for p in self.peers:
            if not p.ready or p.name in exclude:
                continue
            if need_slot and len(p.reqs) >= self.settings.max_requests:
                continue
            if p.suspect:
                fallback = fallback or p
                continue
            e = p.est(nbytes)
            if best is None or e < best_est:
                best, best_est = p, e
        return best or fallback

    def _arriving(self, w: _Want) -> bool:
        """``w`` is among the next ``ARRIVING`` bytes of a tensor/sequential DAG answer
        at a live peer (started or not: its answer begins with its first leaves, so
        a want for one of those would only race it and bring the block twice)."""
        for q, rid in w.at.items():
            if not rid or not q.ready or q.suspect:
                continue
            r = q.reqs.get(rid)
            if r is None or r.prio < PRIO_SEQUENTIAL:
                continue
            ahead = 0
            for c in r.order:
                if c == w.cid:
                    return True
                if c in r.cids:
                    x = self.wants.get(c)
                    ahead += x.size if x is not None else DEFAULT_LEAF
                    if ahead > ARRIVING:
                        break
        return False

    def _send_wants(self, p: Peer, ws, prio: int) -> None:
        now = trio.current_time()
        entries = []
        for w in ws:
            if len(p.wants) >= self.settings.max_wants:
                self._orphan(w)
                continue
            self._attach(w, p, 0)
            w.sent_at = now
            entries.append(protocol.WantEntry(w.cid, prio, protocol.SEND_DONT_HAVE))
        if entries:
            p.send(protocol.WantList(entries))
            p.requests += 1

    def _interior_of(self, root: bytes) -> list:
        """The file's interior (dag-pb) node CIDs including the root, from the local
        store (sent as ``have`` so a byte-range answer carries only leaves)."""
        got = self._interior.get(root)
        if got is not None:
            self._interior.move_to_end(root)
            return got
        from ..dag import block_links

        out = []
        stack = [root]
        with self.store.view() as blocks:
            while stack:
                c = stack.pop()
                try:
                    if cid_codec(c) != DAG_PB:
                        continue
                except InvalidCID:
                    continue
                try:
                    data = blocks.get(c)
                except CorruptBlock:
                    continue
                if data is None:
                    continue
                out.append(c)
                try:
                    stack.extend(block_links(c, bytes(data)))
                except TvcfsError:
                    continue
        self._interior[root] = out
        if len(self._interior) > 256:
            self._interior.popitem(last=False)
        return out

    # ------------------------------------------------------------------ dispatch
    async def _dispatcher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                self._dispatch()
            except Exception:  # noqa: BLE001 - keep the mount alive
                log.exception("dispatch")
            await trio.sleep(0)

    def _dispatch(self) -> None:
        now = trio.current_time()
        # 1. wants that lost their peer (failure, DontHave, bad block, stall)
        if self.orphans:
            keep = []
            groups: dict = {}
            names = {p.name for p in self.peers}
            for w in sorted(self.orphans, key=lambda w: -w.prio):
                if self.wants.get(w.cid) is not w or w.pending or w.at:
                    continue
                p = self._pick(w.tried, w.size)
                if p is None:
                    if not w.foreground_waiters and names <= w.tried:
                        del self.wants[w.cid]  # background want no peer can serve: drop it
                        continue
                    keep.append(w)
                    continue
                groups.setdefault((p, w.prio), []).append(w)
            for (p, prio), lst in groups.items():
                self._send_wants(p, lst, prio)
            self.orphans = keep
        # 2. readahead and prefetch jobs, highest priority first
        if not self.jobs:
            return
        with self.store.view(verify=False) as blocks:
            while self.jobs:
                job = self.jobs[0][2]
                if job.prio == PRIO_PREFETCH and (
                        self.fg_waiting or now - self.fg_last < self.settings.prefetch_grace
                        or self.prefetch_inflight >= self._prefetch_window(now)):
                    break  # background prefetch yields to (recent) reads; bounded window
                if not self._run_job(job, blocks, now):
                    break  # no peer can take it now
                if job.pos >= len(job.items):
                    heapq.heappop(self.jobs)

    def _prefetch_window(self, now: float) -> int:
        """Prefetch bytes allowed in flight: the window, or one leaf (1 byte: whatever
        the next leaf's size) while foreground reads were recent."""
        if now - self.fg_last < self.settings.prefetch_polite:
            return 1
        return self.settings.prefetch_window

    def _run_job(self, job: _Job, blocks, now: float) -> bool:
        """Send the next part of ``job``; False when no peer can take it now."""
        remaining = sum(s for _, _, s in job.items[job.pos:job.pos + 64])
        p = self._pick((), remaining, need_slot=True)
        if p is None:
            return False
        prefetch = job.prio == PRIO_PREFETCH
        budget = self.settings.prefetch_chunk if prefetch else None
        polite = prefetch and self._prefetch_window(now) < self.settings.prefetch_chunk
        sel = []
        taken = 0
        items = job.items
        while job.pos < len(items):
            i, cid, size = items[job.pos]
            job.pos += 1
            if blocks.has(cid):
                continue
            w = self.wants.get(cid)
            if w is not None and (w.pending or (w.at and w.prio >= job.prio)):
                continue
            if w is None:
                w = self._new_want(cid, job.prio, size, now)
            else:
                w.prio = max(w.prio, job.prio)
                if not w.at:
                    w.size = size
            if p.name in w.tried:
                continue
            sel.append((i, w))
            taken += size
            if budget is not None and taken >= budget and (len(sel) >= 2 or polite):
                break  # a chunk: at least two leaves, i.e. one byte-range request
        if not sel:
            return True
        # contiguous runs of leaves → one byte-range DAG request each
        runs: list = []
        for i, w in sel:
            if i is not None and runs and runs[-1][-1][0] is not None and runs[-1][-1][0] + 1 == i:
                runs[-1].append((i, w))
            else:
                runs.append([(i, w)])
        singles = []
        for run in runs:
            if len(run) < 2 or job.idx is None or len(p.reqs) >= self.settings.max_requests:
                singles += [w for _, w in run]
                continue
            idx = job.idx
            i0, i1 = run[0][0], run[-1][0]
            start, end = idx.starts[i0], idx.starts[i1] + idx.sizes[i1]
            rid = p.mux.next_id()
            req = _Req(rid, job.prio, idx.cid, now)
            p.reqs[rid] = req
            req.order = [w.cid for _, w in run]
            for _, w in run:
                self._attach(w, p, rid)
            have = self._interior_of(idx.cid)
            p.send(protocol.DagRequest(rid, idx.cid, protocol.Selector(protocol.SEL_RANGE, "", start, end),
                                have, [], job.prio))
            p.requests += 1
        if singles:
            self._send_wants(p, singles, job.prio)
        return True

    # ------------------------------------------------------------------ peers
    async def _peer_main(self, p: Peer) -> None:
        """Keep a session with ``p``: connect, serve, and after a failure reconnect
        (at once after a lost connection, then with ``p.backoff``: 0.2 s doubling to 5 s,
        or at once when a read finds no peer connected: ``p.kick``). State changes
        are logged once each (down with the reason, back up), not once per attempt."""
        from ..transport.quic import QuicSettings
        from ..transport.wants import open_mux

        s = self.settings
        while True:
            reason = "session closed by the peer"
            was_ready = False
            connected_at = 0.0
            p.scope = trio.CancelScope()
            p.hung = ""
            try:
                with p.scope:
                    qs = QuicSettings(engine=s.engine, connect_timeout=s.connect_timeout)
                    async with open_mux(p.url, self, identity=self.identity, settings=qs,
                                        engine=s.engine,
                                        fallback_timeout=min(1.5, s.connect_timeout),
                                        auth="always" if self.identity is not None else "auto"
                                        ) as mux:
                        mux.peer = p
                        p.mux = mux
                        p.transport = mux.transport
                        p.peer_id = mux.peer_id
                        if p.state == "down":
                            log.warning("peer %s back up after %.1f s (%s)", p.name,
                                        time.time() - p.since, p.transport)
                        else:
                            log.info("peer %s connected (%s)", p.name, p.transport)
                        self._set_state(p, "ready")
                        was_ready = True
                        p.suspect = False
                        p.connects += 1
                        connected_at = self._last_connect = trio.current_time()
                        p.last_rx = trio.current_time()
                        p.outbox.clear()
                        p.backoff.succeeded()
                        self._kick()
                        try:
                            async with trio.open_nursery() as n:
                                n.start_soon(self._writer, p, mux)
                                await mux.run()
                                n.cancel_scope.cancel()
                        finally:
                            p.wire_done += mux.bytes_in
                            p.mux = None
                if p.scope.cancelled_caught:
                    reason = p.hung or "session cancelled"
            except Exception as e:  # noqa: BLE001 - any failure: drop the peer, retry later
                # the messages name the peer, which every report puts first anyway
                reason = _reason(e).replace(f"with {p.name} ", "").replace(f"{p.name} ", "")
            p.mux = None
            p.scope = None
            self._peer_lost(p)
            if was_ready:
                p.failures += 1
                p.last_error = f"connection lost: {reason}"
                log.info("peer %s: connection lost (%s); reconnecting", p.name, reason)
                self._set_state(p, "connecting")
                if trio.current_time() - connected_at > 1.0:
                    continue  # a server restart or a broken path: reconnect at once
            else:
                p.last_error = f"unreachable: {reason}"
                if p.state != "down":
                    log.warning("peer %s down: %s", p.name, p.last_error)
                    self._set_state(p, "down")
                else:
                    log.debug("peer %s still down: %s", p.name, p.last_error)
            with trio.move_on_after(p.backoff.failed(p.last_error)):
                await p.kick.wait()
            p.kick = trio.Event()

    def _set_state(self, p: Peer, state: str) -> None:
        if p.state != state:
            p.state = state
            p.since = time.time()
        self._status_dirty = True

    async def _writer(self, p: Peer, mux) -> None:
        while True:
            if not p.outbox:
                p.out_ev = trio.Event()
                await p.out_ev.wait()
            msgs, p.outbox = p.outbox, []
            await mux.send_many(msgs)

    def _peer_lost(self, p: Peer) -> None:
        """Move every want outstanding at ``p`` to the other peers."""
        p.outbox.clear()
        moved = 0
        for w in list(p.wants.values()) + [self.wants.get(c) for r in p.reqs.values()
                                           for c in list(r.cids)]:
            if w is None:
                continue
            self._detach(w, p)
            if not w.at and not w.pending and self.wants.get(w.cid) is w:
                self._orphan(w)
                moved += 1
        for rid, r in list(p.reqs.items()):
            p.reqs.pop(rid, None)
        p.wants.clear()
        p.out_bytes = 0
        if moved:
            log.info("peer %s: %d want(s) re-sent elsewhere", p.name, moved)
        self._kick()

    def _evacuate(self, p: Peer) -> None:
        """``p`` stalled: move its wants to other peers and cancel them at ``p``."""
        moved = 0
        ws = list(p.wants.values()) + [self.wants.get(c) for r in p.reqs.values()
                                       for c in list(r.cids)]
        for w in ws:
            if w is None or p not in w.at:
                continue
            self._cancel_at(w, p)
            w.tried.add(p.name)
            if not w.at and not w.pending:
                self._orphan(w)
                moved += 1
        if moved:
            log.warning("peer %s stalled: %d want(s) moved to other peers", p.name, moved)

    # ------------------------------------------------------------------ answers
    async def on_block(self, mux, cid: bytes, data) -> None:
        """:class:`~.wants.MuxSession` handler: queue block ``cid`` from the peer for
        verification and storing (foreground wants first); waits while more than
        ``rx_buffer`` bytes are queued."""
        p = mux.peer
        now = trio.current_time()
        p.last_rx = now
        if p.suspect:
            p.suspect = False
        n = len(data)
        p.blocks += 1
        p.nbytes += n
        p.tick_bytes += n
        w = self.wants.get(cid)
        urgent = False
        if w is not None and not w.pending:
            rid = w.at.get(p)
            if rid == 0:
                p.rating.sample_latency(now - w.sent_at)
            elif rid is not None:
                r = p.reqs.get(rid)
                if r is not None and not r.first:
                    r.first = True
                    p.rating.sample_latency(now - r.sent_at)
            w.pending = True
            self._detach(w, p)
            urgent = w.foreground_waiters > 0
        self._rx[urgent].append((cid, data, p, w))
        self._rx_bytes += n
        self._rx_ev[urgent].set()
        while self._rx_bytes > self.settings.rx_buffer:
            # one event for every waiting reader (one per peer), replaced once it fired
            if self._rx_space.is_set():
                self._rx_space = trio.Event()
            await self._rx_space.wait()

    def on_dont_have(self, mux, cid: bytes) -> None:
        """:class:`~.wants.MuxSession` handler: the peer lacks ``cid``; the want moves to
        another peer, or is orphaned when none is left."""
        p = mux.peer
        p.last_rx = trio.current_time()
        p.dont_have += 1
        w = self.wants.get(cid)
        if w is None or p not in w.at:
            return
        self._detach(w, p)
        w.tried.add(p.name)
        if not w.at and not w.pending:
            self._orphan(w)

    def on_have(self, mux, cid: bytes) -> None:
        """:class:`~.wants.MuxSession` handler: the peer has ``cid`` (only its liveness is
        noted)."""
        mux.peer.last_rx = trio.current_time()

    def on_done(self, mux, rid: int, status: int, message: str) -> None:
        """:class:`~.wants.MuxSession` handler: DAG request ``rid`` ended with ``status``; the
        blocks it did not deliver are asked elsewhere."""
        p = mux.peer
        p.last_rx = trio.current_time()
        r = p.reqs.get(rid)
        if r is None:
            return
        for w in [self.wants.get(c) for c in list(r.cids)]:
            if w is None:
                continue
            self._detach(w, p)
            w.tried.add(p.name)  # it did not deliver these
            if not w.at and not w.pending:
                self._orphan(w)
        p.reqs.pop(rid, None)
        if status == protocol.DONE_ERROR and message != "cancelled":
            log.info("peer %s: request %d failed: %s", p.name, rid, message)
        self._kick()

    # ------------------------------------------------------------------ storing
    async def _storer(self, urgent: bool) -> None:
        q = self._rx[urgent]
        limit = self.settings.bulk_batch if not urgent else 4 * MIB
        while True:
            if not q:
                self._rx_ev[urgent] = trio.Event()
                await self._rx_ev[urgent].wait()
                continue
            batch = []
            nb = 0
            while q and (not batch or nb < limit):
                item = q.popleft()
                batch.append(item)
                nb += len(item[1])
            try:
                # the caller learns which leaves were just written (the mount's page-in
                # threads: they are in memory, reading them needs no thread hop)
                hint = self.on_stored
                if urgent and nb <= INLINE_STORE:
                    # a read waits for it: no thread hop (~1 ms of hashing per MiB)
                    result = _verify_and_store(self.store, batch, hint)
                else:
                    result = await trio.to_thread.run_sync(_verify_and_store, self.store, batch, hint)
            except Exception:  # noqa: BLE001 - store full etc.: the reads fail, the mount lives
                log.exception("storing fetched blocks")
                result = ([], [i for i in range(len(batch))], [], True)
            self._rx_bytes -= nb
            if self._rx_bytes <= self.settings.rx_buffer:
                self._rx_space.set()
            self._after_store(batch, result)

    def _after_store(self, batch, result) -> None:
        stored, bad, dup, failed = result
        self._unsynced += len(stored)
        bad_set = set(bad)
        dup_set = set(dup)
        for k, (cid, data, p, w) in enumerate(batch):
            n = len(data)
            if k in bad_set:
                if failed:
                    if w is not None:
                        w.pending = False
                        self._orphan(w)
                    continue
                p.bad_blocks += 1
                self.bad_blocks += 1
                p.rating.bad()
                log.warning("peer %s sent a corrupt block %s: dropped, asking another peer",
                            p.name, cid_str(cid))
                if w is not None and self.wants.get(cid) is w:
                    w.pending = False
                    w.tried.add(p.name)
                    if not w.at:
                        self._orphan(w)
                continue
            if k in dup_set:
                p.dup_blocks += 1
                p.dup_bytes += n
                self.dup_blocks += 1
                self.dup_bytes += n
            cur = self.wants.get(cid)
            if w is None and (cur is None or k not in dup_set):
                # asked by no want when it arrived: dropped unless already stored (then
                # it may answer a want made since; a want made since a dropped block
                # arrived was sent after it, and the peer sends the block again)
                if k not in dup_set:
                    self.unsolicited += 1
                continue
            if cur is not None:
                del self.wants[cid]
            counted = False
            for x in (w, cur) if cur is not w else (w,):
                if x is None:
                    continue
                if not counted:
                    cls = PRIO_NAMES[x.prio]
                    self.classes[cls]["blocks"] += 1
                    self.classes[cls]["bytes"] += n
                    p.by_class[cls] += n
                    counted = True
                for q in list(x.at):  # answered here: not needed from the others
                    self._cancel_at(x, q)
                x.pending = False
                x.event.set()

    # ------------------------------------------------------------------ watchdog
    async def _watchdog(self) -> None:
        tick = 0.05
        last_sync = last = trio.current_time()
        last_status = -1e9
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            dt, last = max(now - last, 1e-3), now
            stall = self.settings.stall()
            usable = [p for p in self.peers if p.ready and not p.suspect]
            for p in self.peers:
                busy = p.out_bytes > 0
                if busy and p.tick_bytes:
                    p.rating.sample_throughput(p.tick_bytes, dt)
                p.tick_bytes = 0
                p.rating.decay(dt)
                if not p.ready or not busy:
                    continue
                since = max(p.last_rx, p.busy_since)
                if now - since > stall and not p.suspect:
                    p.suspect = True
                    p.stalls += 1
                    p.rating.stalled()
                    self._status_dirty = True
                    if any(q is not p for q in usable):
                        self._evacuate(p)
                    else:
                        log.warning("peer %s silent for %.1f s with requests outstanding",
                                    p.name, now - since)
                elif p.suspect and now - since > self.settings.hung() and p.scope is not None:
                    # no error will ever come (no ICMP, no reset): end the session
                    p.hung = f"no answer for {now - since:.1f} s with requests outstanding"
                    p.scope.cancel()
            if self.jobs and not self.fg_waiting:
                self._kick()  # resume a prefetch paused for foreground reads
            if self._status_dirty and self.status_path and now - last_status >= 0.2:
                last_status = now
                self._status_dirty = False
                self.write_status()
            if self._unsynced and now - last_sync > 10.0:
                last_sync = now
                self._unsynced = 0
                await trio.to_thread.run_sync(self.store.sync)

    # ------------------------------------------------------------------ stats
    def _peer_summary(self) -> str:
        parts = []
        now = trio.current_time()
        for p in self.peers:
            s = p.state
            if p.suspect:
                s += f", silent for {now - max(p.last_rx, p.busy_since):.1f} s"
            if p.state != "ready" and p.last_error:
                s += f": {p.last_error}"
            parts.append(f"{p.name} {s}")
        return "; ".join(parts) or "no peers"

    def note_read_error(self, path: str, error: str) -> None:
        """A read of ``path`` (as the mount shows it, e.g. ``branches/main/x.bin``)
        failed with ``error``: kept as ``last_read_error`` for ``tvcfs status`` and
        ``.tvcfs/stats``."""
        self.last_read_error = {"time": time.time(), "path": path, "error": error}
        self._status_dirty = True

    def status(self) -> dict:
        """What the status file holds: ``pid``, ``mountpoint``, ``time`` (Unix
        seconds), ``timeout_s``, ``peers`` ``{HOST:PORT: {url, state (connecting /
        ready / down), since (Unix time of the last state change), suspect,
        last_error, failures, connects}}``, ``last_read_error`` (``{time, path,
        error}`` or None), ``foreground_timeouts``."""
        return {
            "pid": os.getpid(), "mountpoint": self.mountpoint, "time": time.time(),
            "timeout_s": self.settings.timeout,
            "peers": {p.name: {"url": p.url, "state": p.state, "since": p.since,
                               "suspect": p.suspect, "last_error": p.last_error,
                               "failures": p.failures, "connects": p.connects}
                      for p in self.peers},
            "last_read_error": self.last_read_error,
            "foreground_timeouts": self.fetch_timeouts,
        }

    def write_status(self) -> None:
        """Write :meth:`status` to ``status_path`` atomically (best effort: a full
        disk loses only the report)."""
        tmp = f"{self.status_path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self.status(), f)
            os.replace(tmp, self.status_path)
        except OSError as e:
            log.debug("status file %s: %s", self.status_path, e)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def stats_dict(self) -> dict:
        """Statistics for ``.tvcfs/stats``: per priority class, per peer, totals."""
        lat = sorted(self.fg_latency)

        def pct(q):
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3) if lat else None

        peers = {}
        for p in self.peers:
            peers[p.name] = {
                "url": p.url, "state": p.state, "suspect": p.suspect, "transport": p.transport,
                "wire_bytes": p.wire_bytes(), "blocks": p.blocks, "bytes": p.nbytes,
                "bytes_by_class": dict(p.by_class), "bad_blocks": p.bad_blocks,
                "dont_have": p.dont_have, "duplicate_blocks": p.dup_blocks,
                "stalls": p.stalls, "failures": p.failures, "connects": p.connects,
                "cancels_sent": p.cancels, "requests_sent": p.requests,
                "outstanding_wants": len(p.wants), "outstanding_requests": len(p.reqs),
                "latency_ms": round(p.rating.lat * 1000, 3),
                "throughput_MBps": round(p.rating.thr / 1e6, 1),
                "penalty": round(p.rating.penalty, 2), "score": p.score(), "last_error": p.last_error,
                "since": round(p.since, 3),
            }
        reads = self.read_count() if self.read_count is not None else 0
        return {
            "classes": self.classes,
            "peers": peers,
            "wire_bytes": sum(p.wire_bytes() for p in self.peers),
            "pending_wants": len(self.wants),
            "queued_jobs": len(self.jobs),
            "prefetch_inflight_bytes": self.prefetch_inflight,
            "foreground_waiting": self.fg_waiting,
            "foreground_fetches": self.fetch_calls,
            "foreground_timeouts": self.fetch_timeouts,
            "foreground_latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "n": len(lat)},
            "cache_hit_reads": max(0, reads - self.fetch_calls),
            "bad_blocks": self.bad_blocks,
            "duplicate_blocks": self.dup_blocks,
            "duplicate_bytes": self.dup_bytes,
            "unsolicited_blocks": self.unsolicited,
            "cancels_sent": self.cancels,
            "timeout_s": self.settings.timeout,
            "last_read_error": self.last_read_error,
        }


def _reason(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        return _reason(e.exceptions[0])
    return str(e) or type(e).__name__


def _verify_and_store(store, batch, stored_hook=None):
    """Worker thread: hash each received block against its CID, store the good ones
    that a want asked for (one LMDB transaction, no msync; a block no want asked for
    is dropped), then ``stored_hook(cids)``. Returns ``(stored cids, bad indexes,
    duplicate indexes, failed)``."""
    good = []
    dup = []
    with store.view(verify=False) as blocks:
        present = [blocks.has(cid) for cid, *_ in batch]
    _, bad_cids = verify_many([(cid, data) for cid, data, _p, _w in batch])
    bad_cids = set(bad_cids)
    bad = [k for k, (cid, *_) in enumerate(batch) if cid in bad_cids]
    for k, (cid, data, _p, _w) in enumerate(batch):
        if cid in bad_cids:
            continue
        if present[k]:
            dup.append(k)
            continue
        if _w is None:  # no want asked for it when it arrived: not kept (unsolicited)
            continue
        good.append((cid, data))
    stored = [c for c, _ in good]
    if good:
        store.put_many(good, sync=False, verified=True)  # first reads skip the at-rest check
        if stored_hook is not None:
            try:
                stored_hook(stored)
            except Exception:  # noqa: BLE001 - a hint only
                pass
    return stored, bad, dup, False
