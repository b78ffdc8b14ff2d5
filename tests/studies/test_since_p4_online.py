"""The since-P4 online study (P7-55, P8-60): test preset end to end (netCDF round trip,
verdicts from the reloaded Dataset), the verdict rules on hand-made inputs, and its scores
against dense float64 definitions."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import xarray as xr

import studies.since_p4_online as study
from precond_lab import claims
from precond_lab.study import FAILS, HOLDS, PARTIAL, by_claim

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module")
def ds():
    return study.run(study.PRESETS["test"])


def test_test_preset_end_to_end(ds, tmp_path):
    path = tmp_path / "since_p4_online.nc"
    ds.to_netcdf(path)
    with xr.open_dataset(path) as saved:
        back = saved.load()
    got = study.verdicts(ds)
    assert got == study.verdicts(back)
    assert {v.claim for v in got} == {"P7-55", "P8-60"}
    assert all(np.isfinite(ds[k]).all() for k in ds.data_vars)
    assert {p.stem for p in study.plot(back, tmp_path)} == {f"{study.NAME}_purifying"}


def test_the_claims_name_this_study_and_need_nothing():
    for cid in ("P7-55", "P8-60"):
        c = claims.claim(cid)
        assert c.studies == (study.NAME,) and not c.needs


def _set(ds, name, values):
    out = ds.copy(deep=True)
    out[name] = (ds[name].dims, np.asarray(values, ds[name].dtype))
    return out


def test_verdict_rules_follow_the_numbers(ds):
    def verdict(d, claim):
        return by_claim(study.verdicts(d))[claim].verdict

    pur = ds["purifying_diag_kl"]
    assert verdict(_set(ds, "shampoo_diag_kl", 3 * pur.min("frequency")), "P7-55") == HOLDS
    assert verdict(_set(ds, "shampoo_diag_kl", 1 * pur.min("frequency")), "P7-55") == FAILS
    score = ds["score"].values.copy()
    score[:, 0, :] = 0.5 * score[:, 1:, :].min(axis=1)  # DyKAF best everywhere
    assert verdict(_set(ds, "score", score), "P8-60") == HOLDS
    score[:, 0, 1] = 2 * score[:, 1:, 1].max(axis=1)  # …but not in KL
    assert verdict(_set(ds, "score", score), "P8-60") == PARTIAL
    worst = ds["score"].values.copy()
    worst[:, 0, :] = 2 * worst[:, 1:, :].max(axis=1) + 1
    assert verdict(_set(ds, "score", worst), "P8-60") == FAILS


def test_the_kl_score_is_its_dense_definition():
    import jax
    import jax.numpy as jnp

    from precond_lab.structures import Kronecker
    from precond_lab.targets import SampleTarget

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    g = rng.standard_normal((30, 2, 3))
    target = SampleTarget(jnp.asarray(g))
    sigma = np.einsum("kia,kjb->iajb", g, g).reshape(6, 6) / 30  # row-major vec
    xa, xb = rng.standard_normal((2, 2)), rng.standard_normal((3, 3))
    approx = Kronecker(jnp.asarray(xa @ xa.T + np.eye(2)), jnp.asarray(xb @ xb.T + np.eye(3)))
    a = np.asarray(approx.to_dense())
    a = a * np.trace(sigma) / np.trace(a)
    lam, cs = 0.1, np.linspace(0.05, 5, 20001)

    def kl(c):  # KL(N(0, Σ+λI) ‖ N(0, c·Â + λI)), Â scaled to trΣ
        m = np.linalg.solve(c * a + lam * np.eye(6), sigma + lam * np.eye(6))
        return 0.5 * (np.trace(m) - 6 - np.linalg.slogdet(m)[1])

    assert abs(study._kl(target, approx, lam) - min(kl(c) for c in cs)) <= 1e-6
    undamped = study._kl(target, approx, lam, damp=False)  # min_c KL(Σ+λI ‖ c·A)
    m = np.linalg.solve(np.asarray(approx.to_dense()), sigma + lam * np.eye(6))
    c = np.trace(m) / 6
    assert abs(undamped - 0.5 * (6 - 6 - np.linalg.slogdet(m / c)[1])) <= 1e-9
