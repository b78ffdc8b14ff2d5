"""Every target is an ``(mn, mn)`` linear operator: ``shape`` like a structure's, factor sizes
in ``matrix_shape``, and SciPy's ``aslinearoperator(target)`` is ``Σ`` itself.

References are explicit float64 ``Σ = Σ_k w_k vec(G_k) vec(G_k)ᵀ`` built from the samples
here, not from the targets' own ``to_dense``. ``m ≠ n`` so that a transposed or ``(m, n)``
operator cannot pass.
"""

import jax
import numpy as np
import pytest
import scipy.sparse.linalg as spla
import xarray as xr

from precond_lab import estimators as est
from precond_lab import metrics as met
from precond_lab.structures import Kronecker
from precond_lab.targets import DampedTarget, DenseTarget, FactoredTarget, SampleTarget

M, N, NS, T, K = 5, 3, 7, 2, 2
LAM = 0.3


@pytest.fixture(autouse=True)
def x64():
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _sigma(g, w, center=False):
    """Explicit ``Σ_k w_k (g_k − ḡ)(g_k − ḡ)ᵀ`` of ``(S, m, n)`` samples, float64."""
    f = g.reshape(len(g), -1).astype(np.float64)
    if center:
        f = f - (w @ f) / w.sum()
    return (f * w[:, None]).T @ f


def _cases():
    """``{name: (target, dense Σ)}`` for every target class and input form."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal((NS, M, N))
    w = rng.uniform(0.5, 1.5, NS)
    uni = np.full(NS, 1.0 / NS)
    g4 = rng.standard_normal((NS, K, M, N))
    u, v = rng.standard_normal((NS, T, M)), rng.standard_normal((NS, T, N))
    gf = np.einsum("ktm,ktn->kmn", u, v)
    u1, v1 = rng.standard_normal((NS, M)), rng.standard_normal((NS, N))
    g1 = np.einsum("km,kn->kmn", u1, v1)
    da = xr.DataArray(g, dims=("sample", "row", "col"))
    dense = _sigma(g, w)
    cases = {
        "sample": (SampleTarget(g), _sigma(g, uni)),
        "sample-weighted-centered": (SampleTarget(g, w, center=True), _sigma(g, w, True)),
        "sample-chunked": (SampleTarget(g, chunk_size=2), _sigma(g, uni)),
        "sample-4d": (SampleTarget(g4), _sigma(g4.reshape(-1, M, N), np.full(NS * K, 1 / NS))),
        "sample-dataarray": (SampleTarget(da), _sigma(g, uni)),
        "factored": (FactoredTarget(u, v), _sigma(gf, uni)),
        "factored-rank1-centered": (FactoredTarget(u1, v1, center=True), _sigma(g1, uni, True)),
        "factored-dense-mode": (FactoredTarget(u, v, w, mode="dense"), _sigma(gf, w)),
        "dense": (DenseTarget(dense, (M, N)), dense),
    }
    for name in ("sample", "factored", "dense"):
        t, s = cases[name]
        cases[f"{name}-damped"] = (t.damped(LAM), s + LAM * np.eye(M * N))
    t, s = cases["sample-damped"]
    cases["damped-twice"] = (DampedTarget(t, LAM), s + LAM * np.eye(M * N))
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_shape_is_the_operator_shape(name):
    t, sigma = CASES[name]
    assert t.shape == (M * N, M * N) == t.operator_shape == sigma.shape
    assert t.matrix_shape == (M, N) and t.dim == M * N
    assert tuple(np.asarray(t.to_dense()).shape) == t.shape


@pytest.mark.parametrize("name", list(CASES))
def test_aslinearoperator_is_sigma(name):
    t, sigma = CASES[name]
    rng = np.random.default_rng(1)
    v, vk = rng.standard_normal(M * N), rng.standard_normal((M * N, 3))
    tol = 1e-10 * np.linalg.norm(sigma)
    for op in (spla.aslinearoperator(t), t.to_scipy()):
        assert op.shape == (M * N, M * N)
        assert np.linalg.norm(op @ v - sigma @ v) <= tol
        assert np.linalg.norm(op.rmatvec(v) - sigma @ v) <= tol
        assert np.linalg.norm(op.matmat(vk) - sigma @ vk) <= tol
    assert np.linalg.norm(np.asarray(t.matvec(v)) - sigma @ v) <= tol
    xs = rng.standard_normal((4, M, N))
    want = (xs.reshape(4, -1) @ sigma).reshape(xs.shape)  # Σ symmetric
    assert np.linalg.norm(np.asarray(t.matvec(xs)) - want) <= 10 * tol


def test_scipy_cg_solves_a_damped_target():
    t, sigma = CASES["sample-weighted-centered"]
    b = np.random.default_rng(2).standard_normal(M * N)
    x, info = spla.cg(spla.aslinearoperator(t.damped(LAM)), b, rtol=1e-12, atol=0.0)
    assert info == 0
    np.testing.assert_allclose((sigma + LAM * np.eye(M * N)) @ x, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["sample", "factored", "dense-damped"])
def test_estimators_fit_the_matrix_shape(name):
    """Estimators size their factors from ``matrix_shape``: ``m × m`` left, ``n × n`` right."""
    t, _ = CASES[name]
    s = est.kl_optimal(t.damped(LAM) if name != "dense-damped" else t)
    assert s.matrix_shape == (M, N) and s.shape == t.shape


def test_mismatch_error_names_the_matrix_shapes():
    t, _ = CASES["sample"]
    wrong = Kronecker(np.eye(N), np.eye(M))
    with pytest.raises(ValueError, match=r"\(3, 5\).*\(5, 3\)"):
        met.kl_divergence(t, wrong, damping=LAM)
