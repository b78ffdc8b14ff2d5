"""Figures: the right series, labels, titles and panels; saving writes PNG and PDF."""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import warnings  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from precond_lab import SampleTarget  # noqa: E402
from precond_lab import estimators as est  # noqa: E402
from precond_lab import plotting as pl  # noqa: E402
from precond_lab.evaluate import evaluate, power_iteration_curve, spectra  # noqa: E402

M, N_COLS, N = 4, 3, 24
ESTS = ["frobenius_optimal", "shampoo_squared", "shampoo", "kl_optimal"]


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    return {
        step: {
            "fc": {
                "gradients": rng.standard_normal((N, M, N_COLS)) * (1 + step),
                "ggn_mc": rng.standard_normal((N // 2, 2, M, N_COLS)),
            }
        }
        for step in (0, 5, 10)
    }


@pytest.fixture(scope="module")
def sweep(samples):
    return evaluate(samples, estimators=ESTS, damping=1e-3, progress=False)


def test_quality_over_training(sweep):
    fig = pl.plot_quality(sweep, "cosine", title="Quality")
    axes = _panels(fig)
    assert len(axes) == 2  # one panel per target
    assert [ax.get_title() for ax in axes] == [
        pl.target_label("gradients"),
        pl.target_label("ggn_mc"),
    ]
    assert pl.target_label("ggn_mc") == "Gauss–Newton (sampled labels)"
    assert all(ax.get_xlabel() == "training step" for ax in axes)
    assert axes[0].get_ylabel() == "cosine similarity"
    assert fig.get_suptitle() == "Quality"
    for ax, kind in zip(axes, ("gradients", "ggn_mc"), strict=True):
        lines = ax.get_lines()
        assert [ln.get_label() for ln in lines] == [pl.estimator_label(e) for e in ESTS]
        assert [ln.get_gid() for ln in lines] == ESTS
        for ln, name in zip(lines, ESTS, strict=True):
            want = sweep["score"].sel(layer="fc", target=kind, estimator=name, metric="cosine")
            np.testing.assert_array_equal(ln.get_xdata(), [0, 5, 10])
            np.testing.assert_allclose(ln.get_ydata(), want.values)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["Optimal Kronecker", "Shampoo²", "Shampoo", "KL-optimal (KL-Shampoo)"]
    # colours are stable per estimator and distinct
    colors = [ln.get_color() for ln in axes[0].get_lines()]
    assert len(set(colors)) == len(ESTS)
    assert colors[1] == pl.estimator_style("shampoo_squared")["color"]


def test_metric_bars(sweep):
    fig = pl.plot_metric_bars(sweep, ["kl_rescaled", "relative_frobenius_rescaled"], step=10)
    axes = _panels(fig)
    assert [ax.get_title() for ax in axes] == [
        pl.metric_label("kl_rescaled"),
        pl.metric_label("relative_frobenius_rescaled"),
    ]
    ax = axes[0]
    assert [c.get_label() for c in ax.containers] == [pl.estimator_label(e) for e in ESTS]
    for c, name in zip(ax.containers, ESTS, strict=True):
        want = sweep["score"].sel(step=10, layer="fc", estimator=name, metric="kl_rescaled")
        np.testing.assert_allclose([b.get_height() for b in c], want.values)
    ticks = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    assert ticks == [pl.target_label("gradients"), pl.target_label("ggn_mc")]
    with pytest.raises(ValueError, match="step"):
        pl.plot_metric_bars(sweep)  # three steps: which one?


def test_bars_mark_failed_cells(samples):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = evaluate(
            {"g": samples[0]["fc"]["gradients"][:1]},
            ["shampoo_squared", "kl_optimal"],
            progress=False,
        )
    fig = pl.plot_metric_bars(ds, ["cosine"])
    ax = _panels(fig)[0]
    assert np.isnan(ax.containers[1][0].get_height())
    assert "×" in [t.get_text() for t in ax.texts]


def test_power_iteration_figure(samples):
    curve = power_iteration_curve(samples[0]["fc"]["gradients"], 5)
    fig = pl.plot_power_iteration(curve)
    ax_cos, ax_err = _panels(fig)
    assert ax_cos.get_xlabel() == ax_err.get_xlabel() == "power-iteration step"
    assert ax_err.get_yscale() == "log"
    labels = [ln.get_label() for ln in ax_cos.get_lines()]
    assert labels == ["to target", "to optimum", "optimum vs target"]
    np.testing.assert_allclose(
        ax_cos.get_lines()[0].get_ydata(), curve["score"].sel(metric="cosine")
    )
    np.testing.assert_allclose(ax_cos.get_lines()[1].get_ydata(), curve["cosine_to_optimum"])
    assert "Shampoo²" in [t.get_text() for t in ax_cos.texts]


def test_spectra_figure(samples):
    sp = spectra(samples[0], ["shampoo_squared", "kl_optimal"], damping=1e-3)
    fig = pl.plot_spectra(sp, k=8)
    axes = _panels(fig)
    assert len(axes) == 2 and all(ax.get_yscale() == "log" for ax in axes)
    lines = axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["target Σ", "Shampoo²", "KL-optimal (KL-Shampoo)"]
    np.testing.assert_allclose(
        lines[0].get_ydata(), sp["eigenvalue"].sel(target="gradients", estimator="target")[:8]
    )
    assert axes[0].get_xlabel() == "eigenvalue index"
    assert axes[0].get_ylabel().startswith("eigenvalue")


def test_factor_heat_maps(samples):
    t = SampleTarget(samples[0]["fc"]["gradients"])
    opt, sh2 = est.frobenius_optimal(t), est.shampoo_squared(t)
    fig = pl.plot_factors({"frobenius_optimal": opt, "shampoo_squared": (sh2.left, sh2.right)})
    axes = _panels(fig)
    assert len(axes) == 4 and len(fig.axes) == 8  # 2×2 panels, one colour bar each
    assert axes[0].get_title().startswith("Optimal Kronecker\nL")
    assert axes[3].get_title().startswith("Shampoo²\nR")
    img = np.asarray(axes[1].get_images()[0].get_array())
    right = np.asarray(opt.right)
    np.testing.assert_allclose(img, right / np.linalg.norm(right))
    lo, hi = axes[1].get_images()[0].get_clim()
    assert lo == -hi  # diverging map centred at zero
    with pytest.raises(TypeError):
        pl.plot_factors({"x": 3})


def test_batch_size_figure(samples):
    ests = ["shampoo_squared@gradients", "shampoo_squared@ggn_mc"]
    ds = evaluate(samples[0], ests, targets=["ggn_mc"], batch_sizes=[1, 2, 4], progress=False)
    fig = pl.plot_batch_size(ds)
    (ax,) = _panels(fig)
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels == ["Shampoo² — real labels", "Shampoo² — sampled labels"]
    assert [ln.get_linestyle() for ln in ax.get_lines()] == ["--", ":"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), [1, 2, 4])
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "batch size B"
    with pytest.raises(ValueError, match="batch_size"):
        pl.plot_batch_size(ds.isel(batch_size=0, drop=True))


def test_save_writes_png_and_pdf(sweep, tmp_path):
    before = dict(matplotlib.rcParams)
    fig = pl.plot_quality(sweep)
    paths = pl.save(fig, tmp_path / "sub" / "quality")
    assert [p.name for p in paths] == ["quality.png", "quality.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert dict(matplotlib.rcParams) == before  # the style is a context, not a global change


def test_labels():
    assert pl.estimator_label("power_iteration(3)") == "Power iteration (3 steps)"
    assert (
        pl.estimator_label("eigencorrected(kl_optimal)")
        == "Eigen-corrected (KL-optimal (KL-Shampoo))"
    )
    assert pl.estimator_label("custom") == "custom"
    assert pl.target_label("batch_32") == "Batch gradients (B = 32)"
    assert pl.metric_label("kl") == "KL divergence"


def test_bars_draw_a_fit_that_did_not_converge_as_a_failure(sweep):
    """A not-converged fit with a finite score was drawn as a normal bar (issue 23)."""
    ds = sweep.sel(step=[10]).copy(deep=True)
    ds["status"].loc[{"target": "gradients", "estimator": "kl_optimal"}] = "not_converged"
    fig = pl.plot_metric_bars(ds, ["kl_rescaled"])
    ax = _panels(fig)[0]
    bars = {c.get_label(): list(c) for c in ax.containers}
    bad = bars[pl.estimator_label("kl_optimal")][0]  # target "gradients" comes first
    good = bars[pl.estimator_label("kl_optimal")][1]
    assert bad.get_hatch() == "////" and good.get_hatch() is None
    assert bad.get_facecolor()[3] < 0.5 and good.get_facecolor()[3] == 1.0
    assert np.isfinite(bad.get_height())  # the number is still shown, marked as a failure
    assert "n.c." in [t.get_text() for t in ax.texts]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("did not succeed" in lab for lab in labels)
    # all fits ok: nothing hatched, no extra legend entry
    fig = pl.plot_metric_bars(sweep, ["kl_rescaled"], step=10)
    assert all(b.get_hatch() is None for c in _panels(fig)[0].containers for b in c)
    assert not any("did not succeed" in t.get_text() for t in fig.legends[0].get_texts())


def test_estimator_styles_are_distinct():
    """A user estimator took Shampoo²'s colour; kfac(expand)/kfac(reduce) shared one, as
    did eigencorrected and bregman_optimal (colour and marker)."""
    builtin = [f"{n}{e.example_args or ''}" for n, e in est.ESTIMATORS.items()]
    styles = {n: pl.estimator_style(n) for n in builtin if n.split("(")[0] != "power_iteration"}
    styles["kfac(reduce)"] = pl.estimator_style("kfac(reduce)")
    assert pl.estimator_style("kfac(expand)") == pl.estimator_style("kfac")  # the default
    pairs = {(s["color"], s["marker"]) for s in styles.values()}
    assert len(pairs) == len(styles), styles
    assert styles["kfac(reduce)"]["color"] != pl.estimator_style("kfac(expand)")["color"]
    taken = {s["color"] for s in styles.values()}
    users = [pl.estimator_style(f"user_{i}", i)["color"] for i in range(4)]
    assert not set(users) & taken and len(set(users)) == 4
