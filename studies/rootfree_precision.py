"""Root-free methods in half precision (P2, Lin et al. 2024): P2-30 and P2-31.

* **P2-30** — IF-Shampoo's inverse is stable in bf16, Shampoo's root-inverse is not: the
  precision harness (``linalg.precision_cases`` on synthetic SPD spectra,
  ``linalg.precision_on_matrices`` on real Shampoo factors ``L``, ``R`` of the captured digits
  MLP of ``root_vs_rootfree``); a run fails if not converged, non-finite or its error against
  the float64 truth of the rounded input exceeds 0.1 (``linalg.precision_failure_rate``).
* **P2-31** — one bf16 IF-Shampoo update vs one f32 ``eigh`` (``online.if_shampoo_timings``,
  interleaved rounds); not testable on a CPU (no bf16 units), where the numbers are context.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from precond_lab import online, schema, study, timing
from precond_lab.claims import TestKind
from precond_lab.errors import Status
from precond_lab.linalg import STATUS_CODES, precision_failure_rate
from precond_lab.study import FAILS, HOLDS, INCONCLUSIVE, NOT_TESTABLE_HERE, PARTIAL, Row
from studies._setups import Capture

NAME = "rootfree_precision"
TITLE = "Root-free methods in half precision: bf16 stability and speed (P2)"
PREC_METHODS = ("eigh", "eigh@float32", "newton", "newton_schulz", "if_shampoo")
TIMING_OPS = online.IF_TIMING_OPS


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """P2-30: synthetic ``conds`` × ``dims`` × ``repeats`` in ``dtypes`` at powers ``ps``, and
    the Shampoo factors of ``layers`` at ``capture_step`` whose size is in ``dims``; P2-31:
    ``timing_sizes`` over ``timing_repeats`` ≥ 5 interleaved rounds."""

    capture: Capture
    capture_step: int
    layers: tuple[str, ...]
    conds: tuple[float, ...]
    dims: tuple[int, ...]
    repeats: int
    timing_sizes: tuple[int, ...]
    timing_repeats: int
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")
    ps: tuple[float, ...] = (0.25, 0.5, 1.0)
    damping_rel: float = 1e-3


_TARGETS = ("gradients", "ggn", "ggn-mc", "kfac")  # root_vs_rootfree's capture (one store)
_L = ("layers/1/w", "layers/0/w")
# fmt: off
PRESETS = {
    "test": Config(Capture("mlp", "digits", (20,), 64, _TARGETS, mc_samples=2), 20, _L[:1],
                   (1e2, 1e5), (10,), 1, (16, 32), 5, ("float32", "bfloat16"), (0.25, 1.0)),
    "quick": Config(Capture("mlp", "digits", (100,), 512, _TARGETS, mc_samples=4), 100, _L,
                    (1e1, 1e3, 1e5), (32,), 3, (128, 256, 512), 7),
    "full": Config(Capture("mlp", "mnist", (500,), 2048, _TARGETS, mc_samples=4,
                           model_options=(("hidden", (128,)),)), 500, _L, (1e1, 1e3, 1e5, 1e7),
                   (32, 64, 128, 256, 1024), 3, (512, 1024, 2048, 4096), 9),
}
# fmt: on
P230_FAIL = 0.1  # IF-Shampoo bf16 failure rate ≤ 10 %
P230_GAP = 0.2  # Shampoo root-inverse (best bf16 matmul method) fails ≥ 20 points more,
P230_ERR = 3.0  # ... or has ≥ 3× the median error
P230_ERR_OK = 0.1  # a run counts as failed if not converged/finite or error > 0.1
P231_SPEEDUP = 2.0  # eigh f32 ≥ 2× one bf16 IF-Shampoo update at the largest size
OK = Status.OK.code
_COLOURS = ("blue", "vermillion", "bluish_green", "orange")  # Okabe–Ito names, drawing order


def run(config: Config, **overrides) -> xr.Dataset:
    """Failure rates and errors of the matrix functions; the half-precision timings."""
    from precond_lab.linalg import precision_cases, precision_on_matrices

    cfg, t_start = config.replace(**overrides), time.perf_counter()
    node = study.cached_capture(**cfg.capture.kwargs())[schema.step_name(cfg.capture_step)]
    factors = {}
    for layer in cfg.layers:
        g = np.asarray(schema.layer_samples(node[layer], schema.Kind.GRADIENTS), np.float64)
        for side, eq in (("L", "kij,klj->il"), ("R", "kij,kil->jl")):
            f = np.einsum(eq, g, g) / len(g)
            if f.shape[0] in cfg.dims:  # sizes shared with the synthetic run (compiles)
                factors[f"{layer}:{side}"] = f
    # fmt: off
    prec = {"real": precision_on_matrices(list(factors.values()), methods=PREC_METHODS,
                                          dtypes=cfg.dtypes, ps=cfg.ps, names=list(factors),
                                          relative_damping=cfg.damping_rel),
            "synthetic": precision_cases(PREC_METHODS, damping=1e-6, dtypes=cfg.dtypes,
                                         conds=cfg.conds, dims=cfg.dims, ps=cfg.ps,
                                         repeats=cfg.repeats)}
    rn = {"method": "prec_method", "p": "power", "matrix": "factor"}
    ds = xr.Dataset()
    for src, p in prec.items():
        p = p.rename({k: v for k, v in rn.items() if k in p.dims})
        ds[f"{src}_status"], ds[f"{src}_error"] = p["status"], p["rel_error_rounded_input"]
    ds["time_s"] = online.if_shampoo_timings(cfg.timing_sizes, cfg.timing_repeats)
    return study.dataset(
        ds.data_vars, ds.coords, title=TITLE, name=NAME, config=cfg, presets=PRESETS,
        started=t_start, source=f"{cfg.capture.model}/{cfg.capture.dataset} capture",
        precision_synthetic=f"conds {list(cfg.conds)}, dims {list(cfg.dims)}, repeats "
        f"{cfg.repeats}, damping 1e-6",
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
    """bf16/f16 failure rates (unsupported or not-run cells hatched below 0); timings."""
    from precond_lab.plotting import OKABE_ITO, figure, plot_timings, style

    col, figures = [OKABE_ITO[c] for c in _COLOURS], {}
    with style():
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
        figures[f"{NAME}_failures"] = fig
        # P2-31: timings, median and quartiles over the interleaved rounds
        t = ds["time_s"].sel(timing_op=list(TIMING_OPS[:4]))
        figures[f"{NAME}_timing"] = plot_timings(
            t, hue="timing_op", over="timing_round", xlabel="size d (d×d factors / gradient)",
            ylabel="seconds per call", title=str(ds.attrs.get("timing_device", "?")))
    return figures
# fmt: on


def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """The failure-rate and timing figures."""
    return study.save_figures(_figures(ds), figdir)


# ----------------------------------------------------------------------------- verdicts
# fmt: off
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
