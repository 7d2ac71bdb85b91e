"""Numerical check of ProxConnect++'s decomposition criterion (THEORY.md §2).

PC++'s guarantee carries over from ProxConnect when the forward quantizer
factors through the backward one: ``F = P ∘ B`` with ``P`` a proximal
quantizer (monotone non-decreasing). On a grid of ``theta`` this holds iff for
every pair ``B(theta_1) < B(theta_2) ⇒ F(theta_1) <= F(theta_2)`` and
``B(theta_1) = B(theta_2) ⇒ F(theta_1) = F(theta_2)``.

References:
    [PC++] Lu, Yu, Li, Partovi Nia. Understanding Neural Network Binarization
    with Forward and Backward Proximal Quantizers. NeurIPS 2023.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Optional, Tuple

import torch

from . import quantizers as qz

__all__ = ["PairCheck", "check_pair"]


@dataclass(frozen=True)
class PairCheck:
    """Result of :func:`check_pair`.

    Attributes:
        ok: the criterion holds on the grid.
        counterexample: ``(theta_1, theta_2)`` violating it, or None.
        reason: a sentence saying why the pair fails ("" when ok).
    """

    ok: bool
    counterexample: Optional[Tuple[float, float]]
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def check_pair(forward: Any, backward: Any, mu: float = 1.0, low: float = -4.0, high: float = 4.0,
               num: int = 4001) -> PairCheck:
    """Test whether ``F = P ∘ B`` for some monotone ``P`` on a grid (PC++ criterion).

    Sorts the grid by ``b = B_mu(theta)`` and requires ``F_mu(theta)`` to be
    non-decreasing in ``b``, constant where ``b`` ties exactly (a decrease
    smaller than 1e-12 is taken as rounding). Returns the first violating pair.

    Args:
        forward: forward quantizer (name, config or instance).
        backward: backward quantizer.
        mu: strength at which both are evaluated.
        low, high, num: the grid (0 is always included).

    Raises:
        ValueError: for ``num < 2``, a non-finite or non-positive ``mu``, or
            a grid without ``low < high``.
        TypeError: for a non-integer ``num`` or non-real ``mu``/``low``/``high``.

    Example:
        >>> check_pair("sign", "clip").ok
        True
        >>> check_pair("identity", "sign").ok
        False

    References:
        [PC++] Lu et al., NeurIPS 2023; THEORY.md §2.
    """
    F, B = qz.get(forward), qz.get(backward)
    if isinstance(num, bool) or not isinstance(num, Integral):
        raise TypeError(f"Invalid num: {num!r} (expected an int >= 2)")
    if num < 2:
        raise ValueError(f"Invalid num: {num!r} (expected an int >= 2)")
    for name, v in (("mu", mu), ("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, Real):
            raise TypeError(f"Invalid {name}: {v!r} (expected a finite float)")
        if not math.isfinite(v):
            raise ValueError(f"Invalid {name}: {v!r} (expected a finite float)")
    if not mu > 0:
        raise ValueError(f"Invalid mu: {mu!r} (expected a positive float)")
    if not low < high:
        raise ValueError(f"Invalid low, high: {low!r}, {high!r} (expected low < high)")
    grid = torch.linspace(float(low), float(high), int(num), dtype=torch.float64)
    theta = torch.cat([grid, torch.zeros(1, dtype=torch.float64)])
    theta = torch.unique(theta)
    b = B.value(theta, mu)
    f = F.value(theta, mu)
    order = torch.argsort(b, stable=True)
    b, f, th = b[order], f[order], theta[order]
    tol = 1e-12
    # ties in b must have equal f
    same = b[1:] == b[:-1]
    bad_tie = same & ((f[1:] - f[:-1]).abs() > tol)
    if bad_tie.any():
        i = int(torch.nonzero(bad_tie)[0])
        return PairCheck(False, (float(th[i]), float(th[i + 1])),
                         f"B({th[i]:.4g}) = B({th[i + 1]:.4g}) but F differs ({f[i]:.4g} vs {f[i + 1]:.4g})")
    # across increasing b, f must not decrease: compare with running max of f
    run_max, arg = torch.cummax(f, dim=0)
    bad = f < run_max - tol
    if bad.any():
        j = int(torch.nonzero(bad)[0])
        i = int(arg[j])
        return PairCheck(False, (float(th[i]), float(th[j])),
                         f"B({th[i]:.4g}) < B({th[j]:.4g}) but F({th[i]:.4g}) = {f[i]:.4g} > "
                         f"F({th[j]:.4g}) = {f[j]:.4g}")
    return PairCheck(True, None, "")
