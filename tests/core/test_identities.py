"""Identities and optimality statements of the estimators (D1–D9 in docs/claims.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from conftest import assert_close, random_orthogonal, random_samples, random_spd

from precond_lab import DenseTarget, EigenKronecker, Kronecker, SampleTarget
from precond_lab import estimators as est
from precond_lab import metrics as met
from precond_lab import reference as ref


def _normalized_dense(s):
    d = np.asarray(s.to_dense())
    return d / np.linalg.norm(d) * np.sign(np.trace(d))


def _non_kronecker(seed, num=25, m=3, n=2):
    """Samples whose Σ is far from Kronecker (correlated rows/columns, scaled columns)."""
    rng = np.random.default_rng(seed)
    g = random_samples(rng, num, m, n, cond_exp=1.0)
    g[: num // 2] += 0.7 * g[: num // 2, :, ::-1][:, ::-1, :]
    return g


def _exact_kronecker(rng, m, n):
    """Samples G_k = U Z_k Vᵀ with {vec Z_k} an orthonormal basis: Σ = UUᵀ ⊗ VVᵀ exactly."""
    a, b = random_spd(rng, m), random_spd(rng, n)
    u, v = np.linalg.cholesky(a), np.linalg.cholesky(b)
    z = random_orthogonal(rng, m * n).reshape(m * n, m, n)
    g = np.einsum("ij,kjl,ml->kim", u, z, v)
    return g, np.ones(m * n), np.kron(a, b)


# ------------------------------------------------------------------ Shampoo² and power steps


@pytest.mark.parametrize("seed,m,n", [(0, 3, 2), (1, 1, 4), (2, 4, 3)])
def test_shampoo_squared_is_one_power_step(seed, m, n):
    """P3 / D3: one (Jacobi) power step from the identity gives (L, R) up to scale."""
    g = _non_kronecker(seed, 20, m, n)
    t = SampleTarget(g, chunk_size=3)
    s2 = est.shampoo_squared(t)
    p1 = est.power_iteration(t, 1)
    assert_close(p1.left, s2.normalized().left)
    assert_close(p1.right, s2.normalized().right)
    cos = float(ref.cosine_similarity(np.asarray(p1.to_dense()), np.asarray(s2.to_dense())))
    assert abs(cos - 1.0) < 1e-12
    # and a Frobenius-rescaled Shampoo² is exactly the rescaled power step
    c = met.frobenius_scale(t, s2)
    assert_close(s2.rescaled(c).to_dense(), p1.to_dense())
    # R(Σ) vec(I) = vec(L), R(Σ)ᵀ vec(I) = vec(R) on the explicit rearrangement
    sigma = ref.target_matrix(g)
    left, right = ref.shampoo_statistics(sigma, m, n)
    r = ref.rearrange(sigma, m, n)
    assert_close(r @ np.eye(n).reshape(-1), left.reshape(-1))
    assert_close(r.T @ np.eye(m).reshape(-1), right.reshape(-1))


@pytest.mark.parametrize("variant", ["jacobi", "gauss-seidel"])
def test_power_iteration_converges_to_frobenius_optimum(variant):
    g = _non_kronecker(3)
    t = SampleTarget(g, chunk_size=4)
    sigma = ref.target_matrix(g)
    errors = [
        ref.relative_frobenius_error(
            sigma, np.asarray(est.power_iteration(t, k, variant=variant).to_dense()), True
        )
        for k in (0, 1, 2, 4, 8)
    ]
    assert np.all(np.diff(errors) <= 1e-12), errors
    assert errors[0] > errors[1] + 0.1  # the first step matters
    opt = est.frobenius_optimal(t)
    many = est.power_iteration(t, 300, variant=variant)
    assert_close(many.to_dense(), opt.to_dense(), rtol=1e-9)  # linear convergence, 300 steps
    best = ref.relative_frobenius_error(sigma, np.asarray(opt.to_dense()))
    assert best <= min(errors) + 1e-12
    assert_close(errors[-1], best, rtol=1e-6)


# ------------------------------------------------------------------ exact Kronecker targets


@pytest.mark.parametrize("m,n", [(3, 2), (1, 3), (2, 2)])
def test_exact_kronecker_recovered(m, n, rng):
    g, w, sigma = _exact_kronecker(rng, m, n)
    targets = [
        ("samples", SampleTarget(g, w, chunk_size=4)),
        ("dense", DenseTarget(sigma, (m, n))),
    ]
    assert_close(targets[0][1].to_dense(), sigma)
    for name, t in targets:
        for fn in (est.frobenius_optimal, est.shampoo_squared, est.kl_optimal):
            assert_close(fn(t).to_dense(), sigma, rtol=1e-9, err_msg=f"{name} {fn.__name__}")
        assert_close(est.power_iteration(t, 1).to_dense(), sigma, err_msg=name)
        assert_close(est.eigencorrected(t).to_dense(), sigma, err_msg=name)
        # D4: Shampoo ∝ Σ^{1/2}; every power of Shampoo² is the power of Σ
        root = ref.psd_power(sigma, 0.5)
        assert abs(ref.cosine_similarity(np.asarray(est.shampoo(t).to_dense()), root) - 1) < 1e-12
        for p in (-1.0, -0.5, 0.25):
            got = est.shampoo_squared(t).power(p).to_dense()
            assert_close(got, ref.psd_power(sigma, p), err_msg=f"{name} p={p}")
        s2 = est.shampoo_squared(t)
        assert abs(float(met.kl_divergence(t, s2))) < 1e-10
        assert abs(float(met.von_neumann_divergence(t, s2))) < 1e-10 * np.trace(sigma)
    if m > 1 and n > 1:  # ... while Shampoo itself is not ∝ Σ (P3's "misconception")
        shampoo = np.asarray(est.shampoo(targets[0][1]).to_dense())
        assert ref.cosine_similarity(sigma, shampoo) < 1 - 1e-4


def test_shampoo_squared_beats_shampoo_in_cosine():
    """B.1.2: cos(H, L⊗R) > cos(H, L^{1/2}⊗R^{1/2}) on non-Kronecker targets."""
    for seed in range(3):
        t = SampleTarget(_non_kronecker(seed))
        assert met.cosine_similarity(t, est.shampoo_squared(t)) > met.cosine_similarity(
            t, est.shampoo(t)
        )


# ------------------------------------------------------------------ KL fixed point


def _dense_kl(sigma, damping):
    d = sigma.shape[0]
    x = jnp.asarray(sigma) + damping * jnp.eye(d)
    logdet_x = jnp.linalg.slogdet(x)[1]

    def f(left, right):
        y = jnp.kron(left, right)
        return 0.5 * (jnp.trace(jnp.linalg.solve(y, x)) - d + jnp.linalg.slogdet(y)[1] - logdet_x)

    return f


@pytest.mark.parametrize("damping", [0.0, 0.1])
@pytest.mark.parametrize("seed,num,m,n", [(0, 30, 3, 2), (1, 14, 2, 4), (2, 40, 3, 3)])
def test_kl_fixed_point(seed, num, m, n, damping):
    g = _non_kronecker(seed, num, m, n)
    sigma = ref.target_matrix(g)
    s = est.kl_optimal(SampleTarget(g, chunk_size=3), damping=damping)
    left, right = s.scale * np.asarray(s.left), np.asarray(s.right)
    # the flip-flop equations hold (explicit sums over Σ's entries)
    assert ref.kl_fixed_point_residual(sigma, left, right, damping) < 1e-10
    # the dense KL gradient vanishes (relative to the factors' scale)
    f = _dense_kl(sigma, damping)
    gl, gr = jax.grad(f, argnums=(0, 1))(jnp.asarray(left), jnp.asarray(right))
    assert float(jnp.linalg.norm(gl)) * np.linalg.norm(left) < 1e-9
    assert float(jnp.linalg.norm(gr)) * np.linalg.norm(right) < 1e-9
    # and it is a minimum: random symmetric perturbations increase the KL
    base = ref.kl_objective(sigma, left, right, damping)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        e_l, e_r = rng.standard_normal((m, m)), rng.standard_normal((n, n))
        e_l, e_r = 1e-3 * (e_l + e_l.T), 1e-3 * (e_r + e_r.T)
        assert ref.kl_objective(sigma, left + e_l, right + e_r, damping) > base
    # FitInfo: monotone objective; its last value is the KL up to −½ log det(Σ+λI)
    obj = s.info.objective
    assert np.all(np.diff(obj) <= 1e-12 * np.abs(obj).max())
    logdet_x = np.linalg.slogdet(sigma + damping * np.eye(m * n))[1]
    assert_close(obj[-1] - 0.5 * logdet_x, base, atol_scale=1.0)
    # the metric agrees (no damping: the metric damps S as well)
    if damping == 0:
        assert_close(met.kl_divergence(SampleTarget(g), s), base, atol_scale=1.0)


def test_kl_first_half_step_is_shampoo():
    """A.5: the first flip-flop half-step from the identity gives Shampoo's L/n."""
    g = _non_kronecker(4)
    t = SampleTarget(g)
    s = est.kl_optimal(t, max_iter=1, tol=0.0)
    left, _ = t.second_moments()
    assert_close(s.left, left / np.linalg.norm(left))


@pytest.mark.parametrize("damping", [0.0, 0.2])
@pytest.mark.parametrize("side", ["left", "right"])
def test_one_sided_kl_is_shampoo_and_optimal(side, damping):
    """P1 Claim 1: argmin_A KL(Σ ‖ A ⊗ I) is Shampoo's L/n (+λI)."""
    g = _non_kronecker(5, 30, 3, 2)
    m, n = 3, 2
    sigma = ref.target_matrix(g)
    left, right = ref.shampoo_statistics(sigma, m, n)
    s = est.one_sided_kl(g, side=side, damping=damping)
    factor = left / n if side == "left" else right / m
    got = s.scale * (s.left if side == "left" else s.right)
    assert_close(got, factor + damping * np.eye(factor.shape[0]))
    x = sigma + damping * np.eye(m * n)
    base = ref.kl_divergence(x, np.asarray(s.to_dense()))
    rng = np.random.default_rng(0)
    k = factor.shape[0]
    for _ in range(6):
        e = rng.standard_normal((k, k))
        pert = np.asarray(got) + 1e-3 * (e + e.T)
        y = np.kron(pert, np.eye(n)) if side == "left" else np.kron(np.eye(m), pert)
        assert ref.kl_divergence(x, y) > base


# ------------------------------------------------------------------ optimality among estimators


def _kronecker_estimates(t):
    return {
        "frobenius_optimal": est.frobenius_optimal(t),
        "shampoo": est.shampoo(t),
        "shampoo_squared": est.shampoo_squared(t),
        "kl_optimal": est.kl_optimal(t),
        "one_sided_left": est.one_sided_kl(t),
        "one_sided_right": est.one_sided_kl(t, side="right"),
        "power_1": est.power_iteration(t, 1),
        "power_2": est.power_iteration(t, 2, variant="gauss-seidel"),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frobenius_and_kl_optimality(seed):
    g = _non_kronecker(seed, 30, 3, 2)
    sigma = ref.target_matrix(g)
    t = SampleTarget(g, chunk_size=7)
    ests = _kronecker_estimates(t)
    frob = {k: float(met.relative_frobenius_error(t, s, rescale=True)) for k, s in ests.items()}
    kl = {k: float(met.kl_divergence(t, s, rescale=True)) for k, s in ests.items()}
    for k, s in ests.items():  # the matrix-free numbers are the dense ones
        dense = np.asarray(s.to_dense())
        assert_close(frob[k], ref.relative_frobenius_error(sigma, dense, True), rtol=1e-8)
        assert_close(kl[k], ref.kl_divergence(sigma, ref.kl_scale(sigma, dense) * dense), 1e-8)
    for k in ests:
        assert frob["frobenius_optimal"] <= frob[k] + 1e-12, (k, frob)
        assert kl["kl_optimal"] <= kl[k] + 1e-12, (k, kl)
    assert frob["frobenius_optimal"] < frob["shampoo_squared"]  # strict on non-Kronecker
    assert kl["kl_optimal"] < kl["shampoo_squared"]
    # random Kronecker perturbations of the optima do worse
    rng = np.random.default_rng(seed)
    fo, ko = ests["frobenius_optimal"], ests["kl_optimal"]
    for _ in range(4):
        e_l, e_r = rng.standard_normal((3, 3)), rng.standard_normal((2, 2))
        pf = Kronecker(fo.left + 1e-2 * (e_l + e_l.T), fo.right + 1e-2 * (e_r + e_r.T), fo.scale)
        assert (
            ref.relative_frobenius_error(sigma, np.asarray(pf.to_dense()), True)
            > frob["frobenius_optimal"]
        )
        pk = Kronecker(ko.left + 1e-2 * (e_l + e_l.T), ko.right + 1e-2 * (e_r + e_r.T), ko.scale)
        assert float(met.kl_divergence(t, pk, rescale=True)) > kl["kl_optimal"]


def _dense_vn(sigma, m, n):
    def vn(params):
        ca = np.zeros((m, m))
        ca[np.tril_indices(m)] = params[: m * (m + 1) // 2]
        cb = np.zeros((n, n))
        cb[np.tril_indices(n)] = params[m * (m + 1) // 2 :]
        y = np.kron(ca @ ca.T, cb @ cb.T) + 1e-300 * np.eye(m * n)
        return ref.von_neumann_divergence(sigma, y)

    return vn


def test_shampoo_squared_minimises_von_neumann():
    """A.3 / D9: argmin_{A,B} D_vN(Σ, A⊗B) = L⊗R/tr Σ (scipy on the dense objective)."""
    m, n = 2, 2
    g = _non_kronecker(7, 12, m, n)
    sigma = ref.target_matrix(g)
    t = SampleTarget(g)
    s2 = est.shampoo_squared(t)
    best = float(met.von_neumann_divergence(t, s2))
    assert_close(best, ref.von_neumann_divergence(sigma, np.asarray(s2.to_dense())), atol_scale=1)
    x0 = np.concatenate([np.eye(m)[np.tril_indices(m)], np.eye(n)[np.tril_indices(n)]])
    res = scipy.optimize.minimize(_dense_vn(sigma, m, n), x0, method="BFGS", tol=1e-14)
    assert res.fun >= best - 1e-9
    assert_close(res.fun, best, rtol=1e-7)
    # perturbing the factors increases the divergence (matrix-free metric)
    rng = np.random.default_rng(1)
    for _ in range(5):
        e_l, e_r = rng.standard_normal((m, m)), rng.standard_normal((n, n))
        p = Kronecker(s2.left + 1e-3 * (e_l + e_l.T), s2.right + 1e-3 * (e_r + e_r.T), s2.scale)
        assert float(met.von_neumann_divergence(t, p)) > best
        assert (
            float(met.von_neumann_divergence(t, s2.rescaled(1 + 1e-3 * rng.standard_normal())))
            > best
        )
    # other Kronecker estimators are worse in VN
    for s in (est.frobenius_optimal(t), est.kl_optimal(t)):
        assert float(met.von_neumann_divergence(t, s)) > best


# ------------------------------------------------------------------ eigen-corrected diagonal


@pytest.mark.parametrize("basis", ["shampoo", "kl", "frobenius"])
def test_eigencorrected_beats_kronecker_and_is_optimal(basis):
    g = _non_kronecker(8, 30, 3, 2)
    sigma = ref.target_matrix(g)
    t = SampleTarget(g, chunk_size=4)
    kron = {
        "shampoo": est.shampoo_squared(t),
        "kl": est.kl_optimal(t),
        "frobenius": est.frobenius_optimal(t),
    }[basis]
    ec = est.eigencorrected(t, basis=kron)
    frob_ec = ref.relative_frobenius_error(sigma, np.asarray(ec.to_dense()))
    kl_ec = ref.kl_divergence(sigma, np.asarray(ec.to_dense()))
    assert frob_ec < float(met.relative_frobenius_error(t, kron, rescale=True))
    assert kl_ec < float(met.kl_divergence(t, kron, rescale=True))
    assert_close(met.kl_divergence(t, ec), kl_ec, atol_scale=1.0)
    # optimal diagonal in its basis: perturbing D increases both divergences
    rng = np.random.default_rng(0)
    for _ in range(6):
        vals = ec.values * (1 + 1e-3 * rng.standard_normal(ec.values.shape))
        p = EigenKronecker(ec.left_basis, ec.right_basis, vals)
        assert ref.relative_frobenius_error(sigma, np.asarray(p.to_dense())) > frob_ec
        assert float(met.kl_divergence(t, p)) > kl_ec
    # the plain diagonal is the optimal diagonal in the identity basis
    diag = est.diagonal(t)
    kl_d = float(met.kl_divergence(t, diag))
    for _ in range(3):
        p = type(diag)(diag.values * (1 + 1e-3 * rng.standard_normal(diag.values.shape)))
        assert float(met.kl_divergence(t, p)) > kl_d
        assert float(met.relative_frobenius_error(t, p)) > float(
            met.relative_frobenius_error(t, diag)
        )


# ------------------------------------------------------------------ K-FAC exactness


def _kfac_sigma(a, d, weights=None):
    g, w = ref.kfac_samples(a, d, weights)
    return ref.target_matrix(g, w), g, w


def test_kfac_single_example_exact(rng):
    a, d = rng.standard_normal((1, 3)), rng.standard_normal((1, 2))
    sigma, g, w = _kfac_sigma(a, d, np.array([0.7]))
    # D8: vec_r(δ aᵀ) = δ ⊗ a
    assert_close(g[0].reshape(-1), np.kron(d[0], a[0]))
    for variant in ("expand", "reduce"):
        s = est.kfac(a, d, weights=np.array([0.7]), variant=variant)
        assert_close(s.to_dense(), sigma)
        left, right = ref.kfac(a, d, [0.7], variant)
        assert_close(s.to_dense(), np.kron(left, right))


def test_kfac_independent_factors_exact(rng):
    """δ and a independent (all pairs of a δ-set and an a-set): K-FAC = Σ = Shampoo²."""
    deltas, acts = rng.standard_normal((3, 2)), rng.standard_normal((4, 3))
    d = np.repeat(deltas, 4, axis=0)
    a = np.tile(acts, (3, 1))
    sigma, g, w = _kfac_sigma(a, d)
    s = est.kfac(a, d)
    assert_close(s.to_dense(), sigma)
    assert_close(est.shampoo_squared(g, weights=w).to_dense(), sigma)
    # …whereas correlated δ and a are not exact
    s_corr = est.kfac(acts, deltas[[0, 1, 2, 0]])
    sigma_corr, _, _ = _kfac_sigma(acts, deltas[[0, 1, 2, 0]])
    assert not np.allclose(np.asarray(s_corr.to_dense()), sigma_corr)


def test_kfac_expand_equals_reduce_without_sharing(rng):
    a, d = rng.standard_normal((5, 3)), rng.standard_normal((5, 2, 4))
    w = rng.uniform(0.1, 1, 5)
    assert_close(
        est.kfac(a, d, weights=w, variant="expand").to_dense(),
        est.kfac(a, d, weights=w, variant="reduce").to_dense(),
    )


def test_kfac_reduce_exact_for_constant_activations(rng):
    """One example, activations constant over positions: G = (Σ_r δ_r) aᵀ, reduce is exact."""
    a = np.repeat(rng.standard_normal((1, 1, 3)), 4, axis=1)
    d = rng.standard_normal((1, 4, 2))
    sigma, _, _ = _kfac_sigma(a, d)
    assert_close(est.kfac(a, d, variant="reduce").to_dense(), sigma)
    assert not np.allclose(np.asarray(est.kfac(a, d, variant="expand").to_dense()), sigma)
    # with varying activations neither is exact (weight sharing makes G rank > 1)
    a2 = rng.standard_normal((1, 4, 3))
    sigma2, _, _ = _kfac_sigma(a2, d)
    for variant in ("expand", "reduce"):
        assert not np.allclose(np.asarray(est.kfac(a2, d, variant=variant).to_dense()), sigma2)


# ------------------------------------------------------------------ centering and rank


def test_centered_estimators_equal_explicit_centering(rng):
    g = random_samples(rng, 12, 3, 2) + 1.5
    w = rng.uniform(0.2, 1.0, 12)
    w[::5] *= -0.2
    mean = np.einsum("k,kij->ij", w, g) / w.sum()
    for fn in (est.frobenius_optimal, est.shampoo_squared, est.diagonal, est.kl_optimal):
        assert_close(
            fn(g, weights=w, center=True).to_dense(),
            fn(g - mean, weights=w).to_dense(),
            rtol=1e-9,
            err_msg=fn.__name__,
        )


def test_rank_deficient_metrics(rng):
    """N < mn: Frobenius metrics and VN work as is; KL needs damping (and then matches)."""
    g = random_samples(rng, 3, 3, 2)
    sigma = ref.target_matrix(g)
    t = SampleTarget(g)
    assert t.eigh().rank == 3
    for s in (est.frobenius_optimal(t), est.shampoo_squared(t), est.kl_optimal(t, damping=0.1)):
        dense = np.asarray(s.to_dense())
        assert_close(met.cosine_similarity(t, s), ref.cosine_similarity(sigma, dense))
        if np.linalg.eigvalsh(dense).min() > 0:
            assert_close(
                met.von_neumann_divergence(t, s),
                ref.von_neumann_divergence(sigma, dense),
                atol_scale=np.trace(sigma),
            )
        x, y = sigma + 0.1 * np.eye(6), dense + 0.1 * np.eye(6)
        assert_close(
            met.kl_divergence(t, s, damping=0.1, approx_damping=0.1),
            ref.kl_divergence(x, y),
            atol_scale=1,
        )
