"""Entry names the kernel would refuse are refused, and POSIX details of the mount
(issue 14, items 3 and 4; docs/mount.md "POSIX differences", docs/format.md
"Directories").

Real FUSE mounts (``tvcfs mount -f`` in a child process, :class:`Mounted`), real
LMDB, real subprocesses of the ``tvcfs`` CLI.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from support.cli import run_tvcfs
from support.mount import Mounted, fsync_dir, os_err
from support.repo import head
from tvcfs.encoding.cid import DAG_PB, cid_str, make_cid
from tvcfs.encoding.commit import Commit
from tvcfs.encoding.dagpb import PBLink, encode_node
from tvcfs.encoding.unixfs import DIRECTORY, build_directory, encode_unixfs
from tvcfs.errors import InvalidEntryName

pytestmark = [pytest.mark.fuse]

LONG = "n" * 256                 # one byte over NAME_MAX
MAX = "é" * 127 + "x"            # exactly 255 bytes of UTF-8 (128 characters)
BAD = b"bad\xff.txt"             # not UTF-8


@pytest.fixture
def small_repo(tmp_repo, tmp_path):
    """``tmp_repo`` with one commit on ``main`` (``a.txt``)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello\n")
    tmp_repo.commit_dir(str(src), message="base")
    return tmp_repo


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode("utf-8", "replace").strip()
    assert proc.returncode != 0 and "\n" not in err and err.startswith("tvcfs: error: "), err
    assert "Traceback" not in err and "Error:" not in err.split("tvcfs: error: ", 1)[1], err
    return err


# ------------------------------------------------------------------ names over 255 bytes
@pytest.mark.timeout(120)
def test_names_over_255_bytes_are_enametoolong(small_repo, tmp_path):
    """create, mkdir, symlink, rename, link and lookup of a 256-byte name fail with
    ENAMETOOLONG in a branch (and lookup in the read-only views); a 255-byte name
    (multi-byte UTF-8) is committed and checked out byte-identical."""
    with Mounted(small_repo.root, tmp_path / "mnt") as m:
        j = lambda *p: m.branch("main", *p)  # noqa: E731
        assert os_err(lambda: open(j(LONG), "wb").close()) == errno.ENAMETOOLONG
        assert os_err(os.mkdir, j(LONG)) == errno.ENAMETOOLONG
        assert os_err(os.symlink, "a.txt", j(LONG)) == errno.ENAMETOOLONG
        assert os_err(os.rename, j("a.txt"), j(LONG)) == errno.ENAMETOOLONG
        assert os_err(os.link, j("a.txt"), j(LONG)) == errno.ENAMETOOLONG
        assert os_err(os.stat, j(LONG)) == errno.ENAMETOOLONG
        assert os_err(os.mkdir, m.path("branches", LONG)) == errno.ENAMETOOLONG
        commit = cid_str(head(small_repo))
        assert os_err(os.stat, m.path("commits", commit, LONG)) == errno.ENAMETOOLONG
        assert LONG not in os.listdir(j())
        # 255 bytes: fine everywhere
        with open(j(MAX), "wb") as f:
            f.write(b"max\n")
        os.mkdir(j("d" * 255))
        os.symlink(MAX, j("d" * 255, "s" * 255))
        fsync_dir(j())
        assert b"".join(small_repo.read_file(head(small_repo), MAX)) == b"max\n"
        assert os.readlink(m.path("commits", cid_str(head(small_repo)), "d" * 255, "s" * 255)) == MAX
    dest = tmp_path / "out"
    run_tvcfs("--repo", small_repo.root, "checkout", "main", dest)
    assert (dest / MAX).read_bytes() == b"max\n"
    assert os.readlink(dest / ("d" * 255) / ("s" * 255)) == MAX


# ------------------------------------------------------------------ names that are not UTF-8
@pytest.mark.timeout(120)
def test_non_utf8_names_are_eilseq_and_the_branch_keeps_committing(small_repo, tmp_path):
    """create, mkdir, rename and symlink with a name (or a symlink target) that is
    not UTF-8 fail with EILSEQ; nothing of it reaches the staged tree, and the
    branch goes on committing other files (it used to fail every later commit with
    EIO)."""
    with Mounted(small_repo.root, tmp_path / "mnt") as m:
        d = os.fsencode(m.branch("main"))
        j = lambda *p: m.branch("main", *p)  # noqa: E731
        assert os_err(lambda: open(d + b"/" + BAD, "wb").close()) == errno.EILSEQ
        assert os_err(os.mkdir, d + b"/dir\xfe") == errno.EILSEQ
        assert os_err(os.rename, j("a.txt"), d + b"/" + BAD) == errno.EILSEQ
        assert os_err(os.symlink, b"a.txt", d + b"/" + BAD) == errno.EILSEQ
        assert os_err(os.symlink, b"target\xff", d + b"/link") == errno.EILSEQ
        assert os_err(os.mkdir, os.fsencode(m.path("branches")) + b"/br\xff") == errno.EILSEQ
        assert os_err(os.stat, d + b"/" + BAD) == errno.ENOENT
        assert sorted(os.listdir(j())) == ["a.txt"]
        for i in range(2):  # commits keep working
            before = head(small_repo)
            with open(j(f"good{i}.txt"), "wb") as f:
                f.write(b"good %d\n" % i)
                f.flush()
                os.fsync(f.fileno())
            assert head(small_repo) != before
            assert b"".join(small_repo.read_file(head(small_repo), f"good{i}.txt")) == b"good %d\n" % i
    assert sorted(e.name for e in small_repo.ls("main")) == ["a.txt", "good0.txt", "good1.txt"]


def test_cli_commit_refuses_a_bad_name_with_one_line(tmp_repo, tmp_path):
    """``tvcfs commit DIR`` and ``Repo.add_path`` of a directory holding a name that
    is not UTF-8: one line ``tvcfs: error: …`` naming the file (escaped), exit 1,
    nothing committed; the same for a symlink whose target is not UTF-8."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "ok.txt").write_bytes(b"ok\n")
    bad = os.fsencode(src / "sub") + b"/" + BAD
    with open(bad, "wb") as f:
        f.write(b"x")
    proc = run_tvcfs("--repo", tmp_repo.root, "commit", src, "-m", "bad", ok=False)
    err = _one_error_line(proc)
    assert "sub/bad\\xff.txt" in err and "not valid UTF-8" in err, err
    assert head(tmp_repo) is None
    with pytest.raises(InvalidEntryName) as ei:
        tmp_repo.add_path(str(src))
    assert ei.value.errno == errno.EILSEQ and "bad\\xff.txt" in str(ei.value)
    os.unlink(bad)
    os.symlink(b"to\xfe", os.fsencode(src / "link"))
    err = _one_error_line(run_tvcfs("--repo", tmp_repo.root, "commit", src, "-m", "bad", ok=False))
    assert "link" in err and "target is not valid UTF-8" in err, err
    assert head(tmp_repo) is None
    os.unlink(src / "link")
    run_tvcfs("--repo", tmp_repo.root, "commit", src, "-m", "good")
    assert sorted(e.name for e in tmp_repo.ls("main")) == ["ok.txt", "sub"]


def test_old_staging_area_with_bad_name_commits_the_good_files(small_repo, tmp_path):
    """A staging area left by an older version holding a name that cannot be stored:
    ``tvcfs recover`` commits the good files, reports that one entry (exit 1) and
    keeps its data; ``tvcfs status`` shows it, printed safely."""
    code = r"""
import os, sys
from tvcfs.repo import Repo
from tvcfs.fs.workspace import Workspace
from tvcfs.dag import KIND_FILE
with Repo.open(sys.argv[1]) as repo:
    ws = Workspace(repo, "main", repo.ref_db.get("refs/heads/main"))
    for name, data in ((os.fsdecode(b"bad\xff.txt"), b"keep me"), ("n" * 300, b"long"), ("good.txt", b"good")):
        w = ws.new_entry(ws.root, name, KIND_FILE)
        with open(w.staged, "wb") as f:
            f.write(data)
"""
    subprocess.run([sys.executable, "-c", code, small_repo.root], check=True, timeout=60)  # that "mount" is gone
    proc = run_tvcfs("--repo", small_repo.root, "recover", ok=False)
    out = proc.stdout.decode()
    assert "recovered branch main: committed on main" in out, out
    assert "not committed: bad\\xff.txt: the name is not valid UTF-8" in out, out
    assert f"not committed: {'n' * 300}: the name is 300 bytes long" in out, out
    assert sorted(e.name for e in small_repo.ls("main")) == ["a.txt", "good.txt"]
    st = run_tvcfs("--repo", small_repo.root, "status").stdout.decode()
    assert "without these entries" in st and "not committed: bad\\xff.txt" in st, st
    assert "added: bad\\xff.txt (7 bytes staged)" in st, st
    kept = [ln.split("its data is kept in ", 1)[1].split(":", 1)[0] for ln in st.splitlines()
            if "bad\\xff.txt: the name" in ln]
    assert kept and open(kept[0], "rb").read() == b"keep me"
    run_tvcfs("--repo", small_repo.root, "recover", "--discard")
    assert "No staged changes." in run_tvcfs("--repo", small_repo.root, "status").stdout.decode()


# ------------------------------------------------------------------ hostile trees
def _hostile_commit(repo, escape: str) -> bytes:
    """Store a commit whose tree has links named ``../escaped``, ``escape`` (an
    absolute path) and ``ok.txt``, built without :func:`build_directory` (as a
    hostile peer or CAR would); returns the commit's CID."""
    with repo.store.write() as w:
        leaf = make_cid(0x55, b"pwned\n")
        w.put_block(leaf, b"pwned\n")
        ok = make_cid(0x55, b"ok\n")
        w.put_block(ok, b"ok\n")
        links = sorted([PBLink(leaf, "../escaped", 6), PBLink(leaf, escape, 6), PBLink(ok, "ok.txt", 3)],
                       key=lambda l: l.name.encode())
        block = encode_node(links, encode_unixfs(DIRECTORY))
        tree = make_cid(DAG_PB, block)
        w.put_block(tree, block)
        cid, cblock = Commit(tree=tree, author_name="x", author_email="x@example.org", message="hostile",
                             timestamp=1).cid_and_block()
        w.put_block(cid, cblock)
    return cid


@pytest.mark.timeout(120)
def test_hostile_tree_names_are_refused(tmp_repo, tmp_path):
    """A tree with ``../x`` and absolute-path names, imported from a CAR: checkout
    refuses it with one line naming the entry and writes nothing outside the
    destination; the mount lists only the valid entries (a name with ``/`` used to
    fail the whole readdir with EIO); building such a directory is refused."""
    escape = str(tmp_path / "abs_escaped")
    cid = _hostile_commit(tmp_repo, escape)
    car = tmp_path / "hostile.car"
    with open(car, "wb") as f:
        tmp_repo.export_car(cid, f)
    other = tmp_path / "other"
    run_tvcfs("init", other)
    run_tvcfs("--repo", other, "import", car, "-b", "hostile")
    work = tmp_path / "work"
    work.mkdir()
    err = _one_error_line(run_tvcfs("--repo", other, "checkout", "hostile", work / "dest", ok=False))
    assert "escaped" in err and "not a valid entry" in err, err
    assert not (work / "escaped").exists() and not os.path.exists(escape)
    assert not os.path.exists(work / "dest" / "ok.txt")
    for name in ("../x", "a/b", "a\0b", ".", "..", "", "n" * 256):
        with pytest.raises(InvalidEntryName):
            build_directory([(name, cid, 1)])
    with Mounted(tmp_repo.root, tmp_path / "mnt", allow_errors=("skipping invalid entry name",)) as m:
        assert os.listdir(m.path("commits", cid_str(cid))) == ["ok.txt"]
        with open(m.path("commits", cid_str(cid), "ok.txt"), "rb") as f:
            assert f.read() == b"ok\n"


# ------------------------------------------------------------------ POSIX details
@pytest.mark.timeout(120)
def test_fstat_of_unlinked_open_file_has_nlink_zero(small_repo, tmp_path):
    """After unlinking (or renaming over) a file that is still open, ``fstat`` on its
    descriptor reports ``st_nlink`` 0, as on a local filesystem; the descriptor
    still reads; linked files keep 1."""
    with Mounted(small_repo.root, tmp_path / "mnt") as m:
        j = lambda *p: m.branch("main", *p)  # noqa: E731
        with open(j("tmp.bin"), "wb") as f:
            f.write(b"data")
        fd = os.open(j("tmp.bin"), os.O_RDWR)
        fd_committed = os.open(j("a.txt"), os.O_RDONLY)
        try:
            assert os.fstat(fd).st_nlink == 1
            os.unlink(j("tmp.bin"))
            assert os.fstat(fd).st_nlink == 0
            assert os.pread(fd, 10, 0) == b"data"
            with open(j("b.txt"), "wb") as f:
                f.write(b"b")
            os.rename(j("b.txt"), j("a.txt"))  # a committed file replaced under its reader
            assert os.fstat(fd_committed).st_nlink == 0
            assert os.stat(j("a.txt")).st_nlink == 1
            d = os.open(j(), os.O_RDONLY)
            os.mkdir(j("gone"))
            dfd = os.open(j("gone"), os.O_RDONLY)
            os.rmdir(j("gone"))
            assert os.fstat(dfd).st_nlink == 0
            os.close(dfd)
            os.close(d)
        finally:
            os.close(fd)
            os.close(fd_committed)


@pytest.mark.timeout(120)
def test_posix_differences_table(small_repo, tmp_path):
    """The calls of docs/mount.md "POSIX differences" return what the table says
    (the table is checked here, not guessed)."""
    import ctypes
    import ctypes.util
    import stat

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    def renameat2(a, b, flags):
        if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), flags) != 0:
            raise OSError(ctypes.get_errno(), "renameat2")

    with Mounted(small_repo.root, tmp_path / "mnt") as m:
        j = lambda *p: m.branch("main", *p)  # noqa: E731
        ro = m.path("commits", cid_str(head(small_repo)), "a.txt")
        uid = os.stat(j("a.txt")).st_uid
        assert os_err(os.chown, j("a.txt"), uid + 1234, uid + 1234) is None
        assert os.stat(j("a.txt")).st_uid == uid
        for mode, shown in ((0o600, 0o644), (0o4711, 0o755), (0o640, 0o644)):
            os.chmod(j("a.txt"), mode)
            assert stat.S_IMODE(os.stat(j("a.txt")).st_mode) == shown, oct(mode)
        os.chmod(j(), 0o700)
        assert stat.S_IMODE(os.stat(j()).st_mode) == 0o755
        assert os_err(os.mkfifo, j("fifo")) == errno.EPERM
        assert os_err(os.mknod, j("sock"), 0o644 | stat.S_IFSOCK) == errno.EPERM
        os.mknod(j("plain"), 0o644 | stat.S_IFREG)
        assert stat.S_ISREG(os.stat(j("plain")).st_mode) and os.stat(j("plain")).st_size == 0
        assert os_err(os.link, j("a.txt"), j("hard")) == errno.EPERM
        os.utime(j("a.txt"), (1000, 2000))
        st = os.stat(j("a.txt"))
        assert st.st_mtime == st.st_atime == st.st_ctime == 2000
        assert os_err(os.setxattr, j("a.txt"), "user.x", b"1") == errno.ENOTSUP
        assert os_err(os.getxattr, j("a.txt"), "user.x") == errno.ENOTSUP
        assert os_err(os.listxattr, j("a.txt")) == errno.ENOTSUP
        os.makedirs(j("full/sub"))
        os.mkdir(j("empty"))
        assert os_err(os.rename, j("empty"), j("full")) == errno.ENOTEMPTY
        assert os_err(renameat2, j("plain"), j("new"), 1) == errno.EINVAL      # RENAME_NOREPLACE
        assert os_err(renameat2, j("plain"), j("a.txt"), 2) == errno.EINVAL    # RENAME_EXCHANGE
        assert os_err(os.open, j(), os.O_TMPFILE | os.O_RDWR, 0o600) == errno.EOPNOTSUPP
        os.mkdir(m.path("branches", "other"))
        assert os_err(os.rename, j("plain"), m.path("branches", "other", "plain")) == errno.EXDEV
        assert os_err(os.setxattr, ro, "user.x", b"1") == errno.EROFS
        assert os_err(os.chown, ro, uid, uid) == errno.EROFS
        assert os_err(os.mkfifo, ro + ".fifo") == errno.EROFS
        assert os.statvfs(j()).f_namemax == 255
        fsync_dir(j())
    assert sorted(e.name for e in small_repo.ls("main")) == ["a.txt", "empty", "full", "plain"]
