"""The writable side of a branch directory: a copy-on-write overlay over the
branch's head tree, staged on disk, committed as a whole (docs/writes.md).

A :class:`Workspace` is a tree of :class:`WEntry` objects. Untouched files and
directories are references to DAG nodes (CID + Tsize); a directory is loaded from
the DAG when first listed; a file becomes *staged* on its first write: its content
is copied (or, when truncated to 0, not copied) into ``REPO/.tvcfs/staging/<id>/data/N``
and every later write goes there, so no file is ever held in RAM. The tree structure
is persisted on every namespace change — a snapshot ``state.json`` (written
atomically) plus a journal ``journal-<gen>.jsonl`` of the changes since (one appended
line each, so a change costs O(1) whatever the size of the tree) — so a killed mount
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

import errno
import json
import logging
import os
import shutil
import time
import uuid

from ..dag import KIND_DIR, KIND_FILE, KIND_SYMLINK, dir_links, stat_node
from ..encoding.cid import cid_from_str, cid_str
from ..encoding.unixfs import entry_name_error, printable_name
from ..errors import TvcfsError
from ..fileio import process_alive, unlink_quietly
from ..importer import Importer
from ..treeops import changed_paths, commit_landing, land_on_branch, txn_getter

log = logging.getLogger("tvcfs.fs")

STATE = "state.json"
COMMIT_ERROR = "commit_error.json"  # the last failed commit attempt: {"time", "error"}
JOURNAL = "journal-{}.jsonl"
JOURNAL_MAX = 1000  # namespace changes journaled before the next full snapshot


class WEntry:
    """One entry of a workspace. ``kind``: ``file``/``dir``/``symlink``. A clean entry
    has ``cid`` (and ``tsize``); a staged file has ``staged`` (path of its data file);
    a loaded directory has ``children`` ({name: WEntry}); ``dirty`` marks entries whose
    content differs from ``cid``. ``size`` is in bytes; ``mode`` permission bits;
    ``mtime`` Unix seconds (float)."""

    __slots__ = ("kind", "cid", "tsize", "size", "mode", "target", "children", "staged",
                 "dirty", "mtime", "ino", "parent", "name", "writers", "opens")

    def __init__(self, kind, cid=None, tsize=0, size=0, mode=0o644, target="", mtime=0.0):
        self.kind, self.cid, self.tsize, self.size, self.mode = kind, cid, tsize, size, mode
        self.target, self.mtime = target, mtime
        self.children = None
        self.staged = None
        self.dirty = False
        self.ino = 0
        self.parent = None
        self.name = ""
        self.writers = 0   # open write handles
        self.opens = 0     # open handles of any kind (staged data lives while > 0)

    def path(self) -> str:
        """The entry's path from the workspace root (``"a/b/c"``; ``""`` for the root)."""
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
        self.staged_files = 0
        self.writers = 0
        self.last_activity = 0.0
        self.pending = False      # there are changes not committed yet
        self.committing = False
        self.deleted = False      # the branch was deleted: the tree takes no more writes
        self.created_at = time.time()
        self._gen = 0             # generation of the snapshot on disk (0: none)
        self._jn = 0              # changes in the journal of that snapshot
        self._jfd = None
        self._jlen = 0            # bytes in that journal
        self.failures = 0         # commit attempts failed in a row
        self.retry_at = 0.0       # monotonic time before which no automatic attempt is made

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
        """The entry at ``path`` (``/``-separated, relative to the branch root), or ``None`` if
        a component is missing or not a directory."""
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
        self.staged_files += 1
        return os.path.join(self.dir, "data", f"{self.staged_files}-{uuid.uuid4().hex[:8]}")

    def stage(self, e: WEntry, truncate_to: int | None = None) -> str:
        """Make file ``e`` staged (copy-on-write); returns the data path. With
        ``truncate_to`` = 0 nothing is copied."""
        if e.staged:
            return e.staged
        path = self._data_path()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if e.cid is not None and truncate_to != 0:
                self._copy_out(e.cid, fd, truncate_to)
            elif truncate_to:
                os.ftruncate(fd, truncate_to)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        was, old = self.pending, (e.cid, e.size)
        e.staged = path
        e.cid = None
        e.size = os.path.getsize(path)
        self.touch(e)

        def undo():
            e.staged, (e.cid, e.size) = None, old
            unlink_quietly(path)

        self._logged({"op": "stage", "p": e.path(), "staged": self._rel(path)}, e, undo, was)
        return path

    def _copy_out(self, cid: bytes, fd: int, truncate_to: int | None) -> None:
        """Write the first ``truncate_to`` bytes (all if ``None``) of file ``cid`` to
        ``fd`` straight from the store's zero-copy buffers; extend with zeros to
        ``truncate_to``. Raises :class:`BlockNotFound`, :class:`CorruptBlock` (blocks
        are checked against their CIDs: a damaged one is never copied into a commit)."""
        from ..dag import FileIndex

        with self.repo.store.view() as blocks:
            get = blocks.block

            idx = FileIndex.build(get, cid)
            limit = idx.size if truncate_to is None else min(truncate_to, idx.size)
            pos = 0
            for i in range(len(idx.leaves)):
                if pos >= limit:
                    break
                view = memoryview(idx.leaf_data(get, i))[: min(idx.sizes[i], limit - pos)]
                while view:
                    n = os.pwrite(fd, view, pos)
                    view = view[n:]
                    pos += n
        if truncate_to is not None:
            os.ftruncate(fd, truncate_to)

    def new_entry(self, parent: WEntry, name: str, kind: str, mode: int = 0o644, target: str = "") -> WEntry:
        """Create ``name`` in ``parent`` (replacing nothing: callers check). Raises
        ``OSError`` (nothing created) when the change cannot be persisted."""
        was = self.pending
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
        op = {"op": "new", "p": w.path(), "k": kind, "mode": mode}
        if kind == KIND_FILE:
            op["staged"] = self._rel(w.staged)
        elif kind == KIND_SYMLINK:
            op["target"] = target

        def undo():
            self.children(parent).pop(name, None)
            w.parent = None
            if w.staged:
                unlink_quietly(w.staged)

        self._logged(op, w, undo, was)
        return w

    def remove(self, parent: WEntry, name: str) -> WEntry:
        """Remove ``name`` from ``parent``; returns its entry. Raises ``OSError``
        (nothing removed) when the change cannot be persisted."""
        was = self.pending
        w = self.children(parent).pop(name)
        w.parent = None
        self.touch(parent)

        def undo():
            self.children(parent)[name] = w
            w.parent = parent

        self._logged({"op": "rm", "p": _join(parent.path(), name)}, parent, undo, was)
        return w

    def move(self, src_parent: WEntry, src: str, dst_parent: WEntry, dst: str) -> None:
        """Rename ``src`` of ``src_parent`` to ``dst`` of ``dst_parent`` (replacing
        it). Raises ``OSError`` (nothing moved) when the change cannot be persisted."""
        was = self.pending
        op = {"op": "mv", "s": _join(src_parent.path(), src), "d": _join(dst_parent.path(), dst)}
        w = self.children(src_parent).pop(src)
        old = self.children(dst_parent).pop(dst, None)
        if old is not None:
            old.parent = None
        w.parent, w.name = dst_parent, dst
        self.children(dst_parent)[dst] = w
        self.touch(src_parent)
        self.touch(w)

        def undo():
            self.children(dst_parent).pop(dst, None)
            if old is not None:
                self.children(dst_parent)[dst] = old
                old.parent = dst_parent
            w.parent, w.name = src_parent, src
            self.children(src_parent)[src] = w

        self._logged(op, w, undo, was)

    def chmod(self, entry: WEntry, mode: int) -> None:
        """Set the permission bits of ``entry`` (files: 0644 or 0755). Raises ``OSError``
        (mode unchanged) when the change cannot be persisted."""
        was, old = self.pending, entry.mode
        entry.mode = mode
        self.touch(entry)

        def undo():
            entry.mode = old

        self._logged({"op": "mode", "p": entry.path(), "mode": mode}, entry, undo, was)

    # --- persistence -----------------------------------------------------------
    # The staged tree is persisted as a snapshot (``state.json``, generation G) plus
    # a journal of the namespace changes made since (``journal-G.jsonl``, one JSON
    # object per line, appended with one write each), so a change costs O(1) however
    # big the tree; every JOURNAL_MAX changes a new snapshot starts a new journal.
    # File data is never in either: it is in the staged data files.
    def _rel(self, path: str) -> str:
        pre = self.dir + os.sep
        return path[len(pre):] if path.startswith(pre) else os.path.relpath(path, self.dir)

    def _attached(self, w: WEntry) -> bool:
        while w.parent is not None:
            w = w.parent
        return w is self.root

    def _logged(self, op: dict, w: WEntry | None, undo, pending: bool) -> None:
        """:meth:`log` a change just made in memory; if it cannot be persisted (a
        full disk), call ``undo()`` to take it back, restore ``pending`` and re-raise:
        a change the caller is told failed is not made, and one made is on disk."""
        try:
            self.log(op, w)
        except BaseException:
            undo()
            self.pending = pending
            raise

    def log(self, op: dict, entry: WEntry | None = None) -> None:
        """Persist one namespace change (already applied in memory) of ``entry``.
        Changes to entries no longer in the tree (an unlinked file still open) are
        not recorded: they are not part of any commit. Raises ``OSError`` (``ENOSPC``
        on a full disk) with the journal as it was before (a line written in part is
        cut off again, so no torn line precedes later ones)."""
        if entry is not None and not self._attached(entry):
            return
        if self._gen == 0 or self._jn >= JOURNAL_MAX:
            self.save()
            return
        if self._jfd is None:  # a loaded workspace: continue its journal
            self._jfd = os.open(os.path.join(self.dir, JOURNAL.format(self._gen)),
                                os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._jlen = os.fstat(self._jfd).st_size
        line = (json.dumps(op, separators=(",", ":")) + "\n").encode()
        try:
            n = os.write(self._jfd, line)
            if n != len(line):  # the disk filled up within the line
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            try:
                os.ftruncate(self._jfd, self._jlen)
            except OSError:
                pass
            raise
        self._jlen += n
        self._jn += 1

    def _ser(self, w: WEntry) -> dict:
        d = {"k": w.kind, "mode": w.mode}
        if w.kind == KIND_SYMLINK:
            d["target"] = w.target
            if w.cid is not None and not w.dirty:
                d["cid"], d["tsize"] = cid_str(w.cid), w.tsize
        elif w.kind == KIND_FILE:
            if w.staged:
                d["staged"] = self._rel(w.staged)
            else:
                d["cid"], d["tsize"], d["size"] = cid_str(w.cid), w.tsize, w.size
                if w.dirty:  # e.g. chmod of a committed file: the mode must be re-recorded
                    d["dirty"] = True
        else:
            if w.dirty or w.cid is None:
                d["children"] = {n: self._ser(c) for n, c in (w.children or {}).items()}
            else:
                d["cid"], d["tsize"] = cid_str(w.cid), w.tsize
        return d

    def save(self) -> None:
        """Write a snapshot ``state.json`` atomically (temp file + rename) and start
        its (empty) journal."""
        os.makedirs(self.dir, exist_ok=True)
        gen = self._gen + 1
        state = {"version": 1, "gen": gen, "branch": self.branch,
                 "base": cid_str(self.base) if self.base else None,
                 "pending": self.pending, "time": int(time.time()), "pid": os.getpid(),
                 "root": self._ser(self.root)}
        jpath = os.path.join(self.dir, JOURNAL.format(gen))
        jfd = os.open(jpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        tmp = os.path.join(self.dir, STATE + ".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(state))
            os.replace(tmp, os.path.join(self.dir, STATE))
        except BaseException:  # (a full disk) the previous snapshot and journal stay
            os.close(jfd)
            unlink_quietly(jpath)
            unlink_quietly(tmp)
            raise
        self._close_journal(unlink=True)
        self._gen, self._jn, self._jfd, self._jlen = gen, 0, jfd, 0

    def _close_journal(self, unlink: bool) -> None:
        if self._jfd is not None:
            os.close(self._jfd)
            self._jfd = None
        if unlink and self._gen:
            unlink_quietly(os.path.join(self.dir, JOURNAL.format(self._gen)))

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
                w.dirty = bool(d.get("dirty"))
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
        gen = st.get("gen", 0)
        n = 0
        if gen:
            jpath = os.path.join(dirpath, JOURNAL.format(gen))
            try:
                with open(jpath, "rb") as f:
                    lines = f.read().split(b"\n")
            except OSError:
                lines = []
            for i, line in enumerate(lines):
                try:
                    op = json.loads(line)
                except ValueError:
                    # the last line, torn by a crash (or the final newline); a damaged
                    # line with changes after it is damage: replaying around it would
                    # build another tree than the one staged
                    later = sum(1 for x in lines[i + 1:] if x.strip())
                    if later:
                        raise DamagedJournal(jpath, f"line {i + 1} does not read and {later} later "
                                                    f"change(s) follow it") from None
                    break
                ws._replay(op)
                n += 1
        ws._gen, ws._jn = gen, n
        if n:
            ws.pending = True
        return ws

    def _replay(self, op: dict) -> None:
        """Apply one journaled change while loading."""
        def parent_of(path):
            head, _, name = path.rpartition("/")
            d = self.lookup_path(head)
            return (d, name) if d is not None and d.kind == KIND_DIR else (None, name)

        k = op.get("op")
        if k == "new":
            d, name = parent_of(op["p"])
            if d is None:
                log.warning("journal of %s: no directory for %s", self.dir, op["p"])
                return
            w = WEntry(op["k"], mode=op.get("mode", 0o644), target=op.get("target", ""), mtime=self.base_time)
            w.parent, w.name = d, name
            if w.kind == KIND_DIR:
                w.children = {}
            elif w.kind == KIND_FILE:
                w.staged = os.path.join(self.dir, op["staged"])
                w.size = os.path.getsize(w.staged) if os.path.exists(w.staged) else 0
            else:
                w.size = len(w.target.encode())
            self.children(d)[name] = w
            self.touch(w)
        elif k == "rm":
            d, name = parent_of(op["p"])
            if d is not None and self.children(d).pop(name, None) is not None:
                self.touch(d)
        elif k == "mv":
            sd, sname = parent_of(op["s"])
            dd, dname = parent_of(op["d"])
            w = self.children(sd).pop(sname, None) if sd is not None else None
            if w is None or dd is None:
                log.warning("journal of %s: cannot move %s to %s", self.dir, op["s"], op["d"])
                return
            self.children(dd).pop(dname, None)
            w.parent, w.name = dd, dname
            self.children(dd)[dname] = w
            self.touch(sd)
            self.touch(w)
        elif k in ("stage", "mode"):
            w = self.lookup_path(op["p"])
            if w is None:
                log.warning("journal of %s: no entry %s", self.dir, op["p"])
                return
            if k == "stage":
                w.staged = os.path.join(self.dir, op["staged"])
                w.cid = None
                w.size = os.path.getsize(w.staged) if os.path.exists(w.staged) else 0
            else:
                w.mode = op["mode"]
            self.touch(w)

    def discard(self) -> None:
        """Delete the staging directory."""
        self._close_journal(unlink=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- committing ------------------------------------------------------------
    def build(self, imp: Importer, entry: WEntry | None = None, skipped: list | None = None) -> tuple[bytes, int]:
        """Store the workspace tree (staged files imported, dirty directories rebuilt);
        returns ``(cid, tsize)`` of ``entry`` (default: the root). An entry whose name
        cannot be stored (over 255 bytes, not UTF-8: staged by an older version) is
        left out, with everything below it, and appended to ``skipped`` as
        ``(printable path, reason, staged data path | None)``: one bad name must not
        stop the other changes from being committed."""
        entry = entry or self.root
        if entry.kind == KIND_FILE:
            if entry.staged:
                mode = 0o755 if entry.mode & 0o111 else None
                with open(entry.staged, "rb") as f:
                    cid, tsize, _ = imp.add_fd(f.fileno(), mode, name=entry.path())
                return cid, tsize
            if entry.dirty and entry.cid is not None:
                return self._rebuild_mode(imp, entry)
            return entry.cid, entry.tsize
        if entry.kind == KIND_SYMLINK:
            if entry.cid is not None and not entry.dirty:
                return entry.cid, entry.tsize
            return imp.add_symlink(entry.target)
        if not entry.dirty and entry.cid is not None:
            return entry.cid, entry.tsize
        entries = []
        for name, c in self.children(entry).items():
            bad = entry_name_error(name)
            if bad is not None:
                if skipped is not None:
                    skipped.append((printable_name(c.path()), bad[1], c.staged))
                continue
            cid, tsize = self.build(imp, c, skipped)
            entries.append((name, cid, tsize))
        return imp.add_directory(entries)

    def _rebuild_mode(self, imp: Importer, w: WEntry) -> tuple[bytes, int]:
        """A committed file whose executable bit was changed (chmod) without touching
        its content: re-encode its root node with the new mode over the same leaves
        (no data is copied)."""
        from ..dag import FileIndex
        from ..encoding.unixfs import EXEC_FILE_MODE, build_file

        idx = FileIndex.build(self.repo.get, w.cid)
        exe = bool(w.mode & 0o111)
        if bool(idx.mode & 0o111) == exe:
            return w.cid, w.tsize
        mode = EXEC_FILE_MODE if exe else None
        if not idx.inline:
            cid, tsize, blocks = build_file(list(zip(idx.leaves, idx.sizes)), mode)
            for c, b in blocks:
                imp.txn.put_block(c, b)
            return cid, tsize
        import tempfile

        with tempfile.TemporaryFile() as f:
            for i in range(len(idx.leaves)):
                f.write(bytes(idx.leaf_data(self.repo.get, i))[: idx.sizes[i]])
            f.flush()
            cid, tsize, _ = imp.add_fd(f.fileno(), mode, name=w.path())
        return cid, tsize

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
        from ..repo import Author

        repo = self.repo
        author = author or Author.default()
        result = {"commit": None, "branch": self.branch, "conflict": False, "new_bytes": 0,
                  "message": "", "tree": None, "head": None, "from_branch": self.branch}
        with repo.store.write() as w:
            get = txn_getter(w, repo.get)
            imp = Importer(w)
            skipped: list = []
            tree, _ = self.build(imp, skipped=skipped)
            result["skipped"] = skipped
            for path, why, staged in skipped:
                log.error("branch %s: %s not committed: %s%s", self.branch, path, why,
                          f"; its data is kept in {printable_name(staged)}" if staged else "")
            base_tree = repo.read_commit(self.base).tree if self.base else None
            land = land_on_branch(w, get, repo.read_commit, self.branch, self.base, base_tree, tree)
            target_branch = land.branch
            result.update(head=land.head, tree=land.tree, parent=land.parent, conflict=land.conflict)
            if land.theirs:
                result["theirs"] = land.theirs
            if land.conflict:
                result["collisions"] = land.collisions
            if land.tree == land.parent_tree and not land.conflict:
                return result
            cid, msg = commit_landing(
                w, self.branch, land, message or self.describe(get, land.parent_tree, land.tree),
                author.name, author.email, time.time(), {"source": "mount"}, who="this mount",
                source="mount", reflog_label="commit (mount)")
            result.update(commit=cid, branch=target_branch, new_bytes=w.new_bytes, message=msg)
        if result["conflict"]:
            log.warning("branch %s moved; staged changes saved as %s (%s)", self.branch,
                        target_branch, cid_str(result["commit"]))
        return result

    def finish(self, result: dict) -> None:
        """The in-memory half of a commit (run where the workspace is used): the
        committed state becomes the new base; staged files without open writers are
        released; entries keep their identity (inodes stay valid).

        After a conflict this workspace *becomes* the workspace of the conflicts
        branch (``result["reset"] = True``): handles still open on it keep writing
        there, and their later changes are committed on that branch, never lost; the
        mount gives the original branch a fresh workspace at its head."""
        if result.get("skipped"):  # kept staged, reported by `tvcfs status`; retried with back-off
            self.commit_failed("entries not committed (invalid names)", result["skipped"])
        else:
            self._commit_succeeded()
        if result["conflict"]:
            self.branch = result["branch"]
            result["reset"] = True
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
                    unlink_quietly(c.staged)
                    c.staged = None
                    c.size = stat_node(self.repo.get, link.hash).size
                self._mark_clean(c, link.hash, link.tsize)
                dirty = dirty or c.dirty
            w.dirty = dirty
        else:
            w.dirty = False

    def follow(self, head: bytes) -> list:
        """Move a workspace without pending changes to ``head`` (the branch moved: a
        CLI commit, another mount). Unchanged entries keep their identity (and so
        their inodes); changed ones are replaced. Returns the ``(parent WEntry, name)``
        pairs whose kernel entries must be invalidated."""
        old_tree = self.repo.read_commit(self.base).tree if self.base else None
        new_tree = self.repo.read_commit(head).tree
        touched = self.apply_theirs(changed_paths(self.repo.get, old_tree, new_tree))
        self.base = head
        self.base_time = self.repo.read_commit(head).timestamp
        self._mark_clean(self.root, new_tree)
        self.pending = self.root.dirty
        return touched

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

    def changes(self) -> list:
        """What the staged tree changes against the base commit: ``[(status, path,
        staged_bytes | None)]`` with status ``added``, ``modified``, ``removed`` or
        ``mode changed``; directories end with ``/``. Reads only directories that
        were changed."""
        get = self.repo.get
        out: list = []

        def links(cid):
            return {l.name: l for l in dir_links(get, cid)} if cid else {}

        def kind_of(link):
            return stat_node(get, link.hash).kind

        def staged_size(c):
            try:
                return os.path.getsize(c.staged)
            except OSError:
                return None

        def added(c, p):
            if c.kind == KIND_DIR:
                out.append(("added", p + "/", None))
                for n, cc in sorted((c.children or {}).items()):
                    added(cc, f"{p}/{n}")
            else:
                out.append(("added", p, staged_size(c) if c.staged else None))

        def rec(w, base_cid, prefix):
            ln = links(base_cid)
            ch = w.children or {}
            for name in sorted(set(ch) | set(ln), key=lambda n: n.encode("utf-8", "surrogatepass")):
                c, link = ch.get(name), ln.get(name)
                p = prefix + name
                if c is None:
                    out.append(("removed", p + ("/" if kind_of(link) == KIND_DIR else ""), None))
                    continue
                if link is None:
                    added(c, p)
                    continue
                if c.kind == KIND_DIR:
                    if kind_of(link) != KIND_DIR:
                        out.append(("removed", p, None))
                        added(c, p)
                    elif c.children is not None and (c.dirty or c.cid != link.hash):
                        rec(c, link.hash, p + "/")
                    elif c.cid != link.hash:
                        out.append(("modified", p + "/", None))
                elif c.staged:
                    out.append(("modified", p, staged_size(c)))
                elif c.cid != link.hash or (c.kind == KIND_SYMLINK and c.dirty):
                    out.append(("modified", p, None))
                elif c.dirty and c.kind == KIND_FILE and \
                        bool(stat_node(get, link.hash).mode & 0o111) != bool(c.mode & 0o111):
                    out.append(("mode changed", p, None))

        base_tree = self.repo.read_commit(self.base).tree if self.base else None
        if self.root.children is not None:
            rec(self.root, base_tree, "")
        return out

    def commit_failed(self, error: str, skipped: list | None = None) -> float:
        """Record a failed commit attempt (kept in ``commit_error.json`` for ``tvcfs
        status``, best-effort: the disk may be full) and back off: automatic
        attempts (quiet period, unmount excepted) wait 1, 2, 4 … up to 60 seconds
        (a commit re-reads every staged file). ``skipped``: the entries a commit left
        out (:meth:`build`). Returns the delay in seconds."""
        self.failures += 1
        delay = float(min(60, 2 ** (self.failures - 1)))
        self.retry_at = time.monotonic() + delay
        rec = {"time": time.time(), "error": error, "attempts": self.failures}
        if skipped:
            rec["skipped"] = [list(x) for x in skipped]
        try:
            with open(os.path.join(self.dir, COMMIT_ERROR), "w") as f:
                json.dump(rec, f)
        except OSError:
            pass
        return delay

    def _commit_succeeded(self) -> None:
        if self.failures:
            self.failures, self.retry_at = 0, 0.0
            unlink_quietly(os.path.join(self.dir, COMMIT_ERROR))

    def _remove_state(self) -> None:
        unlink_quietly(os.path.join(self.dir, STATE))
        self._close_journal(unlink=True)
        self._gen = self._jn = 0

    def describe(self, get, old_tree: bytes | None, new_tree: bytes) -> str:
        """A commit message listing changed files and, for safetensors, tensors."""
        try:
            from ..diff import diff_trees

            d = diff_trees(get, old_tree, new_tree, numeric=False)
        except Exception as e:  # a message must never fail a commit
            log.debug("describe: %s", e)
            return f"Update {self.branch} from mount"
        files = d.files
        if not files:  # only directories changed (mkdir, rmdir): say which
            return _describe_dirs(get, old_tree, new_tree, self.branch)
        head = f"Update {len(files)} file{'s' if len(files) != 1 else ''} on {self.branch}"
        lines = [head, ""]
        for fc in files:
            lines.append(f"{fc.status}: {fc.path}")
            for t in getattr(fc, "tensors", None) or []:
                lines.append(f"    tensor {t.status}: {t.name}")
        return "\n".join(lines)


def _describe_dirs(get, old_tree, new_tree, branch: str) -> str:
    """A commit message for a change of empty directories only: ``Add directory x on
    main`` / ``Remove directories a, b on main`` and one line per directory."""
    from ..treeops import changed_paths

    ch = changed_paths(get, old_tree, new_tree)
    added = sorted(p for p, v in ch.items() if v is not None)
    removed = sorted(p for p, v in ch.items() if v is None)
    parts = []
    for verb, paths in (("Add", added), ("Remove", removed)):
        if paths:
            word = "directory" if len(paths) == 1 else "directories"
            parts.append(f"{verb} {word} {', '.join(paths[:3])}{', …' if len(paths) > 3 else ''}")
    if not parts:
        return f"Update {branch} from mount"
    lines = [f"{'; '.join(parts)} on {branch}", ""]
    lines += [f"added: {p}/" for p in added] + [f"removed: {p}/" for p in removed]
    return "\n".join(lines)


def _join(head: str, name: str) -> str:
    return f"{head}/{name}" if head else name


def pending_workspaces(repo) -> list:
    """Staging directories of ``repo`` with uncommitted changes: list of dicts
    ``{dir, branch, base, pid, time, alive, error}`` read from their ``state.json``
    (``error``: the last failed commit attempt ``{time, error, attempts}`` or ``None``).
    A ``state.json`` that does not read is listed too, with ``damaged: True``, branch
    ``"(unknown)"`` and its :func:`damaged_state` line as ``error``."""
    out = []
    root = os.path.join(repo.control, "staging")
    if not os.path.isdir(root):
        return out
    for name in sorted(os.listdir(root)):
        p = os.path.join(root, name, STATE)
        try:
            with open(p) as f:
                state = json.load(f)
        except OSError:
            continue
        except ValueError as e:  # written atomically: damaged on disk, not cut by a crash
            out.append({"dir": os.path.join(root, name), "branch": "(unknown)", "base": None, "pid": None,
                        "time": None, "alive": False, "damaged": True,
                        "error": {"time": os.path.getmtime(p), "error": damaged_state(p, e)}})
            continue
        if not state.get("pending"):
            continue
        alive = process_alive(state.get("pid"))
        try:
            with open(os.path.join(root, name, COMMIT_ERROR)) as f:
                error = json.load(f)
        except (OSError, ValueError):
            error = None
        out.append({"dir": os.path.join(root, name), "branch": state["branch"], "base": state.get("base"),
                    "pid": state.get("pid"), "time": state.get("time"), "alive": alive, "error": error})
    return out


class DamagedJournal(ValueError):
    """A staging directory's journal ``path`` has a damaged line before other changes
    (not just a last line torn by a crash): the staged tree cannot be rebuilt as it was."""

    def __init__(self, path: str, what: str):
        super().__init__(what)
        self.path = path


def damaged_state(path: str, e: Exception) -> str:
    """The one line for a staging ``state.json`` at ``path`` (or the journal a
    :class:`DamagedJournal` ``e`` names) that does not read (``e``): what is lost and
    what to do."""
    path = getattr(e, "path", path)
    d = os.path.dirname(path)
    return (f"{path} is damaged ({e}): the staged tree cannot be rebuilt; the staged files' bytes "
            f"are in {os.path.join(d, 'data')}: copy out what you need, then `tvcfs recover --discard` "
            "removes it")


def discard_pending(dirpath: str) -> None:
    """Delete the staging directory ``dirpath`` (one of :func:`pending_workspaces`)
    and the uncommitted changes in it (``tvcfs recover --discard``)."""
    shutil.rmtree(dirpath, ignore_errors=True)


def recover(repo, dirpath: str, message: str | None = None) -> dict:
    """Commit the staged changes left in ``dirpath`` by a mount that died; the
    staging directory is removed afterwards. Returns :meth:`Workspace.commit`'s
    result. Raises :class:`TvcfsError` if the state cannot be read."""
    try:
        ws = Workspace.load(repo, dirpath)
    except ValueError as e:
        raise TvcfsError(damaged_state(os.path.join(dirpath, STATE), e)) from None
    except (OSError, KeyError) as e:
        raise TvcfsError(f"cannot read staged state in {dirpath}: {e}") from None
    res = ws.commit(message or None)
    if not ws.pending:
        ws.discard()
    return res
