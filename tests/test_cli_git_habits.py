"""What a git user types, through real ``tvcfs`` subprocesses (docs/repository.md,
"Command-line conventions"): usage errors from the command's own parser, options
intermixed with revisions and paths, ``log -N``, ``A..B`` ranges, ``branch -D``,
``tag -l``, commands run inside a mount's branch directory, ``fsck`` in a lazy clone,
``remote set-url``."""

from __future__ import annotations

import json

import pytest

from support.cli import run_tvcfs_text
from support.repo import write

pytestmark = pytest.mark.timeout(300)


def tv(*args, **kw):
    return run_tvcfs_text(*args, **kw)


@pytest.fixture
def two_branches(small_repo, tmp_path):
    """small_repo plus branch ft (one commit changing a.txt on top of main), main
    then one more commit (b.txt); returns the repository path."""
    r, d = small_repo
    tv("-C", r, "branch", "ft")
    write(d / "a.txt", b"a2\n")
    tv("-C", r, "commit", d, "-b", "ft", "-m", "ft one")
    write(d / "a.txt", b"a1\n")
    write(d / "b.txt", b"b2\n")
    tv("-C", r, "commit", d, "-b", "main", "-m", "main two")
    return r


def test_unknown_option_is_reported_by_the_command(small_repo):
    r, _ = small_repo
    p = tv("-C", r, "branch", "--no-such-flag", ok=False)
    assert p.returncode == 2
    assert "tvcfs branch: error: unrecognized arguments: --no-such-flag" in p.stderr
    assert p.stderr.startswith("usage: tvcfs branch"), p.stderr
    p = tv("-C", r, "hub", "user", "token", "alice", "--bogus", ok=False)
    assert "tvcfs hub user token: error: unrecognized arguments: --bogus" in p.stderr


def test_options_between_revision_and_paths(two_branches):
    r = two_branches
    p = tv("-C", r, "log", "ft", "--oneline", "--", "a.txt")
    assert [line.split(" ", 1)[1] for line in p.stdout.splitlines()] == ["(ft) ft one", "first"]
    p = tv("-C", r, "diff", "main", "--stat", "ft")
    assert "a.txt" in p.stdout and "b.txt" in p.stdout


def test_log_minus_number(two_branches):
    r = two_branches
    assert len(tv("-C", r, "log", "-1", "--oneline").stdout.splitlines()) == 1
    assert len(tv("-C", r, "log", "--oneline", "-2", "ft").stdout.splitlines()) == 2
    assert tv("-C", r, "log", "--oneline", "--", "-1").stdout == ""  # after --: a path named -1


def test_ranges_in_log_and_diff(two_branches):
    r = two_branches
    msgs = [line.split(") ", 1)[-1] for line in tv("-C", r, "log", "--oneline", "main..ft").stdout.splitlines()]
    assert msgs == ["ft one"]
    msgs = [line.split(") ", 1)[-1] for line in tv("-C", r, "log", "--oneline", "ft..").stdout.splitlines()]
    assert msgs == ["main two"]
    assert tv("-C", r, "diff", "main..ft").stdout == tv("-C", r, "diff", "main", "ft").stdout
    p = tv("-C", r, "diff", "main...ft", ok=False)
    assert p.stderr.startswith("tvcfs: error: main...ft: A...B ranges are not supported"), p.stderr


def test_branch_capital_d_and_list_patterns(two_branches):
    r = two_branches
    tv("-C", r, "branch", "ft-old")
    tv("-C", r, "tag", "v1.0")
    tv("-C", r, "tag", "v1.1")
    tv("-C", r, "tag", "w2")
    assert [line.split()[0] for line in tv("-C", r, "tag", "-l").stdout.splitlines()] == ["v1.0", "v1.1", "w2"]
    assert [line.split()[0] for line in tv("-C", r, "tag", "--list", "v1.*").stdout.splitlines()] == ["v1.0", "v1.1"]
    assert [line[2:].split()[0] for line in tv("-C", r, "branch", "-l", "ft*").stdout.splitlines()] == ["ft", "ft-old"]
    assert tv("-C", r, "branch", "-D", "ft-old").stdout.startswith("Deleted branch ft-old")
    assert "ft-old" not in tv("-C", r, "branch").stdout


def test_commands_inside_a_mount_use_the_mounted_repository(two_branches, tmp_path):
    from support.mount import Mounted

    r = two_branches
    with Mounted(str(r), str(tmp_path / "mnt")) as m:
        here = m.branch("ft")
        assert tv("log", "--oneline", "-n", "1", "ft", cwd=here).stdout.split(") ", 1)[1] == "ft one\n"
        assert "main two" in tv("log", "--oneline", cwd=m.mnt).stdout
        p = tv("status", cwd=here)
        assert "  ft: " in p.stdout and "  main: " not in p.stdout, p.stdout
        assert "  main: " in tv("status", cwd=m.mnt).stdout
    p = tv("log", cwd=tmp_path, ok=False)
    assert p.stderr.startswith("tvcfs: error: not a tvcfs repository"), p.stderr


def test_fsck_in_a_lazy_clone_accepts_the_missing_leaves(small_repo, servers, tmp_path):
    r, _ = small_repo
    srv = servers(r, tmp_path)
    lazy = tmp_path / "lazy"
    tv("clone", "--lazy", "-q", srv.url, lazy)
    p = tv("-C", lazy, "fsck")
    assert p.stdout.startswith("ok: ") and "lazy clone" in p.stdout, p.stdout
    full = tmp_path / "full"
    tv("clone", "-q", srv.url, full)
    assert "lazy clone" not in tv("-C", full, "fsck").stdout


def test_switch_and_checkout_without_a_directory(two_branches, tmp_path):
    r = two_branches
    assert tv("-C", r, "switch", "ft").stdout.startswith("Switched to branch 'ft'")
    assert tv("-C", r, "status").stdout.startswith("On branch ft")
    assert "ft one" in tv("-C", r, "log", "--oneline", "-1").stdout
    tv("-C", r, "checkout", "main")
    assert tv("-C", r, "status").stdout.startswith("On branch main")
    assert tv("-C", r, "checkout", "-b", "exp", "ft").stdout.startswith("Switched to a new branch 'exp'")
    assert "* exp " in tv("-C", r, "branch").stdout
    tv("-C", r, "switch", "-c", "exp2")
    assert tv("-C", r, "--json", "branch").stdout.count('"head": true') == 1
    tv("-C", r, "tag", "v1", "main")
    for argv, msg in ((("switch", "v1"), "v1: not a branch: `tvcfs switch -c NEW v1`"),
                      (("switch", "nosuch"), "nosuch: no such branch"),
                      (("switch",), "switch needs a BRANCH"),
                      (("checkout",), "checkout needs REV DIR"),
                      (("checkout", "-b", "exp"), "branch 'exp' already exists")):
        p = tv("-C", r, *argv, ok=False)
        assert p.stderr.startswith("tvcfs: error: " + msg) and p.stderr.count("\n") == 1, (argv, p.stderr)
    assert tv("-C", r, "status").stdout.startswith("On branch exp2")
    out = tmp_path / "wt"
    assert "a worktree of branch exp3" in tv("-C", r, "checkout", "-b", "exp3", "v1", out).stdout
    assert (out / "b.txt").read_bytes() == b"b2\n"
    assert tv("-C", r, "status").stdout.startswith("On branch exp2")


def test_remote_set_url(small_repo):
    r, _ = small_repo
    tv("-C", r, "remote", "add", "origin", "s3://models/a")
    p = tv("-C", r, "remote", "add", "origin", "s3://models/b", ok=False)
    assert "`tvcfs remote set-url origin URL` changes it" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    tv("-C", r, "remote", "set-url", "origin", "s3://models/b")
    assert tv("-C", r, "remote", "-v").stdout == "origin\ts3://models/b\n"
    p = tv("-C", r, "remote", "set-url", "nope", "s3://models/c", ok=False)
    assert p.stderr == "tvcfs: error: no remote 'nope': `tvcfs remote add nope URL` adds it\n"
    p = tv("-C", r, "remote", "set-url", "origin", "http://x", ok=False)
    assert p.stderr.startswith("tvcfs: error: remote origin: not a tvcfs URL"), p.stderr
    assert tv("-C", r, "remote", "-v").stdout == "origin\ts3://models/b\n"


def test_every_option_has_help():
    """Every option of every command (sub-commands included) says what it does in
    ``--help``: the parser is walked in-process (building it runs no command)."""
    import argparse

    from tvcfs.cli import build_parser

    missing = []

    def walk(parser, name):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for verb, sub in a.choices.items():
                    walk(sub, f"{name} {verb}")
            elif a.option_strings and not a.help:
                missing.append(f"{name} {'/'.join(a.option_strings)}")

    walk(build_parser(), "tvcfs")
    assert not missing, missing


def test_outside_a_repository_the_error_says_what_to_do(small_repo, tmp_path):
    r, _ = small_repo
    wt = tmp_path / "wt"
    tv("-C", r, "checkout", "main", wt)  # a worktree is a plain directory: not a repository
    p = tv("status", cwd=wt, ok=False)
    assert p.stderr == (f"tvcfs: error: not a tvcfs repository (or any parent): {wt}: run tvcfs inside a "
                        "repository or a mount of one, or name the repository with -C PATH (`tvcfs init` "
                        "creates one)\n")


def test_log_decorations_name_head_and_remote_tracking_refs(two_branches, servers, tmp_path):
    r = two_branches
    srv = servers(r, tmp_path)
    copy = tmp_path / "copy"
    tv("clone", "-q", srv.url, copy)
    lines = {line.split(" ", 1)[1] for line in tv("-C", copy, "log", "--oneline", "--all").stdout.splitlines()}
    assert lines == {"(HEAD -> main, origin/main) main two", "(ft, origin/ft) ft one", "first"}, lines
    tv("-C", copy, "switch", "ft")
    assert tv("-C", copy, "log", "-1").stdout.splitlines()[0].endswith("(HEAD -> ft, origin/ft)")
    head = tv("-C", copy, "--json", "log", "-1").stdout
    assert '"ft"' in head and '"origin/ft"' in head and "HEAD ->" not in head


def test_reset_and_forced_branch_or_tag_moves(two_branches, tmp_path):
    r = two_branches
    top, prev = (c["commit"] for c in json.loads(tv("-C", r, "--json", "log", "-n", "2").stdout))
    assert tv("-C", r, "branch", "-f", "ft", "main").stdout.startswith("Reset branch ft to ")
    tv("-C", r, "tag", "v1", "main~1")
    assert tv("-C", r, "tag", "-f", "v1", "main").stdout.startswith("Updated tag v1 to ")
    write(tmp_path / "n.txt", b"n\n")
    tv("-C", r, "add", tmp_path / "n.txt")
    p = tv("-C", r, "reset", "--soft", "HEAD~1")
    assert p.stdout.startswith(f"HEAD is now at {prev[:16]} first (branch main, was {top[:16]})"), p.stdout
    assert "n.txt" in tv("-C", r, "status").stdout  # --soft keeps the index
    assert tv("-C", r, "reflog", "main").stdout.splitlines()[0].endswith("reset: moving to HEAD~1")
    p = tv("-C", r, "reset", "--hard", top)
    assert p.stdout.rstrip().endswith("the staged changes were dropped"), p.stdout
    assert "n.txt" not in tv("-C", r, "status").stdout
    assert json.loads(tv("-C", r, "--json", "log", "-n", "1").stdout)[0]["commit"] == top
    p = tv("-C", r, "reset", "nosuch", ok=False)
    assert p.stderr == "tvcfs: error: unknown revision 'nosuch'\n", p.stderr


def test_show_of_a_plain_file_names_cat(small_repo):
    r, _ = small_repo
    p = tv("-C", r, "show", "HEAD:sub/c.txt")
    assert p.stdout.splitlines()[-1] == "  (`tvcfs cat HEAD:sub/c.txt` writes its contents to stdout)", p.stdout
    assert tv("-C", r, "cat", "HEAD:sub/c.txt").stdout == "c1\n"
