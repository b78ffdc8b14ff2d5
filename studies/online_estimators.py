"""KL-Shampoo's online estimation on real gradients: proximal EMA, QR refresh, EMA eigenvalues.

Claims (theory.md B.2, recipe A.6):

* **P1-13** — the EMA factor updates are a stochastic proximal-gradient step on the KL
  objective: on a *stationary* stream (mini-batches of real per-example gradients drawn
  from one captured step) KL-Shampoo's ``KL(Σ+λI ‖ S+λI)`` should fall towards the batch
  KL optimum's, decreasing in expectation (averaged over stream seeds).
* **P1-19** — the QR eigenbasis refresh (one power step + QR every ``T`` steps) is cheaper
  than ``eigh`` and gives a preconditioner about as good as ``eigh`` every step.
* **P1-20** — the EMA of the eigenvalues matters: instantaneous estimates
  ``λ = diag(QᵀSQ)`` in the stale QR basis are worse.

Variants scored on the same streams (all share A.6's factor update; the library's
``precond_lab.online`` provides ``shampoo`` and ``kl_shampoo``, the other two are built
here from the documented recipe because the online module has no switch for them):

``shampoo``            Shampoo² ``L⊗R/trL`` (EMA, β as KL-Shampoo), the one-sided baseline
``kl_shampoo``         A.6: QR refresh every ``T``, eigenvalues by their own EMA
``kl_shampoo_instant`` same factors and QR basis, ``λ = diag(QᵀSQ)`` recomputed each step
``kl_shampoo_eigh``    same factor EMA, basis and eigenvalues from ``eigh(S)`` every step

Everything is scored as ``precond_lab.online.run_online`` scores (same metric calls).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax import lax

from precond_lab import schema
from precond_lab.provenance import make_attrs
from precond_lab.study import HOLDS, Verdict, judge
from studies._setups import Capture

NAME = "online_estimators"
TITLE = "KL-Shampoo online: proximal EMA, QR refresh vs eigh, EMA eigenvalues (P1)"
PAPER = "P1 Lin et al. 2025"


@dataclasses.dataclass(frozen=True)
class Config:
    """One run of the study.

    Attributes:
        capture: the captured run.
        capture_step: the captured step whose per-example gradients form the stream.
        layers: the layers scored.
        stream_steps: length of each stream.
        batch: per-example gradients per stream step (drawn with replacement).
        seeds: stream seeds.
        every: score every ``every``-th step (and the last).
        frequency: KL-Shampoo's QR refresh period ``T``.
        beta: the factor EMA weight ``β`` (all variants).
        timing_sizes: factor sizes of the eigh vs QR refresh timing.
        timing_repeats: repeats per timing (median).
        damping_rel: ``λ = damping_rel·tr(Σ)/(mn)`` per layer.
    """

    capture: Capture
    capture_step: int
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


PRESETS = {
    "test": Config(
        capture=Capture("mlp", "digits", (20,), 64, ("gradients", "kfac")),
        capture_step=20,
        layers=("layers/1/w",),
        stream_steps=40,
        batch=8,
        seeds=1,
        every=10,
        frequency=5,
        beta=0.9,
        timing_sizes=(16, 32),
        timing_repeats=2,
    ),
    "quick": Config(
        capture=Capture(
            "mlp", "digits", (100,), 512, ("gradients", "ggn-mc", "kfac"), mc_samples=4
        ),
        capture_step=100,
        layers=("layers/1/w", "layers/0/w"),
        stream_steps=300,
        batch=32,
        seeds=2,
        every=15,
        frequency=10,
        beta=0.98,
        timing_sizes=(64, 128, 256, 512),
        timing_repeats=5,
    ),
    "full": Config(
        capture=Capture(
            "mlp",
            "mnist",
            (500,),
            2048,
            ("gradients", "ggn-mc", "kfac"),
            mc_samples=4,
            model_options=(("hidden", (128,)),),
        ),
        capture_step=500,
        layers=("layers/1/w", "layers/0/w"),
        stream_steps=1000,
        batch=64,
        seeds=4,
        every=20,
        frequency=10,
        beta=0.98,
        timing_sizes=(256, 512, 1024, 2048, 4096),
        timing_repeats=5,
    ),
}

VARIANTS = ("shampoo", "kl_shampoo", "kl_shampoo_instant", "kl_shampoo_eigh")
LABELS = {
    "shampoo": "Shampoo² (EMA)",
    "kl_shampoo": "KL-Shampoo (QR, EMA λ)",
    "kl_shampoo_instant": "KL-Shampoo (QR, instantaneous λ)",
    "kl_shampoo_eigh": "KL-Shampoo (eigh every step)",
}
COLORS = {  # Okabe–Ito names (precond_lab.plotting.OKABE_ITO)
    "shampoo": "orange",
    "kl_shampoo": "blue",
    "kl_shampoo_instant": "vermillion",
    "kl_shampoo_eigh": "bluish_green",
}
STYLES = {"shampoo": ":", "kl_shampoo": "-", "kl_shampoo_instant": "--", "kl_shampoo_eigh": "-."}

# thresholds of the verdicts (stated in each verdict's tolerance)
P113_GAP_FRACTION = 0.2  # late KL gap ≤ 20 % of the initial gap
P113_DECREASE_FRACTION = 0.8  # ≥ 80 % of scored intervals decrease in the seed mean
P119_SPEEDUP = 1.5  # eigh ≥ 1.5× a QR refresh at the largest size
P119_REL_GAP = 0.1  # QR variant's late KL within 10 % of eigh's (relative to opt.)
P119_COS = 0.02  # and direction cosine within 0.02
P120_MARGIN = 0.05  # EMA's late KL gap < instantaneous's by ≥ 5 % of KL_opt


# ----------------------------------------------------------------------------- variants
def _clamp(lam, dim):
    cap = max(10.0, min(float(dim), 4000.0))  # the code's bound on λ^{-1/2} (A.6 step 5)
    return jnp.maximum(lam, 1.0 / cap**2)


def _eigh_desc(s):
    w, q = jnp.linalg.eigh(0.5 * (s + s.T))
    return w[::-1], q[:, ::-1]


def _kl_factor_step(state, g, beta):
    """A.6 step 4: both factors with the other's inverse from its eigen-approximation."""
    from precond_lab.online import batch_left, batch_right

    m, n = g.shape[-2:]
    qa, qb = state.left_basis, state.right_basis
    la, lb = state.left_values, state.right_values
    sb_inv = (qb / lb[None, :]) @ qb.T
    sa_inv = (qa / la[None, :]) @ qa.T
    sa = beta * state.left + (1 - beta) / n * batch_left(g, sb_inv)
    sb = beta * state.right + (1 - beta) / m * batch_right(g, sa_inv)
    return sa, sb


def _instant_values(state):
    """``λ = diag(QᵀSQ)`` in the state's basis, clamped as A.6 step 5 clamps."""
    m, n = state.left.shape[0], state.right.shape[0]
    la = _clamp(jnp.sum(state.left_basis * (state.left @ state.left_basis), axis=0), m)
    lb = _clamp(jnp.sum(state.right_basis * (state.right @ state.right_basis), axis=0), n)
    return state._replace(left_values=la, right_values=lb)


def kl_shampoo_instant(beta: float, frequency: int):
    """KL-Shampoo with A.6 step 5 replaced by ``λ = diag(QᵀSQ)`` in the (stale) QR basis.

    Args:
        beta: weight of the old factor.
        frequency: QR refresh period.

    Returns:
        An :class:`~precond_lab.online.OnlineEstimator` on
        :class:`~precond_lab.online.KLShampooState`.
    """
    from precond_lab.linalg import qr_refresh_step
    from precond_lab.online import OnlineEstimator, kl_shampoo

    base = kl_shampoo(beta=beta, frequency=frequency)
    beta, frequency = float(beta), int(frequency)

    def init(g0):
        return _instant_values(base.init(g0))

    @jax.jit
    def update(state, g):
        sa, sb = _kl_factor_step(state, g, beta)
        qa, qb = state.left_basis, state.right_basis
        step = state.step + 1
        if frequency > 0:
            refresh = step % frequency == 0
            qa = lax.cond(refresh, lambda: qr_refresh_step(sa, qa)[0], lambda: qa)
            qb = lax.cond(refresh, lambda: qr_refresh_step(sb, qb)[0], lambda: qb)
        st = state._replace(left=sa, right=sb, left_basis=qa, right_basis=qb, step=step)
        return _instant_values(st)

    return OnlineEstimator(init, update, base.approximation, base.power)


@jax.jit
def _eigh_refresh(state):
    m, n = state.left.shape[0], state.right.shape[0]
    wa, qa = _eigh_desc(state.left)
    wb, qb = _eigh_desc(state.right)
    return state._replace(
        left_basis=qa, right_basis=qb, left_values=_clamp(wa, m), right_values=_clamp(wb, n)
    )


def kl_shampoo_eigh(beta: float, frequency: int):
    """KL-Shampoo's factor EMA, with basis and eigenvalues from ``eigh`` every step.

    Args:
        beta: weight of the old factor.
        frequency: passed to the first step (as the other variants'); unused afterwards.

    Returns:
        An :class:`~precond_lab.online.OnlineEstimator` on
        :class:`~precond_lab.online.KLShampooState`.
    """
    from precond_lab.online import OnlineEstimator

    instant = kl_shampoo_instant(beta, frequency)
    beta = float(beta)

    def init(g0):
        return _eigh_refresh(instant.init(g0))

    @jax.jit
    def update(state, g):
        sa, sb = _kl_factor_step(state, g, beta)
        return _eigh_refresh(state._replace(left=sa, right=sb, step=state.step + 1))

    return OnlineEstimator(init, update, instant.approximation, instant.power)


def _variants(beta: float, frequency: int) -> dict:
    """name -> :class:`~precond_lab.online.OnlineEstimator`."""
    from precond_lab import online

    return {
        "shampoo": online.shampoo(beta=beta),
        "kl_shampoo": online.kl_shampoo(beta=beta, frequency=frequency),
        "kl_shampoo_instant": kl_shampoo_instant(beta, frequency),
        "kl_shampoo_eigh": kl_shampoo_eigh(beta, frequency),
    }


# ------------------------------------------------------------------------------- timing
def _time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best.append(time.perf_counter() - t0)
    return float(np.median(best))


def _refresh_costs(sizes, repeats: int, seed: int = 0):
    from precond_lab.linalg import qr_refresh_step, spd_with_spectrum

    eigh = jax.jit(lambda s: jnp.linalg.eigh(s))
    qr = jax.jit(qr_refresh_step)
    rng = np.random.default_rng(seed)
    t_eigh, t_qr = [], []
    for d in sizes:
        s, q, _ = spd_with_spectrum(int(d), 1e4, rng)
        s = jnp.asarray(s, jnp.float32)
        q0 = jnp.asarray(np.linalg.qr(q + 1e-2 * rng.standard_normal(q.shape))[0], jnp.float32)
        t_eigh.append(_time(eigh, s, repeats=repeats))
        t_qr.append(_time(qr, s, q0, repeats=repeats))
    return np.asarray(t_eigh), np.asarray(t_qr)


# ---------------------------------------------------------------------------------- run
def _preset_name(cfg: Config) -> str:
    return next((k for k, v in PRESETS.items() if v == cfg), "custom")


def run(config: Config, **overrides) -> xr.Dataset:
    """Score the four variants on stationary streams of real per-example gradients.

    Args:
        config: a :class:`Config` (e.g. ``PRESETS["quick"]``).
        **overrides: :class:`Config` fields to replace (``dataclasses.replace``), e.g.
            ``run(PRESETS["test"], seeds=2)``.

    Returns:
        Dataset with dims ``(layer, seed, step, variant)`` and the timing on ``size``.
    """
    from precond_lab import SampleTarget
    from precond_lab.estimators import kl_optimal
    from precond_lab.metrics import cosine_similarity, direction_quality, kl_divergence
    from precond_lab.study import cached_capture

    cfg = dataclasses.replace(config, **overrides) if overrides else config
    layers, stream_steps, batch, seeds = list(cfg.layers), cfg.stream_steps, cfg.batch, cfg.seeds
    every, frequency, beta, damping_rel = cfg.every, cfg.frequency, cfg.beta, cfg.damping_rel
    t_start = time.perf_counter()
    cap = cached_capture(**cfg.capture.kwargs())
    step_node = cap[schema.step_name(cfg.capture_step)]
    variants = _variants(beta, frequency)
    scored = sorted(set(range(0, stream_steps, every)) | {stream_steps - 1})
    seeds_ = range(seeds)
    shape = (len(layers), seeds, len(scored), len(VARIANTS))
    out = {
        k: np.full(shape, np.nan)
        for k in ("kl_divergence", "kl_gap", "cosine_target", "direction_cosine")
    }
    kl_opt = np.zeros(len(layers))
    lam_l = np.zeros(len(layers))
    shapes = []
    seconds = np.zeros((len(layers), len(VARIANTS)))
    for il, layer in enumerate(layers):
        node = step_node[layer]
        g_all = jnp.asarray(
            np.asarray(schema.layer_samples(node, schema.Kind.GRADIENTS)), jnp.float32
        )
        pool, m, n = g_all.shape
        shapes.append(f"{m}x{n}")
        target = SampleTarget(g_all)
        lam = damping_rel * float(target.trace()) / (m * n)
        lam_l[il] = lam
        spectrum = target.eigh(vectors=True)
        opt = kl_optimal(target, damping=lam)
        kl_opt[il] = float(kl_divergence(target, opt, damping=lam, approx_damping=0.0))
        for js in seeds_:
            idx = np.random.default_rng(1000 + js).integers(0, pool, size=(stream_steps, batch))
            feed = g_all[jnp.asarray(idx)]
            for kv, name in enumerate(VARIANTS):
                est = variants[name]
                t0 = time.perf_counter()
                state = est.init(feed[0])
                row = 0
                for t in range(stream_steps):
                    if t > 0:
                        state = est.update(state, feed[t])
                    if t not in scored:
                        continue
                    s = est.approximation(state)
                    kl = float(kl_divergence(target, s, damping=lam, approx_damping=lam))
                    i = (il, js, row, kv)
                    out["kl_divergence"][i] = kl
                    out["kl_gap"][i] = kl - kl_opt[il]
                    out["cosine_target"][i] = float(cosine_similarity(target, s))
                    q = direction_quality(  # S + λI against Σ + λI, as the KL above
                        target,
                        s,
                        feed[t].mean(0),
                        p=0.5,
                        damping=lam,
                        approx_damping=lam,
                        spectrum=spectrum,
                    )
                    out["direction_cosine"][i] = float(q.cosine)
                    row += 1
                seconds[il, kv] += time.perf_counter() - t0
    t_eigh, t_qr = _refresh_costs(cfg.timing_sizes, cfg.timing_repeats)
    dims = ("layer", "seed", "step", "variant")
    ds = xr.Dataset(
        {k: (dims, v) for k, v in out.items()},
        coords={
            "layer": list(layers),
            "seed": np.arange(seeds),
            "step": scored,
            "variant": list(VARIANTS),
            "size": list(cfg.timing_sizes),
        },
    )
    ds["kl_optimal_divergence"] = ("layer", kl_opt)
    ds["damping"] = ("layer", lam_l)
    ds["layer_shape"] = ("layer", shapes)
    ds["run_seconds"] = (("layer", "variant"), seconds)
    ds["eigh_seconds"] = ("size", t_eigh)
    ds["qr_refresh_seconds"] = ("size", t_qr)
    ds["kl_gap"].attrs["long_name"] = "KL(Σ+λI ‖ S+λI) − KL of the batch KL optimum"
    ds["direction_cosine"].attrs["long_name"] = "cos(S^{-1/2}ḡ_t, (Σ+λI)^{-1/2}ḡ_t)"
    capture = cfg.capture
    ds.attrs.update(
        make_attrs(
            TITLE,
            preset=_preset_name(cfg),
            source=f"{capture.model}/{capture.dataset} capture",
            study=NAME,
            model=capture.model,
            dataset=capture.dataset,
            capture_step=int(cfg.capture_step),
            num_samples=int(capture.num_samples),
            stream="i.i.d. mini-batches (with replacement) of per-example gradients "
            "from one captured step, fed as per-example batches",
            stream_seeds="1000 + seed",
            batch=int(batch),
            beta=float(beta),
            frequency=int(frequency),
            damping_rel=float(damping_rel),
            damping_rule="lambda = damping_rel * tr(Sigma)/(m n) per layer",
            timing="median wall-clock of jitted float32 eigh vs one power step + QR",
            timing_device=str(jax.devices()[0].device_kind),
            elapsed_s=float(time.perf_counter() - t_start),
        )
    )
    return ds


# --------------------------------------------------------------------------------- plot
def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """KL gap and direction cosine over the stream per layer; the refresh cost per size."""
    from precond_lab.plotting import OKABE_ITO, figure, legend, style
    from precond_lab.study import save_figures

    figures = {}
    with style():
        nl = ds.sizes["layer"]
        fig, axes = figure(2, nl, panel=(3.4, 2.6))
        for il, layer in enumerate(ds.layer.values):
            rel = ds["kl_gap"].isel(layer=il) / float(ds["kl_optimal_divergence"][il])
            for v in ds.variant.values:
                kw = dict(color=OKABE_ITO[COLORS[v]], ls=STYLES[v], label=LABELS[v], lw=1.4)
                y = rel.sel(variant=v).mean("seed")
                axes[0, il].plot(ds.step, np.maximum(y, 1e-4), **kw)
                c = ds["direction_cosine"].isel(layer=il).sel(variant=v).mean("seed")
                axes[1, il].plot(ds.step, c, **kw)
            shape = str(ds["layer_shape"].values[il])
            axes[0, il].set_title(f"{layer} ({shape})")
            axes[0, il].set_yscale("log")
            axes[0, il].set_ylabel("KL gap / KL of batch optimum")
            axes[1, il].set_ylabel("direction cosine (p = 1/2)")
            axes[1, il].set_xlabel("stream step")
        legend(fig, axes, ncols=2)
        figures[f"{NAME}_kl_gap"] = fig

        fig, axes = figure(1, 1, panel=(4.2, 3.2))
        ax = axes[0, 0]
        ax.loglog(
            ds["size"],
            ds["eigh_seconds"],
            "o-",
            color=OKABE_ITO["vermillion"],
            label="eigh (float32)",
        )
        ax.loglog(
            ds["size"],
            ds["qr_refresh_seconds"],
            "s--",
            color=OKABE_ITO["blue"],
            label="power step + QR",
        )
        ax.set_xlabel("factor size d")
        ax.set_ylabel("seconds per refresh (median)")
        ax.set_title(f"basis refresh cost on {ds.attrs.get('timing_device', '?')}")
        ax.legend()
        figures[f"{NAME}_refresh_cost"] = fig
    return save_figures(figures, figdir)


# ----------------------------------------------------------------------------- verdicts
def _late(da: xr.DataArray) -> xr.DataArray:
    """Mean over seeds and the last quarter of the scored steps."""
    n = da.sizes["step"]
    return da.isel(step=slice(n - max(1, n // 4), None)).mean(("seed", "step"))


def verdicts(ds: xr.Dataset) -> list[Verdict]:
    return [_p1_13(ds), _p1_19(ds), _p1_20(ds)]


def _p1_13(ds):
    gap = ds["kl_gap"].sel(variant="kl_shampoo").mean("seed")  # (layer, step)
    opt = ds["kl_optimal_divergence"]
    ok_all, partial_any, parts = True, False, []
    for il, layer in enumerate(ds.layer.values):
        g = gap.isel(layer=il).values
        g0 = g[0]
        late = float(_late(ds["kl_gap"].sel(variant="kl_shampoo").isel(layer=il)))
        frac = late / g0 if g0 > 0 else np.inf
        dec = float(np.mean(np.diff(g) < 0))
        sh_late = float(_late(ds["kl_gap"].sel(variant="shampoo").isel(layer=il)))
        ok = frac <= P113_GAP_FRACTION and dec >= P113_DECREASE_FRACTION
        ok_all &= ok
        partial_any |= late < g0
        parts.append(
            f"{layer}: KL gap {g0:.3g} → {late:.3g} (late mean; {100 * frac:.1f}% of initial, "
            f"{100 * late / float(opt[il]):.1f}% of KL_opt={float(opt[il]):.4g}); "
            f"{100 * dec:.0f}% of intervals decrease; Shampoo² late gap {sh_late:.3g}"
        )
    return Verdict(
        "P1-13",
        PAPER,
        "Claim 3 (Sec. 3, per papernotes)",
        "KL-Shampoo's EMA factor updates are a stochastic proximal-gradient step on the KL "
        "objective: on a stationary stream they approach the batch KL optimum.",
        judge(ok_all, partial_any),
        "; ".join(parts) + f" ({ds.sizes['seed']} stream seeds, batch {ds.attrs.get('batch')}, β="
        f"{ds.attrs.get('beta')}, T={ds.attrs.get('frequency')}).",
        f"holds if the late KL gap (seed mean, last quarter) ≤ {P113_GAP_FRACTION:.0%} of the "
        f"initial gap and ≥ {P113_DECREASE_FRACTION:.0%} of scored intervals decrease, on "
        "every layer; partial if it only decreases.",
    )


def _p1_19(ds):
    t_e, t_q = ds["eigh_seconds"].values, ds["qr_refresh_seconds"].values
    speed = t_e / t_q
    opt = ds["kl_optimal_divergence"]
    qr = _late(ds["kl_gap"].sel(variant="kl_shampoo")) / opt
    eg = _late(ds["kl_gap"].sel(variant="kl_shampoo_eigh")) / opt
    cq = _late(ds["direction_cosine"].sel(variant="kl_shampoo"))
    ce = _late(ds["direction_cosine"].sel(variant="kl_shampoo_eigh"))
    cheap = speed[-1] >= P119_SPEEDUP
    good = bool(np.all(qr - eg <= P119_REL_GAP) and np.all(ce - cq <= P119_COS))
    sizes = ", ".join(
        f"d={int(d)}: eigh {1e3 * a:.2f} ms vs QR {1e3 * b:.2f} ms ({a / b:.1f}×)"
        for d, a, b in zip(ds["size"].values, t_e, t_q, strict=True)
    )
    qual = "; ".join(
        f"{layer}: late KL gap/KL_opt QR {float(qr[i]):.3f} vs eigh {float(eg[i]):.3f}, "
        f"direction cos QR {float(cq[i]):.3f} vs eigh {float(ce[i]):.3f}"
        for i, layer in enumerate(ds.layer.values)
    )
    return Verdict(
        "P1-19",
        PAPER,
        "Abstract v7; Fig. 1",
        "A QR-based eigenbasis refresh (power step + QR every T) costs less than eigh and "
        "keeps KL-Shampoo's preconditioner as good as eigh every step.",
        judge(cheap and good, cheap or good),
        f"refresh cost on {ds.attrs.get('timing_device', '?')}: {sizes}. Quality: {qual}.",
        f"holds if eigh/QR time ≥ {P119_SPEEDUP}× at the largest size and the QR variant's late "
        f"KL gap/KL_opt is within {P119_REL_GAP} and its direction cosine within {P119_COS} of "
        "eigh-every-step on every layer; partial if only one of the two.",
    )


def _p1_20(ds):
    opt = ds["kl_optimal_divergence"]
    ema = _late(ds["kl_gap"].sel(variant="kl_shampoo")) / opt
    ins = _late(ds["kl_gap"].sel(variant="kl_shampoo_instant")) / opt
    ce = _late(ds["direction_cosine"].sel(variant="kl_shampoo"))
    ci = _late(ds["direction_cosine"].sel(variant="kl_shampoo_instant"))
    better_kl = (ins - ema).values >= P120_MARGIN
    better_dir = (ce - ci).values >= 0
    ok = bool(np.all(better_kl) and np.all(better_dir))
    parts = "; ".join(
        f"{layer}: late KL gap/KL_opt EMA {float(ema[i]):.3f} vs instantaneous "
        f"{float(ins[i]):.3f}; direction cos EMA {float(ce[i]):.3f} vs {float(ci[i]):.3f}"
        for i, layer in enumerate(ds.layer.values)
    )
    verdict = judge(ok, bool(np.any(better_kl) or np.any(better_dir)))
    note = (
        ""
        if verdict == HOLDS
        else " Instantaneous λ = diag(QᵀSQ) re-reads the whole accumulated factor in the "
        "current basis; on a stationary stream with a slowly rotating basis it does not lag."
    )
    return Verdict(
        "P1-20",
        PAPER,
        "Sec. on KL-Shampoo's eigenvalue estimation (per papernotes)",
        "KL-Shampoo's EMA eigenvalues are crucial: instantaneous estimates diag(QᵀSQ) in the "
        "stale QR basis give a worse preconditioner.",
        verdict,
        parts + "." + note,
        f"holds if on every layer the instantaneous variant's late KL gap exceeds EMA's by ≥ "
        f"{P120_MARGIN}·KL_opt and EMA's direction cosine is not lower; partial if on some "
        "layer or one metric.",
    )
