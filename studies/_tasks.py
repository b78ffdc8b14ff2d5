"""Shared pieces of the training studies (``train_*.py``): tasks, methods, search, figures.

A *task* is a model and a dataset that fit a laptop: the character transformer of
:mod:`precond_lab.capture` on the standard-library text, the CNN on the MNIST images, a
small patch transformer (ViT-style, defined here) on the same images and a one-layer LSTM
(defined here) on the characters. A *method* is an optimiser factory of
:mod:`precond_lab.optim` with fixed settings and a log-uniform learning-rate range.

:func:`run_method` is the protocol of every training study: a random search over the
learning rate with the same number of trials for every method (trials use seed 0), then
the best trial's learning rate rerun with further seeds. A run *fails* when it hits a
NaN or a mini-batch loss above 10× its first (its curve is then NaN) or when it ends
with a higher test loss than it started with; the search ranks failed runs last. Each
run is cached on disk (keyed by everything that determines it), so a rerun reuses
finished runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr

import precond_lab.optim as po
from precond_lab.capture import Model, Tape, load_dataset, make_model
from precond_lab.plotting import OKABE_ITO, figure, legend, style
from precond_lab.study import repo_root
from precond_lab.train import Probe, train

# ------------------------------------------------------------------------------- models


def _dense(key, m, n):
    return {"w": jax.random.normal(key, (m, n)) / math.sqrt(n), "b": jnp.zeros((m,))}


def _layer_norm(h):
    mu = h.mean(axis=-1, keepdims=True)
    return (h - mu) / jnp.sqrt(h.var(axis=-1, keepdims=True) + 1e-5)


def patch_transformer(ds, *, patch: int = 7, width: int = 16, heads: int = 2) -> Model:
    """A one-block ViT-style model: patches → linear embedding → attention + MLP → mean pool.

    Every weight is an ``out × in`` matrix used once per example through
    :meth:`~precond_lab.capture.Tape.linear` (shared over the patch positions).
    """
    c, h, w = ds.input_shape
    tokens, pdim = (h // patch) * (w // patch), c * patch * patch
    dh = width // heads
    names = ("embed", "q", "k", "v", "o", "fc", "proj", "head")
    shapes = {"embed": (width, pdim), "q": (width, width), "k": (width, width)}
    shapes |= {"v": (width, width), "o": (width, width), "fc": (2 * width, width)}
    shapes |= {"proj": (width, 2 * width), "head": (ds.output_dim, width)}

    def init(key):
        keys = jax.random.split(key, len(names) + 1)
        params = {n: _dense(k, *shapes[n]) for n, k in zip(names, keys, strict=False)}
        params["pos"] = 0.1 * jax.random.normal(keys[-1], (tokens, width))
        return params

    def apply(params, x, tape=None):
        tape = Tape() if tape is None else tape
        img = x.reshape(c, h // patch, patch, w // patch, patch)
        a = img.transpose(1, 3, 0, 2, 4).reshape(tokens, pdim)

        def lin(n, z):
            return tape.linear(n, z, params[n]["w"], params[n]["b"])

        z = lin("embed", a) + params["pos"]
        y = _layer_norm(z)
        q, k, v = (lin(n, y).reshape(tokens, heads, dh) for n in ("q", "k", "v"))
        att = jax.nn.softmax(jnp.einsum("thd,shd->hts", q, k) / math.sqrt(dh), axis=-1)
        z = z + lin("o", jnp.einsum("hts,shd->thd", att, v).reshape(tokens, width))
        z = z + lin("proj", jax.nn.gelu(lin("fc", _layer_norm(z))))
        return lin("head", _layer_norm(z).mean(axis=0))

    cfg = {"patch": patch, "width": width, "heads": heads}
    return Model("patch_transformer", init, apply, ds.loss, cfg, names)


def lstm(ds, *, width: int = 32, embed: int = 16) -> Model:
    """A one-layer LSTM over the context characters; the last state predicts the next one.

    The gate weight ``cell/w`` (``4·width × (embed + width)``) is shared over time, so it
    is not a tape layer (no K-FAC targets); gradients and GGN targets work as for any model.
    """
    vocab = ds.vocab_size

    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "embed": 0.5 * jax.random.normal(k1, (vocab, embed)),
            "cell": _dense(k2, 4 * width, embed + width),
            "head": _dense(k3, vocab, width),
        }

    def apply(params, x, tape=None):
        del tape
        w, b = params["cell"]["w"], params["cell"]["b"]

        def step(carry, e):
            hid, cell = carry
            gates = w @ jnp.concatenate([e, hid]) + b
            i, f, g, o = jnp.split(gates, 4)
            cell = jax.nn.sigmoid(f + 1.0) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
            hid = jax.nn.sigmoid(o) * jnp.tanh(cell)
            return (hid, cell), None

        zero = jnp.zeros((width,))
        (hid, _), _ = jax.lax.scan(step, (zero, zero), params["embed"][x])
        return params["head"]["w"] @ hid + params["head"]["b"]

    return Model("lstm", init, apply, ds.loss, {"width": width, "embed": embed})


@dataclasses.dataclass(frozen=True)
class Task:
    """A model, its dataset and the training budget of every run.

    Attributes:
        name: the study's ``task`` coordinate.
        model: ``transformer``, ``cnn`` (capture's models), ``patch_transformer`` or ``lstm``.
        dataset: a name of :func:`precond_lab.capture.load_dataset`.
        options: the model's options as ``(name, value)`` pairs.
        steps: updates per run.
        batch_size: mini-batch size.
        evals: evaluation points along a run (plus step 0).
        eval_samples: test examples per evaluation.
    """

    name: str
    model: str
    dataset: str
    options: tuple = ()
    steps: int = 200
    batch_size: int = 32
    evals: int = 10
    eval_samples: int = 1000

    def build(self) -> Model:
        ds = load_dataset(self.dataset)
        opts = dict(self.options)
        if self.model == "patch_transformer":
            return patch_transformer(ds, **opts)
        if self.model == "lstm":
            return lstm(ds, **opts)
        return make_model(self.model, ds, **opts)


# ------------------------------------------------------------------------------ methods
@dataclasses.dataclass(frozen=True)
class Method:
    """An optimiser of :mod:`precond_lab.optim` with fixed settings and a learning-rate range.

    Attributes:
        name: the study's ``method`` coordinate.
        factory: a name of :data:`precond_lab.optim.OPTIMIZERS`, or ``sign_sgd``
            (sign descent with momentum: the sign without adaptivity).
        kwargs: fixed keyword arguments as ``(name, value)`` pairs (``batch_size`` of the
            root-free methods is filled in from the task).
        lr: the log-uniform learning-rate search range.
        label: legend label.
        color: an Okabe–Ito colour name.
        dash: the curves' line style (the trace-power family is dashed).
    """

    name: str
    factory: str
    kwargs: tuple = ()
    lr: tuple[float, float] = (1e-4, 1e-1)
    label: str = ""
    color: str = "black"
    dash: str = "-"

    def identity(self) -> list:
        """What determines a run (the presentation fields are left out of cache keys)."""
        return [self.name, self.factory, repr(self.kwargs), repr(self.lr)]

    def make(self, batch_size: int) -> optax.GradientTransformation:
        """The transformation with the learning rate injected (one compilation per method)."""
        kw = dict(self.kwargs)
        if self.factory in po.NEEDS_BATCH_SIZE:
            kw.setdefault("batch_size", batch_size)

        def factory(learning_rate):
            if self.factory == "sign_sgd":
                return optax.chain(
                    optax.trace(decay=kw.get("momentum", 0.9)),
                    optax.scale_by_sign(),
                    optax.scale_by_learning_rate(learning_rate),
                )
            return po.OPTIMIZERS[self.factory](learning_rate=learning_rate, **kw)

        return optax.inject_hyperparams(factory)(learning_rate=self.lr[0])


_M = Method
# Root-free methods start from s₀ = 1 (RF-RMSProp) or C = K = I (IF-Shampoo), so their first
# steps are SGD steps: their learning rates live on SGD's scale, not Adam's.
_RF_LR = (1e-4, 1.0)
#: Every method of the training studies (a study picks some of them per task).
METHODS = {
    m.name: m
    for m in (
        _M("adamw", "adamw", (), (1e-4, 1e-1), "AdamW", "black"),
        _M("sgd", "sgd", (("momentum", 0.9),), (1e-3, 3.0), "SGD (momentum)", "orange"),
        _M("sign_sgd", "sign_sgd", (), (1e-5, 1e-2), "sign descent (momentum)", "yellow"),
        _M("kl_shampoo", "kl_shampoo", (("max_dim", 64),), (1e-4, 1e-1), "KL-Shampoo", "blue"),
        _M("kl_soap", "kl_soap", (("max_dim", 64),), (1e-4, 1e-1), "KL-SOAP", "sky_blue"),
        _M("soap", "soap", (("max_dim", 64),), (1e-4, 1e-1), "SOAP", "vermillion"),
        _M(
            "shampoo_graft",
            "shampoo",
            (("p", 0.5), ("graft", True), ("max_dim", 64)),
            (1e-4, 1e-1),
            "Shampoo p=½ (Adam grafting)",
            "reddish_purple",
        ),
        _M(
            "shampoo_nograft",
            "shampoo",
            (("p", 0.5), ("graft", False), ("max_dim", 64)),
            (1e-4, 1e-1),
            "Shampoo p=½ (no grafting)",
            "bluish_green",
        ),
        _M(
            "vn_shampoo",
            "vn_shampoo",
            (("max_dim", 64),),
            (1e-4, 1e-1),
            "VN-Shampoo",
            "orange",
            "--",
        ),
        _M("f_shampoo", "f_shampoo", (("max_dim", 64),), (1e-4, 1e-1), "F-Shampoo", "yellow", "--"),
        _M(
            "sq_shampoo",
            "sq_shampoo",
            (("max_dim", 64),),
            (1e-4, 1e-1),
            "SQ-Shampoo",
            "bluish_green",
            "--",
        ),
        _M("rf_rmsprop", "rf_rmsprop", (), _RF_LR, "RF-RMSProp", "blue"),
        _M("if_shampoo", "if_shampoo", (("max_dim", 64),), _RF_LR, "IF-Shampoo", "sky_blue"),
    )
}


# ------------------------------------------------------------------------------- running
def cache_dir() -> Path:
    """``$PRECOND_LAB_CACHE/train`` (default ``<clone>/.precond_lab_cache/train``)."""
    root = Path(os.environ.get("PRECOND_LAB_CACHE", repo_root() / ".precond_lab_cache"))
    out = root / "train"
    out.mkdir(parents=True, exist_ok=True)
    return out


_VERSION = 2  # bump when a run's result would change for the same key


def _key(task: Task, method: Method, lr: float, seed: int) -> str:
    blob = json.dumps(
        [_VERSION, dataclasses.asdict(task), method.identity(), repr(lr), seed],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


_BUILT: dict = {}


def _built(task: Task, method: Method):
    """The model and transformation objects of ``(task, method)``: one compilation each."""
    key = (task, method)
    if ("model", task) not in _BUILT:
        _BUILT[("model", task)] = task.build()
    if key not in _BUILT:
        _BUILT[key] = (_BUILT[("model", task)], method.make(task.batch_size))
    return _BUILT[key]


def one_run(task: Task, method: Method, lr: float, seed: int) -> dict:
    """One cached run: eval-loss/accuracy curve, failure, step time, state bytes."""
    path = cache_dir() / f"{task.name}-{method.name}-{_key(task, method, lr, seed)}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z}
    model, tx = _built(task, method)
    every = max(1, task.steps // task.evals)
    res = train(
        model,
        task.dataset,
        tx,
        steps=task.steps,
        batch_size=task.batch_size,
        seed=seed,
        eval_every=every,
        eval_samples=task.eval_samples,
        hyperparams={"learning_rate": lr},
    )
    points = np.arange(0, task.steps + 1, every)
    if points[-1] != task.steps:
        points = np.append(points, task.steps)
    loss = np.full(len(points), np.nan)
    acc = np.full(len(points), np.nan)
    steps = res.history["eval_step"].values
    pos = np.searchsorted(points, steps)
    if not res.failed:
        loss[pos] = res.history["eval_loss"].values
        acc[pos] = res.history["eval_accuracy"].values
    secs = res.history["step_seconds"].values[1:]  # the first step compiles
    out = {
        "loss": loss,
        "accuracy": acc,
        "failed": np.int8(res.failed or not np.isfinite(loss[-1]) or loss[-1] > loss[0]),
        "step_seconds": np.float64(np.median(secs) if secs.size else np.nan),
        "state_bytes": np.int64(res.state_bytes),
        "points": points,
    }
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def search_lrs(method: Method, trials: int, task: Task) -> np.ndarray:
    """The learning rates of the random search (log-uniform, seeded by task and method)."""
    digest = hashlib.sha256(f"{task.name}/{method.name}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    lo, hi = np.log10(method.lr[0]), np.log10(method.lr[1])
    return 10.0 ** rng.uniform(lo, hi, trials)


def run_method(task: Task, method: Method, trials: int, seeds: int, log=None) -> dict:
    """Search ``trials`` learning rates (seed 0), then rerun the best with ``seeds`` seeds."""
    lrs = search_lrs(method, trials, task)
    runs = [one_run(task, method, float(lr), 0) for lr in lrs]
    finals = np.array([r["loss"][-1] if not r["failed"] else np.inf for r in runs])
    best = int(np.argmin(finals))
    seeded = [runs[best]] + [one_run(task, method, float(lrs[best]), s) for s in range(1, seeds)]
    if log:
        log(f"  {task.name} {method.name}: best lr {lrs[best]:.2e}, final {finals[best]:.3f}")
    return {"lrs": lrs, "trials": runs, "best": best, "seeded": seeded}


def assemble(tasks, methods_of: dict, trials: int, seeds: int, log=None) -> xr.Dataset:
    """Run every ``(task, method)`` and collect the Dataset of the training studies.

    Dims: ``task``, ``method`` (the union; ``used`` marks each task's methods), ``trial``,
    ``seed``, ``point`` (evaluation points, ``curve_step(task, point)``).
    """
    names = list(dict.fromkeys(m for t in tasks for m in methods_of[t.name]))
    npts = max(t.evals for t in tasks) + 2
    shape = (len(tasks), len(names))
    v = {
        "used": np.zeros(shape, np.int8),
        "trial_lr": np.full((*shape, trials), np.nan),
        "trial_loss": np.full((*shape, trials), np.nan),
        "trial_failed": np.zeros((*shape, trials), np.int8),
        "best_lr": np.full(shape, np.nan),
        "curve_loss": np.full((*shape, seeds, npts), np.nan),
        "curve_accuracy": np.full((*shape, seeds, npts), np.nan),
        "final_loss": np.full((*shape, seeds), np.nan),
        "final_accuracy": np.full((*shape, seeds), np.nan),
        "seed_failed": np.zeros((*shape, seeds), np.int8),
        "step_seconds": np.full(shape, np.nan),
        "state_bytes": np.full(shape, -1, np.int64),
    }
    curve_step = np.full((len(tasks), npts), -1, np.int64)
    for i, task in enumerate(tasks):
        for name in methods_of[task.name]:
            j = names.index(name)
            r = run_method(task, METHODS[name], trials, seeds, log)
            v["used"][i, j] = 1
            v["trial_lr"][i, j] = r["lrs"]
            v["trial_loss"][i, j] = [t["loss"][-1] for t in r["trials"]]
            v["trial_failed"][i, j] = [t["failed"] for t in r["trials"]]
            v["best_lr"][i, j] = r["lrs"][r["best"]]
            for s, run in enumerate(r["seeded"]):
                n = len(run["points"])
                curve_step[i, :n] = run["points"]
                v["curve_loss"][i, j, s, :n] = run["loss"]
                v["curve_accuracy"][i, j, s, :n] = run["accuracy"]
                v["final_loss"][i, j, s] = run["loss"][-1]
                v["final_accuracy"][i, j, s] = run["accuracy"][-1]
                v["seed_failed"][i, j, s] = run["failed"]
            v["step_seconds"][i, j] = np.nanmedian([t["step_seconds"] for t in r["trials"]])
            v["state_bytes"][i, j] = r["trials"][0]["state_bytes"]
    dims = {
        "used": ("task", "optimizer"),
        "best_lr": ("task", "optimizer"),
        "step_seconds": ("task", "optimizer"),
        "state_bytes": ("task", "optimizer"),
        "trial_lr": ("task", "optimizer", "trial"),
        "trial_loss": ("task", "optimizer", "trial"),
        "trial_failed": ("task", "optimizer", "trial"),
        "curve_loss": ("task", "optimizer", "seed", "point"),
        "curve_accuracy": ("task", "optimizer", "seed", "point"),
        "final_loss": ("task", "optimizer", "seed"),
        "final_accuracy": ("task", "optimizer", "seed"),
        "seed_failed": ("task", "optimizer", "seed"),
    }
    return xr.Dataset(
        {k: (dims[k], a) for k, a in v.items()},
        coords={
            "task": [t.name for t in tasks],
            "optimizer": names,
            "trial": np.arange(trials),
            "seed": np.arange(seeds),
            "point": np.arange(npts),
            "curve_step": (("task", "point"), curve_step),
            "optimizer_label": ("optimizer", [METHODS[n].label for n in names]),
        },
    )


def probe_run(task: Task, method: Method, lr: float, probe: Probe) -> xr.DataArray:
    """The preconditioner probe of one run (not cached: it is one run per method)."""
    model, tx = _built(task, method)
    res = train(
        model,
        task.dataset,
        tx,
        steps=max(probe.steps),
        batch_size=task.batch_size,
        eval_samples=0,
        probe=probe,
        hyperparams={"learning_rate": lr},
    )
    return res.probes


# ----------------------------------------------------------------------------- summaries
def failures(ds: xr.Dataset, task: str, method: str) -> tuple[int, int]:
    """``(failed runs, runs)`` of a method on a task, trials and extra seeds together."""
    t = ds["trial_failed"].sel(task=task, optimizer=method).values
    s = ds["seed_failed"].sel(task=task, optimizer=method).values[1:]  # seed 0 is a trial
    return int(t.sum() + s.sum()), int(t.size + s.size)


def final(ds: xr.Dataset, task: str, method: str, var: str = "final_loss") -> tuple[float, float]:
    """Mean and standard deviation over seeds of the best configuration (NaN if any failed)."""
    x = ds[var].sel(task=task, optimizer=method).values
    if not np.all(np.isfinite(x)):
        return float("nan"), float("nan")
    return float(np.mean(x)), float(np.std(x, ddof=1) if x.size > 1 else 0.0)


def compare(ds, task, a, b, var="final_loss", lower_is_better=True) -> tuple[str, float]:
    """``("better" | "worse" | "tie" | "n/a", margin)`` of ``a`` against ``b``.

    ``margin`` is the difference of the seed means in units of their combined standard
    deviation (positive when ``a`` is better); ``|margin| < 1`` is a tie.
    """
    ma, sa = final(ds, task, a, var)
    mb, sb = final(ds, task, b, var)
    if not (np.isfinite(ma) and np.isfinite(mb)):
        return "n/a", float("nan")
    diff = (mb - ma) if lower_is_better else (ma - mb)
    spread = math.hypot(sa, sb) or 1e-12
    margin = diff / spread
    return ("better" if margin >= 1 else "worse" if margin <= -1 else "tie"), float(margin)


# ------------------------------------------------------------------------------ figures
def _methods(ds, task):
    used = ds["used"].sel(task=task).values.astype(bool)
    return [m for m, u in zip(ds["optimizer"].values.tolist(), used, strict=True) if u]


def _color(name):
    return OKABE_ITO.get(METHODS[name].color, "#7F7F7F") if name in METHODS else "#7F7F7F"


def figures(ds: xr.Dataset, prefix: str) -> dict:
    """Curves with seed bands, final-metric bars, failure counts, step time and memory."""
    tasks = ds["task"].values.tolist()
    out = {}
    with style():
        fig, axes = figure(1, len(tasks), panel=(3.4, 2.6))
        for ax, task in zip(axes[0], tasks, strict=True):
            steps = ds["curve_step"].sel(task=task).values
            keep = steps >= 0
            for m in _methods(ds, task):
                c = ds["curve_loss"].sel(task=task, optimizer=m).values[:, keep]
                mean, lo, hi = np.nanmean(c, 0), np.nanmin(c, 0), np.nanmax(c, 0)
                ax.plot(steps[keep], mean, METHODS[m].dash, color=_color(m), label=METHODS[m].label)
                ax.fill_between(steps[keep], lo, hi, color=_color(m), alpha=0.2, lw=0)
            ax.set(title=task, xlabel="step", ylabel="test loss")
        legend(fig, axes, ncols=4)
        out[f"{prefix}_curves"] = fig
        specs = [("final_loss", "final test loss"), ("final_accuracy", "final test accuracy")]
        fig, axes = figure(len(specs) + 3, len(tasks), panel=(3.4, 2.2))
        for col, task in enumerate(tasks):
            ms = _methods(ds, task)
            x = np.arange(len(ms))
            colors = [_color(m) for m in ms]
            for row, (var, lab) in enumerate(specs):
                vals = ds[var].sel(task=task, optimizer=ms).values
                mean = np.nanmean(vals, axis=1)
                err = np.nanstd(vals, axis=1)
                axes[row, col].bar(x, mean, yerr=err, color=colors, capsize=2)
                axes[row, col].set(ylabel=lab, title=task if row == 0 else None)
            fails = [failures(ds, task, m)[0] for m in ms]
            total = failures(ds, task, ms[0])[1]
            axes[2, col].bar(x, fails, color=colors)
            axes[2, col].set(ylabel=f"failed runs (of {total})")
            axes[3, col].bar(
                x, 1e3 * ds["step_seconds"].sel(task=task, optimizer=ms).values, color=colors
            )
            axes[3, col].set(ylabel="ms per step")
            axes[4, col].bar(
                x, ds["state_bytes"].sel(task=task, optimizer=ms).values / 1024, color=colors
            )
            axes[4, col].set(ylabel="optimiser state (KiB)")
            for ax in axes[:, col]:
                ax.set_xticks(
                    x, [METHODS[m].label for m in ms], rotation=60, ha="right", fontsize=6
                )
        out[f"{prefix}_summary"] = fig
    return out
