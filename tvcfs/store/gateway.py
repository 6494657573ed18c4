"""The IPFS network as a block backend: :class:`GatewayStore` reads blocks from HTTP
trustless gateways (https://specs.ipfs.tech/http-gateways/trustless-gateway/) — Kubo,
Rainbow, Helia, public gateways, or another ``tvcfs serve --http``.

A block is ``GET {gateway}/ipfs/{cid}?format=raw`` with ``Accept:
application/vnd.ipld.raw``, asked of each gateway in turn until one answers with
bytes that hash to the CID (:func:`tvcfs.store.verify.verify_many`; a block that
does not is never returned). ``get_many`` sends ``threads`` such requests at once.
Answers: 200 — the block (verified); 404 or 410 — "not held" by that gateway; anything
else, a refused connection, a timeout, a body longer than ``max_block`` bytes or
still arriving after ``deadline`` seconds, or bytes that do not hash to the CID —
that gateway could not answer, and is passed over for ``cooldown`` seconds while
another gateway is up. ``get`` returns
``None`` when every gateway said "not held", and raises
:class:`~tvcfs.errors.BlockUnavailable` (one line naming each gateway's failure)
when none had it and at least one failed.

The store is read-only (the spec has no upload): ``put``, ``put_many`` and ``delete``
raise :class:`ReadOnlyStore`, and it cannot be listed (``iter`` is empty, ``stat``
counts nothing). In a router it is an untrusted, read-only tier behind the local
store. Client: httpx2 (the maintained httpx line that ``huggingface_hub`` uses),
imported when the first store is built. See ``docs/backends.md``, "The IPFS network".
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

from ..encoding.car import MAX_SECTION
from ..encoding.cid import cid_str
from ..errors import BlockUnavailable, TvcfsError
from .base import REMOTE, ReadOnlyStore, StoreBase
from .verify import verify_many

__all__ = ["GatewayStore", "ReadOnlyStore", "parse_gateways"]

RAW_TYPE = "application/vnd.ipld.raw"


def parse_gateways(urls) -> list:
    """``"http://a:8080, https://b"`` or a list of URLs → the list of base URLs (no
    trailing ``/``). Raises :class:`TvcfsError` for an empty list or a URL that is not
    ``http://`` or ``https://``."""
    if isinstance(urls, str):
        urls = urls.replace(",", " ").split()
    out = [u.strip().rstrip("/") for u in (urls or ()) if u and u.strip()]
    if not out:
        raise TvcfsError("the gateway backend needs at least one URL: set TVCFS_GATEWAYS=http://HOST:PORT[,…]")
    for u in out:
        if not u.startswith(("http://", "https://")):
            raise TvcfsError(f"not a gateway URL: {u!r} (expected http://HOST[:PORT] or https://…)")
    return out


class GatewayStore(StoreBase):
    """Blocks read from trustless gateways (see the module docstring).

    ``urls``: base URLs (list, or a comma/space separated string), asked in order;
    ``timeout``: seconds a gateway may take to answer one request (connect, and each
    read of the body); ``deadline``: seconds one whole answer may take, however
    steadily its body trickles in (default ``4 * timeout``); ``connect_timeout``:
    seconds to connect (default 3); ``cooldown``: seconds a gateway that failed is
    passed over while another is up (default 30; a 429 or 503's ``Retry-After`` in
    seconds, up to 300, instead);
    ``threads``: requests in flight in ``get_many`` (default 8); ``max_block``:
    bytes a block may have (default 8 MiB). Raises :class:`TvcfsError` for bad URLs,
    ``ImportError`` naming the extra when httpx2 is missing."""

    capabilities = frozenset({REMOTE})

    def __init__(self, urls, timeout: float = 30.0, connect_timeout: float = 3.0, threads: int = 8,
                 max_block: int = MAX_SECTION, deadline: float | None = None, cooldown: float = 30.0):
        try:
            import httpx2
        except ImportError as e:
            raise ImportError(f"the gateway backend needs httpx2 ({e.name} is missing): "
                              "pip install 'tvcfs[gateway]'") from None
        self.urls = parse_gateways(urls)
        self.name = "gateway"
        self.max_block = max_block
        self.deadline = 4 * timeout if deadline is None else deadline
        self.cooldown = cooldown
        from ..transport.peerscore import Backoff

        # the one back-off rule (tvcfs.transport.peerscore), fixed at ``cooldown`` as the
        # peer tier's is: a gateway that failed is passed over until it runs out
        self._backoff = {u: Backoff(cooldown, cooldown) for u in self.urls}
        self.threads = max(1, threads)
        self._httpx = httpx2
        self._client = httpx2.Client(
            timeout=httpx2.Timeout(timeout, connect=connect_timeout),
            limits=httpx2.Limits(max_connections=max(self.threads, 4) * len(self.urls)),
            headers={"Accept": RAW_TYPE}, follow_redirects=True)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # --- one request -------------------------------------------------------------
    def _ask(self, base: str, cid: bytes, method: str = "GET"):
        """``(data | None, error | None, retry_after | None)`` from one gateway: data
        (verified) on 200, ``(None, None, None)`` for "not held", ``(None, text,
        seconds | None)`` when it could not answer."""
        url = f"{base}/ipfs/{cid_str(cid)}?format=raw"
        give_up = time.monotonic() + self.deadline
        try:
            with self._client.stream(method, url) as r:
                if r.status_code in (404, 410):
                    return None, None, None
                if r.status_code != 200:
                    wait = r.headers.get("retry-after")
                    text = f" (retry after {wait[:40]})" if wait else ""
                    wait = min(float(wait), 300.0) if wait and wait.strip().isdigit() else None
                    return None, f"{base}: HTTP {r.status_code} {r.reason_phrase}{text}", wait
                if method == "HEAD":
                    return b"", None, None
                chunks, n = [], 0
                for chunk in r.iter_bytes():
                    n += len(chunk)
                    if n > self.max_block:
                        return None, f"{base}: block {cid_str(cid)} longer than {self.max_block} bytes", None
                    chunks.append(chunk)
                    if time.monotonic() > give_up:  # each read is bounded, the whole body too
                        return None, (f"{base}: block {cid_str(cid)} still arriving after "
                                      f"{self.deadline:g} s ({n} bytes): gave up"), None
        except self._httpx.TimeoutException:
            return None, f"{base}: no answer in time", None
        except self._httpx.HTTPError as e:
            words = re.sub(r"(?<!^)(?=[A-Z])", " ", type(e).__name__).lower()  # TooManyRedirects → too many redirects
            return None, f"{base}: {words}: {e}", None
        data = b"".join(chunks)
        if verify_many([(cid, data)])[1]:
            return None, f"{base}: block {cid_str(cid)} does not hash to its CID (corrupt answer)", None
        return data, None, None

    def _first(self, cid: bytes, method: str = "GET"):
        """Ask the gateways in order; one that failed within its cooldown is passed
        over (and named in the error) while another is up, so a dead or silent
        gateway costs one timeout, not one per block."""
        errors = []
        now = time.monotonic()
        with self._lock:
            down = {u: (b.remaining(now), b.reason) for u, b in self._backoff.items() if b.remaining(now) > 0}
        asked = [u for u in self.urls if u not in down] or self.urls  # all down: ask them all
        for base in self.urls:
            if base not in asked:
                errors.append(f"{down[base][1]} (passed over for {down[base][0]:.0f} s more)")
                continue
            data, err, wait = self._ask(base, cid, method)
            with self._lock:
                if err:
                    self._backoff[base].failed(err, wait=wait)
                else:
                    self._backoff[base].succeeded()
            if data is not None:
                return data
            if err:
                errors.append(err)
        if errors:
            raise BlockUnavailable(f"block {cid_str(cid)} not found and some gateways could not answer: "
                                   + "; ".join(errors), cid=cid)
        return None

    # --- BlockStore ----------------------------------------------------------------
    def get(self, cid: bytes) -> bytes | None:
        """The verified block, ``None`` if every gateway said "not held". Raises
        :class:`BlockUnavailable`."""
        return self._first(bytes(cid))

    def has(self, cid: bytes) -> bool:
        """``HEAD /ipfs/{cid}?format=raw`` of each gateway in turn (the body is not
        read, so not verified). Raises :class:`BlockUnavailable`."""
        return self._first(bytes(cid), "HEAD") is not None

    def get_many(self, cids: Iterable[bytes]) -> Iterator[tuple[bytes, bytes | None]]:
        """Blocks in input order, ``threads`` requests in flight; raises
        :class:`BlockUnavailable` (after all have been asked) when a block was not
        found and some gateway could not answer for it."""
        cids = [bytes(c) for c in cids]
        if len(cids) <= 1:
            yield from ((c, self.get(c)) for c in cids)
            return
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="tvcfs-gateway")

        def one(c):
            try:
                return self._first(c), None
            except BlockUnavailable as e:
                return None, e

        results = list(self._pool.map(one, cids))
        failed = [e for _, e in results if e is not None]
        if failed:
            more = f" (and {len(failed) - 1} more blocks)" if len(failed) > 1 else ""
            raise BlockUnavailable(f"{failed[0]}{more}", cid=failed[0].cid)
        for c, (d, _) in zip(cids, results):
            yield c, d

    def put(self, cid: bytes, block) -> bool:
        """Always raises :class:`ReadOnlyStore`: the gateway store is read-only."""
        raise ReadOnlyStore(f"the gateway store is read-only ({', '.join(self.urls)}): "
                            "write to the local store, or serve it with tvcfs serve --http")

    def put_many(self, blocks) -> int:
        """Always raises :class:`ReadOnlyStore`: the gateway store is read-only."""
        return self.put(b"", b"")

    def delete(self, cid: bytes) -> bool:
        """Always raises :class:`ReadOnlyStore`: the gateway store is read-only."""
        return self.put(cid, b"")

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def stat(self) -> dict:
        """``{"blocks": 0, "bytes": 0}``: a gateway's blocks are not counted."""
        return {"blocks": 0, "bytes": 0}

    def close(self) -> None:
        """Stop the worker threads (pending requests cancelled) and close the HTTP client."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

