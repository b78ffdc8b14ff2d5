"""Public matrix functions: damped powers of SPD matrices by several methods.

``matrix_power(s, exponent, damping, method=...)`` computes ``(S + λI)^exponent`` and
returns it with a ``MatrixFunctionInfo``. Methods and the exponents they support:

=================  ==========================  ====================================
method             exponents                   needs
=================  ==========================  ====================================
``eigh``           any real                    ``eigh`` (float32/float64 in JAX)
``cholesky``       −1                          ``cholesky`` + triangular solves
``newton``         −1/r, r = 1, 2, 3, …        matmuls only (coupled Newton)
``newton_schulz``  −1, −1/2, +1/2              matmuls only
``if_shampoo``     −1                          matmuls only (IF-Shampoo update)
``qr_refresh``     any real                    ``qr`` (power step + QR from a basis)
=================  ==========================  ====================================

The work runs at the input's dtype. A method whose JAX routine does not support the
dtype raises ``UnsupportedDtypeError``; ``upcast="float32"`` runs it at float32
on purpose and says so in ``info.compute_dtype``. Nothing is upcast silently.
"""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_number
from ..errors import Status
from . import _direct, _iterative
from ._checks import (
    STOP_STATUS,
    ConvergenceError,
    MatrixFunctionInfo,
    check_spd,
    default_tol,
    power_of_two_scale,
    require_dtype,
)

__all__ = ["METHODS", "apply_matrix_power", "inverse_root", "matrix_power"]

METHODS: tuple[str, ...] = (
    "eigh",
    "cholesky",
    "newton",
    "newton_schulz",
    "if_shampoo",
    "qr_refresh",
)

_NEEDS = {
    "eigh": ("eigh",),
    "cholesky": ("cholesky", "triangular_solve"),
    "newton": ("matmul",),
    "newton_schulz": ("matmul",),
    "if_shampoo": ("matmul",),
    "qr_refresh": ("qr",),
}


def _root_index(exponent: float, method: str) -> int:
    frac = Fraction(exponent).limit_denominator(64)
    if exponent >= 0 or frac.numerator != -1 or abs(float(frac) - exponent) > 1e-12:
        raise ValueError(
            f"method {method!r} computes inverse r-th roots (exponent −1/r, r = 1, 2, …); "
            f"got exponent {exponent}. Use method='eigh' for other exponents."
        )
    return frac.denominator


def _check_exponent(method: str, exponent: float) -> None:
    allowed = {"cholesky": (-1.0,), "if_shampoo": (-1.0,), "newton_schulz": (-1.0, -0.5, 0.5)}
    if method in allowed and exponent not in allowed[method]:
        raise ValueError(
            f"method {method!r} supports exponents {allowed[method]}; got {exponent}. "
            f"Use method='eigh' (any exponent) or 'newton' (−1/r)."
        )


#: The keyword options each method accepts (anything else is a TypeError).
OPTIONS: dict[str, tuple[str, ...]] = {
    "if_shampoo": ("beta", "normalize"),
    "qr_refresh": ("basis", "steps"),
}


def _check_arguments(method, exponent, damping, tol, max_iter, options) -> None:
    """Types and ranges of every argument of ``matrix_power`` (named in the message)."""
    check_number(exponent, "exponent")
    check_number(damping, "damping", low=0.0)
    if tol is not None:
        check_number(tol, "tol", low=0.0)
    if max_iter is not None:
        check_number(max_iter, "max_iter", low=1, integer=True)
    valid = OPTIONS.get(method, ())
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for method {method!r}; its options: "
            f"{', '.join(valid) or 'none'} (by method: "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in OPTIONS.items())
            + ")"
        )
    if "steps" in options:
        check_number(options["steps"], "steps", low=1, integer=True)
    if "beta" in options:
        check_number(options["beta"], "beta", low=0.0, low_open=True)


def _orth_loss(q: jax.Array) -> float:
    eye = jnp.eye(q.shape[-1], dtype=q.dtype)
    return float(jnp.linalg.norm(q.T @ q - eye))


def _info(method, dtype, compute, iterations, stop, hist, matmuls, facts=0, orth=float("nan")):
    hist = np.asarray(jnp.asarray(hist, jnp.float32) if hist.dtype.itemsize < 4 else hist)
    hist = hist.astype(np.float64)
    status = STOP_STATUS[stop]
    return MatrixFunctionInfo(
        method=method,
        dtype=np.dtype(dtype).name,
        compute_dtype=np.dtype(compute).name,
        iterations=int(iterations),
        converged=status is Status.OK,
        status=status,
        stop=stop,
        residuals=hist,
        matmuls=int(matmuls),
        factorizations=int(facts),
        orthogonality_loss=float(orth),
    )


def _run(a, exponent, damping, method, tol, max_iter, options):
    """Dispatch at ``a.dtype``; returns ``(result, info)`` (result in ``a.dtype``)."""
    dt = a.dtype
    if method == "eigh":
        x, q, _ = _direct.eigh_power(a, float(exponent), damping)
        stop = "direct" if bool(jnp.all(jnp.isfinite(x))) else "nonfinite"
        return x, _info(method, dt, dt, 0, stop, jnp.zeros(0), 1, 1, _orth_loss(q))
    if method == "cholesky":
        x = _direct.cholesky_solve(a, jnp.eye(a.shape[0], dtype=dt), damping)
        stop = "direct" if bool(jnp.all(jnp.isfinite(x))) else "nonfinite"
        return x, _info(method, dt, dt, 0, stop, jnp.zeros(0), 0, 1)
    if method == "qr_refresh":
        steps = int(options.get("steps", 1))
        q0 = options.get("basis")
        q0 = jnp.eye(a.shape[0], dtype=dt) if q0 is None else jnp.asarray(q0, dt)
        q, d, hist = _direct.qr_eigen(a, q0, steps)
        x = (q * ((d + damping) ** exponent)[None, :]) @ q.T
        stop = "direct" if bool(jnp.all(jnp.isfinite(x))) else "nonfinite"
        info = _info(method, dt, dt, steps, stop, hist, 3 * steps + 2, steps, _orth_loss(q))
        return x, info
    # Matmul-only iterations on the power-of-two-normalised damped matrix.
    scale = max(power_of_two_scale(a), power_of_two_scale(jnp.asarray(damping)))
    an = a / scale + (damping / scale) * jnp.eye(a.shape[0], dtype=dt)
    tol = default_tol(dt) if tol is None else float(tol)
    if method == "newton":
        r = _root_index(exponent, method)
        max_iter = 100 if max_iter is None else int(max_iter)
        x, k, evals, stop, hist = _iterative.coupled_newton(an, r, max_iter, tol)
        per = _iterative.matmuls_per_step("newton", r)
    elif method == "newton_schulz":
        max_iter = 100 if max_iter is None else int(max_iter)
        if exponent == -1.0:
            x, k, evals, stop, hist = _iterative.newton_schulz_inverse(an, max_iter, tol)
            per = _iterative.matmuls_per_step("newton_schulz_inverse")
        else:
            (y, z), k, evals, stop, hist = _iterative.newton_schulz_sqrt(an, max_iter, tol)
            x = z if exponent < 0 else y
            per = _iterative.matmuls_per_step("newton_schulz_sqrt")
    elif method == "if_shampoo":
        max_iter = 500 if max_iter is None else int(max_iter)
        beta = float(options.get("beta", 1.0))
        normalize = bool(options.get("normalize", True))
        (x, _c), k, evals, stop, hist = _iterative.if_shampoo_inverse(
            an, beta, max_iter, tol, normalize
        )
        per = _iterative.matmuls_per_step("if_shampoo")
    else:  # pragma: no cover - guarded by matrix_power
        raise ValueError(method)
    x = x * (scale**exponent)
    stop = _iterative.STATUS[int(stop)]
    hist = hist[: int(evals)]
    if stop == "stagnated" and float(jnp.nanmin(hist.astype(jnp.float32))) <= 100 * tol:
        stop = "floor"
    if stop != "nonfinite" and not bool(jnp.all(jnp.isfinite(x))):
        stop = "nonfinite"
    matmuls = int(evals) * per + (1 if method == "if_shampoo" else 0)
    return x, _info(method, dt, dt, int(k), stop, hist, matmuls, 0)


def matrix_power(
    s,
    exponent: float,
    damping: float = 0.0,
    *,
    method: str = "eigh",
    upcast: str | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    check: bool = True,
    strict: bool = False,
    **options,
) -> tuple[jax.Array, MatrixFunctionInfo]:
    """``(S + λI)^exponent`` of a symmetric positive (semi)definite matrix.

    Args:
        s: symmetric ``d×d`` matrix at float64/float32/bfloat16/float16.
        exponent: the power (e.g. ``-0.5`` for the inverse square root, ``-1`` inverse).
        damping: ``λ ≥ 0`` added to the eigenvalues.
        method: one of ``METHODS`` (see the module docstring).
        upcast: ``None`` (run at ``s.dtype``, raise if unsupported) or a dtype name such
            as ``"float32"``: run at that dtype and cast the result back to ``s.dtype``.
        tol: residual tolerance of the iterations (default ``default_tol``).
        max_iter: iteration cap (default 100; 500 for ``if_shampoo``).
        check: validate the input (finite, symmetric, ``S + λI`` SPD); costs one float64
            Cholesky on the host.
        strict: raise ``ConvergenceError`` instead of returning an unconverged result.
        **options: ``beta`` and ``normalize`` for ``if_shampoo`` (default 1.0, True);
            ``basis`` (start basis, default I) and ``steps`` (default 1) for ``qr_refresh``.

    Returns:
        ``(result, info)``: the matrix at ``s.dtype`` and a ``MatrixFunctionInfo``.

    Raises:
        ValueError: unknown method, an exponent the method cannot compute, a NaN or
            out-of-range argument (``damping < 0``, ``tol < 0``, ``max_iter < 1``,
            ``steps < 1``, ``beta ≤ 0``).
        TypeError: an unknown keyword option (see ``OPTIONS``), or a non-number.
        UnsupportedDtypeError: the method's JAX routine does not run at ``s.dtype``.
        NotSymmetricError, NotPositiveDefiniteError, NonFiniteError: bad input.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    _check_arguments(method, exponent, damping, tol, max_iter, options)
    _check_exponent(method, float(exponent))
    if method == "newton":
        _root_index(float(exponent), method)
    s = jnp.asarray(s)
    if check:
        check_spd(s, damping, "S", definite=exponent < 0)
    in_dtype = s.dtype
    compute = jnp.dtype(upcast) if upcast is not None else in_dtype
    require_dtype(_NEEDS[method], compute, method)
    x, info = _run(
        s.astype(compute), float(exponent), float(damping), method, tol, max_iter, options
    )
    if compute != in_dtype:
        x = x.astype(in_dtype)
        info = MatrixFunctionInfo(**{**info.__dict__, "dtype": np.dtype(in_dtype).name})
    if strict and not info.converged:
        raise ConvergenceError(
            f"{method} did not converge at {info.compute_dtype}: status {info.status} "
            f"({info.stop}) after "
            f"{info.iterations} iterations (last residual "
            f"{info.residuals[-1] if info.residuals.size else float('nan'):.3e})."
        )
    return x, info


def inverse_root(
    s, p: float, damping: float = 0.0, **kwargs
) -> tuple[jax.Array, MatrixFunctionInfo]:
    """``(S + λI)^{-p}``: shorthand for ``matrix_power`` with ``exponent = -p``."""
    return matrix_power(s, -p, damping, **kwargs)


def apply_matrix_power(
    s, v, exponent: float, damping: float = 0.0, **kwargs
) -> tuple[jax.Array, MatrixFunctionInfo]:
    """``(S + λI)^exponent v`` for a ``d×k`` (or ``d``) right-hand side ``v``.

    Cholesky with exponent −1 solves directly (two triangular solves); every other
    method forms the matrix function and multiplies (one extra matmul in ``info``).
    """
    method = kwargs.get("method", "eigh")
    v = jnp.asarray(v)
    if method == "cholesky" and float(exponent) == -1.0 and kwargs.get("upcast") is None:
        s = jnp.asarray(s)
        if kwargs.get("check", True):
            check_spd(s, damping, "S")
        require_dtype(_NEEDS["cholesky"], s.dtype, "cholesky")
        y = _direct.cholesky_solve(s, v.astype(s.dtype), float(damping))
        stop = "direct" if bool(jnp.all(jnp.isfinite(y))) else "nonfinite"
        return y, _info("cholesky", s.dtype, s.dtype, 0, stop, jnp.zeros(0), 0, 1)
    x, info = matrix_power(s, exponent, damping, **kwargs)
    y = x @ v.astype(x.dtype)
    return y, MatrixFunctionInfo(**{**info.__dict__, "matmuls": info.matmuls + 1})
