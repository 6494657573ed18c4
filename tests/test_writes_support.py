"""Helpers shared by the ``test_writes*.py`` modules (no tests here).

:class:`Mounted` runs ``tvcfs mount -f`` as a child process, waits for the mount, and
always unmounts: ``fusermount3 -u`` (waiting for the mount process to commit and
exit), then ``fusermount3 -u -z`` and SIGKILL of *that* child if it did not go. A
watchdog thread does the same after ``limit`` seconds, so a deadlocked mount fails
the test (blocked I/O returns ``ENOTCONN``) instead of hanging it.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time

from tvcfs.dag import walk_dag
from tvcfs.encoding.cid import cid_str
from tvcfs.fs.daemon import is_mounted

AUTHOR = {"TVCFS_AUTHOR_NAME": "Mount Tester", "TVCFS_AUTHOR_EMAIL": "mount@example.org"}
MIB = 1 << 20


def _fusermount(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["fusermount3", *args], capture_output=True, text=True, timeout=30)


class Mounted:
    """A live writable mount of ``repo_root`` on ``mnt`` (context manager).

    ``commit_delay``: the ``--commit-delay`` option; ``limit``: watchdog seconds after
    the mount is up (keep it below the test's pytest-timeout: a test blocked in a FUSE
    call is only freed by the watchdog killing the mount process).
    On a clean exit of the ``with`` block the mount log is checked: a traceback or an
    ``ERROR`` line fails the test (``allow_errors`` lists substrings that are expected).
    """

    def __init__(self, repo_root: str, mnt: str, commit_delay: float = 0.2, limit: float = 75.0,
                 allow_errors=(), extra=()):
        self.repo_root, self.mnt = str(repo_root), str(mnt)
        self.commit_delay, self.limit = commit_delay, limit
        self.allow_errors = tuple(allow_errors)
        self.extra = list(extra)
        self.logpath = os.path.join(os.path.dirname(self.mnt.rstrip("/")), os.path.basename(self.mnt) + ".log")
        self.proc: subprocess.Popen | None = None
        self.killed = False
        self._watchdog: threading.Timer | None = None
        self.watchdog_fired = False

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> "Mounted":
        os.makedirs(self.mnt, exist_ok=True)
        env = dict(os.environ, **AUTHOR)
        env.pop("TVCFS_DEBUG", None)
        cmd = [sys.executable, "-m", "tvcfs.cli", "--repo", self.repo_root, "mount", "-f",
               "--commit-delay", str(self.commit_delay), *self.extra, self.repo_root, self.mnt]
        self._log = open(self.logpath, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env)
        deadline = time.monotonic() + 30
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mount failed:\n{self.log()[-3000:]}")
            time.sleep(0.02)
        self._watchdog = threading.Timer(self.limit, self._emergency)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def _emergency(self) -> None:
        self.watchdog_fired = True
        self.kill9()
        _fusermount("-u", "-z", self.mnt)

    def kill9(self) -> None:
        """SIGKILL the mount process (the one this object started), leave the mount
        entry behind (as a crash would)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.killed = True

    def unmount(self, timeout: float = 120.0) -> int:
        """Unmount normally and wait for the mount process (its final commits)."""
        if is_mounted(self.mnt):
            r = _fusermount("-u", self.mnt)
            if r.returncode != 0:  # busy (a failing test left a file open): detach
                _fusermount("-u", "-z", self.mnt)
                timeout = min(timeout, 10.0)
        if self.proc is not None:
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return -1

    def stop(self) -> None:
        if self._watchdog:
            self._watchdog.cancel()
        try:
            self.unmount()
        finally:
            if is_mounted(self.mnt):
                _fusermount("-u", "-z", self.mnt)
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            if not self._log.closed:
                self._log.close()

    def __enter__(self) -> "Mounted":
        return self.start()

    def __exit__(self, et, ev, tb):
        self.stop()
        if et is None:
            assert not self.watchdog_fired, f"mount watchdog fired:\n{self.log()[-4000:]}"
            self.check_log()
        elif self.proc is not None:
            sys.stderr.write(f"--- mount log ({self.logpath}) ---\n{self.log()[-6000:]}\n")
        return False

    # --- helpers -----------------------------------------------------------------
    def log(self) -> str:
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def check_log(self) -> None:
        bad = [ln for ln in self.log().splitlines()
               if ("Traceback" in ln or " ERROR " in ln or " CRITICAL " in ln)
               and not any(a in ln for a in self.allow_errors)]
        assert not bad, "mount log has errors:\n" + self.log()[-6000:]

    def path(self, *parts) -> str:
        return os.path.join(self.mnt, *parts)

    def branch(self, name: str = "main", *parts) -> str:
        return os.path.join(self.mnt, "branches", name, *parts)


def fsync_dir(path: str) -> None:
    """fsync a directory of the mount: commits its branch at once."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def wait_for(pred, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def head(repo, branch: str = "main") -> bytes | None:
    return repo.ref_db.get("refs/heads/" + branch)


def wait_head_change(repo, old: bytes | None, branch: str = "main", timeout: float = 20.0) -> bytes:
    return wait_for(lambda: (h := head(repo, branch)) != old and h, timeout, what=f"a commit on {branch}")


def commit_count(repo, branch: str = "main") -> int:
    return sum(1 for _ in repo.log(branch))


def check_refs_complete(repo) -> int:
    """Every ref (and every commit its history reaches) resolves to blocks that are
    all present: walk the whole DAG from each ref, parents included. Returns the
    number of distinct blocks walked."""
    seen: set = set()

    def get(c):
        b = repo.store.get(c)
        assert b is not None, f"missing block {cid_str(c)}"
        return b

    for name, cid in repo.refs().items():
        for c, _ in walk_dag(get, cid, skip=lambda c: c in seen, follow_parents=True):
            seen.add(c)
    return len(seen)


def block_set(repo) -> set:
    return set(repo.store)


def new_block_bytes(repo, before: set) -> int:
    return sum(len(repo.store.get(c)) for c in set(repo.store) - before)


def os_err(fn, *a, **kw):
    """Run ``fn``; return ``None`` or the ``errno`` it raised (``OSError``)."""
    try:
        fn(*a, **kw)
    except OSError as e:
        return e.errno or errno.EIO
    return None
