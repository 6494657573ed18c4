"""The block interface the transport's core and client work over (no repository).

:class:`BlockBackend` is what the sessions (:mod:`.session`), the DAG selection
(:mod:`.selection`) and the client (:mod:`.client`) read and write; the block layer's
peer tier (:mod:`tvcfs.store.peers`) drives that client, so nothing here or in the
modules it imports may reach the repository layer (docs/architecture.md, "Layers";
``tests/test_layering.py``). The adapter to ``tvcfs.Repo`` is
:class:`~.backend.RepoBackend`, one layer up. Binary CIDs (bytes) everywhere.
"""

from __future__ import annotations

from contextlib import nullcontext
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

    def delta_hints(self, heads: list[bytes], have_roots: list[bytes]) -> dict:
        """``{leaf CID: hint}`` (optional: without it no transfer is thin): how the raw
        tensor leaves of the commits reachable from ``heads`` that a peer holding the
        commits ``have_roots`` lacks may be sent as deltas — ``hint.elem`` (bytes per
        element) and ``hint.bases`` (candidate base CIDs of the same length, best
        first). Choosing bases needs the repository's commits, so the repository's
        adapter gives it (:meth:`.backend.RepoBackend.delta_hints`:
        :func:`tvcfs.pack.delta_hints`); the transport never imports the packer."""


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
