#!/usr/bin/env python3
"""The smallest pyfuse3 file system that serves one file: a baseline for the mount.

Usage: ``python scripts/bench/minifs.py FILE MOUNTPOINT`` (foreground; unmount with
``fusermount3 -u MOUNTPOINT``). The mount shows ``MOUNTPOINT/f`` with the bytes of
``FILE`` (read from an mmap of it, zero-copy), opened with ``keep_cache`` and long
entry/attribute timeouts: what tvcfs does for immutable files, with nothing else.
``scripts/bench/mount_read.py`` reads the same bytes through it to tell the kernel's
FUSE page-cache path (a re-read never reaches user space) from tvcfs's own cost.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import sys

import pyfuse3
import trio


class OneFile(pyfuse3.Operations):
    """``/f`` = the bytes of ``path`` (read-only)."""

    def __init__(self, path: str):
        super().__init__()
        fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(fd).st_size
        self.map = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        os.close(fd)
        self.view = memoryview(self.map)

    async def getattr(self, inode, ctx=None):
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.attr_timeout = a.entry_timeout = 3600
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_size = stat.S_IFDIR | 0o555, 0
        else:
            a.st_mode, a.st_size = stat.S_IFREG | 0o444, self.size
        return a

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != b"f":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(pyfuse3.ROOT_INODE + 1)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh, off, size):
        return self.view[off:off + size]


def main() -> int:
    path, mnt = sys.argv[1], sys.argv[2]
    pyfuse3.init(OneFile(path), mnt, set(pyfuse3.default_options) | {"fsname=minifs"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
