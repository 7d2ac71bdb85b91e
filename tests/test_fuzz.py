"""Hypothesis drives every preset with random tensors, groups and hyper-parameters.

Random: the preset and its level set (binary, ternary, k-bit, custom lists),
the base optimizer (Adam, AdamW, SGD with and without momentum), 1–4
parameters of random shapes — including 0-d, empty and non-contiguous
tensors — in float32, float64 or bfloat16, split into one or two param groups
(one maybe ``quantize=False``) with their own ``lr`` and strength, the scale
mode, gradients over six orders of magnitude (some missing), and strength
jumps between steps (as an annealing schedule makes them).

Invariants (THEORY.md §2, §5, §6):

* no exception, except the documented ``ValueError`` for a scale on the
  softmax dual (checked to be raised exactly then);
* Bop (latent-free) is fuzzed over its threshold and EMA rate instead of a
  strength;
* latents are finite, fp32 for bf16 parameters and the parameter's dtype
  otherwise, and keep their shape (plus the dual dimension for softmax);
* parameters keep their identity, dtype, shape and strides, and are finite;
* after ``finalize()`` every quantized weight lies in its level set (times
  the scale ``alpha = mean |theta|`` when one is used), in the parameter's
  dtype; full-precision groups are untouched by finalize.

References:
    THEORY.md §2–§6; [PC++] Lu et al., NeurIPS 2023; [MD] Ajanthan et al.,
    AISTATS 2021; [PQ] Bai et al., ICLR 2019.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import proxopt
from proxopt.levels import make_levels

#: preset -> the level specifications it accepts (None: fixed binary, no ``levels`` argument).
LEVELS: Dict[str, Optional[List[Any]]] = {
    "bc": ["binary", "ternary", 2, [-0.5, 0.25, 2.0]],
    "pc": ["binary", "ternary", 2, [-1.0, -0.2, 0.7]],
    "bnn": None,
    "bnn+": None,
    "bnn++": None,
    "pq": ["binary", "ternary", 3, [-2.0, 0.0, 0.5]],
    "md-tanh": ["binary"],
    "md-tanh-s": ["binary", "ternary"],
    "md-softmax": ["binary", "ternary", 2],
    "md-softmax-s": ["binary", "ternary", 2, [-1.0, 0.1, 0.3]],
    "md-linear": None,
    "gd-tanh": None,
    "bop": None,
}
FUZZED = [n for n in LEVELS if n in proxopt.available()]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
BASES = [(torch.optim.Adam, {}), (torch.optim.AdamW, {"weight_decay": 0.01}), (torch.optim.SGD, {}),
         (torch.optim.SGD, {"momentum": 0.9, "nesterov": True})]

shapes = st.one_of(
    st.just(()),                                               # 0-d
    st.sampled_from([(0,), (3, 0), (0, 2, 2)]),                # empty
    st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
)


@st.composite
def tensors(draw: Any) -> torch.nn.Parameter:
    """A parameter of random shape and dtype; 2-d+ ones are sometimes non-contiguous views."""
    shape = draw(shapes)
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2 ** 16))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1e-3, 0.5, 3.0]))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed" and len(shape) >= 2:
        data = (torch.randn(shape[::-1], generator=g) * scale).to(dtype).transpose(0, -1)
    elif layout == "strided" and len(shape) >= 1:
        big = (torch.randn((shape[0] * 2,) + shape[1:], generator=g) * scale).to(dtype)
        data = big[::2]
    else:
        data = (torch.randn(shape, generator=g) * scale).to(dtype)
    if draw(st.booleans()) and data.numel():
        data[(0,) * data.dim()] = 0.0  # an exact zero: the sign tie rule
    return torch.nn.Parameter(data)


@st.composite
def problems(draw: Any) -> Dict[str, Any]:
    name = draw(st.sampled_from(FUZZED))
    opts = LEVELS[name]
    kw: Dict[str, Any] = {}
    levels = (-1.0, 1.0)
    if opts is not None:
        spec = draw(st.sampled_from(opts))
        kw["levels"] = spec
        levels = make_levels(spec)
    base, base_kw = draw(st.sampled_from(BASES))
    kw.update(base_kw)
    kw["base"] = base
    kw["lr"] = draw(st.sampled_from([1e-4, 1e-2, 0.3, 1.0]))
    probe = proxopt.optimizer(name, [torch.nn.Parameter(torch.zeros(1))], **dict(kw))
    key = probe.anneal_key
    latent = "latent" in probe.state[next(iter(probe.state))] if probe.state else False
    if key is not None:
        kw[key] = draw(st.sampled_from([0.1, 1.0, 7.0, 100.0] if name != "pq" else [0.0, 1e-4, 0.1]))
    if name == "bop":  # latent-free: a flip threshold and the gradient EMA rate instead of a strength
        kw["threshold"] = draw(st.sampled_from([0.0, 1e-8, 1e-3]))
        kw["gamma"] = draw(st.sampled_from([1e-4, 0.1, 1.0]))
    scale = None
    if latent and draw(st.booleans()):
        scale = draw(st.sampled_from(["tensor", "channel"]))
        kw["scale"] = scale
    params = draw(st.lists(tensors(), min_size=1, max_size=4))
    split = draw(st.integers(0, len(params)))
    groups: List[Dict[str, Any]] = [{"params": params[:split]}, {"params": params[split:]}]
    groups = [g for g in groups if g["params"]]
    if len(groups) == 2:
        second = groups[1]
        if draw(st.booleans()):
            second["quantize"] = False
        if draw(st.booleans()):
            second["lr"] = draw(st.sampled_from([1e-3, 0.5]))
        if draw(st.booleans()) and key is not None and name != "pq":
            second[key] = draw(st.sampled_from([0.5, 30.0]))
    steps = draw(st.integers(1, 3))
    grads = [[draw(st.sampled_from([None, 1e-3, 1.0, 1e3])) for _ in params] for _ in range(steps)]
    jumps = [draw(st.sampled_from([1.0, 1.0, 10.0])) if key is not None else 1.0 for _ in range(steps)]
    return dict(name=name, kw=kw, levels=levels, key=key, latent=latent, scale=scale, groups=groups,
                params=params, grads=grads, jumps=jumps, seed=draw(st.integers(0, 1000)))


def _softmax_scale(pr: Dict[str, Any]) -> bool:
    return pr["scale"] is not None and pr["name"].startswith("md-softmax")


def _alpha(theta: torch.Tensor, mode: str) -> torch.Tensor:
    """The reference scale ``mean |theta|`` per tensor or per output channel (THEORY.md §1)."""
    t = theta.double()
    if t.numel() == 0:
        return torch.ones(())
    if mode == "channel" and t.dim() >= 2:
        return t.reshape(t.shape[0], -1).abs().mean(1).view((-1,) + (1,) * (t.dim() - 1))
    return t.abs().mean()


def check_in_levels(p: torch.Tensor, levels: Tuple[float, ...], alpha: Optional[torch.Tensor]) -> None:
    vals = p.detach()
    if alpha is None:
        allowed = torch.tensor(levels, dtype=torch.float64).to(p.dtype)
        assert bool(torch.isin(vals, allowed).all()), (vals, levels)
        return
    q = torch.tensor(levels, dtype=torch.float64)
    v = vals.double()
    a = alpha.expand_as(v) if v.dim() else alpha
    ratio = torch.where(a > 0, v / torch.where(a > 0, a, torch.ones_like(a)), torch.zeros_like(v))
    dist = (ratio.unsqueeze(-1) - q).abs().min(-1).values
    # alpha is a mean of n |theta| values, summed in another order than here: rounding up to about n ulp
    n = v.numel() // max(1, alpha.numel())
    tol = torch.finfo(p.dtype).eps * (4 * max(1.0, max(abs(x) for x in levels)) + n)
    assert bool(((dist <= tol) | (a == 0)).all()), (vals, alpha, levels)
    assert bool(((a > 0) | (v == 0)).all()), (vals, alpha)  # alpha = 0 (all-zero latent): the set alpha*Q is {0}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pr=problems())
def test_random_problems_keep_the_invariants(pr: Dict[str, Any]) -> None:
    params: List[torch.nn.Parameter] = pr["params"]
    meta = [(p.dtype, p.shape, p.stride()) for p in params]
    if _softmax_scale(pr):
        with pytest.raises(ValueError, match="scale"):
            proxopt.optimizer(pr["name"], pr["groups"], **pr["kw"])
        return
    opt = proxopt.optimizer(pr["name"], pr["groups"], **pr["kw"])
    ids = [id(p) for p in params]
    g = torch.Generator().manual_seed(pr["seed"])
    for grads, jump in zip(pr["grads"], pr["jumps"]):
        for p, mag in zip(params, grads):
            p.grad = None if mag is None else (torch.randn(p.shape, generator=g) * mag).to(p.dtype)
        if jump != 1.0:
            for group in opt.param_groups:
                if group.get("quantize", True):
                    group[pr["key"]] = group[pr["key"]] * jump
        opt.step()
    assert [id(p) for grp in opt.param_groups for p in grp["params"]] == ids
    quantized = {id(p) for grp in opt.param_groups if grp.get("quantize", True) for p in grp["params"]}
    for p, (dtype, shape, stride) in zip(params, meta):
        assert (p.dtype, p.shape, p.stride()) == (dtype, shape, stride)
        assert bool(torch.isfinite(p).all())
        if pr["latent"] and id(p) in quantized:
            theta = opt.state[p]["latent"]
            assert theta.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
            assert theta.shape[: p.dim()] == p.shape and theta.dim() in (p.dim(), p.dim() + 1)
            assert bool(torch.isfinite(theta).all())
    before = {id(p): p.detach().clone() for p in params if id(p) not in quantized}
    opt.finalize()
    for p in params:
        if id(p) not in quantized:
            assert torch.equal(p.detach(), before[id(p)])  # finalize leaves full-precision groups alone
            continue
        alpha = None
        if pr["scale"] is not None:
            theta = opt.state[p]["latent"]
            alpha = _alpha(theta, pr["scale"])
        check_in_levels(p, pr["levels"], alpha)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(FUZZED),
       bad=st.sampled_from([("lr", -0.1), ("strength", 0.0), ("strength", float("nan")), ("strength", -3.0),
                            ("strength", float("inf"))]))
def test_invalid_hyperparameters_raise_value_error(name: str, bad: Tuple[str, float]) -> None:
    """Invalid values raise ``ValueError`` at construction.

    The strength is ``mu``/``beta`` (Bop: its flip ``threshold``); ProxQuant's
    and Bop's may be 0, only negative or non-finite values are invalid.
    """
    key, value = bad
    probe = proxopt.optimizer(name, [torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    kw: Dict[str, Any] = {"lr": 0.1}
    kw[(probe.anneal_key or "threshold") if key == "strength" else key] = value
    if name in ("pq", "bop") and key == "strength" and value == 0.0:
        proxopt.optimizer(name, [torch.nn.Parameter(torch.zeros(2))], **kw)
        return
    with pytest.raises(ValueError):
        proxopt.optimizer(name, [torch.nn.Parameter(torch.zeros(2))], **kw)
