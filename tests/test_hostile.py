"""Hostile input and damaged stores against the CLI and servers (real subprocesses,
real LMDB, real servers on loopback): bad input gets a one-line error and loses
nothing (README; docs/format.md "CAR v1"; docs/backends.md "The IPFS network").

- ``tvcfs import FILE.car -b BRANCH``: a CAR whose root commit is not in it, or
  whose commit lacks its tree or ancestors, is refused (no branch pointing at an
  incomplete commit, nothing stored); a damaged CAR's error names the file.

Only processes started here are ended (by PID).
"""

from __future__ import annotations

import pytest
from support.cli import err_of, run_tvcfs
from support.repo import make_repo

from tvcfs.encoding.car import read_car, write_car
from tvcfs.encoding.cid import cid_str
from tvcfs.repo import Repo

pytestmark = pytest.mark.timeout(120)


def one_line_error(proc, *needles) -> str:
    """Assert ``proc`` failed with one ``tvcfs: error:`` line holding ``needles``."""
    err = err_of(proc)
    assert proc.returncode == 1 and err.startswith("tvcfs: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "unexpected failure" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


# ----------------------------------------------------------------------- CAR import
@pytest.fixture
def two_commits(tmp_path):
    """A repository with commits c1 then c2 on main; returns ``(repo path, c1, c2)``
    (CID strings)."""
    repo = make_repo(tmp_path, {"a.bin": b"a" * 300_000, "d/b.txt": b"one\n"})
    c1 = repo.head()
    (tmp_path / "wt" / "d" / "b.txt").write_bytes(b"two\n")
    c2 = repo.commit_dir(str(tmp_path / "wt"), message="c2", timestamp=1_700_000_100).cid
    repo.close()
    return str(tmp_path / "repo"), cid_str(c1), cid_str(c2)


def _blocks_of(repo_path) -> int:
    with Repo.open(repo_path) as r:
        return r.store.stat()["blocks"]


def _rewrite_car(src, dst, keep) -> None:
    """Write ``dst``: the CAR ``src`` with its roots and only the blocks ``keep(i, cid)``
    accepts (``i``: the block's position)."""
    with open(src, "rb") as f:
        roots, blocks = read_car(f)
        chosen = [(c, b) for i, (c, b) in enumerate(blocks) if keep(i, c)]
    with open(dst, "wb") as out:
        write_car(out, roots, chosen)


@pytest.mark.parametrize("case", ["commit_only", "root_missing", "no_history"])
def test_import_never_points_a_branch_at_an_incomplete_commit(two_commits, tmp_path, case):
    """``import -b`` of a CAR holding only the commit block, of one whose root commit
    is not in it, or of a commit without its ancestors into an empty repository: one
    line naming the file and the missing block, no branch, nothing stored (before:
    the branch pointed at a commit ``fsck`` called broken, or "unexpected failure")."""
    src, c1, c2 = two_commits
    full = tmp_path / "full.car"
    run_tvcfs("-C", src, "export", "main", full)
    car = tmp_path / f"{case}.car"
    if case == "commit_only":
        _rewrite_car(full, car, lambda i, c: i == 0)
    elif case == "root_missing":
        _rewrite_car(full, car, lambda i, c: i > 0)
    else:
        car = full  # c2 without --history: c1 is not in it
    dst = tmp_path / "dst"
    run_tvcfs("init", dst)
    p = run_tvcfs("-C", dst, "import", car, "-b", "imp", ok=False)
    err = one_line_error(p, car.name, "nothing was imported")
    if case == "no_history":
        assert c1 in err and "--history" in err
    if case == "root_missing":
        assert c2 in err
    assert "imp" not in run_tvcfs("-C", dst, "branch").stdout.decode()
    assert _blocks_of(dst) == 0
    run_tvcfs("-C", dst, "fsck")
    # with the history it is complete: the branch is set, fsck is clean
    hist = tmp_path / "hist.car"
    run_tvcfs("-C", src, "export", "main", hist, "--history")
    run_tvcfs("-C", dst, "import", hist, "-b", "imp")
    run_tvcfs("-C", dst, "fsck")
    # and once c1 is held (a ref), the history-less CAR of c2 may set a branch too
    run_tvcfs("-C", dst, "import", full, "-b", "imp2")


def test_damaged_car_error_names_the_file_and_stores_nothing(two_commits, tmp_path):
    src, _, _ = two_commits
    full = tmp_path / "full.car"
    run_tvcfs("-C", src, "export", "main", full, "--history")
    data = full.read_bytes()
    dst = tmp_path / "dst"
    run_tvcfs("init", dst)
    cases = {
        "truncated.car": data[: len(data) // 2],
        "header-cut.car": data[:30],
        "varint.car": b"\xff" * 16,
        "empty.car": b"",
    }
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
        p = run_tvcfs("-C", dst, "import", tmp_path / name, "-b", "x", ok=False)
        one_line_error(p, name, "not a valid CAR v1 file", "nothing was imported")
    assert _blocks_of(dst) == 0
