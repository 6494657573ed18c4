"""History queries over a :class:`~tvcfs.repo.Repo`: ``log`` from several starts
(``--all``), limited to paths (``log -- PATH``), in topological order with a text
graph (``--graph``); the reflog newest first; ref decorations. The CLI formats
what these return (docs/repository.md, "Commands").
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Iterable, Iterator

from .dag import resolve_path
from .encoding.commit import Commit
from .errors import BlockNotFound, PathNotFound
from .refs import HEADS, REMOTES, TAGS


def log_starts(repo, revs: Iterable[str] = (), all_refs: bool = False) -> list:
    """The commits a log starts from: ``revs`` resolved (default HEAD), plus with
    ``all_refs`` every branch, tag and remote-tracking ref and HEAD. Raises
    :class:`~tvcfs.errors.RevisionNotFound` for a bad revision."""
    starts = [repo.resolve(r) for r in revs]
    if all_refs:
        starts += list(repo.refs().values())
        h = repo.head()
        if h is not None:
            starts.append(h)
    elif not starts:
        starts = [repo._rev_to_cid(None)]
    return list(dict.fromkeys(starts))


def _entry_cid(repo, tree: bytes, path: str):
    try:
        return resolve_path(repo.get, tree, path).cid
    except PathNotFound:
        return None


def touches(repo, com: Commit, paths: list) -> bool:
    """True if commit ``com`` changes any of ``paths`` (tree paths; a directory
    counts when anything below it changed): the entry at the path differs from its
    first parent's (a root commit: the path exists; a merge: differs from every
    parent, as git's default history simplification)."""
    parents = []
    for p in com.parents:
        try:
            parents.append(repo.read_commit(p).tree)
        except BlockNotFound:  # a shallow or lazy history: compare with nothing
            parents.append(None)
    for path in paths:
        mine = _entry_cid(repo, com.tree, path)
        if not parents:
            if mine is not None:
                return True
            continue
        if all(mine != (_entry_cid(repo, t, path) if t else None) for t in parents):
            return True
    return False


def walk_log(repo, starts: list, first_parent: bool = False, topo: bool = False) -> Iterator[tuple]:
    """``(cid, Commit)`` of every commit reachable from ``starts`` (binary CIDs),
    each once, newest first by timestamp; with ``topo`` a child always comes before
    its parents (git's ``--topo-order``, needed for a graph). Parents that are not
    stored (a shallow history) end the walk there."""
    if topo:
        yield from _topo(repo, starts, first_parent)
        return
    seen = set(starts)
    heap, seq = [], 0
    for s in starts:
        heap.append((-repo.read_commit(s).timestamp, seq, s))
        seq += 1
    heapq.heapify(heap)
    while heap:
        _, _, c = heapq.heappop(heap)
        com = repo.read_commit(c)
        yield c, com
        for p in (com.parents[:1] if first_parent else com.parents):
            if p in seen:
                continue
            seen.add(p)
            try:
                ts = repo.read_commit(p).timestamp
            except BlockNotFound:
                continue
            heapq.heappush(heap, (-ts, seq, p))
            seq += 1


def _topo(repo, starts, first_parent):
    commits: dict = {}
    stack = list(starts)
    while stack:
        c = stack.pop()
        if c in commits:
            continue
        try:
            com = repo.read_commit(c)
        except BlockNotFound:
            continue
        commits[c] = com
        stack.extend(com.parents[:1] if first_parent else com.parents)
    children = {c: 0 for c in commits}
    for c, com in commits.items():
        for p in (com.parents[:1] if first_parent else com.parents):
            if p in children:
                children[p] += 1
    order = {c: i for i, c in enumerate(starts)}
    heap = [(-commits[c].timestamp, order.get(c, len(order)), c) for c, n in children.items() if n == 0]
    heapq.heapify(heap)
    seq = len(order) + 1
    while heap:
        _, _, c = heapq.heappop(heap)
        com = commits[c]
        yield c, com
        for p in (com.parents[:1] if first_parent else com.parents):
            if p in children:
                children[p] -= 1
                if children[p] == 0:
                    heapq.heappush(heap, (-commits[p].timestamp, seq, p))
                    seq += 1


def log(repo, revs: Iterable[str] = (), all_refs: bool = False, first_parent: bool = False,
        paths: list | None = None, max_count: int | None = None, topo: bool = False,
        exclude: Iterable[str] = ()) -> Iterator[tuple]:
    """``(cid, Commit)`` for ``tvcfs log``: from ``revs`` (default HEAD) or every ref
    (``all_refs``), leaving out the commits reachable from ``exclude`` (revisions:
    git's ``log A..B`` is ``revs=[B], exclude=[A]``), only commits that change
    ``paths`` if given, at most ``max_count``. See :func:`walk_log`. Raises
    :class:`~tvcfs.errors.RevisionNotFound` for a bad revision."""
    hidden = set(repo.ancestors([repo.resolve(r) for r in exclude], missing_ok=True))
    n = 0
    for cid, com in walk_log(repo, log_starts(repo, revs, all_refs), first_parent, topo):
        if max_count is not None and n >= max_count:
            return
        if cid in hidden or paths and not touches(repo, com, paths):
            continue
        n += 1
        yield cid, com


@dataclass
class GraphRow:
    """One commit of a text graph: ``prefix`` drawn before the commit line (``"| * "``)
    and ``after``: connector lines drawn after it (``"|\\"`` at a merge, ``"|/"``
    where two lines of history meet)."""

    cid: bytes
    commit: Commit
    prefix: str
    after: list


def graph(commits: Iterable[tuple], first_parent: bool = False) -> Iterator[GraphRow]:
    """Lay out ``(cid, Commit)`` in topological order (:func:`walk_log` with
    ``topo``) as git's ``--graph`` does, one column per line of history."""
    cols: list = []
    for cid, com in commits:
        if cid not in cols:
            cols.append(cid)
        i = cols.index(cid)
        prefix = " ".join("*" if j == i else "|" for j in range(len(cols))) + " "
        after = []
        parents = list(com.parents[:1] if first_parent else com.parents)
        new = list(cols)
        new[i] = parents[0] if parents else None
        extra = [p for p in parents[1:] if p not in new]
        for k, p in enumerate(extra):
            new.insert(i + 1 + k, p)
        if extra:
            tail = len(cols) - i - 1
            after.append(" ".join(["|"] * (i + 1)) + "\\" + " \\" * tail)
        # lines of history that reach the same commit meet: later columns fold left
        j = 0
        while j < len(new):
            if new[j] is not None and new[j] in new[:j]:
                after.append(" ".join(["|"] * j) + "/")
                del new[j]
                continue
            j += 1
        cols = [c for c in new if c is not None]
        yield GraphRow(cid, com, prefix, after)


def decorations(repo, head: bool = False) -> dict:
    """``{commit CID: ["main", "tag: v1", "origin/main", …]}``: the branches, tags and
    remote-tracking refs pointing at each commit, for the log. With ``head``, as git
    prints them: HEAD's branch as ``HEAD -> main``, first (a detached HEAD: ``HEAD``)."""
    names: dict = {}
    for ref, cid in sorted(repo.refs().items()):
        if ref.startswith(HEADS):
            names.setdefault(cid, []).append(ref[len(HEADS):])
        elif ref.startswith(TAGS):
            names.setdefault(cid, []).append(f"tag: {ref[len(TAGS):]}")
        elif ref.startswith(REMOTES):
            names.setdefault(cid, []).append(ref[len(REMOTES):])
    h = repo.head() if head else None
    if h is not None:
        branch = repo.head_branch()
        at = names.setdefault(h, [])
        if branch in at:
            at.remove(branch)
        at.insert(0, f"HEAD -> {branch}" if branch else "HEAD")
    return names


def reflog_newest_first(repo, ref: str | None = None) -> list:
    """Reflog entries of ``ref`` (a short branch name, a full ref name or ``HEAD``;
    default every ref), newest first as git prints them: by time, and for one ref by
    its sequence number. Raises :class:`~tvcfs.errors.RevisionNotFound` naming a ref
    that has no reflog."""
    from .errors import RevisionNotFound

    entries = repo.reflog(ref)
    if ref and not entries:
        raise RevisionNotFound(f"no reflog for {ref!r}: `tvcfs branch` and `tvcfs tag` list the refs")
    # stable: same-second entries keep their recorded order, then the whole list flips
    entries = sorted(entries, key=lambda e: e["time"])
    return entries[::-1]
