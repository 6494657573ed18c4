"""The everyday command line (issue 20, items 4–8), through real ``tvcfs``
subprocesses: the staging index (add / rm / restore --staged / commit), commit
metadata numbers, global options after the verb, log --all / --graph / -- PATH,
the reflog newest first, diff REV, merge's unused strategy, a mount's mkdir/rmdir
commit message, --json on every listing or reporting command, progress bars in a
pseudo-terminal only, one-line errors for bad input, shell completion."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time

import pytest

from support.cli import run_in_pty, run_tvcfs
from support.repo import write
from tvcfs.repo import Repo

pytestmark = pytest.mark.timeout(300)


def tv(*args, **kw):
    return run_tvcfs(*args, **kw)


def js(*args, **kw):
    """``tvcfs ARGS --json``, parsed (the whole of stdout must be one JSON document)."""
    p = run_tvcfs("--json", *args, **kw)
    return json.loads(p.stdout.decode())


def tree_of(repo, rev="HEAD") -> dict:
    return {e["path"]: e for e in js("-C", repo, "ls", "-r", rev)}


# ------------------------------------------------------------------ staging index
def test_add_rm_restore_commit_the_index(small_repo, tmp_path):
    r, d = small_repo
    head0 = js("-C", r, "log")[0]["commit"]
    new = write(tmp_path / "outside" / "weights.bin", os.urandom(300_000))
    inside = write(r / "notes" / "readme.md", b"inside the root\n")
    assert tv("add", new, "-C", r).returncode == 0  # outside the root: its base name
    tv("-C", r, "add", inside)                       # inside the root: its path there
    tv("-C", r, "add", new, "--as", "models/w2.bin")
    tv("-C", r, "rm", "b.txt")
    st = js("-C", r, "status")
    changes = {c["path"]: c["status"] for c in st["index"]["changes"]}
    assert changes == {"weights.bin": "added", "notes": "added", "models": "added", "b.txt": "deleted"}
    assert st["index"]["branch"] == "main" and st["index"]["base"] == head0
    text = tv("-C", r, "status").stdout.decode()
    assert "Changes staged for commit on main" in text and "deleted: b.txt" in text

    # unstaging one path, then committing the rest onto the branch
    tv("-C", r, "restore", "--staged", "models")
    assert "models" not in {c["path"] for c in js("-C", r, "status")["index"]["changes"]}
    # the staged blocks survive garbage collection while staged
    tv("-C", r, "gc", "--expire", "0")
    out = tv("-C", r, "commit", "-m", "staged work").stdout.decode()
    assert out.startswith("[main ")
    files = tree_of(r)
    assert set(files) == {"a.txt", "sub/c.txt", "weights.bin", "notes/readme.md"}
    assert tv("-C", r, "cat", "HEAD:weights.bin").stdout == open(new, "rb").read()
    assert js("-C", r, "status")["index"] is None
    log = js("-C", r, "log")
    assert log[0]["message"] == "staged work" and log[0]["parents"] == [head0]
    # nothing staged: one line saying so
    p = tv("-C", r, "commit", "-m", "again", ok=False)
    assert p.stderr.decode().startswith("tvcfs: error: nothing staged")


def test_index_commit_replays_onto_a_branch_that_moved(small_repo, tmp_path):
    r, d = small_repo
    tv("-C", r, "add", write(tmp_path / "x" / "new.bin", b"new"))
    # someone commits on main meanwhile (a snapshot that changes a.txt)
    write(d / "a.txt", b"a2\n")
    tv("-C", r, "commit", d, "-m", "moved")
    assert js("-C", r, "status")["index"]["branch_moved"] is True
    tv("-C", r, "commit", "-m", "from the index")
    files = tree_of(r)
    assert "new.bin" in files and tv("-C", r, "cat", "HEAD:a.txt").stdout == b"a2\n"
    assert [c["message"] for c in js("-C", r, "log")][:2] == ["from the index", "moved"]


def test_restore_staged_all_and_unpins(small_repo, tmp_path):
    r, _ = small_repo
    tv("-C", r, "add", write(tmp_path / "y.bin", b"y" * 1000))
    with Repo.open(str(r)) as repo:
        assert any(v.get("name", "").startswith("tvcfs index") for v in repo.pin_db.all().values())
    tv("-C", r, "restore", "--staged")
    assert js("-C", r, "status")["index"] is None
    with Repo.open(str(r)) as repo:
        assert not repo.pin_db.all()


# ------------------------------------------------------------------ commit --meta
def test_commit_meta_numbers(small_repo):
    import math

    from tvcfs.encoding.commit import Commit, parse_metadata

    r, d = small_repo
    tv("-C", r, "commit", d, "-m", "hp", "--allow-empty", "--meta", "lr=3e-5", "--meta", "epochs=3",
       "--meta", "opt=adamw", "--meta", "warm=0.1")
    meta = js("-C", r, "show")["metadata"]
    assert meta == {"lr": 3e-5, "epochs": 3, "opt": "adamw", "warm": 0.1}
    assert isinstance(meta["epochs"], int)
    # the same decimal text is always the same binary64: the same commit, the same CID
    a = Commit(tree=bytes.fromhex("01701220" + "11" * 32), metadata=parse_metadata(["lr=3e-5"]))
    b = Commit(tree=bytes.fromhex("01701220" + "11" * 32), metadata={"lr": float("0.00003")})
    assert a.cid_and_block() == b.cid_and_block()
    assert b"\xfb" + struct.pack(">d", 3e-5) in a.encode()
    for bad in ("x=nan", "x=inf", "x=-Infinity", "novalue"):
        p = tv("-C", r, "commit", d, "--allow-empty", "--meta", bad, ok=False)
        _assert_one_line(p)
    with pytest.raises(Exception):
        Commit(tree=a.tree, metadata={"x": math.nan}).encode()


# ------------------------------------------------------------------ global options
def test_global_options_after_the_verb(small_repo, tmp_path):
    r, d = small_repo
    write(d / "a.txt", b"a-after\n")
    p = tv("commit", d, "-m", "after", "--repo", r, cwd=tmp_path)
    assert p.stdout.decode().startswith("[main ")
    assert js("log", "-C", r, cwd=tmp_path)[0]["message"] == "after"
    assert tv("status", "--quiet", "-C", r, cwd=tmp_path).returncode == 0
    assert json.loads(tv("--json", "branch", "-C", r, cwd=tmp_path).stdout)[0]["name"] == "main"


# ------------------------------------------------------------------ log, reflog, diff, merge
@pytest.fixture
def history_repo(tmp_path):
    """main: c1 (a, b) → c3 (a changed); feat: c1 → c2 (b changed)."""
    r = tmp_path / "h"
    tv("init", r)
    d = tmp_path / "hd"
    write(d / "a.txt", b"a1\n")
    write(d / "b.txt", b"b1\n")
    tv("-C", r, "commit", d, "-m", "c1")
    tv("-C", r, "branch", "feat")
    write(d / "b.txt", b"b2\n")
    tv("-C", r, "commit", d, "-b", "feat", "-m", "c2")
    write(d / "a.txt", b"a2\n")
    write(d / "b.txt", b"b1\n")
    time.sleep(1.1)  # distinct timestamps: "newest first" is then well defined
    tv("-C", r, "commit", d, "-b", "main", "-m", "c3")
    return r


def msgs(rows):
    return [row["message"] for row in rows]


def test_log_all_graph_and_paths(history_repo):
    r = history_repo
    assert msgs(js("-C", r, "log")) == ["c3", "c1"]
    assert sorted(msgs(js("-C", r, "log", "--all"))) == ["c1", "c2", "c3"]
    assert msgs(js("-C", r, "log", "--", "a.txt")) == ["c3", "c1"]
    assert msgs(js("-C", r, "log", "--all", "--", "b.txt")) == ["c2", "c1"]
    assert msgs(js("-C", r, "log", "feat", "--", "a.txt")) == ["c1"]
    g = tv("-C", r, "log", "--graph", "--all", "--oneline").stdout.decode().splitlines()
    assert g[0].startswith("* ") and g[1].startswith("| * ") and "|/" in g and g[-1].startswith("* ")
    # merge feat: the merge commit draws a fork
    tv("-C", r, "merge", "feat", "-m", "merge feat")
    g = tv("-C", r, "log", "--graph", "--oneline").stdout.decode().splitlines()
    assert g[0].startswith("* ") and "merge feat" in g[0] and g[1] == "|\\", g
    assert sum(1 for line in g if "*" in line) == 4
    rows = js("-C", r, "log", "--graph")
    assert rows[0]["graph"][0] == "*" and len(rows[0]["parents"]) == 2


def test_reflog_newest_first(history_repo):
    r = history_repo
    lines = tv("-C", r, "reflog", "main").stdout.decode().splitlines()
    assert "c3" in lines[0] and "c1" in lines[-1], lines
    entries = js("-C", r, "reflog")
    times = [e["time"] for e in entries]
    assert times == sorted(times, reverse=True)
    assert entries[0]["message"].endswith("c3")


def test_diff_rev_against_the_branch_head(history_repo):
    r = history_repo
    d = js("-C", r, "diff", "main~1")
    assert [f["path"] for f in d["files"]] == ["a.txt"]
    d = js("-C", r, "diff", "feat", "--", "b.txt")
    assert [f["path"] for f in d["files"]] == ["b.txt"]
    d = js("-C", r, "diff", "feat", "main", "a.txt")
    assert [f["path"] for f in d["files"]] == ["a.txt"]


def test_merge_fast_forward_says_strategy_unused(history_repo):
    r = history_repo
    tv("-C", r, "branch", "ahead", "main")
    tv("-C", r, "branch", "behind", "main~1")
    out = tv("-C", r, "merge", "ahead", "--into", "behind", "-s", "average-all").stdout.decode()
    assert "Fast-forward" in out and "average-all not used" in out
    res = js("-C", r, "merge", "main", "-s", "ties")
    assert res["strategies_unused"] is True


# ------------------------------------------------------------------ --json everywhere
def test_json_of_every_listing_command(history_repo, tmp_path):
    r = history_repo
    tv("-C", r, "tag", "v1", "main~1")
    tv("-C", r, "remote", "add", "origin", "tvcfs://127.0.0.1:4740/")
    assert {b["name"] for b in js("-C", r, "branch")} == {"main", "feat"}
    assert js("-C", r, "tag") == [{"name": "v1", "commit": js("-C", r, "log")[1]["commit"]}]
    assert js("-C", r, "remote") == [{"name": "origin", "url": "tvcfs://127.0.0.1:4740/", "bad_blocks": 0}]
    show = js("-C", r, "show", "main:a.txt")
    assert show["kind"] == "file" and show["size"] == 3 and show["cid"].startswith("bafk")
    assert {e["name"] for e in js("-C", r, "ls")} == {"a.txt", "b.txt"}
    assert js("-C", r, "status")["head"] == "main"
    gc = js("-C", r, "gc", "--dry-run")
    assert gc["deleted"] == 0 and gc["kept"] > 0
    assert js("-C", r, "fsck") == {"ok": True, "problems": []}
    assert "files" in js("-C", r, "diff", "feat")
    assert js("-C", r, "merge", "feat", "--dry-run")["kind"]
    ex = js("-C", r, "export", "main", tmp_path / "m.car")
    assert ex["blocks"] > 0
    assert js("-C", r, "import", tmp_path / "m.car")["roots"] == [ex["root"]]
    assert js("-C", r, "checkout", "main", tmp_path / "co")["bytes"] == 6
    assert isinstance(js("-C", r, "pin", "ls"), list)


# ------------------------------------------------------------------ mount: mkdir / rmdir, stats --json
@pytest.mark.fuse
def test_mkdir_rmdir_through_the_mount_say_what_changed(small_repo, tmp_path):
    from support.mount import Mounted
    from support.repo import head, wait_head_change

    r, _ = small_repo
    with Repo.open(str(r)) as repo:
        h0 = head(repo)
    with Mounted(str(r), str(tmp_path / "mnt")) as m:
        os.mkdir(m.branch("main", "checkpoints"))
        with Repo.open(str(r)) as repo:
            h1 = wait_head_change(repo, h0)
        os.rmdir(m.branch("main", "checkpoints"))
        with Repo.open(str(r)) as repo:
            wait_head_change(repo, h1)
            msgs = [c.message.splitlines()[0] for _, c in repo.log(max_count=2)]
        assert msgs == ["Remove directory checkpoints on main", "Add directory checkpoints on main"]
        stats = js("stats", m.mnt)
        assert isinstance(stats, dict) and "bytes_served" in stats


# ------------------------------------------------------------------ progress bars
def test_progress_bars_only_on_a_terminal(tmp_path):
    r = tmp_path / "r"
    tv("init", r)
    d = tmp_path / "big"
    for i in range(4):
        write(d / f"part{i}.bin", os.urandom(4 << 20))
    runs = [
        (("-C", r, "commit", d, "-m", "big"), "Committing"),
        (("-C", r, "checkout", "main", tmp_path / "co{}"), "Checking out"),
        (("-C", r, "export", "main", tmp_path / "out{}.car"), "Exporting"),
        (("-C", r, "import", tmp_path / "out0.car"), "Importing"),
        (("-C", r, "fsck"), "Checking"),
        (("-C", r, "gc"), "Collecting garbage"),
    ]
    for i, (args, label) in enumerate(runs):
        args = tuple(str(a).format(0) for a in args)
        rc, term = run_in_pty(*args)
        assert rc == 0, term
        assert label in term and "\r" in term and "[00:" in term, (args, term)  # tqdm's bar
        # the same command in a pipe, and with --quiet on the terminal: no bar
        args2 = tuple(a.replace("co0", "co1").replace("out0.car", "out1.car") if "import" not in args else a
                      for a in args)
        p = tv(*args2)
        assert label not in p.stderr.decode() and "\r" not in p.stderr.decode()
        args3 = tuple(a.replace("co0", "co2").replace("out0.car", "out2.car") if "import" not in args else a
                      for a in args)
        rc, term = run_in_pty("--quiet", *args3)
        assert rc == 0 and label not in term, term


def test_progress_bar_of_a_clone(tmp_path):
    from support.server import TvcfsServe

    src = tmp_path / "src"
    tv("init", src)
    write(tmp_path / "m" / "w.bin", os.urandom(6 << 20))
    tv("-C", src, "commit", tmp_path / "m", "-m", "m")
    s = TvcfsServe(str(src), tmp_path)
    try:
        rc, term = run_in_pty("clone", s.url, tmp_path / "c1")
        assert rc == 0 and "Receiving" in term and "[00:" in term and "B/s" in term, term
        p = tv("clone", s.url, tmp_path / "c2")
        assert "\r" not in p.stderr.decode()
    finally:
        s.stop()


# ------------------------------------------------------------------ errors
EXCEPTION_NAMES = ("Error:", "Exception", "Traceback", "errno", "Errno")


def _assert_one_line(p):
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tvcfs: error: "), err
    assert not any(n in lines[0] for n in EXCEPTION_NAMES), err
    return lines[0]


def test_bad_input_gives_one_line_errors(small_repo, tmp_path):
    r, d = small_repo
    f = write(tmp_path / "plain.txt", b"x")
    bad_name = os.fsdecode(b"bad\xffname")
    os.makedirs(tmp_path / "nonutf")
    write(os.path.join(str(tmp_path / "nonutf"), bad_name), b"x")
    ro = tmp_path / "ro"
    ro.mkdir()
    write(tmp_path / "stale.car.tmp", b"partial")
    cases = [
        (("commit", tmp_path / "missing"), "missing"),
        (("commit", f), "plain.txt"),
        (("commit", tmp_path / "nonutf"), "bad\\xffname"),
        (("commit", os.path.join(str(tmp_path), bad_name)), "bad\\xffname"),
        (("log", "nope"), "nope"),
        (("log", "main", "feat"), "--"),
        (("show", "HEAD:nope"), "nope"),
        (("ls", "main~5"), "main~5"),
        (("cat", "HEAD:sub"), "sub"),
        (("cat", "justtext"), "justtext"),
        (("checkout", "HEAD", f), "plain.txt"),
        (("checkout", "HEAD", d), str(d)),
        (("checkout", "nope", tmp_path / "x"), "nope"),
        (("export", "HEAD", tmp_path / "no" / "dir" / "x.car"), "x.car"),
        (("export", "HEAD", d), str(d)),
        (("export", "HEAD", tmp_path / "stale.car"), "stale.car.tmp"),
        (("import", tmp_path / "missing.car"), "missing.car"),
        (("import", d), str(d)),
        (("import", f), ""),
        (("diff", "nope"), "nope"),
        (("merge", "nope"), "nope"),
        (("branch", "bad..name"), "bad..name"),
        (("branch", "-d", "nope"), "nope"),
        (("tag", "-d", "nope"), "nope"),
        (("reflog", "nope"), "nope"),
        (("add", tmp_path / "missing"), "missing"),
        (("add", tmp_path / "nonutf"), "bad\\xffname"),
        (("rm", "not/there.txt"), "not/there.txt"),
        (("restore", "a.txt"), "--staged"),
        (("status", tmp_path), str(tmp_path)),
        (("stats", tmp_path), str(tmp_path)),
        (("pin", "add", "xyz"), "xyz"),
        (("remote", "add", "o", "bad"), "bad"),
        (("push",), "origin"),
        (("fetch",), "origin"),
        (("mount", r, tmp_path / "nomnt"), "nomnt"),
        (("commit", d, "--meta", "lr=nan"), "nan"),
        # unwritable or unreadable places, even for root
        (("export", "HEAD", "/proc/x.car"), "/proc/x.car"),
        (("checkout", "HEAD", "/proc/newdir"), "/proc/newdir"),
        (("import", "/proc/self/mem"), "/proc/self/mem"),
        (("init", "/proc/newrepo"), "/proc/newrepo"),
        (("cat", "HEAD:"), "HEAD:"),
        (("show", "HEAD:sub/c.txt/x"), "HEAD:sub/c.txt/x"),
    ]
    for args, needle in cases:
        p = tv("-C", r, *args, ok=None)
        line = _assert_one_line(p)
        assert needle in line, (args, line)
    # a file where a directory is expected, a directory that is not writable
    if os.geteuid() != 0:
        os.chmod(ro, 0o555)
        try:
            line = _assert_one_line(tv("-C", r, "export", "HEAD", ro / "x.car", ok=None))
            assert "x.car" in line
        finally:
            os.chmod(ro, 0o755)
    # not a repository at all
    line = _assert_one_line(tv("log", cwd=tmp_path / "ro", ok=None))
    assert "not a tvcfs repository" in line
    # the stale .tmp was not touched, nothing half-written was left
    assert open(tmp_path / "stale.car.tmp", "rb").read() == b"partial"
    assert not os.path.exists(tmp_path / "no")


# ------------------------------------------------------------------ completion
def test_shell_completion_scripts(tmp_path):
    bash = tv("completion", "bash").stdout.decode()
    for verb in ("commit", "checkout", "add", "restore", "completion"):
        assert verb in bash
    assert "--meta" in bash and "--graph" in bash
    script = write(tmp_path / "tvcfs.bash", bash.encode())
    p = subprocess.run(["bash", "-c", f"source {script} && complete -p tvcfs"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0 and "tvcfs" in p.stdout, p.stderr
    # ask bash for the completions of `tvcfs com`
    p = subprocess.run(["bash", "-c", f"source {script}; COMP_WORDS=(tvcfs com); COMP_CWORD=1; "
                        f"COMP_LINE='tvcfs com'; COMP_POINT=9; "
                        f"$(complete -p tvcfs | sed -E 's/.*-F ([^ ]+).*/\\1/') tvcfs com tvcfs; "
                        "printf '%s\\n' \"${COMPREPLY[@]}\""], capture_output=True, text=True, timeout=30)
    assert {"commit", "completion"} <= set(p.stdout.split()), (p.stdout, p.stderr)
    zsh = tv("completion", "zsh").stdout.decode()
    assert zsh.startswith("#compdef tvcfs") and "commit" in zsh
    if shutil.which("zsh"):
        z = write(tmp_path / "_tvcfs", zsh.encode())
        assert subprocess.run(["zsh", "-n", z], timeout=30).returncode == 0


def test_import_onto_a_branch_only_fast_forwards(history_repo, tmp_path):
    """``import FILE -b BRANCH`` moves an existing branch only to a commit that
    descends from it, as git updates a ref; otherwise one line, exit 1 and nothing
    imported; ``--force`` moves it (the old commit stays in the reflog). Before:
    main silently jumped to an unrelated commit with exit 0."""
    r = history_repo
    heads = {b["name"]: b["commit"] for b in js("-C", r, "branch")}
    tv("-C", r, "export", "feat", tmp_path / "feat.car", "--history")
    p = tv("-C", r, "import", tmp_path / "feat.car", "-b", "main", ok=False)
    err = p.stderr.decode().strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("tvcfs: error:") and "not a fast-forward" in err and "--force" in err
    assert {b["name"]: b["commit"] for b in js("-C", r, "branch")} == heads  # main did not move

    # a fast-forward is taken: a branch at c1 moves to c3 (main's head)
    tv("-C", r, "branch", "old", "main~1")
    tv("-C", r, "export", "main", tmp_path / "main.car", "--history")
    tv("-C", r, "import", tmp_path / "main.car", "-b", "old")
    assert {b["name"]: b["commit"] for b in js("-C", r, "branch")}["old"] == heads["main"]

    tv("-C", r, "import", tmp_path / "feat.car", "-b", "main", "--force")
    assert {b["name"]: b["commit"] for b in js("-C", r, "branch")}["main"] == heads["feat"]
    newest = js("-C", r, "reflog", "main")[0]
    assert (newest["old"], newest["new"], newest["message"]) == (heads["main"], heads["feat"], "import")
