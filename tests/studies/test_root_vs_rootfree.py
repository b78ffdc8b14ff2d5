"""The root vs root-free study (P2-27..P2-29): test preset end to end, and verdict logic."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.container import BarContainer

import studies.root_vs_rootfree as study
from precond_lab import claims
from precond_lab.study import (
    FAILS,
    HOLDS,
    PARTIAL,
    TestKind,
    by_claim,
)


@pytest.fixture(scope="module")
def ds():
    return study.run(study.PRESETS["test"])


def test_test_preset_end_to_end(ds, tmp_path):
    for v in ds.attrs.values():
        assert isinstance(v, (str, int, float)) and not isinstance(v, bool)
    assert ds["direction_cosine"].dims == (
        "layer",
        "estimator",
        "approx_power",
        "exact_power",
        "batch",
    )
    assert ds["step_scale"].sizes["seed"] == len(study.PRESETS["test"].stream_seeds)
    assert np.all(np.isfinite(ds["direction_cosine"].values))
    assert np.all(np.isfinite(ds["step_scale"].isel(layer=0).values))
    paths = study.plot(ds, tmp_path)
    assert sorted(p.suffix for p in paths) == [".pdf"] * 2 + [".png"] * 2
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    verdicts = by_claim(study.verdicts(ds))
    assert set(verdicts) == {"P2-27", "P2-28", "P2-29"}
    for claim, v in verdicts.items():
        assert v.paper == study.PAPER and v.tolerance and v.evidence
        assert v.statement == claims.claim(claim).statement
        assert v.kind is not None
    for claim in ("P2-27", "P2-28", "P2-29"):
        assert verdicts[claim].kind == TestKind.PROXY and verdicts[claim].setting
        assert verdicts[claim].verdict in (HOLDS, FAILS, PARTIAL)
    assert "Gauss–Newton" in verdicts["P2-28"].evidence
    # loss scaling with relative damping is exact (library check: tests/core/test_p2_directions)
    np.testing.assert_allclose(ds["scaling_ratio"], ds["scaling_predicted"], rtol=1e-2)


def test_p2_27_verdict_logic(ds):
    good = ds.copy(deep=True)
    bs = good["batch_size"].values.astype(float)
    ss = good["step_scale"]
    ss.loc[{"b_scaling": "with_B"}] = 1.0
    ss.loc[{"b_scaling": "without_B"}] = np.broadcast_to(
        bs, ss.loc[{"b_scaling": "without_B"}].shape
    )
    steps = good.sizes["init_step"]
    good["init_step_norm"].loc[{"s0": 0.0}] = np.r_[100.0, np.ones(steps - 1)]
    good["init_step_norm"].loc[{"s0": 1.0}] = np.linspace(0.01, 1.0, steps)
    assert by_claim(study.verdicts(good))["P2-27"].verdict == HOLDS
    bad = good.copy(deep=True)
    bad["step_scale"].loc[{"b_scaling": "with_B"}] = np.broadcast_to(
        bs, bad["step_scale"].loc[{"b_scaling": "with_B"}].shape
    )
    bad["init_step_norm"].loc[{"s0": 1.0}] = np.r_[100.0, np.ones(steps - 1)]
    assert by_claim(study.verdicts(bad))["P2-27"].verdict == FAILS


def test_p2_28_verdict_logic(ds):
    good = ds.copy(deep=True)
    c = good["direction_cosine"]
    c.loc[{"approx_power": 1.0, "exact_power": 1.0}] = 0.9
    c.loc[{"approx_power": 0.5, "exact_power": 1.0}] = 0.5
    assert by_claim(study.verdicts(good))["P2-28"].verdict == HOLDS
    bad = good.copy(deep=True)
    bad["direction_cosine"].loc[{"approx_power": 1.0, "exact_power": 1.0}] = 0.1
    assert by_claim(study.verdicts(bad))["P2-28"].verdict == FAILS
    # the loss-scaling response is information, not part of the verdict
    off = good.copy(deep=True)
    off["scaling_ratio"][:] = 2 * good["scaling_predicted"].values
    assert by_claim(study.verdicts(off))["P2-28"].verdict == HOLDS


def test_p2_29_verdict_logic(ds):
    good = ds.copy(deep=True)
    good["kfac_if_cosine"][:] = 0.999
    v = by_claim(study.verdicts(good))["P2-29"]
    assert v.verdict == PARTIAL, v.evidence  # a fixed-point check only: never more than partial
    bad = ds.copy(deep=True)
    bad["kfac_if_cosine"][:] = 0.9
    assert by_claim(study.verdicts(bad))["P2-29"].verdict == FAILS


def test_figures_show_spread_and_missing_cells(ds):
    figs = study._figures(ds)
    directions = figs["root_vs_rootfree_directions"].axes[0]
    bars = [c for c in directions.containers if isinstance(c, BarContainer)]
    assert len(bars) == ds.sizes["estimator"] and all(c.errorbar for c in bars)
    assert f"{ds.sizes['batch']} batches" in directions.get_title()
    batch = figs["root_vs_rootfree_batch_init"].axes[0]
    assert len(batch.collections) == 4  # one seed band per (label, scaling) curve
    assert f"{ds.sizes['seed']} seeds" in batch.get_title()
