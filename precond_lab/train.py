"""Train with any optax optimiser and score its own preconditioner against the exact targets.

``train`` is a small optax-native loop: one jitted step, the mini-batch schedule of
``precond_lab.capture.train.batch_indices`` (it depends only on ``(seed, step)``, so a
resumed run sees exactly the batches of an uninterrupted one), a tqdm progress bar, an
optional atomic ``.npz`` checkpoint, per-step wall times, the optimiser state's size, and
failure detection: a non-finite loss or a loss above ``divergence_factor`` × the first one
stops the run with ``NONFINITE`` (the step is recorded).

With ``probe=Probe(steps=...)`` the loop stops at each probe step, captures the per-example
targets of the chosen layers (gradients, exact GGN, sampled-label GGN) at the current
parameters on a fixed set of examples, reads the optimiser's **own** preconditioner for
each layer from its state (``preconditioner_of``) and scores it with the sweep
(``precond_lab.sweep.evaluate``) next to the batch optima (Shampoo², the KL optimum,
…) of the same target, scored the same way.

Reading a preconditioner out of an optimiser state is a small protocol:
``register_preconditioner`` maps a state type (a ``NamedTuple`` class) to a function
returning the ``Structure`` that the state approximates
(the estimate of ``Σ``, not its inverse). A *per-leaf* state (one per parameter, e.g. a
KL-Shampoo factor state) is found wherever it sits in the optimiser state — its path must
end with the parameter's path — and the function gets the state; a *tree* state (one
for all parameters, e.g. optax's ``ScaleByAdamState``) gets the state and the parameter
path. Every method of ``precond_lab.methods`` (its optimiser's ``KronState`` and its online
estimator's ``OnlineState``) is read through the method's own ``approximation``; optax's
Adam is registered here; a user registers their own optimiser's state type.

Scores use scale-free metrics by default (``cosine``, ``kl_rescaled``): an optimiser's
statistics estimate the second moment of *mini-batch* gradients, whose scale differs from
the per-example target's. Before scoring, every approximation (the optimiser's and the
batch optima alike) is rescaled to the target's trace and damped with the same
``λ = damping·tr(Σ)/(mn)`` on both sides.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr

from ._atomic import atomic_write
from .capture.data import Dataset, load_dataset
from .capture.layout import flat_params, path_str
from .capture.models import Model, make_model
from .capture.per_example import Request, make_capture_fn, run_chunked
from .capture.train import batch_indices, batch_loss_fn, make_eval
from .errors import CellSkipped, Status
from .methods import METHODS, KronState, OnlineState, all_finite, approximation_of
from .schema import sample_bag
from .structures import Diagonal, Structure
from .targets import SampleTarget

__all__ = [
    "PROBE_TARGETS",
    "Probe",
    "TrainResult",
    "preconditioner_of",
    "register_preconditioner",
    "skipped_steps",
    "state_bytes",
    "train",
]

#: Capture targets a ``Probe`` can score against (names as in ``precond_lab.capture``).
PROBE_TARGETS = ("gradients", "ggn", "ggn-mc")

_HANDLERS: dict[type, tuple[Callable, bool]] = {}


# ------------------------------------------------------------------------ the protocol
def register_preconditioner(state_type: type, fn: Callable, *, per_leaf: bool = True) -> None:
    """Declare how to read the preconditioner out of an optimiser state of ``state_type``.

    Args:
        state_type: the state's class (a ``NamedTuple`` or any pytree node type).
        fn: ``fn(state) -> Structure`` for a per-leaf state, ``fn(state, path) ->
            Structure | None`` for a tree state; the structure approximates ``Σ`` of the
            parameter's matricized ``(m, n)`` gradient (not its inverse).
        per_leaf: whether one state belongs to one parameter (found where its path ends
            with the parameter's path) or one state covers the whole parameter tree.
    """
    _HANDLERS[state_type] = (fn, per_leaf)


def _tree_leaf(tree, path: str):
    """The leaf of ``tree`` at ``path`` (``None`` if the tree has no such leaf)."""
    return flat_params(tree).get(path)


def _adam_diagonal(state, path: str):
    nu = _tree_leaf(state.nu, path)
    if nu is None or np.ndim(nu) == 0:
        return None
    return Diagonal(jnp.reshape(nu, (nu.shape[0], -1)))


def _method_leaves(state: KronState, path: str):
    """The registered methods' leaf state at ``path`` of a ``KronState`` (or None)."""
    leaf_types = tuple(spec.leaf_type for spec in METHODS.values())
    nodes, _ = jax.tree_util.tree_flatten_with_path(
        state.leaves, is_leaf=lambda x: isinstance(x, leaf_types)
    )
    for keypath, node in nodes:
        if isinstance(node, leaf_types) and path_str(keypath) == path:
            return approximation_of(node)
    return None


# precond_lab.methods: every optimiser and online estimator of the package reads its state
# through its method's own ``approximation`` (the spec's), never a table kept here.
register_preconditioner(KronState, _method_leaves, per_leaf=False)
register_preconditioner(OnlineState, lambda s: approximation_of(s.leaf))
# optax's own Adam state holds no β₂: read as diag(v), without the bias correction (the
# scale-free probe metrics do not see it); precond_lab.optim.adamw's state gives v̂.
register_preconditioner(optax.ScaleByAdamState, _adam_diagonal, per_leaf=False)


def preconditioner_of(opt_state, path: str) -> Structure | None:
    """The structure the optimiser state holds for the parameter at ``path``, or ``None``.

    The first registered state met in ``opt_state`` (in pytree order) that covers
    ``path`` answers: a per-leaf state whose own path ends with ``path``, or a tree state
    whose function returns a structure for ``path``.
    """
    nodes, _ = jax.tree_util.tree_flatten_with_path(
        opt_state, is_leaf=lambda x: type(x) in _HANDLERS
    )
    for keypath, node in nodes:
        handler = _HANDLERS.get(type(node))
        if handler is None:
            continue
        fn, per_leaf = handler
        if per_leaf:
            own = path_str(keypath)
            if own == path or own.endswith("/" + path):
                return fn(node)
        else:
            found = fn(node, path)
            if found is not None:
                return found
    return None


def state_bytes(opt_state) -> int:
    """Bytes held by the arrays of an optimiser state."""
    return int(sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(opt_state)))


# ------------------------------------------------------------------------ probe scoring
@dataclasses.dataclass(frozen=True)
class Probe:
    """Where and how to score the optimiser's preconditioner during training.

    Attributes:
        steps: training steps (number of updates done) at which to probe.
        layers: parameter paths (default: every layer the optimiser state covers, among
            the model's tape-layer weights).
        targets: any of ``PROBE_TARGETS``.
        num_samples: training examples behind each target (the same at every probe).
        mc_samples: sampled labels per example for ``ggn-mc``.
        estimators: batch optima fitted to the same target (names of
            ``precond_lab.estimators.ESTIMATORS``).
        metrics: metric names of ``precond_lab.metrics.score``.
        damping: ``λ = damping·tr(Σ)/(mn)``, on the target and on every approximation.
        chunk_size: examples per jitted capture call.
    """

    steps: tuple[int, ...]
    layers: tuple[str, ...] | None = None
    targets: tuple[str, ...] = ("gradients",)
    num_samples: int = 128
    mc_samples: int = 4
    estimators: tuple[str, ...] = ("shampoo_squared", "kl_optimal")
    metrics: tuple[str, ...] = ("cosine", "kl_rescaled")
    damping: float = 1e-3
    chunk_size: int = 64

    def __post_init__(self):
        from .estimators import ESTIMATORS
        from .metrics import METRICS

        def names(field: str) -> tuple[str, ...]:
            value = getattr(self, field)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise TypeError(
                    f"Probe {field} must be a tuple of names, e.g. ({value!r},); got {value!r}"
                )
            return tuple(value)

        targets = names("targets")
        bad = [t for t in targets if t not in PROBE_TARGETS]
        if bad or not targets:
            raise ValueError(f"probe targets must be among {', '.join(PROBE_TARGETS)}; got {bad}")
        steps = self.steps
        if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
            raise TypeError(f"Probe steps must be a tuple of step numbers; got {steps!r}")
        steps = tuple(steps)
        ok = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in steps)
        if not steps or not ok or any(int(s) < 0 for s in steps):
            raise ValueError(
                f"probe steps must be a non-empty tuple of integers ≥ 0; got {self.steps!r}"
            )
        for field, known in (("estimators", ESTIMATORS), ("metrics", METRICS)):
            unknown = [n for n in names(field) if n not in known]
            if unknown:
                raise ValueError(
                    f"unknown probe {field} {unknown}; known: {', '.join(sorted(known))}"
                )
        for field in ("num_samples", "mc_samples", "chunk_size"):
            v = getattr(self, field)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Probe {field} must be an integer ≥ 1; got {v!r}")
        d = self.damping
        if not isinstance(d, (int, float)) or isinstance(d, bool) or not np.isfinite(d) or d < 0:
            raise ValueError(f"Probe damping must be a finite number ≥ 0; got {d!r}")
        object.__setattr__(self, "steps", tuple(int(s) for s in steps))
        object.__setattr__(self, "targets", targets)


def _probe_layers(model: Model, params, opt_state, probe: Probe) -> tuple[str, ...]:
    if probe.layers is not None:
        missing = [p for p in probe.layers if preconditioner_of(opt_state, p) is None]
        if missing:
            raise ValueError(
                f"the optimiser state holds no registered preconditioner for {missing} "
                "(register its state type with register_preconditioner)"
            )
        return tuple(probe.layers)
    flat = flat_params(params)
    names = [f"{n}/w" for n in model.tape_layers] or [p for p, v in flat.items() if v.ndim == 2]
    return tuple(p for p in names if preconditioner_of(opt_state, p) is not None)


def _matched(approx: Structure, target, rel: float) -> Structure:
    """``c·S + λI`` for the damped target ``Σ + λI``: ``c`` matches ``tr(c·S)`` to ``tr Σ``.

    ``λ = rel·tr(Σ)/(mn)`` is the sweep's relative damping, so ``tr(Σ+λI) = (1+rel)·trΣ``.
    """
    m, n = approx.matrix_shape
    own = float(approx.trace())
    if not own > 0:
        raise CellSkipped(f"the optimiser's statistic has trace {own:.3g} (nothing accumulated)")
    trace = float(target.trace()) / (1.0 + rel)
    lam = rel * trace / (m * n)
    c = trace / own
    return approx.function(lambda w: c * w + lam)


class _Prober:
    """The jitted capture of a run's probes and their scoring through the sweep."""

    def __init__(self, model: Model, ds: Dataset, params, opt_state, probe: Probe, seed: int):
        self.probe = probe
        self.layers = _probe_layers(model, params, opt_state, probe)
        if not self.layers:
            raise ValueError("no probe layer: the optimiser state covers none of the weights")
        n = min(probe.num_samples, len(ds.y_train))
        rng = np.random.default_rng([int(seed), 7919])
        self.idx = rng.choice(len(ds.y_train), n, replace=False)
        self.x, self.y = ds.x_train[self.idx], ds.y_train[self.idx]
        req = Request(self.layers, frozenset(probe.targets), probe.mc_samples)
        self.fn = make_capture_fn(model, params, req)
        self.seed = int(seed)

    def targets(self, step: int, params) -> dict[str, dict[str, SampleTarget]]:
        """``{layer: {kind: SampleTarget}}`` at ``params`` (float64)."""
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), 104729 + int(step))
        keys = jax.random.split(key, len(self.idx))
        res = run_chunked(self.fn, params, self.x, self.y, keys, self.probe.chunk_size)
        out: dict[str, dict[str, SampleTarget]] = {}
        for layer in self.layers:
            out[layer] = {}
            for kind in self.probe.targets:
                name = kind.replace("-", "_")
                bag, w = sample_bag(res[layer][name], dtype="float64")
                out[layer][name] = SampleTarget(bag, weights=w)
        return out

    def __call__(self, step: int, params, opt_state) -> xr.DataArray:
        """The scores of the optimiser's preconditioner and the batch optima at ``step``."""
        from .sweep import evaluate

        data = self.targets(step, params)
        rel = float(self.probe.damping)
        out = []
        for layer in self.layers:
            own = preconditioner_of(opt_state, layer)
            own = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float64)), own)
            ev = evaluate(
                {layer: data[layer]},
                [("optimizer", lambda t, s=own: _matched(s, t, rel)), *self.probe.estimators],
                metrics=self.probe.metrics,
                damping=rel,
                damping_mode="relative",
                progress=False,
            )
            out.append(ev["score"].isel(step=0, drop=True))
        return xr.concat(out, dim="layer").expand_dims(step=[int(step)])


# ------------------------------------------------------------------------------ training
@dataclasses.dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        history: Dataset over ``step`` (updates done before the step's batch):
            ``train_loss`` (the step's mini-batch loss), ``step_seconds`` (wall time of the
            jitted update, the first one including compilation), and ``eval_loss`` /
            ``eval_accuracy`` over ``eval_step`` (NaN accuracy for MSE models).
        params: the final parameters or, when the run failed, the last finite ones (those
            before the update that produced a non-finite loss or parameter).
        opt_state: the optimiser state that goes with ``params``.
        status: ``Status.OK`` or ``Status.NONFINITE`` (a non-finite or diverged
            loss stopped the run).
        failed_step: the step at which the run stopped (-1 if it finished).
        state_bytes: bytes of the optimiser state (``state_bytes``).
        probes: the probe scores ``(step, layer, target, estimator, metric)`` or None.
        skipped_steps: steps the optimiser skipped because a gradient, update or state
            was not finite (``precond_lab.optim.SkipState.skipped``; 0 for other states).
    """

    history: xr.Dataset
    params: Any
    opt_state: Any
    status: Status
    failed_step: int
    state_bytes: int
    probes: xr.DataArray | None = None
    skipped_steps: int = 0

    @property
    def failed(self) -> bool:
        return self.status is not Status.OK

    def final(self, name: str = "eval_loss") -> float:
        """The last recorded value of ``name`` (NaN if the run failed before any)."""
        da = self.history[name].dropna(self.history[name].dims[0])
        return float(da[-1]) if da.size else float("nan")


def make_step(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
    """Jitted ``(params, opt_state, x, y) -> (params, opt_state, loss)``."""

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


_COMPILED: dict[tuple[int, int], tuple[Model, Any, Callable, Callable]] = {}


def _compiled(model: Model, tx: optax.GradientTransformation) -> tuple[Callable, Callable]:
    """The jitted step and evaluation of ``(model, tx)``, built once per pair of objects.

    Runs that reuse the same model and transformation objects (e.g. a hyper-parameter
    search through ``optax.inject_hyperparams`` and ``train``'s ``hyperparams``) share
    one compilation. The cache keeps the objects alive, so ids stay unique.
    """
    key = (id(model), id(tx))
    hit = _COMPILED.get(key)
    if hit is None:
        if len(_COMPILED) >= 64:
            _COMPILED.pop(next(iter(_COMPILED)))
        hit = (model, tx, make_step(batch_loss_fn(model), tx), make_eval(model))
        _COMPILED[key] = hit
    return hit[2], hit[3]


def _inject(opt_state, hyperparams: Mapping[str, float]):
    """``opt_state`` with the injected hyper-parameters (``optax.inject_hyperparams``) set."""
    if not hasattr(opt_state, "hyperparams"):
        raise ValueError(
            "hyperparams= needs a transformation built with optax.inject_hyperparams; got a "
            f"state of type {type(opt_state).__name__}"
        )
    unknown = sorted(set(hyperparams) - set(opt_state.hyperparams))
    if unknown:
        raise ValueError(
            f"unknown injected hyper-parameters {unknown}; "
            f"the transformation has {sorted(opt_state.hyperparams)}"
        )
    hp = dict(opt_state.hyperparams)
    for k, v in hyperparams.items():
        hp[k] = jnp.asarray(v, jnp.asarray(hp[k]).dtype)
    return opt_state._replace(hyperparams=hp)


def _checkpoint_fingerprint(
    model: Model, ds: Dataset, params, opt_state, *, seed: int, batch_size: int, steps: int
) -> dict:
    """What identifies a run for resuming: model, data, parameter and optimiser layout."""

    def leaves(tree):
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return [
            [jax.tree_util.keystr(k), list(np.shape(x)), str(np.asarray(x).dtype)] for k, x in flat
        ]

    return {
        "model": model.name,
        "model_config": model.config_json(),
        "dataset": [ds.name, int(len(ds.y_train)), list(ds.input_shape), int(ds.output_dim)],
        "params": leaves(params),
        "optimiser_state": [str(jax.tree_util.tree_structure(opt_state)), leaves(opt_state)],
        "seed": int(seed),
        "batch_size": int(batch_size),
        "steps": int(steps),
    }


#: Fingerprint entries that must agree for a checkpoint to be resumed (``steps`` may grow).
_FINGERPRINT_NAMES = {
    "model": "model",
    "model_config": "model configuration",
    "dataset": "dataset (name, training size, input shape, outputs)",
    "params": "parameter shapes/dtypes",
    "optimiser_state": "optimiser state structure",
    "seed": "seed",
    "batch_size": "batch_size",
}


def _brief(value, limit: int = 120) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_difference(saved, current) -> str:
    """A short description of where two JSON-like values first differ."""
    if isinstance(saved, list) and isinstance(current, list):
        if len(saved) != len(current):
            return f"{len(saved)} entries in the checkpoint, {len(current)} in this run"
        for a, b in zip(saved, current, strict=True):
            if a != b:
                return _first_difference(a, b)
    return f"checkpoint {_brief(saved)}, this run {_brief(current)}"


def _save_checkpoint(path: Path, step: int, params, opt_state, logs: dict, fingerprint) -> None:
    """Write ``path`` atomically (temporary file in the same folder, then rename)."""
    import json

    arrays = {f"p{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(params))}
    arrays |= {f"o{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(opt_state))}
    arrays |= {f"log_{k}": np.asarray(v, np.float64) for k, v in logs.items()}
    arrays["fingerprint"] = np.asarray(json.dumps(fingerprint, sort_keys=True))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez adds no suffix
            np.savez(fh, step=np.int64(step), **arrays)

    atomic_write(path, write)


def _load_checkpoint(path: Path, params, opt_state, fingerprint: dict):
    """Resume from ``path``; refuse (``CheckpointError``) one written by another run.

    Raises:
        CheckpointError: the file is unreadable (truncated, not an ``.npz``), has no
            fingerprint, or its fingerprint differs from this run's (the message names
            what differs), or it is further along than ``steps``.
    """
    import json
    import zipfile

    from .errors import CheckpointError

    fresh = "resume with the run's settings, or pass another checkpoint path (or delete it)"
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {err}); delete it or "
            "pass another checkpoint path to start afresh."
        ) from err
    with z:
        try:
            if "fingerprint" not in z:
                raise CheckpointError(
                    f"{path}: checkpoint has no fingerprint (written by an older precond_lab "
                    "or another program), so it cannot be matched to this run; delete it or "
                    "pass another checkpoint path."
                )
            saved = json.loads(str(z["fingerprint"]))
            diffs = [
                f"{label}: {_first_difference(saved.get(key), fingerprint[key])}"
                for key, label in _FINGERPRINT_NAMES.items()
                if saved.get(key) != fingerprint[key]
            ]
            if diffs:
                raise CheckpointError(
                    f"{path}: checkpoint does not match this run — " + "; ".join(diffs) + f". "
                    f"To continue it, {fresh}."
                )
            step = int(z["step"])
            if step > fingerprint["steps"]:
                raise CheckpointError(
                    f"{path}: checkpoint does not match this run — it is at step {step}, "
                    f"beyond this run's steps={fingerprint['steps']}; pass steps ≥ {step}, or "
                    "another checkpoint path."
                )
            pleaves, ptree = jax.tree_util.tree_flatten(params)
            oleaves, otree = jax.tree_util.tree_flatten(opt_state)
            params = jax.tree_util.tree_unflatten(
                ptree, [jnp.asarray(z[f"p{i}"], a.dtype) for i, a in enumerate(pleaves)]
            )
            opt_state = jax.tree_util.tree_unflatten(
                otree,
                [jnp.asarray(z[f"o{i}"], jnp.asarray(a).dtype) for i, a in enumerate(oleaves)],
            )
            logs = {k[4:]: list(z[k]) for k in z if k.startswith("log_")}
        except (KeyError, OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(
                f"{path}: checkpoint is damaged ({type(err).__name__}: {err}); delete it or "
                "pass another checkpoint path to start afresh."
            ) from err
        return step, params, opt_state, logs


#: whether every floating leaf of a tree is finite, as one jitted reduction
_all_finite = jax.jit(all_finite)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}; got {value!r}")
    return int(value)


def train(
    model: str | Model,
    dataset: str | Dataset,
    tx: optax.GradientTransformation,
    *,
    steps: int,
    batch_size: int = 32,
    seed: int = 0,
    eval_every: int = 0,
    eval_samples: int = 1000,
    probe: Probe | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    divergence_factor: float = 10.0,
    model_options: dict | None = None,
    hyperparams: Mapping[str, float] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``model`` on ``dataset`` with the optax transformation ``tx``.

    Args:
        model: a ``Model`` or a name of
            ``make_model``.
        dataset: a ``Dataset`` or a name of
            ``load_dataset``.
        tx: any ``optax.GradientTransformation`` (chains included).
        steps: number of updates.
        batch_size: training mini-batch size.
        seed: parameter initialisation and the mini-batch schedule.
        eval_every: evaluate on the first ``eval_samples`` test examples every so many
            steps (0: only at the end) and always after the last step.
        eval_samples: test examples per evaluation.
        probe: score the optimiser's own preconditioner at these steps (``Probe``).
        checkpoint: an ``.npz`` path; written atomically every ``checkpoint_every`` steps
            and at the end, and resumed from when it exists. It records a fingerprint of
            the run (model and its configuration, dataset, parameter shapes and dtypes,
            optimiser state structure, seed, batch size, steps); a checkpoint of another
            run is refused, naming what differs. ``steps`` may grow (continue a run).
        checkpoint_every: steps between checkpoints (an integer ≥ 1).
        divergence_factor: stop when the mini-batch loss exceeds this × the first loss.
        model_options: options for a model given by name.
        hyperparams: values of ``tx``'s injected hyper-parameters for this run (``tx``
            built with ``optax.inject_hyperparams``); runs reusing ``model`` and ``tx``
            compile once.
        progress: show a tqdm bar.

    Returns:
        A ``TrainResult``.

    Raises:
        ValueError: bad sizes or options, or a probe the optimiser state cannot answer.
        CheckpointError: ``checkpoint`` is unreadable or was written by another run.
    """
    steps = _check_int("steps", steps, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    eval_every = _check_int("eval_every", eval_every, 0)
    eval_samples = _check_int("eval_samples", eval_samples, 0)
    checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)
    if not (isinstance(divergence_factor, (int, float)) and divergence_factor > 1):
        raise ValueError(
            f"divergence_factor must be a number > 1 (or inf to never stop on growth); got "
            f"{divergence_factor!r}"
        )
    if not isinstance(tx, optax.GradientTransformation) and not (
        hasattr(tx, "init") and hasattr(tx, "update")
    ):
        raise TypeError(
            f"tx must be an optax.GradientTransformation (e.g. precond_lab.optim.kl_shampoo(...) "
            f"or optax.adamw(1e-3)); got {type(tx).__name__}"
        )
    if probe is not None and not isinstance(probe, Probe):
        raise TypeError(f"probe must be a precond_lab.train.Probe; got {type(probe).__name__}")
    if model_options is not None and not isinstance(model_options, Mapping):
        raise TypeError(f"model_options must be a dict of options; got {model_options!r}")
    if hyperparams is not None:
        if not isinstance(hyperparams, Mapping):
            raise TypeError(f"hyperparams must be a dict name -> number; got {hyperparams!r}")
        for k, v in hyperparams.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
                raise TypeError(f"hyperparams[{k!r}] must be a number; got {v!r}")
            if not np.isfinite(v):
                raise ValueError(f"hyperparams[{k!r}] must be finite; got {v!r}")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path (str or os.PathLike); got {checkpoint!r}")
    if not isinstance(dataset, (str, Dataset)):
        raise TypeError(
            f"dataset must be a precond_lab Dataset or a name of load_dataset; got {dataset!r}"
        )
    ds = load_dataset(dataset) if isinstance(dataset, str) else dataset
    if isinstance(model, str):
        model = make_model(model, ds, **dict(model_options or {}))
    elif not isinstance(model, Model):
        raise TypeError(
            f"model must be a precond_lab Model (precond_lab.capture.Model) or a name of "
            f"make_model; got {model!r}"
        )
    if batch_size > len(ds.y_train):
        raise ValueError(
            f"batch_size must be at most the {len(ds.y_train)} training examples; got {batch_size}"
        )
    params = model.init(jax.random.PRNGKey(seed))
    opt_state = tx.init(params)
    if hyperparams:
        opt_state = _inject(opt_state, hyperparams)
    step_fn, evaluate = _compiled(model, tx)
    n_test = min(eval_samples, len(ds.y_test))
    x_test, y_test = ds.x_test[:n_test], ds.y_test[:n_test]
    prober = _Prober(model, ds, params, opt_state, probe, seed) if probe is not None else None
    probe_steps = set() if probe is None else {int(s) for s in probe.steps if s <= steps}
    logs: dict[str, list] = {"train_loss": [], "step_seconds": [], "eval_step": [], "eval": []}
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    fingerprint = None
    if ckpt is not None:
        if not ckpt.parent.is_dir():
            raise ValueError(f"checkpoint: the folder {ckpt.parent} does not exist")
        fingerprint = _checkpoint_fingerprint(
            model, ds, params, opt_state, seed=seed, batch_size=batch_size, steps=steps
        )
    if ckpt is not None and ckpt.exists():
        start, params, opt_state, saved = _load_checkpoint(ckpt, params, opt_state, fingerprint)
        logs = {k: list(saved.get(k, [])) for k in logs}
        logs["eval_step"] = [int(x) for x in logs["eval_step"]]
        logs["eval"] = [tuple(r) for r in np.reshape(logs["eval"], (-1, 2))]
    probes, status, failed, first = [], Status.OK, -1, None
    if logs["train_loss"]:
        first = logs["train_loss"][0]
    todo = range(start, steps + 1)
    if progress:
        from ._progress import tqdm

        todo = tqdm(todo, desc="train", unit="step", initial=start, total=steps + 1)
    for s in todo:
        if prober is not None and s in probe_steps:
            probes.append(prober(s, params, opt_state))
        if n_test and ((eval_every and s % eval_every == 0) or s == steps):
            loss, acc = evaluate(params, x_test, y_test)
            logs["eval_step"].append(s)
            logs["eval"].append((float(loss), float(acc)))
        if s == steps:
            break
        idx = batch_indices(seed, s, len(ds.y_train), batch_size)
        t0 = time.perf_counter()
        new = step_fn(params, opt_state, ds.x_train[idx], ds.y_train[idx])
        loss = float(new[2])  # waits for the step
        logs["step_seconds"].append(time.perf_counter() - t0)
        logs["train_loss"].append(loss)
        first = loss if first is None else first
        if not np.isfinite(loss) or loss > divergence_factor * max(first, 1e-12):
            status, failed = Status.NONFINITE, s
            break
        if not bool(_all_finite(new[0])):  # a finite loss, but the update made NaN/Inf
            status, failed = Status.NONFINITE, s
            break
        params, opt_state = new[0], new[1]
        if ckpt is not None and (s + 1) % checkpoint_every == 0:
            _save_checkpoint(ckpt, s + 1, params, opt_state, _flat_logs(logs), fingerprint)
    if ckpt is not None and status is Status.OK:
        _save_checkpoint(ckpt, steps, params, opt_state, _flat_logs(logs), fingerprint)
    return TrainResult(
        _history(logs),
        params,
        opt_state,
        status,
        failed,
        state_bytes(opt_state),
        xr.concat(probes, dim="step") if probes else None,
        skipped_steps(opt_state),
    )


def skipped_steps(opt_state) -> int:
    """Steps skipped as non-finite, summed over the ``SkipState``s in an optimiser state."""
    from .optim import SkipState

    nodes = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, SkipState))
    return int(sum(int(n.skipped) for n in nodes if isinstance(n, SkipState)))


def _flat_logs(logs: dict) -> dict:
    ev = np.asarray(logs["eval"], np.float64).reshape(-1, 2)
    return {
        "train_loss": logs["train_loss"],
        "step_seconds": logs["step_seconds"],
        "eval_step": logs["eval_step"],
        "eval": ev.reshape(-1),
    }


def _history(logs: dict) -> xr.Dataset:
    ev = np.asarray(logs["eval"], np.float64).reshape(-1, 2)
    n = len(logs["train_loss"])
    return xr.Dataset(
        {
            "train_loss": ("step", np.asarray(logs["train_loss"], np.float64)),
            "step_seconds": ("step", np.asarray(logs["step_seconds"], np.float64)),
            "eval_loss": ("eval_step", ev[:, 0]),
            "eval_accuracy": ("eval_step", ev[:, 1]),
        },
        coords={"step": np.arange(n), "eval_step": np.asarray(logs["eval_step"], np.int64)},
    )
