"""CIDv1 with sha2-256 multihashes, kept as raw binary CID bytes in the hot path.

A binary CIDv1 is ``varint(1) ‖ varint(codec) ‖ varint(0x12) ‖ varint(32) ‖ digest``
(spec: https://github.com/multiformats/cid). For the three codecs tvcfs uses every
prefix is a fixed 4 bytes, so building a CID from a sha-256 digest is one bytes
concatenation (~0.1 µs) instead of the ~270 µs that ``multiformats.CID`` costs per
call; ``docs/performance.md`` has the measurement. Parsing user input and the
``multiformats.CID`` type at API boundaries use the ``multiformats`` library;
printing uses the same base32 lower-case alphabet by hand (tested equal to
``multiformats``' ``encode("base32")``).
"""

from __future__ import annotations

import hashlib

from ..errors import CorruptBlock, InvalidCID
from .multibase import cid_str  # noqa: F401  (re-exported: the printed form)

RAW = 0x55
DAG_PB = 0x70
DAG_CBOR = 0x71
SHA2_256 = 0x12
CID_LEN = 36

_PREFIX = {RAW: b"\x01\x55\x12\x20", DAG_PB: b"\x01\x70\x12\x20", DAG_CBOR: b"\x01\x71\x12\x20"}
_CODEC_NAME = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor"}


def make_cid(codec: int, data) -> bytes:
    """Return the binary CIDv1 (36 bytes) of ``data`` hashed with sha2-256.

    ``codec`` is one of :data:`RAW`, :data:`DAG_PB`, :data:`DAG_CBOR`; ``data`` any
    bytes-like object (hashlib releases the GIL for it, so callers may hash leaves on
    several threads). Raises ``KeyError`` for another codec.
    """
    return _PREFIX[codec] + hashlib.sha256(data).digest()


def cid_from_digest(codec: int, digest: bytes) -> bytes:
    """Binary CIDv1 from a 32-byte sha-256 ``digest`` already computed."""
    return _PREFIX[codec] + digest


def cid_codec(cid: bytes) -> int:
    """The multicodec code (``RAW``, ``DAG_PB``, ``DAG_CBOR``) of a binary CID.

    Raises :class:`InvalidCID` for a CID that is not CIDv1 sha2-256 of a known codec.
    """
    if len(cid) != CID_LEN or cid[0] != 1 or cid[2:4] != b"\x12\x20" or cid[1] not in _CODEC_NAME:
        raise InvalidCID(f"unsupported CID {cid.hex()}: tvcfs reads CIDv1 sha2-256 raw/dag-pb/dag-cbor")
    return cid[1]


def cid_v1(cid: bytes) -> bytes:
    """The CIDv1 that tvcfs keys a block by: a binary CIDv0 (a bare sha2-256
    multihash ``12 20 ‖ digest``, 34 bytes, always dag-pb) becomes the equal CIDv1
    dag-pb ``01 70 12 20 ‖ digest`` (same multihash, so the same block); any other
    CID is returned unchanged (docs/format.md, CIDs)."""
    if len(cid) == 34 and cid[0] == 0x12 and cid[1] == 0x20:
        return _PREFIX[DAG_PB] + bytes(cid[2:])
    return cid


def cid_digest(cid: bytes) -> bytes:
    """The 32-byte sha-256 digest inside a binary CID."""
    return cid[4:]


def verify_block(cid: bytes, data) -> None:
    """Check that ``data`` hashes to ``cid``.

    Raises :class:`CorruptBlock` (naming the CID) when it does not; every block that
    enters from outside (a peer, a CAR file, a backend) passes through here.
    """
    if hashlib.sha256(data).digest() != cid[4:]:
        raise CorruptBlock(f"block {cid_str(cid)} does not hash to its CID")


class VerifiedSet:
    """CIDs whose bytes this process has hashed and found right (bounded).

    :meth:`check` hashes ``data`` against ``cid`` unless ``cid`` was checked before,
    so a block read many times is hashed once. At most ``2 * limit`` CIDs are kept
    (two generations: when the current one is full it becomes the old one and the
    oldest is dropped; a dropped CID is simply hashed again). Thread-safe (set
    operations under the GIL; a race only costs a second hash).
    """

    def __init__(self, limit: int = 1 << 17):
        self.limit = limit
        self._cur: set[bytes] = set()
        self._old: set[bytes] = set()

    def __contains__(self, cid: bytes) -> bool:
        return cid in self._cur or cid in self._old

    def check(self, cid: bytes, data, always: bool = False) -> None:
        """Raise :class:`CorruptBlock` if ``data`` (bytes-like) does not hash to
        ``cid``; remember it when it does. ``always``: hash even if ``cid`` was
        checked before (bytes computed afresh, e.g. a decoded packed block)."""
        if not always and (cid in self._cur or cid in self._old):
            return
        verify_block(cid, data)
        self.add(cid)

    def add(self, cid: bytes) -> None:
        """Remember ``cid`` as checked (by the caller: e.g. its bytes matched the
        checksum recorded when they were stored, docs/repository.md)."""
        if len(self._cur) >= self.limit:
            self._old, self._cur = self._cur, set()
        self._cur.add(cid)


def cid_from_str(text: str) -> bytes:
    """Parse a CID string in any multibase (``bafy…``, ``bafk…``, ``z…``) to binary.

    Uses ``multiformats.CID.decode``; raises :class:`InvalidCID` with the input in the
    message for anything that is not a CID tvcfs can read.
    """
    from multiformats import CID

    try:
        cid = CID.decode(text.strip())
    except Exception as e:  # multiformats raises several unrelated types
        raise InvalidCID(f"not a CID: {text!r} ({str(e).partition(chr(10))[0]})") from None
    if cid.version == 0:
        cid = cid.set(version=1)
    raw = bytes(cid)
    cid_codec(raw)
    return raw


def is_cid_str(text: str) -> bool:
    """True if ``text`` parses as a CID tvcfs can read."""
    try:
        cid_from_str(text)
    except InvalidCID:
        return False
    return True


def to_mf_cid(cid: bytes):
    """The ``multiformats.CID`` object for a binary CID (base32 when printed)."""
    from multiformats import CID

    return CID.decode(cid).set(base="base32")


def from_mf_cid(cid) -> bytes:
    """Binary CID bytes of a ``multiformats.CID`` object."""
    return bytes(cid)


class CID(bytes):
    """A binary CIDv1 (36 bytes) that prints as its canonical string.

    A ``bytes`` subclass, so it is accepted (and compares, hashes and stores) exactly
    like the raw binary CIDs used everywhere inside tvcfs; ``str(cid)`` and
    ``f"{cid}"`` give the base32 form (``bafk…``, ``bafy…``, ``bafyrei…``).
    ``CID(x)`` takes binary CID bytes, a CID string in any multibase (CIDv0 is
    converted to v1), or a ``multiformats.CID``. Raises :class:`InvalidCID`.
    """

    __slots__ = ()

    def __new__(cls, value):
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            raw = cid_from_str(value)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            cid_codec(raw)
        else:
            raw = cid_from_str(str(value)) if hasattr(value, "digest") else bytes(value)
            cid_codec(raw)
        return super().__new__(cls, raw)

    def __str__(self) -> str:
        return cid_str(self)

    def __repr__(self) -> str:
        return f"CID('{cid_str(self)}')"

    def __reduce__(self):
        return (CID, (bytes(self),))

    @property
    def codec(self) -> int:
        """The multicodec code (``RAW``, ``DAG_PB``, ``DAG_CBOR``)."""
        return self[1]


def as_cid(value) -> CID:
    """``value`` (binary CID, CID string, :class:`CID`, ``multiformats.CID``) as a
    :class:`CID`. Raises :class:`InvalidCID`."""
    return CID(value)
