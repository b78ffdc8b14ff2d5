"""Every estimator against its dense float64 reference, on SampleTarget and DenseTarget."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, make_problem, random_orthogonal, random_samples, sample_targets

from precond_lab import DenseTarget, EigenKronecker, Kronecker, SampleTarget
from precond_lab import estimators as est
from precond_lab import reference as ref


def _psd(sigma):
    w = np.linalg.eigvalsh(sigma)
    return w.min() >= -1e-12 * w.max()


def _stats_psd(sigma, m, n):
    left, right = ref.shampoo_statistics(sigma, m, n)
    return _psd(left) and _psd(right)


def test_frobenius_optimal(problem):
    g, w, center = problem
    m, n = g.shape[1:]
    targets, sigma = sample_targets(g, w, center, chunk_sizes=(1, 3))
    a, b = ref.frobenius_optimal(sigma, m, n)
    want = np.kron(a, b)
    sv = np.linalg.svd(ref.rearrange(sigma, m, n), compute_uv=False)
    for name, t in targets:
        s = est.frobenius_optimal(t)
        assert isinstance(s, Kronecker) and s.info.converged, name
        assert_close(s.to_dense(), want, err_msg=name)
        # unit-norm factors, scale = σ₁ = ⟨Σ, A⊗B⟩, traces ≥ 0
        assert_close(jnp.linalg.norm(s.left), 1.0)
        assert_close(jnp.linalg.norm(s.right), 1.0)
        assert_close(s.scale, sv[0])
        assert_close(np.sum(sigma * np.kron(s.left, s.right)), sv[0])
        assert float(jnp.trace(s.left)) >= 0
        if _psd(sigma):  # Van Loan–Pitsianis: PSD Σ has PSD optimal factors
            assert np.linalg.eigvalsh(s.left).min() >= -1e-12
            assert np.linalg.eigvalsh(s.right).min() >= -1e-12


@pytest.mark.parametrize("variant", ["jacobi", "gauss-seidel"])
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_power_iteration(problem, steps, variant):
    g, w, center = problem
    m, n = g.shape[1:]
    targets, sigma = sample_targets(g, w, center, chunk_sizes=(3,))
    a, b = ref.power_iteration(sigma, m, n, steps, variant)
    if np.trace(a) < 0:
        a, b = -a, -b
    for name, t in targets:
        s = est.power_iteration(t, steps, variant=variant)
        assert_close(s.left, a, err_msg=name)
        assert_close(s.right, b, err_msg=name)
        assert_close(s.scale, np.sum(sigma * np.kron(a, b)), atol_scale=np.linalg.norm(sigma))
        assert len(s.info.residuals) == steps


def test_shampoo_and_shampoo_squared(problem):
    g, w, center = problem
    m, n = g.shape[1:]
    targets, sigma = sample_targets(g, w, center, chunk_sizes=(3,))
    left, right = ref.shampoo_statistics(sigma, m, n)
    for name, t in targets:
        s2 = est.shampoo_squared(t)
        assert_close(s2.left, left, err_msg=name)
        assert_close(s2.right, right, err_msg=name)
        assert_close(s2.scale, 1.0 / np.trace(sigma))
        assert_close(s2.to_dense(), ref.shampoo_squared(sigma, m, n), err_msg=name)
        if _stats_psd(sigma, m, n):
            s1 = est.shampoo(t)
            # L^{1/2} has round-off O(sqrt(eps)) where L is singular (single sample)
            tol = 1e-10 if np.linalg.matrix_rank(left) == m else 1e-7
            assert_close(s1.to_dense(), ref.shampoo(sigma, m, n), rtol=tol, err_msg=name)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("damping", [0.0, 0.2])
def test_one_sided_kl(problem, side, damping):
    g, w, center = problem
    m, n = g.shape[1:]
    targets, sigma = sample_targets(g, w, center, chunk_sizes=(3,))
    want = ref.one_sided_kl(sigma, m, n, side, damping)
    for name, t in targets:
        s = est.one_sided_kl(t, side=side, damping=damping)
        assert_close(s.to_dense(), want, err_msg=name)


# KL needs a full-rank target (or damping): N ≥ mn or damping > 0.
KL_CASES = [
    # (seed, N, m, n, weights, center, damping)
    (1, 30, 3, 2, "positive", False, 0.0),
    (2, 20, 2, 4, "default", True, 0.0),
    (3, 12, 1, 3, "default", False, 0.0),
    (4, 9, 4, 1, "positive", False, 0.0),
    (5, 3, 3, 2, "default", False, 0.1),  # rank deficient: damping required
    (6, 40, 3, 2, "positive", False, 0.5),
    (7, 1, 3, 2, "default", False, 0.05),  # a single sample
    (8, 60, 5, 8, "positive", False, 0.0),
]


@pytest.mark.parametrize("case", KL_CASES, ids=lambda c: "N{1}-m{2}-n{3}-l{6}".format(*c))
def test_kl_optimal(case):
    seed, num, m, n, kind, center, damping = case
    g, w, _ = make_problem(seed, num, m, n, kind, center)
    targets, sigma = sample_targets(g, w, center, chunk_sizes=(1,))
    left, right = ref.kl_flip_flop(sigma, m, n, damping=damping, iters=20000, tol=1e-15)
    want = np.kron(left, right)
    for name, t in targets:
        s = est.kl_optimal(t, damping=damping)
        assert s.info.converged, name
        # the flip-flop stops at a relative change of 1e-12 per sweep and converges
        # linearly; the product is accurate to ~1e-12/(1 - rate) ≲ 1e-10
        assert_close(s.to_dense(), want, rtol=1e-9, err_msg=name)
        assert np.all(np.diff(s.info.objective) <= 1e-12 * np.abs(s.info.objective).max())


def test_kfac_no_sharing(rng):
    a = rng.standard_normal((6, 3))
    d = rng.standard_normal((6, 2))
    w = rng.uniform(0.1, 1.0, 6)
    for weights in (None, w):
        left, right = ref.kfac(a, d, weights)
        for variant in ("expand", "reduce"):
            s = est.kfac(a, d, weights=weights, variant=variant)
            assert_close(s.to_dense(), np.kron(left, right))
            assert s.matrix_shape == (2, 3)  # output side first


@pytest.mark.parametrize("variant", ["expand", "reduce"])
def test_kfac_sharing_and_classes(variant, rng):
    a = rng.standard_normal((4, 5, 3))  # (N, R, n)
    d = rng.standard_normal((4, 2, 5, 2))  # (N, C, R, m)
    w = rng.uniform(0.1, 1.0, 4)
    for weights in (None, w):
        left, right = ref.kfac(a, d, weights, variant)
        s = est.kfac(a, d, weights=weights, variant=variant)
        assert_close(s.left, left)
        assert_close(s.right, right)
    # a class axis without sharing
    d2 = rng.standard_normal((4, 3, 2))
    a2 = rng.standard_normal((4, 3))
    left, right = ref.kfac(a2, d2, None, variant)
    assert_close(est.kfac(a2, d2, variant=variant).to_dense(), np.kron(left, right))


def test_eigencorrected(problem, rng):
    g, w, center = problem
    m, n = g.shape[1:]
    targets, sigma = sample_targets(g, w, center, chunk_sizes=(3,))
    qa, qb = random_orthogonal(rng, m), random_orthogonal(rng, n)
    left, right = ref.shampoo_statistics(sigma, m, n)
    qa_s, qb_s = np.linalg.eigh(left)[1], np.linalg.eigh(right)[1]
    want_default = np.kron(qa_s, qb_s)
    want_default = want_default @ np.diag(ref.eigencorrected(sigma, qa_s, qb_s).ravel())
    want_default = want_default @ np.kron(qa_s, qb_s).T
    q = np.kron(qa, qb)
    want = q @ np.diag(ref.eigencorrected(sigma, qa, qb).ravel()) @ q.T
    for name, t in targets:
        s = est.eigencorrected(t, basis=(qa, qb))
        assert isinstance(s, EigenKronecker)
        assert_close(s.values, ref.eigencorrected(sigma, qa, qb), err_msg=name)
        assert_close(s.to_dense(), want, err_msg=name)
        # default basis: Shampoo's eigenvectors (dense product independent of signs)
        if (
            len(set(np.round(np.linalg.eigvalsh(left), 8))) == m
            and len(set(np.round(np.linalg.eigvalsh(right), 8))) == n
        ):
            assert_close(est.eigencorrected(t).to_dense(), want_default, err_msg=name)
        # basis given as a structure: a Kronecker's eigenbasis, or an EigenKronecker's
        kron = Kronecker(
            qa @ np.diag(np.arange(1.0, m + 1)) @ qa.T, qb @ np.diag(np.arange(1.0, n + 1)) @ qb.T
        )
        assert_close(est.eigencorrected(t, basis=kron).to_dense(), want, err_msg=name)
        eig = EigenKronecker(qa, qb, np.ones((m, n)))
        assert_close(est.eigencorrected(t, basis=eig).to_dense(), want, err_msg=name)


def test_diagonal(problem):
    g, w, center = problem
    m, n = g.shape[1:]
    targets, sigma = sample_targets(g, w, center, chunk_sizes=(3,))
    for name, t in targets:
        s = est.diagonal(t)
        assert_close(s.values, np.diag(sigma).reshape(m, n), err_msg=name)
        assert_close(s.to_dense(), ref.diagonal(sigma), err_msg=name)


def test_estimators_accept_arrays_and_keywords(rng):
    """Raw arrays with weights/center/chunk_size give what the equivalent Target gives."""
    g = random_samples(rng, 8, 3, 2)
    w = rng.uniform(0.1, 1.0, 8)
    t = SampleTarget(g, w, center=True)
    for fn in (
        est.frobenius_optimal,
        est.shampoo,
        est.shampoo_squared,
        est.kl_optimal,
        est.one_sided_kl,
        est.diagonal,
        est.eigencorrected,
    ):
        a = fn(g, weights=w, center=True, chunk_size=3).to_dense()
        assert_close(a, fn(t).to_dense(), err_msg=fn.__name__)
    assert_close(
        est.power_iteration(g, 2, weights=w, center=True, chunk_size=3).to_dense(),
        est.power_iteration(t, 2).to_dense(),
    )


def test_power_iteration_inits(rng):
    g = random_samples(rng, 10, 3, 2)
    sigma = ref.target_matrix(g)
    t = DenseTarget(sigma, (3, 2))
    a0, b0 = np.eye(3) + 0.1, np.eye(2) * 2
    s = est.power_iteration(t, 0, init=(a0, b0))
    assert_close(s.left, a0 / np.linalg.norm(a0))
    s1 = est.power_iteration(t, 1, init=Kronecker(a0, b0))
    r = ref.rearrange(sigma, 3, 2)
    want_a = (r @ (b0 / np.linalg.norm(b0)).reshape(-1)).reshape(3, 3)
    assert_close(s1.left, want_a / np.linalg.norm(want_a))
    s_rand = est.power_iteration(t, 60, init="random")
    assert_close(s_rand.to_dense(), est.frobenius_optimal(t).to_dense(), rtol=1e-8)


def test_float32_path(rng):
    """float32 samples give float32 structures (dtype preserved), close to the f64 reference."""
    g = random_samples(rng, 30, 3, 2)
    g32 = g.astype(np.float32)
    sigma = ref.target_matrix(g32.astype(np.float64))
    m, n = 3, 2
    a, b = ref.frobenius_optimal(sigma, m, n)
    lk, rk = ref.kl_flip_flop(sigma, m, n)
    want = {
        "frobenius_optimal": np.kron(a, b),
        "shampoo": ref.shampoo(sigma, m, n),
        "shampoo_squared": ref.shampoo_squared(sigma, m, n),
        "kl_optimal": np.kron(lk, rk),
        "one_sided_kl": ref.one_sided_kl(sigma, m, n),
        "diagonal": ref.diagonal(sigma),
    }
    for name, dense in want.items():
        s = getattr(est, name)(g32, chunk_size=4)
        assert s.dtype == jnp.float32, name
        out = s.to_dense()
        assert out.dtype == jnp.float32, name
        # float32 round-off (eps ≈ 6e-8) amplified by conditioning O(10–100)
        assert_close(out, dense, rtol=2e-5, err_msg=name)
    p = est.power_iteration(g32, 3)
    assert p.dtype == jnp.float32 and p.scale.dtype == jnp.float32
    e = est.eigencorrected(g32)
    assert e.dtype == jnp.float32 and e.left_basis.dtype == jnp.float32
    assert est.kfac(g32[:, :, 0], g32[:, 0, :]).dtype == jnp.float32


def test_kfac_factor_damping_adds_sqrt_lambda_to_each_factor(rng):
    a = rng.standard_normal((7, 3, 4))
    d = rng.standard_normal((7, 2, 3, 5))
    lam = 0.3
    left, right = ref.kfac(a, d)
    k = est.kfac(a, d, damping=lam)
    np.testing.assert_allclose(np.asarray(k.left), left + np.sqrt(lam) * np.eye(5), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(k.right), right + np.sqrt(lam) * np.eye(4), rtol=1e-12)
    with pytest.raises(ValueError, match="damping must be a finite number"):
        est.kfac(a, d, damping=-1.0)


def test_a_float32_kl_factor_that_looks_singular_names_float64():
    """On a float32 capture, round-off can make a damped KL factor look singular: the
    error says so and names the float64 path, not only 'pass damping'."""
    from precond_lab.errors import FitNeedsDampingError
    from precond_lab.estimators._kl import _spd_inverse

    bad = jnp.diag(jnp.asarray([1.0, 1e-9], jnp.float32))
    with pytest.raises(FitNeedsDampingError, match="ran in float32.*fit in float64"):
        _spd_inverse(bad, "left", 1e6)
    with pytest.raises(FitNeedsDampingError) as info:
        _spd_inverse(bad.astype(jnp.float64), "left", 1e6)
    assert "ran in" not in str(info.value)  # float64: only the damping advice
