"""Adding files and directory trees to the store (the write side of the DAG).

A file is planned into leaf spans by :func:`tvcfs.chunking.plan_spans`, each span is
read (``os.preadv`` into one of ``window + 1`` reusable page-aligned 1 MiB buffers)
and hashed on a small thread pool (hashlib releases the GIL, so two cores hash in
parallel) while the calling thread stores finished leaves in the open LMDB write
transaction, in order. What is hashed is exactly what is stored, even if the file
changes underneath. Memory: ``window + 1`` MiB of buffers per :class:`Importer`,
whatever the file size. ``docs/performance.md`` has the measurements.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import stat as statmod
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait

from .chunking import plan_spans
from .chunking.safetensors import MAX_LEAF
from .encoding.cid import RAW, cid_from_digest, make_cid
from .encoding.hamt import build_directory_dag
from .encoding.unixfs import EXEC_FILE_MODE, build_file, build_symlink, check_entry_name, printable_name
from .errors import TvcfsError

REPO_DIR = ".tvcfs"
_RENAME = "rename it and try again (nothing was stored or committed)"
_pool: ThreadPoolExecutor | None = None


def _hash_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="tvcfs-hash")
    return _pool


class FileChanged(TvcfsError):
    """A file changed size while it was being added."""


class DanglingSymlink(TvcfsError):
    """A symlink in a tree being added points to nothing (nothing is stored)."""


def stderr_note(text: str) -> None:
    """The default :attr:`Importer.note`: one line ``tvcfs: note: TEXT`` on stderr."""
    print(f"tvcfs: note: {text}", file=sys.stderr)


def _read_hash_into(fd: int, off: int, ln: int, buf: memoryview):
    """Read ``ln`` bytes at ``off`` into the reusable buffer ``buf`` and hash them.
    Returns ``(view of the bytes read, sha-256 digest)``."""
    view = buf[:ln]
    n = os.preadv(fd, [view], off)
    view = view[:n]
    return view, hashlib.sha256(view).digest()


class Importer:
    """Adds content to an open :class:`~tvcfs.store.lmdb_store.WriteTxn`.

    ``window``: leaves hashed ahead of storing (bounds memory at ``window`` MiB).
    ``stats``: ``files``, ``bytes`` (content bytes seen); the transaction itself
    counts ``new_bytes`` / ``new_blocks``. ``note``: called with one line of text
    for each symlink :meth:`add_tree` follows out of the tree (default
    :func:`stderr_note`; ``None`` says nothing). ``progress``: a callback
    ``progress(done, total)`` (content bytes read so far; ``total`` the bytes of the
    tree being added, counted by :meth:`add_tree` first) called as leaves are stored.
    """

    def __init__(self, txn, window: int = 16, note=stderr_note, progress=None):
        self.txn = txn
        self.note = note
        self.window = window
        self.files = 0
        self.bytes = 0
        self.progress = progress
        self._done = 0
        self._total: int | None = None
        self._bufs: list | None = None

    def _advance(self, nbytes: int) -> None:
        self._done += nbytes
        if self.progress is not None:
            self.progress(self._done, self._total)

    def _buffers(self) -> list:
        """``window + 1`` page-aligned 1 MiB read buffers, reused for every leaf of
        every file: a fresh 1 MiB ``bytes`` per leaf costs page faults on memory that
        is touched once (slow on this VM's balloon) and as much CPU as the copy."""
        if self._bufs is None:
            self._bufs = [memoryview(mmap.mmap(-1, MAX_LEAF)) for _ in range(self.window + 1)]
        return self._bufs

    def add_bytes(self, data: bytes, mode: int | None = None) -> tuple[bytes, int, int]:
        """Add an in-memory file (chunked exactly as the same bytes on disk would be).
        Returns ``(root_cid, tsize, size)``."""
        import tempfile

        with tempfile.TemporaryFile() as f:
            f.write(data)
            f.flush()
            return self.add_fd(f.fileno(), mode)

    def _leaf(self, data) -> tuple[bytes, int]:
        cid = make_cid(RAW, data)
        self.txn.put_block(cid, data)
        return cid, len(data)

    def add_path(self, path: str) -> tuple[bytes, int, int]:
        """Add a regular file. Returns ``(root_cid, tsize, size)`` (bytes).

        Executable files record mode 0755. Raises ``OSError`` for unreadable files and
        :class:`FileChanged` if the file shrinks while being read.
        """
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            mode = EXEC_FILE_MODE if st.st_mode & 0o111 else None
            return self.add_fd(f.fileno(), mode, st.st_size, path)

    def add_fd(self, fd: int, mode: int | None = None, size: int | None = None,
               name: str = "") -> tuple[bytes, int, int]:
        """Add the content of an open file descriptor (read with ``pread``)."""
        if size is None:
            size = os.fstat(fd).st_size

        class _F:
            def fileno(self_inner):
                return fd

        spans = plan_spans(_F(), size)
        if not spans:
            leaves = [self._leaf(b"")]
        elif len(spans) == 1 or max(ln for _, ln in spans) > MAX_LEAF:
            leaves = [self._leaf(os.pread(fd, ln, off)) for off, ln in spans]
            self._advance(size)
        else:
            # Leaf i is read into buffer i % (window + 1): the window + 1 buffers let
            # leaf i + window be read while leaf i is still being stored.
            leaves = []
            bufs = self._buffers()
            nbuf = len(bufs)
            pool = _hash_pool()
            pending: deque = deque()
            for i, (off, ln) in enumerate(spans[: self.window]):
                pending.append(pool.submit(_read_hash_into, fd, off, ln, bufs[i % nbuf]))
            nxt = len(pending)
            try:
                while pending:
                    data, digest = pending.popleft().result()
                    if nxt < len(spans):
                        off, ln = spans[nxt]
                        pending.append(pool.submit(_read_hash_into, fd, off, ln, bufs[nxt % nbuf]))
                        nxt += 1
                    cid = cid_from_digest(RAW, digest)
                    self.txn.put_block(cid, data)  # LMDB copies the bytes into the map
                    leaves.append((cid, len(data)))
                    self._advance(len(data))
            except BaseException:
                for fut in pending:  # no reader may still fill a buffer after we return
                    fut.cancel()
                wait(pending)
                raise
        if spans and sum(ln for _, ln in leaves) != sum(ln for _, ln in spans):
            raise FileChanged(f"file {name or fd} changed while it was being added")
        root, tsize, blocks = build_file(leaves, mode)
        for c, b in blocks:
            self.txn.put_block(c, b)
        self.files += 1
        self.bytes += size
        return root, tsize, size

    def add_symlink(self, target: str) -> tuple[bytes, int]:
        """Store a UnixFS symlink to ``target``; returns ``(cid, tsize)`` (binary CID, block
        size in bytes)."""
        cid, tsize, block = build_symlink(target)
        self.txn.put_block(cid, block)
        return cid, tsize

    def add_tree(self, path: str, exclude=(REPO_DIR,), _root: str | None = None,
                 _following: tuple = ()) -> tuple[bytes, int]:
        """Add a directory recursively (regular files, directories, symlinks; sockets,
        FIFOs and devices are skipped; ``exclude`` names are skipped at every level).
        Returns ``(dir_cid, tsize)``.

        Symlinks (docs/repository.md, "Symlinks"): a link whose target lies inside
        the tree being added stays a link; a link whose target lies outside it is
        followed and the target's content (a file, or a directory added the same way)
        is stored under the link's name, with one note through :attr:`note`; a
        dangling link raises :class:`DanglingSymlink` naming it. Raises
        :class:`~tvcfs.errors.InvalidEntryName` naming the file whose name cannot be
        stored (longer than 255 bytes, not UTF-8), :class:`TvcfsError` for a symlink
        whose target is not UTF-8 or a cycle of followed links."""
        if self.progress is not None and self._total is None:
            self._total = tree_size(path, exclude)
        root = _root if _root is not None else os.path.realpath(path)
        entries = []
        with os.scandir(path) as it:
            items = sorted(it, key=lambda e: e.name.encode("utf-8", "surrogateescape"))
        for e in items:
            if e.name in exclude:
                continue
            st = e.stat(follow_symlinks=False)
            if not (statmod.S_ISLNK(st.st_mode) or statmod.S_ISDIR(st.st_mode) or statmod.S_ISREG(st.st_mode)):
                continue
            check_entry_name(e.name, e.path, _RENAME)
            if statmod.S_ISLNK(st.st_mode):
                added = self._add_link(e.path, root, exclude, _following)
                if added is None:
                    continue
                cid, tsize = added
            elif statmod.S_ISDIR(st.st_mode):
                cid, tsize = self.add_tree(e.path, exclude, root, _following)
            else:
                cid, tsize, _ = self.add_path(e.path)
            entries.append((e.name, cid, tsize))
        return self.add_directory(entries)

    def _add_link(self, path: str, root: str, exclude, following: tuple) -> tuple[bytes, int] | None:
        """Add the symlink at ``path`` found in the tree rooted at ``root`` (a real
        path): a link (target inside the tree), or its followed content (outside).
        ``None`` when the target is a socket, FIFO or device (skipped, as unlinked)."""
        target = os.readlink(path)
        try:
            target.encode("utf-8")
        except UnicodeEncodeError:
            raise TvcfsError(f"{printable_name(path)}: the symlink's target is not valid UTF-8; "
                             "point it at a UTF-8 path and try again (nothing was stored or committed)"
                             ) from None
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError as err:
            why = "does not exist" if err.errno == errno.ENOENT else f"cannot be read: {err.strerror}"
            raise DanglingSymlink(f"{printable_name(path)}: dangling symlink (its target {printable_name(target)} "
                                  f"{why}): restore the target or remove the link, then try again "
                                  "(nothing was stored or committed)") from None
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return self.add_symlink(target)
        if statmod.S_ISDIR(st.st_mode):
            # following: the roots of the trees being added; a link to one of them or
            # to a directory above one would add it again, without end
            if any(f == real or f.startswith(real.rstrip(os.sep) + os.sep) for f in following + (root,)):
                raise TvcfsError(f"{printable_name(path)}: symlink to {printable_name(target)} makes a cycle "
                                 "of followed directories: replace it by a copy or remove it, then try again "
                                 "(nothing was stored or committed)")
            added = self.add_tree(real, exclude, real, following + (root, real))
        elif statmod.S_ISREG(st.st_mode):
            added = self.add_path(real)[:2]
        else:
            return None
        if self.note is not None:
            self.note(f"{printable_name(path)} is a symlink to {printable_name(target)} outside "
                      f"{printable_name(root)}: stored its content")
        return added

    def add_directory(self, entries) -> tuple[bytes, int]:
        """Store the directory over ``entries`` ``[(name, cid, tsize)]``: one node, or
        HAMT shards when that node would pass the threshold (docs/format.md).
        Returns ``(dir_cid, tsize)``."""
        cid, tsize, blocks = build_directory_dag(entries)
        for c, b in blocks:
            self.txn.put_block(c, b)
        return cid, tsize


def tree_size(path: str, exclude=(REPO_DIR,)) -> int:
    """Bytes of the regular files below ``path`` (symlinks not followed, ``exclude``
    names skipped at every level): the total a progress bar counts towards. Entries
    that cannot be read count 0 (the import itself reports them)."""
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                if e.name in exclude:
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        total += tree_size(e.path, exclude)
                    elif e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
                except OSError:
                    pass
    except OSError:
        pass
    return total
