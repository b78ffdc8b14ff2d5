"""The study framework: verdict logic and the report's content."""

from pathlib import Path

from precond_lab.study import (
    FAILS,
    HOLDS,
    PARTIAL,
    UNTESTED,
    UNTESTED_VERDICT,
    Verdict,
    judge,
    write_report,
)


def test_judge():
    assert judge(True) == HOLDS
    assert judge(False) == FAILS
    assert judge(False, partial=True) == PARTIAL
    assert judge(True, partial=True) == HOLDS


def test_report_lists_every_claim_with_verdicts_figures_and_failures(tmp_path: Path):
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
                Verdict("P3-1", "P3", "Prop. 1", "identity", HOLDS, "err 1e-15", "1e-10"),
                Verdict("P1-14", "P1", "Sec. 3", "mis-scaled", FAILS, "KL 6.2 vs 0.02", "x2"),
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
    assert "| P3-1 | P3 | Prop. 1 | **holds** | err 1e-15 | 1e-10 |" in text
    assert "**does not hold**" in text and "KL 6.2 vs 0.02" in text
    for v in UNTESTED:  # untested claims are never dropped
        assert f"| {v.claim} |" in text
        assert v.verdict == UNTESTED_VERDICT
    assert "![quality](figs/quality.png)" in text and "quality.pdf" not in text
    assert "**The study failed:** `RuntimeError: boom`" in text
    assert "| broken | — | — | error |" in text
    # claims sorted: P1 before P3, derived identities last
    assert text.index("| P1-14 |") < text.index("| P3-1 |")


def _fake_study(name, value):
    """A minimal study module: one claim that holds iff the measured value is small."""
    import types

    import xarray as xr

    mod = types.SimpleNamespace(NAME=name, TITLE=f"Study {name}", PRESETS={"quick": {}})
    mod.run = lambda: xr.Dataset({"error": ((), value)})
    mod.plot = lambda ds, figdir: []
    mod.verdicts = lambda ds: [
        Verdict(
            f"D{1 if name == 'a' else 2}",
            "derived",
            "B.4",
            name,
            judge(float(ds["error"]) < 1e-10),
            f"error {float(ds['error']):.1e}",
            "1e-10",
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
    assert "| D1 | derived | B.4 | **does not hold** | error 2.0e-03 |" in text  # rerun
    assert "| D2 | derived | B.4 | **does not hold** | error 5.0e-01 |" in text  # from saved data
    assert "from saved data: quick preset" in text
