"""Running the transport from blocking code: ``trio.run`` (or a trio loop kept in a
thread, :class:`~.peer.PeerRemote`) with transport failures as one-line errors, and
the QUIC session tickets of a repository. Used by :mod:`tvcfs.transport.peer` (the
tvcfs:// remote of the sync verbs, tvcfs/sync.py)."""

from __future__ import annotations

import os

import trio

from ..errors import TvcfsError
from .quic import QuicConnectionLost

_TICKETS: dict = {}


def repo_tickets(repo):
    """The QUIC session tickets of ``repo``'s transfers: kept in
    ``REPO/.tvcfs/quic-tickets.json`` (mode 0600), so the next command that talks
    to the same peer resumes its session and sends its first requests as 0-RTT
    early data (:class:`~.quic.SessionTickets`; one object per file per process)."""
    from .quic import SessionTickets

    path = os.path.join(repo.control, "quic-tickets.json")
    tickets = _TICKETS.get(path)
    if tickets is None:
        tickets = _TICKETS[path] = SessionTickets(path)
    return tickets


class ConnectionFailed(TvcfsError):
    """The connection to a remote broke during a transfer (resumable)."""


def plain_error(exc: BaseException) -> BaseException:
    """The exception to show for a transport failure ``exc``: a one-exception group
    unwrapped; a broken or closed stream as :class:`ConnectionFailed` ("run the
    command again to resume"); anything else as it is (a group of several too)."""
    from .quic import _single

    one = _single(exc) if isinstance(exc, BaseExceptionGroup) else exc
    if one is None:
        return exc
    if isinstance(one, (trio.BrokenResourceError, trio.ClosedResourceError)):
        reason = one.reason if isinstance(one, QuicConnectionLost) else (str(one) or
                                                                         type(one).__name__)
        return ConnectionFailed(f"connection to the remote was lost: {reason or 'closed'}; "
                                "run the command again to resume")
    return one


def run_sync(fn, *args):
    """``trio.run`` with transport failures turned into one-line TvcfsErrors
    (:func:`plain_error`)."""
    try:
        return trio.run(fn, *args)
    except (BaseExceptionGroup, trio.BrokenResourceError, trio.ClosedResourceError) as e:
        exc = plain_error(e)
        if exc is e:
            raise
    raise exc from None
