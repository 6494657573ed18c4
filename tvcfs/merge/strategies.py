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

Streaming: every computed strategy can be applied to slices of the flattened
tensors and give the elements of the whole-tensor result bit for bit (the same
float32 operations per element); :meth:`Strategy.streamer` returns such a slice
function, which the repository merge uses to compute a merged tensor leaf by leaf.
``dare`` takes the slice's position (``offset``, ``total``) so its masks are the
same draws as for the whole tensor. ``slerp`` and ``ties`` need whole-tensor
statistics, gathered by a first pass over the tensors (:meth:`Strategy.first_pass`):
``slerp`` the norms and dot product (:func:`slerp_sums`, block by block in a fixed
order, so whole and streamed give the same coefficients), ``ties`` the magnitude
threshold of each side's trim (:class:`MagnitudeTrim`, the same selection as the
stable argsort of :func:`trim_magnitude`).

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
    "slerp_sums",
    "slerp_coefficients",
    "MagnitudeTrim",
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


class MagnitudeTrim:
    """:func:`trim_magnitude` of one tensor of ``n`` elements, fed in pieces.

    First pass: :meth:`feed` each piece of δ (any order; offsets in elements), then
    :meth:`finish`: the k-th smallest key −|δ| (``ndarray.partition``, O(n), in
    place) is the threshold; every entry below it is kept, and of the entries equal
    to it the first ``k − (number below)`` by position (NaN keys sort last, as in
    numpy's sort). This is exactly the stable-argsort selection of
    :func:`trim_magnitude`. Second pass: :meth:`apply` the pieces **in order**.
    Memory: one float32 key per element during the first pass (4·n bytes), nothing
    after. Raises ``ValueError`` when :meth:`apply` is called out of order.
    """

    def __init__(self, n: int, density: float):
        self.numel = n
        self.keep_count = n if density >= 1 else int(density * n)
        self.keys = np.empty(n, dtype=F32) if 0 < self.keep_count < n else None
        self.threshold = None
        self.budget = 0
        self.pos = 0

    def feed(self, offset: int, delta) -> None:
        """First pass: record the keys of ``delta`` (a numpy array piece, converted to float32)
        at element ``offset``."""
        if self.keys is not None:
            np.negative(np.abs(_f32(delta).reshape(-1)), out=self.keys[offset:offset + np.size(delta)])

    def finish(self) -> "MagnitudeTrim":
        """End the first pass: compute the threshold and the tie budget, free the keys (4 bytes
        per element); returns ``self``."""
        if self.keys is not None:
            keys, k = self.keys, self.keep_count
            keys.partition(k - 1)
            self.threshold = F32(keys[k - 1])
            below = np.isnan(keys) if np.isnan(self.threshold) else keys < self.threshold
            self.budget = k - (keys.size - int(np.count_nonzero(below)) if np.isnan(self.threshold)
                               else int(np.count_nonzero(below)))
            self.keys = None
        return self

    def apply(self, offset: int, delta) -> np.ndarray:
        """Second pass: ``delta`` (float32 ``ndarray`` of the piece's shape) with the entries
        not kept zeroed. Raises ``ValueError`` unless the pieces come in order of ``offset``
        (elements)."""
        d = _f32(delta)
        if offset != self.pos:
            raise ValueError(f"trim pieces must come in order: expected offset {self.pos}, got {offset}")
        self.pos += d.size
        if self.keep_count >= self.numel:
            return d.copy()
        if self.keep_count <= 0:
            return np.zeros_like(d)
        key = -np.abs(d)
        if np.isnan(self.threshold):
            keep, eq = ~np.isnan(key), np.isnan(key)
        else:
            keep, eq = key < self.threshold, key == self.threshold
        if self.budget > 0:
            idx = np.flatnonzero(eq)[: self.budget]
            keep.reshape(-1)[idx] = True
            self.budget -= idx.size
        return np.where(keep, d, F32(0))


class _TiesPass:
    """First pass of a streamed ``ties``: one :class:`MagnitudeTrim` per side."""

    def __init__(self, total: int, density: float = 0.2, **_):
        self.trims = (MagnitudeTrim(total, density), MagnitudeTrim(total, density))

    def feed(self, base, ours, theirs, offset: int) -> None:
        b = _need_base(base, "ties")
        self.trims[0].feed(offset, _f32(ours) - b)
        self.trims[1].feed(offset, _f32(theirs) - b)

    def result(self) -> tuple:
        return tuple(t.finish() for t in self.trims)


def ties(base, ours, theirs, *, density: float = 0.2, lam: float = 1.0, offset: int = 0,
         trims: tuple | None = None) -> np.ndarray:
    """TIES-Merging (Yadav et al., arXiv 2306.01708, Algorithm 1; mergekit ``ties``
    with ``consensus_method="sum"``, ``normalize=True``, weights 1):

    1. task vectors ``τ_i = θ_i − θ_base`` for ours and theirs;
    2. trim: keep the top ``density`` fraction of each τ_i by magnitude
       (:func:`trim_magnitude`, here through :class:`MagnitudeTrim`);
    3. elect sign: ``γ = sign(Σ_i τ̂_i)`` per entry (0 counts as +, as mergekit);
    4. disjoint merge: mean of the τ̂_i whose sign equals γ (entries that are 0
       after trimming do not count; no agreeing entry gives 0);
    5. ``θ = θ_base + λ·τ_m``.

    Streaming (two passes): given ``trims`` (the finished :class:`MagnitudeTrim`
    of ours and theirs over the whole tensors), the arrays are the slice starting
    at element ``offset``; slices must come in order; the result is that slice of
    the whole result, bit for bit.
    """
    b = _need_base(base, "ties")
    o, t = _f32(ours), _f32(theirs)
    _check(b, o, t)
    do, dt = o - b, t - b
    if trims is None:
        trims = (MagnitudeTrim(do.size, density), MagnitudeTrim(dt.size, density))
        trims[0].feed(0, do)
        trims[1].feed(0, dt)
        trims = tuple(x.finish() for x in trims)
    deltas = np.stack([trims[0].apply(offset, do), trims[1].apply(offset, dt)])
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


def _dare_keep(seed: int, key: str, draw0: int, count: int, density: float) -> np.ndarray:
    """Entries ``draw0 … draw0+count−1`` of the mask stream of :func:`dare`:
    ``rng.random(count) < density`` after ``draw0`` draws of :func:`_rng_for`'s
    generator. ``Generator.random`` takes one 64-bit PCG64 output per float64, so
    ``PCG64.advance(draw0)`` lands on the same draws as drawing them in order."""
    rng = _rng_for(seed, key)
    if draw0:
        rng.bit_generator.advance(draw0)
    return rng.random(count) < density


def dare(base, ours, theirs, *, density: float = 0.5, lam: float = 1.0, seed: int = 0, key: str = "",
         offset: int = 0, total: int | None = None) -> np.ndarray:
    """DARE, drop and rescale (Yu et al., "Language Models are Super Mario",
    arXiv 2311.03099, eq. 2; mergekit ``dare_linear`` with rescaling): for each
    side ``τ_i = θ_i − θ_base``; keep each entry with probability ``density``
    (= 1 − p, p the drop rate), rescale the kept ones by ``1/density``; then
    ``θ_base + λ·(τ̃_ours + τ̃_theirs)``.

    The masks are drawn from ``numpy.random.default_rng`` seeded with
    ``sha256(seed, key)`` (``key`` = tensor name when merging a repository):
    ``rng.random(shape) < density`` for ours, then the same for theirs.
    ``density`` must be in (0, 1].

    Streaming: with ``offset`` and ``total`` (elements), the arrays are the slice
    ``[offset, offset + size)`` of flattened tensors of ``total`` elements, and the
    result is that slice of the whole-tensor result, bit for bit (ours' masks are
    draws ``offset…``, theirs' draws ``total + offset…``; :func:`_dare_keep`)."""
    b = _need_base(base, "dare")
    o, t = _f32(ours), _f32(theirs)
    _check(b, o, t)
    if not 0 < density <= 1:
        raise StrategyError(f"dare: density must be in (0, 1], got {density}")
    n = b.size
    total = n if total is None else int(total)
    acc = np.zeros_like(b)
    for i, side in enumerate((o, t)):
        keep = _dare_keep(seed, key, i * total + offset, n, density).reshape(b.shape)
        acc += np.where(keep, (side - b) / F32(density), F32(0))
    return b + F32(lam) * acc


SUM_BLOCK = 8192  # elements per float64 dot product in :func:`slerp_sums`


def slerp_sums(ours, theirs, acc: tuple = (0.0, 0.0, 0.0)) -> tuple:
    """``(Σo², Σt², Σo·t)`` of two flattened float32 arrays, continuing the running
    sums ``acc``: float64 dot products over consecutive blocks of
    :data:`SUM_BLOCK` elements, added in order. Feeding a tensor in pieces that
    start on block boundaries gives exactly the sums of feeding it whole (the
    repository merge's first pass of a streamed ``slerp``)."""
    o = np.asarray(ours, dtype=F32).reshape(-1)
    t = np.asarray(theirs, dtype=F32).reshape(-1)
    s00, s11, s01 = acc
    for i in range(0, o.size, SUM_BLOCK):
        x = o[i:i + SUM_BLOCK].astype(np.float64)
        y = t[i:i + SUM_BLOCK].astype(np.float64)
        s00 += float(np.dot(x, x))
        s11 += float(np.dot(y, y))
        s01 += float(np.dot(x, y))
    return s00, s11, s01


class _SlerpPass:
    """First pass of a streamed ``slerp``: :func:`slerp_sums` over pieces that start
    on :data:`SUM_BLOCK` boundaries, in order."""

    def __init__(self, total: int, **_):
        self.sums = (0.0, 0.0, 0.0)
        self.pos = 0

    def feed(self, base, ours, theirs, offset: int) -> None:
        if offset != self.pos or offset % SUM_BLOCK:
            raise ValueError(f"slerp first pass: piece at {offset}, expected {self.pos} on a block boundary")
        self.sums = slerp_sums(ours, theirs, self.sums)
        self.pos += np.size(ours)

    def result(self) -> tuple:
        return self.sums


def slerp_coefficients(sums: tuple, t: float, dot_threshold: float = 0.9995, eps: float = 1e-8) -> tuple:
    """``(c0, c1)`` with ``slerp = c0·ours + c1·theirs``, from :func:`slerp_sums`:
    norms ``n_i = √Σ``, each vector normalised when ``n_i > eps`` (else used as is),
    ``cosΩ = Σo·t / (d0·d1)``; ``(1−t, t)`` when ``|cosΩ| > dot_threshold``, else
    ``(sin((1−t)Ω)/sinΩ, sin(tΩ)/sinΩ)`` (mergekit ``slerp``)."""
    s00, s11, s01 = sums
    n0, n1 = np.sqrt(s00), np.sqrt(s11)
    d0 = n0 if n0 > eps else 1.0
    d1 = n1 if n1 > eps else 1.0
    dot = float(s01 / d0 / d1)
    if abs(dot) > dot_threshold:
        return 1.0 - t, t
    omega = np.arccos(dot)
    so = np.sin(omega)
    return np.sin(omega - omega * t) / so, np.sin(omega * t) / so


def slerp(base, ours, theirs, *, t: float = 0.5, dot_threshold: float = 0.9995, eps: float = 1e-8,
          sums: tuple | None = None) -> np.ndarray:
    """Spherical linear interpolation from ours (t=0) to theirs (t=1), as mergekit
    ``slerp`` (``mergekit/merge_methods/slerp.py``): the tensors are flattened,
    normalised (when their norm > eps), ``cosΩ = û_ours·û_theirs``; if
    ``|cosΩ| > dot_threshold`` (0.9995) they are treated as colinear and the result
    is the lerp ``(1−t)·ours + t·theirs``; otherwise
    ``sin((1−t)Ω)/sinΩ·ours + sin(tΩ)/sinΩ·theirs`` on the unnormalised tensors.
    Norms and dot product are accumulated in float64 (:func:`slerp_sums`,
    :func:`slerp_coefficients`); the combination is float32.

    Streaming (two passes): given ``sums`` of the whole tensors (from
    :func:`slerp_sums`), the arrays may be any slice of them and the result is that
    slice of the whole result, bit for bit."""
    o, th = _f32(ours), _f32(theirs)
    _check(o, th)
    if sums is None:
        sums = slerp_sums(o, th)
    c0, c1 = slerp_coefficients(sums, t, dot_threshold, eps)
    return F32(c0) * o + F32(c1) * th


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
        """``value`` (a string from the command line, or a number) as the parameter's type.
        Raises :class:`StrategyError` for a bad value, NaN or one outside ``[lo, hi]``."""
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
    ``wants_key``: the function takes the tensor name as ``key``; ``stream``:
    ``"elementwise"`` when the function can be applied to any slice of the flattened
    tensors (the result is that slice of the whole result, bit for bit),
    ``"positional"`` when it can if also given the slice's ``offset`` and the
    tensor's ``total`` element count (``dare``), ``"twopass"`` when it can with the
    result of a first pass over the whole tensors (``first_pass(total=n, **params)``
    makes an object with ``feed(base, ours, theirs, offset)`` and ``result()``:
    ``slerp``'s norms and dot product, ``ties``' magnitude thresholds), ``None``
    when it needs the whole tensor.
    """

    name: str
    func: Callable[..., np.ndarray]
    params: tuple[Param, ...] = ()
    needs_base: bool = False
    passthrough: str | None = None
    wants_key: bool = False
    stream: str | None = None
    first_pass: Callable | None = None
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
        """The strategy's registered name."""
        return self.definition.name

    @property
    def passthrough(self) -> str | None:
        """``"ours"``/``"theirs"``/``"base"`` for a strategy that picks a side's bytes
        unchanged, else ``None``."""
        return self.definition.passthrough

    @property
    def needs_base(self) -> bool:
        """Whether the strategy fails without a merge-base tensor."""
        return self.definition.needs_base

    @property
    def streamable(self) -> bool:
        """True when :meth:`streamer` gives a slice function (``StrategyDef.stream``)."""
        return self.definition.stream is not None

    def _kwargs(self, key: str) -> dict:
        kwargs = {}
        for p in self.definition.params:
            kwargs[p.kwarg or p.name] = self.params.get(p.name, p.default)
        if self.definition.wants_key:
            kwargs["key"] = key
        return kwargs

    def __call__(self, base, ours, theirs, *, key: str = "") -> np.ndarray:
        return self.definition.func(base, ours, theirs, **self._kwargs(key))

    @property
    def two_pass(self) -> bool:
        """True when :meth:`streamer` needs the result of :meth:`first_pass`."""
        return self.definition.stream == "twopass"

    def first_pass(self, key: str, total: int):
        """For a two-pass strategy, the first-pass accumulator of tensor ``key``
        (``total`` elements): call ``feed(base, ours, theirs, offset)`` on pieces in
        order (pieces of ``slerp`` start on :data:`SUM_BLOCK` boundaries), then pass
        ``result()`` to :meth:`streamer`. Memory: ``ties`` keeps 4 bytes per element
        per side until ``result()``."""
        return self.definition.first_pass(total=total, **self._kwargs(key))

    def streamer(self, key: str, total: int, state=None) -> Callable[..., np.ndarray] | None:
        """For a streamable strategy (``StrategyDef.stream``), a function
        ``f(base, ours, theirs, offset) -> float32 ndarray`` computing elements
        ``[offset, offset + len)`` of the merged tensor ``key`` (``total`` elements)
        from the same slices of the flattened sides (``base`` may be ``None`` if the
        strategy does not need it); the values equal those of the whole-tensor call.
        Two-pass strategies need ``state``, the first pass's ``result()``
        (``ValueError`` without), and their slices must come in order. ``None`` for
        strategies that need the whole tensor."""
        d = self.definition
        kwargs = self._kwargs(key)
        if d.stream == "elementwise":
            return lambda b, o, t, offset: d.func(b, o, t, **kwargs)
        if d.stream == "positional":
            return lambda b, o, t, offset: d.func(b, o, t, offset=offset, total=total, **kwargs)
        if d.stream == "twopass":
            if state is None:
                raise ValueError(f"strategy {d.name!r} streams only with the result of a first pass")
            if d.name == "ties":
                return lambda b, o, t, offset: d.func(b, o, t, offset=offset, trims=state, **kwargs)
            return lambda b, o, t, offset: d.func(b, o, t, sums=state, **kwargs)
        return None

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v:g}" for k, v in sorted(self.params.items()))


def _alpha(default=0.5, help="weight of the first operand"):
    return Param("alpha", default, lo=0.0, hi=1.0, help=help)


_DEFS = [
    StrategyDef("ours", ours, passthrough="ours", stream="elementwise", source="git -X ours; git-theta take-us", summary="keep our tensor"),
    StrategyDef("theirs", theirs, passthrough="theirs", stream="elementwise", source="git -X theirs; git-theta take-them", summary="take their tensor"),
    StrategyDef("base", base, needs_base=True, passthrough="base", stream="elementwise", source="git-theta take-original", summary="keep the merge base's tensor"),
    StrategyDef("average-ours-theirs", average_ours_theirs, (_alpha(),), stream="elementwise", source="git-theta average-ours-theirs",
                summary="alpha*ours + (1-alpha)*theirs"),
    StrategyDef("average-all", average_all,
                (Param("alpha1", 1 / 3, lo=0.0, hi=1.0), Param("alpha2", 1 / 3, lo=0.0, hi=1.0)),
                needs_base=True, stream="elementwise", source="git-theta average-all",
                summary="alpha1*ours + alpha2*theirs + (1-alpha1-alpha2)*base"),
    StrategyDef("average-ours-base", average_ours_base, (_alpha(),), needs_base=True, stream="elementwise",
                source="git-theta average-ours-original", summary="alpha*ours + (1-alpha)*base"),
    StrategyDef("average-theirs-base", average_theirs_base, (_alpha(),), needs_base=True, stream="elementwise",
                source="git-theta average-theirs-original", summary="alpha*theirs + (1-alpha)*base"),
    StrategyDef("task-arithmetic", task_arithmetic, (Param("lambda", 1.0, kwarg="lam"),), needs_base=True,
                stream="elementwise",
                source="arXiv 2212.04089; mergekit task_arithmetic",
                summary="base + lambda*((ours-base) + (theirs-base))"),
    StrategyDef("ties", ties,
                (Param("density", 0.2, lo=0.0, hi=1.0), Param("lambda", 1.0, kwarg="lam")),
                needs_base=True, stream="twopass", first_pass=_TiesPass, source="arXiv 2306.01708; mergekit ties",
                summary="base + lambda*disjoint_mean(trim(deltas, density), elected sign)"),
    StrategyDef("dare", dare,
                (Param("density", 0.5, lo=1e-9, hi=1.0), Param("lambda", 1.0, kwarg="lam"),
                 Param("seed", 0, type=int, lo=0)),
                needs_base=True, wants_key=True, stream="positional", source="arXiv 2311.03099; mergekit dare_linear",
                summary="base + lambda*sum(bernoulli(density)*delta/density)"),
    StrategyDef("slerp", slerp, (Param("t", 0.5, lo=0.0, hi=1.0),), stream="twopass",
                first_pass=_SlerpPass, source="mergekit slerp",
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
