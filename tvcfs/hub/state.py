"""The hub's own state: users, hashed tokens, repositories' flags and collaborators.

One small JSON file, ``ROOT/hub.json``, read-modify-written under an exclusive
``flock`` of ``ROOT/hub.lock`` and replaced atomically (write a temporary file,
``fsync``, ``rename``, ``fsync`` the directory): a crash leaves the old or the new
state, never a torn one; the CLI and a running hub can change it concurrently. A
token is never stored: only its sha-256 (tokens are 256 random bits, so a plain hash
is enough; see docs/hub.md, "Users and tokens").

Layout::

    {"format": 1,
     "users": {NAME: {"email", "orgs": [ORG…], "created", "disabled": bool, "peers": [PEERID…],
                      "tokens": [{"id", "sha256", "created", "revoked": bool}]}},
     "repos": {"ORG/NAME": {"private": bool, "owner": NAME | null,
                            "collaborators": [NAME…], "created"}}}
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import threading
import time

from ..errors import TvcfsError
from .names import check_name, parse_repo_id

STATE_FILE = "hub.json"
LOCK_FILE = "hub.lock"
TOKEN_PREFIX = "tvcfs_"
FORMAT = 1


class HubError(TvcfsError):
    """A hub request that cannot be served; ``status`` is its HTTP status code."""

    status = 400

    def __init__(self, msg: str, status: int | None = None):
        super().__init__(msg)
        if status is not None:
            self.status = status


def token_hash(token: str) -> str:
    """The sha-256 (hex) under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@contextlib.contextmanager
def file_lock(path: str):
    """Hold an exclusive ``flock`` of ``path`` (created 0600 if missing) for the
    ``with`` block: excludes other threads and other processes (the CLI, other HTTP
    workers of ``tvcfs hub serve --workers``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _empty() -> dict:
    return {"format": FORMAT, "users": {}, "repos": {}}


class HubState:
    """Users, tokens and repository records of the hub rooted at ``root``.

    Reads come from an in-memory copy reloaded when the file changes (a ``stat`` per
    call); :meth:`change` is the only way to write. Thread-safe."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.path = os.path.join(self.root, STATE_FILE)
        self._lock = threading.Lock()
        self._stamp = None
        self._data = _empty()

    # --- reading ---------------------------------------------------------------
    def _file_stamp(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def data(self) -> dict:
        """The current state (a dict: do not modify it)."""
        with self._lock:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._data = self._load()
                self._stamp = stamp
            return self._data

    def _load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            return _empty()
        except (OSError, ValueError) as e:
            raise TvcfsError(f"hub state {self.path} is unreadable ({e}); restore it from a backup") from None
        if d.get("format", 0) > FORMAT:
            raise TvcfsError(f"hub state {self.path} has format {d['format']}, newer than this tvcfs ({FORMAT})")
        return d

    # --- writing ---------------------------------------------------------------
    @contextlib.contextmanager
    def change(self):
        """``with state.change() as d:`` — ``d`` is a fresh copy of the state read
        under the exclusive file lock; it is written back atomically when the block
        ends without an exception (nothing is written otherwise)."""
        os.makedirs(self.root, exist_ok=True)
        with file_lock(os.path.join(self.root, LOCK_FILE)):
            d = self._load()
            yield d
            tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w", encoding="utf-8", opener=lambda p, fl: os.open(p, fl, 0o600)) as f:
                json.dump(d, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            dfd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        with self._lock:
            self._stamp = None  # reload on the next read

    # --- users and tokens ------------------------------------------------------
    def add_user(self, name: str, email: str = "", orgs=()) -> str:
        """Create user ``name`` with a first token; returns the token (shown once,
        never stored). Raises :class:`HubError` (409) if the user exists."""
        check_name(name, "user name")
        for o in orgs:
            check_name(o, "organisation name")
        with self.change() as d:
            if name in d["users"]:
                raise HubError(f"user {name!r} already exists (tvcfs hub user token {name} makes a new token)", 409)
            d["users"][name] = {"email": email, "orgs": sorted(set(orgs)), "created": int(time.time()),
                                "disabled": False, "tokens": []}
            return self._new_token(d, name)

    def new_token(self, name: str) -> str:
        """Issue another token for user ``name``; returns it. Raises :class:`HubError` (404)."""
        with self.change() as d:
            if name not in d["users"]:
                raise HubError(f"no user {name!r}", 404)
            d["users"][name]["disabled"] = False
            return self._new_token(d, name)

    @staticmethod
    def _new_token(d: dict, name: str) -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        d["users"][name]["tokens"].append({"id": secrets.token_hex(4), "sha256": token_hash(token),
                                           "created": int(time.time()), "revoked": False})
        return token

    def revoke(self, name: str) -> int:
        """Revoke every token of user ``name``; returns how many were live. Raises
        :class:`HubError` (404)."""
        with self.change() as d:
            u = d["users"].get(name)
            if u is None:
                raise HubError(f"no user {name!r}", 404)
            n = sum(not t["revoked"] for t in u["tokens"])
            for t in u["tokens"]:
                t["revoked"] = True
            u["disabled"] = True
            return n

    def set_peer(self, name: str, peer: str, remove: bool = False) -> None:
        """Register (or ``remove``) a node peer ID of user ``name``: the block exchange
        treats that peer as the user (docs/hub.md). Raises :class:`HubError` (404,
        422 for a malformed peer ID)."""
        from ..transport.identity import IdentityError, format_peer_id, parse_peer_id

        try:
            peer = format_peer_id(parse_peer_id(peer))
        except IdentityError as e:
            raise HubError(f"invalid peer ID {peer!r}: {e}", 422) from None
        with self.change() as d:
            u = d["users"].get(name)
            if u is None:
                raise HubError(f"no user {name!r}", 404)
            s = set(u.get("peers", []))
            (s.discard if remove else s.add)(peer)
            u["peers"] = sorted(s)

    def users(self) -> dict:
        """``{name: record}`` (records hold token hashes, never tokens)."""
        return self.data()["users"]

    def user_for_token(self, token: str | None) -> str | None:
        """The user a live token belongs to, else ``None`` (unknown or revoked)."""
        if not token:
            return None
        return self.user_for_hash(token_hash(token))

    def user_for_hash(self, h: str) -> str | None:
        """The user whose live token has sha-256 ``h`` (hex), else ``None`` (a web
        session keeps the hash of the token it was opened with: revoking the token
        ends the session)."""
        for name, u in self.data()["users"].items():
            for t in u["tokens"]:
                if secrets.compare_digest(t["sha256"], h):
                    return None if t["revoked"] or u.get("disabled") else name
        return None

    # --- repositories ----------------------------------------------------------
    def repo(self, repo_id: str) -> dict | None:
        """The record of ``ORG/NAME``, or ``None``."""
        return self.data()["repos"].get(repo_id)

    def repos(self) -> dict:
        """Repository records by repo id (a live view of the state)."""
        return self.data()["repos"]

    def add_repo(self, repo_id: str, private: bool = False, owner: str | None = None) -> dict:
        """Record new repository ``repo_id``; returns its record. Raises :class:`HubError` 409
        if it exists, :class:`InvalidName` for a bad repo id."""
        parse_repo_id(repo_id)
        with self.change() as d:
            if repo_id in d["repos"]:
                raise HubError(f"repository {repo_id} already exists", 409)
            rec = {"private": bool(private), "owner": owner, "collaborators": [], "created": int(time.time())}
            d["repos"][repo_id] = rec
            return rec

    def remove_repo(self, repo_id: str) -> None:
        """Forget repository ``repo_id``. Raises :class:`HubError` 404 if unknown."""
        with self.change() as d:
            if d["repos"].pop(repo_id, None) is None:
                raise HubError(f"no repository {repo_id}", 404)

    def set_repo(self, repo_id: str, **fields) -> None:
        """Change fields (``private``) of a repository record."""
        with self.change() as d:
            rec = d["repos"].get(repo_id)
            if rec is None:
                raise HubError(f"no repository {repo_id}", 404)
            rec.update(fields)

    def grant(self, repo_id: str, user: str, revoke: bool = False) -> None:
        """Make ``user`` a collaborator (write and read access) of ``repo_id``, or
        remove them with ``revoke``. Raises :class:`HubError` (404)."""
        with self.change() as d:
            rec = d["repos"].get(repo_id)
            if rec is None:
                raise HubError(f"no repository {repo_id}", 404)
            if user not in d["users"]:
                raise HubError(f"no user {user!r} (create it with tvcfs hub user add {user})", 404)
            s = set(rec["collaborators"])
            (s.discard if revoke else s.add)(user)
            rec["collaborators"] = sorted(s)

    # --- access ----------------------------------------------------------------
    def can_write(self, user: str | None, repo_id: str) -> bool:
        """Owner, collaborators, and members of the repository's organisation (a user
        whose name is the organisation counts as a member) may write."""
        if user is None:
            return False
        rec = self.repo(repo_id)
        if rec is None:
            return False
        u = self.users().get(user) or {}
        org = repo_id.split("/")[0]
        return user == rec.get("owner") or user in rec.get("collaborators", ()) or org == user \
            or org in u.get("orgs", ())

    def can_read(self, user: str | None, repo_id: str) -> bool:
        """Whether ``user`` (``None``: anonymous) may read ``repo_id``: a public repository, or
        one the user may write."""
        rec = self.repo(repo_id)
        if rec is None:
            return False
        return not rec.get("private") or self.can_write(user, repo_id)

    def can_create(self, user: str | None, org: str) -> bool:
        """A user may create repositories in their own namespace and their organisations'."""
        if user is None:
            return False
        return org == user or org in (self.users().get(user) or {}).get("orgs", ())
