"""The (F, B) pairs the latent-weight engine runs (THEORY.md §2, §5).

A transform tells the engine, for one param group, how latents map to
weights and how weight gradients map back to latent gradients:

* ``init_latent(p)`` — ``theta_0`` from the parameter's initial value,
* ``forward(theta, v)`` — ``w = F_v(theta)``, written into the model,
* ``backward(theta, g, v)`` — ``grad_theta`` from ``g = grad_w f``; it
  returns ``g`` itself when ``B' = 1`` so the engine can alias it,
* ``hard(theta)`` — exact levels,
* ``primal`` / ``reencode`` — the primal (non-"-S") mirror-descent form
  keeps the primal point (``w``, or the simplex point ``u`` for softmax) and
  recomputes ``theta = P_v^{-1}(w)`` from it after every step and whenever
  ``v`` changes (``rescale_``),
* ``to_base`` / ``from_base`` — the view of the latent the base optimizer
  steps (the softmax dual's contiguous level-major ``(d, ...)`` view).

Transforms are built from primitive group entries and know nothing about
optimizers; quantizers and mirror maps know nothing about transforms.

References:
    [PC++] Lu et al., NeurIPS 2023. [MD] Ajanthan et al., AISTATS 2021.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import mirror_maps as mm
from .. import quantizers as qz

LOW_PRECISION = (torch.float16, torch.bfloat16)


def latent_dtype(p: Tensor) -> torch.dtype:
    """fp32 latents for fp16/bf16 parameters, the parameter's dtype otherwise."""
    return torch.float32 if p.dtype in LOW_PRECISION else p.dtype


class Transform:
    """Interface of an (F, B) pair; see the module docstring."""

    primal = False
    unit_backward = False
    levels: Optional[Tuple[float, ...]] = None

    def init_latent(self, p: Tensor) -> Tensor:
        return p.detach().to(latent_dtype(p), copy=True)

    #: whether project_into / grad_into want a workspace tensor of theta's shape
    needs_scratch = False
    #: whether a per-tensor / per-channel scale alpha = mean|theta| is meaningful
    scalable = True
    #: whether grad_into wants a persistent buffer of the latent's shape (latents shaped unlike the parameter)
    grad_buffer = False
    #: whether the base optimizer steps a view of the latent other than the latent itself (:meth:`to_base`)
    relayout = False
    #: primal form: re-encode the latents before every base step (:meth:`reencode_`) instead of after it
    encodes_before_step = False

    def to_base(self, theta: Tensor) -> Tensor:
        """The tensor the base optimizer steps for the latent ``theta``: a view of it (here ``theta`` itself)."""
        return theta

    def from_base(self, t: Tensor) -> Tensor:
        """Inverse of :meth:`to_base`: the latent-shaped view of a base-shaped tensor."""
        return t

    def forward(self, theta: Tensor, v: float) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, theta: Tensor, g: Tensor, v: float) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def project_into(self, theta: Tensor, v: float, out: Tensor, scratch: Optional[Tensor]) -> Tensor:
        """``out = forward(theta, v)`` bit for bit, without temporaries where possible."""
        return out.copy_(self.forward(theta, v))

    def grad_into(self, theta: Tensor, g: Tensor, v: float, out: Tensor, scratch: Optional[Tensor]) -> Tensor:
        """``backward(theta, g, v)`` written into ``out`` (or ``g`` itself when ``B' = 1``)."""
        return out.copy_(self.backward(theta, g, v))

    def hard(self, theta: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def reencode(self, theta: Tensor, old: float, new: float) -> Tensor:  # pragma: no cover - primal only
        raise NotImplementedError

    def reencode_(self, theta: Tensor, old: float, new: float, scratch: Optional[Tensor] = None) -> Tensor:
        """``theta <- reencode(theta, old, new)`` in place (``old == new``: the primal form's per-step re-encoding)."""
        return theta.copy_(self.reencode(theta, old, new))

    def reencode_project_into(self, theta: Tensor, v: float, out: Tensor, scratch: Optional[Tensor]) -> bool:
        """``reencode_(theta, v, v)`` then ``project_into(theta, v, out)`` in one pass where the transform has
        one (bit for bit the two calls); False, with nothing done, elsewhere (this default: always)."""
        return False

    def rescale_(self, theta: Tensor, old: float, new: float, scratch: Optional[Tensor] = None) -> Tensor:
        """:meth:`reencode_` for a ``theta`` already re-encoded at ``old`` (the primal form's latents)."""
        return self.reencode_(theta, old, new, scratch)


class QuantizerPair(Transform):
    """ProxConnect++: ``w = F_mu(theta)``, ``grad_theta = B'_mu(theta) * g`` [PC++]."""

    def __init__(self, forward: qz.Quantizer, backward: qz.Quantizer) -> None:
        self.F = forward
        self.B = backward
        self.unit_backward = backward.unit_derivative
        self.levels = forward.levels
        self.needs_scratch = isinstance(forward, qz.SignSwish) or isinstance(backward, qz.SignSwish)

    def forward(self, theta: Tensor, v: float) -> Tensor:
        return self.F.value(theta, v)

    def backward(self, theta: Tensor, g: Tensor, v: float) -> Tensor:
        if self.unit_backward:
            return g
        return self.B.derivative(theta, v).mul_(g)

    def project_into(self, theta: Tensor, v: float, out: Tensor, scratch: Optional[Tensor]) -> Tensor:
        return self.F.value_into(theta, v, out, scratch)

    def grad_into(self, theta: Tensor, g: Tensor, v: float, out: Tensor, scratch: Optional[Tensor]) -> Tensor:
        if self.unit_backward:
            return g
        return self.B.grad_into(theta, g, v, out, scratch)

    def hard(self, theta: Tensor) -> Tensor:
        return self.F.hard(theta)


class MirrorPair(Transform):
    """Mirror descent: ``F = P_beta``, ``B' = 1`` (stable or primal form) [MD].

    With ``exact_gradient=True`` the Jacobian of ``P_beta`` is applied
    (``B' = dP/dtheta``): the GD-tanh baseline, not mirror descent. With
    ``log_partition=True`` the primal form of the softmax map keeps the dual
    ``log(u)/beta`` rather than the one with largest entry 0
    (:meth:`~proxopt.mirror_maps.Softmax.renormalize_`).
    """

    def __init__(self, mirror_map: mm.MirrorMap, stable: bool = True, exact_gradient: bool = False,
                 log_partition: bool = False) -> None:
        self.map = mirror_map
        self.primal = not stable
        self.log_partition = bool(log_partition) and mirror_map.dual_size is not None
        #: the log(u)/beta dual is not a fixed point of its re-encoding in floating point, and the base step must
        #: see it whatever the latents held (another dual after a change of base settings or a loaded state
        #: dict): it is recomputed before every base step, as THEORY.md §5 writes the primal form
        self.encodes_before_step = self.primal and self.log_partition
        self.exact = exact_gradient
        self.multi = mirror_map.dual_size is not None
        self.unit_backward = not exact_gradient and not self.multi
        self.levels = mirror_map.levels
        self.scalable = not self.multi
        # the softmax kernels keep per-weight temporaries (max, exponentials, ...) in the workspace
        self.needs_scratch = self.multi
        #: the latent gradient has the dual's shape and is written into a buffer the engine keeps
        self.grad_buffer = self.multi
        #: the softmax dual is stored level-major (see :meth:`init_latent`)
        self.relayout = self.multi

    #: simplex smoothing of the softmax dual's start in the stable form (see ``Softmax.init_dual``)
    STABLE_SMOOTHING = 0.03

    def init_latent(self, p: Tensor) -> Tensor:
        """The initial dual; the softmax dual ``(..., d)`` is stored level-major.

        Level-major: ``theta[..., j]`` is one contiguous block per level (the
        latent is the view ``T.movedim(0, -1)`` of a contiguous ``(d, ...)``
        tensor ``T``). Every per-level pass of the softmax kernels (the
        pull-back ``g q_j``, the projection, the renormalisation) then reads
        and writes contiguous memory, and the base optimizer steps ``T``
        (:meth:`to_base`), which its fused kernels need. The latent's shape,
        values and state dicts are those of the ``(..., d)`` dual. The stable
        form starts from the simplex point of ``p`` smoothed
        (``STABLE_SMOOTHING``) and the dual of it whose entries sum to 0
        (:meth:`~proxopt.mirror_maps.Softmax.center_`).
        """
        stable_multi = self.multi and not self.primal
        theta = self.map.init_dual(p.detach().to(latent_dtype(p)), self.STABLE_SMOOTHING if stable_multi else 0.0)
        if stable_multi:  # the stable form starts from the zero-sum dual (Softmax.center_)
            self.map.center_(theta)  # type: ignore[attr-defined]
        return self.from_base(self.to_base(theta).contiguous()) if self.multi else theta

    def to_base(self, theta: Tensor) -> Tensor:
        """The softmax dual's level-major ``(d, ...)`` view (contiguous for the latents :meth:`init_latent` makes)."""
        return theta.movedim(-1, 0) if self.multi else theta

    def from_base(self, t: Tensor) -> Tensor:
        return t.movedim(0, -1) if self.multi else t

    def forward(self, theta: Tensor, v: float) -> Tensor:
        return self.map.to_primal(theta, v)

    def backward(self, theta: Tensor, g: Tensor, v: float) -> Tensor:
        if self.exact:
            d = self.map.primal_derivative(theta, v)
            return d.mul_(g.unsqueeze(-1)) if self.multi else d.mul_(g)
        return self.map.primal_grad_to_dual(theta, g)

    def project_into(self, theta: Tensor, v: float, out: Tensor, scratch: Optional[Tensor]) -> Tensor:
        if self.multi:
            return self.map.to_primal_into(theta, v, out, scratch)  # type: ignore[call-arg]
        return self.map.to_primal_into(theta, v, out)

    def reencode_project_into(self, theta: Tensor, v: float, out: Tensor, scratch: Optional[Tensor]) -> bool:
        """The primal form's write-back in one pass where the map has one
        (:meth:`~proxopt.mirror_maps.MirrorMap.renormalize_to_primal_into`)."""
        return self.primal and not self.log_partition and self.map.renormalize_to_primal_into(theta, v, out)

    def grad_into(self, theta: Tensor, g: Tensor, v: float, out: Tensor, scratch: Optional[Tensor]) -> Tensor:
        """The latent gradient into ``out``: ``g`` itself (``B' = 1``), ``dP * g`` (GD), or ``g q`` (softmax).

        For the softmax dual ``out`` has ``theta``'s shape ``(..., d)`` (the
        engine keeps one such buffer per parameter); the mirror-descent
        pull-back ``g_u = g_w q`` is then written column by column without a
        new tensor.
        """
        if self.unit_backward:
            return g
        if self.exact and not self.multi:
            return self.map.primal_grad_into(theta, g, v, out)
        if self.multi and out is not None and out.shape == theta.shape:
            if self.exact:
                return out.copy_(self.backward(theta, g, v))
            return self.map.primal_grad_to_dual_into(theta, g, out)  # type: ignore[attr-defined]
        return self.backward(theta, g, v)

    def hard(self, theta: Tensor) -> Tensor:
        return self.map.hard(theta)

    def reencode(self, theta: Tensor, old: float, new: float) -> Tensor:
        """``P_new^{-1}(P_old(theta))``: the dual recomputed from the kept primal point."""
        m = self.map
        if self.multi:
            return m.reencode(theta, old, new, self.log_partition)  # type: ignore[attr-defined]
        return m.to_dual(m.to_primal(theta, old), new)

    def reencode_(self, theta: Tensor, old: float, new: float, scratch: Optional[Tensor] = None) -> Tensor:
        """``reencode(theta, old, new)`` in place, cheaply (:meth:`~proxopt.mirror_maps.MirrorMap.reencode_`).

        At a fixed ``beta`` the primal form's "dual recomputed from the
        primal point" is, up to rounding, a clamp to ``±atanh(m)/beta`` for
        the tanh map (one pass instead of tanh, clamp, atanh, divide and a
        copy) and the shift to a largest entry of 0 for the softmax map (or
        the subtraction of the log-partition, ``log_partition``); a change of
        ``beta`` adds one multiply by ``old/new``.
        """
        if self.log_partition:
            return self.map.reencode_(theta, old, new, scratch, log_partition=True)  # type: ignore[call-arg]
        return self.map.reencode_(theta, old, new, scratch)

    def rescale_(self, theta: Tensor, old: float, new: float, scratch: Optional[Tensor] = None) -> Tensor:
        """``reencode_(theta, old, new)`` for a ``theta = P_old^{-1}(w)``: ``theta * old / new`` for maps with
        ``P_beta(theta) = P_1(beta theta)`` (no transcendental pass), the full re-encoding for others.

        ``P_new^{-1}(P_old(theta)) = (old/new) P_old^{-1}(P_old(theta))`` and
        the second factor is ``theta`` itself when ``theta`` is already the
        dual of the primal point at ``old``, which the engine keeps so
        (re-encoding after every base step).
        """
        if old == new:
            return theta
        if not self.map.beta_scaled:
            return self.map.reencode_(theta, old, new, scratch)
        return theta.mul_(old / new)


class CenteredSoftmaxPair(Transform):
    """The softmax map with two levels ``(-a, a)``, its dual ``(-t, t)`` kept as ``t`` [MD].

    The softmax map keeps a dual ``theta in R^2`` per weight, steps it with
    the base optimizer on the pull-back ``g q = (-a g, a g)`` and writes
    ``w = q_0 + (q_1 - q_0) sigma(beta (theta_1 - theta_0))``. A base update
    that is elementwise and odd (negating a tensor, its gradient and its odd
    state negates the update and keeps the even moments: SGD, Adam,
    RMSprop, ..., weight decay included,
    :data:`proxopt.optim.mirror_descent.ODD_BASES`) keeps a dual of the form
    ``(-t, t)``: entry 0 takes entry 1's steps negated, bit for bit. So the
    dual is kept as ``t = theta_1`` alone, stepped on ``a g``:

    .. math:: w_t = q_0 + (q_1 - q_0)\,\sigma\big(\beta (t_t + t_t)\big),\qquad
              t_{t+1} = \mathrm{BaseStep}(t_t,\ a\,\nabla_w f(w_t))

    the iterates of the two-entry dual (bit for bit where the base
    optimizer rounds every element alike) with half its memory and passes:
    the latent has the weight's shape, and ``a = 1`` passes ``p.grad``
    itself (``B' = 1``).

    * Stable form: it starts from the zero-sum dual of ``p``'s smoothed
      simplex point (:meth:`~proxopt.mirror_maps.Softmax.center_`), as
      :class:`MirrorPair` does. For ``a = 1`` this is the MD-tanh-S update
      ``w = tanh(beta t)`` from the softmax start: THEORY.md §5's "binary
      softmax and tanh are the same algorithm up to initialisation".
    * Primal form (``stable=False``): the duals of the kept simplex point
      differ by a common shift, which the base optimizers that use this
      pair ignore; the zero-sum one is ``(-t, t)``, and its
      re-encoding after every step clips ``t`` to ``[f/2, -f/2]``,
      ``f = log(tiny)/beta`` (:meth:`~proxopt.mirror_maps.Softmax.centered_renormalize_`):
      the same ``theta_1 - theta_0``, bit for bit, as re-encoding to the
      dual with largest entry 0 that :class:`MirrorPair` keeps (whose base
      steps round differently: the same iterates in exact arithmetic).

    :class:`~proxopt.MirrorDescent` uses it where these conditions hold;
    the latent, in state dicts too, is then ``t``.
    """

    scalable = False  # as for the two-entry dual: scale the levels instead

    def __init__(self, mirror_map: mm.Softmax, stable: bool = True) -> None:
        if not mirror_map.centered_pair:
            raise ValueError(f"Invalid mirror_map: {mirror_map!r} (the centered dual needs two levels (-a, a))")
        self.map = mirror_map
        self.primal = not stable
        self.levels = mirror_map.levels
        self.a = mirror_map.levels[1]
        self.unit_backward = self.a == 1.0

    def init_latent(self, p: Tensor) -> Tensor:
        """``t_0``: entry 1 of the zero-sum dual of ``p``'s simplex point (smoothed in the stable form, as
        :class:`MirrorPair`'s start)."""
        smoothing = 0.0 if self.primal else MirrorPair.STABLE_SMOOTHING
        theta = self.map.init_dual(p.detach().to(latent_dtype(p)), smoothing)
        return self.map.center_(theta)[..., 1].contiguous()

    def forward(self, theta: Tensor, v: float) -> Tensor:
        return self.map.centered_to_primal_into(theta, v, torch.empty_like(theta))

    def project_into(self, theta: Tensor, v: float, out: Tensor, scratch: Optional[Tensor]) -> Tensor:
        return self.map.centered_to_primal_into(theta, v, out)

    def backward(self, theta: Tensor, g: Tensor, v: float) -> Tensor:
        return g if self.unit_backward else g * self.a

    def grad_into(self, theta: Tensor, g: Tensor, v: float, out: Tensor, scratch: Optional[Tensor]) -> Tensor:
        """``a g`` (``g`` itself for ``a = 1``): entry 1 of the pull-back ``g q``."""
        if self.unit_backward:
            return g
        return torch.mul(g, self.a, out=out) if out is not None else g * self.a

    def hard(self, theta: Tensor) -> Tensor:
        return self.map.centered_hard(theta)

    def reencode(self, theta: Tensor, old: float, new: float) -> Tensor:
        """Primal form: the clip at ``old`` (:meth:`~proxopt.mirror_maps.Softmax.centered_renormalize_`), times
        ``old / new``."""
        return self.reencode_(theta.clone(), old, new)

    def reencode_(self, theta: Tensor, old: float, new: float, scratch: Optional[Tensor] = None) -> Tensor:
        self.map.centered_renormalize_(theta, old)
        return theta if old == new else theta.mul_(old / new)

    def rescale_(self, theta: Tensor, old: float, new: float, scratch: Optional[Tensor] = None) -> Tensor:
        """``theta * old / new``: the latent is already re-encoded at ``old`` (see :meth:`MirrorPair.rescale_`)."""
        return theta if old == new else theta.mul_(old / new)

    def reencode_project_into(self, theta: Tensor, v: float, out: Tensor, scratch: Optional[Tensor]) -> bool:
        """The primal form's write-back in one native pass where it applies
        (:meth:`~proxopt.mirror_maps.Softmax.centered_renormalize_to_primal_into`)."""
        return self.primal and self.map.centered_renormalize_to_primal_into(theta, v, out)


#: plain tensor types (the transforms run on them directly; anything else may be a DTensor)
PLAIN = (Tensor, torch.nn.Parameter)


@functools.lru_cache(maxsize=None)
def _dtensor_cls():
    try:
        from torch.distributed.tensor import DTensor
        return DTensor
    except Exception:  # pragma: no cover - torch without distributed
        return None


class ShardLocal(Transform):
    """Run a transform on the local shards of DTensors (FSDP2 / tensor parallel).

    Every (F, B') pair is elementwise (the softmax dual elementwise per weight),
    so computing it shard by shard is exact; only the results that the engine
    keeps (latents, new tensors it copies) are wrapped back as DTensors with
    the same mesh and placements.
    """

    def __init__(self, inner: Transform) -> None:
        self.inner = inner
        for k in ("primal", "unit_backward", "levels", "needs_scratch", "scalable", "grad_buffer", "relayout",
                  "encodes_before_step"):
            setattr(self, k, getattr(inner, k))

    @staticmethod
    def _loc(t):
        D = _dtensor_cls()
        return t.to_local() if D is not None and isinstance(t, D) else t

    @staticmethod
    def _wrap(local, like, shape=None):
        D = _dtensor_cls()
        if D is None or not isinstance(like, D):
            return local
        shape = tuple(like.shape) if shape is None else tuple(shape)
        stride = torch.empty(shape, device="meta").stride()
        return D.from_local(local, like.device_mesh, like.placements, run_check=False, shape=torch.Size(shape),
                            stride=stride)

    def _scr(self, scratch, theta_local):
        if scratch is None:
            return None
        return scratch.reshape(-1)[: theta_local.numel()].view(theta_local.shape)

    def init_latent(self, p):
        if type(p) in PLAIN:
            return self.inner.init_latent(p)
        loc = self._loc(p)
        lat = self.inner.init_latent(loc).contiguous()  # a DTensor's shards keep the plain layout
        return self._wrap(lat, p, tuple(p.shape) + tuple(lat.shape[loc.dim():]))

    def to_base(self, theta):
        return self.inner.to_base(theta) if type(theta) in PLAIN else theta

    def from_base(self, t):
        return self.inner.from_base(t) if type(t) in PLAIN else t

    def forward(self, theta, v):
        loc = self._loc(theta)
        w = self.inner.forward(loc, v)
        return self._wrap(w, theta, theta.shape[: w.dim()])

    def backward(self, theta, g, v):
        return self._wrap(self.inner.backward(self._loc(theta), self._loc(g), v), theta)

    def project_into(self, theta, v, out, scratch):
        if type(theta) in PLAIN and type(out) in PLAIN:  # the common case: no shards, no wrapping
            self.inner.project_into(theta, v, out, scratch)
            return out
        lt = self._loc(theta)
        self.inner.project_into(lt, v, self._loc(out), self._scr(scratch, lt))
        return out

    def grad_into(self, theta, g, v, out, scratch):
        if type(theta) in PLAIN and type(g) in PLAIN:
            return self.inner.grad_into(theta, g, v, out, scratch)
        lt, lg = self._loc(theta), self._loc(g)
        lo = self._loc(out) if out is not None else None
        r = self.inner.grad_into(lt, lg, v, lo, self._scr(scratch, lt))
        if lo is not None and r.shape == lo.shape and r.data_ptr() == lo.data_ptr():
            return out  # written into out (empty tensors all have data_ptr 0: the shape decides)
        if r is lg or (r.shape == lg.shape and r.data_ptr() == lg.data_ptr()):
            return g  # B' = 1: the gradient itself
        return self._wrap(r, theta)

    def hard(self, theta):
        loc = self._loc(theta)
        h = self.inner.hard(loc)
        return self._wrap(h, theta, theta.shape[: h.dim()])

    def reencode(self, theta, old, new):
        return self._wrap(self.inner.reencode(self._loc(theta), old, new), theta)

    def _in_place(self, fn, theta, old, new, scratch):
        """Run the inner in-place re-encoding ``fn`` on ``theta``'s local shard; return ``theta``."""
        if type(theta) in PLAIN:
            fn(theta, old, new, scratch)
            return theta
        lt = self._loc(theta)
        fn(lt, old, new, self._scr(scratch, lt))
        return theta

    def rescale_(self, theta, old, new, scratch=None):
        return self._in_place(self.inner.rescale_, theta, old, new, scratch)

    def reencode_(self, theta, old, new, scratch=None):
        return self._in_place(self.inner.reencode_, theta, old, new, scratch)

    def reencode_project_into(self, theta, v, out, scratch):
        if type(theta) in PLAIN and type(out) in PLAIN:
            return self.inner.reencode_project_into(theta, v, out, scratch)
        lt = self._loc(theta)
        return self.inner.reencode_project_into(lt, v, self._loc(out), self._scr(scratch, lt))
