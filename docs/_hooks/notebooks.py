"""mkdocs hook: serve the notebooks of ``notebooks/`` (jupytext ``.py`` files) as pages.

The notebooks live next to the package, not under ``docs/``; this hook adds each
``notebooks/NN_*.py`` to the site's files as ``notebooks/NN_*.py``, so mkdocs-jupyter
executes and renders it (with its figures) like a page of the docs.

Executed cells can print paths of the machine that built the site (a warning names its
source file, a temporary folder its location): ``on_post_page`` rewrites them in notebook
pages as ``<repo>/…``, ``<site-packages>/…``, ``<tmp>/…`` and ``~/…``.
"""

from __future__ import annotations

import os
import re
import site
import sysconfig
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]


def on_config(config):
    # The notebooks' kernels (started by mkdocs-jupyter, they inherit this environment)
    # print tqdm's "IProgress not found" warning when a library imports tqdm.auto without
    # ipywidgets installed; precond_lab's own bars use the text bar there
    # (precond_lab._progress). The warning is harmless and says nothing about the page.
    ignore = "ignore:IProgress not found"
    current = os.environ.get("PYTHONWARNINGS", "")
    if ignore not in current:
        os.environ["PYTHONWARNINGS"] = f"{current},{ignore}" if current else ignore
    return config


@event_priority(100)  # before mkdocs-jupyter wraps notebook files
def on_files(files, config):
    for path in sorted((ROOT / "notebooks").glob("[0-9]*.py")):
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def _build_paths() -> list[tuple[str, str]]:
    """``(path prefix, placeholder)`` pairs, longest prefix first."""
    pairs = [(str(ROOT), "<repo>")]
    for key in ("purelib", "platlib"):
        pairs.append((sysconfig.get_paths()[key], "<site-packages>"))
    pairs += [(p, "<site-packages>") for p in site.getsitepackages()]
    pairs.append((os.path.realpath(tempfile.gettempdir()), "<tmp>"))
    pairs.append((tempfile.gettempdir(), "<tmp>"))
    pairs.append((str(Path.home()), "~"))
    seen = {}
    for prefix, name in pairs:
        if prefix and prefix not in ("/", ".") and prefix not in seen:
            seen[prefix] = name
    return sorted(seen.items(), key=lambda kv: -len(kv[0]))


def scrub_paths(html: str) -> str:
    """``html`` with the build machine's paths replaced by placeholders."""
    for prefix, name in _build_paths():
        html = re.sub(re.escape(prefix) + r"(?=[/\\\s\"'<:]|$)", name, html)
    return html


def on_post_page(output, page, config):
    if page.file.src_uri.startswith("notebooks/"):
        return scrub_paths(output)
    return output
