"""The generic optimizer matrix: every configuration of ``optim_db.CONFIGS`` through the same checks.

Each test takes one :class:`optim_db.OptimConfig` (every preset with SGD and
Adam bases, plus the direct-class configurations) and checks a property every
proxopt optimizer must have (THEORY.md §2, DESIGN.md "Decisions that need
care"): the loss goes down on a problem whose optimum is representable,
finalized weights lie in the level set (``sign(0) = +1``), parameters without
a gradient are left alone, state dicts resume bitwise, deep copies, param
groups, LR schedulers, both float dtypes, the invariant "the model holds
``F(theta)``", ``hard()``, ``add_param_group`` and closures.
"""
from __future__ import annotations

import copy
import io
from typing import Any, Dict, List, Tuple

import pytest
import torch
from torch import Tensor, nn

import proxopt
from optim_db import (CONFIGS, assert_same, LATENT_CONFIGS, OptimConfig, TinyNet, config_ids, ref_dual, ref_forward,
                      ref_hard, ref_nearest, tiny_loss)

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]

all_configs = pytest.mark.parametrize("cfg", CONFIGS, ids=config_ids(CONFIGS))
latent_configs = pytest.mark.parametrize("cfg", LATENT_CONFIGS, ids=config_ids(LATENT_CONFIGS))
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)


# ------------------------------------------------------------------------------------ helpers
def loss_of(model: TinyNet, t: int) -> Tensor:
    return tiny_loss(model, t)


def train_step(model: TinyNet, opt: torch.optim.Optimizer, t: int) -> None:
    opt.zero_grad(set_to_none=True)
    loss_of(model, t).backward()
    opt.step()


def latent_of(opt: Any, cfg: OptimConfig, p: Tensor) -> Tensor:
    """The tensor the base optimizer updates for ``p``: its latent, or ``p`` itself (ProxQuant)."""
    return opt.state[p]["latent"] if cfg.latent else p


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> Dict[str, Any]:
    """Deep copy of everything that must not change: the model's tensors and the optimizer's state dict."""
    return {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict())}


def _equal(a: Any, b: Any) -> bool:
    try:
        assert_same(a, b)
    except AssertionError:
        return False
    return True


def in_levels(t: Tensor, levels: Tuple[float, ...]) -> bool:
    return bool(torch.isin(t, torch.tensor(levels, dtype=t.dtype)).all())


def tol(dtype: torch.dtype) -> Dict[str, float]:
    return {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-6, "atol": 1e-6}


def assert_model_holds_forward(opt: Any, what: str) -> None:
    """Every quantized parameter equals ``F_v(theta)`` (reference formula) for its latent and strength."""
    for gi, group in enumerate(opt.param_groups):
        if not group["quantize"]:
            continue
        for pi, p in enumerate(group["params"]):
            theta = opt.state[p]["latent"]
            expected = ref_forward(group, ref_dual(group, p, theta)).to(p.dtype)
            torch.testing.assert_close(p.detach(), expected, **tol(p.dtype),
                                       msg=lambda m: f"{what}: group {gi} param {pi}: {m}")


def default_strength(cfg: OptimConfig) -> float:
    probe = cfg.make([nn.Parameter(torch.zeros(2, dtype=torch.float64))])
    return float(probe.param_groups[0][cfg.anneal_key])


def per_param_state(opt: Any, p: Tensor) -> Dict[str, Any]:
    return copy.deepcopy(dict(opt.state[p])) if p in opt.state else {}


# -------------------------------------------------------------------------------------- tests
@dtypes
@all_configs
def test_loss_goes_down_to_a_representable_optimum(cfg: OptimConfig, dtype: torch.dtype) -> None:
    """Teacher-student regression ``y = X W*``, ``W*`` in the level set: soft and hard losses fall."""
    steps = 120
    g = torch.Generator().manual_seed(0)
    lv = torch.tensor(cfg.levels, dtype=dtype)
    w_star = lv[torch.randint(len(lv), (2, 8), generator=g)]
    x = torch.randn(64, 8, generator=g, dtype=dtype)
    y = x @ w_star.T
    w = nn.Parameter(0.3 * torch.randn(2, 8, generator=g, dtype=dtype))
    opt = cfg.make([w])
    anneal = proxopt.AnnealScheduler(opt, total_steps=steps) if cfg.soft else None

    def loss() -> Tensor:
        return ((x @ w.T - y) ** 2).mean()

    with torch.no_grad():
        start = loss().item()
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
        if anneal is not None:
            anneal.step()
    with torch.no_grad():
        trained = loss().item()
    opt.finalize()
    with torch.no_grad():
        hard = loss().item()
    assert in_levels(w.detach(), cfg.levels)
    assert trained < 0.5 * start, (start, trained)
    assert hard < 0.5 * start, (start, hard)
    assert (w.detach() == w_star).double().mean().item() >= 0.75


@dtypes
@all_configs
def test_finalize_writes_levels_with_sign_zero_plus_one(cfg: OptimConfig, dtype: torch.dtype) -> None:
    model = TinyNet(dtype)
    opt = cfg.make(model.parameters())
    opt.finalize()
    zero = ref_nearest(torch.zeros(1, dtype=dtype), cfg.levels).item()  # +1 for binary levels
    assert model.w1[0, 0].item() == zero and model.w1[0, 1].item() == zero
    for p in model.parameters():
        assert p.dtype == dtype
        assert in_levels(p.detach(), cfg.levels)
        if len(cfg.levels) == 2:
            assert bool((p != 0).all())
    for t in range(3):
        train_step(model, opt, t)
    opt.finalize()
    for group in opt.param_groups:
        for p in group["params"]:
            assert in_levels(p.detach(), cfg.levels)
            if cfg.latent:
                assert_same(p.detach(), ref_hard(group, ref_dual(group, p, opt.state[p]["latent"])).to(dtype))


@all_configs
def test_params_without_grad_are_untouched(cfg: OptimConfig) -> None:
    model = TinyNet()
    opt = cfg.make(model.parameters())
    frozen = [model.w2, model.b2]
    before = [(p.detach().clone(), per_param_state(opt, p)) for p in frozen]
    moving_before = per_param_state(opt, model.w1), latent_of(opt, cfg, model.w1).detach().clone()
    for t in range(3):
        opt.zero_grad(set_to_none=True)
        loss_of(model, t).backward()
        for p in frozen:
            p.grad = None
        opt.step()
    for p, (val, st) in zip(frozen, before):
        assert_same(p.detach(), val)
        assert_same(per_param_state(opt, p), st)  # latent and any per-parameter state unchanged
        key = latent_of(opt, cfg, p)
        assert key not in opt.base_optimizer.state or not opt.base_optimizer.state[key]
    # the parameter with a gradient did move: its state or its base state changed
    key = latent_of(opt, cfg, model.w1)
    assert (not torch.equal(key, moving_before[1]) or bool(opt.base_optimizer.state.get(key))
            or not _equal(per_param_state(opt, model.w1), moving_before[0]))


@dtypes
@all_configs
def test_state_dict_resume_is_bitwise(cfg: OptimConfig, dtype: torch.dtype) -> None:
    """Save model + optimizer + LR scheduler + AnnealScheduler, load (weights_only) and continue in lockstep."""

    def build(seed: int) -> Tuple[TinyNet, Any, Any, Any]:
        model = TinyNet(dtype, seed)
        opt = cfg.make(model.parameters())
        lr = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        anneal = proxopt.AnnealScheduler(opt, factor=1.5, every=2) if cfg.anneal_key else None
        return model, opt, lr, anneal

    def advance(run: Tuple[TinyNet, Any, Any, Any], t: int) -> None:
        model, opt, lr, anneal = run
        train_step(model, opt, t)
        lr.step()
        if anneal is not None:
            anneal.step()

    def everything(run: Tuple[TinyNet, Any, Any, Any]) -> Dict[str, Any]:
        model, opt, lr, anneal = run
        return dict(snapshot(model, opt), lr=lr.state_dict(),
                    anneal=None if anneal is None else copy.deepcopy(anneal.state_dict()),
                    latents=[latent_of(opt, cfg, p).detach().clone() for p in model.parameters()])

    a = build(0)
    for t in range(3):
        advance(a, t)
    buf = io.BytesIO()
    torch.save({"model": a[0].state_dict(), "opt": a[1].state_dict(), "lr": a[2].state_dict(),
                "anneal": None if a[3] is None else a[3].state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    b = build(1)
    b[0].load_state_dict(ck["model"])
    b[1].load_state_dict(ck["opt"])
    b[2].load_state_dict(ck["lr"])
    if b[3] is not None:
        b[3].load_state_dict(ck["anneal"])
    assert_same(everything(a), everything(b), "after load")
    for t in range(3, 7):
        advance(a, t)
        advance(b, t)
        assert_same(everything(a), everything(b), f"step {t}")


@all_configs
def test_deepcopy(cfg: OptimConfig) -> None:
    model = TinyNet()
    opt = cfg.make(model.parameters())
    for t in range(2):
        train_step(model, opt, t)
    model2, opt2 = copy.deepcopy((model, opt))
    for t in range(2, 5):
        train_step(model, opt, t)
        train_step(model2, opt2, t)
        assert_same(snapshot(model, opt), snapshot(model2, opt2), f"step {t}")
    # a copy of the optimizer alone is independent of the original model
    before = snapshot(model, opt)
    opt3 = copy.deepcopy(opt)
    params3 = [p for g in opt3.param_groups for p in g["params"]]
    assert not any(p3 is p for p3 in params3 for p in model.parameters())
    lat3 = [latent_of(opt3, cfg, p).detach().clone() for p in params3]
    for p in params3:
        p.grad = torch.ones_like(p)
    opt3.step()
    assert_same(before, snapshot(model, opt))
    assert any(not torch.equal(latent_of(opt3, cfg, p), l0) for p, l0 in zip(params3, lat3))


@all_configs
def test_param_groups(cfg: OptimConfig) -> None:
    """Per-group lr / strength / quantizer, and a ``quantize=False`` group that is the plain base optimizer."""
    key = cfg.anneal_key
    strength = {key: 2.0 * default_strength(cfg)} if key else {}
    lr1 = 0.5 * cfg.lr
    model = TinyNet()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = cfg.make([{"params": [model.w1]},
                    dict({"params": [model.w2], "lr": lr1}, **strength, **cfg.alt_group),
                    {"params": [model.b1, model.b2], "quantize": False}])
    # the same settings, one group each, on clones of the initial values
    c = {n: nn.Parameter(v.clone()) for n, v in init.items()}
    alone0 = cfg.make([c["w1"]])
    alone1 = cfg.make([dict({"params": [c["w2"]], "lr": lr1}, **strength, **cfg.alt_group)])
    plain = cfg.make_base([c["b1"], c["b2"]])
    assert opt.param_groups[1]["lr"] == lr1
    assert all(opt.param_groups[1][k] == v for k, v in strength.items())
    assert "latent" not in opt.state[model.b1] and "latent" not in opt.state[model.b2]
    for t in range(4):
        train_step(model, opt, t)
        for n, p in model.named_parameters():
            c[n].grad = p.grad.clone()
        for o in (alone0, alone1, plain):
            o.step()
        for n, p in model.named_parameters():
            assert_same(p.detach(), c[n].detach(), f"step {t}: {n}")
        assert_same(latent_of(opt, cfg, model.w1), latent_of(alone0, cfg, c["w1"]))
        assert_same(latent_of(opt, cfg, model.w2), latent_of(alone1, cfg, c["w2"]))
        assert_same(per_param_state(opt, model.w2), per_param_state(alone1, c["w2"]))
    assert [g["lr"] for g in opt.base_optimizer.param_groups] == [cfg.lr, lr1, cfg.lr]
    assert all(opt.param_groups[1][k] == v for k, v in strength.items())
    biases = [model.b1.detach().clone(), model.b2.detach().clone()]
    opt.finalize()
    assert in_levels(model.w1.detach(), cfg.levels)
    assert in_levels(model.w2.detach(), cfg.alt_levels)
    assert_same([model.b1.detach(), model.b2.detach()], biases)


def _recording(base: type, log: List[List[Dict[str, Any]]]) -> type:
    """A subclass of ``base`` that logs the hyper-parameters its groups hold when it steps."""

    def step(self: Any, closure: Any = None) -> Any:
        log.append([{k: g[k] for k in ("lr", "momentum", "betas") if k in g} for g in self.param_groups])
        return base.step(self, closure)

    return type(f"Recording{base.__name__}", (base,), {"step": step})


@pytest.mark.parametrize("kind", ["StepLR", "OneCycleLR"])
@all_configs
def test_lr_scheduler_drives_the_base_optimizer(cfg: OptimConfig, kind: str) -> None:
    log: List[List[Dict[str, Any]]] = []
    model = TinyNet()
    opt = cfg.make(model.parameters(), base=_recording(cfg.base, log))
    if kind == "StepLR":
        sched: Any = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    else:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=8)
    for t in range(6):
        expected = [{k: g[k] for k in ("lr", "momentum", "betas") if k in g} for g in opt.param_groups]
        train_step(model, opt, t)
        assert log[-1] == expected, f"step {t}"
        sched.step()
    assert len({entry[0]["lr"] for entry in log}) > 1


@all_configs
def test_lr_scheduled_to_zero_stops_the_update(cfg: OptimConfig) -> None:
    """With ``StepLR(gamma=0)`` the base optimizer sees ``lr = 0`` from step 2 on: nothing it drives moves.

    That is every parameter, except the quantized ones of an optimizer whose
    quantized update does not use ``lr`` (``cfg.lr_free``: Bop's flips).
    """
    model = TinyNet()
    opt = cfg.make([{"params": [model.w1, model.w2]}, {"params": [model.b1, model.b2], "quantize": False}])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.0)
    for t in range(2):
        train_step(model, opt, t)
        sched.step()
    frozen = [p.detach().clone() for p in model.parameters()]
    for t in range(2, 5):
        train_step(model, opt, t)
    for (name, p), v in zip(model.named_parameters(), frozen):
        if cfg.lr_free and name.startswith("w"):
            continue
        torch.testing.assert_close(p.detach(), v, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")


@dtypes
@latent_configs
def test_model_holds_forward_of_latent(cfg: OptimConfig, dtype: torch.dtype) -> None:
    """The invariant ``p = F_v(theta)``: at construction, after each step, after ``AnnealScheduler.step``
    and after ``load_state_dict``."""
    model = TinyNet(dtype)
    opt = cfg.make(model.parameters())
    anneal = proxopt.AnnealScheduler(opt, factor=2.0)
    assert_model_holds_forward(opt, "construction")
    for p in model.parameters():
        assert opt.state[p]["latent"].dtype == dtype
    saved = None
    for t in range(3):
        train_step(model, opt, t)
        assert_model_holds_forward(opt, f"step {t}")
        anneal.step()
        assert_model_holds_forward(opt, f"anneal {t}")
        if t == 0:
            saved = copy.deepcopy(opt.state_dict())
    for p in model.parameters():
        assert p.dtype == dtype and opt.state[p]["latent"].dtype == dtype
    opt.load_state_dict(saved)
    assert_model_holds_forward(opt, "load_state_dict")
    fresh_model = TinyNet(dtype, seed=3)
    fresh = cfg.make(fresh_model.parameters())
    fresh.load_state_dict(saved)
    assert_model_holds_forward(fresh, "load_state_dict into a fresh optimizer")
    assert_same([p.detach() for p in fresh_model.parameters()], [p.detach() for p in model.parameters()])


@all_configs
def test_hard_restores_weights_bitwise(cfg: OptimConfig) -> None:
    model = TinyNet()
    opt = cfg.make([{"params": [model.w1, model.w2]}, {"params": [model.b1, model.b2], "quantize": False}])
    for t in range(2):
        train_step(model, opt, t)
    before = snapshot(model, opt)
    with opt.hard():
        for p in (model.w1, model.w2):
            assert in_levels(p.detach(), cfg.levels)
            if cfg.latent:
                group = opt.param_groups[0]
                assert_same(p.detach(), ref_hard(group, ref_dual(group, p, opt.state[p]["latent"])))
        assert_same(model.b1.detach(), before["model"]["b1"])
        assert_same(model.b2.detach(), before["model"]["b2"])
    assert_same(before, snapshot(model, opt))
    with pytest.raises(RuntimeError, match="inside hard"):
        with opt.hard():
            raise RuntimeError("inside hard")
    assert_same(before, snapshot(model, opt))


@all_configs
def test_add_param_group_after_construction(cfg: OptimConfig) -> None:
    model_a, model_b = TinyNet(), TinyNet()
    opt_a = cfg.make([model_a.w1, model_a.b1])
    opt_a.add_param_group({"params": [model_a.w2, model_a.b2]})
    opt_b = cfg.make([{"params": [model_b.w1, model_b.b1]}, {"params": [model_b.w2, model_b.b2]}])
    assert len(opt_a.base_optimizer.param_groups) == 2
    assert_same(snapshot(model_a, opt_a), snapshot(model_b, opt_b), "after add_param_group")
    if cfg.latent:
        assert_model_holds_forward(opt_a, "after add_param_group")
    for t in range(3):
        train_step(model_a, opt_a, t)
        train_step(model_b, opt_b, t)
        assert_same(snapshot(model_a, opt_a), snapshot(model_b, opt_b), f"step {t}")


@all_configs
def test_step_with_closure(cfg: OptimConfig) -> None:
    model_a, model_b = TinyNet(), TinyNet()
    opt_a, opt_b = cfg.make(model_a.parameters()), cfg.make(model_b.parameters())
    for t in range(3):
        seen: List[float] = []

        def closure() -> Tensor:
            opt_a.zero_grad(set_to_none=True)
            loss = loss_of(model_a, t)
            loss.backward()
            seen.append(loss.item())
            return loss

        returned = opt_a.step(closure)
        assert len(seen) == 1 and isinstance(returned, Tensor) and returned.item() == seen[0]
        train_step(model_b, opt_b, t)
        assert_same(snapshot(model_a, opt_a), snapshot(model_b, opt_b), f"step {t}")
