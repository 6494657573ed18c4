"""TLS 1.3 over TCP (trio.SSLStream): the fallback carrying the same sessions as QUIC.

The node's Ed25519 certificate (see :mod:`.identity`) is used as is; the client
accepts any certificate at the TLS layer and then pins the server's peer ID from
the certificate's key, exactly as over QUIC.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

import trio

from .identity import NodeIdentity, PeerIdMismatch, peer_id_from_certificate_der
from .quic import ALPN, TransportError

__all__ = ["connect_tcp", "serve_tcp", "server_ssl_context"]


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


def _client_ssl_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # replaced by the peer-ID pin below
    ctx.set_alpn_protocols([ALPN])
    return ctx


async def serve_tcp(
    handler: Callable[[trio.SSLStream], Awaitable[None]],
    host: str,
    port: int,
    *,
    identity: NodeIdentity,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve TLS-over-TCP on ``host:port``; ``await handler(ssl_stream)`` per connection.

    Start value (with ``nursery.start``): the bound ``(host, port)``. A failed TLS
    handshake or a handler error only ends that connection.
    """
    ctx = server_ssl_context(identity)
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def run(tcp):
        stream = trio.SSLStream(tcp, ctx, server_side=True, https_compatible=False)
        try:
            await stream.do_handshake()
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.move_on_after(1) as s:
                s.shield = True
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

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
) -> AsyncIterator[trio.SSLStream]:
    """Open a TLS 1.3 stream to ``host:port`` and pin the server's peer ID.

    The yielded stream has an extra attribute ``peer_id`` (bytes). Raises
    :class:`~.quic.TransportError` (connection refused, timeout, TLS failure) or
    :class:`~.identity.PeerIdMismatch`.
    """
    try:
        with trio.fail_after(connect_timeout):
            tcp = await trio.open_tcp_stream(host, port)
            stream = trio.SSLStream(tcp, _client_ssl_context(), server_hostname=None)
            await stream.do_handshake()
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as e:
        raise TransportError(f"TLS/TCP connection to {host}:{port} failed: {e}") from None
    try:
        der = stream.getpeercert(binary_form=True)
        peer = peer_id_from_certificate_der(der) if der else None
        if expected_peer_id is not None and peer != expected_peer_id:
            raise PeerIdMismatch(expected_peer_id, peer or b"")
        stream.peer_id = peer
        yield stream
    finally:
        with trio.move_on_after(1) as s:
            s.shield = True
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
