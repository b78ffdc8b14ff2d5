"""Online trace-power Shampoo: q = 0 is KL-Shampoo, and the EMA's fixed point on a fixed
batch is the batch stationarity point (bregman_optimal)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close

from precond_lab import estimators as est
from precond_lab import online


def _stream(seed=0, steps=12, m=4, n=3):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((steps, m, n)) * np.linspace(0.5, 2.0, n))


@pytest.mark.parametrize("per_example", [False, True])
def test_q0_is_kl_shampoo(per_example):
    g = _stream(steps=24)
    x = g.reshape(6, 4, 4, 3) if per_example else g
    kl, bq = (
        online.kl_shampoo(shampoo_beta=0.9, frequency=3),
        online.bregman_shampoo(0.0, shampoo_beta=0.9, frequency=3),
    )
    a, b = kl.init(x[0]), bq.init(x[0])
    for t in range(1, x.shape[0]):
        a, b = kl.update(a, x[t]), bq.update(b, x[t])
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 2.0])
def test_fixed_batch_converges_to_the_batch_optimum(q):
    rng = np.random.default_rng(1)
    g = jnp.asarray(rng.standard_normal((60, 4, 3)) * np.linspace(0.5, 2.0, 3))
    o = online.bregman_shampoo(q, shampoo_beta=0.7, frequency=1, clamp=False)
    state = o.init(g)

    def body(s, _):
        return o.update(s, g), None

    # q = 2 is a power iteration: its rate is the ratio of the top two singular values
    state, _ = jax.lax.scan(body, state, None, length=2000 if q == 2 else 400)
    got = np.asarray(o.approximation(state).to_dense())
    want = np.asarray(est.bregman_optimal(g, q).to_dense())
    assert_close(got, want, rtol=1e-7)


def test_named_members_and_jit():
    g = _stream(seed=2)
    for factory, q in ((online.f_shampoo, 2.0), (online.vn_shampoo, 1.0), (online.sq_shampoo, 0.5)):
        a, b = factory(shampoo_beta=0.9), online.bregman_shampoo(q, shampoo_beta=0.9)
        s, t = a.init(g[0]), b.init(g[0])
        s, t = a.update(s, g[1]), b.update(t, g[1])
        assert_close(a.approximation(s).to_dense(), b.approximation(t).to_dense())
        with jax.disable_jit():
            eager = b.update(t, g[2])
        jitted = b.update(t, g[2])
        for u, v in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-10, atol=1e-13)
