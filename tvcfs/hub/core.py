"""The hub: many tvcfs repositories under one root, their access rules, the 40-hex
commit aliases Hugging Face clients need, and uploads turned into commits.

Layout of ``ROOT`` (docs/hub.md, "Running a hub")::

    ROOT/hub.json, hub.lock     users, hashed tokens, repository records (state.py)
    ROOT/secret                 32 random bytes signing upload URLs (0600)
    ROOT/repos/ORG/NAME/        an ordinary tvcfs repository (``tvcfs -C`` works on it)
    ROOT/index/ORG/NAME.json    sha-256 / git sha-1 / size of files, by file CID
    ROOT/uploads/ORG/NAME/OID   LFS objects received and verified, not yet committed
    ROOT/tmp/                   partial uploads (removed on error)

Only :class:`tvcfs.Repo`'s public methods touch repositories.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass

from ..dag import KIND_DIR, KIND_FILE
from ..encoding.cid import DAG_CBOR, cid_codec, cid_from_str, cid_str
from ..errors import InvalidCID, RefConflict, RevisionNotFound, TvcfsError
from ..hf.layout import git_blob_sha1
from ..refs import HEADS, check_name as check_ref_name
from ..repo import Author, Repo
from ..treeops import apply_changes, txn_getter
from .names import check_name, check_path, parse_repo_id
from .state import HubError, HubState, file_lock

_ALIAS_HEX = 40
_MISSING = object()


def commit_alias(cid: bytes) -> str:
    """The 40-hex alias of a commit CID that Hugging Face clients accept as a commit
    hash (``[0-9a-f]{40}``): the first 20 bytes of the CID's sha-256 digest, in hex
    (docs/hub.md, "Commit hashes")."""
    return bytes(cid[-32:-12]).hex()


@dataclass
class Upload:
    """One file of an upload: ``path`` in the repository and where its bytes are
    (``tmp``: a staged file owned by the upload, or ``cid``/``tsize``: a file the
    repository already holds), with ``sha256``/``sha1`` (hex) when known."""

    path: str
    tmp: str | None = None
    cid: bytes | None = None
    tsize: int = 0
    size: int = 0
    sha256: str | None = None
    sha1: str | None = None


class HashingWriter:
    """Write bytes to a new file in ``dir`` while computing their sha-256 and their
    git blob sha-1 (``blob SIZE\\0`` + content, when ``size`` is known up front).
    ``discard()`` removes the file; ``close()`` keeps it at ``.path``."""

    def __init__(self, dir: str, size: int | None = None):
        os.makedirs(dir, exist_ok=True)
        fd, self.path = tempfile.mkstemp(dir=dir, prefix="up-")
        self.file = os.fdopen(fd, "wb")
        self.sha256 = hashlib.sha256()
        self.sha1 = git_blob_sha1(size) if size is not None else None
        self.size = 0

    def write(self, data) -> None:
        """Append ``data`` (bytes-like) to the file and to the hashes. Raises OSError."""
        self.file.write(data)
        self.sha256.update(data)
        if self.sha1 is not None:
            self.sha1.update(data)
        self.size += len(data)

    def close(self) -> None:
        """Close the file, keeping it at ``path``."""
        self.file.close()

    def discard(self) -> None:
        """Close and delete the file."""
        try:
            self.file.close()
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class Hub:
    """The repositories under ``root`` and their state. Thread-safe; repositories are
    opened once and kept open (:meth:`repo`)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.state = HubState(self.root)
        self._repos: dict = {}
        self._aliases: dict = {}  # repo_id -> (refs key, {alias: cid})
        self._index_lock = threading.Lock()
        self._lock = threading.Lock()

    # --- layout ----------------------------------------------------------------
    @classmethod
    def init(cls, root: str) -> "Hub":
        """Create (idempotently) a hub at ``root``."""
        for d in ("repos", "index", "uploads", "tmp"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        sec = os.path.join(root, "secret")
        if not os.path.exists(sec):
            fd = os.open(sec, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        if not os.path.exists(os.path.join(root, "hub.json")):
            with HubState(root).change():
                pass
        return cls(root)

    @classmethod
    def open(cls, root: str) -> "Hub":
        """Open the hub at ``root``; raises :class:`TvcfsError` if there is none."""
        if not os.path.isfile(os.path.join(root, "hub.json")):
            raise TvcfsError(f"not a tvcfs hub: {os.path.abspath(root)} (create one with tvcfs hub init {root})")
        return cls(root)

    def repo_dir(self, repo_id: str) -> str:
        """The directory of repository ``repo_id`` (``ROOT/repos/ORG/NAME``). Raises
        :class:`InvalidName` for a bad repo id."""
        org, name = parse_repo_id(repo_id)
        return os.path.join(self.root, "repos", org, name)

    def tmp_dir(self) -> str:
        """The hub's scratch directory (``ROOT/tmp``)."""
        return os.path.join(self.root, "tmp")

    def upload_dir(self, repo_id: str) -> str:
        """The directory of staged LFS uploads of ``repo_id`` (``ROOT/uploads/ORG/NAME``).
        Raises :class:`InvalidName` for a bad repo id."""
        org, name = parse_repo_id(repo_id)
        return os.path.join(self.root, "uploads", org, name)

    def close(self) -> None:
        """Close every open repository."""
        with self._lock:
            repos, self._repos = self._repos, {}
        for r in repos.values():
            r.close()

    # --- repositories ----------------------------------------------------------
    def create_repo(self, repo_id: str, private: bool = False, owner: str | None = None) -> Repo:
        """Create repository ``ORG/NAME``: a tvcfs repository whose branch ``main``
        holds one commit of an empty tree. Raises :class:`HubError` 409 if it exists, :class:`InvalidName`."""
        path = self.repo_dir(repo_id)
        self.state.add_repo(repo_id, private, owner)
        try:
            repo = self._remember(repo_id, Repo.init(path))
            # like the Hugging Face Hub, a new repository has a first (empty) commit on
            # main, so clients find the branch and ask for files (404 EntryNotFound)
            repo.commit_build(lambda imp: imp.add_directory([])[0], "main", "initial commit",
                              Author(owner or "tvcfs-hub", ""), allow_empty=True)
            return repo
        except BaseException:
            self.state.remove_repo(repo_id)
            raise

    def delete_repo(self, repo_id: str) -> None:
        """Remove ``ORG/NAME`` and its files. Raises :class:`HubError` 404."""
        path = self.repo_dir(repo_id)
        self.state.remove_repo(repo_id)
        with self._lock:
            r = self._repos.pop(repo_id, None)
            self._aliases.pop(repo_id, None)
        if r is not None:
            r.close()
        if os.path.isdir(path):
            gone = tempfile.mkdtemp(dir=self.tmp_dir(), prefix="deleted-")
            os.replace(path, os.path.join(gone, "repo"))
            shutil.rmtree(gone, ignore_errors=True)
        for p in (self._index_path(repo_id), self._index_path(repo_id) + ".lock"):
            if os.path.exists(p):
                os.unlink(p)
        shutil.rmtree(self.upload_dir(repo_id), ignore_errors=True)

    def _remember(self, repo_id: str, repo: Repo) -> Repo:
        with self._lock:
            old = self._repos.get(repo_id)
            if old is not None:
                repo.close()
                return old
            self._repos[repo_id] = repo
            return repo

    def repo(self, repo_id: str) -> Repo:
        """The open :class:`Repo` of ``ORG/NAME``. Raises :class:`HubError` 404."""
        if self.state.repo(repo_id) is None:  # deleted by the CLI or another worker: forget it
            with self._lock:
                self._aliases.pop(repo_id, None)
                self._repos.pop(repo_id, None)  # not closed: a request may still read it
            raise HubError(f"repository {repo_id} not found", 404)
        with self._lock:
            r = self._repos.get(repo_id)
        if r is not None:
            return r
        return self._remember(repo_id, Repo.open(self.repo_dir(repo_id)))

    def visible_repos(self, user: str | None) -> list:
        """Repository ids ``user`` may read (private ones only for those with access), sorted."""
        return sorted(r for r in self.state.repos() if self.state.can_read(user, r))

    # --- revisions -------------------------------------------------------------
    def resolve(self, repo_id: str, rev: str) -> bytes:
        """A revision of ``ORG/NAME`` → commit CID: a branch, tag, full commit CID,
        any revision :meth:`Repo.resolve` takes, or a 40-hex alias
        (:func:`commit_alias`). Raises :class:`RevisionNotFound`."""
        repo = self.repo(repo_id)
        if len(rev) == _ALIAS_HEX and all(c in "0123456789abcdef" for c in rev):
            cid = self._alias_map(repo_id, repo).get(rev)
            if cid is not None:
                return cid
        try:
            c = cid_from_str(rev)
        except (InvalidCID, ValueError):
            c = None
        if c is not None and cid_codec(c) != DAG_CBOR:
            raise RevisionNotFound(f"{rev} is not a commit CID")
        return repo.resolve(rev)

    def _alias_map(self, repo_id: str, repo: Repo) -> dict:
        """``{alias: commit CID}`` of every commit reachable from a ref or the reflog,
        rebuilt when the refs change."""
        refs = repo.refs()
        key = tuple(sorted(refs.items()))
        with self._lock:
            cached = self._aliases.get(repo_id)
        if cached and cached[0] == key:
            return cached[1]
        starts = set(refs.values())
        for e in repo.reflog():
            for k in ("old", "new"):
                if e.get(k):
                    starts.add(cid_from_str(e[k]))
        m = {commit_alias(c): c for c in repo.ancestors(starts, missing_ok=True)}
        with self._lock:
            self._aliases[repo_id] = (key, m)
        return m

    # --- file hashes -----------------------------------------------------------
    def _index_path(self, repo_id: str) -> str:
        org, name = parse_repo_id(repo_id)
        return os.path.join(self.root, "index", org, name + ".json")

    def file_hashes(self, repo_id: str) -> dict:
        """``{file CID string: {"sha256", "sha1", "size"}}`` known for ``ORG/NAME``."""
        try:
            with open(self._index_path(repo_id), encoding="utf-8") as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def record_hashes(self, repo_id: str, entries: dict) -> None:
        """Merge ``entries`` (as :meth:`file_hashes`) into the index, atomically, under
        a lock that other processes (HTTP workers, docs/hub.md) respect too."""
        if not entries:
            return
        p = self._index_path(repo_id)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with self._index_lock, file_lock(p + ".lock"):
            d = self.file_hashes(repo_id)
            d.update(entries)
            tmp = p + f".{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(d, f)
            os.replace(tmp, p)

    def hashes_of(self, repo_id: str, cid: bytes) -> dict:
        """sha-256, git sha-1 and size of file ``cid`` (computed by reading the file
        once when not known yet, then remembered)."""
        key = cid_str(cid)
        h = self.file_hashes(repo_id).get(key)
        if h is not None and h.get("sha1") and h.get("sha256"):
            return h
        repo = self.repo(repo_id)
        idx = repo.file_index(cid)
        s256, s1 = hashlib.sha256(), git_blob_sha1(idx.size)
        for chunk in repo.cat(cid):
            s256.update(chunk)
            s1.update(chunk)
        h = {"sha256": s256.hexdigest(), "sha1": s1.hexdigest(), "size": idx.size}
        self.record_hashes(repo_id, {key: h})
        return h

    def cid_for_sha256(self, repo_id: str, oid: str):
        """``(file CID, size)`` of a file of ``ORG/NAME`` whose sha-256 is ``oid``, if
        the index knows one whose blocks are present, else ``None``."""
        repo = self.repo(repo_id)
        for k, h in self.file_hashes(repo_id).items():
            if h.get("sha256") == oid:
                c = cid_from_str(k)
                if repo.has(c):
                    return c, h["size"]
        return None

    # --- uploads ---------------------------------------------------------------
    def secret(self) -> bytes:
        """The hub's signing secret (the bytes of ``ROOT/secret``). Raises OSError."""
        with open(os.path.join(self.root, "secret"), "rb") as f:
            return f.read()

    def sign(self, *parts) -> str:
        """HMAC-SHA-256 (hex) of ``parts`` joined by NUL under :meth:`secret`, for signed URLs."""
        msg = "\0".join(str(p) for p in parts).encode()
        return hmac.new(self.secret(), msg, hashlib.sha256).hexdigest()

    def staged_object(self, repo_id: str, oid: str) -> str | None:
        """Path of a received LFS object ``oid`` of ``ORG/NAME``, or ``None``."""
        if len(oid) != 64 or any(c not in "0123456789abcdef" for c in oid):
            return None
        p = os.path.join(self.upload_dir(repo_id), oid)
        return p if os.path.isfile(p) else None

    def commit_upload(self, repo_id: str, branch: str, files: list, deletes: list, message: str,
                      author: Author, parent: bytes | None | object = _MISSING,
                      create_branch_from: bytes | None = None) -> tuple:
        """Record one commit on ``branch`` of ``ORG/NAME``: ``files`` (:class:`Upload`)
        added or replaced, ``deletes`` (paths: files or folders) removed, new file
        content stored with tensor-aligned chunking (so unchanged tensors are not
        stored again). ``parent``: the head the client based its change on
        (compare-and-swap: :class:`RefConflict` if the branch moved); omitted, the
        change applies onto whatever the head is (retried if another commit lands
        meanwhile). Blocks, commit and ref update are one transaction. A path that
        would silently replace another kind of entry is refused (:func:`path_clashes`).

        Returns ``(CommitResult, head commit CID after it)``. Raises
        :class:`RefConflict`, :class:`InvalidName`, :class:`HubError` (422 for a
        clash)."""
        check_ref_name(branch)
        for u in files:
            check_path(u.path)
        for p in deletes:
            check_path(p.rstrip("/"))
        repo = self.repo(repo_id)
        for attempt in range(8):
            head = repo.branches().get(branch)
            if head is None and create_branch_from is not None:
                head_for_tree = create_branch_from
            else:
                head_for_tree = head
            if parent is not _MISSING and parent != head_for_tree:
                raise RefConflict(HEADS + branch, parent, head_for_tree)
            base_tree = repo.read_commit(head_for_tree).tree if head_for_tree else None
            clash = path_clashes(repo, head_for_tree, [u.path for u in files], deletes)
            if clash:
                raise HubError(f"{repo_id}: {clash}; nothing was committed", 422)
            hashes = {}

            def build(imp):
                changes = {}
                for p in deletes:
                    changes[p.rstrip("/")] = None
                for u in files:
                    if u.tmp is not None:
                        cid, tsize, size = imp.add_path(u.tmp)
                        if u.sha256:
                            hashes[cid_str(cid)] = {"sha256": u.sha256, "sha1": u.sha1, "size": size}
                    else:
                        cid, tsize = u.cid, u.tsize
                    changes[u.path] = (cid, tsize)
                get = txn_getter(imp.txn, repo.get)
                return apply_changes(get, imp.txn.put_block, base_tree, changes)[0]

            parents = [head_for_tree] if head_for_tree else []
            try:
                res = repo.commit_build(build, branch, message, author, expected=head, allow_empty=False,
                                        parents=parents if head != head_for_tree else None)
            except RefConflict:
                if parent is not _MISSING:
                    raise
                time.sleep(0.01 * (attempt + 1))
                continue
            self.record_hashes(repo_id, {k: {n: x for n, x in v.items() if x} for k, v in hashes.items()})
            return res, (res.cid or head_for_tree)
        raise HubError(f"{repo_id}: branch {branch} kept moving; try the upload again", 409)

    def file_entry(self, repo_id: str, commit: bytes, path: str):
        """The :class:`~tvcfs.dag.Entry` of a file at ``path`` in ``commit``, or ``None``."""
        from ..errors import PathNotFound

        try:
            e = self.repo(repo_id).entry(commit, path)
        except (PathNotFound, TvcfsError):
            return None
        return e if e.kind == KIND_FILE else None


def path_clashes(repo: Repo, commit: bytes | None, paths: list, deletes: list) -> str | None:
    """Why adding files at ``paths`` (and removing ``deletes``: files or folders)
    onto ``commit`` (``None``: an empty tree) would drop an entry nobody asked to
    remove, or ``None``: a path that is also a directory of another path of the same
    commit (``d`` and ``d/f``), a path under an existing file (``w.bin/x`` while
    ``w.bin`` is a file), or a file over an existing directory. Blocks of ``commit``
    are read for the parent directories of ``paths`` only."""
    new = set(paths)
    dirs = {p.rsplit("/", i)[0] for p in new for i in range(1, p.count("/") + 1)}
    both = sorted(new & dirs)
    if both:
        under = min(p for p in new if p.startswith(both[0] + "/"))
        return f"{both[0]} would be both a file and the directory of {under} in one commit"
    if commit is None:
        return None
    gone = {d.rstrip("/") for d in deletes}

    def removed(p: str) -> bool:
        return any(p == g or p.startswith(g + "/") for g in gone)

    def kind(p: str) -> str | None:
        try:
            return repo.entry(commit, p).kind
        except TvcfsError:  # not there (or under a file: reported for that file)
            return None

    for d in sorted(dirs, key=lambda x: (x.count("/"), x)):
        if not removed(d) and kind(d) not in (None, KIND_DIR):
            under = min(p for p in new if p.startswith(d + "/"))
            return (f"{d} is a file: {under} cannot go under it (delete {d} in the same commit to replace "
                    "it by a directory)")
    for p in sorted(new):
        if not removed(p) and kind(p) == KIND_DIR:
            return f"{p} is a directory: a file cannot replace it (delete the folder {p} in the same commit)"
    return None


__all__ = ["Hub", "HubError", "Upload", "HashingWriter", "commit_alias", "check_name"]
