"""Tests for scripts/synth_model.py (synthetic LLaMA-style safetensors models)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "synth_model.py"


@pytest.fixture(scope="module")
def sm():
    spec = importlib.util.spec_from_file_location("synth_model", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tensors_bytes(path):
    """{name: raw bytes} of a safetensors file, parsed by hand."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__")
    start = 8 + n
    out = {}
    end = start
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, e = t["data_offsets"]
        assert start + b == end, "tensors must be contiguous in offset order"
        out[name] = data[start + b : start + e]
        end = start + e
    assert end == len(data)
    assert (8 + n) % 8 == 0
    return meta, header, out


@pytest.mark.parametrize(
    "params,hidden,layers",
    [(1e9, 2048, 17), (7e9, 4096, 33), (13e9, 5120, 40)],
)
def test_plan_config_llama_like(sm, params, hidden, layers):
    cfg = sm.plan_config(params)
    assert (cfg.hidden_size, cfg.num_layers, cfg.vocab_size) == (hidden, layers, 32000)
    assert abs(sm.param_count(cfg) / params - 1) < 0.03
    assert cfg.hidden_size % cfg.num_heads == 0 and cfg.head_dim == 128


def test_plan_config_small_and_size(sm):
    for p in (1e6, 1e7, 1e8):
        assert abs(sm.param_count(sm.plan_config(p)) / p - 1) < 0.05
    cfg = sm.config_for_size(1, "f16")
    assert abs(sm.param_count(cfg) * 2 / (1 << 30) - 1) < 0.05
    with pytest.raises(ValueError):
        sm.plan_config(10)


@pytest.mark.parametrize("dtype", ["f16", "bf16", "f32"])
def test_write_model_reads_with_safetensors(sm, tmp_path, dtype):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    cfg = sm.plan_config(2e6)
    info = sm.write_model(str(path), cfg, dtype, seed=3)
    assert info["bytes"] == path.stat().st_size
    meta, header, raw = tensors_bytes(path)
    assert meta == {"format": "pt"}
    names = set(raw)
    for n in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
              "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
              "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"):  # fmt: skip
        assert n in names
    assert len(names) == 3 + 9 * cfg.num_layers
    assert len(set(raw.values())) == len(raw), "no two tensors share bytes"
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == names
        w = f.get_tensor("model.layers.0.mlp.up_proj.weight").float().numpy()
        assert w.shape == (cfg.intermediate_size, cfg.hidden_size)
        assert abs(w.mean()) < 2e-3 and 0.018 < w.std() < 0.022
        norm = f.get_tensor("model.norm.weight").float().numpy()
        assert abs(norm.mean() - 1) < 0.02
    # deterministic
    path2 = tmp_path / "m2.safetensors"
    sm.write_model(str(path2), cfg, dtype, seed=3)
    assert path.read_bytes() == path2.read_bytes()


def test_finetune(sm, tmp_path):
    from safetensors import safe_open

    base, out = tmp_path / "base.safetensors", tmp_path / "ft.safetensors"
    sm.write_model(str(base), sm.plan_config(3e6), "bf16", seed=0)
    res = sm.finetune(str(base), str(out), 0.10, [("lm_head.bias", (64,))], seed=5)
    _, hb, rb = tensors_bytes(base)
    _, ho, ro = tensors_bytes(out)
    changed = {c["name"] for c in res["changed"]}
    assert changed and res["added"][0]["name"] == "lm_head.bias"
    assert set(ro) == set(rb) | {"lm_head.bias"}
    assert 0.05 <= res["change_fraction"] <= 0.10 + 1e-9
    assert res["changed_bytes"] == sum(len(rb[n]) for n in changed)
    for name in rb:
        if name in changed:
            a = np.frombuffer(rb[name], np.uint16)
            b = np.frombuffer(ro[name], np.uint16)
            assert np.mean(a != b) > 0.5, name
        else:
            assert ro[name] == rb[name], name
    # every tensor laid out after the new one moved
    n0 = 8 + int.from_bytes(base.read_bytes()[:8], "little")
    n1 = 8 + int.from_bytes(out.read_bytes()[:8], "little")
    for name in rb:
        assert n1 + ho[name]["data_offsets"][0] != n0 + hb[name]["data_offsets"][0]
    for item in res["changed"] + res["added"]:
        assert item["offset"] == n1 + ho[item["name"]]["data_offsets"][0]
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("lm_head.bias").shape == (64,)


def test_cli(tmp_path):
    base, out = tmp_path / "b.safetensors", tmp_path / "f.safetensors"
    r = subprocess.run([sys.executable, str(SCRIPT), str(base), "--params", "1e6", "--dtype", "f16", "--seed", "2"],
                       capture_output=True, text=True, check=True)  # fmt: skip
    info = json.loads(r.stdout)
    assert info["bytes"] == base.stat().st_size and info["dtype"] == "f16"
    r = subprocess.run([sys.executable, str(SCRIPT), "finetune", str(base), str(out),
                        "--change-fraction", "0.2", "--add-tensor", "model.extra.weight"],
                       capture_output=True, text=True, check=True)  # fmt: skip
    res = json.loads(r.stdout)
    assert res["added"][0]["shape"] == [info["config"]["hidden_size"]]
    assert all({"name", "bytes", "offset"} <= set(c) for c in res["changed"])
