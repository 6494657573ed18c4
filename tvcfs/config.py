"""Repository configuration: a small set of known, typed keys kept in the store's
``meta`` sub-database under ``config`` (a JSON map ``{key: value}``), read and set
with ``tvcfs config KEY [VALUE]`` (docs/repository.md, "Configuration").

Each key has a parser that turns the command line's string into the stored value
and refuses a bad one with one line saying what is expected; unknown keys are
refused, so a typo never writes a setting nothing reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .errors import TvcfsError

META_KEY = "config"

# huggingface_hub's validate_repo_id: [namespace/]name of word characters, '-', '.';
# no '--' or '..', not ending in '.git', at most 96 characters per part
_HF_PART = re.compile(r"[\w.-]{1,96}")


class ConfigError(TvcfsError, ValueError):
    """An unknown configuration key or a value its key refuses."""


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


@dataclass(frozen=True)
class Key:
    """A known key: ``parse(str) -> value`` (raises :class:`ConfigError`) and a
    one-line ``help``."""

    parse: Callable[[str], object]
    help: str


KEYS: dict[str, Key] = {
    "hf.repo_id": Key(parse_hf_repo_id, "the Hugging Face repository this repository holds (org/name): "
                                        "names the MNT/hf/ view; set by tvcfs import-hf"),
}


def _key(name: str) -> Key:
    k = KEYS.get(name)
    if k is None:
        raise ConfigError(f"unknown configuration key {name!r} (known: {', '.join(sorted(KEYS))})")
    return k


def get_all(store) -> dict:
    """Every set key of the repository whose store is ``store`` (an ``LMDBStore`` or
    an open write transaction of one): ``{key: value}``."""
    return dict(store.get_meta(META_KEY, {}) or {})


def get(store, name: str, default=None):
    """The value of key ``name``, else ``default``. Raises :class:`ConfigError` for
    an unknown key."""
    _key(name)
    return get_all(store).get(name, default)


def put_in(txn, name: str, value) -> object:
    """Set key ``name`` in the open write transaction ``txn`` to ``value`` (a string,
    parsed by the key; ``None`` removes it). Returns the stored value. Raises
    :class:`ConfigError` (nothing changes)."""
    k = _key(name)
    conf = get_all(txn)
    if value is None:
        conf.pop(name, None)
    else:
        value = k.parse(value)
        conf[name] = value
    txn.set_meta(META_KEY, conf)
    return value


def put(store, name: str, value) -> object:
    """Set key ``name`` (see :func:`put_in`) in a write transaction of its own."""
    with store.write() as w:
        return put_in(w, name, value)
