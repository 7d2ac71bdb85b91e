"""Bop (THEORY.md §7): the flip rule, the base optimizer on full-precision groups, resume, validation."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import proxopt
from proxopt.groups import param_groups
from proxopt.optim.bop import Bop, bop_flip


def reference_bop(w, grads, gamma, tau):
    """THEORY.md §7 written out elementwise in float64."""
    w = [float(x) for x in w]
    m = [0.0] * len(w)
    for g in grads:
        for i in range(len(w)):
            m[i] = (1.0 - gamma) * m[i] + gamma * float(g[i])
            if abs(m[i]) > tau and math.copysign(1.0, m[i]) == math.copysign(1.0, w[i]):
                w[i] = -w[i]
    return w, m


def test_construction_binarizes_with_sign_of_zero_plus_one():
    w = nn.Parameter(torch.tensor([0.3, -0.2, 0.0, -0.0, 5.0, -1e-30]))
    opt = Bop([w])
    assert w.tolist() == [1.0, -1.0, 1.0, 1.0, 1.0, -1.0]
    assert torch.equal(opt.state[w]["m"], torch.zeros(6))
    assert opt.anneal_key is None
    assert opt.param_groups[0]["threshold"] == 1e-8 and opt.param_groups[0]["gamma"] == 1e-4


def test_bop_flip_rule():
    w = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, -1.0])
    m = torch.tensor([0.5, -0.5, -0.5, 0.5, 1e-9, 0.0])
    assert bop_flip(w, m, 1e-8).tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0, -1.0]
    assert bop_flip(w, m, 0.0).tolist() == [-1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
    # fp16 weights with an fp32 average below fp16's smallest subnormal still flip
    w16 = torch.ones(2, dtype=torch.float16)
    assert bop_flip(w16, torch.tensor([1e-9, -1e-9]), 1e-10).tolist() == [-1.0, 1.0]


def test_matches_the_reference_over_many_steps_with_per_group_hyperparameters():
    g = torch.Generator().manual_seed(0)
    a = nn.Parameter(torch.randn(40, generator=g))
    b = nn.Parameter(torch.randn(30, generator=g))
    a0, b0 = torch.where(a >= 0, 1.0, -1.0).tolist(), torch.where(b >= 0, 1.0, -1.0).tolist()
    opt = Bop([{"params": [a]}, {"params": [b], "gamma": 0.3, "threshold": 0.05}], gamma=0.1, threshold=1e-3)
    ga, gb = [], []
    for _ in range(25):
        a.grad = torch.randn(40, generator=g)
        b.grad = torch.randn(30, generator=g)
        ga.append(a.grad.tolist())
        gb.append(b.grad.tolist())
        opt.step()
    wa, ma = reference_bop(a0, ga, 0.1, 1e-3)
    wb, mb = reference_bop(b0, gb, 0.3, 0.05)
    assert a.tolist() == wa and b.tolist() == wb
    assert opt.state[a]["m"].tolist() == pytest.approx(ma, rel=1e-5, abs=1e-7)
    assert opt.state[b]["m"].tolist() == pytest.approx(mb, rel=1e-5, abs=1e-7)
    assert sum(x != y for x, y in zip(wa, a0)) > 0  # something flipped


def test_one_step_solves_a_separable_binary_problem_and_stats_count_the_flips():
    target = torch.where(torch.rand(64, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
    w = nn.Parameter(torch.randn(64))
    fp = nn.Parameter(torch.randn(3))
    opt = Bop([{"params": [w]}, {"params": [fp], "quantize": False}], gamma=1.0, threshold=0.0, lr=0.1)
    assert opt.stats()[0]["flip_ratio"] is None
    wrong = int((torch.where(w >= 0, 1.0, -1.0) != target).sum())
    (w - target).square().sum().backward()
    opt.step()
    assert torch.equal(w.detach(), target)
    stats = opt.stats()
    assert stats[0]["flip_ratio"] == wrong / 64 and stats[0]["quant_error"] == 0.0
    assert stats[0]["m_abs_mean"] == pytest.approx(4.0 * wrong / 64)  # |g| = 2|w - target| = 4 where wrong
    assert stats[1]["quantize"] is False and stats[1]["flip_ratio"] is None and stats[1]["lr"] == 0.1


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Linear(16, 16),
                         nn.Linear(16, 3))


def test_base_optimizer_updates_only_full_precision_groups_like_plain_adam():
    model = net()
    fp_names = param_groups(model)[1]["param_names"]
    twin = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters() if n in fp_names}
    opt = Bop(param_groups(model), lr=1e-2, weight_decay=1e-3)
    adam = torch.optim.Adam(list(twin.values()), lr=1e-2, weight_decay=1e-3, fused=True)  # proxopt's default
    assert opt.base_optimizer.param_groups[0]["params"] == []
    assert len(opt.base_optimizer.param_groups[1]["params"]) == len(fp_names)
    params = dict(model.named_parameters())
    x = torch.randn(32, 6)
    for _ in range(4):
        model(x).square().mean().backward()
        for n, t in twin.items():
            t.grad = params[n].grad.clone()
        opt.step()
        adam.step()
        opt.zero_grad()
        for n, t in twin.items():
            assert torch.equal(params[n].detach(), t.detach()), n
    for n in param_groups(model)[0]["param_names"]:
        assert set(params[n].detach().flatten().tolist()) <= {-1.0, 1.0}
        assert params[n] not in opt.base_optimizer.state


def test_lr_scheduler_and_sgd_base():
    model = net()
    opt = Bop(param_groups(model), base=torch.optim.SGD, lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model(torch.randn(8, 6)).square().mean().backward()
    opt.step()
    sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(0.05)
    model(torch.randn(8, 6)).square().mean().backward()
    opt.step()
    assert opt.base_optimizer.param_groups[1]["lr"] == pytest.approx(0.05)


def run(model, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g)
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()


def test_state_dict_weights_only_roundtrip_resumes_bitwise_with_bf16_and_fp32():
    model = net()
    model[3].to(torch.bfloat16)
    model[3].forward = lambda x, m=model[3]: nn.functional.linear(x.to(torch.bfloat16), m.weight, m.bias).float()
    opt = Bop(param_groups(model), gamma=0.2, threshold=1e-4, lr=1e-2)
    assert opt.state[model[3].weight]["m"].dtype == torch.float32  # fp32 average for a bf16 weight
    run(model, opt, 3, seed=1)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    clone = net()
    clone[3].to(torch.bfloat16)
    clone[3].forward = lambda x, m=clone[3]: nn.functional.linear(x.to(torch.bfloat16), m.weight, m.bias).float()
    opt2 = Bop(param_groups(clone), gamma=0.2, threshold=1e-4, lr=1e-2)
    clone.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.state[clone[3].weight]["m"].dtype == torch.float32
    run(model, opt, 4, seed=2)
    run(clone, opt2, 4, seed=2)
    for (n, p), q in zip(model.named_parameters(), clone.parameters()):
        assert torch.equal(p, q), n
    for p, q in zip(model.parameters(), clone.parameters()):
        if "m" in opt.state[p]:
            assert torch.equal(opt.state[p]["m"], opt2.state[q]["m"])


def test_load_rejects_mismatched_state_dicts_and_changes_nothing():
    model = net()
    opt = Bop(param_groups(model), lr=1e-2)
    run(model, opt, 2, seed=0)
    sd = opt.state_dict()
    other = Bop(param_groups(net(), quantize_first=True), lr=1e-2)
    with pytest.raises(ValueError, match="Invalid state_dict"):
        other.load_state_dict(sd)
    before = {k: v["m"].clone() for k, v in other.state.items() if "m" in v}
    pc = proxopt.optimizer("bc", param_groups(net()), lr=1e-2)
    with pytest.raises(ValueError, match="Invalid state_dict"):
        opt.load_state_dict(pc.state_dict())
    with pytest.raises(ValueError, match="Invalid state_dict"):
        Bop(param_groups(net()), base=torch.optim.SGD, lr=1e-2).load_state_dict(sd)
    broken = opt.state_dict()
    first = broken["param_groups"][0]["params"][0]
    broken["state"][first] = {"m": torch.zeros(3)}
    with pytest.raises(ValueError, match="'m'"):
        opt.load_state_dict(broken)
    assert all(torch.equal(other.state[k]["m"], v) for k, v in before.items())


def test_hard_and_finalize_keep_binary_weights():
    model = net()
    opt = Bop(param_groups(model), lr=1e-2)
    run(model, opt, 2, seed=3)
    before = [p.detach().clone() for p in model.parameters()]
    with opt.hard():
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    opt.finalize()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_validation_names_the_argument():
    w = nn.Parameter(torch.randn(3))
    for kwargs, match in [({"threshold": -1.0}, "threshold"), ({"threshold": float("nan")}, "threshold"),
                          ({"gamma": 0.0}, "gamma"), ({"gamma": 1.5}, "gamma"), ({"gamma": True}, "gamma"),
                          ({"threshold": "1e-8"}, "threshold")]:
        with pytest.raises((ValueError, TypeError), match=match):
            Bop([w], **kwargs)
    with pytest.raises(ValueError, match="gamma"):
        Bop([{"params": [w], "gamma": -0.1}])
    with pytest.raises(TypeError, match="base"):
        Bop([w], base=object)
    opt = Bop([w], gamma=0.5, threshold=0.0)
    w.grad = torch.ones(3)
    opt.param_groups[0]["gamma"] = 2.0
    before = w.detach().clone()
    with pytest.raises(ValueError, match="gamma"):
        opt.step()
    assert torch.equal(w.detach(), before) and torch.equal(opt.state[w]["m"], torch.zeros(3))


def test_failing_base_step_leaves_binary_weights_and_average_alone():
    class Broken(torch.optim.SGD):
        def step(self, closure=None):
            raise RuntimeError("boom")

    w = nn.Parameter(torch.tensor([1.0, -1.0]))
    b = nn.Parameter(torch.zeros(2))
    opt = Bop([{"params": [w]}, {"params": [b], "quantize": False}], gamma=1.0, threshold=0.0, base=Broken, lr=0.1)
    w.grad, b.grad = torch.ones(2), torch.ones(2)
    with pytest.raises(RuntimeError, match="boom"):
        opt.step()
    assert w.tolist() == [1.0, -1.0] and opt.state[w]["m"].tolist() == [0.0, 0.0]


def test_anneal_scheduler_refuses_bop():
    opt = Bop([nn.Parameter(torch.randn(3))])
    with pytest.raises(TypeError, match="no annealed value"):
        proxopt.AnnealScheduler(opt, factor=2.0)


def test_add_param_group_and_no_grad_parameters():
    a = nn.Parameter(torch.randn(4))
    b = nn.Parameter(torch.tensor([0.5, -0.5]))
    opt = Bop([a], gamma=1.0, threshold=0.0, lr=0.1)
    opt.add_param_group({"params": [b]})
    assert b.tolist() == [1.0, -1.0] and "m" in opt.state[b]
    a.grad = None
    b.grad = torch.tensor([1.0, 1.0])
    before = a.detach().clone()
    opt.step()
    assert torch.equal(a.detach(), before) and b.tolist() == [-1.0, -1.0]


def test_bop_preset():
    model = net()
    opt = proxopt.optimizer("bop", param_groups(model), threshold=1e-6, gamma=1e-3, lr=1e-3)
    assert isinstance(opt, Bop)
    assert opt.param_groups[0]["threshold"] == 1e-6 and opt.param_groups[0]["gamma"] == 1e-3
