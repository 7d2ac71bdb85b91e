"""Forward and backward quantizers of the ProxConnect family.

A quantizer is a scalar map applied elementwise. As a *forward* quantizer
``F_mu`` it gives the weights the model runs with, ``w = F_mu(theta)``; as a
*backward* quantizer ``B_mu`` only its derivative is used, to transform the
gradient: ``grad_theta = B'_mu(theta) * grad_w`` (THEORY.md §2).

Every quantizer has

* ``value(theta, mu)`` — the map itself,
* ``derivative(theta, mu)`` — its (a.e.) derivative,
* ``hard(theta)`` — exact rounding to its level set (``sign`` with
  ``sign(0) = +1`` for binary),
* ``levels`` — the level set, or ``None`` for :class:`Identity`,
* ``config()`` — primitives that rebuild it through :func:`get`.

Quantizers that do not use ``mu`` accept and ignore it. Quantizers are pure:
they hold no state and know nothing about optimizers.

References:
    [BC] Courbariaux et al., NeurIPS 2015. [BNN] Hubara et al., NeurIPS 2016.
    [BNN+] Darabi et al., 2018. [PC] Dockhorn et al., NeurIPS 2021.
    [PC++] Lu et al., NeurIPS 2023. Bi-Real Net (ApproxSign): Liu et al.,
    ECCV 2018.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from . import native
from .levels import BINARY, LevelsSpec, levels_tensor, make_levels, nearest, nearest_index

_CONSTS: dict = {}


def _const(value: float, like: Tensor) -> Tensor:
    """A cached 0-d tensor ``value`` of ``like``'s dtype and device (an operand for the fused kernels).

    Only plain tensors are cached: under a tensor mode or subclass (fake
    tensors while tracing, DTensor shards' wrappers) a fresh constant is made,
    so no such tensor is kept globally.
    """
    if type(like) not in (torch.Tensor, torch.nn.Parameter):
        return torch.tensor(value, dtype=like.dtype, device=like.device)
    key = (value, like.dtype, like.device)
    t = _CONSTS.get(key)
    if t is None:
        if len(_CONSTS) > 256:
            _CONSTS.clear()
        t = _CONSTS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return t


def _full(value: float, like: Tensor) -> Tensor:
    """``value`` broadcast to ``like``'s shape without memory (stride 0): a constant operand."""
    return _const(value, like).expand_as(like)


_BOUNDS: dict = {}


def _open_bounds(lo: float, hi: float, like: Tensor) -> Optional[Tuple[float, float]]:
    """``(lo', hi')`` with ``lo' < x < hi'`` iff ``lo <= x <= hi`` for every ``x`` of ``like``'s dtype.

    ``lo' = nextafter(lo, -inf)`` and ``hi' = nextafter(hi, +inf)`` computed in
    that dtype (after rounding ``lo`` and ``hi`` to it, as a comparison with a
    Python scalar does). ``None`` for dtypes other than float32 / float64.
    """
    if like.dtype not in (torch.float32, torch.float64):
        return None
    key = (lo, hi, like.dtype)
    b = _BOUNDS.get(key)
    if b is None:
        t = torch.tensor([lo, hi], dtype=like.dtype)
        out = torch.nextafter(t, torch.tensor([-math.inf, math.inf], dtype=like.dtype))
        b = _BOUNDS[key] = (float(out[0]), float(out[1]))
    return b


def sign_into(theta: Tensor, out: Tensor) -> Tensor:
    """``out = sign(theta)`` with ``sign(±0) = +1``, in two passes: ``-1 + 2 * 1{theta >= 0}``.

    ``torch.ge`` writes the indicator (``-0.0 >= 0`` holds, NaN gives 0, so
    ``-1`` as in :func:`proxopt.levels.nearest`); the affine map is exact.
    ``out`` may be ``theta`` itself. BinaryConnect's forward map [BC]
    (THEORY.md §2).
    """
    return torch.add(_const(-1.0, out), torch.ge(theta, 0.0, out=out), alpha=2.0, out=out)


__all__ = [
    "Quantizer",
    "Identity",
    "Sign",
    "Clip",
    "Tanh",
    "SignSwish",
    "ApproxSign",
    "LinearProx",
    "linear_prox",
    "sign_swish",
    "sign_swish_derivative",
    "get",
    "available",
]


class Quantizer:
    """Base class: an elementwise map ``F_mu`` with its derivative and hard rounding.

    Subclasses implement :meth:`value` and :meth:`derivative`. ``hard`` rounds
    ``theta`` to the nearest level (ties to the larger one, THEORY.md §3).

    Attributes:
        name: the registry name (``get(name, **config)`` rebuilds it).
        unit_derivative: ``True`` when ``derivative`` is identically 1, so an
            optimizer may pass gradients through without a multiply.
        uses_mu: whether ``mu`` changes the map.
        levels: the sorted level set, or ``None`` (no rounding).

    References:
        THEORY.md §2–§3; [PC++] Lu et al., NeurIPS 2023.
    """

    name = "quantizer"
    unit_derivative = False
    uses_mu = False

    def __init__(self, levels: Optional[LevelsSpec] = "binary") -> None:
        self.levels: Optional[Tuple[float, ...]] = None if levels is None else make_levels(levels)

    def value(self, theta: Tensor, mu: float = 1.0) -> Tensor:  # pragma: no cover - abstract
        """The map ``F_mu(theta)``, elementwise."""
        raise NotImplementedError

    def derivative(self, theta: Tensor, mu: float = 1.0) -> Tensor:  # pragma: no cover - abstract
        """Its derivative ``F'_mu(theta)`` (almost everywhere), elementwise."""
        raise NotImplementedError

    def value_into(self, theta: Tensor, mu: float, out: Tensor, scratch: Optional[Tensor] = None) -> Tensor:
        """Write ``value(theta, mu)`` into ``out`` and return ``out``.

        Bit for bit equal to :meth:`value` unless the subclass documents
        otherwise (the tanh and sign-Swish kernels go through ``sigmoid``).

        The optimizers call this in their hot path; subclasses override it with
        in-place kernels that allocate no temporaries. ``scratch`` is a
        workspace of ``theta``'s shape that may be overwritten.
        """
        return out.copy_(self.value(theta, mu))

    def grad_into(self, theta: Tensor, g: Tensor, mu: float, out: Tensor,
                  scratch: Optional[Tensor] = None) -> Tensor:
        """Write ``derivative(theta, mu) * g`` into ``out`` and return ``out`` (as :meth:`value_into`)."""
        return torch.mul(self.derivative(theta, mu), g, out=out)

    def hard(self, theta: Tensor) -> Tensor:
        """Nearest level of ``theta`` (ties → larger level); identity when ``levels`` is None."""
        if self.levels is None:
            return theta.clone()
        return nearest(theta, self.levels)

    def config(self) -> Dict[str, Any]:
        """Primitive description: ``get(**config)`` rebuilds an equal quantizer."""
        cfg: Dict[str, Any] = {"name": self.name}
        if self.levels is not None and self.levels != BINARY:
            cfg["levels"] = list(self.levels)
        return cfg

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.config() == other.config()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(repr(self.config()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Identity(Quantizer):
    """``F(theta) = theta``, ``F' = 1``: no quantization (straight-through backward).

    As a backward quantizer it gives BinaryConnect's straight-through
    estimator ``B' = 1`` [BC]. ``hard`` is the identity unless ``levels`` is
    given, in which case it rounds to the nearest level.

    Example:
        >>> Identity().value(torch.tensor([0.3]))
        tensor([0.3000])
    """

    name = "identity"
    unit_derivative = True

    def __init__(self, levels: Optional[LevelsSpec] = None) -> None:
        super().__init__(levels)

    def value(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        return theta.clone()

    def derivative(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        return torch.ones_like(theta)

    def value_into(self, theta: Tensor, mu: float, out: Tensor, scratch: Optional[Tensor] = None) -> Tensor:
        return out.copy_(theta)

    def grad_into(self, theta: Tensor, g: Tensor, mu: float, out: Tensor,
                  scratch: Optional[Tensor] = None) -> Tensor:
        return out.copy_(g)

    def config(self) -> Dict[str, Any]:
        cfg: Dict[str, Any] = {"name": self.name}
        if self.levels is not None:
            cfg["levels"] = list(self.levels)
        return cfg


class Sign(Quantizer):
    """Hard rounding: ``F(theta) = sign(theta)`` with ``sign(0) = +1``; ``F' = 0`` a.e.

    Over a general level set it is nearest-level rounding. It is the proximal
    map of the indicator of ``Q`` for every ``mu`` [BC, PC].

    Example:
        >>> Sign().value(torch.tensor([-2.0, 0.0, 0.5]))
        tensor([-1.,  1.,  1.])
    """

    name = "sign"

    def value(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        return nearest(theta, self.levels)  # type: ignore[arg-type]

    def derivative(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        return torch.zeros_like(theta)

    def value_into(self, theta: Tensor, mu: float, out: Tensor, scratch: Optional[Tensor] = None) -> Tensor:
        if self.levels == BINARY:  # -1 + 2 * 1{theta >= 0}: sign with sign(±0) = +1, two passes
            return sign_into(theta, out)
        if out.is_contiguous() and out.dtype == theta.dtype:  # gather the levels straight into out
            idx = nearest_index(theta, self.levels)  # type: ignore[arg-type]
            torch.index_select(levels_tensor(self.levels, theta), 0, idx.reshape(-1),  # type: ignore[arg-type]
                               out=out.view(-1))
            return out
        return out.copy_(self.value(theta, mu))

    def grad_into(self, theta: Tensor, g: Tensor, mu: float, out: Tensor,
                  scratch: Optional[Tensor] = None) -> Tensor:
        return out.zero_()


class Clip(Quantizer):
    """``F(theta) = clip(theta, q_1, q_d)``, ``F' = 1{q_1 <= theta <= q_d}``.

    As a backward quantizer this is BNN's hard-tanh straight-through
    estimator ``B' = 1{|theta| <= 1}`` [BNN]. It is the proximal map of the
    indicator of ``[q_1, q_d]``.

    Example:
        >>> Clip().derivative(torch.tensor([-2.0, 1.0, 0.5]))
        tensor([0., 1., 1.])
    """

    name = "clip"

    def value(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        lo, hi = self.levels[0], self.levels[-1]  # type: ignore[index]
        return theta.clamp(lo, hi)

    def derivative(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        lo, hi = self.levels[0], self.levels[-1]  # type: ignore[index]
        return ((theta >= lo) & (theta <= hi)).to(theta.dtype)

    def value_into(self, theta: Tensor, mu: float, out: Tensor, scratch: Optional[Tensor] = None) -> Tensor:
        return torch.clamp(theta, self.levels[0], self.levels[-1], out=out)  # type: ignore[index]

    def grad_into(self, theta: Tensor, g: Tensor, mu: float, out: Tensor,
                  scratch: Optional[Tensor] = None) -> Tensor:
        """``g * 1{q_1 <= theta <= q_d}`` in one pass (``hardtanh_backward`` with widened bounds).

        ``hardtanh_backward(g, theta, lo', hi')`` is ``g`` where
        ``lo' < theta < hi'`` and 0 elsewhere; with ``lo'``, ``hi'`` one ulp
        outside ``q_1``, ``q_d`` in ``theta``'s dtype the open interval holds
        exactly the same values as the closed one. Equal (``torch.equal``) to
        ``derivative(theta) * g`` for finite ``theta`` and ``g`` (masked entries
        are +0.0; a NaN ``theta`` may pass ``g`` through).
        """
        lo, hi = self.levels[0], self.levels[-1]  # type: ignore[index]
        b = _open_bounds(lo, hi, theta)
        if b is not None and g.dtype == theta.dtype == out.dtype and g.shape == theta.shape:
            return torch.ops.aten.hardtanh_backward.grad_input(g, theta, b[0], b[1], grad_input=out)
        if lo == -hi:  # 1{|theta| <= hi} * g without temporaries
            return torch.abs(theta, out=out).le_(hi).mul_(g)
        return super().grad_into(theta, g, mu, out, scratch)


class Tanh(Quantizer):
    """``F_mu(theta) = tanh(mu * theta)``, ``F'_mu = mu * (1 - tanh^2(mu * theta))``.

    The forward map of GD-tanh / MD-tanh [MD]; tends to ``sign`` as
    ``mu -> inf``. Binary only.

    Example:
        >>> Tanh().value(torch.tensor([0.0, 100.0]), mu=2.0)
        tensor([0., 1.])
    """

    name = "tanh"
    uses_mu = True

    def __init__(self) -> None:
        super().__init__("binary")

    def value(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        return torch.tanh(theta * mu)

    def derivative(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        t = torch.tanh(theta * mu)
        return (1.0 - t * t) * mu

    def value_into(self, theta: Tensor, mu: float, out: Tensor, scratch: Optional[Tensor] = None) -> Tensor:
        return tanh_into(theta, mu, out)

    def grad_into(self, theta: Tensor, g: Tensor, mu: float, out: Tensor,
                  scratch: Optional[Tensor] = None) -> Tensor:
        return tanh_grad_into(theta, g, mu, out)

    def config(self) -> Dict[str, Any]:
        return {"name": self.name}


#: ``beta * x`` above which ``softplus_backward`` returns its ``grad`` (sigma = 1): sigma(40) rounds to 1 in
#: float32 and float64 alike, and exp(40) does not overflow in either.
_SIGMOID_CUT = 40.0


def sigmoid_into(theta: Tensor, mu: float, out: Tensor, scale: float = 1.0) -> Tensor:
    """``out = scale * sigma(mu theta)`` in one pass, ``sigma(z) = 1 / (1 + e^{-z})``.

    ``softplus_backward(scale, theta, beta=mu)`` computes
    ``scale * e^{mu theta} / (1 + e^{mu theta})`` (``scale`` where
    ``mu theta > 40``, where sigma is 1 to working precision), i.e. the
    product ``mu theta`` and the sigmoid in the same pass. About one ulp
    from ``torch.sigmoid(mu * theta)`` (measured: 1.4 eps relative to the
    exact value, ``torch.sigmoid`` 1.2 eps). The building block of the tanh
    maps [MD] and sign-Swish [BNN+] kernels (THEORY.md §2, §5). With
    ``mu = scale = 1`` it is ``torch.sigmoid`` itself, which has nothing to
    fuse and is faster there (about 20% on CPU) and within one ulp.
    """
    if mu == 1.0 and scale == 1.0:
        return torch.sigmoid(theta, out=out)
    return torch.ops.aten.softplus_backward.grad_input(_full(scale, theta), theta, mu, _SIGMOID_CUT,
                                                       grad_input=out)


def tanh_into(theta: Tensor, mu: float, out: Tensor) -> Tensor:
    """``out = tanh(mu theta)`` computed as ``2 sigma(2 mu theta) - 1`` in place (two passes).

    The optimizers' hot path: on CPU builds ``sigmoid`` is several times
    faster than ``tanh``. The result differs from ``torch.tanh`` by at most a
    few ulp of 1 (absolute, about 1e-7 in float32, 1e-16 in float64); the
    readable maps (``Tanh.value``, ``mirror_maps.Tanh.to_primal``) use
    ``torch.tanh``.
    """
    return sigmoid_into(theta, 2.0 * mu, out, scale=2.0).sub_(1.0)


def tanh_grad_into(theta: Tensor, g: Tensor, mu: float, out: Tensor) -> Tensor:
    """``out = mu (1 - tanh^2(mu theta)) g = 4 mu s (1 - s) g`` with ``s = sigma(2 mu theta)``, in place.

    Three passes: ``s`` (:func:`sigmoid_into`), ``g s (1 - s)``
    (``sigmoid_backward``) and the scale.
    """
    s = sigmoid_into(theta, 2.0 * mu, out)
    return torch.ops.aten.sigmoid_backward.grad_input(g, s, grad_input=out).mul_(4.0 * mu)


def sign_swish(x: Tensor, mu: float = 1.0) -> Tensor:
    """Sign-Swish ``SS_mu(x) = 2 sigma(mu x) [1 + mu x (1 - sigma(mu x))] - 1`` [BNN+].

    Computed as ``SS_mu(x) = t + (1 - t^2) x mu/2`` with ``t = tanh(mu x / 2)``
    (``sigma(z) = (1 + tanh(z/2)) / 2``), which never overflows (where
    ``tanh`` saturates it returns ``t = ±1``, even for an infinite ``mu x``). Odd,
    ``SS_mu(0) = 0``, overshoots to about 1.1997 at ``mu x ≈ 2.40`` and tends
    to ``sign`` pointwise as ``mu -> inf`` (THEORY.md §2). Where ``mu x / 2``
    underflows to 0 (subnormal ``x``) it returns ``mu x``, the first-order
    value, so the sign survives wherever ``mu x`` is representable.
    """
    t = torch.tanh(x * (mu / 2.0))
    ss = torch.where(t == 0, x * mu, (1.0 - t * t) * x * (mu / 2.0) + t)
    # where tanh saturates (|t| = 1) the correction (1 - t^2) y is below rounding: t, also where y overflows
    return torch.where(t.abs() == 1, t, ss)


def sign_swish_derivative(x: Tensor, mu: float = 1.0) -> Tensor:
    """``SS'_mu(x) = mu [2 - mu x tanh(mu x / 2)] / [1 + cosh(mu x)]`` [BNN+].

    Computed as ``mu (1 - y t)(1 - t^2)`` with ``y = mu x / 2`` and
    ``t = tanh(y)`` (``1 + cosh z = 2 cosh^2(z/2)``), which never overflows;
    0 where ``tanh`` saturates (``|t| = 1``), the value to rounding.
    """
    y = x * (mu / 2.0)
    t = torch.tanh(y)
    d = (1.0 - y * t) * (1.0 - t * t) * mu
    return torch.where(t.abs() == 1, torch.zeros_like(d), d)  # saturated: below rounding (0 * inf where y overflows)


class SignSwish(Quantizer):
    """Sign-Swish ``SS_mu`` and its derivative ``SS'_mu`` (THEORY.md §2) [BNN+, PC++].

    ``SS'_mu(0) = mu``. As a backward quantizer with ``F = sign`` it is BNN+;
    as both forward and backward it is BNN++ (exact gradient descent on
    ``f(SS_mu(theta))``). ``hard`` is ``sign`` (``SS_mu`` keeps the sign).

    Example:
        >>> SignSwish().derivative(torch.tensor([0.0]), mu=5.0)
        tensor([5.])
    """

    name = "signswish"
    uses_mu = True

    def __init__(self) -> None:
        super().__init__("binary")

    def value(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        return sign_swish(theta, mu)

    def derivative(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        return sign_swish_derivative(theta, mu)

    def value_into(self, theta: Tensor, mu: float, out: Tensor, scratch: Optional[Tensor] = None) -> Tensor:
        """``SS_mu(theta) = 2 swish'(mu theta) - 1`` in place, in three passes (two when ``mu = 1``).

        With ``swish(x) = x sigma(x)``, ``swish'(x) = sigma(x) [1 + x (1 - sigma(x))]``,
        so ``SS_mu(theta) = 2 swish'(mu theta) - 1`` ([BNN+]'s definition:
        sign-Swish is the derivative of Swish, rescaled). ``silu_backward``
        evaluates ``grad * swish'(x)`` in one pass: ``out = mu theta``, then
        ``out = silu_backward(2, out)``, then ``out - 1``. ``scratch`` is not
        needed for it, but as with :meth:`grad_into` the sigmoid kernel runs only
        when one is given (the optimizers give one); without it the result is
        :meth:`value`'s, bit for bit. The kernel agrees with :meth:`value` to
        about ``|mu theta|`` ulp of 1 before sigma saturates (``1 - sigma``
        cancels as ``sigma -> 1``), at most a few dozen ulp, for finite ``mu theta``
        (where ``mu theta`` overflows to inf the kernel gives NaN). Plain
        contiguous float32 CPU tensors take one pass of
        :func:`proxopt.native.sign_swish` instead (``sign(x) [(1 - e)/(1 + e) +
        2|x| e/(1 + e)^2]``, ``e = exp(-|x|)``, within a few ulp of 1; ``sign(x)``
        where ``x`` overflows).
        """
        if scratch is None:
            return out.copy_(self.value(theta, mu))
        if native.sign_swish(theta, out, mu):
            return out
        x = theta if mu == 1.0 else torch.mul(theta, mu, out=out)
        return torch.ops.aten.silu_backward.grad_input(_full(2.0, theta), x, grad_input=out).sub_(1.0)

    def grad_into(self, theta: Tensor, g: Tensor, mu: float, out: Tensor,
                  scratch: Optional[Tensor] = None) -> Tensor:
        """``SS'_mu g = 2 mu^2 A (h + 2/mu)`` in place, ``s = sigma(mu theta)``, ``A = g s (1 - s)``, ``h = theta (1 - 2s)``.

        (``SS'_mu = 4 mu s (1 - s) (1 + (mu theta / 2)(1 - 2 s))``, THEORY.md §2.)
        Four passes: ``s`` into ``scratch`` (:func:`sigmoid_into`),
        ``out = A`` (``sigmoid_backward``), ``scratch = h`` (``addcmul``), and
        ``out = 2 mu^2 A (h + 2/mu)`` in one pass: ``h <= 0`` (``theta`` and
        ``1 - 2s`` have opposite signs), where ELU's backward with
        ``is_result=True`` computes ``grad * input_scale * (h + alpha * scale)``;
        its other branch (``h > 0``, which only a sigmoid rounded to the wrong
        side of 1/2 for a tiny ``theta`` could give) returns ``grad * scale =
        4 mu A``, the value at ``h = 0``, so the result is continuous. Without ``scratch``:
        ``derivative(theta, mu) * g``. ELU's coefficients ``2 mu^2`` and ``1/(2 mu^2)``
        must lie well inside ``theta``'s dtype (between ``tiny/eps^2`` and
        ``max eps^2``; float32: about ``1e-12 < mu < 1e12``; never for float16);
        outside that the last pass is two: ``out = A + (mu/2) A h``
        (``addcmul``) and the scale ``4 mu``. The error against the exact value is
        the same either way (a few ulp, growing with ``|mu theta|`` as in
        :meth:`value_into`). For ``|theta|`` below half the dtype's largest value
        (``theta (1 - 2s)`` overflows beyond); latents never get near it. Plain
        contiguous float32 CPU tensors take one pass of
        :func:`proxopt.native.sign_swish_grad` instead.
        """
        if scratch is None:
            return super().grad_into(theta, g, mu, out)
        if native.sign_swish_grad(theta, g, out, mu):
            return out
        s = sigmoid_into(theta, mu, scratch)
        torch.ops.aten.sigmoid_backward.grad_input(g, s, grad_input=out)
        h = torch.addcmul(theta, theta, s, value=-2.0, out=s)
        fi = torch.finfo(theta.dtype)
        c, a = 2.0 * mu * mu, 0.5 / (mu * mu) if mu * mu > 0.0 else math.inf
        lo, hi = fi.tiny / fi.eps ** 2, fi.max * fi.eps ** 2  # headroom: products with A stay normal
        if lo <= c <= hi and lo <= a <= hi:
            return torch.ops.aten.elu_backward.grad_input(out, a, 4.0 * mu, c, True, h, grad_input=out)
        return torch.addcmul(out, out, h, value=mu / 2.0, out=out).mul_(4.0 * mu)

    def config(self) -> Dict[str, Any]:
        return {"name": self.name}


class ApproxSign(Quantizer):
    """Bi-Real Net's ApproxSign (THEORY.md §2, optional extra).

    .. math::
        F(x) = \\begin{cases} -1 & x < -1 \\\\ 2x + x^2 & -1 \\le x < 0 \\\\
               2x - x^2 & 0 \\le x < 1 \\\\ 1 & x \\ge 1 \\end{cases},
        \\qquad F'(x) = (2 - 2|x|)\\,1\\{|x| \\le 1\\}

    Example:
        >>> ApproxSign().value(torch.tensor([-0.5, 0.5, 3.0]))
        tensor([-0.7500,  0.7500,  1.0000])
    """

    name = "approxsign"

    def __init__(self) -> None:
        super().__init__("binary")

    def value(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        x = theta.clamp(-1.0, 1.0)
        return 2.0 * x - x * x.abs()

    def derivative(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        return (2.0 - 2.0 * theta.abs()).clamp_min(0.0)

    def config(self) -> Dict[str, Any]:
        return {"name": self.name}


def linear_prox(theta: Tensor, levels: Tuple[float, ...], a: float, b: float) -> Tensor:
    """The linear proximal quantizer over ``levels`` with dead zone ``a`` and jump ``b``.

    THEORY.md §3 (our reconstruction of the PC paper's figure, not its
    ``(rho, varrho)`` parameters). With gaps ``h`` and slope
    ``s = (1 - b) / (1 - a)``, for ``theta`` clipped to ``[q_1, q_d]``, ``q`` its
    nearest level (ties → larger) and ``d = theta - q``:

    .. math:: F(\\theta) = q + \\operatorname{sign}(d)\\, s\\,
              \\max(0, |d| - a h / 2)

    where ``h`` is the gap on ``d``'s side of ``q``. Around each level the
    output is flat on a dead zone of half-width ``a h / 2``; beside each
    midpoint ``p`` it is ``p ∓ b h / 2``. ``a = b = 0`` is ``clip``; ``a -> 1``
    hard rounding. It is monotone non-decreasing, hence a proximal map.

    Args:
        theta: input tensor.
        levels: sorted levels.
        a: dead-zone fraction in ``[0, 1]``.
        b: jump fraction in ``[0, 1]``.

    Example:
        >>> linear_prox(torch.tensor([0.2, -0.9]), (-1.0, 1.0), 0.5, 0.5)
        tensor([ 0.7000, -1.0000])

    References:
        [PC] Dockhorn et al., NeurIPS 2021; [PQ] Bai et al., ICLR 2019.
    """
    lo, hi = levels[0], levels[-1]
    x = theta.clamp(lo, hi)
    if a >= 1.0:
        return nearest(x, levels)
    if a == 0.0 and b == 0.0:  # no dead zone, no jump: clip
        return x
    s = (1.0 - b) / (1.0 - a)
    if levels == BINARY and b == 0.0:  # the "linear" member: clip(s * theta, -1, 1)
        return (theta * s).clamp(-1.0, 1.0)
    lv = levels_tensor(levels, x)
    idx = nearest_index(x, levels)
    q = lv[idx]
    d = x - q
    gaps = torch.diff(lv)
    right = torch.cat([gaps, gaps.new_zeros(1)])[idx]
    left = torch.cat([gaps.new_zeros(1), gaps])[idx]
    h = torch.where(d >= 0, right, left)
    return q + torch.sign(d) * (d.abs() - a * h / 2.0).clamp_min(0.0) * s


class LinearProx(Quantizer):
    """ProxConnect's linear proximal quantizer, annealed by ``mu`` (THEORY.md §3).

    ``value(theta, mu) = linear_prox(theta, levels, a, b)`` with dead zone
    ``a = max(0, 1 - 1/mu)`` and jump ``b = jump * a``. So ``mu = 1`` is
    ``clip`` (full precision inside the range), ``mu -> inf`` is hard rounding,
    and for ``jump = 0`` the binary map is ``clip(mu * theta, -1, 1)`` (the
    "linear" member; PARQ's ``clamp(theta / s)`` with ``s = 1/mu``). For
    ``jump = 1`` it is ``sign(theta) min(|theta| + a, 1)``, the prox of
    ``a * dist_1(w, Q)`` plus the box (ProxQuant's regularizer, clipped).

    ``derivative`` is the ramp slope ``(1 - b)/(1 - a)`` where the map is
    increasing and 0 elsewhere.

    Args:
        levels: level set (``"binary"``, ``"ternary"``, bits or list).
        jump: ``b / a`` in ``[0, 1]``.

    Example:
        >>> LinearProx().value(torch.tensor([0.1, 0.6]), mu=2.0)
        tensor([0.2000, 1.0000])

    References:
        [PC] Dockhorn et al., NeurIPS 2021.
    """

    name = "linearprox"
    uses_mu = True

    def __init__(self, levels: LevelsSpec = "binary", jump: float = 0.0) -> None:
        super().__init__(levels)
        if not isinstance(jump, (int, float)) or isinstance(jump, bool) or not 0.0 <= float(jump) <= 1.0:
            raise ValueError(f"Invalid jump: {jump!r} (expected a float in [0, 1])")
        self.jump = float(jump)

    @staticmethod
    def dead_zone(mu: float) -> float:
        """``a = max(0, 1 - 1/mu)``: the dead-zone fraction reached at strength ``mu > 0`` (``mu = inf``: 1)."""
        if not mu > 0.0:  # also NaN
            raise ValueError(f"Invalid mu: {mu!r} (expected a positive float)")
        return max(0.0, 1.0 - 1.0 / mu) if math.isfinite(mu) else 1.0

    def value(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        a = self.dead_zone(mu)
        return linear_prox(theta, self.levels, a, self.jump * a)  # type: ignore[arg-type]

    def value_into(self, theta: Tensor, mu: float, out: Tensor, scratch: Optional[Tensor] = None) -> Tensor:
        a = self.dead_zone(mu)
        if self.levels == BINARY and self.jump == 0.0 and a < 1.0:
            return torch.mul(theta, 1.0 / (1.0 - a), out=out).clamp_(-1.0, 1.0)
        return out.copy_(self.value(theta, mu))

    def derivative(self, theta: Tensor, mu: float = 1.0) -> Tensor:
        a = self.dead_zone(mu)
        if a >= 1.0:
            return torch.zeros_like(theta)
        b = self.jump * a
        s = (1.0 - b) / (1.0 - a)
        levels = self.levels
        lo, hi = levels[0], levels[-1]  # type: ignore[index]
        inside = (theta > lo) & (theta < hi)
        lv = levels_tensor(levels, theta)  # type: ignore[arg-type]
        idx = nearest_index(theta.clamp(lo, hi), levels)  # type: ignore[arg-type]
        q = lv[idx]
        d = theta - q
        gaps = torch.diff(lv)
        right = torch.cat([gaps, gaps.new_zeros(1)])[idx]
        left = torch.cat([gaps.new_zeros(1), gaps])[idx]
        h = torch.where(d >= 0, right, left)
        ramp = (d.abs() > a * h / 2.0) if a > 0.0 else torch.ones_like(inside)
        return (inside & ramp).to(theta.dtype) * s

    def config(self) -> Dict[str, Any]:
        cfg = super().config()
        if self.jump:
            cfg["jump"] = self.jump
        return cfg


_REGISTRY = {
    cls.name: cls for cls in (Identity, Sign, Clip, Tanh, SignSwish, ApproxSign, LinearProx)
}
_ALIASES = {"ste": "identity", "sign_swish": "signswish", "swish": "signswish", "hardtanh": "clip",
            "linear_prox": "linearprox", "approx_sign": "approxsign"}


def available() -> Tuple[str, ...]:
    """Names accepted by :func:`get`."""
    return tuple(sorted(_REGISTRY))


def get(spec: Any, **kwargs: Any) -> Quantizer:
    """Build a quantizer from a name, a config dict or an instance (returned as is).

    Example:
        >>> get("linearprox", levels="ternary")
        LinearProx(levels=[-1.0, 0.0, 1.0])
        >>> get({"name": "sign"})
        Sign()
    """
    if isinstance(spec, Quantizer):
        if kwargs:
            raise TypeError(f"Invalid quantizer arguments {kwargs!r} for an instance {spec!r}")
        return spec
    if isinstance(spec, dict):
        cfg = dict(spec)
        name = cfg.pop("name", None)
        cfg.update(kwargs)
        return get(name, **cfg)
    if isinstance(spec, type) and issubclass(spec, Quantizer):
        return spec(**kwargs)
    if not isinstance(spec, str):
        raise TypeError(f"Invalid quantizer: {spec!r} (expected a name, a config dict or a Quantizer)")
    key = _ALIASES.get(spec.lower(), spec.lower())
    if key not in _REGISTRY:
        raise ValueError(f"Invalid quantizer: {spec!r}; valid names are {', '.join(available())}")
    return _REGISTRY[key](**kwargs)
