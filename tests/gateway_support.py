"""The trustless gateway on loopback for tests: the real Starlette app
(:func:`tvcfs.gateway.app.make_gateway_app`) served by the real Hypercorn trio worker
(:func:`tvcfs.gateway.app.serve_http`) in a thread of the test process, and a
``tvcfs serve --http`` subprocess.

    with gateway_thread(repo) as url:          # "http://127.0.0.1:PORT"
        ...

Both stop in every case (the thread's trio loop is cancelled and joined; the
subprocess is ended by its PID).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from contextlib import contextmanager

from conftest import tvcfs_executable


@contextmanager
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


class ServeHTTP:
    """A ``tvcfs serve REPO --http 127.0.0.1:0 [ARGS]`` subprocess: ``url`` (the
    gateway's base URL), ``peer_url`` (the tvcfs:// URL, or ``None`` with
    ``--http-only``), ``proc``; stderr in a log file."""

    def __init__(self, repo: str, tmp, *args, env: dict | None = None):
        self.log_path = os.path.join(str(tmp), f"serve-http-{time.monotonic_ns()}.log")
        self._log = open(self.log_path, "wb")
        full = dict(os.environ, **(env or {}))
        full.pop("TVCFS_DEBUG", None)
        self.proc = subprocess.Popen(tvcfs_executable() + ["serve", repo, "--http", "127.0.0.1:0", *args],
                                     stdout=subprocess.PIPE, stderr=self._log, env=full)
        self.peer_url = None
        try:
            line = self.proc.stdout.readline().decode().strip()
            if line.startswith("tvcfs"):
                self.peer_url = line
                line = self.proc.stdout.readline().decode().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", line), (line, self.log())
            self.url = line
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc.stdout.close()
        self._log.close()
