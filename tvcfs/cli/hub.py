"""``tvcfs hub …`` (run and administer a hub of many repositories) and ``tvcfs login``
(store a token for a hub). docs/hub.md."""

from __future__ import annotations

import json
import os
import sys

from ..formatting import day


def _root(args) -> str:
    return os.path.abspath(args.root or os.getcwd())


def _hub(args):
    from ..hub.core import Hub

    return Hub.open(_root(args))


def cmd_hub_init(args) -> int:
    """``tvcfs hub init PATH``: create a hub directory; exit status 0."""
    from ..hub.core import Hub

    Hub.init(args.path)
    print(f"hub at {os.path.abspath(args.path)}")
    return 0


def cmd_hub_serve(args) -> int:
    """``tvcfs hub serve ROOT``: run the hub's HTTP server (and the block exchange, the blob
    port) until interrupted; returns the server's exit status. Raises
    :class:`~tvcfs.errors.TvcfsError` for ``--workers`` below 1."""
    from ..hub.core import Hub
    from ..hub.server import main_serve

    if args.workers < 1:
        from ..errors import TvcfsError

        raise TvcfsError(f"--workers {args.workers}: give at least 1 HTTP process")
    Hub.init(args.root_pos)
    return main_serve(os.path.abspath(args.root_pos), args.listen, max_body=int(args.max_body),
                      lfs_threshold=int(args.lfs_threshold) if args.lfs_threshold else None,
                      read_timeout=args.read_timeout, keep_alive=args.keep_alive,
                      transport_listen=args.transport_listen, workers=args.workers,
                      blob_listen=None if args.blob_listen.lower() == "none" else args.blob_listen,
                      blob_threshold=int(args.blob_threshold) if args.blob_threshold is not None else None)


def cmd_user_add(args) -> int:
    """``tvcfs hub user add NAME``: add a user and print its first token (shown once); exit
    status 0."""
    hub = _hub(args)
    token = hub.state.add_user(args.name, args.email or "", args.org or ())
    print(f"user {args.name} added; its token (shown once, only a hash is kept):")
    print(token)
    return 0


def cmd_user_token(args) -> int:
    """``tvcfs hub user token NAME``: issue and print a new token (shown once); exit status 0."""
    token = _hub(args).state.new_token(args.name)
    print(f"new token for {args.name} (shown once):")
    print(token)
    return 0


def cmd_user_list(args) -> int:
    """``tvcfs hub user list``: users with email, live token count and organisations
    (``--json``); exit status 0."""
    users = _hub(args).state.users()
    if args.json:
        print(json.dumps({n: {"email": u["email"], "orgs": u.get("orgs", []), "disabled": u.get("disabled", False),
                              "tokens": sum(not t["revoked"] for t in u["tokens"])} for n, u in users.items()},
                         indent=2))
        return 0
    for n, u in sorted(users.items()):
        live = sum(not t["revoked"] for t in u["tokens"])
        state = "revoked" if u.get("disabled") else f"{live} token{'s' * (live != 1)}"
        orgs = f" orgs: {','.join(u.get('orgs', []))}" if u.get("orgs") else ""
        print(f"{n:<20} {u['email']:<30} {state}{orgs}")
    return 0


def cmd_user_revoke(args) -> int:
    """``tvcfs hub user revoke NAME``: revoke every token of the user; exit status 0."""
    n = _hub(args).state.revoke(args.name)
    print(f"revoked {n} token{'s' * (n != 1)} of {args.name}")
    return 0


def cmd_user_key(args) -> int:
    """``tvcfs hub user key NAME PEER_ID``: let a peer ID act as the user on the block exchange
    (``--remove``: no longer); exit status 0."""
    _hub(args).state.set_peer(args.name, args.peer_id, remove=args.remove)
    print(f"peer ID {args.peer_id} {'removed from' if args.remove else 'now counts as'} {args.name} "
          "on the block exchange")
    return 0


def cmd_repo_create(args) -> int:
    """``tvcfs hub repo create ORG/NAME``: create a repository (``--private``, ``--owner``);
    exit status 0. Raises :class:`~tvcfs.hub.state.HubError` if it exists."""
    hub = _hub(args)
    try:
        hub.create_repo(args.repo_id, private=args.private, owner=args.owner)
    finally:
        hub.close()
    print(f"created {args.repo_id}{' (private)' if args.private else ''} at {hub.repo_dir(args.repo_id)}")
    return 0


def cmd_repo_list(args) -> int:
    """``tvcfs hub repo list``: repositories with visibility, creation day and collaborators;
    exit status 0."""
    hub = _hub(args)
    for rid, rec in sorted(hub.state.repos().items()):
        flags = "private" if rec.get("private") else "public"
        collab = ",".join(rec.get("collaborators", []))
        print(f"{rid:<40} {flags:<8} {day(rec.get('created'))}"
              f"{'  collaborators: ' + collab if collab else ''}")
    return 0


def cmd_repo_delete(args) -> int:
    """``tvcfs hub repo delete ORG/NAME``: delete a repository; exit status 0. Raises
    :class:`~tvcfs.hub.state.HubError` if unknown."""
    hub = _hub(args)
    hub.delete_repo(args.repo_id)
    print(f"deleted {args.repo_id}")
    return 0


def cmd_repo_grant(args) -> int:
    """``tvcfs hub repo grant ORG/NAME USER``: give (``--revoke``: take) write access; exit
    status 0."""
    hub = _hub(args)
    hub.state.grant(args.repo_id, args.user, revoke=args.revoke)
    print(f"{args.user} {'no longer has' if args.revoke else 'has'} write access to {args.repo_id}")
    return 0


def cmd_repo_private(args) -> int:
    """``tvcfs hub repo private ORG/NAME on|off``: set the repository's visibility; exit status
    0."""
    hub = _hub(args)
    hub.state.set_repo(args.repo_id, private=args.value == "on")
    return 0


def cmd_login(args) -> int:
    """``tvcfs login URL``: check a hub token (argument, prompt or stdin) with ``whoami`` and
    save it; exit status 0. Raises :class:`~tvcfs.errors.TvcfsError` for an empty or
    rejected token."""
    from ..errors import TvcfsError
    from ..hub.client import save_token, whoami

    token = args.token
    if token is None:
        if sys.stdin.isatty():
            import getpass

            token = getpass.getpass(f"token for {args.url}: ")
        else:
            token = sys.stdin.readline()
    token = token.strip()
    if not token:
        raise TvcfsError("no token given (pass --token, or type it when asked)")
    name = whoami(args.url, token)
    path = save_token(args.url, token)
    print(f"logged in to {args.url} as {name} (token saved in {path})")
    return 0


def register(sub) -> None:
    """Add ``hub`` and ``login`` to the ``tvcfs`` argument parser."""
    from .remote import _parse_rate as size

    hp = sub.add_parser("hub", help="run and administer a hub of many repositories (HTTP, Hugging Face API)",
                        description="A hub hosts repositories ORG/NAME under ROOT/repos, with users, tokens and "
                                    "an HTTP API that Hugging Face clients speak (docs/hub.md).")
    hs = hp.add_subparsers(dest="hub_command", metavar="SUBCOMMAND")
    hs.required = True

    def with_root(p):
        p.add_argument("--root", metavar="ROOT", help="the hub's directory (default: the current directory)")
        return p

    p = hs.add_parser("init", help="create a hub directory")
    p.add_argument("path", nargs="?", default=".")
    p.set_defaults(func=cmd_hub_init)

    p = hs.add_parser("serve", help="serve every repository of ROOT over HTTP")
    p.add_argument("root_pos", metavar="ROOT")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="(port 0 picks a free one)")
    p.add_argument("--max-body", type=size, default=64 << 30, metavar="BYTES",
                   help="largest commit body or uploaded file (default 64G; larger requests get 413)")
    p.add_argument("--lfs-threshold", type=size, default=None, metavar="BYTES",
                   help="files at least this large go through the LFS batch API (clients must then set "
                        "HF_HUB_DISABLE_XET=1); default: every file inline in the commit")
    p.add_argument("--read-timeout", type=float, default=30.0, metavar="S",
                   help="close a connection that sends nothing for S seconds (slow clients)")
    p.add_argument("--keep-alive", type=float, default=5.0, metavar="S",
                   help="close a connection idle (or still sending its first request head) for S seconds")
    p.add_argument("--transport-listen", metavar="HOST:PORT",
                   help="also serve every repository's blocks over QUIC and TLS/TCP "
                        "(tvcfs://PEERID@HOST:PORT/ORG/NAME; printed on the second line)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="HTTP processes sharing --listen through SO_REUSEPORT (default 1: HTTP and the block "
                        "exchange in one process; more uses more cores for many concurrent downloads)")
    p.add_argument("--blob-listen", default="", metavar="HOST:PORT",
                   help="where large files are served by sendfile (resolve answers 302 there, as the Hugging Face "
                        "Hub does for LFS files); default: the host of --listen and a free port (logged); "
                        "'none': every file from --listen")
    p.add_argument("--blob-threshold", type=size, default=None, metavar="BYTES",
                   help="files at least this large are redirected to the blob port (default 10M)")
    p.set_defaults(func=cmd_hub_serve)

    up = hs.add_parser("user", help="users and tokens").add_subparsers(dest="user_command", metavar="ACTION")
    up.required = True
    p = with_root(up.add_parser("add", help="add a user; prints its token once, on the last line"))
    p.add_argument("name")
    p.add_argument("--email", default="", help="the user's e-mail address (shown to clients)")
    p.add_argument("--org", action="append", metavar="ORG", help="an organisation the user belongs to (repeat)")
    p.set_defaults(func=cmd_user_add)
    p = with_root(up.add_parser("token", help="issue another token for a user (last line)"))
    p.add_argument("name")
    p.set_defaults(func=cmd_user_token)
    p = with_root(up.add_parser("key", help="register a node peer ID of a user (tvcfs id prints it) for "
                                           "clone, push and mount over the block exchange"))
    p.add_argument("name")
    p.add_argument("peer_id", metavar="PEERID")
    p.add_argument("--remove", action="store_true", help="unregister PEERID instead")
    p.set_defaults(func=cmd_user_key)
    p = with_root(up.add_parser("list", help="list users"))
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_user_list)
    p = with_root(up.add_parser("revoke", help="revoke every token of a user"))
    p.add_argument("name")
    p.set_defaults(func=cmd_user_revoke)

    rp = hs.add_parser("repo", help="repositories").add_subparsers(dest="repo_command", metavar="ACTION")
    rp.required = True
    p = with_root(rp.add_parser("create", help="create ORG/NAME"))
    p.add_argument("repo_id", metavar="ORG/NAME")
    p.add_argument("--private", action="store_true", help="readable only by its owner, collaborators and org members")
    p.add_argument("--owner", metavar="USER",
                   help="the user who owns it (may write it; the author of its first commit)")
    p.set_defaults(func=cmd_repo_create)
    p = with_root(rp.add_parser("list", help="list repositories"))
    p.set_defaults(func=cmd_repo_list)
    p = with_root(rp.add_parser("delete", help="delete ORG/NAME and its data"))
    p.add_argument("repo_id", metavar="ORG/NAME")
    p.set_defaults(func=cmd_repo_delete)
    p = with_root(rp.add_parser("grant", help="give USER write (and read) access to ORG/NAME"))
    p.add_argument("repo_id", metavar="ORG/NAME")
    p.add_argument("user")
    p.add_argument("--revoke", action="store_true", help="take the access away instead")
    p.set_defaults(func=cmd_repo_grant)
    p = with_root(rp.add_parser("private", help="make ORG/NAME private (on) or public (off)"))
    p.add_argument("repo_id", metavar="ORG/NAME")
    p.add_argument("value", choices=["on", "off"])
    p.set_defaults(func=cmd_repo_private)

    p = sub.add_parser("login", help="store a token for a hub (also HF_TOKEN / TVCFS_TOKEN)",
                       description="Check TOKEN against the hub at URL and store it (0600) in "
                                   "$XDG_CONFIG_HOME/tvcfs/tokens.json.")
    p.add_argument("url", metavar="URL")
    p.add_argument("--token", help="the token (default: asked for, or read from standard input)")
    p.set_defaults(func=cmd_login)
