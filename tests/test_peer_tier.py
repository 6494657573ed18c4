"""Peers as a tier of the block layer (tvcfs/store/peers.py): a lazy clone's readers
outside the mount — cat, checkout, diff — fetch missing leaves from its peers through
Repo.blocks, verified and written back; with every peer down they fail with one line
naming the peer, and work again when it returns."""

from __future__ import annotations

import json
import os
import shutil

from support.trees import assert_same_tree
from support.cli import run_tvcfs, run_tvcfs_text as run
from support.server import Server
from tvcfs.repo import Repo


def cat_bytes(repo, spec) -> bytes:
    return run_tvcfs("-C", str(repo), "cat", spec, timeout=120).stdout


def test_lazy_clone_reads_through_the_peer_tier(tmp_path, real_model_dir, finetune):
    src = tmp_path / "src"
    run("init", str(src))
    run("-C", str(src), "commit", real_model_dir, "-m", "model")
    ft = finetune(tmp_path / "ft")
    run("-C", str(src), "commit", ft.path.rsplit("/", 1)[0], "-b", "ft", "-m", "fine-tune")
    key = str(tmp_path / "server.key")
    srv = Server(str(src), key=key)
    try:
        dst = tmp_path / "lazy"
        run("clone", "--lazy", srv.url, str(dst))
        with Repo.open(str(dst)) as r:
            leaves_before = sum(1 for c in r.store if c[1] == 0x55)
        # a file's bytes come from the peer, byte-identical
        with open(os.path.join(real_model_dir, "config.json"), "rb") as f:
            assert cat_bytes(dst, "HEAD:config.json") == f.read()
        # a whole checkout of the model, every leaf fetched, verified and kept
        run("-C", str(dst), "checkout", "HEAD", str(tmp_path / "out"))
        assert_same_tree(real_model_dir, str(tmp_path / "out"))
        with Repo.open(str(dst)) as r:
            leaves_after = sum(1 for c in r.store if c[1] == 0x55)
        assert leaves_after > leaves_before
        # a tensor-level diff reads the fine-tune's changed tensors through the peer tier
        run("-C", str(dst), "fetch")
        d = run("-C", str(dst), "diff", "main", "origin/ft", "--json").stdout
        changed = {t["name"] for f in json.loads(d)["files"] for t in f.get("tensors", [])
                   if t.get("status") == "modified"}
        assert set(ft.changed) <= changed, d[:2000]
        # every peer down: one line naming it, non-zero exit, nothing written
        srv.kill()
        run("-C", str(src), "commit", real_model_dir, "-m", "again", "--allow-empty")
        dst2 = tmp_path / "lazy2"
        srv = Server(str(src), key=key)
        run("clone", "--lazy", srv.url, str(dst2))
        port = srv.port
        srv.kill()
        r = run("-C", str(dst2), "cat", "HEAD:model.safetensors", ok=False, timeout=120)
        err = r.stderr
        assert r.returncode != 0
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("tvcfs: error:"), err
        assert f"127.0.0.1:{port}" in err and "Traceback" not in err
        # the peer returns on the same port and key: reads work again
        srv = Server(str(src), key=key, port=port)
        with open(os.path.join(real_model_dir, "model.safetensors"), "rb") as f:
            assert cat_bytes(dst2, "HEAD:model.safetensors") == f.read()
    finally:
        srv.kill()
        shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_a_leaf_written_back_from_a_peer_is_not_checked_again_in_this_process(tmp_path):
    """A leaf read through the peer tier was hashed against its CID by the router before
    it was written back into the local store, and is stored as verified: reading it
    again from the local store in the same process makes no at-rest check
    (``LMDBStore.read_checks``; before: one xxh3 and a checksum lookup)."""
    from support.repo import commit_dir

    from tvcfs.encoding.cid import RAW, cid_codec

    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / "w.bin").write_bytes(os.urandom(3 << 20))
    src = str(tmp_path / "src")
    commit_dir(src, str(wt))
    with Server(src) as srv:
        dst = tmp_path / "lazy"
        run("clone", "--lazy", srv.url, str(dst))
        with Repo.open(str(dst)) as r:
            leaves = [lf for lf in r.file_index(r.entry(r.head(), "w.bin").cid).leaves
                      if cid_codec(lf) == RAW]
            assert leaves and not any(r.store.has(lf) for lf in leaves)
            data = r.get(leaves[0])  # from the peer, verified, written back
            assert r.store.has(leaves[0])
            checks = r.store.read_checks
            assert r.store.get(leaves[0]) == data
            assert r.store.read_checks == checks
