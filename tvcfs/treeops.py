"""Path-level operations on directory DAGs: what changed between two trees, and
applying those changes onto a third (the rebase a mount does when its branch moved),
and :func:`land_on_branch`: that rebase, or a ``conflicts/…`` branch, for every writer
that works from a known base commit (a mount's workspace, a ``tvcfs checkout``
directory, ``tvcfs commit --base``).

A change is ``path -> (cid, tsize) | None``: the entry that now stands at ``path``
(a file, symlink or whole directory) or ``None`` for a removal. Sub-trees with equal
CIDs are never read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from .dag import KIND_DIR, dir_links, stat_node
from .encoding.cid import cid_str
from .encoding.hamt import build_directory_dag
from .refs import HEADS


def changed_paths(get: Callable, old: bytes | None, new: bytes | None) -> dict:
    """``{path: (cid, tsize) | None}`` turning directory ``old`` into ``new``.

    Directories present on both sides are compared recursively; anything else that
    differs is one change at its path."""
    out: dict = {}

    def links(c):
        return {l.name: l for l in dir_links(get, c)} if c else {}

    def rec(a, b, prefix):
        la, lb = links(a), links(b)
        for name in set(la) | set(lb):
            p = prefix + name
            xa, xb = la.get(name), lb.get(name)
            if xa is not None and xb is not None and xa.hash == xb.hash:
                continue
            if xa is not None and xb is not None:
                if stat_node(get, xa.hash).kind == KIND_DIR and stat_node(get, xb.hash).kind == KIND_DIR:
                    rec(xa.hash, xb.hash, p + "/")
                    continue
            out[p] = (xb.hash, xb.tsize) if xb is not None else None

    if old != new:
        rec(old, new, "")
    return out


def collisions(ours: dict, theirs: dict) -> list:
    """Paths where two change sets touch the same entry, or one touches an ancestor
    of the other, with different results. Identical changes do not collide."""
    out = []
    for p, v in ours.items():
        for q, w in theirs.items():
            if p == q:
                if (v and v[0]) != (w and w[0]):
                    out.append(p)
            elif p.startswith(q + "/") or q.startswith(p + "/"):
                out.append(p)
    return sorted(set(out))


def apply_changes(get: Callable, put: Callable, tree: bytes | None, changes: dict) -> tuple[bytes, int]:
    """Apply ``changes`` onto directory ``tree`` and store the new directory nodes
    with ``put(cid, block)``. Returns ``(new_tree_cid, tsize)``. Missing intermediate
    directories are created; removing a missing path is a no-op."""
    # group by first component
    def rec(cur: bytes | None, ch: dict) -> tuple[bytes, int] | None:
        entries = {l.name: (l.hash, l.tsize) for l in dir_links(get, cur)} if cur else {}
        sub: dict[str, dict] = {}
        for p, v in ch.items():
            head, sep, rest = p.partition("/")
            if sep:
                sub.setdefault(head, {})[rest] = v
            elif v is None:
                entries.pop(head, None)
            else:
                entries[head] = v
        for head, chs in sub.items():
            base = entries.get(head)
            base_cid = base[0] if base and stat_node(get, base[0]).kind == KIND_DIR else None
            entries[head] = rec(base_cid, chs)
        cid, tsize, blocks = build_directory_dag((n, c, t) for n, (c, t) in entries.items())
        for c, b in blocks:
            put(c, b)
        return cid, tsize

    return rec(tree, changes)


# --- landing a tree on a branch that may have moved ----------------------------
# One rule for every writer that works from a known base commit (a mount's
# workspace, a directory made by ``tvcfs checkout``, ``tvcfs commit --base``): see
# docs/writes.md, "Concurrency".

@dataclass(frozen=True)
class Landing:
    """Where a tree made from a base lands on its branch (:func:`land_on_branch`).

    ``tree``: the tree to commit (ours replayed onto the head when the branch
    moved); ``parent``: its parent commit (``None``: a root commit);
    ``parent_tree``: the parent's tree (equal to ``tree``: nothing to commit);
    ``branch``: the short branch name to update — the branch, or a fresh
    ``conflicts/BRANCH-<UTC yyyymmdd-hhmmss>[-K]`` when paths collide; ``head``: the
    branch head found (binary CID or ``None``); ``theirs``: the changes of the branch
    since the base that were kept around ours (``{path: (cid, tsize) | None}``);
    ``collisions``: sorted colliding paths (non-empty exactly for a conflict)."""

    tree: bytes
    parent: bytes | None
    parent_tree: bytes | None
    branch: str
    head: bytes | None
    theirs: dict = field(default_factory=dict)
    collisions: list = field(default_factory=list)

    @property
    def conflict(self) -> bool:
        """Whether paths collided (``branch`` is then a ``conflicts/...`` branch)."""
        return bool(self.collisions)


def txn_getter(txn, fallback: Callable) -> Callable:
    """``get(cid) -> bytes`` reading write transaction ``txn`` first (blocks it stored
    and has not committed yet), then ``fallback`` (e.g. ``Repo.get``, which may fetch
    from a remote). Raises what ``fallback`` raises for a missing block."""
    def get(c):
        b = txn.get_block(c)
        return fallback(c) if b is None else bytes(b)
    return get


def land_on_branch(txn, get: Callable, read_commit: Callable, branch: str, base: bytes | None,
                   base_tree: bytes | None, tree: bytes) -> Landing:
    """Decide, inside write transaction ``txn``, how ``tree`` — ``base_tree`` plus our
    changes, worked on from commit ``base`` — lands on ``branch``:

    * the head's tree is ``base_tree`` (nobody else changed anything), or the branch
      does not exist: ``tree`` as is, on the head (else ``base``);
    * otherwise our changes (``base_tree`` → ``tree``) are replayed onto the head's
      tree when no path collides with theirs (``base_tree`` → head tree;
      :func:`collisions`), with the head as parent (new directory nodes are stored in
      ``txn``);
    * else ``tree`` as is, parent ``base``, on a new ``conflicts/…`` branch: the
      branch keeps their commit, nothing is overwritten.

    ``get`` reads blocks (see :func:`txn_getter`); ``read_commit(cid)`` decodes a
    commit. Changes nothing but directory blocks; the caller writes the commit and
    the ref (and :func:`record_conflict`) in the same transaction."""
    cur = txn.get_ref(HEADS + branch)
    if cur is None:
        return Landing(tree, base, base_tree, branch, cur)
    head_tree = read_commit(cur).tree
    if head_tree == base_tree:
        return Landing(tree, cur, head_tree, branch, cur)
    ours = changed_paths(get, base_tree, tree)
    theirs = changed_paths(get, base_tree, head_tree)
    clash = collisions(ours, theirs)
    if not clash:
        new, _ = apply_changes(get, txn.put_block, head_tree, ours)
        return Landing(new, cur, head_tree, branch, cur, theirs)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = f"conflicts/{branch}-{stamp}"
    k = 1
    while txn.get_ref(HEADS + target) is not None:
        k += 1
        target = f"conflicts/{branch}-{stamp}-{k}"
    parent_tree = read_commit(base).tree if base else None
    return Landing(tree, base, parent_tree, target, cur, {}, clash)


def conflict_message(branch: str, landing: Landing, who: str, message: str) -> str:
    """The message of a commit saved on a conflicts branch: ``conflict: BRANCH moved
    to CID while WHO changed PATHS`` then a blank line and ``message``."""
    return (f"conflict: {branch} moved to {cid_str(landing.head)} while {who} changed "
            f"{', '.join(landing.collisions)}\n\n" + message)


def commit_landing(txn, branch: str, landing: Landing, message: str, author_name: str,
                   author_email: str, timestamp: int, metadata: dict, who: str, source: str,
                   reflog_label: str = "commit", allow_empty: bool = False) -> tuple:
    """The one way a commit worked on from a base is recorded — by a mount's
    workspace and by ``Repo`` (worktrees, ``--base``, the staging index) alike: in
    write transaction ``txn``, the commit of ``landing`` (from :func:`land_on_branch`)
    is stored, its branch (or its ``conflicts/…`` branch, with the message prefixed by
    :func:`conflict_message` naming ``who``) is moved, and a conflict is recorded for
    ``tvcfs status`` under ``source``. Returns ``(cid, message)``: the commit's binary
    CID and its message, or ``(None, message)`` when nothing changed (the tree equals
    the parent's and not ``allow_empty``). ``timestamp``: Unix seconds."""
    from .encoding.commit import Commit

    if not landing.conflict and not allow_empty and landing.tree == landing.parent_tree:
        return None, message
    if landing.conflict:
        message = conflict_message(branch, landing, who, message)
    com = Commit(tree=landing.tree, parents=(landing.parent,) if landing.parent else (),
                 author_name=author_name, author_email=author_email, message=message,
                 timestamp=int(timestamp), metadata=metadata or {})
    cid, block = com.cid_and_block()
    txn.put_block(cid, block)
    ref = HEADS + landing.branch
    label = f"{reflog_label} (conflict)" if landing.conflict else reflog_label
    txn.set_ref(ref, cid, txn.get_ref(ref), message=f"{label}: {message.splitlines()[0] if message else ''}")
    if landing.conflict:
        record_conflict(txn, branch, landing, cid, source)
    return cid, message


def record_conflict(txn, branch: str, landing: Landing, commit: bytes, source: str) -> None:
    """Append the conflict to the repository's ``conflicts`` record (meta, listed by
    ``tvcfs status``) inside write transaction ``txn``. ``source``: who wrote it
    (``mount``, or the directory committed)."""
    from .config import RepoConfig

    record = {"branch": branch, "saved_as": landing.branch, "commit": cid_str(commit),
              "head": cid_str(landing.head), "paths": landing.collisions,
              "time": int(time.time()), "source": source}
    RepoConfig(txn.store).update("conflicts", lambda conflicts: conflicts.append(record), txn)
