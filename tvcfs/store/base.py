"""The block layer's interface: :class:`BlockStore` and its optional capabilities.

Every backend (the embedded LMDB store, the in-memory store, the router of tiers, and
remote backends) implements :class:`BlockStore`. Blocks are keyed by binary CIDv1
(36 bytes, :mod:`tvcfs.encoding.cid`); values are the block's raw bytes. See
``docs/architecture.md`` for where the block layer sits.

Errors separate the two kinds of absence (after Kubo's blockstore and s3ql's
backends): ``get`` returns ``None`` when a store *knows* it does not hold a block
("not found"), and raises :class:`tvcfs.errors.BlockUnavailable` when it cannot say
right now (a peer or bucket unreachable, a timeout). A router falls back to its next
tier on either; a caller that gets ``None`` from every tier raises
:class:`tvcfs.errors.BlockNotFound`.

Capabilities are declared in the ``capabilities`` attribute (a frozenset of the
names below) so that callers ask instead of probing with ``isinstance``:

``ZERO_COPY``    ``view()`` is a context manager giving a :class:`BlockView` whose
                 ``get`` returns read-only buffers into the store's memory map
                 (valid only inside the ``with`` block).
``MAP_OFFSETS``  ``map_range()`` gives the address range of the store's file map, so
                 a zero-copy buffer's address is a file offset (for readahead hints
                 with ``posix_fadvise`` / ``madvise``); ``file_span(buf)`` gives
                 ``(fd, offset)`` of such a buffer (``os.sendfile``: the hub's blob port).
``PERSISTENT``   blocks survive the process.
``REMOTE``       reads may be slow or unavailable (network): callers should batch,
                 time out, and verify what they receive.
``TRANSACTIONS`` ``write()`` is a context manager giving a write transaction in which
                 blocks (and, for the repository store, refs) change atomically.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Protocol, runtime_checkable

from ..errors import TvcfsError

ZERO_COPY = "zero-copy"
MAP_OFFSETS = "map-offsets"
PERSISTENT = "persistent"
REMOTE = "remote"
TRANSACTIONS = "transactions"


# Fetch priorities of the block layer, higher is more urgent (docs/lazy.md, "Reads and
# priorities"): a foreground read waits on its blocks; tensor readahead pulls the rest
# of a tensor being read; sequential readahead follows a scan; prefetch fills idle time.
PRIO_FOREGROUND, PRIO_TENSOR, PRIO_SEQUENTIAL, PRIO_PREFETCH = 3, 2, 1, 0
PRIO_NAMES = {PRIO_FOREGROUND: "foreground", PRIO_TENSOR: "tensor",
              PRIO_SEQUENTIAL: "sequential", PRIO_PREFETCH: "prefetch"}
DEFAULT_FETCH_TIMEOUT = 30.0  # seconds a foreground fetch of a block source waits


class ReadOnlyStore(TvcfsError):
    """A write to a store that only reads (a gateway, the peer tier)."""


@runtime_checkable
class BlockStore(Protocol):
    """A content-addressed block store keyed by binary CIDv1 (36 bytes).

    - ``get(cid)`` → the block's bytes, or ``None`` if the store does not hold it;
      raises :class:`~tvcfs.errors.BlockUnavailable` if it cannot answer now.
    - ``get_many(cids)`` → iterator of ``(cid, bytes | None)`` in the order given.
    - ``has(cid)`` → bool.
    - ``put(cid, block)`` → ``True`` if the block was new. Stores do not hash what
      they are given: blocks from outside go through :mod:`tvcfs.store.verify` first.
    - ``put_many(blocks)`` → how many of the ``(cid, block)`` pairs were new.
    - ``delete(cid)`` → ``True`` if it was there.
    - ``__iter__()`` → every CID held (order unspecified).
    - ``stat()`` → ``{"blocks": int, "bytes": int}`` (bytes: stored size, may be
      approximate).
    - ``capabilities``: frozenset of the capability names of this module.
    - ``close()``.
    """

    capabilities: frozenset

    def get(self, cid: bytes) -> bytes | None:
        """The block's bytes for binary CIDv1 ``cid``, or ``None`` if the store does not hold
        it. Raises :class:`~tvcfs.errors.BlockUnavailable` if it cannot answer now."""

    def get_many(self, cids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes | None]]:
        """``(cid, bytes | None)`` for each of ``cids``, in the order given. Raises
        :class:`~tvcfs.errors.BlockUnavailable` as :meth:`get`."""

    def has(self, cid: bytes) -> bool:
        """Whether the store holds block ``cid``."""

    def put(self, cid: bytes, block) -> bool:
        """Store ``block`` (bytes-like) under ``cid``, unhashed (verify blocks from outside
        with :mod:`tvcfs.store.verify` first); ``True`` if it was new. Raises
        :class:`ReadOnlyStore` for a store that only reads."""

    def put_many(self, blocks: Iterable[tuple[bytes, bytes]]) -> int:
        """Store each ``(cid, block)`` pair as :meth:`put`; how many were new. Raises
        :class:`ReadOnlyStore` for a store that only reads."""

    def delete(self, cid: bytes) -> bool:
        """Remove block ``cid``; ``True`` if it was there. Raises :class:`ReadOnlyStore` for a
        store that only reads."""

    def __iter__(self) -> Iterator[bytes]: ...

    def stat(self) -> dict:
        """``{"blocks": int, "bytes": int}`` (bytes: stored size, may be approximate); a store
        may add keys."""

    def close(self) -> None:
        """Release the store's resources (files, connections, threads); it is not used after."""


class BlockView(Protocol):
    """Read access inside one consistent snapshot (``store.view()``): ``get(cid)``
    returns a read-only buffer (``memoryview`` or ``bytes``) or ``None``; buffers are
    valid only until the view's ``with`` block exits."""

    def get(self, cid: bytes):
        """Block ``cid`` as a read-only buffer (``memoryview`` or ``bytes``) valid until the
        view closes, or ``None`` if not held."""


class _CopyView:
    """A :class:`BlockView` over a store without zero-copy reads (copies per get)."""

    __slots__ = ("store",)

    def __init__(self, store):
        self.store = store

    def get(self, cid: bytes):
        return self.store.get(cid)


@contextmanager
def view(store):
    """``with view(store) as v: v.get(cid)`` — the store's zero-copy view when it has
    the ``ZERO_COPY`` capability, else a view that copies. The one way code above the
    block layer reads many blocks in one snapshot."""
    if ZERO_COPY in getattr(store, "capabilities", ()):
        with store.view() as v:
            yield v
    else:
        yield _CopyView(store)


class StoreBase:
    """Defaults for the derived methods of :class:`BlockStore` in terms of ``get``,
    ``put`` and ``has`` (a backend overrides what it can do faster)."""

    capabilities: frozenset = frozenset()

    def get_many(self, cids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes | None]]:
        """``(cid, bytes | None)`` per CID in the order given, one :meth:`get` each."""
        for cid in cids:
            yield cid, self.get(cid)

    def put_many(self, blocks: Iterable[tuple[bytes, bytes]]) -> int:
        """How many of the ``(cid, block)`` pairs were new, one :meth:`put` each."""
        return sum(1 for cid, block in blocks if self.put(cid, block))

    def has(self, cid: bytes) -> bool:
        """Whether :meth:`get` finds block ``cid``."""
        return self.get(cid) is not None

    def close(self) -> None:
        """Nothing to release by default."""
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
