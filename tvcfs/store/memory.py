"""An in-memory :class:`~tvcfs.store.base.BlockStore` (a dict): for tests, caches and
short-lived tiers. Thread-safe. Not persistent."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from .base import ZERO_COPY, StoreBase


class MemoryStore(StoreBase):
    """Blocks in a dict ``{binary CID: bytes}``. ``get`` returns the stored ``bytes``
    object itself (immutable, so no copy is needed)."""

    capabilities = frozenset({ZERO_COPY})

    def __init__(self, name: str = "memory"):
        self.name = name
        self._blocks: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def get(self, cid: bytes) -> bytes | None:
        """Block ``cid`` (``bytes``) or ``None``."""
        return self._blocks.get(bytes(cid))

    def has(self, cid: bytes) -> bool:
        """Whether block ``cid`` is held."""
        return bytes(cid) in self._blocks

    def put(self, cid: bytes, block) -> bool:
        """Keep a copy of ``block`` under ``cid``; ``True`` if it was new."""
        key = bytes(cid)
        with self._lock:
            if key in self._blocks:
                return False
            self._blocks[key] = bytes(block)
            return True

    def delete(self, cid: bytes) -> bool:
        """Drop block ``cid``; ``True`` if it was there."""
        with self._lock:
            return self._blocks.pop(bytes(cid), None) is not None

    def __iter__(self) -> Iterator[bytes]:
        with self._lock:
            keys = list(self._blocks)
        return iter(keys)

    def stat(self) -> dict:
        """``{"blocks": count, "bytes": total size of the blocks}``."""
        with self._lock:
            return {"blocks": len(self._blocks), "bytes": sum(map(len, self._blocks.values()))}

    @contextmanager
    def view(self):
        """A context manager giving the store itself as its :class:`BlockView` (blocks are
        immutable ``bytes``)."""
        yield self
