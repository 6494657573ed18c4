"""Commits as dag-cbor (0x71) maps.

Shape (docs/format.md)::

    {"tree": CID, "parents": [CID, ...], "author": {"name": str, "email": str},
     "message": str, "timestamp": int (Unix seconds), "metadata": {str: ...}}

Encoded with the ``dag-cbor`` library (spec: https://ipld.io/specs/codecs/dag-cbor/spec/,
map keys in length-first canonical order, CIDs as tag 42), decoded with the strict,
fast :mod:`tvcfs.encoding.dagcbor`. Numbers in ``metadata`` are ints or finite
floats: DAG-CBOR always encodes a float as an IEEE-754 binary64 (major type 7,
``0xfb``), never a shorter form, so a float parsed from the same decimal text is the
same eight bytes and gives the same CID (see docs/format.md, "Commit metadata");
NaN and infinities are refused (DAG-CBOR forbids them).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import MalformedObject
from . import dagcbor
from .cid import DAG_CBOR, make_cid
from .dagcbor import Link


@dataclass(frozen=True)
class Commit:
    """A decoded commit. ``tree`` and ``parents`` are binary CIDs; ``timestamp`` is
    Unix seconds (int); ``metadata`` a map of str keys to ints, finite floats,
    strings, bools, bytes, lists, maps or CID links as ``multiformats.CID`` objects; decoding keeps
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

        check_metadata(self.metadata)
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


def check_metadata(obj, path="metadata") -> None:
    """Refuse what DAG-CBOR cannot hold in commit metadata: non-string map keys, NaN
    and infinite floats. Raises :class:`MalformedObject` naming the key."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise MalformedObject(f"{path} is {obj}: commit metadata numbers must be finite "
                              "(DAG-CBOR has no NaN or infinity); store it as text instead")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise MalformedObject(f"metadata keys must be strings ({path})")
            check_metadata(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_metadata(v, f"{path}[{i}]")


_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")


def parse_meta_value(text: str):
    """A ``--meta KEY=VALUE`` value: an ``int`` for integer text (``3``, ``-12``), a
    ``float`` for decimal text (``3e-5``, ``0.1``: Python's correctly rounded
    parse, so the same text always gives the same binary64 and the same CID),
    ``True``/``False`` for ``true``/``false``, else the text itself (``0x10``,
    ``1_000`` stay strings). NaN and infinities raise :class:`MalformedObject`."""
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    if text in ("true", "false"):
        return text == "true"
    if text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise MalformedObject(f"{text!r} is not a finite number: commit metadata cannot hold NaN "
                              "or infinities (DAG-CBOR forbids them); use another value")
    return text


def parse_metadata(items) -> dict:
    """``{"lr": 3e-05, "epochs": 3}`` from ``["lr=3e-5", "epochs=3"]`` (each
    ``KEY=VALUE``, values by :func:`parse_meta_value`; a later key wins). Raises
    :class:`MalformedObject` for an item without ``=`` or with an empty key."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MalformedObject(f"--meta {item!r}: expected KEY=VALUE (e.g. --meta lr=3e-5)")
        out[key.strip()] = parse_meta_value(value)
    return out


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
