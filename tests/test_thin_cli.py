"""The CLI is thin (issue 21, item 6): the work its commands do is in importable
functions, called here directly; the mount's options are one table; sizes, CIDs
and times are formatted in one module; the CLI's start imports no storage code."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from support.cli import run_tvcfs
from support.safetensors import write_safetensors_raw


# --------------------------------------------------------------------------- formatting
def test_formatters():
    from tvcfs.encoding.cid import RAW, cid_str, make_cid
    from tvcfs.formatting import clock, commit_date, day, human_size, ratio, short_cid

    assert [human_size(n) for n in (0, 1023, 1024, 1536 << 10, 3 << 30, 5 << 40, 6 << 50)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 MiB", "3.0 GiB", "5.0 TiB", "6144.0 TiB"]
    cid = make_cid(RAW, b"x")
    assert short_cid(cid) == cid_str(cid)[:16] == short_cid(cid_str(cid))
    assert short_cid(None) == "(none)" and short_cid(None, none="(deleted)") == "(deleted)"
    assert ratio(1, 4) == "0.25" and ratio(5, 0) == "-"
    t = 1_800_000_000
    assert clock(t) == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) and day(t) == clock(t)[:10]
    assert commit_date(t) == time.strftime("%a %b %d %H:%M:%S %Y %z", time.localtime(t))


# --------------------------------------------------------------------------- API the CLI calls
def test_repo_tensors_reads_the_header_only(tmp_repo, tmp_path):
    """``Repo.tensors`` (``tvcfs show REV:PATH``, the hub's tensor table): rows from
    the header, the leaf each tensor starts in; ``[]`` for a file that is not safetensors."""
    d = tmp_path / "m"
    d.mkdir()
    big = bytes(range(256)) * 8192  # 2 MiB: spans leaves
    write_safetensors_raw(str(d / "model.safetensors"), [("a", "F32", (4,), b"\0" * 16),
                                                          ("big", "U8", (len(big),), big)])
    (d / "notes.txt").write_text("not a model\n")
    tmp_repo.commit_dir(str(d), message="m")
    rows = tmp_repo.tensors(tmp_repo.entry("HEAD", "model.safetensors").cid)
    assert [r.name for r in rows] == ["a", "big"]
    a, b = rows
    assert (a.dtype, list(a.shape), a.nbytes, a.leaves) == ("F32", [4], 16, 1)
    assert b.nbytes == len(big) and b.leaves >= 2 and b.first_leaf > a.first_leaf
    assert tuple(b) == (b.name, b.dtype, b.shape, b.nbytes, b.first_leaf, b.leaves)  # still a tuple
    assert tmp_repo.tensors(tmp_repo.entry("HEAD", "notes.txt").cid) == []


def test_pack_takes_keep_hot_from_the_setting_and_refuses_a_negative(tmp_repo, tmp_path):
    from tvcfs.errors import TvcfsError
    from tvcfs.pack import pack

    d = tmp_path / "m"
    d.mkdir()
    (d / "f").write_bytes(os.urandom(4096))
    tmp_repo.commit_dir(str(d), message="one")
    with pytest.raises(TvcfsError, match="--keep-hot takes a number"):
        pack(tmp_repo, keep_hot=-1)
    assert pack(tmp_repo).as_dict()["keep_hot"] == 1  # the pack.keep_hot default
    tmp_repo.config.set_text("pack.keep_hot", "0")
    assert pack(tmp_repo).keep_hot == 0


# --------------------------------------------------------------------------- mount options: one table
def _mount_parser():
    from tvcfs.cli import build_parser

    return build_parser()


def test_mount_options_round_trip_through_the_table():
    """What the background start passes on (``command_line``) parses back to the same
    options, and the daemon keywords follow from the table."""
    from tvcfs.fs.options import MOUNT_OPTIONS, command_line, daemon_keywords

    parser = _mount_parser()
    argv = ["mount", "REPO", "MNT", "--debug", "--no-verify", "--allow-other", "--commit-delay", "2.5",
            "--read-ahead-kb", "256", "--remote", "tvcfs://a", "--remote", "tvcfs://b", "--fetch-timeout",
            "7", "--prefetch", "*.json", "--cache-size", "1G"]
    args = parser.parse_args(argv)
    again = parser.parse_args(["mount", "REPO", "MNT", *command_line(args)])
    for option in MOUNT_OPTIONS:
        assert getattr(again, option.dest) == getattr(args, option.dest), option
    assert daemon_keywords(args) == {
        "debug": True, "verify": False, "allow_other": True, "commit_delay": 2.5, "read_ahead_kb": 256,
        "syslog": False, "remotes": ["tvcfs://a", "tvcfs://b"], "fetch_timeout": 7.0,
        "prefetch": ["*.json"], "cache_size": 1 << 30}
    plain = parser.parse_args(["mount", "REPO", "MNT"])
    assert daemon_keywords(plain) == {"debug": False, "verify": True, "allow_other": False,
                                      "commit_delay": 1.0, "syslog": False}
    assert command_line(plain) == ["--commit-delay", "1.0"]
    # every option the daemon takes is one the parser has, spelled once
    flags = [f for o in MOUNT_OPTIONS for f in o.flags]
    assert len(flags) == len(set(flags))


def test_mount_o_options_use_the_same_table():
    from tvcfs.fs.options import parse_o_options

    assert parse_o_options(["commit_delay=3,allow_other", "no_verify,cache_size=512M"]) == {
        "commit_delay": 3.0, "allow_other": True, "no_verify": True, "cache_size": 512 << 20}
    with pytest.raises(ValueError, match="unknown mount option 'bogus'"):
        parse_o_options(["bogus=1"])
    with pytest.raises(ValueError, match="bad value for mount option read_ahead_kb"):
        parse_o_options(["read_ahead_kb=lots"])
    with pytest.raises(ValueError, match="takes no value"):
        parse_o_options(["debug=1"])
    # mount(8)'s generic options are ignored; -s (sloppy) skips unknown ones
    assert parse_o_options(["rw,nosuid,_netdev,x-systemd.automount,comment=x,allow_other"]) == {
        "allow_other": True}
    assert parse_o_options(["bogus=1,debug"], sloppy=True) == {"debug": True}


def test_mount_refuses_an_unknown_o_option(tmp_repo, tmp_path):
    """``tvcfs mount -o`` used to be accepted and ignored: now an unknown option is a
    one-line error naming it (and nothing is mounted)."""
    from tvcfs.fs.daemon import is_mounted, unmount

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        r = run_tvcfs("mount", tmp_repo.root, mnt, "-o", "commit_delay=2,bogus", ok=None)
    finally:
        if is_mounted(str(mnt)):  # the unfixed CLI ignored -o and mounted
            try:
                unmount(str(mnt))
            except Exception:
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert err.startswith("tvcfs: error: mount ") and "bogus" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_size_option_errors_are_argparse_errors():
    parser = _mount_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["mount", "R", "M", "--cache-size", "lots"])
    from tvcfs.fs.options import parse_size

    assert parse_size("10G") == 10 << 30 and parse_size("1MiB") == 1 << 20
    with pytest.raises(ValueError):
        parse_size("0")


# --------------------------------------------------------------------------- start-up
def test_cli_start_imports_no_storage_code():
    """``import tvcfs`` and ``tvcfs --version`` load neither the repository, the DAG
    code nor LMDB (they come in on first use: ``tvcfs.Repo``)."""
    code = ("import sys; from tvcfs.cli import build_parser; build_parser(); "
            "heavy = ('lmdb', 'tvcfs.repo', 'tvcfs.dag', 'tvcfs.store', 'trio', 'numpy'); "
            "print(sorted(m for m in heavy if m in sys.modules)); "
            "import tvcfs; tvcfs.Repo; print('tvcfs.repo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out.stdout


def test_lazy_package_attributes():
    import tvcfs

    assert {"Repo", "add_bytes", "CID", "stream_tensor", "set_default_backend"} <= set(dir(tvcfs))
    assert tvcfs.Repo.__module__ == "tvcfs.repo"
    with pytest.raises(AttributeError):
        tvcfs.no_such_name  # noqa: B018


def test_mount_child_does_not_import_from_the_working_directory(tmp_repo, tmp_path):
    """``tvcfs mount`` runs its daemon as ``python -m tvcfs.cli``, which put the working
    directory first on ``sys.path``: run from a directory holding a ``tvcfs`` package
    (a checkout of another version, or anything named so), the daemon imported that
    instead of the installed tvcfs. The child runs with ``-P`` now."""
    from tvcfs.fs.daemon import is_mounted, unmount

    shadow = tmp_path / "cwd"
    (shadow / "tvcfs").mkdir(parents=True)
    (shadow / "tvcfs" / "__init__.py").write_text("raise SystemExit('imported tvcfs from the working directory')\n")
    (shadow / "tvcfs" / "cli.py").write_text("raise SystemExit('imported tvcfs from the working directory')\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        r = run_tvcfs("mount", tmp_repo.root, mnt, cwd=shadow, ok=None, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        assert is_mounted(str(mnt)) and "branches" in os.listdir(mnt)
    finally:
        if is_mounted(str(mnt)):
            try:
                unmount(str(mnt))
            except Exception:
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
