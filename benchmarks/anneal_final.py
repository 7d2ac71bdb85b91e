"""How the final strength of the anneal decides whether the hard model keeps the soft model's accuracy.

``python -m benchmarks.anneal_final`` trains a digits MLP (64-256-256-10, every weight matrix
quantized, Adam 1e-3, 1500 steps of batch 64) with md-tanh-s, bnn++ and pc, annealing mu/beta
geometrically from 1 to ``final`` (7 or 1e4), and prints test accuracy of the trained (soft) model
and of the hard-rounded one (``opt.hard()``), next to full precision. About a minute on one core.

References: THEORY.md §6 (final hard quantization); [MD] Ajanthan et al., AISTATS 2021.
"""
import torch
from sklearn.datasets import load_digits

import proxopt


def run(name: str, final, steps: int = 1500, seed: int = 0):
    """Train one configuration; return (soft accuracy, hard accuracy) on the held-out digits."""
    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(X), generator=g)
    tr, te = perm[:1400], perm[1400:]
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                            torch.nn.Linear(256, 10))
    if name == "fp":
        opt, an = torch.optim.Adam(m.parameters(), lr=1e-3), None
    else:
        opt = proxopt.optimizer(name, proxopt.param_groups(m, quantize_first=True, quantize_last=True), lr=1e-3)
        an = proxopt.AnnealScheduler(opt, final=final, total_steps=steps)
    for _ in range(steps):
        idx = torch.randint(len(tr), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(m(X[tr][idx]), y[tr][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if an is not None:
            an.step()
    with torch.no_grad():
        acc = lambda: (m(X[te]).argmax(1) == y[te]).float().mean().item()  # noqa: E731
        soft = acc()
        if name == "fp":
            return soft, soft
        with opt.hard():
            return soft, acc()


def main() -> None:
    """Print the table."""
    torch.set_num_threads(1)
    soft, _ = run("fp", None)
    print(f"{'method':10s} {'final':>7s} {'soft %':>7s} {'hard %':>7s}")
    print(f"{'fp':10s} {'':>7s} {100 * soft:7.1f} {100 * soft:7.1f}")
    for name in ("md-tanh-s", "bnn++", "pc"):
        for final in (7.0, 1e4):
            s, h = run(name, final)
            print(f"{name:10s} {final:7.0f} {100 * s:7.1f} {100 * h:7.1f}", flush=True)


if __name__ == "__main__":
    main()
