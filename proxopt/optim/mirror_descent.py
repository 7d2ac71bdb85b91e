"""Mirror descent for quantization (THEORY.md §5).

References:
    [MD] Ajanthan, Gupta, Torr, Hartley, Dokania. Mirror Descent View for
    Neural Network Quantization. AISTATS 2021.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Type

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import mirror_maps as mm
from .engine import LatentOptimizer
from .transforms import PLAIN, CenteredSoftmaxPair, MirrorPair, Transform

__all__ = ["MirrorDescent", "SHIFT_FREE", "SHIFT_FREE_UNDECAYED", "ODD_BASES", "ODD_STATE", "EVEN_STATE",
           "SCALAR_STATE"]

#: Base optimizers whose update of a weight's softmax dual moves all its entries alike when one constant is
#: added to them, whatever their settings: the duals ``log(u)/beta + c`` of the primal form then give the same
#: iterates (SGD is linear in ``theta``, coupled weight decay included).
SHIFT_FREE: Tuple[Type[Optimizer], ...] = (torch.optim.SGD,)
#: Elementwise base optimizers whose update depends on the gradients (and the step count) alone unless coupled
#: weight decay (``weight_decay`` > 0) adds ``theta`` to the gradient; the value is the default of their
#: ``decoupled_weight_decay`` setting (decoupled decay scales every entry alike), None where they have none.
SHIFT_FREE_UNDECAYED: Dict[Type[Optimizer], Optional[bool]] = {
    torch.optim.Adam: False, torch.optim.AdamW: True, torch.optim.NAdam: False, torch.optim.RAdam: False,
    torch.optim.Adamax: None, torch.optim.RMSprop: None, torch.optim.Adagrad: None, torch.optim.Adadelta: None,
    torch.optim.Rprop: None}

#: The per-tensor state entries of :data:`ODD_BASES` that change sign with the tensor (momentum, first moments, the
#: previous gradient) ...
ODD_STATE = frozenset({"momentum_buffer", "exp_avg", "grad_avg", "prev"})
#: ... and those that do not (second moments, their maxima, accumulators, step sizes).
EVEN_STATE = frozenset({"exp_avg_sq", "max_exp_avg_sq", "exp_inf", "square_avg", "sum", "acc_delta", "step_size"})
#: ... and their per-tensor scalars (0-d tensors whatever the tensor's shape).
SCALAR_STATE = frozenset({"step", "mu_product"})


def _to_form(x: Tensor, key: str, centered: bool) -> Tensor:
    """One tensor of a softmax dual's form change: the latent (``key="latent"``) or a base state entry.

    To ``t`` (``centered``) from the level-major ``(2, ...)`` layout:
    ``(x_1 - x_0)/2`` for the latent and odd entries, ``x_1`` for even ones;
    to the two-entry dual: ``(-x, x)`` or ``(x, x)``, contiguous ``(2, ...)``.
    """
    odd = key == "latent" or key in ODD_STATE
    if centered:
        return ((x[1] - x[0]) * 0.5).contiguous() if odd else x[1].contiguous()
    return torch.stack([-x if odd else x, x]).contiguous()


def _entry_to_form(entry: Dict[str, Any], shape: torch.Size, centered: bool) -> Dict[str, Any]:
    """A base state entry of a tensor of ``shape`` in the other form: :func:`_to_form` of each per-element tensor
    (named per-tensor scalars, :data:`SCALAR_STATE`, stay as they are, 0-d tensors included)."""
    return {k: _to_form(v, k, centered) if isinstance(v, Tensor) and v.shape == shape and k not in SCALAR_STATE
            else v for k, v in entry.items()}


#: Base optimizers whose update is elementwise and odd whatever their settings: negating a tensor, its gradient
#: and its odd state (momentum, first moments; the second moments and step sizes are even) negates the update
#: bit for bit (every operation commutes with a sign flip). A two-level softmax dual ``(-t, t)`` is kept under
#: them as ``t`` alone (:class:`~proxopt.optim.transforms.CenteredSoftmaxPair`).
ODD_BASES: Tuple[Type[Optimizer], ...] = SHIFT_FREE + tuple(SHIFT_FREE_UNDECAYED)


class MirrorDescent(LatentOptimizer):
    """Mirror descent with a mirror map ``P_beta`` (stable "-S" or primal form), any base optimizer.

    Stable form (``stable=True``, ``MD-*-S``): the state keeps the dual ``theta``,

    .. math:: w_t = P_\\beta(\\theta_t),\\qquad
              \\theta_{t+1} = \\mathrm{BaseStep}(\\theta_t, \\nabla_w f(w_t))

    i.e. the ProxConnect++ loop with ``F = P_beta`` and ``B' = 1``. Raising
    ``beta`` sharpens ``w``. Primal form (``stable=False``, MD-tanh /
    MD-softmax): the primal point is kept and ``theta = P_beta^{-1}(w)`` is
    recomputed from it at the start and after every step. A change of
    ``beta`` leaves the model and the latents as they are (the group's
    ``"beta_encoded"`` records the ``beta`` the latents are encoded at); the
    next step re-encodes them first (a multiply by ``beta_encoded / beta``), so
    raising ``beta`` only enlarges the effective step (exact arithmetic gives
    the same iterates at fixed ``beta``; the paper reports the primal form is
    less stable in float32). ``exact_gradient=True`` applies the Jacobian of
    ``P_beta`` (``B' = dP/dtheta``): the GD-tanh baseline.

    For :class:`proxopt.mirror_maps.Softmax` each weight has a dual vector of
    size ``d`` (``d`` times the memory) and the dual gradient is ``g_w q``.
    The dual ``(..., d)`` is stored level-major (one contiguous block per
    level) and the base optimizer steps its contiguous ``(d, ...)`` view;
    state dicts hold the ``(..., d)`` shape. The stable form starts from the
    zero-sum dual; with two levels ``(-a, a)`` and a base optimizer of
    :data:`ODD_BASES` (Adam, SGD, ...) that dual stays ``(-t, t)``, and the
    group keeps ``t`` alone, of the weight's shape: the same iterates at
    half the memory and passes
    (:class:`~proxopt.optim.transforms.CenteredSoftmaxPair`); so does the
    primal form where the base update ignores a common shift (below), until
    coupled weight decay makes it need ``log(u)/beta``: it then moves to the
    two entries, with its base state, and keeps them. Softmax ignores a
    constant added to every entry, so the primal form's dual of ``u`` is
    ``log(u)/beta + c``: proxopt keeps the one with largest entry 0, computed
    exactly, when the base update does not depend on ``theta`` itself
    (:data:`SHIFT_FREE`, and :data:`SHIFT_FREE_UNDECAYED` without coupled
    weight decay, subclasses included: the same iterates for every ``c``),
    else ``log(u)/beta``, recomputed before every base step
    (:meth:`proxopt.mirror_maps.Softmax.renormalize_`).

    Args:
        params: parameters or param groups (groups may set ``mirror_map``,
            ``beta``, ``stable``, ``exact_gradient``, ``quantize``).
        mirror_map: ``"tanh"``, ``"linear"``, ``"softmax"``,
            ``"shifted_tanh"``, a config dict or a
            :class:`proxopt.mirror_maps.MirrorMap`.
        beta: inverse temperature (annealed by :class:`proxopt.AnnealScheduler`).
        stable: the "-S" form (default) or the primal form.
        exact_gradient: apply ``dP/dtheta`` (GD baseline, not mirror descent).
        base: base optimizer class (default Adam).
        **base_kwargs: passed to ``base``.

    Example:
        >>> import torch, proxopt
        >>> w = torch.nn.Parameter(torch.tensor([0.5, -0.5]))
        >>> opt = proxopt.MirrorDescent([w], mirror_map="tanh", beta=2.0, lr=0.1)
        >>> w.data
        tensor([ 0.7616, -0.7616])

    References:
        [MD] Ajanthan et al., AISTATS 2021; [PMF] Ajanthan et al., ICCV 2019.
    """

    anneal_key = "beta"

    def __init__(self, params: Any, mirror_map: Any = "tanh", beta: float = 1.0, stable: bool = True,
                 exact_gradient: bool = False, base: Type[Optimizer] = torch.optim.Adam, **base_kwargs: Any) -> None:
        own = {"quantize": True, "mirror_map": mm.get(mirror_map).config(), "beta": beta, "stable": stable,
               "exact_gradient": exact_gradient}
        super().__init__(params, base, own, base_kwargs)

    def _normalize_group(self, group: Dict[str, Any]) -> None:
        super()._normalize_group(group)
        m = mm.get(group["mirror_map"])
        group["mirror_map"] = m.config()
        for key in ("stable", "exact_gradient"):
            if not isinstance(group[key], bool):
                raise TypeError(f"Invalid {key}: {group[key]!r} (expected True or False)")
        if not group["stable"] and not m.strict:
            raise ValueError(f"Invalid stable: False with mirror_map={m!r} (only the stable form is defined "
                             "for this map, THEORY.md §5)")

    def _log_partition(self, group: Dict[str, Any]) -> bool:
        """Whether the primal softmax form keeps the dual ``log(u)/beta`` (``LSE(beta theta) = 0``).

        Its duals ``log(u)/beta + c`` give the same iterates when the base
        update does not depend on ``theta`` itself; proxopt then keeps the
        one with largest entry 0, which it computes exactly
        (:meth:`~proxopt.mirror_maps.Softmax.renormalize_`). That holds for
        :data:`SHIFT_FREE` bases, and for :data:`SHIFT_FREE_UNDECAYED` ones
        without coupled weight decay (a subclass counts as the torch
        optimizer it derives from); any other base gets ``log(u)/beta``, the
        dual THEORY.md §5 writes, recomputed before every base step.
        """
        if group["stable"]:
            return False
        for cls in self._base_cls.__mro__:  # a subclass counts as the torch optimizer it derives from
            if cls in SHIFT_FREE:
                return False
            if cls in SHIFT_FREE_UNDECAYED:
                def setting(key: str, default: Any) -> Any:
                    return group.get(key, self._base_kwargs.get(key, default))
                decoupled = SHIFT_FREE_UNDECAYED[cls]
                if not setting("weight_decay", 0.0) or (decoupled is not None
                                                         and setting("decoupled_weight_decay", decoupled)):
                    return False
                break
        return mm.get(group["mirror_map"]).dual_size is not None

    def _centered(self, group: Dict[str, Any]) -> bool:
        """Whether the group keeps its dual ``(-t, t)`` as ``t`` (:class:`~.transforms.CenteredSoftmaxPair`).

        Possible for the softmax map with levels ``(-a, a)``, without the
        Jacobian, under a base optimizer of :data:`ODD_BASES` (a subclass
        counts as the torch optimizer it derives from), for plain tensors.
        The latents' shape says which form a group keeps; a new group takes
        ``t`` in the stable form, and in the primal form where the base
        update ignores a common shift of the dual (:meth:`_log_partition`
        False). A primal group whose base settings change so that it needs
        ``log(u)/beta`` moves to the two-entry dual at its next step
        (:meth:`_prepare_step`) and keeps it.
        """
        if not self._centered_possible(group):
            return False
        kept = self._kept_centered(group)
        if kept is not None:
            return kept
        return group["stable"] or not self._log_partition(group)

    def _centered_possible(self, group: Dict[str, Any]) -> bool:
        if group["exact_gradient"] or group["mirror_map"].get("name") != mm.Softmax.name:
            return False
        if not mm.get(group["mirror_map"]).centered_pair:  # type: ignore[attr-defined]
            return False
        if not all(type(p) in PLAIN for p in group["params"]):
            return False
        return any(cls in ODD_BASES for cls in self._base_cls.__mro__)

    def _kept_centered(self, group: Dict[str, Any]) -> Optional[bool]:
        """Whether the group's latents are ``t`` (the weight's shape) or the two-entry dual; None before they exist."""
        for p in group["params"]:
            st = self.state.get(p)
            lat = st.get("latent") if st else None
            if lat is not None:
                return lat.shape == p.shape
        return None

    @torch.no_grad()
    def _plan_form(self, gi: int, group: Dict[str, Any], centered: bool, keep_state: bool = True
                   ) -> List[Tuple[int, Tensor, Optional[Dict[str, Any]]]]:
        """The new base tensors (and base state) that move group ``gi`` to ``t`` (``centered``) or to the two-entry
        dual, built without changing anything; :meth:`_commit_form` installs them.

        To the two-entry dual: ``(-t, t)``, level-major, and each base state
        tensor ``s`` of ``t``'s shape becomes ``(-s, s)`` (odd entries,
        :data:`ODD_STATE`) or ``(s, s)`` (even ones): the state the base
        optimizer would hold had it stepped the two-entry dual, exactly. To
        ``t``: ``(theta_1 - theta_0)/2`` and entry 1 of the state. Without
        ``keep_state`` (a load replaces it) the base state is dropped. Raises
        ``ValueError`` for a per-element base state entry of unknown parity.
        """
        bparams = self.base_optimizer.param_groups[gi]["params"]
        plan = []
        for pi, p in enumerate(group["params"]):
            st = self.state.get(p)
            lat = st.get("latent") if st else None
            if lat is None or (lat.shape == p.shape) == centered:
                continue
            old = bparams[pi]
            new = _to_form(old, "latent", centered)
            entry = self.base_optimizer.state.get(old) if keep_state else None
            if entry is not None:
                unknown = [k for k, v in entry.items() if isinstance(v, Tensor) and v.shape == old.shape
                           and k not in ODD_STATE and k not in EVEN_STATE and k not in SCALAR_STATE]
                if unknown:
                    raise ValueError(f"Invalid base state: {unknown[0]!r} of group {gi} (proxopt does not know "
                                     "whether it changes sign with the dual, so it cannot move the group's softmax "
                                     "dual between (-t, t) and t)")
                entry = _entry_to_form(entry, old.shape, centered)
            plan.append((pi, new, entry))
        return plan

    def _commit_form(self, gi: int, group: Dict[str, Any], plan: List[Tuple[int, Tensor, Optional[Dict[str, Any]]]]
                     ) -> None:
        """Install a :meth:`_plan_form`: base tensors, their state, and the latents (views of them)."""
        bparams = self.base_optimizer.param_groups[gi]["params"]
        for pi, new, entry in plan:
            p = group["params"][pi]
            self.base_optimizer.state.pop(bparams[pi], None)
            if entry is not None:
                self.base_optimizer.state[new] = entry
            bparams[pi] = new
            self.state[p]["latent"] = new if new.shape == p.shape else new.movedim(0, -1)

    def _prepare_step(self) -> None:
        """A primal group kept as ``t`` whose base settings now need ``log(u)/beta`` (coupled weight decay) moves
        to the two-entry dual before the step re-encodes it: every such group is planned before any changes
        (:meth:`_plan_form`). The move keeps the point and the base state exactly; a step that fails after it
        leaves the group in the two-entry form."""
        plans = [(gi, group, self._plan_form(gi, group, centered=False)) for gi, group in self._quantized_groups()
                 if not group["stable"] and self._kept_centered(group) and self._log_partition(group)]
        for gi, group, plan in plans:
            self._commit_form(gi, group, plan)

    @torch.no_grad()
    def _relink(self) -> bool:
        """:meth:`LatentOptimizer._relink`, for state entries replaced from outside whose latent has the other form
        (``t`` or the two-entry dual) than the base tensor: the base tensor is rebuilt from the saved latent in its
        form (its old base state moved along, unless the entry brings one), then the group takes one form."""
        changed = False
        for gi, group in enumerate(self.param_groups):
            if not group["quantize"]:
                continue
            bparams = self.base_optimizer.param_groups[gi]["params"]
            moved = False
            for pi, p in enumerate(group["params"]):
                st = self.state.get(p)
                lat = st.get("latent") if st else None
                bt = bparams[pi]
                # the base tensor or a view of it (the usual case), or a latent of its form: nothing to do here (only
                # a softmax dual has two forms, so no other group gets past this)
                if lat is None or lat is bt or lat._base is bt or (lat.shape == p.shape) == (bt.shape == p.shape):
                    continue
                centered = lat.shape == p.shape
                new = lat.detach().clone().contiguous() if centered else lat.detach().movedim(-1, 0).contiguous()
                entry = self.base_optimizer.state.pop(bt, None)
                if entry is not None and "base_state" not in st:
                    self.base_optimizer.state[new] = _entry_to_form(entry, bt.shape, centered)
                bparams[pi] = new
                st["latent"] = new if centered else new.movedim(0, -1)
                moved = True
            if moved:
                changed = True
                forms = {self.state[p]["latent"].shape == p.shape for p in group["params"]
                         if self.state.get(p) and "latent" in self.state[p]}
                if len(forms) > 1:  # some entries replaced, others not: the form of the first
                    self._commit_form(gi, group, self._plan_form(gi, group, bool(self._kept_centered(group))))
        return super()._relink() or changed

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """:meth:`~proxopt.optim.engine.WrappedOptimizer.load_state_dict`; a group whose saved latents are in the
        other form (``t`` or the two-entry dual, :meth:`_centered`) takes that form first, and gets its own
        back if the load fails."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        saved = state_dict.get("state", {}) if isinstance(state_dict, dict) else {}
        moves = []
        if isinstance(groups, list) and len(groups) == len(self.param_groups):
            for gi, (sg, group) in enumerate(zip(groups, self.param_groups)):
                if not (group["quantize"] and self._centered_possible(group)) or not isinstance(sg, dict):
                    continue
                ids = sg.get("params", ())
                lats = [saved.get(i, {}).get("latent") for i in ids] if len(ids) == len(group["params"]) else []
                shapes = [(lat.shape == p.shape) for lat, p in zip(lats, group["params"]) if isinstance(lat, Tensor)]
                mine = self._kept_centered(group)
                if shapes and all(x == shapes[0] for x in shapes) and mine is not None and shapes[0] != mine:
                    moves.append((gi, group, shapes[0]))
        if not moves:
            return super().load_state_dict(state_dict)
        before = [(list(self.base_optimizer.param_groups[gi]["params"]),
                   [self.state[p].get("latent") for p in group["params"]],
                   {id(bt): self.base_optimizer.state.get(bt) for bt in self.base_optimizer.param_groups[gi]["params"]})
                  for gi, group, _ in moves]
        try:
            for gi, group, centered in moves:  # the load replaces the base state: it is not moved
                self._commit_form(gi, group, self._plan_form(gi, group, centered, keep_state=False))
            super().load_state_dict(state_dict)
        except BaseException:
            for (gi, group, _), (bparams, lats, entries) in zip(moves, before):
                for bt in self.base_optimizer.param_groups[gi]["params"]:
                    self.base_optimizer.state.pop(bt, None)
                self.base_optimizer.param_groups[gi]["params"][:] = bparams
                for bt in bparams:
                    if entries[id(bt)] is not None:
                        self.base_optimizer.state[bt] = entries[id(bt)]
                for p, lat in zip(group["params"], lats):
                    if lat is not None:
                        self.state[p]["latent"] = lat
            raise

    def _transform_key(self, group: Dict[str, Any]) -> Tuple[Any, ...]:
        if self._centered(group):
            return ("md", group["mirror_map"], group["stable"], "centered")
        return ("md", group["mirror_map"], group["stable"], group["exact_gradient"], self._log_partition(group))

    def _build_transform(self, group: Dict[str, Any]) -> Transform:
        if self._centered(group):
            return CenteredSoftmaxPair(mm.get(group["mirror_map"]), group["stable"])  # type: ignore[arg-type]
        return MirrorPair(mm.get(group["mirror_map"]), group["stable"], group["exact_gradient"],
                          self._log_partition(group))
