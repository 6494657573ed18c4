"""Block stores. :class:`BlockStore` is the small protocol every backend implements;
:class:`~tvcfs.store.lmdb_store.LMDBStore` is the embedded default (DESIGN.md §2)."""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol, runtime_checkable


@runtime_checkable
class BlockStore(Protocol):
    """A content-addressed block store keyed by binary CIDv1 (36 bytes).

    ``get`` returns the block's bytes or ``None``; ``put`` returns ``True`` if the block
    was new. Implementations that take blocks from outside verify them against their
    CID (:func:`tvcfs.encoding.cid.verify_block`) before storing or serving them.
    """

    def get(self, cid: bytes) -> bytes | None: ...

    def get_many(self, cids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes | None]]: ...

    def has(self, cid: bytes) -> bool: ...

    def put(self, cid: bytes, block) -> bool: ...

    def put_many(self, blocks: Iterable[tuple[bytes, bytes]]) -> int: ...

    def delete(self, cid: bytes) -> bool: ...

    def __iter__(self) -> Iterator[bytes]: ...
