"""``torch.compile`` with proxopt optimizers.

proxopt writes ``F(theta)`` into the parameters *in place* (``p.copy_``, or
in-place kernels into ``p``'s storage): the parameters keep their identity,
storage, shape, dtype and strides, so a compiled model's guards stay valid
and its graph is compiled once, then reused every step. A counting backend
(a ``torch.compile`` backend is any callable ``(GraphModule, inputs)``;
this one counts the graphs Dynamo hands it and runs them eagerly) checks
that; ``aot_eager`` (AOTAutograd forward/backward graphs) checks the numbers
against eager mode.

``torch.compile(opt.step)`` works too. The step graph-breaks where proxopt
needs a host value (the non-finite gradient check reads one boolean per step;
``mu``/``beta`` are Python floats), so it compiles into a few graphs: two on
the first steps (the base optimizer's state is created on the first), none
after. The results equal eager mode bit for bit with SGD. (Compiled Adam
differs from eager Adam by ~3e-7 in float32 in torch itself, with or without
proxopt.)

The inductor backend (C++ codegen) is not exercised here: a cold compile
takes about 35 s on a 2-core CPU; the graphs it gets are the same ones.

References:
    THEORY.md §2 (the update writes ``w = F(theta)`` into the model).
"""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

import pytest
import torch

import proxopt

pytestmark = pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile needs torch >= 2.0")


class CountingBackend:
    """A ``torch.compile`` backend that records each graph it is given and runs it eagerly."""

    def __init__(self) -> None:
        self.graphs: List[int] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        self.graphs.append(len(gm.graph.nodes))
        return gm.forward


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def data(step: int) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(32, 8, generator=g), torch.randn(32, 2, generator=g)


def train(name: str, compile_with: Any = None, steps: int = 5, **kw: Any) -> Tuple[List[torch.Tensor], List[int]]:
    model = mlp()
    run = model if compile_with is None else torch.compile(model, backend=compile_with)
    opt = proxopt.optimizer(name, model.parameters(), lr=0.05, **kw)
    ptrs = [p.data_ptr() for p in model.parameters()]
    for s in range(steps):
        x, y = data(s)
        opt.zero_grad()
        torch.nn.functional.mse_loss(run(x), y).backward()
        opt.step()
    assert [p.data_ptr() for p in model.parameters()] == ptrs  # written in place
    return [p.detach().clone() for p in model.parameters()], ptrs


@pytest.mark.parametrize("name", ["bnn++", "md-softmax-s"])
def test_compiled_model_compiles_once_and_equals_eager(name: str) -> None:
    """bnn++ computes B' into the parameters' storage during the step; md-softmax-s has a dual of shape (..., d)."""
    torch._dynamo.reset()
    backend = CountingBackend()
    compiled, _ = train(name, backend)
    assert len(backend.graphs) == 1, backend.graphs  # no recompilation after the first step
    eager, _ = train(name)
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)


def test_compiled_model_aot_eager_equals_eager() -> None:
    """Forward and backward traced by AOTAutograd give the eager numbers, bit for bit."""
    torch._dynamo.reset()
    compiled, _ = train("md-tanh-s", "aot_eager")
    eager, _ = train("md-tanh-s")
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)


def test_compiled_optimizer_step_equals_eager_and_stops_compiling() -> None:
    def run(compiled: bool) -> Tuple[List[torch.Tensor], List[int]]:
        torch.manual_seed(0)
        lin = torch.nn.Linear(8, 4)
        opt = proxopt.optimizer("bc", [{"params": [lin.weight]}, {"params": [lin.bias], "quantize": False}],
                                lr=0.05, base=torch.optim.SGD, momentum=0.9)
        backend = CountingBackend()
        step = torch.compile(opt.step, backend=backend) if compiled else opt.step
        counts = []
        for s in range(4):
            x, y = data(s)
            opt.zero_grad()
            torch.nn.functional.mse_loss(lin(x), y[:, :1].expand(-1, 4)).backward()
            step()
            counts.append(len(backend.graphs))
        state = [opt.state[lin.weight]["latent"].clone()]
        return [p.detach().clone() for p in lin.parameters()] + state, counts

    torch._dynamo.reset()
    compiled, counts = run(True)
    eager, _ = run(False)
    assert counts[0] > 0 and counts[1] == counts[2] == counts[3], counts  # no recompiles once warmed up
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)
    assert bool(compiled[0].abs().eq(1).all())  # the model holds sign(theta)
