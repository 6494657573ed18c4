"""Running the hub: the Starlette application on Hypercorn's trio worker, in one trio
loop (``tvcfs hub serve ROOT --listen HOST:PORT``; docs/hub.md, "Running a hub").

``--workers N`` (N > 1) adds N - 1 HTTP worker processes, forked before any trio loop
or LMDB environment exists: every process has its own listening socket bound to the
same address with ``SO_REUSEPORT`` (the kernel spreads connections over them), its own
:class:`~tvcfs.hub.core.Hub` on the same root (LMDB and ``hub.json`` are safe across
processes) and its own caches (keyed by CID: never stale). The block exchange runs in
the first process only; it tells the others its URL through a pipe (the pages' clone
snippets). A worker gets SIGTERM when the first process exits, however it exits.

Hypercorn's timeouts bound slow clients: ``read_timeout`` (a connection that sends
nothing for that long is closed: slow-loris), ``keep_alive_timeout`` (idle
keep-alive connections), ``h11_max_incomplete_size`` (request head size)."""

from __future__ import annotations

import os
import signal
import socket
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
                transport_listen: str | None = None, listen_fd: int | None = None,
                url_pipes: tuple = (), url_pipe: int | None = None, blob_listen: str | None = "",
                blob_fd: int | None = None, blob_threshold: int | None = None,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the hub at ``root`` on ``listen`` until SIGINT/SIGTERM; with
    ``transport_listen`` (``HOST:PORT``) also the block exchange of every repository
    (QUIC and TLS/TCP, :mod:`tvcfs.hub.blocks`) in the same trio loop.
    ``task_status`` gets the list of URLs (``["http://127.0.0.1:PORT",
    "tvcfs://PEERID@127.0.0.1:PORT2/"]``).

    Workers (:func:`main_serve`): ``listen_fd`` is a bound, listening socket to serve
    instead of binding ``listen`` (the file descriptor is taken over and closed);
    ``url_pipes``: write ends of pipes that get the block exchange's URL (one line)
    once it listens, then are closed; ``url_pipe``: the read end of such a pipe, whose
    line becomes the pages' ``transport_url``.

    Large files (:mod:`tvcfs.hub.blobs`): ``blob_listen`` (``HOST:PORT``) is where the
    blob responder listens (``""``: the host of ``listen`` and a free port; ``None``:
    no blob port, every file is answered by the HTTP app itself); ``blob_fd``: a
    bound, listening socket to serve instead (workers); ``blob_threshold``: bytes from
    which ``resolve`` redirects there (default
    :data:`~tvcfs.hub.app.BLOB_THRESHOLD`)."""
    from hypercorn.trio import serve as hserve

    from .app import HubApp, trustless_gateway
    from .core import Hub

    hub = Hub.open(root)
    hubapp = HubApp(hub, max_body=max_body, lfs_threshold=lfs_threshold, gateway=gateway or trustless_gateway)
    app = hubapp.app()
    cfg = hypercorn_config(listen if listen_fd is None else f"fd://{listen_fd}", read_timeout, keep_alive)
    stop = trio.Event()

    async def signals():
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as it:
            async for _ in it:
                stop.set()
                return

    try:
        blob_listeners = None
        if blob_listen is not None or blob_fd is not None:  # bound first: a clear error, not a nursery's
            blob_listeners = await _blob_listeners(listen, blob_listen, blob_fd)
        async with trio.open_nursery() as n:
            n.start_soon(signals)
            async def http(task_status):
                await hserve(app, cfg, shutdown_trigger=stop.wait, task_status=task_status)
                n.cancel_scope.cancel()  # HTTP drained: end the block exchange too

            if blob_listeners:
                await _start_blobs(n, hub, hubapp, blob_listeners, blob_threshold, read_timeout, keep_alive,
                                   announce=url_pipe is None)
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
            _tell_url(url_pipes, hubapp.transport_url)
            if url_pipe is not None:
                n.start_soon(_learn_url, url_pipe, hubapp)
            task_status.started(binds)
            await stop.wait()
            n.cancel_scope.deadline = trio.current_time() + cfg.graceful_timeout + 1
    finally:
        hub.close()


async def _blob_listeners(listen: str, blob_listen: str | None, blob_fd: int | None) -> list:
    """Trio listeners of the blob port: ``blob_fd`` (a bound, listening socket), or
    bound to ``blob_listen`` (``""``: ``listen``'s host, a free port). Raises
    :class:`~tvcfs.errors.TvcfsError` when the address cannot be bound."""
    from ..errors import TvcfsError

    if blob_fd is not None:
        return [trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=blob_fd)))]
    addr = blob_listen or f"{listen.rpartition(':')[0]}:0"
    host, _, port = addr.rpartition(":")
    try:
        return await trio.open_tcp_listeners(int(port), host=host.strip("[]") or None, backlog=1024)
    except (OSError, ValueError) as e:
        raise TvcfsError(f"cannot listen on --blob-listen {addr}: {getattr(e, 'strerror', None) or e} "
                         "(pick another HOST:PORT, or none)") from None


async def _start_blobs(n, hub, hubapp, listeners: list, threshold: int | None, read_timeout: float,
                       keep_alive: float, announce: bool) -> None:
    """Start the blob responder (:class:`~tvcfs.hub.blobs.BlobServer`) on
    ``listeners`` in nursery ``n`` and tell ``hubapp`` where it is; with
    ``announce``, log its URL (stderr)."""
    from .blobs import BlobServer, BlobSigner

    name = listeners[0].socket.getsockname()
    blobs = BlobServer(hub, BlobSigner(hub.sign), hubapp.file_index, read_timeout, keep_alive)
    hubapp.blob_signer, hubapp.blob_port = blobs.signer, name[1]
    hubapp.blob_host = None if name[0] in ("0.0.0.0", "::") else name[0]
    if threshold is not None:
        hubapp.blob_threshold = threshold
    await n.start(blobs.serve, listeners)
    if announce:
        shown = name[0] if ":" not in name[0] else f"[{name[0]}]"
        print(f"tvcfs hub: large files (>= {hubapp.blob_threshold} bytes) on http://{shown}:{name[1]}/blobs/",
              file=sys.stderr, flush=True)


def _tell_url(fds, url: str | None) -> None:
    """Write ``url`` (a line; nothing when ``None``) to each pipe in ``fds``, close them."""
    for fd in fds:
        try:
            if url:
                os.write(fd, url.encode() + b"\n")
        except OSError:  # that worker is gone
            pass
        finally:
            os.close(fd)


async def _learn_url(fd: int, hubapp) -> None:
    """Read the block exchange's URL (one line, or nothing) from pipe ``fd`` into
    ``hubapp.transport_url``."""
    data = b""
    async with trio.lowlevel.FdStream(fd) as s:
        while not data.endswith(b"\n"):
            chunk = await s.receive_some(4096)
            if not chunk:
                break
            data += chunk
    if data.strip():
        hubapp.transport_url = data.decode().strip()


def listen_sockets(listen: str, n: int) -> list:
    """``n`` TCP sockets bound to ``listen`` (``HOST:PORT``; port 0: one free port for
    all) with ``SO_REUSEPORT``, listening. Raises :class:`~tvcfs.errors.TvcfsError`
    when the address cannot be bound."""
    from ..errors import TvcfsError

    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port_n = int(port)
    except ValueError:
        raise TvcfsError(f"--listen {listen}: expected HOST:PORT") from None
    socks: list = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.bind((host, port_n))
            port_n = s.getsockname()[1]
            s.listen(1024)
    except OSError as e:
        for s in socks:
            s.close()
        raise TvcfsError(f"cannot listen on {listen}: {e.strerror or e} (pick another --listen)") from None
    return socks


def _worker(root: str, sock, url_pipe: int, parent: int, kw: dict, blob_sock=None) -> None:
    """Body of a forked HTTP worker: serve ``sock`` until SIGTERM (sent by the kernel
    when the first process exits), then leave with ``os._exit``."""
    code = 0
    try:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the first process died before prctl
            os._exit(0)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)  # only the first process prints the URLs
        os.close(null)
        kw = dict(kw, transport_listen=None)
        if blob_sock is not None:
            kw["blob_fd"] = blob_sock.detach()
        trio.run(lambda: serve(root, "", listen_fd=sock.detach(), url_pipe=url_pipe, **kw))
    except BaseException:  # noqa: BLE001 - a worker never returns into the parent's code
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)


def _stop_workers(pids: list, timeout: float = 10.0) -> None:
    """SIGTERM the worker ``pids``, wait ``timeout`` s for them, SIGKILL what is left."""
    import time

    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                left.discard(pid)
        if left and time.monotonic() > deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            return
        if left:
            time.sleep(0.05)


def main_serve(root: str, listen: str, workers: int = 1, **kw) -> int:
    """Blocking entry of ``tvcfs hub serve``: prints the URL (one line, stdout) once
    listening. ``workers`` > 1: that many HTTP processes on ``listen`` (module
    docstring); raises :class:`~tvcfs.errors.TvcfsError` when ``listen`` cannot be
    bound."""
    pids: list = []
    extra: dict = {}
    if workers > 1:
        socks = listen_sockets(listen, workers)
        blob_listen = kw.get("blob_listen", "")
        blob_socks = [None] * workers
        if blob_listen is not None:  # every process serves the blob port too (SO_REUSEPORT)
            try:
                blob_socks = listen_sockets(blob_listen or f"{listen.rpartition(':')[0]}:0", workers)
            except BaseException:
                for o in socks:
                    o.close()
                raise
        me, pipes = os.getpid(), []
        for s, bs in zip(socks[1:], blob_socks[1:]):
            r, w = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                os.close(w)
                for fd in pipes:
                    os.close(fd)
                for o in [*socks, *blob_socks]:
                    if o is not None and o is not s and o is not bs:
                        o.close()
                _worker(root, s, r, me, kw, bs)
            os.close(r)
            s.close()
            if bs is not None:
                bs.close()
            pids.append(pid)
            pipes.append(w)
        extra = {"listen_fd": socks[0].detach(), "url_pipes": tuple(pipes)}
        if blob_socks[0] is not None:
            extra["blob_fd"] = blob_socks[0].detach()

    async def run():
        async def announce(task_status=trio.TASK_STATUS_IGNORED):
            await serve(root, listen, task_status=task_status, **extra, **kw)

        async with trio.open_nursery() as n:
            binds = await n.start(announce)
            for b in binds:
                print(b, flush=True)
            print(f"tvcfs hub: serving {root}" + (f" ({workers} HTTP processes)" if workers > 1 else ""),
                  file=sys.stderr, flush=True)

    try:
        trio.run(run)
    except BaseExceptionGroup as eg:  # a bind error raised inside the nurseries: show it plainly
        from ..errors import TvcfsError
        from ..transport.quic import _single

        one = _single(eg)
        if isinstance(one, TvcfsError):
            raise one from None
        raise
    finally:
        _stop_workers(pids)
    return 0
