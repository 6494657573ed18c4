"""Helpers for the lazy-mount tests and benchmark (tests/test_lazy*.py, scripts/bench/lazy.py).

Run as a script, it is a TensorSwap server in its own process::

    python tests/lazy_support.py serve REPO [--key FILE] [--port N] [--transport quic|tcp]
                                            [--corrupt]

It prints ``READY <url>`` once listening. ``--corrupt`` serves every raw leaf with
its first byte flipped (through ``ServerConfig.corrupt_hook``): a peer that lies.
``--key`` keeps the peer ID across restarts (same key, same port: the same peer).

Everything here is real: server processes, LMDB repositories, FUSE mounts.
Processes are ended by PID (never by name); mounts are always unmounted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
MIB = 1 << 20


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
    a = ap.parse_args(argv)

    from tvcfs.repo import Repo
    from tvcfs.transport.backend import RepoBackend
    from tvcfs.transport.identity import NodeIdentity
    from tvcfs.transport.quic import QuicSettings, serve_quic
    from tvcfs.transport.server import ServerConfig, handle_session
    from tvcfs.transport.tcp import serve_tcp

    repo = Repo.open(a.repo)
    ident = NodeIdentity.load_or_create(a.key) if a.key else NodeIdentity.generate()

    def corrupt(cid, data):
        if cid[1] == 0x55 and len(data):
            return bytes([data[0] ^ 0xFF]) + bytes(data[1:])
        return data

    cfg = ServerConfig(RepoBackend(repo), ident, corrupt_hook=corrupt if a.corrupt else None)

    async def main():
        async with trio.open_nursery() as n:
            if a.transport == "tcp":
                addr = await n.start(lambda task_status: serve_tcp(
                    lambda s: handle_session(s, cfg), "127.0.0.1", a.port, identity=ident,
                    task_status=task_status))
                url = f"tvcfs+tcp://{ident.peer_id_str}@127.0.0.1:{addr[1]}/"
            else:
                srv = await n.start(lambda task_status: serve_quic(
                    lambda s: handle_session(s, cfg), "127.0.0.1", a.port, identity=ident,
                    settings=QuicSettings(), task_status=task_status))
                url = f"tvcfs+quic://{ident.peer_id_str}@127.0.0.1:{srv.address[1]}/"
            print("READY", url, flush=True)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass


class Server:
    """A server process (see the module docstring). ``url``, ``port``, ``proc``."""

    def __init__(self, repo: str, *, key: str | None = None, port: int = 0,
                 transport: str = "quic", corrupt: bool = False, timeout: float = 30.0):
        argv = [sys.executable, os.path.join(HERE, "lazy_support.py"), "serve", repo,
                "--port", str(port), "--transport", transport]
        if key:
            argv += ["--key", key]
        if corrupt:
            argv.append("--corrupt")
        env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY") or self.proc.poll() is not None:
                break
        if not line.startswith("READY"):
            self.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = line.split()[1]
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
        self.key = key
        self.repo = repo
        self.transport = transport

    def kill(self, sig=signal.SIGKILL) -> None:
        """End this server (by its PID) and wait for it."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


# ---------------------------------------------------------------- mounts
def tvcfs_argv() -> list:
    exe = os.path.join(os.path.dirname(sys.executable), "tvcfs")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "tvcfs.cli"]


def run(*args, ok: bool = True, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    full.setdefault("TVCFS_AUTHOR_NAME", "Test Author")
    full.setdefault("TVCFS_AUTHOR_EMAIL", "test@example.org")
    if env:
        full.update(env)
    p = subprocess.run(tvcfs_argv() + [str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout, env=full)
    if ok:
        assert p.returncode == 0, (args, p.returncode, p.stderr[-3000:])
    return p


@contextlib.contextmanager
def lazy_mount(repo: str, mnt: str, *args, timeout: float = 30.0, log_path: str | None = None):
    """Mount ``repo`` on ``mnt`` (extra mount ``args``: --remote, --fetch-timeout...)
    for the ``with`` block; always unmounted (tvcfs.fs.mount). ``log_path``: a file
    receiving the foreground mount's stderr (its log)."""
    from tvcfs.fs import mount

    with mount(repo, mnt, timeout=timeout, extra_args=tuple(str(a) for a in args),
               log_path=log_path) as path:
        yield path


def stats(mnt: str) -> dict:
    with open(os.path.join(mnt, ".tvcfs", "stats")) as f:
        return json.load(f)


def remote_stats(mnt: str) -> dict:
    return stats(mnt)["remote"]


def wait_peers_ready(mnt: str, n: int = 1, timeout: float = 15.0) -> dict:
    """Wait until ``n`` peers are connected and the mount's start-up fetches (the
    safetensors headers of HEAD) are done."""
    deadline = time.monotonic() + timeout
    while True:
        r = remote_stats(mnt)
        if (sum(1 for p in r["peers"].values() if p["state"] == "ready") >= n
                and not r["pending_wants"] and not r["queued_jobs"]):
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"peers not ready: {r['peers']}")
        time.sleep(0.02)


def wire_bytes(mnt: str, settle: bool = True, timeout: float = 10.0) -> int:
    """Framed bytes the mount received from all peers; with ``settle`` first wait
    until nothing is in flight (readahead done or cancelled), so all are counted."""
    deadline = time.monotonic() + timeout
    while True:
        r = remote_stats(mnt)
        if not settle or (not r["pending_wants"] and not r["queued_jobs"]) or time.monotonic() > deadline:
            return r["wire_bytes"]
        time.sleep(0.02)


# ---------------------------------------------------------------- repositories
def commit_dir(repo_path: str, src_dir: str, message: str = "model") -> None:
    from tvcfs.repo import Repo

    r = Repo.init(repo_path) if not os.path.isdir(os.path.join(repo_path, ".tvcfs")) else Repo.open(repo_path)
    try:
        r.commit_dir(src_dir, branch="main", message=message)
    finally:
        r.close()


def raw_leaf_count(repo_path: str) -> int:
    from tvcfs.encoding.cid import cid_codec
    from tvcfs.repo import Repo

    with Repo.open(repo_path) as r:
        return sum(1 for c in r.store if cid_codec(c) == 0x55 and r.store.get(c))


def drop_file_cache(path: str) -> None:
    """Drop the page cache of ``path`` (``POSIX_FADV_DONTNEED``): its next read goes
    to the file system (on a mount: to the mount process)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def safetensors_header(path: str) -> tuple[int, dict]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return n, json.loads(f.read(n))


def tensor_range(path: str, name: str) -> tuple[int, int]:
    """Absolute ``(start, end)`` byte offsets of tensor ``name`` in the file."""
    n, h = safetensors_header(path)
    a, b = h[name]["data_offsets"]
    return 8 + n + a, 8 + n + b


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        _serve_main(sys.argv[2:])
    else:
        print(__doc__)
