"""Checkpoint and resume in a fresh interpreter; loading into the wrong model or configuration.

A checkpoint is ``model.state_dict()`` (the primal weights ``w = F(theta)``),
``opt.state_dict()`` (latents ``theta``, the base optimizer's state, the
param groups with the current ``lr`` and ``mu``/``beta``), an LR scheduler's
and an :class:`proxopt.AnnealScheduler`'s state. Saved at step ``k`` and
loaded with ``torch.load(..., weights_only=True)`` by a *new* Python process,
training continues bit for bit as if it had never stopped: the test compares
every saved tensor of the resumed run with the uninterrupted one.

A state dict saved by another optimizer, base optimizer, quantizer, level
set, scale mode, group layout or model raises ``ValueError`` and leaves the
optimizer and the model exactly as they were.

References:
    THEORY.md §2 (the latents live in the optimizer state), §6 (annealing).
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from typing import Any, Dict, List

import pytest
import torch

import proxopt
from optim_db import assert_same

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K, N = 3, 6  # checkpoint after step K, train to step N

#: The training script both processes run. Phase ``first`` trains to K, saves the checkpoint, and goes on to N
#: (the uninterrupted run); phase ``resume`` builds everything afresh (other seed), loads the checkpoint and
#: trains from K to N. Each configuration exercises a different optimizer / base / LR scheduler / anneal mode.
SCRIPT = textwrap.dedent(r'''
    import sys, torch, proxopt
    torch.set_num_threads(1)
    phase, out = sys.argv[1], sys.argv[2]
    K, N = int(sys.argv[3]), int(sys.argv[4])

    def groups(model):
        named = list(model.named_parameters())
        return [{"params": [p for n, p in named if n.endswith("weight")]},
                {"params": [p for n, p in named if n.endswith("bias")], "quantize": False, "lr": 0.01}]

    CONFIGS = {
        "bnn++": dict(make=lambda g: proxopt.optimizer("bnn++", g, lr=0.05),
                      lr=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
                      anneal=lambda o: proxopt.AnnealScheduler(o, factor=1.5, every=1)),
        "md-tanh": dict(make=lambda g: proxopt.optimizer("md-tanh", g, lr=0.05, base=torch.optim.SGD, momentum=0.9),
                        lr=lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9),
                        anneal=lambda o: proxopt.AnnealScheduler(o, final=100.0, total_steps=N)),
        "md-softmax-s": dict(make=lambda g: proxopt.optimizer("md-softmax-s", g, levels="ternary", lr=0.05,
                                                              base=torch.optim.AdamW, weight_decay=0.01),
                             lr=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=N),
                             anneal=lambda o: proxopt.AnnealScheduler(o, factor=2.0, every=2, max_value=5.0)),
        "md-softmax": dict(make=lambda g: proxopt.optimizer("md-softmax", g, lr=0.05),
                           lr=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.7),
                           anneal=lambda o: proxopt.AnnealScheduler(o, factor=1.3, every=1)),
        "pc": dict(make=lambda g: proxopt.optimizer("pc", g, levels="ternary", lr=0.05),
                   lr=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.8),
                   anneal=lambda o: proxopt.AnnealScheduler(o, cumulative=20.0)),
        "pq": dict(make=lambda g: proxopt.optimizer("pq", g, lr=0.05, mu=0.05),
                   lr=lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.95),
                   anneal=lambda o: proxopt.AnnealScheduler(o, factor=1.2)),
        "bc-bf16": dict(make=lambda g: proxopt.optimizer("bc", g, lr=0.05, scale="channel"),
                        lr=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
                        anneal=lambda o: proxopt.AnnealScheduler(o, factor=1.1), dtype=torch.bfloat16),
    }

    def build(cfg, seed):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
        model = model.to(cfg.get("dtype", torch.float32))
        opt = cfg["make"](groups(model))
        return model, opt, cfg["lr"](opt), cfg["anneal"](opt)

    def train(model, opt, lr, anneal, steps):
        dtype = next(model.parameters()).dtype
        for s in steps:
            g = torch.Generator().manual_seed(100 + s)
            x, y = torch.randn(32, 6, generator=g).to(dtype), torch.randn(32, 3, generator=g)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x).float(), y).backward()
            opt.step(); lr.step(); anneal.step()

    def everything(model, opt, lr, anneal):
        return {"model": model.state_dict(), "opt": opt.state_dict(), "lr": lr.state_dict(),
                "anneal": anneal.state_dict()}

    for name, cfg in CONFIGS.items():
        if phase == "first":
            model, opt, lr, anneal = build(cfg, seed=0)
            train(model, opt, lr, anneal, range(K))
            torch.save(everything(model, opt, lr, anneal), f"{out}/ckpt-{name}.pt")
            train(model, opt, lr, anneal, range(K, N))
            torch.save(everything(model, opt, lr, anneal), f"{out}/uninterrupted-{name}.pt")
        else:
            model, opt, lr, anneal = build(cfg, seed=123)  # other initial weights: the checkpoint must win
            ck = torch.load(f"{out}/ckpt-{name}.pt", weights_only=True)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            lr.load_state_dict(ck["lr"])
            anneal.load_state_dict(ck["anneal"])
            train(model, opt, lr, anneal, range(K, N))
            torch.save(everything(model, opt, lr, anneal), f"{out}/resumed-{name}.pt")
''')
NAMES = ("bnn++", "md-tanh", "md-softmax-s", "md-softmax", "pc", "pq", "bc-bf16")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Run phase ``first`` and phase ``resume`` in two fresh interpreters; the output folder."""
    out = tmp_path_factory.mktemp("ckpt")
    script = out / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    for phase in ("first", "resume"):
        proc = subprocess.run([sys.executable, str(script), phase, str(out), str(K), str(N)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"phase {phase} failed:\n{proc.stderr}"
    return str(out)


@pytest.mark.parametrize("name", NAMES)
def test_resume_in_a_fresh_process_is_bitwise_identical(runs: str, name: str) -> None:
    full = torch.load(os.path.join(runs, f"uninterrupted-{name}.pt"), weights_only=True)
    resumed = torch.load(os.path.join(runs, f"resumed-{name}.pt"), weights_only=True)
    ck = torch.load(os.path.join(runs, f"ckpt-{name}.pt"), weights_only=True)
    assert_same(full, resumed)
    # the run really moved on after the checkpoint (the comparison is not vacuous)
    assert any(not torch.equal(full["model"][k], ck["model"][k]) for k in full["model"])
    assert full["anneal"]["last_step"] == N and ck["anneal"]["last_step"] == K


def test_checkpoint_latents_are_fp32_for_bf16_params(runs: str) -> None:
    ck = torch.load(os.path.join(runs, "ckpt-bc-bf16.pt"), weights_only=True)
    assert ck["model"]["0.weight"].dtype == torch.bfloat16
    lat = [v["latent"] for v in ck["opt"]["state"].values() if "latent" in v]
    assert lat and all(t.dtype == torch.float32 for t in lat)


# ---------------------------------------------------------- mismatches
def mlp(hidden: int = 12, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 3))


def two_groups(model: torch.nn.Module) -> List[Dict[str, Any]]:
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n.endswith("weight")]},
            {"params": [p for n, p in named if n.endswith("bias")], "quantize": False}]


def trained(make: Any, model: torch.nn.Module, steps: int = 2) -> Any:
    opt = make(model)
    for s in range(steps):
        g = torch.Generator().manual_seed(s)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(torch.randn(8, 6, generator=g)), torch.randn(8, 3, generator=g)).backward()
        opt.step()
    return opt


def frozen_copy(model: torch.nn.Module, opt: Any) -> Dict[str, Any]:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def saved(make: Any, hidden: int = 12) -> Dict[str, Any]:
    """A state dict (through torch.save / weights_only load) of an optimizer trained 2 steps."""
    model = mlp(hidden)
    return frozen_copy(model, trained(make, model))["opt"]


def p(name: str, **kw: Any) -> Any:
    kw.setdefault("lr", 0.05)
    return lambda model: proxopt.optimizer(name, two_groups(model), **kw)


MISMATCHES = {
    # (saved by, loaded into, hidden size of the loading model)
    "other optimizer class": (p("bc"), p("md-tanh-s"), 12),
    "other backward quantizer": (p("bnn"), p("bnn+"), 12),
    "other forward quantizer": (p("bnn+"), p("bnn++"), 12),
    "other base optimizer": (p("bc"), p("bc", base=torch.optim.SGD, momentum=0.9), 12),
    "other level set": (p("pc", levels="ternary"), p("pc"), 12),
    "other softmax levels": (p("md-softmax-s", levels="ternary"), p("md-softmax-s", levels=2), 12),
    "other mirror-descent form": (p("md-tanh"), p("md-tanh-s"), 12),
    "other scale mode": (p("bc", scale="tensor"), p("bc"), 12),
    "proxquant levels": (p("pq", levels="ternary"), p("pq"), 12),
    "other group layout": (p("bc"), lambda m: proxopt.optimizer("bc", m.parameters(), lr=0.05), 12),
    "quantized vs full-precision group": (
        p("bc"), lambda m: proxopt.optimizer("bc", [dict(g, quantize=True) for g in two_groups(m)], lr=0.05), 12),
    "other model (shapes)": (p("bnn++"), p("bnn++"), 10),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_loading_a_mismatched_state_dict_raises_and_changes_nothing(case: str) -> None:
    save_with, load_with, hidden = MISMATCHES[case]
    sd = saved(save_with)
    model = mlp(hidden, seed=7)
    opt = trained(load_with, model)
    before = frozen_copy(model, opt)
    with pytest.raises(ValueError, match="Invalid state_dict"):
        opt.load_state_dict(sd)
    assert_same(before, frozen_copy(model, opt))
    # the optimizer is still usable and consistent: one more step works
    trained(lambda m: opt, model, steps=1)


def test_loading_a_nonfinite_latent_raises_and_changes_nothing() -> None:
    sd = saved(p("md-tanh-s"))
    first = min(k for k, v in sd["state"].items() if "latent" in v)
    sd["state"][first]["latent"][0, 0] = float("nan")
    model = mlp(seed=3)
    opt = trained(p("md-tanh-s"), model)
    before = frozen_copy(model, opt)
    with pytest.raises(ValueError, match="not finite"):
        opt.load_state_dict(sd)
    assert_same(before, frozen_copy(model, opt))


def test_loading_a_foreign_dict_raises() -> None:
    model = mlp()
    opt = proxopt.optimizer("bc", two_groups(model), lr=0.05)
    before = frozen_copy(model, opt)
    adam = torch.optim.Adam(mlp().parameters())
    with pytest.raises(ValueError, match="Invalid state_dict"):
        opt.load_state_dict(adam.state_dict())
    with pytest.raises(ValueError, match="Invalid state_dict"):
        opt.load_state_dict({"weights": 1})
    assert_same(before, frozen_copy(model, opt))


def test_anneal_scheduler_state_for_another_key_raises() -> None:
    md = proxopt.AnnealScheduler(proxopt.optimizer("md-tanh-s", mlp().parameters(), lr=0.1), factor=1.1)
    pc = proxopt.AnnealScheduler(proxopt.optimizer("pc", mlp().parameters(), lr=0.1), factor=1.1)
    md.step()
    before = dict(pc.state_dict())
    with pytest.raises(ValueError, match="Invalid state_dict"):
        pc.load_state_dict(md.state_dict())
    assert pc.state_dict() == before


def test_loaded_latents_are_copies_not_aliases_of_the_checkpoint() -> None:
    """Mutating the loaded dict's latents afterwards does not touch the optimizer."""
    sd = saved(p("bnn++"))
    model = mlp(seed=4)
    opt = proxopt.optimizer("bnn++", two_groups(model), lr=0.05)
    opt.load_state_dict(sd)
    after = frozen_copy(model, opt)
    for v in sd["state"].values():
        for t in v.values():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim():
                t.add_(1.0)
    assert_same(after, frozen_copy(model, opt))


# ------------------------------------------------- the level-major softmax dual
@pytest.mark.parametrize("name,kw", [("md-softmax-s", {"levels": "ternary"}), ("md-softmax", {"levels": (-1.0, 0.5)}),
                                     ("md-softmax-s", {"levels": (-1.0, 0.5), "base": torch.optim.SGD,
                                                       "momentum": 0.9})])
def test_softmax_dual_state_is_saved_in_the_latent_shape_and_resumes(name: str, kw: Dict[str, Any]) -> None:
    """The base optimizer steps the dual's level-major ``(d, ...)`` view; its state is saved as ``(..., d)``.

    Includes a weight of shape ``(3,)`` with ``d = 3`` (latent ``(3, 3)``: the two layouts share a shape),
    and a state dict whose base state was made contiguous ``(..., d)`` (as an older proxopt saved it).
    """
    def make(model):
        named = list(model.named_parameters())
        return proxopt.optimizer(name, [{"params": [q for n, q in named if n.endswith("weight") or n == "1.bias"]},
                                        {"params": [q for n, q in named if n == "0.bias"], "quantize": False}],
                                 lr=0.05, **kw)

    def model_(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Linear(12, 3))

    model = model_(0)
    opt = trained(make, model, steps=3)
    sd = frozen_copy(model, opt)
    latents = [v["latent"] for v in sd["opt"]["state"].values() if "latent" in v]
    assert any(t.shape == ((3, 3) if kw.get("levels") == "ternary" else (3, 2)) for t in latents)
    for idx, entry in sd["opt"]["base"]["state"].items():
        for key, val in entry.items():
            if isinstance(val, torch.Tensor) and val.dim() and idx in sd["opt"]["state"] \
                    and "latent" in sd["opt"]["state"][idx]:
                assert val.shape == sd["opt"]["state"][idx]["latent"].shape, key
    old_style = frozen_copy(model, opt)["opt"]
    for entry in old_style["base"]["state"].values():
        for key, val in entry.items():
            if isinstance(val, torch.Tensor) and val.dim():
                entry[key] = val.contiguous()
    runs = []
    for state in (None, sd["opt"], old_style):
        m = model_(0)
        if state is None:
            o = trained(make, m, steps=3)
        else:
            m2 = model_(5)
            o = make(m2)
            m2.load_state_dict(sd["model"])
            o.load_state_dict(state)
            m, o = m2, o
        for s in range(3, 6):
            g = torch.Generator().manual_seed(s)
            o.zero_grad()
            torch.nn.functional.mse_loss(m(torch.randn(8, 6, generator=g)), torch.randn(8, 3, generator=g)).backward()
            o.step()
        runs.append(frozen_copy(m, o))
    assert_same(runs[0], runs[1])
    assert_same(runs[0], runs[2])


def test_replaced_softmax_state_entries_are_relinked() -> None:
    """ZeRO's ``load_state_dict`` replaces ``opt.state[p]`` with the saved entry (latent and ``base_state``):
    the next step copies it into the level-major tensor the base optimizer steps, as ``load_state_dict`` would."""
    def run(replace):
        model = mlp(seed=1)
        opt = trained(p("md-softmax-s", levels="ternary"), model, steps=2)
        sd = frozen_copy(model, opt)["opt"]
        fresh = mlp(seed=1)
        opt2 = p("md-softmax-s", levels="ternary")(fresh)
        fresh.load_state_dict(model.state_dict())
        if replace:
            for group, saved_group in zip(opt2.param_groups, sd["param_groups"]):
                for q, idx in zip(group["params"], saved_group["params"]):
                    opt2.state[q] = {k: (v.contiguous() if isinstance(v, torch.Tensor) else v)
                                     for k, v in sd["state"][idx].items()}
        else:
            opt2.load_state_dict(sd)
        for s in range(2, 4):
            g = torch.Generator().manual_seed(s)
            opt2.zero_grad()
            torch.nn.functional.mse_loss(fresh(torch.randn(8, 6, generator=g)),
                                         torch.randn(8, 3, generator=g)).backward()
            opt2.step()
        for q, bt in zip(opt2.param_groups[0]["params"], opt2.base_optimizer.param_groups[0]["params"]):
            lat = opt2.state[q]["latent"]
            assert bt.is_contiguous() and bt.data_ptr() == lat.data_ptr() and torch.equal(bt.movedim(0, -1), lat)
        return frozen_copy(fresh, opt2)

    assert_same(run(True), run(False))


def test_deepcopied_softmax_optimizer_relinks_once() -> None:
    """A deepcopy shares the dual's storage between the latent and the base tensor but drops their view
    relation: the first step re-links them (a self-copy), later steps find them linked."""
    import copy

    model = mlp(seed=2)
    opt = trained(p("md-softmax-s", levels="ternary"), model, steps=2)
    model2, opt2 = copy.deepcopy((model, opt))
    assert opt2._relink() is True
    for q, bt in zip(opt2.param_groups[0]["params"], opt2.base_optimizer.param_groups[0]["params"]):
        assert opt2.state[q]["latent"].data_ptr() == bt.data_ptr()
    assert opt2._relink() is False
    trained(lambda m: opt2, model2, steps=1)
    assert opt2._relink() is False
    assert_same(frozen_copy(model2, opt2), frozen_copy(model, trained(lambda m: opt, model, steps=1)))
