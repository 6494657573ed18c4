"""Repository merges: result kinds, three-way tensor merges, strategies, conflicts."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load, save

from tvcfs import dtypes
from tvcfs.merge.core import CONFLICT, FAST_FORWARD, MERGED, UP_TO_DATE, StrategyRules, merge
from tvcfs.merge.strategies import StrategyError
from tvcfs.repo import Repo

torch = pytest.importorskip("torch")

_ts = [1_700_000_000]


def write_tree(path, files):
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        os.remove(os.path.join(path, name))
    for name, content in files.items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(content)


def commit(repo, tmp_path, branch, files, message="c"):
    d = tmp_path / f"w-{branch}"
    write_tree(d, files)
    _ts[0] += 10
    return repo.commit_dir(str(d), branch=branch, message=message, timestamp=_ts[0]).cid


def st(tensors, metadata=None):
    return save(tensors, metadata=metadata)


def read_file(repo, rev, path):
    return b"".join(repo.read_file(rev, path))


def bf16(values):
    """float list -> float32 array holding the bf16-rounded values (torch's cast)."""
    return torch.tensor(values, dtype=torch.float32).to(torch.bfloat16).to(torch.float32).numpy()


def bf16_st(tensors):
    """safetensors bytes with BF16 tensors (numpy cannot hold bf16: build the file with torch)."""
    from safetensors.torch import save as tsave

    return tsave({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()})


@pytest.fixture
def repo(tmp_path):
    r = Repo.init(str(tmp_path / "repo"))
    yield r
    r.close()


A = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
B = np.linspace(-1, 1, 8, dtype=np.float32)
C = np.ones(5, dtype=np.float16)


def base_files():
    return {"model.safetensors": st({"a": A, "b": B, "c": C}, {"format": "pt"}),
            "config.json": b'{"hidden": 4}\n'}


def test_up_to_date_and_fast_forward(repo, tmp_path):
    c1 = commit(repo, tmp_path, "main", base_files())
    repo.create_branch("feature", c1)
    f = base_files()
    f["model.safetensors"] = st({"a": A + 1, "b": B, "c": C}, {"format": "pt"})
    c2 = commit(repo, tmp_path, "feature", f)

    r = merge(repo, "main", branch="feature")
    assert r.kind == UP_TO_DATE and r.commit == c2
    r = merge(repo, "feature", branch="feature")
    assert r.kind == UP_TO_DATE

    r = merge(repo, "feature", branch="main")
    assert r.kind == FAST_FORWARD and r.commit == c2 and r.base == c1
    assert repo.branches()["main"] == c2
    # merging again: up to date
    assert merge(repo, "feature", branch="main").kind == UP_TO_DATE


def test_clean_three_way_disjoint_tensors(repo, tmp_path):
    c1 = commit(repo, tmp_path, "main", base_files())
    repo.create_branch("theirs", c1)
    # ours: changes a, deletes c ; theirs: changes b, adds d, changes config.json
    ours = {"model.safetensors": st({"a": A * 2, "b": B}, {"format": "pt"}), "config.json": b'{"hidden": 4}\n'}
    co = commit(repo, tmp_path, "main", ours)
    D = np.array([7, 8, 9], dtype=np.int64)
    theirs = {"model.safetensors": st({"a": A, "b": B - 1, "c": C, "d": D}, {"format": "pt"}),
              "config.json": b'{"hidden": 8}\n', "new.txt": b"hello"}
    ct = commit(repo, tmp_path, "theirs", theirs)

    r = merge(repo, "theirs", branch="main", timestamp=_ts[0] + 5)
    assert r.kind == MERGED, r.conflicts
    assert r.base == c1 and r.ours == co and r.theirs == ct
    head = repo.branches()["main"]
    assert head == r.commit and repo.read_commit(head).parents == (co, ct)
    out = load(read_file(repo, "main", "model.safetensors"))
    assert sorted(out) == ["a", "b", "d"]
    np.testing.assert_array_equal(out["a"], A * 2)
    np.testing.assert_array_equal(out["b"], B - 1)
    np.testing.assert_array_equal(out["d"], D)
    assert out["d"].dtype == np.int64
    assert read_file(repo, "main", "config.json") == b'{"hidden": 8}\n'
    assert read_file(repo, "main", "new.txt") == b"hello"
    assert r.stats["tensors_merged"] == 0  # nothing needed arithmetic
    # the merged file's DAG is exactly what importing its bytes gives
    data = read_file(repo, "main", "model.safetensors")
    assert repo.add_bytes(data) == repo.entry("main", "model.safetensors").cid


@pytest.mark.parametrize("dt", ["F32", "F16", "BF16"])
def test_strategy_resolves_overlap(repo, tmp_path, dt):
    rng = np.random.default_rng(5)
    base_w = rng.normal(size=(4, 6)).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    ours_w = base_w + rng.normal(size=(4, 6)).astype(np.float32)
    theirs_w = base_w - rng.normal(size=(4, 6)).astype(np.float32)
    if dt == "F16":
        cast = lambda x: x.astype(np.float16)  # noqa: E731
        mk = st
    elif dt == "BF16":
        cast = lambda x: bf16(x)  # noqa: E731
        mk = bf16_st
    else:
        cast = lambda x: x  # noqa: E731
        mk = st
    base_w, ours_w, theirs_w, bias = cast(base_w), cast(ours_w), cast(theirs_w), cast(bias)
    c1 = commit(repo, tmp_path, "main", {"m.safetensors": mk({"w": base_w, "l.bias": bias})})
    repo.create_branch("theirs", c1)
    commit(repo, tmp_path, "main", {"m.safetensors": mk({"w": ours_w, "l.bias": bias + 1})})
    commit(repo, tmp_path, "theirs", {"m.safetensors": mk({"w": theirs_w, "l.bias": bias - 1})})

    # no strategy: both tensors conflict, nothing written
    head = repo.branches()["main"]
    r = merge(repo, "theirs", branch="main")
    assert r.kind == CONFLICT
    assert sorted(c.tensor for c in r.conflicts) == ["l.bias", "w"]
    assert repo.branches()["main"] == head

    r = merge(repo, "theirs", branch="main", strategies=["average-ours-theirs", "*.bias=theirs"],
              params=["alpha=0.3"])
    assert r.kind == MERGED, r.conflicts
    assert r.stats["tensors_merged"] == 1
    raw = read_file(repo, "main", "m.safetensors")
    hdr_len = int.from_bytes(raw[:8], "little")
    hdr = json.loads(raw[8:8 + hdr_len])
    assert hdr["w"]["dtype"] == dt and hdr["w"]["shape"] == [4, 6]

    def get(name):
        lo, hi = hdr[name]["data_offsets"]
        return dtypes.to_float32(raw[8 + hdr_len + lo: 8 + hdr_len + hi], dt, hdr[name]["shape"])

    # independent: float32 arithmetic on the exact side values, then torch's cast to dt
    want = np.float32(0.3) * ours_w.astype(np.float32) + np.float32(0.7) * theirs_w.astype(np.float32)
    tdt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dt]
    want = torch.from_numpy(want).to(tdt).to(torch.float32).numpy()
    np.testing.assert_array_equal(get("w"), want)
    np.testing.assert_array_equal(get("l.bias"), (bias - 1).astype(np.float32) if dt != "BF16" else bf16(bias - 1))


def test_shape_mismatch_conflict_writes_nothing(repo, tmp_path):
    c1 = commit(repo, tmp_path, "main", base_files())
    repo.create_branch("theirs", c1)
    commit(repo, tmp_path, "main", {"model.safetensors": st({"a": A + 1, "b": B, "c": C}, {"format": "pt"}),
                                    "config.json": b'{"hidden": 4}\n'})
    commit(repo, tmp_path, "theirs", {"model.safetensors": st({"a": np.zeros((4, 4), np.float32), "b": B, "c": C},
                                                              {"format": "pt"}),
                                      "config.json": b'{"hidden": 4}\n'})
    head = repo.branches()["main"]
    nblocks = repo.store.stat()["blocks"]
    r = merge(repo, "theirs", branch="main", strategies="average-ours-theirs")
    assert r.kind == CONFLICT
    assert [(c.path, c.tensor) for c in r.conflicts] == [("model.safetensors", "a")]
    assert "shape mismatch" in r.conflicts[0].reason
    assert repo.branches()["main"] == head
    assert repo.store.stat()["blocks"] == nblocks
    # `theirs` resolves it (takes their bytes whatever the shape)
    r = merge(repo, "theirs", branch="main", strategies=["average-ours-theirs", "a=theirs"])
    assert r.kind == MERGED
    assert load(read_file(repo, "main", "model.safetensors"))["a"].shape == (4, 4)


def test_json_changed_on_both_sides(repo, tmp_path):
    c1 = commit(repo, tmp_path, "main", base_files())
    repo.create_branch("theirs", c1)
    f = base_files()
    f["config.json"] = b'{"hidden": 5}\n'
    commit(repo, tmp_path, "main", f)
    f["config.json"] = b'{"hidden": 6}\n'
    commit(repo, tmp_path, "theirs", f)
    head = repo.branches()["main"]
    r = merge(repo, "theirs", branch="main", strategies="ties")
    assert r.kind == CONFLICT
    assert [(c.path, c.tensor) for c in r.conflicts] == [("config.json", None)]
    assert repo.branches()["main"] == head
    r = merge(repo, "theirs", branch="main", strategies=["ties", "*.json=theirs"])
    assert r.kind == MERGED
    assert read_file(repo, "main", "config.json") == b'{"hidden": 6}\n'


def test_metadata_and_modify_delete_conflicts(repo, tmp_path):
    c1 = commit(repo, tmp_path, "main", base_files())
    repo.create_branch("theirs", c1)
    commit(repo, tmp_path, "main", {"model.safetensors": st({"a": A + 1, "b": B}, {"format": "pt", "v": "1"})})
    commit(repo, tmp_path, "theirs", {"model.safetensors": st({"a": A, "b": B, "c": C * 2}, {"format": "pt", "v": "2"}),
                                      "config.json": b"x"})
    r = merge(repo, "theirs", branch="main", strategies="average-ours-theirs")
    got = sorted((c.path, c.tensor) for c in r.conflicts)
    # c: deleted by us, modified by them; __metadata__.v differs; config.json deleted by us, modified by them
    assert got == [("config.json", None), ("model.safetensors", "__metadata__.v"), ("model.safetensors", "c")]
    r = merge(repo, "theirs", branch="main", strategies="ours")
    assert r.kind == MERGED
    out = load(read_file(repo, "main", "model.safetensors"))
    assert sorted(out) == ["a", "b"]
    np.testing.assert_array_equal(out["a"], A + 1)


def test_ties_and_task_arithmetic_on_repo(repo, tmp_path):
    base_w = np.array([1, 1, 1, 1], np.float32)
    c1 = commit(repo, tmp_path, "main", {"m.safetensors": st({"w": base_w})})
    repo.create_branch("theirs", c1)
    commit(repo, tmp_path, "main", {"m.safetensors": st({"w": np.array([1.5, 3, -1, 0], np.float32)})})
    commit(repo, tmp_path, "theirs", {"m.safetensors": st({"w": np.array([0.5, 2, 3, -3], np.float32)})})
    r = merge(repo, "theirs", branch="main", strategies="ties:density=0.5", dry_run=True)
    assert r.kind == MERGED and r.commit is None
    r = merge(repo, "theirs", branch="main", strategies="ties:density=0.5")
    assert r.kind == MERGED
    # same hand computation as tests/unit/test_merge_strategies.py::test_ties
    assert load(read_file(repo, "main", "m.safetensors"))["w"].tolist() == [1.0, 3.0, 3.0, -3.0]
    assert "ties" in repo.read_commit(r.commit).metadata["merge-strategies"]


def test_rules_parsing_errors():
    with pytest.raises(StrategyError, match="not taken"):
        StrategyRules.from_specs(["ours"], ["alpha=0.3"])
    rules = StrategyRules.from_specs(["ties", "encoder.*=slerp", "*.json=theirs"], {"t": "0.25", "density": "0.5"})
    assert rules.for_tensor("m.safetensors", "encoder.w").name == "slerp"
    assert rules.for_tensor("m.safetensors", "encoder.w").params == {"t": 0.25}
    assert rules.for_tensor("m.safetensors", "decoder.w").params == {"density": 0.5}
    assert rules.for_file("config.json").name == "theirs"
    assert StrategyRules.from_specs(None).for_tensor("x", "y") is None


def _three_versions(repo, tmp_path, tensors):
    """Commit base on main, ours on main, theirs on branch 'theirs' (dicts of name ->
    safetensors bytes builder input); returns nothing."""
    c1 = commit(repo, tmp_path, "main", {"m.safetensors": tensors[0]})
    repo.create_branch("theirs", c1)
    commit(repo, tmp_path, "main", {"m.safetensors": tensors[1]})
    commit(repo, tmp_path, "theirs", {"m.safetensors": tensors[2]})


@pytest.mark.parametrize("dt", ["F32", "BF16"])
@pytest.mark.parametrize("spec", ["average-ours-theirs:alpha=0.3", "task-arithmetic:lambda=0.7",
                                  "dare:density=0.4,seed=3", "average-all", "ties:density=0.3", "ties:density=1",
                                  "slerp:t=0.3"])
def test_streamed_merge_is_bit_identical_to_whole_tensor(repo, tmp_path, dt, spec):
    """Multi-leaf tensors (2.4 MB F32 / 2.2 MB BF16: 3 leaves, the last partial) merged
    leaf by leaf give exactly the bytes of the strategy applied to whole tensors and
    cast back; the file's DAG is what importing its bytes gives."""
    from tvcfs.merge.strategies import parse_strategy_spec

    rng = np.random.default_rng(2)
    shape = (600, 1000) if dt == "F32" else (1100, 1000)
    vals = [rng.normal(size=shape).astype(np.float32) for _ in range(3)]
    small = rng.normal(size=7).astype(np.float32)
    if dt == "F32":
        files = [st({"w": v, "s": small + i * (i == 2)}) for i, v in enumerate(vals)]
    else:
        files = [bf16_st({"w": v, "s": small + i * (i == 2)}) for i, v in enumerate(vals)]
    _three_versions(repo, tmp_path, files)
    from tvcfs.merge.stview import open_safetensors

    sides = []
    for rev in ("main~1", "main", "theirs"):  # base, ours, theirs
        f = open_safetensors(repo.get, repo.entry(rev, "m.safetensors").cid)
        sides.append(dtypes.to_float32(f.read(f.tensors["w"]), dt, shape))
    r = merge(repo, "theirs", branch="main", strategies=spec)
    assert r.kind == MERGED and r.stats["tensors_merged"] == 1
    data = read_file(repo, "main", "m.safetensors")
    sf = open_safetensors(repo.get, repo.entry("main", "m.safetensors").cid)
    got = sf.read(sf.tensors["w"])
    _, s = parse_strategy_spec(spec)
    want = dtypes.from_float32(s(*sides, key="w"), dt)
    assert got == want
    assert repo.add_bytes(data) == repo.entry("main", "m.safetensors").cid
    # base read only by strategies that use it; two-pass ones (slerp, ties) read twice
    nbytes = int(np.prod(shape)) * dtypes.itemsize(dt)
    assert r.stats["bytes_read"] == nbytes * (3 if s.needs_base else 2) * (2 if s.two_pass else 1)


@pytest.mark.parametrize("spec,limit_mib", [("average-all", 8), ("slerp", 8), ("ties:density=0.3", 40)])
def test_streamed_merge_memory_is_a_few_leaves(repo, tmp_path, spec, limit_mib):
    """Merging a 16 MiB tensor allocates a few MiB (tracemalloc counts numpy buffers
    and bytes), not copies of the tensor; ties keeps one float32 key per element
    and side (2 x 16 MiB) while it finds its thresholds. The whole-tensor path took
    80 MiB for average-all, more for slerp and ties."""
    import tracemalloc

    from tvcfs.merge.strategies import parse_strategy_spec

    rng = np.random.default_rng(3)
    n = 4 << 20
    base_w = rng.normal(size=n).astype(np.float32)
    ours_w, theirs_w = base_w + rng.normal(size=n).astype(np.float32), base_w - 2
    _three_versions(repo, tmp_path, [st({"w": base_w}), st({"w": ours_w}), st({"w": theirs_w})])
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        r = merge(repo, "theirs", branch="main", strategies=spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.kind == MERGED and r.stats["leaves_written"] >= 16
    assert peak < limit_mib << 20, peak
    out = load(read_file(repo, "main", "m.safetensors"))["w"]
    want = parse_strategy_spec(spec)[1](base_w, ours_w, theirs_w, key="w")
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))
