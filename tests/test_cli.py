"""The ``tvcfs`` command line, run as a real subprocess (issue 2, item 5)."""

from __future__ import annotations

import os
import re

import pytest

from support.cli import run_tvcfs
from support.model import make_finetune
from support.trees import assert_same_tree
from tvcfs.repo import Repo

CID_RE = re.compile(r"\bbafyrei[a-z2-7]{52}\b")


def out(proc) -> str:
    return proc.stdout.decode()


def assert_one_line_error(proc, *needles):
    """Non-zero exit, nothing on stdout, exactly one line on stderr, no traceback."""
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tvcfs: error: ") or lines[0].startswith("tvcfs: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory, real_model_dir):
    """A repository (made with the CLI) holding the real model on main, a fine-tune on
    main~0, a branch and a tag; shared by the read-only tests of this module."""
    base = tmp_path_factory.mktemp("cli")
    repo = base / "repo"
    run_tvcfs("init", repo)
    p = run_tvcfs("commit", real_model_dir, "-m", "base model", cwd=repo)
    c1 = CID_RE.search(out(p)).group(0)
    make_finetune(real_model_dir, str(base / "ft"))
    p = run_tvcfs("--repo", repo, "commit", base / "ft", "-m", "fine-tune")
    c2 = CID_RE.search(out(p)).group(0)
    return {"repo": repo, "base": base, "c1": c1, "c2": c2, "ft": base / "ft"}


def test_init_commit_log(tmp_path, real_model_dir):
    repo = tmp_path / "r"
    p = run_tvcfs("init", repo)
    assert "Initialized empty tvcfs repository" in out(p)
    assert "Reinitialized" in out(run_tvcfs("init", repo))
    assert "no commits yet" in out(run_tvcfs("log", cwd=repo))
    p = run_tvcfs("commit", real_model_dir, "-m", "first", cwd=repo)
    text = out(p)
    cid = CID_RE.search(text).group(0)
    assert text.startswith(f"[main {cid}] first")
    assert "13 files" in text and "new" in text
    new_bytes = int(re.search(r"\((\d+) bytes\)", text).group(1))
    assert new_bytes >= os.path.getsize(os.path.join(real_model_dir, "model.safetensors"))
    p = run_tvcfs("commit", real_model_dir, "-m", "again", cwd=repo)
    assert out(p).startswith("nothing to commit")
    log = out(run_tvcfs("log", cwd=repo))
    assert f"commit {cid} (HEAD -> main)" in log and "    first" in log
    assert "Author: Test Author <test@example.org>" in log
    assert out(run_tvcfs("log", "--oneline", cwd=repo)).strip() == f"{cid[:16]} (HEAD -> main) first"


def test_author_from_env_and_flag(tmp_path):
    repo = tmp_path / "r"
    run_tvcfs("init", repo)
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_bytes(b"1")
    run_tvcfs("commit", d, "-m", "env", cwd=repo,
              env={"TVCFS_AUTHOR_NAME": "Émile Env", "TVCFS_AUTHOR_EMAIL": "env@example.org"})
    (d / "f").write_bytes(b"2")
    run_tvcfs("commit", d, "-m", "flag", "--author", "Flag Person <flag@example.org>", cwd=repo,
              env={"TVCFS_AUTHOR_NAME": "Émile Env", "TVCFS_AUTHOR_EMAIL": "env@example.org"})
    with Repo.open(str(repo)) as r:
        (_, c2), (_, c1) = list(r.log())
        assert (c1.author_name, c1.author_email) == ("Émile Env", "env@example.org")
        assert (c2.author_name, c2.author_email) == ("Flag Person", "flag@example.org")
    log = out(run_tvcfs("log", cwd=repo))
    assert "Author: Flag Person <flag@example.org>" in log and "Author: Émile Env <env@example.org>" in log


def test_branch_tag_show_ls_cat(model_repo, real_model_dir):
    repo, c1, c2 = model_repo["repo"], model_repo["c1"], model_repo["c2"]
    branches = out(run_tvcfs("branch", cwd=repo))
    assert re.search(rf"^\* main\s+{c2[:16]} fine-tune$", branches, re.M), branches
    run_tvcfs("branch", "base-line", "main~1", cwd=repo)
    run_tvcfs("tag", "v1", c1[:20], cwd=repo)
    try:
        assert "base-line" in out(run_tvcfs("branch", cwd=repo))
        assert out(run_tvcfs("tag", cwd=repo)).split() == ["v1", c1[:16]]
        assert_one_line_error(run_tvcfs("branch", "base-line", cwd=repo, ok=False), "already exists")
        assert_one_line_error(run_tvcfs("branch", "bad..name", cwd=repo, ok=False), "invalid branch name")

        show = out(run_tvcfs("show", "v1", cwd=repo))
        assert show.startswith(f"commit {c1}\n") and "base model" in show
        assert "90868376  model.safetensors" in show
        show2 = out(run_tvcfs("show", "main", cwd=repo))
        assert f"parent {c1}" in show2
        st = out(run_tvcfs("show", "main:model.safetensors", cwd=repo))
        assert "105 tensors" in st and "embeddings.adapter.weight" in st and "F32" in st
        assert "104 tensors" in out(run_tvcfs("show", "base-line:model.safetensors", cwd=repo))

        ls = out(run_tvcfs("ls", "v1", cwd=repo)).splitlines()
        assert len(ls) == 13 and any(line.endswith("  1_Pooling/") for line in ls)
        assert any(re.search(r"\s90868376 bafybei\w+  model\.safetensors$", line) for line in ls)
        lsr = out(run_tvcfs("ls", "-r", "main~1", cwd=repo)).splitlines()
        assert any(line.endswith("  1_Pooling/config.json") for line in lsr)
        assert out(run_tvcfs("ls", "v1:1_Pooling", cwd=repo)).strip().endswith("  config.json")

        for rel in ("config.json", "model.safetensors", "1_Pooling/config.json"):
            with open(os.path.join(real_model_dir, rel), "rb") as f:
                assert run_tvcfs("cat", f"v1:{rel}", cwd=repo).stdout == f.read(), rel
        with open(model_repo["ft"] / "model.safetensors", "rb") as f:
            assert run_tvcfs("cat", "main:model.safetensors", cwd=repo).stdout == f.read()
        cfg_cid = next(line.split()[2] for line in ls if line.endswith("  config.json"))
        with open(os.path.join(real_model_dir, "config.json"), "rb") as f:
            assert run_tvcfs("cat", cfg_cid, cwd=repo).stdout == f.read()
    finally:
        run_tvcfs("branch", "-d", "base-line", cwd=repo)
        run_tvcfs("tag", "-d", "v1", cwd=repo)
    assert "base-line" not in out(run_tvcfs("branch", cwd=repo))
    assert out(run_tvcfs("tag", cwd=repo)) == ""
    reflog = out(run_tvcfs("reflog", cwd=repo))
    assert "refs/tags/v1" in reflog and "refs/heads/base-line" in reflog and "\x00" not in reflog


def test_checkout_export_import(model_repo, real_model_dir, tmp_path):
    repo = model_repo["repo"]
    run_tvcfs("checkout", "main~1", tmp_path / "co1", cwd=repo)
    assert_same_tree(real_model_dir, str(tmp_path / "co1"))
    run_tvcfs("checkout", "main", tmp_path / "co2", cwd=repo)
    assert_same_tree(str(model_repo["ft"]), str(tmp_path / "co2"))
    run_tvcfs("checkout", "main:1_Pooling", tmp_path / "co3", cwd=repo)
    assert_same_tree(os.path.join(real_model_dir, "1_Pooling"), str(tmp_path / "co3"))
    assert_one_line_error(run_tvcfs("checkout", "main", tmp_path / "co2", cwd=repo, ok=False), "not an empty directory")

    car = tmp_path / "m.car"
    p = run_tvcfs("export", "main~1", car, cwd=repo)
    assert model_repo["c1"] in out(p) and car.stat().st_size > 90_000_000
    assert not (tmp_path / "m.car.tmp").exists()
    other = tmp_path / "other"
    run_tvcfs("init", other)
    p = run_tvcfs("import", car, "-b", "imported", cwd=other)
    assert model_repo["c1"] in out(p)
    assert "imported 0 new blocks" in out(run_tvcfs("import", car, cwd=other))
    run_tvcfs("checkout", "imported", tmp_path / "co4", cwd=other)
    assert_same_tree(real_model_dir, str(tmp_path / "co4"))


def test_errors_are_one_line(model_repo, tmp_path):
    repo = model_repo["repo"]
    plain = tmp_path / "plain"
    plain.mkdir()
    assert_one_line_error(run_tvcfs("log", cwd=plain, ok=False), "not a tvcfs repository")
    assert_one_line_error(run_tvcfs("--repo", plain, "log", ok=False), "not a tvcfs repository", str(plain))
    assert_one_line_error(run_tvcfs("--repo", tmp_path / "missing", "ls", ok=False), "not a tvcfs repository")
    assert_one_line_error(run_tvcfs("log", "nosuchrev", cwd=repo, ok=False), "unknown revision 'nosuchrev'")
    assert_one_line_error(run_tvcfs("show", "main~9", cwd=repo, ok=False), "ancestors")
    # a count past Python's int-from-string limit: the same error, not the limit's message
    assert_one_line_error(run_tvcfs("show", "main~" + "9" * 5000, cwd=repo, ok=False), "main has only 1 ancestors")
    assert_one_line_error(run_tvcfs("cat", "main:missing.bin", cwd=repo, ok=False), "missing.bin")
    # a name or URL with a newline: the error stays one line
    assert_one_line_error(run_tvcfs("fetch", "a\nb", cwd=repo, ok=False), "no remote named 'a\\nb'",
                          "remote add a\\x0ab URL")
    assert_one_line_error(run_tvcfs("remote", "add", "x", "tvcfs://127.0.0.1:1/\nfoo", cwd=repo, ok=False),
                          "invalid remote URL 'tvcfs://127.0.0.1:1/\\nfoo'")
    assert_one_line_error(run_tvcfs("cat", "main:1_Pooling", cwd=repo, ok=False), "not a file")
    assert_one_line_error(run_tvcfs("ls", "main:no/such/dir", cwd=repo, ok=False), "not found")
    assert_one_line_error(run_tvcfs("commit", tmp_path / "no-such-dir", cwd=repo, ok=False), "no-such-dir")
    assert_one_line_error(run_tvcfs("import", tmp_path / "missing.car", cwd=repo, ok=False), "missing.car")
    (tmp_path / "bad.car").write_bytes(b"\x05hello world")
    assert_one_line_error(run_tvcfs("import", tmp_path / "bad.car", cwd=repo, ok=False))
    assert_one_line_error(run_tvcfs("cat", "bafyreinotacid", cwd=repo, ok=False))
    assert_one_line_error(run_tvcfs("branch", "-d", "main", cwd=repo, ok=False), "HEAD")
    assert_one_line_error(run_tvcfs("tag", "-d", "nosuchtag", cwd=repo, ok=False), "nosuchtag")
    # usage errors come from argparse: exit 2, no traceback
    p = run_tvcfs("frobnicate", cwd=repo, ok=False)
    assert p.returncode == 2 and b"Traceback" not in p.stderr


def test_repo_flag_and_discovery(model_repo, tmp_path):
    repo, c2 = model_repo["repo"], model_repo["c2"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (("--repo", repo, "log", "-n", "1"), ("-C", repo, "log", "-n", "1")):
        assert f"commit {c2}" in out(run_tvcfs(*args, cwd=elsewhere))
    sub = repo / "some" / "sub dir"
    sub.mkdir(parents=True, exist_ok=True)
    assert f"commit {c2}" in out(run_tvcfs("log", "-n", "1", cwd=sub))
    assert f"commit {c2}" in out(run_tvcfs("show", "HEAD", cwd=sub))
    # a relative --repo and a relative directory to commit
    p = run_tvcfs("--repo", os.path.relpath(repo, elsewhere), "commit", os.path.relpath(model_repo["ft"], elsewhere),
                  "-m", "same", cwd=elsewhere)
    assert out(p).startswith("nothing to commit")


def test_names_with_control_characters_are_printed_escaped(tmp_path):
    """Entry names, symlink targets and tensor names come from whoever made the
    commit (a clone, a CAR, a safetensors header): ``ls``, ``ls -r``, ``show`` and
    ``diff`` print a newline or a terminal escape in them as ``\\xNN``, so one name
    is one line and nothing reaches the terminal raw (before, ``ls`` and ``show``
    wrote ``a`` and ``b.txt`` on two lines and sent ESC[31m to the terminal);
    ``--json`` keeps the names exact."""
    import json

    import numpy as np

    from support.safetensors import write_safetensors_raw

    src = tmp_path / "src"
    src.mkdir()
    nl, esc = "a\nb.txt", "\x1b[31mred"
    (src / nl).write_text("one\n")
    (src / esc).write_text("two\n")
    os.symlink(nl, src / "lnk")
    w = np.zeros(4, np.float32).tobytes()
    write_safetensors_raw(str(src / "m.safetensors"), [("t\x1b[2J", "F32", [4], w)])
    repo = str(tmp_path / "repo")
    run_tvcfs("init", repo)
    run_tvcfs("-C", repo, "commit", src, "-m", "one")
    (src / nl).write_text("one more\n")
    write_safetensors_raw(str(src / "m.safetensors"), [("t\x1b[2J", "F32", [4], np.ones(4, np.float32).tobytes())],
                          metadata={"k\x1b[8m": "v"})
    run_tvcfs("-C", repo, "commit", src, "-m", "two")
    outputs = {
        "ls": out(run_tvcfs("-C", repo, "ls", "main")),
        "ls -r": out(run_tvcfs("-C", repo, "ls", "-r", "main")),
        "show": out(run_tvcfs("-C", repo, "show", "main")),
        "show dir": out(run_tvcfs("-C", repo, "show", "main:")),
        "show link": out(run_tvcfs("-C", repo, "show", "main:lnk")),
        "show tensors": out(run_tvcfs("-C", repo, "show", "main:m.safetensors")),
        "diff": out(run_tvcfs("-C", repo, "diff", "main~1", "main")),
        "diff --stat": out(run_tvcfs("-C", repo, "diff", "--stat", "main~1", "main")),
    }
    for what, text in outputs.items():
        assert "\x1b" not in text and "a\nb" not in text, (what, text)
    assert "  a\\x0ab.txt\n" in outputs["ls"] and "lnk -> a\\x0ab.txt\n" in outputs["ls"], outputs["ls"]
    assert "\\x1b[31mred" in outputs["ls -r"] and "a\\x0ab.txt" in outputs["show"], outputs
    assert "t\\x1b[2J" in outputs["show tensors"] and "~ t\\x1b[2J" in outputs["diff"], outputs
    assert "metadata k\\x1b[8m: " in outputs["diff"], outputs["diff"]
    assert "M a\\x0ab.txt" in outputs["diff"] and " a\\x0ab.txt | modified" in outputs["diff --stat"], outputs
    names = {e["name"] for e in json.loads(out(run_tvcfs("-C", repo, "ls", "main", "--json")))}
    assert {nl, esc, "lnk", "m.safetensors"} == names


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "0.1"])
def test_sizes_and_rates_that_are_not_finite_or_under_a_byte_are_usage_errors(tmp_path, value):
    """``--rate-limit`` and ``--cache-size`` take ``float`` syntax, so ``inf`` and
    ``1e400`` parsed (to infinity) and crashed the CLI with a traceback
    (OverflowError: cannot convert float infinity to integer), and ``0.1`` became a
    size of 0 bytes; now each is argparse's one-line usage error (exit 2)."""
    repo = tmp_path / "repo"
    run_tvcfs("init", repo)
    (tmp_path / "mnt").mkdir()
    for args in (("serve", "--listen", "127.0.0.1:0", "--rate-limit", value, repo),
                 ("mount", "--cache-size", value, repo, tmp_path / "mnt")):
        p = run_tvcfs(*args, ok=False, timeout=60)
        err = p.stderr.decode()
        assert p.returncode == 2 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith(f"tvcfs {args[0]}: error: argument "), err
        assert repr(value) in err, err


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_mount_durations_that_are_not_finite_or_negative_are_usage_errors(tmp_path, value):
    """``--commit-delay`` and ``--fetch-timeout`` (and ``-o commit_delay=``) refuse
    NaN, infinity and negative seconds: the mount started with them, and a commit
    delay of ``nan`` or ``inf`` never committed a write until the unmount."""
    repo = tmp_path / "repo"
    run_tvcfs("init", repo)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    from support.mount import fusermount

    try:
        for args in (("--commit-delay", value), ("--fetch-timeout", value)):
            p = run_tvcfs("mount", *args, repo, mnt, ok=False, timeout=60)
            err = p.stderr.decode()
            assert p.returncode == 2 and "Traceback" not in err, err
            assert f"error: argument {args[0]}: not a number of seconds (0 or more): {value!r}" in err, err
        p = run_tvcfs("mount", "-o", f"commit_delay={value}", repo, mnt, ok=False, timeout=60)
        assert "commit_delay" in p.stderr.decode() and "Traceback" not in p.stderr.decode(), p.stderr
        assert not os.path.ismount(mnt)
    finally:  # (a mount these options once started is never left behind)
        if os.path.ismount(mnt):
            fusermount("-u", "-z", str(mnt))


@pytest.mark.parametrize("value", ["-5", "nan"])
def test_gc_expire_refuses_negative_days_and_nan(tmp_path, value):
    """``gc --expire -5`` (a typo of 5) and ``--expire nan`` expired every reflog entry,
    as ``--expire 0`` does, and collected the commits only the reflog kept (a deleted
    branch's); now they are usage errors and nothing is deleted."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("kept by the reflog only\n")
    repo = tmp_path / "repo"
    run_tvcfs("init", repo)
    run_tvcfs("-C", repo, "commit", src, "-b", "side", "-m", "side")
    (src / "a.txt").write_text("main\n")
    run_tvcfs("-C", repo, "commit", src, "-b", "main", "-m", "main")
    side = run_tvcfs("-C", repo, "log", "-n", "1", "--oneline", "side", text=True).stdout.split()[0]
    run_tvcfs("-C", repo, "branch", "-d", "side")
    p = run_tvcfs("-C", repo, "gc", "--expire", value, ok=False)
    err = p.stderr.decode()
    assert p.returncode == 2 and f"not a number of days (0 or more): {value!r}" in err, err
    assert run_tvcfs("-C", repo, "show", side, text=True).stdout.startswith("commit ")
