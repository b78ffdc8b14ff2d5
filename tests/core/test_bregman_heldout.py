"""Held-out evaluation: folds, and ξ, e, γ, O(k) against explicit float64 matrices."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

from precond_lab import DenseTarget, EigenKronecker, SampleTarget, heldout
from precond_lab import estimators as est
from precond_lab import reference as ref


@pytest.fixture(scope="module")
def folds():
    rng = np.random.default_rng(3)
    g = rng.standard_normal((90, 4, 3)) * np.linspace(0.3, 2.0, 3) * np.linspace(1, 3, 4)[:, None]
    return g, [g[idx] for idx in heldout.split_folds(90, 3, seed=1)]


def _dense_eig(x):
    w, u = np.linalg.eigh(x)
    return w[::-1], u[:, ::-1]


def test_split_folds_are_disjoint_and_keep_batches():
    f = heldout.split_folds(103, 4, seed=0)
    assert [len(x) for x in f] == [25] * 4
    assert len(np.unique(np.concatenate(f))) == 100
    b = heldout.split_folds(40, 2, method="random", batch_size=4, seed=2)
    for idx in b:
        starts = idx.reshape(-1, 4)
        assert np.all(starts % 4 == np.arange(4)) and np.all(np.diff(starts, axis=1) == 1)
    c = heldout.split_folds(12, 3, method="batch")
    assert [list(x) for x in c] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert not np.array_equal(heldout.split_folds(50, 2, seed=0)[0], c[0][:4])
    with pytest.raises(ValueError, match="cannot fill"):
        heldout.split_folds(3, 4)
    with pytest.raises(ValueError, match="method"):
        heldout.split_folds(10, 2, method="odd")
    with pytest.raises(ValueError, match="num_folds"):
        heldout.split_folds(10, 1)
    targets = heldout.split_target(np.ones((10, 2, 3)), 2)
    assert all(isinstance(t, SampleTarget) and t.num_samples == 5 for t in targets)


def test_directional_scales_match_dense(folds):
    g, _ = folds
    sigma = ref.target_matrix(g)
    u = np.random.default_rng(0).standard_normal((5, 4, 3))
    flat = u.reshape(5, -1)
    want = np.einsum("ki,ij,kj->k", flat, sigma, flat)
    for t in (SampleTarget(g, chunk_size=7), DenseTarget(sigma, (4, 3))):
        assert_close(heldout.directional_scales(t, u), want)
    damped = heldout.directional_scales(SampleTarget(g).damped(0.5), u)
    assert_close(damped, want + 0.5 * np.sum(flat**2, axis=1))
    with pytest.raises(ValueError, match="directions"):
        heldout.directional_scales(g, u[:, :3])


def test_heldout_scale_error_matches_dense(folds):
    _, (a, b, c) = folds
    ca, cb, cc = (ref.target_matrix(x) for x in (a, b, c))
    w, u = _dense_eig(ca)
    xi = heldout.heldout_scale_error(a, [b, c])
    assert xi.dims == ("fold", "direction") and xi.shape == (2, 12)
    for f, cx in enumerate((cb, cc)):
        want = np.log10(np.einsum("ik,ij,jk->k", u, cx, u) / w)
        assert_close(xi.isel(fold=f).values, want)
    assert_close(xi["source_eigenvalue"].values, w)
    # the same split scored on itself has zero error
    assert_close(heldout.heldout_scale_error(a, a).values, np.zeros((1, 12)), atol_scale=1.0)
    assert heldout.heldout_scale_error(a, b, num_directions=4).shape == (1, 4)


def test_heldout_gain_error_matches_dense(folds):
    _, (a, b, c) = folds
    ca, cb, cc = (ref.target_matrix(x) for x in (a, b, c))
    w, u = _dense_eig(ca)
    fit = est.bregman_optimal(a, 0.5)
    s_inv = np.linalg.inv(np.asarray(fit.to_dense()))
    h = 0.5 * (np.einsum("ik,ij,jk->k", u, cb, u) + np.einsum("ik,ij,jk->k", u, cc, u))
    quad = np.einsum("ik,ij,jk->k", u, s_inv, u)
    e = heldout.heldout_gain_error(a, [b, c], fit)
    assert_close(e.values, 0.5 * np.log10(h * quad))  # the paper's form at p = −½
    e1 = heldout.heldout_gain_error(a, [b, c], fit, exponent=-1.0)
    assert_close(e1.values, 2 * e.values)
    assert_close(e["heldout_scale"].values, h)
    # an exact fit of the held-out moment along its own eigenvectors has zero gain error
    exact = EigenKronecker(np.eye(4), np.eye(3), np.full((4, 3), 1 / 12))  # Σ = I/12
    e0 = heldout.heldout_gain_error(
        np.eye(12).reshape(12, 4, 3), np.eye(12).reshape(12, 4, 3), exact
    )
    assert_close(e0.values, np.zeros(12), atol_scale=1.0)


def test_recovery_error_matches_dense(folds):
    g, (a, _, _) = folds
    big = est.bregman_optimal(g, 0.0)
    few = est.bregman_optimal(a[:20], 0.0)
    w, v = _dense_eig(np.asarray(big.to_dense()))
    s_inv = np.linalg.inv(np.asarray(few.to_dense()))
    want = 0.5 * np.log10(w * np.einsum("ik,ij,jk->k", v, s_inv, v))
    gamma = heldout.recovery_error(few, big)
    assert_close(gamma.values, want)
    assert_close(gamma["reference_eigenvalue"].values, w)
    assert_close(heldout.recovery_error(big, big).values, np.zeros(12), atol_scale=1.0)
    diag = est.diagonal(a)
    d_inv = np.linalg.inv(np.asarray(diag.to_dense()))
    want = 0.5 * np.log10(w * np.einsum("ik,ij,jk->k", v, d_inv, v))
    assert_close(heldout.recovery_error(diag, big).values, want)


def test_subspace_overlap_matches_dense(folds):
    g, _ = folds
    sigma = ref.target_matrix(g)
    _, u = _dense_eig(sigma)
    fit = est.shampoo_squared(g)
    _, v = _dense_eig(np.asarray(fit.to_dense()))
    got = heldout.subspace_overlap(g, fit, k_max=8)
    want = [np.sum((u[:, :k].T @ v[:, :k]) ** 2) / k for k in range(1, 9)]
    assert_close(got.values, np.asarray(want))
    # an exact Kronecker target overlaps its own optimum completely
    rng = np.random.default_rng(1)
    la, ra = np.diag([4.0, 3.0, 2.0, 1.0]), np.diag([3.0, 1.5, 1.0])
    z = rng.standard_normal((4000, 4, 3))
    kron = np.sqrt(la) @ z @ np.sqrt(ra)
    ov = heldout.subspace_overlap(DenseTarget(np.kron(la, ra), (4, 3)), est.shampoo_squared(kron))
    assert ov.values[-1] == pytest.approx(1.0, abs=1e-12)
    assert ov.values[0] > 0.99
