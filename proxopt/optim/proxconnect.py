"""ProxConnect and ProxConnect++ optimizers (THEORY.md §2–§3).

References:
    [PC] Dockhorn, Yu, Sari, Zolnouri, Partovi Nia. Demystifying and
    Generalizing BinaryConnect. NeurIPS 2021.
    [PC++] Lu, Yu, Li, Partovi Nia. Understanding Neural Network Binarization
    with Forward and Backward Proximal Quantizers. NeurIPS 2023.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple, Type

import torch
from torch.optim import Optimizer

from .. import quantizers as qz
from .engine import LatentOptimizer
from .transforms import QuantizerPair, Transform

__all__ = ["ProxConnectPP", "ProxConnect"]


class ProxConnectPP(LatentOptimizer):
    """ProxConnect++: forward quantizer ``F_mu``, backward quantizer ``B_mu``, any base optimizer.

    .. math::
        w_t = F_\\mu(\\theta_t),\\qquad g_t = \\nabla_w f(w_t),\\qquad
        \\theta_{t+1} = \\mathrm{BaseStep}(\\theta_t,\\; B'_\\mu(\\theta_t) \\odot g_t)

    The model holds ``w``; the optimizer's state holds ``theta`` (a copy of
    each parameter at construction, when ``F_mu(theta_0)`` is written into the
    model) and the base optimizer's state for ``theta``. With ``B' = 1`` the
    latent gradient is ``p.grad`` itself (no copy). BinaryConnect is
    ``(Sign, Identity)``, BNN ``(Sign, Clip)``, BNN+ ``(Sign, SignSwish)``,
    BNN++ ``(SignSwish, SignSwish)`` (THEORY.md §2 table).

    Args:
        params: parameters or param groups. Groups may set ``forward``,
            ``backward``, ``mu``, ``quantize`` and any base hyper-parameter.
            A group with ``quantize=False`` is updated by the base optimizer
            and never quantized.
        forward: forward quantizer (name, config dict or
            :class:`proxopt.quantizers.Quantizer`); default ``"sign"``.
        backward: backward quantizer; default ``"identity"`` (``B' = 1``).
        mu: quantizer strength (annealed by :class:`proxopt.AnnealScheduler`).
        base: the ``torch.optim.Optimizer`` class that updates ``theta``
            (default :class:`torch.optim.Adam`).
        **base_kwargs: passed to ``base`` (``lr``, ``momentum``, ``betas``,
            ``weight_decay``, ...).

    Example:
        >>> import torch, proxopt
        >>> lin = torch.nn.Linear(4, 1)
        >>> opt = proxopt.ProxConnectPP(lin.parameters(), forward="signswish",
        ...                             backward="signswish", mu=5.0, lr=1e-2)
        >>> lin(torch.randn(8, 4)).pow(2).mean().backward(); _ = opt.step()
        >>> opt.finalize(); sorted(set(lin.weight.flatten().tolist()) | {1.0})[-1]
        1.0

    References:
        [PC++] Lu et al., NeurIPS 2023; [PC] Dockhorn et al., NeurIPS 2021.
    """

    anneal_key = "mu"

    def __init__(self, params: Any, forward: Any = "sign", backward: Any = "identity", mu: float = 1.0,
                 base: Type[Optimizer] = torch.optim.Adam, **base_kwargs: Any) -> None:
        own = {"quantize": True, "forward": qz.get(forward).config(), "backward": qz.get(backward).config(),
               "mu": mu}
        super().__init__(params, base, own, base_kwargs)

    def _normalize_group(self, group: Dict[str, Any]) -> None:
        super()._normalize_group(group)
        group["forward"] = qz.get(group["forward"]).config()
        group["backward"] = qz.get(group["backward"]).config()

    def _transform_key(self, group: Dict[str, Any]) -> Tuple[Any, ...]:
        return ("pc", group["forward"], group["backward"])

    def _build_transform(self, group: Dict[str, Any]) -> Transform:
        return QuantizerPair(qz.get(group["forward"]), qz.get(group["backward"]))


class ProxConnect(ProxConnectPP):
    """ProxConnect: a proximal forward quantizer ``P_mu`` with the identity backward.

    .. math:: w_t = P_\\mu(\\theta_t),\\qquad
              \\theta_{t+1} = \\mathrm{BaseStep}(\\theta_t, \\nabla_w f(w_t))

    ``P_mu`` must be a proximal quantizer (monotone non-decreasing): the
    default :class:`proxopt.quantizers.LinearProx` over ``levels`` is ``clip``
    at ``mu = 1`` and tends to hard rounding as ``mu`` grows. BinaryConnect is
    ``quantizer="sign"``. PC's theory grows ``mu`` with the cumulative step
    size (``AnnealScheduler(opt, cumulative=c)``).

    Args:
        params: parameters or param groups.
        quantizer: the proximal quantizer (default ``LinearProx(levels)``).
        levels: level set of the default quantizer (``"binary"``,
            ``"ternary"``, bits or a list).
        mu: quantizer strength (default 1.0).
        base: base optimizer class (default Adam).
        **base_kwargs: passed to ``base``.

    Example:
        >>> import torch, proxopt
        >>> w = torch.nn.Parameter(torch.tensor([0.3, -0.2]))
        >>> opt = proxopt.ProxConnect([w], mu=2.0, lr=0.1)
        >>> w.data
        tensor([ 0.6000, -0.4000])

    References:
        [PC] Dockhorn et al., NeurIPS 2021.
    """

    def __init__(self, params: Any, quantizer: Any = None, levels: Any = "binary", mu: float = 1.0,
                 base: Type[Optimizer] = torch.optim.Adam, **base_kwargs: Any) -> None:
        if quantizer is None:
            quantizer = qz.LinearProx(levels)
        elif levels != "binary":
            raise ValueError(f"Invalid levels: {levels!r} (give levels to the quantizer, or omit quantizer)")
        super().__init__(params, forward=quantizer, backward="identity", mu=mu, base=base, **base_kwargs)

    def _normalize_group(self, group: Dict[str, Any]) -> None:
        if "quantizer" in group:
            group["forward"] = group.pop("quantizer")
        super()._normalize_group(group)
        if group["backward"] != {"name": "identity"}:
            raise ValueError(f"Invalid backward: {group['backward']!r} (ProxConnect uses the identity; "
                             "use ProxConnectPP for another backward quantizer)")
