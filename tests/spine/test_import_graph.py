"""The import graph: data flows one way, so no module imports a layer above its own, and no
study imports another study or a private name of a precond_lab subpackage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "precond_lab"

#: Layers, bottom first: a module may import its own layer and those below it.
LAYERS = [
    {"_version", "errors", "schema", "provenance", "_validation", "reference", "timing", "claims"},
    {"_trace_power", "_atomic", "_help", "_progress", "_lazy"},  # standard library / NumPy only
    {"linalg"},
    {"structures", "targets"},
    {"estimators", "metrics", "methods"},
    {"capture", "online", "sweep", "heldout", "finite_sample", "interop", "quadratic"},
    {"identities"},
    {"optim"},
    {"train", "tuning", "tasks"},
    {"plotting", "evaluate", "demo"},
    {"study", "cli", "__init__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(path: Path) -> str:
    """The top-level unit of a package file: ``precond_lab/sweep/loop.py`` → ``sweep``."""
    rel = path.relative_to(PKG).with_suffix("")
    return rel.parts[0]


def _imports(path: Path, package: list[str]):
    """``(lineno, absolute dotted module, imported names)`` of every import in a file.

    ``package`` is the dotted package the file sits in (``["precond_lab", "sweep"]``), to
    resolve relative imports; ``from . import x`` yields the module ``package.x``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if not node.level:
                yield node.lineno, node.module or "", names
                continue
            base = ".".join(package[: len(package) - node.level + 1])
            if node.module is None:
                for n in names:  # each name is a module
                    yield node.lineno, f"{base}.{n}", []
            else:
                yield node.lineno, f"{base}.{node.module}", names


def _package_imports(path: Path):
    rel = path.relative_to(PKG)
    return _imports(path, ["precond_lab", *rel.parts[:-1]])


def _target_unit(mod: str) -> str | None:
    parts = mod.split(".")
    if parts[0] != "precond_lab":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in PKG.rglob("*.py")}
    assert units <= set(RANK), sorted(units - set(RANK))


def test_no_module_imports_upward():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        unit = _unit(path)
        for line, mod, _ in _package_imports(path):
            target = _target_unit(mod)
            if target is None or target == unit:
                continue
            if RANK[target] > RANK[unit]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({unit}) imports {mod} ({target})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


#: Private modules shared by the whole package (helpers, not a layer's internals).
SHARED_PRIVATE = (
    "_version", "_validation", "_trace_power", "_atomic", "_help", "_progress", "_lazy",
)  # fmt: skip


def _private(mod: str, names: list[str]) -> list[str]:
    parts = mod.split(".")
    hits = [mod] if any(p.startswith("_") and not p.startswith("__") for p in parts) else []
    return hits + [f"{mod}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]


def test_no_private_imports_across_subpackages():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        unit = _unit(path)
        for line, mod, names in _package_imports(path):
            target = _target_unit(mod)
            if target is None or target == unit or target in SHARED_PRIVATE:
                continue
            for hit in _private(mod, names):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {hit}")
    assert not bad, "private names of another subpackage:\n" + "\n".join(bad)


STUDIES = sorted((ROOT / "studies").glob("*.py"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_studies_import_no_study_and_nothing_private(path):
    bad = []
    for line, mod, names in _imports(path, ["studies"]):
        modules = [f"{mod}.{n}" for n in names] if mod == "studies" else [mod]
        for m in modules:  # "from studies import x": x is a module of the folder
            if m.split(".")[0] == "studies" and m not in ("studies._setups",):
                bad.append(f"{path.name}:{line} imports the study {m}")
        if mod.startswith("precond_lab"):
            bad += [f"{path.name}:{line} imports {h}" for h in _private(mod, names)]
    assert not bad, "\n".join(bad)
