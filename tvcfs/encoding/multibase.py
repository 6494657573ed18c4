"""The printed form of binary CIDs: multibase ``b`` + RFC 4648 base32, lower case,
no padding (https://github.com/multiformats/multibase). Kept apart from
:mod:`tvcfs.encoding.cid` so that the lowest layer (:mod:`tvcfs.errors`) can name
CIDs without importing the CID module that raises its errors."""

from __future__ import annotations

import base64


def cid_str(cid: bytes) -> str:
    """Print a binary CID in its canonical string form: multibase ``b`` + base32 lower.

    Equals ``multiformats.CID.decode(cid).encode("base32")``.
    """
    return "b" + base64.b32encode(cid).decode("ascii").rstrip("=").lower()
