"""Precision harness: errors of ``(S + λI)^{-p}`` against float64 ground truth.

Test matrices have known spectra, ``S = Q diag(λ) Qᵀ`` with ``Q`` Haar-random and
``λ`` geometric from 1 down to ``1/cond``, so the float64 truth
``Q diag((λ + damping)^{-p}) Qᵀ`` needs no eigensolver. Each method runs at each
dtype on ``S`` rounded to that dtype; a method whose JAX routine cannot run at a
dtype is recorded as ``unsupported`` and its explicitly upcast variant
(``"<method>@float32"``: input cast to float32, result cast back) is measured as a
separate method.
"""

from __future__ import annotations

import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..errors import Status
from ..provenance import make_attrs
from ._api import _NEEDS, METHODS, matrix_power
from ._checks import DTYPES, UnsupportedDtypeError, check_spd, dtype_support

__all__ = [
    "STATUS_CODES",
    "precision_cases",
    "precision_failure_rate",
    "precision_on_matrices",
    "precision_study",
    "spd_with_spectrum",
]

#: Integer codes of the ``status`` variable: ``Status(...).code -> Status(...).value``.
STATUS_CODES: dict[int, str] = {s.code: s.value for s in Status}
_UPCAST_METHODS = ("eigh", "cholesky", "qr_refresh")
#: A run that was attempted and failed (an input not SPD at the dtype counts as failed).
_FAIL = (Status.NOT_CONVERGED.code, Status.NONFINITE.code, Status.NOT_SPD.code)
#: A run that was attempted (the input was rounded to the dtype and judged).
_ATTEMPTED = (Status.OK.code, *_FAIL)


def spd_with_spectrum(
    dim: int, cond: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(S, Q, λ)`` with ``S = Q diag(λ) Qᵀ``, Haar ``Q`` and ``λ`` from 1 to ``1/cond``."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))[None, :]
    lam = np.geomspace(1.0, 1.0 / cond, dim)
    s = (q * lam) @ q.T
    return 0.5 * (s + s.T), q, lam


def _rel(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def _to64(x) -> np.ndarray:
    return np.asarray(jnp.asarray(x).astype(jnp.float32) if x.dtype.itemsize < 4 else x, np.float64)


def _method_plan(methods, dtypes):
    """``[(label, base method, upcast or None)]``; upcast variants for unsupported dtypes."""
    plan = [(m, m, None) for m in methods]
    for m in methods:
        if m in _UPCAST_METHODS and any(not _native(m, dt) for dt in dtypes):
            plan.append((f"{m}@float32", m, "float32"))
    return plan


def _native(method: str, dtype: str) -> bool:
    return all(dtype_support(op, dtype) == "native" for op in _NEEDS[method])


def _exponent_ok(method: str, p: float) -> bool:
    if method in ("cholesky", "if_shampoo"):
        return p == 1.0
    if method == "newton_schulz":
        return p in (1.0, 0.5)
    if method == "newton":
        return abs(1.0 / p - round(1.0 / p)) < 1e-12
    return True


def precision_study(
    *,
    methods: tuple[str, ...] = METHODS,
    dtypes: tuple[str, ...] = DTYPES,
    conds: tuple[float, ...] = (1e1, 1e3, 1e6),
    dims: tuple[int, ...] = (32, 128),
    dampings: tuple[float, ...] = (0.0, 1e-4),
    ps: tuple[float, ...] = (0.25, 0.5, 1.0),
    repeats: int = 3,
    seed: int = 0,
    qr_steps: int = 1,
    basis_perturbation: float = 1e-2,
) -> xr.Dataset:
    """Measure every method's error, failure rate, basis orthogonality and cost.

    ``qr_refresh`` starts from a warm basis: the float64 eigenbasis of
    ``S + basis_perturbation·‖S‖·E`` (``E`` symmetric Gaussian), as when a basis is
    refreshed every few optimizer steps, and takes ``qr_steps`` power steps.

    Args:
        methods: method names (see ``precond_lab.linalg.matrix_power``).
        dtypes: dtype names.
        conds: condition numbers of ``S`` (before damping).
        dims: matrix sizes.
        dampings: ``λ`` values.
        ps: powers ``p`` of ``(S + λI)^{-p}``.
        repeats: random matrices per configuration.
        seed: NumPy seed.
        qr_steps: power steps of ``qr_refresh``.
        basis_perturbation: relative perturbation giving ``qr_refresh``'s warm basis.

    Returns:
        Dataset with dims ``(method, dtype, cond, dim, damping, p, repeat)`` and variables
        ``rel_error`` (vs the truth of the float64 ``S``), ``rel_error_rounded_input`` (vs
        the float64 truth of ``S`` rounded to the dtype: the algorithm's own error),
        ``vec_rel_error`` (of ``(S+λI)^{-p} v`` for a Gaussian ``v``), ``status``
        (``Status.code`` integers, listed in the
        ``status_codes`` attribute: ``Status.from_code(c)`` reads one back; ``NOT_SPD`` is
        an input not SPD once rounded to the dtype, ``UNSUPPORTED_EXPONENT`` a power the
        method cannot compute, ``NOT_APPLICABLE`` a cell not run), ``iterations``,
        ``matmuls``, ``orthogonality_loss``, ``time_s``; plus ``failure_rate`` and
        ``nonfinite_rate`` (over repeats, counting only runs that were attempted) and
        ``median_time_s``. Select a method with
        ``ds.sel({"method": "newton"})`` (``sel(method=...)`` is xarray's own keyword).
    """
    if "float64" in dtypes and not jax.config.jax_enable_x64:
        raise RuntimeError(
            "float64 requested but jax_enable_x64 is off (JAX would silently use float32); "
            'call jax.config.update("jax_enable_x64", True) first.'
        )
    plan = _method_plan(methods, dtypes)
    labels = [lab for lab, _, _ in plan]
    shape = (len(plan), len(dtypes), len(conds), len(dims), len(dampings), len(ps), repeats)
    out = {
        k: np.full(shape, np.nan)
        for k in (
            "rel_error",
            "rel_error_rounded_input",
            "vec_rel_error",
            "iterations",
            "matmuls",
            "orthogonality_loss",
            "time_s",
        )
    }
    status = np.full(shape, Status.NOT_APPLICABLE.code, dtype=np.int8)
    rng = np.random.default_rng(seed)
    warmed: set = set()
    for ic, cond in enumerate(conds):
        for jd, dim in enumerate(dims):
            for rep in range(repeats):
                s64, q, lam = spd_with_spectrum(dim, cond, rng)
                v = rng.standard_normal((dim,))
                pert = rng.standard_normal((dim, dim))
                warm = np.linalg.eigh(
                    s64 + basis_perturbation * (pert + pert.T) / (2 * np.sqrt(dim))
                )[1]
                for kd, dt in enumerate(dtypes):
                    s_dt = jnp.asarray(s64).astype(dt)
                    s_rounded = _to64(s_dt)
                    w_r, q_r = np.linalg.eigh(s_rounded)
                    for ld, damp in enumerate(dampings):
                        try:
                            check_spd(s_dt, damp, "S at " + dt)
                            valid = True
                        except ValueError:
                            valid = False
                        for lp, p in enumerate(ps):
                            truth = (q * (lam + damp) ** (-p)) @ q.T
                            truth_r = (q_r * np.abs(w_r + damp) ** (-p)) @ q_r.T
                            for im, (label, method, upcast) in enumerate(plan):
                                idx = (im, kd, ic, jd, ld, lp, rep)
                                if upcast is not None and _native(method, dt):
                                    continue  # upcast variant only where the dtype is unsupported
                                if not _exponent_ok(method, p):
                                    status[idx] = Status.UNSUPPORTED_EXPONENT.code
                                    continue
                                if not valid:
                                    status[idx] = Status.NOT_SPD.code
                                    continue
                                opts = (
                                    {"basis": warm, "steps": qr_steps}
                                    if method == "qr_refresh"
                                    else {}
                                )
                                kw = dict(method=method, upcast=upcast, check=False, **opts)
                                try:
                                    key = (label, dt, dim, p)
                                    if key not in warmed:
                                        matrix_power(s_dt, -p, damp, **kw)
                                        warmed.add(key)
                                    t0 = time.perf_counter()
                                    x, info = matrix_power(s_dt, -p, damp, **kw)
                                    jax.block_until_ready(x)
                                    elapsed = time.perf_counter() - t0
                                except UnsupportedDtypeError:
                                    status[idx] = Status.UNSUPPORTED_DTYPE.code
                                    continue
                                x64 = _to64(x)
                                y64 = _to64(x @ jnp.asarray(v).astype(x.dtype))
                                finite = np.isfinite(x64).all()
                                status[idx] = _run_status(info.converged, finite).code
                                out["time_s"][idx] = elapsed
                                out["iterations"][idx] = info.iterations
                                out["matmuls"][idx] = info.matmuls
                                out["orthogonality_loss"][idx] = info.orthogonality_loss
                                if finite:
                                    out["rel_error"][idx] = _rel(x64, truth)
                                    out["rel_error_rounded_input"][idx] = _rel(x64, truth_r)
                                    out["vec_rel_error"][idx] = _rel(y64, truth @ v)
    dims_ = ("method", "dtype", "cond", "dim", "damping", "p", "repeat")
    coords = {
        "method": labels,
        "dtype": list(dtypes),
        "cond": list(conds),
        "dim": list(dims),
        "damping": list(dampings),
        "p": list(ps),
        "repeat": np.arange(repeats),
    }
    ds = xr.Dataset({k: (dims_, v) for k, v in out.items()}, coords=coords)
    ds["status"] = (dims_, status)
    attempted = np.isin(status, _ATTEMPTED)
    fails = np.isin(status, _FAIL)
    with np.errstate(invalid="ignore", divide="ignore"):
        ds["failure_rate"] = (
            dims_[:-1],
            np.where(attempted.any(-1), fails.sum(-1) / attempted.sum(-1), np.nan),
        )
        ds["nonfinite_rate"] = (
            dims_[:-1],
            np.where(attempted.any(-1), (status == 2).sum(-1) / attempted.sum(-1), np.nan),
        )
    ds["median_time_s"] = ds["time_s"].median("repeat")
    ds.attrs.update(_provenance(seed, qr_steps, basis_perturbation))
    return ds


def precision_on_matrices(
    matrices,
    *,
    methods: tuple[str, ...] = ("eigh", "eigh@float32", "newton", "newton_schulz", "if_shampoo"),
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16"),
    ps: tuple[float, ...] = (0.25, 0.5, 1.0),
    relative_damping: float = 1e-3,
    names=None,
) -> xr.Dataset:
    """``precision_study`` on given SPD matrices (e.g. real Shampoo factors ``L``, ``R``).

    Each matrix is symmetrised and scaled to trace 1 (scale-free, no float16 overflow) and
    damped by ``λ = relative_damping/d``; the truth is the float64 eigendecomposition of the
    matrix *rounded to the dtype* (the algorithm's own error). Every method is run at every
    dtype (``"<method>@float32"``: upcast), without an SPD check of the rounded input.

    Args:
        matrices: a sequence of ``(d, d)`` symmetric PSD arrays (sizes may differ).
        methods: method labels (``matrix_power`` methods, optionally ``@float32``).
        dtypes: dtype names. ps: powers ``p`` of ``(S + λI)^{-p}``.
        relative_damping: ``λ·d`` after the trace scaling (≥ 0).
        names: a name per matrix (default ``0, 1, …``).

    Returns:
        Dataset on ``(method, dtype, p, matrix)`` with ``status`` (``Status.code``) and
        ``rel_error_rounded_input`` (NaN where not finite or not run).

    Raises:
        ValueError: a matrix that is not square, or a negative ``relative_damping``.
    """
    from .._validation import check_number

    relative_damping = check_number(relative_damping, "relative_damping", low=0.0)
    mats = [np.asarray(f, np.float64) for f in matrices]
    for f in mats:
        if f.ndim != 2 or f.shape[0] != f.shape[1]:
            raise ValueError(f"precision_on_matrices: matrices must be square; got {f.shape}")
    shape = (len(methods), len(dtypes), len(ps), len(mats))
    status = np.full(shape, Status.NOT_APPLICABLE.code, np.int8)
    err = np.full(shape, np.nan)
    for jf, f in enumerate(mats):
        f = 0.5 * (f + f.T) / np.trace(f)
        lam = relative_damping / f.shape[0]
        for kd, dt in enumerate(dtypes):
            f_dt = jnp.asarray(f, jnp.float32).astype(dt)
            w, q = np.linalg.eigh(_to64(f_dt))
            for lp, p in enumerate(ps):
                truth = (q * np.abs(w + lam) ** (-p)) @ q.T
                for im, label in enumerate(methods):
                    method, _, up = label.partition("@")
                    idx = (im, kd, lp, jf)
                    if not _exponent_ok(method, p):
                        status[idx] = Status.UNSUPPORTED_EXPONENT.code
                        continue
                    try:
                        x, info = matrix_power(
                            f_dt, -p, lam, method=method, upcast=up or None, check=False
                        )
                    except UnsupportedDtypeError:
                        status[idx] = Status.UNSUPPORTED_DTYPE.code
                        continue
                    x64 = _to64(x)
                    finite = bool(np.isfinite(x64).all())
                    status[idx] = _run_status(info.converged, finite).code
                    if finite:
                        err[idx] = _rel(x64, truth)
    names = list(range(len(mats))) if names is None else list(names)
    dims = ("method", "dtype", "p", "matrix")
    coords = {"method": list(methods), "dtype": list(dtypes), "p": list(ps), "matrix": names}
    return xr.Dataset(
        {"status": (dims, status), "rel_error_rounded_input": (dims, err)}, coords=coords
    )


def precision_cases(labels: tuple[str, ...], *, damping: float = 0.0, **kwargs) -> xr.Dataset:
    """``precision_study`` at one ``damping`` with its ``(cond, dim, repeat)`` runs stacked
    into one ``case`` dim, ``status`` and ``rel_error_rounded_input`` on
    ``(method, dtype, p, case)``, the methods in the order of ``labels`` (``"m@float32"``
    where the study adds it; a label it did not run: ``NOT_APPLICABLE``, NaN).

    Args:
        labels: method labels; ``precision_study`` runs their base methods.
        damping: ``λ``; kwargs: ``precision_study``'s other arguments.
    """
    base = tuple(dict.fromkeys(lab.partition("@")[0] for lab in labels))
    ds = precision_study(methods=base, dampings=(damping,), **kwargs).isel(damping=0)
    ds = ds[["status", "rel_error_rounded_input"]].reindex({"method": list(labels)})
    ds["status"] = ds["status"].fillna(Status.NOT_APPLICABLE.code).astype(np.int8)
    ds = ds.stack(case=("cond", "dim", "repeat")).transpose("method", "dtype", "p", "case")
    ds = ds.drop_vars(["case", "cond", "dim", "repeat", "damping"])
    return ds.assign_coords(case=np.arange(ds.sizes["case"]))


def precision_failure_rate(status, error, max_error: float, axis: int = -1) -> np.ndarray:
    """Failure rate along ``axis`` of the attempted runs: not converged, non-finite, or
    ``error > max_error``; an input not SPD once rounded (``NOT_SPD``) is no method's failure
    and is not counted; NaN where nothing was attempted."""
    status, error = np.moveaxis(np.asarray(status), axis, -1), np.moveaxis(error, axis, -1)
    bad = (Status.NOT_CONVERGED.code, Status.NONFINITE.code)
    attempted = np.isin(status, (Status.OK.code, *bad))
    fail = np.isin(status, bad) | ((status == Status.OK.code) & ~(error <= max_error))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(attempted.sum(-1) > 0, fail.sum(-1) / attempted.sum(-1), np.nan)


def _run_status(converged: bool, finite: bool) -> Status:
    """A run's status: OK, NOT_CONVERGED (finite but not converged, stagnated included) or
    NONFINITE."""
    if not finite:
        return Status.NONFINITE
    return Status.OK if converged else Status.NOT_CONVERGED


def _provenance(seed: int, qr_steps: int, basis_perturbation: float) -> dict:
    dev = jax.devices()[0]
    return make_attrs(
        "precond_lab matrix-function precision study",
        seed=int(seed),
        producer="precond_lab.linalg.precision_study",
        backend=jax.default_backend(),
        device_kind=dev.device_kind,
        platform=platform.platform(),
        qr_steps=int(qr_steps),
        basis_perturbation=float(basis_perturbation),
        status_codes=", ".join(f"{k}={v}" for k, v in STATUS_CODES.items()),
        ground_truth="float64 Q diag((lambda+damping)^-p) Q^T from the known spectrum",
        spectrum="geometric from 1 to 1/cond; Haar-random eigenbasis",
        upcast_variants="method@float32: input explicitly cast to float32, result cast back",
    )
