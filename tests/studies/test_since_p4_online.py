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


def test_scores_match_their_dense_definitions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 30))
    sigma, a = x @ x.T / 30, np.cov(rng.standard_normal((6, 40)))
    cs = np.linspace(0.01, 10, 20001)
    frob = min(np.linalg.norm(sigma - c * a) for c in cs) / np.linalg.norm(sigma)
    assert abs(study._frob(sigma, a) - frob) <= 1e-6
    lam = 0.1
    s, ad = sigma + lam * np.eye(6), a + lam * np.trace(a) / np.trace(sigma) * np.eye(6)

    def kl(c):
        m = np.linalg.solve(c * ad, s)
        return 0.5 * (np.trace(m) - 6 - np.linalg.slogdet(m)[1])

    assert abs(study._kl(sigma, a, lam) - min(kl(c) for c in cs)) <= 1e-6
    t, v = rng.uniform(0.5, 2, 8), rng.uniform(0.5, 2, 8)
    dkl = min(0.5 * np.sum(t / (c * v) - 1 - np.log(t / (c * v))) for c in cs)
    assert abs(study._diag_kl(t, v) - dkl) <= 1e-6
