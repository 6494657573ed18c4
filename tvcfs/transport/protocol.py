"""TensorSwap wire protocol: message types, framing, encode/decode (sans-I/O).

No sockets here: :class:`FrameDecoder` turns received bytes into message objects
and :func:`encode` turns a message object into bytes. The same bytes run over a
QUIC stream (:mod:`.quic`) or TLS-over-TCP (:mod:`.tcp`). docs/protocol.md has the
layouts and the conversation; the design follows IPFS Bitswap 1.2.0
(https://specs.ipfs.tech/bitswap-protocol/: want-list entries with priority,
want-block/want-have, cancel, send-dont-have, HAVE/DONT_HAVE) and GraphSync
(https://github.com/ipld/specs/blob/master/block-layer/graphsync/graphsync.md:
a request for a root plus a selector answered with the blocks of the sub-graph
in traversal order, with a do-not-send list).

Frame: ``uvarint(L) ‖ type (1 byte) ‖ body (L-1 bytes)``. Inside a body: integers
are unsigned LEB128 varints, ``bytes``/``str`` are ``uvarint(len) ‖ data``
(str = UTF-8), lists are ``uvarint(count) ‖ items``. A frame longer than
``Limits.max_message`` bytes, a truncated or overlong field, trailing bytes in a
body, an unknown type, or a list longer than its limit raises
:class:`ProtocolError`: the receiver closes that connection only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..encoding.varint import TruncatedVarint, VarintError, decode_varint, encode_varint

__all__ = [
    "PROTOCOL_VERSION",
    "Auth",
    "AuthOk",
    "Block",
    "BlockParts",
    "Cancel",
    "DagDone",
    "DagRequest",
    "DeltaBlock",
    "DontHave",
    "Error",
    "FrameDecoder",
    "Have",
    "Hello",
    "Limits",
    "ListRefs",
    "ProtocolError",
    "RefResult",
    "RefUpdate",
    "Refs",
    "Selector",
    "WantEntry",
    "WantList",
    "Welcome",
    "block_bytes",
    "decode_message",
    "encode",
]

PROTOCOL_VERSION = 1
MIB = 1 << 20

# Welcome flags: capabilities of the server (an old peer ignores bits it does not know)
WELCOME_PRIVATE = 1  # reads need authentication
WELCOME_THIN = 2  # the server takes DeltaBlock in a push and sends it to a thin request
WELCOME_PLANES = 4  # the server reads version-2 packed values (docs/format.md "Packed blocks")


class ProtocolError(Exception):
    """Malformed, oversized or out-of-order input from a peer (closes that connection)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits a server enforces per connection (sizes in bytes).

    ``max_message``: largest frame (type + body). ``max_block``: largest block
    payload. ``max_wantlist``: want-list entries outstanding per connection.
    ``max_list``: entries in any other list (have-lists, refs). ``max_requests``:
    DAG/ref requests queued per connection. ``max_inflight``: bytes of pushed
    blocks buffered before they are written to the store.
    """

    max_message: int = 4 * MIB
    max_block: int = 2 * MIB
    max_wantlist: int = 4096
    max_list: int = 65536
    max_requests: int = 64
    max_inflight: int = 64 * MIB


DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------- primitives
def _uv(n: int) -> bytes:
    if n < 0:
        raise ValueError("negative varint")
    return encode_varint(n)


def _bytes(b: bytes) -> bytes:
    return _uv(len(b)) + bytes(b)


def _str(s: str) -> bytes:
    return _bytes(s.encode("utf-8"))


class _Reader:
    __slots__ = ("buf", "pos", "end", "limits")

    def __init__(self, buf, pos: int, end: int, limits: Limits):
        self.buf = buf
        self.pos = pos
        self.end = end
        self.limits = limits

    def uv(self) -> int:
        try:
            n, self.pos = decode_varint(self.buf, self.pos, self.end)
        except VarintError as e:
            raise ProtocolError(str(e)) from None
        return n

    def bytes(self, max_len: int | None = None) -> bytes:
        n = self.uv()
        if max_len is not None and n > max_len:
            raise ProtocolError(f"field of {n} bytes exceeds limit {max_len}")
        if self.pos + n > self.end:
            raise ProtocolError("truncated field")
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def cid(self) -> bytes:
        c = self.bytes(128)
        if len(c) < 2:
            raise ProtocolError("CID too short")
        return c

    def opt_cid(self) -> bytes | None:
        c = self.bytes(128)
        return c or None

    def str(self, max_len: int = 4096) -> str:
        try:
            return self.bytes(max_len).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("invalid UTF-8") from None

    def count(self, limit: int) -> int:
        n = self.uv()
        if n > limit:
            raise ProtocolError(f"list of {n} entries exceeds limit {limit}")
        return n

    def done(self) -> None:
        if self.pos != self.end:
            raise ProtocolError(f"{self.end - self.pos} trailing bytes in message")


# ---------------------------------------------------------------- messages
class Message:
    """A wire message (docs/protocol.md): a subclass sets ``TYPE`` (the frame's type byte) and
    encodes its fields in :meth:`body` / decodes them in :meth:`parse`."""

    TYPE: ClassVar[int]

    def body(self) -> bytes:  # pragma: no cover - abstract
        """The message's body bytes (the frame without its length and type byte)."""
        raise NotImplementedError

    @classmethod
    def parse(cls, r: _Reader) -> "Message":  # pragma: no cover - abstract
        """Decode a body from reader ``r`` (bounded by ``r.limits``). Raises
        :class:`ProtocolError` for a truncated or overlong field or a value out of range."""
        raise NotImplementedError


@dataclass
class Hello(Message):
    """Client → server, first message of a session: protocol version, repository name."""

    TYPE: ClassVar[int] = 0x01
    version: int = PROTOCOL_VERSION
    repo: str = ""

    def body(self):
        return _uv(self.version) + _str(self.repo)

    @classmethod
    def parse(cls, r):
        return cls(r.uv(), r.str())


@dataclass
class Welcome(Message):
    """Server → client answer to Hello: version, server peer ID, 32-byte auth nonce,
    the server's limits, flags (bit 0 ``WELCOME_PRIVATE``: reads need
    authentication; bit 1 ``WELCOME_THIN``: thin transfers, :class:`DeltaBlock`; bit 2
    ``WELCOME_PLANES``: a ``DeltaBlock`` may hold a version-2 packed value)."""

    TYPE: ClassVar[int] = 0x02
    version: int
    peer_id: bytes
    nonce: bytes
    max_message: int
    max_wantlist: int
    max_inflight: int
    flags: int = 0

    def body(self):
        return (_uv(self.version) + _bytes(self.peer_id) + _bytes(self.nonce)
                + _uv(self.max_message) + _uv(self.max_wantlist) + _uv(self.max_inflight)
                + _uv(self.flags))

    @classmethod
    def parse(cls, r):
        return cls(r.uv(), r.bytes(128), r.bytes(64), r.uv(), r.uv(), r.uv(), r.uv())


@dataclass
class Auth(Message):
    """Client → server: libp2p PublicKey protobuf and its signature over
    ``identity.auth_message(server_peer_id, nonce)``."""

    TYPE: ClassVar[int] = 0x03
    public_key: bytes
    signature: bytes

    def body(self):
        return _bytes(self.public_key) + _bytes(self.signature)

    @classmethod
    def parse(cls, r):
        return cls(r.bytes(1024), r.bytes(1024))


@dataclass
class AuthOk(Message):
    """Server → client: authenticated peer ID and whether it may push."""

    TYPE: ClassVar[int] = 0x04
    peer_id: bytes
    can_push: bool

    def body(self):
        return _bytes(self.peer_id) + _uv(int(self.can_push))

    @classmethod
    def parse(cls, r):
        return cls(r.bytes(128), bool(r.uv()))


WANT_HAVE = 1  # else want-block
CANCEL = 2
SEND_DONT_HAVE = 4


@dataclass
class WantEntry:
    """Bitswap want-list entry: CID, priority (higher first, 0 … 2^31-1), flags
    (``WANT_HAVE``: answer HAVE instead of the block; ``CANCEL``: drop the entry;
    ``SEND_DONT_HAVE``: answer DONT_HAVE when missing)."""

    cid: bytes
    priority: int = 1
    flags: int = SEND_DONT_HAVE

    @property
    def want_have(self) -> bool:
        """Whether the entry asks for HAVE/DONT_HAVE rather than the block (Bitswap want-have)."""
        return bool(self.flags & WANT_HAVE)

    @property
    def cancel(self) -> bool:
        """Whether the entry cancels an earlier want of the CID (Bitswap cancel)."""
        return bool(self.flags & CANCEL)


@dataclass
class WantList(Message):
    """Want-list update (Bitswap): entries to add (or cancel); ``full`` replaces the list."""

    TYPE: ClassVar[int] = 0x10
    entries: list[WantEntry] = field(default_factory=list)
    full: bool = False

    def body(self):
        parts = [_uv(int(self.full)), _uv(len(self.entries))]
        for e in self.entries:
            parts.append(_bytes(e.cid) + _uv(e.priority) + _uv(e.flags))
        return b"".join(parts)

    @classmethod
    def parse(cls, r):
        full = bool(r.uv())
        n = r.count(r.limits.max_wantlist)
        entries = []
        for _ in range(n):
            cid = r.cid()
            prio = r.uv()
            if prio >= 1 << 31:
                raise ProtocolError("priority out of range")
            entries.append(WantEntry(cid, prio, r.uv()))
        return cls(entries, full)


@dataclass
class Block(Message):
    """One block: binary CID and its bytes (server → client, or client → server in a push)."""

    TYPE: ClassVar[int] = 0x11
    cid: bytes
    data: bytes

    def body(self):
        return _bytes(self.cid) + _bytes(self.data)

    @classmethod
    def parse(cls, r):
        return cls(r.cid(), r.bytes(r.limits.max_block))


@dataclass
class DeltaBlock(Message):
    """One block sent encoded (thin transfers, docs/protocol.md "Thin transfers"):
    binary CID and a packed value of :mod:`tvcfs.store.encodings` — usually the XOR
    with a base block the receiver holds (its CID is in the value's header), byte
    grouped and compressed. The receiver decodes it and checks the result against
    ``cid``. Sent only to a peer that asked for it: a client whose request has the
    selector's ``thin`` flag, a server whose ``Welcome`` has ``WELCOME_THIN``."""

    TYPE: ClassVar[int] = 0x14
    cid: bytes
    value: bytes

    def body(self):
        return _bytes(self.cid) + _bytes(self.value)

    @classmethod
    def parse(cls, r):
        return cls(r.cid(), r.bytes(r.limits.max_block + 64))


@dataclass
class _CIDMessage(Message):
    """A message whose body is one CID (length-prefixed)."""

    cid: bytes

    def body(self):
        return _bytes(self.cid)

    @classmethod
    def parse(cls, r):
        return cls(r.cid())


@dataclass
class Have(_CIDMessage):
    """The sender has the block (answer to a want-have)."""

    TYPE: ClassVar[int] = 0x12


@dataclass
class DontHave(_CIDMessage):
    """The sender does not have the block."""

    TYPE: ClassVar[int] = 0x13


SEL_ALL = 0
SEL_PATH = 1
SEL_RANGE = 2


@dataclass
class Selector:
    """Which sub-graph of a root to send.

    ``kind``: ``SEL_ALL`` (the whole DAG; for a commit: its tree, and its parents'
    history when ``history``), ``SEL_PATH`` (the blocks along ``path`` from the root
    (a commit's tree or a directory) and the whole sub-DAG at its end),
    ``SEL_RANGE`` (like PATH, but of the file at ``path`` only its interior nodes
    and the leaves overlapping bytes ``[start, end)``; ``end`` 0 = end of file).
    """

    kind: int = SEL_ALL
    path: str = ""
    start: int = 0
    end: int = 0
    history: bool = False
    skeleton: bool = False  # SEL_ALL only: interior nodes only, no raw leaves
    thin: bool = False  # the client takes DeltaBlock answers (only to a WELCOME_THIN server)
    planes: bool = False  # ... and version-2 values in them (only to a WELCOME_PLANES server)


_SEL_HISTORY = 1  # selector flags (the field was a 0/1 "history" before skeleton)
_SEL_SKELETON = 2
_SEL_THIN = 4
_SEL_PLANES = 8


@dataclass
class DagRequest(Message):
    """GraphSync-like request: send every block of ``selector`` under ``root`` (and,
    for ``SEL_ALL``, under each of ``more_roots`` too) in depth-first pre-order, each
    block once per request, except blocks listed in ``have`` (not sent, but
    traversed) and the whole sub-graphs under ``have_roots`` (the client holds them
    complete: not sent, not traversed). Answered by Block/DontHave messages then
    DagDone.

    ``more_roots`` is encoded after ``have_roots`` only when non-empty, so a request
    with one root has the original layout."""

    TYPE: ClassVar[int] = 0x20
    request_id: int
    root: bytes
    selector: Selector = field(default_factory=Selector)
    have: list[bytes] = field(default_factory=list)
    have_roots: list[bytes] = field(default_factory=list)
    priority: int = 1
    more_roots: list[bytes] = field(default_factory=list)

    @property
    def roots(self) -> list[bytes]:
        """``[root, *more_roots]``."""
        return [self.root, *self.more_roots]

    def body(self):
        s = self.selector
        flags = ((_SEL_HISTORY if s.history else 0) | (_SEL_SKELETON if s.skeleton else 0)
                 | (_SEL_THIN if s.thin else 0) | (_SEL_PLANES if s.planes else 0))
        parts = [_uv(self.request_id), _bytes(self.root), _uv(s.kind), _str(s.path),
                 _uv(s.start), _uv(s.end), _uv(flags), _uv(self.priority),
                 _uv(len(self.have))]
        parts += [_bytes(c) for c in self.have]
        parts.append(_uv(len(self.have_roots)))
        parts += [_bytes(c) for c in self.have_roots]
        if self.more_roots:
            parts.append(_uv(len(self.more_roots)))
            parts += [_bytes(c) for c in self.more_roots]
        return b"".join(parts)

    @classmethod
    def parse(cls, r):
        rid, root = r.uv(), r.cid()
        kind = r.uv()
        if kind not in (SEL_ALL, SEL_PATH, SEL_RANGE):
            raise ProtocolError(f"unknown selector kind {kind}")
        path, start, end, flags = r.str(), r.uv(), r.uv(), r.uv()
        if flags & ~(_SEL_HISTORY | _SEL_SKELETON | _SEL_THIN | _SEL_PLANES):
            raise ProtocolError(f"unknown selector flags {flags}")
        sel = Selector(kind, path, start, end, bool(flags & _SEL_HISTORY),
                       bool(flags & _SEL_SKELETON), bool(flags & _SEL_THIN), bool(flags & _SEL_PLANES))
        prio = r.uv()
        have = [r.cid() for _ in range(r.count(r.limits.max_list))]
        have_roots = [r.cid() for _ in range(r.count(r.limits.max_list))]
        more = []
        if r.pos != r.end:
            more = [r.cid() for _ in range(r.count(r.limits.max_list))]
            if not more:
                raise ProtocolError("empty list of more roots")
        if (more or sel.skeleton) and kind != SEL_ALL:
            raise ProtocolError("several roots and skeleton need the all-selector")
        return cls(rid, root, sel, have, have_roots, prio, more)


@dataclass
class Cancel(Message):
    """Client → server: stop answering request ``request_id``."""

    TYPE: ClassVar[int] = 0x22
    request_id: int

    def body(self):
        return _uv(self.request_id)

    @classmethod
    def parse(cls, r):
        return cls(r.uv())


DONE_OK = 0
DONE_PARTIAL = 1  # some blocks were DontHave
DONE_ERROR = 2


@dataclass
class DagDone(Message):
    """Server → client: end of the answer to a DagRequest, with counts."""

    TYPE: ClassVar[int] = 0x21
    request_id: int
    status: int = DONE_OK
    blocks: int = 0
    nbytes: int = 0
    message: str = ""

    def body(self):
        return (_uv(self.request_id) + _uv(self.status) + _uv(self.blocks)
                + _uv(self.nbytes) + _str(self.message))

    @classmethod
    def parse(cls, r):
        return cls(r.uv(), r.uv(), r.uv(), r.uv(), r.str())


@dataclass
class ListRefs(Message):
    """Client → server: list refs whose full name starts with ``prefix``."""

    TYPE: ClassVar[int] = 0x30
    request_id: int
    prefix: str = ""

    def body(self):
        return _uv(self.request_id) + _str(self.prefix)

    @classmethod
    def parse(cls, r):
        return cls(r.uv(), r.str())


@dataclass
class Refs(Message):
    """Server → client: ``{full ref name: binary CID}``, plus ``head`` (the
    branch HEAD points to, or "")."""

    TYPE: ClassVar[int] = 0x31
    request_id: int
    refs: dict[str, bytes] = field(default_factory=dict)
    head: str = ""

    def body(self):
        parts = [_uv(self.request_id), _str(self.head), _uv(len(self.refs))]
        for name, cid in sorted(self.refs.items()):
            parts.append(_str(name) + _bytes(cid))
        return b"".join(parts)

    @classmethod
    def parse(cls, r):
        rid, head = r.uv(), r.str()
        refs = {}
        for _ in range(r.count(r.limits.max_list)):
            name = r.str()
            refs[name] = r.cid()
        return cls(rid, refs, head)


@dataclass
class RefUpdate(Message):
    """Client → server (push): compare-and-swap ref ``name`` from ``old`` (None:
    the ref must not exist) to ``new`` (None: delete). The server checks that the
    whole DAG of ``new`` is present first."""

    TYPE: ClassVar[int] = 0x40
    request_id: int
    name: str
    old: bytes | None
    new: bytes | None

    def body(self):
        return (_uv(self.request_id) + _str(self.name) + _bytes(self.old or b"")
                + _bytes(self.new or b""))

    @classmethod
    def parse(cls, r):
        return cls(r.uv(), r.str(), r.opt_cid(), r.opt_cid())


@dataclass
class RefResult(Message):
    """Server → client: outcome of a RefUpdate; ``current`` is the ref's value after it."""

    TYPE: ClassVar[int] = 0x41
    request_id: int
    ok: bool
    current: bytes | None
    message: str = ""

    def body(self):
        return (_uv(self.request_id) + _uv(int(self.ok)) + _bytes(self.current or b"")
                + _str(self.message))

    @classmethod
    def parse(cls, r):
        return cls(r.uv(), bool(r.uv()), r.opt_cid(), r.str())


E_PROTOCOL = 1
E_UNAUTHORIZED = 2
E_NOT_FOUND = 3
E_LIMIT = 4
E_INTERNAL = 5


@dataclass
class Error(Message):
    """An error about request ``request_id`` (0: the session). ``code``: 1 protocol,
    2 unauthorised, 3 not found, 4 limit exceeded, 5 internal."""

    TYPE: ClassVar[int] = 0x7F
    request_id: int
    code: int
    message: str = ""

    def body(self):
        return _uv(self.request_id) + _uv(self.code) + _str(self.message)

    @classmethod
    def parse(cls, r):
        return cls(r.uv(), r.uv(), r.str())


MESSAGE_TYPES: dict[int, type[Message]] = {
    m.TYPE: m
    for m in (Hello, Welcome, Auth, AuthOk, WantList, Block, DeltaBlock, Have, DontHave, DagRequest,
              DagDone, Cancel, ListRefs, Refs, RefUpdate, RefResult, Error)
}


# ---------------------------------------------------------------- framing
def encode(msg: Message) -> bytes:
    """Frame ``msg``: ``uvarint(len) ‖ type ‖ body`` (bytes)."""
    body = msg.body()
    return _uv(len(body) + 1) + bytes((msg.TYPE,)) + body


def block_frame_header(cid: bytes, nbytes: int, msg_type: int = Block.TYPE) -> bytes:
    """The bytes of a ``Block`` frame (``msg_type=DeltaBlock.TYPE``: a ``DeltaBlock``
    frame) that precede its ``nbytes`` of data: send ``header ‖ data`` to frame a
    block without copying the data."""
    cid_part = _uv(len(cid)) + cid + _uv(nbytes)
    return _uv(1 + len(cid_part) + nbytes) + bytes((msg_type,)) + cid_part


def decode_message(payload, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode one frame payload (type byte + body, without the length prefix).

    Raises :class:`ProtocolError` for an unknown type or a malformed body.
    """
    if not len(payload):
        raise ProtocolError("empty message")
    cls = MESSAGE_TYPES.get(payload[0])
    if cls is None:
        raise ProtocolError(f"unknown message type {payload[0]:#x}")
    r = _Reader(payload, 1, len(payload), limits)
    msg = cls.parse(r)
    r.done()
    return msg


_BIG_FRAME = 64 * 1024
_HEAD = 256  # bytes at the start of a large frame kept contiguous: type, CID, length


class BlockParts:
    """A received block's bytes as the buffers they arrived in, in order, without
    a joining copy (what :class:`FrameDecoder` gives as ``Block.data`` with
    ``zero_copy``). ``parts``: immutable ``bytes`` or read-only ``memoryview``
    slices of ``bytes``; ``len()`` is the block's size in bytes."""

    __slots__ = ("parts", "nbytes")

    def __init__(self, parts: list, nbytes: int):
        self.parts = parts
        self.nbytes = nbytes

    def __len__(self) -> int:
        return self.nbytes

    def tobytes(self) -> bytes:
        """The block as one ``bytes`` (one copy). Only the first and last parts can
        be views: they are made ``bytes`` first, so the join of a large block runs
        without the GIL (CPython releases it for a join of ``bytes`` ≥ 1 MiB)."""
        parts = self.parts
        if type(parts[0]) is not bytes:
            parts[0] = bytes(parts[0])
        if type(parts[-1]) is not bytes:
            parts[-1] = bytes(parts[-1])
        return parts[0] if len(parts) == 1 else b"".join(parts)


def block_bytes(data) -> bytes | memoryview:
    """``data`` of a received ``Block`` as one buffer: a :class:`BlockParts` is
    joined (one copy), anything else is returned as it is."""
    return data.tobytes() if type(data) is BlockParts else data


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)``, then ``next()`` until it returns None.

    Raises :class:`ProtocolError` as soon as a length prefix announces more than
    ``limits.max_message`` bytes (before buffering them) or a frame is malformed.
    Memory held is at most one frame plus one received chunk.

    Fed chunks are kept by reference, not copied, while they are being decoded:
    a large frame (a block) is collected as the list of the chunks (and chunk
    slices) it arrived in, and only its first few hundred bytes (type, CID,
    length) need to be contiguous. ``Block.data`` of such a frame is then one
    ``bytes`` joined from them (one copy), or with ``zero_copy`` a
    :class:`BlockParts` (no copy at all: whoever stores the block joins it, off
    the event loop). Small frames are decoded from the chunk itself, or from a
    small buffer when a frame straddles chunks. ``feed`` copies a chunk that is
    not ``bytes`` (a ``bytearray``/``memoryview`` could change after the call).

    A driver whose stream can decrypt straight into memory (TLS/TCP:
    :meth:`~.tcp.TLSStream.receive_into`) asks :meth:`receive_buffer` while a large
    ``Block`` frame is being collected (``zero_copy`` only): the decoder then
    allocates the block's own ``bytearray`` (size from the frame header, checked
    against ``limits.max_block`` first) and hands out the unfilled rest of it; the
    driver writes received bytes there and reports them with :meth:`filled`. That
    block's ``data`` is then that ``bytearray``: no chunk list and no join.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, zero_copy: bool = False):
        self.limits = limits
        self.zero_copy = zero_copy
        self._buf = b""  # undecoded bytes from _pos: a fed chunk (by reference) or a bytearray
        self._pos = 0
        self.bytes_in = 0
        self._parts: list | None = None  # the large frame being collected
        self._need = 0  # bytes of it still to come
        self._frame = 0  # its length (type + body)
        self._ready: tuple | None = None  # (parts, length): a complete large frame
        self._into: bytearray | None = None  # a large Block's data, being filled in place
        self._into_cid = b""
        self._into_pos = 0  # bytes of _into filled
        self._done: Message | None = None  # a Block whose _into is complete

    def feed(self, data) -> None:
        """Add received bytes (any bytes-like, any split); decode with :meth:`next`. Raises
        :class:`ProtocolError` for a frame over ``max_message`` bytes or an unknown type."""
        n = len(data)
        self.bytes_in += n
        if not n:
            return
        if self._into is not None:
            need = self._need
            k = min(n, need)
            self._into[self._into_pos:self._into_pos + k] = data[:k] if k < n else data
            self.bytes_in -= k  # counted again by filled()
            self.filled(k)
            if k == n:
                return
            data = data[k:]
            n -= k
        if type(data) is not bytes:
            data = bytes(data)
        parts = self._parts
        if parts is not None:
            need = self._need
            if n < need:
                parts.append(data)
                self._need = need - n
                return
            if n == need:
                parts.append(data)
                data = None
            else:
                mv = memoryview(data)
                parts.append(mv[:need])
                data = mv[need:]
            self._ready, self._parts, self._need = (parts, self._frame), None, 0
            if data is None:
                return
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            self._buf, self._pos = data, 0  # nothing pending: decode from the chunk itself
            return
        if type(buf) is not bytearray:
            buf = bytearray(buf[pos:])
            self._pos = 0
        elif pos > (1 << 20) and pos * 2 > len(buf):
            del buf[:pos]
            self._pos = 0
        buf += data
        self._buf = buf

    def receive_buffer(self) -> memoryview | None:
        """Where the rest of the large ``Block`` frame being received belongs: a
        writable view of the block's own buffer (its unfilled end, as many bytes as
        the frame still lacks), or None when no such frame is in progress (or not
        ``zero_copy``). Write received bytes at its start and call :meth:`filled`.
        Raises :class:`ProtocolError` for a frame header that is malformed or
        announces a block over ``limits.max_block`` (before allocating)."""
        if self._into is None:
            parts = self._parts
            if parts is None or not self.zero_copy or parts[0][0] != Block.TYPE:
                return None
            cid, start, size = self._block_head(parts[0], self._frame)
            buf = bytearray(size)
            pos = 0
            for part in [memoryview(parts[0])[start:]] + parts[1:]:
                buf[pos:pos + len(part)] = part
                pos += len(part)
            self._into, self._into_cid, self._into_pos = buf, cid, pos
            self._parts = None
        return memoryview(self._into)[self._into_pos:]

    def filled(self, n: int) -> None:
        """``n`` bytes were written at the start of the last :meth:`receive_buffer`
        (0 < ``n`` <= its length); the block is complete once the frame is."""
        if not 0 < n <= self._need or self._into is None:
            raise ValueError(f"filled({n}) with {self._need} bytes of a block expected")
        self.bytes_in += n
        self._into_pos += n
        self._need -= n
        if not self._need:
            self._done = Block(self._into_cid, self._into)
            self._into, self._into_cid, self._into_pos = None, b"", 0

    def next(self) -> Message | None:
        """The next complete message, or ``None`` if more bytes are needed. Raises
        :class:`ProtocolError` for a malformed body."""
        done = self._done
        if done is not None:
            self._done = None
            return done
        if self._into is not None:
            return None
        ready = self._ready
        if ready is not None:
            self._ready = None
            return self._decode_parts(*ready)
        if self._parts is not None:
            return None
        return self._next_small()

    def _decode_parts(self, parts: list, n: int) -> Message:
        first = parts[0]
        if first[0] != Block.TYPE:
            joined = b"".join(bytes(x) if type(x) is not bytes else x for x in parts)
            return decode_message(joined, self.limits)
        cid, start, size = self._block_head(first, n)
        rest = memoryview(first)[start:]
        data_parts = [rest] + parts[1:] if len(rest) else parts[1:]
        data = BlockParts(data_parts, size)
        return Block(cid, data if self.zero_copy else data.tobytes())

    def _block_head(self, first, n: int) -> tuple[bytes, int, int]:
        """``(cid, offset of the data in first, data size)`` of a ``Block`` frame of
        ``n`` bytes (type + body) starting at ``first`` (at least its header)."""
        head = memoryview(first)[:_HEAD]
        r = _Reader(head, 1, len(head), self.limits)
        cid = r.cid()
        size = r.uv()
        if size > self.limits.max_block:
            raise ProtocolError(f"field of {size} bytes exceeds limit {self.limits.max_block}")
        if r.pos + size != n:
            raise ProtocolError("truncated field" if r.pos + size > n
                                else "trailing bytes in message")
        return cid, r.pos, size

    def _next_small(self) -> Message | None:
        buf, pos = self._buf, self._pos
        end = len(buf)
        try:
            n, p = decode_varint(buf, pos, end, max_bytes=5)
        except TruncatedVarint:
            return None
        except VarintError:
            raise ProtocolError("frame length prefix too long") from None
        if n > self.limits.max_message:
            raise ProtocolError(f"message of {n} bytes exceeds limit {self.limits.max_message}")
        if n == 0:
            raise ProtocolError("empty message")
        mutable = type(buf) is bytearray
        if p + n > end:
            if n > _BIG_FRAME and end - p >= _HEAD:
                # collect the rest of this frame as the chunks it arrives in
                first = bytes(buf[p:end]) if mutable else memoryview(buf)[p:end]
                self._parts, self._need, self._frame = [first], n - (end - p), n
                self._buf, self._pos = b"", 0
            return None
        if mutable:
            with memoryview(buf) as mv:
                if self.zero_copy and n > _BIG_FRAME and buf[p] == Block.TYPE:
                    msg = self._decode_parts([bytes(mv[p : p + n])], n)
                else:
                    msg = decode_message(mv[p : p + n], self.limits)
        elif n > _BIG_FRAME and buf[p] == Block.TYPE:
            msg = self._decode_parts([memoryview(buf)[p : p + n]], n)
        else:
            msg = decode_message(memoryview(buf)[p : p + n], self.limits)
        self._pos = p + n
        if self._pos >= end:
            self._buf, self._pos = b"", 0  # drop the chunk
        return msg

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        n = len(self._buf) - self._pos
        if self._parts is not None or self._into is not None:
            n += self._frame - self._need
        if self._done is not None:
            n += self._frame
        if self._ready is not None:
            n += self._ready[1]
        return n
