"""The sweep loop: every estimator × metric on every (step, layer, target[, batch size]) cell."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import metrics as met
from .._progress import tqdm
from ..estimators import parse_estimator
from ..schema import parse_kind
from .cells import CellCache, DampingRule, status_of
from .grid import Grid
from .sources import open_source

__all__ = ["DEFAULT_ESTIMATORS", "evaluate"]

#: The estimators ``evaluate`` fits when none are named.
DEFAULT_ESTIMATORS = (
    "frobenius_optimal",
    "shampoo_squared",
    "shampoo",
    "kl_optimal",
    "eigencorrected",
    "kfac",
    "diagonal",
)
_RESCALE = {"frobenius": "frobenius_scale", "kl": "kl_scale", None: None}


def _check_in(kind: str, wanted: list, available: list) -> None:
    missing = [x for x in wanted if x not in available]
    if missing:
        raise ValueError(f"{kind} {missing} not in the source; available: {available}")


def _target_eigenvalues(t) -> np.ndarray:
    spec = t.eigh()
    vals = np.full(t.dim, spec.floor, np.float64)
    vals[: spec.rank] = np.asarray(spec.values, np.float64)
    return np.sort(vals)[::-1]


def evaluate(
    source,
    estimators: Iterable = DEFAULT_ESTIMATORS,
    metrics: Sequence[str] = met.SCORE_NAMES,
    targets: Sequence[str] | None = None,
    *,
    damping: float = 0.0,
    damping_mode: str = "absolute",
    layers: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    batch_sizes: Sequence[int] | None = None,
    kfac_inputs: Mapping[Any, tuple[Any, Any]] | None = None,
    dtype=None,
    spectrum_k: int | None = None,
    spectrum_rescale: str | None = "frobenius",
    progress: bool = True,
    raise_errors: bool = False,
    on_fit: Callable[[dict, Any, Any], None] | None = None,
):
    """Fit and score every estimator on every (step, layer, target) cell of ``source``.

    The arguments and the returned Dataset are described in ``precond_lab.sweep``.
    ``on_fit(cell, target, approx)``, if given, is called once per scored cell with its
    coordinates (``{"step", "layer", "target", "estimator", "batch_size"}``), the damped
    target and the fitted structure: the seam for checks that need the approximations
    themselves (dense cross-checks, factor figures), so no caller refits.

    Raises:
        ValueError: unknown estimator, metric, step, layer or target names; bad damping.
    """
    specs = [parse_estimator(e) for e in estimators]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"estimator names must be unique; got {names}")
    metrics = list(metrics)
    bad = [x for x in metrics if x not in met.SCORE_NAMES and x != "spectrum"]
    if bad:
        raise ValueError(f"unknown metrics {bad}; valid: {', '.join(met.SCORE_NAMES)}, spectrum")
    want_spectrum = "spectrum" in metrics
    metrics = [x for x in metrics if x != "spectrum"]
    rule = DampingRule(damping, damping_mode)
    if spectrum_rescale not in _RESCALE:
        raise ValueError(
            f"spectrum_rescale must be None, 'frobenius' or 'kl'; got {spectrum_rescale!r}"
        )
    dtype = None if dtype is None else np.dtype(dtype)
    src = open_source(source, kfac_inputs, steps)
    step_list = src.steps if steps is None else [int(s) for s in steps]
    _check_in("steps", step_list, src.steps)
    layer_list = src.layers if layers is None else [str(x) for x in layers]
    _check_in("layers", layer_list, src.layers)
    kinds = [k for s in step_list for la in layer_list for k in src.kinds(s, la)]
    available = list(dict.fromkeys(kinds))
    target_list = available if targets is None else [parse_kind(t) for t in targets]
    _check_in("targets", target_list, available)
    bs_list = [1] if batch_sizes is None else [int(b) for b in batch_sizes]
    if any(b < 1 for b in bs_list):
        raise ValueError(f"batch sizes must be positive; got {bs_list}")

    opts = (metrics, want_spectrum, spectrum_rescale, raise_errors)
    grid = Grid(step_list, layer_list, target_list, names, bs_list, metrics)
    # the bar meters all the work: per cell one unit for the fit, one for its scores and one
    # for on_fit (a caller's check), so it does not sit at 100 % while cells are scored
    per_cell = 2 + (on_fit is not None)
    bar = tqdm(
        total=int(np.prod(grid.shape)) * per_cell,
        desc="evaluate",
        unit="step",
        disable=not progress,
    )
    try:
        for i_s, step in enumerate(step_list):
            for i_l, layer in enumerate(layer_list):
                cell = CellCache(src, step, layer, rule, dtype, raise_errors)
                for i_t, kind in enumerate(target_list):
                    try:
                        target, lam, count = cell.target(kind, 1)
                    except Exception as e:  # noqa: BLE001 - recorded per cell
                        grid.record_error((i_s, i_l, i_t), *status_of(e))
                        bar.update(len(specs) * len(bs_list) * per_cell)
                        continue
                    grid.record_shape((i_s, i_l, i_t), target.matrix_shape)
                    grid.dtypes.add(np.dtype(target.dtype).name)
                    grid.damping[i_s, i_l, i_t], grid.num_samples[i_s, i_l, i_t] = lam, count
                    grid.target_form[i_s, i_l, i_t] = cell.form(kind)
                    if want_spectrum:
                        grid.target_spectra[(i_s, i_l, i_t)] = _target_eigenvalues(target)
                    fitted = []
                    for i_e, spec in enumerate(specs):
                        for i_b, batch in enumerate(bs_list):
                            idx = (i_s, i_l, i_t, i_e, i_b)
                            fit = cell.fit(spec, kind, batch)
                            grid.record_fit(idx, fit)
                            if fit.approx is not None:
                                fitted.append((idx, fit.approx))
                            bar.update(1)
                    bar.set_postfix_str(f"scoring {kind}", refresh=True)
                    scored = _score_all(grid, target, fitted, opts)
                    cells = len(specs) * len(bs_list)
                    bar.update(cells if on_fit is None else 2 * cells - len(scored))
                    if on_fit is not None:
                        bar.set_postfix_str(f"checking {kind}", refresh=True)
                    for idx, approx in scored:
                        if on_fit is not None:
                            on_fit(grid.cell(idx), target, approx)
                            bar.update(1)
                    bar.set_postfix_str("")
    finally:
        bar.close()
    attrs = {
        "source": src.description,
        "damping": float(damping),
        "damping_mode": damping_mode,
        "spectrum_rescale": str(spectrum_rescale) if want_spectrum else "",
    }
    for key in ("model", "dataset", "loss", "optimizer", "seed", "num_samples"):
        if key in src.attrs:
            v = src.attrs[key]
            attrs[f"source_{key}"] = v if isinstance(v, (int, float, str)) else str(v)
    step_coords = {k: (src.steps, v) for k, v in src.step_coords.items()}
    return grid.dataset(
        attrs,
        step_coords,
        specs,
        with_batch=batch_sizes is not None,
        spectrum_k=spectrum_k if want_spectrum else False,
    )


def _score_all(grid, target, fitted, opts) -> list[tuple[tuple, object]]:
    """Score every fitted approximation of one target into ``grid`` with one batched
    ``score`` call (one pass over the samples for all of them).

    A wrong-shaped approximation is marked failed before the batch; if the batch raises,
    each approximation is scored on its own, so the one that fails is recorded as its
    cell's error and the others keep their values. Returns the ``(idx, approx)`` pairs
    scored.
    """
    metrics, want_spectrum, rescale, raise_errors = opts
    key = _RESCALE[rescale] if want_spectrum else None
    wanted = list(dict.fromkeys([*metrics, key] if key else metrics))
    ok = []
    for idx, approx in fitted:
        if tuple(approx.matrix_shape) != tuple(target.matrix_shape):
            exc = ValueError(
                f"approximation matrix_shape {approx.matrix_shape} differs from the target's "
                f"{target.matrix_shape}"
            )
            if raise_errors:
                raise exc
            grid.record_error(idx, *status_of(exc))
        else:
            ok.append((idx, approx))
    if not ok:
        return []
    try:
        results = met.score(target, [a for _, a in ok], metrics=wanted)
    except Exception:  # noqa: BLE001 - find the failing approximation(s) one by one
        results = None
    scored = []
    for i, (idx, approx) in enumerate(ok):
        try:
            values = (
                results[i] if results is not None else met.score(target, approx, metrics=wanted)
            )
            grid.score[idx] = [values[k] for k in metrics]
            if want_spectrum:
                c = 1.0 if key is None else values[key]
                ev = np.sort(np.asarray(approx.eigenvalues(), np.float64).ravel())[::-1]
                grid.spectra[idx] = c * ev
        except Exception as e:  # noqa: BLE001 - recorded per cell
            if raise_errors:
                raise
            grid.record_error(idx, *status_of(e))
            continue
        scored.append((idx, approx))
    return scored
