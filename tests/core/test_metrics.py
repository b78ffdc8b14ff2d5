"""Metrics against the dense float64 references on explicit matrices."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, random_orthogonal, random_samples, random_spd, sample_targets

from precond_lab import Diagonal, EigenKronecker, Kronecker, SampleTarget
from precond_lab import estimators as est
from precond_lab import metrics as met
from precond_lab import reference as ref

# (seed, N, m, n, weights, center): full rank (N > mn) and rank-deficient targets
FULL = [(0, 20, 3, 2, True, False), (1, 30, 2, 4, False, True), (2, 8, 1, 3, True, False)]
DEFICIENT = [(3, 3, 3, 2, False, False), (4, 5, 2, 4, True, True), (5, 1, 1, 3, False, False)]


def _problem(seed, num, m, n, weighted, center):
    rng = np.random.default_rng(seed)
    g = random_samples(rng, num, m, n)
    w = rng.uniform(0.1, 1.0, num) if weighted else None
    return rng, g, w, center


def _structures(rng, m, n):
    qa, qb = random_orthogonal(rng, m), random_orthogonal(rng, n)
    return [
        Kronecker(random_spd(rng, m), random_spd(rng, n), 0.3),
        EigenKronecker(qa, qb, rng.uniform(0.2, 2.0, (m, n))),
        Diagonal(rng.uniform(0.2, 2.0, (m, n))),
    ]


def _ids(c):
    return "N{1}-m{2}-n{3}".format(*c)


@pytest.mark.parametrize("case", FULL + DEFICIENT, ids=_ids)
def test_frobenius_metrics(case):
    rng, g, w, center = _problem(*case)
    m, n = g.shape[1:]
    targets, sigma = sample_targets(g, w, center, chunk_sizes=(3,))
    for s in [*_structures(rng, m, n), est.shampoo_squared(g, weights=w, center=center)]:
        dense = np.asarray(s.to_dense())
        for name, t in targets:
            msg = f"{name} {type(s).__name__}"
            assert_close(met.frobenius_inner(t, s), ref.frobenius_inner(sigma, dense), err_msg=msg)
            assert_close(met.cosine_similarity(t, s), ref.cosine_similarity(sigma, dense))
            assert_close(met.frobenius_scale(t, s), ref.frobenius_scale(sigma, dense))
            for rescale in (False, True):
                got = met.relative_frobenius_error(t, s, rescale=rescale)
                want = ref.relative_frobenius_error(sigma, dense, rescale=rescale)
                # sqrt(‖Σ‖² − 2c⟨Σ,S⟩ + c²‖S‖²) resolves only ~sqrt(eps) ≈ 1e-8 near zero
                # error (e.g. m = 1, where every Σ is a Kronecker product)
                assert_close(got, want, atol_scale=want if want > 1e-3 else 1e3, err_msg=msg)
    # arrays with keywords equal the Target
    s = _structures(rng, m, n)[0]
    assert_close(
        met.cosine_similarity(g, s, weights=w, center=center, chunk_size=2),
        ref.cosine_similarity(sigma, np.asarray(s.to_dense())),
    )


@pytest.mark.parametrize("damping", [0.0, 0.3])
@pytest.mark.parametrize("case", FULL, ids=_ids)
def test_kl_forward_reverse_full_rank(case, damping):
    rng, g, w, center = _problem(*case)
    m, n = g.shape[1:]
    d = m * n
    targets, sigma = sample_targets(g, w, center, chunk_sizes=(3,))
    x = sigma + damping * np.eye(d)
    for s in [*_structures(rng, m, n), est.shampoo_squared(g, weights=w, center=center)]:
        y = np.asarray(s.to_dense()) + damping * np.eye(d)
        fwd, rev = ref.kl_divergence(x, y), ref.kl_divergence(y, x)
        c_f = ref.kl_scale(sigma, np.asarray(s.to_dense()), damping)
        c_r = ref.reverse_kl_scale(sigma, np.asarray(s.to_dense()), damping)
        dense_s = np.asarray(s.to_dense())
        fwd_scaled = ref.kl_divergence(x, c_f * dense_s + damping * np.eye(d))
        rev_scaled = ref.kl_divergence(c_r * dense_s + damping * np.eye(d), x)
        for name, t in targets:
            msg = f"{name} {type(s).__name__}"
            kw = dict(damping=damping, approx_damping=damping)
            assert_close(met.kl_divergence(t, s, **kw), fwd, atol_scale=1.0, err_msg=msg)
            assert_close(
                met.kl_divergence(t, s, direction="reverse", **kw), rev, atol_scale=1.0, err_msg=msg
            )
            assert_close(met.logdet_divergence(t, s, **kw), 2 * fwd, atol_scale=1.0, err_msg=msg)
            # optimal scalars: the 1-D minimisers agree to ~sqrt(tol) in c, the
            # divergence at the minimum to second order (flat minimum) → 1e-10
            assert_close(met.kl_scale(t, s, **kw), c_f, rtol=1e-6, err_msg=msg)
            assert_close(
                met.kl_divergence(t, s, rescale=True, **kw), fwd_scaled, atol_scale=1.0, err_msg=msg
            )
            assert_close(
                met.kl_divergence(t, s, rescale=True, direction="reverse", **kw),
                rev_scaled,
                atol_scale=1.0,
                err_msg=msg,
            )
            if damping == 0:  # closed forms
                assert_close(met.kl_scale(t, s), np.trace(np.linalg.solve(dense_s, sigma)) / d)


@pytest.mark.parametrize("case", DEFICIENT, ids=_ids)
def test_kl_rank_deficient_needs_damping(case):
    rng, g, w, center = _problem(*case)
    m, n = g.shape[1:]
    d = m * n
    targets, sigma = sample_targets(g, w, center, chunk_sizes=(3,))
    lam = 0.05
    x = sigma + lam * np.eye(d)
    for s in _structures(rng, m, n):
        y = np.asarray(s.to_dense()) + lam * np.eye(d)
        for name, t in targets:
            assert_close(
                met.kl_divergence(t, s, damping=lam, approx_damping=lam),
                ref.kl_divergence(x, y),
                atol_scale=1.0,
            )
            assert_close(
                met.kl_divergence(t, s, damping=lam, approx_damping=lam, direction="reverse"),
                ref.kl_divergence(y, x),
                atol_scale=1.0,
                err_msg=name,
            )
            c_r = ref.reverse_kl_scale(sigma, np.asarray(s.to_dense()), lam)
            rev_scaled = ref.kl_divergence(c_r * np.asarray(s.to_dense()) + lam * np.eye(d), x)
            assert_close(
                met.kl_divergence(
                    t, s, damping=lam, approx_damping=lam, direction="reverse", rescale=True
                ),
                rev_scaled,
                atol_scale=1.0,
                err_msg=name,
            )
            for direction in ("forward", "reverse"):
                with pytest.raises(ValueError, match="damping"):
                    met.kl_divergence(t, s, direction=direction)


@pytest.mark.parametrize("damping", [0.0, 0.2])
@pytest.mark.parametrize("case", FULL + DEFICIENT, ids=_ids)
def test_von_neumann(case, damping):
    rng, g, w, center = _problem(*case)
    m, n = g.shape[1:]
    d = m * n
    targets, sigma = sample_targets(g, w, center, chunk_sizes=(3,))
    x = sigma + damping * np.eye(d)
    for s in _structures(rng, m, n):
        y = np.asarray(s.to_dense()) + damping * np.eye(d)
        want = ref.von_neumann_divergence(x, y)
        for name, t in targets:
            got = met.von_neumann_divergence(t, s, damping=damping, approx_damping=damping)
            scale = np.trace(x) + np.trace(y)
            assert_close(got, want, atol_scale=scale, err_msg=f"{name} {type(s).__name__}")


@pytest.mark.parametrize("case", FULL + DEFICIENT, ids=_ids)
def test_spectrum(case):
    rng, g, w, center = _problem(*case)
    m, n = g.shape[1:]
    targets, sigma = sample_targets(g, w, center, chunk_sizes=(3,))
    want = ref.spectrum(sigma)
    for name, t in targets:
        got = met.spectrum(t)
        assert got.shape == (m * n,)
        assert_close(got, want, atol_scale=want.max(), err_msg=name)
        assert_close(met.spectrum(t, k=2), want[:2], atol_scale=want.max())
    assert_close(met.spectrum(g, weights=w, center=center), want, atol_scale=want.max())
    for s in _structures(rng, m, n):
        assert_close(met.spectrum(s), ref.spectrum(np.asarray(s.to_dense())))


def test_kl_zero_for_exact_match(rng):
    """KL(Σ‖Σ) = 0 and VN(Σ‖Σ) = 0 when Σ is representable (a Kronecker product)."""
    a, b = random_spd(rng, 3), random_spd(rng, 2)
    s = Kronecker(a, b)
    sigma = np.kron(a, b)
    t = SampleTarget(np.linalg.cholesky(sigma).T.reshape(6, 3, 2) * np.sqrt(6.0))
    assert_close(t.to_dense(), sigma)
    assert abs(float(met.kl_divergence(t, s))) < 1e-12
    assert abs(float(met.kl_divergence(t, s, direction="reverse"))) < 1e-12
    assert abs(float(met.von_neumann_divergence(t, s))) < 1e-12
    assert_close(met.cosine_similarity(t, s), 1.0)
    # relative_frobenius_error = sqrt(max(‖Σ‖² − 2⟨Σ,S⟩ + ‖S‖², 0))/‖Σ‖: cancellation
    # leaves O(sqrt(eps)) ≈ 1e-8 at zero error, not 1e-10
    assert float(met.relative_frobenius_error(t, s)) < 1e-7


def test_float32_metrics(rng):
    g = random_samples(rng, 20, 3, 2)
    sigma = ref.target_matrix(g)
    s64 = est.shampoo_squared(g)
    s32 = est.shampoo_squared(g.astype(np.float32))
    assert s32.dtype == jnp.float32
    dense = np.asarray(s64.to_dense())
    checks = [
        (met.cosine_similarity, ref.cosine_similarity(sigma, dense), {}),
        (met.relative_frobenius_error, ref.relative_frobenius_error(sigma, dense), {}),
        (met.kl_divergence, ref.kl_divergence(sigma, dense), {}),
        (met.kl_divergence, ref.kl_divergence(dense, sigma), {"direction": "reverse"}),
        (met.von_neumann_divergence, ref.von_neumann_divergence(sigma, dense), {}),
    ]
    t32 = SampleTarget(g.astype(np.float32))
    for fn, want, kw in checks:
        got = fn(t32, s32, **kw)
        assert got.dtype == jnp.float32, fn.__name__
        # float32 (eps ≈ 6e-8) with condition numbers O(10): 1e-4 relative
        assert_close(got, want, rtol=1e-4, err_msg=fn.__name__)
    v = met.von_neumann_divergence(
        SampleTarget(g[:3].astype(np.float32)), s32, damping=0.1, approx_damping=0.1
    )
    assert v.dtype == jnp.float32
    assert met.spectrum(t32).dtype == jnp.float32


def test_diagonal_kl_is_the_dense_gaussian_kl_at_the_optimal_scale():
    from precond_lab.metrics import diagonal_kl

    rng = np.random.default_rng(3)
    t, x = rng.uniform(0.5, 2.0, 7), rng.uniform(0.5, 2.0, 7)

    def kl(c):  # dense KL(N(0, diag t) ‖ N(0, c diag x))
        y = np.diag(c * x)
        return 0.5 * (np.trace(np.linalg.solve(y, np.diag(t))) - 7 + np.linalg.slogdet(y)[1]
                      - np.sum(np.log(t)))  # fmt: skip

    cs = np.linspace(0.2, 5.0, 20001)
    assert abs(diagonal_kl(t, x) - min(kl(c) for c in cs)) < 1e-7
    assert abs(diagonal_kl(t, x, rescale=False) - kl(1.0)) < 1e-12
    assert diagonal_kl(t, 3.0 * t) < 1e-14  # a scaled copy: zero at the optimal scale
