"""Staging commands: ``add``, ``rm``, ``restore --staged`` (the index is
:mod:`tvcfs.index`; ``tvcfs commit`` without a directory commits it)."""

from __future__ import annotations

from ..formatting import short_cid
from ..names import printable_name
from . import emit_json, open_repo
from .progress import progress_bar


def cmd_add(args):
    """``tvcfs add PATH...``: stage files or directories in the index and print their CIDs;
    exit status 0."""
    from ..index import add_paths

    with open_repo(args) as repo:
        with progress_bar(args, "Staging") as bar:
            added = add_paths(repo, args.paths, dest=args.dest, branch=args.branch, progress=bar)
        if args.json:
            emit_json([{"path": p, "cid": c} for p, c in added])
            return 0
        for p, c in added:
            print(f"staged {printable_name(p) or '(whole tree)'} {short_cid(c)}")
    return 0


def cmd_rm(args):
    """``tvcfs rm PATH...``: stage removals (files on disk are untouched); exit status 0."""
    from ..index import remove_paths

    with open_repo(args) as repo:
        removed = remove_paths(repo, args.paths)
        if args.json:
            emit_json({"removed": removed})
            return 0
        for p in removed:
            print(f"staged removal of {printable_name(p)} (files on disk are untouched)")
    return 0


def cmd_restore(args):
    """``tvcfs restore --staged [PATH...]``: unstage paths (all without any); exit status 0.
    Raises :class:`~tvcfs.errors.TvcfsError` without ``--staged``."""
    from ..errors import TvcfsError
    from ..index import restore_staged

    if not args.staged:
        raise TvcfsError("restore changes only the index here: use `tvcfs restore --staged [PATH…]` "
                         "(files on disk are never touched)")
    with open_repo(args) as repo:
        restored = restore_staged(repo, args.paths)
        if args.json:
            emit_json({"restored": restored, "index_cleared": restored is None})
            return 0
        if restored is None:
            print("unstaged everything: the index is empty")
        for p in restored or ():
            print(f"unstaged {printable_name(p)}")
    return 0


def register(sub) -> None:
    """Add ``add``, ``rm`` and ``restore`` to the ``tvcfs`` parser's subparsers."""
    p = sub.add_parser("add", help="stage files or directories for the next `tvcfs commit`",
                       description="Read, chunk and store each PATH and stage it at its place in the "
                                   "branch's tree (its path under the repository root, else its name; "
                                   "--as DEST to choose). `tvcfs commit -m MSG` then commits the index.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--as", dest="dest", metavar="DEST",
                   help="path in the tree (several PATHs: the directory they go into)")
    p.add_argument("-b", "--branch", help="branch to stage for when nothing is staged yet (default: HEAD's)")
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("rm", help="stage the removal of paths from the tree (files on disk are untouched)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("restore", help="unstage: `restore --staged [PATH…]` (all, or the PATHs)")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--staged", action="store_true", help="reset the index (required)")
    p.set_defaults(func=cmd_restore)
