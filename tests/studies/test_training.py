"""The training studies (train_lm, train_rootfree) on the tuning protocol: the test presets end
to end (stored runs, Dataset, figures, verdicts after a netCDF round trip), and the verdict
rules on synthetic studies whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

import precond_lab.tasks as tasks
import studies.train_lm as lm
import studies.train_rootfree as rf
from precond_lab.study import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_TESTABLE_HERE,
    PARTIAL,
    by_claim,
    unresolved_note,
    verdict_of,
)
from precond_lab.tuning import Decision, Method, Protocol, Study, stack, unstack

VERDICTS = (HOLDS, FAILS, PARTIAL, INCONCLUSIVE, NOT_TESTABLE_HERE)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("PRECOND_LAB_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def lm_ds(cache):
    with pytest.warns(UserWarning, match="no interior optimum"):
        return lm.run(lm.PRESETS["test"], log=lambda s: None)


@pytest.fixture(scope="module")
def rf_ds(cache):
    with pytest.warns(UserWarning, match="no interior optimum"):
        return rf.run(rf.PRESETS["test"], log=lambda s: None)


def _round_trip(ds, tmp_path):
    ds.to_netcdf(tmp_path / "ds.nc")
    with xr.open_dataset(tmp_path / "ds.nc") as back:
        return back.load()


def test_lm_test_preset_end_to_end(lm_ds, tmp_path, cache):
    assert lm_ds["comparison"].values.tolist() == ["p1_w8", "nograft_w8", "p4_w8"]
    p1 = unstack(lm_ds, "p1_w8")
    assert p1["method"].values.tolist() == list(lm.P1_METHODS)
    # every method ran every grid rate on the selection seed, and 3 fresh seeds at its rate
    assert int(p1["ran"].isel(seed=0).sum()) == p1.sizes["method"] * p1.sizes["lr"]
    for m in lm.P1_METHODS:
        lr = float(p1["selected_lr"].sel({"method": m}))
        assert p1["ran"].sel({"method": m, "lr": lr}).values.tolist() == [1, 1, 1, 1]
    p4 = unstack(lm_ds, "p4_w8")
    assert p4.attrs["shared_rate"] == 1 and len(set(p4["selected_lr"].values)) == 1
    assert (lm_ds["state_bytes"].values[lm_ds["used"].values == 1] > 0).all()
    # the runs are stored per task: the comparisons on one task share their grid runs
    stored = list((cache / "tuning").glob("*/runs/*.json"))
    runs = set()
    for c in lm_ds["comparison"].values.tolist():
        d = unstack(lm_ds, c)
        for i, j, k in zip(*np.nonzero(d["ran"].values), strict=True):
            runs.add((str(d["method"].values[i]), float(d["lr"].values[j]), int(d["seed"][k])))
    assert len(stored) == len(runs)  # one stored file per distinct run, shared by comparisons
    back = _round_trip(lm_ds, tmp_path)
    rows, rows_back = lm.verdicts(lm_ds), lm.verdicts(back)
    assert [(v.claim, v.verdict, v.evidence) for v in rows] == [
        (v.claim, v.verdict, v.evidence) for v in rows_back
    ]
    assert {v.claim for v in rows} == {"P1-16", "P1-17", "P1-18", "P1-21-train", "P4-39"}
    for v in rows:
        assert v.verdict in VERDICTS and v.kind is not None
        assert "grid 2^" in v.setting and "fresh paired seeds" in v.setting


def test_rootfree_test_preset_end_to_end(rf_ds, tmp_path):
    assert rf_ds["comparison"].values.tolist() == ["lstm"]
    rows = by_claim(rf.verdicts(_round_trip(rf_ds, tmp_path)))
    assert rows["P2-24"].verdict == rows["P2-25"].verdict == NOT_TESTABLE_HERE
    assert "reproduce --full" in rows["P2-24"].evidence
    assert rows["P2-26"].verdict in VERDICTS and rows["P2-32"].verdict in VERDICTS


def test_rerun_runs_nothing(lm_ds, cache):
    lines = []
    again = lm.run(lm.PRESETS["test"], log=lines.append, probe_steps=())
    for c in again["comparison"].values.tolist():
        assert int(again["study_runs_executed"].sel(comparison=c)) == 0
    xr.testing.assert_identical(again["loss"], lm_ds["loss"])


def test_figures_draw_every_comparison(lm_ds, tmp_path):
    paths = lm.plot(lm_ds, tmp_path)
    names = {p.name for p in paths}
    assert {"train_lm_tuning.png", "train_lm_probe.png"} <= names


# --------------------------------------------------------------------- verdict rules
def _bowl(center: float, offset: float = 0.0, noise: float = 0.001, fail_above=None):
    """Loss (log2 lr − center)²/50 + offset with a seed-dependent wobble."""

    def run(lr, seed):
        if fail_above is not None and lr > fail_above:
            return float("nan")
        return (math.log2(lr) - center) ** 2 / 50 + offset + noise * math.sin(7 * seed)

    return run


def _study(name: str, spec: dict, *, shared: bool = False) -> xr.Dataset:
    methods = [Method(m, f) for m, f in spec.items()]
    ds = Study(
        name, methods, Protocol(lr_bounds=(2**-9, 2**-3), shared_rate=shared), progress=False
    ).run()
    ds["state_bytes"] = ("method", np.array([100 if m == "kl_shampoo" else 200 for m in spec]))
    ds.attrs["setting"] = f"synthetic {name}"
    return ds


def _lm(kl_offset: float, nograft) -> xr.Dataset:
    p1 = {m: _bowl(-6, 0.0) for m in lm.P1_METHODS}
    p1["kl_shampoo"] = _bowl(-6, kl_offset)
    p1["vn_shampoo"] = _bowl(-6, kl_offset / 2)
    ng = {"shampoo_graft": _bowl(-6)} | {m: nograft for m in lm.NOGRAFT}
    p4 = {"kl_shampoo": _bowl(-6, kl_offset), "sq_shampoo": _bowl(-6, kl_offset)}
    p4 |= {"vn_shampoo": _bowl(-6), "f_shampoo": _bowl(-6)}
    return stack(
        {
            "p1_w8": _study("p1", p1),
            "nograft_w8": _study("ng", ng),
            "p4_w8": _study("p4", p4, shared=True),
            "p4_w16": _study("p4b", p4, shared=True),
        }
    )


def test_lm_verdicts_follow_the_numbers():
    better = by_claim(lm.verdicts(_lm(-0.1, _bowl(-6, 0.0, fail_above=2**-5))))
    assert better["P1-18"].verdict == HOLDS
    assert better["P4-39"].verdict == HOLDS
    assert better["P1-16"].verdict == HOLDS  # stable, interior, less state
    # KL better than VN (−0.1 vs −0.05) and VN better than SOAP (−0.05 vs 0)
    assert better["P1-21-train"].verdict == HOLDS
    # Shampoo without grafting as good as grafted where it runs: the claim does not hold
    assert better["P1-17"].verdict == FAILS
    worse = by_claim(lm.verdicts(_lm(+0.1, lambda lr, seed: float("nan"))))
    assert worse["P1-18"].verdict == FAILS and worse["P4-39"].verdict == FAILS
    # one width cannot show "at every width"
    one = _lm(-0.1, _bowl(-6)).drop_sel(comparison="p4_w16")
    assert by_claim(lm.verdicts(one))["P4-39"].verdict == PARTIAL
    assert "one width only" in by_claim(lm.verdicts(one))["P4-39"].evidence
    assert worse["P1-17"].verdict == HOLDS  # every grid point and ε failed
    assert "0 of 3 fresh seeds" not in worse["P1-17"].evidence
    same = by_claim(lm.verdicts(_lm(0.0, _bowl(-6, 1.0))))
    assert same["P1-18"].verdict == FAILS  # ties everywhere: no lower loss
    assert "tie" in same["P1-18"].evidence
    assert same["P1-17"].verdict == HOLDS  # finite but never competitive, and worse


def test_no_decision_rests_on_an_edge_optimum():
    ds = _study("edge", {"a": _bowl(-6), "b": _bowl(-20, -1.0)})  # b's optimum far below
    dec, text = tasks.pair(ds, "b", "a")
    assert dec == Decision.UNRESOLVED and "edge" in text


def test_noisy_differences_are_unresolved_at_this_budget():
    def noisy(lr, seed):  # seed effects −0.5, −0.49, +1.0 (×0.2): mean ≈ 0, large spread
        return _bowl(-6, -0.02, noise=0.0)(lr, seed) + 0.2 * math.cos(2.1 * seed)

    ds = _study("noisy", {"a": _bowl(-6, 0.0, noise=0.0), "b": noisy})
    dec, text = tasks.pair(ds, "b", "a")
    assert dec == Decision.UNRESOLVED
    assert lm.verdicts  # the study's verdict words for it:
    assert verdict_of([dec]) == INCONCLUSIVE
    assert unresolved_note(INCONCLUSIVE) == "unresolved at this budget; "


@pytest.mark.parametrize(
    ("decisions", "verdict"),
    [
        (["better", "better"], HOLDS),
        (["better", "tie"], PARTIAL),
        (["tie", "tie"], FAILS),
        (["better", "worse"], FAILS),
        (["better", "unresolved"], INCONCLUSIVE),
        (["worse", "unresolved"], FAILS),
    ],
)
def test_verdict_words(decisions, verdict):
    assert verdict_of([Decision(d) for d in decisions]) == verdict


def test_rootfree_verdicts_follow_the_numbers():
    good = {"adamw": _bowl(-6), "sgd": _bowl(-6, 0.05), "rf_rmsprop": _bowl(-6, -0.05)}
    good |= {"if_shampoo": _bowl(-6, 0.0), "sign_sgd": _bowl(-6, 0.2)}
    rows = by_claim(rf.verdicts(stack({"lstm": _study("lstm", good)})))
    assert rows["P2-26"].verdict == HOLDS and rows["P2-32"].verdict == HOLDS
    bad = good | {"rf_rmsprop": _bowl(-6, 0.3), "sign_sgd": _bowl(-6, 0.0)}
    rows = by_claim(rf.verdicts(stack({"lstm": _study("lstm2", bad)})))
    assert rows["P2-26"].verdict == FAILS and rows["P2-32"].verdict == FAILS


def test_every_optimiser_builds_and_names_resolve():
    task = tasks.Task("t", "mlp", "digits", (("hidden", (4,)),), steps=2, eval_samples=16)
    for name in [*tasks.OPTIMIZERS, *lm.NOGRAFT]:
        m = task.method(name)
        assert m.recipe is not None and m.name == name
        assert task.state_bytes(name) >= 0
    with pytest.raises(ValueError, match="unknown optimiser"):
        tasks.optimizer("adamm")
