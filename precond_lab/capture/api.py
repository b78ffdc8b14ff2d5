"""``capture`` and ``capture_from_fn``: train, capture at chosen steps, store, resume.

A run trains ``model`` on ``dataset`` with optax and, at each requested step, evaluates
the requested targets on a fixed set of ``num_samples`` training examples (drawn once from
``seed``), for the selected layers. With ``out``, each step is written atomically to a Zarr
store (see ``.store`` for the schema) together with the training state, and a rerun
with the same configuration resumes after the last finished step without recomputing it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import platform
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..errors import StoreError
from ..schema import (
    CHECKPOINT,
    KFAC_ACTIVATIONS,
    KFAC_BACKPROPS,
    PARAM,
    SAMPLE_KINDS,
    STORAGE_DENSE,
    STORAGE_FACTORED,
    STORAGES,
    TRAJECTORY_GROUP,
    VARIABLE_DIMS,
    WEIGHT,
    CaptureTarget,
    CaptureTree,
    Dim,
    Kind,
    batch_group,
    storage_attr,
)
from . import cache
from . import store as st
from .data import Dataset, from_arrays, load_dataset
from .discover import user_model
from .frameworks import as_apply
from .integrity import check_step_finite
from .kfac import KFAC_DENSE_TWIN, KFAC_TARGETS, KFACSkippedWarning, kfac_layer
from .layout import describe, flat_params, matrix_shape, row_axes_for, to_matrix, warn_guessed
from .models import Model, make_model
from .per_example import Request, make_capture_fn, run_chunked, sample_keys
from .storage import batch_means, layer_request, plan_storage
from .train import batch_indices, make_eval, make_optimizer, make_train_step

__all__ = ["TARGETS", "capture", "capture_from_fn", "capture_model"]

TARGETS = tuple(t.value for t in CaptureTarget)


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python_version": platform.python_version()}
    for pkg in ("jax", "jaxlib", "numpy", "xarray", "zarr", "optax", "precond-lab"):
        try:
            out[f"{pkg.replace('-', '_')}_version"] = md.version(pkg)
        except md.PackageNotFoundError:
            out[f"{pkg.replace('-', '_')}_version"] = "unknown"
    return out


def _check_choice(kind: str, values: Sequence[str], valid: Sequence[str]) -> tuple[str, ...]:
    bad = [v for v in values if v not in valid]
    if bad:
        raise ValueError(f"unknown {kind} {bad}; valid {kind}: {', '.join(valid)}")
    if not values:
        raise ValueError(f"no {kind} given; valid {kind}: {', '.join(valid)}")
    return tuple(dict.fromkeys(values))


def _default_layers(model: Model, params) -> tuple[str, ...]:
    if model.tape_layers:
        return tuple(f"{n}/w" for n in model.tape_layers)
    return tuple(p for p, leaf in flat_params(params).items() if np.ndim(leaf) >= 1)


def capture(
    model: str | Model = "mlp",
    dataset: str | Dataset = "digits",
    *,
    steps: Sequence[int] = (0,),
    targets: Sequence[str] = ("gradients",),
    layers: Sequence[str] | None = None,
    out=None,
    num_samples: int = 64,
    batch_size: int = 32,
    batch_sizes: Sequence[int] = (8,),
    mc_samples: int = 8,
    optimizer: str = "sgd",
    learning_rate: float = 0.1,
    seed: int = 0,
    dtype: str = "float32",
    model_options: Mapping | None = None,
    row_axes: Mapping[str, Sequence[int]] | None = None,
    chunk_size: int = 64,
    eval_samples: int = 1000,
    callback: Callable[[int, xr.DataTree], None] | None = None,
    progress: bool = False,
    storage: str = "auto",
) -> xr.DataTree:
    """Train and capture per-example quantities at ``steps``.

    Args:
        model: a name (``mlp``, ``cnn``, ``transformer``) or a ``Model``.
        dataset: a name (see ``load_dataset``) or a ``Dataset``.
        steps: training steps to capture at (0 = initialisation).
        targets: any of ``TARGETS``: ``gradients`` (per-example), ``ggn`` (exact GGN
            pseudo-gradients), ``ggn-mc`` (sampled labels), ``kfac``/``kfac-ggn``/
            ``kfac-mc`` (activations and backprops with real/Λ^{1/2}/sampled
            cotangents), ``batch`` (mini-batch gradients at ``batch_sizes``),
            ``trajectory`` (the training mini-batch gradients, for Adagrad's target).
        layers: parameter paths such as ``"layers/0/w"`` (default: every tape layer's
            weight, or every non-scalar parameter of a user model).
        out: Zarr path; the run is written there and resumed if it exists.
        num_samples: examples captured per step (the same ones at every step).
        batch_size: training mini-batch size.
        batch_sizes: mini-batch sizes for the ``batch`` target (each ≤ ``num_samples``).
        mc_samples: sampled labels per example for ``ggn-mc``/``kfac-mc``.
        optimizer: ``sgd``, ``momentum`` or ``adam``; ``learning_rate`` its step size.
        seed: initialisation, capture examples, mini-batches and sampled labels.
        dtype: ``float32`` or ``float64`` (needs ``jax_enable_x64``).
        model_options: keyword options for ``make_model`` (names only).
        row_axes: per-layer matricization overrides (see ``.layout``).
        chunk_size: examples per jitted call (bounds memory).
        eval_samples: test examples for ``test_loss``/``test_accuracy``.
        callback: ``callback(step, step_tree)`` after each captured step is stored.
        progress: show a tqdm progress bar over training steps.
        storage: how ``gradients``, ``ggn`` and ``ggn-mc`` are stored (see ``.storage``):
            ``"auto"`` as their factors ``(δ, a)`` for every layer whose gradients factor
            (dense and convolution layers, ``T`` positions) where ``T·(m + n) < m·n``, else
            dense; ``"factored"`` always as factors; ``"dense"`` always dense. Read either
            form with ``schema.layer_samples`` or ``layer_target``.

    Returns:
        The run's DataTree: opened lazily from ``out`` (all complete steps), or in memory.

    Raises:
        ValueError: unknown model, dataset, target, layer, optimizer or storage;
            ``storage="factored"`` for a layer that cannot factor; bad sizes; a
            non-finite learning rate; labels that do not fit the model's outputs.
        NonFiniteError: a captured step holds NaN/Inf (inputs, or diverged training); the
            steps before it stay stored and a rerun resumes.
        StoreError: ``out`` holds a foreign store or a different configuration, is being
            written by another process, cannot be written, is damaged, or already holds
            a later step whose ``trajectory`` a new earlier step would change.
    """
    ds = load_dataset(dataset) if isinstance(dataset, str) else dataset
    if isinstance(model, str):
        model = make_model(model, ds, dtype=dtype, **dict(model_options or {}))
    elif model_options:
        raise ValueError("model_options only apply to a model given by name")
    if isinstance(targets, str):
        raise TypeError(f"targets must be a list of names, e.g. [{targets!r}]; got {targets!r}")
    targets = _check_choice("targets", list(targets), TARGETS)
    _check_choice("storage", [storage], STORAGES)
    steps = sorted({int(s) for s in steps})
    if not steps or steps[0] < 0:
        raise ValueError(f"steps must be non-negative integers; got {steps}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64; got {dtype!r}")
    if dtype == "float64" and not jax.config.read("jax_enable_x64"):
        raise ValueError("dtype float64 needs jax.config.update('jax_enable_x64', True)")
    if not isinstance(learning_rate, (int, float)) or not math.isfinite(learning_rate):
        raise ValueError(f"learning_rate must be a finite number; got {learning_rate!r}")
    n_train = len(ds.y_train)
    for name, v, hi in (
        ("num_samples", num_samples, n_train),
        ("batch_size", batch_size, n_train),
        ("mc_samples", mc_samples, None),
        ("chunk_size", chunk_size, None),
    ):
        if int(v) < 1 or (hi is not None and int(v) > hi):
            where = f" (the {n_train} training examples)" if hi is not None else ""
            hint = (
                " (the training mini-batch size, default 32: pass a smaller batch_size=)"
                if name == "batch_size" and hi is not None and int(v) > hi
                else ""
            )
            raise ValueError(f"{name} must be in [1, {hi or 'inf'}]{where}; got {v}{hint}")
    batch_sizes = sorted({int(b) for b in batch_sizes}) if "batch" in targets else []
    if any(b < 1 or b > num_samples for b in batch_sizes) or (
        "batch" in targets and not batch_sizes
    ):
        raise ValueError(
            f"batch_sizes must lie in [1, num_samples={num_samples}]; got {batch_sizes}"
        )

    params = model.init(jax.random.PRNGKey(seed))
    flat = flat_params(params)
    if layers is not None and not list(layers):
        raise ValueError("layers is empty: name at least one layer, or omit it for the default")
    layers = tuple(layers) if layers else _default_layers(model, params)
    _check_choice("layers", list(layers), list(flat))
    if any(p == CHECKPOINT or p.startswith(CHECKPOINT + "/") for p in layers):
        raise ValueError("a layer path may not start with 'checkpoint' (reserved group name)")
    skipped = {p: why for p, why in getattr(model, "kfac_skipped", ()) if p in layers}
    if set(targets) & set(KFAC_TARGETS):
        for p in layers:
            if p not in skipped:
                kfac_layer(model, p)
        twins = ", ".join(sorted({KFAC_DENSE_TWIN[t] for t in targets if t in KFAC_DENSE_TWIN}))
        for p, why in skipped.items():
            warnings.warn(
                f"layer {p!r}: no K-FAC targets, {why}; its per-example {twins} "
                "are captured instead (recorded in the store attribute 'kfac_skipped')",
                KFACSkippedWarning,
                stacklevel=2,
            )
    else:
        skipped = {}
    _check_labels(model, ds, params)
    row_axes = {p: tuple(a) for p, a in (row_axes or {}).items()}
    warn_guessed({p: flat[p].shape for p in layers}, row_axes)
    shapes = {
        p: matrix_shape(flat[p].shape, row_axes_for(flat[p].shape, row_axes.get(p))) for p in layers
    }
    cap_idx = np.random.default_rng(seed).choice(n_train, num_samples, replace=False)
    x0 = np.asarray(ds.x_train[cap_idx[0]])
    x0 = x0.astype(dtype) if x0.dtype.kind == "f" else x0
    factored = plan_storage(model, params, x0, layers, targets, storage, row_axes)
    config = {
        "model": model.name,
        "model_config": model.config_json(),
        "dataset": ds.name,
        "loss": model.loss,
        "seed": int(seed),
        "optimizer": optimizer,
        "learning_rate": float(learning_rate),
        "batch_size": int(batch_size),
        "num_samples": int(num_samples),
        "mc_samples": int(mc_samples),
        "batch_sizes": ",".join(map(str, batch_sizes)),
        "targets": ",".join(targets),
        "layers": ",".join(layers),
        "dtype": dtype,
        "row_axes": json.dumps({p: list(a) for p, a in sorted(row_axes.items())}),
        "storage": storage,
    }
    attrs = {
        "schema": st.SCHEMA_NAME,
        "schema_version": st.SCHEMA_VERSION,
        **config,
        "output_dim": int(ds.output_dim),
        "dataset_description": ds.description,
        "layer_shapes": ",".join(f"{m}x{n}" for m, n in shapes.values()),
        "config_json": json.dumps(config, sort_keys=True),
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        **_versions(),
    }
    if skipped:
        attrs["kfac_skipped"] = json.dumps(skipped, sort_keys=True)

    opt = make_optimizer(optimizer, learning_rate)
    opt_state = opt.init(params)
    done: list[int] = []
    result = xr.DataTree(dataset=xr.Dataset(attrs=attrs))
    lock = contextlib.nullcontext()
    if out is not None:
        done = _done_steps(out, attrs)
        if all(s in done for s in steps):  # nothing to write: no lock needed
            return st.open_capture(out)
        lock = st.writer_lock(out)
    with lock:
        if out is not None:
            _init_writable(out, attrs)
            done = st.completed_steps(out)
        missing = [s for s in steps if s not in done]
        if "trajectory" in targets:
            _check_no_insertion(out, missing, done)
        if missing:
            resume = max((d for d in done if d < missing[0]), default=None)
            if resume is not None:
                params, opt_state = _restore(out, resume, params, opt_state)
            cfg = dict(
                seed=seed,
                mc_samples=mc_samples,
                batch_sizes=batch_sizes,
                chunk_size=chunk_size,
                eval_samples=eval_samples,
                batch_size=batch_size,
                factored=factored,
                optimizer=(optimizer, float(learning_rate)),
                kfac_skipped=frozenset(skipped),
            )
            runner = _Runner(model, ds, params, opt, layers, targets, row_axes, cap_idx, cfg, dtype)
            runner.run(params, opt_state, resume, missing, out, result, callback, progress)
    return st.open_capture(out) if out is not None else CaptureTree.of(result)


def _done_steps(out, attrs) -> list[int]:
    """Completed steps of an existing store with the same configuration (read-only)."""
    root = Path(out)
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return []
    st.check_config(root, attrs)
    return st.completed_steps(root)


def _init_writable(out, attrs) -> None:
    try:
        st.init_store(out, attrs)
    except OSError as e:
        raise StoreError(f"cannot write the store at {out}: {e.strerror or e}") from e


def _check_no_insertion(out, missing, done) -> None:
    for m in missing:
        later = [d for d in done if d > m]
        if later:
            raise StoreError(
                f"{out}: cannot add step {m}: step {later[0]} is already captured, and its "
                f"trajectory (the training gradients since the previous captured step) was "
                f"computed without step {m}, so adding it would mix two step lists. Capture "
                f"into a new store (or delete the step groups after {m} first)."
            )


def _check_labels(model: Model, ds: Dataset, params) -> None:
    """Labels must fit the model's outputs (JAX would silently clip a class index)."""
    if model.apply is None:
        y = np.asarray(ds.y_train)
        if ds.loss == "cross_entropy" and y.size and y.min() < 0:
            raise ValueError(f"class labels must be ≥ 0; got min {y.min()}")
        return
    x0 = np.asarray(ds.x_train[:1][0])  # abstract only: no transfer, no conversion kernel
    n_out = int(jax.eval_shape(lambda p, x: model.apply(p, x, None), params, x0).shape[-1])
    for split, y in (("train", ds.y_train), ("test", ds.y_test)):
        y = np.asarray(y)
        if not y.size:
            continue
        if ds.loss == "cross_entropy" and (y.min() < 0 or y.max() >= n_out):
            raise ValueError(
                f"{split} labels lie in [{y.min()}, {y.max()}] but the model has {n_out} "
                f"outputs: class labels must lie in [0, {n_out})"
            )
        if ds.loss == "mse" and y.reshape(len(y), -1).shape[1] != n_out:
            raise ValueError(
                f"{split} targets have {y.reshape(len(y), -1).shape[1]} columns but the model "
                f"has {n_out} outputs"
            )


def _restore(out, step, params, opt_state):
    paths, pleaves, oleaves = st.read_checkpoint(out, step)
    flat = flat_params(params)
    if paths != list(flat):
        raise st.StoreError(
            f"{out}: checkpoint of step {step} has parameters {paths}, expected {list(flat)}"
        )
    otree = jax.tree_util.tree_structure(opt_state)
    if otree.num_leaves != len(oleaves):
        raise st.StoreError(f"{out}: checkpoint of step {step} has a different optimizer state")
    ptree = jax.tree_util.tree_structure(params)
    params = jax.tree_util.tree_unflatten(ptree, [jnp.asarray(v) for v in pleaves])
    old = jax.tree_util.tree_leaves(opt_state)
    opt_state = jax.tree_util.tree_unflatten(
        otree, [jnp.asarray(v, dtype=o.dtype) for v, o in zip(oleaves, old, strict=True)]
    )
    return params, opt_state


def _model_key(model: Model) -> tuple:
    """What a model's traced code depends on: its functions (by identity) and layers."""
    layers = getattr(model, "layers", ())
    return (model.apply, model.loss_fn, model.loss, model.tape_layers, layers)


class _Runner:
    """The jitted pieces of one run and the assembly of a step's DataTree."""

    def __init__(self, model, ds, params, opt, layers, targets, row_axes, cap_idx, cfg, dtype):
        self.model, self.ds, self.layers, self.targets, self.cfg = model, ds, layers, targets, cfg
        self.row_axes = row_axes
        self.dtype = dtype
        self.cap_idx = cap_idx
        self.x_cap, self.y_cap = self._cast(ds.x_train[cap_idx]), self._cast(ds.y_train[cap_idx])
        wanted = frozenset(targets) - {"trajectory"} or frozenset({"gradients"})
        per_layer = {p: layer_request(wanted, True) for p in layers if cfg["factored"][p]}
        for p in cfg.get("kfac_skipped", ()):  # a tied weight: the dense twins of K-FAC
            twins = {KFAC_DENSE_TWIN[t] for t in wanted if t in KFAC_DENSE_TWIN}
            per_layer[p] = (layer_request(wanted, False) - set(KFAC_TARGETS)) | twins
        req = Request(layers, wanted, cfg["mc_samples"], row_axes, per_layer)
        # the compiled pieces are shared by every run of the same configuration (.cache)
        self._key = (_model_key(model), cache.param_signature(params))
        rows = cache.row_axes_key(row_axes, layers)
        lay = tuple(sorted((p, tuple(sorted(t))) for p, t in per_layer.items()))
        what = (layers, tuple(sorted(wanted)), int(cfg["mc_samples"]), rows, lay)
        self.capture_fn = cache.cached(
            ("capture_fn", *self._key, *what), lambda: make_capture_fn(model, params, req)
        )
        self._sampled = req.needs("ggn-mc", "kfac-mc")
        self.evaluate = cache.cached(("eval", self._key[0]), lambda: make_eval(model))
        self._opt = opt
        self._train_key = ("train_step", *self._key, cfg["optimizer"], layers, rows)

    @property
    def train_step(self):
        """The jitted training step, built (or found in the cache) only when first needed."""
        model, opt, layers, rows = self.model, self._opt, self.layers, self.row_axes
        return cache.cached(self._train_key, lambda: make_train_step(model, opt, layers, rows))

    def _cast(self, a):
        a = np.asarray(a)
        return a.astype(self.dtype) if a.dtype.kind == "f" else a

    def batch(self, step):
        idx = batch_indices(self.cfg["seed"], step, len(self.ds.y_train), self.cfg["batch_size"])
        return self._cast(self.ds.x_train[idx]), self._cast(self.ds.y_train[idx])

    def run(self, params, opt_state, resume, missing, out, result, callback, progress):
        """Train from ``resume`` (None: the start) and capture ``missing`` steps."""
        start = 0 if resume is None else resume
        todo = range(start, missing[-1] + 1)
        if progress:
            from .._progress import tqdm

            todo = tqdm(todo, desc="capture", unit="step")
        traj: list[tuple[int, dict]] = []
        trajectory = "trajectory" in self.targets
        for s in todo:
            xb, yb = self.batch(s)
            if s < missing[-1] or trajectory:  # no training step after the last capture
                new_params, new_opt, _, g = self.train_step(params, opt_state, xb, yb)
                if s != resume and trajectory:
                    traj.append((s, g))
            if s in missing:
                train_loss = float(self.evaluate(params, xb, yb)[0])  # forward only
                tree = self.step_tree(s, params, opt_state, train_loss, traj)
                traj = []
                if out is not None:
                    st.write_step(out, s, tree)  # refuses NaN/Inf before the marker
                else:
                    check_step_finite(tree, s)
                    result[st.step_name(s)] = tree
                if callback is not None:
                    callback(s, tree)
            if s < missing[-1]:
                params, opt_state = new_params, new_opt

    def step_tree(self, step, params, opt_state, train_loss, traj) -> xr.DataTree:
        if self._sampled:  # the sampled labels' keys (unused otherwise: zeros, nothing to compile)
            seed = jax.random.PRNGKey(self.cfg["seed"])
            key = jax.random.fold_in(jax.random.fold_in(seed, 77), step)
            keys = sample_keys(key, self.cap_idx, self.cfg["chunk_size"])
        else:
            keys = np.zeros((len(self.cap_idx), 2), np.uint32)
        res = run_chunked(
            self.capture_fn, params, self.x_cap, self.y_cap, keys, self.cfg["chunk_size"]
        )
        coords = {"sample": self.cap_idx.astype(np.int64)}
        y = self.y_cap
        data = {
            "loss": ("sample", res["loss"]),
            "labels": (("sample", "output") if y.ndim == 2 else ("sample",), y),
        }
        attrs = {
            "step": int(step),
            "loss": float(np.mean(res["loss"])),
            "train_loss": train_loss,
            "accuracy": -1.0,
            "test_loss": -1.0,
            "test_accuracy": -1.0,
        }
        if "outputs" in res:
            data["outputs"] = (("sample", "output"), res["outputs"])
            if self.model.loss == "cross_entropy":
                attrs["accuracy"] = float(np.mean(np.argmax(res["outputs"], -1) == y))
        n_test = min(self.cfg["eval_samples"], len(self.ds.y_test))
        if n_test:
            tl, ta = self.evaluate(
                params, self._cast(self.ds.x_test[:n_test]), self._cast(self.ds.y_test[:n_test])
            )
            attrs["test_loss"] = float(tl)
            attrs["test_accuracy"] = -1.0 if np.isnan(float(ta)) else float(ta)
        nodes = {
            "/": xr.Dataset(data, coords=coords, attrs=attrs),
            CHECKPOINT: _checkpoint(params, opt_state),
        }
        flat = flat_params(params)
        for p in self.layers:
            nodes.update(self._layer_nodes(p, flat[p], res[p], traj, coords))
        return xr.DataTree.from_dict(nodes)

    def _layer_nodes(self, p, param, r, traj, coords):
        rows = row_axes_for(param.shape, self.row_axes.get(p))
        mat = np.asarray(to_matrix(param, 0, param.shape, rows))
        data = {PARAM: (VARIABLE_DIMS[PARAM][0], mat)}
        factored = self.cfg["factored"][p]
        form = STORAGE_FACTORED if factored else STORAGE_DENSE
        stored = [k for k in SAMPLE_KINDS if CaptureTarget.parse(k.value).value in self.targets]
        for kind in SAMPLE_KINDS:
            name = kind.value
            tied = p in self.cfg.get("kfac_skipped", ())  # its gradients stand for K-FAC's
            if name in r and (kind is not Kind.GRADIENTS or name in self.targets or tied):
                data[name] = (VARIABLE_DIMS[name][0], r[name])
        acts = r.get(KFAC_ACTIVATIONS)
        positional = acts is not None and acts.ndim == 3
        keep = [  # factors kept: K-FAC targets asked for, and the factored kinds
            k
            for k, t in zip(SAMPLE_KINDS, KFAC_TARGETS, strict=True)
            if (t in self.targets and p not in self.cfg.get("kfac_skipped", ()))
            or (factored and k in stored)
        ]
        for kind in keep:  # the layout with or without a position dim
            name = KFAC_BACKPROPS[kind]
            data[name] = (VARIABLE_DIMS[name][int(positional)], r[name])
        if keep:
            data[KFAC_ACTIVATIONS] = (VARIABLE_DIMS[KFAC_ACTIVATIONS][int(positional)], acts)
        c = {**coords}
        if Kind.GGN.value in data or KFAC_BACKPROPS[Kind.GGN] in data:
            c[Dim.CLASS.value] = np.arange(self.ds.output_dim)
        if Kind.GGN_MC.value in data or KFAC_BACKPROPS[Kind.GGN_MC] in data:
            c[Dim.MC.value] = np.arange(self.cfg["mc_samples"])
        attrs = {
            "param_path": p,
            "param_shape": ",".join(map(str, param.shape)),
            "row_axes": ",".join(map(str, rows)),
            "rows": mat.shape[0],
            "cols": mat.shape[1],
            "matrix_meaning": describe(param.shape, rows),
            **{storage_attr(k): form for k in stored},
        }
        nodes = {p: xr.Dataset(data, coords=c, attrs=attrs)}
        g = r.get("gradients")
        for b in self.cfg["batch_sizes"]:
            if factored:
                means = batch_means(r[KFAC_BACKPROPS[Kind.GRADIENTS]], acts, b)
            else:
                nb = len(g) // b
                means = g[: nb * b].reshape(nb, b, *g.shape[1:]).mean(axis=1)
            nb = len(means)
            nodes[f"{p}/{batch_group(b)}"] = xr.Dataset(
                {Kind.GRADIENTS.value: ((Dim.BATCH.value, "row", "col"), means)},
                coords={WEIGHT: (Dim.BATCH.value, np.full(nb, b / nb, means.dtype))},
                attrs={"batch_size": b, "note": "batch j = captured examples j*B..(j+1)*B-1"},
            )
        if "trajectory" in self.targets:
            gs = np.stack([np.asarray(gg[p]) for _, gg in traj])
            nodes[f"{p}/{TRAJECTORY_GROUP}"] = xr.Dataset(
                {Kind.GRADIENTS.value: ((Dim.TRAIN_STEP.value, "row", "col"), gs)},
                coords={
                    Dim.TRAIN_STEP.value: np.array([s for s, _ in traj], np.int64),
                    WEIGHT: (Dim.TRAIN_STEP.value, np.ones(len(traj), gs.dtype)),
                },
            )
        return nodes


def _checkpoint(params, opt_state) -> xr.Dataset:
    flat = flat_params(params)
    data = {}
    for i, leaf in enumerate(flat.values()):
        a = np.asarray(leaf)
        data[f"p{i:04d}"] = ([f"p{i:04d}_{d}" for d in range(a.ndim)], a)
    oleaves = jax.tree_util.tree_leaves(opt_state)
    for i, leaf in enumerate(oleaves):
        a = np.asarray(leaf)
        data[f"o{i:04d}"] = ([f"o{i:04d}_{d}" for d in range(a.ndim)], a)
    return xr.Dataset(data, attrs={"param_paths": ",".join(flat), "num_opt_leaves": len(oleaves)})


def capture_from_fn(
    params,
    x,
    y,
    *,
    apply_fn: Callable | None = None,
    loss: str | None = None,
    loss_fn: Callable | None = None,
    steps: Sequence[int] = (0,),
    name: str = "user",
    x_test=None,
    y_test=None,
    layout: str = "auto",
    **kwargs,
) -> xr.DataTree:
    """Capture for any JAX model given as functions.

    With ``apply_fn`` the dense and convolution layers are found in its jaxpr
    (``.discover``): their weights are matricized with rows = output side whatever the
    framework's layout, and the K-FAC targets are available for them (default layers:
    every discovered weight and bias).

    Args:
        params: the parameter pytree (the initialisation when training, ``steps`` > 0).
        x: training inputs; the captured examples are drawn from them.
        y: training labels (int classes for ``cross_entropy``, floats for ``mse``).
        apply_fn: ``(params, x_batch) -> outputs (B, C)``; with ``loss`` (``cross_entropy``
            or ``mse``, see ``.ggn``) enables every non-K-FAC target.
        loss_fn: alternatively ``(params, (x_batch, y_batch)) -> mean loss``: gradient
            targets only (``gradients``, ``batch``, ``trajectory``).
        steps: steps to capture at; ``(0,)`` captures ``params`` as given.
        name: model name stored as provenance.
        x_test: optional evaluation data.
        y_test: optional evaluation data.
        layout: ``"auto"``, ``"flax"`` or ``"torch"``: the preset for parameters that are
            not weights of a discovered layer (see ``.layout``).
        **kwargs: forwarded to ``capture`` (``targets``, ``layers``, ``row_axes``,
            ``out``, ``storage``, …); with ``storage="factored"`` the default layers are
            the discovered layers' weights and biases (as with K-FAC targets).
    """
    if (apply_fn is None) == (loss_fn is None):
        raise ValueError("give exactly one of apply_fn (with loss) or loss_fn")
    if apply_fn is not None and loss not in ("cross_entropy", "mse"):
        raise ValueError(f"apply_fn needs loss='cross_entropy' or 'mse'; got {loss!r}")
    data_loss = loss or ("cross_entropy" if np.asarray(y).dtype.kind in "iu" else "mse")
    ds = from_arrays(x, y, loss=data_loss, x_test=x_test, y_test=y_test)
    if apply_fn is not None:
        want_kfac = bool(set(kwargs.get("targets", ())) & set(KFAC_TARGETS))
        want_kfac |= kwargs.get("storage") == STORAGE_FACTORED  # factors for every layer
        model, kwargs["row_axes"] = user_model(
            apply_fn,
            params,
            ds.x_train[:1],
            loss,
            name=name,
            kfac=want_kfac,
            layout=layout,
            row_axes=kwargs.get("row_axes"),
        )
        if want_kfac and not kwargs.get("layers"):
            skipped = [p for p, _ in getattr(model, "kfac_skipped", ())]
            kwargs["layers"] = list(model.kfac_owners) + skipped
    else:
        model = Model(name, lambda key: params, None, data_loss, {"user": name}, loss_fn=loss_fn)
    leaf = jax.tree_util.tree_leaves(params)[0]
    kwargs.setdefault("dtype", "float64" if leaf.dtype == jnp.float64 else "float32")
    return capture(model, ds, steps=steps, **kwargs)


def capture_model(model, x, y, *, loss: str, params=None, **kwargs) -> xr.DataTree:
    """Capture for a Flax NNX / Linen or Equinox model (or a plain ``apply_fn``).

    The model's parameters, batched apply and layout preset come from
    ``as_apply``; everything else is
    ``capture_from_fn`` (K-FAC layers found in the jaxpr).

    Example::

        tree = capture_model(nnx_mlp, x, y, loss="cross_entropy",
                             targets=["gradients", "ggn", "kfac-ggn"])

    Args:
        model: the model object (or a function ``apply_fn(params, x_batch)``).
        x: inputs and labels (see ``capture_from_fn``).
        y: inputs and labels (see ``capture_from_fn``).
        loss: ``"cross_entropy"`` or ``"mse"``.
        params: Linen variables or a plain function's parameters.
        **kwargs: forwarded to ``capture_from_fn``.
    """
    apply_fn, params, layout = as_apply(model, params)
    kwargs.setdefault("layout", layout)
    return capture_from_fn(params, x, y, apply_fn=apply_fn, loss=loss, **kwargs)
