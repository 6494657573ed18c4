"""The one validator of names that reach the hub from outside: repository ids
(``ORG/NAME``), user names, and file paths inside a repository. Everything the hub
turns into a file-system path or a tree path passes through here first, so a name
like ``..``, ``/etc``, ``a/../../b`` or one with control characters never reaches
``os.path.join`` (docs/hub.md, "Names")."""

from __future__ import annotations

import re

from ..encoding.unixfs import entry_name_error
from ..errors import TvcfsError
from ..importer import REPO_DIR

# an org, repository or user name: starts with a letter or digit, then letters,
# digits, '-', '_', '.', at most 96 characters; never '.'/'..', never ending in '.git'
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


class InvalidName(TvcfsError, ValueError):
    """A repository id, user name or file path the hub refuses (HTTP 422 / 400)."""


def check_name(name: str, what: str = "name") -> str:
    """Validate one org, repository or user name component. Returns it; raises
    :class:`InvalidName` naming what was wrong."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name or name.endswith((".git", ".")):
        raise InvalidName(f"invalid {what} {name!r}: use letters, digits, '-', '_' and '.' "
                          "(starting with a letter or digit, at most 96 characters, no '..')")
    return name


def parse_repo_id(repo_id: str) -> tuple[str, str]:
    """``"ORG/NAME"`` → ``("ORG", "NAME")``, both validated by :func:`check_name`.
    Raises :class:`InvalidName`."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise InvalidName(f"invalid repository id {repo_id!r}: expected ORG/NAME")
    org, name = repo_id.split("/")
    return check_name(org, "organisation name"), check_name(name, "repository name")


def check_path(path: str) -> str:
    """Validate a file path inside a repository (``dir/file.bin``): relative, ``/``
    separated, every component a valid entry name (not empty, ``.`` or ``..``, no
    NUL, at most 255 bytes) and no control characters. Returns the path; raises
    :class:`InvalidName`."""
    if not isinstance(path, str) or not path or path.startswith("/") or len(path) > 4096:
        raise InvalidName(f"invalid path {path!r}: expected a relative path inside the repository")
    for part in path.split("/"):
        err = entry_name_error(part)
        if err is None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in part):
            err = (0, "a control character in a name")
        if err is None and part == REPO_DIR:
            err = (0, f"{REPO_DIR} is the repository's own directory")
        if err is not None:
            raise InvalidName(f"invalid path {path!r}: {err[1]}")
    return path
