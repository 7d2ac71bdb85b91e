"""Test-session settings shared by every test file.

The tests use tiny tensors; with more than one intra-op thread some CPU
kernels (``torch.bucketize`` among them) parallelize even a few hundred
elements and cost milliseconds per call on a loaded machine. One thread keeps
the suite fast and its timings stable.

Hypothesis runs derandomized: every run of the suite (CI's, a user's) tries
the same examples, so a pass or a failure reproduces. Set
``PROXOPT_HYPOTHESIS=random`` to draw new examples on each run instead (to
explore; a failure then prints the example to reproduce), or pass
``--hypothesis-seed=N`` for a seeded random run.
"""
import os

import torch
from hypothesis import settings

torch.set_num_threads(1)

settings.register_profile("derandomized", derandomize=True)
settings.register_profile("random", derandomize=False)
settings.load_profile("random" if os.environ.get("PROXOPT_HYPOTHESIS") == "random" else "derandomized")


def pytest_configure(config):  # type: ignore[no-untyped-def]
    """``--hypothesis-seed`` asks for seeded random examples, which a derandomized profile would ignore."""
    if config.getoption("hypothesis_seed", None) is not None:
        settings.load_profile("random")
