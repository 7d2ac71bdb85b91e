"""Command line of the benchmark suite: ``python -m benchmarks [flags]``.

With no flags it runs the default suite (every problem, every method, 3
seeds, the speed and memory measurements) within 10 minutes on 2 CPU cores,
shows tqdm progress bars, prints the results table and the targets, and
writes ``report.md``, ``results.json`` and PNG plots to ``--out`` (default
``benchmarks/results/``). ``--quick`` runs a reduced configuration in under
a minute.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

import proxopt

from . import problems as P
from . import report as R
from . import speed as S
from . import train as T

__all__ = ["main", "parse_args", "run_suite", "DEFAULT_OUT"]

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

#: --quick: problems, steps (None: the problem's default), speed sizes and repeats.
QUICK = {"problems": ["teacher", "digits-mlp"], "steps": 150, "seeds": [0], "sizes": ["1M"],
         "step_repeats": 10, "iter_repeats": 3, "eval_repeats": 10}


def _csv(s: Optional[str]) -> Optional[List[str]]:
    return None if s is None else [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line (see ``python -m benchmarks --help``)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced configuration, under a minute")
    ap.add_argument("--problems", help=f"comma-separated subset of: {', '.join(P.available())}")
    ap.add_argument("--methods", help="comma-separated subset of: " + ", ".join(T.all_methods()))
    ap.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--steps", type=int, help="optimizer steps for every problem (default: each problem's own)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="results folder (default benchmarks/results/)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="training processes, one thread each (default: min(2, cores))")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads for the timings (default 1: robust ratios on a shared machine)")
    ap.add_argument("--sizes", help="step-timing sizes, subset of " + ", ".join(S.SIZES))
    ap.add_argument("--no-speed", action="store_true", help="skip speed and memory measurements")
    ap.add_argument("--no-train", action="store_true", help="skip the training runs")
    ap.add_argument("--list", action="store_true", help="list problems and methods and exit")
    args = ap.parse_args(argv)
    for name in _csv(args.problems) or []:
        P.get(name)
    for m in _csv(args.methods) or []:
        if m not in T.all_methods():
            ap.error(f"invalid method {m!r}; valid methods are {', '.join(T.all_methods())}")
    for s in _csv(args.sizes) or []:
        if s not in S.SIZES:
            ap.error(f"invalid size {s!r}; valid sizes are {', '.join(S.SIZES)}")
    if args.steps is not None and args.steps < 1:
        ap.error("--steps must be positive")
    return args


def _machine() -> str:
    proc = platform.processor()
    return (f"{platform.machine()}{' ' + proc if proc else ''}, {os.cpu_count()} CPU cores, "
            f"Python {platform.python_version()}, torch {torch.__version__}, proxopt {proxopt.__version__}")


def _notes(problems: Sequence[str], steps: Optional[int]) -> List[str]:
    lines = [
        "Data: teacher-student generated from the seed; digits = `sklearn.datasets.load_digits` (bundled with "
        "scikit-learn), fixed stratified 75/25 split; MNIST-1D = `mnist1d.data.make_dataset(get_dataset_args())` "
        "(the package's local generator, 4000/1000 split; never its download path). Features standardized.",
        "Quantized: every weight matrix and convolution kernel, except where a problem keeps its first and last "
        "layers in full precision (the CNNs below; XNOR-Net / Bi-Real Net practice: a 1-channel first convolution "
        "with 5 or 9 binary weights per filter is very restrictive). The MLPs and the teacher quantize every layer, "
        "as in the MD paper. Full precision (param group `quantize=False`): BatchNorm scales and shifts (and the kept "
        "layers); the layers have no biases (a BatchNorm follows every layer, the logits included, as in BNN).",
        "Initialisation of quantized runs: quantized weights (hence the latents) i.i.d. U(-s, s) with s per problem "
        "below; `fp` keeps PyTorch's default initialisation.",
        "Optimizer: Adam for every method (the presets' default base), cosine learning-rate decay to 0 over the "
        "budget (`torch.optim.lr_scheduler.CosineAnnealingLR` on the proxopt optimizer), batch size per problem.",
        f"Soft-forward presets ({', '.join(sorted(T.SOFT_PRESETS))}): "
        f"`proxopt.AnnealScheduler(opt, final={T.FINAL_STRENGTH:g}, total_steps=steps)` from the preset's "
        "default start (mu or beta = 1), except " + ", ".join(f"{m} to {v:g}" for m, v in T.FINAL_BY_METHOD.items())
        + " (`benchmarks.train.FINAL_BY_METHOD`: annealed to 1e4, 100% of bnn++'s latents freeze by "
        "mid-training). bnn+ keeps its fixed mu = 5.",
        f"ProxQuant (pq): lambda = 8 / (lr T^2) with T = {T.PQ_FREEZE:g} x steps (the prox can move a weight "
        "across [-1, 1] before T), then rounded and frozen for the last steps (`freeze_at=T`).",
        "Bop: gamma = 1e-3, threshold = 1e-6 (larq's 1e-4 / 1e-8 are meant for hundreds of epochs; chosen on "
        "digits-mlp, seed 100); Adam with the problem's lr updates its full-precision groups.",
        "pc (jump = 0) on binary levels is clip(mu theta) and md-linear is clip(beta theta), with the same anneal: "
        "the same algorithm through two code paths, so equal learning rates give equal numbers.",
        "ste-bc: BinaryConnect the conventional way: `nn.Linear`/`nn.Conv` subclasses whose forward uses a "
        "custom `torch.autograd.Function` (sign with sign(0) = +1, straight-through backward), plain "
        "`torch.optim.Adam` on the real weights, clipped to [-1, 1] after each step (BC's algorithm).",
        "Evaluation: the reported accuracy is that of the finalized model (`opt.finalize()`), after "
        "re-estimating the BatchNorm statistics on the training set with the final weights (done for every "
        "method, fp included). Curves show the hard-quantized model (`with opt.hard():`) at 10 points during "
        "training, with the running BatchNorm statistics.",
    ]
    rows = []
    for name in problems:
        pr = P.get(name)
        lrs = {m: pr.lr_for(m) for m in T.methods_for(pr)}
        default = pr.lr["default"]
        special = ", ".join(f"{m} {v:g}" for m, v in lrs.items() if v != default)
        rows.append(f"`{name}`: {steps or pr.steps} steps, batch {pr.batch or 'full'}, levels {pr.levels}, "
                    f"{'first/last layer full precision' if pr.keep_first_last else 'every layer quantized'}, "
                    f"init s = {pr.init_scale:g}, Adam lr {default:g}" + (f" ({special})" if special else ""))
    lines.append("Budgets and learning rates. The learning rates come from `python -m benchmarks.sweep` (one run "
                 "per value of {1e-2, 3e-2, 1e-1}, fp {3e-3, 1e-2, 3e-2}, on tuning seed 100, which is never "
                 "reported), then are fixed for every seed: " + "; ".join(rows) + ".")
    lines.append("Multi-level problems run bc, pc and md-softmax-s with `levels=\"ternary\"` / `levels=2`; their "
                 "full-precision reference is digits-mlp's `fp` (same data, model and budget).")
    return lines


def run_suite(args: argparse.Namespace, argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the configured suite, write the report into ``args.out`` and return the results dict.

    The dict holds ``config``, ``runs`` (one :class:`benchmarks.train.RunResult`
    dict per run), ``speed`` (step / iteration / eval / disk measurements),
    and wall times; it is also written to ``results.json``.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    quick = bool(args.quick)
    problems = _csv(args.problems) or (QUICK["problems"] if quick else list(P.available()))
    requested = _csv(args.methods)
    seeds = [int(s) for s in (_csv(args.seeds) or ([str(s) for s in QUICK["seeds"]] if quick else ["0", "1", "2"]))]
    steps = args.steps or (QUICK["steps"] if quick else None)
    sizes = _csv(args.sizes) or (QUICK["sizes"] if quick else list(S.SIZES))
    cmd = "python -m benchmarks" + ("" if argv is None else "".join(" " + shlex.quote(a) for a in argv))
    methods_all = list(dict.fromkeys([*(requested or T.all_methods())]))
    cfg: Dict[str, Any] = {"command": cmd, "machine": _machine(), "problems": problems, "seeds": seeds,
                           "steps": steps, "methods_all": methods_all, "workers": args.workers,
                           "threads": args.threads, "sizes": sizes, "quick": quick,
                           "notes": _notes(problems, steps)}
    results: Dict[str, Any] = {"config": cfg, "runs": [], "speed": {}}

    if not args.no_train:
        jobs = []
        # longest problems first so the two workers finish together
        for prob in sorted(problems, key=lambda p: -_cost(p, steps)):
            for m in T.methods_for(P.get(prob), requested):
                for s in seeds:
                    jobs.append((prob, m, s, steps, None))
        t0 = time.perf_counter()
        with tqdm(total=len(jobs), desc="training", unit="run", dynamic_ncols=True) as bar:
            def done(r: Dict[str, Any]) -> None:
                bar.set_postfix_str(f"{r['problem']} {r['method']} s{r['seed']}", refresh=False)
                bar.update(1)
            results["runs"] = T.run_many(jobs, workers=args.workers, progress=done)
        results["train_s"] = time.perf_counter() - t0

    if not args.no_speed:
        t0 = time.perf_counter()
        results["speed"] = run_speed(requested, sizes, quick, args.threads)
        results["speed_s"] = time.perf_counter() - t0

    results["wall_s"] = time.perf_counter() - t_start
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    R.write_report(results, args.out)
    return results


def _cost(problem: str, steps: Optional[int]) -> float:
    pr = P.get(problem)
    weight = {"linear": 0.2, "mlp": 1.0, "cnn2d": 2.5, "cnn1d": 3.0}[pr.model["kind"]]
    return weight * (steps or pr.steps)


def run_speed(requested: Optional[Sequence[str]], sizes: Sequence[str], quick: bool, threads: int
              ) -> Dict[str, Any]:
    """Step times for every preset at ``sizes``, then training-iteration, evaluation and disk measurements."""
    from tqdm.auto import tqdm

    presets = [m for m in (requested or proxopt.available()) if m in proxopt.available()]
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: Dict[str, Any] = {"step": {}, "clock": S.set_clock(threads == 1), "allocator": S.keep_freed_memory(),
                           "native": "in use" if proxopt.native.available() else proxopt.native.status()}
    total = len(presets) * len(sizes) + 4
    try:
        with tqdm(total=total, desc="speed", unit="task", dynamic_ncols=True) as bar:
            tick = lambda what: (bar.set_postfix_str(what, refresh=False), bar.update(1))  # noqa: E731
            for size in sizes:
                reps = QUICK["step_repeats"] if quick else None
                out["step"][size] = S.step_times(size, presets, repeats=reps, progress=tick)
            prof_size = "11M" if "11M" in sizes else sizes[0]
            failing = [n for n in presets if any(
                out["step"][s][n]["ratio"] > (R.TARGETS["step_unit"] if n in S.UNIT_BACKWARD else R.TARGETS["step_other"])
                for s in sizes if n in out["step"][s])]
            out["profile_size"] = prof_size
            out["profile"] = {n: S.profile_step(prof_size, n) for n in (["adam"] + failing if failing else [])}
            tick("profile")
            ir = QUICK["iter_repeats"] if quick else 15
            out["iteration"] = S.iteration_times(presets, repeats=ir)
            out["iteration_model"] = (f"timing CNN (4 conv blocks, width 32, 3x{S.SIDE}x{S.SIDE} inputs, "
                                      f"batch 32, {sum(p.numel() for p in S.timing_cnn().parameters()):,} "
                                      f"parameters), {ir} rounds")
            tick("iteration")
            out["eval"] = S.eval_times(repeats=QUICK["eval_repeats"] if quick else 50)
            tick("eval")
            out["disk"] = S.disk_sizes()
            tick("disk")
    finally:
        torch.set_num_threads(prev)
        S.set_clock(False)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: parse flags, run, print the table and where the report went."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.list:
        print("problems:", ", ".join(P.available()))
        print("methods: ", ", ".join(T.all_methods()))
        return 0
    results = run_suite(args, argv)
    print()
    print(R.console_table(results))
    print(f"\nreport: {os.path.join(args.out, 'report.md')}  (wall time {results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
