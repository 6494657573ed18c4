"""Encoding of tvcfs objects as IPFS-compatible IPLD blocks.

Submodules: :mod:`.cid` (CIDv1, sha2-256), :mod:`.dagpb` (the dag-pb protobuf),
:mod:`.unixfs` (UnixFS files, directories and symlinks on dag-pb), :mod:`.hamt`
(HAMT-sharded directories), :mod:`.commit` (dag-cbor commits) and :mod:`.car` (CAR v1
archives), :mod:`.varint` (the one varint). See ``docs/format.md``.
"""

from .cid import (  # noqa: F401
    DAG_CBOR,
    DAG_PB,
    RAW,
    cid_codec,
    cid_digest,
    cid_from_str,
    cid_str,
    make_cid,
    to_mf_cid,
    verify_block,
)
