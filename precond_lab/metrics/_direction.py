"""Quality of preconditioned directions, and the loss-scaling invariance of root vs root-free.

The exact direction ``(Σ + λI)^{-p} g`` is computed matrix-free from the target's
non-zero eigenpairs ``Σ = V diag(μ) Vᵀ`` (``V``: ``r`` orthonormal ``m×n`` matrices):

    (Σ + λI)^{-p} g = V ((μ + λ)^{-p} ⊙ Vᵀg) + λ^{-p} (g − V Vᵀ g),

so nothing of size ``mn × mn`` is formed. The approximate direction is
``approx.power(-p, λ').matvec(g)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import (
    FitNeedsDampingError,
    NonFiniteError,
    check_damped_spectrum,
    check_float_dtype,
    check_number,
)
from ..structures import Structure
from ..targets import Spectrum, Target, as_target

__all__ = [
    "DirectionQuality",
    "direction_cosines",
    "direction_quality",
    "exact_direction",
    "loss_scaling_response",
]


@dataclasses.dataclass(frozen=True)
class DirectionQuality:
    """Agreement of an approximate preconditioned direction with the exact one.

    Attributes:
        cosine: ``⟨d̂, d⟩ / (‖d̂‖ ‖d‖)`` (per gradient, over the ``m×n`` entries).
        relative_error: ``‖d̂ − d‖ / ‖d‖``.
        norm_ratio: ``‖d̂‖ / ‖d‖`` (the step-size mismatch a learning rate must absorb).
        p: the power.
        damping: ``λ`` of the exact side.
    """

    cosine: jax.Array
    relative_error: jax.Array
    norm_ratio: jax.Array
    p: float
    damping: float


def exact_direction(
    target,
    gradient: jax.Array,
    *,
    p: float,
    damping: float = 0.0,
    spectrum: Spectrum | None = None,
) -> jax.Array:
    """``(Σ + λI)^{-p} g`` for ``g`` of shape ``(…, m, n)``, from the eigenpairs of ``Σ``.

    Args:
        target: a ``Target`` or ``(N, m, n)`` samples.
        gradient: ``(…, m, n)`` matrices ``g``.
        p: the power (``1/2`` root, ``1`` root-free).
        damping: ``λ ≥ 0``.
        spectrum: ``target.eigh(vectors=True)`` if already computed (it is the expensive part).

    Raises:
        FitNeedsDampingError: ``λ = 0`` while ``Σ`` is singular and ``p > 0``.
        NotPositiveDefiniteError: ``Σ + λI`` is indefinite (negative sample weights).
        NonFiniteError: a NaN/Inf gradient, or one of the wrong shape.
        ValueError: a NaN/Inf gradient, or one of the wrong shape.
    """
    target = as_target(target)
    spec = target.eigh(vectors=True) if spectrum is None else spectrum
    if spec.vectors is None:
        raise ValueError("spectrum has no eigenvectors; compute it with eigh(vectors=True)")
    damping = check_number(damping, "damping", low=0.0)
    check_number(p, "p")
    if damping > 0 or spec.rank == spec.dim:
        check_damped_spectrum(spec, damping)  # negative weights can make Σ + λI indefinite
    if damping == 0 and p > 0 and spec.rank < spec.dim:
        raise FitNeedsDampingError(
            f"Σ has rank {spec.rank} < mn = {spec.dim}; (Σ + λI)^(-{p}) g needs damping > 0."
        )
    g = _checked_gradient(gradient, target.matrix_shape)
    return _apply(spec.values, spec.vectors, jnp.asarray(g, spec.vectors.dtype), p, damping)


def _checked_gradient(gradient, shape) -> np.ndarray:
    """``gradient`` as an array of shape ``(…, m, n)``, finite (else a named error)."""
    if isinstance(gradient, jax.core.Tracer):
        return gradient
    g = np.asarray(gradient)
    if g.ndim < 2 or tuple(g.shape[-2:]) != tuple(shape):
        raise ValueError(
            f"gradient must have shape (…, m, n) = (…, {shape[0]}, {shape[1]}) like the "
            f"target; got {g.shape}"
        )
    check_float_dtype(g.dtype, "gradient")
    if not np.isfinite(g).all():
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(g))[0])
        raise NonFiniteError(f"gradient contains NaN or Inf (first at entry {idx})")
    return g


@jax.jit
def _project(vectors, g):
    return jnp.einsum("rij,...ij->...r", vectors, g)


def _apply(values, vectors, g, p, damping):
    coef = _project(vectors, g)
    if damping == 0:
        return jnp.einsum("...r,rij->...ij", coef * values ** (-p), vectors)
    shift = (values + damping) ** (-p) - damping ** (-p)
    return jnp.einsum("...r,rij->...ij", coef * shift, vectors) + damping ** (-p) * g


def direction_quality(
    target,
    approx: Structure,
    gradient: jax.Array,
    *,
    p: float = 0.5,
    damping: float = 0.0,
    approx_damping: float | None = None,
    spectrum: Spectrum | None = None,
) -> DirectionQuality:
    """Compare ``approx.power(-p, λ').matvec(g)`` with the exact ``(Σ + λI)^{-p} g``.

    Args:
        target: a Target or ``(N, m, n)`` samples defining ``Σ``.
        approx: a structure approximating ``Σ`` (e.g. an estimator's output).
        gradient: ``(…, m, n)`` gradients ``g``.
        p: power, ``0.5`` (Shampoo/KL-Shampoo/SOAP, root) or ``1`` (root-free).
        damping: ``λ`` on the exact side.
        approx_damping: ``λ'`` applied to ``approx`` (default 0: ``approx`` as given, e.g.
            IF-Shampoo's factors with their damping built in; pass ``λ`` to damp both sides).
        spectrum: precomputed ``target.eigh(vectors=True)``.

    Returns:
        ``DirectionQuality`` (arrays with the gradient's leading shape).
    """
    target = as_target(target)
    if tuple(approx.matrix_shape) != tuple(target.matrix_shape):
        raise ValueError(
            f"approx has matrix_shape {approx.matrix_shape}; target has {target.matrix_shape}"
        )
    exact = exact_direction(target, gradient, p=p, damping=damping, spectrum=spectrum)
    lam = 0.0 if approx_damping is None else approx_damping
    approx_dir = approx.power(-p, lam).matvec(jnp.asarray(gradient, approx.dtype))
    approx_dir = approx_dir.astype(exact.dtype)
    ne = jnp.linalg.norm(exact, axis=(-2, -1))
    na = jnp.linalg.norm(approx_dir, axis=(-2, -1))
    inner = jnp.sum(exact * approx_dir, axis=(-2, -1))
    err = jnp.linalg.norm(approx_dir - exact, axis=(-2, -1))
    return DirectionQuality(inner / (ne * na), err / ne, na / ne, float(p), float(damping))


def loss_scaling_response(
    estimator: Callable[[jax.Array], Structure],
    samples: jax.Array,
    gradient: jax.Array,
    *,
    c: float,
    p: float,
    damping: float = 0.0,
) -> dict[str, float]:
    """How a preconditioned step responds to scaling the loss by ``c``.

    Scaling the loss scales every gradient by ``c`` and ``Σ = E[ggᵀ]`` by ``c²``, so
    without damping ``(c²Σ)^{-p}(c g) = c^{1-2p} Σ^{-p} g``: the root step (``p = 1/2``)
    is invariant, the root-free step (``p = 1``) shrinks by ``1/c``. The same holds for
    any estimator that is homogeneous of degree 2 in the samples (Shampoo², KL, …).

    Args:
        estimator: samples ``(N, m, n)`` → structure approximating ``Σ``.
        samples: per-example gradients ``G``.
        gradient: the ``(m, n)`` gradient to precondition.
        c: loss scale.
        p: power.
        damping: ``λ`` (breaks the invariance; use it to see by how much).

    Returns:
        ``{"norm_ratio": ‖d(c)‖/‖d(1)‖, "predicted": c^{1-2p}, "cosine": cos(d(c), d(1)),
        "sigma_scale": tr Σ(cG) / tr Σ(G)}``.
    """
    g = jnp.asarray(gradient)
    x = jnp.asarray(samples)
    d1 = estimator(x).power(-p, damping).matvec(g)
    dc = estimator(c * x).power(-p, damping).matvec(c * g)
    n1, nc = jnp.linalg.norm(d1), jnp.linalg.norm(dc)
    t1: Target = as_target(x)
    tc: Target = as_target(c * x)
    return {
        "norm_ratio": float(nc / n1),
        "predicted": float(np.power(c, 1.0 - 2.0 * p)),
        "cosine": float(jnp.sum(d1 * dc) / (n1 * nc)),
        "sigma_scale": float(tc.trace() / t1.trace()),
    }


def direction_cosines(
    target,
    gradients,
    approximations,
    *,
    damping: float = 0.0,
    powers=(0.5, 1.0),
):
    """``cos(S^{-a} g, (Σ + λI)^{-e} g)`` for several approximations ``S`` and powers.

    ``(Σ + λI)^{-e} g`` is ``exact_direction`` (one eigendecomposition of ``Σ``, e.g. a
    layer's exact Gauss–Newton); ``S^{-a} g`` is ``S.power(-a, λ_S).matvec(g)``.

    Args:
        target: ``Σ``, a ``Target`` or ``(N, m, n)`` samples.
        gradients: ``(B, m, n)`` gradients ``g``.
        approximations: ``{name: (structure, λ_S)}`` (or ``{name: structure}``, ``λ_S = 0``).
        damping: ``λ ≥ 0`` of the exact side.
        powers: the powers, used for both ``a`` (approx) and ``e`` (exact).

    Returns:
        A DataArray on ``(estimator, approx_power, exact_power, batch)``.
    """
    import xarray as xr

    if not approximations:
        raise ValueError("approximations must name at least one structure")
    powers = [check_number(p, "powers") for p in powers]
    target = as_target(target)
    spec = target.eigh(vectors=True)
    grads = jnp.asarray(gradients)
    if grads.ndim != 3:
        raise ValueError(f"gradients must be (B, m, n); got shape {grads.shape}")
    exact = {
        pe: exact_direction(target, grads, p=pe, damping=damping, spectrum=spec) for pe in powers
    }
    names = list(approximations)
    cos = np.zeros((len(names), len(powers), len(powers), grads.shape[0]))
    for ie, name in enumerate(names):
        entry = approximations[name]
        s, lam = entry if isinstance(entry, tuple) else (entry, 0.0)
        for ia, pa in enumerate(powers):
            d = s.power(-pa, lam).matvec(grads).astype(exact[powers[-1]].dtype)
            for je, pe in enumerate(powers):
                e = exact[pe]
                c = jnp.sum(d * e, axis=(-2, -1)) / (
                    jnp.linalg.norm(d, axis=(-2, -1)) * jnp.linalg.norm(e, axis=(-2, -1))
                )
                cos[ie, ia, je] = np.asarray(c)
    coords = {"estimator": names, "approx_power": powers, "exact_power": powers,
              "batch": np.arange(grads.shape[0])}  # fmt: skip
    return xr.DataArray(cos, coords=coords, dims=list(coords))
