"""Each notebook in ``notebooks/`` exists as a jupytext ``py:percent`` file and an
``.ipynb`` with identical cells, so that editing one side only fails CI.

Fix a failure with ``jupytext --sync notebooks/*.py`` (see ``notebooks/README.md``).
"""

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
STEMS = sorted(
    {p.stem for p in NOTEBOOKS.glob("[0-9]*.py")} | {p.stem for p in NOTEBOOKS.glob("[0-9]*.ipynb")}
)


def _cells(path: Path) -> list[tuple[str, str]]:
    nb = jupytext.read(path)
    return [
        (c.cell_type, c.source.strip()) for c in nb.cells if c.cell_type in ("code", "markdown")
    ]


def test_notebooks_exist():
    assert STEMS, f"no notebooks found in {NOTEBOOKS}"


@pytest.mark.parametrize("stem", STEMS)
def test_pair_exists(stem):
    missing = [s for s in (".py", ".ipynb") if not (NOTEBOOKS / f"{stem}{s}").exists()]
    assert not missing, f"{stem}: missing {missing}; run `jupytext --sync notebooks/{stem}.*`"


@pytest.mark.parametrize("stem", STEMS)
def test_pair_in_sync(stem):
    py, ipynb = NOTEBOOKS / f"{stem}.py", NOTEBOOKS / f"{stem}.ipynb"
    if not (py.exists() and ipynb.exists()):
        pytest.skip("pair incomplete (reported by test_pair_exists)")
    a, b = _cells(py), _cells(ipynb)
    code_a = [s for t, s in a if t == "code"]
    code_b = [s for t, s in b if t == "code"]
    assert code_a == code_b, (
        f"{stem}: code cells of the .py and .ipynb differ; edit the .py and run "
        f"`jupytext --sync notebooks/{stem}.py`"
    )
    assert a == b, f"{stem}: markdown cells differ; run `jupytext --sync notebooks/{stem}.py`"


@pytest.mark.parametrize("stem", STEMS)
def test_ipynb_has_no_outputs_and_python3_kernel(stem):
    ipynb = NOTEBOOKS / f"{stem}.ipynb"
    if not ipynb.exists():
        pytest.skip("no .ipynb")
    nb = jupytext.read(ipynb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("outputs")]
    assert not dirty, f"{stem}.ipynb: cells {dirty} hold outputs; clear them before committing"
