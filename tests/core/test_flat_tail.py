"""Rank-r + flat-tail restriction of KL-Shampoo's factors (Pro-KLShampoo, arXiv 2605.06316):
the closed-form tail value against brute force, dense float64 references, the identity at
full rank, monotonicity in r, and spike counts on a spiked target."""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy.optimize import minimize_scalar  # noqa: E402

from precond_lab import estimators as est  # noqa: E402
from precond_lab import heldout  # noqa: E402
from precond_lab import reference as ref  # noqa: E402
from precond_lab.targets import DenseTarget, SampleTarget  # noqa: E402

M, N, COUNT, LAM = 6, 5, 200, 1e-3


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((COUNT, M, N)) * np.linspace(0.3, 2, N)
    g = g * np.linspace(0.5, 3, M)[:, None]
    t = SampleTarget(g)
    fit = est.kl_optimal(t, damping=LAM, tol=1e-14, max_iter=5000)
    return ref.target_matrix(g), t, fit


def _random_psd(d, seed):
    a = np.random.default_rng(seed).standard_normal((d, 2 * d))
    return a @ a.T / (2 * d)


def _eig_desc(a):
    w, q = np.linalg.eigh(a)
    return w[::-1], q[:, ::-1]


def _argmin_log(objective, low, high) -> float:
    res = minimize_scalar(
        lambda lt: objective(np.exp(lt)),
        bounds=(np.log(low), np.log(high)),
        method="bounded",
        options={"xatol": 1e-12},
    )
    return float(np.exp(res.x))


def test_tail_value_is_the_arithmetic_mean_and_minimises_the_factor_kl():
    """τ = mean of the tail eigenvalues minimises KL(N(0, A) ‖ N(0, B(τ))), checked by a
    brute-force one-dimensional minimisation; the harmonic mean (the reverse KL's τ) does
    not."""
    a = _random_psd(7, 1)
    w, q = _eig_desc(a)
    for r in (0, 2, 5):

        def b(tau, r=r):
            return (q * np.concatenate([w[:r], np.full(7 - r, tau)])) @ q.T

        def kl(tau, b=b):
            bm = b(tau)
            _, ldb = np.linalg.slogdet(bm)
            _, lda = np.linalg.slogdet(a)
            return 0.5 * (np.trace(np.linalg.solve(bm, a)) - 7 + ldb - lda)

        tau = est.flat_tail_value(w, r)
        assert tau == pytest.approx(w[r:].mean(), rel=1e-15)
        brute = _argmin_log(kl, w[-1], w[0])
        assert brute == pytest.approx(tau, rel=1e-6)
        assert kl(tau) <= min(kl(tau * (1 + 1e-4)), kl(tau * (1 - 1e-4)), kl(brute) + 1e-14)
        harmonic = 1.0 / np.mean(1.0 / w[r:])
        assert kl(tau) < kl(harmonic)
        got = np.asarray(est.flat_tail_factor(a, r))
        assert np.linalg.norm(got - b(tau)) <= 1e-12 * np.linalg.norm(b(tau))


def test_tail_value_minimises_the_target_kl_with_the_other_factor_fixed(problem):
    """At kl_optimal's fixed point the factor-level τ is also the minimiser of the
    target-level KL(Σ+λI ‖ B(τ) ⊗ R) (dense float64, brute force)."""
    sigma, _, fit = problem
    left, right, c = np.asarray(fit.left), np.asarray(fit.right), float(fit.scale)
    w, q = _eig_desc(left)
    for r in (1, 3):

        def kl(tau, r=r):
            b = (q * np.concatenate([w[:r], np.full(M - r, tau)])) @ q.T
            return ref.kl_objective(sigma, c * b, right, LAM)

        tau = est.flat_tail_value(w, r)
        assert _argmin_log(kl, w[-1], w[0]) == pytest.approx(tau, rel=1e-6)
        assert kl(tau) <= min(kl(tau * (1 + 1e-4)), kl(tau * (1 - 1e-4)))


def test_restricted_factor_matches_the_dense_reference_and_keeps_the_trace():
    a = _random_psd(8, 2)
    w, _ = _eig_desc(a)
    for r in range(9):
        got = np.asarray(est.flat_tail_factor(a, r))
        want = ref.flat_tail_factor(a, r)
        assert np.linalg.norm(got - want) <= 1e-12 * np.linalg.norm(want)
        assert np.trace(got) == pytest.approx(np.trace(a), rel=1e-12)  # τ is the tail's mean
        gw = np.sort(np.linalg.eigvalsh(got))[::-1]
        np.testing.assert_allclose(gw[:r], w[:r], rtol=1e-10)
        if r < 8:
            np.testing.assert_allclose(gw[r:], w[r:].mean(), rtol=1e-10)


def test_full_rank_is_the_identity_map(problem):
    _, t, fit = problem
    a = _random_psd(5, 3)
    np.testing.assert_array_equal(np.asarray(est.flat_tail_factor(a, 5)), a)
    np.testing.assert_array_equal(np.asarray(est.flat_tail_factor(a, 9)), a)
    # a tail of one eigenvalue is already flat: the same matrix, by the formula too
    assert np.linalg.norm(ref.flat_tail_factor(a, 4) - a) <= 1e-12 * np.linalg.norm(a)
    assert est.flat_tail(fit, max(M, N)) is fit
    assert est.flat_tail(fit, max(M, N) - 1) is fit
    ds = heldout.flat_tail_errors(t, [max(M, N) - 1, max(M, N), 50], damping=LAM, fit=fit)
    np.testing.assert_array_equal(ds["kl_excess"].values, 0.0)
    assert np.all(ds["gain_error_max"].values <= 1e-12)


def test_errors_against_rank_match_dense_references_and_do_not_increase(problem):
    sigma, t, fit = problem
    ds = heldout.flat_tail_errors(t, damping=LAM, fit=fit)
    assert list(ds["rank"].values) == list(range(max(M, N) + 1))
    left, right, c = np.asarray(fit.left), np.asarray(fit.right), float(fit.scale)
    s_full = c * np.kron(left, right)
    omega, vecs = _eig_desc(s_full)
    kl_full = ref.kl_objective(sigma, c * left, right, LAM)
    assert ds.attrs["kl_full"] == pytest.approx(kl_full, rel=1e-10)
    for r in ds["rank"].values:
        b_l = ref.flat_tail_factor(left, min(r, M))
        b_r = ref.flat_tail_factor(right, min(r, N))
        kl = ref.kl_objective(sigma, c * b_l, b_r, LAM)
        row = ds.sel(rank=r)
        assert float(row["kl"]) == pytest.approx(kl, rel=1e-10)
        assert float(row["kl_excess"]) == pytest.approx(kl - kl_full, rel=1e-8, abs=1e-10)
        s_inv = np.linalg.inv(c * np.kron(b_l, b_r))
        quad = np.einsum("ij,ik,kj->j", vecs, s_inv, vecs)
        gamma = -0.5 * np.log10(1.0 / (quad * omega))
        assert float(row["gain_error_max"]) == pytest.approx(np.max(np.abs(gamma)), abs=1e-10)
        assert float(row["gain_error_rms"]) == pytest.approx(np.sqrt(np.mean(gamma**2)), abs=1e-10)
    excess = ds["kl_excess"].values
    assert np.all(excess >= -1e-12 * kl_full)  # S is the KL minimiser over Kronecker products
    assert np.all(np.diff(excess) <= 1e-12 * kl_full), excess  # non-increasing in r
    assert excess[0] > 0


def test_restricted_estimator_is_the_restricted_kl_fit(problem):
    sigma, t, fit = problem
    s = est.kl_flat_tail(t, (2, 1), damping=LAM, tol=1e-14, max_iter=5000)
    want = est.flat_tail(fit, (2, 1))
    np.testing.assert_allclose(np.asarray(s.to_dense()), np.asarray(want.to_dense()), rtol=1e-9)
    assert s.info is not None and s.info.converged
    spec = est.parse_estimator("kl_flat_tail(2)")
    assert spec.spec is est.ESTIMATORS["kl_flat_tail"]


def _spiked(d, rho, seed, noise=0.5):
    """``U diag(spikes) Uᵀ + noise·I``: a rank-``rho`` signal plus isotropic noise."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((d, rho)))
    spikes = np.linspace(20.0, 60.0, rho)
    return (u * spikes) @ u.T + noise * np.eye(d)


@pytest.mark.parametrize("rho", [1, 2, 3])
def test_spiked_target_has_rho_spikes_and_rank_rho_recovers_the_fit(rho):
    """Σ = A ⊗ C with A, C rank-ρ signal plus isotropic noise: kl_optimal's factors have
    ρ spikes and a flat tail, and r = ρ leaves the fit unchanged (≤ 1e-10)."""
    m, n = 9, 8
    a, c = _spiked(m, rho, 10 + rho), _spiked(n, rho, 20 + rho, noise=0.3)
    t = DenseTarget(np.kron(a, c), (m, n))
    fit = est.kl_optimal(t, tol=1e-14, max_iter=5000)
    for factor in (fit.left, fit.right):
        prof = est.spike_profile(factor)
        assert prof.spikes == rho
        assert prof.tail_cv <= 1e-10
        assert est.spike_profile(prof.eigenvalues).spikes == rho  # eigenvalues given
    dense = np.asarray(fit.to_dense())
    restricted = np.asarray(est.flat_tail(fit, rho).to_dense())
    assert np.linalg.norm(restricted - dense) <= 1e-10 * np.linalg.norm(dense)
    ds = heldout.flat_tail_errors(t, [rho - 1, rho], fit=fit)
    assert abs(float(ds["kl_excess"].sel(rank=rho))) <= 1e-10
    assert float(ds["gain_error_max"].sel(rank=rho)) <= 1e-10
    assert float(ds["kl_excess"].sel(rank=rho - 1)) > 1e-3  # one spike fewer costs
    assert ds.attrs["left_spikes"] == ds.attrs["right_spikes"] == rho


def test_spike_profile_rule():
    prof = est.spike_profile(np.array([10.0, 1.2, 1.0, 1.0, 0.8]), multiple=3.0)
    assert (prof.spikes, prof.median, prof.threshold) == (1, 1.0, 3.0)
    assert prof.tail_mean == pytest.approx(1.0)
    assert prof.tail_cv == pytest.approx(np.std([1.2, 1.0, 1.0, 0.8]) / 1.0)
    assert est.spike_profile(np.ones(4)).spikes == 0 and est.spike_profile(np.ones(4)).tail_cv == 0
