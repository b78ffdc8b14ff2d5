"""Spectra of targets and approximations, for plots and spectral comparisons."""

from __future__ import annotations

import jax.numpy as jnp

from .._validation import check_number
from ..structures import Structure
from ..targets import as_target

__all__ = ["spectrum"]


def spectrum(x, *, k: int | None = None, weights=None, center=False, chunk_size=None):
    """All ``mn`` eigenvalues in descending order (or the top ``k``).

    Args:
        x: a structure (its eigenvalues are exact products / corrected values), or a
            target: per-example matrices, a DataArray, or a Target. A target's
            eigenvalues come from the Gram matrix of its samples (or its explicit
            matrix); the ``mn − r`` eigenvalues of the null space (zero, or ``λ`` for a
            damped target) are appended.
        k: keep only the ``k`` largest (an integer ``≥ 1``).

    Raises:
        ValueError: ``k`` is not an integer ``≥ 1``.
        TypeError: ``k`` is not an integer ``≥ 1``.
    """
    if k is not None:
        k = check_number(k, "k", low=1, integer=True)
    if isinstance(x, Structure):
        vals = jnp.sort(x.eigenvalues().reshape(-1))[::-1]
    else:
        t = as_target(x, weights, center=center, chunk_size=chunk_size)
        spec = t.eigh()
        fill = jnp.full(spec.dim - spec.rank, spec.floor, t.dtype)  # 0, or λ when damped
        vals = jnp.concatenate([spec.values, fill])
        vals = jnp.sort(vals)[::-1]
    return vals if k is None else vals[:k]
