"""Client-side helpers for the hub tests (and scripts/bench/hub.py): Python snippets
run with Hugging Face clients pointed at a hub, plain HTTP requests with the standard
library, hub users. The hub itself runs in :func:`support.server.running_hub`."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import urllib.parse

from support.cli import run_tvcfs


def hf_env(url: str, home: str, token: str | None = None, **more) -> dict:
    """Environment for a Hugging Face client process talking only to ``url``."""
    env = {"HF_ENDPOINT": url, "HF_HOME": home, "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None,
           "HF_TOKEN": token, "TVCFS_TOKEN": None, "TOKENIZERS_PARALLELISM": "false",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", "HTTP_PROXY": None, "HTTPS_PROXY": None,
           "http_proxy": None, "https_proxy": None}
    env.update(more)
    return env


def py_env(env: dict) -> dict:
    """This process's environment with ``env`` added (``None`` removes a variable)."""
    full = dict(os.environ)
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    return full


def run_py(code: str, env: dict, timeout: float = 600) -> str:
    """Run ``code`` in a fresh interpreter of this venv with ``env`` added to the
    environment (``None`` removes a variable); return its stdout; fail with stderr."""
    p = subprocess.run([sys.executable, "-c", code], env=py_env(env), capture_output=True, timeout=timeout)
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-4000:]
    return p.stdout.decode()


def request(url: str, method: str = "GET", path: str = "/", body: bytes | None = None, token: str | None = None,
            headers: dict | None = None, timeout: float = 60, follow: bool = False) -> tuple:
    """One HTTP request with ``path`` sent as is (no normalisation); returns
    ``(status, headers dict with lower-case names, body bytes)``. ``follow``: a 302
    (a large file's resolve: the blob port) is followed once, without the token, as
    ``huggingface_hub`` does, and so is a relative 307 (a branch's HEAD to its
    commit), with the token; the redirect's headers are kept under ``"redirect"``."""
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        out = {k.lower(): v for k, v in r.getheaders()}
    finally:
        c.close()
    if follow and r.status == 307 and out["location"].startswith("/"):
        # a relative redirect (a branch's HEAD to its commit): same server, same token
        st, h2, data = request(url, method, out["location"], token=token, headers=headers, timeout=timeout)
        return st, dict(h2, redirect=out), data
    if follow and r.status == 302:
        loc = urllib.parse.urlsplit(out["location"])
        st, h2, data = request(f"{loc.scheme}://{loc.netloc}", method, f"{loc.path}?{loc.query}",
                               headers=headers, timeout=timeout)
        return st, dict(h2, redirect=out), data
    return r.status, out, data


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
