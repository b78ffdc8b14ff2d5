"""P1's KL view of Shampoo on real layers: P1-14, P1-21, P1-22 and P1-12 (flip-flop).

Every estimator is fitted to ``X = Σ + λI`` (``λ = damping·tr Σ/(mn)``) and scored with
``metrics.score(X, S)`` — ``KL(N(0,X) ‖ N(0,S))``, the objective that ``kl_optimal``
minimises — and with the von Neumann divergence and the Frobenius error. The fits and
scores come from the sweep (:func:`precond_lab.evaluate.evaluate`, one layer per study
target, relative damping); Shampoo's product and Adafactor, which the estimator registry
does not hold, enter it as ``(name, callable)`` pairs.

* P1-14 (the limitation): Shampoo combines the two one-sided KL solutions into
  ``S = (L/n) ⊗ (R/m) = L⊗R/(mn)``. The gap ``KL(X, L⊗R/(mn)) − KL(X, KL-optimum)`` splits
  into a *scale* part (removed by the KL-optimal rescaling — what grafting fixes) and a
  *shape* part (left after rescaling). A toy layer (our own, see ``toy``) mirrors the
  theory.md A.8 numbers; the real layers are what counts.
* P1-21: each optimum under both divergences — the KL fit is best in KL, ``L⊗R/trΣ`` best in
  von Neumann.
* P1-22: the taxonomy — Frobenius-opt/Frobenius, Shampoo²-trace/vN, KL-opt/KL, eigencorrected
  diagonal best in both within its basis, and Adafactor's ``diag(row sums)⊗diag(col sums)/
  total`` the vN-optimal diagonal-Kronecker fit (checked against a numerical minimiser).
* P1-12 on real data: flip-flop convergence (iterations, residual histories) for several
  sample counts and dampings, including the failures that need damping.

Hand-written beside the sweep: the Adafactor check against scipy's minimiser and the
flip-flop study (fits on the first ``N`` examples, their residual histories and a
recomputed fixed-point sweep), which need the fitted structures themselves.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr

from precond_lab.study import save_figures
from studies._setups import Capture

NAME = "p1_kl"
TITLE = "P1: KL-optimal Kronecker factors vs Shampoo on real layers"


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Toy:
    """Our toy layer: a two-component mixture of matrix-normal gradients.

    Attributes:
        m, n: the layer shape.
        num: number of samples.
        seed: the generator seed.
    """

    m: int = 4
    n: int = 3
    num: int = 2000
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    """One run of the study.

    Attributes:
        toy: our toy layer, or None.
        digits: add softmax regression on sklearn digits (empirical Fisher and exact GGN).
        captures: captured layers to measure on.
        random: ``(m, n, N)`` random Gaussian targets (half the samples column-scaled).
        damping: ``λ = damping·trΣ/(mn)`` for every fit and score.
        flipflop_ns: example counts ``N`` of the flip-flop study (all examples are added).
        flipflop_dampings: relative dampings of the flip-flop study.
    """

    toy: Toy | None = Toy()
    digits: bool = False
    captures: tuple[Capture, ...] = ()
    random: tuple[tuple[int, int, int], ...] = ()
    damping: float = 1e-3
    flipflop_ns: tuple[int, ...] = (2, 8)
    flipflop_dampings: tuple[float, ...] = (0.0, 1e-3)


_MLP = Capture(
    "mlp",
    "digits",
    layers=("layers/0/w", "layers/1/w"),
    dtype="float64",
    model_options=(("hidden", (16,)),),
)
_CNN = Capture(
    "cnn", "digits", layers=("convs/1/w",), dtype="float64", model_options=(("channels", (4, 4)),)
)

PRESETS = {
    "test": Config(random=((5, 3, 40),), flipflop_dampings=(0.0, 1e-3)),
    "quick": Config(
        digits=True,
        captures=(
            dataclasses.replace(_MLP, steps=(0, 100)),
            dataclasses.replace(_CNN, steps=(100,)),
        ),
        flipflop_dampings=(0.0, 1e-6, 1e-3),
    ),
    "full": Config(
        digits=True,
        captures=(
            dataclasses.replace(
                _MLP, steps=(0, 100, 1000), num_samples=512, model_options=(("hidden", (32,)),)
            ),
            dataclasses.replace(
                _CNN, steps=(0, 100, 1000), num_samples=512, layers=("convs/0/w", "convs/1/w")
            ),
            dataclasses.replace(
                _MLP,
                dataset="mnist",
                steps=(0, 200),
                num_samples=512,
                model_options=(("hidden", (32,)),),
                layers=("layers/1/w",),
            ),
        ),
        flipflop_ns=(2, 8, 32),
        flipflop_dampings=(0.0, 1e-6, 1e-3),
    ),
}

ESTIMATORS = {  # name -> family
    "shampoo_product": "kronecker",  # (L/n) ⊗ (R/m): the two one-sided KL solutions
    "shampoo_squared": "kronecker",  # L⊗R/trΣ (vN optimum)
    "kl_optimal": "kronecker",
    "frobenius_optimal": "kronecker",
    "shampoo": "kronecker",  # L^½⊗R^½
    "eigencorrected": "eigen",  # SOAP: diagonal in Shampoo's eigenbasis
    "eigencorrected(kl_optimal)": "eigen",  # KL-SOAP
    "adafactor": "diagonal-kronecker",
    "diagonal": "diagonal",
}
REL = 1e-9  # optimality comparisons: relative slack for round-off
FROB_ABS = 1e-7  # relative Frobenius errors resolve to ~sqrt(eps)
NUMERIC = 1e-6  # against scipy's minimiser


# --------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------


def _toy(m: int, n: int, num: int, seed: int) -> np.ndarray:
    """Our toy layer: a two-component mixture of matrix-normal gradients (not Kronecker)."""
    rng = np.random.default_rng(seed)

    def spd(d, spread):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        return (q * 10.0 ** rng.uniform(0, spread, d)) @ q.T

    out = []
    for _ in range(2):
        a, b = np.linalg.cholesky(spd(m, 1.0)), np.linalg.cholesky(spd(n, 1.0))
        z = rng.standard_normal((num // 2, m, n))
        out.append(a @ z @ b.T)
    return np.concatenate(out)


def _targets(config: Config) -> Iterator[tuple[str, str, np.ndarray, np.ndarray | None]]:
    """Yield ``(name, source, samples (K, m, n), weights (K,) or None)``."""
    toy = config.toy
    if toy:
        yield f"toy {toy.m}x{toy.n}", "toy", _toy(toy.m, toy.n, toy.num, toy.seed), None
    for i, (m, n, num) in enumerate(config.random):
        g = np.random.default_rng([7, i]).standard_normal((num, m, n))
        g[: num // 2] *= np.linspace(0.2, 3.0, n)
        yield f"random {m}x{n} N={num}", "random", g, None
    if config.digits:
        from precond_lab.demo import digits_softmax_problem

        p = digits_softmax_problem()
        n_ex = p.gradients.shape[0]
        yield "digits softmax EF", "digits", p.gradients, np.full(n_ex, 1.0 / n_ex)
        ggn = p.ggn.reshape(-1, *p.ggn.shape[-2:])
        yield "digits softmax GGN", "digits", ggn, np.full(ggn.shape[0], 1.0 / n_ex)
    for cap in config.captures:
        from precond_lab.study import capture_targets

        for step, layer, tgt, arr, w in capture_targets(cap.kwargs()):
            label = f"{cap.model}-{cap.dataset} {layer} s{step} {tgt}"
            yield label, "capture", arr, w


# --------------------------------------------------------------------------------------
# Estimators the registry does not hold, and the hand-written checks
# --------------------------------------------------------------------------------------


def _shampoo_product(x_t):
    """``(L/n) ⊗ (R/m) = L⊗R/(mn)``: Shampoo's two one-sided KL solutions combined."""
    from precond_lab.structures import Kronecker

    m, n = x_t.shape
    left, right = x_t.second_moments()
    return Kronecker(left, right, 1.0 / (m * n))


def _adafactor(x_t):
    """Adafactor's ``diag(L) ⊗ diag(R) / tr X`` (the vN-optimal diagonal Kronecker fit)."""
    import jax.numpy as jnp

    from precond_lab.structures import Diagonal

    left, right = x_t.second_moments()
    return Diagonal(jnp.outer(jnp.diag(left), jnp.diag(right)) / x_t.trace())


_CUSTOM = {"shampoo_product": _shampoo_product, "adafactor": _adafactor}


def _sweep_estimators() -> list:
    """:data:`ESTIMATORS` for the sweep: registry specs, or ``(name, callable)`` pairs."""
    return [(e, _CUSTOM[e]) if e in _CUSTOM else e for e in ESTIMATORS]


def _adafactor_numeric(x_t, ada):
    """Numerically minimise ``D_vN(X, diag(a ⊗ b))`` over positive ``a, b``.

    For a diagonal approximation ``Y``, ``tr(X log Y) = Σ_ij X_(ij),(ij) log Y_ij`` exactly, so
    ``D_vN = const − Σ δ_ij (log a_i + log b_j) + Σa·Σb`` with ``δ = diag(X)``; minimised by
    BFGS in ``(log a, log b)`` from a random start.

    Returns:
        ``(relative error of the product against Adafactor's closed form, vN of the
        numerical minimiser, vN of Adafactor)``.
    """
    import scipy.optimize

    from precond_lab import metrics as met
    from precond_lab.structures import Diagonal

    delta = np.asarray(x_t.rotated_diagonal(None, None), np.float64)
    m, n = delta.shape
    s = delta.sum() / (m * n)

    def f(p):
        la, lb = p[:m], p[m:]
        return -(delta * (la[:, None] + lb[None, :])).sum() + np.exp(la).sum() * np.exp(lb).sum()

    def grad(p):
        la, lb = p[:m], p[m:]
        ea, eb = np.exp(la), np.exp(lb)
        return np.concatenate([-delta.sum(1) + ea * eb.sum(), -delta.sum(0) + eb * ea.sum()])

    rng = np.random.default_rng(0)
    p0 = np.concatenate([np.full(m, 0.5 * np.log(s)), np.full(n, 0.5 * np.log(s))])
    p0 = p0 + rng.standard_normal(m + n)
    res = scipy.optimize.minimize(f, p0, jac=grad, method="BFGS", options={"gtol": 1e-13})
    prod = np.outer(np.exp(res.x[:m]), np.exp(res.x[m:]))
    ada_v = np.asarray(ada.values)
    err = float(np.linalg.norm(prod - ada_v) / np.linalg.norm(ada_v))
    vn_num = float(met.von_neumann_divergence(x_t, Diagonal(prod)))
    vn_ada = float(met.von_neumann_divergence(x_t, ada))
    return err, vn_num, vn_ada


def _flipflop(base, g, w, ns, dampings, max_iter=500) -> list[dict]:
    """kl_optimal on the first ``N`` examples (and all) at several relative dampings."""
    from precond_lab import SampleTarget
    from precond_lab import estimators as est
    from precond_lab import metrics as met
    from precond_lab.errors import FitNeedsDampingError

    m, n = base.shape
    rows = []
    n_total = int(round(1.0 / w[0])) if w is not None else g.shape[0]
    per_ex = g.shape[0] // n_total  # pseudo-samples per example (GGN classes)
    for n_ex in [*ns, n_total]:
        n_ex = min(n_ex, n_total)
        sub = g[: n_ex * per_ex]
        tgt = SampleTarget(sub, np.full(sub.shape[0], 1.0 / n_ex))
        tr = float(tgt.trace()) / (m * n)
        for rel in dampings:
            lam = rel * tr
            row = {"n_examples": n_ex, "damping_rel": rel, "needs_damping": 0}
            try:
                x_t = tgt.damped(lam)
                fit = est.kl_optimal(x_t, max_iter=max_iter)
                row.update(
                    iterations=fit.info.iterations,
                    converged=int(fit.info.converged),
                    residual=float(fit.info.residuals[-1]),
                    history=np.asarray(fit.info.residuals),
                    objective=float(met.kl_divergence(x_t, fit, approx_damping=0.0))
                    if lam > 0 or n_ex * per_ex >= m * n
                    else np.nan,
                )
                row["stationarity"] = _fixed_point_residual(x_t, fit)
            except FitNeedsDampingError:
                row.update(
                    needs_damping=1,
                    iterations=0,
                    converged=0,
                    residual=np.nan,
                    history=np.zeros(0),
                    objective=np.inf,
                    stationarity=np.nan,
                )
            rows.append(row)
    return rows


def _fixed_point_residual(x_t, fit) -> float:
    """One flip-flop sweep from the fit, recomputed: relative change of ``L`` and ``R``."""
    import jax.numpy as jnp

    left = np.asarray(fit.left) * float(fit.scale)
    right = np.asarray(fit.right)
    m, n = x_t.shape
    new_l = np.asarray(x_t.contract_left(jnp.asarray(np.linalg.inv(right)))) / n
    new_r = np.asarray(x_t.contract_right(jnp.asarray(np.linalg.inv(left)))) / m
    return float(
        np.linalg.norm(new_l - left) / np.linalg.norm(left)
        + np.linalg.norm(new_r - right) / np.linalg.norm(right)
    )


# --------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------

_FF_FIELDS = (
    "n_examples",
    "damping_rel",
    "needs_damping",
    "iterations",
    "converged",
    "residual",
    "objective",
    "stationarity",
)


def _preset_name(config: Config) -> str:
    return next((k for k, v in PRESETS.items() if v == config), "custom")


def run(config: Config, **overrides) -> xr.Dataset:
    """Score every estimator on every target (the sweep), then the hand-written checks.

    Args:
        config: a :class:`Config` (e.g. ``PRESETS["quick"]``).
        **overrides: fields of ``config`` to replace (``dataclasses.replace``).

    Returns:
        The Dataset: ``score(target, estimator, metric)`` from the sweep, the Adafactor
        check (``adafactor_*``) and the flip-flop study (``ff_*``).
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    from precond_lab import SampleTarget
    from precond_lab import metrics as met
    from precond_lab.evaluate import evaluate
    from precond_lab.provenance import make_attrs

    config = dataclasses.replace(config, **overrides)
    items = list(_targets(config))
    names = [name for name, *_ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"study target names must be unique; got {names}")
    bases = [SampleTarget(g, w) for _, _, g, w in items]
    metric_names = list(met.SCORE_NAMES)

    # the sweep: one layer per study target, the target kind "target", λ relative
    t0 = time.perf_counter()
    sweep = evaluate(
        {0: {name: {"target": base} for name, base in zip(names, bases, strict=True)}},
        _sweep_estimators(),
        metric_names,
        damping=float(config.damping),
        damping_mode="relative",
        progress=False,
        raise_errors=True,
    )
    sweep_seconds = time.perf_counter() - t0
    cell = sweep.isel(step=0).sel(target="target", drop=True).rename(layer="target")
    cell = cell.sel(target=names)
    if [str(e) for e in cell["estimator"].values] != list(ESTIMATORS):
        raise RuntimeError(f"the sweep's estimators {cell['estimator'].values} differ")
    lams = [float(v) for v in cell["damping"].values]

    ada_rows, ff_rows, secs = [], [], []
    for (_, _, g, w), base, lam, fit_s in zip(
        items, bases, lams, cell["fit_seconds"].sum("estimator").values, strict=True
    ):
        t0 = time.perf_counter()
        x_t = base.damped(lam)
        ada_rows.append(_adafactor_numeric(x_t, _adafactor(x_t)))
        ff_rows.append(_flipflop(base, g, w, config.flipflop_ns, config.flipflop_dampings))
        secs.append(time.perf_counter() - t0 + float(fit_s))

    n_fit = len(ff_rows[0])
    hist_len = max(len(r["history"]) for rows in ff_rows for r in rows) or 1
    ff = {k: np.full((len(names), n_fit), np.nan) for k in _FF_FIELDS}
    hist = np.full((len(names), n_fit, hist_len), np.nan)
    for i, rows in enumerate(ff_rows):
        for j, r in enumerate(rows):
            for k in ff:
                ff[k][i, j] = r[k]
            hist[i, j, : len(r["history"])] = r["history"]
    shapes = [b.shape for b in bases]
    toy = config.toy
    ds = xr.Dataset(
        {
            "score": (
                ("target", "estimator", "metric"),
                np.asarray(cell["score"].transpose("target", "estimator", "metric").values),
            ),
            "fit_status": (("target", "estimator"), cell["status"].values.astype(str)),
            "fit_iterations": (("target", "estimator"), cell["iterations"].values),
            "adafactor_numeric_error": ("target", [a[0] for a in ada_rows]),
            "adafactor_numeric_vn": ("target", [a[1] for a in ada_rows]),
            "adafactor_closed_vn": ("target", [a[2] for a in ada_rows]),
            "ff_n_examples": (("target", "fit"), ff["n_examples"]),
            "ff_damping_rel": (("target", "fit"), ff["damping_rel"]),
            "ff_needs_damping": (("target", "fit"), ff["needs_damping"]),
            "ff_iterations": (("target", "fit"), ff["iterations"]),
            "ff_converged": (("target", "fit"), ff["converged"]),
            "ff_residual": (("target", "fit"), ff["residual"]),
            "ff_kl": (("target", "fit"), ff["objective"]),
            "ff_stationarity": (("target", "fit"), ff["stationarity"]),
            "ff_history": (("target", "fit", "sweep"), hist),
            "seconds": ("target", secs),
        },
        coords={
            "target": names,
            "source": ("target", [src for _, src, _, _ in items]),
            "m": ("target", [s[0] for s in shapes]),
            "n": ("target", [s[1] for s in shapes]),
            "damping": ("target", lams),
            "estimator": list(ESTIMATORS),
            "family": ("estimator", list(ESTIMATORS.values())),
            "metric": metric_names,
            "fit": np.arange(n_fit),
            "sweep": np.arange(1, hist_len + 1),
        },
        attrs=make_attrs(
            TITLE,
            preset=_preset_name(config),
            source=", ".join(dict.fromkeys(src for _, src, _, _ in items)),
            study=NAME,
            dtype="float64",
            damping_relative=float(config.damping),
            toy="two-component mixture of matrix-normal gradients, "
            + ", ".join(f"{k}={v}" for k, v in (dataclasses.asdict(toy) if toy else {}).items()),
            sweep_seconds=sweep_seconds,
            notes=(
                "score(target, estimator, metric) = metrics.score(Σ+λI, S) from the sweep "
                "(precond_lab.evaluate, relative damping); λ = damping_relative·trΣ/(mn); "
                "shampoo_product = (L/n)⊗(R/m) = L⊗R/(mn); adafactor = diag(L)⊗diag(R)/"
                "tr(Σ+λI); ff_* = kl_optimal on the first ff_n_examples examples with damping "
                "ff_damping_rel·trΣ_N/(mn)"
            ),
        ),
    )
    ds["seconds"].attrs["description"] = "sweep fit time plus the hand-written checks"
    return ds


# --------------------------------------------------------------------------------------
# verdicts
# --------------------------------------------------------------------------------------


def _s(ds, est, metric):
    return ds["score"].sel(estimator=est, metric=metric).values


def _kl_parts(ds):
    mis = _s(ds, "shampoo_product", "kl")
    resc = _s(ds, "shampoo_product", "kl_rescaled")
    opt = _s(ds, "kl_optimal", "kl")
    return mis, resc, opt, mis - resc, resc - opt


def verdicts(ds: xr.Dataset) -> list:
    from precond_lab.study import Verdict

    return [
        Verdict(
            "P1-14",
            "P1 Lin et al. 2025",
            "Abstract; Sec. 3 (Claims 1–2)",
            "Shampoo's one-sided factor estimates do not solve the joint two-sided KL "
            "problem: L⊗R/(mn) is mis-scaled and, after the KL-optimal rescaling, still "
            "worse than the KL optimum.",
            *_verdict_p1_14(ds),
        ),
        Verdict(
            "P1-21",
            "P1 Lin et al. 2025",
            "Appendix G, Figs. 7–8",
            "KL vs von Neumann: the KL-optimal Kronecker fit is best in KL and L⊗R/trΣ is "
            "best in von Neumann (the training comparison of App. G is not tested here).",
            *_verdict_p1_21(ds),
        ),
        Verdict(
            "P1-22",
            "P1 Lin et al. 2025",
            "taxonomy table (papernotes summary)",
            "Each estimator is optimal for its divergence: Frobenius-opt/Frobenius, "
            "Shampoo²-trace/vN, KL-opt/KL, eigencorrected/both in its basis, Adafactor/vN "
            "among diagonal Kronecker fits.",
            *_verdict_p1_22(ds),
        ),
        Verdict(
            "P1-12",
            "P1 Lin et al. 2025",
            "Claim 2, Sec. 3",
            "The two-sided KL optimum is the flip-flop fixed point; on real layers the "
            "flip-flop converges (with damping where N is small).",
            *_verdict_p1_12(ds),
        ),
    ]


def _fmt_range(v):
    v = np.asarray(v, float)
    return f"{np.nanmin(v):.3g}–{np.nanmax(v):.3g}" if v.size > 1 else f"{float(v[0]):.3g}"


def _verdict_p1_14(ds):
    from precond_lab.study import judge

    mis, resc, opt, scale, shape = _kl_parts(ds)
    frob = _s(ds, "frobenius_optimal", "kl")
    frob_r = _s(ds, "frobenius_optimal", "kl_rescaled")
    names = ds["target"].values
    src = ds["source"].values
    parts = []
    for i in np.flatnonzero(src == "toy"):
        parts.append(
            f"toy ({names[i]}, ours, differs from theory.md's): KL(L⊗R/mn) {mis[i]:.4g}, "
            f"rescaled {resc[i]:.4g}, KL-opt {opt[i]:.4g}, Frobenius-opt {frob[i]:.4g} "
            f"(rescaled {frob_r[i]:.4g}) [theory.md A.8: 6.25/0.0245/0.0188/0.0264]"
        )
    real = src != "toy"
    sel = real if np.any(real) else np.ones_like(real)
    gap = mis - opt
    share = np.where(gap > 0, scale / np.where(gap > 0, gap, 1), np.nan)
    shape_rel = shape / np.maximum(np.abs(opt), 1e-300)
    parts.append(
        f"{int(sel.sum())} {'real' if np.any(real) else ''} targets: "
        f"KL(L⊗R/mn) {_fmt_range(mis[sel])}, "
        f"rescaled {_fmt_range(resc[sel])}, KL-opt {_fmt_range(opt[sel])}; scale part of the gap "
        f"{_fmt_range(100 * share[sel])}%; shape part / KL-opt {_fmt_range(shape_rel[sel])}"
    )
    slack = REL * np.maximum(np.abs(opt[sel]), 1.0)  # KL is in nats: absolute floor 1e-9
    has_shape = shape[sel] > slack
    has_scale = scale[sel] > slack
    ok = bool(np.all(has_shape) and np.all(has_scale))
    partial = bool(np.any(has_shape))
    parts.append(f"shape gap > 0 on {int(has_shape.sum())}/{has_shape.size}")
    return (
        judge(ok, partial=partial),
        "; ".join(parts),
        f"gap parts counted when > {REL:g}·max(KL-opt, 1 nat) (round-off)",
    )


def _kron_others(ds, keep):
    fam = ds["family"].values
    return [
        e
        for e, f in zip(ds["estimator"].values, fam, strict=True)
        if f == "kronecker" and e != keep
    ]


def _verdict_p1_21(ds):
    from precond_lab.study import judge

    kl_opt, vn_sh2 = _s(ds, "kl_optimal", "kl"), _s(ds, "shampoo_squared", "von_neumann")
    kl_best = np.all(
        [
            kl_opt <= _s(ds, e, "kl_rescaled") * (1 + REL) + REL
            for e in _kron_others(ds, "kl_optimal")
        ],
        axis=0,
    )
    vn_best = np.all(
        [
            vn_sh2 <= _s(ds, e, "von_neumann") + REL * np.abs(vn_sh2) + REL
            for e in _kron_others(ds, "shampoo_squared")
        ],
        axis=0,
    )
    kl_cross = _s(ds, "shampoo_squared", "kl_rescaled") / kl_opt
    vn_cross = _s(ds, "kl_optimal", "von_neumann") / vn_sh2
    ok = bool(np.all(kl_best) and np.all(vn_best))
    ev = (
        f"KL-opt lowest KL (vs every Kronecker fit at its KL-best scale) on "
        f"{int(kl_best.sum())}/{kl_best.size} targets; L⊗R/trΣ lowest vN on "
        f"{int(vn_best.sum())}/{vn_best.size}; cross: KL(c*·L⊗R)/KL(KL-opt) = "
        f"{_fmt_range(kl_cross)}, vN(KL-opt)/vN(L⊗R/trΣ) = {_fmt_range(vn_cross)}"
    )
    return (
        judge(ok, partial=bool(np.any(kl_best) or np.any(vn_best))),
        ev,
        f"relative slack {REL:g}",
    )


def _verdict_p1_22(ds):
    from precond_lab.study import judge

    checks = {}
    fro = _s(ds, "frobenius_optimal", "relative_frobenius")
    checks["Frobenius-opt best in Frobenius"] = np.all(
        [
            fro <= _s(ds, e, "relative_frobenius_rescaled") + FROB_ABS
            for e in _kron_others(ds, "frobenius_optimal")
        ],
        axis=0,
    )
    vn = _s(ds, "shampoo_squared", "von_neumann")
    checks["L⊗R/trΣ best in vN"] = np.all(
        [
            vn <= _s(ds, e, "von_neumann") + REL * np.abs(vn) + REL
            for e in _kron_others(ds, "shampoo_squared")
        ],
        axis=0,
    )
    kl = _s(ds, "kl_optimal", "kl")
    checks["KL-opt best in KL"] = np.all(
        [kl <= _s(ds, e, "kl_rescaled") * (1 + REL) + REL for e in _kron_others(ds, "kl_optimal")],
        axis=0,
    )
    eig_ok = []
    for eig, kron in (
        ("eigencorrected", "shampoo_squared"),
        ("eigencorrected(kl_optimal)", "kl_optimal"),
    ):
        eig_ok.append(_s(ds, eig, "kl") <= _s(ds, kron, "kl_rescaled") * (1 + REL) + REL)
        eig_ok.append(
            _s(ds, eig, "relative_frobenius")
            <= _s(ds, kron, "relative_frobenius_rescaled") + FROB_ABS
        )
    checks["eigencorrected ≤ its basis' Kronecker fit in KL and Frobenius"] = np.all(eig_ok, axis=0)
    ada_err = ds["adafactor_numeric_error"].values
    vn_gap = ds["adafactor_closed_vn"].values - ds["adafactor_numeric_vn"].values
    checks["Adafactor = numerical vN-optimal diagonal Kronecker"] = (ada_err <= NUMERIC) & (
        vn_gap <= REL * np.abs(ds["adafactor_closed_vn"].values) + REL
    )
    ok = all(bool(np.all(v)) for v in checks.values())
    partial = any(bool(np.any(v)) for v in checks.values())
    ev = "; ".join(f"{k}: {int(np.sum(v))}/{np.size(v)}" for k, v in checks.items())
    ev += (
        f"; Adafactor vs scipy minimiser: max rel error {np.nanmax(ada_err):.1e}, "
        f"vN(closed) − vN(numeric) max {np.nanmax(vn_gap):.1e}"
    )
    eig_gain = _s(ds, "eigencorrected(kl_optimal)", "kl") / _s(ds, "kl_optimal", "kl")
    ev += f"; KL(KL-SOAP diag)/KL(KL-opt) = {_fmt_range(eig_gain)}"
    tol = f"relative slack {REL:g}; Frobenius {FROB_ABS:g} (sqrt-eps resolution); scipy {NUMERIC:g}"
    return judge(ok, partial=partial), ev, tol


def _verdict_p1_12(ds):
    from precond_lab.study import judge

    damped = ds["ff_damping_rel"] > 0
    full = ds["ff_n_examples"] == ds["ff_n_examples"].max("fit")
    conv = ds["ff_converged"].where(damped)
    stat = ds["ff_stationarity"].where(damped & (ds["ff_needs_damping"] == 0))
    n_conv = int(np.nansum(conv.values))
    n_damped = int(np.sum(~np.isnan(conv.values)))
    max_stat = float(np.nanmax(stat.values)) if np.any(~np.isnan(stat.values)) else np.nan
    ok = n_conv == n_damped and n_damped > 0 and max_stat <= 1e-9
    its = ds["ff_iterations"].where(damped & full)
    undamped = ds["ff_damping_rel"] == 0
    nd = ds["ff_needs_damping"].where(undamped)
    nd_small = []
    for nval in np.unique(ds["ff_n_examples"].values):
        v = nd.where(ds["ff_n_examples"] == nval).values
        v = v[~np.isnan(v)]
        if v.size:
            nd_small.append(f"N={int(nval)}: {int(v.sum())}/{v.size}")
    ev = (
        f"damped fits converged {n_conv}/{n_damped}; fixed-point residual (recomputed sweep) max "
        f"{max_stat:.1e}; iterations (all examples, damped) "
        f"{_fmt_range(its.values[~np.isnan(its.values)])}; "
        f"undamped fits needing damping (FitNeedsDampingError) " + ", ".join(nd_small)
    )
    return judge(bool(ok), partial=n_conv > 0), ev, "converged (fit tol 1e-12) and residual ≤ 1e-9"


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------


def _figures(ds: xr.Dataset) -> dict:
    """The study's figures by file stem (Figures, built without pyplot)."""
    from precond_lab.plotting import (
        OKABE_ITO,
        estimator_label,
        estimator_style,
        figure,
        legend,
        metric_label,
        plot_metric_bars,
        style,
    )

    figs = {}
    names = [str(t) for t in ds["target"].values]
    x = np.arange(len(names))
    with style():
        # 1. P1-14: KL of Shampoo's product, rescaled, Frobenius-opt, KL-opt; gap split
        mis, resc, opt, scale, shape = _kl_parts(ds)
        frob = _s(ds, "frobenius_optimal", "kl")
        fig, axes = figure(
            1, 2, panel=(max(7.5, 0.75 * len(names) + 3) / 2, 4.2), width_ratios=[3, 2]
        )
        ax1, ax2 = axes[0]
        series = [
            ("Shampoo L⊗R/(mn)", mis, OKABE_ITO["orange"]),
            ("Shampoo, KL-rescaled", resc, OKABE_ITO["vermillion"]),
            (
                estimator_label("frobenius_optimal"),
                frob,
                estimator_style("frobenius_optimal")["color"],
            ),
            (estimator_label("kl_optimal"), opt, estimator_style("kl_optimal")["color"]),
        ]
        w = 0.8 / len(series)
        for k, (lab, v, col) in enumerate(series):
            ax1.bar(x + (k - 1.5) * w, v, w, label=lab, color=col, edgecolor="white", linewidth=0.4)
        ax1.set_yscale("log")
        ax1.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
        ax1.set_ylabel(metric_label("kl") + r" KL($\Sigma+\lambda I$ ‖ S)")
        ax1.set_title("P1-14: KL of Shampoo's product vs the KL optimum")
        gap = np.where(mis - opt > 0, mis - opt, np.nan)
        ax2.barh(x, scale / gap, color=OKABE_ITO["sky_blue"], label="scale part of the gap")
        ax2.barh(
            x, shape / gap, left=scale / gap, color=OKABE_ITO["blue"], label="shape part of the gap"
        )
        ax2.set_yticks(x, names, fontsize=7)
        ax2.invert_yaxis()
        ax2.set_xlim(0, 1)
        ax2.set_xlabel("share of KL gap (Shampoo − KL-opt)")
        ax2.set_title("scale vs shape")
        legend(fig, axes, ncols=3)
        figs["p1_14_kl_gap"] = fig

        # 2. P1-21/22: every estimator under KL, vN and Frobenius
        figs["p1_21_22_divergences"] = plot_metric_bars(
            ds,
            metrics=("kl_rescaled", "von_neumann", "relative_frobenius_rescaled"),
            title="P1-21/22: each estimator under each divergence",
            panel_size=(max(3.6, 0.45 * len(names) + 1.5), 3.2),
        )

        # 3. P1-12: flip-flop residual histories and iterations (colours: the style's cycle)
        fig, axes = figure(1, 2, panel=(4.5, 3.6))
        ax1, ax2 = axes[0]
        n_colors = 8
        for i, name in enumerate(names):
            n_ex = ds["ff_n_examples"].isel(target=i).values
            fits = np.flatnonzero(
                (n_ex == n_ex[int(np.argmax(n_ex))])
                & (ds["ff_damping_rel"].isel(target=i).values > 0)
            )
            if fits.size:
                h = ds["ff_history"].isel(target=i, fit=fits[-1]).values
                keep = ~np.isnan(h)
                ax1.semilogy(
                    ds["sweep"].values[keep],
                    np.maximum(h[keep], 1e-17),
                    color=f"C{i % n_colors}",
                    linestyle=["-", "--", ":"][i // n_colors % 3],
                    label=name,
                )
        ax1.set_xlabel("flip-flop sweep")
        ax1.set_ylabel("relative change of the factors")
        ax1.set_title("P1-12: flip-flop convergence (all examples, damped)")
        ax1.legend(fontsize=6, ncols=2)
        markers = ["x", "o", "s", "D"]
        for k, dv in enumerate(np.unique(ds["ff_damping_rel"].values)):
            sel = ds["ff_damping_rel"] == dv
            nn = ds["ff_n_examples"].where(sel).values.ravel()
            it = ds["ff_iterations"].where(sel).values.ravel()
            bad = ds["ff_needs_damping"].where(sel).values.ravel() == 1
            good = ~np.isnan(nn) & ~bad
            col = f"C{k % n_colors}"
            ax2.scatter(
                nn[good],
                it[good],
                marker=markers[k % 4],
                color=col,
                s=16,
                label=f"λ = {dv:g}·trΣ/mn",
            )
            if np.any(bad):
                ax2.scatter(
                    nn[bad],
                    np.zeros(bad.sum()),
                    marker="x",
                    color=col,
                    s=30,
                    label=f"λ = {dv:g}·trΣ/mn: needs damping (error)",
                )
        ax2.set_xscale("log")
        ax2.set_xlabel("examples N")
        ax2.set_ylabel("flip-flop sweeps to tol 1e-12")
        ax2.set_title("iterations vs N (0 = FitNeedsDampingError)")
        ax2.legend(fontsize=6)
        figs["p1_12_flipflop"] = fig
    return figs


def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """Write the study's figures (PNG and PDF) into ``figdir``; return the paths."""
    return save_figures(_figures(ds), figdir)
