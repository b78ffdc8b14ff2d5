"""Publication-ready figures from the Datasets of ``precond_lab.evaluate``.

Every function returns a ``matplotlib.figure.Figure`` built without ``pyplot``
(no global state, safe under the Agg backend and in threads) inside the ``style``
context, a ``rcParams`` context manager: nothing is changed globally. ``save``
writes PNG and PDF.

* ``plot_quality`` — approximation quality over training (Morwani et al. Fig. 1
  form): one panel per target (× layer), one line per estimator, over ``step``.
* ``plot_power_iteration`` — power iteration converging to the optimal Kronecker
  product (from ``power_iteration_curve``).
* ``plot_spectra`` — eigenvalues of the target and of its approximations (log).
* ``plot_factors`` — heat maps of Kronecker factors (left/right).
* ``plot_batch_size`` — quality over mini-batch size (e.g. real vs sampled labels).
* ``plot_metric_bars`` — grouped bars of metrics (KL, Frobenius) across estimators.

Colours follow the Okabe–Ito palette (colour-blind safe); each estimator keeps its
colour and marker in every figure, and the ``@kind`` fit source of an estimator is
drawn with its own line style. Lines and bar containers carry the estimator's
pretty name as label (``estimator_label``) and its raw name as ``gid``.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import xarray as xr
from cycler import cycler
from matplotlib.figure import Figure

from ._atomic import atomic_write
from .estimators import ESTIMATORS
from .metrics import METRICS
from .schema import Kind, batch_size_of

__all__ = [
    "OKABE_ITO",
    "estimator_label",
    "estimator_style",
    "figure",
    "legend",
    "band",
    "missing_on_floor",
    "quartile_errorbar",
    "plot_timings",
    "grid_lines",
    "plot_tuning",
    "plot_probe",
    "metric_label",
    "metric_symbol",
    "plot_batch_size",
    "plot_factors",
    "plot_metric_bars",
    "plot_power_iteration",
    "plot_quality",
    "plot_spectra",
    "save",
    "style",
    "target_label",
]

#: The Okabe–Ito colour-blind-safe palette.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}
_GREY = "#7F7F7F"
_CYCLE = [
    OKABE_ITO[c]
    for c in ("blue", "vermillion", "bluish_green", "orange", "reddish_purple", "sky_blue")
] + [_GREY, OKABE_ITO["black"]]

#: Colours and markers for estimators without a registered colour (user-supplied or
#: registered without one): Paul Tol's muted palette, none of them a built-in's colour.
_EXTRA_COLORS = ["#882255", "#44AA99", "#332288", "#DDCC77", "#AA4499", "#117733", "#999933"]
_EXTRA_MARKERS = ["h", "*", "p", "<", ">", "8", "H"]
#: Variants of a built-in estimator drawn apart: ``{(name, first argument): (colour,
#: marker)}`` (the default variant keeps the registered style).
_VARIANTS = {
    ("kfac", "reduce"): ("#005A40", "d"),  # a darker green than kfac(expand)'s #009E73
}

_SOURCES = {  # fit source: (suffix, line style)
    Kind.GRADIENTS.value: ("real labels", "--"),
    Kind.GGN_MC.value: ("sampled labels", ":"),
    Kind.GGN.value: ("exact GGN", "-."),
}
_TARGETS = {
    Kind.GRADIENTS.value: "Empirical Fisher (real labels)",
    Kind.GGN.value: "Gauss–Newton",
    Kind.GGN_MC.value: "Gauss–Newton (sampled labels)",
    Kind.TRAJECTORY.value: "Adagrad $H_\\mathrm{Ada}$",
}
_SPEC_RE = re.compile(r"^([A-Za-z_]\w*)(?:\((.*)\))?(?:@([\w\-]+))?$")

#: rcParams of ``style``.
RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.titlesize": 11,
    "lines.linewidth": 1.6,
    "lines.markersize": 4.5,
    "axes.prop_cycle": cycler(color=_CYCLE),
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.axisbelow": True,
    "legend.frameon": False,
    "image.cmap": "cividis",
    "figure.dpi": 100,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
}


@contextlib.contextmanager
def style(**overrides) -> Iterator[None]:
    """Temporarily apply the publication style (``RC``, then ``overrides``).

    Example::

        with style(**{"font.size": 11}):
            fig = plot_quality(ds)
    """
    with mpl.rc_context({**RC, **overrides}):
        yield


# --------------------------------------------------------------------------------------
# Labels and styles
# --------------------------------------------------------------------------------------


def _parse(spec: str) -> tuple[str, str, str | None]:
    m = _SPEC_RE.match(str(spec).replace(" ", ""))
    if not m:
        return str(spec), "", None
    return m.group(1), m.group(2) or "", m.group(3)


def estimator_label(spec: str) -> str:
    """A readable name for an estimator spec: ``"shampoo_squared@gradients"`` →
    ``"Shampoo² (real labels)"``, ``"power_iteration(3)"`` → ``"Power iteration (3 steps)"``.
    """
    base, args, source = _parse(spec)
    if base not in ESTIMATORS:
        return str(spec)
    label = ESTIMATORS[base].label
    if base == "power_iteration":
        steps = args.split(",")[0] if args else "1"
        label = f"{label} ({steps} step{'' if steps == '1' else 's'})"
    elif base == "eigencorrected" and args and args.strip("'\"") != "shampoo":
        label = f"Eigen-corrected ({estimator_label(args.strip(chr(39) + chr(34)))})"
    elif args:
        label = f"{label} ({args.strip(chr(39) + chr(34))})"
    if source:
        label = f"{label} — {_SOURCES.get(source, (f'from {source}',))[0]}"
    return label


def estimator_style(spec: str, index: int = 0) -> dict:
    """``color``, ``marker`` and ``linestyle`` of an estimator (stable across figures).

    Built-in estimators keep their registered colour and marker (variants such as
    ``kfac(reduce)`` a shade of it); an estimator without a registered colour (a
    user-supplied one) takes the ``index``-th of colours that no registered estimator
    uses, so it is never drawn like a built-in.
    """
    base, args, source = _parse(spec)
    first = args.split(",")[0].strip().strip("'\"") if args else ""
    if base in ESTIMATORS and ESTIMATORS[base].color:
        reg = ESTIMATORS[base]
        color, marker = reg.color, reg.marker or "o"
        if (base, first) in _VARIANTS:
            color, marker = _VARIANTS[base, first]
        if base == "power_iteration" and args:
            shades = ["#000000", "#444444", "#777777", "#999999"]
            with contextlib.suppress(ValueError):
                color = shades[min(int(first) // 2, len(shades) - 1)]
    else:
        if base in ESTIMATORS:  # registered without a colour: by its order among those
            index = [n for n, e in ESTIMATORS.items() if not e.color].index(base)
        taken = {e.color for e in ESTIMATORS.values() if e.color}
        free = [c for c in _EXTRA_COLORS if c not in taken] or _EXTRA_COLORS
        color = free[index % len(free)]
        marker = _EXTRA_MARKERS[index % len(_EXTRA_MARKERS)]
        if base in ESTIMATORS and ESTIMATORS[base].marker:
            marker = ESTIMATORS[base].marker
    linestyle = _SOURCES.get(source, (None, "-"))[1] if source else "-"
    return {"color": color, "marker": marker, "linestyle": linestyle}


def target_label(kind: str) -> str:
    """A readable name for a target kind (``"ggn"`` → ``"Gauss–Newton"``)."""
    kind = str(kind)
    if kind in _TARGETS:
        return _TARGETS[kind]
    b = batch_size_of(kind)
    if b is not None:
        return f"Batch gradients (B = {b})"
    return kind


def metric_label(metric: str) -> str:
    """Axis label of a metric (its ``label`` in ``precond_lab.metrics.METRICS``)."""
    spec = METRICS.get(str(metric))
    return spec.label if spec is not None else str(metric)


def metric_symbol(metric: str) -> str:
    """Short math label of a metric (its ``symbol``), or its label where it has none."""
    spec = METRICS.get(str(metric))
    return (spec.symbol or spec.label) if spec is not None else str(metric)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def figure(
    nrows: int = 1, ncols: int = 1, panel: tuple[float, float] = (3.3, 2.6), **kw
) -> tuple[Figure, np.ndarray]:
    """A constrained-layout Figure (no pyplot) and its ``(nrows, ncols)`` array of axes.

    ``panel`` is one panel's (width, height) in inches: the default suits a journal
    column at two panels per row. ``**kw`` goes to ``Figure.subplots`` (``sharex``, …).
    Call it inside ``style`` for the package's rcParams.
    """
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _values(ds: xr.Dataset, dim: str, chosen) -> list:
    if dim not in ds.dims:
        return []
    allv = [v.item() for v in ds[dim]]
    if chosen is None:
        return allv
    chosen = [chosen] if isinstance(chosen, (str, int, np.integer)) else list(chosen)
    bad = [c for c in chosen if c not in allv]
    if bad:
        raise ValueError(f"{dim} {bad} not in the dataset; available: {allv}")
    return chosen


def _fix(da: xr.DataArray, keep: Sequence[str], **fixed) -> xr.DataArray:
    """Select ``fixed`` values, squeeze other singleton dims, and insist only ``keep`` is left."""
    for dim, value in fixed.items():
        if value is not None and dim in da.dims:
            da = da.sel({dim: value})
    for dim in list(da.dims):
        if dim not in keep:
            if da.sizes[dim] == 1:
                da = da.isel({dim: 0})
            else:
                raise ValueError(
                    f"the dataset has {da.sizes[dim]} values of {dim!r} "
                    f"({da[dim].values.tolist()}); choose one with {dim}=..."
                )
    return da


def legend(fig: Figure, axes: np.ndarray, ncols: int | None = None, extra=()) -> None:
    """One figure legend below the panels, with each label once (from every axis), then
    the ``(handle, label)`` pairs of ``extra``."""
    seen: dict[str, object] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    for h, lab in extra:
        seen.setdefault(lab, h)
    if seen:
        n = ncols or min(len(seen), 4)
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=n)


def _suptitle(fig: Figure, title: str | None) -> None:
    if title:
        fig.suptitle(title)


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def plot_quality(
    ds: xr.Dataset,
    metric: str = "cosine",
    *,
    estimators: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    batch_size: int | None = None,
    title: str | None = None,
    panel_size: tuple[float, float] = (3.3, 2.6),
) -> Figure:
    """Approximation quality over training, one panel per target (columns) × layer (rows).

    Morwani et al.'s Fig. 1 form: e.g. the cosine similarity of the optimal Kronecker
    product, Shampoo², Shampoo and K-FAC with the Gauss–Newton matrix and with
    Adagrad's ``H_Ada``, over training steps.

    Args:
        ds: a Dataset from ``evaluate``.
        metric: a metric of ``ds`` (default ``"cosine"``).
        estimators: subsets and order (default: all).
        targets: subsets and order (default: all).
        layers: subsets and order (default: all).
        batch_size: the batch size, if ``ds`` has that dim with several values.
        title: a figure title.
        panel_size: inches per panel.
    """
    with style():
        da = ds["score"].sel(metric=metric)
        ests = _values(ds, "estimator", estimators)
        tgts = _values(ds, "target", targets)
        lays = _values(ds, "layer", layers)
        fig, axes = figure(len(lays), len(tgts), panel_size, sharex=True)
        steps = ds["step"].values
        for r, layer in enumerate(lays):
            for c, kind in enumerate(tgts):
                ax = axes[r, c]
                for i, name in enumerate(ests):
                    y = _fix(
                        da.sel(layer=layer, target=kind, estimator=name),
                        ["step"],
                        batch_size=batch_size,
                    )
                    ax.plot(
                        steps,
                        y.values,
                        label=estimator_label(name),
                        gid=name,
                        **estimator_style(name, i),
                    )
                head = target_label(kind)
                ax.set_title(head if len(lays) == 1 else f"{head}\n{layer}")
                ax.xaxis.get_major_locator().set_params(integer=True)
                if r == len(lays) - 1:
                    ax.set_xlabel("training step")
                if c == 0:
                    ax.set_ylabel(metric_label(metric))
        legend(fig, axes)
        _suptitle(fig, title)
    return fig


def plot_power_iteration(
    curve: xr.Dataset,
    *,
    title: str | None = "Power iteration for the optimal Kronecker product",
    panel_size: tuple[float, float] = (3.4, 2.7),
) -> Figure:
    """Power-iteration convergence from ``power_iteration_curve``.

    Left: cosine similarity of the iterate with the target (solid) and with the
    Frobenius-optimal Kronecker product (dashed); the optimum's own cosine with the
    target is the dotted reference line, and step 1 (from the identity) is Shampoo².
    Right: ``1 − cos(iterate, optimum)`` on a log scale (geometric convergence).
    """
    with style():
        fig, axes = figure(1, 2, panel_size)
        ax_cos, ax_err = axes[0]
        parts = (
            [(str(t), curve.sel(target=t)) for t in curve["target"].values]
            if "target" in curve.dims
            else [(None, curve)]
        )
        for i, (name, c) in enumerate(parts):
            color = _CYCLE[i % len(_CYCLE)]
            it = c["iteration"].values
            prefix = "" if name is None else f"{target_label(name)}: "
            cos_t = c["score"].sel(metric="cosine").values
            ax_cos.plot(it, cos_t, "-o", color=color, label=f"{prefix}to target")
            ax_cos.plot(
                it, c["cosine_to_optimum"].values, "--s", color=color, label=f"{prefix}to optimum"
            )
            ref = float(c["optimum_score"].sel(metric="cosine"))
            ax_cos.axhline(
                ref, color=color, linestyle=":", linewidth=1.2, label=f"{prefix}optimum vs target"
            )
            if it.size > 1:
                ax_cos.annotate(
                    "Shampoo²",
                    (it[1], cos_t[1]),
                    xytext=(6, -12),
                    textcoords="offset points",
                    fontsize=7,
                    color=color,
                )
            gap = np.clip(1.0 - c["cosine_to_optimum"].values, np.finfo(float).tiny, None)
            ax_err.semilogy(it, gap, "-o", color=color, label=f"{prefix}1 − cos(iterate, optimum)")
        ax_cos.set_xlabel("power-iteration step")
        ax_cos.set_ylabel("cosine similarity")
        ax_cos.set_title("Cosine similarity")
        ax_err.set_xlabel("power-iteration step")
        ax_err.set_ylabel("1 − cosine to optimum")
        ax_err.set_title("Convergence to the optimum")
        for ax in (ax_cos, ax_err):
            ax.xaxis.get_major_locator().set_params(integer=True)
        legend(fig, axes, ncols=3)
        _suptitle(fig, title)
    return fig


def plot_spectra(
    spec: xr.Dataset,
    *,
    targets: Sequence[str] | None = None,
    estimators: Sequence[str] | None = None,
    k: int | None = None,
    logx: bool = False,
    title: str | None = None,
    panel_size: tuple[float, float] = (3.4, 2.7),
) -> Figure:
    """Eigenvalues (descending, log scale) of the target and of its approximations.

    Args:
        spec: a Dataset from ``spectra`` (``eigenvalue`` with
            dims (target, estimator, index); ``estimator="target"`` is the target).
        targets: subsets (default: all); one panel per target.
        estimators: subsets (default: all); one panel per target.
        k: plot only the top ``k`` eigenvalues.
        logx: log-scale eigenvalue index.
        title: a figure title.
    """
    with style():
        tgts = _values(spec, "target", targets)
        ests = [e for e in _values(spec, "estimator", estimators) if e != "target"]
        fig, axes = figure(1, len(tgts), panel_size)
        rescale = spec.attrs.get("rescale", "None")
        for c, kind in enumerate(tgts):
            ax = axes[0, c]
            da = spec["eigenvalue"].sel(target=kind)
            if k is not None:
                da = da.isel(index=slice(0, k))
            idx = da["index"].values + 1

            def positive(v):
                v = np.asarray(v, float)
                return np.where(v > 0, v, np.nan)

            ax.plot(
                idx,
                positive(_fix(da.sel(estimator="target"), ["index"]).values),
                color=OKABE_ITO["black"],
                linewidth=2.4,
                label="target Σ",
                gid="target",
            )
            for i, name in enumerate(ests):
                st = estimator_style(name, i)
                st.pop("marker")
                ax.plot(
                    idx,
                    positive(_fix(da.sel(estimator=name), ["index"]).values),
                    label=estimator_label(name),
                    gid=name,
                    **st,
                )
            ax.set_yscale("log")
            if logx:
                ax.set_xscale("log")
            ax.set_title(target_label(kind))
            ax.set_xlabel("eigenvalue index")
            if c == 0:
                ylab = "eigenvalue"
                if rescale not in ("None", ""):
                    ylab += f" ({rescale}-optimal scale)"
                ax.set_ylabel(ylab)
        legend(fig, axes)
        _suptitle(fig, title)
    return fig


def plot_factors(
    approximations: Mapping[str, object],
    *,
    normalize: bool = True,
    cmap: str = "RdBu_r",
    title: str | None = None,
    panel_size: tuple[float, float] = (2.8, 2.5),
) -> Figure:
    """Heat maps of Kronecker factors: one row per approximation, columns ``L`` and ``R``.

    Args:
        approximations: ``{name: Kronecker}`` or ``{name: (L, R)}``; names may be
            estimator specs (shown with ``estimator_label``).
        normalize: divide each factor by its Frobenius norm (the split of the scale
            between ``L`` and ``R`` is arbitrary).
        cmap: a diverging colour map, centred at 0 (default ``RdBu_r``, colour-blind safe).
        title: a figure title.
    """
    with style(**{"axes.grid": False}):
        rows = list(approximations.items())
        fig, axes = figure(len(rows), 2, panel_size)
        for r, (name, approx) in enumerate(rows):
            if hasattr(approx, "left") and hasattr(approx, "right"):
                pair = (approx.left, approx.right)
            elif isinstance(approx, (tuple, list)) and len(approx) == 2:
                pair = tuple(approx)
            else:
                raise TypeError(
                    f"{name!r}: need a Kronecker structure or an (L, R) pair; got "
                    f"{type(approx).__name__}"
                )
            for c, (side, mat) in enumerate(zip(("L", "R"), pair, strict=True)):
                x = np.asarray(mat, np.float64)
                if normalize:
                    x = x / max(np.linalg.norm(x), np.finfo(float).tiny)
                vmax = float(np.max(np.abs(x))) or 1.0
                ax = axes[r, c]
                im = ax.imshow(x, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
                what = "left (output side)" if side == "L" else "right (input side)"
                ax.set_title(f"{estimator_label(name)}\n{side}: {what}, {x.shape[0]}×{x.shape[1]}")
                ax.set_xlabel("column")
                ax.set_ylabel("row")
                fig.colorbar(im, ax=ax, shrink=0.85)
        _suptitle(fig, title)
    return fig


def plot_batch_size(
    ds: xr.Dataset,
    metric: str = "cosine",
    *,
    estimators: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    step: int | None = None,
    layer: str | None = None,
    title: str | None = None,
    panel_size: tuple[float, float] = (3.3, 2.6),
) -> Figure:
    """Quality over mini-batch size, one panel per target, one line per estimator.

    With estimators such as ``"shampoo_squared@gradients"`` (real labels) and
    ``"shampoo_squared@ggn_mc"`` (sampled labels) scored against ``"ggn"`` this is
    Morwani et al.'s real-vs-sampled-labels figure.

    Args:
        ds: a Dataset from ``evaluate`` with ``batch_sizes=``.
        metric: a metric of ``ds``.
        estimators: subsets and order (default: all).
        targets: subsets and order (default: all).
        step: the cell, when ``ds`` has several.
        layer: the cell, when ``ds`` has several.
        title: a figure title.
    """
    if "batch_size" not in ds.dims:
        raise ValueError("the dataset has no batch_size dim: evaluate(..., batch_sizes=[...])")
    with style():
        da = ds["score"].sel(metric=metric)
        ests = _values(ds, "estimator", estimators)
        tgts = _values(ds, "target", targets)
        fig, axes = figure(1, len(tgts), panel_size)
        bs = ds["batch_size"].values
        for c, kind in enumerate(tgts):
            ax = axes[0, c]
            for i, name in enumerate(ests):
                y = _fix(
                    da.sel(target=kind, estimator=name), ["batch_size"], step=step, layer=layer
                )
                ax.plot(
                    bs, y.values, label=estimator_label(name), gid=name, **estimator_style(name, i)
                )
            if bs.size > 1 and np.all(bs > 0):
                ax.set_xscale("log", base=2)
                ax.set_xticks(bs, [str(b) for b in bs])
                ax.minorticks_off()
            ax.set_title(f"vs {target_label(kind)}")
            ax.set_xlabel("batch size B")
            if c == 0:
                ax.set_ylabel(metric_label(metric))
        legend(fig, axes, ncols=2)
        _suptitle(fig, title)
    return fig


def plot_metric_bars(
    ds: xr.Dataset,
    metrics: Sequence[str] = ("relative_frobenius_rescaled", "kl_rescaled"),
    *,
    estimators: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    step: int | None = None,
    layer: str | None = None,
    batch_size: int | None = None,
    log: bool | None = None,
    title: str | None = None,
    panel_size: tuple[float, float] = (3.6, 2.8),
) -> Figure:
    """Grouped bars: one panel per metric, groups = targets, one bar per estimator.

    Non-finite values (a failed fit, an infinite KL) leave a gap marked ``×``. A cell
    whose fit did not succeed (``ds["status"]`` not ``ok``, e.g. ``not_converged``) but
    has a finite score is drawn hatched and pale, labelled with its status above the bar
    (``n.c.`` for not converged), and the legend explains the hatching.

    Args:
        ds: a Dataset from ``evaluate``.
        metrics: metrics of ``ds``, one panel each.
        estimators: subsets and order (default: all).
        targets: subsets and order (default: all).
        step: the cell, when ``ds`` has several.
        layer: the cell, when ``ds`` has several.
        batch_size: the cell, when ``ds`` has several.
        log: log-scale values (default: when the finite values are positive and span
            more than two decades).
        title: a figure title.
    """
    with style(**{"axes.grid.axis": "y"}):
        ests = _values(ds, "estimator", estimators)
        tgts = _values(ds, "target", targets)
        fig, axes = figure(1, len(metrics), panel_size)
        failed_drawn = False
        x = np.arange(len(tgts))
        width = 0.8 / max(len(ests), 1)
        for c, metric in enumerate(metrics):
            ax = axes[0, c]
            da = _fix(
                ds["score"].sel(metric=metric, target=tgts, estimator=ests),
                ["target", "estimator"],
                step=step,
                layer=layer,
                batch_size=batch_size,
            ).transpose("target", "estimator")
            vals = np.asarray(da.values, float)
            status = _cell_status(ds, tgts, ests, step=step, layer=layer, batch_size=batch_size)
            finite = vals[np.isfinite(vals)]
            use_log = log
            if use_log is None:
                use_log = bool(
                    finite.size and np.all(finite > 0) and finite.max() / finite.min() > 100
                )
            for i, name in enumerate(ests):
                st = estimator_style(name, i)
                h = np.where(np.isfinite(vals[:, i]), vals[:, i], np.nan)
                bars = ax.bar(
                    x + (i - (len(ests) - 1) / 2) * width,
                    h,
                    width,
                    label=estimator_label(name),
                    color=st["color"],
                    edgecolor="white",
                    linewidth=0.5,
                    gid=name,
                )
                for b, v, s in zip(bars, vals[:, i], status[:, i], strict=True):
                    if np.isfinite(v) and s != "ok":  # a number, but not a successful fit
                        b.set_hatch("////")
                        b.set_facecolor(mpl.colors.to_rgba(st["color"], 0.3))
                        b.set_edgecolor(st["color"])
                        failed_drawn = True
                        ax.annotate(
                            _STATUS_SHORT.get(s, s),
                            (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center",
                            va="bottom",
                            color=st["color"],
                            fontsize=6,
                            gid=f"status:{name}",
                        )
                    elif not np.isfinite(v):
                        ax.annotate(
                            "×",
                            (b.get_x() + b.get_width() / 2, 0),
                            xycoords=("data", "axes fraction"),
                            ha="center",
                            va="bottom",
                            color=st["color"],
                            fontsize=8,
                        )
            if use_log:
                ax.set_yscale("log")
            ax.set_xticks(x, [textwrap.fill(target_label(t), 16) for t in tgts])
            ax.set_title(metric_label(metric))
            ax.set_ylabel(metric_symbol(metric))
            ax.grid(False, axis="x")
        extra = []
        if failed_drawn:  # one legend entry for the hatching
            from matplotlib.patches import Patch

            hatch = Patch(facecolor="white", edgecolor="#555555", hatch="////")
            extra.append((hatch, _FAILED_LABEL))
        legend(fig, axes, extra=extra)
        _suptitle(fig, title)
    return fig


#: Short labels of a failed fit's status above its hatched bar.
_STATUS_SHORT = {"not_converged": "n.c.", "stagnated": "stag.", "needs_damping": "damp."}
_FAILED_LABEL = "hatched: the fit did not succeed (status above the bar)"


def _cell_status(ds: xr.Dataset, tgts, ests, **fixed) -> np.ndarray:
    """``(target, estimator)`` fit statuses of the plotted cell (all ``"ok"`` without a
    ``status`` variable)."""
    if "status" not in ds:
        return np.full((len(tgts), len(ests)), "ok", dtype=object)
    da = _fix(ds["status"].sel(target=tgts, estimator=ests), ["target", "estimator"], **fixed)
    out = np.asarray(da.transpose("target", "estimator").values, dtype=object)
    return np.where(out == "skipped", "ok", out)  # a skipped cell has no score anyway


def save(fig: Figure, path_stem, formats: Sequence[str] = ("png", "pdf"), **kwargs) -> list[Path]:
    """Write ``fig`` as ``<path_stem>.png`` and ``<path_stem>.pdf`` (creating folders),
    each atomically (a temporary file in the same folder, then a rename).

    Args:
        fig: the figure.
        path_stem: path without suffix, e.g. ``"figures/quality_over_training"``.
        formats: file formats (suffixes).
        **kwargs: passed to ``Figure.savefig`` (e.g. ``dpi``).

    Returns:
        The written paths.
    """
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with style():
        for fmt in formats:
            path = stem.parent / f"{stem.name}.{fmt}"
            atomic_write(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, **kwargs))
            out.append(path)
    return out


def band(ax, x, da: xr.DataArray, over: str | Sequence[str], *, positive: bool = False, **kw):
    """Mean over ``over`` as a line and the min–max over it as a band (the spread shown).

    Args:
        ax: the axes.
        x: the abscissa (the remaining dimension's values).
        da: the values; ``over`` its dimension(s) to summarise.
        positive: draw non-positive values as missing (for log axes), never clipped.
        **kw: line keywords (``color``, ``ls``, ``label`` …).

    Returns:
        The line.
    """
    y = da.where(da > 0) if positive else da
    line = ax.plot(x, y.mean(over), **kw)[0]
    ax.fill_between(x, y.min(over), y.max(over), color=line.get_color(), alpha=0.18, lw=0)
    return line


def missing_on_floor(ax, x, *, label: str = "", band: bool = True, **kw):
    """Mark points that have no value (e.g. a fit that needs damping) at ``x`` on a hatched
    band along the axis floor, in axes units: drawn as missing, never as a value.

    Returns:
        The scatter (its offsets in (data x, axes y) coordinates).
    """
    x = np.asarray(x, float)
    kw = {"marker": "x", "s": 30, **kw}
    out = ax.scatter(x, np.full(x.size, 0.03), transform=ax.get_xaxis_transform(),
                     clip_on=False, label=label, **kw)  # fmt: skip
    if band and x.size:
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((0, 0), 1, 0.06, transform=ax.transAxes, facecolor="none",
                               edgecolor="0.6", hatch="////", linewidth=0.0, zorder=0))  # fmt: skip
    return out


def quartile_errorbar(ax, x, da: xr.DataArray, over: str, **kw):
    """Median over ``over`` with error bars from its 25 % to its 75 % quantile."""
    q = da.quantile([0.25, 0.5, 0.75], over).transpose("quantile", ...).values
    return ax.errorbar(x, q[1], yerr=np.stack([q[1] - q[0], q[2] - q[1]]), capsize=2, **kw)


def plot_timings(
    seconds: xr.DataArray,
    *,
    x: str = "size",
    hue: str = "optimiser",
    over: str = "repeat",
    xlabel: str = "weight n×n",
    ylabel: str = "seconds per step",
    title: str = "",
) -> Figure:
    """Interleaved timings: per ``hue``, the median over ``over`` against ``x`` with its
    quartiles as error bars, on log axes (the spread a timing verdict must clear)."""
    fig, axes = figure(1, 1, panel=(4.2, 3.2))
    ax = axes[0, 0]
    for i, name in enumerate(seconds[hue].values):
        quartile_errorbar(
            ax, seconds[x], seconds.sel({hue: name}), over, fmt="os^dv<>"[i % 7] + "-",
            color=list(OKABE_ITO.values())[(i + 1) % len(OKABE_ITO)], label=str(name),
        )  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel)
    ax.set_xticks(seconds[x].values, [str(int(d)) for d in seconds[x].values])
    ax.minorticks_off()
    ax.set_title(f"{title} (median, quartiles of {seconds.sizes[over]} interleaved rounds)")
    ax.legend()
    return fig


def grid_lines(
    da: xr.DataArray,
    *,
    x: str,
    hue: str,
    row: str,
    col: str,
    title: Callable[..., str] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    suptitle: str = "",
    panel: tuple[float, float] = (3.3, 2.6),
    legend_cols: int = 4,
    style_of: Callable[[str, int], dict] | None = None,
    label_of: Callable[[str], str] | None = None,
) -> Figure:
    """A grid of panels over a Dataset's dims: one panel per (``row``, ``col``) value, one
    line per ``hue`` value against ``x``.

    A ``hue`` value that is all NaN in a panel draws nothing there (e.g. K-FAC where it was
    not fitted); a panel that is all NaN is switched off (e.g. a model with fewer layers).
    Estimator hues take ``estimator_style`` / ``estimator_label``.

    Args:
        da: the values, with exactly the dims ``x``, ``hue``, ``row``, ``col``.
        x: the abscissa's dim.
        hue: the dim whose values are the lines.
        row: the dim of the panel rows.
        col: the dim of the panel columns.
        title: ``title(row=value, col=value) -> str`` for each panel.
        xlabel: the bottom panels' x label.
        ylabel: the left panels' y label.
        suptitle: the figure's title.
        panel: one panel's (width, height) in inches.
        legend_cols: columns of the figure legend.
        style_of: ``(hue value, index) -> line keywords`` (default: ``estimator_style`` for
            estimators, matplotlib's cycle otherwise).
        label_of: ``hue value -> label`` (lines with one label share one legend entry).
    """
    missing = sorted({x, hue, row, col} - set(da.dims)) or sorted(set(da.dims) - {x, hue, row, col})
    if missing:
        raise ValueError(f"grid_lines: dims {missing} do not match x/hue/row/col of {da.dims}")
    rows, cols = list(da[row].values), list(da[col].values)
    fig, axes = figure(len(rows), len(cols), panel=panel)
    for r, rv in enumerate(rows):
        for c, cv in enumerate(cols):
            ax, cell = axes[r, c], da.sel({row: rv, col: cv})
            if bool(cell.isnull().all()):
                ax.set_axis_off()
                continue
            for i, h in enumerate(cell[hue].values):
                y = cell.sel({hue: h}).transpose(x).values
                if np.all(np.isnan(y)):
                    continue
                h = str(h)
                est = hue == "estimator"
                style_ = style_of(h, i) if style_of else (estimator_style(h, i) if est else {})
                label = label_of(h) if label_of else (estimator_label(h) if est else h)
                ax.plot(cell[x].values, y, label=label, gid=h, **style_)
            if title is not None:
                ax.set_title(title(row=rv, col=cv), fontsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel(xlabel)
            if c == 0:
                ax.set_ylabel(ylabel)
            ax.xaxis.get_major_locator().set_params(integer=True)
    legend(fig, axes, ncols=legend_cols)
    _suptitle(fig, suptitle)
    return fig


def _method_color(name: str) -> str:
    """The Okabe–Ito colour of a training study's optimiser (``tasks.optimizer``)."""
    from .tasks import optimizer

    return OKABE_ITO.get(optimizer(name).color, "#7F7F7F")


def plot_tuning(ds: xr.Dataset) -> Figure:
    """A stacked tuning Dataset (``tuning.stack``), one column per comparison: loss against
    peak learning rate on the selection seed (failures drawn as × at the top, the fresh
    seeds as dots at the selected rate), and the paired differences against the
    comparison's baseline with their intervals and the ±threshold band."""
    from .tasks import optimizer
    from .tuning import compare, unstack

    comps = ds["comparison"].values.tolist()
    fig, axes = figure(2, len(comps), panel=(3.3, 2.5))
    for col, comp in enumerate(comps):
        d = unstack(ds, comp)
        ax = axes[0, col]
        finite = d["loss"].values[np.isfinite(d["loss"].values)]
        top = float(np.nanmax(finite)) if finite.size else 1.0
        for m in d["method"].values.tolist():
            o = optimizer(m)
            sel = d["loss"].sel({"method": m}).isel(seed=0)
            lrs = d["lr"].values
            ran = d["ran"].sel({"method": m}).isel(seed=0).values.astype(bool)
            bad = d["failed"].sel({"method": m}).isel(seed=0).values.astype(bool)
            ax.plot(
                lrs[ran & ~bad],
                sel.values[ran & ~bad],
                o.dash,
                marker="o",
                ms=3,
                color=_method_color(m),
                label=o.label,
            )
            ax.plot(lrs[bad], np.full(bad.sum(), top), "x", color=_method_color(m), ms=6)
            lr = float(d["selected_lr"].sel({"method": m}))
            if np.isfinite(lr):
                ys = d["loss"].sel({"method": m, "lr": lr}).values[1:]
                ax.plot(np.full(ys.size, lr), ys, ".", color=_method_color(m), ms=4)
        ax.set(
            xscale="log",
            xlabel="peak learning rate",
            ylabel="held-out loss",
            title=f"{comp} (× failed)",
        )
        base = d.attrs.get("baseline_for_figure") or d["method"].values[0]
        c = compare(d, str(base))
        ax = axes[1, col]
        ms = c["method"].values.tolist()
        y = np.arange(len(ms))
        mean, lo, hi = c["mean"].values, c["low"].values, c["high"].values
        ok = np.isfinite(mean)
        ax.errorbar(
            mean[ok],
            y[ok],
            xerr=[mean[ok] - lo[ok], hi[ok] - mean[ok]],
            fmt="o",
            color="black",
            capsize=2,
        )
        for yi in y[~ok]:
            ax.text(0, yi, "failed", ha="center", va="center", color="#D55E00", fontsize=7)
        thr = float(d.attrs["threshold"])
        ax.axvspan(-thr, thr, color="#999999", alpha=0.25, lw=0)
        ax.axvline(0, color="black", lw=0.5)
        ax.set_yticks(y, [optimizer(m).label for m in ms], fontsize=6)
        ax.set(xlabel=f"loss − {optimizer(str(base)).label} (95% CI)")
    legend(fig, axes[:1], ncols=4)
    return fig


def plot_probe(probe_score: xr.DataArray) -> Figure:
    """A preconditioner probe beside a tuning run (``tasks.Task.probes``): per target (rows)
    and layer (columns), each optimiser's own preconditioner's cosine with the target over
    training steps, and the batch optima (KL-optimal, Shampoo²) of the first run's targets."""
    from .tasks import optimizer

    p = probe_score
    targets, methods = p["probe_target"].values.tolist(), p["probe_method"].values.tolist()
    fig, axes = figure(len(targets), len(p["probe_layer"]), panel=(3.3, 2.4))
    for (i, t), (j, layer) in itertools.product(
        enumerate(targets), enumerate(p["probe_layer"].values.tolist())
    ):
        ax, at = axes[i, j], {"probe_target": t, "probe_layer": layer, "metric": "cosine"}
        for m in methods:
            y = p.sel(probe_method=m, probe_estimator="optimizer", **at)
            ax.plot(p["probe_step"], y, "-o", color=_method_color(m),
                    label=f"{optimizer(m).label} (own)")  # fmt: skip
        for est, ls in (("kl_optimal", "--"), ("shampoo_squared", ":")):
            if est in p["probe_estimator"].values:
                y = p.sel(probe_method=methods[0], probe_estimator=est, **at)
                ax.plot(p["probe_step"], y, ls, color="#7F7F7F",
                        label=f"batch {est} ({optimizer(methods[0]).label} run)")  # fmt: skip
        ax.set(title=f"{layer} · {t}", xlabel="step", ylabel="cosine to target")
    legend(fig, axes, ncols=3)
    return fig
