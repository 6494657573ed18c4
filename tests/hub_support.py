"""Helpers for the hub tests (and scripts/bench/hub.py): a real ``tvcfs hub serve``
on loopback, always stopped; Python snippets run with Hugging Face clients pointed at
it; plain HTTP requests with the standard library."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import selectors
import subprocess
import sys
import time
import urllib.parse

from conftest import run_tvcfs, tvcfs_executable


def stop_process(proc, timeout: float = 15) -> None:
    """End a child process: SIGTERM (a clean stop), then SIGKILL if it hangs."""
    for stop in (proc.terminate, proc.kill):
        if proc.poll() is not None:
            return
        stop()
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def running_hub(root: str, *extra, log: str | None = None, lines: int = 1):
    """Start ``tvcfs hub serve ROOT --listen 127.0.0.1:0 EXTRA…``; yield its URL
    (``http://127.0.0.1:PORT``), or with ``lines=2`` (``--transport-listen`` given)
    ``(http URL, tvcfs URL)``; terminate it (then kill) whatever happens."""
    log = log or os.path.join(os.path.dirname(os.path.abspath(root)), "hub-serve.log")
    errf = open(log, "ab")
    proc = subprocess.Popen(tvcfs_executable() + ["hub", "serve", str(root), "--listen", "127.0.0.1:0",
                                                   *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=errf)
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        line = b""
        while line.count(b"\n") < lines:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"hub did not start: {open(log, 'rb').read()[-2000:].decode(errors='replace')}")
            if sel.select(timeout=0.5):
                b = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else os.read(proc.stdout.fileno(), 4096)
                if not b:
                    continue
                line += b
        sel.close()
        urls = [x.decode().strip() for x in line.split(b"\n")[:lines]]
        yield urls[0] if lines == 1 else tuple(urls)
    finally:
        stop_process(proc)
        proc.stdout.close()
        errf.close()


def hf_env(url: str, home: str, token: str | None = None, **more) -> dict:
    """Environment for a Hugging Face client process talking only to ``url``."""
    env = {"HF_ENDPOINT": url, "HF_HOME": home, "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None,
           "HF_TOKEN": token, "TVCFS_TOKEN": None, "TOKENIZERS_PARALLELISM": "false",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", "HTTP_PROXY": None, "HTTPS_PROXY": None,
           "http_proxy": None, "https_proxy": None}
    env.update(more)
    return env


def run_py(code: str, env: dict, timeout: float = 600) -> str:
    """Run ``code`` in a fresh interpreter of this venv with ``env`` added to the
    environment (``None`` removes a variable); return its stdout; fail with stderr."""
    full = dict(os.environ)
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    p = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, timeout=timeout)
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-4000:]
    return p.stdout.decode()


def request(url: str, method: str = "GET", path: str = "/", body: bytes | None = None, token: str | None = None,
            headers: dict | None = None, timeout: float = 60) -> tuple:
    """One HTTP request with ``path`` sent as is (no normalisation); returns
    ``(status, headers dict with lower-case names, body bytes)``."""
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def get_json(url: str, path: str, token: str | None = None, method: str = "GET", body=None) -> tuple:
    """``(status, parsed JSON body)``."""
    data = json.dumps(body).encode() if body is not None else None
    st, _, out = request(url, method, path, data, token,
                         {"Content-Type": "application/json"} if data is not None else None)
    return st, json.loads(out) if out else None


def ndjson(*items) -> bytes:
    return b"".join(json.dumps(i).encode() + b"\n" for i in items)


def add_user(root: str, name: str, *extra) -> str:
    """``tvcfs hub user add NAME`` → the token (the output's last line)."""
    out = run_tvcfs("hub", "user", "add", name, "--email", f"{name}@example.org", "--root", root, *extra)
    return out.stdout.decode().strip().splitlines()[-1]
