"""KL-Shampoo's online estimation on real gradients (P1): P1-13, P1-19, P1-20, P1-41.

Streams of captured per-example gradients of a digits MLP: *stationary* (mini-batches of one
captured step) and *trajectory* (several captured steps, in training order). Each variant,
the library's ``online.shampoo`` and ``online.kl_shampoo`` with ``eigenvalues`` = ``"ema"``
(QR refresh), ``"instant"`` or ``"eigh"``, is scored by ``online.score_stream``: its float64
Kronecker member with the damping inside (``online.kronecker_member``) against the damped
batch KL optimum of the step's target, so every gap is ≥ 0 (``online.checked_gap``). The
streams and estimators run in float32 as the paper's code does. P1-19 times whole optimiser
steps (``timing.optimiser_step_timings``, interleaved rounds) of KL-Shampoo and SOAP at the
same refresh interval; P1-41 counts the optimisers' states (``optim.state_size``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from precond_lab import study, timing
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
# fmt: on

# fmt: off
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
P113_GAP_FRACTION = 0.2  # late KL gap ≤ 20 % of the initial gap
P113_DECREASE_FRACTION = 0.8  # ≥ 80 % of scored intervals decrease in the seed mean
P119_COST = 1.5  # KL-Shampoo's step ≤ 1.5 × SOAP's (whole quartile range), every size
P119_REL_GAP = 0.1  # QR variant's late KL gap within 10 % of KL_opt of eigh's
P119_COS = 0.02  # and direction cosine within 0.02
P120_MARGIN = 0.05  # EMA's late KL gap < instantaneous's by ≥ 5 % of KL_opt
_SETTING = (
    "estimation only: online states scored against the batch KL optimum on streams of "
    "captured per-example gradients of a small MLP on digits, instead of LM training"
)


def _optimiser(name: str, frequency: int = 10):
    import precond_lab.optim as po

    if name == "adamw":
        return po.adamw(1e-3)
    if name == "shampoo_grafted":  # Shampoo's factors plus its grafting Adam's v
        return po.shampoo(1e-3, graft=True, frequency=frequency)
    return getattr(po, name)(1e-3, frequency=frequency)


def _memory(shapes) -> tuple[np.ndarray, np.ndarray]:
    """``(total, second-moment)`` floats of each optimiser's state, ``(estimator, shape)``."""
    from precond_lab.optim import init_size

    params = [{"w": jax.ShapeDtypeStruct(shape, jnp.float32)} for shape in shapes]
    tab = np.array([[(init_size(_optimiser(e), p).floats, init_size(_optimiser(e), p, "nu").floats)
                     for p in params] for e in MEMORY_ESTIMATORS])  # fmt: skip
    return tab[..., 0], tab[..., 1]


def _plan(cfg: Config, stream: str) -> list[int]:
    """The captured step each stream step draws from (equal segments, in training order)."""
    if stream == "stationary":
        return [int(cfg.capture_step)] * cfg.stream_steps
    steps, k = list(cfg.trajectory.steps), len(cfg.trajectory.steps)
    return [int(steps[min(k - 1, t * k // cfg.stream_steps)]) for t in range(cfg.stream_steps)]


def run(config: Config, **overrides) -> xr.Dataset:
    """Score the four variants on both streams; time the optimiser steps; count states.

    Returns:
        Dims ``(stream, layer, seed, step, variant)`` for the scores, ``(size, optimiser,
        repeat)`` for the per-step times, ``(memory_estimator, memory_shape)`` for states.
    """
    from precond_lab import online

    jax.config.update("jax_enable_x64", True)  # float64 scoring; the streams stay float32
    cfg, t_start = config.replace(**overrides), time.perf_counter()
    trees = {"stationary": study.cached_capture(**cfg.capture.kwargs())}
    trees["trajectory"] = study.cached_capture(**cfg.trajectory.kwargs())
    scored = sorted(set(range(0, cfg.stream_steps, cfg.every)) | {cfg.stream_steps - 1})
    keys = ("kl_divergence", "kl_gap", "cosine_target", "direction_cosine")
    dims = ("stream", "layer", "seed", "step", "variant")
    shape = (len(STREAMS), len(cfg.layers), cfg.seeds, len(scored), len(VARIANTS))
    out = {k: np.full(shape, np.nan) for k in keys}
    kl_opt = np.full((len(STREAMS), len(cfg.layers), len(scored)), np.nan)
    lam_out, shapes = np.zeros((len(STREAMS), len(cfg.layers))), []
    for ist, stream in enumerate(STREAMS):
        for il, layer in enumerate(cfg.layers):
            for js in range(cfg.seeds):
                feed, refs, lam = online.captured_stream(
                    trees[stream], _plan(cfg, stream), layer, batch=cfg.batch,
                    seed=1000 * (1 + ist) + js, damping_rel=cfg.damping_rel,
                )  # fmt: skip
                for kv, name in enumerate(VARIANTS):
                    mode, kw = VARIANTS[name][0], dict(shampoo_beta=cfg.beta)
                    est = online.shampoo(**kw) if mode is None else online.kl_shampoo(
                        **kw, frequency=cfg.frequency, damping=lam, eigenvalues=mode)  # fmt: skip
                    res = online.score_stream(
                        est, jnp.asarray(feed, jnp.float32), refs, scored, damping=lam,
                        where=f"{stream} {layer} seed {js} {name}",
                    )  # fmt: skip
                    for k in keys:
                        out[k][ist, il, js, :, kv] = res[k]
            kl_opt[ist, il], lam_out[ist, il] = res["kl_optimal"], lam
            shapes += [f"{feed.shape[-2]}x{feed.shape[-1]}"] if ist == 0 else []
    per_step = []
    for size in cfg.timing_sizes:
        opts = {k: _optimiser(k, cfg.frequency) for k in TIMED}
        t, _ = timing.optimiser_step_timings(
            opts, int(size), steps=cfg.frequency, repeats=cfg.timing_repeats
        )
        per_step.append([np.asarray(t.seconds[k]) / cfg.frequency for k in TIMED])
    mem_shapes = [tuple(int(x) for x in sh.split("x")) for sh in shapes] + list(MEMORY_SHAPES)
    mem_total, mem_second = _memory(mem_shapes)
    data = {k: (dims, v) for k, v in out.items()}
    data |= {
        "kl_optimal_divergence": (("stream", "layer", "step"), kl_opt),
        "source_step": (("stream", "step"), [[_plan(cfg, s)[t] for t in scored] for s in STREAMS]),
        "damping": (("stream", "layer"), lam_out),
        "layer_shape": ("layer", shapes),
        "step_seconds": (("size", "optimiser", "repeat"), np.array(per_step)),
        "state_floats": (("memory_estimator", "memory_shape"), mem_total),
        "second_moment_floats": (("memory_estimator", "memory_shape"), mem_second),
    }
    # fmt: off
    coords = {
        "stream": list(STREAMS), "layer": list(cfg.layers), "seed": np.arange(cfg.seeds),
        "step": scored, "variant": list(VARIANTS), "size": list(cfg.timing_sizes),
        "optimiser": list(TIMED), "repeat": np.arange(cfg.timing_repeats),
        "memory_estimator": list(MEMORY_ESTIMATORS),
        "memory_shape": [f"{m}x{n}" for m, n in mem_shapes],
    }
    return study.dataset(
        data, coords, title=TITLE, name=NAME, config=cfg, presets=PRESETS, started=t_start,
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
    from precond_lab.plotting import OKABE_ITO, band, figure, legend, quartile_errorbar, style

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
        fig, axes = figure(1, 1, panel=(4.2, 3.2))
        ax, reps = axes[0, 0], ds.sizes["repeat"]
        for name, mk, col in zip(TIMED, "os^", ("blue", "vermillion", "0.4"), strict=True):
            quartile_errorbar(ax, ds["size"], ds["step_seconds"].sel(optimiser=name), "repeat",
                              fmt=mk + "-", color=OKABE_ITO.get(col, col), label=name)  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="weight n×n", ylabel="seconds per step")
        ax.set_xticks(ds["size"].values, [str(int(d)) for d in ds["size"].values])
        ax.minorticks_off()
        ax.set_title(f"optimiser step ({reps} interleaved rounds), {ds.attrs['timing_device']}")
        ax.legend()
        figures[f"{NAME}_step_cost"] = fig
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
    ok, parts = True, []
    for shape in ds["memory_shape"].values:
        m, n = (int(x) for x in str(shape).split("x"))
        cell = ds[["state_floats", "second_moment_floats"]].sel(memory_shape=shape)
        t, s = ({str(e): int(v) for e, v in zip(MEMORY_ESTIMATORS, cell[k].values, strict=True)}
                for k in ("state_floats", "second_moment_floats"))  # fmt: skip
        ok &= s["kl_shampoo"] == 0 and s["soap"] == m * n and s["shampoo_grafted"] == m * n
        parts.append(f"{shape}: " + ", ".join(f"{e} {t[e]:,} ({s[e]:,})" for e in t))
    return study.Outcome(
        study.judge(ok),
        "floats in each optimiser's state (second moment), optim.state_size on "
        "jax.eval_shape: " + "; ".join(parts) + ". The official KL-Methods KLOpt and SOAP keep "
        "the same floats (SOAP: one scalar fewer, its bias correction is recomputed; "
        "tests/optim/test_official.py); grafted Shampoo is counted from our state only.",
    )


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
