"""Morwani et al. (P3): how close Shampoo² is to the optimal Kronecker approximation.

Fig. 1's form on three captured training runs (``studies._setups.P3_SETUPS``: an MLP on
binary MNIST, a CNN on digits or MNIST, the character transformer on ``stdlib-chars``). At
each captured step and layer: the exact per-layer GGN ``H_GN`` (capture target ``ggn``)
and Adagrad's ``H_Ada = Σ_{s≤t} g_s g_sᵀ`` over the run's mini-batch gradients (target
``trajectory``), scored by the sweep (``evaluate``, Frobenius cosine, no damping) for
``frobenius_optimal``, ``shampoo_squared``, ``shampoo`` (``estimators.shampoo_host``) and
``kfac`` (expand, ``H_GN`` only); power-iteration cosines from ``I`` and random Wishart
starts (``sweep.power_cosines``), the rearranged target's ``σ₂/σ₁``
(``estimators.rearranged_singular_values``) and the identity's overlap with the top pair
(``sweep.identity_overlaps``). P3-3 and P3-6 are decided over steps > 0 (at step 0
``H_Ada`` is one gradient's outer product, rank 1, reported apart).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import xarray as xr

from precond_lab import estimators as est
from precond_lab import plotting as pl
from precond_lab import schema, study, sweep
from precond_lab.study import FAILS, REPORTED, Outcome, Row, Rule, TestKind, judge
from studies._setups import (
    P3_SETUPS,
    P3_TRAINING,
    Setup,
    Training,
    capture_setup,
    ggn_target,
    layer_table,
    padded_target,
    run_coords,
)  # fmt: skip

NAME = "p3_quality"
TITLE = "P3 (Morwani et al.): Shampoo² vs the optimal Kronecker product over training"
ESTIMATORS = ("frobenius_optimal", "shampoo_squared", "shampoo", "kfac")
TARGETS = ("ggn", "adagrad")
_SWEEP = ("frobenius_optimal", "shampoo_squared", ("shampoo", est.shampoo_host), "kfac")
# the rules' thresholds (each stated in its row's tolerance)
GAP_TOL = 0.05  # P3-3: cos(opt) − cos(Shampoo²) ≤ 0.05 in every cell
SHAMPOO_MARGIN, EXACT_COS, TIE_TOL = 0.05, 0.999, 0.005  # P3-4 margin; exact ties; P3-5 tie
FRACTION_TOL = 0.95  # P3-5: one step from I reaches ≥ 95 % of the optimum's cosine
WIDEN_FACTOR, WIDEN_MIN = 2.0, 0.01  # P3-6: transformer gap ≥ 2× and ≥ 0.01 above MLP/CNN


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """The captured runs (``setups``, ``training``); ``power_steps`` ``K`` of the P3-5 curves
    from the identity and ``random_inits`` Wishart starts, run at the ``"last"`` or ``"all"``
    captured steps (``power_at``); ``seed`` of the runs and starts; the capture cache."""

    setups: tuple[Setup, ...]
    training: Training
    power_steps: int = 6
    random_inits: int = 3
    power_at: str = "last"
    seed: int = 0
    cache_dir: str | Path | None = None


PRESETS = {
    p: Config(tuple(P3_SETUPS[p].values()), P3_TRAINING[p], k, r, at)
    for p, k, r, at in (("test", 3, 2, "last"), ("quick", 6, 3, "last"), ("full", 10, 5, "all"))
}


def run(config: Config, **overrides) -> xr.Dataset:
    """Cosines on ``(model, layer, step, target, estimator)``, power-iteration curves on
    ``(…, target, init, iteration)``; ``layer`` is a slot per model (names in
    ``layer_name``, empty where a model has fewer layers)."""
    cfg, t_start = config.replace(**overrides), time.perf_counter()
    steps = sorted(int(s) for s in cfg.training.steps)
    training = dataclasses.replace(cfg.training, steps=tuple(steps))
    inits = ["identity"] + [f"random{i}" for i in range(int(cfg.random_inits))]
    power_at = set(steps) if cfg.power_at == "all" else {steps[-1]}
    trees = {s.key: capture_setup(s, training, cfg.seed, cfg.cache_dir)[0] for s in cfg.setups}
    names, rows, cols = layer_table(list(trees.values()))

    def cell(model, layer, step):
        tree = trees[model]
        layers = str(tree.attrs["layers"]).split(",")
        if layer >= len(layers):
            return {}
        node = tree[schema.step_name(step)][layers[layer]]
        past = [tree[schema.step_name(s)][layers[layer]] for s in steps if s <= step]
        gs = np.concatenate([schema.layer_samples(n, schema.Kind.TRAJECTORY).values for n in past])
        ggn, kfac_in = ggn_target(node)
        targets = {"ggn": ggn, "adagrad": padded_target(gs, np.ones(len(gs), gs.dtype))}
        sw = sweep.evaluate(targets, _SWEEP, ("cosine",), kfac_inputs=None if kfac_in is None
                            else {"ggn": kfac_in}, progress=False, raise_errors=True)  # fmt: skip
        sw = sw.isel({d: 0 for d in ("step", "layer", "batch_size") if d in sw.dims})
        opt = sw.sel(estimator="frobenius_optimal", target=list(TARGETS))
        out = {
            "cosine": sw["score"].sel(metric="cosine", estimator=list(ESTIMATORS)).transpose(
                "target", "estimator").values,
            "opt_iterations": (("target",), opt["iterations"].values.astype(int)),
            "opt_converged": (("target",), opt["converged"].values.astype(int)),
            "adagrad_num_gradients": len(gs),
        }  # fmt: skip
        if step in power_at:
            k = int(cfg.power_steps)
            curves = [sweep.power_cosines(targets[t], k, inits, cfg.seed) for t in TARGETS]
            sv = [est.rearranged_singular_values(targets[t]) for t in TARGETS]
            ov = [sweep.identity_overlaps(est.frobenius_optimal(targets[t])) for t in TARGETS]
            dims = ("target", "init", "iteration")
            out["power_cosine"] = (dims, np.stack([c for c, _ in curves]))
            out["power_cosine_to_opt"] = (dims, np.stack([o for _, o in curves]))
            out["rearranged_sv_ratio"] = (("target",), [s[1] / s[0] for s in sv])
            out["identity_overlap_left"] = (("target",), [o[0] for o in ov])
            out["identity_overlap_right"] = (("target",), [o[1] for o in ov])
        return out

    inner = {"target": list(TARGETS), "estimator": list(ESTIMATORS), "init": inits,
             "iteration": np.arange(int(cfg.power_steps) + 1)}  # fmt: skip
    models = [s.key for s in cfg.setups]
    ds = study.grid({"model": models, "layer": range(names.shape[1]), "step": steps}, cell, inner)
    extra = run_coords(trees, steps, "model", names, rows, cols)
    ds = ds.assign(loss=extra.pop("loss"), test_accuracy=extra.pop("test_accuracy"))
    ds = ds.assign_coords(extra)
    return study.dataset(
        ds.data_vars, ds.coords, title=TITLE, name=NAME, config=cfg, presets=PRESETS,
        started=t_start, seed=int(cfg.seed), source="captured training runs: " + ", ".join(models),
        targets="ggn: exact per-layer GGN over the captured examples; adagrad: sum of the "
        "run's mini-batch gradient outer products up to the step",
        metric="Frobenius cosine similarity, no damping (precond_lab.evaluate sweep)",
        kfac="expand variant from layer inputs and exact-GGN backprops (GGN row only)",
        random_init="Wishart X Xᵀ/dim, X standard normal, seeded (seed, index)",
    )  # fmt: skip


# ----------------------------------------------------------------------------- verdicts
def _gap(ds, trained_only=True):
    c = ds["cosine"]
    gap = c.sel(estimator="frobenius_optimal") - c.sel(estimator="shampoo_squared")
    steps = ds["step"].values
    return gap.sel(step=steps[steps > 0]) if trained_only and (steps > 0).any() else gap


def _where(da, ds, fn=np.nanargmax) -> str:
    at = dict(zip(da.dims, np.unravel_index(fn(da.values), da.shape), strict=True))
    at = {d: da[d].values[i] for d, i in at.items()}
    lay = ds["layer_name"].sel(model=at["model"], layer=at["layer"]).item()
    return f"{at['model']} {lay} {at['target']} step {at['step']}"


def _p3_3(ds) -> Outcome:
    gap, c = _gap(ds), ds["cosine"].sel(step=_gap(ds)["step"])
    per = {str(t): gap.sel(target=t).values[np.isfinite(gap.sel(target=t).values)]
           for t in ds["target"].values}  # fmt: skip
    ok = bool(np.isfinite(gap.values).any()) and all(np.all(g <= GAP_TOL) for g in per.values())
    med_ok = all(g.size and np.median(g) <= GAP_TOL for g in per.values())
    ev = [
        f"{t}: cos(opt) median {float(c.sel(target=t, estimator='frobenius_optimal').median()):.3f}"
        f", cos(Sh²) median {float(c.sel(target=t, estimator='shampoo_squared').median()):.3f}, "
        f"gap median {np.median(g):.3f} max {np.max(g):.3f}, {np.mean(g <= GAP_TOL):.0%} of "
        f"{g.size} cells ≤ {GAP_TOL}" for t, g in per.items()
    ]  # fmt: skip
    ev.append(f"largest gap at {_where(gap, ds)}")
    if 0 in ds["step"].values:
        g0 = _gap(ds, False).sel(step=0)
        ev.append("step 0 reported apart (H_Ada is rank 1 there): gap median " + ", ".join(
            f"{t} {float(g0.sel(target=t).median()):.3f} (max {float(g0.sel(target=t).max()):.3f})"
            for t in ds["target"].values))  # fmt: skip
    return Outcome(judge(ok, med_ok), "; ".join(ev))


def _p3_4(ds) -> Outcome:
    c = ds["cosine"]
    margin_da = c.sel(estimator="shampoo_squared") - c.sel(estimator="shampoo")
    keep = np.isfinite(margin_da.values)
    margin = margin_da.values[keep]
    exact = (c.sel(estimator="shampoo_squared") >= EXACT_COS).values[keep]
    ties = (np.abs(margin) <= TIE_TOL) & exact  # both exact (Σ a Kronecker product): a tie
    better = float(np.mean((margin > 0) | ties)) if margin.size else 0.0
    med = float(np.median(margin)) if margin.size else np.nan
    sh = c.sel(estimator="shampoo")
    return Outcome(
        judge(bool(margin.size) and better == 1.0 and med >= SHAMPOO_MARGIN, better >= 0.75),
        f"cos(Sh²) − cos(Sh): median {med:.3f}, min {np.min(margin):.3f} at "
        f"{_where(-margin_da, ds)}; Sh² better in {np.mean(margin > 0):.0%} of {margin.size} "
        f"cells, exact ties (both cos ≥ {EXACT_COS}) in {int(ties.sum())}; median cos(Sh) GN "
        f"{float(sh.sel(target='ggn').median()):.3f}, "
        f"Ada {float(sh.sel(target='adagrad').median()):.3f}",
    )  # fmt: skip


def _p3_5(ds) -> Outcome:
    pc, to = ds["power_cosine"].sel(iteration=1), ds["power_cosine_to_opt"]
    have = np.isfinite(pc.sel(init="identity")).values
    if not have.any():
        return Outcome(FAILS, "no power-iteration curves in the dataset")
    rand = [i for i in ds["init"].values if str(i) != "identity"]
    i1, mr, br = (x.values[have] for x in (pc.sel(init="identity"), pc.sel(init=rand).mean("init"),
                                            pc.sel(init=rand).max("init")))  # fmt: skip
    frac = (pc.sel(init="identity") / ds["cosine"].sel(estimator="frobenius_optimal")).values[have]
    wins, last = float(np.mean(i1 >= mr - TIE_TOL)), int(ds["iteration"].values[-1])
    win_ok, frac_ok = wins >= 0.9, float(np.median(frac)) >= FRACTION_TOL
    ident, rnd = to.sel(init="identity"), to.sel(init=rand).mean("init")
    opt = {k: (ident.sel(iteration=k).values[have].mean(),
               rnd.sel(iteration=k).values[have].mean()) for k in (1, last)}  # fmt: skip
    ratio = ds["rearranged_sv_ratio"].values[have]
    ov_l, ov_r = (ds[f"identity_overlap_{s}"].values[have] for s in ("left", "right"))
    return Outcome(judge(win_ok and frac_ok, win_ok or frac_ok), (
        f"1 step from I vs random ({len(rand)} inits): mean cos {i1.mean():.3f} vs {mr.mean():.3f} "
        f"(best random {br.mean():.3f}); I ≥ mean random − {TIE_TOL} in {wins:.0%} of {i1.size} "
        f"cells (≥ best random in {np.mean(i1 >= br):.0%}); cos(1 step from I)/cos(opt): median "
        f"{np.median(frac):.3f}, min {np.min(frac):.3f}; cos(iterate, opt) after 1 step: I "
        f"{opt[1][0]:.3f}, random {opt[1][1]:.3f}; after {last} steps: I {opt[last][0]:.3f}, "
        f"random {opt[last][1]:.3f}; why: σ₂/σ₁ of R(Σ) median {np.nanmedian(ratio):.3f} (max "
        f"{np.nanmax(ratio):.3f}), the identity's overlap with the top singular pair median "
        f"{np.nanmedian(ov_l):.3f} (u₁) / {np.nanmedian(ov_r):.3f} (v₁), min {np.nanmin(ov_r):.3f}"
        " (v₁) — a dominant top pair that the identity already overlaps"))  # fmt: skip


def _p3_6(ds) -> Outcome:
    gap, models = _gap(ds), [str(m) for m in ds["model"].values]
    tf = [m for m in models if m.startswith("transformer")]
    others = [m for m in models if m not in tf]
    if not (tf and others):
        return Outcome(FAILS, "needs a transformer and an MLP/CNN setup")
    mean = gap.mean(("layer", "step"))  # (model, target)
    whole = gap.mean(("layer", "step", "target"))
    g_tf, g_other = float(whole.sel(model=tf).max()), float(whole.sel(model=others).max())
    strong = g_tf >= WIDEN_FACTOR * g_other and g_tf - g_other >= WIDEN_MIN
    weak = g_tf > g_other or bool(
        (mean.sel(model=tf).max("model") > mean.sel(model=others).max("model")).any()
    )
    gn, ada = mean.sel(target="ggn"), mean.sel(target="adagrad")
    ev = ", ".join(f"{m} {float(whole.sel(model=m)):.4f} (GN {float(gn.sel(model=m)):.4f}, "
                   f"Ada {float(ada.sel(model=m)):.4f})" for m in models)  # fmt: skip
    weak_source = "Weak provenance: one sentence of a third-party summary; this row tests it."
    return Outcome(judge(strong, weak), f"mean gap cos(opt) − cos(Sh²): {ev}. {weak_source}")


def _p3_43(ds) -> Outcome:
    c, parts = ds["cosine"].sel(target="ggn"), []
    for m in ds["model"].values:
        k, s2, o = (c.sel(model=m, estimator=e).values
                    for e in ("kfac", "shampoo_squared", "frobenius_optimal"))  # fmt: skip
        ok = np.isfinite(k) & np.isfinite(s2)
        if ok.any():
            by = c.sel(model=m, estimator=["kfac", "shampoo_squared"]).median("layer")
            steps = ", ".join(f"{int(s)}: {float(b[0]):.3f}/{float(b[1]):.3f}"
                              for s, b in zip(ds["step"].values, by.transpose("step", ...).values,
                                              strict=True))  # fmt: skip
            k, s2, o = k[ok], s2[ok], o[ok]
            parts.append(f"{m}: cos K-FAC / Sh² / opt median {np.median(k):.3f} / "
                         f"{np.median(s2):.3f} / {np.median(o):.3f}; K-FAC closer than Sh² in "
                         f"{int(np.sum(k > s2))}/{k.size} cells, within 0.01 of the optimum in "
                         f"{int(np.sum(o - k <= 0.01))}/{k.size}; K-FAC/Sh² by step "
                         f"{steps}")  # fmt: skip
    return Outcome(REPORTED, "; ".join(parts) + " [K-FAC: expand variant from the layer inputs "
                   "and exact-GGN backprops; cosines with the exact per-layer H_GN]")  # fmt: skip


_P = TestKind.PROXY
# fmt: off
RULES = (
    Rule("P3-3", _P, _p3_3, f"over training steps > 0: holds: cos(opt) − cos(Shampoo²) ≤ "
         f"{GAP_TOL} in every (model, layer, step) cell for both targets; partially: median gap "
         f"≤ {GAP_TOL} for both"),
    Rule("P3-4", _P, _p3_4, f"holds: Shampoo² better in every cell (or both exact: cos ≥ "
         f"{EXACT_COS}, within {TIE_TOL}) and median margin ≥ {SHAMPOO_MARGIN}; partially: so in "
         "≥ 75% of cells"),
    Rule("P3-5", _P, _p3_5, f"holds: cos after 1 step from I ≥ the random starts' mean − {TIE_TOL}"
         f" in ≥ 90% of cells and median cos(1 step from I)/cos(opt) ≥ {FRACTION_TOL}; "
         "partially: one of them"),
    Rule("P3-6", _P, _p3_6, f"holds: transformer mean gap ≥ {WIDEN_FACTOR}× the largest MLP/CNN "
         f"mean gap and ≥ {WIDEN_MIN} above it (training steps > 0); partially: larger overall "
         "or for one target"),
    Rule("P3-43", _P, _p3_43, "a comparison, reported without a verdict"),
)
# fmt: on


def verdicts(ds: xr.Dataset) -> list[Row]:
    return study.verdicts_from(ds, RULES)


# --------------------------------------------------------------------------------- plot
def _title(ds, model, layer, target):
    name, r, c = (ds[k].sel(model=model, layer=layer).item()
                  for k in ("layer_name", "layer_rows", "layer_cols"))  # fmt: skip
    kind = "Adagrad" if target == "adagrad" else pl.target_label(target)
    return f"{kind} — {model}\n{name} ({r}×{c})"


# fmt: off
def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """Fig. 1 (first layer), every layer, the power iteration from I vs random, the gaps."""
    figs, cos = {}, ds["cosine"]
    kw = dict(x="step", hue="estimator", xlabel="training step", ylabel="cosine")
    with pl.style():
        figs[f"{NAME}_fig1"] = pl.grid_lines(
            cos.isel(layer=0), row="target", col="model", **kw,
            title=lambda row, col: _title(ds, col, 0, row),
            suptitle="Cosine similarity with H_GN (top) and H_Ada (bottom) over training")
        per_layer = cos.stack(panel=("target", "layer")).transpose("panel", "model", ...)
        figs[f"{NAME}_layers"] = pl.grid_lines(
            per_layer, row="panel", col="model", panel=(3.0, 2.1), **kw,
            title=lambda row, col: _title(ds, col, row[1], row[0]),
            suptitle="Cosine similarity per layer")
        pc = ds["power_cosine"].isel(layer=0)
        have = [s for s in ds["step"].values if np.isfinite(pc.sel(step=s, init="identity")).any()]
        if have:
            curves = pc.sel(step=have[-1]).rename(init="start")
            n_random = curves.sizes["start"] - 1
            fig = pl.grid_lines(
                curves, x="iteration", hue="start", row="target", col="model",
                style_of=lambda h, i: dict(color=pl.OKABE_ITO["vermillion"], marker="s", lw=1.6,
                                           zorder=3) if h == "identity" else
                dict(color="#7F7F7F", marker=".", lw=0.9, alpha=0.8),
                label_of=lambda h: "from identity (step 1 = Shampoo²)" if h == "identity" else
                f"from random PSD (n = {n_random} starts)",
                title=lambda row, col: _title(ds, col, 0, row), xlabel="power-iteration step",
                ylabel="cosine", suptitle="Power iteration from I (step 1 = Shampoo²) and "
                f"random PSD starts (training step {have[-1]}); dashed: the optimum")
            opt = cos.isel(layer=0).sel(step=have[-1], estimator="frobenius_optimal")
            cells = [(t, m) for t in curves.target.values for m in curves.model.values]
            for ax, (t, m) in zip(fig.axes[: len(cells)], cells, strict=True):
                ax.axhline(float(opt.sel(target=t, model=m)), color="0.3", lw=1, ls="--")
            figs[f"{NAME}_power_iteration"] = fig
        fig, axes = pl.figure(1, len(TARGETS), panel=(3.6, 2.8))
        gap, models = _gap(ds, False), [str(m) for m in ds["model"].values]
        for ax, t in zip(axes[0], TARGETS, strict=True):
            for i, m in enumerate(models):
                d = gap.sel(model=m, target=t).values.ravel()
                d = d[np.isfinite(d)]
                ax.scatter(i + np.linspace(-0.15, 0.15, len(d)), d, s=12, alpha=0.8,
                           color=pl.OKABE_ITO["bluish_green"])
                ax.hlines(np.mean(d) if len(d) else np.nan, i - 0.3, i + 0.3, color="k", lw=1.5)
            ax.axhline(GAP_TOL, color=pl.OKABE_ITO["vermillion"], ls=":",
                       label=f"P3-3 tolerance {GAP_TOL}")
            ax.set_xticks(range(len(models)), [m.replace("/", "\n") for m in models], fontsize=7)
            ax.set(title=t, ylabel="cos(opt) − cos(Shampoo²)")
        pl.legend(fig, axes, ncols=1)
        fig.suptitle("Shampoo²–optimum gap per model (dots: layer × step; bar: mean)")
        figs[f"{NAME}_gap"] = fig
    return study.save_figures(figs, figdir)
# fmt: on
