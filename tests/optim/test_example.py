"""The documented example ``docs/examples/optim_kl_shampoo.py`` runs and KL-Shampoo trains."""

from __future__ import annotations

import math
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "optim_kl_shampoo.py"


def test_kl_shampoo_example_trains_a_flax_nnx_model(monkeypatch, capsys):
    pytest.importorskip("flax")
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "100"])
    ns = runpy.run_path(str(EXAMPLE), run_name="__main__")
    loss, accuracy, size = ns["results"]["kl_shampoo"]
    assert loss < 0.7 * math.log(10)  # from ≈ log 10 at the start
    assert accuracy > 0.5  # 10 classes
    assert size.floats > ns["results"]["adamw"][2].floats  # Kronecker factors and bases
    assert "kl_shampoo" in capsys.readouterr().out


def test_one_rule_per_method_example_runs(capsys):
    path = EXAMPLE.parent / "one_rule_per_method.py"
    runpy.run_path(str(path), run_name="__main__")
    assert "relative difference" in capsys.readouterr().out


def test_train_your_model_example_probes_the_optimiser(monkeypatch, capsys):
    path = EXAMPLE.parent / "train_your_model.py"
    monkeypatch.setattr(sys, "argv", [str(path), "20"])
    ns = runpy.run_path(str(path), run_name="__main__")
    result = ns["result"]
    assert not result.failed and result.probes is not None
    cos = result.probes.sel(metric="cosine", estimator="optimizer")
    assert cos.sizes["step"] == 2 and bool(((cos > -1) & (cos <= 1 + 1e-9)).all())
    assert "status ok" in capsys.readouterr().out
