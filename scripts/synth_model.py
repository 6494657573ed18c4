#!/usr/bin/env python3
"""Synthesise LLaMA-style safetensors models, and fine-tuned variants of them, streaming.

Usage::

    python scripts/synth_model.py OUT.safetensors --params 1e9 --dtype f16 [--seed N]
    python scripts/synth_model.py OUT.safetensors --size-gib 1 --dtype bf16
    python scripts/synth_model.py finetune BASE.safetensors OUT.safetensors \\
        --change-fraction 0.10 --add-tensor NAME [--add-shape 4096] [--seed N]

Both print one JSON object on stdout describing what was written (and, for
``finetune``, which tensors changed, with their names and sizes in bytes).

Library use (benchmarks): load this file by path, e.g.::

    import importlib.util
    spec = importlib.util.spec_from_file_location("synth_model", "scripts/synth_model.py")
    synth = importlib.util.module_from_spec(spec); spec.loader.exec_module(synth)
    info = synth.write_model("base.safetensors", synth.plan_config(1e8), "f16", seed=0)
    diff = synth.finetune("base.safetensors", "ft.safetensors", 0.1, [("extra.weight", (64,))])

Format: https://huggingface.co/docs/safetensors/index#format — ``u64 LE N`` ‖ N bytes
of JSON (here padded with spaces to a multiple of 8, as the reference writer does) ‖
tensor data, contiguous, in the order of the header's ``data_offsets`` (tensors are
laid out sorted by name, as ``safetensors.torch.save_file`` does for one dtype).
Shapes follow the Hugging Face ``LlamaForCausalLM`` naming: ``model.embed_tokens``,
``model.layers.N.self_attn.{q,k,v,o}_proj``, ``model.layers.N.mlp.{gate,up,down}_proj``,
``model.layers.N.{input,post_attention}_layernorm``, ``model.norm``, ``lm_head``
(Touvron et al., "LLaMA", 2023: intermediate size ``8h/3`` rounded up, head size 128).

Values look like trained weights: linear and embedding weights are N(0, 0.02²),
norm weights N(1, 0.05²), drawn by inverse-CDF lookup (65,536 quantiles of the
normal distribution indexed by 16 random bits from SFC64) so that a 2 GiB model is
written in seconds; f32 values get 16 more random low mantissa bits. Every tensor has
its own random stream (seeded from ``seed`` and its name), so no two tensors share
bytes. Memory use is a few tens of MiB whatever the model size.
"""


import argparse
import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "DTYPES",
    "ModelConfig",
    "plan_config",
    "config_for_size",
    "tensor_specs",
    "param_count",
    "write_model",
    "read_header",
    "finetune",
    "main",
]

#: CLI dtype -> (safetensors dtype string, bytes per element)
DTYPES = {"f16": ("F16", 2), "bf16": ("BF16", 2), "f32": ("F32", 4)}
_ST_TO_CLI = {v[0]: k for k, v in DTYPES.items()}
_CHUNK = 1 << 21  # elements generated / perturbed per step (a few MiB of scratch)
_COPY = 64 << 20  # bytes per copy_file_range call


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a LLaMA-style decoder. All sizes are element counts, not bytes."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _round_up(x: float, m: int) -> int:
    return int(math.ceil(x / m) * m)


def tensor_specs(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """``[(name, shape, kind)]`` of a model, in the order they are laid out (by name).

    ``kind`` is ``"linear"``, ``"embed"`` or ``"norm"`` (it picks the value
    distribution). Shapes are PyTorch ``nn.Linear`` ``(out_features, in_features)``.
    """
    h, i, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_kv_heads * cfg.head_dim
    specs = [
        ("model.embed_tokens.weight", (cfg.vocab_size, h), "embed"),
        ("model.norm.weight", (h,), "norm"),
        ("lm_head.weight", (cfg.vocab_size, h), "embed"),
    ]
    for n in range(cfg.num_layers):
        p = f"model.layers.{n}."
        specs += [
            (p + "self_attn.q_proj.weight", (h, h), "linear"),
            (p + "self_attn.k_proj.weight", (kv, h), "linear"),
            (p + "self_attn.v_proj.weight", (kv, h), "linear"),
            (p + "self_attn.o_proj.weight", (h, h), "linear"),
            (p + "mlp.gate_proj.weight", (i, h), "linear"),
            (p + "mlp.up_proj.weight", (i, h), "linear"),
            (p + "mlp.down_proj.weight", (h, i), "linear"),
            (p + "input_layernorm.weight", (h,), "norm"),
            (p + "post_attention_layernorm.weight", (h,), "norm"),
        ]
    return sorted(specs)


def param_count(cfg: ModelConfig) -> int:
    """Number of parameters (elements) of a model."""
    return sum(math.prod(s) for _, s, _ in tensor_specs(cfg))


def _config(h: int, layers: int, vocab: int, kv_heads: int | None = None) -> ModelConfig:
    head_dim = 128 if (h >= 1024 and h % 128 == 0) else 64
    heads = h // head_dim
    return ModelConfig(
        hidden_size=h,
        intermediate_size=_round_up(8 * h / 3, 256 if h >= 1024 else 64),
        num_layers=layers,
        vocab_size=vocab,
        num_heads=heads,
        num_kv_heads=kv_heads or heads,
    )


def plan_config(params: float, vocab_size: int | None = None) -> ModelConfig:
    """A LLaMA-like shape with about ``params`` parameters (elements).

    Hidden size is a multiple of 64 (of 256 from 1024 on) and the layer count is near LLaMA's
    ``hidden / 128`` (7B: 4096 x 32; 1B: 2048 x 16-17); the result is within a few
    percent of ``params`` for ``params >= 1e6``. The vocabulary is 32,000 unless the
    model is so small that embeddings would dominate (then about 12 % of the
    parameters), or ``vocab_size`` is given. Raises ValueError for ``params < 1e5``.
    """
    if not params or params < 1e5:
        raise ValueError(f"params must be >= 1e5, got {params}")
    best = None
    for h in [*range(64, 1024, 64), *range(1024, 16384 + 1, 256)]:
        if vocab_size:
            vocab = vocab_size
        elif 2 * 32000 * h <= 0.25 * params:
            vocab = 32000
        else:
            vocab = max(256, _round_up(0.12 * params / (2 * h), 64))
        cfg1 = _config(h, 1, vocab)
        fixed = param_count(_config(h, 0, vocab))
        per_layer = param_count(cfg1) - fixed
        layers = max(1, round((params - fixed) / per_layer))
        total = fixed + layers * per_layer
        err = abs(math.log(total / params))
        shape = abs(math.log(layers / max(1.0, h / 128)))
        score = (max(err, 0.03) * 100, shape)  # within 3 %: prefer LLaMA's aspect ratio
        if best is None or score < best[0]:
            best = (score, _config(h, layers, vocab))
    return best[1]


def config_for_size(size_gib: float, dtype: str = "f16", vocab_size: int | None = None) -> ModelConfig:
    """:func:`plan_config` for a file of about ``size_gib`` GiB (2^30 bytes) in ``dtype``."""
    return plan_config(size_gib * (1 << 30) / DTYPES[dtype][1], vocab_size)


# --------------------------------------------------------------------------- values


@lru_cache(maxsize=None)
def _quantiles() -> np.ndarray:
    """65,536 standard-normal quantiles (float64), ascending, exact to ~1e-9."""
    p = (np.arange(65536) + 0.5) / 65536
    # P. J. Acklam's rational approximation to the inverse normal CDF (rel. error
    # 1.15e-9), refined by one Halley step using math.erfc (65,536 calls, ~20 ms).
    a = [-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00]
    b = [-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01, -1.328068155288572e01]
    c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00]
    d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00]
    x = np.empty_like(p)
    lo, hi = p < 0.02425, p > 1 - 0.02425
    mid = ~(lo | hi)
    q = np.sqrt(-2 * np.log(p[lo]))
    x[lo] = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    q = np.sqrt(-2 * np.log(1 - p[hi]))
    x[hi] = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    q = p[mid] - 0.5
    r = q * q
    x[mid] = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    erfc = np.vectorize(math.erfc)
    e = 0.5 * erfc(-x / math.sqrt(2)) - p
    u = e * math.sqrt(2 * math.pi) * np.exp(x * x / 2)
    return x - u / (1 + x * u / 2)


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def _from_bits(bits: np.ndarray, st_dtype: str) -> np.ndarray:
    """Raw little-endian element bytes (as uint8/uint16/uint32 array) -> float32 values."""
    if st_dtype == "F16":
        return bits.view(np.float16).astype(np.float32)
    if st_dtype == "BF16":
        return (bits.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return bits.view(np.float32).copy()


def _to_bits(x: np.ndarray, st_dtype: str) -> np.ndarray:
    """float32 values -> element bit patterns in ``st_dtype``."""
    if st_dtype == "F16":
        return x.astype(np.float16).view(np.uint16)
    if st_dtype == "BF16":
        return _to_bf16_bits(x)
    return x.astype(np.float32).view(np.uint32)


@lru_cache(maxsize=None)
def _table(st_dtype: str, mean: float, std: float) -> np.ndarray:
    """65,536 bit patterns of ``mean + std * quantile`` in ``st_dtype`` (uint16/uint32)."""
    vals = (mean + std * _quantiles()).astype(np.float32)
    if st_dtype == "F32":
        return vals.view(np.uint32) & np.uint32(0xFFFF0000)
    return _to_bits(vals, st_dtype)


_KIND = {"linear": (0.0, 0.02), "embed": (0.0, 0.02), "norm": (1.0, 0.05)}


def _rng(seed: int, name: str, salt: str = "") -> np.random.SFC64:
    digest = hashlib.sha256(f"{seed}\0{name}\0{salt}".encode()).digest()
    return np.random.SFC64(int.from_bytes(digest[:16], "little"))


def _random_u16(bg: np.random.SFC64, n: int) -> np.ndarray:
    return bg.random_raw((n + 3) // 4).view(np.uint16)[:n]


def _values(bg: np.random.SFC64, n: int, st_dtype: str, kind: str) -> np.ndarray:
    """``n`` random elements as bit patterns (uint16 for 16-bit dtypes, uint32 for F32)."""
    table = _table(st_dtype, *_KIND[kind])
    out = table[_random_u16(bg, n)]
    if st_dtype == "F32":
        out |= _random_u16(bg, n).astype(np.uint32)
    return out


def _write_all(fd: int, data) -> None:
    mv = memoryview(data).cast("B")
    while mv:
        mv = mv[os.write(fd, mv) :]


def _header_bytes(entries: list[tuple[str, str, tuple, int]], metadata: dict) -> bytes:
    """Header (length prefix + JSON, padded to 8 bytes) for ``[(name, dtype, shape, nbytes)]``
    laid out in the given order."""
    hdr = {"__metadata__": metadata}
    off = 0
    for name, st_dtype, shape, nbytes in entries:
        hdr[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    js = json.dumps(hdr, separators=(",", ":")).encode()
    js += b" " * (-(8 + len(js)) % 8)
    return len(js).to_bytes(8, "little") + js


def _generate_into(fd: int, bg: np.random.SFC64, count: int, st_dtype: str, kind: str) -> None:
    done = 0
    while done < count:
        n = min(_CHUNK, count - done)
        _write_all(fd, _values(bg, n, st_dtype, kind))
        done += n


def write_model(path: str, cfg: ModelConfig | float, dtype: str = "f16", seed: int = 0) -> dict:
    """Write a synthetic model to ``path``; return a JSON-able summary.

    ``cfg`` is a :class:`ModelConfig` or a parameter count (see :func:`plan_config`);
    ``dtype`` is ``"f16"``, ``"bf16"`` or ``"f32"``. Streams: memory stays a few tens
    of MiB. Raises ValueError for an unknown dtype, OSError for I/O errors. The
    summary has ``path``, ``bytes`` (file size), ``params``, ``dtype``, ``config``
    and ``tensors`` (count).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not isinstance(cfg, ModelConfig):
        cfg = plan_config(cfg)
    st_dtype, esize = DTYPES[dtype]
    specs = tensor_specs(cfg)
    entries = [(name, st_dtype, shape, math.prod(shape) * esize) for name, shape, _ in specs]
    header = _header_bytes(entries, {"format": "pt"})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, header)
        for name, shape, kind in specs:
            _generate_into(fd, _rng(seed, name), math.prod(shape), st_dtype, kind)
    finally:
        os.close(fd)
    return {
        "path": str(path),
        "bytes": os.path.getsize(path),
        "params": param_count(cfg),
        "dtype": dtype,
        "seed": seed,
        "config": asdict(cfg),
        "tensors": len(specs),
        "header_bytes": len(header),
    }


def read_header(path: str) -> tuple[dict, int]:
    """``(header, data_start)`` of a safetensors file: the parsed JSON and the absolute
    offset (bytes) of its data region. Raises ValueError if the file is not safetensors."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: too short for safetensors")
        n = int.from_bytes(raw, "little")
        if n > 100 << 20:
            raise ValueError(f"{path}: header length {n} too large")
        js = f.read(n)
    try:
        header = json.loads(js)
    except ValueError as e:
        raise ValueError(f"{path}: bad safetensors header: {e}") from None
    return header, 8 + n


def _copy_range(src: int, dst: int, offset: int, count: int) -> None:
    """Append ``count`` bytes of ``src`` from ``offset`` to ``dst`` (at its position)."""
    while count:
        n = 0
        if hasattr(os, "copy_file_range"):
            try:
                n = os.copy_file_range(src, dst, min(count, _COPY), offset)
            except OSError:
                n = 0
        if n <= 0:
            data = os.pread(src, min(count, 8 << 20), offset)
            if not data:
                raise EOFError("source file ended early")
            _write_all(dst, data)
            n = len(data)
        offset += n
        count -= n


def finetune(
    base: str,
    out: str,
    change_fraction: float = 0.10,
    add_tensors: list[tuple[str, tuple[int, ...]]] | None = None,
    seed: int = 1,
    delta: float = 0.05,
) -> dict:
    """Write ``out`` = ``base`` with whole tensors perturbed and new tensors added; streaming.

    Tensors are picked at random (``seed``) until their data totals about
    ``change_fraction`` of the tensor bytes (never exceeding it by more than one
    tensor's size; at least one tensor if the fraction is > 0). Each picked tensor
    gets ``x + N(0, (delta * rms(x))^2)`` noise on every element (so nearly every
    element, hence every leaf, changes). ``add_tensors`` ``[(name, shape)]`` are new
    tensors (weights N(0, 0.02²), the base's dtype), laid out in name order, so every
    tensor after them moves; the header changes length too. Unchanged tensors are
    copied byte for byte (``copy_file_range``).

    Returns a JSON-able dict: ``changed`` / ``added`` lists of ``{"name", "shape",
    "dtype", "bytes", "offset"}`` (absolute byte offsets in ``out``), their totals
    ``changed_bytes`` / ``added_bytes``, ``tensor_bytes`` (all tensors of the base),
    ``change_fraction`` (achieved), ``unchanged`` (count), ``bytes`` (size of out).
    Raises ValueError for a bad base file, a fraction outside [0, 1] or a name clash.
    """
    if not 0 <= change_fraction <= 1:
        raise ValueError(f"change_fraction must be in [0, 1], got {change_fraction}")
    header, data_start = read_header(base)
    metadata = header.pop("__metadata__", {"format": "pt"})
    tensors = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    dtypes = {t["dtype"] for _, t in tensors}
    if not dtypes <= set(_ST_TO_CLI):
        raise ValueError(f"unsupported dtypes {sorted(dtypes - set(_ST_TO_CLI))}")
    st_dtype = tensors[0][1]["dtype"] if tensors else "F16"
    esize = DTYPES[_ST_TO_CLI[st_dtype]][1]
    sizes = {name: t["data_offsets"][1] - t["data_offsets"][0] for name, t in tensors}
    total = sum(sizes.values())

    # pick tensors to change
    order = [name for name, _ in tensors]
    np.random.default_rng(seed).shuffle(order)
    target = change_fraction * total
    picked, acc = set(), 0
    for name in order:
        if acc + sizes[name] <= target:
            picked.add(name)
            acc += sizes[name]
    if change_fraction > 0 and not picked and order:
        name = min(order, key=lambda n: abs(sizes[n] - target))
        picked.add(name)
        acc = sizes[name]

    # new layout: base tensors in their order, new ones inserted by name
    entries = [(name, t["dtype"], tuple(t["shape"]), sizes[name], ("base", t)) for name, t in tensors]
    for name, shape in add_tensors or []:
        if name in header or any(e[0] == name for e in entries):
            raise ValueError(f"tensor {name!r} already exists")
        shape = tuple(int(s) for s in shape)
        entry = (name, st_dtype, shape, math.prod(shape) * esize, ("new", None))
        pos = next((i for i, e in enumerate(entries) if e[0] > name), len(entries))
        entries.insert(pos, entry)
    head = _header_bytes([e[:4] for e in entries], metadata)

    changed, added = [], []
    src = os.open(base, os.O_RDONLY)
    dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(dst, head)
        off = len(head)
        for name, dt, shape, nbytes, (origin, t) in entries:
            info = {"name": name, "shape": list(shape), "dtype": dt, "bytes": nbytes, "offset": off}
            if origin == "new":
                _generate_into(dst, _rng(seed, name, "add"), math.prod(shape), dt, "linear")
                added.append(info)
            elif name in picked:
                _perturb(src, dst, data_start + t["data_offsets"][0], nbytes, dt, _rng(seed, name, "delta"), delta)
                changed.append(info)
            else:
                _copy_range(src, dst, data_start + t["data_offsets"][0], nbytes)
            off += nbytes
    finally:
        os.close(src)
        os.close(dst)
    return {
        "base": str(base),
        "path": str(out),
        "bytes": os.path.getsize(out),
        "tensor_bytes": total,
        "change_fraction": round(acc / total, 6) if total else 0.0,
        "changed_bytes": acc,
        "added_bytes": sum(a["bytes"] for a in added),
        "unchanged": len(tensors) - len(changed),
        "changed": changed,
        "added": added,
        "header_bytes": {"base": data_start, "out": len(head)},
        "seed": seed,
    }


def _perturb(src: int, dst: int, offset: int, nbytes: int, st_dtype: str, bg, delta: float) -> None:
    """Append ``nbytes`` of ``src`` at ``offset`` (elements of ``st_dtype``) plus noise to ``dst``."""
    esize = DTYPES[_ST_TO_CLI[st_dtype]][1]
    unit = np.uint16 if esize == 2 else np.uint32
    step = _CHUNK * esize
    q = _quantiles().astype(np.float32)
    done = 0
    while done < nbytes:
        want = min(step, nbytes - done)
        raw = os.pread(src, want, offset + done)
        if len(raw) != want:
            raise EOFError("base file ended early")
        x = _from_bits(np.frombuffer(raw, unit), st_dtype)
        rms = float(np.sqrt(np.mean(x * x, dtype=np.float64))) or 1e-3
        x += q[_random_u16(bg, x.size)] * np.float32(delta * rms)
        _write_all(dst, _to_bits(x, st_dtype))
        done += want


# --------------------------------------------------------------------------- CLI


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring). Prints JSON on stdout."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "finetune":
        ap = argparse.ArgumentParser(prog="synth_model.py finetune", description="Perturb tensors of BASE and add new ones.")
        ap.add_argument("base")
        ap.add_argument("out")
        ap.add_argument("--change-fraction", type=float, default=0.10, help="fraction of tensor bytes to change (0..1)")
        ap.add_argument("--add-tensor", action="append", default=[], metavar="NAME", help="add a new tensor (repeatable)")
        ap.add_argument("--add-shape", type=_shape, default=None, help="shape of added tensors, e.g. 4096 or 64,4096 (default: (hidden,))")
        ap.add_argument("--seed", type=int, default=1)
        ap.add_argument("--delta", type=float, default=0.05, help="noise std relative to each tensor's RMS")
        a = ap.parse_args(argv[1:])
        shape = a.add_shape
        if shape is None and a.add_tensor:
            header, _ = read_header(a.base)
            emb = header.get("model.embed_tokens.weight") or header.get("lm_head.weight")
            shape = (emb["shape"][-1],) if emb else (4096,)
        result = finetune(a.base, a.out, a.change_fraction, [(n, shape) for n in a.add_tensor], a.seed, a.delta)
    else:
        ap = argparse.ArgumentParser(prog="synth_model.py", description="Write a synthetic LLaMA-style safetensors model.")
        ap.add_argument("out")
        size = ap.add_mutually_exclusive_group(required=True)
        size.add_argument("--params", type=float, help="number of parameters, e.g. 1e9")
        size.add_argument("--size-gib", type=float, help="target file size in GiB")
        ap.add_argument("--dtype", choices=sorted(DTYPES), default="f16")
        ap.add_argument("--vocab", type=int, default=None, help="vocabulary size (default 32000, less for tiny models)")
        ap.add_argument("--seed", type=int, default=0)
        a = ap.parse_args(argv)
        if a.params is not None:
            cfg = plan_config(a.params, a.vocab)
        else:
            cfg = config_for_size(a.size_gib, a.dtype, a.vocab)
        result = write_model(a.out, cfg, a.dtype, a.seed)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
