"""tvcfs: a version-controlled FUSE filesystem for machine-learning models.

Model files are stored as IPFS-compatible content-addressed blocks (tensor-aligned
raw leaves under UnixFS dag-pb files; dag-cbor commits) in an embedded LMDB store.
The Python API is :class:`tvcfs.Repo`; the CLI ``tvcfs`` is porcelain over it.
"""

from .errors import TvcfsError  # noqa: F401
from .repo import Author, CommitResult, Repo  # noqa: F401

__version__ = "0.1.0"
