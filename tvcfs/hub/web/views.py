"""The hub's web pages (docs/hub.md, "Web pages"): server-rendered HTML for people,
on the same Starlette application as the API, at the URLs of the Hugging Face Hub
where it has the same page:

========================================  ==============================================
``/``                                     repositories (search ``?q=``, ``?sort=``)
``/ORG/NAME``                             model card, branches and tags, files, snippets
``/ORG/NAME/tree/REV/PATH``               a directory
``/ORG/NAME/blob/REV/PATH``               a file (tensor table of a safetensors file)
``/ORG/NAME/commits/REV``                 the log (``?p=`` page) and its storage chart
``/ORG/NAME/commit/CID``                  one commit and its diff against its parent
``/ORG/NAME/compare/REV1...REV2``         the tensor-level diff and its heat map
``/login``, ``/logout``                   a cookie session opened with a hub token
========================================  ==============================================

Jinja2, markdown-it-py and PyYAML are imported on first use (the ``hub`` extra). Every
page is rendered in a worker thread; its server time is in the ``Server-Timing``
header (``app;dur=MS``). Everything from a repository is escaped (Jinja2 autoescape;
Markdown without raw HTML)."""

from __future__ import annotations

import json
import os
import time
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ...dag import KIND_DIR, KIND_FILE, KIND_SYMLINK
from ...encoding.cid import cid_str
from ...errors import BlockNotFound, InvalidEntryName, PathNotFound, RevisionNotFound, TvcfsError
from ..core import commit_alias
from ..names import InvalidName, check_path, parse_repo_id
from ..state import HubError
from .session import COOKIE, SESSION_TTL
from .stats import _LRU, RepoStats

PAGE = 50                  # commits per log page
TEXT_LIMIT = 512 * 1024    # bytes of a plain file shown inline (larger: download only)
CARD_LIMIT = 512 * 1024    # bytes of README.md rendered
FORM_LIMIT = 64 * 1024     # bytes of a login form body
RESERVED = {"api"}         # first path segments that are never an organisation here
DIFFS = 64                 # diff results kept (by repository and commit pair)
_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


class PageError(Exception):
    """A page that cannot be shown: ``status`` and a one-line ``message``; ``login``
    asks for a login (a private repository seen without a session)."""

    def __init__(self, status: int, message: str, login: bool = False):
        super().__init__(message)
        self.status, self.message, self.login = status, message, login


def fmt_bytes(n) -> str:
    """``n`` bytes in human units (KiB, MiB...), or an em dash for ``None`` (template filter
    ``bytes``)."""
    from ...formatting import human_size

    return "—" if n is None else human_size(n)


def fmt_time(ts: int) -> str:
    """Unix time ``ts`` (seconds) as ``YYYY-MM-DD HH:MM UTC`` (template filter ``time``)."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def split_front_matter(text: str) -> tuple:
    """``(front matter dict or None, Markdown body, error or None)`` of a model card:
    YAML between a first line ``---`` and the next line ``---`` (as Hugging Face model
    cards). A block that is not a YAML mapping is reported, and the text is kept."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return None, text, None
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            import yaml

            try:
                meta = yaml.safe_load("".join(lines[1:i]))
            except yaml.YAMLError as e:
                return None, "".join(lines[i + 1:]), f"the YAML front matter does not parse: {e}"
            if meta is not None and not isinstance(meta, dict):
                return None, "".join(lines[i + 1:]), "the YAML front matter is not a mapping"
            return meta or {}, "".join(lines[i + 1:]), None
    return None, text, None


def _meta_value(v) -> str:
    if isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v):
        return ", ".join(str(x) for x in v)
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str, ensure_ascii=False)
    return str(v)


def _commit_meta(metadata: dict) -> list:
    return [(str(k), _meta_value(v) if not isinstance(v, bytes) else v.hex()) for k, v in sorted(metadata.items())]


def _first_line(message: str) -> str:
    return (message or "").split("\n", 1)[0]


def _q(path: str) -> str:
    """A repository path (or revision) percent-encoded for a URL: ``/`` kept between
    segments, everything else quoted (``#``, ``?``, ``%`` and spaces in names)."""
    return quote(path, safe="/")


def _rev_q(rev: str) -> str:
    """A revision as one URL segment (``refs/pr/1`` → ``refs%2Fpr%2F1``)."""
    return quote(rev, safe="")


class WebViews:
    """The pages of ``hubapp`` (:class:`tvcfs.hub.app.HubApp`): :meth:`routes` for its
    Starlette application."""

    def __init__(self, hubapp):
        self.app = hubapp
        self.hub = hubapp.hub
        self.stats = RepoStats()
        self.diffs = _LRU(DIFFS)
        self._env = None
        self._md = None

    # --- plumbing ---------------------------------------------------------------
    def warm(self) -> None:
        """Import the page libraries and compile every template now (at start-up, ~0.3 s)
        rather than in the first requests."""
        from . import charts  # noqa: F401
        from ... import diff  # noqa: F401

        env = self.env()
        for name in env.list_templates():
            env.get_template(name)
        self.markdown("")
        split_front_matter("---\na: 1\n---\n")

    def env(self):
        """The Jinja2 environment (created on first use: autoescape, strict undefined, the page
        filters)."""
        if self._env is None:
            import jinja2

            env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
                                     trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
            env.filters.update(bytes=fmt_bytes, time=fmt_time, q=_q, revq=_rev_q, first_line=_first_line)
            self._env = env
        return self._env

    def markdown(self, text: str):
        """HTML of Markdown ``text`` (CommonMark and tables; raw HTML is escaped, not
        passed through; ``javascript:`` links are refused by markdown-it)."""
        from markupsafe import Markup

        if self._md is None:
            from markdown_it import MarkdownIt

            self._md = MarkdownIt("commonmark", {"html": False}).enable("table")
        return Markup(self._md.render(text))

    def render(self, request: Request, template: str, code: int = 200, **ctx) -> HTMLResponse:
        """``template`` rendered with ``ctx`` (plus ``user`` and ``path``) as an HTML response
        with status ``code``."""
        ctx.setdefault("title", "tvcfs hub")
        html = self.env().get_template(template).render(user=ctx.pop("user", None), path=request.url.path,
                                                         **ctx)
        return HTMLResponse(html, status_code=code)

    def page(self, fn):
        """Wrap page handler ``fn(request, user) -> (template, context)`` (run in a
        worker thread): errors become HTML error pages, the server time goes into
        ``Server-Timing``."""
        async def endpoint(request: Request):
            t0 = time.perf_counter()
            user = None
            try:
                user = self.user(request)
                if request.path_params.get("org") in RESERVED:
                    raise PageError(404, "no such page")

                def work():
                    out = fn(request, user)
                    if isinstance(out, Response):
                        return out
                    template, ctx = out
                    return self.render(request, template, user=user, **ctx)

                resp = await self.app.thread(work)
            except PageError as e:
                resp = self.error_page(request, user, e.status, e.message, e.login)
            except HubError as e:
                resp = self.error_page(request, user, e.status, str(e))
            except (InvalidName, InvalidEntryName) as e:
                resp = self.error_page(request, user, 422, str(e))
            except (RevisionNotFound, PathNotFound, BlockNotFound) as e:
                resp = self.error_page(request, user, 404, str(e))
            except TvcfsError as e:
                resp = self.error_page(request, user, 400, str(e))
            resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.1f}"
            resp.headers.setdefault("Cache-Control", "no-store")
            resp.headers["X-Content-Type-Options"] = "nosniff"
            resp.headers["Content-Security-Policy"] = ("default-src 'none'; style-src 'unsafe-inline'; "
                                                       "img-src 'self' data:; form-action 'self'; "
                                                       "frame-ancestors 'none'; base-uri 'none'")
            return resp
        return endpoint

    def error_page(self, request, user, status: int, message: str, login: bool = False) -> HTMLResponse:
        """The error page for ``status`` with ``message`` (``login``: offer the login link)."""
        return self.render(request, "error.html", code=status, user=user, title=f"{status}",
                           status=status, message=message, login=login,
                           login_url="/login?next=" + quote(request.url.path, safe="/"))

    def user(self, request: Request) -> str | None:
        """The user of a bearer token (the API's rule) or of the session cookie."""
        from ..http import ApiError

        try:
            return self.app.user(request)
        except ApiError as e:
            raise PageError(e.status, e.message)

    def access(self, user, repo_id: str):
        """The open repository ``repo_id`` if ``user`` may read it; a private one is
        401 (log in) without a user and 404 (invisible) to a user without access."""
        parse_repo_id(repo_id)
        st = self.hub.state
        if st.repo(repo_id) is None:
            raise PageError(404, f"repository {repo_id} not found")
        if not st.can_read(user, repo_id):
            if user is None:
                raise PageError(401, f"repository {repo_id} is private: log in to see it", login=True)
            raise PageError(404, f"repository {repo_id} not found")
        return self.hub.repo(repo_id)

    def common(self, repo_id: str, repo, rev: str, commit: bytes, tab: str) -> dict:
        """The template context every repository page shares (names, privacy, revision, commit
        CID and alias, tab, head branch)."""
        rec = self.hub.state.repo(repo_id) or {}
        return {"repo_id": repo_id, "org": repo_id.split("/")[0], "name": repo_id.split("/")[1],
                "private": bool(rec.get("private")), "rev": rev, "commit": commit,
                "commit_cid": cid_str(commit) if commit else None,
                "alias": commit_alias(commit) if commit else None, "tab": tab,
                "head_branch": repo.head_branch() or "main", "title": repo_id}

    # --- the repository list ------------------------------------------------------
    def index(self, request: Request, user):
        """``GET /``: the repositories visible to ``user`` (filter ``q``, ``sort``);
        ``("index.html", context)``."""
        q = request.query_params.get("q", "").strip()
        sort = request.query_params.get("sort", "name")
        rows = []
        for rid in self.hub.visible_repos(user):
            if q and q.casefold() not in rid.casefold():
                continue
            repo = self.hub.repo(rid)
            rec = self.hub.state.repo(rid) or {}
            head = repo.head()
            row = {"id": rid, "private": bool(rec.get("private")), "size": None, "time": None,
                   "message": "", "alias": None}
            if head is not None:
                com = self.stats.commit(repo, head)
                row.update(size=self.stats.commit_bytes(repo, head)[1], time=com.timestamp,
                           message=_first_line(com.message), alias=commit_alias(head))
            rows.append(row)
        if sort == "size":
            rows.sort(key=lambda r: -(r["size"] or 0))
        elif sort == "updated":
            rows.sort(key=lambda r: -(r["time"] or 0))
        return "index.html", {"rows": rows, "q": q, "sort": sort, "title": "repositories"}

    # --- repository / tree ----------------------------------------------------------
    def repo_page(self, request: Request, user):
        """``GET /{org}/{name}``: the head branch's root listing with the model card."""
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        repo = self.access(user, repo_id)
        return self.tree(request, repo_id, repo, repo.head_branch() or "main", "", card=True)

    def tree_page(self, request: Request, user):
        """``GET /{org}/{name}/tree/{rev}[/{path}]``: a directory listing. Raises
        :class:`PageError` 404 without a revision."""
        from ..http import raw_tail as _raw_tail

        tail = _raw_tail(request, 3)
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        repo = self.access(user, repo_id)
        if not tail or not tail[0]:
            raise PageError(404, "expected /ORG/NAME/tree/REV[/PATH]")
        path = "/".join(tail[1:]).strip("/")
        return self.tree(request, repo_id, repo, tail[0], path, card=not path)

    def tree(self, request, repo_id: str, repo, rev: str, path: str, card: bool):
        """``("tree.html", context)`` for directory ``path`` at ``rev`` (an empty repository
        lists nothing), or a redirect to the blob page for a file. Raises
        :class:`RevisionNotFound`, :class:`PathNotFound`."""
        if path:
            check_path(path)
        try:
            commit = self.hub.resolve(repo_id, rev)
        except RevisionNotFound:
            if path or rev != (repo.head_branch() or "main") or repo.refs():
                raise
            commit = None  # an empty repository
        ctx = self.common(repo_id, repo, rev, commit, "files")
        entries, card_html, front, front_error = [], None, None, None
        if commit is not None:
            e = repo.entry(commit, path)
            if e.kind != KIND_DIR:
                return RedirectResponse(f"/{_q(repo_id)}/blob/{_rev_q(rev)}/{_q(path)}", status_code=302)
            for x in repo.ls(commit, path):
                entries.append({"name": x.name, "kind": x.kind, "size": x.size, "target": x.target,
                                "path": f"{path}/{x.name}" if path else x.name})
            entries.sort(key=lambda x: (x["kind"] != KIND_DIR, x["name"]))
            readme = next((x for x in entries if x["name"].lower() == "readme.md" and x["kind"] == KIND_FILE), None)
            if card and readme is not None:
                raw = self.read_head(repo_id, repo, commit, readme["path"], CARD_LIMIT)
                front, body, front_error = split_front_matter(raw.decode("utf-8", "replace"))
                card_html = self.markdown(body)
            com = self.stats.commit(repo, commit)
            ctx["last"] = {"message": _first_line(com.message), "author": com.author_name, "time": com.timestamp,
                           "alias": commit_alias(commit)}
            ctx["size"] = self.stats.commit_bytes(repo, commit)[1]
        else:
            ctx["last"], ctx["size"] = None, None
        crumbs, acc = [], ""
        for part in path.split("/") if path else []:
            acc = f"{acc}/{part}" if acc else part
            crumbs.append((part, acc))
        base = self.app.base(request)
        transport = getattr(self.app, "transport_url", None)
        ctx.update(entries=entries, card=card_html, front=[(str(k), _meta_value(v)) for k, v in front.items()]
                   if front else None, front_error=front_error, dir_path=path, crumbs=crumbs,
                   branches=sorted(repo.branches().items()), tags=sorted(repo.tags().items()),
                   commit_alias=commit_alias, base=base,
                   tvcfs_url=f"{transport.rstrip('/')}/{repo_id}" if transport else None,
                   show_card=card)
        return "tree.html", ctx

    def read_head(self, repo_id: str, repo, commit: bytes, path: str, limit: int) -> bytes:
        """The first ``limit`` bytes of file ``path`` in ``commit``."""
        e = repo.entry(commit, path)
        idx = self.app.file_index(repo_id, e.cid)
        return idx.read(repo.get, 0, min(limit, idx.size))

    # --- files ------------------------------------------------------------------------
    def blob_page(self, request: Request, user):
        """``GET /{org}/{name}/blob/{rev}/{path}``: a file's page (a safetensors file's tensor
        table, a text file's start), or a redirect to the tree page for a directory. Raises
        :class:`PageError` 404 for a short URL."""
        from ..http import raw_tail as _raw_tail
        from ...chunking.safetensors import NotSafetensors, read_header_with

        tail = _raw_tail(request, 3)
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        repo = self.access(user, repo_id)
        if len(tail) < 2:
            raise PageError(404, "expected /ORG/NAME/blob/REV/PATH")
        rev, path = tail[0], "/".join(tail[1:]).strip("/")
        check_path(path)
        commit = self.hub.resolve(repo_id, rev)
        e = repo.entry(commit, path)
        if e.kind == KIND_DIR:
            return RedirectResponse(f"/{_q(repo_id)}/tree/{_rev_q(rev)}/{_q(path)}", status_code=302)
        ctx = self.common(repo_id, repo, rev, commit, "files")
        crumbs, acc = [], ""
        for part in path.split("/"):
            acc = f"{acc}/{part}" if acc else part
            crumbs.append((part, acc))
        ctx.update(file_path=path, crumbs=crumbs, kind=e.kind, size=e.size, cid=cid_str(e.cid),
                   target=e.target, tensors=None, metadata=None, text=None, leaves=None,
                   download=f"/{_q(repo_id)}/resolve/{commit_alias(commit)}/{_q(path)}",
                   parent_alias=None, new_tensor_bytes=0)
        if e.kind == KIND_SYMLINK:
            return "blob.html", ctx
        idx = self.app.file_index(repo_id, e.cid)
        ctx["leaves"] = len(idx.leaves)
        try:
            hdr = read_header_with(lambda off, n: idx.read(repo.get, off, n), idx.size)
        except NotSafetensors:
            hdr = None
        if hdr is not None:
            com = self.stats.commit(repo, commit)
            parent = None
            if com.parents:
                try:
                    parent = self.stats.blocks(repo, self.stats.commit(repo, com.parents[0]).tree)
                    ctx["parent_alias"] = commit_alias(com.parents[0])
                except BlockNotFound:
                    parent = None
            from ...pack import tensor_storage

            stored = tensor_storage(repo, e.cid)  # what `tvcfs show REV:PATH` reports
            rows = []
            for t in hdr.tensors:
                lr = idx.leaf_range(t.start, t.nbytes)
                held = stored.get(t.name, {"raw": 0, "stored": 0, "encodings": {}})
                new = sum(1 for i in lr if parent is None or idx.leaves[i] not in parent)
                state = "new" if new == len(lr) and len(lr) else "shared" if new == 0 else f"{new} of {len(lr)} leaves new"
                if new:
                    ctx["new_tensor_bytes"] += t.nbytes
                rows.append({"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "bytes": t.nbytes,
                             "leaves": len(lr), "state": state, "raw": held["raw"], "stored": held["stored"],
                             "encodings": ", ".join(f"{n} {k}" for k, n in sorted(held["encodings"].items()))})
            rows.sort(key=lambda r: r["name"])
            ctx["tensors"] = rows
            ctx["metadata"] = sorted((str(k), str(v)) for k, v in hdr.metadata.items())
            ctx["header_bytes"] = hdr.data_start
        else:
            data = idx.read(repo.get, 0, min(TEXT_LIMIT, idx.size))
            if idx.size <= TEXT_LIMIT and b"\0" not in data:
                try:
                    ctx["text"] = data.decode("utf-8")
                except UnicodeDecodeError:
                    pass
        ctx["title"] = f"{path} · {repo_id}"
        return "blob.html", ctx

    # --- the log ------------------------------------------------------------------------
    def commits_page(self, request: Request, user):
        """``GET /{org}/{name}/commits[/{rev}]?p=``: one page of the log. Raises
        :class:`PageError` 422 for a bad page number, 404 past the end."""
        from ..http import raw_tail as _raw_tail

        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        repo = self.access(user, repo_id)
        tail = _raw_tail(request, 3)
        rev = tail[0] if tail and tail[0] else (repo.head_branch() or "main")
        try:
            page = max(1, int(request.query_params.get("p", "1")))
        except ValueError:
            raise PageError(422, "p must be a page number (1, 2, …)")
        head = self.hub.resolve(repo_id, rev)
        cids, more = self.stats.log_page(repo, head, (page - 1) * PAGE, PAGE)
        if not cids:
            raise PageError(404, f"the log of {rev} has no page {page}")
        rows = []
        for c in cids:
            com = self.stats.commit(repo, c)
            new, total = self.stats.commit_bytes(repo, c)
            rows.append({"cid": cid_str(c), "alias": commit_alias(c), "author": com.author_name,
                         "email": com.author_email, "time": com.timestamp, "title": _first_line(com.message),
                         "meta": _commit_meta(com.metadata), "new": new, "total": total,
                         "parents": len(com.parents)})
        from .charts import storage_chart

        bars = [{"label": r["alias"][:7], "href": f"/{_q(repo_id)}/commit/{r['cid']}", "new": r["new"],
                 "total": r["total"],
                 "title": f"{r['alias'][:7]} {r['title']}: {fmt_bytes(r['new'])} new of {fmt_bytes(r['total'])}"}
                for r in reversed(rows)]
        ctx = self.common(repo_id, repo, rev, head, "commits")
        ctx.update(rows=rows, chart=storage_chart(bars), page=page, more=more, first=(page - 1) * PAGE + 1,
                   title=f"commits · {repo_id}")
        return "commits.html", ctx

    # --- commit / compare ------------------------------------------------------------
    def commit_page(self, request: Request, user):
        """``GET /{org}/{name}/commit/{cid}``: a commit and its tensor diff against its first
        parent. Raises :class:`PageError` 404 for a bad URL."""
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        repo = self.access(user, repo_id)
        from ..http import raw_tail as _raw_tail

        tail = _raw_tail(request, 3)
        if len(tail) != 1 or not tail[0]:
            raise PageError(404, "expected /ORG/NAME/commit/CID")
        commit = self.hub.resolve(repo_id, tail[0])
        com = self.stats.commit(repo, commit)
        new, total = self.stats.commit_bytes(repo, commit)
        parent = com.parents[0] if com.parents else None
        ctx = self.common(repo_id, repo, tail[0], commit, "commits")
        ctx.update(com={"cid": cid_str(commit), "alias": commit_alias(commit), "author": com.author_name,
                        "email": com.author_email, "time": com.timestamp, "message": com.message,
                        "meta": _commit_meta(com.metadata),
                        "parents": [(cid_str(p), commit_alias(p)) for p in com.parents],
                        "tree": cid_str(com.tree)},
                   new=new, total=total, title=f"commit {commit_alias(commit)[:7]} · {repo_id}",
                   storage=self.storage(repo, commit),
                   compare_url=f"/{_q(repo_id)}/compare/{cid_str(parent)}...{cid_str(commit)}" if parent else None)
        ctx.update(self.diff_context(repo_id, repo, parent, commit))
        return "commit.html", ctx

    def storage(self, repo, commit: bytes) -> dict:
        """Stored bytes of ``commit``, raw and encoded, for the page: what `tvcfs show`
        and `log --stat` print (:func:`tvcfs.pack.commit_storage`), plus the ratio."""
        from ...pack import commit_storage

        st = commit_storage(repo, commit)
        st["ratio"] = f"{st['new_stored'] / st['new_raw']:.2f}" if st["new_raw"] else "-"
        st["encodings"] = sorted(st["encodings"].items())
        return st

    def compare_page(self, request: Request, user):
        """``GET /{org}/{name}/compare/{rev1}...{rev2}``: the tensor diff of two revisions.
        Raises :class:`PageError` 404 for a bad spec."""
        from ..http import raw_tail as _raw_tail

        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        repo = self.access(user, repo_id)
        spec = "/".join(_raw_tail(request, 3))
        a, sep, b = spec.partition("...")
        if not sep or not a or not b:
            raise PageError(404, "expected /ORG/NAME/compare/REV1...REV2")
        ca, cb = self.hub.resolve(repo_id, a), self.hub.resolve(repo_id, b)
        ctx = self.common(repo_id, repo, b, cb, "commits")
        ctx.update(rev_a=a, rev_b=b, alias_a=commit_alias(ca), alias_b=commit_alias(cb),
                   title=f"compare {a}...{b} · {repo_id}")
        ctx.update(self.diff_context(repo_id, repo, ca, cb))
        return "compare.html", ctx

    def diff_context(self, repo_id: str, repo, ca: bytes | None, cb: bytes) -> dict:
        """The diff of commits ``ca`` → ``cb`` (``ca=None``: against an empty tree) as
        template data: files, their changed tensors and a heat map per safetensors
        file (``tvcfs.diff``, as the REST diff route). Commits never change, so the
        last :data:`DIFFS` results are kept (a diff of a big fine-tune reads every
        changed tensor: seconds for gigabytes)."""
        key = (repo_id, ca, cb)
        got = self.diffs.get(key)
        if got is not None:
            return got
        return self.diffs.put(key, self._diff_context(repo_id, repo, ca, cb))

    def _diff_context(self, repo_id: str, repo, ca: bytes | None, cb: bytes) -> dict:
        from ...diff import diff_trees
        from .charts import change_heatmap

        if ca is None:
            d = diff_trees(repo.get, None, self.stats.commit(repo, cb).tree, None, False)
        else:
            d = repo.diff(ca, cb, numeric=True)
        alias_b = commit_alias(cb)
        files = []
        for f in d.files:
            item = {"path": f.path, "status": f.status, "kind": f.kind, "size_a": f.size_a, "size_b": f.size_b,
                    "tensors": [], "unchanged": f.tensors_unchanged,
                    "metadata": [(k, json.dumps(o), json.dumps(n)) for k, (o, n) in sorted(f.metadata_changes.items())],
                    "href": f"/{_q(repo_id)}/blob/{alias_b}/{_q(f.path)}" if f.status != "removed" else None,
                    "heatmap": None}
            for t in f.tensors:
                item["tensors"].append({
                    "name": t.name, "status": t.status,
                    "a": f"{t.dtype_a} {list(t.shape_a)}" if t.dtype_a else "—",
                    "b": f"{t.dtype_b} {list(t.shape_b)}" if t.dtype_b else "—",
                    "bytes_changed": t.bytes_changed, "leaves_changed": t.leaves_changed,
                    "l2": t.l2_diff, "max": t.max_abs_diff, "rel": t.rel_change, "cos": t.cosine})
            if f.status != "removed" and f.cid_b and (f.kind == "safetensors" or f.tensors):
                from ...encoding.cid import cid_from_str

                changed = {t.name: t for t in f.tensors}
                cells = []
                for name, *_ in repo.tensors(cid_from_str(f.cid_b)):
                    t = changed.get(name)
                    cells.append({"name": name, "status": t.status if t else "unchanged",
                                  "rel": t.rel_change if t else 0.0})
                cells += [{"name": t.name, "status": "removed", "rel": None} for t in f.tensors
                          if t.status == "removed"]
                if cells:
                    item["heatmap"] = change_heatmap(cells)
            files.append(item)
        return {"files": files}

    # --- login / logout -------------------------------------------------------------
    def _next(self, value: str | None) -> str:
        """A local path to go to after login (never another site: ``//host``, ``\\``)."""
        if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
            return "/"
        u = urlsplit(value)
        return value if not u.scheme and not u.netloc else "/"

    def same_origin(self, request: Request) -> bool:
        """A form POST from this site (or from a client that sends no ``Origin``)."""
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return origin is None
        return urlsplit(origin).netloc == request.headers.get("host", "")

    async def login(self, request: Request):
        """``GET /login``: the login form; ``POST``: check the token, set the session cookie
        and redirect to ``next`` (401 form for a bad token, 403 from another site)."""
        user = None
        try:
            user = self.user(request)
        except PageError:
            pass
        nxt = self._next(request.query_params.get("next"))
        if request.method == "GET":
            return self.render(request, "login.html", user=user, next=nxt, error=None, title="log in")
        if not self.same_origin(request):
            return self.error_page(request, user, 403, "login from another site refused")
        body = await self.app.body(request, FORM_LIMIT)
        form = parse_qs(body.decode("utf-8", "replace"))
        nxt = self._next((form.get("next") or [nxt])[0])
        token = (form.get("token") or [""])[0].strip()
        opened = self.app.sessions.open(token)
        if opened is None:
            return self.render(request, "login.html", code=401, user=None, next=nxt,
                               error="this token is not valid (unknown or revoked)", title="log in")
        sid, user = opened
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(COOKIE, sid, max_age=SESSION_TTL, path="/", httponly=True, samesite="lax",
                        secure=request.url.scheme == "https")
        return resp

    async def logout(self, request: Request):
        """``POST /logout``: end the session and clear its cookie, redirect to ``/`` (403 from
        another site)."""
        if not self.same_origin(request):
            return self.error_page(request, None, 403, "logout from another site refused")
        self.app.sessions.close(request.cookies.get(COOKIE))
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")
        return resp

    # --- routes ---------------------------------------------------------------------
    def routes(self) -> list:
        """The page routes; they come after every API route of the application, so
        ``/api/…`` and ``/ORG/NAME/resolve/…`` keep their meaning."""
        p = self.page
        return [
            Route("/", p(self.index)),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/{org}/{name}", p(self.repo_page)),
            Route("/{org}/{name}/tree/{rest:path}", p(self.tree_page)),
            Route("/{org}/{name}/blob/{rest:path}", p(self.blob_page)),
            Route("/{org}/{name}/commits", p(self.commits_page)),
            Route("/{org}/{name}/commits/{rest:path}", p(self.commits_page)),
            Route("/{org}/{name}/commit/{rest:path}", p(self.commit_page)),
            Route("/{org}/{name}/compare/{rest:path}", p(self.compare_page)),
        ]
