"""Exact (bitwise) comparison of nested test values, shared by the test files.

Kept apart from :mod:`optim_db` so that a test file can use it without
building the optimizer configuration matrix.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Recursive exact equality of tensors (NaN equals NaN), dicts, lists and scalars, naming the first difference."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=0.0, atol=0.0, equal_nan=True, msg=lambda m: f"{where}: {m}")
        else:
            assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys differ"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
