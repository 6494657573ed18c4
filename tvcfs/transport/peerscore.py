"""One peer score record and one back-off rule, for every place tvcfs talks to peers.

Four users share them (docs/lazy.md, "Peers: score and back-off"):

* the lazy mount's prioritised fetcher (:mod:`tvcfs.transport.fetcher`): a
  :class:`PeerScore` per peer orders the peers (expected completion time times the
  penalty for bad blocks) and a :class:`Backoff` spaces its reconnection attempts;
* the peer tier of the block layer (:class:`tvcfs.store.peers.PeerStore`): a
  :class:`Backoff` per peer decides how long a failed peer is skipped;
* the gateway tier (:class:`tvcfs.store.gateway.GatewayStore`): a :class:`Backoff`
  per gateway URL, fixed at its ``cooldown`` or the gateway's own ``Retry-After``;
* the repository's persistent ``peer_scores`` (:func:`tvcfs.transport.ops.peer_scores`,
  shown by ``tvcfs remote list -v``): the same record, saved as
  ``{"bad_blocks": n, "last_bad": unix seconds}`` (:meth:`PeerScore.record`).

**The penalty rule.** Every bad block (a block whose hash does not match its CID)
multiplies a peer's penalty by :data:`BAD_BLOCK_FACTOR` (at most
:data:`MAX_PENALTY`); the penalty halves every :data:`PENALTY_HALF_LIFE` seconds
back towards 1. A peer's expected time for ``n`` bytes is
``(latency + (outstanding + n) / throughput) * penalty``.

**The back-off rule.** After a failure a peer is not tried again for ``delay``
seconds; the delay starts at ``initial`` and doubles with each further failure up
to ``maximum``; a success resets it. (The fetcher uses 0.2 s to 5 s and reconnects
at once, without waiting, when a read finds no peer connected; the peer tier uses
a fixed 5 s and the gateway tier a fixed 30 s: ``initial == maximum``.)
"""

from __future__ import annotations

import time

__all__ = ["Backoff", "PeerScore", "BAD_BLOCK_FACTOR", "MAX_PENALTY", "PENALTY_HALF_LIFE"]

MIB = 1 << 20
BAD_BLOCK_FACTOR = 4.0      # penalty multiplier per bad block
MAX_PENALTY = 1e6
PENALTY_HALF_LIFE = 120.0   # seconds for the penalty to halve (towards 1)


class PeerScore:
    """How well one peer has served us.

    ``lat``: EWMA seconds from a request sent to its first block (starts at 5 ms);
    ``thr``: EWMA bytes/s while the peer has requests outstanding (starts at
    100 MB/s); ``penalty``: >= 1, see the module docstring; ``bad_blocks``: count;
    ``last_bad``: Unix seconds of the last bad block (0: never)."""

    __slots__ = ("lat", "thr", "penalty", "bad_blocks", "last_bad")

    def __init__(self, bad_blocks: int = 0, last_bad: float = 0.0):
        self.lat = 0.005
        self.thr = 100e6
        self.penalty = 1.0
        self.bad_blocks = int(bad_blocks)
        self.last_bad = last_bad

    @classmethod
    def from_record(cls, record: dict | None) -> "PeerScore":
        """A score from a persisted record (``{"bad_blocks", "last_bad"}``; missing
        keys count as 0). The penalty starts at 1: it is a short-lived preference."""
        record = record or {}
        return cls(int(record.get("bad_blocks", 0)), record.get("last_bad", 0))

    def record(self) -> dict:
        """What the repository keeps: ``{"bad_blocks": int, "last_bad": int Unix s}``."""
        return {"bad_blocks": self.bad_blocks, "last_bad": int(self.last_bad)}

    def bad(self, n: int = 1) -> None:
        """``n`` bad blocks came from this peer."""
        if n <= 0:
            return
        self.bad_blocks += n
        self.last_bad = time.time()
        self.penalty = min(self.penalty * BAD_BLOCK_FACTOR ** n, MAX_PENALTY)

    def decay(self, dt: float) -> None:
        """``dt`` seconds passed: the penalty moves back towards 1."""
        if self.penalty > 1.0:
            self.penalty = max(1.0, self.penalty * 0.5 ** (dt / PENALTY_HALF_LIFE))

    def sample_latency(self, dt: float) -> None:
        """A request's first block came ``dt`` seconds after it was sent."""
        self.lat = 0.8 * self.lat + 0.2 * max(dt, 1e-5)

    def sample_throughput(self, nbytes: int, dt: float) -> None:
        """``nbytes`` arrived in the last ``dt`` seconds while the peer was busy."""
        self.thr = 0.7 * self.thr + 0.3 * (nbytes / dt)

    def stalled(self) -> None:
        """The peer went silent with requests outstanding: expect a quarter of the
        throughput (at least 1 MB/s)."""
        self.thr = max(self.thr * 0.25, 1e6)

    def est(self, outstanding: int, nbytes: int) -> float:
        """Expected seconds until ``nbytes`` more bytes arrive, ``outstanding`` bytes
        being already asked of this peer."""
        return (self.lat + (outstanding + nbytes) / max(self.thr, 1e6)) * self.penalty

    def score(self, outstanding: int = 0) -> float:
        """Higher is better: 1 / the expected seconds for a 1 MiB request now."""
        return round(1.0 / max(self.est(outstanding, MIB), 1e-6), 3)


class Backoff:
    """When to try a failed peer again (the back-off rule of the module docstring).

    ``initial`` and ``maximum``: seconds. ``reason``: why the last attempt failed
    ("" after a success)."""

    __slots__ = ("initial", "maximum", "delay", "until", "reason")

    def __init__(self, initial: float = 0.2, maximum: float = 5.0):
        self.initial, self.maximum = initial, maximum
        self.delay = initial
        self.until = 0.0
        self.reason = ""

    def failed(self, reason: str = "", now: float | None = None, wait: float | None = None) -> float:
        """An attempt failed: returns the seconds to wait before the next one (and
        doubles the wait after that, up to ``maximum``). ``wait``: seconds the peer
        itself asked for (an HTTP ``Retry-After``), used instead of the rule's delay."""
        if wait is None:
            wait = self.delay
        self.until = (time.monotonic() if now is None else now) + wait
        self.reason = reason
        self.delay = min(self.delay * 2, self.maximum)
        return wait

    def succeeded(self) -> None:
        """An attempt worked: the next failure waits ``initial`` again."""
        self.delay = self.initial
        self.until = 0.0
        self.reason = ""

    def remaining(self, now: float | None = None) -> float:
        """Seconds until the peer may be tried again (0: now)."""
        return max(0.0, self.until - (time.monotonic() if now is None else now))
