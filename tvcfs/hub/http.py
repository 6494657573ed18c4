"""HTTP pieces the hub's API and its web pages share: the error answer type and
path-segment decoding. Kept apart from :mod:`tvcfs.hub.app` so that the pages
(:mod:`tvcfs.hub.web`) and the app do not import each other."""

from __future__ import annotations

from urllib.parse import unquote


class ApiError(Exception):
    """An HTTP error answer: ``status``, one-line ``message``, optional HF ``code``."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def raw_tail(request, skip: int) -> list:
    """The request path's segments after the first ``skip``, each percent-decoded
    separately (so a revision ``refs%2Fpr%2F1`` stays one segment)."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    raw = raw.split(b"?", 1)[0].decode("latin-1")
    return [unquote(s) for s in raw.split("/")[1:]][skip:]


def parse_range(value: str, size: int):
    """``Range: bytes=A-B`` → ``(start, end)`` (end exclusive); ``False`` for a header
    this server ignores (several ranges, another unit: the whole file is sent);
    ``None`` when unsatisfiable (416)."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return False
    a, sep, b = spec.strip().partition("-")
    if not sep:
        return False
    try:
        if a == "":
            n = int(b)
            if n <= 0:
                return None
            return max(0, size - n), size
        start = int(a)
        end = int(b) + 1 if b else size
    except ValueError:
        return False
    if start >= size or end <= start:
        return None
    return start, min(end, size)
