"""The typed repository configuration: one home for the settings and records that live
beside the refs (after git's ``config`` and dulwich's ``ConfigFile``), stored in the
repository store's ``meta`` sub-database so that they change in the same transaction
as a commit when they must (docs/repository.md, "Configuration").

Every key has a type and a default; :meth:`RepoConfig.set` refuses a value of another
type with :class:`ConfigError`. Keys a user may set with ``tvcfs config`` are in
:data:`USER_KEYS`; the others are kept by tvcfs itself.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Callable

from .errors import TvcfsError


class ConfigError(TvcfsError, ValueError):
    """An unknown configuration key, or a value of the wrong type."""


# key: (type, default, what it holds[, type of each item: a dict's values, a list's elements])
KEYS: dict[str, tuple] = {
    "format": (int, None, "repository format version"),
    "created": (int, None, "creation time (Unix seconds)"),
    "remotes": (dict, {}, "remote name -> URL", str),
    "lazy": (bool, False, "blocks are fetched on demand from the remotes (clone --lazy)"),
    "conflicts": (list, [], "conflict branches recorded by commits onto moved branches", dict),
    "peer_scores": (dict, {}, "peer URL -> reputation record", dict),
    "worktrees": (dict, {}, "real path -> {branch, base, tree} of directories made by checkout", dict),
    "hf.repo_id": (str, None, "the Hugging Face repository ID (org/name) of this repository"),
    "index": (dict, None, "the staging index: {branch, base, tree} (tvcfs add / rm / restore)"),
    "hf.imported": (dict, {}, "repo_id -> {prefix, snapshots: {hash: {commit, files}}, refs} of tvcfs import-hf",
                    dict),
    "fetching": (dict, {}, "URL#PID#N -> {url, pid, roots, time} of a fetch not finished: gc keeps what it stored",
                 dict),
    "receiving": (dict, {}, "pushes being received by tvcfs serve: key -> {pid, time} (time: last renewal; gc refuses while one is alive and renewed within the hour)", dict),
    "pack.keep_hot": (int, 1, "newest commits of each branch and tag whose blocks tvcfs pack keeps raw"),
    "verify.reads": (str, "checksum", "how reads check stored blocks: 'checksum' (the xxh3 recorded when "
                     "each was stored; sha-256 against the CID where none is) or 'cid' (sha-256 always)"),
}

# huggingface_hub's validate_repo_id: [namespace/]name of word characters, '-', '.';
# no '--' or '..', not ending in '.git', at most 96 characters per part
_HF_PART = re.compile(r"[\w.-]{1,96}")


def parse_hf_repo_id(value: str) -> str:
    """A Hugging Face repository ID (``org/name`` or ``name``), as huggingface_hub
    accepts it. Raises :class:`ConfigError`."""
    parts = value.split("/")
    if (not 1 <= len(parts) <= 2 or not all(_HF_PART.fullmatch(p) for p in parts)
            or "--" in value or ".." in value or value.endswith(".git")
            or any(p[0] in "-." or p[-1] in "-." for p in parts)):
        raise ConfigError(f"invalid Hugging Face repository ID {value!r}: expected 'org/name' or 'name' "
                          "(letters, digits, '_', '-', '.'; no '--' or '..')")
    return value


def parse_keep_hot(value: str) -> int:
    """A count of commits (an integer >= 0). Raises :class:`ConfigError`."""
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise ConfigError(f"pack.keep_hot takes a number of commits (0, 1, 2, ...), not {value!r}")
    return n


VERIFY_READS = ("checksum", "cid")


def parse_verify_reads(value: str) -> str:
    """``"checksum"`` or ``"cid"`` (docs/repository.md, "Verified reads"); read by
    :class:`~tvcfs.store.lmdb_store.LMDBStore` when it opens. Raises :class:`ConfigError`."""
    if value not in VERIFY_READS:
        raise ConfigError(f"verify.reads takes 'checksum' (the default: blocks checked against the checksum "
                          f"recorded when they were stored) or 'cid' (every block hashed against its CID), "
                          f"not {value!r}")
    return value


# keys a user may set with `tvcfs config KEY VALUE`: key -> parser of the command line's text
USER_KEYS: dict[str, Callable[[str], Any]] = {"hf.repo_id": parse_hf_repo_id, "pack.keep_hot": parse_keep_hot,
                                             "verify.reads": parse_verify_reads}


def _is(value, typ: type) -> bool:
    return isinstance(value, typ) and not (typ is int and isinstance(value, bool))


def _wrong_type(key: str, value) -> str | None:
    """What is wrong with ``value`` for ``key`` (its type, or the type of one of its
    items), or ``None``."""
    typ, item = KEYS[key][0], (KEYS[key][3:] or (None,))[0]
    if not _is(value, typ):
        return f"configuration {key} takes a {typ.__name__}, not a {type(value).__name__}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        if item is not None and not _is(v, item):
            return f"configuration {key}: its item {k!r} is a {type(v).__name__}, not a {item.__name__}"
    return None


def _check(key: str, value) -> None:
    if key not in KEYS:
        raise ConfigError(f"unknown configuration key {key!r} (known: {', '.join(sorted(KEYS))})")
    if value is not None and (wrong := _wrong_type(key, value)):
        raise ConfigError(wrong)


class RepoConfig:
    """The configuration of the repository whose store is ``store`` (an
    :class:`~tvcfs.store.lmdb_store.LMDBStore`). Reads return copies (changing them
    changes nothing); writes take an open write transaction ``txn`` (``store.write()``)
    to land with other changes, or open their own."""

    def __init__(self, store):
        self.store = store

    def get(self, key: str, txn=None):
        """The value of ``key``, or its default. Raises :class:`ConfigError` for an
        unknown key, and for a stored record that is not JSON or not of the key's type
        (a damaged record: the message names it and how to remove it)."""
        _check(key, None)
        src = txn if txn is not None else self.store
        try:
            v = src.get_meta(key)
        except ValueError as e:  # not JSON (json.JSONDecodeError, UnicodeDecodeError)
            raise self._damaged(key, f"not JSON: {e}") from None
        if v is None:
            return copy.deepcopy(KEYS[key][1])
        if wrong := _wrong_type(key, v):
            raise self._damaged(key, wrong)
        return v

    def _damaged(self, key: str, what: str) -> ConfigError:
        if key in ("format", "created"):
            advice = "restore the .tvcfs/store directory from a backup"
        else:
            advice = (f"`tvcfs config --unset {key}` removes it"
                      + ("" if key in USER_KEYS else f" (its default: {KEYS[key][1]!r})"))
        return ConfigError(f"the configuration record {key!r} in {self.store.path} is damaged ({what}): {advice}")

    def damaged(self, key: str) -> bool:
        """True if the stored record of ``key`` is not JSON or not of the key's type."""
        try:
            self.get(key)
        except ConfigError:
            return True
        return False

    def set(self, key: str, value, txn=None) -> None:
        """Set ``key`` (``None`` removes it). Raises :class:`ConfigError`."""
        _check(key, value)
        if txn is not None:
            txn.set_meta(key, value)
        else:
            with self.store.write() as w:
                w.set_meta(key, value)

    def set_text(self, key: str, text: str | None, txn=None):
        """Set a user key (:data:`USER_KEYS`) from command-line ``text`` (``None``
        removes it); returns the stored value. Raises :class:`ConfigError` for a key
        tvcfs keeps itself or a value the key's parser refuses (nothing changes). A
        damaged record of a key tvcfs keeps (:meth:`damaged`; not ``format`` or
        ``created``) may be removed (``text=None``): the key reads as its default."""
        if key not in USER_KEYS and not (text is None and key in KEYS and key not in ("format", "created")
                                          and self.damaged(key)):
            known = ", ".join(sorted(USER_KEYS))
            raise ConfigError(f"{key!r} is not a key you can set (settable: {known})"
                              if key in KEYS else f"unknown configuration key {key!r} (settable: {known})")
        value = None if text is None else USER_KEYS[key](text)
        self.set(key, value, txn)
        return value

    def user_values(self) -> dict:
        """``{key: value}`` of the user keys that are set (not their defaults)."""
        def stored(k: str) -> bool:
            try:
                return self.store.get_meta(k) is not None
            except ValueError:  # not JSON: get() names the damaged record
                return True

        return {k: self.get(k) for k in sorted(USER_KEYS) if stored(k)}

    def update(self, key: str, fn: Callable, txn=None):
        """Read-modify-write ``key`` in one transaction: ``fn(value)`` returns the new
        value (or changes it in place and returns ``None``). Returns the new value."""
        if txn is None:
            with self.store.write() as w:
                return self.update(key, fn, w)
        value = self.get(key, txn)
        new = fn(value)
        value = value if new is None else new
        self.set(key, value, txn)
        return value

    # the common keys, typed
    @property
    def remotes(self) -> dict:
        """``{name: url}``."""
        return self.get("remotes")

    @property
    def lazy(self) -> bool:
        """Whether blocks are fetched on demand from the remotes (a ``clone --lazy``
        repository)."""
        return self.get("lazy")

    @property
    def conflicts(self) -> list:
        """The conflict branches recorded by commits onto moved branches (a list)."""
        return self.get("conflicts")

    @property
    def peer_scores(self) -> dict:
        """Reputation records by peer URL (a dict)."""
        return self.get("peer_scores")

    @property
    def worktrees(self) -> dict:
        """``{real path: {branch, base, tree}}`` of the directories made by ``tvcfs checkout``."""
        return self.get("worktrees")

    @property
    def hf_repo_id(self) -> str | None:
        """The Hugging Face repository ID (``org/name``) of this repository, or ``None``."""
        return self.get("hf.repo_id")
