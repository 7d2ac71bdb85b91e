"""The step contract: a call that raises changes nothing, and bad input is named.

Pinned here, one focused test per regression:

* a ``step()`` (or ``add_param_group``, ``refresh()``, scheduler step) that
  raises leaves the parameters, the latents (``opt.state[p]["latent"]``), the
  param groups and the optimizer and base-optimizer state as they were, bit
  for bit (``torch.equal``), and the optimizer keeps working afterwards; the
  one exception is the primal mirror-descent form's re-encoding at a new
  ``beta`` (the same ``w``), which a failed step keeps, with the model
  projected from it;
* bad input raises a clear ``ValueError`` / ``TypeError`` naming the argument
  and the value, before anything changes;
* reading state (``state_dict()``) never modifies the live state, and a state
  dict saved and loaded into a fresh optimizer reproduces the model bit for bit.

Covered: rejected ``add_param_group``; ``state_dict()`` not mutating
``opt.state``; a failing base optimizer in the primal mirror-descent forms
after a ``beta`` change and after ``finalize()``; a bad ``lr`` on a later
group; :class:`proxopt.AnnealScheduler` overflow / underflow; one-element
tensor ``mu`` / ``beta``; primal forms with a parameter that never gets a
gradient across a state-dict round trip; Bop's ``base_state`` placement; and
ProxQuant's ``freeze_at``; a finite ``mu`` / ``beta`` beyond the float32
range (:func:`test_anneal_value_beyond_float32_range`).
"""
from __future__ import annotations

import copy
import io
import math
import re
from typing import Any, Dict, List

import pytest
import torch

import proxopt
from proxopt.optim.bop import Bop
from proxopt.optim.engine import LatentOptimizer

from exact import assert_same


# ------------------------------------------------------------------ helpers
def flaky(base: type) -> type:
    """``base`` whose ``step`` raises while ``fail`` is set (a base optimizer failing mid-step)."""

    def step(self, closure=None):  # type: ignore[no-untyped-def]
        if self.fail:
            raise RuntimeError("base optimizer failed")
        return base.step(self, closure)

    return type(f"Flaky{base.__name__}", (base,), {"fail": False, "step": step})


FlakyAdam, FlakySGD = flaky(torch.optim.Adam), flaky(torch.optim.SGD)


def _clone(v: Any) -> Any:
    return v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)


def snapshot(opt: torch.optim.Optimizer, params: List[torch.Tensor]) -> Dict[str, Any]:
    """Everything a failed call must leave alone: parameters, outer state, groups, base state."""
    return {
        "params": [p.detach().clone() for p in params],
        "state": [{k: _clone(v) for k, v in opt.state[p].items()} if p in opt.state else None for p in params],
        "state_keys": sorted(id(p) for p in opt.state),
        "groups": [{k: _clone(v) for k, v in g.items() if k != "params"} for g in opt.param_groups],
        "group_params": [[id(p) for p in g["params"]] for g in opt.param_groups],
        "base": copy.deepcopy(opt.base_optimizer.state_dict()),
        "base_group_params": [[id(p) for p in g["params"]] for g in opt.base_optimizer.param_groups],
    }


def assert_unchanged(before: Dict[str, Any], opt: torch.optim.Optimizer, params: List[torch.Tensor]) -> None:
    after = snapshot(opt, params)
    for i, (a, b) in enumerate(zip(before["params"], after["params"])):
        assert torch.equal(a, b), f"parameter {i} changed: {a.tolist()} -> {b.tolist()}"
    assert_same(before, after, "optimizer")


def grads(params: List[torch.Tensor], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def make_params(n: int, size: int, seed: int = 0, scale: float = 0.3) -> List[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(size, generator=gen) * scale) for _ in range(n)]


def failing_step(opt: torch.optim.Optimizer) -> None:
    """One ``opt.step()`` whose (flaky) base optimizer raises."""
    opt.base_optimizer.fail = True
    with pytest.raises(RuntimeError, match="base optimizer failed"):
        opt.step()
    opt.base_optimizer.fail = False


def roundtrip(sd: Dict[str, Any]) -> Dict[str, Any]:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ------------------------------------------------------- 1. add_param_group
@pytest.mark.parametrize("bad, exc, pattern", [
    ({"scale": "tensor"}, ValueError, r"scale.*'tensor'"),
    ({"scale": "bogus"}, ValueError, r"scale.*'bogus'"),
    ({"lr": -1.0}, ValueError, r"(lr|learning rate).*-1\.0"),
    ({"lr": "0.1"}, TypeError, r"lr.*'0\.1'"),
    ({"beta": 0.0}, ValueError, r"beta.*0\.0"),
], ids=["scale-tensor", "scale-bogus", "lr-negative", "lr-str", "beta-zero"])
def test_rejected_add_param_group_changes_nothing(bad, exc, pattern):
    p1, p2 = make_params(2, 4)
    opt = proxopt.optimizer("md-softmax-s", [p1], lr=0.1)
    grads([p1], 1)
    opt.step()
    p2_before = p2.detach().clone()
    before = snapshot(opt, [p1])
    with pytest.raises(exc, match=pattern):
        opt.add_param_group({"params": [p2], **bad})
    assert len(opt.param_groups) == 1 and len(opt.base_optimizer.param_groups) == 1
    assert p2 not in opt.state
    assert torch.equal(p2.detach(), p2_before)
    assert_unchanged(before, opt, [p1])

    # the optimizer still steps and round-trips its state dict
    grads([p1], 2)
    opt.step()
    q1 = torch.nn.Parameter(torch.zeros(4))
    fresh = proxopt.optimizer("md-softmax-s", [q1], lr=0.1)
    fresh.load_state_dict(roundtrip(opt.state_dict()))
    assert torch.equal(q1.detach(), p1.detach())
    assert torch.equal(fresh.state[q1]["latent"], opt.state[p1]["latent"])
    # and a valid group is still accepted afterwards
    opt.add_param_group({"params": [p2]})
    assert len(opt.param_groups) == 2 and len(opt.base_optimizer.param_groups) == 2


# ----------------------------------------------- 2. state_dict() is read-only
@pytest.mark.parametrize("name", proxopt.available())
def test_state_dict_does_not_modify_live_state(name):
    w, b = make_params(2, 4)
    opt = proxopt.optimizer(name, [{"params": [w]}, {"params": [b], "quantize": False}], lr=0.05)
    grads([w, b], 1)
    opt.step()
    keys = {p: sorted(opt.state[p]) for p in (w, b)}
    live = snapshot(opt, [w, b])
    sd = opt.state_dict()
    sd2 = opt.state_dict()
    assert {p: sorted(opt.state[p]) for p in (w, b)} == keys
    assert all("base_state" not in opt.state[p] for p in (w, b))
    assert_unchanged(live, opt, [w, b])
    # the full-precision parameter's base state travels in its own entry, every time
    assert "base_state" in sd["state"][1] and "base_state" in sd2["state"][1]
    assert_same(sd["state"], sd2["state"], "state_dict")


LATENT_PRESETS = ["bc", "bnn", "bnn++", "md-tanh", "md-tanh-s", "md-softmax", "md-softmax-s", "gd-tanh"]


@pytest.mark.parametrize("name", LATENT_PRESETS)
def test_finalize_state_dict_refresh_keeps_hard_weights(name):
    (p,) = make_params(1, 6)
    opt = proxopt.optimizer(name, [p], lr=0.05)
    assert isinstance(opt, LatentOptimizer)
    grads([p], 1)
    opt.step()
    opt.finalize()
    hard = p.detach().clone()
    latent = opt.state[p]["latent"].clone()
    opt.state_dict()  # e.g. writing a checkpoint
    assert sorted(opt.state[p]) == ["latent"]
    opt.refresh()  # nothing changed: a no-op
    assert torch.equal(p.detach(), hard), f"{hard.tolist()} -> {p.detach().tolist()}"
    assert torch.equal(opt.state[p]["latent"], latent)


# --------------------- 3. primal forms: failed step after a beta change
@pytest.mark.parametrize("name", ["md-tanh", "md-softmax"])
@pytest.mark.parametrize("scale", [None, "tensor"])
def test_primal_failed_step_after_beta_change_multiplies_the_reencoding_back(name, scale):
    """The step re-encodes the latents at the new beta (the same w) before its base step; when the base step
    then fails, the re-encoding is multiplied back: ``beta_encoded`` as it was, the latents and the model
    equal to before up to rounding (with a scale too, whose ``mean |theta|`` follows the encoding),
    ``p = P(theta)`` exactly, the base state untouched, and a state dict saved now reproduces the model."""
    if scale is not None and name == "md-softmax":
        pytest.skip("no scale on the softmax dual")

    def build():
        params = make_params(2, 6)
        return params, proxopt.optimizer(name, params, lr=0.05, base=FlakyAdam, scale=scale)

    params, opt = build()
    grads(params, 1)
    opt.step()
    opt.param_groups[0]["beta"] = 3.0  # e.g. an AnnealScheduler step
    opt.refresh()
    encoded = opt.param_groups[0]["beta_encoded"]
    assert encoded != 3.0  # the re-encoding is still pending: the next step does it
    before = snapshot(opt, params)

    grads(params, 2)
    failing_step(opt)

    group = opt.param_groups[0]
    assert group["beta_encoded"] == encoded and group["beta"] == 3.0
    assert_same(opt.base_optimizer.state_dict(), before["base"], "base state")
    tr = opt._transform(group)
    for p, saved, st in zip(params, before["params"], before["state"]):
        theta = opt.state[p]["latent"]
        torch.testing.assert_close(theta, st["latent"], rtol=1e-6, atol=0.0)
        torch.testing.assert_close(p.detach(), saved, rtol=1e-6, atol=1e-7)
        expected = torch.empty_like(p.detach())
        opt._write(tr, group, expected, theta, encoded)
        assert torch.equal(p.detach(), expected)
    fresh_params, fresh = build()
    fresh.load_state_dict(roundtrip(opt.state_dict()))
    for p, q in zip(params, fresh_params):
        assert torch.equal(p.detach(), q.detach())
    grads(params, 3)
    opt.step()
    assert group["beta_encoded"] == 3.0
    assert all(torch.isfinite(p.detach()).all() for p in params)


@pytest.mark.parametrize("beta", [None, 3.0])
def test_failed_step_with_the_log_partition_dual(beta):
    """md-softmax with coupled weight decay keeps log(u)/beta and recomputes it before every base step; when the
    base step then fails, the latents hold that dual of the same point (equal up to rounding and a shift per
    weight), the model is unchanged up to rounding with p = P(theta) exactly, the base state is untouched, and
    the next step goes on."""
    params = make_params(2, 6)
    opt = proxopt.optimizer("md-softmax", params, lr=0.05, base=FlakyAdam, weight_decay=0.1)
    group = opt.param_groups[0]
    tr = opt._transform(group)
    assert tr.encodes_before_step
    grads(params, 1)
    opt.step()
    if beta is not None:
        group["beta"] = beta
        opt.refresh()
    encoded = group["beta_encoded"]
    before = snapshot(opt, params)
    grads(params, 2)
    failing_step(opt)
    assert group["beta_encoded"] == encoded
    assert_same(opt.base_optimizer.state_dict(), before["base"], "base state")
    for p, saved, st in zip(params, before["params"], before["state"]):
        theta = opt.state[p]["latent"]
        torch.testing.assert_close(torch.softmax(encoded * theta, -1), torch.softmax(encoded * st["latent"], -1),
                                   rtol=0.0, atol=1e-6)
        torch.testing.assert_close(p.detach(), saved, rtol=0.0, atol=1e-6)
        expected = torch.empty_like(p.detach())
        opt._write(tr, group, expected, theta, encoded)
        assert torch.equal(p.detach(), expected)
    grads(params, 3)
    opt.step()
    assert all(torch.isfinite(p.detach()).all() for p in params)


@pytest.mark.parametrize("name", ["md-tanh", "md-softmax", "md-tanh-s", "bnn++"])
def test_failed_step_after_finalize_and_a_strength_change_keeps_the_levels(name):
    """After ``finalize()`` and a change of ``mu``/``beta``, a step whose base optimizer fails leaves the
    finalized levels in the model bit for bit (the primal form multiplies its re-encoding back)."""
    params = make_params(2, 6)
    opt = proxopt.optimizer(name, params, lr=0.05, base=FlakyAdam)
    grads(params, 1)
    opt.step()
    opt.finalize()
    hard = [p.detach().clone() for p in params]
    opt.param_groups[0][opt.anneal_key] = 3.0
    grads(params, 2)
    failing_step(opt)
    if opt._transform(opt.param_groups[0]).primal:
        assert all(torch.equal(p.detach(), h) for p, h in zip(params, hard))


# ------------------------------ 4. failed step after finalize() keeps levels
@pytest.mark.parametrize("name", ["bnn++", "gd-tanh", "md-softmax-s"])
def test_failed_step_after_finalize_keeps_hard_weights(name):
    params = make_params(1, 6)
    (p,) = params
    opt = proxopt.optimizer(name, params, lr=0.05, base=FlakySGD)
    grads(params, 1)
    opt.step()
    opt.finalize()  # the model now holds exact levels
    hard = p.detach().clone()
    assert set(hard.tolist()) <= {-1.0, 1.0}
    before = snapshot(opt, params)

    grads(params, 2)  # the latent gradient is computed in the parameter's storage
    failing_step(opt)

    assert torch.equal(p.detach(), hard), f"{hard.tolist()} -> {p.detach().tolist()}"
    assert_unchanged(before, opt, params)
    opt.refresh()  # still a no-op: the hard levels stay
    assert torch.equal(p.detach(), hard)
    # a step that succeeds re-projects: the model holds F(theta) again, the same as without the failure
    twin_params = make_params(1, 6)
    twin = proxopt.optimizer(name, twin_params, lr=0.05, base=FlakySGD)
    grads(twin_params, 1)
    twin.step()
    twin.finalize()
    for o, ps in ((opt, params), (twin, twin_params)):
        grads(ps, 3)
        o.step()
    assert torch.equal(p.detach(), twin_params[0].detach())
    assert torch.equal(opt.state[p]["latent"], twin.state[twin_params[0]]["latent"])


# ------------------------------------------ 5. bad lr on a later group
@pytest.mark.parametrize("bad, exc, pattern", [
    ("0.1", TypeError, r"Invalid lr: '0\.1'"),
    (math.nan, ValueError, r"(lr|learning rate): nan"),
    (-1.0, ValueError, r"(lr|learning rate): -1\.0"),
], ids=["str", "nan", "negative"])
def test_bad_lr_on_later_group_raises_before_anything_changes(bad, exc, pattern):
    a, b = params = make_params(2, 5)
    opt = proxopt.optimizer("bnn", [{"params": [a]}, {"params": [b]}], lr=0.05)
    grads(params, 1)
    opt.step()
    opt.param_groups[1]["lr"] = bad  # a mis-configured scheduler / a typo
    before = snapshot(opt, params)
    grads(params, 2)
    with pytest.raises(exc, match=pattern):
        opt.step()
    assert torch.equal(a.detach(), before["params"][0])
    assert torch.equal(opt.state[a]["latent"], before["state"][0]["latent"])
    assert_same(opt.base_optimizer.state_dict()["state"][0], before["base"]["state"][0], "base state of a")
    assert_unchanged(before, opt, params)
    assert torch.isfinite(opt.state[b]["latent"]).all() and torch.isfinite(b.detach()).all()
    # fixing the value makes the optimizer usable again
    opt.param_groups[1]["lr"] = 0.05
    opt.step()
    assert not torch.equal(opt.state[a]["latent"], before["state"][0]["latent"])


# -------------------------------------------------- 6. AnnealScheduler
def test_anneal_capped_geometric_never_raises():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = proxopt.optimizer("md-tanh-s", [w], lr=0.1)
    sched = proxopt.AnnealScheduler(opt, factor=1.2, every=1, max_value=1e4)
    for _ in range(5000):  # 1.2 ** k overflows a Python float at k = 3894
        sched.step()
    assert sched.last_step == 5000
    assert opt.param_groups[0]["beta"] == 1e4
    assert sched.get_values() == [1e4]


def _step_until_raises(sched, limit: int):
    for _ in range(limit):
        before = (sched.last_step, list(sched.cum_lr),
                  [{k: _clone(v) for k, v in g.items() if k != "params"} for g in sched.optimizer.param_groups],
                  [p.detach().clone() for g in sched.optimizer.param_groups for p in g["params"]])
        try:
            sched.step()
        except ValueError as e:
            return e, before
    raise AssertionError(f"no ValueError in {limit} scheduler steps")


# Growing past the float32 range, float32 latents refuse the value (refresh() raises) before the
# Python float overflows; decaying, the schedule itself reaches 0.0.
F32 = r"beyond 1\.32923e\+36"
@pytest.mark.parametrize("name, factor, start, pattern", [
    ("md-tanh", 1.2, 450, r"Invalid beta: \S+ \(" + F32),
    ("pc", 1e100, 0, r"Invalid mu: 1e\+100 \(" + F32),
    ("pc", 10.0, 30, r"Invalid mu: 1e\+37 \(" + F32),
    ("bnn++", 0.5, 1065, r"Invalid mu after 1075 scheduler steps: 0\.0"),   # decays to 0 (underflow)
    ("md-tanh-s", 1e-100, 0, r"Invalid beta after 4 scheduler steps: 0\.0"),
], ids=["overflow-1.2", "overflow-1e100", "overflow-10", "underflow-0.5", "underflow-1e-100"])
def test_anneal_leaving_positive_floats_raises_and_changes_nothing(name, factor, start, pattern):
    w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))
    opt = proxopt.optimizer(name, [w], lr=0.1)
    sched = proxopt.AnnealScheduler(opt, factor=factor)
    if start:  # resume a long run near its end (as a checkpointed scheduler would)
        sched.load_state_dict({**sched.state_dict(), "last_step": start})
    err, (last, cum_lr, groups, ws) = _step_until_raises(sched, 20)
    assert sched.key in str(err)
    assert re.search(pattern, str(err)), str(err)
    assert sched.last_step == last
    assert sched.cum_lr == cum_lr
    assert_same([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups], groups, "groups")
    assert_same(w.detach(), ws[0], "weights")
    # the groups keep their last valid value: the optimizer still steps
    v = opt.param_groups[0][sched.key]
    assert isinstance(v, float) and math.isfinite(v) and v > 0.0
    w.grad = torch.ones(3)
    opt.step()
    assert torch.isfinite(w.detach()).all()
    # and the scheduler keeps refusing, still without moving
    with pytest.raises(ValueError, match=sched.key):
        sched.step()
    assert sched.last_step == last


ANNEALED_PRESETS = [n for n in proxopt.available() if n != "bop"]


@pytest.mark.parametrize("name", ANNEALED_PRESETS)
def test_anneal_value_beyond_float32_range(name):
    """An unbounded geometric schedule passes 3.4e38 long before it overflows a Python float (1.2 ** 487).

    Either the value is refused (ValueError/TypeError naming the key, nothing changed) or the optimizer
    works with it (finite weights and latents). The latent optimizers refuse a ``mu``/``beta`` beyond the
    float32 range for float32 latents (their kernels multiply by it in float32), and the scheduler then
    leaves its step and the groups' values as they were.
    """
    params = make_params(1, 4)
    opt = proxopt.optimizer(name, params, lr=0.05)
    grads(params, 1)
    opt.step()
    sched = proxopt.AnnealScheduler(opt, factor=1e39)
    before = snapshot(opt, params)
    try:
        sched.step()
    except (ValueError, TypeError) as e:
        assert sched.key in str(e) and sched.last_step == 0
        assert_unchanged(before, opt, params)
        return
    assert torch.isfinite(params[0].detach()).all()
    before = snapshot(opt, params)
    grads(params, 2)
    try:
        opt.step()
    except (ValueError, TypeError) as e:
        assert sched.key in str(e)
        assert_unchanged(before, opt, params)
        return
    assert torch.isfinite(params[0].detach()).all()
    assert all(torch.isfinite(v).all() for v in opt.state[params[0]].values() if isinstance(v, torch.Tensor))


# ------------------------------------------ 7. one-element tensor mu / beta
@pytest.mark.parametrize("shape", [(), (1,)], ids=["0d", "1elem"])
@pytest.mark.parametrize("via", ["refresh", "step", "stats"])
@pytest.mark.parametrize("name", ["bnn++", "md-tanh-s", "md-tanh"])
def test_tensor_anneal_value(name, via, shape):
    def build():
        params = make_params(1, 4)
        opt = proxopt.optimizer(name, params, lr=0.05)
        grads(params, 1)
        opt.step()
        return params, opt

    params, opt = build()
    twin_params, twin = build()
    k = opt.anneal_key
    opt.param_groups[0][k] = torch.full(shape, 2.0)
    twin.param_groups[0][k] = 2.0

    if via == "stats":
        row, twin_row = opt.stats()[0], twin.stats()[0]
        assert float(row.pop(k)) == twin_row.pop(k) == 2.0
        assert_same(row, twin_row, "stats")
        opt.refresh()  # and it is stored back as a float by the next refresh / step
        twin.refresh()
    elif via == "refresh":
        opt.refresh()
        twin.refresh()
    else:
        for ps in (params, twin_params):
            grads(ps, 2)
        opt.step()
        twin.step()
    v = opt.param_groups[0][k]
    assert type(v) is float and v == 2.0
    assert torch.equal(params[0].detach(), twin_params[0].detach())
    assert torch.equal(opt.state[params[0]]["latent"], twin.state[twin_params[0]]["latent"])
    # all three keep working afterwards
    opt.refresh()
    for ps in (params, twin_params):
        grads(ps, 3)
    opt.step()
    twin.refresh()
    twin.step()
    assert torch.equal(params[0].detach(), twin_params[0].detach())
    assert_same(opt.stats(), twin.stats(), "stats")


# ------------- 8. primal forms: a parameter without gradients, state-dict round trip
@pytest.mark.parametrize("name", ["md-tanh", "md-softmax"])
def test_primal_param_without_grad_survives_state_dict_roundtrip(name):
    A = make_params(2, 16, scale=0.5)
    B = make_params(2, 16, seed=1, scale=0.5)
    oa = proxopt.optimizer(name, A, lr=0.05)
    ob = proxopt.optimizer(name, B, lr=0.05)
    sched = proxopt.AnnealScheduler(oa, factor=1.7)
    gen = torch.Generator().manual_seed(3)
    for _ in range(6):
        A[0].grad = torch.randn(16, generator=gen)  # A[1] never gets a gradient (a frozen / unused layer)
        oa.step()
        sched.step()
    assert A[1].grad is None
    ob.load_state_dict(roundtrip(oa.state_dict()))
    for i, (a, b) in enumerate(zip(A, B)):
        assert torch.equal(a.detach(), b.detach()), f"param {i}: max diff {(a - b).abs().max().item()}"
        assert torch.equal(oa.state[a]["latent"], ob.state[b]["latent"])
    # a live re-projection (adding a group) leaves the untouched parameter as it was
    before = A[1].detach().clone()
    oa.add_param_group({"params": [torch.nn.Parameter(torch.randn(3))], "lr": 0.05})
    assert torch.equal(A[1].detach(), before)
    # and both continue identically
    for o, ps in ((oa, A), (ob, B)):
        ps[0].grad = torch.ones(16)
        o.step()
    for a, b in zip(A, B):
        assert torch.equal(a.detach(), b.detach())


# -------------------------------------------------- 9. Bop base_state index
def test_bop_state_dict_puts_base_state_under_full_precision_index():
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 4, generator=gen))
    b = torch.nn.Parameter(torch.randn(3, generator=gen))
    opt = Bop([{"params": [w]}, {"params": [b], "quantize": False}], lr=0.01)
    w.grad = torch.randn(6, 4, generator=gen)
    b.grad = torch.randn(3, generator=gen)
    opt.step()
    keys_w = sorted(opt.state[w])
    sd = opt.state_dict()
    assert sorted(opt.state[w]) == keys_w and "base_state" not in opt.state[w]
    assert sd["param_groups"][0]["params"] == [0] and sd["param_groups"][1]["params"] == [1]
    assert "base_state" not in sd["state"][0]
    base_b = sd["state"][1]["base_state"]
    assert base_b["exp_avg"].shape == b.shape and base_b["exp_avg_sq"].shape == b.shape
    assert_same(base_b, opt.base_optimizer.state[b], "base_state of b")
    assert torch.equal(sd["state"][0]["m"], opt.state[w]["m"])

    # a round trip into a fresh Bop continues bit for bit
    w2 = torch.nn.Parameter(torch.zeros(6, 4))
    b2 = torch.nn.Parameter(torch.zeros(3))
    fresh = Bop([{"params": [w2]}, {"params": [b2], "quantize": False}], lr=0.01)
    with torch.no_grad():
        w2.copy_(w)
        b2.copy_(b)
    fresh.load_state_dict(roundtrip(sd))
    for o, ps in ((opt, (w, b)), (fresh, (w2, b2))):
        g = torch.Generator().manual_seed(5)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        o.step()
    assert torch.equal(w.detach(), w2.detach()) and torch.equal(b.detach(), b2.detach())


# ------------------------------------------------- 10. ProxQuant freeze_at
def test_proxquant_frozen_weights_stay_at_levels():
    w = torch.nn.Parameter(torch.tensor([0.5, -0.5]))
    v = torch.nn.Parameter(torch.tensor([0.5, -0.5]))  # same settings, never frozen
    opt = proxopt.ProxQuant([{"params": [w], "freeze_at": 2}, {"params": [v]}], reg=1e-4, lr=1.0,
                            base=torch.optim.SGD, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        w.grad, v.grad = torch.zeros(2), torch.zeros(2)
        opt.step()
    assert w.detach().tolist() == [1.0, -1.0]  # rounded at freeze_at
    base_w = {k: _clone(x) for k, x in opt.base_optimizer.state[w].items()}
    assert "momentum_buffer" in base_w  # so "the base optimizer leaves it alone" is not vacuous
    prox_w = {k: _clone(x) for k, x in opt.state[w].items()}
    for big in (3.0, -50.0, 1e3):
        v_before = v.detach().clone()
        w.grad, v.grad = torch.full((2,), big), torch.full((2,), big)
        opt.step()
        assert w.detach().tolist() == [1.0, -1.0], f"frozen weights moved under grad {big}"
        assert_same(dict(opt.base_optimizer.state[w]), base_w, "base state of w")
        assert_same(dict(opt.state[w]), prox_w, "ProxQuant state of w")
        assert w.grad is not None and torch.equal(w.grad, torch.full((2,), big))  # the gradient is left in place
        assert not torch.equal(v.detach(), v_before)  # the unfrozen group keeps training


@pytest.mark.parametrize("bad", ["10", 0, -1, 2.5, True], ids=repr)
def test_proxquant_bad_freeze_at_raises_before_anything_changes(bad):
    w = torch.nn.Parameter(torch.tensor([0.5, -0.2]))
    opt = proxopt.ProxQuant([w], reg=1e-2, lr=0.1, base=torch.optim.Adam)
    w.grad = torch.tensor([1.0, 1.0])
    opt.step()
    opt.param_groups[0]["freeze_at"] = bad  # validated by the constructor, then changed
    before = snapshot(opt, [w])
    w.grad = torch.tensor([1.0, 1.0])
    with pytest.raises(ValueError, match=rf"Invalid freeze_at: {re.escape(repr(bad))}"):
        opt.step()
    assert torch.equal(w.detach(), before["params"][0])
    assert opt.base_optimizer.state[w]["step"].item() == before["base"]["state"][0]["step"].item() == 1.0
    assert_unchanged(before, opt, [w])
    opt.param_groups[0]["freeze_at"] = None
    opt.step()
    assert opt.base_optimizer.state[w]["step"].item() == 2.0


@pytest.mark.parametrize("name", [n for n in ANNEALED_PRESETS if n != "pq"])
def test_largest_accepted_anneal_value_keeps_weights_finite(name):
    """At ``mu``/``beta = 2**120``, the largest value float32 latents accept, refresh and step give finite
    weights and latents (the kernels' scaled copies of the value, ``2 beta`` and the like, stay in range)."""
    params = make_params(1, 4)
    opt = proxopt.optimizer(name, params, lr=0.05)
    grads(params, 1)
    opt.step()
    opt.param_groups[0][opt.anneal_key] = 2.0 ** 120
    opt.refresh()
    grads(params, 2)
    opt.step()
    assert torch.isfinite(params[0].detach()).all()
    assert torch.isfinite(opt.state[params[0]]["latent"]).all()
    opt.param_groups[0][opt.anneal_key] = 2.0 ** 121
    with pytest.raises(ValueError, match=opt.anneal_key):
        opt.refresh()


@pytest.mark.parametrize("name", ["bnn++", "md-softmax", "pq", "bop"])
@pytest.mark.parametrize("flip_group", [0, 1])
def test_quantize_cannot_change_after_the_group_was_added(name, flip_group):
    """``quantize`` decides what the base optimizer steps (latents, the weights, or nothing for Bop), so a
    group whose ``quantize`` changed afterwards is refused before the step changes anything."""
    params = make_params(2, 4)
    opt = proxopt.optimizer(name, [{"params": [params[0]]}, {"params": [params[1]], "quantize": False}], lr=0.05)
    grads(params, 1)
    opt.step()
    group = opt.param_groups[flip_group]
    group["quantize"] = not group["quantize"]
    grads(params, 2)
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"Invalid quantize: .* group %d" % flip_group):
        opt.step()
    assert_unchanged(before, opt, params)
    calls = [opt.finalize, opt.state_dict, lambda: opt.hard().__enter__()]
    calls += [opt.stats] if hasattr(opt, "stats") else []
    for call in calls:
        with pytest.raises(ValueError, match=r"Invalid quantize: .* group %d" % flip_group):
            call()
        assert_unchanged(before, opt, params)
    group["quantize"] = not group["quantize"]
    opt.step()
    assert all(torch.isfinite(p.detach()).all() for p in params)


@pytest.mark.parametrize("name", ["bnn++", "md-tanh-s", "md-softmax"])
def test_add_param_group_keeps_the_other_groups_weights(name):
    """Adding a group projects the new group only: the finalized levels of the others stay bit for bit."""
    params = make_params(2, 4)
    opt = proxopt.optimizer(name, [params[0]], lr=0.05)
    grads(params[:1], 1)
    opt.step()
    opt.finalize()
    hard = params[0].detach().clone()
    opt.add_param_group({"params": [params[1]]})
    assert torch.equal(params[0].detach(), hard)
    tr = opt._transform(opt.param_groups[1])
    torch.testing.assert_close(params[1].detach(), tr.forward(opt.state[params[1]]["latent"], 1.0))


def _failing_projection(opt: Any, at: int) -> Any:
    """Make the group-0 transform's ``project_into`` raise (an out-of-memory error, say) on its ``at``-th call."""
    tr = opt._transform(opt.param_groups[0])
    op, calls = tr.project_into, {"n": 0}

    def boom(theta, v, out, scratch):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == at:
            raise RuntimeError("projection failed")
        return op(theta, v, out, scratch)

    tr.project_into = boom
    return tr


def assert_model_is_projection(opt: Any, params: List[torch.Tensor]) -> None:
    group = opt.param_groups[0]
    tr = opt._transform(group)
    for p in params:
        expected = p.detach().clone()
        opt._write(tr, group, expected, opt.state[p]["latent"], opt._value(tr, group))
        assert torch.equal(p.detach(), expected)


@pytest.mark.parametrize("name", ["bnn", "bnn++", "gd-tanh", "md-tanh-s", "md-tanh"])
def test_failure_while_writing_the_model_back_leaves_p_equal_to_f_theta(name):
    """The base step succeeded and the write-back of ``F(theta)`` fails on the 2nd parameter: no parameter
    keeps the latent gradient that was computed in its storage, or its old weights; ``p = F(theta)``."""
    params = make_params(3, 8)
    opt = proxopt.optimizer(name, params, lr=0.05)
    grads(params, 1)
    opt.step()
    grads(params, 2)
    tr = _failing_projection(opt, 2)
    with pytest.raises(RuntimeError, match="projection failed"):
        opt.step()
    del tr.project_into
    assert_model_is_projection(opt, params)
    fresh_params = make_params(3, 8, seed=5)
    fresh = proxopt.optimizer(name, fresh_params, lr=0.05)
    fresh.load_state_dict(roundtrip(opt.state_dict()))
    assert all(torch.equal(p.detach(), q.detach()) for p, q in zip(params, fresh_params))


@pytest.mark.parametrize("name", ["md-tanh-s", "bnn++", "pc"])
def test_scheduler_step_failing_inside_a_group_leaves_p_equal_to_f_theta(name):
    """``AnnealScheduler.step()``'s refresh fails after projecting one parameter of the group at the new value:
    the scheduler rolls back, and the group is projected again at the old value (a half-projected group is
    not taken for a projected one)."""
    params = make_params(3, 8)
    opt = proxopt.optimizer(name, params, lr=0.05)
    sched = proxopt.AnnealScheduler(opt, factor=4.0)
    grads(params, 1)
    opt.step()
    before = [p.detach().clone() for p in params]
    tr = _failing_projection(opt, 2)
    with pytest.raises(RuntimeError, match="projection failed"):
        sched.step()
    del tr.project_into
    assert sched.last_step == 0 and opt.param_groups[0][opt.anneal_key] == 1.0
    assert_model_is_projection(opt, params)
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
