"""Repository-level transfer operations: clone, fetch, pull, push, serve.

The CLI (:mod:`tvcfs.cli.remote`) is a thin layer over these functions; they take
an open :class:`tvcfs.repo.Repo`, run their own trio loop and raise
:class:`~tvcfs.errors.TvcfsError` subclasses with one-line messages.

Refs (after git): a fetch from remote ``NAME`` stores the remote's branches as
remote-tracking refs ``refs/remotes/NAME/BRANCH`` and creates the remote's tags
that do not exist locally (an existing local tag is never moved). A clone also
creates the local branches and points HEAD at the remote's HEAD branch.

Every fetch is resumable: it walks what is stored and asks only for the missing
frontier. When a remote sends bad blocks (hash mismatch) or lacks blocks, the
same roots are asked of the next configured remote (fewest bad blocks first); bad
blocks are counted against the sending peer in the repository's ``peer_scores``
(shown by ``tvcfs remote list -v``), and a peer over :data:`PENALTY_LIMIT` bad
blocks is only used when named explicitly.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field

import trio

from ..encoding.cid import cid_str
from ..errors import TvcfsError
from ..refs import HEADS, TAGS
from ..sync import (FetchIncomplete, NotFastForward, PullResult, PushResult, check_fast_forward, fast_forward, is_ancestor,  # noqa: F401
                    update_tracking_refs)
from .backend import RepoBackend
from .client import open_session, parse_url
from .identity import IdentityError, format_peer_id
from .runner import ConnectionFailed, remote_url, repo_tickets, run_sync  # noqa: F401 (ConnectionFailed re-exported)

__all__ = [
    "FetchIncomplete",
    "NotFastForward",
    "Progress",
    "clone",
    "fetch",
    "pull",
    "push",
    "serve_async",
]

log = logging.getLogger(__name__)

PENALTY_LIMIT = 16  # bad blocks after which a peer is no longer used as a fallback
REMOTES = "refs/remotes/"




# ------------------------------------------------------------------ progress
class Progress:
    """A progress line on stderr: bytes, rate, blocks. Updates at most 5 times a
    second on a terminal (carriage return), every 5 s otherwise; :meth:`done`
    prints the final line. ``quiet`` shows nothing. With ``callback`` (the caller's
    progress bar: ``callback(bytes so far, None)``) it prints no line of its own and
    hands every update to the callback."""

    def __init__(self, label: str, quiet: bool = False, stream=None, callback=None):
        self.label = label
        self.callback = callback
        self.quiet = quiet or callback is not None
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self._last = 0.0 if self.tty else self.t0
        self.blocks = 0
        self.nbytes = 0
        self.base_blocks = 0
        self.base_bytes = 0
        self._shown = False

    def rebase(self) -> None:
        """Keep counting across several transfers (e.g. a retry on another remote)."""
        self.base_blocks, self.base_bytes = self.blocks, self.nbytes

    def __call__(self, blocks: int, nbytes: int) -> None:
        self.blocks = self.base_blocks + blocks
        self.nbytes = self.base_bytes + nbytes
        if self.callback is not None:
            self.callback(self.nbytes, None)
        if self.quiet:
            return
        now = time.monotonic()
        if now - self._last < (0.2 if self.tty else 5.0):
            return
        self._last = now
        self._show(False)

    def _line(self) -> str:
        dt = max(time.monotonic() - self.t0, 1e-6)
        return (f"{self.label}: {_fmt(self.nbytes)}, {self.blocks} blocks, "
                f"{_fmt(self.nbytes / dt)}/s, {dt:.1f} s")

    def _show(self, final: bool) -> None:
        line = self._line()
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        if not self.quiet and (self.blocks or self._shown):
            self._show(True)


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _short(c: bytes | None) -> str:
    return cid_str(c)[:16] if c else "(none)"


# ------------------------------------------------------------------ helpers


def peer_scores(repo) -> dict:
    """``{peer ID (base58): {"bad_blocks": n, "last_bad": unix time}}``: the
    :meth:`~tvcfs.transport.peerscore.PeerScore.record` of each peer that sent bad
    blocks."""
    return repo.config.peer_scores


def _penalise(repo, peer: bytes | None, bad: int) -> None:
    """Count ``bad`` bad blocks against ``peer`` in the repository's ``peer_scores``
    (the rule of :class:`~tvcfs.transport.peerscore.PeerScore`)."""
    from .peerscore import PeerScore

    if not peer or not bad:
        return
    key = format_peer_id(peer)

    def penalise(scores):
        score = PeerScore.from_record(scores.get(key))
        score.bad(bad)
        scores[key] = score.record()

    repo.config.update("peer_scores", penalise)


def _bad_count(repo, url: str) -> int:
    try:
        u = parse_url(url)
    except (ValueError, TvcfsError):
        return 0
    if not u.peer_id:
        return 0
    return peer_scores(repo).get(format_peer_id(u.peer_id), {}).get("bad_blocks", 0)


@dataclass
class FetchResult:
    """What a fetch did: ``remote`` name, ``refs`` (the remote's ``{name: cid}``),
    ``head`` (remote HEAD branch ref), ``updated`` (``[(local ref, old, new)]``),
    ``stats`` (per remote asked: ``[(name, FetchStats)]``), ``blocks``/``nbytes``
    received in all."""

    remote: str
    url: str
    refs: dict
    head: str
    updated: list = field(default_factory=list)
    stats: list = field(default_factory=list)
    blocks: int = 0
    nbytes: int = 0
    seconds: float = 0.0


# ------------------------------------------------------------------ fetch
def _record(repo, res, name: str, peer_id, st, warn) -> None:
    """Add one remote's :class:`FetchStats` to ``res``; bad blocks count against
    that peer and are reported through ``warn``."""
    res.stats.append((name, st))
    res.blocks += st.blocks
    res.nbytes += st.nbytes
    if st.bad_blocks:
        _penalise(repo, peer_id, st.bad_blocks)
        if warn:
            warn(f"warning: {name} ({format_peer_id(peer_id)}) sent "
                 f"{st.bad_blocks} bad block(s): dropped and counted against that peer")


async def _fetch_async(repo, remote: str, url: str, *, progress: Progress | None,
                       engine: str | None, fallbacks: bool = True,
                       warn=None) -> FetchResult:
    ident = repo.identity  # called only if a server asks for authentication
    backend = RepoBackend(repo)
    t0 = time.monotonic()
    others = [(n, u) for n, u in repo.remotes().items()
              if n != remote and u != url and _bad_count(repo, u) < PENALTY_LIMIT]
    others.sort(key=lambda nu: _bad_count(repo, nu[1]))
    if not fallbacks:
        others = []
    tickets = repo_tickets(repo)
    async with open_session(url, identity=ident, engine=engine, auth="auto",
                            refs_prefix="refs/", tickets=tickets) as sess:
        refs, head = await sess.list_refs("refs/")
        refs = {k: v for k, v in refs.items() if k.startswith((HEADS, TAGS))}
        complete = set(repo.refs().values())
        roots = list(dict.fromkeys(v for v in refs.values() if v not in complete))
        res = FetchResult(remote, url, refs, head)
        if roots:
            # a bad block is not asked of the same peer again when another remote exists
            st = await sess.fetch(backend, roots, complete=complete, progress=progress,
                                  stop_on_bad=bool(others))
            _record(repo, res, remote, sess.peer_id, st, warn)
            missing = st.missing
        else:
            missing = []
    if missing:
        # ask the other configured remotes for what is still missing
        for name, other in others:
            if warn:
                warn(f"{len(missing)}+ block(s) still missing after {remote}; "
                     f"asking remote {name}")
            if progress:
                progress.rebase()
            try:
                async with open_session(other, identity=ident, engine=engine,
                                        auth="auto", tickets=tickets) as s2:
                    st = await s2.fetch(backend, roots, complete=complete, progress=progress)
            except (TvcfsError, trio.BrokenResourceError) as e:
                if warn:
                    warn(f"warning: remote {name} failed: {e}")
                continue
            _record(repo, res, name, s2.peer_id, st, warn)
            missing = st.missing
            if not missing:
                break
    res.seconds = time.monotonic() - t0
    if missing:
        bad = sum(st.bad_blocks for _, st in res.stats)
        raise FetchIncomplete(
            f"fetch from {remote} incomplete: {len(missing)}{'+' if len(missing) >= 1000 else ''} "
            f"block(s) missing (first {cid_str(missing[0])})"
            + (f", {bad} bad block(s) dropped" if bad else "")
            + "; nothing was updated; run again to resume or add another remote")
    if "://" in remote:
        return res  # a bare URL: blocks only, no remote-tracking refs (like FETCH_HEAD)
    # all DAGs complete: update remote-tracking refs and create new tags
    res.updated = update_tracking_refs(repo, remote, refs, warn=warn, message=f"fetch {remote}")
    return res


def fetch(repo, remote: str = "origin", *, quiet: bool = False, engine: str | None = None,
          out=None, progress=None) -> FetchResult:
    """Fetch the branches and tags of ``remote`` (a configured name, or a URL) into
    ``repo``. ``progress``: a callback ``progress(bytes received, None)`` that
    replaces the progress line on ``out``. Raises :class:`FetchIncomplete`, :class:`ConnectionFailed`,
    :class:`~.client.RemoteError`, :class:`~.quic.TransportError`,
    :class:`~.identity.PeerIdMismatch`."""
    url = remote_url(repo, remote)
    if repo.config.lazy:
        # a lazy clone keeps fetching only the skeleton (commits, trees, file indexes);
        # leaves come on demand through a mount
        from .lazysync import lazy_fetch

        lr = lazy_fetch(repo, remote, engine=engine)
        return FetchResult(remote=lr.remote, url=lr.url, refs=lr.refs, head=lr.head,
                           updated=lr.updated, blocks=lr.blocks, nbytes=lr.nbytes,
                           seconds=lr.seconds)
    err = out or sys.stderr
    prog = Progress(f"Receiving from {remote}", quiet, err, progress)

    def warn(msg):
        print(msg, file=err, flush=True)

    try:
        res = run_sync(lambda: _fetch_async(repo, remote, url, progress=prog, engine=engine,
                                        warn=warn))
    finally:
        prog.done()
    return res


# ------------------------------------------------------------------ clone
def clone(url: str, dest: str, *, quiet: bool = False, engine: str | None = None,
          remote: str = "origin", out=None, progress=None) -> tuple:
    """Clone ``url`` into a new repository at ``dest``: fetch every branch and tag
    (verified, resumable), create the local branches, point HEAD at the remote's
    HEAD branch, add the remote ``origin``. Running it again on an interrupted
    clone of the same URL resumes it. Returns ``(repo, FetchResult)`` (the caller
    closes the repo). Raises :class:`TvcfsError` subclasses."""
    from ..repo import Repo

    parse_url(url)
    dest = os.path.abspath(dest)
    resume = False
    created = not os.path.exists(dest)
    if os.path.exists(dest):
        if os.path.isdir(os.path.join(dest, ".tvcfs")):
            try:
                r = Repo.open(dest)
            except TvcfsError:
                r = None
            if r is not None:
                ok = r.remotes().get(remote) == url and not r.branches()
                r.close()
                if ok:
                    resume = True
        if not resume and (not os.path.isdir(dest) or os.listdir(dest)):
            raise TvcfsError(f"destination {dest} exists and is not an empty directory")
    fresh = not resume
    repo = Repo.init(dest)
    try:
        if not resume:
            repo.add_remote(remote, url)
        err = out or sys.stderr
        if resume and not quiet:
            print(f"Resuming the interrupted clone into {dest}", file=err, flush=True)
        res = fetch(repo, remote, quiet=quiet, engine=engine, out=err, progress=progress)
        updates = {}
        for name, cid in res.refs.items():
            if name.startswith(HEADS) and repo.ref_db.get(name) is None:
                updates[name] = cid
        if updates:
            repo.update_refs(updates, message=f"clone: from {url}")
        if res.head.startswith(HEADS) and res.head in res.refs:
            repo.set_head(res.head[len(HEADS):])
        elif res.refs and not quiet:
            print("warning: the remote HEAD does not name a branch; HEAD left as is",
                  file=err)
        if not res.refs and not quiet:
            print("warning: you appear to have cloned an empty repository.", file=err)
        return repo, res
    except BaseException as e:
        kept = repo.store.stat()["blocks"]
        repo.close()
        if fresh and kept == 0:  # nothing arrived: leave no half-made repository behind
            import shutil

            if created:
                shutil.rmtree(dest, ignore_errors=True)
            else:
                shutil.rmtree(os.path.join(dest, ".tvcfs"), ignore_errors=True)
            raise
        hint = (f"{kept} verified blocks are kept in {dest}; run the same `tvcfs clone` "
                f"again to resume")
        if "resume" not in str(e):  # transport errors already say so
            e.add_note(hint)  # the CLI prints notes as "hint:" lines
        raise


# ------------------------------------------------------------------ pull
def pull(repo, remote: str = "origin", branch: str | None = None, *, quiet: bool = False,
         engine: str | None = None, out=None, progress=None) -> PullResult:
    """Fetch ``remote``, then fast-forward local ``branch`` (default: HEAD's) to
    ``refs/remotes/REMOTE/BRANCH``. Raises :class:`NotFastForward` when the branches
    have diverged (merge with ``tvcfs merge REMOTE/BRANCH``)."""
    branch = branch or repo.head_branch()
    if not branch:
        raise TvcfsError("HEAD is detached: name the branch to pull")
    res = fetch(repo, remote, quiet=quiet, engine=engine, out=out, progress=progress)
    return PullResult(*fast_forward(repo, remote, branch, res.refs), res)


# ------------------------------------------------------------------ push
def push(repo, remote: str = "origin", branch: str | None = None, *, force: bool = False,
         quiet: bool = False, engine: str | None = None, out=None, progress=None) -> PushResult:
    """Push local ``branch`` (default: HEAD's) to the same branch of ``remote``.

    Only blocks the remote lacks are sent; the ref is then changed with a
    compare-and-swap from the value the remote reported. Refused without sending
    anything when the remote branch is not an ancestor of the local one (the
    remote moved on: pull and merge first) unless ``force``. Raises
    :class:`NotFastForward`, :class:`~.client.PushRejected` (the server's reason:
    unauthorised, stale base), transport errors."""
    branch = branch or repo.head_branch()
    if not branch:
        raise TvcfsError("HEAD is detached: name the branch to push")
    local = repo.ref_db.get(HEADS + branch)
    if local is None:
        raise TvcfsError(f"no local branch {branch!r}")
    url = remote_url(repo, remote)
    ref = HEADS + branch
    ident = repo.identity()
    err = out or sys.stderr
    prog = Progress(f"Sending to {remote}", quiet, err, progress)

    async def main():
        t0 = time.monotonic()
        async with open_session(url, identity=ident, engine=engine,
                                refs_prefix="refs/", tickets=repo_tickets(repo)) as sess:
            refs, _ = await sess.list_refs("refs/")
            cur = refs.get(ref)
            if cur == local:
                return PushResult("up-to-date", ref, cur, local)
            if cur is not None and not force and sess.can_push:
                check_fast_forward(repo, remote, branch, cur, local)
            complete = {v for v in refs.values() if repo.has(v)}
            nb, nbytes = await sess.push(RepoBackend(repo), ref, local, expected_old=cur,
                                         remote_complete=complete, progress=prog)
            return PushResult("pushed", ref, cur, local, nb, nbytes, time.monotonic() - t0)

    try:
        res = run_sync(main)
    finally:
        prog.done()
    if "://" not in remote and res.kind == "pushed":
        repo.update_refs({f"{REMOTES}{remote}/{branch}": local}, message=f"push {remote}")
    return res


# ------------------------------------------------------------------ serve
def parse_listen(text: str, default_port: int | None = None, option: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT`` → ``(host, port)``; a missing
    port is ``default_port`` (the peer protocol's 4740 when ``None``). Raises
    :class:`TvcfsError` naming ``option``."""
    from .client import DEFAULT_PORT

    text = text.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.isdigit():
        host, port = "", text
    else:
        host, port = text, ""
    try:
        p = int(port) if port else (DEFAULT_PORT if default_port is None else default_port)
    except ValueError:
        raise TvcfsError(f"bad {option} address {text!r} (HOST:PORT)") from None
    if not 0 <= p < 65536:
        raise TvcfsError(f"bad port in {option} {text!r}")
    return host or "0.0.0.0", p


async def serve_async(repo, host: str, port: int, *, private: bool = False,
                      allow_push=(), quic: bool = True, tcp: bool = True,
                      engine: str | None = None, on_ready=None, rate_limit: float | None = None,
                      task_status=trio.TASK_STATUS_IGNORED):
    """Serve ``repo`` on ``host:port`` over QUIC (UDP) and TLS-over-TCP on the same
    port number until cancelled. ``on_ready(url, port)`` is called once both listen.
    ``rate_limit``: bytes per second for all peers together (``None``: unlimited)."""
    from .identity import parse_peer_id
    from .server import RateLimit, ServerConfig

    ident = repo.identity()
    allowed = set()
    for p in allow_push:
        try:
            allowed.add(parse_peer_id(p))
        except IdentityError as e:
            raise TvcfsError(f"--allow-push {p}: {e}") from None
    cfg = ServerConfig(RepoBackend(repo), ident, private=private, allow_push=allowed,
                       rate_limit=RateLimit(rate_limit) if rate_limit else None)
    await serve_config(cfg, host, port, quic=quic, tcp=tcp, engine=engine, on_ready=on_ready,
                       task_status=task_status)


async def serve_config(cfg, host: str, port: int, *, quic: bool = True, tcp: bool = True,
                       engine: str | None = None, on_ready=None, task_status=trio.TASK_STATUS_IGNORED):
    """Serve sessions configured by ``cfg`` (a :class:`~.server.ServerConfig`: its
    identity is the TLS key; with ``cfg.resolve`` set, each session's repository is
    chosen by the name in its ``Hello``) on ``host:port`` over QUIC and TLS-over-TCP
    (same port number) until cancelled; see :func:`serve_async`."""
    from .quic import QuicSettings, serve_quic
    from .server import handle_session
    from .tcp import serve_tcp

    if not quic and not tcp:
        raise TvcfsError("nothing to serve: both --no-quic and --no-tcp given")
    ident = cfg.identity

    async def handler(stream):
        await handle_session(stream, cfg)

    async with trio.open_nursery() as n:
        bound = None
        for attempt in range(20):
            listeners = None
            try:
                if tcp:
                    listeners = await trio.open_tcp_listeners(port, host=host)
                    p = listeners[0].socket.getsockname()[1]
                else:
                    p = port
                if quic:
                    srv = await n.start(lambda task_status: serve_quic(
                        handler, host, p, identity=ident,
                        settings=QuicSettings(engine=engine), task_status=task_status))
                    p = srv.address[1]
                bound = p
                break
            except OSError:
                if listeners:
                    for ls in listeners:
                        await ls.aclose()
                if port != 0 or attempt == 19:
                    raise
        if tcp:
            await n.start(lambda task_status: serve_tcp(
                handler, host, bound, identity=ident, listeners=listeners,
                task_status=task_status))
        shown = host
        if host in ("0.0.0.0", "::", ""):
            import socket

            shown = socket.gethostname()
        hshow = f"[{shown}]" if ":" in shown else shown
        scheme = "tvcfs" if quic and tcp else ("tvcfs+quic" if quic else "tvcfs")
        url = f"{scheme}://{ident.peer_id_str}@{hshow}:{bound}/"
        if on_ready:
            on_ready(url, bound, cfg)
        task_status.started((url, bound, cfg))
