"""TLS 1.3 over TCP (:class:`TLSStream`): the fallback carrying the same sessions as QUIC.

The node's Ed25519 certificate (see :mod:`.identity`) is used as is; the client
accepts any certificate at the TLS layer and then pins the server's peer ID from
the certificate's key, exactly as over QUIC.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import tempfile
from contextlib import asynccontextmanager, contextmanager
from typing import AsyncIterator, Awaitable, Callable

import trio

from .identity import NodeIdentity, PeerIdMismatch, peer_id_from_certificate_der
from .malloc import tune_malloc
from .quic import ALPN, TransportError, aclose_quietly, run_stream_handler

__all__ = ["TLSStream", "connect_tcp", "serve_tcp", "server_ssl_context"]

_RECORD = 16384  # largest TLS plaintext record (RFC 8446 §5.1): one read's worth
_RECV = 1 << 20  # ciphertext read from the socket per receive


def server_ssl_context(identity: NodeIdentity) -> ssl.SSLContext:
    """A TLS 1.3-only server context holding ``identity``'s certificate and key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([ALPN])
    # the stdlib loads keys from files only: a private temp dir, removed at once
    with tempfile.TemporaryDirectory() as d:
        cert = os.path.join(d, "cert.pem")
        key = os.path.join(d, "key.pem")
        with open(os.open(cert, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(identity.certificate_pem())
        with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(identity.private_key_pem())
        ctx.load_cert_chain(cert, key)
    return ctx


class TLSStream(trio.abc.Stream):
    """TLS over a trio TCP stream, decrypting in bulk.

    Like ``trio.SSLStream`` (an ``ssl.SSLObject`` between two ``MemoryBIO``), but a
    receive reads up to 1 MiB of ciphertext from the socket (into one reused
    buffer, when the transport is a ``trio.SocketStream``) and decrypts every
    complete record in it before returning (``trio.SSLStream`` returns one
    16 KiB record per call, each a trip through the scheduler), and
    :meth:`receive_chunks` hands over those records' plaintexts without joining
    them; :meth:`receive_into` decrypts records straight into a caller's buffer
    (a block's own, see :meth:`.protocol.FrameDecoder.receive_buffer`: no
    plaintext ``bytes`` per record, no join). Sends encrypt the whole buffer and write the records in one
    ``send_all``. TLS has no half-close: ``aclose`` sends close_notify.
    Errors: ``trio.BrokenResourceError`` (its ``__cause__`` the ``ssl`` error).
    """

    def __init__(self, transport_stream, ctx: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None):
        tune_malloc()  # record and block buffers: reuse freed heap (see .malloc)
        self.transport_stream = transport_stream
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=server_side,
                                 server_hostname=server_hostname)
        self._send_lock = trio.Lock()
        self._eof = False
        self._closed = False
        self._leftover = b""
        self.peer_id: bytes | None = None
        # a plain TCP socket: receive ciphertext into one reused buffer (no 1 MiB
        # allocation per receive); any other stream: its receive_some
        self._sock = getattr(transport_stream, "socket", None)
        if not hasattr(self._sock, "recv_into"):
            self._sock = None
        self._rbuf = memoryview(bytearray(_RECV)) if self._sock is not None else None

    def getpeercert(self, binary_form: bool = False):
        """The peer's certificate (``binary_form``: DER bytes), as
        :meth:`ssl.SSLObject.getpeercert`."""
        return self._obj.getpeercert(binary_form)

    def selected_alpn_protocol(self):
        """The ALPN protocol negotiated, or ``None``."""
        return self._obj.selected_alpn_protocol()

    async def _flush(self) -> None:
        # read the BIO under the lock: records must reach the socket in order
        async with self._send_lock:
            data = self._out.read()
            if data:
                await self.transport_stream.send_all(data)

    async def _fill(self) -> bool:
        if self._sock is None:
            data = await self.transport_stream.receive_some(_RECV)
        else:
            try:
                n = await self._sock.recv_into(self._rbuf)
            except OSError as e:  # as trio.SocketStream.receive_some translates them
                if e.errno in (errno.EBADF, errno.ENOTSOCK):
                    raise trio.ClosedResourceError("this socket was already closed") from None
                raise trio.BrokenResourceError(f"socket connection broken: {e}") from e
            data = self._rbuf[:n]
        if not len(data):
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    async def do_handshake(self) -> None:
        """Run the TLS handshake. Raises ``trio.BrokenResourceError``."""
        while True:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise trio.BrokenResourceError("connection closed during the TLS handshake")
                continue
            except ssl.SSLError as e:
                try:
                    await self._flush()  # the alert, if any
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                raise trio.BrokenResourceError(f"TLS handshake failed: {e}") from e
            await self._flush()
            return

    @contextmanager
    def _decrypting(self):
        """Around reads of decrypted records: no complete record left ends the
        reads quietly, close_notify marks the end of the stream, any other TLS
        error is ``trio.BrokenResourceError``."""
        try:
            yield
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._eof = True
        except ssl.SSLError as e:
            raise trio.BrokenResourceError(f"TLS error: {e}") from e

    def _read_records(self, out: list) -> None:
        read = self._obj.read
        with self._decrypting():
            while True:
                data = read(_RECORD)
                if not data:
                    self._eof = True
                    return
                out.append(data)

    def _read_into(self, view) -> int:
        """Decrypt buffered records into ``view`` until it is full or no complete
        record is left; the number of bytes written."""
        read = self._obj.read
        size = len(view)
        got = 0
        with self._decrypting():
            while got < size:
                k = read(size - got, view[got:])
                if not k:
                    self._eof = True
                    break
                got += k
        return got

    async def _until_plaintext(self, decrypt) -> None:
        """Call ``decrypt()`` (reads of the complete records there are; returns how
        much plaintext the caller holds now) until it returns non-zero or the stream
        ends, reading ciphertext from the socket in between."""
        while True:
            got = decrypt()
            if self._out.pending:
                await self._flush()  # e.g. post-handshake messages
            if got or self._eof:
                break
            if not await self._fill():
                decrypt()
                self._eof = True
                break
        await trio.lowlevel.checkpoint()

    async def receive_into(self, buffer) -> int:
        """Decrypt received plaintext straight into ``buffer`` (any writable buffer of
        bytes), waiting until at least one byte is available; returns the number of
        bytes written (up to ``len(buffer)``), 0 at the end of the stream. Errors as
        :meth:`receive_chunks`."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        view = memoryview(buffer)
        got = 0
        if self._leftover:
            got = min(len(self._leftover), len(view))
            view[:got] = self._leftover[:got]
            self._leftover = self._leftover[got:]

        def decrypt() -> int:
            nonlocal got
            if got < len(view):
                got += self._read_into(view[got:])
            return got

        await self._until_plaintext(decrypt)
        return got

    async def receive_chunks(self) -> list:
        """The plaintext of every complete record available (waiting for at least
        one); ``[]`` at the end of the stream."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        out: list = []
        if self._leftover:
            out.append(self._leftover)
            self._leftover = b""

        def decrypt() -> int:
            self._read_records(out)
            return len(out)

        await self._until_plaintext(decrypt)
        return out

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Decrypted bytes (at most ``max_bytes``; the rest kept for the next call); ``b""`` at
        end of stream. Raises ``trio.ClosedResourceError`` after :meth:`aclose`."""
        data = b"".join(await self.receive_chunks())
        if max_bytes is not None and len(data) > max_bytes:
            data, self._leftover = data[:max_bytes], data[max_bytes:]
        return data

    async def send_all(self, data) -> None:
        """Encrypt and send ``data``. Raises ``trio.ClosedResourceError`` after :meth:`aclose`,
        ``trio.BrokenResourceError`` for a TLS error."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        try:
            self._obj.write(data)
        except ssl.SSLError as e:
            raise trio.BrokenResourceError(f"TLS error: {e}") from e
        await self._flush()

    async def send_parts(self, parts) -> None:
        """``send_all`` of several buffers, written to the socket together."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        try:
            for data in parts:
                if len(data):
                    self._obj.write(data)
        except ssl.SSLError as e:
            raise trio.BrokenResourceError(f"TLS error: {e}") from e
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the underlying stream can take more bytes."""
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send the TLS close_notify (best effort) and close the underlying stream; again does
        nothing."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            try:
                self._obj.unwrap()
            except ssl.SSLError:
                pass
            with trio.move_on_after(1):
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.transport_stream.aclose()


def _client_ssl_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # replaced by the peer-ID pin below
    ctx.set_alpn_protocols([ALPN])
    return ctx


async def serve_tcp(
    handler: Callable[["TLSStream"], Awaitable[None]],
    host: str,
    port: int,
    *,
    identity: NodeIdentity,
    listeners=None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve TLS-over-TCP on ``host:port``; ``await handler(ssl_stream)`` per connection.

    Start value (with ``nursery.start``): the bound ``(host, port)``. A failed TLS
    handshake or a handler error only ends that connection. ``listeners``: already
    open ``trio.SocketListener`` objects to use instead of binding ``host:port``.
    """
    ctx = server_ssl_context(identity)
    if listeners is None:
        listeners = await trio.open_tcp_listeners(port, host=host)

    async def run(tcp):
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = TLSStream(tcp, ctx, server_side=True)
        try:
            with trio.fail_after(10):
                await stream.do_handshake()
        except trio.TooSlowError:
            await stream.aclose()
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()
            return
        try:
            # a client killed mid-transfer (reader and writer both broken) or a
            # handler error ends this connection only
            await run_stream_handler(handler, stream, lambda: None)
        finally:
            await aclose_quietly(stream)

    async with trio.open_nursery() as nursery:
        task_status.started(listeners[0].socket.getsockname()[:2])
        await trio.serve_listeners(run, listeners, handler_nursery=nursery)


@asynccontextmanager
async def connect_tcp(
    host: str,
    port: int,
    *,
    expected_peer_id: bytes | None = None,
    connect_timeout: float = 5.0,
) -> AsyncIterator["TLSStream"]:
    """Open a TLS 1.3 stream to ``host:port`` and pin the server's peer ID.

    The yielded stream has an extra attribute ``peer_id`` (bytes). Raises
    :class:`~.quic.TransportError` (connection refused, timeout, TLS failure) or
    :class:`~.identity.PeerIdMismatch`.
    """
    stream = None
    try:
        with trio.fail_after(connect_timeout):
            tcp = await trio.open_tcp_stream(host, port)
            stream = TLSStream(tcp, _client_ssl_context(), server_side=False)
            await stream.do_handshake()
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as e:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.transport_stream.aclose()
        raise TransportError(f"TLS/TCP connection to {host}:{port} failed: {e}") from None
    try:
        der = stream.getpeercert(binary_form=True)
        peer = peer_id_from_certificate_der(der) if der else None
        if expected_peer_id is not None and peer != expected_peer_id:
            raise PeerIdMismatch(expected_peer_id, peer or b"")
        stream.peer_id = peer
        yield stream
    finally:
        await aclose_quietly(stream)
