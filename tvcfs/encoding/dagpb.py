"""The dag-pb codec (0x70): a protobuf ``PBNode {repeated PBLink Links = 2; bytes Data = 1}``
with ``PBLink {bytes Hash = 1; string Name = 2; uint64 Tsize = 3}``.

Spec: https://ipld.io/specs/codecs/dag-pb/spec/ . Encoded canonically as the spec and
Kubo require: all Links before Data, each link's fields in order Hash, Name, Tsize;
a present-but-empty Name is written (``12 00``) as Kubo writes for file links. Written
by hand: the protobuf is a few dozen lines and the PyPI dag-pb packages are
unmaintained and quadratic on large inputs.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import MalformedObject
from .cid import cid_v1
from .varint import decode_varint, encode_varint  # noqa: F401  (the one varint)


class PBLink(NamedTuple):
    """One dag-pb link: binary CID ``hash``, ``name`` (str, '' for file links) and
    ``tsize`` (bytes: the linked block plus everything below it)."""

    hash: bytes
    name: str
    tsize: int


def encode_link(link: PBLink) -> bytes:
    """Encode one PBLink message (without its enclosing field tag)."""
    name = link.name.encode("utf-8")
    return b"".join(
        (
            b"\x0a", encode_varint(len(link.hash)), link.hash,
            b"\x12", encode_varint(len(name)), name,
            b"\x18", encode_varint(link.tsize),
        )
    )


def encode_node(links, data: bytes | None) -> bytes:
    """Encode a PBNode: ``links`` (iterable of :class:`PBLink`, in the caller's order —
    file order for files, sorted by name bytes for directories) then ``data``."""
    parts = []
    for link in links:
        body = encode_link(link)
        parts.append(b"\x12")
        parts.append(encode_varint(len(body)))
        parts.append(body)
    if data is not None:
        parts.append(b"\x0a")
        parts.append(encode_varint(len(data)))
        parts.append(data)
    return b"".join(parts)


def _read_bytes(buf, pos):
    ln, pos = decode_varint(buf, pos)
    end = pos + ln
    if end > len(buf):
        raise MalformedObject("truncated length-delimited field")
    return bytes(buf[pos:end]), end


def decode_link(buf) -> PBLink:
    """Decode one PBLink message body. A CIDv0 ``Hash`` (Kubo's default) is read as
    its CIDv1 dag-pb equal, the key tvcfs stores that block under
    (:func:`~tvcfs.encoding.cid.cid_v1`). Raises :class:`MalformedObject`."""
    pos = 0
    h = None
    name = ""
    tsize = 0
    while pos < len(buf):
        tag, pos = decode_varint(buf, pos)
        if tag == 0x0A:
            h, pos = _read_bytes(buf, pos)
        elif tag == 0x12:
            raw, pos = _read_bytes(buf, pos)
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedObject("dag-pb link name is not UTF-8") from None
        elif tag == 0x18:
            tsize, pos = decode_varint(buf, pos)
        else:
            raise MalformedObject(f"unexpected field tag {tag:#x} in PBLink")
    if h is None:
        raise MalformedObject("PBLink without Hash")
    return PBLink(cid_v1(h), name, tsize)


def decode_node(buf) -> tuple[list[PBLink], bytes | None]:
    """Decode a dag-pb block into ``(links, data)``; ``data`` is ``None`` if absent.

    Raises :class:`MalformedObject` for anything that is not a PBNode.
    """
    pos = 0
    links: list[PBLink] = []
    data = None
    n = len(buf)
    while pos < n:
        tag, pos = decode_varint(buf, pos)
        if tag == 0x12:
            body, pos = _read_bytes(buf, pos)
            links.append(decode_link(body))
        elif tag == 0x0A:
            data, pos = _read_bytes(buf, pos)
        else:
            raise MalformedObject(f"unexpected field tag {tag:#x} in PBNode")
    return links, data
