"""studies/p3_quality: the "test" preset end to end, and the verdict logic on known answers."""

import numpy as np
import pytest

from precond_lab import plotting
from precond_lab.study import FAILS, HOLDS, PARTIAL, REPORTED, TestKind
from studies import p3_quality as q
from studies._setups import padded_target


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    cache = tmp_path_factory.mktemp("p3q_cache")
    return q.run(q.PRESETS["test"], cache_dir=cache)


def _kronecker_samples(m=4, n=3, seed=0):
    """Samples whose Σ is exactly A ⊗ B: G_ij = sqrt(λ_i μ_j) u_i v_jᵀ (weight 1)."""
    rng = np.random.default_rng(seed)
    xa, xb = rng.standard_normal((m, m)), rng.standard_normal((n, n))
    la, ua = np.linalg.eigh(xa @ xa.T + 0.1 * np.eye(m))
    lb, ub = np.linalg.eigh(xb @ xb.T + 0.1 * np.eye(n))
    g = np.stack(
        [np.sqrt(la[i] * lb[j]) * np.outer(ua[:, i], ub[:, j]) for i in range(m) for j in range(n)]
    )
    return g.astype(np.float32)


def test_run_dataset_layout(ds):
    assert set(ds["cosine"].dims) == {"model", "target", "layer", "step", "estimator"}
    assert list(ds["estimator"].values) == list(q.ESTIMATORS)
    assert list(ds["target"].values) == ["ggn", "adagrad"]
    assert ds.sizes["model"] == 3 and ds.sizes["step"] == 2
    for key, value in ds.attrs.items():  # netCDF-safe provenance
        assert isinstance(value, (str, int, float)) and not isinstance(value, bool), key
    c = ds["cosine"]
    # every cell present; K-FAC only for the Gauss–Newton target
    assert np.isfinite(c.sel(estimator=["frobenius_optimal", "shampoo_squared", "shampoo"])).all()
    assert np.isfinite(c.sel(target="ggn", estimator="kfac")).all()
    assert np.isnan(c.sel(target="adagrad", estimator="kfac")).all()
    # the optimum maximises the cosine over Kronecker products
    gap = c.sel(estimator="frobenius_optimal") - c.sel(estimator=["shampoo_squared", "shampoo"])
    assert float(gap.min()) > -1e-4
    # one power step from the identity is Shampoo² (up to scale: equal cosine)
    pc = ds["power_cosine"].sel(init="identity", iteration=1, step=ds["step"][-1])
    sh2 = c.sel(estimator="shampoo_squared", step=ds["step"][-1])
    np.testing.assert_allclose(pc.values, sh2.values, atol=2e-4)
    # H_Ada accumulates every mini-batch gradient up to the step (steps 0..t)
    np.testing.assert_array_equal(ds["adagrad_num_gradients"].values[:, 0, -1], 4)


def test_plot_writes_fig1_panels_and_series(ds, tmp_path, monkeypatch):
    figs = {}
    original = plotting.save

    def spy(fig, stem, *a, **k):
        figs[stem.name] = fig
        return original(fig, stem, *a, **k)

    monkeypatch.setattr(plotting, "save", spy)
    paths = q.plot(ds, tmp_path)
    names = {p.name for p in paths}
    for stem in ("fig1", "layers", "power_iteration", "gap"):
        assert f"p3_quality_{stem}.png" in names and f"p3_quality_{stem}.pdf" in names
    assert all(p.stat().st_size > 0 for p in paths)
    fig1 = figs["p3_quality_fig1"]
    axes = [ax for ax in fig1.axes if ax.get_visible()]
    assert len(axes) == 6  # rows GN/Adagrad × 3 models
    gn_series = {ln.get_gid() for ln in axes[0].get_lines()}
    ada_series = {ln.get_gid() for ln in axes[3].get_lines()}
    assert gn_series == set(q.ESTIMATORS)  # K-FAC in the Gauss–Newton row
    assert ada_series == set(q.ESTIMATORS) - {"kfac"}
    assert "Gauss–Newton" in axes[0].get_title() and "Adagrad" in axes[3].get_title()
    pi = figs["p3_quality_power_iteration"]
    gids = {ln.get_gid() for ln in pi.axes[0].get_lines()}
    assert {"identity", "random0", "random1"} <= gids
    labels = {ln.get_label() for ln in pi.axes[0].get_lines()}
    assert "from random PSD (n = 2 starts)" in labels  # how many, in the legend


def test_verdicts_on_the_test_run(ds):
    out = q.verdicts(ds)
    assert [v.claim for v in out] == ["P3-3", "P3-4", "P3-5", "P3-6", "P3-43"]
    for v in out:
        assert v.verdict in (HOLDS, PARTIAL, FAILS, REPORTED)
        assert v.paper.startswith("P3") and v.evidence and v.tolerance
        assert v.kind is TestKind.PROXY and v.setting
    v = {x.claim: x for x in out}
    assert v["P3-43"].verdict == REPORTED  # a comparison, no verdict forced
    assert "step 0 reported apart" in v["P3-3"].evidence
    assert "σ₂/σ₁" in v["P3-5"].evidence and "overlap" in v["P3-5"].evidence
    assert "weak provenance" in v["P3-6"].evidence.lower()
    ratio = ds["rearranged_sv_ratio"].sel(step=ds["step"][-1]).values
    assert np.all((ratio >= 0) & (ratio <= 1))
    assert np.isnan(ds["rearranged_sv_ratio"].sel(step=0)).all()  # only where the curves run


def test_exact_kronecker_target_makes_shampoo2_optimal():
    from precond_lab import estimators as est
    from precond_lab import sweep

    t = padded_target(g := _kronecker_samples(), np.ones(len(g), np.float32))
    sw = sweep.evaluate({"t": t}, q._SWEEP, ("cosine",), progress=False, raise_errors=True)
    c = sw["score"].sel(metric="cosine").squeeze()
    cos = {e: float(c.sel(estimator=e)) for e in q.ESTIMATORS if e != "kfac"}
    assert cos["frobenius_optimal"] == pytest.approx(1.0, abs=1e-5)
    assert cos["shampoo_squared"] == pytest.approx(1.0, abs=1e-5)
    assert cos["shampoo"] < 0.999  # ∝ Σ^{1/2}, not Σ
    curves, to_opt = sweep.power_cosines(t, 2, ["identity", "random0"])
    assert curves[0, 1] == pytest.approx(1.0, abs=1e-5)  # one step from I is exact
    assert to_opt[0, 1] == pytest.approx(1.0, abs=1e-5)
    sv = est.rearranged_singular_values(t)
    assert sv[1] / sv[0] == pytest.approx(0.0, abs=1e-5)  # R(Σ) has rank 1: σ₂/σ₁ = 0


def _constructed(ds, opt, sh2, sh, tf_gap=None):
    """A copy of ``ds`` with the given cosines in every cell (power curves consistent)."""
    out = ds.copy(deep=True)
    c = out["cosine"]
    c.loc[{"estimator": "frobenius_optimal"}] = opt
    c.loc[{"estimator": "shampoo_squared"}] = sh2
    c.loc[{"estimator": "shampoo"}] = sh
    if tf_gap is not None:
        c.loc[{"model": "transformer/stdlib-chars", "estimator": "shampoo_squared"}] = opt - tf_gap
    pc = out["power_cosine"]
    have = np.isfinite(pc.sel(init="identity", iteration=1))
    for init in out["init"].values:
        val = c.sel(estimator="shampoo_squared") - (0 if init == "identity" else 0.1)
        pc.loc[{"init": init, "iteration": 1}] = val.where(have)
    return out


def test_verdicts_hold_when_shampoo2_is_near_the_optimum(ds):
    good = _constructed(ds, opt=0.95, sh2=0.945, sh=0.85, tf_gap=0.04)
    v = {x.claim: x.verdict for x in q.verdicts(good)}
    assert v == {"P3-3": HOLDS, "P3-4": HOLDS, "P3-5": HOLDS, "P3-6": HOLDS, "P3-43": REPORTED}


def test_verdicts_fail_when_shampoo2_is_far_below_the_optimum(ds):
    bad = _constructed(ds, opt=0.95, sh2=0.6, sh=0.7)
    v = {x.claim: x.verdict for x in q.verdicts(bad)}
    assert v["P3-3"] == FAILS  # gap 0.35 everywhere
    assert v["P3-4"] == FAILS  # Shampoo beats Shampoo²
    assert v["P3-5"] in (PARTIAL, FAILS)  # 1 step from I reaches only 63 % of the optimum
    assert v["P3-6"] == FAILS  # same gap for every model: no widening


def test_p3_3_partial_when_only_some_cells_exceed_the_tolerance(ds):
    mixed = _constructed(ds, opt=0.95, sh2=0.945, sh=0.85)
    # one bad (model, step) cell in the Adagrad row: median stays small
    last = int(ds["step"][-1])
    cell = {"model": "mlp/digits", "target": "adagrad", "estimator": "shampoo_squared"}
    mixed["cosine"].loc[{**cell, "step": last}] = 0.7
    v = {x.claim: x.verdict for x in q.verdicts(mixed)}
    assert v["P3-3"] == PARTIAL


def test_p3_3_leaves_step_0_out_of_the_verdict(ds):
    good = _constructed(ds, opt=0.95, sh2=0.945, sh=0.85)
    cell = {"model": "mlp/digits", "target": "adagrad", "estimator": "shampoo_squared"}
    good["cosine"].loc[{**cell, "step": 0}] = 0.5  # the single-gradient Adagrad target
    v = {x.claim: x for x in q.verdicts(good)}
    assert v["P3-3"].verdict == HOLDS
    assert "(max 0.450)" in v["P3-3"].evidence  # reported apart


def test_p3_4_counts_exact_cells_as_ties_but_not_inexact_ones(ds):
    good = _constructed(ds, opt=0.95, sh2=0.945, sh=0.85)
    cell = {"model": "mlp/digits", "target": "adagrad", "step": 0}
    good["cosine"].loc[cell] = 1.0  # Σ exactly Kronecker: every estimator exact
    assert {x.claim: x.verdict for x in q.verdicts(good)}["P3-4"] == HOLDS
    good["cosine"].loc[cell] = 0.9  # an inexact tie is not "clearly worse"
    assert {x.claim: x.verdict for x in q.verdicts(good)}["P3-4"] == PARTIAL
