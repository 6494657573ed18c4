"""Message I/O over any trio byte stream (QUIC stream or TLS-over-TCP)."""

from __future__ import annotations

from collections import deque

import trio

from .protocol import (DEFAULT_LIMITS, FrameDecoder, Limits, Message, ProtocolError,
                       block_frame_header, encode)
from .quic import aclose_quietly

__all__ = ["MessageChannel"]

_HEAD_READ = 16384  # bytes read between blocks with receive_into (one TLS record)


class MessageChannel:
    """Send and receive :mod:`.protocol` messages on ``stream``.

    ``send(msg)`` is serialised by a lock (frames never interleave);
    ``receive()`` returns the next message, or None at a clean end of stream.
    Raises :class:`~.protocol.ProtocolError` on malformed/oversized input or a stream
    ending inside a frame, and the stream's own errors (``trio.BrokenResourceError``).
    ``bytes_in`` / ``bytes_out`` count framed bytes. A stream with
    ``receive_into`` (:class:`~.tcp.TLSStream`) fills each large received block's
    buffer directly (:meth:`~.protocol.FrameDecoder.receive_buffer`, with
    ``zero_copy``).
    """

    def __init__(self, stream, limits: Limits = DEFAULT_LIMITS, recv_size: int = 1 << 20,
                 zero_copy: bool = False):
        self.stream = stream
        self.limits = limits
        self._dec = FrameDecoder(limits, zero_copy=zero_copy)
        self._lock = trio.Lock()
        self._recv_size = recv_size
        self.bytes_out = 0
        # QUIC streams hand over the engine's chunks as they are (no joining copy)
        self._receive = getattr(stream, "receive_chunks", None)
        # TLS/TCP decrypts a block's bytes straight into the block's own buffer
        self._receive_into = getattr(stream, "receive_into", None)
        self._head: memoryview | None = None
        self._pending: deque = deque()

    def use_decoder(self, decoder: FrameDecoder) -> None:
        """Decode with ``decoder`` from now on (a protocol session's own, so that
        the session and this channel's :meth:`receive` share one decoding state)."""
        decoder.bytes_in += self._dec.bytes_in
        self._dec = decoder

    @property
    def zero_copy(self) -> bool:
        """Whether a received large ``Block``'s ``data`` is a :class:`~.protocol.BlockParts`
        (the chunks it arrived in, not joined; see :class:`~.protocol.FrameDecoder`)
        instead of ``bytes``."""
        return self._dec.zero_copy

    @zero_copy.setter
    def zero_copy(self, on: bool) -> None:
        self._dec.zero_copy = on

    @property
    def bytes_in(self) -> int:
        """Framed bytes received so far."""
        return self._dec.bytes_in

    async def send(self, msg: Message) -> None:
        """Encode ``msg`` and send it whole (concurrent senders are serialised); counts
        ``bytes_out``. Raises the stream's errors (``trio.BrokenResourceError``,
        :class:`~.quic.QuicConnectionLost`...)."""
        data = encode(msg)
        async with self._lock:
            await self.stream.send_all(data)
        self.bytes_out += len(data)

    async def send_block(self, cid: bytes, data) -> None:
        """Send a ``Block`` without copying ``data`` (any buffer, e.g. a zero-copy
        LMDB view): header and data go to the stream as two writes, so ``data``
        must stay valid only until this returns."""
        header = block_frame_header(cid, len(data))
        async with self._lock:
            send_parts = getattr(self.stream, "send_parts", None)
            if send_parts is not None:
                await send_parts((header, data))
            else:
                await self.stream.send_all(header)
                await self.stream.send_all(data)
        self.bytes_out += len(header) + len(data)

    async def send_parts(self, parts) -> None:
        """Send already-encoded buffers (frames; a block's header and data) in
        order, in one write where the stream can."""
        n = sum(len(p) for p in parts)
        async with self._lock:
            send_parts = getattr(self.stream, "send_parts", None)
            if send_parts is not None:
                await send_parts(parts)
            else:
                for p in parts:
                    await self.stream.send_all(p)
        self.bytes_out += n

    async def send_many(self, msgs) -> None:
        """Send several messages in one write."""
        data = b"".join(encode(m) for m in msgs)
        async with self._lock:
            await self.stream.send_all(data)
        self.bytes_out += len(data)

    async def receive(self) -> Message | None:
        """The next message, or ``None`` once the peer closed the stream at a frame boundary.
        Raises :class:`~.protocol.ProtocolError` for a malformed frame or one cut off by the
        end of the stream."""
        while True:
            msg = self._dec.next()
            if msg is not None:
                return msg
            pending = self._pending
            if pending:
                # one chunk at a time, decoding in between: a large frame that
                # starts in a chunk is then assembled straight from the next ones
                self._dec.feed(pending.popleft())
                continue
            if self._receive_into is not None and self._dec.zero_copy:
                into = self._dec.receive_buffer()
                if into is not None:
                    n = await self._receive_into(into)
                    if not n:
                        raise ProtocolError("stream ended inside a message")
                    self._dec.filled(n)
                    continue
                # between blocks: read little, so that the next block's bytes go
                # to its own buffer as soon as its header is decoded
                if self._head is None:
                    self._head = memoryview(bytearray(_HEAD_READ))
                n = await self._receive_into(self._head)
                chunks = [bytes(self._head[:n])] if n else []
            elif self._receive is not None:
                chunks = await self._receive()
            else:
                data = await self.stream.receive_some(self._recv_size)
                chunks = [data] if data else []
            if not chunks:
                if self._dec.buffered:
                    raise ProtocolError("stream ended inside a message")
                return None
            pending.extend(chunks)

    async def aclose(self) -> None:
        """Close the underlying stream, ignoring errors from a stream already broken."""
        await aclose_quietly(self.stream)
