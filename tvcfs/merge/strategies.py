"""Tensor merge strategies: pure numpy functions on float32 arrays.

Every strategy combines up to three versions of one tensor — ``base`` (the merge
base), ``ours`` (the branch being merged into) and ``theirs`` (the branch being
merged) — all float32 arrays of one shape, and returns a new float32 array of that
shape. Arithmetic is float32 (as the issue requires; dot products and norms used as
scalars are accumulated in float64); the caller casts the result back to the
tensor's dtype with :func:`tvcfs.dtypes.from_float32`.

The strategies, their formulas and sources (see also ``docs/merge.md``):

===================== ============================================== ==================================
name                  result                                         source
===================== ============================================== ==================================
ours                  ours                                           git ``-X ours``; git-theta ``take``
theirs                theirs                                         git ``-X theirs``; git-theta
base                  base                                           git-theta ``take-original``
average-ours-theirs   α·ours + (1−α)·theirs                          git-theta ``average-ours-theirs``
average-all           α₁·ours + α₂·theirs + (1−α₁−α₂)·base           git-theta ``average-all``
average-ours-base     α·ours + (1−α)·base                            git-theta ``average-ours-original``
average-theirs-base   α·theirs + (1−α)·base                          git-theta ``average-theirs-original``
task-arithmetic       base + λ·((ours−base) + (theirs−base))         arXiv 2212.04089; mergekit
ties                  base + λ·disjoint_mean(trim(δ), elect(δ))      arXiv 2306.01708; mergekit ``ties``
dare                  base + λ·Σ bernoulli(d)·δ/d                    arXiv 2311.03099; mergekit ``dare_linear``
slerp                 sin((1−t)Ω)/sinΩ·ours + sin(tΩ)/sinΩ·theirs    mergekit ``slerp`` (lerp if |cosΩ|>0.9995)
===================== ============================================== ==================================

git-theta's averaging code divides the weighted sum by the number of operands
(``np.sum([α·A, (1−α)·B]) / 2``), which halves the parameters; its own help text
states the formula ``α·ours + (1−α)·theirs``. tvcfs implements the stated formula.

Registry: :data:`STRATEGIES` maps names to :class:`StrategyDef`;
:func:`get_strategy` binds parameters (``{"alpha": "0.3"}``) into a callable
:class:`Strategy`; :func:`parse_params` parses ``["alpha=0.3", ...]`` and
:func:`parse_strategy_spec` parses the CLI's ``S``, ``S:k=v,k=v`` and ``GLOB=S``
forms. Errors are :class:`StrategyError` (a ``ValueError``) with the list of valid
names or parameters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

import numpy as np

from ..errors import TvcfsError

__all__ = [
    "StrategyError",
    "MissingBaseError",
    "Param",
    "StrategyDef",
    "Strategy",
    "STRATEGIES",
    "get_strategy",
    "parse_params",
    "parse_strategy_spec",
    "ours",
    "theirs",
    "base",
    "average_ours_theirs",
    "average_all",
    "average_ours_base",
    "average_theirs_base",
    "task_arithmetic",
    "ties",
    "dare",
    "slerp",
    "trim_magnitude",
]


class StrategyError(TvcfsError, ValueError):
    """Unknown strategy name, unknown or invalid parameter, or bad spec syntax."""


class MissingBaseError(StrategyError):
    """The strategy needs the merge-base tensor and there is none (tensor added on
    both sides)."""


F32 = np.float32


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=F32)


def _check(*arrays) -> None:
    shapes = {a.shape for a in arrays if a is not None}
    if len(shapes) > 1:
        raise ValueError(f"tensor shapes differ: {sorted(shapes)}")


def _need_base(b, name):
    if b is None:
        raise MissingBaseError(f"strategy {name!r} needs the merge-base tensor, which does not exist")
    return _f32(b)


# --------------------------------------------------------------------------- strategies


def ours(base, ours, theirs) -> np.ndarray:
    """Take our tensor unchanged (float32 array of ours' shape)."""
    return _f32(ours)


def theirs(base, ours, theirs) -> np.ndarray:
    """Take their tensor unchanged."""
    return _f32(theirs)


def base(base, ours, theirs) -> np.ndarray:
    """Take the merge base's tensor. Raises :class:`MissingBaseError` without one."""
    return _need_base(base, "base")


def average_ours_theirs(base, ours, theirs, *, alpha: float = 0.5) -> np.ndarray:
    """``alpha·ours + (1−alpha)·theirs`` (git-theta ``average-ours-theirs``,
    formula as in its help text). Shapes must match; float32 arithmetic."""
    o, t = _f32(ours), _f32(theirs)
    _check(o, t)
    return F32(alpha) * o + F32(1.0 - alpha) * t


def average_all(base, ours, theirs, *, alpha1: float = 1 / 3, alpha2: float = 1 / 3) -> np.ndarray:
    """``alpha1·ours + alpha2·theirs + (1−alpha1−alpha2)·base`` (git-theta
    ``average-all``). Defaults give the plain mean of the three."""
    b = _need_base(base, "average-all")
    o, t = _f32(ours), _f32(theirs)
    _check(b, o, t)
    return F32(alpha1) * o + F32(alpha2) * t + F32(1.0 - alpha1 - alpha2) * b


def average_ours_base(base, ours, theirs, *, alpha: float = 0.5) -> np.ndarray:
    """``alpha·ours + (1−alpha)·base`` (git-theta ``average-ours-original``)."""
    b = _need_base(base, "average-ours-base")
    o = _f32(ours)
    _check(b, o)
    return F32(alpha) * o + F32(1.0 - alpha) * b


def average_theirs_base(base, ours, theirs, *, alpha: float = 0.5) -> np.ndarray:
    """``alpha·theirs + (1−alpha)·base`` (git-theta ``average-theirs-original``)."""
    b = _need_base(base, "average-theirs-base")
    t = _f32(theirs)
    _check(b, t)
    return F32(alpha) * t + F32(1.0 - alpha) * b


def task_arithmetic(base, ours, theirs, *, lam: float = 1.0) -> np.ndarray:
    """Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic",
    arXiv 2212.04089, eq. 1; mergekit ``task_arithmetic`` without normalisation):
    task vectors ``τ_i = θ_i − θ_base``; result ``θ_base + λ·(τ_ours + τ_theirs)``.
    With λ=1 each side's change is applied in full (the "sum of edits")."""
    b = _need_base(base, "task-arithmetic")
    o, t = _f32(ours), _f32(theirs)
    _check(b, o, t)
    return b + F32(lam) * ((o - b) + (t - b))


def trim_magnitude(delta: np.ndarray, density: float) -> np.ndarray:
    """TIES step 1 "trim" (mergekit ``sparsify.magnitude``): keep the
    ``k = int(density·n)`` entries of largest |delta|, zero the rest. density >= 1
    keeps everything; k == 0 zeros everything. Ties at the threshold are broken by
    position (numpy's stable sort, as mergekit's argsort)."""
    d = _f32(delta)
    if density >= 1:
        return d.copy()
    n = d.size
    k = int(density * n)
    out = np.zeros_like(d)
    if k <= 0:
        return out
    flat = d.reshape(-1)
    idx = np.argsort(-np.abs(flat), kind="stable")[:k]
    out.reshape(-1)[idx] = flat[idx]
    return out


def ties(base, ours, theirs, *, density: float = 0.2, lam: float = 1.0) -> np.ndarray:
    """TIES-Merging (Yadav et al., arXiv 2306.01708, Algorithm 1; mergekit ``ties``
    with ``consensus_method="sum"``, ``normalize=True``, weights 1):

    1. task vectors ``τ_i = θ_i − θ_base`` for ours and theirs;
    2. trim: keep the top ``density`` fraction of each τ_i by magnitude
       (:func:`trim_magnitude`);
    3. elect sign: ``γ = sign(Σ_i τ̂_i)`` per entry (0 counts as +, as mergekit);
    4. disjoint merge: mean of the τ̂_i whose sign equals γ (entries that are 0
       after trimming do not count; no agreeing entry gives 0);
    5. ``θ = θ_base + λ·τ_m``.
    """
    b = _need_base(base, "ties")
    o, t = _f32(ours), _f32(theirs)
    _check(b, o, t)
    deltas = np.stack([trim_magnitude(o - b, density), trim_magnitude(t - b, density)])
    elected = np.where(deltas.sum(axis=0) >= 0, F32(1), F32(-1))
    agree = np.sign(deltas) == elected
    count = agree.sum(axis=0).astype(F32)
    merged = np.where(agree, deltas, F32(0)).sum(axis=0) / np.maximum(count, F32(1))
    return b + F32(lam) * merged


def _rng_for(seed: int, key: str) -> np.random.Generator:
    """Per-tensor generator: sha256 of (seed, tensor key), so each tensor gets an
    independent, reproducible stream whatever order tensors are merged in."""
    h = hashlib.sha256(f"{int(seed)}\0{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:16], "little"))


def dare(base, ours, theirs, *, density: float = 0.5, lam: float = 1.0, seed: int = 0, key: str = "") -> np.ndarray:
    """DARE, drop and rescale (Yu et al., "Language Models are Super Mario",
    arXiv 2311.03099, eq. 2; mergekit ``dare_linear`` with rescaling): for each
    side ``τ_i = θ_i − θ_base``; keep each entry with probability ``density``
    (= 1 − p, p the drop rate), rescale the kept ones by ``1/density``; then
    ``θ_base + λ·(τ̃_ours + τ̃_theirs)``.

    The masks are drawn from ``numpy.random.default_rng`` seeded with
    ``sha256(seed, key)`` (``key`` = tensor name when merging a repository):
    ``rng.random(shape) < density`` for ours, then the same for theirs.
    ``density`` must be in (0, 1]."""
    b = _need_base(base, "dare")
    o, t = _f32(ours), _f32(theirs)
    _check(b, o, t)
    if not 0 < density <= 1:
        raise StrategyError(f"dare: density must be in (0, 1], got {density}")
    rng = _rng_for(seed, key)
    total = np.zeros_like(b)
    for side in (o, t):
        keep = rng.random(b.shape) < density
        total += np.where(keep, (side - b) / F32(density), F32(0))
    return b + F32(lam) * total


def slerp(base, ours, theirs, *, t: float = 0.5, dot_threshold: float = 0.9995, eps: float = 1e-8) -> np.ndarray:
    """Spherical linear interpolation from ours (t=0) to theirs (t=1), as mergekit
    ``slerp`` (``mergekit/merge_methods/slerp.py``): the tensors are flattened,
    normalised (when their norm > eps), ``cosΩ = û_ours·û_theirs``; if
    ``|cosΩ| > dot_threshold`` (0.9995) they are treated as colinear and the result
    is the lerp ``(1−t)·ours + t·theirs``; otherwise
    ``sin((1−t)Ω)/sinΩ·ours + sin(tΩ)/sinΩ·theirs`` on the unnormalised tensors.
    The dot product is accumulated in float64."""
    o, th = _f32(ours), _f32(theirs)
    _check(o, th)
    v0 = o.reshape(-1).astype(np.float64)
    v1 = th.reshape(-1).astype(np.float64)
    n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
    u0 = v0 / n0 if n0 > eps else v0
    u1 = v1 / n1 if n1 > eps else v1
    dot = float(np.dot(u0, u1))
    if abs(dot) > dot_threshold:
        return F32(1.0 - t) * o + F32(t) * th
    omega = np.arccos(dot)
    so = np.sin(omega)
    s0 = np.sin(omega - omega * t) / so
    s1 = np.sin(omega * t) / so
    return F32(s0) * o + F32(s1) * th


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Param:
    """A strategy parameter: CLI ``name``, keyword ``kwarg`` of the function,
    ``default``, converter ``type`` and inclusive range ``(lo, hi)`` (None = open)."""

    name: str
    default: float
    kwarg: str | None = None
    type: type = float
    lo: float | None = None
    hi: float | None = None
    help: str = ""

    def convert(self, strategy: str, value) -> float | int:
        try:
            if self.type is int:
                v = int(value, 0) if isinstance(value, str) else int(value)
            else:
                v = float(value)
        except (TypeError, ValueError):
            raise StrategyError(f"{strategy}: parameter {self.name}={value!r} is not a valid {self.type.__name__}") from None
        if v != v:  # NaN
            raise StrategyError(f"{strategy}: parameter {self.name} is NaN")
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            raise StrategyError(f"{strategy}: parameter {self.name}={v} outside [{self.lo}, {self.hi}]")
        return v


@dataclass(frozen=True)
class StrategyDef:
    """A registered strategy.

    ``passthrough`` is ``"ours"``/``"theirs"``/``"base"`` for strategies that pick a
    side's bytes unchanged (the repository merge then copies the bytes and needs no
    numeric conversion, so they also resolve dtype/shape disagreements and
    non-tensor files); ``needs_base``: fails without a merge-base tensor;
    ``wants_key``: the function takes the tensor name as ``key``.
    """

    name: str
    func: Callable[..., np.ndarray]
    params: tuple[Param, ...] = ()
    needs_base: bool = False
    passthrough: str | None = None
    wants_key: bool = False
    source: str = ""
    summary: str = ""


@dataclass(frozen=True)
class Strategy:
    """A strategy with bound parameter values; call it as
    ``strategy(base, ours, theirs, key="tensor.name") -> float32 ndarray``."""

    definition: StrategyDef
    params: Mapping[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def passthrough(self) -> str | None:
        return self.definition.passthrough

    @property
    def needs_base(self) -> bool:
        return self.definition.needs_base

    def __call__(self, base, ours, theirs, *, key: str = "") -> np.ndarray:
        kwargs = {}
        for p in self.definition.params:
            kwargs[p.kwarg or p.name] = self.params.get(p.name, p.default)
        if self.definition.wants_key:
            kwargs["key"] = key
        return self.definition.func(base, ours, theirs, **kwargs)

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v:g}" for k, v in sorted(self.params.items()))


def _alpha(default=0.5, help="weight of the first operand"):
    return Param("alpha", default, lo=0.0, hi=1.0, help=help)


_DEFS = [
    StrategyDef("ours", ours, passthrough="ours", source="git -X ours; git-theta take-us", summary="keep our tensor"),
    StrategyDef("theirs", theirs, passthrough="theirs", source="git -X theirs; git-theta take-them", summary="take their tensor"),
    StrategyDef("base", base, needs_base=True, passthrough="base", source="git-theta take-original", summary="keep the merge base's tensor"),
    StrategyDef("average-ours-theirs", average_ours_theirs, (_alpha(),), source="git-theta average-ours-theirs",
                summary="alpha*ours + (1-alpha)*theirs"),
    StrategyDef("average-all", average_all,
                (Param("alpha1", 1 / 3, lo=0.0, hi=1.0), Param("alpha2", 1 / 3, lo=0.0, hi=1.0)),
                needs_base=True, source="git-theta average-all",
                summary="alpha1*ours + alpha2*theirs + (1-alpha1-alpha2)*base"),
    StrategyDef("average-ours-base", average_ours_base, (_alpha(),), needs_base=True,
                source="git-theta average-ours-original", summary="alpha*ours + (1-alpha)*base"),
    StrategyDef("average-theirs-base", average_theirs_base, (_alpha(),), needs_base=True,
                source="git-theta average-theirs-original", summary="alpha*theirs + (1-alpha)*base"),
    StrategyDef("task-arithmetic", task_arithmetic, (Param("lambda", 1.0, kwarg="lam"),), needs_base=True,
                source="arXiv 2212.04089; mergekit task_arithmetic",
                summary="base + lambda*((ours-base) + (theirs-base))"),
    StrategyDef("ties", ties,
                (Param("density", 0.2, lo=0.0, hi=1.0), Param("lambda", 1.0, kwarg="lam")),
                needs_base=True, source="arXiv 2306.01708; mergekit ties",
                summary="base + lambda*disjoint_mean(trim(deltas, density), elected sign)"),
    StrategyDef("dare", dare,
                (Param("density", 0.5, lo=1e-9, hi=1.0), Param("lambda", 1.0, kwarg="lam"),
                 Param("seed", 0, type=int, lo=0)),
                needs_base=True, wants_key=True, source="arXiv 2311.03099; mergekit dare_linear",
                summary="base + lambda*sum(bernoulli(density)*delta/density)"),
    StrategyDef("slerp", slerp, (Param("t", 0.5, lo=0.0, hi=1.0),), source="mergekit slerp",
                summary="spherical interpolation ours->theirs at t (lerp when near-colinear)"),
]

STRATEGIES: Mapping[str, StrategyDef] = MappingProxyType({d.name: d for d in _DEFS})

_ALIASES = {
    "average": "average-ours-theirs",
    "avg": "average-ours-theirs",
    "average-ours-original": "average-ours-base",
    "average-theirs-original": "average-theirs-base",
    "original": "base",
    "task_arithmetic": "task-arithmetic",
    "dare_linear": "dare",
    "dare-linear": "dare",
}


def get_strategy(name: str, params: Mapping[str, object] | None = None, *, strict: bool = True) -> Strategy:
    """Look up strategy ``name`` (or an alias such as ``average`` or
    ``average-ours-original``) and bind ``params`` (values as numbers or strings).

    With ``strict`` (default) a parameter the strategy does not take raises
    :class:`StrategyError`; with ``strict=False`` it is ignored (used for global
    ``--param`` options shared by several strategies). Raises
    :class:`StrategyError` for unknown names and out-of-range values.
    """
    canonical = _ALIASES.get(name, name)
    d = STRATEGIES.get(canonical)
    if d is None:
        raise StrategyError(f"unknown merge strategy {name!r}; choose from: {', '.join(STRATEGIES)}")
    known = {p.name: p for p in d.params}
    bound: dict[str, float] = {}
    for k, v in (params or {}).items():
        p = known.get(k)
        if p is None:
            if strict:
                valid = ", ".join(known) or "none"
                raise StrategyError(f"strategy {d.name!r} has no parameter {k!r} (parameters: {valid})")
            continue
        bound[k] = p.convert(d.name, v)
    return Strategy(d, MappingProxyType(bound))


def parse_params(items: Iterable[str] | str | None) -> dict[str, str]:
    """Parse ``["alpha=0.3", "t=0.2"]`` or ``"alpha=0.3,t=0.2"`` into a dict of
    strings (values are converted by :func:`get_strategy`). Raises
    :class:`StrategyError` on items without ``=`` or with an empty name."""
    if items is None:
        return {}
    if isinstance(items, str):
        items = [i for i in items.split(",") if i.strip()]
    out: dict[str, str] = {}
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            k, sep, v = part.partition("=")
            k, v = k.strip(), v.strip()
            if not sep or not k or not v:
                raise StrategyError(f"bad parameter {part!r}: expected NAME=VALUE")
            out[k] = v
    return out


def parse_strategy_spec(spec: str, params: Mapping[str, object] | None = None) -> tuple[str | None, Strategy]:
    """Parse a ``--strategy`` value into ``(glob or None, Strategy)``.

    Forms: ``NAME``, ``NAME:k=v,k=v`` (inline parameters, strict), ``GLOB=NAME`` and
    ``GLOB=NAME:k=v``. The first ``=`` separates the glob unless a ``:`` comes
    before it (then the ``=`` belongs to an inline parameter). Global ``params``
    are applied non-strictly below inline ones.
    """
    spec = spec.strip()
    glob: str | None = None
    colon, eq = spec.find(":"), spec.find("=")
    if eq != -1 and (colon == -1 or eq < colon):
        glob, spec = spec[:eq].strip(), spec[eq + 1 :].strip()
        if not glob:
            raise StrategyError("empty glob in strategy spec")
    name, _, inline = spec.partition(":")
    name = name.strip()
    if not name:
        raise StrategyError(f"missing strategy name in {spec!r}")
    base_strategy = get_strategy(name, params, strict=False)
    inline_params = parse_params(inline) if inline else {}
    if inline_params:
        get_strategy(name, inline_params, strict=True)  # validate names strictly
        merged = dict(base_strategy.params)
        merged.update(inline_params)
        base_strategy = get_strategy(name, merged, strict=True)
    return glob, base_strategy
