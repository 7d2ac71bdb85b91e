"""Bad input: every proxopt optimizer raises ``ValueError`` / ``TypeError`` naming the argument and the value,
and a call that raises changes nothing (parameters, latents, optimizer and base-optimizer state).

Runs over ``optim_db.CONFIGS`` (every preset with SGD and Adam bases, and the
direct-class configurations): invalid ``lr``, ``mu`` / ``beta``, ``levels``,
preset names, parameter dtypes, sparse and non-finite gradients, and state
dicts saved by another configuration (other preset, base optimizer,
quantizer, group layout, latent shape).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Dict, List, Optional

import pytest
import torch
from torch import nn

import proxopt
from optim_db import ADAM_BASE, CONFIGS, assert_same, SGD_BASE, OptimConfig, TinyNet, config_ids, tiny_loss

all_configs = pytest.mark.parametrize("cfg", CONFIGS, ids=config_ids(CONFIGS))
ANNEALED = [c for c in CONFIGS if c.anneal_key]
annealed_configs = pytest.mark.parametrize("cfg", ANNEALED, ids=config_ids(ANNEALED))

#: (value, expected exception) for a hyper-parameter that must be a finite positive real.
BAD_POSITIVE = [(0.0, ValueError), (-1.0, ValueError), (math.nan, ValueError), (math.inf, ValueError),
                (True, TypeError), ("abc", TypeError)]
#: The same for ``lr``; ``lr = 0`` is valid (as in torch.optim: schedulers may reach it).
BAD_LR = [v for v in BAD_POSITIVE if not (isinstance(v[0], float) and v[0] == 0.0)]
BAD_IDS = ["zero", "negative", "nan", "inf", "bool", "string"]
LR_IDS = [i for i in BAD_IDS if i != "zero"]


# ------------------------------------------------------------------------------------ helpers
def trained(cfg: OptimConfig, groups: Any = None, model: Optional[TinyNet] = None, steps: int = 2) -> Any:
    """A model and its optimizer after a few steps (so latents and base state are non-trivial)."""
    model = model or TinyNet()
    opt = cfg.make(model.parameters() if groups is None else groups(model))
    for t in range(steps):
        opt.zero_grad()
        tiny_loss(model, t).backward()
        opt.step()
    return model, opt


def snapshot(model: nn.Module, opt: Any) -> Dict[str, Any]:
    """Everything a failing call must leave as it was (deep copies)."""
    return {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
            "groups": [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups],
            "n_base_groups": len(opt.base_optimizer.param_groups)}


def value_text(v: Any) -> str:
    """How the value must appear in the message."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return repr(v)
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return str(v).rstrip("0").rstrip(".") if isinstance(v, float) else str(v)


def assert_names(exc: pytest.ExceptionInfo, names: List[str], value: Any) -> None:
    msg = str(exc.value)
    assert any(n in msg for n in names), f"message does not name {names}: {msg!r}"
    assert value_text(value) in msg, f"message does not show the value {value!r}: {msg!r}"


def other_base(cfg: OptimConfig) -> OptimConfig:
    base, kwargs = ADAM_BASE if cfg.base is torch.optim.SGD else SGD_BASE
    return dataclasses.replace(cfg, name=cfg.name + "-other-base", base=base, base_kwargs=kwargs)


def other_preset(cfg: OptimConfig) -> OptimConfig:
    """The next configuration of the list with the same base class but another method."""
    i = CONFIGS.index(cfg)
    for other in CONFIGS[i + 1:] + CONFIGS[:i]:
        if other.base is cfg.base and (other.preset, dict(other.own)) != (cfg.preset, dict(cfg.own)):
            return other
    raise AssertionError("no other configuration with the same base")


# -------------------------------------------------------------------- hyper-parameter values
@pytest.mark.parametrize("value,exc", BAD_LR, ids=LR_IDS)
@all_configs
def test_invalid_lr(cfg: OptimConfig, value: Any, exc: type) -> None:
    names = ["lr", "learning rate"]
    p = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    before = p.detach().clone()
    with pytest.raises(exc) as info:
        cfg.make([p], lr=value)
    assert_names(info, names, value)
    with pytest.raises(exc) as info:
        cfg.make([{"params": [p], "lr": value}])
    assert_names(info, names, value)
    assert torch.equal(p, before)
    model, opt = trained(cfg)
    snap = snapshot(model, opt)
    q = nn.Parameter(torch.randn(3, dtype=torch.float64))
    q_before = q.detach().clone()
    with pytest.raises(exc) as info:
        opt.add_param_group({"params": [q], "lr": value})
    assert_names(info, names, value)
    assert_same(snapshot(model, opt), snap)
    assert torch.equal(q, q_before)


@pytest.mark.parametrize("value,exc", BAD_POSITIVE, ids=BAD_IDS)
@annealed_configs
def test_invalid_strength(cfg: OptimConfig, value: Any, exc: type) -> None:
    """``mu`` / ``beta``: rejected in the constructor, in a group, in ``add_param_group`` and at ``step``."""
    key = cfg.anneal_key
    if cfg.preset == "pq" and value == 0.0:
        pytest.skip("ProxQuant's mu is lambda >= 0 (0 = no regularization), documented as non-negative")
    names = [key, "reg"] if cfg.preset == "pq" else [key]
    p = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    before = p.detach().clone()
    with pytest.raises(exc) as info:
        cfg.make([p], **{key: value})
    assert_names(info, names, value)
    with pytest.raises(exc) as info:
        cfg.make([{"params": [p], key: value}])
    assert_names(info, names, value)
    assert torch.equal(p, before)
    model, opt = trained(cfg)
    snap = snapshot(model, opt)
    q = nn.Parameter(torch.randn(3, dtype=torch.float64))
    with pytest.raises(exc) as info:
        opt.add_param_group({"params": [q], key: value})
    assert_names(info, names, value)
    assert_same(snapshot(model, opt), snap)
    # set on a live group: the next step raises and changes nothing
    good = opt.param_groups[0][key]
    opt.zero_grad()
    tiny_loss(model, 5).backward()
    snap = snapshot(model, opt)
    opt.param_groups[0][key] = value
    with pytest.raises(exc) as info:
        opt.step()
    assert_names(info, names, value)
    opt.param_groups[0][key] = good
    snap_after = snapshot(model, opt)
    assert_same(snap_after, snap)


BAD_LEVELS = [([1.0, 1.0], ValueError, "duplicate"), ([-1.0, 0.0, 0.0, 1.0], ValueError, "duplicate-3"),
              ([1.0], ValueError, "one-level"), ([0.0, math.inf], ValueError, "inf"),
              ([-1.0, math.nan], ValueError, "nan"), ("quaternary", ValueError, "bad-name"),
              (True, TypeError, "bool")]


def accepts_levels(cfg: OptimConfig) -> bool:
    """Whether the configuration takes a ``levels=`` argument (probed with ternary levels)."""
    try:
        cfg.make([nn.Parameter(torch.zeros(2, dtype=torch.float64))], levels="ternary")
    except (TypeError, ValueError):
        return False
    return True


LEVELLED = [c for c in CONFIGS if accepts_levels(c)]


@pytest.mark.parametrize("levels,exc,label", BAD_LEVELS, ids=[b[2] for b in BAD_LEVELS])
@pytest.mark.parametrize("cfg", LEVELLED, ids=config_ids(LEVELLED))
def test_invalid_levels(cfg: OptimConfig, levels: Any, exc: type, label: str) -> None:
    p = nn.Parameter(torch.randn(4, dtype=torch.float64))
    before = p.detach().clone()
    with pytest.raises(exc) as info:
        cfg.make([p], levels=levels)
    msg = str(info.value)
    assert "levels" in msg
    shown = "quaternary" if isinstance(levels, str) else ("True" if levels is True else str(levels[0]))
    assert shown in msg, msg
    assert torch.equal(p, before)


@pytest.mark.parametrize("levels,exc,label", BAD_LEVELS, ids=[b[2] for b in BAD_LEVELS])
def test_invalid_levels_direct_classes(levels: Any, exc: type, label: str) -> None:
    p = nn.Parameter(torch.randn(4, dtype=torch.float64))
    for make in (lambda: proxopt.ProxConnect([p], levels=levels),
                 lambda: proxopt.ProxConnectPP([p], forward={"name": "sign", "levels": levels}),
                 lambda: proxopt.MirrorDescent([p], mirror_map={"name": "softmax", "levels": levels}),
                 lambda: proxopt.ProxQuant([p], levels=levels)):
        with pytest.raises(exc, match="levels"):
            make()
    assert bool(torch.isfinite(p).all())


def test_unknown_preset_lists_valid_names() -> None:
    p = nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError) as info:
        proxopt.optimizer("bnn+++", [p])
    msg = str(info.value)
    assert "bnn+++" in msg and "name" in msg
    for name in proxopt.available():
        assert name in msg
    with pytest.raises(TypeError) as info:
        proxopt.optimizer(3, [p])  # type: ignore[arg-type]
    assert "3" in str(info.value)


# ------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64, torch.complex128])
@all_configs
def test_non_floating_and_complex_params(cfg: OptimConfig, dtype: torch.dtype) -> None:
    t = torch.zeros(3, dtype=dtype)
    bad = nn.Parameter(t) if dtype.is_complex else t
    with pytest.raises(TypeError) as info:
        cfg.make([bad])
    assert str(dtype) in str(info.value)
    model, opt = trained(cfg)
    snap = snapshot(model, opt)
    with pytest.raises(TypeError) as info:
        opt.add_param_group({"params": [bad]})
    assert str(dtype) in str(info.value)
    assert_same(snapshot(model, opt), snap)


@all_configs
def test_sparse_gradient_raises_and_changes_nothing(cfg: OptimConfig) -> None:
    model, opt = trained(cfg)
    opt.zero_grad()
    tiny_loss(model, 3).backward()
    model.b1.grad = model.b1.grad.to_sparse()
    snap = snapshot(model, opt)
    with pytest.raises(ValueError, match="sparse") as info:
        opt.step()
    assert "parameter" in str(info.value)
    assert_same(snapshot(model, opt), snap)


@all_configs
def test_nonfinite_gradient_raises_and_changes_nothing(cfg: OptimConfig) -> None:
    model, opt = trained(cfg)
    opt.zero_grad()
    tiny_loss(model, 3).backward()
    model.w2.grad[0, 0] = math.nan
    snap = snapshot(model, opt)
    with pytest.raises(ValueError):
        opt.step()
    assert_same(snapshot(model, opt), snap)


# ------------------------------------------------------------------------------ state dicts
def assert_load_rejected(target: Any, model: nn.Module, state_dict: Dict[str, Any]) -> None:
    snap = snapshot(model, target)
    with pytest.raises(ValueError, match="state_dict"):
        target.load_state_dict(state_dict)
    assert_same(snapshot(model, target), snap)


@all_configs
def test_state_dict_of_another_preset(cfg: OptimConfig) -> None:
    other = other_preset(cfg)
    _, source = trained(other)
    model, opt = trained(cfg)
    assert_load_rejected(opt, model, copy.deepcopy(source.state_dict()))


@all_configs
def test_state_dict_of_another_base_optimizer(cfg: OptimConfig) -> None:
    _, source = trained(other_base(cfg))
    model, opt = trained(cfg)
    assert_load_rejected(opt, model, copy.deepcopy(source.state_dict()))


@all_configs
def test_state_dict_of_another_quantizer(cfg: OptimConfig) -> None:
    if not cfg.alt_group:
        pytest.skip("this optimizer has no quantizer to change")
    _, source = trained(cfg, groups=lambda m: [dict({"params": list(m.parameters())}, **cfg.alt_group)])
    model, opt = trained(cfg)
    assert_load_rejected(opt, model, copy.deepcopy(source.state_dict()))


@all_configs
def test_state_dict_of_another_group_layout(cfg: OptimConfig) -> None:
    model, opt = trained(cfg, groups=lambda m: [{"params": [m.w1, m.b1]}, {"params": [m.w2, m.b2]}])
    # one group instead of two
    _, one = trained(cfg)
    assert_load_rejected(opt, model, copy.deepcopy(one.state_dict()))
    # two groups, split elsewhere
    _, split = trained(cfg, groups=lambda m: [{"params": [m.w1]}, {"params": [m.b1, m.w2, m.b2]}])
    assert_load_rejected(opt, model, copy.deepcopy(split.state_dict()))
    # the same split, but the second group not quantized
    _, unq = trained(cfg, groups=lambda m: [{"params": [m.w1, m.b1]}, {"params": [m.w2, m.b2], "quantize": False}])
    assert_load_rejected(opt, model, copy.deepcopy(unq.state_dict()))


class WiderNet(TinyNet):
    """:class:`TinyNet` with a 5-unit hidden layer: same parameter layout, other shapes."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w1 = nn.Parameter(torch.randn(5, 6, generator=g, dtype=torch.float64))
        self.b1 = nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.randn(2, 5, generator=g, dtype=torch.float64))


@all_configs
def test_state_dict_of_another_latent_shape(cfg: OptimConfig) -> None:
    _, source = trained(cfg, model=WiderNet())
    model, opt = trained(cfg)
    assert_load_rejected(opt, model, copy.deepcopy(source.state_dict()))


@annealed_configs
def test_state_dict_with_invalid_strength(cfg: OptimConfig) -> None:
    model, opt = trained(cfg)
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0][cfg.anneal_key] = -1.0
    snap = snapshot(model, opt)
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(sd)
    assert cfg.anneal_key in str(info.value) or "reg" in str(info.value)
    assert_same(snapshot(model, opt), snap)


@all_configs
def test_state_dict_with_nonfinite_latent(cfg: OptimConfig) -> None:
    if not cfg.latent:
        pytest.skip("no latent")
    model, opt = trained(cfg)
    sd = copy.deepcopy(opt.state_dict())
    lat = sd["state"][0]["latent"]  # (the softmax dual is a level-major, non-contiguous view)
    lat[(0,) * lat.dim()] = math.nan
    assert_load_rejected(opt, model, sd)


@all_configs
def test_state_dict_that_is_not_one(cfg: OptimConfig) -> None:
    model, opt = trained(cfg)
    plain = torch.optim.SGD(model.parameters(), lr=0.1)
    for sd in ({}, {"state": {}}, copy.deepcopy(plain.state_dict()), copy.deepcopy(model.state_dict())):
        assert_load_rejected(opt, model, sd)
