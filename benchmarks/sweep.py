"""Learning-rate selection for the suite: ``python -m benchmarks.sweep``.

For every (problem, method) it trains one run per learning rate of a small
grid on a *tuning seed* (100, never one of the reported seeds) and prints the
best one, plus the ``LR`` table to paste into :mod:`benchmarks.problems`.
Quantized methods try {1e-2, 3e-2, 1e-1}; full precision {3e-3, 1e-2, 3e-2}.
The best run has the best finalized metric (accuracy, or Hamming distance on
the teacher); ties go to the lower final test loss. This is the "modest
per-problem tuning" the report refers to; it is not part of the default
suite's time budget.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from . import problems as P
from . import train as T

__all__ = ["GRID", "FP_GRID", "TUNING_SEED", "sweep", "best", "main"]

GRID = (1e-2, 3e-2, 1e-1)
FP_GRID = (3e-3, 1e-2, 3e-2)
TUNING_SEED = 100


def best(runs: Sequence[dict], higher_is_better: bool) -> dict:
    """The run with the best finalized metric (ties: lower final test loss; failed runs never win)."""
    def key(r: dict) -> Tuple[float, float]:
        m = r["metric"]
        if r.get("error") or m != m:
            return (math.inf, math.inf)
        return ((-m if higher_is_better else m), r["final_loss"] if r["final_loss"] == r["final_loss"] else math.inf)
    return min(runs, key=key)


def sweep(problems: Sequence[str], methods: Optional[Sequence[str]] = None, seed: int = TUNING_SEED,
          workers: int = 2, steps: Optional[int] = None) -> Dict[Tuple[str, str], Dict[str, object]]:
    """Run the grid and return ``{(problem, method): {"lr": best lr, "runs": [...]}}``."""
    from tqdm.auto import tqdm

    jobs = []
    for prob in problems:
        for m in T.methods_for(P.get(prob), methods):
            for lr in (FP_GRID if m == "fp" else GRID):
                jobs.append((prob, m, seed, steps, lr))
    with tqdm(total=len(jobs), desc="sweep", unit="run") as bar:
        runs = T.run_many(jobs, workers=workers, progress=lambda r: bar.update(1))
    out: Dict[Tuple[str, str], Dict[str, object]] = {}
    for r in runs:
        out.setdefault((r["problem"], r["method"]), {"runs": []})["runs"].append(r)  # type: ignore[union-attr]
    for (prob, m), e in out.items():
        e["lr"] = best(e["runs"], P.get(prob).higher_is_better)["lr"]  # type: ignore[arg-type]
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``--problems``, ``--methods``, ``--seed``, ``--workers``, ``--steps``."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__)
    ap.add_argument("--problems", default=",".join(P.available()))
    ap.add_argument("--methods")
    ap.add_argument("--seed", type=int, default=TUNING_SEED)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--steps", type=int)
    args = ap.parse_args(argv)
    problems = [p for p in args.problems.split(",") if p]
    methods = [m for m in args.methods.split(",") if m] if args.methods else None
    res = sweep(problems, methods, args.seed, args.workers, args.steps)
    table: Dict[str, Dict[str, float]] = {}
    for (prob, m), e in res.items():
        vals = "  ".join(f"{r['lr']:g}: {r['metric']:.1f}" for r in e["runs"])  # type: ignore[union-attr]
        print(f"{prob:20s} {m:13s} best lr {e['lr']:g}   ({vals})")
        table.setdefault(prob, {})[m] = e["lr"]  # type: ignore[assignment]
    print("\nLR = {")
    for prob, t in table.items():
        print(f"    {prob!r}: {t!r},")
    print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
