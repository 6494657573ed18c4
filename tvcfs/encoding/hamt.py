"""HAMT-sharded UnixFS directories (UnixFS ``HAMTShard``, type 5), as IPFS writes them.

Spec: https://github.com/ipfs/specs/blob/main/UNIXFS.md (HAMTShard) and
``docs/format.md``. A directory whose single dag-pb node would be larger than
:data:`SHARD_THRESHOLD` (256 KiB, the ``unixfs-v1-2025`` profile's threshold, the
node's exact encoded size as that profile's ``block-bytes`` estimation counts it) is
written as a hash array mapped trie, exactly as Kubo and ``ipfs-unixfs-importer``
lay it out:

* the hash of an entry is murmur3-x64-64 of its name's UTF-8 bytes: the first 64-bit
  half (``h1``) of MurmurHash3_x64_128 with seed 0, read as a big-endian number
  (multicodec ``0x22``; Go's ``murmur3.New64().Sum()``);
* fanout 256: each level of the trie takes the next 8 bits of that number, most
  significant first; at most 64 / 8 = 8 levels;
* a shard node is dag-pb with UnixFS ``Data {Type: HAMTShard, Data: bitfield,
  hashType: 0x22, fanout: 256}``; the bitfield has bit ``i`` (of a big-endian
  number, leading zero bytes left out) set when slot ``i`` is used;
* a slot holding one entry is a link named ``XX`` + the entry's name (``XX`` the slot
  in upper-case hexadecimal, padded to the width of ``fanout - 1``) to the entry
  itself; a slot holding several entries is a link named ``XX`` to a sub-shard over
  them (one level down); links are in slot order, Tsize as for any dag-pb link.

murmur3 comes from the ``mmh3`` package (its ``hash64(data, signed=False)[0]`` is
``h1``; checked against ``@multiformats/murmur3`` as the JS importer uses it in
``tests/test_hamt.py``).
"""

from __future__ import annotations

from typing import Callable, Iterator

from ..errors import MalformedObject
from .cid import DAG_PB, make_cid
from .dagpb import PBLink, encode_node
from .unixfs import HAMT, decode_pb_unixfs, directory_links, encode_directory, encode_unixfs

SHARD_THRESHOLD = 256 * 1024  # bytes: a directory node larger than this is sharded
FANOUT = 256
MURMUR3_X64_64 = 0x22  # multicodec of the HAMT hash function (UnixFS hashType)
MAX_FANOUT = 1024  # largest fanout read (go-unixfsnode and boxo refuse more)


def murmur3_x64_64(data: bytes) -> int:
    """The UnixFS HAMT hash of ``data`` (a name's UTF-8 bytes): the first 64-bit half
    of MurmurHash3_x64_128 (seed 0) as an unsigned int; its big-endian bytes are
    what Go's ``murmur3.New64().Sum(nil)`` returns."""
    import mmh3

    return mmh3.hash64(data, seed=0, x64arch=True, signed=False)[0]


def _slot_bits(fanout: int) -> int:
    if fanout < 2 or fanout > MAX_FANOUT or fanout & (fanout - 1):
        raise MalformedObject(f"HAMT fanout {fanout} is not a power of two between 2 and {MAX_FANOUT}")
    return fanout.bit_length() - 1


def _label_width(fanout: int) -> int:
    return len(f"{fanout - 1:X}")


def _slot(h: int, depth: int, bits: int) -> int:
    shift = 64 - bits * (depth + 1)
    if shift < 0:
        raise MalformedObject(f"HAMT deeper than the {64 // bits} levels a 64-bit hash allows")
    return (h >> shift) & ((1 << bits) - 1)


def build_directory_dag(entries, threshold: int = SHARD_THRESHOLD) -> tuple[bytes, int, list]:
    """Build a UnixFS directory over ``entries`` (iterable of ``(name: str, cid:
    bytes, tsize: int)``): one plain node when its encoded size is at most
    ``threshold`` bytes (the CID of such a directory does not depend on this module),
    else a HAMT (fanout 256) as IPFS writes it.

    Returns ``(cid, tsize, blocks)``: ``blocks`` the new dag-pb nodes as ``[(cid,
    bytes)]``, root last. Raises :class:`~tvcfs.errors.InvalidEntryName` (a
    ``ValueError``) for a bad name, ``ValueError`` for a duplicate.
    """
    links = directory_links(entries)
    block = encode_directory(links)
    if len(block) <= threshold:
        cid = make_cid(DAG_PB, block)
        return cid, len(block) + sum(link.tsize for link in links), [(cid, block)]
    blocks: list[tuple[bytes, bytes]] = []
    items = [(murmur3_x64_64(link.name.encode("utf-8")), link) for link in links]
    cid, tsize = _build_shard(items, 0, blocks)
    return cid, tsize, blocks


def _build_shard(items, depth: int, blocks: list) -> tuple[bytes, int]:
    bits = _slot_bits(FANOUT)
    width = _label_width(FANOUT)
    slots: dict[int, list] = {}
    for h, link in items:
        slots.setdefault(_slot(h, depth, bits), []).append((h, link))
    bitfield = 0
    out = []
    for i in sorted(slots):
        bitfield |= 1 << i
        group = slots[i]
        label = f"{i:0{width}X}"
        if len(group) == 1:
            link = group[0][1]
            out.append(PBLink(link.hash, label + link.name, link.tsize))
        else:
            cid, tsize = _build_shard(group, depth + 1, blocks)
            out.append(PBLink(cid, label, tsize))
    data = encode_unixfs(HAMT, data=bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big"),
                         hash_type=MURMUR3_X64_64, fanout=FANOUT)
    block = encode_node(out, data)
    cid = make_cid(DAG_PB, block)
    blocks.append((cid, block))
    return cid, len(block) + sum(link.tsize for link in out)


Getter = Callable[[bytes], "bytes | memoryview"]


def _shard_links(get: Getter, cid: bytes, links=None, u=None):
    """``(links, fanout)`` of the shard node ``cid``, checked. ``links``/``u``: its
    already decoded node, when the caller has it."""
    if links is None:
        links, u = decode_pb_unixfs(get(cid))
    if u.type != HAMT:
        from .multibase import cid_str

        raise MalformedObject(f"{cid_str(cid)}: a HAMT shard links to a node that is not a shard")
    if u.fanout is None:
        from .multibase import cid_str

        raise MalformedObject(f"{cid_str(cid)}: HAMT shard without a fanout")
    _slot_bits(u.fanout)
    return links, u


def iter_shard(get: Getter, cid: bytes, links=None, u=None, _depth: int = 0) -> Iterator[PBLink]:
    """Every entry of the HAMT directory rooted at shard ``cid`` as a ``PBLink(hash,
    name, tsize)`` with the real entry name (slot label removed), in trie order,
    reading the sub-shards through ``get``. ``links``/``u``: the root node already
    decoded (:func:`~tvcfs.encoding.unixfs.decode_pb_unixfs`). Raises
    :class:`MalformedObject` for a shard that is not one, a link name shorter than
    its slot label, or a trie deeper than 64 levels."""
    links, u = _shard_links(get, cid, links, u)
    width = _label_width(u.fanout)
    if _depth > 64:
        raise MalformedObject("HAMT deeper than 64 levels")
    for link in links:
        if len(link.name) < width:
            raise MalformedObject(f"HAMT link name {link.name!r} shorter than its {width}-digit slot label")
        if len(link.name) == width:
            yield from iter_shard(get, link.hash, _depth=_depth + 1)
        else:
            yield PBLink(link.hash, link.name[width:], link.tsize)


def find_in_shard(get: Getter, cid: bytes, name: str, links=None, u=None) -> PBLink | None:
    """The entry ``name`` of the HAMT directory rooted at shard ``cid`` (a ``PBLink``
    with the real name), or ``None``; reads only the shards on the name's hash path.
    Raises :class:`MalformedObject` for a shard of another hash function than
    murmur3-x64-64 or a malformed shard."""
    h = murmur3_x64_64(name.encode("utf-8", "surrogateescape"))
    depth = 0
    while True:
        links, u = _shard_links(get, cid, links, u)
        if u.hash_type != MURMUR3_X64_64:
            raise MalformedObject(f"HAMT shard with hash function {u.hash_type!r}: only murmur3-x64-64 "
                                  f"(0x22) is defined for UnixFS")
        bits = _slot_bits(u.fanout)
        label = f"{_slot(h, depth, bits):0{_label_width(u.fanout)}X}"
        for link in links:
            if link.name == label:
                cid, links, u = link.hash, None, None
                depth += 1
                break
            if link.name == label + name:
                return PBLink(link.hash, name, link.tsize)
        else:
            return None
