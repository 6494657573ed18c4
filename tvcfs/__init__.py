"""tvcfs: a version-controlled FUSE filesystem for machine-learning models.

Model files are stored as IPFS-compatible content-addressed blocks (tensor-aligned
raw leaves under UnixFS dag-pb files; dag-cbor commits) in an embedded LMDB store,
behind a block layer of pluggable backends (:mod:`tvcfs.store`). The Python API is
:class:`tvcfs.Repo`, plus the module-level block API (:mod:`tvcfs.api`:
``add_bytes``, ``cat``, ``pin``, ``unpin``, ``block_put``, ``block_get``,
``add_path``, ``get_to_path``) and the backend registry (``register_backend``,
``get_backend``, ``set_default_backend``) and ``stream_tensor`` (one tensor of a
model, local or from a peer, verified leaf by leaf as it arrives: :mod:`tvcfs.stream`);
the CLI ``tvcfs`` is porcelain over them.
"""

__version__ = "0.1.0"

# Every public name is imported on first use (PEP 562): ``import tvcfs`` and the
# start of the ``tvcfs`` command stay lean (no LMDB, no DAG code, no trio, no
# transport until a command needs them). ``from tvcfs import Repo`` works as before.
_LAZY = {
    "tvcfs.api": ("add_bytes", "add_path", "block_get", "block_put", "cat", "current_repo", "get_to_path",
                  "pin", "unpin", "use_repo"),
    "tvcfs.encoding.cid": ("CID",),
    "tvcfs.errors": ("TvcfsError",),
    "tvcfs.repo": ("Author", "CommitResult", "Repo"),
    "tvcfs.store": ("get_backend", "register_backend", "set_default_backend"),
    "tvcfs.stream": ("stream_tensor", "TensorStream"),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'tvcfs' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_HOME))
