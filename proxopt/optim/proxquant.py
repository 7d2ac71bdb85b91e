"""ProxQuant (THEORY.md §4).

References:
    [PQ] Bai, Wang, Liberty. ProxQuant: Quantized Neural Networks via
    Proximal Operators. ICLR 2019.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..levels import BINARY, make_levels, nearest
from ..quantizers import _const
from .engine import WrappedOptimizer, check_value
from .transforms import ShardLocal

__all__ = ["ProxQuant", "prox_to_levels", "prox_to_levels_"]


def prox_to_levels(x: Tensor, levels: Tuple[float, ...], amount: float) -> Tensor:
    """Prox of ``amount * R`` with ``R(x) = |x - round_Q(x)|``, then clip to ``[q_1, q_d]``.

    .. math:: \\operatorname{prox}(x) = q + \\operatorname{sign}(x - q)\\max(0, |x - q| - \\lambda),
              \\quad q = \\operatorname{round}_Q(x)

    Each entry moves toward its nearest level by ``amount`` without
    overshooting it (soft threshold around the levels) [PQ]. Returns a new
    tensor; :func:`prox_to_levels_` is the in-place kernel the optimizer runs.

    Example:
        >>> prox_to_levels(torch.tensor([0.5, -0.95, 1.5]), (-1.0, 1.0), 0.1)
        tensor([ 0.6000, -1.0000,  1.0000])
    """
    if levels == BINARY:  # sign(x) min(|x| + amount, 1) on the clipped x, sign(0) = +1
        x = x.clamp(-1.0, 1.0)
        mag = x.abs().add_(amount).clamp_max_(1.0)
        return torch.ge(x, 0.0, out=x).mul_(2.0).sub_(1.0).mul_(mag)
    x = x.clamp(levels[0], levels[-1])
    q = nearest(x, levels)
    d = x - q
    return q + torch.sign(d) * (d.abs() - amount).clamp_min(0.0)


def prox_to_levels_(x: Tensor, levels: Tuple[float, ...], amount: float, scratch: Tensor) -> Tensor:
    """:func:`prox_to_levels` written into ``x`` itself, bit for bit equal to it (``amount >= 0``).

    Binary (four passes): with ``s = sign(x)``, ``sign(±0) = +1``,

    .. math:: \\operatorname{sign}(x)\\min(|\\operatorname{clip}(x)| + \\lambda, 1)
              = \\operatorname{clip}(x + \\lambda s, -1, 1)

    (``|x| + lambda >= 1`` when ``|x| > 1``; rounding commutes with the sign),
    computed as ``scratch = -lambda + 2 lambda 1{x >= 0}`` (exactly ``±lambda``),
    ``x += scratch``, ``clamp_``. Other level sets: ``x = clip(x)``,
    ``q = round_Q(x)``, ``x = q + softshrink(x - q, lambda)``, which is
    ``q + sign(d) max(0, |d| - lambda)`` term for term.

    Args:
        x: the weights (overwritten).
        levels: sorted levels.
        amount: ``lambda >= 0``.
        scratch: a workspace of ``x``'s shape and dtype (binary only; overwritten).

    References:
        [PQ] Bai et al., ICLR 2019.
    """
    if x.dtype not in (torch.float32, torch.float64) or not 0.0 <= 2.0 * amount < torch.finfo(x.dtype).max:
        return x.copy_(prox_to_levels(x, levels, amount))
    if levels == BINARY:
        lam = amount if x.dtype == torch.float64 else float(torch.tensor(amount, dtype=x.dtype))
        step = torch.ge(x, 0.0, out=scratch)  # 2 lam is exact in x's dtype (lam rounded to it first)
        torch.add(_const(-lam, x), step, alpha=2.0 * lam, out=step)
        return x.add_(step).clamp_(-1.0, 1.0)
    x.clamp_(levels[0], levels[-1])
    q = nearest(x, levels)
    torch._C._nn.softshrink(x.sub_(q), amount, out=x)
    return x.add_(q)


def round_(x: Tensor, levels: Tuple[float, ...]) -> Tensor:
    """``x = round_Q(x)`` in place (:func:`proxopt.levels.nearest`; two passes for the binary set).

    ProxQuant's final rounding / freeze to the nearest level, ``sign(0) = +1`` [PQ].
    """
    if levels == BINARY:  # -1 + 2 * 1{x >= 0}: sign with sign(±0) = +1
        return torch.add(_const(-1.0, x), torch.ge(x, 0.0, out=x), alpha=2.0, out=x)
    return x.copy_(nearest(x, levels))


def _check_reg(value: Any) -> float:
    v = check_value("reg", value, positive=False)
    if v < 0:
        raise ValueError(f"Invalid reg: {v} (expected a finite non-negative float)")
    return v


class ProxQuant(WrappedOptimizer):
    """ProxQuant: a base step on the soft weights, then the prox of the W-shaped regularizer.

    .. math::
        \\theta \\leftarrow \\operatorname{prox}_{\\eta \\lambda_t R}\\big(
        \\mathrm{BaseStep}(\\theta, \\nabla f(\\theta))\\big),\\qquad
        R(\\theta) = \\|\\theta - \\operatorname{round}_Q(\\theta)\\|_1,\\qquad
        \\lambda_t = \\lambda\\, t

    There is no separate latent: the model holds ``theta`` (soft) and the
    gradient is taken at ``theta``. ``eta`` is the group's current ``lr`` and
    ``t`` the parameter's step count. At step ``freeze_at`` (if given) the
    weights are set to ``round_Q(theta)`` and kept there: on later steps they
    sit out the base step (no update, no moment or weight-decay change), as
    parameters without a gradient do (the official code freezes at epoch 200
    of 300). ``mu`` is the group key for ``lambda``
    (``reg``), so :class:`proxopt.AnnealScheduler` can scale it too.

    Args:
        params: parameters or param groups (``mu``, ``levels``, ``freeze_at``,
            ``quantize`` and base hyper-parameters per group).
        reg: ``lambda``, the growth of the regularization per step
            (default 1e-4).
        levels: level set (default binary).
        freeze_at: step at which to round and freeze, or None.
        base: base optimizer class (default Adam).
        **base_kwargs: passed to ``base``.

    Example:
        >>> import torch, proxopt
        >>> w = torch.nn.Parameter(torch.tensor([0.5, -0.2]))
        >>> opt = proxopt.ProxQuant([w], reg=1.0, lr=0.1, base=torch.optim.SGD)
        >>> w.grad = torch.zeros(2); _ = opt.step(); w.data
        tensor([ 0.6000, -0.3000])

    References:
        [PQ] Bai et al., ICLR 2019.
    """

    anneal_key = "mu"

    def __init__(self, params: Any, reg: float = 1e-4, levels: Any = "binary", freeze_at: Optional[int] = None,
                 base: Type[Optimizer] = torch.optim.Adam, **base_kwargs: Any) -> None:
        if "mu" in base_kwargs:
            reg = base_kwargs.pop("mu")
        own = {"quantize": True, "mu": reg, "levels": list(make_levels(levels)), "freeze_at": freeze_at}
        super().__init__(params, base, own, base_kwargs)

    def _normalize_group(self, group: Dict[str, Any]) -> None:
        super()._normalize_group(group)
        self._check_prox_values(group)

    @staticmethod
    def _check_prox_values(group: Dict[str, Any]) -> None:
        group["mu"] = _check_reg(group["mu"])
        group["levels"] = list(make_levels(group["levels"]))
        fa = group["freeze_at"]
        if fa is not None and (isinstance(fa, bool) or not isinstance(fa, int) or fa < 1):
            raise ValueError(f"Invalid freeze_at: {fa!r} (expected a positive int or None)")

    def _check_step_values(self) -> None:
        """:meth:`~proxopt.optim.engine.WrappedOptimizer._check_step_values`, and each quantized group's
        ``mu`` (``reg``), ``levels`` and ``freeze_at``."""
        super()._check_step_values()
        for _, g in self._quantized_groups():
            self._check_prox_values(g)

    def _structural_keys(self) -> Tuple[str, ...]:
        return ("quantize", "levels")

    def _validate_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super()._validate_state_dict(state_dict)
        for saved in state_dict["param_groups"]:
            _check_reg(saved.get("mu", 0.0))

    def _base_params(self, group: Dict[str, Any]) -> List[Tensor]:
        return list(group["params"])

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Base step on the weights, then the prox toward the levels (and the freeze)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_step_values()
        if not self._check_grads():
            return loss
        self._sync()
        had = [[p.grad is not None for p in g["params"]] for g in self.param_groups]
        # frozen weights (rounded at freeze_at) sit out the base step: no update, no moments, no weight decay
        hidden = [(p, p.grad) for _, g in self._quantized_groups() if g["freeze_at"] is not None
                  for p in g["params"] if p.grad is not None and self.state[p].get("prox_step", 0) >= g["freeze_at"]]
        for p, _ in hidden:
            p.grad = None
        try:
            self._base_step()
        finally:
            for p, grad in hidden:
                p.grad = grad
        frozen = {id(p) for p, _ in hidden}
        for gi, group in self._quantized_groups():
            levels = tuple(group["levels"])
            lr = group.get("lr", 1.0)
            lr = float(lr.item()) if isinstance(lr, Tensor) else float(lr)
            for p, h in zip(group["params"], had[gi]):
                if not h or id(p) in frozen:
                    continue
                st = self.state[p]
                t = int(st.get("prox_step", 0)) + 1
                st["prox_step"] = t
                fa = group["freeze_at"]
                x = ShardLocal._loc(p.data)  # the local shard of an FSDP2 / DTensor parameter (elementwise)
                if fa is not None and t >= fa:
                    round_(x, levels)
                else:
                    scratch = self._scratch(x) if levels == BINARY else x
                    prox_to_levels_(x, levels, lr * group["mu"] * t, scratch)
        return loss

    @torch.no_grad()
    def _write_hard(self) -> None:
        for _, group in self._quantized_groups():
            for p in group["params"]:
                round_(ShardLocal._loc(p.data), tuple(group["levels"]))

    def finalize(self) -> None:
        """Round every quantized weight to its nearest level (``sign(0) = +1``) for good."""
        self._write_hard()
