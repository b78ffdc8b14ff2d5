"""Morwani et al. (P3): how close Shampoo² is to the optimal Kronecker approximation.

Claims (``docs/claims.md``): **P3-3** Shampoo² (``L ⊗ R``) is close to the Frobenius-optimal
Kronecker approximation of both the Gauss–Newton matrix ``H_GN`` and Adagrad's
``H_Ada = Σ_s g_s g_sᵀ`` over training (Fig. 1); **P3-4** Shampoo's ``L^{1/2} ⊗ R^{1/2}``
is clearly worse; **P3-5** starting the power iteration from the identity is a good
choice (one step from ``I`` = Shampoo² already reaches most of the optimum; random
starts do worse), with the reason measured: the spectral gap ``σ₂/σ₁`` of the rearranged
target ``R(Σ)`` and the identity's overlap with its top singular pair; **P3-6** the
Shampoo²–optimum gap widens for transformers (weak provenance: one third-party
sentence); **P3-43** K-FAC vs Shampoo² vs the optimum for ``H_GN``, reported without a
verdict. P3-3 and P3-6 are decided over training steps ``> 0``: at step 0, ``H_Ada`` is a
single gradient's outer product (rank 1), reported apart.

Setup (Fig. 1 form: rows Gauss–Newton / Adagrad, columns models). Three captured
training runs (:func:`precond_lab.study.cached_capture`): an MLP on binary MNIST (the
paper's MNIST-2), a CNN on digits (quick) or MNIST (full), and the small character
transformer on ``stdlib-chars`` in place of the paper's CIFAR-5M / ImageNet models.
At each captured step and layer:

* ``H_GN`` = the exact per-layer GGN block over the captured examples, from the exact
  pseudo-gradients ``b_{i,c} = J_iᵀ Λ_i^{1/2} e_c`` (capture target ``ggn``):
  ``H_GN = (1/N) Σ_{i,c} vec(b) vec(b)ᵀ``;
* ``H_Ada`` = ``Σ_{s ≤ t} g_s g_sᵀ`` over the training run's mini-batch gradients up to
  and including step ``t`` (capture target ``trajectory``, concatenated over the
  captured steps);
* estimators: ``frobenius_optimal`` (Van Loan–Pitsianis, Lanczos), ``shampoo_squared``
  (``L ⊗ R / tr Σ``), ``shampoo`` (``L^{1/2} ⊗ R^{1/2}``), and for ``H_GN`` ``kfac``
  (expand) from the layer inputs and the exact-GGN backprops (``kfac-ggn``);
* score: the Frobenius cosine similarity with the target (Morwani et al.'s metric;
  scale-free, so no scalar normalisation matters), no damping, computed by the sweep
  (:func:`precond_lab.evaluate.evaluate`, one call per model, step and layer on the
  targets ``{"ggn": H_GN, "adagrad": H_Ada}``);
* power iteration (P3-5): the cosine of the iterate after ``k = 0 … K`` Jacobi steps from
  the identity and from ``random_inits`` random PSD (Wishart) starts, and its cosine with
  the optimal Kronecker product (``power_at``: the steps where this runs).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import xarray as xr

from precond_lab import estimators as est
from precond_lab import plotting as pl
from precond_lab import schema, study
from precond_lab.provenance import make_attrs
from precond_lab.structures import Kronecker
from precond_lab.study import FAILS, Row, TestKind, judge
from precond_lab.sweep import evaluate, kron_cosine
from precond_lab.targets import Target
from studies._setups import (
    P3_SETUPS,
    P3_TRAINING,
    PAPER_P3,
    Setup,
    Training,
    capture_setup,
    ggn_target,
    layer_table,
    padded_target,
)

__all__ = [
    "NAME",
    "TITLE",
    "PAPER",
    "ESTIMATORS",
    "TARGETS",
    "Config",
    "PRESETS",
    "padded_target",
    "shampoo",
    "run",
    "plot",
    "verdicts",
]

NAME = "p3_quality"
TITLE = "P3 (Morwani et al.): Shampoo² vs the optimal Kronecker product over training"
PAPER = PAPER_P3

ESTIMATORS = ("frobenius_optimal", "shampoo_squared", "shampoo", "kfac")
TARGETS = ("ggn", "adagrad")

# Verdict thresholds (stated in each Verdict's tolerance).
GAP_TOL = 0.05  # P3-3: cos(opt) − cos(Shampoo²) ≤ 0.05 in every cell
SHAMPOO_MARGIN = 0.05  # P3-4: median of cos(Shampoo²) − cos(Shampoo) ≥ 0.05
FRACTION_TOL = 0.95  # P3-5: one step from I reaches ≥ 95 % of the optimum's cosine
EXACT_COS = 0.999  # P3-4: cells where both are exact (Σ itself Kronecker) count as ties
TIE_TOL = 0.005  # P3-5: … and is not worse than a typical random start by more than this
WIDEN_FACTOR = 2.0  # P3-6: transformer gap ≥ 2× the MLP/CNN gap …
WIDEN_MIN = 0.01  # … and ≥ 0.01 larger in absolute terms
REPORTED = "reported"  # P3-43: a comparison, no verdict forced

_SETTING = (
    "small models (an MLP on binary MNIST, a CNN on digits, a 1-block character transformer) "
    "in place of the paper's MNIST-2 / CIFAR-5M / ImageNet networks; one training run each"
)


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """One run of the study.

    Attributes:
        setups: the captured training runs (models × datasets).
        training: the captured steps and the optimiser (shared by every setup).
        power_steps: power-iteration steps ``K`` of the P3-5 curves.
        random_inits: random PSD (Wishart) starts besides the identity.
        power_at: ``"last"`` (the last captured step) or ``"all"`` (every step): where
            the power-iteration curves run.
        seed: the training runs' seed (and the random starts').
        cache_dir: the capture cache (None: :func:`precond_lab.study.cached_capture`'s
            default).
    """

    setups: tuple[Setup, ...]
    training: Training
    power_steps: int = 6
    random_inits: int = 3
    power_at: str = "last"
    seed: int = 0
    cache_dir: str | Path | None = None


PRESETS = {
    "test": Config(
        tuple(P3_SETUPS["test"].values()),
        P3_TRAINING["test"],
        power_steps=3,
        random_inits=2,
        power_at="last",
    ),
    "quick": Config(
        tuple(P3_SETUPS["quick"].values()),
        P3_TRAINING["quick"],
        power_steps=6,
        random_inits=3,
        power_at="last",
    ),
    "full": Config(
        tuple(P3_SETUPS["full"].values()),
        P3_TRAINING["full"],
        power_steps=10,
        random_inits=5,
        power_at="all",
    ),
}


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------


def _np_sqrt(a) -> np.ndarray:
    w, v = np.linalg.eigh(np.asarray(a, np.float64))
    return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def shampoo(target: Target) -> Kronecker:
    """``est.shampoo`` (``L^{1/2} ⊗ R^{1/2}``) with the square roots taken in NumPy float64.

    Same result; it avoids JIT-compiling an eigendecomposition for every layer shape,
    which dominates the run time at the quick preset's sizes.

    Args:
        target: the target ``Σ``.

    Returns:
        ``L^{1/2} ⊗ R^{1/2}`` of Shampoo's factors ``L``, ``R``, in the target's dtype.
    """
    left, right = target.second_moments()
    dt = target.dtype
    return Kronecker(_np_sqrt(left).astype(dt), _np_sqrt(right).astype(dt))


#: The estimators as the sweep takes them (the NumPy Shampoo as a ``(name, callable)``).
_SWEEP_ESTIMATORS = ("frobenius_optimal", "shampoo_squared", ("shampoo", shampoo), "kfac")


def rearranged_top_singular_values(target: Target, steps: int = 40) -> np.ndarray:
    """The two largest singular values ``σ₁ ≥ σ₂`` of the rearranged target ``R(Σ)``.

    Golub–Kahan–Lanczos bidiagonalization from ``vec(I)`` with full reorthogonalization
    (host-side NumPy), through the target's primitives ``R(Σ)vec(B) = vec(E[GBGᵀ])`` and
    ``R(Σ)ᵀvec(A) = vec(E[GᵀAG])``; ``R(Σ)`` is never formed. With ``steps ≥ min(m², n²)``
    the values are exact; fewer steps give the converged top Ritz values (lower bounds).
    :func:`precond_lab.estimators.frobenius_optimal` runs the same recursion for the top
    triplet only.

    Args:
        target: the target ``Σ``.
        steps: maximum bidiagonalization steps.

    Returns:
        ``[σ₁, σ₂]`` (``σ₂ = 0`` if ``R(Σ)`` has rank 1).
    """
    m, n = target.matrix_shape
    dim = min(m * m, n * n)
    v = np.eye(n).reshape(-1) / np.sqrt(n)
    us: list[np.ndarray] = []
    vs, alphas, betas = [v], [], []
    scale = 0.0
    for j in range(min(int(steps), dim)):
        p = np.asarray(target.contract_left(vs[j].reshape(n, n).astype(target.dtype)), float)
        p = p.reshape(-1) - (betas[-1] * us[-1] if us else 0.0)
        for _ in range(2):
            if us:
                q = np.stack(us)
                p = p - q.T @ (q @ p)
        alpha = float(np.linalg.norm(p))
        scale = max(scale, alpha)
        if alpha <= 1e-13 * scale:
            break
        us.append(p / alpha)
        alphas.append(alpha)
        r = np.asarray(target.contract_right(us[j].reshape(m, m).astype(target.dtype)), float)
        r = r.reshape(-1) - alpha * vs[j]
        for _ in range(2):
            q = np.stack(vs)
            r = r - q.T @ (q @ r)
        beta = float(np.linalg.norm(r))
        if beta <= 1e-13 * scale:
            break
        betas.append(beta)
        vs.append(r / beta)
    k = len(alphas)
    cols = min(len(vs), k + 1)
    bid = np.zeros((k, cols))
    bid[np.arange(k), np.arange(k)] = alphas
    sup = min(len(betas), cols - 1)
    bid[np.arange(sup), np.arange(1, sup + 1)] = betas[:sup]
    sv = np.linalg.svd(bid, compute_uv=False)
    return np.array([sv[0], sv[1] if len(sv) > 1 else 0.0])


def identity_overlaps(opt: Kronecker) -> tuple[float, float]:
    """``|⟨vec(I)/‖I‖, vec(A)/‖A‖⟩|`` for the optimum's left and right factors.

    The optimum's unit factors are the top singular pair ``(u₁, v₁)`` of ``R(Σ)``; the
    overlap of the identity start with ``v₁`` (and ``u₁``) says how much of the first
    power step already points at the optimum.
    """
    out = []
    for f in (opt.left, opt.right):
        f = np.asarray(f, float)
        out.append(abs(float(np.trace(f))) / (np.sqrt(len(f)) * float(np.linalg.norm(f))))
    return out[0], out[1]


def _power_curves(target: Target, n_power: int, inits, seed: int):
    """Power-iteration cosines with the target and with the optimum, from each start.

    ``cos(Σ, A_k ⊗ B_k) = ⟨Σ, A_k ⊗ B_k⟩ / ‖Σ‖_F`` for unit-norm factors: the Rayleigh
    quotients that power_iteration records (``info.objective``) give the whole curve
    without extra passes; the iterates themselves (for the cosine with the optimum) only
    at ``k = 0``, 1 and ``K``.

    Returns:
        ``(curves, to_opt, spectrum)``: ``(len(inits), n_power + 1)`` arrays (``to_opt``
        NaN at the iterations in between), and ``[σ₂/σ₁ of R(Σ), identity overlap with
        u₁, with v₁]`` (why the identity start works).
    """
    curves = np.full((len(inits), n_power + 1), np.nan)
    to_opt = np.full((len(inits), n_power + 1), np.nan)
    opt = est.frobenius_optimal(target)
    norm = float(target.frobenius_norm())
    m, n = target.matrix_shape
    dt = target.dtype
    for i, init in enumerate(inits):
        if init == "identity":
            start = (np.eye(m, dtype=dt), np.eye(n, dtype=dt))
        else:  # Wishart X Xᵀ/dim (as init="random"), drawn in NumPy: no recompiles
            rng = np.random.default_rng([seed, i])
            xa, xb = rng.standard_normal((m, m)), rng.standard_normal((n, n))
            start = ((xa @ xa.T / m).astype(dt), (xb @ xb.T / n).astype(dt))
        first = est.power_iteration(target, 1, init=start)
        curves[i, 0] = float(first.info.objective[0]) / norm
        curves[i, 1] = float(first.scale) / norm
        to_opt[i, 0] = kron_cosine(*start, opt.left, opt.right)
        to_opt[i, 1] = kron_cosine(first.left, first.right, opt.left, opt.right)
        if n_power > 1:
            last = est.power_iteration(target, n_power - 1, init=first)
            curves[i, 1:n_power] = np.asarray(last.info.objective, float) / norm
            curves[i, n_power] = float(last.scale) / norm
            to_opt[i, n_power] = kron_cosine(last.left, last.right, opt.left, opt.right)
    sv = rearranged_top_singular_values(target)
    spectrum = np.array([sv[1] / sv[0], *identity_overlaps(opt)])
    return curves, to_opt, spectrum


def _cell(targets: dict, kfac_inputs: dict, n_power: int, inits, with_power: bool, seed: int):
    """Every estimator's cosine with every target of one layer (the sweep), and the curves.

    Args:
        targets: ``{kind: Target}`` of one (model, step, layer) cell.
        kfac_inputs: ``{kind: (activations, backprops)}`` for K-FAC (kinds without them:
            K-FAC is skipped, NaN).
        n_power: power-iteration steps ``K``.
        inits: ``"identity"`` and ``"random<i>"`` start names.
        with_power: whether to run the power-iteration curves here.
        seed: the random starts' seed.

    Returns:
        ``(cosine, iterations, converged, curves, to_opt, spectra)``: ``cosine``
        ``(kind, estimator)`` as a DataArray (:data:`ESTIMATORS` order), the optimum's
        Lanczos iterations and convergence per kind, and per kind the ``(init,
        iteration)`` power-iteration curves and the :func:`_power_curves` spectrum
        triple (NaN without ``with_power``).
    """
    sweep = evaluate(
        targets,
        _SWEEP_ESTIMATORS,
        ("cosine",),
        kfac_inputs=kfac_inputs or None,
        progress=False,
        raise_errors=True,
    )
    sweep = sweep.isel({d: 0 for d in ("step", "layer", "batch_size") if d in sweep.dims})
    cosine = sweep["score"].sel(metric="cosine", estimator=list(ESTIMATORS))
    opt = sweep.sel(estimator="frobenius_optimal")
    curves, to_opt, spectra = {}, {}, {}
    for kind, target in targets.items():
        if with_power:
            curves[kind], to_opt[kind], spectra[kind] = _power_curves(target, n_power, inits, seed)
        else:
            curves[kind] = to_opt[kind] = np.full((len(inits), n_power + 1), np.nan)
            spectra[kind] = np.full(3, np.nan)
    return cosine, opt["iterations"], opt["converged"], curves, to_opt, spectra


def run(config: Config, **overrides) -> xr.Dataset:
    """Capture each setup and score every estimator on ``H_GN`` and ``H_Ada``.

    Args:
        config: the study's configuration (e.g. ``PRESETS["quick"]``).
        **overrides: :class:`Config` fields to replace (``dataclasses.replace``), e.g.
            ``cache_dir=...``.

    Returns:
        A Dataset with dims ``model, target, layer, step, estimator`` (and ``init``,
        ``iteration`` for the power iteration); ``layer`` is a slot index per model with
        the names in the 2-D coordinate ``layer_name`` (empty where a model has fewer
        layers).
    """
    cfg = dataclasses.replace(config, **overrides) if overrides else config
    t_start = time.perf_counter()
    steps = sorted(int(s) for s in cfg.training.steps)
    training = dataclasses.replace(cfg.training, steps=tuple(steps))
    inits = ["identity"] + [f"random{i}" for i in range(int(cfg.random_inits))]
    power_steps_set = set(steps) if cfg.power_at == "all" else {steps[-1]}
    n_power = int(cfg.power_steps)
    captures = []
    capture_seconds = 0.0
    for s in cfg.setups:
        t0 = time.perf_counter()
        captures.append(capture_setup(s, training, cfg.seed, cfg.cache_dir))
        capture_seconds += time.perf_counter() - t0
    names, rows, cols = layer_table([t for t, _ in captures])
    n_layers = names.shape[1]
    shape = (len(cfg.setups), len(TARGETS), n_layers, len(steps))
    cosine = np.full((*shape, len(ESTIMATORS)), np.nan)
    opt_iters = np.full(shape, -1, np.int64)
    opt_conv = np.full(shape, -1, np.int64)
    pcos = np.full((*shape, len(inits), n_power + 1), np.nan)
    popt = np.full((*shape, len(inits), n_power + 1), np.nan)
    spec = np.full((*shape, 3), np.nan)
    loss = np.full((len(cfg.setups), len(steps)), np.nan)
    acc = np.full((len(cfg.setups), len(steps)), np.nan)
    num_traj = np.full((len(cfg.setups), len(steps)), -1, np.int64)
    for i_m, (tree, _) in enumerate(captures):
        layers = str(tree.attrs["layers"]).split(",")
        traj: dict[str, list[np.ndarray]] = {lay: [] for lay in layers}
        for i_s, step in enumerate(steps):
            node = tree[schema.step_name(step)]
            loss[i_m, i_s] = float(node.attrs.get("loss", np.nan))
            a = float(node.attrs.get("test_accuracy", -1.0))
            acc[i_m, i_s] = np.nan if a == -1.0 else a
            for i_l, lay in enumerate(layers):
                ln = node[lay]
                traj[lay].append(
                    np.asarray(schema.layer_samples(ln, schema.Kind.TRAJECTORY).values)
                )
                gs = np.concatenate(traj[lay])
                num_traj[i_m, i_s] = len(gs)
                ggn, kfac_in = ggn_target(ln)
                ada = padded_target(gs, np.ones(len(gs), gs.dtype))
                c, iters, conv, curves, to_opt, spectra = _cell(
                    {"ggn": ggn, "adagrad": ada},
                    {} if kfac_in is None else {"ggn": kfac_in},
                    n_power,
                    inits,
                    step in power_steps_set,
                    cfg.seed,
                )
                for i_t, kind in enumerate(TARGETS):
                    cell = (i_m, i_t, i_l, i_s)
                    cosine[cell] = c.sel(target=kind).values
                    opt_iters[cell] = int(iters.sel(target=kind))
                    opt_conv[cell] = int(conv.sel(target=kind))
                    pcos[cell], popt[cell] = curves[kind], to_opt[kind]
                    spec[cell] = spectra[kind]
    dims = ("model", "target", "layer", "step")
    ds = xr.Dataset(
        {
            "cosine": ((*dims, "estimator"), cosine),
            "opt_iterations": (dims, opt_iters),
            "opt_converged": (dims, opt_conv),
            "power_cosine": ((*dims, "init", "iteration"), pcos),
            "power_cosine_to_opt": ((*dims, "init", "iteration"), popt),
            "rearranged_sv_ratio": (dims, spec[..., 0]),
            "identity_overlap_left": (dims, spec[..., 1]),
            "identity_overlap_right": (dims, spec[..., 2]),
            "loss": (("model", "step"), loss),
            "test_accuracy": (("model", "step"), acc),
            "adagrad_num_gradients": (("model", "step"), num_traj),
        },
        coords={
            "model": [s.key for s in cfg.setups],
            "target": list(TARGETS),
            "layer": np.arange(n_layers),
            "step": np.asarray(steps, np.int64),
            "estimator": list(ESTIMATORS),
            "init": inits,
            "iteration": np.arange(n_power + 1),
            "layer_name": (("model", "layer"), names),
            "layer_rows": (("model", "layer"), rows),
            "layer_cols": (("model", "layer"), cols),
        },
    )
    ds["cosine"].attrs["long_name"] = "cosine similarity with the target"
    ds["power_cosine"].attrs["long_name"] = "cosine of the power-iteration iterate with the target"
    ds["power_cosine_to_opt"].attrs["long_name"] = (
        "cosine of the iterate with the optimum (iterations 0, 1 and the last only)"
    )
    ds["opt_converged"].attrs["description"] = "1 converged, 0 not (frobenius_optimal)"
    ds["rearranged_sv_ratio"].attrs["long_name"] = (
        "σ₂/σ₁ of the rearranged target R(Σ) (where the power iteration runs)"
    )
    ds["identity_overlap_right"].attrs["long_name"] = (
        "|⟨vec(I_n)/√n, v₁⟩|: the identity start's overlap with the top right singular vector"
    )
    ds.attrs.update(
        make_attrs(
            TITLE,
            seed=int(cfg.seed),
            source="captured training runs: " + ", ".join(s.key for s in cfg.setups),
            study=NAME,
            paper=PAPER,
            targets="ggn: exact per-layer GGN over the captured examples; "
            "adagrad: sum of the run's mini-batch gradient outer products up to the step",
            metric="Frobenius cosine similarity, no damping (precond_lab.evaluate sweep)",
            kfac="expand variant from layer inputs and exact-GGN backprops (GGN row only)",
            random_init="Wishart X Xᵀ/dim, X standard normal (power_iteration init='random')",
            power_at=str(cfg.power_at),
            optimizer=str(training.optimizer),
            learning_rate=float(training.learning_rate),
            batch_size=int(training.batch_size),
            num_samples=",".join(str(s.num_samples) for s in cfg.setups),
            capture_configs=" | ".join(
                f"{s.key}: {c['model']} {c['dataset']} layers={t.attrs['layers']} "
                f"shapes={t.attrs['layer_shapes']} N={c['num_samples']} "
                f"options={c.get('model_options', {})}"
                for s, (t, c) in zip(cfg.setups, captures, strict=True)
            ),
            capture_seconds=round(capture_seconds, 2),
            seconds=round(time.perf_counter() - t_start, 2),
        )
    )
    return ds


# --------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------


def _gaps(ds: xr.Dataset) -> xr.DataArray:
    c = ds["cosine"]
    return c.sel(estimator="frobenius_optimal") - c.sel(estimator="shampoo_squared")


def _where(da: xr.DataArray, ds: xr.Dataset, fn=np.nanargmax) -> str:
    idx = np.unravel_index(fn(da.values), da.shape)
    at = {d: da[d].values[i] for d, i in zip(da.dims, idx, strict=True)}
    lay = ds["layer_name"].sel(model=at["model"], layer=at["layer"]).item()
    return f"{at['model']} {lay} {at['target']} step {at['step']}"


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def verdicts(ds: xr.Dataset) -> list[Row]:
    """P3-3 … P3-6 decided from a Dataset of :func:`run`.

    Args:
        ds: the study's Dataset.

    Returns:
        One :class:`~precond_lab.study.Row` per claim, in claim order.
    """
    out = []
    gap_all = _gaps(ds)
    steps = ds["step"].values
    trained = steps[steps > 0] if (steps > 0).any() else steps  # step 0: reported apart
    gap = gap_all.sel(step=trained)
    valid = np.isfinite(gap.values)
    # P3-3 ------------------------------------------------------------------------------
    per_target = {}
    for t in ds["target"].values:
        g = gap.sel(target=t).values
        g = g[np.isfinite(g)]
        per_target[str(t)] = g
    all_ok = bool(valid.any()) and all(np.all(g <= GAP_TOL) for g in per_target.values())
    med_ok = all(g.size and np.median(g) <= GAP_TOL for g in per_target.values())
    c_opt = ds["cosine"].sel(estimator="frobenius_optimal")
    c_sh2 = ds["cosine"].sel(estimator="shampoo_squared")
    ev = []
    for t, g in per_target.items():
        frac = float(np.mean(g <= GAP_TOL)) if g.size else np.nan
        co, cs = (c.sel(target=t, step=trained) for c in (c_opt, c_sh2))
        ev.append(
            f"{t}: cos(opt) median {_fmt(float(np.nanmedian(co)))}, "
            f"cos(Sh²) median {_fmt(float(np.nanmedian(cs)))}, "
            f"gap median {_fmt(float(np.median(g)))} max {_fmt(float(np.max(g)))}, "
            f"{100 * frac:.0f}% of {g.size} cells ≤ {GAP_TOL}"
        )
    ev.append(f"largest gap at {_where(gap, ds)}")
    if 0 in ds["step"].values:
        g0 = gap_all.sel(step=0)
        ev.append(
            "step 0 reported apart (not in the verdict; H_Ada there is one gradient's outer "
            "product, rank 1): gap median "
            + ", ".join(
                f"{t} {_fmt(float(np.nanmedian(g0.sel(target=t))))} (max "
                f"{_fmt(float(np.nanmax(g0.sel(target=t))))})"
                for t in ds["target"].values
            )
        )
    out.append(
        Row(
            "P3-3",
            PAPER,
            "Abstract; Figure 1",
            "Shampoo² is close to the optimal Kronecker approximation of H_GN and H_Ada "
            "over training.",
            judge(all_ok, med_ok),
            "; ".join(ev),
            f"over training steps > 0: holds: cos(opt) − cos(Shampoo²) ≤ {GAP_TOL} in every "
            f"(model, layer, step) cell for both targets; partially: median gap ≤ {GAP_TOL} "
            "for both",
            kind=TestKind.PROXY,
            setting=_SETTING,
        )
    )
    # P3-4 ------------------------------------------------------------------------------
    margin_da = c_sh2 - ds["cosine"].sel(estimator="shampoo")
    margin = margin_da.values
    exact = (c_sh2 >= EXACT_COS).values  # both exact (Σ a Kronecker product): a tie
    keep = np.isfinite(margin)
    margin, exact = margin[keep], exact[keep]
    ties = (np.abs(margin) <= TIE_TOL) & exact
    better = float(np.mean((margin > 0) | ties)) if margin.size else 0.0
    med = float(np.median(margin)) if margin.size else np.nan
    c_sh = ds["cosine"].sel(estimator="shampoo")
    out.append(
        Row(
            "P3-4",
            PAPER,
            "Figure 1 (implied by the abstract)",
            "Unsquared Shampoo (L^½ ⊗ R^½) approximates H clearly worse than Shampoo².",
            judge(bool(margin.size) and better == 1.0 and med >= SHAMPOO_MARGIN, better >= 0.75),
            f"cos(Sh²) − cos(Sh): median {_fmt(med)}, min {_fmt(float(np.min(margin)))} at "
            f"{_where(-margin_da, ds)}; Sh² better in {100 * np.mean(margin > 0):.0f}% of "
            f"{margin.size} cells, exact ties (both cos ≥ {EXACT_COS}) in {int(ties.sum())}; "
            f"median cos(Sh) GN {_fmt(float(np.nanmedian(c_sh.sel(target='ggn'))))}, Ada "
            f"{_fmt(float(np.nanmedian(c_sh.sel(target='adagrad'))))}",
            f"holds: Shampoo² better in every cell (or both exact: cos ≥ {EXACT_COS}, within "
            f"{TIE_TOL}) and median margin ≥ {SHAMPOO_MARGIN}; partially: so in ≥ 75% of cells",
            kind=TestKind.PROXY,
            setting=_SETTING,
        )
    )
    # P3-5 ------------------------------------------------------------------------------
    pc = ds["power_cosine"]
    have = np.isfinite(pc.sel(init="identity", iteration=1)).values
    if have.any():
        ident1 = pc.sel(init="identity", iteration=1)
        randoms = [i for i in ds["init"].values if str(i) != "identity"]
        rand1 = pc.sel(init=randoms, iteration=1)
        best_rand = rand1.max("init")
        mean_rand = rand1.mean("init")
        i1, br, mr = (x.values[have] for x in (ident1, best_rand, mean_rand))
        wins = float(np.mean(i1 >= mr - TIE_TOL))
        wins_best = float(np.mean(i1 >= br))
        frac = (ident1 / c_opt).values[have]
        win_ok, frac_ok = wins >= 0.9, float(np.median(frac)) >= FRACTION_TOL
        last = int(ds["iteration"].values[-1])
        to_opt_i = ds["power_cosine_to_opt"].sel(init="identity")
        to_opt_r = ds["power_cosine_to_opt"].sel(init=randoms).mean("init")
        ev = (
            f"1 step from I vs random ({len(randoms)} inits): mean cos {_fmt(float(i1.mean()))} vs "
            f"{_fmt(float(mr.mean()))} (best random {_fmt(float(br.mean()))}); I ≥ mean random "
            f"− {TIE_TOL} in {100 * wins:.0f}% of {i1.size} cells (≥ best random in "
            f"{100 * wins_best:.0f}%); cos(1 step from I)/cos(opt): median "
            f"{_fmt(float(np.median(frac)))}, min {_fmt(float(np.min(frac)))}; cos(iterate, opt) "
            f"after 1 step: I {_fmt(float(to_opt_i.sel(iteration=1).values[have].mean()))}, "
            f"random {_fmt(float(to_opt_r.sel(iteration=1).values[have].mean()))}; after {last} "
            f"steps: I {_fmt(float(to_opt_i.sel(iteration=last).values[have].mean()))}, random "
            f"{_fmt(float(to_opt_r.sel(iteration=last).values[have].mean()))}"
            + _why_identity(ds, have)
        )
        verdict = judge(win_ok and frac_ok, win_ok or frac_ok)
    else:
        ev, verdict = "no power-iteration curves in the dataset", FAILS
    out.append(
        Row(
            "P3-5",
            PAPER,
            "Section 3 (number unverified)",
            "Initialising the power iteration at (multiples of) the identity is reasonable: "
            "one step from I (= Shampoo²) is near the optimum and beats random starts.",
            verdict,
            ev,
            f"holds: cos after 1 step from I ≥ the random starts' mean − {TIE_TOL} in ≥ 90% "
            "of cells "
            f"and median cos(1 step from I)/cos(opt) ≥ {FRACTION_TOL}; partially: one of them",
            kind=TestKind.PROXY,
            setting=_SETTING,
        )
    )
    # P3-6 ------------------------------------------------------------------------------
    models = [str(m) for m in ds["model"].values]
    tf = [m for m in models if m.startswith("transformer")]
    others = [m for m in models if not m.startswith("transformer")]
    if tf and others:
        mean_gap = {m: float(np.nanmean(gap.sel(model=m))) for m in models}
        per_t = {
            (m, str(t)): float(np.nanmean(gap.sel(model=m, target=t)))
            for m in models
            for t in ds["target"].values
        }
        g_tf = max(mean_gap[m] for m in tf)
        g_other = max(mean_gap[m] for m in others)
        strong = g_tf >= WIDEN_FACTOR * g_other and g_tf - g_other >= WIDEN_MIN
        weak = g_tf > g_other or any(
            max(per_t[(m, str(t))] for m in tf) > max(per_t[(m, str(t))] for m in others)
            for t in ds["target"].values
        )
        ev = "mean gap cos(opt) − cos(Sh²): " + ", ".join(
            f"{m} {mean_gap[m]:.4f} (GN {per_t[(m, 'ggn')]:.4f}, Ada {per_t[(m, 'adagrad')]:.4f})"
            for m in models
        )
        verdict = judge(strong, weak)
    else:
        ev, verdict = "needs a transformer and an MLP/CNN setup", FAILS
    out.append(
        Row(
            "P3-6",
            PAPER,
            "third-party summary only (one sentence of a TL;DR, ViT); not in the paper's text "
            "as read",
            "The gap between Shampoo² and the optimal Kronecker approximation widens for "
            "transformers.",
            verdict,
            ev + ". Weak provenance: the claim's only source is one sentence of a third-party "
            "summary; this row tests that sentence, not a statement of the paper.",
            f"holds: transformer mean gap ≥ {WIDEN_FACTOR}× the largest MLP/CNN mean gap and "
            f"≥ {WIDEN_MIN} above it (training steps > 0); partially: larger overall or for one "
            "target",
            kind=TestKind.PROXY,
            setting="a 1-block character transformer in place of a ViT; weak provenance (one "
            "third-party sentence)",
        )
    )
    out.append(_p3_43(ds))
    return out


def _why_identity(ds: xr.Dataset, have: np.ndarray) -> str:
    """P3-5's explanation: the spectral gap of R(Σ) and the identity's top-pair overlap."""
    ratio = ds["rearranged_sv_ratio"].values[have]
    ov_l = ds["identity_overlap_left"].values[have]
    ov_r = ds["identity_overlap_right"].values[have]
    ok = np.isfinite(ratio)
    if not ok.any():
        return ""
    return (
        f"; why: σ₂/σ₁ of R(Σ) median {_fmt(float(np.median(ratio[ok])))} (max "
        f"{_fmt(float(np.max(ratio[ok])))}), the identity's overlap with the top singular "
        f"pair median {_fmt(float(np.median(ov_l[ok])))} (u₁) / "
        f"{_fmt(float(np.median(ov_r[ok])))} (v₁), min {_fmt(float(np.min(ov_r[ok])))} (v₁) "
        "— a dominant top pair that the identity already overlaps, so one step lands close"
    )


def _p3_43(ds: xr.Dataset) -> Row:
    """K-FAC vs Shampoo² vs the optimum for H_GN: a comparison, reported without a verdict."""
    c = ds["cosine"].sel(target="ggn")
    parts = []
    for m in ds["model"].values:
        cm = c.sel(model=m)
        k, s2, o = (
            cm.sel(estimator=e).values for e in ("kfac", "shampoo_squared", "frobenius_optimal")
        )
        ok = np.isfinite(k) & np.isfinite(s2)
        if not ok.any():
            continue
        k, s2, o = k[ok], s2[ok], o[ok]
        by_step = ", ".join(
            f"{int(st)}: {_fmt(float(np.nanmedian(cm.sel(step=st, estimator='kfac'))))}/"
            f"{_fmt(float(np.nanmedian(cm.sel(step=st, estimator='shampoo_squared'))))}"
            for st in ds["step"].values
        )
        parts.append(
            f"{m}: cos K-FAC / Sh² / opt median {_fmt(float(np.median(k)))} / "
            f"{_fmt(float(np.median(s2)))} / {_fmt(float(np.median(o)))}; K-FAC closer than "
            f"Sh² in {int(np.sum(k > s2))}/{k.size} cells, within 0.01 of the optimum in "
            f"{int(np.sum(o - k <= 0.01))}/{k.size}; K-FAC/Sh² by step {by_step}"
        )
    return Row(
        "P3-43",
        PAPER,
        "Figure 1 (what it measures, not a stated claim)",
        "For the Gauss–Newton target: how K-FAC, Shampoo² and the optimal Kronecker "
        "approximation compare, and when which is closer.",
        REPORTED,
        "; ".join(parts) + " [K-FAC: expand variant from the layer inputs and exact-GGN "
        "backprops; cosines with the exact per-layer H_GN]",
        "a comparison, reported without a verdict",
        kind=TestKind.PROXY,
        setting=_SETTING,
    )


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------

_TARGET_TITLES = {"ggn": pl.target_label("ggn"), "adagrad": "Adagrad"}
_GREY = "#7F7F7F"


def _integer_ticks(axes) -> None:
    for ax in axes.flat:
        ax.xaxis.get_major_locator().set_params(integer=True)


def _layer_title(ds: xr.Dataset, model: str, layer: int) -> str:
    name = ds["layer_name"].sel(model=model, layer=layer).item()
    r = int(ds["layer_rows"].sel(model=model, layer=layer))
    c = int(ds["layer_cols"].sel(model=model, layer=layer))
    return f"{name} ({r}×{c})"


def _estimator_lines(ax, ds: xr.Dataset, steps, **cell) -> None:
    """One line per estimator over training steps (skipping all-NaN ones, e.g. K-FAC)."""
    for i, e in enumerate(ESTIMATORS):
        y = ds["cosine"].sel(estimator=e, **cell).values
        if np.all(np.isnan(y)):
            continue
        ax.plot(steps, y, label=pl.estimator_label(e), gid=e, **pl.estimator_style(e, i))


def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """Figure 1 (cosines over training), every layer, the power iteration, the gaps.

    Args:
        ds: a Dataset from :func:`run`.
        figdir: the folder to write into.

    Returns:
        The PNG and PDF paths written.
    """
    figdir = Path(figdir)
    paths: list[Path] = []
    models = [str(m) for m in ds["model"].values]
    steps = ds["step"].values
    with pl.style():
        # Figure 1 form: rows GN / Adagrad, columns models, first layer of each model.
        fig, axes = pl.figure(len(TARGETS), len(models), sharex=False)
        for r, t in enumerate(TARGETS):
            for c, m in enumerate(models):
                ax = axes[r, c]
                _estimator_lines(ax, ds, steps, model=m, target=t, layer=0)
                ax.set_title(f"{_TARGET_TITLES[t]} — {m}\n{_layer_title(ds, m, 0)}", fontsize=8)
                if r == len(TARGETS) - 1:
                    ax.set_xlabel("training step")
                if c == 0:
                    ax.set_ylabel(pl.metric_label("cosine"))
        _integer_ticks(axes)
        pl.legend(fig, axes, ncols=4)
        fig.suptitle("Cosine similarity with H_GN (top) and H_Ada (bottom) over training")
        paths += pl.save(fig, figdir / f"{NAME}_fig1")

        # Every layer: rows = (target, layer slot), columns = models.
        n_layers = ds.sizes["layer"]
        fig, axes = pl.figure(len(TARGETS) * n_layers, len(models), panel=(3.0, 2.1))
        for t_i, t in enumerate(TARGETS):
            for li in range(n_layers):
                r = t_i * n_layers + li
                for c, m in enumerate(models):
                    ax = axes[r, c]
                    if not ds["layer_name"].sel(model=m, layer=li).item():
                        ax.set_axis_off()
                        continue
                    _estimator_lines(ax, ds, steps, model=m, target=t, layer=li)
                    ax.set_title(
                        f"{_TARGET_TITLES[t]} — {m}\n{_layer_title(ds, m, li)}", fontsize=7
                    )
                    if c == 0:
                        ax.set_ylabel("cosine")
                    if r == len(TARGETS) * n_layers - 1:
                        ax.set_xlabel("training step")
        _integer_ticks(axes)
        pl.legend(fig, axes, ncols=4)
        fig.suptitle("Cosine similarity per layer")
        paths += pl.save(fig, figdir / f"{NAME}_layers")

        # P3-5: power iteration from I vs random starts (first layer, last power step).
        pc = ds["power_cosine"]
        step_have = [
            s for s in steps if np.isfinite(pc.sel(step=s, init="identity", iteration=1)).any()
        ]
        if step_have:
            s = step_have[-1]
            fig, axes = pl.figure(len(TARGETS), len(models))
            it = ds["iteration"].values
            for r, t in enumerate(TARGETS):
                for c, m in enumerate(models):
                    ax = axes[r, c]
                    cur = pc.sel(model=m, target=t, layer=0, step=s)
                    opt = ds["cosine"].sel(
                        model=m, target=t, layer=0, step=s, estimator="frobenius_optimal"
                    )
                    ax.axhline(
                        float(opt),
                        color=pl.estimator_style("frobenius_optimal")["color"],
                        lw=1,
                        ls="--",
                        label=pl.estimator_label("frobenius_optimal"),
                    )
                    for init in ds["init"].values:
                        init = str(init)
                        ident = init == "identity"
                        ax.plot(
                            it,
                            cur.sel(init=init).values,
                            color=pl.OKABE_ITO["vermillion"] if ident else _GREY,
                            marker="s" if ident else ".",
                            lw=1.6 if ident else 0.9,
                            alpha=1.0 if ident else 0.8,
                            label="from identity (step 1 = Shampoo²)"
                            if ident
                            else f"from random PSD (n = {len(ds['init']) - 1} starts)",
                            zorder=3 if ident else 2,
                            gid=init,
                        )
                    ax.set_title(f"{_TARGET_TITLES[t]} — {m}\n{_layer_title(ds, m, 0)}", fontsize=8)
                    if r == len(TARGETS) - 1:
                        ax.set_xlabel("power-iteration step")
                    if c == 0:
                        ax.set_ylabel(pl.metric_label("cosine"))
            _integer_ticks(axes)
            pl.legend(fig, axes, ncols=3)
            fig.suptitle(f"Power iteration for the optimal Kronecker product (training step {s})")
            paths += pl.save(fig, figdir / f"{NAME}_power_iteration")

        # P3-6: the gap cos(opt) − cos(Shampoo²) per model (all layers and steps).
        gap = _gaps(ds)
        fig, axes = pl.figure(1, len(TARGETS), panel=(3.6, 2.8))
        for c, t in enumerate(TARGETS):
            ax = axes[0, c]
            data = [np.asarray(gap.sel(model=m, target=t).values).ravel() for m in models]
            data = [d[np.isfinite(d)] for d in data]
            for i, d in enumerate(data):
                jitter = np.linspace(-0.15, 0.15, max(len(d), 1))[: len(d)]
                ax.scatter(i + jitter, d, s=12, color=pl.OKABE_ITO["bluish_green"], alpha=0.8)
                if len(d):
                    ax.hlines(np.mean(d), i - 0.3, i + 0.3, color="black", lw=1.5, zorder=4)
            ax.axhline(
                GAP_TOL,
                color=pl.OKABE_ITO["vermillion"],
                ls=":",
                lw=1,
                label=f"P3-3 tolerance {GAP_TOL}",
            )
            ax.set_xticks(range(len(models)), [m.replace("/", "\n") for m in models], fontsize=7)
            ax.set_title(_TARGET_TITLES[t])
            ax.set_ylabel("cos(opt) − cos(Shampoo²)")
        pl.legend(fig, axes, ncols=1)
        fig.suptitle("Shampoo²–optimum gap per model (dots: layer × step; bar: mean)")
        paths += pl.save(fig, figdir / f"{NAME}_gap")
    return paths
