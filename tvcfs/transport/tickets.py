"""TLS session tickets for QUIC resumption and 0-RTT (RFC 9001 §4.6), both engines.

:class:`SessionTickets` keeps a client's tickets per peer (in memory, optionally in
a JSON file of mode 0600); :class:`ServerTickets` a server's issued tickets, each
redeemable once. :func:`~.quic.connect_quic` and :func:`~.quic.serve_quic` use them.
"""

from __future__ import annotations

import importlib
import logging
import os

__all__ = ["CLIENT_TICKETS", "ServerTickets", "SessionTickets"]

log = logging.getLogger("tvcfs.transport.quic")


class SessionTickets:
    """A client's TLS session tickets, kept per peer (resumption and 0-RTT, RFC 9001 §4.6).

    A ticket is stored under ``(engine, host, port, pinned peer ID)`` with the peer
    ID that the connection which received it verified (a resumed handshake sends
    no certificate: the ticket's secret authenticates the server, and the peer ID
    it was issued by is the one remembered here). Each ticket is used once
    (servers issue single-use tickets; a resumed connection receives a new one).
    In memory for the process; with ``path`` also in that JSON file (mode 0600:
    it holds resumption secrets), read when first needed and rewritten on change.
    """

    def __init__(self, path: str | None = None, max_peers: int = 256):
        self.path = path
        self.max_peers = max_peers
        self._entries: dict[str, tuple] = {}  # key -> (ticket, peer_id)
        self._loaded = path is None

    @staticmethod
    def key(engine: str, host: str, port: int, peer_id: bytes | None) -> str:
        """The key a ticket is stored under: ``"<engine> <host> <port> <peer ID hex>"``."""
        return f"{engine} {host} {port} {(peer_id or b'').hex()}"

    def take(self, key: str):
        """``(ticket, peer ID)`` for ``key`` (removed: single use), or None when
        there is none still valid."""
        self._load()
        entry = self._entries.pop(key, None)
        if entry is not None and self.path is not None:
            self._save()
        if entry is None or not entry[0].is_valid:
            return None
        return entry

    def put(self, key: str, ticket, peer_id: bytes | None) -> None:
        """Keep ``ticket`` (issued by ``peer_id``) for the next connection to ``key``."""
        self._load()
        self._entries.pop(key, None)
        self._entries[key] = (ticket, peer_id)
        while len(self._entries) > self.max_peers:
            self._entries.pop(next(iter(self._entries)))
        if self.path is not None:
            self._save()

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        import json

        try:
            with open(self.path) as f:
                raw = json.load(f)
        except (OSError, ValueError):
            return
        for key, rec in raw.items() if isinstance(raw, dict) else ():
            try:
                ticket = _ticket_from_json(key.split(" ", 1)[0], rec["ticket"])
                peer = bytes.fromhex(rec["peer_id"]) if rec.get("peer_id") else None
            except Exception:  # noqa: BLE001 - a stale or foreign file: ignore the entry
                continue
            self._entries[key] = (ticket, peer)

    def _save(self) -> None:
        import json

        data = {k: {"ticket": _ticket_to_json(t), "peer_id": (p or b"").hex()}
                for k, (t, p) in self._entries.items()}
        tmp = f"{self.path}.{os.getpid()}.tmp"  # several processes may share the file
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)
        except OSError as e:  # a cache: never fail a transfer for it
            log.debug("cannot save session tickets to %s: %s", self.path, e)


def _ticket_to_json(t) -> dict:
    return {"age_add": t.age_add, "cipher_suite": int(t.cipher_suite),
            "not_valid_after": t.not_valid_after.isoformat(),
            "not_valid_before": t.not_valid_before.isoformat(),
            "resumption_secret": t.resumption_secret.hex(), "server_name": t.server_name,
            "ticket": t.ticket.hex(), "max_early_data_size": t.max_early_data_size,
            "other_extensions": [[k, v.hex()] for k, v in t.other_extensions]}


def _ticket_from_json(engine_name: str, d: dict):
    import datetime

    tls = importlib.import_module(f"{engine_name}.tls")
    return tls.SessionTicket(
        age_add=int(d["age_add"]), cipher_suite=tls.CipherSuite(int(d["cipher_suite"])),
        not_valid_after=datetime.datetime.fromisoformat(d["not_valid_after"]),
        not_valid_before=datetime.datetime.fromisoformat(d["not_valid_before"]),
        resumption_secret=bytes.fromhex(d["resumption_secret"]),
        server_name=str(d["server_name"]), ticket=bytes.fromhex(d["ticket"]),
        max_early_data_size=d["max_early_data_size"],
        other_extensions=[(int(k), bytes.fromhex(v)) for k, v in d["other_extensions"]])


CLIENT_TICKETS = SessionTickets()  # this process's tickets (connect_quic's default)


class ServerTickets:
    """A server's issued session tickets by label, each redeemable once (a
    replayed 0-RTT flight finds its ticket gone and gets a full handshake).
    At most ``limit`` kept (the oldest dropped)."""

    def __init__(self, limit: int = 10000):
        self.limit = limit
        self._tickets: dict[bytes, object] = {}

    def add(self, ticket) -> None:
        """Keep ``ticket`` under its label, dropping the oldest beyond ``limit``."""
        self._tickets[ticket.ticket] = ticket
        while len(self._tickets) > self.limit:
            self._tickets.pop(next(iter(self._tickets)))

    def pop(self, label: bytes):
        """Remove and return the ticket labelled ``label`` (each redeemable once), or ``None``."""
        return self._tickets.pop(label, None)
