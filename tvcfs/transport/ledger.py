"""Fair sharing of a server's sending between peers: a ledger of bytes sent per peer.

Every session asks :meth:`PeerLedger.turn` before it sends a block (the decisions
are :meth:`~PeerLedger.arrive`, :meth:`~PeerLedger.ahead`, :meth:`~PeerLedger.depart`
and :meth:`~PeerLedger.book`, plain functions of the ledger and a time; ``turn``
only adds the waiting). When several
peers are waiting to be sent to at the same moment, the one that has received the
fewest bytes goes first: a peer more than ``quantum`` bytes ahead of another
waiting peer waits (at most ``max_wait`` seconds, so nothing can deadlock) until
that peer has caught up. A peer with nothing to send does not hold others back
(work-conserving), and a peer that comes back after ``idle`` seconds, or a new
peer, starts at the level of the least-served active peer rather than at zero, so
it gets a fair share, not a burst that starves everyone else (deficit round robin
over bytes; Shreedhar & Varghese, 1995; Bitswap's ledgers play the same role).

Peers are keyed by their authenticated peer ID when they have one, else by their
address.
"""

from __future__ import annotations

import trio

__all__ = ["PeerLedger"]

MIB = 1 << 20


class PeerLedger:
    """Bytes sent per peer, and the gate that shares sending fairly (see module)."""

    def __init__(self, quantum: int = 2 * MIB, max_wait: float = 0.25, idle: float = 2.0):
        self.quantum = quantum
        self.max_wait = max_wait
        self.idle = idle
        self.sent: dict = {}        # key -> ledger value (bytes, normalised)
        self.total: dict = {}       # key -> bytes actually sent (never normalised)
        self.last: dict = {}        # key -> trio time of the last send
        self.waiting: dict = {}     # key -> tasks waiting at the gate
        self.waits = 0              # times a sender was held back
        self._changed = trio.Event()

    def _floor(self, now: float, key) -> int:
        active = [v for k, v in self.sent.items()
                  if k != key and now - self.last.get(k, 0.0) < self.idle]
        return min(active) if active else 0

    # -- the decisions (no I/O, no waiting: the server session and tests call these)
    def arrive(self, key, now: float) -> None:
        """``key`` wants to send a block at time ``now`` (seconds): it joins the
        waiting peers; a new peer or one idle for ``idle`` seconds starts at the
        level of the least-served active peer."""
        if key not in self.sent or now - self.last.get(key, 0.0) >= self.idle:
            self.sent[key] = max(self.sent.get(key, 0), self._floor(now, key))
        self.waiting[key] = self.waiting.get(key, 0) + 1

    def ahead(self, key) -> bool:
        """Whether ``key`` is more than ``quantum`` bytes ahead of another waiting
        peer (it should wait for that one to catch up)."""
        behind = [self.sent.get(k, 0) for k in self.waiting if k != key]
        return bool(behind) and self.sent[key] > min(behind) + self.quantum

    def depart(self, key) -> None:
        """``key`` stops waiting (it sends now, or gave up)."""
        n = self.waiting.get(key, 1) - 1
        if n:
            self.waiting[key] = n
        else:
            self.waiting.pop(key, None)

    def book(self, key, nbytes: int, now: float) -> None:
        """Record ``nbytes`` sent to ``key`` at time ``now``."""
        self.sent[key] = self.sent.get(key, 0) + nbytes
        self.total[key] = self.total.get(key, 0) + nbytes
        self.last[key] = now
        if len(self.last) > 4096:
            self._expire(now)

    # -- the waiting (trio)
    async def turn(self, key, nbytes: int) -> None:
        """Wait for ``key``'s turn to send ``nbytes`` (at most ``max_wait``
        seconds), then book them."""
        now = trio.current_time()
        self.arrive(key, now)
        try:
            # let the other senders that are runnable now reach the gate too
            await trio.lowlevel.checkpoint()
            deadline = now + self.max_wait
            held = False
            while self.ahead(key) and trio.current_time() < deadline:
                held = True
                with trio.move_on_at(deadline):
                    await self._changed.wait()
            if held:
                self.waits += 1
        finally:
            self.depart(key)
        self.book(key, nbytes, trio.current_time())
        self._changed.set()
        self._changed = trio.Event()

    def _expire(self, now: float) -> None:
        for k in [k for k, t in self.last.items() if now - t > 60 * self.idle]:
            self.last.pop(k, None)
            self.sent.pop(k, None)
            self.total.pop(k, None)

    def snapshot(self) -> dict:
        """``{key: bytes sent}`` (for stats and tests)."""
        return dict(self.total)
