"""Setups shared by several studies: captured training runs, their presets and targets.

The two Morwani et al. (P3) studies, :mod:`studies.p3_quality` and
:mod:`studies.p3_batch_labels`, measure on the same captured training runs. Their setups
(:class:`Setup`), training presets (:class:`Training`), the capture itself
(:func:`capture_setup`) and the Gauss–Newton target built from a captured layer
(:func:`ggn_target`) live here, so that neither study imports the other and equal setups
share one capture store (:func:`precond_lab.study.cached_capture` keys on the config).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from precond_lab import schema
from precond_lab.study import cached_capture
from precond_lab.targets import SampleTarget

__all__ = [
    "PAPER_P3",
    "P3_CAPTURE_TARGETS",
    "Setup",
    "Training",
    "P3_SETUPS",
    "P3_TRAINING",
    "capture_setup",
    "padded_target",
    "ggn_target",
    "layer_table",
]

PAPER_P3 = "P3 Morwani et al. 2025"

#: Every capture of the two P3 studies holds all targets, so that p3_quality and
#: p3_batch_labels share the stores of equal setups (``cached_capture`` keys on the config).
P3_CAPTURE_TARGETS = ("gradients", "ggn", "ggn-mc", "kfac-ggn", "batch", "trajectory")


@dataclasses.dataclass(frozen=True)
class Setup:
    """One training run to capture: a model on a dataset.

    Attributes:
        key: the run's name in a study's Dataset (``"mlp/binary-mnist"``).
        model: the model name for :func:`precond_lab.capture.capture`.
        dataset: the dataset name.
        layers: the layers to capture (None: the model's default layers).
        num_samples: captured examples per step (``N``).
        batch_sizes: mini-batch sizes of the ``batch`` capture target.
        mc_samples: sampled-label draws per example (``ggn-mc``).
        model_options: model keyword arguments as ``(name, value)`` pairs (sequence
            values as tuples).
    """

    key: str
    model: str
    dataset: str
    layers: tuple[str, ...] | None = None
    num_samples: int = 64
    batch_sizes: tuple[int, ...] = (4, 16)
    mc_samples: int = 8
    model_options: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Training:
    """How the captured runs train, and which steps are captured.

    Attributes:
        steps: the captured training steps.
        learning_rate: the optimiser's learning rate.
        optimizer: the optimiser name (``"adam"``).
        batch_size: the training mini-batch size.
    """

    steps: tuple[int, ...]
    learning_rate: float
    optimizer: str = "adam"
    batch_size: int = 32


#: The P3 setups per preset: an MLP, a CNN and the small character transformer.
P3_SETUPS: dict[str, dict[str, Setup]] = {
    "test": {
        # one 10×8 layer for the MLP and the CNN, one 8×8 for the transformer (few shapes:
        # JIT compilation dominates at this size)
        "mlp": Setup(
            "mlp/digits",
            "mlp",
            "digits",
            layers=("layers/1/w",),
            num_samples=12,
            batch_sizes=(3, 6),
            model_options=(("hidden", (8,)),),
        ),
        "cnn": Setup(
            "cnn/digits",
            "cnn",
            "digits",
            layers=("head/w",),
            num_samples=12,
            batch_sizes=(3, 6),
            model_options=(("channels", (8,)), ("kernel", 3), ("stride", 2)),
        ),
        "transformer": Setup(
            "transformer/stdlib-chars",
            "transformer",
            "stdlib-chars",
            layers=("blocks/0/v/w",),
            num_samples=6,
            batch_sizes=(3,),
            model_options=(("width", 8), ("heads", 2)),
        ),
    },
    "quick": {
        "mlp": Setup(
            "mlp/binary-mnist",
            "mlp",
            "binary-mnist",
            num_samples=64,
            batch_sizes=(4, 16, 32),
            model_options=(("hidden", (16,)),),
        ),
        "cnn": Setup(
            "cnn/digits",
            "cnn",
            "digits",
            layers=("convs/1/w", "head/w"),
            num_samples=64,
            batch_sizes=(4, 16, 32),
        ),
        "transformer": Setup(
            "transformer/stdlib-chars",
            "transformer",
            "stdlib-chars",
            layers=("blocks/0/v/w", "blocks/0/o/w"),
            num_samples=32,
            batch_sizes=(4,),
        ),
    },
    "full": {
        "mlp": Setup(
            "mlp/binary-mnist",
            "mlp",
            "binary-mnist",
            num_samples=512,
            batch_sizes=(4, 16, 64, 128, 256),
        ),
        "cnn": Setup("cnn/mnist", "cnn", "mnist", num_samples=256, batch_sizes=(4, 16, 64, 128)),
        "transformer": Setup(
            "transformer/stdlib-chars",
            "transformer",
            "stdlib-chars",
            layers=("blocks/0/q/w", "blocks/0/v/w", "blocks/0/o/w", "blocks/0/fc/w", "head/w"),
            num_samples=128,
            batch_sizes=(4, 16, 64),
        ),
    },
}

#: The training runs of both P3 studies, per preset (captured steps, optimiser).
P3_TRAINING: dict[str, Training] = {
    "test": Training(steps=(0, 3), learning_rate=1e-2, optimizer="adam", batch_size=16),
    "quick": Training(steps=(0, 40, 120), learning_rate=3e-3, optimizer="adam", batch_size=32),
    "full": Training(
        steps=(0, 100, 250, 500, 1000, 2000), learning_rate=1e-3, optimizer="adam", batch_size=64
    ),
}


def plain(value):
    """Tuples to lists (recursively): the capture config as JSON would read it back."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class Capture:
    """A captured training run, as the identities, P1 and P2 studies ask for it.

    Attributes:
        model, dataset: what :func:`precond_lab.capture.capture` trains.
        steps: the captured training steps.
        num_samples: captured examples per step.
        targets: capture targets (CLI spellings, e.g. ``"ggn-mc"``).
        layers: the captured layers (also what is read back), or None: the model's default.
        mc_samples: sampled-label draws per example, or None: the capture's default.
        dtype: the stored dtype, or None: the capture's default.
        model_options: model keyword arguments as ``(name, value)`` pairs.
    """

    model: str
    dataset: str
    steps: tuple[int, ...] = ()
    num_samples: int = 128
    targets: tuple[str, ...] = ("gradients", "ggn")
    layers: tuple[str, ...] | None = None
    mc_samples: int | None = None
    dtype: str | None = None
    model_options: tuple[tuple[str, Any], ...] = ()

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~precond_lab.study.cached_capture` (its cache key)
        and of :func:`~precond_lab.study.capture_targets`: lists, as JSON reads them back;
        unset (None / empty) options are left out."""
        out: dict[str, Any] = {
            "model": self.model,
            "dataset": self.dataset,
            "steps": [int(s) for s in self.steps],
            "num_samples": int(self.num_samples),
            "targets": list(self.targets),
        }
        optional = {
            "layers": None if self.layers is None else list(self.layers),
            "mc_samples": self.mc_samples,
            "dtype": self.dtype,
            "model_options": {k: plain(v) for k, v in self.model_options} or None,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


def capture_setup(
    setup: Setup,
    training: Training,
    seed: int,
    cache_dir: str | Path | None,
    targets: tuple[str, ...] = P3_CAPTURE_TARGETS,
) -> tuple[xr.DataTree, dict]:
    """The cached capture of one setup (all ``targets``) and its capture config.

    Args:
        setup: the model, dataset, layers and sizes.
        training: the captured steps and the optimiser.
        seed: the run's seed.
        cache_dir: the capture cache (None: :func:`~precond_lab.study.cached_capture`'s
            default).
        targets: the capture targets (default: every P3 target, so equal setups share
            one store).

    Returns:
        ``(tree, config)``: the capture opened lazily and the keyword arguments it was
        captured with.
    """
    cfg: dict[str, Any] = {
        "model": setup.model,
        "dataset": setup.dataset,
        "steps": [int(s) for s in training.steps],
        "targets": list(targets),
        "layers": None if setup.layers is None else list(setup.layers),
        "num_samples": int(setup.num_samples),
        "batch_sizes": [int(b) for b in setup.batch_sizes],
        "mc_samples": int(setup.mc_samples),
        "optimizer": training.optimizer,
        "learning_rate": float(training.learning_rate),
        "batch_size": int(training.batch_size),
        "seed": int(seed),
    }
    if setup.model_options:
        cfg["model_options"] = {k: plain(v) for k, v in setup.model_options}
    return cached_capture(cache_dir, **cfg), cfg


def padded_target(samples: np.ndarray, weights: np.ndarray) -> SampleTarget:
    """A :class:`SampleTarget` padded with zero-weight zeros to a power-of-two count.

    The padding changes nothing (weight 0) but lets every target of a layer shape reuse
    the same compiled kernels (JIT compilation dominates at these small sizes).

    Args:
        samples: ``(N, m, n)`` per-sample matrices.
        weights: ``(N,)`` their weights.

    Returns:
        The target, streamed in one chunk of the padded size (at least 16).
    """
    n = len(samples)
    size = max(16, 1 << int(np.ceil(np.log2(max(n, 1)))))
    if size > n:
        pad = np.zeros((size - n, *samples.shape[1:]), samples.dtype)
        samples = np.concatenate([samples, pad])
        weights = np.concatenate([weights, np.zeros(size - n, weights.dtype)])
    return SampleTarget(samples, weights=weights, chunk_size=size)


def ggn_target(node: xr.DataTree) -> tuple[SampleTarget, tuple | None]:
    """``H_GN`` of a captured layer from its exact pseudo-gradients, and K-FAC's inputs.

    ``H_GN = (1/N) Σ_{i,c} vec(b_{i,c}) vec(b_{i,c})ᵀ`` over the ``N`` examples' exact
    pseudo-gradients ``b_{i,c} = J_iᵀ Λ_i^{1/2} e_c`` (capture target ``ggn``).

    Args:
        node: a captured layer group.

    Returns:
        ``(target, kfac_inputs)``: the padded target (:func:`padded_target`) and the
        layer's ``(activations, exact-GGN backprops)``, or None if not captured.
    """
    samples, weights = schema.sample_bag(schema.layer_samples(node, schema.Kind.GGN))
    kfac_in = schema.layer_kfac_inputs(node, schema.Kind.GGN)
    return padded_target(samples, weights), kfac_in


def layer_table(captures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer names and shapes of several captures, one row per capture (padded).

    Args:
        captures: capture trees (with the ``layers`` and ``layer_shapes`` attributes).

    Returns:
        ``(names, rows, cols)``: ``(len(captures), max layers)`` arrays, names ``""`` and
        sizes ``-1`` where a capture has fewer layers.
    """
    lists = [str(t.attrs["layers"]).split(",") for t in captures]
    n_layers = max(len(x) for x in lists)
    names = np.full((len(lists), n_layers), "", dtype=object)
    rows = np.full((len(lists), n_layers), -1, np.int64)
    cols = np.full((len(lists), n_layers), -1, np.int64)
    for i, (tree, layers) in enumerate(zip(captures, lists, strict=True)):
        shapes = str(tree.attrs["layer_shapes"]).split(",")
        for j, (lay, shp) in enumerate(zip(layers, shapes, strict=True)):
            names[i, j] = lay
            rows[i, j], cols[i, j] = (int(x) for x in shp.split("x"))
    return names.astype(str), rows, cols


def run_coords(trees: dict, steps, dim: str, names, rows, cols) -> dict:
    """The training curves (``loss``, ``test_accuracy``: NaN where not recorded) on
    ``(dim, step)`` and the layer-slot coordinates (``layer_name``, ``layer_rows``,
    ``layer_cols`` on ``(dim, layer)``) of captured runs ``{key: tree}``."""
    from precond_lab import schema

    def attr(tree, step, key):
        value = float(tree[schema.step_name(step)].attrs.get(key, np.nan))
        return np.nan if value == -1.0 else value  # -1: not recorded

    out = {k: ((dim, "step"), [[attr(t, s, k) for s in steps] for t in trees.values()])
           for k in ("loss", "test_accuracy")}  # fmt: skip
    out |= {k: ((dim, "layer"), a) for k, a in
            (("layer_name", names), ("layer_rows", rows), ("layer_cols", cols))}  # fmt: skip
    return out
