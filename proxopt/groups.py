"""Param groups for quantization-aware training: what to quantize, what to keep.

Binary and low-bit networks keep a few parameters in full precision. The
usual recipe (BinaryConnect, BNN, XNOR-Net, larq's ``QuantConv``/``QuantDense``
layers, the MD paper's appendix on first/last layers) quantizes the weight
matrices and kernels of the hidden layers and keeps

* biases (and every other 0-d / 1-d parameter),
* normalization layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, ...),
* the first and the last layer

in full precision. :func:`param_groups` returns two param groups built on
that rule, ``quantize=True`` and ``quantize=False``, ready for any proxopt
optimizer (``proxopt.optimizer(name, param_groups(model), lr=...)``): the
optimizers quantize only the first group and hand the second to their base
optimizer (THEORY.md §2, §7).

References:
    [BC] Courbariaux et al. BinaryConnect. NeurIPS 2015.
    [BNN] Hubara et al. Binarized Neural Networks. NeurIPS 2016.
    [MD] Ajanthan et al. Mirror Descent View for Neural Network
    Quantization. AISTATS 2021.
    [Bop] Helwegen et al. Latent Weights Do Not Exist. NeurIPS 2019.
"""
from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

from torch import Tensor, nn

from . import mirror_maps as mm
from . import quantizers as qz
from .levels import BINARY, make_levels

__all__ = ["NORM_TYPES", "param_groups", "describe_groups", "group_levels", "group_bits"]


def _norm_types() -> Tuple[Type[nn.Module], ...]:
    names = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d",
             "LazyBatchNorm2d", "LazyBatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
             "LazyInstanceNorm1d", "LazyInstanceNorm2d", "LazyInstanceNorm3d", "LayerNorm", "GroupNorm",
             "LocalResponseNorm", "RMSNorm")
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))


#: Module types whose parameters stay in full precision by default.
NORM_TYPES: Tuple[Type[nn.Module], ...] = _norm_types()

#: Group keys that :func:`param_groups` sets itself.
_RESERVED = ("params", "param_names", "quantize")

Pattern = Union[str, "re.Pattern[str]"]


@dataclass
class _Entry:
    name: str
    param: Tensor
    module_name: str
    module: nn.Module
    quantize: bool
    reason: str


def _check_patterns(keep: Any) -> List[Pattern]:
    if keep is None:
        return []
    if isinstance(keep, (str, re.Pattern)):
        keep = [keep]
    try:
        pats = list(keep)
    except TypeError:
        raise TypeError(f"Invalid keep: {keep!r} (expected a pattern or a list of fnmatch strings / "
                        "compiled regular expressions)") from None
    for p in pats:
        if not isinstance(p, (str, re.Pattern)):
            raise TypeError(f"Invalid keep: {p!r} (expected an fnmatch string or a compiled regular expression)")
    return pats


def _matches(pat: Pattern, name: str, module_name: str) -> bool:
    if isinstance(pat, str):
        return fnmatch.fnmatchcase(name, pat) or (module_name != "" and fnmatch.fnmatchcase(module_name, pat))
    return pat.search(name) is not None


def _check_kwargs(name: str, kw: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if kw is None:
        return {}
    if not isinstance(kw, dict):
        raise TypeError(f"Invalid {name}: {kw!r} (expected a dict of group options)")
    bad = [k for k in kw if k in _RESERVED]
    if bad:
        raise ValueError(f"Invalid {name}: the keys {bad} are set by param_groups itself")
    return dict(kw)


def _classify(model: nn.Module, quantize_first: bool, quantize_last: bool, keep_types: Tuple[type, ...],
              keep: List[Pattern], quantize_if: Optional[Callable[[str, Tensor, nn.Module], bool]],
              min_ndim: int) -> List[_Entry]:
    owner: Dict[int, Tuple[str, nn.Module]] = {}
    layers: List[nn.Module] = []
    for mname, mod in model.named_modules():
        direct = dict(mod.named_parameters(recurse=False))
        for p in direct.values():
            owner.setdefault(id(p), (mname, mod))
        if isinstance(direct.get("weight"), Tensor) and not isinstance(mod, NORM_TYPES):
            layers.append(mod)
    first = layers[0] if layers else None
    last = layers[-1] if layers else None
    entries: List[_Entry] = []
    for name, p in model.named_parameters():
        mname, mod = owner[id(p)]
        local = name.rsplit(".", 1)[-1]
        if quantize_if is not None:
            q = quantize_if(name, p, mod)
            if not isinstance(q, bool):
                raise TypeError(f"Invalid quantize_if: it returned {q!r} for {name!r} (expected True or False)")
            reason = "quantize_if"
        elif not p.requires_grad:
            q, reason = False, "frozen (requires_grad=False)"
        elif isinstance(mod, keep_types):
            q, reason = False, f"{type(mod).__name__} (keep_types)"
        elif local == "bias":
            q, reason = False, "bias"
        elif p.dim() < min_ndim:
            q, reason = False, f"{p.dim()}-d parameter (min_ndim={min_ndim})"
        elif mod is first and not quantize_first:
            q, reason = False, "first layer"
        elif mod is last and not quantize_last:
            q, reason = False, "last layer"
        else:
            q, reason = True, "weight"
        entries.append(_Entry(name, p, mname, mod, q, reason))
    for pat in keep:
        hit = False
        for e in entries:
            if _matches(pat, e.name, e.module_name):
                hit = True
                if e.quantize:
                    e.quantize, e.reason = False, f"keep={pat if isinstance(pat, str) else pat.pattern!r}"
        if not hit:
            raise ValueError(f"Invalid keep: pattern {pat if isinstance(pat, str) else pat.pattern!r} matches no "
                             "parameter or module name")
    return entries


def param_groups(model: nn.Module, *, quantize_first: bool = False, quantize_last: bool = False,
                 keep_types: Optional[Sequence[type]] = None, keep: Optional[Any] = None,
                 quantize_if: Optional[Callable[[str, Tensor, nn.Module], bool]] = None,
                 min_ndim: int = 2, quantized_kwargs: Optional[Dict[str, Any]] = None,
                 fp_kwargs: Optional[Dict[str, Any]] = None, verbose: bool = False) -> List[Dict[str, Any]]:
    """Split a model's parameters into a quantized and a full-precision param group.

    Every parameter of ``model`` (``model.named_parameters()``, shared
    parameters once) goes to exactly one group. A parameter stays in full
    precision (``quantize=False``) when, checked in this order:

    1. it is frozen (``requires_grad=False``: an optimizer must not rewrite it),
    2. its module is a normalization layer (:data:`NORM_TYPES`) or one of
       ``keep_types``,
    3. it is a bias, or has fewer than ``min_ndim`` dimensions,
    4. its module is the first or last *layer* -- the first / last module in
       registration order (``model.named_modules()``) that has its own
       ``weight`` and is not a normalization layer -- unless
       ``quantize_first`` / ``quantize_last`` (a layer that is both needs
       both),
    5. it matches one of the ``keep`` patterns (applied last, so it also
       overrides ``quantize_if``).

    Everything else (the weight matrices and kernels of the hidden layers) is
    quantized. ``quantize_if(name, param, module) -> bool``, when given,
    replaces rules 1-4 and decides alone (``keep`` still applies).

    The groups are ``[quantized, full_precision]`` with an empty one left
    out. Each holds ``params``, ``quantize`` and ``param_names`` (the
    parameter names: PyTorch's own key for named param groups, a list of
    strings, so it survives ``torch.load(weights_only=True)`` in the
    optimizer's state dict), plus ``quantized_kwargs`` / ``fp_kwargs`` (any
    per-group option: ``lr``, ``weight_decay``, ``mu``, ``beta``, ...).
    PyTorch then requires every group added later with ``add_param_group``
    to carry ``param_names`` too.

    Args:
        model: the network.
        quantize_first: quantize the first layer too.
        quantize_last: quantize the last layer too.
        keep_types: module types kept in full precision, in addition to
            :data:`NORM_TYPES`.
        keep: fnmatch patterns (``"fc*.weight"``, ``"classifier"``: matched
            against the parameter name and its module's name) or compiled
            regular expressions (``re.compile(r"emb")``: searched in the
            parameter name) of parameters to keep. A pattern that matches
            nothing raises ``ValueError`` (a typo would otherwise pass
            silently).
        quantize_if: predicate ``(name, param, module) -> bool`` deciding
            instead of rules 1-4.
        min_ndim: parameters with fewer dimensions stay full precision
            (default 2: vectors and scalars).
        quantized_kwargs: extra options of the quantized group.
        fp_kwargs: extra options of the full-precision group (e.g.
            ``{"weight_decay": 1e-4}``).
        verbose: print :func:`describe_groups` of the result.

    Returns:
        A list of one or two param-group dicts.

    Raises:
        TypeError: for a non-module ``model`` or badly typed options.
        ValueError: for a model without parameters, a reserved key in the
            kwargs or a ``keep`` pattern that matches nothing.

    Example:
        >>> import torch, proxopt
        >>> from proxopt.groups import param_groups
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
        ...                           torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        >>> groups = param_groups(net, fp_kwargs={"weight_decay": 1e-4})
        >>> [(g["quantize"], g["param_names"]) for g in groups][0]
        (True, ['2.weight'])
        >>> opt = proxopt.optimizer("bc", groups, lr=1e-3)
        >>> sorted(set(net[2].weight.flatten().tolist()))
        [-1.0, 1.0]

    References:
        [BC] Courbariaux et al., NeurIPS 2015; [BNN] Hubara et al., NeurIPS
        2016 (first layer and normalization kept in full precision); [MD]
        Ajanthan et al., AISTATS 2021.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: {type(model).__name__} (expected a torch.nn.Module)")
    for key, val in (("quantize_first", quantize_first), ("quantize_last", quantize_last), ("verbose", verbose)):
        if not isinstance(val, bool):
            raise TypeError(f"Invalid {key}: {val!r} (expected True or False)")
    if keep_types is None:
        extra: Tuple[type, ...] = ()
    else:
        extra = (keep_types,) if isinstance(keep_types, type) else tuple(keep_types)
        if not all(isinstance(t, type) for t in extra):
            raise TypeError(f"Invalid keep_types: {keep_types!r} (expected module classes)")
    if isinstance(min_ndim, bool) or not isinstance(min_ndim, int) or min_ndim < 0:
        raise ValueError(f"Invalid min_ndim: {min_ndim!r} (expected a non-negative int)")
    if quantize_if is not None and not callable(quantize_if):
        raise TypeError(f"Invalid quantize_if: {quantize_if!r} (expected a callable (name, param, module) -> bool)")
    qkw = _check_kwargs("quantized_kwargs", quantized_kwargs)
    fkw = _check_kwargs("fp_kwargs", fp_kwargs)
    entries = _classify(model, quantize_first, quantize_last, NORM_TYPES + extra, _check_patterns(keep),
                        quantize_if, min_ndim)
    if not entries:
        raise ValueError(f"Invalid model: {type(model).__name__} has no parameters")
    groups: List[Dict[str, Any]] = []
    for flag, kw in ((True, qkw), (False, fkw)):
        chosen = [e for e in entries if e.quantize is flag]
        if chosen:
            g: Dict[str, Any] = {"params": [e.param for e in chosen], "param_names": [e.name for e in chosen],
                                 "quantize": flag}
            g.update(kw)
            groups.append(g)
    if verbose:
        print(_describe_entries(entries))
    return groups


def _describe_entries(entries: List[_Entry]) -> str:
    nq = sum(e.param.numel() for e in entries if e.quantize)
    nf = sum(e.param.numel() for e in entries if not e.quantize)
    total = max(nq + nf, 1)
    lines = [f"quantized:      {sum(e.quantize for e in entries):4d} tensors {nq:12,d} params "
             f"({100.0 * nq / total:5.1f}%)",
             f"full precision: {sum(not e.quantize for e in entries):4d} tensors {nf:12,d} params "
             f"({100.0 * nf / total:5.1f}%)"]
    width = max((len(e.name) for e in entries), default=4)
    for e in entries:
        lines.append(f"  {'Q ' if e.quantize else 'FP'} {e.name:<{width}} {str(tuple(e.param.shape)):<18} {e.reason}")
    return "\n".join(lines)


def describe_groups(groups: Iterable[Dict[str, Any]]) -> str:
    """A text table of param groups: per group the ``quantize`` flag, tensors, parameters and names.

    Works on the output of :func:`param_groups` and on any list of group
    dicts (names are shown when a group has ``param_names``).

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 2)
        >>> print(describe_groups([{"params": [lin.weight], "quantize": True, "param_names": ["weight"]}]))
        group 0  quantize=True    1 tensors            6 params  weight
    """
    lines = []
    for gi, g in enumerate(groups):
        params = g["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        n = sum(p.numel() for p in params)
        names = g.get("param_names")
        shown = "" if not names else ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
        lines.append(f"group {gi}  quantize={str(g.get('quantize', True)):<5} {len(params):3d} tensors {n:12,d} params"
                     f"  {shown}".rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------- levels
def group_levels(group: Dict[str, Any], optimizer: Any = None) -> Optional[Tuple[float, ...]]:
    """The level set ``Q`` that a param group's weights take after ``finalize()``, or None.

    None means full precision: a ``quantize=False`` group, or a forward
    quantizer without levels (``identity``). The levels are read from the
    group's primitive configuration: ``levels`` (ProxQuant), ``forward``
    (ProxConnect / ProxConnect++: the forward quantizer's levels),
    ``mirror_map`` (mirror descent), and binary for :class:`proxopt.optim.bop.Bop`
    (THEORY.md §7). A scale (``scale="tensor"`` / ``"channel"``) multiplies
    the levels (``w in alpha * Q``) and does not change their number.

    Args:
        group: a param group of a proxopt optimizer.
        optimizer: the optimizer (needed only for groups without level keys).

    Example:
        >>> group_levels({"quantize": True, "mirror_map": {"name": "shifted_tanh"}})
        (-1.0, 0.0, 1.0)
        >>> group_levels({"quantize": False, "forward": {"name": "sign"}}) is None
        True
    """
    if not group.get("quantize", True):
        return None
    if "levels" in group and group["levels"] is not None:
        return make_levels(group["levels"])
    if "forward" in group:
        return qz.get(group["forward"]).levels
    if "mirror_map" in group:
        return mm.get(group["mirror_map"]).levels
    from .optim.bop import Bop
    if isinstance(optimizer, Bop):
        return BINARY
    transform = getattr(optimizer, "_transform", None)
    if callable(transform):
        return getattr(transform(group), "levels", None)
    raise ValueError("Invalid group: cannot tell its level set (no 'levels', 'forward' or 'mirror_map' key); "
                     "pass the optimizer")


def group_bits(group: Dict[str, Any], optimizer: Any = None) -> Optional[int]:
    """Bits per weight of a group's packed format, ``ceil(log2 |Q|)``; None for full precision.

    1 for binary, 2 for ternary, k for ``2**k`` levels (THEORY.md §1).

    Example:
        >>> group_bits({"quantize": True, "levels": 3})
        3
    """
    q = group_levels(group, optimizer)
    if q is None:
        return None
    return max(1, math.ceil(math.log2(len(q))))
