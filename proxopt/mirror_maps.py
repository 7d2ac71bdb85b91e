"""Mirror maps for mirror-descent quantization [MD].

A continuous, strictly increasing projection ``P_beta: R -> C`` defines a
mirror map ``Phi`` with ``grad Phi = P_beta^{-1}`` (MD paper, Thm 1). In the
numerically stable "-S" form the optimizer stores the dual
``theta = grad Phi(w)`` and does (THEORY.md §5)

.. math:: w_t = P_\\beta(\\theta_t),\\qquad
          \\theta_{t+1} = \\theta_t - \\eta\\,\\nabla_w f(w_t)

Every map offers ``to_primal(theta, beta)`` (``P_beta``), ``to_dual(w, beta)``
(``P_beta^{-1}``), ``potential(w, beta)`` (``Phi_beta``), ``bregman(w, v, beta)``
(``D_Phi``), ``hard(theta)`` (exact levels) and ``primal_derivative``
(``dP/dtheta``, used by the GD baselines that apply the Jacobian).

References:
    [MD] Ajanthan, Gupta, Torr, Hartley, Dokania. Mirror Descent View for
    Neural Network Quantization. AISTATS 2021.
    [PMF] Ajanthan, Dokania, Hartley, Torr. Proximal Mean-Field for Neural
    Network Quantization. ICCV 2019.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor

from . import native
from .levels import BINARY, TERNARY, LevelsSpec, levels_tensor, make_levels, nearest
from .quantizers import _SIGMOID_CUT, _const, sigmoid_into, tanh_grad_into, tanh_into

__all__ = ["MirrorMap", "Tanh", "Linear", "Softmax", "ShiftedTanh", "get", "available"]


def _below_one(t: Tensor) -> float:
    """Largest value of ``t``'s dtype strictly below 1 (1 - eps/2)."""
    return 1.0 - torch.finfo(t.dtype).eps / 2.0


def _affine_into(a: float, s: Tensor, b: float, out: Tensor) -> Tensor:
    """``out = a + b * s`` in one pass (``torch.add`` with a 0-d ``a`` and ``alpha = b``)."""
    return torch.add(_const(a, s), s, alpha=b, out=out)


@functools.lru_cache(maxsize=256)
def _dual_floor(dtype: torch.dtype, beta: float) -> float:
    """``log(tiny) / beta`` rounded as ``dtype`` computes it: the softmax dual's floor (``u >= tiny``)."""
    return float(torch.tensor(math.log(torch.finfo(dtype).tiny), dtype=dtype) / beta)


def _log_cosh(y: Tensor) -> Tensor:
    """``log cosh y`` without overflow: ``|y| + log1p(exp(-2|y|)) - log 2``."""
    a = y.abs()
    return a + torch.log1p(torch.exp(-2.0 * a)) - math.log(2.0)


class MirrorMap:
    """Base class of a mirror map given by its projection ``P_beta`` (THEORY.md §5).

    Attributes:
        name: registry name.
        levels: the level set of ``hard``.
        strict: the primal (non-"-S") form is defined for this map (needs
            ``P_beta`` strictly increasing; THEORY.md §5 defines the linear and
            shifted-tanh maps in the stable form only).
        dual_size: ``None`` when the dual has the weight's shape; ``d`` when
            each weight has a dual vector of size ``d`` (softmax).

    References:
        [MD] Ajanthan et al., AISTATS 2021, Thm 1.
    """

    name = "mirror_map"
    strict = True
    dual_size: Optional[int] = None

    def __init__(self, levels: LevelsSpec = "binary") -> None:
        self.levels: Tuple[float, ...] = make_levels(levels)

    def to_primal(self, theta: Tensor, beta: float = 1.0) -> Tensor:  # pragma: no cover - abstract
        """The projection ``w = P_beta(theta)``."""
        raise NotImplementedError

    def to_dual(self, w: Tensor, beta: float = 1.0) -> Tensor:  # pragma: no cover - abstract
        """Its inverse ``theta = P_beta^{-1}(w) = grad Phi_beta(w)``."""
        raise NotImplementedError

    def primal_derivative(self, theta: Tensor, beta: float = 1.0) -> Tensor:  # pragma: no cover
        """``dP_beta / dtheta`` (the Jacobian the mirror-descent step skips)."""
        raise NotImplementedError

    def potential(self, w: Tensor, beta: float = 1.0) -> Tensor:  # pragma: no cover - abstract
        """The mirror-map potential ``Phi_beta(w)``."""
        raise NotImplementedError

    def to_primal_into(self, theta: Tensor, beta: float, out: Tensor) -> Tensor:
        """Write ``to_primal(theta, beta)`` into ``out`` (bit for bit unless the subclass documents otherwise)."""
        return out.copy_(self.to_primal(theta, beta))

    def primal_grad_into(self, theta: Tensor, g: Tensor, beta: float, out: Tensor) -> Tensor:
        """Write ``primal_derivative(theta, beta) * g`` into ``out`` (scalar-dual maps)."""
        return torch.mul(self.primal_derivative(theta, beta), g, out=out)

    def renormalize_(self, theta: Tensor, beta: float, scratch: Optional[Tensor] = None) -> Tensor:
        """The primal form's per-step re-encoding at a fixed ``beta``, in place.

        The primal (non-"-S") mirror-descent form keeps the primal point
        ``w = P_beta(theta)`` and recomputes the dual from it,
        ``theta <- P_beta^{-1}(P_beta(theta))`` (THEORY.md §5). In exact
        arithmetic that is the identity wherever ``P_beta`` is invertible;
        in floating point it is what the saturation of ``P_beta`` does to
        ``theta``. This default runs the round trip; maps override it with
        the equivalent cheap form (:class:`Tanh`: a clamp, :class:`Softmax`:
        the shift to a largest entry of 0). ``scratch`` is an optional
        workspace of ``theta``'s shape.
        """
        return theta.copy_(self.to_dual(self.to_primal(theta, beta), beta))

    def renormalize_to_primal_into(self, theta: Tensor, beta: float, out: Tensor) -> bool:
        """:meth:`renormalize_` then :meth:`to_primal_into` ``out`` in one pass, bit for bit the two calls.

        The primal form's write-back after a step, ``theta <- P_beta^{-1}(P_beta(theta))``
        and ``w = P_beta(theta)``, reading ``theta`` once. Returns False, having
        done nothing, where the map has no such pass for these tensors (this
        default: always); the caller then makes the two calls.
        """
        return False

    #: ``P_beta(theta) = P_1(beta theta)`` (tanh, linear, softmax; not the shifted tanh), hence
    #: ``P_beta^{-1} = P_1^{-1} / beta``.
    beta_scaled = True

    def reencode_(self, theta: Tensor, old: float, new: float, scratch: Optional[Tensor] = None) -> Tensor:
        """``theta <- P_new^{-1}(P_old(theta))`` in place: the primal form's dual after ``beta`` changed.

        For maps with ``P_beta(theta) = P_1(beta theta)``,

        .. math:: P_{new}^{-1}(P_{old}(\\theta)) = \\tfrac{old}{new}\\,P_{old}^{-1}(P_{old}(\\theta)),

        i.e. :meth:`renormalize_` at ``old`` followed by one multiply: no
        transcendental passes (a clamp and a scale for tanh, a shift, a floor
        and a scale for softmax). Equal to ``to_dual(to_primal(theta, old),
        new)`` up to rounding (for softmax to :meth:`Softmax.reencode`, the
        dual of the same point with largest entry 0; THEORY.md §5, primal
        form [MD]). Other maps run that round trip.
        """
        if old == new:
            return self.renormalize_(theta, old, scratch)
        if not self.beta_scaled:
            return theta.copy_(self.to_dual(self.to_primal(theta, old), new))
        self.renormalize_(theta, old, scratch)
        return theta.mul_(old / new)

    def bregman(self, w: Tensor, v: Tensor, beta: float = 1.0) -> Tensor:
        """``D(w, v) = Phi(w) - Phi(v) - <grad Phi(v), w - v>`` (elementwise)."""
        return self.potential(w, beta) - self.potential(v, beta) - self.to_dual(v, beta) * (w - v)

    def hard(self, theta: Tensor) -> Tensor:
        """Exact levels: the ``beta -> inf`` limit of ``P_beta(theta)`` (``sign`` when binary)."""
        return nearest(theta, self.levels)

    def init_dual(self, p: Tensor, smoothing: float = 0.0) -> Tensor:
        """Initial dual from a parameter: a copy (the model then holds ``P_beta(p)``); see :class:`Softmax`."""
        return p.detach().clone()

    def primal_grad_to_dual(self, theta: Tensor, grad: Tensor) -> Tensor:
        """Mirror-descent (Jacobian-skipped) pull-back of ``grad_w`` to the dual: the identity."""
        return grad

    def config(self) -> Dict[str, Any]:
        """Primitives that rebuild the map with :func:`get`."""
        return {"name": self.name}

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.config() == other.config()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(repr(self.config()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Tanh(MirrorMap):
    """The tanh mirror map (binary) [MD].

    .. math::
        P_\\beta(\\theta) = \\tanh(\\beta\\theta),\\quad
        P_\\beta^{-1}(w) = \\operatorname{atanh}(w)/\\beta,\\\\
        \\Phi_\\beta(w) = \\tfrac{1}{2\\beta}[(1+w)\\log(1+w) + (1-w)\\log(1-w)],\\\\
        D(w, v) = \\tfrac{1}{\\beta}\\,\\mathrm{KL}(\\mathrm{Bern}(\\tfrac{1+w}{2})\\,\\|\\,
                  \\mathrm{Bern}(\\tfrac{1+v}{2}))

    ``to_dual`` clamps ``w`` into the open interval at the largest float below
    1 of ``w``'s dtype, so it is finite at ``±1``; ``bregman`` computes the
    complements ``(1 - w)/2`` directly, so it stays finite there. ``hard`` is ``sign`` with
    ``sign(0) = +1``.

    Example:
        >>> m = Tanh()
        >>> m.to_primal(m.to_dual(torch.tensor([0.5]), 2.0), 2.0)
        tensor([0.5000])
    """

    name = "tanh"

    def __init__(self) -> None:
        super().__init__("binary")

    def to_primal(self, theta: Tensor, beta: float = 1.0) -> Tensor:
        return torch.tanh(theta * beta)

    def to_primal_into(self, theta: Tensor, beta: float, out: Tensor) -> Tensor:
        """``tanh(beta theta)`` as ``2 sigma(2 beta theta) - 1`` in two passes (see :func:`tanh_into`)."""
        return tanh_into(theta, beta, out)

    def primal_grad_into(self, theta: Tensor, g: Tensor, beta: float, out: Tensor) -> Tensor:
        """``beta (1 - tanh^2(beta theta)) g`` in three passes (see :func:`tanh_grad_into`)."""
        return tanh_grad_into(theta, g, beta, out)

    def to_dual(self, w: Tensor, beta: float = 1.0) -> Tensor:
        m = _below_one(w)
        return torch.atanh(w.clamp(-m, m)) / beta

    def dual_bound(self, beta: float, dtype: torch.dtype) -> float:
        """``atanh(m) / beta`` in ``dtype``, ``m`` the largest float below 1: ``to_dual``'s value at ``w = ±1``.

        ``P_beta(theta) = tanh(beta theta)`` rounds to ``±1`` (or to ``±m``)
        beyond about this bound, and ``to_dual`` clamps ``w`` to ``[-m, m]``,
        so the round trip ``P^{-1}(P(theta))`` maps every saturated ``theta``
        to exactly ``±dual_bound``. Computed with the same tensor operations
        as ``to_dual`` so the two agree bit for bit.
        """
        m = torch.tensor(_below_one(torch.empty((), dtype=dtype)), dtype=dtype)
        return float(torch.atanh(m) / beta)

    def renormalize_(self, theta: Tensor, beta: float, scratch: Optional[Tensor] = None) -> Tensor:
        """Primal form at fixed ``beta``: ``theta <- clamp(theta, -b, b)``, ``b = atanh(m)/beta``, in ONE pass.

        THEORY.md §5's primal form keeps ``w = tanh(beta theta)`` and
        recomputes the dual ``theta = atanh(w)/beta`` from it before every
        step. At a fixed ``beta`` that round trip is the identity in exact
        arithmetic, except that ``w`` saturates in floating point and
        ``to_dual`` clamps it to ``±m`` (``m = 1 - eps/2``): the round trip is
        ``theta`` up to the rounding of ``w`` where ``tanh`` is not saturated
        and exactly ``±b`` (:meth:`dual_bound`) for ``|theta| >= b``. The clamp
        keeps unsaturated entries exactly (the exact-arithmetic result; the
        float round trip snaps ``theta`` to ``w``'s float grid, which is coarse
        in ``theta`` near ``±b``, so the two agree in ``w = P(theta)`` to a few
        ulp) and sends saturated ones to the same ``±b``; NaN stays NaN. A change of ``beta`` is this clamp
        followed by a scale (:meth:`MirrorMap.reencode_`).
        """
        b = self.dual_bound(beta, theta.dtype)
        return theta.clamp_(-b, b)

    def primal_derivative(self, theta: Tensor, beta: float = 1.0) -> Tensor:
        t = torch.tanh(theta * beta)
        return (1.0 - t * t) * beta

    def potential(self, w: Tensor, beta: float = 1.0) -> Tensor:
        return (torch.xlogy(1.0 + w, 1.0 + w) + torch.xlogy(1.0 - w, 1.0 - w)) / (2.0 * beta)

    def bregman(self, w: Tensor, v: Tensor, beta: float = 1.0) -> Tensor:
        p, pc = (1.0 + w) / 2.0, (1.0 - w) / 2.0  # complements computed directly: exact near ±1
        q, qc = (1.0 + v) / 2.0, (1.0 - v) / 2.0
        kl = torch.xlogy(p, p) - torch.xlogy(p, q) + torch.xlogy(pc, pc) - torch.xlogy(pc, qc)
        return kl / beta

    def config(self) -> Dict[str, Any]:
        return {"name": self.name}


class Linear(MirrorMap):
    """The linear (clipped) mirror map (binary) [MD].

    .. math::
        P_\\beta(\\theta) = \\operatorname{clip}(\\beta\\theta, -1, 1),\\quad
        \\Phi_\\beta(w) = \\frac{w^2}{2\\beta}\\ (+\\infty\\text{ outside }[-1,1]),\\quad
        D(w, v) = \\frac{(w - v)^2}{2\\beta}

    ``P`` is monotone but not strictly, so only the stable form exists;
    ``to_dual(w) = w / beta`` inverts it on the open interval. ``P -> sign``
    as ``beta -> inf``.

    Example:
        >>> Linear().to_primal(torch.tensor([0.2, 3.0]), 2.0)
        tensor([0.4000, 1.0000])
    """

    name = "linear"
    strict = False

    def __init__(self) -> None:
        super().__init__("binary")

    def to_primal(self, theta: Tensor, beta: float = 1.0) -> Tensor:
        return (theta * beta).clamp(-1.0, 1.0)

    def to_primal_into(self, theta: Tensor, beta: float, out: Tensor) -> Tensor:
        """``clip(beta theta, -1, 1)`` into ``out``; one pass at ``beta = 1`` (``theta * 1`` is exact)."""
        if beta == 1.0:
            return torch.clamp(theta, -1.0, 1.0, out=out)
        return torch.mul(theta, beta, out=out).clamp_(-1.0, 1.0)

    def to_dual(self, w: Tensor, beta: float = 1.0) -> Tensor:
        return w / beta

    def primal_derivative(self, theta: Tensor, beta: float = 1.0) -> Tensor:
        return ((theta * beta).abs() <= 1.0).to(theta.dtype) * beta

    def potential(self, w: Tensor, beta: float = 1.0) -> Tensor:
        out = w * w / (2.0 * beta)
        return torch.where(w.abs() <= 1.0, out, torch.full_like(out, math.inf))

    def bregman(self, w: Tensor, v: Tensor, beta: float = 1.0) -> Tensor:
        return (w - v) ** 2 / (2.0 * beta)

    def config(self) -> Dict[str, Any]:
        return {"name": self.name}


class ShiftedTanh(MirrorMap):
    """The shifted-tanh mirror map for ternary weights (stable form) [MD].

    .. math::
        P_\\beta(\\theta) = \\tfrac12[\\tanh(\\beta(\\theta + \\tfrac12)) +
                           \\tanh(\\beta(\\theta - \\tfrac12))]

    ``P`` is odd and strictly increasing from -1 to 1. Its inverse is closed
    form: with ``C = cosh(beta)``, ``x = exp(2 beta theta)`` solves
    ``(1 - w) x^2 - 2 w C x - (1 + w) = 0``, whose positive root gives

    .. math:: \\theta = \\frac{1}{2\\beta}\\Big[\\operatorname{atanh}(w) +
              \\operatorname{asinh}\\Big(\\frac{wC}{\\sqrt{1 - w^2}}\\Big)\\Big]

    (``log(wC + sqrt(w^2 C^2 + 1 - w^2)) - log(1 - w)`` rewritten), odd in
    ``w`` and finite for every ``beta``: beyond ``beta`` of about 650, near
    where ``C`` overflows, the asinh argument is formed in logs and, above 1e8,
    the asinh is ``log 2 + log|w| + log C - log(1 - w^2)/2``. The potential uses
    ``Phi(w) = w theta - int_0^theta P`` with
    ``int_0^theta P = [log cosh(beta(theta+1/2)) + log cosh(beta(theta-1/2))
    - 2 log cosh(beta/2)] / (2 beta)``. ``hard`` rounds to ``{-1, 0, 1}``.

    Example:
        >>> m = ShiftedTanh()
        >>> m.hard(torch.tensor([-2.0, 0.1, 0.7]))
        tensor([-1.,  0.,  1.])
    """

    name = "shifted_tanh"
    strict = False  # THEORY.md §5: defined in the stable form only
    beta_scaled = False

    def __init__(self) -> None:
        super().__init__("ternary")

    def to_primal(self, theta: Tensor, beta: float = 1.0) -> Tensor:
        return 0.5 * (torch.tanh(beta * (theta + 0.5)) + torch.tanh(beta * (theta - 0.5)))

    def primal_derivative(self, theta: Tensor, beta: float = 1.0) -> Tensor:
        a = torch.tanh(beta * (theta + 0.5))
        b = torch.tanh(beta * (theta - 0.5))
        return 0.5 * beta * ((1.0 - a * a) + (1.0 - b * b))

    def to_dual(self, w: Tensor, beta: float = 1.0) -> Tensor:
        m = _below_one(w)
        wd = w.clamp(-m, m).double()
        log_c = beta + math.log1p(math.exp(-2.0 * beta)) - math.log(2.0)  # log cosh(beta), no overflow
        root = torch.sqrt(1.0 - wd * wd)
        if log_c < 650.0:  # C / sqrt(1 - w^2) is finite: |w| < 1 - eps/2 keeps 1/sqrt(1 - w^2) below 1e8 (float64)
            far = torch.asinh(wd * (math.exp(log_c) / root))
        else:  # in logs: lz = log|z|; asinh(|z|) = log 2 + lz to float64 precision once |z| > 1e8
            a = wd.abs()
            # w = 0 gives theta = 0; autograd there gives 1/beta, not the overflowing (1 + C)/(2 beta)
            safe = torch.where(a > 0, a, torch.ones_like(a))
            lz = torch.log(safe) + log_c - torch.log(root)
            big = math.log(1e8)
            mag = torch.where(lz > big, math.log(2.0) + lz, torch.asinh(torch.exp(lz.clamp_max(big))))
            far = torch.where(a > 0, torch.sign(wd) * mag, wd)
        return ((torch.atanh(wd) + far) / (2.0 * beta)).to(w.dtype)

    def potential(self, w: Tensor, beta: float = 1.0) -> Tensor:
        theta = self.to_dual(w, beta).double()
        half = _log_cosh(torch.tensor(beta / 2.0, dtype=torch.float64))
        integral = (_log_cosh(beta * (theta + 0.5)) + _log_cosh(beta * (theta - 0.5)) - 2.0 * half) / (2.0 * beta)
        return (w.double() * theta - integral).to(w.dtype)

    def hard(self, theta: Tensor) -> Tensor:
        return nearest(theta, TERNARY)

    def config(self) -> Dict[str, Any]:
        return {"name": self.name}


#: Floor of the initial simplex point of :meth:`Softmax.init_dual`: float32's
#: eps in every dtype, so float32 and float64 runs start from the same dual.
_SOFTMAX_FLOOR = float(torch.finfo(torch.float32).eps)


class Softmax(MirrorMap):
    """The softmax mirror map over ``d`` levels [MD].

    Each weight has a dual vector ``theta in R^d``:

    .. math::
        u = \\operatorname{softmax}(\\beta\\theta) \\in \\Delta^{d-1},\\quad
        w = \\sum_j u_j q_j,\\quad
        \\Phi(u) = \\tfrac1\\beta \\sum_j u_j \\log u_j,\\quad
        D(u, v) = \\mathrm{KL}(u\\|v)/\\beta

    ``to_primal`` returns ``w``; ``to_simplex`` returns ``u``; ``to_dual(u)``
    is ``log(u)/beta`` (``u`` clamped at the dtype's smallest normal number); ``potential`` and
    ``bregman`` take simplex points (last dimension ``d``). The pull-back of
    ``g_w`` to the dual is ``g_u = g_w q`` (the skipped softmax Jacobian is
    the MD/straight-through step). ``hard`` is ``q`` at the argmax of
    ``theta`` (ties → larger level). The dual costs ``d`` times the weight's
    memory.

    Args:
        levels: the level set (default binary).

    Example:
        >>> m = Softmax("ternary")
        >>> m.hard(torch.tensor([[0.1, 2.0, -1.0]]))
        tensor([0.])
    """

    name = "softmax"

    def __init__(self, levels: LevelsSpec = "binary") -> None:
        super().__init__(levels)
        self.dual_size = len(self.levels)

    def to_simplex(self, theta: Tensor, beta: float = 1.0) -> Tensor:
        """``u = softmax(beta * theta)`` over the last dimension."""
        return torch.softmax(theta * beta, dim=-1)

    def to_primal(self, theta: Tensor, beta: float = 1.0) -> Tensor:
        return self.to_simplex(theta, beta) @ levels_tensor(self.levels, theta)

    @staticmethod
    def _buffers(theta: Tensor, scratch: Optional[Tensor], k: int) -> Tuple[Tensor, ...]:
        """``k`` contiguous buffers of ``theta.shape[:-1]`` from ``scratch`` (``theta``'s shape) or new ones."""
        shape, n = theta.shape[:-1], theta[..., 0].numel()
        if scratch is not None and scratch.numel() >= k * n and scratch.is_contiguous():
            flat = scratch.reshape(-1)
            return tuple(flat[i * n:(i + 1) * n].view(shape) for i in range(k))
        return tuple(torch.empty(shape, dtype=theta.dtype, device=theta.device) for _ in range(k))

    @staticmethod
    def _column_max(theta: Tensor, out: Tensor) -> Tensor:
        """``out = max_j theta_j`` by ``d - 1`` elementwise passes over the columns (NaN propagates)."""
        cols = theta.unbind(-1)
        if len(cols) == 1:
            return out.copy_(cols[0])
        torch.maximum(cols[0], cols[1], out=out)
        for c in cols[2:]:
            torch.maximum(out, c, out=out)
        return out

    @staticmethod
    def _shifted_exps(theta: Tensor, m: Tensor, e: Tensor, beta: float) -> Iterator[Tuple[int, Tensor]]:
        """Yield ``(j, e)`` with ``e = exp(beta (theta_j - m))`` written into ``e``, one column at a time."""
        for j, c in enumerate(theta.unbind(-1)):
            torch.sub(c, m, out=e)
            if beta != 1.0:
                e.mul_(beta)
            yield j, e.exp_()

    def to_primal_into(self, theta: Tensor, beta: float, out: Tensor, scratch: Optional[Tensor] = None) -> Tensor:
        """``w = sum_j q_j softmax(beta theta)_j`` into ``out`` without a softmax over the last dimension.

        ``torch.softmax`` over a last dimension of size ``d`` (2 or 3) is slow
        on CPU, and so are strided transcendental kernels, so every
        transcendental here runs on contiguous ``(...)``-shaped buffers:

        * two levels: ``w = q_0 + (q_1 - q_0) sigma(beta (theta_1 - theta_0))``,
          one pass of :func:`proxopt.native.sm2_project` for float32 CPU
          duals with contiguous level columns (the optimizers' level-major
          layout), else three passes (difference, scaled logistic, fused affine);
        * ``d > 2``: with ``M = max_j theta_j``, ``e_j = exp(beta (theta_j - M))``,
          ``w = sum_j q_j e_j / sum_j e_j`` (about 4 passes per level), using
          ``scratch`` (a workspace of ``theta``'s shape) for ``M``, ``e_j`` and
          the denominator.

        Agrees with :meth:`to_primal` to a few ulp of ``max |q|``.
        """
        if out.shape != theta.shape[:-1]:
            return out.copy_(self.to_primal(theta, beta))
        q = self.levels
        if len(q) == 2:
            t0, t1 = theta.unbind(-1)
            if native.sm2_project(t0, t1, out, beta, q[0], q[1] - q[0]):
                return out
            s = sigmoid_into(torch.sub(t1, t0, out=out), beta, out)
            return _affine_into(q[0], s, q[1] - q[0], out)
        m, e, den = self._buffers(theta, scratch, 3)
        self._column_max(theta, m)
        for j, e in self._shifted_exps(theta, m, e, beta):
            if j == 0:
                den.copy_(e)
                torch.mul(e, q[j], out=out)
            else:
                den.add_(e)
                out.add_(e, alpha=q[j])
        return out.div_(den)

    def to_dual(self, u: Tensor, beta: float = 1.0) -> Tensor:
        return torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)) / beta

    def reencode(self, theta: Tensor, old: float, new: float, log_partition: bool = False) -> Tensor:
        """``to_dual(u / max_k u_k, new)`` with ``u = to_simplex(theta, old)``: the primal form's recomputed dual.

        The dual of the kept simplex point whose largest entry is 0,
        ``log(u_j / max_k u_k) / new`` floored at ``log(tiny)/new`` (see
        :meth:`renormalize_`); with ``log_partition``, ``to_dual(u, new) =
        log(u)/new`` itself. Computed through ``u`` (the reference the
        in-place forms are tested against).
        """
        u = self.to_simplex(theta, old)
        return self.to_dual(u if log_partition else u / u.amax(-1, keepdim=True), new)

    def reencode_(self, theta: Tensor, old: float, new: float, scratch: Optional[Tensor] = None,
                  log_partition: bool = False) -> Tensor:
        """:meth:`MirrorMap.reencode_`: :meth:`renormalize_` at ``old`` (with ``log_partition``), times ``old/new``."""
        self.renormalize_(theta, old, scratch, log_partition)
        return theta if old == new else theta.mul_(old / new)

    def renormalize_(self, theta: Tensor, beta: float, scratch: Optional[Tensor] = None,
                     log_partition: bool = False) -> Tensor:
        """Primal form at fixed ``beta``: ``theta_j <- max(theta_j - max_k theta_k, log(tiny)/beta)``, in place.

        The primal form keeps the simplex point ``u = softmax(beta theta)``
        and recomputes its dual after every step (THEORY.md §5). Softmax is
        invariant to adding one constant to every ``theta_j``, so the duals
        of ``u`` are ``log(u)/beta + c``. By default the primal form keeps the
        one whose largest entry is 0,

        .. math::

            \\theta_j \\leftarrow \\tfrac1\\beta \\log \\frac{u_j}{\\max_k u_k} = \\theta_j - \\max_k \\theta_k,

        floored at ``log(tiny)/beta`` where ``u_j / max_k u_k`` underflows
        (as :meth:`to_dual` floors ``u`` at ``tiny``); entries equal to the
        max become ``+0`` exactly (an infinite max too, instead of
        ``inf - inf``; two levels go through ``d = theta_1 - theta_0``: the
        larger entry ``+0``, the other ``max(-|d|, floor)``, NaN in both
        where ``d`` is NaN). The subtraction is exact in floating point: every
        difference with the largest entry is kept bit for bit (``a - b``
        rounds as ``-(b - a)``), so where the floor does not act ``w`` is
        unchanged by it bit for bit and so are the hard levels (argmax),
        except that with denormals flushed (``torch.set_flush_denormal``) a
        difference below the smallest normal number becomes a tie; and it
        costs no transcendental function. One pass of
        :func:`proxopt.native.sm2_renorm` for float32 CPU duals with two
        contiguous level columns, else torch operations on a contiguous
        buffer (from ``scratch``, a workspace of ``theta``'s shape): ``d``
        for two levels, ``M = max_j theta_j`` for more.

        With ``log_partition`` it keeps ``to_dual(u) = log(u)/beta`` itself,
        ``theta_j - LSE(beta theta)/beta`` (``LSE(x) = log sum_j exp(x_j)``,
        computed as ``s_j - log(sum_k exp(beta s_k))/beta`` with
        ``s_j = theta_j - M``, ``+0`` at the max, an infinite one too),
        floored the same way; torch operations, about 5 passes per level. The
        two choices give the same iterates ``w`` in exact arithmetic, where
        the floor does not act, when the base update does not depend on
        ``theta`` itself;
        :class:`~proxopt.MirrorDescent` uses ``log_partition`` for base
        optimizers whose update may (coupled weight decay in Adam, RMSprop,
        ...; optimizers it does not know).
        """
        if theta.numel() == 0:
            return theta
        cols = theta.unbind(-1)
        floor = _dual_floor(theta.dtype, beta)
        if len(cols) == 2 and not log_partition:
            if native.sm2_renorm(cols[0], cols[1], floor):
                return theta
            # as the kernel: through d = theta_1 - theta_0, the larger entry +0 and the other max(-|d|, floor)
            (d,) = self._buffers(theta, scratch, 1)
            torch.sub(cols[1], cols[0], out=d)
            ge, lt = d >= 0, d < 0  # both False where d is NaN: NaN in both entries
            d.abs_().neg_().clamp_min_(floor)
            cols[1].copy_(d).masked_fill_(ge, 0.0)
            cols[0].copy_(d).masked_fill_(lt, 0.0)
            return theta
        bufs = self._buffers(theta, scratch, 3 if log_partition else 1)
        top = self._column_max(theta, bufs[0])
        for c in cols:
            at_max = c == top  # +0 there, exactly (also for an infinite max: not inf - inf)
            torch.sub(c, top, out=c).masked_fill_(at_max, 0.0)
        if log_partition:  # minus log(sum_k exp(beta s_k))/beta, s = theta - M
            e, tot = bufs[1:]
            for j, c in enumerate(cols):
                torch.mul(c, beta, out=e if j else tot).exp_()
                if j:
                    tot.add_(e)
            tot.log_()
            if beta != 1.0:
                tot.div_(beta)
            for c in cols:
                torch.sub(c, tot, out=c)
        return theta.clamp_min_(floor)

    def renormalize_to_primal_into(self, theta: Tensor, beta: float, out: Tensor) -> bool:
        """:meth:`renormalize_` then :meth:`to_primal_into` in one pass: two float32 levels on the CPU.

        ``theta_j <- max(theta_j - max_k theta_k, log(tiny)/beta)`` and
        ``w = q_0 + (q_1 - q_0) sigma(beta (theta_1 - theta_0))`` into ``out``
        by :func:`proxopt.native.sm2_renorm_project`, bit for bit the two
        calls; False (nothing done) for other duals, levels or tensors.
        """
        q = self.levels
        if len(q) != 2 or theta.shape[-1] != 2 or out.shape != theta.shape[:-1] or theta.numel() == 0:
            return False
        t0, t1 = theta.unbind(-1)
        return native.sm2_renorm_project(t0, t1, out, beta, _dual_floor(theta.dtype, beta), q[0], q[1] - q[0])

    def primal_derivative(self, theta: Tensor, beta: float = 1.0) -> Tensor:
        """``dw/dtheta_j = beta u_j (q_j - w)`` (shape ``(..., d)``)."""
        u = self.to_simplex(theta, beta)
        q = levels_tensor(self.levels, theta)
        w = (u @ q).unsqueeze(-1)
        return beta * u * (q - w)

    def potential(self, u: Tensor, beta: float = 1.0) -> Tensor:
        return torch.xlogy(u, u).sum(-1) / beta

    def bregman(self, u: Tensor, v: Tensor, beta: float = 1.0) -> Tensor:
        return (torch.xlogy(u, u) - torch.xlogy(u, v)).sum(-1) / beta

    def hard(self, theta: Tensor) -> Tensor:
        q = levels_tensor(self.levels, theta)
        idx = (theta.size(-1) - 1) - theta.flip(-1).argmax(-1)
        return q[idx]

    def init_dual(self, p: Tensor, smoothing: float = 0.0) -> Tensor:
        """Dual whose simplex point interpolates ``clip(p)`` between its two neighbouring levels.

        With ``smoothing = s > 0`` the simplex point is mixed with the uniform
        one, ``u <- (1 - s) u + s / d``, so every level starts within
        ``log(d / s)`` of the others in the dual. The stable optimizer form uses
        ``s = 0.03`` (its base optimizer must traverse that gap to reach a far
        level); the primal form, which keeps ``u`` itself, uses ``s = 0``.

        ``u`` puts weight ``1 - t`` on ``q_i`` and ``t`` on ``q_{i+1}`` where
        ``clip(p) = (1 - t) q_i + t q_{i+1}``; ``theta = log(u)`` with ``u``
        floored at float32's eps (the same floor in every dtype, so float32 and
        float64 train alike), so at ``beta = 1`` the model holds about
        ``clip(p)``.
        """
        x = p.detach()
        q = levels_tensor(self.levels, x)
        x = x.clamp(self.levels[0], self.levels[-1])
        i = (torch.bucketize(x, q, right=True) - 1).clamp(0, len(self.levels) - 2)
        lo, hi = q[i], q[i + 1]
        t = (x - lo) / (hi - lo)
        u = torch.zeros(*x.shape, len(self.levels), dtype=x.dtype, device=x.device)
        u.scatter_(-1, i.unsqueeze(-1), (1.0 - t).unsqueeze(-1))
        u.scatter_add_(-1, (i + 1).unsqueeze(-1), t.unsqueeze(-1))
        if smoothing:
            u = u * (1.0 - smoothing) + smoothing / len(self.levels)
        return torch.log(u.clamp_min(_SOFTMAX_FLOOR))

    def center_(self, theta: Tensor) -> Tensor:
        """The dual of the same simplex point whose entries sum to 0, in place: ``theta_j - mean_k theta_k``.

        Softmax ignores a constant added to every entry, so ``u`` and ``w``
        are unchanged (up to rounding for ``d > 2``). Two levels give
        ``(-t, t)`` with ``t = (theta_1 - theta_0)/2`` exactly: ``t - (-t)``
        is the difference ``theta_1 - theta_0`` as it rounds, so the
        projection (through that difference) is unchanged bit for bit. The
        stable form starts from this dual (:class:`~proxopt.MirrorDescent`).
        """
        if theta.shape[-1] == 2:
            t = (theta[..., 1] - theta[..., 0]) * 0.5
            theta[..., 1] = t
            theta[..., 0] = -t
            return theta
        return theta.sub_(theta.mean(-1, keepdim=True))

    @property
    def centered_pair(self) -> bool:
        """Whether the levels are ``(-a, a)``: the pull-back ``g q`` is then ``(-a g, a g)``, odd in its two
        entries, and a zero-sum dual ``(-t, t)`` stays one under an update that is odd elementwise
        (:class:`~proxopt.optim.transforms.CenteredSoftmaxPair`)."""
        q = self.levels
        return len(q) == 2 and q[0] == -q[1]

    def centered_to_primal_into(self, t: Tensor, beta: float, out: Tensor) -> Tensor:
        """``w = q_0 + (q_1 - q_0) sigma(beta (t - (-t)))``: :meth:`to_primal_into` of the dual ``(-t, t)``.

        Bit for bit that call on the stacked dual (``t - (-t)`` is ``t + t``
        exactly): one pass of :func:`proxopt.native.sm2_project_centered` for
        float32 CPU tensors, else three torch passes.
        """
        q = self.levels
        if native.sm2_project_centered(t, out, beta, q[0], q[1] - q[0]):
            return out
        s = sigmoid_into(torch.add(t, t, out=out), beta, out)
        return _affine_into(q[0], s, q[1] - q[0], out)

    def centered_renormalize_(self, t: Tensor, beta: float) -> Tensor:
        """:meth:`renormalize_` of the dual ``(-t, t)`` kept as ``t``: ``t <- min(max(t, f/2), -f/2)``.

        With ``f = log(tiny)/beta``, the renormalisation clips ``d = t - (-t) = 2t`` to ``[f, -f]``
        (``log(u_j / max_k u_k)/beta`` floored at ``f``) and keeps it bit for
        bit otherwise; ``f/2`` and ``2t`` are exact, so the projection of the
        result is that of :meth:`renormalize_`'s, bit for bit. NaN stays NaN.
        """
        half = _dual_floor(t.dtype, beta) / 2  # exact: a power-of-two division of a normal number
        return t.clamp_(half, -half)

    def centered_renormalize_to_primal_into(self, t: Tensor, beta: float, out: Tensor) -> bool:
        """:meth:`centered_renormalize_` then :meth:`centered_to_primal_into` in one pass for float32 CPU tensors
        (:func:`proxopt.native.sm2_clamp_project_centered`, bit for bit the two calls); False (nothing done)
        elsewhere."""
        if t.numel() == 0 or out.shape != t.shape:
            return False
        q = self.levels
        return native.sm2_clamp_project_centered(t, out, beta, _dual_floor(t.dtype, beta) / 2, q[0], q[1] - q[0])

    def centered_hard(self, t: Tensor) -> Tensor:
        """:meth:`hard` of the dual ``(-t, t)``: ``q_1`` where ``t >= 0`` (a tie takes the larger level) or
        NaN (as ``argmax`` takes a NaN), else ``q_0``."""
        q = levels_tensor(self.levels, t)
        return q[(~(t < 0)).long()]

    def primal_grad_to_dual(self, theta: Tensor, grad: Tensor) -> Tensor:
        """``g_u = g_w q``: shape ``(..., d)``."""
        return grad.unsqueeze(-1) * levels_tensor(self.levels, theta)

    def primal_grad_to_dual_into(self, theta: Tensor, grad: Tensor, out: Tensor) -> Tensor:
        """``out[..., j] = q_j g_w``: :meth:`primal_grad_to_dual` into ``out`` (``theta``'s shape), bit for bit.

        One strided pass per level (``copy`` for ``q_j = 1``, ``neg`` for
        ``q_j = -1``, a scalar multiply otherwise): a broadcast
        ``(..., 1) * (d,)`` multiply is several times slower on CPU. Two
        float32 CPU levels with contiguous columns take one pass of
        :func:`proxopt.native.sm2_pullback` (the same products).
        """
        cols = out.unbind(-1)
        q = levels_tensor(self.levels, theta).tolist()
        if len(cols) == 2 and native.sm2_pullback(grad, cols[0], cols[1], *q):
            return out
        for qj, c in zip(q, cols):
            if qj == 1.0:
                c.copy_(grad)
            elif qj == -1.0:
                torch.neg(grad, out=c)
            else:
                torch.mul(grad, qj, out=c)
        return out

    def config(self) -> Dict[str, Any]:
        cfg: Dict[str, Any] = {"name": self.name}
        if self.levels != BINARY:
            cfg["levels"] = list(self.levels)
        return cfg


_REGISTRY = {cls.name: cls for cls in (Tanh, Linear, Softmax, ShiftedTanh)}
_ALIASES = {"shiftedtanh": "shifted_tanh", "ternary_tanh": "shifted_tanh", "clip": "linear"}


def available() -> Tuple[str, ...]:
    """Names accepted by :func:`get`."""
    return tuple(sorted(_REGISTRY))


def get(spec: Any, **kwargs: Any) -> MirrorMap:
    """Build a mirror map from a name, a config dict or an instance.

    Example:
        >>> get("softmax", levels="ternary")
        Softmax(levels=[-1.0, 0.0, 1.0])
    """
    if isinstance(spec, MirrorMap):
        if kwargs:
            raise TypeError(f"Invalid mirror_map arguments {kwargs!r} for an instance {spec!r}")
        return spec
    if isinstance(spec, dict):
        cfg = dict(spec)
        name = cfg.pop("name", None)
        cfg.update(kwargs)
        return get(name, **cfg)
    if isinstance(spec, type) and issubclass(spec, MirrorMap):
        return spec(**kwargs)
    if not isinstance(spec, str):
        raise TypeError(f"Invalid mirror_map: {spec!r} (expected a name, a config dict or a MirrorMap)")
    key = _ALIASES.get(spec.lower(), spec.lower())
    if key not in _REGISTRY:
        raise ValueError(f"Invalid mirror_map: {spec!r}; valid names are {', '.join(available())}")
    return _REGISTRY[key](**kwargs)
