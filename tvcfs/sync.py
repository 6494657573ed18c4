"""The sync verbs — clone, fetch, pull, push and the lazy (skeleton) fetch — once,
for every remote kind (docs/architecture.md, "Sync").

A *remote* (:class:`BlockRemote`) is the small interface these verbs need from the
other side: list its refs (and the ref its HEAD names) and ``has_many`` /
``get_many`` of blocks; for a push, ``put_many`` / ``flush`` and a compare-and-swap
of one ref. Two implementations: :class:`S3Remote` (``s3://BUCKET/PREFIX``, over
:class:`~tvcfs.store.s3.S3Store` packs and :class:`~tvcfs.store.s3.S3Refs`) and
:class:`~tvcfs.transport.peer.PeerRemote` (``tvcfs://PEERID@HOST:PORT/REPO``, one
session of the block exchange over QUIC or TLS/TCP). A remote may offer two
optional capabilities, used when present: ``fetch_dags(repo, roots, complete=…)``
("send me these DAGs, I already hold these roots": the peer answers whole-DAG
requests it walks itself instead of one round trip per level) and
``push_dag(repo, ref, new, expected)`` (a push the peer checks and applies with
its own compare-and-swap). :func:`open_remote` picks the implementation by URL.
See docs/backends.md ("Verbs") and docs/protocol.md for the users' view.

* **push** walks the local DAG of the pushed commit (history included) children
  first, skips every sub-DAG whose root the remote already holds, uploads the rest
  (``put_many``, packs written as they fill, ``flush`` at the end) and only then
  moves the remote branch by compare-and-swap from the value it read before
  uploading. Because a block is uploaded after every block below it (and packs are
  written in order, each pack before its index), a block the remote holds has its
  whole sub-DAG there: re-running an interrupted push moves only what is missing.
  A lost race is :class:`BranchMoved` ("branch moved"): nothing is overwritten.
  Refused before sending anything when not a fast-forward (unless forced).
* **fetch** reads the remote refs and fetches the blocks of their DAGs the local
  store lacks (``fetch_dags``, or the breadth-first walk :func:`walk_dags`: level
  by level with ``get_many`` in batches of :data:`BATCH_BYTES`); every block is
  verified against its CID before it is stored (:mod:`tvcfs.store.verify`). The
  **resume rule**: local blocks are walked again (an interrupted fetch stored
  parents before children) but never fetched again, so re-running resumes. When
  the remote lacks blocks or sent bad ones, the **next remote** is asked for the
  same roots (:func:`fallback_remotes`: the other configured remotes, fewest bad
  blocks first; a peer over :data:`~tvcfs.transport.peer.PENALTY_LIMIT` bad blocks
  is skipped); bad blocks count against the sending peer. The remote-tracking refs
  ``refs/remotes/NAME/*`` (and new tags) are set by :func:`update_tracking_refs`
  only once every DAG is complete. ``skeleton=True`` (a lazy repository) fetches
  everything but raw leaves.
* **pull** = fetch + :func:`fast_forward`; **clone** = a new repository + fetch +
  local branches and HEAD (re-running an interrupted clone resumes it).
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

from .encoding.cid import RAW, cid_codec, cid_str, make_cid
from .formatting import short_cid as _short
from .errors import CorruptBlock, InvalidCID, MalformedObject, RefConflict, TvcfsError
from .fileio import process_alive
from .names import printable_name
from .refs import HEADS, TAGS, InvalidRefName, check_ref

__all__ = [
    "BATCH_BYTES",
    "BlockRemote",
    "BranchMoved",
    "FetchIncomplete",
    "FetchResult",
    "NotFastForward",
    "PullResult",
    "PushResult",
    "S3Remote",
    "cache_dir_for",
    "check_url",
    "clone",
    "fallback_remotes",
    "fetch",
    "is_ancestor",
    "is_block_url",
    "open_remote",
    "prepare_url_mount",
    "pull",
    "push",
    "update_tracking_refs",
    "valid_refs",
    "walk_dags",
]

REMOTES = "refs/remotes/"
BATCH_BYTES = 64 << 20  # bytes asked of the remote per get_many / handed to put_many
BLOCK_SCHEMES = ("s3://",)


class BranchMoved(TvcfsError):
    """A push lost the compare-and-swap: the remote branch moved meanwhile (nothing
    was overwritten)."""


class NotFastForward(TvcfsError):
    """A pull or push would not be a fast-forward."""


class FetchIncomplete(TvcfsError):
    """Some blocks could not be had from the remote (absent or corrupt there)."""


# ------------------------------------------------------------------ the remote
class BlockRemote(Protocol):
    """What sync needs from a remote. ``url``: shown in messages; ``transport``:
    how blocks travel ("s3", "quic/qh3", "tcp"); ``peer_id``: the binary peer ID
    bad blocks count against (``None``: no peer). Errors are :class:`TvcfsError`
    subclasses with one-line messages (``BlockUnavailable`` or ``TransportError``
    for an unreachable remote).

    Optional capabilities (looked up with ``getattr``): ``fetch_dags(repo, roots,
    *, complete, progress, stop_on_bad) -> FetchStats`` fetches whole DAGs into
    ``repo`` (verified) instead of :func:`walk_dags`; ``push_dag(repo, ref, new,
    expected, progress) -> (blocks, bytes)`` replaces ``has_many``/``put_many``/
    ``flush``/``compare_and_swap``/``init_head`` for a push; ``can_push``
    (default True): False skips the local fast-forward check so that the remote
    gives its own refusal."""

    url: str
    transport: str
    peer_id: bytes | None

    def list_refs(self) -> dict:
        """``{full ref name: binary commit CID}`` of branches and tags."""

    def head(self) -> str:
        """The ref the remote's HEAD names (``refs/heads/main``), or ``""``."""

    def compare_and_swap(self, name: str, expected: bytes | None, new: bytes) -> None:
        """Move ref ``name`` from ``expected`` (``None``: absent) to ``new``; raise
        :class:`~tvcfs.errors.RefConflict` and change nothing otherwise."""

    def init_head(self, ref: str) -> None:
        """Point the remote HEAD at ``ref`` if it has none."""

    def has_many(self, cids: list) -> list:
        """``[bool]``: whether the remote holds each block (and, by the push order,
        the whole DAG below it)."""

    def get_many(self, cids: list) -> Iterator:
        """``(cid, bytes | None)`` per CID; bytes are not trusted (the caller
        verifies them)."""

    def size_of(self, cid: bytes) -> int | None:
        """Bytes of a block the remote holds, if known without a request."""

    def put_many(self, blocks) -> int:
        """Send ``(cid, bytes)`` pairs; return how many were new."""

    def flush(self) -> None:
        """Make everything sent so far durable on the remote."""

    def close(self) -> None:
        """Release the remote's connections."""


class S3Remote:
    """:class:`BlockRemote` over ``s3://BUCKET/PREFIX`` (docs/backends.md):
    blocks in an :class:`~tvcfs.store.s3.S3Store`, refs and HEAD in
    :class:`~tvcfs.store.s3.S3Refs`. ``options`` go to both (endpoint, profile,
    timeouts…). The store's reads are not hashed here: :func:`fetch` verifies every
    block with :func:`~tvcfs.store.verify.verify_and_put`."""

    def __init__(self, url: str, **options):
        from .store.s3 import S3Refs, S3Store

        ref_opts = {k: v for k, v in options.items()
                    if k in ("endpoint_url", "profile", "region", "connect_timeout", "read_timeout", "retries")}
        self.store = S3Store(url, **options)
        self.refs = S3Refs(url, **ref_opts)
        self.url = self.store.url
        self.transport = "s3"
        self.peer_id = None

    def list_refs(self) -> dict:
        """``{full ref name: binary commit CID}`` of the bucket's branches and tags. Raises
        :class:`BlockUnavailable`."""
        return {k: v for k, v in self.refs.list("refs/").items() if k.startswith((HEADS, TAGS))}

    def head(self) -> str:
        """The ref the bucket's HEAD names, or ``""``. Raises :class:`BlockUnavailable`."""
        return self.refs.head()

    def compare_and_swap(self, name, expected, new) -> None:
        """Move ref ``name`` from ``expected`` (``None``: absent) to ``new``. Raises
        :class:`RefConflict` (nothing written), :class:`BlockUnavailable`."""
        self.refs.compare_and_swap(name, expected, new)

    def init_head(self, ref: str) -> None:
        """Point the bucket's HEAD at ``ref`` unless it has one. Raises
        :class:`BlockUnavailable`."""
        self.refs.init_head(ref)

    def has_many(self, cids) -> list:
        """``[bool]`` per CID: whether the bucket's indexes hold it. Raises
        :class:`BlockUnavailable`."""
        return self.store.has_many(cids)

    def get_many(self, cids):
        """``(cid, bytes | None)`` per CID, unverified (:func:`fetch` verifies). Raises
        :class:`BlockUnavailable`."""
        return self.store.get_many(cids, verify=False)

    def size_of(self, cid):
        """The block's size in bytes per the loaded indexes, or ``None``; no request is made."""
        return self.store.size_of(cid)

    def put_many(self, blocks) -> int:
        """Buffer the ``(cid, block)`` pairs no pack holds, writing a pack each ``pack_target``
        bytes; how many were new. Raises :class:`BlockUnavailable`."""
        return self.store.put_many(blocks)

    def flush(self) -> None:
        """Write the buffered blocks as a pack and wait for pending uploads. Raises
        :class:`BlockUnavailable`."""
        self.store.flush()

    def close(self) -> None:
        """Close the bucket store: write its pending pack, then release its threads. Raises
        :class:`BlockUnavailable` if the pack cannot be written."""
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def is_block_url(url: str | None) -> bool:
    """True for URLs of object-store remotes (``s3://…``)."""
    return bool(url) and url.startswith(BLOCK_SCHEMES)


def check_url(url: str) -> str:
    """Validate a remote URL (``s3://BUCKET/PREFIX`` or
    ``tvcfs[+quic|+tcp]://PEERID@HOST:PORT/REPO``); return it. Raises
    :class:`TvcfsError` saying what is wrong (also for spaces and control characters,
    which ``urlsplit`` drops silently: the URL stored would not be the one used)."""
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise TvcfsError(f"invalid remote URL {url!r}: it holds spaces or control characters")
    if is_block_url(url):
        from .store.s3 import parse_s3_url

        parse_s3_url(url)
        return url
    from .transport.client import parse_url

    try:
        parse_url(url)
    except ValueError as e:
        raise TvcfsError(f"{e} (remote URLs: tvcfs://PEERID@HOST:PORT/ or s3://BUCKET/PREFIX)") from None
    return url


def open_remote(url: str, repo=None, *, engine: str | None = None, auth: str = "auto",
                options: dict | None = None) -> BlockRemote:
    """The :class:`BlockRemote` for ``url``: :class:`S3Remote` for ``s3://…``
    (``options``: endpoint, profile, timeouts…), else a
    :class:`~tvcfs.transport.peer.PeerRemote` for ``tvcfs://…`` (connected; ``repo``
    gives the node identity and session tickets, ``engine`` the QUIC engine,
    ``auth`` "auto" or "always"). Close it (or use ``with``). Raises
    :class:`TvcfsError` (a bad URL, an unreachable remote)."""
    check_url(url)
    if is_block_url(url):
        return S3Remote(url, **(options or {}))
    from .transport.peer import PeerRemote

    return PeerRemote(url, repo, engine=engine, auth=auth)


def remote_url(repo, remote: str) -> str:
    """URL of the configured remote ``remote``, or ``remote`` itself if it is a URL.
    Raises :class:`TvcfsError` naming the configured remotes."""
    if "://" in remote:
        return remote
    rem = repo.remotes()
    if remote not in rem:
        known = ", ".join(sorted(rem)) or "none configured"
        raise TvcfsError(f"no remote named {remote!r} ({known}); add one with "
                         f"`tvcfs remote add {printable_name(remote)} URL` (tvcfs://PEERID@HOST:PORT/ or "
                         "s3://BUCKET/PREFIX)")
    return rem[remote]


# ------------------------------------------------------------------ shared ref logic
def is_ancestor(repo, a: bytes, b: bytes) -> bool:
    """True if commit ``a`` is ``b`` or an ancestor of it (only stored commits walked)."""
    if a == b:
        return True
    return any(c == a for c in repo.ancestors([b], missing_ok=True))


def update_tracking_refs(repo, remote: str, refs: dict, *, fast_forward_local: bool = False,
                         warn=None, message: str | None = None) -> list:
    """After a complete fetch of ``remote``: set ``refs/remotes/REMOTE/BRANCH`` to the
    remote's branches (deleting those gone from it) and create the remote's tags that
    do not exist locally (a differing local tag is kept; ``warn(text)`` is told).
    ``fast_forward_local`` (lazy clones, URL mounts): local branches that do not
    exist or still equal the old tracking value follow too. One transaction.
    Returns ``[(ref, old, new)]`` of what changed."""
    updates: dict = {}
    updated = []
    prefix = f"{REMOTES}{remote}/"
    current = repo.ref_db.all(prefix)
    local_heads = repo.ref_db.all(HEADS) if fast_forward_local else {}
    for name, cid in refs.items():
        if not name.startswith(HEADS):
            continue
        track = prefix + name[len(HEADS):]
        old = current.get(track)
        if old != cid:
            updates[track] = cid
            updated.append((track, old, cid))
        if fast_forward_local:
            loc = local_heads.get(name)
            if loc is None or (loc == old and loc != cid):
                updates[name] = cid
                updated.append((name, loc, cid))
    for track in current:
        if HEADS + track[len(prefix):] not in refs:
            updates[track] = None  # branch deleted on the remote
            updated.append((track, current[track], None))
    local_tags = repo.ref_db.all(TAGS)
    for name, cid in refs.items():
        if name.startswith(TAGS) and name not in local_tags:
            updates[name] = cid
            updated.append((name, None, cid))
        elif name.startswith(TAGS) and local_tags[name] != cid and warn:
            warn(f"warning: tag {name[len(TAGS):]} differs on {remote}; local tag kept")
    if updates:
        repo.update_refs(updates, message=message or f"fetch {remote}")
    return updated


# ------------------------------------------------------------------ push
@dataclass
class PushResult:
    """``kind``: "up-to-date" or "pushed"; ``ref``; ``old``/``new`` commits;
    ``blocks``/``nbytes`` uploaded (new to the remote); ``seconds``."""

    kind: str
    ref: str
    old: bytes | None
    new: bytes
    blocks: int = 0
    nbytes: int = 0
    seconds: float = 0.0


def _post_order_missing(get, root: bytes, remote: BlockRemote) -> Iterator[tuple[bytes, object]]:
    """``(cid, block)`` of every block under ``root`` (commits with their history)
    the remote lacks, children before parents; a sub-DAG whose root the remote holds
    is skipped whole. ``get(cid)`` reads a local block (raises BlockNotFound)."""
    from .transport.base import links_of

    seen: set = set()
    stack = [(root, False)]
    while stack:
        cid, expanded = stack.pop()
        if expanded:
            yield cid, get(cid)
            continue
        if cid in seen:
            continue
        seen.add(cid)
        stack.append((cid, True))
        data = get(cid)
        kids = [c for c in dict.fromkeys(links_of(cid, data, history=True)) if c not in seen]
        if not kids:
            continue
        held = remote.has_many(kids)
        for c, h in zip(kids, held):
            if h:
                seen.add(c)
        todo = [c for c, h in zip(kids, held) if not h]
        for c in reversed(todo):
            if cid_codec(c) == RAW:
                seen.add(c)
                stack.append((c, True))  # a leaf: no children to expand
            else:
                stack.append((c, False))


def push(repo, remote: str = "origin", branch: str | None = None, *, force: bool = False,
         progress=None, engine: str | None = None, options: dict | None = None) -> PushResult:
    """Push local ``branch`` (default: HEAD's) to the same branch of ``remote`` (a
    configured name or a URL, ``s3://`` or ``tvcfs://``): upload the blocks it
    lacks, then move its branch by compare-and-swap from the value read first (a
    peer does both with ``push_dag``; its server checks the swap).

    Refused before uploading when the remote branch is not an ancestor of the local
    one (unless ``force``). ``progress(bytes uploaded, None)``; ``engine``: QUIC
    engine of a tvcfs:// remote; ``options``: of an s3:// one. Raises
    :class:`NotFastForward`, :class:`BranchMoved` (another push won the race:
    nothing overwritten), :class:`~tvcfs.transport.client.PushRejected` (a peer's
    refusal: unauthorised, stale base), :class:`~tvcfs.errors.BlockUnavailable` /
    :class:`~tvcfs.transport.quic.TransportError` (the remote cannot be reached),
    :class:`TvcfsError`."""
    branch = branch or repo.head_branch()
    if not branch:
        raise TvcfsError("HEAD is detached: name the branch to push")
    ref = HEADS + branch
    local = repo.ref_db.get(ref)
    if local is None:
        raise TvcfsError(f"no local branch {branch!r}")
    url = remote_url(repo, remote)
    name = remote if "://" not in remote else url
    if is_block_url(url) and "deltas" not in (options or {}):
        from .pack import DeltaSource

        # tensor leaves go up as deltas against the bucket's copy of their parent
        options = {**(options or {}), "deltas": DeltaSource(repo, [local])}
    t0 = time.monotonic()
    with open_remote(url, repo, engine=engine, auth="always", options=options) as rem:
        cur = rem.list_refs().get(ref)
        if cur == local:
            res = PushResult("up-to-date", ref, cur, local)
        else:
            if cur is not None and not force and getattr(rem, "can_push", True):
                check_fast_forward(repo, name, branch, cur, local)
            push_dag = getattr(rem, "push_dag", None)
            if push_dag is not None:
                blocks, nbytes = push_dag(repo, ref, local, cur, progress)
            else:
                blocks, nbytes = _upload(repo, rem, local, progress)
                try:
                    rem.compare_and_swap(ref, cur, local)
                except RefConflict as e:
                    raise BranchMoved(
                        f"push rejected: branch {branch} moved on {name} while pushing (expected "
                        f"{_short(cur)}, found {_short(e.actual)}); nothing was overwritten (the "
                        f"{blocks} uploaded blocks stay); run `tvcfs pull {name} {branch}`, merge "
                        f"if needed, then push again") from None
                rem.init_head(ref)
            res = PushResult("pushed", ref, cur, local, blocks, nbytes)
    res.seconds = time.monotonic() - t0
    if "://" not in remote and res.kind == "pushed":
        repo.update_refs({f"{REMOTES}{remote}/{branch}": local}, message=f"push {remote}")
    return res


def check_fast_forward(repo, remote: str, branch: str, cur: bytes, local: bytes) -> None:
    """Refuse a push (every remote kind) whose remote branch value ``cur`` is not an
    ancestor of ``local``: :class:`NotFastForward` naming what to run (pull, merge,
    or push --force)."""
    if not repo.has(cur):
        raise NotFastForward(
            f"push rejected: {branch} on {remote} is at {_short(cur)}, a commit you do not have (the "
            f"remote moved on); run `tvcfs pull {remote} {branch}` (and `tvcfs merge` if it cannot "
            f"fast-forward), then push")
    if not is_ancestor(repo, cur, local):
        raise NotFastForward(
            f"push rejected: not a fast-forward: {branch} on {remote} ({_short(cur)}) is not an "
            f"ancestor of your {branch} ({_short(local)}); merge with `tvcfs merge {remote}/{branch}`, "
            f"or push --force")


def _upload(repo, rem: BlockRemote, root: bytes, progress) -> tuple[int, int]:
    """Upload the blocks of ``root``'s DAG the remote lacks; ``(blocks, bytes)``."""
    blocks = nbytes = 0
    batch, batch_bytes = [], 0
    with repo.store.view() as v:
        def get(c):
            d = v.get(c)
            if d is None:
                raise TvcfsError(f"block {cid_str(c)} is not in the local store, and the remote "
                                 f"lacks it too: cannot push (a lazy clone holds only what was read)")
            return d

        for cid, data in _post_order_missing(get, root, rem):
            batch.append((cid, data))
            batch_bytes += len(data)
            if batch_bytes >= BATCH_BYTES:
                n = rem.put_many(batch)
                blocks += n
                nbytes += batch_bytes
                batch, batch_bytes = [], 0
                if progress:
                    progress(nbytes, None)
        if batch:
            blocks += rem.put_many(batch)
            nbytes += batch_bytes
    rem.flush()
    if progress:
        progress(nbytes, None)
    return blocks, nbytes


# ------------------------------------------------------------------ fetch
@dataclass
class FetchResult:
    """What a fetch did: ``remote`` name, ``url``, ``refs`` (the remote's ``{name:
    cid}``), ``head`` (the ref the remote HEAD names), ``updated`` (``[(ref, old,
    new)]``), ``stats`` (per remote asked, the first one and any fallbacks: ``[(name,
    FetchStats)]``), ``blocks``/``nbytes`` fetched in all (verified, new),
    ``seconds``."""

    remote: str
    url: str
    refs: dict
    head: str
    updated: list = field(default_factory=list)
    stats: list = field(default_factory=list)
    blocks: int = 0
    nbytes: int = 0
    seconds: float = 0.0


def walk_dags(repo, rem: BlockRemote, roots: Iterable[bytes], *, complete=(), skeleton: bool = False,
              progress=None):
    """Fetch every block under ``roots`` (commits with history) missing from
    ``repo``'s local store, breadth first, with ``rem.get_many`` in batches of
    about :data:`BATCH_BYTES`, each batch verified and stored
    (:func:`~tvcfs.store.verify.verify_and_put`, one transaction, synced once at
    the end) while the next one downloads. ``complete``: commits whose DAGs are
    known complete locally (not walked). ``skeleton``: leave raw leaves out (the
    empty leaf is made locally). ``progress(bytes, None)``. Returns a
    :class:`~tvcfs.transport.base.FetchStats` whose ``missing`` lists the CIDs
    the remote did not have (empty when complete). Raises
    :class:`~tvcfs.errors.CorruptBlock` naming a block that does not hash to its
    CID (nothing of that batch's bad blocks is stored), ``BlockUnavailable``."""
    from .transport.base import FetchStats, links_of

    t0 = time.perf_counter()
    st = FetchStats(transport=getattr(rem, "transport", ""))
    store = repo.store
    empty = make_cid(RAW, b"")
    seen = set(complete)
    level = [c for c in dict.fromkeys(roots) if c not in seen]
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tvcfs-sync")
    try:
        while level:
            seen.update(level)
            nxt: list = []
            with store.view(verify=False) as v:
                here = [v.has(c) for c in level]
                # local interior nodes: their children may still be missing (resume)
                for c, h in zip(level, here):
                    if h and cid_codec(c) != RAW:
                        nxt.extend(links_of(c, bytes(v.get(c)), history=True))
            need = [c for c, h in zip(level, here) if not h]
            for cid, data in _fetch_batches(store, rem, need, pool, progress, st, t0):
                if cid_codec(cid) != RAW:
                    nxt.extend(links_of(cid, data, history=True))
            level = []
            for c in dict.fromkeys(nxt):
                if c in seen:
                    continue
                if skeleton and _is_raw(c):
                    seen.add(c)
                    if c == empty and not store.has(empty):
                        store.put_many([(empty, b"")], sync=False)
                    continue
                level.append(c)
    finally:
        pool.shutdown(wait=True)
        st.seconds = time.perf_counter() - t0
    store.sync()
    return st


def _is_raw(c: bytes) -> bool:
    try:
        return cid_codec(c) == RAW
    except InvalidCID:
        return False


def _fetch_batches(store, rem, need, pool, progress, st, t0):
    """Yield ``(cid, data)`` of the blocks ``need`` after they are verified and
    stored; download batch ``i+1`` (on ``pool``) while batch ``i`` is stored.
    Counts into ``st`` (a FetchStats); CIDs the remote lacks go to ``st.missing``."""
    from .store.verify import verify_and_put

    batches, cur, cur_bytes = [], [], 0
    for c in need:
        cur.append(c)
        cur_bytes += rem.size_of(c) or (1 << 20)
        if cur_bytes >= BATCH_BYTES:
            batches.append(cur)
            cur, cur_bytes = [], 0
    if cur:
        batches.append(cur)
    fut = pool.submit(lambda b: list(rem.get_many(b)), batches[0]) if batches else None
    for i in range(len(batches)):
        got = fut.result()
        fut = pool.submit(lambda b: list(rem.get_many(b)), batches[i + 1]) if i + 1 < len(batches) else None
        present = [(c, d) for c, d in got if d is not None]
        st.missing.extend(c for c, d in got if d is None)
        if present and st.first_block_s is None:
            st.first_block_at = time.perf_counter()
            st.first_block_s = st.first_block_at - t0
        st.wire_bytes += sum(len(d) for _, d in present)
        with store.write(sync=False) as w:
            res = verify_and_put(store, present, txn=w)
        if res.bad:
            if fut is not None:
                fut.cancel()
            raise CorruptBlock(f"block {cid_str(res.bad[0])} from {rem.url} does not hash to its CID "
                               f"(corrupt object in the bucket"
                               + (f"; {len(res.bad) - 1} more" if len(res.bad) > 1 else "")
                               + "); it was not stored; the fetch stopped, nothing else changed")
        st.blocks += res.stored
        st.nbytes += res.bytes_new
        if progress:
            progress(st.nbytes, None)
        yield from present


def fallback_remotes(repo, remote: str, url: str) -> list:
    """The one choice of which remote to ask next when ``remote`` (at ``url``) could
    not supply every block: the other configured remotes, fewest bad blocks counted
    against their peer first, without those over
    :data:`~tvcfs.transport.peer.PENALTY_LIMIT` (used only when named). Returns
    ``[(name, url)]``."""
    from .transport.peer import PENALTY_LIMIT, bad_count

    others = [(n, u) for n, u in repo.remotes().items()
              if n != remote and u != url and bad_count(repo, u) < PENALTY_LIMIT]
    others.sort(key=lambda nu: bad_count(repo, nu[1]))
    return others


def _fetch_from(repo, rem: BlockRemote, name: str, roots: list, complete: set, skeleton: bool,
                progress, stop_on_bad: bool, res: FetchResult, warn) -> list:
    """Fetch ``roots`` from one remote into ``repo`` (its ``fetch_dags`` capability,
    else :func:`walk_dags`), add its stats to ``res``, count bad blocks against its
    peer; returns the CIDs still missing."""
    base = res.nbytes
    prog = (lambda n, total=None: progress(base + n, None)) if progress else None
    fetch_dags = getattr(rem, "fetch_dags", None)
    if fetch_dags is not None and not skeleton:
        st = fetch_dags(repo, roots, complete=complete, progress=prog, stop_on_bad=stop_on_bad)
    else:
        st = walk_dags(repo, rem, roots, complete=complete, skeleton=skeleton, progress=prog)
    res.stats.append((name, st))
    res.blocks += st.blocks
    res.nbytes += st.nbytes
    if st.bad_blocks:
        from .transport.identity import format_peer_id
        from .transport.peer import penalise

        peer = getattr(rem, "peer_id", None)
        penalise(repo, peer, st.bad_blocks)
        if warn:
            warn(f"warning: {name} ({format_peer_id(peer) if peer else rem.url}) sent "
                 f"{st.bad_blocks} bad block(s): dropped and counted against that peer")
    return st.missing


def fetch(repo, remote: str = "origin", *, skeleton: bool | None = None, progress=None, warn=None,
          fast_forward_local: bool | None = None, engine: str | None = None,
          options: dict | None = None, fallbacks: bool = True) -> FetchResult:
    """Fetch the branches and tags of ``remote`` (a configured name or a URL,
    ``s3://`` or ``tvcfs://``) into ``repo``: missing blocks (verified; what is
    stored is never asked again, so an interrupted fetch resumes), asking the
    other configured remotes (:func:`fallback_remotes`) for what ``remote`` lacks
    or sent bad, then — once every DAG is complete — the remote-tracking refs and
    new tags (:func:`update_tracking_refs`; a bare URL updates no refs). A lazy
    repository (``clone --lazy``) fetches only the skeleton (``skeleton`` default)
    and its unchanged local branches follow. ``progress(bytes, None)``;
    ``warn(text)``; ``engine``: QUIC engine of tvcfs:// remotes; ``options``: of
    s3:// ones; ``fallbacks``: ask other remotes. Raises :class:`FetchIncomplete`,
    :class:`~tvcfs.errors.CorruptBlock`, :class:`~tvcfs.errors.BlockUnavailable`,
    transport errors (:class:`TvcfsError` subclasses)."""
    url = remote_url(repo, remote)
    lazy = repo.config.lazy
    skeleton = lazy if skeleton is None else skeleton
    ff = lazy if fast_forward_local is None else fast_forward_local
    t0 = time.monotonic()
    others = fallback_remotes(repo, remote, url) if fallbacks else []
    with open_remote(url, repo, engine=engine, options=options) as rem:
        refs = valid_refs(rem.list_refs(), remote, warn)
        head = rem.head() or (HEADS + "main" if HEADS + "main" in refs else "")
        complete = set(repo.refs().values())
        roots = [c for c in dict.fromkeys(refs.values()) if c not in complete]
        res = FetchResult(remote, url, refs, head)
        missing = []
        if roots:
            # gc keeps what this fetch stores before the refs name it (tvcfs/gc.py)
            fetching = _fetching(repo, url, roots)
            # a bad block is not asked of the same peer again when another remote exists
            try:
                missing = _fetch_from(repo, rem, remote, roots, complete, skeleton, progress,
                                      bool(others), res, warn)
            except MalformedObject as e:  # its hash is right: every copy is as broken
                raise MalformedObject(
                    f"the refs of {remote} lead to a damaged DAG: {e}; nothing was updated, and "
                    "fetching again will not help: ask its owner to run `tvcfs fsck`") from None
    for name, other in others:
        if not missing:
            break
        if warn:
            warn(f"{len(missing)}+ block(s) still missing after {remote}; asking remote {name}")
        try:
            with open_remote(other, repo, engine=engine) as rem:
                missing = _fetch_from(repo, rem, name, roots, complete, skeleton, progress,
                                      False, res, warn)
        except TvcfsError as e:
            if warn:
                warn(f"warning: remote {name} failed: {e}")
    res.seconds = time.monotonic() - t0
    if missing:
        bad = sum(st.bad_blocks for _, st in res.stats)
        raise FetchIncomplete(
            f"fetch from {remote} incomplete: {len(missing)}{'+' if len(missing) >= 1000 else ''} "
            f"block(s) missing (first {cid_str(missing[0])})"
            + (f", {bad} bad block(s) dropped" if bad else "")
            + f"; nothing was updated; run again to resume, push them to {url}, or add another remote")
    if "://" not in remote:
        res.updated = update_tracking_refs(repo, remote, refs, fast_forward_local=ff, warn=warn,
                                           message=f"fetch {remote}")
    if roots:
        _fetching(repo, url, None, fetching)
    return res


def valid_refs(refs: dict, remote: str, warn=None) -> dict:
    """The remote's ``refs`` (``{full name: CID}``) without the branches and tags whose
    names this repository refuses (:func:`tvcfs.refs.check_ref`: control characters,
    ``..``, over :data:`~tvcfs.refs.MAX_NAME_BYTES` bytes…): they are neither fetched
    nor stored, and ``warn(text)`` names each (escaped). Other refs pass as they are
    (no local ref is made of them)."""
    out = {}
    for name, cid in refs.items():
        if name.startswith((HEADS, TAGS)):
            try:
                check_ref(name)
            except InvalidRefName as e:
                if warn:
                    warn(f"warning: {remote} has a ref this repository refuses, skipped: {e}")
                continue
        out[name] = cid
    return out


def _fetching(repo, url: str, roots: list | None, key: str | None = None) -> str:
    """Record (``roots``: binary CIDs; returns the record's key) or drop (``roots``
    ``None``, ``key`` from the recording call) one fetch from ``url``, in the
    configuration's ``fetching`` map that :mod:`tvcfs.gc` reads as roots: a fetch
    stores its blocks in many transactions before any ref names them. One record per
    fetch (key ``URL#PID#N``), so two fetches from one URL at once (the remote may have
    moved between them) each keep their own roots until they end. A fetch that fails
    keeps its record (its blocks are what the next one resumes from) until a fetch
    from ``url`` finishes — which drops, with its own, the records for that URL of
    processes that have ended — or gc's expiry passes."""
    pid = os.getpid()
    if roots is not None:
        key = f"{url}#{pid}#{next(_FETCH_SEQ)}"

    def change(recs: dict) -> None:
        if roots is None:
            for k, rec in list(recs.items()):
                if k == key or (rec.get("url") == url and not process_alive(rec.get("pid"))):
                    del recs[k]
        else:
            recs[key] = {"url": url, "pid": pid, "roots": [cid_str(c) for c in roots], "time": int(time.time())}

    repo.config.update("fetching", change)
    return key


_FETCH_SEQ = itertools.count()


# ------------------------------------------------------------------ pull
@dataclass
class PullResult:
    """``kind``: "up-to-date", "fast-forward", "created" or "ahead"; ``branch``;
    ``old``/``new`` commits; ``fetch``: the :class:`FetchResult`."""

    kind: str
    branch: str
    old: bytes | None
    new: bytes | None
    fetch: FetchResult


def pull(repo, remote: str = "origin", branch: str | None = None, *, progress=None, warn=None,
         engine: str | None = None, options: dict | None = None) -> PullResult:
    """Fetch ``remote`` (:func:`fetch`), then fast-forward local ``branch`` (default:
    HEAD's) to the remote's branch (:func:`fast_forward`). Raises
    :class:`NotFastForward` when they have diverged (merge with ``tvcfs merge
    REMOTE/BRANCH``), and what :func:`fetch` raises."""
    branch = branch or repo.head_branch()
    if not branch:
        raise TvcfsError("HEAD is detached: name the branch to pull")
    res = fetch(repo, remote, progress=progress, warn=warn, engine=engine, options=options)
    return PullResult(*fast_forward(repo, remote, branch, res.refs), res)


def fast_forward(repo, remote: str, branch: str, refs: dict) -> tuple:
    """The ref step of a pull (every remote kind): move local ``branch`` to the
    fetched ``refs/heads/BRANCH`` of ``refs`` when that is a fast-forward. Returns
    ``(kind, branch, old, new)`` with ``kind`` "up-to-date", "created",
    "fast-forward" or "ahead". Raises :class:`NotFastForward` (diverged: merge),
    :class:`TvcfsError` (no such remote branch; the branch moved meanwhile)."""
    name = remote if "://" not in remote else "FETCH"
    target = refs.get(HEADS + branch)
    if target is None:
        raise TvcfsError(f"remote {remote} has no branch {branch!r}")
    local = repo.ref_db.get(HEADS + branch)
    if local == target:
        return "up-to-date", branch, local, target
    if local is None:
        repo.update_ref(HEADS + branch, target, None, message=f"pull {remote} {branch}: created")
        return "created", branch, None, target
    if is_ancestor(repo, local, target):
        try:
            repo.update_ref(HEADS + branch, target, local, message=f"pull {remote} {branch}: fast-forward")
        except RefConflict as e:
            raise TvcfsError(f"branch {branch} moved during the pull ({e}); pull again") from None
        return "fast-forward", branch, local, target
    if is_ancestor(repo, target, local):
        return "ahead", branch, local, target
    raise NotFastForward(
        f"cannot fast-forward {branch}: it and {name}/{branch} have diverged (local {_short(local)}, "
        f"remote {_short(target)}); merge them with `tvcfs merge {name}/{branch}`"
        + (" then `tvcfs push`" if name != "FETCH" else ""))


# ------------------------------------------------------------------ clone
def clone(url: str, dest: str, *, lazy: bool = False, remote: str = "origin", progress=None,
          warn=None, out=None, quiet: bool = False, engine: str | None = None,
          options: dict | None = None) -> tuple:
    """Clone ``url`` (``s3://`` or ``tvcfs://``) into a new repository at ``dest``:
    remote ``origin``, every branch and tag (verified), local branches, HEAD at the
    remote HEAD's branch. ``lazy``: only commits, directories and file nodes (no
    raw leaves); the repository is marked lazy, so ``tvcfs mount`` fetches leaves
    on demand. Re-running on an interrupted clone of the same URL resumes it (the
    "Resuming" line goes to ``out``, default stderr, unless ``quiet``); a clone
    that stored nothing leaves no directory behind. ``progress``, ``warn``,
    ``engine``, ``options``: as for :func:`fetch`. Returns ``(repo,
    FetchResult)`` (the caller closes the repo). Raises :class:`TvcfsError`."""
    from .repo import Repo

    check_url(url)
    dest = os.path.abspath(dest)
    created = not os.path.exists(dest)
    resume = False
    if not created:
        if os.path.isdir(os.path.join(dest, ".tvcfs")):
            try:
                with Repo.open(dest) as r:
                    resume = r.remotes().get(remote) == url and not r.branches() and r.config.lazy == lazy
            except TvcfsError:
                resume = False
        if not resume and (not os.path.isdir(dest) or os.listdir(dest)):
            raise TvcfsError(f"destination {dest} exists and is not an empty directory")
    repo = Repo.init(dest)
    try:
        if not resume:
            repo.add_remote(remote, url)
            if lazy:
                with repo.store.write() as w:
                    repo.config.set("lazy", True, w)
        elif not quiet:
            print(f"Resuming the interrupted clone into {dest}", file=out or sys.stderr, flush=True)
        res = fetch(repo, remote, progress=progress, warn=warn, fast_forward_local=True,
                    engine=engine, options=options)
        if res.head.startswith(HEADS) and res.head in res.refs:
            repo.set_head(res.head[len(HEADS):])
        elif res.refs and warn:
            warn("warning: the remote HEAD does not name a branch; HEAD left as is")
        if not res.refs and warn:
            warn("warning: you appear to have cloned an empty repository.")
        return repo, res
    except BaseException as e:
        kept = repo.store.stat()["blocks"]
        repo.close()
        if not resume and kept == 0:  # nothing arrived: leave no half-made repository behind
            import shutil

            shutil.rmtree(dest if created else os.path.join(dest, ".tvcfs"), ignore_errors=True)
            raise
        # an error no retry gets past (a damaged DAG, a hostile remote) is not
        # resumable; one that already says how to resume needs no second note
        if isinstance(e, TvcfsError) and e.resumable and "resume" not in str(e):
            e.add_note(f"{kept} verified blocks are kept in {dest}; run the same `tvcfs clone` "
                       f"again to resume")
        raise


# ------------------------------------------------------------------ URL mounts
def cache_dir_for(url: str) -> str:
    """Cache repository of a URL mount (``tvcfs mount tvcfs://… MNT``):
    ``$TVCFS_CACHE_DIR`` or ``$XDG_CACHE_HOME/tvcfs`` (default
    ``~/.cache/tvcfs``), then the server's peer ID (or ``host-port``) and the
    repository name. Raises ``ValueError`` for a URL that is not tvcfs://."""
    from .transport.client import parse_url
    from .transport.identity import format_peer_id

    u = parse_url(url)
    base = os.environ.get("TVCFS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tvcfs")
    key = format_peer_id(u.peer_id) if u.peer_id else f"{u.host}-{u.port}"
    if u.repo:
        key += "-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in u.repo)
    return os.path.join(base, key)


def prepare_url_mount(url: str, *, engine: str | None = None, quiet: bool = True,
                      out=None) -> str:
    """Cache repository for ``tvcfs mount URL MNT``: a lazy :func:`clone` of ``url``
    into :func:`cache_dir_for` the first time, else a :func:`fetch` of its refs
    and skeleton (fast-forwarding branches not changed locally; the cached refs
    are kept, with a warning on ``out``, when the remote cannot be reached).
    Returns the repository path. Raises :class:`TvcfsError`."""
    from .repo import Repo

    d = cache_dir_for(url)
    err = out or sys.stderr
    if os.path.isdir(os.path.join(d, ".tvcfs")):
        repo = Repo.open(d)
        try:
            if repo.remotes().get("origin") != url:
                repo.config.update("remotes", lambda rem: rem.update(origin=url))
            try:
                fetch(repo, "origin", skeleton=True, fast_forward_local=True, engine=engine,
                      fallbacks=False)
            except TvcfsError as e:
                print(f"warning: could not refresh {url}: {e}; mounting the cached refs", file=err)
        finally:
            repo.close()
        return d
    os.makedirs(os.path.dirname(d), exist_ok=True)
    repo, res = clone(url, d, lazy=True, engine=engine, quiet=quiet, out=err)
    if not quiet:
        print(f"Lazy clone of {url} into {d}: {len(res.refs)} ref(s), {res.blocks} skeleton "
              f"block(s), {res.nbytes} bytes in {res.seconds:.2f} s; file contents are fetched "
              "on demand by `tvcfs mount`", file=err)
    repo.close()
    return d
