"""Every optimiser's update against a NumPy transcription of its equations (float64, ≤1e-10)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import precond_lab.optim as po

from . import _reference as ref

jax.config.update("jax_enable_x64", True)

TOL = 1e-10


def grads_seq(shape, steps, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [scale * rng.standard_normal(shape) for _ in range(steps)]


def run(tx, w0, grads):
    """Params after every step of ``tx`` fed the given gradients (one jitted step)."""
    params = jnp.asarray(w0)
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    out = []
    for g in grads:
        params, state = step(params, state, jnp.asarray(g))
        out.append(np.asarray(params))
    return out


def assert_close(got, want):
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)
        assert err <= TOL, f"step {k}: relative error {err:.2e}"


W0 = np.random.default_rng(42).standard_normal((5, 5))


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("scale", [1.0, 1e-2])  # 1e-2 with a short EMA: the clamp binds
def test_trace_power_family(q, scale):
    grads = grads_seq((5, 5), 14, seed=1, scale=scale)
    beta = 0.98 if scale == 1.0 else 0.5
    tx = po.trace_power_shampoo(q, learning_rate=0.05, frequency=3, shampoo_beta=beta)
    want = ref.trace_power_shampoo(W0, grads, q=q, lr=0.05, T=3, beta=beta)
    assert_close(run(tx, W0, grads), want)
    if scale != 1.0:  # the clamp changed the trajectory
        free = ref.trace_power_shampoo(W0, grads, q=q, lr=0.05, T=3, beta=beta, clamp_on=False)
        assert np.linalg.norm(free[-1] - want[-1]) > 1e-6 * np.linalg.norm(want[-1])


def test_kl_shampoo_defaults_and_damping():
    grads = grads_seq((5, 5), 13, seed=2)
    got = run(po.kl_shampoo(learning_rate=0.1, damping=1e-3, frequency=4, b1=0.8), W0, grads)
    want = ref.trace_power_shampoo(W0, grads, q=0.0, lr=0.1, T=4, b1=0.8, damping=1e-3)
    assert_close(got, want)
    # the first call only initialises
    assert np.array_equal(got[0], W0)


def test_kl_shampoo_3d_modewise():
    w0 = np.random.default_rng(3).standard_normal((3, 4, 5))
    grads = grads_seq((3, 4, 5), 9, seed=4)
    got = run(po.kl_shampoo(learning_rate=0.05, frequency=3), w0, grads)
    assert_close(got, ref.kl_shampoo_3d(w0, grads, lr=0.05, T=3))


def test_kl_soap():
    grads = grads_seq((5, 5), 14, seed=5)
    got = run(po.kl_soap(learning_rate=0.02, frequency=3), W0, grads)
    assert_close(got, ref.kl_soap(W0, grads, lr=0.02, T=3))


def test_soap():
    grads = grads_seq((5, 5), 14, seed=6)
    got = run(po.soap(learning_rate=0.02, frequency=3), W0, grads)
    assert_close(got, ref.soap(W0, grads, lr=0.02, T=3))


@pytest.mark.parametrize("p", [0.5, 0.25])
@pytest.mark.parametrize("graft", [True, False])
def test_shampoo(p, graft):
    w0 = np.random.default_rng(7).standard_normal((4, 6))
    grads = grads_seq((4, 6), 12, seed=8)
    tx = po.shampoo(
        learning_rate=0.01, p=p, graft=graft, frequency=3, damping=1e-3, weight_decay=0.1
    )
    want = ref.shampoo(w0, grads, lr=0.01, p=p, graft=graft, T=3, damping=1e-3, wd=0.1)
    assert_close(run(tx, w0, grads), want)


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (5, 5)])
def test_muon(shape, nesterov):
    w0 = np.random.default_rng(17).standard_normal(shape)
    grads = grads_seq(shape, 12, seed=18)
    tx = po.muon(learning_rate=0.02, beta=0.9, nesterov=nesterov, weight_decay=0.1)
    want = ref.muon(w0, grads, lr=0.02, beta=0.9, nesterov=nesterov, wd=0.1)
    assert_close(run(tx, w0, grads), want)
    tx = po.muon(learning_rate=0.02, ns_steps=3, consistent_rms=0.2, eps=1e-3)
    want = ref.muon(w0, grads, lr=0.02, steps=3, rms=0.2, eps=1e-3)
    assert_close(run(tx, w0, grads), want)


@pytest.mark.parametrize("frequency", [1, 3])
def test_if_shampoo(frequency):
    w0 = np.random.default_rng(9).standard_normal((4, 6))
    grads = grads_seq((4, 6), 12, seed=10, scale=0.5)
    tx = po.if_shampoo(
        learning_rate=0.01, batch_size=32, beta2=0.05, weight_decay=0.01, frequency=frequency
    )
    want, _ = ref.if_shampoo(w0, grads, lr=0.01, batch=32, beta2=0.05, kappa=0.01, T=frequency)
    assert_close(run(tx, w0, grads), want)


def test_rf_rmsprop():
    w0 = np.random.default_rng(11).standard_normal((4, 6))
    grads = grads_seq((4, 6), 10, seed=12)
    tx = po.rf_rmsprop(learning_rate=0.01, batch_size=16, weight_decay=0.01)
    want = ref.rf_rmsprop(w0, grads, lr=0.01, batch=16, kappa=0.01)
    assert_close(run(tx, w0, grads), want)


def test_baselines_are_optax():
    grads = grads_seq((4, 6), 5, seed=13)
    w0 = np.ones((4, 6))
    for mine, theirs in [(po.adamw(1e-2), optax.adamw(1e-2)), (po.sgd(1e-2), optax.sgd(1e-2))]:
        assert_close(run(mine, w0, grads), run(theirs, w0, grads))


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 2.0])
def test_factor_statistic_is_the_bregman_estimators_statistic(q):
    """With ``β = 0`` the factors after one regular step are exactly the trace-power statistic
    of the estimators package, taken with the other factor's eigen-approximation."""
    from precond_lab.estimators import trace_power_statistic

    g0, g1 = (jnp.asarray(g) for g in grads_seq((5, 4), 2, seed=20 + int(2 * q)))
    tx = po.scale_by_trace_power(q, shampoo_beta=0.0, clamp=False, init_factor=0.3)
    s = tx.init(g0)
    _, s = tx.update(g0, s)
    old = s.leaves
    _, s = tx.update(g1, s)
    left = trace_power_statistic(g1, old.values[1], old.bases[1], q, side="left")
    right = trace_power_statistic(g1, old.values[0], old.bases[0], q, side="right")
    np.testing.assert_allclose(s.leaves.factors[0], left, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(s.leaves.factors[1], right, rtol=1e-12, atol=1e-14)
