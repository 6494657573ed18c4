"""A strict DAG-CBOR decoder for the blocks tvcfs reads often: commits and CAR headers.

Spec: https://ipld.io/specs/codecs/dag-cbor/spec/ (a subset of CBOR, RFC 8949, with
one canonical form). The ``dag-cbor`` library stays the encoder (one call per
commit); decoding happens once per commit on every ``log``, merge-base search,
reachability walk and ``commits/`` listing of a mount, and the library costs ~360 µs
per commit there (plus ~30–50 ms to import it with ``multiformats``), this module
~10 µs.

Accepted, as the spec's strict mode requires, and nothing else (anything else raises
:class:`~tvcfs.errors.MalformedObject`):

* unsigned and negative integers in their shortest form (RFC 8949 §4.2.1), within
  64 bits;
* byte strings, UTF-8 text strings, arrays and maps of definite length;
* maps with text keys, unique and sorted length-first then bytewise (RFC 7049 §3.9
  canonical order, which DAG-CBOR keeps);
* tag 42 only, over a byte string ``0x00 ‖ binary CID`` (returned as :class:`Link`);
  the CID must be a well-formed CIDv1 (or CIDv0) with a complete multihash;
* ``false``, ``true``, ``null`` and 64-bit floats that are finite (tvcfs never writes
  floats into hashed objects, but other tools' dag-cbor may hold them);
* exactly one top-level item, no trailing bytes, nesting at most :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import struct

from ..errors import MalformedObject
from .varint import decode_varint

MAX_DEPTH = 64  # nesting of arrays/maps/tags; deeper input is refused

_MIN = {1: 24, 2: 1 << 8, 4: 1 << 16, 8: 1 << 32}  # smallest value each argument width may carry
_WIDTH = {24: 1, 25: 2, 26: 4, 27: 8}


class Link(bytes):
    """A CID link of a decoded DAG-CBOR block: the binary CID (``bytes``), typed so
    that links can be told apart from byte strings."""

    __slots__ = ()

    def __repr__(self) -> str:
        from .cid import cid_str

        return f"Link({cid_str(self)})"


def decode(block) -> object:
    """Decode one DAG-CBOR block (``bytes``-like) to Python values: ``int``,
    ``bytes``, ``str``, ``list``, ``dict`` (str keys, in block order), ``bool``,
    ``None``, ``float`` and :class:`Link` for tag 42. Raises
    :class:`~tvcfs.errors.MalformedObject` naming the first violation and its byte
    offset."""
    data = bytes(block)
    obj, pos = _item(data, 0, 0)
    if pos != len(data):
        raise MalformedObject(f"dag-cbor: {len(data) - pos} trailing bytes after the item at offset {pos}")
    return obj


def _arg(data: bytes, pos: int) -> tuple[int, int, int, int]:
    """``(major type, additional info, argument, new position)`` of the head at ``pos``."""
    try:
        ib = data[pos]
    except IndexError:
        raise MalformedObject(f"dag-cbor: truncated at offset {pos}") from None
    major, ai = ib >> 5, ib & 31
    if ai < 24:
        return major, ai, ai, pos + 1
    n = _WIDTH.get(ai)
    if n is None:
        what = "indefinite length" if ai == 31 else f"reserved additional info {ai}"
        raise MalformedObject(f"dag-cbor: {what} at offset {pos}")
    end = pos + 1 + n
    if end > len(data):
        raise MalformedObject(f"dag-cbor: truncated at offset {pos}")
    if major == 7:
        return major, ai, 0, end  # simple values and floats: read by the caller
    v = int.from_bytes(data[pos + 1:end], "big")
    if v < _MIN[n]:
        raise MalformedObject(f"dag-cbor: integer {v} not in its shortest form at offset {pos}")
    return major, ai, v, end


def _item(data: bytes, pos: int, depth: int):
    start = pos
    major, ai, v, pos = _arg(data, pos)
    if major == 0:
        return v, pos
    if major == 1:
        return -1 - v, pos
    if major == 2 or major == 3:
        end = pos + v
        if end > len(data):
            raise MalformedObject(f"dag-cbor: string of {v} bytes at offset {start} runs past the end")
        if major == 2:
            return data[pos:end], end
        try:
            return data[pos:end].decode("utf-8"), end
        except UnicodeDecodeError:
            raise MalformedObject(f"dag-cbor: invalid UTF-8 in the string at offset {start}") from None
    if depth >= MAX_DEPTH:
        raise MalformedObject(f"dag-cbor: nested deeper than {MAX_DEPTH} at offset {start}")
    if major == 4:
        if v > len(data) - pos:
            raise MalformedObject(f"dag-cbor: array of {v} items at offset {start} runs past the end")
        out = []
        for _ in range(v):
            x, pos = _item(data, pos, depth + 1)
            out.append(x)
        return out, pos
    if major == 5:
        if 2 * v > len(data) - pos:
            raise MalformedObject(f"dag-cbor: map of {v} entries at offset {start} runs past the end")
        d: dict = {}
        prev = None
        for _ in range(v):
            kpos = pos
            kmajor, _, klen, pos = _arg(data, pos)
            if kmajor != 3:
                raise MalformedObject(f"dag-cbor: map key at offset {kpos} is not a string")
            kend = pos + klen
            if kend > len(data):
                raise MalformedObject(f"dag-cbor: map key at offset {kpos} runs past the end")
            kb = data[pos:kend]
            if prev is not None and (len(kb), kb) <= (len(prev), prev):
                raise MalformedObject(f"dag-cbor: map key at offset {kpos} is out of canonical order "
                                      "or repeated")
            prev = kb
            try:
                key = kb.decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedObject(f"dag-cbor: invalid UTF-8 in the map key at offset {kpos}") from None
            d[key], pos = _item(data, kend, depth + 1)
        return d, pos
    if major == 6:
        if v != 42:
            raise MalformedObject(f"dag-cbor: tag {v} at offset {start} (only tag 42, a CID, is allowed)")
        cmajor, _, n, p = _arg(data, pos)
        if cmajor != 2 or p + n > len(data) or n < 2 or data[p] != 0:
            raise MalformedObject(f"dag-cbor: tag 42 at offset {start} is not over 0x00 ‖ CID bytes")
        cid = data[p + 1:p + n]
        _check_cid(cid, start)
        return Link(cid), p + n
    # major 7
    if ai == 20:
        return False, pos
    if ai == 21:
        return True, pos
    if ai == 22:
        return None, pos
    if ai == 27:
        f = struct.unpack_from(">d", data, pos - 8)[0]
        if f != f or f in (float("inf"), float("-inf")):
            raise MalformedObject(f"dag-cbor: NaN or infinity at offset {start}")
        return f, pos
    what = "a 16- or 32-bit float" if ai in (25, 26) else f"simple value {ai}"
    raise MalformedObject(f"dag-cbor: {what} at offset {start} (not allowed in DAG-CBOR)")


def _check_cid(cid: bytes, at: int) -> None:
    """A binary CID (spec: https://github.com/multiformats/cid): v0 = a bare sha2-256
    multihash (``12 20`` + 32 bytes); v1 = ``varint(1) ‖ varint(codec) ‖ multihash``."""
    if len(cid) == 34 and cid[0] == 0x12 and cid[1] == 0x20:
        return
    try:
        version, i = decode_varint(cid, 0)
        if version != 1:
            raise MalformedObject(f"CID version {version}")
        _, i = decode_varint(cid, i)  # codec
        _, i = decode_varint(cid, i)  # multihash function
        n, i = decode_varint(cid, i)
    except MalformedObject as e:
        raise MalformedObject(f"dag-cbor: malformed CID at offset {at} ({e})") from None
    if i + n != len(cid):
        raise MalformedObject(f"dag-cbor: CID multihash length does not match at offset {at}")
