"""The one latent-weight engine (ProxConnect++, THEORY.md §2).

.. code-block:: text

    w_t     = F_v(theta_t)                          # written into the model
    g_t     = grad_w f(w_t)                         # autograd leaves it in p.grad
    theta  <- BaseStep(theta_t, B'_v(theta_t) * g_t) # any torch optimizer

``v`` is the annealed strength (``mu`` for the ProxConnect family, ``beta``
for mirror descent). The base optimizer never sees ``w``: its parameters are
the latents. Groups with ``quantize=False`` hand their parameters to the base
optimizer directly.

:class:`WrappedOptimizer` holds what every proxopt optimizer shares (a base
optimizer built from the user's keyword arguments, hyper-parameter sync for
LR schedulers, state-dict plumbing, input checks). :class:`LatentOptimizer`
adds the latents. Both are real :class:`torch.optim.Optimizer` subclasses.

References:
    [PC++] Lu, Yu, Li, Partovi Nia. Understanding Neural Network Binarization
    with Forward and Backward Proximal Quantizers. NeurIPS 2023.
    [PC] Dockhorn et al. Demystifying and Generalizing BinaryConnect.
    NeurIPS 2021.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple, Type

import torch
from torch import Tensor
from torch.optim import Optimizer

from .transforms import PLAIN, Transform

__all__ = ["WrappedOptimizer", "LatentOptimizer", "check_value", "scale_of", "fused_default"]

SCALES = (None, "tensor", "channel")


def scale_of(theta: Tensor, mode: str) -> Tensor:
    """The scale ``alpha = mean |theta|`` per tensor, or per output channel (dim 0).

    With a scale the model holds ``w = alpha * F(theta)`` and the hard model
    ``alpha * hard(theta)`` (THEORY.md §1, XNOR-Net-style scaling). The
    backward treats ``alpha`` as a positive constant and omits it:
    ``grad_theta = B'(theta) * g`` (adaptive base optimizers are invariant to
    it; with SGD it rescales the step). 0-d and 1-d tensors use the
    per-tensor scale.
    """
    if theta.numel() == 0:
        return theta.new_ones(())
    if mode == "channel" and theta.dim() >= 2:
        flat = theta.reshape(theta.shape[0], -1)
        alpha = torch.linalg.vector_norm(flat, 1, dim=1) / flat.shape[1]
        return alpha.view((-1,) + (1,) * (theta.dim() - 1))
    return torch.linalg.vector_norm(theta, 1) / theta.numel()


def _max_strength(dtype: torch.dtype) -> float:
    """The largest ``mu``/``beta`` for latents of ``dtype``: 2**-8 times its overflow threshold (``2**128`` for
    float32), headroom for the kernels' scaled copies of it (``2 beta``, ``4 mu``, ...); ``2**120`` for float32."""
    return 2.0 ** (math.floor(math.log2(torch.finfo(dtype).max)) + 1 - 8)


_MAX_STRENGTH_F32 = _max_strength(torch.float32)


#: Group keys that belong to proxopt, never passed to the base optimizer.
COMMON_KEYS = ("quantize",)


def check_value(name: str, value: Any, *, positive: bool = True) -> float:
    """Validate an annealed strength (``mu``/``beta``): a finite positive real."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        else:
            raise TypeError(f"Invalid {name}: {value!r} (expected a positive float)")
    value = float(value)
    if not math.isfinite(value) or value < 0.0 or (positive and value == 0.0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"Invalid {name}: {value} (expected a finite {kind} float)")
    return value


NONFINITE = ("raise", "skip")


def _check_nonfinite(value: Any) -> None:
    if value not in NONFINITE:
        raise ValueError(f"Invalid nonfinite: {value!r} (expected 'raise' or 'skip')")


def check_lr(value: Any, read_tensor: bool = True) -> None:
    """Validate a learning rate: a finite non-negative real (or a 0-d tensor holding one).

    ``read_tensor=False`` checks a tensor's type and size only, without
    reading its value (which would wait for the device on every step).
    """
    if isinstance(value, Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise TypeError(f"Invalid lr: {value!r} (expected a finite non-negative float)")
        if not read_tensor:
            return
        v = float(value.detach().reshape(()).item())
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Invalid lr: {value!r} (expected a finite non-negative float)")
    else:
        v = float(value)
    if not math.isfinite(v) or v < 0.0:
        raise ValueError(f"Invalid learning rate: {v} (expected a finite non-negative float)")


#: Base optimizers whose ``fused=True`` implementation proxopt selects when the user chose none. (Not SGD:
#: its fused momentum path fails when only some parameters have a momentum buffer yet, as when a
#: parameter gets its first gradient after the first step.)
FUSED_BASES: Tuple[Type[Optimizer], ...] = (torch.optim.Adam, torch.optim.AdamW)


def _fused_devices() -> Tuple[str, ...]:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        return tuple(_get_fused_kernels_supported_devices())
    except (ImportError, AttributeError):  # pragma: no cover - older torch
        return ("cuda",)


def fused_default(base: Type[Optimizer], tensors: List[Tensor], settings: Dict[str, Any]) -> bool:
    """Whether proxopt runs ``base`` with ``fused=True`` on ``tensors`` (the latents of one group).

    The fused kernel does the whole update of a tensor (Adam: ``m``, ``v``,
    the bias corrections and ``theta -= lr m_hat / (sqrt(v_hat) + eps)``) in
    one pass over memory instead of one pass per operation, with the same
    formulas (Adam's results differ from the for-loop implementation by
    rounding, a few ulp). It is chosen when ``base`` is exactly
    ``torch.optim.Adam`` or ``AdamW``, the user set neither
    ``fused`` nor ``foreach`` (``settings``: the group's and the
    constructor's keyword arguments), ``differentiable`` is off, and every
    tensor is a plain contiguous floating tensor on a device with fused
    kernels. Pass ``fused=False`` (or ``foreach=...``) to keep torch's
    default. The fused kernels also assume that each gradient has its
    tensor's layout; a step whose gradients do not (a hand-assigned gradient
    of another memory format, say) runs that group with the default
    implementation (:meth:`WrappedOptimizer._base_step`). A state dict carries
    the choice: loading one restores its groups' ``fused``, as in torch.

    References:
        Kingma & Ba, Adam (ICLR 2015); Loshchilov & Hutter, AdamW (ICLR 2019);
        the update of theta is THEORY.md §2's BaseStep.
    """
    if base not in FUSED_BASES or settings.get("differentiable", False):
        return False
    if settings.get("fused") is not None or settings.get("foreach") is not None:
        return False
    devices = _fused_devices()
    return all(type(t) in PLAIN and t.layout == torch.strided and t.is_floating_point()
               and t.device.type in devices and t.is_contiguous() for t in tensors)


def _dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill its memory exactly once in some order of its dimensions (a permuted layout)."""
    expected = 1
    for i in sorted(range(t.dim()), key=t.stride):
        if t.size(i) != 1 and t.stride(i) != expected:
            return False
        expected *= t.size(i)
    return True


def _relayout_entry(entry: Dict[str, Any], t: Tensor, tr: Transform, saving: bool) -> Dict[str, Any]:
    """One base-state entry of the base tensor ``t`` (a :meth:`Transform.to_base` view) in the latent's layout.

    Saving: tensors of ``t``'s shape become ``tr.from_base(s)``; loading:
    tensors of the latent's shape become the contiguous ``tr.to_base(s)``.
    """
    shape = t.shape if saving else tr.from_base(t).shape
    return {k: (v if not (isinstance(v, Tensor) and v.dim() > 0 and v.shape == shape)
                else tr.from_base(v) if saving else tr.to_base(v).contiguous())
            for k, v in entry.items()}


def _check_param(p: Any, where: str) -> None:
    if not isinstance(p, Tensor):
        raise TypeError(f"Invalid parameter in {where}: expected a torch.Tensor, got {type(p).__name__}")
    if not p.is_floating_point() or p.is_complex():
        raise TypeError(f"Invalid parameter in {where}: dtype {p.dtype} (proxopt needs real floating tensors)")
    if not p.is_leaf:
        raise ValueError(f"Invalid parameter in {where}: it is not a leaf tensor")


class WrappedOptimizer(Optimizer):
    """An optimizer whose numerical update is a wrapped ``base`` optimizer.

    The outer param groups hold every hyper-parameter (proxopt's and the
    base's); before each step the base optimizer's groups are synced from
    them, so ``torch.optim.lr_scheduler`` schedulers work unchanged.

    ``torch.optim.Adam`` and ``AdamW`` bases run torch's fused implementation
    unless the user picks one (:func:`fused_default`).

    Subclasses pass their own group keys and defaults as ``own`` and implement :meth:`_base_params`
    (the tensors the base optimizer updates for a group),
    :meth:`_normalize_group` and the step.
    """

    #: the annealed key (``"mu"`` or ``"beta"``) or None.
    anneal_key: Optional[str] = None

    def __init__(self, params: Any, base: Type[Optimizer], own: Dict[str, Any], base_kwargs: Dict[str, Any]) -> None:
        own = dict(own)
        own["nonfinite"] = base_kwargs.pop("nonfinite", "raise")
        _check_nonfinite(own["nonfinite"])
        if "lr" in base_kwargs:
            check_lr(base_kwargs["lr"])
        self._own: Tuple[str, ...] = tuple(own)
        if not (isinstance(base, type) and issubclass(base, Optimizer)):
            raise TypeError(f"Invalid base: {base!r} (expected a torch.optim.Optimizer subclass, e.g. torch.optim.Adam)")
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            f"but got {torch.typename(params)}")
        self._base_cls = base
        self._base_kwargs = dict(base_kwargs)
        self._workspace: Dict[Tuple[torch.dtype, torch.device], Tensor] = {}
        #: each group's ``quantize`` when it was added (it decides what the base optimizer holds)
        self._built_quantize: List[bool] = []
        self._building = True
        super().__init__(params, own)
        self._building = False
        inner_groups = [self._inner_group(g) for g in self.param_groups]
        self.base_optimizer: Optimizer = base(inner_groups, **self._base_kwargs)
        for key, val in self.base_optimizer.defaults.items():
            self.defaults.setdefault(key, val)
        for g, ig in zip(self.param_groups, self.base_optimizer.param_groups):
            for key, val in ig.items():
                if key != "params":
                    g.setdefault(key, val)
        self._after_init()

    # ------------------------------------------------------------------ groups
    def _own_keys(self) -> Tuple[str, ...]:
        return self._own

    def _normalize_group(self, group: Dict[str, Any]) -> None:
        """Validate and canonicalize proxopt's keys of ``group`` (in place)."""
        q = group.get("quantize", True)
        if not isinstance(q, bool):
            raise TypeError(f"Invalid quantize: {q!r} (expected True or False)")
        _check_nonfinite(group["nonfinite"])
        if "lr" in group:
            check_lr(group["lr"])

    def _check_step_values(self) -> None:
        """Validate, before a step changes anything, the group values that users and schedulers change between steps.

        Here ``lr`` (a tensor ``lr`` by type and size only), ``nonfinite``, and
        ``quantize`` (fixed when the group was added) of every group;
        subclasses add their own (the annealed ``mu``/``beta``).
        A bad value raises ``ValueError``/``TypeError`` with nothing changed,
        instead of a partial update or NaN weights.
        """
        self._check_quantize()
        for g in self.param_groups:
            _check_nonfinite(g["nonfinite"])
            if "lr" in g:
                check_lr(g["lr"], read_tensor=False)

    def _check_quantize(self) -> None:
        """``ValueError`` if a group's ``quantize`` changed since the group was added (what the base optimizer
        holds for it, latents or the weights, depends on it); every method that walks the quantized groups
        checks it before changing anything."""
        for gi, (g, q) in enumerate(zip(self.param_groups, self._built_quantize)):
            if g["quantize"] != q:
                raise ValueError(f"Invalid quantize: {g['quantize']!r} in group {gi}, which was added with "
                                 f"quantize={q} (it cannot change afterwards: add a new param group instead)")

    def _base_params(self, group: Dict[str, Any]) -> List[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _inner_group(self, group: Dict[str, Any]) -> Dict[str, Any]:
        own = set(self._own_keys())
        inner = {k: v for k, v in group.items() if k not in own and k != "params"}
        inner["params"] = self._base_params(group)
        if fused_default(self._base_cls, inner["params"], {**self._base_kwargs, **inner}):
            inner["fused"] = group["fused"] = True
        return inner

    def _after_init(self) -> None:
        """Hook run once the base optimizer exists."""

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group (as :meth:`torch.optim.Optimizer.add_param_group`) to both optimizers."""
        if not isinstance(param_group, dict):
            raise TypeError(f"Invalid param_group: {type(param_group).__name__} (expected a dict)")
        params = param_group["params"]
        plist = [params] if isinstance(params, Tensor) else list(params)
        for i, p in enumerate(plist):
            _check_param(p, f"param group {len(self.param_groups)}, parameter {i}")
        group = dict(param_group)
        group["params"] = plist
        for key in self._own:
            group.setdefault(key, self.defaults[key])
        self._normalize_group(group)
        super().add_param_group(group)
        if self._building:
            self._built_quantize.append(group["quantize"])
        else:
            g = self.param_groups[-1]
            try:
                for key, val in self.base_optimizer.defaults.items():
                    g.setdefault(key, val)
                self._init_group(g)
                self.base_optimizer.add_param_group(self._inner_group(g))
            except BaseException:  # a rejected group leaves the optimizer as it was
                self.param_groups.pop()
                for p in g["params"]:
                    self.state.pop(p, None)
                if len(self.base_optimizer.param_groups) > len(self.param_groups):
                    self.base_optimizer.param_groups.pop()
                raise
            self._built_quantize.append(g["quantize"])
            self._group_added(g)

    def _init_group(self, group: Dict[str, Any]) -> None:
        """Create per-parameter state for a new group (latents)."""

    def _group_added(self, group: Dict[str, Any]) -> None:
        """Hook after a group was added to the base optimizer."""

    def _sync(self) -> None:
        own = set(self._own_keys())
        for g, ig in zip(self.param_groups, self.base_optimizer.param_groups):
            for key in ig:
                if key != "params" and key not in own and key in g:
                    ig[key] = g[key]

    def _base_step(self) -> None:
        """``base_optimizer.step()``, with fused groups whose layouts do not match run unfused this once.

        torch's fused Adam walks each tensor, its gradient and its moments as
        one flat array, so they must share one dense layout: on a CPU a
        gradient with other strides gives wrong updates, on CUDA an error
        after the step counter moved. :func:`fused_default` only picks fused
        for contiguous tensors; a group holding a tensor or gradient that is
        not contiguous steps with torch's default implementation instead
        (same formulas, compatible state), and is fused again afterwards.
        """
        off = []
        for ig in self.base_optimizer.param_groups:
            if ig.get("fused") and not all(t.is_contiguous() and (t.grad is None or t.grad.is_contiguous())
                                           for t in ig["params"]):
                ig["fused"] = False
                off.append(ig)
        try:
            self.base_optimizer.step()
        finally:
            for ig in off:
                ig["fused"] = True

    def _check_grads(self) -> bool:
        """Validate gradients before anything changes; return False when the step must be skipped.

        Sparse gradients raise ``ValueError``. Non-finite gradients (inf/NaN)
        raise ``ValueError`` naming the parameter when the group has
        ``nonfinite="raise"`` (the default), or skip the whole step with a
        ``RuntimeWarning`` when ``nonfinite="skip"``: parameters, latents and
        base state then stay exactly as they were.

        Cost: one vectorized ``sum`` per gradient and one host sync per step
        (one per gradient dtype and device when they are mixed).
        inf and NaN propagate through a sum, so a finite total proves the
        gradient finite; a non-finite total (which a sum of huge finite values
        can also give) is confirmed exactly with ``isfinite`` on every gradient
        before acting.
        """
        grads: List[Tensor] = []
        where: List[Tuple[int, int, str]] = []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise ValueError(f"Invalid gradient: parameter {pi} of group {gi} has a sparse gradient, "
                                     "which proxopt does not support")
                if g.numel():
                    grads.append(g)
                    where.append((gi, pi, group["nonfinite"]))
        if not grads:
            return True
        by_kind: Dict[Tuple[torch.dtype, torch.device], List[Tensor]] = {}
        for g in grads:
            by_kind.setdefault((g.dtype, g.device), []).append(g)
        flags = [torch.stack([g.sum() for g in gs]).isfinite().all() for gs in by_kind.values()]
        if all(bool(f) for f in flags):
            return True
        finite = torch.tensor([bool(torch.isfinite(g).all()) for g in grads])  # rare: confirm exactly
        if bool(finite.all()):
            return True
        bad_flags = (~finite).tolist()
        raising = [i for i, b in enumerate(bad_flags) if b and where[i][2] == "raise"]
        bad = raising[0] if raising else bad_flags.index(True)
        gi, pi, _ = where[bad]
        msg = (f"non-finite gradient (inf or NaN) in parameter {pi} of group {gi} "
               f"(shape {tuple(grads[bad].shape)})")
        if raising:
            raise ValueError(f"Invalid gradient: {msg}; nothing was changed. Use a torch.amp.GradScaler, or "
                             "nonfinite='skip' to skip such steps with a warning")
        warnings.warn(f"proxopt: skipped a step because of a {msg}", RuntimeWarning, stacklevel=3)
        return False

    def _scratch(self, theta: Tensor) -> Tensor:
        """A workspace view of ``theta``'s shape, reused across parameters and steps (largest latent)."""
        key = (theta.dtype, theta.device)
        vkey = (key, theta.shape)
        view = self._workspace.get(vkey)  # type: ignore[call-overload]
        if view is not None:
            return view
        buf = self._workspace.get(key)
        if buf is None or buf.numel() < theta.numel():
            buf = torch.empty(theta.numel(), dtype=theta.dtype, device=theta.device)
            for k in [k for k in self._workspace if isinstance(k[0], tuple) and k[0] == key]:
                del self._workspace[k]  # views of the smaller buffer
            self._workspace[key] = buf
        view = buf[: theta.numel()].view(theta.shape)
        self._workspace[vkey] = view  # type: ignore[index]
        return view

    def _grad_buffer(self, p: Tensor, theta: Tensor) -> Tensor:
        """A persistent gradient buffer of ``theta``'s shape for a latent whose shape differs from ``p``'s.

        The softmax dual ``(..., d)`` gets its gradient ``g q`` written here
        instead of into a new tensor every step; unlike the shared workspace
        it is one buffer per parameter, because all latent gradients live at
        once during the base step. It costs the memory the per-step gradient
        tensor took (kept between steps) and is never saved.
        """
        key = ("grad", p)
        buf = self._workspace.get(key)  # type: ignore[call-overload]
        if buf is None or buf.shape != theta.shape or buf.dtype != theta.dtype or buf.device != theta.device \
                or type(buf) is not type(theta) or (type(theta) in PLAIN and buf.stride() != theta.stride()):
            if type(theta) in PLAIN and _dense(theta):  # the latent's own layout (level-major for the softmax dual)
                buf = torch.empty_strided(theta.shape, theta.stride(), dtype=theta.dtype, device=theta.device)
            else:
                buf = torch.empty_like(theta, memory_format=torch.contiguous_format)
            self._workspace[key] = buf  # type: ignore[index]
        return buf

    # ------------------------------------------------------------- state dict
    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_transform_cache", None)
        state.pop("_workspace", None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_transform_cache", {})
        self.__dict__.setdefault("_workspace", {})
        self.__dict__.setdefault("_built_quantize", [g["quantize"] for g in self.param_groups])
        super().__setstate__({"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups})

    def _identity(self) -> Dict[str, Any]:
        return {"optimizer": type(self).__name__, "base": self._base_cls.__name__}

    def state_dict(self) -> Dict[str, Any]:
        """Outer state (latents, per-parameter extras), groups, the base state and identity."""
        self._check_quantize()
        sd = super().state_dict()
        # torch's state dict holds the live per-parameter dicts: copy them before adding to them
        sd["state"] = {k: dict(v) for k, v in sd["state"].items()}
        sd["base"] = self._relayout_state(self.base_optimizer.state_dict(), saving=True)
        sd["proxopt"] = self._identity()
        # The base optimizer's groups mirror the outer ones, each with the same
        # parameters one for one or none at all (Bop's quantized groups), so its
        # per-parameter state can also travel inside the outer per-parameter entry:
        # tools that re-index optimizer state per parameter (ZeroRedundancyOptimizer
        # consolidation) then keep it.
        outer_of = {}
        for og, bg in zip(sd["param_groups"], sd["base"]["param_groups"]):
            if len(og["params"]) == len(bg["params"]):
                outer_of.update(zip(bg["params"], og["params"]))
        for idx, st in sd["base"]["state"].items():
            if idx in outer_of:
                sd["state"].setdefault(outer_of[idx], {})["base_state"] = st
        return sd

    def _relayouts(self) -> List[Optional[Transform]]:
        """Per base-optimizer tensor (flat order): the transform it is a :meth:`Transform.to_base` view for, or None.

        None where the base optimizer steps the latent (or the parameter)
        itself; a transform where it steps another view of the latent (the
        level-major softmax dual), whose per-tensor state (``exp_avg``,
        ``momentum_buffer``, ...) is saved in the latent's shape.
        """
        return [None] * sum(len(g["params"]) for g in self.base_optimizer.param_groups)

    def _relayout_state(self, base: Dict[str, Any], saving: bool) -> Dict[str, Any]:
        """The base optimizer's state dict with per-tensor state moved to the latents' layout (or back).

        Saving: a state tensor of its base tensor's shape becomes the
        latent-shaped view ``from_base(s)``; loading: a saved state tensor of
        the latent's shape becomes the contiguous ``to_base(s)`` (fused
        kernels need the moments in the base tensor's layout). Other entries
        are left as they are. The live state is never modified.
        """
        trs = self._relayouts()
        if not any(tr is not None for tr in trs):
            return base
        mine = [t for g in self.base_optimizer.param_groups for t in g["params"]]
        ids = [i for g in base.get("param_groups", ()) for i in g["params"]]
        state = dict(base.get("state", {}))
        for i, t, tr in zip(ids, mine, trs):
            entry = state.get(i)
            if tr is not None and isinstance(entry, dict):
                state[i] = _relayout_entry(entry, t, tr, saving)
        return dict(base, state=state)

    def _validate_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict or "state" not in state_dict:
            raise ValueError(f"Invalid state_dict: expected the dict returned by {type(self).__name__}.state_dict()")
        ident = state_dict.get("proxopt")
        if ident != self._identity():
            raise ValueError(f"Invalid state_dict: it was saved by {ident!r}, this optimizer is {self._identity()!r}")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"Invalid state_dict: it has {len(groups)} param groups, the optimizer has "
                             f"{len(self.param_groups)}")
        for gi, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"Invalid state_dict: group {gi} has {len(saved['params'])} parameters, "
                                 f"the optimizer's has {len(group['params'])}")
            for key in self._structural_keys():
                if saved.get(key) != group.get(key):
                    raise ValueError(f"Invalid state_dict: group {gi} was saved with {key}={saved.get(key)!r}, "
                                     f"the optimizer has {key}={group.get(key)!r}")
        base = state_dict.get("base")
        if not isinstance(base, dict) or len(base.get("param_groups", ())) != len(self.param_groups):
            raise ValueError("Invalid state_dict: missing or mismatched base optimizer state")
        mine = [t for g in self.base_optimizer.param_groups for t in g["params"]]
        ids = [i for g in base["param_groups"] for i in g["params"]]
        if len(ids) != len(mine):
            raise ValueError("Invalid state_dict: the base optimizer state has another number of parameters")
        for i, t, tr in zip(ids, mine, self._relayouts()):
            shape = t.shape if tr is None else tr.from_base(t).shape  # saved in the latent's shape
            for key, val in base.get("state", {}).get(i, {}).items():
                if isinstance(val, Tensor) and val.dim() > 0 and val.shape != shape:
                    raise ValueError(f"Invalid state_dict: base optimizer state {key!r} of parameter {i} has shape "
                                     f"{tuple(val.shape)}, expected {tuple(shape)}")

    def _structural_keys(self) -> Tuple[str, ...]:
        """Group keys that must match for a state dict to load (the configuration)."""
        return ("quantize",)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state dict saved by the same optimizer configuration.

        Raises ``ValueError`` (and changes nothing) for one saved by another
        optimizer, base optimizer, group layout, quantizer or latent shape.
        """
        self._validate_state_dict(state_dict)
        outer = {k: v for k, v in state_dict.items() if k not in ("base", "proxopt")}
        outer["state"] = {k: {kk: vv for kk, vv in v.items() if kk != "base_state"}
                          for k, v in outer["state"].items()}
        self._load(outer, self._relayout_state(state_dict["base"], saving=False))

    def _load(self, outer: Dict[str, Any], base: Dict[str, Any]) -> None:
        super().load_state_dict(outer)
        self.base_optimizer.load_state_dict(base)
        self._sync()

    # -------------------------------------------------------------- utilities
    def _quantized_groups(self) -> Iterator[Tuple[int, Dict[str, Any]]]:
        """``(index, group)`` of each quantized group, after :meth:`_check_quantize` (so every walk over
        them refuses a ``quantize`` changed since the group was added, before it changes anything)."""
        self._check_quantize()
        for gi, g in enumerate(self.param_groups):
            if g["quantize"]:
                yield gi, g

    def finalize(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _write_hard(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @contextmanager
    def hard(self) -> Iterator["WrappedOptimizer"]:
        """Temporarily write exactly quantized weights into the model.

        Inside the block every quantized parameter holds its hard level
        (``sign`` with ``sign(0) = +1``, nearest level, argmax); on exit the
        training weights are restored bit for bit.

        Example:
            >>> import proxopt, torch
            >>> lin = torch.nn.Linear(3, 2)
            >>> opt = proxopt.optimizer("md-tanh-s", lin.parameters(), lr=0.1)
            >>> with opt.hard():
            ...     bool(lin.weight.abs().eq(1).all())
            True
        """
        saved = [(p, p.detach().clone()) for _, g in self._quantized_groups() for p in g["params"]]
        try:
            self._write_hard()
            yield self
        finally:
            with torch.no_grad():
                for p, val in saved:
                    p.copy_(val)


class LatentOptimizer(WrappedOptimizer):
    """The latent-weight engine: ``w = F(theta)`` in the model, ``theta`` in the state.

    Subclasses provide :meth:`_transform` (the (F, B) pair of a group) and
    their group keys. See the module docstring for the update.
    """

    anneal_key = "mu"

    def __init__(self, params: Any, base: Type[Optimizer], own: Dict[str, Any], base_kwargs: Dict[str, Any]) -> None:
        self._transform_cache: Dict[str, Transform] = {}
        self._projected: Dict[int, float] = {}
        #: group index -> indices of its parameters that hold hard levels (``finalize()``), until re-projected
        self._hard: Dict[int, Set[int]] = {}
        self._flips: Optional[Dict[int, Tuple[int, int]]] = None
        own = dict(own)
        own["scale"] = base_kwargs.pop("scale", None)
        super().__init__(params, base, own, base_kwargs)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_hard", {})  # pickled before the hard-level marks existed
        self.__dict__.setdefault("_flips", None)

    # ----------------------------------------------------------------- groups
    def _transform_key(self, group: Dict[str, Any]) -> Tuple[Any, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_transform(self, group: Dict[str, Any]) -> Transform:  # pragma: no cover - abstract
        raise NotImplementedError

    def _transform(self, group: Dict[str, Any]) -> Transform:
        key = repr(self._transform_key(group))
        tr = self._transform_cache.get(key)
        if tr is None:
            from .transforms import ShardLocal
            tr = ShardLocal(self._build_transform(group))
            self._transform_cache[key] = tr
        return tr

    def _normalize_group(self, group: Dict[str, Any]) -> None:
        super()._normalize_group(group)
        k = self.anneal_key
        group[k] = check_value(k, group[k])  # type: ignore[index]
        if group["scale"] not in SCALES:
            raise ValueError(f"Invalid scale: {group['scale']!r} (expected None, 'tensor' or 'channel')")

    def _check_step_values(self) -> None:
        """:meth:`WrappedOptimizer._check_step_values`, and each quantized group's ``mu``/``beta``.

        A one-element tensor value is replaced by its float (the quantizer kernels take Python floats).
        A value beyond the latents' dtype's largest value / 2**8 (``2**120``
        for float32) is refused: the kernels multiply by it, and by small
        multiples of it, in that dtype.
        """
        super()._check_step_values()
        k = self.anneal_key
        for _, g in self._quantized_groups():
            v = g[k] = check_value(k, g[k])  # type: ignore[index]
            if v > _MAX_STRENGTH_F32:  # rare: then the limit of each latent's dtype
                limit = min((_max_strength(self.state[p]["latent"].dtype) for p in g["params"]), default=math.inf)
                if v > limit:
                    raise ValueError(f"Invalid {k}: {v} (beyond {limit:g}, the largest value the group's "
                                     "latents take; cap the schedule with max_value)")

    def _check_scalable(self, group: Dict[str, Any]) -> None:
        if group["scale"] is not None and group["quantize"] and not self._transform(group).scalable:
            raise ValueError(f"Invalid scale: {group['scale']!r} is not defined for a multi-level softmax dual "
                             "(scale the levels instead)")

    def _structural_keys(self) -> Tuple[str, ...]:
        return ("quantize",) + tuple(k for k in self._own if k not in ("quantize", "nonfinite", self.anneal_key))

    def _own_keys(self) -> Tuple[str, ...]:
        return self._own + (self._encoded_key,)

    @property
    def _encoded_key(self) -> str:
        """Group key of the primal form: the ``v`` its latents are encoded at (``"beta_encoded"``)."""
        return f"{self.anneal_key}_encoded"

    def _value(self, tr: Transform, group: Dict[str, Any]) -> float:
        """The ``v`` of ``p = F_v(theta)``: the group's, or the primal form's encoding (:meth:`_refresh`)."""
        if tr.primal:
            return group.get(self._encoded_key, group[self.anneal_key])  # type: ignore[index]
        return group[self.anneal_key]  # type: ignore[index]

    def _init_group(self, group: Dict[str, Any]) -> None:
        if not group["quantize"]:
            return
        self._check_scalable(group)
        tr = self._transform(group)
        new = [False] * len(group["params"])
        for i, p in enumerate(group["params"]):
            st = self.state[p]
            if "latent" not in st:
                st["latent"] = tr.init_latent(p)
                new[i] = True
        if any(new):
            if tr.primal and all(new):
                group[self._encoded_key] = group[self.anneal_key]  # type: ignore[index]
            self._encode(tr, group, new)

    @torch.no_grad()
    def _encode(self, tr: Transform, group: Dict[str, Any], only: Optional[List[bool]] = None) -> None:
        """Primal form: ``theta <- P_v^{-1}(P_v(theta))`` in place, the dual of the primal point ``w``.

        The primal form keeps ``w`` (THEORY.md §5); its latent is the dual
        ``P_v^{-1}(w)`` recomputed after every base step (and at the start),
        which in floating point is what the saturation of ``P_v`` does to
        ``theta``: a clamp to ``±atanh(m)/v`` for tanh; for softmax, whose
        duals of a point differ by a common shift, the one with largest
        entry 0, floored, or ``log(u)/v`` where the base update depends on
        the shift (:meth:`~proxopt.mirror_maps.Softmax.renormalize_`,
        :class:`~proxopt.MirrorDescent`).
        The stable form keeps ``theta`` as it is.
        """
        if not tr.primal:
            return
        v = self._value(tr, group)
        for i, p in enumerate(group["params"]):
            if only is None or only[i]:
                theta = self.state[p]["latent"]
                tr.reencode_(theta, v, v, self._scratch(theta) if tr.needs_scratch else None)

    def _base_params(self, group: Dict[str, Any]) -> List[Tensor]:
        if not group["quantize"]:
            return list(group["params"])
        self._init_group(group)
        tr = self._transform(group)
        return [tr.to_base(self.state[p]["latent"]) for p in group["params"]]

    def _relayouts(self) -> List[Optional[Transform]]:
        out: List[Optional[Transform]] = []
        for group in self.param_groups:
            tr = self._transform(group) if group["quantize"] else None
            out.extend([tr if tr is not None and tr.relayout else None] * len(group["params"]))
        return out

    def _after_init(self) -> None:
        self._project_all()

    def _group_added(self, group: Dict[str, Any]) -> None:
        gi = len(self.param_groups) - 1  # only the new group: the others keep what they hold (finalize()'s levels)
        if group["quantize"]:
            self._project(gi, group)

    # ------------------------------------------------------------- projection
    def latents(self, group: Dict[str, Any]) -> List[Tensor]:
        """The latents ``theta`` of a quantized group, in parameter order.

        ``p = F_v(theta)`` with the group's ``v``; for the primal
        mirror-descent form, with the ``v`` they are encoded at
        (``group["beta_encoded"]``, which lags ``beta`` from a change of
        ``beta`` to the next step).
        """
        return [self.state[p]["latent"] for p in group["params"]]

    @torch.no_grad()
    def _write(self, tr: Transform, group: Dict[str, Any], p: Tensor, theta: Tensor, v: Optional[float],
               encode: bool = False) -> None:
        """``p = alpha * F_v(theta)`` (or the hard levels when ``v`` is None), in place.

        With ``encode`` (the primal form after a base step) ``theta`` is first
        re-encoded at ``v`` as :meth:`_encode` does, in the same pass as the
        write where the transform has one (:meth:`Transform.reencode_project_into`).
        """
        scratch = self._scratch(theta) if tr.needs_scratch and v is not None else None
        same = p.dtype == theta.dtype
        out: Optional[Tensor] = None
        fused = encode and v is not None and same and tr.reencode_project_into(theta, v, p.data, scratch)
        if encode and v is not None and not fused:
            tr.reencode_(theta, v, v, scratch)
        if fused:
            out = p.data
        elif v is None:
            w = tr.hard(theta)
            out = p.copy_(w) if same else None
        elif same:
            out = tr.project_into(theta, v, p.data, scratch)
        else:
            w = tr.forward(theta, v)
        if group["scale"] is not None:
            alpha = scale_of(theta, group["scale"])
            if out is not None:
                out.mul_(alpha)
            else:
                w = w * alpha
        if out is None:
            p.copy_(w)

    @torch.no_grad()
    def _project(self, gi: int, group: Dict[str, Any], only: Optional[List[bool]] = None,
                 encode: Optional[List[bool]] = None) -> None:
        """Write ``p = F_v(theta)`` for the group's parameters (those flagged in ``only``); the primal form first
        re-encodes the latents flagged in ``encode`` (:meth:`_encode`; a subset of those written), each with its
        write."""
        tr = self._transform(group)
        v = self._value(tr, group)
        hard = self._hard.get(gi) if self._hard else None
        encode = encode if tr.primal else None
        self._projected.pop(gi, None)  # an interrupted projection is redone (_refresh, _undo_step)
        for i, p in enumerate(group["params"]):
            if only is not None and not only[i]:
                continue
            self._write(tr, group, p, self.state[p]["latent"], v, encode is not None and encode[i])
            if hard:
                hard.discard(i)
        self._projected[gi] = v

    @torch.no_grad()
    def _refresh(self, gi: int, group: Dict[str, Any], tr: Optional[Transform] = None) -> None:
        """Restore the invariant ``p = F_v(theta)`` after ``v`` changed.

        The stable form re-projects the kept latents. The primal form keeps
        the primal point ``w``, so a change of ``v`` changes nothing in the
        model: its latents stay encoded at the ``v`` they were
        (``group["beta_encoded"]``, which the model's ``w = P(theta)`` is
        computed with) until the next step re-encodes them
        (:meth:`_reencode_pending`). Keeping ``w`` bit for bit, rather than
        re-projecting the re-encoded latents (equal up to rounding), saves a
        projection per change of ``v`` and lets a state dict saved at any
        point reproduce the model's weights exactly.
        """
        v = group[self.anneal_key]
        old = self._projected.get(gi)
        if old == v:
            return
        if old is not None and (tr or self._transform(group)).primal:
            return
        self._project(gi, group)

    @torch.no_grad()
    def _reencode_pending(self, tr: Transform, group: Dict[str, Any]) -> Optional[float]:
        """Primal form, before a step: ``theta <- P_v^{-1}(P_e(theta))`` when ``v`` changed since the encoding ``e``.

        A multiply by ``e / v`` for the tanh and softmax maps (whose latents
        are re-encoded at ``e`` after every step), every latent of the group,
        so the base step runs on the dual of the kept ``w`` at the current
        ``v`` (THEORY.md §5: raising ``beta`` enlarges the effective step).
        Returns ``e`` if it re-encoded, else None. A step that fails
        multiplies back (:meth:`_undo_step`): the latents then equal what they
        were up to rounding; keeping a copy to restore them bit for bit would
        cost a pass and the latents' memory on every change of ``v``. A
        multiply cannot fail part-way, short of an interrupt. Transforms that
        re-encode before every step (``encodes_before_step``: the softmax
        dual ``log(u)/beta``) do it here, at every step, with the change of
        ``v``; a failed step leaves them re-encoded (the same point up to
        rounding) and multiplies back only the change of ``v``.
        """
        key = self._encoded_key
        old, v = group.get(key), group[self.anneal_key]  # type: ignore[index]
        if not tr.primal or old is None or (old == v and not tr.encodes_before_step):
            return None
        for p in group["params"]:
            theta = self.state[p]["latent"]
            scratch = self._scratch(theta) if tr.needs_scratch else None
            if tr.encodes_before_step:  # the dual of the kept point, at v, whatever the latents held
                tr.reencode_(theta, old, v, scratch)
            else:
                tr.rescale_(theta, old, v, scratch)
        group[key] = v
        return old

    @torch.no_grad()
    def _relink(self) -> bool:
        """Re-attach state entries that were replaced from outside (ZeRO's ``load_state_dict``).

        ``ZeroRedundancyOptimizer.load_state_dict`` assigns
        ``optim.state[p] = saved_entry`` instead of calling ``load_state_dict``:
        the saved latent is then a new tensor the base optimizer does not
        step. Copy it into the base optimizer's tensor, restore the alias, and
        move a saved ``base_state`` into the base optimizer's state.
        """
        changed = False
        for gi, group in enumerate(self.param_groups):
            tr = self._transform(group) if group["quantize"] else None
            for pi, p in enumerate(group["params"]):
                st = self.state.get(p)
                if st is None:
                    continue
                bt = self.base_optimizer.param_groups[gi]["params"][pi]
                lat = st.get("latent")
                root = bt if bt._base is None else bt._base  # a view of bt's storage root (level-major dual) is bt
                if tr is not None and lat is not None and lat is not bt and lat._base is not root:
                    bt.copy_(tr.to_base(lat))
                    st["latent"] = tr.from_base(bt)
                    changed = True
                bs = st.pop("base_state", None)
                if bs is not None:
                    if tr is not None and tr.relayout:
                        bs = _relayout_entry(bs, bt, tr, saving=False)
                    self.base_optimizer.state[bt] = {
                        k: v.to(device=bt.device, dtype=bt.dtype)
                        if isinstance(v, Tensor) and v.is_floating_point() and k != "step" else v
                        for k, v in bs.items()}
                    changed = True
        if changed:
            self._project_all()
        return changed

    def _prepare_step(self) -> None:
        """Hook run by :meth:`step` once the gradients and values are checked, before anything else: a subclass
        may change how a group keeps its latents here (``MirrorDescent``'s two forms of the softmax dual)."""

    def refresh(self) -> None:
        """Re-establish ``model = F(theta)`` after ``mu``/``beta`` changed (schedulers call this).

        Raises ``ValueError``/``TypeError`` for an invalid ``mu``/``beta`` (or
        ``lr``), before anything changes.
        """
        self._check_step_values()
        self._relink()
        for gi, g in self._quantized_groups():
            self._refresh(gi, g)

    def _project_all(self) -> None:
        self._projected.clear()
        for gi, g in self._quantized_groups():
            self._project(gi, g)

    # ------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """One step: latent gradients ``B'(theta) * p.grad``, base step on ``theta``, ``p = F(theta)``.

        When ``B' = 1`` the latent gradient *is* ``p.grad`` (no copy). Otherwise
        it is computed into the parameter's own storage, which is free until
        ``F(theta)`` is written back after the base step, so the step allocates
        no per-parameter temporaries (fp16/bf16 parameters with fp32 latents
        excepted).

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Raises:
            ValueError: for sparse or (with ``nonfinite="raise"``) non-finite
                gradients, or an invalid ``mu``/``beta``; nothing has changed then.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_step_values()
        if not self._check_grads():
            return loss
        self._relink()
        self._sync()
        self._prepare_step()
        stepped: List[Tuple[int, Dict[str, Any], List[bool]]] = []
        reencoded: Dict[int, float] = {}  # primal groups re-encoded at a new beta -> their old encoding
        clobbered: List[Tuple[int, int]] = []  # (group, parameter) whose storage served as a gradient buffer
        based = False  # whether the base step began (it may have moved latents before failing)
        try:
            for gi, group in self._quantized_groups():
                tr = self._transform(group)
                self._refresh(gi, group, tr)
                old = self._reencode_pending(tr, group)
                if old is not None:
                    reencoded[gi] = old
                v = group[self.anneal_key]
                has = []
                for pi, (p, bt) in enumerate(zip(group["params"], self.base_optimizer.param_groups[gi]["params"])):
                    theta = self.state[p]["latent"]
                    g = p.grad
                    if g is None:
                        bt.grad = None
                        has.append(False)
                        continue
                    if g.dtype != theta.dtype:
                        g = g.to(theta.dtype)
                    scratch = self._scratch(theta) if tr.needs_scratch else None
                    if tr.unit_backward:
                        bt.grad = g
                    else:
                        same = p.dtype == theta.dtype and p.shape == theta.shape
                        out = p.detach() if same else (self._grad_buffer(p, theta) if tr.grad_buffer else None)
                        if same:
                            clobbered.append((gi, pi))
                        gb = tr.to_base(tr.grad_into(theta, g, v, out, scratch) if out is not None
                                        else tr.backward(theta, g, v))
                        # a relaid-out dual's gradient in the base tensor's layout (fused kernels need it)
                        bt.grad = gb.contiguous() if tr.relayout and bt.is_contiguous() else gb
                    has.append(True)
                stepped.append((gi, group, has))
            before = self._hard_codes(stepped) if self._flips is not None else None
            based = True
            self._base_step()
        except BaseException:
            self._undo_step(reencoded, clobbered, stepped if based else None)
            raise
        finally:
            for gi, _ in self._quantized_groups():
                for bt in self.base_optimizer.param_groups[gi]["params"]:
                    bt.grad = None
        try:
            for gi, group, has in stepped:
                # the primal form re-encodes the stepped latents (_encode), each with its write (unless it did so
                # before the step); after a re-encoding before the step, parameters without a gradient are
                # written too: p = P(theta) bit for bit
                pre = self._transform(group).encodes_before_step
                self._project(gi, group, None if gi in reencoded else has, encode=None if pre else has)
        except BaseException:
            self._undo_step(reencoded, clobbered, stepped)
            raise
        if before is not None:
            self._count_flips(stepped, before)
        return loss

    @torch.no_grad()
    def _undo_step(self, reencoded: Dict[int, float], clobbered: List[Tuple[int, int]],
                   stepped: Optional[List[Tuple[int, Dict[str, Any], List[bool]]]]) -> None:
        """A step failed: leave ``p = F(theta)`` (or :meth:`finalize`'s levels) with the model changed as little
        as the failure allows.

        * The primal form's re-encoding (``reencoded``: group -> old encoding
          ``e``) is multiplied back, with ``beta_encoded = e``: the latents
          equal what they were up to rounding (the base step's partial update,
          if any, stays, at encoding ``e``).
        * Before the base step (``stepped`` None) no other latent moved: the
          parameters that served as gradient buffers (``clobbered``) are
          rewritten as they were, bit for bit.
        * Once it began (``stepped``: what it was stepping; also when the
          write-back after it fails), the base step may have moved some
          latents: those parameters' latents are re-encoded (primal form) and
          written as a finished step writes them.
        * A group whose projection was interrupted (missing from
          ``_projected``, which :meth:`_project` clears first) is projected
          again.

        The parameters rewritten get ``F(theta)``: where the latent did not
        move, what they held, up to rounding after a re-encoding and bit for
        bit otherwise. Parameters holding :meth:`finalize`'s levels keep them
        bit for bit, unless the step wrote its gradient into their storage
        (``hard(theta)`` is written back then).
        """
        todo: Dict[Tuple[int, int], None] = dict.fromkeys(clobbered)
        for gi, old in reencoded.items():
            group = self.param_groups[gi]
            tr = self._transform(group)
            hard = self._hard.get(gi, ())
            for pi, p in enumerate(group["params"]):
                theta = self.state[p]["latent"]
                tr.rescale_(theta, group[self._encoded_key], old, self._scratch(theta) if tr.needs_scratch else None)
                if pi not in hard:  # finalize()'s levels stay as they are (the latent moved by rounding only)
                    todo[(gi, pi)] = None
            group[self._encoded_key] = old
        for gi, group, has in stepped or ():
            self._encode(self._transform(group), group, has)
            hard = self._hard.get(gi, ())
            todo.update(dict.fromkeys((gi, pi) for pi, h in enumerate(has) if h and pi not in hard))
        for gi, pi in todo:
            group = self.param_groups[gi]
            tr = self._transform(group)
            p = group["params"][pi]
            hard = pi in self._hard.get(gi, ())
            self._write(tr, group, p, self.state[p]["latent"], None if hard else self._value(tr, group))
        for gi, group in self._quantized_groups():
            if gi not in self._projected:  # the step's refresh or write-back was interrupted in this group
                hard = self._hard.get(gi, ())
                self._project(gi, group, [pi not in hard for pi in range(len(group["params"]))])

    # ------------------------------------------------------------ diagnostics
    def _hard_codes(self, stepped: List[Tuple[int, Dict[str, Any], List[bool]]]) -> List[List[Tensor]]:
        out = []
        for _, group, has in stepped:
            tr = self._transform(group)
            out.append([tr.hard(self.state[p]["latent"]) for p, h in zip(group["params"], has) if h])
        return out

    def _count_flips(self, stepped: List[Tuple[int, Dict[str, Any], List[bool]]],
                     before: List[List[Tensor]]) -> None:
        after = self._hard_codes(stepped)
        flips: Dict[int, Tuple[int, int]] = {}
        for (gi, _, _), b, a in zip(stepped, before, after):
            changed = sum(int((x != y).sum()) for x, y in zip(b, a))
            flips[gi] = (changed, sum(x.numel() for x in b))
        self._flips = flips

    @torch.no_grad()
    def stats(self) -> List[Dict[str, Any]]:
        """Per-group training diagnostics, cheap enough to call every step.

        For each group: ``flip_ratio`` (share of hard-quantized weights whose
        level changed in the last step; the first call switches tracking on,
        which costs two extra passes per step, so it is ``None`` until the
        next step), ``frozen`` (share of latents where ``B'(theta) = 0``, which
        the base optimizer no longer moves), ``quant_error`` (mean
        ``|w - hard(w)|`` of the model's current weights), the annealed value
        (``mu`` or ``beta``), ``lr``, and the number of parameters.

        Example:
            >>> import torch, proxopt
            >>> opt = proxopt.optimizer("bnn", [torch.nn.Parameter(torch.tensor([0.5, 2.0]))])
            >>> opt.stats()[0]["frozen"]
            0.5
        """
        self._check_quantize()
        track = self._flips is not None
        if not track:
            self._flips = {}
        out = []
        for gi, group in enumerate(self.param_groups):
            n = sum(p.numel() for p in group["params"])
            row: Dict[str, Any] = {"group": gi, "quantize": group["quantize"], "numel": n,
                                   self.anneal_key: group[self.anneal_key], "lr": group.get("lr"),  # type: ignore
                                   "flip_ratio": None, "frozen": 0.0, "quant_error": 0.0}
            if group["quantize"] and n:
                tr = self._transform(group)
                v = self._value(tr, group)
                frozen = err = 0.0
                for p in group["params"]:
                    theta = self.state[p]["latent"]
                    if not tr.unit_backward and theta.numel():
                        ones = torch.ones((), dtype=theta.dtype, device=theta.device).expand_as(p)
                        d = tr.backward(theta, ones.to(theta.dtype), v)
                        frozen += float((d == 0).sum()) * p.numel() / d.numel()
                    h = tr.hard(theta)
                    if group["scale"] is not None:
                        h = h * scale_of(theta, group["scale"])
                    err += float((p.detach().to(h.dtype) - h).abs().sum())
                row["frozen"] = frozen / n
                row["quant_error"] = err / n
                if track and gi in self._flips:
                    changed, total = self._flips[gi]
                    row["flip_ratio"] = changed / total if total else 0.0
            out.append(row)
        return out

    # ------------------------------------------------------------ hard / final
    @torch.no_grad()
    def _write_hard(self) -> None:
        for gi, group in self._quantized_groups():
            tr = self._transform(group)
            for p in group["params"]:
                self._write(tr, group, p, self.state[p]["latent"], None)
            self._hard[gi] = set(range(len(group["params"])))

    @contextmanager
    def hard(self) -> Iterator["LatentOptimizer"]:
        """:meth:`WrappedOptimizer.hard`: the hard levels ``hard(theta)`` inside the block, ``F(theta)`` restored after.

        Example:
            >>> import proxopt, torch
            >>> w = torch.nn.Parameter(torch.tensor([0.3, -0.2]))
            >>> opt = proxopt.optimizer("bc", [w], lr=0.1)
            >>> with opt.hard():
            ...     w.tolist()
            [1.0, -1.0]
        """
        marks = {gi: set(s) for gi, s in self._hard.items()}
        try:
            with super().hard():
                yield self
        finally:
            self._hard = marks

    def finalize(self) -> None:
        """Write exactly quantized weights into the model for good.

        Each quantized parameter becomes ``hard(theta)``: ``sign`` with
        ``sign(0) = +1``, the nearest level, or the level at the dual's
        argmax. The latents stay in the state; a later :meth:`step` resumes
        soft training from them.
        """
        self._write_hard()

    # ------------------------------------------------------------- state dict
    def _validate_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super()._validate_state_dict(state_dict)
        saved_state = state_dict["state"]
        for gi, (saved, group) in enumerate(zip(state_dict["param_groups"], self.param_groups)):
            check_value(self.anneal_key, saved.get(self.anneal_key, 1.0))  # type: ignore[arg-type]
            if self._encoded_key in saved:
                check_value(self._encoded_key, saved[self._encoded_key])
            for pi, (sid, p) in enumerate(zip(saved["params"], group["params"])):
                if not group["quantize"]:
                    continue
                entry = saved_state.get(sid)
                lat = None if entry is None else entry.get("latent")
                if not isinstance(lat, Tensor):
                    raise ValueError(f"Invalid state_dict: no latent for parameter {pi} of group {gi}")
                mine = self.state[p]["latent"]
                if lat.shape != mine.shape:
                    raise ValueError(f"Invalid state_dict: latent of parameter {pi} of group {gi} has shape "
                                     f"{tuple(lat.shape)}, expected {tuple(mine.shape)}")
                if not torch.isfinite(lat).all():
                    raise ValueError(f"Invalid state_dict: latent of parameter {pi} of group {gi} is not finite")

    def _load(self, outer: Dict[str, Any], base: Dict[str, Any]) -> None:
        latents_by_id: Dict[Any, Tensor] = {}
        state = {}
        for sid, entry in outer["state"].items():
            entry = dict(entry)
            lat = entry.pop("latent", None)
            if lat is not None:
                latents_by_id[sid] = lat
            state[sid] = entry
        mine = [[self.state[p].get("latent") for p in g["params"]] for g in self.param_groups]
        ids = [list(g["params"]) for g in outer["param_groups"]]
        outer = dict(outer, state=state)
        Optimizer.load_state_dict(self, outer)
        for _, group in self._quantized_groups():  # saved before the primal form recorded its encoding: the group's v
            if self._transform(group).primal:
                group.setdefault(self._encoded_key, group[self.anneal_key])  # type: ignore[index]
        self.base_optimizer.load_state_dict(base)
        with torch.no_grad():
            for group, gl, gids in zip(self.param_groups, mine, ids):
                for p, theta, sid in zip(group["params"], gl, gids):
                    if theta is None:
                        continue
                    theta.copy_(latents_by_id[sid])
                    self.state[p]["latent"] = theta
        self._sync()
        self._project_all()
