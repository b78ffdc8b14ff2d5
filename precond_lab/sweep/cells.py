"""Cells: the targets and fits of one (step, layer), each computed once and cached.

``CellCache`` replaces the sweep's former nested closures: it builds a damped
target per ``(kind, batch size)`` and a fit per ``(estimator, fit kind, batch size)``,
records failures as values (a ``Fit`` with its ``Status``),
and re-raises them wherever the same target is needed again.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import xarray as xr

from .. import schema
from ..errors import CellSkipped, Status
from ..estimators import FitContext, ParsedEstimator, build
from ..structures import Structure
from ..targets import DenseTarget, FactoredTarget, SampleTarget, Target, as_target

__all__ = ["CellCache", "Fit", "DampingRule", "batched", "form_of", "status_of"]

_STREAM_CHUNK = 256  # examples read at a time when forming mini-batch sums of lazy data


@dataclasses.dataclass(frozen=True)
class DampingRule:
    """``λ = value`` (``mode="absolute"``) or ``λ = value · tr(Σ)/(mn)`` (``"relative"``)."""

    value: float = 0.0
    mode: str = "absolute"

    def __post_init__(self):
        if self.mode not in ("absolute", "relative"):
            raise ValueError(f"damping_mode must be 'absolute' or 'relative'; got {self.mode!r}")
        if not isinstance(self.value, (int, float, np.floating, np.integer)) or isinstance(
            self.value, bool
        ):
            raise TypeError(f"damping must be a number; got {type(self.value).__name__}")
        if not np.isfinite(self.value) or self.value < 0:
            raise ValueError(f"damping must be a finite number ≥ 0; got {self.value}")

    def for_target(self, target: Target) -> float:
        """The ``λ`` for this (undamped) target."""
        if self.mode == "absolute":
            return float(self.value)
        m, n = target.matrix_shape
        return float(self.value) * float(target.trace()) / (m * n)


@dataclasses.dataclass
class Fit:
    """One fit's outcome: the approximation or why there is none."""

    approx: Structure | None = None
    seconds: float = float("nan")
    iterations: int = -1
    converged: int = -1
    status: Status = Status.OK
    message: str = ""


def status_of(exc: BaseException) -> tuple[Status, str]:
    """``(Status, message)`` for an exception (the message names its class)."""
    st = Status.of(exc)
    if st is Status.SKIPPED:
        return st, str(exc)
    return st, f"{type(exc).__name__}: {exc}"


def form_of(target: Target) -> str:
    """``"factored"``, ``"samples"`` or ``"dense"``: the form a target holds its data in
    (the class name, lower case, for any other target)."""
    forms = {FactoredTarget: "factored", SampleTarget: "samples", DenseTarget: "dense"}
    for cls, name in forms.items():
        if isinstance(target, cls):
            return name
    return type(target).__name__.lower()


def _group_sums(values, batch_size: int, num: int) -> np.ndarray:
    """Sums over consecutive groups of ``B`` examples, reading ``≤ 256·B`` at a time."""
    step = max(1, _STREAM_CHUNK // batch_size) * batch_size
    parts = []
    for start in range(0, num * batch_size, step):
        stop = min(start + step, num * batch_size)
        block = values[start:stop]
        block = np.asarray(block.values if isinstance(block, xr.DataArray) else block)
        parts.append(block.reshape(-1, batch_size, *block.shape[1:]).sum(axis=1))
    return np.concatenate(parts, axis=0)


def batched(samples, batch_size: int, kind: str):
    """Mini-batch gradient outer products ``B ḡ ḡᵀ`` over consecutive groups of ``B``.

    Returns ``(samples, weights)`` for ``SampleTarget``: the group sums
    ``Σ_{i∈j} g_i`` with weight ``1/(B · num_batches)`` (an inner ``mc`` axis of
    sampled-label gradients is kept: each draw gives its own batch gradient). A lazy
    DataArray is read in blocks, never whole.
    """
    if batch_size == 1:
        return samples, None
    if isinstance(samples, Target):
        raise CellSkipped("mini-batching needs per-example samples, not a dense target")
    if isinstance(samples, xr.DataArray):
        if schema.WEIGHT in samples.coords:
            raise CellSkipped(f"target {kind!r} is already weighted (batch or trajectory)")
        if samples.ndim == 4 and samples.dims[1] == schema.Dim.CLASS.value:
            raise CellSkipped("mini-batch gradients of exact GGN pseudo-gradients are undefined")
    elif kind == schema.Kind.GGN.value:
        raise CellSkipped("mini-batch gradients of exact GGN pseudo-gradients are undefined")
    else:
        samples = np.asarray(samples)
    num = samples.shape[0] // batch_size
    if num < 1:
        raise CellSkipped(f"batch size {batch_size} exceeds the {samples.shape[0]} samples")
    grouped = _group_sums(samples, batch_size, num)
    return grouped, np.full(num, 1.0 / (num * batch_size), dtype=grouped.dtype)


def _flat(samples, weights):
    """``(N, K, m, n)`` arrays → ``N·K`` samples, each with its example's weight."""
    if isinstance(samples, (Target, xr.DataArray)) or np.ndim(samples) != 4:
        return samples, weights
    return schema.sample_bag(samples, weights)


def _cast(samples, dtype):
    if dtype is None or isinstance(samples, Target):
        return samples
    if isinstance(samples, xr.DataArray):
        return samples if samples.dtype == dtype else samples.astype(dtype)
    return np.asarray(samples, dtype=dtype)


def _num_samples(samples) -> int:
    if isinstance(samples, Target):
        return int(getattr(samples, "num_samples", -1))
    shape = samples.shape
    return int(shape[0] * (shape[1] if len(shape) == 4 else 1))


class CellCache:
    """The damped targets and the fits of one ``(step, layer)`` of a source.

    Args:
        source: a ``Source``.
        step: the cell.
        layer: the cell.
        damping: the ``DampingRule``.
        dtype: cast samples to this dtype, or None.
        raise_errors: re-raise the first error instead of recording it.
    """

    def __init__(self, source, step, layer, damping: DampingRule, dtype=None, raise_errors=False):
        self.source, self.step, self.layer = source, step, layer
        self.damping, self.dtype, self.raise_errors = damping, dtype, raise_errors
        self._targets: dict[tuple[str, int], tuple | BaseException] = {}
        self._fits: dict[tuple[str, str, int], Fit] = {}
        self._forms: dict[tuple[str, int], str] = {}

    def target(self, kind: str, batch: int = 1) -> tuple[Target, float, int]:
        """``(Σ + λI, λ, number of samples)`` of a kind (the per-example λ for batches)."""
        key = (kind, batch)
        if key not in self._targets:
            try:
                t = (
                    None
                    if batch != 1
                    else self.source.target(self.step, self.layer, kind, self.dtype)
                )
                if t is not None:
                    count = _num_samples(t)
                else:
                    raw = self.source.samples(self.step, self.layer, kind)
                    if raw is None:
                        raise CellSkipped(f"target {kind!r} not captured here")
                    raw = _cast(raw, self.dtype)
                    t = as_target(*_flat(*batched(raw, batch, kind)))
                    count = _num_samples(raw)
                self._forms[key] = form_of(t)
                lam = self.damping.for_target(t) if batch == 1 else self.target(kind, 1)[1]
                self._targets[key] = (t.damped(lam), lam, count)
            except Exception as e:  # noqa: BLE001 - recorded per cell
                if self.raise_errors and not isinstance(e, CellSkipped):
                    raise
                self._targets[key] = e
        value = self._targets[key]
        if isinstance(value, BaseException):
            raise value
        return value

    def form(self, kind: str, batch: int = 1) -> str:
        """How the target of ``kind`` is held (``form_of``; "" if not built)."""
        return self._forms.get((kind, batch), "")

    def fit(self, est: ParsedEstimator, kind: str, batch: int = 1) -> Fit:
        """The fit of ``est`` on kind ``est.source or kind`` (cached across scored kinds)."""
        fkind = est.source or kind
        key = (est.name, fkind, batch)
        if key not in self._fits:
            try:
                t, lam, _ = self.target(fkind, batch)
            except Exception as e:  # noqa: BLE001
                f = Fit()
                f.status, f.message = status_of(e)
                if f.status is Status.SKIPPED and fkind != kind:
                    f.message = f"fit source: {f.message}"
                self._fits[key] = f
                return f
            kfac = self.source.kfac_inputs(self.step, self.layer, fkind)
            ctx = FitContext(t, lam, fkind, kfac, batch)
            self._fits[key] = run_fit(est, ctx, self.raise_errors)
        return self._fits[key]


def run_fit(est: ParsedEstimator, ctx: FitContext, raise_errors: bool = False) -> Fit:
    """Build one estimator in a context, timed, with its convergence recorded."""
    fit = Fit()
    t0 = time.perf_counter()
    try:
        approx = build(est, ctx)
        jax.block_until_ready(jax.tree_util.tree_leaves(approx))
    except Exception as e:  # noqa: BLE001 - one cell's failure is recorded, not fatal
        if raise_errors and not isinstance(e, CellSkipped):
            raise
        fit.status, fit.message = status_of(e)
        return fit
    fit.seconds = time.perf_counter() - t0
    fit.approx = approx
    info = getattr(approx, "info", None)
    if info is not None:
        fit.iterations = int(info.iterations)
        if not str(info.method).startswith("power-iteration"):  # fixed steps: no convergence
            fit.converged = int(bool(info.converged))
            if not info.converged:
                res = np.asarray(info.residuals)
                last = f"{float(res[-1]):.3e}" if res.size else "n/a"
                fit.status = Status.NOT_CONVERGED
                fit.message = (
                    f"{info.method or est.name} did not converge in {info.iterations} "
                    f"iterations (last residual {last})"
                )
    return fit
