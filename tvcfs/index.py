"""The staging index: ``tvcfs add`` / ``rm`` / ``restore --staged`` / ``commit``
without a directory (after git's index and Oxen's ``oxen add`` / ``oxen commit``).

The index lives in the repository, not beside it: it is a whole directory tree —
the branch's tree with the staged changes applied — whose blocks are stored when a
path is added (``tvcfs add`` reads and chunks each file once, like ``tvcfs
commit``), plus the branch and commit it was started from. It is the ``meta`` key
``index``: ``{"branch": NAME, "base": commit CID | null, "tree": directory CID}``
(CIDs as strings), and its tree is pinned (pin name :data:`PIN_NAME`) so that
garbage collection keeps every staged block while it is staged. Every change of the
index is one LMDB write transaction (blocks, tree, pin and record together).

Committing the index (:func:`commit_index`) records its tree as a commit made from
``base``: if the branch moved since, the staged changes are replayed onto its head
(or saved on a ``conflicts/…`` branch when they collide; docs/writes.md), exactly as
``tvcfs commit DIR`` of a worktree. See docs/repository.md, "The staging index".
"""

from __future__ import annotations

import os
import posixpath
import stat as statmod
from dataclasses import dataclass

from .dag import resolve_path
from .encoding.cid import cid_from_str, cid_str
from .encoding.unixfs import build_directory, check_entry_name
from .errors import PathNotFound, TvcfsError
from .importer import REPO_DIR, Importer, tree_size
from .names import printable_name
from .refs import HEADS
from .treeops import apply_changes, changed_paths, txn_getter

INDEX_META = "index"
PIN_NAME = "tvcfs index: staged changes"


class StagingError(TvcfsError):
    """A staging-index operation cannot be done (a path outside the tree, nothing
    staged, a detached HEAD); the message says what to do."""


@dataclass(frozen=True)
class Index:
    """The staged state: ``branch`` (short name) it will be committed onto, ``base``
    (binary commit CID it was started from, ``None`` on an unborn branch) and
    ``tree`` (binary CID of the whole staged directory tree)."""

    branch: str
    base: bytes | None
    tree: bytes

    def record(self) -> dict:
        """The index as JSON-ready data (CIDs as strings), as kept in the repository's
        metadata."""
        return {"branch": self.branch, "base": cid_str(self.base) if self.base else None,
                "tree": cid_str(self.tree)}


@dataclass(frozen=True)
class StagedChange:
    """One staged change against the index's base: ``status`` ("added", "modified",
    "deleted"), ``path`` in the tree, ``cid`` of the staged entry (``None`` when
    deleted)."""

    status: str
    path: str
    cid: bytes | None


def _empty_tree() -> tuple[bytes, int, bytes]:
    return build_directory([])


def load_index(repo) -> Index | None:
    """The repository's index, or ``None`` when nothing is staged."""
    r = repo.config.get(INDEX_META)
    if not r:
        return None
    return Index(r["branch"], cid_from_str(r["base"]) if r.get("base") else None, cid_from_str(r["tree"]))


def _start(repo, w, branch: str | None) -> Index:
    """A fresh index on ``branch`` (default HEAD's): its head's tree, unchanged."""
    branch = branch or repo.head_branch()
    if not branch:
        raise StagingError("HEAD is detached: check out a branch (or give -b) before staging")
    head = w.get_ref(HEADS + branch)
    if head is not None:
        tree = repo.read_commit(head).tree
    else:
        tree, _, block = _empty_tree()
        w.put_block(tree, block)
    return Index(branch, head, tree)


def _save(repo, w, old: Index | None, new: Index | None) -> None:
    """Record ``new`` (``None``: drop the index) and move the pin from the old tree
    (a pin the user made on the same tree is left alone)."""
    if old is not None and (new is None or old.tree != new.tree):
        if repo.pin_db.all().get(old.tree, {}).get("name") == PIN_NAME:
            w.unpin(old.tree)
    if new is None:
        repo.config.set(INDEX_META, None, w)
        return
    w.pin(new.tree, PIN_NAME)
    repo.config.set(INDEX_META, new.record(), w)


def tree_path(repo, path: str) -> str:
    """The path in the tree that ``path`` names: a file system path inside the
    repository's root is taken relative to the root; anything else is already a
    tree path (``a/b.bin``). Normalised (no ``.``, ``//``, leading ``/``). Raises
    :class:`StagingError` for a path that leaves the tree (``..``)."""
    full = os.path.abspath(path)
    root = repo.root
    if (full == root or full.startswith(root + os.sep)) and (os.path.lexists(path) or not os.path.isabs(path)):
        rel = os.path.relpath(full, root)
        p = "" if rel == "." else rel.replace(os.sep, "/")
    else:
        p = path
    p = posixpath.normpath("/" + p.replace(os.sep, "/")).lstrip("/")
    if p == "." or p == "/":
        p = ""
    if p.split("/")[0] == REPO_DIR:
        raise StagingError(f"{printable_name(path)}: the repository's own {REPO_DIR} directory cannot be staged")
    return p


def _dest_for(repo, src: str, dest: str | None, many: bool) -> str:
    if dest is not None:
        d = posixpath.normpath("/" + dest.replace(os.sep, "/")).lstrip("/")
        if d in (".", "/"):
            d = ""
        if many or dest.endswith("/"):
            name = os.path.basename(os.path.normpath(os.path.abspath(src)))
            d = f"{d}/{name}".lstrip("/")
        return d
    full = os.path.abspath(src)
    if full == repo.root or full.startswith(repo.root + os.sep):
        return tree_path(repo, full)
    return os.path.basename(os.path.normpath(full))


def _check_dest(dest: str, src: str) -> None:
    for part in dest.split("/") if dest else ():
        check_entry_name(part, src, "rename it or give another name with --as")
        if part == REPO_DIR:
            raise StagingError(f"{printable_name(dest)}: {REPO_DIR} cannot be a name in the tree; choose another with --as")


def add_paths(repo, paths: list, dest: str | None = None, branch: str | None = None,
              progress=None) -> list:
    """Stage files, directories or symlinks from the file system: each ``PATH`` is
    read, chunked and stored, and put at its place in the index's tree — its path
    relative to the repository's root when it lies inside it, else its base name;
    ``dest`` puts a single ``PATH`` there instead (several go into directory
    ``dest``). A directory replaces what the tree held at its place (so files
    deleted from it are staged as deleted). One write transaction for all of them.

    Returns ``[(tree path, CID)]``. ``progress``: a callback ``progress(bytes read,
    total bytes)``. Raises :class:`TvcfsError` naming a missing path,
    :class:`~tvcfs.errors.InvalidEntryName` for a name that cannot be stored;
    nothing is staged then."""
    if not paths:
        raise StagingError("nothing to add: name the files or directories to stage")
    many = len(paths) > 1
    for src in paths:
        if not os.path.lexists(src):
            raise StagingError(f"{printable_name(src)} does not exist: check the path (nothing was staged)")
    out = []
    with repo.store.write() as w:
        old = load_index(repo)
        idx = old or _start(repo, w, branch)
        imp = Importer(w, progress=progress)
        if progress is not None:
            imp._total = sum(tree_size(s) if os.path.isdir(s) and not os.path.islink(s)
                             else (os.lstat(s).st_size if os.path.isfile(s) else 0) for s in paths)
        changes = {}
        root_tree = None
        for src in paths:
            d = _dest_for(repo, src, dest, many)
            _check_dest(d, src)
            st = os.lstat(src)
            if statmod.S_ISLNK(st.st_mode):
                cid, tsize = imp.add_symlink(os.readlink(src))
            elif statmod.S_ISDIR(st.st_mode):
                cid, tsize = imp.add_tree(src)
            elif statmod.S_ISREG(st.st_mode):
                cid, tsize, _ = imp.add_path(src)
            else:
                raise StagingError(f"{printable_name(src)} is not a regular file, directory or symlink: "
                                  "it cannot be staged")
            if d == "":
                if not statmod.S_ISDIR(st.st_mode):
                    raise StagingError(f"{printable_name(src)}: only a directory can be the whole tree; "
                                      "give the file a name with --as")
                root_tree = cid
                changes = {}
            else:
                changes[d] = (cid, tsize)
            out.append((d, cid))
        tree = root_tree if root_tree is not None else idx.tree
        if changes:
            tree, _ = apply_changes(txn_getter(w, repo.get), w.put_block, tree, changes)
        new = Index(idx.branch, idx.base, tree)
        _save(repo, w, old, new)
    return out


def remove_paths(repo, paths: list) -> list:
    """Stage the removal of ``paths`` (tree paths, or file system paths inside the
    repository's root; files on disk are not touched). Returns the tree paths.
    Raises :class:`StagingError` naming a path the index's tree does not hold
    (nothing is staged then)."""
    if not paths:
        raise StagingError("nothing to remove: name the paths to unstage from the tree")
    with repo.store.write() as w:
        old = load_index(repo)
        idx = old or _start(repo, w, None)
        get = txn_getter(w, repo.get)
        targets = []
        for p in paths:
            tp = tree_path(repo, p)
            if tp == "":
                raise StagingError(f"{printable_name(p)} is the whole tree: name paths inside it")
            try:
                resolve_path(get, idx.tree, tp)
            except PathNotFound:
                raise StagingError(f"{printable_name(tp)} is not in the tree of branch {idx.branch} "
                                  "(nothing was removed); `tvcfs ls -r` lists it") from None
            targets.append(tp)
        tree, _ = apply_changes(get, w.put_block, idx.tree, {t: None for t in targets})
        _save(repo, w, old, Index(idx.branch, idx.base, tree))
    return targets


def restore_staged(repo, paths: list | None = None) -> list | None:
    """Unstage: with no ``paths`` drop the whole index (returns ``None``); else put
    each path back as the index's base commit has it (absent there: removed from the
    index). Returns the tree paths restored. Files on disk are not touched."""
    with repo.store.write() as w:
        old = load_index(repo)
        if old is None:
            return [] if paths else None
        if not paths:
            _save(repo, w, old, None)
            return None
        get = txn_getter(w, repo.get)
        base_tree = repo.read_commit(old.base).tree if old.base else None
        changes = {}
        for p in paths:
            tp = tree_path(repo, p)
            if tp == "":
                _save(repo, w, old, None)
                return None
            try:
                e = resolve_path(get, base_tree, tp) if base_tree else None
            except PathNotFound:
                e = None
            changes[tp] = (e.cid, e.tsize) if e is not None else None
        tree, _ = apply_changes(get, w.put_block, old.tree, changes)
        _save(repo, w, old, Index(old.branch, old.base, tree))
    return list(changes)


def staged_changes(repo, index: Index | None = None) -> list:
    """``[StagedChange]`` of the index against its base commit's tree, by path; a
    new or removed directory is one change at its path. ``[]`` when nothing is staged."""
    idx = index or load_index(repo)
    if idx is None:
        return []
    base_tree = repo.read_commit(idx.base).tree if idx.base else None
    ch = changed_paths(repo.get, base_tree, idx.tree)
    out = []
    for p in sorted(ch):
        v = ch[p]
        if v is None:
            out.append(StagedChange("deleted", p, None))
            continue
        try:
            existed = base_tree is not None and resolve_path(repo.get, base_tree, p) is not None
        except PathNotFound:
            existed = False
        out.append(StagedChange("modified" if existed else "added", p, v[0]))
    return out


def commit_index(repo, message: str = "", author=None, metadata: dict | None = None,
                 branch: str | None = None):
    """Commit the index's tree onto its branch (or ``branch``) as a commit made from
    the index's base (replayed onto a branch that moved; a collision saves it on a
    ``conflicts/…`` branch and raises :class:`~tvcfs.errors.CommitConflict`), then
    clear the index. Returns the :class:`~tvcfs.repo.CommitResult`. Raises
    :class:`StagingError` when nothing is staged."""
    idx = load_index(repo)
    if idx is None or not staged_changes(repo, idx):
        raise StagingError("nothing staged to commit: `tvcfs add PATH…` stages files "
                          "(or `tvcfs commit DIR` commits a whole directory)")
    kw = {"base": idx.base} if idx.base is not None else {"expected": None}
    res = repo.commit_tree(idx.tree, branch=branch or idx.branch, message=message, author=author,
                           allow_empty=False, metadata=metadata, **kw)
    with repo.store.write() as w:
        cur = repo.config.get(INDEX_META, w)
        if cur == idx.record():  # nobody staged anything meanwhile
            _save(repo, w, idx, None)
    return res
