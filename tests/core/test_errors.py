"""Bad input raises a clear error naming the problem — never a silent NaN."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import random_orthogonal, random_samples, random_spd

from precond_lab import (
    DenseTarget,
    Diagonal,
    FitNeedsDampingError,
    Kronecker,
    NonFiniteError,
    SampleTarget,
    as_target,
)
from precond_lab import estimators as est
from precond_lab import metrics as met


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("index,chunk", [(0, None), (5, 2), (6, 4), (9, 3)])
def test_nonfinite_sample_index(bad, index, chunk, rng):
    g = random_samples(rng, 10, 2, 3)
    g[index, 1, 2] = bad
    with pytest.raises(NonFiniteError, match=rf"sample index {index}\b"):
        SampleTarget(g, chunk_size=chunk).trace()
    with pytest.raises(NonFiniteError, match=rf"sample index {index}\b"):
        est.shampoo_squared(g)
    with pytest.raises(NonFiniteError, match=rf"sample index {index}\b"):
        met.cosine_similarity(g, Kronecker(np.eye(2), np.eye(3)))


_FIRST_USES = {
    "second_moments": lambda t: t.second_moments(),
    "frobenius_norm (the Gram)": lambda t: t.frobenius_norm(),
    "rotated_diagonal": lambda t: t.rotated_diagonal(None, None),
    "contract_left": lambda t: t.contract_left(np.eye(3)),
    "trace": lambda t: t.trace(),
    "eigh (parameter space)": lambda t: t.eigh(),
}


@pytest.mark.parametrize("executor", ["numpy", "jax"])
@pytest.mark.parametrize("use", list(_FIRST_USES))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_check_folded_into_first_pass(executor, use, bad, rng):
    """The NaN/Inf check runs inside whichever pass comes first, and names the sample;
    the target is built without a pass of its own."""
    g = random_samples(rng, 10, 2, 3)
    g[7, 0, 1] = bad
    t = SampleTarget(g, chunk_size=4, executor=executor)
    assert t._trace is None  # construction made no pass over the samples
    with pytest.raises(NonFiniteError, match=r"sample index 7\b"):
        _FIRST_USES[use](t)


@pytest.mark.parametrize("executor", ["numpy", "jax"])
def test_overflow_of_a_finite_sample_is_named(executor, rng):
    g = random_samples(rng, 6, 2, 3).astype(np.float32)
    g[4] *= 1e30  # finite, but ‖G‖² overflows float32
    with pytest.raises(NonFiniteError, match=r"sample 4 overflows float32.*rescale"):
        SampleTarget(g, executor=executor).second_moments()


def test_valid_samples_pass_the_folded_check(rng):
    g = random_samples(rng, 10, 2, 3)
    t = SampleTarget(g, chunk_size=3)
    t.second_moments()
    assert t._checked and float(t._trace) > 0


def test_nonfinite_in_dataarray_names_example_and_class(rng):
    g = rng.standard_normal((4, 3, 2, 2))  # (sample, class, row, col)
    g[2, 1, 0, 0] = np.nan
    da = xr.DataArray(g, dims=("sample", "class", "row", "col"))
    for executor in ("numpy", "jax"):
        with pytest.raises(NonFiniteError, match=r"\(2, 1\)"):
            SampleTarget(da, executor=executor).second_moments()


def test_nonfinite_weights_and_dense(rng):
    g = random_samples(rng, 4, 2, 2)
    w = np.ones(4)
    w[3] = np.nan
    with pytest.raises(NonFiniteError, match="weights.*index 3"):
        SampleTarget(g, w)
    sigma = np.eye(4)
    sigma[2, 1] = sigma[1, 2] = np.inf
    with pytest.raises(NonFiniteError, match="dense target.*row index 1"):
        DenseTarget(sigma, (2, 2))


def test_wrong_rank_and_shapes(rng):
    g = random_samples(rng, 5, 2, 3)
    with pytest.raises(ValueError, match=r"shape \(N, m, n\).*2-d"):
        SampleTarget(g[:, :, 0])
    with pytest.raises(ValueError, match=r"shape \(N, m, n\).*5-d"):
        SampleTarget(g[..., None, None])
    with pytest.raises(ValueError, match=r"weights must have shape \(N,\) = \(10,\); got \(3,\)"):
        SampleTarget(np.stack([g, g], axis=1), np.ones(3))  # (N, K, m, n): weights per example
    with pytest.raises(ValueError, match=r"weights must have shape \(N,\) = \(5,\); got \(4,\)"):
        SampleTarget(g, np.ones(4))
    with pytest.raises(ValueError, match="weights must have shape"):
        SampleTarget(g, np.ones((5, 1)))
    with pytest.raises(ValueError, match=r"\(m·n, m·n\) = \(6, 6\)"):
        DenseTarget(np.eye(5), (2, 3))
    with pytest.raises(ValueError, match="(m·n, m·n)"):
        as_target(np.eye(6)[None], shape=(2, 3))
    with pytest.raises(ValueError, match="not symmetric"):
        DenseTarget(np.triu(np.ones((6, 6))), (2, 3))
    with pytest.raises(ValueError, match=r"structure of matrix_shape \(3, 2\) does not match"):
        SampleTarget(g).trace_product(Diagonal(np.ones((3, 2))))
    with pytest.raises(ValueError, match=r"approximation has matrix_shape \(3, 2\)"):
        met.cosine_similarity(g, Diagonal(np.ones((3, 2))))
    with pytest.raises(TypeError, match="approx must be a structure"):
        met.kl_divergence(g, np.eye(6))
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        SampleTarget(g, chunk_size=0)


def test_kfac_shape_errors(rng):
    a, d = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    with pytest.raises(ValueError, match="disagree on the sample"):
        est.kfac(a, d[:3])
    with pytest.raises(ValueError, match="activations must be"):
        est.kfac(a[:, :, None, None], d)
    with pytest.raises(ValueError, match="backprops must be"):
        est.kfac(a, d[:, :, None, None])
    with pytest.raises(ValueError, match="variant"):
        est.kfac(a, d, variant="both")
    with pytest.raises(ValueError, match="at least one example"):
        est.kfac(a[:0], d[:0])
    with pytest.raises(TypeError, match="floating dtype"):
        est.kfac(a.astype(int), d)
    a[1, 0] = np.nan
    with pytest.raises(NonFiniteError, match="activations.*index 1"):
        est.kfac(a, d)


def test_empty_inputs():
    with pytest.raises(ValueError, match="empty.*N = 0"):
        SampleTarget(np.zeros((0, 2, 3)))
    with pytest.raises(ValueError, match="empty matrix shape"):
        SampleTarget(np.zeros((3, 0, 2)))
    with pytest.raises(ValueError, match="no samples"):
        SampleTarget(xr.DataArray(np.zeros((0, 2, 2)), dims=("sample", "row", "col")))


def test_integer_and_complex_dtypes():
    with pytest.raises(TypeError, match="floating dtype.*int64"):
        SampleTarget(np.ones((3, 2, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="floating dtype.*complex"):
        SampleTarget(np.ones((3, 2, 2), dtype=np.complex128))
    with pytest.raises(TypeError, match="floating dtype.*int"):
        DenseTarget(np.eye(4, dtype=np.int32), (2, 2))
    with pytest.raises(TypeError, match="floating dtype"):
        est.shampoo_squared(np.ones((3, 2, 2), dtype=np.int32))
    with pytest.raises(TypeError, match="weights"):
        SampleTarget(np.ones((3, 2, 2)), np.array([1 + 1j, 1, 1]))


@pytest.mark.parametrize("m,n", [(3, 2), (2, 3), (4, 1)])
def test_kl_fit_needs_damping(m, n, rng):
    g = random_samples(rng, 1, m, n)
    with pytest.raises(FitNeedsDampingError, match="damping"):
        est.kl_optimal(g)
    s = est.kl_optimal(g, damping=0.1)  # fine with damping
    assert np.isfinite(np.asarray(s.to_dense())).all()


def test_kl_metric_singular_target(rng):
    g = random_samples(rng, 2, 3, 2)
    s = Kronecker(random_spd(rng, 3), random_spd(rng, 2))
    for direction in ("forward", "reverse"):
        with pytest.raises(FitNeedsDampingError, match="singular.*damping"):
            met.kl_divergence(g, s, direction=direction)
    with pytest.raises(FitNeedsDampingError, match="damping"):
        met.logdet_divergence(g, s)
    # a singular approximation needs damping as well
    v = rng.standard_normal((3, 1))
    sing = Kronecker(v @ v.T, np.eye(2))
    g_full = random_samples(rng, 20, 3, 2)
    for fn in (met.kl_divergence, met.von_neumann_divergence, met.kl_scale):
        with pytest.raises(ValueError, match="damping"):
            fn(g_full, sing)


def test_indefinite_target_for_divergences(rng):
    g = random_samples(rng, 20, 2, 2)
    w = np.full(20, 0.05)
    w[0] = -3.0
    s = Kronecker(np.eye(2), np.eye(2))
    with pytest.raises(ValueError, match="not positive semidefinite"):
        met.kl_divergence(g, s, weights=w, damping=0.1)


def test_non_orthogonal_basis(rng):
    g = random_samples(rng, 6, 3, 2)
    qa, qb = random_orthogonal(rng, 3), random_orthogonal(rng, 2)
    with pytest.raises(ValueError, match="left basis is not orthogonal"):
        est.eigencorrected(g, basis=(qa * 1.1, qb))
    with pytest.raises(ValueError, match="right basis is not orthogonal"):
        est.eigencorrected(g, basis=(qa, qb + 0.1))
    with pytest.raises(ValueError, match=r"basis matrices must be \(3, 3\) and \(2, 2\)"):
        est.eigencorrected(g, basis=(qb, qa))
    with pytest.raises(TypeError, match="no Kronecker eigenbasis"):
        est.eigencorrected(g, basis=Diagonal(np.ones((3, 2))))
    with pytest.raises(TypeError, match="basis must be"):
        est.eigencorrected(g, basis="kfac")


@pytest.mark.parametrize("p", [-1.0, -0.5, 0.5, 2.0])
def test_negative_damping_and_bad_power(p, rng):
    s = Kronecker(random_spd(rng, 2), random_spd(rng, 3))
    with pytest.raises(ValueError, match="damping"):
        s.power(p, damping=-0.1)
    with pytest.raises(ValueError, match="damping"):
        s.power(p, damping=np.nan)
    with pytest.raises(ValueError, match="damping"):
        s.logdet(damping=-1.0)
    with pytest.raises(ValueError, match="power"):
        s.power(np.nan)


def test_bad_arguments(rng):
    g = random_samples(rng, 10, 2, 3)
    s = Kronecker(np.eye(2), np.eye(3))
    for fn in (met.kl_divergence, met.von_neumann_divergence, met.kl_scale):
        with pytest.raises(ValueError, match="damping must be"):
            fn(g, s, damping=-1e-3)
    with pytest.raises(ValueError, match="direction"):
        met.kl_divergence(g, s, direction="both")
    with pytest.raises(ValueError, match="damping must be"):
        est.kl_optimal(g, damping=-1.0)
    with pytest.raises(ValueError, match="damping must be"):
        est.one_sided_kl(g, damping=np.inf)
    with pytest.raises(ValueError, match="side"):
        est.one_sided_kl(g, side="top")
    with pytest.raises(ValueError, match="steps"):
        est.power_iteration(g, -1)
    with pytest.raises(ValueError, match="steps"):
        est.power_iteration(g, 1.5)
    with pytest.raises(ValueError, match="variant"):
        est.power_iteration(g, 1, variant="lanczos")
    with pytest.raises(ValueError, match="init"):
        est.power_iteration(g, 1, init="ones")
    with pytest.raises(ValueError, match=r"init factors must be \(2, 2\) and \(3, 3\)"):
        est.power_iteration(g, 1, init=(np.eye(3), np.eye(2)))
    with pytest.raises(ValueError, match="center=True needs weights with a non-zero sum"):
        SampleTarget(g, np.r_[np.ones(5), -np.ones(5)], center=True)
    with pytest.raises(ValueError, match="weights and center apply to samples"):
        as_target(np.eye(6), np.ones(6), shape=(2, 3))


def test_zero_target(rng):
    g = np.zeros((4, 2, 3))
    with pytest.raises(ValueError, match="target zero"):
        est.frobenius_optimal(g)


def test_indefinite_statistics_for_shampoo(rng):
    g = random_samples(rng, 4, 2, 3)
    w = np.array([1.0, -2.0, 0.5, -1.0])
    with pytest.raises(ValueError, match="not positive semidefinite"):
        est.shampoo(g, weights=w)
