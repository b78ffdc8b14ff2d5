"""Language-model training proxy: KL-Shampoo vs Shampoo, SOAP, KL-SOAP and the trace-power family.

A character-level transformer (the capture package's ``transformer``) is trained on the
standard-library text (``stdlib-chars``: next character after 16 characters) at one or more
widths. Every method gets the same random learning-rate search (log-uniform; trials use
seed 0), the best learning rate is rerun with further seeds, and failures (NaN, a loss
above 10× the first, or a final test loss above the initial one) are counted. Kronecker
methods precondition matrices with both sides ≤ 64 and give the others (embedding, head,
biases) AdamW, as the optimisers' fallback does.

Claims (all proxies: the papers train 123M–227M-parameter models on web text for
thousands of steps, with 150-run searches over several hyper-parameters):

* **P1-16** — KL-Shampoo trains without Adam grafting (no failed run at the best learning
  rate, final loss no worse than grafted Shampoo by more than the seed spread) and keeps
  less optimiser state than grafted Shampoo and SOAP (no ``m×n`` Adam second moment).
* **P1-17** — Shampoo with p = ½ and no grafting fails: the share of failed runs.
* **P1-18** — KL-Shampoo reaches a lower final loss than SOAP, grafted Shampoo and KL-SOAP.
* **P1-21 (training)** — KL-Shampoo beats VN-Shampoo, and VN-Shampoo beats SOAP.
* **P4-39** — SQ- and KL-Shampoo reach a lower final loss than F- and VN-Shampoo, at every
  width.

Also recorded (no verdict): how well each Kronecker optimiser's own preconditioner
approximates the gradient second moment and the Gauss–Newton matrix along its trajectory,
next to the batch optima of the same targets (:class:`precond_lab.train.Probe`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import xarray as xr

from precond_lab.provenance import make_attrs
from precond_lab.study import FAILS, HOLDS, PARTIAL, TestKind, claim_verdict, judge, save_figures
from precond_lab.train import Probe
from studies._tasks import METHODS, Task, assemble, compare, failures, figures, final, probe_run

NAME = "train_lm"
TITLE = "Training a character transformer: KL-Shampoo, Shampoo, SOAP, trace-power family"

METHOD_NAMES = (
    "adamw",
    "kl_shampoo",
    "shampoo_graft",
    "shampoo_nograft",
    "soap",
    "kl_soap",
    "vn_shampoo",
    "f_shampoo",
    "sq_shampoo",
)
PROBED = ("kl_shampoo", "soap", "shampoo_graft")
INCONCLUSIVE = "inconclusive"


@dataclasses.dataclass(frozen=True)
class Config:
    """One run of the study.

    Attributes:
        widths: transformer widths (one task each; 1 block, 2 heads).
        steps: updates per run.
        batch_size: sequences per mini-batch.
        trials: learning rates tried per method (the same for every method).
        seeds: seeds of the best configuration (seed 0 is its search run).
        evals: evaluation points per run.
        eval_samples: test windows per evaluation.
        methods: the methods compared.
        probe_steps: steps at which the probed optimisers' preconditioners are scored
            (empty: no probe).
        probe_samples: examples behind each probe target.
        probe_targets: the probe's targets (:data:`precond_lab.train.PROBE_TARGETS`).
    """

    widths: tuple[int, ...]
    steps: int
    batch_size: int = 32
    trials: int = 3
    seeds: int = 2
    evals: int = 10
    eval_samples: int = 1000
    methods: tuple[str, ...] = METHOD_NAMES
    probe_steps: tuple[int, ...] = ()
    probe_samples: int = 64
    probe_targets: tuple[str, ...] = ("gradients", "ggn-mc")

    def tasks(self) -> list[Task]:
        return [
            Task(
                f"char_lm_w{w}",
                "transformer",
                "stdlib-chars",
                (("width", w), ("heads", 2), ("blocks", 1)),
                self.steps,
                self.batch_size,
                self.evals,
                self.eval_samples,
            )
            for w in self.widths
        ]


PRESETS = {
    "test": Config(
        widths=(8,),
        steps=12,
        batch_size=8,
        trials=2,
        seeds=2,
        evals=3,
        eval_samples=64,
        methods=("adamw", "kl_shampoo", "shampoo_nograft", "vn_shampoo"),
        probe_steps=(0, 6),
        probe_samples=16,
        probe_targets=("gradients",),
    ),
    "quick": Config(widths=(16,), steps=300, trials=3, seeds=2, probe_steps=(0, 50, 150, 300)),
    "full": Config(
        widths=(32, 64, 128),
        steps=3000,
        batch_size=64,
        trials=20,
        seeds=3,
        evals=20,
        eval_samples=4000,
        probe_steps=(0, 100, 500, 1000, 2000, 3000),
        probe_samples=256,
    ),
}


def run(config: Config = PRESETS["quick"], log=None, **overrides) -> xr.Dataset:
    """Train every method on every width; returns the study's Dataset."""
    config = dataclasses.replace(config, **overrides)
    tasks = config.tasks()
    ds = assemble(tasks, {t.name: config.methods for t in tasks}, config.trials, config.seeds, log)
    if config.probe_steps:
        probes = []
        task = tasks[-1]
        layers = ("blocks/0/q/w", "blocks/0/fc/w")
        probe = Probe(
            steps=config.probe_steps,
            layers=layers,
            targets=config.probe_targets,
            num_samples=config.probe_samples,
            mc_samples=2,
        )
        names = [m for m in PROBED if m in config.methods]
        for m in names:
            lr = float(ds["best_lr"].sel(task=task.name, optimizer=m))
            probes.append(probe_run(task, METHODS[m], lr, probe))
        if probes:
            p = xr.concat(probes, dim="probe_method").assign_coords(probe_method=names)
            p = p.rename(
                step="probe_step",
                layer="probe_layer",
                target="probe_target",
                estimator="probe_estimator",
            )
            ds["probe_score"] = p.drop_vars([c for c in p.coords if c not in p.dims])
            ds = ds.assign_coords(probe_task=task.name)
    ds.attrs.update(
        make_attrs(
            TITLE,
            source="stdlib-chars",
            widths=",".join(map(str, config.widths)),
            steps=config.steps,
            batch_size=config.batch_size,
            trials=config.trials,
            seeds=config.seeds,
        )
    )
    return ds


def plot(ds: xr.Dataset, figdir) -> list:
    """Curves, summary bars, and the probe (own preconditioner vs batch optima)."""
    figs = figures(ds, NAME)
    if "probe_score" in ds:
        figs[f"{NAME}_probe"] = _probe_figure(ds)
    return save_figures(figs, figdir)


def _probe_figure(ds):
    from precond_lab.plotting import OKABE_ITO, figure, legend, style

    p = ds["probe_score"]
    targets = p["probe_target"].values.tolist()
    methods = p["probe_method"].values.tolist()
    colors = [OKABE_ITO[METHODS[m].color] for m in methods]
    with style():
        fig, axes = figure(len(targets), len(p["probe_layer"]), panel=(3.3, 2.4))
        for i, t in enumerate(targets):
            for j, layer in enumerate(p["probe_layer"].values.tolist()):
                ax = axes[i, j]
                for m, c in zip(methods, colors, strict=True):
                    y = p.sel(
                        probe_method=m,
                        probe_target=t,
                        probe_layer=layer,
                        metric="cosine",
                        probe_estimator="optimizer",
                    )
                    ax.plot(p["probe_step"], y, "-o", color=c, label=f"{METHODS[m].label} (own)")
                for est, ls in (("kl_optimal", "--"), ("shampoo_squared", ":")):
                    if est in p["probe_estimator"].values:
                        y = p.sel(
                            probe_method=methods[0],
                            probe_target=t,
                            probe_layer=layer,
                            metric="cosine",
                            probe_estimator=est,
                        )
                        ax.plot(
                            p["probe_step"],
                            y,
                            ls,
                            color="#7F7F7F",
                            label=f"batch {est} ({METHODS[methods[0]].label} run)",
                        )
                ax.set(title=f"{layer} · {t}", xlabel="step", ylabel="cosine to target")
        legend(fig, axes, ncols=3)
    return fig


def _setting(ds) -> str:
    return (
        f"character transformer (1 block, widths {ds.attrs.get('widths')}) on stdlib text, "
        f"{ds.attrs.get('steps')} steps of batch {ds.attrs.get('batch_size')}, "
        f"{ds.attrs.get('trials')} learning rates per method, {ds.attrs.get('seeds')} seeds; "
        "the papers: 123M–227M-parameter LMs, 150-run searches"
    )


def _fmt(ds, task, m):
    mean, sd = final(ds, task, m)
    return f"{m} {mean:.3f}±{sd:.3f}" if np.isfinite(mean) else f"{m} failed"


def verdicts(ds: xr.Dataset) -> list:
    """P1-16, P1-17, P1-18, P1-21 (training) and P4-39 from the Dataset."""
    tasks = ds["task"].values.tolist()
    methods = ds["optimizer"].values.tolist()
    setting = _setting(ds)
    tol = "a difference counts when the seed means differ by ≥ 1 combined seed std"
    out = []

    def have(*ms):
        return all(m in methods for m in ms)

    if have("kl_shampoo", "shampoo_graft", "soap"):
        rows, ok_all = [], []
        for t in tasks:
            nfail, nrun = failures(ds, t, "kl_shampoo")
            seed_fail = int(ds["seed_failed"].sel(task=t, optimizer="kl_shampoo").sum())
            res, margin = compare(ds, t, "kl_shampoo", "shampoo_graft")
            mem = {
                m: int(ds["state_bytes"].sel(task=t, optimizer=m))
                for m in ("kl_shampoo", "shampoo_graft", "soap")
            }
            less = mem["kl_shampoo"] < min(mem["shampoo_graft"], mem["soap"])
            ok_all.append(seed_fail == 0 and res in ("better", "tie") and less)
            rows.append(
                f"{t}: KL-Shampoo failed {nfail}/{nrun} runs "
                f"({seed_fail} failed seeds at the best lr), "
                f"vs grafted Shampoo {res} ({margin:+.1f} std); state KiB: "
                + ", ".join(f"{m} {b / 1024:.1f}" for m, b in mem.items())
            )
        out.append(
            claim_verdict(
                "P1-16",
                judge(all(ok_all), any(ok_all)),
                "; ".join(rows),
                "no failed seed at the best lr, not worse than grafted Shampoo, less state "
                f"than grafted Shampoo and SOAP; {tol}",
                kind=TestKind.PROXY,
                setting=setting,
            )
        )
    if have("shampoo_nograft"):
        counts = [failures(ds, t, "shampoo_nograft") for t in tasks]
        nfail, nrun = sum(c[0] for c in counts), sum(c[1] for c in counts)
        ref = [failures(ds, t, "shampoo_graft") for t in tasks] if have("shampoo_graft") else []
        verdict = HOLDS if nfail == nrun else PARTIAL if 2 * nfail > nrun else FAILS
        extra = (
            f"; grafted Shampoo failed {sum(c[0] for c in ref)}/{sum(c[1] for c in ref)}"
            if ref
            else ""
        )
        extra += "; final test loss " + ", ".join(
            f"{t}: "
            + ", ".join(
                _fmt(ds, t, m) for m in ("shampoo_nograft", "shampoo_graft") if m in methods
            )
            for t in tasks
        )
        out.append(
            claim_verdict(
                "P1-17",
                verdict,
                f"Shampoo p=½ without grafting failed {nfail}/{nrun} runs{extra}",
                "holds: every run fails (NaN, loss > 10× the first, or ends worse than it "
                "started); partial: most do",
                kind=TestKind.PROXY,
                setting=setting,
            )
        )
    rivals = [m for m in ("soap", "shampoo_graft", "kl_soap") if m in methods]
    if "kl_shampoo" in methods and rivals:
        res = {(t, r): compare(ds, t, "kl_shampoo", r) for t in tasks for r in rivals}
        wins = sum(v[0] == "better" for v in res.values())
        losses = sum(v[0] == "worse" for v in res.values())
        verdict = (
            HOLDS
            if wins == len(res)
            else FAILS
            if losses == len(res)
            else PARTIAL
            if wins
            else INCONCLUSIVE
        )
        ev = "; ".join(
            f"{t}: " + ", ".join(_fmt(ds, t, m) for m in ("kl_shampoo", *rivals)) for t in tasks
        )
        out.append(
            claim_verdict(
                "P1-18",
                verdict,
                f"final test loss (mean±std over seeds) {ev}; KL-Shampoo "
                f"better in {wins}/{len(res)} comparisons, worse in {losses}",
                f"holds: better than every rival at every width; {tol}; inconclusive: "
                "no difference beyond the seed spread",
                kind=TestKind.PROXY,
                setting=setting,
            )
        )
    if have("kl_shampoo", "vn_shampoo"):
        a = [compare(ds, t, "kl_shampoo", "vn_shampoo") for t in tasks]
        b = [compare(ds, t, "vn_shampoo", "soap") for t in tasks] if have("soap") else []
        ok = [x[0] == "better" for x in a + b]
        bad = [x[0] == "worse" for x in a + b]
        verdict = HOLDS if all(ok) else FAILS if all(bad) else PARTIAL if any(ok) else INCONCLUSIVE
        ev = "; ".join(
            f"{t}: KL vs VN {x[0]} ({x[1]:+.1f} std)"
            + (f", VN vs SOAP {y[0]} ({y[1]:+.1f} std)" if b else "")
            for t, x, y in zip(tasks, a, b or [None] * len(a), strict=True)
        )
        out.append(
            claim_verdict("P1-21-train", verdict, ev, tol, kind=TestKind.PROXY, setting=setting)
        )
    if have("kl_shampoo", "sq_shampoo", "vn_shampoo", "f_shampoo"):
        pairs = [
            (t, a, b)
            for t in tasks
            for a in ("sq_shampoo", "kl_shampoo")
            for b in ("f_shampoo", "vn_shampoo")
        ]
        res = [compare(ds, t, a, b)[0] for t, a, b in pairs]
        wins, losses = res.count("better"), res.count("worse")
        verdict = (
            HOLDS
            if wins == len(res)
            else FAILS
            if losses == len(res)
            else PARTIAL
            if wins > losses
            else INCONCLUSIVE
            if not losses
            else FAILS
        )
        ev = "; ".join(
            f"{t}: "
            + ", ".join(
                _fmt(ds, t, m) for m in ("kl_shampoo", "sq_shampoo", "vn_shampoo", "f_shampoo")
            )
            for t in tasks
        )
        out.append(
            claim_verdict(
                "P4-39",
                verdict,
                f"final test loss {ev}; SQ/KL better in {wins}/{len(res)} pairs, worse in {losses}",
                f"holds: SQ and KL better than F and VN at every width; {tol}",
                kind=TestKind.PROXY,
                setting=setting,
            )
        )
    return out
