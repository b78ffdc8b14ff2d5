"""Property-based tests (hypothesis): random shapes, weights and conditioning.

Every example is checked against the dense float64 references. Examples stay small
(m, n ≤ 6 with few distinct shapes in practice, N ≤ 30) and few (``max_examples``),
because each new array shape costs JIT compilations.
"""

from __future__ import annotations

import numpy as np
from conftest import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from precond_lab import SampleTarget
from precond_lab import estimators as est
from precond_lab import metrics as met
from precond_lab import reference as ref

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KL_SETTINGS = settings(SETTINGS, max_examples=12)


@st.composite
def problems(draw, min_samples=1):
    # a few sizes only: each new (chunk, m, n) shape costs JIT compilations
    m = draw(st.sampled_from([1, 2, 3, 6]))
    n = draw(st.sampled_from([1, 2, 3, 6]))
    num = draw(st.integers(min_samples, 30))
    seed = draw(st.integers(0, 2**31 - 1))
    cond = draw(st.sampled_from([0.0, 1.0, 3.0]))  # columns scaled by up to 10^cond
    weights = draw(st.sampled_from(["default", "positive", "negative"]))
    center = weights == "negative" or draw(st.booleans())
    if num == 1:  # one centered sample is the zero matrix
        weights, center = "default", False
    chunk = draw(st.sampled_from([1, 4]))
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((num, m, n)) * 10.0 ** rng.uniform(0, cond, size=(1, 1, n))
    if weights == "default":
        w = None
    else:
        w = rng.uniform(0.1, 1.0, num)
        if weights == "negative":
            w[::3] *= -0.2  # a few negative weights, positive total
    return g, w, center, chunk


@SETTINGS
@given(problems())
def test_primitives_match_dense(p):
    g, w, center, chunk = p
    num, m, n = g.shape
    t = SampleTarget(g, w, center=center, chunk_size=chunk)
    sigma = ref.target_matrix(g, w, center)
    rng = np.random.default_rng(num)
    b, a = rng.standard_normal((n, n)), rng.standard_normal((m, m))
    r = ref.rearrange(sigma, m, n)
    scale = np.abs(sigma).max() * max(m, n)
    assert_close(t.contract_left(b), (r @ b.reshape(-1)).reshape(m, m), atol_scale=scale * 10)
    assert_close(t.contract_right(a), (r.T @ a.reshape(-1)).reshape(n, n), atol_scale=scale * 10)
    assert_close(t.trace(), np.trace(sigma), atol_scale=np.abs(np.diag(sigma)).sum())
    assert_close(t.frobenius_norm(), np.linalg.norm(sigma))
    assert_close(t.rotated_diagonal(None, None), np.diag(sigma).reshape(m, n))


@SETTINGS
@given(problems())
def test_frobenius_estimators_match_dense(p):
    g, w, center, chunk = p
    num, m, n = g.shape
    t = SampleTarget(g, w, center=center, chunk_size=chunk)
    sigma = ref.target_matrix(g, w, center)
    sv = np.linalg.svd(ref.rearrange(sigma, m, n), compute_uv=False)
    s = est.frobenius_optimal(t)
    if len(sv) == 1 or sv[0] - sv[1] > 1e-6 * sv[0]:  # unique optimum
        a, b = ref.frobenius_optimal(sigma, m, n)
        assert_close(s.to_dense(), np.kron(a, b), rtol=1e-9)
    assert_close(s.scale, sv[0], rtol=1e-10)
    s2 = est.shampoo_squared(t)
    assert_close(s2.to_dense(), ref.shampoo_squared(sigma, m, n), rtol=1e-10)
    assert_close(est.diagonal(t).to_dense(), ref.diagonal(sigma))
    # cosine and rescaled relative error agree with the dense definitions
    assert_close(
        met.cosine_similarity(t, s2), ref.cosine_similarity(sigma, np.asarray(s2.to_dense()))
    )
    # Frobenius optimality: nobody beats frobenius_optimal (ties within round-off)
    err_opt = ref.relative_frobenius_error(sigma, np.asarray(s.to_dense()), True)
    assert err_opt <= ref.relative_frobenius_error(sigma, np.asarray(s2.to_dense()), True) + 1e-9


@KL_SETTINGS
@given(problems(min_samples=1))
def test_kl_estimators_match_dense(p):
    g, w, center, chunk = p
    num, m, n = g.shape
    if w is not None and (w < 0).any():
        return  # the KL problem needs a PSD target; covered by the centered cases below
    t = SampleTarget(g, w, center=center, chunk_size=chunk)
    sigma = ref.target_matrix(g, w, center)
    lam = 1e-2 * np.trace(sigma) / (m * n)
    s = est.kl_optimal(t, damping=lam)
    left, right = ref.kl_flip_flop(sigma, m, n, damping=lam, iters=20000, tol=1e-15)
    # linear convergence of both flip-flops (stopping at 1e-12 relative change) and
    # conditioning up to 10^6 from the column scaling: compare at 1e-7
    assert_close(s.to_dense(), np.kron(left, right), rtol=1e-7)
    assert ref.kl_fixed_point_residual(sigma, s.scale * np.asarray(s.left), s.right, lam) < 1e-8
    x = sigma + lam * np.eye(m * n)
    y = np.asarray(s.to_dense()) + lam * np.eye(m * n)
    assert_close(
        met.kl_divergence(t, s, damping=lam, approx_damping=lam),
        ref.kl_divergence(x, y),
        atol_scale=1.0,
    )


@KL_SETTINGS
@given(problems(min_samples=1))
def test_kl_full_rank_optimality(p):
    g, w, center, chunk = p
    num, m, n = g.shape
    if num <= m * n + 1 or (w is not None and (w < 0).any()):
        g = np.concatenate([g] * (1 + (m * n + 2) // num))  # make N > mn
        g = g + 0.1 * np.random.default_rng(num).standard_normal(g.shape)
        w = None
    t = SampleTarget(g, w, center=center, chunk_size=chunk)
    sigma = ref.target_matrix(g, w, center)
    s = est.kl_optimal(t)
    kl_opt = float(met.kl_divergence(t, s, rescale=True))
    assert_close(
        kl_opt, ref.kl_divergence(sigma, np.asarray(s.to_dense())), atol_scale=1.0, rtol=1e-8
    )
    for other in (est.shampoo_squared(t), est.frobenius_optimal(t), est.one_sided_kl(t)):
        assert kl_opt <= float(met.kl_divergence(t, other, rescale=True)) + 1e-9
