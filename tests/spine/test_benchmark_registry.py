"""The core benchmark lists every registered estimator (hand-written item or generic)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from precond_lab import estimators as est

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_benchmark_covers_the_registry():
    import bench_core

    prob = bench_core.make_problem("dense", 4, 3, 16, 1, "float64", 0, None)
    cfg = SimpleNamespace(large_iters=5, dense_power_steps=(1,), large_power_steps=(1,))
    names = {it.name.split("(")[0] for it in bench_core.estimator_items(prob, cfg)}
    assert set(est.ESTIMATORS) <= names, set(est.ESTIMATORS) - names
