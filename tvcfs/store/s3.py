"""S3-compatible object storage as a block backend: :class:`S3Store` (blocks in packs)
and :class:`S3Refs` (refs moved by conditional writes). See ``docs/backends.md``.

Layout under ``s3://BUCKET/PREFIX`` (``PREFIX`` may be empty)::

    PREFIX/packs/<pack-id>.pack   blocks back to back (after a 16-byte header)
    PREFIX/packs/<pack-id>.idx    sorted CID -> (offset, length) for that pack
    PREFIX/deleted/<cid>          a tombstone: the block counts as deleted (mark-only)
    PREFIX/refs/heads/NAME        a ref: the commit's CID string (base32), no newline

Blocks are packed (as git packfiles and Xet xorbs do) so that a model of 100 000
leaves is a few hundred objects, not 100 000: a pack fills up to ``pack_target``
bytes (64 MiB by default) and is written by multipart upload.

**Pack** (``.pack``): ``b"TVCFSPAK"``, version (u32 big-endian, 2), block count (u32),
then the blocks' stored values back to back in index order. Offsets in the index
count from the start of the object (header included). A stored value is the block's
raw bytes or a packed value of :mod:`tvcfs.store.encodings` (docs/format.md, "Packed
blocks"): byte-grouped zstd, or the XOR with a delta base then byte-grouped zstd.

**Index** (``.idx``): ``b"TVCFSIDX"``, version (u32, 2), entry count ``n`` (u32); ``n``
entries of 90 bytes sorted by CID: binary CIDv1 (36 bytes), offset (u64), stored
length (u32), encoding (u8: 0 raw, 1 zstd, 2 byte-grouped zstd, 3 XOR delta), delta
depth (u8), raw length (u32), base CID (36 bytes, zeros unless a delta); then the
SHA-256 (32 bytes) of everything before it. Version 1 indexes (entries of 48 bytes:
CID, offset, length; every block raw) are still read. The pack id is the lower-case
hex SHA-256 of the ``n`` entries, so writing the same values twice names the same
objects. A pack is uploaded before its index: an index that is listed names a
complete pack.

**Encodings** (below the CID: names, DAGs and what a reader gets are unchanged).
When a pack is written every block is encoded if that saves 5 %; with ``deltas`` (a
:class:`~tvcfs.pack.DeltaSource` of the commits being pushed) a tensor leaf is
stored as the XOR with the same tensor (name, dtype, shape, offset) of the pushed
commit's named delta base or parent when the bucket already holds that block, with
chains at most :data:`~tvcfs.store.encodings.MAX_DEPTH` deep. A read decodes values
(fetching their bases), and every decoded block is hashed against its CID.

**Consistency.** Packs and indexes are immutable once written. A reader lists
``PREFIX/packs/*.idx`` once and caches every index it has read; a lookup that misses
lists again (at most every ``refresh_interval`` seconds) and reads only the new
indexes, so packs written by other processes are seen. Refs are the only mutable
objects and change by compare-and-swap on the object's ETag (``If-None-Match: *`` to
create, ``If-Match`` to update); a lost race raises :class:`~tvcfs.errors.RefConflict`
and writes nothing.

**Deleting** is mark-only: :meth:`S3Store.delete` writes a tombstone object; the
bytes stay in their pack until a repack (not implemented yet) rewrites it.

**Reads are verified**: every block read from a pack is hashed against its CID
(:func:`tvcfs.store.verify.verify_many`); a block that does not match is never
returned — the read raises :class:`~tvcfs.errors.BlockUnavailable` naming the pack.

**Errors**: an unreachable endpoint, a missing bucket, missing credentials or a
timeout raise :class:`~tvcfs.errors.BlockUnavailable` with one line naming the
bucket and endpoint, after at most ``retries`` attempts with ``connect_timeout`` /
``read_timeout`` seconds each; "not in any pack" is ``None``.

**Client**: boto3 (chosen by measurement, ``docs/performance.md`` "S3 client
choice"), imported when the first store is built. Credentials, region and endpoint
come from the standard AWS chain (``AWS_ACCESS_KEY_ID``…, ``AWS_PROFILE``,
``~/.aws/credentials`` and ``~/.aws/config``, instance roles) and
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for other S3-compatible services;
arguments override them.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import logging
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, NamedTuple
from urllib.parse import urlsplit

from ..encoding.cid import CID_LEN, cid_from_str
from ..encoding.multibase import cid_str
from ..errors import BlockUnavailable, CorruptBlock, RefConflict, TvcfsError
from . import encodings
from .base import PERSISTENT, REMOTE, StoreBase
from .verify import verify_many

__all__ = ["S3Store", "S3Refs", "parse_s3_url", "encode_index", "decode_index", "PACK_TARGET"]

log = logging.getLogger(__name__)

MiB = 1 << 20
PACK_TARGET = 64 * MiB  # bytes: a pack is written once this many bytes are pending
PACK_MAGIC = b"TVCFSPAK"
IDX_MAGIC = b"TVCFSIDX"
VERSION = 2  # of packs and indexes written now; version 1 (raw blocks only) is still read
_HEADER = struct.Struct(">8sII")  # magic, version, count: 16 bytes
_ENTRY_V1 = struct.Struct(f">{CID_LEN}sQI")  # CID, offset, length: 48 bytes
_ENTRY = struct.Struct(f">{CID_LEN}sQIBBI{CID_LEN}s")  # + encoding, depth, raw length, base: 90 bytes
_NO_BASE = bytes(CID_LEN)
MAX_GAP = 1 * MiB  # bytes: neighbouring blocks at most this far apart are read in one GET
MAX_RANGE = 16 * MiB  # bytes: a merged ranged GET is cut at this size


class BadIndex(TvcfsError, ValueError):
    """A pack index object does not decode (truncated, wrong magic, bad checksum)."""


class Entry(NamedTuple):
    """One index entry: the block ``cid`` (binary), where its stored value lies in the
    pack (``offset``, ``length`` in bytes), its ``encoding`` (0 raw, else the codes of
    :mod:`tvcfs.store.encodings`), delta ``depth`` (0 unless a delta), ``raw`` length
    of the block in bytes, and the delta ``base`` CID (``None`` unless a delta)."""

    cid: bytes
    offset: int
    length: int
    encoding: int = 0
    depth: int = 0
    raw: int = -1
    base: bytes | None = None


class Loc(NamedTuple):
    """Where a block is: ``pack`` id, ``offset``/``length`` of its stored value,
    ``encoding``, ``depth``, ``raw`` length, ``base`` (as in :class:`Entry`)."""

    pack: str
    offset: int
    length: int
    encoding: int = 0
    depth: int = 0
    raw: int = 0
    base: bytes | None = None


def _entry(e) -> Entry:
    e = Entry(*e)
    return e._replace(cid=bytes(e.cid), raw=e.length if e.raw < 0 else e.raw)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``"s3://bucket/some/prefix"`` → ``("bucket", "some/prefix")`` (prefix without
    leading or trailing slashes, may be ``""``). Raises :class:`TvcfsError` for
    anything else."""
    parts = urlsplit(url or "")
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise TvcfsError(f"not an S3 URL: {url!r} (expected s3://BUCKET/PREFIX)")
    return parts.netloc, parts.path.strip("/")


def encode_index(entries: list, version: int = VERSION) -> tuple[str, bytes]:
    """``entries``: :class:`Entry` tuples or ``(cid, offset, length)`` triples (raw
    blocks), any order → ``(pack_id, index bytes)`` in the format of the module
    docstring. ``version=1`` writes the old raw-only format (entries must be raw)."""
    es = sorted((_entry(e) for e in entries), key=lambda e: e.cid)
    if version == 1:
        if any(e.encoding for e in es):
            raise ValueError("a version 1 pack index cannot record encoded blocks")
        body = b"".join(_ENTRY_V1.pack(e.cid, e.offset, e.length) for e in es)
    else:
        body = b"".join(_ENTRY.pack(e.cid, e.offset, e.length, e.encoding, e.depth, e.raw, e.base or _NO_BASE)
                        for e in es)
    head = _HEADER.pack(IDX_MAGIC, version, len(es)) + body
    return hashlib.sha256(body).hexdigest(), head + hashlib.sha256(head).digest()


def decode_index(data: bytes) -> list:
    """Index bytes (version 1 or 2) → list of :class:`Entry` sorted by CID. Raises
    :class:`BadIndex`."""
    data = bytes(data)
    if len(data) < _HEADER.size + 32:
        raise BadIndex("pack index truncated")
    magic, version, n = _HEADER.unpack_from(data)
    if magic != IDX_MAGIC or version not in (1, 2):
        raise BadIndex(f"not a tvcfs pack index (magic {magic!r}, version {version})")
    fmt = _ENTRY_V1 if version == 1 else _ENTRY
    end = _HEADER.size + n * fmt.size
    if len(data) != end + 32 or hashlib.sha256(data[:end]).digest() != data[end:]:
        raise BadIndex("pack index checksum does not match (truncated or corrupt)")
    if version == 1:
        return [Entry(c, o, ln, 0, 0, ln, None) for c, o, ln in fmt.iter_unpack(data[_HEADER.size:end])]
    out = []
    for c, o, ln, enc, depth, raw, base in fmt.iter_unpack(data[_HEADER.size:end]):
        if enc not in (0, *encodings.NAMES) or depth > encodings.MAX_DEPTH \
                or (enc == encodings.XOR_DELTA) != (base != _NO_BASE):
            raise BadIndex(f"pack index entry of {cid_str(c)} has a bad encoding ({enc}, depth {depth})")
        out.append(Entry(c, o, ln, enc, depth, raw, base if enc == encodings.XOR_DELTA else None))
    return out


def _client_errors():
    import botocore.exceptions as bx

    return bx


class _Bucket:
    """The few S3 operations tvcfs needs, over one boto3 client, with every failure
    turned into :class:`BlockUnavailable` naming ``s3://bucket/prefix`` and the
    endpoint."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None, profile: str | None,
                 region: str | None, connect_timeout: float, read_timeout: float, retries: int,
                 max_connections: int):
        try:
            import boto3
            from botocore.config import Config
        except ImportError as e:
            raise TvcfsError(f"the S3 backend needs boto3 ({e.name} is missing): pip install 'tvcfs[s3]'") from None
        self.bucket, self.prefix = bucket, prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        try:
            session = boto3.session.Session(profile_name=profile)
        except _client_errors().BotoCoreError as e:  # ProfileNotFound and the like
            raise TvcfsError(f"{self.url}: {e}") from None
        cfg = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                     retries={"max_attempts": max(1, retries), "mode": "standard"},
                     max_pool_connections=max_connections)
        self.client = session.client("s3", endpoint_url=endpoint_url or None, region_name=region, config=cfg)
        self.endpoint = self.client.meta.endpoint_url
        self.reads = 0  # LIST pages and GETs sent (any object), for statistics
        self._reads_lock = threading.Lock()

    def _count(self) -> None:
        with self._reads_lock:
            self.reads += 1

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def unavailable(self, e: Exception, what: str = "") -> BlockUnavailable:
        """One-line :class:`BlockUnavailable` for a client error ``e``."""
        bx = _client_errors()
        where = f"{self.url} at {self.endpoint}"
        if isinstance(e, bx.ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                msg = f"{where}: bucket {self.bucket!r} does not exist (create it, or check the URL)"
            elif code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                msg = f"{where}: access denied ({code}); check the AWS credentials or profile"
            else:
                msg = f"{where}: {what + ': ' if what else ''}{code or e}"
        elif isinstance(e, bx.NoCredentialsError):
            msg = f"{where}: no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
        elif isinstance(e, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
            msg = f"{where}: cannot connect to the endpoint"
        elif isinstance(e, bx.ReadTimeoutError):
            msg = f"{where}: no answer in time{' for ' + what if what else ''}"
        else:
            msg = f"{where}: {what + ': ' if what else ''}{e}"
        return BlockUnavailable(msg, tier=self.url)

    def _call(self, fn, what: str, **kw):
        bx = _client_errors()
        try:
            return fn(Bucket=self.bucket, **kw)
        except (bx.BotoCoreError, bx.ClientError) as e:
            raise self.unavailable(e, what) from None

    def list(self, rel: str) -> list:
        """Keys (relative to the prefix) under ``rel``; every page."""
        out, token = [], None
        base = self.key(rel)
        cut = len(self.prefix) + 1 if self.prefix else 0
        while True:
            kw = {"Prefix": base}
            if token:
                kw["ContinuationToken"] = token
            self._count()
            page = self._call(self.client.list_objects_v2, f"list {base}", **kw)
            out.extend(o["Key"][cut:] for o in page.get("Contents", ()))
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def get(self, rel: str, start: int | None = None, end: int | None = None):
        """``(bytes, etag)`` of an object (``[start, end)`` when given: fewer bytes, or
        none, when the object ends before ``end``, or before ``start``, as S3 answers
        416 then: the caller sees a short read), or ``(None, None)`` if the key does
        not exist."""
        bx = _client_errors()
        kw = {"Key": self.key(rel)}
        if start is not None:
            kw["Range"] = f"bytes={start}-{end - 1}"
        self._count()
        try:
            r = self.client.get_object(Bucket=self.bucket, **kw)
            return r["Body"].read(), r.get("ETag")
        except bx.ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                return None, None
            if code in ("InvalidRange", "416") and start is not None:  # truncated: a short read
                return b"", None
            raise self.unavailable(e, f"get {kw['Key']}") from None
        except bx.BotoCoreError as e:
            raise self.unavailable(e, f"get {kw['Key']}") from None

    def put(self, rel: str, data: bytes, multipart_mib: int = 16, **cond) -> str:
        """Write an object; return its ETag. ``cond``: ``IfNoneMatch``/``IfMatch``
        (then one PutObject; a 412 raises ``_Precondition``). Large unconditional
        bodies go up by multipart upload in ``multipart_mib`` MiB parts."""
        bx = _client_errors()
        key = self.key(rel)
        try:
            if not cond and len(data) > multipart_mib * MiB:
                from boto3.s3.transfer import TransferConfig

                cfg = TransferConfig(multipart_threshold=multipart_mib * MiB,
                                     multipart_chunksize=multipart_mib * MiB, max_concurrency=4)
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, key, Config=cfg)
                return ""
            return self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **cond).get("ETag", "")
        except bx.ClientError as e:
            if cond and e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                raise _Precondition() from None
            raise self.unavailable(e, f"put {key}") from None
        except (bx.BotoCoreError, _s3_transfer_errors()) as e:
            raise self.unavailable(e, f"put {key}") from None

    def delete(self, rel: str) -> None:
        self._call(self.client.delete_object, f"delete {self.key(rel)}", Key=self.key(rel))


def _s3_transfer_errors():
    from boto3.exceptions import S3UploadFailedError

    return S3UploadFailedError


class _Precondition(Exception):
    """A conditional write was refused (HTTP 412/409)."""


def _bucket(url, bucket, prefix, endpoint_url, profile, region, connect_timeout, read_timeout, retries,
            max_connections) -> _Bucket:
    if url is not None:
        bucket, prefix = parse_s3_url(url)
    if not bucket:
        raise TvcfsError("an S3 store needs url='s3://BUCKET/PREFIX' (or bucket=...)")
    return _Bucket(bucket, (prefix or "").strip("/"), endpoint_url, profile, region, connect_timeout,
                   read_timeout, retries, max_connections)


class _Indexes:
    """The pack indexes an :class:`S3Store` has loaded (block locations, packs and
    their slot counts, tombstones, when the bucket was last listed), shareable by
    stores of one bucket: a lazy mount's foreground and background clients list the
    bucket and read each index once between them, not once each. ``lock`` guards
    them; ``refresh_lock`` lets one listing run at a time."""

    def __init__(self):
        self.lock = threading.RLock()
        self.refresh_lock = threading.RLock()
        self.index: dict[bytes, Loc] = {}  # cid -> where its value is, how it is encoded
        self.packs: set[str] = set()
        self.slots: dict[str, int] = {}  # pack -> number of MAX_RANGE slices (slot_of)
        self.deleted: set[bytes] = set()
        self.loaded_at: float | None = None


def _shared(name: str, doc: str) -> property:
    def get(self):
        return getattr(self._ix, name)

    def put(self, value):
        setattr(self._ix, name, value)

    return property(get, put, doc=doc)


class S3Store(StoreBase):
    """A :class:`~tvcfs.store.base.BlockStore` over S3-compatible object storage
    (capabilities ``REMOTE``, ``PERSISTENT``); layout and formats in the module
    docstring.

    ``url``: ``"s3://BUCKET/PREFIX"`` (or ``bucket=`` and ``prefix=``);
    ``endpoint_url``, ``profile``, ``region``: override the AWS chain;
    ``pack_target``: bytes pending before a pack is written (default 64 MiB);
    ``refresh_interval``: seconds between index listings caused by misses;
    ``connect_timeout``/``read_timeout``: seconds per attempt; ``retries``: attempts
    per request; ``threads``: concurrent ranged GETs in :meth:`get_many`;
    ``background_packs``: full packs written on a writer thread while ``put_many``
    goes on buffering (at most this many at once; 0: written synchronously). Packs
    are written one after another, in the order they filled. ``encode``: store
    blocks encoded when that pays (default); ``deltas``: a
    :class:`~tvcfs.pack.DeltaSource` giving element sizes and delta bases.
    ``indexes_of``: another store of the same URL whose loaded pack indexes this one
    shares (and refreshes with it) instead of listing and reading them again; the
    clients, connection pools and threads stay separate.

    ``put``/``put_many`` buffer blocks and write a pack whenever ``pack_target``
    bytes are pending; :meth:`flush` (and :meth:`close`) write the rest. Pending
    blocks are readable from this object before they are flushed. Network failures
    raise :class:`BlockUnavailable`; nothing is raised when a block is absent."""

    capabilities = frozenset({REMOTE, PERSISTENT})

    _index = _shared("index", "cid -> :class:`Loc`")
    _packs = _shared("packs", "pack ids known")
    _slots = _shared("slots", "pack -> number of MAX_RANGE slices (slot_of)")
    _deleted = _shared("deleted", "tombstoned CIDs")
    _loaded_at = _shared("loaded_at", "time.monotonic() of the last listing, None before the first")

    def __init__(self, url: str | None = None, *, bucket: str | None = None, prefix: str = "",
                 endpoint_url: str | None = None, profile: str | None = None, region: str | None = None,
                 pack_target: int = PACK_TARGET, refresh_interval: float = 1.0,
                 connect_timeout: float = 3.0, read_timeout: float = 30.0, retries: int = 2,
                 threads: int = 8, background_packs: int = 1, encode: bool = True, deltas=None,
                 indexes_of: S3Store | None = None):
        self.pack_target = int(pack_target)
        self.encode = bool(encode)
        self.deltas = deltas
        if deltas is not None:
            deltas.attach(self._has_written)
        self.background_packs = max(0, int(background_packs))
        self.refresh_interval = float(refresh_interval)
        self.threads = max(1, int(threads))
        self._b = _bucket(url, bucket, prefix, endpoint_url, profile, region, connect_timeout, read_timeout,
                          retries, self.threads + 2)
        self.name = self.url = self._b.url
        if indexes_of is not None and indexes_of.url != self.url:
            raise ValueError(f"{self.url} cannot share the pack indexes of {indexes_of.url}")
        self._ix = indexes_of._ix if indexes_of is not None else _Indexes()
        self._lock = self._ix.lock
        self._flush_lock = threading.Lock()
        self._pending: dict[bytes, bytes] = {}  # not in a written pack yet (readable)
        self._pending_bytes = 0
        self._open: dict[bytes, None] = {}  # pending and not handed to the writer yet, in order
        self._open_bytes = 0
        self._inflight: collections.deque = collections.deque()  # (future, items) of packs being written
        self._writer: ThreadPoolExecutor | None = None
        self._pool: ThreadPoolExecutor | None = None
        # what this object uploaded: packs, their bytes (with indexes), the raw bytes of their blocks
        self.written = {"packs": 0, "bytes": 0, "raw": 0}
        self.read = {"requests": 0, "bytes": 0}  # ranged GETs of packs this object made, bytes received

    @property
    def requests_sent(self) -> int:
        """LIST pages and GETs (indexes, packs, anything) this store's client has sent;
        ``read["requests"]`` counts the ranged GETs of packs alone."""
        return self._b.reads

    # --- indexes -----------------------------------------------------------------
    def refresh(self) -> int:
        """List the bucket's pack indexes and tombstones, read the indexes not seen
        yet; return how many new packs were found. Raises :class:`BlockUnavailable`."""
        with self._ix.refresh_lock:
            return self._refresh()

    def _refresh(self) -> int:
        keys = self._b.list("packs/")
        deleted = {cid_from_str(k.rsplit("/", 1)[1]) for k in self._b.list("deleted/")}
        new = [k[len("packs/"):-len(".idx")] for k in keys if k.endswith(".idx")]
        with self._lock:
            new = [p for p in new if p not in self._packs]
        loaded = list(self._map(self._read_index, new))
        with self._lock:
            for pack, entries in zip(new, loaded):
                if entries is None:
                    continue
                self._add_pack(pack, entries)
                for e in entries:
                    self._index.setdefault(e.cid, Loc(pack, *e[1:]))
            self._deleted = deleted
            self._loaded_at = time.monotonic()
        return sum(e is not None for e in loaded)

    def _add_pack(self, pack: str, entries) -> None:
        # a pack of L bytes has round(L / MAX_RANGE) slots (at least one): its last
        # slot takes a remainder under half a slot, so no GET of a scan is a small tail
        end = max((e.offset + e.length for e in entries), default=0)
        self._packs.add(pack)
        self._slots[pack] = max(1, round(end / MAX_RANGE))

    def _slot(self, pack: str, offset: int) -> int:
        return min(offset // MAX_RANGE, self._slots.get(pack, 1 << 62) - 1)

    def _read_index(self, pack: str):
        data, _ = self._b.get(f"packs/{pack}.idx")
        if data is None:
            return None
        try:
            return decode_index(data)
        except BadIndex as e:
            log.warning("%s: skipping pack %s: %s", self.url, pack, e)
            return None

    def _ensure_loaded(self) -> None:
        if self._loaded_at is None:
            with self._ix.refresh_lock:  # another thread (or a sharing store) may be listing
                if self._loaded_at is None:
                    self._refresh()

    def _refresh_on_miss(self) -> bool:
        """Refresh after a miss unless the last listing is younger than
        ``refresh_interval``; ``True`` if it listed."""
        if self._loaded_at is not None and time.monotonic() - self._loaded_at < self.refresh_interval:
            return False
        self.refresh()
        return True

    def _map(self, fn, items):
        items = list(items)
        if len(items) < 2:
            return map(fn, items)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="tvcfs-s3")
        return self._pool.map(fn, items)

    def _where(self, cid: bytes):
        """``("pending", bytes)``, ``("pack", (pack, off, len))`` or ``None``."""
        with self._lock:
            data = self._pending.get(cid)
            if data is not None:
                return "pending", data
            if cid in self._deleted:
                return None
            loc = self._index.get(cid)
            return ("pack", loc) if loc is not None else None

    # --- reading -----------------------------------------------------------------
    def get(self, cid: bytes):
        """The block's bytes, ``None`` if no pack holds it. Raises
        :class:`BlockUnavailable` (network, or the stored bytes are corrupt)."""
        return next(iter(self.get_many([cid])))[1]

    def has(self, cid: bytes) -> bool:
        """Whether the bucket holds ``cid`` per its loaded indexes (listing again after a miss
        at most every ``refresh_interval`` seconds); a pending block counts. Raises
        :class:`BlockUnavailable`."""
        cid = bytes(cid)
        self._ensure_loaded()
        if self._where(cid) is None and self._refresh_on_miss():
            return self._where(cid) is not None
        return self._where(cid) is not None

    def has_many(self, cids: Iterable[bytes], refresh: bool = False) -> list:
        """``[bool]`` per CID from the indexes already loaded (one listing the first
        time; ``refresh``: list again once if any is missing). A pending block counts
        as held. Raises :class:`BlockUnavailable`."""
        keys = [bytes(c) for c in cids]
        self._ensure_loaded()
        out = [self._where(k) is not None for k in keys]
        if refresh and not all(out):
            self.refresh()
            out = [self._where(k) is not None for k in keys]
        return out

    def _has_written(self, cids) -> list:
        """``[bool]``: whether a written pack (not the pending buffer) holds each CID."""
        self._ensure_loaded()
        with self._lock:
            return [bytes(c) in self._index and bytes(c) not in self._deleted for c in cids]

    def size_of(self, cid: bytes) -> int | None:
        """Length in bytes of a block the loaded indexes (or pending buffer) hold,
        else ``None``; no request is made."""
        w = self._where(bytes(cid))
        if w is None:
            return None
        return len(w[1]) if w[0] == "pending" else w[1].raw

    def slot_of(self, cid: bytes) -> tuple[str, int] | None:
        """``(pack, n)``: the block's value starts in the ``n``-th slot of that pack: its
        :data:`MAX_RANGE`-byte slices, the last one taking a remainder shorter than
        half a slice; from the loaded indexes; ``None``
        for a block pending here or in no pack. No request is made. Blocks of one slot
        are read with one ranged GET (:meth:`get_many`); a scan that asks for whole
        slots makes GETs of ~``MAX_RANGE`` bytes (docs/backends.md, "Lazy mounts")."""
        w = self._where(bytes(cid))
        if w is None or w[0] != "pack":
            return None
        return w[1].pack, self._slot(w[1].pack, w[1].offset)

    def get_many(self, cids: Iterable[bytes], verify: bool = True,
                 buffers: bool = False) -> Iterator[tuple[bytes, bytes | None]]:
        """``(cid, bytes | None)`` in input order. Blocks of one pack that lie within
        ``MAX_GAP`` of each other are read with one ranged GET (at most ``MAX_RANGE``
        bytes); the GETs run ``threads`` at a time; every block is verified. Raises
        :class:`BlockUnavailable` if a GET fails or a block does not hash to its CID
        (naming the pack). ``verify=False`` leaves the hashing to the caller, which
        must then pass the blocks through :func:`tvcfs.store.verify.verify_and_put`
        (the sync module does: one hash per block, not two). ``buffers``: blocks may
        be read-only ``memoryview``s (of the GET's body or of the decoded array)
        instead of ``bytes``: no copy per block, for a caller that stores them and
        lets them go (a lazy mount; a raw block's view keeps its whole GET body)."""
        cids = list(cids)
        keys = [bytes(c) for c in cids]
        self._ensure_loaded()
        where = {k: self._where(k) for k in keys}
        if any(w is None for w in where.values()) and self._refresh_on_miss():
            where = {k: self._where(k) for k in keys}
        found = {k: w[1] for k, w in where.items() if w is not None and w[0] == "pending"}
        wanted = {k: w[1] for k, w in where.items() if w is not None and w[0] == "pack"}
        if any(loc.encoding for loc in wanted.values()):
            found.update(self._read_encoded(wanted, verify, buffers))
        else:
            read = self._read_range if verify else self._read_range_unverified
            if buffers:
                read = functools.partial(self._read_range, verify=verify, views=True)
            for got in self._map(read, _ranges(wanted, self._slot)):
                found.update(got)
        for c, k in zip(cids, keys):
            yield c, found.get(k)

    def _read_encoded(self, wanted: dict, verify: bool, buffers: bool = False) -> dict:
        """``{cid: block bytes}`` of ``wanted`` (``{cid: Loc}``) when some are stored
        encoded: their values are read, the delta bases they need are read too
        (whether or not tombstoned: a tombstone leaves the bytes), every value is
        decoded, bases before their deltas, and the blocks returned are checked
        against their CIDs in one batch (``verify=False``: left to the caller, as
        raw ones are; a damaged base makes its deltas fail that check). Raises
        :class:`BlockUnavailable` naming the pack when a value does not decode, a
        decoded block does not hash to its CID, or a base is in no pack."""
        locs = dict(wanted)
        values: dict = {}
        todo = dict(wanted)
        for _ in range(encodings.MAX_DEPTH + 1):
            for got in self._map(self._read_range_views, _ranges(todo, self._slot)):
                values.update(got)
            todo = {}
            for loc in list(locs.values()):
                b = loc.base
                if b is None or b in locs:
                    continue
                with self._lock:
                    pending = self._pending.get(b)
                    bl = self._index.get(b)
                if pending is not None:
                    locs[b] = Loc("", 0, len(pending), 0, 0, len(pending))
                    values[b] = pending
                elif bl is None:
                    raise BlockUnavailable(f"{self.url}: block {cid_str(loc.base)}, the delta base of a block in pack "
                                           f"{loc.pack}, is in no pack (the bucket lost it)", cid=b, tier=self.url)
                else:
                    locs[b] = todo[b] = bl
            if not todo:
                break
        else:  # a chain longer than any this tvcfs writes: damaged indexes
            raise BlockUnavailable(f"{self.url}: the delta chains of pack {next(iter(todo.values())).pack} are deeper "
                                   f"than {encodings.MAX_DEPTH} (corrupt index)", tier=self.url)
        out: dict = {}
        for cid in sorted(locs, key=lambda c: locs[c].depth):
            loc, value = locs[cid], values[cid]
            if loc.encoding:
                try:
                    value = encodings.decode(value, out.get(loc.base) if loc.base is not None else None,
                                             buffer=buffers)
                except (CorruptBlock, ValueError) as e:
                    raise BlockUnavailable(f"{self.url}: block {cid_str(cid)} in pack {loc.pack} does not decode "
                                           f"(corrupt object: {e})",
                                           cid=cid, tier=self.url) from None
            # a raw value is a view of its GET: a copy unless the caller takes buffers
            out[cid] = value if loc.encoding or buffers else bytes(value)
        got = [(c, out[c]) for c in wanted]
        if verify:
            _, bad = verify_many(got)
            if bad:
                # name the first block whose own bytes are wrong: a delta on a damaged base is not
                bases = [locs[b].base for b in bad if locs[b].base is not None]
                _, bad_bases = verify_many([(b, out[b]) for b in bases])
                c = (bad_bases or bad)[0]
                raise BlockUnavailable(f"{self.url}: block {cid_str(c)} in pack {locs[c].pack or '(pending)'} does "
                                       f"not hash to its CID (corrupt object)", cid=bad[0], tier=self.url)
        return dict(got)

    def _read_range_unverified(self, rng) -> dict:
        return self._read_range(rng, verify=False)

    def _read_range_views(self, rng) -> dict:
        # values to be decoded: memoryviews of the GET's body, not copies (a copy of
        # every value cost as much CPU as the SHA-256 of the blocks; docs/performance.md)
        return self._read_range(rng, verify=False, views=True)

    def _read_range(self, rng, verify: bool = True, views: bool = False) -> dict:
        pack, start, end, members = rng
        data, _ = self._b.get(f"packs/{pack}.pack", start, end)
        with self._lock:
            self.read["requests"] += 1
            self.read["bytes"] += len(data) if data is not None else 0
        if data is None:
            raise BlockUnavailable(f"{self.url}: pack {pack} is listed in an index but its object is missing",
                                   tier=self.url)
        body = memoryview(data) if views else data
        blocks = [(cid, body[off - start: off - start + n]) for cid, off, n in members]
        if any(len(d) != n for (_, d), (_, _, n) in zip(blocks, members)):
            raise BlockUnavailable(f"{self.url}: pack {pack} is shorter than its index says (truncated object, "
                                   "or an index that lies)", tier=self.url)
        if not verify:
            return dict(blocks)
        good, bad = verify_many(blocks)
        if bad:
            raise BlockUnavailable(f"{self.url}: block {cid_str(bad[0])} in pack {pack} does not hash to its CID "
                                   f"(corrupt object{', and %d more blocks' % (len(bad) - 1) if len(bad) > 1 else ''})",
                                   cid=bad[0], tier=self.url)
        return dict(good)

    # --- writing -----------------------------------------------------------------
    def put(self, cid: bytes, block) -> bool:
        """Buffer one block; ``True`` if no pack (and no pending buffer) holds it.
        May write a pack (raises :class:`BlockUnavailable` when that fails)."""
        return self.put_many([(cid, block)]) == 1

    def put_many(self, blocks: Iterable[tuple[bytes, bytes]]) -> int:
        """Buffer the blocks no known pack holds (the index list is refreshed first),
        writing a pack each time ``pack_target`` bytes are pending; return how many
        were new. Call :meth:`flush` to write the remainder. Stores do not hash what
        they are given (``docs/architecture.md``)."""
        if self._loaded_at is None or time.monotonic() - self._loaded_at >= self.refresh_interval:
            self.refresh()
        new = 0
        undelete = []
        for cid, block in blocks:
            key = bytes(cid)
            if len(key) != CID_LEN:
                raise TvcfsError(f"{self.url}: not a binary CIDv1 sha2-256 ({len(key)} bytes)")
            with self._lock:
                if key in self._pending or (key in self._index and key not in self._deleted):
                    continue
                if key in self._deleted:
                    undelete.append(key)
                    self._deleted.discard(key)
                data = bytes(block)
                self._pending[key] = data
                self._pending_bytes += len(data)
                self._open[key] = None
                self._open_bytes += len(data)
                new += 1
                full = self._open_bytes >= self.pack_target
            if full:
                with self._flush_lock:
                    self._seal()
        for key in undelete:
            self._b.delete(f"deleted/{cid_str(key)}")
        return new

    def flush(self) -> str | None:
        """Write the pending blocks as one pack (pack object first, then its index)
        and wait for every pack being written in the background; return the id of
        the last pack written, or ``None`` if nothing was pending. Raises
        :class:`BlockUnavailable`; the blocks of a pack that failed stay pending."""
        with self._flush_lock:
            if self._open:
                self._seal()
            last = None
            while self._inflight:
                last = self._reap()
            return last

    def _seal(self) -> None:
        """Hand the open blocks to the writer thread as one pack; wait while more than
        ``background_packs`` packs are being written. Call with ``_flush_lock``."""
        with self._lock:
            items = [(k, self._pending[k]) for k in self._open if k in self._pending]
            self._open.clear()
            self._open_bytes = 0
            if self._writer is None:
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tvcfs-s3-pack")
        if items:
            self._inflight.append((self._writer.submit(self._write_pack, items), items))
        while len(self._inflight) > self.background_packs:
            self._reap()

    def _reap(self):
        """Wait for the oldest pack being written; its id. On failure its blocks are
        open again (written by the next flush) and the error is raised."""
        fut, items = self._inflight.popleft()
        try:
            return fut.result()
        except BaseException:
            with self._lock:
                for k, d in items:
                    if k in self._pending and k not in self._open:
                        self._open[k] = None
                        self._open_bytes += len(d)
            raise

    def _encode(self, cid: bytes, data: bytes, here: dict):
        """``(value, encoding, depth, base)`` for block ``data`` in a new pack: with
        :attr:`deltas`, a tensor leaf becomes the XOR with the first candidate base
        that the bucket holds (or that ``here`` — ``{cid: depth}`` of the blocks
        encoded earlier in this pack — holds) at a depth below
        :data:`~tvcfs.store.encodings.MAX_DEPTH` and whose bytes the local store
        has, byte-grouped and compressed, or is only byte-grouped and compressed,
        whichever is smaller; other blocks get plain zstd; raw when no encoding saves
        5 %. Every value is decoded and compared with the block first."""
        if not self.encode:
            return data, 0, 0, None
        hint = self.deltas.hint(cid) if self.deltas is not None else None
        elem, base, bdata, bdepth = (hint.elem if hint else 1), None, None, 0
        for b in (hint.bases if hint else ()):
            with self._lock:
                loc = self._index.get(b) if b not in self._deleted else None
            d = here[b] if b in here else loc.depth if loc is not None else None
            if d is None or d >= encodings.MAX_DEPTH:
                continue
            bdata = self.deltas.get(b)
            if bdata is not None and len(bdata) == len(data):
                base, bdepth = b, d
                break
            bdata = None
        value = encodings.encode(data, elem, base, bdata, bdepth)
        if value is None:
            return data, 0, 0, None
        h = encodings.header(value)
        if encodings.decode(value, bdata) != data:
            raise CorruptBlock(f"encoding {cid_str(cid)} for {self.url} did not round-trip (a bug in tvcfs)")
        return value, h.encoding, h.depth, h.base

    def _write_pack(self, items) -> str:
        entries, values, off, here = [], [], _HEADER.size, {}
        for cid, data in items:
            value, enc, depth, base = self._encode(cid, data, here)
            here[cid] = depth
            entries.append(Entry(cid, off, len(value), enc, depth, len(data), base))
            values.append(value)
            off += len(value)
        pack, idx = encode_index(entries)
        body = b"".join([_HEADER.pack(PACK_MAGIC, VERSION, len(items))] + values)
        self._b.put(f"packs/{pack}.pack", body)
        self._b.put(f"packs/{pack}.idx", idx)
        with self._lock:
            for e in entries:
                self._index.setdefault(e.cid, Loc(pack, *e[1:]))
                if self._pending.pop(e.cid, None) is not None:
                    self._pending_bytes -= e.raw
            self._add_pack(pack, entries)
            self.written["packs"] += 1
            self.written["bytes"] += len(body) + len(idx)
            self.written["raw"] += sum(e.raw for e in entries)
        return pack

    def delete(self, cid: bytes) -> bool:
        """Mark-only: a pending block is dropped; a packed one gets a tombstone
        object (``PREFIX/deleted/<cid>``) and reads as absent from then on (its bytes
        stay in the pack). ``True`` if the store held it."""
        key = bytes(cid)
        self._ensure_loaded()
        with self._lock:
            data = self._pending.pop(key, None)
            if data is not None:
                self._pending_bytes -= len(data)
                if self._open.pop(key, 0) is None:
                    self._open_bytes -= len(data)
            packed = key in self._index and key not in self._deleted
        if packed:
            self._b.put(f"deleted/{cid_str(key)}", b"")
            with self._lock:
                self._deleted.add(key)
        return packed or data is not None

    # --- listing -----------------------------------------------------------------
    def __iter__(self) -> Iterator[bytes]:
        """Every CID held (packed, not deleted, or pending), after a refresh."""
        self.refresh()
        with self._lock:
            keys = [c for c in self._index if c not in self._deleted]
            keys += [c for c in self._pending if c not in self._index or c in self._deleted]
        return iter(keys)

    def stat(self) -> dict:
        """``{"blocks", "bytes", "raw_bytes", "packs", "pending"}``: blocks held, their
        stored (encoded) bytes and their raw bytes (tombstoned ones excluded; pack
        headers and indexes not counted), packs
        known, blocks pending (not yet in a pack)."""
        self.refresh()
        with self._lock:
            live = [v for c, v in self._index.items() if c not in self._deleted]
            extra = [len(d) for c, d in self._pending.items() if c not in self._index or c in self._deleted]
            return {"blocks": len(live) + len(extra), "bytes": sum(v.length for v in live) + sum(extra),
                    "raw_bytes": sum(v.raw for v in live) + sum(extra),
                    "packs": len(self._packs), "pending": len(self._pending)}

    def close(self) -> None:
        """Write the pending pack, then release the thread pool. Raises
        :class:`BlockUnavailable` if the pending pack cannot be written."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None


def _ranges(wanted: dict, slot=lambda pack, off: off // MAX_RANGE) -> list:
    """``{cid: (pack, off, len)}`` → ``[(pack, start, end, [(cid, off, len)…])…]``:
    blocks of one pack merged while the gap is at most ``MAX_GAP`` and the range at
    most ``MAX_RANGE`` bytes, or the block starts in the same ``slot(pack, offset)``
    of the pack as the range (:meth:`S3Store.slot_of`: one slot, one GET)."""
    by_pack: dict = {}
    for cid, (pack, off, n, *_) in wanted.items():
        by_pack.setdefault(pack, []).append((cid, off, n))
    out = []
    for pack, members in by_pack.items():
        members.sort(key=lambda m: m[1])
        cur = None
        for cid, off, n in members:
            if cur and off - cur[2] <= MAX_GAP and (off + n - cur[1] <= MAX_RANGE
                                                    or slot(pack, off) == slot(pack, cur[1])):
                cur[2] = max(cur[2], off + n)
                cur[3].append((cid, off, n))
            else:
                cur = [pack, off, off + n, [(cid, off, n)]]
                out.append(cur)
    return [tuple(r) for r in out]


class S3Refs:
    """Refs stored in the bucket as ``PREFIX/<name>`` (``name`` like
    ``refs/heads/main``), each holding the commit's CID string, moved only by
    compare-and-swap with S3 conditional writes. Same connection options as
    :class:`S3Store`. Deleting refs is not supported yet."""

    def __init__(self, url: str | None = None, *, bucket: str | None = None, prefix: str = "",
                 endpoint_url: str | None = None, profile: str | None = None, region: str | None = None,
                 connect_timeout: float = 3.0, read_timeout: float = 30.0, retries: int = 2):
        self._b = _bucket(url, bucket, prefix, endpoint_url, profile, region, connect_timeout, read_timeout,
                          retries, 4)
        self.url = self._b.url

    @staticmethod
    def _check(name: str) -> str:
        if not name.startswith("refs/") or any(p in ("", ".", "..") for p in name.split("/")):
            raise TvcfsError(f"invalid ref name {name!r} (expected refs/heads/NAME, refs/tags/NAME, ...)")
        return name

    def _read(self, name: str):
        data, etag = self._b.get(self._check(name))
        if data is None:
            return None, None
        try:
            return cid_from_str(data.decode("ascii").strip()), etag
        except (UnicodeDecodeError, ValueError):
            raise BlockUnavailable(f"{self.url}: ref {name} does not hold a CID", tier=self.url) from None

    def get(self, name: str) -> bytes | None:
        """The binary CID ``name`` points at, or ``None``. Raises
        :class:`BlockUnavailable`."""
        return self._read(name)[0]

    def head(self) -> str:
        """The ref the bucket's ``PREFIX/HEAD`` names (``"refs/heads/main"``), or
        ``""`` when there is none (a bucket no branch was pushed to yet). Raises
        :class:`BlockUnavailable`."""
        data, _ = self._b.get("HEAD")
        text = (data or b"").decode("utf-8", "replace").strip()
        return text[5:].strip() if text.startswith("ref: ") else ""

    def init_head(self, ref: str) -> bool:
        """Create ``PREFIX/HEAD`` naming ``ref`` (``ref: refs/heads/NAME``) unless it
        exists (a conditional create: an existing HEAD is never changed). ``True`` if
        this call created it. Raises :class:`BlockUnavailable`."""
        try:
            self._b.put("HEAD", f"ref: {self._check(ref)}".encode(), IfNoneMatch="*")
            return True
        except _Precondition:
            return False

    def list(self, prefix: str = "refs/") -> dict:
        """``{ref name: binary CID}`` for every ref whose name starts with ``prefix``."""
        out = {}
        for name in self._b.list(prefix):
            cid = self.get(name)
            if cid is not None:
                out[name] = cid
        return out

    def compare_and_swap(self, name: str, expected: bytes | None, new: bytes) -> None:
        """Point ``name`` at ``new`` if it points at ``expected`` now (``None``: it
        must not exist). Raises :class:`RefConflict` (nothing written) when another
        value is there or another writer wins the race, :class:`BlockUnavailable` on
        network failures."""
        actual, etag = self._read(name)
        if (bytes(actual) if actual else None) != (bytes(expected) if expected else None):
            raise RefConflict(name, expected, actual)
        cond = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": etag}
        try:
            self._b.put(name, cid_str(new).encode("ascii"), **cond)
        except _Precondition:
            raise RefConflict(name, expected, self._read(name)[0]) from None
