"""Online estimators: fixed points against dense float64 references, runner, invariances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from precond_lab import online  # noqa: E402
from precond_lab.online import ESTIMATORS  # noqa: E402

M, N_COLS = 4, 3


def _samples(num, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, M))
    b = rng.standard_normal((N_COLS, N_COLS)) + 2 * np.eye(N_COLS)
    x = rng.standard_normal((num, M, N_COLS)) * rng.uniform(0.3, 2.0, (M, N_COLS))
    return np.einsum("ij,kjl,ml->kim", a, x, b)


def _dense_flip_flop(g, damping, iters=3000):
    """Damped KL fixed point S_a = (E[G S_b⁻¹ Gᵀ] + λ tr(S_b⁻¹) I)/n and symmetrically."""
    sa, sb = np.eye(M), np.eye(N_COLS)
    for _ in range(iters):
        ib = np.linalg.inv(sb)
        sa = np.einsum("kij,jl,kml->im", g, ib, g) / len(g) + damping * np.trace(ib) * np.eye(M)
        sa /= N_COLS
        ia = np.linalg.inv(sa)
        sb = np.einsum("kji,jl,klm->im", g, ia, g) / len(g) + damping * np.trace(ia) * np.eye(
            N_COLS
        )
        sb /= M
    return np.kron(sa, sb)


def test_if_shampoo_fixed_point_is_damped_kl_optimum():
    g = _samples(30)
    lam = 0.05
    state = online.if_shampoo_init(g, beta2=0.5, alpha2=0.0, damping=lam, normalize=True)
    for _ in range(400):
        state = online.if_shampoo_update(state, jnp.asarray(g))
    mc, mk = online.if_shampoo_stationarity(state, jnp.asarray(g))
    assert float(jnp.abs(mc).max()) < 1e-10 and float(jnp.abs(mk).max()) < 1e-10
    c, k = np.asarray(state["c"]), np.asarray(state["k"])
    got = np.kron(np.linalg.inv(c @ c.T), np.linalg.inv(k @ k.T))
    ref = _dense_flip_flop(g, lam)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-8
    dense = online.if_shampoo_preconditioner(state).to_dense()
    assert np.linalg.norm(np.asarray(dense) - ref) / np.linalg.norm(ref) < 1e-8


def test_kl_shampoo_fixed_basis_converges_to_batch_kl_optimum():
    g = _samples(30, seed=1)
    ref = _dense_flip_flop(g, 0.0)
    # the eigenbasis of the optimal factors, as a fixed basis (frequency=0: never refreshed)
    sa, sb = _dense_flip_flop_factors(g)
    state = online.kl_shampoo_init(g, beta=0.7, frequency=0, clamp=False)
    state = state.replace(
        qa=jnp.asarray(np.linalg.eigh(sa)[1]), qb=jnp.asarray(np.linalg.eigh(sb)[1])
    )
    for _ in range(300):  # stationary stream: the full bag every step
        state = online.kl_shampoo_update(state, jnp.asarray(g))
    got = np.asarray(online.kl_shampoo_preconditioner(state).to_dense())
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-8
    # the accumulated factors converge to the fixed point too (up to the scale gauge)
    full = np.kron(np.asarray(state["sa"]), np.asarray(state["sb"]))
    assert np.linalg.norm(full - ref) / np.linalg.norm(ref) < 1e-8


def _dense_flip_flop_factors(g, iters=3000):
    sa, sb = np.eye(M), np.eye(N_COLS)
    for _ in range(iters):
        sa = np.einsum("kij,jl,kml->im", g, np.linalg.inv(sb), g) / len(g) / N_COLS
        sb = np.einsum("kji,jl,klm->im", g, np.linalg.inv(sa), g) / len(g) / M
    return sa, sb


def test_kl_shampoo_with_qr_refresh_approaches_optimum():
    g = _samples(30, seed=2)
    ref = _dense_flip_flop(g, 0.0)
    state = online.kl_shampoo_init(g, beta=0.7, frequency=3, clamp=False)
    for _ in range(300):
        state = online.kl_shampoo_update(state, jnp.asarray(g))
    got = np.asarray(online.kl_shampoo_preconditioner(state).to_dense())
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-6


def test_shampoo_and_soap_stationary_limits():
    g = _samples(20, seed=3)
    left = np.einsum("kij,klj->il", g, g) / len(g)
    st = online.shampoo_init(g, beta=0.5)
    st2 = online.soap_init(g, beta=0.5, beta2=0.5, frequency=2)
    for _ in range(120):
        st = online.shampoo_update(st, jnp.asarray(g))
        st2 = online.soap_update(st2, jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(st["left"]), left, rtol=1e-10, atol=1e-12)
    # SOAP's v is the eigen-corrected diagonal E[(QaᵀGQb)²] in its final basis
    qa, qb = np.asarray(st2["qa"]), np.asarray(st2["qb"])
    d = np.mean((qa.T @ g @ qb) ** 2, axis=0)
    v = np.asarray(online.soap_preconditioner(st2).values)
    assert np.linalg.norm(v - d) / np.linalg.norm(d) < 1e-8


def test_rf_rmsprop_and_adam_stationary_limits():
    g = _samples(10, seed=4)
    d = np.mean(g**2, axis=0)
    rf = online.rf_rmsprop_init(g, beta2=0.3)
    ad = online.adam_init(g, beta2=0.7)
    for _ in range(150):
        rf = online.rf_rmsprop_update(rf, jnp.asarray(g))
        ad = online.adam_update(ad, jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(rf["s"]), d, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(online.adam_preconditioner(ad).values), d, rtol=1e-10)


def test_updates_are_jittable_and_scannable():
    g = jnp.asarray(_samples(12, seed=5))
    for name, est in ESTIMATORS.items():
        s0 = est.init(g[0])

        def body(s, x, est=est):
            return est.update(s, x), None

        s, _ = jax.lax.scan(body, s0, g[1:])
        assert int(s["step"]) >= 11, name
        assert np.isfinite(np.asarray(est.preconditioner(s).to_dense())).all(), name


def test_run_online_dataset():
    x = _samples(6 * 5, seed=6).reshape(6, 5, M, N_COLS)
    ds = online.run_online(x, ("shampoo", "kl_shampoo", "if_shampoo"), every=5, damping=1e-2)
    assert ds.sizes == {"step": 2, "estimator": 3, "p": 2}
    assert np.isfinite(ds.kl_divergence).all() and (ds.kl_gap > -1e-9).all()
    assert ((ds.cosine_target > 0) & (ds.cosine_target <= 1 + 1e-12)).all()
    assert (ds.direction_cosine <= 1 + 1e-12).all()


def test_structure_cosine_matches_dense():
    rng = np.random.default_rng(7)
    g = jnp.asarray(_samples(8))
    s1 = online.shampoo_preconditioner(online.shampoo_init(g))
    s2 = online.rf_rmsprop_preconditioner(
        online.rf_rmsprop_init(g + 0.1 * rng.standard_normal(g.shape))
    )
    a, b = np.asarray(s1.to_dense()), np.asarray(s2.to_dense())
    ref = np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b)
    assert abs(float(online.structure_cosine(s1, s2)) - ref) < 1e-12


def test_batch_size_factor():
    rng = np.random.default_rng(8)
    samples = rng.standard_normal((400, M, N_COLS))  # zero mean: sampled-label gradients
    with_b = online.batch_size_response(samples, (1, 16), steps=400, scale_by_batch=True)
    without = online.batch_size_response(samples, (1, 16), steps=400, scale_by_batch=False)
    assert 0.75 < with_b[16] / with_b[1] < 1.33
    assert without[16] / without[1] < 0.15


def test_initialisation_effect():
    g = np.random.default_rng(9).standard_normal((5, M, N_COLS)) * 0.1
    r = online.initialisation_response(g, (0.0, 1.0), beta2=0.01)
    assert r[0.0][0] > 100 * r[1.0][0]
    assert abs(r[1.0][0] - np.linalg.norm(g[0]) / (1 + 0.01 * 0)) / np.linalg.norm(g[0]) < 0.02


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_if_shampoo_runs_in_half_precision(dtype):
    g = jnp.asarray(_samples(10, seed=10)).astype(dtype)
    st = online.if_shampoo_init(g[0], beta2=0.1)
    for t in range(1, 10):
        st = online.if_shampoo_update(st, g[t])
    assert st["c"].dtype == jnp.dtype(dtype) and np.isfinite(np.asarray(st["c"], np.float32)).all()
