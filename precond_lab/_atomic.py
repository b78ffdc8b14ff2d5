"""Write a file atomically: into a temporary file in the same folder, then ``os.replace``.

A reader (or a crash, or Ctrl-C) never sees a half-written figure, Dataset or report: the
old file stays until the new one is complete.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    The temporary name keeps ``path``'s suffix (writers that pick a format by suffix
    still work) and starts with a dot; it is removed if ``write`` fails.

    Args:
        path: the destination.
        write: writes the complete file to the path it is given.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path, text: str) -> Path:
    """``Path(path).write_text(text)``, atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))
