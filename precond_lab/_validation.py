"""Input checks shared by targets, estimators and metrics.

Every check raises an error whose message names the problem (what, where, which
shape or dtype) so that bad input never turns into a silent NaN downstream.
"""

from __future__ import annotations

import numpy as np

from .errors import FitNeedsDampingError, NonFiniteError

__all__ = [
    "FitNeedsDampingError",
    "NonFiniteError",
    "check_float_dtype",
    "check_finite",
    "first_nonfinite",
]


def check_float_dtype(dtype, what: str) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype if it is a real floating type, else raise.

    Integer, boolean and complex inputs are rejected rather than silently cast:
    a cast hides whether the caller meant float32 or float64 precision.
    """
    dt = np.dtype(dtype)
    if dt.kind != "f" and dt.name not in ("bfloat16",):
        raise TypeError(
            f"{what} must have a real floating dtype (float64, float32, bfloat16, float16); "
            f"got {dt.name}. Cast explicitly, e.g. x.astype(np.float32)."
        )
    return dt


def first_nonfinite(x, axis0_name: str = "sample") -> tuple[int, int] | None:
    """Return ``(first_index, count)`` of slices along axis 0 that hold NaN/Inf, or None."""
    arr = np.asarray(x)
    if arr.ndim == 0:
        return None if np.isfinite(arr) else (0, 1)
    if arr.size == 0:  # nothing to check (emptiness is reported by the caller)
        return None
    bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
    if not bad.any():
        return None
    idx = np.flatnonzero(bad)
    return int(idx[0]), int(idx.size)


def check_finite(x, what: str, axis0_name: str = "sample", offset: int = 0) -> None:
    """Raise :class:`NonFiniteError` naming the first offending index along axis 0."""
    found = first_nonfinite(x, axis0_name)
    if found is None:
        return
    first, count = found
    arr = np.asarray(x)
    kind = "NaN" if np.isnan(arr.reshape(arr.shape[0], -1)[first]).any() else "Inf"
    raise NonFiniteError(
        f"{what} contains non-finite values ({kind}) at {axis0_name} index {first + offset}"
        f" ({count} offending {axis0_name}(s) in this block)."
    )
