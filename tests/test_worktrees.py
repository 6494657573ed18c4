"""A CLI commit never silently reverts a commit it did not see (issue 14, item 1).

Directories made by ``tvcfs checkout`` are *worktrees*: the repository records the
commit and tree they came from, and ``tvcfs commit DIR`` replays their changes onto
a branch that moved, or saves them on a ``conflicts/…`` branch and exits non-zero —
the rule the writable mount follows (docs/writes.md, "Worktrees"). Real ``tvcfs``
subprocesses, a real FUSE mount (:class:`support.mount.Mounted`), real LMDB.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time

import pytest

from support.cli import run_tvcfs
from support.trees import assert_same_tree, tree_bytes
from support.mount import Mounted, fsync_dir
from support.repo import check_refs_complete, head
from support.wait import wait_until
from tvcfs.encoding.cid import cid_str
from tvcfs.repo import Repo

MIB = 1 << 20


@pytest.fixture
def seeded(tmp_repo, tmp_path):
    """``tmp_repo`` with a small tree committed on ``main``: ``config.json``,
    ``weights.bin`` (1 MiB of random bytes), ``sub/a.txt``."""
    src = tmp_path / "seed"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_bytes(b'{"layers": 2}')
    (src / "weights.bin").write_bytes(random.Random(1).randbytes(MIB))
    (src / "sub" / "a.txt").write_bytes(b"a")
    tmp_repo.commit_dir(str(src), message="seed")
    return tmp_repo


def tv(repo, *args, ok=True):
    return run_tvcfs("--repo", repo.root, *args, ok=ok)


def files_at(repo, rev) -> dict:
    """``{path: bytes}`` of every file in revision ``rev``."""
    return {p: b"".join(repo.read_file(rev, p)) for p, e in repo.walk(rev) if e.kind == "file"}


def write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ------------------------------------------------------------------ the reported scenario
@pytest.mark.fuse
@pytest.mark.timeout(120)
def test_cli_commit_of_stale_checkout_keeps_the_mounts_commit(seeded, tmp_path):
    """`tvcfs checkout main WD`; a file is written and committed through the mount;
    `tvcfs commit WD -b main` used to make main equal WD (the mount's file gone, exit
    0). Now WD's changes are replayed onto the mount's commit."""
    wd = tmp_path / "wd"
    tv(seeded, "checkout", "main", wd)
    with Mounted(seeded.root, tmp_path / "mnt", commit_delay=60) as m:
        with open(m.branch("main", "from-mount.bin"), "wb") as f:
            f.write(b"mount data " * 1000)
        fsync_dir(m.branch("main"))   # commits at once
        mount_commit = head(seeded)
        assert "from-mount.bin" in files_at(seeded, mount_commit)
        write(wd / "from-cli.txt", b"cli data")
        write(wd / "config.json", b'{"layers": 3}')
        out = tv(seeded, "commit", wd, "-b", "main", "-m", "cli").stdout.decode()
        assert "replayed" in out, out
        new = head(seeded)
        assert seeded.read_commit(new).parents == (mount_commit,)
        files = files_at(seeded, new)
        assert files["from-mount.bin"] == b"mount data " * 1000
        assert files["from-cli.txt"] == b"cli data"
        assert files["config.json"] == b'{"layers": 3}'
        assert files["weights.bin"] == random.Random(1).randbytes(MIB)
        assert not [b for b in seeded.branches() if b.startswith("conflicts/")]
        # the mount (nothing pending) follows the branch: it shows both sides
        wait_until(lambda: os.path.exists(m.branch("main", "from-cli.txt")), 10,
                   what="the mount to follow the CLI commit")
    check_refs_complete(seeded)


def test_second_commit_after_a_replay_keeps_theirs(seeded, tmp_path):
    """After a replay the worktree's base is the new commit, but the directory still
    lacks the branch's other changes: its next commit must not revert them."""
    a, b = tmp_path / "a", tmp_path / "b"
    tv(seeded, "checkout", "main", a)
    tv(seeded, "checkout", "main", b)
    write(a / "by-a.txt", b"A")
    tv(seeded, "commit", a, "-m", "a")             # main moves
    write(b / "by-b.txt", b"B1")
    tv(seeded, "commit", b, "-m", "b1")            # replayed onto a's commit
    b1 = head(seeded)
    wt = seeded.worktrees()[os.path.realpath(b)]
    assert wt["base"] == b1 and wt["branch"] == "main" and wt["exists"]
    write(b / "by-b.txt", b"B2")
    os.unlink(b / "sub" / "a.txt")
    tv(seeded, "commit", b, "-m", "b2")            # main did not move since b1
    files = files_at(seeded, head(seeded))
    assert files["by-a.txt"] == b"A"               # not reverted
    assert files["by-b.txt"] == b"B2" and "sub/a.txt" not in files
    assert seeded.read_commit(head(seeded)).parents == (b1,)
    # without -b the commit goes to the worktree's branch, even when HEAD is elsewhere
    other = seeded.create_branch("other")
    seeded.set_head("other")
    write(b / "by-b.txt", b"B3")
    tv(seeded, "commit", b, "-m", "b3")
    assert files_at(seeded, "main")["by-b.txt"] == b"B3"
    assert head(seeded, "other") == other


# ------------------------------------------------------------------ collisions
def test_collision_goes_to_a_conflicts_branch(seeded, tmp_path):
    """Both sides changed config.json: main keeps its commit, the directory's whole
    content is saved on conflicts/main-…, the command says so and exits non-zero."""
    a, b = tmp_path / "a", tmp_path / "b"
    tv(seeded, "checkout", "main", a)
    tv(seeded, "checkout", "main", b)
    base = head(seeded)
    write(a / "config.json", b'{"layers": "theirs"}')
    tv(seeded, "commit", a, "-m", "theirs")
    theirs = head(seeded)
    big = random.Random(7).randbytes(3 * MIB + 123)
    write(b / "config.json", b'{"layers": "ours"}')
    write(b / "big.bin", big)
    write(b / "weights.bin", b"retrained")
    p = tv(seeded, "commit", b, "-m", "ours", ok=False)
    err = p.stderr.decode()
    lines = [ln for ln in err.splitlines() if ln.startswith("tvcfs: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "config.json" in lines[0] and "conflicts/main-" in lines[0], err
    assert "main is unchanged" in lines[0] and "tvcfs merge conflicts/main-" in err, err
    assert head(seeded) == theirs                            # main keeps their commit
    (cname,) = [n for n in seeded.branches() if n.startswith("conflicts/")]
    assert cname in lines[0]
    com = seeded.read_commit(seeded.branches()[cname])
    assert com.parents == (base,) and com.message.startswith("conflict: main moved to")
    co = tmp_path / "co"
    tv(seeded, "checkout", cname, co)
    assert_same_tree(str(b), str(co))                        # the full content is there
    assert tree_bytes(str(co))["big.bin"] == big
    # the worktree keeps its base: committing again collides again (never a revert)
    assert seeded.worktrees()[os.path.realpath(b)]["base"] == base
    tv(seeded, "commit", b, "-m", "again", ok=False)
    assert head(seeded) == theirs
    st = tv(seeded, "status").stdout.decode()
    assert "Conflicts" in st and cname in st and "config.json" in st, st
    # the library raises too, naming where the commit went
    from tvcfs.errors import CommitConflict

    with pytest.raises(CommitConflict) as ei:
        seeded.commit_dir(str(b), message="lib")
    assert ei.value.result.branch.startswith("conflicts/main-") and ei.value.result.collisions == ("config.json",)


# ------------------------------------------------------------------ --base and snapshots
def test_base_option_replays_a_plain_directory(seeded, tmp_path):
    """`--base REV` states the commit a directory was made from: the same replay or
    conflict rule as a checkout."""
    base = head(seeded)
    out = tmp_path / "out"        # made without `tvcfs checkout`: no record
    shutil.copytree(tmp_path / "seed", out)
    a = tmp_path / "a"
    tv(seeded, "checkout", "main", a)
    write(a / "theirs.txt", b"t")
    tv(seeded, "commit", a, "-m", "theirs")
    theirs = head(seeded)
    write(out / "ours.txt", b"o")
    tv(seeded, "commit", out, "-b", "main", "--base", cid_str(base)[:12], "-m", "ours")
    files = files_at(seeded, head(seeded))
    assert files["theirs.txt"] == b"t" and files["ours.txt"] == b"o"
    assert seeded.read_commit(head(seeded)).parents == (theirs,)
    assert os.path.realpath(out) not in seeded.worktrees()   # --base does not make a worktree
    # a colliding change with --base: conflicts branch, non-zero exit
    write(out / "theirs.txt", b"ours now")
    p = tv(seeded, "commit", out, "-b", "main", "--base", cid_str(base), ok=False)
    assert "conflicts/main-" in p.stderr.decode() and "theirs.txt" in p.stderr.decode()
    assert files_at(seeded, "main")["theirs.txt"] == b"t"
    # a bad revision: one line, nothing committed
    before = seeded.refs()
    p = tv(seeded, "commit", out, "--base", "nosuchrev", ok=False)
    assert p.stderr.decode().startswith("tvcfs: error: unknown revision 'nosuchrev'"), p.stderr
    assert seeded.refs() == before


def test_directory_without_a_base_is_a_snapshot(seeded, tmp_path):
    """A training run's output (no checkout, no --base) keeps today's meaning: the
    branch becomes the directory."""
    a = tmp_path / "a"
    tv(seeded, "checkout", "main", a)
    write(a / "extra.txt", b"x")
    tv(seeded, "commit", a, "-m", "extra")
    run = tmp_path / "run"
    write(run / "model.bin", b"trained")
    out = tv(seeded, "commit", run, "-b", "main", "-m", "training output").stdout.decode()
    assert "replayed" not in out
    assert files_at(seeded, "main") == {"model.bin": b"trained"}
    assert os.path.realpath(run) not in seeded.worktrees()
    # a directory made again at a worktree's path is still taken for that worktree:
    # its content replaces the old one, the branch's commits since are kept
    shutil.rmtree(a)
    write(a / "only.txt", b"only")
    tv(seeded, "commit", a, "-b", "main", "-m", "new dir")
    assert files_at(seeded, "main") == {"model.bin": b"trained", "only.txt": b"only"}
    # a checkout of a sub-directory is no worktree (and forgets an old record there)
    shutil.rmtree(a)
    tv(seeded, "checkout", "main~2:sub", a)
    assert os.path.realpath(a) not in seeded.worktrees()
    tv(seeded, "commit", a, "-b", "main", "-m", "sub only")
    assert files_at(seeded, "main") == {"a.txt": b"a"}


# ------------------------------------------------------------------ status
@pytest.mark.fuse
@pytest.mark.timeout(90)
def test_status_lists_worktrees_and_mounts(seeded, tmp_path):
    a, b, t = tmp_path / "a", tmp_path / "b", tmp_path / "t"
    tv(seeded, "checkout", "main", a)
    tv(seeded, "checkout", "main", b)
    seeded.create_tag("v1")
    tv(seeded, "checkout", "v1", t)
    shutil.rmtree(b)
    write(a / "n.txt", b"n")
    tv(seeded, "commit", a, "-m", "n")
    base_b = cid_str(seeded.worktrees()[os.path.realpath(b)]["base"])[:16]
    with Mounted(seeded.root, tmp_path / "mnt") as m:
        st = tv(seeded, "status").stdout.decode()
        lines = st.splitlines()
        la = next(ln for ln in lines if ln.strip().startswith(os.path.realpath(a) + " "))
        assert "branch main" in la and cid_str(head(seeded))[:16] in la and "gone" not in la, st
        lb = next(ln for ln in lines if ln.strip().startswith(os.path.realpath(b) + " "))
        assert base_b in lb and "[directory gone]" in lb, st
        lt = next(ln for ln in lines if ln.strip().startswith(os.path.realpath(t) + " "))
        assert "branch (none)" in lt, st
        assert "Mounts:" in st and os.path.realpath(m.mnt) in st, st


# ------------------------------------------------------------------ randomized
@pytest.mark.fuse
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_random_mount_writers_and_cli_commits_lose_nothing(seeded, tmp_path):
    """Two threads write new files into MOUNT/branches/main (several writes each,
    then fsync, which commits the whole workspace — the other thread's file possibly
    half written) while two threads run `tvcfs checkout main WD → edit → tvcfs commit
    WD -b main` loops in subprocesses; all four sometimes rewrite a shared file. In
    the end every file ever written is in main's head or on a conflicts/ branch with
    its full content (before worktrees, CLI commits dropped mount files from the head
    and left some torn)."""
    rng = random.Random(int(os.environ.get("TVCFS_TEST_SEED", "14")))
    seeds = [rng.randrange(1 << 30) for _ in range(4)]
    written: dict = {}          # path -> final bytes of every uniquely named file
    lock = threading.Lock()
    errors: list = []
    deadline = time.monotonic() + 25   # seconds of load, well inside the 60 s budget

    def mount_writer(k, m):
        r = random.Random(seeds[k])
        i = 0
        try:
            while time.monotonic() < deadline and i < 40:
                name = f"m{k}-{i:03d}.bin"
                data = r.randbytes(r.randrange(1, 200_000))
                with open(m.branch("main", name), "wb") as f:
                    for off in range(0, len(data), 32_768):
                        f.write(data[off:off + 32_768])
                        f.flush()
                        time.sleep(r.random() * 0.01)
                    os.fsync(f.fileno())
                with lock:
                    written[name] = data
                if r.random() < 0.2:
                    with open(m.branch("main", "hot.txt"), "wb") as f:
                        f.write(f"mount {k} {i}".encode())
                    fsync_dir(m.branch("main"))
                i += 1
        except BaseException as e:  # reported by the main thread
            errors.append(("mount", k, repr(e)))

    def cli_loop(k):
        r = random.Random(seeds[k])
        i = 0
        try:
            while time.monotonic() < deadline and i < 12:
                wd = tmp_path / f"wd{k}-{i}"
                tv(seeded, "checkout", "main", wd)
                new = {}
                for j in range(r.randrange(1, 4)):
                    name = f"c{k}-{i:02d}-{j}.txt"
                    new[name] = r.randbytes(r.randrange(1, 5000))
                    write(wd / name, new[name])
                if r.random() < 0.4:
                    write(wd / "hot.txt", f"cli {k} {i}".encode())
                time.sleep(r.random() * 0.3)   # let the mount commit meanwhile
                p = tv(seeded, "commit", wd, "-b", "main", "-m", f"cli {k} {i}", ok=None)
                if p.returncode not in (0, 1) or (p.returncode == 1 and b"conflicts/main-" not in p.stderr):
                    errors.append(("cli", k, i, p.returncode, p.stderr.decode(errors="replace")))
                    return
                with lock:
                    written.update(new)
                i += 1
        except BaseException as e:
            errors.append(("cli", k, repr(e)))

    with Mounted(seeded.root, tmp_path / "mnt", commit_delay=0.1, limit=100) as m:
        threads = [threading.Thread(target=mount_writer, args=(0, m)),
                   threading.Thread(target=mount_writer, args=(1, m)),
                   threading.Thread(target=cli_loop, args=(2,)),
                   threading.Thread(target=cli_loop, args=(3,))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads), "a writer hung"
        assert not errors, errors
    # the unmount committed whatever was pending
    with Repo.open(seeded.root) as repo:
        main = files_at(repo, "main")
        conflict_files = [files_at(repo, c) for n, c in repo.branches().items() if n.startswith("conflicts/")]
        lost, torn = [], []
        for name, data in written.items():
            if main.get(name) == data or any(cf.get(name) == data for cf in conflict_files):
                continue
            (torn if name in main or any(name in cf for cf in conflict_files) else lost).append(name)
        print(f"{len(written)} files written, {len(conflict_files)} conflicts branches, "
              f"{sum(1 for n in written if n not in main)} files only on them")
        assert not lost and not torn, (f"{len(lost)} of {len(written)} files lost: {sorted(lost)[:10]}; "
                                       f"torn: {sorted(torn)[:10]}")
        assert sum(1 for n in written if n.startswith("m")) >= 10
        assert sum(1 for n in written if n.startswith("c")) >= 6
        check_refs_complete(repo)
