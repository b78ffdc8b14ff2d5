"""The half-precision study (P2-30, P2-31): test preset end to end, and verdict logic."""

from __future__ import annotations

import numpy as np
import pytest

import studies.rootfree_precision as study
from precond_lab import claims
from precond_lab.errors import Status
from precond_lab.study import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_TESTABLE_HERE,
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
    assert ds["time_s"].sizes["timing_round"] >= 5 and np.all(ds["time_s"] > 0)
    assert ds.sizes["factor"] >= 1  # real Shampoo factors of the captured layer
    # eigh has no bfloat16 kernel in JAX on CPU: recorded as unsupported
    st = ds["synthetic_status"].sel(prec_method="eigh", dtype="bfloat16", power=0.25)
    unsupported, not_spd = Status.UNSUPPORTED_DTYPE.code, Status.NOT_SPD.code
    assert np.all(np.isin(st.values, (unsupported, not_spd)))  # not SPD: cond 1e5 in bf16
    assert np.any(st.values == unsupported)
    paths = study.plot(ds, tmp_path)
    assert sorted(p.suffix for p in paths) == [".pdf"] * 2 + [".png"] * 2
    verdicts = by_claim(study.verdicts(ds))
    assert set(verdicts) == {"P2-30", "P2-31"}
    for claim, v in verdicts.items():
        assert v.tolerance and v.evidence and v.statement == claims.claim(claim).statement
    assert verdicts["P2-30"].kind == TestKind.PROXY and verdicts["P2-30"].setting
    assert verdicts["P2-30"].verdict in (HOLDS, FAILS, PARTIAL)
    # on a CPU, P2-31 is not testable: CPU numbers as context only
    assert verdicts["P2-31"].verdict == NOT_TESTABLE_HERE
    assert verdicts["P2-31"].kind == TestKind.NOT_TESTABLE and "CPU" in verdicts["P2-31"].evidence
    # the P2-30 summary excludes inputs that rounding made indefinite (NOT_SPD)
    codes = np.array([[Status.NOT_SPD.code, Status.OK.code]])
    assert np.isin(study._failure(codes, np.array([[np.nan, 0.01]])), [0.0]).all()


def _precision(ds, if_fails: bool, root_fails: bool):
    out = ds.copy(deep=True)
    for src in ("synthetic", "real"):
        st, er = out[f"{src}_status"], out[f"{src}_error"]
        bf = {"dtype": "bfloat16"}
        st.loc[{"prec_method": "if_shampoo", "power": 1.0, **bf}] = (
            Status.NONFINITE.code if if_fails else Status.OK.code
        )
        er.loc[{"prec_method": "if_shampoo", "power": 1.0, **bf}] = np.nan if if_fails else 0.01
        st.loc[{"prec_method": "newton", "power": 0.25, **bf}] = (
            Status.NOT_CONVERGED.code if root_fails else Status.OK.code
        )
        er.loc[{"prec_method": "newton", "power": 0.25, **bf}] = 0.5 if root_fails else 0.01
    return out


def test_p2_30_verdict_logic(ds):
    holds = by_claim(study.verdicts(_precision(ds, if_fails=False, root_fails=True)))["P2-30"]
    assert holds.verdict == HOLDS, holds.evidence
    fails = by_claim(study.verdicts(_precision(ds, if_fails=True, root_fails=False)))["P2-30"]
    assert fails.verdict == FAILS, fails.evidence
    both_ok = by_claim(study.verdicts(_precision(ds, if_fails=False, root_fails=False)))
    assert both_ok["P2-30"].verdict == PARTIAL


def _timed(ds, eigh, if_bf16, if_f32, backend="gpu"):
    out = ds.copy(deep=True)
    out.attrs["timing_backend"] = backend
    t = out["time_s"]
    for op, v in (("eigh_f32", eigh), ("if_update_bf16", if_bf16), ("if_update_f32", if_f32)):
        t.loc[{"timing_op": op}] = np.broadcast_to(v, t.loc[{"timing_op": op}].shape)
    return out


def test_p2_31_timing_verdicts_need_the_spread_to_clear_the_threshold(ds):
    rounds = ds.sizes["timing_round"]
    steady = np.ones(rounds)
    v = by_claim(study.verdicts(_timed(ds, 1.0 * steady, 0.1 * steady, 0.2 * steady)))["P2-31"]
    assert v.verdict == HOLDS and v.kind == TestKind.PROXY and v.setting
    v = by_claim(study.verdicts(_timed(ds, 1.0 * steady, 3.0 * steady, 0.2 * steady)))["P2-31"]
    assert v.verdict == FAILS
    # a loaded machine: the per-round ratio straddles 2× -> inconclusive, never a flip
    noisy = np.where(np.arange(rounds) % 2 == 0, 4.0, 1.0)
    v = by_claim(study.verdicts(_timed(ds, noisy, steady, 2.0 * steady)))["P2-31"]
    assert v.verdict == INCONCLUSIVE
    v = by_claim(study.verdicts(_timed(ds, 1.0 * steady, 0.1 * steady, 0.05 * steady)))["P2-31"]
    assert v.verdict == PARTIAL  # fast, but bf16 slower than f32
    cpu = by_claim(study.verdicts(_timed(ds, steady, 0.1 * steady, 0.2 * steady, "cpu")))
    assert cpu["P2-31"].verdict == NOT_TESTABLE_HERE


def test_figures_show_spread_and_missing_cells(ds):
    figs = study._figures(ds)
    prec = figs["rootfree_precision_failures"]
    for ax in prec.axes:
        heights = [r.get_height() for r in ax.patches]
        assert min(heights) >= 0  # no negative "failure rate" stands in for a missing cell
        missing = [r for r in ax.patches if r.get_y() < 0]
        assert all(r.get_hatch() and r.get_facecolor()[3] == 0 for r in missing)  # unfilled
    synthetic = prec.axes[0]
    fr = study._failure(ds["synthetic_status"].values, ds["synthetic_error"].values)
    n_missing = sum(
        int(np.isnan(fr[im, :, lp]).sum())
        for im in range(fr.shape[0])
        for lp in range(fr.shape[2])
        if not np.all(np.isnan(fr[im, :, lp]))
    )
    assert len([r for r in synthetic.patches if r.get_y() < 0]) == n_missing > 0
    tim = figs["rootfree_precision_timing"].axes[0]
    assert len(tim.containers) == 4 and "interleaved rounds" in tim.get_title()
