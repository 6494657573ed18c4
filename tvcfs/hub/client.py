"""Client side of a hub: where tokens are kept (``tvcfs login``) and found
(``TVCFS_TOKEN``, ``HF_TOKEN``, then the token file). Standard library only."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from ..errors import TvcfsError


def token_file() -> str:
    """``$XDG_CONFIG_HOME/tvcfs/tokens.json`` (default ``~/.config``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "tvcfs", "tokens.json")


def _key(url: str) -> str:
    return url.rstrip("/")


def save_token(url: str, token: str) -> str:
    """Store ``token`` for hub ``url`` (file mode 0600, written atomically); returns the file."""
    path = token_file()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (FileNotFoundError, ValueError):
        d = {}
    d[_key(url)] = token
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(d, f, indent=1)
    os.replace(tmp, path)
    return path


def token_for(url: str) -> str | None:
    """The token to send to hub ``url``: ``TVCFS_TOKEN``, else ``HF_TOKEN``, else the
    one ``tvcfs login URL`` stored, else ``None``."""
    for var in ("TVCFS_TOKEN", "HF_TOKEN"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        with open(token_file(), encoding="utf-8") as f:
            return json.load(f).get(_key(url))
    except (FileNotFoundError, ValueError):
        return None


def whoami(url: str, token: str, timeout: float = 10.0) -> str:
    """The user name the hub at ``url`` knows ``token`` by. Raises :class:`TvcfsError`
    (one line) for a refused token or an unreachable hub."""
    req = urllib.request.Request(_key(url) + "/api/whoami-v2", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)["name"]
    except urllib.error.HTTPError as e:
        raise TvcfsError(f"the hub at {url} refused the token (HTTP {e.code}); "
                         "ask its administrator for a new one (tvcfs hub user token NAME)") from None
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        raise TvcfsError(f"cannot reach a tvcfs hub at {url}: {getattr(e, 'reason', e)}") from None
