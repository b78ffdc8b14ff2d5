"""Root vs root-free preconditioners on real gradients (P2, Lin et al. 2024); all proxies: one
step of a small digits MLP, not training (``docs/claims.md``).

* **P2-27** — ``B`` and ``s₀ = 1`` are essential (``online.step_scale_levels`` on real- and
  sampled-label mini-batch means, ``online.initialisation_response``).
* **P2-28** — ``S⁻¹g`` is closer to ``(H + λI)⁻¹g`` (``H`` the exact Gauss–Newton) than
  ``S^{-1/2}g`` (``metrics.direction_cosines``); the loss-scaling response is information.
* **P2-29** — IF-Shampoo driven by K-FAC factors (``online.kfac_if_shampoo``) reaches their
  damped Kronecker inverse (``reference.kfac_damped_flip_flop``): a fixed-point check.
* **P2-30** — IF-Shampoo's inverse is stable in bf16, Shampoo's root-inverse is not
  (``linalg.precision_study`` on synthetic spectra, ``precision_on_matrices`` on real factors).
* **P2-31** — one bf16 IF-Shampoo update vs one f32 ``eigh`` (``online.if_shampoo_timings``);
  not testable on a CPU (no bf16 units), where the numbers are context.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from precond_lab import online, reference, schema, study, timing
from precond_lab.claims import TestKind, claim
from precond_lab.errors import Status
from precond_lab.linalg import STATUS_CODES, precision_failure_rate
from precond_lab.study import FAILS, HOLDS, INCONCLUSIVE, NOT_TESTABLE_HERE, PARTIAL, Row
from studies._setups import Capture

NAME = "root_vs_rootfree"
TITLE = "Root vs root-free preconditioners: B-scaling, Newton view, bf16 stability, speed (P2)"
PAPER = claim("P2-27").paper_label  # "P2 Lin et al. 2024", from the claims registry
PREC_METHODS = ("eigh", "eigh@float32", "newton", "newton_schulz", "if_shampoo")
TIMING_OPS = online.IF_TIMING_OPS


@dataclasses.dataclass(frozen=True)
class Precision:
    """P2-30: synthetic ``conds`` × ``dims`` × ``repeats`` (real factors of sizes in ``dims``)."""

    conds: tuple[float, ...]
    dims: tuple[int, ...]
    repeats: int
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")
    ps: tuple[float, ...] = (0.25, 0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """One run: P2-27 (``batch_sizes``, ``response_steps``, ``stream_seeds``, ``init_*``) on the
    first of ``layers``; P2-28 ``direction_batches`` of ``direction_batch`` examples; per layer
    ``λ = damping_rel·E‖G‖²/(mn)``; ``timing_repeats`` ≥ 5 interleaved rounds."""

    capture: Capture
    capture_step: int
    layers: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    response_steps: int
    direction_batches: int
    direction_batch: int
    precision: Precision
    timing_sizes: tuple[int, ...]
    timing_repeats: int
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
        4, 8, Precision((1e2, 1e5), (10,), 1, ("float32", "bfloat16"), (0.25, 1.0)), (16, 32), 5,
        100, stream_seeds=(0, 1)),
    "quick": Config(
        Capture("mlp", "digits", (100,), 512, _TARGETS, mc_samples=4), 100, _L, (1, 4, 16, 64),
        300, 16, 32, Precision((1e1, 1e3, 1e5), (32,), 3), (128, 256, 512), 7, 400),
    "full": Config(
        Capture("mlp", "mnist", (500,), 2048, _TARGETS, mc_samples=4,
                model_options=(("hidden", (128,)),)), 500, _L, (1, 4, 16, 64, 256), 1000, 32, 64,
        Precision((1e1, 1e3, 1e5, 1e7), (32, 64, 128, 256, 1024), 3), (512, 1024, 2048, 4096), 9,
        1000),
}
# fmt: on

# Thresholds (restated in each verdict's tolerance).
P227_FLAT = 2.0  # with B: level ratio across B within [1/2, 2] (real labels)
P227_BLOWUP = 5.0  # s0=0: early max step ≥ 5× the late median step
P227_CALM = 1.5  # s0=1: early max step ≤ 1.5× the late median step
P229_COS = 0.99  # IF-Shampoo(K-FAC) vs damped K-FAC: cosine of the inverses ≥ 0.99
P230_FAIL = 0.1  # IF-Shampoo bf16 failure rate ≤ 10 %
P230_GAP = 0.2  # Shampoo root-inverse (best bf16 matmul method) fails ≥ 20 points more,
P230_ERR = 3.0  # ... or has ≥ 3× the median error
P230_ERR_OK = 0.1  # a run counts as failed if not converged/finite or error > 0.1
P231_SPEEDUP = 2.0  # eigh f32 ≥ 2× one bf16 IF-Shampoo update at the largest size
OK = Status.OK.code
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


def _measure(cfg: Config, step_node, factors: dict):
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
        for side, eq in (("L", "kij,klj->il"), ("R", "kij,kil->jl")):
            f = np.einsum(eq, g, g)
            if f.shape[0] in cfg.precision.dims:  # sizes shared with the synthetic run
                factors[f"{layer}:{side}"] = (f / len(g)).astype(np.float64)
        return out

    return fn


def run(config: Config, **overrides) -> xr.Dataset:
    """Measure P2-27..P2-31 on one captured step of real gradients (see the module doc)."""
    from precond_lab.linalg import precision_cases, precision_on_matrices

    cfg, t_start = config.replace(**overrides), time.perf_counter()
    pr, cap = cfg.precision, cfg.capture
    step_node = study.cached_capture(**cap.kwargs())[schema.step_name(cfg.capture_step)]
    factors: dict = {}
    ds = study.grid({"layer": list(cfg.layers)}, _measure(cfg, step_node, factors))
    g0 = _layer_arrays(step_node[cfg.layers[0]])[0]
    idx = np.random.default_rng(7).integers(0, len(g0), (cfg.response_steps, cfg.init_batch))
    init = online.initialisation_response(g0[idx].mean(1), (0.0, 1.0), beta2=cfg.init_beta2,
                                          batch_size=cfg.init_batch)
    ds["init_step_norm"] = (("s0", "init_step"), np.stack([init[0.0], init[1.0]]))
    prec = {"real": precision_on_matrices(list(factors.values()), methods=PREC_METHODS,
                                          dtypes=pr.dtypes, ps=pr.ps, names=list(factors),
                                          relative_damping=cfg.damping_rel),
            "synthetic": precision_cases(PREC_METHODS, damping=1e-6, dtypes=pr.dtypes,
                                         conds=pr.conds, dims=pr.dims, ps=pr.ps,
                                         repeats=pr.repeats)}
    rn = {"method": "prec_method", "p": "power", "matrix": "factor"}
    for src, p in prec.items():
        p = p.rename({k: v for k, v in rn.items() if k in p.dims})
        ds[f"{src}_status"], ds[f"{src}_error"] = p["status"], p["rel_error_rounded_input"]
    ds["time_s"] = online.if_shampoo_timings(cfg.timing_sizes, cfg.timing_repeats)
    ds = ds.assign_coords(s0=[0.0, 1.0], init_step=np.arange(cfg.response_steps))
    return study.dataset(
        ds.data_vars, ds.coords, title=TITLE, name=NAME, config=cfg, presets=PRESETS,
        started=t_start, source=f"{cap.model}/{cap.dataset} capture",
        damping_rule="lambda = damping_rel * E||G||^2/(m n) per layer; the Gauss-Newton "
        "reference of P2-28 is damped by damping_rel * tr H/(m n)",
        newton_reference="exact Gauss-Newton of the layer (capture target ggn)",
        sampled_labels="ggn_mc pseudo-gradients times sqrt(mc) (zero-mean per example)",
        precision_synthetic=f"conds {list(pr.conds)}, dims {list(pr.dims)}, repeats "
        f"{pr.repeats}, damping 1e-6",
        precision_real="Shampoo factors L=E[GG^T], R=E[G^TG] scaled to trace 1, damping "
        "damping_rel/d", status_codes=", ".join(f"{k}={v}" for k, v in STATUS_CODES.items()),
        timing_device=str(jax.devices()[0].device_kind), timing_backend=jax.default_backend())
# fmt: on


# --------------------------------------------------------------------------------- plot
def _failure(status, err):
    """Failure rate over the last axis (``linalg.precision_failure_rate``, error > 0.1)."""
    return precision_failure_rate(status, err, P230_ERR_OK)


# fmt: off
def _figures(ds: xr.Dataset) -> dict:
    from precond_lab.plotting import OKABE_ITO, band, figure, plot_timings, style

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
        # P2-30: failure rates per dtype; unsupported / not-run cells hatched below 0, no value
        fig, axes = figure(1, 2, panel=(3.4, 3.0))
        nd = ds.sizes["dtype"]
        for ax, src in zip(axes[0], ("synthetic", "real"), strict=True):
            fr = _failure(ds[f"{src}_status"].values, ds[f"{src}_error"].values)
            cells = [(f"{m}\np={p:g}", fr[i, :, j]) for i, m in enumerate(ds.prec_method.values)
                     for j, p in enumerate(ds.power.values) if not np.all(np.isnan(fr[i, :, j]))]
            x, w = np.arange(len(cells)), 0.8 / nd
            for kd, dt in enumerate(ds.dtype.values):
                xs, v = x + (kd - (nd - 1) / 2) * w, np.array([c[1][kd] for c in cells])
                ok = ~np.isnan(v)
                ax.bar(xs[ok], v[ok], w, color=col[kd], label=dt)
                ax.scatter(xs[ok], v[ok], s=6, color=col[kd], zorder=3)  # 0 stays visible
                if np.any(~ok):
                    ax.bar(xs[~ok], 0.08, w, bottom=-0.1, facecolor="none", edgecolor=col[kd],
                           hatch="xxxx", linewidth=0.5, label=f"{dt}: unsupported / not run")
            ax.axhline(0.0, color="k", linewidth=0.6)
            ax.set_xticks(x, [c[0] for c in cells], rotation=60, fontsize=5)
            ax.set(ylim=(-0.12, 1.05), yticks=[0, 0.25, 0.5, 0.75, 1.0])
            ax.set_ylabel("failure rate (below 0: no value)", fontsize=7)
            n = ds.sizes["case" if src == "synthetic" else "factor"]
            ax.set_title(f"{src} SPD matrices ({n} per cell)", fontsize=7)
        axes[0, 0].legend(fontsize=5)
        figures[f"{NAME}_precision"] = fig
        # P2-31: timings, median and quartiles over the interleaved rounds
        t = ds["time_s"].sel(timing_op=list(TIMING_OPS[:4]))
        figures[f"{NAME}_timing"] = plot_timings(
            t, hue="timing_op", over="timing_round", xlabel="size d (d×d factors / gradient)",
            ylabel="seconds per call", title=str(ds.attrs.get("timing_device", "?")))
    return figures
# fmt: on


def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """Step scale vs B and s₀; direction cosines; bf16/f16 failure rates; timings."""
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


def _p2_30(ds) -> study.Outcome:
    st = np.concatenate([ds["synthetic_status"].values, ds["real_status"].values], axis=-1)
    er = np.concatenate([ds["synthetic_error"].values, ds["real_error"].values], axis=-1)
    fr = _failure(st, er)  # (method, dtype, power)
    with warnings.catch_warnings():  # a method that failed everywhere has no median: NaN
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        med = np.nanmedian(np.where(st == OK, er, np.nan), axis=-1)
    meths, powers, dts = list(ds.prec_method.values), list(ds.power.values), list(ds.dtype.values)
    kd, i_if, p1 = dts.index("bfloat16"), meths.index("if_shampoo"), powers.index(1.0)
    f_if, e_if = fr[i_if, kd, p1], med[i_if, kd, p1]
    eigh = ds["synthetic_status"].sel(prec_method="eigh", dtype="bfloat16").values
    eigh_unsupported = bool(np.any(eigh == Status.UNSUPPORTED_DTYPE.code) and np.all(eigh != OK))
    cands = [(m, p, fr[meths.index(m), kd, powers.index(p)], med[meths.index(m), kd,
              powers.index(p)]) for m in ("newton", "newton_schulz") for p in (0.25, 0.5)
             if p in powers]  # Shampoo's root-inverses by the matmul-only bf16 methods
    best = min((c for c in cands if not np.isnan(c[2])), key=lambda c: (c[2], c[3]), default=None)
    if_ok = f_if <= P230_FAIL
    sh_bad = best is None or best[2] >= f_if + P230_GAP or best[3] >= P230_ERR * e_if
    sh_txt = ("no bf16 root-inverse method ran" if best is None else f"best Shampoo root-"
              f"inverse in bf16: {best[0]} p={best[1]:g} failure {best[2]:.0%}, median error "
              f"{best[3]:.3g}")
    f16 = f"{fr[i_if, dts.index('float16'), p1]:.0%}" if "float16" in dts else "not run"
    up = fr[meths.index("eigh@float32"), kd, powers.index(0.25)]
    return study.Outcome(study.judge(if_ok and sh_bad and eigh_unsupported, if_ok), (
        f"IF-Shampoo inverse in bf16: failure {f_if:.0%}, median error {e_if:.3g}; {sh_txt}; eigh "
        f"in bf16 {'unsupported by JAX (CPU)' if eigh_unsupported else 'ran'}; upcast "
        f"eigh@float32 p=1/4 failure {up:.0%}. Float16: IF-Shampoo failure {f16}. Pooled over "
        f"synthetic spectra ({ds.attrs.get('precision_synthetic')}) and {ds.sizes['factor']} "
        "real Shampoo factors."))


def _ratio(t, a, b):
    sec = {k: t.sel(timing_op=k).values.tolist() for k in (a, b)}
    return timing.ratio(timing.Timings(seconds=sec, warmup={a: [], b: []}), a, b)


def _p2_31(ds, cpu: bool):
    """Per-round ratios; a verdict only where their spread clears the threshold, and only on
    an accelerator (``cpu``: the not-testable rule, with the CPU numbers as context)."""
    if (ds.attrs.get("timing_backend") == "cpu") != cpu:
        return None
    t, dev = ds["time_s"], ds.attrs.get("timing_device", "?")
    r, half = (_ratio(t.isel(size=-1), a, "if_update_bf16") for a in ("eigh_f32", "if_update_f32"))
    speed, gain = timing.ratio_verdict(r, P231_SPEEDUP), timing.ratio_verdict(half, 1.0)
    q = (t.quantile([0.5, 0.25, 0.75], "timing_round") * 1e3).transpose("size", "timing_op", ...)
    rows = ", ".join(f"d={int(d)}: eigh {e[0]:.2f} ms [{e[1]:.2f}–{e[2]:.2f}], IF bf16 {b[0]:.2f} "
                     f"ms, IF f32 {f[0]:.2f} ms, bf16 matmul {mm[0]:.2f} ms" for d, (e, b, f, mm, _)
                     in zip(ds["size"].values, q.values, strict=True))
    ev = (f"device {dev}, {ds.sizes['timing_round']} interleaved rounds (median [quartiles]): "
          f"{rows}; per-round eigh_f32/IF_bf16 at d={int(ds['size'][-1])}: {r} ({speed} "
          f"{P231_SPEEDUP:g}×); IF_f32/IF_bf16: {half} ({gain} 1×).")
    if cpu:
        return NOT_TESTABLE_HERE, (
            "not testable on a CPU: bfloat16 matmuls are emulated there (no bf16 units), while "
            "the claim (eigh f32 ≈ 16× a bf16 matmul, README) is about GPUs. CPU numbers as "
            "context only: " + ev)
    verdict = {"inconclusive": INCONCLUSIVE, "below": FAILS}.get(
        speed, HOLDS if gain == "above" else PARTIAL)
    return study.Outcome(verdict, ev, setting=f"single-operation timings on {dev}, not end-to-end "
                         "training")


_P231_TOL = (
    f"on an accelerator: holds if the per-round ratio eigh_f32/IF_bf16 has its quartiles ≥ "
    f"{P231_SPEEDUP}× at the largest size and IF_f32/IF_bf16 ≥ 1; does not hold if they lie "
    f"below {P231_SPEEDUP}×; inconclusive if the spread straddles it; partial if only the "
    "speed-up holds")
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
    study.Rule("P2-30", TestKind.PROXY, _p2_30, tolerance=(
        f"a run fails if not converged, non-finite or error > {P230_ERR_OK} (vs float64 truth "
        "of the rounded input; inputs not SPD once rounded are excluded); holds if IF-Shampoo "
        f"fails ≤ {P230_FAIL:.0%} in bf16, eigh is unsupported, and the best bf16 root-inverse "
        f"fails ≥ {P230_GAP:.0%} more or has ≥ {P230_ERR}× the error; partial if only "
        "IF-Shampoo's stability holds.")),
    study.Rule("P2-31", TestKind.NOT_TESTABLE, lambda ds: _p2_31(ds, True), tolerance=_P231_TOL),
    study.Rule("P2-31", TestKind.PROXY, lambda ds: _p2_31(ds, False), tolerance=_P231_TOL),
)
# fmt: on


def verdicts(ds: xr.Dataset) -> list[Row]:
    return study.verdicts_from(ds, RULES)
