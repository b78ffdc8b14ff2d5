"""Morwani et al. (P3): batch gradients and real vs sampled labels as Shampoo² statistics.

P3-7 (sampled-label batch statistics ``B·ḡḡᵀ`` are unbiased for ``H_GN``) and P3-8 (real
labels degrade Shampoo², more so at larger ``B``) on the MLP on binary MNIST (the paper's
Fig. 3 dataset, its own capture of ``N`` = 128 / 1024 examples so that ``B ≤ N/2``) and
the CNN on digits / MNIST (``p3_quality``'s store). At each step and layer the target is the
exact per-layer GGN; the statistics (``sweep.batch_statistics``: ``resampled``, ``M``
batches drawn with replacement, mean of ``repeats`` Monte-Carlo repeats; ``groups``, the
capture's consecutive batches; ``expected``, the exact ``M → ∞`` limit) come from the real
labels' gradients or the ``k`` sampled-label draws (centred: ``E_y[g|x] = 0`` exactly).
For sampled labels the ``expected`` limit is still a ``k``-draw estimate of ``H_GN`` (the
``k, M → ∞`` limit is ``H_GN``, drawn as "Shampoo² of the exact H_GN"); on a confident
model a few flipped-label draws dominate it (``top_draw_share``), so ``M`` random draws
can sit well above it. Scores: the cosine with ``H_GN`` of each statistic and its L⊗R.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import numpy as np
import xarray as xr

from precond_lab import metrics as met
from precond_lab import plotting as pl
from precond_lab import schema, study
from precond_lab.evaluate import evaluate
from precond_lab.structures import Kronecker
from precond_lab.study import FAILS, Outcome, Row, Rule, TestKind, judge
from precond_lab.sweep import batch_statistics as bs
from studies import _setups as su

NAME = "p3_batch_labels"
TITLE = "P3 (Morwani et al.): batch gradients and real vs sampled labels"
LABELS, SCHEMES = ("real", "sampled"), ("resampled", "groups", "expected")
# the rules' thresholds (each stated in its row's tolerance)
UNBIASED_TOL = 0.02  # P3-7: expected sampled statistic's cosine drops ≤ 0.02 from B=1 to B_max
BATCH_TOL = 0.05  # P3-7: Shampoo² (sampled, resampled) drops ≤ 0.05 from B=1 at any B
DEGRADE_TOL = 0.05  # P3-8: sampled − real ≥ 0.05 at the largest batch, and growing with B


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """The captured runs (``setups``, ``training``); ``num_batches`` ``M`` of the resampled
    statistic and its Monte-Carlo ``repeats``; ``seed`` of the runs and the resampling."""

    setups: tuple[su.Setup, ...]
    training: su.Training
    num_batches: int = 128
    repeats: int = 8
    seed: int = 0
    cache_dir: str | Path | None = None


# fmt: off
_MLP_BATCH = {  # binary MNIST with enough captured examples for B ≤ N/2
    "test": su.P3_SETUPS["test"]["mlp"],
    "quick": su.Setup("mlp/binary-mnist", "mlp", "binary-mnist", num_samples=128,
                   batch_sizes=(4, 16, 32, 64), model_options=(("hidden", (16,)),)),
    "full": su.Setup("mlp/binary-mnist", "mlp", "binary-mnist", num_samples=1024,
                  batch_sizes=(4, 16, 64, 128, 256, 512), mc_samples=4),
}
PRESETS = {
    p: Config((_MLP_BATCH[p], su.P3_SETUPS[p]["cnn"]), su.P3_TRAINING[p], num_batches=m, repeats=r)
    for p, m, r in (("test", 16, 3), ("quick", 128, 5), ("full", 1024, 16))
}
# fmt: on
_TARGETS = ("gradients", "ggn", "ggn-mc", "batch")  # what this study's own stores hold
_REFERENCES = {"ref_shampoo2_ggn": "shampoo_squared", "ref_optimal_ggn": "frobenius_optimal"}


def run(config: Config, **overrides) -> xr.Dataset:
    """Cosines on ``(dataset, step, layer, labels, batch_size, scheme)`` (and ``repeat``)."""
    cfg, t_start = config.replace(**overrides), time.perf_counter()
    steps = sorted(int(s) for s in cfg.training.steps)
    training = dataclasses.replace(cfg.training, steps=tuple(steps))
    rng = np.random.default_rng(cfg.seed)  # one stream, drawn in the grid's order
    shared = {s for setups in su.P3_SETUPS.values() for s in setups.values()}
    trees = {s.key: su.capture_setup(s, training, cfg.seed, cfg.cache_dir,
                                  **({} if s in shared else {"targets": _TARGETS}))[0]
             for s in cfg.setups}  # fmt: skip
    sizes = sorted({1} | {int(b) for s in cfg.setups for b in s.batch_sizes})
    names, rows, cols = su.layer_table(list(trees.values()))

    @functools.cache
    def node(dataset, step, layer):
        layers = str(trees[dataset].attrs["layers"]).split(",")
        return (
            trees[dataset][schema.step_name(step)][layers[layer]] if layer < len(layers) else None
        )

    @functools.cache
    def ggn_t(dataset, step, layer):
        return su.ggn_target(node(dataset, step, layer))[0]

    @functools.cache
    def draws(dataset, step, layer, labels):
        ln, k = node(dataset, step, layer), int(trees[dataset].attrs["mc_samples"])
        if labels == "real":
            g = np.asarray(schema.layer_samples(ln, schema.Kind.GRADIENTS).values)[:, None]
        else:
            g = np.asarray(schema.layer_samples(ln, schema.Kind.GGN_MC).values) * np.sqrt(k)
        ggn = np.asarray(schema.layer_samples(ln, schema.Kind.GGN).values)
        ggn_w = np.full(ggn.shape[0] * ggn.shape[1], 1.0 / ggn.shape[0])
        flat = g.reshape(-1, *g.shape[2:]).astype(np.float64)
        norms = np.sum(flat**2, axis=(1, 2))
        top = max(1, int(np.ceil(0.01 * len(norms))))
        info = {"mean_gradient_fraction": float(np.sum(flat.mean(0) ** 2) / np.mean(norms)),
                "top_draw_share": float(np.sort(norms)[-top:].sum() / norms.sum())}  # fmt: skip
        cell = bs.LabelDraws(g, ggn.reshape(-1, *ggn.shape[2:]), ggn_w, center=labels == "sampled")
        return cell, info

    def per_layer(dataset, step, layer):
        if node(dataset, step, layer) is None:
            return {}
        sw = evaluate({"ggn": ggn_t(dataset, step, layer)}, tuple(_REFERENCES.values()),
                      ("cosine",), progress=False, raise_errors=True)  # fmt: skip
        cos = sw["score"].sel(metric="cosine").squeeze()
        return {k: float(cos.sel(estimator=e)) for k, e in _REFERENCES.items()}

    def per_labels(dataset, step, layer, labels):
        return {} if node(dataset, step, layer) is None else draws(dataset, step, layer, labels)[1]

    def per_batch(dataset, step, layer, labels, batch_size):
        if node(dataset, step, layer) is None:
            return {}
        cell = draws(dataset, step, layer, labels)[0]
        if batch_size > cell.n // 2 and batch_size > 1:  # B ≤ N/2
            return {}
        t = ggn_t(dataset, step, layer)
        sh2 = lambda f: float(met.cosine_similarity(t, Kronecker(  # noqa: E731
            np.asarray(f[0], t.dtype), np.asarray(f[1], t.dtype))))  # fmt: skip
        stats = bs.batch_statistics(cell, batch_size, cfg.num_batches, rng, cfg.repeats)
        mc = [(c, sh2(f)) for c, f in stats["resampled"]]
        out = {"cos_statistic_mc": (("repeat",), [c for c, _ in mc]),
               "cos_shampoo2_mc": (("repeat",), [s for _, s in mc])}  # fmt: skip
        fixed = [stats[sc] for sc in SCHEMES[1:]]
        out["cos_statistic"] = (("scheme",), [np.mean([c for c, _ in mc])] + [c for c, _ in fixed])
        sh2_fixed = [sh2(f) for _, f in fixed]
        out["cos_shampoo2"] = (("scheme",), [np.mean([s for _, s in mc])] + sh2_fixed)
        if labels == "real" and batch_size > 1:  # our groups = the capture's batch target
            cap = schema.layer_samples(node(dataset, step, layer), schema.batch_kind(batch_size))
            c, _ = bs.group_operator(cell.n, cell.k, batch_size)
            ours = (c @ cell.f).reshape(c.shape[0], *cell.shape) / np.sqrt(batch_size)
            dev = np.max(np.abs(cap.values - ours)) / np.max(np.abs(cap.values))
            out["batch_target_dev"] = float(dev)
        return out

    models = [s.key for s in cfg.setups]
    base = {"dataset": models, "step": steps, "layer": range(names.shape[1])}
    inner = {"scheme": list(SCHEMES), "repeat": np.arange(cfg.repeats)}
    ds = xr.merge([
        study.grid(base, per_layer),
        study.grid({**base, "labels": list(LABELS)}, per_labels),
        study.grid({**base, "labels": list(LABELS), "batch_size": sizes}, per_batch, inner),
    ])  # fmt: skip
    extra = su.run_coords(trees, steps, "dataset", names, rows, cols)
    ds = ds.assign(loss=extra.pop("loss"), test_accuracy=extra.pop("test_accuracy"))
    ds = ds.assign_coords(extra)
    return study.dataset(
        ds.data_vars, ds.coords, title=TITLE, name=NAME, config=cfg, presets=PRESETS,
        started=t_start, seed=int(cfg.seed), num_batches=int(cfg.num_batches),
        source="captured training runs: " + ", ".join(models),
        batch_target_check_max_rel_dev=float(ds["batch_target_dev"].max()),
        statistic="(1/M) Σ_j B ḡ_j ḡ_jᵀ (precond_lab.sweep.batch_statistics); sampled draws "
        "centred; cos_statistic exact via Gram matrices; references: the evaluate sweep",
    )  # fmt: skip


# ----------------------------------------------------------------------------- verdicts
def _bmax(ds, dataset) -> int:
    c = ds["cos_shampoo2"].sel(dataset=dataset, scheme="resampled", labels="real")
    return max(int(b) for b in ds["batch_size"].values if np.isfinite(c.sel(batch_size=b)).any())


def _med(da) -> float:
    v = np.asarray(da.values, float).ravel()
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def _mc_gap(ds, dataset: str, bsz: int, steps=None) -> tuple[float, float]:
    """Mean and standard error over repeats of the median over (step, layer) cells of
    cos(Sh²_sampled) − cos(Sh²_real)."""
    mc = ds["cos_shampoo2_mc"].sel(dataset=dataset, batch_size=bsz)
    mc = mc if steps is None else mc.sel(step=list(steps))
    gap = (mc.sel(labels="sampled") - mc.sel(labels="real")).stack(cell=("step", "layer"))
    per = np.array([_med(gap.sel(repeat=r)) for r in gap["repeat"].values])
    per = per[np.isfinite(per)]
    if not per.size:
        return float("nan"), float("nan")
    return float(per.mean()), float(per.std(ddof=1) / np.sqrt(len(per))) if len(per) > 1 else 0.0


def _p3_7(ds) -> Outcome:
    unbiased, close, ev = [], [], []
    for d in map(str, ds["dataset"].values):
        bm, stat = _bmax(ds, d), ds["cos_statistic"].sel(dataset=d, scheme="expected")
        e, er = stat.sel(labels="sampled"), stat.sel(labels="real")
        drop_e = (e.sel(batch_size=1) - e.sel(batch_size=bm)).values.ravel()
        drop_e = drop_e[np.isfinite(drop_e)]
        unbiased.append(bool(drop_e.size) and bool(np.all(drop_e <= UNBIASED_TOL)))
        r = ds["cos_shampoo2"].sel(dataset=d, scheme="resampled", labels="sampled")
        drops = [_med(r.sel(batch_size=1) - r.sel(batch_size=b))
                 for b in ds["batch_size"].values if int(b) <= bm]  # fmt: skip
        close.append(all(v <= BATCH_TOL for v in drops if np.isfinite(v)))
        b1 = {"batch_size": 1}
        ev.append(
            f"{d}: cos(E[stat], H_GN) B=1→{bm}: sampled {_med(e.sel(b1)):.3f}→"
            f"{_med(e.sel(batch_size=bm)):.3f} (max drop {np.max(drop_e):.3f}), real "
            f"{_med(er.sel(b1)):.3f}→{_med(er.sel(batch_size=bm)):.3f}; cos(Sh²_sampled, H_GN) "
            f"B=1→{bm}: {_med(r.sel(b1)):.3f}→{_med(r.sel(batch_size=bm)):.3f} (vs Sh² of "
            f"exact H_GN {_med(ds['ref_shampoo2_ggn'].sel(dataset=d)):.3f})")  # fmt: skip
    m = ds.attrs["num_batches"]
    return Outcome(judge(all(unbiased) and all(close), any(unbiased) or any(close)),
                   "; ".join(ev) + f" [medians over steps × layers; M={m}]")  # fmt: skip


def _p3_8(ds) -> Outcome:
    strong, weak, ev = [], [], []
    for d in map(str, ds["dataset"].values):
        bm = _bmax(ds, d)
        (g1, se1), (gm, sem) = _mc_gap(ds, d, 1), _mc_gap(ds, d, bm)
        strong.append(gm - 2 * sem >= DEGRADE_TOL and gm > g1)
        weak.append(gm - 2 * sem > 0 and gm > g1)
        way = ("sampled better" if gm - 2 * sem > 0 else
               "real better (reversed)" if gm + 2 * sem < 0 else "no clear direction")  # fmt: skip
        r, steps = ds["cos_shampoo2"].sel(dataset=d, scheme="resampled"), list(ds["step"].values)
        by_step = ", ".join(
            "{}: {:.3f} ± {:.3f}".format(s, *_mc_gap(ds, d, bm, [s])) for s in steps
        )
        later = [s for s in steps if s > 0]
        gl, sel = _mc_gap(ds, d, bm, later) if later else (np.nan, np.nan)
        cg = ds["cos_shampoo2_mc"].sel(dataset=d, batch_size=bm)
        cg = cg.sel(labels="sampled") - cg.sel(labels="real")
        se = 2 * cg.std("repeat", ddof=1) / np.sqrt(cg.sizes["repeat"])
        lo, hi = cg.mean("repeat") - se, cg.mean("repeat") + se
        share = ds["top_draw_share"].sel(dataset=d)
        at = lambda lab, b, r=r: _med(r.sel(labels=lab, batch_size=b))  # noqa: E731
        ev.append(
            f"{d}: cos(Sh², H_GN) real vs sampled at B=1 {at('real', 1):.3f} vs "
            f"{at('sampled', 1):.3f}, at B={bm} {at('real', bm):.3f} vs {at('sampled', bm):.3f}; "
            f"gap sampled − real {g1:.3f} ± {2 * se1:.3f} → {gm:.3f} ± {2 * sem:.3f} ({way}); at "
            f"B={bm} by step {by_step}; steps > 0: {gl:.3f} ± {2 * sel:.3f}; per (step, layer) "
            f"cell at B={bm}: sampled better in {int((lo > 0).sum())}, real better in "
            f"{int((hi < 0).sum())} of {int(np.isfinite(cg.mean('repeat')).sum())} (beyond 2 SE); "
            f"largest 1 % of draws carry {_med(share.sel(labels='sampled')):.0%} of Σ‖g‖² "
            f"(sampled) vs {_med(share.sel(labels='real')):.0%} (real); real-label bias "
            f"‖E g‖²/E‖g‖² {_med(ds['mean_gradient_fraction'].sel(dataset=d, labels='real')):.3f} "
            "per unit B−1")  # fmt: skip
    verdict = judge(all(strong), any(strong) or all(weak)) if strong else FAILS
    return Outcome(verdict, "; ".join(ev) + f" [resampled statistic, M={ds.attrs['num_batches']}"
                   f" batches; medians over steps × layers; ± 2 Monte-Carlo standard errors over "
                   f"{ds.sizes['repeat']} repeats]")  # fmt: skip


# fmt: off
RULES = (
    Rule("P3-7", TestKind.PROXY, _p3_7, setting="small MLP/CNN layers (binary MNIST, sklearn "
         "digits); captured sampled-label draws (k per example) in place of fresh labels each "
         "step", tolerance=f"holds: for every dataset the exact batch expectation with sampled "
         f"labels loses ≤ {UNBIASED_TOL} cosine with H_GN from B=1 to the largest B in every "
         f"cell, and Shampoo² from M resampled sampled-label batches loses ≤ {BATCH_TOL} "
         "(median) at every B; partially: one of them for some dataset. The sampled draws are "
         "centred (E_y[g|x] = 0 exactly), so the first part is by construction (derived)"),
    Rule("P3-8", TestKind.PROXY, _p3_8, setting="a 16-unit MLP on binary MNIST (one of the "
         "paper's Fig. 3 datasets) and a CNN on sklearn digits (in place of CIFAR-5M / "
         "ImageNet); batches drawn with replacement from N captured examples (B ≤ N/2)",
         tolerance="holds: for every dataset the median gap cos(Sh²_sampled) − cos(Sh²_real) "
         f"at the largest B, less 2 Monte-Carlo standard errors, is ≥ {DEGRADE_TOL} and the gap"
         " is larger than at B=1; partially: so for some dataset, or a positive (beyond 2 SE) "
         "growing gap for all"),
)
# fmt: on


def verdicts(ds: xr.Dataset) -> list[Row]:
    return study.verdicts_from(ds, RULES)


# --------------------------------------------------------------------------------- plot
_COLORS = {"real": pl.OKABE_ITO["vermillion"], "sampled": pl.OKABE_ITO["blue"]}
_STYLES = {"resampled": "-", "groups": ":", "expected": "--"}
_SCHEME_LABEL = {"resampled": "M random batches", "groups": "consecutive groups (capture batch "
                 "target)", "expected": "M → ∞ over the captured draws (exact)"}  # fmt: skip


# fmt: off
def _panels(ds, var, title, ylabel):
    from matplotlib.lines import Line2D

    sets, n_layers = list(map(str, ds["dataset"].values)), ds.sizes["layer"]
    step = int(ds["step"][-1])
    bsz = ds["batch_size"].values
    fig, axes = pl.figure(n_layers, len(sets), panel=(3.4, 2.5 + 0.6 / n_layers))
    for (r, c), ax in np.ndenumerate(axes):
        d, sel = sets[c], dict(dataset=sets[c], step=step, layer=r)
        name = ds["layer_name"].sel(dataset=d, layer=r).item()
        if not name:
            ax.set_axis_off()
            continue
        for lab in LABELS:
            for sc in SCHEMES:
                ax.plot(bsz, ds[var].sel(**sel, labels=lab, scheme=sc), color=_COLORS[lab],
                        marker="os"[lab == "sampled"] if sc == "resampled" else None,
                        ls=_STYLES[sc], lw=1.6 if sc == "resampled" else 1.0, gid=f"{lab}:{sc}")
            mc = ds[f"{var}_mc"].sel(**sel, labels=lab)
            ax.fill_between(bsz, mc.min("repeat"), mc.max("repeat"), color=_COLORS[lab],
                            alpha=0.2, lw=0, gid=f"{lab}:band")
        missing = [int(b) for b in bsz if np.isnan(ds[var].sel(**sel, batch_size=b)).all()]
        if missing:  # drawn as missing, and said so
            ax.text(0.98, 0.04, "not measured (B > N/2): B = " + ", ".join(map(str, missing)),
                    transform=ax.transAxes, ha="right", fontsize=6, color="0.5", gid="missing")
        if var == "cos_shampoo2":
            ref = float(ds["ref_shampoo2_ggn"].sel(**sel))
            ax.axhline(ref, color="0.5", lw=1, ls="-.", gid="ref")
        ax.set_xscale("log", base=2)
        ax.set_xticks(bsz, [str(b) for b in bsz])
        ax.minorticks_off()
        rr, cc = (int(ds[k].sel(dataset=d, layer=r)) for k in ("layer_rows", "layer_cols"))
        ax.set(title=f"{d}\n{name} ({rr}×{cc})", xlabel="batch size B" if r == n_layers - 1 else "",
               ylabel=ylabel if c == 0 else "")
        ax.title.set_fontsize(8)
    handles = [Line2D([], [], color=_COLORS[lab], marker="os"[lab == "sampled"],
                      label=f"{lab} labels") for lab in LABELS]
    handles += [Line2D([], [], color="k", ls=_STYLES[sc], label=_SCHEME_LABEL[sc])
                for sc in SCHEMES]
    if var == "cos_shampoo2":
        handles.append(Line2D([], [], color="0.5", ls="-.", label="Shampoo² of the exact H_GN "
                              "(sampled labels' limit as k, M → ∞)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2)
    fig.suptitle(f"{title} (training step {step})\nband: min–max over n = "
                 f"{ds.sizes['repeat']} Monte-Carlo repeats of the M random batches")
    return fig
# fmt: on


def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """Shampoo²'s and the statistic's cosine with ``H_GN`` over the batch size."""
    with pl.style():
        figs = {
            f"{NAME}_shampoo2": _panels(ds, "cos_shampoo2", "Shampoo² from batch gradients vs "
                                        "H_GN: real vs sampled labels", "cos(Shampoo², H_GN)"),
            f"{NAME}_statistic": _panels(ds, "cos_statistic", "The batch statistic B·ḡḡᵀ itself "
                                         "vs H_GN", "cos(statistic, H_GN)"),
        }  # fmt: skip
    return study.save_figures(figs, figdir)
