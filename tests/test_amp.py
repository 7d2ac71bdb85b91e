"""Mixed precision and non-finite gradients.

* Low-precision parameters (bf16, fp16) keep **fp32 latents** — at
  construction, during training and after a state-dict round trip (torch's
  ``Optimizer.load_state_dict`` casts floating state to the parameter's dtype;
  the latent must not be rounded to bf16 on the way).
* ``torch.amp.GradScaler("cpu")``: a step whose scaled gradients overflow is
  skipped and leaves parameters, latents and the base optimizer's state
  untouched; finite steps are the same as without the scaler (the scale is a
  power of two, so scaling and unscaling are exact).
* ``torch.autocast("cpu", dtype=torch.bfloat16)`` training works.
* Without a scaler a non-finite gradient never reaches the latents:
  ``nonfinite="raise"`` (default) raises ``ValueError`` naming the parameter
  and its group, ``nonfinite="skip"`` warns (``RuntimeWarning``) and skips the
  whole step; in both cases nothing changes.

References:
    THEORY.md §2 (latents in the optimizer state); [PC++] Lu et al.,
    NeurIPS 2023.
"""
from __future__ import annotations

import io
import math
from typing import Any, Dict, List, Tuple

import pytest
import torch

import proxopt
from optim_db import assert_same

PRESETS = proxopt.available()
LOW = (torch.bfloat16, torch.float16)


def make_opt(name: str, params: Any, **kw: Any) -> torch.optim.Optimizer:
    kw.setdefault("lr", 0.05)
    return proxopt.optimizer(name, params, **kw)


def mlp(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(dtype)


def groups(model: torch.nn.Module) -> List[Dict[str, Any]]:
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n.endswith("weight")]},
            {"params": [p for n, p in named if n.endswith("bias")], "quantize": False}]


def teacher_data(n: int = 64, seed: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Targets from a random binary-weight teacher, so a binary network can fit them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    w1 = torch.randint(0, 2, (6, 16), generator=g).float() * 2 - 1
    w2 = torch.randint(0, 2, (16, 1), generator=g).float() * 2 - 1
    return x, torch.tanh(x @ w1) @ w2


def has_latents(opt: Any) -> bool:
    return any("latent" in st for st in opt.state.values())


def snapshot(model: torch.nn.Module, opt: Any) -> Dict[str, Any]:
    """Deep copy of everything a step may change: parameters, the optimizer state (latents, base state)."""
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def train_step(model: torch.nn.Module, opt: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x.to(next(model.parameters()).dtype)).float(), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


# ---------------------------------------------------------- fp32 latents
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("name", PRESETS)
def test_low_precision_params_keep_fp32_latents(name: str, dtype: torch.dtype) -> None:
    model = mlp(dtype)
    opt = make_opt(name, groups(model))
    x, y = teacher_data(16)
    for _ in range(2):
        train_step(model, opt, x, y)
    for p in model.parameters():
        assert p.dtype == dtype
        st = opt.state[p]
        if "latent" in st:
            assert st["latent"].dtype == torch.float32
    if has_latents(opt):
        base = opt.base_optimizer
        for g in base.param_groups:
            for t in g["params"]:
                for k, v in base.state[t].items():
                    if isinstance(v, torch.Tensor) and v.is_floating_point() and k != "step":
                        assert v.dtype == t.dtype, (k, v.dtype, t.dtype)  # base state follows the fp32 latent


@pytest.mark.parametrize("name", ["bc", "bnn++", "md-tanh", "md-softmax-s", "pc"])
def test_bf16_state_dict_round_trip_keeps_fp32_latents_bitwise(name: str) -> None:
    """Save after 3 steps, load (weights_only) into a fresh bf16 model + optimizer: latents stay fp32 and exact."""
    x, y = teacher_data(16)
    model = mlp(torch.bfloat16)
    opt = make_opt(name, groups(model))
    for _ in range(3):
        train_step(model, opt, x, y)
    # latents that are not representable in bf16: the round trip must not round them
    lat = [opt.state[p]["latent"] for p in model.parameters() if "latent" in opt.state[p]]
    assert any(not torch.equal(t, t.to(torch.bfloat16).float()) for t in lat)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)

    model2 = mlp(torch.bfloat16, seed=5)
    opt2 = make_opt(name, groups(model2))
    model2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["opt"])
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
        if "latent" in opt.state[p]:
            a, b = opt.state[p]["latent"], opt2.state[q]["latent"]
            assert b.dtype == torch.float32 and torch.equal(a, b)
    # and training continues identically
    for _ in range(2):
        train_step(model, opt, x, y)
        train_step(model2, opt2, x, y)
    assert_same(snapshot(model, opt)["opt"]["state"], snapshot(model2, opt2)["opt"]["state"])
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_bf16_binary_weights_are_exact_levels() -> None:
    """The model holds F(theta) in bf16: sign levels are exactly +-1 (representable), latents fp32."""
    model = mlp(torch.bfloat16)
    opt = make_opt("bc", groups(model))
    x, y = teacher_data(16)
    train_step(model, opt, x, y)
    w = model[0].weight
    assert w.dtype == torch.bfloat16 and bool(w.abs().eq(1).all())
    assert torch.equal(w.float(), torch.where(opt.state[w]["latent"] >= 0, 1.0, -1.0))


# ------------------------------------------------------------ GradScaler
def _scaler() -> Any:
    return torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)


def _scaled_step(model: torch.nn.Module, opt: Any, scaler: Any, x: torch.Tensor, y: torch.Tensor,
                 poison: bool = False) -> None:
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    loss = torch.nn.functional.mse_loss(out.float(), y)
    if poison:
        loss = loss * float("inf")
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize("name", PRESETS)
def test_grad_scaler_skips_overflowing_step_and_changes_nothing(name: str) -> None:
    x, y = teacher_data(16)
    model = mlp()
    opt = make_opt(name, groups(model))  # default nonfinite="raise": the scaler must keep inf away from it
    scaler = _scaler()
    _scaled_step(model, opt, scaler, x, y)
    before = snapshot(model, opt)
    scale = scaler.get_scale()
    _scaled_step(model, opt, scaler, x, y, poison=True)
    assert scaler.get_scale() < scale  # overflow detected, scale backed off
    assert_same(before, snapshot(model, opt))
    _scaled_step(model, opt, scaler, x, y)  # training resumes
    after = snapshot(model, opt)
    assert any(not torch.equal(a, b) for a, b in zip(before["model"].values(), after["model"].values())) or \
        not all(torch.equal(a, b) for a, b in zip(_tensors(before["opt"]), _tensors(after["opt"])))


def _tensors(obj: Any) -> List[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


@pytest.mark.parametrize("name", ["bnn++", "md-tanh-s", "pq"])
def test_grad_scaler_finite_steps_equal_unscaled_steps(name: str) -> None:
    """The scale is a power of two: scaled-then-unscaled gradients are the plain ones, bit for bit."""
    x, y = teacher_data(16)
    runs = []
    for use_scaler in (False, True):
        model = mlp()
        opt = make_opt(name, groups(model))
        scaler = _scaler()
        for _ in range(3):
            if use_scaler:
                _scaled_step(model, opt, scaler, x, y)
            else:
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = model(x)
                torch.nn.functional.mse_loss(out.float(), y).backward()
                opt.step()
        runs.append(snapshot(model, opt))
    assert_same(runs[0], runs[1])


@pytest.mark.parametrize("name", ["bc", "bnn++", "md-tanh-s"])
def test_autocast_bf16_training_decreases_the_loss(name: str) -> None:
    x, y = teacher_data(64)
    model = mlp()
    opt = make_opt(name, groups(model), lr=0.01)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            assert out.dtype == torch.bfloat16  # autocast really ran the matmuls in bf16
        loss = torch.nn.functional.mse_loss(out.float(), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0], losses
    for p in model.parameters():
        st = opt.state[p]
        if "latent" in st:
            assert st["latent"].dtype == torch.float32 and bool(torch.isfinite(st["latent"]).all())


def test_bf16_parameters_train() -> None:
    """A bf16 model (no autocast) with fp32 latents: the memory-saving setup."""
    x, y = teacher_data(64)
    model = mlp(torch.bfloat16)
    opt = make_opt("md-tanh-s", groups(model), lr=0.01)
    losses = [train_step(model, opt, x, y) for _ in range(40)]
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0], losses


# ------------------------------------------------- non-finite gradients
def _poisoned(name: str, value: float, **kw: Any) -> Tuple[torch.nn.Module, Any, Dict[str, Any]]:
    """A model after one finite step (so the base state exists), with one gradient entry set to ``value``.

    The poisoned entry is in parameter 1 of group 1 (the second bias; group 1
    holds the biases).
    """
    x, y = teacher_data(16)
    model = mlp()
    opt = make_opt(name, groups(model), **kw)
    train_step(model, opt, x, y)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    model[2].bias.grad[0] = value
    return model, opt, snapshot(model, opt)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", PRESETS)
def test_nonfinite_gradient_raises_by_default_and_changes_nothing(name: str, value: float) -> None:
    model, opt, before = _poisoned(name, value)
    with pytest.raises(ValueError, match=r"parameter 1 of group 1"):
        opt.step()
    assert_same(before, snapshot(model, opt))


@pytest.mark.parametrize("name", PRESETS)
def test_nonfinite_gradient_in_a_quantized_weight_raises(name: str) -> None:
    x, y = teacher_data(16)
    model = mlp()
    opt = make_opt(name, groups(model))
    train_step(model, opt, x, y)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    model[0].weight.grad[3, 2] = float("nan")
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=r"parameter 0 of group 0"):
        opt.step()
    assert_same(before, snapshot(model, opt))


@pytest.mark.parametrize("name", PRESETS)
def test_nonfinite_skip_warns_skips_the_whole_step_then_recovers(name: str) -> None:
    model, opt, before = _poisoned(name, float("nan"), nonfinite="skip")
    with pytest.warns(RuntimeWarning, match=r"parameter 1 of group 1"):
        opt.step()
    assert_same(before, snapshot(model, opt))  # the finite gradients of group 0 were not applied either
    x, y = teacher_data(16)
    train_step(model, opt, x, y)  # a later finite step trains
    after = snapshot(model, opt)
    assert not all(torch.equal(a, b) for a, b in zip(_tensors(before), _tensors(after)))
    for t in _tensors(after):
        if t.is_floating_point():
            assert bool(torch.isfinite(t).all())


def test_nonfinite_per_group_policy() -> None:
    """A NaN only in a ``skip`` group skips the step; one in a ``raise`` group raises."""
    x, y = teacher_data(16)
    model = mlp()
    g = groups(model)
    g[0]["nonfinite"] = "skip"
    opt = make_opt("bnn++", g)
    assert [grp["nonfinite"] for grp in opt.param_groups] == ["skip", "raise"]
    train_step(model, opt, x, y)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    model[0].weight.grad[0, 0] = float("inf")
    before = snapshot(model, opt)
    with pytest.warns(RuntimeWarning):
        opt.step()
    assert_same(before, snapshot(model, opt))
    model[2].bias.grad[0] = float("nan")
    with pytest.raises(ValueError, match=r"group 1"):
        opt.step()
    assert_same(before, snapshot(model, opt))


@pytest.mark.parametrize("bad", ["ignore", None, True, "RAISE"])
def test_nonfinite_option_is_validated(bad: Any) -> None:
    with pytest.raises(ValueError, match="nonfinite"):
        make_opt("bc", mlp().parameters(), nonfinite=bad)
    with pytest.raises(ValueError, match="nonfinite"):
        make_opt("bc", [{"params": mlp().parameters(), "nonfinite": bad}])


def test_nonfinite_grad_with_closure_changes_nothing() -> None:
    x, y = teacher_data(16)
    model = mlp()
    opt = make_opt("md-tanh-s", groups(model))
    train_step(model, opt, x, y)
    before = snapshot(model, opt)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y) * float("inf")
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="non-finite"):
        opt.step(closure)
    assert_same(before["opt"], snapshot(model, opt)["opt"])
    assert_same(before["model"], snapshot(model, opt)["model"])
