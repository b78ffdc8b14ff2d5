"""P1's KL view of Shampoo on real layers: P1-14, P1-21, P1-22 and P1-12 (flip-flop).

Every estimator is fitted to ``X = Σ + λI`` (``λ = damping·tr Σ/(mn)``) and scored with
``metrics.score(X, S)`` — ``KL(N(0,X) ‖ N(0,S))``, the objective that ``kl_optimal``
minimises — and with the von Neumann divergence and the Frobenius error. The fits and
scores come from the sweep (:func:`precond_lab.evaluate.evaluate`, one layer per study
target, relative damping); Shampoo's product and Adafactor, which the estimator registry
does not hold, enter it as ``(name, callable)`` pairs.

* P1-14 (the limitation, a proxy on small real layers): Shampoo combines the two one-sided
  KL solutions into ``S = (L/n) ⊗ (R/m) = L⊗R/(mn)``. The gap ``KL(X, S) − KL(X, KL-opt)``
  of each scaled version of ``L⊗R`` — ``/(mn)`` (Shampoo's product), ``/trΣ`` (the
  trace-normalised Shampoo²) and ``c*`` (the KL-optimal scalar) — splits into a *scale*
  part (removed by the KL-optimal rescaling: what grafting fixes; zero for ``c*`` by
  construction) and a *shape* part, the same for all three (left after rescaling). Our toy
  layer (a two-component mixture) shows the same split.
* P1-21 (derived): each optimum under both divergences — the KL fit is best in KL,
  ``L⊗R/trΣ`` best in von Neumann. P1's training comparison (App. G) is the separate claim
  P1-21-train, left to the training studies.
* P1-22 (derived): the taxonomy — Frobenius-opt/Frobenius, Shampoo²-trace/vN, KL-opt/KL,
  eigencorrected diagonal best in both within its basis, and Adafactor's ``diag(row sums)⊗
  diag(col sums)/total`` the vN-optimal diagonal-Kronecker fit (checked against a numerical
  minimiser).
* P1-12 on real data: the damped flip-flop (at the study's damping) converges to a point
  that satisfies the fixed-point equations. Fits on fewer examples, smaller dampings and
  undamped fits are recorded as information: an undamped fit with ``N < max(m, n)``
  rank-one samples needs damping (a tooling fact, not a verdict on P1's Claim 2).

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

from precond_lab import study
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
class Config(study.Config):
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
#: Legend labels of the estimators the registry does not label (others: the registry's).
OWN_LABELS = {
    "shampoo_product": "Shampoo L⊗R/(mn)",
    "eigencorrected(kl_optimal)": "Eigen-corrected (KL-SOAP)",
    "adafactor": "Adafactor",
}
#: Divergence -> (metric scored, its optimum among the Kronecker fits).
OPTIMA = {
    "kl_rescaled": ("KL (best scale)", "kl_optimal"),
    "von_neumann": ("von Neumann", "shampoo_squared"),
    "relative_frobenius_rescaled": ("rel. Frobenius (best scale)", "frobenius_optimal"),
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

    m, n = x_t.matrix_shape
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

    m, n = base.matrix_shape
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
    m, n = x_t.matrix_shape
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
    shapes = [b.matrix_shape for b in bases]
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
            preset=config.preset_name(PRESETS),
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


#: The scaled versions of L⊗R in P1-14: estimator (or None: the KL-optimal scalar) and label.
VERSIONS = (
    ("shampoo_product", "L⊗R/(mn)"),
    ("shampoo_squared", "L⊗R/trΣ"),
    (None, "c*·L⊗R"),
)


def _kl_parts(ds):
    """``{version label: (KL, scale part, shape part)}`` and the KL optimum, per target.

    ``scale = KL(version) − KL(c*·L⊗R)`` (zero for ``c*`` itself), ``shape = KL(c*·L⊗R) −
    KL(KL-opt)`` (the same for every version: all are multiples of ``L⊗R``).
    """
    resc = _s(ds, "shampoo_product", "kl_rescaled")
    opt = _s(ds, "kl_optimal", "kl")
    out = {}
    for est, label in VERSIONS:
        kl = resc if est is None else _s(ds, est, "kl")
        out[label] = (kl, kl - resc, resc - opt)
    return out, opt


def verdicts(ds: xr.Dataset) -> list:
    """P1-14 (proxy), P1-21 and P1-22 (derived), P1-12 (proxy: real layers)."""
    from precond_lab.claims import TestKind
    from precond_lab.study import claim_verdict

    return [
        claim_verdict("P1-14", *_verdict_p1_14(ds), kind=TestKind.PROXY),
        claim_verdict("P1-21", *_verdict_p1_21(ds), kind=TestKind.DERIVED),
        claim_verdict("P1-22", *_verdict_p1_22(ds), kind=TestKind.DERIVED),
        claim_verdict(
            "P1-12",
            *_verdict_p1_12(ds),
            kind=TestKind.PROXY,
            setting="damped flip-flop fits on small real layers; Claim 2 itself is checked "
            "exactly in the identities study",
        ),
    ]


def _fmt_range(v):
    v = np.asarray(v, float)
    v = v[~np.isnan(v)]
    if not v.size:
        return "n/a"
    return f"{np.min(v):.3g}–{np.max(v):.3g}" if v.size > 1 else f"{float(v[0]):.3g}"


def _verdict_p1_14(ds):
    from precond_lab.study import judge

    parts_by_version, opt = _kl_parts(ds)
    mis, scale, shape = parts_by_version["L⊗R/(mn)"]
    resc = mis - scale
    frob = _s(ds, "frobenius_optimal", "kl")
    names = ds["target"].values
    src = ds["source"].values
    parts = []
    for i in np.flatnonzero(src == "toy"):
        parts.append(
            f"toy ({names[i]}, our two-component mixture): KL(L⊗R/mn) {mis[i]:.4g}, "
            f"rescaled {resc[i]:.4g}, KL-opt {opt[i]:.4g}, Frobenius-opt {frob[i]:.4g}"
        )
    real = src != "toy"
    sel = real if np.any(real) else np.ones_like(real)
    parts.append(
        f"{int(sel.sum())} {'real ' if np.any(real) else ''}targets: KL-opt {_fmt_range(opt[sel])}"
    )
    for label, (kl, sc, _) in parts_by_version.items():
        gap = kl - opt
        share = np.where(gap > 0, sc / np.where(gap > 0, gap, 1), np.nan)
        parts.append(
            f"{label}: KL {_fmt_range(kl[sel])}, scale part of the gap "
            f"{_fmt_range(100 * share[sel])}%"
            + (" (0 by construction)" if label.startswith("c*") else "")
        )
    shape_rel = shape / np.maximum(np.abs(opt), 1e-300)
    parts.append(f"shape part (all versions) / KL-opt {_fmt_range(shape_rel[sel])}")
    slack = REL * np.maximum(np.abs(opt[sel]), 1.0)  # KL is in nats: absolute floor 1e-9
    has_shape = shape[sel] > slack
    has_scale = scale[sel] > slack
    ok = bool(np.all(has_shape) and np.all(has_scale))
    partial = bool(np.any(has_shape))
    parts.append(
        f"shape gap > 0 on {int(has_shape.sum())}/{has_shape.size}; scale gap of L⊗R/(mn) > 0 "
        f"on {int(has_scale.sum())}/{has_scale.size}"
    )
    return (
        judge(ok, partial=partial),
        "; ".join(parts),
        f"holds if the shape part and Shampoo's (L⊗R/(mn)) scale part are > "
        f"{REL:g}·max(KL-opt, 1 nat) (round-off) on every target; partial if the shape part is "
        "on some",
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
    """Judged on the fits the other claims use: all examples, the study's damping.

    Fits on fewer examples, at other dampings and undamped are information only: an undamped
    fit on ``N < max(m, n)`` rank-one samples needs damping by construction (a tooling fact).
    """
    from precond_lab.study import judge

    rel = float(ds.attrs.get("damping_relative", np.nan))
    damped = ds["ff_damping_rel"] > 0
    full = ds["ff_n_examples"] == ds["ff_n_examples"].max("fit")
    judged = damped & full & np.isclose(ds["ff_damping_rel"], rel)
    if not bool(judged.any()):
        judged = damped & full
    conv = ds["ff_converged"].where(judged)
    stat = ds["ff_stationarity"].where(judged & (ds["ff_needs_damping"] == 0))
    n_conv = int(np.nansum(conv.values))
    n_fits = int(np.sum(~np.isnan(conv.values)))
    max_stat = float(np.nanmax(stat.values)) if np.any(~np.isnan(stat.values)) else np.nan
    ok = n_conv == n_fits and n_fits > 0 and max_stat <= 1e-9
    its = ds["ff_iterations"].where(judged)
    info = []
    for dv in np.unique(ds["ff_damping_rel"].values):
        for nval in np.unique(ds["ff_n_examples"].values):
            cell = (ds["ff_damping_rel"] == dv) & (ds["ff_n_examples"] == nval)
            c = ds["ff_converged"].where(cell).values
            c = c[~np.isnan(c)]
            if not c.size:
                continue
            nd = int(np.nansum(ds["ff_needs_damping"].where(cell).values))
            info.append(
                f"λ={dv:g}, N={int(nval)}: converged {int(c.sum())}/{c.size}"
                + (f", needs damping {nd}" if nd else "")
            )
    ev = (
        f"all examples, λ = {rel:g}·trΣ/(mn): converged {n_conv}/{n_fits}, fixed-point residual "
        f"(recomputed sweep) max {max_stat:.1e}, sweeps {_fmt_range(its.values)}. Information "
        "only, not part of the verdict (undamped fits on N < max(m, n) rank-one samples need "
        "damping by construction; tiny dampings converge slowly): " + "; ".join(info)
    )
    return (
        judge(bool(ok), partial=n_conv > 0),
        ev,
        "every fit on all examples at the study's damping converges (fit tol 1e-12, 500 sweeps) "
        "and its recomputed fixed-point residual is ≤ 1e-9",
    )


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------


def _label(est: str) -> str:
    from precond_lab.plotting import estimator_label

    return OWN_LABELS.get(est) or estimator_label(est)


def _short_names(names):
    """Target names for tick labels: the capture prefix dropped."""
    return [n.replace("mlp-digits ", "mlp ").replace("cnn-digits ", "cnn ") for n in names]


def _figures(ds: xr.Dataset) -> dict:
    """The study's figures by file stem (Figures, built without pyplot)."""
    from precond_lab.plotting import OKABE_ITO, estimator_style, figure, legend, style

    figs = {}
    names = _short_names([str(t) for t in ds["target"].values])
    x = np.arange(len(names))
    with style():
        # 1. P1-14: KL of each scaled version of L⊗R vs the KL optimum; gap split
        versions, opt = _kl_parts(ds)
        fig, axes = figure(1, 2, panel=(3.5, 3.6), width_ratios=[3, 2])
        ax1, ax2 = axes[0]
        colours = (OKABE_ITO["orange"], OKABE_ITO["bluish_green"], OKABE_ITO["vermillion"])
        series = [
            (f"Shampoo {lab}", kl, col)
            for (lab, (kl, _, _)), col in zip(versions.items(), colours, strict=True)
        ]
        series.append((_label("kl_optimal"), opt, estimator_style("kl_optimal")["color"]))
        w = 0.8 / len(series)
        for k, (lab, v, col) in enumerate(series):
            off = (k - (len(series) - 1) / 2) * w
            ax1.bar(x + off, v, w, label=lab, color=col, edgecolor="white", linewidth=0.4)
        ax1.set_yscale("log")
        ax1.set_xticks(x, names, rotation=60, ha="right", fontsize=6)
        ax1.set_ylabel(r"KL($\Sigma+\lambda I$ ‖ S)")
        ax1.set_title("P1-14: scaled Shampoo vs the KL optimum", fontsize=8)
        h = 0.38
        for k, (lab, hatch) in enumerate((("L⊗R/(mn)", None), ("L⊗R/trΣ", "//"))):
            kl, sc, sh = versions[lab]
            gap = np.where(kl - opt > 0, kl - opt, np.nan)
            y = x + (k - 0.5) * h
            ax2.barh(
                y,
                sc / gap,
                h,
                color=OKABE_ITO["sky_blue"],
                hatch=hatch,
                edgecolor="white",
                label=f"scale part, {lab}",
            )
            ax2.barh(
                y,
                sh / gap,
                h,
                left=sc / gap,
                color=OKABE_ITO["blue"],
                hatch=hatch,
                edgecolor="white",
                label=f"shape part, {lab}",
            )
        ax2.set_yticks(x, names, fontsize=6)
        ax2.invert_yaxis()
        ax2.set_xlim(0, 1)
        ax2.set_xlabel("share of the KL gap to KL-opt")
        ax2.set_title("scale vs shape (c*·L⊗R: all shape)", fontsize=8)
        legend(fig, axes, ncols=3)
        figs["p1_14_kl_gap"] = fig

        # 2. P1-21/22: each estimator's divergence relative to that divergence's optimum
        figs["p1_21_22_divergences"] = _divergence_figure(ds)

        # 3. P1-12: flip-flop residual histories and iterations; failed fits shown as missing
        figs["p1_12_flipflop"] = _flipflop_figure(ds, names)
    return figs


def _divergence_figure(ds: xr.Dataset):
    """One row per divergence: every estimator's value / the divergence's optimum, per target
    (dots) and their median (bar); a ratio 1 line marks the optimum. Column width (7 in)."""
    from precond_lab.plotting import estimator_style, figure

    ests = [str(e) for e in ds["estimator"].values]
    fig, axes = figure(len(OPTIMA), 1, panel=(6.8, 1.55), sharex=True)
    xs = np.arange(len(ests))
    jitter = np.linspace(-0.25, 0.25, ds.sizes["target"]) if ds.sizes["target"] > 1 else [0.0]
    for row, (metric, (label, best)) in enumerate(OPTIMA.items()):
        ax = axes[row, 0]
        ref = _s(ds, best, metric)
        for i, est in enumerate(ests):
            ratio = _s(ds, est, metric) / ref
            col = estimator_style(est, i)["color"]
            finite = np.isfinite(ratio) & (ratio > 0)
            ax.scatter(
                xs[i] + np.asarray(jitter)[finite],
                ratio[finite],
                s=7,
                color=col,
                alpha=0.7,
                linewidths=0,
            )
            if finite.any():
                ax.hlines(
                    np.median(ratio[finite]),
                    xs[i] - 0.35,
                    xs[i] + 0.35,
                    color=col,
                    linewidth=2.0,
                    label=_label(est) if row == 0 else None,
                )
        ax.axhline(1.0, color="k", linewidth=0.8, linestyle="--")
        ax.set_yscale("log")
        ax.set_ylabel(f"{label}\n/ optimum", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[-1, 0].set_xticks(xs, [_label(e) for e in ests], rotation=25, ha="right", fontsize=6)
    axes[0, 0].set_title(
        f"P1-21/22: divergence / its optimum (dots: {ds.sizes['target']} targets, bar: median)",
        fontsize=8,
    )
    return fig


def _flipflop_figure(ds: xr.Dataset, names):
    """Residual histories (left) and sweeps to convergence vs N (right). A fit that needed
    damping has no sweep count: it is drawn as an open marker on the axis floor, labelled
    "no fit", never as a value; unconverged fits as a triangle at the sweep limit."""
    import matplotlib.transforms as mtransforms

    from precond_lab.plotting import figure

    fig, axes = figure(1, 2, panel=(3.45, 3.2))
    ax1, ax2 = axes[0]
    n_colors = 8
    for i, name in enumerate(names):
        n_ex = ds["ff_n_examples"].isel(target=i).values
        fits = np.flatnonzero(
            (n_ex == n_ex[int(np.argmax(n_ex))]) & (ds["ff_damping_rel"].isel(target=i).values > 0)
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
    ax1.set_title("P1-12: convergence (all examples, damped)", fontsize=8)
    ax1.legend(fontsize=5, ncols=2)
    markers = ["o", "s", "D", "^"]
    floor = mtransforms.blended_transform_factory(ax2.transData, ax2.transAxes)
    for k, dv in enumerate(np.unique(ds["ff_damping_rel"].values)):
        sel = ds["ff_damping_rel"] == dv
        nn = ds["ff_n_examples"].where(sel).values.ravel()
        it = ds["ff_iterations"].where(sel).values.ravel()
        conv = ds["ff_converged"].where(sel).values.ravel() == 1
        bad = ds["ff_needs_damping"].where(sel).values.ravel() == 1
        good = ~np.isnan(nn) & ~bad & conv
        stuck = ~np.isnan(nn) & ~bad & ~conv
        col = f"C{k % n_colors}"
        lab = f"λ = {dv:g}·trΣ/mn"
        ax2.scatter(nn[good], it[good], marker=markers[k % 4], color=col, s=16, label=lab)
        if np.any(stuck):
            ax2.scatter(
                nn[stuck],
                it[stuck],
                marker="^",
                facecolors="none",
                edgecolors=col,
                s=30,
                label=f"{lab}: not converged (limit)",
            )
        if np.any(bad):  # missing: no sweep count exists; drawn on the axis floor, open
            ax2.scatter(
                nn[bad],
                np.full(bad.sum(), 0.03),
                marker="x",
                color=col,
                s=30,
                transform=floor,
                clip_on=False,
                label=f"{lab}: no fit (needs damping)",
            )
    if bool((ds["ff_needs_damping"] == 1).any()):  # the band where missing fits are marked
        from matplotlib.patches import Rectangle

        ax2.add_patch(
            Rectangle(
                (0, 0),
                1,
                0.06,
                transform=ax2.transAxes,
                facecolor="none",
                edgecolor="0.6",
                hatch="////",
                linewidth=0.0,
                zorder=0,
            )
        )
        ax2.text(
            0.99,
            0.07,
            "no fit: needs damping (no value)",
            transform=ax2.transAxes,
            ha="right",
            va="bottom",
            fontsize=5,
            color="0.3",
        )
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("examples N")
    ax2.set_ylabel("flip-flop sweeps to tol 1e-12")
    ax2.set_title("sweeps vs N (×: no fit, needs damping)", fontsize=8)
    ax2.legend(fontsize=5)
    return fig


def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """Write the study's figures (PNG and PDF) into ``figdir``; return the paths."""
    return save_figures(_figures(ds), figdir)
