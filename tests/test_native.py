"""The native two-level softmax kernels (proxopt/native.c): agreement with the torch path, per-element results,
fallback without a compiler."""
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import proxopt
from proxopt import mirror_maps as mm
from proxopt import native
from proxopt.mirror_maps import _dual_floor

needs_native = pytest.mark.skipif(not native.available(), reason=f"native kernels unavailable: {native.status()}")
EPS = 2.0 ** -23


@pytest.fixture
def torch_path(monkeypatch):
    """Run the mirror maps' torch operations instead of the kernels inside the test."""
    def use_torch():
        for name in ("sm2_project", "sm2_renorm", "sm2_renorm_project", "sm2_pullback"):
            monkeypatch.setattr(native, name, lambda *a, **k: False)
    return use_torch


def level_major(base):
    """The ``(..., 2)`` dual view of a contiguous ``(2, ...)`` tensor, as the optimizers store it."""
    return base.movedim(0, -1)


def duals(n, seed=0, spread=(0.01, 3.0, 60.0)):
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(2, n // len(spread), generator=g) * s for s in spread]
    return torch.cat(parts, dim=1).contiguous()


def ref_project(base, beta, q0, q1):
    z = (base[1].double() - base[0].double()) * float(torch.tensor(beta, dtype=torch.float32))
    return q0 + (q1 - q0) * torch.sigmoid(z)


def ref_renorm(base, beta):
    """``log(u_j / max_k u_k) / beta`` of ``u = softmax(beta theta)`` through ``log sigma`` in float64, floored:
    the dual the primal form keeps (within about 1e-16 / beta absolute)."""
    z = (base[1].double() - base[0].double()) * float(torch.tensor(beta, dtype=torch.float32))
    floor = _dual_floor(torch.float32, beta)
    ls = torch.nn.functional.logsigmoid
    return ((ls(-z) - ls(z.abs())) / beta).clamp_min(floor), ((ls(z) - ls(z.abs())) / beta).clamp_min(floor)


def test_status_names_the_implementation():
    s = native.status()
    assert s.startswith("native (") or s.startswith("torch ("), s
    assert native.available() == s.startswith("native (")


@needs_native
@pytest.mark.parametrize("beta", [1.0, 0.37, 5.0, 1e4])
@pytest.mark.parametrize("levels", [(-1.0, 1.0), (-0.5, 2.0)])
def test_projection_matches_the_torch_path(beta, levels, torch_path):
    m = mm.Softmax(levels)
    base = duals(30_000, seed=1)
    w_native = torch.empty(base.shape[1])
    m.to_primal_into(level_major(base), beta, w_native)
    ref = ref_project(base, beta, *levels)
    torch_path()
    w_torch = torch.empty_like(w_native)
    m.to_primal_into(level_major(base), beta, w_torch)
    scale = max(abs(q) for q in levels)
    assert (w_native.double() - ref).abs().max() <= 8 * EPS * scale
    assert (w_native - w_torch).abs().max() <= 8 * EPS * scale


@needs_native
@pytest.mark.parametrize("beta", [1.0, 0.37, 5.0, 1e4])
def test_renormalisation_matches_the_torch_path(beta, torch_path):
    """Bit for bit the torch path; the larger entry 0 and the other -|theta_1 - theta_0| exactly (floored), within
    a few ulp of log(u_j / max u) / beta; the projection is unchanged bit for bit where the floor did not act."""
    m = mm.Softmax()
    base = duals(30_000, seed=2)
    floor = _dual_floor(torch.float32, beta)
    got = base.clone()
    m.renormalize_(level_major(got), beta)
    torch_path()
    eager = base.clone()
    m.renormalize_(level_major(eager), beta)
    assert torch.equal(got, eager)
    assert torch.equal(got, (base - base.max(0).values).clamp_min(floor))
    e0, e1 = ref_renorm(base, beta)
    tol = 8 * EPS * torch.maximum(e0.abs(), e1.abs()) + 1e-15 / beta
    for a, b in ((got[0], e0), (got[1], e1)):
        assert bool(((a.double() - b).abs() <= tol).all())
    kept = (got > floor).all(0)
    w_before, w_after = torch.empty(base.shape[1]), torch.empty(base.shape[1])
    m.to_primal_into(level_major(base), beta, w_before)
    m.to_primal_into(level_major(got), beta, w_after)
    assert torch.equal(w_after[kept], w_before[kept])
    assert bool((got >= floor).all()) and not bool(kept.all())


@needs_native
@pytest.mark.parametrize("beta", [1.0, 0.37, 1e4])
@pytest.mark.parametrize("threads", [1, 3])
def test_fused_renormalisation_and_projection_equal_the_two_passes(beta, threads):
    """sm2_renorm_project is sm2_renorm then sm2_project, bit for bit, on every slice and thread count."""
    base = duals(200_003, seed=6)
    floor = _dual_floor(torch.float32, beta)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for lo, hi in ((0, base.shape[1]), (1, 77), (5, 70_001)):
            two = base[:, lo:hi].clone()
            w_two = torch.empty(hi - lo)
            assert native.sm2_renorm(two[0], two[1], floor)
            assert native.sm2_project(two[0], two[1], w_two, beta, -0.5, 2.5)
            one = base[:, lo:hi].clone()
            w_one = torch.empty(hi - lo)
            assert native.sm2_renorm_project(one[0], one[1], w_one, beta, floor, -0.5, 2.5)
            assert torch.equal(one, two) and torch.equal(w_one, w_two)
    finally:
        torch.set_num_threads(prev)
    assert not native.sm2_renorm_project(base[0], base[0], torch.empty(base.shape[1]), 1.0, floor, -1.0, 2.0)
    assert not native.sm2_renorm_project(base[0].double(), base[1].double(), torch.empty(base.shape[1]).double(),
                                         1.0, floor, -1.0, 2.0)


@needs_native
def test_pullback_is_bit_for_bit(torch_path):
    m = mm.Softmax((-0.5, 2.0))
    g = torch.randn(5000)
    theta = level_major(torch.zeros(2, 5000))
    got = level_major(torch.empty(2, 5000))
    m.primal_grad_to_dual_into(theta, g, got)
    torch_path()
    want = level_major(torch.empty(2, 5000))
    m.primal_grad_to_dual_into(theta, g, want)
    assert torch.equal(got, want)


@needs_native
def test_each_result_depends_on_its_own_inputs_only():
    """Vector body and scalar remainder agree: any slice gives the same values bit for bit (p = F(theta))."""
    base = duals(4099, seed=3)
    full = torch.empty(base.shape[1])
    assert native.sm2_project(base[0], base[1], full, 1.7, -1.0, 2.0)
    ren = base.clone()
    assert native.sm2_renorm(ren[0], ren[1], _dual_floor(torch.float32, 1.7))
    m = base.shape[1]
    for lo, hi in ((1, m), (3, 20), (17, 18), (m - 99, m)):
        part = torch.empty(hi - lo)
        assert native.sm2_project(base[0, lo:hi].clone(), base[1, lo:hi].clone(), part, 1.7, -1.0, 2.0)
        assert torch.equal(part, full[lo:hi])
        r = base[:, lo:hi].clone()
        assert native.sm2_renorm(r[0], r[1], _dual_floor(torch.float32, 1.7))
        assert torch.equal(r, ren[:, lo:hi])


@needs_native
def test_threads_give_the_same_result():
    base = duals(300_000, seed=4)
    outs = []
    prev = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            w = torch.empty(base.shape[1])
            r = base.clone()
            g0, g1 = torch.empty(base.shape[1]), torch.empty(base.shape[1])
            assert native.sm2_project(base[0], base[1], w, 2.0, -1.0, 2.0)
            assert native.sm2_renorm(r[0], r[1], _dual_floor(torch.float32, 2.0))
            assert native.sm2_pullback(base[0], g0, g1, -1.0, 1.0)
            outs.append((w, r, g0, g1))
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_other_tensors_take_the_torch_path():
    a, b, out = torch.randn(8), torch.randn(8), torch.empty(8)
    assert not native.sm2_project(a.double(), b.double(), out.double(), 1.0, -1.0, 2.0)
    assert not native.sm2_project(torch.randn(8, 2)[:, 0], b, out, 1.0, -1.0, 2.0)  # strided
    assert not native.sm2_project(a, torch.randn(9), out, 1.0, -1.0, 2.0)  # sizes differ
    assert not native.sm2_renorm(a.half(), b.half(), -87.0)
    assert not native.sm2_pullback(a.to(torch.bfloat16), out, out.clone(), -1.0, 1.0)


@needs_native
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, width=32, allow_subnormal=False), min_size=2, max_size=80),
       st.floats(1e-3, 1e4))
def test_kernels_property(values, beta):
    """Projection within a few ulp of sigma in float64; the renormalised dual is theta - max theta floored (its
    larger entry 0), within a few ulp of log(u_j / max u) / beta, and projects to the same weight bit for bit
    where the floor did not act."""
    n = len(values) // 2
    base = torch.tensor(values[: 2 * n], dtype=torch.float32).view(2, n).contiguous()
    w = torch.empty(n)
    assert native.sm2_project(base[0], base[1], w, beta, -1.0, 2.0)
    assert (w.double() - ref_project(base, beta, -1.0, 1.0)).abs().max() <= 8 * EPS
    r = base.clone()
    floor = _dual_floor(torch.float32, beta)
    assert native.sm2_renorm(r[0], r[1], floor)
    assert bool((r >= floor).all())
    assert torch.equal(r, (base - base.max(0).values).clamp_min(floor))
    assert bool((r.max(0).values == 0).all())
    e0, e1 = ref_renorm(base, beta)
    scale = torch.maximum(e0.abs(), e1.abs())
    tol = 8 * EPS * scale + 1e-15 / beta  # the float64 reference loses ~1e-16 absolute to log sigma(z) - log sigma(-z)
    assert bool(((r[0].double() - e0).abs() <= tol).all())
    assert bool(((r[1].double() - e1).abs() <= tol).all())
    w2 = torch.empty(n)
    assert native.sm2_project(r[0], r[1], w2, beta, -1.0, 2.0)
    keep = (r > floor).all(0)  # not moved by the floor
    assert torch.equal(w2[keep], w[keep])


def three_steps(preset, lr):
    """Weights and latent of a linear layer after three steps of ``preset`` (fixed seed)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    opt = proxopt.optimizer(preset, lin.parameters(), lr=lr)
    x, y = torch.randn(16, 64), torch.randn(16, 32)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(lin(x), y).backward()
        opt.step()
    return lin.weight.detach().clone(), opt.state[lin.weight]["latent"].clone()


@pytest.mark.parametrize("preset", ["md-softmax", "md-softmax-s"])
def test_optimizer_steps_agree_with_the_torch_path(preset, torch_path):
    w_native, lat_native = three_steps(preset, 0.05)
    torch_path()
    w_torch, lat_torch = three_steps(preset, 0.05)
    assert torch.allclose(w_native, w_torch, rtol=0, atol=1e-5)
    assert torch.allclose(lat_native, lat_torch, rtol=0, atol=1e-5 * (1 + lat_torch.abs().max().item()))


@needs_native
def test_primal_write_back_in_one_pass_equals_the_two_passes(monkeypatch):
    """The engine's fused re-encoding and write-back (md-softmax) gives the weights and latents of the separate
    renormalisation and projection, bit for bit."""
    one = three_steps("md-softmax", 0.05)
    monkeypatch.setattr(native, "sm2_renorm_project", lambda *a, **k: False)
    two = three_steps("md-softmax", 0.05)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def _status_in_subprocess(env_update, tmp_path):
    env = dict(os.environ, PROXOPT_CACHE=str(tmp_path / "cache"), **env_update)
    code = ("import torch, proxopt\n"
            "lin = torch.nn.Linear(4, 3)\n"
            "opt = proxopt.optimizer('md-softmax', lin.parameters(), lr=0.1)\n"
            "lin(torch.randn(2, 4)).sum().backward(); opt.step()\n"
            "assert bool(lin.weight.abs().le(1).all())\n"
            "print(proxopt.native.status())\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_disabled_by_environment(tmp_path):
    assert _status_in_subprocess({"PROXOPT_NATIVE": "0"}, tmp_path) == "torch (PROXOPT_NATIVE=0)"


def test_without_a_compiler_the_torch_path_runs(tmp_path):
    status = _status_in_subprocess({"CC": str(tmp_path / "no-such-cc")}, tmp_path)
    assert status.startswith("torch (") and "no-such-cc" in status, status


def test_unwritable_cache_falls_back(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = dict(os.environ, PROXOPT_CACHE=str(blocker / "cache"))
    code = "import proxopt; print(proxopt.native.status())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("torch ("), out.stdout


def test_overlapping_tensors_take_the_torch_path():
    base = torch.randn(2, 64)
    assert not native.sm2_renorm(base[0], base[0], -87.0)  # one column twice
    flat = torch.randn(100)
    assert not native.sm2_project(flat[:64], flat[1:65], flat[36:100], 1.0, -1.0, 2.0)
    assert not native.sm2_pullback(flat[:50], flat[50:100], flat[25:75], -1.0, 1.0)


@needs_native
def test_flushed_denormals_alike_in_every_thread():
    """torch.set_flush_denormal sets the calling thread's mode; the kernels' workers run with it too."""
    n = 300_000
    tiny = torch.full((2, n), 3e-39)
    tiny[1] *= -1
    tiny[:, ::2] = torch.randn(2, n // 2)
    outs = []
    prev_threads = torch.get_num_threads()
    try:
        torch.set_flush_denormal(True)
        for threads in (1, 3):
            torch.set_num_threads(threads)
            r = tiny.clone()
            g0, g1 = torch.empty(n), torch.empty(n)
            assert native.sm2_renorm(r[0], r[1], _dual_floor(torch.float32, 1e-3))
            assert native.sm2_pullback(tiny[0], g0, g1, -1.0, 1.0)
            outs.append((r, g0, g1))
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(prev_threads)
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    assert torch.equal(outs[0][2], tiny[0]) and torch.equal(outs[0][1], -tiny[0])  # a copy and a sign flip


def _build_in_subprocess(env_update, cache):
    env = dict(os.environ, PROXOPT_CACHE=str(cache), **env_update)
    code = "import proxopt; print(proxopt.native.status())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@needs_native
def test_a_build_cut_short_is_rebuilt(tmp_path):
    first = _build_in_subprocess({}, tmp_path)
    assert first.startswith("native ("), first
    lib = next(tmp_path.glob("native-*.so"))
    whole = lib.read_bytes()
    lib.write_bytes(whole[:4096])  # loading this would crash the interpreter
    assert _build_in_subprocess({}, tmp_path) == first
    assert lib.read_bytes() == whole


@needs_native
def test_compiler_arguments_are_part_of_the_key(tmp_path):
    cc = os.environ.get("CC") or "cc"
    plain = _build_in_subprocess({"CC": cc}, tmp_path)
    fast = _build_in_subprocess({"CC": f"{cc} -ffast-math"}, tmp_path)
    assert plain.startswith("native (") and fast.startswith("native (")  # -fno-fast-math follows CC's arguments
    assert plain != fast


def ref_sign_swish(theta, mu):
    x = theta.double() * float(torch.tensor(mu, dtype=torch.float32))
    s = torch.sigmoid(x)
    value = (2 * s * (1 + x * (1 - s)) - 1).where(x.abs() < 700, x.sign())
    y = x / 2
    grad = (mu * (1 - y * torch.tanh(y)) * (1 - torch.tanh(y) ** 2)).where(x.abs() < 700, torch.zeros_like(x))
    return value, grad


@needs_native
@pytest.mark.parametrize("mu", [1.0, 0.37, 5.0, 100.0])
def test_sign_swish_matches_the_torch_path(mu, monkeypatch):
    from proxopt.quantizers import SignSwish
    q = SignSwish()
    theta = torch.cat([torch.randn(5000) * s for s in (0.01, 1.0, 30.0)] + [torch.tensor([0.0, -0.0, 1e30, -1e30])])
    g = torch.randn(theta.numel())
    v_nat, d_nat = torch.empty_like(theta), torch.empty_like(theta)
    q.value_into(theta, mu, v_nat, torch.empty_like(theta))
    q.grad_into(theta, g, mu, d_nat, torch.empty_like(theta))
    ref_v, ref_d = ref_sign_swish(theta, mu)
    assert (v_nat.double() - ref_v).abs().max() <= 8 * EPS
    assert bool(((d_nat.double() - ref_d * g.double()).abs() <= 16 * EPS * mu * g.double().abs()).all())
    for name in ("sign_swish", "sign_swish_grad"):
        monkeypatch.setattr(native, name, lambda *a, **k: False)
    v_t, d_t = torch.empty_like(theta), torch.empty_like(theta)
    q.value_into(theta, mu, v_t, torch.empty_like(theta))
    q.grad_into(theta, g, mu, d_t, torch.empty_like(theta))
    finite = theta.abs() < 1e29  # the torch kernels give NaN where mu theta overflows
    assert (v_nat - v_t)[finite].abs().max() <= 64 * EPS
    assert bool(((d_nat - d_t)[finite].abs() <= 64 * EPS * mu * g[finite].abs()).all())


@needs_native
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, width=32, allow_subnormal=False), min_size=1, max_size=80),
       st.floats(1e-3, 1e3))
def test_sign_swish_property(values, mu):
    """SS within a few ulp of 1 and mu SS' within a few ulp of mu of their float64 formulas; SS odd, SS' even,
    |SS| <= 1 + 2 * 0.28 (its maximum is about 1.1)."""
    theta = torch.tensor(values, dtype=torch.float32)
    v, d = torch.empty_like(theta), torch.empty_like(theta)
    assert native.sign_swish(theta, v, mu) and native.sign_swish_grad(theta, torch.ones_like(theta), d, mu)
    ref_v, ref_d = ref_sign_swish(theta, mu)
    assert (v.double() - ref_v).abs().max() <= 8 * EPS
    assert (d.double() - ref_d).abs().max() <= 16 * EPS * mu
    vm, dm = torch.empty_like(theta), torch.empty_like(theta)
    assert native.sign_swish(-theta, vm, mu) and native.sign_swish_grad(-theta, torch.ones_like(theta), dm, mu)
    assert torch.equal(vm, -v) and torch.equal(dm, d)
    assert bool((v.abs() <= 1.2).all())


@needs_native
def test_sign_swish_per_element_and_threads():
    theta = torch.randn(300_001) * 4
    g = torch.randn(300_001)
    prev = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            v, d = torch.empty_like(theta), torch.empty_like(theta)
            assert native.sign_swish(theta, v, 2.5) and native.sign_swish_grad(theta, g, d, 2.5)
            outs.append((v, d))
    finally:
        torch.set_num_threads(prev)
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    v, d = outs[0]
    for lo, hi in ((1, 40), (3, 300_001), (17, 18)):
        vp, dp = torch.empty(hi - lo), torch.empty(hi - lo)
        assert native.sign_swish(theta[lo:hi].clone(), vp, 2.5)
        assert native.sign_swish_grad(theta[lo:hi].clone(), g[lo:hi].clone(), dp, 2.5)
        assert torch.equal(vp, v[lo:hi]) and torch.equal(dp, d[lo:hi])


@pytest.mark.parametrize("preset", ["bnn+", "bnn++"])
def test_sign_swish_optimizer_steps_agree_with_the_torch_path(preset, monkeypatch):
    w_native, lat_native = three_steps(preset, 0.01)
    for name in ("sign_swish", "sign_swish_grad"):
        monkeypatch.setattr(native, name, lambda *a, **k: False)
    w_torch, lat_torch = three_steps(preset, 0.01)
    assert torch.allclose(w_native, w_torch, rtol=0, atol=1e-5)
    assert torch.allclose(lat_native, lat_torch, rtol=0, atol=1e-5)
