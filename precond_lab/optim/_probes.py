"""The stability probe of SPlus against Shampoo with long-cached roots (claim P6-52)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._factories import shampoo, splus

__all__ = ["cached_root_probe"]


def cached_root_probe(
    m: int = 6, n: int = 6, seen_steps: int = 50, seen_rank: int = 2, seed: int = 4
) -> dict[str, float]:
    """The last direction's norm of SPlus and Shampoo after a gradient their cache never saw.

    ``seen_steps`` gradients ``U_s X V_sᵀ`` in a ``seen_rank``-dimensional pair of subspaces
    (``U_s``, ``V_s``: the first columns of random orthogonal ``U``, ``V``; ``X`` Gaussian),
    with bases and roots computed at step 1 and cached (refresh period 1000), then one
    gradient in the last ``seen_rank`` columns, which the statistics never saw. Learning rate
    1, so the update is the direction. SPlus's direction has entries ``±2/(m+n)`` in its
    basis (``‖D‖_F ≤ 2√(mn)/(m+n)``); Shampoo's cached ``(S + δI)^{-1/2}`` (``δ = 1e-12``, no
    grafting, no momentum) multiplies the unseen directions by ``δ^{-1/2}``.

    Returns:
        ``{"splus", "shampoo", "unseen", "bound"}``: the two directions' Frobenius norms,
        the unseen gradient's, and SPlus's bound ``2√(mn)/(m+n)``.
    """
    if 2 * seen_rank > min(m, n):
        raise ValueError(f"seen_rank {seen_rank} needs 2·seen_rank ≤ min(m, n) = {min(m, n)}")
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((m, m)))[0]
    v = np.linalg.qr(rng.standard_normal((n, n)))[0]
    k = seen_rank
    seen = [u[:, :k] @ rng.standard_normal((k, k)) @ v[:, :k].T for _ in range(seen_steps)]
    unseen = u[:, -k:] @ rng.standard_normal((k, k)) @ v[:, -k:].T
    params = jnp.zeros((m, n))

    def last_norm(tx) -> float:
        state, update = tx.init(params), jax.jit(tx.update)
        for g in [*seen, unseen]:
            d, state = update(jnp.asarray(g), state, params)
        return float(np.linalg.norm(np.asarray(d)))

    return {
        "splus": last_norm(splus(1.0, inverse_every=1000, weight_decay=0.0)),
        "shampoo": last_norm(shampoo(1.0, frequency=1000, graft=False, b1=0.0, damping=1e-12)),
        "unseen": float(np.linalg.norm(unseen)),
        "bound": 2 * np.sqrt(m * n) / (m + n),
    }
