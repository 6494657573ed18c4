"""pyfuse3 operations of the tvcfs mount (read side). See :mod:`tvcfs.fs.nodes` for
the layout and ``docs/mount.md`` for caching and consistency rules."""

from __future__ import annotations

import errno
import json
import logging
import os
import time

import pyfuse3

from ..dag import KIND_DIR, KIND_FILE, KIND_SYMLINK, read_dir, stat_node
from ..encoding.cid import cid_str
from ..encoding.unixfs import NAME_MAX, entry_name_error, printable_name
from ..errors import BlockNotFound, CorruptBlock, MalformedObject, TvcfsError
from ..refs import HEADS, TAGS
from .nodes import InodeTable, Node
from .reader import BlockReader

log = logging.getLogger("tvcfs.fs")

IMMUTABLE_TIMEOUT = 3600.0  # seconds: entries/attrs inside a commit never change
DYNAMIC_TIMEOUT = 1.0       # seconds: ref-level entries (also invalidated on change)
ROOT_NAMES = ("HEAD", "branches", "commits", "tags", "hf", ".tvcfs")
CTL_FILES = ("stats", "prefetch")


def _is_full_cid(name: str) -> bool:
    from ..encoding.cid import is_cid_str

    return len(name) > 40 and is_cid_str(name)


def _err(code):
    return pyfuse3.FUSEError(code)


def new_entry_name(name: bytes) -> str:
    """The ``str`` of a name a create/mkdir/symlink/rename/link request brings.
    Raises ``FUSEError``: ``ENAMETOOLONG`` over 255 bytes, ``EILSEQ`` if it is not
    UTF-8, ``EINVAL`` otherwise invalid (:func:`tvcfs.encoding.unixfs.entry_name_error`)."""
    err = entry_name_error(name)
    if err is not None:
        raise _err(err[0])
    return name.decode("utf-8")


def replies_with_buffers() -> bool:
    """Whether this process's pyfuse3 answers a read handler that returns a tuple of
    buffers with one ``fuse_reply_iov`` (built by scripts/install.sh with
    packaging/pyfuse3-read-reply-nogil.patch, version label ``+tvcfs.nogilread2`` or
    later); the stock pyfuse3 takes one buffer only. Read from the installed
    distribution's version (a few ms: once per mount)."""
    import importlib.metadata
    import re

    try:
        m = re.search(r"\+tvcfs\.nogilread(\d+)$", importlib.metadata.version("pyfuse3"))
    except importlib.metadata.PackageNotFoundError:
        return False
    return m is not None and int(m.group(1)) >= 2


def reply_len(data) -> int:
    """Bytes of a read's reply: one buffer, or a tuple of them (``BlockReader.read``
    with ``parts``)."""
    return sum(map(len, data)) if isinstance(data, tuple) else len(data)


class ReadOnlyOperations(pyfuse3.Operations):
    """The read side of the mount: lookups, attributes, readdir, open/read.

    ``repo``: an open :class:`tvcfs.Repo`; blocks are checked against their CIDs
    before they are first served unless ``repo.store.verify_reads`` is off (see
    :class:`BlockReader`). Writes anywhere fail with ``EROFS``.
    """

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, repo, **_ignored):
        super().__init__()
        self.repo = repo
        self.reader = BlockReader(repo.store)
        # a request over several leaves answered with their buffers, not a joined copy
        self.reply_parts = replies_with_buffers()
        self.inodes = InodeTable()
        self.root = self.inodes.add_root()
        self.uid, self.gid = os.getuid(), os.getgid()
        self.handles: dict[int, object] = {}
        self.handle_paths: dict[int, str] = {}  # fh -> path in the mount (error messages)
        self.next_fh = 1
        self.dir_handles: dict[int, list] = {}
        self.mount_time = int(time.time())
        self.refs_snapshot: dict = {}
        self.commit_times: dict[bytes, int] = {}
        self._commit_list: tuple | None = None

    # --- helpers ---------------------------------------------------------------
    def node(self, ino: int) -> Node:
        """The node of inode ``ino``. Raises ``pyfuse3.FUSEError`` ENOENT for an unknown inode."""
        n = self.inodes.get(ino)
        if n is None:
            raise _err(errno.ENOENT)
        return n

    def _get(self, cid: bytes) -> bytes:
        return bytes(self.reader.get(cid))

    def commit_time(self, cid: bytes) -> int:
        """The timestamp (Unix seconds) of commit ``cid``, cached. Raises
        :class:`BlockNotFound`, :class:`MalformedObject` for an unreadable commit."""
        t = self.commit_times.get(cid)
        if t is None:
            t = self.repo.read_commit(cid).timestamp
            self.commit_times[cid] = t
        return t

    def writable(self, node: Node) -> bool:
        """Whether ``node`` may be written (overridden by the writable mount)."""
        return False

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        """The node's attributes: mode, size in bytes (a tree file's size, the HEAD link's
        target, the stats file's content), times (the commit's timestamp inside a commit,
        else the mount time), and kernel cache timeouts (long for immutable content, 0 where
        a ref decides)."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.st_mode = node.mode(self.writable(node))
        a.st_nlink = 2 if node.is_dir else 1
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_rdev = 0
        a.st_blksize = 1 << 20
        size = 0
        t = self.mount_time
        if node.kind == "tree":
            e = node.entry
            size = e.size if e.kind != KIND_DIR else 0
            t = node.timestamp
        elif node.kind == "head":
            size = len(self._head_target())
        elif node.kind == "ctlfile" and node.name == "stats":
            size = len(self._ctl_content(node.name))
        elif node.kind == "hfref":
            size = 40  # a commit id (hf.layout.commit_id), no newline
        a.st_size = size
        a.st_blocks = (size + 511) // 512
        ns = t * 1_000_000_000
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        immutable = node.kind == "tree"
        a.attr_timeout = IMMUTABLE_TIMEOUT if immutable else DYNAMIC_TIMEOUT
        if immutable and (node.path or node.view == "hf" or (node.view == "commits" and _is_full_cid(node.view_name))):
            a.entry_timeout = IMMUTABLE_TIMEOUT  # inside a commit, commits/<full CID>, hf/…/snapshots/<id>
        elif immutable or node.kind in ("head", "hfref"):
            a.entry_timeout = 0  # tags/NAME, commits/NAME~N, HEAD: a ref decides, ask every time
        else:
            a.entry_timeout = DYNAMIC_TIMEOUT
        return a

    def _head_target(self) -> bytes:
        b = self.repo.head_branch()
        return f"branches/{b}".encode() if b else b"commits/" + (cid_str(self.repo.head()).encode() if self.repo.head() else b"")

    def _ctl_content(self, name: str) -> bytes:
        if name == "stats":
            d = self.reader.stats.as_dict()
            d["open_files"] = len(self.handles)
            d["inodes"] = len(self.inodes.by_ino)
            # page-ins of leaves not (yet) in the store: each switched the map to exact reads
            d["preload_absent"] = self.reader.preloader.absent
            d["preload_exact"] = self.reader.preloader.exact_page_ins
            d["preload_skipped"] = self.reader.preloader.skipped
            # stored blocks hashed when first served (a lazy mount's fetched leaves are not:
            # they were hashed against their CIDs as they arrived)
            d["read_checks"] = getattr(self.repo.store, "read_checks", 0)
            if self.reader.remote is not None:  # lazy mount: its block source (tvcfs.store.source)
                d["remote"] = self.reader.remote.stats_dict()
            blocks = self.repo._blocks
            if blocks is not None and hasattr(blocks, "stats"):  # a router: per-tier counters
                d["tiers"] = blocks.stats()
            return (json.dumps(d, indent=1, sort_keys=True) + "\n").encode()
        return b""

    def _tree_node(self, parent: Node, view: str, view_name: str, commit: bytes, path: str,
                   entry) -> Node:
        key = ("tree", view, view_name, commit, path)

        def make(ino):
            return Node(ino, "tree", key, parent=parent.ino, name=entry.name, view=view,
                        view_name=view_name, commit=commit, timestamp=self.commit_time(commit),
                        path=path, entry=entry)

        return self.inodes.intern(key, make)

    def _rev_root(self, parent: Node, view: str, name: str, commit: bytes, view_name: str | None = None) -> Node:
        """The directory ``name`` in ``parent`` holding ``commit``'s tree, reached
        through ``view`` as ``view_name`` (default ``name``)."""
        tree = self.repo.read_commit(commit).tree
        entry = stat_node(self._get, tree, name)
        return self._tree_node(parent, view, name if view_name is None else view_name, commit, "", entry)

    def _refdir(self, parent: Node, prefix: str, name: str) -> Node:
        return self.inodes.intern(("refdir", prefix), lambda ino: Node(
            ino, "refdir", (), parent=parent.ino, name=name, prefix=prefix))

    def _child(self, parent: Node, name: str) -> Node:
        """Resolve ``name`` in ``parent``; raises ``FUSEError(ENOENT)``."""
        k = parent.kind
        if k == "root":
            if name == "HEAD":
                return self.inodes.intern(("head",), lambda ino: Node(ino, "head", (), name="HEAD"))
            if name == "branches":
                return self._refdir(parent, HEADS, name)
            if name == "tags":
                return self._refdir(parent, TAGS, name)
            if name == "commits":
                return self.inodes.intern(("commits",), lambda ino: Node(ino, "commits", (), name=name))
            if name == ".tvcfs":
                return self.inodes.intern(("ctl",), lambda ino: Node(ino, "ctl", (), name=name))
            if name == "hf":
                return self.inodes.intern(("hf",), lambda ino: Node(ino, "hf", (), name=name))
            raise _err(errno.ENOENT)
        if k.startswith("hf"):
            return self._hf_child(parent, name)
        if k == "ctl":
            if name in CTL_FILES:
                return self.inodes.intern(("ctlfile", name), lambda ino: Node(
                    ino, "ctlfile", (), parent=parent.ino, name=name))
            raise _err(errno.ENOENT)
        if k == "refdir":
            full = parent.prefix + name
            cid = self.repo.ref_db.get(full)
            view = "branches" if parent.prefix.startswith(HEADS) else "tags"
            if cid is not None and not cid.startswith(b"ref: "):
                short = full[len(HEADS if view == "branches" else TAGS):]
                return self._rev_root(parent, view, short, cid)
            if self.repo.ref_db.all(full + "/"):
                return self._refdir(parent, full + "/", name)
            raise _err(errno.ENOENT)
        if k == "commits":
            try:
                cid = self.repo.resolve(name)
            except (TvcfsError, ValueError):
                raise _err(errno.ENOENT) from None
            return self._rev_root(parent, "commits", name, cid)
        if k == "tree":
            e = parent.entry
            if e.kind != KIND_DIR:
                raise _err(errno.ENOTDIR)
            children = self._dir_entries(e.cid)
            child = children.get(name)
            if child is None:
                raise _err(errno.ENOENT)
            path = f"{parent.path}/{name}" if parent.path else name
            return self._tree_node(parent, parent.view, parent.view_name, parent.commit, path, child)
        raise _err(errno.ENOENT)

    def _dir_entries(self, cid: bytes) -> dict:
        cache = self.__dict__.setdefault("_dircache", {})
        d = cache.get(cid)
        if d is None:
            try:
                d = read_dir(self._get, cid)
            except (BlockNotFound, CorruptBlock, MalformedObject) as e:
                log.error("directory %s: %s", cid_str(cid), e)
                raise _err(errno.EIO) from None
            if len(cache) > 4096:
                cache.clear()
            cache[cid] = d
        return d

    def _list(self, node: Node) -> list:
        """``[(name, Node)]`` of a directory node, in readdir order."""
        k = node.kind
        if k == "root":
            names = list(ROOT_NAMES)
        elif k == "ctl":
            names = list(CTL_FILES)
        elif k == "refdir":
            names = sorted({r[len(node.prefix):].split("/", 1)[0] for r in self.repo.ref_db.all(node.prefix)})
        elif k == "commits":
            names = [cid_str(c) for c in self.reachable_commits()]
        elif k == "tree":
            names = list(self._dir_entries(node.entry.cid))
        elif k.startswith("hf") and node.is_dir:
            names = self._hf_names(node)
        else:
            raise _err(errno.ENOTDIR)
        out = []
        for name in names:
            try:
                out.append((name, self._child(node, name)))
            except pyfuse3.FUSEError:
                continue
        return out

    # --- the Hugging Face cache view (hf/; docs/mount.md) -------------------------
    def _hf_repos(self) -> dict:
        """``{repo_id: ref prefix}`` shown under ``hf/`` (:func:`tvcfs.hf.layout.repos`)."""
        from ..hf.layout import repos

        return repos(self.repo.store)

    def _hf_revisions(self, repo_id: str) -> dict:
        """``{HF revision: commit CID}`` of ``repo_id``'s branches and tags."""
        from ..hf.layout import revisions

        prefixes = self._hf_repos()
        if repo_id not in prefixes:
            raise _err(errno.ENOENT)
        return revisions(self.repo.ref_db.all(), prefixes[repo_id], prefixes.values())

    def _hf_snapshots(self, repo_id: str) -> dict:
        """``{commit id: CID}`` of every commit reachable from ``repo_id``'s refs,
        newest first (cached per refs state), plus ids resolved through ``refs/REV``."""
        from ..hf.layout import commit_id

        revs = self._hf_revisions(repo_id)
        key = (repo_id, tuple(sorted(revs.items())))
        cache = self.__dict__.setdefault("_hf_snap_cache", {})
        out = cache.get(key)
        if out is None:
            cids = sorted(self.repo.ancestors(revs.values(), missing_ok=True),
                          key=lambda c: (-self.commit_time(c), c))
            out = {}
            for c in cids:
                out.setdefault(commit_id(c, self.repo.read_commit(c)), c)
            if len(cache) > 64:
                cache.clear()
            cache[key] = out
        extra = self.__dict__.setdefault("_hf_extra", {})
        return {**extra.get(repo_id, {}), **out}

    def _hf_resolve(self, repo_id: str, rev: str) -> bytes | None:
        """The commit HF revision ``rev`` names in ``repo_id``: one of its refs, else
        any tvcfs revision (a CID, ``main~1``); ``None`` if none."""
        from ..hf.layout import commit_id

        cid = self._hf_revisions(repo_id).get(rev)
        if cid is None:
            prefix = self._hf_repos()[repo_id]
            for r in ((prefix + rev) if prefix else rev, rev):
                try:
                    cid = self.repo.resolve(r)
                    break
                except (TvcfsError, ValueError):
                    continue
            else:
                return None
            # reachable from no ref of the repository, perhaps: remember its id
            self.__dict__.setdefault("_hf_extra", {}).setdefault(repo_id, {})[
                commit_id(cid, self.repo.read_commit(cid))] = cid
        return cid

    def _hf_ref_id(self, node: Node) -> str:
        from ..hf.layout import commit_id

        cid = self._hf_resolve(node.extra["repo_id"], node.extra["rev"])
        if cid is None:
            raise _err(errno.ENOENT)
        return commit_id(cid, self.repo.read_commit(cid))

    def _hf_node(self, parent: Node, kind: str, name: str, repo_id: str = "", prefix: str = "", **extra) -> Node:
        key = (kind, repo_id, prefix, extra.get("rev", ""))
        return self.inodes.intern(key, lambda ino: Node(ino, kind, (), parent=parent.ino, name=name,
                                                        prefix=prefix, extra=dict(extra, repo_id=repo_id)))

    def _hf_child(self, parent: Node, name: str) -> Node:
        """Lookup inside ``hf/``: ``models--ORG--NAME/{refs,snapshots}/…``."""
        from ..hf.layout import folder_name

        k, rid = parent.kind, parent.extra.get("repo_id", "")
        if k == "hf":
            for repo_id in self._hf_repos():
                if folder_name(repo_id) == name:
                    return self._hf_node(parent, "hfrepo", name, repo_id)
        elif k == "hfrepo":
            if name == "refs":
                return self._hf_node(parent, "hfrefs", name, rid, "")
            if name == "snapshots":
                return self._hf_node(parent, "hfsnaps", name, rid)
        elif k == "hfrefs":
            rev = parent.prefix + name
            revs = self._hf_revisions(rid)
            if rev not in revs and any(r.startswith(rev + "/") for r in revs):
                return self._hf_node(parent, "hfrefs", name, rid, rev + "/")
            if self._hf_resolve(rid, rev) is not None:
                return self._hf_node(parent, "hfref", name, rid, rev=rev)
        elif k == "hfsnaps":
            cid = self._hf_snapshots(rid).get(name)
            if cid is not None:
                return self._rev_root(parent, "hf", name, cid, f"{folder_name(rid)}/snapshots/{name}")
        raise _err(errno.ENOENT)

    def _hf_names(self, node: Node) -> list:
        from ..hf.layout import folder_name

        k, rid = node.kind, node.extra.get("repo_id", "")
        if k == "hf":
            return sorted(folder_name(r) for r in self._hf_repos())
        if k == "hfrepo":
            return ["refs", "snapshots"]
        if k == "hfrefs":
            revs = [r[len(node.prefix):] for r in self._hf_revisions(rid) if r.startswith(node.prefix)]
            return sorted({r.split("/", 1)[0] for r in revs})
        return list(self._hf_snapshots(rid))

    def reachable_commits(self) -> list:
        """Commits reachable from refs, newest first (cached per refs state)."""
        refs = self.repo.refs()
        key = tuple(sorted(refs.items()))
        if self._commit_list and self._commit_list[0] == key:
            return self._commit_list[1]
        cids = list(self.repo.ancestors(refs.values(), missing_ok=True))
        cids.sort(key=lambda c: (-self.commit_time(c), c))
        self._commit_list = (key, cids)
        return cids

    # --- pyfuse3 operations ----------------------------------------------------
    async def lookup(self, parent_inode, name, ctx=None):
        """FUSE lookup: the attributes of ``name`` (bytes) in directory ``parent_inode``,
        counting a lookup. Raises ``FUSEError`` ENAMETOOLONG over ``NAME_MAX`` bytes, ENOENT
        for a missing or non-UTF-8 name, ``.`` and ``..``."""
        parent = self.node(parent_inode)
        if len(name) > NAME_MAX:  # FUSE passes names up to 1024 bytes
            raise _err(errno.ENAMETOOLONG)
        try:
            sname = name.decode("utf-8")
        except UnicodeDecodeError:  # no entry can have it (names are UTF-8)
            raise _err(errno.ENOENT) from None
        if sname in (".", ".."):
            raise _err(errno.ENOENT)
        node = self._child(parent, sname)
        node.lookups += 1
        return self.attrs(node)

    async def forget(self, inode_list):
        """FUSE forget: drop ``n`` lookups of each ``(inode, n)``; a tree or workspace node
        with none left is freed."""
        for ino, n in inode_list:
            self.inodes.forget(ino, n)

    async def getattr(self, inode, ctx=None):
        """FUSE getattr: :meth:`attrs` of ``inode``. Raises ``FUSEError`` ENOENT for an unknown
        inode."""
        return self.attrs(self.node(inode))

    async def readlink(self, inode, ctx):
        """FUSE readlink: the target (bytes) of HEAD or a tree symlink. Raises ``FUSEError``
        EINVAL for other nodes."""
        node = self.node(inode)
        if node.kind == "head":
            return self._head_target()
        if node.kind == "tree" and node.entry.kind == KIND_SYMLINK:
            return node.entry.target.encode()
        raise _err(errno.EINVAL)

    async def opendir(self, inode, ctx):
        """FUSE opendir: a directory handle holding a snapshot of the listing. Raises
        ``FUSEError`` ENOTDIR for a non-directory."""
        node = self.node(inode)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        fh = self.next_fh
        self.next_fh += 1
        self.dir_handles[fh] = (inode, self._list(node))
        return fh

    async def readdir(self, fh, start_id, token):
        """FUSE readdir: the handle's entries from ``start_id``, skipping names that cannot be
        listed (empty, ``.``, ``..``, containing ``/`` or NUL)."""
        entries = self.dir_handles.get(fh, (0, []))[1]
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            bad = entry_name_error(name)
            if bad and bad[0] == errno.EINVAL:
                # '', '.', '..', '/' or NUL from a hostile tree (a CAR, a peer): never
                # listed ('/' would make the kernel fail the whole readdir with EIO)
                log.warning("readdir: skipping invalid entry name %r", printable_name(name))
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self.attrs(node), i + 1):
                return
            node.lookups += 1

    async def releasedir(self, fh):
        """FUSE releasedir: drop the directory handle."""
        self.dir_handles.pop(fh, None)

    async def open(self, inode, flags, ctx):
        """FUSE open: a handle on a tree file (its index loaded; page cache kept), a ``.tvcfs``
        control file (``prefetch`` is writable) or an ``hf`` ref file (direct I/O). Raises
        ``FUSEError`` EROFS for a write open, EISDIR/EINVAL for a non-file, EIO when the
        file's index cannot be read."""
        node = self.node(inode)
        if node.kind == "hfref":
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
                raise _err(errno.EROFS)
            fh = self.next_fh
            self.next_fh += 1
            self.handles[fh] = ("hfref", self._hf_ref_id(node).encode())
            return pyfuse3.FileInfo(fh=fh, direct_io=True)  # the ref may move: never cached
        if node.kind == "ctlfile":
            wr = flags & (os.O_WRONLY | os.O_RDWR)
            if wr and node.name != "prefetch":
                raise _err(errno.EROFS)
            fh = self.next_fh
            self.next_fh += 1
            self.handles[fh] = ("ctlw", node.name) if wr else ("ctl", self._ctl_content(node.name))
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        if node.kind != "tree" or node.entry.kind != KIND_FILE:
            raise _err(errno.EISDIR if node.is_dir else errno.EINVAL)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise _err(errno.EROFS)
        try:
            idx = await self.reader.index_async(node.entry.cid)
        except (BlockNotFound, CorruptBlock, MalformedObject) as e:
            log.error("open %s: %s", node.path, e)
            raise _err(errno.EIO) from None
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = idx
        self.handle_paths[fh] = "/".join(x for x in (node.view, node.view_name, node.path) if x)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh, off, size):
        """FUSE read: up to ``size`` bytes at offset ``off`` (bytes, or a list of buffers for a
        zero-copy reply), scheduling readahead. Raises ``FUSEError`` EBADF for an unknown
        handle, EIO when a block is missing or corrupt (the error is recorded for ``tvcfs
        status``)."""
        h = self.handles.get(fh)
        if h is None:
            raise _err(errno.EBADF)
        if isinstance(h, tuple):
            return h[1][off:off + size]
        try:
            data = await self.reader.read_async(h, off, size, self.reply_parts)
        except (BlockNotFound, CorruptBlock, MalformedObject) as e:
            self.read_failed(self.handle_paths.get(fh) or cid_str(h.cid), off, size, e)
            raise _err(errno.EIO) from None
        self.reader.readahead(fh, h, off, reply_len(data))
        return data

    def read_failed(self, path: str, off: int, size: int, e: Exception) -> None:
        """A read of ``path`` (in the mount) at byte ``off`` (``size`` bytes) fails
        with ``EIO`` because of ``e``: count and log it, and tell a lazy mount's
        fetcher (its status file shows the last failed read, docs/lazy.md)."""
        self.reader.stats.errors += 1
        log.error("read of %s at %d+%d: %s", path, off, size, e)
        if self.reader.remote is not None:  # a lazy mount's block source
            self.reader.remote.note_read_error(path, str(e))

    async def release(self, fh):
        """FUSE release: drop the file handle and its readahead state."""
        self.handle_paths.pop(fh, None)
        self.handles.pop(fh, None)
        self.reader.forget_handle(fh)

    async def statfs(self, ctx):
        """FUSE statfs: the repository disk's sizes; ``f_files`` the number of blocks stored."""
        s = pyfuse3.StatvfsData()
        try:
            vfs = os.statvfs(self.repo.control)
            s.f_bsize, s.f_frsize = vfs.f_bsize, vfs.f_frsize
            s.f_blocks, s.f_bfree, s.f_bavail = vfs.f_blocks, vfs.f_bfree, vfs.f_bavail
        except OSError:
            s.f_bsize = s.f_frsize = 4096
        st = self.repo.store.stat()
        s.f_files = st["blocks"]
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    async def access(self, inode, mode, ctx):
        """FUSE access: ``True``, except for write access to a read-only node. Raises
        ``FUSEError`` EROFS."""
        node = self.node(inode)
        if mode & os.W_OK and not self.writable(node):
            raise _err(errno.EROFS)
        return True

    # --- refusals of the read-only views -------------------------------------
    async def setattr(self, inode, attr, fields, fh, ctx):
        """FUSE setattr: always raises ``FUSEError`` EROFS."""
        raise _err(errno.EROFS)

    async def create(self, parent_inode, name, mode, flags, ctx):
        """FUSE create: always raises ``FUSEError`` EROFS."""
        raise _err(errno.EROFS)

    async def mkdir(self, parent_inode, name, mode, ctx):
        """FUSE mkdir: always raises ``FUSEError`` EROFS."""
        raise _err(errno.EROFS)

    async def unlink(self, parent_inode, name, ctx):
        """FUSE unlink: always raises ``FUSEError`` EROFS."""
        raise _err(errno.EROFS)

    async def rmdir(self, parent_inode, name, ctx):
        """FUSE rmdir: always raises ``FUSEError`` EROFS."""
        raise _err(errno.EROFS)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        """FUSE rename: always raises ``FUSEError`` EROFS."""
        raise _err(errno.EROFS)

    async def symlink(self, parent_inode, name, target, ctx):
        """FUSE symlink: always raises ``FUSEError`` EROFS."""
        raise _err(errno.EROFS)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        """FUSE link: always raises ``FUSEError`` EROFS."""
        raise _err(errno.EROFS)

    async def write(self, fh, off, buf):
        """FUSE write: to ``.tvcfs/prefetch``, one path per line to prefetch (returns
        ``len(buf)``). Raises ``FUSEError`` EROFS elsewhere."""
        h = self.handles.get(fh)
        if isinstance(h, tuple) and h[0] == "ctlw":
            for line in bytes(buf).decode("utf-8", "replace").splitlines():
                if line.strip():
                    self.prefetch_path(line.strip())
            return len(buf)
        raise _err(errno.EROFS)

    def _resolve(self, path: str) -> Node:
        node = self.root
        for part in [p for p in path.split("/") if p]:
            node = self._child(node, part)
        return node

    def _file_cids(self, node: Node, out: list, depth: int = 0) -> None:
        if node.kind == "tree" and node.entry.kind == KIND_FILE:
            out.append(node.entry.cid)
        elif node.kind == "ws" and node.extra["entry"].kind == KIND_FILE and node.extra["entry"].cid:
            out.append(node.extra["entry"].cid)
        elif node.is_dir and node.kind in ("tree", "ws") and depth < 64:
            for _, child in self._list(node):
                self._file_cids(child, out, depth + 1)

    def prefetch_path(self, path: str) -> int:
        """Schedule every file at ``path`` (relative to the mount root, e.g.
        ``branches/main``) for lowest-priority prefetch. Returns bytes scheduled;
        unknown paths are logged and ignored."""
        try:
            node = self._resolve(path)
        except pyfuse3.FUSEError:
            log.info("prefetch: no such path %s", path)
            return 0
        cids: list = []
        self._file_cids(node, cids)
        n = 0
        for cid in cids:
            try:
                n += self.reader.prefetch(self.reader.index(cid))
            except (BlockNotFound, CorruptBlock, MalformedObject) as e:
                log.info("prefetch %s: %s", path, e)
        return n

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        """FUSE mknod: always raises ``FUSEError`` EROFS."""
        raise _err(errno.EROFS)

    async def setxattr(self, inode, name, value, ctx):
        """FUSE setxattr: always raises ``FUSEError`` EROFS."""
        raise _err(errno.EROFS)

    async def removexattr(self, inode, name, ctx):
        """FUSE removexattr: always raises ``FUSEError`` EROFS."""
        raise _err(errno.EROFS)

    # --- ref changes -----------------------------------------------------------
    def refs_changed(self) -> list:
        """Compare refs with the last snapshot; invalidate the kernel's entries of
        changed branches/tags (and of ``commits/NAME`` lookups by name). Returns
        the changed ref names."""
        refs = self.repo.ref_db.all()
        old = self.refs_snapshot
        self.refs_snapshot = refs
        changed = [r for r in set(old) | set(refs) if old.get(r) != refs.get(r)]
        if not old:
            return []
        for ref in changed:
            if ref == "HEAD":
                head = self.inodes.by_key.get(("head",))
                if head:
                    _inval_inode(head)
                continue
            for prefix in (HEADS, TAGS):
                if ref.startswith(prefix):
                    rest = ref[len(prefix):]
                    parts = rest.split("/")
                    parent_key = ("refdir", prefix + "/".join(parts[:-1]) + ("/" if len(parts) > 1 else ""))
                    pino = self.inodes.by_key.get(parent_key)
                    if pino:
                        _inval_entry(pino, parts[-1])
                    if len(parts) > 1:
                        top = self.inodes.by_key.get(("refdir", prefix))
                        if top:
                            _inval_entry(top, parts[0])
        commits = self.inodes.by_key.get(("commits",))
        if commits and changed:
            for key, ino in list(self.inodes.by_key.items()):
                if key[0] == "tree" and key[1] == "commits" and key[4] == "" and not key[2].startswith("bafy"):
                    _inval_entry(commits, key[2])
        return changed


def _inval_entry(parent_ino: int, name: str) -> None:
    try:
        pyfuse3.invalidate_entry_async(parent_ino, os.fsencode(name), ignore_enoent=True)
    except Exception as e:  # the kernel may not know the entry
        log.debug("invalidate_entry %s: %s", name, e)


def _inval_inode(node: Node) -> None:
    try:
        pyfuse3.invalidate_inode(node.ino, attr_only=True)
    except OSError:
        pass
