"""The precision harness: structure, provenance, unsupported dtypes and sane errors."""

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from precond_lab.errors import Status  # noqa: E402
from precond_lab.linalg import STATUS_CODES, dtype_support, precision_study  # noqa: E402


def test_precision_study_small(tmp_path):
    ds = precision_study(
        methods=("eigh", "newton", "if_shampoo"),
        dtypes=("float64", "float32", "bfloat16"),
        conds=(1e1, 1e8),
        dims=(8,),
        dampings=(0.0,),
        ps=(0.5, 1.0),
        repeats=2,
    )
    assert set(ds.dims) == {"method", "dtype", "cond", "dim", "damping", "p", "repeat"}

    def pick(var, method, **kw):  # .sel(method=...) is xarray's lookup keyword: use a dict
        return ds[var].sel({"method": method, **kw})

    e64 = pick("rel_error", "eigh", dtype="float64", cond=1e1)
    assert float(e64.max()) < 1e-12
    # IF-Shampoo computes only the inverse
    assert (pick("status", "if_shampoo", p=0.5) == Status.UNSUPPORTED_EXPONENT.code).all()
    if dtype_support("eigh", "bfloat16") == "unsupported":
        st = pick("status", "eigh", dtype="bfloat16", cond=1e1)
        assert (st == Status.UNSUPPORTED_DTYPE.code).all()
        up = pick("rel_error", "eigh@float32", dtype="bfloat16", cond=1e1)
        assert np.isfinite(up).all() and float(up.max()) < 0.1
    # bfloat16 cannot hold a cond-1e8 SPD matrix: reported as failure, not as a number
    assert float(pick("failure_rate", "newton", dtype="bfloat16", cond=1e8).min()) == 1.0
    # float32 newton on cond 10 is accurate and costs matmuls
    assert float(pick("rel_error", "newton", dtype="float32", cond=1e1).max()) < 1e-5
    assert float(pick("matmuls", "newton", dtype="float32", cond=1e1).min()) > 0
    for v in ds.attrs.values():
        assert isinstance(v, (str, int, float))
    ds.to_netcdf(tmp_path / "study.nc")


def test_status_codes_are_the_status_enum():
    assert STATUS_CODES == {s.code: s.value for s in Status}
    assert all(Status.from_code(c).value == v for c, v in STATUS_CODES.items())


def test_precision_on_matrices_against_the_float64_truth():
    from precond_lab.errors import Status
    from precond_lab.linalg import matrix_power, precision_on_matrices

    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 6))
    f = a @ a.T
    ds = precision_on_matrices(
        [f], methods=("eigh", "newton", "if_shampoo"), dtypes=("float32",), ps=(0.5, 1.0),
        relative_damping=1e-2,
    )  # fmt: skip
    st, err = ds["status"], ds["rel_error_rounded_input"]
    assert st.dims == ("method", "dtype", "p", "matrix")
    assert st.sel({"method": "if_shampoo", "p": 0.5}).item() == Status.UNSUPPORTED_EXPONENT.code
    # brute force: trace-1 input rounded to float32, truth by float64 eigh, λ = ε/d
    s = np.asarray(np.float32(f / np.trace(f)), np.float64)
    w, q = np.linalg.eigh(s)
    for method, p in (("eigh", 0.5), ("newton", 0.5), ("if_shampoo", 1.0)):
        truth = (q * (w + 1e-2 / 6) ** -p) @ q.T
        x, _ = matrix_power(np.float32(s), -p, 1e-2 / 6, method=method, check=False)
        want = np.linalg.norm(np.asarray(x, np.float64) - truth) / np.linalg.norm(truth)
        assert st.sel({"method": method, "p": p}).item() == Status.OK.code
        np.testing.assert_allclose(err.sel({"method": method, "p": p}).item(), want, rtol=1e-6)
        assert want < 1e-3


def test_precision_cases_stack_the_study_runs():
    from precond_lab.errors import Status
    from precond_lab.linalg import precision_cases, precision_study

    kw = dict(dtypes=("float32",), conds=(1e2, 1e4), dims=(6,), ps=(1.0,), repeats=2)
    got = precision_cases(("eigh", "eigh@float32", "if_shampoo"), damping=1e-6, **kw)
    ref = precision_study(methods=("eigh", "if_shampoo"), dampings=(1e-6,), **kw)
    assert got["status"].dims == ("method", "dtype", "p", "case") and got.sizes["case"] == 4
    assert (got["status"].sel({"method": "eigh@float32"}) == Status.NOT_APPLICABLE.code).all()
    want = ref["rel_error_rounded_input"].sel({"method": "if_shampoo", "damping": 1e-6})
    np.testing.assert_array_equal(
        got["rel_error_rounded_input"].sel({"method": "if_shampoo"}).values.ravel(),
        want.transpose("dtype", "p", "cond", "dim", "repeat").values.ravel(),
    )


def test_precision_failure_rate_counts_attempted_runs_only():
    from precond_lab.errors import Status
    from precond_lab.linalg import precision_failure_rate

    ok, nc, nspd = Status.OK.code, Status.NOT_CONVERGED.code, Status.NOT_SPD.code
    na = Status.NOT_APPLICABLE.code
    st = np.array([[ok, ok, nc, nspd], [na, na, nspd, na]])
    err = np.array([[0.01, 0.5, np.nan, np.nan], [np.nan] * 4])
    fr = precision_failure_rate(st, err, 0.1)
    np.testing.assert_array_equal(fr[:1], [2 / 3])
    assert np.isnan(fr[1])
