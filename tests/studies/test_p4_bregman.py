"""The P4 trace-power Bregman study: test preset end to end, figures, and every rule's logic
on synthetic Datasets (a case that holds and one that does not)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr

import studies.p4_bregman as study
from precond_lab.study import FAILS, HOLDS, INCONCLUSIVE, PARTIAL, TestKind, by_claim

QS = list(study.QS)
CELLS = {"checkpoint": [1, 2], "projection": ["a", "b"]}


def _rule(claim):
    return next(r for r in study.RULES if r.claim == claim)


def _verdict(claim, ds):
    return _rule(claim).row(ds).verdict


@pytest.fixture(scope="module")
def ds():
    return study.run(study.PRESETS["test"])


def test_test_preset_end_to_end(ds, tmp_path):
    for v in ds.attrs.values():
        assert isinstance(v, (str, int, float)) and not isinstance(v, bool)
    assert ds["mc_error"].dims == ("decay", "q", "mc_samples")
    assert ds["mix_error"].dims == ("q", "mix_samples", "mix_permutation")
    assert ds["heldout_scale_error"].dims == ("checkpoint", "projection", "source", "direction")
    assert ds["crossfit_scale_error"].dims == ds["heldout_scale_error"].dims
    assert ds["gain_error_large"].dims == ("checkpoint", "projection", "q", "direction")
    assert ds["ema_error"].dims == ("checkpoint", "projection", "q", "metric", "ema_repeat")
    for name in ("few_error", "ema_error"):
        assert np.all(np.isfinite(ds[name].values)) and float(ds[name].min()) >= 0, name
    assert float(ds["stationarity_check"].max()) < 1e-9
    assert float(ds["special_check"].max()) < 1e-10
    ov = ds["subspace_overlap"].isel(direction=-1)  # all directions: O(d) = 1 at full rank
    assert np.all(np.isnan(ov) | (np.abs(ov - 1) < 1e-8))
    stems = {p.stem for p in study.plot(ds, tmp_path)}
    assert {f"{study.NAME}_{s}" for s in ("factor_error", "heldout_scale", "fits")} <= stems
    v = by_claim(study.verdicts(ds))
    assert set(v) == {f"P4-{k}" for k in range(33, 39)}
    assert v["P4-33"].verdict == HOLDS and v["P4-33"].kind == TestKind.PAPER
    assert v["P4-34"].kind == TestKind.PROXY and "half proxy" in v["P4-34"].setting
    assert "GPT-2" in v["P4-37"].setting and "undamped" in v["P4-37"].setting
    assert "Eq. 18" in v["P4-35"].setting
    assert all(x.verdict in (HOLDS, PARTIAL, FAILS, INCONCLUSIVE) for x in v.values())


def _identities(over_under=(4.0, 1.6, 1.0, 0.6)):
    return {
        "scalar_identity": ("q", np.full(4, 1e-12)),
        "homogeneity_identity": ("q", np.full(4, 1e-15)),
        "misalignment_identity": ("q", np.full(4, 0.5)),
        "over_under_identity": ("q", np.asarray(over_under)),
    }


def _p34(tails, o1, ok):
    d = 8
    spec = np.zeros((2, 2, 4, d))
    spec[..., d // 2 :] = np.asarray(tails)[:, None]
    ov = np.ones((2, 2, 4, d))
    ov[..., 0], ov[..., d // 4 - 1] = o1, ok
    dims = (*CELLS, "q", "direction")
    return xr.Dataset(
        {**_identities(), "spectrum_log_ratio": (dims, spec), "subspace_overlap": (dims, ov)},
        coords={**CELLS, "q": QS, "direction": np.arange(d)},
    )


def test_p4_34_exact_and_real_halves():
    # tails ordered KL ≥ SQ ≥ VN ≥ F, F best leading overlap, KL best O(d/4)
    good = _p34([-0.2, 0.0, 0.1, 0.3], [0.9, 0.8, 0.7, 0.6], [0.5, 0.6, 0.7, 0.8])
    assert _verdict("P4-34", good) == HOLDS
    bad_real = _p34([0.3, 0.1, 0.0, -0.2], [0.6, 0.7, 0.8, 0.9], [0.5, 0.6, 0.7, 0.8])
    assert _verdict("P4-34", bad_real) == PARTIAL  # the exact half still holds
    bad_exact = good.assign(over_under_identity=("q", [4.0, 1.6, 1.3, 0.6]))  # SQ not symmetric
    assert _verdict("P4-34", bad_exact) == FAILS


def _p35(mix, z=1.0):
    err = np.broadcast_to(np.array([4.0, 3.0, 2.0, 1.0])[None, :, None], (2, 4, 2)) * 0.01
    return xr.Dataset(
        {
            "mc_error": (("decay", "q", "mc_samples"), err + z * 1e-3),
            "mc_predicted": (("decay", "q", "mc_samples"), err),
            "mc_error_sem": (("decay", "q", "mc_samples"), np.full((2, 4, 2), 1e-3)),
            "mix_error": (("q", "mix_samples", "mix_permutation"), np.asarray(mix)),
        },
        coords={"decay": [0.0, 1.5], "q": QS, "mc_samples": [16, 64], "mix_samples": [10, 20]},
        attrs={"config_mc_trials": 300, "config_mix_pool": 512},
    )


def test_p4_35_monte_carlo_and_joint_fits():
    ordered = np.broadcast_to(np.array([4.0, 3.0, 2.0, 1.0])[:, None, None], (4, 2, 3))
    assert _verdict("P4-35", _p35(ordered)) == HOLDS
    swapped = ordered.copy()
    swapped[3, 0] = 2.5  # KL above SQ at N = 10
    assert _verdict("P4-35", _p35(swapped)) == PARTIAL
    assert _verdict("P4-35", _p35(ordered[::-1], z=9.0)) == FAILS


def _p36(lead, tail, cf):
    d = 20
    xi = np.zeros((2, 2, 3, d))
    xi[..., :2], xi[..., 15:] = lead, tail
    dims = (*CELLS, "source", "direction")
    return xr.Dataset(
        {"heldout_scale_error": (dims, xi), "crossfit_scale_error": (dims, np.full(xi.shape, cf))},
        coords={**CELLS, "source": [0, 1, 2], "direction": np.arange(d)},
    )


def test_p4_36_median_and_cross_fit_control():
    assert _verdict("P4-36", _p36(-0.02, 0.8, -0.007)) == HOLDS
    assert _verdict("P4-36", _p36(-0.02, 0.8, 0.3)) == PARTIAL  # shift between folds
    assert _verdict("P4-36", _p36(-0.02, 0.0, 0.0)) == FAILS


def _arms(values, ema_sd=0.0, few_sd=0.0):
    """large/few/ema errors per q (F, VN, SQ, KL) with an SD over the EMA and few repeats."""
    v = np.asarray(values, float)
    large = np.broadcast_to(v[:, None], (2, 2, 4, 6))
    rep = np.array([-1.0, 1.0, -1.0, 1.0])
    few = np.broadcast_to(v[:, None, None], (2, 2, 4, 2, 4))
    ema, few = few + ema_sd * rep, few + few_sd * rep
    return xr.Dataset(
        {
            "gain_error_large": ((*CELLS, "q", "direction"), large),
            "few_error": ((*CELLS, "q", "metric", "few_repeat"), few),
            "ema_error": ((*CELLS, "q", "metric", "ema_repeat"), ema),
        },
        coords={**CELLS, "q": QS, "metric": ["gain", "recovery"], "direction": np.arange(6)},
    )


@pytest.mark.parametrize("claim", ["P4-37", "P4-38"])
def test_p4_37_38_kl_then_sq_and_the_ema_arm(claim):
    assert _verdict(claim, _arms([0.9, 0.3, 0.15, 0.1])) == HOLDS
    assert _verdict(claim, _arms([0.1, 0.3, 0.15, 0.9])) == FAILS  # F lowest
    assert _verdict(claim, _arms([0.9, 0.3, 0.1, 0.15])) == PARTIAL  # SQ then KL
    noisy = _verdict(claim, _arms([0.9, 0.3, 0.15, 0.1], ema_sd=0.2))
    assert noisy == INCONCLUSIVE  # EMA's repeat SD exceeds the gaps; the rest holds
    assert _verdict(claim, _arms([0.9, 0.3, 0.15, 0.1], few_sd=0.2)) == INCONCLUSIVE
    # a decided arm that fails still decides: F lowest in the large/few arms, noisy EMA
    assert _verdict(claim, _arms([0.1, 0.3, 0.15, 0.9], ema_sd=0.2)) == FAILS


def test_p4_33_fails_when_a_check_fails(ds):
    assert _verdict("P4-33", ds) == HOLDS
    assert _verdict("P4-33", ds.assign(perturbation_check=-ds["perturbation_check"])) == FAILS


def test_presets_are_configs():
    assert set(study.PRESETS) == {"test", "quick", "full"}
    for cfg in study.PRESETS.values():
        assert isinstance(cfg, study.Config) and dataclasses.is_dataclass(cfg)
        assert cfg.ema_blocks * cfg.ema_length <= cfg.per_fold  # disjoint EMA repeats fit
    quick = study.PRESETS["quick"]
    assert quick.ema_blocks >= 8
    assert study.capture_kwargs(quick)["num_samples"] == quick.per_fold * quick.folds * quick.batch
