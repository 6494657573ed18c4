"""Core repository commands: init, commit, log, branch, tag, show, ls, cat, checkout,
export, import, reflog, pin."""

from __future__ import annotations

import json
import os
import sys
import time

from ..encoding.cid import cid_str
from ..formatting import clock, commit_date, human_size, ratio, short_cid
from ..names import printable_name
from . import add_no_verify, emit_json, open_repo, split_pathspec, split_range
from .progress import progress_bar


def _author(args):
    from ..repo import Author

    return Author.parse(args.author) if getattr(args, "author", None) else None


def commit_dict(cid: bytes, com, refs=None) -> dict:
    """A commit as JSON-ready data (binary CIDs become strings in :func:`emit_json`)."""
    d = {"commit": cid, "parents": list(com.parents), "tree": com.tree,
         "author": {"name": com.author_name, "email": com.author_email},
         "timestamp": com.timestamp, "message": com.message, "metadata": com.metadata}
    if refs is not None:
        d["refs"] = refs
    return d


def entry_dict(e, path: str | None = None) -> dict:
    """A directory entry as JSON-ready data."""
    from ..dag import KIND_SYMLINK

    d = {"name": e.name, "kind": e.kind, "mode": e.mode, "size": e.size, "cid": e.cid}
    if path is not None:
        d["path"] = path
    if e.kind == KIND_SYMLINK:
        d["target"] = e.target
    return d


def revpath(repo, spec: str):
    """``(commit, path, Entry)`` of ``REV[:PATH]``; a path that is not in the tree is
    an error naming the whole ``spec`` and how to list what is there."""
    from ..errors import PathNotFound

    commit, path = repo.split_revpath(spec)
    try:
        return commit, path, repo.entry(commit, path)
    except PathNotFound as e:
        rev = spec.partition(":")[0] or "HEAD"
        raise PathNotFound(f"{printable_name(spec)}: {e}; `tvcfs ls -r {printable_name(rev)}` lists "
                           "the paths of that revision") from None


def cmd_init(args):
    """``tvcfs init [PATH]``: create (or reinitialise) a repository; exit status 0."""
    from ..repo import Repo

    path = args.path or args.repo or "."
    existed = os.path.isdir(os.path.join(path, ".tvcfs"))
    with Repo.init(path, default_branch=args.initial_branch) as repo:
        word = "Reinitialized existing" if existed else "Initialized empty"
        print(f"{word} tvcfs repository in {repo.control}")
    return 0


def cmd_commit(args):
    """``tvcfs commit``: commit the staging index, or directory ``args.dir``, to a branch and
    print the commit (``--json``: as JSON); exit status 0. Raises
    :class:`~tvcfs.errors.TvcfsError` subclasses (nothing staged, bad revision, bad
    metadata), shown by the CLI as one ``tvcfs: error:`` line."""
    from ..encoding.commit import parse_metadata
    from ..names import printable_name

    t0 = time.monotonic()
    meta = parse_metadata(args.meta)
    with open_repo(args) as repo:
        if args.delta_base:
            from ..pack import DELTA_BASE_KEY

            meta[DELTA_BASE_KEY] = cid_str(repo.resolve(args.delta_base))
        if args.dir is None:  # the staging index (tvcfs add / rm)
            from ..index import commit_index, staged_changes

            if args.base or args.allow_empty:
                from ..errors import TvcfsError

                raise TvcfsError("--base and --allow-empty apply to `tvcfs commit DIR`; "
                                 "the index is committed from the commit it was staged on")
            nstaged = len(staged_changes(repo))
            res = commit_index(repo, message=args.message or "", author=_author(args),
                               metadata=meta, branch=args.branch)
            what = "the index"
        else:
            kw = {"base": repo.resolve(args.base)} if args.base else {}
            with progress_bar(args, "Committing") as bar:
                res = repo.commit_dir(args.dir, branch=args.branch, message=args.message or "",
                                      author=_author(args), allow_empty=args.allow_empty,
                                      metadata=meta, progress=bar, **kw)
            what = printable_name(args.dir)
        dt = time.monotonic() - t0
        if args.json:
            emit_json({"changed": res.changed, "commit": res.cid, "branch": res.branch, "tree": res.tree,
                       "files": res.files, "bytes": res.bytes, "new_bytes": res.new_bytes,
                       "new_blocks": res.new_blocks, "replayed": res.replayed, "seconds": round(dt, 3)})
            return 0
        if not res.changed:
            print(f"nothing to commit: {what} matches {res.branch} ({res.files} files, "
                  f"{human_size(res.bytes)})")
            return 0
        print(f"[{res.branch} {cid_str(res.cid)}] {args.message or ''}".rstrip())
        if res.replayed and args.dir is None:
            print(f" {res.branch} moved since the changes were staged: they were replayed onto "
                  f"{short_cid(res.head)}")
        elif res.replayed:
            print(f" {res.branch} had changes {what} does not show (its base: {short_cid(res.base)}): "
                  f"its changes were replayed onto {short_cid(res.head)}; check out again to see them all")
        if args.dir is None:
            print(f" {nstaged} staged change{'s' if nstaged != 1 else ''} committed (tvcfs add/rm); "
                  f"the index is empty")
            return 0
        print(f" {res.files} files, {human_size(res.bytes)} scanned, {human_size(res.new_bytes)} new "
              f"in {res.new_blocks} blocks ({res.new_bytes} bytes), {dt:.2f} s")
    return 0


def cmd_log(args):
    """``tvcfs log [REV] [-- PATH...]``: the history from one revision (or ``--all`` refs),
    limited to paths; exit status 0. Raises :class:`~tvcfs.errors.TvcfsError` for more than
    one revision."""
    from .. import history

    positionals = [args.rev, *args.paths]
    argv = getattr(args, "argv", [])
    before = argv[:argv.index("--")] if "--" in argv else argv  # a path after -- may be "-3"
    for p in [p for p in positionals if p and p[0] == "-" and p[1:].isdigit() and p in before]:  # git's `log -3`
        args.max_count = int(p[1:])
        positionals.remove(p)
    revs, paths = split_pathspec(args, positionals)
    if len(revs) > 1:
        from ..errors import TvcfsError

        raise TvcfsError(f"log takes one revision, got {' '.join(revs)}: separate paths with "
                         "`--` (tvcfs log REV -- PATH…)")
    exclude = []
    if revs and ".." in revs[0]:  # git's `log A..B`: reachable from B, not from A
        a, b = split_range(revs[0])
        revs, exclude = [b], [a]
    with open_repo(args) as repo:
        if repo.head() is None and not revs and not (args.all and repo.refs()):
            if args.json:
                emit_json([])
            else:
                print("(no commits yet)")
            return 0
        names = history.decorations(repo, head=not args.json)
        commits = history.log(repo, revs, all_refs=args.all, first_parent=args.first_parent,
                              paths=paths, max_count=args.max_count, topo=args.graph, exclude=exclude)
        rows = (history.graph(commits, args.first_parent) if args.graph
                else (history.GraphRow(c, m, "", []) for c, m in commits))
        stat = None
        if args.stat:
            from ..pack import commit_storage as stat
        if args.json:
            out = []
            for r in rows:
                d = commit_dict(r.cid, r.commit, names.get(r.cid, []))
                if args.graph:
                    d["graph"] = [r.prefix.rstrip(), *r.after]
                if stat:
                    d["storage"] = stat(repo, r.cid)
                out.append(d)
            emit_json(out)
            return 0
        for row in rows:
            cid, com, g = row.cid, row.commit, row.prefix
            pad = g.replace("*", "|" if com.parents else " ")
            deco = f" ({', '.join(names[cid])})" if cid in names else ""
            if args.oneline:
                print(f"{g}{short_cid(cid)}{deco} {com.message.splitlines()[0] if com.message else ''}")
            else:
                _print_commit(cid, com, deco, g, pad)
            if stat:
                for line in storage_lines(stat(repo, cid), new_only=True):
                    print(f"{pad} {line}")
                if not args.oneline:
                    print(pad.rstrip())
            for line in row.after:
                print(line)
    return 0


def storage_lines(storage: dict, new_only: bool = False) -> list:
    """Lines describing :func:`tvcfs.pack.commit_storage` output: the bytes a commit
    added (raw, stored, ratio, encodings), then per file (``new_only``: files with new
    bytes only)."""
    encs = ", ".join(f"{n} {k}" for k, n in sorted(storage["encodings"].items()))
    lines = [f"stored: {storage['new_blocks']} new blocks, {human_size(storage['new_raw'])} raw, "
             f"{human_size(storage['new_stored'])} stored ({ratio(storage['new_stored'], storage['new_raw'])})"
             + (f"; {encs}" if encs else "")
             + f"; whole tree {human_size(storage['raw'])} raw, {human_size(storage['stored'])} stored"]
    for f in storage["files"]:
        if new_only and not f["new_raw"]:
            continue
        lines.append(f"  {f['new_raw']:>12} raw {f['new_stored']:>12} stored new  "
                     f"({f['raw']} raw, {f['stored']} stored in all)  {printable_name(f['path'])}")
    return lines


def _print_commit(cid, com, deco, g="", pad=""):
    """A commit as ``tvcfs log`` prints it; ``g``/``pad``: the graph drawn before the
    commit line and before the lines after it."""
    print(f"{g}commit {cid_str(cid)}{deco}")
    if len(com.parents) > 1:
        print(f"{pad}Merge: " + " ".join(short_cid(p) for p in com.parents))
    print(f"{pad}Author: {com.author_name} <{com.author_email}>")
    print(f"{pad}Date:   {commit_date(com.timestamp)}")
    if com.metadata:
        print(f"{pad}Meta:   {_meta_text(com.metadata)}")
    print(pad.rstrip())
    for line in (com.message or "").splitlines() or [""]:
        print(f"{pad}    {line}")
    print(pad.rstrip())


def _meta_text(metadata: dict) -> str:
    return json.dumps(metadata, default=lambda b: str(b) if type(b).__name__ == "CID" else cid_str(bytes(b)))


def _first_line(repo, cid) -> str:
    m = repo.read_commit(cid).message
    return m.splitlines()[0] if m else ""


def cmd_branch(args):
    """``tvcfs branch``: list, create (``NAME [START]``) or delete (``-d``) branches; exit
    status 0. Raises :class:`~tvcfs.errors.RefExists`,
    :class:`~tvcfs.errors.RevisionNotFound`..."""
    def rows(repo):
        head = repo.head_branch()
        return [{"name": name, "commit": cid, "head": name == head, "message": _first_line(repo, cid)}
                for name, cid in sorted(repo.branches().items())]

    return _ref_command(
        args, rows,
        create=lambda repo: repo.create_branch(args.name, args.start, force=args.force),
        delete=lambda repo, name: repo.delete_branch(name), existing=lambda repo: repo.branches(),
        created="Created branch {name} at {commit}", deleted="Deleted branch {name} (was {commit}).",
        moved="Reset branch {name} to {commit} (was {was})",
        line=lambda r: f"{'*' if r['head'] else ' '} {r['name']:<24} {short_cid(r['commit'])} {r['message']}")


def cmd_tag(args):
    """``tvcfs tag``: list, create (``NAME [REV]``) or delete (``-d``) tags; exit status 0.
    Raises :class:`~tvcfs.errors.RefExists`, :class:`~tvcfs.errors.RevisionNotFound`..."""
    return _ref_command(
        args, lambda repo: [{"name": name, "commit": cid} for name, cid in sorted(repo.tags().items())],
        create=lambda repo: repo.create_tag(args.name, args.rev, force=args.force),
        delete=lambda repo, name: repo.delete_tag(name), existing=lambda repo: repo.tags(),
        created="Tagged {commit} as {name}", deleted="Deleted tag {name} (was {commit})",
        moved="Updated tag {name} to {commit} (was {was})",
        line=lambda r: f"{r['name']:<24} {short_cid(r['commit'])}")


def _ref_command(args, rows, *, create, delete, existing, created: str, deleted: str, moved: str,
                 line) -> int:
    """The shape ``tvcfs branch`` and ``tvcfs tag`` share: delete each of
    ``args.delete`` (``delete(repo, name)`` → the commit it named), else create
    ``args.name`` (``create(repo)`` → its commit), else list ``rows(repo)`` (dicts
    with ``name`` and ``commit``, one ``line(row)`` each; with ``--list`` only those
    whose name matches the pattern ``args.name``); ``created``/``deleted``
    are the messages (``{name}``, ``{commit}``: the short CID), ``moved`` the one for
    ``-f`` of a name ``existing(repo)`` (``{name: commit}``) holds (``{was}``: its
    old commit); ``--json`` prints the records instead. Returns exit status 0."""
    with open_repo(args) as repo:
        if args.delete:
            done = []
            for name in args.delete:
                cid = delete(repo, name)
                done.append({"deleted": name, "commit": cid})
                if not args.json:
                    print(deleted.format(name=name, commit=short_cid(cid)))
            if args.json:
                emit_json(done)
            return 0
        if args.name and not args.list:
            was = existing(repo).get(args.name)
            cid = create(repo)
            if args.json:
                emit_json({"created": args.name, "commit": cid} if was is None else
                          {"moved": args.name, "commit": cid, "was": was})
            elif was is None:
                print(created.format(name=args.name, commit=short_cid(cid)))
            else:
                print(moved.format(name=args.name, commit=short_cid(cid), was=short_cid(was)))
            return 0
        listed = rows(repo)
        if args.name:  # --list PATTERN, as git's `tag -l 'v1.*'`
            import fnmatch

            listed = [r for r in listed if fnmatch.fnmatchcase(r["name"], args.name)]
        if args.json:
            emit_json(listed)
            return 0
        for r in listed:
            print(line(r))
    return 0


def _kind_char(e):
    from ..dag import KIND_DIR, KIND_SYMLINK

    return {KIND_DIR: "d", KIND_SYMLINK: "l"}.get(e.kind, "-")


def cmd_ls(args):
    """``tvcfs ls REV[:PATH]``: a directory's entries (mode, size in bytes, CID, name; ``-r``:
    every file below); exit status 0. Raises :class:`~tvcfs.errors.PathNotFound`,
    :class:`~tvcfs.errors.RevisionNotFound`."""
    from ..dag import KIND_DIR, KIND_SYMLINK

    with open_repo(args) as repo:
        commit, path, _ = revpath(repo, args.spec)
        if args.recursive:
            items = [(p, e) for p, e in repo.walk(commit, path) if e.kind != KIND_DIR]
            if args.json:
                emit_json([entry_dict(e, p) for p, e in items])
                return 0
            for p, e in items:
                print(f"{_kind_char(e)}{e.mode:04o} {e.size:>12} {cid_str(e.cid)}  {printable_name(p)}")
            return 0
        entries = repo.ls(commit, path)
        if args.json:
            emit_json([entry_dict(e) for e in entries])
            return 0
        for e in entries:
            suffix = "/" if e.kind == KIND_DIR else (f" -> {printable_name(e.target)}" if e.kind == KIND_SYMLINK
                                                     else "")
            size = "-" if e.kind == KIND_DIR else str(e.size)
            # names from elsewhere (a clone, a CAR): a newline or an escape never reaches the terminal raw
            print(f"{_kind_char(e)}{e.mode:04o} {size:>12} {cid_str(e.cid)}  {printable_name(e.name)}{suffix}")
    return 0


def cmd_cat(args):
    """``tvcfs cat REV:PATH`` or ``tvcfs cat CID``: a file's bytes to stdout; exit status 0.
    Raises :class:`~tvcfs.errors.TvcfsError` for another spec,
    :class:`~tvcfs.errors.PathNotFound` for a directory or missing path."""
    from ..dag import KIND_DIR

    with open_repo(args) as repo:
        if ":" not in args.spec:
            from ..encoding.cid import is_cid_str

            if is_cid_str(args.spec):
                it = repo.cat(args.spec)
            else:
                from ..errors import TvcfsError

                raise TvcfsError(f"cat needs REV:PATH or a file CID, got {args.spec!r} "
                                 "(e.g. tvcfs cat HEAD:config.json)")
        else:
            commit, path, e = revpath(repo, args.spec)
            if e.kind == KIND_DIR:
                from ..errors import TvcfsError

                raise TvcfsError(f"{printable_name(args.spec)} is a directory, not a file "
                                 f"(`tvcfs ls {printable_name(args.spec)}` lists what it holds)")
            it = repo.read_file(commit, path)
        out = sys.stdout.buffer
        for chunk in it:
            out.write(chunk)
        out.flush()
    return 0


def cmd_show(args):
    """``tvcfs show REV[:PATH]``: a commit (message, files, storage) or an entry (a file's
    tensors, a directory's listing); exit status 0. Raises
    :class:`~tvcfs.errors.RevisionNotFound`, :class:`~tvcfs.errors.PathNotFound`."""
    from ..dag import KIND_DIR, KIND_SYMLINK

    with open_repo(args) as repo:
        commit, path, e = revpath(repo, args.spec)
        if ":" not in args.spec:
            com = repo.read_commit(commit)
            from ..pack import commit_storage

            files = [(p, e) for p, e in repo.walk(commit, "") if e.kind != KIND_DIR]
            storage = commit_storage(repo, commit)
            if args.json:
                d = commit_dict(commit, com)
                d["files"] = [entry_dict(e, p) for p, e in files]
                d["storage"] = storage
                emit_json(d)
                return 0
            print(f"commit {cid_str(commit)}")
            for p in com.parents:
                print(f"parent {cid_str(p)}")
            print(f"tree   {cid_str(com.tree)}")
            print(f"Author: {com.author_name} <{com.author_email}>")
            print(f"Date:   {commit_date(com.timestamp)}")
            print()
            for line in (com.message or "").splitlines():
                print(f"    {line}")
            if com.metadata:
                print(f"    metadata: {_meta_text(com.metadata)}")
            print()
            for p, e in files:
                print(f"{e.size:>12}  {printable_name(p)}")
            print()
            for line in storage_lines(storage):
                print(line)
            return 0
        d = entry_dict(e, path)
        if e.kind == KIND_DIR:
            d["entries"] = [entry_dict(c) for c in repo.ls(commit, path)]
        elif e.kind != KIND_SYMLINK:
            from ..pack import tensor_storage

            d["leaves"] = len(repo.file_index(e.cid).leaves)
            stored = tensor_storage(repo, e.cid)
            none = {"raw": 0, "stored": 0, "encodings": {}}
            d["tensors"] = [{"name": n, "dtype": dt, "shape": list(sh), "bytes": nb, "first_leaf": fl,
                             "leaves": nl, "stored": stored.get(n, none)["stored"],
                             "encodings": stored.get(n, none)["encodings"]}
                            for n, dt, sh, nb, fl, nl in repo.tensors(e.cid)]
        if args.json:
            emit_json(d)
            return 0
        print(f"{printable_name(path)}: {e.kind}, {e.size} bytes, mode {e.mode:04o}, CID {cid_str(e.cid)}")
        if e.kind == KIND_DIR:
            for c in d["entries"]:
                print(f"  {printable_name(c['name'])}{'/' if c['kind'] == KIND_DIR else ''}")
            return 0
        if e.kind == KIND_SYMLINK:
            print(f"  -> {printable_name(e.target)}")
            return 0
        print(f"  {d['leaves']} leaves")
        rows = d["tensors"]
        if not rows:  # git's `show REV:PATH` prints the file: say which command does
            print(f"  (`tvcfs cat {args.spec}` writes its contents to stdout)")
        if rows:
            print(f"  {len(rows)} tensors:")
            print(f"  {'name':<56} {'dtype':<8} {'shape':<18} {'bytes':>12} {'leaves':>6} "
                  f"{'stored':>12} {'ratio':>5}  encoding")
            for t in rows:
                encs = ",".join(f"{k}" if len(t["encodings"]) == 1 else f"{k}:{n}"
                                for k, n in sorted(t["encodings"].items()))
                print(f"  {printable_name(t['name']):<56} {t['dtype']:<8} {str(t['shape']):<18} {t['bytes']:>12} "
                      f"{t['leaves']:>6} {t['stored']:>12} {ratio(t['stored'], t['bytes']):>5}  {encs}")
    return 0


def cmd_switch(args):
    """``tvcfs switch BRANCH`` / ``switch -c NEW [START]``: make a branch (created first
    with ``-c``) HEAD's branch, the default of ``commit``, ``log``, ``diff``, ``merge``
    and ``status``; exit status 0. Raises :class:`~tvcfs.errors.RevisionNotFound` for a
    branch that does not exist, :class:`~tvcfs.errors.RefExists` for ``-c`` of one that
    does."""
    from ..errors import TvcfsError

    if not (args.create or args.branch):
        raise TvcfsError("switch needs a BRANCH (tvcfs switch BRANCH), or -c NEW to create one")
    with open_repo(args) as repo:
        _switch(args, repo, args.create or args.branch, create=bool(args.create),
                start=args.branch if args.create else None)
    return 0


def _switch(args, repo, name: str, create: bool, start: str | None) -> None:
    """Point HEAD at branch ``name``, creating it at ``start`` (default HEAD) first if
    ``create``, and say so (``--json``: ``{"branch", "commit", "created"}``)."""
    from ..errors import RevisionNotFound

    if create:
        cid = repo.create_branch(name, start)
    else:
        cid = repo.branches().get(name)
        if cid is None and _resolves(repo, name):
            raise RevisionNotFound(f"{name}: not a branch: `tvcfs switch -c NEW {name}` starts a branch "
                                   f"there, `tvcfs checkout {name} DIR` writes it into DIR")
        if cid is None:
            raise RevisionNotFound(f"{name}: no such branch: `tvcfs branch` lists them, "
                                   f"`tvcfs switch -c {name}` creates one")
    repo.set_head(name)
    if args.json:
        emit_json({"branch": name, "commit": cid, "created": create})
    else:
        print(f"Switched to {'a new ' if create else ''}branch '{name}' ({short_cid(cid)})")


def cmd_reset(args):
    """``tvcfs reset [--soft|--hard] [REV]``: move HEAD's branch to REV (default HEAD),
    reflogged ``reset: moving to REV``; unless ``--soft`` also drop the staging index if
    it is staged for that branch (git's default, ``--mixed``; ``--hard`` is the same:
    a repository has no working tree, mounts show the branch's new commit and
    worktrees replay onto it at their next ``commit``). Exit status 0. Raises
    :class:`~tvcfs.errors.TvcfsError` when HEAD is detached,
    :class:`~tvcfs.errors.RevisionNotFound` for a bad REV."""
    from ..errors import TvcfsError
    from ..index import load_index, restore_staged

    rev = args.rev or "HEAD"
    with open_repo(args) as repo:
        branch = repo.head_branch()
        if branch is None:
            raise TvcfsError("HEAD is not on a branch: `tvcfs switch BRANCH` first, or move a branch "
                             "with `tvcfs branch -f NAME REV`")
        old = repo.branches().get(branch)
        cid = repo.create_branch(branch, rev, force=True, message=f"reset: moving to {rev}")
        index = load_index(repo)
        unstaged = not args.soft and index is not None and index.branch == branch
        if unstaged:
            restore_staged(repo)
        if args.json:
            emit_json({"branch": branch, "commit": cid, "was": old, "index_cleared": unstaged})
            return 0
        print(f"HEAD is now at {short_cid(cid)} {_first_line(repo, cid)} (branch {branch}"
              + (f", was {short_cid(old)})" if old else ")")
              + ("; the staged changes were dropped" if unstaged else ""))
    return 0


def _resolves(repo, rev: str) -> bool:
    from ..errors import TvcfsError

    try:
        repo.resolve(rev)
        return True
    except TvcfsError:
        return False


def cmd_checkout(args):
    """``tvcfs checkout REV[:PATH] DIR``: write the tree into a directory and print the bytes
    and seconds taken; exit status 0. Without DIR, git's habit: ``checkout BRANCH`` and
    ``checkout -b NEW [START]`` are ``tvcfs switch`` (``-b`` with DIR: the new branch is
    checked out there). Raises :class:`~tvcfs.errors.TvcfsError`, OSError."""
    from ..errors import TvcfsError

    with open_repo(args) as repo:
        if args.dir is None:
            if args.new_branch:
                _switch(args, repo, args.new_branch, create=True, start=args.rev)
            elif args.rev is None:
                raise TvcfsError("checkout needs REV DIR (materialise REV into DIR), or a BRANCH to switch to")
            else:
                _switch(args, repo, args.rev, create=False, start=None)
            return 0
        if args.new_branch:
            repo.create_branch(args.new_branch, args.rev)
            args.rev = args.new_branch
        commit, path, _ = revpath(repo, args.rev)
        branch = None if path else repo.branch_of(args.rev.partition(":")[0] or "HEAD")
        t0 = time.monotonic()
        with progress_bar(args, "Checking out") as bar:
            n = repo.checkout(commit, args.dir, path, branch=branch, progress=bar)
        dt = time.monotonic() - t0
        if args.json:
            emit_json({"commit": commit, "path": path, "dir": args.dir, "bytes": n, "branch": branch,
                       "seconds": round(dt, 3)})
            return 0
        print(f"checked out {short_cid(commit)}{':' + path if path else ''} into {args.dir} "
              f"({human_size(n)}, {dt:.2f} s)"
              + (f"; a worktree of branch {branch}" if branch else ""))
    return 0


def cmd_export(args):
    """``tvcfs export REV[:PATH] FILE``: write a CAR file (``-`` for stdout) and print its
    block count and root; exit status 0."""
    from ..fileio import atomic_output

    with open_repo(args) as repo:
        commit, path, e = revpath(repo, args.rev)
        root = e.cid if path else commit
        with progress_bar(args, "Exporting") as bar, atomic_output(args.file) as f:
            n = repo.export_car(commit, f, path, history=args.history, progress=bar)
        if args.json:
            emit_json({"file": args.file, "blocks": n, "root": root})
            return 0
        print(f"wrote {n} blocks to {args.file} (root {cid_str(root)})")
    return 0


def cmd_import(args):
    """``tvcfs import FILE``: read a CAR file (verified) into the store, optionally setting
    ``--branch``; exit status 0. Raises :class:`~tvcfs.errors.CorruptBlock`,
    :class:`~tvcfs.errors.MalformedObject`."""
    from ..fileio import open_input

    with open_repo(args) as repo:
        with open_input(args.file) as f, progress_bar(args, "Importing") as bar:
            roots, n = repo.import_car(f, branch=args.branch, progress=bar, force=args.force)
        if args.json:
            emit_json({"file": args.file, "new_blocks": n, "roots": roots, "branch": args.branch})
            return 0
        print(f"imported {n} new blocks; roots: {' '.join(cid_str(r) for r in roots)}")
    return 0


def cmd_reflog(args):
    """``tvcfs reflog [REF]``: the ref changes, newest first; exit status 0."""
    from ..history import reflog_newest_first

    with open_repo(args) as repo:
        entries = reflog_newest_first(repo, args.ref)
        if args.json:
            emit_json(entries)
            return 0
        for e in entries:
            rejected = " [rejected]" if e.get("rejected") else ""
            print(f"{clock(e['time'])} {e['ref']:<28} {short_cid(e['new'], none='(deleted)'):<16}{rejected} "
                  f"{e['message']}")
    return 0


def run_pack(args, repo) -> dict:
    """Run :func:`tvcfs.pack.pack` for ``tvcfs pack`` / ``tvcfs gc --pack`` (``--keep-hot``,
    ``--hot``) with a progress bar; returns its result as a dict."""
    from ..pack import pack

    hot = [repo.resolve(r) for r in getattr(args, "hot", None) or []]
    with progress_bar(args, "Packing") as bar:
        return pack(repo, keep_hot=args.keep_hot, progress=bar, hot=hot).as_dict()


def pack_summary(r: dict) -> str:
    """One line about a pack run (:func:`run_pack`)."""
    return (f"packed {r['packed']} blocks ({r['deltas']} as deltas): {human_size(r['raw_bytes'])} raw -> "
            f"{human_size(r['stored_bytes'])} stored ({ratio(r['stored_bytes'], r['raw_bytes'])}); "
            f"{r['kept_raw']} kept raw (no gain), {r['unpacked']} hot again unpacked; "
            f"{r['hot_commits']} of {r['commits']} commits kept hot (--keep-hot {r['keep_hot']}); "
            f"{human_size(r['saved'])} saved")


def cmd_pack(args):
    """``tvcfs pack``: delta-encode older history (:func:`run_pack`) and print the summary;
    exit status 0."""
    with open_repo(args) as repo:
        r = run_pack(args, repo)
        if args.json:
            emit_json(r)
            return 0
        print(pack_summary(r))
    return 0


def cmd_pin(args):
    """``tvcfs pin add|rm|ls``: pin CIDs (kept by gc), unpin them, or list the pins; exit
    status 0."""
    with open_repo(args) as repo:
        if args.action == "add":
            for c in args.cids:
                repo.pin(c)
                if not args.json:
                    print(f"pinned {c}")
        elif args.action == "rm":
            for c in args.cids:
                ok = repo.unpin(c)
                if not args.json:
                    print(("unpinned " if ok else "not pinned: ") + c)
        else:
            pins = repo.pin_db.all()
            if args.json:
                emit_json([{"cid": c, **info} for c, info in pins.items()])
                return 0
            for c, info in pins.items():
                print(f"{cid_str(c)} {info.get('name', '')}")
            return 0
        if args.json:
            emit_json({"action": args.action, "cids": args.cids})
    return 0


def add_keep_hot(p) -> None:
    """The ``--keep-hot N`` option of ``pack`` and ``gc --pack``."""
    p.add_argument("--keep-hot", type=int, metavar="N", help="newest commits of each branch and tag "
                   "kept raw, read at full speed by mounts (default: the pack.keep_hot setting, 1); "
                   "0 packs everything")
    p.add_argument("--hot", action="append", metavar="REV", help="also keep REV's blocks raw "
                   "(repeatable; e.g. the base model its fine-tunes are deltas against)")


def register(sub) -> None:
    """Add the core commands to the ``tvcfs`` parser's subparsers."""
    p = sub.add_parser("init", help="create a repository")
    p.add_argument("path", nargs="?", help="directory (default: --repo or the current directory)")
    p.add_argument("-b", "--initial-branch", default="main", help="name of the first branch (default main)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("commit", help="commit a directory onto a branch (a checkout's changes are "
                       "replayed if the branch moved; other directories are snapshots), or "
                       "without DIR the staged index (tvcfs add)")
    p.add_argument("dir", nargs="?", help="directory to commit (default: commit what `tvcfs add` staged)")
    p.add_argument("-b", "--branch", help="branch (default: the checkout's branch, else HEAD's; "
                   "a new branch starts at the directory's base, else at HEAD)")
    p.add_argument("--base", metavar="REV", help="the commit DIR was made from: if the branch moved "
                   "since, DIR's changes are replayed onto it (or saved on a conflicts/ branch)")
    p.add_argument("-m", "--message", default="", help="commit message (default: empty)")
    p.add_argument("--author", help='"Name <email>" (default: TVCFS_AUTHOR_NAME/EMAIL, then git config)')
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="commit metadata (repeatable); integers and decimal numbers (lr=3e-5) "
                        "are stored as numbers, true/false as booleans, anything else as text")
    p.add_argument("--allow-empty", action="store_true", help="commit even if nothing changed")
    p.add_argument("--delta-base", metavar="REV", help="the model this one was fine-tuned from: "
                   "recorded in the commit's metadata (delta_base); tvcfs pack stores its tensors "
                   "as deltas against REV's")
    p.set_defaults(func=cmd_commit)

    p = sub.add_parser("log", help="show commit history",
                       usage="tvcfs log [options] [REV] [-- PATH ...]")
    p.add_argument("rev", nargs="?", metavar="REV")
    p.add_argument("paths", nargs="*", metavar="PATH", help="after --: only commits changing these paths")
    p.add_argument("-n", "--max-count", type=int, metavar="N", help="at most N commits (-N too, as in git: -3)")
    p.add_argument("--oneline", action="store_true", help="one line per commit: short CID, refs, subject")
    p.add_argument("--first-parent", action="store_true", help="follow only the first parent of merges")
    p.add_argument("--all", action="store_true", help="every branch, tag and remote-tracking ref")
    p.add_argument("--graph", action="store_true", help="draw the history as a graph (topological order)")
    p.add_argument("--stat", action="store_true", help="bytes each commit added to the store, raw and "
                   "as stored (packed), per file")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("branch", help="list, create or delete branches")
    p.add_argument("name", nargs="?", help="branch to create (with --list: a pattern such as 'ft-*')")
    p.add_argument("start", nargs="?", help="start revision (default HEAD)")
    p.add_argument("-d", "-D", "--delete", nargs="+", metavar="NAME", help="delete these branches (not HEAD's)")
    p.add_argument("-f", "--force", action="store_true", help="move NAME to START if it exists")
    p.add_argument("-l", "--list", action="store_true", help="list (only names matching the pattern NAME)")
    p.set_defaults(func=cmd_branch)

    p = sub.add_parser("tag", help="list, create or delete tags")
    p.add_argument("name", nargs="?", help="tag to create (with --list: a pattern such as 'v1.*')")
    p.add_argument("rev", nargs="?", help="revision (default HEAD)")
    p.add_argument("-d", "--delete", nargs="+", metavar="NAME", help="delete these tags")
    p.add_argument("-f", "--force", action="store_true", help="move NAME to REV if it exists")
    p.add_argument("-l", "--list", action="store_true", help="list (only names matching the pattern NAME)")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("show", help="show a commit, or a path in it (REV[:PATH]); tensors of safetensors files")
    p.add_argument("spec", nargs="?", default="HEAD", metavar="REV[:PATH]")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("ls", help="list a directory of a revision (REV[:PATH])")
    p.add_argument("spec", nargs="?", default="HEAD", metavar="REV[:PATH]")
    p.add_argument("-r", "--recursive", action="store_true", help="every file below, with its path")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cat", help="write a file of a revision (REV:PATH) or a file CID to stdout")
    p.add_argument("spec", metavar="REV:PATH|CID")
    add_no_verify(p)
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("checkout", help="materialise a revision into a plain directory (a worktree: "
                       "the repository remembers its base for `commit`)")
    p.add_argument("rev", nargs="?", metavar="REV[:PATH]")
    p.add_argument("dir", nargs="?", help="directory to write (without it: switch to the branch REV, "
                   "as tvcfs switch)")
    p.add_argument("-b", dest="new_branch", metavar="NEW", help="create branch NEW at REV (default HEAD) "
                   "first; without DIR also switch to it")
    add_no_verify(p)
    p.set_defaults(func=cmd_checkout)

    p = sub.add_parser("reset", help="move HEAD's branch to a revision (and unstage, unless --soft)")
    p.add_argument("rev", nargs="?", metavar="REV", help="revision (default HEAD: only unstage)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--soft", action="store_true", help="keep the staging index")
    mode.add_argument("--hard", "--mixed", action="store_true", help="also drop the staging index (the "
                      "default: there is no working tree to reset; mounts show the new commit)")
    p.set_defaults(func=cmd_reset)

    p = sub.add_parser("switch", help="make a branch the current one (HEAD's), creating it with -c")
    p.add_argument("branch", nargs="?", metavar="BRANCH", help="branch (with -c: the start revision, default HEAD)")
    p.add_argument("-c", "--create", metavar="NEW", help="create branch NEW first")
    p.set_defaults(func=cmd_switch)

    p = sub.add_parser("export", help="export a revision as a CAR v1 file")
    p.add_argument("rev", metavar="REV[:PATH]")
    p.add_argument("file")
    p.add_argument("--history", action="store_true", help="include every ancestor commit")
    add_no_verify(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="import the blocks of a CAR v1 file")
    p.add_argument("file")
    p.add_argument("-b", "--branch", help="point this branch at the CAR's root commit")
    p.add_argument("-f", "--force", action="store_true",
                   help="with -b: move the branch even when the root does not descend from it")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("reflog", help="show ref changes, newest first")
    p.add_argument("ref", nargs="?")
    p.set_defaults(func=cmd_reflog)

    p = sub.add_parser("pack", help="store older history packed (byte-grouped zstd, tensor deltas "
                       "against the same tensor in a neighbouring commit); the newest commits stay raw")
    add_keep_hot(p)
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("pin", help="pin DAG roots against garbage collection")
    p.add_argument("action", choices=("add", "rm", "ls"))
    p.add_argument("cids", nargs="*")
    p.set_defaults(func=cmd_pin)
