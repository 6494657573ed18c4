"""Each merge strategy on small hand-made tensors, in fp32, fp16 and bf16.

Expected values are written out by hand from each formula (see docs/merge.md); the
inputs are dyadic so every expected result is exact in all three dtypes, and the
dtype round trip goes through tvcfs.dtypes (checked against torch in
test_dtypes.py) and, independently, torch's own cast.
"""

import hashlib
import math

import numpy as np
import pytest

from tvcfs import dtypes
from tvcfs.merge import strategies as S
from tvcfs.merge.strategies import MissingBaseError, StrategyError, get_strategy, parse_params, parse_strategy_spec

torch = pytest.importorskip("torch")
TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
DTYPES = ["F32", "F16", "BF16"]

BASE = [1.0, 1.0, 1.0, 1.0]
OURS = [1.5, 3.0, -1.0, 0.0]  # deltas +0.5 +2 -2 -1
THEIRS = [0.5, 2.0, 3.0, -3.0]  # deltas -0.5 +1 +2 -4


def as_dtype(values, name):
    """float list -> raw bytes in dtype `name` (torch cast) -> float32 via tvcfs."""
    raw = tvcfs_bytes = dtypes.from_float32(np.array(values, dtype=np.float32), name)
    t = torch.tensor(values, dtype=torch.float32).to(TORCH[name])
    assert raw == t.view(torch.int16 if t.element_size() == 2 else torch.int32).numpy().tobytes()
    return dtypes.to_float32(tvcfs_bytes, name)


def run(name, dt, params=None, base=BASE, ours=OURS, theirs=THEIRS, key=""):
    s = get_strategy(name, params or {})
    b = None if base is None else as_dtype(base, dt)
    out = s(b, as_dtype(ours, dt), as_dtype(theirs, dt), key=key)
    assert out.dtype == np.float32
    # cast back to the tensor's dtype, as the repository merge does, and compare with torch's cast
    back = dtypes.from_float32(out, dt)
    t = torch.from_numpy(out.copy()).to(TORCH[dt])
    assert back == t.view(torch.int16 if t.element_size() == 2 else torch.int32).numpy().tobytes()
    return dtypes.to_float32(back, dt).tolist()


@pytest.mark.parametrize("dt", DTYPES)
def test_take_sides(dt):
    assert run("ours", dt) == OURS
    assert run("theirs", dt) == THEIRS
    assert run("base", dt) == BASE
    with pytest.raises(MissingBaseError):
        run("base", dt, base=None)


@pytest.mark.parametrize("dt", DTYPES)
def test_average_ours_theirs(dt):
    # 0.25*ours + 0.75*theirs
    assert run("average-ours-theirs", dt, {"alpha": "0.25"}) == [0.75, 2.25, 2.0, -2.25]
    # default alpha 0.5: plain mean; works without a base
    assert run("average-ours-theirs", dt, base=None) == [1.0, 2.5, 1.0, -1.5]
    assert run("average", dt, {"alpha": 1}) == OURS


@pytest.mark.parametrize("dt", DTYPES)
def test_average_all(dt):
    # 0.5*ours + 0.25*theirs + 0.25*base
    assert run("average-all", dt, {"alpha1": 0.5, "alpha2": 0.25}) == [1.125, 2.25, 0.5, -0.5]
    with pytest.raises(MissingBaseError):
        run("average-all", dt, base=None)


@pytest.mark.parametrize("dt", DTYPES)
def test_average_with_base(dt):
    # 0.75*ours + 0.25*base ; 0.75*theirs + 0.25*base
    assert run("average-ours-base", dt, {"alpha": 0.75}) == [1.375, 2.5, -0.5, 0.25]
    assert run("average-theirs-base", dt, {"alpha": 0.75}) == [0.625, 1.75, 2.5, -2.0]
    assert run("average-ours-original", dt) == [1.25, 2.0, 0.0, 0.5]


@pytest.mark.parametrize("dt", DTYPES)
def test_task_arithmetic(dt):
    # base + lambda*(d_ours + d_theirs); deltas sum to [0, 3, 0, -5]
    assert run("task-arithmetic", dt) == [1.0, 4.0, 1.0, -4.0]
    assert run("task-arithmetic", dt, {"lambda": 0.5}) == [1.0, 2.5, 1.0, -1.5]


@pytest.mark.parametrize("dt", DTYPES)
def test_ties(dt):
    # density 1: no trimming. deltas ours [.5, 2, -2, -1], theirs [-.5, 1, 2, -4]
    # sums [0, 3, 0, -5] -> elected signs [+, +, +, -] (0 counts as +)
    # agreeing entries: [.5] -> .5 ; [2, 1] -> 1.5 ; [2] -> 2 ; [-1, -4] -> -2.5
    assert run("ties", dt, {"density": 1}) == [1.5, 2.5, 3.0, -1.5]
    # density 0.5: keep top-2 magnitudes of each delta:
    #   ours [0, 2, -2, 0], theirs [0, 0, 2, -4]; sums [0, 2, 0, -4] -> [+, +, +, -]
    #   entry0: none -> 0; entry1: [2] -> 2; entry2: [2] (ours -2 disagrees) -> 2; entry3: [-4]
    assert run("ties", dt, {"density": 0.5}) == [1.0, 3.0, 3.0, -3.0]
    # lambda scales the merged task vector
    assert run("ties", dt, {"density": 0.5, "lambda": 0.5}) == [1.0, 2.0, 2.0, -1.0]


def test_ties_trim_keeps_exactly_k():
    d = np.array([0.1, -5.0, 3.0, 0.2, -0.3, 4.0], dtype=np.float32)
    assert S.trim_magnitude(d, 0.5).tolist() == [0, -5.0, 3.0, 0, 0, 4.0]
    assert S.trim_magnitude(d, 0.1).tolist() == [0.0] * 6  # int(0.6) == 0
    assert S.trim_magnitude(d, 1.0).tolist() == d.tolist()


def _expected_dare(base, ours, theirs, density, lam, seed, key):
    """Independent re-derivation of the documented DARE masks."""
    h = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(h[:16], "little"))
    b = np.array(base, dtype=np.float64)
    total = np.zeros_like(b)
    masks = []
    for side in (ours, theirs):
        keep = rng.random(b.shape) < density
        masks.append(keep)
        total += np.where(keep, (np.array(side) - b) / density, 0.0)
    return (b + lam * total).tolist(), masks


@pytest.mark.parametrize("dt", DTYPES)
def test_dare(dt):
    want, masks = _expected_dare(BASE, OURS, THEIRS, 0.5, 1.0, 7, "w")
    got = run("dare", dt, {"density": 0.5, "seed": 7}, key="w")
    assert got == want
    # reproducible, and the tensor name changes the stream
    assert run("dare", dt, {"density": 0.5, "seed": 7}, key="w") == got
    # density 1 keeps everything: task arithmetic
    assert run("dare", dt, {"density": 1.0}) == [1.0, 4.0, 1.0, -4.0]


def test_dare_statistics():
    # each delta entry survives with probability density and is scaled by 1/density
    n = 200_000
    b = np.zeros(n, dtype=np.float32)
    o = np.ones(n, dtype=np.float32)
    out = S.dare(b, o, b, density=0.25, seed=3, key="x")
    vals = set(np.unique(out).tolist())
    assert vals == {0.0, 4.0}
    assert abs((out != 0).mean() - 0.25) < 0.005
    assert abs(out.mean() - 1.0) < 0.02  # unbiased: E[mask/density] = 1
    assert not np.array_equal(out, S.dare(b, o, b, density=0.25, seed=3, key="y"))


@pytest.mark.parametrize("dt", DTYPES)
def test_slerp(dt):
    # orthogonal: Omega = pi/2, sin(Omega) = 1
    # t=0.5: sin(pi/4)*ours + sin(pi/4)*theirs
    r = math.sin(math.pi / 4)
    got = run("slerp", dt, {"t": 0.5}, base=None, ours=[2.0, 0.0], theirs=[0.0, 1.0])
    want = as_dtype([2 * r, r], dt).tolist()
    assert got == want
    # t=1/3: sin(2/3*pi/2)*ours + sin(1/3*pi/2)*theirs = [2*sin(pi/3), sin(pi/6)]
    got = run("slerp", dt, {"t": 1 / 3}, base=None, ours=[2.0, 0.0], theirs=[0.0, 1.0])
    want = np.array([2 * math.sin(math.pi / 3), 0.5])
    tol = {"F32": 1e-6, "F16": 1e-3, "BF16": 8e-3}[dt]
    np.testing.assert_allclose(got, want, rtol=tol)
    # colinear (cos = 1 > 0.9995): lerp
    assert run("slerp", dt, {"t": 0.25}, base=None, ours=[1.0, 2.0], theirs=[2.0, 4.0]) == [1.25, 2.5]
    # endpoints
    assert run("slerp", dt, {"t": 0}, ours=OURS, theirs=THEIRS) == OURS
    assert run("slerp", dt, {"t": 1}, ours=OURS, theirs=THEIRS) == THEIRS


def test_slerp_general_angle_matches_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 4)).astype(np.float32)
    b = rng.normal(size=(8, 4)).astype(np.float32)
    t = 0.3
    ua = a.ravel().astype(np.float64) / np.linalg.norm(a)
    ub = b.ravel().astype(np.float64) / np.linalg.norm(b)
    om = math.acos(float(ua @ ub))
    want = (math.sin((1 - t) * om) * a.astype(np.float64) + math.sin(t * om) * b.astype(np.float64)) / math.sin(om)
    got = S.slerp(None, a, b, t=t)
    assert got.shape == (8, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        S.average_ours_theirs(None, np.zeros(3, np.float32), np.zeros(4, np.float32))


def test_registry_and_parsing():
    assert set(S.STRATEGIES) == {
        "ours", "theirs", "base", "average-ours-theirs", "average-all", "average-ours-base",
        "average-theirs-base", "task-arithmetic", "ties", "dare", "slerp",
    }
    with pytest.raises(StrategyError, match="unknown merge strategy 'avrage'.*average-ours-theirs"):
        get_strategy("avrage")
    with pytest.raises(StrategyError, match="no parameter 'beta'.*alpha"):
        get_strategy("average-ours-theirs", {"beta": 1})
    assert get_strategy("average-ours-theirs", {"beta": 1}, strict=False).params == {}
    with pytest.raises(StrategyError, match="outside"):
        get_strategy("average-ours-theirs", {"alpha": "1.5"})
    with pytest.raises(StrategyError, match="not a valid float"):
        get_strategy("slerp", {"t": "abc"})
    with pytest.raises(StrategyError, match="NAME=VALUE"):
        parse_params(["alpha"])
    assert parse_params(["alpha=0.3", "t=0.2,seed=4"]) == {"alpha": "0.3", "t": "0.2", "seed": "4"}

    glob, s = parse_strategy_spec("ties")
    assert glob is None and s.name == "ties" and s.params == {}
    glob, s = parse_strategy_spec("ties:density=0.3,lambda=0.5", {"alpha": "0.1", "density": "0.9"})
    assert glob is None and dict(s.params) == {"density": 0.3, "lambda": 0.5}
    glob, s = parse_strategy_spec("*.bias=average-ours-theirs", {"alpha": "0.1"})
    assert glob == "*.bias" and dict(s.params) == {"alpha": 0.1}
    glob, s = parse_strategy_spec("encoder.*=slerp:t=0.7")
    assert glob == "encoder.*" and dict(s.params) == {"t": 0.7}
    assert str(s) == "slerp:t=0.7"
    with pytest.raises(StrategyError, match="no parameter"):
        parse_strategy_spec("slerp:alpha=0.2")
    assert get_strategy("dare", {"seed": "12"}).params["seed"] == 12


def test_strategy_names_in_help():
    """The CLI lists the strategies without importing numpy; the list must match."""
    from tvcfs.cli.merge import STRATEGY_NAMES
    from tvcfs.merge.strategies import STRATEGIES

    assert tuple(STRATEGIES) == STRATEGY_NAMES


STREAMED = ["average-ours-theirs:alpha=0.3", "average-all:alpha1=0.2,alpha2=0.45", "average-ours-base:alpha=0.7",
            "average-theirs-base", "task-arithmetic:lambda=0.6", "dare:density=0.35,seed=9,lambda=1.5", "base"]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("spec", STREAMED)
def test_streamer_slices_are_bit_identical_to_whole_tensor(spec, dt):
    """A streamable strategy applied slice by slice (irregular slice sizes, as the
    repository merge does leaf by leaf) gives the whole-tensor result bit for bit,
    DARE's masks included; the encoded bytes are equal too."""
    _, s = parse_strategy_spec(spec)
    n = 10_007
    rng = np.random.default_rng(11)
    b, o, t = (dtypes.to_float32(dtypes.from_float32(rng.normal(size=n).astype(np.float32), dt), dt)
               for _ in range(3))
    whole = s(b, o, t, key="enc.w")
    fn = s.streamer("enc.w", n)
    assert s.streamable and fn is not None
    cuts = [0, 1, 2, 100, 4096, 4097, 9000, n]
    parts = [fn(b[i:j], o[i:j], t[i:j], i) for i, j in zip(cuts, cuts[1:])]
    got = np.concatenate(parts)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), whole.view(np.uint32))
    assert b"".join(dtypes.from_float32(p, dt) for p in parts) == dtypes.from_float32(whole, dt)


@pytest.mark.parametrize("density", [0.0, 0.001, 0.3, 0.5, 0.999, 1.0])
def test_magnitude_trim_equals_stable_argsort(density):
    """The threshold selection of MagnitudeTrim, fed and applied in pieces, keeps
    exactly the entries trim_magnitude's stable argsort keeps: many equal
    magnitudes (ties broken by position), signed zeros, NaNs and infinities."""
    rng = np.random.default_rng(13)
    n = 20_011
    d = (rng.integers(-6, 7, n) * 0.5).astype(np.float32)  # few distinct magnitudes: many ties
    d[rng.integers(0, n, 50)] = np.nan
    d[rng.integers(0, n, 5)] = np.inf
    d[rng.integers(0, n, 30)] = -0.0
    want = S.trim_magnitude(d, density)
    for cuts in ([0, n], [0, 1, 4096, 9999, 15000, n]):
        tr = S.MagnitudeTrim(n, density)
        for i, j in zip(cuts, cuts[1:]):
            tr.feed(i, d[i:j])
        tr.finish()
        got = np.concatenate([tr.apply(i, d[i:j]) for i, j in zip(cuts, cuts[1:])])
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    with pytest.raises(ValueError, match="in order"):
        S.MagnitudeTrim(n, density).finish().apply(5, d[5:9])
    # when k reaches into the NaNs, they are taken in position order too
    k_all = S.trim_magnitude(d, (n - 10) / n)
    tr = S.MagnitudeTrim(n, (n - 10) / n)
    tr.feed(0, d)
    assert np.array_equal(tr.finish().apply(0, d).view(np.uint32), k_all.view(np.uint32))


@pytest.mark.parametrize("dt", DTYPES)
def test_ties_two_pass_is_bit_identical_to_whole_tensor(dt):
    _, s = parse_strategy_spec("ties:density=0.3,lambda=0.8")
    assert s.streamable and s.two_pass
    n = 10_007
    rng = np.random.default_rng(14)
    b, o, t = (dtypes.to_float32(dtypes.from_float32((rng.integers(-8, 9, n) / 4).astype(np.float32), dt), dt)
               for _ in range(3))
    whole = s(b, o, t, key="w")
    acc = s.first_pass("w", n)
    cuts = [0, 8192, n]
    for i, j in zip(cuts, cuts[1:]):
        acc.feed(b[i:j], o[i:j], t[i:j], i)
    fn = s.streamer("w", n, acc.result())
    cuts = [0, 1, 2, 100, 4097, 9000, n]
    got = np.concatenate([fn(b[i:j], o[i:j], t[i:j], i) for i, j in zip(cuts, cuts[1:])])
    assert np.array_equal(got.view(np.uint32), whole.view(np.uint32))
    # and the whole-tensor path still equals the argsort-based trim
    do = S.trim_magnitude(o - b, 0.3)
    dtt = S.trim_magnitude(t - b, 0.3)
    deltas = np.stack([do, dtt])
    elected = np.where(deltas.sum(axis=0) >= 0, np.float32(1), np.float32(-1))
    agree = np.sign(deltas) == elected
    merged = np.where(agree, deltas, np.float32(0)).sum(axis=0) / np.maximum(agree.sum(axis=0).astype(np.float32), np.float32(1))
    ref = b + np.float32(0.8) * merged
    assert np.array_equal(whole.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("t", [0.3, 0.5])
def test_slerp_two_pass_is_bit_identical_to_whole_tensor(dt, t):
    """slerp streamed in two passes — sums fed block-aligned pieces, then any
    slices combined — gives the whole-tensor result bit for bit, in the general
    (non-colinear) and the colinear (lerp) case."""
    _, s = parse_strategy_spec(f"slerp:t={t}")
    assert s.streamable and s.two_pass
    n = 3 * S.SUM_BLOCK + 1234
    rng = np.random.default_rng(12)
    o = dtypes.to_float32(dtypes.from_float32(rng.normal(size=n).astype(np.float32), dt), dt)
    for th in (dtypes.to_float32(dtypes.from_float32(rng.normal(size=n).astype(np.float32), dt), dt),
               dtypes.to_float32(dtypes.from_float32(o * np.float32(1.5), dt), dt)):
        whole = s(None, o, th)
        sums = (0.0, 0.0, 0.0)
        for i in range(0, n, 2 * S.SUM_BLOCK):  # first pass in pieces starting on block boundaries
            sums = S.slerp_sums(o[i:i + 2 * S.SUM_BLOCK], th[i:i + 2 * S.SUM_BLOCK], sums)
        assert sums == S.slerp_sums(o, th)
        fn = s.streamer("w", n, sums)
        cuts = [0, 5, 8192, 9000, 20000, n]
        got = np.concatenate([fn(None, o[i:j], th[i:j], i) for i, j in zip(cuts, cuts[1:])])
        assert np.array_equal(got.view(np.uint32), whole.view(np.uint32))
    with pytest.raises(ValueError, match="first pass"):
        s.streamer("w", n)
    with pytest.raises(ValueError, match="block boundary"):
        s.first_pass("w", n).feed(None, o[5:10], th[5:10], 5)


def test_dare_slice_masks_are_the_whole_tensor_draws():
    """The positional masks are exactly the draws of the documented generator:
    draws [offset, offset+k) for ours and [n+offset, n+offset+k) for theirs."""
    n, off, k = 1000, 613, 77
    b = np.zeros(k, np.float32)
    o = np.ones(k, np.float32)
    h = hashlib.sha256(b"4\0x").digest()
    draws = np.random.default_rng(int.from_bytes(h[:16], "little")).random(2 * n)
    keep_o = draws[off:off + k] < 0.5
    keep_t = draws[n + off:n + off + k] < 0.5
    got_o = S.dare(b, o, b, density=0.5, seed=4, key="x", offset=off, total=n)
    got_t = S.dare(b, b, o, density=0.5, seed=4, key="x", offset=off, total=n)
    assert got_o.tolist() == np.where(keep_o, 2.0, 0.0).tolist()
    assert got_t.tolist() == np.where(keep_t, 2.0, 0.0).tolist()
