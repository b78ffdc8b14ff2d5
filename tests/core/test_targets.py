"""Target primitives (SampleTarget / DenseTarget) against explicit dense float64 references."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    assert_close,
    make_problem,
    random_nonsymmetric,
    random_orthogonal,
    random_samples,
    sample_targets,
)

from precond_lab import DenseTarget, Diagonal, EigenKronecker, Kronecker, SampleTarget, as_target
from precond_lab import reference as ref


def _weights(w, num):
    return np.full(num, 1.0 / num) if w is None else np.asarray(w)


def _explicit_sigma(g, w, center):
    """Σ from an explicit loop (independent of reference.target_matrix's vectorisation)."""
    num = g.shape[0]
    w = _weights(w, num)
    x = np.stack([gk.reshape(-1) for gk in g])
    if center:
        mean = sum(w[k] * x[k] for k in range(num)) / w.sum()
        x = x - mean
    return sum(w[k] * np.outer(x[k], x[k]) for k in range(num))


def test_reference_target_matrix_is_row_major(rng):
    # vec is row-major: entry (i, j) of G sits at index i*n + j.
    g = random_samples(rng, 1, 2, 3)
    sigma = ref.target_matrix(g, [1.0])
    v = np.array([g[0, i, j] for i in range(2) for j in range(3)])
    assert_close(sigma, np.outer(v, v))


def test_to_dense(problem):
    g, w, center = problem
    targets, sigma = sample_targets(g, w, center)
    assert_close(sigma, _explicit_sigma(g, w, center))
    for name, t in targets:
        assert_close(t.to_dense(), sigma, err_msg=name)
        assert t.matrix_shape == g.shape[1:] and t.dim == g.shape[1] * g.shape[2]


def test_contractions_nonsymmetric(problem, rng):
    """E[G B Gᵀ] and E[Gᵀ A G] with non-symmetric A, B (a transposition cannot hide)."""
    g, w, center = problem
    num, m, n = g.shape
    targets, sigma = sample_targets(g, w, center)
    b, a = random_nonsymmetric(rng, n), random_nonsymmetric(rng, m)
    r = ref.rearrange(sigma, m, n)
    want_left = (r @ b.reshape(-1)).reshape(m, m)
    want_right = (r.T @ a.reshape(-1)).reshape(n, n)
    if not center:  # explicit per-sample sums
        ww = _weights(w, num)
        assert_close(want_left, ref.contract_left(g, ww, b))
        assert_close(want_right, ref.contract_right(g, ww, a))
    # the result is not symmetric, and differs from the transposed input's result
    if m > 1 and n > 1:
        assert not np.allclose(want_left, (r @ b.T.reshape(-1)).reshape(m, m))
    for name, t in targets:
        assert_close(t.contract_left(b), want_left, err_msg=name)
        assert_close(t.contract_right(a), want_right, err_msg=name)


def test_rearrangement_identity(rng):
    """D2: ‖Σ − A⊗B‖_F = ‖R(Σ) − vec(A)vec(B)ᵀ‖_F for arbitrary A, B."""
    m, n = 3, 2
    sigma = ref.target_matrix(random_samples(rng, 5, m, n))
    a, b = random_nonsymmetric(rng, m), random_nonsymmetric(rng, n)
    lhs = np.linalg.norm(sigma - np.kron(a, b))
    rhs = np.linalg.norm(ref.rearrange(sigma, m, n) - np.outer(a.reshape(-1), b.reshape(-1)))
    assert abs(lhs - rhs) <= 1e-12 * lhs


def test_second_moments(problem):
    g, w, center = problem
    targets, sigma = sample_targets(g, w, center)
    m, n = g.shape[1:]
    left, right = ref.shampoo_statistics(sigma, m, n)
    if not center:
        ww = _weights(w, g.shape[0])
        assert_close(left, sum(ww[k] * g[k] @ g[k].T for k in range(len(ww))))
        assert_close(right, sum(ww[k] * g[k].T @ g[k] for k in range(len(ww))))
    for name, t in targets:
        got_l, got_r = t.second_moments()
        assert_close(got_l, left, err_msg=name)
        assert_close(got_r, right, err_msg=name)
        # the generic path (contractions with the identity) agrees
        assert_close(t.contract_left(np.eye(n)), left, err_msg=name)
        assert_close(t.contract_right(np.eye(m)), right, err_msg=name)
        # D: tr L = tr R = tr Σ
        assert_close(jnp.trace(got_l), np.trace(sigma))
        assert_close(jnp.trace(got_r), np.trace(sigma))


def test_rotated_diagonal(problem, rng):
    g, w, center = problem
    targets, sigma = sample_targets(g, w, center)
    m, n = g.shape[1:]
    qa, qb = random_orthogonal(rng, m), random_orthogonal(rng, n)
    for name, t in targets:
        assert_close(t.rotated_diagonal(qa, qb), ref.eigencorrected(sigma, qa, qb), err_msg=name)
        assert_close(t.rotated_diagonal(None, None), np.diag(sigma).reshape(m, n), err_msg=name)
        assert_close(
            t.rotated_diagonal(qa, None), ref.eigencorrected(sigma, qa, np.eye(n)), err_msg=name
        )
        assert_close(
            t.rotated_diagonal(None, qb), ref.eigencorrected(sigma, np.eye(m), qb), err_msg=name
        )


def test_trace_norm_and_trace_product(problem, rng):
    g, w, center = problem
    targets, sigma = sample_targets(g, w, center)
    m, n = g.shape[1:]
    structures = [
        Kronecker(random_nonsymmetric(rng, m), random_nonsymmetric(rng, n), -0.7),
        EigenKronecker(
            random_orthogonal(rng, m), random_orthogonal(rng, n), rng.standard_normal((m, n))
        ),
        Diagonal(rng.standard_normal((m, n))),
    ]
    for name, t in targets:
        assert_close(t.trace(), np.trace(sigma), err_msg=name)
        assert_close(t.frobenius_norm(), np.linalg.norm(sigma), err_msg=name)
        for s in structures:
            dense = np.asarray(s.to_dense())
            want = np.trace(dense @ sigma)
            assert_close(
                t.trace_product(s), want, atol_scale=np.linalg.norm(dense) * np.linalg.norm(sigma)
            )


def test_eigh(problem):
    g, w, center = problem
    targets, sigma = sample_targets(g, w, center)
    num, m, n = g.shape
    d = m * n
    want = ref.spectrum(sigma)
    scale = np.max(np.abs(want))
    for name, t in targets:
        spec = t.eigh(vectors=True)
        assert spec.dim == d
        vals = np.asarray(spec.values)
        assert np.all(np.diff(vals) <= 0), "descending"
        # non-zero eigenvalues match, the dropped ones are (numerically) zero
        full = np.concatenate([vals, np.zeros(d - spec.rank)])
        order = np.argsort(-full)
        assert_close(full[order], want, atol_scale=scale, err_msg=name)
        assert spec.rank <= min(num + int(center), d)
        vecs = np.asarray(spec.vectors).reshape(spec.rank, d)
        assert_close(vecs @ vecs.T, np.eye(spec.rank), err_msg=name)
        assert_close((vecs.T * vals) @ vecs, sigma, atol_scale=scale, err_msg=name)


def test_center_equals_explicit_centering(rng):
    g = random_samples(rng, 9, 3, 2) + 2.0
    w = rng.uniform(0.2, 1.0, 9)
    mean = np.einsum("k,kij->ij", w, g) / w.sum()
    explicit = SampleTarget(g - mean, w)
    for c in (1, 2, 4, None):
        centered = SampleTarget(g, w, center=True, chunk_size=c)
        assert_close(centered.to_dense(), explicit.to_dense())
        assert_close(centered.trace(), explicit.trace())
        assert_close(centered.frobenius_norm(), explicit.frobenius_norm())
        assert_close(
            centered.contract_left(np.arange(4.0).reshape(2, 2)),
            explicit.contract_left(np.arange(4.0).reshape(2, 2)),
        )
    # centering lowers the rank by one when N <= mn
    g2 = random_samples(rng, 4, 3, 2)
    assert SampleTarget(g2, center=True).eigh().rank == 3
    assert SampleTarget(g2).eigh().rank == 4


@pytest.mark.parametrize("executor", ["numpy", "jax"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 7, 8, 100])
def test_chunking(chunk, executor, rng):
    g = random_samples(rng, 7, 2, 3)
    w = rng.uniform(-0.5, 1.0, 7)
    t = SampleTarget(g, w, chunk_size=chunk, executor=executor)
    assert t.chunk_size == min(chunk, 7)
    assert t.num_chunks == -(-7 // t.chunk_size)
    assert_close(t.to_dense(), ref.target_matrix(g, w))
    assert_close(t.frobenius_norm(), np.linalg.norm(ref.target_matrix(g, w)))
    seen = 0
    for start, gc, wc in t.chunks():
        real = min(t.chunk_size, 7 - start)
        # JAX pads every block to one shape (one compile); NumPy blocks are views
        assert gc.shape[0] == (t.chunk_size if executor == "jax" else real)
        assert_close(gc[:real], g[start : start + real])
        assert np.all(np.asarray(wc[real:]) == 0)
        seen += real
    assert seen == 7


def test_dense_target_matches_samples(problem):
    g, w, center = problem
    m, n = g.shape[1:]
    sigma = ref.target_matrix(g, w, center)
    s_t = SampleTarget(g, w, center=center)
    d_t = as_target(sigma, shape=(m, n))
    assert isinstance(d_t, DenseTarget)
    b = np.arange(n * n, dtype=float).reshape(n, n)
    assert_close(d_t.contract_left(b), s_t.contract_left(b))
    assert_close(d_t.trace(), s_t.trace())


def test_as_target_passthrough_and_dtype(rng):
    g = random_samples(rng, 5, 2, 2)
    t = as_target(g)
    assert isinstance(t, SampleTarget) and as_target(t) is t
    assert t.dtype == np.float64
    t32 = as_target(g.astype(np.float32))
    assert t32.dtype == np.float32
    assert t32.contract_left(np.eye(2)).dtype == jnp.float32
    assert t32.trace().dtype == jnp.float32
    assert t32.frobenius_norm().dtype == jnp.float32
    with pytest.raises(ValueError, match="cannot be changed"):
        as_target(t, weights=np.ones(5))


def test_validate_false_lazily_computes_trace(rng):
    g = random_samples(rng, 6, 2, 3)
    t = SampleTarget(g, validate=False)
    assert_close(t.trace(), np.trace(ref.target_matrix(g)))


def test_negative_weight_eigh_keeps_negative_eigenvalues(rng):
    """An indefinite Σ (negative weights, no centering) keeps its negative eigenvalues."""
    g = random_samples(rng, 3, 2, 2)
    w = np.array([1.0, -0.5, 0.3])
    sigma = ref.target_matrix(g, w)
    for t in (SampleTarget(g, w), DenseTarget(sigma, (2, 2))):
        vals = np.sort(np.concatenate([t.eigh().values, np.zeros(4 - t.eigh().rank)]))
        assert_close(vals, np.linalg.eigvalsh(sigma))
        assert vals.min() < 0


def test_problem_generator_deterministic():
    g1, w1, _ = make_problem(1, 5, 2, 3, "positive", False)
    g2, w2, _ = make_problem(1, 5, 2, 3, "positive", False)
    assert np.array_equal(g1, g2) and np.array_equal(w1, w2)


@pytest.mark.parametrize("weights", ["uniform", "signed"])
def test_numpy_executor_sub_blocks(weights, rng, monkeypatch):
    """The NumPy kernels split each chunk into sub-blocks (bounded temporaries): with
    blocks of 2 samples every primitive still matches the dense reference."""
    from precond_lab.targets import _host

    g = random_samples(rng, 9, 3, 4)
    w = None if weights == "uniform" else rng.uniform(-0.5, 1.0, 9)
    monkeypatch.setattr(_host, "_BLOCK_BYTES", 2 * 3 * 4 * 8)
    t = SampleTarget(g, w, chunk_size=5, executor="numpy")
    sigma = ref.target_matrix(g, w)
    dense = DenseTarget(sigma, (3, 4))
    a, b = random_nonsymmetric(rng, 3), random_nonsymmetric(rng, 4)
    qa, qb = random_orthogonal(rng, 3), random_orthogonal(rng, 4)
    assert_close(t.contract_left(b), dense.contract_left(b))
    assert_close(t.contract_right(a), dense.contract_right(a))
    for got, want in zip(t.second_moments(), dense.second_moments(), strict=True):
        assert_close(got, want)
    assert_close(t.rotated_diagonal(qa, qb), dense.rotated_diagonal(qa, qb))
    assert_close(t.rotated_diagonal(None, None), np.diag(sigma).reshape(3, 4))
    assert_close(t.to_dense(), sigma)


@pytest.mark.parametrize("executor", ["numpy", "jax"])
def test_block_gram_and_streamed_norm(executor, rng, monkeypatch):
    """The Gram from block pairs (a lazy DataArray in chunks of 3) and ‖Σ‖_F streamed over
    chunk pairs (a Gram too large to keep) match the dense reference, centered too."""
    import xarray as xr

    from precond_lab.targets import _sample

    g = random_samples(rng, 8, 2, 3)
    w = rng.uniform(0.2, 1.0, 8)
    da = xr.DataArray(g, dims=("sample", "row", "col"))
    for center in (False, True):
        sigma = ref.target_matrix(g, w, center=center)
        t = SampleTarget(da, w, center=center, chunk_size=3, executor=executor)
        spec = t.eigh(vectors=True)
        vecs = np.asarray(spec.vectors).reshape(spec.rank, -1)
        assert_close((vecs.T * np.asarray(spec.values)) @ vecs, sigma)
        assert_close(t.frobenius_norm(), np.linalg.norm(sigma))
        assert_close(t.matvec(np.eye(6)), sigma)
    monkeypatch.setattr(_sample, "_GRAM_BYTES", 0)
    for center in (False, True):
        t = SampleTarget(g, w, center=center, chunk_size=3, executor=executor)
        assert_close(t.frobenius_norm(), np.linalg.norm(ref.target_matrix(g, w, center=center)))
