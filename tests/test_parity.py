"""Parity: proxopt against torch.optim and against hand-written loops of THEORY.md's formulas.

1. With ``F = B = identity`` ProxConnect++ is its base optimizer: the
   trajectory equals ``torch.optim.SGD`` (momentum, dampening, Nesterov,
   weight decay), ``Adam`` (weight decay, AMSGrad) and ``AdamW`` bit for bit.
2. For every preset of :func:`proxopt.available`, with SGD (momentum) and Adam
   bases, the trajectory (model weights and latents) equals a plain loop of
   its formula, written here from THEORY.md §2–§5 with a hand-written SGD /
   Adam on ``theta`` (float64, tight tolerance), while the strength is
   annealed between steps:

   * §2 loop: ``w = F_v(theta)``, ``theta <- BaseStep(theta, B'_v(theta) g)``;
   * §4 ProxQuant: ``theta <- prox_{eta lambda t R}(BaseStep(theta, g))``;
   * §5 mirror descent: stable form (``theta`` kept), primal form (``w`` or
     ``u`` kept, ``theta = P_beta^{-1}(w)`` recomputed), softmax dual gradient
     ``g q``.
3. The direct-class configurations of the matrix (stable forms) against the
   same loop built from ``optim_db``'s reference formulas.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn

import proxopt
from proxopt.optim.engine import FUSED_BASES, fused_default
from optim_db import (CONFIGS, OptimConfig, TinyNet, ref_backward, ref_forward, ref_sign, ref_sign_swish,
                      ref_sign_swish_derivative, ref_softmax_simplex, tiny_loss)

DTYPES = [torch.float32, torch.float64]


# --------------------------------------------------------------------------------------------
# 1. identity pair == base optimizer, bitwise
# --------------------------------------------------------------------------------------------
BASES: List[Tuple[str, type, Dict[str, Any]]] = [
    ("sgd", torch.optim.SGD, {"lr": 0.05}),
    ("sgd-momentum", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    ("sgd-nesterov-wd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    ("sgd-dampening-wd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 1e-2}),
    ("adam", torch.optim.Adam, {"lr": 0.01}),
    ("adam-wd-amsgrad", torch.optim.Adam, {"lr": 0.01, "weight_decay": 1e-2, "amsgrad": True}),
    ("adamw", torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
]


@pytest.mark.parametrize("impl", ["default", "for-loop"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name,base,kwargs", BASES, ids=[b[0] for b in BASES])
def test_identity_pair_is_the_base_optimizer(name: str, base: type, kwargs: Dict[str, Any],
                                             dtype: torch.dtype, impl: str) -> None:
    """proxopt runs Adam / AdamW fused by default (see ``fused_default``): it then equals
    ``base(..., fused=True)``; with ``fused=False`` (and for SGD) it equals torch's default implementation."""
    model_a, model_b = TinyNet(dtype), TinyNet(dtype)
    own = {} if impl == "default" else {"fused": False}
    opt_a = proxopt.ProxConnectPP(model_a.parameters(), forward="identity", backward="identity", base=base,
                                  **own, **kwargs)
    fused = opt_a.base_optimizer.param_groups[0]["fused"]
    assert bool(fused) is (impl == "default" and base in FUSED_BASES)
    opt_b = base(model_b.parameters(), **kwargs, **({"fused": True} if fused else {}))
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=2, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=2, gamma=0.5)
    for p_a, p_b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p_a, p_b)
    for t in range(5):
        for model, opt, sched in ((model_a, opt_a, sched_a), (model_b, opt_b, sched_b)):
            opt.zero_grad()
            tiny_loss(model, t).backward()
            opt.step()
            sched.step()
        for p_a, p_b in zip(model_a.parameters(), model_b.parameters()):
            theta = opt_a.state[p_a]["latent"]
            assert torch.equal(p_a, p_b), f"step {t}"
            assert torch.equal(theta, p_b), f"step {t}"
            mine, theirs = opt_a.base_optimizer.state[theta], opt_b.state[p_b]
            assert set(mine) == set(theirs)
            for k in theirs:
                assert torch.equal(torch.as_tensor(mine[k]), torch.as_tensor(theirs[k])), f"step {t}: state {k}"


class AdamSubclass(torch.optim.Adam):
    """A user's Adam subclass: proxopt leaves its implementation alone."""


@pytest.mark.parametrize("base,kwargs,fused", [
    (torch.optim.Adam, {}, True),
    (torch.optim.AdamW, {"weight_decay": 0.1}, True),
    (torch.optim.Adam, {"fused": False}, False),
    (torch.optim.Adam, {"foreach": True}, None),
    (torch.optim.Adam, {"foreach": False}, None),
    (AdamSubclass, {}, None),
    (torch.optim.SGD, {"momentum": 0.9}, None),
], ids=["adam", "adamw", "fused-off", "foreach-on", "foreach-off", "subclass", "sgd"])
def test_fused_base_only_where_the_user_chose_no_implementation(base: type, kwargs: Dict[str, Any],
                                                                fused: Any) -> None:
    """Every group (and one added later) gets the same choice, visible in ``param_groups`` as in torch."""
    model = TinyNet()
    opt = proxopt.ProxConnectPP([model.w1, model.w2], forward="sign", backward="identity", base=base, lr=0.01,
                                **kwargs)
    opt.add_param_group({"params": [model.b1, model.b2], "quantize": False})
    assert [g.get("fused") for g in opt.base_optimizer.param_groups] == [fused, fused]
    assert [g.get("fused") for g in opt.param_groups] == [fused, fused]
    tiny_loss(model, 0).backward()
    opt.step()
    opt._sync()
    assert [g.get("fused") for g in opt.base_optimizer.param_groups] == [fused, fused]


def test_fused_base_per_group_choice_and_plain_tensors_only() -> None:
    """A group may opt out on its own; tensor subclasses (DTensor, fakes) keep torch's default."""

    class Marked(torch.Tensor):
        pass

    model = TinyNet()
    marked = torch.nn.Parameter(torch.zeros(3).as_subclass(Marked))
    opt = proxopt.optimizer("bc", [{"params": [model.w1]}, {"params": [model.w2], "fused": False},
                                   {"params": [marked], "quantize": False}], lr=0.01)
    assert [g.get("fused") for g in opt.base_optimizer.param_groups] == [True, False, None]
    assert not fused_default(torch.optim.Adam, [model.w1], {"differentiable": True})
    assert fused_default(torch.optim.Adam, [model.w1], {})


def _two_runs(make_grads: Callable[[List[nn.Parameter]], None], params_of: Callable[[], List[nn.Parameter]],
               ) -> Tuple[List[Tensor], List[Tensor]]:
    """Two steps with proxopt's default (fused) base and with ``fused=False``; the parameters after each."""
    out = []
    for kw in ({}, {"fused": False}):
        params = params_of()
        opt = proxopt.optimizer("bc", [{"params": params[:1]}, {"params": params[1:], "quantize": False}],
                                lr=0.1, **kw)
        for _ in range(2):
            make_grads(params)
            opt.step()
        out.append([p.detach().clone() for p in params])
    return out[0], out[1]


def test_fused_base_is_not_used_for_layouts_it_cannot_step() -> None:
    """Fused Adam walks tensor, gradient and moments as one flat array: a non-contiguous parameter is never
    fused, and a step whose gradient is laid out unlike its tensor runs that group unfused (bit for bit
    the ``fused=False`` result); the group is fused again afterwards."""
    def params_of() -> List[nn.Parameter]:
        torch.manual_seed(0)
        storage = torch.randn(4, 6)
        return [nn.Parameter(torch.randn(4, 6)), nn.Parameter(storage[:, ::2])]  # the second is not dense

    def grads(params: List[nn.Parameter]) -> None:
        g = torch.Generator().manual_seed(1)
        params[0].grad = torch.randn(6, 4, generator=g).t()  # a transposed, non-contiguous gradient
        params[1].grad = torch.randn(4, 3, generator=g)

    fused, plain = _two_runs(grads, params_of)
    for a, b in zip(fused, plain):
        assert torch.equal(a, b)
    params = params_of()
    opt = proxopt.optimizer("bc", [{"params": params[:1]}, {"params": params[1:], "quantize": False}], lr=0.1)
    assert [g.get("fused") for g in opt.base_optimizer.param_groups] == [True, None]
    grads(params)
    opt.step()
    assert opt.base_optimizer.param_groups[0]["fused"] is True


# --------------------------------------------------------------------------------------------
# Hand-written base optimizers (the update rules of torch.optim's documentation)
# --------------------------------------------------------------------------------------------
class HandSGD:
    """SGD on one tensor: ``g += wd theta``; ``b = g`` (first step) or ``b = m b + (1 - d) g``;
    Nesterov ``g += m b`` else ``g = b``; ``theta -= lr g``."""

    def __init__(self, lr: float, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        self.lr, self.m, self.d, self.nesterov, self.wd = lr, momentum, dampening, nesterov, weight_decay
        self.buf: Optional[Tensor] = None

    def step(self, theta: Tensor, g: Tensor) -> Tensor:
        g = g + self.wd * theta if self.wd else g
        if self.m:
            self.buf = g.clone() if self.buf is None else self.m * self.buf + (1.0 - self.d) * g
            g = g + self.m * self.buf if self.nesterov else self.buf
        return theta - self.lr * g


class HandAdam:
    """Adam / AdamW on one tensor (Kingma & Ba; Loshchilov & Hutter for the decoupled decay).

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``theta -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``; L2 decay
    adds ``wd theta`` to ``g``, decoupled decay scales ``theta`` by ``1 - lr wd``.
    """

    def __init__(self, lr: float, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False) -> None:
        self.lr, (self.b1, self.b2), self.eps, self.wd, self.decoupled = lr, betas, eps, weight_decay, decoupled
        self.m: Any = 0.0
        self.v: Any = 0.0
        self.t = 0

    def step(self, theta: Tensor, g: Tensor) -> Tensor:
        self.t += 1
        if self.wd and self.decoupled:
            theta = theta * (1.0 - self.lr * self.wd)
        elif self.wd:
            g = g + self.wd * theta
        self.m = self.b1 * self.m + (1.0 - self.b1) * g
        self.v = self.b2 * self.v + (1.0 - self.b2) * g * g
        m_hat = self.m / (1.0 - self.b1 ** self.t)
        v_hat = self.v / (1.0 - self.b2 ** self.t)
        return theta - self.lr * m_hat / (v_hat.sqrt() + self.eps)


def hand_base(base: type, kwargs: Dict[str, Any]) -> Any:
    """The hand-written twin of ``base(**kwargs)``."""
    kw = dict(kwargs)
    if base is torch.optim.SGD:
        return HandSGD(**kw)
    if base is torch.optim.Adam:
        return HandAdam(**kw)
    if base is torch.optim.AdamW:
        kw.setdefault("weight_decay", 1e-2)
        return HandAdam(decoupled=True, **kw)
    raise KeyError(f"no hand-written twin for {base.__name__}")


# --------------------------------------------------------------------------------------------
# 2. every preset == its THEORY.md formula
# --------------------------------------------------------------------------------------------
def sign(x: Tensor, v: float) -> Tensor:
    return ref_sign(x)


def one(x: Tensor, v: float) -> Tensor:
    return torch.ones_like(x)


#: §2 pairs (F_v, B'_v) of the presets that are the plain ProxConnect++ loop on a stored latent.
#: pc: the "linear" member of the linear prox, clip(theta / (1 - a), -1, 1) with dead zone a = 1 - 1/mu (§3).
PAIRS: Dict[str, Tuple[Callable[[Tensor, float], Tensor], Callable[[Tensor, float], Tensor]]] = {
    "bc": (sign, one),
    "pc": (lambda x, mu: (x / (1.0 - (1.0 - 1.0 / mu))).clamp(-1.0, 1.0), one),
    "bnn": (sign, lambda x, mu: (x.abs() <= 1.0).to(x.dtype)),
    "bnn+": (sign, ref_sign_swish_derivative),
    "bnn++": (ref_sign_swish, ref_sign_swish_derivative),
    "md-tanh-s": (lambda x, b: torch.tanh(b * x), one),
    "md-linear": (lambda x, b: (b * x).clamp(-1.0, 1.0), one),
    "gd-tanh": (lambda x, b: torch.tanh(b * x), lambda x, b: b * (1.0 - torch.tanh(b * x) ** 2)),
}
#: The other presets' forms (§4, §5, §7).
SPECIAL = ("pq", "md-tanh", "md-softmax", "md-softmax-s", "bop")
#: Bop's defaults (larq's, THEORY.md §7): adaptivity rate gamma and threshold tau.
BOP_GAMMA, BOP_TAU = 1e-4, 1e-8
#: Default strength of each preset (README's table).
DEFAULT_STRENGTH = {"bc": 1.0, "pc": 1.0, "bnn": 1.0, "bnn+": 5.0, "bnn++": 1.0, "md-tanh-s": 1.0, "md-linear": 1.0,
                    "gd-tanh": 1.0, "md-tanh": 1.0, "md-softmax": 1.0, "md-softmax-s": 1.0}
#: lambda for ProxQuant in this test (its default 1e-4 barely moves the weights in a few steps).
PQ_LAMBDA = 0.05
PQ_LEVELS = (-1.0, 1.0)

PARITY_BASES = [("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
                ("adam", torch.optim.Adam, {"lr": 0.05})]
STEPS = 6
ANNEAL = 1.5  # strength multiplied by this after every step (AnnealScheduler(factor=1.5))


def regression() -> Tuple[Tensor, Tensor, Tensor]:
    """``f(W) = ||X W^T - Y||^2 / (2 n)`` with ``W`` 2x5 (one exact zero); returns ``X, Y, W_0``."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    y = torch.randn(16, 2, generator=g, dtype=torch.float64)
    w0 = 1.2 * (2.0 * torch.rand(2, 5, generator=g, dtype=torch.float64) - 1.0)
    w0[0, 0] = 0.0
    return x, y, w0


def grad_at(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``grad_W f = (X W^T - Y)^T X / n``."""
    return (x @ w.T - y).T @ x / x.shape[0]


def hand_trajectory(preset: str, base: type, base_kwargs: Dict[str, Any], theta0: Tensor
                    ) -> List[Tuple[Tensor, Optional[Tensor]]]:
    """(model weights, latent) after each step and strength update, by the preset's THEORY.md formula."""
    x, y, w0 = regression()
    opt = hand_base(base, base_kwargs)
    lr = base_kwargs["lr"]
    out: List[Tuple[Tensor, Optional[Tensor]]] = []
    if preset in PAIRS:  # §2: w = F_v(theta), theta <- BaseStep(theta, B'_v(theta) g)
        F, dB = PAIRS[preset]
        v, theta = DEFAULT_STRENGTH[preset], theta0.clone()
        for _ in range(STEPS):
            g = grad_at(F(theta, v), x, y)
            theta = opt.step(theta, dB(theta, v) * g)
            v *= ANNEAL
            out.append((F(theta, v), theta))
        return out
    if preset == "pq":  # §4: theta <- prox_{eta lambda_t R}(BaseStep(theta, g)), lambda_t = lambda t
        lam, theta = PQ_LAMBDA, w0.clone()
        for t in range(1, STEPS + 1):
            theta = opt.step(theta, grad_at(theta, x, y))
            c = theta.clamp(PQ_LEVELS[0], PQ_LEVELS[1])
            q = ref_sign(c)
            amount = lr * lam * t
            theta = q + torch.sign(c - q) * ((c - q).abs() - amount).clamp_min(0.0)
            lam *= ANNEAL
            out.append((theta, None))
        return out
    if preset == "md-tanh":  # §5 primal form: keep w; theta = atanh(w)/beta before every step
        beta = DEFAULT_STRENGTH[preset]
        below_one = 1.0 - torch.finfo(torch.float64).eps / 2.0
        w = torch.tanh(beta * theta0)
        for _ in range(STEPS):
            theta = torch.atanh(w.clamp(-below_one, below_one)) / beta
            theta = opt.step(theta, grad_at(w, x, y))
            w = torch.tanh(beta * theta)
            # raising beta keeps w; the latent stays encoded at this step's beta until the next step
            out.append((w, torch.atanh(w.clamp(-below_one, below_one)) / beta))
            beta *= ANNEAL
        return out
    q = torch.tensor(PQ_LEVELS, dtype=torch.float64)
    tiny = torch.finfo(torch.float64).tiny
    if preset == "md-softmax":  # §5 primal form: keep u; theta = its dual before every step, grad_theta = g q
        # the dual of u whose largest entry is 0 (softmax ignores a common shift): log(u_j / max_k u_k) / beta
        def dual(u: Tensor, beta: float) -> Tensor:
            return torch.log((u / u.amax(-1, keepdim=True)).clamp_min(tiny)) / beta
        # levels (-1, 1) under an odd elementwise base: proxopt keeps the zero-sum dual (-t, t) as t
        def kept(th: Tensor) -> Tensor:
            return (th[..., 1] - th[..., 0]) / 2
        beta = DEFAULT_STRENGTH[preset]
        u = ref_softmax_simplex(torch.stack([-theta0, theta0], -1), beta)
        for _ in range(STEPS):
            theta = dual(u, beta)
            theta = opt.step(theta, grad_at(u @ q, x, y).unsqueeze(-1) * q)
            u = ref_softmax_simplex(theta, beta)
            out.append((u @ q, kept(dual(u, beta))))  # raising beta keeps u (and the latent)
            beta *= ANNEAL
        return out
    if preset == "md-softmax-s":  # §5 softmax, stable form: w = softmax(beta theta) q, grad_theta = g q
        # levels (-1, 1) under an odd elementwise base: proxopt keeps the zero-sum dual (-t, t) as t; the loop
        # steps both entries, and entry 0 stays entry 1 negated
        beta, theta = DEFAULT_STRENGTH[preset], torch.stack([-theta0, theta0], -1)
        for _ in range(STEPS):
            g = grad_at(ref_softmax_simplex(theta, beta) @ q, x, y)
            theta = opt.step(theta, g.unsqueeze(-1) * q)
            assert torch.equal(theta[..., 0], -theta[..., 1])
            beta *= ANNEAL
            out.append((ref_softmax_simplex(theta, beta) @ q, theta[..., 1]))
        return out
    if preset == "bop":  # §7: m <- (1 - gamma) m + gamma g; flip w where |m| > tau and sign(m) = sign(w)
        w, m = ref_sign(theta0), torch.zeros_like(theta0)
        for _ in range(STEPS):
            m = (1.0 - BOP_GAMMA) * m + BOP_GAMMA * grad_at(w, x, y)
            flip = (m.abs() > BOP_TAU) & (ref_sign(m) == w)
            w = torch.where(flip, -w, w)
            out.append((w, None))
        return out
    pytest.fail(f"no hand-written THEORY.md loop for preset {preset!r}: add its formula to test_parity.py")


def proxopt_trajectory(preset: str, base: type, base_kwargs: Dict[str, Any]
                       ) -> Tuple[Tensor, Tensor, List[Tuple[Tensor, Optional[Tensor]]]]:
    """(theta_0, the model's weights at construction, [(weights, latent) after each step])."""
    x, y, w0 = regression()
    w = nn.Parameter(w0.clone())
    extra = {"mu": PQ_LAMBDA} if preset == "pq" else {}
    opt = proxopt.optimizer(preset, [w], base=base, **extra, **base_kwargs)
    theta0 = opt.state[w]["latent"].clone() if "latent" in opt.state[w] else w0.clone()
    w_init = w.detach().clone()
    anneal = proxopt.AnnealScheduler(opt, factor=ANNEAL) if opt.anneal_key else None
    out: List[Tuple[Tensor, Optional[Tensor]]] = []
    for _ in range(STEPS):
        opt.zero_grad()
        (((x @ w.T - y) ** 2).sum() / (2 * x.shape[0])).backward()
        opt.step()
        if anneal is not None:
            anneal.step()
        lat = opt.state[w].get("latent")
        out.append((w.detach().clone(), None if lat is None else lat.clone()))
    return theta0, w_init, out


@pytest.mark.parametrize("base_name,base,base_kwargs", PARITY_BASES, ids=[b[0] for b in PARITY_BASES])
@pytest.mark.parametrize("preset", proxopt.available())
def test_preset_matches_its_formula(preset: str, base_name: str, base: type, base_kwargs: Dict[str, Any]) -> None:
    assert preset in PAIRS or preset in SPECIAL, f"no hand-written THEORY.md loop for preset {preset!r}"
    theta0, w_init, got = proxopt_trajectory(preset, base, base_kwargs)
    x, y, w0 = regression()
    if preset not in ("md-softmax", "md-softmax-s"):
        assert torch.equal(theta0, w0)  # theta_0 is a copy of the parameter
    want = hand_trajectory(preset, base, base_kwargs, theta0)
    assert len(got) == len(want) == STEPS
    for t, ((w_got, th_got), (w_want, th_want)) in enumerate(zip(got, want)):
        torch.testing.assert_close(w_got, w_want, rtol=1e-10, atol=1e-12, msg=lambda m: f"step {t}, weights: {m}")
        if th_want is not None:
            assert th_got is not None
            torch.testing.assert_close(th_got, th_want, rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"step {t}, latent: {m}")
    last_w, last_theta = got[-1]
    assert not torch.equal(last_w, w_init) if last_theta is None else not torch.equal(last_theta, theta0)


# --------------------------------------------------------------------------------------------
# 3. direct-class configurations == the loop of optim_db's reference formulas
# --------------------------------------------------------------------------------------------
DIRECT = [c for c in CONFIGS if c.preset is None and c.latent]


def reencode(group: Dict[str, Any], theta: Tensor) -> Tensor:
    """Primal form (§5): ``theta = P_beta^{-1}(P_beta(theta))`` recomputed from the kept primal point."""
    cfg, beta = group["mirror_map"], group["beta"]
    if cfg["name"] == "softmax":
        u = ref_softmax_simplex(theta, beta)  # the dual of u with largest entry 0: log(u_j / max_k u_k) / beta
        return torch.log((u / u.amax(-1, keepdim=True)).clamp_min(torch.finfo(theta.dtype).tiny)) / beta
    if cfg["name"] == "tanh":
        below_one = 1.0 - torch.finfo(theta.dtype).eps / 2.0
        return torch.atanh(torch.tanh(beta * theta).clamp(-below_one, below_one)) / beta
    pytest.fail(f"no primal form written for mirror map {cfg['name']!r}")


@pytest.mark.parametrize("cfg", DIRECT, ids=[c.name for c in DIRECT])
def test_direct_config_matches_reference_loop(cfg: OptimConfig) -> None:
    x, y, w0 = regression()
    w = nn.Parameter(w0.clone())
    opt = cfg.make([w])
    group = opt.param_groups[0]
    primal = not group.get("stable", True)
    theta = opt.state[w]["latent"].clone()
    if primal:  # the primal form starts from the dual of its initial primal point
        torch.testing.assert_close(theta, reencode(dict(group), theta), rtol=1e-10, atol=1e-12)
    hand = hand_base(cfg.base, dict(cfg.base_kwargs))
    ref_group = dict(group)
    for t in range(STEPS):
        opt.zero_grad()
        (((x @ w.T - y) ** 2).sum() / (2 * x.shape[0])).backward()
        opt.step()
        g = grad_at(ref_forward(ref_group, theta), x, y)
        theta = hand.step(theta, ref_backward(ref_group, theta, g))
        if primal:  # the dual of the kept primal point, recomputed after every step
            theta = reencode(ref_group, theta)
        torch.testing.assert_close(opt.state[w]["latent"], theta, rtol=1e-10, atol=1e-12,
                                   msg=lambda m: f"step {t}, latent: {m}")
        torch.testing.assert_close(w.detach(), ref_forward(ref_group, theta), rtol=1e-10, atol=1e-12,
                                   msg=lambda m: f"step {t}, weights: {m}")
