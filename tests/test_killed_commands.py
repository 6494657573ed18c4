"""Everyday commands killed with SIGKILL part-way, then run again (docs/writes.md,
"Crash safety and recovery"): the repository stays consistent, a working tree is the
old or the new revision or is named as partial with what to run, and no ref names a
missing commit. Real ``tvcfs`` subprocesses on a real LMDB repository; only the
processes started here are killed, by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest

from support.cli import cli_env, run_tvcfs, tvcfs_executable
from support.repo import check_refs_complete, head
from support.trees import assert_same_tree
from support.wait import wait_until
from tvcfs.encoding.cid import cid_str

pytestmark = pytest.mark.timeout(120)


def tv(repo, *args, ok=True):
    return run_tvcfs("--repo", repo.root, *args, ok=ok, text=True)


def kill_when(argv: list, ready, timeout: float = 30.0) -> bool:
    """Start ``tvcfs ARGV``, SIGKILL it (by PID) as soon as ``ready()`` is true;
    ``True`` if it was killed before it finished by itself."""
    proc = subprocess.Popen(tvcfs_executable() + [str(a) for a in argv], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or ready(), timeout, interval=0.002,
                   what=f"tvcfs {argv[0]} to get part-way")
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        return killed
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_checkout_killed_part_way_is_named_refused_by_commit_and_finished_by_running_it_again(
        tmp_repo, tmp_path):
    """``tvcfs checkout main wd`` killed once some of its directories are written:
    ``tvcfs status`` names ``wd`` as an unfinished checkout with the command to run,
    ``tvcfs commit wd`` refuses it (a commit of it would delete every file not yet
    written) and leaves ``main`` alone, and the same checkout run again finishes it
    byte-identical; then ``wd`` is an ordinary worktree and ``fsck`` is clean."""
    src = tmp_path / "src"
    for d in range(24):
        (src / f"d{d:02}").mkdir(parents=True)
        for f in range(40):
            (src / f"d{d:02}" / f"f{f:02}.bin").write_bytes(os.urandom(2048 + f))
    os.symlink("d00/f00.bin", src / "zlink")
    tmp_repo.commit_dir(str(src), message="many files")
    main = head(tmp_repo)
    wd = tmp_path / "wd"
    for _ in range(5):  # a slow start can let it finish first: try again from nothing
        if kill_when(["--repo", tmp_repo.root, "checkout", "main", wd],
                     lambda: wd.is_dir() and len(os.listdir(wd)) >= 3):
            break
        shutil.rmtree(wd)
    assert len(os.listdir(wd)) < 25, "the checkout was never caught part-way"

    status = tv(tmp_repo, "status").stdout
    rerun = f"tvcfs checkout {cid_str(main)} {wd}"
    assert "unfinished" in status and rerun in status, status

    p = tv(tmp_repo, "commit", wd, "-m", "from a cut-short checkout", ok=False)
    assert p.stderr.startswith("tvcfs: error: ") and p.stderr.count("\n") == 1, p.stderr
    assert "unfinished checkout" in p.stderr and rerun in p.stderr, p.stderr
    assert head(tmp_repo) == main

    p = tv(tmp_repo, "checkout", "main", tmp_path / "wd")
    assert_same_tree(str(src), str(wd))
    assert "unfinished" not in tv(tmp_repo, "status").stdout
    assert "nothing" in tv(tmp_repo, "commit", wd, "-m", "unchanged").stdout.lower()
    assert head(tmp_repo) == main
    tv(tmp_repo, "fsck")
    check_refs_complete(tmp_repo)
