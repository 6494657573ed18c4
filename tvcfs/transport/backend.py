"""The adapter of the transport's block interface to ``tvcfs.Repo``: :class:`RepoBackend`.

Server and client only call :class:`~.base.BlockBackend` methods (:mod:`.base`), so
any store with refs can be served. This module is at the repository level (it
records a push being received for ``tvcfs gc`` and asks :mod:`tvcfs.pack` for delta
hints); the transport's core and client import :mod:`.base`, never this module
(docs/architecture.md, "Layers"). Binary CIDs (bytes) everywhere.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..refs import check_ref
from .base import BlockBackend, FetchStats, is_leaf, links_of, read_view  # noqa: F401  (re-exported)


class RepoBackend:
    """:class:`BlockBackend` over a ``tvcfs.repo.Repo``."""

    def __init__(self, repo):
        self.repo = repo
        self.store = repo.store

    def get(self, cid: bytes) -> bytes | None:
        """Block bytes checked against the CID, or ``None``. Raises
        :class:`~tvcfs.errors.CorruptBlock`."""
        return self.store.get(cid)

    def has(self, cid: bytes) -> bool:
        """Whether the repository's store holds block ``cid``."""
        return self.store.has(cid)

    def put_many(self, blocks) -> int:
        """Store verified ``(cid, block)`` pairs without an msync per batch (:meth:`sync` once
        at the end of a transfer); how many were new. Raises
        :class:`~tvcfs.store.lmdb_store.StoreFull`."""
        # no msync per batch: :meth:`sync` once at the end of a transfer (a killed
        # process keeps committed transactions; only a machine crash needs the sync);
        # verified: hashed against their CIDs by this process (a server that serves
        # pushed blocks, a clone that checks out), so their first read skips the
        # at-rest check
        return self.store.put_many(blocks, sync=False, verified=True)

    def sync(self) -> None:
        """Make everything stored so far durable (one msync)."""
        self.store.sync()

    def receiving(self, key: str, started: bool) -> None:
        """Record (``started``) or drop the push being received under ``key``, so
        ``tvcfs gc`` does not delete its blocks before the ref update names them
        (:func:`tvcfs.gc.mark_receiving`)."""
        from ..gc import mark_receiving

        mark_receiving(self.repo, key, started)

    def delta_hints(self, heads: list[bytes], have_roots: list[bytes]) -> dict:
        """``{leaf CID: tvcfs.pack.Hint}`` for the leaves of the commits reachable from
        ``heads`` that are not in the history of ``have_roots`` (binary commit CIDs;
        those absent here are skipped): :func:`tvcfs.pack.delta_hints`. Reads commits,
        directories, file indexes and safetensors headers; raises
        :class:`~tvcfs.errors.TvcfsError` on a damaged one."""
        from ..pack import delta_hints

        held = set(self.repo.ancestors(have_roots, missing_ok=True))
        return delta_hints(self.repo, heads, lambda cs: [c in held for c in cs])

    def block_count(self) -> int:
        """Number of blocks stored (O(1): LMDB's entry count)."""
        return self.store.stat()["blocks"]

    @contextmanager
    def read_view(self):
        """A backend over one read snapshot of the store whose ``get`` returns raw
        leaves as zero-copy memoryviews of the map (interior nodes as ``bytes``),
        valid until the ``with`` block ends: the server sends from it without
        copying block data out of the store."""
        with self.store.view() as blocks:
            yield _TxnView(self, blocks)

    def refs(self) -> dict[str, bytes]:
        """Every ref of the repository, name to binary commit CID."""
        return self.repo.refs()

    def head(self) -> str:
        """The ref HEAD points at (``"refs/heads/main"``), or ``""`` when HEAD is unborn or
        unreadable."""
        try:
            return self.repo.head_ref() or ""
        except Exception:  # noqa: BLE001 - an unborn HEAD is not an error here
            return ""

    def update_ref(self, name: str, new: bytes | None, expected: bytes | None) -> None:
        """Compare-and-swap ref ``name`` from ``expected`` to ``new`` (``None`` deletes),
        logged as a push. Raises :class:`~tvcfs.errors.RefConflict` if the ref is not at
        ``expected``, :class:`~tvcfs.refs.InvalidRefName` for a new ref that is not a
        valid branch or tag name (:func:`tvcfs.refs.check_ref`)."""
        if new is not None:
            check_ref(name)
        self.repo.update_ref(name, new, expected, message="push")


class _TxnView:
    """:class:`BlockBackend` reads through one read transaction (see ``read_view``)."""

    def __init__(self, backend: RepoBackend, blocks):
        self._backend = backend
        self._blocks = blocks

    def get(self, cid: bytes):
        """Block ``cid`` checked against its CID (the store's verified read), or
        ``None``. Raises :class:`~tvcfs.errors.CorruptBlock`."""
        v = self._blocks.get(cid)
        if v is None:
            return None
        return v if is_leaf(cid) else bytes(v)

    def has(self, cid: bytes) -> bool:
        return self._blocks.has(cid)

    def __getattr__(self, name):  # refs, head, put_many, ...: the backend's own
        return getattr(self._backend, name)
