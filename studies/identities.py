"""Derived identities D1–D9 and the exact claims of P1, P2 and P3.

Every identity in the claims registry that names this study (the derived identities D1–D9,
P3-1, P3-2, P3-9, P1-11, P1-12, P1-15, P1-40 and P2-42; see ``docs/claims.md``) is checked in
float64 by the named checks of :mod:`precond_lab.identities` (matrix-free result against a
dense reference built from the explicit ``mn × mn`` matrix), on

* random targets ``Σ = E[ggᵀ]`` of Gaussian per-example matrices (several sizes, seeds and
  row/column conditionings, ``N = 3mn`` samples),
* exact Kronecker targets ``Σ = A ⊗ B`` (dense; where D4/P3-9/P3-2 say something exact),
* real gradients: softmax regression on sklearn digits (empirical Fisher and exact GGN,
  ``precond_lab.demo``) and a small captured MLP layer (``cached_capture``).

Real targets are singular, so every check there is made on ``X = Σ + λI`` with
``λ = damping·tr Σ/(mn)`` — the identities hold for any PSD target, and the KL/IF-Shampoo
ones need ``X`` positive definite. The Dataset holds one relative error per (check, case);
a claim holds when the largest of its checks' errors is within the check's tolerance. P3-2
(Shampoo² approximates better than Shampoo) is read from the cases' cosines and D4-sqrt.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import xarray as xr

from precond_lab import claims as registry
from precond_lab import identities as ids
from precond_lab import study
from precond_lab.study import UNTESTED_VERDICT, Outcome, Rule, judge, save_figures
from studies._setups import Capture

NAME = "identities"
TITLE = "Derived identities D1–D9 and the exact claims of P1, P2 and P3"
CHECKS = ids.IDENTITY_CHECKS
#: The claims this study tests: those of the registry that name it (precond_lab.claims).
CLAIMS = tuple(c.id for c in registry.CLAIMS.values() if NAME in c.studies)


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """The cases: random targets of ``sizes × seeds × conds``, exact Kronecker targets of
    ``kronecker`` sizes, the digits softmax targets (``digits``), a captured layer
    (``capture``), real targets damped by ``real_damping·trΣ/(mn)``; ``power_steps``,
    ``vn_numeric_max_dim``, ``if_max_steps``, ``if_iterate_max_dim``: the iterative checks'
    :class:`precond_lab.identities.CheckOptions`."""

    sizes: tuple[tuple[int, int], ...] = ((3, 2),)
    seeds: tuple[int, ...] = (0,)
    conds: tuple[float, ...] = (0.0, 2.0)
    kronecker: tuple[tuple[int, int], ...] = ((3, 2),)
    digits: bool = False
    capture: Capture | None = None
    power_steps: int = 60
    vn_numeric_max_dim: int = 6
    if_max_steps: int = 3000
    if_iterate_max_dim: int | None = None
    real_damping: float = 1e-3


_MLP = Capture("mlp", "digits", layers=("layers/1/w",), steps=(100,), num_samples=128,
               model_options=(("hidden", (16,)),), dtype="float64")  # fmt: skip
PRESETS = {
    "test": Config(),
    "quick": Config(
        sizes=((3, 2), (4, 3), (6, 5)), seeds=(0, 1), kronecker=((3, 2), (4, 3), (6, 5)),
        digits=True, capture=_MLP, power_steps=100, vn_numeric_max_dim=12, if_max_steps=4000,
        if_iterate_max_dim=200,
    ),
    "full": Config(
        sizes=((3, 2), (4, 3), (6, 5), (8, 8), (12, 10)), seeds=(0, 1, 2), conds=(0.0, 2.0, 4.0),
        kronecker=((3, 2), (4, 3), (6, 5), (12, 10)), digits=True,
        capture=dataclasses.replace(
            _MLP, steps=(0, 100, 500), num_samples=256, layers=("layers/0/w", "layers/1/w")
        ),
        power_steps=200, vn_numeric_max_dim=12, if_max_steps=20000,
    ),
}  # fmt: skip


def cases(config: Config) -> list[ids.IdentityCase]:
    """The configuration's cases: random, exact Kronecker, then the real targets."""
    opts = ids.CheckOptions(int(config.power_steps), int(config.vn_numeric_max_dim),
                            int(config.if_max_steps), config.if_iterate_max_dim)  # fmt: skip
    out = [ids.random_case(m, n, seed, cond, opts)
           for m, n in config.sizes for seed in config.seeds for cond in config.conds]  # fmt: skip
    out += [ids.kronecker_case(m, n, i, opts) for i, (m, n) in enumerate(config.kronecker)]
    real = []
    if config.digits:
        from precond_lab.demo import digits_softmax_problem

        p = digits_softmax_problem()
        n_ex = p.gradients.shape[0]
        real.append(("digits softmax EF", "digits", p.gradients, np.full(n_ex, 1.0 / n_ex)))
        ggn = p.ggn.reshape(-1, *p.ggn.shape[-2:])
        real.append(("digits softmax GGN", "digits", ggn, np.full(ggn.shape[0], 1.0 / n_ex)))
    if cap := config.capture:
        for step, layer, tgt, arr, w in study.capture_targets(cap.kwargs()):
            real.append((f"{cap.model} {layer} step {step} {tgt}", "capture", arr, w))
    rel = float(config.real_damping)
    return out + [ids.sample_case(*r, relative_damping=rel, options=opts) for r in real]


def run(config: Config, **overrides) -> xr.Dataset:
    """``error(check, case)`` (NaN: not applicable), the cases' measurements (cosines,
    ``kron_gap``, ``kl_iterations``, ``if_history(case, if_check)``) and ``seconds``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    cfg, t_start = config.replace(**overrides), time.perf_counter()
    by_name = {c.name: c for c in cases(cfg)}
    names, seconds = list(by_name), dict.fromkeys(by_name, 0.0)

    def cell(case, check):  # the checks of a case run together: its shared work is cached
        t0, err = time.perf_counter(), ids.check_identity(check, by_name[case])
        seconds[case] += time.perf_counter() - t0
        return {} if err is None else {"error": err}

    ds = study.grid({"case": names, "check": list(CHECKS)}, cell).transpose("check", "case")
    extras = [ids.measurements(by_name[c]) for c in names]
    hist = np.full((len(names), max(1, *(len(e["if_history"]) for e in extras))), np.nan)
    for i, e in enumerate(extras):
        h = e.pop("if_history")
        hist[i, : len(h)] = h
    data = {k: ("case", [e[k] for e in extras]) for k in extras[0]}
    data |= {"error": ds["error"], "if_history": (("case", "if_check"), hist),
             "seconds": ("case", [seconds[c] for c in names])}  # fmt: skip
    info = {f: ("check", [getattr(CHECKS[c], f) for c in CHECKS])
            for f in ("claim", "tolerance", "kind", "description")}  # fmt: skip
    case_info = {"source": ("case", [by_name[c].source for c in names]),
                 "m": ("case", [by_name[c].shape[0] for c in names]),
                 "n": ("case", [by_name[c].shape[1] for c in names]),
                 "kronecker": ("case", [int(by_name[c].kronecker) for c in names]),
                 "damping": ("case", [by_name[c].damping for c in names]),
                 "if_check": np.arange(hist.shape[1]) * ids.IF_EVERY}  # fmt: skip
    return study.dataset(
        data, {"check": list(CHECKS), "case": names, **info, **case_info}, title=TITLE,
        name=NAME, config=cfg, presets=PRESETS, started=t_start, dtype="float64",
        source=", ".join(dict.fromkeys(c.source for c in by_name.values())), if_beta2=0.5,
        if_alpha2=0.0, random_samples_per_dim=3,
        notes="error = relative error of each check (NaN = not applicable); real targets are "
        "checked on X = Σ + λI, λ = config_real_damping·trΣ/(mn); if_history = IF-Shampoo "
        "stationarity ‖2m_C‖/√m + ‖2m_K‖/√n every 25 steps",
    )  # fmt: skip


# ----------------------------------------------------------------------------- verdicts
def _checks_outcome(claim: str):
    """``decide`` of a claim decided by its checks: it holds when every check's largest
    error (over the cases it applies to) is within the check's tolerance."""

    def decide(ds):
        sel = ds["error"].where(ds["claim"] == claim, drop=True)
        parts, ok, tols = [], True, []
        for chk in sel["check"].values:
            vals, tol = sel.sel(check=chk).values, float(ds["tolerance"].sel(check=chk))
            tols.append(f"{chk}: {tol:.0e} ({ds['kind'].sel(check=chk).item()})")
            if (finite := vals[~np.isnan(vals)]).size == 0:
                continue
            worst = float(np.max(finite)) if np.all(np.isfinite(finite)) else np.inf
            at = str(sel["case"].values[int(np.nanargmax(np.where(np.isnan(vals), -1, vals)))])
            ok &= worst <= tol
            flag = "" if worst <= tol else f" > tol {tol:.0e} ({at})"
            parts.append(f"{chk} max {worst:.1e}{flag} [{finite.size} cases]")
        if not parts:
            why = "no checks in this dataset" if not tols else "no applicable cases"
            return Outcome(UNTESTED_VERDICT, why)
        evidence = "; ".join(parts)
        nonk = ds["kron_gap"].where(ds["kronecker"] == 0, drop=True)
        if claim in ("P3-9", "D4") and nonk.size:
            gap = f"{float(nonk.min()):.2g}–{float(nonk.max()):.2g}"
            evidence += f"; for contrast, non-Kronecker targets: ‖L⊗R/trΣ − Σ‖/‖Σ‖ = {gap}"
            evidence += " (not exact, as expected)"
        sources = ", ".join(sorted(set(ds["source"].values.tolist())))
        scope = f" on {ds.sizes['case']} cases ({sources})"
        return Outcome(judge(bool(ok)), evidence + scope, ", ".join(tols))

    return decide


def _p3_2(ds):
    """Shampoo² beats Shampoo in cosine on every case, and on exact Kronecker targets
    Shampoo is exactly ``∝ Σ^½`` (D4-sqrt)."""
    cs2, cs = ds["cos_shampoo_squared"].values, ds["cos_shampoo"].values
    wins, kron = cs2 > cs, ds["kronecker"].values == 1
    ok_sqrt, ev_sqrt = None, "no exact-Kronecker case"
    if "D4-sqrt" in ds["check"].values:
        vals = ds["error"].sel(check="D4-sqrt").values[kron]
        if (vals := vals[~np.isnan(vals)]).size:
            ok_sqrt = bool(np.max(vals) <= float(ds["tolerance"].sel(check="D4-sqrt")))
            ck = cs[kron]
            ev_sqrt = (f"exact Kronecker: ‖L^½⊗R^½ − c·Σ^½‖ rel max {np.max(vals):.1e}, while "
                       f"cos(Σ, L^½⊗R^½) = {ck.min():.4f}–{ck.max():.4f}")  # fmt: skip
    if ok_sqrt is None and not wins.size:
        return Outcome(UNTESTED_VERDICT, "no cases")
    real = (ds["source"].values != "random") & ~kron
    parts = [f"cos(Σ,L⊗R) > cos(Σ,L^½⊗R^½) on {int(wins.sum())}/{wins.size} cases"]
    if np.any(~wins):
        bad = [str(c) for c in ds["case"].values[~wins]]
        parts.append("fails on " + ", ".join(bad[:4]) + ("…" if len(bad) > 4 else ""))
    if np.any(real):
        parts.append("real: " + ", ".join(f"{c}: {a:.4f} vs {b:.4f}" for c, a, b in zip(
            ds["case"].values[real], cs2[real], cs[real], strict=True)))  # fmt: skip
    parts.append(ev_sqrt)
    ok, partial = bool(np.all(wins)) and ok_sqrt is not False, bool(np.mean(wins) >= 0.5)
    return Outcome(judge(ok, partial=partial or bool(ok_sqrt)), "; ".join(parts))


RULES = [
    Rule("P3-2", registry.claim("P3-2").kind, _p3_2,
         "cosine comparison strict on every case; exact-Kronecker √ relation 1e-10")
    if c == "P3-2" else Rule(c, registry.claim(c).kind, _checks_outcome(c))
    for c in CLAIMS
]  # fmt: skip


def verdicts(ds: xr.Dataset) -> list:
    """One row per claim of :data:`CLAIMS` (its kind as registered: paper claim or derived)."""
    return study.verdicts_from(ds, RULES)


def _figures(ds: xr.Dataset) -> dict:
    """The study's figures by file stem (Figures, built without pyplot)."""
    from precond_lab.plotting import OKABE_ITO, estimator_style, figure, legend, style

    colors = {
        "random": OKABE_ITO["blue"],
        "kronecker": OKABE_ITO["bluish_green"],
        "digits": OKABE_ITO["vermillion"],
        "capture": OKABE_ITO["reddish_purple"],
    }
    markers = {"random": "o", "kronecker": "D", "digits": "s", "capture": "^"}
    figs = {}
    with style():
        # 1. errors per check vs tolerance
        checks = [str(c) for c in ds["check"].values]
        fig, axes = figure(1, 1, panel=(max(7.0, 0.28 * len(checks)), 3.6))
        ax = axes[0, 0]
        floor = 1e-18
        for src in dict.fromkeys(ds["source"].values.tolist()):
            sel = ds["error"].where(ds["source"] == src, drop=True)
            xs, ys = [], []
            for i, c in enumerate(checks):
                v = sel.sel(check=c).values
                v = v[~np.isnan(v)]
                xs += [i] * v.size
                ys += list(np.maximum(v, floor))
            jitter = {"random": -0.2, "kronecker": -0.07, "digits": 0.07, "capture": 0.2}
            ax.scatter(
                np.asarray(xs) + jitter.get(src, 0.0),
                ys,
                s=10,
                color=colors.get(src, "k"),
                marker=markers.get(src, "o"),
                label=src,
                alpha=0.8,
            )
        tol = ds["tolerance"].values
        ax.hlines(
            tol,
            np.arange(len(checks)) - 0.4,
            np.arange(len(checks)) + 0.4,
            color="k",
            linewidth=1.2,
            label="tolerance",
        )
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(checks)), checks, rotation=70, fontsize=7)
        ax.set_ylabel(f"relative error (floored at {floor:.0e})")
        ax.set_title("Identity checks: float64 matrix-free vs dense reference")
        legend(fig, axes, ncols=5)
        figs["identities_errors"] = fig

        # 2. P3-2: cos(Σ, L⊗R) vs cos(Σ, L^½⊗R^½)
        fig, axes = figure(1, 1, panel=(4.2, 3.8))
        ax = axes[0, 0]
        for src in dict.fromkeys(ds["source"].values.tolist()):
            sel = ds["source"] == src
            ax.scatter(
                ds["cos_shampoo"].where(sel, drop=True),
                ds["cos_shampoo_squared"].where(sel, drop=True),
                color=colors.get(src, "k"),
                marker=markers.get(src, "o"),
                s=18,
                label=src,
            )
        lo = float(min(ds["cos_shampoo"].min(), ds["cos_shampoo_squared"].min()))
        ax.plot([lo, 1], [lo, 1], color="grey", linestyle="--", linewidth=1, label="equal")
        ax.set_xlabel(r"cos($\Sigma$, $L^{1/2}\otimes R^{1/2}$) (Shampoo)")
        ax.set_ylabel(r"cos($\Sigma$, $L\otimes R$) (Shampoo$^2$)")
        ax.set_title("P3-2: the square is the better approximation")
        legend(fig, axes)
        figs["identities_p3_2_cosines"] = fig

        # 3. D6: IF-Shampoo convergence to the KL fixed point
        fig, axes = figure(1, 1, panel=(5.0, 3.4))
        ax = axes[0, 0]
        st = estimator_style("kl_optimal")
        for i in range(ds.sizes["case"]):
            h = ds["if_history"].isel(case=i).values
            keep = ~np.isnan(h)
            src = str(ds["source"].values[i])
            ax.semilogy(
                ds["if_check"].values[keep],
                np.maximum(h[keep], 1e-17),
                color=colors.get(src, st["color"]),
                linewidth=1.0,
                alpha=0.7,
                label=src,
            )
        ax.set_xlabel("IF-Shampoo step (full batch, β₂ = 0.5, α₂ = 0)")
        ax.set_ylabel(r"stationarity $2\|m_C\|/\sqrt{m} + 2\|m_K\|/\sqrt{n}$")
        ax.set_title("D6: IF-Shampoo converges to the damped KL fixed point")
        legend(fig, axes)  # each source once
        figs["identities_if_shampoo"] = fig
    return figs


def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """Write the study's figures (PNG and PDF) into ``figdir``; return the paths."""
    return save_figures(_figures(ds), figdir)
