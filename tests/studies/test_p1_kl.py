"""The P1 KL study: the test preset end to end, and each rule on synthetic Datasets."""

from __future__ import annotations

import numpy as np
import pytest

import studies.p1_kl as study
from precond_lab import claims
from precond_lab.study import FAILS, HOLDS, TestKind, by_claim


@pytest.fixture(scope="module")
def ds():
    return study.run(study.PRESETS["test"])


def _v(ds, claim):
    return by_claim(study.verdicts(ds))[claim]


def test_test_preset_end_to_end(ds, tmp_path):
    assert list(ds["estimator"].values) == list(study.ESTIMATORS)
    assert ds["score"].dims == ("target", "estimator", "metric")
    assert np.all(np.isfinite(ds["score"].sel(metric=["kl", "von_neumann"]).values))
    assert all(
        isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in ds.attrs.values()
    )
    paths = study.plot(ds, tmp_path)
    assert sorted(p.suffix for p in paths) == [".pdf"] * 3 + [".png"] * 3
    verdicts = by_claim(study.verdicts(ds))
    assert set(verdicts) == {"P1-14", "P1-21", "P1-22", "P1-12"}
    for claim, v in verdicts.items():
        assert v.verdict == HOLDS, (claim, v.evidence)
        assert v.tolerance and v.statement == claims.claim(claim).statement
    assert verdicts["P1-21"].kind == verdicts["P1-22"].kind == TestKind.DERIVED
    assert verdicts["P1-14"].kind == verdicts["P1-12"].kind == TestKind.PROXY
    assert "control 4x3 (Kronecker)" in verdicts["P1-14"].evidence


def test_p1_14_near_kronecker_fails_non_kronecker_holds(ds):
    """The control (Kronecker samples + 1e-3 noise) shows no shape gap beyond its bootstrap
    noise; the clearly non-Kronecker mixture does. Judged alone, each gives its verdict."""
    control = ds.sel(target=[t for t in ds.target.values if "control" in t])
    control = control.assign_coords(source=("target", ["mixture"]))
    assert _v(control, "P1-14").verdict == FAILS
    mixture = ds.sel(target=[t for t in ds.target.values if "mixture" in t])
    assert _v(mixture, "P1-14").verdict == HOLDS


def test_p1_14_noisy_gap_does_not_count(ds):
    fake = ds.copy(deep=True)
    fake["shape_spread"][:] = 10 * np.abs(fake["shape_corrected"]).max()
    assert _v(fake, "P1-14").verdict == FAILS


def test_p1_21_and_p1_22_fail_when_an_optimum_loses(ds):
    fake = ds.copy(deep=True)
    sq = fake["score"].sel(estimator="shampoo_squared", metric="kl_rescaled").values
    fake["score"].loc[{"estimator": "kl_optimal", "metric": "kl"}] = 2 * sq
    vn = fake["score"].sel(estimator="kl_optimal", metric="von_neumann").values
    fake["score"].loc[{"estimator": "shampoo_squared", "metric": "von_neumann"}] = 2 * vn
    fake["adafactor_numeric_error"][:] = 1e-3
    assert _v(fake, "P1-21").verdict == FAILS and _v(fake, "P1-22").verdict != HOLDS


def test_p1_12_fails_on_an_unconverged_judged_fit_not_on_undamped_ones(ds, tmp_path):
    fake = ds.copy(deep=True)
    undamped = {"ff_damping": 0.0}
    fake["ff_needs_damping"].loc[undamped] = 1
    fake["ff_converged"].loc[undamped] = -1
    assert _v(fake, "P1-12").verdict == HOLDS and "needs damping" in _v(fake, "P1-12").evidence
    fig_paths = study.plot(fake, tmp_path)  # no-fit markers drawn on the floor
    assert fig_paths
    fake["ff_converged"].loc[{"examples": "all", "ff_damping": 1e-3}] = 0
    assert _v(fake, "P1-12").verdict != HOLDS
