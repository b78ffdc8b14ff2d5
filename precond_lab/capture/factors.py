"""The target of a captured layer, factored where the capture holds its factors.

A dense (or weight-sharing) layer's per-example gradient is ``G = Σ_r δ_r a_rᵀ`` with the
K-FAC inputs ``a`` (``kfac_activations``) and backprops ``δ`` (``kfac_backprops*``), and
so are its exact and sampled Gauss–Newton pseudo-gradients (see ``.kfac``). A capture
with a K-FAC target, or one that stores a kind factored (``capture(storage=...)``, see
``.storage``), holds that target in factored form: ``(N, [K,] T, m + n)`` numbers instead
of ``(N, [K,] m, n)``. ``layer_target`` returns a ``FactoredTarget`` from them when that
is smaller or when the kind is stored factored only, and a ``SampleTarget`` on the dense
array otherwise.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import schema
from ..schema import KFAC_ACTIVATIONS, KFAC_BACKPROPS, Kind
from ..targets import FactoredTarget, SampleTarget, Target

__all__ = ["layer_factors", "layer_target"]


def layer_factors(node: xr.DataTree | xr.Dataset, kind) -> tuple[np.ndarray, np.ndarray] | None:
    """``(left, right)`` factors of a captured layer's per-example target ``kind``.

    ``left`` is ``(N, [K,] T, m)`` (the backprops ``δ``) and ``right`` is
    ``(N, [K,] T, n)`` (the activations ``a``, repeated over the class / MC axis ``K``),
    so ``G = Σ_t left[..., t, :] ⊗ right[..., t, :]``; None where the capture holds no
    K-FAC factors for ``kind``.
    """
    kind = schema.parse_kind(kind)
    if kind not in (k.value for k in KFAC_BACKPROPS):
        return None
    ds = node.dataset if isinstance(node, xr.DataTree) else node
    backprops = KFAC_BACKPROPS[Kind(kind)]
    if KFAC_ACTIVATIONS not in ds or backprops not in ds:
        return None
    a = np.asarray(ds[KFAC_ACTIVATIONS].values)
    d = np.asarray(ds[backprops].values)
    positional = a.ndim == 3
    if not positional:
        a = a[:, None, :]
    inner = kind != Kind.GRADIENTS.value  # a class or MC axis after the sample axis
    if not positional:
        d = d[..., None, :]
    if inner:
        a = np.broadcast_to(a[:, None], (*d.shape[:-1], a.shape[-1]))
    return d, a


def layer_target(
    node: xr.DataTree, kind, *, weights=None, mode: str = "auto", prefer_factors: bool = True
) -> Target | None:
    """The ``Target`` of a captured layer for ``kind``.

    Args:
        node: a captured layer group (e.g. ``tree["step_000000/layers/0/w"]``).
        kind: ``gradients``, ``ggn``, ``ggn-mc`` (factored when possible), or any other
            kind ``layer_samples`` knows (dense).
        weights: per-example weights (default ``1/N``, or the captured ``weight``).
        mode: passed to ``FactoredTarget``.
        prefer_factors: use the factors whenever they are smaller than the dense array
            (always when the kind is stored factored only); False: the dense samples: the
            stored array, or for a kind stored factored the array ``layer_samples``
            rebuilds lazily from the factors (``N·[K·]m·n`` memory when read whole).

    Returns:
        The target, or None when the capture holds neither form.
    """
    form = schema.layer_storage(node, kind)
    factors = layer_factors(node, kind)
    if factors is not None and prefer_factors:
        left, right = factors
        m, n = left.shape[-1], right.shape[-1]
        if form != schema.STORAGE_DENSE or left.shape[-2] * (m + n) < m * n:
            return FactoredTarget(left, right, weights, mode=mode)
    dense = schema.layer_samples(node, kind)
    if dense is None:
        if factors is None:
            return None
        return FactoredTarget(*factors, weights, mode=mode)  # K-FAC factors, no samples kind
    return SampleTarget(dense, weights)
