"""The ``tvcfs`` command line: thin porcelain over :class:`tvcfs.Repo`.

Each command group lives in its own module exposing ``register(subparsers)``; every
command function takes the parsed ``args`` and returns an exit code. The global
options (``--repo/-C``, ``--quiet/-q``, ``--json``) are accepted before and after
the verb. Errors print one line (``tvcfs: error: …``, the path or revision and what
to do, never an exception's class name) and exit non-zero, never a traceback
(``TVCFS_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

_GROUPS = ("core", "index", "mount", "status", "remote", "merge", "hf", "hub", "completion")

# (flags, keyword arguments): given before the verb they land on the top-level
# parser, after it on the command's parser (whose default is SUPPRESS so that a
# value given before the verb is not overwritten).
GLOBAL_OPTIONS = (
    (("--repo", "-C"), dict(metavar="PATH", help="repository (default: found from the current directory)")),
    (("--quiet", "-q"), dict(action="store_true", help="no progress bars or progress lines")),
    (("--json",), dict(action="store_true", help="one JSON document on stdout (CIDs as strings)")),
)


class CommandParser(argparse.ArgumentParser):
    """The parser of a command (and of its sub-commands, which inherit the class).
    Options and positional arguments may be intermixed, as git allows
    (``tvcfs log main --oneline -- PATH``); arguments it does not know are reported by
    it, with its own usage line (``tvcfs branch: error: unrecognized arguments: -a``),
    not by the top-level parser with the usage of ``tvcfs`` itself (exit status 2)."""

    _inner = False  # True during the passes of parse_known_intermixed_args

    def parse_known_args(self, args=None, namespace=None):
        """``(namespace, [])``: argparse's, intermixed where it can; exits with status
        2 and the usage line if any argument is left over."""
        if self._inner or self._subparsers is not None:
            ns, extra = super().parse_known_args(args, namespace)
        else:
            self._inner = True
            try:
                ns, extra = self.parse_known_intermixed_args(args, namespace)
            except TypeError:  # a positional argparse cannot intermix: parse in order
                ns, extra = super().parse_known_args(args, namespace)
            finally:
                self._inner = False
        if extra and not self._inner:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns, extra


def build_parser() -> argparse.ArgumentParser:
    """The ``tvcfs`` argument parser, every command group registered."""
    p = argparse.ArgumentParser(prog="tvcfs", description="Version-controlled filesystem for ML models.")
    for flags, kw in GLOBAL_OPTIONS:
        p.add_argument(*flags, **kw)
    p.add_argument("--version", action="version", version=f"tvcfs {__import__('tvcfs').__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    sub.required = True
    for name in _GROUPS:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ImportError as e:
            if e.name and e.name.endswith(f"cli.{name}"):
                continue
            raise
        mod.register(sub)
    _add_global_options(sub)
    return p


def _add_global_options(sub) -> None:
    """Give every command (and sub-command) parser the global options, so that they
    are accepted after the verb too."""
    for parser in set(sub.choices.values()):
        for flags, kw in GLOBAL_OPTIONS:
            if not any(f in parser._option_string_actions for f in flags):
                parser.add_argument(*flags, **{**kw, "default": argparse.SUPPRESS})
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_global_options(action)


def main(argv=None) -> int:
    """Entry point of the ``tvcfs`` console script."""
    for stream in (sys.stdout, sys.stderr):
        try:  # a non-UTF-8 file name given on the command line must not crash a print
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
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
    except Exception as e:
        if os.environ.get("TVCFS_DEBUG"):
            raise
        while isinstance(e, ExceptionGroup) and len(e.exceptions) == 1:  # a task of a nursery failed
            e = e.exceptions[0]
        print(f"tvcfs: error: {error_line(e)}", file=sys.stderr)
        _hints(e)
        return getattr(e, "exit_code", 1)
    return rc or 0


def error_line(e: BaseException) -> str:
    """The one line the CLI prints for ``e``: a tvcfs error's message, an
    ``OSError``'s path, reason and advice (:func:`tvcfs.errors.os_error_message`),
    a ``ValueError``'s message, LMDB's word that ``data.mdb`` is damaged as
    :class:`tvcfs.store.lmdb_store.StoreDamaged` (naming the file and what to do);
    anything else is reported as an unexpected failure.
    Never the exception's class name; multi-line messages are cut to their first line."""
    from ..errors import TvcfsError, os_error_message

    store = sys.modules.get("tvcfs.store.lmdb_store")  # loaded if a store was opened
    damaged = store.damage_error(e) if store is not None else None
    if damaged is not None:  # LMDB cannot read a page of data.mdb
        msg = str(damaged)
    elif isinstance(e, TvcfsError):
        msg = str(e)
    elif isinstance(e, OSError):
        msg = os_error_message(e)
    elif isinstance(e, (ValueError, LookupError)) and str(e):
        msg = str(e)
    else:
        msg = (f"unexpected failure ({e or 'no message'}); this is a bug in tvcfs: run again with "
               "TVCFS_DEBUG=1 for the traceback and report it")
    return (msg.strip().splitlines() or ["failed"])[0]


def split_pathspec(args, positionals: list) -> tuple[list, list]:
    """``(revisions, paths)`` from a command's positional arguments: what followed
    ``--`` on the command line is paths (``log [REV] -- PATH…``), else everything
    after the first ``nrevs`` is."""
    argv = getattr(args, "argv", [])
    positionals = [p for p in positionals if p is not None]
    if "--" in argv:
        k = len(argv) - argv.index("--") - 1
        return (positionals[:-k], positionals[-k:]) if k else (positionals, [])
    return positionals, []


def split_range(spec: str) -> tuple[str, str]:
    """``(A, B)`` of git's range ``A..B`` (either side empty: ``HEAD``). Raises
    :class:`~tvcfs.errors.TvcfsError` for ``A...B`` (a symmetric difference, not
    supported)."""
    from ..errors import TvcfsError

    if "..." in spec:
        raise TvcfsError(f"{spec}: A...B ranges are not supported: give A..B, or the two revisions "
                         "(tvcfs diff A B)")
    a, _, b = spec.partition("..")
    return a or "HEAD", b or "HEAD"


def _hints(e: BaseException) -> None:
    """Print an exception's notes (``BaseException.add_note``: what to do next)."""
    for note in getattr(e, "__notes__", ()):
        print(f"hint: {note}", file=sys.stderr)


def open_repo(args, path: str | None = None):
    """The repository at ``path``, else named by ``--repo``, else found from the
    current directory (inside a mount: the mounted repository, as
    :func:`mounted_repo` finds it); its block reads are verified unless the command has
    ``--no-verify`` set. Raises :class:`~tvcfs.errors.NotARepository`."""
    from ..errors import NotARepository
    from ..repo import Repo

    path = path or getattr(args, "repo", None)
    try:
        repo = Repo.open(path) if path else Repo.discover()
    except NotARepository as e:
        if path:
            raise
        found = mounted_repo()
        if found is None:
            raise NotARepository(f"{e}: run tvcfs inside a repository or a mount of one, or name the "
                                 "repository with -C PATH (`tvcfs init` creates one)") from None
        repo = Repo.open(found[0])
    if getattr(args, "no_verify", False):
        repo.store.verify_reads = False
    return repo


def mounted_repo(path: str | None = None):
    """``(repo_root, branch)`` of the tvcfs mount holding ``path`` (default: the
    current directory), ``branch`` being ``NAME`` inside ``MOUNT/branches/NAME`` and
    ``None`` elsewhere in the mount; ``None`` outside a mount. Reads ``/proc/mounts``
    only (``tvcfs.fs.daemon.branch_in_mount``)."""
    from ..fs.daemon import branch_in_mount

    try:
        return branch_in_mount(path or os.getcwd())
    except OSError:  # the current directory was removed
        return None


def add_no_verify(p) -> None:
    """Add ``--no-verify`` to the parser of a command that reads blocks out."""
    from ..fs.options import NO_VERIFY_HELP

    p.add_argument("--no-verify", action="store_true", help=NO_VERIFY_HELP)


def emit_json(obj) -> None:
    """Print ``obj`` as one JSON document on stdout: binary CIDs (``bytes``) and
    ``multiformats.CID`` objects become their base32 strings."""
    import json

    from ..encoding.cid import cid_str

    def default(o):
        if isinstance(o, (bytes, bytearray, memoryview)):
            return cid_str(bytes(o))
        if type(o).__name__ == "CID":  # multiformats.CID in commit metadata
            return o.encode("base32")
        if isinstance(o, (set, frozenset, tuple)):
            return list(o)
        raise TypeError(f"cannot encode {type(o).__name__} as JSON")

    print(json.dumps(obj, indent=1, default=default, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(main())
