"""Figures the web pages show that depend only on immutable objects, computed once
per process and cached by CID (docs/hub.md, "Web pages"):

* the blocks of a tree (``{CID: bytes}``: every block reachable from a root
  directory), the last few trees kept;
* per commit, the **bytes new** in it — bytes of blocks reachable from its tree and
  not from its first parent's tree (what the commit added to the store) — and the
  bytes of its whole tree (the model size);
* per branch head, the order of the log (newest first) as far as pages asked for
  it, so a page of a long log is a slice, not a walk of the whole history.

Commits and trees never change, so nothing here is ever invalidated; caches are
bounded (least recently used entries are dropped).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ...encoding.cid import DAG_PB, RAW, cid_codec
from ...encoding.dagpb import decode_node
from ...errors import BlockNotFound

MAX_TREES = 8          # block maps of trees kept (a log page walks consecutive commits)
MAX_COMMITS = 200_000  # per-commit figures kept
MAX_LOGS = 64          # log orders kept (one per head)


class _LRU:
    """A small thread-safe least-recently-used map (``get`` → ``None`` when absent;
    ``put`` returns the value)."""

    def __init__(self, size: int):
        self.size, self.entries, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            v = self.entries.get(key)
            if v is not None:
                self.entries.move_to_end(key)
            return v

    def put(self, key, value):
        with self.lock:
            self.entries[key] = value
            self.entries.move_to_end(key)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return value


def tree_blocks(get, root: bytes) -> dict:
    """``{binary CID: block bytes}`` of every block reachable from directory ``root``
    (directories, HAMT shards, file nodes, leaves; each once). Raw leaves are not
    read: their size is the ``Tsize`` of the link to them (a raw block's ``Tsize`` is
    its length). Raises :class:`~tvcfs.errors.BlockNotFound` for a missing node."""
    sizes: dict = {}
    stack = [(root, None)]
    while stack:
        c, hint = stack.pop()
        if c in sizes:
            continue
        codec = cid_codec(c)
        if codec == RAW and hint is not None:
            sizes[c] = hint
            continue
        block = get(c)
        sizes[c] = len(block)
        if codec == DAG_PB:
            links, _ = decode_node(block)
            stack.extend((link.hash, link.tsize) for link in links if link.hash not in sizes)
    return sizes


class RepoStats:
    """The caches of one hub process (shared by all repositories: keys are CIDs,
    which name content, not places). Thread-safe."""

    def __init__(self):
        self._trees = _LRU(MAX_TREES)
        self._commits = _LRU(MAX_COMMITS)
        self._decoded = _LRU(MAX_COMMITS)
        self._logs = _LRU(MAX_LOGS)

    def commit(self, repo, cid: bytes):
        """The decoded :class:`~tvcfs.encoding.commit.Commit` ``cid`` (cached)."""
        com = self._decoded.get(cid)
        return com if com is not None else self._decoded.put(cid, repo.read_commit(cid))

    def blocks(self, repo, tree: bytes) -> dict:
        """:func:`tree_blocks` of ``tree`` (the last :data:`MAX_TREES` kept)."""
        b = self._trees.get(tree)
        return b if b is not None else self._trees.put(tree, tree_blocks(repo.get, tree))

    def commit_bytes(self, repo, cid: bytes) -> tuple:
        """``(bytes new, tree bytes)`` of commit ``cid``: bytes of the blocks reachable
        from its tree and not from its first parent's tree (all of them for a root
        commit, or when the parent is not stored), and bytes of all blocks of its tree."""
        got = self._commits.get(cid)
        if got is not None:
            return got
        com = self.commit(repo, cid)
        mine = self.blocks(repo, com.tree)
        total = sum(mine.values())
        new = total
        if com.parents:
            try:
                ptree = self.commit(repo, com.parents[0]).tree
            except BlockNotFound:  # a shallow history: the parent is not here
                ptree = None
            if ptree is not None:
                theirs = self.blocks(repo, ptree)
                new = sum(n for c, n in mine.items() if c not in theirs)
        return self._commits.put(cid, (new, total))

    def log_page(self, repo, head: bytes, start: int, count: int) -> tuple:
        """``(commits, more)``: binary CIDs ``[start, start + count)`` of the log of
        ``head`` (newest first, the order of :meth:`tvcfs.Repo.log`) and whether any
        follow. The walk of each head is kept and extended only as far as a page asks,
        and reads commits through the decoded-commit cache: after a push, the first
        page of the new head costs the new commits, not the whole history."""
        from ...history import walk_log

        entry = self._logs.get(head)
        if entry is None:
            entry = self._logs.put(head, {"order": [], "walk": walk_log(_CachedCommits(self, repo), [head]),
                                          "lock": threading.Lock(), "done": False})
        with entry["lock"]:
            order = entry["order"]
            while not entry["done"] and len(order) < start + count + 1:
                nxt = next(entry["walk"], None)
                if nxt is None:
                    entry["done"] = True
                else:
                    order.append(nxt[0])
            return order[start:start + count], len(order) > start + count


class _CachedCommits:
    """What :func:`tvcfs.history.walk_log` needs of a repository (``read_commit``),
    answered from :class:`RepoStats`' decoded-commit cache."""

    __slots__ = ("stats", "repo")

    def __init__(self, stats: RepoStats, repo):
        self.stats, self.repo = stats, repo

    def read_commit(self, cid: bytes):
        return self.stats.commit(self.repo, cid)
