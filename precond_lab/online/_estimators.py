"""Online estimators: each registered method's rule fed a gradient stream.

``online.<name>(**hyper_parameters)`` builds the method's rule (``precond_lab.methods``)
with the same hyper-parameters and defaults its optimiser uses, and runs it on ``(m, n)``
gradients (mini-batch means; root-free methods scale them by ``batch_size``) or
``(N, m, n)`` per-example batches (their mean outer products). The state is an
``OnlineState``: the step counter and the very leaf state the optimiser keeps per
parameter, and ``approximation`` is the method's own reader. So a gradient stream fed to
``po.<name>`` and to ``online.<name>`` gives the same approximation (a test holds them
to 1e-12).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..methods import METHODS, OnlineState, resolve_dtype
from ..structures import Structure
from ._state import OnlineEstimator

__all__ = ["ESTIMATORS", "bregman_shampoo", "estimator"]


def _matrix(g: Any) -> jax.Array:
    g = jnp.asarray(g)
    if g.ndim not in (2, 3):
        raise ValueError(
            f"an online estimator takes a gradient (m, n) or a per-example batch (N, m, n); "
            f"got shape {tuple(g.shape)}"
        )
    if g.ndim == 3 and g.shape[0] == 0:
        raise ValueError("an empty per-example batch (N = 0) has no statistics")
    return g


@functools.cache
def _build(name: str, items: tuple[tuple[str, Any], ...]) -> OnlineEstimator:
    spec = METHODS[name]
    hyper_parameters = dict(items)
    state_dtype = hyper_parameters.get("state_dtype")
    if "tensor_mode" in hyper_parameters:
        raise ValueError("online estimators take matrices (m, n): tensor_mode does not apply")
    rule = spec.build(**hyper_parameters)

    @jax.jit
    def update(state: OnlineState, g: jax.Array) -> OnlineState:
        per_example = g.ndim == 3
        gb = (g if per_example else g[None]).astype(state.leaf.mu.dtype)
        _, leaf = rule.step(state.leaf, gb, state.count, None, per_example)
        return OnlineState(state.count + 1, leaf)

    def init(g0: jax.Array) -> OnlineState:
        g0 = _matrix(g0)
        dt = resolve_dtype(state_dtype, g0)
        leaf = rule.init(tuple(g0.shape[-2:]), dt)
        return update(OnlineState(jnp.zeros([], jnp.int32), leaf), g0)

    def checked_update(state: OnlineState, g: jax.Array) -> OnlineState:
        if not isinstance(state, OnlineState):
            raise TypeError(f"expected an OnlineState (from init), got {type(state).__name__}")
        g = _matrix(g)
        if g.shape[-2:] != state.leaf.mu.shape:
            raise ValueError(
                f"gradient of shape {tuple(g.shape[-2:])} fed to a state built for "
                f"{tuple(state.leaf.mu.shape)}: call init with this layer's first gradient"
            )
        return update(state, g)

    def approximation(state: OnlineState) -> Structure:
        return spec.approximation(state.leaf)

    return OnlineEstimator(
        init, checked_update, approximation, spec.power, internal_damping=spec.internal_damping
    )


def estimator(name: str, **hyper_parameters: Any) -> OnlineEstimator:
    """The online estimator of the registered method ``name``.

    Args:
        name: a key of ``precond_lab.methods.METHODS``.
        **hyper_parameters: the method's rule's keywords (e.g. ``shampoo_beta``,
            ``frequency``; ``batch_size`` for the root-free methods, default 1).

    Returns:
        The estimator (jitted ``update``; equal hyper-parameters share one compilation).

    Raises:
        ValueError: unknown method, or a hyper-parameter out of its range.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {tuple(METHODS)}")
    if METHODS[name].needs_batch_size:
        hyper_parameters.setdefault("batch_size", 1)
    return _build(name, tuple(sorted(hyper_parameters.items())))


def _factory(name: str) -> Callable[..., OnlineEstimator]:
    spec = METHODS[name]

    def make(**hyper_parameters: Any) -> OnlineEstimator:
        return estimator(name, **hyper_parameters)

    make.__name__ = make.__qualname__ = name
    make.__doc__ = (
        f"{spec.label}'s online estimator: ``estimator({name!r}, **hyper_parameters)``.\n\n"
        f"The keywords are ``precond_lab.methods.{spec.rule.__name__}``'s"
        + (f" (fixed: {dict(spec.fixed)})" if spec.fixed else "")
        + f"; power {spec.power:g}. Follows {spec.source}."
    )
    return make


#: name → factory ``(**hyper_parameters) -> OnlineEstimator``, one per registered method.
ESTIMATORS: dict[str, Callable[..., OnlineEstimator]] = {name: _factory(name) for name in METHODS}


def bregman_shampoo(q: float, **hyper_parameters: Any) -> OnlineEstimator:
    """Trace-power Shampoo with any power ``q`` (``kl_shampoo``'s rule; ``q = 0`` is KL)."""
    return _build("kl_shampoo", tuple(sorted({**hyper_parameters, "q": q}.items())))
