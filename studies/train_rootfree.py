"""Root-free training proxies: RF-RMSProp and IF-Shampoo on a CNN, a patch transformer, an LSTM.

Three tasks that fit a laptop stand in for P2's: the capture package's CNN on the shipped
MNIST images (for CIFAR-100 CNNs), a one-block patch transformer on the same images (for
the vision transformers on ImageWoof) and a one-layer LSTM on the standard-library
characters (for the 3-layer LSTM). Every method gets the same random learning-rate search
(log-uniform; trials use seed 0), the best learning rate is rerun with further seeds and
failures are counted. Baselines: SGD with momentum, AdamW, and sign descent with momentum
(the sign without adaptivity) for P2-32; Shampoo p=½ with grafting is the root-based
matrix method on the patch transformer.

Claims (all proxies: P2 trains ResNets/ViTs for hundreds of epochs with 200-run searches):

* **P2-24** — root-free methods close the generalisation gap to SGD on CNNs: first the gap
  (SGD's test accuracy above AdamW's) must exist at this scale, then RF-RMSProp must be
  no worse than SGD.
* **P2-25** — root-free methods keep root-based performance on a vision transformer:
  RF-RMSProp and IF-Shampoo no worse than the better of AdamW and grafted Shampoo.
* **P2-26** — root-free methods also work on an LSTM: no failed seed at the best learning
  rate and a final loss no worse than AdamW's.
* **P2-32** — adaptivity, not the sign, matters: on every task RF-RMSProp (adaptive, no
  root, no sign) is no worse than AdamW, while sign descent (sign, no adaptivity) is worse.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import xarray as xr

from precond_lab.provenance import make_attrs
from precond_lab.study import FAILS, HOLDS, PARTIAL, TestKind, claim_verdict, judge, save_figures
from studies._tasks import Task, assemble, compare, failures, figures, final

NAME = "train_rootfree"
TITLE = "Training without the root: RF-RMSProp and IF-Shampoo on a CNN, a ViT and an LSTM"
INCONCLUSIVE = "inconclusive"

CNN, VIT, LSTM = "cnn_mnist", "vit_mnist", "lstm_chars"
METHODS_OF = {
    CNN: ("sgd", "adamw", "rf_rmsprop", "sign_sgd"),
    VIT: ("sgd", "adamw", "shampoo_graft", "rf_rmsprop", "if_shampoo", "sign_sgd"),
    LSTM: ("sgd", "adamw", "rf_rmsprop", "if_shampoo", "sign_sgd"),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One run of the study.

    Attributes:
        steps: updates per run (every task).
        batch_size: mini-batch size.
        trials: learning rates tried per method (the same for every method).
        seeds: seeds of the best configuration (seed 0 is its search run).
        evals: evaluation points per run.
        eval_samples: test examples per evaluation.
        cnn_channels: the CNN's channels (3×3 kernels, stride 2).
        vit_width: the patch transformer's width (7×7 patches, 2 heads).
        lstm_width: the LSTM's hidden width (embedding 16).
        methods_of: the methods per task, as ``(task, methods)`` pairs.
    """

    steps: int
    batch_size: int = 32
    trials: int = 3
    seeds: int = 2
    evals: int = 10
    eval_samples: int = 1000
    cnn_channels: tuple[int, ...] = (8, 16)
    vit_width: int = 16
    lstm_width: int = 16
    methods_of: tuple = tuple(METHODS_OF.items())

    def tasks(self) -> list[Task]:
        common = (self.steps, self.batch_size, self.evals, self.eval_samples)
        return [
            Task(CNN, "cnn", "mnist", (("channels", self.cnn_channels), ("stride", 2)), *common),
            Task(VIT, "patch_transformer", "mnist", (("width", self.vit_width),), *common),
            Task(LSTM, "lstm", "stdlib-chars", (("width", self.lstm_width),), *common),
        ]


PRESETS = {
    "test": Config(
        steps=8,
        batch_size=8,
        trials=2,
        seeds=2,
        evals=2,
        eval_samples=64,
        cnn_channels=(4,),
        vit_width=8,
        lstm_width=8,
        methods_of=(
            (CNN, ("sgd", "adamw", "rf_rmsprop", "sign_sgd")),
            (VIT, ("adamw", "if_shampoo")),
            (LSTM, ("adamw", "rf_rmsprop")),
        ),
    ),
    "quick": Config(steps=300),
    "full": Config(
        steps=3000,
        batch_size=128,
        trials=20,
        seeds=3,
        evals=20,
        eval_samples=4000,
        cnn_channels=(32, 64, 64),
        vit_width=64,
        lstm_width=64,
    ),
}


def run(config: Config = PRESETS["quick"], log=None, **overrides) -> xr.Dataset:
    """Train every method on every task; returns the study's Dataset."""
    config = dataclasses.replace(config, **overrides)
    ds = assemble(config.tasks(), dict(config.methods_of), config.trials, config.seeds, log)
    ds.attrs.update(
        make_attrs(
            TITLE,
            source="mnist, stdlib-chars",
            steps=config.steps,
            batch_size=config.batch_size,
            trials=config.trials,
            seeds=config.seeds,
        )
    )
    return ds


def plot(ds: xr.Dataset, figdir) -> list:
    """Curves with seed bands and the summary bars (final metrics, failures, time, memory)."""
    return save_figures(figures(ds, NAME), figdir)


def _setting(ds, what: str) -> str:
    return (
        f"{what}, {ds.attrs.get('steps')} steps of batch {ds.attrs.get('batch_size')}, "
        f"{ds.attrs.get('trials')} learning rates per method, {ds.attrs.get('seeds')} seeds; "
        "the paper: full trainings with 200-run searches"
    )


def _has(ds, task, *methods) -> bool:
    if task not in ds["task"].values:
        return False
    names = ds["optimizer"].values.tolist()
    return all(m in names and int(ds["used"].sel(task=task, optimizer=m)) for m in methods)


def _fmt(ds, task, m, var):
    mean, sd = final(ds, task, m, var)
    return f"{m} {mean:.3f}±{sd:.3f}" if np.isfinite(mean) else f"{m} failed"


TOL = "a difference counts when the seed means differ by ≥ 1 combined seed std"


def verdicts(ds: xr.Dataset) -> list:
    """P2-24, P2-25, P2-26 and P2-32 from the Dataset."""
    out = []
    acc = "final_accuracy"
    if _has(ds, CNN, "sgd", "adamw", "rf_rmsprop"):
        gap, gm = compare(ds, CNN, "sgd", "adamw", acc, lower_is_better=False)
        rf, rm = compare(ds, CNN, "rf_rmsprop", "sgd", acc, lower_is_better=False)
        if gap != "better":
            verdict = INCONCLUSIVE
        else:
            verdict = judge(rf in ("better", "tie"))
        accs = ", ".join(_fmt(ds, CNN, m, acc) for m in ("sgd", "adamw", "rf_rmsprop"))
        ev = (
            f"test accuracy {accs}; SGD vs AdamW {gap} ({gm:+.1f} std), "
            f"RF-RMSProp vs SGD {rf} ({rm:+.1f} std)"
            + ("" if gap == "better" else "; no SGD–AdamW gap at this scale, nothing to close")
        )
        out.append(
            claim_verdict(
                "P2-24",
                verdict,
                ev,
                f"gap first, then RF no worse than SGD; {TOL}",
                kind=TestKind.PROXY,
                setting=_setting(ds, "CNN (2 conv layers) on 4,000 MNIST images"),
            )
        )
    if _has(ds, VIT, "adamw") and (_has(ds, VIT, "rf_rmsprop") or _has(ds, VIT, "if_shampoo")):
        roots = [m for m in ("adamw", "shampoo_graft") if _has(ds, VIT, m)]
        best_root = max(
            roots,
            key=lambda m: (
                final(ds, VIT, m, acc)[0] if np.isfinite(final(ds, VIT, m, acc)[0]) else -np.inf
            ),
        )
        rfs = [m for m in ("rf_rmsprop", "if_shampoo") if _has(ds, VIT, m)]
        res = {m: compare(ds, VIT, m, best_root, acc, lower_is_better=False) for m in rfs}
        ok = [r[0] in ("better", "tie") for r in res.values()]
        ev = f"test accuracy {', '.join(_fmt(ds, VIT, m, acc) for m in roots + rfs)}; " + ", ".join(
            f"{m} vs {best_root} {r[0]} ({r[1]:+.1f} std)" for m, r in res.items()
        )
        out.append(
            claim_verdict(
                "P2-25",
                judge(all(ok), any(ok)),
                ev,
                f"every root-free method no worse than the better root-based one; {TOL}",
                kind=TestKind.PROXY,
                setting=_setting(ds, "one-block patch transformer (16 patches of 7×7) on MNIST"),
            )
        )
    if _has(ds, LSTM, "adamw", "rf_rmsprop"):
        rfs = [m for m in ("rf_rmsprop", "if_shampoo") if _has(ds, LSTM, m)]
        rows, ok = [], []
        for m in rfs:
            fails = int(ds["seed_failed"].sel(task=LSTM, optimizer=m).sum())
            r, mg = compare(ds, LSTM, m, "adamw")
            nf, nr = failures(ds, LSTM, m)
            ok.append(fails == 0 and r in ("better", "tie"))
            rows.append(f"{m}: failed {nf}/{nr} runs, vs AdamW {r} ({mg:+.1f} std)")
        ev = (
            f"test loss {', '.join(_fmt(ds, LSTM, m, 'final_loss') for m in ['adamw', *rfs])}; "
            + "; ".join(rows)
        )
        out.append(
            claim_verdict(
                "P2-26",
                judge(all(ok), any(ok)),
                ev,
                f"no failed seed at the best lr and no worse than AdamW; {TOL}",
                kind=TestKind.PROXY,
                setting=_setting(ds, "one-layer LSTM on stdlib characters (the paper: 3 layers)"),
            )
        )
    tasks = [t for t in (CNN, VIT, LSTM) if _has(ds, t, "adamw", "rf_rmsprop", "sign_sgd")]
    if tasks:
        rf = {t: compare(ds, t, "rf_rmsprop", "adamw") for t in tasks}
        sign = {t: compare(ds, t, "sign_sgd", "adamw") for t in tasks}
        rf_ok = [r[0] in ("better", "tie") for r in rf.values()]
        sign_bad = [r[0] == "worse" for r in sign.values()]
        if all(rf_ok) and all(sign_bad):
            verdict = HOLDS
        elif any(rf_ok) and any(sign_bad):
            verdict = PARTIAL
        elif not any(sign_bad) and all(rf_ok):
            verdict = INCONCLUSIVE  # the sign alone is as good: nothing separates the two
        else:
            verdict = FAILS
        ev = "; ".join(
            f"{t}: RF-RMSProp vs AdamW {rf[t][0]} ({rf[t][1]:+.1f} std), sign descent vs AdamW "
            f"{sign[t][0]} ({sign[t][1]:+.1f} std)"
            for t in tasks
        )
        out.append(
            claim_verdict(
                "P2-32",
                verdict,
                ev,
                f"holds: RF no worse than AdamW and sign descent worse, on every task (test loss); "
                f"{TOL}",
                kind=TestKind.PROXY,
                setting=_setting(ds, f"the tasks {', '.join(tasks)}")
                + "; an interpretation, tested here by ablating adaptivity (sign descent) and the "
                "root (RF-RMSProp)",
            )
        )
    return out
