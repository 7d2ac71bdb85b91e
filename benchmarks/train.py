"""Training runs: one (problem, method, seed) at a time, and the parallel runner.

Methods are every preset of :func:`proxopt.available` plus two baselines:

* ``fp``: the same model in full precision, trained by ``torch.optim.Adam``
  with the same budget (the base optimizer of every preset here);
* ``ste-bc``: BinaryConnect the conventional way, binarizing inside the model
  (:mod:`benchmarks.models`: ``SignSTE`` layers, Adam, clip to ``[-1, 1]``).

Every run uses Adam with a cosine learning-rate decay over the budget (a
``torch.optim.lr_scheduler.CosineAnnealingLR`` on the proxopt optimizer,
which LR schedulers drive unchanged). Soft-forward presets (``pc``,
``bnn++``, ``md-*``, ``gd-tanh``) get
``proxopt.AnnealScheduler(opt, final=1e4, total_steps=steps)``; ProxQuant
freezes at the nearest level for the last 10% of the steps (its paper
freezes at epoch 200 of 300) with ``lambda`` scaled to the budget.

The reported number is measured on the *finalized* model
(``opt.finalize()``: exact levels), after re-estimating the BatchNorm
statistics on the training set (done for every method, the full-precision
one included).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import proxopt
from proxopt.levels import make_levels

from . import models as M
from . import problems as P

__all__ = ["BASELINES", "SOFT_PRESETS", "FINAL_BY_METHOD", "final_strength", "LEVEL_PRESETS", "RunResult", "all_methods", "methods_for", "run_one",
           "run_many", "make_optimizer", "evaluate", "recalibrate_bn", "frozen_share", "pq_reg"]

#: Baselines that are not proxopt presets.
BASELINES: Tuple[str, ...] = ("fp", "ste-bc")
#: Presets whose forward is soft and whose strength must be annealed to about 1e4.
SOFT_PRESETS = frozenset({"pc", "bnn++", "md-tanh", "md-tanh-s", "md-softmax", "md-softmax-s", "md-linear",
                          "gd-tanh"})
#: Presets that accept ``levels=`` (multi-level problems run only these; md-tanh* take ternary).
LEVEL_PRESETS = frozenset({"bc", "pc", "pq", "md-softmax", "md-softmax-s", "md-tanh", "md-tanh-s"})
#: Final strength of the anneal (README: 1e4 makes the finalized model match the trained one).
FINAL_STRENGTH = 1e4
#: Per-preset final strengths where 1e4 is wrong. BNN++: THEORY.md §2 did not recover the paper's schedule
#: (its figure draws mu ~ 10, larq's BNN+ uses mu = 5); annealed to 1e4, sign-Swish' vanishes and 100% of
#: the latents are frozen by mid-training (measured: the suite's frozen share), so BNN++ ends below BNN+.
#: Annealed to 1e2, 35-57% of them are frozen at mid-training and its finalized accuracy is 3.6 (CNN) and
#: 4.3 (MLP) points higher on MNIST-1D (measured with this suite's problems, 3 seeds).
FINAL_BY_METHOD: Dict[str, float] = {"bnn++": 1e2}


def final_strength(method: str) -> float:
    """The final ``mu``/``beta`` the suite anneals ``method`` to (:data:`FINAL_BY_METHOD`, else 1e4)."""
    return FINAL_BY_METHOD.get(method, FINAL_STRENGTH)
#: ProxQuant: fraction of the budget after which the weights are frozen at their nearest level.
PQ_FREEZE = 0.9


def all_methods() -> Tuple[str, ...]:
    """The two baselines followed by every proxopt preset."""
    return BASELINES + tuple(proxopt.available())


def methods_for(problem: P.Problem, requested: Optional[Sequence[str]] = None) -> List[str]:
    """The methods run on ``problem``: ``requested`` (or the problem's default) that apply to its levels.

    On multi-level problems only presets taking ``levels=`` run (md-tanh*
    only for ternary), plus ``fp``.
    """
    base = list(requested) if requested else list(problem.methods or all_methods())
    if problem.levels == "binary":
        return base
    out = []
    for m in base:
        if m == "fp":
            out.append(m)
        elif m in LEVEL_PRESETS and (not m.startswith("md-tanh") or problem.levels == "ternary"):
            out.append(m)
    return out


@dataclass
class RunResult:
    """Everything one run measured (plain data, JSON-serializable).

    Attributes:
        problem, method, seed: the run's identity.
        metric: the finalized model's test accuracy in % (classification) or
            its Hamming distance to ``w*`` (teacher-student).
        soft_metric: the same metric for the trained (soft) weights, before
            finalizing (the full-precision weights for ``fp``).
        final_loss: test loss of the finalized model.
        exact: whether every quantized weight of the finalized model is one
            of the levels.
        steps, lr, seconds: budget, Adam learning rate, wall time of the run.
        curve_step, curve_loss, curve_metric: training loss (mean over the
            interval) and the hard (exactly quantized) model's test metric at
            evaluation points.
        strength: the final ``mu``/``beta`` (``None`` if not annealed).
        frozen: for presets with a non-trivial backward factor, the share of
            latents whose ``|B'(theta)|`` is below 1% of ``B'``'s maximum (they
            no longer receive gradient): at the end for bnn / bnn+ (fixed
            strength), at mid-training for bnn++ / gd-tanh (annealed).
        error: the exception text if the run failed.
    """

    problem: str
    method: str
    seed: int
    metric: float
    soft_metric: float
    final_loss: float
    exact: bool
    steps: int
    lr: float
    seconds: float
    curve_step: List[int] = field(default_factory=list)
    curve_loss: List[float] = field(default_factory=list)
    curve_metric: List[float] = field(default_factory=list)
    strength: Optional[float] = None
    frozen: Optional[float] = None
    error: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (for JSON)."""
        return asdict(self)


def make_optimizer(method: str, model: nn.Module, problem: P.Problem, lr: float, steps: int
                   ) -> Tuple[torch.optim.Optimizer, Optional[proxopt.AnnealScheduler]]:
    """Build the optimizer of ``method`` for ``model`` (and its anneal scheduler, if any).

    ``fp`` and ``ste-bc`` get ``torch.optim.Adam(model.parameters(), lr)``;
    a preset gets :func:`proxopt.optimizer` over :func:`models.param_groups`
    (quantized weights; the rest with ``quantize=False``), ``levels=`` on
    multi-level problems, ProxQuant its budget-scaled ``lambda`` and freeze
    step, soft presets an ``AnnealScheduler(final=final_strength(method), total_steps=steps)``
    (1e4; 1e2 for bnn++).
    """
    if method in BASELINES:
        return torch.optim.Adam(model.parameters(), lr=lr), None
    kw: Dict[str, Any] = {"lr": lr, **problem.kwargs_for(method)}
    if problem.levels != "binary":
        kw["levels"] = problem.levels
    if method == "pq":
        kw["mu"] = problem.pq_reg if problem.pq_reg is not None else pq_reg(lr, steps)
        kw["freeze_at"] = max(1, int(PQ_FREEZE * steps))
    opt = proxopt.optimizer(method, M.param_groups(model, problem.keep_first_last), **kw)
    sched = None
    if method in SOFT_PRESETS:
        sched = proxopt.AnnealScheduler(opt, final=final_strength(method), total_steps=steps)
    return opt, sched


def pq_reg(lr: float, steps: int) -> float:
    """ProxQuant's ``lambda`` scaled to the budget.

    The prox moves a weight by ``lr_t * lambda * t`` at step ``t``; with the
    cosine schedule the total over the ``PQ_FREEZE * steps`` soft steps is
    about ``lr * lambda * T^2 / 4`` (``T`` the freeze step). We pick
    ``lambda`` so that this total is 2 (the width of ``[-1, 1]``): every
    weight can reach its level before the freeze [PQ].
    """
    t = PQ_FREEZE * steps
    return 8.0 / (lr * t * t)


def _loss_fn(problem: P.Problem) -> Callable[[Tensor, Tensor], Tensor]:
    if problem.task == "regression":
        return lambda out, y: F.mse_loss(out, y)
    return F.cross_entropy


@torch.no_grad()
def evaluate(model: nn.Module, problem: P.Problem, data: Dict[str, Tensor]) -> Tuple[float, float]:
    """``(metric, loss)`` of ``model`` on the test set.

    Classification: accuracy in % and cross-entropy. Teacher-student: the
    Hamming distance between ``sign(w)`` (``sign(0) = +1``) and ``w*``, and
    the mean squared error.
    """
    was = model.training
    model.eval()
    out = model(data["x_test"])
    loss = float(_loss_fn(problem)(out, data["y_test"]))
    if problem.task == "regression":
        w = M.quantized_weights(model)[0].detach().flatten()
        if isinstance(model, M.BinaryLinear):
            w = M.SignSTE.apply(w)
        metric = float((torch.where(w >= 0, 1.0, -1.0) != data["w_star"]).sum())
    else:
        metric = 100.0 * float((out.argmax(1) == data["y_test"]).float().mean())
    model.train(was)
    return metric, loss


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: Tensor, batch: int = 512) -> None:
    """Re-estimate every BatchNorm's running mean/variance on ``x`` with the model's current weights.

    Cumulative averages over the whole of ``x`` (``momentum=None``), in
    training mode without gradients; the weights are not touched.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.train()
    for i in range(0, x.shape[0], batch):
        model(x[i:i + batch])
    model.train(was)
    for m, mom in zip(bns, saved):
        m.momentum = mom


@torch.no_grad()
def frozen_share(opt: Any, method: str) -> Optional[float]:
    """Share of latents whose backward factor ``|B'(theta)|`` is below 1% of its maximum.

    For the presets with a non-trivial ``B'`` (THEORY.md §2): BNN
    ``1{|theta| <= 1}``, BNN+ / BNN++ ``SS'_mu(theta)`` (maximum ``mu`` at
    0), GD-tanh ``beta (1 - tanh^2(beta theta))`` (maximum ``beta``), at the
    group's current strength; ``None`` for the others (``B' = 1``). A frozen
    latent no longer moves, which can explain an ordering that differs from
    the papers'. (At the end of an annealed run nearly every latent is frozen
    by design; the runner records the share at mid-training for those.)
    """
    from proxopt import quantizers as qz

    if method not in ("bnn", "bnn+", "bnn++", "gd-tanh"):
        return None
    frozen, total = 0, 0
    for group in opt.param_groups:
        if not group.get("quantize", True):
            continue
        v = float(group.get("mu", group.get("beta", 1.0)))
        for p in group["params"]:
            theta = opt.state[p]["latent"]
            if method == "bnn":
                d, top = qz.get("clip").derivative(theta), 1.0
            elif method == "gd-tanh":
                d, top = qz.get("tanh").derivative(theta, v), v
            else:
                d, top = qz.get("signswish").derivative(theta, v), v
            frozen += int((d.abs() < 0.01 * top).sum())
            total += theta.numel()
    return frozen / max(total, 1)


def _is_exact(model: nn.Module, problem: P.Problem, method: str) -> bool:
    if method == "fp":
        return False
    if method == "ste-bc":
        return True  # the forward applies sign itself
    lv = torch.tensor(make_levels(problem.levels))
    for w in M.quantized_weights(model, problem.keep_first_last):
        if not torch.isin(w.detach(), lv.to(w.dtype)).all():
            return False
    return True


def _batches(n: int, batch: Optional[int], gen: torch.Generator) -> Iterator[Tensor]:
    while True:
        if batch is None:
            yield torch.arange(n)
            continue
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i:i + batch]


def run_one(problem: str | P.Problem, method: str, seed: int, steps: Optional[int] = None,
            evals: int = 10, lr: Optional[float] = None) -> RunResult:
    """Train ``method`` on ``problem`` with ``seed`` and measure the finalized model.

    Args:
        problem: a :class:`benchmarks.problems.Problem` or its name.
        method: ``"fp"``, ``"ste-bc"`` or a proxopt preset.
        seed: seeds the model initialisation and the batch order (and the
            teacher's data).
        steps: optimizer steps (default: the problem's).
        evals: number of evaluation points of the curves.
        lr: Adam learning rate (default: the problem's for this method).

    Returns:
        A :class:`RunResult`.
    """
    prob = P.get(problem) if isinstance(problem, str) else problem
    steps = int(steps or prob.steps)
    lr = float(lr if lr is not None else prob.lr_for(method))
    t0 = time.perf_counter()
    data = prob.data(seed)
    torch.manual_seed(seed)
    kfl = prob.keep_first_last
    model = M.build(prob.model, ste=(method == "ste-bc"), keep_first_last=kfl)
    if method != "fp":
        M.init_quantized_(model, prob.init_scale, torch.Generator().manual_seed(seed), keep_first_last=kfl)
    opt, anneal = make_optimizer(method, model, prob, lr, steps)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = _loss_fn(prob)
    gen = torch.Generator().manual_seed(seed)
    batches = _batches(data["x"].shape[0], prob.batch, gen)
    every = max(1, steps // max(1, evals))
    hard_ctx = getattr(opt, "hard", None)
    res = RunResult(prob.name, method, seed, math.nan, math.nan, math.nan, False, steps, lr, 0.0)
    running, count = 0.0, 0
    model.train()
    for k in range(1, steps + 1):
        idx = next(batches)
        loss = loss_fn(model(data["x"][idx]), data["y"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if method == "ste-bc":
            M.clip_quantized_(model, keep_first_last=kfl)
        cosine.step()
        if anneal is not None:
            anneal.step()
        running += loss.item()
        count += 1
        if k == steps // 2 and method in ("bnn++", "gd-tanh"):
            res.frozen = frozen_share(opt, method)
        if k % every == 0 or k == steps:
            if hard_ctx is not None:
                with hard_ctx():
                    metric, _ = evaluate(model, prob, data)
            else:
                metric, _ = evaluate(model, prob, data)
            res.curve_step.append(k)
            res.curve_loss.append(running / count)
            res.curve_metric.append(metric)
            running, count = 0.0, 0
    res.soft_metric, _ = evaluate(model, prob, data)
    if hasattr(opt, "finalize"):
        opt.finalize()
    recalibrate_bn(model, data["x"])
    res.metric, res.final_loss = evaluate(model, prob, data)
    res.exact = _is_exact(model, prob, method)
    if method in ("bnn", "bnn+"):
        res.frozen = frozen_share(opt, method)
    key = getattr(opt, "anneal_key", None)
    if anneal is not None and key is not None:
        res.strength = float(opt.param_groups[0][key])
    res.seconds = time.perf_counter() - t0
    return res


Job = Tuple[str, str, int, Optional[int], Optional[float]]


def _work(job: Job) -> Dict[str, Any]:
    problem, method, seed, steps, lr = job
    try:
        return run_one(problem, method, seed, steps, lr=lr).to_dict()
    except Exception as exc:  # one failing run must not take the suite down; the report shows it
        prob = P.get(problem)
        r = RunResult(problem, method, seed, math.nan, math.nan, math.nan, False, int(steps or prob.steps),
                      float(lr if lr is not None else prob.lr_for(method)), 0.0,
                      error=f"{type(exc).__name__}: {exc}")
        return r.to_dict()


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_many(jobs: Sequence[Job], workers: int = 1, progress: Optional[Callable[[Dict[str, Any]], None]] = None
             ) -> List[Dict[str, Any]]:
    """Run ``jobs`` (``(problem, method, seed, steps, lr)`` tuples), in ``workers`` processes.

    Each worker uses one intra-op thread (small models train fastest that
    way; two single-threaded workers use two cores fully). ``progress`` is
    called with each result as it arrives. Results come back in job order.
    """
    results: List[Optional[Dict[str, Any]]] = [None] * len(jobs)
    if workers <= 1:
        prev = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for i, job in enumerate(jobs):
                results[i] = _work(job)
                if progress:
                    progress(results[i])  # type: ignore[arg-type]
        finally:
            torch.set_num_threads(prev)
        return results  # type: ignore[return-value]
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(1,)) as pool:
        for i, res in pool.imap_unordered(_indexed, list(enumerate(jobs))):
            results[i] = res
            if progress:
                progress(res)
    return results  # type: ignore[return-value]


def _indexed(item: Tuple[int, Job]) -> Tuple[int, Dict[str, Any]]:
    return item[0], _work(item[1])
