"""``tvcfs status`` and ``tvcfs recover``: staged changes of mounts, last commits,
worktrees (directories made by ``tvcfs checkout``), live mounts, conflicts."""

from __future__ import annotations

import json
import os
import time

from . import open_repo
from ..encoding.cid import cid_str
from ..encoding.unixfs import printable_name
from ..errors import TvcfsError


def _mount_target(path: str):
    """``(repo_root, branch)`` if ``path`` is ``MOUNT/branches/NAME[/...]`` of a tvcfs
    mount (``branch`` is ``None`` elsewhere in the mount), else ``None``."""
    from ..fs.daemon import find_tvcfs_mount

    m = find_tvcfs_mount(path)
    if m is None:
        return None
    rel = m[2].split(os.sep)
    branch = rel[1] if len(rel) > 1 and rel[0] == "branches" else None
    return m[0], branch


def _pending_changes(repo, state_dir: str) -> list:
    """``[(status, path, staged bytes | None)]`` of a staging directory (its snapshot
    and journal), against its base commit. A state that cannot be read gives one
    ``("unreadable", reason, None)`` line."""
    from ..fs.workspace import Workspace

    try:
        ws = Workspace.load(repo, state_dir)
    except (OSError, ValueError, KeyError, TvcfsError) as e:
        return [("unreadable", str(e), None)]
    try:
        return ws.changes()
    except TvcfsError as e:
        return [("unreadable", str(e), None)]
    finally:
        ws._close_journal(unlink=False)


def cmd_status(args):
    from ..fs.workspace import pending_workspaces
    from ..repo import Repo

    branch = None
    if args.path:
        tgt = _mount_target(args.path)
        if tgt is None:
            raise TvcfsError(f"{args.path} is not inside a tvcfs mount")
        repo = Repo.open(tgt[0])
        branch = tgt[1]
    else:
        repo = open_repo(args)
    with repo:
        head = repo.head_branch()
        print(f"On branch {head}" if head else "HEAD detached")
        branches = repo.branches()
        for b in ([branch] if branch else sorted(branches)):
            cid = branches.get(b)
            if cid is None:
                print(f"  {b}: no commits yet")
                continue
            com = repo.read_commit(cid)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(com.timestamp))
            first = com.message.splitlines()[0] if com.message else ""
            print(f"  {b}: {cid_str(cid)[:16]} {when} {first}")
        pend = [p for p in pending_workspaces(repo) if branch is None or p["branch"] == branch]
        if pend:
            print("\nStaged changes not yet committed:")
            for p in pend:
                state = f"mount pid {p['pid']} running" if p["alive"] else "mount gone: run `tvcfs recover`"
                print(f"  branch {p['branch']} ({state}; {p['dir']})")
                if p.get("error"):
                    e = p["error"]
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("time", 0)))
                    if e.get("skipped"):
                        print(f"    committed at {when} without these entries (their names cannot be stored):")
                        _print_skipped(e["skipped"], "    ")
                    else:
                        print(f"    last commit attempt failed at {when} ({e.get('attempts', 1)} in a row): "
                              f"{e.get('error')}")
                        print("    (retried automatically; `fsync` a file or the directory to retry now)")
                for status, path, size in _pending_changes(repo, p["dir"]):
                    extra = f" ({size} bytes staged)" if size is not None else ""
                    print(f"    {status}: {printable_name(path)}{extra}")
        else:
            print("\nNo staged changes.")
        _print_worktrees(repo, branch)
        conflicts = repo.config.conflicts
        conflicts = [c for c in conflicts if branch is None or c["branch"] == branch]
        if conflicts:
            print("\nConflicts (writes saved on their own branch; merge them by hand):")
            for c in conflicts:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["time"]))
                print(f"  {when} {c['branch']}: saved as {c['saved_as']} ({c['commit'][:16]}); "
                      f"colliding paths: {', '.join(c['paths'])}")
        _print_lazy_mounts(repo)
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


def _print_worktrees(repo, branch: str | None) -> None:
    """The directories made by ``tvcfs checkout`` (path, branch, base, whether the
    directory is still there; docs/writes.md, "Worktrees") and the live mounts of
    ``repo``; with ``branch``, only that branch's worktrees."""
    from ..fs.daemon import repo_mounts

    wts = {p: r for p, r in sorted(repo.worktrees().items()) if branch is None or r["branch"] == branch}
    if wts:
        print("\nWorktrees (tvcfs checkout; `tvcfs commit DIR` replays onto their branch if it moved):")
        heads = repo.branches()
        for p, r in wts.items():
            tip = heads.get(r["branch"]) if r["branch"] else None
            state = "" if r["exists"] else " [directory gone]"
            behind = ""
            if tip is not None and (tip != r["base"] or repo.read_commit(tip).tree != r["tree"]):
                behind = f"; {r['branch']} is at {cid_str(tip)[:16]}"
            print(f"  {p}  branch {r['branch'] or '(none)'} base {cid_str(r['base'])[:16]}{behind}{state}")
    mounts = repo_mounts(repo.root)
    if mounts:
        print("\nMounts:")
        for mnt, pid in mounts:
            print(f"  {mnt}" + (f" (pid {pid})" if pid else ""))


def _print_lazy_mounts(repo) -> None:
    """The peers of the repository's running lazy mounts, from the status files the
    mounts publish (``tvcfs.fs.remote.mount_statuses``, docs/lazy.md): state, since
    when, why a peer is down, and the last read that failed."""
    from ..fs.remote import mount_statuses

    def clock(t):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t or 0))

    for st in mount_statuses(repo.control):
        print(f"\nLazy mount {st.get('mountpoint')} (pid {st.get('pid')}; a read waits at most "
              f"{st.get('timeout_s', 0):g} s for its blocks):")
        for name, p in sorted(st.get("peers", {}).items()):
            line = f"  peer {name} {p.get('state')} since {clock(p.get('since'))}"
            if p.get("state") != "ready" and p.get("last_error"):
                line += f": {p['last_error']}"
            elif p.get("suspect"):
                line += " (silent with requests outstanding)"
            print(line)
        e = st.get("last_read_error")
        if e:
            print(f"  last failed read at {clock(e.get('time'))}: {e.get('path')}: {e.get('error')}")


def cmd_recover(args):
    from ..fs.workspace import pending_workspaces, recover

    with open_repo(args) as repo:
        pend = pending_workspaces(repo)
        if not pend:
            print("nothing to recover")
            return 0
        rc = 0
        for p in pend:
            if p["alive"] and not args.force:
                print(f"skipping {p['dir']}: its mount (pid {p['pid']}) is still running")
                continue
            if args.discard:
                import shutil

                shutil.rmtree(p["dir"], ignore_errors=True)
                print(f"discarded staged changes of branch {p['branch']} ({p['dir']})")
                continue
            res = recover(repo, p["dir"], args.message)
            if res["commit"]:
                kind = "conflict: saved as" if res["conflict"] else "committed on"
                print(f"recovered branch {p['branch']}: {kind} {res['branch']} {cid_str(res['commit'])}")
            elif not res.get("skipped"):
                print(f"branch {p['branch']}: staged state matches the branch; nothing to commit")
            if res.get("skipped"):
                print(f"branch {p['branch']}: entries left staged in {p['dir']}:")
                _print_skipped(res["skipped"], "")
                rc = 1
        return rc


def register(sub) -> None:
    p = sub.add_parser("status", help="branches, staged changes of mounts, worktrees, mounts, conflicts")
    p.add_argument("path", nargs="?", help="MOUNT/branches/NAME to show one branch of a mount")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("recover", help="commit (or --discard) staged changes left by a mount that died")
    p.add_argument("-m", "--message")
    p.add_argument("--discard", action="store_true")
    p.add_argument("--force", action="store_true", help="even if the mount process seems alive")
    p.set_defaults(func=cmd_recover)
    register_maintenance(sub)


def cmd_gc(args):
    from ..gc import collect_garbage

    with open_repo(args) as repo:
        r = collect_garbage(repo, dry_run=args.dry_run, expire_days=args.expire)
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {r['deleted']} blocks ({r['deleted_bytes']} bytes); {r['kept']} reachable")
    return 0


def cmd_fsck(args):
    from ..gc import fsck

    with open_repo(args) as repo:
        problems = fsck(repo, lazy_ok=args.lazy_ok)
        for p in problems:
            print(p)
        if problems:
            raise TvcfsError(f"{len(problems)} problem(s) found")
        print("ok: every block matches its CID and every ref points at a complete commit")
    return 0


def cmd_stats(args):
    """Print a mount's counters (``MOUNT/.tvcfs/stats``): bytes served and read from
    the store, readahead, and for lazy mounts bytes fetched per priority class and
    per peer, cache hits and pending wants."""
    path = os.path.join(args.mountpoint, ".tvcfs", "stats")
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise TvcfsError(f"{args.mountpoint} is not a tvcfs mount ({e.strerror})") from None
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
    p = sub.add_parser("stats", help="counters of a mount (fetches per priority and peer, cache hits)")
    p.add_argument("mountpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("gc", help="delete blocks no ref, recent reflog entry, pin or mount uses")
    p.add_argument("-n", "--dry-run", action="store_true")
    p.add_argument("--expire", type=float, default=90, metavar="DAYS",
                   help="keep commits in the reflog younger than this (default 90)")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("fsck", help="verify every block and that refs point at complete commits")
    p.add_argument("--lazy-ok", action="store_true", help="missing leaves are fine (lazy clone)")
    p.set_defaults(func=cmd_fsck)
