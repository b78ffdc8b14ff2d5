"""Matrix functions against float64 eigendecompositions on SPD matrices with known spectra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from precond_lab._validation import NonFiniteError  # noqa: E402
from precond_lab.errors import Status  # noqa: E402
from precond_lab.linalg import (  # noqa: E402
    ConvergenceError,
    NotPositiveDefiniteError,
    NotSymmetricError,
    UnsupportedDtypeError,
    apply_matrix_power,
    dtype_support,
    inverse_root,
    matrix_power,
    qr_refresh_step,
    spd_with_spectrum,
)

DIM = 24


def _case(cond, seed=0):
    s, q, lam = spd_with_spectrum(DIM, cond, np.random.default_rng(seed))
    return s, q, lam * 3.0, 3.0 * s  # scale away from 1 so normalisation is exercised


def _truth(q, lam, p, damping=0.0):
    return (q * (lam + damping) ** (-p)) @ q.T


def _rel(x, ref):
    return np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref)


CASES = [
    ("eigh", 0.5),
    ("eigh", 0.25),
    ("eigh", 1.0),
    ("cholesky", 1.0),
    ("newton", 0.25),
    ("newton", 0.5),
    ("newton", 1.0),
    ("newton_schulz", 0.5),
    ("newton_schulz", 1.0),
    ("if_shampoo", 1.0),
]


@pytest.mark.parametrize("method, p", CASES)
@pytest.mark.parametrize("cond", [1e2, 1e8])
def test_float64_accuracy(method, p, cond):
    _, q, lam, s = _case(cond)
    # the attainable residual of an iteration is ~ cond·eps: ask for what theory allows
    x, info = inverse_root(s, p, method=method, tol=max(1e-12, 10 * cond * 2.2e-16))
    assert info.converged, info
    assert info.dtype == "float64" and info.compute_dtype == "float64"
    # forward error of a backward-stable method ~ p·cond·eps
    assert _rel(x, _truth(q, lam, p)) < 10 * p * cond * 2.2e-16 + 1e-11


@pytest.mark.parametrize("method, p", CASES)
def test_float32_accuracy_and_damping(method, p):
    _, q, lam, s = _case(1e3, seed=1)
    x, info = inverse_root(s.astype(np.float32), p, 1e-2, method=method)
    assert x.dtype == jnp.float32 and info.converged
    assert _rel(x, _truth(q, lam, p, 1e-2)) < 1e-4


@pytest.mark.parametrize("method", ["newton", "newton_schulz", "if_shampoo"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_matmul_methods_run_natively_in_half_precision(method, dtype):
    _, q, lam, s = _case(1e1, seed=2)
    x, info = inverse_root(jnp.asarray(s).astype(dtype), 1.0, method=method)
    assert x.dtype == jnp.dtype(dtype) and info.compute_dtype == dtype
    tol = 0.1 if dtype == "bfloat16" else 0.02
    assert info.converged and _rel(jnp.asarray(x, jnp.float32), _truth(q, lam, 1.0)) < tol
    assert info.matmuls > 0


@pytest.mark.parametrize("method", ["eigh", "cholesky", "qr_refresh"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_factorizations_in_half_precision_are_reported_not_faked(method, dtype):
    _, q, lam, s = _case(1e1, seed=3)
    sh = jnp.asarray(s).astype(dtype)
    if dtype_support({"qr_refresh": "qr"}.get(method, method), dtype) == "native":
        pytest.skip("this backend runs the factorization natively")
    with pytest.raises(UnsupportedDtypeError, match=dtype):
        inverse_root(sh, 1.0, method=method)
    basis = np.linalg.eigh(s)[1] if method == "qr_refresh" else None
    opts = {"basis": basis} if basis is not None else {}
    x, info = inverse_root(sh, 1.0, method=method, upcast="float32", **opts)
    assert x.dtype == jnp.dtype(dtype)
    assert info.compute_dtype == "float32" and info.dtype == dtype
    assert _rel(jnp.asarray(x, jnp.float32), _truth(q, lam, 1.0)) < 0.05


def test_dtype_support_probe_matches_jax():
    assert dtype_support("matmul", "bfloat16") == "native"
    assert dtype_support("eigh", "float32") == "native"
    try:
        out = jnp.linalg.eigh(jnp.eye(2, dtype=jnp.bfloat16))[0]
        expected = "native" if out.dtype == jnp.bfloat16 else f"upcast:{out.dtype.name}"
    except Exception:
        expected = "unsupported"
    assert dtype_support("eigh", "bfloat16") == expected


def test_newton_residual_history_and_matmul_count():
    _, _, _, s = _case(1e2)
    x, info = inverse_root(s, 0.5, method="newton")
    r = info.residuals
    assert r.size >= info.iterations + 1 and r[-1] < 1e-10 and r[0] > 0.1
    # r = 2: per evaluation T² (1) + T²M (1) + XT (1)
    assert info.matmuls == 3 * r.size


def test_iterations_report_failure_instead_of_nan():
    _, q, lam, s = _case(1e12)
    x, info = inverse_root(s, 1.0, method="newton_schulz", max_iter=8, damping=0.0)
    assert not info.converged and info.status == Status.NOT_CONVERGED and info.stop == "max_iter"
    assert np.isfinite(np.asarray(x)).all()
    with pytest.raises(ConvergenceError, match="newton_schulz"):
        inverse_root(s, 1.0, method="newton_schulz", max_iter=8, strict=True)


def test_half_precision_ill_conditioned_stagnates_and_says_so():
    _, _, _, s = _case(1e3, seed=4)
    sh = jnp.asarray(s + 1e-2 * np.eye(DIM)).astype(jnp.bfloat16)
    x, info = inverse_root(sh, 1.0, method="newton", check=False)
    assert np.isfinite(np.asarray(x, np.float32)).all()
    assert info.stop in ("stagnated", "converged", "max_iter")
    assert (
        info.status
        == {
            "stagnated": Status.STAGNATED,
            "converged": Status.OK,
            "max_iter": Status.NOT_CONVERGED,
        }[info.stop]
    )


def test_if_shampoo_small_step_converges_linearly_to_inverse():
    _, q, lam, s = _case(1e1, seed=5)
    x, info = inverse_root(s, 1.0, method="if_shampoo", beta=0.3, max_iter=400, tol=1e-9)
    assert info.converged and info.iterations > 20  # linear, not quadratic
    assert _rel(x, _truth(q, lam, 1.0)) < 1e-8


def test_qr_refresh_from_exact_basis_is_exact_and_improves_warm_basis():
    s64, q, lam, s = _case(1e2, seed=6)
    x, info = inverse_root(s, 0.5, method="qr_refresh", basis=q[:, ::-1], steps=1)
    assert _rel(x, _truth(q, lam, 0.5)) < 1e-12 and info.orthogonality_loss < 1e-13
    rng = np.random.default_rng(0)
    e = rng.standard_normal((DIM, DIM))
    warm = np.linalg.eigh(s + 0.05 * (e + e.T))[1]
    errs = [
        _rel(inverse_root(s, 0.5, method="qr_refresh", basis=warm, steps=k)[0], _truth(q, lam, 0.5))
        for k in (1, 20)
    ]
    assert errs[1] < errs[0]
    qn, d = qr_refresh_step(jnp.asarray(s), jnp.asarray(q))
    np.testing.assert_allclose(np.sort(np.asarray(d)), np.sort(lam), rtol=1e-12)


def test_positive_powers_and_apply():
    _, q, lam, s = _case(1e2, seed=7)
    y, _ = matrix_power(s, 0.5, method="newton_schulz")
    assert _rel(y, (q * lam**0.5) @ q.T) < 1e-12
    v = np.random.default_rng(1).standard_normal((DIM, 2))
    for method in ("cholesky", "newton"):
        out, info = apply_matrix_power(s, v, -1.0, 1e-3, method=method)
        assert _rel(out, _truth(q, lam, 1.0, 1e-3) @ v) < 1e-10


def test_bad_inputs_named():
    _, _, _, s = _case(1e2)
    ns = s.copy()
    ns[0, 1] += 1e-3
    with pytest.raises(NotSymmetricError, match="not symmetric"):
        inverse_root(ns, 0.5)
    ind = s - 2 * np.eye(DIM) * np.abs(np.linalg.eigvalsh(s)).min() - 0.01 * np.eye(DIM)
    with pytest.raises(NotPositiveDefiniteError, match="indefinite"):
        inverse_root(ind, 0.5, method="newton")
    bad = s.copy()
    bad[2, 3] = np.nan
    with pytest.raises(NonFiniteError, match=r"NaN.*\(2, 3\)"):
        inverse_root(bad, 0.5)
    sing = np.zeros((DIM, DIM))
    with pytest.raises(NotPositiveDefiniteError, match="damping"):
        inverse_root(sing, 1.0, method="cholesky")
    with pytest.raises(ValueError, match="exponent"):
        inverse_root(s, 0.3, method="newton")
    with pytest.raises(ValueError, match="exponent"):
        inverse_root(s, 0.5, method="cholesky")
    with pytest.raises(ValueError, match="square"):
        inverse_root(np.ones((3, 4)), 0.5)
    with pytest.raises(TypeError, match="floating"):
        inverse_root(np.eye(3, dtype=np.int32), 0.5)


def test_info_status_is_the_status_enum():
    _, _, _, s = _case(1e2)
    _, direct = inverse_root(s, 0.5, method="eigh")
    assert direct.status is Status.OK and direct.stop == "direct" and direct.converged
    _, it = inverse_root(s, 0.5, method="newton")
    assert it.status is Status.OK and it.stop in ("converged", "floor") and it.converged
