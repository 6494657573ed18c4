"""``tvcfs status`` and ``tvcfs recover``: staged changes of mounts, last commits,
worktrees (directories made by ``tvcfs checkout``), live mounts, conflicts."""

from __future__ import annotations

import json
import os
import sys

from ..encoding.cid import cid_str
from ..errors import TvcfsError
from ..formatting import clock, short_cid
from ..names import printable_name
from . import emit_json, mounted_repo, open_repo
from .progress import progress_bar


def cmd_status(args):
    """``tvcfs status [MOUNT/branches/NAME]``: branches, staged changes of mounts, worktrees,
    mounts and conflicts; exit status 0. Raises :class:`~tvcfs.errors.TvcfsError` for a path
    outside a mount."""
    from ..fs.daemon import branch_in_mount
    from ..repo import Repo
    from ..status import status_report

    branch = None
    if args.path:
        target = branch_in_mount(args.path)
        if target is None:
            raise TvcfsError(f"{printable_name(args.path)} is not inside a tvcfs mount: give "
                             "MOUNT/branches/NAME, or no path for the whole repository")
        repo = Repo.open(target[0])
        branch = target[1]
    else:
        repo = open_repo(args)
        here = None if getattr(args, "repo", None) else mounted_repo()
        if here is not None and os.path.realpath(here[0]) == os.path.realpath(repo.root):  # in MOUNT/branches/NAME
            branch = here[1]
    with repo:
        report = status_report(repo, branch)
    if args.json:
        emit_json(report)
        return 0
    print(f"On branch {report['head']}" if report["head"] else "HEAD detached")
    for b in report["branches"]:
        if b["commit"] is None:
            print(f"  {b['name']}: no commits yet")
            continue
        print(f"  {b['name']}: {short_cid(b['commit'])} {clock(b['time'])} {b['message']}")
    idx = report["index"]
    if idx and idx["changes"]:
        print(f"\nChanges staged for commit on {idx['branch']} (tvcfs commit -m MSG; "
              "tvcfs restore --staged to unstage):")
        for c in idx["changes"]:
            print(f"  {c['status']}: {printable_name(c['path'])}")
        if idx["branch_moved"]:
            print(f"  ({idx['branch']} moved since they were staged: the commit replays them onto its head)")
    pending = report["mount_changes"]
    if pending:
        print("\nStaged changes not yet committed:")
        for staged in pending:
            state = f"mount pid {staged['pid']} running" if staged["alive"] else "mount gone: run `tvcfs recover`"
            print(f"  branch {staged['branch']} ({state}; {staged['dir']})")
            if staged.get("damaged"):
                print(f"    {staged['error']['error']}")
            elif staged.get("error"):
                e = staged["error"]
                when = clock(e.get("time", 0))
                if e.get("skipped"):
                    print(f"    committed at {when} without these entries (their names cannot be stored):")
                    _print_skipped(e["skipped"], "    ")
                else:
                    print(f"    last commit attempt failed at {when} ({e.get('attempts', 1)} in a row): "
                          f"{e.get('error')}")
                    print("    (retried automatically; `fsync` a file or the directory to retry now)")
            for c in staged["changes"]:
                extra = f" ({c['staged_bytes']} bytes staged)" if c["staged_bytes"] is not None else ""
                print(f"    {c['status']}: {printable_name(c['path'])}{extra}")
    elif not (idx and idx["changes"]):
        print("\nNo staged changes.")
    _print_worktrees(report)
    if report["conflicts"]:
        print("\nConflicts (writes saved on their own branch; merge them by hand):")
        for c in report["conflicts"]:
            print(f"  {clock(c['time'])} {c['branch']}: saved as {c['saved_as']} ({short_cid(c['commit'])}); "
                  f"colliding paths: {', '.join(c['paths'])}")
    _print_lazy_mounts(report["lazy_mounts"])
    return 0


def _print_skipped(skipped: list, indent: str) -> None:
    """Lines for entries a commit left out (``[(path, reason, staged data path|None)]``,
    :meth:`tvcfs.fs.workspace.Workspace.build`): what and what to do."""
    for path, why, staged in skipped:
        if staged:
            what = (f"its data is kept in {printable_name(staged)}: copy it out under a valid name, "
                    "then `tvcfs recover --discard` drops it")
        else:
            what = "earlier commits keep what was committed of it"
        print(f"{indent}  not committed: {path}: {why}; {what}")


def _print_worktrees(report: dict) -> None:
    """The directories made by ``tvcfs checkout`` (path, branch, base, whether the
    directory is still there; docs/writes.md, "Worktrees") and the live mounts."""
    if report["worktrees"]:
        print("\nWorktrees (tvcfs checkout; `tvcfs commit DIR` replays onto their branch if it moved):")
        for worktree in report["worktrees"]:
            state = "" if worktree["exists"] else " [directory gone]"
            if worktree["unfinished"] and worktree["exists"]:
                state = f" [unfinished: {worktree['unfinished']}]"
            behind = (f"; {worktree['branch']} is at {short_cid(worktree['branch_head'])}"
                      if worktree["branch_moved"] else "")
            print(f"  {worktree['path']}  branch {worktree['branch'] or '(none)'} "
                  f"base {short_cid(worktree['base'])}{behind}{state}")
    if report["mounts"]:
        print("\nMounts:")
        for m in report["mounts"]:
            print(f"  {m['mountpoint']}" + (f" (pid {m['pid']})" if m["pid"] else ""))


def _print_lazy_mounts(statuses: list) -> None:
    """The peers of the repository's running lazy mounts, from the status files the
    mounts publish (``tvcfs.fs.lazy.mount_statuses``, docs/lazy.md): state, since
    when, why a peer is down, and the last read that failed."""
    for status in statuses:
        print(f"\nLazy mount {status.get('mountpoint')} (pid {status.get('pid')}; a read waits at most "
              f"{status.get('timeout_s', 0):g} s for its blocks):")
        for name, p in sorted(status.get("peers", {}).items()):
            line = f"  peer {name} {p.get('state')} since {clock(p.get('since'))}"
            if p.get("state") != "ready" and p.get("last_error"):
                line += f": {p['last_error']}"
            elif p.get("suspect"):
                line += " (silent with requests outstanding)"
            print(line)
        e = status.get("last_read_error")
        if e:
            print(f"  last failed read at {clock(e.get('time'))}: {e.get('path')}: {e.get('error')}")


def cmd_recover(args):
    """``tvcfs recover``: commit (``--discard``: drop) staged changes left by dead mounts; exit
    status 1 if some entries stay staged, else 0."""
    from ..fs.workspace import discard_pending, pending_workspaces, recover

    with open_repo(args) as repo:
        pending = pending_workspaces(repo)
        if not pending:
            print("nothing to recover")
            return 0
        rc = 0
        for staged in pending:
            if staged["alive"] and not args.force:
                print(f"skipping {staged['dir']}: its mount (pid {staged['pid']}) is still running")
                continue
            if args.discard:
                discard_pending(staged["dir"])
                print(f"discarded staged changes of branch {staged['branch']} ({staged['dir']})")
                continue
            res = recover(repo, staged["dir"], args.message)
            if res["commit"]:
                kind = "conflict: saved as" if res["conflict"] else "committed on"
                print(f"recovered branch {staged['branch']}: {kind} {res['branch']} {cid_str(res['commit'])}")
            elif not res.get("skipped"):
                print(f"branch {staged['branch']}: staged state matches the branch; nothing to commit")
            if res.get("skipped"):
                print(f"branch {staged['branch']}: entries left staged in {staged['dir']}:")
                _print_skipped(res["skipped"], "")
                rc = 1
        return rc


def register(sub) -> None:
    """Add the ``status`` and ``recover`` subcommands, and the maintenance ones
    (:func:`register_maintenance`), to ``sub``."""
    p = sub.add_parser("status", help="branches, staged changes of mounts, worktrees, mounts, conflicts")
    p.add_argument("path", nargs="?", help="MOUNT/branches/NAME to show one branch of a mount")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("recover", help="commit (or --discard) staged changes left by a mount that died")
    p.add_argument("-m", "--message", help="message of the recovery commits")
    p.add_argument("--discard", action="store_true", help="drop the staged changes instead of committing them")
    p.add_argument("--force", action="store_true", help="even if the mount process seems alive")
    p.set_defaults(func=cmd_recover)
    register_maintenance(sub)


def _days(text: str) -> float:
    """``--expire DAYS``: a number of days, 0 or more (``inf``: never). Raises
    ``argparse.ArgumentTypeError`` for a negative number or NaN, which expired every
    reflog entry as 0 does (a typo of ``-5`` for ``5`` would collect every commit
    only the reflog keeps)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"not a number of days (0 or more): {text!r}")
    return value


def cmd_gc(args):
    """``tvcfs gc``: delete unreferenced blocks (``-n``: only count them; ``--pack``: then
    pack); exit status 0."""
    from ..fs.daemon import repo_mounts
    from ..gc import DEFAULT_EXPIRE_DAYS, collect_garbage

    with open_repo(args) as repo:
        expire = args.expire
        mounts = repo_mounts(repo.root)
        if mounts:  # a file open on a mount may be of a branch deleted since: its blocks stay
            if expire < DEFAULT_EXPIRE_DAYS:
                print(f"tvcfs: note: {repo.root} is mounted on {mounts[0][0]}"
                      f"{f' and {len(mounts) - 1} more' if len(mounts) > 1 else ''}: every reflog entry "
                      "is kept (--expire applies once it is unmounted)", file=sys.stderr)
            expire = None
        with progress_bar(args, "Collecting garbage", unit="blocks") as bar:
            r = collect_garbage(repo, dry_run=args.dry_run, expire_days=expire, progress=bar)
        packed = None
        if args.pack and not args.dry_run:
            from .core import run_pack

            packed = run_pack(args, repo)
        if args.json:
            emit_json({**r, "dry_run": args.dry_run, **({"pack": packed} if packed else {})})
            return 0
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {r['deleted']} blocks ({r['deleted_bytes']} bytes); {r['kept']} reachable")
        if packed:
            from .core import pack_summary

            print(pack_summary(packed))
    return 0


def cmd_fsck(args):
    """``tvcfs fsck``: verify every block and that refs point at complete commits, printing
    each problem; exit status 0. Raises :class:`~tvcfs.errors.TvcfsError` when problems were
    found (``--json``: exit status 1 instead)."""
    from ..gc import fsck

    with open_repo(args) as repo:
        stats: dict = {}
        lazy_ok = args.lazy_ok or repo.config.lazy  # a lazy clone lacks leaves by design
        with progress_bar(args, "Checking", unit="blocks") as bar:
            problems = fsck(repo, lazy_ok=lazy_ok, progress=bar, stats=stats)
        if args.json:
            emit_json({"ok": not problems, "problems": problems})
            return 1 if problems else 0
        for p in problems:
            print(p)
        if stats.get("checksums_recorded"):
            print(f"recorded the at-rest checksums of {stats['checksums_recorded']} block(s) that had none "
                  "(later reads check them against it instead of hashing them)")
        if problems:
            raise TvcfsError(f"{len(problems)} problem(s) found in {repo.root}: see the lines above")
        print("ok: every block matches its CID and every ref points at a complete commit"
              + (" (file contents not fetched yet are not counted: a lazy clone)" if lazy_ok else ""))
    return 0


def cmd_stats(args):
    """Print a mount's counters (``MOUNT/.tvcfs/stats``): bytes served and read from
    the store, readahead, and for lazy mounts bytes fetched per priority class and
    per peer, cache hits and pending wants."""
    from ..fs.daemon import mount_stats

    data = mount_stats(args.mountpoint)
    if args.json:
        print(json.dumps(data, indent=1, sort_keys=True))
        return 0

    def show(d, indent=""):
        for k in sorted(d):
            v = d[k]
            if isinstance(v, dict):
                print(f"{indent}{k}:")
                show(v, indent + "  ")
            else:
                print(f"{indent}{k}: {v}")

    show(data)
    return 0


def register_maintenance(sub) -> None:
    """Add the ``stats``, ``gc`` and ``fsck`` subcommands to ``sub``."""
    p = sub.add_parser("stats", help="counters of a mount (fetches per priority and peer, cache hits)")
    p.add_argument("mountpoint")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("gc", help="delete blocks no ref, recent reflog entry, pin or mount uses")
    p.add_argument("-n", "--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    p.add_argument("--expire", type=_days, default=90, metavar="DAYS",
                   help="keep commits in the reflog younger than this (default 90)")
    p.add_argument("--pack", action="store_true", help="then pack older history (tvcfs pack)")
    from .core import add_keep_hot

    add_keep_hot(p)
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("fsck", help="verify every block and that refs point at complete commits")
    p.add_argument("--lazy-ok", action="store_true", help="missing leaves (file contents) are fine "
                   "(the default in a lazy clone)")
    p.set_defaults(func=cmd_fsck)
