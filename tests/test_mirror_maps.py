"""Property tests for :mod:`proxopt.mirror_maps` (THEORY.md §5).

A mirror map is given by a continuous increasing projection ``P_beta``
(``to_primal``) with ``grad Phi = P_beta^{-1}`` (``to_dual``) [MD, Thm 1].
Checked here: the round trip ``P(P^{-1}(w)) = w`` up to the conditioning of
``P`` (including points a few ulps from ±1 in float32 and float64), the range
``[q_1, q_d]``, (strict) monotonicity, the inverse-function derivative, autograd
``gradcheck``, ``Phi' = P^{-1}`` and ``Phi(w) = int_0^w P^{-1}`` by quadrature,
the Bregman divergence against its definition and its strong-convexity lower
bound, the ``beta -> inf`` limits against ``hard``, and the softmax map's
simplex facts.

References:
    [MD] Ajanthan, Gupta, Torr, Hartley, Dokania. Mirror Descent View for
    Neural Network Quantization. AISTATS 2021.
"""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.special import softmax as np_softmax

from proxopt import mirror_maps as mm
from proxopt.levels import make_levels, nearest

DTYPES = (torch.float32, torch.float64)
NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}
EPS = {dt: torch.finfo(dt).eps for dt in DTYPES}
TINY = {dt: torch.finfo(dt).tiny for dt in DTYPES}
FAST = settings(max_examples=30, deadline=None)
MANY = settings(max_examples=80, deadline=None)

SCALAR_MAPS = [mm.Tanh(), mm.Linear(), mm.ShiftedTanh()]
BIJECTIVE = [mm.Tanh(), mm.ShiftedTanh()]  # P: R -> (-1, 1) strictly increasing onto the open interval
SOFTMAX_MAPS = [mm.Softmax(), mm.Softmax("ternary"), mm.Softmax(2), mm.Softmax([-0.5, 0.25, 2.0])]
ALL_MAPS = SCALAR_MAPS + SOFTMAX_MAPS

betas = st.one_of(st.sampled_from([1.0, 2.0, 10.0]), st.floats(0.1, 30.0))


def floats_of(dtype, lo, hi):
    width = 32 if dtype == torch.float32 else 64
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=width)


def ulp(t: torch.Tensor) -> torch.Tensor:
    """Spacing of ``t``'s dtype at each entry (np.spacing)."""
    return torch.from_numpy(np.spacing(np.abs(t.detach().numpy()))).to(t.dtype)


def near_one(dtype, k: int, sign: float) -> float:
    """``±1`` moved ``k`` representable steps toward 0 in ``dtype``."""
    npd = NP_DTYPE[dtype]
    x = npd(sign)
    for _ in range(k):
        x = np.nextafter(x, npd(0.0))
    return float(x)


@st.composite
def open_interval_points(draw, dtype):
    """Points of (-1, 1) in ``dtype``: drawn values plus points 1..8 ulps from ±1, and ±0."""
    xs = draw(st.lists(floats_of(dtype, -1.0, 1.0).filter(lambda v: abs(v) < 1.0), min_size=1, max_size=10))
    ks = draw(st.lists(st.integers(1, 8), min_size=1, max_size=4))
    xs += [near_one(dtype, k, s) for k in ks for s in (1.0, -1.0)]
    xs += [0.0, -0.0, 0.5, -0.5]
    return torch.tensor(xs, dtype=dtype)


@st.composite
def simplex_points(draw, d, dtype=torch.float64, min_entry=0.0):
    """Points of the probability simplex in R^d (rows), some on faces, as ``dtype``."""
    n = draw(st.integers(1, 5))
    raw = draw(st.lists(st.lists(st.floats(0.0, 1.0), min_size=d, max_size=d), min_size=n, max_size=n))
    u = np.array(raw, dtype=np.float64) + 1e-3
    u = u / u.sum(-1, keepdims=True)
    u = np.maximum(u, min_entry)
    u = u / u.sum(-1, keepdims=True)
    return torch.tensor(u, dtype=dtype)


# ---------------------------------------------------------------- round trips and range


@pytest.mark.parametrize("m", BIJECTIVE, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES)
@MANY
@given(st.data(), betas)
@example(None, 1.0)
@example(None, 30.0)
def test_round_trip_primal_dual_primal(m, dtype, data, beta):
    """``P(P^{-1}(w)) = w`` up to the rounding of the dual, including a few ulps from ±1."""
    if data is None:
        w = torch.tensor([near_one(dtype, k, s) for k in range(1, 5) for s in (1.0, -1.0)] + [0.0, 0.5],
                         dtype=dtype)
    else:
        w = data.draw(open_interval_points(dtype))
    theta = m.to_dual(w, beta)
    assert theta.dtype == dtype and torch.isfinite(theta).all()
    back = m.to_primal(theta, beta)
    # error = rounding of w's ulp + slope of P times the dual's own rounding; the shifted tanh is a
    # sum of two tanh's that cancel around theta = 0, so there it is accurate to eps absolute only
    floor = 2 * EPS[dtype] if isinstance(m, mm.ShiftedTanh) else 4 * TINY[dtype]
    resolved = w.abs() >= 64 * floor  # P^{-1} preserves the sign where w is resolved (w / beta may underflow)
    assert ((theta > 0) == (w > 0))[resolved].all() and ((theta < 0) == (w < 0))[resolved].all()
    tol = 4 * ulp(w) + 2 * m.primal_derivative(theta, beta).abs() * ulp(theta) + floor
    assert ((back - w).abs() <= tol).all(), (w, back, (back - w).abs() / ulp(w))


@pytest.mark.parametrize("m", BIJECTIVE, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.1, 1.0, 7.0])
def test_to_dual_finite_at_the_closed_interval_ends(m, dtype, beta):
    """``to_dual`` clamps ±1 to the last representable point of the open interval (THEORY.md §5)."""
    w = torch.tensor([1.0, -1.0], dtype=dtype)
    theta = m.to_dual(w, beta)
    assert torch.isfinite(theta).all() and theta[0] > 0 and theta[1] == -theta[0]
    last = torch.tensor([near_one(dtype, 1, 1.0), near_one(dtype, 1, -1.0)], dtype=dtype)
    assert torch.equal(theta, m.to_dual(last, beta))
    back = m.to_primal(theta, beta)
    assert ((back - w).abs() <= 2 * EPS[dtype]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(st.data(), betas)
def test_linear_round_trip_on_the_open_interval(dtype, data, beta):
    m = mm.Linear()
    w = data.draw(open_interval_points(dtype))
    theta = m.to_dual(w, beta)
    back = m.to_primal(theta, beta)
    assert ((back - w).abs() <= 2 * ulp(w) + 2 * TINY[dtype]).all()
    torch.testing.assert_close(theta.double(), w.double() / beta, rtol=2 * EPS[dtype], atol=TINY[dtype])


@pytest.mark.parametrize("m", SCALAR_MAPS, ids=repr)
@MANY
@given(st.sampled_from(DTYPES), st.data(), betas)
def test_primal_range_and_monotone(m, dtype, data, beta):
    """``P_beta(R) ⊂ [q_1, q_d]`` and ``P_beta`` is non-decreasing, for any finite dual."""
    big = float(NP_DTYPE[dtype](1e30))
    xs = data.draw(st.lists(floats_of(dtype, -big, big), min_size=1, max_size=10))
    xs += data.draw(st.lists(floats_of(dtype, -3.0, 3.0), min_size=2, max_size=10))
    theta = torch.sort(torch.tensor(xs + [0.0, -0.0, 0.5, -0.5], dtype=dtype)).values
    w = m.to_primal(theta, beta)
    assert w.dtype == dtype and torch.isfinite(w).all()
    assert (w >= m.levels[0]).all() and (w <= m.levels[-1]).all()
    assert (w[1:] >= w[:-1]).all()


@pytest.mark.parametrize("m", BIJECTIVE, ids=repr)
@FAST
@given(st.lists(st.floats(-5.0, 5.0), min_size=2, max_size=20, unique=True), st.floats(0.1, 10.0))
def test_tanh_maps_strictly_increasing(m, scaled, beta):
    """Tanh and shifted tanh are strictly increasing (MD Thm 1: a valid mirror map)."""
    if isinstance(m, mm.Tanh):
        assert m.strict  # the primal (non "-S") form relies on it
    theta = torch.tensor(sorted(scaled), dtype=torch.float64) / beta  # |beta theta| <= 5: no saturation
    theta = theta[torch.cat([torch.tensor([True]), torch.diff(theta) > 1e-6 / beta])]
    w = m.to_primal(theta, beta)
    assert (w[1:] > w[:-1]).all(), (theta, w)


def test_linear_is_not_strict():
    m = mm.Linear()
    assert not m.strict
    w = m.to_primal(torch.tensor([2.0, 3.0, -2.0, -3.0]), 1.0)
    assert w.tolist() == [1.0, 1.0, -1.0, -1.0]


# ---------------------------------------------------------------- derivatives


def _interior_theta(m, theta: torch.Tensor, beta: float) -> torch.Tensor:
    """Drop the linear map's kinks ``|beta theta| = 1``."""
    if isinstance(m, mm.Linear):
        return theta[((theta * beta).abs() - 1.0).abs() > 1e-3]
    return theta


@pytest.mark.parametrize("m", SCALAR_MAPS, ids=repr)
@FAST
@given(st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=6), st.floats(0.2, 5.0))
@example([0.0, 0.5, -0.5, 0.3], 1.0)
def test_gradcheck_to_primal_and_primal_derivative(m, xs, beta):
    theta = _interior_theta(m, torch.tensor(xs, dtype=torch.float64), beta)
    if theta.numel() == 0:
        return
    x = theta.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: m.to_primal(t, beta), (x,), eps=1e-6, atol=1e-6)
    (g,) = torch.autograd.grad(m.to_primal(x, beta).sum(), x)
    torch.testing.assert_close(m.primal_derivative(theta, beta), g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("m", SCALAR_MAPS, ids=repr)
@FAST
@given(st.lists(st.floats(-0.995, 0.995), min_size=1, max_size=6), st.floats(0.2, 8.0))
@example([0.0, 0.5, -0.9], 1.0)
@example([0.0, -0.0, 1e-12], 3.0)
def test_inverse_function_derivative(m, ws, beta):
    """``P'(theta) · (P^{-1})'(w) = 1`` at ``theta = P^{-1}(w)``, both derivatives by autograd."""
    w = torch.tensor(ws, dtype=torch.float64)
    if isinstance(m, mm.Linear):
        w = w[w.abs() < 0.99]
        if w.numel() == 0:
            return
    x = w.clone().requires_grad_(True)
    theta = m.to_dual(x, beta)
    (dual_slope,) = torch.autograd.grad(theta.sum(), x)
    t = theta.detach().clone().requires_grad_(True)
    (primal_slope,) = torch.autograd.grad(m.to_primal(t, beta).sum(), t)
    torch.testing.assert_close(primal_slope * dual_slope, torch.ones_like(w), rtol=1e-8, atol=0)
    torch.testing.assert_close(m.primal_derivative(theta.detach(), beta) * dual_slope, torch.ones_like(w),
                               rtol=1e-8, atol=0)


@pytest.mark.parametrize("m", SCALAR_MAPS, ids=repr)
@MANY
@given(st.sampled_from(DTYPES), st.lists(st.floats(-4.0, 4.0), min_size=1, max_size=12), betas)
def test_in_place_kernels_are_bit_identical(m, dtype, xs, beta):
    """The optimizers' in-place kernels give the reference's bits (tanh: the documented
    ``2 sigma(2 beta theta) - 1`` kernel, within a few ulp of 1)."""
    theta = torch.tensor(xs, dtype=dtype)
    out = torch.full_like(theta, math.nan)
    assert m.to_primal_into(theta, beta, out) is out
    ref = m.to_primal(theta, beta)
    g = torch.linspace(-1.0, 2.0, theta.numel(), dtype=dtype)
    out2 = torch.full_like(theta, math.nan)
    assert m.primal_grad_into(theta, g, beta, out2) is out2
    gref = m.primal_derivative(theta, beta) * g
    if isinstance(m, mm.Tanh):
        assert ((out - ref).abs() <= 4 * EPS[dtype]).all(), (out, ref)
        assert ((out2 - gref).abs() <= 8 * EPS[dtype] * beta * g.abs()).all(), (out2, gref)
    else:
        assert torch.equal(out, ref)
        assert torch.equal(out2, gref)


# ---------------------------------------------------------------- potential and Bregman divergence


@pytest.mark.parametrize("m", SCALAR_MAPS, ids=repr)
@FAST
@given(st.lists(st.floats(-0.99, 0.99), min_size=1, max_size=4), st.floats(0.2, 10.0))
@example([0.0, 0.5, -0.98], 1.0)
def test_potential_is_integral_of_to_dual(m, ws, beta):
    """``Phi(w) = int_0^w P^{-1}(s) ds`` (so ``Phi(0) = 0``) and ``Phi' = P^{-1}`` (central differences)."""
    w = torch.tensor(ws, dtype=torch.float64)
    phi = m.potential(w, beta)

    def dual(s: float) -> float:
        return float(m.to_dual(torch.tensor([s], dtype=torch.float64), beta))

    ref = [quad(dual, 0.0, wi, epsabs=1e-13, epsrel=1e-11)[0] for wi in ws]
    np.testing.assert_allclose(phi.numpy(), ref, rtol=1e-8, atol=1e-12)
    assert float(m.potential(torch.zeros(1, dtype=torch.float64), beta)) == 0.0
    h = 1e-6
    fd = (m.potential(w + h, beta) - m.potential(w - h, beta)) / (2 * h)
    torch.testing.assert_close(fd, m.to_dual(w, beta), rtol=1e-6, atol=1e-6)


def test_potential_closed_forms():
    w = torch.linspace(-0.999, 0.999, 101, dtype=torch.float64)
    for beta in (0.5, 1.0, 4.0):
        ref = ((1 + w) * torch.log1p(w) + (1 - w) * torch.log1p(-w)) / (2 * beta)
        torch.testing.assert_close(mm.Tanh().potential(w, beta), ref, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(mm.Linear().potential(w, beta), w * w / (2 * beta), rtol=1e-15, atol=0)
    # the tanh potential is finite on the closed interval; the linear one is +inf outside it
    assert torch.isfinite(mm.Tanh().potential(torch.tensor([-1.0, 1.0]), 2.0)).all()
    assert mm.Linear().potential(torch.tensor([1.5, -1.01]), 1.0).tolist() == [math.inf, math.inf]


@pytest.mark.parametrize("m", SCALAR_MAPS, ids=repr)
@MANY
@given(st.lists(st.tuples(st.floats(-0.999, 0.999), st.floats(-0.999, 0.999)), min_size=1, max_size=8),
       st.floats(0.1, 20.0))
@example([(0.3, 0.3), (0.0, 0.0), (-0.5, 0.5), (0.9, -0.9)], 1.0)
def test_bregman_properties(m, pairs, beta):
    """``D >= (w - v)²/(2 beta) >= 0`` (``Phi'' >= 1/beta``), ``D(w, w) = 0``, and ``D`` agrees with
    its definition ``Phi(w) - Phi(v) - Phi'(v)(w - v)``."""
    w = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    v = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    d = m.bregman(w, v, beta)
    scale = (m.potential(w, beta).abs() + m.potential(v, beta).abs() + (m.to_dual(v, beta) * (w - v)).abs())
    tol = 64 * EPS[torch.float64] * (1.0 + scale)
    definition = m.potential(w, beta) - m.potential(v, beta) - m.to_dual(v, beta) * (w - v)
    assert ((d - definition).abs() <= tol).all(), (d, definition)
    assert (d >= (w - v) ** 2 / (2.0 * beta) * (1 - 1e-9) - tol).all()
    assert (m.bregman(w, w, beta).abs() <= 64 * EPS[torch.float64] * (1.0 + m.potential(w, beta).abs())).all()


@pytest.mark.parametrize("m", SCALAR_MAPS, ids=repr)
@FAST
@given(st.sampled_from(DTYPES), st.data(), st.floats(0.2, 10.0))
def test_bregman_nonnegative_in_each_dtype(m, dtype, data, beta):
    w = data.draw(open_interval_points(dtype))
    v = torch.flip(w, [0])
    d = m.bregman(w, v, beta)
    assert d.dtype == dtype and torch.isfinite(d).all()
    scale = m.potential(w, beta).abs() + m.potential(v, beta).abs() + (m.to_dual(v, beta) * (w - v)).abs()
    assert (d >= -16 * EPS[dtype] * (1.0 + scale)).all()


def test_bregman_closed_forms():
    w = torch.linspace(-0.99, 0.99, 23, dtype=torch.float64)
    v = torch.flip(w, [0]) * 0.7
    for beta in (0.5, 3.0):
        p, q = (1 + w) / 2, (1 + v) / 2
        kl = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
        torch.testing.assert_close(mm.Tanh().bregman(w, v, beta), kl / beta, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(mm.Linear().bregman(w, v, beta), (w - v) ** 2 / (2 * beta), rtol=1e-15, atol=0)


@FAST
@given(st.lists(st.tuples(st.floats(-0.95, 0.95), st.floats(-0.95, 0.95)), min_size=1, max_size=3),
       st.floats(0.3, 8.0))
def test_shifted_tanh_bregman_by_quadrature(pairs, beta):
    """``D(w, v) = int_v^w (P^{-1}(s) - P^{-1}(v)) ds`` for the shifted-tanh map (no closed form)."""
    m = mm.ShiftedTanh()
    for wi, vi in pairs:
        tv = float(m.to_dual(torch.tensor([vi], dtype=torch.float64), beta))
        ref = quad(lambda s: float(m.to_dual(torch.tensor([s], dtype=torch.float64), beta)) - tv, vi, wi,
                   epsabs=1e-13, epsrel=1e-10)[0]
        got = float(m.bregman(torch.tensor([wi], dtype=torch.float64), torch.tensor([vi], dtype=torch.float64), beta))
        assert abs(got - ref) <= 1e-9 * (1.0 + abs(ref)), (wi, vi, got, ref)


# ---------------------------------------------------------------- beta -> inf and hard rounding


@pytest.mark.parametrize("m", SCALAR_MAPS, ids=repr)
@FAST
@given(st.sampled_from(DTYPES), st.lists(st.floats(-5.0, 5.0), min_size=1, max_size=12))
@example(torch.float32, [0.0, -0.0, 0.25, -0.75, 0.5, -0.5, 1.0])
def test_beta_to_infinity_is_hard(m, dtype, xs):
    """``P_beta(theta) -> hard(theta)``: sign for tanh/linear, nearest of {-1, 0, 1} for shifted tanh."""
    theta = torch.tensor(xs, dtype=dtype)
    hard = m.hard(theta)
    assert hard.dtype == dtype
    assert torch.isin(hard, torch.tensor(m.levels, dtype=dtype)).all()
    assert torch.equal(hard, nearest(theta, m.levels))
    # away from the thresholds (0 for binary, ±1/2 for ternary) the limit is reached exactly
    thresholds = torch.tensor([0.0] if len(m.levels) == 2 else [-0.5, 0.5], dtype=torch.float64)
    far = (theta.double().unsqueeze(-1) - thresholds).abs().min(-1).values > 1e-3
    big = m.to_primal(theta, 1e6)
    assert torch.equal(big[far], hard[far])
    # for the binary maps the distance to it shrinks as beta grows (|tanh(beta theta)|, |clip(beta theta)|
    # increase with beta); the shifted tanh is not monotone in beta near theta = ±1/2
    if len(m.levels) == 2:
        errs = [(m.to_primal(theta[far], b) - hard[far]).abs() for b in (1.0, 4.0, 16.0, 64.0)]
        assert all((e2 <= e1 + EPS[dtype]).all() for e1, e2 in zip(errs, errs[1:]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_tie_rules(dtype):
    z = torch.tensor([0.0, -0.0], dtype=dtype)
    assert mm.Tanh().hard(z).tolist() == [1.0, 1.0]
    assert mm.Linear().hard(z).tolist() == [1.0, 1.0]
    assert mm.ShiftedTanh().hard(z).tolist() == [0.0, 0.0]
    half = torch.tensor([0.5, -0.5], dtype=dtype)
    assert mm.ShiftedTanh().hard(half).tolist() == [1.0, 0.0]  # ties go to the larger level


def test_shifted_tanh_levels_and_oddness():
    m = mm.ShiftedTanh()
    assert m.levels == (-1.0, 0.0, 1.0)
    theta = torch.linspace(-3, 3, 61, dtype=torch.float64)
    for beta in (0.5, 2.0, 9.0):
        torch.testing.assert_close(m.to_primal(-theta, beta), -m.to_primal(theta, beta), rtol=0, atol=1e-16)
        assert float(m.to_primal(torch.zeros(1, dtype=torch.float64), beta)) == 0.0


@FAST
@given(st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=8),
       st.one_of(st.sampled_from([1e-3, 360.0, 649.0, 651.0, 695.0, 700.5, 710.0, 1e4, 1e6]), st.floats(1e-3, 1e5)))
@example([0.0, 1e-300, 0.3, -0.9], 1e4)
@example([1.0, -1.0, 0.999999], 695.0)
def test_shifted_tanh_to_dual_at_any_beta(ws, beta):
    """``P^{-1}`` is finite and odd at every ``beta`` (the anneal reaches 1e4; ``cosh(beta)`` overflows past 710),
    ``P(P^{-1}(w)) = w``, and the potential and Bregman divergence stay finite and non-negative."""
    m = mm.ShiftedTanh()
    w = torch.tensor(ws, dtype=torch.float64)
    theta = m.to_dual(w, beta)
    assert torch.isfinite(theta).all()
    assert torch.equal(m.to_dual(-w, beta), -theta)
    # |dP/dtheta| <= beta, so the round trip's error is at most beta times theta's rounding
    tol = 1e-12 * max(1.0, beta * float(theta.abs().max()))
    torch.testing.assert_close(m.to_primal(theta, beta), w, rtol=0.0, atol=tol)
    phi = m.potential(w, beta)
    assert torch.isfinite(phi).all() and (phi >= -1e-12).all()
    d = m.bregman(w, w.flip(0), beta)
    assert torch.isfinite(d).all() and (d >= -1e-9).all()


# ---------------------------------------------------------------- softmax


@pytest.mark.parametrize("m", SOFTMAX_MAPS, ids=repr)
@FAST
@given(st.sampled_from(DTYPES), st.data(), betas)
def test_softmax_to_primal_is_expected_level(m, dtype, data, beta):
    d = len(m.levels)
    n = data.draw(st.integers(1, 6))
    rows = data.draw(st.lists(st.lists(floats_of(dtype, -20.0, 20.0), min_size=d, max_size=d),
                              min_size=n, max_size=n))
    theta = torch.tensor(rows, dtype=dtype)
    assert m.dual_size == d
    u = m.to_simplex(theta, beta)
    ref_u = np_softmax(beta * theta.double().numpy(), axis=-1)
    np.testing.assert_allclose(u.double().numpy(), ref_u, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                               atol=16 * EPS[dtype])
    w = m.to_primal(theta, beta)
    assert w.shape == (n,) and w.dtype == dtype
    ref_w = ref_u @ np.array(m.levels)
    np.testing.assert_allclose(w.double().numpy(), ref_w, rtol=0, atol=64 * EPS[dtype] * max(map(abs, m.levels)))
    assert (w >= m.levels[0]).all() and (w <= m.levels[-1]).all()


@pytest.mark.parametrize("m", SOFTMAX_MAPS, ids=repr)
@FAST
@given(st.data())
def test_softmax_hard_is_argmax_level_ties_to_larger(m, data):
    d = len(m.levels)
    rows = data.draw(st.lists(st.lists(st.sampled_from([-1.0, 0.0, 2.0, 2.0]), min_size=d, max_size=d),
                              min_size=1, max_size=8))
    theta = torch.tensor(rows, dtype=torch.float64)
    hard = m.hard(theta)
    for row, h in zip(rows, hard.tolist()):
        top = max(row)
        j = max(i for i, v in enumerate(row) if v == top)
        assert h == m.levels[j]
    # beta -> inf: without ties the primal tends to the hard level
    uniq = torch.tensor([[float(i == k) * 3.0 - 1.0 for i in range(d)] for k in range(d)], dtype=torch.float64)
    assert torch.equal(m.hard(uniq), torch.tensor(m.levels, dtype=torch.float64))
    torch.testing.assert_close(m.to_primal(uniq, 1e4), m.hard(uniq), rtol=0, atol=1e-12)


@pytest.mark.parametrize("m", SOFTMAX_MAPS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(st.data())
@example(None)
def test_softmax_init_dual(m, dtype, data):
    """At beta = 1 the initial dual holds ``clip(p)``: mass on the two neighbouring levels."""
    lo, hi = m.levels[0], m.levels[-1]
    if data is None:
        ps = list(m.levels) + [lo - 1.0, hi + 1.0, 0.0, -0.0]
    else:
        ps = data.draw(st.lists(floats_of(dtype, -3.0, 3.0), min_size=1, max_size=12))
    p = torch.tensor(ps, dtype=dtype)
    theta = m.init_dual(p)
    assert theta.shape == (p.numel(), len(m.levels)) and theta.dtype == dtype
    assert torch.isfinite(theta).all()
    w = m.to_primal(theta, 1.0)
    span = hi - lo
    floor = EPS[torch.float32]  # u is floored at float32's eps in every dtype (the same start in each)
    torch.testing.assert_close(w, p.clamp(lo, hi), rtol=0,
                               atol=2 * len(m.levels) * floor * span + 16 * EPS[dtype] * span)
    u = m.to_simplex(theta, 1.0)
    assert ((u > 4 * floor).sum(-1) <= 2).all()


@pytest.mark.parametrize("m", SOFTMAX_MAPS, ids=repr)
@FAST
@given(st.data(), st.floats(0.2, 10.0))
def test_softmax_primal_derivative_and_gradcheck(m, data, beta):
    d = len(m.levels)
    rows = data.draw(st.lists(st.lists(st.floats(-3.0, 3.0), min_size=d, max_size=d), min_size=1, max_size=4))
    theta = torch.tensor(rows, dtype=torch.float64)
    x = theta.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: m.to_primal(t, beta), (x,), eps=1e-6, atol=1e-6)
    (g,) = torch.autograd.grad(m.to_primal(x, beta).sum(), x)
    pd = m.primal_derivative(theta, beta)
    assert pd.shape == theta.shape
    torch.testing.assert_close(pd, g, rtol=1e-10, atol=1e-13)
    # pull-back of a primal gradient: g_u = g_w q
    gw = torch.linspace(-1.0, 1.0, theta.shape[0], dtype=torch.float64)
    torch.testing.assert_close(m.primal_grad_to_dual(theta, gw),
                               gw.unsqueeze(-1) * torch.tensor(m.levels, dtype=torch.float64))


@pytest.mark.parametrize("m", SOFTMAX_MAPS, ids=repr)
@FAST
@given(st.data(), st.floats(0.2, 10.0))
def test_softmax_round_trip_and_inverse_derivative(m, data, beta):
    """``softmax(beta · log(u)/beta) = u`` on the simplex, and ``J_simplex · J_dual`` is the identity on
    the simplex's tangent space (the inverse-function derivative)."""
    d = len(m.levels)
    u = data.draw(simplex_points(d, min_entry=1e-6))
    theta = m.to_dual(u, beta)
    torch.testing.assert_close(m.to_simplex(theta, beta), u, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(m.to_primal(theta, beta), u @ torch.tensor(m.levels, dtype=torch.float64),
                               rtol=1e-12, atol=1e-14)
    u0 = u[0]
    j_dual = torch.autograd.functional.jacobian(lambda x: m.to_dual(x, beta), u0)
    j_simplex = torch.autograd.functional.jacobian(lambda t: m.to_simplex(t, beta), m.to_dual(u0, beta))
    tangent = torch.eye(d, dtype=torch.float64) - 1.0 / d  # columns sum to 0
    torch.testing.assert_close(j_simplex @ j_dual @ tangent, tangent, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("m", SOFTMAX_MAPS, ids=repr)
@FAST
@given(st.data(), st.floats(0.2, 10.0))
def test_softmax_potential_and_bregman(m, data, beta):
    """``Phi = (1/beta) sum u log u`` with gradient ``to_dual`` along the simplex, ``D = KL/beta`` agrees with
    the definition, ``D >= ||u - v||_1² / (2 beta)`` (Pinsker) and ``D(u, u) = 0``."""
    d = len(m.levels)
    u = data.draw(simplex_points(d, min_entry=1e-4))
    v = data.draw(simplex_points(d, min_entry=1e-4))
    n = min(len(u), len(v))
    u, v = u[:n], v[:n]
    phi = m.potential(u, beta)
    torch.testing.assert_close(phi, (u * torch.log(u)).sum(-1) / beta, rtol=1e-12, atol=1e-15)
    D = m.bregman(u, v, beta)
    definition = m.potential(u, beta) - m.potential(v, beta) - (m.to_dual(v, beta) * (u - v)).sum(-1)
    torch.testing.assert_close(D, definition, rtol=1e-9, atol=1e-12)
    assert (D >= (u - v).abs().sum(-1) ** 2 / (2 * beta) - 1e-12).all()
    assert (m.bregman(u, u, beta).abs() <= 1e-14).all()
    # directional derivative of Phi along a tangent direction equals <to_dual(u), t>
    t = torch.zeros(d, dtype=torch.float64)
    t[0], t[-1] = 1.0, -1.0
    h = 1e-7
    fd = (m.potential(u + h * t, beta) - m.potential(u - h * t, beta)) / (2 * h)
    torch.testing.assert_close(fd, (m.to_dual(u, beta) * t).sum(-1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("m", ALL_MAPS, ids=repr)
def test_get_config_round_trip(m):
    cfg = m.config()
    assert cfg["name"] in mm.available()
    assert json.loads(json.dumps(cfg)) == cfg
    buf = io.BytesIO()
    torch.save(cfg, buf)
    buf.seek(0)
    m2 = mm.get(torch.load(buf, weights_only=True))
    assert type(m2) is type(m) and m2 == m and hash(m2) == hash(m) and m2.levels == m.levels
    assert mm.get(m) is m
    assert repr(m2) == repr(m)


def test_get_names_aliases_and_errors():
    assert set(mm.available()) == {"tanh", "linear", "softmax", "shifted_tanh"}
    for alias, cls in [("shiftedtanh", mm.ShiftedTanh), ("ternary_tanh", mm.ShiftedTanh), ("clip", mm.Linear),
                       ("TANH", mm.Tanh)]:
        assert type(mm.get(alias)) is cls
    assert mm.get("softmax", levels="ternary") == mm.Softmax("ternary")
    assert mm.Softmax("ternary") != mm.Softmax()
    assert mm.Softmax(levels=make_levels(2)).dual_size == 4
    with pytest.raises(ValueError, match="Invalid mirror_map"):
        mm.get("sigmoid")
    with pytest.raises(TypeError, match="Invalid mirror_map"):
        mm.get(1.0)
    with pytest.raises(TypeError, match="Invalid mirror_map"):
        mm.get(mm.Tanh(), levels="ternary")
