"""Filesystem entry names as the bytes a system call carries and as text safe to
print. The lowest layer (no tvcfs imports), so that errors and every layer above can
name a file; the rules for a *valid* entry name are in
:func:`tvcfs.encoding.unixfs.entry_name_error`."""

from __future__ import annotations


def name_bytes(name: str | bytes) -> bytes:
    """``name`` as the bytes a filesystem call carries (``str`` from ``os.fsdecode``
    or ``os.scandir`` holds non-UTF-8 bytes as surrogate escapes)."""
    if isinstance(name, (bytes, bytearray, memoryview)):
        return bytes(name)
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return name.encode("utf-8", "backslashreplace")


def printable_name(name: str | bytes) -> str:
    """``name`` (or a path) safe to print or log: bytes that are not UTF-8 and control
    characters are shown as ``\\xNN`` escapes (a surrogate-escaped ``str`` would make
    ``print`` raise; a hostile name must not drive the terminal)."""
    return name_bytes(name).decode("utf-8", "backslashreplace").translate(_CONTROL_ESCAPES)


_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
