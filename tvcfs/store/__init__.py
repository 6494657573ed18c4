"""The block layer: the :class:`BlockStore` interface, its backends, the router, and
the backend registry. See ``docs/architecture.md``.

Modules: :mod:`~tvcfs.store.base` (the protocol, capabilities), :mod:`~tvcfs.store.lmdb_store`
(the embedded default), :mod:`~tvcfs.store.memory`, :mod:`~tvcfs.store.verify` (the one
verify-and-store path), :mod:`~tvcfs.store.router` (ordered tiers), :mod:`~tvcfs.store.s3`
(S3-compatible object storage: packs, indexes, refs by conditional writes),
:mod:`~tvcfs.store.gateway` (the IPFS network through HTTP trustless gateways).

Backends are chosen by name from a registry (after ipfs_accelerate_py's backend
router): :func:`register_backend` adds a factory, :func:`get_backend` builds one.
The name is, in order: the argument; the ``TVCFS_BACKEND`` environment variable; the
default set by :func:`set_default_backend`; ``"lmdb"``. ``TVCFS_BACKENDS`` (a comma
list, e.g. ``lmdb,memory``) builds a :class:`~tvcfs.store.router.Router` of those
backends in that order instead.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

from ..errors import TvcfsError
from .base import (  # noqa: F401
    MAP_OFFSETS, PERSISTENT, REMOTE, TRANSACTIONS, ZERO_COPY, BlockStore, BlockView, StoreBase, view,
)

__all__ = ["BlockStore", "BlockView", "StoreBase", "view", "register_backend", "get_backend",
           "set_default_backend", "backend_names", "remote_tiers", "UnknownBackend", "ZERO_COPY", "MAP_OFFSETS",
           "PERSISTENT", "REMOTE", "TRANSACTIONS"]

_factories: dict[str, Callable] = {}
_default: str | None = None
_lock = threading.Lock()


class UnknownBackend(TvcfsError, KeyError):
    """No backend is registered under that name."""

    def __str__(self):
        return self.args[0]


def register_backend(name: str, factory: Callable, replace: bool = False) -> None:
    """Register ``factory(repo=None, **options) -> BlockStore`` under ``name``.

    ``repo`` is the :class:`tvcfs.Repo` the backend serves (``None`` for a detached
    store); options come from the caller or the repository's configuration. Raises
    ``ValueError`` if ``name`` is taken and not ``replace``."""
    if not name or "," in name:
        raise ValueError(f"invalid backend name {name!r}")
    with _lock:
        if name in _factories and not replace:
            raise ValueError(f"backend {name!r} is already registered")
        _factories[name] = factory


def backend_names() -> list:
    """Names of the registered backends, sorted."""
    with _lock:
        return sorted(_factories)


def set_default_backend(name: str | None) -> None:
    """Make ``name`` the backend :func:`get_backend` picks when neither an argument nor
    ``TVCFS_BACKEND`` names one (``None`` restores ``"lmdb"``). Raises
    :class:`UnknownBackend`."""
    global _default
    if name is not None:
        _factory(name)
    _default = name


def _factory(name: str) -> Callable:
    with _lock:
        f = _factories.get(name)
    if f is None:
        raise UnknownBackend(f"unknown block backend {name!r} (registered: {', '.join(backend_names())})")
    return f


def selected_names(name: str | None = None) -> list:
    """The backend names :func:`get_backend` would use, in tier order."""
    if name:
        return [name]
    if os.environ.get("TVCFS_BACKEND"):
        return [os.environ["TVCFS_BACKEND"].strip()]
    if os.environ.get("TVCFS_BACKENDS"):
        names = [n.strip() for n in os.environ["TVCFS_BACKENDS"].split(",") if n.strip()]
        if names:
            return names
    return [_default or "lmdb"]


def get_backend(name: str | None = None, repo=None, **options):
    """Build the selected backend (see the module docstring) for ``repo``.

    One name gives that backend's store; several (``TVCFS_BACKENDS``) give a
    :class:`~tvcfs.store.router.Router` with one tier per name, in order. Raises
    :class:`UnknownBackend`."""
    names = selected_names(name)
    stores = [(n, _factory(n)(repo=repo, **options)) for n in names]
    if len(stores) == 1:
        return stores[0][1]
    from .router import Router, Tier

    return Router([Tier(n, s) for n, s in stores])


def remote_tiers(remotes: dict) -> list:
    """Router tiers for a repository's remotes that are block stores
    (``{name: url}``; today ``s3://BUCKET/PREFIX``), in name order: tier ``remote
    NAME``, read-only and untrusted (every block verified, written back into the
    local store). The backend is built on the tier's first use, so a command that
    never misses locally never loads its client library. Other URLs give no tier."""
    from .router import Tier

    tiers = []
    for name, url in sorted(remotes.items()):
        if isinstance(url, str) and url.startswith("s3://"):
            tiers.append(Tier(f"remote {name}", _OnFirstUse(lambda url=url: get_backend("s3", url=url),
                                                            url, frozenset({REMOTE, PERSISTENT})),
                              writable=False, trusted=False))
    return tiers


class _OnFirstUse:
    """A backend built by ``build()`` when first used (``capabilities`` known before)."""

    def __init__(self, build: Callable, name: str, capabilities: frozenset):
        self._build, self.name, self.capabilities = build, name, capabilities
        self._store = None
        self._lock = threading.Lock()

    def _get(self):
        with self._lock:
            if self._store is None:
                self._store = self._build()
            return self._store

    def __getattr__(self, name):
        return getattr(self._get(), name)

    def __iter__(self):
        return iter(self._get())

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _lmdb_factory(repo=None, path: str | None = None, **_):
    if repo is not None:
        return _Borrowed(repo.store)
    if path is None:
        raise TvcfsError("the lmdb backend needs a repository or a path")
    from .lmdb_store import LMDBStore

    return LMDBStore(path)


def _s3_factory(repo=None, url: str | None = None, **options):
    """``s3``: an :class:`~tvcfs.store.s3.S3Store` at ``url`` (``s3://BUCKET/PREFIX``),
    else ``TVCFS_S3_URL``; options as :class:`~tvcfs.store.s3.S3Store` takes them
    (docs/backends.md). boto3 is imported only here."""
    url = url or os.environ.get("TVCFS_S3_URL")
    if not url:
        raise TvcfsError("the s3 backend needs a URL: set TVCFS_S3_URL=s3://BUCKET/PREFIX")
    from .s3 import S3Store

    return S3Store(url, **options)


def _gateway_factory(repo=None, urls=None, **options):
    """``gateway``: a :class:`~tvcfs.store.gateway.GatewayStore` over ``urls``, else
    ``TVCFS_GATEWAYS`` (comma or space separated ``http(s)://`` base URLs); options as
    :class:`~tvcfs.store.gateway.GatewayStore` takes them (docs/backends.md). httpx2
    is imported only here."""
    from .gateway import GatewayStore

    return GatewayStore(urls or os.environ.get("TVCFS_GATEWAYS", ""), **options)


def _memory_factory(repo=None, **_):
    from .memory import MemoryStore

    return MemoryStore()


class _Borrowed:
    """A repository's own store lent to a router: closing the router leaves it open."""

    def __init__(self, store):
        self._store = store
        self.capabilities = store.capabilities

    def __getattr__(self, name):
        return getattr(self._store, name)

    def __iter__(self):
        return iter(self._store)

    def close(self) -> None:
        pass


register_backend("lmdb", _lmdb_factory)
register_backend("memory", _memory_factory)
register_backend("s3", _s3_factory)
register_backend("gateway", _gateway_factory)


def _peers_factory(repo=None, **options):
    # imported when the tier is built: the peer tier drives the transport's client
    # side (a backend using its driver, docs/architecture.md "Layers"), which
    # ``import tvcfs.store`` does not load
    from .peers import peers_factory

    return peers_factory(repo=repo, **options)


register_backend("peers", _peers_factory)
