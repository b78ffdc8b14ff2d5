"""The interleaved timing helper: rounds, ratios and the inconclusive rule."""

import pytest

from precond_lab import timing


def _fixed(seq):
    it = iter(seq)
    return lambda: next(it)


def test_interleaved_counts_and_warmup():
    calls = {"a": 0, "b": 0}

    def op(k):
        def f():
            calls[k] += 1

        return f

    t = timing.interleaved({"a": op("a"), "b": op("b")}, repeats=5, warmup=2)
    assert calls == {"a": 7, "b": 7}
    assert len(t.seconds["a"]) == 5 and len(t.warmup["b"]) == 2
    d = t.as_dict()
    assert d["a"]["repeats"] == 5 and d["a"]["q25_s"] <= d["a"]["median_s"] <= d["a"]["q75_s"]


def test_too_few_repeats_is_an_error():
    with pytest.raises(ValueError, match="repeats must be ≥ 5"):
        timing.interleaved({"a": lambda: None}, repeats=3)
    with pytest.raises(ValueError, match="no operations"):
        timing.interleaved({})


def test_ratio_and_verdict():
    t = timing.Timings(
        seconds={"x": [2.0, 4.0, 6.0, 8.0, 10.0], "y": [1.0, 1.0, 1.0, 1.0, 1.0]},
        warmup={"x": [], "y": []},
    )
    r = timing.ratio(t, "x", "y")
    assert r.median == 6.0 and r.low == 4.0 and r.high == 8.0
    assert timing.ratio_verdict(r, 3.0) == "above"
    assert timing.ratio_verdict(r, 9.0) == "below"
    assert timing.ratio_verdict(r, 6.0) == "inconclusive"
    assert "6.00×" in str(r)
