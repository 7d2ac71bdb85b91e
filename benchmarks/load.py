"""Load test: train a ~50M-parameter model under every preset and account for its memory.

Run from the repository root::

    python -m benchmarks.load                       # every preset, 50M parameters, float32
    python -m benchmarks.load --presets bc,bnn++ --dtype bfloat16 --params 20e6

The model is a stack of ``L`` square ``Linear(d, d)`` layers with ``tanh``
between them (``d = 2048``, ``L = round(P / d^2)`` = 12 for 50M parameters);
the weight matrices are quantized, the biases are a ``quantize=False`` group.
Each configuration — ``torch.optim.Adam`` on the parameters (the reference),
then every preset with its default base optimizer (Adam) — runs in a fresh
Python process (so one run's freed memory cannot hide in the next one's
peak) for a warm-up step plus ``--steps`` timed steps of zero_grad + forward
+ backward + ``opt.step()``, and reports:

* **tensor byte accounting**: parameters, latents ``theta``
  (``opt.state[p]["latent"]``), other per-parameter state, the base
  optimizer's state, and proxopt's reusable scratch buffer;
* **expected bytes** ``= params + latents + base state (+ scratch)``, against
  the accounted total;
* **peak RSS** (``VmHWM`` of ``/proc/self/status``, reset through
  ``/proc/self/clear_refs`` after the model, data, activations and gradients
  exist): the peak the optimizer adds during training. Its excess over the
  Adam run should be the latent copy and the difference in base state (Adam
  on the latents instead of the parameters; equal unless the latent is
  larger, as the softmax dual is), nothing more. ``MALLOC_MMAP_THRESHOLD_``
  is pinned so that glibc returns freed tensors to the OS and RSS tracks live
  memory;
* seconds per training step.

Memory model (THEORY.md §2): the engine keeps ``theta`` (same shape as
``p``; ``(..., d)`` for the softmax map with ``d`` levels; fp32 for bf16/fp16
parameters) and the base optimizer's state *for theta*. ProxQuant keeps no
latent. With ``B' = 1`` the latent gradient aliases ``p.grad``; otherwise it
is written into the parameter's own storage during the step, so no
per-parameter temporaries remain (the softmax dual's gradient, of the dual's
shape, is the exception: it lives in a per-parameter buffer that the engine
keeps in its workspace, counted here as scratch).

References:
    THEORY.md §2 (the one update rule and where its state lives); [PC++] Lu
    et al., NeurIPS 2023; [MD] Ajanthan et al., AISTATS 2021.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

MB = 2.0 ** 20
WIDTH = 2048


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in KiB; 0 where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def tensor_bytes(obj: Any, seen: Optional[set] = None) -> int:
    """Bytes of the distinct tensor storages reachable in ``obj`` (dicts, lists, tuples, tensors)."""
    import torch
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.device)
        if key in seen or obj.untyped_storage().nbytes() == 0:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in obj)
    return 0


def build_model(n_params: float, dtype: str) -> Any:
    """``L`` layers ``Linear(WIDTH, WIDTH)`` with ``tanh`` between them, ``L = round(n_params / WIDTH^2)``."""
    import torch
    layers: List[Any] = []
    for i in range(max(1, round(n_params / WIDTH ** 2))):
        if i:
            layers.append(torch.nn.Tanh())
        layers.append(torch.nn.Linear(WIDTH, WIDTH))
    return torch.nn.Sequential(*layers).to(getattr(torch, dtype))


def one(config: str, n_params: float, steps: int, batch: int, dtype: str, threads: int) -> Dict[str, Any]:
    """Measure one configuration in this process (``"adam"`` or a preset name)."""
    import torch
    import proxopt
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(n_params, dtype)
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if n.endswith("weight")]},
              {"params": [p for n, p in named if n.endswith("bias")], "quantize": False}]
    x = torch.randn(batch, WIDTH, dtype=model[0].weight.dtype)
    y = torch.randn(batch, WIDTH)

    def loss_fn() -> Any:
        return torch.nn.functional.mse_loss(model(x).float(), y)

    loss_fn().backward()  # gradients exist before we measure: both runs start from the same point
    rss0 = _status_kib("VmRSS")
    exact_peak = _reset_peak()
    if config == "adam":
        opt: Any = torch.optim.Adam(model.parameters(), lr=1e-4)
    else:
        opt = proxopt.optimizer(config, groups, lr=1e-4)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = loss_fn()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    peak = _status_kib("VmHWM")
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    latent_ids = set()
    latents = 0
    other = 0
    base_state: Any
    if config == "adam":
        base_state = opt.state
    else:
        base = getattr(opt, "base_optimizer", None)
        base_state = base.state if base is not None else {}
        for st in opt.state.values():
            lat = st.get("latent")
            if isinstance(lat, torch.Tensor):
                latents += tensor_bytes(lat, latent_ids)
            other += tensor_bytes({k: v for k, v in st.items() if k != "latent"}, set(latent_ids))
    base_bytes = tensor_bytes(dict(base_state), set())
    scratch = tensor_bytes(dict(getattr(opt, "_workspace", {}) or {}), set())
    sd_bytes = tensor_bytes(opt.state_dict(), set())
    return {
        "config": config, "numel": sum(p.numel() for p in model.parameters()), "dtype": dtype,
        "params": params, "latents": latents, "other_state": other, "base_state": base_bytes,
        "scratch": scratch, "state_dict": sd_bytes,
        "expected": params + latents + other + base_bytes + scratch,
        "rss_before": rss0 * 1024, "peak_extra": (peak - rss0) * 1024 if exact_peak else None,
        "peak": peak * 1024, "s_per_step": sorted(times)[len(times) // 2], "loss": float(loss.detach()),
    }


def run_child(config: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Run :func:`one` in a fresh interpreter and return its JSON result."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "benchmarks.load", "--one", config, "--params", str(args.params),
           "--steps", str(args.steps), "--batch", str(args.batch), "--dtype", args.dtype,
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"config": config, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: Sequence[Dict[str, Any]]) -> str:
    """A markdown table; every size in MiB, "vs Adam" columns are differences to the Adam run."""
    ref = next((r for r in rows if r.get("config") == "adam" and "error" not in r), None)
    head = ["config", "params", "latents", "base state", "other", "scratch", "expected", "state_dict",
            "expected extra vs Adam", "peak extra vs Adam", "peak / expected extra", "s/step"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['config']} | error: {r['error']} |" + " |" * (len(head) - 2))
            continue
        exp_extra = r["expected"] - ref["expected"] if ref else None
        peak_extra = (r["peak_extra"] - ref["peak_extra"]) if ref and r["peak_extra"] is not None \
            and ref["peak_extra"] is not None else None
        ratio = f"{peak_extra / exp_extra:.2f}" if peak_extra is not None and exp_extra else "-"
        cells = [r["config"]] + [f"{r[k] / MB:.0f}" for k in ("params", "latents", "base_state", "other_state",
                                                               "scratch", "expected", "state_dict")]
        cells += [f"{exp_extra / MB:+.0f}" if exp_extra is not None else "-",
                  f"{peak_extra / MB:+.0f}" if peak_extra is not None else "-", ratio, f"{r['s_per_step']:.2f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options (``--help`` lists them)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=float, default=50e6, help="parameter count (default 50e6)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step (default 2)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    ap.add_argument("--presets", default=None, help="comma-separated presets (default: all)")
    ap.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every configuration in its own process and print the markdown table (progress on stderr)."""
    args = parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.params, args.steps, args.batch, args.dtype, args.threads)))
        return 0
    import proxopt
    presets = args.presets.split(",") if args.presets else list(proxopt.available())
    rows = []
    t0 = time.time()
    for config in ["adam"] + presets:
        rows.append(run_child(config, args))
        r = rows[-1]
        print(f"  {config}: " + (r["error"] if "error" in r else f"{r['s_per_step']:.2f} s/step, "
                                 f"peak extra {r['peak_extra'] / MB if r['peak_extra'] is not None else float('nan'):.0f} MiB"),
              file=sys.stderr, flush=True)
    n = next((r["numel"] for r in rows if "numel" in r), 0)
    print(f"# Load test: {n / 1e6:.1f}M parameters ({args.dtype}), batch {args.batch}, {args.steps} steps, "
          f"{args.threads} threads, {time.time() - t0:.0f} s\n")
    print("Sizes in MiB. expected = params + latents + base state + other state + scratch (tensor byte "
          "accounting after training); peak extra = VmHWM during training minus RSS once the model, data and "
          "gradients exist.\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
