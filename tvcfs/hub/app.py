"""The hub's HTTP API: a Starlette application over :class:`tvcfs.hub.core.Hub`.

Two faces on one application (docs/hub.md, "The API"):

* the subset of the Hugging Face Hub API that ``huggingface_hub``, ``transformers``
  and ``sentence-transformers`` use, downloads and uploads (``/api/models/…``,
  ``/{org}/{name}/resolve/…``, ``/api/repos/create``, pre-upload, the LFS batch API
  with basic transfer, NDJSON commits);
* a small REST API of its own (``/api/repos…``: repositories, refs, log, tree, file,
  tensor table, tensor diff) described by ``/openapi.json``.

Every error is JSON ``{"error": message}`` with 401 / 403 / 404 / 409 / 412 / 413 /
416 / 422; Hugging Face routes add the ``X-Error-Code`` header its client maps to
exceptions. Blocking work (store reads, commits, hashing whole files) runs in worker
threads, so the trio loop keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
import time
from collections import OrderedDict
from urllib.parse import quote

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..dag import KIND_DIR, KIND_FILE
from ..encoding.cid import cid_str
from ..errors import (BlockNotFound, InvalidEntryName, PathNotFound, RefConflict, RevisionNotFound, TvcfsError)
from ..refs import InvalidRefName
from ..repo import Author
from ..store.base import view as store_view
from .core import HashingWriter, Hub, Upload, commit_alias
from .http import ApiError, parse_range as _parse_range, raw_tail as _raw_tail
from .names import InvalidName, check_path, parse_repo_id
from .state import HubError
from .web.session import COOKIE, Sessions

MIB = 1 << 20
SPAN = 4 * MIB          # bytes per body chunk of a file download (one thread trip, one copy, one send)
JSON_LIMIT = 16 * MIB   # JSON request bodies (pre-upload, batch, create)
UPLOAD_TTL = 3600       # seconds an LFS upload URL stays valid
INDEX_CACHE = 512       # file leaf indexes kept (by file CID)
BLOB_THRESHOLD = 10 * MIB  # files at least this large: resolve redirects to the blob port
_HF_CODE = {404: "RepoNotFound"}


def _error(status: int, message: str, code: str | None = None) -> JSONResponse:
    headers = {}
    if code:
        headers["X-Error-Code"] = code
        headers["X-Error-Message"] = message.replace("\n", " ")[:200].encode("ascii", "replace").decode()
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _is_int(x) -> bool:
    """Whether JSON value ``x`` is an integer (``true``/``false`` are not)."""
    return isinstance(x, int) and not isinstance(x, bool)


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def _repo_id(request: Request) -> str:
    """``ORG/NAME`` from the route's path parameters (validated by :meth:`HubApp.access`)."""
    return f"{request.path_params['org']}/{request.path_params['name']}"


class HubApp:
    """Builds the Starlette application for ``hub``.

    ``max_body``: largest commit body or uploaded object (bytes; 413 beyond);
    ``lfs_threshold``: files at least this large are uploaded through the LFS batch
    API (``None``: every file goes inline in the commit, which works with every
    ``huggingface_hub``, with or without ``hf_xet``: docs/hub.md); ``gateway``:
    ``callable(repo) -> ASGI app`` mounted at ``/{org}/{name}/ipfs/…`` (the hook for
    the IPFS trustless gateway)."""

    def __init__(self, hub: Hub, max_body: int = 64 << 30, lfs_threshold: int | None = None, gateway=None):
        self.hub = hub
        self.max_body = max_body
        self.lfs_threshold = lfs_threshold
        self.gateway = gateway
        self._indexes: OrderedDict = OrderedDict()
        self._index_lock = threading.Lock()
        self.sessions = Sessions(hub.state)
        self.transport_url: str | None = None  # tvcfs://PEERID@HOST:PORT/ once the block exchange listens
        # large files on the blob port (tvcfs.hub.blobs): set by the server once it listens
        self.blob_signer = None
        self.blob_host: str | None = None  # None: the host the client used
        self.blob_port: int | None = None
        self.blob_threshold = BLOB_THRESHOLD

    # --- plumbing ---------------------------------------------------------------
    def wrap(self, fn, hf: bool = False):
        """The Starlette endpoint running handler ``fn``: its errors become JSON error
        responses (ApiError/HubError their status, bad names 422,
        RevisionNotFound/PathNotFound 404, RefConflict 409, a client gone 499); ``hf``: add
        the Hugging Face ``X-Error-Code`` header."""
        async def endpoint(request: Request):
            try:
                return await fn(request)
            except ApiError as e:
                return _error(e.status, e.message, e.code if hf else None)
            except HubError as e:
                return _error(e.status, str(e), _HF_CODE.get(e.status) if hf else None)
            except (InvalidName, InvalidEntryName, InvalidRefName) as e:
                return _error(422, str(e))
            except RevisionNotFound as e:
                return _error(404, str(e), "RevisionNotFound" if hf else None)
            except PathNotFound as e:
                return _error(404, str(e), "EntryNotFound" if hf else None)
            except RefConflict as e:
                return _error(409, str(e))
            except ClientDisconnect:
                return Response(status_code=499)
        return endpoint

    def user(self, request: Request) -> str | None:
        """The user of the request's bearer token; ``None`` without one. A token that
        is unknown or revoked is a 401, whatever the route. Without a token, a
        ``GET``/``HEAD`` counts as the user of its web session cookie (so a logged-in
        browser downloads files of private repositories; nothing that writes accepts
        the cookie)."""
        auth = request.headers.get("authorization", "")
        if not auth:
            if request.method in ("GET", "HEAD"):
                return self.sessions.user(request.cookies.get(COOKIE))
            return None
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "malformed Authorization header: expected 'Bearer TOKEN'")
        u = self.hub.state.user_for_token(token.strip())
        if u is None:
            raise ApiError(401, "invalid or revoked token (Invalid credentials in Authorization header)")
        return u

    def access(self, request: Request, repo_id: str, write: bool = False) -> str | None:
        """Check that the request may read (or write) ``repo_id``; returns the user.
        Private repositories are 401 without a token and 404 to users without
        access (they are invisible); writes are 401 without a token, 403 for users
        who may read but not write."""
        parse_repo_id(repo_id)
        user = self.user(request)
        st = self.hub.state
        rec = st.repo(repo_id)
        if rec is None:
            raise ApiError(404, f"repository {repo_id} not found", "RepoNotFound")
        if not st.can_read(user, repo_id):
            if user is None:
                raise ApiError(401, f"repository {repo_id} needs a token", "RepoNotFound")
            raise ApiError(404, f"repository {repo_id} not found", "RepoNotFound")
        if write:
            if user is None:
                raise ApiError(401, f"writing to {repo_id} needs a token")
            if not st.can_write(user, repo_id):
                raise ApiError(403, f"user {user} may not write to {repo_id} "
                                    f"(the owner can run tvcfs hub repo grant {repo_id} {user})")
        return user

    async def body(self, request: Request, limit: int) -> bytes:
        """The whole request body, at most ``limit`` bytes (413 beyond)."""
        n = request.headers.get("content-length")
        if n is not None and n.isdigit() and int(n) > limit:
            raise ApiError(413, f"request body of {n} bytes is larger than the limit of {limit} bytes")
        parts, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ApiError(413, f"request body is larger than the limit of {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def json(self, request: Request, limit: int = JSON_LIMIT):
        """The request body parsed as JSON (``{}`` when empty), at most ``limit`` bytes. Raises
        :class:`ApiError` 413 beyond ``limit``, 422 for malformed JSON."""
        data = await self.body(request, limit)
        if not data:
            return {}
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(422, f"malformed JSON body: {e}")

    async def json_object(self, request: Request, expected: str, limit: int = JSON_LIMIT) -> dict:
        """The request's JSON body, which must be an object (an empty body: ``{}``);
        anything else (a list, a string, a number) is a 422 saying ``expected``."""
        body = await self.json(request, limit)
        if not isinstance(body, dict):
            raise ApiError(422, f"expected a JSON object {expected}, not {type(body).__name__}")
        return body

    async def thread(self, fn, *args):
        """``fn(*args)`` run in a worker thread (blocking store work), awaited."""
        return await anyio.to_thread.run_sync(lambda: fn(*args))

    def base(self, request: Request) -> str:
        """The server's base URL as the client reached it, without a trailing slash."""
        return str(request.base_url).rstrip("/")

    # --- file download (resolve, REST file) --------------------------------------
    def file_index(self, repo_id: str, cid: bytes):
        """The leaf index of file ``cid`` (immutable, so cached: the last
        :data:`INDEX_CACHE` files; building one reads every interior node of the file,
        ~20 ms for 1 GiB)."""
        with self._index_lock:
            idx = self._indexes.get(cid)
            if idx is not None:
                self._indexes.move_to_end(cid)
                return idx
        idx = self.hub.repo(repo_id).file_index(cid)
        with self._index_lock:
            self._indexes[cid] = idx
            while len(self._indexes) > INDEX_CACHE:
                self._indexes.popitem(last=False)
        return idx

    async def serve_file(self, request: Request, repo_id: str, rev: str, path: str, hf: bool) -> Response:
        """Respond with file ``path`` of ``repo_id`` at revision ``rev``: ETag (the file's
        CID), ``X-Repo-Commit``, single byte ranges (206/416), If-None-Match (304), HEAD;
        with ``hf`` and a blob port, a 302 to a signed blob URL for files of
        ``blob_threshold`` bytes or more (as the Hub redirects LFS files); with ``hf``,
        a HEAD of a smaller file at a revision that is not a commit (a branch, a tag)
        is a 307 to ``/ORG/NAME/resolve/ALIAS/PATH`` (as the Hub's resolve-cache
        redirect: the client's GET and resume read that one commit). 404
        (``EntryNotFound``) for a missing path."""
        self.access(request, repo_id)
        check_path(path)
        hub = self.hub

        def lookup():
            commit = hub.resolve(repo_id, rev)
            e = hub.repo(repo_id).entry(commit, path)
            if e.kind != KIND_FILE:
                raise PathNotFound(f"{path} is a {e.kind}, not a file")
            return commit, e, self.file_index(repo_id, e.cid)

        try:
            commit, e, idx = await self.thread(lookup)
        except PathNotFound as err:
            headers = {}
            try:
                headers["X-Repo-Commit"] = commit_alias(await self.thread(hub.resolve, repo_id, rev))
            except TvcfsError:
                pass
            r = _error(404, str(err), "EntryNotFound" if hf else None)
            r.headers.update(headers)
            return r
        etag = f'"{cid_str(e.cid)}"'
        pinned = rev == commit_alias(commit) or rev == cid_str(commit)  # not a branch or tag
        headers = {"X-Repo-Commit": commit_alias(commit), "ETag": etag, "X-Linked-Etag": etag,
                   "X-Linked-Size": str(idx.size), "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream", "X-Tvcfs-Commit": cid_str(commit),
                   "Cache-Control": "public, max-age=31536000, immutable" if pinned else "no-cache"}
        if hf and self.blob_port is not None and idx.size >= self.blob_threshold:
            # as the Hugging Face Hub does for LFS files: the metadata here, the bytes
            # from the blob port (os.sendfile), under a signed, expiring URL
            from .blobs import blob_url

            host = self.blob_host or request.url.hostname or "127.0.0.1"
            base = f"{request.url.scheme}://{f'[{host}]' if ':' in host else host}:{self.blob_port}"
            headers["Location"] = blob_url(base, repo_id, cid_str(e.cid), self.blob_signer)
            headers["Content-Length"] = "0"
            return Response(status_code=302, headers=headers)
        if hf and request.method == "HEAD" and not pinned:
            # as the Hugging Face Hub does: the metadata HEAD of a branch or tag ends
            # at the commit's URL, which huggingface_hub then GETs and resumes (a
            # Range request after a failure); resuming resolve/main instead would
            # append the tail of another version if the branch moved meanwhile
            headers["Location"] = (f"/{quote(repo_id)}/resolve/{commit_alias(commit)}/"
                                   f"{quote(path, safe='/')}")
            headers["Content-Length"] = "0"
            return Response(status_code=307, headers=headers)
        size, start, end, status = idx.size, 0, idx.size, 200
        rng = request.headers.get("range")
        if rng and request.headers.get("if-range", etag) == etag:
            parsed = _parse_range(rng, size)
            if parsed is None:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}", **headers})
            if parsed is not False:
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if request.headers.get("if-none-match") == etag and status == 200:
            return Response(status_code=304, headers=headers)
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        repo = hub.repo(repo_id)
        return StreamingResponse(self._stream(repo, idx, start, end), status_code=status, headers=headers)

    async def _stream(self, repo, idx, start: int, end: int):
        """The body of a file download: chunks of :data:`SPAN` bytes, each read in a
        worker thread (one thread trip, one ASGI message, one copy out of the store)."""
        for pos in range(start, end, SPAN):
            yield await anyio.to_thread.run_sync(_read_span, repo, idx, pos, min(end, pos + SPAN))

    # --- Hugging Face: repository info ------------------------------------------
    async def hf_model_info(self, request: Request):
        """``GET /api/models/{org}/{name}[/revision/{rev}]`` (Hugging Face Hub ``model_info``):
        id, private, ``sha`` (commit alias), ``siblings`` (every file), ``lastModified``; an
        empty repository has ``sha: null``. 404 for an unknown revision."""
        p = request.path_params
        repo_id = _repo_id(request)
        tail = _raw_tail(request, 4)
        rev = tail[1] if len(tail) >= 2 and tail[0] == "revision" else None
        if tail and tail[0] == "revision" and len(tail) != 2:
            raise ApiError(404, "unknown route", None)
        self.access(request, repo_id)
        hub = self.hub

        def info():
            repo = hub.repo(repo_id)
            rec = hub.state.repo(repo_id) or {}
            base = {"_id": repo_id, "id": repo_id, "modelId": repo_id, "author": p["org"],
                    "private": bool(rec.get("private")), "disabled": False, "gated": False,
                    "downloads": 0, "likes": 0, "tags": [], "createdAt": _iso(rec.get("created", 0))}
            try:
                commit = hub.resolve(repo_id, rev or "main") if rev or repo.head() is None \
                    else repo.head()
            except RevisionNotFound:
                if rev is None:  # an empty repository
                    return {**base, "sha": None, "siblings": [], "lastModified": base["createdAt"]}
                raise
            com = repo.read_commit(commit)
            files = [{"rfilename": path} for path, e in repo.walk(commit) if e.kind == KIND_FILE]
            return {**base, "sha": commit_alias(commit), "tvcfsCommit": cid_str(commit),
                    "lastModified": _iso(com.timestamp), "siblings": files}

        return JSONResponse(await self.thread(info))

    def _tree_entry(self, repo_id: str, path: str, e, expand: bool = False) -> dict:
        if e.kind == KIND_DIR:
            return {"type": "directory", "oid": cid_str(e.cid), "path": path}
        h = self.hub.file_hashes(repo_id).get(cid_str(e.cid)) or {}
        out = {"type": "file", "oid": h.get("sha1") or cid_str(e.cid), "size": e.size, "path": path,
               "cid": cid_str(e.cid)}
        if h.get("sha256") and e.size >= (self.lfs_threshold or 10 * MIB):
            out["lfs"] = {"oid": h["sha256"], "size": e.size, "pointerSize": 134}
        return out

    async def hf_tree(self, request: Request):
        """``GET /api/models/{org}/{name}/tree/{rev}[/{path}]`` (Hugging Face Hub
        ``list_repo_tree``): the entries under ``path`` (``recursive=true``: all below), as
        JSON."""
        repo_id = _repo_id(request)
        tail = _raw_tail(request, 5)  # after /api/models/ORG/NAME/tree
        if not tail:
            raise ApiError(404, "no revision given", "RevisionNotFound")
        rev, path = tail[0], "/".join(tail[1:]).strip("/")
        if path:
            check_path(path)
        self.access(request, repo_id)
        recursive = request.query_params.get("recursive", "false").lower() in ("1", "true")
        hub = self.hub

        def listing():
            commit = hub.resolve(repo_id, rev)
            repo = hub.repo(repo_id)
            prefix = path + "/" if path else ""
            if recursive:
                items = [(prefix + rel, e) for rel, e in repo.walk(commit, path)]
            else:
                items = [(prefix + e.name, e) for e in repo.ls(commit, path)]
            return [self._tree_entry(repo_id, pth, e) for pth, e in items if e.kind != "symlink"]

        return JSONResponse(await self.thread(listing))

    async def hf_paths_info(self, request: Request):
        """``POST /api/models/{org}/{name}/paths-info/{rev}`` (Hugging Face Hub
        ``get_paths_info``): the entries of the ``paths`` given (JSON or form body); missing
        paths are left out. 422 for a malformed body."""
        repo_id = _repo_id(request)
        rev = (_raw_tail(request, 5) or ["main"])[0]
        self.access(request, repo_id)
        data = await self.body(request, JSON_LIMIT)
        ctype = request.headers.get("content-type", "")
        if "json" in ctype:
            try:
                paths = json.loads(data).get("paths", [])
            except (ValueError, AttributeError) as e:
                raise ApiError(422, f"malformed JSON body: {e}")
        else:
            from urllib.parse import parse_qs

            paths = parse_qs(data.decode("utf-8", "replace")).get("paths", [])
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list) or not all(isinstance(q, str) for q in paths):
            raise ApiError(422, "expected {'paths': [PATH…]} (strings)")
        for q in paths:
            check_path(q.strip("/"))
        hub = self.hub

        def info():
            commit = hub.resolve(repo_id, rev)
            repo = hub.repo(repo_id)
            out = []
            for q in paths:
                try:
                    e = repo.entry(commit, q.strip("/"))
                except PathNotFound:
                    continue
                out.append(self._tree_entry(repo_id, q.strip("/"), e))
            return out

        return JSONResponse(await self.thread(info))

    async def hf_refs(self, request: Request):
        """``GET /api/models/{org}/{name}/refs`` (Hugging Face Hub ``list_repo_refs``):
        branches and tags with their commit aliases."""
        repo_id = _repo_id(request)
        self.access(request, repo_id)
        repo = self.hub.repo(repo_id)
        return JSONResponse({
            "branches": [{"name": n, "ref": "refs/heads/" + n, "targetCommit": commit_alias(c)}
                         for n, c in sorted(repo.branches().items())],
            "tags": [{"name": n, "ref": "refs/tags/" + n, "targetCommit": commit_alias(c)}
                     for n, c in sorted(repo.tags().items())],
            "converts": []})

    async def hf_commits(self, request: Request):
        """``GET /api/models/{org}/{name}/commits/{rev}`` (Hugging Face Hub
        ``list_repo_commits``): up to 1000 commits from ``rev``, newest first."""
        repo_id = _repo_id(request)
        tail = _raw_tail(request, 5)
        rev = tail[0] if tail else "main"
        self.access(request, repo_id)
        hub = self.hub

        def log():
            repo = hub.repo(repo_id)
            out = []
            for c, com in repo.log(hub.resolve(repo_id, rev), max_count=1000):
                title, _, rest = (com.message or "").partition("\n")
                out.append({"id": commit_alias(c), "cid": cid_str(c), "title": title, "message": rest.strip(),
                            "authors": [{"user": com.author_name}], "date": _iso(com.timestamp)})
            return out

        return JSONResponse(await self.thread(log))

    async def hf_create_branch_or_tag(self, request: Request):
        """``POST``/``DELETE /api/models/{org}/{name}/branch/{name}`` and ``.../tag/{rev}``
        (Hugging Face Hub
        ``create_branch``/``delete_branch``/``create_tag``/``delete_tag``). Needs write
        access; 409 if the ref exists, 422 for a bad body."""
        p = request.path_params
        repo_id = _repo_id(request)
        kind = p["kind"]
        if kind not in ("branch", "tag"):
            raise ApiError(404, "unknown route")
        tail = _raw_tail(request, 5)
        if len(tail) != 1:
            raise ApiError(404, "unknown route")
        self.access(request, repo_id, write=True)
        body = await self.json_object(request, "{'startingPoint'} or {'tag'}")
        repo = self.hub.repo(repo_id)
        if request.method == "DELETE":
            await self.thread(repo.delete_branch if kind == "branch" else repo.delete_tag, tail[0])
            return JSONResponse({"success": True})
        if kind == "branch":
            start = body.get("startingPoint") or "main"
            name = tail[0]
            if not isinstance(start, str):
                raise ApiError(422, "'startingPoint' must be a revision (a string)")
        else:
            start, name = tail[0], body.get("tag")
            if not isinstance(name, str):
                raise ApiError(422, "missing 'tag' in the body")
        commit = await self.thread(self.hub.resolve, repo_id, start)
        from ..errors import RefExists

        try:
            if kind == "branch":
                await self.thread(repo.create_branch, name, commit)
            else:
                await self.thread(repo.create_tag, name, commit)
        except RefExists as e:
            raise ApiError(409, str(e))
        return JSONResponse({"success": True, "ref": name, "commit": commit_alias(commit)})

    # --- Hugging Face: users and repositories -------------------------------------
    async def hf_whoami(self, request: Request):
        """``GET /api/whoami-v2`` (Hugging Face Hub ``whoami``): the token's user and
        organisations. 401 without a token."""
        user = self.user(request)
        if user is None:
            raise ApiError(401, "no token given")
        u = self.hub.state.users().get(user, {})
        return JSONResponse({"type": "user", "id": user, "name": user, "fullname": user,
                             "email": u.get("email"), "orgs": [{"name": o, "type": "org"} for o in u.get("orgs", [])],
                             "auth": {"type": "access_token", "accessToken": {"role": "write", "displayName": "tvcfs"}}})

    async def hf_validate_yaml(self, request: Request):
        """README metadata is not checked by this hub: every card is accepted."""
        await self.json_object(request, "{'content', 'repoType'}")
        return JSONResponse({"errors": [], "warnings": []})

    async def _create_request(self, request: Request, ns_key: str) -> tuple:
        """``(user, repo_id, private)`` of a repository-creation request whose body
        names the namespace under ``ns_key`` (default: the user's own)."""
        user = self.user(request)
        body = await self.json_object(request, f"{{'{ns_key}', 'name', 'private'}}")
        if user is None:
            raise ApiError(401, "creating a repository needs a token")
        if (body.get("type") or "model") != "model":
            raise ApiError(422, "this hub serves model repositories only")
        repo_id = f"{body.get(ns_key) or user}/{body.get('name')}"
        parse_repo_id(repo_id)
        return user, repo_id, bool(body.get("private")) or body.get("visibility") == "private"

    async def _create(self, user: str, repo_id: str, private: bool) -> None:
        org = repo_id.split("/")[0]
        if not self.hub.state.can_create(user, org):
            raise ApiError(403, f"user {user} may not create repositories in {org}")
        await self.thread(self.hub.create_repo, repo_id, private, user)

    async def hf_create_repo(self, request: Request):
        """``POST /api/repos/create`` (Hugging Face Hub ``create_repo``): ``{"url", "name",
        "id"}``; 409 with ``url`` if it exists."""
        user, repo_id, private = await self._create_request(request, "organization")
        if self.hub.state.repo(repo_id) is not None:  # huggingface_hub reads "url" from the 409 too
            return JSONResponse({"error": f"You already created this model repo: {repo_id}",
                                 "url": f"{self.base(request)}/{repo_id}"}, status_code=409)
        await self._create(user, repo_id, private)
        return JSONResponse({"url": f"{self.base(request)}/{repo_id}", "name": repo_id, "id": repo_id})

    async def hf_delete_repo(self, request: Request):
        """``DELETE /api/repos/delete`` (Hugging Face Hub ``delete_repo``): deletes
        ``{organization or user}/{name}``. Needs write access."""
        body = await self.json_object(request, "{'organization', 'name'}")
        user = self.user(request)
        repo_id = f"{body.get('organization') or user}/{body.get('name')}"
        self.access(request, repo_id, write=True)
        await self.thread(self.hub.delete_repo, repo_id)
        return JSONResponse({"success": True})

    async def hf_settings(self, request: Request):
        """``PUT /api/models/{org}/{name}/settings`` (Hugging Face Hub
        ``update_repo_settings``): sets ``private``. Needs write access."""
        repo_id = _repo_id(request)
        self.access(request, repo_id, write=True)
        body = await self.json_object(request, "{'private'}")
        if "private" in body:
            self.hub.state.set_repo(repo_id, private=bool(body["private"]))
        return JSONResponse({"success": True})

    # --- Hugging Face: uploads ------------------------------------------------------
    async def hf_preupload(self, request: Request):
        """``POST /api/models/{org}/{name}/preupload/{rev}`` (Hugging Face Hub pre-upload): per
        file, ``uploadMode`` ``lfs`` (at least ``lfs_threshold`` bytes) or ``regular``, and
        the ``oid`` of an unchanged file. Needs write access; 422 for a bad body."""
        repo_id = _repo_id(request)
        tail = _raw_tail(request, 5)
        rev = tail[0] if tail else "main"
        self.access(request, repo_id, write=True)
        files = (await self.json_object(request, "{'files': [...]}")).get("files")
        if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("path"), str)
                                                  and _is_int(f.get("size", 0)) for f in files):
            raise ApiError(422, "expected {'files': [{'path', 'size', 'sample'}…]}")
        for f in files:
            check_path(f["path"])
        hub = self.hub

        def modes():
            try:
                commit = hub.resolve(repo_id, rev)
            except RevisionNotFound:
                commit = None
            out = []
            for f in files:
                lfs = self.lfs_threshold is not None and f.get("size", 0) >= self.lfs_threshold
                item = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
                e = hub.file_entry(repo_id, commit, f["path"]) if commit else None
                if e is not None and e.size == f.get("size"):
                    h = hub.hashes_of(repo_id, e.cid)
                    item["oid"] = h["sha256"] if lfs else h["sha1"]
                out.append(item)
            return out

        return JSONResponse({"files": await self.thread(modes), "commitOid": None})

    async def lfs_batch(self, request: Request):
        """``POST /{org}/{name}.git/info/lfs/objects/batch`` (Git LFS Batch API, basic
        transfer, upload only): per object, signed upload and verify URLs (expiring in
        ``UPLOAD_TTL`` seconds), none for an object already held, an error entry for a bad
        oid or one over ``max_body`` bytes. Needs write access."""
        p = request.path_params
        repo_id = _repo_id(request)
        self.access(request, repo_id, write=True)
        body = await self.json_object(request, "{'operation': 'upload', 'objects': [...]}")
        objs = body.get("objects")
        if body.get("operation", "upload") != "upload" or not isinstance(objs, list) or not all(
                isinstance(o, dict) and isinstance(o.get("oid"), str) and _is_int(o.get("size")) for o in objs):
            raise ApiError(422, "expected {'operation': 'upload', 'objects': [{'oid', 'size'}…]}")
        base, hub = self.base(request), self.hub
        exp = int(time.time()) + UPLOAD_TTL
        org, name = p["org"], p["name"]
        out = []
        for o in objs:
            oid, size = o["oid"], o["size"]
            if len(oid) != 64 or any(c not in "0123456789abcdef" for c in oid) or size < 0:
                out.append({"oid": oid, "size": size, "error": {"code": 422, "message": "invalid oid or size"}})
                continue
            if size > self.max_body:
                out.append({"oid": oid, "size": size,
                            "error": {"code": 413, "message": f"larger than the limit of {self.max_body} bytes"}})
                continue
            have = hub.staged_object(repo_id, oid) or await self.thread(hub.cid_for_sha256, repo_id, oid)
            if have:
                out.append({"oid": oid, "size": size})
                continue
            sig = hub.sign("upload", repo_id, oid, size, exp)
            out.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                "upload": {"href": f"{base}/api/lfs-upload/{org}/{name}/{oid}?size={size}&exp={exp}&sig={sig}",
                           "expires_in": UPLOAD_TTL},
                "verify": {"href": f"{base}/api/lfs-verify/{org}/{name}"}}})
        return JSONResponse({"transfer": "basic", "objects": out, "hash_algo": "sha256"},
                            media_type="application/vnd.git-lfs+json")

    async def lfs_upload(self, request: Request):
        """``PUT`` of one LFS object to a signed URL (the client sends no token
        here: the signature is the authorisation). Streamed to ``ROOT/tmp``, checked
        against its size and sha-256, then moved to ``ROOT/uploads``."""
        p = request.path_params
        repo_id, oid = f"{p['org']}/{p['name']}", p["oid"]
        parse_repo_id(repo_id)
        q = request.query_params
        try:
            size, exp = int(q.get("size", "")), int(q.get("exp", ""))
        except ValueError:
            raise ApiError(403, "malformed upload URL")
        import hmac

        if exp < time.time() or not hmac.compare_digest(q.get("sig", ""), self.hub.sign("upload", repo_id, oid, size, exp)):
            raise ApiError(403, "upload URL expired or not signed by this hub; ask the batch API again")
        if self.hub.state.repo(repo_id) is None:
            raise ApiError(404, f"repository {repo_id} not found")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) != size:
            raise ApiError(422, f"object {oid} is {size} bytes, the request carries {declared}")
        writer = HashingWriter(self.hub.tmp_dir())
        try:
            async for chunk in request.stream():
                if writer.size + len(chunk) > size:
                    raise ApiError(422, f"object {oid}: more than the {size} bytes announced")
                writer.write(chunk)
            writer.close()
            if writer.size != size or writer.sha256.hexdigest() != oid:
                raise ApiError(422, f"object {oid}: received {writer.size} bytes hashing to "
                                    f"{writer.sha256.hexdigest()}, expected {size} bytes hashing to {oid}")
            d = self.hub.upload_dir(repo_id)
            os.makedirs(d, exist_ok=True)
            os.replace(writer.path, os.path.join(d, oid))
        except BaseException:
            writer.discard()
            raise
        return Response(status_code=200)

    async def lfs_verify(self, request: Request):
        """``POST /api/lfs-verify/{org}/{name}`` (Git LFS verify action): ``{"success": true}``
        once object ``oid`` is staged or held. 404 if not uploaded, 422 for a size mismatch."""
        repo_id = _repo_id(request)
        self.access(request, repo_id, write=True)
        body = await self.json_object(request, "{'oid', 'size'}")
        oid = body.get("oid")
        if not isinstance(oid, str):
            raise ApiError(422, "expected {'oid', 'size'}")
        path = self.hub.staged_object(repo_id, oid)
        if path is None and not await self.thread(self.hub.cid_for_sha256, repo_id, oid):
            raise ApiError(404, f"object {oid} was not uploaded")
        if path is not None and os.path.getsize(path) != body.get("size"):
            raise ApiError(422, f"object {oid} has {os.path.getsize(path)} bytes, not {body.get('size')}")
        return JSONResponse({"success": True})

    async def hf_commit(self, request: Request):
        """``POST /api/models/ORG/NAME/commit/REV``: an NDJSON body (header line, then
        ``file`` / ``lfsFile`` / ``deletedFile`` / ``deletedFolder`` lines) becomes one
        commit. The body is read and staged completely before the commit begins, so a
        client that disconnects leaves nothing behind."""
        repo_id = _repo_id(request)
        tail = _raw_tail(request, 5)
        if len(tail) != 1:
            raise ApiError(404, "expected /api/models/ORG/NAME/commit/BRANCH")
        branch = tail[0]
        user = self.access(request, repo_id, write=True)
        if request.query_params.get("create_pr") in ("1", "true"):
            raise ApiError(422, "pull requests are not served by this hub (docs/hub.md)")
        n = request.headers.get("content-length")
        if n is not None and n.isdigit() and int(n) > self.max_body:
            raise ApiError(413, f"commit body of {n} bytes is larger than the limit of {self.max_body} bytes")
        staged: list = []
        files: list = []
        deletes: list = []
        header: dict | None = None
        hub = self.hub
        try:
            total = 0
            buf = bytearray()
            lineno = 0

            async def handle(line: bytes):
                nonlocal header, lineno
                lineno += 1
                if not line.strip():
                    return
                try:
                    item = json.loads(line)
                    key, value = item["key"], item["value"]
                    if not isinstance(value, dict):
                        raise TypeError("value is not an object")
                except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
                    raise ApiError(422, f"malformed NDJSON line {lineno}: {e}")
                if key == "header":
                    header = value
                elif key == "file":
                    path = check_path(value.get("path", ""))
                    if value.get("encoding", "base64") != "base64":
                        raise ApiError(422, f"line {lineno}: only base64 file content is accepted")
                    try:
                        data = base64.b64decode(value.get("content", ""), validate=True)
                    except (binascii.Error, ValueError, TypeError) as e:
                        raise ApiError(422, f"line {lineno}: content of {path} is not base64: {e}")
                    writer = HashingWriter(hub.tmp_dir(), len(data))
                    staged.append(writer)
                    await anyio.to_thread.run_sync(writer.write, data)
                    writer.close()
                    files.append(Upload(path, tmp=writer.path, size=len(data), sha256=writer.sha256.hexdigest(),
                                        sha1=writer.sha1.hexdigest()))
                elif key == "lfsFile":
                    path = check_path(value.get("path", ""))
                    oid, declared = value.get("oid"), value.get("size")
                    if not isinstance(oid, str):
                        raise ApiError(422, f"line {lineno}: lfsFile without oid")
                    if value.get("algo", "sha256") != "sha256":
                        raise ApiError(422, f"line {lineno}: lfsFile {path}: only algo 'sha256' is served")
                    if declared is not None and not (_is_int(declared) and declared >= 0):
                        raise ApiError(422, f"line {lineno}: lfsFile {path}: size {declared!r} is not a byte count")
                    obj = hub.staged_object(repo_id, oid)
                    if obj is not None:
                        up = Upload(path, tmp=obj, size=os.path.getsize(obj), sha256=oid)
                    else:
                        have = await self.thread(hub.cid_for_sha256, repo_id, oid)
                        if not have:
                            raise ApiError(422, f"line {lineno}: LFS object {oid} of {path} was not uploaded "
                                                "(POST the LFS batch API first)")
                        from ..dag import stat_node

                        up = Upload(path, cid=have[0], tsize=stat_node(hub.repo(repo_id).get, have[0]).tsize or 0,
                                    size=have[1], sha256=oid)
                    if declared is not None and declared != up.size:
                        raise ApiError(422, f"line {lineno}: lfsFile {path}: object {oid} is {up.size} bytes, "
                                            f"not the {declared} the commit says")
                    files.append(up)
                elif key in ("deletedFile", "deletedFolder"):
                    deletes.append(check_path(str(value.get("path", "")).rstrip("/")))
                else:
                    raise ApiError(422, f"line {lineno}: unknown key {key!r}")

            async for chunk in request.stream():
                total += len(chunk)
                if total > self.max_body:
                    raise ApiError(413, f"commit body is larger than the limit of {self.max_body} bytes")
                buf += chunk
                while True:
                    i = buf.find(b"\n")
                    if i < 0:
                        break
                    line = bytes(buf[:i])
                    del buf[:i + 1]
                    await handle(line)
            if buf:
                await handle(bytes(buf))
            if header is None:
                raise ApiError(422, "the NDJSON body has no header line")
            summary = str(header.get("summary") or "Upload with huggingface_hub")
            desc = str(header.get("description") or "")
            message = summary + ("\n\n" + desc if desc else "")
            parent = header.get("parentCommit")
            kw = {}
            if parent:
                kw["parent"] = await self.thread(hub.resolve, repo_id, str(parent))
            repo = hub.repo(repo_id)
            start = None
            if branch not in repo.branches():
                start = repo.head()
            email = (hub.state.users().get(user) or {}).get("email") or f"{user}@tvcfs-hub"
            try:
                res, head = await self.thread(lambda: hub.commit_upload(
                    repo_id, branch, files, deletes, message, Author(user, email),
                    create_branch_from=start, **kw))
            except RefConflict as e:
                raise ApiError(412 if parent else 409, f"{e}; fetch the new head and commit again")
            # staged LFS objects are now in the repository
            for u in files:
                if u.tmp and u.tmp.startswith(hub.upload_dir(repo_id) + os.sep):
                    try:
                        os.unlink(u.tmp)
                    except FileNotFoundError:
                        pass
            alias = commit_alias(head) if head else None
            return JSONResponse({"success": True, "commitOid": alias, "commitCid": cid_str(head) if head else None,
                                 "commitUrl": f"{self.base(request)}/{repo_id}/commit/{alias}",
                                 "pullRequestUrl": None, "newBytes": res.new_bytes})
        finally:
            for w in staged:
                w.discard()

    # --- the resolve route ---------------------------------------------------------
    async def hf_resolve(self, request: Request):
        """``GET``/``HEAD /{org}/{name}/resolve/{rev}/{path}`` (Hugging Face Hub file download,
        ``hf_hub_download``): the file, see :meth:`serve_file`."""
        tail = _raw_tail(request, 0)  # ORG NAME resolve REV PATH…
        if len(tail) < 5:
            raise ApiError(404, "expected /ORG/NAME/resolve/REVISION/PATH", "EntryNotFound")
        return await self.serve_file(request, f"{tail[0]}/{tail[1]}", tail[3], "/".join(tail[4:]), hf=True)

    # --- REST API ------------------------------------------------------------------
    async def api_repos(self, request: Request):
        """``GET /api/repos``: the repositories visible to the user; ``POST``: create one (201;
        409 if it exists). tvcfs REST API (``/openapi.json``)."""
        if request.method == "POST":
            user, repo_id, private = await self._create_request(request, "namespace")
            if self.hub.state.repo(repo_id) is not None:
                raise ApiError(409, f"repository {repo_id} already exists")
            await self._create(user, repo_id, private)
            return JSONResponse(self._repo_json(repo_id), status_code=201)
        user = self.user(request)
        return JSONResponse([self._repo_json(r) for r in self.hub.visible_repos(user)])

    def _repo_json(self, repo_id: str) -> dict:
        rec = self.hub.state.repo(repo_id) or {}
        org, name = repo_id.split("/")
        return {"id": repo_id, "namespace": org, "name": name, "private": bool(rec.get("private")),
                "owner": rec.get("owner"), "created": rec.get("created")}

    async def api_repo(self, request: Request):
        """``GET /api/repos/{org}/{name}``: the repository's record, head branch and head
        commit; ``DELETE``: delete it (needs write access). tvcfs REST API."""
        repo_id = _repo_id(request)
        if request.method == "DELETE":
            self.access(request, repo_id, write=True)
            await self.thread(self.hub.delete_repo, repo_id)
            return JSONResponse({"deleted": repo_id})
        self.access(request, repo_id)
        repo = self.hub.repo(repo_id)
        head = repo.head()
        return JSONResponse({**self._repo_json(repo_id), "head_branch": repo.head_branch(),
                             "head": cid_str(head) if head else None})

    async def api_refs(self, request: Request):
        """``GET /api/repos/{org}/{name}/refs``: ``{"head", "branches", "tags"}`` with CIDs.
        tvcfs REST API."""
        repo_id = _repo_id(request)
        self.access(request, repo_id)
        repo = self.hub.repo(repo_id)
        return JSONResponse({"head": repo.head_branch(),
                             "branches": {n: cid_str(c) for n, c in sorted(repo.branches().items())},
                             "tags": {n: cid_str(c) for n, c in sorted(repo.tags().items())}})

    async def api_log(self, request: Request):
        """``GET /api/repos/{org}/{name}/log?rev=&n=``: up to ``n`` (1-10000, default 100)
        commits from ``rev``. 422 for a non-integer ``n``. tvcfs REST API."""
        repo_id = _repo_id(request)
        self.access(request, repo_id)
        rev = request.query_params.get("rev", "HEAD")
        try:
            n = int(request.query_params.get("n", "100"))
        except ValueError:
            raise ApiError(422, "n must be an integer")
        hub = self.hub

        def log():
            repo = hub.repo(repo_id)
            return [{"cid": cid_str(c), "alias": commit_alias(c), "parents": [cid_str(x) for x in com.parents],
                     "tree": cid_str(com.tree), "author": com.author_name, "email": com.author_email,
                     "message": com.message, "timestamp": com.timestamp}
                    for c, com in repo.log(hub.resolve(repo_id, rev), max_count=max(1, min(n, 10000)))]

        return JSONResponse(await self.thread(log))

    async def api_tree(self, request: Request):
        """``GET /api/repos/{org}/{name}/tree/{rev}[/{path}]``: the directory's entries (name,
        type, size in bytes, mode, CID). tvcfs REST API."""
        repo_id = _repo_id(request)
        tail = _raw_tail(request, 5)
        if not tail:
            raise ApiError(404, "expected /api/repos/ORG/NAME/tree/REV[/PATH]")
        rev, path = tail[0], "/".join(tail[1:]).strip("/")
        if path:
            check_path(path)
        self.access(request, repo_id)
        hub = self.hub

        def ls():
            repo = hub.repo(repo_id)
            return [{"name": e.name, "type": e.kind, "size": e.size, "mode": e.mode, "cid": cid_str(e.cid),
                     **({"target": e.target} if e.target else {})}
                    for e in repo.ls(hub.resolve(repo_id, rev), path)]

        return JSONResponse(await self.thread(ls))

    async def api_file(self, request: Request):
        """``GET``/``HEAD /api/repos/{org}/{name}/file/{rev}/{path}``: the file, see
        :meth:`serve_file` (no blob redirect). tvcfs REST API."""
        tail = _raw_tail(request, 2)  # ORG NAME file REV PATH…
        if len(tail) < 5:
            raise ApiError(404, "expected /api/repos/ORG/NAME/file/REV/PATH")
        return await self.serve_file(request, f"{tail[0]}/{tail[1]}", tail[3], "/".join(tail[4:]), hf=False)

    async def api_tensors(self, request: Request):
        """``GET /api/repos/{org}/{name}/tensors/{rev}/{path}``: the safetensors file's tensor
        table (name, dtype, shape, bytes, first leaf, leaves). 422 for a path that is not a
        safetensors file. tvcfs REST API."""
        tail = _raw_tail(request, 2)
        if len(tail) < 5:
            raise ApiError(404, "expected /api/repos/ORG/NAME/tensors/REV/PATH")
        repo_id, rev, path = f"{tail[0]}/{tail[1]}", tail[3], "/".join(tail[4:])
        self.access(request, repo_id)
        check_path(path)
        hub = self.hub

        def table():
            repo = hub.repo(repo_id)
            e = repo.entry(hub.resolve(repo_id, rev), path)
            if e.kind != KIND_FILE:
                raise ApiError(422, f"{path} is not a file")
            rows = repo.tensors(e.cid)
            if not rows:
                raise ApiError(422, f"{path} is not a safetensors file")
            return [{"name": n, "dtype": d, "shape": list(s), "bytes": b, "first_leaf": fl, "leaves": nl}
                    for n, d, s, b, fl, nl in rows]

        return JSONResponse(await self.thread(table))

    async def api_diff(self, request: Request):
        """``GET /api/repos/{org}/{name}/diff/{rev_a}/{rev_b}?numeric=``: the tensor diff
        (:meth:`tvcfs.diff.TreeDiff.to_dict`). tvcfs REST API."""
        tail = _raw_tail(request, 2)
        if len(tail) != 5:
            raise ApiError(404, "expected /api/repos/ORG/NAME/diff/REV_A/REV_B")
        repo_id = f"{tail[0]}/{tail[1]}"
        self.access(request, repo_id)
        numeric = request.query_params.get("numeric", "true").lower() not in ("0", "false")
        hub = self.hub

        def diff():
            a, b = hub.resolve(repo_id, tail[3]), hub.resolve(repo_id, tail[4])
            return hub.repo(repo_id).diff(a, b, numeric=numeric).to_dict()

        return JSONResponse(await self.thread(diff))

    async def gateway_route(self, request: Request):
        """``GET``/``HEAD /{org}/{name}/ipfs/...``: the per-repository IPFS gateway (IPFS HTTP
        Gateway spec) is mounted by ``HubASGI`` before routing; reaching this is a 404
        (gateway not mounted) after the access check."""
        repo_id = _repo_id(request)
        self.access(request, repo_id)
        if self.gateway is None:
            raise ApiError(404, "the IPFS gateway is not mounted on this hub (docs/hub.md)")
        raise ApiError(404, "unreachable")  # mounted by HubASGI before routing

    async def openapi(self, request: Request):
        """``GET /openapi.json``: the OpenAPI 3 description of the tvcfs REST API."""
        return JSONResponse(openapi_spec())

    # --- the application --------------------------------------------------------------
    def routes(self) -> list:
        """The Starlette routes: the Hugging Face Hub subset, Git LFS, the tvcfs REST API, then
        the web pages."""
        w = self.wrap
        hf = lambda fn: w(fn, hf=True)  # noqa: E731
        return [
            Route("/openapi.json", w(self.openapi)),
            Route("/api/whoami-v2", hf(self.hf_whoami)),
            Route("/api/repos/create", hf(self.hf_create_repo), methods=["POST"]),
            Route("/api/validate-yaml", hf(self.hf_validate_yaml), methods=["POST"]),
            Route("/api/repos/delete", hf(self.hf_delete_repo), methods=["DELETE"]),
            Route("/api/models/{org}/{name}", hf(self.hf_model_info)),
            Route("/api/models/{org}/{name}/revision/{rest:path}", hf(self.hf_model_info)),
            Route("/api/models/{org}/{name}/tree/{rest:path}", hf(self.hf_tree)),
            Route("/api/models/{org}/{name}/paths-info/{rest:path}", hf(self.hf_paths_info), methods=["POST"]),
            Route("/api/models/{org}/{name}/refs", hf(self.hf_refs)),
            Route("/api/models/{org}/{name}/commits/{rest:path}", hf(self.hf_commits)),
            Route("/api/models/{org}/{name}/preupload/{rest:path}", hf(self.hf_preupload), methods=["POST"]),
            Route("/api/models/{org}/{name}/commit/{rest:path}", hf(self.hf_commit), methods=["POST"]),
            Route("/api/models/{org}/{name}/settings", hf(self.hf_settings), methods=["PUT"]),
            Route("/api/models/{org}/{name}/{kind:str}/{rest:path}", hf(self.hf_create_branch_or_tag),
                  methods=["POST", "DELETE"]),
            Route("/{org}/{name}.git/info/lfs/objects/batch", hf(self.lfs_batch), methods=["POST"]),
            Route("/api/lfs-upload/{org}/{name}/{oid}", w(self.lfs_upload), methods=["PUT"]),
            Route("/api/lfs-verify/{org}/{name}", w(self.lfs_verify), methods=["POST"]),
            Route("/api/repos", w(self.api_repos), methods=["GET", "POST"]),
            Route("/api/repos/{org}/{name}", w(self.api_repo), methods=["GET", "DELETE"]),
            Route("/api/repos/{org}/{name}/refs", w(self.api_refs)),
            Route("/api/repos/{org}/{name}/log", w(self.api_log)),
            Route("/api/repos/{org}/{name}/tree/{rest:path}", w(self.api_tree)),
            Route("/api/repos/{org}/{name}/file/{rest:path}", w(self.api_file), methods=["GET", "HEAD"]),
            Route("/api/repos/{org}/{name}/tensors/{rest:path}", w(self.api_tensors)),
            Route("/api/repos/{org}/{name}/diff/{rest:path}", w(self.api_diff)),
            Route("/{org}/{name}/ipfs/{rest:path}", w(self.gateway_route), methods=["GET", "HEAD"]),
            Route("/{org}/{name}/resolve/{rest:path}", hf(self.hf_resolve), methods=["GET", "HEAD"]),
            *self.web_routes(),
        ]

    def web_routes(self) -> list:
        """The web pages (:mod:`tvcfs.hub.web.views`; after every API route, so they
        never shadow one). Without Jinja2 installed the hub serves the API alone."""
        try:
            import jinja2  # noqa: F401
        except ImportError:
            return []
        from .web.views import WebViews

        self.web = WebViews(self)
        self.web.warm()
        return self.web.routes()

    def app(self):
        """The ASGI application (Starlette, plus the per-repository gateway mount)."""
        star = Starlette(routes=self.routes())

        async def not_found(request, exc):
            return _error(getattr(exc, "status_code", 404), getattr(exc, "detail", "not found") or "not found")

        star.add_exception_handler(404, not_found)
        star.add_exception_handler(405, not_found)
        return HubASGI(star, self)


def trustless_gateway(repo):
    """The gateway factory ``tvcfs hub serve`` mounts (``HubApp(gateway=...)``): the
    IPFS trustless gateway app (:func:`tvcfs.gateway.app.make_gateway_app`: ``GET
    /ipfs/{cid}[/path]?format=raw|car``, docs/backends.md "The gateway") of one hub
    repository ``repo``, at ``/{org}/{name}/ipfs/…``."""
    from ..gateway.app import make_gateway_app

    return make_gateway_app(lambda request: repo)


class HubASGI:
    """ASGI wrapper: refuses bodies declared larger than the hub's limit (413) before
    any route reads them, and hands ``/{org}/{name}/ipfs/…`` to the gateway app of
    that repository when one is mounted (``gateway(repo) -> ASGI app``)."""

    def __init__(self, star, hubapp: HubApp):
        self.star, self.hubapp = star, hubapp
        self._gateways: dict = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            for k, v in scope.get("headers", ()):
                if k == b"content-length" and v.isdigit() and int(v) > self.hubapp.max_body:
                    r = _error(413, f"request body of {int(v)} bytes is larger than the limit of "
                                    f"{self.hubapp.max_body} bytes")
                    return await r(scope, receive, send)
            parts = scope["path"].split("/")
            if self.hubapp.gateway is not None and len(parts) > 3 and parts[3] == "ipfs":
                repo_id = f"{parts[1]}/{parts[2]}"
                try:
                    self.hubapp.access(Request(scope), repo_id)
                    repo = self.hubapp.hub.repo(repo_id)
                    cached = self._gateways.get(repo_id)
                    if cached is None or cached[0] is not repo:  # new, or deleted and made again
                        cached = self._gateways[repo_id] = (repo, self.hubapp.gateway(repo))
                    app = cached[1]
                except (ApiError, HubError, InvalidName) as e:
                    st = getattr(e, "status", 422)
                    return await _error(st, getattr(e, "message", str(e)))(scope, receive, send)
                prefix = f"/{parts[1]}/{parts[2]}"
                sub = dict(scope, path=scope["path"][len(prefix):], root_path=scope.get("root_path", "") + prefix)
                return await app(sub, receive, send)
        return await self.star(scope, receive, send)


def _read_span(repo, idx, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a file as one ``bytes`` (the body chunk the server
    sends), read in a worker thread: the leaves are sliced as zero-copy views of the
    block layer's snapshot (:func:`tvcfs.store.base.view`; verified once per block per
    process) and joined, so the bytes are copied out of the store exactly once (the
    ASGI server needs ``bytes``). Raises what :meth:`~tvcfs.dag.FileIndex.leaf_data`
    raises."""
    parts = []
    with store_view(repo.blocks) as v:
        def get(c):
            b = v.get(c)
            if b is None:
                raise BlockNotFound(c)
            return b

        for i in idx.leaf_range(start, end - start):
            s = idx.starts[i]
            data = memoryview(idx.leaf_data(get, i))
            lo, hi = max(start - s, 0), min(end - s, idx.sizes[i])
            parts.append(data[lo:hi] if (lo or hi != len(data)) else data)
        return b"".join(parts)


def openapi_spec() -> dict:
    """The OpenAPI 3.0 description of the hub's REST API (its own routes and the
    Hugging Face subset)."""
    def op(summary, params=(), body=None, responses=None, tags=("repos",)):
        d = {"summary": summary, "tags": list(tags),
             "parameters": [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                            for n in params],
             "responses": responses or {"200": {"description": "OK", "content": {"application/json": {}}},
                                        "401": {"$ref": "#/components/responses/Error"},
                                        "403": {"$ref": "#/components/responses/Error"},
                                        "404": {"$ref": "#/components/responses/Error"},
                                        "422": {"$ref": "#/components/responses/Error"}}}
        if body:
            d["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        return d

    repo = ("org", "name")
    file_resp = {"200": {"description": "the file's bytes", "content": {"application/octet-stream": {}}},
                 "206": {"description": "a byte range"}, "404": {"$ref": "#/components/responses/Error"},
                 "416": {"description": "range not satisfiable"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "tvcfs hub", "version": "1",
                 "description": "Repositories of ML models on content-addressed blocks (docs/hub.md)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}},
                                  "required": ["error"]}},
            "responses": {"Error": {"description": "an error", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}}},
        "security": [{"bearer": []}, {}],
        "paths": {
            "/api/repos": {
                "get": op("list the repositories the caller may read"),
                "post": op("create a repository", body={"type": "object", "required": ["name"], "properties": {
                    "namespace": {"type": "string"}, "name": {"type": "string"}, "private": {"type": "boolean"}}})},
            "/api/repos/{org}/{name}": {"get": op("a repository", repo), "delete": op("delete a repository", repo)},
            "/api/repos/{org}/{name}/refs": {"get": op("branches and tags", repo)},
            "/api/repos/{org}/{name}/log": {"get": op("commit log (query: rev, n)", repo)},
            "/api/repos/{org}/{name}/tree/{rev}": {"get": op("directory listing at a revision", (*repo, "rev"))},
            "/api/repos/{org}/{name}/file/{rev}/{path}": {
                "get": op("file download (Range, ETag = the file's CID)", (*repo, "rev", "path"),
                          responses=file_resp)},
            "/api/repos/{org}/{name}/tensors/{rev}/{path}": {
                "get": op("tensor table of a safetensors file", (*repo, "rev", "path"))},
            "/api/repos/{org}/{name}/diff/{a}/{b}": {"get": op("tensor-level diff of two revisions", (*repo, "a", "b"))},
            "/api/models/{org}/{name}": {"get": op("Hugging Face model info", repo, tags=("hf",))},
            "/api/models/{org}/{name}/revision/{rev}": {
                "get": op("Hugging Face model info at a revision", (*repo, "rev"), tags=("hf",))},
            "/{org}/{name}/resolve/{rev}/{path}": {
                "get": op("Hugging Face file download", (*repo, "rev", "path"), responses=file_resp, tags=("hf",))},
        },
    }
