"""The trustless gateway as an ASGI app (Starlette), and its server (Hypercorn on trio).

``make_gateway_app(get_repo)`` answers, for the repository ``get_repo(request)``
returns (sync or async; it may raise Starlette's ``HTTPException``, e.g. 404 for an
unknown repository)::

    GET|HEAD /ipfs/{cid}?format=raw            one block    (Accept: application/vnd.ipld.raw)
    GET|HEAD /ipfs/{cid}[/{path}]?format=car   a CAR v1     (Accept: application/vnd.ipld.car)
             &dag-scope=block|entity|all  &entity-bytes=FROM:TO
    GET|HEAD /ipfs/bafkqaaa                    the spec's probe (empty block / empty CAR)

The hub mounts the same app once per repository (``Mount("/{repo}", app)``: the
mount's path parameters reach ``get_repo`` in ``request.path_params``). Blocks are
read through the repository's block layer (``Repo.get``: local store, then any
configured backend; every block is verified against its CID before it leaves the
store) on worker threads, so the event loop never waits on LMDB or a remote tier.

Status codes: 400 a bad CID, format, path on a raw request or ``entity-bytes``; 404 the
root block or a path component not held; 406 only unsupported CAR variants
acceptable; 412 ``Cache-Control: only-if-cached`` and the root block not in the local
store; 502 a backend could not answer; 500 a damaged block in the store. Once a CAR
has started (200 sent) a block missing below the root ends the stream early, as the
spec prescribes. Spec: https://specs.ipfs.tech/http-gateways/trustless-gateway/ ;
``docs/backends.md``, "The IPFS network".
"""

from __future__ import annotations

import inspect
import logging
from typing import Callable

import trio

from ..encoding.cid import cid_str
from ..errors import BlockNotFound, BlockUnavailable, CorruptBlock, MalformedObject
from . import core
from .core import GatewayError

__all__ = ["gateway_routes", "make_gateway_app", "serve_http"]

log = logging.getLogger("tvcfs.gateway")
_STREAM_ERRORS = (BlockNotFound, BlockUnavailable, CorruptBlock, MalformedObject)


class _QuietStreamEnd(logging.Filter):
    """Drops Hypercorn's traceback for a CAR stream this app ended on purpose (a block
    missing below the root: already logged as one warning line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _STREAM_ERRORS)


def _headers(etag: str, ipfs_path: str, roots: list, disposition: str, want, content_location) -> dict:
    h = {
        "Content-Type": want.content_type,
        "Cache-Control": core.IMMUTABLE,
        "Etag": etag,
        "Content-Disposition": f'attachment; filename="{disposition}"',
        "X-Content-Type-Options": "nosniff",
        "X-Ipfs-Path": ipfs_path,
        "X-Ipfs-Roots": ",".join(cid_str(r) for r in roots),
        "Vary": "Accept",
    }
    if content_location:
        h["Content-Location"] = content_location
    return h


def _not_modified(request, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")]
    return "*" in tags or etag.removeprefix("W/") in tags


def _error(e: Exception):
    from starlette.responses import PlainTextResponse

    if isinstance(e, GatewayError):
        status = e.status
    elif isinstance(e, BlockNotFound):
        status = 404
    elif isinstance(e, BlockUnavailable):
        status = 502
    elif isinstance(e, MalformedObject):
        status = 400
    else:  # CorruptBlock: the store holds a damaged copy
        status = 500
    return PlainTextResponse(str(e).partition("\n")[0] + "\n", status_code=status,
                             headers={"Cache-Control": "no-store"})


def gateway_routes(get_repo: Callable) -> list:
    """The Starlette routes of the gateway (``/ipfs/{cid}`` and ``/ipfs/{cid}/{path}``),
    for an app that wants them among its own; ``get_repo(request) -> Repo``."""
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    async def repo_for(request):
        repo = get_repo(request)
        if inspect.isawaitable(repo):
            repo = await repo
        return repo

    async def ipfs(request):
        text = request.path_params["cid"]
        path = request.path_params.get("path", "")
        q = request.query_params
        head = request.method == "HEAD"
        try:
            want = core.negotiate(q.get("format"), request.headers.get("accept"), q.get("car-version"),
                                  q.get("car-order"), q.get("car-dups"))
            if want.kind == "raw" and path.strip("/"):
                raise GatewayError(400, "a block request (format=raw) takes no path: "
                                        "ask for format=car to follow a path")
            probe = text == core.PROBE_CID
            root = core.PROBE_BYTES if probe else core.parse_cid(text)
            ipfs_path = f"/ipfs/{text}" + (f"/{path.strip('/')}" if path.strip("/") else "")
            location = None if want.from_format else (
                f"{ipfs_path}?format={want.kind}" + (f"&{request.url.query}" if request.url.query else ""))
            repo = None if probe else await repo_for(request)
            if want.kind == "raw":
                return await raw(request, repo, root, text, ipfs_path, want, location, head, probe)
            return await car(request, repo, root, text, path, ipfs_path, want, location, head, probe)
        except (GatewayError, *_STREAM_ERRORS) as e:
            return _error(e)

    async def raw(request, repo, root, text, ipfs_path, want, location, head, probe):
        if "only-if-cached" in request.headers.get("cache-control", "") and not probe \
                and not await run_in_threadpool(repo.has, root):
            raise GatewayError(412, f"block {text} is not in this gateway's local store")
        data = b"" if probe else bytes(await run_in_threadpool(repo.get, root))
        etag = f'"{text}.raw"' if probe else f'"{cid_str(root)}.raw"'
        headers = _headers(etag, ipfs_path, [root] if not probe else [], f"{text}.bin", want, location)
        if _not_modified(request, etag):
            return Response(status_code=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
        headers["Content-Length"] = str(len(data))
        return Response(b"" if head else data, headers=headers)

    async def car(request, repo, root, text, path, ipfs_path, want, location, head, probe):
        q = request.query_params
        rng_text = q.get("entity-bytes")
        rng = core.parse_entity_bytes(rng_text) if rng_text is not None else None
        scope = q.get("dag-scope") or ("entity" if rng is not None else "all")
        if scope not in core.SCOPES:
            raise GatewayError(400, f"invalid dag-scope={scope!r}: expected block, entity or all")
        if scope != "entity":
            rng, rng_text = None, None  # entity-bytes applies to dag-scope=entity only
        etag = core.car_etag(root, path, scope, rng_text, want.dups)
        if probe:
            headers = _headers(etag, ipfs_path, [], f"{text}.car", want, location)
            return Response(b"" if head else core.car_header(root), headers=headers)
        if "only-if-cached" in request.headers.get("cache-control", "") \
                and not await run_in_threadpool(repo.has, root):
            raise GatewayError(412, f"block {text} is not in this gateway's local store")
        get = repo.get
        first = await run_in_threadpool(get, root)  # 404 before anything is sent
        terminal, path_blocks = await run_in_threadpool(
            core.resolve, lambda c: first if c == root else get(c), root, path)
        roots = [c for c, _ in path_blocks] or [root]
        headers = _headers(etag, ipfs_path, roots, f"{cid_str(root)}.car", want, location)
        if _not_modified(request, etag):
            return Response(status_code=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
        if head:
            return Response(b"", headers=headers)

        def sections():
            yield core.car_header(root)
            try:
                for c, b in core.car_blocks(get, terminal, path_blocks, scope, rng, want.dups):
                    yield core.car_section(c, b)
            except _STREAM_ERRORS as e:
                log.warning("CAR of %s ended early: %s", ipfs_path, e)
                raise  # the server aborts the response: the client sees an incomplete CAR

        return StreamingResponse(iterate_in_threadpool(sections()), headers=headers)

    return [Route("/ipfs/{cid}", ipfs, methods=["GET", "HEAD"]),
            Route("/ipfs/{cid}/{path:path}", ipfs, methods=["GET", "HEAD"])]


def make_gateway_app(get_repo: Callable):
    """A Starlette ASGI app serving the trustless gateway for ``get_repo(request) ->
    Repo`` (see the module docstring). Raises ``ImportError`` naming the extra when
    Starlette is missing."""
    try:
        from starlette.applications import Starlette
    except ImportError as e:
        raise ImportError(f"the HTTP gateway needs starlette ({e.name} is missing): "
                          "pip install 'tvcfs[gateway]'") from None
    return Starlette(routes=gateway_routes(get_repo))


async def serve_http(app, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the ASGI ``app`` over HTTP/1.1 (and h2c) on ``host:port`` with Hypercorn's
    trio worker, in the caller's trio loop, until cancelled. ``task_status.started``
    gets the base URL ``http://HOST:PORT`` (the bound port when ``port`` is 0).
    Raises ``OSError`` if the address cannot be bound."""
    try:
        from hypercorn.config import Config
        from hypercorn.trio import serve
    except ImportError as e:
        raise ImportError(f"tvcfs serve --http needs hypercorn ({e.name} is missing): "
                          "pip install 'tvcfs[gateway]'") from None
    cfg = Config()
    cfg.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("tvcfs.gateway.server")  # Hypercorn's own lines
    cfg.errorlog.setLevel(logging.WARNING)  # not "Running on …": the caller prints the URL
    if not any(isinstance(f, _QuietStreamEnd) for f in cfg.errorlog.filters):
        cfg.errorlog.addFilter(_QuietStreamEnd())
    cfg.graceful_timeout = 1.0
    async with trio.open_nursery() as n:
        binds = await n.start(lambda task_status: serve(app, cfg, task_status=task_status))
        task_status.started(binds[0])
