"""glibc ``malloc`` settings for bulk transfers (one call per process).

A transfer allocates and frees a stream of short-lived buffers of 32 KiB – 4 MiB
(datagrams, engine send buffers, block frames, verification batches). With
glibc's defaults, every time more than 128 KiB at the top of the heap is free
the heap is shrunk (``M_TRIM_THRESHOLD``), and buffers above the dynamic
``M_MMAP_THRESHOLD`` get their own ``mmap``: the next allocation then faults
the same pages in again, zero-filled by the kernel. Measured on a 1 GB qh3
clone: ~200,000 minor page faults and ~1.5 CPU-seconds in the server; with
the settings below ~10,000 faults and ~1.0 CPU-second (docs/performance.md,
"Transport").

:func:`tune_malloc` raises both thresholds, so freed buffers are reused instead
of returned to the kernel; the price is that up to ``trim_threshold`` bytes of
freed heap stay mapped. Not glibc (musl, macOS): nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done: bool | None = None


def tune_malloc(trim_threshold: int = 128 << 20, mmap_threshold: int = 16 << 20) -> bool:
    """Raise glibc's ``M_TRIM_THRESHOLD`` / ``M_MMAP_THRESHOLD`` (bytes) once per
    process; later calls do nothing. ``TVCFS_MALLOC_TUNE=0`` in the environment
    disables it (for A/B measurements). Returns whether the settings are in
    effect. Never raises: without glibc's ``mallopt`` it returns False.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("TVCFS_MALLOC_TUNE", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return _done
