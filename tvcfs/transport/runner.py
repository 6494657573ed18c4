"""Running the transport from blocking code: ``trio.run`` with transport failures as
one-line errors, and remote names resolved to URLs. Shared by the sync verbs
(:mod:`tvcfs.transport.ops`) and lazy clones (:mod:`tvcfs.transport.lazysync`)."""

from __future__ import annotations

import os

import trio

from ..errors import TvcfsError
from .client import parse_url
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


def remote_url(repo, remote: str) -> str:
    """The ``tvcfs://`` URL of the configured remote ``remote``, or ``remote`` itself if
    it is a URL (:func:`tvcfs.sync.remote_url`), checked as a tvcfs URL. Raises
    :class:`TvcfsError`."""
    from ..sync import remote_url as configured_url

    url = configured_url(repo, remote)
    parse_url(url)
    return url


def run_sync(fn, *args):
    """``trio.run`` with transport failures turned into one-line TvcfsErrors."""
    from .quic import _single

    try:
        return trio.run(fn, *args)
    except BaseExceptionGroup as eg:
        exc = _single(eg)
        if exc is None:
            raise
    except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
        exc = e
    if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
        reason = exc.reason if isinstance(exc, QuicConnectionLost) else (str(exc) or
                                                                         type(exc).__name__)
        raise ConnectionFailed(f"connection to the remote was lost: {reason or 'closed'}; "
                               "run the command again to resume") from None
    raise exc
