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
