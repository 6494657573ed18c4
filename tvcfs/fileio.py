"""Opening the files a command reads or writes (CAR files of ``tvcfs export`` /
``import``) with one-line errors that name the file and say what to do, and writing
through a temporary file so that a failed write leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
from typing import BinaryIO, Iterator

from .errors import TvcfsError, os_error_message
from .names import printable_name


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[BinaryIO]:
    """A binary file written as ``PATH.tmp`` and renamed to ``path`` when the
    ``with`` block ends without an error; on an error (a damaged block, a full disk,
    an interrupt) the temporary file is removed and ``path`` is untouched.

    Raises :class:`TvcfsError` naming the file when ``path`` is a directory, its
    directory is missing or not writable, or ``PATH.tmp`` exists already (another
    write in progress, or one that was killed: remove it and run again)."""
    shown = printable_name(path)
    if os.path.isdir(path):
        raise TvcfsError(f"{shown} is a directory: name the file to write")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise TvcfsError(f"cannot write {shown}: its directory {printable_name(parent)} does not "
                         "exist (create it first)")
    tmp = path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise TvcfsError(f"{printable_name(tmp)} exists: another write of {shown} is running or was "
                         "interrupted; remove it and run again") from None
    except OSError as e:
        raise TvcfsError(f"cannot write {shown}: {os_error_message(e)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    """``path`` opened for binary reading. Raises :class:`TvcfsError` naming it when
    it is missing, a directory or unreadable."""
    shown = printable_name(path)
    if os.path.isdir(path):
        raise TvcfsError(f"{shown} is a directory: name a file")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise TvcfsError(f"cannot read {os_error_message(e)}") from None
    with f:
        try:
            yield f
        except OSError as e:
            if e.filename is not None:
                raise
            raise TvcfsError(f"cannot read {shown}: {e.strerror or e}") from None


def unlink_quietly(path: str) -> None:
    """Remove file ``path`` if it can be removed; any ``OSError`` (already gone, a
    read-only directory) is ignored: for cleaning up after a failed or finished step."""
    try:
        os.unlink(path)
    except OSError:
        pass


def process_alive(pid) -> bool:
    """True if ``pid`` (an int, or anything ``int()`` takes) runs a process that is not
    a zombie, read from ``/proc/PID/stat``; False for ``None`` or garbage. The records
    of work in progress (a mount's ``state.json``, a fetch or a received push) are
    trusted only while the process that wrote them lives."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, ValueError, IndexError, TypeError):
        return False
