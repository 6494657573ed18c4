"""CAR exports read by an independent IPFS implementation (issue 2, "What must be shown").

The JS stack in ``tests/interop`` (``@ipld/car``, ``@ipld/dag-pb``, ``@ipld/dag-cbor``,
``ipfs-unixfs-exporter``, ``ipfs-unixfs-importer``; offline, in-memory blockstore)
reads what ``tvcfs export`` writes: every block is re-hashed and re-encoded
canonically (so every CID, the roots included, is recomputed by JS and must equal
ours), the strict structural checks of docs/format.md run, and files are exported
through ``/ipfs/<commit>/tree/<path>`` and compared byte for byte. The npm packages
are installed by the test on first use (``npm ci``); without Node.js the tests skip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys

import pytest

from support.cli import run_tvcfs
from support.model import make_finetune
from support.trees import tree_bytes
from tvcfs.encoding.cid import RAW, cid_str, make_cid
from tvcfs.encoding.unixfs import MAX_LINKS, build_file
from tvcfs.repo import Repo

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "interop"))
import jsharness  # noqa: E402

pytestmark = pytest.mark.skipif(not jsharness.node_available(),
                                reason="Node.js >= 20 with npm is not installed: the JS IPFS interop checks need it")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, real_model_dir):
    """The real model committed with the CLI (then a fine-tune on top), the base
    commit exported as a CAR with ``tvcfs export``."""
    base = tmp_path_factory.mktemp("interop")
    repo = base / "repo"
    run_tvcfs("init", repo)
    run_tvcfs("commit", real_model_dir, "-m", "base", cwd=repo)
    make_finetune(real_model_dir, str(base / "ft"))
    run_tvcfs("commit", base / "ft", "-m", "fine-tune", cwd=repo)
    car = base / "model.car"
    run_tvcfs("export", "main~1", car, cwd=repo)
    car_ft = base / "ft.car"
    run_tvcfs("export", "main", car_ft, "--history", cwd=repo)
    with Repo.open(str(repo)) as r:
        ours = {
            "commit": r.resolve("main~1"),
            "tree": r.tree_of("main~1"),
            "files": {p: e.cid for p, e in r.walk("main~1") if e.kind == "file"},
            "ft_commit": r.resolve("main"),
            "ft_files": {p: e.cid for p, e in r.walk("main") if e.kind == "file"},
        }
    return {"base": base, "repo": repo, "car": car, "car_ft": car_ft, "ours": ours}


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_js_reads_the_real_model_commit(js, exported, real_model_dir):
    rep = js.car_check(exported["car"])
    assert rep["ok"], rep["errors"][:10]
    assert rep["warnings"] == [], rep["warnings"][:5]
    ours = exported["ours"]
    # the roots JS recomputed from the bytes (hash + canonical re-encoding) are ours
    assert rep["roots"] == [cid_str(ours["commit"])]
    assert rep["root"]["codec"] == "dag-cbor" and rep["root"]["tree"] == cid_str(ours["tree"])
    assert rep["root"]["commit"]["message"] == "base"
    assert rep["unreachable_blocks"] == 0
    # every file: same CID, same size and same bytes as the original directory
    src = tree_bytes(real_model_dir)
    files = {f["path"]: f for f in rep["files"]}
    assert set(files) == set(src)
    for rel, data in src.items():
        assert files[rel]["cid"] == cid_str(ours["files"][rel]), rel
        assert files[rel]["size"] == len(data), rel
        assert files[rel]["sha256"] == hashlib.sha256(data).hexdigest(), rel


@pytest.mark.parametrize("rel", ["model.safetensors", "config.json", "1_Pooling/config.json"])
def test_js_exports_a_path_byte_identically(js, exported, real_model_dir, tmp_path, rel):
    out = tmp_path / "out.bin"
    rep = js.car_check(exported["car"], path=rel, out=out, content=False)
    assert rep["ok"], rep["errors"][:10]
    exp = rep["export"]
    assert exp["ipfs_path"] == f"/ipfs/{cid_str(exported['ours']['commit'])}/tree/{rel}"
    assert exp["cid"] == cid_str(exported["ours"]["files"][rel])
    with open(os.path.join(real_model_dir, rel), "rb") as f:
        assert out.read_bytes() == f.read()


def test_js_reads_the_fine_tune_with_history(js, exported, tmp_path):
    rep = js.car_check(exported["car_ft"], path="model.safetensors", out=tmp_path / "m")
    assert rep["ok"], rep["errors"][:10]
    assert rep["roots"] == [cid_str(exported["ours"]["ft_commit"])]
    assert rep["root"]["commit"]["parents"] and rep["codecs"]["dag-cbor"] == 2
    assert sha256_file(tmp_path / "m") == sha256_file(exported["base"] / "ft" / "model.safetensors")
    assert rep["export"]["cid"] == cid_str(exported["ours"]["ft_files"]["model.safetensors"])


def test_single_leaf_file_and_small_directory_cids_equal_the_js_importer(js, real_model_dir, tmp_path, tmp_repo):
    # a single-leaf file is its raw leaf: the same CID as `ipfs add --cid-version=1 --raw-leaves`
    cfg = os.path.join(real_model_dir, "config.json")
    with open(cfg, "rb") as f:
        ours = tmp_repo.add_bytes(f.read())
    assert cid_str(ours) == js.reimport(cfg)["root"]
    # a directory of small files: same directory node (names sorted by bytes, Tsize)
    d = tmp_path / "small"
    shutil.copytree(os.path.join(real_model_dir, "1_Pooling"), d / "1_Pooling")
    for name in ("config.json", "modules.json", "special_tokens_map.json", "sentence_bert_config.json"):
        shutil.copy(os.path.join(real_model_dir, name), d / name)
    (d / "name with spaces é.txt").write_bytes(b"hello\n")
    (d / "empty").write_bytes(b"")
    res = tmp_repo.commit_dir(str(d))
    made = js.reimport(d)
    assert made["root"] == cid_str(res.tree)
    theirs = {e["path"]: e["cid"] for e in made["entries"]}
    for p, e in tmp_repo.walk("main"):
        assert theirs[p] == cid_str(e.cid), p


@pytest.mark.parametrize("n_leaves", [MAX_LINKS + 1, 400])
def test_balanced_layout_equals_the_js_importer(js, tmp_path, n_leaves):
    """Over 174 leaves the file is a two-level balanced tree: with the same leaf
    boundaries (fixed 1 KiB here) and 174 links per node, our root equals the JS
    importer's, intermediate nodes included."""
    size = n_leaves * 1024 - 100
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    leaves = [(make_cid(RAW, data[o:o + 1024]), len(data[o:o + 1024])) for o in range(0, size, 1024)]
    root, tsize, blocks = build_file(leaves)
    made = js.reimport(path, chunk_size=1024, max_children=MAX_LINKS, car_out=tmp_path / "js.car")
    assert made["root"] == cid_str(root)
    assert made["entries"][-1]["cumulative_size"] == tsize
    assert made["blocks"] == len(leaves) + len(blocks)
