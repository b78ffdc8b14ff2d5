"""The P1 KL study: the test preset end to end, and its verdict logic."""

from __future__ import annotations

import numpy as np
import pytest

import studies.p1_kl as study
from precond_lab import claims
from precond_lab.study import FAILS, HOLDS, TestKind, by_claim


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
    assert len(kl_ax.containers) == 4  # L⊗R/(mn), L⊗R/trΣ, c*·L⊗R, KL-opt
    assert len(share_ax.containers) == 4  # scale and shape part of two versions
    div = figs["p1_21_22_divergences"]
    assert div.get_size_inches()[0] <= 7.0  # journal column width
    assert len(div.axes) == len(study.OPTIMA)
    ticks = [t.get_text() for t in div.axes[-1].get_xticklabels()]
    assert ticks == [study._label(e) for e in study.ESTIMATORS]
    assert "Shampoo²" in ticks and "Adafactor" in ticks and "shampoo_product" not in ticks
    for ax in div.axes:  # the optimum of each divergence sits on the ratio-1 line
        assert any(np.allclose(line.get_ydata(), 1.0) for line in ax.lines)
    assert len(figs["p1_12_flipflop"].axes[0].lines) == ds.sizes["target"]
    verdicts = by_claim(study.verdicts(ds))
    assert set(verdicts) == {"P1-14", "P1-21", "P1-22", "P1-12"}
    for claim, v in verdicts.items():
        assert v.verdict == HOLDS, (claim, v.evidence)
        assert v.tolerance and v.kind is not None
        assert v.statement == claims.claim(claim).statement  # from the registry
    assert verdicts["P1-21"].kind == verdicts["P1-22"].kind == TestKind.DERIVED
    assert verdicts["P1-14"].kind == verdicts["P1-12"].kind == TestKind.PROXY
    assert verdicts["P1-14"].setting and verdicts["P1-12"].setting
    ev = verdicts["P1-14"].evidence
    assert "toy" in ev and "L⊗R/(mn)" in ev and "L⊗R/trΣ" in ev and "c*·L⊗R" in ev
    assert "theory" not in ev


def test_failed_fits_are_drawn_as_missing_not_as_a_value(ds):
    fig = study._figures(ds)["p1_12_flipflop"]
    ax = fig.axes[1]
    missing = [c for c in ax.collections if "no fit" in str(c.get_label())]
    assert missing, "the undamped N=2 fit needs damping in the test preset"
    for c in missing:  # drawn in axes coordinates on a hatched floor band, not at a sweep count
        assert c.get_offset_transform() != ax.transData
        np.testing.assert_allclose(c.get_offsets()[:, 1], 0.03)
    assert any(p.get_hatch() for p in ax.patches)
    counted = [c for c in ax.collections if "no fit" not in str(c.get_label())]
    ys = np.concatenate([c.get_offsets()[:, 1] for c in counted])
    assert np.all(ys >= 1)  # every drawn sweep count is a real one


def test_undamped_failures_are_information_not_the_verdict(ds):
    fake = ds.copy(deep=True)
    undamped = fake["ff_damping_rel"] == 0
    fake["ff_needs_damping"] = fake["ff_needs_damping"].where(~undamped, 1)
    fake["ff_converged"] = fake["ff_converged"].where(~undamped, 0)
    v = by_claim(study.verdicts(fake))["P1-12"]
    assert v.verdict == HOLDS and "needs damping" in v.evidence


def test_toy_ordering(ds):
    """Our toy layer shows the ordering of the limitation: mis-scaled ≫ rescaled > KL optimum."""
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
    n_ex, lam = fake["ff_n_examples"].values[0], fake["ff_damping_rel"].values[0]
    judged = np.flatnonzero((n_ex == n_ex.max()) & np.isclose(lam, ds.attrs["damping_relative"]))
    fake["ff_converged"][0, judged[0]] = 0
    assert by_claim(study.verdicts(fake))["P1-12"].verdict != HOLDS
