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


def _synthetic(**errors):
    """A hand-made Dataset of the study's layout: every check's error 1e-16 on a random and
    an exact-Kronecker case (the Kronecker-only checks NaN on the random one), but for
    ``errors`` (check id → error on the random case)."""
    import xarray as xr

    checks, cases = list(study.CHECKS), ["random", "kronecker"]
    err = np.full((len(checks), 2), 1e-16)
    for i, c in enumerate(checks):
        if c in ("D4-exact", "D4-sqrt", "P3-9"):
            err[i, 0] = np.nan
        err[i, 0] = errors.get(c.replace("_", "-"), err[i, 0])
    info = {f: ("check", [getattr(study.CHECKS[c], f) for c in checks])
            for f in ("claim", "tolerance", "kind")}  # fmt: skip
    return xr.Dataset(
        {"error": (("check", "case"), err), "kron_gap": ("case", [0.3, 1e-16]),
         "cos_shampoo_squared": ("case", [0.95, 1.0]), "cos_shampoo": ("case", [0.9, 0.97])},
        coords={"check": checks, "case": cases, **info, "source": ("case", cases),
                "kronecker": ("case", [0, 1])},
    )  # fmt: skip


def test_verdicts_on_a_synthetic_dataset():
    """Errors within tolerance: every claim holds; one error above its check's tolerance
    fails that claim only, and the evidence names the check, the error and the case."""
    rows = by_claim(study.verdicts(_synthetic()))
    assert set(rows) == set(study.CLAIMS)
    assert all(r.verdict == HOLDS for r in rows.values()), rows
    rows = by_claim(study.verdicts(_synthetic(**{"D6-iterate": 2e-6})))
    assert rows["D6"].verdict == FAILS
    assert "D6-iterate max 2.0e-06 > tol 1e-06 (random)" in rows["D6"].evidence
    assert all(r.verdict == HOLDS for c, r in rows.items() if c != "D6")
    # a non-finite error is not within tolerance
    assert by_claim(study.verdicts(_synthetic(D8=np.inf)))["D8"].verdict == FAILS


def test_exactness_only_claimed_for_exact_kronecker(monkeypatch):
    """A non-Kronecker target presented as Kronecker must not pass D4/P3-9/P3-2's √ check."""
    from precond_lab import DenseTarget

    jax.config.update("jax_enable_x64", True)  # before the targets are built, as run() does
    rng = np.random.default_rng(5)
    a = rng.standard_normal((6, 6))
    sigma = a @ a.T + 0.1 * np.eye(6)  # generic SPD: not a Kronecker product
    kron = np.kron(np.diag([1.0, 2.0, 3.0]), np.array([[2.0, 0.5], [0.5, 1.0]]))
    from precond_lab.identities import CheckOptions, IdentityCase

    opts = CheckOptions(if_max_steps=400)
    cases = [
        IdentityCase(name, "kronecker", x, DenseTarget(x, (3, 2)), (3, 2), 0.0, True, opts)
        for name, x in (("not kronecker", sigma), ("kronecker", kron))
    ]
    monkeypatch.setattr(study, "cases", lambda config: cases)
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
