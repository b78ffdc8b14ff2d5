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
