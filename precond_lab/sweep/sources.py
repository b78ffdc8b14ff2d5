"""Sources: uniform ``(step, layer, kind) -> samples`` access to captures and in-memory data.

The seam between iterating over data and evaluating it (as curvlinops separates data
iteration from the operators built on it): the sweep asks a ``Source`` for the
steps, layers and target kinds it holds, the samples of one cell, and their K-FAC
inputs, and never looks inside a store itself. Store names come from
``precond_lab.schema``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from .. import schema
from ..targets import FactoredTarget, Target

__all__ = ["Source", "DictSource", "CaptureSource", "open_source"]


class Source:
    """What the sweep reads: steps, layers, kinds per cell, samples and K-FAC inputs."""

    steps: list[int]
    layers: list[str]
    description: str
    attrs: dict
    step_coords: dict[str, list[float]]

    def kinds(self, step: int, layer: str) -> list[str]:
        """The target kinds held for ``(step, layer)``."""
        raise NotImplementedError

    def samples(self, step: int, layer: str, kind: str):
        """The samples (array, DataArray or Target) of a cell, or None if absent."""
        raise NotImplementedError

    def kfac_inputs(self, step: int, layer: str, kind: str):
        """``(activations, backprops)`` of a cell for K-FAC, or None."""
        return None

    def target(self, step: int, layer: str, kind: str, dtype=None) -> Target | None:
        """A ready (undamped) target of a cell when the source has a cheaper form than
        its samples (K-FAC factors), else None: the sweep then builds one from
        ``samples``."""
        return None


def _check_flat_kinds(data: Mapping) -> None:
    """Refuse a flat ``{parameter name: samples}`` dict, which would read names as kinds."""
    known = {k.value for k in schema.Kind}
    names = [str(k) for k in data if schema.parse_kind(k) not in known and "." in str(k)]
    if names:
        raise ValueError(
            f"the source dict's keys {names[:3]} look like parameter names, but a flat dict "
            "is {kind: samples} (one layer). Pass {layer: {'gradients': samples}}, e.g. "
            "{name: {'gradients': g} for name, g in grads.items()} (interop.from_torch and "
            "from_backpack results are read that way)."
        )


class DictSource(Source):
    """``{kind: samples}``, ``{layer: {kind: samples}}`` or ``{step: {layer: {kind: samples}}}``.

    ``kfac_inputs`` maps a kind to ``(activations, backprops)`` (only when the source has
    one layer and one step), a ``(layer, kind)`` pair to the inputs of one layer (one
    step), or a ``(step, layer, kind)`` triple. A key naming a layer, step or kind that
    the data does not hold, or a kind-only key for several layers, raises ``ValueError``
    instead of being ignored or reused for the wrong layer.
    """

    def __init__(self, data: Mapping, kfac_inputs: Mapping | None):
        if not data:
            raise ValueError("the source dict is empty")
        if callable(getattr(data, "as_layers", None)):  # interop.ParameterGradients
            data = data.as_layers()
        first = next(iter(data.values()))
        if isinstance(first, Mapping):
            inner = next(iter(first.values()))
            nested = data if isinstance(inner, Mapping) else {0: data}
        else:
            _check_flat_kinds(data)
            nested = {0: {"layer": data}}
        self.data = {
            int(s): {
                str(k): {schema.parse_kind(kk): vv for kk, vv in v.items()} for k, v in lay.items()
            }
            for s, lay in nested.items()
        }
        self.steps = list(self.data)
        self.layers = list(dict.fromkeys(lay for s in self.data.values() for lay in s))
        self.kfac = {}
        for key, value in dict(kfac_inputs or {}).items():
            if not (isinstance(value, tuple) and len(value) == 2):
                raise TypeError(
                    f"kfac_inputs[{key!r}] must be an (activations, backprops) pair; "
                    f"got {type(value).__name__}"
                )
            self.kfac[self._kfac_key(key)] = value
        self.description = "in-memory"
        self.attrs = {}
        self.step_coords = {}

    def _kfac_key(self, key) -> tuple[int, str, str]:
        """``(step, layer, kind)`` of a ``kfac_inputs`` key, checked against the data."""
        parts = key if isinstance(key, tuple) else (key,)
        if not 1 <= len(parts) <= 3:
            raise ValueError(
                f"kfac_inputs key {key!r}: use kind, (layer, kind) or (step, layer, kind)"
            )
        kind = schema.parse_kind(parts[-1])
        if len(parts) == 3:
            step = int(parts[0])
        elif len(self.steps) == 1:
            step = self.steps[0]
        else:
            raise ValueError(
                f"kfac_inputs key {key!r} names no step but the source has steps {self.steps}; "
                f"key the inputs by (step, layer, kind)"
            )
        if len(parts) >= 2:
            layer = str(parts[-2])
        elif len(self.layers) == 1:
            layer = self.layers[0]
        else:
            raise ValueError(
                f"kfac_inputs key {key!r} names no layer but the source has layers "
                f"{self.layers}; key the inputs by (layer, kind)"
            )
        if step not in self.data:
            raise ValueError(f"kfac_inputs key {key!r}: no step {step}; steps: {self.steps}")
        if layer not in self.data[step]:
            raise ValueError(
                f"kfac_inputs key {key!r}: no layer {layer!r} at step {step}; layers: "
                f"{list(self.data[step])}"
            )
        if kind not in self.data[step][layer]:
            raise ValueError(
                f"kfac_inputs key {key!r}: layer {layer!r} holds no {kind!r} samples; kinds: "
                f"{list(self.data[step][layer])}"
            )
        return step, layer, kind

    def kinds(self, step, layer):
        return list(self.data[step].get(layer, {}))

    def samples(self, step, layer, kind):
        return self.data[step].get(layer, {}).get(kind)

    def kfac_inputs(self, step, layer, kind):
        return self.kfac.get((step, layer, kind))


class CaptureSource(Source):
    """A capture store's DataTree (lazy: samples are read chunk by chunk when used)."""

    def __init__(self, tree: xr.DataTree, description: str):
        self.tree = tree
        self.attrs = dict(tree.attrs)
        names = sorted(c for c in tree.children if schema.is_step_name(c))
        self.steps = [schema.step_of(c) for c in names]
        self._names = dict(zip(self.steps, names, strict=True))
        layers = str(self.attrs.get("layers", ""))
        self.layers = [x for x in layers.split(",") if x]
        if not self.layers and names:  # no root attribute: every group holding samples
            self.layers = [
                n.relative_to(tree[names[0]])
                for n in tree[names[0]].subtree
                if any(schema.layer_storage(n, k) for k in schema.SAMPLE_KINDS)
            ]
        self.description = description
        self.step_coords = {}
        for key in ("loss", "accuracy", "test_loss", "test_accuracy"):
            vals = [float(tree[self._names[s]].attrs.get(key, np.nan)) for s in self.steps]
            self.step_coords[key] = [np.nan if v == -1.0 else v for v in vals]

    def _node(self, step, layer):
        try:
            return self.tree[self._names[step]][layer]
        except KeyError:
            return None

    def kinds(self, step, layer):
        node = self._node(step, layer)
        return [] if node is None else schema.layer_kinds(node)

    def samples(self, step, layer, kind):
        node = self._node(step, layer)
        return None if node is None else schema.layer_samples(node, kind)

    def kfac_inputs(self, step, layer, kind):
        node = self._node(step, layer)
        return None if node is None else schema.layer_kfac_inputs(node, kind)

    def target(self, step, layer, kind, dtype=None):
        """The target ``precond_lab.capture.layer_target`` builds where the layer holds
        K-FAC factors ``(δ, a)`` for ``kind``: a ``FactoredTarget``
        when they are smaller than the dense samples (factors cast to ``dtype`` if given),
        else the ``SampleTarget`` of the dense samples (None
        when those need a cast: the sweep then builds it). None without factors."""
        from ..capture import layer_factors, layer_target

        node = self._node(step, layer)
        backprops = {k.value: v for k, v in schema.KFAC_BACKPROPS.items()}.get(kind)
        if node is None or backprops is None:
            return None
        if schema.KFAC_ACTIVATIONS not in node.dataset or backprops not in node.dataset:
            return None
        t = layer_target(node, kind)
        if t is None or dtype is None or np.dtype(t.dtype) == np.dtype(dtype):
            return t
        if not isinstance(t, FactoredTarget):
            return None
        left, right = layer_factors(node, kind)
        return FactoredTarget(left.astype(dtype), right.astype(dtype), mode=t.mode)


def open_source(source, kfac_inputs=None, steps=None) -> Source:
    """A ``Source`` for a store path, a DataTree, a dict, or one array."""
    if isinstance(source, Source):
        return source
    if isinstance(source, (str, Path, xr.DataTree)) and kfac_inputs is not None:
        raise ValueError(
            "kfac_inputs= is for dict sources; a capture's K-FAC inputs are read from "
            "the store (capture with --targets kfac,kfac-ggn,kfac-mc)"
        )
    if isinstance(source, (str, Path)):
        from ..capture import open_capture

        return CaptureSource(open_capture(source, steps=steps), str(source))
    if isinstance(source, xr.DataTree):
        return CaptureSource(source, str(source.attrs.get("source_path", "DataTree")))
    if isinstance(source, Mapping):
        return DictSource(source, kfac_inputs)
    if isinstance(source, (np.ndarray, xr.DataArray, Target)) or hasattr(source, "shape"):
        return DictSource({"target": source}, kfac_inputs)
    raise TypeError(
        "source must be a capture path, an xarray.DataTree, a dict {kind: samples} "
        f"(or {{step: {{layer: {{kind: samples}}}}}}), or one array; got {type(source).__name__}"
    )
