"""Bit-packed export of quantized models: 1 bit per binary weight, k bits per k-bit weight.

A quantized network holds, per tensor (or per output channel), values from a
small level set ``Q`` (THEORY.md §1, §6: ``w in alpha * Q``, with ``alpha``
per tensor or per output channel as in XNOR-Net). Each such tensor is stored
as the indices of its values in the level table, packed at
``b = ceil(log2 |Q|)`` bits per weight, plus the level table:

* **sign**: the values of each row (the whole tensor, or each output channel
  ``w[c]``) are ``{-a, +a}`` (the same magnitude, both signs, as for
  XNOR-Net / BinaryConnect weights with a scale): one bit per weight (the
  sign) and the scale ``a`` per tensor or per channel;
* **levels**: any other small set (ternary ``{-a, 0, a}`` at 2 bits, k-bit
  uniform levels at k bits, up to ``max_bits`` = 8): the codes and the level
  table (one row per tensor or per channel);
* **raw**: everything else (full-precision weights, biases, normalization
  parameters and buffers, integer tensors) as is.

The encoding is chosen per tensor by the smallest payload, and works on the
values' bit patterns, so decoding is **bitwise exact** (``-0.0``, NaN
payloads, any floating dtype). The codes are stored in bit planes: plane
``j`` holds bit ``j`` of every code, eight weights per byte (least
significant bit first), i.e. ``b * ceil(n / 8)`` bytes for ``n`` weights.

The file is ``torch.save`` of a dict of tensors (``uint8`` codes) and
primitives, loadable with ``torch.load(..., weights_only=True)``. A binary
float32 tensor shrinks 32x (up to its scales).

References:
    THEORY.md §6 (final hard quantization, scale alpha). [BC] Courbariaux et
    al., NeurIPS 2015. Rastegari et al. XNOR-Net, ECCV 2016 (per-channel
    scale of binary weights). larq's model summary and LCE converter
    (bit-packed binary weights). [Bop] Helwegen et al., NeurIPS 2019.
"""
from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import IO, Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["FORMAT", "VERSION", "encode_tensor", "decode_tensor", "pack_bits", "unpack_bits", "save_binary",
           "load_binary", "ExportReport"]

#: Format tag and version written into every file.
FORMAT = "proxopt-packed"
VERSION = 1

#: Approximate bytes ``torch.save`` spends per stored tensor (record header and alignment): a packed
#: encoding stores two tensors instead of one, so it must beat the raw payload by more than this.
_RECORD_BYTES = 64

_SHIFTS = torch.arange(8, dtype=torch.uint8)

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

PathLike = Union[str, "os.PathLike[str]", IO[bytes]]


# ------------------------------------------------------------------ bit planes
def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack integer codes in ``[0, 2**bits)`` into ``bits`` bit planes of ``ceil(n / 8)`` bytes.

    .. math:: \\text{out}[j, k] = \\sum_{i=0}^{7} 2^i \\,\\big\\lfloor c_{8k+i} / 2^j \\big\\rfloor \\bmod 2

    (codes past ``n`` count as 0).

    Args:
        codes: integer tensor (any shape; flattened).
        bits: bits per code, 0..8.

    Returns:
        ``uint8`` tensor of shape ``(bits, ceil(n / 8))``.

    Raises:
        ValueError: for ``bits`` outside 0..8 or a code outside ``[0, 2**bits)``.
        TypeError: for codes that are not an integer (or bool) tensor.

    Example:
        >>> pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1)
        tensor([[13,  1]], dtype=torch.uint8)
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= 8:
        raise ValueError(f"Invalid bits: {bits!r} (expected an int in 0..8)")
    if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.is_complex():
        got = getattr(codes, "dtype", type(codes))
        raise TypeError(f"Invalid codes: expected an integer or bool tensor, got {got}")
    flat = codes.reshape(-1)
    n = flat.numel()
    nbytes = (n + 7) // 8
    if n and (int(flat.min()) < 0 or int(flat.max()) >= 2 ** bits):
        raise ValueError(f"Invalid codes: values from {int(flat.min())} to {int(flat.max())} do not fit in "
                         f"bits={bits} (expected 0..{2 ** bits - 1})")
    if bits == 0 or n == 0:
        return torch.zeros(bits, nbytes, dtype=torch.uint8)
    c = torch.zeros(nbytes * 8, dtype=torch.uint8)
    c[:n] = flat.cpu().to(torch.uint8)
    planes = (c.view(1, nbytes, 8) >> _SHIFTS[:bits].view(bits, 1, 1)) & 1
    return (planes << _SHIFTS.view(1, 1, 8)).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` codes as an ``int64`` tensor.

    Example:
        >>> unpack_bits(pack_bits(torch.tensor([3, 0, 2, 1, 3]), 2), 5)
        tensor([3, 0, 2, 1, 3])
    """
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != (n + 7) // 8:
        raise ValueError(f"Invalid packed codes: {packed.dtype} tensor of shape {tuple(packed.shape)} for {n} values")
    bits = packed.shape[0]
    if bits == 0 or n == 0:
        return torch.zeros(n, dtype=torch.int64)
    planes = ((packed.unsqueeze(-1) >> _SHIFTS.view(1, 1, 8)) & 1).reshape(bits, -1)[:, :n]
    return (planes.to(torch.int64) << _SHIFTS[:bits].to(torch.int64).view(bits, 1)).sum(0)


# -------------------------------------------------------------------- codecs
def _patterns(t: Tensor) -> Tensor:
    """The values' bit patterns as a same-size signed/unsigned integer tensor."""
    return t.detach().contiguous().view(_INT_OF_SIZE[t.element_size()])


def _from_patterns(pats: Tensor, dtype: torch.dtype) -> Tensor:
    return pats.to(_INT_OF_SIZE[torch.empty((), dtype=dtype).element_size()]).view(dtype)


def _rows(t: Tensor, channel: bool) -> int:
    if not channel:
        return 1
    if t.dim() == 0:
        raise ValueError("Invalid mode: 'channel' needs a tensor with at least one dimension")
    return t.shape[0]


def _bits_for(d: int) -> int:
    return 0 if d <= 1 else math.ceil(math.log2(d))


def _level_table(rows: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-row sorted distinct values (padded with the row's largest) and each entry's index in it."""
    srt = rows.sort(dim=1).values
    new = torch.ones_like(srt, dtype=torch.bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    pos = new.cumsum(1) - 1
    d = int(pos[:, -1].max().item()) + 1
    table = srt[:, -1:].expand(-1, d).clone()
    table.scatter_(1, pos, srt)
    codes = torch.searchsorted(table, rows)
    return table, codes


def _plan(t: Tensor, channel: bool, max_bits: int) -> Optional[Dict[str, Any]]:
    """Best packed encoding of ``t`` with one level table per tensor or per channel, or None."""
    n = t.numel()
    c = _rows(t, channel)
    es = t.element_size()
    base: Dict[str, Any] = {"shape": list(t.shape), "channel": channel, "numel": n}
    if n == 0:
        return dict(base, kind="levels", bits=0, codes=pack_bits(torch.zeros(0, dtype=torch.uint8), 0),
                    levels=torch.zeros(c, 0, dtype=t.dtype), cost=0)
    pats = _patterns(t).reshape(c, -1).to(torch.int64)
    info = torch.iinfo(_INT_OF_SIZE[es])
    signed = info.min < 0
    sign_mask = info.min if signed else 1 << (8 * es - 1)
    mag_mask = info.max if signed else sign_mask - 1
    mags = pats & mag_mask
    best: Optional[Dict[str, Any]] = None
    if t.is_floating_point() and bool((mags == mags[:, :1]).all()):
        # {-a, +a} per row: one sign bit per weight and the scale a; only constant rows do better (0 bits)
        codes = (pats & sign_mask) == 0
        scale = _from_patterns(mags[:, 0], t.dtype)
        best = dict(base, kind="sign", bits=1, codes=pack_bits(codes, 1), scale=scale.cpu(),
                    cost=(n + 7) // 8 + c * es)
        if not bool((pats == pats[:, :1]).all()):
            return best
    table, codes = _level_table(pats)
    bits = _bits_for(table.shape[1])
    if bits <= max_bits:
        cost = bits * ((n + 7) // 8) + table.numel() * es
        if best is None or cost < best["cost"]:
            best = dict(base, kind="levels", bits=bits, codes=pack_bits(codes, bits),
                        levels=_from_patterns(table, t.dtype).cpu(), cost=cost)
    return best


def encode_tensor(t: Tensor, mode: str = "auto", max_bits: int = 8) -> Dict[str, Any]:
    """Encode one tensor as a dict of primitives and tensors (see the module docstring).

    Args:
        t: any tensor (on any device; the encoding is on CPU).
        mode: ``"auto"`` (smallest of raw, per-tensor and per-channel
            packing), ``"raw"``, ``"tensor"`` (one level table) or
            ``"channel"`` (one level table per ``t[c]``, ``c`` along dim 0).
        max_bits: largest code width tried (1..8): at most ``2**max_bits``
            distinct values per table.

    Returns:
        ``{"kind": "raw", "data": t}``, or for packed kinds ``kind``
        (``"sign"`` / ``"levels"``), ``shape``, ``numel``, ``channel``,
        ``bits``, ``codes`` (``uint8``, ``bits x ceil(n/8)``) and ``scale``
        (sign: ``(rows,)``) or ``levels`` (``(rows, d)``) in ``t``'s dtype.

    Raises:
        ValueError: for an unknown mode, or a forced packed mode that needs
            more than ``max_bits`` bits or a non-floating tensor.

    Example:
        >>> e = encode_tensor(torch.tensor([[0.5, -0.5, 0.5], [-2.0, 2.0, 2.0]]), mode="channel")
        >>> e["kind"], e["bits"], e["scale"].tolist()
        ('sign', 1, [0.5, 2.0])
        >>> decode_tensor(e)
        tensor([[ 0.5000, -0.5000,  0.5000],
                [-2.0000,  2.0000,  2.0000]])
    """
    if mode not in ("auto", "raw", "tensor", "channel"):
        raise ValueError(f"Invalid mode: {mode!r} (expected 'auto', 'raw', 'tensor' or 'channel')")
    if isinstance(max_bits, bool) or not isinstance(max_bits, int) or not 1 <= max_bits <= 8:
        raise ValueError(f"Invalid max_bits: {max_bits!r} (expected an int in 1..8)")
    if not isinstance(t, Tensor):
        raise TypeError(f"Invalid tensor: {type(t).__name__}")
    t = t.detach()
    raw = {"kind": "raw", "data": t.cpu().clone()}
    if mode == "raw":
        return raw
    packable = t.is_floating_point() and t.element_size() in _INT_OF_SIZE and not t.is_sparse
    if mode != "auto":
        if not packable:
            raise ValueError(f"Invalid mode: {mode!r} for a {t.dtype} tensor (only floating tensors are packed)")
        plan = _plan(t, mode == "channel", max_bits)
        if plan is None:
            raise ValueError(f"Invalid mode: {mode!r}: the tensor has more than 2**{max_bits} distinct values "
                             "per table")
        plan.pop("cost")
        return plan
    if not packable:
        return raw
    best, best_cost = None, t.numel() * t.element_size()
    for channel in ((False, True) if t.dim() >= 1 else (False,)):
        plan = _plan(t, channel, max_bits)
        if plan is not None and plan["cost"] + _RECORD_BYTES < best_cost:
            best, best_cost = plan, plan["cost"] + _RECORD_BYTES
    if best is None:
        return raw
    best.pop("cost")
    return best


_ENTRY_KEYS = {"raw": ("data",), "sign": ("shape", "numel", "channel", "codes", "scale"),
               "levels": ("shape", "numel", "channel", "codes", "levels")}


def _check_entry(entry: Any, name: str) -> str:
    if not isinstance(entry, dict) or entry.get("kind") not in _ENTRY_KEYS:
        raise ValueError(f"Invalid entry for {name!r}: expected a dict with kind 'raw', 'sign' or 'levels'")
    missing = [k for k in _ENTRY_KEYS[entry["kind"]] if k not in entry]
    if missing:
        raise ValueError(f"Invalid entry for {name!r}: malformed, kind {entry['kind']!r} without {', '.join(missing)}")
    return entry["kind"]


def decode_tensor(entry: Dict[str, Any], name: str = "tensor") -> Tensor:
    """Inverse of :func:`encode_tensor` (bitwise exact).

    Example:
        >>> t = torch.tensor([0.25, -0.25, -0.0, 0.25], dtype=torch.float64)
        >>> back = decode_tensor(encode_tensor(t, mode="tensor"))
        >>> back.dtype, torch.equal(back.view(torch.int64), t.view(torch.int64))
        (torch.float64, True)
    """
    kind = _check_entry(entry, name)
    if kind == "raw":
        data = entry.get("data")
        if not isinstance(data, Tensor):
            raise ValueError(f"Invalid entry for {name!r}: raw data is not a tensor")
        return data
    shape, n, channel = entry["shape"], int(entry["numel"]), bool(entry["channel"])
    if math.prod(shape) != n:
        raise ValueError(f"Invalid entry for {name!r}: shape {shape} does not hold {n} values")
    codes = unpack_bits(entry["codes"], n)
    table = entry["scale"] if kind == "sign" else entry["levels"]
    dtype = table.dtype
    rows = table.shape[0]
    if rows != (shape[0] if channel else 1):
        raise ValueError(f"Invalid entry for {name!r}: {rows} table rows for shape {shape} (channel={channel})")
    if n == 0:
        return torch.zeros(shape, dtype=dtype)
    codes = codes.reshape(rows, -1)
    if kind == "sign":
        info = torch.iinfo(_INT_OF_SIZE[table.element_size()])
        sign_mask = info.min if info.min < 0 else 1 << (8 * table.element_size() - 1)
        mags = _patterns(table).to(torch.int64).reshape(rows, 1)
        pats = torch.where(codes.bool(), mags, mags | sign_mask)
    else:
        if int(codes.max()) >= table.shape[1]:
            raise ValueError(f"Invalid entry for {name!r}: a code exceeds its level table")
        pats = _patterns(table).to(torch.int64).gather(1, codes)
    return _from_patterns(pats, dtype).reshape(shape)


def _entry_bytes(entry: Dict[str, Any]) -> int:
    return sum(v.numel() * v.element_size() for v in entry.values() if isinstance(v, Tensor))


# ---------------------------------------------------------------- save / load
@dataclass
class ExportReport:
    """What :func:`save_binary` wrote.

    Attributes:
        entries: per state-dict key, ``(kind, bits, payload bytes, raw bytes)``.
        raw_bytes: tensor bytes of the plain ``state_dict``.
        packed_bytes: tensor bytes written (codes, scales, level tables, raw
            tensors).
    """

    entries: Dict[str, Tuple[str, int, int, int]] = field(default_factory=dict)

    @property
    def raw_bytes(self) -> int:
        return sum(e[3] for e in self.entries.values())

    @property
    def packed_bytes(self) -> int:
        return sum(e[2] for e in self.entries.values())

    def quantized(self) -> List[str]:
        """Names of the tensors stored packed."""
        return [k for k, e in self.entries.items() if e[0] != "raw"]

    @property
    def compression(self) -> float:
        """``raw_bytes / packed_bytes`` over all tensors."""
        return self.raw_bytes / max(self.packed_bytes, 1)


def _expected_levels(model: nn.Module, opt: Any) -> Dict[str, int]:
    from .groups import group_levels
    names = {id(p): n for n, p in model.named_parameters()}
    out: Dict[str, int] = {}
    for gi, g in enumerate(opt.param_groups):
        q = group_levels(g, opt)
        if q is None:
            continue
        for p in g["params"]:
            if id(p) not in names:
                raise ValueError(f"Invalid opt: a parameter of its group {gi} is not a parameter of the model")
            out[names[id(p)]] = len(q)
    return out


def save_binary(model: nn.Module, path: PathLike, opt: Any = None, *, max_bits: int = 8) -> ExportReport:
    """Write ``model.state_dict()`` with every quantized tensor bit-packed.

    Each tensor is encoded by :func:`encode_tensor` (``mode="auto"``):
    tensors whose values form a small level set per tensor or per output
    channel are packed (binary ``{-a, +a}`` at 1 bit plus the scale ``a``,
    ternary at 2 bits, ``2**k`` levels at ``k`` bits, with their level
    table), all others are stored as they are. Quantized tensors are
    detected from their values, so a model after ``opt.finalize()`` needs no
    optimizer. With ``opt``, the export is taken inside ``opt.hard()`` (the
    exactly quantized weights, THEORY.md §6, even mid-training; the model is
    left as it was), and every parameter of a quantized group is checked to
    hold at most its group's number of levels per tensor or per channel.

    Args:
        model: the network.
        path: file name or binary file object (as for :func:`torch.save`).
        opt: a proxopt optimizer of ``model`` (optional).
        max_bits: largest packed code width (1..8).

    Returns:
        An :class:`ExportReport` (per-tensor kind, bits and bytes).

    Raises:
        ValueError: when a parameter of a quantized group of ``opt`` is not
            a model parameter or does not hold its group's levels.

    Example:
        >>> import io, torch
        >>> lin = torch.nn.Linear(64, 64, bias=False)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.where(lin.weight >= 0, 1.0, -1.0))
        >>> buf = io.BytesIO(); report = save_binary(lin, buf)
        >>> report.entries["weight"][:2], report.compression > 30
        (('sign', 1), True)
        >>> _ = buf.seek(0); _ = load_binary(buf, torch.nn.Linear(64, 64, bias=False))

    References:
        THEORY.md §6; Rastegari et al., XNOR-Net, ECCV 2016 (scales);
        larq (bit-packed binary weights); [Bop] Helwegen et al., NeurIPS 2019.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: {type(model).__name__} (expected a torch.nn.Module)")
    expected = _expected_levels(model, opt) if opt is not None else {}
    report = ExportReport()
    tensors: Dict[str, Dict[str, Any]] = {}
    with (opt.hard() if opt is not None else nullcontext()):
        for name, t in model.state_dict(keep_vars=False).items():
            entry = encode_tensor(t, "auto", max_bits)
            if name in expected and t.numel() > 0:
                _check_quantized(name, t, expected[name])
            tensors[name] = entry
            report.entries[name] = (entry["kind"], int(entry.get("bits", t.element_size() * 8)),
                                    _entry_bytes(entry), t.numel() * t.element_size())
    torch.save({"format": FORMAT, "version": VERSION, "tensors": tensors}, path)
    return report


def _check_quantized(name: str, t: Tensor, d: int) -> None:
    pats = _patterns(t).to(torch.int64)
    ok = False
    for rows in ((pats.reshape(1, -1),) + ((pats.reshape(t.shape[0], -1),) if t.dim() >= 1 else ())):
        srt = rows.sort(dim=1).values
        distinct = 1 + (srt[:, 1:] != srt[:, :-1]).sum(1)
        ok = ok or int(distinct.max()) <= d
    if not ok:
        raise ValueError(f"Invalid model: parameter {name!r} is in a quantized group with {d} levels but holds "
                         "more distinct values per tensor and per channel")


def load_binary(path: PathLike, model: nn.Module) -> nn.Module:
    """Restore a file written by :func:`save_binary` into ``model``, bit for bit.

    The file is read with ``torch.load(weights_only=True)``. The model must
    have exactly the file's state-dict keys, shapes and dtypes; otherwise a
    ``ValueError`` names the first mismatches and the model is not changed
    (every tensor is decoded and checked before any is copied).

    Args:
        path: file name or binary file object.
        model: a network of the same architecture.

    Returns:
        ``model``.

    Raises:
        ValueError: for a file that is not a proxopt packed file, or a model
            that does not match it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: {type(model).__name__} (expected a torch.nn.Module)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not isinstance(blob.get("tensors"), dict):
        raise ValueError(f"Invalid file: not a {FORMAT!r} file written by proxopt.export.save_binary")
    if blob.get("version") != VERSION:
        raise ValueError(f"Invalid file: format version {blob.get('version')!r}, this proxopt reads {VERSION}")
    target = model.state_dict(keep_vars=True)
    saved = blob["tensors"]
    missing = [k for k in target if k not in saved]
    unexpected = [k for k in saved if k not in target]
    if missing or unexpected:
        raise ValueError(f"Invalid model: it does not match the file (missing in file: {missing[:5]}, "
                         f"not in model: {unexpected[:5]})")
    decoded: Dict[str, Tensor] = {}
    for name, entry in saved.items():
        try:
            t = decode_tensor(entry, name)
        except (KeyError, TypeError, RuntimeError, AttributeError) as err:
            raise ValueError(f"Invalid file: the entry for {name!r} is malformed ({err!r})") from err
        mine = target[name]
        if tuple(t.shape) != tuple(mine.shape) or t.dtype != mine.dtype:
            raise ValueError(f"Invalid model: {name!r} is {mine.dtype} {tuple(mine.shape)} in the model and "
                             f"{t.dtype} {tuple(t.shape)} in the file")
        decoded[name] = t
    with torch.no_grad():
        for name, t in decoded.items():
            target[name].copy_(t)
    return model
