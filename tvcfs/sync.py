"""Push, fetch, pull and clone against remotes that are a block store plus refs.

A *block remote* (:class:`BlockRemote`) is the small interface this module needs
from the other side: list its refs (and the ref its HEAD names), move one ref by
compare-and-swap, and ``has_many`` / ``get_many`` / ``put_many`` / ``flush`` of
blocks. :class:`S3Remote` implements it over S3-compatible object storage
(:class:`~tvcfs.store.s3.S3Store` packs and :class:`~tvcfs.store.s3.S3Refs`); the
tvcfs:// block exchange can implement the same interface later and share the walks
below. See docs/backends.md ("Verbs") for the user's view.

* **push** walks the local DAG of the pushed commit (history included) children
  first, skips every sub-DAG whose root the remote already holds, uploads the rest
  (``put_many``, packs written as they fill, ``flush`` at the end) and only then
  moves the remote branch by compare-and-swap from the value it read before
  uploading. Because a block is uploaded after every block below it (and packs are
  written in order, each pack before its index), a block the remote holds has its
  whole sub-DAG there: re-running an interrupted push moves only what is missing.
  A lost race is :class:`BranchMoved` ("branch moved"): nothing is overwritten.
* **fetch** reads the remote refs, walks their DAGs breadth first and fetches the
  missing blocks level by level with ``get_many`` (in batches of
  :data:`BATCH_BYTES`), every block through
  :func:`tvcfs.store.verify.verify_and_put`; the remote-tracking refs
  ``refs/remotes/NAME/*`` (and new tags) are set by :func:`update_tracking_refs`
  only once every DAG is complete. Local blocks are walked again (an interrupted
  fetch stored parents before children) but never fetched again: re-running
  resumes. ``skeleton=True`` (a lazy clone) fetches everything but raw leaves.
* **pull** = fetch + fast-forward; **clone** = a new repository + fetch + local
  branches and HEAD.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

from .encoding.cid import RAW, cid_codec, cid_str, make_cid
from .errors import CorruptBlock, InvalidCID, RefConflict, TvcfsError
from .refs import HEADS, TAGS

__all__ = [
    "BATCH_BYTES",
    "BlockRemote",
    "BranchMoved",
    "FetchResult",
    "PullResult",
    "PushResult",
    "S3Remote",
    "clone",
    "fetch",
    "is_ancestor",
    "is_block_url",
    "open_remote",
    "pull",
    "push",
    "update_tracking_refs",
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
    """What sync needs from a remote. ``url``: shown in messages. Errors are
    :class:`TvcfsError` subclasses with one-line messages (``BlockUnavailable``
    for an unreachable remote)."""

    url: str

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

    def close(self) -> None: ...


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

    def list_refs(self) -> dict:
        return {k: v for k, v in self.refs.list("refs/").items() if k.startswith((HEADS, TAGS))}

    def head(self) -> str:
        return self.refs.head()

    def compare_and_swap(self, name, expected, new) -> None:
        self.refs.compare_and_swap(name, expected, new)

    def init_head(self, ref: str) -> None:
        self.refs.init_head(ref)

    def has_many(self, cids) -> list:
        return self.store.has_many(cids)

    def get_many(self, cids):
        return self.store.get_many(cids, verify=False)

    def size_of(self, cid):
        return self.store.size_of(cid)

    def put_many(self, blocks) -> int:
        return self.store.put_many(blocks)

    def flush(self) -> None:
        self.store.flush()

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def is_block_url(url: str | None) -> bool:
    """True for URLs of block remotes handled here (``s3://…``)."""
    return bool(url) and url.startswith(BLOCK_SCHEMES)


def check_url(url: str) -> str:
    """Validate a block-remote URL; return it. Raises :class:`TvcfsError`."""
    from .store.s3 import parse_s3_url

    parse_s3_url(url)
    return url


def open_remote(url: str, **options) -> BlockRemote:
    """The :class:`BlockRemote` for ``url`` (``s3://BUCKET/PREFIX``). Raises
    :class:`TvcfsError` for another scheme."""
    if url.startswith("s3://"):
        check_url(url)
        return S3Remote(url, **options)
    raise TvcfsError(f"not a block remote URL: {url!r} (expected s3://BUCKET/PREFIX)")


def remote_url(repo, remote: str) -> str:
    """URL of the configured remote ``remote``, or ``remote`` itself if it is a URL.
    Raises :class:`TvcfsError` naming the configured remotes."""
    if "://" in remote:
        return remote
    rem = repo.remotes()
    if remote not in rem:
        known = ", ".join(sorted(rem)) or "none configured"
        raise TvcfsError(f"no remote named {remote!r} ({known}); add one with "
                         f"`tvcfs remote add {remote} URL` (tvcfs://PEERID@HOST:PORT/ or s3://BUCKET/PREFIX)")
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


def _short(c: bytes | None) -> str:
    return cid_str(c)[:16] if c else "(none)"


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
    from .transport.backend import links_of

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
         progress=None, options: dict | None = None) -> PushResult:
    """Push local ``branch`` (default: HEAD's) to the same branch of the block remote
    ``remote`` (a configured name or an ``s3://`` URL): upload the blocks it lacks,
    then move its branch by compare-and-swap from the value read first.

    Refused before uploading when the remote branch is not an ancestor of the local
    one (unless ``force``). ``progress(bytes uploaded, None)``. Raises
    :class:`NotFastForward`, :class:`BranchMoved` (another push won the race:
    nothing overwritten), :class:`~tvcfs.errors.BlockUnavailable` (the remote
    cannot be reached), :class:`TvcfsError`."""
    branch = branch or repo.head_branch()
    if not branch:
        raise TvcfsError("HEAD is detached: name the branch to push")
    ref = HEADS + branch
    local = repo.ref_db.get(ref)
    if local is None:
        raise TvcfsError(f"no local branch {branch!r}")
    url = remote_url(repo, remote)
    name = remote if "://" not in remote else url
    t0 = time.monotonic()
    with open_remote(url, **(options or {})) as rem:
        cur = rem.list_refs().get(ref)
        if cur == local:
            res = PushResult("up-to-date", ref, cur, local)
        else:
            if cur is not None and not force:
                check_fast_forward(repo, name, branch, cur, local)
            blocks, nbytes = _upload(repo, rem, local, progress)
            try:
                rem.compare_and_swap(ref, cur, local)
            except RefConflict as e:
                raise BranchMoved(
                    f"push rejected: branch {branch} moved on {name} while pushing (expected "
                    f"{_short(cur)}, found {_short(e.actual)}); nothing was overwritten (the "
                    f"{blocks} uploaded blocks stay); run `tvcfs pull {name} {branch}`, merge if "
                    f"needed, then push again") from None
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
    new)]``), ``blocks``/``nbytes`` fetched (verified, new), ``seconds``."""

    remote: str
    url: str
    refs: dict
    head: str
    updated: list = field(default_factory=list)
    blocks: int = 0
    nbytes: int = 0
    seconds: float = 0.0


def fetch_dags(repo, rem: BlockRemote, roots: Iterable[bytes], *, complete=(), skeleton: bool = False,
               progress=None, counter: list | None = None) -> list:
    """Fetch every block under ``roots`` (commits with history) missing from
    ``repo``'s local store, breadth first, with ``rem.get_many`` in batches of
    about :data:`BATCH_BYTES`, each batch verified and stored
    (:func:`~tvcfs.store.verify.verify_and_put`, one transaction, synced once at
    the end) while the next one downloads. ``complete``: commits whose DAGs are
    known complete locally (not walked). ``skeleton``: leave raw leaves out (the
    empty leaf is made locally). ``counter``: ``[blocks, bytes]`` added to.
    Returns the CIDs the remote did not have (empty when complete). Raises
    :class:`~tvcfs.errors.CorruptBlock` naming a block that does not hash to its
    CID (nothing of that batch's bad blocks is stored), ``BlockUnavailable``."""
    from .transport.backend import links_of

    store = repo.store
    counter = counter if counter is not None else [0, 0]
    empty = make_cid(RAW, b"")
    seen = set(complete)
    level = [c for c in dict.fromkeys(roots) if c not in seen]
    missing: list = []
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
            for cid, data in _fetch_batches(store, rem, need, pool, progress, counter, missing):
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
    store.sync()
    return missing


def _is_raw(c: bytes) -> bool:
    try:
        return cid_codec(c) == RAW
    except InvalidCID:
        return False


def _fetch_batches(store, rem, need, pool, progress, counter, missing):
    """Yield ``(cid, data)`` of the blocks ``need`` after they are verified and
    stored; download batch ``i+1`` (on ``pool``) while batch ``i`` is stored."""
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
        missing.extend(c for c, d in got if d is None)
        with store.write(sync=False) as w:
            res = verify_and_put(store, present, txn=w)
        if res.bad:
            if fut is not None:
                fut.cancel()
            raise CorruptBlock(f"block {cid_str(res.bad[0])} from {rem.url} does not hash to its CID "
                               f"(corrupt object in the bucket"
                               + (f"; {len(res.bad) - 1} more" if len(res.bad) > 1 else "")
                               + "); it was not stored; the fetch stopped, nothing else changed")
        counter[0] += res.stored
        counter[1] += res.bytes_new
        if progress:
            progress(counter[1], None)
        yield from present


def fetch(repo, remote: str = "origin", *, skeleton: bool | None = None, progress=None, warn=None,
          fast_forward_local: bool | None = None, options: dict | None = None) -> FetchResult:
    """Fetch the branches and tags of the block remote ``remote`` (a configured name
    or an ``s3://`` URL) into ``repo``: missing blocks (verified), then — once every
    DAG is complete — the remote-tracking refs and new tags
    (:func:`update_tracking_refs`; a bare URL updates no refs). A lazy repository
    (``clone --lazy``) fetches only the skeleton (``skeleton`` default) and its
    unchanged local branches follow. ``progress(bytes, None)``; ``warn(text)``.
    Raises :class:`FetchIncomplete`, :class:`~tvcfs.errors.CorruptBlock`,
    :class:`~tvcfs.errors.BlockUnavailable`."""
    url = remote_url(repo, remote)
    lazy = repo.config.lazy
    skeleton = lazy if skeleton is None else skeleton
    ff = lazy if fast_forward_local is None else fast_forward_local
    t0 = time.monotonic()
    with open_remote(url, **(options or {})) as rem:
        refs = rem.list_refs()
        head = rem.head() or (HEADS + "main" if HEADS + "main" in refs else "")
        complete = set(repo.refs().values())
        counter = [0, 0]
        missing = fetch_dags(repo, rem, refs.values(), complete=complete, skeleton=skeleton,
                             progress=progress, counter=counter)
    res = FetchResult(remote, url, refs, head, blocks=counter[0], nbytes=counter[1])
    if missing:
        raise FetchIncomplete(
            f"fetch from {remote} incomplete: {len(missing)} block(s) are not in {url} (first "
            f"{cid_str(missing[0])}); nothing was updated; push them there, or fetch again")
    if "://" not in remote:
        res.updated = update_tracking_refs(repo, remote, refs, fast_forward_local=ff, warn=warn,
                                           message=f"fetch {remote}")
    res.seconds = time.monotonic() - t0
    return res


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
         options: dict | None = None) -> PullResult:
    """Fetch ``remote``, then fast-forward local ``branch`` (default: HEAD's) to the
    remote's branch. Raises :class:`NotFastForward` when they have diverged (merge
    with ``tvcfs merge REMOTE/BRANCH``), and what :func:`fetch` raises."""
    branch = branch or repo.head_branch()
    if not branch:
        raise TvcfsError("HEAD is detached: name the branch to pull")
    res = fetch(repo, remote, progress=progress, warn=warn, options=options)
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
          warn=None, out=None, quiet: bool = False, options: dict | None = None) -> tuple:
    """Clone the block remote ``url`` into a new repository at ``dest``: remote
    ``origin``, every branch and tag (verified), local branches, HEAD at the remote
    HEAD's branch. ``lazy``: only commits, directories and file nodes (no raw
    leaves); the repository is marked lazy, so ``tvcfs mount`` fetches leaves on
    demand. Re-running on an interrupted clone of the same URL resumes it; a clone
    that stored nothing leaves no directory behind. Returns ``(repo,
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
        res = fetch(repo, remote, progress=progress, warn=warn, fast_forward_local=True, options=options)
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
        if isinstance(e, TvcfsError):
            e.add_note(f"{kept} verified blocks are kept in {dest}; run the same `tvcfs clone` "
                       f"again to resume")
        raise
