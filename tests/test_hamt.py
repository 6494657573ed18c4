"""IPFS interop of large directories and Kubo-default CARs (issue 17, item 3).

Checked against the independent JS stack in ``tests/interop`` (``ipfs-unixfs-importer``,
``ipfs-unixfs-exporter``, ``@ipld/car``, ``@multiformats/murmur3``; installed offline by
``npm ci`` like ``tests/test_car_interop.py``):

* a directory whose node would pass 256 KiB is written HAMT-sharded exactly as the JS
  importer's ``unixfs-v1-2025`` settings write it (same CID), and the JS exporter lists
  and reads it;
* a HAMT directory made by the JS importer is listed, read, checked out, walked by
  gc/fsck/export and mounted by tvcfs;
* a CAR in Kubo's default ``ipfs add`` layout (CIDv0, dag-pb leaves) imports and reads
  byte-identically (cat, checkout, mount);
* the murmur3 hash equals the JS importer's.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from support.cli import run_tvcfs
from support.mount import Mounted
from tvcfs.dag import KIND_DIR, FileIndex, dir_links, resolve_path, walk_dag
from tvcfs.encoding.cid import DAG_PB, cid_from_str, cid_str
from tvcfs.encoding.unixfs import HAMT, build_directory, decode_pb_unixfs
from tvcfs.repo import Repo
from tvcfs.treeops import apply_changes

SHARD_THRESHOLD = 256 * 1024  # bytes: the unixfs-v1-2025 profile's HAMT threshold


def _write_tree(root, files: dict) -> None:
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)


def _read_tree(root) -> dict:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def _graft(repo: Repo, items: dict, message: str) -> bytes:
    """Commit on ``main`` a tree holding the stored DAGs ``items`` ``{name: (cid,
    tsize)}`` (as a user would after ``tvcfs import`` of a CAR whose root is a
    directory); returns the commit CID."""
    with repo.store.write() as w:
        tree, _ = apply_changes(w.get_block, w.put_block, None, items)
    return repo.commit_tree(tree, branch="main", message=message).cid


def test_murmur3_matches_the_js_importer(js, tmp_path):
    from tvcfs.encoding.hamt import murmur3_x64_64

    names = ["", "a", "hello", "model.safetensors", "é", "日本語 ファイル", "x" * 255,
             "\U0001f600.bin"] + [f"file-{i}" for i in range(200)]
    theirs = js.murmur(names, tmp_path)
    for n in names:
        # the JS hash buffer is consumed from its last byte: reversed, it is Go's
        # big-endian murmur3-x64-64, the number our trie reads from the top bits
        assert theirs[n][::-1] == murmur3_x64_64(n.encode()).to_bytes(8, "big"), n


@pytest.mark.timeout(600)
def test_large_directory_is_sharded_as_the_js_importer_does_and_js_reads_it(js, tmp_path):
    """20,000 entries: one plain node would be ~1.7 MB (Kubo refuses blocks over
    1 MiB, and shards above 256 KiB). tvcfs writes the same HAMT as the JS importer
    with the unixfs-v1-2025 threshold, every block under the threshold, and the JS
    exporter lists and reads every file."""
    src = tmp_path / "big"
    files = {f"file-{i:05d}.txt": f"content {i}\n".encode() for i in range(20_000)}
    _write_tree(src, files)
    repo = tmp_path / "repo"
    run_tvcfs("init", repo)
    run_tvcfs("commit", src, "-m", "big", cwd=repo)
    with Repo.open(str(repo)) as r:
        tree = r.tree_of("main")
        blocks = dict(walk_dag(r.get, tree))
        _, u = decode_pb_unixfs(blocks[tree])
        assert u.type == HAMT and u.fanout == 256 and u.hash_type == 0x22
        assert max(len(b) for b in blocks.values()) <= SHARD_THRESHOLD
        assert sum(1 for c in blocks if c[1] == DAG_PB) > 1  # root shard + sub-shards
    made = js.reimport(src, shard_threshold=SHARD_THRESHOLD)
    assert made["root"] == cid_str(tree)  # the same trie, bitfields and Tsizes
    car = tmp_path / "big.car"
    run_tvcfs("export", "main", car, cwd=repo)
    rep = js.car_check(car, path="file-12345.txt", out=tmp_path / "one")
    assert rep["ok"], rep["errors"][:10]
    assert rep["unreachable_blocks"] == 0
    listed = {f["path"]: f for f in rep["files"]}
    assert set(listed) == set(files)
    for name in ("file-00000.txt", "file-19999.txt", "file-07777.txt"):
        assert listed[name]["sha256"] == hashlib.sha256(files[name]).hexdigest()
    assert (tmp_path / "one").read_bytes() == files["file-12345.txt"]
    # ours, through the HAMT reader: ls, cat (hash-path lookup), checkout
    out = run_tvcfs("ls", "main", cwd=repo).stdout.decode().splitlines()
    assert len(out) == 20_000 and out[0].endswith("file-00000.txt")
    assert run_tvcfs("cat", "main:file-04321.txt", cwd=repo).stdout == files["file-04321.txt"]
    run_tvcfs("checkout", "main", tmp_path / "co", cwd=repo)
    assert _read_tree(tmp_path / "co") == files


def test_shard_threshold_boundary_equals_the_js_importer(js, tmp_path):
    """A directory node of exactly 256 KiB stays one node; one byte more and it is
    sharded — the JS importer ('block-bytes' estimation, strictly greater) agrees."""
    from tvcfs.encoding.hamt import build_directory_dag

    def size(names):
        return len(build_directory([(k, _raw_cid(v), len(v)) for k, v in names.items()])[2])

    base: dict = {}
    while size(base) <= SHARD_THRESHOLD - 200:
        for _ in range(100):
            base[f"entry-{len(base):05d}"] = str(len(base)).encode()
    while size(base) > SHARD_THRESHOLD - 100:
        base.pop(max(base))
    # one more entry named "z" * n: find the n that makes the node exactly 256 KiB
    n = next(n for n in range(1, 200) if size({**base, "z" * n: b"z"}) == SHARD_THRESHOLD)
    for extra, want_hamt in ((0, False), (1, True)):
        names = {**base, "z" * (n + extra): b"z"}
        assert size(names) == SHARD_THRESHOLD + extra
        cid, _, blocks = build_directory_dag([(k, _raw_cid(v), len(v)) for k, v in names.items()])
        assert (len(blocks) > 1) == want_hamt
        src = tmp_path / f"d{extra}"
        _write_tree(src, names)
        assert js.reimport(src, shard_threshold=SHARD_THRESHOLD)["root"] == cid_str(cid)


def _raw_cid(data: bytes) -> bytes:
    from tvcfs.encoding.cid import RAW, make_cid

    return make_cid(RAW, data)


@pytest.fixture
def js_hamt(js, tmp_path):
    """A tree imported by the JS importer with a small shard threshold (so every
    directory of it is a HAMT, one nested in another), exported as a CAR."""
    src = tmp_path / "src"
    files = {f"f{i:03d}.bin": os.urandom(i * 37 % 3000) for i in range(300)}
    files.update({f"sub/g{i}.txt": f"g{i}\n".encode() for i in range(120)})
    files["sub/deeper/x.bin"] = os.urandom(2_500_000)  # several leaves
    _write_tree(src, files)
    car = tmp_path / "js.car"
    made = js.reimport(src, shard_threshold=1000, car_out=car)
    return {"src": src, "files": files, "car": car, "root": made["root"], "js": js}


@pytest.mark.timeout(300)
def test_hamt_from_js_is_listed_read_checked_out_walked_and_mounted(js_hamt, tmp_path):
    files = js_hamt["files"]
    repo = tmp_path / "repo"
    run_tvcfs("init", repo)
    run_tvcfs("import", js_hamt["car"], cwd=repo)
    root = cid_from_str(js_hamt["root"])
    with Repo.open(str(repo)) as r:
        _, u = decode_pb_unixfs(r.get(root))
        assert u.type == HAMT
        e = resolve_path(r.get, root, "sub")
        assert e.kind == KIND_DIR and decode_pb_unixfs(r.get(e.cid))[1].type == HAMT
        assert sorted(link.name for link in dir_links(r.get, root)) == sorted(
            {p.split("/")[0] for p in files})
        _graft(r, {"shard": (root, 0)}, "js hamt")
    ls = run_tvcfs("ls", "main:shard", cwd=repo).stdout.decode().split()
    assert "f299.bin" in ls and "sub/" in ls and len(ls) == 4 * 301
    assert run_tvcfs("cat", "main:shard/sub/g7.txt", cwd=repo).stdout == b"g7\n"
    assert run_tvcfs("cat", "main:shard/sub/deeper/x.bin", cwd=repo).stdout == files["sub/deeper/x.bin"]
    rec = run_tvcfs("ls", "-r", "main:shard", cwd=repo).stdout.decode()
    assert "sub/deeper/x.bin" in rec and "sub/g119.txt" in rec
    # gc keeps every shard (it follows the DAG links), fsck finds the DAG complete
    run_tvcfs("gc", cwd=repo)
    assert "ok" in run_tvcfs("fsck", cwd=repo).stdout.decode()
    run_tvcfs("checkout", "main:shard", tmp_path / "co", cwd=repo)
    assert _read_tree(tmp_path / "co") == files
    # export of the grafted sub-tree carries every shard: JS reads it back
    car = tmp_path / "again.car"
    run_tvcfs("export", "main:shard", car, cwd=repo)
    rep = js_hamt["js"].car_check(car)
    assert rep["ok"], rep["errors"][:10]
    assert {f["path"] for f in rep["files"]} == set(files)
    with Mounted(repo, tmp_path / "mnt") as m:
        d = m.branch("main", "shard")
        assert sorted(os.listdir(d)) == sorted({p.split("/")[0] for p in files})
        assert sorted(os.listdir(os.path.join(d, "sub"))) == sorted(
            {p.split("/")[1] for p in files if p.startswith("sub/")})
        for rel in ("f123.bin", "sub/g5.txt", "sub/deeper/x.bin"):
            with open(os.path.join(d, rel), "rb") as f:
                assert f.read() == files[rel], rel


@pytest.mark.timeout(300)
def test_kubo_default_car_cidv0_dag_pb_leaves_imports_and_reads(js, tmp_path):
    """``ipfs add`` without options: CIDv0 everywhere (roots, sections, links) and
    file leaves that are dag-pb UnixFS nodes holding the data, 256 KiB chunks, 174
    links per node. Used to fail with "unsupported CID" and abort the import."""
    src = tmp_path / "src"
    files = {
        "model.bin": os.urandom(3 * (1 << 20) + 4321),   # 13 leaves under one node
        "small.txt": b"hello\n",                          # one dag-pb node with the data
        "empty": b"",
        "sub/mid.bin": os.urandom(300_000),
    }
    _write_tree(src, files)
    car = tmp_path / "v0.car"
    made = js.reimport(src, chunk_size=262144, max_children=174, cid_version=0, raw_leaves=False, car_out=car)
    assert made["root"].startswith("Qm")
    repo = tmp_path / "repo"
    run_tvcfs("init", repo)
    out = run_tvcfs("import", car, cwd=repo).stdout.decode()
    root = cid_from_str(made["root"])  # the CIDv1 dag-pb equal of the Qm… root
    assert cid_str(root) in out
    big = next(e["cid"] for e in made["entries"] if e["path"] == "model.bin")
    assert run_tvcfs("cat", big, cwd=repo).stdout == files["model.bin"]
    with Repo.open(str(repo)) as r:
        _graft(r, {"ipfs": (root, 0)}, "kubo default")
        # the leaves are dag-pb nodes: indexed (13 of them) without holding their data
        idx = FileIndex.build(r.get, cid_from_str(big))
        assert len(idx.leaves) == 13 and all(idx.leaves[i][1] == DAG_PB for i in range(13))
        assert set(idx.inline) == set(range(13)) and set(idx.inline.values()) == {None}
    for rel, data in files.items():
        assert run_tvcfs("cat", f"main:ipfs/{rel}", cwd=repo).stdout == data, rel
    run_tvcfs("checkout", "main:ipfs", tmp_path / "co", cwd=repo)
    assert _read_tree(tmp_path / "co") == files
    assert "ok" in run_tvcfs("fsck", cwd=repo).stdout.decode()
    with Mounted(repo, tmp_path / "mnt") as m:
        d = m.branch("main", "ipfs")
        for rel, data in files.items():
            assert os.path.getsize(os.path.join(d, rel)) == len(data), rel
            with open(os.path.join(d, rel), "rb") as f:
                assert f.read() == data, rel
        with open(os.path.join(d, "model.bin"), "rb") as f:  # a read across dag-pb leaves
            f.seek(262144 - 10)
            assert f.read(300_000) == files["model.bin"][262144 - 10: 262144 - 10 + 300_000]


def test_path_request_into_a_sharded_directory_carries_the_shards(tmp_repo):
    """The transport's path selection (a peer asking for ``dir/name``) sends the HAMT
    shards on the way, so the asking side can resolve the path from what it got."""
    from tvcfs.encoding.hamt import build_directory_dag
    from tvcfs.encoding.cid import RAW, make_cid
    from tvcfs.transport import protocol as P
    from tvcfs.transport.backend import RepoBackend
    from tvcfs.transport.server import iter_selection

    with tmp_repo.store.write() as w:
        entries = []
        for i in range(2000):
            data = f"{i}\n".encode()
            w.put_block(make_cid(RAW, data), data)
            entries.append((f"n{i}", make_cid(RAW, data), len(data)))
        d, dsize, blocks = build_directory_dag(entries, threshold=1000)
        assert len(blocks) > 2
        for c, b in blocks:
            w.put_block(c, b)
        tree, _ = apply_changes(w.get_block, w.put_block, None, {"d": (d, dsize)})
    commit = tmp_repo.commit_tree(tree, branch="main", message="hamt").cid
    got = dict(iter_selection(RepoBackend(tmp_repo), P.DagRequest(1, commit, P.Selector(P.SEL_PATH, "d/n1234"))))
    e = resolve_path(got.__getitem__, tree, "d/n1234")
    assert got[e.cid] == b"1234\n"
    assert len(got) < len(blocks)  # the shards on the path, not the whole directory
