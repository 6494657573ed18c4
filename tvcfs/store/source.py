"""Block sources: the block layer's asynchronous, prioritised side, for readers that
must not wait behind each other (the lazy mount).

A :class:`BlockSource` brings blocks the local store lacks from somewhere slower —
the ``tvcfs://`` peers (:func:`tvcfs.store.peers.peer_source`, the peer tier's
prioritised fetcher) or an S3 bucket (``tvcfs.fs.s3source.S3BlockSource``) —
verifies them against their CIDs and stores them into the local store; the caller
then reads them from there. The synchronous tiers of the :class:`~tvcfs.store.router.Router`
(:class:`~tvcfs.store.peers.PeerStore`, ``S3Store``) serve the other readers
(``cat``, checkout, export, diff, merge). See docs/architecture.md ("Block sources")
and docs/lazy.md.

Priorities are ``tvcfs.store.base.PRIO_*`` (higher first): a foreground read's
blocks are asked at once and never queue behind readahead or prefetch.
"""

from __future__ import annotations

import logging
from typing import Iterable, Protocol, runtime_checkable

from .base import DEFAULT_FETCH_TIMEOUT, PRIO_FOREGROUND, PRIO_NAMES  # noqa: F401 (re-exported)

__all__ = ["BlockSource", "DEFAULT_FETCH_TIMEOUT", "PRIO_NAMES", "SourceBase"]


@runtime_checkable
class BlockSource(Protocol):
    """What a lazy mount's reader asks of its source of missing blocks.

    - ``await fetch(cids, priority=PRIO_FOREGROUND)``: return once every CID in
      ``cids`` (binary CIDv1) is stored, verified, in the local store. Raises
      :class:`~tvcfs.errors.BlockNotFound` naming the first block that could not be
      had within the source's timeout (seconds; the message says why).
    - ``schedule(cids, priority)``: fetch ``cids`` in the background; returns at once.
    - ``schedule_range(idx, lo, hi, cids, priority)``: fetch the missing leaves
      ``cids`` of bytes ``[lo, hi)`` of the file ``idx`` (a
      :class:`~tvcfs.dag.FileIndex`) in the background, in file order (a peer gets
      one byte-range request per contiguous run).
    - ``await run(task_status)``: serve until cancelled (start it with
      ``nursery.start``); ``on_started`` (a callable or None, set by the caller)
      runs once it serves.
    - ``close()``: make what was stored durable.
    - ``stats_dict()``: counters (``classes`` per priority name of
      :data:`PRIO_NAMES` with ``blocks``/``bytes``/``requested``, ``wire_bytes``,
      ``peers``, ``foreground_fetches``, ``foreground_timeouts``,
      ``foreground_latency_ms``, ``cache_hit_reads``, ``bad_blocks``,
      ``last_read_error``); the mount shows them under ``remote`` in
      ``.tvcfs/stats``.
    - ``note_read_error(path, error)``: a read of ``path`` failed (kept for
      ``tvcfs status``).
    - attributes ``status_path`` (a file the source may keep its state in, or None)
      and ``mountpoint``; optional ``scan_lead_div`` (an int, or None for the
      reader's ``SCAN_LEAD_DIV``): a scan's readahead runs past the tensor being
      read by 1/``scan_lead_div`` of what the scan has read (docs/lazy.md).
    """

    on_started: object
    status_path: str | None
    mountpoint: str

    async def fetch(self, cids: Iterable[bytes], priority: int = PRIO_FOREGROUND) -> None:
        """Return once every CID of ``cids`` is stored, verified, in the local store. Raises
        :class:`~tvcfs.errors.BlockNotFound` naming the first block not had within the
        source's timeout."""

    def schedule(self, cids: Iterable[bytes], priority: int) -> None:
        """Fetch ``cids`` in the background at ``priority``; returns at once."""

    def schedule_range(self, idx, lo: int, hi: int, cids: Iterable[bytes], priority: int) -> None:
        """Fetch in the background, in file order, the missing leaves ``cids`` of bytes ``[lo,
        hi)`` of file ``idx`` (a :class:`~tvcfs.dag.FileIndex`)."""

    async def run(self, task_status=None) -> None:
        """Serve until cancelled (start with ``nursery.start``); calls ``on_started`` once
        serving."""

    def close(self) -> None:
        """Make what was stored durable."""

    def stats_dict(self) -> dict:
        """Counters for ``.tvcfs/stats`` (``remote``): see the class docstring."""

    def note_read_error(self, path: str, error: str) -> None:
        """Record that a read of ``path`` failed with ``error`` (for ``tvcfs status``)."""


class SourceBase:
    """What every block source shares: ``store`` (where verified blocks go),
    ``_unsynced`` (blocks stored since the last msync), :meth:`sync_stored`, and
    :meth:`run` (a subclass starts its tasks in :meth:`_start` and ends in
    ``close()``)."""

    store = None
    _unsynced = 0
    _nursery = None
    on_started = None
    scan_lead_div = None  # the reader's SCAN_LEAD_DIV (tvcfs.fs.reader)

    async def _start(self, nursery) -> None:
        """Start the source's tasks in ``nursery`` (a subclass's work)."""

    async def run(self, task_status=None) -> None:
        """Serve until cancelled (start it with ``nursery.start``): :meth:`_start`,
        then ``on_started()`` if set; ``close()`` at the end, however it ends."""
        import trio

        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._start(nursery)
                if task_status is not None:
                    task_status.started()
                if self.on_started is not None:
                    self.on_started()
        finally:
            self._nursery = None
            self.close()

    def close(self) -> None:
        """Make what was stored durable."""
        self.sync_stored()

    def sync_stored(self) -> None:
        """Make what was stored durable (one msync of ``store``); errors are logged
        (the caller is shutting down)."""
        if self._unsynced:
            try:
                self.store.sync()
            except Exception:  # noqa: BLE001 - shutting down
                logging.getLogger("tvcfs.store.source").exception("sync")
            self._unsynced = 0
