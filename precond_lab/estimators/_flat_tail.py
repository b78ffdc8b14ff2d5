"""Rank-``r`` + flat-tail restriction of Kronecker factors, and spectrum diagnostics.

Pro-KLShampoo (arXiv 2605.06316) observes that KL-Shampoo's factors have a few large
eigenvalues over a nearly flat rest ("spike and flat") throughout training, and keeps a
factor as its top-``r`` eigenpairs plus one shared tail eigenvalue. For a PSD factor
``A = Σ_i a_i u_i u_iᵀ`` (``a_1 ≥ … ≥ a_d``) the restriction is

    B = U_r Λ_r U_rᵀ + τ (I − U_r U_rᵀ),    Λ_r = diag(a_1, …, a_r).

**The tail value.** Under the divergence ``kl_optimal`` minimises, the forward
``KL(N(0, A) ‖ N(0, B)) = ½[tr(B⁻¹A) − d + log det B − log det A]``, and with ``B`` in the
eigenbasis of ``A``,

    2 KL = Σ_{i≤r} (a_i/λ_i − 1 + log λ_i/a_i) + Σ_{i>r} (a_i/τ − 1 + log τ/a_i),

so ``λ_i = a_i`` and ``∂/∂τ = 0`` gives ``τ = (1/(d − r)) Σ_{i>r} a_i``: the *arithmetic*
mean of the tail eigenvalues (not the harmonic mean, which minimises the reverse KL).
The arithmetic mean is in fact optimal for every Bregman divergence ``D_f(A, B)`` in
its second argument (the mean property of Bregman divergences), so it also serves the
trace-power family of ``bregman_optimal``. The excess over keeping ``A`` is
``(d − r) log(AM/GM)`` of the tail eigenvalues, which is non-increasing in ``r``.

**Why this is the right τ for a Kronecker fit.** At ``kl_optimal``'s fixed point
``L = E[G R⁻¹ Gᵀ]/n``; replacing ``L`` by ``B`` with ``R`` held fixed changes
``KL(Σ ‖ B ⊗ R)`` by ``n/2 · [tr(B⁻¹L) + log det B]`` plus constants: the factor-level
objective above, so the same ``τ`` is optimal for the target-level KL (tests check both
against a brute-force one-dimensional minimisation).

Spectrum diagnostics (``spike_profile``): the spike count is the number of eigenvalues
above ``multiple`` × the median eigenvalue (default 3); tail flatness is the coefficient
of variation (population standard deviation / mean) of the eigenvalues after the spikes
(0 for a perfectly flat tail). The rule assumes fewer spikes than half the dimension (the
median must lie in the tail).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from .._validation import check_number
from ..linalg import eigh_sym, symmetrize
from ..structures import Kronecker
from ._kl import kl_optimal
from ._registry import EstimatorSpec, register

__all__ = [
    "SpikeProfile",
    "flat_tail",
    "flat_tail_factor",
    "flat_tail_value",
    "kl_flat_tail",
    "spike_profile",
]


def _check_rank(rank, name: str = "rank") -> int:
    return int(check_number(rank, name, low=0, integer=True))


def _ranks(rank, m: int, n: int) -> tuple[int, int]:
    """``(r_left, r_right)`` from an int (both sides) or a pair, each clipped to its size."""
    if isinstance(rank, (tuple, list)):
        if len(rank) != 2:
            raise ValueError(f"rank must be an integer or a pair (r_left, r_right); got {rank!r}")
        r_left, r_right = _check_rank(rank[0], "rank[0]"), _check_rank(rank[1], "rank[1]")
    else:
        r_left = r_right = _check_rank(rank)
    return min(r_left, m), min(r_right, n)


def _square(factor, what: str) -> jnp.ndarray:
    a = jnp.asarray(factor)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty square matrix; got shape {tuple(a.shape)}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(f"{what} must have a real floating dtype; got {a.dtype}")
    if not bool(jnp.all(jnp.isfinite(a))):
        raise ValueError(f"{what} contains NaN or Inf")
    return a


def _descending_eigh(a):
    w, q = eigh_sym(a)
    return w[::-1], q[:, ::-1]


def flat_tail_value(eigenvalues, rank: int) -> float:
    """The KL-optimal shared tail value ``τ``: the mean of the eigenvalues after the top ``rank``.

    Args:
        eigenvalues: a factor's eigenvalues, in any order.
        rank: how many of the largest are kept (``0 ≤ rank < d``).

    Raises:
        ValueError: ``rank ≥ d`` (no tail) or a negative rank.
    """
    w = np.sort(np.asarray(eigenvalues, np.float64).ravel())[::-1]
    r = _check_rank(rank)
    if r >= w.size:
        raise ValueError(f"rank {r} leaves no tail of the {w.size} eigenvalues (need rank < d)")
    return float(np.mean(w[r:]))


def flat_tail_factor(factor, rank: int):
    """``B = U_r Λ_r U_rᵀ + τ (I − U_r U_rᵀ)`` of a PSD factor ``A`` (``τ``: ``flat_tail_value``).

    ``rank ≥ d − 1`` returns ``factor`` itself (a tail of one eigenvalue is already flat):
    the restriction is then the identity map.

    Args:
        factor: a symmetric PSD ``d × d`` matrix (e.g. ``kl_optimal(...).left``).
        rank: how many of the largest eigenpairs are kept (``≥ 0``).

    Returns:
        The restricted factor, a ``d × d`` array of the factor's dtype.

    Raises:
        ValueError: a non-square, empty or non-finite factor, or a negative rank.
        TypeError: a non-float factor or a non-integer rank.
    """
    a = _square(factor, "factor")
    r = _check_rank(rank)
    d = int(a.shape[0])
    if r >= d - 1:
        return a
    w, q = _descending_eigh(a)
    tau = jnp.mean(w[r:])
    head = q[:, :r]
    out = (head * (w[:r] - tau)[None, :]) @ head.T + tau * jnp.eye(d, dtype=a.dtype)
    return symmetrize(out)


def flat_tail(approx: Kronecker, rank) -> Kronecker:
    """A Kronecker fit with each factor restricted to rank ``r`` + a flat tail.

    Args:
        approx: a ``Kronecker`` (e.g. from ``kl_optimal``); its scale is kept.
        rank: ``r`` for both factors (clipped to each factor's size), or a pair
            ``(r_left, r_right)``. ``r ≥ max(m, n) − 1`` returns ``approx`` unchanged.

    Returns:
        ``Kronecker(B_left, B_right, approx.scale)``, with the fit's ``info``.
    """
    if not isinstance(approx, Kronecker):
        raise TypeError(
            f"flat_tail restricts a Kronecker fit (e.g. kl_optimal's); got {type(approx).__name__}"
        )
    m, n = approx.matrix_shape
    r_left, r_right = _ranks(rank, m, n)
    if r_left >= m - 1 and r_right >= n - 1:
        return approx
    return Kronecker(
        flat_tail_factor(approx.left, r_left),
        flat_tail_factor(approx.right, r_right),
        approx.scale,
        approx.info,
    )


def kl_flat_tail(target, rank, *, weights=None, **kwargs) -> Kronecker:
    """``kl_optimal``'s fit restricted to rank ``r`` + a flat tail per factor (Pro-KLShampoo).

    Args:
        target: what ``kl_optimal`` takes (per-example matrices, a DataArray or a Target).
        rank: ``r`` for both factors, or ``(r_left, r_right)`` (see ``flat_tail``).
        weights: per-example weights (see ``kl_optimal``).
        **kwargs: forwarded to ``kl_optimal`` (``damping``, ``tol``, ``max_iter``, …).

    Returns:
        The restricted ``Kronecker``; its ``info`` is the KL fit's.
    """
    return flat_tail(kl_optimal(target, weights=weights, **kwargs), rank)


@dataclasses.dataclass(frozen=True)
class SpikeProfile:
    """Spectrum diagnostics of one PSD factor (``spike_profile``).

    Attributes:
        eigenvalues: all eigenvalues, descending (float64).
        median: their median.
        multiple: the rule's multiple of the median.
        threshold: ``multiple · median``: eigenvalues above it are spikes.
        spikes: the spike count.
        tail_mean: mean of the eigenvalues after the spikes (the flat-tail value at
            ``r = spikes``).
        tail_cv: their coefficient of variation (population std / mean; 0 = flat).
    """

    eigenvalues: np.ndarray
    median: float
    multiple: float
    threshold: float
    spikes: int
    tail_mean: float
    tail_cv: float


def spike_profile(factor, *, multiple: float = 3.0) -> SpikeProfile:
    """Spike count and tail flatness of a PSD factor (rule in the module doc).

    Args:
        factor: a symmetric PSD ``d × d`` matrix, or its eigenvalues (1-D).
        multiple: an eigenvalue above ``multiple`` × the median eigenvalue is a spike
            (``> 1``).

    Returns:
        A ``SpikeProfile``.
    """
    multiple = check_number(multiple, "multiple", low=1.0, low_open=True)
    arr = np.asarray(factor)
    if arr.ndim == 1:
        w = np.sort(np.asarray(arr, np.float64))[::-1]
        if w.size == 0 or not np.all(np.isfinite(w)):
            raise ValueError("eigenvalues must be a non-empty finite 1-D array")
    else:
        w = np.asarray(_descending_eigh(_square(factor, "factor"))[0], np.float64)
    median = float(np.median(w))
    threshold = multiple * median
    spikes = int(np.sum(w > threshold))
    tail = w[spikes:]
    tail_mean = float(np.mean(tail)) if tail.size else float("nan")
    tail_cv = float(np.std(tail) / tail_mean) if tail.size and tail_mean > 0 else float("nan")
    return SpikeProfile(w, median, float(multiple), threshold, spikes, tail_mean, tail_cv)


register(
    EstimatorSpec(
        "kl_flat_tail",
        lambda ctx, rank=1, **kw: kl_flat_tail(ctx.target, rank, **kw),
        "KL-optimal, rank-r + flat tail (Pro-KLShampoo)",
        reference="kl_flat_tail",
        summary="kl_optimal's factors kept as their top-r eigenpairs plus one shared tail "
        "eigenvalue (the tail's mean, the KL-optimal choice).",
        color="#332288",
        marker="<",
        example_args="(1)",
    )
)
