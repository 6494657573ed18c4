"""The tvcfs:// block exchange as a remote of the sync verbs (tvcfs/sync.py).

:class:`PeerRemote` implements the sync layer's remote interface
(:class:`tvcfs.sync.BlockRemote`) over one session to a ``tvcfs serve`` peer
(QUIC, or TLS over TCP): clone, fetch, pull, push and the lazy skeleton fetch run
the same code for ``s3://`` and ``tvcfs://`` URLs. The session lives in a trio
loop on a thread of its own, opened once per verb (its first flight asks for the
refs: 0-RTT with a session ticket), and each blocking method runs one request on
it. The two optional capabilities keep the transport's server-side DAG requests:
:meth:`PeerRemote.fetch_dags` ("send these DAGs; I hold these roots") and
:meth:`PeerRemote.push_dag` (push with the server's compare-and-swap).

Peer reputation (docs/protocol.md, "Bad blocks"): blocks that fail verification
are counted against the sending peer in the repository's ``peer_scores``
(:func:`peer_scores`, :func:`penalise`); a peer over :data:`PENALTY_LIMIT` bad
blocks is only used when named explicitly (:func:`bad_count`).
"""

from __future__ import annotations

import threading

import trio

from ..errors import TvcfsError
from ..refs import HEADS, TAGS
from ..store.base import PRIO_FOREGROUND
from .backend import RepoBackend
from .base import FetchStats
from .client import open_session, parse_url
from .identity import format_peer_id
from .quic import CLIENT_TICKETS
from .runner import ConnectionFailed, plain_error, repo_tickets

__all__ = ["PENALTY_LIMIT", "PeerRemote", "bad_count", "peer_scores", "penalise"]

PENALTY_LIMIT = 16  # bad blocks after which a peer is no longer used as a fallback


# ------------------------------------------------------------------ reputation
def peer_scores(repo) -> dict:
    """``{peer ID (base58): {"bad_blocks": n, "last_bad": unix time}}``: the
    :meth:`~tvcfs.transport.peerscore.PeerScore.record` of each peer that sent bad
    blocks."""
    return repo.config.peer_scores


def penalise(repo, peer: bytes | None, bad: int) -> None:
    """Count ``bad`` bad blocks against ``peer`` (binary peer ID; nothing when
    ``None``) in the repository's ``peer_scores``, by the rule of
    :class:`~tvcfs.transport.peerscore.PeerScore`."""
    from .peerscore import PeerScore

    if not peer or not bad:
        return
    key = format_peer_id(peer)

    def count(scores):
        score = PeerScore.from_record(scores.get(key))
        score.bad(bad)
        scores[key] = score.record()

    repo.config.update("peer_scores", count)


def bad_count(repo, url: str) -> int:
    """Bad blocks counted against the peer of ``url`` (0 for a URL without a peer
    ID or of another kind, such as ``s3://``)."""
    try:
        u = parse_url(url)
    except (ValueError, TvcfsError):
        return 0
    if not u.peer_id:
        return 0
    return peer_scores(repo).get(format_peer_id(u.peer_id), {}).get("bad_blocks", 0)


# ------------------------------------------------------------------ the remote
class PeerRemote:
    """:class:`tvcfs.sync.BlockRemote` over ``tvcfs[+quic|+tcp]://PEERID@HOST:PORT/REPO``.

    ``repo``: the local repository (its node identity authenticates: ``auth="auto"``
    only when the server's reads are private, ``"always"`` for a push; its session
    tickets allow 0-RTT). ``engine``: the QUIC engine (``None``: the default).
    Opening connects (raises :class:`~.quic.TransportError`,
    :class:`~.identity.PeerIdMismatch`, :class:`~.client.RemoteError`);
    :meth:`close` (or ``with``) ends the session. A connection lost during a call is
    :class:`~.runner.ConnectionFailed` (resumable). Attributes: ``url``,
    ``peer_id`` (the server's verified ID, binary), ``transport`` ("quic/qh3",
    "tcp"…), ``can_push`` (whether this peer may push)."""

    def __init__(self, url: str, repo=None, *, engine: str | None = None, auth: str = "auto"):
        parse_url(url)
        self.url = url
        self._repo = repo
        self._engine = engine
        self._auth = auth
        self._refs: tuple | None = None
        self._session = None
        self._token = None
        self._failure: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tvcfs-peer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._session is None:
            self._thread.join()
            raise self._failure or ConnectionFailed(f"could not open a session to {url}")

    # the trio loop holding the session ------------------------------------
    def _run(self) -> None:
        try:
            trio.run(self._hold)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            self._failure = plain_error(e)
        finally:
            self._ready.set()

    async def _hold(self) -> None:
        repo = self._repo
        identity = None
        if repo is not None:
            identity = repo.identity if self._auth == "auto" else repo.identity()
        self._closing = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        async with open_session(self.url, identity=identity, engine=self._engine, auth=self._auth,
                                refs_prefix="refs/",
                                tickets=repo_tickets(repo) if repo is not None else CLIENT_TICKETS) as sess:
            self._session = sess
            self._ready.set()
            await self._closing.wait()

    def _call(self, afn, *args):
        """Run ``await afn(*args)`` on the session's loop; transport failures as
        one-line errors (:func:`~.runner.plain_error`)."""
        if self._failure is not None:
            raise self._failure
        try:
            return trio.from_thread.run(afn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise self._failure or ConnectionFailed(
                "connection to the remote was lost; run the command again to resume") from None
        except (BaseExceptionGroup, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            exc = plain_error(e)
            if exc is e:
                raise
            raise exc from None

    def close(self) -> None:
        """End the session and its thread (idempotent)."""
        if self._thread.is_alive() and self._token is not None:
            try:
                trio.from_thread.run_sync(self._closing.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # what the session knows ----------------------------------------------
    @property
    def peer_id(self) -> bytes | None:
        """The server's verified peer ID (bytes), or ``None``."""
        return self._session.peer_id

    @property
    def transport(self) -> str:
        """The transport the session runs on (``"quic/qh3"``, ``"tcp"``...)."""
        return self._session.transport

    @property
    def can_push(self) -> bool:
        """Whether the server granted this client push."""
        return self._session.can_push

    # BlockRemote -----------------------------------------------------------
    def _list(self) -> tuple:
        if self._refs is None:
            refs, head = self._call(self._session.list_refs, "refs/")
            self._refs = ({k: v for k, v in refs.items() if k.startswith((HEADS, TAGS))}, head)
        return self._refs

    def list_refs(self) -> dict:
        """``{full ref name: binary commit CID}`` of the peer's branches and tags
        (asked once per session, in its first flight)."""
        return dict(self._list()[0])

    def head(self) -> str:
        """The ref the peer's HEAD names, or ``""``."""
        return self._list()[1]

    def has_many(self, cids: list) -> list:
        """``[bool]`` per CID: whether the peer holds the block (want-have)."""
        found = self._call(self._session.has_many, list(cids))
        return [c in found for c in cids]

    def get_many(self, cids: list):
        """``(cid, bytes | None)`` per CID (want-block at foreground priority; a block
        that fails verification is ``None``, like one the peer lacks)."""
        got = self._call(self._session.want, list(cids), PRIO_FOREGROUND)
        return [(c, got.get(c)) for c in cids]

    def size_of(self, cid: bytes) -> int | None:
        """Unknown before asking: ``None``."""
        return None

    # capabilities -----------------------------------------------------------
    def fetch_dags(self, repo, roots, *, complete=(), progress=None,
                   stop_on_bad: bool = False) -> FetchStats:
        """Fetch every block under ``roots`` (commits with history) that ``repo``
        lacks with whole-DAG requests the peer walks (``complete``: commits whose
        DAGs ``repo`` holds whole, sent as have-roots); each block is verified and
        stored as it arrives (:func:`tvcfs.store.verify.verify_many`), one sync at
        the end. Bad blocks are dropped (``bad_cids``); ``stop_on_bad``: do not ask
        this peer again after one (another remote is asked). ``progress(bytes,
        None)``. Returns :class:`~.base.FetchStats` (``missing`` non-empty when
        this peer could not supply everything)."""
        prog = (lambda blocks, nbytes: progress(nbytes, None)) if progress else None
        backend = RepoBackend(repo)

        async def fetch():
            return await self._session.fetch(backend, list(roots), complete=set(complete),
                                              progress=prog, stop_on_bad=stop_on_bad)

        return self._call(fetch)

    def push_dag(self, repo, ref: str, new: bytes, expected: bytes | None,
                 progress=None) -> tuple[int, int]:
        """Send the blocks of ``new``'s DAG the peer lacks (the ones under refs it
        holds and ``repo`` has are skipped), then have the peer move ``ref`` from
        ``expected`` to ``new`` (compare-and-swap on the server). ``progress(bytes,
        None)``. Returns ``(blocks, bytes)`` sent. Raises
        :class:`~.client.PushRejected` with the server's reason (unauthorised,
        stale base)."""
        complete = {v for v in self.list_refs().values() if repo.has(v)}
        prog = (lambda blocks, nbytes: progress(nbytes, None)) if progress else None
        backend = RepoBackend(repo)

        async def push():
            return await self._session.push(backend, ref, new, expected_old=expected,
                                             remote_complete=complete, progress=prog)

        return self._call(push)
