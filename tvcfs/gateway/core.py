"""What a trustless-gateway request means, without an HTTP framework.

Spec: https://specs.ipfs.tech/http-gateways/trustless-gateway/ (and the path gateway it
extends). This module turns a request's CID, path, ``format`` / ``Accept`` and CAR
parameters into a :class:`Want`, and walks the blocks a CAR response carries
(:func:`car_blocks`), reading them through a ``get`` callable (``cid -> bytes``,
raising :class:`~tvcfs.errors.BlockNotFound`) — the repository's block layer, which
verifies every block before it leaves the store. :mod:`tvcfs.gateway.app` is the
HTTP side. See ``docs/backends.md``, "The IPFS network".
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable, Iterator

from ..dag import block_links, resolve_path
from ..encoding.cid import DAG_PB, RAW, cid_codec, cid_from_str, cid_str
from ..encoding.unixfs import FILE, RAW_T, decode_pb_unixfs
from ..encoding.varint import encode_varint
from ..errors import InvalidCID, MalformedObject, TvcfsError

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
IMMUTABLE = "public, max-age=29030400, immutable"  # Cache-Control of every /ipfs/ answer
# the identity CID of empty bytes: the spec's probe path (GET /ipfs/bafkqaaa)
PROBE_CID = "bafkqaaa"
PROBE_BYTES = b"\x01\x55\x00\x00"
SCOPES = ("block", "entity", "all")
_ENTITY_BYTES = re.compile(r"(-?[0-9]{1,20}):(\*|-?[0-9]{1,20})")  # FROM:TO (the spec's integers)

Getter = Callable[[bytes], "bytes | memoryview"]


class GatewayError(TvcfsError):
    """A request the gateway answers with an HTTP error: ``status`` (400, 404, 406,
    412, 500, 502) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Want:
    """The response a request asks for: ``kind`` ``"raw"`` or ``"car"``; ``dups``
    (CAR: send a block again each time the walk meets it); ``from_format``: the
    ``format`` query parameter chose it (else ``Accept``: ``Content-Location`` is
    sent)."""

    kind: str
    dups: bool = False
    from_format: bool = False

    @property
    def content_type(self) -> str:
        """The response's ``Content-Type``: ``application/vnd.ipld.raw``, or
        ``application/vnd.ipld.car; version=1; order=dfs; dups=y|n`` (IPFS Trustless Gateway
        spec)."""
        if self.kind == "raw":
            return RAW_TYPE
        return f"{CAR_TYPE}; version=1; order=dfs; dups={'y' if self.dups else 'n'}"


def parse_cid(text: str) -> bytes:
    """The binary CID of the ``{cid}`` path segment (any multibase; CIDv0 becomes
    CIDv1 dag-pb). Raises :class:`GatewayError` 400."""
    try:
        return cid_from_str(text)
    except InvalidCID as e:
        raise GatewayError(400, f"invalid CID {text!r}: {e}") from None


def _media_ranges(accept: str) -> list:
    """``Accept`` → ``[(q, type, {param: value})]`` best first (stable for ties)."""
    out = []
    for i, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        if not fields[0]:
            continue
        params = {}
        for f in fields[1:]:
            k, _, v = f.partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 0.0
        if q > 0:
            out.append((-q, i, fields[0].lower(), params))
    return [(-q, t, p) for q, _, t, p in sorted(out)]


def _car_params_ok(version, order, dups) -> bool:
    return version in (None, "", "1") and order in (None, "", "dfs", "unk") and dups in (None, "", "y", "n")


def negotiate(fmt: str | None, accept: str | None, car_version: str | None = None,
              car_order: str | None = None, car_dups: str | None = None) -> Want:
    """Choose the response from the ``format`` query parameter (wins), else the
    ``Accept`` header; the ``car-version`` / ``car-order`` / ``car-dups`` query
    parameters win over the ``Accept`` CAR parameters. Only CAR v1 in ``dfs`` order
    is written (``order=unk`` is answered with ``dfs``). Raises :class:`GatewayError`
    400 for an unknown ``format`` or no acceptable type (this gateway is strict
    trustless: no deserialised responses), 406 when only unsupported CAR variants
    are acceptable."""
    params: dict = {}
    kind = None
    if fmt:
        if fmt not in ("raw", "car"):
            raise GatewayError(400, f"unsupported format={fmt!r}: this trustless gateway answers "
                                    "format=raw (a block) and format=car")
        kind = fmt
    unsupported_car = False
    for _, mtype, p in _media_ranges(accept or ""):
        if mtype == RAW_TYPE and kind in (None, "raw"):
            kind = kind or "raw"
            break
        if mtype == CAR_TYPE and kind in (None, "car"):
            if _car_params_ok(p.get("version"), p.get("order"), p.get("dups")):
                kind, params = "car", p
                break
            unsupported_car = True
    if kind is None:
        if unsupported_car:
            raise GatewayError(406, "unsupported CAR variant: this gateway writes "
                                    f"{CAR_TYPE}; version=1; order=dfs; dups=n or dups=y")
        raise GatewayError(400, "this is a trustless gateway: ask for a block or a CAR "
                                f"(?format=raw or ?format=car, or Accept: {RAW_TYPE} or {CAR_TYPE})")
    version = car_version if car_version is not None else params.get("version")
    order = car_order if car_order is not None else params.get("order")
    dups = car_dups if car_dups is not None else params.get("dups")
    if kind == "car" and not _car_params_ok(version, order, dups):
        raise GatewayError(400, f"unsupported CAR parameters version={version} order={order} dups={dups}: "
                                "this gateway writes CAR version 1, order dfs, dups y or n")
    return Want(kind, dups=(kind == "car" and dups == "y"), from_format=bool(fmt))


def parse_entity_bytes(text: str) -> tuple[int, int | None]:
    """``entity-bytes=from:to`` → ``(from, to)``: inclusive byte offsets, negative ones
    counted from the end, ``to`` ``None`` for ``*``. Raises :class:`GatewayError` 400
    for anything else (only ASCII digits with an optional ``-``, at most 20 of them:
    not Python's ``int`` syntax with ``+``, ``_`` or spaces), or for ``from > to``
    when both are non-negative."""
    m = _ENTITY_BYTES.fullmatch(text)
    if m is None:
        shown = text if len(text) <= 64 else text[:64] + "…"
        raise GatewayError(400, f"invalid entity-bytes={shown!r}: expected FROM:TO with integers or * "
                                "(e.g. 0:1023, -1024:*)")
    lo = int(m.group(1))
    hi = None if m.group(2) == "*" else int(m.group(2))
    if hi is not None and lo >= 0 and hi >= 0 and hi < lo:
        raise GatewayError(400, f"invalid entity-bytes={text!r}: the range ends before it starts")
    return lo, hi


def resolve_range(rng: tuple[int, int | None], size: int) -> tuple[int, int] | None:
    """``(from, to)`` of :func:`parse_entity_bytes` over an entity of ``size`` bytes →
    ``(first, last)`` inclusive byte offsets inside it, or ``None`` when the range is
    empty or wholly outside (the response is then that of ``dag-scope=block``)."""
    lo, hi = rng
    first = lo if lo >= 0 else max(size + lo, 0)
    last = size - 1 if hi is None else (hi if hi >= 0 else size + hi)
    last = min(last, size - 1)
    if first > last:
        return None
    return first, last


def resolve(get: Getter, root: bytes, path: str) -> tuple[bytes, list]:
    """Follow the UnixFS ``path`` (``""`` for none) from ``root``; return ``(terminal
    CID, path blocks)``: the ``(cid, block)`` pairs read to follow it, root first
    (what a client needs to verify the path). Raises :class:`GatewayError` 404 for a
    missing path, and what ``get`` raises."""
    path = path.strip("/")
    if not path:
        return root, []
    seen: dict = {}

    def rec(c):
        b = seen.get(bytes(c))
        if b is None:
            b = seen[bytes(c)] = get(c)
        return b

    from ..errors import PathNotFound

    try:
        entry = resolve_path(rec, root, path)
    except PathNotFound as e:
        raise GatewayError(404, f"/ipfs/{cid_str(root)}/{path}: {e}") from None
    except MalformedObject as e:
        raise GatewayError(400, f"cannot follow /ipfs/{cid_str(root)}/{path}: {e}") from None
    return entry.cid, list(seen.items())


def _walk(get: Getter, cid: bytes, dups: bool, seen: set, rng: tuple[int, int] | None,
          file_only: bool, start: int = 0, top: bool = True) -> Iterator[tuple[bytes, object]]:
    """Depth-first pre-order walk below ``cid`` (``cid`` included unless already sent
    as the end of the path). ``file_only``: follow the links of UnixFS file nodes
    only, and with ``rng`` only the children holding bytes of ``[first, last]``
    (``start``: the node's first byte in the file). ``seen``: CIDs sent already (not
    sent again unless ``dups``)."""
    block = get(cid)
    if cid not in seen or (dups and not top):
        seen.add(cid)
        yield cid, block
    elif not file_only and not top:
        return  # everything below was sent with it
    codec = cid_codec(cid)
    if codec == RAW:
        return
    if not file_only:
        for link in block_links(cid, block):
            yield from _walk(get, link, dups, seen, None, False, top=False)
        return
    if codec != DAG_PB:
        return
    links, u = decode_pb_unixfs(block)
    if u.type not in (FILE, RAW_T):
        return
    pos = start + len(u.data or b"")
    for link, size in zip(links, u.blocksizes):
        if rng is None or (pos <= rng[1] and pos + size > rng[0]):
            yield from _walk(get, link.hash, dups, seen, rng, True, pos, top=False)
        pos += size


def entity_size(get: Getter, cid: bytes) -> int | None:
    """Bytes of the UnixFS file (or raw block) ``cid``; ``None`` when it is not a
    file (a directory, a symlink, dag-cbor) and ``entity-bytes`` does not apply."""
    codec = cid_codec(cid)
    if codec == RAW:
        return len(get(cid))
    if codec != DAG_PB:
        return None
    try:
        _, u = decode_pb_unixfs(get(cid))
    except MalformedObject:
        return None
    if u.type not in (FILE, RAW_T):
        return None
    return u.filesize if u.filesize is not None else len(u.data or b"")


def car_blocks(get: Getter, terminal: bytes, path_blocks: list, scope: str,
               rng: tuple[int, int | None] | None, dups: bool = False) -> Iterator[tuple[bytes, object]]:
    """The ``(cid, block)`` pairs of a CAR response in DFS order: the blocks that
    verify the path, then those of ``dag-scope`` at ``terminal``: ``block`` (it
    alone), ``entity`` (a UnixFS file's whole DAG — or, with the byte range ``rng``
    of :func:`parse_entity_bytes`, only the nodes and leaves that hold those bytes; a
    directory's, symlink's or dag-cbor node's own block), ``all`` (everything linked
    below it; for a commit that is its tree and its history). A block missing on
    the way raises :class:`~tvcfs.errors.BlockNotFound` mid-stream (the HTTP layer
    then ends the response early: an incomplete CAR)."""
    seen: set = set()
    for c, b in path_blocks:
        if c not in seen:
            seen.add(c)
            yield c, b
    if scope == "block":
        if terminal not in seen:
            yield terminal, get(terminal)
        return
    if scope == "all":
        yield from _walk(get, terminal, dups, seen, None, False)
        return
    span = None
    if rng is not None:
        size = entity_size(get, terminal)
        if size is not None:
            span = resolve_range(rng, size)
            if span is None:  # empty or wholly outside: the answer of dag-scope=block
                if terminal not in seen:
                    yield terminal, get(terminal)
                return
    yield from _walk(get, terminal, dups, seen, span, True)


def car_header(root: bytes) -> bytes:
    """The CAR v1 header (length-prefixed) with ``roots`` = ``[root]``."""
    import io

    from ..encoding.car import write_car_header

    buf = io.BytesIO()
    write_car_header(buf, [root])
    return buf.getvalue()


def car_section(cid: bytes, block) -> bytes:
    """One CAR v1 section: ``varint(len(cid) + len(block)) ‖ cid ‖ block``."""
    return encode_varint(len(cid) + len(block)) + bytes(cid) + bytes(block)


def car_etag(root: bytes, path: str, scope: str, entity_bytes: str | None, dups: bool) -> str:
    """A weak ETag naming everything that shapes a CAR answer (the spec: the
    ``dag-scope`` and ``entity-bytes`` must change it)."""
    tail = f"{scope}" + (f".{entity_bytes}" if entity_bytes else "") + (".y" if dups else ".n")
    if path.strip("/"):
        tail += "." + hashlib.sha256(path.strip("/").encode()).hexdigest()[:12]
    return f'W/"{cid_str(root)}.car.dfs.{tail}"'
