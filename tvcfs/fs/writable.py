"""The writable mount: ``branches/NAME/`` directories take writes, which become
commits (docs/mount.md; the staging model is in :mod:`tvcfs.fs.workspace`).

Commit triggers: ``fsync``/``fdatasync`` of a file or ``fsync`` of a directory in the
branch commits at once; otherwise a commit is made once every write handle on the
branch is closed and the branch has been quiet for ``commit_delay`` seconds; unmount
commits whatever is pending. ``mkdir branches/NEW`` creates a branch at HEAD's commit;
``rmdir branches/NAME`` deletes the branch (kept in the reflog).
"""

from __future__ import annotations

import collections
import errno
import functools
import inspect
import logging
import os
import stat
import time

import pyfuse3
import trio

from ..dag import KIND_DIR, KIND_FILE, KIND_SYMLINK
from ..encoding.cid import cid_str
from ..encoding.unixfs import NAME_MAX
from ..errors import BlockNotFound, CorruptBlock, MalformedObject, RefExists, TvcfsError
from ..fileio import unlink_quietly
from ..refs import HEADS, InvalidRefName, check_name
from ..store.lmdb_store import StoreFull
from .nodes import Node
from .operations import DYNAMIC_TIMEOUT, ReadOnlyOperations, _err, _inval_entry, new_entry_name, reply_len
from .workspace import Workspace, WEntry

log = logging.getLogger("tvcfs.fs")


def _attached(ws: Workspace, w: WEntry) -> bool:
    """Whether ``w`` is still in the workspace's tree (not removed or replaced)."""
    while w.parent is not None:
        w = w.parent
    return w is ws.root and not ws.deleted


class Handle:
    """An open file in a branch: the workspace, its entry, whether it writes."""

    __slots__ = ("workspace", "entry", "writable")

    def __init__(self, workspace, entry, writable):
        self.workspace, self.entry, self.writable = workspace, entry, writable


#: bytes of a file whose missing leaves a copy on write in a lazy mount fetches in one
#: request to the source (each within ``--fetch-timeout``)
COPY_FETCH_WINDOW = 64 << 20


class WritableOperations(ReadOnlyOperations):
    """Read-only views plus writable branch directories.

    ``commit_delay``: seconds of quiet after the last write handle on a branch closes
    before its commit (default 1.0). ``author``: a :class:`tvcfs.Author` (default as
    the CLI: environment, then git config).
    """

    def __init__(self, repo, verify_reads: bool = False, commit_delay: float = 1.0, author=None, **kw):
        super().__init__(repo, verify_reads=verify_reads)
        self.commit_delay = commit_delay
        self.author = author
        self.workspaces: dict[str, Workspace] = {}
        self.fds: dict[str, int] = {}      # staged data path -> fd (read/write)
        self.cached: dict[int, bytes] = {}  # ino -> cid last opened with keep_cache
        # file CID -> copies on write of it running: an s3:// mount's cache keeps its
        # leaves (tvcfs.fs.s3source, "never evicts a leaf of a file open in the mount")
        self.copying: collections.Counter = collections.Counter()
        self.commits_made = 0
        self.reader.stats.writes = 0        # write requests served (see .tvcfs/stats)
        self.reader.stats.write_bytes = 0
        self.reader.stats.commits = 0

    # --- workspaces ------------------------------------------------------------
    def workspace(self, branch: str) -> Workspace | None:
        """The branch's workspace, following the branch head while it is clean.

        A clean workspace whose branch moved (CLI commit, another mount) is moved to
        the new head in place: unchanged entries keep their inodes, so handles,
        working directories and cached dentries of the old tree stay in the one
        workspace of the branch and nothing written through them is orphaned. A
        clean workspace of a deleted branch is dropped."""
        head = self.repo.ref_db.get(HEADS + branch)
        ws = self.workspaces.get(branch)
        if ws is not None:
            if ws.base == head or ws.pending or ws.writers or ws.committing:
                return ws
            if head is None:
                self.workspaces.pop(branch, None)
                ws.deleted = True
                return None
            try:
                touched = ws.follow(head)
            except (BlockNotFound, CorruptBlock, MalformedObject) as e:
                log.error("branch %s moved to %s, cannot read it: %s", branch, cid_str(head), e)
                raise _err(errno.EIO) from None
            for d, name in touched:
                if d.ino:
                    _inval_entry(d.ino, name)
            return ws
        if head is None:
            return None
        ws = Workspace(self.repo, branch, head)
        self.workspaces[branch] = ws
        return ws

    def ws_node(self, ws: Workspace, entry: WEntry, parent_ino: int) -> Node:
        """The node of workspace entry ``entry`` of ``ws`` (under inode ``parent_ino``),
        reusing its inode while the entry lives."""
        if (entry.ino and entry.ino in self.inodes.by_ino
                and self.inodes.by_ino[entry.ino].extra.get("entry") is entry):
            return self.inodes.by_ino[entry.ino]
        key = ("ws", id(entry))

        def make(ino):
            n = Node(ino, "ws", key, parent=parent_ino, name=entry.name or ws.branch)
            n.extra["entry"] = entry
            n.extra["workspace"] = ws
            return n

        node = self.inodes.intern(key, make)
        entry.ino = node.ino
        return node

    def writable(self, node: Node) -> bool:
        return node.kind == "ws" or (node.kind == "refdir" and node.prefix.startswith(HEADS))

    # --- namespace --------------------------------------------------------------
    def _child(self, parent: Node, name: str) -> Node:
        if parent.kind == "refdir" and parent.prefix.startswith(HEADS):
            branch = parent.prefix[len(HEADS):] + name
            ws = self.workspace(branch)
            if ws is not None:
                return self.ws_node(ws, ws.root, parent.ino)
            return super()._child(parent, name)
        if parent.kind == "ws":
            w, ws = parent.extra["entry"], parent.extra["workspace"]
            if w.kind != KIND_DIR:
                raise _err(errno.ENOTDIR)
            c = self._children(ws, w).get(name)
            if c is None:
                raise _err(errno.ENOENT)
            return self.ws_node(ws, c, parent.ino)
        return super()._child(parent, name)

    def _children(self, ws, w) -> dict:
        try:
            return ws.children(w)
        except (BlockNotFound, CorruptBlock, MalformedObject) as e:
            log.error("directory %s of %s: %s", w.path(), ws.branch, e)
            raise _err(errno.EIO) from None

    def _list(self, node: Node) -> list:
        if node.kind == "ws":
            w, ws = node.extra["entry"], node.extra["workspace"]
            return [(n, self.ws_node(ws, c, node.ino)) for n, c in self._children(ws, w).items()]
        out = super()._list(node)
        if node.kind == "refdir" and node.prefix.startswith(HEADS):
            names = {n for n, _ in out}
            for b in list(self.workspaces):
                if b.startswith(node.prefix[len(HEADS):]) and "/" not in b[len(node.prefix) - len(HEADS):]:
                    short = b[len(node.prefix) - len(HEADS):]
                    if short not in names:
                        try:
                            out.append((short, self._child(node, short)))
                        except pyfuse3.FUSEError:
                            pass
        return out

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        """As :meth:`ReadOnlyOperations.attrs`; a workspace entry's mode, size in bytes and
        mtime come from the workspace (``st_nlink`` 0 once unlinked while open)."""
        if node.kind != "ws":
            return super().attrs(node)
        w, ws = node.extra["entry"], node.extra["workspace"]
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        if w.kind == KIND_DIR:
            a.st_mode = stat.S_IFDIR | 0o755
            a.st_nlink = 2
            size = 0
        elif w.kind == KIND_SYMLINK:
            a.st_mode = stat.S_IFLNK | 0o777
            a.st_nlink = 1
            size = len(w.target.encode())
        else:
            a.st_mode = stat.S_IFREG | (0o755 if w.mode & 0o111 else 0o644)
            a.st_nlink = 1
            size = w.size
        if not _attached(ws, w):  # unlinked or replaced while open (fstat): no links left
            a.st_nlink = 0
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_size = size
        a.st_blocks = (size + 511) // 512
        a.st_blksize = 1 << 20
        ns = int(w.mtime * 1e9)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        a.attr_timeout = DYNAMIC_TIMEOUT
        # names in a branch change under the kernel when the branch moves (CLI commit,
        # another mount, a rebase): no cached dentries, every path walk asks the mount
        a.entry_timeout = 0
        return a

    async def readlink(self, inode, ctx):
        """As :meth:`ReadOnlyOperations.readlink`, and a workspace symlink's target. Raises
        ``FUSEError`` EINVAL for a workspace non-symlink."""
        node = self.node(inode)
        if node.kind == "ws":
            w = node.extra["entry"]
            if w.kind != KIND_SYMLINK:
                raise _err(errno.EINVAL)
            return w.target.encode()
        return await super().readlink(inode, ctx)

    def _ws_dir(self, inode) -> tuple:
        node = self.node(inode)
        if node.kind == "ws":
            w, ws = node.extra["entry"], node.extra["workspace"]
            if w.kind != KIND_DIR:
                raise _err(errno.ENOTDIR)
            if not _attached(ws, w):  # removed or replaced meanwhile (cwd in it)
                raise _err(errno.ENOENT)
            return node, ws, w
        raise _err(errno.EROFS)

    async def _writing(self, ws: Workspace) -> None:
        """Wait while ``ws`` is being committed (writes must not race the snapshot)."""
        lock = self._lock(ws)
        if lock.locked():
            async with lock:
                pass

    # --- files -----------------------------------------------------------------
    def _fd(self, w: WEntry) -> int:
        fd = self.fds.get(w.staged)
        if fd is None:
            fd = os.open(w.staged, os.O_RDWR)
            self.fds[w.staged] = fd
        return fd

    def _drop_staged(self, w: WEntry) -> None:
        """Delete the staged data of an entry that left the tree (no handle open)."""
        fd = self.fds.pop(w.staged, None)
        if fd is not None:
            os.close(fd)
        unlink_quietly(w.staged)
        w.staged = None

    def _sweep_fds(self, live: set | None = None) -> None:
        for path in list(self.fds):
            if not os.path.exists(path):
                os.close(self.fds.pop(path))

    async def open(self, inode, flags, ctx):
        """As :meth:`ReadOnlyOperations.open`; a workspace file opens for writing too
        (``O_TRUNC`` truncates it). Raises ``FUSEError`` EISDIR/EINVAL for a non-file,
        ENOENT for a write open in a deleted branch."""
        node = self.node(inode)
        if node.kind != "ws":
            return await super().open(inode, flags, ctx)
        w, ws = node.extra["entry"], node.extra["workspace"]
        if w.kind == KIND_DIR:
            raise _err(errno.EISDIR)
        if w.kind != KIND_FILE:
            raise _err(errno.EINVAL)
        wr = bool(flags & (os.O_WRONLY | os.O_RDWR))
        if (wr or flags & os.O_TRUNC) and ws.deleted:
            raise _err(errno.ENOENT)
        if wr or flags & os.O_TRUNC:
            await self._writing(ws)
        if flags & os.O_TRUNC:
            await self._truncate(ws, w, 0)
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(ws, w, wr)
        w.opens += 1
        if wr:
            w.writers += 1
            ws.writers += 1
            ws.last_activity = time.monotonic()
        keep = False
        if not w.staged and w.cid is not None:
            keep = self.cached.get(node.ino) == w.cid
            self.cached[node.ino] = w.cid
        else:
            self.cached.pop(node.ino, None)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    async def _truncate(self, ws, w, size: int) -> None:
        if not w.staged:
            await self._stage(ws, w, size)
        if w.staged:
            os.truncate(w.staged, size)
            w.size = size
            ws.touch(w)

    async def _stage(self, ws: Workspace, w: WEntry, truncate_to: int | None = None) -> None:
        """Copy-on-write of a committed file before its first change. Copying a big
        file takes a while, so it runs in a worker thread holding the workspace's
        lock: writes to the branch wait (as during a commit), everything else (reads,
        lookups, other branches) is served meanwhile. On a lazy mount the leaves of
        the part copied that are not local are fetched first, at foreground priority
        (as a read of them would be); a leaf evicted before the copy reached it (an
        ``s3://`` mount's ``--cache-size``) is fetched again. ``FUSEError`` EIO when
        a block cannot be had (the source's timeout) or is damaged; a copy that fails
        (whatever the error) leaves the workspace's ``pending`` as it was, so a clean
        workspace keeps following its branch."""
        if truncate_to == 0:  # nothing to copy
            self._stage_now(ws, w, 0)
            return
        async with self._lock(ws):
            if w.staged:
                return
            # the workspace must not follow its branch meanwhile; a copy that fails
            # stages nothing, so the workspace is as clean as it was before
            was = ws.pending
            ws.pending = True
            remote, cid = self.reader.remote, w.cid
            if cid is not None:
                self.copying[cid] += 1
            try:
                for attempt in range(3):
                    try:
                        if remote is not None and cid is not None:
                            await self._fetch_for_copy(cid, truncate_to)
                        await trio.to_thread.run_sync(functools.partial(ws.stage, w, truncate_to=truncate_to))
                        return
                    except BlockNotFound as e:
                        if remote is None or attempt == 2:
                            self._stage_failed(w, e)
                    except (CorruptBlock, MalformedObject) as e:
                        self._stage_failed(w, e)
            finally:
                if not w.staged:
                    ws.pending = was or ws.root.dirty
                if cid is not None:
                    self.copying[cid] -= 1
                    if self.copying[cid] <= 0:
                        del self.copying[cid]

    async def _fetch_for_copy(self, cid: bytes, truncate_to: int | None) -> None:
        """Fetch from a lazy mount's source the leaves of file ``cid`` (its first
        ``truncate_to`` bytes; ``None``: all) that are not local, window by window of
        :data:`COPY_FETCH_WINDOW` bytes, each within the source's timeout. Raises
        :class:`BlockNotFound` (not had in time), :class:`CorruptBlock`."""
        idx = await self.reader.index_async(cid)
        size = idx.size if truncate_to is None else min(truncate_to, idx.size)
        for off in range(0, size, COPY_FETCH_WINDOW):
            await self.reader.fetch_missing(idx, off, min(COPY_FETCH_WINDOW, size - off))

    def _stage_now(self, ws: Workspace, w: WEntry, truncate_to) -> None:
        try:
            ws.stage(w, truncate_to=truncate_to)
        except (BlockNotFound, CorruptBlock, MalformedObject) as e:
            self._stage_failed(w, e)

    @staticmethod
    def _stage_failed(w: WEntry, e: Exception):
        """Log why the copy-on-write of ``w`` failed; raise ``FUSEError`` EIO."""
        log.error("copy-on-write of %s: %s", w.path(), e)
        raise _err(errno.EIO) from None

    def _lock(self, ws: Workspace) -> trio.Lock:
        """The workspace's lock (held by commits and copy-on-write copies)."""
        lock = getattr(ws, "_trio_lock", None)
        if lock is None:
            lock = ws._trio_lock = trio.Lock()
        return lock

    async def create(self, parent_inode, name, mode, flags, ctx):
        """FUSE create in a workspace directory: a new file (or the existing one truncated),
        open for writing; returns ``(FileInfo, attributes)``. Raises ``FUSEError`` EEXIST
        with ``O_EXCL``, EISDIR for a non-file, EROFS outside ``branches/``, EINVAL for a
        bad name."""
        node, ws, d = self._ws_dir(parent_inode)
        sname = new_entry_name(name)
        await self._writing(ws)
        ch = self._children(ws, d)
        if sname in ch:
            if flags & os.O_EXCL:
                raise _err(errno.EEXIST)
            w = ch[sname]
            if w.kind != KIND_FILE:
                raise _err(errno.EISDIR)
            await self._truncate(ws, w, 0)
        else:
            w = ws.new_entry(d, sname, KIND_FILE, mode=0o755 if mode & 0o111 else 0o644)
        child = self.ws_node(ws, w, node.ino)
        child.lookups += 1
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(ws, w, True)
        w.opens += 1
        w.writers += 1
        ws.writers += 1
        ws.last_activity = time.monotonic()
        return pyfuse3.FileInfo(fh=fh), self.attrs(child)

    async def read(self, fh, off, size):
        """As :meth:`ReadOnlyOperations.read`; a staged workspace file is read from its staging
        file."""
        h = self.handles.get(fh)
        if not isinstance(h, Handle):
            return await super().read(fh, off, size)
        w = h.entry
        if w.staged:
            return os.pread(self._fd(w), size, off)
        try:
            idx = await self.reader.index_async(w.cid)
            data = await self.reader.read_async(idx, off, size, self.reply_parts)
        except (BlockNotFound, CorruptBlock, MalformedObject) as e:
            self.read_failed(f"branches/{h.workspace.branch}/{w.path()}", off, size, e)
            raise _err(errno.EIO) from None
        self.reader.readahead(fh, idx, off, reply_len(data))
        return data

    async def write(self, fh, off, buf):
        """FUSE write to a workspace file: ``buf`` at offset ``off`` in its staging file
        (staged on first write); returns the bytes written. Raises ``FUSEError`` EBADF for a
        read-only handle, the errno of a failed ``pwrite``."""
        h = self.handles.get(fh)
        if not isinstance(h, Handle):
            return await super().write(fh, off, buf)
        if not h.writable:
            raise _err(errno.EBADF)
        ws, w = h.workspace, h.entry
        await self._writing(ws)
        if not w.staged:
            await self._stage(ws, w)
        try:
            n = os.pwrite(self._fd(w), buf, off)
        except OSError as e:
            raise _err(e.errno) from None
        st = self.reader.stats
        st.writes += 1
        st.write_bytes += n
        if off + n > w.size:
            w.size = off + n
        w.mtime = time.time()
        ws.pending = True
        if not w.dirty:
            ws.touch(w)
        ws.last_activity = time.monotonic()
        return n

    async def release(self, fh):
        """As :meth:`ReadOnlyOperations.release`; the last writer of a workspace arms its
        quiet-period commit."""
        h = self.handles.pop(fh, None)
        if isinstance(h, Handle):
            self.reader.forget_handle(fh)
            h.entry.opens -= 1
            if h.writable:
                h.entry.writers -= 1
                h.workspace.writers -= 1
                h.workspace.last_activity = time.monotonic()
                if h.workspace.writers == 0 and h.workspace.pending:
                    self._arm_quiet(h.workspace)
            if h.entry.parent is None and h.entry.opens == 0 and h.entry.staged and h.entry is not h.workspace.root:
                self._drop_staged(h.entry)
            return
        await super().release(fh)

    async def flush(self, fh):
        """FUSE flush: nothing (a workspace commits after its quiet period or on fsync)."""
        pass

    async def fsync(self, fh, datasync):
        """FUSE fsync: commit the handle's workspace now. Raises ``FUSEError`` ENOSPC when the
        store is full, EIO for another failed commit."""
        h = self.handles.get(fh)
        if isinstance(h, Handle):
            await self.commit_workspace(h.workspace, reason="fsync", errors=True)

    async def fsyncdir(self, fh, datasync):
        """FUSE fsyncdir: commit the workspace of a workspace directory now."""
        ino = self.dir_handles.get(fh, (0, []))[0]
        node = self.inodes.get(ino)
        if node is not None and node.kind == "ws":
            await self.commit_workspace(node.extra["workspace"], reason="fsync", errors=True)

    async def setattr(self, inode, attr, fields, fh, ctx):
        """FUSE setattr on a workspace entry: size (truncate), the executable bit, mtime.
        Raises ``FUSEError`` EROFS outside a workspace, EISDIR for a size change of a
        non-file."""
        node = self.node(inode)
        if node.kind != "ws":
            raise _err(errno.EROFS)
        w, ws = node.extra["entry"], node.extra["workspace"]
        await self._writing(ws)
        if fields.update_size:
            if w.kind != KIND_FILE:
                raise _err(errno.EISDIR)
            await self._truncate(ws, w, attr.st_size)
        if fields.update_mode and w.kind == KIND_FILE:
            new = 0o755 if attr.st_mode & 0o111 else 0o644
            if new != (0o755 if w.mode & 0o111 else 0o644):
                ws.chmod(w, new)
        if fields.update_mtime:
            w.mtime = attr.st_mtime_ns / 1e9
        return self.attrs(node)

    async def mkdir(self, parent_inode, name, mode, ctx):
        """FUSE mkdir: a directory in a workspace, or in ``branches/`` a new branch at HEAD.
        Raises ``FUSEError`` EEXIST, EINVAL for a bad branch name, ENOENT without a HEAD
        commit."""
        parent = self.node(parent_inode)
        sname = new_entry_name(name)
        if parent.kind == "refdir" and parent.prefix.startswith(HEADS):
            branch = parent.prefix[len(HEADS):] + sname
            try:
                check_name(branch)
                if self.repo.head() is None:
                    raise _err(errno.ENOENT)
                self.repo.create_branch(branch)
            except RefExists:
                raise _err(errno.EEXIST) from None
            except InvalidRefName:
                raise _err(errno.EINVAL) from None
            node = self._child(parent, sname)
            node.lookups += 1
            return self.attrs(node)
        node, ws, d = self._ws_dir(parent_inode)
        await self._writing(ws)
        if sname in self._children(ws, d):
            raise _err(errno.EEXIST)
        w = ws.new_entry(d, sname, KIND_DIR, mode=0o755)
        child = self.ws_node(ws, w, node.ino)
        child.lookups += 1
        return self.attrs(child)

    async def symlink(self, parent_inode, name, target, ctx):
        """FUSE symlink in a workspace directory. Raises ``FUSEError`` EILSEQ for a non-UTF-8
        target, EEXIST."""
        node, ws, d = self._ws_dir(parent_inode)
        sname = new_entry_name(name)
        try:
            starget = target.decode("utf-8")  # stored as UTF-8 (UnixFS Symlink data)
        except UnicodeDecodeError:
            raise _err(errno.EILSEQ) from None
        await self._writing(ws)
        if sname in self._children(ws, d):
            raise _err(errno.EEXIST)
        w = ws.new_entry(d, sname, KIND_SYMLINK, target=starget)
        child = self.ws_node(ws, w, node.ino)
        child.lookups += 1
        return self.attrs(child)

    async def unlink(self, parent_inode, name, ctx):
        """FUSE unlink of a workspace file or symlink. Raises ``FUSEError`` ENOENT, EISDIR."""
        node, ws, d = self._ws_dir(parent_inode)
        await self._writing(ws)
        sname = os.fsdecode(name)
        w = self._children(ws, d).get(sname)
        if w is None:
            raise _err(errno.ENOENT)
        if w.kind == KIND_DIR:
            raise _err(errno.EISDIR)
        ws.remove(d, sname)
        if w.staged and not w.opens:
            self._drop_staged(w)

    async def rmdir(self, parent_inode, name, ctx):
        """FUSE rmdir of an empty workspace directory, or in ``branches/`` delete a branch.
        Raises ``FUSEError`` ENOENT, ENOTDIR, ENOTEMPTY, EBUSY for a branch with pending
        writes or HEAD's."""
        parent = self.node(parent_inode)
        sname = os.fsdecode(name)
        if parent.kind == "refdir" and parent.prefix.startswith(HEADS):
            branch = parent.prefix[len(HEADS):] + sname
            ws = self.workspaces.get(branch)
            if ws is not None and (ws.pending or ws.writers):
                raise _err(errno.EBUSY)
            try:
                self.repo.delete_branch(branch)
            except TvcfsError as e:
                log.info("rmdir branches/%s: %s", branch, e)
                raise _err(errno.EBUSY if "HEAD" in str(e) else errno.ENOENT) from None
            if ws is not None:
                ws.deleted = True
                ws.discard()
                self.workspaces.pop(branch, None)
            return
        node, ws, d = self._ws_dir(parent_inode)
        await self._writing(ws)
        w = self._children(ws, d).get(sname)
        if w is None:
            raise _err(errno.ENOENT)
        if w.kind != KIND_DIR:
            raise _err(errno.ENOTDIR)
        if self._children(ws, w):
            raise _err(errno.ENOTEMPTY)
        ws.remove(d, sname)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        """FUSE rename within one workspace. Raises ``FUSEError`` EXDEV across workspaces,
        EROFS outside them, EINVAL for ``RENAME_NOREPLACE``/``RENAME_EXCHANGE`` flags."""
        pold, pnew = self.node(parent_inode_old), self.node(parent_inode_new)
        if pold.kind != "ws" or pnew.kind != "ws":
            raise _err(errno.EROFS if "ws" not in (pold.kind, pnew.kind) else errno.EXDEV)
        if pold.extra["workspace"] is not pnew.extra["workspace"]:
            raise _err(errno.EXDEV)
        if flags:
            raise _err(errno.EINVAL)  # RENAME_NOREPLACE / EXCHANGE not supported
        ws = pold.extra["workspace"]
        if len(name_old) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        so, sn = os.fsdecode(name_old), new_entry_name(name_new)
        await self._writing(ws)
        d_old, d_new = pold.extra["entry"], pnew.extra["entry"]
        if not (_attached(ws, d_old) and _attached(ws, d_new)):
            raise _err(errno.ENOENT)
        src = self._children(ws, d_old).get(so)
        if src is None:
            raise _err(errno.ENOENT)
        dst = self._children(ws, d_new).get(sn)
        if dst is src:
            return
        if dst is not None:
            if dst.kind == KIND_DIR and src.kind != KIND_DIR:
                raise _err(errno.EISDIR)
            if src.kind == KIND_DIR and dst.kind != KIND_DIR:
                raise _err(errno.ENOTDIR)
            if dst.kind == KIND_DIR and self._children(ws, dst):
                raise _err(errno.ENOTEMPTY)
        a = d_new
        while a is not None:
            if a is src:
                raise _err(errno.EINVAL)
            a = a.parent
        ws.move(d_old, so, d_new, sn)
        if dst is not None:
            dst.parent = None
            if dst.staged and not dst.opens:
                self._drop_staged(dst)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        """FUSE link: hard links are not supported (docs/mount.md). Raises ``FUSEError`` EPERM
        (EINVAL for a bad name)."""
        new_entry_name(new_name)
        raise _err(errno.EPERM)  # hard links are not supported (docs/mount.md)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        """A regular file is created empty (as ``create`` + ``close``); FIFOs,
        sockets and devices cannot be stored: ``EPERM``, as the kernel answers for
        filesystems without special files."""
        if self.node(parent_inode).kind != "ws":
            return await super().mknod(parent_inode, name, mode, rdev, ctx)
        node, ws, d = self._ws_dir(parent_inode)
        sname = new_entry_name(name)
        if not stat.S_ISREG(mode):
            raise _err(errno.EPERM)
        await self._writing(ws)
        if sname in self._children(ws, d):
            raise _err(errno.EEXIST)
        w = ws.new_entry(d, sname, KIND_FILE, mode=0o755 if mode & 0o111 else 0o644)
        child = self.ws_node(ws, w, node.ino)
        child.lookups += 1
        return self.attrs(child)

    async def setxattr(self, inode, name, value, ctx):
        """FUSE setxattr: raises ``FUSEError`` ENOTSUP in a workspace, EROFS elsewhere."""
        raise _err(errno.ENOTSUP if self.node(inode).kind == "ws" else errno.EROFS)

    async def removexattr(self, inode, name, ctx):
        """FUSE removexattr: raises ``FUSEError`` ENOTSUP in a workspace, EROFS elsewhere."""
        raise _err(errno.ENOTSUP if self.node(inode).kind == "ws" else errno.EROFS)

    async def access(self, inode, mode, ctx):
        """FUSE access: ``True``, except write access to a read-only node. Raises ``FUSEError``
        EROFS."""
        node = self.node(inode)
        if mode & os.W_OK and not self.writable(node):
            raise _err(errno.EROFS)
        return True

    # --- commits ----------------------------------------------------------------
    async def commit_workspace(self, ws: Workspace, reason: str = "", errors: bool = False) -> dict | None:
        """Commit ``ws`` now (in a worker thread; writes to it wait meanwhile).

        A failed commit keeps every staged change (it is retried on the next trigger)
        and is logged; with ``errors`` it is also raised to the caller as a
        ``FUSEError``: ``ENOSPC`` when the store's disk or map is full
        (:class:`~tvcfs.store.lmdb_store.StoreFull`), ``EIO`` otherwise. ``fsync``
        uses this, so a writer that asks for durability learns that it did not get it.
        """
        if not ws.pending:
            return None
        async with self._lock(ws):
            if not ws.pending:
                return None
            ws.committing = True
            try:
                res = await trio.to_thread.run_sync(ws.commit_txn, None, self.author)
                self._finish(ws, res)
            except Exception as e:
                full = isinstance(e, StoreFull)  # an expected condition: no traceback
                delay = ws.commit_failed(str(e) if full else f"{type(e).__name__}: {e}")
                log.error("commit of branch %s failed (%s): %s; staged changes kept in %s; "
                          "next automatic attempt in %.0f s", ws.branch, reason or "commit", e, ws.dir, delay,
                          exc_info=not full)
                if errors:
                    raise _err(errno.ENOSPC if full else errno.EIO) from None
                return None
            finally:
                ws.committing = False
        return res

    def _finish(self, ws: Workspace, res: dict) -> None:
        # the read snapshot must see the blocks just committed (reads of committed
        # files, commits/NEW lookups)
        self.reader.renew()
        ws.finish(res)
        self._sweep_fds()
        if res.get("commit"):
            self.commits_made += 1
            self.reader.stats.commits += 1
            log.info("%s: committed %s on %s (%d new bytes)", ws.branch, cid_str(res["commit"]),
                     res["branch"], res["new_bytes"])
        if res.get("reset"):
            # conflict: this workspace (and every handle open on it) now belongs to
            # the conflicts branch; the branch gets a fresh workspace at its head on
            # the next lookup, so drop the old tree from the kernel
            old = res["from_branch"]
            if self.workspaces.get(old) is ws:
                self.workspaces.pop(old)
            self.workspaces[ws.branch] = ws
            top = self.inodes.by_key.get(("refdir", HEADS))
            if top:
                _inval_entry(top, old.split("/")[0])
        for d, name in res.get("touched", []):
            if d.ino:
                _inval_entry(d.ino, name)
        self.refs_snapshot = self.repo.ref_db.all()

    def _arm_quiet(self, ws: Workspace) -> None:
        """The last write handle of ``ws`` closed: commit once it has been quiet for
        ``commit_delay`` (a timer task, so the commit does not wait for the next
        :meth:`tick`; ticks still catch changes made without write handles)."""
        if getattr(ws, "_quiet_armed", False):
            return
        ws._quiet_armed = True
        trio.lowlevel.spawn_system_task(self._quiet, ws, name="tvcfs-quiet-commit")

    async def _quiet(self, ws: Workspace) -> None:
        try:
            while True:
                wait = ws.last_activity + self.commit_delay - time.monotonic()
                if wait <= 0:
                    break
                await trio.sleep(wait)
            if ws.pending and not ws.writers and not ws.committing and not ws.deleted \
                    and time.monotonic() >= ws.retry_at:
                await self.commit_workspace(ws, reason="quiet")
        except Exception:  # a system task must not raise
            log.exception("quiet-period commit of %s", ws.branch)
        finally:
            ws._quiet_armed = False

    async def tick(self) -> None:
        """Called periodically: commit quiet branches with no open write handles."""
        now = time.monotonic()
        for ws in list(self.workspaces.values()):
            if ws.pending and not ws.writers and not ws.committing and now - ws.last_activity >= self.commit_delay \
                    and now >= ws.retry_at:  # after a failed commit: back off (Workspace.commit_failed)
                await self.commit_workspace(ws, reason="quiet")

    def shutdown(self) -> None:
        """On unmount: commit every pending workspace (synchronously), then remove
        the staging directories that hold nothing uncommitted."""
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        for ws in list(self.workspaces.values()):
            if ws.pending:
                try:
                    res = ws.commit_txn(None, self.author)
                    ws.finish(res)
                    log.info("unmount: committed branch %s", ws.branch)
                except StoreFull as e:
                    log.error("unmount commit of %s failed: %s; staged changes kept in %s "
                              "(`tvcfs recover` commits them once there is space)", ws.branch, e, ws.dir)
                except Exception:
                    log.exception("unmount commit of %s failed; staged changes kept in %s", ws.branch, ws.dir)
            if not ws.pending:
                ws.discard()


# --- request guard ---------------------------------------------------------------
# pyfuse3 lets any exception other than FUSEError escape from its main loop, which
# ends the mount. Every request handler is wrapped: a BlockNotFound (the read
# snapshot predates a commit made meanwhile by this mount or another process) renews
# the snapshot and retries once; a full disk (an OSError ENOSPC / EDQUOT, e.g. a
# namespace change whose journal line cannot be written: the workspace took the
# change back) is answered with that errno; anything else unexpected is logged and
# answered EIO.
_KEPT_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _answer(name, args, e: Exception):
    """The ``FUSEError`` a handler's unexpected exception ``e`` becomes (logged)."""
    if isinstance(e, OSError) and e.errno in _KEPT_ERRNOS:
        log.warning("%s%r failed: %s", name, args[:2], e.strerror or e)
        return pyfuse3.FUSEError(e.errno)
    log.exception("%s%r failed", name, args[:2])
    return pyfuse3.FUSEError(errno.EIO)
_HANDLERS = ("lookup", "getattr", "setattr", "readlink", "mknod", "mkdir", "unlink", "rmdir",
             "symlink", "rename", "link", "open", "read", "write", "flush", "release", "fsync",
             "opendir", "readdir", "releasedir", "fsyncdir", "statfs", "access", "create",
             "getxattr", "listxattr", "setxattr", "removexattr", "forget")


def _guard(name, fn):
    @functools.wraps(fn)
    async def wrapper(self, *args):
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except BlockNotFound:
            self.reader.renew()
        except Exception as e:
            raise _answer(name, args, e) from None
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            raise _answer(name, args, e) from None

    return wrapper


for _name in _HANDLERS:
    _fn = getattr(WritableOperations, _name, None)
    if _fn is not None and inspect.iscoroutinefunction(_fn):
        setattr(WritableOperations, _name, _guard(_name, _fn))
del _name, _fn
