"""Transitional: the dict-keyed ``EstimatorState`` of IF-Shampoo, for old callers only.

``studies/identities.py`` builds ``EstimatorState("if_shampoo", arrays, hparams)`` by
hand and calls ``if_shampoo_update(state, G)`` / ``if_shampoo_stationarity(state, G)``.
Those calls are routed through the typed API (:func:`~precond_lab.online.if_shampoo`,
:class:`~precond_lab.online.IFShampooState`), so the numbers are the typed estimator's.
New code uses the typed API; this module goes once that caller has moved.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from ._rootfree import IFShampooState, if_shampoo
from ._rootfree import if_shampoo_stationarity as _stationarity

__all__ = ["EstimatorState", "if_shampoo_stationarity", "if_shampoo_update"]

_IF_HPARAMS = ("beta2", "alpha2", "damping", "batch_size", "normalize")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class EstimatorState:
    """Deprecated dict-keyed state: ``arrays`` (dict of arrays) and static ``hparams``."""

    kind: str
    arrays: dict[str, jax.Array]
    hparams: tuple[tuple[str, Any], ...]

    def tree_flatten(self):
        keys = tuple(sorted(self.arrays))
        return tuple(self.arrays[k] for k in keys), (self.kind, keys, self.hparams)

    @classmethod
    def tree_unflatten(cls, aux, children):
        kind, keys, hparams = aux
        return cls(kind, dict(zip(keys, children, strict=True)), hparams)

    @property
    def hp(self) -> dict[str, Any]:
        """The hyper-parameters as a dict."""
        return dict(self.hparams)

    def __getitem__(self, key: str) -> jax.Array:
        return self.arrays[key]


def _typed(state: EstimatorState) -> IFShampooState:
    if state.kind != "if_shampoo":
        raise TypeError(f"only IF-Shampoo's legacy state is supported; got {state.kind!r}")
    a = state.arrays
    return IFShampooState(a["c"], a["k"], a["mc"], a["mk"], a["step"])


def if_shampoo_update(state: EstimatorState, g: jax.Array) -> EstimatorState:
    """One IF-Shampoo step on a legacy state (hyper-parameters from ``state.hparams``).

    Args:
        state: a legacy ``EstimatorState("if_shampoo", ...)``.
        g: a gradient ``(m, n)`` or per-example batch ``(N, m, n)``.

    Returns:
        The updated legacy state.
    """
    hp = state.hp
    est = if_shampoo(**{k: hp[k] for k in _IF_HPARAMS if k in hp})
    new = est.update(_typed(state), g)
    arrays = {"c": new.c, "k": new.k, "mc": new.momentum_c, "mk": new.momentum_k}
    return EstimatorState(state.kind, {**arrays, "step": new.step}, state.hparams)


def if_shampoo_stationarity(
    state, g: jax.Array, *, damping: float | None = None, batch_size: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """IF-Shampoo's ``(m_C, m_K)`` targets for a typed or a legacy state.

    For an :class:`~precond_lab.online.IFShampooState` ``damping`` is required (and
    ``batch_size`` defaults to 1); a legacy state brings both in its ``hparams``.

    Args:
        state: :class:`~precond_lab.online.IFShampooState` or a legacy ``EstimatorState``.
        g: a gradient ``(m, n)`` or per-example batch ``(N, m, n)``.
        damping: ``λ``.
        batch_size: ``B`` for single mini-batch gradients.

    Returns:
        ``(m_C, m_K)``.

    Raises:
        TypeError: a typed state without ``damping``.
    """
    if isinstance(state, EstimatorState):
        hp = state.hp
        damping = hp["damping"] if damping is None else damping
        batch_size = hp["batch_size"] if batch_size is None else batch_size
        state = _typed(state)
    if damping is None:
        raise TypeError("if_shampoo_stationarity needs damping= for an IFShampooState")
    return _stationarity(
        state, g, damping=damping, batch_size=1 if batch_size is None else batch_size
    )
