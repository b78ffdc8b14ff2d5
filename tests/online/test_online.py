"""Online estimators: fixed points against dense float64 references, runner, invariances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from precond_lab import online  # noqa: E402
from precond_lab.errors import Status  # noqa: E402
from precond_lab.methods import METHODS  # noqa: E402
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
    est = online.if_shampoo(beta2=0.5, alpha2=0.0, damping=lam, normalize=True)
    state = est.init(g)
    for _ in range(400):
        state = est.update(state, jnp.asarray(g))
    mc, mk = online.if_shampoo_stationarity(state, jnp.asarray(g), damping=lam)
    assert float(jnp.abs(mc).max()) < 1e-10 and float(jnp.abs(mk).max()) < 1e-10
    c, k = np.asarray(state.c), np.asarray(state.k)
    got = np.kron(np.linalg.inv(c @ c.T), np.linalg.inv(k @ k.T))
    ref = _dense_flip_flop(g, lam)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-8
    dense = est.approximation(state).to_dense()
    assert np.linalg.norm(np.asarray(dense) - ref) / np.linalg.norm(ref) < 1e-8


def test_kl_shampoo_fixed_basis_converges_to_batch_kl_optimum():
    g = _samples(30, seed=1)
    ref = _dense_flip_flop(g, 0.0)
    # the eigenbasis of the optimal factors, as a fixed basis (frequency=0: never refreshed)
    sa, sb = _dense_flip_flop_factors(g)
    est = online.kl_shampoo(shampoo_beta=0.7, frequency=0, clamp=False)
    state = est.init(g)
    bases = (jnp.asarray(np.linalg.eigh(sa)[1]), jnp.asarray(np.linalg.eigh(sb)[1]))
    state = state._replace(leaf=state.leaf._replace(bases=bases))
    for _ in range(300):  # stationary stream: the full bag every step
        state = est.update(state, jnp.asarray(g))
    got = np.asarray(est.approximation(state).to_dense())
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-8
    # the accumulated factors converge to the fixed point too (up to the scale gauge)
    full = np.kron(np.asarray(state.left), np.asarray(state.right))
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
    est = online.kl_shampoo(shampoo_beta=0.7, frequency=3, clamp=False)
    state = est.init(g)
    for _ in range(300):
        state = est.update(state, jnp.asarray(g))
    got = np.asarray(est.approximation(state).to_dense())
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-6


def test_shampoo_and_soap_stationary_limits():
    g = _samples(20, seed=3)
    left = np.einsum("kij,klj->il", g, g) / len(g)
    sh = online.shampoo(shampoo_beta=0.5)
    so = online.soap(shampoo_beta=0.5, b2=0.5, frequency=2)
    st, st2 = sh.init(g), so.init(g)
    for _ in range(120):
        st = sh.update(st, jnp.asarray(g))
        st2 = so.update(st2, jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(st.left), left, rtol=1e-10, atol=1e-12)
    # SOAP's v is the eigen-corrected diagonal E[(QaᵀGQb)²] in its final basis
    qa, qb = np.asarray(st2.left_basis), np.asarray(st2.right_basis)
    d = np.mean((qa.T @ g @ qb) ** 2, axis=0)
    v = np.asarray(so.approximation(st2).values)
    assert np.linalg.norm(v - d) / np.linalg.norm(d) < 1e-8


def test_rf_rmsprop_and_adam_stationary_limits():
    g = _samples(10, seed=4)
    d = np.mean(g**2, axis=0)
    rf_est, ad_est = online.rf_rmsprop(beta2=0.3), online.adam(b2=0.7)
    rf, ad = rf_est.init(g), ad_est.init(g)
    for _ in range(150):
        rf = rf_est.update(rf, jnp.asarray(g))
        ad = ad_est.update(ad, jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(rf.s), d, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(ad_est.approximation(ad).values), d, rtol=1e-10)


def test_updates_are_jittable_and_scannable():
    g = jnp.asarray(_samples(12, seed=5))
    for name, factory in ESTIMATORS.items():
        est = factory()
        s0 = est.init(g[0])

        def body(s, x, est=est):
            return est.update(s, x), None

        s, _ = jax.lax.scan(body, s0, g[1:])
        assert int(s.count) == 12, name
        assert np.isfinite(np.asarray(est.approximation(s).to_dense())).all(), name


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
    sh, rf = online.shampoo(), online.rf_rmsprop()
    s1 = sh.approximation(sh.init(g))
    s2 = rf.approximation(rf.init(g + 0.1 * rng.standard_normal(g.shape)))
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
    est = online.if_shampoo(beta2=0.1)
    st = est.init(g[0])
    for t in range(1, 10):
        st = est.update(st, g[t])
    assert st.c.dtype == jnp.dtype(dtype) and np.isfinite(np.asarray(st.c, np.float32)).all()


# ------------------------------------------------------------------ the typed (init, update) API
STATE_TYPES = {name: spec.leaf_type for name, spec in METHODS.items()}


def _is_namedtuple(x):
    return isinstance(x, tuple) and hasattr(x, "_fields")


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_states_are_namedtuple_pytrees(name):
    g = jnp.asarray(_samples(6, seed=11))
    est = ESTIMATORS[name]()
    assert isinstance(est, online.OnlineEstimator) and _is_namedtuple(est)
    state = est.init(g[0])
    assert type(state) is online.OnlineState and state._fields == ("count", "leaf")
    # the leaf state is the one its optimiser keeps per parameter
    assert type(state.leaf) is STATE_TYPES[name] and _is_namedtuple(state.leaf)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    assert all(isinstance(x, jax.Array) for x in leaves)  # no static data in the state
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(back) is type(state)
    # hyper-parameters live in the closure: a doubled state is a valid state of the same type
    assert type(jax.tree_util.tree_map(lambda x: x * 2, state)) is type(state)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@pytest.mark.parametrize("per_example", [False, True])
def test_jit_update_equals_eager_update(name, per_example):
    g = jnp.asarray(_samples(8, seed=12))
    x = g[:4] if per_example else g[0]
    est = ESTIMATORS[name]()
    state = est.init(x)
    for t in range(1, 4):  # a few steps so that refreshes and momenta are non-trivial
        state = est.update(state, g[4:] if per_example else g[t])
    jitted = jax.jit(est.update)(state, x)
    with jax.disable_jit():
        eager = est.update(state, x)
    assert type(jitted) is type(eager)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_approximation_has_the_gradient_shape(name):
    g = jnp.asarray(_samples(5, seed=13))
    est = ESTIMATORS[name]()
    state = est.update(est.init(g[0]), g[1])
    s = est.approximation(state)
    assert tuple(s.matrix_shape) == (M, N_COLS)
    assert s.to_dense().shape == (M * N_COLS, M * N_COLS)
    assert est.power in (0.5, 1.0)
    assert est.internal_damping == (name == "if_shampoo")


def test_hyper_parameters_are_in_the_closure():
    g = jnp.asarray(_samples(5, seed=14))
    slow, fast = online.shampoo(shampoo_beta=0.99), online.shampoo(shampoo_beta=0.1)
    s0 = slow.init(g[0])
    assert not np.allclose(slow.update(s0, g[1]).left, fast.update(s0, g[1]).left)
    assert online.shampoo(shampoo_beta=0.99) is slow  # cached: one compile per setting


def test_run_online_reports_status():
    x = _samples(4 * 5, seed=15).reshape(4, 5, M, N_COLS)
    ds = online.run_online(x, ("shampoo", "rf_rmsprop"), every=2, damping=1e-2)
    assert (ds.status == Status.OK.value).all()
    bad = x.copy()
    bad[2, 0, 0, 0] = np.nan
    ds = online.run_online(
        bad, ("rf_rmsprop",), every=1, damping=1e-2, reference=_samples(30, seed=16)
    )
    st = ds.status.sel(estimator="rf_rmsprop").values
    assert list(st[:2]) == [Status.OK.value] * 2 and set(st[2:]) == {Status.NONFINITE.value}
    assert np.isnan(ds.kl_divergence.sel(estimator="rf_rmsprop").values[2:]).all()
    assert ds.attrs["library"] == "precond_lab" and "created_utc" in ds.attrs
