"""Annealing of the quantizer strength ``mu`` / inverse temperature ``beta`` (THEORY.md §6).

References:
    [MD] Ajanthan et al. Mirror Descent View for Neural Network
    Quantization. AISTATS 2021 (geometric beta schedule).
    [PC] Dockhorn et al. Demystifying and Generalizing BinaryConnect.
    NeurIPS 2021 (strength growing with the cumulative step size).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from torch import Tensor

__all__ = ["AnnealScheduler", "DEFAULT_FINAL"]

#: Final strength used when only ``total_steps`` is given. At 1e4 the soft
#: forward maps (tanh, sign-Swish, linear prox) agree with their hard rounding
#: on all but a vanishing share of weights, so the finalized model matches the
#: trained one; ending near 7 loses about half the accuracy at the final sign
#: on a digits MLP.
DEFAULT_FINAL = 1e4


def _positive(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"Invalid {name}: {v!r} (expected a finite positive float)")
    return float(v)


class AnnealScheduler:
    """Grows each quantized group's ``mu`` (or ``beta``) during training, like an LR scheduler.

    Three modes, chosen by the arguments (``k`` = number of ``step()`` calls,
    ``v_0`` = each group's value at construction):

    * geometric: ``v_k = min(v_0 * factor ** floor(k / every), max_value)``
      (the MD paper: ``beta_0 = 1``, ``factor`` in 1.01..1.2, ``every`` in
      100..2000 iterations, final ``beta`` about 1e4);
    * to a target: ``v_k = v_0 * (final / v_0) ** (min(k, T) / T)`` with
      ``T = total_steps`` (``final`` defaults to :data:`DEFAULT_FINAL`);
    * cumulative step size (PC's dual-averaging view):
      ``v_k = v_0 + cumulative * sum_{s<k} lr_s`` (PARQ's "cumu_lr").

    After changing the values it calls ``optimizer.refresh()`` so the model
    holds ``F(theta)`` for the new value at once (the primal mirror-descent
    forms keep ``w``, so their model does not change until the next step). Has ``state_dict`` /
    ``load_state_dict`` like :mod:`torch.optim.lr_scheduler`.

    Args:
        optimizer: a proxopt optimizer with an ``anneal_key``.
        factor: geometric growth per ``every`` steps.
        every: steps between growths (default 1).
        max_value: cap (optional).
        final: value reached after ``total_steps``.
        total_steps: length of the target schedule.
        cumulative: slope of the cumulative-lr schedule.

    Example:
        >>> import torch, proxopt
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> opt = proxopt.optimizer("md-tanh-s", [w], lr=0.1)
        >>> sched = proxopt.AnnealScheduler(opt, final=100.0, total_steps=2)
        >>> sched.step(); round(opt.param_groups[0]["beta"], 6)
        10.0

    References:
        THEORY.md §6; [MD] Ajanthan et al., AISTATS 2021; [PC] Dockhorn et
        al., NeurIPS 2021.
    """

    def __init__(self, optimizer: Any, factor: Optional[float] = None, every: int = 1,
                 max_value: Optional[float] = None, *, final: Optional[float] = None,
                 total_steps: Optional[int] = None, cumulative: Optional[float] = None) -> None:
        key = getattr(optimizer, "anneal_key", None)
        if key is None:
            raise TypeError(f"Invalid optimizer: {type(optimizer).__name__} has no annealed value (mu or beta)")
        modes = [factor is not None, final is not None or total_steps is not None, cumulative is not None]
        if sum(modes) != 1:
            raise ValueError("AnnealScheduler needs exactly one of factor=..., final=/total_steps=..., cumulative=...")
        if factor is not None:
            _positive("factor", factor)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Invalid every: {every!r} (expected a positive int)")
        if max_value is not None:
            _positive("max_value", max_value)
        if modes[1]:
            if total_steps is None or isinstance(total_steps, bool) or not isinstance(total_steps, int) \
                    or total_steps < 1:
                raise ValueError(f"Invalid total_steps: {total_steps!r} (expected a positive int)")
            final = DEFAULT_FINAL if final is None else _positive("final", final)
        if cumulative is not None:
            _positive("cumulative", cumulative)
        self.optimizer = optimizer
        self.key: str = key
        self.factor = None if factor is None else float(factor)
        self.every = every
        self.max_value = max_value
        self.final = final
        self.total_steps = total_steps
        self.cumulative = cumulative
        self.base_values: List[float] = [float(g[key]) for g in optimizer.param_groups]
        self.cum_lr: List[float] = [0.0 for _ in optimizer.param_groups]
        self.last_step = 0

    def _value(self, i: int, k: int, cum_lr: float) -> float:
        """Group ``i``'s value after ``k`` steps (``cum_lr``: its summed learning rates); inf where it overflows."""
        v0 = self.base_values[i]
        if self.factor is not None:
            try:
                v = v0 * self.factor ** (k // self.every)
            except OverflowError:  # factor ** n beyond the float range: max_value caps it below
                v = math.inf
        elif self.cumulative is not None:
            v = v0 + self.cumulative * cum_lr
        else:
            t = min(k, self.total_steps) / self.total_steps  # type: ignore[operator]
            v = v0 * (self.final / v0) ** t  # type: ignore[operator]
        if self.max_value is not None:
            v = min(v, self.max_value)
        return v

    def _values(self, k: int, cum_lr: List[float]) -> List[float]:
        values = [self._value(i, k, c) for i, c in enumerate(cum_lr)]
        quantized = [g.get("quantize", True) for g in self.optimizer.param_groups]
        for v, v0, q in zip(values, self.base_values, quantized):
            if q and (not math.isfinite(v) or v < 0.0 or (v == 0.0 and v0 > 0.0)):  # others are not assigned
                raise ValueError(f"Invalid {self.key} after {k} scheduler steps: {v!r} (the schedule left the "
                                 "positive floats; set max_value, or a factor closer to 1)")
        return values

    def get_values(self) -> List[float]:
        """The value each group gets at the current step."""
        return [self._value(i, self.last_step, c) for i, c in enumerate(self.cum_lr)]

    def step(self) -> None:
        """Advance one step, set the groups' values and re-project the model (``optimizer.refresh()``).

        Raises ``ValueError``, with the scheduler and the groups unchanged, if
        a value would leave the positive floats (``factor ** k`` overflowing
        without ``max_value``, or decaying to 0) or the optimizer refuses it
        (``refresh()`` raising; e.g. beyond float32 for float32 latents; the
        model is then re-projected at the old values).
        """
        groups = self.optimizer.param_groups
        if len(groups) != len(self.base_values):
            raise ValueError(f"Invalid optimizer state: {len(groups)} param groups, the scheduler knows "
                             f"{len(self.base_values)}")
        cum_lr = list(self.cum_lr)
        for i, g in enumerate(groups):
            lr = g.get("lr", 0.0)
            cum_lr[i] += float(lr.item()) if isinstance(lr, Tensor) else float(lr)
        values = self._values(self.last_step + 1, cum_lr)  # raises, changing nothing, if the schedule overflows
        before = (self.cum_lr, self.last_step, [g.get(self.key) for g in groups])
        self.cum_lr = cum_lr
        self.last_step += 1
        for g, v in zip(groups, values):
            if g.get("quantize", True):
                g[self.key] = v
        refresh = getattr(self.optimizer, "refresh", None)
        if refresh is not None:
            try:
                refresh()
            except BaseException:  # the optimizer refused the values (it checks them before changing anything)
                self.cum_lr, self.last_step = before[0], before[1]
                for g, v in zip(groups, before[2]):
                    if g.get("quantize", True):
                        g[self.key] = v
                try:  # a failure while projecting (out of memory) may have left some groups at the new values
                    refresh()
                except Exception:  # the first error is the one to report
                    pass
                raise

    def state_dict(self) -> Dict[str, Any]:
        """Everything but the optimizer (as torch's LR schedulers)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`."""
        missing = {"base_values", "last_step", "key"} - set(state_dict)
        if missing:
            raise ValueError(f"Invalid state_dict: missing {sorted(missing)}")
        if state_dict["key"] != self.key or len(state_dict["base_values"]) != len(self.base_values):
            raise ValueError(f"Invalid state_dict: saved for key={state_dict['key']!r} and "
                             f"{len(state_dict['base_values'])} groups")
        self.__dict__.update(state_dict)
