"""The P4 trace-power Bregman study: test preset end to end, figures, and verdict logic."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import studies.p4_bregman as study
from precond_lab import estimators as est
from precond_lab.study import FAILS, HOLDS, PARTIAL, TestKind, by_claim

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module")
def ds():
    return study.run(study.PRESETS["test"])


def test_test_preset_end_to_end(ds, tmp_path):
    for v in ds.attrs.values():
        assert isinstance(v, (str, int, float)) and not isinstance(v, bool)
    assert list(ds["q"].values) == list(study.QS)
    assert ds["mc_error"].dims == ("decay", "q", "mc_samples")
    assert ds["heldout_scale_error"].dims == ("checkpoint", "projection", "source", "direction")
    assert ds["gain_error_large"].dims == ("checkpoint", "projection", "q", "direction")
    for name in ("gain_error_few", "recovery_error_few", "gain_error_ema", "recovery_error_ema"):
        assert np.all(np.isfinite(ds[name].values)) and float(ds[name].min()) >= 0, name
    # exact parts are exact
    assert float(ds["stationarity_residual"].max()) < 1e-9
    assert float(ds["special_case_difference"].max()) < 1e-10
    # the overlap of all directions is complete: O(d) = 1 wherever the rank is full
    ov = ds["subspace_overlap"].isel(k=-1)
    assert np.all(np.isnan(ov) | (np.abs(ov - 1) < 1e-8))
    paths = study.plot(ds, tmp_path)
    stems = {p.stem for p in paths}
    assert {
        f"{study.NAME}_{s}" for s in ("factor_error", "heldout_scale", "fits", "tables")
    } <= stems
    v = by_claim(study.verdicts(ds))
    assert set(v) == {"P4-33", "P4-34", "P4-35", "P4-36", "P4-37", "P4-38"}
    assert v["P4-33"].verdict == HOLDS
    assert v["P4-33"].kind == TestKind.PAPER and v["P4-36"].kind == TestKind.PROXY
    assert "GPT-2" in v["P4-37"].setting  # the paper's setting is stated next to ours
    assert all(x.verdict in (HOLDS, PARTIAL, FAILS) for x in v.values())


def test_closed_form_penalties_match_the_divergence():
    rng = np.random.default_rng(0)
    lam, r = 10.0 ** rng.uniform(-1, 1, 5), 10.0 ** rng.uniform(-1, 1, 5)
    from precond_lab import reference as ref

    for q in study.QS:
        want = [ref.bregman_divergence([[x]], [[x * y]], q) for x, y in zip(lam, r, strict=True)]
        np.testing.assert_allclose(study.closed_form_penalty(q, lam, r), want, rtol=1e-10)


def test_kron_relative_error_matches_dense():
    rng = np.random.default_rng(1)
    a, b = (est.bregman_optimal(rng.standard_normal((30, 3, 4)), 0.5) for _ in range(2))
    ra = np.asarray(b.to_dense())
    w, v = np.linalg.eigh(ra)
    inv_root = (v / np.sqrt(w)) @ v.T
    dense = inv_root @ np.asarray(a.to_dense()) @ inv_root - np.eye(12)
    assert study.kron_relative_error(a, b) == pytest.approx(np.sum(dense**2) / 12, rel=1e-10)
    assert study.kron_relative_error(b, b) == pytest.approx(0.0, abs=1e-12)


def test_verdicts_follow_the_numbers(ds):
    # P4-35 fails when the Monte-Carlo mean is moved far from the prediction
    bad = ds.copy()
    bad["mc_error"] = ds["mc_error"] * 1.5
    assert by_claim(study.verdicts(bad))["P4-35"].verdict != HOLDS
    # P4-37: make F the best everywhere → does not hold
    flip = ds.copy()
    for name in ("gain_error_large", "gain_error_few", "gain_error_ema"):
        x = flip[name].copy()
        x.loc[dict(q=2.0)] = 0.0
        x.loc[dict(q=0.5)] = 5.0
        x.loc[dict(q=0.0)] = 9.0
        flip[name] = x
    assert by_claim(study.verdicts(flip))["P4-37"].verdict == FAILS
    # ... and KL then SQ everywhere → holds
    good = ds.copy()
    for name in ("gain_error_large", "gain_error_few", "gain_error_ema"):
        x = good[name].copy()
        for q, val in zip(study.QS, (4.0, 3.0, 2.0, 1.0), strict=True):
            x.loc[dict(q=q)] = val
        good[name] = x
    assert by_claim(study.verdicts(good))["P4-37"].verdict == HOLDS
    # P4-36 does not hold when the tail is not under-estimated
    flat = ds.copy()
    flat["heldout_scale_error"] = ds["heldout_scale_error"] * 0.0
    assert by_claim(study.verdicts(flat))["P4-36"].verdict == FAILS


def test_presets_are_configs():
    assert set(study.PRESETS) == {"test", "quick", "full"}
    for cfg in study.PRESETS.values():
        assert isinstance(cfg, study.Config) and dataclasses.is_dataclass(cfg)
    quick = study.PRESETS["quick"].real
    assert quick.per_fold * quick.folds * quick.batch == quick.capture_kwargs()["num_samples"]
