"""A lazy mount tells the user why a read fails (issue 14, item 7; docs/lazy.md,
"Failure behaviour").

Real server processes (tests/support/server.py), real QUIC on loopback, real FUSE
mounts, the real ``tvcfs`` CLI. What is shown:

* every peer down: a read of a file not fetched yet fails with ``EIO`` within the
  fetch timeout;
* the reason is where the user looks: the foreground mount's stderr names the peer
  and that it is unreachable (once per state change, not once per attempt or
  block) and the file whose read failed; ``tvcfs status`` in the repository and
  ``tvcfs stats MNT`` show the peer down with the reason;
* the peer restarts (same port, same key): reads work again without remounting,
  and the log, ``tvcfs status`` and ``tvcfs stats`` say it is back;
* a peer that swallows every datagram (no ICMP, no answer): the read still fails
  within the fetch timeout (connection attempts do not push it past the deadline)
  and the reason says it got no answer;
* a connected peer that hangs (SIGSTOP): dropped while the read waits (not after
  QUIC's 30 s idle timeout), shown down, used again once it wakes (SIGCONT).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import time

import numpy as np
import pytest

from support import MIB
from support.cli import run_tvcfs_text as run
from support.mount import lazy_mount, remote_stats
from support.repo import commit_dir
from support.server import Server
from support.wait import wait_until

pytestmark = [pytest.mark.fuse]

TIMEOUT = 3.0   # --fetch-timeout of the mounts here, seconds
MARGIN = 2.0    # seconds a failing read may take beyond the timeout


@pytest.fixture(scope="module")
def two_files(tmp_path_factory):
    """A repository with ``a.bin`` and ``b.bin`` (3 MiB of random bytes each)."""
    d = tmp_path_factory.mktemp("lazy-errors")
    wt = d / "wt"
    wt.mkdir()
    rng = np.random.default_rng(14)
    data = {n: rng.bytes(3 * MIB) for n in ("a.bin", "b.bin")}
    for n, b in data.items():
        (wt / n).write_bytes(b)
    commit_dir(str(d / "src"), str(wt))
    return str(d / "src"), data


def _read_log(path) -> str:
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")


def _log_matching(path, pattern: str) -> str | None:
    """The log at ``path`` if the regular expression ``pattern`` occurs in it."""
    text = _read_log(path)
    return text if re.search(pattern, text) else None


def _status_matching(repo, *patterns: str) -> str | None:
    """``tvcfs status`` of ``repo`` if every regular expression in ``patterns``
    occurs in it (the mount rewrites its status file within 0.2 s of a change)."""
    text = run("-C", repo, "status").stdout
    return text if all(re.search(p, text) for p in patterns) else None


def _peer_down(mnt: str, peer: str) -> dict | None:
    """The ``.tvcfs/stats`` entry of ``peer`` if it is down."""
    p = remote_stats(mnt)["peers"][peer]
    return p if p["state"] == "down" else None


def _timed_read(path: str) -> tuple[float, OSError | None, bytes]:
    t0 = time.monotonic()
    try:
        with open(path, "rb", buffering=0) as f:
            data = f.read()
        return time.monotonic() - t0, None, data
    except OSError as e:
        return time.monotonic() - t0, e, b""


@pytest.mark.timeout(180)
def test_peer_down_eio_reason_shown_then_reads_resume(two_files, tmp_path):
    src, data = two_files
    key = str(tmp_path / "s.key")
    server = Server(src, key=key)
    port = server.port
    peer = f"127.0.0.1:{port}"
    servers = [server]
    clone = tmp_path / "clone"
    mnt = tmp_path / "mnt"
    log_path = tmp_path / "mount.log"
    try:
        run("clone", "--lazy", "-q", server.url, clone)
        with lazy_mount(str(clone), str(mnt), "--fetch-timeout", TIMEOUT,
                        log_path=str(log_path)) as m:
            main = os.path.join(m, "branches", "main")
            with open(os.path.join(main, "a.bin"), "rb") as f:
                assert f.read() == data["a.bin"]

            server.kill()
            # the mount notices (QUIC: ICMP port unreachable) or the read finds out
            dt, err, _ = _timed_read(os.path.join(main, "b.bin"))
            print(f"\nEIO after {dt:.2f} s (fetch timeout {TIMEOUT} s)")
            assert err is not None and err.errno == errno.EIO, err
            assert dt <= TIMEOUT + MARGIN

            # the foreground mount's stderr: the peer, why, and the file that failed
            log = wait_until(lambda: _log_matching(log_path, "b.bin"),
                           10, what="the failed read in the mount's log")
            down = [ln for ln in log.splitlines() if re.search(rf"peer {re.escape(peer)} down", ln)]
            assert len(down) == 1, log[-4000:]  # once per state change, not per attempt
            assert "unreachable" in down[0], down[0]
            failed = [ln for ln in log.splitlines() if "b.bin" in ln]
            assert any(peer in ln and "unreachable" in ln for ln in failed), failed

            # tvcfs status (in the repository) and tvcfs stats (of the mount)
            wait_until(lambda: _status_matching(clone, rf"peer {re.escape(peer)} down.*unreachable",
                                              r"last failed read .*branches/main/b.bin"),
                     10, what="tvcfs status to show the peer down and the failed read")
            stats = run("stats", m).stdout
            assert re.search(r"state: down", stats) and peer in stats, stats
            assert re.search(r"last_error: unreachable", stats), stats

            # a few more failing reads (back-off attempts meanwhile): still one "down" line
            for _ in range(2):
                _, err, _ = _timed_read(os.path.join(main, "b.bin"))
                assert err is not None and err.errno == errno.EIO
            log = _read_log(log_path)
            assert sum(1 for ln in log.splitlines()
                       if re.search(rf"peer {re.escape(peer)} down", ln)) == 1, log[-4000:]

            # the peer comes back (same port, same key): reads work without remounting
            servers.append(Server(src, key=key, port=port))
            t1 = time.monotonic()
            wait_until(lambda: _timed_read(os.path.join(main, "b.bin"))[2] == data["b.bin"],
                     TIMEOUT + 10, what="b.bin to read again after the peer restarted")
            print(f"read again {time.monotonic() - t1:.2f} s after the peer restarted")
            assert remote_stats(m)["peers"][peer]["state"] == "ready"
            log = wait_until(lambda: _log_matching(log_path, rf"peer {re.escape(peer)} back up"),
                10, what="the peer's return in the mount's log")
            assert sum(1 for ln in log.splitlines()
                       if re.search(rf"peer {re.escape(peer)} back up", ln)) == 1
            wait_until(lambda: _status_matching(clone, rf"peer {re.escape(peer)} ready"),
                     10, what="tvcfs status to show the peer ready")
            assert "state: ready" in run("stats", m).stdout
        # unmounted: the status file is gone, status no longer lists the mount
        assert peer not in run("-C", clone, "status").stdout
    finally:
        for s in servers:
            s.kill()


@pytest.mark.timeout(120)
def test_silent_peer_background_mount_fails_within_timeout_with_reason(two_files, tmp_path):
    """A background mount (``tvcfs mount``, no ``-f``): its log goes to
    ``REPO/.tvcfs/mount.log`` (and the system log where ``/dev/log`` exists)."""
    from tvcfs.fs.daemon import is_mounted

    src, _ = two_files
    server = Server(src)
    clone = tmp_path / "clone"
    try:
        run("clone", "--lazy", "-q", server.url, clone)
    finally:
        server.kill()
    # a "peer" that receives every datagram and answers none (a hung host, a
    # firewall that drops): no ICMP error, each connection attempt must time out
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))
    peer = f"127.0.0.1:{hole.getsockname()[1]}"
    url = server.url.rsplit("@", 1)[0] + f"@{peer}/"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        run("mount", clone, mnt, "--remote", url, "--fetch-timeout", TIMEOUT)
        try:
            dt, err, _ = _timed_read(os.path.join(mnt, "branches", "main", "b.bin"))
            print(f"\nEIO after {dt:.2f} s (fetch timeout {TIMEOUT} s)")
            assert err is not None and err.errno == errno.EIO, err
            assert dt <= TIMEOUT + MARGIN
            p = wait_until(lambda: _peer_down(str(mnt), peer), 15, what="the silent peer to be marked down")
            assert "unreachable" in p["last_error"] and "no answer" in p["last_error"], p
            wait_until(lambda: _status_matching(
                clone, rf"peer {re.escape(peer)} down.*unreachable.*no answer",
                r"last failed read .*branches/main/b.bin"), 10, what="tvcfs status")
            log = _read_log(clone / ".tvcfs" / "mount.log")
            assert re.search(rf"peer {re.escape(peer)} down: unreachable.*no answer", log), log
            assert re.search(r"read of branches/main/b.bin .*no answer", log), log
        finally:
            run("unmount", mnt, ok=None)
            if is_mounted(str(mnt)):
                run("unmount", "-z", mnt, ok=None)
    finally:
        hole.close()


@pytest.mark.timeout(120)
def test_hung_peer_is_dropped_and_reads_resume_when_it_wakes(two_files, tmp_path):
    """A connected peer that stops answering (its process stopped: no error, no
    ICMP; QUIC alone would wait for its 30 s idle timeout) is dropped while a read
    waits, shown down with the reason, and used again once it answers."""
    src, data = two_files
    server = Server(src)
    peer = f"127.0.0.1:{server.port}"
    log_path = tmp_path / "mount.log"
    try:
        run("clone", "--lazy", "-q", server.url, tmp_path / "clone")
        with lazy_mount(str(tmp_path / "clone"), str(tmp_path / "mnt"), "--fetch-timeout",
                        TIMEOUT, log_path=str(log_path)) as m:
            main = os.path.join(m, "branches", "main")
            with open(os.path.join(main, "a.bin"), "rb") as f:
                assert f.read() == data["a.bin"]
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                dt, err, _ = _timed_read(os.path.join(main, "b.bin"))
                print(f"\nEIO after {dt:.2f} s (fetch timeout {TIMEOUT} s)")
                assert err is not None and err.errno == errno.EIO, err
                assert dt <= TIMEOUT + MARGIN
                p = wait_until(lambda: _peer_down(m, peer), 15, what="the hung peer to be marked down")
                assert "no answer" in p["last_error"], p
                wait_until(lambda: _status_matching(tmp_path / "clone",
                                                  rf"peer {re.escape(peer)} down.*no answer"),
                         10, what="tvcfs status to show the hung peer down")
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            t1 = time.monotonic()
            wait_until(lambda: _timed_read(os.path.join(main, "b.bin"))[2] == data["b.bin"],
                     TIMEOUT + 10, what="b.bin to read after the peer woke up")
            print(f"read again {time.monotonic() - t1:.2f} s after the peer woke up")
        log = _read_log(log_path)
        assert sum(1 for ln in log.splitlines()
                   if re.search(rf"peer {re.escape(peer)} down", ln)) == 1, log[-4000:]
    finally:
        server.kill()
