"""Mount commands: mount, unmount, prefetch."""

from __future__ import annotations

import os
import sys

from ..errors import TvcfsError


def cmd_mount(args):
    from ..fs.daemon import is_mounted, run_foreground, start_background
    from ..repo import Repo, find_repo_root

    repo_root = find_repo_root(args.source) if os.path.isdir(args.source) else None
    if repo_root is None:
        raise TvcfsError(f"not a tvcfs repository: {args.source}")
    if not os.path.isdir(args.mountpoint):
        raise TvcfsError(f"mount point {args.mountpoint} is not a directory")
    if is_mounted(args.mountpoint):
        raise TvcfsError(f"{args.mountpoint} is already mounted")
    extra = {"commit_delay": args.commit_delay}
    if args.foreground:
        return run_foreground(repo_root, args.mountpoint, debug=args.debug, verify_reads=args.verify_reads,
                              allow_other=args.allow_other, **extra)
    argv = [sys.executable, "-m", "tvcfs.cli", "mount", "-f", repo_root, os.path.abspath(args.mountpoint),
            "--commit-delay", str(args.commit_delay)]
    if args.debug:
        argv.append("--debug")
    if args.verify_reads:
        argv.append("--verify-reads")
    if args.allow_other:
        argv.append("--allow-other")
    try:
        pid = start_background(argv, os.path.join(repo_root, ".tvcfs"), args.mountpoint)
    except RuntimeError as e:
        raise TvcfsError(str(e)) from None
    print(f"mounted {repo_root} on {args.mountpoint} (pid {pid})")
    return 0


def cmd_unmount(args):
    from ..fs.daemon import unmount

    try:
        unmount(args.mountpoint, lazy=args.lazy)
    except RuntimeError as e:
        raise TvcfsError(str(e)) from None
    return 0


def cmd_prefetch(args):
    """Read files through the mount at the lowest priority so later reads are local /
    in the page cache: ``posix_fadvise(WILLNEED)`` on each file (the kernel reads
    ahead through the mount), then a background read pass with ``--wait``."""
    total = 0
    files = []
    for p in args.paths:
        if os.path.isdir(p):
            for dirpath, _, names in os.walk(p):
                files += [os.path.join(dirpath, n) for n in names]
        else:
            files.append(p)
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError as e:
            print(f"tvcfs: prefetch: {f}: {e.strerror}", file=sys.stderr)
            continue
        try:
            size = os.fstat(fd).st_size
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
            if args.wait:
                os.posix_fadvise(fd, 0, size, os.POSIX_FADV_SEQUENTIAL)
                while os.read(fd, 1 << 20):
                    pass
            total += size
        finally:
            os.close(fd)
    print(f"prefetch scheduled for {len(files)} files, {total} bytes")
    return 0


def register(sub) -> None:
    p = sub.add_parser("mount", help="mount a repository (branches/, tags/, commits/)")
    p.add_argument("source", metavar="REPO")
    p.add_argument("mountpoint")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--debug", action="store_true", help="log every request (implies verbose log)")
    p.add_argument("--verify-reads", action="store_true", help="hash every leaf on first read")
    p.add_argument("--allow-other", action="store_true", help="let other users access the mount")
    p.add_argument("--commit-delay", type=float, default=1.0,
                   help="seconds of quiet after the last write handle closes before a commit (default 1)")
    p.add_argument("-o", dest="options", action="append", default=[], help=argparse_suppress())
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("unmount", aliases=["umount"], help="unmount (waits for pending commits)")
    p.add_argument("mountpoint")
    p.add_argument("-z", "--lazy", action="store_true")
    p.set_defaults(func=cmd_unmount)

    p = sub.add_parser("prefetch", help="load files or trees of a mount in the background")
    p.add_argument("paths", nargs="+")
    p.add_argument("--wait", action="store_true", help="read everything now, then return")
    p.set_defaults(func=cmd_prefetch)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS
