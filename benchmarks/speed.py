"""Speed and memory of the proxopt optimizers, measured against their base optimizer in the same run.

* **Optimizer step** (:func:`step_times`): one ``opt.step()`` of every preset
  against one ``torch.optim.Adam`` step (its default implementation) over the
  same parameter shapes, at about 1M (an MLP), 11.7M (ResNet-18) and 50M (7
  transformer blocks, width 768) parameters. ``.grad`` holds fixed random
  tensors; weight matrices / kernels are quantized, biases and norms are a
  ``quantize=False`` group. The two optimizers alternate within each repeat
  (so both see the same machine load) after warm-up steps; medians.
* **Training iteration** (:func:`iteration_times`): zero_grad + forward +
  backward + step (+ the anneal scheduler for soft presets, + the clip for
  the STE baseline) on a CNN for 3x16x16 inputs, against full precision
  (Adam) and BinaryConnect with STE layers inside the model.
* **Evaluation forward** (:func:`eval_times`): the finalized model (it holds
  quantized weights; nothing is quantized in forward) against the same
  architecture in full precision and the STE model (which binarizes its
  weights in every forward).
* **Memory** (:func:`state_bytes`): bytes of every tensor in
  ``opt.state_dict()`` (latents + base state) against Adam's, and the size on
  disk of the finalized model's ``state_dict`` (``torch.save``).
"""
from __future__ import annotations

import gc
import io
import statistics
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import proxopt

from . import models as M

__all__ = [
    "SIZES",
    "UNIT_BACKWARD",
    "mlp_shapes",
    "resnet18_shapes",
    "transformer_shapes",
    "make_params",
    "state_bytes",
    "checkpoint_bytes",
    "set_clock",
    "keep_freed_memory",
    "step_times",
    "profile_step",
    "timing_cnn",
    "iteration_times",
    "eval_times",
    "disk_sizes",
]

#: Presets whose backward factor is B' = 1 (target: step <= 1.3x Adam); the others have a non-trivial B'
#: or extra work (target <= 1.5x).
UNIT_BACKWARD = frozenset({"bc", "pc", "md-tanh-s", "md-softmax-s", "md-linear", "md-tanh"})

Shape = Tuple[int, ...]
#: Input side of the timing CNN.
SIDE = 16


def mlp_shapes() -> List[Shape]:
    """An MLP 784-1024-256-10 with biases: 1,068,810 parameters (the "1M" size)."""
    return [(1024, 784), (1024,), (256, 1024), (256,), (10, 256), (10,)]


def resnet18_shapes(classes: int = 1000) -> List[Shape]:
    """The parameter shapes of torchvision's ResNet-18 (11,689,512 parameters with 1000 classes).

    conv1 7x7, four stages of two basic blocks (64, 128, 256, 512 channels,
    1x1 downsample convolutions at stages 2-4), BatchNorm weight and bias
    after every convolution, and the 512 x classes fully connected layer.
    """
    shapes: List[Shape] = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            c_in = cin if block == 0 else cout
            shapes += [(cout, c_in, 3, 3), (cout,), (cout,), (cout, cout, 3, 3), (cout,), (cout,)]
            if block == 0 and stage > 0:
                shapes += [(cout, c_in, 1, 1), (cout,), (cout,)]
        cin = cout
    shapes += [(classes, 512), (classes,)]
    return shapes


def transformer_shapes(d: int = 768, blocks: int = 7) -> List[Shape]:
    """``blocks`` transformer blocks of width ``d`` (qkv, projection, 4d MLP, two LayerNorms, biases).

    ``d = 768, blocks = 7``: 49,627,392 parameters (the "50M" size).
    """
    shapes: List[Shape] = []
    for _ in range(blocks):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return shapes


#: name -> (shapes, repeats, warm-up steps)
SIZES: Dict[str, Tuple[Callable[[], List[Shape]], int, int]] = {
    "1M": (mlp_shapes, 30, 3),
    "11M": (resnet18_shapes, 11, 2),
    "50M": (transformer_shapes, 4, 1),
}


def _numel(shapes: Iterable[Shape]) -> int:
    n = 0
    for s in shapes:
        k = 1
        for x in s:
            k *= x
        n += k
    return n


def make_params(shapes: Sequence[Shape], seed: int = 0) -> List[nn.Parameter]:
    """Parameters of the given shapes, ``U(-1, 1)``, each with ``.grad`` a fixed ``N(0, 1)`` tensor."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in shapes:
        p = nn.Parameter(torch.rand(s, generator=g).mul_(2).sub_(1))
        p.grad = torch.randn(s, generator=g)
        out.append(p)
    return out


def _clone(params: Sequence[nn.Parameter]) -> List[nn.Parameter]:
    out = []
    for p in params:
        q = nn.Parameter(p.detach().clone())
        q.grad = p.grad.clone()  # type: ignore[union-attr]
        out.append(q)
    return out


def _groups(params: Sequence[Tensor]) -> List[Dict[str, Any]]:
    q = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    groups: List[Dict[str, Any]] = [{"params": q, "quantize": True}]
    if rest:
        groups.append({"params": rest, "quantize": False})
    return groups


def _tensors(obj: Any) -> Iterable[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def state_bytes(obj: Any) -> int:
    """Bytes of memory held by the tensors reachable in ``obj`` (nested dicts / lists / tuples).

    Each underlying storage is counted once, so a tensor that a state dict
    lists twice (proxopt's ``state_dict()`` exposes the base optimizer's
    moments both under ``"base"`` and per parameter, as the same tensors)
    is not double counted. Applied to ``opt.state_dict()`` this is the
    optimizer's memory: latents plus the base optimizer's state (for
    proxopt), or Adam's two moments.
    """
    seen: Dict[Tuple[str, int], int] = {}
    for t in _tensors(obj):
        st = t.untyped_storage()
        seen[(str(t.device), st.data_ptr())] = st.nbytes()
    return sum(seen.values())


def checkpoint_bytes(obj: Any) -> int:
    """Size of ``torch.save(obj)`` (shared storages are written once)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


_CLOCK: Callable[[], float] = time.perf_counter

#: glibc ``mallopt`` parameters: M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> str:
    """Ask glibc's allocator to keep freed memory in the process; return a description of what was done.

    ``torch.optim.Adam``'s default step allocates two weight-sized
    temporaries per parameter (``sqrt`` and the division). With glibc's
    defaults that memory goes back to the kernel when it is freed and every
    step page-faults it in again: on this class of machine about a third of an
    11M-parameter Adam step is then page faults, and how much varies from
    run to run with the heap's layout. Raising the trim and mmap thresholds
    (as jemalloc / tcmalloc, which PyTorch's CPU performance guide
    recommends, do by design) removes that cost from both optimizers, so the
    ratios compare the work done. It makes Adam faster, so the ratios are
    conservative for proxopt, whose step allocates nothing per parameter.
    Not glibc (or no ``mallopt``): nothing is done.
    """
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
    except (OSError, AttributeError):
        ok = False
    return ("glibc mallopt: freed memory kept (trim threshold 1 GiB, mmap threshold 32 MiB)" if ok
            else "allocator defaults (glibc mallopt unavailable)")


def set_clock(cpu: bool) -> str:
    """Time with the process CPU clock (``cpu=True``) or the wall clock; return the clock's name.

    With one intra-op thread every operator runs on the calling thread, so
    CPU time is the work done and does not count the time the process waits
    while other processes use the cores: the robust choice on a shared
    machine. With several threads use the wall clock (OpenMP threads spin).
    """
    global _CLOCK
    _CLOCK = time.process_time if cpu else time.perf_counter
    return "process CPU time" if cpu else "wall time"


def _timed(fn: Callable[[], Any]) -> float:
    t0 = _CLOCK()
    fn()
    return _CLOCK() - t0


def step_times(size: str, presets: Sequence[str], repeats: Optional[int] = None, warmup: Optional[int] = None,
               progress: Optional[Callable[[str], None]] = None) -> Dict[str, Dict[str, float]]:
    """Median step time of each preset and of ``torch.optim.Adam`` over the same parameters.

    For each preset a fresh copy of the parameters (with the same fixed
    gradients) gets the preset (``lr=1e-3``) and another copy a plain
    ``torch.optim.Adam(lr=1e-3)``; after ``warmup`` steps of both, each of
    ``repeats`` rounds times one step of each, alternating which goes first.
    The ratio is the median over rounds of the within-round ratio (paired,
    so slow drifts of the machine's speed cancel).

    Returns:
        ``{preset: {"ms": median preset step, "base_ms": median Adam step,
        "ratio": median paired ratio, "state_bytes": memory of opt.state_dict()'s tensors
        (:func:`state_bytes`), "base_state_bytes": Adam's, "checkpoint_bytes" /
        "base_checkpoint_bytes": ``torch.save`` sizes (1M only), "params": count}}``; presets whose base
        optimizer steps more numbers than the model holds (the softmax dual) add ``"latent_numel"``,
        ``"latent_base_ms"`` (Adam over tensors of the latents' shapes) and ``"ratio_latent"`` (the paired
        ratio against it). ``"fused"`` is 1 when the preset's base runs Adam's fused implementation
        (proxopt's default, :func:`proxopt.optim.engine.fused_default`); ``"same_ms"`` / ``"ratio_same"``
        time Adam with that same implementation over the same parameters, so ``ratio_same`` is what
        quantization adds to the base update (``"ratio_latent"`` uses that implementation too).
    """
    make, rep_default, warm_default = SIZES[size]
    shapes = make()
    repeats = rep_default if repeats is None else repeats
    warmup = warm_default if warmup is None else warmup
    template = make_params(shapes)
    out: Dict[str, Dict[str, float]] = {}
    base_params = _clone(template)
    base = torch.optim.Adam(base_params, lr=1e-3)
    for _ in range(warmup):
        base.step()
    for name in presets:
        params = _clone(template)
        opt = proxopt.optimizer(name, _groups(params), lr=1e-3)
        for _ in range(warmup):
            opt.step()
            base.step()
        # Adam as proxopt's base runs it (fused where proxopt.optim.engine.fused_default picks it): the
        # ratio against it is what quantization adds on top of the base update itself.
        impl = {"fused": True} if any(g.get("fused") for g in opt.base_optimizer.param_groups) else {}
        same = torch.optim.Adam(_clone(template), lr=1e-3, **impl)
        # When the base optimizer steps more numbers than the model has (the softmax dual: d per weight),
        # also time that Adam over tensors of the latents' shapes: the engine's own overhead is the step over that.
        lat_shapes = [tuple(t.shape) for g in opt.base_optimizer.param_groups for t in g["params"]]
        lat_base = None
        if _numel(lat_shapes) > _numel(shapes):
            lat_base = torch.optim.Adam(make_params(lat_shapes, seed=1), lr=1e-3, **impl)
        for _ in range(warmup):
            same.step()
            if lat_base is not None:
                lat_base.step()
        t_opt, t_base, t_same, t_lat = [], [], [], []
        for r in range(repeats):
            if r % 2 == 0:
                t_base.append(_timed(base.step))
                t_opt.append(_timed(opt.step))
            else:
                t_opt.append(_timed(opt.step))
                t_base.append(_timed(base.step))
            t_same.append(_timed(same.step))
            if lat_base is not None:
                t_lat.append(_timed(lat_base.step))
        base_bytes = state_bytes(base.state_dict())
        ckpt = checkpoint_bytes(opt.state_dict()) if size == "1M" else None
        base_ckpt = checkpoint_bytes(base.state_dict()) if size == "1M" else None
        ms, bms = 1e3 * statistics.median(t_opt), 1e3 * statistics.median(t_base)
        paired = statistics.median(a / b for a, b in zip(t_opt, t_base))
        out[name] = {"ms": ms, "base_ms": bms, "ratio": paired, "state_bytes": float(state_bytes(opt.state_dict())),
                     "base_state_bytes": float(base_bytes), "params": float(_numel(shapes)),
                     "checkpoint_bytes": ckpt, "base_checkpoint_bytes": base_ckpt,
                     "repeats": float(repeats), "fused": float(bool(impl)),
                     "same_ms": 1e3 * statistics.median(t_same),
                     "ratio_same": statistics.median(a / b for a, b in zip(t_opt, t_same))}
        if lat_base is not None:
            out[name]["latent_numel"] = float(_numel(lat_shapes))
            out[name]["latent_base_ms"] = 1e3 * statistics.median(t_lat)
            out[name]["ratio_latent"] = statistics.median(a / b for a, b in zip(t_opt, t_lat))
            del lat_base
        del opt, params, same
        gc.collect()
        if progress:
            progress(f"step {size} {name}")
    return out


def profile_step(size: str, preset: str, steps: int = 3, top: int = 6) -> Dict[str, Any]:
    """Where one optimizer step's time goes: ``torch.profiler`` over ``steps`` steps after one warm-up.

    Returns ``{"ms": total self CPU ms per step, "ops": [(op name, ms per step, calls per step), ...]}``
    with the ``top`` operators by self CPU time (``preset`` may be ``"adam"`` for the base optimizer).
    """
    from torch.profiler import ProfilerActivity, profile

    params = make_params(SIZES[size][0]())
    opt = torch.optim.Adam(params, lr=1e-3) if preset == "adam" else \
        proxopt.optimizer(preset, _groups(params), lr=1e-3)
    opt.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            opt.step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) / steps / 1e3
    ops = [(e.key, e.self_cpu_time_total / steps / 1e3, e.count / steps) for e in events[:top]]
    del opt, params
    gc.collect()
    return {"ms": total, "ops": ops}


def timing_cnn(ste: bool = False, width: int = 32, side: int = 16, classes: int = 10) -> nn.Sequential:
    """CNN for 3 x side x side inputs used for the iteration and evaluation timings.

    Four 3x3 conv blocks (``w, 2w, 4w, 8w`` channels, BatchNorm, ReLU,
    2x2 max-pool after blocks 2-4), a linear head and a BatchNorm on the
    logits; bias free (``width=32, side=16``: 399,156 parameters).
    ``ste=True`` uses the STE layers of :mod:`benchmarks.models`.
    """
    conv = M.BinaryConv2d if ste else nn.Conv2d
    lin = M.BinaryLinear if ste else nn.Linear
    w = width
    return nn.Sequential(
        conv(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        conv(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        conv(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.MaxPool2d(2),
        conv(4 * w, 8 * w, 3, padding=1, bias=False), nn.BatchNorm2d(8 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), lin(8 * w * (side // 8) ** 2, classes, bias=False), nn.BatchNorm1d(classes),
    )


_SOFT = ("pc", "bnn++", "md-tanh", "md-tanh-s", "md-softmax", "md-softmax-s", "md-linear", "gd-tanh")


def _setup(method: str, steps: int = 1000) -> Tuple[nn.Module, Any, Any]:
    torch.manual_seed(0)
    model = timing_cnn(ste=(method == "ste-bc"))
    if method in ("fp", "ste-bc"):
        return model, torch.optim.Adam(model.parameters(), lr=1e-3), None
    M.init_quantized_(model)
    opt = proxopt.optimizer(method, M.param_groups(model), lr=1e-3)
    sched = proxopt.AnnealScheduler(opt, final=1e4, total_steps=steps) if method in _SOFT else None
    return model, opt, sched


def _shared_models() -> Tuple[nn.Module, nn.Module]:
    """The timing CNN and its STE twin holding the *same* parameter and buffer tensors."""
    torch.manual_seed(0)
    model = timing_cnn()
    M.init_quantized_(model)
    twin = timing_cnn(ste=True)
    for (_, mod), (_, tmod) in zip(model.named_modules(), twin.named_modules()):
        for name, p in list(mod.named_parameters(recurse=False)):
            setattr(tmod, name, p)
        for name, b in list(mod.named_buffers(recurse=False)):
            tmod.register_buffer(name, b)
    return model, twin


def iteration_times(methods: Sequence[str], batch: int = 32, repeats: int = 15, warmup: int = 2,
                    progress: Optional[Callable[[str], None]] = None) -> Dict[str, Dict[str, float]]:
    """Median training-iteration time of each method on :func:`timing_cnn`, round robin over the methods.

    One iteration: ``zero_grad``, forward, cross-entropy, backward,
    ``opt.step()``, then the anneal scheduler's ``step()`` for soft presets
    (as in real training) and BinaryConnect's clip for ``ste-bc``. Every
    method trains the *same* model instance (the STE baseline an STE twin
    sharing its tensors; each method has its own optimizer and latents), so
    memory layout cannot favour one method, and every round times one
    iteration of every method, so machine load hits all of them alike.

    Each iteration is timed in two parts: forward + backward, and the
    optimizer side (``zero_grad``, step, scheduler, clip). Whole iterations
    vary by about ±10% per call on a CPU, so besides the direct ratio of
    medians (``vs_fp_direct``) the ratios use a lower-variance estimator of
    the same measurements: forward + backward is the identical computation
    for ``fp`` and every preset (same model, same input), so its median is
    pooled over all of them and added to each method's own optimizer-side
    median (``ste-bc`` keeps its own forward + backward, which binarizes).

    Returns:
        ``{method: {"ms": median whole iteration, "fwd_bwd_ms", "opt_ms": medians of the parts,
        "vs_fp": (F + S_m) / (F + S_fp), "vs_ste": (F + S_m) / (F_ste + S_ste), "vs_fp_direct",
        "vs_ste_direct": ratios of whole-iteration medians}}``.
    """
    names = list(dict.fromkeys(["fp", "ste-bc", *methods]))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, SIDE, SIDE, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    model, twin = _shared_models()
    setups: Dict[str, Tuple[nn.Module, Any, Any]] = {}
    for m in names:
        if m in ("fp", "ste-bc"):
            setups[m] = (twin if m == "ste-bc" else model, torch.optim.Adam(model.parameters(), lr=1e-3), None)
            continue
        opt = proxopt.optimizer(m, M.param_groups(model), lr=1e-3)
        sched = proxopt.AnnealScheduler(opt, final=1e4, total_steps=1000) if m in _SOFT else None
        setups[m] = (model, opt, sched)

    def it(m: str) -> Tuple[float, float]:
        net, opt, sched = setups[m]
        t0 = _CLOCK()
        F.cross_entropy(net(x), y).backward()
        t1 = _CLOCK()
        opt.step()
        if m == "ste-bc":
            M.clip_quantized_(net)
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)
        return t1 - t0, _CLOCK() - t1

    whole: Dict[str, List[float]] = {m: [] for m in names}
    fb: Dict[str, List[float]] = {m: [] for m in names}
    side: Dict[str, List[float]] = {m: [] for m in names}
    for r in range(warmup + repeats):
        order = names if r % 2 == 0 else names[::-1]
        for m in order:
            a, b = it(m)
            if r >= warmup:
                fb[m].append(a)
                side[m].append(b)
                whole[m].append(a + b)
        if progress:
            progress(f"iteration round {r + 1}")
    med = {m: 1e3 * statistics.median(v) for m, v in whole.items()}
    pooled = 1e3 * statistics.median([t for m in names if m != "ste-bc" for t in fb[m]])
    f_ste = 1e3 * statistics.median(fb["ste-bc"])
    s_med = {m: 1e3 * statistics.median(v) for m, v in side.items()}
    est = {m: (f_ste if m == "ste-bc" else pooled) + s_med[m] for m in names}
    return {m: {"ms": med[m], "fwd_bwd_ms": 1e3 * statistics.median(fb[m]), "opt_ms": s_med[m],
                "vs_fp": est[m] / est["fp"], "vs_ste": est[m] / est["ste-bc"],
                "vs_fp_direct": med[m] / med["fp"], "vs_ste_direct": med[m] / med["ste-bc"]} for m in names}


def eval_times(batch: int = 64, repeats: int = 50, warmup: int = 3) -> Dict[str, Dict[str, float]]:
    """Median evaluation-forward time (``no_grad``, eval mode) of :func:`timing_cnn` three ways.

    ``proxopt``: the model after one ``bc`` step and ``opt.finalize()`` (it
    holds ±1 weights; a plain ``nn.Module``, nothing quantized in forward);
    ``fp``: the same module holding full-precision weights; ``ste-bc``: the
    STE twin sharing those tensors, binarizing the weights in every forward.
    One module instance serves ``fp`` and ``proxopt`` (their weight values
    are swapped in between timings, outside the timed region), so only what
    the forward does can differ. Round robin, alternating order.

    Returns:
        ``{name: {"ms": median, "vs_fp": ..., "vs_ste": ...}}``.
    """
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, SIDE, SIDE, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    model, twin = _shared_models()
    weights = M.quantized_weights(model)
    real = [w.detach().clone() for w in weights]
    opt = proxopt.optimizer("bc", M.param_groups(model), lr=1e-3)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.finalize()
    binary = [w.detach().clone() for w in weights]
    model.eval()
    twin.eval()
    nets = {"fp": (model, real), "ste-bc": (twin, real), "proxopt": (model, binary)}
    names = list(nets)
    times: Dict[str, List[float]] = {m: [] for m in names}
    with torch.no_grad():
        for r in range(warmup + repeats):
            for m in (names if r % 2 == 0 else names[::-1]):
                net, vals = nets[m]
                for w, v in zip(weights, vals):
                    w.copy_(v)
                t = _timed(lambda: net(x))
                if r >= warmup:
                    times[m].append(t)
    med = {m: 1e3 * statistics.median(v) for m, v in times.items()}
    return {m: {"ms": med[m], "vs_fp": med[m] / med["fp"], "vs_ste": med[m] / med["ste-bc"]} for m in names}


def disk_sizes() -> Dict[str, float]:
    """Size on disk of :func:`timing_cnn`: the fp ``state_dict``, the finalized ``bc`` model's, and packed.

    ``finalized``: ``torch.save(model.state_dict())`` after ``opt.finalize()``
    (float32 ±1: the same bytes as full precision). ``packed``: the size
    written by ``proxopt.export.save_binary`` when that function exists
    (``None`` otherwise). ``ideal``: 1 bit per quantized weight plus float32
    for the rest, computed from the parameter counts (a bound, not a file).
    """
    model, opt, _ = _setup("bc")
    opt.finalize()
    fp_model, _, _ = _setup("fp")
    out: Dict[str, Any] = {"fp": float(checkpoint_bytes(fp_model.state_dict())),
                           "finalized": float(checkpoint_bytes(model.state_dict()))}
    nq = sum(w.numel() for w in M.quantized_weights(model))
    rest = sum(t.numel() * t.element_size() for t in model.state_dict().values()) - 4 * nq
    out["ideal"] = float(nq / 8 + rest)
    out["packed"] = None
    try:
        from proxopt import export  # type: ignore[attr-defined]
        save = getattr(export, "save_binary", None)
    except ImportError:
        save = None
    if save is not None:
        import os
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "model.bin")
            try:
                save(model, path)
                out["packed"] = float(os.path.getsize(path))
            except Exception as exc:  # the exporter is optional here; report why it did not run
                out["packed_error"] = f"{type(exc).__name__}: {exc}"
    return out
