"""Quantization level sets and nearest-level rounding.

A level set is a sorted tuple of floats ``Q = (q_1 < ... < q_d)``
(THEORY.md §1). Binary is ``{-1, +1}``, ternary ``{-1, 0, +1}`` and the
k-bit uniform set has ``2**k`` evenly spaced levels in ``[-1, 1]``.

Hard rounding maps ``x`` to its nearest level, ties going to the larger
level, so that ``sign(0) = +1`` for the binary set (THEORY.md §3, §6).

References:
    [PC] Dockhorn et al. Demystifying and Generalizing BinaryConnect.
    NeurIPS 2021.
"""
from __future__ import annotations

import math
import sys
from numbers import Integral, Real
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["LevelsSpec", "make_levels", "nearest", "nearest_index", "levels_tensor", "is_binary"]

LevelsSpec = Union[str, int, Sequence[float]]

BINARY: Tuple[float, ...] = (-1.0, 1.0)
TERNARY: Tuple[float, ...] = (-1.0, 0.0, 1.0)


#: magnitude range of nonzero levels: normal float64 numbers (no subnormals, whose halves round) whose
#: pairwise sums cannot overflow
_LEVEL_MIN, _LEVEL_MAX = sys.float_info.min, sys.float_info.max / 2.0


def make_levels(spec: LevelsSpec = "binary") -> Tuple[float, ...]:
    """Turn a level specification into a sorted tuple of distinct floats.

    ``"binary"`` → ``(-1, 1)``; ``"ternary"`` → ``(-1, 0, 1)``; an integer
    ``k`` in 1..8 → the ``2**k`` levels ``(2 i - (2**k - 1)) / (2**k - 1)``; a sequence
    of at least two distinct finite floats → those levels, sorted.

    Args:
        spec: the level set, as above.

    Returns:
        The sorted levels ``(q_1 < ... < q_d)``.

    Raises:
        ValueError: for an unknown name, a bit width out of range, fewer than
            two levels, repeated or non-finite levels, or nonzero levels that
            are subnormal or above half the largest float in magnitude.
        TypeError: for any other type.

    Example:
        >>> make_levels(2)
        (-1.0, -0.3333333333333333, 0.3333333333333333, 1.0)

    References:
        THEORY.md §1; [PC] Dockhorn et al., NeurIPS 2021.
    """
    if isinstance(spec, str):
        name = spec.lower()
        if name == "binary":
            return BINARY
        if name == "ternary":
            return TERNARY
        raise ValueError(f"Invalid levels: {spec!r} (expected 'binary', 'ternary', a bit width 1..8 or a list of floats)")
    if isinstance(spec, bool):
        raise TypeError(f"Invalid levels: {spec!r} (expected 'binary', 'ternary', a bit width or a list of floats)")
    if isinstance(spec, Integral):
        k = int(spec)
        if not 1 <= k <= 8:
            raise ValueError(f"Invalid levels: {spec!r} (a bit width must be in 1..8)")
        n = 2 ** k
        return tuple((2.0 * i - (n - 1)) / (n - 1) for i in range(n))
    if isinstance(spec, Tensor):
        spec = spec.detach().cpu().tolist()
    if isinstance(spec, (list, tuple)):
        if not all(isinstance(q, Real) and not isinstance(q, bool) for q in spec):
            raise TypeError(f"Invalid levels: {spec!r} (every level must be a real number)")
        vals = [float(q) for q in spec]
        if len(vals) < 2:
            raise ValueError(f"Invalid levels: {spec!r} (need at least two levels)")
        if not all(math.isfinite(q) for q in vals):
            raise ValueError(f"Invalid levels: {spec!r} (levels must be finite)")
        if any(q != 0.0 and not _LEVEL_MIN <= abs(q) <= _LEVEL_MAX for q in vals):
            raise ValueError(f"Invalid levels: {spec!r} (nonzero levels must be normal floats of magnitude at most "
                             f"{_LEVEL_MAX:g}, so that midpoints between them are exact)")
        out = tuple(sorted(vals))
        if any(b <= a for a, b in zip(out, out[1:])):
            raise ValueError(f"Invalid levels: {spec!r} (levels must be distinct)")
        return out
    raise TypeError(f"Invalid levels: {spec!r} (expected 'binary', 'ternary', a bit width or a list of floats)")


def is_binary(levels: Tuple[float, ...]) -> bool:
    """True when ``levels`` is exactly ``(-1, 1)`` (enables the sign fast path)."""
    return tuple(levels) == BINARY


_CACHE: dict = {}


def levels_tensor(levels: Tuple[float, ...], like: Tensor) -> Tensor:
    """The levels as a 1-D tensor on ``like``'s device and dtype (cached)."""
    key = (levels, like.device, like.dtype)
    t = _CACHE.get(key)
    if t is None:
        t = torch.tensor(levels, dtype=like.dtype, device=like.device)
        if len(_CACHE) > 256:
            _CACHE.clear()
        _CACHE[key] = t
    return t


_PARTS: dict = {}


def _midpoint_parts(levels: Tuple[float, ...]) -> Tuple[Tuple[float, float], ...]:
    """``(s, e)`` per gap with ``q_i + q_{i+1} = s + e`` exactly (TwoSum), cached."""
    parts = _PARTS.get(levels)
    if parts is None:
        out = []
        for a, b in zip(levels, levels[1:]):
            s = a + b
            bb = s - a
            out.append((s, (a - (s - bb)) + (b - bb)))
        parts = _PARTS[levels] = tuple(out)
    return parts


def nearest_index(x: Tensor, levels: Tuple[float, ...]) -> Tensor:
    """Index ``i`` of the level nearest to each entry of ``x`` (ties → larger level).

    ``i`` counts the midpoints ``p_j = (q_j + q_{j+1}) / 2`` with ``p_j <= x``,
    decided exactly even when ``p_j`` is not representable: with
    ``q_j + q_{j+1} = s + e`` exactly, ``x >= p_j`` iff ``2x - s >= e``.
    """
    parts = _midpoint_parts(levels)
    halves = tuple(s / 2.0 for s, _ in parts)
    mids = levels_tensor(halves, x)
    if all(e == 0.0 for _, e in parts) and mids.tolist() == list(halves):
        return torch.bucketize(x.contiguous(), mids, right=True)
    xd = x.double()
    s = torch.tensor([p[0] for p in parts], dtype=torch.float64, device=x.device)
    e = torch.tensor([p[1] for p in parts], dtype=torch.float64, device=x.device)
    idx = torch.bucketize(xd, s / 2.0, right=True)
    j = (idx - 1).clamp_min(0)
    return idx - ((idx > 0) & (2.0 * xd == s[j]) & (e[j] > 0)).long()


def nearest(x: Tensor, levels: Tuple[float, ...] = BINARY) -> Tensor:
    """Hard rounding to the nearest level, ties to the larger level.

    .. math:: \\operatorname{round}_Q(x) = q_i,\\quad i = \\#\\{j : p_j \\le x\\},
              \\; p_j = (q_j + q_{j+1})/2

    For the binary set this is ``sign`` with ``sign(0) = +1`` (also for
    ``-0.0``), so a binary weight is never 0.

    Args:
        x: any floating tensor.
        levels: sorted level tuple from :func:`make_levels`.

    Example:
        >>> nearest(torch.tensor([-0.0, 0.0, -0.3, 2.0]))
        tensor([ 1.,  1., -1.,  1.])

    References:
        THEORY.md §3 (multi-level hard rounding) and §6.
    """
    if levels == BINARY:  # 1{x >= 0} * 2 - 1 (one comparison, two in-place passes)
        return torch.ge(x, 0.0, out=torch.empty_like(x)).mul_(2.0).sub_(1.0)
    return levels_tensor(levels, x)[nearest_index(x, levels)]
