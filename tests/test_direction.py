"""Preconditioned-direction quality against dense float64 references."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from precond_lab import FitNeedsDampingError  # noqa: E402
from precond_lab.metrics._direction import (  # noqa: E402
    direction_quality,
    exact_direction,
    loss_scaling_response,
)
from precond_lab.structures import Diagonal, Kronecker  # noqa: E402
from precond_lab.targets import SampleTarget  # noqa: E402

M, N_COLS = 4, 3


def _samples(num, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, M))
    b = rng.standard_normal((N_COLS, N_COLS))
    return np.einsum("ij,kjl,ml->kim", a, rng.standard_normal((num, M, N_COLS)), b)


def _dense_power(sigma, p, damping):
    w, v = np.linalg.eigh(sigma)
    return (v * (np.maximum(w, 0) + damping) ** (-p)) @ v.T


def _dense_sigma(g):
    x = g.reshape(g.shape[0], -1)
    return x.T @ x / g.shape[0]


@pytest.mark.parametrize("num", [5, 40])  # rank-deficient and full-rank Σ
@pytest.mark.parametrize("p", [0.5, 1.0])
@pytest.mark.parametrize("damping", [1e-3, 0.3])
def test_exact_direction_matches_dense(num, p, damping):
    g = _samples(num)
    grad = np.random.default_rng(1).standard_normal((2, M, N_COLS))
    ref = (_dense_power(_dense_sigma(g), p, damping) @ grad.reshape(2, -1).T).T
    got = exact_direction(SampleTarget(g), grad, p=p, damping=damping)
    assert np.linalg.norm(np.asarray(got).reshape(2, -1) - ref) <= 1e-10 * np.linalg.norm(ref)


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_direction_quality_matches_dense(p):
    g = _samples(40)
    grad = np.random.default_rng(2).standard_normal((M, N_COLS))
    rng = np.random.default_rng(3)
    left = np.cov(rng.standard_normal((M, 10))) + np.eye(M)
    right = np.cov(rng.standard_normal((N_COLS, 10))) + np.eye(N_COLS)
    approx = Kronecker(left, right, 0.7)
    damping = 1e-2
    exact = _dense_power(_dense_sigma(g), p, damping) @ grad.reshape(-1)
    appr = _dense_power(0.7 * np.kron(left, right), p, damping) @ grad.reshape(-1)
    q = direction_quality(
        SampleTarget(g), approx, grad, p=p, damping=damping, approx_damping=damping
    )
    cos = exact @ appr / np.linalg.norm(exact) / np.linalg.norm(appr)
    assert abs(float(q.cosine) - cos) <= 1e-10
    rel = np.linalg.norm(appr - exact) / np.linalg.norm(exact)
    assert abs(float(q.relative_error) - rel) <= 1e-10 * rel
    assert abs(float(q.norm_ratio) - np.linalg.norm(appr) / np.linalg.norm(exact)) <= 1e-10
    assert float(q.cosine) < 1 - 1e-6  # a generic Kronecker is not exact


def test_exact_approximation_scores_one():
    d = np.random.default_rng(4).uniform(0.5, 2.0, (M, N_COLS))
    # Σ = diag(vec d) as samples √(mn·d_k) e_k with weights 1/mn
    samples = (np.eye(M * N_COLS) * np.sqrt(d.reshape(-1) * M * N_COLS)).reshape(-1, M, N_COLS)
    grad = np.random.default_rng(5).standard_normal((M, N_COLS))
    for p in (0.5, 1.0):
        q = direction_quality(
            SampleTarget(samples), Diagonal(d), grad, p=p, damping=0.1, approx_damping=0.1
        )
        assert abs(float(q.cosine) - 1) < 1e-12 and float(q.relative_error) < 1e-12
    wrong = direction_quality(
        SampleTarget(samples), Diagonal(d[::-1]), grad, p=1.0, damping=0.1, approx_damping=0.1
    )
    assert float(wrong.relative_error) > 1e-3


def test_singular_target_needs_damping():
    g = _samples(3)
    with pytest.raises(FitNeedsDampingError, match="damping"):
        exact_direction(SampleTarget(g), g[0], p=0.5, damping=0.0)


def test_shape_mismatch_is_named():
    g = _samples(10)
    with pytest.raises(ValueError, match="shape"):
        direction_quality(g, Kronecker(np.eye(3), np.eye(3)), g[0], p=0.5, damping=0.1)


def _shampoo2(x):
    x = np.asarray(x)
    left = np.einsum("kij,klj->il", x, x) / len(x)
    right = np.einsum("kij,kil->jl", x, x) / len(x)
    return Kronecker(left, right, 1.0 / np.einsum("kij,kij->", x, x) * len(x))


@pytest.mark.parametrize("p, predicted", [(0.5, 1.0), (1.0, 1 / 7.0)])
def test_loss_scaling_root_invariant_root_free_scales(p, predicted):
    g = _samples(40)
    r = loss_scaling_response(_shampoo2, g, g[0], c=7.0, p=p)
    assert abs(r["sigma_scale"] - 49.0) < 1e-9
    assert abs(r["predicted"] - predicted) < 1e-12
    assert abs(r["norm_ratio"] - predicted) < 1e-9 * max(predicted, 1)
    assert abs(r["cosine"] - 1) < 1e-12


def test_damping_breaks_loss_scaling_invariance():
    g = _samples(40)
    r = loss_scaling_response(_shampoo2, g, g[0], c=100.0, p=0.5, damping=1.0)
    assert abs(r["norm_ratio"] - 1.0) > 1e-2
