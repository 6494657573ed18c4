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


class InvalidRefName(TvcfsError, ValueError):
    """A branch or tag name that git's ``check-ref-format`` rules refuse."""


def check_name(name: str, what: str = "branch") -> str:
    """Validate a branch/tag short name by git's rules (no ``..``, ``~``, ``^``, ``:``,
    spaces, control characters, leading ``-`` or ``.``, trailing ``.lock``…). Slashes
    are allowed (``conflicts/main-…``). Returns the name; raises :class:`InvalidRefName`."""
    if not name or _BAD.search(name) or name == "HEAD" or name == "@":
        raise InvalidRefName(f"invalid {what} name {name!r}")
    return name


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
