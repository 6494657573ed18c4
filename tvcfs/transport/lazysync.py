"""Lazy clones and fetches over the tvcfs:// transport (docs/lazy.md, "The lazy
clone"): the remote's refs and the skeleton of their commits — commits, directories,
file interior nodes — without raw leaves, which readers then take on demand from the
peers (the lazy mount's fetcher, tvcfs/fs/remote.py; the block layer's peer tier,
tvcfs/store/peers.py). Also the cache repository behind ``tvcfs mount URL MNT``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from ..encoding.cid import RAW, cid_str, make_cid
from ..errors import TvcfsError
from ..store.base import PRIO_FOREGROUND


@dataclass
class LazyFetchResult:
    """What a lazy clone/fetch did: the remote's ``refs`` and ``head``, ``updated``
    refs ``[(name, old, new)]``, ``blocks``/``nbytes`` of skeleton nodes stored,
    ``wire_bytes`` received, ``seconds``."""

    remote: str
    url: str
    refs: dict
    head: str
    updated: list
    blocks: int = 0
    nbytes: int = 0
    wire_bytes: int = 0
    seconds: float = 0.0


async def fetch_skeleton(sess, store, roots) -> tuple[int, int]:
    """Store every non-leaf block reachable from ``roots`` (commits with their
    history, directories, file interior nodes), asking ``sess`` (a started
    :class:`~tvcfs.transport.client.RemoteSession`) for the missing ones level by
    level. Raw leaves are not fetched (the empty leaf, needed to stat empty files,
    is made locally). Returns ``(blocks, bytes)`` stored. Raises ``TvcfsError``
    when the remote lacks a node."""
    from .backend import is_leaf, links_of

    empty = make_cid(RAW, b"")
    seen: set = set()
    level = list(roots)
    blocks = nbytes = 0
    while level:
        level = [c for c in dict.fromkeys(level) if c not in seen]
        seen.update(level)
        present = dict(store.get_many(level))
        need = [c for c, d in present.items() if d is None]
        if need:
            got = await sess.want(need, PRIO_FOREGROUND)
            lacking = [c for c in need if c not in got]
            if lacking:
                raise TvcfsError(f"the remote lacks (or sent corrupt) block {cid_str(lacking[0])} "
                                 f"of the skeleton ({len(lacking)} missing)")
            store.put_many(list(got.items()), sync=False)
            blocks += len(got)
            nbytes += sum(len(d) for d in got.values())
            present.update(got)
        nxt = []
        for c, d in present.items():
            try:
                children = links_of(c, d, history=True)
            except TvcfsError:
                continue
            for ch in children:
                if ch in seen:
                    continue
                if is_leaf(ch):
                    if ch == empty and not store.has(empty):
                        store.put_many([(empty, b"")], sync=False)
                    continue
                nxt.append(ch)
        level = nxt
    store.sync()
    return blocks, nbytes


async def _lazy_fetch_async(repo, remote: str, url: str, engine, fast_forward_local: bool):
    from ..refs import HEADS, TAGS
    from .client import open_session
    from .runner import repo_tickets

    t0 = time.monotonic()
    async with open_session(url, identity=repo.identity(), engine=engine, auth="auto",
                            refs_prefix="refs/", tickets=repo_tickets(repo)) as sess:
        refs, head = await sess.list_refs("refs/")
        refs = {k: v for k, v in refs.items() if k.startswith((HEADS, TAGS))}
        wire0 = sess.ch.bytes_in
        blocks, nbytes = await fetch_skeleton(sess, repo.store, list(dict.fromkeys(refs.values())))
        wire = sess.ch.bytes_in - wire0
    from ..sync import update_tracking_refs

    updated = update_tracking_refs(repo, remote, refs, fast_forward_local=fast_forward_local,
                                   message=f"lazy fetch {remote}")
    return LazyFetchResult(remote, url, refs, head, updated, blocks, nbytes, wire,
                           time.monotonic() - t0)


def lazy_fetch(repo, remote: str = "origin", *, engine: str | None = None,
               fast_forward_local: bool = False) -> LazyFetchResult:
    """Fetch the refs of ``remote`` (a configured name or a URL) and the skeleton of
    their commits (no raw leaves) into ``repo``. Raises ``TvcfsError`` subclasses."""
    from .runner import remote_url, run_sync

    url = remote_url(repo, remote)
    return run_sync(lambda: _lazy_fetch_async(repo, remote, url, engine, fast_forward_local))


def lazy_clone(url: str, dest: str, *, remote: str = "origin", engine: str | None = None,
               quiet: bool = True, out=None):
    """``tvcfs clone --lazy URL DEST``: a new repository at ``dest`` with the remote's
    branches, tags, commits and trees but no file leaves; marked lazy, so
    ``tvcfs mount DEST MNT`` fetches leaves on demand from its remotes. Returns
    ``(repo, LazyFetchResult)``; the caller closes the repo."""
    from ..refs import HEADS
    from ..repo import Repo
    from .client import parse_url

    parse_url(url)
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise TvcfsError(f"destination {dest} exists and is not an empty directory")
    repo = Repo.init(dest)
    try:
        repo.add_remote(remote, url)
        with repo.store.write() as w:
            repo.config.set("lazy", True, w)
        res = lazy_fetch(repo, remote, engine=engine, fast_forward_local=True)
        if res.head.startswith(HEADS) and res.head in res.refs:
            repo.set_head(res.head[len(HEADS):])
        if not quiet:
            print(f"Lazy clone of {url} into {dest}: {len(res.refs)} ref(s), {res.blocks} "
                  f"skeleton block(s), {res.nbytes} bytes in {res.seconds:.2f} s; file "
                  "contents are fetched on demand by `tvcfs mount`", file=out or sys.stderr)
        return repo, res
    except BaseException:
        repo.close()
        raise


def cache_dir_for(url: str) -> str:
    """Cache repository of a URL mount: ``$TVCFS_CACHE_DIR`` or
    ``$XDG_CACHE_HOME/tvcfs`` (default ``~/.cache/tvcfs``), then the server's peer
    ID (or ``host-port``) and the repository name."""
    from .client import parse_url
    from .identity import format_peer_id

    u = parse_url(url)
    base = os.environ.get("TVCFS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tvcfs")
    key = format_peer_id(u.peer_id) if u.peer_id else f"{u.host}-{u.port}"
    if u.repo:
        key += "-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in u.repo)
    return os.path.join(base, key)


def prepare_url_mount(url: str, *, engine: str | None = None, quiet: bool = True,
                      out=None) -> str:
    """Cache repository for ``tvcfs mount URL MNT``: lazy-clone ``url`` into
    :func:`cache_dir_for` the first time, else refresh its refs (fast-forwarding
    branches not changed locally; the cached refs are kept when the remote cannot
    be reached). Returns the repository path."""
    from ..repo import Repo

    d = cache_dir_for(url)
    if os.path.isdir(os.path.join(d, ".tvcfs")):
        repo = Repo.open(d)
        try:
            if repo.remotes().get("origin") != url:
                repo.config.update("remotes", lambda rem: rem.update(origin=url))
            try:
                lazy_fetch(repo, "origin", engine=engine, fast_forward_local=True)
            except TvcfsError as e:
                print(f"warning: could not refresh {url}: {e}; mounting the cached refs",
                      file=out or sys.stderr)
        finally:
            repo.close()
        return d
    os.makedirs(os.path.dirname(d), exist_ok=True)
    repo, _ = lazy_clone(url, d, engine=engine, quiet=quiet, out=out)
    repo.close()
    return d
