"""CUDA check of the optimizers: ``python -m benchmarks.cuda_check`` (needs a CUDA device; not part of the suite).

1. **Correctness** (:func:`device_agreement`): every preset trains a small
   float64 MLP for a few steps on the device and on the CPU from the same
   start and data, then finalizes; the largest difference of the finalized
   parameters is reported (the update of THEORY.md §2 is elementwise, so the
   two agree to rounding), with the base optimizer's ``fused`` choice.
2. **Step time** (:func:`cuda_step_times`): one ``opt.step()`` of every
   preset against ``torch.optim.Adam`` as written (on CUDA torch's default is
   its multi-tensor ``foreach`` implementation) and against fused Adam, over
   the parameter shapes of :mod:`benchmarks.speed` (``.grad`` fixed random
   tensors), timed with CUDA events around synchronized calls, the three
   optimizers alternating within each repeat; medians of the paired ratios.

Prints one JSON object; ``--out FILE`` also writes it.
"""
from __future__ import annotations

import argparse
import json
import statistics
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch

import proxopt

from . import speed as S

__all__ = ["device_agreement", "cuda_step_times", "main"]


def _train(name: str, device: str, steps: int) -> Tuple[List[torch.Tensor], Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    model = model.to(device=device, dtype=torch.float64)
    opt = proxopt.optimizer(name, proxopt.param_groups(model), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(64, 16, generator=g, dtype=torch.float64).to(device)
        y = torch.randn(64, 4, generator=g, dtype=torch.float64).to(device)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    fused = [gr.get("fused") for gr in opt.base_optimizer.param_groups]
    opt.finalize()
    return [p.detach().cpu() for p in model.parameters()], fused


def device_agreement(device: str, names: Sequence[str], steps: int = 5) -> Dict[str, Dict[str, Any]]:
    """``{preset: {"max_abs_diff": largest |device - CPU| of the finalized parameters, "fused": [...]}}``."""
    out = {}
    for name in names:
        ref, _ = _train(name, "cpu", steps)
        got, fused = _train(name, device, steps)
        out[name] = {"max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(ref, got)), "fused": fused}
    return out


def _params(shapes: Sequence[Tuple[int, ...]], device: torch.device) -> List[torch.nn.Parameter]:
    out = []
    for p in S.make_params(shapes):
        q = torch.nn.Parameter(p.detach().to(device))
        q.grad = p.grad.to(device)  # type: ignore[union-attr]
        out.append(q)
    return out


def _event_ms(fn: Callable[[], Any]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def cuda_step_times(sizes: Sequence[str], names: Sequence[str], repeats: int = 15,
                    warmup: int = 3) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{size: {preset: {"ms", "adam_ms", "fused_adam_ms", "ratio" (vs Adam as written), "ratio_fused"}}}``."""
    dev = torch.device("cuda")
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for size in sizes:
        shapes = S.SIZES[size][0]()
        adam = torch.optim.Adam(_params(shapes, dev), lr=1e-3)
        fused = torch.optim.Adam(_params(shapes, dev), lr=1e-3, fused=True)
        for _ in range(warmup):
            adam.step()
            fused.step()
        table = {}
        for name in names:
            opt = proxopt.optimizer(name, S._groups(_params(shapes, dev)), lr=1e-3)
            for _ in range(warmup):
                opt.step()
            ta, tf, to = [], [], []
            for _ in range(repeats):
                ta.append(_event_ms(adam.step))
                to.append(_event_ms(opt.step))
                tf.append(_event_ms(fused.step))
            table[name] = {"ms": statistics.median(to), "adam_ms": statistics.median(ta),
                           "fused_adam_ms": statistics.median(tf),
                           "ratio": statistics.median(a / b for a, b in zip(to, ta)),
                           "ratio_fused": statistics.median(a / b for a, b in zip(to, tf))}
            del opt
            torch.cuda.empty_cache()
        out[size] = table
    return out


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cuda_check", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="11M,50M", help="comma-separated sizes of benchmarks.speed.SIZES")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(list(argv))
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    names = list(proxopt.available())
    res = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
           "agreement_float64": device_agreement("cuda", names),
           "step": cuda_step_times(args.sizes.split(","), names)}
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
