"""The mount's side of lazy mounts: which block source a mount reads missing leaves
from, what it warms at start, ``--prefetch``, and the status files ``tvcfs status``
reads.

A *lazy clone* (``tvcfs clone --lazy``, :mod:`tvcfs.sync`) holds the
refs, commits, directories and the interior nodes of every file (the leaf index),
but no raw leaves. Mounting it (or a URL directly) installs a block source
(:class:`tvcfs.store.source.BlockSource`) as the reader's ``remote``: the peers'
prioritised fetcher (:func:`tvcfs.store.peers.peer_source`, this module's
:func:`attach_remote`) or an S3 bucket (:mod:`tvcfs.fs.s3source`). The mount only
calls the source's interface — ``fetch``, ``schedule_range``, ``stats_dict`` — and
knows nothing of the wire protocol (docs/architecture.md, docs/lazy.md).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os

from ..errors import TvcfsError
from ..store.base import PRIO_TENSOR

__all__ = ["READAHEAD_KB", "STATUS_SUFFIX", "attach_remote", "mount_statuses", "prefetch_matching",
           "start_hook", "warm"]

log = logging.getLogger("tvcfs.fs.lazy")

READAHEAD_KB = 128            # kernel readahead of a lazy mount (local mounts: 1024)
STATUS_SUFFIX = ".remote.json"  # REPO/.tvcfs/mounts/<mount hash>.remote.json: peer states


def warm(source, repo, reader) -> int:
    """At mount start: build the leaf indexes of HEAD's safetensors files (so
    ``open`` is instant) and have ``source`` fetch, at tensor priority, the leaves
    the kernel's first read of each covers (its readahead from offset 0: the
    header, which the chunker gives its own leaves, and the first tensor's first
    leaf), so ``safe_open`` runs locally. A longer header is completed on first
    use. Returns bytes scheduled."""
    head = repo.head()
    if head is None:
        return 0
    n = 0
    for path, e in repo.walk(head):
        if e.kind != "file" or not path.endswith(".safetensors"):
            continue
        try:
            idx = reader.index(e.cid)
        except TvcfsError:
            continue
        # the leaves of the kernel's first read of the file (its readahead from 0):
        # the header (the chunker gives it its own leaves) and what follows it
        hi = min(idx.size, READAHEAD_KB * 1024)
        miss = reader.missing(idx, 0, hi)
        if miss:
            source.schedule_range(idx, 0, hi, miss, PRIO_TENSOR)
            n += sum(idx.sizes[i] for i in idx.leaf_range(0, hi))
    return n


def prefetch_matching(repo, reader, patterns) -> int:
    """Schedule background prefetch (through ``reader.prefetch``) of files of the
    HEAD commit whose path (or base name) matches a glob in ``patterns``; ``@FILE``
    names a file listing paths in the order to fetch them (a recorded access
    order). Returns bytes scheduled. Raises ``OSError`` for an unreadable
    ``@FILE``."""
    head = repo.head()
    if head is None:
        return 0
    files = [(path, e) for path, e in repo.walk(head) if e.kind == "file"]
    chosen: list = []
    for pat in patterns:
        if pat.startswith("@"):
            with open(pat[1:]) as f:
                order = [ln.strip().strip("/") for ln in f if ln.strip()]
            by_path = dict(files)
            for path in order:
                e = by_path.get(path)
                if e is not None:
                    chosen.append(e)
                else:
                    log.info("prefetch: %s is not in HEAD", path)
            continue
        for path, e in files:
            if fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(os.path.basename(path), pat):
                chosen.append(e)
    n = 0
    seen = set()
    for e in chosen:
        if e.cid in seen:
            continue
        seen.add(e.cid)
        try:
            n += reader.prefetch(reader.index(e.cid))
        except TvcfsError as err:
            log.info("prefetch %s: %s", e.name, err)
    log.info("prefetch scheduled: %d file(s), %d bytes", len(seen), n)
    return n


def start_hook(source, repo, reader, patterns):
    """The ``on_started`` callable of a mount's block source: :func:`warm`, then
    :func:`prefetch_matching` of ``patterns`` (``--prefetch``); a failure of either
    is logged, never stops the mount."""

    def started() -> None:
        try:
            warm(source, repo, reader)
        except Exception:  # noqa: BLE001 - only an optimisation
            log.exception("warming the mount")
        if patterns:
            try:
                prefetch_matching(repo, reader, patterns)
            except Exception:  # noqa: BLE001 - a bad pattern must not stop the mount
                log.exception("--prefetch")

    return started


def mount_statuses(control: str) -> list:
    """The status files of the running lazy mounts of a repository (``control``:
    its ``.tvcfs`` directory): a list of the sources' ``status()`` dicts
    (:meth:`tvcfs.transport.fetcher.RemoteFetcher.status`), by mount point. Files of
    mounts whose process is gone are skipped."""
    from ..fileio import process_alive

    d = os.path.join(control, "mounts")
    out = []
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return out
    for name in names:
        if not name.endswith(STATUS_SUFFIX):
            continue
        try:
            with open(os.path.join(d, name)) as f:
                status = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(status, dict) and process_alive(status.get("pid")):
            out.append(status)
    return sorted(out, key=lambda status: status.get("mountpoint", ""))


def attach_remote(repo, ops, remotes=None, fetch_timeout=None, prefetch=None, **_ignored):
    """Install the peers' block source (:func:`tvcfs.store.peers.peer_source`) as
    ``ops.reader.remote`` when the mount has peers: the ``remotes`` URLs given,
    plus the repository's remotes when it is a lazy clone. Returns the source (the
    caller runs its ``run`` in its nursery) or None. (``tvcfs.fs.s3source.attach_lazy``
    picks between this and an S3 bucket.)"""
    from ..store.peers import peer_source

    urls = list(remotes or [])
    if repo.config.lazy:
        urls += list(repo.remotes().values())
    urls = list(dict.fromkeys(urls))
    if not urls:
        if prefetch:
            log.info("--prefetch without remotes: local leaves are read ahead by the kernel")
        return None
    source = peer_source(repo.store, urls, identity=repo.identity(), timeout=fetch_timeout)
    reader = ops.reader
    source.on_stored = reader.preloader.mark_resident
    source.read_count = lambda: reader.stats.reads
    source.on_started = start_hook(source, repo, reader, list(prefetch or []))
    reader.remote = source
    log.info("lazy mount: %d peer(s): %s; fetch timeout %g s", len(urls), ", ".join(urls),
             source.settings.timeout)
    return source
