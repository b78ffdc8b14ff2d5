"""The study framework: verdict logic, the claims registry and the report's content."""

import os
import re
import tempfile
from pathlib import Path

import pytest

from precond_lab import claims
from precond_lab.study import (
    FAILS,
    HOLDS,
    PARTIAL,
    UNTESTED,
    UNTESTED_VERDICT,
    Row,
    TestKind,
    claim_verdict,
    judge,
    repo_root,
    untested,
    write_report,
)


def test_judge():
    assert judge(True) == HOLDS
    assert judge(False) == FAILS
    assert judge(False, partial=True) == PARTIAL
    assert judge(True, partial=True) == HOLDS


def _v(claim, verdict, evidence, tol="", kind=TestKind.PAPER, setting=""):
    return Row(claim, "P", "loc", "statement", verdict, evidence, tol, kind=kind, setting=setting)


def test_report_lists_every_claim_with_kinds_links_figures_and_failures(tmp_path: Path):
    fig = tmp_path / "figs" / "quality.png"
    fig.parent.mkdir()
    fig.write_bytes(b"png")
    records = [
        {
            "name": "toy",
            "title": "A toy study",
            "seconds": 1.0,
            "figures": [fig, fig.with_suffix(".pdf")],
            "verdicts": [
                _v("P3-1", HOLDS, "err 1e-15", "1e-10"),
                _v("P1-14", FAILS, "KL 6.2 vs 0.02", "x2", TestKind.PROXY, "digits layers"),
                _v("D5", HOLDS, "err 1e-14", kind=TestKind.DERIVED),
            ],
            "error": None,
        },
        {
            "name": "broken",
            "title": "Broken",
            "seconds": 0.0,
            "figures": [],
            "verdicts": [],
            "error": "RuntimeError: boom",
        },
    ]
    report = tmp_path / "REPORT.md"
    write_report(records, report, "quick", tmp_path / "figs")
    text = report.read_text()
    docs = os.path.relpath(repo_root() / "docs" / "claims.md", tmp_path)
    p3 = claims.PAPERS["morwani2024shampoo"]
    assert (
        f"| [P3-1]({docs}#p3-1) | [{p3.short}]({docs}#ref-{p3.key}) | "
        f"{claims.claim('P3-1').location} | paper claim | **holds** | err 1e-15 | 1e-10 |"
    ) in text
    assert "| proxy (digits layers) | **does not hold** | KL 6.2 vs 0.02 |" in text
    assert "| derived | **holds** | err 1e-14 |" in text
    untested_rows = untested({"P3-1", "P1-14", "D5"})
    assert untested_rows and all(v.verdict == UNTESTED_VERDICT for v in untested_rows)
    for v in untested_rows:  # every other registered claim is listed, never dropped
        assert f"| [{v.claim}]({docs}#{claims.anchor(v.claim)}) |" in text
    assert len(untested_rows) == len(claims.CLAIMS) - 3
    assert "![quality](figs/quality.png)" in text and "quality.pdf" not in text
    assert "**The study failed:** `RuntimeError: boom`" in text
    assert "| broken | — | — | — | error |" in text
    # claims sorted: P1 before P3, P4 after P3, derived identities last
    assert text.index("[P1-14](") < text.index("[P3-1](") < text.index("[P4-33](")
    assert text.index("[P4-39](") < text.index("[D1](")
    assert "error: no test kind" not in text and "not in the claims registry" not in text


def test_every_reference_in_the_report_resolves_inside_the_repo(tmp_path: Path):
    report = repo_root() / "REPORT.md.test-links"  # next to the repo's docs, as REPORT.md
    try:
        write_report([], report, "quick", tmp_path)
        text = report.read_text()
    finally:
        report.unlink(missing_ok=True)
    links = re.findall(r"\]\(([^)#]+)(?:#([^)]+))?\)", text)
    assert links
    for target, frag in links:
        path = (repo_root() / target).resolve()
        assert path.is_file() and path.is_relative_to(repo_root()), target
        if frag:
            assert f'<a id="{frag}"></a>' in path.read_text(), (target, frag)


def test_a_row_without_kind_or_with_an_unknown_claim_is_an_error(tmp_path: Path):
    record = {
        "name": "toy",
        "title": "t",
        "seconds": 0.0,
        "figures": [],
        "verdicts": [_v("P3-1", HOLDS, "e", kind=None), _v("P9-99", HOLDS, "e")],
        "error": None,
    }
    report = tmp_path / "REPORT.md"
    write_report([record], report, "quick", tmp_path)
    text = report.read_text()
    assert "**error: no test kind**" in text
    assert "**error: not in the claims registry**" in text


def test_claims_docs_are_generated_from_the_registry():
    """docs/claims.md and docs/references.bib are what `python -m precond_lab.claims` writes."""
    for rel, text in claims.docs_files().items():
        assert (repo_root() / rel).read_text() == text, (
            f"{rel} is stale: run `python -m precond_lab.claims`"
        )


def test_registry_is_complete_and_consistent():
    ids = set(claims.CLAIMS)
    assert {f"D{i}" for i in range(1, 10)} <= ids
    assert {f"P4-{i}" for i in range(33, 40)} <= ids and "P1-23" not in ids
    assert {"P1-40", "P1-41", "P2-42", "P3-43", "P1-21-train"} <= ids
    for c in claims.CLAIMS.values():
        assert c.paper in claims.PAPERS or c.paper == claims.DERIVED, c.id
        assert c.statement.endswith(".") and c.location and c.studies and c.source, c.id
        assert (c.kind == TestKind.PROXY) == bool(c.setting) or c.studies == (claims.TRAINING,)
        if c.kind == TestKind.DERIVED:
            assert c.type == claims.StatementType.EXACT, c.id
    for cid in ("P3-9", "P1-21", "P1-22"):  # derived facts, never a paper's confirmation
        assert claims.claim(cid).kind == TestKind.DERIVED
    assert claims.claim("P4-39").studies == ("training",)
    assert claims.claim("P1-21-train").studies == ("training",)
    for p in claims.PAPERS.values():
        assert p.authors and p.title and p.venue and p.year
    with pytest.raises(KeyError, match="not in the claims registry"):
        claims.claim("P1-23")


_ID = re.compile(r"[\"'](P\d-\d+(?:-train)?|D\d)[\"']")  # check ids (P3-1-left) are not claims


@pytest.mark.parametrize(
    "path", sorted((repo_root() / "studies").glob("[!_]*.py")), ids=lambda p: p.stem
)
def test_every_claim_id_a_study_names_is_registered_for_it(path: Path):
    """Claim ids quoted in a study's source are registered, with that study as a tester."""
    name = "training" if path.stem.startswith("train_") else path.stem
    found = set(_ID.findall(path.read_text()))
    unknown = sorted(found - set(claims.CLAIMS))
    assert not unknown, f"{path.name}: claim ids not in the registry: {unknown}"
    claimed = {c.id for c in claims.CLAIMS.values() if name in c.studies}
    assert claimed, f"{path.name}: no registered claim names the study {name!r}"


def test_a_verdict_needs_its_kind():
    with pytest.raises(TypeError, match="kind"):
        Row("D1", "derived", "B.4", "s", HOLDS, "e", "t")  # no kind given


def test_claim_verdict_fills_the_registry_fields():
    v = claim_verdict("P1-14", HOLDS, "ev", "tol", kind=TestKind.PROXY)
    c = claims.claim("P1-14")
    assert (v.paper, v.location, v.statement) == (c.paper_label, c.location, c.statement)
    assert v.kind == TestKind.PROXY and v.setting == c.setting
    assert claim_verdict("D1", HOLDS, "ev", kind=TestKind.DERIVED).setting == ""
    with pytest.raises(KeyError):
        claim_verdict("P1-99", HOLDS, "ev", kind=TestKind.PAPER)


def test_untested_names_what_a_test_needs():
    rows = {v.claim: v for v in untested({"D2"}, existing={"identities"})}
    assert "D2" not in rows and "gave no verdict" in rows["D1"].evidence
    assert "no study tests it yet" in rows["P1-18"].evidence
    assert "training" in rows["P1-18"].evidence and rows["P1-18"].kind == TestKind.PROXY
    assert {v.claim for v in UNTESTED} <= set(claims.CLAIMS)


def _fake_study(name, value):
    """A minimal study module: one claim that holds iff the measured value is small."""
    import types

    import xarray as xr

    mod = types.SimpleNamespace(NAME=name, TITLE=f"Study {name}", PRESETS={"quick": {}})
    mod.run = lambda: xr.Dataset({"error": ((), value)})
    mod.plot = lambda ds, figdir: []
    mod.verdicts = lambda ds: [
        Row(
            f"D{1 if name == 'a' else 2}",
            "derived",
            "B.4",
            name,
            judge(float(ds["error"]) < 1e-10),
            f"error {float(ds['error']):.1e}",
            "1e-10",
            kind=TestKind.DERIVED,
        )
    ]
    return mod


def test_partial_rerun_keeps_the_other_studies_from_saved_data(tmp_path, monkeypatch):
    import precond_lab.study as study

    mods = {"a": _fake_study("a", 1e-15), "b": _fake_study("b", 0.5)}
    monkeypatch.setattr(
        study, "study_modules", lambda only=None: [mods[o] for o in (only or sorted(mods))]
    )
    figs, report = tmp_path / "figs", tmp_path / "REPORT.md"
    study.reproduce("quick", figdir=figs, report=report, log=lambda *a: None)
    mods["a"] = _fake_study("a", 2e-3)  # a changes and is rerun alone
    records = study.reproduce("quick", only=["a"], figdir=figs, report=report, log=lambda *a: None)
    text = report.read_text()
    assert [r["name"] for r in records] == ["a", "b"]
    assert "| derived | **does not hold** | error 2.0e-03 |" in text  # D1, rerun
    assert "| derived | **does not hold** | error 5.0e-01 |" in text  # D2, from saved data
    assert "from saved data: quick preset" in text


def test_saved_data_of_an_older_study_version_is_an_error_row_not_a_crash(tmp_path, monkeypatch):
    import precond_lab.study as study

    mods = {"a": _fake_study("a", 1e-15), "b": _fake_study("b", 0.5)}
    monkeypatch.setattr(
        study, "study_modules", lambda only=None: [mods[o] for o in (only or sorted(mods))]
    )
    figs, report = tmp_path / "figs", tmp_path / "REPORT.md"
    study.reproduce("quick", figdir=figs, report=report, log=lambda *a: None)
    mods["b"].verdicts = lambda ds: [ds["renamed_variable"]]  # b's data no longer fits
    records = study.reproduce("quick", only=["a"], figdir=figs, report=report, log=lambda *a: None)
    assert "does not fit this version" in records[1]["error"] and "--only b" in records[1]["error"]
    assert "| b | — | — | — | error |" in report.read_text()


def test_a_damaged_saved_dataset_is_named_and_rebuilt(tmp_path, monkeypatch):
    """Issue 23: a truncated figures/data/b.nc made every ``reproduce --only a`` fail."""
    import xarray as xr

    import precond_lab.study as study

    mods = {"a": _fake_study("a", 1e-15), "b": _fake_study("b", 0.5)}
    monkeypatch.setattr(
        study, "study_modules", lambda only=None: [mods[o] for o in (only or sorted(mods))]
    )
    figs, report = tmp_path / "figs", tmp_path / "REPORT.md"
    study.reproduce("quick", figdir=figs, report=report, log=lambda *a: None)
    saved = figs / "data" / "b.nc"
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 3])
    logged = []
    records = study.reproduce("quick", only=["a"], figdir=figs, report=report, log=logged.append)
    assert [r["name"] for r in records] == ["a", "b"] and not any(r["error"] for r in records)
    assert any(f"saved data {saved} cannot be read" in str(m) for m in logged), logged
    assert (figs / "data" / "b.nc.damaged").exists()
    with xr.open_dataset(saved) as ds:  # rebuilt by running b
        assert float(ds["error"]) == 0.5
    assert "| derived | **does not hold** | error 5.0e-01 |" in report.read_text()


def test_reproduce_writes_every_file_through_a_rename(tmp_path, monkeypatch):
    """Figures, the study's Dataset and the report are never written in place."""
    import os

    import matplotlib.pyplot as plt

    import precond_lab.study as study
    from precond_lab import plotting

    mod = _fake_study("a", 1e-15)
    mod.plot = lambda ds, figdir: plotting.save(plt.figure(), Path(figdir) / "a_fig")
    monkeypatch.setattr(study, "study_modules", lambda only=None: [mod])
    renamed = []
    real_replace = os.replace

    def replace(src, dst):
        renamed.append(Path(dst).name)
        assert Path(src).parent == Path(dst).parent and Path(src).name.startswith(".")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    figs, report = tmp_path / "figs", tmp_path / "REPORT.md"
    study.reproduce("quick", figdir=figs, report=report, log=lambda *a: None)
    assert sorted(renamed) == ["REPORT.md", "a.nc", "a_fig.pdf", "a_fig.png"]
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temporary left
    plt.close("all")


# ---- issue 22: the idioms every study shares -------------------------------------------


def test_verdict_is_a_str_enum_and_rows_convert_text():
    from precond_lab.study import Verdict

    assert Verdict.HOLDS == "holds" and f"{Verdict.FAILS}" == "does not hold"
    row = claim_verdict("P3-1", "partially holds", "e", kind=TestKind.DERIVED)
    assert row.verdict is Verdict.PARTIAL


def test_rules_take_the_registry_text_and_a_broken_rule_is_an_error_row():
    from precond_lab import claims
    from precond_lab.study import Outcome, Rule, Verdict, verdicts_from

    rules = [
        Rule("P3-1", TestKind.PROXY, lambda ds: Outcome(Verdict.HOLDS, f"x = {ds['x']}")),
        Rule("P3-2", TestKind.DERIVED, lambda ds: ds["missing"], tolerance="t"),
    ]
    ok, broken = verdicts_from({"x": 3}, rules)
    assert (ok.verdict, ok.evidence) == (Verdict.HOLDS, "x = 3")
    assert ok.statement == claims.claim("P3-1").statement
    assert ok.location == claims.claim("P3-1").location
    assert ok.setting == claims.claim("P3-1").setting  # a proxy states its setting
    assert broken.verdict is Verdict.ERROR and "KeyError" in broken.evidence
    assert broken.tolerance == "t"


def test_config_base_names_presets_and_stores_its_fields():
    import dataclasses

    from precond_lab import study

    @dataclasses.dataclass(frozen=True)
    class Cfg(study.Config):
        steps: int = 3
        sizes: tuple = (4, 8)
        flag: bool = True

    presets = {"test": Cfg(), "quick": Cfg(steps=10)}
    assert Cfg(steps=10).preset_name(presets) == "quick"
    assert Cfg(steps=11).preset_name(presets) == "custom"
    assert Cfg().replace(steps=10) == presets["quick"]
    ds = study.dataset(
        {"v": (("n",), [1.0, 2.0])},
        {"n": [0, 1]},
        title="T",
        name="t",
        config=Cfg(),
        presets=presets,
        started=0.0,
    )
    assert ds.attrs["preset"] == "test" and ds.attrs["study"] == "t"
    assert ds.attrs["config_steps"] == 3 and ds.attrs["config_sizes"] == "[4, 8]"
    assert ds.attrs["config_flag"] == 1 and ds.attrs["elapsed_s"] > 0
    assert "library_version" in ds.attrs
    ds.to_netcdf(Path(tempfile.mkdtemp()) / "t.nc")  # every attribute is netCDF-safe


def test_grid_runs_fn_on_every_point_and_checks_shapes():
    from precond_lab import study

    calls = []

    def fn(a, b):
        calls.append((a, b))
        return {"s": a * 10 + b, "curve": [a, b, a + b], "name": f"{a}{b}"}

    ds = study.grid({"a": [1, 2], "b": [3, 4, 5]}, fn, inner={"step": [0, 1, 2]})
    assert calls == [(1, 3), (1, 4), (1, 5), (2, 3), (2, 4), (2, 5)]  # last dim fastest
    assert ds["s"].dims == ("a", "b") and int(ds["s"].sel(a=2, b=4)) == 24
    assert ds["curve"].dims == ("a", "b", "step")
    assert list(ds["curve"].sel(a=2, b=5).values) == [2, 5, 7]
    assert ds["name"].sel(a=1, b=5).item() == "15"
    with pytest.raises(ValueError, match=r"grid: curve at \{'a': 1\} has shape \(2,\)"):
        study.grid({"a": [1]}, lambda a: {"curve": [1, 2]}, inner={"step": [0, 1, 2]})
    with pytest.raises(ValueError, match="every dimension needs values"):
        study.grid({"a": []}, fn)


def test_grid_named_inner_dims_and_missing_points():
    import numpy as np

    from precond_lab import study

    def fn(a):
        if a == 2:
            return {}  # e.g. a model without this layer slot
        return {"m": (("j",), [1.0, 2.0]), "k": [a, a, a]}

    ds = study.grid({"a": [1, 2]}, fn, inner={"i": [0, 1, 2], "j": [0, 1]})
    assert ds["m"].dims == ("a", "j") and ds["k"].dims == ("a", "i")
    assert np.isnan(ds["m"].sel(a=2)).all() and float(ds["k"].sel(a=1, i=2)) == 1.0
    with pytest.raises(ValueError, match=r"names dims \['z'\] not in inner"):
        study.grid({"a": [1]}, lambda a: {"m": (("z",), [1.0])}, inner={"i": [0]})


def test_rule_outcomes_add_data_dependent_tolerance_and_setting_or_nothing():
    from precond_lab.study import Outcome, Rule, Verdict, verdicts_from

    rules = [
        Rule("P3-1", TestKind.PROXY, lambda ds: Outcome(Verdict.HOLDS, "e", "t2", "s2"), "t1"),
        Rule("P3-2", TestKind.PROXY, lambda ds: None),
    ]
    (row,) = verdicts_from({}, rules)
    assert (row.tolerance, row.setting) == ("t2; t1", "s2")


def test_grid_keeps_the_dims_of_dataarray_values():
    import numpy as np
    import xarray as xr

    from precond_lab import study

    def fn(a):
        return xr.Dataset(
            {"u": ("k", np.arange(3.0) * a), "v": (("r", "k"), np.ones((2, 3)) * a)},
            coords={"k": [10, 20, 30]},
        )

    ds = study.grid({"a": [1, 2]}, fn)
    assert ds["u"].dims == ("a", "k") and ds["v"].dims == ("a", "r", "k")
    assert list(ds["k"].values) == [10, 20, 30] and float(ds["u"].sel(a=2, k=30)) == 4.0
    first = r"grid: u at \{'a': 2\} has shape \(3,\); at the first point \(2,\)"
    with pytest.raises(ValueError, match=first):
        study.grid({"a": [1, 2]}, lambda a: {"u": xr.DataArray(np.ones(a + 1), dims="k")})
