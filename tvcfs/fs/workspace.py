"""The writable side of a branch directory: a copy-on-write overlay over the
branch's head tree, staged on disk, committed as a whole (DESIGN.md §3, writes).

A :class:`Workspace` is a tree of :class:`WEntry` objects. Untouched files and
directories are references to DAG nodes (CID + Tsize); a directory is loaded from
the DAG when first listed; a file becomes *staged* on its first write: its content
is copied (or, when truncated to 0, not copied) into ``REPO/.tvcfs/staging/<id>/data/N``
and every later write goes there, so no file is ever held in RAM. The tree structure
is written to ``state.json`` (atomically, on every namespace change) so a killed mount
loses nothing: ``tvcfs status`` lists the staged changes and ``tvcfs recover`` commits
them.

Committing (:meth:`Workspace.commit`) imports staged files through the normal
chunker (tensor-aligned leaves, so unchanged tensors are deduplicated), rebuilds the
dirty directories, and records the commit and the branch update in one LMDB
transaction. If the branch moved since the workspace's base, the changes are replayed
onto the new head when no path collides (:mod:`tvcfs.treeops`); otherwise the whole
staged tree is committed on ``conflicts/<branch>-<UTC time>`` and reported.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid

from ..dag import KIND_DIR, KIND_FILE, KIND_SYMLINK, dir_links, stat_node
from ..encoding.cid import cid_from_str, cid_str
from ..errors import RefConflict, TvcfsError
from ..importer import Importer
from ..refs import HEADS
from ..treeops import apply_changes, changed_paths, collisions

log = logging.getLogger("tvcfs.fs")

STATE = "state.json"


class WEntry:
    """One entry of a workspace. ``kind``: ``file``/``dir``/``symlink``. A clean entry
    has ``cid`` (and ``tsize``); a staged file has ``staged`` (path of its data file);
    a loaded directory has ``children`` ({name: WEntry}); ``dirty`` marks entries whose
    content differs from ``cid``. ``size`` is in bytes; ``mode`` permission bits;
    ``mtime`` Unix seconds (float)."""

    __slots__ = ("kind", "cid", "tsize", "size", "mode", "target", "children", "staged",
                 "dirty", "mtime", "ino", "parent", "name", "writers")

    def __init__(self, kind, cid=None, tsize=0, size=0, mode=0o644, target="", mtime=0.0):
        self.kind, self.cid, self.tsize, self.size, self.mode = kind, cid, tsize, size, mode
        self.target, self.mtime = target, mtime
        self.children = None
        self.staged = None
        self.dirty = False
        self.ino = 0
        self.parent = None
        self.name = ""
        self.writers = 0

    def path(self) -> str:
        parts = []
        e = self
        while e.parent is not None:
            parts.append(e.name)
            e = e.parent
        return "/".join(reversed(parts))


class Workspace:
    """The staged state of one branch in one mount.

    ``repo``: an open :class:`tvcfs.Repo`; ``branch``: short name; ``base``: the commit
    the workspace started from (binary CID or ``None`` for an empty branch).
    """

    def __init__(self, repo, branch: str, base: bytes | None, dirpath: str | None = None):
        self.repo = repo
        self.branch = branch
        self.base = base
        self.base_time = repo.read_commit(base).timestamp if base else int(time.time())
        tree = repo.read_commit(base).tree if base else None
        self.root = WEntry(KIND_DIR, cid=tree, mode=0o755, mtime=self.base_time)
        if tree is None:
            self.root.children = {}
            self.root.dirty = True
        self.dir = dirpath or os.path.join(repo.control, "staging", uuid.uuid4().hex)
        self.n = 0
        self.writers = 0
        self.last_activity = 0.0
        self.pending = False      # there are changes not committed yet
        self.committing = False
        self.created_at = time.time()

    # --- loading ---------------------------------------------------------------
    def children(self, d: WEntry) -> dict:
        """``{name: WEntry}`` of directory ``d``, loading it from the DAG once."""
        if d.children is None:
            ch = {}
            for link in dir_links(self.repo.get, d.cid):
                e = stat_node(self.repo.get, link.hash, link.name, link.tsize)
                w = WEntry(e.kind, cid=e.cid, tsize=link.tsize, size=e.size, mode=e.mode,
                           target=e.target, mtime=self.base_time)
                w.parent, w.name = d, link.name
                ch[link.name] = w
            d.children = ch
        return d.children

    def lookup_path(self, path: str) -> WEntry | None:
        cur = self.root
        for part in [p for p in path.split("/") if p]:
            if cur.kind != KIND_DIR:
                return None
            cur = self.children(cur).get(part)
            if cur is None:
                return None
        return cur

    # --- mutation helpers ------------------------------------------------------
    def touch(self, e: WEntry | None = None) -> None:
        """Mark ``e`` and its ancestors dirty and the workspace pending."""
        now = time.time()
        while e is not None:
            e.dirty = True
            e.mtime = now
            e = e.parent
        self.root.dirty = True
        self.pending = True
        self.last_activity = time.monotonic()

    def _data_path(self) -> str:
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        self.n += 1
        return os.path.join(self.dir, "data", f"{self.n}-{uuid.uuid4().hex[:8]}")

    def stage(self, e: WEntry, truncate_to: int | None = None) -> str:
        """Make file ``e`` staged (copy-on-write); returns the data path. With
        ``truncate_to`` = 0 nothing is copied."""
        if e.staged:
            return e.staged
        path = self._data_path()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if e.cid is not None and truncate_to != 0:
                from ..dag import FileIndex

                idx = FileIndex.build(self.repo.get, e.cid)
                limit = idx.size if truncate_to is None else min(truncate_to, idx.size)
                pos = 0
                for i in range(len(idx.leaves)):
                    if pos >= limit:
                        break
                    data = idx.leaf_data(self.repo.get, i)[: min(idx.sizes[i], limit - pos)]
                    os.pwrite(fd, data, pos)
                    pos += len(data)
                if truncate_to is not None:
                    os.ftruncate(fd, truncate_to)
            elif truncate_to:
                os.ftruncate(fd, truncate_to)
        finally:
            os.close(fd)
        e.staged = path
        e.cid = None
        e.size = os.path.getsize(path)
        self.touch(e)
        self.save()
        return path

    def new_entry(self, parent: WEntry, name: str, kind: str, mode: int = 0o644, target: str = "") -> WEntry:
        """Create ``name`` in ``parent`` (replacing nothing: callers check)."""
        w = WEntry(kind, mode=mode, target=target, mtime=time.time())
        w.parent, w.name = parent, name
        if kind == KIND_DIR:
            w.children = {}
        elif kind == KIND_FILE:
            path = self._data_path()
            open(path, "wb").close()
            w.staged = path
        elif kind == KIND_SYMLINK:
            w.size = len(target.encode())
        self.children(parent)[name] = w
        self.touch(w)
        self.save()
        return w

    def remove(self, parent: WEntry, name: str) -> WEntry:
        w = self.children(parent).pop(name)
        w.parent = None
        self.touch(parent)
        self.save()
        return w

    def move(self, src_parent: WEntry, src: str, dst_parent: WEntry, dst: str) -> None:
        w = self.children(src_parent).pop(src)
        self.children(dst_parent).pop(dst, None)
        w.parent, w.name = dst_parent, dst
        self.children(dst_parent)[dst] = w
        self.touch(src_parent)
        self.touch(w)
        self.save()

    # --- persistence -----------------------------------------------------------
    def _ser(self, w: WEntry) -> dict:
        d = {"k": w.kind, "mode": w.mode}
        if w.kind == KIND_SYMLINK:
            d["target"] = w.target
            if w.cid is not None and not w.dirty:
                d["cid"], d["tsize"] = cid_str(w.cid), w.tsize
        elif w.kind == KIND_FILE:
            if w.staged:
                d["staged"] = os.path.relpath(w.staged, self.dir)
            else:
                d["cid"], d["tsize"], d["size"] = cid_str(w.cid), w.tsize, w.size
        else:
            if w.dirty or w.cid is None:
                d["children"] = {n: self._ser(c) for n, c in (w.children or {}).items()}
            else:
                d["cid"], d["tsize"] = cid_str(w.cid), w.tsize
        return d

    def save(self) -> None:
        """Write ``state.json`` atomically (temp file + rename)."""
        os.makedirs(self.dir, exist_ok=True)
        state = {"version": 1, "branch": self.branch, "base": cid_str(self.base) if self.base else None,
                 "pending": self.pending, "time": int(time.time()), "pid": os.getpid(),
                 "root": self._ser(self.root)}
        tmp = os.path.join(self.dir, STATE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, os.path.join(self.dir, STATE))

    @classmethod
    def load(cls, repo, dirpath: str) -> "Workspace":
        """Rebuild a workspace from its ``state.json`` (after a crash)."""
        with open(os.path.join(dirpath, STATE)) as f:
            st = json.load(f)
        base = cid_from_str(st["base"]) if st.get("base") else None
        ws = cls(repo, st["branch"], base, dirpath)

        def de(d, parent, name):
            w = WEntry(d["k"], mode=d.get("mode", 0o644), target=d.get("target", ""), mtime=ws.base_time)
            w.parent, w.name = parent, name
            if "cid" in d:
                w.cid, w.tsize, w.size = cid_from_str(d["cid"]), d.get("tsize", 0), d.get("size", 0)
            if d["k"] == KIND_FILE and "staged" in d:
                w.staged = os.path.join(dirpath, d["staged"])
                w.size = os.path.getsize(w.staged) if os.path.exists(w.staged) else 0
                w.dirty = True
            if d["k"] == KIND_SYMLINK:
                w.size = len(w.target.encode())
                w.dirty = "cid" not in d
            if "children" in d:
                w.children = {n: de(c, w, n) for n, c in d["children"].items()}
                w.dirty = True
            return w

        ws.root = de(st["root"], None, "")
        ws.root.parent = None
        ws.pending = bool(st.get("pending"))
        return ws

    def discard(self) -> None:
        """Delete the staging directory."""
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- committing ------------------------------------------------------------
    def build(self, imp: Importer, w: WEntry | None = None) -> tuple[bytes, int]:
        """Store the workspace tree (staged files imported, dirty directories rebuilt);
        returns ``(cid, tsize)`` of ``w`` (default: the root)."""
        w = w or self.root
        if w.kind == KIND_FILE:
            if w.staged:
                mode = 0o755 if w.mode & 0o111 else None
                with open(w.staged, "rb") as f:
                    cid, tsize, _ = imp.add_fd(f.fileno(), mode, name=w.path())
                return cid, tsize
            return w.cid, w.tsize
        if w.kind == KIND_SYMLINK:
            if w.cid is not None and not w.dirty:
                return w.cid, w.tsize
            return imp.add_symlink(w.target)
        if not w.dirty and w.cid is not None:
            return w.cid, w.tsize
        entries = []
        for name, c in self.children(w).items():
            cid, tsize = self.build(imp, c)
            entries.append((name, cid, tsize))
        return imp.add_directory(entries)

    def commit(self, message: str | None = None, author=None) -> dict:
        """Commit the staged changes on the branch (see the module docstring):
        :meth:`commit_txn` then :meth:`finish`.

        Returns ``{"commit": cid|None, "branch": name, "conflict": bool,
        "new_bytes": int, "message": str}``; ``commit`` is ``None`` when nothing
        changed. Raises :class:`TvcfsError` for storage failures (staged data stays).
        """
        res = self.commit_txn(message, author)
        self.finish(res)
        return res

    def commit_txn(self, message: str | None = None, author=None) -> dict:
        """The storage half of a commit: one LMDB write transaction holding the
        imported files, the directory nodes, the commit and the ref update. Reads the
        workspace tree but does not change it (safe in a worker thread while writes
        to the workspace wait)."""
        from ..encoding.commit import Commit
        from ..repo import Author

        repo = self.repo
        author = author or Author.default()
        ref = HEADS + self.branch
        result = {"commit": None, "branch": self.branch, "conflict": False, "new_bytes": 0,
                  "message": "", "tree": None, "head": None}
        with repo.store.write() as w:
            def get(c):
                b = w.get_block(c)
                if b is None:
                    return repo.get(c)
                return bytes(b)

            imp = Importer(w)
            tree, _ = self.build(imp)
            cur = w.get_ref(ref)
            result["head"] = cur
            base_tree = repo.read_commit(self.base).tree if self.base else None
            parent = self.base
            target_branch = self.branch
            if cur != self.base:
                theirs_tree = repo.read_commit(cur).tree if cur else None
                ours = changed_paths(get, base_tree, tree)
                theirs = changed_paths(get, base_tree, theirs_tree) if cur else {}
                clash = collisions(ours, theirs) if cur else []
                if cur is not None and not clash:
                    tree, _ = apply_changes(get, w.put_block, theirs_tree, ours)
                    parent, base_tree = cur, theirs_tree
                    result["theirs"] = theirs
                elif cur is not None:
                    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
                    target_branch = f"conflicts/{self.branch}-{stamp}"
                    result["conflict"] = True
                    result["collisions"] = clash
            result["tree"] = tree
            result["parent"] = parent
            if tree == base_tree and not result["conflict"]:
                return result
            msg = message or self.describe(get, base_tree, tree)
            if result["conflict"]:
                msg = (f"conflict: {self.branch} moved to {cid_str(cur)} while this mount changed "
                       f"{', '.join(result['collisions'])}\n\n" + msg)
            com = Commit(tree=tree, parents=(parent,) if parent else (), author_name=author.name,
                         author_email=author.email, message=msg, timestamp=int(time.time()),
                         metadata={"source": "mount"})
            cid, block = com.cid_and_block()
            w.put_block(cid, block)
            tref = HEADS + target_branch
            w.set_ref(tref, cid, w.get_ref(tref), message=f"commit (mount): {msg.splitlines()[0]}")
            if result["conflict"]:
                conflicts = w.get_meta("conflicts", [])
                conflicts.append({"branch": self.branch, "saved_as": target_branch, "commit": cid_str(cid),
                                  "head": cid_str(cur), "paths": result["collisions"], "time": int(time.time())})
                w.set_meta("conflicts", conflicts)
            result.update(commit=cid, branch=target_branch, new_bytes=w.new_bytes, message=msg)
        if result["conflict"]:
            log.warning("branch %s moved; staged changes saved as %s (%s)", self.branch,
                        target_branch, cid_str(result["commit"]))
        return result

    def finish(self, result: dict) -> None:
        """The in-memory half of a commit (run where the workspace is used): the
        committed state becomes the new base; staged files without open writers are
        released; entries keep their identity (inodes stay valid). After a conflict
        the workspace is reset to the branch's head (``result["reset"] = True``)."""
        if result["conflict"]:
            head = result["head"]
            self.base = head
            self.base_time = self.repo.read_commit(head).timestamp
            self.root = WEntry(KIND_DIR, cid=self.repo.read_commit(head).tree, mode=0o755, mtime=self.base_time)
            shutil.rmtree(os.path.join(self.dir, "data"), ignore_errors=True)
            self.pending = False
            self._remove_state()
            result["reset"] = True
            return
        commit = result["commit"] or result.get("parent")
        if commit is None:
            return
        if result.get("theirs"):
            result["touched"] = self.apply_theirs(result["theirs"])
        self.base = commit
        self.base_time = self.repo.read_commit(commit).timestamp
        self._mark_clean(self.root, result["tree"])
        self.pending = self.root.dirty
        if self.pending:
            self.save()
        else:
            self._remove_state()

    def _mark_clean(self, w: WEntry, cid: bytes, tsize: int | None = None) -> None:
        """After a commit: entry ``w`` now stands for ``cid``; release staged data of
        files without open writers; keep identities (and so inodes)."""
        w.cid = cid
        if tsize is not None:
            w.tsize = tsize
        if w.kind == KIND_DIR and w.children is not None:
            links = {l.name: l for l in dir_links(self.repo.get, cid)}
            dirty = False
            for name, c in w.children.items():
                link = links.get(name)
                if link is None:
                    dirty = True
                    continue
                if c.kind == KIND_FILE and c.staged:
                    if c.writers:
                        c.cid, c.tsize = None, link.tsize
                        dirty = True
                        continue
                    try:
                        os.unlink(c.staged)
                    except OSError:
                        pass
                    c.staged = None
                    c.size = stat_node(self.repo.get, link.hash).size
                self._mark_clean(c, link.hash, link.tsize)
                dirty = dirty or c.dirty
            w.dirty = dirty
        else:
            w.dirty = False

    def apply_theirs(self, changes: dict) -> list:
        """Bring changes made on the branch by someone else (``{path: (cid, tsize) |
        None}``, none colliding with ours) into the loaded tree. Returns the
        ``(parent WEntry, name)`` pairs whose kernel entries must be invalidated."""
        touched = []
        for path, v in changes.items():
            parts = path.split("/")
            d = self.root
            for p in parts[:-1]:
                ch = self.children(d)
                if p not in ch:
                    nd = WEntry(KIND_DIR, mode=0o755, mtime=time.time())
                    nd.children, nd.parent, nd.name = {}, d, p
                    ch[p] = nd
                d = ch[p]
            if d.children is None:
                continue  # not loaded: it will be read from the new tree
            name = parts[-1]
            old = d.children.pop(name, None)
            if old is not None:
                old.parent = None
            if v is not None:
                e = stat_node(self.repo.get, v[0], name, v[1])
                nw = WEntry(e.kind, cid=e.cid, tsize=v[1], size=e.size, mode=e.mode, target=e.target,
                            mtime=time.time())
                nw.parent, nw.name = d, name
                d.children[name] = nw
            touched.append((d, name))
        return touched

    def _remove_state(self) -> None:
        try:
            os.unlink(os.path.join(self.dir, STATE))
        except OSError:
            pass

    def describe(self, get, old_tree: bytes | None, new_tree: bytes) -> str:
        """A commit message listing changed files and, for safetensors, tensors."""
        try:
            from ..diff import diff_trees

            d = diff_trees(get, old_tree, new_tree, numeric=False)
        except Exception as e:  # a message must never fail a commit
            log.debug("describe: %s", e)
            return f"Update {self.branch} from mount"
        files = d.files
        head = f"Update {len(files)} file{'s' if len(files) != 1 else ''} on {self.branch}"
        lines = [head, ""]
        for fc in files:
            lines.append(f"{fc.status}: {fc.path}")
            for t in getattr(fc, "tensors", None) or []:
                lines.append(f"    tensor {t.status}: {t.name}")
        return "\n".join(lines)


def _process_alive(pid) -> bool:
    """True if ``pid`` runs a process that is not a zombie."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, ValueError, IndexError, TypeError):
        return False


def pending_workspaces(repo) -> list:
    """Staging directories of ``repo`` with uncommitted changes: list of dicts
    ``{dir, branch, base, pid, time, alive}`` read from their ``state.json``."""
    out = []
    root = os.path.join(repo.control, "staging")
    if not os.path.isdir(root):
        return out
    for name in sorted(os.listdir(root)):
        p = os.path.join(root, name, STATE)
        try:
            with open(p) as f:
                st = json.load(f)
        except (OSError, ValueError):
            continue
        if not st.get("pending"):
            continue
        alive = _process_alive(st.get("pid"))
        out.append({"dir": os.path.join(root, name), "branch": st["branch"], "base": st.get("base"),
                    "pid": st.get("pid"), "time": st.get("time"), "alive": alive})
    return out


def recover(repo, dirpath: str, message: str | None = None) -> dict:
    """Commit the staged changes left in ``dirpath`` by a mount that died; the
    staging directory is removed afterwards. Returns :meth:`Workspace.commit`'s
    result. Raises :class:`TvcfsError` if the state cannot be read."""
    try:
        ws = Workspace.load(repo, dirpath)
    except (OSError, ValueError, KeyError) as e:
        raise TvcfsError(f"cannot read staged state in {dirpath}: {e}") from None
    res = ws.commit(message or None)
    if not ws.pending:
        ws.discard()
    return res
