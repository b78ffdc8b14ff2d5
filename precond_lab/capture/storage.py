"""Storage forms of a capture: per-example targets as dense arrays or as their factors.

A dense (or weight-sharing) layer's per-example gradient is ``G = Σ_t δ_t a_tᵀ`` over its
``T`` positions, with the layer inputs ``a`` (``kfac_activations``) and the output-side
backprops ``δ`` (``kfac_backprops*``, see ``.kfac``); so are its exact and sampled
Gauss–Newton pseudo-gradients, with the same cotangents the dense arrays are pulled back
with (real labels ↔ ``gradients``, columns of ``Λ^{1/2}`` ↔ ``ggn``, sampled labels
divided by ``√k`` ↔ ``ggn_mc``). Storing ``(δ, a)`` costs ``T·(m + n)`` numbers per
(pseudo-)sample instead of ``m·n``.

``storage`` of ``capture``:

* ``"auto"`` (default): a layer whose gradients factor stores only the factors of every
  requested per-example kind when ``T·(m + n) < m·n``, else the dense arrays;
* ``"factored"``: always the factors (a layer that cannot factor raises ``ValueError``);
* ``"dense"``: always the dense ``(sample, [class|mc,] row, col)`` arrays.

Each layer group records the form of each kind it holds in the attribute
``storage_<kind>`` (``schema.storage_attr``). Mini-batch and trajectory groups are always
dense (they are means, not rank-``T`` sums); a factored layer's mini-batch means are
computed from its factors (``batch_means``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..schema import STORAGE_DENSE, STORAGE_FACTORED, STORAGES
from .kfac import kfac_layer
from .layout import flat_params, matrix_shape, row_axes_for
from .models import Model, Tape

__all__ = ["STORAGES", "factor_rows", "positions", "plan_storage", "layer_request", "batch_means"]

#: Per-example capture targets and the K-FAC target holding their factors.
FACTOR_TARGET = {"gradients": "kfac", "ggn": "kfac-ggn", "ggn-mc": "kfac-mc"}


def factor_rows(model: Model, path: str, shape: Sequence[int]) -> tuple[int, ...] | None:
    """The row axes under which ``path``'s gradient is ``Σ_t δ_t a_tᵀ``; None: no factors."""
    try:
        name, is_bias = kfac_layer(model, path)
    except ValueError:
        return None
    if is_bias:
        return tuple(range(len(shape)))
    for lay in getattr(model, "layers", ()):  # a discovered model: rows from the graph
        if lay.weight == path:
            return tuple(lay.row_axes)
    return row_axes_for(shape)


def positions(model: Model, params, x0) -> dict[str, int]:
    """``{tape layer name: T}``: the shared positions of each layer for one example ``x0``."""
    sizes: dict[str, int] = {}

    def probe(p, x):
        tape = Tape()
        model.apply(p, x, tape)
        sizes.update({k: math.prod(v.shape[:-1]) for k, v in tape.inputs.items()})
        return jnp.zeros(())

    jax.eval_shape(probe, params, x0)
    return sizes


def plan_storage(
    model: Model,
    params,
    x0,
    layers: Sequence[str],
    targets: Sequence[str],
    storage: str,
    row_axes: Mapping[str, tuple[int, ...]],
) -> dict[str, bool]:
    """``{path: factored}``: whether each layer stores its per-example kinds as factors.

    Raises:
        ValueError: an unknown ``storage``; ``"factored"`` for a layer that cannot factor
            (no dense/conv layer owns it, or its ``row_axes`` contradict the layer's).
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}; got {storage!r}")
    wanted = [t for t in FACTOR_TARGET if t in targets] + (["batch"] if "batch" in targets else [])
    if storage == STORAGE_DENSE or not wanted or model.apply is None:
        if storage == STORAGE_FACTORED and wanted:
            raise ValueError(
                "storage='factored' needs a model with known layers (a built-in model, or "
                "capture_from_fn(apply_fn=...)); a loss_fn-only model stores dense gradients"
            )
        return dict.fromkeys(layers, False)
    flat = flat_params(params)
    sizes = positions(model, params, x0)
    out = {}
    for p in layers:
        shape = tuple(flat[p].shape)
        rows = row_axes_for(shape, row_axes.get(p))
        need = factor_rows(model, p, shape)
        if need is None or tuple(need) != tuple(rows):
            if storage == STORAGE_FACTORED:
                why = (
                    "it is not the weight or bias of a dense/conv layer"
                    if need is None
                    else (f"its row axes {rows} are not its layer's output side {tuple(need)}")
                )
                raise ValueError(f"storage='factored': layer {p!r} cannot factor ({why})")
            out[p] = False
            continue
        m, n = matrix_shape(shape, rows)
        t = sizes[kfac_layer(model, p)[0]]
        out[p] = storage == STORAGE_FACTORED or t * (m + n) < m * n
    return out


def layer_request(targets: Sequence[str], factored: bool) -> frozenset[str]:
    """The engine targets of one layer: its factors instead of dense arrays when ``factored``."""
    targets = frozenset(targets) - {"trajectory"}
    if not factored:
        return targets
    out = {t for t in targets if t not in FACTOR_TARGET and t != "batch"}
    out |= {FACTOR_TARGET[t] for t in targets if t in FACTOR_TARGET}
    if "batch" in targets:
        out.add("kfac")
    return frozenset(out)


def batch_means(backprops: np.ndarray, activations: np.ndarray, batch: int) -> np.ndarray:
    """Mean gradients ``(N // B, m, n)`` of consecutive groups of ``B`` examples, from factors.

    Args:
        backprops: real-label backprops ``(N, [T,] m)``.
        activations: the layer inputs ``(N, [T,] n)``.
        batch: the group size ``B``.
    """
    d, a = np.asarray(backprops), np.asarray(activations)
    if a.ndim == 2:
        d, a = d[:, None], a[:, None]
    nb = len(a) // batch
    d = d[: nb * batch].reshape(nb, batch, *d.shape[1:])
    a = a[: nb * batch].reshape(nb, batch, *a.shape[1:])
    return np.einsum("jbtm,jbtn->jmn", d, a) / batch
