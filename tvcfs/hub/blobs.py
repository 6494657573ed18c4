"""The hub's blob responder: large files by ``os.sendfile`` from the store's data file
(docs/hub.md, "Large files: the blob port").

As the Hugging Face Hub does for LFS files, ``resolve/{rev}/{path}`` of a file of at
least the blob threshold answers ``302`` to ``http://HOST:BLOBPORT/blobs/{file CID}``
with an expiring signed token in the query (``repo``, ``exp``, ``sig``: HMAC-SHA256 of
the CID, the repository and the expiry under the hub's secret ``ROOT/secret``), so
the blob URL reads exactly that file of that repository until it expires, whoever
holds it, and nothing else; ``huggingface_hub`` reads the file's metadata from the
302 (``X-Repo-Commit``, ``X-Linked-Etag``, ``X-Linked-Size``, ``Location``) and gets
the body from the blob URL.

The responder is a minimal HTTP/1.1 server (``GET``/``HEAD``, one ``Range``,
keep-alive, timeouts) on the hub's trio loop. A body is sent leaf by leaf inside one
read snapshot of the store: each leaf is first checked (the store's at-rest check,
once per CID per process), then a raw leaf in the map goes out with ``os.sendfile``
from ``data.mdb`` at its offset (no copy in user space), anything else (a packed or
inline leaf, a store without map offsets) as its decoded bytes with a normal send.
A leaf that fails its check ends the connection (the client sees a short body,
never wrong bytes). The snapshot stays open until the client sends its next request
on the connection or the connection ends (and at least until the socket's send
queue is empty, ``SIOCOUTQ``), so no page a client has not read yet can be reused by
a later write.
``GET /stats`` gives this process's counters (JSON).
"""

from __future__ import annotations

import hmac
import json
import os
import time
from urllib.parse import parse_qs, quote, urlsplit

import trio

from ..encoding.cid import cid_from_str, cid_str
from ..errors import BlockNotFound, TvcfsError
from ..store.base import view as store_view
from .http import parse_range

BLOB_TTL = 3600          # seconds a signed blob URL stays valid
HEAD_LIMIT = 16 * 1024   # bytes of a request head (431 beyond)
BATCH = 8                # leaves checked and located per worker-thread trip
_REASONS = {200: "OK", 206: "Partial Content", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 416: "Range Not Satisfiable",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


class BlobSigner:
    """Signs and checks blob URLs with the hub's secret: ``sign(*parts) -> hex`` is
    :meth:`tvcfs.hub.core.Hub.sign` (HMAC-SHA256 under ``ROOT/secret``, shared by every
    process of the hub; the parts start with ``"blob"``, so no upload signature opens
    a blob or the reverse)."""

    def __init__(self, sign):
        self.sign = sign

    def query(self, repo_id: str, cid: str, ttl: float = BLOB_TTL, now: float | None = None) -> str:
        """The query string (``repo=…&exp=…&sig=…``) granting ``GET /blobs/{cid}`` of
        file ``cid`` (CID text) of ``repo_id`` for ``ttl`` seconds."""
        exp = int((time.time() if now is None else now) + ttl)
        return f"repo={quote(repo_id, safe='/')}&exp={exp}&sig={self.sign('blob', repo_id, cid, exp)}"

    def check(self, repo_id: str, cid: str, exp: str, sig: str, now: float | None = None) -> str | None:
        """``None`` when ``sig`` grants file ``cid`` of ``repo_id`` until ``exp`` (unix
        seconds, text) and that is not past; else why not (one line)."""
        try:
            e = int(exp)
        except ValueError:
            return "malformed blob token"
        if not hmac.compare_digest(self.sign("blob", repo_id, cid, e), sig):
            return "invalid blob token (ask the hub's resolve URL for a new one)"
        if e < (time.time() if now is None else now):
            return "expired blob token (ask the hub's resolve URL for a new one)"
        return None


class _Close(Exception):
    """End the connection now (after what was sent)."""


class BlobServer:
    """The responder of one hub process. ``hub``: the :class:`~tvcfs.hub.core.Hub`;
    ``signer``: its :class:`BlobSigner`; ``index_of(repo_id, cid) -> FileIndex``
    (cached by the app); ``read_timeout``: seconds a client may take to send a request
    head or to accept more body bytes before the connection is closed; ``keep_alive``:
    seconds an idle keep-alive connection is kept. :attr:`stats`: counters of this
    process (``requests``, ``sendfile_bytes``, ``sendfile_leaves``, ``copied_bytes``,
    ``copied_leaves``, ``aborted``)."""

    def __init__(self, hub, signer: BlobSigner, index_of, read_timeout: float = 30.0, keep_alive: float = 5.0):
        self.hub, self.signer, self.index_of = hub, signer, index_of
        self.read_timeout, self.keep_alive = read_timeout, keep_alive
        self.stats = {"requests": 0, "sendfile_bytes": 0, "sendfile_leaves": 0, "copied_bytes": 0,
                      "copied_leaves": 0, "aborted": 0, "snapshots_held": 0}

    async def serve(self, listeners, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve connections from ``listeners`` (trio listeners) until cancelled."""
        await trio.serve_listeners(self.handle, listeners, task_status=task_status)

    # --- one connection --------------------------------------------------------------
    async def handle(self, stream) -> None:
        """Serve one connection: HTTP/1.1 requests for signed blob URLs (keep-alive), until the
        client closes or times out (``read_timeout``, ``keep_alive`` seconds)."""
        buf = bytearray()
        first = True
        held: list = []  # snapshots of bodies the client may not have read yet
        try:
            while True:
                with trio.move_on_after(self.read_timeout if first or buf else self.keep_alive) as scope:
                    head = await self._read_head(stream, buf)
                # a new request (HTTP/1.1 clients do not pipeline) means the previous
                # body was read: its pages may be reused now
                self._release(held)
                if scope.cancelled_caught or head is None:
                    return
                first = False
                self.stats["requests"] += 1
                keep = await self._answer(stream, *head, held=held)
                if not keep:
                    return
        except (_Close, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            return
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            self._release(held)

    async def _read_head(self, stream, buf: bytearray):
        """``(method, target, headers, keep_alive)`` of the next request (its head
        consumed from ``buf``), or ``None`` when the client closed the connection."""
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > HEAD_LIMIT:
                await self._send_error(stream, 431, "request head too large", False)
                raise _Close
            chunk = await stream.receive_some(65536)
            if not chunk:
                return None
            buf += chunk
        raw = bytes(buf[:end]).decode("latin-1")
        del buf[:end + 4]
        line, *fields = raw.split("\r\n")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send_error(stream, 400, "malformed request line", False)
            raise _Close
        headers = {}
        for f in fields:
            name, sep, value = f.partition(":")
            if not sep:
                await self._send_error(stream, 400, "malformed header line", False)
                raise _Close
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") or headers.get("content-length", "0") not in ("", "0"):
            await self._send_error(stream, 400, "the blob port takes no request bodies", False)
            raise _Close
        conn = headers.get("connection", "").lower()
        keep = "close" not in conn and (parts[2] == "HTTP/1.1" or "keep-alive" in conn)
        return parts[0], parts[1], headers, keep

    async def _send_head(self, stream, status: int, headers: dict, keep: bool) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append("Connection: keep-alive" if keep else "Connection: close")
        with trio.fail_after(self.read_timeout):
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def _send_error(self, stream, status: int, message: str, keep: bool, head_only: bool = False,
                          extra: dict | None = None) -> bool:
        body = b"" if head_only else json.dumps({"error": message}).encode()
        await self._send_head(stream, status, {"Content-Type": "application/json",
                                               "Content-Length": str(len(body)), **(extra or {})}, keep)
        if body:
            with trio.fail_after(self.read_timeout):
                await stream.send_all(body)
        return keep

    async def _answer(self, stream, method: str, target: str, headers: dict, keep: bool,
                      held: list | None = None) -> bool:
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return await self._send_error(stream, 405, f"{method} is not served on the blob port", keep,
                                          extra={"Allow": "GET, HEAD"})
        u = urlsplit(target)
        if u.path == "/stats":
            body = json.dumps(self.stats).encode()
            await self._send_head(stream, 200, {"Content-Type": "application/json",
                                                "Content-Length": str(len(body))}, keep)
            if not head:
                await stream.send_all(body)
            return keep
        parts = u.path.split("/")
        if len(parts) != 3 or parts[1] != "blobs":
            return await self._send_error(stream, 404, "expected /blobs/{file CID}?repo=…&exp=…&sig=…", keep, head)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        text = parts[2]
        try:
            cid = cid_from_str(text)
        except (TvcfsError, ValueError):
            return await self._send_error(stream, 404, f"{text} is not a CID", keep, head)
        repo_id = q.get("repo", "")
        why = self.signer.check(repo_id, text, q.get("exp", ""), q.get("sig", ""))
        if why:
            return await self._send_error(stream, 403, why, keep, head)
        try:
            repo = self.hub.repo(repo_id)
            idx = await trio.to_thread.run_sync(self.index_of, repo_id, cid)
        except TvcfsError as e:  # the repository was deleted, the file is gone
            return await self._send_error(stream, 404, str(e), keep, head)
        etag = f'"{cid_str(cid)}"'
        size, start, end, status = idx.size, 0, idx.size, 200
        out = {"Content-Type": "application/octet-stream", "ETag": etag, "Accept-Ranges": "bytes",
               "Cache-Control": "private, max-age=31536000, immutable"}
        rng = headers.get("range")
        if rng and headers.get("if-range", etag) == etag:
            parsed = parse_range(rng, size)
            if parsed is None:
                return await self._send_error(stream, 416, f"range {rng} is outside the file of {size} bytes",
                                              keep, head, {"Content-Range": f"bytes */{size}"})
            if parsed is not False:
                (start, end), status = parsed, 206
                out["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if headers.get("if-none-match") == etag and status == 200:
            await self._send_head(stream, 304, {"ETag": etag}, keep)
            return keep
        out["Content-Length"] = str(end - start)
        await self._send_head(stream, status, out, keep)
        if not head:
            await self._send_body(stream, repo, idx, start, end, held)
        return keep

    def _release(self, held: list) -> None:
        """Close the snapshots in ``held`` (store read views' context managers) and
        empty it."""
        while held:
            held.pop().__exit__(None, None, None)
            self.stats["snapshots_held"] -= 1

    # --- the body ----------------------------------------------------------------------
    async def _send_body(self, stream, repo, idx, start: int, end: int, held: list | None = None) -> None:
        """Bytes ``[start, end)`` of the file of ``idx``, leaf by leaf, in one snapshot
        of ``repo``'s store. Raises :class:`_Close` (after counting an abort) when a
        leaf cannot be read or fails its check: the body is then short.

        ``held``: the connection's list of snapshots to keep open after the body was
        sent (the caller releases them when the client sends its next request or the
        connection ends): ``sendfile`` queues references to the file's pages, and on
        loopback they stay in the receiver's queue until the client reads them, after
        the send queue is empty; an open snapshot keeps LMDB from reusing those pages.
        Without it the snapshot closes once the send queue is empty."""
        blocks = repo.blocks
        span_of = getattr(blocks, "file_span", None)
        sock = stream.socket
        ctx = store_view(blocks)
        v = await trio.to_thread.run_sync(ctx.__enter__)
        try:
            def get(c):
                b = v.get(c)
                if b is None:
                    raise BlockNotFound(c)
                return b

            def leaves(batch):  # checked (the view verifies) and located, in a worker thread
                out = []
                for i in batch:
                    data = idx.leaf_data(get, i)
                    out.append((i, data, span_of(data) if span_of is not None else None))
                return out

            todo = idx.leaf_range(start, end - start)
            for b in range(0, len(todo), BATCH):
                try:
                    got = await trio.to_thread.run_sync(leaves, todo[b:b + BATCH])
                except TvcfsError:
                    self.stats["aborted"] += 1
                    raise _Close from None
                for i, data, where in got:
                    s = idx.starts[i]
                    lo, hi = max(start - s, 0), min(end - s, idx.sizes[i])
                    if where is not None:
                        await self._sendfile(sock, where[0], where[1] + lo, hi - lo)
                        self.stats["sendfile_bytes"] += hi - lo
                        self.stats["sendfile_leaves"] += 1
                    else:
                        with trio.fail_after(self.read_timeout):
                            await stream.send_all(memoryview(data)[lo:hi])
                        self.stats["copied_bytes"] += hi - lo
                        self.stats["copied_leaves"] += 1
            await self._drained(sock)
        finally:
            if held is not None:
                held.append(ctx)
                self.stats["snapshots_held"] += 1
            else:
                ctx.__exit__(None, None, None)

    async def _sendfile(self, sock, fd: int, offset: int, count: int) -> None:
        """``os.sendfile`` ``count`` bytes of ``fd`` from ``offset`` to the non-blocking
        trio socket ``sock``, waiting for it to be writable (at most
        :attr:`read_timeout` seconds without progress: then :class:`_Close`)."""
        out = sock.fileno()
        while count > 0:
            try:
                n = os.sendfile(out, fd, offset, count)
            except BlockingIOError:
                with trio.move_on_after(self.read_timeout) as scope:
                    await trio.lowlevel.wait_writable(sock)
                if scope.cancelled_caught:
                    raise _Close from None
                continue
            if n == 0:
                raise _Close
            offset += n
            count -= n
            await trio.lowlevel.checkpoint()

    async def _drained(self, sock) -> None:
        """Wait until ``sock`` has no unsent or unacknowledged bytes (``SIOCOUTQ``) or
        :attr:`read_timeout` passed: ``sendfile`` queues references to the file's pages,
        which must not be reused before they left."""
        import fcntl
        import struct
        import termios

        deadline = trio.current_time() + self.read_timeout
        delay = 0.0005
        while trio.current_time() < deadline:
            try:
                left = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            except OSError:
                return
            if left == 0:
                return
            await trio.sleep(delay)
            delay = min(delay * 2, 0.05)
        raise _Close


def blob_url(base: str, repo_id: str, cid: str, signer: BlobSigner, ttl: float = BLOB_TTL) -> str:
    """The signed blob URL of file ``cid`` of ``repo_id`` under ``base``
    (``http://HOST:PORT``)."""
    return f"{base}/blobs/{cid}?{signer.query(repo_id, cid, ttl)}"
