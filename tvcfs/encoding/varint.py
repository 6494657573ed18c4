"""The unsigned varint (LEB128) of protobuf and multiformats: the only encoder and
decoder in tvcfs (dag-pb, CIDs, CAR sections, the wire protocol, libp2p keys).
Spec: https://github.com/multiformats/unsigned-varint (at most 9 bytes for
multiformats) and protobuf (up to 10 bytes for a uint64); decoders here are bounded
by ``max_bytes`` so that hostile input cannot make them loop or build huge integers."""

from __future__ import annotations

from typing import BinaryIO

from ..errors import MalformedObject


class VarintError(MalformedObject):
    """A varint longer than its bound."""


class TruncatedVarint(VarintError):
    """The input ended inside a varint (a stream reader may wait for more bytes)."""


def encode_varint(n: int) -> bytes:
    """Unsigned LEB128 varint of ``n`` (``n >= 0``)."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_varint(buf, pos: int = 0, end: int | None = None, max_bytes: int = 10) -> tuple[int, int]:
    """Decode the unsigned varint at ``buf[pos:]`` (bytes-like; ``end`` bounds it,
    default ``len(buf)``); return ``(value, new_pos)``. Raises :class:`TruncatedVarint`
    when ``end`` comes first and :class:`VarintError` past ``max_bytes`` bytes."""
    if end is None:
        end = len(buf)
    result = shift = 0
    while True:
        if pos >= end:
            raise TruncatedVarint("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 7 * max_bytes:
            raise VarintError(f"varint longer than {max_bytes} bytes")


def read_varint(f: BinaryIO, max_bytes: int = 10) -> int | None:
    """Read one varint from a binary stream; ``None`` at a clean end of stream (no
    byte read). Raises :class:`TruncatedVarint` / :class:`VarintError`."""
    result = shift = 0
    while True:
        b = f.read(1)
        if not b:
            if shift == 0:
                return None
            raise TruncatedVarint("stream truncated inside a varint")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift >= 7 * max_bytes:
            raise VarintError(f"varint longer than {max_bytes} bytes")
