"""Optional native CPU kernels: the two-level softmax dual (mirror descent, THEORY.md §5) and sign-Swish (§2).

The softmax map's hot loops on a binary dual ``(theta_0, theta_1)`` per
weight, with ``z = beta (theta_1 - theta_0)`` and levels ``(q_0, q_1)``:

.. math::
    w = q_0 + (q_1 - q_0)\\,\\sigma(z),\\qquad
    \\theta_j \\leftarrow \\max(\\theta_j - \\max_k \\theta_k,\\ f),\\qquad
    g_j = q_j\\, g_w

(projection [MD], also of the centered dual ``(-t, t)`` the stable form
keeps for levels ``(-a, a)``, ``z = beta (t + t)``; the primal form's renormalisation to the dual
``log(u_j / max_k u_k)/beta`` of the kept ``u``, floored at
``f = log(tiny)/beta``, exact in floating point; the mirror-descent
pull-back), and BNN+/BNN++'s sign-Swish with
``x = mu theta``, ``e = exp(-|x|)``:

.. math::
    SS(x) = \\mathrm{sign}(x)\\left[\\frac{1-e}{1+e} + \\frac{2|x|e}{(1+e)^2}\\right],\\qquad
    \\frac{d}{d\\theta} SS(\\mu\\theta) = \\mu\\frac{4e}{(1+e)^2}
    \\left[1 - \\frac{|x|}{2}\\frac{1-e}{1+e}\\right]

(the forward of BNN++ and the backward ``B'`` of both). As torch operations
each is several passes over memory with one or two transcendental kernels;
``native.c`` does each in one vectorized pass, with its own exponential
(range reduction and a polynomial, within a few ulp).

The source ships with the package and is compiled on first use with the
system C compiler (``$CC``, else ``cc``), ``-O3`` for the machine it runs on,
into a cache folder (``$PROXOPT_CACHE``, else ``$XDG_CACHE_HOME/proxopt`` or
``~/.cache/proxopt``; about a second, once per machine and compiler), then
checked against the torch formulas before it is used. Without a compiler,
when the build or that check fails, or with ``PROXOPT_NATIVE=0`` in the
environment, the torch operations run instead: the same maps up to rounding.
:func:`status` says which and why.

Only plain contiguous float32 CPU tensors take the native path; a given
tensor always takes the same path, so a model written from its latents is
reproduced bit for bit by writing it again, whatever the number of threads.
Large tensors are split over ``torch.get_num_threads()`` OpenMP threads
(``-fopenmp`` where the compiler has it; built by GCC they are the threads
of the ``libgomp`` torch loaded, so the kernels share torch's intra-op
threads), each running with the calling thread's floating-point mode
(``torch.set_flush_denormal``).

References:
    [MD] Ajanthan, Gupta, Torr, Hartley, Dokania. Mirror Descent View for
    Neural Network Quantization. AISTATS 2021.
    [BNN+] Darabi, Belbahri, Courbariaux, Partovi Nia. BNN+: Improved Binary
    Network Training. 2018.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["available", "status", "sm2_project", "sm2_project_centered", "sm2_clamp_project_centered", "sm2_renorm",
           "sm2_renorm_project", "sm2_pullback", "sign_swish", "sign_swish_grad"]

_VERSION = 8
_SOURCE = Path(__file__).with_name("native.c")
_FLAGS = ("-O3", "-fPIC", "-shared", "-fno-fast-math", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off")
#: tried in order: the machine's vector units and OpenMP threads, then without either
_ARCH_FLAGS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-march=native",), ())

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_state: Optional[str] = None  # None: not tried yet; else "native (<path>)" or "torch (<reason>)"
_PLAIN = (Tensor, torch.nn.Parameter)


def _disabled() -> bool:
    return os.environ.get("PROXOPT_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def _cache_dir() -> Path:
    root = os.environ.get("PROXOPT_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "proxopt"


def _machine_tag() -> str:
    """What the compiled code depends on besides its source and flags: the CPU's features."""
    tag = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    tag.append(line.strip())
                    break
    except OSError:
        tag.append(platform.processor())
    return "|".join(tag)


def _compiler_tag(cc: List[str]) -> str:
    try:
        out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else " ".join(cc)
    except (OSError, subprocess.SubprocessError):
        return " ".join(cc)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(path: Path) -> bool:
    """Whether ``path`` is a finished build: its ``.sha256`` record matches its bytes (loading a truncated
    shared library can crash the process instead of raising)."""
    record = path.with_suffix(".sha256")
    try:
        return record.read_text().strip() == _digest(path)
    except OSError:
        return False


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _compile(cc: List[str], flags: Tuple[str, ...], path: Path) -> Optional[str]:
    """Build ``native.c`` into ``path`` (and its ``.sha256`` record); an error message on failure.

    Concurrent builders each compile into their own temporary file, flushed
    to disk, and move it into place atomically.
    """
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    rec = Path(tmp).with_suffix(".sha256")
    try:
        res = subprocess.run([*cc, *flags, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                             timeout=120)
        if res.returncode != 0:
            return f"{' '.join(cc)} {' '.join(flags)}: {res.stderr.strip()[-300:]}"
        data = Path(tmp).read_bytes()
        _write_synced(Path(tmp), data)
        _write_synced(rec, hashlib.sha256(data).hexdigest().encode())
        os.replace(tmp, path)
        os.replace(rec, path.with_suffix(".sha256"))
        return None
    finally:
        for leftover in (tmp, rec):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _build() -> ctypes.CDLL:
    """Compile (or reuse from the cache) and load the kernels; raises on any failure."""
    found = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    cc = shlex.split(found) if found else []  # CC may carry arguments ("ccache gcc")
    if not cc:
        raise RuntimeError("no C compiler found (set CC)")
    source = _SOURCE.read_bytes()
    folder = _cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    ident = [source, "\0".join(cc).encode(), str(shutil.which(cc[0])).encode(), _compiler_tag(cc).encode(),
             _machine_tag().encode(), sys.platform.encode()]
    for arch in _ARCH_FLAGS:
        flags = _FLAGS + arch
        key = hashlib.sha256(b"\0".join(ident + [" ".join(flags).encode()])).hexdigest()[:20]
        path = folder / f"native-{key}.so"
        if not (path.exists() and _intact(path)):  # missing, or a build that did not finish: (re)build
            problem = _compile(cc, flags, path)
            if problem is not None:
                errors.append(problem)
                continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            errors.append(f"loading {path}: {e}")
            continue
        _declare(lib)
        if lib.proxopt_native_version() != _VERSION:
            errors.append(f"{path}: interface version {lib.proxopt_native_version()}, expected {_VERSION}")
            continue
        return lib
    raise RuntimeError("; ".join(errors) or "build failed")


def _declare(lib: ctypes.CDLL) -> None:
    P, N, F, I = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_int
    lib.proxopt_sm2_project.argtypes = [P, P, P, N, F, F, F, I]
    lib.proxopt_sm2_project_centered.argtypes = [P, P, N, F, F, F, I]
    lib.proxopt_sm2_clamp_project_centered.argtypes = [P, P, N, F, F, F, F, I]
    lib.proxopt_sm2_renorm.argtypes = [P, P, N, F, I]
    lib.proxopt_sm2_renorm_project.argtypes = [P, P, P, N, F, F, F, F, I]
    lib.proxopt_sm2_pullback.argtypes = [P, P, P, N, F, F, I]
    lib.proxopt_ss_value.argtypes = [P, P, N, F, I]
    lib.proxopt_ss_grad.argtypes = [P, P, P, N, F, I]
    for fn in (lib.proxopt_sm2_project, lib.proxopt_sm2_project_centered, lib.proxopt_sm2_clamp_project_centered,
               lib.proxopt_sm2_renorm, lib.proxopt_sm2_renorm_project, lib.proxopt_sm2_pullback, lib.proxopt_ss_value,
               lib.proxopt_ss_grad):
        fn.restype = None
    lib.proxopt_native_version.restype = ctypes.c_int
    lib.proxopt_native_version.argtypes = []


def _self_check(lib: ctypes.CDLL) -> Optional[str]:
    """Compare the kernels with the torch formulas on awkward values; a message if they disagree."""
    z = torch.tensor([0.0, -0.0, 1e-30, -1e-8, 0.3, -0.7, 2.5, -17.0, 20.0, 40.0, -41.0, 87.0, -88.0, 90.0, -104.0,
                      200.0, -1e4, 3e38], dtype=torch.float64)
    z = torch.cat([z, -z, torch.linspace(-30, 30, 301, dtype=torch.float64)])
    beta = 1.7
    t1 = (z / (2 * beta)).float()
    t0 = -t1
    zz = (t1.double() - t0.double()) * torch.tensor(beta, dtype=torch.float32).double()
    n = t0.numel()
    w = torch.empty(n)
    lib.proxopt_sm2_project(t0.data_ptr(), t1.data_ptr(), w.data_ptr(), n, beta, -1.0, 2.0, 1)
    ref = -1.0 + 2.0 * torch.sigmoid(zz)
    if not bool(((w.double() - ref).abs() <= 8 * 2.0 ** -23).all()):
        return "projection check failed"
    wc = torch.empty(n)  # the centered dual (-t1, t1) of the same points: the same values bit for bit
    lib.proxopt_sm2_project_centered(t1.data_ptr(), wc.data_ptr(), n, beta, -1.0, 2.0, 1)
    if not torch.equal(wc, w):
        return "centered projection check failed"
    r0, r1 = t0.clone(), t1.clone()
    floor = float(torch.tensor(math.log(torch.finfo(torch.float32).tiny), dtype=torch.float32) / beta)
    lib.proxopt_sm2_renorm(r0.data_ptr(), r1.data_ptr(), n, floor, 1)
    top = torch.maximum(t0, t1)
    e0, e1 = (t0 - top).clamp_min(floor), (t1 - top).clamp_min(floor)
    odd = torch.tensor([[0.0, math.inf], [math.inf, 0.0], [-math.inf, 0.0], [-0.0, 0.0], [0.0, -0.0], [-0.0, -0.0],
                        [-3.0, -math.inf]])
    o0, o1 = odd[:, 0].clone(), odd[:, 1].clone()
    lib.proxopt_sm2_renorm(o0.data_ptr(), o1.data_ptr(), odd.shape[0], floor, 1)
    want = torch.tensor([[floor, 0.0], [0.0, floor], [floor, 0.0], [-0.0, 0.0], [-0.0, 0.0], [-0.0, 0.0],
                         [0.0, floor]])
    if not (torch.equal(r0, e0) and torch.equal(r1, e1)
            and torch.equal(torch.stack([o0, o1], 1).view(torch.int32), want.view(torch.int32))):
        return "renormalisation check failed"
    f0, f1, fw, rw = t0.clone(), t1.clone(), torch.empty(n), torch.empty(n)
    lib.proxopt_sm2_renorm_project(f0.data_ptr(), f1.data_ptr(), fw.data_ptr(), n, beta, floor, -1.0, 2.0, 1)
    lib.proxopt_sm2_project(r0.data_ptr(), r1.data_ptr(), rw.data_ptr(), n, beta, -1.0, 2.0, 1)
    if not (torch.equal(f0, r0) and torch.equal(f1, r1) and torch.equal(fw, rw)):
        return "fused renormalisation and projection check failed"
    c1 = (t1 * 1e3).clone()  # the centered dual's renormalisation (a clip of t) and projection, against the pair's
    p0, p1 = -c1, c1.clone()
    cw, pw = torch.empty(n), torch.empty(n)
    lib.proxopt_sm2_clamp_project_centered(c1.data_ptr(), cw.data_ptr(), n, beta, floor / 2, -1.0, 2.0, 1)
    lib.proxopt_sm2_renorm_project(p0.data_ptr(), p1.data_ptr(), pw.data_ptr(), n, beta, floor, -1.0, 2.0, 1)
    if not (torch.equal(c1 + c1, p1 - p0) and torch.equal(cw, pw)):
        return "centered renormalisation and projection check failed"
    g = torch.linspace(-3, 3, n)
    g0, g1 = torch.empty(n), torch.empty(n)
    lib.proxopt_sm2_pullback(g.data_ptr(), g0.data_ptr(), g1.data_ptr(), n, -1.0, 0.5, 1)
    if not (torch.equal(g0, -g) and torch.equal(g1, g * 0.5)):
        return "pull-back check failed"
    # sign-Swish against its float64 formulas
    x = torch.cat([z.float(), torch.tensor([1e-38, 2.3994, -2.3994])])
    m = x.numel()
    ss, dg, ones = torch.empty(m), torch.empty(m), torch.ones(m)  # tensors live across the calls
    lib.proxopt_ss_value(x.data_ptr(), ss.data_ptr(), m, beta, 1)
    lib.proxopt_ss_grad(x.data_ptr(), ones.data_ptr(), dg.data_ptr(), m, beta, 1)
    xd = x.double() * float(torch.tensor(beta, dtype=torch.float32))
    sig = torch.sigmoid(xd)
    ref_v = (2 * sig * (1 + xd * (1 - sig)) - 1).where(xd.abs() < 700, xd.sign())
    y = xd / 2
    ref_d = (beta * (1 - y * torch.tanh(y)) * (1 - torch.tanh(y) ** 2)).where(xd.abs() < 700, torch.zeros_like(xd))
    if not (bool(((ss.double() - ref_v).abs() <= 8 * 2.0 ** -23).all())
            and bool(((dg.double() - ref_d).abs() <= 16 * 2.0 ** -23 * beta).all())):
        return "sign-Swish check failed"
    # NaN propagates (a build with finite-only maths would drop it)
    nan, other = torch.full((37,), float("nan")), t1[:37].clone()
    w = torch.empty(37)
    lib.proxopt_sm2_project(nan.data_ptr(), other.data_ptr(), w.data_ptr(), 37, beta, -1.0, 2.0, 1)
    wc = torch.empty(37)
    lib.proxopt_sm2_project_centered(nan.data_ptr(), wc.data_ptr(), 37, beta, -1.0, 2.0, 1)
    r0, r1 = nan.clone(), t1[:37].clone()
    lib.proxopt_sm2_renorm(r0.data_ptr(), r1.data_ptr(), 37, floor, 1)
    f0, f1, fw = nan.clone(), t1[:37].clone(), torch.empty(37)
    lib.proxopt_sm2_renorm_project(f0.data_ptr(), f1.data_ptr(), fw.data_ptr(), 37, beta, floor, -1.0, 2.0, 1)
    v, d = torch.empty(37), torch.empty(37)
    lib.proxopt_ss_value(nan.data_ptr(), v.data_ptr(), 37, beta, 1)
    lib.proxopt_ss_grad(nan.data_ptr(), other.data_ptr(), d.data_ptr(), 37, beta, 1)
    if not all(bool(t.isnan().all()) for t in (w, wc, r0, r1, f0, f1, fw, v, d)):
        return "NaN check failed"
    # each result depends on its own inputs only: shifting the elements across vector lanes changes nothing
    w = torch.empty(n)
    lib.proxopt_sm2_project(t0.data_ptr(), t1.data_ptr(), w.data_ptr(), n, beta, -1.0, 2.0, 1)
    r0, r1 = t0.clone(), t1.clone()
    lib.proxopt_sm2_renorm(r0.data_ptr(), r1.data_ptr(), n, floor, 1)
    f0, f1, fw = t0.clone(), t1.clone(), torch.empty(n)
    lib.proxopt_sm2_renorm_project(f0.data_ptr(), f1.data_ptr(), fw.data_ptr(), n, beta, floor, -1.0, 2.0, 1)
    g = torch.linspace(-1, 1, n)
    v, d = torch.empty(n), torch.empty(n)
    lib.proxopt_ss_value(t1.data_ptr(), v.data_ptr(), n, beta, 1)
    lib.proxopt_ss_grad(t1.data_ptr(), g.data_ptr(), d.data_ptr(), n, beta, 1)
    for k in (1, 3, 7):
        a0, a1, wk, ck = t0[k:].clone(), t1[k:].clone(), torch.empty(n - k), torch.empty(n - k)
        lib.proxopt_sm2_project(a0.data_ptr(), a1.data_ptr(), wk.data_ptr(), n - k, beta, -1.0, 2.0, 1)
        lib.proxopt_sm2_project_centered(a1.data_ptr(), ck.data_ptr(), n - k, beta, -1.0, 2.0, 1)
        lib.proxopt_sm2_renorm(a0.data_ptr(), a1.data_ptr(), n - k, floor, 1)
        same = torch.equal(wk, w[k:]) and torch.equal(ck, w[k:]) and torch.equal(a0, r0[k:]) and torch.equal(a1, r1[k:])
        b0, b1, bw = t0[k:].clone(), t1[k:].clone(), torch.empty(n - k)
        lib.proxopt_sm2_renorm_project(b0.data_ptr(), b1.data_ptr(), bw.data_ptr(), n - k, beta, floor, -1.0, 2.0, 1)
        same = same and torch.equal(b0, f0[k:]) and torch.equal(b1, f1[k:]) and torch.equal(bw, fw[k:])
        x, gk, vk, dk = t1[k:].clone(), g[k:].clone(), torch.empty(n - k), torch.empty(n - k)
        lib.proxopt_ss_value(x.data_ptr(), vk.data_ptr(), n - k, beta, 1)
        lib.proxopt_ss_grad(x.data_ptr(), gk.data_ptr(), dk.data_ptr(), n - k, beta, 1)
        if not (same and torch.equal(vk, v[k:]) and torch.equal(dk, d[k:])):
            return "per-element check failed (results depend on the position in a vector)"
    return None


def _load() -> Optional[ctypes.CDLL]:
    global _lib, _state
    if _state is not None:
        return _lib
    with _lock:
        if _state is not None:
            return _lib
        if _disabled():
            _state = "torch (PROXOPT_NATIVE=0)"
            return None
        try:
            lib = _build()
            problem = _self_check(lib)
        except Exception as e:  # no compiler, read-only cache, ...: the torch operations run instead
            lib, problem = None, f"{type(e).__name__}: {e}"
        if problem is not None:
            _state = f"torch ({problem})"
            return None
        _lib = lib
        _state = f"native ({lib._name})"
        return lib


def available() -> bool:
    """Whether the native kernels are in use (compiling them on the first call)."""
    return _load() is not None


def status() -> str:
    """``"native (<library>)"``, or ``"torch (<why not>)"``: which implementation the kernels use."""
    _load()
    return str(_state)


def _ok(n: int, *ts: Tensor) -> bool:
    """Whether every tensor is a plain contiguous float32 CPU tensor of ``n`` elements (the kernels' input) and
    no two of them overlap (the torch path refuses to write into overlapping memory)."""
    f32 = torch.float32
    for t in ts:
        if type(t) not in _PLAIN or not t.is_cpu or t.dtype is not f32 or not t.is_contiguous() or t.numel() != n:
            return False
    starts = sorted(t.data_ptr() for t in ts)
    return all(b - a >= 4 * n for a, b in zip(starts, starts[1:]))


def _threads(n: int) -> int:
    return torch.get_num_threads() if n >= 65536 else 1


def _run(kernel: str, tensors: Tuple[Tensor, ...], *scalars: float) -> bool:
    """``proxopt_<kernel>(pointers..., n, scalars..., threads)`` on same-sized ``tensors``; False (nothing done)
    where the torch path must run (no library, or tensors the kernels do not take: :func:`_ok`)."""
    lib = _load()
    n = tensors[0].numel()
    if lib is None or not _ok(n, *tensors):
        return False
    getattr(lib, "proxopt_" + kernel)(*(t.data_ptr() for t in tensors), n, *scalars, _threads(n))
    return True


def sm2_project(t0: Tensor, t1: Tensor, out: Tensor, beta: float, a: float, b: float) -> bool:
    """``out = a + b sigma(beta (t1 - t0))`` natively; False (nothing done) where the torch path must run."""
    return _run("sm2_project", (t0, t1, out), beta, a, b)


def sm2_project_centered(t: Tensor, out: Tensor, beta: float, a: float, b: float) -> bool:
    """``out = a + b sigma(beta (t - (-t)))``: :func:`sm2_project` of the centered dual ``(-t, t)`` bit for bit,
    natively; False (nothing done) where the torch path must run."""
    return _run("sm2_project_centered", (t, out), beta, a, b)


def sm2_clamp_project_centered(t: Tensor, out: Tensor, beta: float, half_floor: float, a: float, b: float) -> bool:
    """``t <- min(max(t, half_floor), -half_floor)`` in place, then ``out = a + b sigma(beta (t + t))``: the
    primal form's renormalisation and projection of the centered dual ``(-t, t)`` in one pass
    (:func:`sm2_renorm_project` of it, with ``half_floor = floor/2``), natively; False (nothing done) where the
    torch path must run."""
    return _run("sm2_clamp_project_centered", (t, out), beta, half_floor, a, b)


def sm2_renorm(t0: Tensor, t1: Tensor, floor: float) -> bool:
    """``t_j <- max(t_j - max(t0, t1), floor)`` in place, through ``d = t1 - t0``: the larger entry ``+0``, the
    other ``max(-|d|, floor)`` (an infinite ``d`` gives 0 and the floor, a NaN ``d`` NaN in both), natively, bit
    for bit the torch path of :meth:`proxopt.mirror_maps.Softmax.renormalize_`; False (nothing done) where the
    torch path must run."""
    return _run("sm2_renorm", (t0, t1), floor)


def sm2_renorm_project(t0: Tensor, t1: Tensor, out: Tensor, beta: float, floor: float, a: float, b: float) -> bool:
    """:func:`sm2_renorm` then :func:`sm2_project` into ``out`` in one pass, bit for bit the two calls:
    ``t_j <- max(t_j - max(t0, t1), floor)``, ``out = a + b sigma(beta (t1 - t0))`` of the renormalised dual
    (the primal form's write-back after a step); False (nothing done) where the torch path must run."""
    return _run("sm2_renorm_project", (t0, t1, out), beta, floor, a, b)


def sm2_pullback(g: Tensor, g0: Tensor, g1: Tensor, q0: float, q1: float) -> bool:
    """``g0 = q0 g``, ``g1 = q1 g`` natively (bit for bit the torch result); False where torch must run."""
    return _run("sm2_pullback", (g, g0, g1), q0, q1)


def sign_swish(theta: Tensor, out: Tensor, mu: float) -> bool:
    """``out = SS_mu(theta) = 2 swish'(mu theta) - 1`` [BNN+] natively, as
    ``sign(x) [(1 - e)/(1 + e) + 2|x| e/(1 + e)^2]`` with ``x = mu theta``, ``e = exp(-|x|)``;
    False (nothing done) where the torch path must run."""
    return _run("ss_value", (theta, out), mu)


def sign_swish_grad(theta: Tensor, g: Tensor, out: Tensor, mu: float) -> bool:
    """``out = mu SS'(mu theta) g`` [BNN+] natively, with
    ``SS'(x) = 4e/(1 + e)^2 [1 - (|x|/2)(1 - e)/(1 + e)]``, ``e = exp(-|x|)`` (0 where ``e`` underflows);
    False (nothing done) where the torch path must run."""
    return _run("ss_grad", (theta, g, out), mu)
