"""Helpers shared by the estimator modules."""

from __future__ import annotations

import numpy as np

from ..targets import Target, as_target

__all__ = ["target_of", "default_tol"]


def target_of(samples, weights=None, center: bool = False, chunk_size: int | None = None) -> Target:
    """The ``Target`` behind an estimator's input."""
    return as_target(samples, weights, center=center, chunk_size=chunk_size)


def default_tol(dtype) -> float:
    """A relative stopping tolerance that the dtype can reach (1e-12 in float64)."""
    eps = float(np.finfo(np.dtype(dtype)).eps)
    return max(1e-12, 100 * eps) if eps < 1e-10 else max(1e-5, 100 * eps)
