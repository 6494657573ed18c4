"""The block exchange (QUIC and TLS-over-TCP, docs/protocol.md) for every repository
of a hub, from the hub's process: ``tvcfs://PEERID@HOST:PORT/ORG/NAME``.

One endpoint, one node key (``ROOT/node.key``); each session's ``Hello`` names the
repository and gets that repository's :class:`~tvcfs.transport.server.ServerConfig`
(one per repository, kept: its write lock serialises pushes). Who may push or read a
private repository follows the hub's rules (docs/hub.md) through the peer IDs users
register (``tvcfs hub user key NAME PEERID``): a peer ID counts as its user."""

from __future__ import annotations

import os
import threading

from .names import InvalidName, parse_repo_id


def transport_config(hub):
    """A :class:`ServerConfig` whose ``resolve(name)`` picks the repository of a
    session (``None`` for an unknown or invalid name), with ``private``,
    ``allow_push`` and ``allow_read`` refreshed from the hub's state each time."""
    from ..transport.backend import RepoBackend
    from ..transport.identity import IdentityError, NodeIdentity, parse_peer_id
    from ..transport.server import ServerConfig

    ident = NodeIdentity.load_or_create(os.path.join(hub.root, "node.key"))
    configs: dict = {}
    lock = threading.Lock()

    def peers(test) -> set:
        out = set()
        for name, u in hub.state.users().items():
            if not u.get("disabled") and test(name):
                for p in u.get("peers", ()):
                    try:
                        out.add(parse_peer_id(p))
                    except IdentityError:
                        continue
        return out

    def resolve(name: str):
        name = name.strip("/")
        try:
            parse_repo_id(name)
        except InvalidName:
            return None
        rec = hub.state.repo(name)
        if rec is None:
            return None
        with lock:
            cfg = configs.get(name)
            if cfg is None:
                cfg = configs[name] = ServerConfig(
                    RepoBackend(hub.repo(name)), ident,
                    grant_hint=f"of the hub to register it for a user with access to {name}: "
                               "`tvcfs hub user key USER {peer}`")
        cfg.private = bool(rec.get("private"))
        cfg.allow_push = peers(lambda u: hub.state.can_write(u, name))
        cfg.allow_read = peers(lambda u: hub.state.can_read(u, name))
        return cfg

    return ServerConfig(None, ident, resolve=resolve)
