"""IF-Shampoo's step scale, the B-scaling level table, IF-Shampoo driven by K-FAC factors and
the update timings (P2-27, P2-29, P2-31), against dense float64 references."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from precond_lab import online, reference
from precond_lab.sweep import kron_cosine


def _samples(n=60, m=3, k=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, m, k)).astype(np.float32)


def test_if_shampoo_step_scale_is_the_mean_eigenvalue_of_the_dense_kronecker():
    x, steps, bsz, lam = _samples(), 8, 4, 1e-3
    got = online.if_shampoo_step_scale(x, bsz, steps=steps, damping=lam, seed=3)
    # brute force: the same stream by hand, eigenvalues of the dense CCᵀ⊗KKᵀ
    idx = np.random.default_rng(3).integers(0, len(x), size=(steps, bsz))
    means = jnp.asarray(x)[jnp.asarray(idx)].mean(axis=1)
    est = online.if_shampoo(beta2=0.1, alpha2=0.5, damping=lam, batch_size=bsz)
    st, vals = est.init(means[0]), []
    for t in range(1, steps):
        st = est.update(st, means[t])
        if t >= steps // 2:
            c, k = np.asarray(st.c, np.float64), np.asarray(st.k, np.float64)
            vals.append(np.linalg.eigvalsh(np.kron(c @ c.T, k @ k.T)).mean())
    np.testing.assert_allclose(got, np.mean(vals), rtol=1e-5)


def test_step_scale_levels_table():
    x, lam = _samples(), 1e-3
    lev = online.step_scale_levels(x, (1, 4), steps=6, damping=lam, seed=2)
    assert lev.dims == ("rf_method", "b_scaling", "batch_size")
    rf = online.batch_size_response(x, (1, 4), steps=6, beta2=0.05, scale_by_batch=False, seed=2)
    np.testing.assert_allclose(
        lev.sel(rf_method="rf_rmsprop", b_scaling="without_B"), [1 / (rf[b] + lam) for b in (1, 4)]
    )
    ifs = online.if_shampoo_step_scale(x, 4, steps=6, damping=lam, seed=2)
    np.testing.assert_allclose(lev.sel(rf_method="if_shampoo", b_scaling="with_B")[1], ifs)


def test_kfac_if_shampoo_reaches_the_damped_kfac_inverse():
    rng = np.random.default_rng(0)
    acts, backs = rng.standard_normal((200, 4)), rng.standard_normal((200, 3))
    acts[:, 0] *= 3.0
    lam = 0.1
    res = online.kfac_if_shampoo(acts, backs, damping=lam, steps=400)
    so, si = reference.kfac_damped_flip_flop(res.a_out, res.a_in, lam)
    # the reference is the KL fixed point of A_out ⊗ A_in + λI (dense float64)
    sigma = np.kron(res.a_out, res.a_in) + lam * np.eye(12)
    assert reference.kl_fixed_point_residual(sigma, so, si) < 1e-8
    dense = np.kron(np.linalg.inv(so), np.linalg.inv(si))
    got = np.kron(res.left, res.right)
    cos = np.sum(dense * got) / (np.linalg.norm(dense) * np.linalg.norm(got))
    assert cos > 0.9999 and res.residual < 1e-3
    fac = kron_cosine(np.linalg.inv(so), np.linalg.inv(si), res.left, res.right)
    np.testing.assert_allclose(fac, cos, rtol=1e-12)


def test_if_shampoo_timings_layout():
    t = online.if_shampoo_timings((4,), repeats=5)
    assert t.dims == ("size", "timing_op", "timing_round")
    assert list(t.timing_op.values) == list(online.IF_TIMING_OPS)
    assert np.all(t.values > 0)
