"""The block layer above the stores: the router's fallback, write-back, timeouts and
verification; the backend registry and its environment selection; the module-level
block API on the real model."""

from __future__ import annotations

import os
import threading

import pytest

import tvcfs
from conftest import assert_same_tree
from tvcfs.encoding.cid import CID, RAW, make_cid
from tvcfs.errors import BlockNotFound, BlockUnavailable
from tvcfs.gc import collect_garbage
from tvcfs.store import REMOTE, StoreBase, UnknownBackend, get_backend, register_backend, set_default_backend
from tvcfs.store.memory import MemoryStore
from tvcfs.store.router import Router, Tier


def blk(i: int, size: int = 64):
    data = bytes([i % 256]) * size
    return make_cid(RAW, data), data


class DownStore(StoreBase):
    """A real store whose every call fails as an unreachable remote would."""

    capabilities = frozenset({REMOTE})

    def __init__(self, exc=None):
        self.exc = exc or BlockUnavailable("peer 127.0.0.1:9 unreachable")
        self.calls = 0

    def get(self, cid):
        self.calls += 1
        raise self.exc

    def has(self, cid):
        raise self.exc

    def put(self, cid, block):
        raise self.exc

    def delete(self, cid):
        return False

    def __iter__(self):
        return iter(())

    def stat(self):
        return {"blocks": 0, "bytes": 0}


class SlowStore(MemoryStore):
    capabilities = frozenset({REMOTE})

    def __init__(self, release: threading.Event):
        super().__init__("slow")
        self.release = release

    def get(self, cid):
        self.release.wait(10)
        return super().get(cid)


def test_fallback_past_a_failing_tier_and_write_back():
    local, far = MemoryStore(), MemoryStore()
    cid, data = blk(1)
    far.put(cid, data)
    down = DownStore(OSError("connection refused"))
    r = Router([Tier("local", local), Tier("down", down), Tier("far", far, writable=False, trusted=False)])
    assert r.get(cid) == data
    assert local.get(cid) == data  # written back
    st = r.stats()
    assert st["down"]["unavailable"] == 1 and "refused" in st["down"]["last_error"]
    assert st["far"]["hits"] == 1 and st["far"]["written_back"] == 1
    assert st["local"]["misses"] == 1
    # second read is local: the failing tier is not asked again
    assert r.get(cid) == data
    assert down.calls == 1 and r.stats()["local"]["hits"] == 1


def test_write_back_off():
    local, far = MemoryStore(), MemoryStore()
    cid, data = blk(2)
    far.put(cid, data)
    r = Router([Tier("local", local), Tier("far", far, writable=False)], write_back=False)
    assert r.get(cid) == data
    assert not local.has(cid)


def test_not_found_versus_unavailable():
    cid, _ = blk(3)
    r = Router([Tier("local", MemoryStore()), Tier("far", MemoryStore(), writable=False)])
    assert r.get(cid) is None  # every tier answered: not found
    r2 = Router([Tier("local", MemoryStore()), Tier("down", DownStore())])
    with pytest.raises(BlockUnavailable, match="unreachable"):
        r2.get(cid)  # cannot say it does not exist
    with pytest.raises(BlockUnavailable):
        list(r2.get_many([cid]))


def test_corrupt_block_from_untrusted_tier_is_rejected():
    cid, data = blk(4)
    far = MemoryStore()
    far.put(cid, b"x" + data[1:])  # wrong bytes under the CID
    local = MemoryStore()
    r = Router([Tier("local", local), Tier("far", far, writable=False, trusted=False)])
    with pytest.raises(BlockUnavailable, match="does not hash"):
        r.get(cid)
    assert not local.has(cid)
    assert r.stats()["far"]["corrupt"] == 1
    with pytest.raises(BlockUnavailable):
        list(r.get_many([cid]))
    assert not local.has(cid)


def test_tier_timeout_falls_back():
    cid, data = blk(5)
    release = threading.Event()
    slow = SlowStore(release)
    slow.put(cid, data)
    backup = MemoryStore()
    backup.put(cid, data)
    r = Router([Tier("local", MemoryStore()), Tier("slow", slow, timeout=0.2),
                Tier("backup", backup, writable=False)])
    try:
        assert r.get(cid) == data
        assert r.stats()["slow"]["unavailable"] == 1
        assert "0.2 s" in r.stats()["slow"]["last_error"]
        assert r.stats()["backup"]["hits"] == 1
    finally:
        release.set()
        r.close()


def test_get_many_batches_per_tier():
    local, far = MemoryStore(), MemoryStore()
    items = [blk(i) for i in range(10)]
    local.put_many(items[:4])
    far.put_many(items[4:8])
    r = Router([Tier("local", local), Tier("far", far, writable=False, trusted=False)])
    got = dict(r.get_many([c for c, _ in items]))
    for c, d in items[:8]:
        assert got[c] == d
    for c, _ in items[8:]:
        assert got[c] is None
    assert r.stats()["far"]["hits"] == 4 and local.stat()["blocks"] == 8


def test_registry_and_environment(monkeypatch, tmp_path):
    made = []

    def factory(repo=None, **opts):
        s = MemoryStore("custom")
        made.append((repo, opts))
        return s

    register_backend("test-custom", factory)
    with pytest.raises(ValueError):
        register_backend("test-custom", factory)
    register_backend("test-custom", factory, replace=True)
    monkeypatch.delenv("TVCFS_BACKEND", raising=False)
    monkeypatch.delenv("TVCFS_BACKENDS", raising=False)
    assert isinstance(get_backend("test-custom", level=3), MemoryStore)
    assert made[-1] == (None, {"level": 3})
    with pytest.raises(UnknownBackend, match="nope"):
        get_backend("nope")
    monkeypatch.setenv("TVCFS_BACKEND", "memory")
    assert isinstance(get_backend(), MemoryStore)
    monkeypatch.delenv("TVCFS_BACKEND")
    monkeypatch.setenv("TVCFS_BACKENDS", "memory,test-custom")
    r = get_backend()
    assert isinstance(r, Router) and [t.name for t in r.tiers] == ["memory", "test-custom"]
    monkeypatch.delenv("TVCFS_BACKENDS")
    try:
        set_default_backend("memory")
        assert isinstance(get_backend(), MemoryStore)
        with pytest.raises(UnknownBackend):
            set_default_backend("nope")
    finally:
        set_default_backend(None)
    s = get_backend(path=str(tmp_path / "s"))  # lmdb by default
    try:
        assert "persistent" in s.capabilities
    finally:
        s.close()


def test_repo_reads_fall_back_to_configured_backend(tmp_repo, monkeypatch):
    far = MemoryStore()
    cid, data = blk(9, 5000)
    far.put(cid, data)
    register_backend("test-far", lambda repo=None, **_: far, replace=True)
    monkeypatch.setenv("TVCFS_BACKENDS", "lmdb,test-far")
    tmp_repo._blocks = None
    assert not tmp_repo.has(cid)
    assert tmp_repo.block_get(cid) == data
    assert tmp_repo.store.get(cid) == data  # written back into the repository's LMDB
    assert tmp_repo.blocks.stats()["test-far"]["hits"] == 1


def test_module_api_on_the_real_model(tmp_repo, real_model_dir, tmp_path):
    tvcfs.use_repo(tmp_repo)
    try:
        root = tvcfs.add_path(real_model_dir)
        assert isinstance(root, CID) and str(root).startswith("bafy")
        out = tmp_path / "out"
        tvcfs.get_to_path(str(root), str(out))
        assert_same_tree(real_model_dir, str(out))
        cfg = os.path.join(real_model_dir, "config.json")
        with open(cfg, "rb") as f:
            body = f.read()
        fcid = tvcfs.add_bytes(body, pin=False)
        assert tvcfs.cat(fcid) == body and tvcfs.cat(str(fcid)) == body
        b = tvcfs.block_put(b"hello block")
        assert str(b).startswith("bafk") and tvcfs.block_get(b) == b"hello block"
        with pytest.raises(ValueError):
            tvcfs.block_put(b"x", codec="nope")
        # pinned DAGs survive gc; unpinning lets gc drop them
        collect_garbage(tmp_repo, expire_days=0)
        assert tvcfs.cat(fcid) == body  # config.json's leaf is also inside the pinned tree
        assert tmp_repo.has(root)
        assert tvcfs.unpin(root) is True
        tvcfs.unpin(b)
        collect_garbage(tmp_repo, expire_days=0)
        assert not tmp_repo.has(root)
        with pytest.raises(BlockNotFound):
            tvcfs.block_get(b)
    finally:
        tvcfs.use_repo(None)


def test_checkout_reads_through_backends(tmp_path, real_model_dir, monkeypatch):
    """get_to_path of a tree whose blocks are only in a backend: every block comes
    through the router (verified, written back), the files are byte-identical."""
    from tvcfs.repo import Repo

    far = MemoryStore()
    with Repo.init(str(tmp_path / "src")) as src:
        root = src.add_path(real_model_dir)
        far.put_many((c, src.store.get(c)) for c in src.store)
    register_backend("test-far2", lambda repo=None, **_: far, replace=True)
    monkeypatch.setenv("TVCFS_BACKENDS", "lmdb,test-far2")
    with Repo.init(str(tmp_path / "dst")) as dst:
        assert not dst.has(root)
        dst.get_to_path(root, str(tmp_path / "out"))
        assert_same_tree(real_model_dir, str(tmp_path / "out"))
        st = dst.blocks.stats()["test-far2"]
        assert st["hits"] == far.stat()["blocks"] - 0 or st["hits"] > 0
        assert st["written_back"] == st["hits"]
        assert dst.has(root)


def test_mount_stats_show_per_tier_counters(tmp_path, real_model_dir):
    """A mount whose repository reads through a router exports each tier's counters
    in ``.tvcfs/stats`` (what ``tvcfs stats`` prints)."""
    import json
    import subprocess
    import sys

    from tvcfs.fs import mount
    from tvcfs.repo import Repo

    with Repo.init(str(tmp_path / "r")) as r:
        r.commit_dir(real_model_dir, message="m")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, TVCFS_BACKENDS="lmdb,memory")
    with mount(str(tmp_path / "r"), str(mnt), env=env):
        with open(mnt / "branches" / "main" / "config.json", "rb") as f:
            f.read()
        stats = json.loads((mnt / ".tvcfs" / "stats").read_text())
        assert set(stats["tiers"]) == {"lmdb", "memory"}
        assert stats["tiers"]["lmdb"]["hits"] > 0 and stats["tiers"]["memory"]["hits"] == 0
        out = subprocess.run([sys.executable, "-m", "tvcfs.cli", "stats", str(mnt), "--json"],
                             capture_output=True, text=True, check=True, env=env).stdout
        assert "memory" in json.loads(out)["tiers"]
