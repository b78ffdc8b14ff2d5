"""xarray.DataArray input equals the flattened NumPy equivalent."""

from __future__ import annotations

import numpy as np
import xarray as xr
from conftest import assert_close, random_samples

from precond_lab import SampleTarget
from precond_lab import estimators as est
from precond_lab import metrics as met
from precond_lab import reference as ref


def test_three_dim_dataarray(rng):
    g = random_samples(rng, 9, 3, 2)
    w = rng.uniform(0.1, 1.0, 9)
    da = xr.DataArray(g, dims=("sample", "row", "col"), name="grads")
    for weights in (None, w):
        t_da = SampleTarget(da, weights, chunk_size=4)
        t_np = SampleTarget(g, weights, chunk_size=4)
        assert_close(t_da.to_dense(), ref.target_matrix(g, weights))
        assert_close(t_da.to_dense(), t_np.to_dense())
        assert_close(est.frobenius_optimal(t_da).to_dense(), est.frobenius_optimal(t_np).to_dense())
    # weights as a coordinate along sample
    da_w = da.assign_coords(weight=("sample", w))
    assert_close(SampleTarget(da_w, chunk_size=4).to_dense(), ref.target_matrix(g, w))
    assert_close(
        met.cosine_similarity(da_w, est.shampoo_squared(g, weights=w)),
        met.cosine_similarity(g, est.shampoo_squared(g, weights=w), weights=w),
    )


def test_four_dim_dataarray_with_weight_coord(rng):
    """(sample, class, row, col): N·C samples, each inheriting its example's weight."""
    num, cls, m, n = 5, 3, 2, 3
    g = rng.standard_normal((num, cls, m, n))
    w = rng.uniform(0.1, 1.0, num)
    da = xr.DataArray(g, dims=("sample", "class", "row", "col"), coords={"weight": ("sample", w)})
    flat = g.reshape(num * cls, m, n)
    w_flat = np.repeat(w, cls)
    sigma = ref.target_matrix(flat, w_flat)
    for chunk in (1, 2, 4, None):  # chunks cut through the class axis
        t = SampleTarget(da, chunk_size=chunk)
        assert t.num_samples == num * cls
        assert_close(t.to_dense(), sigma)
        assert_close(
            t.contract_left(np.arange(9.0).reshape(3, 3)),
            SampleTarget(flat, w_flat).contract_left(np.arange(9.0).reshape(3, 3)),
        )
    for fn in (est.shampoo_squared, est.kl_optimal, est.diagonal):
        assert_close(
            fn(da, chunk_size=4).to_dense(), fn(flat, weights=w_flat).to_dense(), rtol=1e-9
        )
    # explicit weights override the coordinate; centering works on the flattened bag
    w2 = rng.uniform(0.1, 1.0, num)
    assert_close(SampleTarget(da, w2).to_dense(), ref.target_matrix(flat, np.repeat(w2, cls)))
    assert_close(
        SampleTarget(da, center=True, chunk_size=4).to_dense(),
        ref.target_matrix(flat, w_flat, center=True),
    )


def test_default_weights_four_dim(rng):
    """Without weights each example has 1/N, shared by its C inner samples."""
    g = rng.standard_normal((4, 2, 2, 2))
    da = xr.DataArray(g, dims=("sample", "mc", "row", "col"))
    want = ref.target_matrix(g.reshape(8, 2, 2), np.full(8, 0.25))
    assert_close(SampleTarget(da).to_dense(), want)


def test_bad_dims():
    import pytest

    with pytest.raises(ValueError, match=r"dims \(sample, row, col\)"):
        SampleTarget(xr.DataArray(np.zeros((2, 2, 2)), dims=("row", "sample", "col")))


def test_four_d_array_is_a_bag_of_pseudo_samples_with_example_weights(rng):
    """(N, K, m, n) NumPy input = N·K samples, each with its example's weight (like a
    DataArray with an inner dim); a wrong rank still fails (see test_errors)."""
    g = rng.standard_normal((4, 3, 2, 5))
    w = rng.uniform(0.2, 1.0, 4)
    flat = g.reshape(12, 2, 5)
    np.testing.assert_allclose(
        np.asarray(SampleTarget(g, w).to_dense()),
        ref.target_matrix(flat, np.repeat(w, 3)),
        rtol=1e-12,
        atol=1e-14,
    )
    np.testing.assert_allclose(
        np.asarray(SampleTarget(g).to_dense()),
        ref.target_matrix(flat, np.full(12, 1 / 4)),
        rtol=1e-12,
        atol=1e-14,
    )
