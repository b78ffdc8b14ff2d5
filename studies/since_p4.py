"""The field since the papers: Clarifying Shampoo, PSGD-Kron, SPlus, Pro-KLShampoo (float64).

P5-45 one-gradient Shampoo (``methods.one_gradient_shampoo``) against the SVD polar factor on
Gaussian and captured gradients; P5-46 instantaneous KL-Shampoo's direction as the damping →
0; P6-50 PSGD's criterion against ``½·B_½(C, P⁻²) + 2 tr C^½``; P6-51 online PSGD-Kron's
fixed point per whitening (``online.run_full_batch``); P6-52 ``optim.cached_root_probe``;
P9-65/66 ``spike_profile`` and ``heldout.flat_tail_errors`` of captured layers' KL fits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import xarray as xr

from precond_lab import claims, study
from studies._setups import Capture

NAME = "since_p4"
TITLE = "The field since the papers: Clarifying Shampoo, PSGD-Kron, SPlus, Pro-KLShampoo"

EXACT = 1e-10  # exact identities in float64
FIXED_POINT = 1e-8  # PSGD-Kron's full-batch fixed point (measured ~1e-14 after 1000 steps)
SEPARATION = 10.0  # the other optimum must be at least this many times farther away
AMPLIFY = 1e4  # Shampoo's cached roots amplify the unseen gradient at least this much
FIRST_ORDER = 10.0  # P5-46: error ≤ this × λ/σ_min² (first order in the damping)
SPIKE_MAX_FRACTION, TAIL_CV_MAX = 0.25, 0.5  # P9-65: spikes ≤ d/4, tail CV ≤ 0.5 (ours)
KL_EXCESS_MAX, RANK_MAX_FRACTION = 0.05, 0.25  # P9-66: ≤ 5 % excess KL at some r ≤ d/4 (ours)
PROBE, P9 = ("splus", "shampoo", "unseen", "bound"), ("P9-65", "P9-66")
P6_52_PART = (
    "The bounded-update part: SPlus's update stays within 2√(mn)/(m+n) where Shampoo's "
    "long-cached roots amplify a gradient in directions they never saw (training not tested)."
)


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """One run.

    Attributes:
        shapes: ``(m, n)`` of the Gaussian matrices (P5-45, P5-46, P6-50).
        seeds: seeds of the Gaussian matrices.
        dampings: relative dampings ``λ/(‖G‖²/(mn))`` of P5-46, descending.
        capture: captured digits-MLP gradients (P5-45, P9), or None.
        per_example: per-example gradients per layer in P5-45; batch: mini-batch size.
        psgd: ``(m, n, samples, steps)`` of P6-51's stationary set and full-batch run.
        probe: ``(m, n, seen_steps)`` of P6-52's probe.
        fit_damping: ``λ = fit_damping·trΣ/(mn)`` of the KL fits of captured layers (P9).
        ranks: the ``r`` of P9-66.
    """

    shapes: tuple[tuple[int, int], ...] = ((4, 4), (3, 5))
    seeds: tuple[int, ...] = (0,)
    dampings: tuple[float, ...] = (1e-2, 1e-4, 1e-6)
    capture: Capture | None = None
    per_example: int = 2
    batch: int = 32
    psgd: tuple[int, int, int, int] = (4, 6, 200, 300)
    probe: tuple[int, int, int] = (6, 6, 20)
    fit_damping: float = 1e-3
    ranks: tuple[int, ...] = (0, 1, 2, 4, 8)


_MLP = Capture("mlp", "digits", steps=(100,), num_samples=128, targets=("gradients",),
               layers=("layers/0/w", "layers/1/w"), model_options=(("hidden", (16,)),),
               dtype="float64")  # fmt: skip
_DAMPINGS, _RANKS = tuple(10.0**-k for k in range(1, 9)), (0, 1, 2, 4, 8, 16, 32)
# fmt: off
PRESETS = {
    "test": Config(capture=dataclasses.replace(_MLP, steps=(5,), num_samples=16,
                                               layers=("layers/1/w",))),
    "quick": Config(shapes=((6, 6), (4, 7), (8, 5)), seeds=(0,), dampings=_DAMPINGS, capture=_MLP,
                    psgd=(4, 6, 2000, 1000), probe=(6, 6, 50), ranks=_RANKS),
    "full": Config(shapes=((6, 6), (4, 7), (8, 5), (16, 16), (12, 20), (24, 10)), seeds=(0, 1, 2),
                   dampings=_DAMPINGS, capture=dataclasses.replace(_MLP, steps=(0, 100, 500),
                                                                  num_samples=256),
                   psgd=(4, 6, 2000, 2000), probe=(8, 8, 100), ranks=_RANKS),
}
# fmt: on


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _unit(x) -> np.ndarray:
    return np.asarray(x) / np.linalg.norm(np.asarray(x))


def _gaussians(config):
    for seed in config.seeds:
        for m, n in config.shapes:
            yield f"gauss {m}x{n} s{seed}", np.random.default_rng(seed).standard_normal((m, n))


def _captured(config):
    """``(label, step, layer, per-example bag)`` of the captured layers."""
    from precond_lab.study import capture_targets

    if config.capture is None:
        return []
    return [
        (f"step {s} {lay}", s, lay, a)
        for s, lay, _, a, _ in capture_targets(config.capture.kwargs())
    ]


def run(config: Config, **overrides) -> xr.Dataset:
    """Every row's measurements (float64)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import precond_lab.optim as po
    from precond_lab import estimators as est
    from precond_lab import online
    from precond_lab import reference as ref
    from precond_lab.heldout import flat_tail_errors
    from precond_lab.methods import one_gradient_shampoo, polar_factor

    config = dataclasses.replace(config, **overrides)
    captured = _captured(config)
    # P5-45: random and captured (per-example, mini-batch and full-batch means)
    mats = list(_gaussians(config))
    for label, _, _, bag in captured:
        mats += [(f"{label} example {i}", bag[i]) for i in range(config.per_example)]
        mats += [(f"{label} batch {config.batch}", bag[: config.batch].mean(0))]
        mats += [(f"{label} mean {len(bag)}", bag.mean(0))]
    polar = [_rel(one_gradient_shampoo(g), polar_factor(g)) for _, g in mats]
    # P5-46: the normalised instantaneous-KL direction against the polar factor
    kl_err, kl_first, kl_conv = [], [], []
    for _, g in _gaussians(config):
        s_min2 = np.linalg.svd(g, compute_uv=False)[-1] ** 2
        row = [est.instantaneous_kl_direction(g, d, max_iter=2000) for d in config.dampings]
        kl_err.append([np.linalg.norm(_unit(x) - _unit(polar_factor(g))) for x, _ in row])
        kl_conv.append([bool(f.info.converged) for _, f in row])
        kl_first.append([d * np.sum(g * g) / g.size / s_min2 for d in config.dampings])
    # P6-50: the whitening criterion as half the SQ Bregman divergence (Kronecker P)
    crit = []
    for i, (_, g) in enumerate(_gaussians(config)):
        m, n = g.shape
        rng = np.random.default_rng(1000 + i)
        x = rng.standard_normal((m * n, 3 * m * n))
        c = x @ x.T / x.shape[1]
        pa, pb = (
            y @ y.T + 0.5 * np.eye(len(y)) for y in (rng.standard_normal((k, k)) for k in (m, n))
        )
        p = np.kron(pa, pb)
        want = 0.5 * ref.bregman_divergence(c, ref.psd_power(p, -2.0), 0.5) + 2 * np.trace(
            ref.psd_power(c, 0.5)
        )
        crit.append(abs(ref.psgd_whitening_criterion(c, p) - want) / abs(want))
    # P6-51: PSGD-Kron's full-batch fixed point against the KL and SQ optima
    m, n, samples, steps = config.psgd
    stream = online.stationary_set(m, n, samples, seed=0)
    optima = {
        q: np.asarray(est.bregman_optimal(stream, q, tol=1e-14).to_dense()) for q in (0.0, 0.5)
    }
    psgd = [
        [
            _rel(
                online.run_full_batch(
                    online.psgd_kron(lr_preconditioner=0.5, damping=0.0, whitening=w), stream, steps
                ).to_dense(),
                optima[q],
            )
            for q in (0.0, 0.5)
        ]
        for w in ("partial", "criterion")
    ]
    # P6-52: SPlus's bounded update vs Shampoo's cached roots
    probe = po.cached_root_probe(*config.probe[:2], seen_steps=config.probe[2])
    # P9-65/66: spikes and flat tails of kl_optimal's factors of captured layers
    spikes, cv, dims, excess, gain = [], [], [], [], []
    for _, _, _, bag in captured:
        m, n = bag.shape[1:]
        lam = config.fit_damping * float(np.sum(bag**2)) / len(bag) / (m * n)
        fit = est.kl_optimal(bag, damping=lam)
        prof = [est.spike_profile(f) for f in (fit.left, fit.right)]
        spikes.append([p.spikes for p in prof])
        cv.append([p.tail_cv for p in prof])
        dims.append([m, n])
        errs = flat_tail_errors(bag, list(config.ranks), damping=lam, fit=fit)
        excess.append(errs["kl_excess_relative"].values)
        gain.append(errs["gain_error_max"].values)
    names = [c[0] for c in captured]
    return xr.Dataset(
        {
            "polar_error": ("matrix", np.asarray(polar)),
            "kl_polar_error": (("gauss", "damping"), np.asarray(kl_err)),
            "kl_first_order": (("gauss", "damping"), np.asarray(kl_first)),
            "kl_converged": (("gauss", "damping"), np.asarray(kl_conv, np.int8)),
            "criterion_error": ("gauss", np.asarray(crit)),
            "psgd_distance": (("whitening", "optimum"), np.asarray(psgd)),
            "probe": ("probe_value", [probe[k] for k in PROBE]),
            "spikes": (("layer", "side"), np.asarray(spikes, int).reshape(len(names), 2)),
            "tail_cv": (("layer", "side"), np.asarray(cv, float).reshape(len(names), 2)),
            "dim": (("layer", "side"), np.asarray(dims, int).reshape(len(names), 2)),
            "kl_excess_relative": (
                ("layer", "rank"),
                np.asarray(excess, float).reshape(len(names), len(config.ranks)),
            ),
            "gain_error_max": (
                ("layer", "rank"),
                np.asarray(gain, float).reshape(len(names), len(config.ranks)),
            ),
        },
        coords={
            "matrix": [label for label, _ in mats],
            "gauss": [label for label, _ in _gaussians(config)],
            "damping": list(config.dampings),
            "whitening": ["partial", "criterion"],
            "optimum": ["kl", "sq"],
            "probe_value": list(PROBE),
            "layer": names,
            "side": ["left", "right"],
            "rank": list(config.ranks),
        },
    ).pipe(lambda ds: study.dataset(ds.data_vars, ds.coords, title=TITLE, name=NAME,
                                   config=config, presets=PRESETS,
                                   fit_damping=config.fit_damping, psgd_steps=steps))  # fmt: skip


def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """P5-46's error against the damping, and P9-66's excess KL against r per layer."""
    from precond_lab.plotting import figure, style
    from precond_lab.study import save_figures

    with style():
        fig, axes = figure(1, 2, panel=(3.2, 2.6))
        for case in ds["gauss"].values:
            axes[0, 0].loglog(
                ds["damping"],
                ds["kl_polar_error"].sel(gauss=case),
                "o-",
                ms=3,
                lw=0.8,
                label=str(case),
            )
        axes[0, 0].set(xlabel="relative damping", ylabel="‖d̂ − UVᵀ/‖UVᵀ‖‖", title="P5-46")
        axes[0, 0].legend(fontsize=6)
        for layer in ds["layer"].values:
            y = np.maximum(ds["kl_excess_relative"].sel(layer=layer), 1e-16)
            axes[0, 1].semilogy(ds["rank"], y, "o-", ms=3, lw=0.8, label=str(layer))
        axes[0, 1].axhline(KL_EXCESS_MAX, color="grey", ls=":", lw=0.8, label="our threshold")
        axes[0, 1].set(xlabel="rank r", ylabel="excess KL / KL of the fit", title="P9-66")
        if ds.sizes["layer"]:
            axes[0, 1].legend(fontsize=6)
        return save_figures({f"{NAME}_limits": fig}, figdir)


def _p5_45(ds):
    rnd = np.char.startswith(ds["matrix"].values.astype(str), "gauss")
    err = ds["polar_error"].values
    ev = f"max rel. error {err[rnd].max():.1e} on {rnd.sum()} Gaussian matrices"
    if (~rnd).any():
        ev += f", {err[~rnd].max():.1e} on {(~rnd).sum()} captured gradients"
    return study.judge(err.max() <= EXACT), ev


def _p5_46(ds):
    e, first, dmp = ds["kl_polar_error"].values, ds["kl_first_order"].values, ds["damping"].values
    mono = bool(np.all(np.diff(e, axis=1) <= 0))
    ok = mono and bool(np.all(e[:, -1] <= FIRST_ORDER * first[:, -1]))
    return study.judge(ok), (
        f"error at damping {dmp[0]:g} → {dmp[-1]:g}: {e[:, 0].max():.1e} → {e[:, -1].max():.1e} "
        f"(max over {e.shape[0]} matrices; bound {FIRST_ORDER * first[:, -1].min():.1e}+); "
        f"monotone: {mono}; flip-flop converged (tol 1e-12) "
        f"{int(ds['kl_converged'].sum())}/{e.size}"
    )


def _p6_51(ds):
    d = ds["psgd_distance"].values  # (partial, criterion) × (kl, sq)
    own, other = (d[0, 0], d[1, 1]), (d[0, 1], d[1, 0])
    ok = max(own) <= FIXED_POINT and min(other) >= SEPARATION * max(own)
    return study.judge(ok), (
        f"after {ds.attrs['psgd_steps']} full-batch steps: partial→KL {own[0]:.1e} (→SQ "
        f"{other[0]:.2f}), criterion→SQ {own[1]:.1e} (→KL {other[1]:.2f})"
    )


def _p6_52(ds):
    sp, sh, un, bd = (float(ds["probe"].sel(probe_value=k)) for k in PROBE)
    ok = sp <= bd * (1 + 1e-12) and sh >= AMPLIFY * un
    return study.judge(ok), (
        f"unseen ‖G‖ {un:.2f}: SPlus ‖D‖ {sp:.3f} (bound {bd:.3f}), Shampoo {sh:.1e}"
    )


def _no_layers(ds):
    none = (study.UNTESTED_VERDICT, "no captured layers in this preset")
    return none if not ds.sizes["layer"] else None


def _p9_65(ds):
    if (none := _no_layers(ds)) is not None:
        return none
    sp, cv, dim = ds["spikes"].values, ds["tail_cv"].values, ds["dim"].values
    flat = (sp >= 1) & (sp <= SPIKE_MAX_FRACTION * dim) & (cv <= TAIL_CV_MAX)
    ev = "; ".join(f"{lay}: spikes {sp[i, 0]}/{dim[i, 0]} and {sp[i, 1]}/{dim[i, 1]}, tail CV "
                   f"{cv[i, 0]:.2f} and {cv[i, 1]:.2f}"
                   for i, lay in enumerate(ds["layer"].values))  # fmt: skip
    ev += f" (left, right; fit damping {ds.attrs['fit_damping']:g}·trΣ/(mn))"
    return study.judge(flat.all(), flat.any()), ev


def _p9_66(ds):
    if (none := _no_layers(ds)) is not None:
        return none
    ranks, dim, parts, good = ds["rank"].values, ds["dim"].values, [], []
    for i, lay in enumerate(ds["layer"].values):
        x, cap = ds["kl_excess_relative"].values[i], RANK_MAX_FRACTION * dim[i].max()
        hit = ranks[(ranks <= cap) & (x <= KL_EXCESS_MAX)]
        good.append(hit.size > 0)
        best = f"r = {hit.min()}" if hit.size else "no r"
        parts.append(
            f"{lay}: {best} ≤ {cap:g} (excess at r=0 {x[0]:.1%}, at r={ranks[-1]} {x[-1]:.1%})"
        )
    return study.judge(all(good), any(good)), "; ".join(parts)


_K = study.TestKind
# fmt: off
RULES = (
    study.Rule("P5-45", _K.PAPER, _p5_45, f"≤ {EXACT:g}"),
    study.Rule("P5-46", _K.DERIVED, _p5_46, f"decreasing, and at the smallest damping ≤ "
               f"{FIRST_ORDER:g}·λ/σ_min² (first order in λ)"),
    study.Rule("P5-47", _K.PROXY, lambda ds: (study.UNTESTED_VERDICT, claims.claim("P5-47").needs)),
    study.Rule("P6-50", _K.DERIVED, lambda ds: (study.judge(ds["criterion_error"].max() <= EXACT),
               f"max rel. gap {float(ds['criterion_error'].max()):.1e} on "
               f"{ds['criterion_error'].size} (C, P_a⊗P_b)"), f"≤ {EXACT:g}"),
    study.Rule("P6-51", _K.PROXY, _p6_51, f"own optimum ≤ {FIXED_POINT:g}, the other ≥ "
               f"{SEPARATION:g}× farther"),
    study.Rule("P6-52", _K.PROXY, _p6_52, f"SPlus ≤ 2√(mn)/(m+n); Shampoo ≥ {AMPLIFY:g}·‖G‖",
               statement=P6_52_PART),
    study.Rule("P9-65", _K.PROXY, _p9_65, f"ours: every factor 1 ≤ spikes (> 3× median) ≤ "
               f"d/{1 / SPIKE_MAX_FRACTION:g}, tail CV ≤ {TAIL_CV_MAX:g}"),
    study.Rule("P9-66", _K.PROXY, _p9_66, f"ours: per layer some r ≤ max(m,n)/4 with excess KL ≤ "
               f"{KL_EXCESS_MAX:.0%} of the fit's KL"),
)
# fmt: on


def verdicts(ds: xr.Dataset) -> list:
    """One row per claim; tolerances are module constants (P9's are our thresholds)."""
    return study.verdicts_from(ds, RULES)
