"""Property tests for :mod:`proxopt.quantizers` (THEORY.md §2 and §3).

Every quantizer is checked for: hard outputs in its level set, the tie rule
``sign(±0) = +1``, monotonicity where it is a proximal map, ``derivative``
against autograd and finite differences away from kinks, the in-place
kernels against the reference, and the ``get``/``config`` round trip.
Sign-Swish, ApproxSign and the linear proximal quantizer are also checked
against their closed forms and, for the "jump" member, against a brute-force
proximal minimization.

References:
    [BC] Courbariaux et al., NeurIPS 2015; [BNN] Hubara et al., NeurIPS 2016;
    [BNN+] Darabi et al., 2018; [PC] Dockhorn et al., NeurIPS 2021; [PQ] Bai
    et al., ICLR 2019; [PC++] Lu et al., NeurIPS 2023; Bi-Real Net (ApproxSign),
    Liu et al., ECCV 2018.
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
from scipy.optimize import brentq
from scipy.special import expit

from proxopt import quantizers as qz
from proxopt.levels import levels_tensor, make_levels, nearest

DTYPES = (torch.float32, torch.float64)
NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}
EPS = {dt: torch.finfo(dt).eps for dt in DTYPES}
FAST = settings(max_examples=25, deadline=None)
MANY = settings(max_examples=120, deadline=None)

QUANTIZERS = [
    qz.Identity(),
    qz.Identity(levels="ternary"),
    qz.Sign(),
    qz.Sign(levels="ternary"),
    qz.Sign(levels=2),
    qz.Clip(),
    qz.Clip(levels=[-0.5, 0.25, 2.0]),
    qz.Tanh(),
    qz.SignSwish(),
    qz.ApproxSign(),
    qz.LinearProx(),
    qz.LinearProx(jump=1.0),
    qz.LinearProx(jump=0.4),
    qz.LinearProx("ternary"),
    qz.LinearProx("ternary", jump=1.0),
    qz.LinearProx(2, jump=0.5),
    qz.LinearProx([-0.5, 0.25, 2.0], jump=0.3),
    qz.LinearProx([0.1, 0.7], jump=1.0),
]
IDS = [repr(q) for q in QUANTIZERS]
MONOTONE = [q for q in QUANTIZERS if not isinstance(q, qz.SignSwish)]
LEVELLED = [q for q in QUANTIZERS if q.levels is not None]
BINARY_Q = [q for q in QUANTIZERS if q.levels == (-1.0, 1.0)]


def floats_of(dtype: torch.dtype, lo: float = -6.0, hi: float = 6.0):
    width = 32 if dtype == torch.float32 else 64
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=width)


GRID = torch.linspace(-1.0, 1.0, 65, dtype=torch.float64).tolist()


@st.composite
def theta_batch(draw, dtype=None, lo=-6.0, hi=6.0, min_size=1, max_size=12, grid=True):
    """A 1-D tensor of finite floats of one dtype: drawn values, ±0, ±1 and a grid scaled by a drawn factor."""
    dt = draw(st.sampled_from(DTYPES)) if dtype is None else dtype
    xs = draw(st.lists(floats_of(dt, lo, hi), min_size=min_size, max_size=max_size))
    xs += [0.0, -0.0, 1.0, -1.0]
    if grid:
        c = draw(st.floats(0.1, max(0.1, min(abs(lo), abs(hi)))))
        xs += [c * g for g in GRID]
    return torch.tensor(xs, dtype=dt)


mus = st.one_of(st.sampled_from([1.0, 2.0, 5.0, 10.0]), st.floats(0.25, 60.0, allow_nan=False))


def autograd_derivative(q: qz.Quantizer, theta: torch.Tensor, mu: float) -> torch.Tensor:
    """Elementwise derivative of ``q.value`` by autograd (zero where no graph: piecewise constant)."""
    x = theta.detach().clone().requires_grad_(True)
    y = q.value(x, mu)
    if not y.requires_grad:
        return torch.zeros_like(theta)
    (g,) = torch.autograd.grad(y.sum(), x)
    return g


# ---------------------------------------------------------------- levels and ties


@MANY
@given(st.sampled_from(LEVELLED), theta_batch(), mus)
def test_hard_outputs_are_levels(q, theta, mu):
    lt = levels_tensor(q.levels, theta)
    out = q.hard(theta)
    assert out.shape == theta.shape and out.dtype == theta.dtype
    assert torch.isin(out, lt).all()
    assert torch.equal(out, nearest(theta, q.levels))
    assert torch.equal(q.hard(out), out)  # levels are fixed points
    if isinstance(q, qz.Sign):  # hard rounding is Sign's forward map, with zero derivative
        assert torch.equal(q.value(theta, mu), out)
        assert torch.equal(q.derivative(theta, mu), torch.zeros_like(theta))


def test_identity_without_levels_hard_is_identity():
    x = torch.tensor([0.3, -2.0, 0.0, -0.0])
    out = qz.Identity().hard(x)
    assert torch.equal(out, x) and torch.equal(torch.signbit(out), torch.signbit(x))
    assert qz.Identity().levels is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q", BINARY_Q, ids=[repr(q) for q in BINARY_Q])
def test_exact_zeros_round_to_plus_one(q, dtype):
    z = torch.tensor([0.0, -0.0], dtype=dtype)
    assert q.hard(z).tolist() == [1.0, 1.0]
    if isinstance(q, qz.Sign):
        assert q.value(z).tolist() == [1.0, 1.0]
        out = torch.empty_like(z)
        assert q.value_into(z, 1.0, out).tolist() == [1.0, 1.0]
    if isinstance(q, qz.LinearProx):  # the mu -> inf limit is hard rounding
        assert q.value(z, math.inf).tolist() == [1.0, 1.0]


# ---------------------------------------------------------------- monotonicity


@MANY
@given(st.sampled_from(MONOTONE), theta_batch(lo=-4.0, hi=4.0, min_size=2), mus)
@example(qz.LinearProx("ternary"), torch.tensor([-1.0, -0.5, -0.0, 0.0, 0.5, 1.0]), 1e9)
@example(qz.Tanh(), torch.tensor([-1.0, -0.5, -0.0, 0.0, 0.5, 1.0], dtype=torch.float64), 1e300)
def test_monotone_non_decreasing(q, theta, mu):
    """Proximal quantizers are exactly the monotone non-decreasing maps (THEORY.md §3)."""
    x = torch.sort(theta).values
    y = q.value(x, mu)
    assert torch.isfinite(y).all()
    assert (y[1:] >= y[:-1]).all(), (x, y)
    if q.levels is not None and not isinstance(q, qz.Identity):
        assert (y >= q.levels[0]).all() and (y <= q.levels[-1]).all()


def test_signswish_is_not_monotone():
    """SS_mu overshoots to about 1.1997 at mu x ≈ 2.40 and decays back to 1 (THEORY.md §2)."""
    q = qz.SignSwish()
    z_star = brentq(lambda z: z * math.tanh(z / 2.0) - 2.0, 1.0, 4.0)  # SS'(z) = 0
    peak = 2.0 * expit(z_star) * (1.0 + z_star * (1.0 - expit(z_star))) - 1.0
    assert abs(z_star - 2.40) < 5e-3 and abs(peak - 1.1997) < 1e-4
    for mu in (0.5, 1.0, 5.0, 10.0):
        x = torch.linspace(0.0, 12.0 / mu, 120001, dtype=torch.float64)
        y = q.value(x, mu)
        i = int(torch.argmax(y))
        assert abs(float(x[i]) * mu - z_star) < 1e-3
        assert abs(float(y[i]) - peak) < 1e-9
        assert float(y[-1]) < float(y[i]) - 0.19  # decreasing after the peak: not monotone
        assert float(y[-1]) > 1.0  # ... and approaches 1 from above
        assert not bool((y[1:] >= y[:-1]).all())


# ---------------------------------------------------------------- derivative


def _one_sided(q, theta: torch.Tensor, mu: float, h: float = 1e-7):
    """One-sided difference quotients of ``value`` and a mask of points where they agree (no kink)."""
    f0 = q.value(theta, mu)
    fp = (q.value(theta + h, mu) - f0) / h
    fm = (f0 - q.value(theta - h, mu)) / h
    ok = (fp - fm).abs() <= min(1e-3 * max(1.0, mu) ** 2, 0.1)
    return ok, fp, fm


@pytest.mark.parametrize("q", QUANTIZERS, ids=IDS)
@settings(max_examples=10, deadline=None)
@given(theta_batch(dtype=torch.float64, lo=-3.0, hi=3.0), st.floats(0.25, 20.0))
@example(torch.tensor([0.0, 0.5, -0.75, 1.5, 0.9, 0.25], dtype=torch.float64), 1.0)
@example(torch.tensor([0.0, 0.3, -0.2, 0.05], dtype=torch.float64), 5.0)
def test_derivative_matches_autograd_and_finite_differences(q, theta, mu):
    """Away from kinks ``derivative`` is autograd's derivative of ``value``, and lies between the
    one-sided difference quotients."""
    ok, fp, fm = _one_sided(q, theta, mu)
    d = q.derivative(theta, mu)
    assert d.shape == theta.shape and d.dtype == theta.dtype
    assert torch.isfinite(d).all()
    ag = autograd_derivative(q, theta, mu)
    torch.testing.assert_close(d[ok], ag[ok], rtol=1e-10, atol=1e-12)
    slack = 1e-4 * max(1.0, mu) ** 2
    assert (d[ok] >= torch.minimum(fp, fm)[ok] - slack).all() and (d[ok] <= torch.maximum(fp, fm)[ok] + slack).all()


@MANY
@given(st.sampled_from(QUANTIZERS), theta_batch(), mus, st.booleans())
def test_in_place_kernels_are_bit_identical(q, theta, mu, use_scratch):
    """``value_into`` / ``grad_into`` are the optimizers' hot path: same bits as the reference, except the
    documented sigmoid kernels (tanh, sign-Swish with a workspace): within a few ulp of 1."""
    scratch = torch.empty_like(theta) if use_scratch else None
    out = torch.full_like(theta, math.nan)
    res = q.value_into(theta, mu, out, scratch)
    assert res is out
    ref = q.value(theta, mu)
    g = torch.linspace(-2.0, 3.0, theta.numel(), dtype=theta.dtype)
    out2 = torch.full_like(theta, math.nan)
    scratch = torch.empty_like(theta) if use_scratch else None
    res2 = q.grad_into(theta, g, mu, out2, scratch)
    assert res2 is out2
    gref = q.derivative(theta, mu) * g
    eps = EPS[theta.dtype]
    if isinstance(q, qz.Tanh) or (isinstance(q, qz.SignSwish) and use_scratch):
        # documented sigmoid-based kernels: s (1 - s) = s - s² cancels for s near 1, so sign-Swish's
        # term 2 mu theta s (1 - s) carries an absolute error of about 2 |mu theta| eps
        z = (mu * theta).abs()
        assert ((out - ref).abs() <= 4 * eps * (1.0 + z)).all(), (out, ref)
        assert ((out2 - gref).abs() <= 16 * eps * mu * (1.0 + z) * g.abs()).all(), (out2, gref)
    else:
        assert torch.equal(out, ref), (out, ref)
        assert torch.equal(out2, gref), (out2, gref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mu", [1e-25, 1e-19, 1e-10, 1.0, 1e10, 6e18, 1e19, 1e20])
def test_signswish_grad_kernel_at_extreme_strengths(dtype, mu):
    """The fused ELU pass needs 2 mu^2 and 1/(2 mu^2) well inside the dtype's range; beyond that
    the kernel takes the two-pass form (float32: outside about 1e-12..1e12). Either way: finite, and as
    close to the reference as inside."""
    q = qz.SignSwish()
    theta = torch.cat([torch.linspace(-3.0, 3.0, 101, dtype=dtype), torch.tensor([0.0, -0.0, 1e-30, -1e-30])])
    theta = theta / max(mu, 1e-300) if mu > 1.0 else theta
    g = torch.linspace(-2.0, 3.0, theta.numel(), dtype=dtype)
    got = q.grad_into(theta, g, mu, torch.empty_like(theta), torch.empty_like(theta))
    ref = q.derivative(theta.double(), mu) * g.double()
    assert torch.isfinite(got).all()
    z = (mu * theta.double()).abs()
    assert ((got.double() - ref).abs() <= 16 * EPS[dtype] * mu * (1.0 + z) * g.double().abs()).all()


# ---------------------------------------------------------------- simple closed forms


@FAST
@given(theta_batch(), mus)
def test_identity_clip_tanh_closed_forms(theta, mu):
    assert torch.equal(qz.Identity().value(theta, mu), theta)
    assert torch.equal(qz.Identity().derivative(theta, mu), torch.ones_like(theta))
    c = qz.Clip()
    assert torch.equal(c.value(theta), theta.clamp(-1.0, 1.0))
    assert torch.equal(c.derivative(theta), (theta.abs() <= 1.0).to(theta.dtype))
    t = qz.Tanh()
    xd = theta.double()
    torch.testing.assert_close(t.value(theta, mu).double(), torch.tanh(mu * xd), rtol=4 * EPS[theta.dtype],
                               atol=4 * EPS[theta.dtype])
    # 1 - tanh² cancels in the tails: the error is absolute, about mu * eps
    torch.testing.assert_close(t.derivative(theta, mu).double(), mu / torch.cosh(mu * xd) ** 2,
                               rtol=8 * EPS[theta.dtype], atol=8 * EPS[theta.dtype] * mu)


def approx_sign_reference(x: float) -> float:
    if x < -1.0:
        return -1.0
    if x < 0.0:
        return 2.0 * x + x * x
    if x < 1.0:
        return 2.0 * x - x * x
    return 1.0


@FAST
@given(theta_batch(lo=-3.0, hi=3.0))
@example(torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, -1e-30, 0.999999], dtype=torch.float64))
def test_approx_sign_pieces(theta):
    """ApproxSign: -1 / 2x + x² / 2x - x² / +1 on its four pieces (Bi-Real Net; THEORY.md §2)."""
    q = qz.ApproxSign()
    y = q.value(theta)
    ref = torch.tensor([approx_sign_reference(v) for v in theta.double().tolist()], dtype=torch.float64)
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=4 * EPS[theta.dtype])
    dref = torch.tensor([(2.0 - 2.0 * abs(v)) * (abs(v) <= 1.0) for v in theta.double().tolist()],
                        dtype=torch.float64)
    torch.testing.assert_close(q.derivative(theta).double(), dref, rtol=0, atol=4 * EPS[theta.dtype])
    assert (y.abs() <= 1.0).all()


# ---------------------------------------------------------------- Sign-Swish


def ss_reference(z: np.ndarray) -> np.ndarray:
    """THEORY.md §2 literally: SS(z) = 2 σ(z)[1 + z(1 - σ(z))] - 1 (mu folded into z)."""
    s = expit(z)
    return 2.0 * s * (1.0 + z * (1.0 - s)) - 1.0


def ss_prime_reference(x: np.ndarray, mu: float) -> np.ndarray:
    """THEORY.md §2 literally: SS'_mu(x) = mu [2 - mu x tanh(mu x / 2)] / [1 + cosh(mu x)]."""
    z = mu * x
    return mu * (2.0 - z * np.tanh(z / 2.0)) / (1.0 + np.cosh(z))


@FAST
@given(theta_batch(dtype=torch.float64, lo=-8.0, hi=8.0), st.floats(0.1, 40.0))
@example(torch.tensor([0.0, 2.3994 / 5.0, -1.0], dtype=torch.float64), 5.0)
def test_signswish_closed_forms(theta, mu):
    q = qz.SignSwish()
    x = theta.numpy()
    keep = np.abs(mu * x) < 600.0  # cosh overflow in the literal formula
    np.testing.assert_allclose(q.value(theta, mu).numpy(), ss_reference(mu * x), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(q.derivative(theta, mu).numpy()[keep], ss_prime_reference(x[keep], mu),
                               rtol=1e-9, atol=1e-12 * mu)
    torch.testing.assert_close(q.derivative(theta, mu), autograd_derivative(q, theta, mu), rtol=1e-10,
                               atol=1e-12 * mu)


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(st.data(), mus)
def test_signswish_odd_and_derivative_at_zero(dtype, data, mu):
    q = qz.SignSwish()
    theta = data.draw(theta_batch(dtype=dtype, lo=-50.0, hi=50.0))
    assert torch.equal(q.value(-theta, mu), -q.value(theta, mu))
    assert torch.equal(q.derivative(-theta, mu), q.derivative(theta, mu))
    z = torch.tensor([0.0, -0.0], dtype=dtype)
    assert q.derivative(z, mu).tolist() == [float(NP_DTYPE[dtype](mu))] * 2
    assert q.value(z, mu).abs().tolist() == [0.0, 0.0]
    # keeps the sign: F = sign ∘ SS (where mu theta is representable: a subnormal theta times mu < 1 is 0)
    assert ((q.value(theta, mu) > 0) == (theta * mu > 0)).all()
    assert (q.value(theta, mu).abs() <= 1.2).all()


@FAST
@given(st.floats(1e-3, 10.0), st.booleans())
@example(1e-3, True)
@example(7.0, False)
def test_signswish_tends_to_sign(x, negative):
    """SS_mu(x) → sign(x) pointwise as mu → ∞, monotonically once past the overshoot."""
    q = qz.SignSwish()
    x = -x if negative else x
    sgn = math.copysign(1.0, x)
    mus_ = [2.4 / abs(x) * 2.0 ** k for k in range(12)]
    errs = [abs(q.value(torch.tensor([x], dtype=torch.float64), m).item() - sgn) for m in mus_]
    assert all(b <= a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-12
    assert abs(q.value(torch.tensor([x], dtype=torch.float64), 1e7).item() - sgn) == 0.0


# ---------------------------------------------------------------- linear proximal quantizer


def _prox_objective(w: np.ndarray, theta: float, levels, a: float) -> np.ndarray:
    """½(w - θ)² + r(w), r(w) = (a h(w) / 2)·dist(w, Q), h(w) = the gap containing w (THEORY.md §3).

    For evenly spaced levels r is ``lambda * dist_1(w, Q)`` with ``lambda = a h / 2``
    (``lambda = a`` for the binary set): ProxQuant's regularizer.
    """
    q = np.asarray(levels)
    j = np.clip(np.searchsorted(q, w, side="right") - 1, 0, len(q) - 2)
    lo, hi = q[j], q[j + 1]
    dist = np.minimum(w - lo, hi - w)
    return 0.5 * (w - theta) ** 2 + 0.5 * a * (hi - lo) * dist


JUMP_LEVELS = ["binary", "ternary", 2, [-0.5, 0.25, 2.0], [0.1, 0.7]]


def _brute_force_prox(thetas: np.ndarray, levels, a: float):
    """Global minimizers of :func:`_prox_objective` over ``[q_1, q_d]`` for each θ: a grid of
    20001 points, then a grid of 2001 points over the two cells beside the coarse argmin.
    Returns ``(w_best, f_best, resolution)``."""
    coarse = np.linspace(levels[0], levels[-1], 20001)
    step = coarse[1] - coarse[0]
    obj = _prox_objective(coarse[None, :], thetas[:, None], levels, a)
    w0 = coarse[obj.argmin(axis=1)]
    fine = np.clip(w0[:, None] + np.linspace(-step, step, 2001)[None, :], levels[0], levels[-1])
    objf = _prox_objective(fine, thetas[:, None], levels, a)
    return fine[np.arange(len(thetas)), objf.argmin(axis=1)], np.minimum(obj.min(1), objf.min(1)), step


@pytest.mark.parametrize("levels", JUMP_LEVELS, ids=str)
@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=8), st.floats(1.0, 50.0))
@example([0.0, -0.0, 0.2, -0.9, 1.7, -2.5, 0.26, 0.49], 2.0)
@example([0.1, 0.3, 0.45, 0.55, 0.7, 1.0], 1.0)
def test_linear_prox_jump_member_is_the_prox(levels, thetas, mu):
    """jump = 1 (a = b): F(θ) = argmin_{w ∈ [q_1, q_d]} ½(w - θ)² + (a h/2)·dist(w, Q), by brute force."""
    lv = make_levels(levels)
    q = qz.LinearProx(levels, jump=1.0)
    a = q.dead_zone(mu)
    th = np.array(thetas, dtype=np.float64)
    out = q.value(torch.tensor(th), mu).numpy()
    assert ((out >= lv[0]) & (out <= lv[-1])).all()
    w_best, f_best, step = _brute_force_prox(th, lv, a)
    f_out = _prox_objective(out, th, lv, a)
    lip = np.abs(th) + max(abs(lv[0]), abs(lv[-1])) + a * (lv[-1] - lv[0])
    mids = np.array([(x + y) / 2.0 for x, y in zip(lv, lv[1:])])
    gap = np.abs(th[:, None] - mids[None, :]).min(axis=1)
    unique = (gap > 0.01) | (a < 1e-3)  # away from the midpoints, where two branches tie
    # F(θ) attains the brute-force minimum (near a tie only up to the coarse grid's resolution) ...
    assert (f_out <= f_best + np.where(unique, 1e-9, lip * step)).all(), (th, out, w_best)
    # ... and where the minimizer is unique it is that minimizer
    np.testing.assert_allclose(out[unique], w_best[unique], rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(st.data(), st.floats(1.0, 1e4))
@example(None, 1.0)
def test_linear_prox_linear_member_binary_is_clip(dtype, data, mu):
    """jump = 0, binary: F_mu(θ) = clip(mu θ, -1, 1) (PARQ's clamp(θ/s), s = 1/mu)."""
    theta = torch.tensor([0.0, -0.0, 0.3, -0.3, 1.0, -2.0], dtype=dtype) if data is None else \
        data.draw(theta_batch(dtype=dtype, lo=-3.0, hi=3.0))
    q = qz.LinearProx()
    ref = (theta.double() * mu).clamp(-1.0, 1.0)
    # s = 1/(1 - a) carries a relative error of about eps64 * mu; the product one of eps(dtype)
    tol = 4 * EPS[dtype] + 4 * EPS[torch.float64] * mu
    torch.testing.assert_close(q.value(theta, mu).double(), ref, rtol=0, atol=tol)


LP_LEVELS = ["binary", "ternary", 3, [-0.5, 0.25, 2.0], [0.1, 0.7]]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(LP_LEVELS), st.sampled_from([0.0, 0.3, 1.0]), theta_batch(lo=-4.0, hi=4.0),
       st.floats(1e-3, 1.0))
def test_linear_prox_mu_one_is_clip(levels, jump, theta, mu_small):
    """mu <= 1: no dead zone and no jump, so the map is clip to [q_1, q_d] for every level set."""
    q = qz.LinearProx(levels, jump=jump)
    lv = q.levels
    for mu in (1.0, mu_small):
        torch.testing.assert_close(q.value(theta, mu), theta.clamp(lv[0], lv[-1]), rtol=0,
                                   atol=4 * EPS[theta.dtype])


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(LP_LEVELS), st.sampled_from([0.0, 0.3, 1.0]), theta_batch(lo=-4.0, hi=4.0))
def test_linear_prox_large_mu_is_rounding(levels, jump, theta):
    q = qz.LinearProx(levels, jump=jump)
    lv = q.levels
    hard = nearest(theta, lv)
    assert torch.equal(q.value(theta, math.inf), hard)
    mids = torch.tensor([(x + y) / 2.0 for x, y in zip(lv, lv[1:])], dtype=torch.float64)
    far = (theta.double().unsqueeze(-1) - mids).abs().min(-1).values > 1e-4
    torch.testing.assert_close(q.value(theta, 1e9)[far], hard[far], rtol=0, atol=1e-5)
    # the derivative vanishes in the limit
    assert torch.equal(q.derivative(theta, math.inf), torch.zeros_like(theta))


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(LP_LEVELS + [2]), st.sampled_from(DTYPES), st.floats(1.0, 1e4), st.floats(0.0, 1.0),
       st.floats(0.05, 0.95))
@example("ternary", torch.float32, 1.0, 0.0, 0.5)
@example(2, torch.float64, 1e4, 1.0, 0.95)
def test_linear_prox_shape(levels, dtype, mu, jump, frac):
    """F(q_i) = q_i; dead zone of half-width a h/2 around each level; around each midpoint p the
    ramp of slope s = (1-b)/(1-a) runs through p ∓ b h/2: F(p ± δ) = p ± (b h/2 + s δ) (THEORY.md §3)."""
    q = qz.LinearProx(levels, jump=jump)
    lv = torch.tensor(q.levels, dtype=dtype)
    assert torch.equal(q.value(lv, mu), lv)
    a = q.dead_zone(mu)
    b = jump * a
    s = (1.0 - b) / (1.0 - a)
    scale = max(abs(q.levels[0]), abs(q.levels[-1]))
    tol = 16 * EPS[dtype] * (1.0 + s) * scale
    for lo, hi in zip(q.levels, q.levels[1:]):
        h = hi - lo
        p = (lo + hi) / 2.0
        delta = frac * (1.0 - a) * h / 2.0  # inside the ramp on either side of p
        x = torch.tensor([p - delta, p + delta, lo + frac * a * h / 2.0, hi - frac * a * h / 2.0], dtype=dtype)
        x0, x1 = x.double().tolist()[:2]
        expect = torch.tensor([p - b * h / 2.0 - s * (p - x0), p + b * h / 2.0 + s * (x1 - p), lo, hi],
                              dtype=torch.float64)
        torch.testing.assert_close(q.value(x, mu).double(), expect, rtol=0, atol=tol)


@pytest.mark.parametrize("jump", [-0.1, 1.5, True, "0.5", math.nan])
def test_linear_prox_invalid_jump(jump):
    with pytest.raises(ValueError, match="Invalid jump"):
        qz.LinearProx(jump=jump)


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("q", QUANTIZERS, ids=IDS)
def test_get_config_round_trip(q):
    cfg = q.config()
    assert cfg["name"] in qz.available()
    assert json.loads(json.dumps(cfg)) == cfg  # primitives only
    buf = io.BytesIO()
    torch.save(cfg, buf)
    buf.seek(0)
    cfg2 = torch.load(buf, weights_only=True)
    q2 = qz.get(cfg2)
    assert type(q2) is type(q) and q2 == q and hash(q2) == hash(q) and q2.config() == cfg
    assert q2.levels == q.levels
    assert qz.get(q) is q
    assert qz.get(type(q), **{k: v for k, v in cfg.items() if k != "name"}) == q
    assert qz.get(cfg["name"], **{k: v for k, v in cfg.items() if k != "name"}) == q
    x = torch.linspace(-2.0, 2.0, 41, dtype=torch.float64)
    for mu in (1.0, 3.0):
        assert torch.equal(q2.value(x, mu), q.value(x, mu))
        assert torch.equal(q2.derivative(x, mu), q.derivative(x, mu))
    assert repr(q2) == repr(q)


def test_get_names_aliases_and_errors():
    assert set(qz.available()) == {"identity", "sign", "clip", "tanh", "signswish", "approxsign", "linearprox"}
    for alias, cls in [("ste", qz.Identity), ("STE", qz.Identity), ("hardtanh", qz.Clip),
                       ("sign_swish", qz.SignSwish), ("swish", qz.SignSwish), ("linear_prox", qz.LinearProx),
                       ("approx_sign", qz.ApproxSign), ("Sign", qz.Sign)]:
        assert type(qz.get(alias)) is cls
    assert qz.get({"name": "linearprox"}, levels="ternary") == qz.LinearProx("ternary")
    assert qz.get("sign") != qz.get("sign", levels="ternary")
    assert qz.LinearProx(jump=0.5) != qz.LinearProx(jump=0.25)
    with pytest.raises(ValueError, match="Invalid quantizer"):
        qz.get("round")
    with pytest.raises(TypeError, match="Invalid quantizer"):
        qz.get(3)
    with pytest.raises(TypeError, match="Invalid quantizer"):
        qz.get(qz.Sign(), levels="ternary")
    with pytest.raises(ValueError, match="Invalid levels"):
        qz.get("sign", levels="pentary")
