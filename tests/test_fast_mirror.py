"""The fast mirror-descent kernels equal the readable round trips they replace.

* primal form at a fixed ``beta``: ``renormalize_`` (a clamp for tanh, the
  shift to a largest entry of 0 for softmax) vs ``reencode(theta, beta, beta)``;
* whole md-tanh / md-softmax trajectories with the old round trip vs the new in-place forms;
* the softmax dual's gradient written into a persistent buffer vs the allocating ``g q``;
* edge shapes (0-d, empty) of the in-place kernels.
"""
import copy

import pytest
import torch

import proxopt
from proxopt import mirror_maps as mm

DTYPES = [torch.float32, torch.float64]


def _theta(dtype, n=3000, scale=6.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    th = torch.randn(n, generator=g, dtype=dtype) * scale
    th[:8] = torch.tensor([0.0, -0.0, 1e3, -1e3, 40.0, -40.0, float("inf"), -float("inf")], dtype=dtype)
    return th


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [1.0, 0.3, 7.0, 1e4])
def test_tanh_renormalize_is_the_round_trip(beta, dtype):
    m = mm.Tanh()
    th = _theta(dtype)
    ref = m.to_dual(m.to_primal(th, beta), beta)
    got = m.renormalize_(th.clone(), beta)
    b = m.dual_bound(beta, dtype)
    sat = th.abs() >= b
    assert sat.any() and (~sat).any()
    # beyond the bound the clamp gives exactly the round trip's ±atanh(m)/beta (tanh saturates there)
    assert torch.equal(got[sat], ref[sat])
    assert torch.equal(got[sat], torch.copysign(torch.tensor(b, dtype=dtype), th[sat]))
    # unsaturated entries are kept exactly; the round trip only adds rounding there
    inside = th.abs() < b
    assert torch.equal(got[inside], th[inside])
    # the round trip reproduces theta only to the resolution of w's float grid (coarse in theta near
    # saturation): in w = P(theta) the two agree to rounding
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(m.to_primal(got, beta), m.to_primal(ref, beta), rtol=0.0, atol=4 * eps)
    # NaN stays NaN, like the round trip
    assert m.renormalize_(torch.tensor([float("nan")], dtype=dtype), beta).isnan().all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", ["binary", "ternary", [-1.0, 0.2, 0.5, 2.0]])
@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_softmax_renormalize_matches_reencode(levels, beta, dtype):
    m = mm.Softmax(levels)
    d = len(m.levels)
    g = torch.Generator().manual_seed(2)
    th = torch.randn(700, d, generator=g, dtype=dtype) * 4
    th[0] = 0.0
    th[1, 0] = -3000.0  # below the floor log(tiny)/beta after renormalisation
    ref = m.reencode(th, beta, beta)
    for scratch in (None, torch.empty_like(th)):
        got = m.renormalize_(th.clone(), beta, scratch)
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(got, ref, rtol=0.0, atol=16 * eps * float(th.abs().max()))
    floor = torch.log(torch.tensor(torch.finfo(dtype).tiny, dtype=dtype)) / beta
    assert float(got[1, 0]) == pytest.approx(float(floor), rel=1e-6)
    assert m.renormalize_(torch.empty(0, d, dtype=dtype), beta).shape == (0, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", ["binary", "ternary", [-1.0, 0.2, 0.5, 2.0]])
@pytest.mark.parametrize("layout", ["level-major", "weight-major"])
def test_softmax_renormalize_keeps_w_and_the_argmax_bit_for_bit(levels, dtype, layout):
    """theta - max_k theta_k is exact: the largest entry becomes 0, every other entry is its difference with it,
    and the projection and the hard levels are those before, bit for bit, where the floor does not act."""
    m = mm.Softmax(levels)
    d = len(m.levels)
    g = torch.Generator().manual_seed(5)
    base = torch.randn(d, 2000, generator=g, dtype=dtype) * torch.tensor([0.01, 1.0, 30.0], dtype=dtype).repeat(667)[:2000]
    th = base.movedim(0, -1) if layout == "level-major" else base.t().contiguous()
    beta = 1.3
    got = m.renormalize_(th.clone(), beta, torch.empty_like(th))
    top = th.max(-1, keepdim=True).values
    floor = mm._dual_floor(dtype, beta)
    assert torch.equal(got, (th - top).clamp_min(floor))
    assert bool((got.max(-1).values == 0).all())
    assert torch.equal(m.hard(got), m.hard(th))
    w0, w1 = torch.empty(2000, dtype=dtype), torch.empty(2000, dtype=dtype)
    m.to_primal_into(th, beta, w0, torch.empty_like(th))
    m.to_primal_into(got, beta, w1, torch.empty_like(th))
    kept = (got > floor).all(-1)
    assert torch.equal(w1[kept], w0[kept]) and int(kept.sum()) > 1000


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", ["binary", "ternary"])
def test_softmax_log_partition_renormalize_matches_reencode(levels, dtype):
    """The other representative, ``log(u)/beta`` (LSE(beta theta) = 0), against the round trip through u."""
    m = mm.Softmax(levels)
    th = torch.randn(500, len(m.levels), generator=torch.Generator().manual_seed(4), dtype=dtype) * 4
    for beta in (1.0, 3.0):
        got = m.renormalize_(th.clone(), beta, torch.empty_like(th), log_partition=True)
        ref = m.reencode(th, beta, beta, log_partition=True)
        torch.testing.assert_close(got, ref, rtol=0.0, atol=16 * torch.finfo(dtype).eps * float(th.abs().max()))
        assert float(torch.logsumexp(beta * got, -1).abs().max()) <= 64 * torch.finfo(dtype).eps * (1 + beta * 16)
        for old, new in ((beta, 2 * beta), (beta, beta)):
            again = m.reencode_(th.clone(), old, new, torch.empty_like(th), log_partition=True)
            torch.testing.assert_close(m.to_simplex(again, new), m.to_simplex(th, old), rtol=0.0,
                                       atol=64 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_renormalize_infinities_and_signed_zeros(dtype):
    """Two levels, through d = theta_1 - theta_0: the larger entry +0, the other max(-|d|, floor) (an infinite d
    gives 0 and the floor, not inf - inf = NaN), NaN in both where d is NaN; more levels: the entries equal to the
    max +0 (an infinite max too), the others theta_j - max floored."""
    inf, nan = float("inf"), float("nan")
    rows = [[0.0, inf], [inf, 0.0], [-inf, 0.0], [-0.0, 0.0], [0.0, -0.0], [-0.0, -0.0], [2.0, 5.0], [-3.0, -inf],
            [nan, 1.0], [1.0, nan], [inf, inf], [-inf, -inf]]
    base = torch.tensor(rows, dtype=dtype).t().contiguous()
    m = mm.Softmax()
    floor = mm._dual_floor(dtype, 1.0)
    got = m.renormalize_(base.clone().movedim(0, -1), 1.0).t()
    want = torch.tensor([[floor, 0.0], [0.0, floor], [floor, 0.0], [-0.0, 0.0], [-0.0, 0.0], [-0.0, 0.0],
                         [-3.0, 0.0], [0.0, floor]], dtype=dtype).t()
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    assert torch.equal(got[:, :8].contiguous().view(bits), want.contiguous().view(bits))
    assert bool(got[:, 8:].isnan().all())
    w = torch.empty(len(rows), dtype=dtype)
    m.to_primal_into(got.t(), 1.0, w)
    assert w[:4].tolist() == [1.0, -1.0, 1.0, 0.0]
    three = torch.tensor([[inf, 0.0, -1.0], [inf, inf, 2.0], [-0.0, 0.0, -5.0], [nan, 0.0, 1.0]], dtype=dtype)
    got3 = mm.Softmax("ternary").renormalize_(three.clone(), 1.0)
    want3 = torch.tensor([[0.0, floor, floor], [0.0, 0.0, floor], [0.0, 0.0, -5.0]], dtype=dtype)
    assert torch.equal(got3[:3].view(bits), want3.view(bits)) and bool(got3[3].isnan().all())


def _torch_only(monkeypatch):
    from proxopt import native
    for name in ("sm2_project", "sm2_renorm", "sm2_renorm_project", "sm2_pullback"):
        monkeypatch.setattr(native, name, lambda *a, **k: False)


def test_softmax_renormalize_native_equals_torch_bit_for_bit_on_odd_values(monkeypatch):
    inf = float("inf")
    base = torch.tensor([[0.0, inf], [inf, 0.0], [-inf, 0.0], [inf, inf], [-0.0, 0.0], [0.0, -0.0], [-0.0, -0.0],
                         [3e38, -3e38], [1e-40, -1e-40], [float("nan"), 1.0]]).t().contiguous()
    base = torch.cat([base, torch.randn(2, 70_000) * 30], 1)
    m = mm.Softmax()
    a = m.renormalize_(base.clone().movedim(0, -1), 1.7)
    _torch_only(monkeypatch)
    b = m.renormalize_(base.clone().movedim(0, -1), 1.7)
    nan_a, nan_b = a.isnan(), b.isnan()  # NaN in the same entries (their sign bits carry no meaning)
    assert torch.equal(nan_a, nan_b) and bool(nan_a.any())
    assert torch.equal(a.masked_fill(nan_a, 0.0).contiguous().view(torch.int32),
                       b.masked_fill(nan_b, 0.0).contiguous().view(torch.int32))


def _md_softmax_primal(base, kw, steps=25, change=None, reload=False):
    """w after ``steps`` of primal md-softmax (float64) and the same steps by THEORY.md §5 written out: keep u,
    theta = to_dual(u) = log(u)/beta before every base step, grad_theta = g q. ``change = (k, settings)`` sets
    group settings before step ``k`` in both; ``reload`` moves the run into a new optimizer built with them
    through a state dict there instead."""
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(32, 6, generator=g, dtype=torch.float64), torch.randn(32, 3, generator=g, dtype=torch.float64)
    w = torch.nn.Parameter(torch.rand(3, 6, generator=g, dtype=torch.float64) * 1.6 - 0.8)
    opt = proxopt.optimizer("md-softmax", [w], base=base, **kw)
    lat = opt.state[w]["latent"].detach().clone()  # t of the dual (-t, t) where proxopt keeps that form
    u = torch.softmax(torch.stack([-lat, lat], -1) if lat.shape == w.shape else lat, -1)
    for k in range(steps):
        if change is not None and k == change[0]:
            if reload:
                fresh = proxopt.optimizer("md-softmax", [w], base=base, **dict(kw, **change[1]))
                fresh.load_state_dict(opt.state_dict())
                for key, val in change[1].items():
                    fresh.param_groups[0][key] = val
                opt = fresh
            else:
                opt.param_groups[0].update(change[1])
        opt.zero_grad()
        ((x @ w.T - y) ** 2).mean().backward()
        opt.step()
    q = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    theta = torch.nn.Parameter(torch.log(u))
    ref = base([theta], **kw)
    for k in range(steps):
        if change is not None and k == change[0]:
            ref.param_groups[0].update(change[1])
        with torch.no_grad():
            theta.copy_(torch.log_softmax(theta, -1))
        ww = (torch.softmax(theta, -1) @ q).detach().requires_grad_()
        ((x @ ww.T - y) ** 2).mean().backward()
        theta.grad = ww.grad.unsqueeze(-1) * q
        ref.step()
    return w.detach(), (torch.softmax(theta, -1) @ q).detach(), opt


@pytest.mark.parametrize("base,kw,lse", [
    (torch.optim.Adam, {"lr": 0.05}, False),
    (torch.optim.Adam, {"lr": 0.05, "weight_decay": 0.05}, True),
    (torch.optim.AdamW, {"lr": 0.05, "weight_decay": 0.05}, False),
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05}, False),
    (torch.optim.RMSprop, {"lr": 0.01, "weight_decay": 0.05}, True),
    (torch.optim.ASGD, {"lr": 0.05}, True),
], ids=["adam", "adam-wd", "adamw-wd", "sgd-wd", "rmsprop-wd", "asgd"])
def test_primal_softmax_follows_theory_with_any_base(base, kw, lse):
    """The dual with largest entry 0 where the base update ignores a common shift of the dual, log(u)/beta (THEORY's
    to_dual) where it may not: either way the iterates are THEORY.md §5's, to float64 rounding."""
    got, want, opt = _md_softmax_primal(base, kw)
    torch.testing.assert_close(got, want, rtol=0.0, atol=1e-12)
    w = opt.param_groups[0]["params"][0]
    th = opt.state[w]["latent"]
    assert opt._transform(opt.param_groups[0]).encodes_before_step == lse  # log(u)/beta, recomputed before a step
    # an odd elementwise base that ignores a common shift keeps t of (-t, t); others keep the two entries
    assert (th.shape == w.shape) == (not lse and base is not torch.optim.ASGD)
    if not lse and th.shape != w.shape:
        assert float(th.max(-1).values.abs().max()) == 0.0


@pytest.mark.parametrize("reload", [False, True], ids=["in-place", "state-dict"])
@pytest.mark.parametrize("base,kw,change", [
    (torch.optim.Adam, {"lr": 0.05}, {"weight_decay": 0.1}),
    (torch.optim.Adam, {"lr": 0.05, "weight_decay": 0.1}, {"weight_decay": 0.0}),
    (torch.optim.Adam, {"lr": 0.05, "weight_decay": 0.1, "decoupled_weight_decay": True},
     {"decoupled_weight_decay": False}),
], ids=["decay-on", "decay-off", "coupling-on"])
def test_primal_softmax_follows_theory_when_the_base_settings_change(base, kw, change, reload):
    """A change of base settings that switches the kept dual (max entry 0 <-> log(u)/beta) between steps, in
    place or through a state dict: the base step after it sees THEORY's dual."""
    got, want, _ = _md_softmax_primal(base, kw, steps=16, change=(6, change), reload=reload)
    torch.testing.assert_close(got, want, rtol=0.0, atol=1e-12)


class _MyAdam(torch.optim.Adam):
    pass


@pytest.mark.parametrize("base,kw,group,lse", [
    (torch.optim.AdamW, {"weight_decay": 0.1}, {"decoupled_weight_decay": False}, True),
    (torch.optim.AdamW, {"weight_decay": 0.1}, {}, False),
    (torch.optim.RMSprop, {"weight_decay": 0.1}, {"decoupled_weight_decay": True}, True),  # a key RMSprop ignores
    (torch.optim.Adam, {"weight_decay": 0.1, "decoupled_weight_decay": True}, {}, False),
    (_MyAdam, {}, {}, False),
    (_MyAdam, {"weight_decay": 0.1}, {}, True),
    (torch.optim.ASGD, {}, {}, True),
    (torch.optim.SGD, {"weight_decay": 0.1, "momentum": 0.9}, {}, False),
])
def test_which_dual_the_primal_softmax_form_keeps(base, kw, group, lse):
    w = torch.nn.Parameter(torch.randn(3, 4))
    opt = proxopt.MirrorDescent([dict(params=[w], **group)], mirror_map="softmax", stable=False, base=base,
                                lr=0.05, **kw)
    tr = opt._transform(opt.param_groups[0])
    assert tr.encodes_before_step == lse and getattr(tr.inner, "log_partition", False) == lse
    stable = proxopt.MirrorDescent([w], mirror_map="softmax", base=base, lr=0.05, **kw)
    assert not stable._transform(stable.param_groups[0]).encodes_before_step


def test_log_partition_dual_of_infinite_entries():
    inf = float("inf")
    th = torch.tensor([[0.0, inf], [-inf, 0.0], [inf, 2.0], [1.0, 3.0]])
    got = mm.Softmax().renormalize_(th.clone(), 1.0, log_partition=True)
    floor = mm._dual_floor(torch.float32, 1.0)
    torch.testing.assert_close(got[:3], torch.tensor([[floor, 0.0], [floor, 0.0], [0.0, floor]]), rtol=0, atol=0)
    torch.testing.assert_close(got[3], torch.log_softmax(th[3], -1), rtol=0, atol=1e-6)


def _problem(seed=0, n=64, k=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g)
    y = 3.0 * x @ torch.randn(k, 3, generator=g).sign()  # out of reach of |w| <= 1: latents keep growing
    return x, y


def _run(name, old, steps=50, anneal=None, **kw):
    x, y = _problem()
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 3) * 0.5)
    opt = proxopt.optimizer(name, [w], **kw)
    if old:  # the previous form: the full round trip P_new^{-1}(P_old(theta)) (old == new in every step)
        tr = opt._transform(opt.param_groups[0])
        tr.reencode_ = lambda theta, a, b, scratch=None: theta.copy_(tr.reencode(theta, a, b))
    sched = proxopt.AnnealScheduler(opt, factor=anneal) if anneal else None
    for _ in range(steps):
        opt.zero_grad()
        ((x @ w - y) ** 2).mean().backward()
        opt.step()
        if sched is not None:
            sched.step()
    return w.detach().clone(), opt.state[w]["latent"].clone()


@pytest.mark.parametrize("name", ["md-tanh", "md-softmax"])
def test_annealed_primal_form_matches_the_round_trip(name):
    """With beta growing every step, the in-place re-encoding (renormalise at old, scale by old/new) follows
    the round trip ``to_dual(to_primal(theta, old), new)``."""
    w_old, _ = _run(name, True, anneal=1.2, lr=0.05)
    w_new, _ = _run(name, False, anneal=1.2, lr=0.05)
    torch.testing.assert_close(w_new, w_old, rtol=0.0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [mm.Tanh(), mm.Softmax(), mm.Softmax("ternary"), mm.ShiftedTanh()], ids=repr)
def test_reencode_in_place_matches_reencode(m, dtype):
    shape = (300, m.dual_size) if m.dual_size else (300,)
    th = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(3)) * 4
    for old, new in [(1.0, 3.0), (5.0, 2.0), (2.0, 2.0)]:
        ref = m.to_dual(m.to_primal(th, old), new) if not m.dual_size else m.reencode(th, old, new)
        got = m.reencode_(th.clone(), old, new, torch.empty_like(th))
        w_ref = m.to_primal(ref, new) if not m.dual_size else m.to_simplex(ref, new)
        w_got = m.to_primal(got, new) if not m.dual_size else m.to_simplex(got, new)
        torch.testing.assert_close(w_got, w_ref, rtol=0.0, atol=64 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("name,kw", [("md-tanh", {"lr": 0.3}), ("md-tanh", {"lr": 0.05, "beta": 4.0}),
                                     ("md-softmax", {"lr": 0.3}), ("md-softmax", {"lr": 0.05, "beta": 3.0}),
                                     ("md-softmax", {"lr": 0.05, "levels": "ternary"})])
def test_primal_trajectories_old_round_trip_vs_in_place(name, kw):
    w_old, th_old = _run(name, True, **kw)
    w_new, th_new = _run(name, False, **kw)
    torch.testing.assert_close(w_new, w_old, rtol=0.0, atol=1e-5)
    if name == "md-softmax":
        torch.testing.assert_close(th_new, th_old, rtol=1e-5, atol=1e-5)
    # md-tanh: the latents agree where tanh is not saturated; near the bound the old round trip
    # snapped theta to w's float grid, so compare there through w = P(theta) (checked above)
    if name == "md-tanh" and kw["lr"] == 0.3:  # large steps: latents hit the saturation bound every step
        b = mm.Tanh().dual_bound(1.0, torch.float32)  # and are re-encoded (clamped) after every step
        assert (th_new.abs() == b).any() and float(th_new.abs().max()) <= b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", ["binary", "ternary", [-1.0, 0.2, 0.5, 2.0]])
def test_softmax_grad_into_equals_allocating_pull_back(levels, dtype):
    m = mm.Softmax(levels)
    g = torch.randn(300, dtype=dtype)
    th = torch.randn(300, len(m.levels), dtype=dtype)
    out = torch.full_like(th, float("nan"))
    assert torch.equal(m.primal_grad_to_dual_into(th, g, out), m.primal_grad_to_dual(th, g))


@pytest.mark.parametrize("levels", ["binary", "ternary"])
def test_md_softmax_s_step_with_grad_buffer_equals_allocating_backward(levels):
    def run(patch):
        torch.manual_seed(1)
        w = torch.nn.Parameter(torch.randn(40, 5))
        opt = proxopt.optimizer("md-softmax-s", [w], lr=0.1, levels=levels)
        if patch:
            tr = opt._transform(opt.param_groups[0])
            tr.grad_into = lambda theta, g, v, out, scratch: tr.backward(theta, g, v)
        x = torch.randn(8, 40, generator=torch.Generator().manual_seed(3))
        for _ in range(5):
            opt.zero_grad()
            (x @ w).square().mean().backward()
            opt.step()
            assert opt.base_optimizer.param_groups[0]["params"][0].grad is None
        return w.detach().clone(), opt.state[w]["latent"].clone()

    new, old = run(False), run(True)
    assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_kernels_on_edge_shapes(dtype):
    for shape in [(), (0,), (3, 0)]:
        th = torch.full(shape, 0.25, dtype=dtype)
        for m in (mm.Tanh(), mm.Linear()):
            torch.testing.assert_close(m.to_primal_into(th, 2.0, torch.empty_like(th)), m.to_primal(th, 2.0))
        torch.testing.assert_close(mm.Tanh().primal_grad_into(th, th, 2.0, torch.empty_like(th)),
                                   mm.Tanh().primal_derivative(th, 2.0) * th)
        assert torch.equal(mm.Tanh().renormalize_(th.clone(), 2.0), th)
        for levels in ("binary", "ternary"):
            m = mm.Softmax(levels)
            t = torch.full(shape + (len(m.levels),), 0.5, dtype=dtype)
            out = torch.empty(shape, dtype=dtype)
            torch.testing.assert_close(m.to_primal_into(t, 2.0, out, torch.empty_like(t)), m.to_primal(t, 2.0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_many_levels_into_with_scratch(dtype):
    m = mm.Softmax([-1.0, -0.3, 0.0, 0.4, 1.0])
    th = torch.randn(400, 5, dtype=dtype) * 5
    th[0] = torch.tensor([1e3, -1e3, 0.0, 2.0, 1e3], dtype=dtype)
    ref = m.to_primal(th, 2.0)
    got = m.to_primal_into(th, 2.0, torch.empty(400, dtype=dtype), torch.empty_like(th))
    torch.testing.assert_close(got, ref, rtol=0.0, atol=32 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("name", ["md-softmax", "md-softmax-s", "gd-tanh", "md-tanh"])
@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0)])
def test_empty_parameters_step(name, shape):
    """Empty parameters step (their gradient buffer is empty too: data_ptr 0 must not be taken for ``g``)."""
    p = torch.nn.Parameter(torch.zeros(shape))
    q = torch.nn.Parameter(torch.ones(3))
    opt = proxopt.optimizer(name, [p, q], lr=0.1)
    p.grad, q.grad = torch.zeros(shape), torch.ones(3)
    opt.step()
    assert p.shape == shape
    ref = opt._transform(opt.param_groups[0]).forward(opt.state[q]["latent"], 1.0)
    torch.testing.assert_close(q.detach(), ref, rtol=0.0, atol=1e-6)  # the fast kernels: a few ulp


def test_grad_buffer_has_the_level_major_layout_of_the_softmax_dual():
    """The softmax dual and its gradient buffer are level-major; the base optimizer steps their contiguous views."""
    from proxopt.optim.mirror_descent import MirrorDescent

    for exact in (False, True):
        m = torch.nn.Linear(5, 4)
        opt = MirrorDescent(m.parameters(), mirror_map={"name": "softmax", "levels": "ternary"}, lr=1e-2,
                            exact_gradient=exact)
        m(torch.randn(3, 5)).sum().backward()
        opt.step()
        bufs = {k[1]: v for k, v in opt._workspace.items() if k[0] == "grad"}
        assert len(bufs) == 2
        for p, bt in zip(m.parameters(), opt.base_optimizer.param_groups[0]["params"]):
            lat = opt.state[p]["latent"]
            assert lat.shape == p.shape + (3,) and not lat.is_contiguous()
            assert bt.is_contiguous() and bt.shape == (3,) + p.shape and bt.data_ptr() == lat.data_ptr()
            assert bufs[p].stride() == lat.stride()
            for j in range(3):
                assert lat[..., j].is_contiguous()


# ------------------------------------------------ primal form: a change of beta keeps the model
def _primal_setup(name, seed=0, **kw):
    x, y = _problem()
    torch.manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(16, 3) * 0.5)
    return x, y, w, proxopt.optimizer(name, [w], lr=0.05, **kw)


def _grad_step(opt, w, x, y):
    opt.zero_grad()
    ((x @ w - y) ** 2).mean().backward()
    opt.step()


@pytest.mark.parametrize("name,kw", [("md-tanh", {}), ("md-softmax", {}), ("md-softmax", {"levels": "ternary"})])
def test_primal_beta_change_keeps_the_model_until_the_next_step(name, kw):
    """THEORY.md §5: the primal form keeps w when beta changes. The model's weights and the latents stay
    bit for bit (encoded at ``beta_encoded``); the next step re-encodes at the new beta
    (``theta * old / new``) before the base step, as the readable round trip does."""
    x, y, w, opt = _primal_setup(name, **kw)
    sched = proxopt.AnnealScheduler(opt, factor=2.0)
    _grad_step(opt, w, x, y)
    group = opt.param_groups[0]
    w0, th0 = w.detach().clone(), opt.state[w]["latent"].clone()
    assert group["beta_encoded"] == group["beta"] == 1.0
    sched.step()
    assert group["beta"] == 2.0 and group["beta_encoded"] == 1.0
    assert torch.equal(w.detach(), w0) and torch.equal(opt.state[w]["latent"], th0)
    opt.refresh()  # nothing to do for the primal form
    assert torch.equal(w.detach(), w0) and group["beta_encoded"] == 1.0
    assert "beta_encoded" not in opt.base_optimizer.param_groups[0]
    # the next step runs on P_2^{-1}(w) = theta / 2: the same step as a twin whose latent was re-encoded by hand
    x2, y2, w2, twin = _primal_setup(name, **kw)
    _grad_step(twin, w2, x2, y2)
    twin.param_groups[0]["beta"] = twin.param_groups[0]["beta_encoded"] = 2.0
    twin.state[w2]["latent"].mul_(0.5)
    assert torch.equal(w2.detach(), w0)  # the twin's forward uses the same kept w
    _grad_step(opt, w, x, y)
    _grad_step(twin, w2, x2, y2)
    assert group["beta_encoded"] == 2.0
    assert torch.equal(opt.state[w]["latent"], twin.state[w2]["latent"])
    assert torch.equal(w.detach(), w2.detach())


@pytest.mark.parametrize("name", ["md-tanh", "md-softmax"])
def test_primal_state_saved_between_a_beta_change_and_the_next_step_resumes_bitwise(name):
    x, y, w, opt = _primal_setup(name)
    sched = proxopt.AnnealScheduler(opt, factor=1.5)
    for _ in range(3):
        _grad_step(opt, w, x, y)
        sched.step()
    sd = copy.deepcopy(opt.state_dict())
    assert sd["param_groups"][0]["beta_encoded"] != sd["param_groups"][0]["beta"]
    _, _, w2, opt2 = _primal_setup(name, seed=5)
    opt2.load_state_dict(sd)
    assert torch.equal(w2.detach(), w.detach())  # the model's weights come back bit for bit
    for _ in range(3):
        _grad_step(opt, w, x, y)
        _grad_step(opt2, w2, x, y)
        assert torch.equal(w2.detach(), w.detach())
        assert torch.equal(opt2.state[w2]["latent"], opt.state[w]["latent"])


def test_primal_state_dict_without_beta_encoded_loads_at_beta():
    """State dicts saved before the primal form recorded its encoding hold latents encoded at ``beta``."""
    x, y, w, opt = _primal_setup("md-softmax", beta=2.0)
    _grad_step(opt, w, x, y)
    sd = copy.deepcopy(opt.state_dict())
    del sd["param_groups"][0]["beta_encoded"]
    _, _, w2, opt2 = _primal_setup("md-softmax", seed=5, beta=2.0)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["beta_encoded"] == 2.0
    assert torch.equal(w2.detach(), w.detach())


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "x"])
def test_invalid_beta_encoded_in_a_state_dict_raises_and_changes_nothing(bad):
    x, y, w, opt = _primal_setup("md-tanh")
    _grad_step(opt, w, x, y)
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["beta_encoded"] = bad
    _grad_step(opt, w, x, y)
    before = (w.detach().clone(), opt.state[w]["latent"].clone(), copy.deepcopy(opt.param_groups[0]["beta_encoded"]))
    with pytest.raises((ValueError, TypeError), match="beta_encoded"):
        opt.load_state_dict(sd)
    assert torch.equal(w.detach(), before[0]) and torch.equal(opt.state[w]["latent"], before[1])
    assert opt.param_groups[0]["beta_encoded"] == before[2]


@pytest.mark.parametrize("name", ["md-tanh", "md-softmax"])
def test_failed_step_after_a_beta_change_leaves_the_model_consistent(name):
    """A base step that raises after the latents were re-encoded at the new beta: the re-encoding is
    multiplied back (``beta_encoded`` as it was, the latents up to rounding) and the model projected from it,
    so ``p = P_{beta_encoded}(theta)`` holds and a resume reproduces it; the base state is untouched."""

    class Broken(torch.optim.Adam):
        def step(self, closure=None):
            raise RuntimeError("boom")

    x, y, w, opt = _primal_setup(name)
    opt.param_groups[0]["beta"] = 3.0
    base_before = copy.deepcopy(opt.base_optimizer.state_dict())
    latent_before, w_before = opt.state[w]["latent"].clone(), w.detach().clone()
    opt.base_optimizer.__class__ = Broken
    ((x @ w - y) ** 2).mean().backward()
    with pytest.raises(RuntimeError, match="boom"):
        opt.step()
    group = opt.param_groups[0]
    assert group["beta_encoded"] == 1.0 and group["beta"] == 3.0
    torch.testing.assert_close(opt.state[w]["latent"], latent_before, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(w.detach(), w_before, rtol=0.0, atol=1e-6)
    tr = opt._transform(group)
    torch.testing.assert_close(w.detach(), tr.forward(opt.state[w]["latent"], 1.0), rtol=0.0, atol=1e-6)
    base_after = opt.base_optimizer.state_dict()
    for k, st in base_after["state"].items():
        assert all(torch.equal(v, base_before["state"][k][n]) for n, v in st.items())
    sd = copy.deepcopy(opt.state_dict())
    opt.base_optimizer.__class__ = torch.optim.Adam
    _, _, w2, opt2 = _primal_setup(name, seed=5)
    opt2.load_state_dict(sd)
    assert torch.equal(w2.detach(), w.detach())
