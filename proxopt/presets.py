"""Named configurations of the founding papers' methods (THEORY.md §2 table).

=============  ==========================  ===================  ============  ==========
name           optimizer                   forward F            backward B'   strength
=============  ==========================  ===================  ============  ==========
bc             ProxConnectPP               sign                 1             mu (unused)
pc             ProxConnect                 LinearProx_mu        1             mu = 1
bnn            ProxConnectPP               sign                 1{\\|θ\\|<=1}   mu (unused)
bnn+           ProxConnectPP               sign                 SS'_mu        mu = 5
bnn++          ProxConnectPP               SS_mu                SS'_mu        mu = 1
pq             ProxQuant                   (soft weights)       —             mu = reg = 1e-4
md-tanh        MirrorDescent (primal)      tanh(βθ)             1             beta = 1
md-tanh-s      MirrorDescent (stable)      tanh(βθ)             1             beta = 1
md-softmax     MirrorDescent (primal)      softmax(βθ)·q        g·q           beta = 1
md-softmax-s   MirrorDescent (stable)      softmax(βθ)·q        g·q           beta = 1
md-linear      MirrorDescent (stable)      clip(βθ, -1, 1)      1             beta = 1
gd-tanh        MirrorDescent (Jacobian)    tanh(βθ)             β(1-w²)       beta = 1
bop            Bop                         sign (w = ±1)        —             none
=============  ==========================  ===================  ============  ==========

Soft-forward presets (``pc``, ``bnn++``, ``md-*``, ``gd-tanh``) need their strength annealed
toward about 1e4 (:class:`proxopt.AnnealScheduler`) so the hard-rounded
model agrees with the trained one.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from torch.optim import Optimizer

from .levels import BINARY, TERNARY, make_levels
from .optim import Bop, MirrorDescent, ProxConnect, ProxConnectPP, ProxQuant

__all__ = ["optimizer", "available", "describe"]


def _bc(params: Any, mu: float = 1.0, levels: Any = "binary", **kw: Any) -> Optimizer:
    return ProxConnectPP(params, forward={"name": "sign", "levels": levels}, backward="identity", mu=mu, **kw)


def _pc(params: Any, mu: float = 1.0, levels: Any = "binary", jump: float = 0.0, **kw: Any) -> Optimizer:
    return ProxConnect(params, quantizer={"name": "linearprox", "levels": levels, "jump": jump}, mu=mu, **kw)


def _bnn(params: Any, mu: float = 1.0, **kw: Any) -> Optimizer:
    return ProxConnectPP(params, forward="sign", backward="clip", mu=mu, **kw)


def _bnn_plus(params: Any, mu: float = 5.0, **kw: Any) -> Optimizer:
    return ProxConnectPP(params, forward="sign", backward="signswish", mu=mu, **kw)


def _bnn_pp(params: Any, mu: float = 1.0, **kw: Any) -> Optimizer:
    return ProxConnectPP(params, forward="signswish", backward="signswish", mu=mu, **kw)


def _pq(params: Any, mu: float = 1e-4, levels: Any = "binary", **kw: Any) -> Optimizer:
    return ProxQuant(params, reg=mu, levels=levels, **kw)


def _bop(params: Any, threshold: float = 1e-8, gamma: float = 1e-4, **kw: Any) -> Optimizer:
    return Bop(params, threshold=threshold, gamma=gamma, **kw)


def _tanh_map(levels: Any, stable: bool) -> Dict[str, Any]:
    lv = make_levels(levels)
    if lv == BINARY:
        return {"name": "tanh"}
    if lv == TERNARY:
        if not stable:
            raise ValueError(f"Invalid levels: {levels!r} for md-tanh (the ternary shifted-tanh map exists in "
                             "the stable form only: use md-tanh-s)")
        return {"name": "shifted_tanh"}
    raise ValueError(f"Invalid levels: {levels!r} (the tanh map is binary, or ternary as shifted tanh; "
                     "use md-softmax for other level sets)")


def _md(mirror: str, stable: bool, exact: bool = False) -> Callable[..., Optimizer]:
    def make(params: Any, beta: float = 1.0, levels: Any = "binary", **kw: Any) -> Optimizer:
        if mirror == "softmax":
            m: Dict[str, Any] = {"name": "softmax", "levels": levels}
        elif mirror == "tanh":
            m = _tanh_map(levels, stable)
        else:
            if make_levels(levels) != BINARY:
                raise ValueError(f"Invalid levels: {levels!r} (the linear map is binary)")
            m = {"name": mirror}
        return MirrorDescent(params, mirror_map=m, beta=beta, stable=stable, exact_gradient=exact, **kw)
    return make


_PRESETS: Dict[str, Tuple[Callable[..., Optimizer], str]] = {
    "bc": (_bc, "BinaryConnect: F = sign, B' = 1 [BC]"),
    "pc": (_pc, "ProxConnect: F = LinearProx_mu (clip at mu=1 → rounding), B' = 1 [PC]"),
    "bnn": (_bnn, "BNN: F = sign, B' = 1{|θ| <= 1} [BNN]"),
    "bnn+": (_bnn_plus, "BNN+: F = sign, B' = SS'_mu, mu = 5 [BNN+]"),
    "bnn++": (_bnn_pp, "BNN++: F = SS_mu, B' = SS'_mu, mu = 1 annealed [PC++]"),
    "pq": (_pq, "ProxQuant: prox of mu*t*|θ - sign θ| after each base step, mu = 1e-4 [PQ]"),
    "md-tanh": (_md("tanh", False), "mirror descent, tanh map, primal form, beta = 1 [MD]"),
    "md-tanh-s": (_md("tanh", True), "mirror descent, tanh map, stable form, beta = 1 [MD]"),
    "md-softmax": (_md("softmax", False), "mirror descent, softmax map, primal form, beta = 1 [MD]"),
    "md-softmax-s": (_md("softmax", True), "mirror descent, softmax map, stable form, beta = 1 [MD]"),
    "md-linear": (_md("linear", True), "mirror descent, linear map (stable), beta = 1 [MD]"),
    "gd-tanh": (_md("tanh", True, True), "gradient descent through tanh(beta θ) (Jacobian applied) [MD]"),
    "bop": (_bop, "Bop: flip w where |m| > threshold and sign(m) = sign(w), m = EMA of g (gamma = 1e-4); "
                  "latent-free [Bop]"),
}


def available() -> Tuple[str, ...]:
    """The preset names accepted by :func:`optimizer`.

    Example:
        >>> "bnn++" in available()
        True
    """
    return tuple(_PRESETS)


def describe(name: str) -> str:
    """One line: the method's forward, backward and default strength."""
    return _entry(name)[1]


def _entry(name: str) -> Tuple[Callable[..., Optimizer], str]:
    if not isinstance(name, str):
        raise TypeError(f"Invalid name: {name!r} (expected one of {', '.join(_PRESETS)})")
    key = name.lower()
    if key not in _PRESETS:
        raise ValueError(f"Invalid name: {name!r}; valid names are {', '.join(_PRESETS)}")
    return _PRESETS[key]


def optimizer(name: str, params: Any, **kwargs: Any) -> Optimizer:
    """Build a preset optimizer by name (see the module table).

    ``kwargs`` go to the optimizer: the strength as ``mu=`` (ProxConnect
    family, ProxQuant) or ``beta=`` (mirror descent), ``levels=`` where the
    method has levels (bc, pc, pq, md-softmax*, md-tanh* with ternary),
    ``base=`` (default :class:`torch.optim.Adam`) and the base's keyword
    arguments (``lr``, ``momentum``, ``betas``, ``weight_decay``, ...).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).

    Example:
        >>> import torch, proxopt
        >>> lin = torch.nn.Linear(2, 2)
        >>> opt = proxopt.optimizer("bc", lin.parameters(), lr=1e-3)
        >>> sorted(set(lin.weight.flatten().tolist()) - {-1.0, 1.0})
        []

    References:
        THEORY.md §2 and the papers cited there.
    """
    return _entry(name)[0](params, **kwargs)
