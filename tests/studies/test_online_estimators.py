"""The KL-Shampoo online study (P1-13, P1-19, P1-20): test preset end to end, verdict logic."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import studies.online_estimators as study
from precond_lab import SampleTarget
from precond_lab.errors import ConvergenceError
from precond_lab.estimators import kl_optimal
from precond_lab.metrics import kl_divergence
from precond_lab.structures import Kronecker
from precond_lab.study import FAILS, HOLDS, PARTIAL, TestKind, by_claim


@pytest.fixture(scope="module")
def ds():
    return study.run(study.PRESETS["test"])


def test_test_preset_end_to_end(ds, tmp_path):
    for v in ds.attrs.values():
        assert isinstance(v, (str, int, float)) and not isinstance(v, bool)
    assert list(ds["variant"].values) == list(study.VARIANTS)
    assert list(ds["stream"].values) == list(study.STREAMS)
    assert ds["kl_gap"].dims == ("stream", "layer", "seed", "step", "variant")
    assert np.all(np.isfinite(ds["kl_gap"].values))
    assert np.all(np.isfinite(ds["direction_cosine"].values))
    # one family: every gap is ≥ 0 (the damped KL optimum is the family's minimum)
    assert float(ds["kl_gap"].min()) >= 0.0
    # the trajectory stream walks the trajectory capture's steps in order
    traj = ds["source_step"].sel(stream="trajectory").values
    assert np.all(np.diff(traj) >= 0) and len(set(traj)) > 1
    assert set(ds["source_step"].sel(stream="stationary").values) == {ds.attrs["capture_step"]}
    # the timing is interleaved: ≥ 5 rounds, median inside the quartiles
    assert ds.sizes["repeat"] >= 5
    med, lo, hi = (ds[k].values for k in ("speedup_median", "speedup_q25", "speedup_q75"))
    assert np.all((lo <= med) & (med <= hi))
    paths = study.plot(ds, tmp_path)
    assert sorted(p.suffix for p in paths) == [".pdf"] * 2 + [".png"] * 2
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    verdicts = by_claim(study.verdicts(ds))
    assert set(verdicts) == {"P1-13", "P1-19", "P1-20", "P1-41"}
    for v in verdicts.values():
        assert v.verdict in (HOLDS, FAILS, PARTIAL, study.INCONCLUSIVE)
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
    assert labels == set(study.LABELS.values())
    assert all(len(ax.collections) == len(study.VARIANTS) for ax in axes)  # one band each
    assert f"n = {ds.sizes['seed']}" in fig._suptitle.get_text()
    # a gap ≤ 0 is drawn as missing, not clipped to a floor
    zero = ds.copy(deep=True)
    zero["kl_gap"][:] = 0.0
    figs.clear()
    study.plot(zero, tmp_path)
    line = figs[f"{study.NAME}_kl_gap"].axes[0].get_lines()[0]
    assert np.all(np.isnan(np.asarray(line.get_ydata(), float)))
    cost = figs[f"{study.NAME}_refresh_cost"].axes[0]
    assert any(f"{ds.sizes['repeat']} rounds" in t.get_text() for t in cost.get_legend().texts)


def test_kronecker_member_and_gap_check():
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    g = rng.standard_normal((40, 3, 4))
    lam = 0.05
    sh = study._variants(0.9, 5, lam)["shampoo"]
    state = sh.update(sh.init(jnp.asarray(g[:8], jnp.float32)), jnp.asarray(g[8:], jnp.float32))
    member = study.kronecker_member("shampoo", state, lam)
    left = np.asarray(state.left, float) + 4 * lam * np.eye(3)
    right = np.asarray(state.right, float) + 3 * lam * np.eye(4)
    dense = np.kron(0.5 * (left + left.T), 0.5 * (right + right.T)) / np.trace(left)
    assert isinstance(member, Kronecker)
    np.testing.assert_allclose(np.asarray(member.to_dense()), dense, rtol=1e-10, atol=1e-12)
    kl = study._variants(0.9, 5, lam)["kl_shampoo"]
    st = kl.update(kl.init(jnp.asarray(g[:8], jnp.float32)), jnp.asarray(g[8:], jnp.float32))
    member = study.kronecker_member("kl_shampoo", st, lam)
    qa, la = np.asarray(st.left_basis, float), np.asarray(st.left_values, float)
    qb, lb = np.asarray(st.right_basis, float), np.asarray(st.right_values, float)
    dense = np.kron((qa * la) @ qa.T, (qb * lb) @ qb.T)
    np.testing.assert_allclose(np.asarray(member.to_dense()), dense, rtol=1e-10, atol=1e-12)
    # the damped KL optimum beats every member of the family: the gap is ≥ 0
    target = SampleTarget(jnp.asarray(g))
    opt = float(kl_divergence(target, kl_optimal(target, damping=lam), damping=lam))
    for name, s in (("shampoo", state), ("kl_shampoo", st)):
        m = study.kronecker_member(name, s, lam)
        assert study.checked_gap(float(kl_divergence(target, m, damping=lam)), opt, name) > 0
    assert study.checked_gap(opt - 1e-12, opt, "round-off") < 0
    with pytest.raises(ConvergenceError, match="beyond round-off"):
        study.checked_gap(opt - 1e-3, opt, "layer x")


@pytest.mark.parametrize("m, n", [(10, 32), (768, 768), (768, 3072)])
def test_state_floats_count_every_array_of_the_state(m, n):
    # the optimisers' own states: factors + eigenbases (or roots), eigenvalues, momentum
    # (m·n), Adam's v (m·n) where kept, SOAP's scalar bias correction
    fac, eig, mn = 2 * (m * m + n * n), m + n, m * n
    assert study.state_floats("kl_shampoo", m, n) == (fac + eig + mn, 0)
    assert study.state_floats("soap", m, n) == (fac + 2 * mn + 1, mn)
    assert study.state_floats("kl_soap", m, n) == (fac + eig + 2 * mn, mn)
    assert study.state_floats("shampoo_grafted", m, n) == (fac + 2 * mn, mn)


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
    good["speedup_median"][:] = 10.0
    good["speedup_q25"][:] = 8.0
    good["speedup_q75"][:] = 12.0
    return good, n, opt


def test_p1_19_and_p1_20_verdict_logic(ds):
    good, n, opt = _good(ds)
    v = by_claim(study.verdicts(good))
    assert v["P1-19"].verdict == HOLDS and v["P1-20"].verdict == HOLDS
    bad = good.copy(deep=True)
    bad["kl_gap"] = _gap_over_steps(bad, "kl_shampoo_instant", np.full(n, 0.0))
    bad["direction_cosine"].loc[{"variant": "kl_shampoo_instant"}] = 0.95
    bad["speedup_median"][:] = 0.5
    bad["speedup_q25"][:] = 0.4
    bad["speedup_q75"][:] = 0.6
    bad["kl_gap"] = _gap_over_steps(bad, "kl_shampoo", np.full(n, 0.5 * opt))
    v = by_claim(study.verdicts(bad))
    assert v["P1-19"].verdict == FAILS and v["P1-20"].verdict == FAILS


def test_p1_19_inconclusive_when_the_timing_spread_straddles(ds):
    good, _, _ = _good(ds)
    good["speedup_median"][:] = 1.6
    good["speedup_q25"][:] = 1.2  # the quartiles straddle the 1.5× threshold
    good["speedup_q75"][:] = 2.0
    assert by_claim(study.verdicts(good))["P1-19"].verdict == study.INCONCLUSIVE


def test_p1_20_is_decided_on_the_trajectory_stream(ds):
    good, n, opt = _good(ds)
    # EMA better only on the stationary stream: partial at most
    g = good["kl_gap"]
    g.loc[{"stream": "trajectory", "variant": "kl_shampoo_instant"}] = 0.0
    good["direction_cosine"].loc[{"stream": "trajectory", "variant": "kl_shampoo_instant"}] = 0.99
    assert by_claim(study.verdicts(good))["P1-20"].verdict == PARTIAL
