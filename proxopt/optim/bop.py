"""Bop, the latent-free binary optimizer (THEORY.md §7).

References:
    [Bop] Helwegen, Widdicombe, Geiger, Liu, Cheng, Nusselder. Latent
    Weights Do Not Exist: Rethinking Binarized Neural Network Optimization.
    NeurIPS 2019.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..levels import BINARY, nearest
from .engine import WrappedOptimizer
from .transforms import latent_dtype

__all__ = ["Bop", "bop_flip"]


def _threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Invalid threshold: {value!r} (expected a non-negative float)")
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"Invalid threshold: {value} (expected a finite non-negative float)")
    return value


def _gamma(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Invalid gamma: {value!r} (expected a float in (0, 1])")
    value = float(value)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"Invalid gamma: {value} (expected a float in (0, 1])")
    return value


def bop_flip(w: Tensor, m: Tensor, threshold: float) -> Tensor:
    """Bop's flip rule on binary weights ``w in {-1, +1}`` given the gradient average ``m``.

    .. math:: w_i \\leftarrow \\begin{cases} -w_i & |m_i| > \\tau \\text{ and }
              \\operatorname{sign}(m_i) = \\operatorname{sign}(w_i) \\\\
              w_i & \\text{otherwise} \\end{cases}

    Since ``w_i = +-1``, the condition is ``|m_i| > tau`` and ``m_i w_i > 0``.
    A weight flips when the gradient has consistently pushed against its sign
    (descending the loss would move it toward the other sign).

    Args:
        w: binary weights (any floating dtype).
        m: the exponential moving average of the gradient (``w``'s shape).
        threshold: ``tau >= 0``.

    Returns:
        The new weights (a new tensor of ``w``'s dtype).

    Example:
        >>> bop_flip(torch.tensor([1., 1., -1., -1.]), torch.tensor([0.5, -0.5, -0.5, 1e-9]), 1e-8)
        tensor([-1.,  1.,  1., -1.])

    References:
        [Bop] Helwegen et al., NeurIPS 2019 (the Bop update); THEORY.md §7.
    """
    agree = torch.where(w > 0, m > 0, m < 0)
    flip = agree & (m.abs() > threshold)
    return torch.where(flip, -w, w)


class Bop(WrappedOptimizer):
    """Bop: binary weights flipped by a thresholded gradient average; no latent weights.

    For each parameter of a quantized group the weights are the binary values
    themselves, ``w in {-1, +1}`` (set to ``sign(p)`` with ``sign(0) = +1``
    at construction), and the state is an exponential moving average of the
    gradient:

    .. math::
        m \\leftarrow (1 - \\gamma)\\, m + \\gamma\\, g,\\qquad
        w_i \\leftarrow -w_i \\;\\text{ where }\\; |m_i| > \\tau
        \\;\\text{ and }\\; \\operatorname{sign}(m_i) = \\operatorname{sign}(w_i)

    ``gamma`` (adaptivity rate) and ``tau`` (``threshold``) are per group.
    Groups with ``quantize=False`` (biases, normalization, first / last
    layers: see :func:`proxopt.groups.param_groups`) are updated by the base
    optimizer (default Adam) with its usual hyper-parameters; the base
    optimizer never sees the binary weights (its groups for quantized groups
    are empty), so ``lr`` and LR schedulers affect only the full-precision
    parameters. ``m`` is kept in float32 for fp16 / bf16 parameters and keeps
    its dtype through ``state_dict`` / ``load_state_dict``, so resuming is
    bitwise identical. Bop has nothing to anneal (``anneal_key`` is None).

    The weights must stay binary: write into them only values in {-1, +1}.
    :meth:`finalize` and :meth:`hard` round to ``sign`` (a no-op for binary
    weights).

    Args:
        params: parameters or param groups (groups may set ``threshold``,
            ``gamma``, ``quantize`` and base hyper-parameters).
        threshold: ``tau``, default 1e-8 (larq's default).
        gamma: ``gamma`` in (0, 1], default 1e-4 (larq's default).
        base: optimizer class for the full-precision groups (default
            :class:`torch.optim.Adam`).
        **base_kwargs: passed to ``base`` (``lr``, ``weight_decay``, ...).

    Example:
        >>> import torch, proxopt
        >>> from proxopt.optim.bop import Bop
        >>> w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.0]))
        >>> opt = Bop([w], threshold=0.05, gamma=0.5)
        >>> w.data
        tensor([ 1., -1.,  1.])
        >>> w.grad = torch.tensor([0.2, 0.2, -0.2]); _ = opt.step(); w.data
        tensor([-1., -1.,  1.])

    References:
        [Bop] Helwegen et al., Latent Weights Do Not Exist: Rethinking
        Binarized Neural Network Optimization, NeurIPS 2019; THEORY.md §7.
    """

    anneal_key: Optional[str] = None
    own_defaults: Dict[str, Any] = {"quantize": True, "threshold": 1e-8, "gamma": 1e-4}

    def __init__(self, params: Any, threshold: float = 1e-8, gamma: float = 1e-4,
                 base: Type[Optimizer] = torch.optim.Adam, **base_kwargs: Any) -> None:
        own = {"quantize": True, "threshold": _threshold(threshold), "gamma": _gamma(gamma)}
        self._flips: Optional[Dict[int, Tuple[int, int]]] = None
        super().__init__(params, base, own, base_kwargs)

    # ----------------------------------------------------------------- groups
    def _normalize_group(self, group: Dict[str, Any]) -> None:
        super()._normalize_group(group)
        group["threshold"] = _threshold(group["threshold"])
        group["gamma"] = _gamma(group["gamma"])

    @torch.no_grad()
    def _init_group(self, group: Dict[str, Any]) -> None:
        if not group["quantize"]:
            return
        for p in group["params"]:
            st = self.state[p]
            if "m" not in st:
                p.copy_(nearest(p, BINARY))
                st["m"] = torch.zeros_like(p, dtype=latent_dtype(p), memory_format=torch.preserve_format)

    def _base_params(self, group: Dict[str, Any]) -> List[Tensor]:
        if not group["quantize"]:
            return list(group["params"])
        self._init_group(group)
        return []

    # ------------------------------------------------------------------- step
    def _check_step_values(self) -> None:
        """:meth:`~proxopt.optim.engine.WrappedOptimizer._check_step_values`, and each quantized group's
        ``threshold`` and ``gamma``."""
        super()._check_step_values()
        for _, g in self._quantized_groups():
            _threshold(g["threshold"])
            _gamma(g["gamma"])

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """One step: update ``m`` and flip the quantized weights, base step on the others.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Raises:
            ValueError: for sparse gradients or an invalid ``threshold`` /
                ``gamma`` in a group; nothing has changed then.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_step_values()
        if not self._check_grads():
            return loss
        self._sync()
        # the base step first: if it raises, the binary weights and m are untouched
        self._base_step()
        flips: Dict[int, Tuple[Any, int]] = {}
        for gi, group in self._quantized_groups():
            gamma, tau = group["gamma"], group["threshold"]
            changed: Any = 0
            total = 0
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                m = self.state[p]["m"]
                m.mul_(1.0 - gamma).add_(g.to(m.dtype) if g.dtype != m.dtype else g, alpha=gamma)
                # flip where m * w > tau (w = ±1, so |m| > tau and sign(m) = sign(w)): w <- w - 2 w 1{m w > tau}
                s = self._scratch(m)
                torch.mul(m, p, out=s).gt_(tau)
                changed = changed + s.sum()
                total += p.numel()
                if p.dtype == s.dtype:
                    p.addcmul_(p, s, value=-2.0)
                else:
                    p.copy_(p.to(s.dtype).addcmul_(p.to(s.dtype), s, value=-2.0))
            flips[gi] = (changed, total)
        self._flips = flips
        return loss

    def stats(self) -> List[Dict[str, Any]]:
        """Per-group diagnostics, in the format of :meth:`proxopt.LatentOptimizer.stats`.

        For each group: ``flip_ratio`` (share of the weights updated in the
        last step that flipped; None before the first step), ``quant_error``
        (mean ``|w - sign(w)|``, 0 while the weights are binary), ``frozen``
        (always 0: Bop has no saturating backward), ``m_abs_mean`` (mean
        ``|m|``, to compare with ``threshold``), ``threshold``, ``gamma``,
        ``lr`` and the number of parameters. The Bop paper monitors the flip
        ratio to tune ``gamma`` and ``threshold``.

        Example:
            >>> import torch
            >>> w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
            >>> opt = Bop([w], gamma=1.0, threshold=0.0)
            >>> w.grad = torch.tensor([1.0, 1.0]); _ = opt.step()
            >>> opt.stats()[0]["flip_ratio"]
            0.5
        """
        self._check_quantize()
        out = []
        for gi, group in enumerate(self.param_groups):
            n = sum(p.numel() for p in group["params"])
            row: Dict[str, Any] = {"group": gi, "quantize": group["quantize"], "numel": n, "lr": group.get("lr"),
                                   "flip_ratio": None, "frozen": 0.0, "quant_error": 0.0}
            if group["quantize"]:
                row["threshold"], row["gamma"] = group["threshold"], group["gamma"]
                if n:
                    with torch.no_grad():
                        row["quant_error"] = sum(float((p - nearest(p, BINARY)).abs().sum())
                                                 for p in group["params"]) / n
                        row["m_abs_mean"] = sum(float(self.state[p]["m"].abs().sum()) for p in group["params"]) / n
                if self._flips is not None and gi in self._flips:
                    changed, total = self._flips[gi]
                    row["flip_ratio"] = float(changed) / total if total else 0.0
            out.append(row)
        return out

    # ------------------------------------------------------------ hard / final
    @torch.no_grad()
    def _write_hard(self) -> None:
        for _, group in self._quantized_groups():
            for p in group["params"]:
                p.copy_(nearest(p, BINARY))

    def finalize(self) -> None:
        """Round the quantized weights to ``sign`` (``sign(0) = +1``); a no-op for binary weights."""
        self._write_hard()

    # ------------------------------------------------------------- state dict
    def _structural_keys(self) -> Tuple[str, ...]:
        return ("quantize",)

    def _validate_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super()._validate_state_dict(state_dict)
        saved_state = state_dict["state"]
        for gi, (saved, group) in enumerate(zip(state_dict["param_groups"], self.param_groups)):
            if not group["quantize"]:
                continue
            _threshold(saved.get("threshold", group["threshold"]))
            _gamma(saved.get("gamma", group["gamma"]))
            for pi, (sid, p) in enumerate(zip(saved["params"], group["params"])):
                entry = saved_state.get(sid)
                m = None if entry is None else entry.get("m")
                if not isinstance(m, Tensor):
                    raise ValueError(f"Invalid state_dict: no gradient average 'm' for parameter {pi} of group {gi}")
                if m.shape != p.shape:
                    raise ValueError(f"Invalid state_dict: 'm' of parameter {pi} of group {gi} has shape "
                                     f"{tuple(m.shape)}, expected {tuple(p.shape)}")

    def _load(self, outer: Dict[str, Any], base: Dict[str, Any]) -> None:
        # torch casts floating state to the parameter's dtype on load; keep m's own dtype (fp32 for bf16).
        saved_m: Dict[Any, Tensor] = {}
        state = {}
        for sid, entry in outer["state"].items():
            entry = dict(entry)
            m = entry.pop("m", None)
            if m is not None:
                saved_m[sid] = m
            state[sid] = entry
        ids = [list(g["params"]) for g in outer["param_groups"]]
        mine = [[self.state[p].get("m") for p in g["params"]] for g in self.param_groups]
        Optimizer.load_state_dict(self, dict(outer, state=state))
        self.base_optimizer.load_state_dict(base)
        with torch.no_grad():
            for group, gm, gids in zip(self.param_groups, mine, ids):
                for p, m, sid in zip(group["params"], gm, gids):
                    if m is None or sid not in saved_m:
                        continue
                    m.copy_(saved_m[sid])
                    self.state[p]["m"] = m
        self._sync()
