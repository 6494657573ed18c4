"""Processes racing on one repository (real ``tvcfs`` subprocesses, real LMDB, a real
``tvcfs serve`` on loopback): what git does — a lock or a clean refusal, never a
lost block (docs/repository.md, "Garbage collection while others write").

- ``tvcfs gc`` while a ``tvcfs clone`` into the same repository is storing blocks
  that no ref names yet: gc keeps them (the fetch records its roots first), the
  clone finishes, ``fsck`` is clean and the bytes are the source's (before: gc
  deleted the blocks fetched so far, the clone failed "incomplete: 1 block(s)
  missing" and had to fetch them again).
- ``tvcfs gc --expire 0`` while a mount has a file of a since deleted branch open:
  gc keeps the whole reflog while the repository is mounted, and the file reads on
  (before: EIO part-way).
- ``tvcfs gc`` in a served repository while a push into it is being received: gc
  refuses with one line until the ref update, the push lands (before: gc deleted the
  received blocks and the push was refused "incomplete push").

Only processes started here are ended (by PID).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import pytest
from support.cli import cli_env, run_tvcfs, tvcfs_executable
from support.mount import Mounted
from support.repo import make_repo, rnd, stored_bytes
from support.wait import wait_until

from tvcfs.repo import Repo

pytestmark = pytest.mark.timeout(120)


@contextlib.contextmanager
def _tvcfs_child(*args):
    """``tvcfs ARGS`` running in the background (yields its ``Popen``); on leaving the
    block waits for it and asserts it succeeded, or kills it (by PID) on an error."""
    child = subprocess.Popen(tvcfs_executable() + [str(a) for a in args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env())
    try:
        yield child
        _, err = child.communicate(timeout=90)
        assert child.returncode == 0, (args, err.decode(errors="replace"))
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.communicate(timeout=30)


@pytest.mark.parametrize("expire", [[], ["--expire", "0"]])
def test_gc_during_a_clone_keeps_the_blocks_it_stored(tmp_path, servers, expire):
    """(``--expire 0`` too: a running fetch's record is a root whatever the expiry;
    before, gc --expire 0 deleted the blocks fetched so far.)"""
    data = rnd(12 << 20, 4)
    make_repo(tmp_path / "s", {"big.bin": data}).close()
    srv = servers(tmp_path / "s" / "repo", tmp_path, "--rate-limit", "3M")
    dst = tmp_path / "dst"
    with _tvcfs_child("clone", "-q", srv.url, dst) as clone:
        wait_until(lambda: stored_bytes(dst) > 2 << 20 or clone.poll() is not None, 60,
                   what="the clone to store 2 MiB")
        assert clone.poll() is None, "the clone finished before gc could run: slow the server down"
        gc = run_tvcfs("-C", dst, "gc", *expire, text=True)
        assert gc.stdout.startswith("deleted 0 blocks"), gc.stdout
    run_tvcfs("-C", dst, "fsck")
    assert run_tvcfs("-C", dst, "cat", "main:big.bin").stdout == data
    # the finished fetch dropped its record: gc no longer keeps anything for it
    with Repo.open(str(dst)) as r:
        assert r.config.get("fetching") == {}


def test_gc_expire_0_keeps_what_an_open_file_of_a_deleted_branch_needs(tmp_path):
    """A file of branch ``side`` open on a mount, ``tvcfs branch -d side``, ``tvcfs gc
    --expire 0``: while the repository is mounted gc keeps the whole reflog (a note
    says so) and the open file reads to its end with its bytes (before: gc deleted
    its blocks and the next read() failed with EIO). Once unmounted, --expire applies."""
    data = rnd(6 << 20, 5)
    repo = make_repo(tmp_path, {"a.txt": b"a\n"})
    root = repo.root
    (tmp_path / "side").mkdir()
    (tmp_path / "side" / "z.bin").write_bytes(data)
    repo.commit_dir(str(tmp_path / "side"), branch="side", message="side")
    repo.close()
    with Mounted(root, str(tmp_path / "mnt")) as m:
        with open(os.path.join(m.mnt, "branches", "side", "z.bin"), "rb", buffering=0) as f:
            head = f.read(1 << 20)
            run_tvcfs("-C", root, "branch", "-d", "side")
            gc = run_tvcfs("-C", root, "gc", "--expire", "0", text=True)
            assert gc.stdout.startswith("deleted 0 blocks"), gc.stdout
            assert "is mounted on" in gc.stderr and "every reflog entry is kept" in gc.stderr, gc.stderr
            rest = f.read()
        assert head + rest == data
    gc = run_tvcfs("-C", root, "gc", "--expire", "0", text=True)
    assert not gc.stdout.startswith("deleted 0 blocks"), gc.stdout
    run_tvcfs("-C", root, "fsck")


def test_gc_on_the_server_during_a_push_deletes_none_of_its_blocks(tmp_path, servers):
    """``tvcfs gc`` in the served repository while a push into it is being received:
    gc refuses with one line (the push is recorded while its blocks have no ref), the
    push lands, fsck is clean (before: gc deleted the blocks received so far and the
    push was refused "incomplete push: block … missing")."""
    client = make_repo(tmp_path / "c", {"big.bin": rnd(128 << 20, 6)})
    client.close()
    croot = str(tmp_path / "c" / "repo")
    sroot = str(tmp_path / "s")
    run_tvcfs("init", sroot)
    me = run_tvcfs("-C", croot, "id", text=True).stdout.strip()
    srv = servers(sroot, tmp_path, "--allow-push", me)
    refusals = 0
    with _tvcfs_child("-C", croot, "push", "-q", srv.url, "main") as push:
        while push.poll() is None:  # from the start: the push takes ~2 s here
            gc = run_tvcfs("-C", sroot, "gc", ok=None, text=True)
            if gc.returncode:
                assert gc.stderr.startswith("tvcfs: error: a push into") and gc.stderr.count("\n") == 1, gc.stderr
                refusals += 1
            else:
                assert gc.stdout.startswith("deleted 0 blocks"), gc.stdout
    assert refusals >= 1, "the push ended before gc ran: push more bytes"
    run_tvcfs("-C", sroot, "fsck")
    with Repo.open(sroot) as r:
        assert r.config.get("receiving") == {}  # the finished push dropped its record
    assert run_tvcfs("-C", sroot, "gc", text=True).stdout.startswith("deleted 0 blocks")


def test_a_push_that_stored_nothing_for_an_hour_no_longer_holds_gc(tmp_path):
    """A ``receiving`` record of a live process (this test's) holds ``tvcfs gc`` back
    while it is fresh; one not renewed for :data:`tvcfs.gc.RECEIVE_IDLE` seconds — a
    client that pushed blocks and never sent its ref update, keeping its session
    alive — no longer does (before: gc refused for as long as the session lived)."""
    import time

    from tvcfs import gc

    repo = make_repo(tmp_path, {"a.txt": b"a\n"})
    root = repo.root
    repo.close()
    with Repo.open(root) as r:
        gc.mark_receiving(r, "k", True)  # pid: this process, alive; time: now
        assert r.config.get("receiving")["k"]["pid"] == os.getpid()
    refused = run_tvcfs("-C", root, "gc", ok=None, text=True)
    assert refused.returncode and refused.stderr.startswith("tvcfs: error: a push into"), refused.stderr
    with Repo.open(root) as r:
        r.config.update("receiving", lambda recs: recs["k"].update(time=int(time.time()) - gc.RECEIVE_IDLE - 5))
    assert run_tvcfs("-C", root, "gc", text=True).stdout.startswith("deleted 0 blocks")


def test_two_fetches_from_one_url_keep_their_own_roots_until_each_ends(tmp_path):
    """Two fetches from one URL at once (the remote moved between them) each record
    their roots; the first to end drops only its own record, so gc still keeps what
    the second is storing; a record of a process that has ended (a failed fetch) is
    dropped by the next fetch from that URL to finish, not by one from another URL
    (before: one record per URL, overwritten by the second fetch and dropped by the
    first to end)."""
    from tvcfs import gc, sync

    url = "tvcfs://127.0.0.1:1/r"
    a, b, c = (bytes([1, 0x55, 0x12, 0x20]) + bytes([i]) * 32 for i in (1, 2, 3))
    with make_repo(tmp_path / "r", {"f": b"x"}) as r:
        ka = sync._fetching(r, url, [a])
        kb = sync._fetching(r, url, [b])
        sync._fetching(r, url, None, ka)  # the first fetch ends
        roots = gc._roots(r, gc.DEFAULT_EXPIRE_DAYS)
        assert b in roots and a not in roots
        dead = subprocess.Popen(["true"])
        dead.wait()
        r.config.update("fetching", lambda recs: recs.update(
            {f"{url}#dead": {"url": url, "pid": dead.pid, "roots": [sync.cid_str(c)], "time": 2 ** 40},
             "other#dead": {"url": "other", "pid": dead.pid, "roots": [sync.cid_str(c)], "time": 2 ** 40}}))
        sync._fetching(r, url, None, kb)  # the second ends: its record and the dead one of its URL go
        assert set(r.config.get("fetching")) == {"other#dead"}
