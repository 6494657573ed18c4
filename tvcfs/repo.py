"""``tvcfs.Repo``: a repository of model files, the API the CLI and the mount use.

Layers (after dulwich): encoding (:mod:`tvcfs.encoding`) → chunking
(:mod:`tvcfs.chunking`) → store (:mod:`tvcfs.store`) → DAG (:mod:`tvcfs.dag`,
:mod:`tvcfs.importer`) → this module. A repository is a directory ``ROOT`` holding
``ROOT/.tvcfs/`` with the LMDB store (``store/``), the staging area of mounts
(``staging/``) and the node key. See ``docs/repository.md``.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator, NamedTuple

from .dag import KIND_DIR, KIND_FILE, KIND_SYMLINK, Entry, FileIndex, read_dir, resolve_path, walk_dag
from .encoding.car import read_car, write_car_block, write_car_header
from .encoding.cid import DAG_CBOR, cid_codec, cid_from_str, cid_str, verify_block
from .encoding.commit import Commit, decode_commit
from .encoding.unixfs import check_entry_name
from .formatting import short_cid
from .names import printable_name
from .errors import (
    AmbiguousRevision, BlockNotFound, CommitConflict, InvalidCID, MalformedObject, NotADirectory, NotARepository,
    RefConflict, RefExists, RevisionNotFound, TvcfsError, naming,
)
from .importer import REPO_DIR, Importer
from .refs import HEADS, TAGS, check_name, split_suffixes
from .store import view as store_view
from .store.verify import executor as verify_executor
from .config import RepoConfig
from .store.lmdb_refs import PinStore, Reflog, RefStore
from .store.lmdb_store import LMDBStore, store_exists
from .treeops import commit_landing, land_on_branch, txn_getter

VERIFY_AHEAD = 8  # leaves hashed ahead of the one checkout writes (1 MiB each at most)
FORMAT_VERSION = 2  # 2: the store may hold packed blocks (docs/repository.md, "Packing")
PACKED_FORMAT = 2
WORKTREES = "worktrees"  # meta key: {real path: {"branch", "base", "tree", "time"}}
_UNSET = object()


class TensorInfo(NamedTuple):
    """One tensor of a safetensors file in the store (:meth:`Repo.tensors`)."""

    name: str
    dtype: str
    shape: tuple
    nbytes: int  # bytes
    first_leaf: int | None  # index of the file's leaf the tensor starts in
    leaves: int  # leaves the tensor's bytes span


@dataclass(frozen=True)
class Author:
    """Commit author: ``name`` and ``email``."""

    name: str
    email: str

    @classmethod
    def parse(cls, text: str) -> "Author":
        """Parse ``"Name <email>"`` (git's ``--author`` form)."""
        text = text.strip()
        if "<" in text and text.endswith(">"):
            name, _, email = text[:-1].partition("<")
            return cls(name.strip(), email.strip())
        return cls(text, "")

    @classmethod
    def default(cls) -> "Author":
        """``TVCFS_AUTHOR_NAME``/``TVCFS_AUTHOR_EMAIL``, else git's ``user.name`` /
        ``user.email``, else the login name at the host name."""
        name = os.environ.get("TVCFS_AUTHOR_NAME")
        email = os.environ.get("TVCFS_AUTHOR_EMAIL")
        if not name or email is None:
            gname, gemail = _git_config("user.name"), _git_config("user.email")
            name = name or gname
            email = email if email is not None else gemail
        if not name:
            try:
                name = getpass.getuser()
            except Exception:
                name = "tvcfs"
        if not email:
            email = f"{name}@{socket.gethostname()}"
        return cls(name, email)

    def __str__(self):
        return f"{self.name} <{self.email}>"


def _git_config(key: str) -> str:
    try:
        out = subprocess.run(["git", "config", "--get", key], capture_output=True, text=True, timeout=5)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@dataclass(frozen=True)
class CommitResult:
    """Outcome of a commit: ``cid`` (binary, or ``None`` when nothing changed),
    ``tree`` (binary CID), ``branch``, ``new_bytes`` / ``new_blocks`` stored by it,
    ``bytes`` of content scanned, ``files`` scanned. A commit from a known base
    (a ``tvcfs checkout`` directory, ``base=``) also tells ``base`` (binary CID),
    ``head`` (the branch head it found), ``replayed`` (the branch had moved: our
    changes were replayed onto ``head``), ``collisions`` (paths changed on both
    sides: the commit went to the ``conflicts/…`` branch named by ``branch``)."""

    cid: bytes | None
    tree: bytes
    branch: str
    new_bytes: int
    new_blocks: int
    bytes: int
    files: int
    base: bytes | None = None
    head: bytes | None = None
    replayed: bool = False
    collisions: tuple = ()

    @property
    def conflict(self) -> bool:
        """Whether paths collided (the commit went to a ``conflicts/...`` branch)."""
        return bool(self.collisions)

    @property
    def changed(self) -> bool:
        """Whether a commit was made (something changed)."""
        return self.cid is not None


def find_repo_root(start: str | None = None) -> str:
    """Walk up from ``start`` (default: the current directory) to the first directory
    holding ``.tvcfs/``, as git finds ``.git``. Raises :class:`NotARepository`."""
    path = os.path.abspath(start or os.getcwd())
    while True:
        if store_exists(os.path.join(path, REPO_DIR, "store")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            raise NotARepository(f"not a tvcfs repository (or any parent): {os.path.abspath(start or os.getcwd())}")
        path = parent


def commit_ancestors(get, starts, missing_ok: bool = False) -> Iterator[bytes]:
    """Every commit reachable from ``starts`` (binary CIDs; non-commit CIDs are
    ignored), each once, reading commits with ``get(cid) -> bytes``. Raises
    :class:`BlockNotFound` for a missing commit unless ``missing_ok`` (then it is
    skipped), :class:`MalformedObject` for one that does not decode."""
    seen = set()
    stack = [s for s in starts if cid_codec(s) == DAG_CBOR]
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        try:
            com = decode_commit(get(c))
        except BlockNotFound:
            if missing_ok:
                continue
            raise
        yield c
        stack.extend(com.parents)


class Repo:
    """A tvcfs repository rooted at ``root`` (the directory holding ``.tvcfs/``).

    Open with :meth:`open`, :meth:`init` or :meth:`discover`; close with :meth:`close`
    or a ``with`` block. Binary CIDs (36 bytes) everywhere; :func:`cid_str` prints them.
    Thread-safe for reads; writes serialise on LMDB's single writer.
    """

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.control = os.path.join(self.root, REPO_DIR)
        store_dir = os.path.join(self.control, "store")
        if not store_exists(store_dir):
            raise NotARepository(f"not a tvcfs repository: {self.root}")
        self.store = LMDBStore(store_dir)
        self.config = RepoConfig(self.store)
        self.ref_db, self.reflog_db, self.pin_db = RefStore(self.store), Reflog(self.store), PinStore(self.store)
        fmt = self.config.get("format")
        if fmt is None:
            self.store.close()
            raise NotARepository(f"not a tvcfs repository (no format marker): {self.root}")
        if fmt > FORMAT_VERSION:
            self.store.close()
            raise TvcfsError(f"repository format {fmt} is newer than this tvcfs supports ({FORMAT_VERSION})")
        self._prefix_cache: tuple | None = None
        self._blocks = None

    @property
    def blocks(self):
        """The repository's block layer: its LMDB store alone, or a
        :class:`~tvcfs.store.router.Router` with the local store first, the
        backends selected by ``TVCFS_BACKENDS`` / :func:`tvcfs.store.set_default_backend`
        after it, then one tier per ``s3://`` remote (:func:`tvcfs.store.remote_tiers`:
        the bucket, read on a local miss, verified and written back; see
        ``docs/architecture.md``, ``docs/backends.md``) — and, for a lazy clone of
        ``tvcfs://`` peers, the peers last (:class:`~tvcfs.store.peers.PeerStore`)."""
        if self._blocks is None:
            from .store import get_backend, remote_tiers, selected_names

            names = selected_names()
            if self.config.lazy and "peers" not in names and any(
                    u.startswith("tvcfs") for u in self.config.remotes.values()):
                names = [*names, "peers"]  # a lazy clone: missing leaves come from its peers
            remotes = remote_tiers(self.remotes())  # s3:// remotes: the bucket behind the local store
            if names == ["lmdb"] and not remotes:
                self._blocks = self.store
            else:
                if "lmdb" not in names:
                    names = ["lmdb", *names]  # the local store is always the first tier
                from .store.router import Router, Tier

                self._blocks = Router([Tier(n, get_backend(n, repo=self)) for n in names] + remotes)
        return self._blocks

    # --- opening ---------------------------------------------------------------
    @classmethod
    def init(cls, path: str, default_branch: str = "main") -> "Repo":
        """Create a repository at ``path`` (created if missing). Idempotent like
        ``git init``: an existing repository is opened unchanged."""
        check_name(default_branch)
        store_dir = os.path.join(os.path.abspath(path), REPO_DIR, "store")
        os.makedirs(store_dir, exist_ok=True)
        os.makedirs(os.path.join(path, REPO_DIR, "staging"), exist_ok=True)
        st = LMDBStore(store_dir)
        try:
            config = RepoConfig(st)
            with st.write() as w:
                if config.get("format", w) is None:
                    config.set("format", 1, w)  # 1 until packed blocks are written (PACKED_FORMAT)
                    config.set("created", int(time.time()), w)
                    w.set_symref("HEAD", HEADS + default_branch)
        finally:
            st.close()
        return cls(path)

    @classmethod
    def open(cls, path: str) -> "Repo":
        """Open the repository at ``path`` (its root or its ``.tvcfs`` directory).
        Raises :class:`NotARepository`."""
        path = os.path.abspath(path)
        if os.path.basename(path) == REPO_DIR:
            path = os.path.dirname(path)
        return cls(path)

    @classmethod
    def discover(cls, start: str | None = None) -> "Repo":
        """Open the repository containing ``start`` (default: the current directory)."""
        return cls(find_repo_root(start))

    def close(self) -> None:
        """Close the block layer (if separate from the store) and the LMDB store."""
        if self._blocks is not None and self._blocks is not self.store:
            self._blocks.close()
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- blocks ----------------------------------------------------------------
    def get(self, cid: bytes) -> bytes:
        """A block's bytes, through the block layer (:attr:`blocks`). Raises
        :class:`BlockNotFound`, :class:`~tvcfs.errors.BlockUnavailable`."""
        b = self.blocks.get(cid)
        if b is None:
            raise BlockNotFound(cid)
        return b

    def has(self, cid: bytes) -> bool:
        """Whether the local store holds block ``cid`` (binary CID)."""
        return self.store.has(cid)

    def block_put(self, block: bytes, codec: int = 0x55) -> bytes:
        """Store one block of ``codec`` (raw by default); return its binary CID."""
        from .encoding.cid import make_cid

        cid = make_cid(codec, block)
        self.store.put(cid, block)
        return cid

    def block_get(self, cid: bytes | str) -> bytes:
        """A block by binary or string CID. Raises :class:`BlockNotFound`."""
        return self.get(cid_from_str(cid) if isinstance(cid, str) else cid)

    def add_bytes(self, data: bytes) -> bytes:
        """Store ``data`` as a UnixFS file; return its root CID (``ipfs add`` of the
        same bytes with tvcfs's chunking gives the same CID)."""
        with self.store.write() as w:
            return Importer(w).add_bytes(data)[0]

    def add_path(self, path: str) -> bytes:
        """Store a file or directory tree; return its root CID (no commit)."""
        with self.store.write() as w:
            imp = Importer(w)
            if os.path.isdir(path):
                return imp.add_tree(path)[0]
            return imp.add_path(path)[0]

    def cat(self, cid: bytes | str) -> Iterator[bytes]:
        """Stream the content of the UnixFS file ``cid`` (leaf by leaf), every block
        checked against its CID before it is yielded (see :meth:`LMDBStore.check`).
        Raises :class:`BlockNotFound`, :class:`CorruptBlock` naming the CID (after
        the leaves before it were yielded)."""
        from .dag import iter_file

        c = cid_from_str(cid) if isinstance(cid, str) else cid
        yield from iter_file(self.get, c)

    def get_to_path(self, cid: bytes | str, dest: str) -> None:
        """Materialise the file or directory ``cid`` at ``dest`` (must not exist)."""
        from .dag import stat_node

        c = cid_from_str(cid) if isinstance(cid, str) else cid
        self._materialise(stat_node(self.get, c, os.path.basename(dest)), dest)

    def pin(self, cid: bytes | str, name: str = "") -> None:
        """Pin a DAG root so garbage collection keeps everything under it."""
        c = cid_from_str(cid) if isinstance(cid, str) else cid
        with self.store.write() as w:
            w.pin(c, name)

    def unpin(self, cid: bytes | str) -> bool:
        """Unpin ``cid`` (binary or string CID); ``True`` if it was pinned. Raises
        :class:`~tvcfs.errors.InvalidCID` for a bad string."""
        c = cid_from_str(cid) if isinstance(cid, str) else cid
        with self.store.write() as w:
            return w.unpin(c)

    # --- refs ------------------------------------------------------------------
    def head_ref(self) -> str | None:
        """The ref HEAD points to (``refs/heads/main``), or ``None`` if detached."""
        v = self.ref_db.get("HEAD")
        if v and v.startswith(b"ref: "):
            return v[5:].decode()
        return None

    def head_branch(self) -> str | None:
        """The short name of HEAD's branch."""
        ref = self.head_ref()
        return ref[len(HEADS):] if ref and ref.startswith(HEADS) else None

    def head(self) -> bytes | None:
        """The commit HEAD points to, or ``None`` in an empty repository."""
        v = self.ref_db.get("HEAD")
        if v and v.startswith(b"ref: "):
            return self.ref_db.get(v[5:].decode())
        return v

    def set_head(self, branch: str) -> None:
        """Point HEAD at ``refs/heads/BRANCH`` (which need not exist yet)."""
        check_name(branch)
        with self.store.write() as w:
            w.set_symref("HEAD", HEADS + branch)

    def branches(self) -> dict:
        """``{short name: commit CID}`` of every branch."""
        return {k[len(HEADS):]: v for k, v in self.ref_db.all(HEADS).items()}

    def tags(self) -> dict:
        """``{short name: commit CID}`` of every tag."""
        return {k[len(TAGS):]: v for k, v in self.ref_db.all(TAGS).items()}

    def refs(self) -> dict:
        """Every ref except symbolic ones: ``{full name: binary CID}``."""
        return {k: v for k, v in self.ref_db.all().items() if not v.startswith(b"ref: ")}

    def update_ref(self, name: str, new: bytes | None, expected: bytes | None | object = _UNSET,
                   message: str = "") -> None:
        """Compare-and-swap ref ``name`` (full name) to ``new``; ``expected`` omitted
        means "whatever it is now". Raises :class:`RefConflict`."""
        with self.store.write() as w:
            cur = w.get_ref(name)
            w.set_ref(name, new, cur if expected is _UNSET else expected, message=message)

    def create_branch(self, name: str, rev: str | bytes | None = None, force: bool = False,
                      message: str | None = None) -> bytes:
        """Create branch ``name`` at ``rev`` (default HEAD), or with ``force`` move it
        there if it exists; ``message`` for the reflog (default ``branch: created
        from CID`` / ``branch: reset to CID``). Raises :class:`RefExists` if it exists
        and not ``force``, :class:`RevisionNotFound` for a bad ``rev``."""
        check_name(name)
        target = self._rev_to_cid(rev)
        with self.store.write() as w:
            cur = w.get_ref(HEADS + name)
            if cur is not None and not force:
                raise RefExists(f"branch {name!r} already exists")
            w.set_ref(HEADS + name, target, cur, message=message or (
                f"branch: {'created from' if cur is None else 'reset to'} {cid_str(target)}"))
        return target

    def delete_branch(self, name: str) -> bytes:
        """Delete branch ``name`` (kept in the reflog). Raises
        :class:`RevisionNotFound`, or :class:`TvcfsError` for HEAD's branch."""
        if name == self.head_branch():
            raise TvcfsError(f"cannot delete branch {name!r}: HEAD points to it")
        with self.store.write() as w:
            cur = w.get_ref(HEADS + name)
            if cur is None:
                raise RevisionNotFound(f"branch {name!r} not found")
            w.set_ref(HEADS + name, None, cur, message="branch: deleted")
        return cur

    def create_tag(self, name: str, rev: str | bytes | None = None, force: bool = False) -> bytes:
        """Create tag ``name`` at ``rev`` (default HEAD). Raises :class:`RefExists`."""
        check_name(name, "tag")
        target = self._rev_to_cid(rev)
        with self.store.write() as w:
            cur = w.get_ref(TAGS + name)
            if cur is not None and not force:
                raise RefExists(f"tag {name!r} already exists")
            w.set_ref(TAGS + name, target, cur, message="tag: created")
        return target

    def delete_tag(self, name: str) -> bytes:
        """Delete tag ``name``; returns the commit it pointed at (binary CID). Raises
        :class:`~tvcfs.errors.RevisionNotFound` if there is no such tag."""
        with self.store.write() as w:
            cur = w.get_ref(TAGS + name)
            if cur is None:
                raise RevisionNotFound(f"tag {name!r} not found")
            w.set_ref(TAGS + name, None, cur, message="tag: deleted")
        return cur

    def reflog(self, ref: str | None = None) -> list:
        """Reflog entries (oldest first); ``ref`` may be a short branch name."""
        if ref and not ref.startswith("refs/") and ref != "HEAD":
            ref = HEADS + ref
        return self.reflog_db.entries(ref)

    # --- remotes and identity --------------------------------------------------
    def identity(self):
        """This node's key pair (``REPO/.tvcfs/node.key``, created on first use); see
        :class:`tvcfs.transport.identity.NodeIdentity`."""
        from .transport.identity import NodeIdentity

        return NodeIdentity.load_or_create(os.path.join(self.control, "node.key"))

    def remotes(self) -> dict:
        """``{name: url}`` of configured remotes."""
        return self.config.remotes

    def add_remote(self, name: str, url: str) -> None:
        """Add remote ``name`` (``tvcfs://PEERID@HOST:PORT/...``). Raises
        :class:`RefExists` if the name is taken."""
        check_name(name, "remote")

        def add(rem):
            if name in rem:
                raise RefExists(f"remote {name!r} already exists (its URL: {rem[name]}); "
                                f"`tvcfs remote set-url {name} URL` changes it")
            rem[name] = url

        self.config.update("remotes", add)

    def set_remote_url(self, name: str, url: str) -> None:
        """Change the URL of remote ``name``; its remote-tracking refs stay. Raises
        :class:`RevisionNotFound` if there is no such remote."""
        def change(rem):
            if name not in rem:
                raise RevisionNotFound(f"no remote {name!r}: `tvcfs remote add {name} URL` adds it")
            rem[name] = url

        self.config.update("remotes", change)

    def remove_remote(self, name: str) -> None:
        """Remove remote ``name`` and its remote-tracking refs."""
        def remove(rem):
            if name not in rem:
                raise RevisionNotFound(f"no remote {name!r}")
            del rem[name]

        with self.store.write() as w:
            self.config.update("remotes", remove, w)
            prefix = f"refs/remotes/{name}/"
            for ref in [r for r in self.ref_db.all(prefix)]:
                w.set_ref(ref, None, w.get_ref(ref), message=f"remote {name} removed")

    def update_refs(self, updates: dict, message: str = "") -> None:
        """Set several refs in one transaction: ``{full name: cid | None}`` (blind,
        for remote-tracking refs; reflogged)."""
        with self.store.write() as w:
            for name, cid in updates.items():
                cur = w.get_ref(name)
                if cur != cid:
                    w.set_ref(name, cid, cur, message=message)

    # --- revisions -------------------------------------------------------------
    def _rev_to_cid(self, rev) -> bytes:
        if rev is None:
            h = self.head()
            if h is None:
                raise RevisionNotFound("HEAD has no commit yet (empty repository)")
            return h
        if isinstance(rev, bytes):
            return rev
        return self.resolve(rev)

    def resolve(self, rev: str) -> bytes:
        """Resolve a revision to a commit CID (see :mod:`tvcfs.refs` for the syntax).
        Raises :class:`RevisionNotFound` / :class:`AmbiguousRevision`."""
        base, steps = split_suffixes(rev.strip())
        cid = self._resolve_base(base)
        for i in range(steps):
            c = self.read_commit(cid)
            if not c.parents:
                raise RevisionNotFound(f"{rev}: {base} has only {i} ancestors")
            cid = c.parents[0]
        return cid

    def _resolve_base(self, name: str) -> bytes:
        if not name:
            raise RevisionNotFound("empty revision")
        if name in ("HEAD", "@"):
            h = self.head()
            if h is None:
                raise RevisionNotFound("HEAD has no commit yet (empty repository)")
            return h
        for ref in (name, HEADS + name, TAGS + name, "refs/remotes/" + name):
            if ref.startswith("refs/"):
                v = self.ref_db.get(ref)
                if v is not None and not v.startswith(b"ref: "):
                    return v
        try:
            cid = cid_from_str(name)
        except InvalidCID:
            cid = None
        if cid is not None:
            if cid_codec(cid) != DAG_CBOR:
                raise RevisionNotFound(f"{name} is not a commit CID")
            if not self.store.has(cid):
                raise RevisionNotFound(f"commit {name} is not in this repository")
            return cid
        if len(name) >= 8 and name.isalnum():
            matches = [c for s, c in self._known_commits() if s.startswith(name)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise AmbiguousRevision(f"revision {name!r} is ambiguous ({len(matches)} commits)")
        raise RevisionNotFound(f"unknown revision {name!r}")

    def _known_commits(self) -> list:
        """``[(cid string, cid)]`` for every commit reachable from refs or reflog."""
        refs = self.refs()
        key = tuple(sorted(refs.items()))
        if self._prefix_cache and self._prefix_cache[0] == key:
            return self._prefix_cache[1]
        starts = set(refs.values())
        for e in self.reflog_db.entries():
            for k in ("old", "new"):
                if e.get(k):
                    starts.add(cid_from_str(e[k]))
        out = [(cid_str(c), c) for c in self.ancestors(starts, missing_ok=True)]
        self._prefix_cache = (key, out)
        return out

    def ancestors(self, starts, missing_ok: bool = False) -> Iterator[bytes]:
        """Every commit reachable from ``starts`` (binary CIDs), each once."""
        return commit_ancestors(self.get, starts, missing_ok)

    def read_commit(self, cid: bytes) -> Commit:
        """Decode commit ``cid``. Raises :class:`BlockNotFound`, :class:`MalformedObject`."""
        return decode_commit(self.get(cid))

    def log(self, rev: str | bytes | None = None, max_count: int | None = None,
            first_parent: bool = False) -> Iterator[tuple[bytes, Commit]]:
        """Commits reachable from ``rev`` (default HEAD), newest first by timestamp
        (:func:`tvcfs.history.walk_log`; ``log --all``, paths and graphs are there too)."""
        from itertools import islice

        from .history import walk_log

        yield from islice(walk_log(self, [self._rev_to_cid(rev)], first_parent), max_count)

    def merge_base(self, a: bytes, b: bytes) -> bytes | None:
        """A best common ancestor of commits ``a`` and ``b`` (the newest by timestamp
        among the common ancestors that are not ancestors of another one), or ``None``."""
        anc_a = set(self.ancestors([a]))
        common = [c for c in self.ancestors([b]) if c in anc_a]
        if not common:
            return None
        cs = set(common)
        redundant = set()
        for c in common:
            for p in self.read_commit(c).parents:
                redundant.update(x for x in self.ancestors([p]) if x in cs)
        best = [c for c in common if c not in redundant] or common
        return max(best, key=lambda c: self.read_commit(c).timestamp)

    # --- trees -----------------------------------------------------------------
    def split_revpath(self, spec: str) -> tuple[bytes, str]:
        """``"REV:PATH"`` → ``(commit CID, path)``; ``"REV"`` → ``(commit CID, "")``."""
        rev, sep, path = spec.partition(":")
        return self.resolve(rev or "HEAD"), path

    def tree_of(self, rev: str | bytes | None) -> bytes:
        """The root directory CID of a revision."""
        return self.read_commit(self._rev_to_cid(rev)).tree

    def entry(self, rev, path: str = "") -> Entry:
        """The :class:`~tvcfs.dag.Entry` at ``path`` in ``rev``. Raises :class:`PathNotFound`."""
        return resolve_path(self.get, self.tree_of(rev), path)

    def ls(self, rev=None, path: str = "") -> list:
        """Entries of the directory at ``path`` in ``rev`` (a file lists itself)."""
        e = self.entry(rev, path)
        if e.kind == KIND_DIR:
            return list(read_dir(self.get, e.cid).values())
        return [e]

    def walk(self, rev=None, path: str = "") -> Iterator[tuple[str, Entry]]:
        """Every ``(relative path, Entry)`` below ``path`` in ``rev``, files and
        symlinks and directories, depth-first in name order."""
        root = self.entry(rev, path)

        def rec(prefix, e):
            for name, child in read_dir(self.get, e.cid).items():
                p = f"{prefix}{name}"
                yield p, child
                if child.kind == KIND_DIR:
                    yield from rec(p + "/", child)

        if root.kind == KIND_DIR:
            yield from rec("", root)
        else:
            yield root.name, root

    def file_index(self, cid: bytes) -> FileIndex:
        """The leaf index of file ``cid``."""
        return FileIndex.build(self.get, cid)

    def tensors(self, cid: bytes) -> list:
        """The tensors of the safetensors file ``cid``, read from its header leaves only
        (no tensor data): :class:`TensorInfo` rows ``(name, dtype, shape, nbytes,
        first_leaf, leaves)`` in header order (``nbytes`` in bytes; ``first_leaf`` the
        index of the leaf the tensor starts in, ``None`` for an empty tensor;
        ``leaves`` how many leaves it spans). ``[]`` if the file is not safetensors.
        Raises :class:`BlockNotFound` for a missing header block."""
        from .chunking.safetensors import NotSafetensors, read_header_with

        index = self.file_index(cid)
        try:
            header = read_header_with(lambda offset, length: index.read(self.get, offset, length), index.size)
        except NotSafetensors:
            return []
        rows = []
        for t in header.tensors:
            span = index.leaf_range(t.start, t.nbytes)
            rows.append(TensorInfo(t.name, t.dtype, t.shape, t.nbytes, span.start if span else None, len(span)))
        return rows

    def read_file(self, rev, path: str) -> Iterator[bytes]:
        """Stream the file at ``path`` in ``rev``. Raises :class:`PathNotFound` or
        :class:`TvcfsError` if it is a directory."""
        e = self.entry(rev, path)
        if e.kind != KIND_FILE:
            raise TvcfsError(f"{path} is a {'directory' if e.kind == KIND_DIR else e.kind}, not a file")
        return self._cat_named(e.cid, path)

    def _cat_named(self, cid: bytes, path: str) -> Iterator[bytes]:
        with naming(path):
            yield from self.cat(cid)

    # --- commits ---------------------------------------------------------------
    def commit_dir(self, path: str, branch: str | None = None, message: str = "",
                   author: Author | None = None, expected=_UNSET, timestamp: int | None = None,
                   allow_empty: bool = False, metadata: dict | None = None,
                   base=_UNSET, progress=None) -> CommitResult:
        """Commit directory ``path`` on ``branch`` (default: the branch of the
        worktree ``path``, else HEAD's branch).

        Blocks, the commit, the ref update and the worktree record land in one LMDB
        write transaction. Two meanings (docs/writes.md, "Worktrees"):

        * **From a base**: ``path`` is a worktree (made by :meth:`checkout`, recorded
          in the repository) or ``base`` names the commit it was made from (binary
          CID). If the branch moved since, the directory's changes are replayed onto
          the head when no changed path collides with the branch's; otherwise the
          commit is recorded on a new ``conflicts/BRANCH-…`` branch, the branch is
          left alone and :class:`CommitConflict` is raised (its ``.result`` names
          that branch). A worktree's record then follows the commit: its base
          becomes the new commit.
        * **Snapshot** (no known base, or ``base=None``; a training run's output):
          the branch becomes ``path``. ``expected``: the branch head the caller
          based its work on (compare-and-swap); omitted: the head at the start of the
          transaction. A new branch starts from HEAD. Raises :class:`RefConflict`
          when the branch moved (the commit is still stored and recorded in the
          reflog as rejected).

        Nothing changed and not ``allow_empty``: no commit, ``result.cid is None``.
        ``progress``: a callback ``progress(bytes read, total bytes)`` (see
        :class:`~tvcfs.importer.Importer`). Raises :class:`NotADirectory` naming ``path``
        when it is missing or not a directory, ``ValueError`` when both ``expected``
        and ``base`` are given.
        """
        if not os.path.isdir(path):
            what = "does not exist" if not os.path.lexists(path) else "is not a directory"
            raise NotADirectory(f"{printable_name(path)} {what}: `tvcfs commit` takes a directory "
                             "(to commit single files, `tvcfs add` them, then `tvcfs commit`)")

        def build(imp):
            imp.progress = progress
            return imp.add_tree(path)[0]

        return self._commit(build, branch, message, author, expected, timestamp, allow_empty, metadata,
                            base=base, worktree=os.path.realpath(path))

    def commit_tree(self, tree: bytes, branch: str | None = None, message: str = "",
                    author: Author | None = None, expected=_UNSET, parents: list | None = None,
                    timestamp: int | None = None, allow_empty: bool = True,
                    metadata: dict | None = None, base=_UNSET) -> CommitResult:
        """Record a commit of an already stored ``tree`` on ``branch``; ``parents``
        defaults to ``[expected head]``; ``base``: the commit the tree was made from
        (replayed onto a branch that moved, as :meth:`commit_dir`). Same transaction
        and conflict rules as :meth:`commit_dir`."""
        return self._commit(lambda imp: tree, branch, message, author, expected, timestamp,
                            allow_empty, metadata, parents, base=base)

    def commit_build(self, build, branch=None, message: str = "", author=None, expected=_UNSET,
                     timestamp=None, allow_empty: bool = False, metadata=None, parents=None) -> CommitResult:
        """Commit a tree produced by ``build(importer) -> tree_cid`` inside the commit's
        own write transaction (so blocks, commit and ref update land together). Same
        rules as :meth:`commit_dir`; used by merge."""
        return self._commit(build, branch, message, author, expected, timestamp, allow_empty,
                            metadata, parents)

    def merge(self, theirs, **kw):
        """Merge revision ``theirs`` into a branch; see :func:`tvcfs.merge.core.merge`
        (returns a ``MergeResult``: up-to-date, fast-forward, merged or conflict)."""
        from .merge.core import merge

        return merge(self, theirs, **kw)

    def diff(self, rev_a, rev_b, paths=None, numeric: bool = True):
        """Tensor-level diff of two revisions; see :func:`tvcfs.diff.diff_commits`."""
        from .diff import diff_commits

        return diff_commits(self, rev_a, rev_b, paths, numeric)

    def _commit(self, build, branch, message, author, expected, timestamp, allow_empty,
                metadata, parents=None, base=_UNSET, worktree=None) -> CommitResult:
        if base is not _UNSET and expected is not _UNSET:
            raise ValueError("commit: give expected= (compare-and-swap) or base=, not both")
        author = author or Author.default()
        conflict = None
        with self.store.write() as w:
            worktrees = self.config.get(WORKTREES, w)
            wt = worktrees.get(worktree) if worktree else None
            unfinished = _unfinished_checkout(wt or {}, worktree)
            if unfinished and base is _UNSET:  # it lacks files: committing it would delete them
                raise TvcfsError(f"{unfinished}; nothing committed (a directory of your own there: "
                                 "commit it with --base REV)")
            if base is _UNSET and wt is not None:
                base, base_tree = cid_from_str(wt["base"]), cid_from_str(wt["tree"])
            elif base is not _UNSET and base is not None:
                base_tree = self.read_commit(base).tree
            else:
                base = None
            branch = branch or (wt or {}).get("branch") or self.head_branch()
            if not branch:
                raise TvcfsError("HEAD is detached: name a branch with -b")
            check_name(branch)
            ref = HEADS + branch
            cur = w.get_ref(ref)
            imp = Importer(w)
            tree = build(imp)
            land = None
            cid = None
            ts = int(time.time() if timestamp is None else timestamp)
            if base is not None:  # from a base: replay onto the head, or a conflicts branch
                land = land_on_branch(w, txn_getter(w, self.get), self.read_commit, branch, base,
                                      base_tree, tree)
                parents, new_tree, target = ([land.parent] if land.parent else []), land.tree, land.branch
                cid, message = commit_landing(w, branch, land, message, author.name, author.email, ts,
                                              metadata, who=worktree or "the directory",
                                              source=worktree or "commit", allow_empty=allow_empty)
            else:  # snapshot: the branch becomes the tree
                start = cur if expected is _UNSET else expected
                if start is None and cur is None and expected is _UNSET:
                    h = self.head_branch()
                    if h and h != branch:
                        start = w.get_ref(HEADS + h)
                if parents is None:
                    parents = [start] if start else []
                new_tree, target = tree, branch
            if land is None and (allow_empty or len(parents) != 1
                                 or decode_commit(w.get_block(parents[0])).tree != new_tree):
                com = Commit(tree=new_tree, parents=tuple(parents), author_name=author.name,
                             author_email=author.email, message=message, timestamp=ts,
                             metadata=metadata or {})
                cid, block = com.cid_and_block()
                w.put_block(cid, block)
                expect_ref = cur if expected is _UNSET else expected
                if cur != expect_ref:
                    w.append_reflog(ref, cur, cid, f"commit (rejected, branch moved): {message}", rejected=True)
                    conflict = RefConflict(ref, expect_ref, cur, cid)
                else:
                    w.set_ref(ref, cid, cur, message=f"commit: {message}")
            if wt is not None and conflict is None and not (land is not None and land.conflict):
                # the directory now holds ``tree`` worked on from the branch's new head
                worktrees[worktree] = _worktree_record(branch, cid or parents[0], tree)
                self.config.set(WORKTREES, worktrees, w)
            result = CommitResult(cid, new_tree, target, w.new_bytes, w.new_blocks, imp.bytes, imp.files,
                                  base=base, head=cur, replayed=bool(land and land.theirs),
                                  collisions=tuple(land.collisions) if land else ())
        if conflict:
            raise conflict
        if result.conflict:
            err = CommitConflict(
                f"{branch} moved to {short_cid(cur)} since the base of {worktree or 'the directory'} "
                f"({short_cid(base)}), and both changed {', '.join(result.collisions)}: the commit is "
                f"saved as branch {target} ({cid_str(result.cid)}), {branch} is unchanged", result)
            err.add_note(f"merge it by hand: tvcfs merge {target} --into {branch}")
            raise err
        return result

    # --- checkout / export -----------------------------------------------------
    def checkout(self, rev, dest: str, path: str = "", branch=_UNSET, progress=None) -> int:
        """Materialise ``rev`` (or its sub-path ``path``) into directory ``dest``, which
        must be missing or empty. Returns the bytes written. Raises
        :class:`TvcfsError` if ``dest`` is not empty.

        A whole-tree checkout (no ``path``) makes ``dest`` a *worktree*: the
        repository records its real path with the commit and tree it came from and
        ``branch`` (default: the branch ``rev`` names, if it is a branch name or
        ``HEAD``), so that :meth:`commit_dir` of it replays its changes onto a branch
        that moved instead of reverting what it did not see (docs/writes.md,
        "Worktrees"). A checkout into a path recorded before replaces its record.
        ``progress``: a callback ``progress(bytes written, total bytes)``."""
        commit = self._rev_to_cid(rev)
        e = self.entry(commit, path)
        key = os.path.realpath(dest)
        if os.path.exists(dest):
            if not os.path.isdir(dest) or os.listdir(dest):
                rec = self.config.worktrees.get(key) or {}
                unfinished = _unfinished_checkout(rec, dest)
                if not unfinished:
                    raise TvcfsError(f"destination {printable_name(dest)} exists and is not an empty "
                                     "directory: name a new or empty directory")
                if (rec["base"], rec.get("path", "")) != (cid_str(commit), path):
                    raise TvcfsError(f"{unfinished}; it cannot take another revision: remove it to check "
                                     "out something else")
        if branch is _UNSET:
            branch = self.branch_of(rev) if isinstance(rev, str) else None

        def started(worktrees):  # a killed checkout leaves this record: status names it, commit refuses it
            worktrees[key] = {**_worktree_record(branch, commit, e.cid), "partial": True, "path": path}

        self.config.update(WORKTREES, started)
        counter = None
        if progress is not None:
            total = e.size if e.kind == KIND_FILE else sum(
                x.size for _, x in self.walk(commit, path) if x.kind == KIND_FILE)
            done = [0]

            def counter(n):
                done[0] += n
                progress(done[0], total)
        try:
            n = self._materialise(e, dest, counter)
        except OSError as err:
            # a write error (a full disk above all) names no file: say which one, and
            # that the repository is untouched
            raise TvcfsError(f"checkout into {dest} failed writing {err.filename or dest}: "
                             f"{err.strerror or err}; the repository is unchanged, the partial "
                             "checkout is left in place: run the same checkout again to finish it") from err

        def record(worktrees):
            if path:  # a sub-tree is no worktree: forget an old record of this path
                worktrees.pop(key, None)
            else:
                worktrees[key] = _worktree_record(branch, commit, e.cid)

        self.config.update(WORKTREES, record)
        return n

    def branch_of(self, rev: str) -> str | None:
        """The short name of the branch revision string ``rev`` names (``HEAD``/``@``:
        HEAD's branch; ``main``, ``refs/heads/main``), or ``None`` for anything else (a
        tag, a CID, ``main~1``). Same precedence as :meth:`resolve`."""
        rev = rev.strip()
        if rev in ("HEAD", "@"):
            return self.head_branch()
        if rev.startswith("refs/"):
            name = rev[len(HEADS):] if rev.startswith(HEADS) else None
        else:
            name = rev
        if name and self.ref_db.get(HEADS + name) is not None:
            return name
        return None

    def worktrees(self) -> dict:
        """Directories made by :meth:`checkout`: ``{real path: {"branch": name | None,
        "base": commit CID, "tree": tree CID, "time": Unix seconds, "exists": bool,
        "unfinished": None | str}}`` (binary CIDs; ``unfinished`` is a one-line text
        saying what to run when the checkout into the directory never finished: killed,
        a full disk). ``tree`` is what the directory held at its checkout or last
        commit; ``base`` the commit that tree was last brought onto."""
        out = {}
        for p, r in self.config.worktrees.items():
            out[p] = {"branch": r.get("branch"), "base": cid_from_str(r["base"]),
                      "tree": cid_from_str(r["tree"]), "time": r.get("time", 0),
                      "exists": os.path.isdir(p), "unfinished": _unfinished_checkout(r, p)}
        return out

    def _materialise(self, e: Entry, dest: str, counter=None) -> int:
        """Write entry ``e`` at ``dest``; returns bytes written. A directory whose
        entry names are not valid (``..``, ``/``, NUL, over 255 bytes: a hostile CAR
        or peer) raises :class:`InvalidEntryName` before any of its entries is written,
        so nothing is ever written outside ``dest``."""
        if e.kind == KIND_DIR:
            children = read_dir(self.get, e.cid)
            for name in children:
                check_entry_name(name, os.path.join(dest, name),
                                 f"not a valid entry of directory {cid_str(e.cid)}: nothing written there")
            os.makedirs(dest, exist_ok=True)
            total = 0
            for name, child in children.items():
                total += self._materialise(child, os.path.join(dest, name), counter)
            return total
        if e.kind == KIND_SYMLINK:
            if os.path.lexists(dest):  # finishing a checkout that was cut short
                os.unlink(dest)
            os.symlink(e.target, dest)
            return 0
        return self.write_file(e.cid, dest, e.mode, counter)

    def write_file(self, cid: bytes, dest: str, mode: int = 0o644, counter=None) -> int:
        """Write the content of file ``cid`` to the path ``dest`` from zero-copy store
        buffers (through the block layer: blocks missing locally come from the
        configured backends), each block checked against its CID first; returns bytes
        written.
        Raises :class:`BlockNotFound`, :class:`CorruptBlock` / :class:`MalformedObject`
        naming ``dest`` and the CID (``dest`` is then removed: no partial file is
        left), ``OSError`` naming ``dest``. ``counter(nbytes)`` is called after each
        leaf is written."""
        # Leaves whose bytes must be hashed against their CIDs (verify.reads=cid, or a
        # store written before at-rest checksums) are hashed ahead of the one being
        # written on the verify pool (the GIL is released): that costs the other core,
        # not the writer's time. A leaf with a recorded checksum is checked inline
        # (xxh3, ~20 GB/s): handing it to a pool would cost more than checking it.
        ahead = self.blocks is self.store and self.store.verify_reads
        with store_view(self.blocks) as blocks, self.store.view(verify=False) as raw, naming(dest):
            def get(c):
                v = blocks.get(c)
                if v is None:
                    raise BlockNotFound(c)
                return v

            idx = FileIndex.build(get, cid)
            if ahead and idx.leaves and not self.store.verify_cid:
                ahead = not self.store.has_checksum(idx.leaves[-1], raw.txn)
            checks: dict = {}
            checked: set = set()

            def leaf_get(c):
                if c in checked:  # hashed ahead, found right
                    v = raw.get(c)
                    if v is not None:
                        return v
                return get(c)

            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                pool = verify_executor() if ahead else None
                scheduled = 0
                for i in range(len(idx.leaves)):
                    if pool is not None:
                        while scheduled < min(len(idx.leaves), i + VERIFY_AHEAD):
                            c = idx.leaves[scheduled]
                            scheduled += 1
                            if c in checks or c in checked or (scheduled - 1) in idx.inline:
                                continue
                            buf = raw.get(c)
                            if buf is not None:
                                checks[c] = pool.submit(self.store.check, c, buf)
                        fut = checks.pop(idx.leaves[i], None)
                        if fut is not None:
                            fut.result()  # raises CorruptBlock for a damaged leaf
                            checked.add(idx.leaves[i])
                    view = memoryview(idx.leaf_data(leaf_get, i))
                    nleaf = len(view)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                    if counter is not None:
                        counter(nleaf)
            except OSError as e:
                if e.filename is None:  # os.write's error names no file
                    raise OSError(e.errno, e.strerror, dest) from e
                raise
            except TvcfsError:
                os.unlink(dest)
                raise
            finally:
                for fut in checks.values():  # an error ended the loop: let the hashes finish
                    fut.cancel()
                    try:
                        fut.result()
                    except BaseException:  # noqa: BLE001 - the first error is the one raised
                        pass
                os.close(fd)
        if mode & 0o111:
            os.chmod(dest, 0o755 & ~_umask())
        return idx.size

    def export_car(self, rev, out: BinaryIO, path: str = "", history: bool = False,
                   progress=None) -> int:
        """Write a CAR v1 of ``rev`` (its commit block and tree; with ``path``, only
        the DAG at that path, which becomes the root). ``history`` adds every ancestor
        commit and its tree. Returns the number of blocks written. ``progress``: a
        callback ``progress(block bytes written)``."""
        commit = self._rev_to_cid(rev)
        root = self.entry(commit, path).cid if path else commit
        write_car_header(out, [root])
        n = nbytes = 0
        for cid, block in walk_dag(self.get, root, follow_parents=history):
            write_car_block(out, cid, block)
            n += 1
            nbytes += len(block)
            if progress is not None:
                progress(nbytes)
        return n

    @staticmethod
    def _import_batch(w, batch: list, f) -> int:
        """Verify ``batch`` of CAR blocks and store them in transaction ``w``
        (:func:`tvcfs.store.verify.verify_and_put`); a bad block raises
        :class:`CorruptBlock` naming it and the file (the transaction then stores
        nothing). Returns how many were new."""
        from .store.verify import verify_and_put

        res = verify_and_put(None, batch, txn=w)
        res.raise_for_bad(getattr(f, "name", "") or "the CAR")
        return res.stored

    def import_car(self, f: BinaryIO, branch: str | None = None,
                   progress=None, force: bool = False) -> tuple[list, int]:
        """Import every block of a CAR v1 stream (each verified against its CID) in one
        transaction. With ``branch``, point it at the CAR's first root: a commit that,
        with what the store already holds, is complete (its tree, files, leaves and
        ancestors: what ``tvcfs fsck`` checks of every ref). Returns ``(roots,
        new_blocks)``. Raises :class:`MalformedObject` (a damaged or truncated CAR,
        naming the file), :class:`CorruptBlock` (a block that does not hash to its
        CID) or :class:`TvcfsError` (``branch`` given and the root is not a complete
        commit, or ``branch`` exists and the root does not descend from it — a
        fast-forward, unless ``force``); nothing is stored then. ``progress``: a
        callback ``progress(bytes of the stream read, its size or None)``."""
        name = getattr(f, "name", "") or "the CAR"
        if branch:
            check_name(branch)
        try:
            size = os.fstat(f.fileno()).st_size
        except (AttributeError, OSError, ValueError):
            size = None
        complete = set(self.refs().values()) if branch else set()
        try:
            roots, blocks = read_car(f, verify=False)  # verified below, by the one path for blocks from outside
            with self.store.write() as w:
                n = 0
                batch, nbytes = [], 0
                for cid, block in blocks:
                    batch.append((cid, block))
                    nbytes += len(block)
                    if nbytes >= 16 << 20:
                        n += self._import_batch(w, batch, f)
                        batch, nbytes = [], 0
                        if progress is not None:
                            progress(f.tell(), size)
                n += self._import_batch(w, batch, f)
                if progress is not None:
                    progress(f.tell(), size)
                if branch:
                    self._check_import_root(w, roots, name, complete)
                    if not force:
                        self._check_import_fast_forward(w, branch, roots[0], name)
                    w.set_ref(HEADS + branch, roots[0], w.get_ref(HEADS + branch), message="import")
        except MalformedObject as e:
            raise MalformedObject(f"{name}: not a valid CAR v1 file ({e}); nothing was imported") from None
        return roots, n

    def _check_import_fast_forward(self, w, branch: str, root: bytes, name: str) -> None:
        """Refuse (:class:`TvcfsError`) to move ``branch`` to ``root`` unless it does
        not exist yet, already is ``root``, or is an ancestor of it (git's rule for
        updating a ref without ``--force``)."""
        old = w.get_ref(HEADS + branch)
        if old is None or old == root:
            return
        def get(cid):
            block = w.get_block(cid)
            if block is None:
                raise BlockNotFound(cid)
            return block

        if any(c == old for c in commit_ancestors(get, [root], missing_ok=True)):
            return
        raise TvcfsError(
            f"not a fast-forward: branch {branch} is at {cid_str(old)}, which is not an ancestor "
            f"of {name}'s root commit {cid_str(root)}; import to another branch (-b NEW) and "
            "merge, or pass --force to move it (the old commit stays in the reflog); "
            "nothing was imported")

    def _check_import_root(self, w, roots: list, name: str, complete: set) -> None:
        """Refuse (:class:`TvcfsError`) to point a branch at the first of ``roots``
        unless it is a commit whose whole DAG, history included, is in the write
        transaction ``w`` (the commits in ``complete``, the repository's ref values, are
        taken as complete, as fetch does)."""
        from .dag import traverse
        from .encoding.cid import RAW

        if not roots or cid_codec(roots[0]) != DAG_CBOR:
            raise TvcfsError(f"the root of {name} is not a commit: cannot set a branch to it; "
                             "nothing was imported")
        root = roots[0]
        if not w.has_block(root):
            raise TvcfsError(f"the root commit {cid_str(root)} of {name} is not in it (nor in this "
                             "repository): cannot set a branch to it; nothing was imported")
        try:
            decode_commit(w.get_block(root))
        except MalformedObject as e:
            raise TvcfsError(f"the root of {name} is not a commit ({e}): cannot set a branch to it; "
                             "nothing was imported") from None
        for c, block in traverse(w.get_block, [root], parents=True, read_leaves=False,
                                 skip=complete.__contains__, missing_ok=True):
            if block is None and (cid_codec(c) != RAW or not w.has_block(c)):
                raise TvcfsError(
                    f"{name} lacks block {cid_str(c)} of commit {cid_str(root)} (nor is it in this "
                    "repository): cannot set a branch to an incomplete commit; export it with "
                    "--history, or import without -b; nothing was imported")

    def verify(self, root: bytes) -> int:
        """Re-hash every block under ``root``; returns the count. Raises
        :class:`CorruptBlock` / :class:`BlockNotFound`."""
        n = 0
        for cid, block in walk_dag(self.get, root):
            verify_block(cid, block)
            n += 1
        return n


def _worktree_record(branch: str | None, base: bytes, tree: bytes) -> dict:
    """A ``worktrees`` meta entry: the directory's branch, the commit ``base`` and the
    tree the directory holds (binary CIDs, stored as strings), and when (Unix seconds)."""
    return {"branch": branch, "base": cid_str(base), "tree": cid_str(tree), "time": int(time.time())}


def _unfinished_checkout(record: dict, dest: str) -> str | None:
    """For a ``worktrees`` record whose checkout never finished (it was killed, or
    failed writing), one line naming ``dest``, the revision and what to run; else
    ``None``."""
    if not record.get("partial"):
        return None
    rev = record["base"] + (f":{record['path']}" if record.get("path") else "")
    return (f"{printable_name(dest)} holds an unfinished checkout of {rev}: run "
            f"`tvcfs checkout {rev} {printable_name(dest)}` again to finish it")


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
