"""A runner scoring online estimators on a gradient stream."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .._validation import check_number
from ..errors import PrecondLabError, Status
from ..methods import METHODS, all_finite
from ..metrics import direction_quality
from ..provenance import make_attrs
from ..structures import Structure
from ..targets import Target, as_target
from ._estimators import ESTIMATORS

__all__ = ["run_online", "state_is_finite", "structure_cosine"]


def state_is_finite(state) -> bool:
    """Whether every floating-point array of a state (any pytree) is finite."""
    return bool(all_finite(state))


def _eigen_parts(s: Structure):
    e = s.eigen()
    m, n = e.matrix_shape
    qa = getattr(e, "left_basis", None)
    qb = getattr(e, "right_basis", None)
    qa = jnp.eye(m, dtype=e.dtype) if qa is None else qa
    qb = jnp.eye(n, dtype=e.dtype) if qb is None else qb
    return qa, qb, e.values


def structure_cosine(s1: Structure, s2: Structure) -> jax.Array:
    """Frobenius cosine of two structures from their eigen forms, ``O(m³ + n³)``.

    ``⟨Q₁D₁Q₁ᵀ, Q₂D₂Q₂ᵀ⟩ = Σ D₁ ⊙ (M_a D₂ M_bᵀ)`` with ``M = (P₁ᵀP₂)^{⊙2}`` per side.
    """
    pa, pb, d1 = _eigen_parts(s1)
    qa, qb, d2 = _eigen_parts(s2)
    ma = (pa.T @ qa) ** 2
    mb = (pb.T @ qb) ** 2
    inner = jnp.sum(d1 * (ma @ d2 @ mb.T))
    return inner / (jnp.linalg.norm(d1) * jnp.linalg.norm(d2))


def _normalise_stream(stream) -> tuple[jax.Array, bool]:
    x = jnp.asarray(stream)
    if x.ndim not in (3, 4):
        raise ValueError(
            f"stream must be (T, m, n) gradients or (T, N, m, n) per-step sample batches; got "
            f"shape {tuple(x.shape)}"
        )
    return x, x.ndim == 4


def run_online(
    stream,
    estimators: Sequence[str] = tuple(ESTIMATORS),
    *,
    hparams: dict[str, dict] | None = None,
    damping: float = 1e-3,
    reference: Target | None = None,
    per_example: bool = True,
    every: int = 1,
    ps: Sequence[float] = (0.5, 1.0),
) -> xr.Dataset:
    """Feed a gradient stream to online estimators and score them every ``every`` steps.

    Args:
        stream: ``(T, m, n)`` gradients, or ``(T, N, m, n)`` per-step batches of
            per-example gradients.
        estimators: names from ``ESTIMATORS``.
        hparams: per-estimator keyword arguments of the factory (e.g.
            ``{"kl_shampoo": {"beta": 0.9}}``). For ``(T, N, …)`` streams fed as means,
            ``batch_size=N`` is set for the root-free estimators unless given.
        damping: ``λ`` for the KL divergence and for the exact directions.
        reference: the target ``Σ`` to score against (default: all samples of the
            stream pooled with equal weights — the stationary estimate).
        per_example: for ``(T, N, …)`` streams, feed each step's per-example batch (True)
            or its mean gradient (False).
        every: score every ``every``-th step (and the last).
        ps: powers of the direction-quality variables.

    Returns:
        Dataset with dims ``(step, estimator[, p])``: ``kl_divergence`` (``KL(Σ+λI ‖ S_eff)``
        with the effective covariance ``S_eff = S + λI``, or ``S`` itself for estimators
        whose factors already contain the damping, e.g. IF-Shampoo), ``kl_gap`` (minus the
        batch KL optimum's; it can be negative, since ``S + λI`` lies outside the Kronecker
        family that the optimum ranges over), ``cosine_target`` (``cos(Σ, S)``),
        ``cosine_kl_optimal``, ``cosine_frobenius_optimal``, ``direction_cosine`` and
        ``direction_relative_error`` (``S^{-p}ḡ_t`` vs ``(Σ+λI)^{-p}ḡ_t``), and ``status``
        (a ``Status`` string per step and estimator: ``ok``;
        ``nonfinite`` when the state holds NaN/Inf, or the status of the error a metric
        raised; the metrics of such a cell stay NaN). Attributes from
        ``make_attrs``.
    """
    from ..estimators import frobenius_optimal, kl_optimal
    from ..metrics import cosine_similarity, kl_divergence

    every = check_number(every, "every", low=1, integer=True)
    damping = check_number(damping, "damping", low=0.0)
    x, batched = _normalise_stream(stream)
    steps = x.shape[0]
    m, n = x.shape[-2:]
    pooled = x.reshape(-1, m, n)
    target = as_target(pooled) if reference is None else as_target(reference)
    spectrum = target.eigh(vectors=True)
    kl_opt = kl_optimal(target, damping=damping)
    frob_opt = frobenius_optimal(target)
    # kl_opt's factors already contain the damping: its covariance is L⊗R itself
    kl_best = float(kl_divergence(target, kl_opt, damping=damping, approx_damping=0.0))
    grads = x.mean(axis=1) if batched else x
    feed = x if (batched and per_example) else grads
    hparams = dict(hparams or {})
    for name in estimators:
        if name not in ESTIMATORS:
            raise ValueError(f"unknown estimator {name!r}; choose from {tuple(ESTIMATORS)}")
        if batched and not per_example and METHODS[name].needs_batch_size:
            hparams.setdefault(name, {})
            hparams[name] = {"batch_size": int(x.shape[1]), **hparams[name]}
    scored = sorted(set(range(0, steps, every)) | {steps - 1})
    names = list(estimators)
    shape = (len(scored), len(names))
    scalars = {
        k: np.full(shape, np.nan)
        for k in ("kl_divergence", "cosine_target", "cosine_kl_optimal", "cosine_frobenius_optimal")
    }
    dcos = np.full((*shape, len(ps)), np.nan)
    derr = np.full((*shape, len(ps)), np.nan)
    status = np.full(shape, Status.OK.value, dtype=object)
    for j, name in enumerate(names):
        est = ESTIMATORS[name](**hparams.get(name, {}))
        state = est.init(feed[0])
        row = 0
        for t in range(steps):
            if t > 0:
                state = est.update(state, feed[t])
            if t not in scored:
                continue
            if not state_is_finite(state):
                status[row, j] = Status.NONFINITE.value
                row += 1
                continue
            lam = 0.0 if est.internal_damping else damping  # effective covariance S + lam·I
            try:
                s = est.approximation(state)
                kl = kl_divergence(target, s, damping=damping, approx_damping=lam)
                cells = {
                    "kl_divergence": float(kl),
                    "cosine_target": float(cosine_similarity(target, s)),
                    "cosine_kl_optimal": float(structure_cosine(s, kl_opt)),
                    "cosine_frobenius_optimal": float(structure_cosine(s, frob_opt)),
                }
                dirs = [
                    direction_quality(
                        target,
                        s,
                        grads[t],
                        p=p,
                        damping=damping,
                        approx_damping=lam,
                        spectrum=spectrum,
                    )
                    for p in ps
                ]
            except PrecondLabError as exc:
                status[row, j] = Status.of(exc).value
                row += 1
                continue
            for key, value in cells.items():
                scalars[key][row, j] = value
            for k, q in enumerate(dirs):
                dcos[row, j, k] = float(q.cosine)
                derr[row, j, k] = float(q.relative_error)
            row += 1
    ds = xr.Dataset(
        {k: (("step", "estimator"), v) for k, v in scalars.items()},
        coords={"step": scored, "estimator": names, "p": list(ps)},
    )
    ds["kl_gap"] = ds["kl_divergence"] - kl_best
    ds["direction_cosine"] = (("step", "estimator", "p"), dcos)
    ds["direction_relative_error"] = (("step", "estimator", "p"), derr)
    ds["status"] = (("step", "estimator"), status.astype(str))
    ds.attrs.update(
        make_attrs(
            "precond_lab online estimators on a gradient stream",
            source="given target" if reference is not None else "pooled stream",
            producer="precond_lab.online.run_online",
            damping=float(damping),
            stream_shape=str(tuple(x.shape)),
            fed="per-example batches" if (batched and per_example) else "gradients",
            reference="pooled stream" if reference is None else "given target",
            kl_optimal_divergence=kl_best,
            hparams=repr(hparams),
        )
    )
    return ds


@functools.cache
def _stream_scan(estimator):
    return jax.jit(
        lambda s, xs: jax.lax.scan(lambda c, x: (estimator.update(c, x), None), s, xs)[0]
    )


def fit_stream(estimator, stream) -> Structure:
    """An online estimator's approximation after a gradient stream: ``init`` on the first
    gradient, ``update`` on each of the rest (one jitted ``lax.scan``, compiled once per
    estimator and stream shape).

    Args:
        estimator: an ``OnlineEstimator`` (e.g. ``bregman_shampoo(q, …)``).
        stream: ``(T, m, n)`` gradients, ``T ≥ 2``.
    """
    x = jnp.asarray(stream)
    if x.ndim != 3 or x.shape[0] < 2:
        raise ValueError(f"stream must be (T, m, n) gradients with T ≥ 2; got shape {x.shape}")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError("stream holds NaN/Inf: the online state would be non-finite")
    return estimator.approximation(_stream_scan(estimator)(estimator.init(x[0]), x[1:]))
