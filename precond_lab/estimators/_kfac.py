"""K-FAC from layer inputs and output-side gradients (Martens & Grosse's Kronecker factors).

For a linear layer ``y = W a`` without weight sharing the per-example gradient is
``G = δ aᵀ``, so ``vec(G) vec(G)ᵀ = (δδᵀ) ⊗ (aaᵀ)`` (row-major, output factor on the
left) and K-FAC approximates ``Σ ≈ E[δδᵀ] ⊗ E[aaᵀ]``. With a weight-sharing axis of
length ``R`` (tokens, pixels), ``G = Σ_r δ_r a_rᵀ`` and K-FAC has two flavours
(Eschenhagen et al., 2023):

* expand: ``Σ_n w_n Σ_r δ_{n,r} δ_{n,r}ᵀ  ⊗  Σ_n w_n (1/R) Σ_r a_{n,r} a_{n,r}ᵀ``
* reduce: ``Σ_n w_n δ̂_n δ̂_nᵀ  ⊗  Σ_n w_n â_n â_nᵀ`` with ``δ̂_n = Σ_r δ_{n,r}``,
  ``â_n = (1/R) Σ_r a_{n,r}``

(the right factor is divided by ``Σ_n w_n`` so that both variants equal ``Σ`` for a
single example without sharing). A class / Monte-Carlo axis on the backpropagated
vectors (Gauss–Newton pseudo-gradients) is summed in the left factor.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_finite, check_float_dtype
from ..errors import CellSkipped
from ..structures import Kronecker
from ..targets import check_weights
from ._registry import EstimatorSpec, FitContext, register

__all__ = ["kfac"]


def _as_array(x, what):
    if hasattr(x, "dims") and hasattr(x, "values"):  # xarray.DataArray
        x = x.values
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    check_float_dtype(x.dtype, what)
    check_finite(np.asarray(x), what)
    return jnp.asarray(x)


def kfac(
    activations, backprops, *, weights=None, variant: str = "expand", damping: float = 0.0
) -> Kronecker:
    """K-FAC's ``E[δδᵀ] ⊗ E[aaᵀ]`` (output factor left, row-major convention).

    Args:
        activations: layer inputs ``a``: ``(N, n)`` or, with a weight-sharing axis,
            ``(N, R, n)``.
        backprops: output-side gradients ``δ``: ``(N, m)`` / ``(N, R, m)``, or with an
            extra class / MC axis right after the sample axis: ``(N, C, m)`` /
            ``(N, C, R, m)`` (e.g. ``Jᵀ Λ^{1/2} e_c`` for the Gauss–Newton matrix).
        weights: ``(N,)`` example weights (default ``1/N``).
        variant: ``"expand"`` or ``"reduce"`` (identical without a sharing axis).
        damping: ``λ ≥ 0``; K-FAC's usual factored damping adds ``√λ I`` to each factor,
            so the product approximates ``Σ + λI`` up to the cross terms.

    Returns:
        ``Kronecker(left=Σ_n w_n Σ δδᵀ + √λI, right=Σ_n w_n aaᵀ / Σ_n w_n + √λI)``.
    """
    if variant not in ("expand", "reduce"):
        raise ValueError(f"variant must be 'expand' or 'reduce'; got {variant!r}")
    if not np.isfinite(damping) or damping < 0:
        raise ValueError(f"damping must be a finite number ≥ 0; got {damping}")
    a = _as_array(activations, "activations")
    d = _as_array(backprops, "backprops")
    if a.ndim not in (2, 3):
        raise ValueError(f"activations must be (N, n) or (N, R, n); got shape {tuple(a.shape)}")
    if d.ndim == a.ndim:
        d = d[:, None]  # no class axis
    elif d.ndim != a.ndim + 1:
        raise ValueError(
            f"backprops must be (N, [C,] m) for activations (N, n), or (N, [C,] R, m) for "
            f"(N, R, n); got backprops {tuple(d.shape)} with activations {tuple(a.shape)}"
        )
    if d.shape[0] != a.shape[0] or d.shape[2:-1] != a.shape[1:-1]:
        raise ValueError(
            f"backprops {tuple(d.shape)} and activations {tuple(a.shape)} disagree on the "
            "sample or sharing axis"
        )
    if a.shape[0] == 0:
        raise ValueError("kfac needs at least one example (N = 0).")
    dt = jnp.result_type(a.dtype, d.dtype)
    w = check_weights(weights, a.shape[0], np.dtype(dt))
    root = np.sqrt(np.asarray(damping, dt))
    return Kronecker(*_factors(w, a, d, root, reduce=variant == "reduce"))


@functools.partial(jax.jit, static_argnames="reduce")
def _factors(w, a, d, root, *, reduce: bool):
    """The two damped factors in one compiled call (one executable per shape)."""
    dt = jnp.result_type(a.dtype, d.dtype)
    if a.ndim == 3 and reduce:
        a = jnp.mean(a, axis=1)
        d = jnp.sum(d, axis=2)
    if a.ndim == 3:  # expand
        left = jnp.einsum("n,ncri,ncrj->ij", w, d, d)
        right = jnp.einsum("n,nri,nrj->ij", w, a, a) / a.shape[1]
    else:
        left = jnp.einsum("n,nci,ncj->ij", w, d, d)
        right = jnp.einsum("n,ni,nj->ij", w, a, a)
    left = left + root * jnp.eye(left.shape[0], dtype=dt)
    right = right / jnp.sum(w) + root * jnp.eye(right.shape[0], dtype=dt)
    return left, right


def _kfac_builder(ctx: FitContext, variant: str = "expand") -> Kronecker:
    # the inputs' presence is checked by build() (needs_kfac_inputs=True)
    if ctx.batch_size != 1:
        raise CellSkipped("K-FAC is built from per-example activations, not batch gradients")
    k = kfac(*ctx.kfac_inputs, variant=variant, damping=ctx.damping)
    if k.matrix_shape != ctx.target.matrix_shape:
        raise ValueError(
            f"K-FAC factors give shape {k.matrix_shape}, the target is {ctx.target.matrix_shape}"
        )
    return k


register(
    EstimatorSpec(
        "kfac",
        _kfac_builder,
        "K-FAC",
        reference="kfac",
        summary="E[δδᵀ] ⊗ E[aaᵀ] from activations and backprops (expand/reduce), √λI each.",
        color="#009E73",
        marker="D",
        needs_kfac_inputs=True,
    )
)
