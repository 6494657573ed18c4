"""What ``tvcfs status`` reports, as data: branches, the staging index, staged
changes of mounts, worktrees, live mounts, conflicts and lazy mounts' peers. The CLI
prints it as text or JSON (docs/repository.md, docs/writes.md)."""

from __future__ import annotations

from .errors import TvcfsError


def pending_changes(repo, state_dir: str) -> list:
    """``[(status, path, staged bytes | None)]`` of a mount's staging directory (its
    snapshot and journal), against its base commit. A state that cannot be read gives
    one ``("unreadable", reason, None)`` line."""
    from .fs.workspace import Workspace

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


def status_report(repo, branch: str | None = None) -> dict:
    """The repository's state; with ``branch``, only what concerns that branch.

    Keys: ``head`` (HEAD's branch or ``None``), ``branches`` (``[{name, commit,
    time, message}]``, ``commit`` ``None`` for an unborn branch), ``index`` (``None``
    or ``{branch, base, tree, branch_moved, changes: [{status, path, cid}]}``),
    ``mount_changes`` (staged changes of mounts: ``[{branch, dir, pid, alive, error, damaged,
    changes: [{status, path, staged_bytes}]}]``), ``worktrees`` (``[{path, branch,
    base, tree, exists, branch_head, branch_moved, unfinished}]``; ``unfinished``: what
    to run when the checkout into it never finished, else ``None``), ``mounts`` (``[{mountpoint, pid}]``),
    ``conflicts`` (the recorded conflicts), ``lazy_mounts`` (status files of lazy
    mounts). CIDs are binary."""
    from .fs.daemon import repo_mounts
    from .fs.lazy import mount_statuses
    from .fs.workspace import pending_workspaces
    from .index import load_index, staged_changes

    heads = repo.branches()
    rows = []
    for b in ([branch] if branch else sorted(heads)):
        cid = heads.get(b)
        if cid is None:
            rows.append({"name": b, "commit": None, "time": None, "message": ""})
            continue
        com = repo.read_commit(cid)
        rows.append({"name": b, "commit": cid, "time": com.timestamp,
                     "message": com.message.splitlines()[0] if com.message else ""})
    idx = load_index(repo)
    index = None
    if idx is not None and (branch is None or idx.branch == branch):
        index = {"branch": idx.branch, "base": idx.base, "tree": idx.tree,
                 "branch_moved": heads.get(idx.branch) != idx.base,
                 "changes": [{"status": c.status, "path": c.path, "cid": c.cid}
                             for c in staged_changes(repo, idx)]}
    mounts_staged = []
    for p in pending_workspaces(repo):
        if branch is not None and p["branch"] != branch:
            continue
        mounts_staged.append({
            "branch": p["branch"], "dir": p["dir"], "pid": p.get("pid"), "alive": p["alive"],
            "error": p.get("error"), "damaged": bool(p.get("damaged")),
            "changes": [] if p.get("damaged") else [{"status": s, "path": path, "staged_bytes": size}
                                                    for s, path, size in pending_changes(repo, p["dir"])]})
    worktrees = []
    for path, r in sorted(repo.worktrees().items()):
        if branch is not None and r["branch"] != branch:
            continue
        tip = heads.get(r["branch"]) if r["branch"] else None
        behind = tip is not None and (tip != r["base"] or repo.read_commit(tip).tree != r["tree"])
        worktrees.append({"path": path, "branch": r["branch"], "base": r["base"], "tree": r["tree"],
                          "exists": r["exists"], "branch_head": tip, "branch_moved": behind,
                          "unfinished": r["unfinished"]})
    conflicts = [c for c in repo.config.conflicts if branch is None or c["branch"] == branch]
    return {
        "head": repo.head_branch(),
        "branches": rows,
        "index": index,
        "mount_changes": mounts_staged,
        "worktrees": worktrees,
        "mounts": [{"mountpoint": m, "pid": pid} for m, pid in repo_mounts(repo.root)],
        "conflicts": conflicts,
        "lazy_mounts": list(mount_statuses(repo.control)),
    }
