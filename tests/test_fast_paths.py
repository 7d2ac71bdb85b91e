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
    torch.testing.assert_close(fast, ref, rtol=0.0, atol=32 * eps * max(1.0, float(ref.abs().max())))


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
