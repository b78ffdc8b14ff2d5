"""Root vs root-free preconditioners on real gradients (P2, Lin et al. 2024); all proxies: one
step of a small digits MLP, not training (``docs/claims.md``).

* **P2-27** — ``B`` and ``s₀ = 1`` are essential (``online.step_scale_levels`` on real- and
  sampled-label mini-batch means, ``online.initialisation_response``).
* **P2-28** — ``S⁻¹g`` is closer to ``(H + λI)⁻¹g`` (``H`` the exact Gauss–Newton) than
  ``S^{-1/2}g`` (``metrics.direction_cosines``); the loss-scaling response is information.
* **P2-29** — IF-Shampoo driven by K-FAC factors (``online.kfac_if_shampoo``) reaches their
  damped Kronecker inverse (``reference.kfac_damped_flip_flop``): a fixed-point check.
P2-30 and P2-31 (half precision) are the study ``rootfree_precision``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import xarray as xr

from precond_lab import online, reference, schema, study
from precond_lab.claims import TestKind, claim
from precond_lab.study import Row
from studies._setups import Capture

NAME = "root_vs_rootfree"
TITLE = "Root vs root-free preconditioners: B-scaling, Newton view, bf16 stability, speed (P2)"
PAPER = claim("P2-27").paper_label  # "P2 Lin et al. 2024", from the claims registry


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """One run: P2-27 (``batch_sizes``, ``response_steps``, ``stream_seeds``, ``init_*``) on the
    first of ``layers``; P2-28 ``direction_batches`` of ``direction_batch`` examples; per layer
    ``λ = damping_rel·E‖G‖²/(mn)``; P2-29 ``kfac_steps``."""

    capture: Capture
    capture_step: int
    layers: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    response_steps: int
    direction_batches: int
    direction_batch: int
    kfac_steps: int
    damping_rel: float = 1e-3
    init_batch: int = 16
    init_beta2: float = 0.01
    loss_scales: tuple[float, ...] = (0.1, 10.0)
    stream_seeds: tuple[int, ...] = (0, 1, 2)


_TARGETS = ("gradients", "ggn", "ggn-mc", "kfac")
_L = ("layers/1/w", "layers/0/w")
# fmt: off
PRESETS = {
    "test": Config(
        Capture("mlp", "digits", (20,), 64, _TARGETS, mc_samples=2), 20, _L[:1], (1, 8), 40,
        4, 8, 100, stream_seeds=(0, 1)),
    "quick": Config(
        Capture("mlp", "digits", (100,), 512, _TARGETS, mc_samples=4), 100, _L, (1, 4, 16, 64),
        300, 16, 32, 400),
    "full": Config(
        Capture("mlp", "mnist", (500,), 2048, _TARGETS, mc_samples=4,
                model_options=(("hidden", (128,)),)), 500, _L, (1, 4, 16, 64, 256), 1000, 32, 64,
        1000),
}
# fmt: on

# Thresholds (restated in each verdict's tolerance).
P227_FLAT = 2.0  # with B: level ratio across B within [1/2, 2] (real labels)
P227_BLOWUP = 5.0  # s0=0: early max step ≥ 5× the late median step
P227_CALM = 1.5  # s0=1: early max step ≤ 1.5× the late median step
P229_COS = 0.99  # IF-Shampoo(K-FAC) vs damped K-FAC: cosine of the inverses ≥ 0.99
_COLOURS = ("blue", "vermillion", "bluish_green", "orange")  # Okabe–Ito names, drawing order


# ---------------------------------------------------------------------------------- run
# fmt: off
def _layer_arrays(node):
    """Real-label gradients, sampled-label pseudo-gradients, K-FAC inputs, the exact GGN."""
    g = np.asarray(schema.layer_samples(node, schema.Kind.GRADIENTS), np.float32)
    mc = np.asarray(schema.layer_samples(node, schema.Kind.GGN_MC), np.float32)  # (N, k, m, n)/√k
    sampled = (mc * np.sqrt(mc.shape[1])).reshape(-1, *mc.shape[2:])
    acts, backs = schema.layer_kfac_inputs(node, schema.Kind.GRADIENTS)
    ggn, w = schema.sample_bag(schema.layer_samples(node, schema.Kind.GGN), dtype="float32")
    return g, sampled, np.asarray(acts, np.float32), np.asarray(backs, np.float32), ggn, w


def _measure(cfg: Config, step_node):
    """``fn(layer)`` of ``study.grid``: every per-layer measurement (P2-27 on the first)."""
    from precond_lab import SampleTarget
    from precond_lab.estimators import kl_optimal, shampoo_squared
    from precond_lab.metrics import direction_cosines, loss_scaling_response
    from precond_lab.sweep import kron_cosine

    def fn(layer):
        g, sampled, acts, backs, ggn, w = _layer_arrays(step_node[layer])
        (m, n), il = g.shape[1:], cfg.layers.index(layer)
        lam = cfg.damping_rel * float(np.mean(np.sum(g * g, axis=(1, 2)))) / (m * n)
        out = {"layer_shape": f"{m}x{n}", "damping": lam}
        if il == 0:  # B responses on the first layer only (cost); seed 100·seed + label index
            lev = [[online.step_scale_levels(pool, cfg.batch_sizes, steps=cfg.response_steps,
                                             damping=lam, seed=100 * int(s) + i)
                    for i, pool in enumerate((sampled, g))] for s in cfg.stream_seeds]
            lev = xr.concat([xr.concat(row, "label") for row in lev], "seed")
            out["step_scale"] = lev.assign_coords(seed=list(cfg.stream_seeds),
                                                  label=["sampled", "real"])
        target, newton = SampleTarget(g), SampleTarget(ggn, w)
        idx = np.random.default_rng(il).integers(0, len(g), (cfg.direction_batches,
                                                             cfg.direction_batch))
        approx = {"kl_optimal": kl_optimal(target, damping=lam),
                  "shampoo_squared": (shampoo_squared(target), lam)}
        out["damping_newton"] = lam_h = cfg.damping_rel * float(newton.trace()) / (m * n)
        out["direction_cosine"] = direction_cosines(newton, g[idx].mean(1), approx, damping=lam_h)
        grad = g[: min(32, len(g))].mean(0)
        def sh2(s):  # Shampoo² with relative damping: homogeneous of degree 2 (loss scaling)
            return shampoo_squared(s, relative_damping=1e-3)
        r = [[loss_scaling_response(sh2, g, grad, c=c, p=p) for p in (0.5, 1.0)]
             for c in cfg.loss_scales]
        coords = {"loss_scale": list(cfg.loss_scales), "p": [0.5, 1.0]}
        for var, key in (("scaling_ratio", "norm_ratio"), ("scaling_predicted", "predicted")):
            out[var] = xr.DataArray([[x[key] for x in row] for row in r], coords, list(coords))
        kf = online.kfac_if_shampoo(acts, backs, damping=lam, steps=cfg.kfac_steps)
        so, si = reference.kfac_damped_flip_flop(kf.a_out, kf.a_in, lam)
        raw = [np.linalg.pinv(a + 1e-12 * np.eye(len(a))) for a in (kf.a_out, kf.a_in)]
        out["kfac_if_cosine"] = kron_cosine(np.linalg.inv(so), np.linalg.inv(si), kf.left, kf.right)
        out["kfac_if_residual"] = kf.residual
        out["kfac_if_cosine_undamped"] = kron_cosine(*raw, kf.left, kf.right)
        return out

    return fn


def run(config: Config, **overrides) -> xr.Dataset:
    """Measure P2-27..P2-31 on one captured step of real gradients (see the module doc)."""
    cfg, t_start = config.replace(**overrides), time.perf_counter()
    cap = cfg.capture
    step_node = study.cached_capture(**cap.kwargs())[schema.step_name(cfg.capture_step)]
    ds = study.grid({"layer": list(cfg.layers)}, _measure(cfg, step_node))
    g0 = _layer_arrays(step_node[cfg.layers[0]])[0]
    idx = np.random.default_rng(7).integers(0, len(g0), (cfg.response_steps, cfg.init_batch))
    init = online.initialisation_response(g0[idx].mean(1), (0.0, 1.0), beta2=cfg.init_beta2,
                                          batch_size=cfg.init_batch)
    ds["init_step_norm"] = (("s0", "init_step"), np.stack([init[0.0], init[1.0]]))
    ds = ds.assign_coords(s0=[0.0, 1.0], init_step=np.arange(cfg.response_steps))
    return study.dataset(
        ds.data_vars, ds.coords, title=TITLE, name=NAME, config=cfg, presets=PRESETS,
        started=t_start, source=f"{cap.model}/{cap.dataset} capture",
        damping_rule="lambda = damping_rel * E||G||^2/(m n) per layer; the Gauss-Newton "
        "reference of P2-28 is damped by damping_rel * tr H/(m n)",
        newton_reference="exact Gauss-Newton of the layer (capture target ggn)",
        sampled_labels="ggn_mc pseudo-gradients times sqrt(mc) (zero-mean per example)")
# fmt: on


# --------------------------------------------------------------------------------- plot
# fmt: off
def _figures(ds: xr.Dataset) -> dict:
    from precond_lab.plotting import OKABE_ITO, band, figure, style

    col, figures, layer0 = [OKABE_ITO[c] for c in _COLOURS], {}, ds.layer.values[0]
    with style():  # P2-27: step scale vs B (mean, band: min–max over seeds); s₀ response
        fig, axes = figure(1, 3, panel=(2.3, 2.9))
        for ax, meth in zip(axes[0, :2], ds.rf_method.values, strict=True):
            for i, (lab, bsc) in enumerate((a, b) for a in ds.label.values
                                           for b in ds.b_scaling.values):
                y = ds["step_scale"].sel(layer=layer0, label=lab, rf_method=meth, b_scaling=bsc)
                band(ax, ds.batch_size, y / y.isel(batch_size=0), "seed", color=col[i],
                     marker="os^v"[i], ls="-" if bsc == "with_B" else "--",
                     label=f"{lab} labels, {bsc.replace('_', ' ')}")
            ax.set(xscale="log", yscale="log", xlabel="batch size B",
                   ylabel="step scale / value at B=1")
            ax.set_title(f"{meth} ({layer0}), {ds.sizes['seed']} seeds", fontsize=7)
        axes[0, 0].legend(fontsize=5)
        ax = axes[0, 2]
        for i, s0 in enumerate(ds.s0.values):
            ax.semilogy(ds.init_step, ds["init_step_norm"].sel(s0=s0), color=col[i],
                        label=f"s₀ = {s0:g}")
        ax.set(xlabel="step", ylabel="‖g/(s+λ)‖ (RF-RMSProp)")
        ax.set_title(f"initialisation (B={ds.attrs['config_init_batch']}, one stream)", fontsize=7)
        ax.legend(fontsize=6)
        figures[f"{NAME}_batch_init"] = fig
        # P2-28: direction cosines to the damped Gauss–Newton direction, quartiles over batches
        fig, axes = figure(1, ds.sizes["layer"], panel=(3.3, 2.9))
        for ax, layer in zip(axes[0], ds.layer.values, strict=True):
            for i, est in enumerate(ds.estimator.values):
                c = ds["direction_cosine"].sel(layer=layer, estimator=est)
                c = c.stack(pair=("approx_power", "exact_power")).transpose("pair", "batch")
                q = np.quantile(c.values, [0.25, 0.5, 0.75], axis=1)
                ax.bar(np.arange(4) + (i - 0.5) * 0.38, q[1], 0.38, color=col[i], label=est,
                       yerr=[q[1] - q[0], q[2] - q[1]], capsize=2, error_kw={"linewidth": 0.8})
            ax.set_xticks(range(4), ["S^-½ vs H^-½", "S^-½ vs H^-1", "S^-1 vs H^-½",
                                     "S^-1 vs H^-1"], rotation=20, fontsize=6)
            ax.set(ylim=(0, 1), ylabel="cos to (H+λI)^-p g (Gauss–Newton)")
            ax.set_title(f"{layer} ({ds['layer_shape'].sel(layer=layer).item()}); median, "
                         f"quartiles over {ds.sizes['batch']} batches", fontsize=6)
        axes[0, 0].legend(fontsize=6)
        figures[f"{NAME}_directions"] = fig
    return figures
# fmt: on


def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """Step scale vs B and s₀; direction cosines."""
    return study.save_figures(_figures(ds), figdir)


# ----------------------------------------------------------------------------- verdicts
# fmt: off
def _fmt_seeds(da):
    """``median [min–max]`` over seeds of each remaining entry, joined by ``/``."""
    q = [np.ravel(f("seed").values) for f in (da.median, da.min, da.max)]
    return "/".join(f"{a:.2f} [{b:.2f}–{c:.2f}]" for a, b, c in zip(*q, strict=True))


def _p2_27(ds) -> study.Outcome:
    ss = ds["step_scale"].isel(layer=0)  # measured on the first layer only
    ratio = ss.isel(batch_size=-1) / ss.isel(batch_size=0)  # (seed, label, method, b_scaling)
    real = ratio.sel(label="real").median("seed")
    flat = bool(np.all(np.abs(np.log(real.sel(b_scaling="with_B"))) <= np.log(P227_FLAT)))
    drift = bool(np.all(real.sel(b_scaling="without_B") >= P227_FLAT))
    init, n = ds["init_step_norm"], ds.sizes["init_step"]
    early = init.isel(init_step=slice(0, max(1, n // 20))).max("init_step")
    r0, r1 = (early / init.isel(init_step=slice(n // 2, None)).median("init_step")).values
    parts = [f"{m} {lab}{' (secondary)' if lab == 'sampled' else ''}: with B "
             f"{_fmt_seeds(ratio.sel(rf_method=m, label=lab, b_scaling='with_B'))}, without "
             f"{_fmt_seeds(ratio.sel(rf_method=m, label=lab, b_scaling='without_B'))}"
             for lab in ("real", "sampled") for m in ds.rf_method.values]
    init_ok = r0 >= P227_BLOWUP and r1 <= P227_CALM
    return study.Outcome(study.judge(flat and drift and init_ok, flat or init_ok), (
        f"{ds.layer.values[0]}: step-scale ratio B={int(ds.batch_size[-1])} vs "
        f"B={int(ds.batch_size[0])}, median [min–max] over {ds.sizes['seed']} stream seeds: "
        + "; ".join(parts) + f". RF-RMSProp early-max/late-median step: s₀=0 {r0:.3g}, s₀=1 "
        f"{r1:.3g} (B={ds.attrs['config_init_batch']}, β₂={ds.attrs['config_init_beta2']})."))


def _p2_28(ds) -> study.Outcome:
    c = ds["direction_cosine"].sel(exact_power=1.0)
    rf, root = c.sel(approx_power=1.0), c.sel(approx_power=0.5)
    win, diff = (rf > root).mean("batch"), (rf - root).median("batch")  # (layer, estimator)
    parts = [f"{la} {e}: cos(S⁻¹g, H⁻¹g) {float(rf.sel(layer=la, estimator=e).median()):.3f} vs "
             f"cos(S^-½g, H⁻¹g) {float(root.sel(layer=la, estimator=e).median()):.3f} (root-free "
             f"closer on {float(win.sel(layer=la, estimator=e)):.0%} of {ds.sizes['batch']} "
             "batches)" for la in ds.layer.values for e in ds.estimator.values]
    r, dev = ds["scaling_ratio"], np.abs(ds["scaling_ratio"] / ds["scaling_predicted"] - 1.0)
    sc = "; ".join(f"c={float(cv):g}: root ×{float(r.sel(loss_scale=cv, p=0.5).mean()):.4g}, "
                   f"root-free ×{float(r.sel(loss_scale=cv, p=1.0).mean()):.4g} (pred. 1, "
                   f"{1 / float(cv):g})" for cv in ds.loss_scale.values)
    return study.Outcome(study.judge(bool(np.all(diff > 0)), bool(np.any(diff > 0))), (
        f"median over real-label mini-batches (B={ds.attrs['config_direction_batch']}), H = "
        "the layer's exact Gauss–Newton + λ_H I: " + "; ".join(parts) + ". Information: loss "
        f"scaling of real gradients (Shampoo², relative damping): {sc}; max deviation "
        f"{float(dev.max()):.2e} (exact check: P2-42)."))


def _p2_29(ds) -> study.Outcome:
    cos, res = ds["kfac_if_cosine"], ds["kfac_if_residual"]
    per = ", ".join(f"{la} {float(cos.sel(layer=la)):.4f} (residual ‖m_C‖ "
                    f"{float(res.sel(layer=la)):.1e})" for la in ds.layer.values)
    return study.Outcome(study.judge(False, bool(np.all(cos >= P229_COS))), (
        "IF-Shampoo's multiplicative update driven by K-FAC factors E[δδᵀ], E[aaᵀ]: "
        f"cos(CCᵀ⊗KKᵀ, damped K-FAC inverse) {per}. Only the fixed point is checked; no SINGD "
        "training run, so at most partial."))


RULES = (
    study.Rule("P2-27", TestKind.PROXY, _p2_27, tolerance=(
        f"holds if, with real labels (median over seeds), the step-scale ratio is within "
        f"×{P227_FLAT} with B and ≥ {P227_FLAT} without B for both methods, and s₀=0 gives an "
        f"early step ≥ {P227_BLOWUP}× the late median while s₀=1 stays ≤ {P227_CALM}×; partial "
        "if the B part or the s₀ part holds. Sampled labels (zero-mean, unbiased) are reported "
        "as the secondary case; real labels carry the (B−1)E[g]E[g]ᵀ bias.")),
    study.Rule("P2-28", TestKind.PROXY, _p2_28, tolerance=(
        "holds if on every layer and estimator the median over batches of cos(S⁻¹g, H⁻¹g) − "
        "cos(S^-½g, H⁻¹g) is > 0; partial if on some.")),
    study.Rule("P2-29", TestKind.PROXY, _p2_29, tolerance=(
        f"partial if cosine ≥ {P229_COS} on every layer (fixed-point check only); a full "
        "verdict needs optimiser runs with K-FAC curvature.")),
)
# fmt: on


def verdicts(ds: xr.Dataset) -> list[Row]:
    return study.verdicts_from(ds, RULES)
