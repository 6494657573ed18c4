"""The tvcfs FUSE mount, end to end (issue 3, docs/mount.md): real FUSE mounts of real
LMDB repositories holding the real all-MiniLM-L6-v2 model. No mocks.

Every mount is made by :func:`_mounted` (a child ``tvcfs mount -f`` process started
here) or by the code under test, and is unmounted in a ``finally``: ``fusermount3
-u``, then ``-u -z``; if the mount process does not end it is killed (by its PID).
An autouse watchdog aborts this module's FUSE connections shortly before the
per-test timeout, so a request stuck in a hung mount returns ``ENOTCONN`` instead of
blocking the run, and the fixtures still unmount. ``test_no_mount_left_behind`` runs
failing, timed-out and hung tests in a child pytest and checks that nothing stays
mounted.

Layout of the module repository (``world``)::

    c1  main@T1   the real model            tag v1 -> c1
    c2  main@T2   a fine-tune of it         branches/main, commits/main~1 = c1
    c3  exp @T3   c1 + run.sh (0755), a symlink, an empty file, a 3 MiB blob in sub/
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import mmap
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from support.cli import tvcfs_executable
from support.model import ADDED, make_finetune
from support.mount import Mounted, abort_all, drop_file_cache, os_err
from support.safetensors import read_safetensors_header
from support.trees import assert_same, snapshot
from support.wait import wait_until
from tvcfs.encoding.cid import cid_str
from tvcfs.fs.daemon import is_mounted
from tvcfs.repo import Author, Repo

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
PACKAGING = os.path.join(REPO_ROOT, "packaging")
MIB = 1 << 20
TEST_TIMEOUT = 150          # seconds per test (pytest-timeout)
WATCHDOG = TEST_TIMEOUT - 20  # abort this module's mounts before the timeout fires

AUTHOR = Author("Mount Test", "mount-test@example.org")
T1, T2, T3 = 1_700_000_000, 1_700_003_600, 1_700_007_200
BIG_TENSOR = "embeddings.word_embeddings.weight"

pytestmark = [pytest.mark.fuse, pytest.mark.timeout(TEST_TIMEOUT)]
if not (os.path.exists("/dev/fuse") and shutil.which("fusermount3")):
    pytestmark.append(pytest.mark.skip(reason="needs /dev/fuse and fusermount3"))


# --------------------------------------------------------------------------- mounts
#: options of this module's mounts (support.mount.Mounted): the CLI's commit delay,
#: the module's per-test watchdog instead of a per-mount one, no log check
MOUNT_OPTS = {"commit_delay": None, "limit": None, "check_log": False}


@pytest.fixture(autouse=True)
def _watchdog():
    """Abort this process's mounts if a test runs close to its timeout (a blocked
    request then fails with ENOTCONN, so the timeout and the fixtures can act)."""
    t = threading.Timer(WATCHDOG, abort_all)
    t.daemon = True
    t.start()
    try:
        yield
    finally:
        t.cancel()


# --------------------------------------------------------------------------- data
def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _assert_same_tree(src: str, mounted: str) -> None:
    assert_same(snapshot(src), snapshot(mounted, check_size=True), f"{mounted} against {src}")


@dataclass
class World:
    base: str
    repo: Repo
    src1: str
    src2: str
    src3: str
    c1: bytes
    c2: bytes
    c3: bytes
    m: Mounted

    @property
    def mnt(self) -> str:
        return self.m.mnt


@pytest.fixture(scope="module")
def world(tmp_path_factory, real_model_dir):
    base = str(tmp_path_factory.mktemp("mount"))
    src2 = os.path.join(base, "src2")
    make_finetune(real_model_dir, src2)
    src3 = os.path.join(base, "src3")
    shutil.copytree(real_model_dir, src3)
    with open(os.path.join(src3, "run.sh"), "w") as f:
        f.write("#!/bin/sh\necho hello\n")
    os.chmod(os.path.join(src3, "run.sh"), 0o755)
    os.symlink("model.safetensors", os.path.join(src3, "latest"))
    open(os.path.join(src3, "empty.txt"), "wb").close()
    os.makedirs(os.path.join(src3, "sub", "deep"))
    with open(os.path.join(src3, "sub", "deep", "blob.bin"), "wb") as f:
        f.write(np.random.default_rng(3).bytes(3 * MIB + 12345))
    repo = Repo.init(os.path.join(base, "repo"))
    try:
        c1 = repo.commit_dir(real_model_dir, "main", "real model", AUTHOR, timestamp=T1).cid
        repo.create_tag("v1", c1)
        c2 = repo.commit_dir(src2, "main", "fine-tune", AUTHOR, timestamp=T2).cid
        repo.create_branch("exp", c1)
        c3 = repo.commit_dir(src3, "exp", "extras", AUTHOR, timestamp=T3).cid
        with Mounted(repo.root, os.path.join(base, "mnt"), **MOUNT_OPTS) as m:
            yield World(base, repo, real_model_dir, src2, src3, c1, c2, c3, m)
    finally:
        repo.close()


# --------------------------------------------------------------------------- layout
def test_layout_head_and_refs(world):
    mnt = world.mnt
    assert sorted(os.listdir(mnt)) == sorted(["HEAD", "branches", "commits", "tags", "hf", ".tvcfs"])
    assert os.readlink(os.path.join(mnt, "HEAD")) == "branches/main"
    assert _read(os.path.join(mnt, "HEAD", "config.json")) == _read(os.path.join(world.src2, "config.json"))
    assert sorted(os.listdir(os.path.join(mnt, "branches"))) == ["exp", "main"]
    assert os.listdir(os.path.join(mnt, "tags")) == ["v1"]
    st = os.statvfs(mnt)
    assert st.f_namemax == 255 and st.f_bsize > 0
    stats = world.m.stats()
    assert {"reads", "bytes_served", "leaf_bytes", "errors"} <= set(stats)


@pytest.mark.parametrize("view,src", [
    ("branches/main", "src2"), ("tags/v1", "src1"), ("commits/{c1}", "src1"),
    ("commits/{c2}", "src2"), ("branches/exp", "src3"), ("commits/{c3}", "src3"),
])
def test_every_file_byte_identical(world, view, src):
    view = view.format(c1=cid_str(world.c1), c2=cid_str(world.c2), c3=cid_str(world.c3))
    _assert_same_tree(getattr(world, src), os.path.join(world.mnt, view))


def test_checkout_by_cd(world):
    """``cd`` into a revision, then relative paths (what ``from_pretrained(".")`` does)."""
    old = os.getcwd()
    prefix = cid_str(world.c1)[:16]
    try:
        for rev, src in ((f"commits/{prefix}", world.src1), ("tags/v1", world.src1),
                         ("commits/main~1", world.src1), ("commits/exp", world.src3)):
            os.chdir(os.path.join(world.mnt, rev))
            assert os.getcwd() == os.path.join(world.mnt, rev)
            assert sorted(os.listdir(".")) == sorted(os.listdir(src))
            assert _read("config.json") == _read(os.path.join(src, "config.json"))
            assert _read("1_Pooling/config.json") == _read(os.path.join(src, "1_Pooling", "config.json"))
            with open("model.safetensors", "rb") as f:
                f.seek(1000)
                assert f.read(4096) == _read(os.path.join(src, "model.safetensors"))[1000:5096]
            os.chdir("1_Pooling")
            assert _read("config.json") == _read(os.path.join(src, "1_Pooling", "config.json"))
            assert _read("../vocab.txt") == _read(os.path.join(src, "vocab.txt"))
            assert os.stat("..").st_ino == os.stat(os.path.join(world.mnt, rev)).st_ino
    finally:
        os.chdir(old)


def test_revision_syntax(world):
    c = os.path.join(world.mnt, "commits")
    full1, full2, full3 = cid_str(world.c1), cid_str(world.c2), cid_str(world.c3)
    expect = {
        "main": (T2, world.src2), "HEAD": (T2, world.src2), full2: (T2, world.src2),
        "main~1": (T1, world.src1), "main^": (T1, world.src1), "main~1~0": (T1, world.src1),
        "v1": (T1, world.src1), full1: (T1, world.src1), full1[:12]: (T1, world.src1),
        "exp": (T3, world.src3), "exp~1": (T1, world.src1), full3[:20]: (T3, world.src3),
    }
    for rev, (ts, src) in expect.items():
        d = os.path.join(c, rev)
        st = os.stat(d)
        assert stat.S_ISDIR(st.st_mode), rev
        assert st.st_mtime == ts, rev
        assert sorted(os.listdir(d)) == sorted(os.listdir(src)), rev
        assert _read(os.path.join(d, "config.json")) == _read(os.path.join(src, "config.json")), rev
        assert os.stat(os.path.join(d, "model.safetensors")).st_size == \
            os.stat(os.path.join(src, "model.safetensors")).st_size, rev


def test_enoent_for_unknown_revisions_and_paths(world):
    m = world.mnt
    full1 = cid_str(world.c1)
    leaf = world.repo.entry(world.c1, "config.json").cid  # a file, not a commit
    other = "bafyreib" + "a" * (len(full1) - 7)            # well-formed, unknown
    for p in ("commits/nosuch", "commits/main~2", "commits/exp~9", "commits/bafyreizzzz",
              f"commits/{full1[:-1]}x", f"commits/{cid_str(leaf)}", f"commits/{other}",
              "commits/v2", "tags/nosuch", "branches/nosuch", "nosuch",
              "tags/v1/nosuch.json", f"commits/{full1}/1_Pooling/nosuch",
              ".tvcfs/nosuch"):
        assert os_err(os.stat, os.path.join(m, p)) == errno.ENOENT, p
    assert os_err(os.listdir, os.path.join(m, "tags", "v1", "config.json")) == errno.ENOTDIR


def test_stat_fields(world):
    """st_size = file size, st_mtime = commit time, st_blocks, 0444/0555 modes."""
    cases = (("tags/v1", world.src1, T1), (f"commits/{cid_str(world.c1)}", world.src1, T1),
             ("commits/exp", world.src3, T3), ("commits/main", world.src2, T2))
    for view, src, ts in cases:
        root = os.path.join(world.mnt, view)
        st = os.stat(root)
        assert stat.S_IMODE(st.st_mode) == 0o555 and stat.S_ISDIR(st.st_mode), view
        for rel, kind in snapshot(src).items():
            p = os.path.join(root, rel)
            st = os.lstat(p)
            assert st.st_mtime == ts, (view, rel)
            assert st.st_uid == os.getuid() and st.st_gid == os.getgid()
            if kind[0] == "d":
                assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555, (view, rel)
            elif kind[0] == "l":
                assert stat.S_ISLNK(st.st_mode) and os.readlink(p) == kind[1]
            else:
                size = os.path.getsize(os.path.join(src, rel))
                assert stat.S_ISREG(st.st_mode), (view, rel)
                assert stat.S_IMODE(st.st_mode) == (0o555 if kind[2] else 0o444), (view, rel)
                assert st.st_size == size, (view, rel)
                assert st.st_blocks == (size + 511) // 512, (view, rel)
                assert st.st_nlink == 1
    # attributes come from the DAG: stat-ing a large file reads none of its data
    before = world.m.stats()
    st = os.stat(os.path.join(world.mnt, "commits", cid_str(world.c2)[:14], "model.safetensors"))
    assert st.st_size == os.path.getsize(os.path.join(world.src2, "model.safetensors"))
    assert world.m.stats()["leaf_bytes"] == before["leaf_bytes"]


@pytest.mark.parametrize("view", ["tags/v1", "commits/{c1}", "commits/main~1"])
def test_writes_fail_with_erofs(world, view):
    root = os.path.join(world.mnt, view.format(c1=cid_str(world.c1)))
    f = os.path.join(root, "config.json")
    d = os.path.join(root, "1_Pooling")
    before = _read(f)
    attempts = {
        "open O_WRONLY": lambda: os.open(f, os.O_WRONLY),
        "open O_RDWR": lambda: os.open(f, os.O_RDWR),
        "open O_APPEND": lambda: os.open(f, os.O_WRONLY | os.O_APPEND),
        "open O_TRUNC": lambda: os.open(f, os.O_WRONLY | os.O_TRUNC),
        "create": lambda: os.open(os.path.join(root, "new.txt"), os.O_WRONLY | os.O_CREAT, 0o644),
        "create in subdir": lambda: os.open(os.path.join(d, "new.txt"), os.O_WRONLY | os.O_CREAT, 0o644),
        "truncate": lambda: os.truncate(f, 0),
        "mkdir": lambda: os.mkdir(os.path.join(root, "newdir")),
        "rmdir": lambda: os.rmdir(d),
        "unlink": lambda: os.unlink(f),
        "rename": lambda: os.rename(f, os.path.join(root, "renamed.json")),
        "symlink": lambda: os.symlink("config.json", os.path.join(root, "link")),
        "link": lambda: os.link(f, os.path.join(root, "hard")),
        "chmod": lambda: os.chmod(f, 0o644),
        "utime": lambda: os.utime(f, (1, 1)),
        "setxattr": lambda: os.setxattr(f, "user.x", b"1"),
        "mknod": lambda: os.mknod(os.path.join(root, "fifo"), 0o644 | stat.S_IFIFO),
    }
    for what, fn in attempts.items():
        # hard links are refused everywhere (EPERM, "not supported"), elsewhere EROFS
        assert os_err(fn) in ((errno.EROFS, errno.EPERM) if what == "link" else (errno.EROFS,)), what
    assert _read(f) == before
    assert "new.txt" not in os.listdir(root)


def test_commits_readdir_lists_reachable_commits_newest_first(world):
    names = os.listdir(os.path.join(world.mnt, "commits"))
    assert names == [cid_str(world.c3), cid_str(world.c2), cid_str(world.c1)]
    for n, ts in zip(names, (T3, T2, T1)):
        assert os.stat(os.path.join(world.mnt, "commits", n)).st_mtime == ts


# --------------------------------------------------------------------------- reads
def test_random_offset_reads_8_threads(world):
    """8 threads of random (offset, size) reads, buffered and O_DIRECT, on two files."""
    files = [("tags/v1/model.safetensors", world.src1), ("commits/exp/sub/deep/blob.bin", world.src3)]
    data = {}
    for rel, src in files:
        p = os.path.join(world.mnt, rel)
        drop_file_cache(p)
        data[p] = _read(os.path.join(src, *rel.split("/")[2:]))
    before = world.m.stats()
    errors = []

    def worker(k):
        rng = random.Random(k)
        p = list(data)[k % 2]
        want = data[p]
        direct = k >= 4
        fd = os.open(p, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        buf = mmap.mmap(-1, 2 * MIB)
        try:
            for _ in range(150):
                size = rng.choice((1, 100, 4096, 65536, 300_000, MIB + 7))
                off = rng.randrange(0, len(want) + 100)
                if direct:
                    off &= ~4095
                    size = (size + 4095) & ~4095
                    n = os.preadv(fd, [memoryview(buf)[:size]], off)
                    got = bytes(buf[:n])
                else:
                    got = os.pread(fd, size, off)
                if got != want[off:off + size]:
                    errors.append((p, off, size, len(got)))
                    return
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))
        finally:
            buf.close()
            os.close(fd)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:5]
    after = world.m.stats()
    assert after["reads"] > before["reads"] + 300  # the daemon served them (O_DIRECT at least)
    assert after["errors"] == before["errors"]


def test_safe_open_on_mounted_file(world):
    from safetensors import safe_open

    for view, src in (("tags/v1", world.src1), ("branches/main", world.src2)):
        p = os.path.join(world.mnt, view, "model.safetensors")
        with safe_open(p, "np") as fm, safe_open(os.path.join(src, "model.safetensors"), "np") as fo:
            assert sorted(fm.keys()) == sorted(fo.keys())
            assert fm.metadata() == fo.metadata()
            for k in fo.keys():
                a, b = fm.get_tensor(k), fo.get_tensor(k)
                assert a.dtype == b.dtype and a.shape == b.shape, k
                assert np.array_equal(a, b), k
    with safe_open(os.path.join(world.mnt, "branches/main/model.safetensors"), "np") as f:
        assert ADDED in f.keys()


def test_readahead_and_1mib_requests(world):
    """The mount's bdi read_ahead_kb is raised to 1024, so a cold buffered sequential
    read reaches the filesystem as 1 MiB requests; a second read is served from the
    page cache (keep_cache) without any request."""
    st = os.stat(world.mnt)
    bdi = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
    if os.geteuid() == 0:
        wait_until(lambda: open(bdi).read().strip() == "1024", 5, what="read_ahead_kb = 1024")
    p = os.path.join(world.mnt, "commits", cid_str(world.c2), "model.safetensors")
    size = os.path.getsize(p)
    drop_file_cache(p)
    s0 = world.m.stats()
    with open(p, "rb", buffering=0) as f:
        while f.read(MIB):
            pass
    s1 = world.m.stats()
    reads, served = s1["reads"] - s0["reads"], s1["bytes_served"] - s0["bytes_served"]
    assert served >= size
    if os.geteuid() == 0:
        assert served / reads > 768 * 1024, (reads, served)
    with open(p, "rb", buffering=0) as f:  # re-open: keep_cache keeps the pages
        while f.read(MIB):
            pass
    assert world.m.stats()["reads"] == s1["reads"]


def test_requests_over_two_leaves_are_answered_without_a_joined_copy(world):
    """A read request that spans two leaves (nearly every 1 MiB request of a model:
    leaves follow the tensors, not the file's MiB boundaries) is answered with the
    leaves' own buffers in one ``fuse_reply_iov`` (pyfuse3 built by
    scripts/install.sh with packaging/pyfuse3-read-reply-nogil.patch), not copied
    into a new 1 MiB ``bytes`` under the GIL first (docs/performance.md "Packed
    blocks", sixth round): a cold sequential read of the fine-tune joins no byte
    (``joined_bytes`` of ``.tvcfs/stats``; every byte before) and reads the
    source's bytes. Fails on a pyfuse3 without the patch (run scripts/install.sh)."""
    p = os.path.join(world.mnt, "commits", cid_str(world.c2), "model.safetensors")
    want = _read(os.path.join(world.src2, "model.safetensors"))
    drop_file_cache(p)
    s0 = world.m.stats()
    got = bytearray()
    with open(p, "rb", buffering=0) as f:
        while b := f.read(MIB):
            got += b
    s1 = world.m.stats()
    assert got == want
    assert s1["bytes_served"] - s0["bytes_served"] >= len(want)
    assert s1["joined_bytes"] - s0["joined_bytes"] == 0, (s1["joined_bytes"] - s0["joined_bytes"], len(want))


@pytest.mark.ml
def test_sentence_transformers_loads_model_from_mount(world, monkeypatch):
    """sentence-transformers (on transformers) loads the real model from the mount and
    gives the same embeddings as from the original directory."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    st_mod = pytest.importorskip("sentence_transformers")
    sentences = ["A mounted model is still the same model.", "tvcfs versions tensors."]

    def embed(path):
        model = st_mod.SentenceTransformer(path, device="cpu")
        try:
            return model.encode(sentences, convert_to_numpy=True).copy()
        finally:
            del model
            gc.collect()  # the weights may map the mounted file: let go before unmount

    ref = embed(world.src1)
    assert ref.shape == (2, 384)
    np.testing.assert_array_equal(embed(os.path.join(world.mnt, "commits", cid_str(world.c1))), ref)
    np.testing.assert_array_equal(embed(os.path.join(world.mnt, "tags", "v1")), ref)
    ref2 = embed(world.src2)
    np.testing.assert_array_equal(embed(os.path.join(world.mnt, "branches", "main")), ref2)
    assert not np.array_equal(ref, ref2)


# --------------------------------------------------------------------------- mutations
def test_branch_moves_while_mounted(tmp_path):
    """A commit made while mounted shows under branches/NAME/ without remount; a file
    opened before keeps reading the content it opened; tags and commits stay."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    old_blob = np.random.default_rng(1).bytes(5 * MIB + 3)
    new_blob = np.random.default_rng(2).bytes(4 * MIB + 11)
    (a / "blob.bin").write_bytes(old_blob)
    (a / "note.txt").write_text("old\n")
    (b / "blob.bin").write_bytes(new_blob)
    (b / "note.txt").write_text("new note\n")
    (b / "added.txt").write_text("added\n")
    with Repo.init(str(tmp_path / "repo")) as repo:
        c1 = repo.commit_dir(str(a), "main", "one", AUTHOR, timestamp=T1).cid
        repo.create_tag("v1", c1)
        with Mounted(repo.root, str(tmp_path / "mnt"), **MOUNT_OPTS) as m:
            br = m.path("branches", "main")
            assert _read(os.path.join(br, "note.txt")) == b"old\n"
            f = open(os.path.join(br, "blob.bin"), "rb", buffering=0)
            try:
                assert f.read(MIB) == old_blob[:MIB]
                st_old = os.fstat(f.fileno())
                c2 = repo.commit_dir(str(b), "main", "two", AUTHOR, timestamp=T2).cid
                wait_until(lambda: _read(os.path.join(br, "note.txt")) == b"new note\n", 10,
                      what="branches/main to follow the branch")
                assert sorted(os.listdir(br)) == ["added.txt", "blob.bin", "note.txt"]
                assert _read(os.path.join(br, "blob.bin")) == new_blob
                assert os.stat(os.path.join(br, "blob.bin")).st_size == len(new_blob)
                # (branches/ is the writable layer's: its mtimes are not asserted here)
                st = os.stat(m.path("commits", "main", "blob.bin"))
                assert st.st_size == len(new_blob) and st.st_mtime == T2
                # the open file still reads the old content, also after its cache is dropped
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                assert f.read() == old_blob[MIB:]
                assert os.pread(f.fileno(), 100, 10) == old_blob[10:110]
                assert os.fstat(f.fileno()).st_size == st_old.st_size == len(old_blob)
            finally:
                f.close()
            assert _read(m.path("tags", "v1", "note.txt")) == b"old\n"
            assert _read(m.path("commits", "main~1", "note.txt")) == b"old\n"
            assert _read(m.path("commits", "main", "note.txt")) == b"new note\n"
            assert os.listdir(m.path("commits")) == [cid_str(c2), cid_str(c1)]
            # a new branch appears too
            repo.create_branch("feature", c1)
            wait_until(lambda: "feature" in os.listdir(m.path("branches")), 10, what="new branch")
            assert _read(m.path("branches", "feature", "note.txt")) == b"old\n"


def test_missing_and_corrupt_blocks_give_eio(tmp_path, real_model_dir):
    """A leaf deleted from the store: EIO for exactly the reads that need it, correct
    bytes for all others, logged with the CID; a truncated leaf likewise; with
    --verify-reads a leaf with the right size but wrong bytes too. The mount keeps
    serving."""
    from safetensors import safe_open

    orig = _read(os.path.join(real_model_dir, "model.safetensors"))
    json_len, hdr = read_safetensors_header(os.path.join(real_model_dir, "model.safetensors"))
    hdr_len = 8 + json_len
    with Repo.init(str(tmp_path / "repo")) as repo:
        c1 = repo.commit_dir(real_model_dir, "main", "real", AUTHOR, timestamp=T1).cid
        idx = repo.file_index(repo.entry(c1, "model.safetensors").cid)

        def inner_leaf(tensor):  # a leaf in the middle of a multi-leaf tensor
            s, e = (hdr_len + x for x in hdr[tensor]["data_offsets"])
            inside = [i for i in range(len(idx.leaves)) if s <= idx.starts[i] and idx.starts[i] + idx.sizes[i] <= e]
            assert len(inside) >= 3, tensor
            return inside[len(inside) // 2]

        big = sorted((k for k in hdr if k != "__metadata__"),
                     key=lambda k: -(hdr[k]["data_offsets"][1] - hdr[k]["data_offsets"][0]))
        gone, bad, wrong = inner_leaf(big[0]), inner_leaf(big[1]), inner_leaf(big[2])
        gone_cid, bad_cid = idx.leaves[gone], idx.leaves[bad]
        with Mounted(repo.root, str(tmp_path / "mnt"), **MOUNT_OPTS) as m:
            p = m.path("commits", "main", "model.safetensors")
            assert os.path.getsize(p) == len(orig)
            assert repo.store.delete(gone_cid)
            with repo.store.write() as w:  # a truncated copy of another leaf
                blk = bytes(w.get_block(bad_cid))
                w.txn.put(bad_cid, blk[:-1000], db=w.db["blocks"])
            time.sleep(1.2)  # the mount renews its read snapshot every 0.5 s

            def page_span(i):
                return idx.starts[i] & ~4095, (idx.starts[i] + idx.sizes[i] + 4095) & ~4095

            spans = [page_span(gone), page_span(bad)]
            fd = os.open(p, os.O_RDONLY)
            try:
                failed = []
                step = 64 * 1024
                for off in range(0, len(orig), step):
                    expect_fail = any(off < hi and off + step > lo for lo, hi in spans)
                    try:
                        got = os.pread(fd, step, off)
                    except OSError as e:
                        assert e.errno == errno.EIO, off
                        assert expect_fail, f"EIO at {off}, outside the damaged leaves"
                        failed.append(off)
                        continue
                    assert got == orig[off:off + len(got)], off
                    if len(got) < min(step, len(orig) - off):  # stopped short of a damaged page
                        assert expect_fail and any(off + len(got) == lo for lo, _ in spans), off
                        failed.append(off)
                    else:
                        assert not expect_fail, f"read at {off} should need a damaged leaf"
                assert len(failed) >= 2 * (MIB // step - 1)
                # exact ranges with O_DIRECT: the first and last byte of the missing leaf
                s, e = idx.starts[gone], idx.starts[gone] + idx.sizes[gone]
                dfd = os.open(p, os.O_RDONLY | os.O_DIRECT)
                try:
                    assert os_err(os.pread, dfd, 1, s) == errno.EIO
                    assert os_err(os.pread, dfd, 1, e - 1) == errno.EIO
                    assert os.pread(dfd, 4096, s - 4096) == orig[s - 4096:s]
                    assert os.pread(dfd, 4096, e) == orig[e:e + 4096]
                finally:
                    os.close(dfd)
            finally:
                os.close(fd)
            # every tensor that does not need the damaged leaves loads through mmap
            damaged = {big[0], big[1]}
            with safe_open(p, "np") as f, safe_open(os.path.join(real_model_dir, "model.safetensors"), "np") as o:
                for k in o.keys():
                    if k not in damaged:
                        assert np.array_equal(f.get_tensor(k), o.get_tensor(k)), k
            # the mount keeps serving everything else
            assert _read(m.path("tags", "..", "commits", "main", "config.json")) == \
                _read(os.path.join(real_model_dir, "config.json"))
            assert m.stats()["errors"] >= len(failed)
        log = m.log()
        assert cid_str(gone_cid) in log and cid_str(bad_cid) in log

        # --verify-reads: same size, wrong bytes -> EIO; the rest is fine
        wrong_cid = idx.leaves[wrong]
        with repo.store.write() as w:
            blk = bytearray(w.get_block(wrong_cid))
            blk[100] ^= 0xFF
            w.txn.put(wrong_cid, bytes(blk), db=w.db["blocks"])
        with Mounted(repo.root, str(tmp_path / "mnt2"), extra=["--verify-reads"], **MOUNT_OPTS) as m2:
            p = m2.path("commits", "main", "model.safetensors")
            dfd = os.open(p, os.O_RDONLY | os.O_DIRECT)
            try:
                s = idx.starts[wrong]
                assert os_err(os.pread, dfd, 4096, s & ~4095) == errno.EIO
                assert os.pread(dfd, 4096, 0) == orig[:4096]
            finally:
                os.close(dfd)
        assert cid_str(wrong_cid) in m2.log()


# --------------------------------------------------------------------------- lifecycle
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_foreground_mount_unmounts(world, tmp_path, sig):
    mnt = str(tmp_path / "mnt")
    with Mounted(world.repo.root, mnt, **MOUNT_OPTS) as m:
        assert _read(m.path("tags", "v1", "config.json")) == _read(os.path.join(world.src1, "config.json"))
        os.kill(m.pid, sig)
        assert m.proc.wait(timeout=20) == 0, m.log()
        assert not is_mounted(mnt)
        assert os.listdir(mnt) == []
        assert "unmounted" in m.log()


def test_background_mount_and_unmount_cli(world, tmp_path):
    """``tvcfs mount`` (background) returns once the mount is live; ``tvcfs unmount``
    unmounts and waits for the mount process."""
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    r = subprocess.run([sys.executable, "-m", "tvcfs.cli", "mount", world.repo.root, mnt],
                       capture_output=True, text=True, timeout=60)
    pid = None
    try:
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout.strip().rsplit("pid ", 1)[1].rstrip(")"))
        assert is_mounted(mnt)
        assert _read(os.path.join(mnt, "tags", "v1", "vocab.txt")) == _read(os.path.join(world.src1, "vocab.txt"))
        r2 = subprocess.run([sys.executable, "-m", "tvcfs.cli", "mount", world.repo.root, mnt],
                            capture_output=True, text=True, timeout=60)
        assert r2.returncode != 0 and "already mounted" in r2.stderr
        r = subprocess.run([sys.executable, "-m", "tvcfs.cli", "unmount", mnt],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(mnt)
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True, timeout=30)
        if pid and os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_python_mount_api_always_unmounts(world, tmp_path):
    import tvcfs.fs

    mnt = str(tmp_path / "mnt")
    with pytest.raises(ZeroDivisionError):
        with tvcfs.fs.mount(world.repo.root, mnt) as path:
            assert is_mounted(path)
            assert os.listdir(os.path.join(path, "tags")) == ["v1"]
            1 / 0
    assert not is_mounted(mnt)


def test_python_mount_api_survives_a_log_flood(world, tmp_path):
    """Thousands of logged EIO replies must not block the mount process on a full
    output pipe (the context manager's child writes its log somewhere)."""
    import tvcfs.fs

    mnt = str(tmp_path / "mnt")
    with tvcfs.fs.mount(world.repo.root, mnt, extra_args=("--debug",)) as path:
        def work():
            for i in range(3000):
                with contextlib.suppress(FileNotFoundError):
                    os.stat(os.path.join(path, "commits", f"nosuch{i}"))
            return True
        t = threading.Thread(target=work, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), "the mount stopped answering (blocked on its log output?)"
    assert not is_mounted(mnt)


def test_no_mount_left_behind(tmp_path, world):
    """Tests that fail, time out or hang inside a mount leave nothing mounted."""
    mnts = [str(tmp_path / f"m{i}") for i in range(4)]
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        import pytest
        sys.path.insert(0, {TESTS_DIR!r})
        import test_mount as tm
        from test_mount import _watchdog  # noqa: F401  (autouse)
        tm.WATCHDOG = 3
        REPO, MNTS = {world.repo.root!r}, {mnts!r}

        def test_fails():
            with tm.Mounted(REPO, MNTS[0], **tm.MOUNT_OPTS) as m:
                assert os.listdir(m.path("tags")) == ["v1"]
                assert False, "deliberate failure"

        @pytest.mark.timeout(2)
        def test_times_out():
            with tm.Mounted(REPO, MNTS[1], **tm.MOUNT_OPTS):
                time.sleep(60)

        @pytest.mark.timeout(8)
        def test_hangs():
            with tm.Mounted(REPO, MNTS[2], **tm.MOUNT_OPTS) as m:
                os.kill(m.pid, signal.SIGSTOP)  # the mount stops answering
                os.stat(m.path("commits", "never-answered"))

        @pytest.mark.timeout(0.2)
        def test_times_out_while_mounting():
            with tm.Mounted(REPO, MNTS[3], **tm.MOUNT_OPTS):  # interrupted before the mount is up
                time.sleep(60)
    """)
    (tmp_path / "test_inner.py").write_text(code)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                        str(tmp_path / "test_inner.py")], capture_output=True, text=True, timeout=120,
                       cwd=str(tmp_path))
    assert "4 failed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    for mnt in mnts:
        assert not is_mounted(mnt), mnt
    # ... and no mount process is left to mount later (one still starting when its
    # test gave up used to mount after the check above)
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(m.encode() in argv for m in mnts):
            left.append((pid, argv))
    assert not left, left
    with open("/proc/mounts") as f:
        assert str(tmp_path) not in f.read()


# --------------------------------------------------------------------------- packaging
def _helper_env():
    env = dict(os.environ)
    # the console script of the Python running the tests (a venv's tvcfs is not on PATH
    # unless the venv is activated), else `PYTHON -m tvcfs.cli`
    exe = tvcfs_executable()
    env["TVCFS"] = exe[0] if len(exe) == 1 else ""
    env["PYTHON"] = sys.executable
    return env


def test_mount_helper_parses_options(world, tmp_path):
    """packaging/mount.fuse.tvcfs as mount(8) calls it: REPO MNT -o OPTIONS; known
    options reach ``tvcfs mount``, generic ones are ignored, unknown ones refused."""
    helper = os.path.join(PACKAGING, "mount.fuse.tvcfs")
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    env = _helper_env()
    r = subprocess.run([helper, world.repo.root, mnt, "-o", "rw,bogus=1"], capture_output=True,
                       text=True, env=env, timeout=30)
    assert r.returncode == 1 and "bogus" in r.stderr
    r = subprocess.run([helper, world.repo.root, mnt, "-o", "commit_delay=soon"], capture_output=True,
                       text=True, env=env, timeout=30)
    assert r.returncode == 1
    r = subprocess.run([helper, world.repo.root, mnt, "-f", "-o", "allow_other"], capture_output=True,
                       text=True, env=env, timeout=30)
    assert r.returncode == 0 and "--allow-other" in r.stderr and not is_mounted(mnt)
    # every option of the mount table reaches tvcfs: the helper keeps no list of its own
    # (before: fetch_timeout and cache_size were "unknown" to it)
    r = subprocess.run([helper, world.repo.root, mnt, "-f", "-o", "_netdev,fetch_timeout=7,cache_size=512M"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "--fetch-timeout 7.0" in r.stderr and f"--cache-size {512 << 20}" in r.stderr
    r = subprocess.run([helper, str(tmp_path), mnt], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 32 and not is_mounted(mnt)
    r = subprocess.run([helper, world.repo.root, mnt, "-o", "read_ahead_kb=lots"], capture_output=True,
                       text=True, env=env, timeout=30)
    assert r.returncode == 1 and "read_ahead_kb" in r.stderr and "integer" in r.stderr
    opts = ("rw,nosuid,nodev,noauto,_netdev,nofail,x-systemd.automount,commit_delay=2.5,verify_reads,"
            "read_ahead_kb=256,bogus")
    r = subprocess.run([helper, world.repo.root, mnt, "-n", "-s", "-o", opts, "-t", "fuse.tvcfs"],
                       capture_output=True, text=True, env=env, timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        assert is_mounted(mnt)
        cmd = _daemon_cmdline(world.repo, mnt)
        assert "--verify-reads" in cmd and cmd[cmd.index("--commit-delay") + 1] == "2.5", cmd
        assert cmd[cmd.index("--read-ahead-kb") + 1] == "256", cmd
        assert _read(os.path.join(mnt, "tags", "v1", "config.json")) == _read(os.path.join(world.src1, "config.json"))
        if os.geteuid() == 0:  # the mount set its bdi's readahead to the option's value
            st = os.stat(mnt)
            bdi = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
            wait_until(lambda: open(bdi).read().strip() == "256", 5, what="read_ahead_kb = 256")
    finally:
        _unmount_external(world.repo, mnt)


def _daemon_pid(repo, mnt):
    from tvcfs.fs.daemon import _pidfile

    try:
        with open(_pidfile(repo.control, mnt)) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _daemon_cmdline(repo, mnt):
    pid = _daemon_pid(repo, mnt)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def _unmount_external(repo, mnt):
    """Unmount a mount made by a helper; end its process (found by its pidfile)."""
    pid = _daemon_pid(repo, mnt)
    if is_mounted(mnt):
        r = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, timeout=30)
        if r.returncode:
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True, timeout=30)
    if pid:
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        if os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def installed_helpers():
    """The mount helpers installed in /sbin by packaging/install.sh (needs root).
    Removed afterwards unless they were installed before."""
    if os.geteuid() != 0 or not os.access("/sbin", os.W_OK):
        pytest.skip("installing /sbin/mount.fuse.tvcfs needs root")
    # /sbin is shared by every test run on the machine: a second run installing and
    # removing the helpers between this test's mounts would break it, so the runs take
    # turns (an exclusive lock held from install to removal).
    with open("/run/lock/tvcfs-tests-sbin-helpers.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existed = os.path.exists("/sbin/mount.fuse.tvcfs")
        r = subprocess.run(["sh", os.path.join(PACKAGING, "install.sh"), "--no-systemd", "--sbindir", "/sbin",
                            "--tvcfs", tvcfs_executable()[0]], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        try:
            yield "/sbin/mount.fuse.tvcfs"
        finally:
            if not existed:
                subprocess.run(["sh", os.path.join(PACKAGING, "install.sh"), "--no-systemd", "--sbindir", "/sbin",
                                "--uninstall"], capture_output=True, timeout=60)


def test_mount_t_fuse_tvcfs_and_fstab(world, tmp_path, installed_helpers):
    """``mount -t fuse.tvcfs REPO MNT -o ...`` and an fstab line work through the
    installed helper; ``umount`` goes through umount.fuse.tvcfs (tvcfs unmount)."""
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    env = dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin")  # as systemd/boot would
    try:
        r = subprocess.run(["mount", "-t", "fuse.tvcfs", world.repo.root, mnt, "-o", "commit_delay=3,_netdev"],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert is_mounted(mnt)
        with open("/proc/mounts") as f:
            line = next(ln for ln in f if ln.split()[1] == os.path.realpath(mnt))
        assert line.split()[2] == "fuse.tvcfs"
        assert _read(os.path.join(mnt, "tags", "v1", "config.json")) == _read(os.path.join(world.src1, "config.json"))
        cmd = _daemon_cmdline(world.repo, mnt)
        assert cmd[cmd.index("--commit-delay") + 1] == "3.0", cmd
        r = subprocess.run(["umount", mnt], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(mnt)

        fstab = tmp_path / "fstab"
        fstab.write_text(f"# test\n{world.repo.root}  {mnt}  fuse.tvcfs  "
                         "defaults,noauto,_netdev,x-systemd.automount,verify_reads  0  0\n")
        r = subprocess.run(["mount", "--fstab", str(fstab), mnt], capture_output=True, text=True, env=env,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert is_mounted(mnt)
        assert "--verify-reads" in _daemon_cmdline(world.repo, mnt)
        _assert_same_tree(world.src1, os.path.join(mnt, "tags", "v1"))
        r = subprocess.run(["umount", mnt], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(mnt)
    finally:
        _unmount_external(world.repo, mnt)


def test_install_sh_and_systemd_unit(tmp_path):
    """install.sh --destdir lays out the helpers and the unit with the tvcfs path
    filled in; systemd-analyze accepts the unit (when available)."""
    dest = tmp_path / "root"
    tvcfs_bin = tvcfs_executable()[0]
    r = subprocess.run(["sh", os.path.join(PACKAGING, "install.sh"), "--destdir", str(dest),
                        "--tvcfs", tvcfs_bin], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    helper = dest / "sbin" / "mount.fuse.tvcfs"
    unit = dest / "etc" / "systemd" / "system" / "tvcfs-mount@.service"
    assert os.access(helper, os.X_OK) and os.access(dest / "sbin" / "umount.fuse.tvcfs", os.X_OK)
    assert (dest / "etc" / "tvcfs" / "mounts").is_dir()
    text = unit.read_text()
    assert "@TVCFS@" not in text and "@TVCFS@" not in helper.read_text()
    exec_lines = {ln.split("=", 1)[0]: ln.split("=", 1)[1] for ln in text.splitlines()
                  if ln.startswith(("ExecStart=", "ExecStop="))}
    assert " mount -f " in exec_lines["ExecStart"] and exec_lines["ExecStop"].endswith(" unmount %f")
    if shutil.which("systemd-analyze"):
        inst = tmp_path / "tvcfs-mount@mnt-models.service"
        inst.write_text(text)
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(inst)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = subprocess.run(["sh", os.path.join(PACKAGING, "install.sh"), "--destdir", str(dest), "--uninstall"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not helper.exists() and not unit.exists()


def test_pyfuse3_writes_read_replies_without_the_gil():
    """The README's install (scripts/install.sh) builds pyfuse3 with
    packaging/pyfuse3-read-reply-nogil.patch: a read's reply (up to 1 MiB copied into
    /dev/fuse) no longer holds the GIL the page-in and decode threads need
    (docs/mount.md, "Reads"; 25-30 % faster cold reads, docs/performance.md), and a
    reply may be several buffers (one ``fuse_reply_iov``, no joined copy: label
    ``nogilread2``), and with packaging/pyfuse3-request-loop.patch a queued request is
    read without a pass of the event loop (label ``nogilread3``). This fails when the
    suite runs on the stock build or an older patched one, whose mount is slower but
    correct."""
    import importlib.metadata

    assert importlib.metadata.version("pyfuse3").endswith("+tvcfs.nogilread3"), \
        "pyfuse3 without packaging/pyfuse3-*.patch: run scripts/install.sh"
