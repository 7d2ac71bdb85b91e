"""Helpers for distributed training with proxopt optimizers.

References:
    THEORY.md §2 (the model must hold ``F(theta)``); PyTorch's
    ``torch.distributed.optim.ZeroRedundancyOptimizer``.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch

__all__ = ["sync_zero"]


@torch.no_grad()
def sync_zero(zero: Any, params: Optional[Iterable[torch.Tensor]] = None) -> None:
    """Give every rank the quantized weights ``w = F(theta)`` of the parameters it does not own.

    ``ZeroRedundancyOptimizer(params, optimizer_class=<proxopt optimizer>)``
    builds the proxopt optimizer on each rank's share of the parameters only,
    so at construction (and after ``load_state_dict``) each rank has written
    ``F(theta)`` into its own share while the other ranks still hold the raw
    values; ZeRO's own broadcast only runs after a step. Call this once after
    construction and after every ``load_state_dict`` (followed by
    ``zero.optim.refresh()``): each parameter is broadcast from the rank whose
    optimizer owns it, so the first forward runs the same quantized weights
    everywhere. Collective: every rank must call it.

    Args:
        zero: a ``ZeroRedundancyOptimizer`` wrapping a proxopt optimizer.
        params: the parameters in the same order on every rank (default: all
            of ``zero.param_groups``).

    Example:
        >>> # zero = ZeroRedundancyOptimizer(model.parameters(),
        >>> #                                optimizer_class=proxopt.ProxConnectPP, lr=1e-3)
        >>> # proxopt.distributed.sync_zero(zero)
    """
    dist = torch.distributed
    plist = list(params) if params is not None else [p for g in zero.param_groups for p in g["params"]]
    if not plist:
        return
    mine = {id(p) for g in zero.optim.param_groups for p in g["params"]}
    owner = torch.tensor([dist.get_rank() if id(p) in mine else 0 for p in plist], device=plist[0].device)
    dist.all_reduce(owner)
    for p, r in zip(plist, owner.tolist()):
        dist.broadcast(p.data, src=int(r))
