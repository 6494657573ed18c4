"""``tvcfs diff`` and ``tvcfs merge`` (tensor level; see docs/merge.md)."""

from __future__ import annotations

import sys

from . import add_no_verify, emit_json, open_repo, split_pathspec, split_range

STRATEGY_NAMES = ("ours", "theirs", "base", "average-ours-theirs", "average-all", "average-ours-base",
                  "average-theirs-base", "task-arithmetic", "ties", "dare", "slerp")


def cmd_diff(args) -> int:
    """``tvcfs diff [REV [REV2]] [-- PATH...]``: the tensor diff of two revisions (one: against
    HEAD), ``--stat`` or ``--json``; exit status 1 with ``--exit-code`` when files differ,
    else 0. Raises :class:`~tvcfs.errors.TvcfsError` for more than two revisions."""
    from ..diff import diff_commits, format_diff, format_stat

    positionals = [args.rev1, args.rev2, *args.paths]
    if args.rev1 and ".." in args.rev1:  # git's `diff A..B` is `diff A B`
        positionals[:1] = split_range(args.rev1)
    revs, paths = split_pathspec(args, positionals)
    if "--" not in getattr(args, "argv", []):  # REV REV2 PATH…: the first two are revisions
        revs, paths = revs[:2], revs[2:]
    if len(revs) > 2:
        from ..errors import TvcfsError

        raise TvcfsError(f"diff compares at most two revisions, got {' '.join(revs)}: separate paths "
                         "with `--` (tvcfs diff REV [REV2] -- PATH…)")
    with open_repo(args) as repo:
        # one revision: against the head of the branch HEAD is on (git's `diff REV`
        # compares with the working tree; tvcfs's working state is the branch head)
        rev_a = revs[0] if revs else "HEAD"
        rev_b = revs[1] if len(revs) > 1 else "HEAD"
        d = diff_commits(repo, rev_a, rev_b, paths, numeric=not args.stat or args.json)
        if args.json:
            print(d.to_json())
        elif args.stat:
            print(format_stat(d))
        elif d.files:
            print(format_diff(d))
        if args.exit_code and d.files:
            return 1
    return 0


def cmd_merge(args) -> int:
    """``tvcfs merge REV``: merge into the current (or ``--branch``) branch with the tensor
    merge strategies; exit status 1 on a conflict (nothing written), else 0."""
    from ..merge.core import CONFLICT, FAST_FORWARD, MERGED, UP_TO_DATE, merge
    from ..repo import Author
    from ..encoding.cid import cid_str

    with open_repo(args) as repo:
        author = Author.parse(args.author) if args.author else None
        r = merge(repo, args.rev, branch=args.branch, strategies=args.strategy, params=args.param,
                  message=args.message, author=author, no_ff=args.no_ff, dry_run=args.dry_run)
        unused = r.kind in (FAST_FORWARD, UP_TO_DATE) and bool(args.strategy)
        if args.json:
            emit_json({**r.to_dict(), "strategies_unused": unused})
            return 1 if r.kind == CONFLICT else 0
        if unused:
            note = (f"; strategy {', '.join(args.strategy)} not used: "
                    + ("there is nothing to merge" if r.kind == UP_TO_DATE else
                       "a fast-forward merges no tensors (--no-ff records a merge commit; a "
                       "strategy applies only to tensors changed on both sides)"))
        else:
            note = ""
        if r.kind == UP_TO_DATE:
            print(f"Already up to date{note}.")
        elif r.kind == FAST_FORWARD:
            print(f"Fast-forward to {cid_str(r.theirs)}" + (" (dry run)" if args.dry_run else "") + note)
        elif r.kind == MERGED:
            s = r.stats
            if args.dry_run:
                print("Merge would succeed (dry run, nothing written).")
            else:
                print(f"Merge made: commit {cid_str(r.commit)}")
                print(f"  {s['files_merged']} safetensors files merged: {s['tensors_merged']} tensors computed, "
                      f"{s['tensors_copied']} copied; {s['leaves_written']} new leaves, "
                      f"{s['leaves_reused']} reused")
        else:
            print(f"Merge conflict: {len(r.conflicts)} conflicts; nothing was written.", file=sys.stderr)
            for c in r.conflicts:
                print(f"  CONFLICT {c}", file=sys.stderr)
            return 1
    return 0


def register(sub) -> None:
    """Add the ``diff`` and ``merge`` commands to the ``tvcfs`` argument parser."""
    p = sub.add_parser("diff", help="tensor-level diff of two revisions",
                       description="Files added/removed/modified between REV1 and REV2 (default HEAD); inside "
                                   "safetensors files, tensors added/removed/modified with numeric summaries.")
    p.add_argument("rev1", nargs="?", metavar="REV", help="default HEAD; alone: compared with HEAD")
    p.add_argument("rev2", nargs="?", metavar="REV2")
    p.add_argument("paths", nargs="*", metavar="PATH", help="limit to these files or directories "
                   "(after `--` when fewer than two revisions are given)")
    p.add_argument("--stat", action="store_true", help="one summary line per file")
    p.add_argument("--exit-code", action="store_true", help="exit 1 if there are differences")
    add_no_verify(p)
    p.set_defaults(func=cmd_diff)

    # names only: importing the strategies would load numpy on every tvcfs command
    # (test_strategy_names_in_help keeps this list equal to merge.strategies.STRATEGIES)
    p = sub.add_parser("merge", help="merge a revision into the current branch, tensor by tensor",
                       description="Three-way merge at file level, then at tensor level inside safetensors. "
                                   "Strategies: " + ", ".join(STRATEGY_NAMES) + ".")
    p.add_argument("rev", metavar="BRANCH", help="revision to merge (branch, tag, commit)")
    p.add_argument("--strategy", "-s", action="append", default=[], metavar="[GLOB=]S[:k=v,...]",
                   help="strategy for tensors changed on both sides; repeat with GLOB= for per-tensor rules "
                        "(first match wins). Without any, such tensors are conflicts.")
    p.add_argument("--param", "-p", action="append", default=[], metavar="k=v",
                   help="strategy parameter (alpha, alpha1, alpha2, lambda, density, seed, t)")
    p.add_argument("--message", "-m", help="commit message")
    p.add_argument("--author", help="'Name <email>'")
    p.add_argument("--into", dest="branch", metavar="BRANCH", help="branch to merge into (default: HEAD's)")
    p.add_argument("--no-ff", action="store_true", help="create a merge commit even when fast-forward is possible")
    p.add_argument("--dry-run", "-n", action="store_true", help="report the outcome without writing")
    add_no_verify(p)
    p.set_defaults(func=cmd_merge)
