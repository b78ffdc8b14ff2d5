"""mkdocs hook: serve the notebooks of ``notebooks/`` (jupytext ``.py`` files) as pages.

The notebooks live next to the package, not under ``docs/``; this hook adds each
``notebooks/NN_*.py`` to the site's files as ``notebooks/NN_*.py``, so mkdocs-jupyter
executes and renders it (with its figures) like a page of the docs.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]


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
