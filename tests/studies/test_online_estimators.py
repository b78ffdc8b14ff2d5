"""The KL-Shampoo online study (P1-13, P1-19, P1-20): test preset end to end, verdict logic."""

from __future__ import annotations

import numpy as np
import pytest

import studies.online_estimators as study
from precond_lab.study import FAILS, HOLDS, INCONCLUSIVE, PARTIAL, TestKind, by_claim


@pytest.fixture(scope="module")
def ds():
    return study.run(study.PRESETS["test"])


def test_test_preset_end_to_end(ds, tmp_path):
    for v in ds.attrs.values():
        assert isinstance(v, (str, int, float)) and not isinstance(v, bool)
    assert list(ds["variant"].values) == list(study.VARIANTS)
    assert ds.attrs["preset"] == "test" and ds.attrs["config_batch"] == 8
    assert list(ds["stream"].values) == list(study.STREAMS)
    assert ds["kl_gap"].dims == ("stream", "layer", "seed", "variant", "step")
    assert np.all(np.isfinite(ds["kl_gap"].values))
    assert np.all(np.isfinite(ds["direction_cosine"].values))
    # one family: every gap is ≥ 0 (the damped KL optimum is the family's minimum)
    assert float(ds["kl_gap"].min()) >= 0.0
    # the trajectory stream walks the trajectory capture's steps in order
    traj = ds["source_step"].sel(stream="trajectory").values
    assert np.all(np.diff(traj) >= 0) and len(set(traj)) > 1
    assert set(ds["source_step"].sel(stream="stationary").values) == {
        ds.attrs["config_capture_step"]
    }
    # the timing is interleaved whole optimiser steps: ≥ 5 rounds of each optimiser
    assert ds.sizes["repeat"] >= 5 and set(ds["optimiser"].values) == {
        "kl_shampoo",
        "soap",
        "adamw",
    }
    assert np.all(ds["step_seconds"].values > 0)
    paths = study.plot(ds, tmp_path)
    assert sorted(p.suffix for p in paths) == [".pdf"] * 2 + [".png"] * 2
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    verdicts = by_claim(study.verdicts(ds))
    assert set(verdicts) == {"P1-13", "P1-19", "P1-20", "P1-41"}
    for v in verdicts.values():
        assert v.verdict in (HOLDS, FAILS, PARTIAL, INCONCLUSIVE)
        assert v.tolerance and v.evidence
    for claim in ("P1-13", "P1-19", "P1-20"):
        assert verdicts[claim].kind is TestKind.PROXY and verdicts[claim].setting
    assert verdicts["P1-41"].kind is TestKind.PAPER
    assert verdicts["P1-41"].verdict == HOLDS
    # the EMA approaches the batch KL optimum on the test stream too
    assert verdicts["P1-13"].verdict in (HOLDS, PARTIAL)


def test_figure_content(ds, monkeypatch, tmp_path):
    import precond_lab.study as core

    figs = {}
    monkeypatch.setattr(core, "save_figures", lambda f, d: figs.update(f) or [])
    study.plot(ds, tmp_path)
    fig = figs[f"{study.NAME}_kl_gap"]
    axes = fig.axes
    assert len(axes) == 4 * ds.sizes["layer"]
    labels = {ln.get_label() for ln in axes[0].get_lines() if not ln.get_label().startswith("_")}
    assert labels == {v[1] for v in study.VARIANTS.values()}
    assert all(len(ax.collections) == len(study.VARIANTS) for ax in axes)  # one band each
    assert f"n = {ds.sizes['seed']}" in fig._suptitle.get_text()
    # a gap ≤ 0 is drawn as missing, not clipped to a floor
    zero = ds.copy(deep=True)
    zero["kl_gap"][:] = 0.0
    figs.clear()
    study.plot(zero, tmp_path)
    line = figs[f"{study.NAME}_kl_gap"].axes[0].get_lines()[0]
    assert np.all(np.isnan(np.asarray(line.get_ydata(), float)))
    cost = figs[f"{study.NAME}_step_cost"].axes[0]
    assert f"{ds.sizes['repeat']} interleaved rounds" in cost.get_title()
    assert {t.get_text() for t in cost.get_legend().texts} == set(study.TIMED)


def test_p1_41_counts_come_from_the_optimisers_states(ds):
    # KL-Shampoo: factors + eigenbases, eigenvalues, momentum; SOAP: + Adam's v and its
    # scalar bias correction; grafted Shampoo: + its grafting Adam's v; KL-SOAP: + v
    for m, n in [(768, 768), (768, 3072)]:
        cell = ds.sel(memory_shape=f"{m}x{n}")
        fac, eig, mn = 2 * (m * m + n * n), m + n, m * n
        want = {"kl_shampoo": (fac + eig + mn, 0), "soap": (fac + 2 * mn + 1, mn)}
        want |= {"kl_soap": (fac + eig + 2 * mn, mn), "shampoo_grafted": (fac + 2 * mn, mn)}
        for name, (total, second) in want.items():
            sel = cell.sel(memory_estimator=name)
            assert int(sel["state_floats"]) == total and int(sel["second_moment_floats"]) == second


def test_p1_41_fails_when_kl_shampoo_keeps_a_second_moment(ds):
    bad = ds.copy(deep=True)
    bad["second_moment_floats"].loc[{"memory_estimator": "kl_shampoo"}] = 1
    assert by_claim(study.verdicts(bad))["P1-41"].verdict == FAILS


def _gap_over_steps(ds, variant, values):
    out = ds["kl_gap"].copy()
    cur = out.loc[{"variant": variant}]
    out.loc[{"variant": variant}] = np.broadcast_to(values, cur.shape)
    return out


def test_p1_13_verdict_logic(ds):
    n = ds.sizes["step"]
    opt = float(ds["kl_optimal_divergence"].max())
    good = ds.copy(deep=True)
    good["kl_gap"] = _gap_over_steps(good, "kl_shampoo", opt * np.geomspace(1.0, 1e-3, n))
    assert by_claim(study.verdicts(good))["P1-13"].verdict == HOLDS
    bad = ds.copy(deep=True)
    bad["kl_gap"] = _gap_over_steps(bad, "kl_shampoo", opt * np.linspace(0.1, 1.0, n))
    assert by_claim(study.verdicts(bad))["P1-13"].verdict == FAILS


def _cost(ds, kl_over_soap):
    """Per-round step times with KL-Shampoo at ``kl_over_soap`` × SOAP's."""
    t = ds["step_seconds"]
    t.loc[{"optimiser": "soap"}] = 1e-3
    t.loc[{"optimiser": "kl_shampoo"}] = 1e-3 * np.broadcast_to(
        kl_over_soap, t.sel(optimiser="kl_shampoo").shape
    )


def _good(ds):
    n = ds.sizes["step"]
    opt = float(ds["kl_optimal_divergence"].max())
    good = ds.copy(deep=True)
    good["kl_gap"] = _gap_over_steps(good, "kl_shampoo", np.full(n, 0.01 * opt))
    good["kl_gap"] = _gap_over_steps(good, "kl_shampoo_eigh", np.full(n, 0.01 * opt))
    good["kl_gap"] = _gap_over_steps(good, "kl_shampoo_instant", np.full(n, 0.5 * opt))
    dc = good["direction_cosine"]
    dc.loc[{"variant": ["kl_shampoo", "kl_shampoo_eigh"]}] = 0.9
    dc.loc[{"variant": "kl_shampoo_instant"}] = 0.5
    _cost(good, 1.0)
    return good, n, opt


def test_p1_19_and_p1_20_verdict_logic(ds):
    good, n, opt = _good(ds)
    v = by_claim(study.verdicts(good))
    assert v["P1-19"].verdict == HOLDS and v["P1-20"].verdict == HOLDS
    bad = good.copy(deep=True)
    bad["kl_gap"] = _gap_over_steps(bad, "kl_shampoo_instant", np.full(n, 0.0))
    bad["direction_cosine"].loc[{"variant": "kl_shampoo_instant"}] = 0.95
    _cost(bad, 3.0)  # KL-Shampoo's step 3× SOAP's
    bad["kl_gap"] = _gap_over_steps(bad, "kl_shampoo", np.full(n, 0.5 * opt))
    v = by_claim(study.verdicts(bad))
    assert v["P1-19"].verdict == FAILS and v["P1-20"].verdict == FAILS


def test_p1_19_inconclusive_when_the_timing_spread_straddles(ds):
    good, _, _ = _good(ds)
    _cost(good, np.linspace(1.0, 2.0, ds.sizes["repeat"]))  # quartiles straddle 1.5×
    assert by_claim(study.verdicts(good))["P1-19"].verdict == INCONCLUSIVE


def test_p1_20_is_decided_on_the_trajectory_stream(ds):
    good, n, opt = _good(ds)
    # EMA better only on the stationary stream: partial at most
    g = good["kl_gap"]
    g.loc[{"stream": "trajectory", "variant": "kl_shampoo_instant"}] = 0.0
    good["direction_cosine"].loc[{"stream": "trajectory", "variant": "kl_shampoo_instant"}] = 0.99
    assert by_claim(study.verdicts(good))["P1-20"].verdict == PARTIAL
