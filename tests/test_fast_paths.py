"""The in-place kernels the optimizers run equal the readable reference maps.

Bit for bit, except the tanh and sign-Swish kernels, which go through ``sigmoid`` (much faster on CPU) and
agree to a few ulp of the map's peak value.
"""
import pytest
import torch

import proxopt
from proxopt import mirror_maps as mm
from proxopt import quantizers as qz

QUANTIZERS = [qz.Identity(), qz.Sign(), qz.Sign("ternary"), qz.Clip(), qz.Clip([-1.0, 0.5]), qz.Tanh(),
              qz.SignSwish(), qz.ApproxSign(), qz.LinearProx(), qz.LinearProx(jump=0.5), qz.LinearProx(2)]
MAPS = [mm.Tanh(), mm.Linear(), mm.ShiftedTanh()]
VIA_SIGMOID = (qz.Tanh, qz.SignSwish, mm.Tanh)


def _same(fast, ref, approx):
    if not approx:
        assert torch.equal(fast, ref)
        return
    eps = torch.finfo(ref.dtype).eps
    peak = float(ref.abs().max()) if ref.numel() else 1.0
    torch.testing.assert_close(fast, ref, rtol=0.0, atol=32 * eps * max(1.0, peak))


def _theta(dtype):
    g = torch.Generator().manual_seed(0)
    th = torch.randn(2000, generator=g, dtype=dtype) * 3
    th[:6] = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.5, 1e-30], dtype=dtype)
    return th, torch.randn(2000, generator=g, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("q", QUANTIZERS, ids=repr)
@pytest.mark.parametrize("mu", [1.0, 3.0, 1e4])
def test_quantizer_into_equals_reference(q, mu, dtype):
    th, g = _theta(dtype)
    approx = isinstance(q, VIA_SIGMOID)
    for scratch in (None, torch.empty_like(th)):
        _same(q.value_into(th, mu, torch.empty_like(th), scratch), q.value(th, mu), approx)
        _same(q.grad_into(th, g, mu, torch.empty_like(th), scratch), q.derivative(th, mu) * g, approx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", MAPS, ids=repr)
def test_mirror_map_into_equals_reference(m, dtype):
    th, g = _theta(dtype)
    approx = isinstance(m, VIA_SIGMOID)
    for beta in (1.0, 7.0, 1e4):
        _same(m.to_primal_into(th, beta, torch.empty_like(th)), m.to_primal(th, beta), approx)
        got = m.primal_grad_into(th, g, beta, torch.empty_like(th))
        _same(got, m.primal_derivative(th, beta) * g, approx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", ["binary", "ternary", [-1.0, 0.2, 0.5, 2.0]])
def test_softmax_into_matches_reference(levels, dtype):
    m = mm.Softmax(levels)
    th = torch.randn(500, len(m.levels), dtype=dtype, generator=torch.Generator().manual_seed(1)) * 3
    for beta in (1.0, 30.0):
        _same(m.to_primal_into(th, beta, torch.empty(500, dtype=dtype)), m.to_primal(th, beta), True)


@pytest.mark.parametrize("name", proxopt.available())
def test_step_leaves_gradients_alone(name):
    """The parameter storage serves as the latent-gradient buffer; p.grad itself is never modified."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 3)
    opt = proxopt.optimizer(name, lin.parameters(), lr=0.1)
    lin(torch.randn(4, 6)).pow(2).sum().backward()
    grads = [p.grad.clone() for p in lin.parameters()]
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(lin.parameters(), grads))
    if isinstance(opt, proxopt.LatentOptimizer):
        for p in lin.parameters():
            assert opt.state[p]["latent"].grad is None


@pytest.mark.parametrize("name", ["bnn", "bnn++", "gd-tanh"])
def test_failed_base_step_restores_weights(name):
    """If the base optimizer raises mid-step, the weights used as gradient buffers are restored."""

    class Broken(torch.optim.SGD):
        def step(self, closure=None):
            raise RuntimeError("boom")

    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 3)
    opt = proxopt.optimizer(name, lin.parameters(), lr=0.1, base=Broken)
    before = [p.detach().clone() for p in lin.parameters()]
    lin(torch.randn(4, 6)).pow(2).sum().backward()
    with pytest.raises(RuntimeError, match="boom"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(lin.parameters(), before))


# ------------------------------------------------------------- kernel edge cases (pass-count rewrites)


def _bits(t):
    return t.view(torch.int64 if t.dtype == torch.float64 else torch.int32)


def _edges(dtype, levels=(-1.0, 1.0)):
    """Zeros of both signs, tiny and huge values, infinities, each level and its two neighbours."""
    vals = [0.0, -0.0, 1e-30, -1e-30, 1e-45, -1e-45, 3e38, -3e38, float("inf"), float("-inf"), 0.5, -0.5]
    t = torch.tensor(vals + list(levels), dtype=dtype)
    lv = torch.tensor(levels, dtype=dtype)
    near = torch.cat([torch.nextafter(lv, lv - 1), torch.nextafter(lv, lv + 1)])
    g = torch.Generator().manual_seed(3)
    return torch.cat([t, near, torch.randn(300, generator=g, dtype=dtype) * 2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binary_sign_kernel_is_exact_at_zero_and_nan(dtype):
    """sign(±0) = +1 (never -1 for -0.0), NaN -> -1, as levels.nearest; same bits; out may be theta."""
    th = torch.cat([_edges(dtype), torch.tensor([float("nan")], dtype=dtype)])
    out = qz.Sign().value_into(th, 1.0, torch.empty_like(th))
    assert torch.equal(_bits(out), _bits(proxopt.levels.nearest(th, (-1.0, 1.0))))
    assert out[1].item() == 1.0 and out[-1].item() == -1.0
    x = th.clone()
    assert qz.sign_into(x, x) is x and torch.equal(x, out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [(-1.0, 1.0), (-1.0, 0.5), (-0.3, 0.7), (-1.0, 0.0, 1.0)])
def test_clip_gradient_mask_is_the_closed_interval(levels, dtype):
    """The one-pass hardtanh_backward mask keeps exactly q_1 <= theta <= q_d (q's rounded to the dtype)."""
    q = qz.Clip(list(levels))
    th = _edges(dtype, levels)
    g = torch.linspace(-3.0, 2.0, th.numel(), dtype=dtype)
    out = q.grad_into(th, g, 1.0, torch.full_like(th, float("nan")))
    assert torch.equal(out, q.derivative(th) * g)
    lo, hi = torch.tensor(levels[0], dtype=dtype), torch.tensor(levels[-1], dtype=dtype)
    kept = out != 0
    assert torch.equal(kept, (th >= lo) & (th <= hi) & (g != 0))


@pytest.mark.parametrize("q", QUANTIZERS, ids=repr)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2)])
def test_quantizer_kernels_on_scalar_and_empty(q, shape):
    th = torch.full(shape, -0.25) if shape == () else torch.empty(shape)
    g = torch.ones_like(th)
    approx = isinstance(q, VIA_SIGMOID)
    s = torch.empty_like(th)
    _same(q.value_into(th, 2.0, torch.empty_like(th), s), q.value(th, 2.0), approx)
    _same(q.grad_into(th, g, 2.0, torch.empty_like(th), s), q.derivative(th, 2.0) * g, approx)


def test_multilevel_sign_kernel_writes_non_contiguous_out():
    th = torch.randn(6, 5, generator=torch.Generator().manual_seed(4)) * 2
    out = torch.empty(5, 6).t()
    q = qz.Sign("ternary")
    assert q.value_into(th, 1.0, out) is out and torch.equal(out, q.value(th))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mu", [0.5, 1.0, 7.0])
def test_sigmoid_kernel_near_its_cut_and_at_extremes(mu, dtype):
    """sigma(mu theta) in one pass: within 2 ulp of torch.sigmoid, 1 past the cut, finite at +-inf."""
    z = torch.cat([torch.linspace(-60.0, 60.0, 2401, dtype=dtype),
                   torch.tensor([39.999, 40.0, 40.001, 1e30, -1e30, float("inf"), float("-inf")], dtype=dtype)])
    th = z / mu
    got = qz.sigmoid_into(th, mu, torch.empty_like(th))
    ref = torch.sigmoid(th * mu)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=2 * torch.finfo(dtype).eps, atol=0.0)
    scaled = qz.sigmoid_into(th, mu, torch.empty_like(th), scale=2.0)
    torch.testing.assert_close(scaled, 2 * ref, rtol=2 * torch.finfo(dtype).eps, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [(-1.0, 1.0), (-1.0, 0.0, 1.0), (-1.0, 0.2, 0.5, 2.0), (-0.7, 0.1, 0.3)])
@pytest.mark.parametrize("amount", [0.0, 1e-40, 1e-4, 0.0123, 0.3, 5.0])
def test_in_place_prox_is_bit_identical(amount, levels, dtype):
    """ProxQuant's in-place prox (four passes for binary) has the reference's bits, signs of zero included."""
    from proxopt.optim.proxquant import prox_to_levels, prox_to_levels_, round_

    x = _edges(dtype, levels)
    x = torch.cat([x, x * 1e-3, x + 0.4])
    ref = prox_to_levels(x, levels, amount)
    y = x.clone()
    assert prox_to_levels_(y, levels, amount, torch.empty_like(y)) is y
    assert torch.equal(_bits(y), _bits(ref))
    r = x.clone()
    assert round_(r, levels) is r
    assert torch.equal(_bits(r), _bits(proxopt.levels.nearest(x, levels)))


def test_proxquant_steps_match_the_reference_prox():
    """Several ProxQuant steps (SGD base) equal base step + prox_to_levels done by hand; freeze rounds."""
    from proxopt.optim.proxquant import prox_to_levels

    g = torch.Generator().manual_seed(5)
    for levels in ("binary", "ternary"):
        w = torch.nn.Parameter(torch.randn(40, generator=g))
        ref = w.detach().clone()
        opt = proxopt.ProxQuant([w], reg=0.01, levels=levels, freeze_at=4, lr=0.1, base=torch.optim.SGD)
        lv = proxopt.levels.make_levels(levels)
        for t in range(1, 6):
            grad = torch.randn(40, generator=g)
            w.grad = grad.clone()
            opt.step()
            ref = ref.add(grad, alpha=-0.1)  # as SGD
            ref = proxopt.levels.nearest(ref, lv) if t >= 4 else prox_to_levels(ref, lv, 0.1 * 0.01 * t)
            assert torch.equal(w.detach(), ref)


def test_constants_are_not_cached_under_fake_tensors():
    """Tracing with fake tensors must not leave a fake constant in the kernels' cache (eager calls still work)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        qz.Tanh().value_into(torch.randn(4), 1.0, torch.empty(4))
    th = torch.tensor([0.0, 1.0, -2.0, 0.5])
    _same(qz.Tanh().value_into(th, 1.0, torch.empty(4)), qz.Tanh().value(th, 1.0), True)
    assert torch.equal(qz.sign_into(th, torch.empty(4)), torch.tensor([1.0, 1.0, -1.0, 1.0]))
