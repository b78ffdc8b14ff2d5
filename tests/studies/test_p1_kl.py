"""The P1 KL study: the test preset end to end, and its verdict logic."""

from __future__ import annotations

import numpy as np
import pytest

import studies.p1_kl as study
from precond_lab.study import FAILS, HOLDS, by_claim


@pytest.fixture(scope="module")
def ds():
    return study.run(study.PRESETS["test"])


def test_test_preset_end_to_end(ds, tmp_path):
    assert list(ds["estimator"].values) == list(study.ESTIMATORS)
    assert ds["score"].dims == ("target", "estimator", "metric")
    assert np.all(np.isfinite(ds["score"].sel(metric=["kl", "von_neumann"]).values))
    for v in ds.attrs.values():
        assert isinstance(v, (str, int, float)) and not isinstance(v, bool)
    paths = study.plot(ds, tmp_path)
    assert sorted(p.suffix for p in paths) == [".pdf"] * 3 + [".png"] * 3
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    figs = study._figures(ds)
    kl_ax, share_ax = figs["p1_14_kl_gap"].axes[:2]
    assert len(kl_ax.containers) == 4  # mis-scaled, rescaled, Frobenius-opt, KL-opt
    assert len(share_ax.containers) == 2  # scale part, shape part
    assert len([a for a in figs["p1_21_22_divergences"].axes if a.get_title()]) == 3
    assert len(figs["p1_12_flipflop"].axes[0].lines) == ds.sizes["target"]
    verdicts = by_claim(study.verdicts(ds))
    assert set(verdicts) == {"P1-14", "P1-21", "P1-22", "P1-12"}
    for claim, v in verdicts.items():
        assert v.verdict == HOLDS, (claim, v.evidence)
        assert v.tolerance
    assert "toy" in verdicts["P1-14"].evidence and "6.25" in verdicts["P1-14"].evidence


def test_toy_ordering(ds):
    """Our toy reproduces theory.md A.8's ordering: mis-scaled ≫ rescaled > KL optimum."""
    toy = ds["score"].sel(target=ds["target"].values[0])
    mis = float(toy.sel(estimator="shampoo_product", metric="kl"))
    resc = float(toy.sel(estimator="shampoo_product", metric="kl_rescaled"))
    opt = float(toy.sel(estimator="kl_optimal", metric="kl"))
    assert mis > 10 * resc and resc > opt > 0


def test_no_shape_gap_means_the_limitation_does_not_hold(ds):
    fake = ds.copy(deep=True)
    opt = fake["score"].sel(estimator="kl_optimal", metric="kl").values
    fake["score"].loc[{"estimator": "shampoo_product", "metric": "kl_rescaled"}] = opt
    assert by_claim(study.verdicts(fake))["P1-14"].verdict == FAILS


def test_exact_kronecker_target_has_no_shape_gap(monkeypatch):
    """Σ = A⊗B exactly (no damping): Shampoo's product is KL-optimal after rescaling."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 4))
    a = a @ a.T + np.eye(4)
    b = rng.standard_normal((3, 3))
    b = b @ b.T + np.eye(3)
    ra, rb = np.linalg.cholesky(a), np.linalg.cholesky(b)
    g = np.stack([np.sqrt(12) * np.outer(ra[:, i], rb[:, j]) for i in range(4) for j in range(3)])
    monkeypatch.setattr(study, "_targets", lambda config: iter([("kron", "random", g, None)]))
    out = study.run(study.PRESETS["test"], damping=0.0, flipflop_dampings=(1e-3,))
    sc = out["score"].isel(target=0)
    assert float(sc.sel(estimator="kl_optimal", metric="kl")) < 1e-10
    assert float(sc.sel(estimator="shampoo_product", metric="kl_rescaled")) < 1e-10
    assert by_claim(study.verdicts(out))["P1-14"].verdict == FAILS


def test_broken_optimality_is_reported(ds):
    fake = ds.copy(deep=True)
    t0 = fake["target"].values[0]
    kl_sh2 = float(fake["score"].sel(target=t0, estimator="shampoo_squared", metric="kl_rescaled"))
    fake["score"].loc[{"target": t0, "estimator": "kl_optimal", "metric": "kl"}] = 2 * kl_sh2
    fake["adafactor_numeric_error"].loc[{"target": t0}] = 1e-3
    v = by_claim(study.verdicts(fake))
    assert v["P1-21"].verdict != HOLDS and "1/2" in v["P1-21"].evidence
    assert v["P1-22"].verdict != HOLDS


def test_unconverged_damped_fit_fails_p1_12(ds):
    fake = ds.copy(deep=True)
    damped = np.flatnonzero(fake["ff_damping_rel"].values[0] > 0)[0]
    fake["ff_converged"][0, damped] = 0
    assert by_claim(study.verdicts(fake))["P1-12"].verdict != HOLDS
