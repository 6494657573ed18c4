"""The one place sizes, CIDs, ratios and times are turned into text for people.

Every command of the CLI, the transfer summaries and the hub's web pages print
through these, so that ``1.5 MiB``, an abbreviated CID or a date reads the same
everywhere. Pure functions, no imports beyond the CID printer: cheap to import
from any layer.
"""

from __future__ import annotations

import time

from .encoding.cid import cid_str

SHORT_CID_CHARS = 16  # unique in practice, and accepted back as a revision prefix

__all__ = ["SHORT_CID_CHARS", "clock", "commit_date", "day", "human_size", "ratio", "short_cid"]


def human_size(n: float) -> str:
    """``n`` bytes as ``"512 B"``, ``"1.5 MiB"`` … up to TiB (powers of 1024; whole
    bytes below 1 KiB, one decimal above)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable: the loop returns at TiB


def short_cid(cid, none: str = "(none)") -> str:
    """The first :data:`SHORT_CID_CHARS` characters of a CID's base32 string (binary
    CID, :class:`tvcfs.CID` or already a string); ``none`` for ``None`` or empty."""
    if not cid:
        return none
    return (cid if isinstance(cid, str) else cid_str(bytes(cid)))[:SHORT_CID_CHARS]


def ratio(stored: int, raw: int) -> str:
    """``stored / raw`` with two decimals (``"0.42"``); ``"-"`` when ``raw`` is 0."""
    return f"{stored / raw:.2f}" if raw else "-"


def clock(t: float | None) -> str:
    """A Unix time (seconds) as local ``YYYY-MM-DD HH:MM:SS``; ``None`` is the epoch."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t or 0))


def day(t: float | None) -> str:
    """A Unix time (seconds) as the local date ``YYYY-MM-DD``; ``None`` is the epoch."""
    return time.strftime("%Y-%m-%d", time.localtime(t or 0))


def commit_date(t: float) -> str:
    """A commit's time (Unix seconds) as ``git log`` prints it, local time:
    ``Mon Dec 07 10:10:41 2026 +0000``."""
    return time.strftime("%a %b %d %H:%M:%S %Y %z", time.localtime(t))
