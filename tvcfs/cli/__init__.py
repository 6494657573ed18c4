"""The ``tvcfs`` command line: thin porcelain over :class:`tvcfs.Repo`.

Each command group lives in its own module exposing ``register(subparsers)``; every
command function takes the parsed ``args`` and returns an exit code. Errors print one
line (``tvcfs: error: …``) and exit non-zero, never a traceback (``TVCFS_DEBUG=1``
shows it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

_GROUPS = ("core", "mount", "status", "remote", "merge", "hub")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tvcfs", description="Version-controlled filesystem for ML models.")
    p.add_argument("--repo", "-C", metavar="PATH", help="repository (default: found from the current directory)")
    p.add_argument("--version", action="version", version=f"tvcfs {__import__('tvcfs').__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _GROUPS:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ImportError as e:
            if e.name and e.name.endswith(f"cli.{name}"):
                continue
            raise
        mod.register(sub)
    return p


def main(argv=None) -> int:
    """Entry point of the ``tvcfs`` console script."""
    from ..errors import TvcfsError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt as e:
        print("tvcfs: interrupted", file=sys.stderr)
        _hints(e)
        return 130
    except BrokenPipeError:
        try:
            sys.stdout.close()
        except Exception:
            pass
        return 0
    except (TvcfsError, OSError, ValueError) as e:
        if os.environ.get("TVCFS_DEBUG"):
            raise
        msg = str(e) if isinstance(e, TvcfsError) else f"{type(e).__name__}: {e}"
        print(f"tvcfs: error: {msg}", file=sys.stderr)
        _hints(e)
        return getattr(e, "exit_code", 1)
    return rc or 0


def _hints(e: BaseException) -> None:
    """Print an exception's notes (``BaseException.add_note``: what to do next)."""
    for note in getattr(e, "__notes__", ()):
        print(f"hint: {note}", file=sys.stderr)


def open_repo(args, path: str | None = None):
    """The repository at ``path``, else named by ``--repo``, else found from the
    current directory; its block reads are verified unless the command has
    ``--no-verify`` set."""
    from ..repo import Repo

    path = path or getattr(args, "repo", None)
    repo = Repo.open(path) if path else Repo.discover()
    if getattr(args, "no_verify", False):
        repo.store.verify_reads = False
    return repo


def add_no_verify(p) -> None:
    """Add ``--no-verify`` to the parser of a command that reads blocks out."""
    p.add_argument("--no-verify", action="store_true",
                   help="do not check blocks against their CIDs before their bytes leave the "
                        "store (by default each is hashed once per process; a damaged one is an error)")


if __name__ == "__main__":
    sys.exit(main())
