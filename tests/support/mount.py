"""The one mount harness of the tests (docs/testing.md).

:class:`Mounted` runs ``tvcfs mount -f`` as a child process, waits for the mount, and
always unmounts: ``fusermount3 -u`` (waiting for the mount process to commit and
exit), then ``fusermount3 -u -z`` and SIGKILL of *that* child if it did not go. A
watchdog thread does the same after ``limit`` seconds, so a deadlocked mount fails
the test (blocked I/O returns ``ENOTCONN``) instead of hanging it.
:func:`lazy_mount` is the same harness yielding the mountpoint (for extra options
such as ``--remote``); :func:`stats` and friends read a mount's ``.tvcfs/stats``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

from support import read_log
from support.cli import cli_env
from support.wait import wait_until
from tvcfs.fs.daemon import is_mounted

AUTHOR = {"TVCFS_AUTHOR_NAME": "Mount Tester", "TVCFS_AUTHOR_EMAIL": "mount@example.org"}


#: the :class:`Mounted` objects of this process that are mounted now
ACTIVE: set = set()


def abort_all() -> None:
    """:meth:`Mounted.abort` every mount of this process (for a per-test watchdog:
    blocked requests then fail with ``ENOTCONN`` so the test and its fixtures can
    finish)."""
    for m in list(ACTIVE):
        m.abort()


def fusermount(*args) -> subprocess.CompletedProcess:
    """Run ``fusermount3 ARGS`` (text output, 30 s timeout)."""
    return subprocess.run(["fusermount3", *args], capture_output=True, text=True, timeout=30)


class Mounted:
    """A live writable mount of ``repo_root`` on ``mnt`` (context manager).

    ``commit_delay``: the ``--commit-delay`` option in seconds (``None``: not given, the
    CLI's default); ``extra``: more mount arguments (``--remote URL``, ``--debug``...);
    ``limit``: watchdog seconds after the mount is up (keep it below the test's
    pytest-timeout: a test blocked in a FUSE call is only freed by the watchdog
    killing the mount process; ``None``: no watchdog); ``timeout``: seconds to wait for
    the mount to appear (``RuntimeError`` with the log after it); ``log_path``: the
    mount's log file (default ``MNT.log`` beside the mountpoint); ``env``: see
    :func:`support.cli.cli_env`, on top of :data:`AUTHOR`.
    On a clean exit of the ``with`` block the mount log is checked (unless
    ``check_log=False``): a traceback or an ``ERROR`` line fails the test
    (``allow_errors`` lists substrings that are expected).
    """

    def __init__(self, repo_root: str, mnt: str, commit_delay: float | None = 0.2, limit: float | None = 75.0,
                 allow_errors=(), extra=(), *, timeout: float = 30.0, log_path: str | None = None,
                 env: dict | None = None, check_log: bool = True):
        self.repo_root, self.mnt = str(repo_root), str(mnt)
        self.commit_delay, self.limit, self.timeout = commit_delay, limit, timeout
        self.allow_errors = tuple(allow_errors)
        self.extra = [str(a) for a in extra]
        self.env = env
        self.check_log_on_exit = check_log
        self.logpath = str(log_path) if log_path else self.mnt.rstrip("/") + ".log"
        self.proc: subprocess.Popen | None = None
        self.dev: int | None = None
        self.killed = False
        self._watchdog: threading.Timer | None = None
        self.watchdog_fired = False

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> "Mounted":
        os.makedirs(self.mnt, exist_ok=True)
        assert not is_mounted(self.mnt), f"{self.mnt} is already mounted"
        env = cli_env({**AUTHOR, **(self.env or {})})
        delay = [] if self.commit_delay is None else ["--commit-delay", str(self.commit_delay)]
        cmd = [sys.executable, "-P", "-m", "tvcfs.cli", "--repo", self.repo_root, "mount", "-f",
               *delay, *self.extra, self.repo_root, self.mnt]
        self._log = open(self.logpath, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env)
        deadline = time.monotonic() + self.timeout
        try:
            while not is_mounted(self.mnt):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mount of {self.repo_root} on {self.mnt} failed:\n{self.log()[-3000:]}")
                time.sleep(0.02)
        except BaseException:
            # failed, or interrupted while waiting (a test's timeout, Ctrl-C): the child
            # may still be starting and mount after we give up -- end it now (it has
            # nothing to commit yet), then detach whatever it mounted meanwhile
            self.kill9()
            self.stop()
            raise
        self.dev = os.stat(self.mnt).st_dev
        ACTIVE.add(self)
        if self.limit is not None:
            self._watchdog = threading.Timer(self.limit, self._emergency)
            self._watchdog.daemon = True
            self._watchdog.start()
        return self

    def _emergency(self) -> None:
        self.watchdog_fired = True
        self.abort()

    @property
    def pid(self) -> int:
        """PID of the mount process."""
        return self.proc.pid

    def abort(self) -> None:
        """Make every request pending on this mount fail at once (never blocks): abort
        the FUSE connection, SIGKILL the mount process, detach the mount."""
        if self.dev is not None:
            try:
                with open(f"/sys/fs/fuse/connections/{os.minor(self.dev)}/abort", "w") as f:
                    f.write("1")
            except OSError:
                pass
        self.kill9()
        fusermount("-u", "-z", self.mnt)

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
            r = fusermount("-u", self.mnt)
            if r.returncode != 0:  # busy (a failing test left a file open): detach
                fusermount("-u", "-z", self.mnt)
                timeout = min(timeout, 10.0)
        if self.proc is not None:
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return -1

    def stop(self) -> None:
        """Unmount (see the class docstring); never leaves the mount or the process."""
        ACTIVE.discard(self)
        if self._watchdog:
            self._watchdog.cancel()
        try:
            self.unmount()
        finally:
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            if is_mounted(self.mnt):  # after the kill: a child still starting may have mounted
                fusermount("-u", "-z", self.mnt)
            if not self._log.closed:
                self._log.close()

    def __enter__(self) -> "Mounted":
        return self.start()

    def __exit__(self, et, ev, tb):
        self.stop()
        if et is None:
            assert not self.watchdog_fired, f"mount watchdog fired:\n{self.log()[-4000:]}"
            if self.check_log_on_exit:
                self.check_log()
        elif self.proc is not None:
            sys.stderr.write(f"--- mount log ({self.logpath}) ---\n{self.log()[-6000:]}\n")
        return False

    # --- helpers -----------------------------------------------------------------
    def log(self) -> str:
        return read_log(self.logpath)

    def check_log(self) -> None:
        bad = [ln for ln in self.log().splitlines()
               if ("Traceback" in ln or " ERROR " in ln or " CRITICAL " in ln)
               and not any(a in ln for a in self.allow_errors)]
        assert not bad, "mount log has errors:\n" + self.log()[-6000:]

    def path(self, *parts) -> str:
        """``MNT/PARTS...``."""
        return os.path.join(self.mnt, *parts)

    def stats(self) -> dict:
        """The mount's ``.tvcfs/stats`` (JSON)."""
        return stats(self.mnt)

    def branch(self, name: str = "main", *parts) -> str:
        return os.path.join(self.mnt, "branches", name, *parts)


def fsync_dir(path: str) -> None:
    """fsync a directory of the mount: commits its branch at once."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_err(fn, *a, **kw):
    """Run ``fn``; return ``None`` or the ``errno`` it raised (``OSError``)."""
    try:
        fn(*a, **kw)
    except OSError as e:
        return e.errno or errno.EIO
    return None


@contextlib.contextmanager
def lazy_mount(repo: str, mnt: str, *args, timeout: float = 30.0, log_path: str | None = None,
               limit: float | None = None):
    """Mount ``repo`` on ``mnt`` with :class:`Mounted` (extra mount ``args``: --remote,
    --fetch-timeout...; the CLI's commit delay; no log check) for the ``with`` block;
    yield the mountpoint (str). Always unmounted. ``log_path``: the mount's log file."""
    with Mounted(repo, mnt, commit_delay=None, limit=limit, extra=args, timeout=timeout,
                 log_path=log_path, check_log=False) as m:
        yield m.mnt


def stats(mnt: str) -> dict:
    """The ``.tvcfs/stats`` JSON of the mount at ``mnt``."""
    with open(os.path.join(mnt, ".tvcfs", "stats")) as f:
        return json.load(f)


def remote_stats(mnt: str) -> dict:
    """The ``remote`` section of :func:`stats` (a lazy mount's peers and fetches)."""
    return stats(mnt)["remote"]


def wait_peers_ready(mnt: str, n: int = 1, timeout: float = 15.0) -> dict:
    """Wait until ``n`` peers are connected and the mount's start-up fetches (the
    safetensors headers of HEAD) are done; return :func:`remote_stats`."""
    def ready():
        r = remote_stats(mnt)
        return r if (sum(1 for p in r["peers"].values() if p["state"] == "ready") >= n
                     and not r["pending_wants"] and not r["queued_jobs"]) else None

    return wait_until(ready, timeout, what=f"{n} peer(s) ready on {mnt}")


def settled_remote_stats(mnt: str, settle: bool = True, timeout: float = 10.0) -> dict:
    """:func:`remote_stats`; with ``settle`` first wait (up to ``timeout`` seconds,
    then return them anyway) until nothing is in flight (readahead done or
    cancelled), so every byte that will arrive is counted."""
    deadline = time.monotonic() + timeout
    while True:
        r = remote_stats(mnt)
        if not settle or (not r["pending_wants"] and not r["queued_jobs"]) or time.monotonic() > deadline:
            return r
        time.sleep(0.02)


def wire_bytes(mnt: str, settle: bool = True, timeout: float = 10.0) -> int:
    """Framed bytes the mount received from all peers (see :func:`settled_remote_stats`)."""
    return settled_remote_stats(mnt, settle, timeout)["wire_bytes"]


def drop_file_cache(path: str) -> None:
    """Drop the page cache of ``path`` (``POSIX_FADV_DONTNEED``): its next read goes
    to the file system (on a mount: to the mount process)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def edit_lazy_files_in_place(branch: str, model_dir: str) -> dict:
    """Change two files of the real model (``model_dir``) that are committed but not
    local in the branch directory ``branch`` of a lazy mount, so that each is copied
    on write: 8 bytes written at 100000 into ``tokenizer.json`` through a handle,
    ``model.safetensors`` (87 MiB) cut to 60 MiB by path (no handle open); then
    ``fsync`` the branch (a commit). Checks that every ``os`` call succeeds and that
    both files read (page cache dropped) as on disk after the same changes, before
    and after the commit. Returns ``{name: expected bytes}``."""
    want = {n: bytearray(open(os.path.join(model_dir, n), "rb").read()) for n in ("tokenizer.json", "model.safetensors")}
    fd = os.open(os.path.join(branch, "tokenizer.json"), os.O_RDWR)
    try:
        assert os.pwrite(fd, b"PATCHED!", 100000) == 8
    finally:
        os.close(fd)
    want["tokenizer.json"][100000:100008] = b"PATCHED!"
    os.truncate(os.path.join(branch, "model.safetensors"), 60 << 20)
    del want["model.safetensors"][60 << 20:]
    for commit in (False, True):
        if commit:
            fsync_dir(branch)
        for name, data in want.items():
            drop_file_cache(os.path.join(branch, name))
            with open(os.path.join(branch, name), "rb") as f:
                assert f.read() == data, (name, "after the commit" if commit else "staged")
    return {n: bytes(d) for n, d in want.items()}
