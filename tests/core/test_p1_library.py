"""The library pieces of the P1 KL study, each against a dense float64 reference."""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from precond_lab import SampleTarget  # noqa: E402
from precond_lab import estimators as est  # noqa: E402
from precond_lab import metrics as met  # noqa: E402
from precond_lab import reference as ref  # noqa: E402
from precond_lab.sweep import evaluate  # noqa: E402
from precond_lab.targets import kronecker_samples, mixture_samples  # noqa: E402


def _problem(m=4, n=3, num=60, seed=0):
    g = mixture_samples(m, n, num, seed=seed)
    return g, ref.target_matrix(g), SampleTarget(g)


def test_adafactor_is_the_numerical_vn_optimum():
    g, sigma, t = _problem()
    lam = 1e-3 * np.trace(sigma) / 12
    x = t.damped(lam)
    ada = est.adafactor(x)
    np.testing.assert_allclose(
        np.asarray(ada.to_dense()), ref.adafactor(sigma + lam * np.eye(12), 4, 3), rtol=1e-12
    )
    delta = np.asarray(x.rotated_diagonal(None, None))
    prod, obj = ref.vn_optimal_diagonal_kronecker(delta)
    np.testing.assert_allclose(prod, np.asarray(ada.values), rtol=1e-6)
    assert ref.vn_diagonal_kronecker_objective(delta, ada.values) <= obj + 1e-12
    # the reduced objective differs from the von Neumann divergence by a constant
    other = np.asarray(ada.values) * np.linspace(0.5, 2, 3)
    d_vn = [float(met.von_neumann_divergence(x, s)) for s in (ada, type(ada)(other))]
    d_obj = [ref.vn_diagonal_kronecker_objective(delta, p) for p in (ada.values, other)]
    assert abs((d_vn[1] - d_vn[0]) - (d_obj[1] - d_obj[0])) < 1e-9 * abs(d_vn[1])


def test_shampoo_product_is_the_two_one_sided_solutions():
    _, sigma, t = _problem()
    left, right = est.one_sided_kl(t, side="left"), est.one_sided_kl(t, side="right")
    want = np.asarray(left.to_dense()) @ np.asarray(right.to_dense())
    np.testing.assert_allclose(np.asarray(est.shampoo_product(t).to_dense()), want, rtol=1e-12)
    np.testing.assert_allclose(want, ref.shampoo_product(sigma, 4, 3), rtol=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_kl_fixed_point_residual_matches_the_dense_sums(lam):
    _, sigma, t = _problem()
    x = t.damped(lam) if lam else t
    fit = est.kl_optimal(x, max_iter=3)  # not converged: a residual well above round-off
    left, right = np.asarray(fit.left) * float(fit.scale), np.asarray(fit.right)
    want = ref.kl_fixed_point_residual(sigma, left, right, lam)
    assert want > 1e-6
    np.testing.assert_allclose(est.kl_fixed_point_residual(x, fit), want, rtol=1e-10)
    done = est.kl_optimal(x, tol=1e-14, max_iter=5000)
    assert est.kl_fixed_point_residual(x, done) < 1e-11


def test_kl_shape_gap_matches_dense_kl():
    g, sigma, t = _problem()
    lam = 1e-3 * np.trace(sigma) / 12
    x = sigma + lam * np.eye(12)
    res = est.kl_shape_gap(g, damping_rel=1e-3)
    left, right = ref.kl_flip_flop(sigma, 4, 3, damping=lam, iters=5000)
    opt = ref.kl_divergence(x, np.kron(left, right))
    prod = ref.shampoo_product(x, 4, 3)
    gap = ref.kl_divergence(x, ref.kl_scale(x, prod) * prod) - opt
    assert abs(res.kl_optimal - opt) < 1e-9 * opt
    assert abs(res.gap - gap) < 1e-6 * gap
    assert res.resampled.shape == (0,) and np.isnan(res.spread)


def test_kl_shape_gap_resamples_examples_as_blocks():
    g = mixture_samples(3, 2, 40, seed=1)
    a = est.kl_shape_gap(g, resamples=4, per_example=2, seed=3)
    b = est.kl_shape_gap(g, resamples=4, per_example=2, seed=3)
    np.testing.assert_array_equal(a.resampled, b.resampled)
    assert np.all(np.isfinite(a.resampled)) and a.spread > 0
    assert a.corrected == pytest.approx(2 * a.gap - a.resampled.mean())


def test_near_kronecker_gap_is_sampling_noise_mixture_gap_is_not():
    """The bias-corrected gap: ≤ 0 for Kronecker samples plus tiny noise, > 0 otherwise."""
    near = est.kl_shape_gap(kronecker_samples(4, 3, 2000, noise=1e-3, seed=1), resamples=10)
    far = est.kl_shape_gap(mixture_samples(4, 3, 2000, spread=2.0, seed=2), resamples=10)
    assert near.gap > 0 and near.corrected < 0
    assert far.corrected > 0.1 * far.kl_optimal and far.corrected > 2 * far.spread


def test_generators():
    g = mixture_samples(4, 3, 11, components=3, seed=0)
    assert g.shape == (11, 4, 3)
    np.testing.assert_array_equal(g, mixture_samples(4, 3, 11, components=3, seed=0))
    k = kronecker_samples(4, 3, 4000, seed=0)
    sigma = ref.target_matrix(k)
    left, right = ref.shampoo_statistics(sigma, 4, 3)
    err = np.linalg.norm(sigma - np.kron(left, right) / np.trace(sigma)) / np.linalg.norm(sigma)
    assert err < 0.1  # Kronecker up to sampling error


def test_evaluate_scores_a_named_set_of_targets_of_any_shape():
    ts = {"a 4x3": SampleTarget(_problem()[0]), "b 5x2": SampleTarget(_problem(5, 2, 30)[0])}
    ds = evaluate(ts, ["kl_optimal", "adafactor"], ["kl"], damping=1e-3,
                  damping_mode="relative", progress=False, raise_errors=True)  # fmt: skip
    assert list(ds["target"].values) == list(ts)
    assert int(ds["layer_rows"].item()) == -1  # the layer has no one shape
    assert ds["target_rows"].values.ravel().tolist() == [4, 5]
    assert ds["target_cols"].values.ravel().tolist() == [3, 2]
    for name, t in ts.items():
        m, n = t.matrix_shape
        x = t.damped(1e-3 * float(t.trace()) / (m * n))
        want = float(met.kl_divergence(x, est.kl_optimal(x)))
        got = float(ds["score"].sel(target=name, estimator="kl_optimal", metric="kl").item())
        assert got == pytest.approx(want, rel=1e-10)
