"""Ref names and revision syntax (git's, where git has the same idea).

Refs: ``HEAD`` (symbolic, ``ref: refs/heads/NAME``), ``refs/heads/NAME`` (branches),
``refs/tags/NAME`` (tags), ``refs/remotes/REMOTE/NAME`` (remote-tracking).
A revision is: ``HEAD``; a branch, tag or full ref name; a full CID; a unique prefix
of a commit CID's string form (at least 8 characters); followed by any number of
``~N`` (N-th first parent) or ``^`` (first parent).
"""

from __future__ import annotations

import re

from .errors import TvcfsError

HEADS = "refs/heads/"
TAGS = "refs/tags/"
REMOTES = "refs/remotes/"

_BAD = re.compile(r"(^[./-])|(/[./])|(\.\.)|([\x00-\x20~^:?*\[\\\x7f])|(\.lock$)|(/$)|(\.$)|(@\{)")
_SUFFIX = re.compile(r"(~\d*|\^)$")
# bytes of a branch, tag or remote name: refs/remotes/REMOTE/NAME with its reflog
# suffix stays within LMDB's 511-byte keys, and a name fits a directory entry (255)
MAX_NAME_BYTES = 200


class InvalidRefName(TvcfsError, ValueError):
    """A branch or tag name that git's ``check-ref-format`` rules refuse."""


def check_name(name: str, what: str = "branch") -> str:
    """Validate a branch/tag short name by git's rules (no ``..``, ``~``, ``^``, ``:``,
    spaces, control characters, leading ``-`` or ``.``, trailing ``.lock``…), UTF-8,
    at most :data:`MAX_NAME_BYTES` bytes. Slashes are allowed (``conflicts/main-…``).
    Returns the name; raises :class:`InvalidRefName`."""
    if not name or _BAD.search(name) or name == "HEAD" or name == "@":
        raise InvalidRefName(f"invalid {what} name {name!r}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # bytes that are not UTF-8 on the command line
        raise InvalidRefName(f"invalid {what} name {name!r}: not UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise InvalidRefName(f"invalid {what} name {name[:40]!r}…: {size} bytes long, "
                             f"at most {MAX_NAME_BYTES}")
    return name


def check_ref(ref: str) -> str:
    """Validate a full branch or tag ref name as a peer sends or pushes it:
    ``refs/heads/NAME`` or ``refs/tags/NAME`` with NAME as :func:`check_name` wants.
    Returns ``ref``; raises :class:`InvalidRefName` (also for any other ref)."""
    for prefix, what in ((HEADS, "branch"), (TAGS, "tag")):
        if ref.startswith(prefix):
            check_name(ref[len(prefix):], what)
            return ref
    raise InvalidRefName(f"invalid ref name {ref!r}: a branch (refs/heads/NAME) or a tag "
                         "(refs/tags/NAME) is expected")


def split_suffixes(rev: str) -> tuple[str, int]:
    """Split ``NAME~2^~`` into ``("NAME", 4)``: the base and how many first-parent
    steps to take (a ``~N`` of more than 18 digits counts as 10**18: no history is
    that deep, and Python refuses to convert integers of over 4300 digits)."""
    steps = 0
    while True:
        m = _SUFFIX.search(rev)
        if not m or m.start() == 0:
            return rev, steps
        s = m.group(0)
        if s == "^" or s == "~":
            steps += 1
        else:  # a count of more digits than any history: past the root all the same
            steps += int(s[1:]) if len(s) <= 19 else 10 ** 18
        rev = rev[: m.start()]
