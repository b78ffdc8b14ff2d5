"""Morwani et al. (P3): how close Shampoo² is to the optimal Kronecker approximation.

Claims (theory.md B.1): **P3-3** Shampoo² (``L ⊗ R``) is close to the Frobenius-optimal
Kronecker approximation of both the Gauss–Newton matrix ``H_GN`` and Adagrad's
``H_Ada = Σ_s g_s g_sᵀ`` over training (Fig. 1); **P3-4** Shampoo's ``L^{1/2} ⊗ R^{1/2}``
is clearly worse; **P3-5** starting the power iteration from the identity is a good
choice (one step from ``I`` = Shampoo² already reaches most of the optimum; random
starts do worse); **P3-6** the Shampoo²–optimum gap widens for transformers.

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
  scale-free, so no scalar normalisation matters), no damping;
* power iteration (P3-5): the cosine of the iterate after ``k = 0 … K`` Jacobi steps from
  the identity and from ``random_inits`` random PSD (Wishart) starts, and its cosine with
  the optimal Kronecker product (``power_at``: the steps where this runs).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import xarray as xr

from precond_lab import estimators as est
from precond_lab import metrics as met
from precond_lab.capture.store import as_samples
from precond_lab.structures import Kronecker
from precond_lab.study import FAILS, Verdict, cached_capture, judge
from precond_lab.targets import SampleTarget

NAME = "p3_quality"
TITLE = "P3 (Morwani et al.): Shampoo² vs the optimal Kronecker product over training"
PAPER = "P3 Morwani et al. 2025"

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


#: Every capture of the two P3 studies holds all targets, so that p3_quality and
#: p3_batch_labels share the stores of equal setups (``cached_capture`` keys on the config).
CAPTURE_TARGETS = ("gradients", "ggn", "ggn-mc", "kfac-ggn", "batch", "trajectory")


def _setup(key, model, dataset, layers=None, num_samples=64, batch_sizes=(4, 16), **kw):
    """One training run to capture: a model on a dataset (``key`` names it)."""
    return {
        "key": key,
        "model": model,
        "dataset": dataset,
        "layers": None if layers is None else list(layers),
        "num_samples": num_samples,
        "batch_sizes": [int(b) for b in batch_sizes],
        "mc_samples": 8,
        **kw,
    }


# Setups (shared with p3_batch_labels, which imports them: equal setups share captures).
SETUPS = {
    "test": {
        # one 10×8 layer for the MLP and the CNN, one 8×8 for the transformer (few shapes:
        # JIT compilation dominates at this size)
        "mlp": _setup(
            "mlp/digits",
            "mlp",
            "digits",
            layers=["layers/1/w"],
            num_samples=12,
            batch_sizes=(3, 6),
            model_options={"hidden": [8]},
        ),
        "cnn": _setup(
            "cnn/digits",
            "cnn",
            "digits",
            layers=["head/w"],
            num_samples=12,
            batch_sizes=(3, 6),
            model_options={"channels": [8], "kernel": 3, "stride": 2},
        ),
        "transformer": _setup(
            "transformer/stdlib-chars",
            "transformer",
            "stdlib-chars",
            layers=["blocks/0/v/w"],
            num_samples=6,
            batch_sizes=(3,),
            model_options={"width": 8, "heads": 2},
        ),
    },
    "quick": {
        "mlp": _setup(
            "mlp/binary-mnist",
            "mlp",
            "binary-mnist",
            num_samples=64,
            batch_sizes=(4, 16, 32),
            model_options={"hidden": [16]},
        ),
        "cnn": _setup(
            "cnn/digits",
            "cnn",
            "digits",
            layers=["convs/1/w", "head/w"],
            num_samples=64,
            batch_sizes=(4, 16, 32),
        ),
        "transformer": _setup(
            "transformer/stdlib-chars",
            "transformer",
            "stdlib-chars",
            layers=["blocks/0/v/w", "blocks/0/o/w"],
            num_samples=32,
            batch_sizes=(4,),
        ),
    },
    "full": {
        "mlp": _setup(
            "mlp/binary-mnist",
            "mlp",
            "binary-mnist",
            num_samples=512,
            batch_sizes=(4, 16, 64, 128, 256),
        ),
        "cnn": _setup("cnn/mnist", "cnn", "mnist", num_samples=256, batch_sizes=(4, 16, 64, 128)),
        "transformer": _setup(
            "transformer/stdlib-chars",
            "transformer",
            "stdlib-chars",
            layers=["blocks/0/q/w", "blocks/0/v/w", "blocks/0/o/w", "blocks/0/fc/w", "head/w"],
            num_samples=128,
            batch_sizes=(4, 16, 64),
        ),
    },
}

#: Training runs shared by both P3 studies, per preset (captured steps, optimiser).
TRAINING = {
    "test": {"steps": [0, 3], "learning_rate": 1e-2, "optimizer": "adam", "batch_size": 16},
    "quick": {"steps": [0, 40, 120], "learning_rate": 3e-3, "optimizer": "adam", "batch_size": 32},
    "full": {
        "steps": [0, 100, 250, 500, 1000, 2000],
        "learning_rate": 1e-3,
        "optimizer": "adam",
        "batch_size": 64,
    },
}

PRESETS = {
    "test": {
        "setups": list(SETUPS["test"].values()),
        **TRAINING["test"],
        "power_steps": 3,
        "random_inits": 2,
        "power_at": "last",
    },
    "quick": {
        "setups": list(SETUPS["quick"].values()),
        **TRAINING["quick"],
        "power_steps": 6,
        "random_inits": 3,
        "power_at": "last",
    },
    "full": {
        "setups": list(SETUPS["full"].values()),
        **TRAINING["full"],
        "power_steps": 10,
        "random_inits": 5,
        "power_at": "all",
    },
}


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------


def capture_setup(setup, steps, optimizer, learning_rate, batch_size, seed, cache_dir):
    """The cached capture of one setup (all :data:`CAPTURE_TARGETS`) and its config."""
    cfg = {
        "model": setup["model"],
        "dataset": setup["dataset"],
        "steps": [int(s) for s in steps],
        "targets": list(CAPTURE_TARGETS),
        "layers": setup["layers"],
        "num_samples": int(setup["num_samples"]),
        "batch_sizes": [int(b) for b in setup.get("batch_sizes", (4, 16))],
        "mc_samples": int(setup.get("mc_samples", 8)),
        "optimizer": setup.get("optimizer", optimizer),
        "learning_rate": float(setup.get("learning_rate", learning_rate)),
        "batch_size": int(setup.get("batch_size", batch_size)),
        "seed": int(seed),
    }
    if setup.get("model_options"):
        cfg["model_options"] = dict(setup["model_options"])
    return cached_capture(cache_dir, **cfg), cfg


def padded_target(samples: np.ndarray, weights: np.ndarray) -> SampleTarget:
    """A :class:`SampleTarget` padded with zero-weight zeros to a power-of-two count.

    The padding changes nothing (weight 0) but lets every target of a layer shape reuse
    the same compiled kernels (JIT compilation dominates at these small sizes).
    """
    n = len(samples)
    size = max(16, 1 << int(np.ceil(np.log2(max(n, 1)))))
    if size > n:
        pad = np.zeros((size - n, *samples.shape[1:]), samples.dtype)
        samples = np.concatenate([samples, pad])
        weights = np.concatenate([weights, np.zeros(size - n, weights.dtype)])
    return SampleTarget(samples, weights=weights, chunk_size=size)


def _ggn_target(node) -> tuple[SampleTarget, tuple]:
    """``H_GN`` from the exact pseudo-gradients, and K-FAC's inputs for it."""
    b = np.asarray(node["ggn"].values)  # (N, C, m, n)
    n, c = b.shape[:2]
    samples = b.reshape(n * c, *b.shape[2:])
    weights = np.full(n * c, 1.0 / n, samples.dtype)
    kfac_in = None
    if "kfac_activations" in node.dataset and "kfac_backprops_ggn" in node.dataset:
        kfac_in = (
            np.asarray(node["kfac_activations"].values),
            np.asarray(node["kfac_backprops_ggn"].values),
        )
    return padded_target(samples, weights), kfac_in


def _kron_cosine(a1, b1, a2, b2) -> float:
    """Cosine of ``a1 ⊗ b1`` and ``a2 ⊗ b2`` (product of the factors' cosines)."""
    a1, b1, a2, b2 = (np.asarray(x, np.float64) for x in (a1, b1, a2, b2))
    num = np.vdot(a1, a2) * np.vdot(b1, b2)
    den = np.linalg.norm(a1) * np.linalg.norm(b1) * np.linalg.norm(a2) * np.linalg.norm(b2)
    return float(num / den)


def _np_sqrt(a) -> np.ndarray:
    w, v = np.linalg.eigh(np.asarray(a, np.float64))
    return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def shampoo(target) -> Kronecker:
    """``est.shampoo`` (``L^{1/2} ⊗ R^{1/2}``) with the square roots taken in NumPy float64.

    Same result; it avoids JIT-compiling an eigendecomposition for every layer shape,
    which dominates the run time at the quick preset's sizes.
    """
    left, right = target.second_moments()
    dt = target.dtype
    return Kronecker(_np_sqrt(left).astype(dt), _np_sqrt(right).astype(dt))


def _cos(target, approx) -> float:
    return float(met.cosine_similarity(target, approx))


def _cell(target, kfac_in, n_power, inits, with_power, seed):
    """Cosines of every estimator (and optionally the power-iteration curves)."""
    cos = {e: np.nan for e in ESTIMATORS}
    opt = est.frobenius_optimal(target)
    cos["frobenius_optimal"] = _cos(target, opt)
    cos["shampoo_squared"] = _cos(target, est.shampoo_squared(target))
    cos["shampoo"] = _cos(target, shampoo(target))
    if kfac_in is not None:
        cos["kfac"] = _cos(target, est.kfac(*kfac_in))
    info = (int(opt.info.iterations), int(bool(opt.info.converged)))
    curves = np.full((len(inits), n_power + 1), np.nan)
    to_opt = np.full((len(inits), n_power + 1), np.nan)
    if with_power:
        # cos(Σ, A_k ⊗ B_k) = ⟨Σ, A_k ⊗ B_k⟩ / ‖Σ‖_F for unit-norm factors: the Rayleigh
        # quotients that power_iteration records (info.objective) give the whole curve
        # without extra passes; the iterates themselves only at k = 0, 1 and K.
        norm = float(target.frobenius_norm())
        m, n = target.shape
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
            to_opt[i, 0] = _kron_cosine(*start, opt.left, opt.right)
            to_opt[i, 1] = _kron_cosine(first.left, first.right, opt.left, opt.right)
            if n_power > 1:
                last = est.power_iteration(target, n_power - 1, init=first)
                curves[i, 1:n_power] = np.asarray(last.info.objective, float) / norm
                curves[i, n_power] = float(last.scale) / norm
                to_opt[i, n_power] = _kron_cosine(last.left, last.right, opt.left, opt.right)
    return cos, info, curves, to_opt


def run(
    setups,
    steps=(0, 40, 120),
    power_steps=6,
    random_inits=3,
    power_at="last",
    optimizer="adam",
    learning_rate=3e-3,
    batch_size=32,
    seed=0,
    cache_dir=None,
) -> xr.Dataset:
    """Capture each setup and score every estimator on ``H_GN`` and ``H_Ada``.

    Returns a Dataset with dims ``model, target, layer, step, estimator`` (and ``init``,
    ``iteration`` for the power iteration); ``layer`` is a slot index per model with the
    names in the 2-D coordinate ``layer_name`` (empty where a model has fewer layers).
    """
    t_start = time.perf_counter()
    steps = sorted(int(s) for s in steps)
    inits = ["identity"] + [f"random{i}" for i in range(int(random_inits))]
    power_steps_set = set(steps) if power_at == "all" else {steps[-1]}
    captures = []
    capture_seconds = 0.0
    for s in setups:
        t0 = time.perf_counter()
        tree, cfg = capture_setup(s, steps, optimizer, learning_rate, batch_size, seed, cache_dir)
        capture_seconds += time.perf_counter() - t0
        captures.append((s, tree, cfg))
    n_layers = max(len(str(t.attrs["layers"]).split(",")) for _, t, _ in captures)
    shape = (len(setups), len(TARGETS), n_layers, len(steps))
    cosine = np.full((*shape, len(ESTIMATORS)), np.nan)
    opt_iters = np.full(shape, -1, np.int64)
    opt_conv = np.full(shape, -1, np.int8)
    pcos = np.full((*shape, len(inits), power_steps + 1), np.nan)
    popt = np.full_like(pcos, np.nan)
    names = np.full((len(setups), n_layers), "", dtype=object)
    rows = np.full((len(setups), n_layers), -1, np.int64)
    cols = np.full((len(setups), n_layers), -1, np.int64)
    loss = np.full((len(setups), len(steps)), np.nan)
    acc = np.full((len(setups), len(steps)), np.nan)
    num_traj = np.full((len(setups), len(steps)), -1, np.int64)
    for i_m, (_, tree, _) in enumerate(captures):
        layers = str(tree.attrs["layers"]).split(",")
        for i_l, (lay, shp) in enumerate(
            zip(layers, str(tree.attrs["layer_shapes"]).split(","), strict=True)
        ):
            names[i_m, i_l] = lay
            rows[i_m, i_l], cols[i_m, i_l] = (int(x) for x in shp.split("x"))
        traj: dict[str, list[np.ndarray]] = {lay: [] for lay in layers}
        for i_s, step in enumerate(steps):
            node = tree[f"step_{step:06d}"]
            loss[i_m, i_s] = float(node.attrs.get("loss", np.nan))
            a = float(node.attrs.get("test_accuracy", -1.0))
            acc[i_m, i_s] = np.nan if a == -1.0 else a
            for i_l, lay in enumerate(layers):
                ln = node[lay]
                traj[lay].append(np.asarray(as_samples(ln["trajectory"]["gradients"]).values))
                gs = np.concatenate(traj[lay])
                num_traj[i_m, i_s] = len(gs)
                ggn, kfac_in = _ggn_target(ln)
                ada = padded_target(gs, np.ones(len(gs), gs.dtype))
                for i_t, (target, kin) in enumerate(((ggn, kfac_in), (ada, None))):
                    cos, info, curves, to_opt = _cell(
                        target, kin, power_steps, inits, step in power_steps_set, seed
                    )
                    cosine[i_m, i_t, i_l, i_s] = [cos[e] for e in ESTIMATORS]
                    opt_iters[i_m, i_t, i_l, i_s], opt_conv[i_m, i_t, i_l, i_s] = info
                    pcos[i_m, i_t, i_l, i_s] = curves
                    popt[i_m, i_t, i_l, i_s] = to_opt
    dims = ("model", "target", "layer", "step")
    ds = xr.Dataset(
        {
            "cosine": ((*dims, "estimator"), cosine),
            "opt_iterations": (dims, opt_iters),
            "opt_converged": (dims, opt_conv),
            "power_cosine": ((*dims, "init", "iteration"), pcos),
            "power_cosine_to_opt": ((*dims, "init", "iteration"), popt),
            "loss": (("model", "step"), loss),
            "test_accuracy": (("model", "step"), acc),
            "adagrad_num_gradients": (("model", "step"), num_traj),
        },
        coords={
            "model": [s["key"] for s in setups],
            "target": list(TARGETS),
            "layer": np.arange(n_layers),
            "step": np.asarray(steps, np.int64),
            "estimator": list(ESTIMATORS),
            "init": inits,
            "iteration": np.arange(power_steps + 1),
            "layer_name": (("model", "layer"), names.astype(str)),
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
    ds.attrs.update(
        {
            "study": NAME,
            "paper": PAPER,
            "targets": "ggn: exact per-layer GGN over the captured examples; "
            "adagrad: sum of the run's mini-batch gradient outer products up to the step",
            "metric": "Frobenius cosine similarity, no damping",
            "kfac": "expand variant from layer inputs and exact-GGN backprops (GGN row only)",
            "random_init": "Wishart X Xᵀ/dim, X standard normal (power_iteration init='random')",
            "power_at": str(power_at),
            "optimizer": str(optimizer),
            "learning_rate": float(learning_rate),
            "batch_size": int(batch_size),
            "seed": int(seed),
            "num_samples": ",".join(str(s["num_samples"]) for s in setups),
            "capture_configs": " | ".join(
                f"{s['key']}: {cfg['model']} {cfg['dataset']} layers={t.attrs['layers']} "
                f"shapes={t.attrs['layer_shapes']} N={cfg['num_samples']} "
                f"options={cfg.get('model_options', {})}"
                for s, t, cfg in captures
            ),
            "capture_seconds": round(capture_seconds, 2),
            "seconds": round(time.perf_counter() - t_start, 2),
        }
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


def verdicts(ds: xr.Dataset) -> list[Verdict]:
    out = []
    gap = _gaps(ds)
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
        ev.append(
            f"{t}: cos(opt) median {_fmt(float(np.nanmedian(c_opt.sel(target=t))))}, "
            f"cos(Sh²) median {_fmt(float(np.nanmedian(c_sh2.sel(target=t))))}, "
            f"gap median {_fmt(float(np.median(g)))} max {_fmt(float(np.max(g)))}, "
            f"{100 * frac:.0f}% of {g.size} cells ≤ {GAP_TOL}"
        )
    ev.append(f"largest gap at {_where(gap, ds)}")
    out.append(
        Verdict(
            "P3-3",
            PAPER,
            "Abstract; Figure 1",
            "Shampoo² is close to the optimal Kronecker approximation of H_GN and H_Ada "
            "over training.",
            judge(all_ok, med_ok),
            "; ".join(ev),
            f"holds: cos(opt) − cos(Shampoo²) ≤ {GAP_TOL} in every (model, layer, step) cell "
            f"for both targets; partially: median gap ≤ {GAP_TOL} for both",
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
        Verdict(
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
        )
        verdict = judge(win_ok and frac_ok, win_ok or frac_ok)
    else:
        ev, verdict = "no power-iteration curves in the dataset", FAILS
    out.append(
        Verdict(
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
        Verdict(
            "P3-6",
            PAPER,
            "sciencestack TL;DR (ViT); here a character transformer",
            "The gap between Shampoo² and the optimal Kronecker approximation widens for "
            "transformers.",
            verdict,
            ev,
            f"holds: transformer mean gap ≥ {WIDEN_FACTOR}× the largest MLP/CNN mean gap and "
            f"≥ {WIDEN_MIN} above it; partially: larger overall or for one target",
        )
    )
    return out


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def _style():
    from precond_lab.plotting import estimator_label, estimator_style, style

    return style, estimator_label, estimator_style


_TARGET_TITLES = {"ggn": "Gauss–Newton", "adagrad": "Adagrad"}


def _figure(nrows, ncols, panel=(3.3, 2.6), **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _integer_ticks(axes):
    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend(fig, axes, ncols=4):
    seen = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=ncols)


def _layer_title(ds, model, layer):
    name = ds["layer_name"].sel(model=model, layer=layer).item()
    r = int(ds["layer_rows"].sel(model=model, layer=layer))
    c = int(ds["layer_cols"].sel(model=model, layer=layer))
    return f"{name} ({r}×{c})"


def plot(ds: xr.Dataset, figdir) -> list[Path]:
    from precond_lab.plotting import save

    style, label, est_style = _style()
    figdir = Path(figdir)
    paths: list[Path] = []
    models = [str(m) for m in ds["model"].values]
    steps = ds["step"].values
    with style():
        # Figure 1 form: rows GN / Adagrad, columns models, first layer of each model.
        fig, axes = _figure(len(TARGETS), len(models), sharex=False)
        for r, t in enumerate(TARGETS):
            for c, m in enumerate(models):
                ax = axes[r, c]
                for i, e in enumerate(ESTIMATORS):
                    y = ds["cosine"].sel(model=m, target=t, layer=0, estimator=e).values
                    if np.all(np.isnan(y)):
                        continue
                    ax.plot(steps, y, label=label(e), gid=e, **est_style(e, i))
                ax.set_title(f"{_TARGET_TITLES[t]} — {m}\n{_layer_title(ds, m, 0)}", fontsize=8)
                if r == len(TARGETS) - 1:
                    ax.set_xlabel("training step")
                if c == 0:
                    ax.set_ylabel("cosine similarity")
        _integer_ticks(axes)
        _legend(fig, axes)
        fig.suptitle("Cosine similarity with H_GN (top) and H_Ada (bottom) over training")
        paths += save(fig, figdir / f"{NAME}_fig1")

        # Every layer: rows = (target, layer slot), columns = models.
        n_layers = ds.sizes["layer"]
        fig, axes = _figure(len(TARGETS) * n_layers, len(models), panel=(3.0, 2.1))
        for t_i, t in enumerate(TARGETS):
            for li in range(n_layers):
                r = t_i * n_layers + li
                for c, m in enumerate(models):
                    ax = axes[r, c]
                    if not ds["layer_name"].sel(model=m, layer=li).item():
                        ax.set_axis_off()
                        continue
                    for i, e in enumerate(ESTIMATORS):
                        y = ds["cosine"].sel(model=m, target=t, layer=li, estimator=e).values
                        if np.all(np.isnan(y)):
                            continue
                        ax.plot(steps, y, label=label(e), gid=e, **est_style(e, i))
                    ax.set_title(
                        f"{_TARGET_TITLES[t]} — {m}\n{_layer_title(ds, m, li)}", fontsize=7
                    )
                    if c == 0:
                        ax.set_ylabel("cosine")
                    if r == len(TARGETS) * n_layers - 1:
                        ax.set_xlabel("training step")
        _integer_ticks(axes)
        _legend(fig, axes)
        fig.suptitle("Cosine similarity per layer")
        paths += save(fig, figdir / f"{NAME}_layers")

        # P3-5: power iteration from I vs random starts (first layer, last power step).
        pc = ds["power_cosine"]
        step_have = [
            s for s in steps if np.isfinite(pc.sel(step=s, init="identity", iteration=1)).any()
        ]
        if step_have:
            s = step_have[-1]
            fig, axes = _figure(len(TARGETS), len(models))
            it = ds["iteration"].values
            for r, t in enumerate(TARGETS):
                for c, m in enumerate(models):
                    ax = axes[r, c]
                    cur = pc.sel(model=m, target=t, layer=0, step=s)
                    opt = ds["cosine"].sel(
                        model=m, target=t, layer=0, step=s, estimator="frobenius_optimal"
                    )
                    ax.axhline(
                        float(opt), color="#0072B2", lw=1, ls="--", label="Optimal Kronecker"
                    )
                    for init in ds["init"].values:
                        init = str(init)
                        ident = init == "identity"
                        ax.plot(
                            it,
                            cur.sel(init=init).values,
                            color="#D55E00" if ident else "#7F7F7F",
                            marker="s" if ident else ".",
                            lw=1.6 if ident else 0.9,
                            alpha=1.0 if ident else 0.8,
                            label="from identity (step 1 = Shampoo²)"
                            if ident
                            else "from random PSD",
                            zorder=3 if ident else 2,
                            gid=init,
                        )
                    ax.set_title(f"{_TARGET_TITLES[t]} — {m}\n{_layer_title(ds, m, 0)}", fontsize=8)
                    if r == len(TARGETS) - 1:
                        ax.set_xlabel("power-iteration step")
                    if c == 0:
                        ax.set_ylabel("cosine similarity")
            _integer_ticks(axes)
            _legend(fig, axes, ncols=3)
            fig.suptitle(f"Power iteration for the optimal Kronecker product (training step {s})")
            paths += save(fig, figdir / f"{NAME}_power_iteration")

        # P3-6: the gap cos(opt) − cos(Shampoo²) per model (all layers and steps).
        gap = _gaps(ds)
        fig, axes = _figure(1, len(TARGETS), panel=(3.6, 2.8))
        for c, t in enumerate(TARGETS):
            ax = axes[0, c]
            data = [np.asarray(gap.sel(model=m, target=t).values).ravel() for m in models]
            data = [d[np.isfinite(d)] for d in data]
            for i, d in enumerate(data):
                jitter = np.linspace(-0.15, 0.15, max(len(d), 1))[: len(d)]
                ax.scatter(i + jitter, d, s=12, color="#009E73", alpha=0.8, zorder=3)
                if len(d):
                    ax.hlines(np.mean(d), i - 0.3, i + 0.3, color="black", lw=1.5, zorder=4)
            ax.axhline(GAP_TOL, color="#D55E00", ls=":", lw=1, label=f"P3-3 tolerance {GAP_TOL}")
            ax.set_xticks(range(len(models)), [m.replace("/", "\n") for m in models], fontsize=7)
            ax.set_title(_TARGET_TITLES[t])
            ax.set_ylabel("cos(opt) − cos(Shampoo²)")
        _legend(fig, axes, ncols=1)
        fig.suptitle("Shampoo²–optimum gap per model (dots: layer × step; bar: mean)")
        paths += save(fig, figdir / f"{NAME}_gap")
    return paths
