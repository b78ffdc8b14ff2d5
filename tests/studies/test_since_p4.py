"""The since-P4 study: test preset end to end (netCDF round trip, verdicts from the reloaded
Dataset), the verdict rules on hand-made inputs, and the library helpers it calls against
dense float64 references."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import xarray as xr

import studies.since_p4 as study
from precond_lab import estimators as est
from precond_lab import reference as ref
from precond_lab.methods import one_gradient_shampoo, polar_factor
from precond_lab.study import FAILS, HOLDS, PARTIAL, UNTESTED_VERDICT, by_claim

jax.config.update("jax_enable_x64", True)

CLAIMS = {"P5-45", "P5-46", "P5-47", "P6-50", "P6-51", "P6-52", "P9-65", "P9-66"}


@pytest.fixture(scope="module")
def ds():
    return study.run(study.PRESETS["test"])


def test_test_preset_end_to_end(ds, tmp_path):
    path = tmp_path / "since_p4.nc"
    ds.to_netcdf(path)
    with xr.open_dataset(path) as saved:
        back = saved.load()
    got, again = study.verdicts(ds), study.verdicts(back)
    assert got == again
    assert {v.claim for v in got} == CLAIMS
    assert all(v.kind is not None for v in got)
    v = by_claim(got)
    for claim in ("P5-45", "P5-46", "P6-50", "P6-51", "P6-52"):
        assert v[claim].verdict == HOLDS, (claim, v[claim].evidence)
    assert v["P5-47"].verdict == UNTESTED_VERDICT
    assert {p.stem for p in study.plot(back, tmp_path)} == {f"{study.NAME}_limits"}


def _set(ds, name, values):
    out = ds.copy(deep=True)
    out[name] = (ds[name].dims, np.asarray(values, ds[name].dtype))
    return out


def test_verdict_rules_follow_the_numbers(ds):
    def verdict(d, claim):
        return by_claim(study.verdicts(d))[claim].verdict

    assert verdict(_set(ds, "polar_error", ds["polar_error"] + 1e-9), "P5-45") == FAILS
    bumped = ds["kl_polar_error"].values.copy()
    bumped[0, -1] = bumped[0, 0] * 2  # not decreasing
    assert verdict(_set(ds, "kl_polar_error", bumped), "P5-46") == FAILS
    assert verdict(_set(ds, "criterion_error", ds["criterion_error"] + 1e-9), "P6-50") == FAILS
    swapped = ds["psgd_distance"].values[:, ::-1]  # each whitening on the other optimum
    assert verdict(_set(ds, "psgd_distance", swapped), "P6-51") == FAILS
    probe = ds["probe"].values.copy()
    probe[0] = 2 * probe[3]  # SPlus over its bound
    assert verdict(_set(ds, "probe", probe), "P6-52") == FAILS
    # P9: spike-and-flat everywhere → holds; in one factor only → partially
    flat = _set(_set(ds, "spikes", np.ones_like(ds["spikes"])), "tail_cv", 0 * ds["tail_cv"])
    assert verdict(flat, "P9-65") == HOLDS
    cv = np.zeros(ds["tail_cv"].shape)
    cv[0, 0] = 1.0
    assert verdict(_set(flat, "tail_cv", cv), "P9-65") == PARTIAL
    small = _set(ds, "kl_excess_relative", np.zeros(ds["kl_excess_relative"].shape))
    assert verdict(small, "P9-66") == HOLDS
    big = _set(ds, "kl_excess_relative", np.ones(ds["kl_excess_relative"].shape))
    assert verdict(big, "P9-66") == FAILS


@pytest.mark.parametrize(("m", "n"), [(5, 5), (4, 7), (7, 3)])
def test_one_gradient_shampoo_is_the_svd_polar_factor(m, n):
    g = np.random.default_rng(m * n).standard_normal((m, n))
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    assert np.linalg.norm(polar_factor(g) - u @ vt) <= 1e-12 * np.sqrt(min(m, n))
    assert np.linalg.norm(one_gradient_shampoo(g) - u @ vt) <= 1e-10 * np.sqrt(min(m, n))
    rank1 = np.outer(g[:, 0], g[0])  # rank deficient: the partial isometry u₁v₁ᵀ
    want = np.outer(g[:, 0] / np.linalg.norm(g[:, 0]), g[0] / np.linalg.norm(g[0]))
    np.testing.assert_allclose(one_gradient_shampoo(rank1), want, atol=1e-12)


def test_instantaneous_kl_direction_matches_the_dense_flip_flop():
    g = np.random.default_rng(1).standard_normal((3, 4))
    d, fit = est.instantaneous_kl_direction(g, 1e-2)
    lam = 1e-2 * np.sum(g**2) / g.size
    sigma = np.outer(g.ravel(), g.ravel())
    left, right = ref.kl_flip_flop(sigma, 3, 4, damping=lam)
    want = ref.psd_power(np.kron(left, right), -0.5) @ g.ravel()
    assert np.linalg.norm(np.asarray(d).ravel() - want) <= 1e-8 * np.linalg.norm(want)
    assert fit.info.converged


def test_psgd_whitening_criterion_reference():
    rng = np.random.default_rng(2)
    c, y = rng.standard_normal((2, 4, 4))
    c, p = c @ c.T, y @ y.T + np.eye(4)
    assert ref.psgd_whitening_criterion(c, p) == pytest.approx(
        np.trace(p @ c) + np.trace(np.linalg.inv(p)), rel=1e-12
    )
