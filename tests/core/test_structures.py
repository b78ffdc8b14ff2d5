"""Structures (Kronecker, EigenKronecker, Diagonal) against explicit dense matrices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from conftest import assert_close, random_nonsymmetric, random_orthogonal, random_spd

from precond_lab import Diagonal, EigenKronecker, Kronecker
from precond_lab import reference as ref

SHAPES = [(1, 1), (1, 4), (3, 1), (2, 3), (4, 2), (5, 5)]


def _spd_structures(rng, m, n):
    """SPD structures of each kind with their explicit dense matrices."""
    left, right = random_spd(rng, m, 1.0), random_spd(rng, n, 1.0)
    qa, qb = random_orthogonal(rng, m), random_orthogonal(rng, n)
    vals = rng.uniform(0.1, 3.0, (m, n))
    return [
        (Kronecker(left, right, 0.7), 0.7 * np.kron(left, right)),
        (EigenKronecker(qa, qb, vals), np.kron(qa, qb) @ np.diag(vals.ravel()) @ np.kron(qa, qb).T),
        (Diagonal(vals), np.diag(vals.ravel())),
    ]


@pytest.mark.parametrize("m,n", SHAPES)
def test_kronecker_dense_and_matvec_row_major(m, n, rng):
    """D1: kron(L, R) vec(X) = vec(L X Rᵀ) with row-major vec, non-symmetric factors."""
    left, right = random_nonsymmetric(rng, m), random_nonsymmetric(rng, n)
    s = Kronecker(left, right, -1.3)
    dense = -1.3 * np.kron(left, right)
    assert_close(s.to_dense(), dense)
    x = rng.standard_normal((4, m, n))
    want = np.stack([(dense @ xi.reshape(-1)).reshape(m, n) for xi in x])
    assert_close(s.matvec(x), want)
    assert_close(s.matvec(x[0]), -1.3 * left @ x[0] @ right.T)
    assert s.matrix_shape == (m, n) and s.shape == (m * n, m * n)
    assert_close(s.trace(), np.trace(dense))
    assert_close(s.frobenius_norm(), np.linalg.norm(dense))


@pytest.mark.parametrize("m,n", SHAPES)
def test_eigen_forms_dense_and_matvec(m, n, rng):
    qa, qb = random_orthogonal(rng, m), random_orthogonal(rng, n)
    vals = rng.standard_normal((m, n))
    q = np.kron(qa, qb)
    for s, dense in [
        (EigenKronecker(qa, qb, vals), q @ np.diag(vals.ravel()) @ q.T),
        (Diagonal(vals), np.diag(vals.ravel())),
    ]:
        assert_close(s.to_dense(), dense)
        x = rng.standard_normal((3, m, n))
        want = np.stack([(dense @ xi.reshape(-1)).reshape(m, n) for xi in x])
        assert_close(s.matvec(x), want)
        assert_close(s.trace(), np.trace(dense))
        assert_close(s.frobenius_norm(), np.linalg.norm(dense))
        # the eigenvector of values[i, j] is qa_i ⊗ qb_j
        if isinstance(s, EigenKronecker):
            i, j = m - 1, n - 1
            vec = np.kron(qa[:, i], qb[:, j])
            assert_close(dense @ vec, vals[i, j] * vec, atol_scale=np.abs(vals).max())


@pytest.mark.parametrize("m,n", SHAPES)
def test_eigenvalues_and_logdet(m, n, rng):
    for s, dense in _spd_structures(rng, m, n):
        got = np.sort(np.asarray(s.eigenvalues()).ravel())
        assert_close(got, np.linalg.eigvalsh(dense))
        _, want = np.linalg.slogdet(dense)
        assert_close(s.logdet(), want, atol_scale=1.0)
        _, want_damped = np.linalg.slogdet(dense + 0.3 * np.eye(m * n))
        assert_close(s.logdet(damping=0.3), want_damped, atol_scale=1.0)
        e = s.eigen()
        assert_close(e.to_dense(), dense)


@pytest.mark.parametrize("p", [-1.0, -0.5, 0.5, 2.0])
@pytest.mark.parametrize("damping", [0.0, 0.25])
@pytest.mark.parametrize("m,n", [(1, 3), (2, 3), (4, 2)])
def test_power_vs_dense(p, damping, m, n, rng):
    for s, dense in _spd_structures(rng, m, n):
        x = dense + damping * np.eye(m * n)
        want = scipy.linalg.fractional_matrix_power(x, p).real
        got = s.power(p, damping)
        assert_close(got.to_dense(), want, err_msg=type(s).__name__)
        assert_close(got.to_dense(), ref.psd_power(dense, p, damping))
        # spectral functions of a Kronecker product are eigen forms, and exact
        assert isinstance(got, (EigenKronecker, Diagonal))


def test_power_of_singular_psd(rng):
    """Positive powers of a singular PSD Kronecker are fine; negative ones need damping."""
    v = rng.standard_normal((3, 1))
    s = Kronecker(v @ v.T, random_spd(rng, 2))
    dense = np.asarray(s.to_dense())
    # x ↦ x^{1/2} turns the round-off O(eps) of the zero eigenvalues into O(sqrt(eps)):
    # both sides are right to ~1e-8, so compare at 1e-7, not 1e-10.
    assert_close(s.power(0.5).to_dense(), ref.psd_power(dense, 0.5), rtol=1e-7)
    assert_close(s.power(-1.0, 0.1).to_dense(), ref.psd_power(dense, -1.0, 0.1))
    with pytest.raises(ValueError, match="damping"):
        s.power(-0.5)
    with pytest.raises(ValueError, match="damping"):
        s.logdet()


def test_function_log(rng):
    for s, dense in _spd_structures(rng, 2, 3):
        assert_close(s.function(jnp.log).to_dense(), ref.logm_psd(dense))


@pytest.mark.parametrize("signs", [(1, 1), (-1, 1), (1, -1), (-1, -1)])
def test_normalized_keeps_product(signs, rng):
    left = signs[0] * random_spd(rng, 3)
    right = signs[1] * random_spd(rng, 2)
    s = Kronecker(left, right, 2.5)
    nrm = s.normalized()
    assert_close(nrm.to_dense(), s.to_dense())
    assert_close(jnp.linalg.norm(nrm.left), 1.0)
    assert_close(jnp.linalg.norm(nrm.right), 1.0)
    assert float(jnp.trace(nrm.left)) >= 0 and float(jnp.trace(nrm.right)) >= 0
    assert_close(
        nrm.scale, 2.5 * signs[0] * signs[1] * np.linalg.norm(left) * np.linalg.norm(right)
    )
    assert_close(s.rescaled(-2.0).to_dense(), -2.0 * np.asarray(s.to_dense()))


def test_pytree_and_jit(rng):
    x = rng.standard_normal((2, 3))
    for s, dense in _spd_structures(rng, 2, 3):
        leaves, treedef = jax.tree_util.tree_flatten(s)
        s2 = jax.tree_util.tree_unflatten(treedef, leaves)
        assert_close(s2.to_dense(), dense)
        got = jax.jit(lambda st, v: st.matvec(v))(s, x)
        assert_close(got, (dense @ x.reshape(-1)).reshape(2, 3))
    assert Kronecker(np.eye(3), np.eye(2)).num_params == 9 + 4 + 1
    assert Diagonal(np.ones((3, 2))).num_params == 6


def test_float32_preserved(rng):
    left = random_spd(rng, 3).astype(np.float32)
    right = random_spd(rng, 2).astype(np.float32)
    s = Kronecker(left, right, 0.5)
    assert s.dtype == jnp.float32 and s.scale.dtype == jnp.float32
    for out in (s.to_dense(), s.matvec(np.ones((3, 2), np.float32)), s.trace(), s.logdet()):
        assert out.dtype == jnp.float32
    p = s.power(-0.5, 0.1)
    assert p.dtype == jnp.float32
    want = ref.psd_power(0.5 * np.kron(left, right).astype(np.float64), -0.5, 0.1)
    assert_close(p.to_dense(), want, rtol=1e-5)  # float32 round-off, condition ~ 10
    assert s.normalized().dtype == jnp.float32


def test_constructor_shape_errors():
    with pytest.raises(ValueError, match="left factor must be square"):
        Kronecker(np.ones((2, 3)), np.eye(2))
    with pytest.raises(ValueError, match="right factor must be square"):
        Kronecker(np.eye(2), np.ones(3))
    with pytest.raises(ValueError, match="values must have shape"):
        EigenKronecker(np.eye(2), np.eye(3), np.ones((3, 2)))
    with pytest.raises(ValueError, match="diagonal values must have shape"):
        Diagonal(np.ones(4))


def test_power_rejects_indefinite(rng):
    s = Diagonal(np.array([[1.0, -0.5]]))
    with pytest.raises(ValueError, match="not positive semidefinite"):
        s.power(0.5)
    with pytest.raises(ValueError, match="not positive semidefinite"):
        s.logdet()
