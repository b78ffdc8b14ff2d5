"""The sweep's result grid: arrays filled cell by cell, assembled into one Dataset.

``Grid`` knows nothing of estimators or targets: it holds the coordinates and the
numpy arrays, and ``Grid.dataset`` wraps them into xarray at one boundary (dims,
coords, attrs), as arviz-stats wraps array functions.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr

from ..errors import Status
from ..provenance import make_attrs
from ..schema import Dim

__all__ = ["Grid", "EvaluationWarning", "pad"]

CELL_DIMS = (Dim.STEP, Dim.LAYER, Dim.TARGET, Dim.ESTIMATOR, Dim.BATCH_SIZE)


class EvaluationWarning(RuntimeWarning):
    """Issued once per ``evaluate`` call with failed cells."""


def pad(vals: np.ndarray, size: int) -> np.ndarray:
    """``vals`` cut or NaN-padded to ``size``."""
    out = np.full(size, np.nan)
    k = min(size, vals.size)
    out[:k] = vals[:k]
    return out


class Grid:
    """The arrays of one sweep, indexed ``(step, layer, target, estimator, batch_size)``."""

    def __init__(self, steps, layers, targets, estimators, batch_sizes, metrics):
        self.coords = [
            list(steps),
            list(layers),
            list(targets),
            list(estimators),
            list(batch_sizes),
        ]
        self.metrics = list(metrics)
        shape = tuple(len(c) for c in self.coords)
        self.shape = shape
        self.score = np.full((*shape, len(self.metrics)), np.nan)
        self.status = np.full(shape, Status.SKIPPED.value, dtype=object)
        self.message = np.full(shape, "", dtype=object)
        self.fit_seconds = np.full(shape, np.nan)
        self.iterations = np.full(shape, -1, np.int64)
        self.converged = np.full(shape, -1, np.int8)
        self.damping = np.full(shape[:3], np.nan)
        self.num_samples = np.full(shape[:3], -1, np.int64)
        self.target_form = np.full(shape[:3], "", dtype=object)
        self.spectra: dict[tuple, np.ndarray] = {}
        self.target_spectra: dict[tuple, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, int]] = {}
        self.target_shape = np.full((*shape[:3], 2), -1, np.int64)
        self.dtypes: set[str] = set()

    def record_shape(self, idx, shape) -> None:
        """Store a built target's ``(m, n)``; a layer whose targets differ in shape (a
        ``{name: target}`` dict of unrelated matrices) gets ``(-1, -1)`` as its shape."""
        self.target_shape[idx] = shape
        layer = self.coords[1][idx[1]]
        if self.shapes.setdefault(layer, tuple(shape)) != tuple(shape):
            self.shapes[layer] = (-1, -1)

    def record_fit(self, idx, fit) -> None:
        """Store a ``Fit``'s status, time and iterations."""
        self.status[idx], self.message[idx] = Status(fit.status).value, fit.message
        self.fit_seconds[idx] = fit.seconds
        self.iterations[idx], self.converged[idx] = fit.iterations, fit.converged

    def record_error(self, idx, status: Status, message: str) -> None:
        """Mark a cell (or a block of cells) failed or skipped."""
        self.status[idx], self.message[idx] = Status(status).value, message
        self.score[idx] = np.nan

    def cell(self, idx) -> dict:
        """The coordinates of cell ``idx``: ``{"step", "layer", "target", "estimator",
        "batch_size"}``."""
        return {d.value: c[i] for d, c, i in zip(CELL_DIMS, self.coords, idx, strict=True)}

    def _where(self, idx, with_batch: bool) -> str:
        s, la, t, e, b = (c[i] for c, i in zip(self.coords, idx, strict=True))
        return f"step={s} layer={la} target={t} estimator={e}" + (
            f" batch_size={b}" if with_batch else ""
        )

    def dataset(self, attrs: dict[str, Any], step_coords, specs, *, with_batch, spectrum_k):
        """The Dataset (see ``precond_lab.sweep``); warns once if cells failed."""
        dims = [d.value for d in CELL_DIMS]
        steps, layers, targets, names, bss = self.coords
        rows = [self.shapes.get(x, (-1, -1))[0] for x in layers]
        cols = [self.shapes.get(x, (-1, -1))[1] for x in layers]
        coords: dict[str, Any] = {
            Dim.STEP.value: np.asarray(steps, np.int64),
            Dim.LAYER.value: np.asarray(layers, dtype=object),
            Dim.TARGET.value: np.asarray(targets, dtype=object),
            Dim.ESTIMATOR.value: np.asarray(names, dtype=object),
            Dim.BATCH_SIZE.value: np.asarray(bss, np.int64),
            Dim.METRIC.value: np.asarray(self.metrics, dtype=object),
            "layer_rows": (Dim.LAYER.value, np.asarray(rows, np.int64)),
            "layer_cols": (Dim.LAYER.value, np.asarray(cols, np.int64)),
            "target_rows": (dims[:3], self.target_shape[..., 0]),
            "target_cols": (dims[:3], self.target_shape[..., 1]),
            "fit_source": (
                Dim.ESTIMATOR.value,
                np.asarray([s.source or "target" for s in specs], object),
            ),
        }
        for key, (all_steps, vals) in step_coords.items():
            by_step = dict(zip(all_steps, vals, strict=True))
            coords[key] = (Dim.STEP.value, np.asarray([by_step[s] for s in steps], np.float64))
        data = {
            "score": ([*dims, Dim.METRIC.value], self.score),
            "status": (dims, self.status),
            "message": (dims, self.message),
            "fit_seconds": (dims, self.fit_seconds),
            "iterations": (dims, self.iterations),
            "converged": (dims, self.converged),
            "damping": (dims[:3], self.damping),
            "num_samples": (dims[:3], self.num_samples),
            "target_form": (dims[:3], self.target_form),
        }
        if spectrum_k is not False:
            size = int(np.max(np.prod(self.target_shape, axis=-1), initial=0))
            size = size if spectrum_k is None else min(size, int(spectrum_k))
            ev = np.full((*self.shape, size), np.nan)
            for idx, vals in self.spectra.items():
                ev[idx] = pad(vals, size)
            tv = np.full((*self.shape[:3], size), np.nan)
            for idx, vals in self.target_spectra.items():
                tv[idx] = pad(vals, size)
            data["eigenvalues"] = ([*dims, Dim.INDEX.value], ev)
            data["target_eigenvalues"] = ([*dims[:3], Dim.INDEX.value], tv)
            coords[Dim.INDEX.value] = np.arange(size, dtype=np.int64)
        failures, skipped = [], []
        for idx in np.ndindex(*self.shape):
            st = self.status[idx]
            if st == Status.OK.value:
                continue
            line = f"{self._where(idx, with_batch)}: {self.message[idx] or st}"
            (skipped if st == Status.SKIPPED.value else failures).append(line)
        attrs = {
            **make_attrs("precond_lab evaluation sweep"),
            **attrs,
            "dtype": ",".join(sorted(self.dtypes)) or "unknown",
            "estimators": ",".join(names),
            "num_failures": len(failures),
            "failures": "\n".join(failures),
            "num_skipped": len(skipped),
            "skipped": "\n".join(dict.fromkeys(s.split(": ", 1)[1] for s in skipped)),
        }
        ds = xr.Dataset(data, coords=coords, attrs=attrs)
        if not with_batch:
            ds = ds.squeeze(Dim.BATCH_SIZE.value, drop=True)
        ds["score"].attrs["long_name"] = "metric value"
        ds["fit_seconds"].attrs["units"] = "s"
        ds["status"].attrs["description"] = "a precond_lab.Status value: " + ", ".join(
            s.value for s in Status
        )
        ds["target_form"].attrs["description"] = (
            "the scored target's form: factored (from K-FAC factors), samples (per-example "
            "matrices), dense, or '' where the target was not built"
        )
        ds["converged"].attrs["description"] = "1 converged, 0 not, -1 not an iterative fit"
        if failures:
            head = "; ".join(failures[:3]) + (
                f"; … ({len(failures) - 3} more)" if len(failures) > 3 else ""
            )
            warnings.warn(
                f"evaluate: {len(failures)} cell(s) failed or did not converge (see the "
                f"dataset's status/message variables and attrs['failures']): {head}",
                EvaluationWarning,
                stacklevel=3,
            )
        return ds
