"""Curves on top of the sweep: spectra per estimator, power-iteration convergence."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import xarray as xr

from .. import estimators as est
from .. import metrics as met
from ..provenance import make_attrs
from ..targets import as_target
from .loop import evaluate

__all__ = [
    "spectra",
    "power_iteration_curve",
    "power_cosines",
    "identity_overlaps",
    "kron_cosine",
]


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
        source: as for ``evaluate``.
        estimators: as for ``evaluate``.
        targets: target kinds (default: all).
        step: the cell (default: the only one; required when there are several).
        layer: the cell (default: the only one; required when there are several).
        k: keep the top ``k`` eigenvalues (default: all ``mn``).
        rescale: scale each approximation by its ``"frobenius"``-optimal (default) or
            ``"kl"``-optimal scalar, so that spectra of differently scaled estimators
            (e.g. Shampoo's ``L^{1/2} ⊗ R^{1/2}``) compare in shape; None: as fitted.
        **kwargs: passed to ``evaluate`` (``damping``, ``dtype``, ``progress``, …).

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


def kron_cosine(a1, b1, a2, b2) -> float:
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
        init: as for ``precond_lab.estimators.power_iteration``.
        variant: ``"jacobi"`` or ``"gauss-seidel"``.
        weights: sample weights (single target only).

    Returns:
        A Dataset over ``iteration`` (0 … max_steps) [× ``target``] with ``score``
        (iteration, metric) for every metric of ``SCORE_NAMES``,
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
        cos_opt[k] = kron_cosine(current.left, current.right, opt.left, opt.right)
    opt_values = met.score(t, opt)
    ds = xr.Dataset(
        {
            "score": (("iteration", "metric"), scores),
            "cosine_to_optimum": ("iteration", cos_opt),
            "factor_change": ("iteration", change),
            "optimum_score": ("metric", np.asarray([opt_values[x] for x in metrics])),
        },
        coords={"iteration": np.arange(max_steps + 1), "metric": metrics},
        attrs=make_attrs(
            "power iteration convergence",
            damping=float(damping),
            init=init if isinstance(init, str) else "custom",
            variant=variant,
            shape="x".join(map(str, t.matrix_shape)),
            dtype=np.dtype(t.dtype).name,
            optimum_iterations=int(opt.info.iterations),
        ),
    )
    return ds


def identity_overlaps(opt) -> tuple[float, float]:
    """``|⟨vec(I)/‖I‖, vec(A)/‖A‖⟩|`` for the Frobenius optimum's left and right factors.

    The optimum's unit factors are the top singular pair ``(u₁, v₁)`` of ``R(Σ)``; the
    identity start's overlap with them says how much of the first power step already points
    at the optimum (P3's reason for starting at ``I``).
    """
    out = []
    for f in (opt.left, opt.right):
        f = np.asarray(f, float)
        out.append(abs(float(np.trace(f))) / (np.sqrt(len(f)) * float(np.linalg.norm(f))))
    return out[0], out[1]


def power_cosines(target, max_steps: int, inits: Sequence[str], seed: int = 0):
    """Power-iteration cosines with the target and with the optimum, from several starts.

    Cheaper than ``power_iteration_curve`` (which scores every metric at every step):
    for unit-norm factors ``cos(Σ, A_k⊗B_k) = ⟨Σ, A_k⊗B_k⟩/‖Σ‖_F`` are the Rayleigh
    quotients the iteration records (``info.objective``), so the whole curve costs no extra
    pass; the cosine with the optimum is taken at ``k = 0``, 1 and ``max_steps`` only.

    Args:
        target: the target ``Σ`` (a Target or per-example matrices).
        max_steps: ``K ≥ 1``.
        inits: ``"identity"`` or any other name for a random Wishart start ``XXᵀ/dim``
            (NumPy, seeded by ``(seed, index)``: no recompiles).
        seed: the random starts' seed.

    Returns:
        ``(curves, to_opt)``: ``(len(inits), K + 1)`` arrays; ``to_opt`` is NaN between
        ``k = 1`` and ``K``.
    """
    if int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"max_steps must be an integer ≥ 1; got {max_steps!r}")
    t = as_target(target)
    curves = np.full((len(inits), max_steps + 1), np.nan)
    to_opt = np.full((len(inits), max_steps + 1), np.nan)
    opt = est.frobenius_optimal(t)
    norm = float(t.frobenius_norm())
    m, n = t.matrix_shape
    for i, init in enumerate(inits):
        if init == "identity":
            start = (np.eye(m, dtype=t.dtype), np.eye(n, dtype=t.dtype))
        else:
            rng = np.random.default_rng([seed, i])
            xa, xb = rng.standard_normal((m, m)), rng.standard_normal((n, n))
            start = ((xa @ xa.T / m).astype(t.dtype), (xb @ xb.T / n).astype(t.dtype))
        first = est.power_iteration(t, 1, init=start)
        curves[i, :2] = float(first.info.objective[0]) / norm, float(first.scale) / norm
        to_opt[i, 0] = kron_cosine(*start, opt.left, opt.right)
        to_opt[i, 1] = kron_cosine(first.left, first.right, opt.left, opt.right)
        if max_steps > 1:
            last = est.power_iteration(t, max_steps - 1, init=first)
            curves[i, 1:max_steps] = np.asarray(last.info.objective, float) / norm
            curves[i, max_steps] = float(last.scale) / norm
            to_opt[i, max_steps] = kron_cosine(last.left, last.right, opt.left, opt.right)
    return curves, to_opt
