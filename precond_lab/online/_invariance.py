"""Root-free specifics of P2: the batch-size factor ``B`` and the initialisation ``s₀``."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from ._estimators import ESTIMATORS

__all__ = ["batch_size_response", "initialisation_response"]


def batch_size_response(
    samples,
    batch_sizes: Sequence[int],
    *,
    steps: int = 200,
    beta2: float = 0.05,
    scale_by_batch: bool = True,
    seed: int = 0,
) -> dict[int, float]:
    """Stationary level of RF-RMSProp's ``s`` when fed mini-batch means of size ``B``.

    Mini-batches are drawn with replacement from ``samples`` (``(N, m, n)``); for
    zero-mean per-example gradients (sampled labels) ``E[B ḡ⊙ḡ] = E[g⊙g]``, so with
    ``scale_by_batch`` the level is independent of ``B``; without it, it falls like
    ``1/B`` and so would the effective learning rate of ``g/(s+λ)``.

    Returns:
        ``{B: mean over entries and the last half of the steps of s}``.
    """
    x = jnp.asarray(samples)
    rng = np.random.default_rng(seed)
    out = {}
    for bsz in batch_sizes:
        idx = rng.integers(0, x.shape[0], size=(steps, int(bsz)))
        means = x[idx].mean(axis=1)
        est = ESTIMATORS["rf_rmsprop"](
            beta2=beta2, batch_size=int(bsz), s0=0.0, scale_by_batch=scale_by_batch
        )
        state = est.init(means[0])
        levels = []
        for t in range(1, steps):
            state = est.update(state, means[t])
            if t >= steps // 2:
                levels.append(float(jnp.mean(state.s)))
        out[int(bsz)] = float(np.mean(levels))
    return out


def initialisation_response(
    gradients,
    s0_values: Sequence[float],
    *,
    beta2: float = 0.01,
    damping: float = 1e-8,
    batch_size: int = 1,
) -> dict[float, np.ndarray]:
    """Norm of the RF-RMSProp step ``‖g_t/(s_t + λ)‖`` per step for each ``s₀``.

    With ``s₀ = 0`` the first steps divide by ``β₂·B·g² + λ`` and are huge (``≈ 1/(β₂Bg)``);
    ``s₀ = 1`` keeps them near ``‖g‖`` — why P2 calls ``s₀ = 1`` essential.

    Args:
        gradients: ``(T, m, n)`` gradients.
        s0_values: initial values to compare.
        beta2: RF-RMSProp hyper-parameters.
        damping: RF-RMSProp hyper-parameters.
        batch_size: RF-RMSProp hyper-parameters.

    Returns:
        ``{s₀: (T,) step norms}``.
    """
    x = jnp.asarray(gradients)
    out = {}
    for s0 in s0_values:
        est = ESTIMATORS["rf_rmsprop"](beta2=beta2, batch_size=batch_size, s0=float(s0))
        state = est.init(x[0])
        norms = [float(jnp.linalg.norm(x[0] / (state.s + damping)))]
        for t in range(1, x.shape[0]):
            state = est.update(state, x[t])
            norms.append(float(jnp.linalg.norm(x[t] / (state.s + damping))))
        out[float(s0)] = np.asarray(norms)
    return out
