"""studies/p3_batch_labels: the "test" preset end to end, the batch statistics on known
answers, and the verdict logic on constructed Datasets."""

import numpy as np
import pytest

from precond_lab import plotting
from precond_lab.study import FAILS, HOLDS, PARTIAL, TestKind
from studies import p3_batch_labels as b


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    cache = tmp_path_factory.mktemp("p3b_cache")
    return b.run(b.PRESETS["test"], cache_dir=cache)


def test_run_dataset_layout(ds):
    dims = {"dataset", "step", "layer", "labels", "batch_size", "scheme"}
    assert set(ds["cos_shampoo2"].dims) == dims
    mc = ds["cos_shampoo2_mc"]
    assert mc.sizes["repeat"] == b.PRESETS["test"].repeats
    # the resampled scheme is the Monte-Carlo mean of the repeats
    np.testing.assert_allclose(
        ds["cos_shampoo2"].sel(scheme="resampled").values, mc.mean("repeat").values, rtol=1e-12
    )
    assert float(ds["top_draw_share"].min()) > 0
    assert list(ds["labels"].values) == ["real", "sampled"]
    assert list(ds["batch_size"].values) == [1, 3, 6]
    for key, value in ds.attrs.items():
        assert isinstance(value, (str, int, float)) and not isinstance(value, bool), key
    assert np.isfinite(ds["cos_shampoo2"]).all() and np.isfinite(ds["cos_statistic"]).all()
    # our consecutive groups are the capture's `batch` target
    assert ds.attrs["batch_target_check_max_rel_dev"] < 1e-5
    # B = 1: every scheme is the per-example statistic (no cross terms)
    one = ds["cos_statistic"].sel(batch_size=1)
    np.testing.assert_allclose(
        one.sel(scheme="groups").values, one.sel(scheme="expected").values, atol=1e-5
    )
    # Shampoo² of a statistic never beats the optimum of H_GN itself
    assert float((ds["cos_shampoo2"] - ds["ref_optimal_ggn"]).max()) < 1e-4
    # the real-label bias (B − 1) ḡḡᵀ grows with B; the sampled-label mean is small
    frac = ds["mean_gradient_fraction"]
    assert float(frac.sel(labels="sampled").max()) < float(frac.sel(labels="real").max())


def test_plot_writes_panels_and_series(ds, tmp_path, monkeypatch):
    figs = {}
    original = plotting.save

    def spy(fig, stem, *a, **k):
        figs[stem.name] = fig
        return original(fig, stem, *a, **k)

    monkeypatch.setattr(plotting, "save", spy)
    paths = b.plot(ds, tmp_path)
    names = {p.name for p in paths}
    for stem in ("shampoo2", "statistic"):
        assert f"p3_batch_labels_{stem}.png" in names and f"p3_batch_labels_{stem}.pdf" in names
    fig = figs["p3_batch_labels_shampoo2"]
    axes = [ax for ax in fig.axes if ax.axison]
    assert len(axes) == 2  # one layer × two datasets
    gids = {ln.get_gid() for ln in axes[0].get_lines()}
    assert {f"{lab}:{sc}" for lab in b.LABELS for sc in b.SCHEMES} | {"ref"} == gids
    bands = {c.get_gid() for c in axes[0].collections}
    assert bands == {f"{lab}:band" for lab in b.LABELS}  # Monte-Carlo spread per label
    assert f"n = {ds.sizes['repeat']}" in fig.get_suptitle()
    # a batch size not measured is drawn as missing and said so
    gap = ds.copy(deep=True)
    gap["cos_shampoo2"].loc[{"batch_size": 6}] = np.nan
    figs.clear()
    b.plot(gap, tmp_path)
    ax0 = [ax for ax in figs["p3_batch_labels_shampoo2"].axes if ax.axison][0]
    assert any(t.get_gid() == "missing" and "6" in t.get_text() for t in ax0.texts)
    y = ax0.get_lines()[0].get_ydata()
    assert np.isnan(np.asarray(y, float)[-1])


def test_verdicts_on_the_test_run(ds):
    out = b.verdicts(ds)
    assert [v.claim for v in out] == ["P3-7", "P3-8"]
    for v in out:
        assert v.verdict in (HOLDS, PARTIAL, FAILS)
        assert v.paper.startswith("P3") and v.evidence and v.tolerance
        assert v.kind is TestKind.PROXY and v.setting
    assert "Monte-Carlo" in out[1].evidence and "±" in out[1].evidence


def _constructed(ds, real, sampled, expected_sampled_drop=0.0):
    """``ds`` with cos(Sh²) = ``real(B)`` / ``sampled(B)`` in every cell."""
    out = ds.copy(deep=True)
    bs = out["batch_size"].values
    for i, bsz in enumerate(bs):
        for lab, fn in (("real", real), ("sampled", sampled)):
            out["cos_shampoo2"].loc[{"labels": lab, "batch_size": bsz}] = fn(i)
            out["cos_shampoo2_mc"].loc[{"labels": lab, "batch_size": bsz}] = fn(i)
        out["cos_statistic"].loc[{"labels": "sampled", "scheme": "expected", "batch_size": bsz}] = (
            0.95 - expected_sampled_drop * i
        )
    return out


def test_verdicts_hold_when_real_labels_degrade_with_batch_size(ds):
    good = _constructed(ds, real=lambda i: 0.9 - 0.15 * i, sampled=lambda i: 0.92)
    v = {x.claim: x.verdict for x in b.verdicts(good)}
    assert v == {"P3-7": HOLDS, "P3-8": HOLDS}


def test_verdicts_fail_when_labels_do_not_matter_and_sampled_is_biased(ds):
    bad = _constructed(
        ds, real=lambda i: 0.9 - 0.2 * i, sampled=lambda i: 0.9 - 0.2 * i, expected_sampled_drop=0.1
    )
    v = {x.claim: x.verdict for x in b.verdicts(bad)}
    assert v == {"P3-7": FAILS, "P3-8": FAILS}


def test_p3_8_partial_when_the_gap_is_small(ds):
    small = _constructed(ds, real=lambda i: 0.9 - 0.01 * i, sampled=lambda i: 0.9)
    v = {x.claim: x.verdict for x in b.verdicts(small)}
    assert v["P3-8"] == PARTIAL


def test_p3_8_does_not_hold_when_real_labels_are_better_beyond_the_noise(ds):
    rev = _constructed(ds, real=lambda i: 0.92, sampled=lambda i: 0.9 - 0.1 * i)
    v = {x.claim: x for x in b.verdicts(rev)}
    assert v["P3-8"].verdict == FAILS and "reversed" in v["P3-8"].evidence


def test_p3_8_needs_the_gap_to_clear_the_monte_carlo_noise(ds):
    noisy = _constructed(ds, real=lambda i: 0.9 - 0.15 * i, sampled=lambda i: 0.92)
    mc = noisy["cos_shampoo2_mc"]
    big = int(noisy["batch_size"][-1])
    spread = np.linspace(-0.6, 0.6, mc.sizes["repeat"])  # huge repeat-to-repeat noise
    sel = {"labels": "sampled", "batch_size": big}
    mc.loc[sel] = mc.loc[sel] + spread
    v = {x.claim: x.verdict for x in b.verdicts(noisy)}
    assert v["P3-8"] != HOLDS
