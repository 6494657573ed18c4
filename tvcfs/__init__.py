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

from .api import (  # noqa: F401
    add_bytes, add_path, block_get, block_put, cat, current_repo, get_to_path, pin, unpin, use_repo,
)
from .encoding.cid import CID  # noqa: F401
from .errors import TvcfsError  # noqa: F401
from .repo import Author, CommitResult, Repo  # noqa: F401
from .store import get_backend, register_backend, set_default_backend  # noqa: F401

__version__ = "0.1.0"


def __getattr__(name: str):
    # imported on first use: ``import tvcfs`` stays lean (no trio, no transport)
    if name in ("stream_tensor", "TensorStream"):
        from . import stream

        return getattr(stream, name)
    raise AttributeError(f"module 'tvcfs' has no attribute {name!r}")
