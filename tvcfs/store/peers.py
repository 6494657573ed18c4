"""Peers as a tier of the block layer: a REMOTE :class:`~tvcfs.store.base.BlockStore`
that fetches blocks by CID (want-lists, docs/protocol.md) from ``tvcfs://`` peers.

A lazy clone (``tvcfs clone --lazy``) holds commits and trees but no file leaves; with
this store as a tier after the local one (``Repo.blocks`` adds it for a lazy
repository), every reader of the block layer — ``cat``, ``checkout``, ``export``,
``diff``, ``merge``, the gateway and the hub — gets a missing leaf from the peers,
verified against its CID and written back into the local store, as the lazy mount
does for its reads (docs/lazy.md). Readers that must not wait behind each other (the
lazy mount) use the same peers through :func:`peer_source`: the prioritised,
asynchronous fetcher (:class:`tvcfs.transport.fetcher.RemoteFetcher`), a
:class:`~tvcfs.store.source.BlockSource`.

Sessions live on one background thread running a trio loop; blocking callers hand
it their requests. Peers are tried in order; a peer that fails is skipped for
``backoff`` seconds (the back-off rule of :mod:`tvcfs.transport.peerscore`, with a
fixed delay). Errors: ``BlockUnavailable`` when no peer could answer (the
message names each peer and why), ``None`` from ``get`` when every peer that answered
lacks the block.
"""

from __future__ import annotations

import threading
import time
from typing import Iterable, Iterator

from ..errors import BlockUnavailable, TvcfsError
from .base import REMOTE, ReadOnlyStore, StoreBase

class PeerStore(StoreBase):
    """Blocks from the ``tvcfs://`` peers ``urls`` (tried in order).

    ``identity``: the node key to authenticate with private peers (``None``: anonymous);
    ``timeout``: seconds one request may take (connect included) before the peer counts
    as unavailable; ``backoff``: seconds a failed peer is skipped. Read-only:
    ``put``/``delete`` raise :class:`ReadOnlyStore`."""

    capabilities = frozenset({REMOTE})

    def __init__(self, urls: list, identity=None, timeout: float = 30.0, backoff: float = 5.0):
        if not urls:
            raise ValueError("a peer store needs at least one peer URL")
        self.urls = list(dict.fromkeys(urls))
        from ..transport.peerscore import Backoff

        self.identity, self.timeout, self.backoff = identity, timeout, backoff
        self._backoff = {u: Backoff(backoff, backoff) for u in self.urls}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._token = None
        self._sessions: dict = {}
        self._stop = None
        self.name = "peers"

    # --- the background trio loop ------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            ready = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(ready,), name="tvcfs-peers", daemon=True)
            self._thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        import trio

        async def main():
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()

        try:
            trio.run(main)
        finally:
            ready.set()

    async def _session(self, url: str):
        sess = self._sessions.get(url)
        if sess is not None:
            return sess
        import trio

        from ..transport.client import open_session

        opened = trio.Event()
        box: dict = {}

        async def hold(task_status=trio.TASK_STATUS_IGNORED):
            try:
                async with open_session(url, identity=self.identity, auth="auto") as s:
                    box["session"] = s
                    self._sessions[url] = s
                    opened.set()
                    await trio.sleep_forever()
            except BaseException as e:  # noqa: BLE001 - reported to the waiting request
                box.setdefault("error", e)
                opened.set()
                if not isinstance(e, Exception):
                    raise
            finally:
                self._sessions.pop(url, None)

        self._nursery.start_soon(hold)
        await opened.wait()
        if "session" not in box:
            raise box["error"]
        return box["session"]

    async def _want(self, cids: list) -> tuple[dict, list]:
        import trio

        errors = []
        now = time.monotonic()
        for url in self.urls:
            backoff = self._backoff[url]
            wait = backoff.remaining(now)
            if wait > 0:
                errors.append(f"{url}: {backoff.reason} (retrying in {wait:.0f} s)")
                continue
            try:
                with trio.fail_after(self.timeout):
                    sess = await self._session(url)
                    got = await sess.want(list(cids))
                backoff.succeeded()
                return got, errors
            except trio.TooSlowError:
                why = f"no answer within {self.timeout:g} s"
            except Exception as e:  # noqa: BLE001 - transport errors of every kind
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
            backoff.failed(why)
            self._sessions.pop(url, None)
            errors.append(f"{url}: {why}")
        return None, errors

    def _fetch(self, cids: list) -> dict:
        import trio

        self._start()
        if self._token is None:
            raise BlockUnavailable("peer tier could not start", tier=self.name)
        got, errors = trio.from_thread.run(self._want, cids, trio_token=self._token)
        if got is None:
            raise BlockUnavailable("no peer could be asked: " + "; ".join(errors), cid=cids[0] if cids else None,
                                   tier=self.name)
        return got

    # --- BlockStore ----------------------------------------------------------------
    def get(self, cid: bytes):
        """Block ``cid`` from a peer (verified), or ``None`` if no peer has it. Raises
        :class:`BlockUnavailable` if no peer could be asked."""
        return self._fetch([bytes(cid)]).get(bytes(cid))

    def get_many(self, cids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes | None]]:
        """``(cid, bytes | None)`` per CID in the order given, asked of the peers in one batch.
        Raises :class:`BlockUnavailable` if no peer could be asked."""
        cids = [bytes(c) for c in cids]
        got = self._fetch(cids) if cids else {}
        for c in cids:
            yield c, got.get(c)

    def has(self, cid: bytes) -> bool:
        """Whether a peer gives block ``cid`` (fetches it). Raises :class:`BlockUnavailable` if
        no peer could be asked."""
        return self.get(cid) is not None

    def put(self, cid: bytes, block) -> bool:
        """Always raises :class:`ReadOnlyStore`: the peer tier is read-only (push with ``tvcfs
        push``)."""
        raise ReadOnlyStore("the peer tier is read-only: push with `tvcfs push`")

    def put_many(self, blocks) -> int:
        """Always raises :class:`ReadOnlyStore`: the peer tier is read-only."""
        raise ReadOnlyStore("the peer tier is read-only: push with `tvcfs push`")

    def delete(self, cid: bytes) -> bool:
        """Always raises :class:`ReadOnlyStore`: the peer tier is read-only."""
        raise ReadOnlyStore("the peer tier is read-only")

    def __iter__(self):
        return iter(())

    def stat(self) -> dict:
        """``{"blocks": 0, "bytes": 0, "peers": {url: "ok" | "down: <reason>"}}``."""
        return {"blocks": 0, "bytes": 0, "peers": {u: ("down: " + b.reason) if b.reason else "ok"
                                                   for u, b in self._backoff.items()}}

    def close(self) -> None:
        """Stop the peer tier's trio thread (waits up to 10 s)."""
        if self._thread is not None and self._token is not None:
            import trio

            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except (RuntimeError, trio.RunFinishedError):
                pass
            self._thread.join(timeout=10)
        self._thread = None


def peers_factory(repo=None, urls=None, **_):
    """Registry factory: the peers ``urls``, else the repository's ``tvcfs://`` remotes
    (with its node key for private peers)."""
    if urls is None and repo is not None:
        urls = [u for u in repo.config.remotes.values() if u.startswith("tvcfs")]
    if not urls:
        raise TvcfsError("the peers backend needs tvcfs:// URLs (a remote of the repository, or urls=)")
    identity = repo.identity() if repo is not None else None
    return PeerStore(urls, identity=identity)


def peer_source(store, urls: list, *, identity=None, timeout: float | None = None):
    """The peers ``urls`` as a :class:`~tvcfs.store.source.BlockSource` over ``store``
    (an :class:`~tvcfs.store.lmdb_store.LMDBStore`: blocks are verified, then stored
    there): the prioritised fetcher of :mod:`tvcfs.transport.fetcher` (want-lists and
    byte-range DAG requests on one multiplexed session per peer; docs/lazy.md).
    ``timeout``: seconds a foreground fetch waits (default
    :data:`~tvcfs.store.base.DEFAULT_FETCH_TIMEOUT`); ``identity``: the node key for
    private peers. Raises ``ValueError`` without URLs. Start its ``run`` in a trio
    nursery."""
    from ..transport.fetcher import FetchSettings, RemoteFetcher

    from .base import DEFAULT_FETCH_TIMEOUT

    settings = FetchSettings(timeout=float(timeout) if timeout else DEFAULT_FETCH_TIMEOUT)
    return RemoteFetcher(store, urls, settings=settings, identity=identity)
