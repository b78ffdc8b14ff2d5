"""Layer discovery: K-FAC factors for any JAX apply function, found in its jaxpr.

``discover`` traces ``apply_fn(params, x)`` on a one-example batch to a jaxpr and
matches the equations that make a Kronecker-factored layer:

* ``dot_general`` with exactly one operand a parameter leaf (directly, or through
  ``transpose``/``convert_element_type``/``copy``) and no batch dimensions on the parameter
  side — a dense layer. The parameter's contracted axes are its input side, the free axes
  its output side, so ``W`` is matricized with rows = output axes whatever the framework's
  layout (Flax ``(in, out)``, Equinox/PyTorch ``(out, in)``, ``DenseGeneral`` kernels);
  the other operand's free axes are the shared positions (tokens, …);
* ``conv_general_dilated`` with a parameter kernel (``feature_group_count = 1``) — a
  convolution: rows = the kernel's output-feature axis, columns = input features and the
  window, activations the input's patches (``conv_general_dilated_patches``), positions the
  output pixels;
* a bias: an ``add`` of a parameter leaf (through reshapes/broadcasts) to a matched output
  (through reshapes/transposes/squeezes), with one element per output feature.

``kfac_model`` returns a ``Model`` whose ``apply``
re-evaluates that jaxpr, records each matched layer's activations ``a`` (``(in,)`` or
``(position, in)``, columns in the layout's order) and adds a zero perturbation, shaped
``(out,)`` or ``(position, out)``, to its output — the ``Tape`` contract, so the capture
engine's one ``jax.vjp`` gives the backprops ``δ`` for the real labels (empirical), the
columns of ``Λ^{1/2}`` (exact GGN) and sampled labels (MC), and ``G = Σ_r δ_r a_rᵀ`` holds
exactly for every per-example gradient (this is the trick kfac-jax uses). Shared axes are
kept as the ``position`` dim, so both of Eschenhagen et al.'s expand and reduce variants
are available downstream. Calls to ``jit``-ed sub-functions are followed inside.

A parameter used by two matched equations (tied weights) is rejected for K-FAC: its
gradient is not one ``δ aᵀ`` sum of the form above.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from ..errors import UnsupportedModelError
from .cache import cached, param_signature
from .layout import LayoutWarning, col_axes_for, flat_params, preset_row_axes
from .models import Model

__all__ = ["Layer", "DiscoveredModel", "discover", "kfac_model", "user_model"]

_CALLS = ("pjit", "jit", "closed_call", "core_call")
_AXIS_OPS = ("convert_element_type", "copy", "copy_p")  # keep every axis
_SHAPE_OPS = ("reshape", "squeeze", "expand_dims", "broadcast_in_dim", *_AXIS_OPS)
_FOLLOW_OPS = ("reshape", "squeeze", "expand_dims", "transpose", *_AXIS_OPS)


@dataclasses.dataclass(frozen=True)
class Layer:
    """One discovered Kronecker-factored layer.

    Attributes:
        name: the weight's parameter path (also the layer's tape name).
        kind: ``"dense"`` or ``"conv"``.
        weight: the weight's parameter path.
        bias: the bias's parameter path, or None.
        row_axes: the weight axes forming rows (the output side).
        col_axes: the weight axes forming columns, in column order.
        matrix_shape: ``(m, n)`` of the matricized weight.
        positions: shared positions per example (1 = none).
    """

    name: str
    kind: str
    weight: str
    bias: str | None
    row_axes: tuple[int, ...]
    col_axes: tuple[int, ...]
    matrix_shape: tuple[int, int]
    positions: int

    @property
    def meaning(self) -> str:
        """A one-line description of the matricization."""
        m, n = self.matrix_shape
        return (
            f"{self.kind} layer {self.name}: rows = output axes {self.row_axes}, "
            f"cols = input axes {self.col_axes} ({m}x{n}), {self.positions} position(s)"
        )


@dataclasses.dataclass(frozen=True)
class _Plan:
    layer: Layer
    w_side: int  # dense: which operand is the weight (0 lhs, 1 rhs)
    a_perm: tuple[int, ...]  # activation operand → (free..., contracted in column order)
    a_free_shape: tuple[int, ...]
    out_perm: tuple[int, ...]  # (free..., rows) array → the equation's output
    row_shape: tuple[int, ...]
    conv: dict | None = None


@dataclasses.dataclass(frozen=True)
class DiscoveredModel(Model):
    """A ``Model`` built by ``kfac_model``; ``layers`` lists what was found.

    ``kfac_skipped`` lists ``(parameter path, reason)`` of weights that have no K-FAC
    factors although they feed dense/conv operations (a weight used more than once);
    ``skipped_row_axes`` their output side (rows) as found in the graph.
    """

    layers: tuple[Layer, ...] = ()
    kfac_skipped: tuple[tuple[str, str], ...] = ()
    skipped_row_axes: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def kfac_owners(self) -> dict[str, tuple[str, bool]]:
        """``{parameter path: (layer name, is_bias)}`` for every weight and bias found."""
        out = {}
        for lay in self.layers:
            out[lay.weight] = (lay.name, False)
            if lay.bias is not None:
                out[lay.bias] = (lay.name, True)
        return out


def _trace(apply_fn, params, x1):
    try:
        closed = jax.make_jaxpr(apply_fn)(params, x1)
    except (TypeError, ValueError) as err:  # e.g. params of another model: a shape mismatch
        if isinstance(err, UnsupportedModelError):
            raise
        shapes = {p: tuple(np.shape(v)) for p, v in flat_params(params).items()}
        raise UnsupportedModelError(
            f"the model's apply function failed on one example of x (shape "
            f"{tuple(np.shape(x1))}) with the given parameters {shapes}: "
            f"{type(err).__name__}: {str(err).rstrip('.')}. Check that params belong to this "
            f"model and that x has its input shape."
        ) from err
    n = len(jax.tree_util.tree_leaves(params))
    return closed, n


def _origins(jaxpr, leaf_paths: Mapping[Any, str]):
    """Per variable: the parameter it is (``exact``: path, axis map) or derives from (loose)."""
    exact = {v: (p, tuple(range(v.aval.ndim))) for v, p in leaf_paths.items()}
    loose = dict(leaf_paths)
    for eqn in jaxpr.eqns:
        if len(eqn.invars) != 1 or isinstance(eqn.invars[0], Literal):
            continue
        v, name = eqn.invars[0], eqn.primitive.name
        if v in exact and name in _AXIS_OPS:
            exact[eqn.outvars[0]] = exact[v]
        elif v in exact and name == "transpose":
            p, axes = exact[v]
            exact[eqn.outvars[0]] = (p, tuple(axes[k] for k in eqn.params["permutation"]))
        if v in loose and name in _SHAPE_OPS:
            loose[eqn.outvars[0]] = loose[v]
    return exact, loose


def _consumers(jaxpr):
    out: dict[Any, list] = {}
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if not isinstance(v, Literal):
                out.setdefault(v, []).append(eqn)
    return out


def _find_bias(var, consumers, loose, sizes, m):
    """The bias parameter added to ``var`` (through shape-only ops), or None."""
    for _ in range(16):
        uses = consumers.get(var, [])
        if len(uses) != 1:
            return None
        eqn = uses[0]
        if eqn.primitive.name in _FOLLOW_OPS:
            var = eqn.outvars[0]
            continue
        if eqn.primitive.name in ("add", "add_any") and len(eqn.invars) == 2:
            other = eqn.invars[1] if eqn.invars[0] is var else eqn.invars[0]
            if not isinstance(other, Literal) and other in loose and sizes[loose[other]] == m:
                return loose[other]
        return None
    return None


def _dense_plan(eqn, w_side, path, axes, param_shape) -> _Plan | None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if lb or rb:
        return None
    w_contract, a_contract = (lc, rc) if w_side == 0 else (rc, lc)
    w_aval = eqn.invars[w_side].aval
    a_aval = eqn.invars[1 - w_side].aval
    w_free = [d for d in range(w_aval.ndim) if d not in w_contract]
    rows = tuple(sorted(axes[d] for d in w_free))
    nd = len(param_shape)
    cols = col_axes_for(nd, rows)
    pair = {axes[wd]: ad for wd, ad in zip(w_contract, a_contract, strict=True)}
    if set(pair) != set(cols):
        return None
    a_free = [d for d in range(a_aval.ndim) if d not in a_contract]
    a_perm = (*a_free, *(pair[c] for c in cols))
    a_free_shape = tuple(a_aval.shape[d] for d in a_free)
    # the (free..., rows) array → output order (lhs free, rhs free)
    w_labels = [len(a_free) + rows.index(axes[d]) for d in w_free]
    a_labels = list(range(len(a_free)))
    out_perm = tuple(w_labels + a_labels if w_side == 0 else a_labels + w_labels)
    m = math.prod(param_shape[a] for a in rows)
    n = math.prod(param_shape[a] for a in cols)
    layer = Layer(path, "dense", path, None, rows, cols, (m, n), math.prod(a_free_shape))
    return _Plan(layer, w_side, a_perm, a_free_shape, out_perm, tuple(param_shape[a] for a in rows))


def _conv_plan(eqn, path, axes, param_shape) -> _Plan | None:
    p = eqn.params
    if p["feature_group_count"] != 1 or p["batch_group_count"] != 1:
        return None
    dn = p["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    o_axis, i_axis = axes[rhs_spec[0]], axes[rhs_spec[1]]
    sp_axes = [axes[d] for d in rhs_spec[2:]]
    rows = (o_axis,)
    cols = col_axes_for(len(param_shape), rows)
    # patches come as (C, *window) in the conv's spatial order; reorder to the columns
    patch_label = {i_axis: 0, **{a: 1 + k for k, a in enumerate(sp_axes)}}
    out_aval = eqn.outvars[0].aval
    out_sp = tuple(out_aval.shape[d] for d in out_spec[2:])
    nsp = len(out_sp)
    out_perm = [0] * (nsp + 2)
    out_perm[out_spec[0]] = 0
    out_perm[out_spec[1]] = nsp + 1
    for k, d in enumerate(out_spec[2:]):
        out_perm[d] = 1 + k
    m, n = param_shape[o_axis], math.prod(param_shape[a] for a in cols)
    layer = Layer(path, "conv", path, None, rows, cols, (m, n), math.prod(out_sp))
    conv = {
        "params": {k: p[k] for k in ("window_strides", "padding", "lhs_dilation", "rhs_dilation")},
        "lhs_spec": tuple(lhs_spec),
        "window": tuple(param_shape[a] for a in sp_axes),
        "col_perm": tuple(patch_label[c] for c in cols),
        "out_sp": out_sp,
    }
    return _Plan(layer, 1, (), (1, *out_sp), tuple(out_perm), (m,), conv)


def _analyse(closed, leaf_paths, sizes, shapes, plans, used):
    jaxpr = closed.jaxpr
    exact, loose = _origins(jaxpr, leaf_paths)
    consumers = _consumers(jaxpr)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _CALLS:
            sub = eqn.params["jaxpr"]
            inner = {
                iv: loose[v]
                for v, iv in zip(eqn.invars, sub.jaxpr.invars, strict=True)
                if not isinstance(v, Literal)
                and v in exact
                and exact[v][1] == tuple(range(v.aval.ndim))
            }
            _analyse(sub, inner, sizes, shapes, plans, used)
            continue
        plan = None
        if name == "dot_general":
            sides = [
                i for i, v in enumerate(eqn.invars) if not isinstance(v, Literal) and v in exact
            ]
            if len(sides) == 1:
                path, axes = exact[eqn.invars[sides[0]]]
                plan = _dense_plan(eqn, sides[0], path, axes, shapes[path])
        elif name == "conv_general_dilated":
            v = eqn.invars[1]
            if not isinstance(v, Literal) and v in exact and eqn.invars[0] not in exact:
                path, axes = exact[v]
                plan = _conv_plan(eqn, path, axes, shapes[path])
        if plan is None:
            continue
        path = plan.layer.weight
        used[path] = used.get(path, 0) + 1
        bias = _find_bias(eqn.outvars[0], consumers, loose, sizes, plan.layer.matrix_shape[0])
        plans[id(eqn)] = dataclasses.replace(plan, layer=dataclasses.replace(plan.layer, bias=bias))


def _plans(apply_fn, params, x1) -> tuple[Any, int, dict[int, _Plan], dict[str, tuple]]:
    closed, nleaves = _trace(apply_fn, params, x1)
    flat = flat_params(params)
    paths = list(flat)
    leaf_paths = dict(zip(closed.jaxpr.invars[:nleaves], paths, strict=True))
    sizes = {p: math.prod(leaf.shape) for p, leaf in flat.items()}
    shapes = {p: tuple(leaf.shape) for p, leaf in flat.items()}
    plans: dict[int, _Plan] = {}
    used: dict[str, int] = {}
    _analyse(closed, leaf_paths, sizes, shapes, plans, used)
    tied = {p: c for p, c in sorted(used.items()) if c > 1}
    # a weight used by several dense/conv operations (tied or shared) has no single pair of
    # K-FAC factors: it stays a plain parameter (gradients and GGN are captured for it)
    rows = {v.layer.weight: v.layer.row_axes for v in plans.values() if v.layer.weight in tied}
    plans = {k: v for k, v in plans.items() if v.layer.weight not in tied}
    return closed, nleaves, plans, {p: (c, rows[p]) for p, c in tied.items()}


def discover(apply_fn: Callable, params, x) -> tuple[Layer, ...]:
    """The dense and convolution layers of ``apply_fn(params, x)`` (see the module docstring).

    Args:
        apply_fn: ``(params, x_batch) -> outputs``; it is traced, not run.
        params: the parameter pytree (only shapes and dtypes are used).
        x: a batch of inputs (its first example is used for tracing).

    Returns:
        The layers in the order their equations appear.
    """
    _, _, plans, _ = _plans(apply_fn, params, jnp.asarray(x)[:1])
    return tuple(p.layer for p in plans.values())


def _activations(plan: _Plan, invals):
    if plan.conv is None:
        a = invals[1 - plan.w_side].transpose(plan.a_perm)
        a = a.reshape(plan.layer.positions, plan.layer.matrix_shape[1])
    else:
        c = plan.conv
        lhs = invals[0].transpose(c["lhs_spec"])  # (N, C, *spatial)
        p = c["params"]
        patches = jax.lax.conv_general_dilated_patches(
            lhs,
            c["window"],
            p["window_strides"],
            p["padding"],
            lhs_dilation=p["lhs_dilation"],
            rhs_dilation=p["rhs_dilation"],
        )  # (N, C·window, *out_sp)
        nsp = len(c["out_sp"])
        patches = patches.reshape(lhs.shape[0], lhs.shape[1], *c["window"], *c["out_sp"])
        perm = (0, *(2 + len(c["window"]) + k for k in range(nsp)), *(1 + q for q in c["col_perm"]))
        a = patches.transpose(perm).reshape(plan.layer.positions, plan.layer.matrix_shape[1])
    return a[0] if plan.layer.positions == 1 else a


def _add_perturbation(plan: _Plan, out, e):
    e = e.reshape(*plan.a_free_shape, *plan.row_shape)
    if plan.conv is not None:
        e = e.reshape(1, *plan.conv["out_sp"], plan.layer.matrix_shape[0])
    return out + e.transpose(plan.out_perm).astype(out.dtype)


def _interpret(closed, args, plans, tape):
    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    jaxpr = closed.jaxpr
    for v, val in zip(jaxpr.constvars, closed.consts, strict=True):
        env[v] = val
    for v, val in zip(jaxpr.invars, args, strict=True):
        env[v] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if eqn.primitive.name in _CALLS:
            outs = _interpret(eqn.params["jaxpr"], invals, plans, tape)
        else:
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            if not eqn.primitive.multiple_results:
                outs = [outs]
            plan = plans.get(id(eqn))
            if plan is not None and tape is not None:
                name = plan.layer.name
                a = _activations(plan, invals)
                tape.inputs[name] = a
                m = plan.layer.matrix_shape[0]
                shape = (m,) if plan.layer.positions == 1 else (plan.layer.positions, m)
                tape.output_shapes[name] = shape
                if name in tape.perturbations:
                    outs = [_add_perturbation(plan, outs[0], tape.perturbations[name])]
        for v, val in zip(eqn.outvars, outs, strict=True):
            env[v] = val
    return [read(v) for v in jaxpr.outvars]


def kfac_model(
    apply_fn: Callable,
    params,
    x,
    loss: str,
    *,
    name: str = "user",
) -> DiscoveredModel:
    """A capture ``Model`` for ``apply_fn`` with K-FAC factors for its discovered layers.

    Args:
        apply_fn: ``(params, x_batch) -> outputs (B, C)``.
        params: the parameter pytree (its structure and shapes are fixed by the trace).
        x: a batch of inputs (shape of one example is taken from it).
        loss: ``"cross_entropy"`` or ``"mse"``.
        name: model name stored as provenance.

    The trace is done once per ``apply_fn`` (by identity), parameter structure, input
    shape, loss and name (see ``.cache``): a later call reuses the same ``apply``, so
    captures of it share their compiled functions; ``init`` returns this call's ``params``.

    Raises:
        ValueError: when no dense or convolution layer with a parameter weight is found.
    """
    x1 = jnp.asarray(np.asarray(x)[:1])  # sliced on the host: no slicing kernel
    key = ("kfac_model", apply_fn, param_signature(params), x1.shape, str(x1.dtype), loss, name)
    model = cached(key, lambda: _kfac_model(apply_fn, params, x1, loss, name))
    return dataclasses.replace(model, init=lambda key: params)


def _kfac_model(apply_fn, params, x1, loss, name) -> DiscoveredModel:
    closed, nleaves, plans, tied = _plans(apply_fn, params, x1)
    skipped = tuple((p, _tied_reason(c)) for p, (c, _) in tied.items())
    if not plans:
        also = f" ({', '.join(f'{p}: {why}' for p, why in skipped)})" if skipped else ""
        raise ValueError(
            f"no dense (dot_general) or convolution layer with a parameter weight used once "
            f"was found in model {name!r}{also}; K-FAC targets need at least one"
        )
    found = tuple(p.layer for p in plans.values())

    def apply(p, xi, tape=None):
        leaves = jax.tree_util.tree_leaves(p)
        xs = jax.tree_util.tree_leaves(xi[None])
        out = _interpret(closed, [*leaves, *xs], plans, tape)
        return out[0][0]

    return DiscoveredModel(
        name,
        _init_placeholder,  # replaced by each kfac_model call (the cache keeps no params)
        apply,
        loss,
        {"user": name},
        layers=found,
        kfac_skipped=skipped,
        skipped_row_axes=tuple((p, rows) for p, (_, rows) in tied.items()),
    )


def _tied_reason(count: int) -> str:
    return (
        f"used by {count} dense/conv operations (tied or shared weights): no K-FAC factors, "
        "gradients and GGN only"
    )


def _init_placeholder(key):
    raise AssertionError("kfac_model sets each model's init to its call's params")


def user_model(
    apply_fn: Callable,
    params,
    x,
    loss: str,
    *,
    name: str = "user",
    kfac: bool = False,
    layout: str = "auto",
    row_axes: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[Model, dict[str, tuple[int, ...]]]:
    """The capture model for a user's ``apply_fn`` and the row axes of every parameter.

    Weights of discovered layers get their rows from the graph (the output side), their
    biases all their axes as rows; other ``≥ 2``-d parameters follow the ``layout`` preset;
    ``row_axes`` overrides either (not for a weight whose K-FAC factors are captured).

    Args:
        apply_fn: ``(params, x_batch) -> outputs (B, C)``.
        params: the parameter pytree.
        x: a batch of inputs.
        loss: ``"cross_entropy"`` or ``"mse"``.
        name: model name stored as provenance.
        kfac: K-FAC targets are requested (discovery must then find a layer).
        layout: ``"auto"``, ``"flax"`` or ``"torch"`` (see ``.layout``).
        row_axes: explicit per-parameter overrides.

    Raises:
        ValueError: no layer found while ``kfac``; an override that contradicts the graph
            for a K-FAC layer; an unknown ``layout``.
    """
    overrides = {p: tuple(a) for p, a in (row_axes or {}).items()}
    flat = flat_params(params)
    rows = {}
    for p, leaf in flat.items():
        preset = preset_row_axes(leaf.shape, layout)
        if preset is not None:
            rows[p] = preset
    try:
        model: Model = kfac_model(apply_fn, params, x, loss, name=name)
    except Exception as e:  # noqa: BLE001  (without K-FAC, discovery only picks layouts)
        if kfac or isinstance(e, UnsupportedModelError):
            raise
        if not isinstance(e, ValueError):
            warnings.warn(
                f"layer discovery failed ({type(e).__name__}: {e}); parameters follow the "
                f"{layout!r} layout preset",
                LayoutWarning,
                stacklevel=3,
            )
        per_example = cached(("per_example", apply_fn), lambda: _per_example(apply_fn))
        model = Model(name, lambda key: params, per_example, loss, {"user": name})
    rows.update(dict(getattr(model, "skipped_row_axes", ())))
    for lay in getattr(model, "layers", ()):
        rows[lay.weight] = lay.row_axes
        if lay.bias is not None:
            rows[lay.bias] = tuple(range(len(flat[lay.bias].shape)))
        want = overrides.get(lay.weight)
        if kfac and want is not None and want != lay.row_axes:
            raise ValueError(
                f"row_axes {want} for {lay.weight!r} contradict its {lay.kind} layer, whose "
                f"output side is axes {lay.row_axes}; K-FAC factors need those rows"
            )
    return model, {**rows, **overrides}


def _per_example(apply_fn):
    def apply(p, xi, tape=None):
        return apply_fn(p, xi[None])[0]

    return apply
