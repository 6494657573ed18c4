"""Peer-to-peer commands: id, serve, remote, clone, fetch, pull, push.

See docs/protocol.md. Transfers show a progress line (bytes, rate) on stderr;
``--quiet`` hides it. Errors are one line (``tvcfs: error: …``).
"""

from __future__ import annotations

import os
import sys

from . import add_no_verify, emit_json, open_repo
from ..formatting import human_size as _fmt, short_cid as _short
from .progress import progress_bar


def _engine(args):
    e = getattr(args, "engine", None)
    if e:
        os.environ["TVCFS_QUIC_ENGINE"] = e
    return e


def _summary(res, quiet: bool) -> None:
    """One line per remote a fetch asked (tvcfs.sync.FetchResult.stats)."""
    if quiet:
        return
    for name, st in res.stats:
        if st.blocks or st.bad_blocks:
            rate = st.nbytes / st.seconds if st.seconds else 0.0
            print(f"Received {st.blocks} blocks, {_fmt(st.nbytes)} ({st.nbytes} bytes, "
                  f"{st.wire_bytes} on the wire) from {name} over {st.transport} in "
                  f"{st.seconds:.2f} s ({_fmt(rate)}/s)"
                  + (f"; {st.bad_blocks} bad block(s) dropped" if st.bad_blocks else ""),
                  file=sys.stderr)


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ id
def cmd_id(args) -> int:
    """``tvcfs id``: print the repository's peer ID (creating its Ed25519 key); exit status 0."""
    with open_repo(args) as repo:
        ident = repo.identity()
        if args.verbose:
            print(f"peer ID:  {ident.peer_id_str}")
            print(f"key file: {os.path.join(repo.control, 'node.key')}")
            print("key type: Ed25519")
        else:
            print(ident.peer_id_str)
    return 0


# ------------------------------------------------------------------ serve
def _parse_rate(text: str) -> float:
    """``"50M"`` or ``"50MB/s"`` → 52428800.0 bytes per second (the sizes of
    :func:`tvcfs.fs.options.parse_size`). Raises ``argparse.ArgumentTypeError``."""
    import argparse

    from ..fs.options import parse_size

    try:
        return float(parse_size(text.strip().upper().removesuffix("/S")))
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"not a positive rate: {text!r}") from None


def cmd_serve(args) -> int:
    """``tvcfs serve [REPO]``: serve the repository to peers over QUIC and TLS/TCP (and
    ``--http``: an IPFS HTTP gateway) until interrupted; exit status 0. Raises
    :class:`~tvcfs.errors.TvcfsError` for ``--http-only`` without ``--http``."""
    import logging
    import signal

    import trio

    from ..errors import TvcfsError
    from ..transport.ops import parse_listen, serve_async

    _engine(args)
    if args.http_only and not args.http:
        raise TvcfsError("--http-only needs --http HOST:PORT (the address of the HTTP gateway)")
    peers = not args.http_only
    host, port = parse_listen(args.listen)
    http = parse_listen(args.http, default_port=8080, option="--http") if args.http else None
    repo = open_repo(args, args.path)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="tvcfs serve: %(message)s", stream=sys.stderr)
    for noisy in ("qh3", "aioquic", "quic"):
        logging.getLogger(noisy).setLevel(logging.ERROR)  # "peer close" chatter

    def ready(url, bound, cfg):
        print(url, flush=True)
        if args.quiet:
            return
        what = " and ".join(x for x, on in (("QUIC", not args.no_quic),
                                            ("TLS/TCP", not args.no_tcp)) if on)
        print(f"tvcfs serve: serving {repo.root} over {what} on {host}:{bound}; reads "
              f"{'private' if args.private else 'public'}; push allowed for "
              f"{len(cfg.allow_push)} peer(s)", file=sys.stderr, flush=True)

    async def main():
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
            async with trio.open_nursery() as n:
                if peers:
                    await n.start(lambda task_status: serve_async(
                        repo, host, port, private=args.private, allow_push=args.allow_push or (),
                        quic=not args.no_quic, tcp=not args.no_tcp, engine=args.engine,
                        on_ready=ready, rate_limit=args.rate_limit, task_status=task_status))
                if http:
                    from ..gateway.app import make_gateway_app, serve_http

                    _ = repo.blocks  # build the block layer once, before requests race to build it

                    url = await n.start(serve_http, make_gateway_app(lambda request: repo), *http)
                    print(url, flush=True)
                    if not args.quiet:
                        print(f"tvcfs serve: serving {repo.root} as an IPFS trustless gateway on {url} "
                              "(GET /ipfs/CID?format=raw|car); reads public", file=sys.stderr, flush=True)
                async for _ in sigs:
                    if not args.quiet:
                        print("tvcfs serve: stopping", file=sys.stderr, flush=True)
                    n.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except (OSError, BaseExceptionGroup) as e:
        err = e
        while isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
            err = err.exceptions[0]
        if not isinstance(err, OSError):
            raise
        where = " or ".join(([f"--listen {args.listen}"] if peers else []) + ([f"--http {args.http}"] if http else []))
        raise TvcfsError(f"cannot listen on {where}: {err.strerror or err}") from None
    finally:
        repo.close()
    return 0


# ------------------------------------------------------------------ remote
def cmd_remote(args) -> int:
    """``tvcfs remote add|set-url|remove|list``: manage the repository's remotes; exit status 0. Raises
    :class:`~tvcfs.errors.TvcfsError` for a bad URL."""
    from ..errors import TvcfsError
    from ..sync import check_url
    from ..transport.peer import bad_count

    with open_repo(args) as repo:
        if args.action in ("add", "set-url"):
            try:
                check_url(args.url)
            except TvcfsError as e:
                raise TvcfsError(f"remote {args.name}: {e}") from None
            (repo.add_remote if args.action == "add" else repo.set_remote_url)(args.name, args.url)
            return 0
        if args.action == "remove":
            repo.remove_remote(args.name)
            return 0
        if args.json:
            emit_json([{"name": name, "url": url, "bad_blocks": bad_count(repo, url)}
                       for name, url in sorted(repo.remotes().items())])
            return 0
        for name, url in sorted(repo.remotes().items()):
            if not args.verbose:
                print(name)
                continue
            bad = bad_count(repo, url)
            print(f"{name}\t{url}" + (f"  ({bad} bad blocks)" if bad else ""))
    return 0


# ------------------------------------------------------------------ clone / fetch / pull / push
# one path for every remote kind (s3:// and tvcfs://): tvcfs.sync


def _default_dest(url: str) -> str:
    """``clone URL`` without DIR: the last part of the bucket prefix or repository
    name, else the bucket or ``HOST-PORT``."""
    from ..sync import check_url, is_block_url

    check_url(url)
    if is_block_url(url):
        from ..store.s3 import parse_s3_url

        bucket, prefix = parse_s3_url(url)
        return os.path.basename(prefix.rstrip("/")) or bucket
    from ..transport.client import parse_url

    u = parse_url(url)
    return os.path.basename(u.repo.rstrip("/")) or f"{u.host}-{u.port}"


def cmd_clone(args) -> int:
    """``tvcfs clone URL [DIR]``: clone a remote (``--lazy``: refs and skeleton only) and print
    a summary; exit status 0. Raises :class:`~tvcfs.errors.TvcfsError` (unreachable peer, a
    directory in the way)."""
    from ..sync import clone

    engine = _engine(args)
    dest = args.dir if args.dir is not None else _default_dest(args.url)
    with progress_bar(args, "Receiving") as bar:
        repo, res = clone(args.url, dest, lazy=args.lazy, progress=bar if bar.enabled else None,
                          warn=None if args.quiet else _warn, quiet=args.quiet, engine=engine)
    try:
        _summary(res, args.quiet)
        if not args.quiet:
            nb = sum(1 for k in res.refs if k.startswith("refs/heads/"))
            what = "Lazy clone of" if args.lazy else "Cloned"
            print(f"{what} {args.url} into {repo.root}: {nb} branch(es), {len(res.refs) - nb} "
                  f"tag(s), HEAD -> {repo.head_branch() or '(detached)'} {_short(repo.head())}"
                  + ("; file contents are fetched on demand by `tvcfs mount`" if args.lazy else ""),
                  file=sys.stderr)
    finally:
        repo.close()
    return 0


def cmd_fetch(args) -> int:
    """``tvcfs fetch [REMOTE | --all]``: fetch the remote's refs and blocks, printing updated
    refs; exit status 0."""
    from ..sync import fetch

    engine = _engine(args)
    with open_repo(args) as repo:
        remotes = list(repo.remotes()) if args.all else [args.remote or "origin"]
        for remote in remotes:
            with progress_bar(args, f"Receiving from {remote}") as bar:
                res = fetch(repo, remote, progress=bar if bar.enabled else None,
                            warn=None if args.quiet else _warn, engine=engine)
            _summary(res, args.quiet)
            if not args.quiet:
                if res.updated:
                    print(f"From {res.url}", file=sys.stderr)
                for ref, old, new in res.updated:
                    name = ref.split("/", 2)[2]
                    what = "(deleted)" if new is None else (
                        "[new]" if old is None else f"{_short(old)}..{_short(new)}")
                    print(f"   {what:36s} {name}", file=sys.stderr)
    return 0


def cmd_pull(args) -> int:
    """``tvcfs pull [REMOTE [BRANCH]]``: fetch, then fast-forward or merge the branch; exit
    status 0."""
    from ..sync import pull

    engine = _engine(args)
    with open_repo(args) as repo:
        with progress_bar(args, "Receiving") as bar:
            r = pull(repo, args.remote or "origin", args.branch, progress=bar if bar.enabled else None,
                     warn=None if args.quiet else _warn, engine=engine)
        _summary(r.fetch, args.quiet)
        if r.kind == "up-to-date":
            print("Already up to date.")
        elif r.kind == "ahead":
            print(f"Already up to date ({r.branch} is ahead of the remote).")
        elif r.kind == "created":
            print(f"Created branch {r.branch} at {_short(r.new)}")
        else:
            print(f"Fast-forward {r.branch}: {_short(r.old)}..{_short(r.new)}")
    return 0


def cmd_push(args) -> int:
    """``tvcfs push [REMOTE [BRANCH]]``: send the branch's missing blocks and update the remote
    ref (``--force``); exit status 0. Raises :class:`~tvcfs.errors.RefConflict` when the
    remote moved."""
    from ..sync import push

    engine = _engine(args)
    with open_repo(args) as repo:
        with progress_bar(args, "Sending") as bar:
            r = push(repo, args.remote or "origin", args.branch, force=args.force,
                     progress=bar if bar.enabled else None, engine=engine)
        if r.kind == "up-to-date":
            print("Everything up-to-date.")
        else:
            rate = r.nbytes / r.seconds if r.seconds else 0.0
            print(f"{r.ref}: {_short(r.old)}..{_short(r.new)} ({r.blocks} blocks, "
                  f"{_fmt(r.nbytes)} sent, {_fmt(rate)}/s)")
    return 0


# ------------------------------------------------------------------ register
def register(sub) -> None:
    """Add the ``id``, ``serve``, ``remote``, ``clone``, ``fetch``, ``pull`` and ``push``
    subcommands to ``sub``."""
    def transfer_opts(p):
        p.add_argument("--engine", choices=("qh3", "aioquic"),
                       help="QUIC engine (default: $TVCFS_QUIC_ENGINE or qh3)")

    p = sub.add_parser("id", help="print this repository's node peer ID (creating the key)")
    p.add_argument("--verbose", "-v", action="store_true", help="also the key file and type")
    p.set_defaults(func=cmd_id)

    p = sub.add_parser("serve", help="serve the repository to peers over QUIC and TLS/TCP")
    p.add_argument("path", nargs="?", metavar="REPO", help="repository (default: --repo or cwd)")
    p.add_argument("--listen", "-l", default="0.0.0.0:4740", metavar="HOST:PORT",
                   help="address; QUIC (UDP) and TCP use the same port (0: any) "
                        "[default: 0.0.0.0:4740]")
    p.add_argument("--private", action="store_true",
                   help="reads need an authenticated peer in the push allow-list")
    p.add_argument("--allow-push", nargs="+", metavar="PEERID", default=[],
                   help="peer IDs allowed to push (see `tvcfs id`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-quic", action="store_true", help="TLS over TCP only")
    g.add_argument("--no-tcp", action="store_true", help="QUIC only")
    p.add_argument("--engine", choices=("qh3", "aioquic"), help="QUIC engine")
    p.add_argument("--rate-limit", type=_parse_rate, metavar="BYTES/S",
                   help="limit sending to this many bytes per second, all peers together, "
                        "sustained (bursts of at most one second's worth; suffixes K, M, G: 50M)")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="also serve the repository's blocks as an IPFS HTTP trustless gateway "
                        "(GET /ipfs/CID?format=raw|car; reads public, never writes) [port 8080 if "
                        "none; 0: any]; the gateway's URL is printed after the tvcfs:// one")
    p.add_argument("--http-only", action="store_true",
                   help="serve only the HTTP gateway (no QUIC/TCP peer transport)")
    add_no_verify(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("remote", help="manage remotes (add, set-url, list, remove)")
    rs = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=cmd_remote, action="list", verbose=False)
    a = rs.add_parser("add", help="add a remote: NAME tvcfs://PEERID@HOST:PORT/ or NAME s3://BUCKET/PREFIX")
    a.add_argument("name")
    a.add_argument("url")
    a = rs.add_parser("set-url", help="change the URL of remote NAME (its tracking refs stay)")
    a.add_argument("name")
    a.add_argument("url")
    a = rs.add_parser("remove", aliases=["rm"], help="remove a remote and its tracking refs")
    a.add_argument("name")
    a.set_defaults(action="remove")
    a = rs.add_parser("list", help="list remotes")
    a.add_argument("--verbose", "-v", action="store_true", help="URLs and bad-block counts")
    p.add_argument("--verbose", "-v", action="store_true", help="URLs and bad-block counts")

    p = sub.add_parser("clone", help="clone a remote repository into a new directory")
    p.add_argument("url", metavar="URL", help="tvcfs://PEERID@HOST:PORT/ or s3://BUCKET/PREFIX")
    p.add_argument("dir", nargs="?", metavar="DIR")
    p.add_argument("--lazy", action="store_true",
                   help="refs, commits, directories and file indexes only: file contents are "
                        "fetched on demand by `tvcfs mount` (see docs/lazy.md)")
    transfer_opts(p)
    p.set_defaults(func=cmd_clone)

    p = sub.add_parser("fetch", help="fetch branches and tags of a remote")
    p.add_argument("remote", nargs="?", metavar="REMOTE", help="name or URL (default: origin)")
    p.add_argument("--all", action="store_true", help="fetch every configured remote")
    transfer_opts(p)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("pull", help="fetch, then fast-forward a branch")
    p.add_argument("remote", nargs="?", metavar="REMOTE")
    p.add_argument("branch", nargs="?", metavar="BRANCH")
    transfer_opts(p)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("push", help="send a branch to a remote (compare-and-swap)")
    p.add_argument("remote", nargs="?", metavar="REMOTE")
    p.add_argument("branch", nargs="?", metavar="BRANCH")
    p.add_argument("--force", "-f", action="store_true",
                   help="allow a non-fast-forward (still a compare-and-swap)")
    transfer_opts(p)
    p.set_defaults(func=cmd_push)
