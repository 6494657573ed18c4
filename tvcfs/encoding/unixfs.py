"""UnixFS v1 on dag-pb: files, directories and symlinks.

Spec: https://github.com/ipfs/specs/blob/main/UNIXFS.md . The ``Data`` field of a
dag-pb node holds the protobuf::

    message Data {
      required DataType Type = 1;   // Raw 0, Directory 1, File 2, Metadata 3, Symlink 4, HAMTShard 5
      optional bytes Data = 2;
      optional uint64 filesize = 3;
      repeated uint64 blocksizes = 4;   // written unpacked, one tag per entry, as Kubo does
      optional uint64 hashType = 5;
      optional uint64 fanout = 6;
      optional uint32 mode = 7;
      optional UnixTime mtime = 8;
    }

File layout: Kubo's balanced DAG (at most 174 links per node, leaves all at one depth),
built bottom-up from the leaf boundaries the chunker chose; raw leaves (CIDv1 codec
0x55) as ``ipfs add --cid-version=1 --raw-leaves`` makes them. A file of one leaf is
that raw leaf. Directory links are sorted by the UTF-8 bytes of their names.
"""

from __future__ import annotations

import errno
from typing import NamedTuple

from ..errors import InvalidEntryName, MalformedObject
from ..names import name_bytes, printable_name  # noqa: F401  (printable_name re-exported)
from .cid import DAG_PB, make_cid
from .dagpb import PBLink, decode_node, encode_node
from .varint import decode_varint, encode_varint

RAW_T, DIRECTORY, FILE, METADATA, SYMLINK, HAMT = 0, 1, 2, 3, 4, 5
MAX_LINKS = 174  # Kubo's default links per node (helpers.DefaultLinksPerBlock)
DEFAULT_FILE_MODE = 0o644
EXEC_FILE_MODE = 0o755
NAME_MAX = 255  # bytes of UTF-8 in one entry name, as Linux's NAME_MAX (docs/format.md)


class UnixFSData(NamedTuple):
    """Decoded UnixFS ``Data``: ``type`` (int), ``data`` (bytes or None), ``filesize``
    (bytes, or None), ``blocksizes`` (list of content bytes per child), ``mode``
    (int or None), ``fanout`` (int or None), ``hash_type`` (multicodec of a HAMT
    shard's hash function, int or None)."""

    type: int
    data: bytes | None
    filesize: int | None
    blocksizes: list
    mode: int | None
    fanout: int | None
    hash_type: int | None = None


def encode_unixfs(type_: int, data: bytes | None = None, filesize: int | None = None,
                  blocksizes=(), mode: int | None = None, hash_type: int | None = None,
                  fanout: int | None = None) -> bytes:
    """Encode a UnixFS ``Data`` protobuf (fields in field-number order)."""
    parts = [b"\x08", encode_varint(type_)]
    if data is not None:
        parts += [b"\x12", encode_varint(len(data)), data]
    if filesize is not None:
        parts += [b"\x18", encode_varint(filesize)]
    for bs in blocksizes:
        parts += [b"\x20", encode_varint(bs)]
    if hash_type is not None:
        parts += [b"\x28", encode_varint(hash_type)]
    if fanout is not None:
        parts += [b"\x30", encode_varint(fanout)]
    if mode is not None:
        parts += [b"\x38", encode_varint(mode)]
    return b"".join(parts)


def decode_unixfs(buf) -> UnixFSData:
    """Decode a UnixFS ``Data`` protobuf. Raises :class:`MalformedObject`."""
    pos = 0
    type_ = None
    data = None
    filesize = None
    blocksizes = []
    mode = None
    fanout = None
    hash_type = None
    n = len(buf)
    while pos < n:
        tag, pos = decode_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            val, pos = decode_varint(buf, pos)
            if field == 1:
                type_ = val
            elif field == 3:
                filesize = val
            elif field == 4:
                blocksizes.append(val)
            elif field == 5:
                hash_type = val
            elif field == 6:
                fanout = val
            elif field == 7:
                mode = val
        elif wire == 2:
            ln, pos = decode_varint(buf, pos)
            if pos + ln > n:
                raise MalformedObject("truncated UnixFS field")
            chunk = bytes(buf[pos:pos + ln])
            pos += ln
            if field == 2:
                data = chunk
            elif field == 4:  # packed blocksizes, accepted on read
                p = 0
                while p < len(chunk):
                    v, p = decode_varint(chunk, p)
                    blocksizes.append(v)
        else:
            raise MalformedObject(f"unsupported wire type {wire} in UnixFS Data")
    if type_ is None:
        raise MalformedObject("UnixFS Data without Type")
    return UnixFSData(type_, data, filesize, blocksizes, mode, fanout, hash_type)


def decode_pb_unixfs(block) -> tuple[list[PBLink], UnixFSData]:
    """Decode a dag-pb block carrying UnixFS: ``(links, unixfs_data)``.

    Raises :class:`MalformedObject` if the node has no UnixFS ``Data``.
    """
    links, data = decode_node(block)
    if data is None:
        raise MalformedObject("dag-pb node without UnixFS Data")
    return links, decode_unixfs(data)


def build_file(leaves, mode: int | None = None):
    """Build the balanced UnixFS file DAG over ``leaves``.

    ``leaves``: sequence of ``(cid: bytes, size: int)`` raw leaves in file order (the
    leaf blocks themselves are stored by the caller). ``mode``: POSIX permission bits
    to record (UnixFS 1.5 ``mode``), or ``None`` for the default 0644. Returns
    ``(root_cid, root_tsize, blocks)`` with ``blocks`` the new dag-pb nodes as a list of
    ``(cid, bytes)``, root last. One leaf and no mode: the root is the leaf itself;
    no leaves: the caller passes the single empty raw leaf.
    """
    if not leaves:
        raise ValueError("a file has at least one (possibly empty) leaf")
    if len(leaves) == 1 and mode is None:
        cid, size = leaves[0]
        return cid, size, []
    blocks: list[tuple[bytes, bytes]] = []
    # level entries: (cid, tsize, content_size)
    level = [(c, s, s) for c, s in leaves]
    while True:
        nxt = []
        for i in range(0, len(level), MAX_LINKS):
            group = level[i:i + MAX_LINKS]
            filesize = sum(g[2] for g in group)
            last = len(level) <= MAX_LINKS
            data = encode_unixfs(FILE, filesize=filesize, blocksizes=[g[2] for g in group],
                                 mode=mode if last else None)
            block = encode_node([PBLink(g[0], "", g[1]) for g in group], data)
            cid = make_cid(DAG_PB, block)
            blocks.append((cid, block))
            nxt.append((cid, len(block) + sum(g[1] for g in group), filesize))
        level = nxt
        if len(level) == 1:
            root, tsize, _ = level[0]
            return root, tsize, blocks


def entry_name_error(name: str | bytes) -> tuple[int, str] | None:
    """Why ``name`` cannot be a directory entry name, or ``None`` if it can.

    The one definition of a valid entry name (docs/format.md, Directories): at most
    :data:`NAME_MAX` (255) bytes, valid UTF-8 (dag-pb link names are UTF-8 strings),
    non-empty, not ``.`` or ``..``, no ``/`` and no NUL. ``name``: ``bytes`` (as a
    FUSE request carries it) or ``str`` (surrogate escapes for non-UTF-8 bytes).
    Returns ``(errno, reason)``: ``ENAMETOOLONG``, ``EILSEQ`` or ``EINVAL``.
    """
    raw = name_bytes(name)
    if len(raw) > NAME_MAX:
        return errno.ENAMETOOLONG, f"the name is {len(raw)} bytes long, more than {NAME_MAX}"
    try:
        text = raw.decode("utf-8") if isinstance(name, (bytes, bytearray, memoryview)) else name
        text.encode("utf-8")
    except UnicodeError:
        return errno.EILSEQ, "the name is not valid UTF-8 (tvcfs stores entry names as UTF-8)"
    if text in ("", ".", ".."):
        return errno.EINVAL, f"{text!r} is not an entry name"
    if "/" in text or "\0" in text:
        return errno.EINVAL, "an entry name cannot contain '/' or NUL"
    return None


def check_entry_name(name: str | bytes, path=None, action: str = "") -> str:
    """``name`` as ``str`` if it is a valid entry name (:func:`entry_name_error`);
    otherwise raises :class:`~tvcfs.errors.InvalidEntryName` whose message names
    ``path`` (default: the name) and ends with ``action`` (what to do)."""
    err = entry_name_error(name)
    if err is not None:
        raise InvalidEntryName(name if isinstance(name, str) else name_bytes(name).decode("utf-8", "surrogateescape"),
                               err[0], err[1], path, action)
    return name if isinstance(name, str) else bytes(name).decode("utf-8")


def directory_links(entries) -> list[PBLink]:
    """The links of a directory over ``entries`` (iterable of ``(name: str, cid:
    bytes, tsize: int)``), checked and sorted by the UTF-8 bytes of the names.
    Raises :class:`~tvcfs.errors.InvalidEntryName` (a ``ValueError``) for a bad name
    (:func:`entry_name_error`), ``ValueError`` for a duplicate."""
    items = []
    for name, cid, tsize in entries:
        check_entry_name(name)
        items.append((name.encode("utf-8"), PBLink(cid, name, tsize)))
    items.sort(key=lambda x: x[0])
    for a, b in zip(items, items[1:]):
        if a[0] == b[0]:
            raise ValueError(f"duplicate entry name {a[1].name!r}")
    return [link for _, link in items]


def encode_directory(links) -> bytes:
    """The single-node UnixFS directory block over ``links`` (already sorted)."""
    return encode_node(links, encode_unixfs(DIRECTORY))


def build_directory(entries) -> tuple[bytes, int, bytes]:
    """Build one plain (never sharded) UnixFS directory node, whatever its size.

    ``entries``: iterable of ``(name: str, cid: bytes, tsize: int)``; names must be
    unique and valid (:func:`entry_name_error`). Links are sorted by the UTF-8 bytes
    of the name. Returns ``(cid, tsize, block)``. Raises
    :class:`~tvcfs.errors.InvalidEntryName` (a ``ValueError``) for a bad name,
    ``ValueError`` for a duplicate. Writers use
    :func:`tvcfs.encoding.hamt.build_directory_dag`, which shards a directory whose
    node would pass the HAMT threshold as IPFS does (docs/format.md).
    """
    links = directory_links(entries)
    block = encode_directory(links)
    return make_cid(DAG_PB, block), len(block) + sum(link.tsize for link in links), block


def build_symlink(target: str) -> tuple[bytes, int, bytes]:
    """Build a UnixFS symlink node holding ``target``. Returns ``(cid, tsize, block)``."""
    block = encode_node([], encode_unixfs(SYMLINK, data=target.encode("utf-8")))
    return make_cid(DAG_PB, block), len(block), block
