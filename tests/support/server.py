"""The one server harness of the tests (docs/testing.md).

:class:`ServerProcess` starts a server as a child process, reads the URL line(s) it
prints on stdout (with a deadline, failing with its log), and stops it by its PID
(SIGTERM, then SIGKILL) in every case. Its uses:

- :class:`TvcfsServe`: ``tvcfs serve REPO [--http ...]`` (peers, gateway);
- :func:`running_hub`: ``tvcfs hub serve ROOT``;
- :class:`Server`: this file run as a script, a TensorSwap server whose peers may lie
  (``--corrupt``) and whose identity survives restarts (``--key``)::

    python tests/support/server.py serve REPO [--key FILE] [--port N] [--transport quic|tcp]
                                              [--corrupt] [--foreign] [--stall all|dag]

  It prints ``READY <url>`` once listening. ``--corrupt`` serves every raw leaf with
  its first byte flipped (through ``ServerConfig.corrupt_hook``); ``--foreign``
  answers with, in place of every raw leaf, a good block of no DAG that was asked
  for (random bytes under their own CID), and still ends each answer "ok";
  ``--stall all`` answers nothing after the handshake, ``--stall dag`` only the refs.

In-process servers on a thread: :func:`gateway_thread` (the trustless gateway app on
Hypercorn) and :func:`moto_s3_server` (moto's S3); :func:`silent_http`, a listener
that never answers. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time

if __package__ in (None, ""):  # run as a script: make ``support`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from support import read_log  # noqa: E402
from support.cli import cli_env, tvcfs_executable  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))


# ---------------------------------------------------------------- server process
def _serve_main(argv) -> None:
    import argparse

    import trio

    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("--key")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--transport", default="quic", choices=("quic", "tcp"))
    ap.add_argument("--corrupt", action="store_true")
    ap.add_argument("--foreign", action="store_true")
    ap.add_argument("--stall", choices=("all", "dag"))
    a = ap.parse_args(argv)

    from tvcfs.repo import Repo
    from tvcfs.transport.backend import RepoBackend
    from tvcfs.transport.identity import NodeIdentity
    from tvcfs.transport.server import ServerConfig

    repo = Repo.open(a.repo)
    ident = NodeIdentity.load_or_create(a.key) if a.key else NodeIdentity.generate()

    def corrupt(cid, data):
        if cid[1] == 0x55 and len(data):
            return bytes([data[0] ^ 0xFF]) + bytes(data[1:])
        return data

    cfg = ServerConfig(RepoBackend(repo), ident, corrupt_hook=corrupt if a.corrupt else None)
    if a.foreign:  # every raw leaf answered with a good block of no DAG asked for
        from tvcfs.encoding.cid import RAW, make_cid
        from tvcfs.transport.session import ServerSession

        outgoing = ServerSession._outgoing

        def foreign(self, cid, data):
            if cid[1] == 0x55:
                data = os.urandom(len(data))
                cid = make_cid(RAW, data)
            return outgoing(self, cid, data)

        ServerSession._outgoing = foreign
    if a.stall:  # after the handshake, answer nothing (all) or only the refs (dag)
        from tvcfs.transport import protocol
        from tvcfs.transport.session import ServerSession

        handle = ServerSession._handle
        keep = (protocol.Auth, protocol.ListRefs) if a.stall == "dag" else (protocol.Auth,)

        def stalled(self, msg):
            if self.state == "hello" or type(msg) in keep:
                handle(self, msg)

        ServerSession._handle = stalled

    async def main():
        async with trio.open_nursery() as n:
            url = await start_server(n, cfg, a.transport, engine=None, port=a.port)
            print("READY", url, flush=True)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass


async def start_server(nursery, cfg, transport: str = "quic", engine: str | None = "qh3", port: int = 0) -> str:
    """Serve the block-exchange protocol with ``cfg`` (a
    ``tvcfs.transport.server.ServerConfig``) in ``nursery`` (trio) on 127.0.0.1:``port``
    (0: a free port) over ``transport`` ("quic" with QUIC ``engine`` — ``None``: the
    default — or "tcp"); return its ``tvcfs+quic://`` / ``tvcfs+tcp://`` URL."""
    from tvcfs.transport.identity import format_peer_id
    from tvcfs.transport.quic import QuicSettings, serve_quic
    from tvcfs.transport.server import handle_session
    from tvcfs.transport.tcp import serve_tcp

    pid = format_peer_id(cfg.identity.peer_id)
    if transport == "quic":
        settings = QuicSettings() if engine is None else QuicSettings(engine=engine)
        srv = await nursery.start(lambda task_status: serve_quic(
            lambda s: handle_session(s, cfg), "127.0.0.1", port, identity=cfg.identity,
            settings=settings, task_status=task_status))
        return f"tvcfs+quic://{pid}@127.0.0.1:{srv.address[1]}/"
    assert transport == "tcp", transport
    addr = await nursery.start(lambda task_status: serve_tcp(
        lambda s: handle_session(s, cfg), "127.0.0.1", port, identity=cfg.identity,
        task_status=task_status))
    return f"tvcfs+tcp://{pid}@127.0.0.1:{addr[1]}/"


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """End child process ``proc`` (one this test started): SIGTERM (a clean stop),
    then SIGKILL if it has not exited within ``timeout`` seconds; wait for it."""
    for stop in (proc.terminate, proc.kill):
        if proc.poll() is not None:
            return
        stop()
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


class ServerProcess:
    """A server child process that prints ``lines`` URL lines on stdout when ready.

    ``argv``: the command; ``log_path``: a file receiving its stderr (default: a
    temporary file named after ``name``, deleted when the server stops); ``env``: see
    :func:`support.cli.cli_env`; ``cwd``: its working directory; ``timeout``: seconds
    to wait for the lines. Raises
    ``AssertionError`` with the log's tail if the process exits or stays silent; the
    process is stopped then. ``lines`` (list of str) holds what it printed, ``proc``
    the ``Popen``. Use as a context manager or call :meth:`stop`.
    """

    def __init__(self, argv: list, *, lines: int = 1, log_path: str | None = None, env: dict | None = None,
                 timeout: float = 60.0, name: str = "server", cwd: str | None = None):
        import tempfile

        if log_path:
            self.log_path, self._temp_log = str(log_path), False
            self._log = open(self.log_path, "ab")
        else:
            self._log = tempfile.NamedTemporaryFile(prefix=f"tvcfs-test-{name}-", suffix=".log", delete=False)
            self.log_path, self._temp_log = self._log.name, True
        self.proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._log, env=cli_env(env), cwd=cwd)
        try:
            self.lines = self._read_lines(lines, timeout)
        except BaseException:
            self.stop()
            raise

    def _read_lines(self, n: int, timeout: float) -> list:
        buf = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while buf.count(b"\n") < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"server did not print {n} line(s) in {timeout:g} s: {buf!r}\n"
                                         f"{self.log()[-3000:]}")
                if sel.select(timeout=min(left, 0.5)):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:  # exited
                        raise AssertionError(f"server exited ({self.proc.wait()}) after {buf!r}:\n"
                                             f"{self.log()[-3000:]}")
                    buf += chunk
        return [x.decode().strip() for x in buf.split(b"\n")[:n]]

    @property
    def pid(self) -> int:
        """PID of the server process."""
        return self.proc.pid

    def log(self) -> str:
        """The server's stderr so far ("" once a temporary log is deleted)."""
        return read_log(self.log_path)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to this server (by its PID) and wait for it (SIGKILL after 10 s)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._close()

    def kill9(self) -> None:
        """SIGKILL this server and wait for it (a crash)."""
        self.kill(signal.SIGKILL)

    def stop(self, timeout: float = 15) -> None:
        """Stop this server cleanly (SIGTERM, then SIGKILL after ``timeout`` s)."""
        stop_process(self.proc, timeout)
        self._close()

    def _close(self) -> None:
        if self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()
        if not self._log.closed:
            self._log.close()
            if self._temp_log:
                with contextlib.suppress(OSError):
                    os.unlink(self.log_path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


class Server(ServerProcess):
    """The TensorSwap server script (module docstring) serving ``repo``: ``url``,
    ``port``, ``key``, ``repo``, ``transport``. ``kill()`` is a SIGKILL (a crash)."""

    def __init__(self, repo: str, *, key: str | None = None, port: int = 0,
                 transport: str = "quic", corrupt: bool = False, foreign: bool = False,
                 stall: str | None = None, timeout: float = 30.0):
        argv = [sys.executable, os.path.abspath(__file__), "serve", repo, "--port", str(port),
                "--transport", transport]
        if key:
            argv += ["--key", key]
        if corrupt:
            argv.append("--corrupt")
        if foreign:
            argv.append("--foreign")
        if stall:
            argv += ["--stall", stall]
        env = {"PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        super().__init__(argv, env=env, timeout=timeout, name="tensorswap")
        line = self.lines[0]
        assert line.startswith("READY"), (line, self.log()[-3000:])
        self.url = line.split()[1]
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
        self.key, self.repo, self.transport = key, repo, transport

    def __exit__(self, *exc):
        self.kill()
        return False


class TvcfsServe(ServerProcess):
    """``tvcfs serve REPO --listen LISTEN [ARGS]`` (``--http ADDR`` in ``args`` also
    serves the gateway). Attributes: ``url`` (the gateway's URL with ``--http``,
    else the tvcfs:// URL), ``peer_url`` (the tvcfs:// URL or ``None``),
    ``http_url`` (the gateway's ``http://127.0.0.1:PORT`` or ``None``), ``peer_id``,
    ``port`` (of the tvcfs:// URL); stderr in ``log()`` (a file in ``tmp``)."""

    def __init__(self, repo: str, tmp, *args, listen: str = "127.0.0.1:0", name: str = "srv",
                 env: dict | None = None, timeout: float = 60.0):
        self.repo = str(repo)
        args = [str(a) for a in args]
        http = "--http" in args
        http_only = "--http-only" in args
        lines = 1 if http_only or not http else 2
        argv = tvcfs_executable() + ["serve", self.repo, *([] if http_only else ["--listen", listen]), *args]
        log = os.path.join(str(tmp), f"{name}-{time.monotonic_ns()}.log")
        super().__init__(argv, lines=lines, log_path=log, env=env, timeout=timeout, name=name)
        self.peer_url = None if http_only else self.lines[0]
        self.http_url = self.lines[-1] if http else None
        if self.peer_url is not None:
            m = re.match(r"tvcfs(?:\+\w+)?://(\w+)@[^:]+:(\d+)/", self.peer_url)
            assert m, (self.peer_url, self.log()[-3000:])
            self.peer_id, self.port = m.group(1), int(m.group(2))
        if self.http_url is not None:
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", self.http_url), (self.http_url, self.log())
        self.url = self.http_url or self.peer_url


@contextlib.contextmanager
def running_hub(root: str, *extra, log: str | None = None, lines: int = 1):
    """Start ``tvcfs hub serve ROOT --listen 127.0.0.1:0 EXTRA…``; yield its URL
    (``http://127.0.0.1:PORT``), or with ``lines=2`` (``--transport-listen`` given)
    ``(http URL, tvcfs URL)``; stop it (SIGTERM, then SIGKILL) whatever happens."""
    log = log or os.path.join(os.path.dirname(os.path.abspath(root)), "hub-serve.log")
    with ServerProcess(tvcfs_executable() + ["hub", "serve", str(root), "--listen", "127.0.0.1:0", *extra],
                       lines=lines, log_path=log, name="hub") as srv:
        yield srv.lines[0] if lines == 1 else tuple(srv.lines)


@contextlib.contextmanager
def silent_http():
    """A TCP listener on 127.0.0.1 that accepts connections and never answers; yield
    its ``http://127.0.0.1:PORT`` (closed after)."""
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"


@contextlib.contextmanager
def gateway_thread(repo_or_getter, host: str = "127.0.0.1"):
    """Serve the gateway app for ``repo_or_getter`` (a Repo, or ``get_repo(request)``)
    on ``host`` and a free port from a thread; yield the base URL."""
    import trio

    from tvcfs.gateway.app import make_gateway_app, serve_http

    get = repo_or_getter if callable(repo_or_getter) else (lambda request: repo_or_getter)
    app = make_gateway_app(get)
    started = threading.Event()
    box: dict = {}

    async def main():
        async with trio.open_nursery() as n:
            box["url"] = await n.start(serve_http, app, host, 0)
            box["cancel"] = n.cancel_scope
            box["token"] = trio.lowlevel.current_trio_token()
            started.set()

    def run():
        try:
            trio.run(main)
        except BaseException as e:  # pragma: no cover - reported to the test
            box["error"] = e
        finally:
            started.set()

    t = threading.Thread(target=run, name="gateway-server", daemon=True)
    t.start()
    try:
        assert started.wait(30), "gateway server did not start in 30 s"
        assert "error" not in box, box.get("error")
        yield box["url"]
    finally:
        if "token" in box:
            try:
                trio.from_thread.run_sync(box["cancel"].cancel, trio_token=box["token"])
            except trio.RunFinishedError:
                pass
        t.join(30)
        assert not t.is_alive(), "gateway server thread did not stop"


@contextlib.contextmanager
def moto_s3_server():
    """moto's standalone S3 server on a free loopback port, in a thread of this
    process; yields ``http://127.0.0.1:PORT`` and stops it after. The dummy
    credentials of :data:`support.s3.S3_ENV` are set in ``os.environ`` meanwhile (and
    restored)."""
    import logging

    from moto.server import ThreadedMotoServer

    from support.s3 import S3_ENV

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        srv.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        _serve_main(sys.argv[2:])
    else:
        print(__doc__)


async def echo_stream(stream):
    """A transport stream handler (QUIC or TLS/TCP): send back every byte received,
    then end the stream when the peer ends its side."""
    while True:
        data = await stream.receive_some()
        if not data:
            break
        await stream.send_all(data)
    await stream.send_eof()
