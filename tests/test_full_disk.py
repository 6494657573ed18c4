"""A full disk: a clear error, nothing lost, and everything works again once there is
space (the standard "bad input loses nothing").

Each test puts a repository on a real, small ``tmpfs`` mounted for the test (root
only) and fills it with real work: ``tvcfs commit`` of the real model, writes through
a real FUSE mount, a clone over real QUIC on loopback. Without the store's disk-space
reservation (``tvcfs.store.lmdb_store``) LMDB's write map turned the first write past
the end of the disk into ``SIGBUS`` and the process died without a word. "Space is
freed" is ``mount -o remount,size=`` of the same tmpfs.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from support import MIB
from support.cli import run_tvcfs
from support.trees import assert_same_tree
from support.mount import Mounted
from support.repo import head
from support.server import TvcfsServe

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")


class SmallDisk:
    """A ``tmpfs`` of ``size`` bytes on ``path`` (unmounted by the fixture)."""

    def __init__(self, path: str, size: int):
        self.path = path
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tvcfs-test", path], check=True)

    def resize(self, size: int) -> None:
        """Free space: grow the file system to ``size`` bytes (contents kept)."""
        subprocess.run(["mount", "-o", f"remount,size={size}", self.path], check=True)

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def unmount(self) -> None:
        subprocess.run(["umount", self.path], check=False)
        if os.path.ismount(self.path):
            subprocess.run(["umount", "-l", self.path], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """``make(size) -> SmallDisk`` on ``tmp_path/disk``; always unmounted after."""
    disks = []

    def make(size: int) -> SmallDisk:
        d = SmallDisk(str(tmp_path / f"disk{len(disks)}"), size)
        disks.append(d)
        return d

    try:
        yield make
    finally:
        for d in disks:
            d.unmount()


def _repo_with_base(disk: SmallDisk, tmp_path) -> tuple[str, bytes]:
    """A repository on ``disk`` with one commit of ``config.json`` on ``main``:
    ``(root, commit CID)``."""
    from tvcfs.repo import Repo

    root = os.path.join(disk.path, "repo")
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / "config.json").write_text('{"v": 1}\n')
    repo = Repo.init(root)
    try:
        repo.commit_dir(str(wt), message="base")
        return root, head(repo)
    finally:
        repo.close()


def _error_text(proc) -> str:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode > 0, (proc.returncode, err)  # an exit code, not a signal (SIGBUS)
    assert "Traceback" not in err, err
    return err


def test_commit_on_full_disk_is_refused_and_loses_nothing(small_disk, real_model_dir, tmp_path):
    """``tvcfs commit`` of the 87 MiB real model into a repository on a 40 MiB disk:
    exit status 1 with one ``no space left`` line (no traceback, no SIGBUS); the branch
    still names the earlier commit and ``fsck`` passes; after space is freed the same
    commit succeeds and checks out byte-identical."""
    disk = small_disk(40 * MIB)
    repo = os.path.join(disk.path, "repo")
    run_tvcfs("init", repo)
    small = tmp_path / "small"
    small.mkdir()
    (small / "README.md").write_text("base\n")
    run_tvcfs("--repo", repo, "commit", small, "-m", "small")
    first = _head(repo)

    err = _error_text(run_tvcfs("--repo", repo, "commit", real_model_dir, "-m", "model", ok=False))
    assert "no space left" in err and "data.mdb" in err, err
    assert _head(repo) == first
    run_tvcfs("--repo", repo, "fsck")
    assert disk.free() < 2 * MIB  # the disk really was filled

    disk.resize(400 * MIB)
    run_tvcfs("--repo", repo, "commit", real_model_dir, "-m", "model")
    run_tvcfs("--repo", repo, "fsck")
    log = run_tvcfs("--repo", repo, "log", "--oneline").stdout.decode()
    assert len(log.splitlines()) == 2, log
    run_tvcfs("--repo", repo, "checkout", "main", tmp_path / "co")
    assert_same_tree(str(tmp_path / "co"), real_model_dir)


def test_checkout_into_full_disk_names_the_file(small_disk, real_model_dir, tmp_path):
    """``tvcfs checkout`` of the 87 MiB model into a 30 MiB disk: exit 1 with one line
    naming the file that did not fit (``os.write`` errors carry no file name)."""
    repo = str(tmp_path / "repo")
    run_tvcfs("init", repo)
    run_tvcfs("--repo", repo, "commit", real_model_dir, "-m", "model")
    disk = small_disk(30 * MIB)
    err = _error_text(run_tvcfs("--repo", repo, "checkout", "main", os.path.join(disk.path, "co"), ok=False))
    assert "No space left on device" in err and "model.safetensors" in err, err
    assert len(err.strip().splitlines()) == 1, err
    run_tvcfs("--repo", repo, "fsck")


def test_store_full_in_process_keeps_the_environment_usable(small_disk):
    """The Python API: ``put_many`` past the end of the disk raises ``StoreFull``; the
    same :class:`LMDBStore` (and a reopened one) still reads what was committed and
    takes new blocks that fit."""
    from tvcfs.encoding.cid import RAW, make_cid
    from tvcfs.store.lmdb_store import LMDBStore, StoreFull

    disk = small_disk(16 * MIB)
    path = os.path.join(disk.path, "store")
    s = LMDBStore(path)
    try:
        kept = b"committed before the disk filled"
        s.put(make_cid(RAW, kept), kept)
        blobs = [os.urandom(MIB) for _ in range(24)]
        with pytest.raises(StoreFull, match="no space left"):
            s.put_many((make_cid(RAW, b), b) for b in blobs)
        assert s.get(make_cid(RAW, kept)) == kept
        assert s.stat()["blocks"] == 1
        small = b"fits after the failure"
        s.put(make_cid(RAW, small), small)
        assert s.get(make_cid(RAW, small)) == small
    finally:
        s.close()
    # a fresh process sees both committed blocks and nothing of the failed batch
    code = ("import sys; from tvcfs.store.lmdb_store import LMDBStore; s = LMDBStore(sys.argv[1]); "
            "print(s.stat()['blocks']); s.close()")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"


@pytest.mark.fuse
@pytest.mark.timeout(120)
def test_mount_write_on_full_disk_fails_fsync_with_enospc_and_keeps_the_write(small_disk, tmp_path):
    """A file written into ``branches/main`` that fits in the staging area but not also
    in the store: ``fsync`` fails with ``ENOSPC`` (the writer learns the data is not
    committed), the branch is unchanged, the mount keeps serving and reading the file
    back gives the written bytes; after space is freed the next ``fsync`` commits it.
    A write that does not fit at all fails with ``ENOSPC`` itself."""
    from tvcfs.repo import Repo

    disk = small_disk(48 * MIB)
    root, base = _repo_with_base(disk, tmp_path)
    data = os.urandom(28 * MIB)  # staged copy + store copy > 48 MiB
    mnt = tmp_path / "mnt"
    with Mounted(root, mnt, commit_delay=3600, allow_errors=("no space left",)) as m:
        path = os.path.join(m.branch(), "weights.bin")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            with pytest.raises(OSError) as ei:
                os.fsync(fd)
            assert ei.value.errno == errno.ENOSPC
            with open(path, "rb") as f:  # the staged bytes are all there
                assert f.read() == data
            with open(os.path.join(m.branch(), "config.json"), "rb") as f:
                assert f.read() == b'{"v": 1}\n'
            r = Repo.open(root)
            try:
                assert head(r) == base
            finally:
                r.close()
            assert "no space left" in m.log()
            status = run_tvcfs("--repo", root, "status").stdout.decode()
            assert "last commit attempt failed" in status and "no space left" in status, status
            assert "weights.bin" in status, status

            # a write larger than what is left fails by itself
            big = os.path.join(m.branch(), "too-big.bin")
            with pytest.raises(OSError) as ei:
                with open(big, "wb") as f:
                    f.write(os.urandom(32 * MIB))
                    f.flush()
            assert ei.value.errno == errno.ENOSPC
            os.unlink(big)

            disk.resize(256 * MIB)
            os.fsync(fd)
        finally:
            os.close(fd)
        r = Repo.open(root)
        try:
            new = head(r)
            assert new != base
            assert b"".join(r.read_file("main", "weights.bin")) == data
            assert sorted(e.name for e in r.ls("main")) == ["config.json", "weights.bin"]
        finally:
            r.close()


@pytest.mark.fuse
@pytest.mark.timeout(120)
def test_quiet_commits_back_off_while_the_disk_is_full(small_disk, tmp_path):
    """Without fsync, the quiet-period commit fails on a full disk and is retried with
    a growing delay (1, 2, 4 … s), not at every tick (a commit re-reads every staged
    file); once there is space the write is committed without any further action."""
    import time

    from tvcfs.repo import Repo

    disk = small_disk(48 * MIB)
    root, base = _repo_with_base(disk, tmp_path)
    data = os.urandom(28 * MIB)
    with Mounted(root, tmp_path / "mnt", commit_delay=0.2, allow_errors=("no space left",)) as m:
        with open(os.path.join(m.branch(), "weights.bin"), "wb") as f:
            f.write(data)
        t0 = time.monotonic()
        time.sleep(4.0)  # the behaviour under test: how many retries fit in 4 s (the back-off)
        attempts = m.log().count("commit of branch main failed")
        # at ~0.2 s, then 1, 2 s later (and perhaps one more at the edge); a retry at
        # every 0.25 s tick would have made ~15
        assert 1 <= attempts <= 4, m.log()[-3000:]
        assert _head(root) == base
        disk.resize(256 * MIB)
        deadline = t0 + 40
        while _head(root) == base and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _head(root) != base, m.log()[-3000:]
    r = Repo.open(root)
    try:
        assert b"".join(r.read_file("main", "weights.bin")) == data
    finally:
        r.close()
    assert "last commit attempt failed" not in run_tvcfs("--repo", root, "status").stdout.decode()


@pytest.mark.timeout(180)
def test_clone_into_full_disk_stops_cleanly_and_resumes(small_disk, real_model_dir, tmp_path):
    """``tvcfs clone`` of the real model over QUIC into a 40 MiB disk: exit 1, a ``no
    space left`` error and a hint to resume; the blocks that arrived are kept and valid;
    after space is freed the same command finishes the clone, moving only what was
    missing, and the checkout equals the model."""
    src = str(tmp_path / "src")
    run_tvcfs("init", src)
    run_tvcfs("--repo", src, "commit", real_model_dir, "-m", "model")
    commit = _head(src)
    with TvcfsServe(src, tmp_path) as srv:
        url = srv.url
        assert url.startswith("tvcfs://"), url
        disk = small_disk(40 * MIB)
        dest = os.path.join(disk.path, "clone")
        err = _error_text(run_tvcfs("clone", url, dest, ok=False))
        assert "no space left" in err and "hint:" in err and "resume" in err, err
        run_tvcfs("--repo", dest, "fsck")  # what arrived is valid

        disk.resize(400 * MIB)
        out = run_tvcfs("clone", url, dest).stderr.decode()
        assert "Resuming" in out, out
        assert _head(dest) == commit
        run_tvcfs("--repo", dest, "fsck")
        run_tvcfs("--repo", dest, "checkout", "main", tmp_path / "co")
        assert_same_tree(str(tmp_path / "co"), real_model_dir)


def _head(root: str) -> bytes | None:
    """``refs/heads/main`` of the repository at ``root``, read in this process."""
    from tvcfs.repo import Repo

    r = Repo.open(root)
    try:
        return head(r)
    finally:
        r.close()


def _fill(disk: SmallDisk) -> str:
    """Fill ``disk`` to the last byte with a file beside the repository; return its path."""
    filler = os.path.join(disk.path, "filler")
    with open(filler, "wb", buffering=0) as f:
        for size in (MIB, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    return filler


@pytest.mark.fuse
@pytest.mark.timeout(120)
def test_namespace_changes_on_a_full_disk_fail_with_enospc_and_change_nothing(small_disk, tmp_path):
    """With the repository's disk full to the last byte, a namespace change in a branch
    directory (mkdir, create, rename, unlink, symlink, chmod) cannot be journaled: it
    fails with ``ENOSPC`` and is not made (the tree shows nothing of it, its journal
    holds no torn line); the branch keeps its commit; once space is freed the mount
    works on, and the next commit (and a crash recovery of the staging area) holds
    exactly the changes that succeeded."""
    from tvcfs.repo import Repo

    disk = small_disk(16 * MIB)
    root, base = _repo_with_base(disk, tmp_path)
    with Mounted(root, tmp_path / "mnt", commit_delay=3600, allow_errors=("no space left",)) as m:
        br = m.branch()
        os.mkdir(os.path.join(br, "before"))  # the workspace exists, its journal is open
        filler = _fill(disk)
        failed = []
        for what, op in [("mkdir", lambda: os.mkdir(os.path.join(br, "d" * 200))),
                         ("create", lambda: open(os.path.join(br, "n" * 200), "wb").close()),
                         ("rename", lambda: os.rename(os.path.join(br, "config.json"),
                                                      os.path.join(br, "c" * 200 + ".json"))),
                         ("symlink", lambda: os.symlink("t" * 200, os.path.join(br, "s" * 200))),
                         ("unlink", lambda: os.unlink(os.path.join(br, "config.json"))),
                         ("rmdir", lambda: os.rmdir(os.path.join(br, "before"))),
                         ("chmod", lambda: os.chmod(os.path.join(br, "config.json"), 0o755))]:
            for _ in range(40):  # the journal's last page may still have room: change until it has none
                try:
                    op()
                except OSError as e:
                    assert e.errno == errno.ENOSPC, (what, e)
                    failed.append(what)
                    break
                # it succeeded (journaled): undo it so that the next attempt is the same change
                if what == "mkdir":
                    os.rmdir(os.path.join(br, "d" * 200))
                elif what == "create":
                    os.unlink(os.path.join(br, "n" * 200))
                elif what == "rename":
                    os.rename(os.path.join(br, "c" * 200 + ".json"), os.path.join(br, "config.json"))
                elif what == "symlink":
                    os.unlink(os.path.join(br, "s" * 200))
                elif what == "unlink":
                    with open(os.path.join(br, "config.json"), "wb") as f:
                        f.write(b'{"v": 1}\n')
                elif what == "rmdir":
                    os.mkdir(os.path.join(br, "before"))
                elif what == "chmod":
                    os.chmod(os.path.join(br, "config.json"), 0o644)
        assert failed == ["mkdir", "create", "rename", "symlink", "unlink", "rmdir", "chmod"], failed
        assert sorted(os.listdir(br)) == ["before", "config.json"], (failed, os.listdir(br))
        with open(os.path.join(br, "config.json"), "rb") as f:
            assert f.read() == b'{"v": 1}\n'
        assert not os.stat(os.path.join(br, "config.json")).st_mode & 0o111
        assert _head(root) == base
        os.unlink(filler)  # space again: the mount works on
        os.mkdir(os.path.join(br, "after"))
        with open(os.path.join(br, "after", "x.txt"), "wb") as f:
            f.write(b"x")
        staging = os.path.join(root, ".tvcfs", "staging")
        for d in os.listdir(staging):  # every journal line whole: replay would read them all
            for name in os.listdir(os.path.join(staging, d)):
                if name.startswith("journal-"):
                    with open(os.path.join(staging, d, name), "rb") as f:
                        text = f.read()
                    assert not text or text.endswith(b"\n")
                    for line in text.splitlines():
                        json.loads(line)
        dfd = os.open(br, os.O_RDONLY)
        try:
            os.fsync(dfd)  # commits
        finally:
            os.close(dfd)
    r = Repo.open(root)
    try:
        assert sorted(e.name for e in r.ls("main")) == ["after", "before", "config.json"]
        assert b"".join(r.read_file("main", "config.json")) == b'{"v": 1}\n'
    finally:
        r.close()
