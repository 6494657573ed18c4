"""Progress bars for long commands, one helper shared by every command.

The library reports progress through a callback parameter (``progress``), called
as ``progress(done, total=None, what=None)``: ``done`` and ``total`` are cumulative
amounts in the operation's unit (bytes unless the call's documentation says blocks;
``total`` is ``None`` while unknown), ``what`` names the current phase (a new
``what`` starts a new bar). The CLI owns the bar: :func:`progress_bar` gives such a
callback, drawn with tqdm (imported only when a bar is shown) on stderr, and only when
stderr is a terminal and ``--quiet`` was not given; otherwise the callback does
nothing. Usage::

    with progress_bar(args, "Committing") as bar:
        repo.commit_dir(d, progress=bar)
"""

from __future__ import annotations

import sys


class ProgressBar:
    """A progress callback drawing a tqdm bar on stderr (see the module docstring).
    ``desc``: the label; ``unit``: ``"B"`` (scaled in KiB, MiB, …) or a word such as
    ``"blocks"``; ``enabled``: draw anything at all. Close it (or use ``with``)."""

    def __init__(self, desc: str, unit: str = "B", enabled: bool = True):
        self.desc, self.unit, self.enabled = desc, unit, enabled
        self._bar = None
        self._what = None

    def __call__(self, done: int, total: int | None = None, what: str | None = None) -> None:
        if not self.enabled:
            return
        if what is not None and what != self._what:
            self.close()
            self._what = what
        if self._bar is None:
            from tqdm import tqdm

            desc = f"{self.desc}: {self._what}" if self._what else self.desc
            self._bar = tqdm(desc=desc, total=total, unit=self.unit, unit_scale=True,
                             unit_divisor=1024 if self.unit == "B" else 1000, file=sys.stderr,
                             dynamic_ncols=True, mininterval=0.2, leave=False)
        if total is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()
        if done != self._bar.n:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """Remove the bar from the terminal (the command prints its own summary)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress_bar(args, desc: str, unit: str = "B") -> ProgressBar:
    """The progress callback of a command: draws only when stderr is a terminal and
    the command was not given ``--quiet`` (``args.quiet``)."""
    enabled = not getattr(args, "quiet", False) and _stderr_is_tty()
    return ProgressBar(desc, unit, enabled)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
