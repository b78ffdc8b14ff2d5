"""Library pieces of the P3 study: rearranged singular values, host Shampoo, power cosines,
against dense float64 references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from precond_lab import estimators as est
from precond_lab import sweep
from precond_lab.metrics import cosine_similarity
from precond_lab.targets import SampleTarget


@pytest.fixture(autouse=True)
def x64():
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _rearranged(g):
    # row-major vec: Σ[(i,a),(j,b)] = E[G_ia G_jb]; R(Σ)[(i,j),(a,b)] = Σ[(i,a),(j,b)]
    m, n = g.shape[1:]
    return (np.einsum("kia,kjb->ijab", g, g) / len(g)).reshape(m * m, n * n)


@pytest.mark.parametrize("shape", [(3, 4), (5, 2), (4, 4)])
def test_rearranged_singular_values_are_the_dense_svd(shape):
    g = np.random.default_rng(0).standard_normal((30, *shape))
    want = np.linalg.svd(_rearranged(g), compute_uv=False)
    got = est.rearranged_singular_values(SampleTarget(jnp.asarray(g)), k=3, steps=40)
    np.testing.assert_allclose(got, want[:3], rtol=1e-10)
    # the top value is the Frobenius optimum's σ₁
    assert abs(got[0] - float(est.frobenius_optimal(jnp.asarray(g)).scale)) <= 1e-10 * got[0]


def test_rearranged_singular_values_of_a_kronecker_target_have_rank_one():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 3)), rng.standard_normal((4, 4))
    g = np.stack([a @ rng.standard_normal((3, 4)) @ b for _ in range(200)])
    sv = est.rearranged_singular_values(jnp.asarray(g), k=2)
    assert sv[1] / sv[0] > 1e-3  # a sample of a Kronecker Σ is not exactly Kronecker
    one = np.ones((1, 3, 4))  # one rank-one sample: R(Σ) = vec(ggᵀ) … rank 1
    np.testing.assert_allclose(est.rearranged_singular_values(jnp.asarray(one), k=2)[1], 0.0)


def test_shampoo_host_is_shampoo():
    g = jnp.asarray(np.random.default_rng(2).standard_normal((20, 3, 5)))
    a, b = est.shampoo(g), est.shampoo_host(g)
    np.testing.assert_allclose(np.asarray(b.to_dense()), np.asarray(a.to_dense()), rtol=1e-10)


def test_power_cosines_are_the_iterates_cosines():
    g = jnp.asarray(np.random.default_rng(3).standard_normal((25, 3, 4)))
    t = SampleTarget(g)
    curves, to_opt = sweep.power_cosines(t, 3, ["identity", "random0"], seed=1)
    opt = est.frobenius_optimal(t)
    state = est.power_iteration(t, 0, init="identity")
    for k in range(4):  # the dense cosine of each iterate from I
        if k:
            state = est.power_iteration(t, 1, init=state)
        assert abs(curves[0, k] - float(cosine_similarity(t, state))) <= 1e-10
    assert (
        abs(to_opt[0, 3] - sweep.kron_cosine(state.left, state.right, opt.left, opt.right)) < 1e-10
    )
    assert np.isnan(to_opt[:, 2]).all() and np.isfinite(curves).all()
    left, right = sweep.identity_overlaps(opt)
    want = abs(np.trace(np.asarray(opt.left))) / (np.sqrt(3) * np.linalg.norm(opt.left))
    assert abs(left - want) < 1e-12 and 0 < right <= 1


def test_identity_overlaps_are_the_dense_top_singular_vectors():
    g = np.random.default_rng(5).standard_normal((30, 4, 3))
    u, _, vt = np.linalg.svd(_rearranged(g))
    ov = sweep.identity_overlaps(est.frobenius_optimal(jnp.asarray(g)))
    np.testing.assert_allclose(ov[0], abs(u[:, 0] @ np.eye(4).ravel()) / 2, rtol=1e-8)
    np.testing.assert_allclose(ov[1], abs(vt[0] @ np.eye(3).ravel()) / np.sqrt(3), rtol=1e-8)
