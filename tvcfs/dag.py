"""Reading the DAG: directories, files and their leaf index, traversal.

Everything here takes ``get``, a callable ``cid -> bytes-like`` that raises
:class:`~tvcfs.errors.BlockNotFound` for a missing block, so it works the same over
the local LMDB store, a read transaction's zero-copy buffers, or a remote fetcher.
Data flows one way: store → DAG → mount.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Iterator

from .encoding.cid import DAG_CBOR, DAG_PB, RAW, cid_codec, cid_str
from .encoding.commit import cbor_links
from .encoding.dagpb import PBLink, decode_node
from .encoding.hamt import find_in_shard, iter_shard
from .encoding.unixfs import DIRECTORY, FILE, HAMT, RAW_T, SYMLINK, decode_pb_unixfs
from .errors import BlockNotFound, CorruptBlock, MalformedObject, PathNotFound

Getter = Callable[[bytes], "bytes | memoryview"]

KIND_FILE, KIND_DIR, KIND_SYMLINK = "file", "dir", "symlink"


@dataclass(frozen=True)
class Entry:
    """A directory entry: ``name``; ``cid`` (binary); ``kind`` one of ``"file"``,
    ``"dir"``, ``"symlink"``; ``size`` (bytes of file content, symlink target length,
    or 0); ``mode`` (permission bits, e.g. 0o644 / 0o755); ``target`` of a symlink."""

    name: str
    cid: bytes
    kind: str
    size: int
    mode: int
    target: str = ""
    tsize: int = 0


def stat_node(get: Getter, cid: bytes, name: str = "", tsize: int = 0) -> Entry:
    """Describe the node ``cid`` (reading only its own block, never file data below it).

    Raises :class:`MalformedObject` for a block that is not UnixFS or raw.
    """
    codec = cid_codec(cid)
    if codec == RAW:
        return Entry(name, cid, KIND_FILE, tsize if tsize else len(get(cid)), 0o644, tsize=tsize)
    if codec != DAG_PB:
        raise MalformedObject(f"{cid_str(cid)} is not a UnixFS node")
    _, u = decode_pb_unixfs(get(cid))
    if u.type in (DIRECTORY, HAMT):
        return Entry(name, cid, KIND_DIR, 0, u.mode if u.mode is not None else 0o755, tsize=tsize)
    if u.type in (FILE, RAW_T):
        size = u.filesize if u.filesize is not None else len(u.data or b"")
        return Entry(name, cid, KIND_FILE, size, u.mode if u.mode is not None else 0o644, tsize=tsize)
    if u.type == SYMLINK:
        target = (u.data or b"").decode("utf-8", "replace")
        return Entry(name, cid, KIND_SYMLINK, len(target.encode()), 0o777, target, tsize=tsize)
    raise MalformedObject(f"{cid_str(cid)}: unsupported UnixFS type {u.type}")


def _dir_node(get: Getter, cid: bytes):
    if cid_codec(cid) != DAG_PB:
        raise MalformedObject(f"{cid_str(cid)} is not a directory")
    links, u = decode_pb_unixfs(get(cid))
    if u.type not in (DIRECTORY, HAMT):
        raise MalformedObject(f"{cid_str(cid)} is not a directory")
    return links, u


def dir_links(get: Getter, cid: bytes) -> list:
    """The entries ``[PBLink(hash, name, tsize)]`` of a UnixFS directory, plain or
    HAMT-sharded (the shards are read through ``get`` and their slot labels taken
    off the names): the one reader of both layouts (docs/format.md). A plain
    directory's links come in its stored order (sorted by name bytes when tvcfs
    wrote it), a sharded one's sorted by name bytes. Raises
    :class:`MalformedObject` if ``cid`` is not a directory or a shard is malformed."""
    links, u = _dir_node(get, cid)
    if u.type == HAMT:
        return sorted(iter_shard(get, cid, links, u), key=lambda link: link.name.encode("utf-8"))
    return links


def dir_lookup(get: Getter, cid: bytes, name: str) -> PBLink | None:
    """The entry ``name`` of directory ``cid`` (``PBLink`` with the entry's name) or
    ``None``. In a sharded directory only the shards on the name's hash path are
    read. Raises :class:`MalformedObject` as :func:`dir_links`."""
    links, u = _dir_node(get, cid)
    if u.type == HAMT:
        return find_in_shard(get, cid, name, links, u)
    for link in links:
        if link.name == name:
            return link
    return None


def read_dir(get: Getter, cid: bytes) -> dict:
    """``{name: Entry}`` of a UnixFS directory (one block read per child node that is
    dag-pb, for its size and kind; raw children are known from the link's Tsize)."""
    out = {}
    for link in dir_links(get, cid):
        out[link.name] = stat_node(get, link.hash, link.name, link.tsize)
    return out


def resolve_path(get: Getter, tree: bytes, path: str) -> Entry:
    """Follow ``path`` ('a/b/c', '' or '/' for the root) from directory ``tree``.

    Raises :class:`PathNotFound` when a component is missing or not a directory.
    """
    parts = [p for p in path.strip("/").split("/") if p and p != "."]
    cur = stat_node(get, tree, "")
    for i, part in enumerate(parts):
        if cur.kind != KIND_DIR:
            raise PathNotFound(f"{'/'.join(parts[:i])} is not a directory")
        link = dir_lookup(get, cur.cid, part)
        if link is None:
            raise PathNotFound(f"path not found: {'/'.join(parts[:i + 1])}")
        cur = stat_node(get, link.hash, part, link.tsize)
    return cur


class FileIndex:
    """Offset → leaf map of one UnixFS file, built from its internal nodes only.

    ``starts``: list of leaf start offsets (bytes, ascending); ``leaves``: list of leaf
    CIDs (raw leaves, or dag-pb nodes whose UnixFS ``Data`` holds the bytes);
    ``size``: file size (bytes). ``inline`` marks the leaves that are not raw blocks
    (already read while indexing): ``{leaf_index: bytes}`` for the own data of a node
    that also has links, ``{leaf_index: None}`` for a dag-pb leaf node (a UnixFS
    ``File``/``Raw`` without links, as ``ipfs add`` writes without ``--raw-leaves``),
    whose bytes :meth:`leaf_data` decodes from its block when read, so an index never
    holds file content beyond such small inline parts.
    """

    __slots__ = ("cid", "size", "starts", "leaves", "sizes", "inline", "mode")

    def __init__(self, cid: bytes, size: int, starts, leaves, sizes, inline, mode):
        self.cid, self.size, self.starts, self.leaves = cid, size, starts, leaves
        self.sizes, self.inline, self.mode = sizes, inline, mode

    @classmethod
    def build(cls, get: Getter, cid: bytes) -> "FileIndex":
        """Walk the file DAG rooted at ``cid`` (reading its internal nodes, not its raw
        leaves). Raises :class:`MalformedObject` if a node is not a file, if a node's
        ``blocksizes`` do not match its links, or if an internal child holds another
        number of bytes than its parent's blocksize or its own ``filesize`` says (the
        sizes of raw leaves are checked when they are read: :meth:`leaf_data`)."""
        starts: list[int] = []
        leaves: list[bytes] = []
        sizes: list[int] = []
        inline: dict[int, bytes] = {}
        mode = 0o644
        pos = 0

        def walk(c: bytes, expect: int | None, top: bool):
            nonlocal pos, mode
            codec = cid_codec(c)
            if codec == RAW:
                if expect is None:
                    expect = len(get(c))
                starts.append(pos)
                leaves.append(c)
                sizes.append(expect)
                pos += expect
                return
            if codec != DAG_PB:
                raise MalformedObject(f"{cid_str(c)} is not a file node")
            links, u = decode_pb_unixfs(get(c))
            if u.type not in (FILE, RAW_T):
                raise MalformedObject(f"{cid_str(c)} is not a UnixFS file")
            if top and u.mode is not None:
                mode = u.mode
            begin = pos
            if u.data:
                inline[len(leaves)] = u.data if links else None
                starts.append(pos)
                leaves.append(c)
                sizes.append(len(u.data))
                pos += len(u.data)
            if len(u.blocksizes) != len(links):
                raise MalformedObject(f"{cid_str(c)}: {len(links)} links but {len(u.blocksizes)} blocksizes")
            for link, bs in zip(links, u.blocksizes):
                walk(link.hash, bs, False)
            for what, n in (("its parent's blocksize", expect), ("its filesize", u.filesize)):
                if n is not None and n != pos - begin:
                    raise MalformedObject(f"{cid_str(c)} holds {pos - begin} bytes, {what} says {n}")

        walk(cid, None, True)
        return cls(cid, pos, starts, leaves, sizes, inline, mode)

    def leaf_at(self, offset: int) -> int:
        """Index of the leaf holding byte ``offset`` (0 <= offset < size)."""
        return bisect.bisect_right(self.starts, offset) - 1

    def leaf_range(self, offset: int, length: int) -> range:
        """Indices of the leaves overlapping ``[offset, offset + length)``."""
        if length <= 0 or offset >= self.size:
            return range(0)
        first = self.leaf_at(offset)
        last = bisect.bisect_left(self.starts, offset + length) - 1
        return range(first, last + 1)

    def leaf_data(self, get: Getter, i: int):
        """Bytes of leaf ``i`` (a raw leaf block, a dag-pb leaf node's ``Data``, or a
        node's inline data), exactly ``sizes[i]`` of them. Raises
        :class:`~tvcfs.errors.CorruptBlock` for a leaf whose length is not what its
        parent's blocksizes say (never shifted data), :class:`MalformedObject` for a
        dag-pb leaf that does not decode, whatever ``get`` raises
        (:class:`~tvcfs.errors.BlockNotFound`, and :class:`~tvcfs.errors.CorruptBlock`
        from a verifying store read)."""
        if i in self.inline:
            data = self.inline[i]
            if data is not None:
                return data
            _, u = decode_pb_unixfs(get(self.leaves[i]))
            data = u.data or b""
        else:
            data = get(self.leaves[i])
        if len(data) != self.sizes[i]:
            raise CorruptBlock(f"block {cid_str(self.leaves[i])} has {len(data)} bytes, its parent's "
                               f"blocksizes say {self.sizes[i]}")
        return data

    def read(self, get: Getter, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the file (clipped to its size).

        Raises what :meth:`leaf_data` raises.
        """
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        parts = []
        for i in self.leaf_range(offset, end - offset):
            s = self.starts[i]
            data = self.leaf_data(get, i)
            lo = max(offset - s, 0)
            hi = min(end - s, self.sizes[i])
            parts.append(data[lo:hi])
        return b"".join(parts)


def iter_file(get: Getter, cid: bytes, chunk_leaves: int = 1) -> Iterator[bytes]:
    """Yield a file's content leaf by leaf (bytes-like objects), streaming. Raises
    what :meth:`FileIndex.leaf_data` raises."""
    idx = FileIndex.build(get, cid)
    for i in range(len(idx.leaves)):
        yield idx.leaf_data(get, i)


def block_links(cid: bytes, block) -> list:
    """Binary CIDs linked from a block: dag-pb links, dag-cbor CID values, none for raw."""
    codec = cid_codec(cid)
    if codec == RAW:
        return []
    if codec == DAG_PB:
        links, _ = decode_node(block)
        return [link.hash for link in links]
    if codec == DAG_CBOR:
        return cbor_links(block)
    return []


def traverse(get: Getter, roots, *, parents: bool = False, read_leaves: bool = True,
             skip: Callable[[bytes], bool] | None = None, missing_ok: bool = False,
             on_error: Callable | None = None) -> Iterator[tuple[bytes, object]]:
    """The one DAG traversal: depth-first pre-order over every block reachable from
    ``roots`` (binary CIDs), each CID once, yielding ``(cid, block)``.

    Selectors: a commit links its ``tree``, and its ``parents`` too with ``parents``
    (history; any other dag-cbor block links every CID it holds); ``read_leaves=False`` yields raw leaves as ``(cid, None)`` without
    reading them (garbage collection, skeletons); ``skip(cid)`` returning true prunes
    that sub-DAG (e.g. "the store has it"); ``missing_ok`` yields a block ``get``
    lacks (``None`` or :class:`BlockNotFound`) as ``(cid, None)`` instead of raising;
    ``on_error(cid, exc)`` is called for a block that does not decode
    (:class:`MalformedObject`, :class:`~tvcfs.errors.CorruptBlock`) instead of raising,
    and its links are not followed. HAMT shards are plain dag-pb links, so sharded
    directories are walked like any other. Used by export, verify, gc and fsck."""
    from .encoding.commit import decode_commit

    seen: set[bytes] = set()
    stack = list(reversed(list(roots)))
    while stack:
        c = stack.pop()
        if c in seen or (skip and skip(c)):
            continue
        seen.add(c)
        codec = cid_codec(c)
        if codec == RAW and not read_leaves:
            yield c, None
            continue
        try:
            block = get(c)
        except BlockNotFound:
            if not missing_ok:
                raise
            block = None
        except CorruptBlock as e:
            if on_error is None:
                raise
            on_error(c, e)
            continue
        if block is None:
            if not missing_ok:
                raise BlockNotFound(c)
            yield c, None
            continue
        yield c, block
        try:
            links = None
            if codec == DAG_CBOR:
                try:
                    com = decode_commit(block)
                    links = [com.tree] + (list(com.parents) if parents else [])
                except MalformedObject:
                    pass  # dag-cbor that is not a commit: every CID it holds is a link
            if links is None:
                links = block_links(c, block)
        except (MalformedObject, CorruptBlock) as e:
            if on_error is None:
                raise
            on_error(c, e)
            continue
        stack.extend(reversed(links))


def walk_dag(get: Getter, root: bytes, skip: Callable[[bytes], bool] | None = None,
             follow_parents: bool = False) -> Iterator[tuple[bytes, object]]:
    """Every ``(cid, block)`` under ``root``: :func:`traverse` of one root (commits
    follow their parents with ``follow_parents``)."""
    return traverse(get, [root], parents=follow_parents, skip=skip)
