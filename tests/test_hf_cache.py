"""The Hugging Face cache (issue 20, items 1 and 3): ``tvcfs import-hf`` of a real
cache laid out by huggingface_hub's own helpers, and the mount's ``MNT/hf/`` view
loaded by the real ``transformers`` with ``HF_HUB_CACHE=MNT/hf HF_HUB_OFFLINE=1``.
Real CLI subprocesses, real LMDB, a real FUSE mount (docs/repository.md,
"Importing the Hugging Face cache"; docs/mount.md, "The Hugging Face cache view").

The cache (``acme/minilm``), built like ``hf_hub_download`` builds it: blobs named
by sha256 (LFS files) or git-sha1, snapshots of relative symlinks to them, ref
files holding the hash, and the tree listings ``trees/HASH.json``::

    A  T0        the real all-MiniLM-L6-v2        refs/v1
    B  T0+100    a fine-tune of it (finetune)     refs/main
    C  T0+200    B with another README            refs/refs/pr/1
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from support.cli import run_tvcfs
from support.model import make_finetune
from support.trees import assert_same_tree
from support.mount import Mounted

hf = pytest.importorskip("huggingface_hub")
try:  # recent huggingface_hub keeps each commit's file listing in trees/HASH.json
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
except ImportError:  # older ones do not: written by hand below, as the newer ones do
    TreeCacheEntry = write_tree_cache = None
from huggingface_hub.file_download import (  # noqa: E402
    _cache_commit_hash_for_specific_revision, _create_symlink, repo_folder_name)
from huggingface_hub.utils.sha import git_hash  # noqa: E402

REPO_ID = "acme/minilm"
T0 = 1_700_000_000
MIB = 1 << 20


def fake_hash(label: str) -> str:
    """A 40-hex Hugging Face commit hash."""
    return hashlib.sha1(label.encode()).hexdigest()


def build_hf_cache(cache: str, repo_id: str, snapshots: list, refs: dict) -> str:
    """Lay ``snapshots`` ``[(hash, source dir, mtime)]`` out in ``cache`` as
    huggingface_hub does (blobs, relative snapshot links, ``trees/HASH.json``), and
    write ``refs`` ``{revision: hash}`` with its own helper. Returns the repository
    folder."""
    storage = os.path.join(cache, repo_folder_name(repo_id=repo_id, repo_type="model"))
    os.makedirs(os.path.join(storage, "blobs"), exist_ok=True)
    for h, src, mtime in snapshots:
        listing = {}
        for dirpath, _, files in os.walk(src):
            for f in files:
                p = os.path.join(dirpath, f)
                rel = os.path.relpath(p, src)
                with open(p, "rb") as fh:
                    data = fh.read()
                lfs = f.endswith(".safetensors") or len(data) > 10 * MIB  # LFS: blob named by sha256
                etag = hashlib.sha256(data).hexdigest() if lfs else git_hash(data)
                blob = os.path.join(storage, "blobs", etag)
                if not os.path.exists(blob):
                    shutil.copyfile(p, blob)
                dst = os.path.join(storage, "snapshots", h, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                _create_symlink(blob, dst, new_blob=False)
                info = {"size": len(data), "blob_id": git_hash(data)}
                if lfs:
                    info.update(lfs_sha256=etag, lfs_size=len(data))
                listing[rel] = info
        if write_tree_cache is not None:
            write_tree_cache(storage, h, {k: TreeCacheEntry.from_json(v) for k, v in listing.items()})
        else:  # huggingface_hub._tree_cache's format 1
            os.makedirs(os.path.join(storage, "trees"), exist_ok=True)
            with open(os.path.join(storage, "trees", f"{h}.json"), "w") as f:
                json.dump({"format_version": 1, "files": listing}, f, indent=1)
        os.utime(os.path.join(storage, "snapshots", h), (mtime, mtime))
    for rev, h in refs.items():
        _cache_commit_hash_for_specific_revision(storage, rev, h)
    return storage


class World:
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory, real_model_dir):
    """The cache above, a repository it was imported into (first import's output
    kept), and the fine-tune's directory."""
    w = World()
    base = tmp_path_factory.mktemp("hf")
    w.ft = str(base / "ft")
    make_finetune(real_model_dir, w.ft)
    w.pr = str(base / "pr")
    shutil.copytree(w.ft, w.pr)
    with open(os.path.join(w.pr, "README.md"), "a") as f:
        f.write("\nA pull request changed this README.\n")
    w.hA, w.hB, w.hC = fake_hash("A"), fake_hash("B"), fake_hash("C")
    w.cache = str(base / "cache")
    w.storage = build_hf_cache(w.cache, REPO_ID, [(w.hA, real_model_dir, T0), (w.hB, w.ft, T0 + 100),
                                                  (w.hC, w.pr, T0 + 200)],
                               {"main": w.hB, "v1": w.hA, "refs/pr/1": w.hC})
    info = hf.scan_cache_dir(w.cache)  # huggingface_hub reads it back as a sound cache
    assert not info.warnings, info.warnings
    (r,) = info.repos
    assert r.repo_id == REPO_ID and {x.commit_hash for x in r.revisions} == {w.hA, w.hB, w.hC}
    assert {x.commit_hash: set(x.refs) for x in r.revisions}[w.hC] == {"refs/pr/1"}
    w.repo = str(base / "repo")
    run_tvcfs("init", w.repo)
    w.first = run_tvcfs("--repo", w.repo, "import-hf", "--cache-dir", w.cache)
    w.base = base
    return w


def _open(path):
    from tvcfs.repo import Repo

    return Repo.open(path)


def test_import_hf_commits_every_snapshot_and_ref(world, real_model_dir, tmp_path):
    """Three snapshots → three commits (metadata: repo ID and HF hash; parents in
    main-line order, the PR on main); main, pr/1 branches and tag v1; hf.repo_id
    set; the trees are the snapshots' files (links followed), byte for byte."""
    out = world.first.stdout.decode()
    assert f"{REPO_ID}: 3 snapshots imported, 0 already imported" in out, out
    assert world.first.stderr.decode().strip() == ""  # no note per followed blob link
    with _open(world.repo) as repo:
        by_hash = {}
        for cid in repo.ancestors(repo.refs().values()):
            md = repo.read_commit(cid).metadata["hf"]
            assert md["repo_id"] == REPO_ID
            by_hash[md["commit"]] = cid
        assert set(by_hash) == {world.hA, world.hB, world.hC}
        assert repo.branches() == {"main": by_hash[world.hB], "pr/1": by_hash[world.hC]}
        assert repo.tags() == {"v1": by_hash[world.hA]}
        assert repo.read_commit(by_hash[world.hB]).parents == (by_hash[world.hA],)
        assert repo.read_commit(by_hash[world.hC]).parents == (by_hash[world.hB],)
        assert repo.read_commit(by_hash[world.hA]).parents == ()
        assert repo.read_commit(by_hash[world.hA]).timestamp == T0
    assert run_tvcfs("--repo", world.repo, "config", "hf.repo_id").stdout.decode().strip() == REPO_ID
    run_tvcfs("--repo", world.repo, "checkout", "v1", tmp_path / "v1")
    assert_same_tree(real_model_dir, str(tmp_path / "v1"))
    run_tvcfs("--repo", world.repo, "checkout", "pr/1", tmp_path / "pr")
    assert_same_tree(world.pr, str(tmp_path / "pr"))


def test_import_hf_again_adds_nothing(world):
    """A second import stores no block, makes no commit and moves no ref (nor
    writes the reflog); the same cache imported into another repository gives the
    same commits."""
    with _open(world.repo) as repo:
        refs, blocks, reflog = repo.refs(), repo.store.stat()["blocks"], repo.reflog()
    second = run_tvcfs("--repo", world.repo, "import-hf", REPO_ID, "--cache-dir", world.cache)
    assert f"{REPO_ID}: 0 snapshots imported, 3 already imported" in second.stdout.decode()
    with _open(world.repo) as repo:
        assert repo.refs() == refs and repo.store.stat()["blocks"] == blocks and repo.reflog() == reflog
    other = str(world.base / "other")
    run_tvcfs("init", other)
    run_tvcfs("--repo", other, "import-hf", "--cache-dir", world.cache, env={"TVCFS_AUTHOR_NAME": "Someone Else"})
    with _open(other) as repo:
        assert repo.refs() == refs


LOAD = r"""
import json, sys
import torch, transformers
from huggingface_hub import hf_hub_download
ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102]])
out = {}
def forward(m):
    with torch.no_grad():
        return m(input_ids=ids).last_hidden_state
for label, src, rev, ref in json.loads(sys.argv[1]):
    m = transformers.AutoModel.from_pretrained(src, revision=rev) if rev else transformers.AutoModel.from_pretrained(src)
    r = transformers.AutoModel.from_pretrained(ref)
    a, b = m.state_dict(), r.state_dict()
    out[label] = {"weights": a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),
                  "outputs": bool(torch.equal(forward(m), forward(r))),
                  "config": hf_hub_download(src, "config.json", revision=rev) if rev else None}
from huggingface_hub import snapshot_download
out["snapshot_download"] = snapshot_download(json.loads(sys.argv[1])[1][1], revision="v1")
print(json.dumps(out))
"""


@pytest.mark.ml
@pytest.mark.timeout(400)
def test_models_load_from_mount_and_hf_view(world, real_model_dir, tmp_path):
    """transformers loads branches/main from the mount, and main, the tag v1, the
    PR, a commit hash, a tvcfs CID and a branch of a commit made with tvcfs through
    ``HF_HUB_CACHE=MNT/hf HF_HUB_OFFLINE=1``, each equal to its original (weights
    and outputs); the files it opens are the mount's (no copy); snapshot_download
    of the tag gives the mount's snapshot directory."""
    run_tvcfs("--repo", world.repo, "commit", real_model_dir, "-b", "exp", "-m", "the original, by tvcfs")
    with _open(world.repo) as repo:
        from tvcfs.encoding.cid import cid_str
        from tvcfs.hf.layout import commit_id

        exp = repo.branches()["exp"]
        exp_id = commit_id(exp, repo.read_commit(exp))
        v1_cid = cid_str(repo.tags()["v1"])
    assert len(exp_id) == 40 and exp_id not in (world.hA, world.hB, world.hC)
    mnt = str(tmp_path / "mnt")
    with Mounted(world.repo, mnt, limit=380) as m:
        view = os.path.join(mnt, "hf", "models--acme--minilm")
        assert os.listdir(os.path.join(mnt, "hf")) == ["models--acme--minilm"]
        assert sorted(os.listdir(view)) == ["refs", "snapshots"]
        refs = {rev: open(os.path.join(view, "refs", rev)).read() for rev in ("main", "v1", "refs/pr/1", "exp")}
        assert refs == {"main": world.hB, "v1": world.hA, "refs/pr/1": world.hC, "exp": exp_id}
        assert sorted(os.listdir(os.path.join(view, "refs"))) == ["exp", "main", "refs", "v1"]
        assert sorted(os.listdir(os.path.join(view, "snapshots"))) == sorted([world.hA, world.hB, world.hC, exp_id])
        assert_same_tree(world.ft, os.path.join(view, "snapshots", world.hB))
        for call in (lambda: open(os.path.join(view, "refs", "main"), "w"),
                     lambda: os.mkdir(os.path.join(view, "snapshots", "x")),
                     lambda: open(os.path.join(view, "snapshots", world.hA, "new.txt"), "w")):
            with pytest.raises(OSError) as ei:
                call()
            assert ei.value.errno == errno.EROFS
        cases = [("mount-main", m.branch("main"), None, world.ft),
                 ("main", REPO_ID, "main", world.ft),
                 ("v1", REPO_ID, "v1", real_model_dir),
                 ("pr", REPO_ID, "refs/pr/1", world.pr),
                 ("hash", REPO_ID, world.hA, real_model_dir),
                 ("cid", REPO_ID, v1_cid, real_model_dir),
                 ("exp", REPO_ID, "exp", real_model_dir),
                 ("v1-is-not-main", REPO_ID, "v1", world.ft)]
        env = dict(os.environ, HF_HUB_CACHE=os.path.join(mnt, "hf"), HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
        proc = subprocess.run([sys.executable, "-c", LOAD, json.dumps(cases)], env=env, capture_output=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        got = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    expect_ids = {"main": world.hB, "v1": world.hA, "pr": world.hC, "hash": world.hA, "cid": world.hA, "exp": exp_id}
    for label, *_ in cases:
        want = label != "v1-is-not-main"
        assert got[label]["weights"] is want and got[label]["outputs"] is want, (label, got[label])
        if label in expect_ids:  # served from the mount's snapshot, not a copy
            assert got[label]["config"] == os.path.join(view, "snapshots", expect_ids[label], "config.json")
    assert got["snapshot_download"] == os.path.join(view, "snapshots", world.hA)
    assert not os.path.exists(tmp_path / "hf-home" / "hub")


def test_incomplete_and_partial_snapshots(tmp_path):
    """A snapshot with a dangling blob link is reported and not imported (exit 1),
    refs to it are not set, an interrupted download (``blobs/*.incomplete``) is
    reported; a snapshot with fewer files than its revision's listing (a partial
    download) is imported with a note. Once the blob is back and the missing file
    downloaded, importing again imports the first and re-imports the second on top
    of its commit, and moves main and the tag forward."""
    src1, src2, src3 = tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"
    for d, text in ((src1, "one"), (src2, "two"), (src3, "three")):
        (d / "sub").mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"v": text}))
        (d / "sub" / "vocab.txt").write_text(f"{text}\n" * 100)
    h1, h2, h3 = fake_hash("t1"), fake_hash("t2"), fake_hash("t3")
    cache = str(tmp_path / "cache")
    storage = build_hf_cache(cache, "acme/tiny", [(h1, str(src1), T0), (h2, str(src2), T0 + 10),
                                                  (h3, str(src3), T0 + 20)], {"main": h2, "v2": h3})
    blob = os.path.realpath(os.path.join(storage, "snapshots", h2, "config.json"))
    os.rename(blob, blob + ".away")  # h2: a dangling link
    vocab3 = os.path.join(storage, "snapshots", h3, "sub", "vocab.txt")
    vocab3_target = os.readlink(vocab3)
    os.unlink(vocab3)  # h3: listed in trees/h3.json, not downloaded
    open(os.path.join(storage, "blobs", "0123abcd.incomplete"), "wb").close()
    repo = str(tmp_path / "repo")
    run_tvcfs("init", repo)
    proc = run_tvcfs("--repo", repo, "import-hf", "--cache-dir", cache, ok=False)
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert f"snapshot {h2} is incomplete, not imported: config.json: its blob" in err, err
    assert f"snapshot {h3} holds 1 file(s) fewer" in err and "sub/vocab.txt" in err, err
    assert "0123abcd.incomplete" in err and f"refs/main points to snapshot {h2}, which is incomplete" in err, err
    assert err.strip().splitlines()[-1].startswith("tvcfs: error: 1 incomplete snapshot(s)"), err
    assert "acme/tiny: 2 snapshots imported" in proc.stdout.decode()
    with _open(repo) as r:
        old3 = r.tags()["v2"]
        assert r.read_commit(old3).metadata["hf"]["commit"] == h3
        assert [p for p, _ in r.walk("v2")] == ["config.json", "sub"]
        assert r.branches()["main"] == old3  # the newest complete snapshot: nothing unreachable

    os.rename(blob + ".away", blob)
    os.symlink(vocab3_target, vocab3)
    proc = run_tvcfs("--repo", repo, "import-hf", "acme/tiny", "--cache-dir", cache)
    assert "acme/tiny: 2 snapshots imported, 1 already imported" in proc.stdout.decode(), proc.stdout
    assert f"snapshot {h3} changed since it was imported" in proc.stderr.decode()
    with _open(repo) as r:
        new3, main = r.tags()["v2"], r.branches()["main"]
        assert r.read_commit(new3).parents == (old3,) and r.read_commit(main).parents == (new3,)
        assert r.read_commit(main).metadata["hf"]["commit"] == h2
        assert b"".join(r.read_file("main", "config.json")) == (src2 / "config.json").read_bytes()
        assert b"".join(r.read_file("v2", "sub/vocab.txt")) == (src3 / "sub" / "vocab.txt").read_bytes()


def test_truncated_or_damaged_blob_and_ref_to_a_missing_snapshot(tmp_path):
    """A blob that does not hash to its name (a truncated config: git blob sha-1; a
    safetensors file with one flipped byte: sha-256) makes its snapshot incomplete:
    not imported, never a commit of the wrong bytes; a ref naming a snapshot the
    cache does not hold, and a ref file holding no commit hash, are reported and
    the import exits 1. With the blobs repaired,
    importing again commits the right bytes."""
    import numpy as np
    from support.safetensors import write_safetensors_raw

    src1, src2 = tmp_path / "s1", tmp_path / "s2"
    for d, v in ((src1, 1), (src2, 2)):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"v": v, "pad": "x" * 1000}))
        w = np.random.default_rng(v).standard_normal(4096).astype(np.float32).tobytes()
        write_safetensors_raw(str(d / "model.safetensors"), [("w", "F32", (4096,), w)])
    h1, h2, h3 = fake_hash("b1"), fake_hash("b2"), fake_hash("gone")
    cache = str(tmp_path / "cache")
    storage = build_hf_cache(cache, "acme/tiny", [(h1, str(src1), T0), (h2, str(src2), T0 + 10)],
                             {"main": h2, "v1": h1, "dev": h3})
    cfg2 = os.path.realpath(os.path.join(storage, "snapshots", h2, "config.json"))
    st1 = os.path.realpath(os.path.join(storage, "snapshots", h1, "model.safetensors"))
    good_cfg2, good_st1 = open(cfg2, "rb").read(), open(st1, "rb").read()
    with open(os.path.join(storage, "refs", "broken"), "w") as f:  # a ref file cut short
        f.write("c0ffee")
    with open(cfg2, "r+b") as f:
        f.truncate(len(good_cfg2) // 2)
    damaged = bytearray(good_st1)
    damaged[-100] ^= 0x01
    open(st1, "wb").write(bytes(damaged))
    repo = str(tmp_path / "repo")
    run_tvcfs("init", repo)
    proc = run_tvcfs("--repo", repo, "import-hf", "--cache-dir", cache, ok=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert f"snapshot {h2} is incomplete, not imported: config.json: its blob {os.path.basename(cfg2)} " \
           f"({len(good_cfg2) // 2} bytes) does not hash to its name" in err, err
    assert f"snapshot {h1} is incomplete, not imported: model.safetensors: its blob" in err, err
    assert f"refs/dev points to snapshot {h3}, which is not in the cache" in err, err
    last = err.strip().splitlines()[-1]
    assert f"refs/broken in {storage} holds 'c0ffee', not a commit hash" in err, err
    assert last.startswith("tvcfs: error: 2 incomplete snapshot(s)") and "2 ref(s) name no snapshot" in last
    with _open(repo) as r:
        assert r.branches() == {} and r.tags() == {}

    open(cfg2, "wb").write(good_cfg2)
    open(st1, "wb").write(good_st1)
    proc = run_tvcfs("--repo", repo, "import-hf", "--cache-dir", cache, ok=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "acme/tiny: 2 snapshots imported" in proc.stdout.decode(), (proc.stdout, err)
    assert err.strip().splitlines()[-1].startswith("tvcfs: error: 2 ref(s) name no snapshot"), err
    with _open(repo) as r:
        assert b"".join(r.read_file("main", "config.json")) == good_cfg2
        assert b"".join(r.read_file("v1", "model.safetensors")) == good_st1
        assert "dev" not in r.branches() and "broken" not in r.branches()


def test_import_hf_errors_and_config(tmp_path, tmp_repo):
    """One-line errors: no cache, a repository not in it, a bad or unknown config
    key; ``tvcfs config`` sets, gets, lists and unsets hf.repo_id; the default
    cache is HF_HUB_CACHE, then HF_HOME/hub."""
    root = tmp_repo.root
    for args, env, words in (
            (("import-hf", "--cache-dir", tmp_path / "none"), {}, ("no Hugging Face cache", "none")),
            (("import-hf",), {"HF_HUB_CACHE": str(tmp_path / "c1")}, ("no Hugging Face cache", "c1")),
            (("import-hf",), {"HF_HUB_CACHE": None, "HF_HOME": str(tmp_path / "home")}, ("home/hub",)),
            (("config", "hf.repo_id", "not a repo id"), {}, ("invalid Hugging Face repository ID",)),
            (("config", "hf.nope", "x"), {}, ("unknown configuration key 'hf.nope'", "hf.repo_id"))):
        err = run_tvcfs("--repo", root, *args, env=env, ok=False).stderr.decode().strip()
        assert "\n" not in err and err.startswith("tvcfs: error: ") and "Error" not in err, err
        assert all(w in err for w in words), (args, err)
    os.makedirs(tmp_path / "c2" / "models--acme--x")
    err = run_tvcfs("--repo", root, "import-hf", "acme/y", "--cache-dir", tmp_path / "c2", ok=False).stderr.decode()
    assert "acme/y: not in the Hugging Face cache" in err and "acme/x" in err, err
    assert run_tvcfs("--repo", root, "config", "hf.repo_id", ok=False).stdout == b""
    run_tvcfs("--repo", root, "config", "hf.repo_id", "org/name")
    assert run_tvcfs("--repo", root, "config", "hf.repo_id").stdout == b"org/name\n"
    assert run_tvcfs("--repo", root, "config", "--list").stdout == b"hf.repo_id=org/name\n"
    run_tvcfs("--repo", root, "config", "--unset", "hf.repo_id")
    assert run_tvcfs("--repo", root, "config", "--list").stdout == b""


def test_several_repositories_in_one(tmp_path):
    """Two cached repositories imported together get their refs under their IDs
    (no hf.repo_id is guessed); the mount's hf/ shows both, each with its own refs
    and snapshots; setting hf.repo_id later gives plain names to a repository
    imported next."""
    srcs = {}
    for name in ("a", "b", "c"):
        d = tmp_path / f"src-{name}"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model": name}))
        srcs[name] = d
    cache = str(tmp_path / "cache")
    ha, hb = fake_hash("ra"), fake_hash("rb")
    build_hf_cache(cache, "acme/a", [(ha, str(srcs["a"]), T0)], {"main": ha, "v1": ha})
    build_hf_cache(cache, "acme/b", [(hb, str(srcs["b"]), T0)], {"main": hb, "refs/pr/3": hb})
    repo = str(tmp_path / "repo")
    run_tvcfs("init", repo)
    run_tvcfs("--repo", repo, "import-hf", "--cache-dir", cache)
    with _open(repo) as r:
        assert set(r.branches()) == {"acme/a/main", "acme/b/main", "acme/b/pr/3"}
        assert set(r.tags()) == {"acme/a/v1"}
    assert run_tvcfs("--repo", repo, "config", "hf.repo_id", ok=False).stdout == b""
    mnt = str(tmp_path / "mnt")
    with Mounted(repo, mnt):
        hfdir = os.path.join(mnt, "hf")
        assert sorted(os.listdir(hfdir)) == ["models--acme--a", "models--acme--b"]
        assert sorted(os.listdir(os.path.join(hfdir, "models--acme--a", "refs"))) == ["main", "v1"]
        assert open(os.path.join(hfdir, "models--acme--b", "refs", "refs", "pr", "3")).read() == hb
        assert os.listdir(os.path.join(hfdir, "models--acme--b", "snapshots")) == [hb]
        with open(os.path.join(hfdir, "models--acme--a", "snapshots", ha, "config.json")) as f:
            assert json.load(f) == {"model": "a"}
        hc = fake_hash("rc")
        build_hf_cache(cache, "acme/c", [(hc, str(srcs["c"]), T0)], {"main": hc})
        run_tvcfs("--repo", repo, "config", "hf.repo_id", "acme/c")
        run_tvcfs("--repo", repo, "import-hf", "acme/c", "--cache-dir", cache)
        with _open(repo) as r:
            assert r.read_commit(r.branches()["main"]).metadata["hf"] == {"repo_id": "acme/c", "commit": hc}
        assert sorted(os.listdir(hfdir)) == ["models--acme--a", "models--acme--b", "models--acme--c"]
        c_refs = os.path.join(hfdir, "models--acme--c", "refs")
        assert os.listdir(c_refs) == ["main"]  # not acme/a/… nor acme/b/…
        assert open(os.path.join(c_refs, "main")).read() == hc


def test_import_hf_progress_bar_on_a_terminal(tmp_path):
    """import-hf shows a progress bar over snapshots on a terminal, none in a pipe."""
    from support.cli import run_in_pty

    d = tmp_path / "src"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model": "p"}))
    cache = str(tmp_path / "cache")
    h = fake_hash("progress")
    build_hf_cache(cache, "acme/p", [(h, str(d), T0)], {"main": h})
    repo = str(tmp_path / "repo")
    run_tvcfs("init", repo)
    rc, term = run_in_pty("--repo", repo, "import-hf", "--cache-dir", cache)
    assert rc == 0 and "import-hf" in term and "snapshots" in term and "\r" in term, term
    repo2 = str(tmp_path / "repo2")
    run_tvcfs("init", repo2)
    p = run_tvcfs("--repo", repo2, "import-hf", "--cache-dir", cache)
    err = p.stderr if isinstance(p.stderr, str) else p.stderr.decode()
    assert "\r" not in err and "snapshots/s" not in err


def test_snapshot_links_out_of_the_cache_or_to_a_directory_are_never_imported(tmp_path):
    """A cache made or changed by hand: a snapshot file linking out of its repository's
    folder (an absolute link, a ``../`` one) or to a directory in place of its blob
    makes the snapshot incomplete — not imported, named, exit 1 — instead of a
    commit holding whatever file of the machine the link reached (a key, a
    password file) that a push would then publish. A cache whose ``blobs/`` is a
    link to another disk still imports."""
    src1, src2, src3 = tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"
    for d in (src1, src2, src3):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"v": d.name}))
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET\n")
    h1, h2, h3 = fake_hash("o1"), fake_hash("o2"), fake_hash("o3")
    cache = str(tmp_path / "cache")
    storage = build_hf_cache(cache, "acme/tiny", [(h1, str(src1), T0), (h2, str(src2), T0 + 10),
                                                  (h3, str(src3), T0 + 20)], {"main": h3, "v1": h1, "v2": h2})
    os.symlink(str(secret), os.path.join(storage, "snapshots", h1, "abs.txt"))
    rel = os.path.relpath(str(secret), os.path.join(storage, "snapshots", h2))
    assert rel.startswith("../../../")
    os.symlink(rel, os.path.join(storage, "snapshots", h2, "rel.txt"))
    cfg3 = os.path.realpath(os.path.join(storage, "snapshots", h3, "config.json"))
    good3 = open(cfg3, "rb").read()
    os.unlink(cfg3)
    os.mkdir(cfg3)  # a blob replaced by a directory
    repo = str(tmp_path / "repo")
    run_tvcfs("init", repo)
    proc = run_tvcfs("--repo", repo, "import-hf", "--cache-dir", cache, ok=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert f"snapshot {h1} is incomplete, not imported: abs.txt: its link leads out of {storage}" in err, err
    assert f"snapshot {h2} is incomplete, not imported: rel.txt: its link leads out of {storage}" in err, err
    assert f"snapshot {h3} is incomplete, not imported: config.json: its blob" in err, err
    assert err.strip().splitlines()[-1].startswith("tvcfs: error: 3 incomplete snapshot(s)"), err
    with _open(repo) as r:
        assert r.branches() == {} and r.tags() == {}
        assert r.store.stat()["blocks"] == 0  # nothing of the secret, nothing at all
    # repaired, with blobs/ moved to another disk behind a link: imported
    os.rmdir(cfg3)
    open(cfg3, "wb").write(good3)
    for h, name in ((h1, "abs.txt"), (h2, "rel.txt")):
        os.unlink(os.path.join(storage, "snapshots", h, name))
    elsewhere = str(tmp_path / "other-disk" / "blobs")
    os.makedirs(os.path.dirname(elsewhere))
    os.rename(os.path.join(storage, "blobs"), elsewhere)
    os.symlink(elsewhere, os.path.join(storage, "blobs"))
    proc = run_tvcfs("--repo", repo, "import-hf", "--cache-dir", cache)
    assert "acme/tiny: 3 snapshots imported" in proc.stdout.decode(), (proc.stdout, proc.stderr)
    with _open(repo) as r:
        assert b"".join(r.read_file("main", "config.json")) == good3
