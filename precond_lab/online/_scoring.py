"""Scoring an online state as a member of the Kronecker family, against per-step targets.

``run_online`` scores ``S + λI`` against one pooled target. A study of how close the online
factors come to the batch *KL optimum* needs instead every state as a member ``A ⊗ B`` of
the family the optimum ranges over, with the damping inside the factors, and a target that
may change along the stream (a training trajectory): then the gap to the damped KL optimum
is ≥ 0 by construction, and a negative gap is an error, not a result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from ..errors import ConvergenceError
from ..structures import Kronecker
from ..targets import Target

__all__ = [
    "GAP_ROUNDOFF",
    "captured_stream",
    "checked_gap",
    "kronecker_member",
    "score_stream",
    "segment_plan",
]

#: A gap below ``−GAP_ROUNDOFF·max(1, |KL_opt|)`` is an error (round-off otherwise).
GAP_ROUNDOFF = 1e-9


def kronecker_member(state: Any, damping: float) -> Kronecker:
    """The float64 ``A ⊗ B`` an online Shampoo or KL-Shampoo state is scored as.

    * A state with raw factors ``L, R`` (Shampoo's ``left``/``right``, no eigenvalues):
      Shampoo² ``(L+nλI) ⊗ (R+mλI) / tr(L+nλI)``, each factor damped as the damped
      one-sided KL optimum ``L + nλI`` (and ``R + mλI``).
    * A state with bases and eigenvalues (KL-Shampoo, whose eigenvalue targets already carry
      its damping): ``Q_a diag(λ_a) Q_aᵀ ⊗ Q_b diag(λ_b) Q_bᵀ``.

    Args:
        state: an ``OnlineState`` of ``online.shampoo`` or ``online.kl_shampoo`` (any
            eigenvalue mode).
        damping: ``λ ≥ 0``.

    Raises:
        TypeError: the state has neither raw factors nor bases and eigenvalues.
    """
    f64 = jnp.float64
    if hasattr(state, "left_values"):
        qa, qb = jnp.asarray(state.left_basis, f64), jnp.asarray(state.right_basis, f64)
        la, lb = jnp.asarray(state.left_values, f64), jnp.asarray(state.right_values, f64)
        left, right = (qa * la[None, :]) @ qa.T, (qb * lb[None, :]) @ qb.T
        return Kronecker(0.5 * (left + left.T), 0.5 * (right + right.T), 1.0)
    if hasattr(state, "left") and hasattr(state, "right"):
        left, right = jnp.asarray(state.left, f64), jnp.asarray(state.right, f64)
        m, n = left.shape[0], right.shape[0]
        left = 0.5 * (left + left.T) + n * damping * jnp.eye(m, dtype=f64)
        right = 0.5 * (right + right.T) + m * damping * jnp.eye(n, dtype=f64)
        return Kronecker(left, right, 1.0 / jnp.trace(left))
    raise TypeError(
        f"kronecker_member: a {type(state).__name__} has neither Shampoo's factors (left, "
        "right) nor KL-Shampoo's bases and eigenvalues; score other methods with run_online"
    )


def checked_gap(kl: float, kl_opt: float, where: str) -> float:
    """``kl − kl_opt``, which must be ≥ 0 up to round-off (the optimum is the family's min).

    Raises:
        ConvergenceError: the gap is below ``−GAP_ROUNDOFF·max(1, |kl_opt|)``: the reference
            is then not the minimum of the family (an unconverged optimum, or a state scored
            outside the Kronecker family).
    """
    gap = float(kl) - float(kl_opt)
    if gap < -GAP_ROUNDOFF * max(1.0, abs(float(kl_opt))):
        raise ConvergenceError(
            f"{where}: KL gap {gap:.3e} < 0 beyond round-off (KL {kl:.10g} vs the damped KL "
            f"optimum {kl_opt:.10g}); the batch optimum must be the minimum of the Kronecker "
            "family the state is scored in"
        )
    return gap


def score_stream(
    estimator: Any,
    feed: Any,
    references: Sequence[Target],
    scored: Sequence[int],
    *,
    damping: float,
    where: str = "stream",
) -> dict[str, np.ndarray]:
    """Feed ``feed[t]`` to ``estimator`` and score its Kronecker member at the ``scored`` steps.

    Args:
        estimator: ``online.shampoo(...)`` or ``online.kl_shampoo(...)`` (damped by ``λ``).
        feed: ``(T, …)`` gradients or per-example batches, one per stream step.
        references: one target per stream step (``Σ_t``; a stationary stream repeats one);
            the same object at several steps is solved once.
        scored: the stream steps to score, increasing.
        damping: ``λ``.
        where: names the stream in a negative-gap error.

    Returns:
        ``{"kl_divergence", "kl_gap", "kl_optimal", "cosine_target", "direction_cosine"}``,
        each ``(len(scored),)`` float64: ``KL(Σ_t+λI ‖ A⊗B)``, its gap to the damped KL
        optimum's (checked ≥ 0), that optimum's, ``cos(Σ_t, A⊗B)`` and the cosine of
        ``(A⊗B)^{-1/2}ḡ_t`` with ``(Σ_t+λI)^{-1/2}ḡ_t`` (``ḡ_t`` the step's mean gradient).
    """
    from ..estimators import kl_optimal
    from ..metrics import cosine_similarity, direction_quality, kl_divergence

    scored = [int(t) for t in scored]
    if len(references) != len(feed):
        raise ValueError(
            f"score_stream: {len(references)} references for a stream of {len(feed)} steps; "
            "give one target per stream step"
        )
    if not scored or sorted(set(scored)) != scored or scored[-1] >= len(feed) or scored[0] < 0:
        raise ValueError(f"score_stream: scored must be increasing steps in [0, {len(feed)})")
    solved: dict[int, tuple[Any, float]] = {}
    out = {
        k: np.full(len(scored), np.nan)
        for k in ("kl_divergence", "kl_gap", "kl_optimal", "cosine_target", "direction_cosine")
    }
    state = estimator.init(feed[0])
    row = 0
    for t in range(scored[-1] + 1):
        if t > 0:
            state = estimator.update(state, feed[t])
        if t != scored[row]:
            continue
        target = references[t]
        if id(target) not in solved:
            opt = kl_optimal(target, damping=damping)
            kl_opt = float(kl_divergence(target, opt, damping=damping, approx_damping=0.0))
            solved[id(target)] = (target.eigh(vectors=True), kl_opt)
        spectrum, kl_opt = solved[id(target)]
        s = kronecker_member(state, damping)
        kl = float(kl_divergence(target, s, damping=damping, approx_damping=0.0))
        g = jnp.asarray(feed[t], jnp.float64)
        g = g.mean(0) if g.ndim == 3 else g
        q = direction_quality(
            target, s, g, p=0.5, damping=damping, approx_damping=0.0, spectrum=spectrum
        )
        out["kl_divergence"][row] = kl
        out["kl_gap"][row] = checked_gap(kl, kl_opt, f"{where} step {t}")
        out["kl_optimal"][row] = kl_opt
        out["cosine_target"][row] = float(cosine_similarity(target, s))
        out["direction_cosine"][row] = float(q.cosine)
        row += 1
    return out


def captured_stream(
    tree: Any,
    plan: Sequence[int],
    layer: str,
    *,
    batch: int,
    seed: int,
    damping_rel: float,
) -> tuple[np.ndarray, list[Target], float]:
    """A stream of captured per-example gradients and its per-step targets.

    Args:
        tree: an opened capture (``open_capture`` / ``study.cached_capture``).
        plan: the captured step each stream step draws from (one step repeated: stationary;
            several in training order: a trajectory).
        layer: the layer's path in the capture.
        batch: per-example gradients per stream step, drawn with replacement.
        seed: the draw's seed.
        damping_rel: ``λ = damping_rel·mean_s tr(Σ_s)/(mn)`` over the plan's steps.

    Returns:
        ``(feed, references, λ)``: ``feed`` ``(T, batch, m, n)`` float64, ``references[t]``
        the ``SampleTarget`` of step ``plan[t]``'s per-example gradients (one object per
        captured step, so ``score_stream`` solves each once), and ``λ``.
    """
    from .. import schema
    from ..targets import SampleTarget

    if int(batch) < 1 or not plan:
        raise ValueError(f"captured_stream: need batch ≥ 1 and a non-empty plan, got {batch}")
    pools = {}
    for s in sorted(set(int(s) for s in plan)):
        node = tree[schema.step_name(s)][layer]
        pools[s] = np.asarray(schema.layer_samples(node, schema.Kind.GRADIENTS), np.float64)
    m, n = next(iter(pools.values())).shape[1:]
    trace = np.mean([np.einsum("kij,kij->", p, p) / len(p) for p in pools.values()])
    damping = float(damping_rel) * float(trace) / (m * n)
    rng = np.random.default_rng(seed)
    feed = np.stack([pools[s][rng.integers(0, len(pools[s]), int(batch))] for s in plan])
    targets = {s: SampleTarget(jnp.asarray(p)) for s, p in pools.items()}
    return feed, [targets[int(s)] for s in plan], damping


def segment_plan(steps: Sequence[int], length: int) -> list[int]:
    """The captured step each of ``length`` stream steps draws from: ``steps`` in order, in
    equal segments (one step: a stationary stream)."""
    steps = [int(s) for s in steps]
    if not steps or int(length) < 1:
        raise ValueError(f"segment_plan: need steps and length ≥ 1, got {steps}, {length}")
    k, length = len(steps), int(length)
    return [steps[min(k - 1, t * k // length)] for t in range(length)]
