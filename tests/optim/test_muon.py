"""Muon: the peer (``optax.contrib.muon``), the exact polar-factor identity of Shampoo with
one gradient, and the known accuracy of Muon's Newton–Schulz quintic (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import precond_lab.optim as po
from precond_lab.linalg import matrix_power
from precond_lab.methods import METHODS, MuonLeaf, newton_schulz
from precond_lab.structures import Kronecker

jax.config.update("jax_enable_x64", True)

COEFFS = (3.4445, -4.7750, 2.0315)


def _mlp(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {"w1": (8, 5), "b1": (5,), "w2": (5, 11), "b2": (11,), "w3": (11, 3), "b3": (3,)}
    return {k: jnp.asarray(rng.standard_normal(s)) for k, s in shapes.items()}


def _trajectory(tx, params, steps: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(steps):
        g = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), params)
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
    return params


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _polar(g: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """``U_r V_rᵀ`` over the singular values above ``tol·σ_max`` (the exact polar factor
    for full rank, the partial isometry of the pseudo-inverse otherwise)."""
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    r = int(np.sum(s > tol * s[0]))
    return u[:, :r] @ vt[:r]


def _quintic5(x: np.ndarray, steps: int = 5) -> np.ndarray:
    a, b, c = COEFFS
    for _ in range(steps):
        x = a * x + b * x**3 + c * x**5
    return x


# -------------------------------------------------------------------------- the peer
MATCHED = [
    dict(),
    dict(nesterov=False),
    dict(beta=0.9, eps=1e-7, adam_b1=0.8, adam_b2=0.99, adam_weight_decay=0.01),
    dict(consistent_rms=0.2, ns_steps=4, adam_eps_root=1e-9),
]


@pytest.mark.parametrize("kwargs", MATCHED)
def test_po_muon_is_optax_contrib_muon(kwargs):
    """Ten steps on an MLP-like tree (matrices to Muon, biases to AdamW), float64."""
    params = _mlp()
    got = _trajectory(po.muon(0.02, **kwargs), params, 10, seed=1)
    want = _trajectory(optax.contrib.muon(0.02, **kwargs), params, 10, seed=1)
    for k in params:
        assert _rel(got[k], want[k]) <= 1e-12, k


def test_weight_decay_differs_from_optax_by_eta_squared_wd_direction():
    """Ours decays after the step, ``W ← (W − ηD)(1 − η·wd)``; optax's decays before,
    ``W ← W − η(D + wd·W)``: one step differs by exactly ``η²·wd·D`` on Muon's leaves."""
    params, lr, wd = _mlp(), 0.05, 0.3
    g = jax.tree.map(lambda x: jnp.asarray(np.cos(np.arange(x.size)).reshape(x.shape)), params)

    def first_update(tx):
        return tx.update(g, tx.init(params), params)[0]

    ours = first_update(po.muon(lr, weight_decay=wd))
    theirs = first_update(optax.contrib.muon(lr, weight_decay=wd))
    plain = first_update(optax.contrib.muon(lr))  # −ηD
    for k in ("w1", "w2", "w3"):
        diff = np.asarray(ours[k] - theirs[k])
        np.testing.assert_allclose(diff, -lr * wd * np.asarray(plain[k]), rtol=1e-10, atol=1e-15)
        assert np.linalg.norm(diff) > 0
    for k in ("b1", "b2", "b3"):  # the fallback is optax's AdamW in both
        np.testing.assert_array_equal(np.asarray(ours[k]), np.asarray(theirs[k]))


def test_optax_partition_by_labels_and_the_one_column_difference():
    """With optax's labels (every 2-D leaf to Muon) a ``1×n`` leaf matches optax; an
    ``n×1`` leaf (taken as a ``1×n`` row) steps ``√n`` times optax's (documented)."""
    rng = np.random.default_rng(3)
    params = {
        k: jnp.asarray(rng.standard_normal(s))
        for k, s in {"row": (1, 7), "w": (5, 3), "col": (7, 1)}.items()
    }

    def labels(p):
        return jax.tree.map(lambda x: "kron" if x.ndim == 2 else "fallback", p)

    got = _trajectory(po.muon(0.02, labels=labels), params, 5, seed=4)
    want = _trajectory(optax.contrib.muon(0.02), params, 5, seed=4)
    assert _rel(got["row"], want["row"]) <= 1e-12 and _rel(got["w"], want["w"]) <= 1e-12
    g = jax.tree.map(jnp.ones_like, params)
    ours = po.muon(0.02, labels=labels)
    theirs = optax.contrib.muon(0.02)
    u = ours.update(g, ours.init(params), params)[0]["col"]
    v = theirs.update(g, theirs.init(params), params)[0]["col"]
    np.testing.assert_allclose(np.asarray(u), np.sqrt(7) * np.asarray(v), rtol=1e-12)


# ------------------------------------------------------- Shampoo with one gradient = polar
RANDOM = [(5, 5, 0), (6, 4, 1), (4, 6, 2), (16, 9, 3)]


@pytest.mark.parametrize(("m", "n", "seed"), RANDOM)
def test_one_gradient_shampoo_is_the_polar_factor(m, n, seed):
    """``(GGᵀ)^{-1/4} G (GᵀG)^{-1/4} = UVᵀ`` (Eschenhagen et al., arXiv 2602.09314).

    As ``Kronecker(GGᵀ, GᵀG)^{-1/4} vec(G)``; for ``m ≠ n`` one factor is singular (rank
    ``min(m, n)``) and the power is its pseudo-inverse limit, reached with a damping
    ``δ = 1e-16·‖G‖_F⁴`` (error ``≈ δ/(4σ_min⁴)``); G has no component in the null space.
    """
    g = np.random.default_rng(seed).standard_normal((m, n))
    want = _polar(g)
    damping = 0.0 if m == n else 1e-16 * np.linalg.norm(g) ** 4
    got = Kronecker(g @ g.T, g.T @ g).power(-0.25, damping=damping).matvec(jnp.asarray(g))
    assert _rel(got, want) <= 1e-10
    if m == n:  # the same with the factors' own powers (precond_lab.linalg)
        left = matrix_power(jnp.asarray(g @ g.T), -0.25)[0]
        right = matrix_power(jnp.asarray(g.T @ g), -0.25)[0]
        assert _rel(left @ g @ right, want) <= 1e-10


def test_one_gradient_shampoo_of_a_rank_deficient_gradient_is_the_partial_isometry():
    """Rank 2 of 6×4: the pseudo-inverse (damping → 0) limit is ``U_r V_rᵀ`` (r = 2), the
    polar factor restricted to the row and column spaces; Newton–Schulz, an odd polynomial,
    sends the zero singular values to zero as well."""
    rng = np.random.default_rng(5)
    g = rng.standard_normal((6, 2)) @ rng.standard_normal((2, 4))
    want = _polar(g)
    damping = 1e-16 * np.linalg.norm(g) ** 4
    got = Kronecker(g @ g.T, g.T @ g).power(-0.25, damping=damping).matvec(jnp.asarray(g))
    assert _rel(got, want) <= 1e-10
    sv = np.linalg.svd(np.asarray(newton_schulz(jnp.asarray(g))), compute_uv=False)
    assert sv[2:].max() <= 1e-12 and 0.68 <= sv[:2].min() and sv[:2].max() <= 1.21


@pytest.mark.parametrize(("m", "n", "seed"), RANDOM[:3])
def test_the_reader_maps_the_momentum_to_its_polar_factor(m, n, seed):
    """``approximation(leaf)^{-1/2} vec(M̂) = vec(UVᵀ)`` up to the reader's ``δ``."""
    mom = np.random.default_rng(seed).standard_normal((m, n))
    leaf = MuonLeaf(bias=jnp.asarray(0.5), mu=jnp.asarray(0.5 * mom))  # M̂ = mom
    sigma = METHODS["muon"].approximation(leaf)
    assert sigma.matrix_shape == (m, n)
    got = sigma.power(-0.5).matvec(jnp.asarray(mom))
    assert _rel(got, _polar(mom)) <= 1e-10


# ------------------------------------------------------ Newton–Schulz's known accuracy
@pytest.mark.parametrize(("m", "n", "seed"), [*RANDOM, (3, 7, 4)])
def test_newton_schulz_is_the_quintic_of_the_singular_values(m, n, seed):
    """``NS(G) = U f⁵(S/(‖G‖_F + ε)) Vᵀ`` with ``f(x) = ax + bx³ + cx⁵``: the iteration acts
    on the singular values alone (to round-off)."""
    g = np.random.default_rng(seed).standard_normal((m, n))
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    want = u @ np.diag(_quintic5(s / (np.linalg.norm(g) + 1e-8))) @ vt
    assert _rel(newton_schulz(jnp.asarray(g)), want) <= 1e-12


def test_the_quintic_band_after_five_steps():
    """Five steps map a normalised singular value ``x ∈ [2e-3, 1]`` into
    ``[0.6818, 1.2024]`` and ``x ∈ [1e-2, 1]`` into ``[0.6818, 1.1344]`` (measured on a fine
    grid); below ``~2e-3`` a value has not grown enough (``f⁵(1e-3) = 0.47``)."""
    wide = _quintic5(np.geomspace(2e-3, 1.0, 400_001))
    narrow = _quintic5(np.geomspace(1e-2, 1.0, 400_001))
    assert 0.6818 <= wide.min() <= 0.6819 and 1.2023 <= wide.max() <= 1.2024
    assert 0.6818 <= narrow.min() <= 0.6819 and 1.1343 <= narrow.max() <= 1.1344
    assert _quintic5(np.asarray(1e-3)) < 0.48


def test_muon_directions_are_within_the_band_of_the_polar_factor():
    """On random matrices whose normalised ``σ_min ≥ 2e-3``, the singular values of
    ``NS(G)`` lie in ``[0.68, 1.21]``, so ``‖NS(G) − UVᵀ‖₂ ≤ 0.32``: Muon's step is the
    polar factor of its Shampoo-with-one-gradient ``Σ`` up to this band, not exactly."""
    rng = np.random.default_rng(11)
    checked = 0
    for shape in [(6, 4), (4, 6), (5, 5), (16, 16), (32, 8), (64, 48)]:
        for _ in range(10):
            g = rng.standard_normal(shape)
            s = np.linalg.svd(g, compute_uv=False)
            if s.min() / np.linalg.norm(g) < 2e-3:
                continue
            x = np.asarray(newton_schulz(jnp.asarray(g)))
            sv = np.linalg.svd(x, compute_uv=False)
            assert 0.68 <= sv.min() and sv.max() <= 1.21
            assert np.linalg.norm(x - _polar(g), 2) <= 0.32
            checked += 1
    assert checked >= 50
