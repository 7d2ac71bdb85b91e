"""The stable softmax form with two levels (-a, a): its zero-sum dual (-t, t) kept as t (THEORY.md §5).

Under a base optimizer whose update is elementwise and odd, the two-entry
dual started at ``(-t_0, t_0)`` stays of that form bit for bit, so proxopt
keeps ``t`` alone (:class:`proxopt.optim.transforms.CenteredSoftmaxPair`).
These tests run the two-entry dual by hand with the same torch base
optimizer on the same gradients and compare every step, check which
configurations keep the full dual, and check the map's centered functions
against the full ones.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Tuple, Type
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import proxopt
from proxopt import mirror_maps as mm
from proxopt import native
from proxopt.optim.mirror_descent import ODD_BASES
from proxopt.optim.transforms import CenteredSoftmaxPair, MirrorPair

ODD_CASES: List[Tuple[Type[torch.optim.Optimizer], Dict[str, Any]]] = [
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.1, "maximize": True}),
    (torch.optim.Adam, {"lr": 0.05, "weight_decay": 0.1, "amsgrad": True}),
    (torch.optim.Adam, {"lr": 0.05, "foreach": False}),
    (torch.optim.AdamW, {"lr": 0.05, "weight_decay": 0.1}),
    (torch.optim.NAdam, {"lr": 0.05, "weight_decay": 0.1}),
    (torch.optim.RAdam, {"lr": 0.05, "weight_decay": 0.1}),
    (torch.optim.Adamax, {"lr": 0.05, "weight_decay": 0.1}),
    (torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.5, "centered": True, "weight_decay": 0.1}),
    (torch.optim.Adagrad, {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.1}),
    (torch.optim.Adadelta, {"lr": 1.0, "weight_decay": 0.1}),
    (torch.optim.Rprop, {"lr": 0.01}),
]


def _problem(dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 5, generator=g, dtype=dtype)
    w_star = torch.randn(3, 5, generator=g, dtype=dtype).sign()
    w0 = 0.5 * torch.randn(3, 5, generator=g, dtype=dtype)
    w0[0, 0], w0[0, 1] = 0.0, -0.0
    return x, x @ w_star.T, w0


def _grad(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return (x @ w.T - y).T @ x / x.shape[0]


@pytest.mark.parametrize("levels", [(-1.0, 1.0), (-0.5, 0.5)], ids=["pm1", "pm0.5"])
@pytest.mark.parametrize("base,kw", ODD_CASES, ids=[f"{b.__name__}-{i}" for i, (b, _) in enumerate(ODD_CASES)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_kept_half_is_the_two_entry_dual_bit_for_bit(base: Type[torch.optim.Optimizer], kw: Dict[str, Any],
                                                     levels: Tuple[float, float], dtype: torch.dtype) -> None:
    """The same torch base optimizer on the two-entry dual ``(-t, t)`` and ``g q``: entry 0 stays entry 1
    negated, entry 1 is proxopt's latent bit for bit, and the model holds ``q . softmax(beta theta)``."""
    x, y, w0 = _problem(dtype)
    w = nn.Parameter(w0.clone())
    beta = 1.5
    opt = proxopt.MirrorDescent([w], mirror_map={"name": "softmax", "levels": list(levels)}, beta=beta,
                                base=base, **kw)
    t = opt.state[w]["latent"]
    start = t.clone()
    assert isinstance(opt._transform(opt.param_groups[0]).inner, CenteredSoftmaxPair)
    assert t.shape == w.shape
    theta = nn.Parameter(torch.stack([-t, t], -1).detach().clone())
    hand_kw = dict(kw)
    if opt.param_groups[0].get("fused"):  # proxopt runs Adam/AdamW fused when the user picks no implementation
        hand_kw["fused"] = True
    hand = base([theta], **hand_kw)
    q = torch.tensor(levels, dtype=dtype)
    tol = {"rtol": 0.0, "atol": 8 * torch.finfo(dtype).eps}
    # torch's fused kernels round an element in a vector body and in the scalar tail differently, and the two
    # tensors put an element at different positions: there, the same iterates up to rounding
    same = torch.equal if not hand_kw.get("fused") else (
        lambda a, b: bool(torch.allclose(a, b, rtol=0.0, atol=64 * torch.finfo(dtype).eps)))
    for step in range(8):
        torch.testing.assert_close(w.detach(), mm.Softmax(levels).to_primal(theta.detach(), beta), **tol)
        g = _grad(w.detach(), x, y)
        w.grad = g.clone()
        theta.grad = g.unsqueeze(-1) * q
        opt.step()
        hand.step()
        assert same(theta[..., 0], -theta[..., 1]), f"step {step}: the two entries are no longer (-t, t)"
        assert same(opt.state[w]["latent"], theta[..., 1].detach()), f"step {step}: latent"
    assert not torch.equal(opt.state[w]["latent"], start)


class HandSGD(torch.optim.Optimizer):
    """Plain SGD written out (not a torch optimizer subclass: proxopt cannot know it is odd)."""

    def __init__(self, params: Any, lr: float = 0.1) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])


@pytest.mark.parametrize("name,kw,centered", [
    ("md-softmax-s", {}, True),
    ("md-softmax-s", {"base": torch.optim.SGD}, True),
    ("md-softmax-s", {"levels": (-0.25, 0.25)}, True),
    ("md-softmax-s", {"levels": (-1.0, 0.5)}, False),   # not (-a, a): the pull-back is not odd
    ("md-softmax-s", {"levels": (0.0, 1.0)}, False),
    ("md-softmax-s", {"levels": "ternary"}, False),
    ("md-softmax-s", {"base": HandSGD}, False),         # an optimizer proxopt does not know
    ("md-softmax-s", {"weight_decay": 0.1}, True),       # odd whatever the settings
    ("md-softmax", {}, True),                           # the primal form where the base ignores a shift
    ("md-softmax", {"base": torch.optim.SGD, "weight_decay": 0.1}, True),
    ("md-softmax", {"weight_decay": 0.1}, False),       # coupled decay: THEORY's log(u)/beta, two entries
    ("md-softmax", {"base": HandSGD}, False),
])
def test_which_groups_keep_the_half(name: str, kw: Dict[str, Any], centered: bool) -> None:
    w = nn.Parameter(torch.tensor([[0.3, -0.7, 0.0], [1.0, -1.0, 0.2]]))
    opt = proxopt.optimizer(name, [w], lr=0.1, **kw)
    latent = opt.state[w]["latent"]
    tr = opt._transform(opt.param_groups[0]).inner
    assert isinstance(tr, CenteredSoftmaxPair) is centered
    assert latent.shape == (w.shape if centered else w.shape + (len(tr.levels),))
    if not centered and name == "md-softmax-s":  # the full stable dual also starts from the zero-sum dual
        if latent.shape[-1] == 2:
            assert torch.equal(latent[..., 0], -latent[..., 1])
        else:
            torch.testing.assert_close(latent.sum(-1), torch.zeros(w.shape), atol=1e-6, rtol=0)
    w.grad = torch.ones_like(w)
    opt.step()
    assert opt.state[w]["latent"].shape == latent.shape
    with opt.hard():
        assert bool(torch.isin(w.detach(), torch.tensor(tr.levels)).all())


def test_odd_bases_are_the_elementwise_torch_optimizers() -> None:
    assert torch.optim.SGD in ODD_BASES and torch.optim.Adam in ODD_BASES and torch.optim.AdamW in ODD_BASES
    assert HandSGD not in ODD_BASES


def test_a_subclass_counts_as_its_torch_parent() -> None:
    class MyAdam(torch.optim.Adam):
        pass

    w = nn.Parameter(torch.randn(4, 3))
    opt = proxopt.optimizer("md-softmax-s", [w], base=MyAdam, lr=0.1)
    assert opt.state[w]["latent"].shape == w.shape


def test_the_half_and_the_full_dual_give_the_same_model() -> None:
    """The same run kept as ``t`` (Adam) and as the full dual (the same Adam hidden from proxopt): the weights
    agree to rounding at every step."""
    class Hidden(torch.optim.Optimizer):  # Adam, but not a subclass: proxopt keeps the two-entry dual
        def __init__(self, params: Any, lr: float = 1e-3) -> None:
            super().__init__(params, {"lr": lr})
            self.inner = torch.optim.Adam(self.param_groups, lr=lr, foreach=False)

        def step(self, closure: Any = None) -> None:
            self.inner.step()

    x, y, w0 = _problem(torch.float64)
    a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    half = proxopt.optimizer("md-softmax-s", [a], lr=0.05, foreach=False)
    full = proxopt.optimizer("md-softmax-s", [b], base=Hidden, lr=0.05)
    assert full.state[b]["latent"].shape == b.shape + (2,)
    assert torch.equal(full.state[b]["latent"][..., 1], half.state[a]["latent"])
    for _ in range(10):
        for p in (a, b):
            p.grad = _grad(p.detach(), x, y)
        half.step()
        full.step()
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-13)
        torch.testing.assert_close(full.state[b]["latent"][..., 1], half.state[a]["latent"], rtol=0, atol=1e-13)


def test_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = proxopt.optimizer("md-softmax-s", model.parameters(), lr=0.05)
    for _ in range(3):
        model.weight.grad, model.bias.grad = torch.randn(3, 4), torch.randn(3)
        opt.step()
    sd = copy.deepcopy(opt.state_dict())  # torch's state dicts share the live tensors
    clone = nn.Linear(4, 3)
    opt2 = proxopt.optimizer("md-softmax-s", clone.parameters(), lr=0.05)
    opt2.load_state_dict(sd)
    assert torch.equal(clone.weight, model.weight) and torch.equal(clone.bias, model.bias)
    for p, q in ((model.weight, clone.weight), (model.bias, clone.bias)):
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
    opt.step()
    opt2.step()
    assert torch.equal(clone.weight, model.weight)


# ----------------------------------------------------------------- the map's centered functions
finite = st.floats(-60.0, 60.0, allow_nan=False, width=32)
odd_values = [0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0, 50.0, -50.0, math.inf, -math.inf, math.nan]


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=70), st.floats(0.1, 8.0), st.sampled_from([1.0, 0.5, 3.0]),
       st.sampled_from([torch.float32, torch.float64]), st.booleans())
def test_centered_projection_is_the_full_one_bit_for_bit(xs: List[float], beta: float, a: float,
                                                         dtype: torch.dtype, torch_path: bool) -> None:
    m = mm.Softmax((-a, a))
    t = torch.tensor(xs + odd_values, dtype=dtype)
    full = torch.stack([-t, t], -1).movedim(-1, 0).contiguous().movedim(0, -1)  # level-major, as optimizers keep
    want = m.to_primal_into(full, beta, torch.empty_like(t))
    if torch_path:
        off = lambda *args: False  # noqa: E731
        with mock.patch.object(native, "sm2_project", off), mock.patch.object(native, "sm2_project_centered", off):
            got = m.centered_to_primal_into(t, beta, torch.empty_like(t))
            want = m.to_primal_into(full, beta, torch.empty_like(t))
    else:
        got = m.centered_to_primal_into(t, beta, torch.empty_like(t))
    assert torch.equal(got.isnan(), want.isnan())
    ok = ~got.isnan()
    assert torch.equal(got[ok], want[ok])
    ok &= t.isfinite()  # the reference softmax has inf - inf at infinite entries
    torch.testing.assert_close(got[ok], m.to_primal(full, beta)[ok], rtol=0, atol=8 * a * torch.finfo(dtype).eps)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(finite, st.sampled_from(odd_values)), min_size=1, max_size=40),
       st.sampled_from([1.0, 0.5]))
def test_centered_hard_is_the_argmax_level(xs: List[float], a: float) -> None:
    m = mm.Softmax((-a, a))
    t = torch.tensor(xs)
    assert torch.equal(m.centered_hard(t), m.hard(torch.stack([-t, t], -1)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(finite, finite, finite), min_size=1, max_size=20), st.floats(0.2, 5.0))
def test_center_keeps_the_point(rows: List[Tuple[float, float, float]], beta: float) -> None:
    two = torch.tensor([r[:2] for r in rows], dtype=torch.float64)
    m2 = mm.Softmax("binary")
    c2 = m2.center_(two.clone())
    assert torch.equal(c2[..., 0], -c2[..., 1])
    assert torch.equal(c2[..., 1] - c2[..., 0], two[..., 1] - two[..., 0])  # the difference, bit for bit
    three = torch.tensor(rows, dtype=torch.float64)
    m3 = mm.Softmax("ternary")
    c3 = m3.center_(three.clone())
    torch.testing.assert_close(c3.sum(-1), torch.zeros(len(rows), dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(m3.to_primal(c3, beta), m3.to_primal(three, beta), rtol=0, atol=1e-12)


def test_centered_pair_refuses_other_levels() -> None:
    assert mm.Softmax("binary").centered_pair and not mm.Softmax((0.0, 1.0)).centered_pair
    assert not mm.Softmax("ternary").centered_pair
    with pytest.raises(ValueError, match="mirror_map"):
        CenteredSoftmaxPair(mm.Softmax((0.0, 1.0)))


def test_native_centered_projection_equals_the_two_column_kernel() -> None:
    if not native.available():
        pytest.skip(native.status())
    t = torch.cat([torch.linspace(-50, 50, 100_003), torch.tensor(odd_values)])
    t0 = -t
    for beta, a in ((1.0, 1.0), (2.5, 0.5)):
        got, want = torch.empty_like(t), torch.empty_like(t)
        assert native.sm2_project_centered(t, got, beta, -a, 2 * a)
        assert native.sm2_project(t0, t, want, beta, -a, 2 * a)
        assert torch.equal(got.isnan(), want.isnan())
        ok = ~got.isnan()
        assert torch.equal(got[ok], want[ok])


def test_md_softmax_s_matches_md_tanh_s_from_the_same_start() -> None:
    """THEORY.md §5: binary softmax and tanh are the same algorithm up to initialisation: with levels (-1, 1)
    ``w = -1 + 2 sigma(2 beta t) = tanh(beta t)``, stepped on ``g``."""
    x, y, w0 = _problem(torch.float64)
    a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    sm = proxopt.optimizer("md-softmax-s", [a], lr=0.05, beta=1.3)
    th = proxopt.optimizer("md-tanh-s", [b], lr=0.05, beta=1.3)
    with torch.no_grad():
        th.state[b]["latent"].copy_(sm.state[a]["latent"])
    th._project_all()
    for _ in range(6):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-14)
        a.grad = _grad(a.detach(), x, y)
        b.grad = a.grad.clone()
        sm.step()
        th.step()
        assert torch.equal(sm.state[a]["latent"], th.state[b]["latent"])


def test_mirror_pair_of_the_same_map_is_unchanged() -> None:
    """The primal form and the Jacobian baseline of a binary softmax map keep the two-entry dual."""
    tr = MirrorPair(mm.Softmax("binary"), stable=False)
    assert tr.relayout and tr.grad_buffer


# ----------------------------------------------------------------- the primal form and the two forms
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("beta", [1.0, 3.0, 700.0])
def test_primal_reencoding_of_t_is_that_of_the_two_entry_dual(dtype: torch.dtype, beta: float) -> None:
    """The clip of t and the renormalisation of (-t, t) to largest entry 0 (floored) keep the same
    theta_1 - theta_0 and write the same w, bit for bit, the floor included; so do their rescalings."""
    m = mm.Softmax("binary")
    g = torch.Generator().manual_seed(1)
    t = torch.cat([torch.randn(4000, generator=g, dtype=dtype) * s for s in (0.01, 1.0, 30.0)]
                  + [torch.tensor([0.0, -0.0, 1e30, -1e30, math.inf, -math.inf], dtype=dtype)])
    half, full = CenteredSoftmaxPair(m, stable=False), MirrorPair(m, stable=False)
    theta = full.from_base(torch.stack([-t, t]).contiguous())
    a, b = t.clone(), theta.clone()
    wa, wb = torch.empty_like(t), torch.empty_like(t)
    if not half.reencode_project_into(a, beta, wa, None):
        half.reencode_(a, beta, beta)
        half.project_into(a, beta, wa, None)
    if not full.reencode_project_into(b, beta, wb, torch.empty_like(b)):
        full.reencode_(b, beta, beta, torch.empty_like(b))
        full.project_into(b, beta, wb, torch.empty_like(b))
    assert torch.equal(a + a, b[..., 1] - b[..., 0])
    assert torch.equal(wa, wb)
    assert bool((a.abs() < t.abs()).any())  # the floor acted (on 1e30 and the infinities at least)
    half.rescale_(a, beta, 2 * beta)
    full.rescale_(b, beta, 2 * beta)
    assert torch.equal(a + a, b[..., 1] - b[..., 0])


@pytest.mark.parametrize("base,kw,odd,even", [
    (torch.optim.Adam, {"lr": 0.05, "amsgrad": True}, ["exp_avg"], ["exp_avg_sq", "max_exp_avg_sq"]),
    (torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.5, "centered": True}, ["momentum_buffer", "grad_avg"],
     ["square_avg"]),
    (torch.optim.Rprop, {"lr": 0.01}, ["prev"], ["step_size"]),
])
def test_a_primal_group_moves_to_two_entries_when_it_needs_log_u(base: Type[torch.optim.Optimizer],
                                                                 kw: Dict[str, Any], odd: List[str],
                                                                 even: List[str]) -> None:
    """Coupled weight decay switched on mid-run: at the next step the group's t becomes (-t, t) and each base
    state tensor s becomes (-s, s) or (s, s), then the step re-encodes to log(u)/beta as THEORY writes it."""
    x, y, w0 = _problem(torch.float64)
    w = nn.Parameter(w0.clone())
    opt = proxopt.MirrorDescent([w], mirror_map="softmax", stable=False, base=base, **kw)
    for _ in range(3):
        w.grad = _grad(w.detach(), x, y)
        opt.step()
    t = opt.state[w]["latent"].clone()
    state = {k: v.clone() for k, v in opt.base_optimizer.state[opt.base_optimizer.param_groups[0]["params"][0]].items()
             if isinstance(v, Tensor)}
    assert t.shape == w.shape
    opt.param_groups[0]["weight_decay"] = 0.1
    w_before = w.detach().clone()
    opt._prepare_step()  # what the next step does first
    theta = opt.state[w]["latent"]
    assert theta.shape == w.shape + (2,) and torch.equal(theta[..., 0], -t) and torch.equal(theta[..., 1], t)
    bt = opt.base_optimizer.param_groups[0]["params"][0]
    assert bt.is_contiguous() and theta._base is bt
    new = opt.base_optimizer.state[bt]
    for k in odd:
        assert torch.equal(new[k], torch.stack([-state[k], state[k]]))
    for k in even:
        assert torch.equal(new[k], torch.stack([state[k], state[k]]))
    assert torch.equal(w.detach(), w_before)
    w.grad = _grad(w.detach(), x, y)
    opt.step()
    assert opt._transform(opt.param_groups[0]).encodes_before_step
    opt.param_groups[0]["weight_decay"] = 0.0  # the two entries stay (their states are no longer (-s, s))
    opt.step()
    assert opt.state[w]["latent"].shape == w.shape + (2,)


def test_a_base_state_of_unknown_parity_is_refused_with_nothing_changed() -> None:
    w = nn.Parameter(torch.randn(3, 4))
    opt = proxopt.MirrorDescent([w], mirror_map="softmax", stable=False, lr=0.05)
    w.grad = torch.randn(3, 4)
    opt.step()
    bt = opt.base_optimizer.param_groups[0]["params"][0]
    opt.base_optimizer.state[bt]["mystery"] = torch.ones(3, 4)
    t = opt.state[w]["latent"].clone()
    opt.param_groups[0]["weight_decay"] = 0.1
    with pytest.raises(ValueError, match="mystery"):
        opt.step()
    assert torch.equal(opt.state[w]["latent"], t) and opt.base_optimizer.param_groups[0]["params"][0] is bt


def _primal_run(weight_decay_at: int, steps: int = 6) -> Tuple[Any, nn.Parameter]:
    x, y, w0 = _problem(torch.float64)
    w = nn.Parameter(w0.clone())
    opt = proxopt.optimizer("md-softmax", [w], lr=0.05)
    for k in range(steps):
        if k == weight_decay_at:
            opt.param_groups[0]["weight_decay"] = 0.1
        w.grad = _grad(w.detach(), x, y)
        opt.step()
    return opt, w


def test_a_state_dict_in_the_other_form_loads_and_resumes_bit_for_bit() -> None:
    """Saved with two entries (after coupled decay), loaded into a new optimizer kept as t: it takes the two
    entries, and both continue alike; and back: a t checkpoint into the two-entry optimizer."""
    src, w = _primal_run(weight_decay_at=2)
    assert src.state[w]["latent"].shape == w.shape + (2,)
    sd = copy.deepcopy(src.state_dict())
    w2 = nn.Parameter(torch.zeros_like(w))
    dst = proxopt.optimizer("md-softmax", [w2], lr=0.05)
    assert dst.state[w2]["latent"].shape == w2.shape
    dst.load_state_dict(sd)
    assert dst.state[w2]["latent"].shape == w2.shape + (2,) and torch.equal(w2, w)
    x, y, _ = _problem(torch.float64)
    for _ in range(3):
        w.grad = _grad(w.detach(), x, y)
        w2.grad = w.grad.clone()
        src.step()
        dst.step()
        assert torch.equal(w2, w) and torch.equal(dst.state[w2]["latent"], src.state[w]["latent"])
    early, w3 = _primal_run(weight_decay_at=99, steps=3)
    assert early.state[w3]["latent"].shape == w3.shape
    dst.load_state_dict(copy.deepcopy(early.state_dict()))
    assert dst.state[w2]["latent"].shape == w2.shape and torch.equal(w2, w3)
    w3.grad = _grad(w3.detach(), x, y)
    w2.grad = w3.grad.clone()
    early.step()
    dst.step()
    assert torch.equal(w2, w3)


def test_a_failed_load_in_the_other_form_restores_the_form() -> None:
    src, w = _primal_run(weight_decay_at=2)
    bad = copy.deepcopy(src.state_dict())
    for entry in bad["base"]["state"].values():
        entry["exp_avg"] = entry["exp_avg"][..., :1]  # a base state of the wrong shape
    w2 = nn.Parameter(torch.zeros_like(w))
    dst = proxopt.optimizer("md-softmax", [w2], lr=0.05)
    w2.grad = torch.ones_like(w2)
    dst.step()
    lat = dst.state[w2]["latent"]
    bt = dst.base_optimizer.param_groups[0]["params"][0]
    entry = dst.base_optimizer.state[bt]
    before = (lat.clone(), {k: v.clone() for k, v in entry.items()}, w2.detach().clone())
    with pytest.raises(ValueError, match="exp_avg"):
        dst.load_state_dict(bad)
    assert dst.state[w2]["latent"] is lat and dst.base_optimizer.param_groups[0]["params"][0] is bt
    assert dst.base_optimizer.state[bt] is entry
    assert torch.equal(lat, before[0]) and torch.equal(w2.detach(), before[2])
    assert all(torch.equal(entry[k], v) for k, v in before[1].items())


def _to_two_entries(opt: Any) -> None:
    """Move every group kept as t to the two-entry dual (what a step does when it needs log(u)/beta)."""
    for gi, group in enumerate(opt.param_groups):
        opt._commit_form(gi, group, opt._plan_form(gi, group, centered=False))


def test_a_0d_parameter_moves_with_its_state() -> None:
    w = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
    v = nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))
    opt = proxopt.optimizer("md-softmax", [w, v], lr=0.1, foreach=False)
    for _ in range(2):
        w.grad, v.grad = torch.tensor(0.5, dtype=torch.float64), torch.tensor([0.5, -0.1], dtype=torch.float64)
        opt.step()
    bt = opt.base_optimizer.param_groups[0]["params"][0]
    m, step = opt.base_optimizer.state[bt]["exp_avg"].clone(), opt.base_optimizer.state[bt]["step"].clone()
    opt.param_groups[0]["weight_decay"] = 0.01
    w.grad, v.grad = torch.tensor(0.5, dtype=torch.float64), torch.tensor([0.5, -0.1], dtype=torch.float64)
    opt._prepare_step()
    bt = opt.base_optimizer.param_groups[0]["params"][0]
    entry = opt.base_optimizer.state[bt]
    assert bt.shape == (2,) and entry["exp_avg"].shape == (2,) and entry["exp_avg_sq"].shape == (2,)
    assert torch.equal(entry["exp_avg"], torch.stack([-m, m])) and torch.equal(entry["step"], step)
    for _ in range(2):
        opt.step()
    assert opt.state[w]["latent"].shape == (2,)


def test_a_failing_group_plan_changes_no_group() -> None:
    """Two primal groups need log(u)/beta at once; the second has a base state of unknown parity: the step raises
    and neither group changed form."""
    a, b = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(4))
    opt = proxopt.optimizer("md-softmax", [{"params": [a]}, {"params": [b]}], lr=0.05)
    a.grad, b.grad = torch.randn(3), torch.randn(4)
    opt.step()
    opt.base_optimizer.state[opt.base_optimizer.param_groups[1]["params"][0]]["mystery"] = torch.ones(4)
    for g in opt.param_groups:
        g["weight_decay"] = 0.1
    lat = [opt.state[p]["latent"] for p in (a, b)]
    with pytest.raises(ValueError, match="mystery"):
        opt.step()
    assert [opt.state[p]["latent"] for p in (a, b)] == lat and all(t.dim() == 1 for t in lat)


def test_loading_into_the_other_form_ignores_my_base_state() -> None:
    """My base state is replaced by the load: a key of unknown parity in it does not stop the form change."""
    src, w = _primal_run(weight_decay_at=2)
    sd = copy.deepcopy(src.state_dict())
    w2 = nn.Parameter(torch.zeros_like(w))
    dst = proxopt.optimizer("md-softmax", [w2], lr=0.05)
    w2.grad = torch.ones_like(w2)
    dst.step()
    dst.base_optimizer.state[dst.base_optimizer.param_groups[0]["params"][0]]["mystery"] = torch.ones_like(w2)
    dst.load_state_dict(sd)
    assert torch.equal(w2, w) and dst.state[w2]["latent"].shape == w.shape + (2,)


@pytest.mark.parametrize("saved_full,mine_full", [(False, True), (True, False), (False, False), (True, True)])
def test_state_entries_replaced_from_outside_in_the_other_form(saved_full: bool, mine_full: bool) -> None:
    """What ZeroRedundancyOptimizer.load_state_dict does (``optim.state[p] = saved_entry``), across forms: the
    next step continues the saved run bit for bit."""
    def make(full: bool) -> Tuple[List[nn.Parameter], Any]:
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(5))]
        o = proxopt.optimizer("md-softmax-s", ps, lr=0.1, foreach=False)
        if full:
            _to_two_entries(o)
            o._project_all()
        return ps, o

    def steps(ps: List[nn.Parameter], o: Any, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g)
            o.step()

    ps, o = make(saved_full)
    steps(ps, o, 3, 1)
    sd = copy.deepcopy(o.state_dict())
    ps2, o2 = make(mine_full)
    for idx, p in zip(sd["param_groups"][0]["params"], ps2):
        o2.state[p] = copy.deepcopy(sd["state"][idx])
    steps(ps2, o2, 2, 9)
    steps(ps, o, 2, 9)
    for p, q in zip(ps, ps2):
        assert torch.equal(p, q)
        assert torch.equal(o.state[p]["latent"], o2.state[q]["latent"])
