"""Exact invariances, jit/vmap/pmap/donation, partition, first call, dtypes, state size, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import precond_lab.optim as po

from . import _reference as ref
from .test_equations import grads_seq, run

jax.config.update("jax_enable_x64", True)

W0 = np.random.default_rng(0).standard_normal((5, 5))  # square: no null space at the start
C = 7.0  # loss rescaling factor


def kron_state(s):
    """The :class:`~precond_lab.optim.KronState` inside an optimiser's state."""
    s = s.inner if isinstance(s, po.SkipState) else s
    return s.inner_states["kron"].inner_state[0] if hasattr(s, "inner_states") else s[0]


def with_kron_state(s, new):
    part = s.inner
    kron = part.inner_states["kron"]
    inner = kron._replace(inner_state=(new, *kron.inner_state[1:]))
    return s._replace(inner=part._replace(inner_states={**part.inner_states, "kron": inner}))


def rel(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b))


def steps_of(tx, grads):
    """The updates (not the params) of ``tx``, ``W`` held at ``W0`` (weight decay off)."""
    p = jnp.asarray(W0)
    s = tx.init(p)
    out, update = [], jax.jit(tx.update)
    for g in grads:
        u, s = update(jnp.asarray(g), s, p)
        out.append(np.asarray(u))
    return out


# ------------------------------------------------------------------- loss rescaling
NO_EPS = dict(eps=0.0, weight_decay=0.0)
# (factory, keywords, keywords that scale, their factor). KL/trace-power: λ ∝ c per factor
# keeps every statistic consistent; the bases are then fixed (frequency 0) because the first
# call's factors scale as c² and the later whitened statistics as c.
LAM = dict(init_factor=0.1)
DAMP = dict(damping=1e-3)
ROOT = {
    "kl_shampoo": (po.kl_shampoo, dict(NO_EPS, clamp=False, frequency=0), LAM, C),
    "sq_shampoo": (po.sq_shampoo, dict(NO_EPS, clamp=False, frequency=0), LAM, C),
    "f_shampoo": (po.f_shampoo, dict(NO_EPS, clamp=False, frequency=0), LAM, C),
    "kl_soap": (po.kl_soap, dict(NO_EPS, clamp=False, frequency=0), LAM, C),
    "soap": (po.soap, dict(NO_EPS, frequency=3), {}, 1.0),
    "shampoo_quarter": (po.shampoo, dict(p=0.25, graft=False, frequency=3), DAMP, C**2),
    "shampoo_half_graft": (po.shampoo, dict(p=0.5, eps=0.0, frequency=3), DAMP, C**2),
}


@pytest.mark.parametrize("name", list(ROOT))
def test_root_updates_are_invariant_to_loss_scale(name):
    factory, kw, scaled, factor = ROOT[name]
    grads = grads_seq(W0.shape, 8, seed=1)
    a = steps_of(factory(learning_rate=1.0, **kw, **scaled), grads)
    b = steps_of(
        factory(learning_rate=1.0, **kw, **{k: v * factor for k, v in scaled.items()}),
        [C * g for g in grads],
    )
    assert any(np.abs(x).max() > 0 for x in a)
    for x, y in zip(a, b, strict=True):
        assert rel(y, x) < 1e-10 or np.abs(x).max() == np.abs(y).max() == 0


def test_shampoo_half_without_grafting_is_not_scale_invariant():
    grads = grads_seq(W0.shape, 5, seed=2)
    kw = dict(p=0.5, graft=False)
    a = steps_of(po.shampoo(1.0, damping=1e-3, **kw), grads)
    b = steps_of(po.shampoo(1.0, damping=1e-3 * C**2, **kw), [C * g for g in grads])
    for x, y in zip(a, b, strict=True):  # (L⊗R)^{-1/2} ∝ c^{-2}: the step scales as 1/c
        assert rel(C * y, x) < 1e-10


def test_root_free_updates_scale_as_inverse_loss_scale():
    grads = grads_seq(W0.shape, 8, seed=3, scale=0.3)
    # RF-RMSProp: s₀ and λ carry the c² of the statistics
    a = steps_of(po.rf_rmsprop(1.0, batch_size=8, s0=1.0, damping=1e-3), grads)
    b = steps_of(
        po.rf_rmsprop(1.0, batch_size=8, s0=C**2, damping=1e-3 * C**2), [C * g for g in grads]
    )
    for x, y in zip(a, b, strict=True):
        assert rel(C * y, x) < 1e-10
    # IF-Shampoo: C₀ = K₀ = c^{-1/2}·I and λ·c² keep m_C, m_K unchanged
    a = steps_of(po.if_shampoo(1.0, batch_size=8, damping=1e-3), grads)
    b = steps_of(
        po.if_shampoo(1.0, batch_size=8, damping=1e-3 * C**2, init_scale=C**-0.5),
        [C * g for g in grads],
    )
    for x, y in zip(a, b, strict=True):
        assert rel(C * y, x) < 1e-10


def test_if_shampoo_is_invariant_to_c_times_orthogonal():
    grads = grads_seq(W0.shape, 12, seed=4, scale=0.5)
    kw = dict(lr=0.01, batch=16, beta2=0.05)
    _, (c, k, mc, mk) = ref.if_shampoo(W0, grads[:6], **kw)
    rng = np.random.default_rng(5)
    oc = np.linalg.qr(rng.standard_normal(c.shape))[0]
    ok = np.linalg.qr(rng.standard_normal(k.shape))[0]
    plain, _ = ref.if_shampoo(W0, grads[6:], c0=c, k0=k, mc0=mc, mk0=mk, **kw)
    rotated, _ = ref.if_shampoo(
        W0, grads[6:], c0=c @ oc, k0=k @ ok, mc0=oc.T @ mc @ oc, mk0=ok.T @ mk @ ok, **kw
    )
    for x, y in zip(plain, rotated, strict=True):
        assert rel(y, x) < 1e-10
    # and the JAX state behaves the same: rotate the state mid-run
    tx = po.if_shampoo(0.01, batch_size=16, beta2=0.05)
    p = jnp.asarray(W0)
    s, update = tx.init(p), jax.jit(tx.update)
    for g in grads[:6]:
        _, s = update(jnp.asarray(g), s, p)
    inner = kron_state(s)
    leaf = inner.leaves
    rot = leaf._replace(
        ks=(leaf.ks[0] @ oc, leaf.ks[1] @ ok), ms=(oc.T @ leaf.ms[0] @ oc, ok.T @ leaf.ms[1] @ ok)
    )
    s_rot = with_kron_state(s, inner._replace(leaves=rot))
    for g in grads[6:]:
        u1, s = update(jnp.asarray(g), s, p)
        u2, s_rot = update(jnp.asarray(g), s_rot, p)
        assert rel(u2, u1) < 1e-10


# ----------------------------------------------------------------- transformations
def _small(name):
    kw = {"batch_size": 4} if name in po.NEEDS_BATCH_SIZE else {}
    return po.OPTIMIZERS[name](learning_rate=1e-2, **kw)


PARAMS = {"w": jnp.asarray(W0), "b": jnp.ones(6), "t": jnp.ones((2, 3, 4))}


def _grads(seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), PARAMS)


#: one optimiser per code path (the trace-power variants share KL-Shampoo's; AdamW/SGD are optax)
PATHS = ["kl_shampoo", "kl_soap", "shampoo", "soap", "if_shampoo", "rf_rmsprop"]


@pytest.mark.parametrize("name", ["kl_shampoo", "shampoo", "soap", "if_shampoo", "rf_rmsprop"])
def test_jit_vmap_pmap_and_donation_agree(name):
    tx = _small(name)
    gs = [_grads(i) for i in range(3)]

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    donated = jax.jit(step, donate_argnums=(0, 1))
    p, s = PARAMS, tx.init(PARAMS)
    for g in gs:
        p, s = donated(jax.tree.map(jnp.copy, p), s, g)
    expand = lambda t: jax.tree.map(lambda x: x[None], t)  # noqa: E731
    pv, sv = expand(PARAMS), expand(tx.init(PARAMS))
    pp, sp = pv, sv
    vstep, pstep = jax.jit(jax.vmap(step)), jax.pmap(step)
    for g in gs:
        pv, sv = vstep(pv, sv, expand(g))
        pp, sp = pstep(pp, sp, expand(g))
    for other in (jax.tree.map(lambda x: x[0], pv), jax.tree.map(lambda x: x[0], pp)):
        for k in PARAMS:
            np.testing.assert_allclose(
                np.asarray(other[k]), np.asarray(p[k]), rtol=1e-9, atol=1e-12
            )
    assert all(np.all(np.isfinite(np.asarray(v))) for v in p.values())
    assert any(float(jnp.abs(p[k] - PARAMS[k]).max()) > 0 for k in PARAMS)


def test_default_partition_and_custom_labels():
    labels = po.default_labels(
        {"w": W0, "b": np.ones(6), "e": np.ones((20_000, 4)), "row": np.ones((1, 6))}
    )
    assert labels == {"w": "kron", "b": "fallback", "e": "fallback", "row": "fallback"}
    # a custom label function: everything to the fallback equals AdamW
    tx = po.kl_shampoo(1e-2, labels=lambda p: jax.tree.map(lambda _: "fallback", p))
    gs = grads_seq(W0.shape, 4, seed=6)
    np.testing.assert_allclose(
        run(tx, W0, gs), run(optax.adamw(1e-2, b2=0.98, weight_decay=0.01), W0, gs), rtol=1e-12
    )


def test_first_call_initialises_without_update():
    for tx in (po.kl_shampoo(1.0), po.kl_soap(1.0), po.soap(1.0)):
        s, update = tx.init(PARAMS), jax.jit(tx.update)
        u, s = update(_grads(0), s, PARAMS)
        assert float(jnp.abs(u["w"]).max()) == 0.0 and float(jnp.abs(u["t"]).max()) == 0.0
        assert float(jnp.abs(u["b"]).max()) > 0  # the AdamW fallback steps at once
        u, s = update(_grads(1), s, PARAMS)
        assert float(jnp.abs(u["w"]).max()) > 0


def test_tensor_modes_and_state_dtype():
    assert po.work_shape((2, 1, 3, 4)) == (2, 3, 4)
    assert po.work_shape((2, 3, 4), "matrix") == (6, 4)
    tx = po.kl_shampoo(1e-2, tensor_mode="matrix")
    leaf = kron_state(tx.init(PARAMS)).leaves["t"]
    assert [f.shape for f in leaf.factors] == [(6, 6), (4, 4)]
    for name in PATHS:
        kw = {"batch_size": 4} if name in po.NEEDS_BATCH_SIZE else {}
        tx = po.OPTIMIZERS[name](1e-2, state_dtype=jnp.bfloat16, **kw)
        p32 = jax.tree.map(lambda x: x.astype(jnp.float32), PARAMS)
        s = tx.init(p32)
        update = jax.jit(tx.update)
        for i in range(2):
            u, s = update(jax.tree.map(lambda x: x.astype(jnp.float32), _grads(i)), s, p32)
        floats = [x for x in jax.tree.leaves(kron_state(s).leaves) if x.dtype != jnp.int32]
        assert floats and all(x.dtype == jnp.bfloat16 for x in floats), name
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(u)), name
        assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(u)), name


# ---------------------------------------------------------------------------- memory
def _mn_arrays(state, m, n):
    return sum(1 for x in jax.tree.leaves(state) if x.shape == (m, n))


@pytest.mark.parametrize("m, n", [(8, 5), (12, 7)])
def test_state_size_matches_the_memory_claim(m, n):
    """KL-Shampoo keeps no m×n Adam second moment; grafted Shampoo, SOAP and KL-SOAP do."""
    w = {"w": jnp.zeros((m, n))}
    fac = m * m + n * n
    # floats: momentum (m·n) + factors + bases/roots (+ eigenvalues) (+ Adam v) (+ SOAP's
    # scalar bias correction 1 − β₂^t, kept so that its Σ can be read from the state)
    expect = {
        "kl_shampoo": (po.kl_shampoo(), 1, m * n + 2 * fac + m + n),
        "kl_soap": (po.kl_soap(), 2, 2 * m * n + 2 * fac + m + n),
        "soap": (po.soap(), 2, 2 * m * n + 2 * fac + 1),
        "shampoo_graft": (po.shampoo(graft=True), 2, 2 * m * n + 2 * fac),
        "shampoo": (po.shampoo(graft=False), 1, m * n + 2 * fac),
    }
    for name, (tx, n_mn, floats) in expect.items():
        s = tx.init(w)
        assert _mn_arrays(s, m, n) == n_mn, name
        assert po.state_size(s).floats == floats, name
    diff = po.state_size(po.soap().init(w)).floats - po.state_size(po.kl_shampoo().init(w)).floats
    assert diff == m * n - (m + n) + 1  # SOAP: + Adam v, − the eigenvalue vectors
    s16 = po.kl_shampoo(state_dtype=jnp.bfloat16).init({"w": jnp.zeros((m, n))})
    counters = sum(x.size for x in jax.tree.leaves(s16) if x.dtype == jnp.int32)
    assert po.state_size(s16).bytes == 2 * po.state_size(s16).floats + 4 * counters


# ---------------------------------------------------------------------------- errors
def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="tensor_mode"):
        po.kl_shampoo(tensor_mode="flat").init(PARAMS)
    with pytest.raises(TypeError, match="batch_size"):
        po.if_shampoo(1e-3)
    with pytest.raises(ValueError, match="batch_size"):
        po.rf_rmsprop(1e-3, batch_size=0)
    with pytest.raises(ValueError, match="params"):
        tx = po.kl_shampoo(1e-3)
        tx.update(_grads(0), tx.init(PARAMS))
    with pytest.raises(TypeError, match="floating"):
        po.soap(state_dtype=jnp.int32).init(PARAMS)
