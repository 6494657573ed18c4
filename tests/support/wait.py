"""Wait on a condition instead of sleeping (docs/testing.md).

A test that needs something to happen in another process or thread (a commit, a
log line, a peer state) polls for it with :func:`wait_until` and fails with a
message naming *what* it waited for and the last value seen, instead of sleeping a
fixed time and hoping.
"""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 20.0, what: str = "condition", interval: float = 0.02):
    """Call ``predicate()`` every ``interval`` seconds until it returns a truthy value;
    return that value.

    Raises ``AssertionError("timed out after T s waiting for WHAT (last value: V)")``
    after ``timeout`` seconds (monotonic clock). The predicate is always called at
    least once, and once more after the deadline, so a slow machine that is late
    checking does not fail a condition that became true.
    """
    deadline = time.monotonic() + timeout
    while True:
        late = time.monotonic() > deadline
        value = predicate()
        if value:
            return value
        if late:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last value: {value!r})")
        time.sleep(interval)
