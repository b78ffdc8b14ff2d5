"""The papers' optimisers as optax ``GradientTransformation``s (chainable, jit/vmap/pmap-safe).

Example:
    >>> import precond_lab.optim as po
    >>> tx = po.kl_shampoo(learning_rate=1e-3)

Each factory ``po.<name>(learning_rate=..., **hyper_parameters)`` returns an
``optax.GradientTransformation``. Kronecker optimisers precondition leaves with ≥ 2 modes
(size ≤ ``max_dim``) and give the others a fallback (AdamW; RF-RMSProp for IF-Shampoo),
selectable with ``labels`` (optax's partition convention). Their states are ``NamedTuple``s
(``KronState`` with one leaf state per parameter); ``state_size`` reports their size;
``state_dtype`` chooses the state's dtype (e.g. ``jnp.bfloat16``).

=================  ============================================================
``kl_shampoo``     KL-Shampoo (the KL-Methods reference defaults)
``kl_soap``        KL-SOAP (Adam in the KL eigenbasis)
``sq_shampoo``     trace-power Shampoo, q = ½ (``vn_shampoo`` q = 1, ``f_shampoo`` q = 2,
                   ``trace_power_shampoo(q)`` any q)
``shampoo``        Shampoo, ``p`` = ½ or ¼, ``graft`` with Adam or not
``soap``           SOAP (Adam in Shampoo's eigenbasis, bias correction)
``if_shampoo``     IF-Shampoo (root- and inverse-free; ``batch_size`` required)
``rf_rmsprop``     RF-RMSProp (root-free RMSProp; ``batch_size`` required)
``adamw``, ``sgd`` optax's baselines
=================  ============================================================
"""

from __future__ import annotations

from typing import Any

import optax

from ._common import (
    FALLBACK,
    KRON,
    StateSize,
    default_labels,
    scale_and_decay,
    state_size,
    with_fallback,
    work_shape,
)
from ._kl import (
    KLSOAPLeaf,
    KronLeaf,
    KronState,
    f_shampoo,
    kl_shampoo,
    kl_soap,
    scale_by_kl_soap,
    scale_by_trace_power,
    sq_shampoo,
    trace_power_shampoo,
    vn_shampoo,
)
from ._rootfree import (
    IFShampooLeaf,
    RFRMSPropLeaf,
    if_shampoo,
    rf_rmsprop,
    scale_by_if_shampoo,
    scale_by_rf_rmsprop,
)
from ._shampoo import ShampooLeaf, SOAPLeaf, scale_by_shampoo, scale_by_soap, shampoo, soap


def adamw(learning_rate: Any = 1e-3, **kwargs: Any) -> optax.GradientTransformation:
    """optax's AdamW (the baseline), ``**kwargs`` as ``optax.adamw``."""
    return optax.adamw(learning_rate, **kwargs)


def sgd(learning_rate: Any = 1e-2, **kwargs: Any) -> optax.GradientTransformation:
    """optax's SGD (the baseline), ``**kwargs`` as ``optax.sgd`` (e.g. ``momentum``)."""
    return optax.sgd(learning_rate, **kwargs)


#: name → factory ``(learning_rate=..., **hyper_parameters) -> GradientTransformation``.
OPTIMIZERS = {
    "kl_shampoo": kl_shampoo,
    "kl_soap": kl_soap,
    "sq_shampoo": sq_shampoo,
    "vn_shampoo": vn_shampoo,
    "f_shampoo": f_shampoo,
    "shampoo": shampoo,
    "soap": soap,
    "if_shampoo": if_shampoo,
    "rf_rmsprop": rf_rmsprop,
    "adamw": adamw,
    "sgd": sgd,
}

__all__ = [
    "FALLBACK",
    "KRON",
    "OPTIMIZERS",
    "IFShampooLeaf",
    "KLSOAPLeaf",
    "KronLeaf",
    "KronState",
    "RFRMSPropLeaf",
    "SOAPLeaf",
    "ShampooLeaf",
    "StateSize",
    "adamw",
    "default_labels",
    "f_shampoo",
    "if_shampoo",
    "kl_shampoo",
    "kl_soap",
    "rf_rmsprop",
    "scale_and_decay",
    "scale_by_if_shampoo",
    "scale_by_kl_soap",
    "scale_by_rf_rmsprop",
    "scale_by_shampoo",
    "scale_by_soap",
    "scale_by_trace_power",
    "sgd",
    "shampoo",
    "soap",
    "sq_shampoo",
    "state_size",
    "trace_power_shampoo",
    "vn_shampoo",
    "with_fallback",
    "work_shape",
]
