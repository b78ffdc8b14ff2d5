"""``heldout.swap_gains`` / ``eigen_gains`` against dense float64 references, and the
quadratic task of ``precond_lab.quadratic`` (P4 App. D.3) against its dense Hessian and
the library's batch fits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from precond_lab import estimators as est
from precond_lab import quadratic as qd
from precond_lab.heldout import eigen_gains, swap_gains
from precond_lab.structures import Diagonal, EigenKronecker, Kronecker

RTOL = 1e-10


def _spd(rng, d, spread=2.0):
    q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    return (q * 10.0 ** rng.uniform(-spread / 2, spread / 2, d)) @ q.T


def _dense_swap(base_dense, donor_dense, part, fraction):
    """The reference: dense eigh of the base, gains u_iᵀ S_d⁻¹ u_i by a dense solve."""
    lam, u = np.linalg.eigh(base_dense)
    lam, u = lam[::-1], u[:, ::-1]
    gains = np.einsum("ik,ik->k", u, np.linalg.solve(donor_dense, u))
    k = int(round(fraction * lam.size))
    chosen = np.arange(lam.size) < k if part == "leading" else np.arange(lam.size) >= k
    new = np.where(chosen, 1.0 / gains, lam)
    return (u * new) @ u.T


def _rel(a, b):
    return np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)


@pytest.mark.parametrize("part", ["leading", "tail"])
@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.9])
@pytest.mark.parametrize("donor_kind", ["kronecker", "eigen", "diagonal"])
def test_swap_gains_matches_the_dense_reference(part, fraction, donor_kind):
    rng = np.random.default_rng(hash((part, fraction, donor_kind)) % 2**32)
    m, n = 4, 6
    base = Kronecker(_spd(rng, m), _spd(rng, n), 0.7)
    if donor_kind == "kronecker":
        donor = Kronecker(_spd(rng, m), _spd(rng, n), 1.3)
    elif donor_kind == "eigen":
        qa, qb = (np.linalg.qr(rng.standard_normal((d, d)))[0] for d in (m, n))
        donor = EigenKronecker(qa, qb, 10.0 ** rng.uniform(-1, 1, (m, n)))
    else:
        donor = Diagonal(10.0 ** rng.uniform(-1, 1, (m, n)))
    got = swap_gains(base, donor, part, fraction).to_dense()
    want = _dense_swap(np.asarray(base.to_dense()), np.asarray(donor.to_dense()), part, fraction)
    assert _rel(got, want) <= RTOL


def test_eigen_gains_of_itself_are_the_inverse_eigenvalues_and_all_leading_is_the_donor():
    rng = np.random.default_rng(1)
    base = Kronecker(_spd(rng, 3), _spd(rng, 5))
    donor = Kronecker(_spd(rng, 3), _spd(rng, 5))
    e = base.eigen()
    np.testing.assert_allclose(eigen_gains(base, base), 1.0 / e.values, rtol=1e-12)
    # every gain replaced: the base's eigenbasis with the donor's diagonal in it
    full = swap_gains(base, donor, "leading", 1.0).to_dense()
    q = np.kron(np.asarray(e.left_basis), np.asarray(e.right_basis))
    inv = q.T @ np.linalg.inv(np.asarray(donor.to_dense())) @ q
    assert _rel(full, (q / np.diag(inv)) @ q.T) <= RTOL
    # swapping with itself changes nothing
    assert _rel(swap_gains(base, base, "tail").to_dense(), np.asarray(base.to_dense())) <= RTOL


def test_swap_gains_is_jittable():
    rng = np.random.default_rng(2)
    base = Kronecker(_spd(rng, 4), _spd(rng, 3))
    donor = Kronecker(_spd(rng, 4), _spd(rng, 3))
    jitted = jax.jit(swap_gains, static_argnames=("part", "fraction"))
    a = jitted(base, donor, part="tail", fraction=0.5).to_dense()
    b = swap_gains(base, donor, "tail", 0.5).to_dense()
    assert _rel(a, np.asarray(b)) <= 1e-14


def test_quadratic_hessian_loss_and_noise():
    task = qd.make_quadratic(3, 4, seed=0, rank=2, scale=5.0, optimum=0.3)
    h = np.asarray(qd.hessian_dense(task))
    assert np.linalg.eigvalsh(h).min() > 0
    assert _rel(h, h.T) <= 1e-15
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    got = np.asarray(qd.hessian_matvec(task, x)).reshape(2, -1)
    assert _rel(got, x.reshape(2, -1) @ h) <= RTOL
    e = (x[0] - np.asarray(task.optimum)).ravel()
    assert abs(float(qd.loss(task, x[0])) - 0.5 * e @ h @ e) <= RTOL * abs(0.5 * e @ h @ e)
    keys = jax.random.split(jax.random.PRNGKey(0), 200_000)
    z = np.asarray(jax.vmap(lambda k: qd.minibatch_noise(task, k, 8))(keys)).reshape(len(keys), -1)
    cov = z.T @ z / len(z)
    assert _rel(cov, h / 8) <= 0.02  # Monte Carlo: ~sqrt(d/N) ≈ 0.008


@pytest.mark.parametrize("q", [0.0, 0.5, 2.0])
def test_trace_power_fit_reaches_the_library_fit(q):
    g = np.random.default_rng(3).standard_normal((40, 4, 6)) * np.linspace(0.2, 2, 6)
    lam = 1e-3 * np.mean(np.sum(g**2, axis=(1, 2))) / 24
    left, right = qd.trace_power_fit(jnp.asarray(g), q, lam, jnp.eye(4), jnp.eye(6), 400)
    ref = (
        est.kl_optimal(g, damping=lam, tol=1e-14)
        if q == 0.0
        else est.bregman_optimal(g, q, damping=lam, tol=1e-14, max_iter=2000)
    ).to_dense()
    assert _rel(np.kron(left, right), np.asarray(ref)) <= 1e-9


def test_train_gain_swap_is_paired_and_trains():
    task = qd.make_quadratic(4, 6, seed=1, rank=2, scale=100.0, optimum=0.3)
    key = jax.random.PRNGKey(1)
    runs = {
        v: qd.train_gain_swap(task, key, 2e-3, variant=v, steps=60, history=10, init_sweeps=50)
        for v in ("kl", "sq_leading")
    }
    kl = np.asarray(runs["kl"]["loss"])
    assert np.isfinite(kl).all() and kl[-1] < 0.5 * float(runs["kl"]["initial_loss"])
    assert float(runs["kl"]["initial_loss"]) == float(runs["sq_leading"]["initial_loss"])
    again = qd.train_gain_swap(task, key, 2e-3, variant="kl", steps=60, history=10, init_sweeps=50)
    np.testing.assert_array_equal(np.asarray(again["loss"]), kl)
    # swapping in KL's own gains would change nothing: the SQ swap does change the run
    assert not np.array_equal(np.asarray(runs["sq_leading"]["loss"]), kl)
