"""Lazy remote mounts (issue 6): real server processes, real FUSE mounts, loopback.

What is shown (see docs/lazy.md):

* ``tvcfs clone --lazy`` stores refs, commits, directories and file indexes, no leaves;
* reading one tensor of the remote real model moves at most 1.1x its bytes plus the
  header's leaves (bytes received, counted by the mount), and a second read is local;
* ``safe_open`` reading 3 named tensors moves only their leaves (and those within
  the mount's 128 KiB kernel readahead of them: pages straddle tensor edges);
* ``tvcfs mount URL MNT`` (a cache repository) reads every file byte-identical;
* a foreground read during a background prefetch of a 1 GiB file stays fast;
* two peers, one killed mid-read: the read completes from the other;
* one peer serving corrupt blocks: the read completes, the bad peer is penalised
  and nothing corrupt is stored;
* no reachable peer: EIO within the fetch timeout, the mount keeps working, and
  the next read succeeds once the peer is back.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import statistics
import threading
import time

import numpy as np
import pytest

from support import MIB
from support.cli import run_tvcfs_text as run
from support.mount import edit_lazy_files_in_place, lazy_mount, remote_stats, wait_peers_ready, wire_bytes
from support.safetensors import tensor_range
from support.server import Server
from support.wait import wait_until

pytestmark = [pytest.mark.fuse]

MODEL = "model.safetensors"


def _file_index(repo_path: str, path: str):
    from tvcfs.dag import FileIndex, resolve_path
    from tvcfs.repo import Repo

    with Repo.open(repo_path) as r:
        tree = r.read_commit(r.head()).tree
        e = resolve_path(r.get, tree, path)
        return FileIndex.build(r.get, e.cid)


def _stored_leaves(repo_path: str) -> set:
    from tvcfs.encoding.cid import cid_codec
    from tvcfs.repo import Repo

    with Repo.open(repo_path) as r:
        return {c for c in r.store if cid_codec(c) == 0x55}


def _verify_store(repo_path: str) -> int:
    from tvcfs.encoding.cid import verify_block
    from tvcfs.repo import Repo

    n = 0
    with Repo.open(repo_path) as r:
        for c in r.store:
            verify_block(c, r.store.get(c))
            n += 1
    return n


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(MIB)
            if not b:
                return h.hexdigest()
            h.update(b)


@pytest.fixture(scope="module")
def model_src(tmp_path_factory, real_model_dir):
    from support.repo import commit_dir

    d = tmp_path_factory.mktemp("lazy-model")
    commit_dir(str(d / "src"), real_model_dir)
    return str(d / "src")


@pytest.fixture(scope="module")
def model_server(model_src, tmp_path_factory):
    key = str(tmp_path_factory.mktemp("keys") / "model.key")
    with Server(model_src, key=key) as s:
        yield s


@pytest.fixture(scope="module")
def big_src(tmp_path_factory):
    """A repository with ``big.bin``: 192 MiB of random bytes (CDC-chunked)."""
    from support.repo import commit_dir

    d = tmp_path_factory.mktemp("lazy-big")
    wt = d / "wt"
    wt.mkdir()
    data = np.random.default_rng(6).bytes(192 * MIB)
    (wt / "big.bin").write_bytes(data)
    commit_dir(str(d / "src"), str(wt))
    return str(d / "src"), hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- clone + tensor
@pytest.mark.timeout(120)
def test_lazy_clone_then_one_tensor_moves_only_its_bytes(model_server, real_model_dir, tmp_path):
    clone = tmp_path / "clone"
    run("clone", "--lazy", "-q", model_server.url, clone)
    # refs, commits, trees, file indexes; not a single data leaf
    assert _stored_leaves(str(clone)) <= {bytes.fromhex("01551220e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")}
    log = run("-C", clone, "log").stdout
    assert "commit " in log
    assert run("-C", clone, "ls", "main").stdout.count("\n") >= 10

    src_file = os.path.join(real_model_dir, MODEL)
    name = "embeddings.word_embeddings.weight"
    a, b = tensor_range(src_file, name)
    with open(src_file, "rb") as f:
        f.seek(a)
        want = f.read(b - a)
    idx = _file_index(str(clone), MODEL)
    head_leaves = sum(idx.sizes[i] for i in idx.leaf_range(0, 128 * 1024))

    mnt = tmp_path / "mnt"
    with lazy_mount(str(clone), str(mnt), "--fetch-timeout", 20) as m:
        wait_peers_ready(m)
        w0 = wire_bytes(m)
        path = os.path.join(m, "branches", "main", MODEL)
        fd = os.open(path, os.O_RDONLY)
        try:
            n = int.from_bytes(os.pread(fd, 8, 0), "little")
            os.pread(fd, n, 8)
            w1 = wire_bytes(m)
            got = os.pread(fd, b - a, a)
            w2 = wire_bytes(m)
            assert got == want
            tensor_moved = w2 - w1
            total = w2 - w0
            print(f"\nheader read moved {w1 - w0} B; tensor {b - a} B moved {tensor_moved} B "
                  f"({tensor_moved / (b - a):.3f}x); total {total / (b - a):.3f}x")
            # the bound: 1.1x the tensor plus the header's leaves (index nodes are
            # in the lazy clone already)
            assert total <= 1.1 * (b - a) + head_leaves
            r = remote_stats(m)
            assert r["classes"]["tensor"]["bytes"] > 0  # the rest of the tensor: readahead
            assert r["duplicate_blocks"] <= 1
            # a second read is local: drop the page cache of this file, read again
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            reads0 = remote_stats(m)["foreground_fetches"]
            assert os.pread(fd, b - a, a) == want
            assert wire_bytes(m) == w2
            assert remote_stats(m)["foreground_fetches"] == reads0
        finally:
            os.close(fd)
    # fetched leaves were stored (verified) in the clone
    assert len(_stored_leaves(str(clone))) > 10
    _verify_store(str(clone))


@pytest.mark.timeout(120)
def test_fetched_leaves_are_not_checked_again_on_first_read(model_server, real_model_dir, tmp_path):
    """Leaves the peer fetcher hashed against their CIDs as they arrived are stored
    as verified (``WriteTxn.put_block(verified=True)``): serving them makes no at-rest
    check (``read_checks`` in ``.tvcfs/stats`` does not move; before: one xxh3 and a
    checksum lookup per leaf on its first read). A leaf the mount did not fetch (read
    from disk, stored by another process) is still checked."""
    from support.mount import stats

    clone = tmp_path / "clone"
    run("clone", "--lazy", "-q", model_server.url, clone)
    src_file = os.path.join(real_model_dir, MODEL)
    a, b = tensor_range(src_file, "embeddings.word_embeddings.weight")
    with open(src_file, "rb") as f:
        f.seek(a)
        want = f.read(b - a)
    with lazy_mount(str(clone), str(tmp_path / "mnt"), "--fetch-timeout", 20) as m:
        wait_peers_ready(m)
        fd = os.open(os.path.join(m, "branches", "main", MODEL), os.O_RDONLY)
        try:
            os.pread(fd, 8, 0)  # the file's index is loaded (its nodes: checked, from disk)
            checks0 = stats(m)["read_checks"]
            w0 = wire_bytes(m)
            assert os.pread(fd, b - a, a) == want
            assert wire_bytes(m) - w0 >= (b - a) // 2  # the tensor's leaves were fetched
            checks = stats(m)["read_checks"] - checks0
        finally:
            os.close(fd)
    print(f"\n{checks} at-rest checks of fetched leaves on their first read")
    assert checks == 0
    # the same leaves, now read by a process that did not fetch them: checked
    with lazy_mount(str(clone), str(tmp_path / "mnt2"), "--fetch-timeout", 20) as m:
        fd = os.open(os.path.join(m, "branches", "main", MODEL), os.O_RDONLY)
        try:
            checks0 = stats(m)["read_checks"]
            assert os.pread(fd, b - a, a) == want
            assert stats(m)["read_checks"] > checks0
        finally:
            os.close(fd)


@pytest.mark.timeout(120)
def test_safe_open_three_named_tensors_moves_only_those(model_server, real_model_dir, tmp_path):
    from safetensors import safe_open

    from tvcfs.sync import clone

    repo, res = clone(model_server.url, str(tmp_path / "clone"), lazy=True, quiet=True)
    repo.close()
    assert res.refs and res.blocks > 0
    names = ["encoder.layer.1.intermediate.dense.weight", "encoder.layer.3.output.dense.weight",
             "encoder.layer.5.attention.self.query.weight"]
    src_file = os.path.join(real_model_dir, MODEL)
    with safe_open(src_file, "np") as f:
        want = {n: f.get_tensor(n) for n in names}
    idx = _file_index(str(tmp_path / "clone"), MODEL)
    # leaves a reader of these tensors may cause to move: theirs and those within the
    # mount's kernel readahead (128 KiB: mmap read-around, pages straddling a tensor's
    # edges) of them, and the header's
    ra = 128 * 1024
    allowed: set = set(idx.leaf_range(0, 2 * ra))
    for n in names:
        a, b = tensor_range(src_file, n)
        allowed |= set(idx.leaf_range(a - ra, b - a + 2 * ra))
    mnt = tmp_path / "mnt"
    with lazy_mount(str(tmp_path / "clone"), str(mnt), "--fetch-timeout", 20) as m:
        wait_peers_ready(m)
        w0 = wire_bytes(m)
        with safe_open(os.path.join(m, "branches", "main", MODEL), "np") as f:
            got = {n: f.get_tensor(n) for n in names}
        moved = wire_bytes(m) - w0
        r = remote_stats(m)
    for n in names:
        assert np.array_equal(got[n], want[n])
    fetched = {i for i, c in enumerate(idx.leaves) if c in _stored_leaves(str(tmp_path / "clone"))}
    tensor_bytes = sum(v.nbytes for v in want.values())
    fetched_bytes = sum(idx.sizes[i] for i in fetched)
    print(f"\n3 tensors {tensor_bytes} B: moved {moved} B ({moved / tensor_bytes:.2f}x), "
          f"{len(fetched)} leaves of {len(idx.leaves)}; file {idx.size} B")
    assert fetched <= allowed, sorted(fetched - allowed)
    assert moved <= 1.1 * fetched_bytes + 64 * 1024  # no block moved twice, little framing
    assert moved < 0.15 * idx.size
    assert r["duplicate_blocks"] == 0


# --------------------------------------------------------------------------- URL mount, full read
@pytest.mark.timeout(180)
def test_mount_url_directly_full_read_is_byte_identical(model_server, real_model_dir, tmp_path):
    from support.trees import tree_bytes

    from tvcfs.fs.daemon import is_mounted

    cache = tmp_path / "cache"
    env = {"TVCFS_CACHE_DIR": str(cache)}
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", model_server.url, mnt, "--fetch-timeout", 30, env=env)
    try:
        assert is_mounted(str(mnt))
        caches = os.listdir(cache)
        assert len(caches) == 1 and caches[0].startswith("12D3KooW")
        got = tree_bytes(str(mnt / "branches" / "main"))
        want = tree_bytes(real_model_dir)
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k] == want[k], k
        r = remote_stats(str(mnt))
        moved = r["wire_bytes"]
        total = sum(len(v) for v in want.values() if isinstance(v, bytes))
        print(f"\nfull read: {total} B of files, {moved} B received ({moved / total:.3f}x)")
        assert moved <= 1.1 * total
        assert r["foreground_timeouts"] == 0 and r["bad_blocks"] == 0
    finally:
        run("unmount", mnt, ok=None)
        if is_mounted(str(mnt)):
            run("unmount", "-z", mnt, ok=None)
    # the cache is a lazy clone holding what was read; mounting again reuses it
    run("mount", model_server.url, mnt, env=env)
    try:
        wait_peers_ready(str(mnt))
        with open(mnt / "branches" / "main" / MODEL, "rb") as f:
            assert f.read(1 << 20) == open(os.path.join(real_model_dir, MODEL), "rb").read(1 << 20)
        assert remote_stats(str(mnt))["wire_bytes"] < 1 << 20
    finally:
        run("unmount", mnt, ok=None)


# --------------------------------------------------------------------------- failures
def _read_all_in_thread(path: str, out: dict):
    def go():
        try:
            out["sha"] = _sha(path)
        except OSError as e:
            out["error"] = e
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


@pytest.mark.timeout(150)
def test_two_peers_one_killed_mid_read(big_src, tmp_path):
    src, digest = big_src
    a = Server(src, key=str(tmp_path / "a.key"))
    b = Server(src, key=str(tmp_path / "b.key"))
    try:
        run("clone", "--lazy", "-q", a.url, tmp_path / "clone")
        mnt = tmp_path / "mnt"
        with lazy_mount(str(tmp_path / "clone"), str(mnt), "--remote", a.url, "--remote", b.url,
                        "--fetch-timeout", 20) as m:
            wait_peers_ready(m, 2)
            out: dict = {}
            t = _read_all_in_thread(os.path.join(m, "branches", "main", "big.bin"), out)
            name_a = f"127.0.0.1:{a.port}"
            deadline = time.monotonic() + 30
            while remote_stats(m)["peers"][name_a]["bytes"] < 16 * MIB:
                assert time.monotonic() < deadline and t.is_alive(), out
                time.sleep(0.005)
            a.kill()  # SIGKILL, mid-read
            killed_at = remote_stats(m)["peers"][name_a]["bytes"]
            t.join(60)
            assert not t.is_alive()
            assert out.get("sha") == digest, out

            # No want stays on the dead peer: A is dropped (connection lost) or found
            # silent (stalled) and its wants moved to B -- or, when the kill landed
            # after A's last answer (loopback delivers it all before SIGKILL takes
            # effect), A holds no want at all. Its stall is seen 2 s (the stall
            # timeout for a 20 s fetch timeout) after its last answer, which can be
            # after the read has completed from B's copies.
            def a_settled():
                pa = remote_stats(m)["peers"][name_a]
                flagged = (pa["state"] != "ready" and pa["failures"] >= 1) or pa["stalls"] >= 1
                return pa if flagged or pa["outstanding_wants"] == 0 else None
            pa = wait_until(a_settled, timeout=15, what="peer A dropped or idle")
            r = remote_stats(m)
            pb = r["peers"][f"127.0.0.1:{b.port}"]
            print(f"\nA sent {pa['bytes']} B (killed at {killed_at}), B sent {pb['bytes']} B; "
                  f"A state {pa['state']}, failures {pa['failures']}, stalls {pa['stalls']}, "
                  f"outstanding wants {pa['outstanding_wants']}")
            assert pb["bytes"] > 64 * MIB
            assert r["foreground_timeouts"] == 0
    finally:
        a.kill()
        b.kill()
    _verify_store(str(tmp_path / "clone"))


@pytest.mark.timeout(150)
def test_corrupt_peer_is_penalised_and_read_completes(model_src, real_model_dir, tmp_path):
    bad = Server(model_src, key=str(tmp_path / "bad.key"), corrupt=True)
    good = Server(model_src, key=str(tmp_path / "good.key"))
    try:
        run("clone", "--lazy", "-q", good.url, tmp_path / "clone")
        mnt = tmp_path / "mnt"
        # the corrupt peer first: it is tried, caught, penalised, then avoided
        with lazy_mount(str(tmp_path / "clone"), str(mnt), "--remote", bad.url, "--remote",
                        good.url, "--fetch-timeout", 20) as m:
            wait_peers_ready(m, 2)
            got = _sha(os.path.join(m, "branches", "main", MODEL))
            assert got == _sha(os.path.join(real_model_dir, MODEL))
            r = remote_stats(m)
            pb = r["peers"][f"127.0.0.1:{bad.port}"]
            pg = r["peers"][f"127.0.0.1:{good.port}"]
            print(f"\nbad peer: {pb['bad_blocks']} bad blocks, score {pb['score']}, penalty "
                  f"{pb['penalty']}; good peer: {pg['bytes']} B, score {pg['score']}")
            assert pb["bad_blocks"] >= 1 and r["bad_blocks"] == pb["bad_blocks"]
            assert pg["bad_blocks"] == 0
            assert pb["penalty"] > 1 and pb["score"] < pg["score"]
            assert pg["bytes"] >= 0.9 * os.path.getsize(os.path.join(real_model_dir, MODEL))
            assert r["foreground_timeouts"] == 0
    finally:
        bad.kill()
        good.kill()
    # every stored block hashes to its CID: the corrupt ones were never stored
    _verify_store(str(tmp_path / "clone"))


@pytest.mark.timeout(120)
def test_no_peers_eio_within_timeout_then_next_read_works(model_src, real_model_dir, tmp_path):
    key = str(tmp_path / "s.key")
    servers = [Server(model_src, key=key)]
    port = servers[0].port
    run("clone", "--lazy", "-q", servers[0].url, tmp_path / "clone")
    servers[0].kill()
    timeout = 2.0
    mnt = tmp_path / "mnt"
    try:
        with lazy_mount(str(tmp_path / "clone"), str(mnt), "--fetch-timeout", timeout) as m:
            path = os.path.join(m, "branches", "main", MODEL)
            assert "config.json" in os.listdir(os.path.join(m, "branches", "main"))
            fd = os.open(path, os.O_RDONLY)  # the file index is local: open works
            try:
                t0 = time.monotonic()
                with pytest.raises(OSError) as ei:
                    os.pread(fd, 4096, 50 << 20)
                dt = time.monotonic() - t0
                assert ei.value.errno == errno.EIO
                print(f"\nEIO after {dt:.2f} s (timeout {timeout} s)")
                assert timeout * 0.8 <= dt <= timeout + 3.0
                r = remote_stats(m)
                assert r["foreground_timeouts"] >= 1 and r["pending_wants"] == 0
                # the mount keeps working; the peer comes back (same key, same port)
                servers.append(Server(model_src, key=key, port=port))
                src = open(os.path.join(real_model_dir, MODEL), "rb")
                src.seek(50 << 20)
                want = src.read(4096)
                src.close()
                t1 = time.monotonic()
                for attempt in range(10):
                    try:
                        assert os.pread(fd, 4096, 50 << 20) == want
                        break
                    except OSError as e:  # until the mount has reconnected
                        assert e.errno == errno.EIO and attempt < 9
                        time.sleep(0.5)
                print(f"read again {time.monotonic() - t1:.2f} s after the peer restarted")
                assert remote_stats(m)["peers"][f"127.0.0.1:{port}"]["state"] == "ready"
            finally:
                os.close(fd)
    finally:
        for s in servers:
            s.kill()


# --------------------------------------------------------------------------- priorities
@pytest.fixture(scope="module")
def gib_src(tmp_path_factory):
    """A repository with ``big.bin``: 1 GiB of random bytes."""
    from support.repo import commit_dir

    d = tmp_path_factory.mktemp("lazy-gib")
    wt = d / "wt"
    wt.mkdir()
    rng = np.random.default_rng(9)
    with open(wt / "big.bin", "wb") as f:
        for _ in range(16):
            f.write(rng.bytes(64 * MIB))
    commit_dir(str(d / "src"), str(wt))
    os.unlink(wt / "big.bin")
    return str(d / "src")


def _timed_reads(fd: int, offsets) -> list:
    out = []
    for off in offsets:
        t = time.perf_counter()
        b = os.pread(fd, 4096, off)
        out.append(time.perf_counter() - t)
        assert len(b) == 4096
    return out


@pytest.mark.timeout(240)
def test_foreground_read_during_background_prefetch_of_1gib(gib_src, tmp_path):
    size = 1 << 30
    with Server(gib_src, key=str(tmp_path / "s.key")) as s:
        run("clone", "--lazy", "-q", s.url, tmp_path / "clone")
        mnt = tmp_path / "mnt"
        with lazy_mount(str(tmp_path / "clone"), str(mnt), "--fetch-timeout", 30) as m:
            wait_peers_ready(m)
            path = os.path.join(m, "branches", "main", "big.bin")
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # 4 KiB reads stay 4 KiB
                rnd = random.Random(1)
                # unloaded: random 4 KiB reads, each a remote fetch of one leaf
                unloaded = _timed_reads(fd, [rnd.randrange(size // 2, size - 4096) for _ in range(40)])
                # background prefetch of the whole file (lowest priority)
                with open(os.path.join(m, ".tvcfs", "prefetch"), "w") as f:
                    f.write("branches/main/big.bin\n")
                wait_until(lambda: remote_stats(m)["classes"]["prefetch"]["bytes"] >= 32 * MIB, 30,
                           what="32 MiB of background prefetch", interval=0.01)
                p0 = remote_stats(m)["classes"]["prefetch"]["bytes"]
                # a burst of reads while the prefetch is running (it yields to them)
                loaded = _timed_reads(fd, [rnd.randrange(size // 2, size - 4096) for _ in range(40)])
                p1 = remote_stats(m)["classes"]["prefetch"]["bytes"]
                # single reads landing in the running prefetch, one every 150 ms
                spaced = []
                for _ in range(8):
                    time.sleep(0.15)  # the spacing is the load pattern under test
                    spaced += _timed_reads(fd, [rnd.randrange(size // 2, size - 4096)])
                p2 = remote_stats(m)["classes"]["prefetch"]["bytes"]
            finally:
                os.close(fd)
    u50, l50, s50 = statistics.median(unloaded), statistics.median(loaded), statistics.median(spaced)
    print(f"\nforeground 4 KiB remote reads: unloaded p50 {u50 * 1e3:.1f} ms max "
          f"{max(unloaded) * 1e3:.1f} ms; burst during prefetch p50 {l50 * 1e3:.1f} ms max "
          f"{max(loaded) * 1e3:.1f} ms (prefetch moved {(p1 - p0) / MIB:.0f} MiB meanwhile); "
          f"spaced reads p50 {s50 * 1e3:.1f} ms (prefetch {(p2 - p1) / MIB:.0f} MiB meanwhile)")
    assert p2 < size and p2 - p1 > 8 * MIB  # the prefetch was running, and resumed between reads
    # generous bounds here (shared 2-core VM); the benchmark reports p50/p99 ratios
    assert l50 <= 2.5 * u50 + 0.005
    assert s50 <= 3 * u50 + 0.010


# --------------------------------------------------------------------------- tvcfs prefetch / --prefetch
@pytest.mark.timeout(120)
def test_mount_prefetch_option_fetches_in_background(model_server, real_model_dir, tmp_path):
    run("clone", "--lazy", "-q", model_server.url, tmp_path / "clone")
    mnt = tmp_path / "mnt"
    with lazy_mount(str(tmp_path / "clone"), str(mnt), "--prefetch", "*.safetensors") as m:
        size = os.path.getsize(os.path.join(real_model_dir, MODEL))
        # done = at least 95 % of the file's bytes arrived and nothing is in flight (at
        # 95 % alone the last leaves may still be coming: the read below would count them)
        r = wait_until(lambda: (r := remote_stats(m))["classes"]["prefetch"]["bytes"] >= size * 0.95
                       and not r["pending_wants"] and not r["queued_jobs"] and r, 60,
                       what="the prefetch of the model to finish")
        assert r["classes"]["foreground"]["bytes"] == 0
        w = r["wire_bytes"]
        # now local: reading it moves nothing
        assert _sha(os.path.join(m, "branches", "main", MODEL)) == _sha(os.path.join(real_model_dir, MODEL))
        assert remote_stats(m)["wire_bytes"] - w < 64 * 1024


@pytest.mark.timeout(120)
def test_copy_on_write_of_files_not_fetched_yet(model_server, real_model_dir, tmp_path):
    """A change in place to a committed file of a lazy mount that was never read
    (a write through a handle, a truncation by path) copies it on write: its leaves
    are fetched first, as a read would. Before: the copy read the local store only,
    and the write failed with EIO although the peer was up."""
    clone = tmp_path / "clone"
    run("clone", "--lazy", "-q", model_server.url, clone)
    with lazy_mount(str(clone), str(tmp_path / "mnt"), "--fetch-timeout", 20, limit=100) as m:
        want = edit_lazy_files_in_place(os.path.join(m, "branches", "main"), real_model_dir)
    with lazy_mount(str(clone), str(tmp_path / "mnt"), "--fetch-timeout", 20, limit=100) as m:
        for name, data in want.items():
            with open(os.path.join(m, "branches", "main", name), "rb") as f:
                assert f.read() == data, name
