"""Test-session settings shared by every test file.

The tests use tiny tensors; with more than one intra-op thread some CPU
kernels (``torch.bucketize`` among them) parallelize even a few hundred
elements and cost milliseconds per call on a loaded machine. One thread keeps
the suite fast and its timings stable.
"""
import torch

torch.set_num_threads(1)
