"""The docs/examples scripts (your Flax NNX model, your Equinox CNN, your PyTorch gradients)
run end to end, write their figures, and stay within their library-call budgets."""

import re
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
CASES = {
    "flax_nnx_mlp.py": ("flax", 15, "flax_nnx_mlp.png"),
    "equinox_cnn.py": ("equinox", 15, "equinox_cnn.png"),
    "pytorch_gradients.py": ("torch", 5, None),
}


def _library_calls(text: str) -> int:
    """Statements between the ``library calls`` markers."""
    block = text.split("# --- library calls")[1].split("# ------")[0]
    body = block.split("\n", 1)[1]
    return len(re.findall(r"^[^\s)\]}]", body, flags=re.M))


@pytest.mark.parametrize("script", list(CASES))
def test_example_runs(script, tmp_path, monkeypatch, capsys):
    module, budget, figure = CASES[script]
    pytest.importorskip(module)
    path = EXAMPLES / script
    assert _library_calls(path.read_text()) < budget
    argv = [str(path)] + ([str(tmp_path)] if figure else [])
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(path), run_name="__main__")
    printed = capsys.readouterr().out
    assert "frobenius_optimal" in printed
    if figure:
        assert (tmp_path / figure).stat().st_size > 10_000
        assert "rows = axes" in printed
