"""Training tasks on ``precond_lab.tuning``: optimisers, tasks, tuning presets, rows.

A *task* is a model of the zoo (``precond_lab.capture.make_model``) on a dataset with a
step budget and the papers' kind of schedule (linear warmup over 5 % of the steps, cosine
decay to 10 % of the peak). An *optimiser* is a factory of ``precond_lab.optim`` with
fixed settings. ``tune`` runs ``precond_lab.tuning.Study`` (one log₂ grid shared by
the methods, interior optimum by bounded extension, selection on seed 0, fresh paired seeds
1, 2, 3 …, every run stored as it ends under ``$PRECOND_LAB_CACHE/tuning``) and returns its
Dataset; ``pair`` turns a pair into the words better / worse / tie / unresolved with
the interval and the grid behind them (``precond_lab.study.verdict_of`` maps a claim's
decisions to a verdict; ``precond_lab.plotting.plot_tuning`` draws a tuning Dataset).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np
import optax
import xarray as xr

from . import optim as po
from .capture import load_dataset, make_model
from .provenance import cache_root
from .tuning import Decision, Protocol, Study, compare, make_schedule, model_method, stack

__all__ = [
    "NOGRAFT_DAMPING",
    "OPTIMIZERS",
    "Optimizer",
    "Task",
    "Tuning",
    "cache_dir",
    "grid_text",
    "optimizer",
    "pair",
    "sign_sgd",
    "tolerance",
    "tune",
    "tune_all",
]


# ---------------------------------------------------------------------------- optimisers
def sign_sgd(learning_rate, momentum: float = 0.9) -> optax.GradientTransformation:
    """Sign descent with momentum: the sign without adaptivity (P2-32's control)."""
    return optax.chain(
        optax.trace(decay=momentum),
        optax.scale_by_sign(),
        optax.scale_by_learning_rate(learning_rate),
    )


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optimiser factory with fixed settings, and how figures draw it.

    Attributes:
        name: the ``method`` coordinate.
        factory: a factory taking ``learning_rate`` (module-level, so worker processes
            can rebuild it).
        kwargs: fixed keyword arguments as ``(name, value)`` pairs.
        label: legend label.
        color: an Okabe–Ito colour name.
        dash: line style (the trace-power family is dashed).
    """

    name: str
    factory: Callable[..., optax.GradientTransformation]
    kwargs: tuple = ()
    label: str = ""
    color: str = "black"
    dash: str = "-"


_O = Optimizer
#: Every optimiser of the training studies (a study picks some per task). Kronecker methods
#: precondition every matrix of the model (the default ``max_dim`` covers them all).
OPTIMIZERS = {
    o.name: o
    for o in (
        _O("adamw", po.adamw, (), "AdamW", "black"),
        _O("sgd", po.sgd, (("momentum", 0.9),), "SGD (momentum)", "orange"),
        _O("sign_sgd", sign_sgd, (), "sign descent (momentum)", "yellow"),
        _O("kl_shampoo", po.kl_shampoo, (), "KL-Shampoo", "blue"),
        _O("kl_soap", po.kl_soap, (), "KL-SOAP", "sky_blue"),
        _O("soap", po.soap, (), "SOAP", "vermillion"),
        _O(
            "shampoo_graft", po.shampoo, (("graft", True),), "Shampoo ½ (grafted)", "reddish_purple"
        ),
        _O(
            "shampoo_nograft",
            po.shampoo,
            (("graft", False),),
            "Shampoo ½ (no grafting)",
            "bluish_green",
        ),
        _O("vn_shampoo", po.vn_shampoo, (), "VN-Shampoo", "orange", "--"),
        _O("f_shampoo", po.f_shampoo, (), "F-Shampoo", "yellow", "--"),
        _O("sq_shampoo", po.sq_shampoo, (), "SQ-Shampoo", "bluish_green", "--"),
        _O("rf_rmsprop", po.rf_rmsprop, (), "RF-RMSProp", "blue"),
        _O("if_shampoo", po.if_shampoo, (), "IF-Shampoo", "sky_blue"),
    )
}
#: Shampoo without grafting at these damping values ε (P1-17: "fails at every setting").
NOGRAFT_DAMPING = (1e-12, 1e-8, 1e-4)


def optimizer(name: str) -> Optimizer:
    """The optimiser ``name``: one of ``OPTIMIZERS`` or ``shampoo_nograft_eps<ε>``."""
    if name in OPTIMIZERS:
        return OPTIMIZERS[name]
    if name.startswith("shampoo_nograft_eps"):
        eps = float(name.removeprefix("shampoo_nograft_eps"))
        base = OPTIMIZERS["shampoo_nograft"]
        return dataclasses.replace(
            base,
            name=name,
            kwargs=(*base.kwargs, ("damping", eps)),
            label=f"{base.label} ε={eps:g}",
        )
    raise ValueError(f"unknown optimiser {name!r}; known: {', '.join(OPTIMIZERS)}")


# --------------------------------------------------------------------------------- tasks
@dataclasses.dataclass(frozen=True)
class Task:
    """A model of the zoo on a dataset, with the budget and schedule of every run.

    Attributes:
        name: the task's name (part of every run's cache key).
        model: a name of the model zoo.
        dataset: a name of ``precond_lab.capture.load_dataset``.
        options: the model's options as ``(name, value)`` pairs.
        steps: updates per run.
        batch_size: mini-batch size.
        warmup: warmup steps as a fraction of ``steps``.
        end_factor: the final learning rate as a fraction of the peak (cosine decay).
        eval_samples: held-out examples of the final loss (the same for every run).
    """

    name: str
    model: str
    dataset: str
    options: tuple = ()
    steps: int = 1500
    batch_size: int = 32
    warmup: float = 0.05
    end_factor: float = 0.1
    eval_samples: int = 5000

    def _kwargs(self, opt: Optimizer) -> dict:
        kw = dict(opt.kwargs)
        if opt.factory in (po.rf_rmsprop, po.if_shampoo):
            kw.setdefault("batch_size", self.batch_size)
        return kw

    def build(self):
        """The task's model."""
        return make_model(self.model, load_dataset(self.dataset), **dict(self.options))

    def method(self, name: str):
        """The ``precond_lab.tuning.Method`` of optimiser ``name`` on this task."""
        opt = optimizer(name)
        kw = self._kwargs(opt)
        factory = opt.factory
        if "batch_size" in kw:  # the root-free methods' batch size (model_method has its own)
            factory = functools.partial(factory, batch_size=kw.pop("batch_size"))
        return model_method(
            name,
            self.model,
            self.dataset,
            factory,
            steps=self.steps,
            batch_size=self.batch_size,
            warmup_steps=round(self.warmup * self.steps),
            decay="cosine",
            end_factor=self.end_factor,
            eval_samples=self.eval_samples,
            model_options=dict(self.options),
            **kw,
        )

    def state_bytes(self, name: str) -> int:
        """Bytes of the optimiser state of ``name`` for this task's parameters."""
        opt = optimizer(name)
        params = jax.eval_shape(self.build().init, jax.random.PRNGKey(0))
        state = jax.eval_shape(opt.factory(learning_rate=1e-3, **self._kwargs(opt)).init, params)
        return po.state_size(state).bytes

    def probe(self, name: str, lr: float, probe) -> xr.DataArray:
        """The ``precond_lab.train.Probe`` of one run of ``name`` at peak rate ``lr`` with
        the task's schedule (seed 0, ``precond_lab.train.train``'s batches)."""
        from .train import train

        opt = optimizer(name)
        sched = make_schedule(
            lr,
            total_steps=self.steps,
            warmup_steps=round(self.warmup * self.steps),
            decay="cosine",
            end_factor=self.end_factor,
        )
        tx = opt.factory(learning_rate=sched, **self._kwargs(opt))
        res = train(
            self.build(),
            self.dataset,
            tx,
            steps=max(probe.steps),
            batch_size=self.batch_size,
            eval_samples=0,
            probe=probe,
        )
        return res.probes

    def probes(self, rates: Mapping[str, float], probe) -> xr.DataArray | None:
        """``probe`` of each optimiser at its rate (NaN rates skipped), concatenated on
        ``probe_method`` with the probe's dims renamed ``probe_step``, ``probe_layer``,
        ``probe_target``, ``probe_estimator`` (so they sit beside a tuning Dataset)."""
        names = [m for m, lr in rates.items() if np.isfinite(lr)]
        if not names:
            return None
        p = xr.concat([self.probe(m, float(rates[m]), probe) for m in names], dim="probe_method")
        p = p.assign_coords(probe_method=names).rename(
            step="probe_step", layer="probe_layer", target="probe_target",
            estimator="probe_estimator",
        )  # fmt: skip
        return p.drop_vars([c for c in p.coords if c not in p.dims])

    def setting(self) -> str:
        opts = ", ".join(f"{k} {v}" for k, v in self.options)
        return (
            f"{self.model} ({opts}) on {self.dataset}, {self.steps} steps of batch "
            f"{self.batch_size}, warmup {self.warmup:.0%} then cosine to {self.end_factor:g}×, "
            f"held-out loss on {self.eval_samples} examples"
        )


@dataclasses.dataclass(frozen=True)
class Tuning:
    """The protocol settings of a preset (see ``precond_lab.tuning.Protocol``).

    Attributes:
        lr_bounds: ``(low, high)`` of the shared grid before extensions.
        max_extensions: one-point grid extensions allowed.
        seeds: the fresh confirmation seeds (≥ 3).
        threshold: the practical threshold δ of the decisions (nats).
        workers: worker processes.
    """

    lr_bounds: tuple[float, float]
    max_extensions: int = 3
    seeds: tuple[int, ...] = (1, 2, 3)
    threshold: float = 0.01
    workers: int = 2


def cache_dir() -> Path:
    """``$PRECOND_LAB_CACHE/tuning`` (default ``<clone>/.precond_lab_cache/tuning``)."""
    out = cache_root() / "tuning"
    out.mkdir(parents=True, exist_ok=True)
    return out


def tune(
    task: Task,
    names: Sequence[str],
    tuning: Tuning,
    *,
    shared_rate: bool = False,
    log: Callable[[str], None] | None = None,
) -> xr.Dataset:
    """Run the protocol for optimisers ``names`` on ``task`` (resumes from stored runs).

    Runs are stored per task, so comparisons on the same task share their grid runs.
    """
    protocol = Protocol(
        lr_bounds=tuning.lr_bounds,
        max_extensions=tuning.max_extensions,
        seeds=tuning.seeds,
        threshold=tuning.threshold,
        shared_rate=shared_rate,
    )
    study = Study(
        task.name,
        [task.method(n) for n in names],
        protocol,
        directory=cache_dir() / task.name,
        progress=log or True,
        workers=min(tuning.workers, len(names)),
    )
    ds = study.run()
    ds["state_bytes"] = ("method", np.array([task.state_bytes(n) for n in names], np.int64))
    ds.attrs["setting"] = task.setting()
    return ds


def tune_all(plan: Mapping[str, tuple], log=None) -> xr.Dataset:
    """``{comparison: (task, names, tuning, shared_rate)}`` → one stacked Dataset."""
    return stack({k: tune(t, n, tu, shared_rate=s, log=log) for k, (t, n, tu, s) in plan.items()})


# ---------------------------------------------------------------------------------- rows
def _lr(x: float) -> str:
    return f"2^{np.log2(x):.0f}" if np.isfinite(x) else "none"


def grid_text(ds: xr.Dataset) -> str:
    """The grid, its extensions and the seeds of a tuning Dataset, in words."""
    lrs = ds["lr"].values
    return (
        f"grid {_lr(lrs.min())}…{_lr(lrs.max())} ({lrs.size} rates"
        f"{', shared rate' if ds.attrs.get('shared_rate') else ''}; extensions: "
        f"{ds.attrs['extensions']}), selection seed {ds.attrs['selection_seed']}, "
        f"{ds.sizes['seed'] - 1} fresh paired seeds"
    )


def pair(ds: xr.Dataset, a: str, b: str) -> tuple[Decision, str]:
    """``a`` against ``b`` (lower held-out loss is better): the decision and its evidence."""
    c = compare(ds.sel({"method": [a, b]}), b).sel({"method": a})
    dec = Decision(str(c["decision"].item()))
    mean, low, high, n = (float(c[k]) for k in ("mean", "low", "high", "n"))
    where = []
    for m in (a, b):
        at = ds.sel({"method": m})
        edge = "" if bool(at["interior"]) else " (edge)"
        where.append(f"{m} at {_lr(float(at['selected_lr']))}{edge}")
    num = f"Δ = {mean:+.4f} [{low:+.4f}, {high:+.4f}]" if np.isfinite(mean) else "a failed run"
    if any("(edge)" in w for w in where):  # no decision rests on a grid-edge optimum
        dec, num = Decision.UNRESOLVED, f"{num}; an optimum on the grid's edge decides nothing"
    return dec, f"{a} vs {b}: {dec.value} ({num}, n={int(n)}; {', '.join(where)})"


def tolerance(ds: xr.Dataset) -> str:
    return (
        f"paired differences of held-out loss on the fresh seeds, {ds.attrs['level']:.0%} "
        f"t-interval; better/worse: the interval beyond ∓{ds.attrs['threshold']:g} nats; tie: "
        f"within ±{ds.attrs['threshold']:g}; else unresolved"
    )
