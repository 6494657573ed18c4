"""Refs, the reflog and pins kept apart from blocks (as dulwich keeps refs out of its
object store), each behind its own small read interface. On LMDB they share the
repository's environment with the blocks, in their own sub-databases, so that a
commit — its blocks and its ref update — is one write transaction
(:class:`~tvcfs.store.lmdb_store.WriteTxn`: ``set_ref`` compare-and-swap,
``append_reflog``, ``pin``/``unpin``, ``set_meta``). Layout in docs/repository.md.
"""

from __future__ import annotations

import json

from ..encoding.cid import cid_str
from ..errors import TvcfsError


def _record(v: bytes, what: str, env, fix: str) -> dict:
    """The JSON object of a reflog or pin record; :class:`TvcfsError` naming the record
    (``what``), the store and what to do (``fix``) when it is damaged (not UTF-8 JSON,
    not an object)."""
    try:
        e = json.loads(v)
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        e = exc
    if not isinstance(e, dict):
        raise TvcfsError(f"{what} in {env.path()} is damaged (not a JSON object): {fix}")
    return e


def _prefixed(env, db, prefix: bytes):
    """``(key, value)`` (bytes) of every record of ``db`` whose key starts with ``prefix``."""
    with env.begin() as txn:
        with txn.cursor(db=db) as cur:
            if cur.set_range(prefix):
                for k, v in cur.iternext():
                    if not k.startswith(prefix):
                        break
                    yield bytes(k), bytes(v)


class RefStore:
    """Refs of a repository: ``refs/heads/NAME``, ``refs/tags/NAME``,
    ``refs/remotes/R/NAME`` → binary CID; ``HEAD`` → ``b"ref: refs/heads/NAME"``."""

    def __init__(self, store):
        self.env, self.db = store.env, store.dbs["refs"]

    def get(self, name: str) -> bytes | None:
        """The value of ref ``name`` (binary CID or ``b"ref: …"``), or ``None``."""
        with self.env.begin() as txn:
            v = txn.get(name.encode(), db=self.db)
            return bytes(v) if v is not None else None

    def all(self, prefix: str = "") -> dict:
        """``{name: value}`` for every ref starting with ``prefix``."""
        return {k.decode(): v for k, v in _prefixed(self.env, self.db, prefix.encode())}


class Reflog:
    """Every ref change, so no commit is ever lost: key ``REF \\0 seq`` (8 bytes
    big-endian) → JSON ``{old, new, time, message[, rejected]}``."""

    def __init__(self, store):
        self.env, self.db = store.env, store.dbs["reflog"]

    def entries(self, name: str | None = None) -> list:
        """Entries oldest first, as dicts ``{ref, seq, old, new, time, message[,
        rejected]}`` (CIDs as strings), for ref ``name`` or for every ref."""
        out = []
        for k, v in _prefixed(self.env, self.db, (name.encode() + b"\x00") if name else b""):
            # key = REF \0 seq (8 bytes BE); seq bytes may be \0 themselves
            ref, seq = k[:-9].decode(errors="replace"), int.from_bytes(k[-8:], "big")
            e = _record(v, f"reflog entry {seq} of {ref}", self.env,
                        "restore the store from a backup (tvcfs fsck lists what else is damaged)")
            e["ref"], e["seq"] = ref, seq
            out.append(e)
        return out


class PinStore:
    """Pinned DAG roots: binary CID → JSON ``{name, time}``."""

    def __init__(self, store):
        self.env, self.db = store.env, store.dbs["pins"]

    def all(self) -> dict:
        """``{binary CID: {"name": str, "time": int}}``. Raises :class:`TvcfsError`
        naming a damaged record."""
        with self.env.begin() as txn:
            with txn.cursor(db=self.db) as cur:
                return {bytes(k): _record(v, f"the pin of {cid_str(bytes(k))}", self.env,
                                          f"run tvcfs pin rm {cid_str(bytes(k))}, then pin it again")
                        for k, v in cur.iternext()}
