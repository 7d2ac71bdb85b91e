"""Models of the benchmark suite and the conventional STE baseline.

Every model is an ordinary ``torch.nn.Module``; the quantized runs hand its
weight matrices / convolution kernels to a proxopt optimizer and keep the
rest (BatchNorm scales and shifts, there are no other biases) full precision
through a param group with ``quantize=False`` (see :func:`param_groups`).

The *STE-in-the-model* baseline is BinaryConnect written the way users write
it today [BC]: layers that keep a real weight and binarize it in ``forward``
through a custom :class:`torch.autograd.Function` (``sign`` forward,
straight-through ``identity`` backward), trained with a plain
``torch.optim.Adam`` and the BinaryConnect clip of the real weights to
``[-1, 1]`` after each step.

References:
    [BC] Courbariaux, Bengio, David. BinaryConnect. NeurIPS 2015.
    [BNN] Hubara et al. Binarized Neural Networks. NeurIPS 2016 (BatchNorm
    after every binary layer, including the last one).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SignSTE",
    "BinaryLinear",
    "BinaryConv1d",
    "BinaryConv2d",
    "mlp",
    "cnn2d",
    "cnn1d",
    "linear_model",
    "build",
    "param_groups",
    "layer_weights",
    "quantized_weights",
    "init_quantized_",
    "clip_quantized_",
]


class SignSTE(torch.autograd.Function):
    """Sign with the straight-through estimator [BC].

    .. math:: \\text{forward: } w_b = \\operatorname{sign}(w)\\ (\\operatorname{sign}(0) = +1),
              \\qquad \\text{backward: } \\partial L/\\partial w = \\partial L/\\partial w_b

    The tie rule is proxopt's (``sign(0) = +1``) so both baselines round the
    same way.
    """

    @staticmethod
    def forward(ctx: Any, w: Tensor) -> Tensor:
        """``sign(w)`` with ``sign(0) = +1``."""
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        """Straight through: the incoming gradient unchanged."""
        return grad


class BinaryLinear(nn.Linear):
    """``nn.Linear`` whose forward uses ``SignSTE(weight)`` (BinaryConnect in the model) [BC]."""

    def forward(self, x: Tensor) -> Tensor:
        """``y = x sign(W)^T + b`` with the straight-through gradient for ``W``."""
        return F.linear(x, SignSTE.apply(self.weight), self.bias)


class BinaryConv1d(nn.Conv1d):
    """``nn.Conv1d`` whose forward uses ``SignSTE(weight)`` [BC]."""

    def forward(self, x: Tensor) -> Tensor:
        """1-D convolution with ``sign(W)`` and the straight-through gradient."""
        return self._conv_forward(x, SignSTE.apply(self.weight), self.bias)


class BinaryConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose forward uses ``SignSTE(weight)`` [BC]."""

    def forward(self, x: Tensor) -> Tensor:
        """2-D convolution with ``sign(W)`` and the straight-through gradient."""
        return self._conv_forward(x, SignSTE.apply(self.weight), self.bias)


def _lin(ste: bool) -> type:
    return BinaryLinear if ste else nn.Linear


def mlp(sizes: Sequence[int], ste: bool = False) -> nn.Sequential:
    """MLP ``sizes[0] -> ... -> sizes[-1]``: bias-free linear layers each followed by BatchNorm.

    Hidden layers: ``Linear -> BatchNorm1d -> ReLU``; the output layer is
    ``Linear -> BatchNorm1d`` (BNN's recipe [BNN]: a binary last layer needs
    a learned output scale). ``ste=True`` uses :class:`BinaryLinear`.
    """
    lin = _lin(ste)
    layers: List[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [lin(a, b, bias=False), nn.BatchNorm1d(b)]
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def cnn2d(in_ch: int = 1, side: int = 8, classes: int = 10, width: int = 32, ste: bool = False) -> nn.Sequential:
    """Small 2-D CNN for 8x8 digits: two 3x3 conv blocks, 2x2 max-pool, linear head.

    ``Conv(in, w) -> BN -> ReLU -> Conv(w, 2w) -> BN -> ReLU -> MaxPool(2) ->
    Linear(2w * (side/2)^2, classes) -> BN``; all convolutions and the linear
    layer are bias free (BatchNorm carries the shifts).
    """
    conv = BinaryConv2d if ste else nn.Conv2d
    return nn.Sequential(
        conv(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        conv(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        _lin(ste)(2 * width * (side // 2) ** 2, classes, bias=False), nn.BatchNorm1d(classes),
    )


class _Unsqueeze(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        """``(batch, length) -> (batch, 1, length)``."""
        return x.unsqueeze(1)


def cnn1d(length: int = 40, classes: int = 10, width: int = 32, ste: bool = False) -> nn.Sequential:
    """Small 1-D CNN for MNIST-1D: three conv blocks (the second and third stride 2), linear head.

    Input ``(batch, length)`` -> ``(batch, 1, length)`` -> ``Conv1d(1, w, 5) ->
    BN -> ReLU -> Conv1d(w, w, 3, stride 2) -> BN -> ReLU -> Conv1d(w, w, 3,
    stride 2) -> BN -> ReLU -> Linear(w * length/4, classes) -> BN``.
    """
    conv = BinaryConv1d if ste else nn.Conv1d
    return nn.Sequential(
        _Unsqueeze(),
        conv(1, width, 5, padding=2, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
        conv(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
        conv(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
        nn.Flatten(),
        _lin(ste)(width * (length // 4), classes, bias=False), nn.BatchNorm1d(classes),
    )


def linear_model(d: int, ste: bool = False) -> nn.Module:
    """``y = X w`` (one bias-free linear layer with one output): the teacher-student student."""
    return _lin(ste)(d, 1, bias=False)


_PLAIN = {BinaryLinear: nn.Linear, BinaryConv1d: nn.Conv1d, BinaryConv2d: nn.Conv2d}


def build(spec: Dict[str, Any], ste: bool = False, keep_first_last: bool = False) -> nn.Module:
    """Build a model from a spec dict ``{"kind": "mlp" | "cnn2d" | "cnn1d" | "linear", ...}``.

    The remaining keys are the builder's arguments (``sizes`` for ``mlp``,
    ``d`` for ``linear``, ``width`` etc. for the CNNs). With ``ste=True`` and
    ``keep_first_last=True`` the first and last layers are plain
    (full-precision) layers, matching the optimizer-side choice.
    """
    spec = dict(spec)
    kind = spec.pop("kind")
    makers = {"mlp": mlp, "cnn2d": cnn2d, "cnn1d": cnn1d, "linear": linear_model}
    if kind not in makers:
        raise ValueError(f"Invalid model kind: {kind!r}; valid kinds are {', '.join(makers)}")
    model = makers[kind](ste=ste, **spec)
    if ste and keep_first_last:
        layers = [m for m in model.modules() if type(m) in _PLAIN]
        if len(layers) > 2:
            for m in (layers[0], layers[-1]):
                m.__class__ = _PLAIN[type(m)]
    return model


def layer_weights(model: nn.Module) -> List[Tensor]:
    """Weights of every Linear / Conv layer (every weight matrix / kernel), in forward order."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def quantized_weights(model: nn.Module, keep_first_last: bool = False) -> List[Tensor]:
    """The tensors the suite quantizes: every layer weight, or all but the first and last ones.

    ``keep_first_last=True`` leaves the first and the last layer in full
    precision (the common practice of XNOR-Net / Bi-Real Net; the MD paper
    quantizes every layer).
    """
    ws = layer_weights(model)
    if keep_first_last and len(ws) > 2:
        return ws[1:-1]
    return ws


def param_groups(model: nn.Module, keep_first_last: bool = False) -> List[Dict[str, Any]]:
    """Two param groups: quantized weights, and everything else with ``quantize=False``.

    Empty groups are dropped (the linear student has no full-precision
    parameter).
    """
    q = quantized_weights(model, keep_first_last)
    ids = {id(p) for p in q}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": q, "quantize": True}]
    if rest:
        groups.append({"params": rest, "quantize": False})
    return groups


@torch.no_grad()
def init_quantized_(model: nn.Module, scale: float = 1.0, generator: torch.Generator | None = None,
                    keep_first_last: bool = False) -> None:
    """Initialise every quantized weight i.i.d. ``U(-scale, scale)`` (the range of the levels at 1).

    The latents start as a copy of these values, so a soft forward
    (``tanh(beta theta)``, ``clip``) starts as a genuinely soft weight and a
    ternary rounding starts with about a third of the weights at each level
    [MD, PC].
    """
    for w in quantized_weights(model, keep_first_last):
        w.copy_(torch.rand(w.shape, generator=generator, dtype=w.dtype).mul_(2 * scale).sub_(scale))


@torch.no_grad()
def clip_quantized_(model: nn.Module, bound: float = 1.0, keep_first_last: bool = False) -> None:
    """BinaryConnect's clip of the real weights to ``[-bound, bound]`` after a step [BC]."""
    for w in quantized_weights(model, keep_first_last):
        w.clamp_(-bound, bound)
