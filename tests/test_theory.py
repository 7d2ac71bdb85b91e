"""Tests of :func:`proxopt.check_pair`, the ProxConnect++ decomposition criterion (THEORY.md §2).

``(F, B)`` inherits ProxConnect's guarantee when ``F = P ∘ B`` with ``P``
monotone non-decreasing. On a grid: ``B(θ1) < B(θ2) ⇒ F(θ1) <= F(θ2)`` and
``B(θ1) = B(θ2) ⇒ F(θ1) = F(θ2)``. Every counterexample that ``check_pair``
returns is re-checked here independently, and its verdict is compared with an
O(n²) brute force on small grids.

References:
    [PC++] Lu, Yu, Li, Partovi Nia. Understanding Neural Network Binarization
    with Forward and Backward Proximal Quantizers. NeurIPS 2023.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import proxopt
from proxopt import quantizers as qz
from proxopt.theory import PairCheck, check_pair

TOL = 1e-12  # check_pair's rounding allowance


class Composed(qz.Quantizer):
    """``F = P ∘ B`` (THEORY.md §2 synthesis recipe): a forward quantizer built from a prox ``P`` and any ``B``."""

    name = "composed"
    uses_mu = True

    def __init__(self, prox: qz.Quantizer, inner: qz.Quantizer) -> None:
        super().__init__(None)
        self.prox, self.inner = prox, inner

    def value(self, theta, mu=1.0):
        return self.prox.value(self.inner.value(theta, mu), mu)

    def derivative(self, theta, mu=1.0):
        return self.prox.derivative(self.inner.value(theta, mu), mu) * self.inner.derivative(theta, mu)

    def config(self):
        return {"name": self.name, "prox": self.prox.config(), "inner": self.inner.config()}


class Wiggle(qz.Quantizer):
    """A non-monotone, everywhere differentiable backward map ``B(θ) = θ + 0.9 sin(3θ)``."""

    name = "wiggle"

    def __init__(self) -> None:
        super().__init__(None)

    def value(self, theta, mu=1.0):
        return theta + 0.9 * torch.sin(3.0 * theta)

    def derivative(self, theta, mu=1.0):
        return 1.0 + 2.7 * torch.cos(3.0 * theta)


class Negated(qz.Quantizer):
    """``-B``: composing a prox with it gives a *decreasing* outer map (not a prox)."""

    name = "negated"

    def __init__(self, inner: qz.Quantizer) -> None:
        super().__init__(None)
        self.inner = inner

    def value(self, theta, mu=1.0):
        return -self.inner.value(theta, mu)

    def derivative(self, theta, mu=1.0):
        return -self.inner.derivative(theta, mu)


def _values(q, theta: float, mu: float):
    return float(q.value(torch.tensor([theta], dtype=torch.float64), mu))


def violates(forward, backward, pair, mu: float) -> bool:
    """Independent check that ``pair = (θ1, θ2)`` breaks the criterion (in either order)."""
    F, B = qz.get(forward), qz.get(backward)
    t1, t2 = pair
    b1, b2 = _values(B, t1, mu), _values(B, t2, mu)
    f1, f2 = _values(F, t1, mu), _values(F, t2, mu)
    if b1 == b2:
        return abs(f1 - f2) > TOL
    if b1 > b2:
        b1, b2, f1, f2 = b2, b1, f2, f1
    return f1 > f2 + TOL


def brute_force_ok(forward, backward, mu: float, low: float, high: float, num: int) -> bool:
    """O(n²) version of the criterion on check_pair's grid."""
    F, B = qz.get(forward), qz.get(backward)
    theta = torch.unique(torch.cat([torch.linspace(low, high, num, dtype=torch.float64),
                                    torch.zeros(1, dtype=torch.float64)]))
    b, f = B.value(theta, mu), F.value(theta, mu)
    less = b[:, None] < b[None, :]
    equal = b[:, None] == b[None, :]
    decreasing = f[:, None] > f[None, :] + TOL
    differ = (f[:, None] - f[None, :]).abs() > TOL
    return not bool((less & decreasing).any() or (equal & differ).any())


def assert_fails_with_real_counterexample(forward, backward, mu=1.0, **grid):
    res = check_pair(forward, backward, mu=mu, **grid)
    assert isinstance(res, PairCheck)
    assert not res.ok and not bool(res)
    assert res.counterexample is not None and len(res.counterexample) == 2
    assert all(math.isfinite(t) for t in res.counterexample)
    assert res.reason
    assert violates(forward, backward, res.counterexample, mu), (res, forward, backward)
    return res


# ---------------------------------------------------------------- the named pairs


def test_sign_clip_passes():
    res = check_pair(qz.Sign(), qz.Clip())
    assert res.ok and bool(res) and res.counterexample is None and res.reason == ""
    assert check_pair("sign", "clip").ok  # names
    assert check_pair({"name": "sign"}, {"name": "clip"}).ok  # configs


@pytest.mark.parametrize("mu", [0.5, 1.0, 5.0, 10.0, 100.0])
def test_signswish_signswish_passes(mu):
    assert check_pair(qz.SignSwish(), qz.SignSwish(), mu=mu).ok


def test_identity_sign_fails_with_a_real_counterexample():
    res = assert_fails_with_real_counterexample(qz.Identity(), qz.Sign())
    t1, t2 = res.counterexample
    # the only way to break it: two thetas of the same sign, so B ties while F = theta differs
    assert (t1 >= 0) == (t2 >= 0) and t1 != t2


# every pair of the THEORY.md §2 table (forward F, backward B), at several strengths
TABLE = [
    ("bc", qz.Sign(), qz.Identity()),
    ("bc-ternary", qz.Sign(levels="ternary"), qz.Identity()),
    ("pc", qz.LinearProx(), qz.Identity()),
    ("pc-jump", qz.LinearProx(jump=1.0), qz.Identity()),
    ("pc-ternary", qz.LinearProx("ternary", jump=0.5), qz.Identity()),
    ("pc-2bit", qz.LinearProx(2), qz.Identity()),
    ("bnn", qz.Sign(), qz.Clip()),
    ("approxsign", qz.Sign(), qz.ApproxSign()),
    ("bnn+", qz.Sign(), qz.SignSwish()),
    ("bnn++", qz.SignSwish(), qz.SignSwish()),
    ("md-tanh-s", qz.Tanh(), qz.Identity()),
    ("md-linear-s", qz.LinearProx(), qz.Identity()),  # clip(beta theta, -1, 1) for beta >= 1
    ("gd-tanh", qz.Tanh(), qz.Tanh()),
]


@pytest.mark.parametrize("name, forward, backward", TABLE, ids=[t[0] for t in TABLE])
@pytest.mark.parametrize("mu", [1.0, 5.0, 50.0, 1e4])
def test_every_table_pair_passes(name, forward, backward, mu):
    res = check_pair(forward, backward, mu=mu)
    assert res.ok, (name, res)


# ---------------------------------------------------------------- synthesis F = P ∘ B

PROXES = [qz.Sign(), qz.Sign(levels="ternary"), qz.Sign(levels=2), qz.Clip(), qz.Tanh(), qz.LinearProx(),
          qz.LinearProx(jump=1.0), qz.LinearProx("ternary", jump=0.3), qz.LinearProx([-0.5, 0.25, 2.0]),
          qz.Identity()]
INNERS = [Wiggle(), qz.SignSwish(), qz.ApproxSign(), qz.Clip(), qz.Tanh(), qz.Identity(), qz.Sign()]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(PROXES), st.sampled_from(INNERS), st.floats(0.5, 30.0))
def test_synthesized_pair_passes(prox, inner, mu):
    """THEORY.md §2 recipe: any B, any proximal (monotone) P, F = P ∘ B satisfies the criterion."""
    F = Composed(prox, inner)
    assert check_pair(F, inner, mu=mu).ok


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([qz.Clip(), qz.Tanh(), qz.LinearProx(jump=0.5), qz.Identity()]), st.floats(0.5, 30.0))
def test_decreasing_outer_map_fails(prox, mu):
    """F = P ∘ (-B) with P increasing is a *decreasing* function of B: a real counterexample exists."""
    inner = Wiggle()
    assert_fails_with_real_counterexample(Composed(prox, Negated(inner)), inner, mu=mu)


@pytest.mark.parametrize("forward", [qz.Clip(), qz.Tanh(), qz.Identity(), qz.LinearProx()], ids=repr)
def test_forward_not_a_function_of_a_non_monotone_backward_fails(forward):
    """Strictly increasing F with a backward that folds (B(θ1) = B(θ2) at θ1 != θ2) cannot be P ∘ B."""
    assert_fails_with_real_counterexample(forward, Wiggle(), mu=1.0)


# ---------------------------------------------------------------- verdict = brute force

POOL = [qz.Identity(), qz.Sign(), qz.Sign(levels="ternary"), qz.Clip(), qz.Tanh(), qz.SignSwish(), qz.ApproxSign(),
        qz.LinearProx(), qz.LinearProx("ternary", jump=1.0), Wiggle()]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(POOL), st.sampled_from(POOL), st.sampled_from([0.5, 1.0, 3.0, 10.0]),
       st.floats(0.5, 5.0), st.integers(21, 301))
def test_verdict_matches_brute_force(forward, backward, mu, half_width, num):
    res = check_pair(forward, backward, mu=mu, low=-half_width, high=half_width, num=num)
    assert res.ok == brute_force_ok(forward, backward, mu, -half_width, half_width, num), (forward, backward, res)
    if not res.ok:
        assert violates(forward, backward, res.counterexample, mu), res
        lo, hi = -half_width, half_width
        assert all(lo <= t <= hi for t in res.counterexample)
    else:
        assert res.counterexample is None and res.reason == ""


def test_grid_arguments_are_used():
    """F = clip to [-2, 2], B = clip to [-1, 1]: B ties on |θ| >= 1 where F still moves."""
    F, B = qz.Clip(levels=[-2.0, 2.0]), qz.Clip()
    assert_fails_with_real_counterexample(F, B)
    assert check_pair(F, B, low=-1.0, high=1.0).ok
    res = assert_fails_with_real_counterexample(F, B, low=-1.5, high=1.5, num=31)
    assert all(-1.5 <= t <= 1.5 for t in res.counterexample)


def test_public_export_and_result_type():
    assert proxopt.check_pair is check_pair and proxopt.PairCheck is PairCheck
    res = check_pair("sign", "clip")
    with pytest.raises(Exception):
        res.ok = False  # frozen dataclass
    with pytest.raises(ValueError, match="Invalid quantizer"):
        check_pair("sign", "nope")
