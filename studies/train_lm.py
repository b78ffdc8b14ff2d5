"""Language-model training: KL-Shampoo against Shampoo, SOAP, KL-SOAP and the trace-power family.

A character transformer of the model zoo (pre-LayerNorm blocks, every matrix
preconditioned by the Kronecker methods) learns the next character of windows of the
standard-library source (``stdlib-chars``). Every comparison runs the tuning protocol of
:mod:`precond_lab.tuning` through ``precond_lab.tasks.tune``: one log₂ learning-rate grid shared
by the methods, extended until the optimum is interior (bounded), warmup and cosine decay,
selection on seed 0, three fresh seeds paired across methods (same initialisation and
batches), and decisions on the paired differences of the held-out loss (5,000 windows in
``medium``) with 95 % t-intervals against a practical threshold of 0.01 nats.

Comparisons (``comparison`` coordinate):

* ``p1_w<d>`` — AdamW, KL-Shampoo, grafted Shampoo, SOAP, KL-SOAP and VN-Shampoo, each at
  its own selected rate: **P1-16** (stable without grafting, less state), **P1-18**
  (KL-Shampoo better than SOAP, grafted Shampoo and KL-SOAP), **P1-21** training part.
* ``nograft_w<d>`` — Shampoo p = ½ without grafting at damping ε ∈ {1e-12, 1e-8, 1e-4}
  over the whole grid, against grafted Shampoo: **P1-17** (fails or is not competitive at
  every setting).
* ``p4_w<d>`` for every width — F-, VN-, SQ- and KL-Shampoo at **one shared rate per
  width** (P4's setting): **P4-39** (SQ and KL better than F and VN at every width).

The preconditioner probe (no verdict) scores each probed optimiser's own preconditioner
against the gradient second moment and the Gauss–Newton matrix along one run at its
selected rate, next to the batch optima of the same targets.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import xarray as xr

from precond_lab import study
from precond_lab.provenance import make_attrs
from precond_lab.study import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    PARTIAL,
    TestKind,
    claim_verdict,
    save_figures,
    unresolved_note,
    verdict_of,
)
from precond_lab.tasks import (
    NOGRAFT_DAMPING,
    Task,
    Tuning,
    grid_text,
    optimizer,
    pair,
    tolerance,
    tune_all,
)
from precond_lab.train import Probe
from precond_lab.tuning import Decision, unstack

NAME = "train_lm"
TITLE = "Training a character transformer: KL-Shampoo, Shampoo, SOAP, trace-power family"

P1_METHODS = ("adamw", "kl_shampoo", "shampoo_graft", "soap", "kl_soap", "vn_shampoo")


def nograft(damping=NOGRAFT_DAMPING) -> tuple[str, ...]:
    """The names of Shampoo without grafting at these damping values."""
    return tuple(f"shampoo_nograft_eps{e:g}" for e in damping)


NOGRAFT = nograft()
P4_METHODS = ("kl_shampoo", "sq_shampoo", "vn_shampoo", "f_shampoo")
PROBED = ("kl_shampoo", "soap", "shampoo_graft")
#: How the papers' settings differ from every preset here.
PAPERS = (
    "P1: 123M–227M-parameter LMs on web text, 150-run random searches over several "
    "hyper-parameters; P4: GPT-2 widths 256–1536, 5,100 updates, one run per configuration"
)


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """One run of the study.

    Attributes:
        widths: transformer widths; the P4 comparison runs at each, the P1 comparisons at
            ``p1_width``.
        p1_width: the width of the P1 comparisons.
        blocks: transformer blocks.
        heads: attention heads.
        steps: updates per run.
        batch_size: windows per mini-batch.
        eval_samples: held-out windows of the final loss.
        tuning: the protocol's settings.
        p4_bounds: the initial grid of the P4 comparison per width (None: ``tuning``'s).
        nograft_damping: the damping values ε of Shampoo without grafting (P1-17).
        probe_steps: steps at which the probed optimisers' preconditioners are scored
            (empty: no probe).
        probe_samples: examples behind each probe target.
        probe_targets: the probe's targets (:data:`precond_lab.train.PROBE_TARGETS`).
    """

    widths: tuple[int, ...]
    p1_width: int
    blocks: int
    heads: int
    steps: int
    tuning: Tuning
    batch_size: int = 32
    eval_samples: int = 5000
    p4_bounds: tuple | None = None
    nograft_damping: tuple[float, ...] = NOGRAFT_DAMPING
    probe_steps: tuple[int, ...] = ()
    probe_samples: int = 64
    probe_targets: tuple[str, ...] = ("gradients", "ggn-mc")

    def task(self, width: int) -> Task:
        return Task(
            f"char_lm_w{width}_b{self.blocks}_s{self.steps}",
            "transformer",
            "stdlib-chars",
            (("width", width), ("heads", self.heads), ("blocks", self.blocks)),
            self.steps,
            self.batch_size,
            eval_samples=self.eval_samples,
        )

    def plan(self) -> dict:
        w = self.p1_width
        plan = {
            f"p1_w{w}": (self.task(w), P1_METHODS, self.tuning, False),
            f"nograft_w{w}": (
                self.task(w),
                ("shampoo_graft", *nograft(self.nograft_damping)),
                self.tuning,
                False,
            ),
        }
        for width in self.widths:
            tuning = self.tuning
            if self.p4_bounds is not None:
                tuning = dataclasses.replace(tuning, lr_bounds=dict(self.p4_bounds)[width])
            plan[f"p4_w{width}"] = (self.task(width), P4_METHODS, tuning, True)
        return plan


PRESETS = {
    "test": Config(
        widths=(8,),
        p1_width=8,
        blocks=1,
        heads=2,
        steps=12,
        batch_size=8,
        eval_samples=64,
        tuning=Tuning((2**-7, 2**-6), max_extensions=1, workers=1),
        probe_steps=(0, 6),
        probe_samples=16,
        probe_targets=("gradients",),
    ),
    "quick": Config(
        widths=(16,),
        p1_width=16,
        blocks=1,
        heads=2,
        steps=200,
        eval_samples=2000,
        tuning=Tuning((2**-10, 2**-6), max_extensions=2),
        probe_steps=(0, 50, 200),
    ),
    # Width 64 is left to "full": measured here, a 1,500-step KL-Shampoo run of the two-block
    # transformer costs ~150 s at width 64 on one core (~60 s at width 32), so the P4
    # comparison there alone (≥ 24 runs) would take the whole hour.
    "medium": Config(
        widths=(32,),
        p1_width=32,
        blocks=2,
        heads=4,
        steps=1500,
        tuning=Tuning((2**-10, 2**-7), max_extensions=3),
        nograft_damping=(1e-12, 1e-6),
    ),
    "full": Config(
        widths=(64, 128, 256),
        p1_width=128,
        blocks=4,
        heads=4,
        steps=5000,
        batch_size=64,
        eval_samples=10000,
        tuning=Tuning((2**-12, 2**-6), max_extensions=3, seeds=(1, 2, 3, 4, 5), workers=1),
        probe_steps=(0, 500, 2500, 5000),
        probe_samples=256,
    ),
}


def run(config: Config = PRESETS["quick"], log=None, **overrides) -> xr.Dataset:
    """Run (or resume) every comparison; returns the study's Dataset."""
    config = dataclasses.replace(config, **overrides)
    ds = tune_all(config.plan(), log=log)
    if config.probe_steps:
        comp = f"p1_w{config.p1_width}"
        task = config.task(config.p1_width)
        probe = Probe(
            steps=config.probe_steps,
            layers=("blocks/0/q/w", "blocks/0/fc/w"),
            targets=config.probe_targets,
            num_samples=config.probe_samples,
            mc_samples=2,
        )
        sel = unstack(ds, comp)["selected_lr"]
        names = [m for m in PROBED if np.isfinite(float(sel.sel({"method": m})))]
        probes = [task.probe(m, float(sel.sel({"method": m})), probe) for m in names]
        if probes:
            p = xr.concat(probes, dim="probe_method").assign_coords(probe_method=names)
            p = p.rename(
                step="probe_step",
                layer="probe_layer",
                target="probe_target",
                estimator="probe_estimator",
            )
            ds["probe_score"] = p.drop_vars([c for c in p.coords if c not in p.dims])
    ds.attrs.update(
        make_attrs(
            TITLE,
            source="stdlib-chars",
            widths=",".join(map(str, config.widths)),
            p1_width=config.p1_width,
            blocks=config.blocks,
            steps=config.steps,
            batch_size=config.batch_size,
            eval_samples=config.eval_samples,
        )
    )
    return ds


def plot(ds: xr.Dataset, figdir) -> list:
    """Loss against learning rate, paired differences, and the probe."""
    figs = {f"{NAME}_tuning": _tuning_figure(ds)}
    if "probe_score" in ds:
        figs[f"{NAME}_probe"] = _probe_figure(ds)
    return save_figures(figs, figdir)


def _probe_figure(ds):
    from precond_lab.plotting import OKABE_ITO, figure, legend, style

    def color(m):
        return OKABE_ITO.get(optimizer(m).color, "#7F7F7F")

    p = ds["probe_score"]
    targets = p["probe_target"].values.tolist()
    methods = p["probe_method"].values.tolist()
    with style():
        fig, axes = figure(len(targets), len(p["probe_layer"]), panel=(3.3, 2.4))
        for i, t in enumerate(targets):
            for j, layer in enumerate(p["probe_layer"].values.tolist()):
                ax = axes[i, j]
                at = {"probe_target": t, "probe_layer": layer, "metric": "cosine"}
                for m in methods:
                    y = p.sel(probe_method=m, probe_estimator="optimizer", **at)
                    ax.plot(
                        p["probe_step"],
                        y,
                        "-o",
                        color=color(m),
                        label=f"{optimizer(m).label} (own)",
                    )
                for est, ls in (("kl_optimal", "--"), ("shampoo_squared", ":")):
                    if est in p["probe_estimator"].values:
                        y = p.sel(probe_method=methods[0], probe_estimator=est, **at)
                        ax.plot(
                            p["probe_step"],
                            y,
                            ls,
                            color="#7F7F7F",
                            label=f"batch {est} ({optimizer(methods[0]).label} run)",
                        )
                ax.set(title=f"{layer} · {t}", xlabel="step", ylabel="cosine to target")
        legend(fig, axes, ncols=3)
    return fig


def _setting(d: xr.Dataset) -> str:
    return f"{d.attrs['setting']}; {grid_text(d)}; the papers: {PAPERS}"


def _bytes(d: xr.Dataset, m: str) -> int:
    return int(d["state_bytes"].sel({"method": m}))


def verdicts(ds: xr.Dataset) -> list:
    """P1-16, P1-17, P1-18, P1-21 (training) and P4-39."""
    comps = ds["comparison"].values.tolist()
    out = []
    p1 = next((c for c in comps if c.startswith("p1_")), None)
    if p1 is not None:
        d = unstack(ds, p1)
        tol = tolerance(d)
        failed_seeds = int(d["seed_failures"].sel({"method": "kl_shampoo"}))
        interior = bool(d["interior"].sel({"method": "kl_shampoo"}))
        gf = {
            m: int(d["grid_failures"].sel({"method": m})) for m in ("kl_shampoo", "shampoo_graft")
        }
        mem = {m: _bytes(d, m) for m in ("kl_shampoo", "shampoo_graft", "soap")}
        less = mem["kl_shampoo"] < min(mem["shampoo_graft"], mem["soap"])
        stable = failed_seeds == 0 and interior and gf["kl_shampoo"] <= gf["shampoo_graft"]
        _, vs = pair(d, "kl_shampoo", "shampoo_graft")
        verdict = HOLDS if stable and less else FAILS if failed_seeds else PARTIAL
        out.append(
            claim_verdict(
                "P1-16",
                verdict,
                f"{p1}: KL-Shampoo (no grafting) failed {failed_seeds} of "
                f"{d.sizes['seed'] - 1} fresh seeds at its rate "
                f"({'interior' if interior else 'grid edge'}) and {gf['kl_shampoo']} of "
                f"{int(d['ran'].sel({'method': 'kl_shampoo'}).isel(seed=0).sum())} grid runs "
                f"(grafted Shampoo {gf['shampoo_graft']}); state KiB "
                + ", ".join(f"{m} {b / 1024:.1f}" for m, b in mem.items())
                + f"; for reference {vs}",
                "holds: no failed fresh seed, an interior optimum, no more grid failures than "
                "grafted Shampoo, and less optimiser state than grafted Shampoo and SOAP",
                kind=TestKind.PROXY,
                setting=_setting(d),
            )
        )
        decisions, texts = zip(
            *(pair(d, "kl_shampoo", r) for r in ("soap", "shampoo_graft", "kl_soap")),
            strict=True,
        )
        v = verdict_of(decisions)
        out.append(
            claim_verdict(
                "P1-18",
                v,
                f"{unresolved_note(v)}{p1}: " + "; ".join(texts),
                f"{tol}; holds: better than every rival",
                kind=TestKind.PROXY,
                setting=_setting(d),
            )
        )
        decisions, texts = zip(
            pair(d, "kl_shampoo", "vn_shampoo"), pair(d, "vn_shampoo", "soap"), strict=True
        )
        v = verdict_of(decisions)
        out.append(
            claim_verdict(
                "P1-21-train",
                v,
                f"{unresolved_note(v)}{p1}: " + "; ".join(texts),
                f"{tol}; holds: both better",
                kind=TestKind.PROXY,
                setting=_setting(d),
            )
        )
    ng = next((c for c in comps if c.startswith("nograft_")), None)
    if ng is not None:
        out.append(_p1_17(unstack(ds, ng), ng))
    p4 = [c for c in comps if c.startswith("p4_")]
    if p4:
        decisions, texts = [], []
        for c in p4:
            d = unstack(ds, c)
            for a in ("sq_shampoo", "kl_shampoo"):
                for b in ("f_shampoo", "vn_shampoo"):
                    dec, text = pair(d, a, b)
                    decisions.append(dec)
                    texts.append(f"{c} {text}")
        v = verdict_of(decisions)
        widths_note = ""
        if len(p4) == 1 and v == HOLDS:  # the claim is "at every width"
            v = PARTIAL
            widths_note = "one width only (the claim is at every width; full runs three); "
        n_better = sum(x == Decision.BETTER for x in decisions)
        out.append(
            claim_verdict(
                "P4-39",
                v,
                f"{unresolved_note(v)}{widths_note}SQ/KL better in {n_better}/{len(decisions)} "
                "pairs; " + "; ".join(texts),
                f"{tolerance(d)}; one shared rate per width (P4's setting); holds: SQ and KL "
                "better than F and VN at every width",
                kind=TestKind.PROXY,
                setting="; ".join(_setting(unstack(ds, c)) for c in p4),
            )
        )
    return out


def _p1_17(d: xr.Dataset, comp: str):
    """Shampoo without grafting fails or is not competitive at every grid point and ε."""
    thr = float(d.attrs["threshold"])
    best_graft = float(np.nanmin(d["loss"].sel({"method": "shampoo_graft"}).isel(seed=0).values))
    points = bad = 0
    decisions, texts = [], []
    variants = [m for m in d["method"].values.tolist() if m.startswith("shampoo_nograft_eps")]
    for m in variants:
        ran = d["ran"].sel({"method": m}).isel(seed=0).values.astype(bool)
        loss = d["loss"].sel({"method": m}).isel(seed=0).values[ran]
        points += int(ran.sum())
        bad += int(np.sum(~np.isfinite(loss) | (loss > best_graft + thr)))
        if np.isfinite(float(d["selected_lr"].sel({"method": m}))):
            dec, text = pair(d, m, "shampoo_graft")
            decisions.append(dec)
            texts.append(text)
        else:
            texts.append(f"{m}: every grid run failed")
    fails = int(sum(int(d["grid_failures"].sel({"method": m})) for m in variants))
    if bad == points and all(x == Decision.WORSE for x in decisions):
        verdict = HOLDS
    elif any(x in (Decision.TIE, Decision.BETTER) for x in decisions):
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return claim_verdict(
        "P1-17",
        verdict,
        f"{unresolved_note(verdict)}{comp}: without grafting (ε ∈ "
        f"{{{', '.join(m.removeprefix('shampoo_nograft_eps') for m in variants)}}}) {fails} of "
        f"{points} grid runs "
        f"failed and {bad} of {points} failed or ended above grafted Shampoo's best "
        f"selection-seed loss {best_graft:.4f} + {thr:g}; at each ε's best rate: "
        + "; ".join(texts),
        f"holds: every grid point and ε fails or is not competitive, and each ε's best rate "
        f"is worse than grafted Shampoo on fresh seeds; {tolerance(d)}",
        kind=TestKind.PROXY,
        setting=_setting(d),
    )


def _tuning_figure(ds):
    from precond_lab.plotting import plot_tuning, style

    with style():
        return plot_tuning(ds)
