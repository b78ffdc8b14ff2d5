"""PSGD-Kron and SPlus: their NumPy transcriptions (float64, ≤1e-10), the fixed points of
PSGD-Kron's two whitening updates on a stationary non-Kronecker stream (P4 Prop. 1's
q = ½ member, and the official update's KL member), and SPlus's bounded update."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import precond_lab.optim as po
from precond_lab import estimators as est
from precond_lab import online
from precond_lab.methods import METHODS, SPlusLeaf

from . import _reference as ref
from .test_equations import assert_close, grads_seq, run

jax.config.update("jax_enable_x64", True)


# --------------------------------------------------------------- NumPy transcriptions
PSGD_CASES = [
    dict(),
    dict(momentum=0.9, init_scale=0.5),
    dict(whitening="criterion", damping=1e-3),
    dict(clip=None, lr_p=0.3, beta_l=0.5),
]


def _psgd_kwargs(case):
    kw = dict(case)
    out = {}
    if "clip" in kw:
        kw.pop("clip")
        out.update(clip_rms=None, clip_element=None)
    names = {"lr_p": "lr_preconditioner", "beta_l": "beta_l"}
    out.update({names.get(k, k): v for k, v in kw.items()})
    return out


@pytest.mark.parametrize("shape", [(5, 5), (6, 4)])
@pytest.mark.parametrize("case", PSGD_CASES)
def test_psgd_kron_matches_its_transcription(shape, case):
    w0 = np.random.default_rng(7).standard_normal(shape)
    grads = grads_seq(shape, 12, seed=8, scale=3.0)  # scale 3: the RMS clip binds at first
    got = run(po.psgd_kron(0.05, **_psgd_kwargs(case)), w0, grads)
    assert_close(got, ref.psgd_kron(w0, grads, lr=0.05, **case))


@pytest.mark.parametrize("shape", [(5, 5), (4, 4)])
@pytest.mark.parametrize("every", [1, 3])
def test_splus_matches_its_transcription(shape, every):
    """Square leaves: a one-gradient factor of a non-square leaf is singular and the basis of
    its null space is the LAPACK build's choice (SPlus's sign depends on it)."""
    w0 = np.random.default_rng(9).standard_normal(shape)
    grads = grads_seq(shape, 10, seed=10)
    kw = dict(b1=0.8, b2=0.9, inverse_every=every, weight_decay=0.1)
    got = run(po.splus(0.2, **kw), w0, grads)
    assert_close(got, ref.splus(w0, grads, lr=0.2, b1=0.8, b2=0.9, every=every, wd=0.1))


def test_splus_fallback_leaves_take_the_sign_times_the_nonstandard_constant():
    params = {"w": jnp.ones((3, 4)), "b": jnp.arange(4.0) - 1.5}
    tx = po.splus(1.0, weight_decay=0.0, b1=0.0)
    g = {"w": jnp.ones((3, 4)), "b": jnp.asarray([1.0, -2.0, 0.0, 3.0])}
    u, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_array_equal(np.asarray(u["b"]), -0.001 * np.sign(np.asarray(g["b"])))


# ------------------------------------------- PSGD-Kron's fixed points (P4 Prop. 1, q = ½)
M, N, SAMPLES = 4, 6, 2000


def _stream_set():
    """``G = A Z B + E`` with an entrywise noise scale that is not rank one: a stationary
    distribution (the set, drawn uniformly) with a non-Kronecker second moment."""
    return online.stationary_set(M, N, SAMPLES, seed=0)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


WHITENING_OPTIMUM = {"criterion": 0.5, "partial": 0.0}


@pytest.mark.parametrize("whitening", ["criterion", "partial"])
def test_psgd_full_batch_lands_on_its_bregman_optimum(whitening):
    """Fed the whole set every step (the expectation), PSGD-Kron's ``P^{-2}`` is the
    trace-power optimum (scale included): ``q = ½`` (SQ) for the whitening criterion's
    gradient, ``q = 0`` (KL) for the official update; measured 4e-15 and 5e-15 after 1000
    steps; 1e-10 leaves room for round-off. The other optimum is ~20 % away."""
    g = _stream_set()
    q = WHITENING_OPTIMUM[whitening]
    want = np.asarray(est.bregman_optimal(g, q, tol=1e-14).to_dense())
    other = np.asarray(est.bregman_optimal(g, 0.5 - q, tol=1e-14).to_dense())
    e = online.psgd_kron(lr_preconditioner=0.5, damping=0.0, whitening=whitening)
    got = np.asarray(online.run_full_batch(e, g, 1000).to_dense())
    assert _rel(got, want) <= 1e-10
    assert _rel(got, other) >= 0.15


@pytest.mark.parametrize("whitening", ["criterion", "partial"])
def test_psgd_on_a_stationary_stream_lands_on_its_bregman_optimum(whitening):
    """One sample per step (100 000 steps drawn from the set), annealed step
    ``η_t = 0.1/(1 + t/1000)``. The error is the step's noise and decays slowly (measured
    5.3 %/6.3 % at 20 000 steps, 3.3 %/2.4 % at 100 000, 2.1 %/3.1 % at 300 000 for
    partial/criterion); the tolerance 8 % is about 2.5 times the measured error and half
    the distance (≥ 16 %) to the other optimum, so the test tells the two fixed points apart."""
    g = _stream_set()
    q = WHITENING_OPTIMUM[whitening]
    want = np.asarray(est.bregman_optimal(g, q, tol=1e-14).to_dense())
    other = np.asarray(est.bregman_optimal(g, 0.5 - q, tol=1e-14).to_dense())
    spec, steps = METHODS["psgd_kron"], 100_000
    idx = jax.random.randint(jax.random.PRNGKey(1), (steps,), 0, SAMPLES)
    rates = 0.1 / (1 + jnp.arange(steps) / 1000.0)

    @jax.jit
    def stream(leaf):
        def body(leaf, x):
            i, lr, count = x
            rule = spec.build(lr_preconditioner=lr, damping=0.0, whitening=whitening)
            return rule.step(leaf, g[i][None], count, None, False)[1], None

        return jax.lax.scan(body, leaf, (idx, rates, jnp.arange(steps)))[0]

    leaf = stream(spec.build().init((M, N), jnp.float64))
    got = np.asarray(spec.approximation(leaf).to_dense())
    assert _rel(got, want) <= 0.08
    assert _rel(got, other) >= 0.16


def test_the_whitening_criterion_is_half_the_sq_bregman_divergence():
    """``tr(PC) + tr(P⁻¹) = ½B_½(C, P^{-2}) + 2 tr C^{½}`` for any SPD ``P`` (dense)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 40))
    c = x @ x.T / 40
    y = rng.standard_normal((12, 12))
    p = y @ y.T + 0.5 * np.eye(12)

    def mpow(s, e):
        w, v = np.linalg.eigh(s)
        return (v * w**e) @ v.T

    sigma = mpow(p, -2.0)
    breg = (
        np.trace(mpow(c, 0.5)) / (0.5 * -0.5)
        + np.trace(mpow(sigma, 0.5)) / 0.5
        - np.trace(mpow(sigma, -0.5) @ c) / -0.5
    )
    crit = np.trace(p @ c) + np.trace(np.linalg.inv(p))
    assert abs(crit - (0.5 * breg + 2 * np.trace(mpow(c, 0.5)))) <= 1e-10 * crit


# ----------------------------------------------------------- SPlus's bounded update
def test_splus_update_is_bounded_where_a_long_cached_shampoo_inverse_is_not():
    """Proxy of the SPlus paper's stability claim: statistics of a gradient living in a
    2-dimensional subspace for 50 steps, bases/roots cached at step 1 and kept (frequency
    1000), then a gradient in the directions the cache never saw. SPlus's direction has
    entries ``±2/(m+n)`` in its basis, so ``‖D‖_F ≤ 2√(mn)/(m+n)``; Shampoo's cached
    ``(S + δI)^{-1/2}`` multiplies the unseen directions by ``δ^{-1/2}``."""
    p = po.cached_root_probe(6, 6, seen_steps=50, seen_rank=2, seed=4)
    assert p["bound"] == 2 * np.sqrt(36) / 12
    assert p["splus"] <= p["bound"] * (1 + 1e-12)
    assert p["shampoo"] >= 1e4 * p["unseen"]


def test_splus_reader_maps_the_momentum_to_its_sign_update():
    """``approximation(leaf)^{-1/2} vec(M) = vec(Q_a sign(Q_aᵀMQ_b) Q_bᵀ)`` up to ``δ``."""
    rng = np.random.default_rng(5)
    qa = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    qb = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    mom = rng.standard_normal((5, 3))
    leaf = SPlusLeaf(
        bases=(jnp.asarray(qa), jnp.asarray(qb)),
        factors=(jnp.eye(5), jnp.eye(3)),
        mu=jnp.asarray(mom),
    )
    got = METHODS["splus"].approximation(leaf).power(-0.5).matvec(jnp.asarray(mom))
    want = qa @ np.sign(qa.T @ mom @ qb) @ qb.T
    assert _rel(np.asarray(got), want) <= 1e-10
