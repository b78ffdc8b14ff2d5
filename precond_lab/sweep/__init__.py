"""The evaluation sweep: every estimator × every metric, over steps, layers and targets.

This is the one sweep that studies, notebooks, the demo and the benchmark use.

``evaluate`` fits each requested estimator to each target of each captured step and
layer, scores all of a target's fits with one batched ``precond_lab.metrics.score``
call (one pass over the samples for all of them, one cached Gram matrix), and returns
an ``xarray.Dataset`` that is ready for ``.sel``, ``.plot`` and
``to_netcdf``/``to_zarr``. From a capture, a layer whose K-FAC factors ``(δ, a)`` were
captured for a kind is scored on a ``FactoredTarget`` built
from them when that is smaller than the dense samples (``precond_lab.capture.layer_target``;
recorded in ``target_form``). Layout (``B`` only with ``batch_sizes=``; ``index`` only with
the ``"spectrum"`` metric)::

    dims: step, layer, target, estimator, [batch_size,] metric, [index]
    score             (step, layer, target, estimator, [batch_size,] metric)  float64
    status            (step, layer, target, estimator, [batch_size])  str: a
                      ``precond_lab.Status`` value ("ok", "not_converged",
                      "needs_damping", "not_spd", "nonfinite", "skipped", "failed", …)
    message           (same)  str: "" or the details (the error's class and message,
                      the skip reason)
    fit_seconds       (same)  wall time of the fit (NaN where it did not run)
    iterations        (same)  int: FitInfo.iterations, -1 for closed-form fits
    converged         (same)  int8: 1 / 0, -1 where not applicable
    damping           (step, layer, target)  the λ of the scored target Σ + λI
    num_samples       (step, layer, target)  int: samples behind the target, -1 if dense
    target_form       (step, layer, target)  str: "factored" (a FactoredTarget from the
                      capture's K-FAC factors, where cheaper), "samples" (per-example
                      matrices), "dense", or "" where the target was not built
    eigenvalues       (step, layer, target, estimator, [batch_size,] index)  descending,
                      NaN-padded to the largest layer; scaled by ``spectrum_rescale``
    target_eigenvalues (step, layer, target, index)  eigenvalues of Σ + λI

Coordinates: ``step`` (int), ``layer``/``target``/``estimator``/``metric`` (str),
``layer_rows``/``layer_cols`` on ``layer`` (``-1`` where its targets differ in shape, as
in a ``{name: target}`` dict of unrelated matrices), ``target_rows``/``target_cols`` on
``(step, layer, target)`` (each built target's ``(m, n)``, ``-1`` where none),
``fit_source`` on ``estimator`` (the target kind it is fitted on, or ``"target"`` for the
scored target itself), ``batch_size``,
and, from a capture, ``loss``/``accuracy`` on ``step``. Attributes hold provenance as
strings and numbers only (netCDF rejects dicts and booleans): library and version,
creation date, source, damping rule, dtype, and the failure summary.

Target kinds. From a capture (``precond_lab.capture``): ``"gradients"`` (empirical
Fisher, real labels), ``"ggn"`` (exact Gauss–Newton), ``"ggn_mc"`` (sampled labels),
``"trajectory"`` (Adagrad's ``Σ_s g_s g_sᵀ``) and ``"batch_<B>"`` (the capture's
mini-batch gradients). In memory: any names, as dict keys; ``{name: target}`` scores a
named set of unrelated targets (any shapes) along ``target``, in one layer.

Estimators are given by name (the registry ``precond_lab.estimators.ESTIMATORS``),
with arguments in parentheses
(``"power_iteration(3)"``, ``"kfac(reduce)"``, ``"eigencorrected(kl_optimal)"``,
``"one_sided_kl(right)"``) and, optionally, ``"@<kind>"`` to fit on another target kind
than the one scored (``"shampoo_squared@gradients"`` scored against ``"ggn"``: Shampoo²
from real-label gradients as an approximation of the Gauss–Newton matrix), or as
``(name, callable)`` pairs with ``callable(target) -> Structure``.

Damping. ``damping=λ`` (``damping_mode="absolute"``) or ``λ = damping · tr(Σ)/(mn)``
(``"relative"``, per target and cell). Every estimator fits ``Σ + λI`` and every metric
scores against it; K-FAC, built from activations and backprops, gets ``√λ I`` added to
each factor.

Layout of the package: ``sources`` (captures, dicts, arrays),
``cells`` (the per-cell cache of targets and fits),
``loop`` (the loop), ``grid`` (Dataset
assembly) and ``curves`` (spectra, power-iteration curves).
"""

from ..errors import CellSkipped
from ..estimators import ESTIMATORS, FitContext, parse_estimator
from .cells import CellCache, DampingRule, Fit
from .curves import identity_overlaps, kron_cosine, power_cosines, power_iteration_curve, spectra
from .grid import EvaluationWarning
from .loop import DEFAULT_ESTIMATORS, evaluate
from .sources import CaptureSource, DictSource, Source, open_source

__all__ = [
    "DEFAULT_ESTIMATORS",
    "ESTIMATORS",
    "CaptureSource",
    "CellCache",
    "CellSkipped",
    "DampingRule",
    "DictSource",
    "EvaluationWarning",
    "Fit",
    "FitContext",
    "Source",
    "evaluate",
    "kron_cosine",
    "open_source",
    "parse_estimator",
    "power_iteration_curve",
    "power_cosines",
    "identity_overlaps",
    "spectra",
]
