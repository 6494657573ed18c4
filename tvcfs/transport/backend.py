"""The small repository interface the transport needs, and its adapter to ``tvcfs.Repo``.

Server and client only call :class:`BlockBackend` methods, so any store with refs
can be served. Binary CIDs (bytes) everywhere.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from ..encoding.cid import DAG_CBOR, RAW, cid_codec, cid_str
from ..errors import InvalidCID, MalformedObject


@dataclass
class FetchStats:
    """Outcome of a fetch from one remote (every remote kind: tvcfs/sync.py):
    ``blocks``/``nbytes`` stored (new, verified), ``wire_bytes`` received,
    ``bad_blocks`` (failed verification, dropped), ``bad_cids``, ``stray_blocks``
    (blocks of no DAG that was asked for, dropped unstored), ``missing``
    (frontier CIDs still absent), ``seconds``, ``first_block_s`` (time to the
    first block of the first request, seconds), ``transport`` ("quic/qh3", "tcp",
    "s3"), ``resumed``/``early_data`` (QUIC session resumption, 0-RTT)."""

    blocks: int = 0
    nbytes: int = 0
    wire_bytes: int = 0
    bad_blocks: int = 0
    bad_cids: list = field(default_factory=list)
    stray_blocks: int = 0
    dont_have: int = 0
    missing: list = field(default_factory=list)
    seconds: float = 0.0
    first_block_s: float | None = None
    first_block_at: float | None = None  # time.perf_counter() at the first block
    transport: str = ""
    resumed: bool = False  # QUIC: the handshake resumed a session (a ticket)
    early_data: bool = False  # QUIC: the first requests went out as 0-RTT early data


class BlockBackend(Protocol):
    """What the transport needs from a repository."""

    def get(self, cid: bytes) -> bytes | None:
        """Block bytes, or None when absent."""

    def has(self, cid: bytes) -> bool:
        """Whether the block is stored."""

    def put_many(self, blocks: Iterable[tuple[bytes, bytes]]) -> int:
        """Store already-verified blocks in one transaction; return how many were new."""

    def refs(self) -> dict[str, bytes]:
        """``{full ref name: commit CID}`` (no symbolic refs)."""

    def head(self) -> str:
        """Full name of the ref HEAD points to ("" if none)."""

    def update_ref(self, name: str, new: bytes | None, expected: bytes | None) -> None:
        """Compare-and-swap ``name`` from ``expected`` to ``new``; raises
        ``tvcfs.errors.RefConflict`` when the current value differs."""

    def sync(self) -> None:
        """Make stored blocks durable (optional: backends without it are always durable)."""

    def block_count(self) -> int:
        """Number of blocks stored (optional: a fetch into a backend without it, or
        with blocks, asks for the missing interior nodes before the leaves)."""


def links_of(cid: bytes, data, history: bool = True) -> list[bytes]:
    """Child CIDs of a block in traversal order. A commit (dag-cbor) links its
    ``tree`` and, when ``history``, its ``parents``; dag-pb its links; raw none.
    Raises ``tvcfs.errors.MalformedObject`` (naming the block) / ``InvalidCID`` on
    bad input."""
    codec = cid_codec(cid)
    if codec == RAW:
        return []
    try:
        if codec == DAG_CBOR:
            from ..encoding.commit import decode_commit

            com = decode_commit(data)
            return [com.tree] + (list(com.parents) if history else [])
        from ..dag import block_links

        return block_links(cid, data)
    except (MalformedObject, InvalidCID) as e:  # a CID's hash says nothing of its bytes' shape
        what = "commit" if codec == DAG_CBOR else "dag-pb node"
        raise MalformedObject(f"block {cid_str(cid)} is not a valid {what}: {e}") from None


def read_view(backend):
    """``backend.read_view()`` when it has one (zero-copy reads), else ``backend``."""
    rv = getattr(backend, "read_view", None)
    return rv() if rv is not None else nullcontext(backend)


def is_leaf(cid: bytes) -> bool:
    """True for a raw block (no links: its presence is all a walk needs)."""
    try:
        return cid_codec(cid) == RAW
    except InvalidCID:
        return False


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
        ``expected``."""
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
