"""Aggregation, targets, console table, Markdown report and PNG plots of a suite run.

The input is the plain dict :func:`benchmarks.__main__.run_suite` builds:
``{"config": ..., "runs": [RunResult dicts], "speed": {...}, "wall_s": ...}``.
Every number written here comes from that dict; nothing is typed in by hand
except the targets themselves (the issue's), which are printed next to the
measured values with PASS / FAIL.
"""
from __future__ import annotations

import math
import os
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import problems as P

__all__ = [
    "aggregate",
    "results_table",
    "console_table",
    "targets",
    "orderings",
    "plot_curves",
    "plot_speed",
    "plot_summary",
    "write_report",
    "TARGETS",
]

#: The issue's targets (thresholds used by :func:`targets`).
TARGETS = {
    "step_unit": 1.3,        # presets with B' = 1: step <= 1.3x Adam
    "step_other": 1.5,       # presets with a non-trivial B': <= 1.5x
    "iteration": 1.05,       # training iteration <= 1.05x full precision
    "eval": 1.00,            # evaluation forward 1.00x full precision (tolerance below), faster than STE
    "eval_tolerance": 0.03,  # timing noise allowed on "1.00x"
    "digits_gap": 2.0,       # best binarized within 2 points of full precision on digits
    "mnist1d_cnn_gap": 5.0,  # ... within 5 points on the MNIST-1D CNN
}
TEACHER_RECOVERS = ("pc", "md-tanh-s", "bnn++")
ORDER_CHAINS = (("bnn++", "bnn+", "bnn", "bc"), ("md-tanh-s", "bc"))

Agg = Dict[Tuple[str, str], Dict[str, Any]]


def _mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    xs = [x for x in xs if x == x]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(runs: Sequence[Dict[str, Any]]) -> Agg:
    """Per (problem, method): mean and std over seeds of the finalized metric, soft metric and timings.

    Returns:
        ``{(problem, method): {"mean", "std", "n", "soft_mean", "loss_mean",
        "exact", "frozen", "seconds", "lr", "steps", "strength", "errors",
        "values", "curve_step", "curve_metric", "curve_loss"}}`` where the
        curves are means over seeds.
    """
    by: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in runs:
        by.setdefault((r["problem"], r["method"]), []).append(r)
    out: Agg = {}
    for key, rs in by.items():
        ok = [r for r in rs if not r.get("error")]
        mean, std = _mean_std([r["metric"] for r in ok])
        soft, _ = _mean_std([r["soft_metric"] for r in ok])
        loss, _ = _mean_std([r["final_loss"] for r in ok])
        frozen = [r["frozen"] for r in ok if r.get("frozen") is not None]
        entry: Dict[str, Any] = {
            "mean": mean, "std": std, "n": len(ok), "soft_mean": soft, "loss_mean": loss,
            "exact": all(r["exact"] for r in ok) if ok else False,
            "frozen": statistics.fmean(frozen) if frozen else None,
            "seconds": statistics.fmean([r["seconds"] for r in ok]) if ok else math.nan,
            "lr": rs[0]["lr"], "steps": rs[0]["steps"], "strength": rs[0].get("strength"),
            "errors": [r["error"] for r in rs if r.get("error")],
            "values": [r["metric"] for r in ok],
        }
        if ok and ok[0]["curve_step"]:
            n = min(len(r["curve_step"]) for r in ok)
            entry["curve_step"] = ok[0]["curve_step"][:n]
            entry["curve_metric"] = [statistics.fmean(r["curve_metric"][i] for r in ok) for i in range(n)]
            entry["curve_loss"] = [statistics.fmean(r["curve_loss"][i] for r in ok) for i in range(n)]
        out[key] = entry
    return out


def _fmt(e: Optional[Dict[str, Any]], problem: str) -> str:
    if e is None:
        return ""
    if e["n"] == 0:
        return "error"
    if P.get(problem).task == "regression":
        return f"{e['mean']:.1f} ± {e['std']:.1f}"
    return f"{e['mean']:.1f} ± {e['std']:.1f}"


def _order(problems: Sequence[str], methods: Sequence[str]) -> Tuple[List[str], List[str]]:
    return list(dict.fromkeys(problems)), list(dict.fromkeys(methods))


def results_table(agg: Agg, problems: Sequence[str], methods: Sequence[str]) -> Tuple[List[str], List[List[str]]]:
    """Header and rows: one row per method, one column per problem (finalized metric, mean ± std)."""
    problems, methods = _order(problems, methods)
    header = ["method"] + problems
    rows = []
    for m in methods:
        if not any((p, m) in agg for p in problems):
            continue
        rows.append([m] + [_fmt(agg.get((p, m)), p) for p in problems])
    return header, rows


def _text_table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _md_table(header: List[str], rows: List[List[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def console_table(results: Dict[str, Any]) -> str:
    """The results table (and the target summary) as plain text for the terminal."""
    agg = aggregate(results["runs"])
    cfg = results["config"]
    header, rows = results_table(agg, cfg["problems"], cfg["methods_all"])
    parts = ["Finalized (hard-quantized) models: test accuracy % (teacher: Hamming distance to w*), "
             f"mean ± std over {len(cfg['seeds'])} seed(s)", _text_table(header, rows)]
    tg = targets(results)
    if tg:
        parts += ["", "Targets", _text_table(["target", "measured", "status"], [[t[0], t[2], t[3]] for t in tg])]
    return "\n".join(parts)


def _best_quantized(agg: Agg, problem: str) -> Optional[Tuple[str, float]]:
    best = None
    for (p, m), e in agg.items():
        if p != problem or m == "fp" or e["n"] == 0 or e["mean"] != e["mean"]:
            continue
        if best is None or e["mean"] > best[1]:
            best = (m, e["mean"])
    return best


def targets(results: Dict[str, Any]) -> List[Tuple[str, str, str, str]]:
    """Every target of the issue that this run measured: ``(name, target, measured, PASS/FAIL)``."""
    agg = aggregate(results["runs"])
    speed = results.get("speed") or {}
    out: List[Tuple[str, str, str, str]] = []
    status = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    from .speed import UNIT_BACKWARD

    step = speed.get("step") or {}
    for name in dict.fromkeys(n for table in step.values() for n in table):
        lim = TARGETS["step_unit"] if name in UNIT_BACKWARD else TARGETS["step_other"]
        vals = [(size, table[name]["ratio"]) for size, table in step.items() if name in table]
        same = [table[name]["ratio_same"] for table in step.values() if name in table and "ratio_same" in table[name]]
        kind = "B' = 1" if name in UNIT_BACKWARD else "other B'"
        measured = ", ".join(f"{size} {r:.2f}x" for size, r in vals)
        if same and len(same) == len(vals) and any(table[name].get("fused") for table in step.values()
                                                   if name in table):
            measured += " (vs fused Adam: " + " / ".join(f"{r:.2f}x" for r in same) + ")"
        out.append((f"step {name}", f"<= {lim:.1f}x torch.optim.Adam, default implementation ({kind})",
                    measured, status(all(r <= lim for _, r in vals))))
    it = speed.get("iteration") or {}
    for name, s in it.items():
        if name in ("fp", "ste-bc"):
            continue
        out.append((f"train iteration {name}", f"<= {TARGETS['iteration']:.2f}x fp",
                    f"{s['vs_fp']:.3f}x fp, {s['vs_ste']:.3f}x ste-bc", status(s["vs_fp"] <= TARGETS["iteration"])))
    ev = (speed.get("eval") or {}).get("proxopt")
    if ev:
        ok = ev["vs_fp"] <= TARGETS["eval"] + TARGETS["eval_tolerance"]
        out.append(("eval forward vs fp", f"1.00x (± {TARGETS['eval_tolerance']:.2f} timing noise)",
                    f"{ev['vs_fp']:.3f}x", status(ok)))
        out.append(("eval forward vs ste-bc", "< 1.00x (faster than STE in the model)", f"{ev['vs_ste']:.3f}x",
                    status(ev["vs_ste"] < 1.0)))
    if any(p == "teacher" for p, _ in agg):
        for m in TEACHER_RECOVERS:
            e = agg.get(("teacher", m))
            if e is None or e["n"] == 0:
                continue
            vals = ", ".join(str(int(v)) for v in e["values"])
            out.append((f"teacher: {m} recovers w*", "Hamming 0 in every seed", f"Hamming {vals}",
                        status(all(v == 0 for v in e["values"]))))
    for prob, gap in (("digits-mlp", TARGETS["digits_gap"]), ("digits-cnn", TARGETS["digits_gap"]),
                      ("mnist1d-cnn", TARGETS["mnist1d_cnn_gap"])):
        fp, best = agg.get((prob, "fp")), _best_quantized(agg, prob)
        if fp is None or best is None:
            continue
        d = fp["mean"] - best[1]
        out.append((f"{prob}: best binarized vs fp", f"within {gap:.0f} points",
                    f"{best[0]} {best[1]:.1f} vs fp {fp['mean']:.1f} (gap {d:.1f})", status(d <= gap)))
    for prob, chain, ok, text in orderings(agg, [p for p, _ in agg]):
        out.append((f"{prob}: {' >= '.join(chain)}", "holds (papers' ordering)", text, status(ok)))
    return out


def orderings(agg: Agg, problems: Sequence[str]) -> List[Tuple[str, Tuple[str, ...], bool, str]]:
    """Check the papers' orderings on each problem: BNN++ >= BNN+ >= BNN >= BC and MD-tanh-S >= BC.

    "Better" is higher accuracy or lower Hamming distance; means equal at the
    displayed precision (0.1) count as holding. For every pair
    that fails, the text gives the gap against the seeds' spread (a gap
    smaller than the larger std is "within seed noise") and, where the
    weaker-than-expected method has a vanishing backward factor, the share
    of its latents that were frozen (``RunResult.frozen``: at the end for
    bnn / bnn+, at mid-training for the annealed bnn++ / gd-tanh).
    """
    out = []
    for prob in dict.fromkeys(problems):
        if P.get(prob).levels != "binary":
            continue
        hib = P.get(prob).higher_is_better
        for chain in ORDER_CHAINS:
            es = [agg.get((prob, m)) for m in chain]
            if any(e is None or e["n"] == 0 for e in es):
                continue
            ok, notes = True, []
            for (a, ea), (b, eb) in zip(zip(chain, es), zip(chain[1:], es[1:])):
                diff = (ea["mean"] - eb["mean"]) if hib else (eb["mean"] - ea["mean"])
                if diff > -0.05:  # ties at the displayed precision (0.1) count as holding
                    continue
                ok = False
                noise = max(ea["std"], eb["std"])
                why = "within seed noise" if -diff <= noise else "beyond seed noise"
                fz = ea.get("frozen")
                when = "at mid-training" if a in ("bnn++", "gd-tanh") else "at the end"
                extra = f"; {a} has {100 * fz:.0f}% of latents frozen (B' ~ 0) {when}" if fz else ""
                notes.append(f"{a} < {b} by {-diff:.1f} ({why}, std {noise:.1f}){extra}")
            vals = " / ".join(f"{e['mean']:.1f}" for e in es)  # type: ignore[index]
            out.append((prob, chain, ok, vals + ("" if ok else ": " + "; ".join(notes))))
    return out


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(agg: Agg, problem: str, methods: Sequence[str], path: str) -> Optional[str]:
    """Training loss and hard-quantized test metric against steps (mean over seeds), one PNG per problem."""
    ms = [m for m in dict.fromkeys(methods) if (problem, m) in agg and "curve_step" in agg[(problem, m)]]
    if not ms:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    cmap = plt.get_cmap("tab20")
    for i, m in enumerate(ms):
        e = agg[(problem, m)]
        style = dict(color=cmap(i % 20), lw=2.2 if m in ("fp", "ste-bc") else 1.3,
                     ls="--" if m in ("fp", "ste-bc") else "-")
        axes[0].plot(e["curve_step"], [max(x, 1e-12) for x in e["curve_loss"]], label=m, **style)
        axes[1].plot(e["curve_step"], e["curve_metric"], label=m, **style)
    prob = P.get(problem)
    axes[0].set_yscale("log")
    axes[0].set_title(f"{problem}: training loss (training weights)")
    axes[1].set_title(f"{problem}: " + ("test accuracy % (hard-quantized)" if prob.higher_is_better
                                        else "Hamming distance to w* (hard-quantized)"))
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if prob.higher_is_better:
        lo = min(min(agg[(problem, m)]["curve_metric"][len(agg[(problem, m)]["curve_metric"]) // 2:]) for m in ms)
        axes[1].set_ylim(max(0.0, lo - 5), 100)
    axes[1].legend(fontsize=7, ncol=2, loc="lower right" if prob.higher_is_better else "upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_summary(agg: Agg, problems: Sequence[str], methods: Sequence[str], path: str) -> Optional[str]:
    """One panel per classification problem: finalized accuracy per method (mean ± std over seeds)."""
    probs = [p for p in dict.fromkeys(problems) if P.get(p).higher_is_better and any((p, m) in agg for m in methods)]
    if not probs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(probs), figsize=(3.2 * len(probs) + 1, 4.2), squeeze=False)
    for ax, p in zip(axes[0], probs):
        ms = [m for m in dict.fromkeys(methods) if (p, m) in agg and agg[(p, m)]["n"] > 0]
        entries = [agg[(p, m)] for m in ms]
        labels = list(ms)
        ref = P.get(p).reference
        if (p, "fp") not in agg and ref and (ref, "fp") in agg:
            entries.insert(0, agg[(ref, "fp")])
            labels.insert(0, f"fp ({ref})")
        means = [e["mean"] for e in entries]
        stds = [e["std"] for e in entries]
        colors = ["tab:gray" if m.startswith("fp") else ("tab:orange" if m == "ste-bc" else "tab:blue")
                  for m in labels]
        ax.barh(range(len(labels)), means, xerr=stds, color=colors)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        lo = min(means) if means else 0.0
        ax.set_xlim(max(0.0, lo - 5), 100)
        ax.set_title(p, fontsize=10)
        ax.set_xlabel("test accuracy % (finalized)")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_speed(speed: Dict[str, Any], path: str) -> Optional[str]:
    """Grouped bars: step time / Adam step per preset and size, with the 1.3x and 1.5x targets."""
    step = speed.get("step") or {}
    if not step:
        return None
    plt = _plt()
    sizes = list(step)
    names = list(dict.fromkeys(n for s in sizes for n in step[s]))
    fig, ax = plt.subplots(figsize=(12, 4))
    w = 0.8 / len(sizes)
    for j, s in enumerate(sizes):
        xs = [i + (j - (len(sizes) - 1) / 2) * w for i in range(len(names))]
        ax.bar(xs, [step[s].get(n, {}).get("ratio", float("nan")) for n in names], width=w, label=s)
    ax.axhline(TARGETS["step_unit"], color="k", ls="--", lw=1, label="1.3x (B' = 1)")
    ax.axhline(TARGETS["step_other"], color="r", ls=":", lw=1, label="1.5x (other B')")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30)
    ax.set_ylabel("step time / torch.optim.Adam step (default impl.)")
    ax.set_title("Optimizer step time relative to the base optimizer (same parameters, same run)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _mb(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x / 2 ** 20:.2f} MiB"


def write_report(results: Dict[str, Any], out: str) -> str:
    """Write ``report.md`` and the PNG plots into ``out``; return the report's path."""
    os.makedirs(out, exist_ok=True)
    cfg = results["config"]
    agg = aggregate(results["runs"])
    speed = results.get("speed") or {}
    problems, methods = cfg["problems"], cfg["methods_all"]
    L: List[str] = []
    L.append("# proxopt benchmark report\n")
    L.append(f"Command: `{cfg['command']}`  \nWall time: {results['wall_s']:.0f} s "
             f"(training {results.get('train_s', 0):.0f} s, speed {results.get('speed_s', 0):.0f} s)  \n"
             f"Machine: {cfg['machine']}  \nSeeds: {', '.join(map(str, cfg['seeds']))}; "
             f"training workers: {cfg['workers']} (1 thread each); timing threads: {cfg['threads']}\n")
    L.append("All numbers below were measured in this run. Accuracy is that of the *finalized* model "
             "(`opt.finalize()`: every quantized weight exactly on a level), mean ± std over seeds.\n")

    tg = targets(results)
    if tg:
        L.append("## Targets\n")
        npass = sum(t[3] == "PASS" for t in tg)
        L.append(f"{npass} of {len(tg)} measured targets pass.\n")
        L.append(_md_table(["target", "goal", "measured", "status"], [list(t) for t in tg]))
        L.append("")

    L.append("## Accuracy of the finalized models\n")
    L.append("Test accuracy in % (teacher: Hamming distance between the finalized weights and w*, out of "
             "d; for `fp` the sign of its real weights). Mean ± std over seeds.\n")
    header, rows = results_table(agg, problems, methods)
    L.append(_md_table(header, rows))
    L.append("")
    png = plot_summary(agg, problems, methods, os.path.join(out, "accuracy.png"))
    if png:
        L.append(f"![accuracy summary]({os.path.basename(png)})\n")
    L.append("### Per problem\n")
    for prob in problems:
        pr = P.get(prob)
        L.append(f"**{prob}**: {pr.title}. Budget {agg.get((prob, 'fp'), {}).get('steps', pr.steps)} steps, "
                 f"batch {pr.batch or 'full'}, levels {pr.levels}.\n")
        hdr = ["method", "finalized", "trained (soft) weights", "test loss (final)", "exact levels", "lr",
               "final mu/beta", "frozen latents (B' ~ 0)", "s/run"]
        rws = []
        for m in methods:
            e = agg.get((prob, m))
            if e is None:
                continue
            if e["n"] == 0:
                rws.append([m, "error: " + "; ".join(e["errors"])[:120]] + [""] * 7)
                continue
            rws.append([m, _fmt(e, prob), f"{e['soft_mean']:.1f}", f"{e['loss_mean']:.4g}",
                        "yes" if e["exact"] else "no", f"{e['lr']:g}",
                        "" if e["strength"] is None else f"{e['strength']:.3g}",
                        "" if e["frozen"] is None else f"{100 * e['frozen']:.0f}%", f"{e['seconds']:.2f}"])
        L.append(_md_table(hdr, rws))
        L.append("")
        ref = agg.get((pr.reference, "fp")) if pr.reference else None
        if ref is not None and (prob, "fp") not in agg:
            L.append(f"Full-precision reference: `fp` on {pr.reference} (same data, model and budget): "
                     f"{_fmt(ref, pr.reference)}.\n")
        png = plot_curves(agg, prob, methods, os.path.join(out, f"curves_{prob}.png"))
        if png:
            L.append(f"![{prob} curves]({os.path.basename(png)})\n")

    ords = orderings(agg, problems)
    if ords:
        L.append("## The papers' orderings\n")
        L.append("BNN++ >= BNN+ >= BNN >= BC [PC++] and MD-tanh-S >= BC [MD], on the finalized metric "
                 "(means over seeds; lower Hamming distance is better on the teacher). A failing pair gives "
                 "its gap against the seeds' std and, for methods with a vanishing backward factor, the share "
                 "of latents frozen (|B'| < 1% of its maximum: they no longer learn; at the end for bnn / bnn+, at "
                 "mid-training for the annealed bnn++ / gd-tanh).\n")
        L.append(_md_table(["problem", "ordering", "holds", "means (in order) / reason"],
                           [[p, " >= ".join(c), "yes" if ok else "no", t] for p, c, ok, t in ords]))
        L.append("")

    if speed:
        L.append("## Speed and memory\n")
        L.append(f"Timings: medians of {speed.get('clock', 'wall time')} per call, warm-up first, the compared "
                 f"optimizers/models alternating within each repeat so machine load hits both alike; "
                 f"{cfg['threads']} intra-op thread(s). Step ratios are the median of the per-repeat ratios. "
                 f"Allocator: {speed.get('allocator', 'defaults')} (see `benchmarks.speed.keep_freed_memory`: "
                 "without it Adam's per-step temporaries page-fault, which inflates Adam's time by a varying "
                 "amount and makes every ratio look better). "
                 f"Two-level softmax kernels: {speed.get('native', 'not recorded')} (`proxopt.native.status()`).\n")
        step = speed.get("step") or {}
        from .speed import UNIT_BACKWARD

        if step:
            L.append("### Optimizer step vs `torch.optim.Adam` (default implementation), same parameters\n")
            L.append("Sizes: 1M = MLP 784-1024-256-10; 11M = ResNet-18 parameter shapes (11.7M); 50M = 7 "
                     "transformer blocks of width 768 (49.6M). Weight matrices / kernels quantized, biases and "
                     "norms in a `quantize=False` group; `.grad` fixed random tensors; `lr=1e-3`.\n")
            sizes = list(step)
            hdr = ["preset", "B'", "target"] + [f"{s} ratio (ms vs Adam ms)" for s in sizes] + ["status"]
            rws = []
            for name in dict.fromkeys(n for s in sizes for n in step[s]):
                lim = TARGETS["step_unit"] if name in UNIT_BACKWARD else TARGETS["step_other"]
                cells, ok = [], True
                for s in sizes:
                    v = step[s].get(name)
                    if v is None:
                        cells.append("")
                        continue
                    ok &= v["ratio"] <= lim
                    cells.append(f"{v['ratio']:.2f}x ({v['ms']:.1f} / {v['base_ms']:.1f})")
                rws.append([name, "1" if name in UNIT_BACKWARD else "non-trivial", f"<= {lim}x"] + cells +
                           ["PASS" if ok else "FAIL"])
            L.append(_md_table(hdr, rws))
            L.append("")
            names = list(dict.fromkeys(n for s in sizes for n in step[s]))
            if any(step[s][n].get("fused") for s in sizes for n in step[s]):
                L.append("proxopt runs its base Adam with torch's fused implementation unless the user picks one "
                         "(`fused=False` / `foreach=...` keep torch's; `proxopt.optim.engine.fused_default`): one "
                         "pass over memory per tensor instead of one per operation, same formulas (results differ "
                         "from the default implementation by rounding). The ratios above are what a user who "
                         "replaces `torch.optim.Adam` sees. What quantization itself adds is the step against Adam "
                         "running the same (fused) implementation over the same parameters:\n")
                L.append(_md_table(["preset"] + [f"{s}: vs fused Adam (ms)" for s in sizes],
                                   [[n] + [f"{step[s][n]['ratio_same']:.2f}x ({step[s][n]['same_ms']:.1f})"
                                           if n in step[s] and "ratio_same" in step[s][n] else "" for s in sizes]
                                    for n in names]))
                L.append("")
            dual = [(name, s, step[s][name]) for name in names
                    for s in sizes if name in step[s] and "ratio_latent" in step[s][name]]
            if dual:
                L.append("Presets whose base optimizer steps a larger dual (softmax: one number per level per "
                         "weight) against Adam (same implementation as their base) over tensors of the dual's "
                         "shapes, i.e. the engine's overhead on top of its own base step: " + "; ".join(
                             f"{n} {s} {v['ratio_latent']:.2f}x ({v['latent_numel'] / v['params']:.2f}x the numbers)"
                             for n, s, v in dual) + ".\n")
            reps = {s: int(next(iter(step[s].values()))["repeats"]) for s in sizes}
            L.append("Repeats per size: " + ", ".join(f"{s}: {r}" for s, r in reps.items()) + ".\n")
            prof = speed.get("profile") or {}
            if prof:
                L.append(f"**Where the time goes** (presets that miss their target at some size; `torch.profiler`, "
                         f"{speed.get('profile_size')} parameters, self CPU time per step, top operators; "
                         "`adam` is `torch.optim.Adam` alone, default implementation):\n")
                L.append(_md_table(["optimizer", "ms/step (profiled)", "top operators: ms/step (calls/step)"],
                                   [[n, f"{p['ms']:.1f}", "; ".join(f"{k} {ms:.1f} ({c:g})" for k, ms, c in p["ops"])]
                                    for n, p in prof.items()]))
                L.append("")
                notes = []
                if any(n.startswith("md-softmax") for n in prof):
                    notes.append("md-softmax: the base Adam runs on the dual, 2 numbers per binary weight, so its own "
                                 "work doubles: about 2x the base Adam step (same implementation) is the floor for "
                                 "this preset, whatever the engine does (md-softmax-s keeps its binary dual (-t, t) "
                                 "as t: one number per weight). The pull-back, projection and (md-softmax) "
                                 "renormalisation run in `proxopt.native`'s C kernels when they are available "
                                 f"(this run: {speed.get('native', 'not recorded')}); ctypes calls are not torch "
                                 "operators, so that time is in the `Optimizer.step#MirrorDescent.step` row.")
                if any(n in prof for n in ("bnn+", "bnn++", "gd-tanh")):
                    notes.append("bnn+ / bnn++ / gd-tanh: B' (sign-Swish' or tanh') needs a sigmoid, an exp per "
                                 "weight, before the base step (bnn++ and gd-tanh one more in F after it); with one "
                                 "thread these passes are compute-bound (`softplus_backward`, `silu_backward`, "
                                 "`sigmoid_backward` in the profile are the fused sigmoid kernels).")
                if "md-tanh" in prof:
                    notes.append("md-tanh (primal form): at a fixed beta its per-step re-encoding is a clamp of theta "
                                 "(one pass) on top of md-tanh-s's work.")
                L.extend(f"- {n}" for n in notes)
                if notes:
                    L.append("")
            png = plot_speed(speed, os.path.join(out, "speed_step.png"))
            if png:
                L.append(f"![step ratios]({os.path.basename(png)})\n")
            L.append("### Memory: optimizer state\n")
            L.append("Memory of the tensors in `opt.state_dict()` (proxopt: latents + the base Adam's moments; "
                     "Adam: its moments), counted exactly from the tensor sizes, each storage once (proxopt's "
                     "state dict lists the base moments twice, as the same tensors). The ideal is 1.5x Adam "
                     "(one latent per quantized weight on top of two moments; md-softmax-s too, which keeps its "
                     "binary dual (-t, t) as t), 3x for md-softmax (a 2-entry dual per weight and Adam's two "
                     "moments for each entry), 1x for pq (no latent), 0.5x for Bop (one gradient average, no "
                     "latent).\n")
            hdr = ["preset"] + [f"{s}: state (ratio to Adam)" for s in sizes]
            rws = []
            for name in dict.fromkeys(n for s in sizes for n in step[s]):
                cells = []
                for s in sizes:
                    v = step[s].get(name)
                    cells.append("" if v is None else
                                 f"{_mb(v['state_bytes'])} ({v['state_bytes'] / v['base_state_bytes']:.2f}x)")
                rws.append([name] + cells)
            rws.append(["Adam"] + [_mb(next(iter(step[s].values()))["base_state_bytes"]) for s in sizes])
            L.append(_md_table(hdr, rws))
            L.append("")
            ck = {n: v for s in sizes for n, v in step[s].items() if v.get("checkpoint_bytes")}
            if ck:
                L.append("Checkpoint size, `torch.save(opt.state_dict())` at 1M: " + ", ".join(
                    f"{n} {v['checkpoint_bytes'] / v['base_checkpoint_bytes']:.2f}x" for n, v in ck.items())
                    + f" of Adam's ({_mb(next(iter(ck.values()))['base_checkpoint_bytes'])}).\n")
        it = speed.get("iteration") or {}
        if it:
            L.append("### Training iteration (zero_grad + forward + backward + step)\n")
            L.append(f"Model: {speed.get('iteration_model', 'timing CNN')}. Soft presets include their "
                     "`AnnealScheduler.step()` (it re-projects the model; the primal forms keep theirs until the "
                     "next step), `ste-bc` its clip. `fp` and `ste-bc` train with `torch.optim.Adam()` as written "
                     "(default implementation); the presets' base Adam runs fused, proxopt's default.\n")
            L.append("Whole iterations vary by about ±10% per call on this CPU, so the ratios judged against the "
                     "target use the lower-variance estimator of the same timings: forward + backward is the same "
                     "computation for `fp` and every preset (one shared model instance, same input), so its median "
                     "is pooled over them and added to each method's median optimizer side (step, scheduler, "
                     "zero_grad; `ste-bc` keeps its own forward + backward). The direct ratios of whole-iteration "
                     "medians are shown too.\n")
            L.append(_md_table(["method", "iteration ms", "fwd+bwd ms", "optimizer side ms", "vs fp", "vs ste-bc",
                                "vs fp (direct)", "vs ste-bc (direct)", f"target <= {TARGETS['iteration']}x fp"],
                               [[m, f"{s['ms']:.2f}", f"{s.get('fwd_bwd_ms', float('nan')):.2f}",
                                 f"{s.get('opt_ms', float('nan')):.2f}", f"{s['vs_fp']:.3f}", f"{s['vs_ste']:.3f}",
                                 f"{s.get('vs_fp_direct', float('nan')):.3f}",
                                 f"{s.get('vs_ste_direct', float('nan')):.3f}",
                                 "" if m in ("fp", "ste-bc") else
                                 ("PASS" if s["vs_fp"] <= TARGETS["iteration"] else "FAIL")]
                                for m, s in it.items()]))
            L.append("")
        ev = speed.get("eval") or {}
        if ev:
            L.append("### Evaluation forward (no_grad, eval mode)\n")
            L.append("`proxopt`: the finalized model (holds ±1 weights; a plain module, nothing quantized in "
                     "forward); `fp`: the same module holding real weights; `ste-bc`: its STE twin (same tensors), "
                     "binarizing the weights in every forward. Timing CNN, batch 64.\n")
            L.append(_md_table(["model", "ms", "vs fp", "vs ste-bc"],
                               [[m, f"{s['ms']:.3f}", f"{s['vs_fp']:.3f}", f"{s['vs_ste']:.3f}"]
                                for m, s in ev.items()]))
            L.append("")
        dk = speed.get("disk") or {}
        if dk:
            L.append("### Size on disk (timing CNN)\n")
            rws = [["full precision `torch.save(state_dict)`", _mb(dk.get("fp"))],
                   ["finalized model `torch.save(state_dict)` (float32 ±1)", _mb(dk.get("finalized"))],
                   ["`proxopt.export.save_binary`", _mb(dk.get("packed")) if dk.get("packed") else
                    ("not available in this version" if "packed_error" not in dk else dk["packed_error"])],
                   ["ideal packing, computed (1 bit per quantized weight + float32 rest)", _mb(dk.get("ideal"))]]
            L.append(_md_table(["what", "size"], rws))
            L.append("")
        for note in speed.get("notes", []):
            L.append(f"- {note}")
        L.append("")

    L.append("## Setup\n")
    L.extend(f"- {line}" for line in cfg.get("notes", []))
    L.append("")
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(L))
    return path
