"""The one runner of the ``tvcfs`` command line in tests (docs/testing.md).

Every test runs the real console script in a subprocess through :func:`run_tvcfs`
(or takes its argv prefix from :func:`tvcfs_executable` to start a long-running
command itself, e.g. :class:`support.server.ServerProcess`).
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
import struct
import subprocess
import sys
import termios

AUTHOR_ENV = {"TVCFS_AUTHOR_NAME": "Test Author", "TVCFS_AUTHOR_EMAIL": "test@example.org"}


def tvcfs_executable() -> list:
    """argv prefix that runs the installed ``tvcfs`` console script of this Python
    (falls back to ``python -c 'tvcfs.cli.main()'`` without one)."""
    exe = os.path.join(os.path.dirname(sys.executable), "tvcfs")
    if os.path.exists(exe):
        return [exe]
    found = shutil.which("tvcfs")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from tvcfs.cli import main; sys.exit(main())"]


def cli_env(env: dict | None = None) -> dict:
    """A copy of ``os.environ`` for a ``tvcfs`` child: fixed author variables (unless
    set), no ``TVCFS_DEBUG``, then ``env`` applied (a ``None`` value removes a
    variable)."""
    full = dict(os.environ)
    for k, v in AUTHOR_ENV.items():
        full.setdefault(k, v)
    full.pop("TVCFS_DEBUG", None)
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    return full


def run_tvcfs(*args, cwd=None, env=None, ok: bool | None = True, input: bytes | None = None,
              timeout: float = 300, text: bool = False) -> subprocess.CompletedProcess:
    """Run ``tvcfs ARGS`` in a subprocess and return its ``CompletedProcess``.

    ``ok=True`` asserts exit 0, ``ok=False`` asserts a non-zero exit, ``None`` checks
    nothing. ``env``: see :func:`cli_env`. Output is bytes, or ``str`` with
    ``text=True`` (then ``input`` is ``str`` too). ``timeout`` in seconds
    (``subprocess.TimeoutExpired`` after it)."""
    proc = subprocess.run(tvcfs_executable() + [str(a) for a in args], cwd=cwd, env=cli_env(env),
                          input=input, capture_output=True, timeout=timeout, text=text)
    if ok is True:
        err = proc.stderr if text else proc.stderr.decode(errors="replace")
        assert proc.returncode == 0, (args, proc.returncode, err[-3000:])
    elif ok is False:
        assert proc.returncode != 0, (args, proc.stdout[-2000:])
    return proc


#: :func:`run_tvcfs` with ``text=True`` (``stdout``/``stderr`` as ``str``).
run_tvcfs_text = functools.partial(run_tvcfs, text=True)


def run_in_pty(*args, cwd=None) -> tuple[int, str]:
    """Run ``tvcfs ARGS`` with stderr on a pseudo-terminal (80x24); returns (exit
    status, everything written to the terminal)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = dict(os.environ, TVCFS_AUTHOR_NAME="T", TVCFS_AUTHOR_EMAIL="t@example.org")
    env.pop("TVCFS_DEBUG", None)
    proc = subprocess.Popen(tvcfs_executable() + [str(a) for a in args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not b:
                break
            chunks.append(b)
        rc = proc.wait(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, b"".join(chunks).decode(errors="replace")


def err_of(proc) -> str:
    """The stderr of a bytes-mode ``CompletedProcess`` as text."""
    return proc.stderr.decode(errors="replace")


def received(proc) -> tuple[int, int, int]:
    """(blocks, bytes stored, bytes on the wire) summed over the summary lines."""
    nb = nbytes = wire = 0
    for m in re.finditer(r"Received (\d+) blocks, .*?\((\d+) bytes, (\d+) on the wire\)",
                         err_of(proc)):
        nb += int(m.group(1))
        nbytes += int(m.group(2))
        wire += int(m.group(3))
    return nb, nbytes, wire
