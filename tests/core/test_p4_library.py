"""The P4 library pieces against dense float64 references: finite_sample, the heldout
additions, the reference checks of the Bregman family and online.fit_stream."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from precond_lab import estimators as est
from precond_lab import finite_sample as fs
from precond_lab import heldout, online
from precond_lab import reference as ref
from precond_lab.targets import SampleTarget

jax.config.update("jax_enable_x64", True)
QS = (2.0, 1.5, 1.0, 0.5, 0.25, 0.0)


def _samples(num=60, m=3, n=4, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((num, m, n)) * np.linspace(0.5, 2.0, n)
    return g + 0.5 * rng.standard_normal((num, m, 1)) * rng.standard_normal((num, 1, n))


def _dense_eig(sigma):
    w, v = np.linalg.eigh(sigma)
    return w[::-1], v[:, ::-1]


def test_effective_rank_is_trace_squared_over_trace_of_square():
    a = np.cov(np.random.default_rng(0).standard_normal((5, 20)))
    want = np.trace(a) ** 2 / np.trace(a @ a)
    assert fs.effective_rank(np.linalg.eigvalsh(a)) == pytest.approx(want, rel=1e-12)
    assert fs.effective_rank(np.ones(7)) == pytest.approx(7.0)


@pytest.mark.parametrize("q", QS)
def test_bregman_penalty_is_the_scalar_divergence(q):
    rng = np.random.default_rng(1)
    lam, r = 10.0 ** rng.uniform(-1, 1, 6), 10.0 ** rng.uniform(-1, 1, 6)
    want = [ref.bregman_divergence([[x]], [[x * y]], q) for x, y in zip(lam, r, strict=True)]
    np.testing.assert_allclose(ref.bregman_penalty(q, lam, r), want, rtol=1e-9)


@pytest.mark.parametrize("q", (2.0, 1.0, 0.5, 0.0))
def test_identity_and_optimality_checks_are_exact(q):
    e = ref.bregman_identity_errors(q, pairs=10, matrices=3)
    assert e["scalar"] < 1e-8 and e["homogeneity"] < 1e-10 and e["misalignment"] > 0
    assert (e["over_under"] > 1) == (q > 0.5) and (abs(e["over_under"] - 1) < 1e-12) == (q == 0.5)
    c = est.bregman_optimality_checks(_samples(), q)
    assert c["stationarity"] < 1e-9 and c["dense"] < 1e-8
    assert c["special"] < 1e-10 if q != 0.5 else np.isnan(c["special"])  # no named SQ optimum
    assert c["perturbation"] > 0
    assert np.isnan(est.bregman_optimality_checks(_samples(), 1.5)["special"])


def test_stationarity_residual_vanishes_only_at_the_fit():
    g = _samples()
    fit = est.bregman_optimal(g, 0.5, tol=1e-14)
    assert est.bregman_stationarity_residual(g, fit, 0.5) < 1e-10
    moved = type(fit)(fit.left * np.diag([1.0, 1.3, 1.0]), fit.right, fit.scale)
    assert est.bregman_stationarity_residual(g, moved, 0.5) > 1e-3
    damped = est.bregman_optimal(g, 0.0, damping=0.1, tol=1e-14)
    assert est.bregman_stationarity_residual(g, damped, 0.0, damping=0.1) < 1e-10


def test_kron_relative_error_matches_dense_whitening():
    a, b = (est.bregman_optimal(_samples(seed=s), 0.5) for s in (1, 2))
    w, v = np.linalg.eigh(np.asarray(b.to_dense()))
    inv_root = (v / np.sqrt(w)) @ v.T
    dense = inv_root @ np.asarray(a.to_dense()) @ inv_root - np.eye(12)
    assert fs.kron_relative_error(a, b) == pytest.approx(np.sum(dense**2) / 12, rel=1e-10)
    assert fs.kron_relative_error(b, b) == pytest.approx(0.0, abs=1e-12)


def test_three_component_gradients_sum_the_components():
    m, n, decays, scale, noise = 3, 4, (1.8, 0.8), 0.1, 0.02
    brng = np.random.default_rng(5)  # the documented construction, densely
    sigma = noise**2 * np.eye(m * n)
    for a in decays:
        ql = np.linalg.qr(brng.standard_normal((m, m)))[0] * np.arange(1, m + 1) ** (-a / 2)
        qr = np.linalg.qr(brng.standard_normal((n, n)))[0] * np.arange(1, n + 1) ** (-a / 2)
        sigma += scale**2 * np.kron(ql @ ql.T, qr @ qr.T)
    g = fs.three_component_gradients(
        40000, seed=1, basis_seed=5, shape=(m, n), decays=decays, scale=scale, noise=noise
    )
    got = ref.target_matrix(g)
    assert np.linalg.norm(got - sigma) / np.linalg.norm(sigma) < 0.03
    kron = est.frobenius_optimal(g)  # a sum of two Kronecker products is not one
    assert np.linalg.norm(np.asarray(kron.to_dense()) - got) / np.linalg.norm(got) > 0.05


def test_one_sided_factor_error_meets_prop_4():
    rng = np.random.default_rng(2)
    left = np.cov(rng.standard_normal((4, 12)))
    right = np.diag(np.arange(1, 6.0) ** -1.5)
    r = fs.one_sided_factor_error(left, right, 0.5, (20, 80), 400, seed=3)
    reff = np.trace(right**0.5) ** 2 / np.trace(right)  # r_eff(R^½), dense
    np.testing.assert_allclose(r["predicted"], 5 / (np.array([20, 80]) * reff), rtol=1e-12)
    assert np.all(np.abs(r["error"] - r["predicted"]) < 4 * r["error_sem"])


def test_joint_fit_errors_fit_subsets_of_permutations_against_the_pool_fit():
    pool = _samples(num=48)
    err = fs.joint_fit_errors(pool, (0.5, 2.0), (12, 48), 2, seed=4, tol=1e-12)
    perm = np.random.default_rng(4).permutation(48)
    want = fs.kron_relative_error(
        est.bregman_optimal(pool[perm[:12]], 0.5, tol=1e-12),
        est.bregman_optimal(pool, 0.5, tol=1e-12),
    )
    assert float(err.sel(q=0.5, num_samples=12, permutation=0)) == pytest.approx(want, rel=1e-8)
    assert float(np.abs(err.sel(num_samples=48)).max()) < 1e-12  # the whole pool is the reference


def test_minibatch_means_and_disjoint_blocks():
    g = _samples(num=11)
    np.testing.assert_allclose(heldout.minibatch_means(g, 2)[3], g[6:8].mean(0))
    assert heldout.minibatch_means(g, 2).shape == (5, 3, 4)
    blocks = heldout.disjoint_blocks(11, 3)
    assert [list(b) for b in blocks] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert len(heldout.disjoint_blocks(11, 3, max_blocks=2)) == 2


def test_crossfit_and_spectrum_ratio_against_dense():
    src, a, b = _samples(seed=1), _samples(seed=2), _samples(seed=3)
    w, v = _dense_eig(ref.target_matrix(src))
    u = v.T.reshape(-1, 3, 4)
    scale = [np.einsum("kab,ab->k", x, u_i) ** 2 for x in (a, b) for u_i in u]
    sa, sb = (np.array([s.mean() for s in scale[i * 12 : (i + 1) * 12]]) for i in (0, 1))
    got = heldout.crossfit_scale_error(src, a, b)
    np.testing.assert_allclose(got.values, np.log10(sa / sb), rtol=1e-8, atol=1e-10)
    fit = est.bregman_optimal(src, 0.0, damping=0.05)
    fitted = np.sort(np.linalg.eigvalsh(np.asarray(fit.to_dense())))[::-1]
    ratio = heldout.spectrum_log_ratio(src, fit, damping=0.05)
    np.testing.assert_allclose(ratio.values, np.log10(fitted / (w + 0.05)), rtol=1e-8)


def test_fold_scale_errors_and_trace_power_fit_errors():
    g = _samples(num=120, seed=7)
    folds = heldout.split_folds(len(g), 3, seed=0)
    ds = heldout.fold_scale_errors(g, folds)
    t = [SampleTarget(g[f]) for f in folds]
    want = heldout.heldout_scale_error(t[1], [t[0], t[2]]).mean("fold").values
    np.testing.assert_allclose(ds["heldout_scale_error"].sel(source=1).values, want)
    assert ds["crossfit_scale_error"].dims == ("source", "direction")
    src, held = g[folds[0]], t[1:]
    out = heldout.trace_power_fit_errors(
        src, held, 0.5, damping=0.01, few=10, few_repeats=2, ema_length=8, ema_blocks=3
    )
    large = est.bregman_optimal(src, 0.5, damping=0.01, tol=1e-8, max_iter=1000)
    e = heldout.heldout_gain_error(SampleTarget(src), held, large).values
    np.testing.assert_allclose(out["gain_error_large"].values, e, rtol=1e-6)
    assert out["few_error"].shape == (2, 2) and out["ema_error"].shape == (2, 3)
    assert float(out["few_error"].min()) >= 0 and float(out["ema_error"].min()) >= 0


def test_fit_stream_is_the_update_loop():
    g = _samples(num=9, seed=8)
    o = online.bregman_shampoo(0.5, shampoo_beta=0.9, frequency=2, clamp=False, damping=0.01)
    state = o.init(g[0])
    for x in g[1:]:
        state = o.update(state, x)
    want, got = o.approximation(state), online.fit_stream(o, g)
    np.testing.assert_allclose(np.asarray(got.to_dense()), np.asarray(want.to_dense()), rtol=1e-10)
