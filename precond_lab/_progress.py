"""The progress bar every long job shows: tqdm's notebook bar where it can draw one.

``tqdm.auto`` picks the notebook widget inside Jupyter and warns "IProgress not found"
(with its source path) when ``ipywidgets`` is missing, the executed docs notebooks'
case; there the text bar is used instead, without the warning.
"""

from __future__ import annotations

from typing import Any

__all__ = ["tqdm"]


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """A ``tqdm`` bar: ``tqdm.auto``'s where ``ipywidgets`` is installed, else the text bar."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        from tqdm.std import tqdm as bar
    else:
        from tqdm.auto import tqdm as bar
    return bar(*args, **kwargs)
