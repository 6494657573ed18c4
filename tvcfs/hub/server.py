"""Running the hub: the Starlette application on Hypercorn's trio worker, in one trio
loop (``tvcfs hub serve ROOT --listen HOST:PORT``; docs/hub.md, "Running a hub").

Hypercorn's timeouts bound slow clients: ``read_timeout`` (a connection that sends
nothing for that long is closed: slow-loris), ``keep_alive_timeout`` (idle
keep-alive connections), ``h11_max_incomplete_size`` (request head size)."""

from __future__ import annotations

import signal
import sys

import trio


def hypercorn_config(listen: str, read_timeout: float = 30.0, keep_alive: float = 5.0):
    """A Hypercorn ``Config`` bound to ``listen`` (``HOST:PORT``; port 0 picks one)."""
    from hypercorn.config import Config

    cfg = Config()
    cfg.bind = [listen]
    cfg.read_timeout = read_timeout
    cfg.keep_alive_timeout = keep_alive
    cfg.h11_max_incomplete_size = 64 * 1024
    cfg.backlog = 1024
    cfg.graceful_timeout = 2.0
    cfg.accesslog = None
    cfg.errorlog = "-"
    cfg.loglevel = "WARNING"
    return cfg


async def serve(root: str, listen: str, *, max_body: int = 64 << 30, lfs_threshold: int | None = None,
                read_timeout: float = 30.0, keep_alive: float = 5.0, gateway=None,
                transport_listen: str | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the hub at ``root`` on ``listen`` until SIGINT/SIGTERM; with
    ``transport_listen`` (``HOST:PORT``) also the block exchange of every repository
    (QUIC and TLS/TCP, :mod:`tvcfs.hub.blocks`) in the same trio loop.
    ``task_status`` gets the list of URLs (``["http://127.0.0.1:PORT",
    "tvcfs://PEERID@127.0.0.1:PORT2/"]``)."""
    from hypercorn.trio import serve as hserve

    from .app import HubApp
    from .core import Hub

    hub = Hub.open(root)
    hubapp = HubApp(hub, max_body=max_body, lfs_threshold=lfs_threshold, gateway=gateway)
    app = hubapp.app()
    cfg = hypercorn_config(listen, read_timeout, keep_alive)
    stop = trio.Event()

    async def signals():
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as it:
            async for _ in it:
                stop.set()
                return

    try:
        async with trio.open_nursery() as n:
            n.start_soon(signals)
            async def http(task_status):
                await hserve(app, cfg, shutdown_trigger=stop.wait, task_status=task_status)
                n.cancel_scope.cancel()  # HTTP drained: end the block exchange too

            binds = await n.start(http)
            if transport_listen:
                from ..transport.ops import serve_config
                from .blocks import transport_config

                host, _, port = transport_listen.rpartition(":")
                tcfg = transport_config(hub)
                url, _, _ = await n.start(lambda task_status: serve_config(
                    tcfg, host.strip("[]"), int(port), task_status=task_status))
                binds = [*binds, url]
                hubapp.transport_url = url  # the pages' clone / mount snippets
            task_status.started(binds)
            await stop.wait()
            n.cancel_scope.deadline = trio.current_time() + cfg.graceful_timeout + 1
    finally:
        hub.close()


def main_serve(root: str, listen: str, **kw) -> int:
    """Blocking entry of ``tvcfs hub serve``: prints the URL (one line, stdout) once
    listening."""
    async def run():
        async def announce(task_status=trio.TASK_STATUS_IGNORED):
            await serve(root, listen, task_status=task_status, **kw)

        async with trio.open_nursery() as n:
            binds = await n.start(announce)
            for b in binds:
                print(b, flush=True)
            print(f"tvcfs hub: serving {root}", file=sys.stderr, flush=True)

    trio.run(run)
    return 0
