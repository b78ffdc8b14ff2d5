"""The identities study: the test preset end to end, and its verdict logic."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import studies.identities as study
from precond_lab import claims
from precond_lab.study import FAILS, HOLDS, UNTESTED_VERDICT, TestKind, by_claim


@pytest.fixture(scope="module")
def ds():
    return study.run(study.PRESETS["test"])


def test_test_preset_end_to_end(ds, tmp_path):
    assert set(ds["check"].values) == set(study.CHECKS)
    assert ds.sizes["case"] == 3  # two random (3x2, two conditionings) + one Kronecker
    for v in ds.attrs.values():
        assert isinstance(v, (str, int, float)) and not isinstance(v, bool)
    paths = study.plot(ds, tmp_path)
    assert sorted(p.suffix for p in paths) == [".pdf"] * 3 + [".png"] * 3
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    figs = study._figures(ds)
    assert len(figs["identities_errors"].axes) == 1
    # one scatter series per source, plus the tolerance marks
    assert len(figs["identities_errors"].axes[0].collections) == 2 + 1
    assert len(figs["identities_p3_2_cosines"].axes[0].collections) == 2
    assert len(figs["identities_if_shampoo"].axes[0].lines) == ds.sizes["case"]
    verdicts = by_claim(study.verdicts(ds))
    assert set(verdicts) == set(study.CLAIMS)
    assert set(ds["claim"].values) | {"P3-2"} == set(study.CLAIMS)  # P3-2: cosines, D4-sqrt
    for claim, v in verdicts.items():  # identities: they hold, to the stated tolerance
        assert v.verdict == HOLDS, (claim, v.evidence)
        assert v.tolerance and v.paper and v.location
        assert v.kind == claims.claim(claim).kind and v.kind is not None
    # derived facts are reported as derived, never as a paper's confirmation
    for claim in ("P3-9", "P2-42", *(f"D{i}" for i in range(1, 10))):
        assert verdicts[claim].kind == TestKind.DERIVED, claim
    for claim in ("P3-1", "P1-11", "P1-12", "P1-40"):
        assert verdicts[claim].kind == TestKind.PAPER, claim


def test_claims_come_from_the_registry():
    registered = {c.id for c in claims.CLAIMS.values() if "identities" in c.studies}
    assert set(study.CLAIMS) == registered
    assert {"P1-40", "P2-42", "P3-9"} <= registered


def test_if_shampoo_invariance_needs_an_orthogonal_factor(monkeypatch):
    """P2-42's check is not vacuous: C → C·A with A not orthogonal changes CCᵀ."""
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    g = rng.standard_normal((6, 3, 2))
    assert study._if_orthogonal(g, 1e-3, np.random.default_rng(1)) < 1e-12
    monkeypatch.setattr(np.linalg, "qr", lambda a: (np.eye(a.shape[0]) + 0.3 * a, None))
    assert study._if_orthogonal(g, 1e-3, np.random.default_rng(1)) > 1e-3


def test_logdet_divergence_is_twice_the_kl_not_once(monkeypatch):
    """P1-40: B₀ = 2·KL and its Hessian = 2 × Fisher; a reference KL off by 2 is caught."""
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 4))
    x = a @ a.T + np.eye(4)
    value, hessian = study._logdet_hessian(x, rng)
    assert value < 1e-12 and hessian < 1e-12
    kl = study._dense_kl
    monkeypatch.setattr(study, "_dense_kl", lambda u, v: 2 * kl(u, v))
    assert study._logdet_hessian(x, rng)[0] > 1e-3  # far above the 1e-10 tolerance


def test_an_error_above_tolerance_does_not_hold(ds):
    bad = ds.copy(deep=True)
    bad["error"].loc[{"check": "D5-residual", "case": bad["case"].values[0]}] = 1e-3
    v = by_claim(study.verdicts(bad))["D5"]
    assert v.verdict == FAILS
    assert "1.0e-03" in v.evidence
    assert by_claim(study.verdicts(bad))["D7"].verdict == HOLDS  # only D5 is affected


def test_exactness_only_claimed_for_exact_kronecker(monkeypatch):
    """A non-Kronecker target presented as Kronecker must not pass D4/P3-9/P3-2's √ check."""
    from precond_lab import DenseTarget

    jax.config.update("jax_enable_x64", True)  # before the targets are built, as run() does
    rng = np.random.default_rng(5)
    a = rng.standard_normal((6, 6))
    sigma = a @ a.T + 0.1 * np.eye(6)  # generic SPD: not a Kronecker product
    kron = np.kron(np.diag([1.0, 2.0, 3.0]), np.array([[2.0, 0.5], [0.5, 1.0]]))
    cases = [
        {
            "name": "not kronecker",
            "source": "kronecker",
            "m": 3,
            "n": 2,
            "kronecker": 1,
            "target": DenseTarget(sigma, (3, 2)),
            "sigma": sigma,
            "damping": 0.0,
        },
        {
            "name": "kronecker",
            "source": "kronecker",
            "m": 3,
            "n": 2,
            "kronecker": 1,
            "target": DenseTarget(kron, (3, 2)),
            "sigma": kron,
            "damping": 0.0,
        },
    ]
    monkeypatch.setattr(study, "_cases", lambda config: iter(cases))
    out = study.run(study.PRESETS["test"], if_max_steps=400)
    v = by_claim(study.verdicts(out))
    assert v["P3-9"].verdict == FAILS and v["D4"].verdict == FAILS
    assert v["P3-2"].verdict != HOLDS
    assert out["error"].sel(check="P3-9", case="kronecker") < 1e-12
    assert out["error"].sel(check="P3-9", case="not kronecker") > 1e-3
    # the identities that need no Kronecker structure still hold on both
    for claim in ("D2", "D5", "D7", "D9", "P1-11", "P1-12", "P1-15"):
        assert v[claim].verdict == HOLDS, (claim, v[claim].evidence)


def test_no_kronecker_case_is_not_tested(ds):
    only_random = ds.isel(case=np.flatnonzero(ds["kronecker"].values == 0))
    only_random["error"].loc[{"check": ["D4-exact", "D4-sqrt", "P3-9"]}] = np.nan
    v = by_claim(study.verdicts(only_random))
    assert v["P3-9"].verdict == UNTESTED_VERDICT


def test_p3_2_cosine_ordering_is_read_from_the_data(ds):
    flipped = ds.copy(deep=True)
    case = flipped["case"].values[0]
    flipped["cos_shampoo"].loc[{"case": case}] = 1.0  # Shampoo better than its square
    v = by_claim(study.verdicts(flipped))["P3-2"]
    assert v.verdict != HOLDS and case in v.evidence
