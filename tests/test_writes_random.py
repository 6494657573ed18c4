"""Randomized differential test of the writable mount (issue 4).

A Hypothesis rule-based state machine applies the same random operations (create,
write at an offset, truncate, O_TRUNC rewrite, append, rename, unlink, mkdir, rmdir,
symlink, chmod, writes and reads through handles kept open across commits) to a
directory in ``MOUNT/branches/main`` and to a plain directory on disk. Every outcome
must agree (same bytes, same errno). After every commit (an ``fsync`` of the
directory) both trees must be identical, and so must the committed tree checked out
from the repository. A quiet-period commit (``--commit-delay 0.2``) may also land at
any moment in between, which must not change anything visible.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, rule

from support.cli import run_tvcfs
from tvcfs.errors import RefConflict
from tvcfs.treeops import apply_changes
from support import MIB
from support.mount import Mounted, fsync_dir
from support.repo import check_refs_complete, head
from support.trees import assert_same, snapshot

pytestmark = [pytest.mark.fuse, pytest.mark.slow]

NAMES = ["a", "b", "c"]
PATHS = NAMES + [f"{d}/{n}" for d in ("a", "b") for n in NAMES] + ["a/a/a", "a/b/c"]
OFFSETS = [0, 1, 100, 4095, 4096, 65536, 262144, MIB - 3, MIB, 2 * MIB + 17]
# errors that are the same failure spelled differently by filesystems
SAME = [{errno.EEXIST, errno.ENOTEMPTY}]


def _data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _outcome(fn):
    try:
        return ("ok", fn())
    except OSError as e:
        return ("err", e.errno)


def _same(a, b) -> bool:
    if a == b:
        return True
    if a[0] == b[0] == "err":
        return any(a[1] in s and b[1] in s for s in SAME)
    return False


class WritesMachine(RuleBasedStateMachine):
    """Set ``mount``, ``repo``, ``plain_root`` on the class before running."""

    mount: Mounted = None
    repo = None
    plain_root = ""
    counter = 0
    commits = 0

    handles = Bundle("handles")

    def __init__(self):
        super().__init__()
        cls = type(self)
        cls.counter += 1
        self.name = f"ex{cls.counter}"
        self.m_root = self.mount.branch("main", self.name)
        self.p_root = os.path.join(self.plain_root, self.name)
        self.open_fds = []
        for root in (self.m_root, self.p_root):
            os.mkdir(root)
            os.mkdir(os.path.join(root, "a"))
            with open(os.path.join(root, "a", "b"), "wb") as f:   # committed before the ops:
                f.write(_data(1, 300000))                          # copy-on-write paths
            with open(os.path.join(root, "c"), "wb") as f:
                f.write(_data(2, 5000))
        fsync_dir(self.m_root)

    def both(self, fn, *rels):
        """Run ``fn(*paths)`` on the mount and on the plain directory; outcomes must agree."""
        m = _outcome(lambda: fn(*[os.path.join(self.m_root, r) for r in rels]))
        p = _outcome(lambda: fn(*[os.path.join(self.p_root, r) for r in rels]))
        assert _same(m, p), (fn.__name__, rels, "mount:", m, "plain:", p)
        return m

    # --- operations ---------------------------------------------------------------
    @rule(path=st.sampled_from(PATHS), off=st.sampled_from(OFFSETS) | st.integers(0, 400000),
          n=st.integers(0, 70000), seed=st.integers(0, 9))
    def write_at(self, path, off, n, seed):
        data = _data(seed, n)

        def op(p):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                return os.pwrite(fd, data, off)
            finally:
                os.close(fd)

        self.both(op, path)

    @rule(path=st.sampled_from(PATHS), n=st.integers(0, 20000), seed=st.integers(0, 9))
    def rewrite(self, path, n, seed):
        def op(p):
            with open(p, "wb") as f:  # O_TRUNC
                f.write(_data(seed, n))

        self.both(op, path)

    @rule(path=st.sampled_from(PATHS), n=st.integers(1, 5000), seed=st.integers(0, 9))
    def append(self, path, n, seed):
        def op(p):
            with open(p, "ab") as f:
                f.write(_data(seed, n))

        self.both(op, path)

    @rule(path=st.sampled_from(PATHS), size=st.sampled_from([0, 1, 4096, 300000, MIB + 5]) | st.integers(0, 400000))
    def truncate(self, path, size):
        self.both(lambda p: os.truncate(p, size), path)

    @rule(src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS))
    def rename(self, src, dst):
        self.both(os.rename, src, dst)

    @rule(path=st.sampled_from(PATHS))
    def unlink(self, path):
        self.both(os.unlink, path)

    @rule(path=st.sampled_from(PATHS))
    def mkdir(self, path):
        self.both(os.mkdir, path)

    @rule(path=st.sampled_from(PATHS))
    def rmdir(self, path):
        self.both(os.rmdir, path)

    @rule(path=st.sampled_from(PATHS), dest=st.sampled_from(NAMES + ["../c", "nowhere"]))
    def symlink(self, path, dest):
        self.both(lambda p: os.symlink(dest, p), path)

    @rule(path=st.sampled_from(PATHS), exe=st.booleans())
    def chmod(self, path, exe):
        self.both(lambda p: os.chmod(p, 0o755 if exe else 0o644), path)

    @rule(path=st.sampled_from(PATHS))
    def read(self, path):
        def op(p):
            with open(p, "rb") as f:
                return f.read()

        self.both(op, path)

    # handles kept open across operations and commits
    @rule(target=handles, path=st.sampled_from(PATHS), create=st.booleans())
    def open_handle(self, path, create):
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fds = []
        for root in (self.m_root, self.p_root):
            fds.append(_outcome(lambda: os.open(os.path.join(root, path), flags, 0o644)))
        if fds[0][0] != "ok" or fds[1][0] != "ok":
            for kind, fd in fds:
                if kind == "ok":
                    os.close(fd)
            assert fds[0] == fds[1], ("open", path, "mount:", fds[0], "plain:", fds[1])
            return (None, None)
        h = (fds[0][1], fds[1][1])
        self.open_fds.append(h)
        return h

    @rule(h=handles, off=st.sampled_from(OFFSETS) | st.integers(0, 400000), n=st.integers(1, 70000),
          seed=st.integers(0, 9))
    def write_handle(self, h, off, n, seed):
        if h[0] is None or h not in self.open_fds:
            return
        data = _data(seed, n)
        assert os.pwrite(h[0], data, off) == os.pwrite(h[1], data, off)

    @rule(h=handles, off=st.sampled_from([0, 4096, MIB]), n=st.sampled_from([1, 5000, 400000]))
    def read_handle(self, h, off, n):
        if h[0] is None or h not in self.open_fds:
            return
        a, b = os.pread(h[0], n, off), os.pread(h[1], n, off)
        assert a == b, ("read through handle", off, n, len(a), len(b))

    @rule(h=consumes(handles))
    def close_handle(self, h):
        if h[0] is None or h not in self.open_fds:
            return
        self.open_fds.remove(h)
        os.close(h[0])
        os.close(h[1])

    @rule(n=st.integers(0, 3), size=st.integers(0, 3000))
    def external_commit(self, n, size):
        """Another writer moves ``main`` (outside this directory): the mount must
        rebase its staged changes onto it, and show it."""
        repo = self.repo
        for _ in range(20):
            cur = head(repo)

            def build(imp):
                cid, tsize, _ = imp.add_bytes(_data(n, size))
                tree = repo.read_commit(cur).tree
                return apply_changes(repo.get, imp.txn.put_block, tree, {f"external/e{n}": (cid, tsize)})[0]

            try:
                repo.commit_build(build, branch="main", message="external", expected=cur)
                return
            except RefConflict:
                continue
        raise AssertionError("could not commit on main")

    @rule()
    def commit(self):
        fsync_dir(self.m_root)
        type(self).commits += 1
        self.compare(committed=True)

    # --- checks ---------------------------------------------------------------------
    def compare(self, committed: bool) -> None:
        snap_m = snapshot(self.m_root, check_size=True)
        snap_p = snapshot(self.p_root)
        assert_same(snap_m, snap_p, "mount vs plain")
        if committed:
            dest = os.path.join(self.plain_root, f"co-{self.name}-{type(self).commits}")
            self.repo.checkout(head(self.repo), dest, path=self.name)
            try:
                assert_same(snapshot(dest), snap_p, "committed tree vs plain")
            finally:
                shutil.rmtree(dest)

    def teardown(self):
        for h in self.open_fds:
            os.close(h[0])
            os.close(h[1])
        self.open_fds = []
        fsync_dir(self.m_root)
        self.compare(committed=True)


@pytest.mark.timeout(300)
def test_random_operations_match_plain_directory(tmp_repo, tmp_path):
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    (seed_dir / "README").write_text("seed\n")
    tmp_repo.commit_dir(str(seed_dir), message="seed")
    plain = tmp_path / "plain"
    plain.mkdir()
    with Mounted(tmp_repo.root, tmp_path / "mnt", commit_delay=0.2, limit=270) as m:
        WritesMachine.mount, WritesMachine.repo, WritesMachine.plain_root = m, tmp_repo, str(plain)
        WritesMachine.counter = 0
        WritesMachine.commits = 0
        run = WritesMachine.TestCase
        run.settings = settings(max_examples=int(os.environ.get("TVCFS_RANDOM_EXAMPLES", "30")),
                                stateful_step_count=40, deadline=None, database=None,
                                suppress_health_check=list(HealthCheck))
        # a second writer of commits: fsync of the branch root in a loop, so commits
        # (in the mount's worker thread) race with the operations
        stop = threading.Event()
        errors = []

        def committer():
            while not stop.is_set():
                try:
                    fsync_dir(m.branch())
                except OSError as e:  # pragma: no cover - reported below
                    errors.append(e)
                stop.wait(0.03)

        t = threading.Thread(target=committer, daemon=True)
        t.start()
        try:
            run().runTest()
        finally:
            stop.set()
            t.join()
        assert not errors, errors
        print(f"random test: {WritesMachine.counter} examples, {WritesMachine.commits} commits")
        assert WritesMachine.commits > 0
        # the whole branch, from the CLI, equals the plain directories
        co = tmp_path / "co"
        run_tvcfs("--repo", tmp_repo.root, "checkout", "main", co)
        for i in range(1, WritesMachine.counter + 1):
            assert_same(snapshot(str(co / f"ex{i}")), snapshot(str(plain / f"ex{i}")), f"checkout ex{i}")
        assert_same(snapshot(str(co)), snapshot(m.branch()), "checkout vs mount")
    check_refs_complete(tmp_repo)
