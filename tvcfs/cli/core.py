"""Core repository commands: init, commit, log, branch, tag, show, ls, cat, checkout,
export, import, reflog, pin."""

from __future__ import annotations

import json
import os
import sys
import time

from . import add_no_verify, open_repo
from ..dag import KIND_DIR, KIND_SYMLINK
from ..encoding.cid import cid_str


def fmt_bytes(n: float) -> str:
    """Human-readable size: ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def short(cid: bytes) -> str:
    """Abbreviated CID string (the first 16 characters: unique in practice and
    accepted back as a revision prefix)."""
    return cid_str(cid)[:16]


def _author(args):
    from ..repo import Author

    return Author.parse(args.author) if getattr(args, "author", None) else None


def cmd_init(args):
    from ..repo import Repo

    path = args.path or args.repo or "."
    existed = os.path.isdir(os.path.join(path, ".tvcfs"))
    with Repo.init(path, default_branch=args.initial_branch) as repo:
        word = "Reinitialized existing" if existed else "Initialized empty"
        print(f"{word} tvcfs repository in {repo.control}")
    return 0


def cmd_commit(args):
    t0 = time.monotonic()
    with open_repo(args) as repo:
        kw = {"base": repo.resolve(args.base)} if args.base else {}
        res = repo.commit_dir(args.dir, branch=args.branch, message=args.message or "",
                              author=_author(args), allow_empty=args.allow_empty, **kw)
        dt = time.monotonic() - t0
        if not res.changed:
            print(f"nothing to commit: {args.dir} matches {res.branch} ({res.files} files, "
                  f"{fmt_bytes(res.bytes)})")
            return 0
        print(f"[{res.branch} {cid_str(res.cid)}] {args.message or ''}".rstrip())
        if res.replayed:
            print(f" {res.branch} had changes {args.dir} does not show (its base: {short(res.base)}): "
                  f"its changes were replayed onto {short(res.head)}; check out again to see them all")
        print(f" {res.files} files, {fmt_bytes(res.bytes)} scanned, {fmt_bytes(res.new_bytes)} new "
              f"in {res.new_blocks} blocks ({res.new_bytes} bytes), {dt:.2f} s")
    return 0


def cmd_log(args):
    with open_repo(args) as repo:
        if repo.head() is None and not args.rev:
            print("(no commits yet)")
            return 0
        names = {}
        for name, cid in repo.branches().items():
            names.setdefault(cid, []).append(name)
        for name, cid in repo.tags().items():
            names.setdefault(cid, []).append(f"tag: {name}")
        for cid, com in repo.log(args.rev, max_count=args.max_count, first_parent=args.first_parent):
            deco = f" ({', '.join(names[cid])})" if cid in names else ""
            if args.oneline:
                print(f"{short(cid)}{deco} {com.message.splitlines()[0] if com.message else ''}")
                continue
            print(f"commit {cid_str(cid)}{deco}")
            if len(com.parents) > 1:
                print("Merge: " + " ".join(short(p) for p in com.parents))
            print(f"Author: {com.author_name} <{com.author_email}>")
            print(f"Date:   {time.strftime('%a %b %d %H:%M:%S %Y %z', time.localtime(com.timestamp))}")
            print()
            for line in (com.message or "").splitlines() or [""]:
                print(f"    {line}")
            print()
    return 0


def cmd_branch(args):
    with open_repo(args) as repo:
        if args.delete:
            for name in args.delete:
                cid = repo.delete_branch(name)
                print(f"Deleted branch {name} (was {short(cid)}).")
            return 0
        if args.name:
            cid = repo.create_branch(args.name, args.start, force=args.force)
            print(f"Created branch {args.name} at {short(cid)}")
            return 0
        head = repo.head_branch()
        for name, cid in sorted(repo.branches().items()):
            mark = "*" if name == head else " "
            print(f"{mark} {name:<24} {short(cid)} {repo.read_commit(cid).message.splitlines()[0] if repo.read_commit(cid).message else ''}")
    return 0


def cmd_tag(args):
    with open_repo(args) as repo:
        if args.delete:
            for name in args.delete:
                cid = repo.delete_tag(name)
                print(f"Deleted tag {name} (was {short(cid)})")
            return 0
        if args.name:
            cid = repo.create_tag(args.name, args.rev, force=args.force)
            print(f"Tagged {short(cid)} as {args.name}")
            return 0
        for name, cid in sorted(repo.tags().items()):
            print(f"{name:<24} {short(cid)}")
    return 0


def _kind_char(e):
    return {KIND_DIR: "d", KIND_SYMLINK: "l"}.get(e.kind, "-")


def cmd_ls(args):
    with open_repo(args) as repo:
        commit, path = repo.split_revpath(args.spec)
        if args.recursive:
            for p, e in repo.walk(commit, path):
                if e.kind == KIND_DIR:
                    continue
                print(f"{_kind_char(e)}{e.mode:04o} {e.size:>12} {cid_str(e.cid)}  {p}")
            return 0
        for e in repo.ls(commit, path):
            suffix = "/" if e.kind == KIND_DIR else (f" -> {e.target}" if e.kind == KIND_SYMLINK else "")
            size = "-" if e.kind == KIND_DIR else str(e.size)
            print(f"{_kind_char(e)}{e.mode:04o} {size:>12} {cid_str(e.cid)}  {e.name}{suffix}")
    return 0


def cmd_cat(args):
    with open_repo(args) as repo:
        if ":" not in args.spec:
            from ..encoding.cid import is_cid_str

            if is_cid_str(args.spec):
                it = repo.cat(args.spec)
            else:
                from ..errors import TvcfsError

                raise TvcfsError(f"cat needs REV:PATH or a file CID, got {args.spec!r}")
        else:
            commit, path = repo.split_revpath(args.spec)
            it = repo.read_file(commit, path)
        out = sys.stdout.buffer
        for chunk in it:
            out.write(chunk)
        out.flush()
    return 0


def tensor_table(repo, cid: bytes) -> list:
    """Rows ``(name, dtype, shape, bytes, first leaf index, leaves)`` of a safetensors
    file ``cid`` from its header leaves (reads no tensor data); ``[]`` if not one."""
    from ..chunking.safetensors import NotSafetensors, read_header_with

    idx = repo.file_index(cid)
    try:
        hdr = read_header_with(lambda offset, length: idx.read(repo.get, offset, length), idx.size)
    except NotSafetensors:
        return []
    rows = []
    for t in hdr.tensors:
        lr = idx.leaf_range(t.start, t.nbytes)
        rows.append((t.name, t.dtype, t.shape, t.nbytes, lr.start if lr else None, len(lr)))
    return rows


def cmd_show(args):
    with open_repo(args) as repo:
        commit, path = repo.split_revpath(args.spec)
        if ":" not in args.spec:
            com = repo.read_commit(commit)
            print(f"commit {cid_str(commit)}")
            for p in com.parents:
                print(f"parent {cid_str(p)}")
            print(f"tree   {cid_str(com.tree)}")
            print(f"Author: {com.author_name} <{com.author_email}>")
            print(f"Date:   {time.strftime('%a %b %d %H:%M:%S %Y %z', time.localtime(com.timestamp))}")
            print()
            for line in (com.message or "").splitlines():
                print(f"    {line}")
            if com.metadata:
                print(f"    metadata: {json.dumps(com.metadata, default=lambda b: cid_str(bytes(b)))}")
            print()
            for p, e in repo.walk(commit, ""):
                if e.kind != KIND_DIR:
                    print(f"{e.size:>12}  {p}")
            return 0
        e = repo.entry(commit, path)
        print(f"{path}: {e.kind}, {e.size} bytes, mode {e.mode:04o}, CID {cid_str(e.cid)}")
        if e.kind == KIND_DIR:
            for c in repo.ls(commit, path):
                print(f"  {c.name}{'/' if c.kind == KIND_DIR else ''}")
            return 0
        if e.kind == KIND_SYMLINK:
            print(f"  -> {e.target}")
            return 0
        idx = repo.file_index(e.cid)
        print(f"  {len(idx.leaves)} leaves")
        rows = tensor_table(repo, e.cid)
        if rows:
            print(f"  {len(rows)} tensors:")
            print(f"  {'name':<56} {'dtype':<8} {'shape':<18} {'bytes':>12} {'leaves':>6}")
            for name, dtype, shape, nbytes, _, nleaves in rows:
                print(f"  {name:<56} {dtype:<8} {str(list(shape)):<18} {nbytes:>12} {nleaves:>6}")
    return 0


def cmd_checkout(args):
    with open_repo(args) as repo:
        commit, path = repo.split_revpath(args.rev)
        branch = None if path else repo.branch_of(args.rev.partition(":")[0] or "HEAD")
        t0 = time.monotonic()
        n = repo.checkout(commit, args.dir, path, branch=branch)
        print(f"checked out {short(commit)}{':' + path if path else ''} into {args.dir} "
              f"({fmt_bytes(n)}, {time.monotonic() - t0:.2f} s)"
              + (f"; a worktree of branch {branch}" if branch else ""))
    return 0


def cmd_export(args):
    with open_repo(args) as repo:
        commit, path = repo.split_revpath(args.rev)
        tmp = args.file + ".tmp"
        try:
            with open(tmp, "wb") as f:
                n = repo.export_car(commit, f, path, history=args.history)
        except BaseException:
            os.unlink(tmp)  # a damaged block or a full disk: no partial CAR left behind
            raise
        os.replace(tmp, args.file)
        print(f"wrote {n} blocks to {args.file} (root {cid_str(repo.entry(commit, path).cid) if path else cid_str(commit)})")
    return 0


def cmd_import(args):
    with open_repo(args) as repo:
        with open(args.file, "rb") as f:
            roots, n = repo.import_car(f, branch=args.branch)
        print(f"imported {n} new blocks; roots: {' '.join(cid_str(r) for r in roots)}")
    return 0


def cmd_reflog(args):
    with open_repo(args) as repo:
        for e in repo.reflog(args.ref):
            t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
            rej = " [rejected]" if e.get("rejected") else ""
            new = (e["new"] or "(deleted)")[:16]
            print(f"{t} {e['ref']:<28} {new:<16}{rej} {e['message']}")
    return 0


def cmd_pin(args):
    with open_repo(args) as repo:
        if args.action == "add":
            for c in args.cids:
                repo.pin(c)
                print(f"pinned {c}")
        elif args.action == "rm":
            for c in args.cids:
                print(("unpinned " if repo.unpin(c) else "not pinned: ") + c)
        else:
            for c, info in repo.pin_db.all().items():
                print(f"{cid_str(c)} {info.get('name', '')}")
    return 0


def register(sub) -> None:
    """Add the core commands to the ``tvcfs`` parser's subparsers."""
    p = sub.add_parser("init", help="create a repository")
    p.add_argument("path", nargs="?", help="directory (default: --repo or the current directory)")
    p.add_argument("-b", "--initial-branch", default="main")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("commit", help="commit a directory onto a branch (a checkout's changes are "
                       "replayed if the branch moved; other directories are snapshots)")
    p.add_argument("dir", help="directory to commit")
    p.add_argument("-b", "--branch", help="branch (default: the checkout's branch, else HEAD's; "
                   "a new branch starts at the directory's base, else at HEAD)")
    p.add_argument("--base", metavar="REV", help="the commit DIR was made from: if the branch moved "
                   "since, DIR's changes are replayed onto it (or saved on a conflicts/ branch)")
    p.add_argument("-m", "--message", default="")
    p.add_argument("--author", help='"Name <email>" (default: TVCFS_AUTHOR_NAME/EMAIL, then git config)')
    p.add_argument("--allow-empty", action="store_true", help="commit even if nothing changed")
    p.set_defaults(func=cmd_commit)

    p = sub.add_parser("log", help="show commit history")
    p.add_argument("rev", nargs="?")
    p.add_argument("-n", "--max-count", type=int)
    p.add_argument("--oneline", action="store_true")
    p.add_argument("--first-parent", action="store_true")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("branch", help="list, create or delete branches")
    p.add_argument("name", nargs="?")
    p.add_argument("start", nargs="?", help="start revision (default HEAD)")
    p.add_argument("-d", "--delete", nargs="+", metavar="NAME")
    p.add_argument("-f", "--force", action="store_true")
    p.set_defaults(func=cmd_branch)

    p = sub.add_parser("tag", help="list, create or delete tags")
    p.add_argument("name", nargs="?")
    p.add_argument("rev", nargs="?", help="revision (default HEAD)")
    p.add_argument("-d", "--delete", nargs="+", metavar="NAME")
    p.add_argument("-f", "--force", action="store_true")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("show", help="show a commit, or a path in it (REV[:PATH]); tensors of safetensors files")
    p.add_argument("spec", nargs="?", default="HEAD", metavar="REV[:PATH]")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("ls", help="list a directory of a revision (REV[:PATH])")
    p.add_argument("spec", nargs="?", default="HEAD", metavar="REV[:PATH]")
    p.add_argument("-r", "--recursive", action="store_true")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cat", help="write a file of a revision (REV:PATH) or a file CID to stdout")
    p.add_argument("spec", metavar="REV:PATH|CID")
    add_no_verify(p)
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("checkout", help="materialise a revision into a plain directory (a worktree: "
                       "the repository remembers its base for `commit`)")
    p.add_argument("rev", metavar="REV[:PATH]")
    p.add_argument("dir")
    add_no_verify(p)
    p.set_defaults(func=cmd_checkout)

    p = sub.add_parser("export", help="export a revision as a CAR v1 file")
    p.add_argument("rev", metavar="REV[:PATH]")
    p.add_argument("file")
    p.add_argument("--history", action="store_true", help="include every ancestor commit")
    add_no_verify(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="import the blocks of a CAR v1 file")
    p.add_argument("file")
    p.add_argument("-b", "--branch", help="point this branch at the CAR's root commit")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("reflog", help="show ref changes")
    p.add_argument("ref", nargs="?")
    p.set_defaults(func=cmd_reflog)

    p = sub.add_parser("pin", help="pin DAG roots against garbage collection")
    p.add_argument("action", choices=("add", "rm", "ls"))
    p.add_argument("cids", nargs="*")
    p.set_defaults(func=cmd_pin)
