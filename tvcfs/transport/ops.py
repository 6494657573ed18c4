"""Serving a repository to peers: ``tvcfs serve`` over QUIC and TLS-over-TCP.

The sync verbs (clone, fetch, pull, push, lazy fetch) are in :mod:`tvcfs.sync`,
once for every remote kind; the tvcfs:// side of them is
:class:`~tvcfs.transport.peer.PeerRemote`. What is left here is the serving end:
:func:`parse_listen`, :func:`serve_async`, :func:`serve_config`.
"""

from __future__ import annotations

import trio

from ..errors import TvcfsError
from .backend import RepoBackend
from .identity import IdentityError

__all__ = ["parse_listen", "serve_async", "serve_config"]


# ------------------------------------------------------------------ serve
def parse_listen(text: str, default_port: int | None = None, option: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT`` → ``(host, port)``; a missing
    port is ``default_port`` (the peer protocol's 4740 when ``None``). Raises
    :class:`TvcfsError` naming ``option``."""
    from .client import DEFAULT_PORT

    text = text.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.isdigit():
        host, port = "", text
    else:
        host, port = text, ""
    try:
        p = int(port) if port else (DEFAULT_PORT if default_port is None else default_port)
    except ValueError:
        raise TvcfsError(f"bad {option} address {text!r} (HOST:PORT)") from None
    if not 0 <= p < 65536:
        raise TvcfsError(f"bad port in {option} {text!r}")
    return host or "0.0.0.0", p


async def serve_async(repo, host: str, port: int, *, private: bool = False,
                      allow_push=(), quic: bool = True, tcp: bool = True,
                      engine: str | None = None, on_ready=None, rate_limit: float | None = None,
                      task_status=trio.TASK_STATUS_IGNORED):
    """Serve ``repo`` on ``host:port`` over QUIC (UDP) and TLS-over-TCP on the same
    port number until cancelled. ``on_ready(url, port)`` is called once both listen.
    ``rate_limit``: bytes per second for all peers together (``None``: unlimited)."""
    from .identity import parse_peer_id
    from .server import RateLimit, ServerConfig

    ident = repo.identity()
    allowed = set()
    for p in allow_push:
        try:
            allowed.add(parse_peer_id(p))
        except IdentityError as e:
            raise TvcfsError(f"--allow-push {p}: {e}") from None
    cfg = ServerConfig(RepoBackend(repo), ident, private=private, allow_push=allowed,
                       rate_limit=RateLimit(rate_limit) if rate_limit else None)
    await serve_config(cfg, host, port, quic=quic, tcp=tcp, engine=engine, on_ready=on_ready,
                       task_status=task_status)


async def serve_config(cfg, host: str, port: int, *, quic: bool = True, tcp: bool = True,
                       engine: str | None = None, on_ready=None, task_status=trio.TASK_STATUS_IGNORED):
    """Serve sessions configured by ``cfg`` (a :class:`~.server.ServerConfig`: its
    identity is the TLS key; with ``cfg.resolve`` set, each session's repository is
    chosen by the name in its ``Hello``) on ``host:port`` over QUIC and TLS-over-TCP
    (same port number) until cancelled; see :func:`serve_async`."""
    from .quic import QuicSettings, serve_quic
    from .server import handle_session
    from .tcp import serve_tcp

    if not quic and not tcp:
        raise TvcfsError("nothing to serve: both --no-quic and --no-tcp given")
    ident = cfg.identity

    async def handler(stream):
        await handle_session(stream, cfg)

    async with trio.open_nursery() as n:
        bound = None
        for attempt in range(20):
            listeners = None
            try:
                if tcp:
                    listeners = await trio.open_tcp_listeners(port, host=host)
                    p = listeners[0].socket.getsockname()[1]
                else:
                    p = port
                if quic:
                    srv = await n.start(lambda task_status: serve_quic(
                        handler, host, p, identity=ident,
                        settings=QuicSettings(engine=engine), task_status=task_status))
                    p = srv.address[1]
                bound = p
                break
            except OSError:
                if listeners:
                    for ls in listeners:
                        await ls.aclose()
                if port != 0 or attempt == 19:
                    raise
        if tcp:
            await n.start(lambda task_status: serve_tcp(
                handler, host, bound, identity=ident, listeners=listeners,
                task_status=task_status))
        shown = host
        if host in ("0.0.0.0", "::", ""):
            import socket

            shown = socket.gethostname()
        hshow = f"[{shown}]" if ":" in shown else shown
        scheme = "tvcfs" if quic and tcp else ("tvcfs+quic" if quic else "tvcfs")
        url = f"{scheme}://{ident.peer_id_str}@{hshow}:{bound}/"
        if on_ready:
            on_ready(url, bound, cfg)
        task_status.started((url, bound, cfg))
