"""CLI commands that talk to a live mount: stats, prefetch, status of a branch."""

import json
import os
import subprocess
import sys

import pytest

from tvcfs import Repo
from tvcfs.fs import mount

pytestmark = pytest.mark.timeout(120)


def tvcfs(*args, check=True):
    return subprocess.run([sys.executable, "-m", "tvcfs.cli", *args], capture_output=True, text=True,
                          check=check, timeout=60)


def test_stats_prefetch_and_status_of_a_mount(tmp_path, real_model_dir):
    root = str(tmp_path / "repo")
    with Repo.init(root) as repo:
        repo.commit_dir(real_model_dir, message="model")
    mnt = str(tmp_path / "mnt")
    with mount(root, mnt):
        before = json.loads(tvcfs("stats", mnt, "--json").stdout)
        assert before["bytes_served"] == 0 and before["prefetch_bytes"] == 0

        out = tvcfs("prefetch", os.path.join(mnt, "branches", "main"))
        assert "scheduled" in out.stdout
        after = json.loads(tvcfs("stats", mnt, "--json").stdout)
        size = os.path.getsize(os.path.join(real_model_dir, "model.safetensors"))
        assert after["prefetch_bytes"] >= size  # every leaf of the tree was scheduled

        with open(os.path.join(mnt, "branches", "main", "config.json"), "rb") as f:
            data = f.read()
        with open(os.path.join(real_model_dir, "config.json"), "rb") as f:
            assert data == f.read()
        served = json.loads(tvcfs("stats", mnt, "--json").stdout)["bytes_served"]
        assert served >= len(data)

        st = tvcfs("status", os.path.join(mnt, "branches", "main")).stdout
        assert "main:" in st and "No staged changes" in st

        bad = tvcfs("stats", str(tmp_path), check=False)
        assert bad.returncode != 0 and "not a tvcfs mount" in bad.stderr and "Traceback" not in bad.stderr
        bad = tvcfs("prefetch", str(tmp_path), check=False)
        assert bad.returncode != 0 and "not inside a tvcfs mount" in bad.stderr
