"""The P4 App. D.3 gain-replacement study: test preset end to end (netCDF round trip,
verdicts from the reloaded Dataset, figure), and the verdict rules on synthetic Datasets."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import studies.p4_gains as study
from precond_lab.study import FAILS, HOLDS, INCONCLUSIVE, PARTIAL, by_claim

NAMES = ("kl", *study.SWAPS)


@pytest.fixture(scope="module")
def ds():
    return study.run(study.PRESETS["test"])


def test_test_preset_end_to_end(ds, tmp_path):
    path = tmp_path / "p4_gains.nc"
    ds.to_netcdf(path)
    with xr.open_dataset(path) as saved:
        back = saved.load()
    got, again = study.verdicts(ds), study.verdicts(back)
    assert got == again
    assert [v.claim for v in got] == ["P4-44"]
    assert got[0].kind is not None and "paper" in got[0].setting
    assert "tuned" not in got[0].evidence or "grid" in got[0].evidence
    assert set(ds["variant"].values) == set(NAMES)
    assert np.nanmax(ds["fit_error"].values) < 0.2  # warm-started fits track the library's
    assert {p.stem for p in study.plot(back, tmp_path)} == {f"{study.NAME}_final_loss"}


def _synthetic(ratios, seeds=(1, 2, 3, 4, 5), diverged=(), tuned=None):
    """A Dataset like ``run``'s: KL's final loss times ``ratios[v]`` (with seed noise)."""
    rng = np.random.default_rng(0)
    kl = 0.01 * 10.0 ** rng.normal(0, 0.2, len(seeds))
    final = np.stack(
        [kl * ratios.get(v, 1.0) * 10.0 ** rng.normal(0, 0.002, len(seeds)) for v in NAMES]
    )
    dead = np.zeros(final.shape, np.int8)
    for v in diverged:
        dead[NAMES.index(v)] = 1
        final[NAMES.index(v)] = np.nan
    data = {
        "final_loss": (("variant", "seed"), final),
        "diverged": (("variant", "seed"), dead),
        "loss_curve": (("variant", "seed", "step"), final[..., None] * [2.0, 1.0]),
        "fit_error": (("variant", "q"), np.full((len(NAMES), 3), 1e-3)),
    }
    coords = {"variant": list(NAMES), "seed": list(seeds), "step": [1, 2], "q": [0.0, 0.5, 2.0]}
    attrs = {k: v for k, v in vars(study.Config()).items() if not isinstance(v, tuple)}
    if tuned is not None:  # the same losses (log10) at one selected rate, seed 0 = selection
        lr = [1e-3, 2e-3, 4e-3]
        logs = np.log10(np.stack([kl * tuned.get(v, 1.0) for v in NAMES]))
        loss = np.repeat(np.concatenate([logs[:, :1], logs], 1)[:, None], 3, axis=1)
        data.update(
            tuned_loss=(("variant", "lr", "tuned_seed"), loss),
            tuned_selected_lr=(("variant",), np.full(len(NAMES), 2e-3)),
            tuned_interior=(("variant",), np.ones(len(NAMES), np.int8)),
        )
        coords.update(lr=lr, tuned_seed=[0, *seeds])
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _verdict(d):
    return by_claim(study.verdicts(d))["P4-44"].verdict


PAPER_LIKE = {"f_leading": 170.0, "f_tail": 4.0, "sq_leading": 1.015, "sq_tail": 1.013}


def test_verdict_holds_for_the_papers_ratios():
    assert _verdict(_synthetic(PAPER_LIKE)) == HOLDS
    # a diverged F-leading run counts as worse
    assert _verdict(_synthetic(PAPER_LIKE, diverged=("f_leading",))) == HOLDS
    assert _verdict(_synthetic(PAPER_LIKE, tuned=PAPER_LIKE)) == HOLDS


def test_verdict_does_not_hold_when_the_numbers_say_otherwise():
    # SQ's gains clearly worse and F's harmless: nothing of the claim
    against = {"f_leading": 1.0, "f_tail": 1.0, "sq_leading": 3.0, "sq_tail": 3.0}
    assert _verdict(_synthetic(against)) == FAILS
    # F-leading worse, but not much worse; SQ ties: part of it
    assert _verdict(_synthetic({**PAPER_LIKE, "f_leading": 1.5})) == PARTIAL
    # holds at the paper's η, but at tuned rates F-leading ties: an artefact of η
    tuned = {**PAPER_LIKE, "f_leading": 1.0}
    assert _verdict(_synthetic(PAPER_LIKE, tuned=tuned)) == PARTIAL
    # KL itself diverged: no decision
    assert _verdict(_synthetic(PAPER_LIKE, diverged=("kl",))) == INCONCLUSIVE
