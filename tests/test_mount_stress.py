"""A mount under load, and stopped under load (pyfuse3's request loop patched by
packaging/pyfuse3-request-loop.patch; docs/mount.md, "Reads" and "Running a mount").

Real FUSE mounts of real repositories (tests/support/mount.py), a real server process
on loopback for the lazy mount. What is shown:

* a writable local mount serving 16 readers at once (each its own file, or all the
  same one, page cache dropped before every read), three ``os.walk``+``stat``
  storms and three writers into ``branches/main``, stopped by SIGTERM while all of
  them are in flight: every byte read is right, the mount process exits within
  seconds, removes its pid file, and every write that returned before the signal
  is in the branch afterwards;
* a lazy mount whose only peer answers nothing (``--stall all``): while 8 reads
  wait for it, ``ls`` and ``stat`` of other paths and ``.tvcfs/stats`` are answered
  at once (each request has its own task); SIGTERM then ends the mount within
  seconds (``STOP_GRACE``: the waiting reads fail with ``ENOTCONN``) instead of
  after the fetch timeout;
* the same mount with the fetch timeout short: 32 reads wait at once (the request
  loop starts a task for each request taken while none is idle), a reader process
  is SIGKILLed mid-read; once the reads have failed (``EIO``) the killed reader is
  gone, the mount still answers, and its worker tasks shrink back to two
  (``min_tasks`` plus the one waiting on ``/dev/fuse``; counted from pyfuse3's
  ``--debug`` log).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from support import MIB
from support.cli import run_tvcfs_text as run
from support.mount import Mounted, drop_file_cache, fsync_dir, remote_stats
from support.repo import commit_dir, make_repo, rnd
from support.server import Server
from support.wait import wait_until
from tvcfs.fs.daemon import _pidfile, is_mounted
from tvcfs.repo import Repo

pytestmark = [pytest.mark.fuse]


def _sigterm_and_wait(m: Mounted, repo_root: str, timeout: float = 10.0) -> float:
    """SIGTERM the mount process of ``m``; assert it exits (status 0) within ``timeout``
    seconds, leaving neither the mount nor its pid file. Returns the seconds taken."""
    t0 = time.monotonic()
    os.kill(m.pid, signal.SIGTERM)
    try:
        rc = m.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"mount still running {timeout:g} s after SIGTERM:\n{m.log()[-3000:]}") from None
    took = time.monotonic() - t0
    assert rc == 0, m.log()[-3000:]
    assert not is_mounted(m.mnt)
    assert not os.path.exists(_pidfile(os.path.join(repo_root, ".tvcfs"), m.mnt))
    return took


def _stalled_lazy_clone(tmp_path, size: int = 8 * MIB):
    """A lazy clone of a repository holding ``big.bin`` (``size`` random bytes) and
    ``small0..9.txt``, and a server of it that answers nothing (``--stall all``).
    Returns ``(clone path, Server)``; the caller kills the server."""
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / "big.bin").write_bytes(rnd(size, 1))
    for i in range(10):
        (wt / f"small{i}.txt").write_bytes(b"x" * 100)
    src = str(tmp_path / "src")
    commit_dir(src, str(wt))
    good = Server(src, key=str(tmp_path / "good.key"))
    try:
        run("clone", "--lazy", "-q", good.url, tmp_path / "clone")
    finally:
        good.kill()
    return str(tmp_path / "clone"), Server(src, key=str(tmp_path / "stalled.key"), stall="all")


def _pyfuse3_tasks(log: str) -> tuple[int, int]:
    """``(most at once, alive now)`` of pyfuse3's request-loop tasks, from its debug
    log lines (one task at start, one per "starting another worker", minus one
    per "terminated")."""
    counts = [int(n) for n in re.findall(r"starting another worker \(now (\d+) total", log)]
    return max(counts, default=1), 1 + len(counts) - len(re.findall(r"pyfuse-\d+: terminated", log))



def _start_reads(path: str, n: int, size: int, out: dict) -> list:
    """Start ``n`` threads each reading ``size`` bytes of ``path`` at ``k`` MiB (``k``
    < ``n``) with one ``pread``; ``out[k]`` gets the byte count or the ``errno``.
    Returns the threads."""
    def read_at(k):
        try:
            with open(path, "rb", buffering=0) as f:
                out[k] = len(os.pread(f.fileno(), size, k * MIB))
        except OSError as e:
            out[k] = e.errno

    threads = [threading.Thread(target=read_at, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    return threads

@pytest.mark.timeout(90)
def test_readers_walkers_writers_then_sigterm_in_flight(tmp_path):
    files = {f"d{i % 3}/f{i}.bin": rnd(2 * MIB, i) for i in range(8)}
    files["shared.bin"] = rnd(8 * MIB, 99)
    want = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    repo = make_repo(tmp_path, files)
    root = repo.root
    repo.close()
    stop = threading.Event()
    errors: list = []
    written: dict = {}
    reads = [0]
    with Mounted(root, tmp_path / "mnt", commit_delay=0.2, limit=75) as m:
        main = m.branch("main")

        def reader(k):
            rng = random.Random(k)
            while not stop.is_set():
                name = "shared.bin" if k % 2 else rng.choice(sorted(files))
                path = os.path.join(main, name)
                drop_file_cache(path)
                with open(path, "rb", buffering=0) as f:
                    h = hashlib.sha256()
                    while chunk := f.read(MIB):
                        h.update(chunk)
                if h.hexdigest() != want[name]:
                    errors.append(f"wrong bytes read from {name}")
                reads[0] += 1

        def walker(_k):
            while not stop.is_set():
                for d, dirs, names in os.walk(m.mnt):
                    if ".tvcfs" in dirs:
                        dirs.remove(".tvcfs")
                    for n in names:
                        os.stat(os.path.join(d, n))

        def writer(k):
            i = 0
            while not stop.is_set():
                name, data = f"w{k}_{i}.bin", rnd(16384 * (1 + i % 8), 1000 * k + i)
                with open(os.path.join(main, name), "wb") as f:
                    f.write(data)
                written[name] = hashlib.sha256(data).hexdigest()  # close returned: must be kept
                if i % 4 == 3:
                    fsync_dir(main)
                i += 1

        def guarded(fn, k):
            try:
                fn(k)
            except OSError as e:
                if not stop.is_set():  # before the signal every call must succeed
                    errors.append(f"{fn.__name__} {k}: {e!r}")

        threads = [threading.Thread(target=guarded, args=(fn, k), daemon=True)
                   for fn, n in ((reader, 16), (walker, 3), (writer, 3)) for k in range(n)]
        for t in threads:
            t.start()
        wait_until(lambda: reads[0] >= 48 and len(written) >= 12 or errors, timeout=40,
                   what="48 whole-file reads and 12 writes")
        assert not errors, errors[:5]
        stop.set()  # errors from here on are the unmount's (ENOTCONN, ENOENT)
        took = _sigterm_and_wait(m, root)
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
    print(f"\n{reads[0]} reads, {len(written)} writes; exit {took:.2f} s after SIGTERM")
    with Repo.open(root) as r:
        for name, digest in written.items():
            assert hashlib.sha256(b"".join(r.read_file("main", name))).hexdigest() == digest, name
        for name, digest in want.items():
            assert hashlib.sha256(b"".join(r.read_file("main", name))).hexdigest() == digest, name


@pytest.mark.timeout(90)
def test_reads_stuck_on_a_stalled_peer_other_requests_served_sigterm_exits(tmp_path):
    clone, stalled = _stalled_lazy_clone(tmp_path)
    try:
        # a fetch timeout well past the test's wait for the exit: only the grace ends it
        with Mounted(clone, tmp_path / "mnt", commit_delay=None, limit=75, check_log=False,
                     extra=["--remote", stalled.url, "--fetch-timeout", "30"]) as m:
            big = m.branch("main", "big.bin")
            out: dict = {}
            readers = _start_reads(big, 8, 65536, out)
            wait_until(lambda: remote_stats(m.mnt)["pending_wants"] >= 8, timeout=15,
                       what="8 reads waiting on the stalled peer")
            worst = 0.0
            for i in range(20):
                t0 = time.monotonic()
                assert len(os.listdir(m.branch("main"))) == 11
                os.stat(m.branch("main", f"small{i % 10}.txt"))
                os.listdir(m.path("commits"))
                remote_stats(m.mnt)
                worst = max(worst, time.monotonic() - t0)
            assert worst < 2.0, f"metadata took {worst:.2f} s while reads waited"
            assert not out and all(t.is_alive() for t in readers), out
            took = _sigterm_and_wait(m, clone)
            for t in readers:
                t.join(10)
            assert not any(t.is_alive() for t in readers)
            assert set(out) == set(range(8)) and all(isinstance(v, int) and v != 65536 for v in out.values()), out
            assert "still pending after the signal" in m.log()
        print(f"\nmetadata worst {worst * 1000:.0f} ms while 8 reads waited; exit {took:.2f} s after SIGTERM")
    finally:
        stalled.kill()


@pytest.mark.timeout(90)
def test_many_reads_wait_a_reader_killed_then_worker_tasks_shrink(tmp_path):
    clone, stalled = _stalled_lazy_clone(tmp_path, 40 * MIB)
    try:
        with Mounted(clone, tmp_path / "mnt", commit_delay=None, limit=75, check_log=False,
                     extra=["--remote", stalled.url, "--fetch-timeout", "4", "--debug"]) as m:
            big = m.branch("main", "big.bin")
            out: dict = {}
            readers = _start_reads(big, 32, 4096, out)
            victim = subprocess.Popen([sys.executable, "-c", "import os, sys\n"
                                       "f = os.open(sys.argv[1], os.O_RDONLY); os.pread(f, 4096, 38 << 20)", big])
            wait_until(lambda: remote_stats(m.mnt)["pending_wants"] >= 8, timeout=15,
                       what="reads waiting on the stalled peer")
            victim.kill()
            assert len(os.listdir(m.branch("main"))) == 11  # answered while the reads wait
            for t in readers:
                t.join(30)
            assert not any(t.is_alive() for t in readers)
            assert victim.wait(timeout=15) == -signal.SIGKILL
            assert out == {k: errno.EIO for k in range(32)}, out
            os.stat(m.branch("main", "small0.txt"))
            most, _ = _pyfuse3_tasks(m.log())
            # idle tasks end when they find nothing queued: a few more requests, spaced
            def shrunk():
                os.stat(m.branch("main", "small1.txt"))
                return _pyfuse3_tasks(m.log())[1] == 2
            wait_until(shrunk, timeout=10, interval=0.1, what="pyfuse3 worker tasks back to 2")
            assert most >= 8, most
        print(f"\n{most} pyfuse3 tasks at most, 2 after")
    finally:
        stalled.kill()
