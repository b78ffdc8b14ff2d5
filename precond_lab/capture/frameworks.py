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

Only parameters are captured and trained: an NNX module's ``nnx.Param`` state, a Linen
module's ``params`` collection (``batch_stats`` and other collections are held fixed). A
module in training mode (BatchNorm updating its statistics, Dropout drawing masks) cannot
be differentiated per example: it raises ``UnsupportedModelError`` saying to call
``model.eval()`` (NNX) or apply it in evaluation mode (Linen).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax

from ..errors import UnsupportedModelError
from .cache import cached

_EVAL_HINT = {
    "flax.nnx": "call `model.eval()` before capture (and `model.train()` after, to go on training)",
    "flax.linen": "apply it in evaluation mode (e.g. BatchNorm(use_running_average=True), "
    "Dropout(deterministic=True))",
}


def _training_mode_error(kind: str, err: BaseException) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"the {kind} model changes its own state while it is traced ({type(err).__name__}: "
        f"{str(err).splitlines()[0]}): a BatchNorm or Dropout in training mode cannot be "
        f"differentiated per example; {_EVAL_HINT[kind]}."
    )


def _guarded(kind: str, fn: Callable) -> Callable:
    """``fn`` with flax's training-mode errors turned into ``UnsupportedModelError``."""
    from flax import errors as flax_errors

    caught = tuple(
        getattr(flax_errors, name)
        for name in ("TraceContextError", "ModifyScopeVariableError")
        if hasattr(flax_errors, name)
    )

    def apply(p, xb):
        try:
            return fn(p, xb)
        except caught as err:
            raise _training_mode_error(kind, err) from err

    return apply


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
            Of Linen variables only the ``params`` collection is differentiated (and
            trained); ``batch_stats`` and other collections are held fixed.

    Raises:
        ValueError: ``params`` missing for a Linen module or a function, or given for an
            NNX/Equinox module (whose parameters live in the object).
        UnsupportedModelError: (when the returned function is traced) a Flax module in
            training mode: the message says to call ``model.eval()``.
    """
    kind = framework_of(model)
    if kind in ("flax.nnx", "equinox") and params is not None:
        raise ValueError(f"a {kind} model holds its parameters; do not pass params")
    if kind == "flax.nnx":
        from flax import nnx

        graphdef, state, rest = nnx.split(model, nnx.Param, ...)

        def apply_nnx(p, xb):
            return nnx.merge(graphdef, p, rest)(xb)

        apply_nnx = _guarded(kind, apply_nnx)
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
        if isinstance(params, Mapping) and "params" in params and len(params) > 1:
            # variables with batch_stats & co: only the "params" collection is a parameter
            fixed = {k: v for k, v in params.items() if k != "params"}

            def apply_linen(p, xb):
                return model.apply({**fixed, **p}, xb)

            return _guarded(kind, apply_linen), {"params": params["params"]}, "flax"
        return _guarded(kind, model.apply), params, "flax"
    if not callable(model):
        raise ValueError(
            f"model must be a Flax NNX/Linen or Equinox module or a function "
            f"apply_fn(params, x_batch); got {type(model).__name__}"
        )
    return model, params, "auto"
