"""Commits as dag-cbor (0x71) maps.

Shape (docs/format.md)::

    {"tree": CID, "parents": [CID, ...], "author": {"name": str, "email": str},
     "message": str, "timestamp": int (Unix seconds), "metadata": {str: ...}}

Encoded with the ``dag-cbor`` library (spec: https://ipld.io/specs/codecs/dag-cbor/spec/,
map keys in length-first canonical order, CIDs as tag 42), decoded with the strict,
fast :mod:`tvcfs.encoding.dagcbor`. Floats are refused in ``metadata`` so that a
commit's CID never depends on float formatting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import MalformedObject
from . import dagcbor
from .cid import DAG_CBOR, make_cid
from .dagcbor import Link


@dataclass(frozen=True)
class Commit:
    """A decoded commit. ``tree`` and ``parents`` are binary CIDs; ``timestamp`` is
    Unix seconds (int); ``metadata`` a map of str keys to ints, strings, bytes, lists,
    maps or CID links as ``multiformats.CID`` objects (no floats); decoding keeps
    them as ``CID`` objects so that ``decode_commit(b).encode() == b``."""

    tree: bytes
    parents: tuple = ()
    author_name: str = ""
    author_email: str = ""
    message: str = ""
    timestamp: int = 0
    metadata: dict = field(default_factory=dict)

    def encode(self) -> bytes:
        """The dag-cbor block of this commit."""
        import dag_cbor
        from multiformats import CID

        _check_no_floats(self.metadata)
        obj = {
            "tree": CID.decode(self.tree),
            "parents": [CID.decode(p) for p in self.parents],
            "author": {"name": self.author_name, "email": self.author_email},
            "message": self.message,
            "timestamp": int(self.timestamp),
            "metadata": self.metadata,
        }
        return dag_cbor.encode(obj)

    def cid_and_block(self) -> tuple[bytes, bytes]:
        """``(binary CID, dag-cbor block)`` of this commit."""
        block = self.encode()
        return make_cid(DAG_CBOR, block), block


def _check_no_floats(obj, path="metadata"):
    if isinstance(obj, float):
        raise ValueError(f"floats are not allowed in hashed objects ({path})")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"metadata keys must be strings ({path})")
            _check_no_floats(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_no_floats(v, f"{path}[{i}]")


def decode_commit(block) -> Commit:
    """Decode a dag-cbor commit block (with :func:`tvcfs.encoding.dagcbor.decode`,
    strict). Raises :class:`MalformedObject` when the block is not dag-cbor or lacks
    the commit fields."""
    obj = dagcbor.decode(block)
    try:
        if not isinstance(obj, dict):
            raise TypeError("not a map")
        tree = obj["tree"]
        if not isinstance(tree, Link):
            raise TypeError("tree is not a CID")
        parents = obj.get("parents", [])
        if not isinstance(parents, list) or not all(isinstance(p, Link) for p in parents):
            raise TypeError("parents is not a list of CIDs")
        author = obj.get("author") or {}
        timestamp = obj.get("timestamp", 0)
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise TypeError("timestamp is not an integer")
        metadata = obj.get("metadata") or {}
        if not isinstance(author, dict) or not isinstance(metadata, dict):
            raise TypeError("author or metadata is not a map")
        return Commit(
            tree=bytes(tree),
            parents=tuple(bytes(p) for p in parents),
            author_name=str(author.get("name", "")),
            author_email=str(author.get("email", "")),
            message=str(obj.get("message", "")),
            timestamp=timestamp,
            metadata=_unwrap(metadata),
        )
    except (KeyError, TypeError) as e:
        raise MalformedObject(f"not a tvcfs commit: {e}") from None


def _unwrap(obj):
    # CID links inside metadata become ``multiformats.CID`` objects (the type the
    # dag-cbor encoder writes as tag 42): as bytes they would re-encode as byte
    # strings, and a decoded commit would no longer hash to its own CID.
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unwrap(v) for v in obj]
    if isinstance(obj, Link):
        from multiformats import CID

        return CID.decode(bytes(obj))
    return obj


def cbor_links(block) -> list[bytes]:
    """Every CID linked from a dag-cbor block (binary CIDs, document order). Raises
    :class:`MalformedObject` for a block that is not strict DAG-CBOR."""
    out: list[bytes] = []

    def walk(o):
        if isinstance(o, Link):
            out.append(bytes(o))
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(dagcbor.decode(block))
    return out
