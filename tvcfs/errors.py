"""Errors raised by tvcfs. Every one carries a one-line message fit for the CLI."""

import contextlib

from .names import printable_name


class TvcfsError(Exception):
    """Base class of all tvcfs errors; the CLI prints ``str(e)`` and exits non-zero.

    ``resumable``: whether running the same command again can get further (an
    interrupted clone says so in a note); False where every retry meets the same
    fault (a damaged DAG, a hostile remote)."""

    exit_code = 1
    resumable = True


class UsageError(TvcfsError, ValueError):
    """The command was given an option or argument it cannot take; the CLI exits
    with status 2, as for argparse's own usage errors (mount(8) helpers tell such a
    "bad invocation" from a failed mount by it)."""

    exit_code = 2


class NotARepository(TvcfsError):
    """The path is not a tvcfs repository (no ``.tvcfs`` store found)."""


class InvalidCID(TvcfsError, ValueError):
    """A string or byte sequence is not a CIDv1 sha2-256 of a codec tvcfs reads."""


class CorruptBlock(TvcfsError):
    """A block's bytes do not hash to its CID, or it does not decode as its codec."""


class BlockNotFound(TvcfsError, KeyError):
    """A block is in no configured store. ``.cid`` holds the binary CID."""

    def __init__(self, cid: bytes, msg: str | None = None):
        from .encoding.multibase import cid_str

        self.cid = cid
        super().__init__(msg or f"block {cid_str(cid)} not found")

    def __str__(self):
        return self.args[0]


class RevisionNotFound(TvcfsError, LookupError):
    """A revision (CID, CID prefix, branch, tag, ``NAME~N``) does not resolve."""


class AmbiguousRevision(RevisionNotFound):
    """A CID prefix matches more than one commit."""


class PathNotFound(TvcfsError, FileNotFoundError):
    """A path does not exist in a tree."""


class NotADirectory(TvcfsError, NotADirectoryError):
    """A path that must be a directory (``tvcfs commit DIR``) is missing or is not one."""


class RefConflict(TvcfsError):
    """A compare-and-swap ref update found another value than expected.

    ``.ref``: the ref name; ``.expected`` / ``.actual``: binary CIDs or ``None``;
    ``.commit``: the binary CID of the commit that could not be recorded (kept in
    the reflog, so it stays reachable).
    """

    def __init__(self, ref, expected, actual, commit=None):
        from .encoding.multibase import cid_str

        self.ref, self.expected, self.actual, self.commit = ref, expected, actual, commit
        exp = cid_str(expected) if expected else "(none)"
        act = cid_str(actual) if actual else "(none)"
        msg = f"ref {ref} moved: expected {exp}, found {act}"
        if commit:
            msg += f"; commit {cid_str(commit)} kept in the reflog"
        super().__init__(msg)


class RefExists(TvcfsError):
    """A branch or tag being created exists already."""


class MalformedObject(TvcfsError, ValueError):
    """A dag-pb, UnixFS, dag-cbor or CAR object does not decode."""

    resumable = False  # every copy of a block with that hash is as broken


class BlockUnavailable(TvcfsError):
    """A store cannot answer for a block right now (a peer or bucket unreachable, a
    timeout): unlike a ``None`` from ``get`` ("not held here") it says nothing about
    whether the block exists. Routers fall back to their next tier on it.
    ``.cid``: the binary CID or ``None``; ``.tier``: the store's name or ``""``."""

    def __init__(self, msg: str, cid: bytes | None = None, tier: str = ""):
        self.cid, self.tier = cid, tier
        super().__init__(msg)


class InvalidEntryName(TvcfsError, ValueError):
    """A name that cannot be a directory entry (:func:`tvcfs.encoding.unixfs.entry_name_error`).

    ``.name``: the name (``str``, non-UTF-8 bytes as surrogate escapes); ``.errno``:
    the errno a filesystem call answers (``ENAMETOOLONG``, ``EILSEQ`` or ``EINVAL``);
    ``.reason``: why, in words; ``.path``: where it was met (``str``) or ``None``.
    """

    def __init__(self, name, errno: int, reason: str, path=None, action: str = ""):
        self.name, self.errno, self.reason, self.path = name, errno, reason, path
        where = printable_name(path if path is not None else name)
        super().__init__(f"{where}: {reason}" + (f"; {action}" if action else ""))


@contextlib.contextmanager
def naming(path: str):
    """Prefix ``path`` to the message of a :class:`CorruptBlock` or
    :class:`MalformedObject` raised in the ``with`` block (same class): a damaged
    block's CID alone does not say which file it belongs to."""
    try:
        yield
    except (CorruptBlock, MalformedObject) as e:
        raise type(e)(f"{path}: {e}") from None


class CommitConflict(TvcfsError):
    """A directory worked on from a base commit was committed onto a branch that
    moved since, and both changed the same paths: the commit was recorded on its own
    ``conflicts/…`` branch instead, the branch was left alone (docs/writes.md,
    "Concurrency"). ``.result``: the :class:`tvcfs.repo.CommitResult` (its ``branch``
    is the conflicts branch, ``collisions`` the colliding paths)."""

    def __init__(self, msg: str, result):
        self.result = result
        super().__init__(msg)


_OS_ADVICE = {
    "ENOENT": "check the path",
    "EACCES": "check its permissions",
    "EPERM": "check its permissions",
    "EISDIR": "it is a directory: name a file",
    "ENOTDIR": "a part of the path is not a directory",
    "ENOTEMPTY": "the directory is not empty",
    "EEXIST": "it exists already: remove it or choose another name",
    "ENOSPC": "free some space and try again",
    "EDQUOT": "the disk quota is exhausted: free some space and try again",
    "EROFS": "the file system is read-only: choose a writable place",
    "ENAMETOOLONG": "choose a shorter name",
    "EXDEV": "source and destination are on different file systems",
}


def os_error_message(e: OSError) -> str:
    """One line for an ``OSError``: the path(s) it names (printable), what failed and
    what to do, never the exception's class name; e.g. ``/x/a.car.tmp: No such file
    or directory (check the path)``."""
    import errno as errno_mod

    where = printable_name(e.filename) if e.filename is not None else ""
    if e.filename2 is not None:
        where += f" -> {printable_name(e.filename2)}"
    what = e.strerror or str(e) or "input/output error"
    advice = _OS_ADVICE.get(errno_mod.errorcode.get(e.errno or 0, ""), "")
    line = f"{where}: {what}" if where else what
    return line + (f" ({advice})" if advice else "")
