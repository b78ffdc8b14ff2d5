"""A stationary non-Kronecker gradient set, and an online estimator fed its expectation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..structures import Structure
from ._state import OnlineEstimator

__all__ = ["run_full_batch", "stationary_set"]


def stationary_set(m: int, n: int, samples: int, seed: int = 0) -> jnp.ndarray:
    """``(samples, m, n)`` matrices ``G = A Z B + E`` (float64 when x64 is on).

    ``A``, ``B``, ``Z`` standard Gaussian; ``E`` Gaussian with an entrywise scale drawn from
    ``U(0.3, 2)`` per entry (not rank one), so the second moment is not a Kronecker product.
    Drawn uniformly, the set is a stationary stream whose expectation is its mean.
    """
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((m, m)), rng.standard_normal((n, n))
    z = rng.standard_normal((samples, m, n))
    noise = rng.standard_normal((samples, m, n)) * rng.uniform(0.3, 2.0, (m, n))
    return jnp.asarray(np.einsum("ij,sjk,kl->sil", a, z, b) + noise)


def run_full_batch(estimator: OnlineEstimator, samples, steps: int) -> Structure:
    """``estimator.approximation`` after ``steps`` updates, each fed the whole set.

    The per-example batch is the stream's expectation, so the run follows the
    estimator's deterministic mean dynamics and settles on its fixed point.
    """
    samples = jnp.asarray(samples)
    state = estimator.init(samples)
    for _ in range(int(steps)):
        state = estimator.update(state, samples)
    return estimator.approximation(state)
