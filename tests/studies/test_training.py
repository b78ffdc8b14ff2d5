"""The training studies (train_lm, train_rootfree): test presets end to end, cache, figures,
and the verdict logic on hand-made results."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import studies._tasks as tasks
import studies.train_lm as lm
import studies.train_rootfree as rf
from precond_lab.study import FAILS, HOLDS, PARTIAL, TestKind, by_claim

VERDICTS = (HOLDS, FAILS, PARTIAL, "inconclusive")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("PRECOND_LAB_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def lm_ds(cache):
    return lm.run(lm.PRESETS["test"])


@pytest.fixture(scope="module")
def rf_ds(cache):
    return rf.run(rf.PRESETS["test"])


def _check_dataset(ds, tmp_path):
    for v in ds.attrs.values():
        assert isinstance(v, (str, int, float)) and not isinstance(v, bool)
    used = ds["used"].values.astype(bool)
    for var in ("final_loss", "trial_loss", "trial_lr", "best_lr"):
        assert np.all(np.isfinite(ds[var].values[used])), var
    assert np.all(ds["state_bytes"].values[used] > 0)
    assert np.all(ds["step_seconds"].values[used] > 0)
    # the best learning rate is the trial with the lowest final loss among those not failed
    for t in ds["task"].values:
        for m in ds["optimizer"].values[ds["used"].sel(task=t).values.astype(bool)]:
            tl = ds["trial_loss"].sel(task=t, optimizer=m).values.copy()
            tl[ds["trial_failed"].sel(task=t, optimizer=m).values.astype(bool)] = np.inf
            lr = ds["trial_lr"].sel(task=t, optimizer=m).values
            best = int(np.argmin(tl))
            assert float(ds["best_lr"].sel(task=t, optimizer=m)) == lr[best]
            want = ds["trial_loss"].sel(task=t, optimizer=m).values[best]
            assert float(ds["final_loss"].sel(task=t, optimizer=m, seed=0)) == want
    ds.to_netcdf(tmp_path / "ds.nc")
    with xr.open_dataset(tmp_path / "ds.nc") as back:
        xr.testing.assert_equal(back.load(), ds)


def test_lm_test_preset_end_to_end(lm_ds, tmp_path):
    _check_dataset(lm_ds, tmp_path)
    assert lm_ds["optimizer"].values.tolist() == list(lm.PRESETS["test"].methods)
    p = lm_ds["probe_score"]
    assert p.dims == (
        "probe_method",
        "probe_step",
        "probe_layer",
        "probe_target",
        "probe_estimator",
        "metric",
    )
    assert np.all(np.isfinite(p.sel(probe_step=6).values))
    assert np.all(p.sel(metric="cosine").values <= 1 + 1e-12)
    paths = lm.plot(lm_ds, tmp_path)
    assert sorted(p.name for p in paths if p.suffix == ".png") == [
        "train_lm_curves.png",
        "train_lm_probe.png",
        "train_lm_summary.png",
    ]
    for v in lm.verdicts(lm_ds):
        assert v.verdict in VERDICTS and v.kind is TestKind.PROXY and v.setting and v.evidence


def test_rootfree_test_preset_end_to_end(rf_ds, tmp_path):
    _check_dataset(rf_ds, tmp_path)
    assert rf_ds["task"].values.tolist() == [rf.CNN, rf.VIT, rf.LSTM]
    paths = rf.plot(rf_ds, tmp_path)
    assert len(paths) == 4 and all(p.stat().st_size > 0 for p in paths)
    got = by_claim(rf.verdicts(rf_ds))
    assert set(got) == {"P2-24", "P2-25", "P2-26", "P2-32"}
    for v in got.values():
        assert v.verdict in VERDICTS and v.kind is TestKind.PROXY and v.setting


def test_rerun_reuses_the_cached_runs(lm_ds, cache):
    files = sorted((cache / "train").glob("*.npz"))
    again = lm.run(lm.PRESETS["test"], probe_steps=())
    assert sorted((cache / "train").glob("*.npz")) == files
    np.testing.assert_array_equal(again["final_loss"].values, lm_ds["final_loss"].values)
    assert "probe_score" not in again


def test_figures_show_the_data(rf_ds):
    figs = tasks.figures(rf_ds, "x")
    curves = figs["x_curves"].axes
    for ax, task in zip(curves, rf_ds["task"].values, strict=True):
        n = int(rf_ds["used"].sel(task=task).sum())
        assert len(ax.lines) == n  # one mean curve (and one band) per method
        line = ax.lines[0]
        m = tasks._methods(rf_ds, task)[0]
        c = rf_ds["curve_loss"].sel(task=task, optimizer=m).values
        np.testing.assert_allclose(line.get_ydata(), np.nanmean(c, 0)[: len(line.get_ydata())])
    summary = figs["x_summary"].axes
    ncol = rf_ds.sizes["task"]
    bars = [p.get_height() for p in summary[0].patches]  # row 0, first task: final loss
    ms = tasks._methods(rf_ds, rf.CNN)
    want = rf_ds["final_loss"].sel(task=rf.CNN, optimizer=ms).mean("seed").values
    np.testing.assert_allclose(bars, want)
    assert len(summary) == 5 * ncol


def test_search_gives_every_method_the_same_budget():
    task = tasks.Task("t", "mlp", "digits")
    for name, m in tasks.METHODS.items():
        lrs = tasks.search_lrs(m, 5, task)
        assert len(lrs) == 5 and np.all((lrs >= m.lr[0]) & (lrs <= m.lr[1])), name
        np.testing.assert_array_equal(lrs, tasks.search_lrs(m, 5, task))
    a = tasks.search_lrs(tasks.METHODS["adamw"], 5, task)
    b = tasks.search_lrs(tasks.METHODS["kl_shampoo"], 5, task)
    assert not np.allclose(a, b)  # independent draws per method


# ----------------------------------------------------------------- verdicts on made-up data
def _fake(task_names, finals: dict, *, sd=0.01, fails=None, state=None, acc=None):
    """A study Dataset with the given per-method final losses (3 seeds, 2 trials)."""
    methods = list(finals)
    nt, nm = len(task_names), len(methods)
    noise = sd * np.array([-1.0, 0.0, 1.0])  # seed mean = the value, seed std = sd
    fl = np.array([[finals[m] + noise for m in methods]] * nt)
    fa = np.array([[(acc or {}).get(m, 0.5) + noise for m in methods]] * nt)
    f = np.array([[(fails or {}).get(m, 0) for m in methods]] * nt, np.int8)
    ds = xr.Dataset(
        {
            "used": (("task", "optimizer"), np.ones((nt, nm), np.int8)),
            "final_loss": (("task", "optimizer", "seed"), fl),
            "final_accuracy": (("task", "optimizer", "seed"), fa),
            "trial_failed": (("task", "optimizer", "trial"), np.repeat(f[..., None], 2, -1)),
            "seed_failed": (("task", "optimizer", "seed"), np.repeat(f[..., None], 3, -1)),
            "state_bytes": (
                ("task", "optimizer"),
                np.array([[(state or {}).get(m, 100) for m in methods]] * nt),
            ),
        },
        coords={"task": task_names, "optimizer": methods},
        attrs={"widths": "8", "steps": 10, "batch_size": 8, "trials": 2, "seeds": 3},
    )
    return ds


LM = dict(
    adamw=2.0,
    kl_shampoo=1.5,
    shampoo_graft=1.8,
    shampoo_nograft=3.0,
    soap=1.7,
    kl_soap=1.75,
    vn_shampoo=1.6,
    f_shampoo=1.9,
    sq_shampoo=1.55,
)
STATE = dict(kl_shampoo=100, shampoo_graft=150, soap=160)


def test_lm_verdicts_follow_the_numbers():
    good = by_claim(lm.verdicts(_fake(["w8"], LM, fails={"shampoo_nograft": 1}, state=STATE)))
    assert {k: v.verdict for k, v in good.items()} == {
        "P1-16": HOLDS,
        "P1-17": HOLDS,
        "P1-18": HOLDS,
        "P1-21-train": HOLDS,
        "P4-39": HOLDS,
    }
    flipped = {**LM, "kl_shampoo": 2.5, "sq_shampoo": 2.6, "vn_shampoo": 1.0}
    bad = by_claim(lm.verdicts(_fake(["w8"], flipped, state={**STATE, "kl_shampoo": 200})))
    assert bad["P1-16"].verdict == FAILS and bad["P1-17"].verdict == FAILS
    assert bad["P1-18"].verdict == FAILS and bad["P4-39"].verdict == FAILS
    assert bad["P1-21-train"].verdict in (FAILS, PARTIAL)
    tied = by_claim(lm.verdicts(_fake(["w8"], dict.fromkeys(LM, 2.0), state=STATE)))
    assert tied["P1-18"].verdict == "inconclusive" and tied["P4-39"].verdict == "inconclusive"
    some = {**LM, "shampoo_nograft": 2.0}
    part = by_claim(lm.verdicts(_fake(["w8"], some, fails={"shampoo_nograft": 0})))
    assert part["P1-17"].verdict == FAILS and "0/" in part["P1-17"].evidence


RF = dict(sgd=1.0, adamw=1.0, shampoo_graft=1.0, rf_rmsprop=1.0, if_shampoo=1.0, sign_sgd=1.5)
TASKS = [rf.CNN, rf.VIT, rf.LSTM]


def test_rootfree_verdicts_follow_the_numbers():
    acc = dict(sgd=0.9, adamw=0.8, shampoo_graft=0.85, rf_rmsprop=0.9, if_shampoo=0.88)
    got = by_claim(rf.verdicts(_fake(TASKS, RF, acc=acc)))
    assert {k: v.verdict for k, v in got.items()} == {
        "P2-24": HOLDS,
        "P2-25": HOLDS,
        "P2-26": HOLDS,
        "P2-32": HOLDS,
    }
    no_gap = by_claim(rf.verdicts(_fake(TASKS, RF, acc={**acc, "adamw": 0.9})))
    assert no_gap["P2-24"].verdict == "inconclusive" and "no SGD" in no_gap["P2-24"].evidence
    worse = {**acc, "rf_rmsprop": 0.6, "if_shampoo": 0.6}
    bad = by_claim(
        rf.verdicts(
            _fake(
                TASKS,
                {**RF, "rf_rmsprop": 2.0, "if_shampoo": 2.0},
                acc=worse,
                fails={"if_shampoo": 1},
            )
        )
    )
    assert bad["P2-24"].verdict == FAILS and bad["P2-25"].verdict == FAILS
    assert bad["P2-26"].verdict == FAILS and bad["P2-32"].verdict == FAILS
    sign_ok = by_claim(rf.verdicts(_fake(TASKS, {**RF, "sign_sgd": 1.0}, acc=acc)))
    assert sign_ok["P2-32"].verdict == "inconclusive"
