"""Message I/O over any trio byte stream (QUIC stream or TLS-over-TCP)."""

from __future__ import annotations

import trio

from .protocol import DEFAULT_LIMITS, FrameDecoder, Limits, Message, ProtocolError, encode

__all__ = ["MessageChannel"]


class MessageChannel:
    """Send and receive :mod:`.protocol` messages on ``stream``.

    ``send(msg)`` is serialised by a lock (frames never interleave);
    ``receive()`` returns the next message, or None at a clean end of stream.
    Raises :class:`~.protocol.ProtocolError` on malformed/oversized input or a stream
    ending inside a frame, and the stream's own errors (``trio.BrokenResourceError``).
    ``bytes_in`` / ``bytes_out`` count framed bytes.
    """

    def __init__(self, stream, limits: Limits = DEFAULT_LIMITS, recv_size: int = 1 << 20):
        self.stream = stream
        self.limits = limits
        self._dec = FrameDecoder(limits)
        self._lock = trio.Lock()
        self._recv_size = recv_size
        self.bytes_out = 0

    @property
    def bytes_in(self) -> int:
        return self._dec.bytes_in

    async def send(self, msg: Message) -> None:
        data = encode(msg)
        async with self._lock:
            await self.stream.send_all(data)
        self.bytes_out += len(data)

    async def send_many(self, msgs) -> None:
        """Send several messages in one write."""
        data = b"".join(encode(m) for m in msgs)
        async with self._lock:
            await self.stream.send_all(data)
        self.bytes_out += len(data)

    async def receive(self) -> Message | None:
        while True:
            msg = self._dec.next()
            if msg is not None:
                return msg
            data = await self.stream.receive_some(self._recv_size)
            if not data:
                if self._dec.buffered:
                    raise ProtocolError("stream ended inside a message")
                return None
            self._dec.feed(data)

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
