"""The tvcfs FUSE mount (pyfuse3 on trio). See ``docs/mount.md``.

:func:`mount` is the Python API: a context manager that mounts a repository in a
child process and always unmounts.
"""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def mount(repo: str, mountpoint: str, *, timeout: float = 30.0, extra_args=(), env=None,
          log_path: str | None = None):
    """Mount repository ``repo`` on ``mountpoint`` for the ``with`` block.

    Runs ``tvcfs mount -f`` as a child process, waits until the mount is live (raises
    ``RuntimeError`` with the child's output if it is not within ``timeout`` seconds),
    yields the mountpoint, and on exit unmounts (``fusermount3 -u``, then ``-z`` if the
    first attempt fails) and waits for the child. Never leaves a mount behind.
    ``log_path``: a file that receives the child's stdout and stderr (its log),
    appended; by default an anonymous temporary file.
    """
    import subprocess
    import sys
    import tempfile
    import time

    from .daemon import is_mounted, unmount

    os.makedirs(mountpoint, exist_ok=True)
    cmd = [sys.executable, "-P", "-m", "tvcfs.cli", "--repo", repo, "mount", "-f", *extra_args, repo, mountpoint]
    # The child's log goes to a file, never to a pipe nobody drains while mounted: a
    # full pipe (64 KiB of log, e.g. --debug or many EIO lines) would block the mount.
    logf = open(log_path, "ab") if log_path else tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while not is_mounted(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                logf.seek(0)
                out = logf.read()[-20000:].decode(errors="replace")
                raise RuntimeError(f"mount of {repo} on {mountpoint} failed:\n{out}")
            time.sleep(0.02)
        yield mountpoint
    finally:
        if is_mounted(mountpoint):
            try:
                unmount(mountpoint, timeout=timeout)
            except Exception:
                subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()
