"""The mount's namespace: inodes for the root, ref directories, the commits directory
and the trees of revisions (docs/mount.md)::

    MOUNT/HEAD            symlink -> branches/<HEAD's branch>
    MOUNT/branches/NAME/  the tree of the branch's head
    MOUNT/tags/NAME/      the tree of the tagged commit
    MOUNT/commits/REV/    any revision: full CID, unique prefix, branch, tag, NAME~N
    MOUNT/hf/models--ORG--NAME/refs/REVISION        the commit id (40 hex) of a branch/tag
    MOUNT/hf/models--ORG--NAME/snapshots/ID/        that commit's tree (huggingface_hub's layout)

Every tree node is keyed by the commit it was looked up in, so its content never
changes: when a branch moves, the mount invalidates the kernel's entry for
``branches/NAME`` and the next lookup yields new inodes, while files already open
keep reading the commit they opened.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from ..dag import KIND_DIR, KIND_FILE, KIND_SYMLINK, Entry

ROOT_INODE = 1


@dataclass(eq=False)
class Node:
    """One inode. ``kind``: ``root``, ``refdir`` (a ref namespace such as
    ``refs/heads/``), ``commits``, ``head`` (the HEAD symlink), ``tree`` (a file,
    directory or symlink inside a revision), ``ctl`` / ``ctlfile`` (``.tvcfs/``),
    the Hugging Face cache view: ``hf`` (``hf/``), ``hfrepo``
    (``hf/models--ORG--NAME``), ``hfrefs`` (``refs/`` or a directory in it; ``prefix``
    holds the revision path so far), ``hfref`` (a ref file), ``hfsnaps``
    (``snapshots/``; its entries are ``tree`` nodes of view ``hf``).
    ``key`` is unique per inode; ``lookups`` counts kernel references."""

    ino: int
    kind: str
    key: tuple
    parent: int = ROOT_INODE
    name: str = ""
    prefix: str = ""            # refdir: full ref prefix ("refs/heads/")
    view: str = ""              # tree: "branches", "tags" or "commits"
    view_name: str = ""         # tree: the branch/tag/revision name it was reached by
    commit: bytes = b""         # tree: the commit it belongs to
    timestamp: int = 0          # tree: the commit's time (mtime), seconds
    path: str = ""              # tree: path inside the commit's tree
    entry: Entry | None = None  # tree: the DAG entry
    lookups: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        """Whether the node is a directory (a tree or workspace directory, or one of the
        synthetic directories: root, refs, commits, .tvcfs, hf/...)."""
        if self.kind == "tree":
            return self.entry.kind == KIND_DIR
        if self.kind == "ws":
            return self.extra["entry"].kind == KIND_DIR
        return self.kind in ("root", "refdir", "commits", "ctl", "hf", "hfrepo", "hfrefs", "hfsnaps")

    def mode(self, writable: bool = False) -> int:
        """``st_mode``: read-only views are 0444 files / 0555 directories."""
        if self.kind in ("head",) or (self.kind == "tree" and self.entry.kind == KIND_SYMLINK):
            return stat.S_IFLNK | 0o777
        if self.is_dir:
            return stat.S_IFDIR | (0o755 if writable else 0o555)
        if self.kind == "tree" and self.entry.kind == KIND_FILE:
            exe = 0o111 if self.entry.mode & 0o111 else 0
            return stat.S_IFREG | ((0o644 | exe & 0o755) if writable else (0o444 | (exe & 0o555)))
        return stat.S_IFREG | 0o444


class InodeTable:
    """``ino -> Node`` and ``key -> ino``; inodes are never reused within a mount."""

    def __init__(self):
        self.by_ino: dict[int, Node] = {}
        self.by_key: dict[tuple, int] = {}
        self.next_ino = ROOT_INODE + 1

    def get(self, ino: int) -> Node | None:
        """The node of inode ``ino``, or ``None`` if unknown (forgotten)."""
        return self.by_ino.get(ino)

    def add_root(self) -> Node:
        """Create and register the root node (inode :data:`ROOT_INODE`)."""
        n = Node(ROOT_INODE, "root", ("root",), parent=ROOT_INODE)
        self.by_ino[ROOT_INODE] = n
        self.by_key[n.key] = ROOT_INODE
        return n

    def intern(self, key: tuple, make) -> Node:
        """The node for ``key``, created by ``make(ino)`` if new."""
        ino = self.by_key.get(key)
        if ino is not None:
            return self.by_ino[ino]
        ino = self.next_ino
        self.next_ino += 1
        node = make(ino)
        node.key = key
        self.by_ino[ino] = node
        self.by_key[key] = ino
        return node

    def forget(self, ino: int, n: int) -> None:
        """Drop ``n`` kernel references; the node goes when none are left."""
        node = self.by_ino.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups -= n
        if node.lookups <= 0 and node.kind in ("tree", "ws"):
            del self.by_ino[ino]
            self.by_key.pop(node.key, None)
