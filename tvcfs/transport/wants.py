"""Multiplexed client session: many want-list entries and DAG requests in flight at once.

:class:`~.client.RemoteSession` issues one request at a time and reads its answer
before the next, which suits clone/fetch/push. A lazy mount needs the opposite:
foreground wants sent while bulk answers are streaming, cancels, several DAG
requests outstanding, answers arriving in the server's priority order. A
:class:`MuxSession` takes over a started ``RemoteSession``'s message channel: the
caller sends requests at any time (``send_wants``, ``cancel_wants``,
``request_range``, ``cancel_request``), and :meth:`MuxSession.run` reads every
answer and hands it to a handler object:

* ``on_block(mux, cid, data)`` – a ``Block`` (not yet verified: the handler must
  hash it against ``cid`` before storing it);
* ``on_dont_have(mux, cid)`` / ``on_have(mux, cid)``;
* ``on_done(mux, request_id, status, message)`` – ``DagDone``, or an ``Error``
  about that request (status ``DONE_ERROR``).

``run`` returns when the server ends the session and raises
:class:`~.session.RemoteError` on a session-level ``Error`` (and the transport's own
errors when the connection breaks). ``bytes_in`` counts framed bytes received.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from . import protocol
from .client import RemoteSession, open_session

__all__ = ["MuxSession", "open_mux"]


class MuxSession:
    """Several outstanding requests on one session (see the module docstring).

    ``sess``: a started :class:`~.client.RemoteSession`, whose protocol session
    (:class:`~.session.ClientSession`: request ids, outstanding requests and
    wants) this one shares; ``handler``: the object receiving answers.
    ``peer_id``: the server's verified peer ID.
    """

    def __init__(self, sess: RemoteSession, handler):
        self.sess = sess
        self.proto = sess.proto
        self.ch = sess.ch
        self.handler = handler
        self.peer_id = sess.peer_id
        self.transport = sess.transport
        self.closed = False

    @property
    def bytes_in(self) -> int:
        """Framed bytes received on the session."""
        return self.ch.bytes_in

    @property
    def bytes_out(self) -> int:
        """Framed bytes sent on the session."""
        return self.ch.bytes_out

    def next_id(self) -> int:
        """A new request id (shared with the session's other requests)."""
        return self.proto.next_id()

    async def send_wants(self, entries: list[protocol.WantEntry]) -> None:
        """Add want-list entries (want-block with send-dont-have unless flags say otherwise)."""
        self.proto.want_entries(entries)
        await self.sess.flush()

    async def cancel_wants(self, cids) -> None:
        """Drop want-list entries the client no longer needs."""
        self.proto.cancel_wants(cids)
        await self.sess.flush()

    async def request_range(self, root: bytes, start: int, end: int, *, have=(),
                            priority: int = 1, rid: int | None = None) -> int:
        """Ask for the blocks of file ``root`` overlapping bytes ``[start, end)`` (a
        byte-range DAG request: the file's interior nodes, then the leaves), except
        the CIDs in ``have``. Returns the request id (``rid`` if given)."""
        rid = self.proto.request_range(root, start, end, have=have, priority=priority, rid=rid)
        await self.sess.flush()
        return rid

    async def cancel_request(self, rid: int) -> None:
        """Cancel DAG request ``rid`` and flush the cancel to the server."""
        self.proto.cancel(rid)
        await self.sess.flush()

    async def send_many(self, msgs) -> None:
        """Several request messages (wants, requests, cancels) in one write."""
        for m in msgs:
            self.proto.send(m)
        await self.sess.flush()

    async def run(self) -> None:
        """Read answers until the session ends; dispatch them to the handler.
        Raises :class:`~.session.RemoteError` on a session-level ``Error``."""
        h = self.handler
        receive = self.ch.receive
        check = self.proto.handle_message
        try:
            while True:
                msg = await receive()
                if msg is None:
                    return
                msg = check(msg)
                t = type(msg)
                if t is protocol.Block:
                    await h.on_block(self, msg.cid, msg.data)
                elif t is protocol.DontHave:
                    h.on_dont_have(self, msg.cid)
                elif t is protocol.DagDone:
                    h.on_done(self, msg.request_id, msg.status, msg.message)
                elif t is protocol.Have:
                    h.on_have(self, msg.cid)
                elif t is protocol.Error:
                    h.on_done(self, msg.request_id, protocol.DONE_ERROR, msg.message)
                # Refs / RefResult / AuthOk are not expected here: ignored
        finally:
            self.closed = True

    async def aclose(self) -> None:
        """Mark the session closed and close its channel."""
        self.closed = True
        await self.ch.aclose()


@asynccontextmanager
async def open_mux(url, handler, *, identity=None, settings=None, engine=None,
                   fallback_timeout: float = 1.5, auth: str = "always"
                   ) -> AsyncIterator[MuxSession]:
    """Connect (see :func:`~.client.open_session`) and yield a :class:`MuxSession`
    whose :meth:`~MuxSession.run` the caller must run."""
    async with open_session(url, identity=identity, settings=settings, engine=engine,
                            fallback_timeout=fallback_timeout, auth=auth) as sess:
        yield MuxSession(sess, handler)
