"""The in-place kernels the optimizers run equal the readable reference maps bit for bit."""
import pytest
import torch

import proxopt
from proxopt import mirror_maps as mm
from proxopt import quantizers as qz

QUANTIZERS = [qz.Identity(), qz.Sign(), qz.Sign("ternary"), qz.Clip(), qz.Clip([-1.0, 0.5]), qz.Tanh(),
              qz.SignSwish(), qz.ApproxSign(), qz.LinearProx(), qz.LinearProx(jump=0.5), qz.LinearProx(2)]
MAPS = [mm.Tanh(), mm.Linear(), mm.ShiftedTanh()]


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
    for scratch in (None, torch.empty_like(th)):
        assert torch.equal(q.value_into(th, mu, torch.empty_like(th), scratch), q.value(th, mu))
        assert torch.equal(q.grad_into(th, g, mu, torch.empty_like(th), scratch), q.derivative(th, mu) * g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", MAPS, ids=repr)
def test_mirror_map_into_equals_reference(m, dtype):
    th, g = _theta(dtype)
    for beta in (1.0, 7.0, 1e4):
        assert torch.equal(m.to_primal_into(th, beta, torch.empty_like(th)), m.to_primal(th, beta))
        got = m.primal_grad_into(th, g, beta, torch.empty_like(th))
        assert torch.equal(got, m.primal_derivative(th, beta) * g)


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
    if name != "pq":
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
