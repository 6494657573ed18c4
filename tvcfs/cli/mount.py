"""Mount commands: mount, unmount, prefetch."""

from __future__ import annotations

import os
import sys

from . import add_no_verify
from ..errors import TvcfsError


def cmd_mount(args):
    from ..fs.daemon import is_mounted, run_foreground, start_background
    from ..repo import find_repo_root

    is_url = "://" in args.source
    is_s3 = args.source.startswith("s3://")
    repo_root = find_repo_root(args.source) if os.path.isdir(args.source) else None
    if repo_root is None and not is_url:
        raise TvcfsError(f"not a tvcfs repository: {args.source}")
    if not os.path.isdir(args.mountpoint):
        raise TvcfsError(f"mount point {args.mountpoint} is not a directory")
    if is_mounted(args.mountpoint):
        raise TvcfsError(f"{args.mountpoint} is already mounted")
    if is_s3:
        # mount s3://BUCKET/PREFIX MNT: a lazy clone in the cache, leaves from the bucket
        from ..fs.s3source import prepare_s3_mount

        repo_root = prepare_s3_mount(args.source, quiet=getattr(args, "quiet", False))
    elif is_url:
        # mount URL MNT: a lazy clone in the cache (made or refreshed), leaves on demand
        from ..sync import prepare_url_mount

        repo_root = prepare_url_mount(args.source, quiet=False)
    extra = {"commit_delay": args.commit_delay}
    # lazy mounts (tvcfs.fs.lazy): extra peers, read timeout, background prefetch
    if args.remote:
        extra["remotes"] = list(args.remote)
    if args.fetch_timeout is not None:
        extra["fetch_timeout"] = args.fetch_timeout
    if args.prefetch:
        extra["prefetch"] = list(args.prefetch)
    if args.read_ahead_kb is not None:
        extra["read_ahead_kb"] = args.read_ahead_kb
    if args.cache_size is not None:
        extra["cache_size"] = args.cache_size
    if args.foreground:
        # This process is the mount daemon and does no linear algebra; numpy comes in
        # for buffer addresses, and OpenBLAS's thread pool would then spin a core
        # (~0.1 CPU-s per GiB read, measured) that the program loading the model needs.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        return run_foreground(repo_root, args.mountpoint, debug=args.debug, verify=not args.no_verify,
                              allow_other=args.allow_other, syslog=args.syslog, **extra)
    argv = [sys.executable, "-m", "tvcfs.cli", "mount", "-f", repo_root, os.path.abspath(args.mountpoint),
            "--commit-delay", str(args.commit_delay), "--syslog"]
    if args.debug:
        argv.append("--debug")
    if args.verify_reads:
        argv.append("--verify-reads")
    if args.no_verify:
        argv.append("--no-verify")
    if args.allow_other:
        argv.append("--allow-other")
    for url in args.remote or ():
        argv += ["--remote", url]
    if args.fetch_timeout is not None:
        argv += ["--fetch-timeout", str(args.fetch_timeout)]
    for pat in args.prefetch or ():
        argv += ["--prefetch", pat]
    if args.read_ahead_kb is not None:
        argv += ["--read-ahead-kb", str(args.read_ahead_kb)]
    if args.cache_size is not None:
        argv += ["--cache-size", str(args.cache_size)]
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


def _mount_of(path: str):
    """``(mountpoint, relative path)`` if ``path`` lies in a tvcfs mount, else None."""
    from ..fs.daemon import find_tvcfs_mount

    m = find_tvcfs_mount(path)
    return (m[1], m[2]) if m else None


def cmd_prefetch(args):
    """Load files or trees of a mount at the lowest priority: the path is written to
    ``MOUNT/.tvcfs/prefetch`` (the mount schedules every leaf below it, local leaves
    through the kernel's readahead, remote ones at background priority). ``--wait``
    then reads everything, so it is local when the command returns."""
    total = 0
    for p in args.paths:
        m = _mount_of(p)
        if m is None:
            raise TvcfsError(f"{p} is not inside a tvcfs mount")
        with open(os.path.join(m[0], ".tvcfs", "prefetch"), "w") as f:
            f.write(("" if m[1] == "." else m[1]) + "\n")
        if args.wait:
            files = [p] if not os.path.isdir(p) else [os.path.join(d, n) for d, _, ns in os.walk(p) for n in ns]
            for fp in files:
                if os.path.islink(fp):
                    continue
                with open(fp, "rb", buffering=0) as f:
                    while True:
                        chunk = f.read(1 << 20)
                        if not chunk:
                            break
                        total += len(chunk)
    print(f"prefetch scheduled for {len(args.paths)} path(s)" + (f"; {total} bytes read" if args.wait else ""))
    return 0


def register(sub) -> None:
    p = sub.add_parser("mount", help="mount a repository (branches/, tags/, commits/)")
    p.add_argument("source", metavar="REPO", help="repository path, or a tvcfs:// or s3://BUCKET/PREFIX "
                   "URL (lazy: a cache repository under ~/.cache/tvcfs, leaves fetched on demand)")
    p.add_argument("mountpoint")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--debug", action="store_true", help="log every request (implies verbose log)")
    p.add_argument("--verify-reads", action="store_true",
                   help="accepted for compatibility: reads are verified by default")
    add_no_verify(p)
    p.add_argument("--allow-other", action="store_true", help="let other users access the mount")
    p.add_argument("--commit-delay", type=float, default=1.0,
                   help="seconds of quiet after the last write handle closes before a commit (default 1)")
    p.add_argument("--read-ahead-kb", type=int, default=None, metavar="KB",
                   help="the kernel's readahead on the mount, KiB (default 1024: 1 MiB requests for "
                        "sequential reads; a lazy mount 128). Smaller moves fewer bytes around an "
                        "mmap fault (loading single tensors), larger requests need more")
    p.add_argument("-o", dest="options", action="append", default=[], help=argparse_suppress())
    # set by the background start: log to the system log too (nobody watches its stderr)
    p.add_argument("--syslog", action="store_true", help=argparse_suppress())
    p.add_argument("--remote", action="append", default=[], metavar="URL",
                   help="peer to fetch missing leaves from (repeatable; a lazy clone also "
                        "uses its remotes)")
    p.add_argument("--fetch-timeout", type=float, default=None, metavar="SECONDS",
                   help="a read whose blocks no peer delivers in this time fails with EIO "
                        "(default 30)")
    p.add_argument("--prefetch", action="append", default=[], metavar="PATTERN",
                   help="fetch files of HEAD matching this glob in the background, lowest "
                        "priority (repeatable; @FILE: paths in the order to fetch them)")
    p.add_argument("--cache-size", type=_size, default=None, metavar="BYTES",
                   help="s3:// lazy mounts: keep at most this many bytes of file leaves in the local "
                        "store (K, M, G suffixes); least recently used leaves are evicted, never those "
                        "of open files, only those the bucket holds (default: unbounded)")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("unmount", aliases=["umount"], help="unmount (waits for pending commits)")
    p.add_argument("mountpoint")
    p.add_argument("-z", "--lazy", action="store_true")
    p.set_defaults(func=cmd_unmount)

    p = sub.add_parser("prefetch", help="load files or trees of a mount in the background")
    p.add_argument("paths", nargs="+")
    p.add_argument("--wait", action="store_true", help="read everything now, then return")
    p.set_defaults(func=cmd_prefetch)


def _size(text: str) -> int:
    import argparse

    from ..fs.s3source import parse_size

    try:
        return parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 10G)") from None


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS
