"""Garbage collection and fsck on a real LMDB repository."""

import os
import time

from tvcfs import Repo
from tvcfs.gc import collect_garbage, fsck


def _write(d, name, data):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def test_gc_deletes_only_unreachable_blocks(tmp_path):
    repo = Repo.init(str(tmp_path / "r"))
    try:
        _write(tmp_path / "a", "keep.bin", os.urandom(3 << 20))
        keep = repo.commit_dir(str(tmp_path / "a"), message="keep")
        repo.create_branch("tmp")
        _write(tmp_path / "b", "drop.bin", os.urandom(2 << 20))
        drop = repo.commit_dir(str(tmp_path / "b"), branch="tmp", expected=keep.cid, message="drop")
        pinned = repo.add_bytes(os.urandom(100_000))
        repo.pin(pinned)
        orphan = repo.add_bytes(os.urandom(50_000))
        repo.delete_branch("tmp")

        # the deleted branch's commit is still in the reflog: kept with the default expiry
        r = collect_garbage(repo)
        assert repo.has(drop.cid) and r["deleted"] >= 1
        assert not repo.has(orphan)
        assert repo.has(pinned)

        time.sleep(1.1)  # the reflog entries age past expire_days=0 (whole seconds)
        r = collect_garbage(repo, expire_days=0)
        assert r["deleted"] >= 3 and r["deleted_bytes"] >= 2 << 20
        assert not repo.has(drop.cid)
        assert repo.has(keep.cid) and repo.has(pinned)
        assert fsck(repo) == []
        with open(tmp_path / "out.bin", "wb") as f:
            for chunk in repo.read_file("main", "keep.bin"):
                f.write(chunk)
        assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "a" / "keep.bin").read_bytes()
    finally:
        repo.close()


def test_gc_dry_run_deletes_nothing(tmp_path):
    with Repo.init(str(tmp_path / "r")) as repo:
        c = repo.add_bytes(b"x" * 1000)
        r = collect_garbage(repo, dry_run=True)
        assert r["deleted"] == 1 and repo.has(c)


def test_fsck_reports_missing_and_corrupt_blocks(tmp_path):
    with Repo.init(str(tmp_path / "r")) as repo:
        _write(tmp_path / "a", "f.bin", os.urandom(3 << 20))
        res = repo.commit_dir(str(tmp_path / "a"), message="m")
        assert fsck(repo) == []
        idx = repo.file_index(repo.entry("main", "f.bin").cid)
        with repo.store.write() as w:
            w.delete_block(idx.leaves[0])
            w.txn.put(idx.leaves[1], b"garbage", db=w.db["blocks"])
        problems = fsck(repo)
        assert any("missing block" in p for p in problems)
        assert any("corrupt block" in p for p in problems)
        assert fsck(repo, lazy_ok=True) == [p for p in problems if "corrupt" in p]
        assert res.cid
