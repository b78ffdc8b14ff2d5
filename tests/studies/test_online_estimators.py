"""The KL-Shampoo online study (P1-13, P1-19, P1-20): test preset end to end, verdict logic."""

from __future__ import annotations

import numpy as np
import pytest

import studies.online_estimators as study
from precond_lab.study import FAILS, HOLDS, PARTIAL, by_claim


@pytest.fixture(scope="module")
def ds():
    return study.run(study.PRESETS["test"])


def test_test_preset_end_to_end(ds, tmp_path):
    for v in ds.attrs.values():
        assert isinstance(v, (str, int, float)) and not isinstance(v, bool)
    assert list(ds["variant"].values) == list(study.VARIANTS)
    assert ds["kl_gap"].dims == ("layer", "seed", "step", "variant")
    assert np.all(np.isfinite(ds["kl_gap"].values))
    assert np.all(np.isfinite(ds["direction_cosine"].values))
    paths = study.plot(ds, tmp_path)
    assert sorted(p.suffix for p in paths) == [".pdf"] * 2 + [".png"] * 2
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    verdicts = by_claim(study.verdicts(ds))
    assert set(verdicts) == {"P1-13", "P1-19", "P1-20"}
    for v in verdicts.values():
        assert v.verdict in (HOLDS, FAILS, PARTIAL) and v.tolerance and v.evidence
    # the EMA approaches the batch KL optimum on the test stream too
    assert verdicts["P1-13"].verdict in (HOLDS, PARTIAL)


def _gap(ds, variant, values):
    out = ds["kl_gap"].copy()
    out.loc[{"variant": variant}] = np.broadcast_to(
        values[None, None, :], out.loc[{"variant": variant}].shape
    )
    return out


def test_p1_13_verdict_logic(ds):
    n = ds.sizes["step"]
    opt = float(ds["kl_optimal_divergence"][0])
    good = ds.copy(deep=True)
    good["kl_gap"] = _gap(good, "kl_shampoo", opt * np.geomspace(1.0, 1e-3, n))
    assert by_claim(study.verdicts(good))["P1-13"].verdict == HOLDS
    bad = ds.copy(deep=True)
    bad["kl_gap"] = _gap(bad, "kl_shampoo", opt * np.linspace(0.1, 1.0, n))
    assert by_claim(study.verdicts(bad))["P1-13"].verdict == FAILS


def test_p1_19_and_p1_20_verdict_logic(ds):
    n = ds.sizes["step"]
    opt = float(ds["kl_optimal_divergence"][0])
    good = ds.copy(deep=True)
    good["kl_gap"] = _gap(good, "kl_shampoo", np.full(n, 0.01 * opt))
    good["kl_gap"] = _gap(good, "kl_shampoo_eigh", np.full(n, 0.01 * opt))
    good["kl_gap"] = _gap(good, "kl_shampoo_instant", np.full(n, 0.5 * opt))
    dc = good["direction_cosine"]
    dc.loc[{"variant": ["kl_shampoo", "kl_shampoo_eigh"]}] = 0.9
    dc.loc[{"variant": "kl_shampoo_instant"}] = 0.5
    good["eigh_seconds"][:] = 1.0
    good["qr_refresh_seconds"][:] = 0.1
    v = by_claim(study.verdicts(good))
    assert v["P1-19"].verdict == HOLDS and v["P1-20"].verdict == HOLDS
    bad = good.copy(deep=True)
    bad["kl_gap"] = _gap(bad, "kl_shampoo_instant", np.full(n, 0.0))
    bad["direction_cosine"].loc[{"variant": "kl_shampoo_instant"}] = 0.95
    bad["qr_refresh_seconds"][:] = 2.0
    bad["kl_gap"] = _gap(bad, "kl_shampoo", np.full(n, 0.5 * opt))
    v = by_claim(study.verdicts(bad))
    assert v["P1-19"].verdict == FAILS and v["P1-20"].verdict == FAILS
