"""The root vs root-free study (P2-27..P2-31): test preset end to end, and verdict logic."""

from __future__ import annotations

import numpy as np
import pytest

import studies.root_vs_rootfree as study
from precond_lab.errors import Status
from precond_lab.study import FAILS, HOLDS, PARTIAL, by_claim


@pytest.fixture(scope="module")
def ds():
    return study.run(study.PRESETS["test"])


def test_test_preset_end_to_end(ds, tmp_path):
    for v in ds.attrs.values():
        assert isinstance(v, (str, int, float)) and not isinstance(v, bool)
    assert ds["direction_cosine"].dims == ("layer", "estimator", "approx_power", "exact_power")
    assert np.all(np.isfinite(ds["direction_cosine"].values))
    assert np.all(np.isfinite(ds["step_scale"].isel(layer=0).values))
    # eigh has no bfloat16 kernel in JAX on CPU: recorded as unsupported
    st = ds["synthetic_status"].sel(prec_method="eigh", dtype="bfloat16", power=0.25)
    unsupported, not_spd = Status.UNSUPPORTED_DTYPE.code, Status.NOT_SPD.code
    assert np.all(np.isin(st.values, (unsupported, not_spd)))  # not SPD: cond 1e5 in bf16
    assert np.any(st.values == unsupported)
    paths = study.plot(ds, tmp_path)
    assert sorted(p.suffix for p in paths) == [".pdf"] * 4 + [".png"] * 4
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    verdicts = by_claim(study.verdicts(ds))
    assert set(verdicts) == {"P2-27", "P2-28", "P2-29", "P2-30", "P2-31"}
    for v in verdicts.values():
        assert v.paper == study.PAPER and v.tolerance and v.evidence
        assert v.verdict in (HOLDS, FAILS, PARTIAL)
    # loss scaling with a scale-equivariant damping is exact: root invariant, root-free 1/c
    np.testing.assert_allclose(ds["scaling_ratio"], ds["scaling_predicted"], rtol=1e-2)
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


def test_p2_28_and_p2_31_verdict_logic(ds):
    good = ds.copy(deep=True)
    c = good["direction_cosine"]
    c.loc[{"approx_power": 1.0, "exact_power": 1.0}] = 0.9
    c.loc[{"approx_power": 0.5, "exact_power": 1.0}] = 0.5
    c.loc[{"approx_power": 0.5, "exact_power": 0.5}] = 0.9
    c.loc[{"approx_power": 1.0, "exact_power": 0.5}] = 0.5
    good["scaling_ratio"][:] = good["scaling_predicted"].values
    good["eigh_f32_s"][:] = 1.0
    good["if_update_bf16_s"][:] = 0.1
    good["if_update_f32_s"][:] = 0.2
    v = by_claim(study.verdicts(good))
    assert v["P2-28"].verdict == HOLDS and v["P2-31"].verdict == HOLDS
    bad = good.copy(deep=True)
    bad["direction_cosine"].loc[{"approx_power": 1.0, "exact_power": 1.0}] = 0.1
    bad["scaling_ratio"][:] = 2 * good["scaling_predicted"].values
    bad["if_update_bf16_s"][:] = 3.0
    v = by_claim(study.verdicts(bad))
    assert v["P2-28"].verdict == FAILS and v["P2-31"].verdict == FAILS
