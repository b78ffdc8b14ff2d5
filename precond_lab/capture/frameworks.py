"""Model objects of JAX frameworks as ``(apply_fn, params, layout)`` for capture.

``as_apply`` turns a Flax NNX module, a Flax Linen module (with its variables), an
Equinox module or a plain ``apply_fn`` into a batched ``apply_fn(params, x_batch)``, the
parameter pytree that capture differentiates, and the framework's layout preset
(``LAYOUTS``): ``"flax"`` kernels are ``(in, out)`` /
HWIO, ``"torch"`` (Equinox, as PyTorch) weights ``(out, in)`` / OIHW. Neither framework
is imported unless the object comes from it.

The same module structure gives the same ``apply_fn`` object (see ``.cache``), so
captures of a model whose parameters changed (training, another seed) reuse their
compiled functions: an Equinox module's static part and an NNX module's graph decide it
(an NNX module with non-parameter state, e.g. batch statistics, gets a new function
each time, since that state is part of it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax

from .cache import cached

__all__ = ["as_apply", "framework_of"]


def framework_of(model: Any) -> str | None:
    """``"flax.nnx"``, ``"flax.linen"``, ``"equinox"`` or None (a plain function)."""
    if "flax" in sys.modules:
        from flax import linen, nnx

        if isinstance(model, nnx.Module):
            return "flax.nnx"
        if isinstance(model, linen.Module):
            return "flax.linen"
    if "equinox" in sys.modules:
        import equinox as eqx

        if isinstance(model, eqx.Module):
            return "equinox"
    return None


def as_apply(model: Any, params: Any = None) -> tuple[Callable, Any, str]:
    """``(apply_fn, params, layout)`` for a framework model or a plain function.

    Args:
        model: a Flax NNX module (its ``nnx.Param`` state is differentiated, other state
            is held fixed), a Flax Linen module (``params`` = its variables), an Equinox
            module (applied per example with ``jax.vmap``; its inexact arrays are the
            parameters) or a function ``apply_fn(params, x_batch)``.
        params: Linen variables or the plain function's parameters; None for NNX/Equinox.

    Raises:
        ValueError: ``params`` missing for a Linen module or a function, or given for an
            NNX/Equinox module (whose parameters live in the object).
    """
    kind = framework_of(model)
    if kind in ("flax.nnx", "equinox") and params is not None:
        raise ValueError(f"a {kind} model holds its parameters; do not pass params")
    if kind == "flax.nnx":
        from flax import nnx

        graphdef, state, rest = nnx.split(model, nnx.Param, ...)

        def apply_nnx(p, xb):
            return nnx.merge(graphdef, p, rest)(xb)

        if jax.tree_util.tree_leaves(rest):  # state outside the graph: a new function
            return apply_nnx, state, "flax"
        return cached(("nnx_apply", graphdef), lambda: apply_nnx), state, "flax"
    if kind == "equinox":
        import equinox as eqx

        arrays, static = eqx.partition(model, eqx.is_inexact_array)

        def apply_eqx(p, xb):
            return jax.vmap(eqx.combine(p, static))(xb)

        leaves, tree = jax.tree_util.tree_flatten(static)  # unhashable leaves: no caching
        return cached(("eqx_apply", tree, tuple(leaves)), lambda: apply_eqx), arrays, "torch"
    if params is None:
        what = "a Flax Linen module" if kind == "flax.linen" else "a plain apply function"
        raise ValueError(f"{what} needs params= (its variables / parameter pytree)")
    if kind == "flax.linen":
        return model.apply, params, "flax"
    if not callable(model):
        raise ValueError(
            f"model must be a Flax NNX/Linen or Equinox module or a function "
            f"apply_fn(params, x_batch); got {type(model).__name__}"
        )
    return model, params, "auto"
