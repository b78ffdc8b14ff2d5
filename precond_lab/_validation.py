"""Input checks shared by targets, estimators and metrics.

Every check raises an error whose message names the problem (what, where, which
shape or dtype) so that bad input never turns into a silent NaN downstream.
"""

from __future__ import annotations

import numpy as np

from .errors import (
    DegenerateInputError,
    FitNeedsDampingError,
    NonFiniteError,
    NotPositiveDefiniteError,
    UnsupportedDtypeError,
)

__all__ = [
    "FitNeedsDampingError",
    "NonFiniteError",
    "check_float_dtype",
    "check_finite",
    "check_damped_spectrum",
    "check_number",
    "check_target_scale",
    "first_nonfinite",
]

_HALF = ("float16", "bfloat16")


def check_float_dtype(dtype, what: str, *, allow_half: bool = False) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype if it is a real floating type, else raise.

    Integer, boolean and complex inputs are rejected rather than silently cast:
    a cast hides whether the caller meant float32 or float64 precision. Half precision
    (float16, bfloat16) is rejected too unless ``allow_half`` (only the matrix functions
    of ``precond_lab.linalg`` run at it): targets, estimators and metrics need
    float32 or float64 reductions and JAX's linear algebra does not run at half precision.

    Raises:
        TypeError: not a real floating dtype.
        UnsupportedDtypeError: half precision without ``allow_half``.
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{what} must be a real floating array; got dtype {dtype!r}") from None
    if dt.name in _HALF:
        if allow_half:
            return dt
        raise UnsupportedDtypeError(
            f"{what} has dtype {dt.name}, which targets, estimators and metrics do not support "
            f"(reductions and eigendecompositions need float32 or float64); upcast "
            f"explicitly, e.g. x.astype(np.float32) (nothing is upcast silently)."
        )
    if dt.kind != "f":
        raise TypeError(
            f"{what} must have a real floating dtype (float64, float32); got {dt.name}. Cast "
            f"explicitly, e.g. x.astype(np.float32)."
        )
    return dt


def check_number(
    value,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> float | int:
    """Return ``value`` as a float (or int) after checking its type and range.

    ``low``/``high`` bound the range (``None``: unbounded), open at a side with
    ``low_open``/``high_open``. The messages name the argument and its valid range.

    Raises:
        TypeError: not a real number (a string, None, a complex, an array of size > 1),
            or not an integer when ``integer``.
        ValueError: NaN, or outside the range.
    """
    kind = "an integer" if integer else "a real number"
    if isinstance(value, (str, bytes, bool)) or value is None or np.size(value) != 1:
        raise TypeError(f"{name} must be {kind}; got {value!r}")
    arr = np.asarray(value).reshape(())
    if arr.dtype.kind not in ("iu" if integer else "iuf"):
        raise TypeError(f"{name} must be {kind}; got {value!r} ({arr.dtype})")
    v = int(arr) if integer else float(arr)
    too_low = low is not None and (v < low or (low_open and v == low))
    too_high = high is not None and (v > high or (high_open and v == high))
    if not np.isfinite(v) or too_low or too_high:
        left = "(-inf" if low is None else f"{'(' if low_open else '['}{low:g}"
        right = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be {kind} in {left}, {right}; got {value!r}")
    return v


def check_target_scale(trace: float, dtype, nonzero: bool, what: str = "target") -> None:
    """Raise when ``tr Σ`` shows overflow, underflow or an all-zero target.

    Args:
        trace: ``tr Σ = Σ_k w_k ‖G_k‖²`` computed at ``dtype``.
        dtype: the dtype of the computation.
        nonzero: whether the samples themselves are not all zero.
        what: name used in the messages.

    Raises:
        NonFiniteError: ``tr Σ`` overflowed (samples finite but their squares are not).
        DegenerateInputError: ``tr Σ`` underflowed to 0 although samples are non-zero,
            or the target is zero (all samples, or all weights, zero).
    """
    name = np.dtype(dtype).name
    fmax = float(np.finfo(np.dtype(dtype)).max) if np.dtype(dtype).kind == "f" else np.inf
    if not np.isfinite(trace):
        raise NonFiniteError(
            f"{what}: tr Σ = Σ w‖G‖² overflows {name} (its largest value is {fmax:.3g}) "
            f"although the samples are finite: rescale the samples (e.g. divide by their "
            f"largest magnitude; the fits are scale-equivariant) or use float64."
        )
    if trace == 0 and nonzero:
        raise DegenerateInputError(
            f"{what}: tr Σ = Σ w‖G‖² underflows to 0 in {name} although the samples are not "
            f"zero: rescale the samples (e.g. divide by their largest magnitude) or use float64."
        )
    if trace == 0:
        raise DegenerateInputError(
            f"{what}: target zero, tr Σ = 0 (every sample, or every weight, is zero); no "
            "estimator or metric is defined for it."
        )


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
    """Raise ``NonFiniteError`` naming the first offending index along axis 0."""
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


def check_damped_spectrum(spectrum, damping: float) -> None:
    """Raise unless ``Σ + λI`` is positive definite, given ``Σ``'s ``Spectrum``.

    ``Σ`` is indefinite when some sample weights are negative (a difference of second
    moments); the message gives the smallest eigenvalue and the damping that would fix it.

    Raises:
        NotPositiveDefiniteError: the smallest eigenvalue of ``Σ + λI`` is ``≤ 0``.
    """
    vals = np.asarray(spectrum.values, np.float64)
    low = float(vals.min()) if vals.size else np.inf
    if spectrum.rank < spectrum.dim:
        low = min(low, float(spectrum.floor))
    tol = 1e3 * float(np.finfo(vals.dtype).eps) * (float(np.abs(vals).max()) if vals.size else 0)
    if low < -tol and low + damping <= 0:  # (PSD but singular with λ = 0: needs damping)
        raise NotPositiveDefiniteError(
            f"Σ + λI is not positive definite: its smallest eigenvalue is {low + damping:.3e} "
            f"(smallest eigenvalue of Σ {low:.3e}, damping λ = {damping:g}). Negative sample "
            f"weights make Σ indefinite: use non-negative weights, or damping λ > {-low:.3e}."
        )
