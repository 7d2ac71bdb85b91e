"""Every proxopt optimizer configuration, declared once as data (the test matrix's database).

In the style of PyTorch's ``OptimizerInfo`` (``common_optimizers.py``): one
list, :data:`CONFIGS`, holds every configuration the generic tests in
``test_optim_matrix.py`` (and the parity tests) run over:

* every preset of :func:`proxopt.available` with two base optimizers, SGD with
  momentum and Adam (adding a preset adds it to every test: the list is built
  from :func:`proxopt.available`, and what a test needs to know about a
  configuration — its level set, whether its forward map is soft, its
  annealed key, whether it keeps latents — is read off a probe optimizer,
  never written by hand);
* direct-class configurations: :class:`proxopt.ProxConnectPP` with custom
  (F, B) pairs, :class:`proxopt.MirrorDescent` with the shifted-tanh and the
  ternary softmax maps, :class:`proxopt.ProxConnect` with ternary levels, and
  an AdamW base.

The module also holds the reference formulas of THEORY.md (forward ``F``,
backward factor ``B'``, hard rounding) written out independently of the
package, from the primitive configuration proxopt stores in each param
group. Tests use them to check the invariant "the model holds ``F(theta)``".

References:
    THEORY.md §2 (the ProxConnect++ loop and its (F, B) table), §3 (proximal
    quantizers), §4 (ProxQuant), §5 (mirror maps). [BC] Courbariaux et al.,
    NeurIPS 2015; [BNN] Hubara et al., NeurIPS 2016; [BNN+] Darabi et al.,
    2018; [PC] Dockhorn et al., NeurIPS 2021; [PC++] Lu et al., NeurIPS 2023;
    [PQ] Bai et al., ICLR 2019; [MD] Ajanthan et al., AISTATS 2021.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.optim import Optimizer

import proxopt
from proxopt.optim.engine import fused_default

from exact import assert_same  # noqa: F401  (re-exported: the tests import it from here)

BINARY: Tuple[float, ...] = (-1.0, 1.0)
TERNARY: Tuple[float, ...] = (-1.0, 0.0, 1.0)

#: Base optimizers of the matrix: SGD with momentum and Adam (with their test learning rates).
SGD_BASE: Tuple[type, Dict[str, Any]] = (torch.optim.SGD, {"lr": 0.02, "momentum": 0.9})
ADAM_BASE: Tuple[type, Dict[str, Any]] = (torch.optim.Adam, {"lr": 0.05})
ADAMW_BASE: Tuple[type, Dict[str, Any]] = (torch.optim.AdamW, {"lr": 0.05, "weight_decay": 1e-3})


@dataclass(frozen=True)
class OptimConfig:
    """One optimizer configuration of the matrix.

    The constructor is called as ``constructor(params, base=base, **own,
    **base_kwargs)``. The descriptive fields (``levels``, ``soft``,
    ``anneal_key``, ``latent``, ``lr_free``, ``alt_group``, ``alt_levels``) are
    filled in by :func:`describe_config` from a probe optimizer.

    Attributes:
        name: test id, e.g. ``"bnn++-adam"``.
        constructor: a callable ``(params, **kwargs) -> Optimizer``.
        own: proxopt keyword arguments (``mu``, ``beta``, ``levels``, quantizers...).
        base: the base optimizer class.
        base_kwargs: the base optimizer's keyword arguments.
        preset: the preset name, or ``None`` for a direct-class configuration.
        levels: the level set the finalized weights lie in.
        soft: the forward map is soft (weights off the level set during
            training), so exact recovery needs the strength annealed upward.
        anneal_key: ``"mu"`` or ``"beta"``, or ``None`` when nothing is annealed (Bop).
        latent: the optimizer keeps a latent ``theta`` in ``state[p]["latent"]``.
        lr_free: the quantized weights move even at ``lr = 0`` (Bop: its flips do
            not use the base optimizer's learning rate).
        alt_group: group keys giving another quantizer (per-group quantizer tests).
        alt_levels: the level set of a group built with ``alt_group``.
    """

    name: str
    constructor: Callable[..., Optimizer]
    own: Mapping[str, Any]
    base: type
    base_kwargs: Mapping[str, Any]
    preset: Optional[str] = None
    levels: Tuple[float, ...] = BINARY
    soft: bool = False
    anneal_key: Optional[str] = "mu"
    latent: bool = True
    lr_free: bool = False
    alt_group: Mapping[str, Any] = field(default_factory=dict)
    alt_levels: Tuple[float, ...] = BINARY

    def make(self, params: Any, **overrides: Any) -> Optimizer:
        """Build the optimizer on ``params``; ``overrides`` replace constructor keyword arguments."""
        kwargs: Dict[str, Any] = {"base": self.base}
        kwargs.update(self.own)
        kwargs.update(self.base_kwargs)
        kwargs.update(overrides)
        return self.constructor(params, **kwargs)

    def make_base(self, params: Any) -> Optimizer:
        """The plain base optimizer with the same hyper-parameters (for ``quantize=False`` parity).

        It runs the implementation proxopt picks for its base (``fused=True`` where
        :func:`proxopt.optim.engine.fused_default` says so), so results compare bit for bit.
        """
        params = list(params)
        kwargs = dict(self.base_kwargs)
        if fused_default(self.base, params, kwargs):
            kwargs["fused"] = True
        return self.base(params, **kwargs)

    @property
    def lr(self) -> float:
        """The configured learning rate."""
        return float(self.base_kwargs["lr"])

    def __repr__(self) -> str:  # pytest ids
        return self.name


# --------------------------------------------------------------------------------------------
# Reference formulas (THEORY.md), written independently of proxopt's implementation.
# --------------------------------------------------------------------------------------------
def ref_nearest(x: Tensor, levels: Sequence[float]) -> Tensor:
    """Nearest level of each entry of ``x``, ties to the larger level (THEORY.md §3, sign(0) = +1).

    .. math:: \\operatorname{round}_Q(x) = \\max\\{q \\in Q : |x - q| = \\min_{q'} |x - q'|\\}
    """
    q = torch.tensor(list(levels), dtype=x.dtype)
    dist = (x.unsqueeze(-1) - q).abs()
    is_min = dist == dist.min(-1, keepdim=True).values
    idx = (is_min.long() * torch.arange(1, len(levels) + 1)).argmax(-1)
    return q[idx]


def ref_sign(x: Tensor) -> Tensor:
    """``sign`` with the tie rule ``sign(0) = +1`` (THEORY.md §3); also ``sign(-0.0) = +1``."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def ref_sign_swish(x: Tensor, mu: float) -> Tensor:
    """``SS_mu(x) = 2 sigma(mu x) [1 + mu x (1 - sigma(mu x))] - 1`` [BNN+] (THEORY.md §2)."""
    s = torch.sigmoid(mu * x)
    return 2.0 * s * (1.0 + mu * x * (1.0 - s)) - 1.0


def ref_sign_swish_derivative(x: Tensor, mu: float) -> Tensor:
    """``SS'_mu(x) = mu [2 - mu x tanh(mu x / 2)] / [1 + cosh(mu x)]`` [BNN+] (THEORY.md §2)."""
    z = mu * x
    return mu * (2.0 - z * torch.tanh(z / 2.0)) / (1.0 + torch.cosh(z))


def ref_linear_prox(x: Tensor, levels: Sequence[float], mu: float, jump: float = 0.0) -> Tensor:
    """ProxConnect's linear proximal quantizer at strength ``mu`` (THEORY.md §3, [PC] reconstruction).

    Dead zone ``a = max(0, 1 - 1/mu)``, jump ``b = jump * a``. Around each
    level ``q`` the output is flat on ``|x - q| <= a h / 2`` (``h`` the gap on
    that side), then rises with slope ``(1 - b) / (1 - a)``; clipped outside
    ``[q_1, q_d]``:

    .. math:: F(x) = q + \\operatorname{sign}(x - q)\\,\\frac{1-b}{1-a}\\,\\max(0, |x - q| - a h/2)
    """
    a = max(0.0, 1.0 - 1.0 / mu)
    b = jump * a
    lv = list(levels)
    x = x.clamp(lv[0], lv[-1])
    q = ref_nearest(x, lv)
    d = x - q
    out = torch.empty_like(x)
    flat = out.view(-1)
    for i, (xi, qi, di) in enumerate(zip(x.view(-1).tolist(), q.view(-1).tolist(), d.view(-1).tolist())):
        j = lv.index(qi)
        if di >= 0:
            h = lv[j + 1] - lv[j] if j + 1 < len(lv) else 0.0
        else:
            h = lv[j] - lv[j - 1] if j > 0 else 0.0
        if a >= 1.0:
            flat[i] = qi
        else:
            flat[i] = qi + math.copysign(1.0, di) * (1.0 - b) / (1.0 - a) * max(0.0, abs(di) - a * h / 2.0)
    return out


def ref_linear_prox_derivative(x: Tensor, levels: Sequence[float], mu: float, jump: float = 0.0) -> Tensor:
    """Derivative of :func:`ref_linear_prox`: the ramp slope ``(1 - b)/(1 - a)`` strictly inside
    ``(q_1, q_d)`` and outside the dead zones, 0 elsewhere."""
    a = max(0.0, 1.0 - 1.0 / mu)
    b = jump * a
    lv = list(levels)
    out = torch.zeros_like(x)
    flat = out.view(-1)
    if a >= 1.0:
        return out
    for i, xi in enumerate(x.view(-1).tolist()):
        if not lv[0] < xi < lv[-1]:
            continue
        qi = ref_nearest(torch.tensor([xi], dtype=x.dtype), lv).item()
        j, di = lv.index(qi), xi - qi
        h = (lv[j + 1] - lv[j]) if di >= 0 else (lv[j] - lv[j - 1])
        if abs(di) > a * h / 2.0:
            flat[i] = (1.0 - b) / (1.0 - a)
    return out


def _q_levels(cfg: Mapping[str, Any], default: Optional[Tuple[float, ...]]) -> Optional[Tuple[float, ...]]:
    lv = cfg.get("levels")
    return default if lv is None else tuple(float(v) for v in lv)


def ref_quantizer_value(cfg: Mapping[str, Any], x: Tensor, mu: float) -> Tensor:
    """Forward quantizer ``F_mu(x)`` of a primitive quantizer config (THEORY.md §2–§3 table)."""
    name = cfg["name"]
    if name == "identity":
        return x.clone()
    if name == "sign":
        return ref_nearest(x, _q_levels(cfg, BINARY))  # type: ignore[arg-type]
    if name == "clip":
        lv = _q_levels(cfg, BINARY)
        return x.clamp(lv[0], lv[-1])  # type: ignore[index]
    if name == "tanh":
        return torch.tanh(mu * x)
    if name == "signswish":
        return ref_sign_swish(x, mu)
    if name == "approxsign":
        c = x.clamp(-1.0, 1.0)
        return torch.where(c < 0, 2 * c + c * c, 2 * c - c * c)
    if name == "linearprox":
        return ref_linear_prox(x, _q_levels(cfg, BINARY), mu, cfg.get("jump", 0.0))  # type: ignore[arg-type]
    raise KeyError(f"no reference formula for quantizer {name!r}")


def ref_quantizer_derivative(cfg: Mapping[str, Any], x: Tensor, mu: float) -> Tensor:
    """Backward factor ``B'_mu(x)`` of a primitive quantizer config (THEORY.md §2 table)."""
    name = cfg["name"]
    one = torch.ones_like(x)
    if name == "identity":
        return one
    if name == "sign":
        return torch.zeros_like(x)
    if name == "clip":
        lv = _q_levels(cfg, BINARY)
        return ((x >= lv[0]) & (x <= lv[-1])).to(x.dtype)  # type: ignore[index]
    if name == "tanh":
        return mu * (1.0 - torch.tanh(mu * x) ** 2)
    if name == "signswish":
        return ref_sign_swish_derivative(x, mu)
    if name == "approxsign":
        return torch.where(x.abs() <= 1.0, 2.0 - 2.0 * x.abs(), torch.zeros_like(x))
    if name == "linearprox":
        return ref_linear_prox_derivative(x, _q_levels(cfg, BINARY), mu, cfg.get("jump", 0.0))  # type: ignore
    raise KeyError(f"no reference formula for quantizer {name!r}")


def ref_softmax_simplex(theta: Tensor, beta: float) -> Tensor:
    """``u = softmax(beta theta)`` over the last dimension (THEORY.md §5, softmax map)."""
    z = beta * theta
    e = torch.exp(z - z.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def ref_dual(group: Mapping[str, Any], p: Tensor, theta: Tensor) -> Tensor:
    """The latent as the references take it: for a softmax group whose latent has the weight's shape, the dual
    ``(-t, t)`` it keeps as ``t`` (the stable form, levels ``(-a, a)``, an odd elementwise base); else itself."""
    cfg = group.get("mirror_map")
    if cfg is not None and cfg["name"] == "softmax" and theta.shape == p.shape:
        return torch.stack([-theta, theta], -1)
    return theta


def ref_mirror_value(cfg: Mapping[str, Any], theta: Tensor, beta: float) -> Tensor:
    """Mirror-map projection ``P_beta(theta)`` of a primitive map config (THEORY.md §5)."""
    name = cfg["name"]
    if name == "tanh":
        return torch.tanh(beta * theta)
    if name == "linear":
        return (beta * theta).clamp(-1.0, 1.0)
    if name == "shifted_tanh":
        return 0.5 * (torch.tanh(beta * (theta + 0.5)) + torch.tanh(beta * (theta - 0.5)))
    if name == "softmax":
        q = torch.tensor(_q_levels(cfg, BINARY), dtype=theta.dtype)
        return (ref_softmax_simplex(theta, beta) * q).sum(-1)
    raise KeyError(f"no reference formula for mirror map {name!r}")


def ref_mirror_derivative(cfg: Mapping[str, Any], theta: Tensor, beta: float) -> Tensor:
    """``dP_beta / dtheta`` (the Jacobian the GD baselines apply; softmax: ``beta u_j (q_j - w)``)."""
    name = cfg["name"]
    if name == "tanh":
        return beta * (1.0 - torch.tanh(beta * theta) ** 2)
    if name == "linear":
        return beta * ((beta * theta).abs() <= 1.0).to(theta.dtype)
    if name == "shifted_tanh":
        a, b = torch.tanh(beta * (theta + 0.5)), torch.tanh(beta * (theta - 0.5))
        return 0.5 * beta * ((1 - a * a) + (1 - b * b))
    if name == "softmax":
        q = torch.tensor(_q_levels(cfg, BINARY), dtype=theta.dtype)
        u = ref_softmax_simplex(theta, beta)
        w = (u * q).sum(-1, keepdim=True)
        return beta * u * (q - w)
    raise KeyError(f"no reference formula for mirror map {name!r}")


def ref_scale(group: Mapping[str, Any], theta: Tensor) -> Any:
    """The optional scale ``alpha = mean |theta|`` (per tensor, or per output channel for ``scale="channel"``).

    THEORY.md §1: ``w in alpha Q``; ``1.0`` when the group has no scale.
    """
    mode = group.get("scale")
    if mode is None:
        return 1.0
    if mode == "channel" and theta.dim() >= 2:
        return theta.abs().reshape(theta.shape[0], -1).mean(1).reshape((-1,) + (1,) * (theta.dim() - 1))
    return theta.abs().mean()


def ref_forward(group: Mapping[str, Any], theta: Tensor) -> Tensor:
    """``w = alpha F_v(theta)`` for a param group of a latent optimizer, from its stored configuration.

    ProxConnect family groups carry ``forward`` (a quantizer config) and
    ``mu``; mirror-descent groups carry ``mirror_map`` and ``beta``, and the
    primal form's latents are encoded at ``beta_encoded`` (which lags
    ``beta`` from a change of ``beta`` to the next step: the model keeps ``w``).
    """
    if "forward" in group:
        return ref_quantizer_value(group["forward"], theta, group["mu"]) * ref_scale(group, theta)
    if "mirror_map" in group:
        beta = group["beta"] if group.get("stable", True) else group["beta_encoded"]
        return ref_mirror_value(group["mirror_map"], theta, beta) * ref_scale(group, theta)
    raise KeyError(f"no reference forward for a group with keys {sorted(group)}")


def ref_backward(group: Mapping[str, Any], theta: Tensor, g: Tensor) -> Tensor:
    """Latent gradient ``B'_v(theta) * g`` of a param group (THEORY.md §2, §5).

    Mirror descent skips the Jacobian (``B' = 1``; softmax pulls ``g`` back as
    ``g q``); ``exact_gradient`` applies it (GD-tanh).
    """
    if "forward" in group:
        return ref_quantizer_derivative(group["backward"], theta, group["mu"]) * g
    cfg, beta = group["mirror_map"], group["beta"]
    multi = cfg["name"] == "softmax"
    if group.get("exact_gradient", False):
        d = ref_mirror_derivative(cfg, theta, beta)
        return d * g.unsqueeze(-1) if multi else d * g
    if multi:
        return g.unsqueeze(-1) * torch.tensor(_q_levels(cfg, BINARY), dtype=theta.dtype)
    return g.clone()


def ref_hard(group: Mapping[str, Any], theta: Tensor) -> Tensor:
    """Exact levels of a group's latents: nearest level / sign / level at the dual's argmax (THEORY.md §6),
    times the group's scale if it has one."""
    if "forward" in group:
        cfg = group["forward"]
        lv = _q_levels(cfg, None if cfg["name"] == "identity" else BINARY)
        return (theta.clone() if lv is None else ref_nearest(theta, lv)) * ref_scale(group, theta)
    if "mirror_map" in group:
        cfg = group["mirror_map"]
        if cfg["name"] == "softmax":
            q = torch.tensor(_q_levels(cfg, BINARY), dtype=theta.dtype)
            best = theta == theta.max(-1, keepdim=True).values
            idx = (best.long() * torch.arange(1, q.numel() + 1)).argmax(-1)
            return q[idx]
        lv = TERNARY if cfg["name"] == "shifted_tanh" else BINARY
        return ref_nearest(theta, lv) * ref_scale(group, theta)
    if "levels" in group:  # ProxQuant: the parameters themselves
        return ref_nearest(theta, group["levels"])
    raise KeyError(f"no reference hard rounding for a group with keys {sorted(group)}")


# --------------------------------------------------------------------------------------------
# Small problems shared by the tests
# --------------------------------------------------------------------------------------------
class TinyNet(torch.nn.Module):
    """A 6-4-2 tanh MLP ``y = W2 tanh(W1 x + b1) + b2``.

    ``W1`` holds an exact ``0.0`` and ``-0.0`` so every test also pins the tie
    rule ``sign(0) = +1`` (THEORY.md §3).
    """

    def __init__(self, dtype: torch.dtype = torch.float64, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(0.6 * torch.randn(4, 6, generator=g, dtype=dtype))
        self.b1 = torch.nn.Parameter(0.1 * torch.randn(4, generator=g, dtype=dtype))
        self.w2 = torch.nn.Parameter(0.6 * torch.randn(2, 4, generator=g, dtype=dtype))
        self.b2 = torch.nn.Parameter(0.1 * torch.randn(2, generator=g, dtype=dtype))
        with torch.no_grad():
            self.w1[0, 0] = 0.0
            self.w1[0, 1] = -0.0

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x @ self.w1.T + self.b1) @ self.w2.T + self.b2


def batch(t: int, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """The ``t``-th mini-batch ``(x, y)`` of :class:`TinyNet`'s regression (deterministic in ``t``)."""
    g = torch.Generator().manual_seed(1000 + t)
    return torch.randn(8, 6, generator=g, dtype=dtype), torch.randn(8, 2, generator=g, dtype=dtype)


def tiny_loss(model: TinyNet, t: int) -> Tensor:
    """Mean squared error of ``model`` on :func:`batch` ``t``."""
    x, y = batch(t, model.w1.dtype)
    return ((model(x) - y) ** 2).mean()


# --------------------------------------------------------------------------------------------
# The list
# --------------------------------------------------------------------------------------------
def alt_group_for(group: Mapping[str, Any]) -> Dict[str, Any]:
    """Group keys that select another quantizer than ``group``'s (for per-group quantizer tests).

    ProxConnect family: a sign forward over the other of binary / ternary
    levels with the identity backward;
    mirror descent: tanh <-> shifted tanh (primal tanh -> ternary softmax),
    binary <-> ternary softmax, linear -> tanh; ProxQuant: the other of binary / ternary levels.
    """
    if "forward" in group:
        if _q_levels(group["forward"], BINARY) == BINARY:
            return {"forward": {"name": "sign", "levels": list(TERNARY)}, "backward": "identity"}
        return {"forward": {"name": "sign"}, "backward": "identity"}
    if "mirror_map" in group:
        cfg = group["mirror_map"]
        if cfg["name"] == "softmax":
            other = BINARY if _q_levels(cfg, BINARY) != BINARY else TERNARY
            return {"mirror_map": {"name": "softmax", "levels": list(other)}}
        if cfg["name"] == "tanh" and group.get("stable", True):
            return {"mirror_map": {"name": "shifted_tanh"}}
        if cfg["name"] == "tanh":  # the shifted tanh has no primal form (THEORY.md §5)
            return {"mirror_map": {"name": "softmax", "levels": list(TERNARY)}}
        return {"mirror_map": {"name": "tanh"}}
    if "levels" in group:
        other = BINARY if tuple(group["levels"]) != BINARY else TERNARY
        return {"levels": list(other)}
    return {}


def describe_config(cfg: OptimConfig) -> OptimConfig:
    """Fill in a configuration's descriptive fields by probing an optimizer built from it.

    * ``levels``: the distinct values of the finalized weights over a grid of
      initial values in ``[-2, 2]``;
    * ``soft``: some weight is off the level set right after construction;
    * ``latent``, ``anneal_key``: read off the optimizer;
    * ``lr_free``: with ``lr = 0`` and a constant gradient, the weights still move;
    * ``alt_group`` / ``alt_levels``: :func:`alt_group_for`, probed likewise.
    """
    grid = torch.linspace(-2.0, 2.0, 401, dtype=torch.float64)
    p = torch.nn.Parameter(grid.clone())
    opt = cfg.make([p])
    soft_values = p.detach().clone()
    opt.finalize()  # type: ignore[attr-defined]
    levels = tuple(sorted(set(p.detach().tolist())))
    soft = not bool(torch.isin(soft_values, torch.tensor(levels, dtype=torch.float64)).all())
    latent = "latent" in opt.state[p]
    alt = alt_group_for(opt.param_groups[0])
    alt_levels = levels
    if alt:
        q = torch.nn.Parameter(grid.clone())
        opt.add_param_group(dict(alt, params=[q]))
        opt.finalize()  # type: ignore[attr-defined]
        alt_levels = tuple(sorted(set(q.detach().tolist())))
    r = torch.nn.Parameter(0.45 * grid)  # inside every level range, so no clipping
    still = cfg.make([r], lr=0.0)
    start = r.detach().clone()
    for _ in range(3):
        r.grad = torch.ones_like(r)
        still.step()
    lr_free = not torch.allclose(r.detach(), start, rtol=0.0, atol=1e-9)
    return OptimConfig(name=cfg.name, constructor=cfg.constructor, own=dict(cfg.own), base=cfg.base,
                       base_kwargs=dict(cfg.base_kwargs), preset=cfg.preset, levels=levels, soft=soft,
                       anneal_key=opt.anneal_key, latent=latent, lr_free=lr_free,  # type: ignore[attr-defined]
                       alt_group=alt, alt_levels=alt_levels)


def _preset_constructor(name: str) -> Callable[..., Optimizer]:
    def build(params: Any, **kwargs: Any) -> Optimizer:
        return proxopt.optimizer(name, params, **kwargs)
    build.__name__ = f"preset_{name}"
    return build


def _base_suffix(base: type) -> str:
    return base.__name__.lower()


def preset_configs() -> List[OptimConfig]:
    """Every preset of :func:`proxopt.available` with SGD (momentum) and Adam bases."""
    out = []
    for name in proxopt.available():
        own: Dict[str, Any] = {}
        if name == "pq":
            own = {"mu": 1e-2}  # lambda large enough for the prox to matter within a short run
        for base, bkw in (SGD_BASE, ADAM_BASE):
            out.append(OptimConfig(name=f"{name}-{_base_suffix(base)}", constructor=_preset_constructor(name),
                                   own=own, base=base, base_kwargs=bkw, preset=name))
    return out


def direct_configs() -> List[OptimConfig]:
    """Direct-class configurations: custom (F, B) pairs, ternary maps and levels, an AdamW base."""
    pp, md, pc = proxopt.ProxConnectPP, proxopt.MirrorDescent, proxopt.ProxConnect
    sgd, sgd_kw = SGD_BASE
    adam, adam_kw = ADAM_BASE
    adamw, adamw_kw = ADAMW_BASE
    return [
        # Bi-Real's ApproxSign backward with the sign forward.
        OptimConfig("pp-sign-approxsign-adam", pp, {"forward": "sign", "backward": "approxsign"}, adam, adam_kw),
        # GD-tanh through the quantizer pair (F = B = tanh_mu).
        OptimConfig("pp-tanh-tanh-sgd", pp, {"forward": "tanh", "backward": "tanh"}, sgd, sgd_kw),
        # The "jump" member of the linear prox (ProxQuant's clipped regularizer) with BNN's clip backward.
        OptimConfig("pp-linearprox-jump-clip-adam", pp,
                    {"forward": {"name": "linearprox", "jump": 1.0}, "backward": "clip"}, adam, adam_kw),
        OptimConfig("md-shifted-tanh-adam", md, {"mirror_map": "shifted_tanh"}, adam, adam_kw),
        OptimConfig("md-shifted-tanh-sgd", md, {"mirror_map": "shifted_tanh"}, sgd, sgd_kw),
        OptimConfig("md-softmax-ternary-adam", md, {"mirror_map": {"name": "softmax", "levels": "ternary"}},
                    adam, adam_kw),
        OptimConfig("md-softmax-ternary-primal-sgd", md,
                    {"mirror_map": {"name": "softmax", "levels": "ternary"}, "stable": False}, sgd, sgd_kw),
        OptimConfig("pc-ternary-adam", pc, {"levels": "ternary"}, adam, adam_kw),
        OptimConfig("bc-adamw", _preset_constructor("bc"), {}, adamw, adamw_kw, preset="bc"),
        OptimConfig("md-tanh-s-adamw", _preset_constructor("md-tanh-s"), {}, adamw, adamw_kw, preset="md-tanh-s"),
    ]


#: Every configuration of the matrix.
CONFIGS: List[OptimConfig] = [describe_config(c) for c in preset_configs() + direct_configs()]

#: Configurations that keep latents (every one but ProxQuant's).
LATENT_CONFIGS: List[OptimConfig] = [c for c in CONFIGS if c.latent]


def config_ids(configs: Sequence[OptimConfig]) -> List[str]:
    """Pytest ids of ``configs``."""
    return [c.name for c in configs]


