"""``sweep.batch_statistics`` against dense float64 statistics and ``H_GN``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from precond_lab.sweep import batch_statistics as bs

N, K, M, NN = 8, 3, 2, 3


def _dense(s, w):
    v = s.reshape(len(s), -1).astype(np.float64)
    return (v * np.asarray(w)[:, None]).T @ v


def _cos(a, b):
    return float(np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    draws = rng.standard_normal((N, K, M, NN)).astype(np.float32)
    y = rng.standard_normal((10, M, NN)).astype(np.float32)
    w = np.full(10, 0.1)
    return draws, y, w


def test_cosines_and_factors_are_the_dense_ones(case):
    draws, y, w = case
    ld = bs.LabelDraws(draws, y, w)
    f = draws.reshape(N * K, M, NN).astype(np.float64)
    h = _dense(y, w)
    for bsz in (1, 2, 4):
        c, cw = bs.group_operator(N, K, bsz)
        s = (c.toarray() @ f.reshape(N * K, -1)).reshape(-1, M, NN)
        assert abs(ld.cosine(c, cw) - _cos(_dense(s, cw), h)) < 1e-6
        left, right = ld.factors(c, cw)
        want_l = np.einsum("p,pij,pkj->ik", cw, s, s)
        np.testing.assert_allclose(left, want_l, rtol=1e-5)
        np.testing.assert_allclose(right, np.einsum("p,pji,pjk->ik", cw, s, s), rtol=1e-5)
        # the expected statistic: E[ggᵀ] + (B − 1) E[g]E[g]ᵀ
        c, ew = bs.expected_operator(N, K, bsz)
        mean = f.mean(0).ravel()
        dense = _dense(f, np.full(N * K, 1 / (N * K))) + (bsz - 1) * np.outer(mean, mean)
        assert abs(ld.cosine(c, ew) - _cos(dense, h)) < 1e-6
        out = bs.batch_statistics(ld, bsz, 5, np.random.default_rng(1), repeats=2)
        gm = f.mean(0)
        want = f.transpose(1, 0, 2).reshape(M, -1) @ f.transpose(1, 0, 2).reshape(M, -1).T
        want = want / (N * K) + (bsz - 1) * gm @ gm.T
        np.testing.assert_allclose(out["expected"][1][0], want, rtol=1e-5)
        assert len(out["resampled"]) == 2


def test_resampled_is_the_dense_mean_of_batch_outer_products(case):
    draws, y, w = case
    ld = bs.LabelDraws(draws, y, w)
    idx = bs.draw_batches(N, K, 4, 6, np.random.default_rng(2))
    f = draws.reshape(N * K, -1).astype(np.float64)
    s = np.stack([f[row].sum(0) / 2.0 for row in idx])  # √B = 2
    cos, (left, _) = ld.resampled(idx)
    assert abs(cos - _cos(_dense(s, np.full(6, 1 / 6)), _dense(y, w))) < 1e-6
    s3 = s.reshape(6, M, NN)
    np.testing.assert_allclose(left, np.einsum("pij,pkj->ik", s3, s3) / 6, rtol=1e-5)
    assert np.all(idx % K < K) and idx.max() < N * K


def test_centering_removes_the_draws_mean(case):
    draws, y, w = case
    ld = bs.LabelDraws(draws, y, w, center=True)
    np.testing.assert_allclose(ld.mean, 0.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"draws must be \(N, k, m, n\)"):
        bs.LabelDraws(draws[0], y, w)
    with pytest.raises(ValueError, match="must be ≥ 1"):
        bs.batch_statistics(ld, 0, 5, np.random.default_rng(0))


# ---- brute-force checks (moved from the study's tests) ----


def _dense_c(f, c, w):
    s = c @ f.reshape(len(f), -1).astype(np.float64)
    return (s.T * w) @ s


def test_expected_statistic_is_the_average_over_all_batches():
    """E[B ḡḡᵀ] over batches drawn with replacement = E[ggᵀ] + (B−1) E[g]E[g]ᵀ, exactly."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal((3, 2, 2, 3)).astype(np.float32)  # N=3 examples, K=2 draws
    flat = g.reshape(6, 2, 3).astype(np.float64)
    ggn = rng.standard_normal((5, 2, 3)).astype(np.float32)
    y = ggn.reshape(5, -1).astype(np.float64)

    cell = bs.LabelDraws(g, ggn, np.full(5, 0.2))
    for bsz in (1, 2, 3):
        brute = np.zeros((6, 6))
        tuples = list(itertools.product(range(6), repeat=bsz))
        for t in tuples:
            v = flat[list(t)].sum(axis=0).reshape(-1)
            brute += np.outer(v, v) / bsz
        brute /= len(tuples)
        c, w = bs.expected_operator(3, 2, bsz)
        np.testing.assert_allclose(_dense_c(cell.f, c, w), brute, rtol=1e-5, atol=1e-6)
        stats = bs.batch_statistics(cell, bsz, 4, rng)
        # the closed-form Shampoo factors of the expectation = those of its samples
        lf, rf = cell.factors(c, w)
        np.testing.assert_allclose(stats["expected"][1][0], lf, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stats["expected"][1][1], rf, rtol=1e-4, atol=1e-5)
        # the Gram-matrix cosine is the dense one
        ggn_dense = (y.T * 0.2) @ y
        exact = np.sum(brute * ggn_dense) / np.linalg.norm(brute) / np.linalg.norm(ggn_dense)
        assert stats["expected"][0] == pytest.approx(exact, rel=1e-5)


def test_groups_and_resampled_batches():
    rng = np.random.default_rng(1)
    g = rng.standard_normal((8, 3, 2, 2)).astype(np.float32)
    f = g.reshape(24, 4)
    c, w = bs.group_operator(8, 3, 4)
    assert c.shape == (2 * 3, 24) and np.allclose(w, 1 / 6)
    np.testing.assert_allclose(c.toarray()[1] @ f, g[:4, 1].sum(axis=0).ravel() / 2, rtol=1e-6)
    idx = bs.draw_batches(8, 3, 5, 7, rng)
    assert idx.shape == (7, 5) and idx.min() >= 0 and idx.max() < 24
    # the directly summed statistic equals the dense batch-matrix construction
    ggn = rng.standard_normal((6, 2, 2)).astype(np.float32)
    cell = bs.LabelDraws(g, ggn, np.full(6, 1 / 6))
    dense = np.zeros((7, 24))
    np.add.at(dense, (np.repeat(np.arange(7), 5), idx.ravel()), 1 / np.sqrt(5))
    cos, (left, right) = cell.resampled(idx)
    assert cos == pytest.approx(cell.cosine(dense, np.full(7, 1 / 7)), rel=1e-5)
    lf, rf = cell.factors(dense, np.full(7, 1 / 7))
    np.testing.assert_allclose(left, lf, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(right, rf, rtol=1e-4, atol=1e-5)


def test_centred_sampled_draws_have_no_batch_bias():
    rng = np.random.default_rng(2)
    g = rng.standard_normal((6, 4, 2, 3)).astype(np.float32) + 0.5  # a spurious mean
    ggn = rng.standard_normal((5, 2, 3)).astype(np.float32)

    cell = bs.LabelDraws(g, ggn, np.full(5, 0.2), center=True)
    np.testing.assert_allclose(cell.mean, 0.0, atol=1e-6)
    e1 = bs.batch_statistics(cell, 1, 4, rng)["expected"]
    e4 = bs.batch_statistics(cell, 4, 4, rng)["expected"]
    assert e1[0] == pytest.approx(e4[0], rel=1e-6)  # E[B ḡḡᵀ] = E[ggᵀ] at every B
    reps = bs.batch_statistics(cell, 2, 4, rng, repeats=3)["resampled"]
    assert len(reps) == 3 and len({round(c, 8) for c, _ in reps}) == 3  # independent repeats
