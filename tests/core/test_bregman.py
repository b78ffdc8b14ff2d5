"""The trace-power Bregman family: statistic, estimator and divergence against dense
float64 references and the existing special cases (q = 2, 1, 0)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, random_samples, random_spd

from precond_lab import DenseTarget, FitNeedsDampingError, Kronecker, SampleTarget
from precond_lab import estimators as est
from precond_lab import metrics as met
from precond_lab import reference as ref
from precond_lab.errors import NotPositiveDefiniteError

QS = (0.0, 0.5, 1.0, 1.5, 2.0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    g = random_samples(rng, 40, 4, 3, cond_exp=1.0)
    return g, ref.target_matrix(g)


# ---------------------------------------------------------------------- the statistic


@pytest.mark.parametrize("q", [-0.5, 0.0, 0.5, 1.0, 2.0, 2.5])
@pytest.mark.parametrize("side", ["left", "right"])
def test_trace_power_statistic_matches_dense_products(q, side):
    rng = np.random.default_rng(1)
    g = rng.standard_normal((6, 4, 3))
    k = 3 if side == "left" else 4
    other = random_spd(rng, k, cond_exp=1.0)
    w, v = np.linalg.eigh(other)
    power = ref.psd_power(other, q - 1)
    if side == "left":
        want = np.mean([x @ power @ x.T for x in g], axis=0)
    else:
        want = np.mean([x.T @ power @ x for x in g], axis=0)
    want = want / np.trace(ref.psd_power(other, q))
    assert_close(est.trace_power_statistic(g, w, v, q, side=side), want)
    # one (m, n) gradient is a batch of one
    one = g[0] @ power @ g[0].T if side == "left" else g[0].T @ power @ g[0]
    got = est.trace_power_statistic(g[0], w, v, q, side=side)
    assert_close(got, one / np.trace(ref.psd_power(other, q)))


def test_statistic_equals_the_batch_update_and_the_special_statistics(data):
    g, sigma = data
    rng = np.random.default_rng(2)
    right = random_spd(rng, 3)
    w, v = np.linalg.eigh(right)
    for q in QS:
        batch = est.trace_power_statistic(g, w, v, q)
        update = est.trace_power_update(SampleTarget(g), w, v, q)
        assert_close(batch, update)
        assert_close(est.trace_power_update(DenseTarget(sigma, (4, 3)), w, v, q), update)
    # q = 1: Shampoo's statistic over tr R; q = 0: the KL flip-flop statistic / n
    left, _ = ref.shampoo_statistics(sigma, 4, 3)
    assert_close(est.trace_power_statistic(g, w, v, 1.0), left / np.trace(right))
    kl = np.mean([x @ np.linalg.inv(right) @ x.T for x in g], axis=0) / 3
    assert_close(est.trace_power_statistic(g, w, v, 0.0), kl)


def test_damped_update_adds_the_trace_term(data):
    g, _ = data
    right = random_spd(np.random.default_rng(3), 3)
    w, v = np.linalg.eigh(right)
    lam, q = 0.3, 0.5
    got = est.trace_power_update(SampleTarget(g).damped(lam), w, v, q)
    p = ref.psd_power(right, q - 1)
    want = (np.mean([x @ p @ x.T for x in g], axis=0) + lam * np.trace(p) * np.eye(4)) / np.trace(
        ref.psd_power(right, q)
    )
    assert_close(got, want)


def test_statistic_rejects_bad_input():
    g = np.ones((2, 4, 3))
    with pytest.raises(FitNeedsDampingError, match="singular"):
        est.trace_power_statistic(g, np.array([0.0, 1.0, 2.0]), np.eye(3), 0.5)
    with pytest.raises(NotPositiveDefiniteError, match="not positive semidefinite"):
        est.trace_power_statistic(g, np.array([-1.0, 1.0, 2.0]), np.eye(3), 2.0)
    with pytest.raises(ValueError, match="eigenpairs"):
        est.trace_power_statistic(g, np.ones(4), np.eye(4), 0.5)
    with pytest.raises(ValueError, match="side"):
        est.trace_power_statistic(g, np.ones(3), np.eye(3), 0.5, side="top")
    with pytest.raises(ValueError, match="finite"):
        est.trace_power_statistic(g, np.ones(3), np.eye(3), np.nan)
    # q ≥ 1 accepts a singular (PSD) other factor
    out = est.trace_power_statistic(g, np.array([0.0, 1.0, 2.0]), np.eye(3), 2.0)
    assert np.all(np.isfinite(out))


# ---------------------------------------------------------------------- the estimator


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 1.0, 1.5, 2.0])
def test_bregman_optimal_matches_the_dense_minimiser(data, q):
    g, sigma = data
    fit = est.bregman_optimal(g, q, tol=1e-14)
    left, right = ref.bregman_optimal(sigma, 4, 3, q)
    assert_close(fit.to_dense(), np.kron(left, right))
    assert fit.info.converged
    obj = fit.info.objective
    assert np.all(np.diff(obj) <= 1e-12 * np.abs(obj[:-1]).max())  # monotone
    # the objective is B_q up to the constant tr f_q(Σ): compare with the dense divergence
    const = ref.bregman_divergence(sigma, np.eye(12), q) - _j(sigma, np.eye(12), q)
    assert obj[-1] + const == pytest.approx(
        ref.bregman_divergence(sigma, np.asarray(fit.to_dense()), q), rel=1e-9
    )


def _j(x, y, q):
    """Dense ``J_q(Y) = B_q(X, Y) − c_q(X)`` (the Y-dependent terms)."""
    w, u = np.linalg.eigh(y)
    xu = np.diag(u.T @ x @ u)
    if q == 1:
        return np.sum(w) - np.sum(np.log(w) * xu)
    if q == 0:
        return np.sum(np.log(w)) + np.sum(xu / w)
    return np.sum(w**q) / q - np.sum(w ** (q - 1) * xu) / (q - 1)


def test_special_cases_are_the_existing_estimators(data):
    g, _ = data
    t = SampleTarget(g)
    pairs = [
        (2.0, est.frobenius_optimal(t)),
        (1.0, est.shampoo_squared(t)),
        (0.0, est.kl_optimal(t, tol=1e-14, max_iter=5000)),
    ]
    for q, want in pairs:
        got = est.bregman_optimal(t, q, tol=1e-14)
        assert_close(got.to_dense(), want.to_dense(), err_msg=f"q={q}")
    assert est.bregman_optimal(t, 1.0).info.iterations <= 2  # closed form after one sweep
    # damped: q = 0 is the damped KL optimum
    got = est.bregman_optimal(t, 0.0, damping=0.2, tol=1e-14)
    assert_close(got.to_dense(), est.kl_optimal(t, damping=0.2, tol=1e-14).to_dense())


def test_damped_fit_matches_the_dense_minimiser(data):
    g, sigma = data
    fit = est.bregman_optimal(g, 0.5, damping=0.1, tol=1e-14)
    left, right = ref.bregman_optimal(sigma, 4, 3, 0.5, damping=0.1)
    assert_close(fit.to_dense(), np.kron(left, right))


def test_fit_wins_its_own_divergence(data):
    g, sigma = data
    fits = {q: est.bregman_optimal(g, q, tol=1e-14) for q in QS}
    for q in QS:
        own = float(met.bregman_divergence(g, fits[q], q))
        for p, other in fits.items():
            assert own <= float(met.bregman_divergence(g, other, q)) * (1 + 1e-10), (q, p)


def test_one_sided_fit_is_the_block_minimiser(data):
    g, sigma = data
    right = random_spd(np.random.default_rng(4), 3)
    for q in (0.0, 0.5, 2.0):
        fit = est.bregman_optimal(g, q, fix=("left", right))
        assert_close(fit.right, right)
        w, v = np.linalg.eigh(right)
        assert_close(fit.left, est.trace_power_update(SampleTarget(g), w, v, q))
        # perturbing the fitted left factor can only increase B_q
        base = ref.bregman_divergence(sigma, np.asarray(fit.to_dense()), q)
        for seed in range(3):
            e = np.random.default_rng(seed).standard_normal((4, 4)) * 3e-2
            pert = Kronecker(np.asarray(fit.left) + e @ e.T - np.trace(e @ e.T) / 8, right)
            assert ref.bregman_divergence(sigma, np.asarray(pert.to_dense()), q) > base
    left = random_spd(np.random.default_rng(5), 4)
    fit = est.bregman_optimal(g, 0.5, fix=("right", left))
    assert_close(fit.left, left)


def test_spec_and_errors(data):
    g, _ = data
    ctx_fit = est.build("bregman_optimal(0.5)", SampleTarget(g))
    assert_close(ctx_fit.to_dense(), est.bregman_optimal(g, 0.5).to_dense())
    assert est.parse_estimator("bregman_optimal(q=0.0)").kwargs == (("q", 0.0),)
    few = g[:1]  # one sample: L = G R^{q−1} Gᵀ has rank 3 < 4, so q < 1 needs damping
    with pytest.raises(FitNeedsDampingError, match="damping"):
        est.bregman_optimal(few, 0.5)
    assert np.isfinite(np.asarray(est.bregman_optimal(few, 0.5, damping=1e-2).to_dense())).all()
    assert np.isfinite(np.asarray(est.bregman_optimal(few, 1.0).to_dense())).all()
    with pytest.raises(ValueError, match="damping"):
        est.bregman_optimal(g, 0.5, damping=-1.0)
    with pytest.raises(ValueError, match="fix"):
        est.bregman_optimal(g, 0.5, fix="left")
    with pytest.raises(ValueError, match="init"):
        est.bregman_optimal(g, 0.5, init=(np.eye(3), np.eye(3)))


# ---------------------------------------------------------------------- the divergence


@pytest.mark.parametrize("q", [-0.5, 0.0, 0.3, 0.5, 1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("damping", [0.0, 0.2])
def test_bregman_divergence_matches_dense(data, q, damping):
    g, sigma = data
    s = est.shampoo_squared(g[::2])
    x = sigma + damping * np.eye(12)
    for mu in (0.0, 0.05):
        got = met.bregman_divergence(g, s, q, damping=damping, approx_damping=mu)
        want = ref.bregman_divergence(x, np.asarray(s.to_dense()) + mu * np.eye(12), q)
        assert float(got) == pytest.approx(want, rel=1e-10, abs=1e-12)
        dense = met.bregman_divergence(
            DenseTarget(sigma, (4, 3)), s, q, damping=damping, approx_damping=mu
        )
        assert float(dense) == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_divergence_special_cases(data):
    g, sigma = data
    s = est.kl_optimal(g[::2])
    t = SampleTarget(g)
    half_sq = 0.5 * np.sum((sigma - np.asarray(s.to_dense())) ** 2)
    assert float(met.bregman_divergence(t, s, 2.0)) == pytest.approx(half_sq, rel=1e-10)
    assert float(met.bregman_divergence(t, s, 1.0)) == float(met.von_neumann_divergence(t, s))
    assert float(met.bregman_divergence(t, s, 0.0)) == float(met.logdet_divergence(t, s))
    assert float(met.logdet_divergence(t, s)) == pytest.approx(
        2 * float(met.kl_divergence(t, s)), rel=1e-12
    )
    # continuity through the limits q → 1 and q → 0
    for q0 in (0.0, 1.0):
        near = float(met.bregman_divergence(t, s, q0 + 1e-6))
        assert near == pytest.approx(float(met.bregman_divergence(t, s, q0)), rel=1e-4)


def test_divergence_on_a_rank_deficient_target():
    rng = np.random.default_rng(8)
    g = rng.standard_normal((5, 4, 3))  # N = 5 < mn = 12
    sigma = ref.target_matrix(g)
    s = est.shampoo_squared(g)  # positive definite
    for q in (0.5, 1.0, 2.0):  # finite: tr f_q(0) is finite for q > 0
        got = float(met.bregman_divergence(g, s, q))
        assert got == pytest.approx(
            ref.bregman_divergence(sigma, np.asarray(s.to_dense()), q), rel=1e-10
        )
    with pytest.raises(FitNeedsDampingError, match="damping"):
        met.bregman_divergence(g, s, 0.0)
    singular = Kronecker(np.diag([1.0, 1.0, 1.0, 0.0]), np.eye(3))
    with pytest.raises(FitNeedsDampingError):
        met.bregman_divergence(g, singular, 0.5)
    assert np.isfinite(float(met.bregman_divergence(g, singular, 2.0)))


# --------------------------------------------------- near q = 0 and q = 1 (issue 23, item 1)

_NEAR = (1e-16, 1e-14, 1e-12, 1e-10, 1e-8, 1e-6)
DENSE_QS = sorted(
    {float(q) for q in np.linspace(-0.75, 2.75, 36)}
    | {sum([0.1] * 10), 1e-16}
    | {c + s * d for c in (0.0, 1.0) for s in (-1, 1) for d in _NEAR} - {0.0, 1.0}
)


def _mp_bregman(x, y, qs):
    """``B_q(X, Y)`` from the literal closed form at 60 digits (mpmath eigendecompositions)."""
    mpmath = pytest.importorskip("mpmath")
    mp = mpmath.mp.clone() if hasattr(mpmath.mp, "clone") else mpmath.mp
    mp.dps = 60
    wx, _ = mp.eigsy(mp.matrix(x.tolist()))
    wy, vy = mp.eigsy(mp.matrix(y.tolist()))
    xm = mp.matrix(x.tolist())
    diag = [(vy[:, j].T * xm * vy[:, j])[0] for j in range(y.shape[0])]
    out = []
    for q in qs:
        qm = mp.mpf(q)
        tr_xq = sum(w**qm for w in wx)
        tr_yq = sum(w**qm for w in wy)
        cross = sum(d * w ** (qm - 1) for d, w in zip(diag, wy, strict=True))
        out.append(float(tr_xq / (qm * (qm - 1)) + tr_yq / qm - cross / (qm - 1)))
    return np.asarray(out)


@pytest.mark.parametrize("damping", [0.0, 0.2])
def test_bregman_divergence_is_accurate_over_the_whole_q_range(data, damping):
    """At q = sum([0.1]*10) the literal closed form returned 0.0 (the value is ~2) and at
    q = 1e-16 a negative number: every q, within 1e-16 of 0 and 1 too, matches a 60-digit
    evaluation, and so does the dense float64 reference."""
    g, sigma = data
    s = est.shampoo_squared(g[::2])
    mu = 0.05
    x = sigma + damping * np.eye(12)
    y = np.asarray(s.to_dense()) + mu * np.eye(12)
    want = _mp_bregman(x, y, DENSE_QS)
    assert np.all(want > 0)
    t = SampleTarget(g)
    got = [
        float(met.bregman_divergence(t, s, q, damping=damping, approx_damping=mu)) for q in DENSE_QS
    ]
    dense = [ref.bregman_divergence(x, y, q) for q in DENSE_QS]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dense, want, rtol=1e-9, atol=1e-12)
    # and the limits: continuous into the exact q = 1 (von Neumann) and q = 0 (LogDet)
    vn = float(met.bregman_divergence(t, s, 1.0, damping=damping, approx_damping=mu))
    ld = float(met.bregman_divergence(t, s, 0.0, damping=damping, approx_damping=mu))
    near_one = float(
        met.bregman_divergence(t, s, sum([0.1] * 10), damping=damping, approx_damping=mu)
    )
    near_zero = float(met.bregman_divergence(t, s, 1e-16, damping=damping, approx_damping=mu))
    assert near_one == pytest.approx(vn, rel=1e-12)
    assert near_zero == pytest.approx(ld, rel=1e-12)
