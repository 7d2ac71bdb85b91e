"""Property tests for :mod:`proxopt.levels` (THEORY.md §1, §3 and §6).

The reference for :func:`proxopt.levels.nearest` is a brute-force argmin of
the *exact* (rational) distance ``|x - q_i|`` over the levels, ties going to
the larger level, so ``sign(0) = +1`` for the binary set.

References:
    THEORY.md §1, §3, §6; [PC] Dockhorn et al., NeurIPS 2021.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxopt.levels import is_binary, levels_tensor, make_levels, nearest, nearest_index

DTYPES = (torch.float32, torch.float64)
NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}
FAST = settings(max_examples=60, deadline=None)


def exact_nearest(x: float, levels) -> float:
    """Brute force: the level with the smallest exact distance to ``x``, ties → larger level."""
    fx = Fraction(x)
    best_d, best_q = None, None
    for q in levels:  # sorted ascending, so `<=` keeps the larger level on a tie
        d = abs(fx - Fraction(q))
        if best_d is None or d <= best_d:
            best_d, best_q = d, q
    return best_q


def near_rounded_midpoint(x: float, levels, dtype: torch.dtype, ulps: int = 2) -> bool:
    """``x`` lies within ``ulps`` ulps of a midpoint that ``dtype`` cannot represent exactly.

    There the answer depends on how the midpoint was rounded, so only
    representable midpoints (where the tie rule is exact) are checked bit-for-bit.
    """
    npd = NP_DTYPE[dtype]
    for a, b in zip(levels, levels[1:]):
        m = (Fraction(a) + Fraction(b)) / 2
        mf = npd(float(m))
        if Fraction(float(mf)) == m:
            continue
        if abs(Fraction(x) - m) <= ulps * Fraction(float(np.spacing(abs(mf)))):
            return True
    return False


def neighbours(v: float, dtype: torch.dtype, k: int = 2):
    """``v`` rounded to ``dtype`` and its ``k`` nearest representable neighbours on each side."""
    npd = NP_DTYPE[dtype]
    c = npd(v)
    out = [c]
    lo = hi = c
    for _ in range(k):
        lo = np.nextafter(lo, npd(-np.inf))
        hi = np.nextafter(hi, npd(np.inf))
        out += [lo, hi]
    return [float(t) for t in out]


level_lists = st.lists(  # make_levels rejects subnormal levels
    st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False, allow_subnormal=False), min_size=2, max_size=6, unique=True
).filter(lambda v: len(set(v)) == len(v))
level_specs = st.one_of(
    st.sampled_from(["binary", "ternary", 1, 2, 3, 4]),
    level_lists,
)


def floats_of(dtype: torch.dtype, lo: float = -6.0, hi: float = 6.0):
    width = 32 if dtype == torch.float32 else 64
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=width)


# ---------------------------------------------------------------- make_levels


def test_named_levels():
    assert make_levels("binary") == (-1.0, 1.0)
    assert make_levels("BINARY") == (-1.0, 1.0)
    assert make_levels() == (-1.0, 1.0)
    assert make_levels("ternary") == (-1.0, 0.0, 1.0)
    assert make_levels("Ternary") == (-1.0, 0.0, 1.0)
    assert make_levels(1) == make_levels("binary")


@pytest.mark.parametrize("k", range(1, 9))
def test_bit_levels_exact_and_symmetric(k):
    """``2**k`` levels, each the double nearest to ``-1 + 2i/(2**k - 1)``, hence odd-symmetric."""
    lv = make_levels(k)
    n = 2 ** k
    assert isinstance(lv, tuple) and len(lv) == n
    assert lv[0] == -1.0 and lv[-1] == 1.0
    assert all(b > a for a, b in zip(lv, lv[1:]))
    for i, q in enumerate(lv):
        assert q == float(Fraction(2 * i - (n - 1), n - 1)), (i, q)
        assert q == -lv[n - 1 - i]
    gaps = np.diff(np.array(lv))
    np.testing.assert_allclose(gaps, 2.0 / (n - 1), rtol=0, atol=1e-15)


@FAST
@given(level_lists)
@example([0.5, -0.5])
@example([3, 1, 2])
def test_list_levels_sorted(values):
    lv = make_levels(values)
    assert lv == tuple(sorted(float(v) for v in values))
    assert all(isinstance(q, float) for q in lv)
    assert make_levels(tuple(values)) == lv
    assert make_levels(torch.tensor(values, dtype=torch.float64)) == lv
    assert make_levels([np.float64(v) for v in values]) == lv
    assert make_levels(lv) == lv  # idempotent


@pytest.mark.parametrize(
    "spec, exc",
    [
        ("quaternary", ValueError),
        ("", ValueError),
        (0, ValueError),
        (9, ValueError),
        (-1, ValueError),
        ([1.0], ValueError),
        ([], ValueError),
        ([0.0, 0.0], ValueError),
        ([0.0, -0.0], ValueError),
        ([1.0, 0.5, 1.0], ValueError),
        ([0.0, math.nan], ValueError),
        ([math.inf, 0.0], ValueError),
        ([-math.inf, 0.0], ValueError),
        (["a", 1.0], TypeError),
        ([True, 0.0], TypeError),
        ([None, 1.0], TypeError),
        (True, TypeError),
        (False, TypeError),
        (2.5, TypeError),
        (None, TypeError),
        ({"levels": 2}, TypeError),
    ],
)
def test_make_levels_errors(spec, exc):
    with pytest.raises(exc, match="Invalid levels"):
        make_levels(spec)


def test_is_binary_and_levels_tensor():
    assert is_binary(make_levels("binary")) and is_binary((-1.0, 1.0))
    assert not is_binary(make_levels("ternary")) and not is_binary((-1.0, 0.5))
    for dt in DTYPES:
        like = torch.zeros(3, dtype=dt)
        t = levels_tensor((-1.0, 0.1, 1.0), like)
        assert t.dtype == dt and t.shape == (3,)
        assert t.tolist() == [float(NP_DTYPE[dt](v)) for v in (-1.0, 0.1, 1.0)]


# ---------------------------------------------------------------- nearest


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", ["binary", "ternary", 2, 3, [-0.1, 2.0], [0.1, 0.7]])
def test_nearest_fixes_levels_and_signed_zeros(dtype, levels):
    lv = make_levels(levels)
    q = torch.tensor(lv, dtype=dtype)
    assert torch.equal(nearest(q, lv), q)
    z = torch.tensor([0.0, -0.0], dtype=dtype)
    expect = exact_nearest(0.0, lv)
    out = nearest(z, lv)
    assert out.tolist() == [float(NP_DTYPE[dtype](expect))] * 2
    assert not torch.signbit(out).any() or expect < 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_sign_tie_rule(dtype):
    x = torch.tensor([0.0, -0.0, -1e-45 if dtype == torch.float32 else -5e-324, 1e-300, -3.0, 7.0], dtype=dtype)
    out = nearest(x)
    assert out.tolist() == [1.0, 1.0, -1.0, 1.0, -1.0, 1.0]
    assert out.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", ["ternary", [-1.0, -0.5, 0.0, 0.5, 1.0], [-2.0, -1.0, 0.0, 3.0], [-1.0, 1.0],
                                    [0.0, 0.25]])
def test_nearest_exact_ties_go_to_larger_level(dtype, levels):
    """Midpoints that are representable are exact ties: they round to the larger level."""
    lv = make_levels(levels)
    mids = [(a + b) / 2.0 for a, b in zip(lv, lv[1:])]
    out = nearest(torch.tensor(mids, dtype=dtype), lv)
    assert out.tolist() == list(lv[1:])


@settings(max_examples=80, deadline=None)
@given(level_specs, st.sampled_from(DTYPES), st.data())
@example("binary", torch.float32, None)
@example([0.1, 0.7], torch.float64, None)
@example(3, torch.float64, None)
def test_nearest_is_exact_argmin(levels, dtype, data):
    """``nearest`` equals the brute-force argmin of the exact distance, ties → larger level."""
    lv = make_levels(levels)
    xs = [0.0, -0.0, lv[0] - 1.0, lv[-1] + 1.0] + list(lv)
    for a, b in zip(lv, lv[1:]):
        xs += neighbours((a + b) / 2.0, dtype)
    if data is not None:
        xs += data.draw(st.lists(floats_of(dtype), min_size=1, max_size=20))
    x = torch.tensor(xs, dtype=dtype)
    out = nearest(x, lv)
    assert out.shape == x.shape and out.dtype == dtype
    npd = NP_DTYPE[dtype]
    for xi, oi in zip(x.tolist(), out.tolist()):
        if near_rounded_midpoint(xi, lv, dtype):
            continue
        assert oi == float(npd(exact_nearest(xi, lv))), (xi, oi, lv)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", [2, 3, 4, [0.0, 1.4], [0.1, 0.7], [0.0, 1.401298464324817e-45], [-1.0, 0.1, 0.3]],
                         ids=str)
def test_nearest_exact_at_rounded_midpoints(dtype, levels):
    """Within an ulp of a midpoint that the dtype cannot represent, still the exact nearest level.

    ``x`` equal to the rounded midpoint ``fl((q_i + q_{i+1})/2)`` lies strictly
    on one side of the true midpoint, so it has one exact nearest level.
    """
    lv = make_levels(levels)
    npd = NP_DTYPE[dtype]
    xs = []
    for a, b in zip(lv, lv[1:]):
        xs += neighbours((a + b) / 2.0, dtype, k=1)
    x = torch.tensor(xs, dtype=dtype)
    out = nearest(x, lv).tolist()
    wrong = [(xi, oi, exact_nearest(xi, lv)) for xi, oi in zip(xs, out)
             if oi != float(npd(exact_nearest(xi, lv)))]
    assert not wrong, wrong
    assert torch.equal(levels_tensor(lv, x)[nearest_index(x, lv)], nearest(x, lv))


@FAST
@given(level_specs, st.sampled_from(DTYPES), st.data())
def test_nearest_monotone_idempotent_and_index(levels, dtype, data):
    lv = make_levels(levels)
    xs = data.draw(st.lists(floats_of(dtype), min_size=2, max_size=30))
    x = torch.tensor(sorted(xs), dtype=dtype)
    out = nearest(x, lv)
    assert (out[1:] >= out[:-1]).all()
    assert torch.equal(nearest(out, lv), out)
    lt = levels_tensor(lv, x)
    assert torch.isin(out, lt).all()
    idx = nearest_index(x, lv)
    assert idx.dtype == torch.int64 and (idx >= 0).all() and (idx < len(lv)).all()
    assert torch.equal(lt[idx], out)


@FAST
@given(st.sampled_from(DTYPES), st.data())
def test_nearest_shapes(dtype, data):
    shape = data.draw(st.lists(st.integers(0, 3), min_size=0, max_size=3))
    x = torch.randn(tuple(shape), dtype=dtype)
    for lv in (make_levels("binary"), make_levels("ternary"), make_levels(2)):
        out = nearest(x, lv)
        assert out.shape == x.shape and out.dtype == dtype
