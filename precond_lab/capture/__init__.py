"""Capture per-example gradients, Gauss–Newton pseudo-gradients and K-FAC factors.

Train a model (plain JAX, optax) on an offline dataset and, at chosen steps, record for
selected layers the per-example gradients ``G_i`` (``m × n``), exact and sampled-label
GGN pseudo-gradients, K-FAC activations and backprops, mini-batch and trajectory
gradients, into an ``xarray.DataTree`` stored in Zarr (atomic per step, resumable).
A dense or convolution layer's per-example targets are stored as their factors ``(δ, a)``
where that is smaller (``storage``, see ``.storage``). Every ``(sample, [class|mc,] row,
col)`` array ``schema.layer_samples`` returns (stored, or rebuilt lazily from factors)
feeds ``precond_lab.targets.SampleTarget``; ``layer_target`` uses the factors directly.

Example::

    from precond_lab import schema
    from precond_lab.capture import capture, layer_target, open_capture
    tree = capture("mlp", "digits", steps=[0, 50], targets=["gradients", "ggn"],
                   out="run.zarr")
    node = open_capture("run.zarr")["step_000050/layers/0/w"]
    g = schema.layer_samples(node, "gradients")  # lazy (sample, row, col)
    ggn = layer_target(node, "ggn")  # a FactoredTarget: G is never formed

See ``.store`` for the schema, ``.layout`` for matricization, ``.ggn`` for loss
conventions, ``.kfac`` for K-FAC conventions.
A second capture of the same configuration (model functions, parameter shapes, layers,
targets, optimizer) reuses the first one's compiled functions, whatever its number of
examples (``.cache``).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

# Every name below loads on first use (PEP 562): the submodules import JAX, and
# ``precond-lab capture --help`` must not wait for it (issue 23). Importing ``.cache`` (which
# every capture path does) turns on JAX's persistent compilation cache, so a new process's
# first capture loads its executables from disk (``enable_persistent_cache``).
_LAZY = {
    "TARGETS": "api",
    "capture": "api",
    "capture_from_fn": "api",
    "capture_model": "api",
    "enable_persistent_cache": "cache",
    "DATASETS": "data",
    "Dataset": "data",
    "from_arrays": "data",
    "load_dataset": "data",
    "Layer": "discover",
    "discover": "discover",
    "kfac_model": "discover",
    "layer_factors": "factors",
    "layer_target": "factors",
    "as_apply": "frameworks",
    "LOSSES": "ggn",
    "hessian_sqrt": "ggn",
    "per_example_loss": "ggn",
    "KFACSkippedWarning": "kfac",
    "LAYOUTS": "layout",
    "LayoutWarning": "layout",
    "MODELS": "models",
    "Model": "models",
    "Tape": "models",
    "make_model": "models",
    "SCHEMA": "store",
    "SCHEMA_VERSION": "store",
    "StoreError": "store",
    "open_capture": "store",
    "validate_store": "store",
}

if TYPE_CHECKING:  # pragma: no cover
    from .api import TARGETS, capture, capture_from_fn, capture_model
    from .cache import enable_persistent_cache
    from .data import DATASETS, Dataset, from_arrays, load_dataset
    from .discover import Layer, discover, kfac_model
    from .factors import layer_factors, layer_target
    from .frameworks import as_apply
    from .ggn import LOSSES, hessian_sqrt, per_example_loss
    from .kfac import KFACSkippedWarning
    from .layout import LAYOUTS, LayoutWarning
    from .models import MODELS, Model, Tape, make_model
    from .store import SCHEMA, SCHEMA_VERSION, StoreError, open_capture, validate_store


# register_model rebinds models.MODELS: always read it afresh
__getattr__, __dir__ = lazy_attributes(
    __name__, globals(), _LAZY, fresh=frozenset({"MODELS"}), submodules=True
)


__all__ = [
    "DATASETS",
    "LAYOUTS",
    "KFACSkippedWarning",
    "Layer",
    "LayoutWarning",
    "LOSSES",
    "MODELS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "TARGETS",
    "Dataset",
    "Model",
    "StoreError",
    "Tape",
    "capture",
    "as_apply",
    "capture_from_fn",
    "capture_model",
    "discover",
    "enable_persistent_cache",
    "kfac_model",
    "layer_factors",
    "layer_target",
    "from_arrays",
    "hessian_sqrt",
    "load_dataset",
    "make_model",
    "open_capture",
    "per_example_loss",
    "validate_store",
]
