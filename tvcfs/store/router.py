"""The router: one :class:`~tvcfs.store.base.BlockStore` over ordered tiers.

Reads try each tier in order (the local store first, then configured backends and
peers) and fall back to the next on "not found" (``None``) and on "unavailable"
(:class:`~tvcfs.errors.BlockUnavailable`, ``OSError``, or the tier's timeout). A block
read from an untrusted tier (anything remote) is verified against its CID
(:mod:`tvcfs.store.verify`) and, with write-back, stored into the first writable tier
so the next read is local. Writes go to the first writable tier. Counters per tier
(hits, misses, unavailable, corrupt, bytes, seconds) are in :meth:`Router.stats` and
shown by ``tvcfs stats``. See ``docs/architecture.md``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..encoding.cid import cid_str
from ..errors import BlockUnavailable, CorruptBlock
from .base import REMOTE, ZERO_COPY, StoreBase
from .verify import put_verified, verify_many


@dataclass
class TierStats:
    """Counters of one tier: ``hits``/``misses`` (gets answered with a block / with
    "not held"), ``unavailable`` (errors and timeouts), ``corrupt`` (blocks that did
    not hash to their CID), ``bytes`` (bytes of hits), ``seconds`` (time in gets),
    ``written_back`` (blocks copied into the writable tier), ``last_error``."""

    hits: int = 0
    misses: int = 0
    unavailable: int = 0
    corrupt: int = 0
    bytes: int = 0
    seconds: float = 0.0
    written_back: int = 0
    last_error: str = ""

    def as_dict(self) -> dict:
        """The counters as a plain ``dict`` (for ``stat()`` and ``.tvcfs/stats``)."""
        return dict(self.__dict__)


@dataclass
class Tier:
    """One tier of a :class:`Router`.

    ``name``: shown in stats and errors; ``store``: any BlockStore; ``timeout``:
    seconds a single get may take before the tier counts as unavailable for it
    (``None``: no limit; the call runs on a worker thread when set); ``writable``:
    puts may go here (the first writable tier takes them); ``trusted``: its blocks
    were verified when they entered (the local store) — blocks from an untrusted tier
    are verified on every read. Defaults: remote stores (``REMOTE`` capability) are
    untrusted and read-only."""

    name: str
    store: object
    timeout: float | None = None
    writable: bool | None = None
    trusted: bool | None = None
    stats: TierStats = field(default_factory=TierStats)

    def __post_init__(self):
        remote = REMOTE in getattr(self.store, "capabilities", ())
        if self.writable is None:
            self.writable = not remote
        if self.trusted is None:
            self.trusted = not remote


class Router(StoreBase):
    """A BlockStore over ``tiers`` (list of :class:`Tier`, tried in order).

    ``write_back``: copy a block read from a later tier into the first writable tier.
    Raises ``ValueError`` for an empty tier list. ``get`` returns ``None`` when every
    tier answered "not held", and raises :class:`BlockUnavailable` (naming each tier's
    error) when none had it and at least one could not answer.
    """

    def __init__(self, tiers: list, write_back: bool = True):
        if not tiers:
            raise ValueError("a router needs at least one tier")
        self.tiers = [t if isinstance(t, Tier) else Tier(getattr(t, "name", f"tier{i}"), t)
                      for i, t in enumerate(tiers)]
        self.write_back = write_back
        self.primary = next((t for t in self.tiers if t.writable), None)
        caps = set()
        if self.primary is not None and ZERO_COPY in getattr(self.primary.store, "capabilities", ()):
            caps.add(ZERO_COPY)
        self.capabilities = frozenset(caps)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # --- reading -----------------------------------------------------------------
    def _call(self, tier: Tier, fn, *args):
        if tier.timeout is None:
            return fn(*args)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tvcfs-router")
        fut = self._pool.submit(fn, *args)
        try:
            return fut.result(timeout=tier.timeout)
        except FutureTimeout:
            fut.cancel()
            raise BlockUnavailable(f"{tier.name}: no answer within {tier.timeout:g} s", tier=tier.name) from None

    def _from_tier(self, tier: Tier, cid: bytes):
        """``(data, error)`` from one tier: data or ``None``; error text when the tier
        could not answer or gave a corrupt block."""
        t0 = time.perf_counter()
        try:
            data = self._call(tier, tier.store.get, cid)
        except CorruptBlock as e:  # a damaged copy in this tier: another tier may hold a good one
            tier.stats.corrupt += 1
            tier.stats.last_error = str(e)
            return None, f"{tier.name}: {e}"
        except (BlockUnavailable, OSError) as e:
            tier.stats.unavailable += 1
            tier.stats.last_error = str(e)
            return None, f"{tier.name}: {e}"
        finally:
            tier.stats.seconds += time.perf_counter() - t0
        if data is None:
            tier.stats.misses += 1
            return None, None
        if not tier.trusted and verify_many([(cid, data)])[1]:
            tier.stats.corrupt += 1
            tier.stats.last_error = f"block {cid_str(cid)} does not hash to its CID"
            return None, f"{tier.name}: {tier.stats.last_error}"
        tier.stats.hits += 1
        tier.stats.bytes += len(data)
        return data, None

    def _write_back(self, tier: Tier, cid: bytes, data) -> None:
        if self.write_back and self.primary is not None and tier is not self.primary:
            # an untrusted tier's block was just hashed against its CID (_from_tier,
            # get_many): stored as verified, its next read here is not a second check
            if (put_verified(self.primary.store, [(cid, data)]).stored if not tier.trusted
                    else self.primary.store.put(cid, data)):
                tier.stats.written_back += 1

    def get(self, cid: bytes):
        """Block ``cid`` from the first tier that has it (written back to the writable tier
        when configured), or ``None``. Raises :class:`BlockUnavailable` when no tier had it
        and some could not answer."""
        errors = []
        for tier in self.tiers:
            data, err = self._from_tier(tier, cid)
            if data is not None:
                self._write_back(tier, cid, data)
                return data
            if err:
                errors.append(err)
        if errors:
            raise BlockUnavailable(f"block {cid_str(cid)} not found and some stores could not answer: "
                                   + "; ".join(errors), cid=cid)
        return None

    def get_many(self, cids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes | None]]:
        """Blocks in input order; each tier is asked once for everything the earlier
        tiers lacked (remote tiers batch well)."""
        cids = list(cids)
        found: dict = {}
        errors = []
        pending = cids
        for tier in self.tiers:
            if not pending:
                break
            t0 = time.perf_counter()
            try:
                got = list(self._call(tier, lambda: list(tier.store.get_many(pending))))
            except (BlockUnavailable, OSError) as e:
                tier.stats.unavailable += 1
                tier.stats.last_error = str(e)
                errors.append(f"{tier.name}: {e}")
                continue
            finally:
                tier.stats.seconds += time.perf_counter() - t0
            hits = [(c, d) for c, d in got if d is not None]
            tier.stats.misses += len(got) - len(hits)
            if not tier.trusted and hits:
                hits, bad = verify_many(hits)
                if bad:
                    tier.stats.corrupt += len(bad)
                    tier.stats.last_error = f"block {cid_str(bad[0])} does not hash to its CID"
                    errors.append(f"{tier.name}: {len(bad)} blocks did not hash to their CIDs")
            for c, d in hits:
                tier.stats.hits += 1
                tier.stats.bytes += len(d)
                found[bytes(c)] = d
                self._write_back(tier, c, d)
            pending = [c for c in pending if bytes(c) not in found]
        if pending and errors:
            raise BlockUnavailable(f"{len(pending)} blocks not found and some stores could not answer: "
                                   + "; ".join(errors), cid=pending[0])
        for c in cids:
            yield c, found.get(bytes(c))

    def has(self, cid: bytes) -> bool:
        """Whether any tier holds ``cid``; a tier that cannot answer counts as not holding it."""
        for tier in self.tiers:
            try:
                if self._call(tier, tier.store.has, cid):
                    return True
            except (BlockUnavailable, OSError) as e:
                tier.stats.unavailable += 1
                tier.stats.last_error = str(e)
        return False

    @contextmanager
    def view(self):
        """The primary tier's zero-copy view, falling back to :meth:`get` for blocks it
        lacks (those are copies, written back when configured)."""
        with self.primary.store.view() as local:
            yield _RouterView(self, local)

    # --- writing -----------------------------------------------------------------
    def _writable(self) -> Tier:
        if self.primary is None:
            raise BlockUnavailable("no writable tier in this router")
        return self.primary

    def put(self, cid: bytes, block) -> bool:
        """Store in the first writable tier; ``True`` if the block was new. Raises
        :class:`BlockUnavailable` without a writable tier."""
        return self._writable().store.put(cid, block)

    def put_many(self, blocks: Iterable[tuple[bytes, bytes]]) -> int:
        """Store in the first writable tier; how many were new. Raises
        :class:`BlockUnavailable` without a writable tier."""
        return self._writable().store.put_many(blocks)

    def delete(self, cid: bytes) -> bool:
        """Delete from every writable tier; ``True`` if any held it."""
        found = False
        for tier in self.tiers:
            if tier.writable:
                found = tier.store.delete(cid) or found
        return found

    def __iter__(self) -> Iterator[bytes]:
        """The CIDs of the primary (writable) tier; remote tiers are not enumerated."""
        return iter(self._writable().store)

    def stat(self) -> dict:
        """The primary tier's ``{"blocks", "bytes"}`` plus ``"tiers"``: ``{name:
        counters}`` (see :class:`TierStats`)."""
        out = dict(self.primary.store.stat()) if self.primary else {"blocks": 0, "bytes": 0}
        out["tiers"] = self.stats()
        return out

    def stats(self) -> dict:
        """``{tier name: TierStats.as_dict()}``."""
        return {t.name: t.stats.as_dict() for t in self.tiers}

    def close(self) -> None:
        """Stop the timeout worker threads and close every tier's store."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        for tier in self.tiers:
            close = getattr(tier.store, "close", None)
            if close:
                close()


class _RouterView:
    __slots__ = ("router", "local")

    def __init__(self, router: Router, local):
        self.router, self.local = router, local

    def get(self, cid: bytes):
        v = self.local.get(cid)
        if v is None and len(self.router.tiers) > 1:
            v = self.router.get(cid)
        return v
