"""Scoring online states in the Kronecker family (``online.kronecker_member``,
``checked_gap``, ``score_stream``), against dense float64 references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from precond_lab import SampleTarget, online
from precond_lab.errors import ConvergenceError
from precond_lab.estimators import kl_optimal
from precond_lab.metrics import kl_divergence
from precond_lab.structures import Kronecker


@pytest.fixture(autouse=True)
def x64():
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _states(g, lam):
    f32 = jnp.float32
    sh = online.shampoo(shampoo_beta=0.9)
    kl = online.kl_shampoo(shampoo_beta=0.9, frequency=5, damping=lam)
    s1 = sh.update(sh.init(jnp.asarray(g[:8], f32)), jnp.asarray(g[8:], f32))
    s2 = kl.update(kl.init(jnp.asarray(g[:8], f32)), jnp.asarray(g[8:], f32))
    return s1, s2


def test_kronecker_member_is_the_dense_formula_and_the_gap_is_checked():
    g = np.random.default_rng(0).standard_normal((40, 3, 4))
    lam = 0.05
    sh, kl = _states(g, lam)
    member = online.kronecker_member(sh, lam)
    left = np.asarray(sh.left, float) + 4 * lam * np.eye(3)
    right = np.asarray(sh.right, float) + 3 * lam * np.eye(4)
    dense = np.kron(0.5 * (left + left.T), 0.5 * (right + right.T)) / np.trace(left)
    assert isinstance(member, Kronecker)
    np.testing.assert_allclose(np.asarray(member.to_dense()), dense, rtol=1e-10, atol=1e-12)
    member = online.kronecker_member(kl, lam)
    qa, la = np.asarray(kl.left_basis, float), np.asarray(kl.left_values, float)
    qb, lb = np.asarray(kl.right_basis, float), np.asarray(kl.right_values, float)
    dense = np.kron((qa * la) @ qa.T, (qb * lb) @ qb.T)
    np.testing.assert_allclose(np.asarray(member.to_dense()), dense, rtol=1e-10, atol=1e-12)
    # the damped KL optimum beats every member of the family: the gap is ≥ 0
    target = SampleTarget(jnp.asarray(g))
    opt = float(kl_divergence(target, kl_optimal(target, damping=lam), damping=lam))
    for s in (sh, kl):
        m = online.kronecker_member(s, lam)
        assert online.checked_gap(float(kl_divergence(target, m, damping=lam)), opt, "x") > 0
    assert online.checked_gap(opt - 1e-12, opt, "round-off") < 0
    with pytest.raises(ConvergenceError, match="layer x: KL gap .* beyond round-off"):
        online.checked_gap(opt - 1e-3, opt, "layer x")
    with pytest.raises(TypeError, match="neither Shampoo's factors"):
        adam = online.adam()
        online.kronecker_member(adam.init(jnp.ones((3, 4))), lam)


def test_score_stream_matches_a_hand_loop_with_a_changing_target():
    rng = np.random.default_rng(1)
    pools = [rng.standard_normal((30, 3, 4)), 2.0 * rng.standard_normal((30, 3, 4))]
    targets = [SampleTarget(jnp.asarray(p)) for p in pools]
    refs = [targets[0]] * 6 + [targets[1]] * 6
    feed = np.stack([pools[t // 6][rng.integers(0, 30, 5)] for t in range(12)])
    lam = 0.01
    est = online.kl_shampoo(shampoo_beta=0.8, frequency=3, damping=lam)
    got = online.score_stream(est, jnp.asarray(feed), refs, [0, 5, 6, 11], damping=lam)
    state, want = est.init(jnp.asarray(feed[0])), []
    for t in range(12):
        state = est.update(state, jnp.asarray(feed[t])) if t else state
        if t in (0, 5, 6, 11):
            s = online.kronecker_member(state, lam)
            want.append(float(kl_divergence(refs[t], s, damping=lam, approx_damping=0.0)))
    np.testing.assert_allclose(got["kl_divergence"], want, rtol=1e-12)
    assert np.all(got["kl_gap"] >= 0) and got["kl_optimal"][1] != got["kl_optimal"][2]
    with pytest.raises(ValueError, match="one target per stream step"):
        online.score_stream(est, jnp.asarray(feed), refs[:3], [0], damping=lam)
    with pytest.raises(ValueError, match="scored must be increasing steps in"):
        online.score_stream(est, jnp.asarray(feed), refs, [5, 0], damping=lam)
