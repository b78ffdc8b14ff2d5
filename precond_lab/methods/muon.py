"""Muon: momentum orthogonalised by a Newton–Schulz iteration (``optax.contrib.muon``'s
arithmetic).

Step ``t`` (counted from 1), gradient ``G`` (the batch mean): ``M ← βM + (1−β)G`` from
zero; the matrix orthogonalised is ``N = β·M/(1−β^{t+1}) + (1−β)·G/(1−β^t)`` (Nesterov,
the default) or ``N = M/(1−β^t)``; ``X₀ = N/(‖N‖_F + ε)`` (transposed first when it has
more rows than columns), five steps of the quintic ``X ← aX + (b·A + c·A²)X`` with
``A = XXᵀ`` and ``(a, b, c) = (3.4445, −4.7750, 2.0315)``, transposed back; the
direction is ``D = s·X₅`` with ``s = √max(1, n/m)`` for an ``m×n`` leaf (``m`` the
reduction axis, optax's width scaling) or ``s = √max(m, n)·consistent_rms``.

The quintic is tuned for speed, not convergence: it acts on the singular values alone,
``X₅ = U f⁵(S/(‖N‖_F + ε)) Vᵀ`` for ``N = USVᵀ`` and ``f(x) = ax + bx³ + cx⁵``, and five
steps send a normalised singular value in ``[2e-3, 1]`` into ``[0.6818, 1.2024]`` (in
``[1e-2, 1]``: into ``[0.6818, 1.1344]``) instead of to 1, so ``X₅ ≈ UVᵀ`` within that
band (``tests/optim/test_muon.py`` measures it).

**The ``Σ`` the state stands for.** The exact polar factor is Shampoo with one gradient:
for ``N = USVᵀ`` of full rank, ``(NNᵀ)^{-1/4} N (NᵀN)^{-1/4} = UVᵀ`` (Eschenhagen et al.,
"Clarifying Shampoo", arXiv 2602.09314), i.e. ``Σ^{-1/2} vec(N) = vec(UVᵀ)`` for
``Σ = (NNᵀ)^{1/2} ⊗ (NᵀN)^{1/2}``. The reader returns this ``Σ`` for the momentum the state
keeps, ``M̂ = M/(1−β^t)``: ``Kronecker(M̂M̂ᵀ + δI, M̂ᵀM̂ + δI).power(½)`` with
``δ = 100·ε_dtype·‖M̂‖_F²`` (``ε_dtype`` the state dtype's machine epsilon), so that the
``m ≠ n`` factor (rank ``min(m, n)``) is invertible while ``Σ^{-1/2} vec(M̂)`` differs from
``vec(UVᵀ)`` by a relative ``≈ δ/(2σ_min²)``. Two caveats, both exact statements: with
Nesterov the matrix orthogonalised also holds the last gradient, which the state does not
keep, so the reader reads ``M̂`` (the two coincide with ``nesterov=False``); and the map
``N ↦ UVᵀ`` is not linear, so ``Σ^{-1/2}`` reproduces Muon's direction at ``M̂`` only, as
any state-dependent preconditioner does at its own statistics.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..structures import Kronecker, Structure
from ._core import MethodSpec, Rule, register
from ._hp import hp
from ._ops import cast_like

__all__ = [
    "NS_COEFFS",
    "MuonLeaf",
    "muon_rule",
    "newton_schulz",
    "one_gradient_shampoo",
    "polar_factor",
]

#: The quintic's coefficients ``(a, b, c)`` of Keller Jordan's Muon (optax's default).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


class MuonLeaf(NamedTuple):
    """Per-leaf state of Muon.

    Attributes:
        bias: ``1 − β^t``, the momentum's bias correction (1 before the first step).
        mu: the momentum ``M`` (an EMA of the gradients).
    """

    bias: jax.Array
    mu: jax.Array


def newton_schulz(
    x: jax.Array, coeffs: Any = NS_COEFFS, steps: int = 5, eps: Any = 1e-8
) -> jax.Array:
    """``X₅ ≈ UVᵀ`` of a matrix by optax's Newton–Schulz quintic (module doc).

    Args:
        x: an ``(m, n)`` matrix.
        coeffs: the quintic's ``(a, b, c)``.
        steps: the number of steps (a traced count runs as a ``fori_loop``).
        eps: ``ε`` in the normalisation ``X₀ = x/(‖x‖_F + ε)``.

    Returns:
        The ``(m, n)`` result, in ``x``'s dtype.
    """
    a, b, c = (jnp.asarray(k, x.dtype) for k in coeffs)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / (jnp.linalg.norm(x) + eps)

    def quintic(_, x):
        gram = x @ x.T
        return a * x + (b * gram + c * gram @ gram) @ x

    if isinstance(steps, int):
        for i in range(steps):
            x = quintic(i, x)
    else:  # a traced count (optax.inject_hyperparams)
        x = jax.lax.fori_loop(0, steps, quintic, x)
    return x.T if transposed else x


def muon_rule(
    *,
    beta: float = 0.95,
    nesterov: bool = True,
    ns_coeffs: tuple[float, float, float] = NS_COEFFS,
    ns_steps: int = 5,
    eps: float = 1e-8,
    consistent_rms: float | None = None,
    state_dtype: Any = None,
) -> Rule:
    """Muon's rule (module doc), ``optax.contrib.scale_by_muon`` followed by its shape scaling.

    Leaves of three or more modes are reshaped to ``(prod(shape[:-1]), shape[-1])`` (and
    size-1 axes dropped) before the iteration; a one-mode leaf is taken as a ``1×n`` row.

    Args:
        beta: the momentum's ``β`` in ``[0, 1)``.
        nesterov: orthogonalise the Nesterov look-ahead (optax's default) or the momentum.
        ns_coeffs: the quintic's coefficients ``(a, b, c)`` (one triple for every step).
        ns_steps: the number of Newton–Schulz steps, an integer ``≥ 1``.
        eps: ``ε ≥ 0`` in the normalisation ``N/(‖N‖_F + ε)``.
        consistent_rms: None (width scaling ``√max(1, n/m)``) or a number ``> 0``
            (scaling ``√max(m, n)·consistent_rms``, Liu et al. 2025).
        state_dtype: the state's dtype (None: the parameter's).

    Returns:
        The rule (leaf state ``MuonLeaf``).

    Raises:
        ValueError: a hyper-parameter out of its range, or ``ns_coeffs`` not three numbers.
    """
    beta = hp(beta, "beta", low=0.0, high=1.0, high_open=True)
    eps = hp(eps, "eps", low=0.0)
    steps = hp(ns_steps, "ns_steps", low=1, integer=True)
    if consistent_rms is not None:
        consistent_rms = hp(consistent_rms, "consistent_rms", low=0.0, low_open=True)
    if len(tuple(ns_coeffs)) != 3:
        raise ValueError(f"ns_coeffs must be three numbers (a, b, c), got {ns_coeffs!r}")
    coeffs = tuple(hp(k, f"ns_coeffs[{i}]") for i, k in enumerate(ns_coeffs))
    nesterov = bool(nesterov)

    def init(shape, dt):
        return MuonLeaf(bias=jnp.ones([], dt), mu=jnp.zeros(shape, dt))

    def step(leaf, gb, count, param, per_example):
        del param, per_example
        t = count + 1
        g = jnp.mean(gb, axis=0)
        mu = (1 - beta) * g + beta * leaf.mu
        if nesterov:
            m_hat = mu / (1 - beta ** (t + 1)).astype(mu.dtype)
            n_mat = beta * m_hat + (1 - beta) * (g / (1 - beta**t).astype(g.dtype))
        else:
            n_mat = mu / (1 - beta**t).astype(mu.dtype)
        x = n_mat if n_mat.ndim == 2 else n_mat.reshape(1, -1)
        m, n = x.shape
        if consistent_rms is None:
            scale = jnp.sqrt(jnp.maximum(1, n / m))
        else:
            scale = jnp.sqrt(jnp.maximum(m, n)) * consistent_rms
        d = (scale * newton_schulz(x, coeffs, steps, eps)).reshape(n_mat.shape)
        new = MuonLeaf(bias=1 - beta**t, mu=mu)
        return cast_like((d, new), (g, leaf))

    return Rule(init, step, "matrix", state_dtype)


def polar_factor(g, tol: float = 1e-10) -> np.ndarray:
    """``U_r V_rᵀ`` of ``G = USVᵀ`` over the singular values above ``tol·σ_max`` (float64,
    SVD): the polar factor of a full-rank ``G``, the partial isometry on its row and column
    spaces otherwise (the pseudo-inverse limit of the identity below)."""
    u, s, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
    r = int(np.sum(s > tol * s[0]))
    return u[:, :r] @ vt[:r]


def one_gradient_shampoo(g, tol: float = 1e-10) -> np.ndarray:
    """Shampoo's update with one gradient, ``(GGᵀ)^{-1/4} G (GᵀG)^{-1/4}`` (float64).

    Computed from the two factors' eigendecompositions (no SVD of ``G``); the ``-¼`` powers
    are pseudo-inverse powers over the eigenvalues above ``tol·λ_max`` (a non-square or
    rank-deficient ``G`` has singular factors, and ``G`` has no component in their null
    spaces). Equals ``polar_factor(G)`` exactly (Eschenhagen et al., arXiv 2602.09314).
    """
    g = np.asarray(g, np.float64)

    def pinv_quarter(a):
        w, q = np.linalg.eigh(0.5 * (a + a.T))
        keep = w > tol * w.max()
        return (q[:, keep] * w[keep] ** -0.25) @ q[:, keep].T

    return pinv_quarter(g @ g.T) @ g @ pinv_quarter(g.T @ g)


def _muon_approximation(leaf: MuonLeaf) -> Structure | None:
    """``(M̂M̂ᵀ + δI)^{1/2} ⊗ (M̂ᵀM̂ + δI)^{1/2}``, ``M̂ = M/(1−β^t)``, ``δ = 100·ε·‖M̂‖_F²``:
    the ``Σ`` whose ``−½`` power maps ``M̂`` to its polar factor (module doc)."""
    if leaf.mu.ndim != 2:
        return None
    m = leaf.mu / leaf.bias
    delta = 100 * jnp.finfo(m.dtype).eps * jnp.sum(m * m)
    left, right = m @ m.T, m.T @ m
    left = 0.5 * (left + left.T) + delta * jnp.eye(m.shape[0], dtype=m.dtype)
    right = 0.5 * (right + right.T) + delta * jnp.eye(m.shape[1], dtype=m.dtype)
    return Kronecker(left, right).power(0.5)


register(
    MethodSpec(
        name="muon",
        label="Muon",
        rule=muon_rule,
        leaf_type=MuonLeaf,
        approximation=_muon_approximation,
        power=0.5,
        optimizer="muon",
        reference="muon",
        source="Jordan et al. 2024 (github.com/KellerJordan/Muon); optax.contrib.muon's "
        "arithmetic; the polar-factor identity of Eschenhagen et al. (arXiv 2602.09314)",
    )
)
