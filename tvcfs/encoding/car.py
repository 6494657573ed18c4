"""CAR v1 archives (spec: https://ipld.io/specs/transport/car/carv1/).

Layout: ``varint(len(header)) ‖ header ‖ section*`` where the header is dag-cbor
``{"roots": [CID], "version": 1}`` (CIDs as tag 42 over ``0x00 ‖ cid-bytes``) and a
section is ``varint(len(cid) + len(block)) ‖ cid ‖ block``. Written and read as a
stream: neither side holds more than one block in memory.
"""

from __future__ import annotations

from typing import BinaryIO, Iterable, Iterator

from ..errors import MalformedObject
from .cid import cid_codec, cid_v1, verify_block
from .varint import decode_varint, encode_varint, read_varint

MAX_SECTION = 8 << 20  # bytes; tvcfs blocks are at most ~1 MiB


def write_car_header(out: BinaryIO, roots: list[bytes]) -> int:
    """Write the CAR v1 header for binary CIDs ``roots``; return bytes written."""
    import dag_cbor
    from multiformats import CID

    header = dag_cbor.encode({"roots": [CID.decode(r) for r in roots], "version": 1})
    data = encode_varint(len(header)) + header
    out.write(data)
    return len(data)


def write_car_block(out: BinaryIO, cid: bytes, block) -> int:
    """Write one CAR section; return bytes written."""
    head = encode_varint(len(cid) + len(block)) + cid
    out.write(head)
    out.write(block)
    return len(head) + len(block)


def write_car(out: BinaryIO, roots: list[bytes], blocks: Iterable[tuple[bytes, bytes]]) -> int:
    """Write a whole CAR v1 stream: header for ``roots`` then every ``(cid, block)``.
    Returns the number of blocks written."""
    write_car_header(out, roots)
    n = 0
    for cid, block in blocks:
        write_car_block(out, cid, block)
        n += 1
    return n


def _cid_length(sec: bytes) -> int:
    """Bytes of the CID at the start of a CAR section: 34 for a CIDv0 (a bare sha2-256
    multihash), else ``version ‖ codec ‖ multihash code ‖ digest length ‖ digest``
    whatever the hash (so an unsupported one is named as such, not mistaken for a
    short section). Raises :class:`MalformedObject` when the section ends inside it."""
    if sec[:2] == b"\x12\x20":
        n = 34
    else:
        try:
            pos = 0
            for _ in range(3):  # version, codec, multihash code
                _, pos = decode_varint(sec, pos)
            size, pos = decode_varint(sec, pos)
        except MalformedObject:
            raise MalformedObject("CAR section ends inside its CID") from None
        n = pos + size
    if n > len(sec):
        raise MalformedObject("CAR section ends inside its CID")
    return n


def read_car(f: BinaryIO, verify: bool = True) -> tuple[list[bytes], Iterator[tuple[bytes, bytes]]]:
    """Read a CAR v1 stream: returns ``(roots, blocks)`` with ``blocks`` a lazy iterator
    of ``(cid, block)``. With ``verify`` every block is hashed against its CID.

    Raises :class:`MalformedObject` for a bad header or section (while iterating, for
    sections) and :class:`~tvcfs.errors.CorruptBlock` for a block that does not match
    its CID. Only sha2-256 raw/dag-pb/dag-cbor blocks are accepted: CIDv1, and
    CIDv0 (Kubo's default ``ipfs add``), whose roots and blocks come out as their
    CIDv1 dag-pb equals (:func:`~tvcfs.encoding.cid.cid_v1`).
    """
    from .dagcbor import Link, decode

    hlen = read_varint(f)
    if hlen is None or hlen > MAX_SECTION:
        raise MalformedObject("not a CAR file: bad header length")
    raw = f.read(hlen)
    if len(raw) != hlen:
        raise MalformedObject("CAR header truncated")
    try:
        header = decode(raw)
    except MalformedObject as e:
        raise MalformedObject(f"bad CAR header: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("roots"), list) \
            or not all(isinstance(r, Link) for r in header["roots"]):
        raise MalformedObject("bad CAR header: not a map with a list of root CIDs")
    if header.get("version") != 1:
        raise MalformedObject(f"unsupported CAR version {header.get('version')!r} (only v1)")
    roots = [cid_v1(bytes(r)) for r in header["roots"]]

    def blocks():
        while True:
            ln = read_varint(f)
            if ln is None:
                return
            if ln > MAX_SECTION or ln < 2:
                raise MalformedObject(f"CAR section of {ln} bytes out of range")
            sec = f.read(ln)
            if len(sec) != ln:
                raise MalformedObject("CAR section truncated")
            n = _cid_length(sec)
            cid, data = cid_v1(sec[:n]), sec[n:]
            try:
                cid_codec(cid)
            except Exception as e:
                raise MalformedObject(f"CAR section with unsupported CID: {e}") from None
            if verify:
                verify_block(cid, data)
            yield cid, data

    return roots, blocks()
