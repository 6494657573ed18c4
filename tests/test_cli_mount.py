"""CLI commands that talk to a live mount: stats, prefetch, status of a branch."""

import json
import os

import pytest

from support.cli import run_tvcfs_text
from support.mount import Mounted
from tvcfs import Repo

pytestmark = pytest.mark.timeout(120)


def test_stats_prefetch_and_status_of_a_mount(tmp_path, real_model_dir):
    root = str(tmp_path / "repo")
    with Repo.init(root) as repo:
        repo.commit_dir(real_model_dir, message="model")
    mnt = str(tmp_path / "mnt")
    with Mounted(root, mnt, commit_delay=None):
        before = json.loads(run_tvcfs_text("stats", mnt, "--json").stdout)
        assert before["bytes_served"] == 0 and before["prefetch_bytes"] == 0

        out = run_tvcfs_text("prefetch", os.path.join(mnt, "branches", "main"))
        assert "scheduled" in out.stdout
        after = json.loads(run_tvcfs_text("stats", mnt, "--json").stdout)
        size = os.path.getsize(os.path.join(real_model_dir, "model.safetensors"))
        assert after["prefetch_bytes"] >= size  # every leaf of the tree was scheduled

        with open(os.path.join(mnt, "branches", "main", "config.json"), "rb") as f:
            data = f.read()
        with open(os.path.join(real_model_dir, "config.json"), "rb") as f:
            assert data == f.read()
        served = json.loads(run_tvcfs_text("stats", mnt, "--json").stdout)["bytes_served"]
        assert served >= len(data)

        st = run_tvcfs_text("status", os.path.join(mnt, "branches", "main")).stdout
        assert "main:" in st and "No staged changes" in st

        bad = run_tvcfs_text("stats", str(tmp_path), ok=None)
        assert bad.returncode != 0 and "not a tvcfs mount" in bad.stderr and "Traceback" not in bad.stderr
        bad = run_tvcfs_text("prefetch", str(tmp_path), ok=None)
        assert bad.returncode != 0 and "not inside a tvcfs mount" in bad.stderr


def test_mount_api_the_commands_call(tmp_path, real_model_dir):
    """``tvcfs prefetch``, ``stats`` and ``status MOUNT/branches/NAME`` are thin over
    :mod:`tvcfs.fs.daemon`: the same functions, called directly."""
    from tvcfs.errors import TvcfsError
    from tvcfs.fs.daemon import branch_in_mount, mount_stats, prefetch

    root = str(tmp_path / "repo")
    with Repo.init(root) as repo:
        repo.commit_dir(real_model_dir, message="model")
    mnt = str(tmp_path / "mnt")
    with Mounted(root, mnt, commit_delay=None):
        tree = os.path.join(mnt, "branches", "main")
        assert branch_in_mount(os.path.join(tree, "config.json")) == (os.path.realpath(root), "main")
        assert branch_in_mount(os.path.join(mnt, "tags")) == (os.path.realpath(root), None)
        assert branch_in_mount(str(tmp_path)) is None
        size = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(real_model_dir)
                   for n in names if not os.path.islink(os.path.join(d, n)))
        assert prefetch(tree, wait=True) == size
        stats = mount_stats(mnt)
        assert stats["prefetch_bytes"] >= os.path.getsize(os.path.join(real_model_dir, "model.safetensors"))
        assert stats["bytes_served"] >= size
        with pytest.raises(TvcfsError, match="not inside a tvcfs mount"):
            prefetch(str(tmp_path))
        with pytest.raises(TvcfsError, match="not a tvcfs mount"):
            mount_stats(str(tmp_path))
