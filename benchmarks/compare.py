"""Before/after step times: ``python -m benchmarks.compare --before PATH``.

Times every preset's ``opt.step()`` against ``torch.optim.Adam`` (the
harness of :func:`benchmarks.speed.step_times`: paired ratios, one thread,
process CPU time, :func:`benchmarks.speed.keep_freed_memory`) once with the
``proxopt`` package of another checkout (``PATH``, e.g. made with
``git worktree add /tmp/before <commit>``) and once with this checkout's,
each in its own process, alternating for ``--rounds`` rounds so that slow
drifts of the machine hit both sides alike. Prints a Markdown table of the
ratios (min-max over rounds). Only the package under test changes between
the two sides; the harness is this checkout's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

__all__ = ["measure", "table", "main"]

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(1, sys.argv[2])
import torch
torch.set_num_threads(1)
import proxopt
from benchmarks import speed
assert proxopt.__file__.startswith(sys.argv[1]), proxopt.__file__
speed.keep_freed_memory()
speed.set_clock(True)
names = [n for n in sys.argv[3].split(",") if n in proxopt.available()]
out = {}
for size in sys.argv[4].split(","):
    out[size] = {k: v["ratio"] for k, v in speed.step_times(size, names, repeats=int(sys.argv[5])).items()}
print(json.dumps(out))
"""


def measure(package_root: str, methods: Sequence[str], sizes: Sequence[str], repeats: int) -> Dict[str, Dict[str, float]]:
    """Step / Adam ratios ``{size: {preset: ratio}}`` with the ``proxopt`` package in ``package_root``, in a subprocess."""
    src = os.path.join(os.path.abspath(package_root), "proxopt")
    if not os.path.isfile(os.path.join(src, "__init__.py")):
        raise ValueError(f"Invalid checkout: {package_root!r} has no proxopt/__init__.py")
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(src, os.path.join(tmp, "proxopt"))  # only the package, not that checkout's benchmarks
        res = subprocess.run([sys.executable, "-c", _CHILD, tmp, HERE, ",".join(methods), ",".join(sizes),
                              str(repeats)], check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(before: List[Dict[str, Dict[str, float]]], after: List[Dict[str, Dict[str, float]]]) -> str:
    """Markdown table: one row per preset, ``before`` and ``after`` ratio ranges per size."""
    sizes = list(after[0])
    names = list(dict.fromkeys(n for s in sizes for n in after[0][s]))
    hdr = ["preset"] + [f"{s} {side}" for s in sizes for side in ("before", "after")]
    rows = []
    for n in names:
        cells = [n]
        for s in sizes:
            for runs in (before, after):
                vals = [r[s][n] for r in runs if n in r.get(s, {})]
                lo, hi = (min(vals), max(vals)) if vals else (float("nan"), float("nan"))
                cells.append(f"{lo:.2f}x" if abs(hi - lo) < 0.005 else f"{lo:.2f}-{hi:.2f}x")
        rows.append(cells)
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse flags, alternate before/after measurements, print the table."""
    import proxopt

    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="checkout whose proxopt/ is the 'before' side")
    ap.add_argument("--after", default=HERE, help="checkout for the 'after' side (default: this one)")
    ap.add_argument("--methods", default=",".join(proxopt.available()), help="comma-separated presets")
    ap.add_argument("--sizes", default="1M,11M", help="comma-separated sizes of benchmarks.speed.SIZES")
    ap.add_argument("--rounds", type=int, default=2, help="before/after alternations (default 2)")
    ap.add_argument("--repeats", type=int, default=9, help="timed steps per preset and size (default 9)")
    args = ap.parse_args(argv)
    methods, sizes = args.methods.split(","), args.sizes.split(",")
    before, after = [], []
    for r in range(args.rounds):
        before.append(measure(args.before, methods, sizes, args.repeats))
        after.append(measure(args.after, methods, sizes, args.repeats))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(table(before, after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
