"""The module-level block API (after ipfs_accelerate_py's ``add_bytes`` / ``cat`` /
``block_put`` helpers): functions that work on the *current repository* and its
block backends, for scripts that do not want to hold a :class:`tvcfs.Repo`.

The current repository is, in order: the one set with :func:`use_repo`; the
``TVCFS_REPO`` environment variable; the repository containing the current
directory. Reads go through the repository's block layer (``Repo.blocks``: the local
store, then the backends named by ``TVCFS_BACKENDS`` or :func:`tvcfs.store.set_default_backend`),
so a block missing locally is fetched, verified and written back. CIDs returned are
:class:`tvcfs.encoding.cid.CID` (``str()`` is the base32 form); every function taking
a CID also takes its string.
"""

from __future__ import annotations

import os
import threading

from .encoding.cid import DAG_CBOR, DAG_PB, RAW, CID, make_cid
from .errors import BlockNotFound, TvcfsError

__all__ = ["use_repo", "current_repo", "add_bytes", "cat", "pin", "unpin", "block_put", "block_get",
           "add_path", "get_to_path"]

_CODECS = {"raw": RAW, "dag-pb": DAG_PB, "dag-cbor": DAG_CBOR}
_state = threading.local()
_open: dict = {}
_lock = threading.Lock()


def use_repo(repo) -> None:
    """Make ``repo`` (a :class:`tvcfs.Repo` or a path) the current repository of this
    thread; ``None`` goes back to ``TVCFS_REPO`` / the current directory."""
    _state.repo = repo


def current_repo():
    """The current :class:`tvcfs.Repo` (see the module docstring). Raises
    :class:`tvcfs.errors.NotARepository`."""
    from .repo import Repo, find_repo_root

    repo = getattr(_state, "repo", None)
    if repo is not None and not isinstance(repo, (str, os.PathLike)):
        return repo
    root = os.fspath(repo) if repo is not None else os.environ.get("TVCFS_REPO") or find_repo_root()
    root = os.path.realpath(root)
    with _lock:
        if root not in _open:
            _open[root] = Repo.open(root)
        return _open[root]


def block_put(data: bytes, codec: str = "raw") -> CID:
    """Store one block of ``codec`` (``"raw"``, ``"dag-pb"``, ``"dag-cbor"``); return
    its CID. Raises ``ValueError`` for another codec name."""
    if codec not in _CODECS:
        raise ValueError(f"unknown codec {codec!r} (one of {', '.join(_CODECS)})")
    cid = make_cid(_CODECS[codec], data)
    current_repo().blocks.put(cid, bytes(data))
    return CID(cid)


def block_get(cid) -> bytes:
    """The bytes of block ``cid`` (verified against the CID when it came from a remote
    tier). Raises :class:`BlockNotFound`, :class:`tvcfs.errors.BlockUnavailable`."""
    c = CID(cid)
    data = current_repo().blocks.get(c)
    if data is None:
        raise BlockNotFound(c)
    return bytes(data)


def add_bytes(data: bytes, pin: bool = True) -> CID:
    """Store ``data`` as a UnixFS file (tensor-aware chunking); return its root CID —
    the same CID ``ipfs add`` gives with tvcfs's chunking. Pinned unless ``pin=False``
    (unpinned, unreferenced data is dropped by ``tvcfs gc``)."""
    repo = current_repo()
    cid = CID(repo.add_bytes(data))
    if pin:
        repo.pin(cid, "api:add_bytes")
    return cid


def add_path(path: str, recursive: bool = True, pin: bool = True) -> CID:
    """Store the file or (with ``recursive``) directory tree at ``path``; return its
    root CID, pinned unless ``pin=False``. Raises ``IsADirectoryError`` for a directory
    without ``recursive``, ``FileNotFoundError`` for a missing path."""
    if not os.path.lexists(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    if os.path.isdir(path) and not recursive:
        raise IsADirectoryError(f"{path} is a directory: pass recursive=True")
    repo = current_repo()
    cid = CID(repo.add_path(path))
    if pin:
        repo.pin(cid, f"api:add_path {os.path.basename(os.path.abspath(path))}")
    return cid


def cat(cid) -> bytes:
    """The whole content of the UnixFS file ``cid`` (every leaf verified). Raises
    :class:`BlockNotFound`, :class:`tvcfs.errors.CorruptBlock`, :class:`TvcfsError` for a
    directory."""
    return b"".join(current_repo().cat(CID(cid)))


def get_to_path(cid, output_path: str) -> None:
    """Write the file or directory ``cid`` at ``output_path`` (which must not exist)."""
    if os.path.lexists(output_path):
        raise TvcfsError(f"{output_path} exists already: choose a new path")
    current_repo().get_to_path(CID(cid), output_path)


def pin(cid, name: str = "") -> None:
    """Pin ``cid`` so garbage collection keeps its whole DAG."""
    current_repo().pin(CID(cid), name)


def unpin(cid) -> bool:
    """Remove the pin on ``cid``; ``True`` if it was pinned."""
    return current_repo().unpin(CID(cid))
