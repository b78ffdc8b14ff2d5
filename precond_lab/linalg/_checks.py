"""Input checks, dtype support probing and the info record of the matrix functions.

Validation runs on the host in float64 NumPy (it only *decides* whether the input is
admissible; the matrix function itself runs at the requested dtype). Dtype support
is probed by calling the JAX routine on a tiny matrix: an error means
"unsupported", a result of another dtype means "silent upcast" — both are reported,
never papered over.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_float_dtype, check_number
from ..errors import (
    ConvergenceError,
    NonFiniteError,
    NotPositiveDefiniteError,
    NotSymmetricError,
    Status,
    UnsupportedDtypeError,
)

__all__ = [
    "DTYPES",
    "ConvergenceError",
    "MatrixFunctionInfo",
    "NonFiniteError",
    "STOP_STATUS",
    "NotPositiveDefiniteError",
    "NotSymmetricError",
    "UnsupportedDtypeError",
    "check_spd",
    "default_tol",
    "dtype_support",
    "power_of_two_scale",
    "require_dtype",
]

DTYPES: tuple[str, ...] = ("float64", "float32", "bfloat16", "float16")

_TOL = {"float64": 1e-12, "float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}


#: The ``Status`` of each ``MatrixFunctionInfo.stop`` reason.
STOP_STATUS: dict[str, Status] = {
    "converged": Status.OK,
    "floor": Status.OK,
    "direct": Status.OK,
    "max_iter": Status.NOT_CONVERGED,
    "stagnated": Status.STAGNATED,
    "nonfinite": Status.NONFINITE,
}


@dataclasses.dataclass(frozen=True)
class MatrixFunctionInfo:
    """What a matrix function did.

    Attributes:
        method: algorithm name (``"eigh"``, ``"newton"``, …).
        dtype: dtype of the input and of the result.
        compute_dtype: dtype the work ran at (differs from ``dtype`` only for an explicit
            ``upcast=``, never silently).
        iterations: iterations performed (0 for direct methods).
        converged: whether the residual met ``tol`` (True for direct methods that
            returned a finite result); the same as ``status is Status.OK``.
        status: the ``Status``: ``OK`` (stop ``"converged"``,
            ``"floor"`` or ``"direct"``), ``NOT_CONVERGED`` (``"max_iter"``),
            ``STAGNATED`` (``"stagnated"``) or ``NONFINITE`` (``"nonfinite"``).
        stop: why the method stopped: ``"converged"``, ``"floor"`` (the residual stopped
            decreasing at the dtype's precision floor, within ``100·tol``: counted as
            converged), ``"max_iter"`` (tolerance not met), ``"stagnated"`` (residual
            stopped decreasing above ``100·tol``; the best iterate is returned),
            ``"nonfinite"`` (NaN/Inf appeared; the last finite iterate is returned) or
            ``"direct"``.
        residuals: one residual per iteration (the method's docstring says which).
        matmuls: number of dense ``n×n`` matrix products performed (factorizations,
            triangular solves and QR are not counted; see ``factorizations``).
        factorizations: number of eigh / Cholesky / QR factorizations performed.
        orthogonality_loss: ``‖QᵀQ − I‖_F`` of the eigenbasis used (``eigh``,
            ``qr_refresh``; NaN for the other methods), a diagnostic not counted in
            ``matmuls``.
    """

    method: str
    dtype: str
    compute_dtype: str
    iterations: int
    converged: bool
    status: Status
    stop: str
    residuals: np.ndarray
    matmuls: int
    factorizations: int = 0
    orthogonality_loss: float = float("nan")


def default_tol(dtype) -> float:
    """Default residual tolerance of the iterations at ``dtype``."""
    return _TOL[np.dtype(dtype).name]


@functools.cache
def _probe(op: str, dtype_name: str, backend: str) -> str:
    dt = jnp.dtype(dtype_name)
    a = (jnp.eye(3) * 2.0 + 0.5).astype(dt)
    fns = {
        "eigh": lambda x: jnp.linalg.eigh(x)[0],
        "cholesky": jnp.linalg.cholesky,
        "qr": lambda x: jnp.linalg.qr(x)[0],
        "triangular_solve": lambda x: jax.scipy.linalg.solve_triangular(x, x, lower=True),
        "matmul": lambda x: x @ x,
    }
    try:
        out = jax.block_until_ready(fns[op](a))
    except Exception:  # noqa: BLE001 - any failure means "cannot run at this dtype"
        return "unsupported"
    return "native" if out.dtype == dt else f"upcast:{out.dtype.name}"


def dtype_support(op: str, dtype) -> str:
    """How JAX runs ``op`` at ``dtype`` on the default backend.

    Args:
        op: ``"eigh"``, ``"cholesky"``, ``"qr"``, ``"triangular_solve"`` or ``"matmul"``.
        dtype: the dtype to probe.

    Returns:
        ``"native"``, ``"unsupported"`` (JAX raises), or ``"upcast:<dtype>"`` (JAX
        returns another dtype than it was given).
    """
    return _probe(op, np.dtype(jnp.dtype(dtype)).name, jax.default_backend())


def require_dtype(ops: tuple[str, ...], dtype, method: str) -> None:
    """Raise ``UnsupportedDtypeError`` unless every op runs natively at ``dtype``."""
    for op in ops:
        support = dtype_support(op, dtype)
        if support != "native":
            raise UnsupportedDtypeError(
                f"method {method!r} needs jnp.linalg {op}, which is {support} at "
                f"{jnp.dtype(dtype).name} on backend {jax.default_backend()!r}; pass "
                f"upcast='float32' to run it at float32 explicitly (labelled as such)."
            )


def check_spd(a, damping: float = 0.0, what: str = "matrix", *, definite: bool = True) -> None:
    """Raise a named error unless ``a`` is a finite, symmetric, square (S)PD matrix.

    Args:
        a: the matrix (any float dtype; checked in float64 on the host).
        damping: ``λ``; definiteness is checked for ``a + λI``.
        what: name used in the error messages.
        definite: require ``a + λI`` positive definite (else only PSD within round-off).

    Raises:
        TypeError: non-float dtype, or a damping that is not a real number.
        ValueError: not a square non-empty 2-D matrix, or negative or NaN damping.
        NonFiniteError: NaN or Inf entries.
        NotSymmetricError: ``|a − aᵀ|`` above round-off of ``a``'s dtype.
        NotPositiveDefiniteError: indefinite, or singular when ``definite``.
    """
    dt = check_float_dtype(a.dtype, what, allow_half=True)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{what} must be a square 2-D matrix; got shape {tuple(a.shape)}")
    if a.shape[0] == 0:
        raise ValueError(f"{what} is empty (0×0)")
    damping = check_number(damping, "damping", low=0.0)
    x = np.asarray(jnp.asarray(a).astype(jnp.float64) if dt.name == "bfloat16" else a, np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        kind = "NaN" if np.isnan(x[i, j]) else "Inf"
        raise NonFiniteError(
            f"{what} contains non-finite values ({kind}) at entry ({i}, {j}); "
            f"{int(bad.sum())} non-finite entries in total."
        )
    scale = float(np.max(np.abs(x))) if x.size else 0.0
    asym = float(np.max(np.abs(x - x.T))) if x.size else 0.0
    eps = float(jnp.finfo(jnp.dtype(dt.name)).eps)
    if asym > 10 * eps * max(scale, np.finfo(np.float64).tiny):
        raise NotSymmetricError(
            f"{what} is not symmetric: max |A - Aᵀ| = {asym:.3e} vs max |A| = {scale:.3e} "
            f"(tolerance {10 * eps:.1e} relative at {dt.name}); symmetrize it explicitly."
        )
    shifted = 0.5 * (x + x.T) + damping * np.eye(x.shape[0])
    try:
        np.linalg.cholesky(shifted)
        return
    except np.linalg.LinAlgError:
        pass
    w = np.linalg.eigvalsh(shifted)
    tol = 10 * x.shape[0] * eps * max(abs(w).max(), np.finfo(np.float64).tiny)
    if w[0] < -tol:
        raise NotPositiveDefiniteError(
            f"{what} + {damping:g}·I is indefinite: smallest eigenvalue {w[0]:.3e}, largest "
            f"{w[-1]:.3e}; an inverse or fractional power is undefined."
        )
    if definite:
        raise NotPositiveDefiniteError(
            f"{what} + {damping:g}·I is singular to working precision (smallest eigenvalue "
            f"{w[0]:.3e}, largest {w[-1]:.3e}); pass damping > 0."
        )


def power_of_two_scale(a: jax.Array) -> float:
    """A power of two ``≥ max|a|`` (scaling by it is exact in every float format)."""
    mx = float(jnp.max(jnp.abs(a)))
    if mx == 0.0:
        return 1.0
    return float(2.0 ** np.ceil(np.log2(mx)))
