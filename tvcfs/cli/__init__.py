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

_GROUPS = ("core", "mount", "status", "remote", "merge")


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


def open_repo(args):
    """The repository named by ``--repo`` or found from the current directory."""
    from ..repo import Repo

    if getattr(args, "repo", None):
        return Repo.open(args.repo)
    return Repo.discover()


if __name__ == "__main__":
    sys.exit(main())
