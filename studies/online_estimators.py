"""KL-Shampoo's online estimation on real gradients (P1): P1-13, P1-19, P1-20, P1-41.

Streams of captured per-example gradients of a digits MLP, *stationary* (one captured step)
and *trajectory* (several, in training order), feed ``online.shampoo`` and
``online.kl_shampoo`` (``eigenvalues`` ``"ema"``, ``"instant"``, ``"eigh"``), in float32 as
the paper's code; ``online.score_stream`` scores each state's damped Kronecker member in
float64 against the step's damped batch KL optimum (every gap ≥ 0). P1-19 times whole
optimiser steps of KL-Shampoo and SOAP; P1-41 counts the optimisers' states.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

import precond_lab.optim as po
from precond_lab import online, study, timing
from precond_lab.study import FAILS, PARTIAL, Row, TestKind
from studies._setups import Capture

NAME = "online_estimators"
TITLE = "KL-Shampoo online: proximal EMA, QR refresh vs eigh, EMA eigenvalues (P1)"
STREAMS = ("stationary", "trajectory")


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """One run: ``capture``/``capture_step`` the stationary stream's source, ``trajectory``
    the non-stationary one's (each of its ``steps`` an equal segment), ``layers`` scored,
    ``stream_steps`` long, ``batch`` per-example gradients per step (with replacement),
    ``seeds`` streams, scored ``every`` steps; KL-Shampoo's refresh period ``frequency`` and
    EMA weight ``beta``; ``timing_sizes`` the ``n`` of the timed ``n×n`` optimiser steps over
    ``timing_repeats`` (≥ 5) rounds; ``λ = damping_rel·tr(Σ)/(mn)`` per layer."""

    capture: Capture
    capture_step: int
    trajectory: Capture
    layers: tuple[str, ...]
    stream_steps: int
    batch: int
    seeds: int
    every: int
    frequency: int
    beta: float
    timing_sizes: tuple[int, ...]
    timing_repeats: int
    damping_rel: float = 1e-3


_MNIST = (("hidden", (128,)),)
# fmt: off
PRESETS = {
    "test": Config(
        Capture("mlp", "digits", (20,), 64, ("gradients", "kfac")), 20,
        Capture("mlp", "digits", (5, 10, 20), 64, ("gradients",), ("layers/1/w",)),
        ("layers/1/w",), 30, 8, 2, 10, 5, 0.9, (16, 32), 5),
    "quick": Config(
        Capture("mlp", "digits", (100,), 512, ("gradients", "ggn-mc", "kfac"), mc_samples=4), 100,
        Capture("mlp", "digits", (20, 40, 60, 80, 100), 512, ("gradients",)),
        ("layers/1/w", "layers/0/w"), 300, 32, 2, 15, 10, 0.98, (64, 128, 256), 7),
    "full": Config(
        Capture("mlp", "mnist", (500,), 2048, ("gradients", "ggn-mc", "kfac"), mc_samples=4,
                model_options=_MNIST), 500,
        Capture("mlp", "mnist", (100, 200, 300, 400, 500), 2048, ("gradients",),
                model_options=_MNIST),
        ("layers/1/w", "layers/0/w"), 1000, 64, 4, 20, 10, 0.98, (256, 512, 1024, 2048), 9),
}
#: name: (KL-Shampoo's eigenvalue mode, or None for Shampoo²; label; Okabe–Ito colour; style)
VARIANTS = {
    "shampoo": (None, "Shampoo² (EMA)", "orange", ":"),
    "kl_shampoo": ("ema", "KL-Shampoo (QR, EMA λ)", "blue", "-"),
    "kl_shampoo_instant": ("instant", "KL-Shampoo (QR, instantaneous λ)", "vermillion", "--"),
    "kl_shampoo_eigh": ("eigh", "KL-Shampoo (eigh every step)", "bluish_green", "-."),
}
# fmt: on
#: Optimisers whose whole step is timed (P1-19) and whose state is counted (P1-41).
TIMED = ("kl_shampoo", "soap", "adamw")
MEMORY_ESTIMATORS = ("shampoo_grafted", "kl_shampoo", "soap", "kl_soap")
MEMORY_SHAPES = ((768, 768), (768, 3072))  # a GPT-2-small attention and MLP weight
# the rules' thresholds (each stated in its row's tolerance)
P113_GAP_FRACTION, P113_DECREASE_FRACTION = 0.2, 0.8  # late gap / initial; decreasing share
P119_COST, P119_REL_GAP, P119_COS = 1.5, 0.1, 0.02  # ×SOAP's step; QR vs eigh gap and cosine
P120_MARGIN = 0.05  # EMA's late KL gap < instantaneous's by ≥ 5 % of KL_opt
_SETTING = (
    "estimation only: online states scored against the batch KL optimum on streams of "
    "captured per-example gradients of a small MLP on digits, instead of LM training"
)


# fmt: off
OPTIMISERS = {  # name -> factory of the refresh period; grafted: + its grafting Adam's v
    "adamw": lambda t: po.adamw(1e-3), "soap": lambda t: po.soap(1e-3, frequency=t),
    "kl_shampoo": lambda t: po.kl_shampoo(1e-3, frequency=t),
    "kl_soap": lambda t: po.kl_soap(1e-3, frequency=t),
    "shampoo_grafted": lambda t: po.shampoo(1e-3, graft=True, frequency=t),
}
# fmt: on


def _plan(cfg: Config, stream: str) -> list[int]:
    steps = (cfg.capture_step,) if stream == "stationary" else cfg.trajectory.steps
    return online.segment_plan(steps, cfg.stream_steps)


def run(config: Config, **overrides) -> xr.Dataset:
    """Scores on ``(stream, layer, seed, variant, step)``, step times on ``(size, optimiser,
    repeat)``, state floats on ``(memory_estimator, memory_shape)``."""
    jax.config.update("jax_enable_x64", True)  # float64 scoring; the streams stay float32
    cfg, t_start = config.replace(**overrides), time.perf_counter()
    trees = {"stationary": study.cached_capture(**cfg.capture.kwargs())}
    trees["trajectory"] = study.cached_capture(**cfg.trajectory.kwargs())
    scored = sorted(set(range(0, cfg.stream_steps, cfg.every)) | {cfg.stream_steps - 1})

    @functools.cache
    def stream_of(stream, layer, seed):
        seed = 1000 * (1 + STREAMS.index(stream)) + seed
        return online.captured_stream(trees[stream], _plan(cfg, stream), layer, batch=cfg.batch,
                                      seed=seed, damping_rel=cfg.damping_rel)  # fmt: skip

    def cell(stream, layer, seed, variant):
        feed, refs, lam = stream_of(stream, layer, seed)
        mode, kw = VARIANTS[variant][0], dict(shampoo_beta=cfg.beta)
        est = online.shampoo(**kw) if mode is None else online.kl_shampoo(
            **kw, frequency=cfg.frequency, damping=lam, eigenvalues=mode)  # fmt: skip
        where = f"{stream} {layer} seed {seed} {variant}"
        res = online.score_stream(est, jnp.asarray(feed, jnp.float32), refs, scored, damping=lam,
                                  where=where)  # fmt: skip
        return {**res, "damping": lam, "layer_shape": "x".join(map(str, feed.shape[-2:]))}

    grid = {"stream": list(STREAMS), "layer": list(cfg.layers), "seed": range(cfg.seeds)}
    ds = study.grid({**grid, "variant": list(VARIANTS)}, cell, inner={"step": scored})
    ds["seed"] = np.arange(cfg.seeds)
    ds["kl_optimal_divergence"] = ds["kl_optimal"].isel(seed=0, variant=0, drop=True)
    ds["damping"] = ds["damping"].isel(variant=0, drop=True).mean("seed")
    ds["layer_shape"] = ds["layer_shape"].isel(stream=0, seed=0, variant=0, drop=True).astype(str)
    ds = ds.drop_vars("kl_optimal")
    ds["source_step"] = (("stream", "step"), [[_plan(cfg, s)[t] for t in scored] for s in STREAMS])
    opts = {k: OPTIMISERS[k](cfg.frequency) for k in TIMED}
    secs = [timing.optimiser_step_timings(opts, int(n), steps=cfg.frequency,
                                          repeats=cfg.timing_repeats)[0].seconds
            for n in cfg.timing_sizes]  # fmt: skip
    per_step = np.array([[t[k] for k in TIMED] for t in secs]) / cfg.frequency
    ds["step_seconds"] = (("size", "optimiser", "repeat"), per_step)
    shapes = [tuple(map(int, s.split("x"))) for s in ds["layer_shape"].values]
    mem_shapes = shapes + list(MEMORY_SHAPES)
    mem, params = (
        ("memory_estimator", "memory_shape"),
        [{"w": jax.ShapeDtypeStruct(s, jnp.float32)} for s in mem_shapes],
    )
    for var, field in (("state_floats", None), ("second_moment_floats", "nu")):  # Adam's v: nu
        count = [
            [po.init_size(OPTIMISERS[e](10), p, field).floats for p in params]
            for e in MEMORY_ESTIMATORS
        ]
        ds[var] = (mem, np.array(count))
    # fmt: off
    coords = {"size": list(cfg.timing_sizes), "optimiser": list(TIMED),
              "repeat": np.arange(cfg.timing_repeats), "memory_estimator": list(MEMORY_ESTIMATORS),
              "memory_shape": [f"{m}x{n}" for m, n in mem_shapes]}
    return study.dataset(
        ds.assign_coords(coords).data_vars, ds.coords, title=TITLE, name=NAME, config=cfg,
        presets=PRESETS, started=t_start,
        source=f"{cfg.capture.model}/{cfg.capture.dataset} capture",
        trajectory_steps=",".join(str(s) for s in cfg.trajectory.steps),
        stream_seeds="1000·(1 + stream index) + seed",
        damping_rule="lambda = damping_rel * mean tr(Sigma)/(m n) over the stream's steps",
        timing_device=str(jax.devices()[0].device_kind),
    )
    # fmt: on


# --------------------------------------------------------------------------------- plot
def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """KL gap and direction cosine per stream and layer; the per-step cost per size."""
    from precond_lab.plotting import OKABE_ITO, band, figure, legend, plot_timings, style

    figures, nl = {}, ds.sizes["layer"]
    with style():
        fig, axes = figure(4, nl, panel=(3.4, 2.2), sharex=True)
        for ist, stream in enumerate(ds.stream.values):
            switches = np.flatnonzero(np.diff(ds["source_step"].sel(stream=stream).values))
            for il, layer in enumerate(ds.layer.values):
                sel = dict(stream=stream, layer=layer)
                opt = ds["kl_optimal_divergence"].sel(**sel)  # the same steps' optimum
                ax_gap, ax_cos = axes[2 * ist, il], axes[2 * ist + 1, il]
                for v, (_, label, color, ls) in VARIANTS.items():
                    kw = dict(color=OKABE_ITO[color], ls=ls, label=label, lw=1.3)
                    one = ds.sel(**sel, variant=v)
                    band(ax_gap, ds.step, one["kl_gap"] / opt, "seed", positive=True, **kw)
                    band(ax_cos, ds.step, one["direction_cosine"], "seed", **kw)
                for k, ax in ((k, ax) for k in switches for ax in (ax_gap, ax_cos)):
                    ax.axvline(float(ds.step[k + 1]), color="0.75", lw=0.6, zorder=0)
                ax_gap.set_title(f"{stream}: {layer} ({ds['layer_shape'].sel(layer=layer).item()})")
                ax_gap.set(yscale="log", ylabel="KL gap / KL_opt")
                ax_cos.set_ylabel("direction cos (p = ½)")
        for ax in axes[-1]:
            ax.set_xlabel("stream step")
        fig.suptitle(
            f"line: mean, band: min–max over n = {ds.sizes['seed']} stream seeds; "
            "grey: the trajectory stream moves to the next captured step"
        )
        legend(fig, axes, ncols=2)
        figures[f"{NAME}_kl_gap"] = fig
        title = f"optimiser step on {ds.attrs['timing_device']}"
        figures[f"{NAME}_step_cost"] = plot_timings(ds["step_seconds"], title=title)
    return study.save_figures(figures, figdir)


# ----------------------------------------------------------------------------- verdicts
def _late(da: xr.DataArray, dims=("seed", "step")) -> xr.DataArray:
    """Mean over the last quarter of the scored steps (and the seeds)."""
    n = da.sizes["step"]
    return da.isel(step=slice(n - max(1, n // 4), None)).mean(dims)


def _rel(ds, variant, stream):
    """Late KL gap / KL_opt per layer (KL_opt of the same scored steps)."""
    sel = ds.sel(stream=stream)
    return _late(sel["kl_gap"].sel(variant=variant)) / _late(sel["kl_optimal_divergence"], "step")


def _cos(ds, variant, stream):
    return _late(ds["direction_cosine"].sel(variant=variant, stream=stream))


def _per_layer(ds, fmt, *arrays) -> str:
    """``fmt.format(layer, *values)`` joined over the layers."""
    rows = zip(ds.layer.values, *(np.asarray(a, float) for a in arrays), strict=True)
    return "; ".join(fmt.format(*row) for row in rows)


def _p1_13(ds) -> study.Outcome:
    st = ds.sel(stream="stationary")
    gap = st["kl_gap"].sel(variant="kl_shampoo")
    g0, late = gap.mean("seed").isel(step=0), _late(gap)
    frac, dec = late / g0.where(g0 > 0), (gap.mean("seed").diff("step") < 0).mean("step")
    ok = bool(((frac <= P113_GAP_FRACTION) & (dec >= P113_DECREASE_FRACTION)).all())
    text = _per_layer(
        ds,
        "{}: KL gap {:.3g} → {:.3g} ({:.1%} of initial), {:.0%} of intervals decrease; "
        "Shampoo² late gap {:.3g}; trajectory late gap/KL_opt {:.3f}",
        g0, late, frac, dec, _late(st["kl_gap"].sel(variant="shampoo")),
        _rel(ds, "kl_shampoo", "trajectory"),
    )  # fmt: skip
    a = ds.attrs
    return study.Outcome(
        study.judge(ok, bool((late < g0).any())),
        f"{text} ({ds.sizes['seed']} seeds, batch {a['config_batch']}, β={a['config_beta']}, "
        f"T={a['config_frequency']}).",
    )


def _p1_19(ds) -> study.Outcome:
    t = ds["step_seconds"]
    per_round = t.sel(optimiser="kl_shampoo") / t.sel(optimiser="soap")
    q = per_round.quantile([0.5, 0.25, 0.75], "repeat").transpose("size", "quantile").values
    words = [timing.ratio_verdict(timing.Ratio(*r, ()), P119_COST) for r in q]
    cost = ", ".join(
        f"n={int(s)}: {r[0]:.2f}× [{r[1]:.2f}–{r[2]:.2f}]"
        for s, r in zip(ds["size"].values, q, strict=True)
    )
    qr, eg = _rel(ds, "kl_shampoo", "stationary"), _rel(ds, "kl_shampoo_eigh", "stationary")
    cq, ce = _cos(ds, "kl_shampoo", "stationary"), _cos(ds, "kl_shampoo_eigh", "stationary")
    good = bool(np.all(qr - eg <= P119_REL_GAP) and np.all(ce - cq <= P119_COS))
    qual = _per_layer(ds, "{}: late gap/KL_opt QR {:.3f} vs eigh {:.3f}, cos {:.3f} vs {:.3f}",
                      qr, eg, cq, ce)  # fmt: skip
    cheap = all(w == "below" for w in words)
    verdict = study.judge(cheap and good, cheap or good)
    return study.Outcome(
        study.INCONCLUSIVE if "inconclusive" in words else verdict,
        f"KL-Shampoo/SOAP per-step time at T={ds.attrs['config_frequency']} on "
        f"{ds.attrs['timing_device']} (median [quartiles] of {ds.sizes['repeat']} interleaved "
        f"rounds): {cost}. Quality (stationary stream): {qual}.",
    )


def _p1_20_stream(ds, stream):
    ema, ins = _rel(ds, "kl_shampoo", stream), _rel(ds, "kl_shampoo_instant", stream)
    ce, ci = _cos(ds, "kl_shampoo", stream), _cos(ds, "kl_shampoo_instant", stream)
    text = _per_layer(
        ds, "{}: late gap/KL_opt EMA {:.3f} vs instantaneous {:.3f}, cos {:.3f} vs {:.3f}",
        ema, ins, ce, ci,
    )  # fmt: skip
    return (ins - ema).values >= P120_MARGIN, (ce - ci).values >= 0, text


def _p1_20(ds) -> study.Outcome:
    kl_t, dir_t, text_t = _p1_20_stream(ds, "trajectory")
    kl_s, dir_s, text_s = _p1_20_stream(ds, "stationary")
    verdict = study.judge(bool(np.all(kl_t) and np.all(dir_t)), bool(np.any(kl_t | dir_t)))
    if verdict == FAILS and np.any(kl_s | dir_s):
        verdict = PARTIAL
    steps = ds.attrs["trajectory_steps"]
    return study.Outcome(verdict, f"trajectory (steps {steps}): {text_t}. Stationary: {text_s}.")


def _p1_41(ds) -> study.Outcome:
    tab = ds[["state_floats", "second_moment_floats"]].astype(int).to_dataframe()
    shape = tab.index.get_level_values("memory_shape").str.split("x")
    mn = np.array([int(a) * int(b) for a, b in shape])
    nu, name = tab["second_moment_floats"].values, tab.index.get_level_values("memory_estimator")
    kept = name.isin(["soap", "shampoo_grafted"])  # the claim: these keep one, KL-Shampoo none
    ok = (nu[name == "kl_shampoo"] == 0).all() and (nu[kept] == mn[kept]).all()
    parts = "; ".join(f"{e} {x}: {t:,} ({v:,})" for (e, x), (t, v) in tab.iterrows())
    return study.Outcome(study.judge(bool(ok)), (
        f"floats in each optimiser's state (second moment), optim.state_size: {parts}. The "
        "official KL-Methods KLOpt and SOAP keep the same floats (SOAP: one scalar fewer, its "
        "bias correction is recomputed; tests/optim/test_official.py); grafted Shampoo is "
        "counted from our state only."))  # fmt: skip


_P119_SETTING = (
    "whole optimiser steps of one n×n weight on this CPU (the paper: GPU per-iteration "
    "runtime of LM training; on a GPU: `python benchmarks/bench_optim.py --sizes 1024 4096`); "
)
# fmt: off
RULES = (
    study.Rule("P1-13", TestKind.PROXY, _p1_13, setting=_SETTING, tolerance=(
        "gap = KL(Σ+λI‖A⊗B) of the damped Kronecker member minus the damped KL optimum's "
        f"(≥ 0). Holds if on the stationary stream the late gap (seed mean, last quarter) ≤ "
        f"{P113_GAP_FRACTION:.0%} of the initial gap and ≥ {P113_DECREASE_FRACTION:.0%} of "
        "scored intervals decrease, on every layer; partial if it only decreases.")),
    study.Rule("P1-19", TestKind.PROXY, _p1_19, setting=_P119_SETTING + _SETTING, tolerance=(
        f"holds if KL-Shampoo's per-step time is ≤ {P119_COST}× SOAP's (whole quartile range "
        "of the per-round ratio) at every size and the QR variant's late gap/KL_opt is within "
        f"{P119_REL_GAP} and its direction cosine within {P119_COS} of eigh-every-step on "
        "every layer; partial if one of the two; inconclusive if a ratio's quartiles straddle "
        f"{P119_COST}.")),
    study.Rule("P1-20", TestKind.PROXY, _p1_20, setting=_SETTING + "; P1 compares training "
        "losses", tolerance=(
        "decided on the trajectory stream: holds if on every layer the instantaneous "
        f"variant's late gap exceeds EMA's by ≥ {P120_MARGIN}·KL_opt and EMA's direction "
        "cosine is not lower; partial if so on some layer or one metric (on either stream).")),
    study.Rule("P1-41", TestKind.PAPER, _p1_41, tolerance=(
        "holds if at every shape KL-Shampoo's state has no second moment and SOAP's and "
        "grafted Shampoo's each hold one (m·n floats); a count, no training.")),
)
# fmt: on


def verdicts(ds: xr.Dataset) -> list[Row]:
    return study.verdicts_from(ds, RULES)
