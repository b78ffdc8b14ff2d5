"""Direction cosines against the damped Gauss–Newton direction, and Shampoo² with relative
damping (P2-28), against dense float64 references."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from precond_lab import reference
from precond_lab.estimators import kl_optimal, shampoo_squared
from precond_lab.metrics import direction_cosines, loss_scaling_response


@pytest.fixture(autouse=True, scope="module")
def x64():
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


M, N = 3, 4


def _samples(k, seed):
    return np.random.default_rng(seed).standard_normal((k, M, N))


def test_direction_cosines_match_dense_powers():
    g, h, grads, lam, lam_h = _samples(40, 0), _samples(30, 1), _samples(5, 2), 1e-2, 1e-3
    kl, sh2 = kl_optimal(g, damping=lam), shampoo_squared(g)
    cos = direction_cosines(h, grads, {"kl": kl, "sh2": (sh2, lam)}, damping=lam_h)
    assert cos.dims == ("estimator", "approx_power", "exact_power", "batch")
    sigma_h = reference.target_matrix(h)
    dense = {"kl": np.asarray(kl.to_dense()), "sh2": np.asarray(sh2.to_dense())}
    for name, lam_s in (("kl", 0.0), ("sh2", lam)):
        for pa in (0.5, 1.0):
            for pe in (0.5, 1.0):
                want = []
                for gv in grads.reshape(len(grads), -1):
                    d = reference.psd_power(dense[name], -pa, lam_s) @ gv
                    e = reference.psd_power(sigma_h, -pe, lam_h) @ gv
                    want.append(reference.cosine_similarity(d, e))
                got = cos.sel(estimator=name, approx_power=pa, exact_power=pe).values
                np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_shampoo_squared_relative_damping_matches_dense_and_is_scale_free():
    x = _samples(20, 3)
    eps = 1e-2
    got = np.asarray(shampoo_squared(x, relative_damping=eps).to_dense())
    sigma = reference.target_matrix(x)
    np.testing.assert_allclose(got, reference.shampoo_squared(sigma, M, N, eps), rtol=1e-10)
    np.testing.assert_allclose(
        np.asarray(shampoo_squared(x, relative_damping=0.0).to_dense()),
        reference.shampoo_squared(sigma, M, N),
        rtol=1e-10,
    )
    # homogeneous of degree 2: the loss-scaling response is exactly c^{1-2p}
    for p in (0.5, 1.0):
        r = loss_scaling_response(
            lambda s: shampoo_squared(s, relative_damping=eps), x, x.mean(0), c=10.0, p=p
        )
        np.testing.assert_allclose(r["norm_ratio"], r["predicted"], rtol=1e-9)
