"""The block source of a lazy mount over S3-compatible object storage.

``tvcfs mount s3://BUCKET/PREFIX MNT`` (or a ``clone --lazy s3://…`` mounted) reads
file leaves from the bucket on demand: :class:`S3BlockSource` is the mount's
``BlockReader.remote``: a :class:`tvcfs.store.source.BlockSource` (``async
fetch(cids, priority)``, ``schedule``, ``schedule_range``, ``stats_dict``), as the
peers' fetcher is. Blocks come from
:meth:`tvcfs.store.s3.S3Store.get_many` (ranged GETs of the packs) on worker
threads (``trio.to_thread``), are verified (:func:`tvcfs.store.verify.verify_many`,
outside the store lock) and stored into the local LMDB store, then served from there.

Priorities (``tvcfs.store.base.PRIO_*``, docs/lazy.md): a foreground read starts
its GETs at once, on its own S3 client and thread pool, so it never queues behind
readahead; readahead and prefetch jobs wait in a priority queue and at most
:data:`BACKGROUND_JOBS` of them (each the blocks of one pack slot, one ranged GET,
at most :data:`JOB_MAX` bytes) run at a time.

**Bounded cache** (``--cache-size BYTES``): the local store keeps at most that many
bytes of raw leaves; beyond it the least recently used leaves are deleted
(:meth:`S3BlockSource.evict`), never a leaf of a file that is open in the mount
(they are pinned, and refreshed in the LRU order, while open), and only leaves the
bucket's pack indexes list (a leaf written locally, e.g. through ``branches/``, is
never evicted). Recency is the time a leaf was fetched or its file was last seen
open. LMDB reuses the freed pages; the file does not shrink. See
docs/backends.md ("Lazy mounts").
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import itertools
import logging
import os
import sys
import threading
import time

import trio

from ..encoding.cid import RAW, cid_codec, cid_str
from .options import parse_size  # noqa: F401  (re-exported: the one size parser)
from ..errors import BlockNotFound, TvcfsError
from ..store.source import DEFAULT_FETCH_TIMEOUT as DEFAULT_TIMEOUT, PRIO_NAMES, SourceBase
from .lazy import attach_remote, start_hook
from .reader import PRIO_FOREGROUND, PRIO_SEQUENTIAL

__all__ = ["S3BlockSource", "attach_lazy", "attach_s3", "prepare_s3_mount", "parse_size"]

log = logging.getLogger("tvcfs.fs.s3source")

MIB = 1 << 20
BACKGROUND_JOBS = 8        # readahead/prefetch get_many calls running at once
JOB_BYTES = 16 * MIB       # bytes: queued background jobs smaller than this are merged
JOB_MAX = 64 * MIB         # bytes of blocks a background job asks for at most (one pack slot)
SEQ_MIN = 16 * MIB         # bytes: a sequential readahead request is widened to this
EVICT_INTERVAL = 0.25      # seconds between cache checks (and after every fetch)
# a scan's readahead runs past the tensor being read by 1/SCAN_LEAD_DIV of what it has
# read (the reader's share is 1/32; capped by its 64 MiB window): at 1/32 a scan kept one
# ~16 MiB slot GET in flight and the reader waited on it (docs/performance.md, "fourth round")
SCAN_LEAD_DIV = 4


class _Pending:
    __slots__ = ("event", "error", "prio", "started")

    def __init__(self, prio: int):
        self.event = trio.Event()
        self.error: str | None = None
        self.prio = prio
        self.started = False


class S3BlockSource(SourceBase):
    """Remote block source of a lazy mount backed by an S3 bucket.

    ``repo``: the mount's repository (blocks are stored into ``repo.store``);
    ``url``: ``s3://BUCKET/PREFIX``; ``timeout``: seconds a foreground read waits
    for its blocks before it fails (``BlockNotFound`` → ``EIO``); ``cache_size``:
    bytes of raw leaves the local store may keep (``None``: unbounded);
    ``s3_options``: :class:`~tvcfs.store.s3.S3Store` options (timeouts default to
    fit ``timeout``). Start :meth:`run` in the mount's nursery."""

    scan_lead_div = SCAN_LEAD_DIV

    def __init__(self, repo, url: str, *, timeout: float = DEFAULT_TIMEOUT, cache_size: int | None = None,
                 reader=None, ops=None, s3_options: dict | None = None):
        from ..store.s3 import S3Store

        opts = {"connect_timeout": min(3.0, timeout), "read_timeout": max(1.0, min(30.0, timeout / 2)),
                "retries": 2, **(s3_options or {})}
        self.url = url
        self.repo, self.store, self.reader, self.ops = repo, repo.store, reader, ops
        self.timeout = float(timeout)
        self.cache_size = cache_size
        # two clients and thread pools: foreground GETs never wait behind readahead GETs;
        # one set of pack indexes between them (the bucket is listed and each index
        # read once, not once per client)
        self.foreground_client = S3Store(url, **opts)
        self.background_client = S3Store(url, **opts, indexes_of=self.foreground_client)
        self.status_path: str | None = None  # set by the mount daemon (unused: no peers)
        self.mountpoint = ""
        self._pending: dict[bytes, _Pending] = {}
        self._queue: list = []
        self._seq = itertools.count()
        self._wake = trio.Event()
        self._cache_wake = trio.Event()
        self._bg_limit = trio.Semaphore(BACKGROUND_JOBS)
        self._nursery = None
        self._unsynced = 0
        # worker threads abandoned at unmount must not write into a closing store
        self._store_lock = threading.Lock()
        self._closed = False
        self.on_started = None  # set by attach_s3: warm the mount, --prefetch
        # set by attach_s3: called in the storing worker thread with the CIDs just
        # written (the mount's page-in threads learn they are in memory, so serving
        # them needs no thread hop; tvcfs.fs.reader.Preloader.mark_resident)
        self.on_stored = None
        # statistics
        self.classes = {n: {"blocks": 0, "bytes": 0, "requested": 0} for n in PRIO_NAMES.values()}
        self.fetch_calls = 0
        self.fetch_timeouts = 0
        self.cache_hit_reads = 0
        self.bad_blocks = 0
        self.last_error = ""
        self.last_read_error: dict | None = None
        self.foreground_latency = collections.deque(maxlen=2000)
        # the bounded cache: raw leaves in the local store, least recently used first
        self.lru: collections.OrderedDict = collections.OrderedDict()
        self.cached_bytes = 0
        self.evicted = {"blocks": 0, "bytes": 0}
        self.pinned = 0

    # ------------------------------------------------------------------ API
    async def fetch(self, cids, priority: int = PRIO_FOREGROUND) -> None:
        """Fetch ``cids`` from the bucket and return once all are stored (verified)
        locally. Raises :class:`BlockNotFound` naming the first block that could
        not be had within ``timeout`` seconds (the bucket unreachable, the block
        absent or corrupt there), with the reason."""
        self.fetch_calls += 1
        t0 = trio.current_time()
        cids = list(dict.fromkeys(bytes(c) for c in cids))
        todo = self._not_local(cids)
        if not todo:
            self.cache_hit_reads += 1
            return
        if self._nursery is None:
            raise BlockNotFound(todo[0], f"block {cid_str(todo[0])} is not stored locally and the S3 "
                                         "block source is not running")
        mine = []
        waits = []
        for c in todo:
            p = self._pending.get(c)
            if p is None or not p.started:  # new, or queued for readahead: take it now
                if p is None:
                    p = self._pending[c] = _Pending(priority)
                p.prio = max(p.prio, priority)
                p.started = True
                mine.append(c)
            waits.append((c, p))
        self.classes[PRIO_NAMES[priority]]["requested"] += len(mine)
        if mine:
            self._nursery.start_soon(self._job, mine, priority, self.foreground_client)
        with trio.move_on_after(self.timeout):
            for _, p in waits:
                await p.event.wait()
        self.foreground_latency.append(trio.current_time() - t0)
        for c, p in waits:
            if not p.event.is_set():
                self.fetch_timeouts += 1
                raise BlockNotFound(c, f"block {cid_str(c)} could not be fetched from {self.url} within "
                                       f"{self.timeout:g} s" + (f" ({self.last_error})" if self.last_error else ""))
            if p.error:
                raise BlockNotFound(c, p.error)

    def schedule(self, cids, priority: int) -> None:
        """Fetch ``cids`` in the background at ``priority`` (non-blocking)."""
        new = [bytes(c) for c in dict.fromkeys(cids) if bytes(c) not in self._pending]
        new = self._not_local(new)
        if not new:
            return
        for c in new:
            self._pending[c] = _Pending(priority)
        self.classes[PRIO_NAMES[priority]]["requested"] += len(new)
        s3 = self.background_client
        job, size, slot = [], 0, None
        for c in new:  # one job per slot of a pack (one GET), at most JOB_MAX
            n, sl = s3.size_of(c) or MIB, s3.slot_of(c)
            if job and (size + n > JOB_MAX or sl != slot):
                heapq.heappush(self._queue, (-priority, next(self._seq), job))
                job, size = [], 0
            job.append(c)
            size += n
            slot = sl
        if job:
            heapq.heappush(self._queue, (-priority, next(self._seq), job))
        self._wake.set()

    def schedule_range(self, idx, lo: int, hi: int, cids, priority: int) -> None:
        """The reader's readahead of bytes ``[lo, hi)`` of ``idx``: the missing
        leaves ``cids`` in file order (ranged GETs merge neighbours). A sequential
        window is widened to at least :data:`SEQ_MIN` bytes (an S3 request costs
        tens of milliseconds whatever its size), inside the current tensor unless
        the reader's window already runs past it (a scan), and then to the end of the
        pack slot (:meth:`~tvcfs.store.s3.S3Store.slot_of`) its last leaf is in: the
        reader's window grows in small steps (``SEQ_REMOTE_STEP``), and a scan then
        asks for whole slots, one ranged GET of ~``MAX_RANGE`` bytes each, not a
        small GET per step."""
        if priority == PRIO_SEQUENTIAL and self.reader is not None:
            tm = self.reader.tensor_map(idx)
            t = tm.tensor_at(lo) if tm is not None else None
            stop = idx.size if t is None or hi > t[1] else t[1]
            end = min(stop, max(hi, lo + SEQ_MIN))
            end = self._slot_end(idx, end, stop)
            if end > hi:
                cids = self.reader.missing(idx, lo, end - lo)
        self.schedule(cids, priority)

    def _slot_end(self, idx, end: int, stop: int) -> int:
        """``end`` moved on over the leaves of ``idx`` that lie in the same pack slot
        as the leaf before ``end``, up to ``stop`` (bytes, file offsets)."""
        s3 = self.background_client
        if end <= 0 or end >= stop:
            return min(end, stop)
        slot = s3.slot_of(idx.leaves[idx.leaf_range(end - 1, 1)[0]])
        if slot is None:
            return end
        for i in idx.leaf_range(end, stop - end):
            if i in idx.inline or s3.slot_of(idx.leaves[i]) != slot:
                return max(end, idx.starts[i])
        return stop

    def note_read_error(self, path: str, error: str) -> None:
        """Remember the last failed read (``.tvcfs/stats``)."""
        self.last_read_error = {"time": time.time(), "path": path, "error": error}

    async def _start(self, n) -> None:
        """(:meth:`run`: serve fetches until cancelled.) The background dispatcher and
        the cache keeper; the bucket's pack indexes are loaded first (a failure is
        logged: reads then fail with the reason and retry)."""
        n.start_soon(self._dispatcher)
        n.start_soon(self._load)
        if self.cache_size is not None:
            await trio.to_thread.run_sync(self._scan_cache)
            n.start_soon(self._cache_keeper)

    def close(self) -> None:
        """Make what was stored durable (one msync); release the S3 clients. Fetches
        still running on worker threads store nothing after this."""
        with self._store_lock:
            self._closed = True
        self.sync_stored()
        for client in (self.foreground_client, self.background_client):
            try:
                client.close()
            except TvcfsError:
                pass

    # ------------------------------------------------------------------ work
    def _not_local(self, cids) -> list:
        if not cids:
            return []
        with self.store.view(verify=False) as v:
            return [c for c in cids if not v.has(c)]

    async def _load(self) -> None:
        try:  # the indexes both clients share; unless a fetch loaded them first
            await trio.to_thread.run_sync(self.foreground_client.has_many, [])
        except TvcfsError as e:
            self.last_error = str(e)
            log.warning("%s", e)

    async def _dispatcher(self) -> None:
        while True:
            if not self._queue:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            await self._bg_limit.acquire()
            negp, _, job = heapq.heappop(self._queue)
            # jobs of the same priority queued meanwhile go in the same request (fewer,
            # larger ranged GETs)
            size = sum(self.background_client.size_of(c) or MIB for c in job)
            while self._queue and self._queue[0][0] == negp and size < JOB_BYTES:
                more = heapq.heappop(self._queue)[2]
                job = job + more
                size += sum(self.background_client.size_of(c) or MIB for c in more)
            job = [c for c in job if (p := self._pending.get(c)) is not None and not p.started]
            if not job:
                self._bg_limit.release()
                continue
            for c in job:
                self._pending[c].started = True
            self._nursery.start_soon(self._bg_job, job, -negp)

    async def _bg_job(self, cids, prio) -> None:
        try:
            await self._job(cids, prio, self.background_client)
        finally:
            self._bg_limit.release()

    async def _job(self, cids, prio: int, s3) -> None:
        """Get ``cids`` from ``s3`` on a worker thread, verify and store them; wake
        the waiters (with the error, if any)."""
        error = None
        stored: list = []
        try:
            stored, absent, bad = await trio.to_thread.run_sync(self._get_and_store, s3, cids,
                                                                abandon_on_cancel=True)
        except Exception as e:  # noqa: BLE001 - a failed fetch fails its reads, not the mount
            error = f"block {cid_str(cids[0])}: {e}" if isinstance(e, (TvcfsError, OSError)) else \
                f"block {cid_str(cids[0])}: {type(e).__name__}: {e}"
            if not isinstance(e, (TvcfsError, OSError)):
                log.exception("fetching from %s", self.url)
            absent, bad = [], []
        if bad:
            self.bad_blocks += len(bad)
            error = (f"block {cid_str(bad[0])} from {self.url} does not hash to its CID (corrupt object); "
                     "not stored")
        if absent:
            error = error or f"block {cid_str(absent[0])} is not in {self.url}"
        if error:
            self.last_error = error
            log.warning("%s", error)
        else:
            self.last_error = ""
        cls = self.classes[PRIO_NAMES.get(prio, "prefetch")]
        for c, n in stored:
            cls["blocks"] += 1
            cls["bytes"] += n
            if cid_codec(c) == RAW:
                self.lru[c] = n
                self.lru.move_to_end(c)
                self.cached_bytes += n
        self._unsynced += len(stored)
        ok = {c for c, _ in stored}
        for c in cids:
            p = self._pending.pop(c, None)
            if p is not None:
                if c not in ok and not self.store.has(c):
                    p.error = error or f"block {cid_str(c)} could not be fetched from {self.url}"
                p.event.set()
        if self.cache_size is not None and self.cached_bytes > self.cache_size:
            self._cache_wake.set()

    def _get_and_store(self, s3, cids):
        """Worker thread: ``(stored [(cid, bytes)], absent cids, bad cids)``."""
        from ..store.verify import verify_many

        # buffers: the decoded blocks as they are (no copy each into bytes): they are
        # hashed, copied into the map and dropped
        got = list(s3.get_many(cids, verify=False, buffers=True))
        absent = [c for c, d in got if d is None]
        # hashed before the store lock: jobs verify in parallel, only the LMDB writes
        # are serialised (one write transaction at a time)
        good, bad = verify_many([(c, d) for c, d in got if d is not None])
        with self._store_lock:
            if self._closed:
                return [], [], []
            # hashed against their CIDs above, by this process (verified): their first
            # read need not check them again (an xxh3 of each leaf and a lookup of its
            # recorded checksum, LMDBStore.check; docs/performance.md, "fifth round")
            self.store.put_many(good, sync=False, verified=True)
        if self.on_stored is not None and good:
            self.on_stored([c for c, _ in good])
        return [(c, len(d)) for c, d in good], absent, bad

    # ------------------------------------------------------------------ cache
    def _scan_cache(self) -> None:
        """Worker thread: count the raw leaves already in the local store."""
        with self.store.view(verify=False) as v:
            for c, data in v.items():
                if c[1:2] == b"\x55" and c not in self.lru:  # CIDv1 raw
                    self.lru[c] = len(data)
                    self.cached_bytes += len(data)

    def _open_leaves(self) -> set:
        from ..dag import FileIndex

        out: set = set()
        # files being copied on write in a branch view (tvcfs.fs.writable), by root CID
        cids = list(getattr(self.ops, "copying", ()))
        for h in list(getattr(self.ops, "handles", {}).values()):
            if isinstance(h, FileIndex):
                out.update(h.leaves)
            else:
                # a file opened in a writable branch view (tvcfs.fs.writable.Handle): the
                # committed file it reads, by its root CID
                cids.append(getattr(getattr(h, "entry", None), "cid", None))
        for cid in cids:
            if cid is None or self.reader is None:
                continue
            try:
                out.update(self.reader.index(cid).leaves)
            except TvcfsError:
                continue
        return out

    async def _cache_keeper(self) -> None:
        while True:
            with trio.move_on_after(EVICT_INTERVAL):
                await self._cache_wake.wait()
            self._cache_wake = trio.Event()
            if self.cached_bytes > self.cache_size:
                await self.evict()

    async def evict(self) -> int:
        """Delete least recently used raw leaves until the cache holds at most
        ``cache_size`` bytes, skipping leaves of open files (pinned; moved to the
        recent end) and leaves the bucket does not hold. Returns bytes freed."""
        pinned = self._open_leaves()
        self.pinned = len(pinned)
        for c in pinned:
            if c in self.lru:
                self.lru.move_to_end(c)
        over = self.cached_bytes - self.cache_size
        victims, size = [], 0
        for c, n in self.lru.items():
            if size >= over:
                break
            if c in pinned or c in self._pending:
                continue
            victims.append(c)
            size += n
        if not victims:
            return 0
        held = await trio.to_thread.run_sync(self.background_client.has_many, victims)
        for c, h in zip(victims, held):
            if not h:  # a local-only leaf: never evicted, not counted against the cache
                self.cached_bytes -= self.lru.pop(c, 0)
        victims = [c for c, h in zip(victims, held) if h]
        # files opened while the bucket was asked are pinned too: the last check and the
        # delete run here, in the trio thread, with no await between them (an open
        # handler runs in this thread too)
        pinned = self._open_leaves()
        victims = [c for c in victims if c not in pinned and c not in self._pending]
        if not victims:
            return 0
        with self._store_lock:
            if self._closed:
                return 0
            with self.store.write(sync=False) as w:
                freed = sum(self.lru.get(c, 0) for c in victims if w.delete_block(c))
        for c in victims:
            self.cached_bytes -= self.lru.pop(c, 0)
        self.evicted["blocks"] += len(victims)
        self.evicted["bytes"] += freed
        log.info("cache: evicted %d leaves, %d bytes (%d bytes cached, limit %d)", len(victims), freed,
                 self.cached_bytes, self.cache_size)
        return freed

    # ------------------------------------------------------------------ statistics
    def stats_dict(self) -> dict:
        """``.tvcfs/stats`` under ``"remote"``: per priority class blocks/bytes;
        ``s3`` requests (ranged GETs of packs), bytes received (also ``wire_bytes``)
        and ``all_requests`` (every LIST page and GET, indexes too); pending work; the
        cache (limit, bytes, evictions, pinned leaves); the last error."""
        lat = sorted(self.foreground_latency)
        return {
            "source": "s3",
            "url": self.url,
            "classes": self.classes,
            "s3": {"requests": self.foreground_client.read["requests"] + self.background_client.read["requests"],
                   "bytes": self.foreground_client.read["bytes"] + self.background_client.read["bytes"],
                   # every LIST page and GET (pack indexes and refs too)
                   "all_requests": self.foreground_client.requests_sent + self.background_client.requests_sent},
            "wire_bytes": self.foreground_client.read["bytes"] + self.background_client.read["bytes"],
            "peers": {},
            "pending_wants": len(self._pending),
            "queued_jobs": len(self._queue),
            "foreground_fetches": self.fetch_calls,
            "foreground_timeouts": self.fetch_timeouts,
            "foreground_latency_ms": {"p50": 1000 * lat[len(lat) // 2] if lat else None,
                                      "p99": 1000 * lat[int(len(lat) * 0.99)] if lat else None,
                                      "n": len(lat)},
            "cache_hit_reads": self.cache_hit_reads,
            "bad_blocks": self.bad_blocks,
            "last_error": self.last_error,
            "last_read_error": self.last_read_error,
            "cache": {"limit_bytes": self.cache_size, "bytes": self.cached_bytes, "blocks": len(self.lru),
                      "evicted_blocks": self.evicted["blocks"], "evicted_bytes": self.evicted["bytes"],
                      "pinned_blocks": self.pinned},
        }


# ====================================================================== mounting
def attach_s3(repo, ops, urls, fetch_timeout=None, prefetch=None, cache_size=None) -> S3BlockSource:
    """Install an :class:`S3BlockSource` over the first of ``urls`` as
    ``ops.reader.remote``; returns it (the caller runs :meth:`S3BlockSource.run`)."""
    if len(urls) > 1:
        log.warning("lazy mount: several s3:// remotes; reading from %s only", urls[0])
    src = S3BlockSource(repo, urls[0], timeout=float(fetch_timeout) if fetch_timeout else DEFAULT_TIMEOUT,
                        cache_size=cache_size, reader=ops.reader, ops=ops)
    src.on_started = start_hook(src, repo, ops.reader, list(prefetch or []))
    src.on_stored = ops.reader.preloader.mark_resident
    ops.reader.remote = src
    log.info("lazy mount from %s; fetch timeout %g s; cache %s", urls[0], src.timeout,
             f"{cache_size} bytes" if cache_size else "unbounded")
    return src


def lazy_s3_urls(repo, remotes=None) -> list:
    """The ``s3://`` URLs a lazy mount of ``repo`` reads leaves from: those of
    ``remotes`` (the mount's ``--remote`` options), plus the repository's remotes
    when it is a lazy clone; each once, in that order (``[]``: not an S3 mount)."""
    urls = list(remotes or []) + (list(repo.remotes().values()) if repo.config.lazy else [])
    return [u for u in dict.fromkeys(urls) if u.startswith("s3://")]


def check_cache_size(repo, s3_urls: list, cache_size: int | None) -> None:
    """Refuse ``--cache-size`` (``cache_size`` bytes) for a mount that is not an S3
    lazy mount (``s3_urls`` from :func:`lazy_s3_urls` empty): only that mount evicts
    leaves, so elsewhere the bound would be silently ignored and the cache would grow
    past it. Raises :class:`TvcfsError` naming the repository and what to do."""
    if cache_size is None or s3_urls:
        return
    what = ("a lazy mount of tvcfs:// peers, which keeps every leaf it fetches"
            if repo.config.lazy else "not a lazy mount: its leaves are all local")
    raise TvcfsError(f"--cache-size bounds the cache of s3:// lazy mounts only; {repo.root} is {what} "
                     "(leave --cache-size out, or mount an s3:// URL)")


def attach_lazy(repo, ops, remotes=None, fetch_timeout=None, prefetch=None, cache_size=None):
    """The lazy mount's block source: an :class:`S3BlockSource` when the mount's
    remotes (``remotes`` given, plus the repository's when it is a lazy clone)
    include ``s3://`` URLs, else :func:`tvcfs.fs.lazy.attach_remote` (peers), else
    None. Returns it; the mount daemon runs its ``run``."""
    s3 = lazy_s3_urls(repo, remotes)
    check_cache_size(repo, s3, cache_size)
    if s3:
        return attach_s3(repo, ops, s3, fetch_timeout=fetch_timeout, prefetch=prefetch,
                         cache_size=cache_size)
    return attach_remote(repo, ops, remotes=remotes, fetch_timeout=fetch_timeout, prefetch=prefetch)


def cache_dir_for_s3(url: str) -> str:
    """Cache repository of ``tvcfs mount s3://…``: ``$TVCFS_CACHE_DIR`` or
    ``$XDG_CACHE_HOME/tvcfs`` (default ``~/.cache/tvcfs``), then ``s3-BUCKET-PREFIX``
    and a short hash of the URL and endpoint."""
    from ..store.s3 import parse_s3_url

    bucket, prefix = parse_s3_url(url)
    base = os.environ.get("TVCFS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tvcfs")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    tag = hashlib.sha256(f"{url}\n{endpoint}".encode()).hexdigest()[:8]
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"s3-{bucket}-{prefix}")
    return os.path.join(base, f"{name}-{tag}")


def prepare_s3_mount(url: str, *, quiet: bool = True, out=None) -> str:
    """Cache repository for ``tvcfs mount s3://… MNT``: a lazy clone of ``url`` in
    :func:`cache_dir_for_s3` the first time, else a refresh of its refs (branches
    not changed locally follow; the cached refs are kept when the bucket cannot be
    reached). Returns its path. Raises :class:`TvcfsError` when the first clone
    fails."""
    from .. import sync
    from ..repo import Repo

    d = cache_dir_for_s3(url)
    err = out or sys.stderr
    if os.path.isdir(os.path.join(d, ".tvcfs")):
        with Repo.open(d) as repo:
            if repo.remotes().get("origin") != url:
                repo.config.update("remotes", lambda rem: rem.update(origin=url))
            if repo.config.lazy and repo.branches():
                try:
                    sync.fetch(repo, "origin", fast_forward_local=True)
                except TvcfsError as e:
                    print(f"warning: could not refresh {url}: {e}; mounting the cached refs", file=err)
                return d
    os.makedirs(os.path.dirname(d), exist_ok=True)
    repo, _ = sync.clone(url, d, lazy=True, quiet=quiet, out=out)
    repo.close()
    return d

