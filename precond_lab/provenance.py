"""One provenance helper for every Dataset, JSON file and store that precond_lab writes.

``make_attrs`` returns attributes that netCDF and Zarr accept (strings, ints and
floats only: no dicts, booleans or None), so every producer — the sweep, the studies,
the precision harness, the capture store, the benchmarks — records the same facts under
the same names.
"""

from __future__ import annotations

import datetime
import platform
from pathlib import Path
from typing import Any

from ._version import __version__

__all__ = ["make_attrs", "device_description"]


def device_description() -> str:
    """``"<platform>:<device kind> x<count>"`` of JAX's default backend, e.g. ``"cpu:cpu x1"``."""
    import jax

    devs = jax.devices()
    return f"{devs[0].platform}:{devs[0].device_kind} x{len(devs)}"


def _plain(value: Any):
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def make_attrs(
    title: str | None = None,
    *,
    seed: int | None = None,
    preset: str | None = None,
    source: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Provenance attributes: library and dependency versions, device, date, and ``extra``.

    Args:
        title: what the Dataset is (``"precond_lab evaluation sweep"``).
        seed: the random seed behind the data, if any.
        preset: the study preset (``"quick"``, ``"full"``, ``"test"``), if any.
        source: where the data came from (a store path, ``"in-memory"``, a model name).
        **extra: further attributes; values are turned into netCDF-safe scalars
            (booleans to 0/1, sequences to comma-joined strings, others to ``str``).

    Returns:
        A dict with ``library``, ``library_version``, ``python_version``,
        ``jax_version``, ``jaxlib_version``, ``numpy_version``, ``xarray_version``,
        ``machine``, ``device``, ``x64``, ``created_utc``, and the optional keys given.
    """
    import jax
    import jaxlib
    import numpy as np
    import xarray as xr

    attrs: dict[str, Any] = {}
    if title is not None:
        attrs["title"] = str(title)
    attrs.update(
        {
            "library": "precond_lab",
            "library_version": __version__,
            "python_version": platform.python_version(),
            "jax_version": jax.__version__,
            "jaxlib_version": getattr(jaxlib, "__version__", "unknown"),
            "numpy_version": np.__version__,
            "xarray_version": xr.__version__,
            "machine": f"{platform.system()} {platform.machine()}",
            "device": device_description(),
            "x64": int(bool(jax.config.read("jax_enable_x64"))),
            "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
    )
    for key, value in (("seed", seed), ("preset", preset), ("source", source)):
        if value is not None:
            attrs[key] = _plain(value)
    for key, value in extra.items():
        attrs[key] = _plain(value)
    return attrs


def cache_root() -> Path:
    """Where studies cache captures and tuning runs: ``$PRECOND_LAB_CACHE``, else
    ``<clone>/.precond_lab_cache``."""
    import os

    default = Path(__file__).resolve().parents[1] / ".precond_lab_cache"
    return Path(os.environ.get("PRECOND_LAB_CACHE", default))
