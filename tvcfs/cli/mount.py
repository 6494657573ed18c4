"""Mount commands: mount, unmount, prefetch. The work is in :mod:`tvcfs.fs.daemon`;
the options of ``mount`` are the table :data:`tvcfs.fs.options.MOUNT_OPTIONS`."""

from __future__ import annotations

import argparse

from ..errors import TvcfsError


def cmd_mount(args):
    """``tvcfs mount REPO MOUNTPOINT``: mount a repository or a ``tvcfs://``/``s3://`` URL
    (lazy), in the background unless ``-f``; exit status 0 once mounted. Raises
    :class:`~tvcfs.errors.UsageError` for bad ``-o`` options."""
    from ..errors import UsageError
    from ..fs.daemon import mount_in_background, prepare_mount, run_foreground
    from ..fs.options import command_line, daemon_keywords, parse_o_options

    try:
        for dest, value in parse_o_options(args.options, sloppy=args.sloppy).items():
            setattr(args, dest, value)
    except ValueError as e:
        raise UsageError(f"mount {args.source}: {e}") from None
    if args.dry_run:  # mount(8)'s -f ("fake"): the options are checked, nothing is mounted
        print(" ".join(["tvcfs", "mount", *command_line(args), args.source, args.mountpoint]))
        return 0
    repo_root = prepare_mount(args.source, args.mountpoint, quiet=getattr(args, "quiet", False))
    if getattr(args, "cache_size", None) is not None:  # refused before a background mount starts
        from ..fs.s3source import check_cache_size, lazy_s3_urls
        from ..repo import Repo

        with Repo.open(repo_root) as repo:
            check_cache_size(repo, lazy_s3_urls(repo, getattr(args, "remote", None)), args.cache_size)
    if args.foreground:
        return run_foreground(repo_root, args.mountpoint, **daemon_keywords(args))
    pid = mount_in_background(repo_root, args.mountpoint, args)
    print(f"mounted {repo_root} on {args.mountpoint} (pid {pid})")
    return 0


def cmd_unmount(args):
    """``tvcfs unmount MOUNTPOINT``: unmount (``--lazy``: detach now); exit status 0. Raises
    :class:`~tvcfs.errors.TvcfsError` when it fails."""
    from ..fs.daemon import unmount

    try:
        unmount(args.mountpoint, lazy=args.lazy)
    except RuntimeError as e:
        raise TvcfsError(str(e)) from None
    return 0


def cmd_prefetch(args):
    """Load files or trees of a mount at the lowest priority (:func:`tvcfs.fs.daemon.prefetch`);
    ``--wait`` reads everything, so it is local when the command returns."""
    from ..fs.daemon import prefetch

    total = sum(prefetch(path, wait=args.wait) for path in args.paths)
    print(f"prefetch scheduled for {len(args.paths)} path(s)" + (f"; {total} bytes read" if args.wait else ""))
    return 0


def register(sub) -> None:
    """Add the ``mount``, ``unmount`` and ``prefetch`` subcommands to the ``sub`` subparsers."""
    from ..fs.options import add_arguments

    p = sub.add_parser("mount", help="mount a repository (branches/, tags/, commits/)")
    p.add_argument("source", metavar="REPO", help="repository path, or a tvcfs:// or s3://BUCKET/PREFIX "
                   "URL (lazy: a cache repository under ~/.cache/tvcfs, leaves fetched on demand)")
    p.add_argument("mountpoint")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[=VALUE],...",
                   help=argparse.SUPPRESS)  # mount(8) spelling of the options below
    # for mount(8) helpers (packaging/mount.fuse.tvcfs): its -s and -f
    p.add_argument("--sloppy", action="store_true", help=argparse.SUPPRESS)  # unknown -o options ignored
    p.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)  # check, print, do not mount
    add_arguments(p)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("unmount", aliases=["umount"], help="unmount (waits for pending commits)")
    p.add_argument("mountpoint")
    p.add_argument("-z", "--lazy", action="store_true",
                   help="detach at once, even if busy (fusermount -z); for a mount whose process died")
    p.set_defaults(func=cmd_unmount)

    p = sub.add_parser("prefetch", help="load files or trees of a mount in the background")
    p.add_argument("paths", nargs="+")
    p.add_argument("--wait", action="store_true", help="read everything now, then return")
    p.set_defaults(func=cmd_prefetch)
