"""Training without the root: RF-RMSProp and IF-Shampoo against AdamW, SGD and sign descent.

Every comparison runs the tuning protocol of :mod:`precond_lab.tuning` through
``precond_lab.tasks.tune`` (one log₂ grid shared by the methods with an interior optimum,
warmup and cosine decay, selection on seed 0, three fresh paired seeds, 95 % t-intervals of
the paired held-out-loss differences against 0.01 nats).

* ``lstm`` (every preset) — a one-layer LSTM of the model zoo on the standard-library
  characters: SGD with momentum, AdamW, RF-RMSProp, IF-Shampoo (on the embedding and head;
  the LSTM's gate weight is preconditioned too) and sign descent with momentum (the sign
  without adaptivity): **P2-26** and **P2-32**.
* ``cnn`` and ``vit`` (``full`` only: the papers' claims are about CIFAR-100 CNNs and
  ImageWoof ViTs trained for hundreds of epochs, GPU work) — the zoo's CNN and patch
  transformer on MNIST: **P2-24** and **P2-25**. Without them the rows say "not testable
  here" with the command that tests them.
"""

from __future__ import annotations

import dataclasses

import xarray as xr

from precond_lab import study
from precond_lab.study import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_TESTABLE_HERE,
    Outcome,
    Rule,
    TestKind,
    save_figures,
    unresolved_note,
)
from precond_lab.tasks import Task, Tuning, grid_text, pair, tolerance, tune_all
from precond_lab.tuning import Decision, unstack

NAME = "train_rootfree"
TITLE = "Training without the root: RF-RMSProp and IF-Shampoo on an LSTM (and a CNN, a ViT)"

LSTM_METHODS = ("adamw", "sgd", "rf_rmsprop", "if_shampoo", "sign_sgd")
CNN_METHODS = ("sgd", "adamw", "rf_rmsprop", "sign_sgd")
VIT_METHODS = ("adamw", "shampoo_graft", "rf_rmsprop", "if_shampoo", "sign_sgd")
PAPERS = "P2: CIFAR-100 CNNs, ImageWoof ViTs, a 3-layer LSTM; hundreds of epochs, 200-run searches"
FULL_COMMAND = "precond-lab reproduce --full --only train_rootfree (a GPU)"


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """One run of the study.

    Attributes:
        steps: updates per run.
        tuning: the protocol's settings.
        batch_size: mini-batch size.
        eval_samples: held-out examples of the final loss.
        lstm_width: the LSTM's hidden width (embedding 16).
        vision: also run the CNN and the patch transformer on MNIST (P2-24, P2-25).
        cnn_channels: the CNN's channels (3×3 kernels, stride 2).
        vit_width: the patch transformer's width (7×7 patches, 2 heads).
    """

    steps: int
    tuning: Tuning
    batch_size: int = 32
    eval_samples: int = 5000
    lstm_width: int = 32
    vision: bool = False
    cnn_channels: tuple[int, ...] = (8, 16)
    vit_width: int = 16

    def plan(self) -> dict:
        common = (self.steps, self.batch_size)
        kw = {"eval_samples": self.eval_samples}
        lstm = Task(
            f"lstm_w{self.lstm_width}_s{self.steps}",
            "lstm",
            "stdlib-chars",
            (("width", self.lstm_width),),
            *common,
            **kw,
        )
        plan = {"lstm": (lstm, LSTM_METHODS, self.tuning, False)}
        if self.vision:
            opts = (("channels", self.cnn_channels), ("stride", 2))
            cnn = Task(f"cnn_s{self.steps}", "cnn", "mnist", opts, *common, **kw)
            vit = Task(
                f"vit_w{self.vit_width}_s{self.steps}",
                "patch_transformer",
                "mnist",
                (("width", self.vit_width),),
                *common,
                **kw,
            )
            plan["cnn"] = (cnn, CNN_METHODS, self.tuning, False)
            plan["vit"] = (vit, VIT_METHODS, self.tuning, False)
        return plan


PRESETS = {
    "test": Config(
        steps=10,
        batch_size=8,
        eval_samples=64,
        lstm_width=8,
        tuning=Tuning((2**-6, 2**-5), max_extensions=1, workers=1),
    ),
    "quick": Config(steps=200, eval_samples=2000, tuning=Tuning((2**-12, 2**0), max_extensions=2)),
    "medium": Config(steps=1500, tuning=Tuning((2**-10, 2**-2), max_extensions=3)),
    "full": Config(
        steps=5000,
        batch_size=128,
        eval_samples=10000,
        lstm_width=128,
        vision=True,
        cnn_channels=(32, 64, 64),
        vit_width=64,
        tuning=Tuning((2**-14, 2**1), max_extensions=3, seeds=(1, 2, 3, 4, 5), workers=1),
    ),
}


def run(config: Config = PRESETS["quick"], log=None, **overrides) -> xr.Dataset:
    """Run (or resume) every comparison; returns the study's Dataset."""
    config = dataclasses.replace(config, **overrides)
    ds = tune_all(config.plan(), log=log)
    ds.attrs |= {"source": "stdlib-chars" + (", mnist" if config.vision else ""),
                 "steps": config.steps, "batch_size": config.batch_size,
                 "eval_samples": config.eval_samples}  # fmt: skip
    return study.dataset(ds.data_vars, ds.coords, title=TITLE, name=NAME, config=config,
                         presets=PRESETS, **study.extra_attrs(ds))  # fmt: skip


def plot(ds: xr.Dataset, figdir) -> list:
    """Loss against learning rate (failures as ×) and the paired differences."""
    return save_figures({f"{NAME}_tuning": _tuning_figure(ds)}, figdir)


def _setting(d: xr.Dataset) -> str:
    return f"{d.attrs['setting']}; {grid_text(d)}; the paper: {PAPERS}"


def _not_worse(decisions) -> str:
    if any(x == Decision.WORSE for x in decisions):
        return FAILS
    if all(x in (Decision.BETTER, Decision.TIE) for x in decisions):
        return HOLDS
    return INCONCLUSIVE


def _on(comp, decide, present=True):
    return study.on_comparison(comp, decide, _setting, present=present)


def _untestable(what: str):
    return lambda c, d: (NOT_TESTABLE_HERE, f"needs {what} at a scale this 2-core CPU cannot "
                      f"train; run {FULL_COMMAND}")  # fmt: skip


def _p2_24(c, d):
    gap, t_gap = pair(d, "sgd", "adamw")
    closes, t_rf = pair(d, "rf_rmsprop", "sgd")
    if gap != Decision.BETTER:
        v = INCONCLUSIVE if gap == Decision.UNRESOLVED else FAILS
        why = "no generalisation gap to close at this scale (SGD not better than AdamW)"
    else:
        v, why = _not_worse([closes]), "the gap exists"
    return v, f"{unresolved_note(v)}{why}: {t_gap}; {t_rf}"


def _p2_25(c, d):
    done = [pair(d, m, b) for m in ("rf_rmsprop", "if_shampoo") for b in ("adamw", "shampoo_graft")]
    v = _not_worse([x for x, _ in done])
    return v, f"{unresolved_note(v)}" + "; ".join(t for _, t in done)


def _p2_26(c, d):
    decs, texts = [], []
    for m in ("rf_rmsprop", "if_shampoo"):
        dec, text = pair(d, m, "adamw")
        failed = int(d["seed_failures"].sel({"method": m}))
        decs.append(Decision.WORSE if failed else dec)
        texts.append(f"{text}; failed fresh seeds {failed}")
    v = _not_worse(decs)
    return v, f"{unresolved_note(v)}lstm: " + "; ".join(texts)


def _p2_32(ds):
    decs, texts, comps = [], [], ds["comparison"].values.tolist()
    for c in comps:
        d = unstack(ds, c)
        if not {"rf_rmsprop", "sign_sgd"} <= set(d["method"].values.tolist()):
            continue
        (rf, t_rf), (sign, t_sign) = pair(d, "rf_rmsprop", "adamw"), pair(d, "sign_sgd", "adamw")
        decs.append((rf, sign))
        texts.append(f"{c}: {t_rf}; {t_sign}")
    if any(rf == Decision.WORSE or sign in (Decision.BETTER, Decision.TIE) for rf, sign in decs):
        v = FAILS
    elif all(rf in (Decision.BETTER, Decision.TIE) and sign == Decision.WORSE for rf, sign in decs):
        v = HOLDS
    else:
        v = INCONCLUSIVE
    return Outcome(v, f"{unresolved_note(v)}" + "; ".join(texts), tolerance(d),
                   "; ".join(_setting(unstack(ds, c)) for c in comps))  # fmt: skip


_P, _N = TestKind.PROXY, TestKind.NOT_TESTABLE
# fmt: off
RULES = (
    Rule("P2-24", _P, _on("cnn", _p2_24), "holds: SGD better than AdamW and RF-RMSProp not "
         "worse than SGD (held-out loss, not accuracy)"),
    Rule("P2-24", _N, _on("cnn", _untestable("CNN training"), present=False), setting=""),
    Rule("P2-25", _P, _on("vit", _p2_25), "holds: RF-RMSProp and IF-Shampoo not worse than AdamW "
         "and grafted Shampoo"),
    Rule("P2-25", _N, _on("vit", _untestable("vision-transformer training"), present=False),
         setting=""),
    Rule("P2-26", _P, _on("lstm", _p2_26), "holds: no failed fresh seed and not worse than AdamW"),
    Rule("P2-32", _P, _p2_32, "holds: on every task RF-RMSProp (adaptive, no root, no sign) not "
         "worse than AdamW while sign descent (sign, no adaptivity) is worse"),
)
# fmt: on


def verdicts(ds: xr.Dataset) -> list:
    """P2-24, P2-25 (``full`` only), P2-26 and P2-32."""
    return study.verdicts_from(ds, RULES)


def _tuning_figure(ds):
    from precond_lab.plotting import plot_tuning, style

    with style():
        return plot_tuning(ds)
