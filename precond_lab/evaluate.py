"""The evaluation sweep: every estimator × every metric, over steps, layers and targets.

:func:`evaluate` fits each requested estimator to each target of each captured step and
layer, scores it with :func:`precond_lab.metrics.score` (one pass per cell), and returns
an :class:`xarray.Dataset` that is ready for ``.sel``, ``.plot`` and
``to_netcdf``/``to_zarr``. Layout (``B`` only with ``batch_sizes=``; ``index`` only with
the ``"spectrum"`` metric)::

    dims: step, layer, target, estimator, [batch_size,] metric, [index]
    score             (step, layer, target, estimator, [batch_size,] metric)  float64
    status            (step, layer, target, estimator, [batch_size])  str: "ok",
                      "not_converged", "skipped", or the error's class name
    message           (same)  str: "" or the details (error message, skip reason)
    fit_seconds       (same)  wall time of the fit (NaN where it did not run)
    iterations        (same)  int: FitInfo.iterations, -1 for closed-form fits
    converged         (same)  int8: 1 / 0, -1 where not applicable
    damping           (step, layer, target)  the λ of the scored target Σ + λI
    num_samples       (step, layer, target)  int: samples behind the target, -1 if dense
    eigenvalues       (step, layer, target, estimator, [batch_size,] index)  descending,
                      NaN-padded to the largest layer; scaled by ``spectrum_rescale``
    target_eigenvalues (step, layer, target, index)  eigenvalues of Σ + λI

Coordinates: ``step`` (int), ``layer``/``target``/``estimator``/``metric`` (str),
``layer_rows``/``layer_cols`` on ``layer``, ``fit_source`` on ``estimator`` (the target
kind it is fitted on, or ``"target"`` for the scored target itself), ``batch_size``,
and, from a capture, ``loss``/``accuracy`` on ``step``. Attributes hold provenance as
strings and numbers only (netCDF rejects dicts and booleans): library and version,
creation date, source, damping rule, dtype, and the failure summary.

Target kinds. From a capture (:mod:`precond_lab.capture`): ``"gradients"`` (empirical
Fisher, real labels), ``"ggn"`` (exact Gauss–Newton), ``"ggn_mc"`` (sampled labels),
``"trajectory"`` (Adagrad's ``Σ_s g_s g_sᵀ``) and ``"batch_<B>"`` (the capture's
mini-batch gradients). In memory: any names, as dict keys.

Estimators are given by name (see :data:`ESTIMATORS`), with arguments in parentheses
(``"power_iteration(3)"``, ``"kfac(reduce)"``, ``"eigencorrected(kl_optimal)"``,
``"one_sided_kl(right)"``) and, optionally, ``"@<kind>"`` to fit on another target kind
than the one scored (``"shampoo_squared@gradients"`` scored against ``"ggn"``: Shampoo²
from real-label gradients as an approximation of the Gauss–Newton matrix), or as
``(name, callable)`` pairs with ``callable(target) -> Structure``.

Damping. ``damping=λ`` (``damping_mode="absolute"``) or ``λ = damping · tr(Σ)/(mn)``
(``"relative"``, per target and cell). Every estimator fits ``Σ + λI`` and every metric
scores against it; K-FAC, built from activations and backprops, gets ``√λ I`` added to
each factor.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from . import estimators as est
from . import metrics as met
from .structures import Kronecker, Structure
from .targets import Target, as_target

__all__ = [
    "ESTIMATORS",
    "DEFAULT_ESTIMATORS",
    "CellSkipped",
    "EvaluationWarning",
    "FitContext",
    "evaluate",
    "parse_estimator",
    "power_iteration_curve",
    "spectra",
]

DEFAULT_ESTIMATORS = (
    "frobenius_optimal",
    "shampoo_squared",
    "shampoo",
    "kl_optimal",
    "eigencorrected",
    "kfac",
    "diagonal",
)
_CAPTURE_KINDS = ("gradients", "ggn", "ggn_mc")
_KFAC_BACKPROPS = {
    "gradients": "kfac_backprops",
    "ggn": "kfac_backprops_ggn",
    "ggn_mc": "kfac_backprops_mc",
}


class CellSkipped(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by an estimator builder when a cell cannot be evaluated (recorded as skipped)."""


class EvaluationWarning(RuntimeWarning):
    """Issued once per :func:`evaluate` call that had failed or non-converged cells."""


@dataclasses.dataclass(frozen=True)
class FitContext:
    """What an estimator builder gets for one fit.

    Attributes:
        target: the target to fit, already damped (``Σ + λI``).
        damping: the ``λ`` in it.
        kind: the target kind fitted on (e.g. ``"ggn"``).
        kfac_inputs: ``(activations, backprops)`` for that kind, or None.
        batch_size: mini-batch size of the fitted target (1: per-example).
    """

    target: Target
    damping: float
    kind: str
    kfac_inputs: tuple[Any, Any] | None = None
    batch_size: int = 1


# --------------------------------------------------------------------------------------
# Estimator registry
# --------------------------------------------------------------------------------------


def _kfac(ctx: FitContext, variant: str = "expand") -> Structure:
    if ctx.kfac_inputs is None:
        raise CellSkipped(f"no K-FAC activations/backprops for target kind {ctx.kind!r}")
    if ctx.batch_size != 1:
        raise CellSkipped("K-FAC is built from per-example activations, not batch gradients")
    k = est.kfac(*ctx.kfac_inputs, variant=variant, damping=ctx.damping)
    if k.shape != ctx.target.shape:
        raise ValueError(f"K-FAC factors give shape {k.shape}, the target is {ctx.target.shape}")
    return k


def _eigencorrected(ctx: FitContext, basis: str = "shampoo") -> Structure:
    if basis == "shampoo":
        return est.eigencorrected(ctx.target)
    base = _build(parse_estimator(basis), ctx)
    if not isinstance(base, Kronecker):
        raise ValueError(f"eigencorrected needs a Kronecker basis; {basis!r} gave {type(base)}")
    return est.eigencorrected(ctx.target, basis=base)


#: Estimator builders by name: ``builder(ctx: FitContext, *args, **kwargs) -> Structure``.
#: Arguments come from the name, e.g. ``"power_iteration(3, variant='gauss-seidel')"``.
#: Add entries to register new estimators.
ESTIMATORS: dict[str, Callable[..., Structure]] = {
    "frobenius_optimal": lambda ctx, **kw: est.frobenius_optimal(ctx.target, **kw),
    "power_iteration": lambda ctx, steps=1, **kw: est.power_iteration(ctx.target, steps, **kw),
    "shampoo": lambda ctx: est.shampoo(ctx.target),
    "shampoo_squared": lambda ctx: est.shampoo_squared(ctx.target),
    "kl_optimal": lambda ctx, **kw: est.kl_optimal(ctx.target, **kw),
    "one_sided_kl": lambda ctx, side="left": est.one_sided_kl(ctx.target, side=side),
    "eigencorrected": _eigencorrected,
    "kfac": _kfac,
    "diagonal": lambda ctx: est.diagonal(ctx.target),
}

_SPEC_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*(?:@\s*([\w\-]+))?\s*$")


@dataclasses.dataclass(frozen=True)
class _Spec:
    name: str  # the estimator coordinate (the full spec string, normalised)
    builder: Callable[..., Structure] | None  # registry builder, or None for a user callable
    fn: Callable[[Target], Structure] | None
    args: tuple = ()
    kwargs: tuple = ()
    source: str | None = None  # fit on this kind instead of the scored target


def _split_args(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch in "([{"
        depth -= ch in ")]}"
        cur += ch
    if cur.strip():
        out.append(cur)
    return [a.strip() for a in out]


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: kfac(reduce), eigencorrected(kl_optimal)


def parse_estimator(spec: str) -> _Spec:
    """Parse ``"name(arg, key=value)@kind"`` against :data:`ESTIMATORS`.

    Raises:
        ValueError: malformed spec or unknown estimator name (the message lists them).
    """
    m = _SPEC_RE.match(spec)
    if not m:
        raise ValueError(f"cannot parse estimator spec {spec!r}; expected 'name(args)@kind'")
    name, argtext, source = m.group(1), m.group(2), m.group(3)
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    args, kwargs = [], {}
    for a in _split_args(argtext or ""):
        key, eq, val = a.partition("=")
        if eq and re.fullmatch(r"[A-Za-z_]\w*", key.strip()):
            kwargs[key.strip()] = _literal(val.strip())
        else:
            args.append(_literal(a))
    return _Spec(
        spec.strip().replace(" ", ""),
        ESTIMATORS[name],
        None,
        tuple(args),
        tuple(kwargs.items()),
        source,
    )


def _as_spec(item) -> _Spec:
    if isinstance(item, str):
        return parse_estimator(item)
    if isinstance(item, tuple) and len(item) == 2 and callable(item[1]):
        name = str(item[0])
        source = name.split("@", 1)[1] if "@" in name else None
        return _Spec(name, None, item[1], source=source)
    raise TypeError(f"an estimator is a name or a (name, callable) pair; got {item!r}")


def _build(spec: _Spec, ctx: FitContext) -> Structure:
    if spec.fn is not None:
        return spec.fn(ctx.target)
    return spec.builder(ctx, *spec.args, **dict(spec.kwargs))


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------


class _Source:
    """Uniform access to ``(step, layer, kind) -> samples`` for captures and dicts."""

    steps: list[int]
    layers: list[str]
    description: str
    attrs: dict
    step_coords: dict[str, list[float]]

    def kinds(self, step: int, layer: str) -> list[str]:
        raise NotImplementedError

    def samples(self, step: int, layer: str, kind: str):
        raise NotImplementedError

    def kfac_inputs(self, step: int, layer: str, kind: str):
        return None


class _DictSource(_Source):
    def __init__(self, data: Mapping, kfac_inputs: Mapping | None):
        if not data:
            raise ValueError("the source dict is empty")
        first = next(iter(data.values()))
        if isinstance(first, Mapping):
            inner = next(iter(first.values()))
            nested = data if isinstance(inner, Mapping) else {0: data}
        else:
            nested = {0: {"layer": data}}
        self.data = {int(s): {str(k): dict(v) for k, v in lay.items()} for s, lay in nested.items()}
        self.steps = list(self.data)
        self.layers = list(dict.fromkeys(lay for s in self.data.values() for lay in s))
        self.kfac = dict(kfac_inputs or {})
        self.description = "in-memory"
        self.attrs = {}
        self.step_coords = {}

    def kinds(self, step, layer):
        return [k for k in self.data[step].get(layer, {})]

    def samples(self, step, layer, kind):
        return self.data[step].get(layer, {}).get(kind)

    def kfac_inputs(self, step, layer, kind):
        k = self.kfac
        if kind in k and isinstance(k[kind], tuple):
            return k[kind]
        return None


class _CaptureSource(_Source):
    def __init__(self, tree: xr.DataTree, description: str):
        self.tree = tree
        self.attrs = dict(tree.attrs)
        names = sorted(c for c in tree.children if re.fullmatch(r"step_\d{6,}", c))
        self.steps = [int(c[5:]) for c in names]
        self._names = dict(zip(self.steps, names, strict=True))
        layers = str(self.attrs.get("layers", ""))
        self.layers = [x for x in layers.split(",") if x]
        if not self.layers and names:  # no root attribute: every group holding gradients
            self.layers = [
                n.relative_to(tree[names[0]])
                for n in tree[names[0]].subtree
                if any(k in n.dataset for k in _CAPTURE_KINDS)
            ]
        self.description = description
        self.step_coords = {}
        for key in ("loss", "accuracy", "test_loss", "test_accuracy"):
            vals = [float(tree[self._names[s]].attrs.get(key, np.nan)) for s in self.steps]
            self.step_coords[key] = [np.nan if v == -1.0 else v for v in vals]

    def _node(self, step, layer):
        try:
            return self.tree[self._names[step]][layer]
        except KeyError:
            return None

    def kinds(self, step, layer):
        node = self._node(step, layer)
        if node is None:
            return []
        out = [k for k in _CAPTURE_KINDS if k in node.dataset]
        if "trajectory" in node.children:
            out.append("trajectory")
        sizes = sorted(int(c[11:]) for c in node.children if c.startswith("batch_size_"))
        return out + [f"batch_{b}" for b in sizes]

    def samples(self, step, layer, kind):
        from .capture.store import as_samples

        node = self._node(step, layer)
        if node is None:
            return None
        if kind in _CAPTURE_KINDS:
            return node.dataset[kind] if kind in node.dataset else None
        child = "trajectory" if kind == "trajectory" else f"batch_size_{kind[6:]}"
        if kind.startswith("batch_") or kind == "trajectory":
            if child in node.children and "gradients" in node[child].dataset:
                return as_samples(node[child].dataset["gradients"])
        return None

    def kfac_inputs(self, step, layer, kind):
        node = self._node(step, layer)
        bp = _KFAC_BACKPROPS.get(kind)
        if node is None or bp is None:
            return None
        ds = node.dataset
        if "kfac_activations" not in ds or bp not in ds:
            return None
        return np.asarray(ds["kfac_activations"].values), np.asarray(ds[bp].values)


def _open_source(source, kfac_inputs, steps) -> _Source:
    if isinstance(source, (str, Path)):
        from .capture import open_capture

        return _CaptureSource(open_capture(source, steps=steps), str(source))
    if isinstance(source, xr.DataTree):
        return _CaptureSource(source, str(source.attrs.get("source_path", "DataTree")))
    if isinstance(source, Mapping):
        return _DictSource(source, kfac_inputs)
    if isinstance(source, (np.ndarray, xr.DataArray, Target)) or hasattr(source, "shape"):
        return _DictSource({"target": source}, kfac_inputs)
    raise TypeError(
        "source must be a capture path, an xarray.DataTree, a dict {kind: samples} "
        f"(or {{step: {{layer: {{kind: samples}}}}}}), or one array; got {type(source).__name__}"
    )


# --------------------------------------------------------------------------------------
# Targets: building, damping, mini-batching
# --------------------------------------------------------------------------------------


def _cast(samples, dtype):
    if dtype is None or isinstance(samples, Target):
        return samples
    if isinstance(samples, xr.DataArray):
        return samples if samples.dtype == dtype else samples.astype(dtype)
    return np.asarray(samples, dtype=dtype)


def _batched(samples, batch_size: int, kind: str):
    """Mini-batch gradient outer products ``B ḡ ḡᵀ`` over consecutive groups of ``B``.

    Returns ``(samples, weights)`` for :class:`SampleTarget`: the group sums
    ``Σ_{i∈j} g_i`` with weight ``1/(B · num_batches)`` (an inner ``mc`` axis of
    sampled-label gradients is kept: each draw gives its own batch gradient).
    """
    if batch_size == 1:
        return samples, None
    if isinstance(samples, Target):
        raise CellSkipped("mini-batching needs per-example samples, not a dense target")
    if isinstance(samples, xr.DataArray):
        if "weight" in samples.coords:
            raise CellSkipped(f"target {kind!r} is already weighted (batch or trajectory)")
        if samples.ndim == 4 and samples.dims[1] == "class":
            raise CellSkipped("mini-batch gradients of exact GGN pseudo-gradients are undefined")
        values = np.asarray(samples.values)
    else:
        if kind == "ggn":
            raise CellSkipped("mini-batch gradients of exact GGN pseudo-gradients are undefined")
        values = np.asarray(samples)
    num = values.shape[0] // batch_size
    if num < 1:
        raise CellSkipped(f"batch size {batch_size} exceeds the {values.shape[0]} samples")
    grouped = values[: num * batch_size].reshape(num, batch_size, *values.shape[1:]).sum(axis=1)
    return grouped, np.full(num, 1.0 / (num * batch_size), dtype=values.dtype)


def _flat_samples(samples, weights):
    """``(N, K, m, n)`` arrays → ``N·K`` samples, each with its example's weight."""
    if isinstance(samples, (Target, xr.DataArray)) or np.ndim(samples) != 4:
        return samples, weights
    samples = np.asarray(samples)
    num, inner = samples.shape[:2]
    w = np.full(num, 1.0 / num, samples.dtype) if weights is None else np.asarray(weights)
    return samples.reshape(num * inner, *samples.shape[2:]), np.repeat(w, inner)


def _damping_for(target: Target, damping: float, mode: str) -> float:
    if mode == "absolute":
        return float(damping)
    m, n = target.shape
    return float(damping) * float(target.trace()) / (m * n)


def _num_samples(samples) -> int:
    if isinstance(samples, Target):
        return int(getattr(samples, "num_samples", -1))
    shape = samples.shape
    return int(shape[0] * (shape[1] if len(shape) == 4 else 1))


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Fit:
    approx: Structure | None = None
    seconds: float = float("nan")
    iterations: int = -1
    converged: int = -1
    status: str = "ok"
    message: str = ""


def _status_of(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, CellSkipped):
        return "skipped", str(exc)
    return type(exc).__name__, f"{type(exc).__name__}: {exc}"


def _run_fit(spec: _Spec, ctx: FitContext, raise_errors: bool) -> _Fit:
    fit = _Fit()
    t0 = time.perf_counter()
    try:
        approx = _build(spec, ctx)
        jax.block_until_ready(jax.tree_util.tree_leaves(approx))
    except Exception as e:  # noqa: BLE001 - one cell's failure is recorded, not fatal
        if raise_errors and not isinstance(e, CellSkipped):
            raise
        fit.status, fit.message = _status_of(e)
        return fit
    fit.seconds = time.perf_counter() - t0
    fit.approx = approx
    info = getattr(approx, "info", None)
    if info is not None:
        fit.iterations = int(info.iterations)
        fixed_steps = str(info.method).startswith("power-iteration")
        if not fixed_steps:
            fit.converged = int(bool(info.converged))
            if not info.converged:
                res = np.asarray(info.residuals)
                last = f"{float(res[-1]):.3e}" if res.size else "n/a"
                fit.status = "not_converged"
                fit.message = (
                    f"{info.method or spec.name} did not converge in {info.iterations} "
                    f"iterations (last residual {last})"
                )
    return fit


def _target_eigenvalues(t: Target, size: int) -> np.ndarray:
    spec = t.eigh()
    vals = np.full(t.dim, spec.floor, np.float64)
    vals[: spec.rank] = np.asarray(spec.values, np.float64)
    return _pad(np.sort(vals)[::-1], size)


def _pad(vals: np.ndarray, size: int) -> np.ndarray:
    out = np.full(size, np.nan)
    k = min(size, vals.size)
    out[:k] = vals[:k]
    return out


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
    kfac_inputs: Mapping[str, tuple[Any, Any]] | None = None,
    dtype=None,
    spectrum_k: int | None = None,
    spectrum_rescale: str | None = "frobenius",
    progress: bool = True,
    raise_errors: bool = False,
) -> xr.Dataset:
    """Fit and score every estimator on every (step, layer, target) cell of ``source``.

    Args:
        source: a capture store path, an ``xarray.DataTree`` from
            :func:`precond_lab.capture.open_capture`/``capture``, a dict
            ``{kind: samples}`` for one step and layer (samples: ``(N, m, n)`` or
            ``(N, K, m, n)`` arrays, DataArrays, or Targets such as ``DenseTarget``),
            a nested dict ``{step: {layer: {kind: samples}}}``, or one array (kind
            ``"target"``).
        estimators: names from :data:`ESTIMATORS` with optional arguments and
            ``@kind`` (see the module docstring), or ``(name, callable)`` pairs.
        metrics: names from :data:`precond_lab.metrics.SCORE_NAMES`, plus optionally
            ``"spectrum"`` (adds ``eigenvalues`` and ``target_eigenvalues``).
        targets: target kinds to score against (default: every kind of the first cell).
        damping: ``λ`` (``damping_mode="absolute"``) or its multiple of ``tr(Σ)/(mn)``
            (``"relative"``).
        damping_mode: ``"absolute"`` or ``"relative"``.
        layers: layers to evaluate (default: all).
        steps: steps to evaluate (default: all).
        batch_sizes: fit every estimator on mini-batch gradient outer products
            ``B ḡ ḡᵀ`` of consecutive groups of ``B`` samples (sampled-label draws kept
            apart), scored against the per-example target; adds the dim ``batch_size``.
        kfac_inputs: for dict sources, ``{kind: (activations, backprops)}`` for ``kfac``.
        dtype: cast every target to this dtype (e.g. ``"float64"``; needs
            ``jax_enable_x64``); default: as stored.
        spectrum_k: keep the top ``k`` eigenvalues (default: all ``mn``).
        spectrum_rescale: scale approximations' eigenvalues by their
            ``"frobenius"`` (default) or ``"kl"`` optimal scalar, or not (None).
        progress: show a tqdm progress bar.
        raise_errors: re-raise the first failing fit instead of recording it.

    Returns:
        The Dataset described in the module docstring.

    Raises:
        ValueError: unknown estimator or metric names, unknown steps/layers/targets,
            bad damping.
    """
    specs = [_as_spec(e) for e in estimators]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"estimator names must be unique; got {names}")
    metrics = list(metrics)
    bad = [x for x in metrics if x not in met.SCORE_NAMES and x != "spectrum"]
    if bad:
        raise ValueError(f"unknown metrics {bad}; valid: {', '.join(met.SCORE_NAMES)}, spectrum")
    want_spectrum = "spectrum" in metrics
    metrics = [x for x in metrics if x != "spectrum"]
    if damping_mode not in ("absolute", "relative"):
        raise ValueError(f"damping_mode must be 'absolute' or 'relative'; got {damping_mode!r}")
    if not np.isfinite(damping) or damping < 0:
        raise ValueError(f"damping must be a finite number ≥ 0; got {damping}")
    if spectrum_rescale not in (None, "frobenius", "kl"):
        raise ValueError(
            f"spectrum_rescale must be None, 'frobenius' or 'kl'; got {spectrum_rescale!r}"
        )
    dtype = None if dtype is None else np.dtype(dtype)

    src = _open_source(source, kfac_inputs, steps)
    step_list = src.steps if steps is None else [int(s) for s in steps]
    missing = sorted(set(step_list) - set(src.steps))
    if missing:
        raise ValueError(f"steps {missing} not in the source; available: {src.steps}")
    layer_list = src.layers if layers is None else [str(x) for x in layers]
    missing = [x for x in layer_list if x not in src.layers]
    if missing:
        raise ValueError(f"layers {missing} not in the source; available: {src.layers}")
    available = list(
        dict.fromkeys(k for s in step_list for la in layer_list for k in src.kinds(s, la))
    )
    target_list = available if targets is None else list(targets)
    missing = [t for t in target_list if t not in available]
    if missing:
        raise ValueError(f"targets {missing} not in the source; available: {available}")
    sweep = batch_sizes is not None
    bs_list = [1] if batch_sizes is None else [int(b) for b in batch_sizes]
    if any(b < 1 for b in bs_list):
        raise ValueError(f"batch sizes must be positive; got {bs_list}")

    shapes: dict[str, tuple[int, int]] = {}
    n_s, n_l, n_t, n_e, n_b = (len(x) for x in (step_list, layer_list, target_list, specs, bs_list))
    cell_shape = (n_s, n_l, n_t, n_e, n_b)
    score = np.full((*cell_shape, len(metrics)), np.nan)
    status = np.full(cell_shape, "skipped", dtype=object)
    message = np.full(cell_shape, "", dtype=object)
    fit_seconds = np.full(cell_shape, np.nan)
    iterations = np.full(cell_shape, -1, np.int64)
    converged = np.full(cell_shape, -1, np.int8)
    damp_arr = np.full((n_s, n_l, n_t), np.nan)
    nsamp = np.full((n_s, n_l, n_t), -1, np.int64)
    spectra_approx: dict[tuple, np.ndarray] = {}
    spectra_target: dict[tuple, np.ndarray] = {}
    dtypes: set[str] = set()

    bar = tqdm(total=int(np.prod(cell_shape)), desc="evaluate", unit="cell", disable=not progress)
    try:
        for i_s, step in enumerate(step_list):
            for i_l, layer in enumerate(layer_list):
                cache: dict[tuple[str, int], tuple[Target, float] | BaseException] = {}

                def target_for(kind, batch, step=step, layer=layer, cache=cache):
                    key = (kind, batch)
                    if key not in cache:
                        try:
                            raw = src.samples(step, layer, kind)
                            if raw is None:
                                raise CellSkipped(f"target {kind!r} not captured here")
                            raw = _cast(raw, dtype)
                            t = as_target(*_flat_samples(*_batched(raw, batch, kind)))
                            if batch == 1:
                                lam = _damping_for(t, damping, damping_mode)
                            else:  # the per-example target's λ
                                lam = target_for(kind, 1)[1]
                            cache[key] = (t.damped(lam), lam, _num_samples(raw))
                        except Exception as e:  # noqa: BLE001
                            if raise_errors and not isinstance(e, CellSkipped):
                                raise
                            cache[key] = e
                    value = cache[key]
                    if isinstance(value, BaseException):
                        raise value
                    return value

                fits: dict[tuple[str, str, int], _Fit] = {}

                def fit_for(spec, kind, batch, step=step, layer=layer, fits=fits):
                    fkind = spec.source or kind
                    key = (spec.name, fkind, batch)
                    if key not in fits:
                        try:
                            t, lam, _ = target_for(fkind, batch)
                        except Exception as e:  # noqa: BLE001
                            f = _Fit()
                            f.status, f.message = _status_of(e)
                            if f.status == "skipped" and fkind != kind:
                                f.message = f"fit source: {f.message}"
                            fits[key] = f
                            return f
                        ctx = FitContext(
                            t,
                            lam,
                            fkind,
                            src.kfac_inputs(step, layer, fkind),
                            batch,
                        )
                        fits[key] = _run_fit(spec, ctx, raise_errors)
                    return fits[key]

                for i_t, kind in enumerate(target_list):
                    try:
                        target, lam, count = target_for(kind, 1)
                    except Exception as e:  # noqa: BLE001
                        st, msg = _status_of(e)
                        status[i_s, i_l, i_t] = st
                        message[i_s, i_l, i_t] = msg
                        bar.update(n_e * n_b)
                        continue
                    shapes.setdefault(layer, target.shape)
                    dtypes.add(np.dtype(target.dtype).name)
                    damp_arr[i_s, i_l, i_t] = lam
                    nsamp[i_s, i_l, i_t] = count
                    if want_spectrum:
                        spectra_target[(i_s, i_l, i_t)] = _target_eigenvalues(target, target.dim)
                    for i_e, spec in enumerate(specs):
                        for i_b, batch in enumerate(bs_list):
                            idx = (i_s, i_l, i_t, i_e, i_b)
                            fit = fit_for(spec, kind, batch)
                            status[idx], message[idx] = fit.status, fit.message
                            fit_seconds[idx] = fit.seconds
                            iterations[idx], converged[idx] = fit.iterations, fit.converged
                            if fit.approx is not None:
                                try:
                                    if fit.approx.shape != target.shape:
                                        raise ValueError(
                                            f"approximation shape {fit.approx.shape} differs "
                                            f"from the target's {target.shape}"
                                        )
                                    values = met.score(target, fit.approx)
                                    score[idx] = [values[k] for k in metrics]
                                    if want_spectrum:
                                        c = {
                                            "frobenius": values["frobenius_scale"],
                                            "kl": values["kl_scale"],
                                            None: 1.0,
                                        }[spectrum_rescale]
                                        ev = np.sort(
                                            np.asarray(fit.approx.eigenvalues(), np.float64).ravel()
                                        )[::-1]
                                        spectra_approx[idx] = c * ev
                                except Exception as e:  # noqa: BLE001
                                    if raise_errors:
                                        raise
                                    status[idx], message[idx] = _status_of(e)
                                    score[idx] = np.nan
                            bar.update(1)
    finally:
        bar.close()

    dims = ["step", "layer", "target", "estimator", "batch_size"]
    layer_rows = [shapes.get(x, (-1, -1))[0] for x in layer_list]
    layer_cols = [shapes.get(x, (-1, -1))[1] for x in layer_list]
    coords: dict[str, Any] = {
        "step": np.asarray(step_list, np.int64),
        "layer": np.asarray(layer_list, dtype=object),
        "target": np.asarray(target_list, dtype=object),
        "estimator": np.asarray(names, dtype=object),
        "batch_size": np.asarray(bs_list, np.int64),
        "metric": np.asarray(metrics, dtype=object),
        "layer_rows": ("layer", np.asarray(layer_rows, np.int64)),
        "layer_cols": ("layer", np.asarray(layer_cols, np.int64)),
        "fit_source": ("estimator", np.asarray([s.source or "target" for s in specs], object)),
    }
    for key, vals in src.step_coords.items():
        all_vals = dict(zip(src.steps, vals, strict=True))
        coords[key] = ("step", np.asarray([all_vals[s] for s in step_list], np.float64))
    data = {
        "score": ([*dims, "metric"], score),
        "status": (dims, status),
        "message": (dims, message),
        "fit_seconds": (dims, fit_seconds),
        "iterations": (dims, iterations),
        "converged": (dims, converged),
        "damping": (dims[:3], damp_arr),
        "num_samples": (dims[:3], nsamp),
    }
    if want_spectrum:
        size = max([r * c for r, c in shapes.values()] or [0])
        size = size if spectrum_k is None else min(size, int(spectrum_k))
        ev = np.full((*cell_shape, size), np.nan)
        for idx, vals in spectra_approx.items():
            ev[idx] = _pad(vals, size)
        tv = np.full((n_s, n_l, n_t, size), np.nan)
        for idx, vals in spectra_target.items():
            tv[idx] = _pad(vals, size)
        data["eigenvalues"] = ([*dims, "index"], ev)
        data["target_eigenvalues"] = ([*dims[:3], "index"], tv)
        coords["index"] = np.arange(size, dtype=np.int64)

    failures, skipped = [], []
    for idx in np.ndindex(*cell_shape):
        st = status[idx]
        if st == "ok":
            continue
        where = (
            f"step={step_list[idx[0]]} layer={layer_list[idx[1]]} target={target_list[idx[2]]} "
            f"estimator={names[idx[3]]}" + (f" batch_size={bs_list[idx[4]]}" if sweep else "")
        )
        (skipped if st == "skipped" else failures).append(f"{where}: {message[idx] or st}")
    attrs = {
        "title": "precond_lab evaluation sweep",
        "library": "precond_lab",
        "library_version": _version(),
        "jax_version": jax.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": src.description,
        "damping": float(damping),
        "damping_mode": damping_mode,
        "dtype": ",".join(sorted(dtypes)) or "unknown",
        "x64": int(bool(jax.config.read("jax_enable_x64"))),
        "estimators": ",".join(names),
        "spectrum_rescale": str(spectrum_rescale) if want_spectrum else "",
        "num_failures": len(failures),
        "failures": "\n".join(failures),
        "num_skipped": len(skipped),
        "skipped": "\n".join(dict.fromkeys(s.split(": ", 1)[1] for s in skipped)),
    }
    for key in ("model", "dataset", "loss", "optimizer", "seed", "num_samples"):
        if key in src.attrs:
            v = src.attrs[key]
            attrs[f"source_{key}"] = v if isinstance(v, (int, float, str)) else str(v)
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    if not sweep:
        ds = ds.squeeze("batch_size", drop=True)
    ds["score"].attrs["long_name"] = "metric value"
    ds["fit_seconds"].attrs["units"] = "s"
    ds["status"].attrs["description"] = "ok, not_converged, skipped, or the error class name"
    ds["converged"].attrs["description"] = "1 converged, 0 not, -1 not an iterative fit"
    if failures:
        head = "; ".join(failures[:3]) + (
            f"; … ({len(failures) - 3} more)" if len(failures) > 3 else ""
        )
        warnings.warn(
            f"evaluate: {len(failures)} cell(s) failed or did not converge (see the "
            f"dataset's status/message variables and attrs['failures']): {head}",
            EvaluationWarning,
            stacklevel=2,
        )
    return ds


def _version() -> str:
    from . import __version__

    return str(__version__)


# --------------------------------------------------------------------------------------
# Spectra and the power-iteration curve
# --------------------------------------------------------------------------------------


def spectra(
    source,
    estimators: Iterable = ("frobenius_optimal", "shampoo_squared", "shampoo", "kl_optimal"),
    targets: Sequence[str] | None = None,
    *,
    step: int | None = None,
    layer: str | None = None,
    k: int | None = None,
    rescale: str | None = "frobenius",
    **kwargs,
) -> xr.Dataset:
    """Eigenvalues of each target and of each approximation, for one step and layer.

    Args:
        source: as for :func:`evaluate`.
        estimators: as for :func:`evaluate`.
        targets: target kinds (default: all).
        step, layer: the cell (default: the only one; required when there are several).
        k: keep the top ``k`` eigenvalues (default: all ``mn``).
        rescale: scale each approximation by its ``"frobenius"``-optimal (default) or
            ``"kl"``-optimal scalar, so that spectra of differently scaled estimators
            (e.g. Shampoo's ``L^{1/2} ⊗ R^{1/2}``) compare in shape; None: as fitted.
        **kwargs: passed to :func:`evaluate` (``damping``, ``dtype``, ``progress``, …).

    Returns:
        A Dataset with ``eigenvalue`` (target, estimator, index), descending, where the
        ``estimator`` coordinate starts with ``"target"`` (the eigenvalues of ``Σ + λI``),
        plus ``status`` (target, estimator). Step and layer are scalar coordinates.
    """
    kwargs.setdefault("progress", False)
    ds = evaluate(
        source,
        estimators,
        ["spectrum"],
        targets,
        steps=None if step is None else [step],
        layers=None if layer is None else [layer],
        spectrum_k=k,
        spectrum_rescale=rescale,
        **kwargs,
    )
    for dim in ("step", "layer"):
        if ds.sizes[dim] != 1:
            raise ValueError(
                f"spectra is for one cell: pass {dim}= (one of {ds[dim].values.tolist()})"
            )
    ds = ds.isel(step=0, layer=0).drop_vars("fit_source")
    tv = ds["target_eigenvalues"].expand_dims(estimator=["target"])
    eig = xr.concat([tv, ds["eigenvalues"]], dim="estimator", coords="minimal")
    status = xr.concat(
        [
            xr.full_like(ds["status"].isel(estimator=0), "ok").expand_dims(estimator=["target"]),
            ds["status"],
        ],
        dim="estimator",
        coords="minimal",
    )
    out = xr.Dataset({"eigenvalue": eig, "status": status, "damping": ds["damping"]})
    out = out.assign_coords(estimator=out["estimator"].values.astype(object))
    out = out.transpose("target", "estimator", "index")
    out.attrs = {**ds.attrs, "rescale": str(rescale)}
    out["eigenvalue"].attrs["long_name"] = "eigenvalue"
    return out


def _kron_cosine(a1, b1, a2, b2) -> float:
    """Cosine similarity of ``a1 ⊗ b1`` and ``a2 ⊗ b2`` from the factors."""
    a1, b1, a2, b2 = (np.asarray(x, np.float64) for x in (a1, b1, a2, b2))
    inner = np.vdot(a1, a2) * np.vdot(b1, b2)
    norms = np.linalg.norm(a1) * np.linalg.norm(b1) * np.linalg.norm(a2) * np.linalg.norm(b2)
    return float(inner / norms)


def power_iteration_curve(
    target,
    max_steps: int,
    *,
    damping: float = 0.0,
    init="identity",
    variant: str = "jacobi",
    weights=None,
) -> xr.Dataset:
    """Convergence of power iteration to the Frobenius-optimal Kronecker approximation.

    Step ``k`` runs ``k`` power-iteration steps from ``init`` (step 1 from the identity
    is Shampoo², Morwani et al.) and scores the iterate against the target.

    Args:
        target: per-example matrices, a DataArray or a Target; or a dict
            ``{kind: samples}`` for several targets (adds the dim ``target``).
        max_steps: the last step (the curve has ``max_steps + 1`` points, from 0).
        damping: ``λ``: the iteration and the metrics use ``Σ + λI``.
        init: as for :func:`precond_lab.estimators.power_iteration`.
        variant: ``"jacobi"`` or ``"gauss-seidel"``.
        weights: sample weights (single target only).

    Returns:
        A Dataset over ``iteration`` (0 … max_steps) [× ``target``] with ``score``
        (iteration, metric) for every metric of :data:`~precond_lab.metrics.SCORE_NAMES`,
        ``cosine_to_optimum`` (cosine similarity of the iterate and the Frobenius-optimal
        Kronecker product), ``factor_change`` (``‖ΔA‖ + ‖ΔB‖`` of the step; NaN at 0),
        and the optimum's own scores ``optimum_score`` (metric) for reference lines.
    """
    if int(max_steps) != max_steps or max_steps < 0:
        raise ValueError(f"max_steps must be a non-negative integer; got {max_steps!r}")
    if isinstance(target, Mapping):
        parts = [
            power_iteration_curve(v, max_steps, damping=damping, init=init, variant=variant)
            for v in target.values()
        ]
        out = xr.concat(parts, dim=xr.DataArray(list(map(str, target)), dims="target"))
        out.attrs = parts[0].attrs
        return out
    t = as_target(target, weights).damped(damping) if damping else as_target(target, weights)
    opt = est.frobenius_optimal(t)
    metrics = list(met.SCORE_NAMES)
    scores = np.full((max_steps + 1, len(metrics)), np.nan)
    cos_opt = np.full(max_steps + 1, np.nan)
    change = np.full(max_steps + 1, np.nan)
    current = est.power_iteration(t, 0, init=init, variant=variant)
    for k in range(max_steps + 1):
        if k > 0:
            current = est.power_iteration(t, 1, init=current, variant=variant)
            change[k] = float(current.info.residuals[-1])
        values = met.score(t, current)
        scores[k] = [values[x] for x in metrics]
        cos_opt[k] = _kron_cosine(current.left, current.right, opt.left, opt.right)
    opt_values = met.score(t, opt)
    ds = xr.Dataset(
        {
            "score": (("iteration", "metric"), scores),
            "cosine_to_optimum": ("iteration", cos_opt),
            "factor_change": ("iteration", change),
            "optimum_score": ("metric", np.asarray([opt_values[x] for x in metrics])),
        },
        coords={"iteration": np.arange(max_steps + 1), "metric": metrics},
        attrs={
            "title": "power iteration convergence",
            "library": "precond_lab",
            "library_version": _version(),
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "damping": float(damping),
            "init": init if isinstance(init, str) else "custom",
            "variant": variant,
            "shape": "x".join(map(str, t.shape)),
            "dtype": np.dtype(t.dtype).name,
            "optimum_iterations": int(opt.info.iterations),
        },
    )
    return ds
