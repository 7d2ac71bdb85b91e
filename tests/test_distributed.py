"""proxopt under data parallelism: DDP, ZeroRedundancyOptimizer and FSDP2, on 2 CPU processes.

The latent-weight loop (THEORY.md §2) is elementwise in every parameter:

.. code-block:: text

    w = F(theta),   g = grad_w f(w),   theta <- BaseStep(theta, B'(theta) * g)

so data parallelism changes nothing as long as every rank sees the same
averaged gradient ``g``: with a mean-reduced loss, DDP's all-reduce (sum, then
divide by the world size) gives the gradient of the mean loss over the global
batch, and the ranks must end with identical weights and latents, equal to
one process training on the global batch. ZeRO shards the *optimizer* (each
rank runs a proxopt optimizer on its share of the parameters and broadcasts
the new weights); FSDP2 (``fully_shard``) shards the *parameters* (each rank
holds a ``DTensor`` shard, and its latents are shards of the same layout).

One group of two processes (gloo on 127.0.0.1, a free port) runs every check
and writes its results to a file; the tests below only read them, so the
processes start once per test session.

Exactness: both ranks hold the *same bits* (one all-reduce result / one
owner's broadcast), asserted with ``torch.equal``. Against one process on the
global batch the gradient is summed in a different order (two half-batch
means averaged vs one full-batch mean), so the comparison is ``allclose``
with float64 and a 1e-12 tolerance, not bitwise.

References:
    THEORY.md §2; [PC++] Lu et al., NeurIPS 2023; [MD] Ajanthan et al.,
    AISTATS 2021.
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
import traceback
from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch

import proxopt

WORLD = 2
STEPS = 4
#: float64 everywhere: the only difference to one process is the summation order of the gradient.
ATOL = 1e-12
RTOL = 1e-10

#: (id, constructor, keyword arguments): the configurations DDP and FSDP2 train.
CASES: Dict[str, Tuple[Callable[..., Any], Dict[str, Any]]] = {
    # soft forward and B' != 1 (the latent gradient is computed into the parameter's storage)
    "bnn++-adam": (lambda params, **kw: proxopt.optimizer("bnn++", params, **kw), {"lr": 0.05}),
    # primal mirror descent: theta is re-encoded from the primal point every step
    "md-tanh-sgd": (lambda params, **kw: proxopt.optimizer("md-tanh", params, **kw),
                    {"lr": 0.05, "base": torch.optim.SGD, "momentum": 0.9}),
    # multi-level: nearest-level rounding and a softmax dual with an extra dimension
    "pc-ternary-adam": (lambda params, **kw: proxopt.optimizer("pc", params, **kw),
                        {"lr": 0.05, "levels": "ternary", "mu": 2.0}),
    "md-softmax-s-adam": (lambda params, **kw: proxopt.optimizer("md-softmax-s", params, **kw),
                          {"lr": 0.05, "levels": "ternary", "beta": 2.0}),
    # scales alpha = mean |theta|: per tensor needs a reduction over all shards; per output channel
    # (rows, the dimension FSDP2 shards) is local to a shard
    "bc-scale-tensor": (lambda params, **kw: proxopt.optimizer("bc", params, **kw), {"lr": 0.05, "scale": "tensor"}),
    "bnn-scale-channel": (lambda params, **kw: proxopt.optimizer("bnn", params, **kw),
                          {"lr": 0.05, "scale": "channel"}),
    # no latent: ProxQuant's in-place prox (and its freeze) runs on each parameter's local shard
    "pq-adam": (lambda params, **kw: proxopt.optimizer("pq", params, **kw), {"lr": 0.05, "freeze_at": 3}),
    "pq-ternary-adam": (lambda params, **kw: proxopt.optimizer("pq", params, **kw),
                        {"lr": 0.05, "levels": "ternary"}),
}
DDP_CASES = ("bnn++-adam", "md-tanh-sgd", "md-softmax-s-adam")
FSDP_CASES = tuple(CASES)
#: ZeRO builds the optimizer class itself: ``optimizer_class(param_groups, **ZERO_KW)`` (BNN++).
ZERO_KW = {"forward": "signswish", "backward": "signswish", "mu": 2.0, "lr": 0.05}

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")


# ------------------------------------------------------------------ problem
def make_model() -> torch.nn.Module:
    """The same float64 MLP in every process (seeded)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()


def groups(model: torch.nn.Module) -> List[Dict[str, Any]]:
    """Weights quantized, biases kept in full precision (``quantize=False``)."""
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n.endswith("weight")]},
            {"params": [p for n, p in named if n.endswith("bias")], "quantize": False}]


def batch(step: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The global batch of a step (16 rows, rank ``r`` gets rows ``8r .. 8r+7``)."""
    g = torch.Generator().manual_seed(1000 + step)
    return (torch.randn(16, 6, generator=g, dtype=torch.float64),
            torch.randn(16, 2, generator=g, dtype=torch.float64))


def local(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    n = t.shape[0] // world
    return t[rank * n:(rank + 1) * n]


def loss_fn(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(x), y)  # mean-reduced


def latents_of(opt: Any, params: List[torch.Tensor]) -> List[torch.Tensor]:
    return [opt.state[p]["latent"] for p in params if "latent" in opt.state[p]]


def reference(make_opt: Callable[[torch.nn.Module], Any],
              steps: int = STEPS) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """One process on the global batch: the weights and latents the ranks must reach."""
    model = make_model()
    opt = make_opt(model)
    for s in range(steps):
        x, y = batch(s)
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()
    params = list(model.parameters())
    return [p.detach().clone() for p in params], [t.clone() for t in latents_of(opt, params)]


# ------------------------------------------------------------------- worker
def sync_projected(zero: Any, params: List[torch.Tensor]) -> None:
    """Every rank gets ``F(theta)`` of the parameters it does not own (proxopt.distributed.sync_zero)."""
    proxopt.distributed.sync_zero(zero, params)


def _train(model: Any, opt: Any, rank: int, steps: range) -> None:
    for s in steps:
        x, y = batch(s)
        opt.zero_grad()
        loss_fn(model, local(x, rank, WORLD), local(y, rank, WORLD)).backward()
        opt.step()


def _ddp(rank: int) -> Dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP
    out = {}
    for name in DDP_CASES:
        make, kw = CASES[name]
        model = make_model()
        ddp = DDP(model)
        opt = make(groups(model), **kw)
        _train(ddp, opt, rank, range(STEPS))
        params = list(model.parameters())
        out[name] = ([p.detach().clone() for p in params], [t.clone() for t in latents_of(opt, params)])
    return out


def _zero(rank: int, tmpdir: str) -> Dict[str, Any]:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    def build(model: torch.nn.Module, state: Any = None) -> Any:
        zero = ZeroRedundancyOptimizer(groups(model), optimizer_class=proxopt.ProxConnectPP, **ZERO_KW)
        if state is not None:
            zero.load_state_dict(state)
            zero.optim.refresh()  # model = F(theta) for the loaded latents (this rank's share)
        sync_projected(zero, list(model.parameters()))
        return zero

    out: Dict[str, Any] = {}
    model = make_model()
    ddp = DDP(model)
    zero = build(model)
    out["owned"] = sum(p.numel() for g in zero.optim.param_groups for p in g["params"])
    _train(ddp, zero, rank, range(STEPS // 2))
    # checkpoint at step STEPS // 2: the model, and the consolidated optimizer state on rank 0
    zero.consolidate_state_dict(to=0)
    if rank == 0:
        torch.save({"model": model.state_dict(), "opt": zero.state_dict()}, os.path.join(tmpdir, "zero.pt"))
    torch.distributed.barrier()
    _train(ddp, zero, rank, range(STEPS // 2, STEPS))
    out["params"] = [p.detach().clone() for p in model.parameters()]
    # resume: a new model, DDP and ZeRO, loading the consolidated checkpoint on every rank
    ck = torch.load(os.path.join(tmpdir, "zero.pt"), weights_only=True)
    out["saved_state_keys"] = sorted({k for v in ck["opt"]["state"].values() for k in v})
    model2 = make_model()
    model2.load_state_dict(ck["model"])
    ddp2 = DDP(model2)
    zero2 = build(model2, ck["opt"])
    _train(ddp2, zero2, rank, range(STEPS // 2, STEPS))
    out["resumed"] = [p.detach().clone() for p in model2.parameters()]
    mine = [p for g in zero2.optim.param_groups if g["quantize"] for p in g["params"]]
    base = {id(t) for g in zero2.optim.base_optimizer.param_groups for t in g["params"]}
    out["resumed_aliased"] = all(id(zero2.optim.state[p]["latent"]) in base for p in mine)
    # add_param_group after construction (ZeRO re-partitions and forwards the group to its owner)
    model3 = make_model()
    ddp3 = DDP(model3)
    first, second = list(model3[0].parameters()), list(model3[2].parameters())
    zero3 = ZeroRedundancyOptimizer(first, optimizer_class=proxopt.ProxConnectPP, **ZERO_KW)
    zero3.add_param_group({"params": second, "lr": 0.01})
    sync_projected(zero3, first + second)
    _train(ddp3, zero3, rank, range(2))
    out["added"] = [p.detach().clone() for p in model3.parameters()]
    out["added_groups"] = [len(g["params"]) for g in zero3.optim.param_groups]
    return out


def _fsdp(rank: int) -> Dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (WORLD,))
    out: Dict[str, Any] = {}
    for name in FSDP_CASES:
        make, kw = CASES[name]
        try:
            model = make_model()
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            params = list(model.parameters())
            opt = make(groups(model), **kw)
            lat_types = sorted({type(t).__name__ for t in latents_of(opt, params)})
            _train(model, opt, rank, range(STEPS))
            full = [p.detach().full_tensor() for p in params]
            lats = [t.full_tensor() for t in latents_of(opt, params)]
            out[name] = (full, lats, lat_types)
        except Exception:  # recorded for the test to report; both ranks fail alike (no collective pending)
            out[name] = traceback.format_exc()
    return out


def _worker(rank: int, world: int, port: int, tmpdir: str) -> None:
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world, timeout=datetime.timedelta(seconds=60))
    results: Dict[str, Any] = {}
    try:
        for key, fn in (("ddp", lambda: _ddp(rank)), ("zero", lambda: _zero(rank, tmpdir)),
                        ("fsdp", lambda: _fsdp(rank))):
            try:
                results[key] = fn()
            except Exception:
                results[key] = traceback.format_exc()
            torch.distributed.barrier()
    finally:
        torch.save(results, os.path.join(tmpdir, f"rank{rank}.pt"))
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> List[Dict[str, Any]]:
    """Run the 2-process group once; the results of rank 0 and rank 1.

    ``fork`` where available: the children inherit the imported modules
    (DDP imports ``torch._dynamo`` on first use, several seconds per process;
    imported here once, before the fork); ``spawn`` elsewhere.
    """
    import torch._dynamo  # noqa: F401  (DDP's lazy import, paid once in the parent)
    import torch.distributed.fsdp  # noqa: F401
    import torch.distributed.optim  # noqa: F401
    import torch.multiprocessing as mp
    tmpdir = str(tmp_path_factory.mktemp("dist"))
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(WORLD, _free_port(), tmpdir), nprocs=WORLD, join=True, start_method=method)
    return [torch.load(os.path.join(tmpdir, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


def _section(ranks: List[Dict[str, Any]], key: str) -> List[Any]:
    out = [r[key] for r in ranks]
    for r, o in enumerate(out):
        assert not isinstance(o, str), f"{key} failed on rank {r}:\n{o}"
    return out


def _assert_same_bits(a: List[torch.Tensor], b: List[torch.Tensor], what: str) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x, y), f"{what} {i} differs between the ranks (max {float((x - y).abs().max())})"


def _assert_close(got: List[torch.Tensor], want: List[torch.Tensor], what: str) -> None:
    assert len(got) == len(want)
    for i, (x, y) in enumerate(zip(got, want)):
        assert x.dtype == y.dtype and x.shape == y.shape, (what, i, x.dtype, y.dtype, x.shape, y.shape)
        torch.testing.assert_close(x, y, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what} {i}: {m}")


# -------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", DDP_CASES)
def test_ddp_ranks_agree_and_match_one_process(ranks: List[Dict[str, Any]], name: str) -> None:
    r0, r1 = (d[name] for d in _section(ranks, "ddp"))
    _assert_same_bits(r0[0], r1[0], "parameter")
    _assert_same_bits(r0[1], r1[1], "latent")
    make, kw = CASES[name]
    params, lats = reference(lambda m: make(groups(m), **kw))
    _assert_close(r0[0], params, "parameter")
    _assert_close(r0[1], lats, "latent")
    assert len(lats) == 2  # the two weight matrices have latents, the biases do not


def test_zero_shards_and_matches_one_process(ranks: List[Dict[str, Any]]) -> None:
    z0, z1 = _section(ranks, "zero")
    total = sum(p.numel() for p in make_model().parameters())
    assert z0["owned"] + z1["owned"] == total and min(z0["owned"], z1["owned"]) > 0  # really sharded
    _assert_same_bits(z0["params"], z1["params"], "parameter")
    params, _ = reference(lambda m: proxopt.ProxConnectPP(groups(m), **ZERO_KW))
    _assert_close(z0["params"], params, "parameter")


def test_zero_add_param_group(ranks: List[Dict[str, Any]]) -> None:
    z0, z1 = _section(ranks, "zero")
    _assert_same_bits(z0["added"], z1["added"], "parameter")

    def make(model: torch.nn.Module) -> Any:
        opt = proxopt.ProxConnectPP(list(model[0].parameters()), **ZERO_KW)
        opt.add_param_group({"params": list(model[2].parameters()), "lr": 0.01})
        return opt

    params, _ = reference(make, steps=2)
    _assert_close(z0["added"], params, "parameter")


def test_zero_consolidated_state_dict_resumes(ranks: List[Dict[str, Any]]) -> None:
    """Consolidate at step k, load into a fresh ZeRO, continue: equal to the uninterrupted run, bit for bit.

    ZeroRedundancyOptimizer consolidates only ``state`` and ``param_groups``
    (re-indexed per parameter) and loads by assigning
    ``optim.state[param] = saved_entry``: proxopt's base-optimizer state and
    the identity of each latent with the base optimizer's parameter must
    survive that.
    """
    z0, z1 = _section(ranks, "zero")
    assert "latent" in z0["saved_state_keys"]  # the consolidated per-parameter state carries the latents
    for z in (z0, z1):
        assert z["resumed_aliased"], "after ZeRO's load_state_dict the base optimizer no longer steps the latents"
    _assert_same_bits(z0["resumed"], z1["resumed"], "parameter")
    _assert_same_bits(z0["resumed"], z0["params"], "resumed vs uninterrupted parameter")


@pytest.mark.parametrize("name", FSDP_CASES)
def test_fsdp2_shards_latents_and_matches_one_process(ranks: List[Dict[str, Any]], name: str) -> None:
    """FSDP2 (``fully_shard``): latents are DTensor shards; per-shard elementwise math is exact."""
    f0, f1 = (d[name] for d in _section(ranks, "fsdp"))
    for r, f in enumerate((f0, f1)):
        assert not isinstance(f, str), f"FSDP2 with {name} failed on rank {r}:\n{f}"
    assert f0[2] == ([] if name.startswith("pq") else ["DTensor"])  # latents are sharded like the parameters
    _assert_same_bits(f0[0], f1[0], "parameter")
    make, kw = CASES[name]
    params, lats = reference(lambda m: make(groups(m), **kw))
    _assert_close(f0[0], params, "parameter")
    _assert_close(f0[1], lats, "latent")
