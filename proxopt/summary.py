"""Bits, memory and compression of a quantized model, per param group (like larq's model summary).

For each param group of a proxopt optimizer (or, without one, each kind of
tensor found in the model) the table gives the number of tensors and
parameters, the bits per weight in the packed format and the memory
packed versus float32:

* a quantized group with level set ``Q`` (THEORY.md §1) costs
  ``b = ceil(log2 |Q|)`` bits per weight (1 for binary, 2 for ternary, k for
  ``2**k`` levels), stored as :mod:`proxopt.export` does it: ``b`` bit
  planes of ``ceil(n / 8)`` bytes per tensor, plus its scale ``alpha``
  (``scale="tensor"``: one value; ``"channel"``: one per output channel, in
  the parameter's dtype);
* a full-precision parameter costs its dtype's bits (32 for float32, 16 for
  bf16 / fp16, 64 for float64).

The compression ratio is ``float32 bytes / packed bytes`` (larq reports the
same "memory ... 32-bit equivalent" figures).

References:
    THEORY.md §1, §6. larq's ``larq.models.summary``. [BC] Courbariaux et
    al., NeurIPS 2015. [Bop] Helwegen et al., NeurIPS 2019. [PC++] Lu et al.,
    NeurIPS 2023 (memory reduction of binarized networks).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import Tensor, nn

from .export import encode_tensor
from .groups import group_levels

__all__ = ["GroupSummary", "Summary", "summary"]


@dataclass
class GroupSummary:
    """One row of :class:`Summary`.

    Attributes:
        label: ``"group i"``, ``"not in optimizer"``, or the detected format.
        quantize: whether the row is stored quantized.
        tensors: number of tensors.
        params: number of scalars.
        levels: ``|Q|`` for quantized rows, None for full precision.
        bits: bits per weight of the codes (``ceil(log2 |Q|)``) or of the
            dtype (an average if the dtypes differ); scales excluded.
        packed_bytes: bytes in the packed format (codes and scales, or the
            full-precision tensors).
        fp32_bytes: ``4 * params``.
        scale: the group's ``scale`` option (None, ``"tensor"``, ``"channel"``);
            for detected rows, how the export stores the level tables.
    """

    label: str
    quantize: bool
    tensors: int = 0
    params: int = 0
    levels: Optional[int] = None
    bits: float = 0.0
    packed_bytes: int = 0
    fp32_bytes: int = 0
    scale: Optional[str] = None

    @property
    def compression(self) -> float:
        """``fp32_bytes / packed_bytes`` (1 for an empty row)."""
        return self.fp32_bytes / self.packed_bytes if self.packed_bytes else 1.0


@dataclass
class Summary:
    """The result of :func:`summary`: rows and totals; ``str()`` gives the table."""

    rows: List[GroupSummary] = field(default_factory=list)

    @property
    def params(self) -> int:
        """Total number of parameters."""
        return sum(r.params for r in self.rows)

    @property
    def quantized_params(self) -> int:
        """Parameters stored quantized."""
        return sum(r.params for r in self.rows if r.quantize)

    @property
    def packed_bytes(self) -> int:
        """Total bytes in the packed format."""
        return sum(r.packed_bytes for r in self.rows)

    @property
    def fp32_bytes(self) -> int:
        """Total bytes as float32."""
        return sum(r.fp32_bytes for r in self.rows)

    @property
    def compression(self) -> float:
        """``fp32_bytes / packed_bytes``."""
        return self.fp32_bytes / self.packed_bytes if self.packed_bytes else 1.0

    def __str__(self) -> str:
        head = ("group", "quantize", "tensors", "params", "levels", "bits", "scale", "packed KiB", "fp32 KiB",
                "ratio")
        body = []
        for r in self.rows:
            body.append((r.label, "yes" if r.quantize else "no", str(r.tensors), f"{r.params:,}",
                         "-" if r.levels is None else str(r.levels), f"{r.bits:g}", r.scale or "-",
                         f"{r.packed_bytes / 1024:.2f}", f"{r.fp32_bytes / 1024:.2f}", f"{r.compression:.2f}x"))
        body.append(("total", "", str(sum(r.tensors for r in self.rows)), f"{self.params:,}", "", "", "",
                     f"{self.packed_bytes / 1024:.2f}", f"{self.fp32_bytes / 1024:.2f}", f"{self.compression:.2f}x"))
        widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
        rule = "+".join("-" * (w + 2) for w in widths)

        def fmt(row: tuple) -> str:
            return "|".join(f" {c:<{w}} " if i == 0 else f" {c:>{w}} " for i, (c, w) in enumerate(zip(row, widths)))

        q = self.quantized_params
        share = 100.0 * q / self.params if self.params else 0.0
        lines = ["proxopt summary", rule, fmt(head), rule] + [fmt(b) for b in body[:-1]] + [rule, fmt(body[-1]), rule,
                 f"quantized parameters: {q:,} of {self.params:,} ({share:.1f}%); "
                 f"memory {self.packed_bytes / 1024:.2f} KiB packed vs {self.fp32_bytes / 1024:.2f} KiB float32 "
                 f"({self.compression:.2f}x smaller)"]
        return "\n".join(lines)


def _codes_bytes(n: int, bits: int) -> int:
    return bits * ((n + 7) // 8)


def _scale_count(p: Tensor, scale: Optional[str]) -> int:
    if scale == "tensor":
        return 1
    if scale == "channel":
        return p.shape[0] if p.dim() >= 1 else 1
    return 0


def _fp_row(label: str, params: List[Tensor]) -> GroupSummary:
    n = sum(p.numel() for p in params)
    nbytes = sum(p.numel() * p.element_size() for p in params)
    return GroupSummary(label=label, quantize=False, tensors=len(params), params=n,
                        bits=(8.0 * nbytes / n) if n else 0.0, packed_bytes=nbytes, fp32_bytes=4 * n)


def _quant_row(label: str, params: List[Tensor], levels: int, scale: Optional[str]) -> GroupSummary:
    bits = max(1, (levels - 1).bit_length())
    n = sum(p.numel() for p in params)
    nbytes = sum(_codes_bytes(p.numel(), bits) + _scale_count(p, scale) * p.element_size() for p in params)
    return GroupSummary(label=label, quantize=True, tensors=len(params), params=n, levels=levels, bits=float(bits),
                        packed_bytes=nbytes, fp32_bytes=4 * n, scale=scale)


def _detected_rows(model: nn.Module) -> List[GroupSummary]:
    quant: Dict[int, List[Tuple[Tensor, int, int]]] = {}
    fp: List[Tensor] = []
    rows: List[GroupSummary] = []
    for _, p in model.named_parameters():
        e = encode_tensor(p, "auto")
        if e["kind"] == "raw":
            fp.append(p)
        else:
            nbytes = sum(v.numel() * v.element_size() for v in e.values() if isinstance(v, Tensor))
            d = 2 if e["kind"] == "sign" else max(int(e["levels"].shape[1]), 1)
            quant.setdefault(int(e["bits"]), []).append((p, nbytes, d, bool(e["channel"])))  # 0: one value
    for bits in sorted(quant):
        ps = [p for p, _, _, _ in quant[bits]]
        n = sum(p.numel() for p in ps)
        nbytes = sum(b for _, b, _, _ in quant[bits])
        per_channel = any(c for _, _, _, c in quant[bits])
        label = f"{bits}-bit (detected)" if bits else "constant (detected)"
        rows.append(GroupSummary(label=label, quantize=True, tensors=len(ps), params=n,
                                 levels=max(d for _, _, d, _ in quant[bits]), bits=float(bits),
                                 packed_bytes=nbytes, fp32_bytes=4 * n, scale="channel" if per_channel else "tensor"))
    if fp:
        rows.append(_fp_row("full precision", fp))
    return rows


def summary(model: nn.Module, opt: Any = None, *, print_fn: Optional[Callable[[str], Any]] = print) -> Summary:
    """Bits and memory per param group and the compression ratio of a quantized model.

    With ``opt``, one row per param group: a quantized group with level set
    ``Q`` (read from its ``levels`` / ``forward`` / ``mirror_map``
    configuration, binary for Bop; see :func:`proxopt.groups.group_levels`)
    counts ``ceil(log2 |Q|)`` bits per weight plus its scales, whatever the
    weights hold right now (soft weights during training become levels at
    ``finalize()``); a ``quantize=False`` group counts its dtype's bits.
    Model parameters in no group get a ``not in optimizer`` row.

    Without ``opt``, tensors are classified from their values as
    :func:`proxopt.export.save_binary` does (a finalized model), one row per
    detected bit width, the sizes being those of the export's payload.

    Args:
        model: the network.
        opt: a proxopt optimizer of ``model`` (optional).
        print_fn: called with the table (default :func:`print`; None to only
            return it).

    Returns:
        A :class:`Summary` (``str(result)`` is the printed table).

    Example:
        >>> import torch, proxopt
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 4))
        >>> from proxopt.groups import param_groups
        >>> opt = proxopt.optimizer("bc", param_groups(net), lr=1e-3)
        >>> s = summary(net, opt, print_fn=None)
        >>> [(r.label, r.params, r.bits) for r in s.rows]
        [('group 0', 4096, 1.0), ('group 1', 1412, 32.0)]
        >>> round(s.compression, 2)
        3.58

    References:
        larq's model summary; THEORY.md §1, §6.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: {type(model).__name__} (expected a torch.nn.Module)")
    if opt is None:
        result = Summary(_detected_rows(model))
    else:
        rows: List[GroupSummary] = []
        seen = set()
        for gi, g in enumerate(opt.param_groups):
            params = list(g["params"])
            seen.update(id(p) for p in params)
            q = group_levels(g, opt)
            if q is None:
                rows.append(_fp_row(f"group {gi}", params))
            else:
                scale = g.get("scale")
                rows.append(_quant_row(f"group {gi}", params, len(q), scale if isinstance(scale, str) else None))
        rest = [p for p in model.parameters() if id(p) not in seen]
        if rest:
            rows.append(_fp_row("not in optimizer", rest))
        result = Summary(rows)
    if print_fn is not None:
        print_fn(str(result))
    return result
