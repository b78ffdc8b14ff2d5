"""The papers' optimisers as optax ``GradientTransformation``s.

Example:
    >>> import precond_lab.optim as po
    >>> tx = po.kl_shampoo(learning_rate=1e-3)

Each factory ``po.<name>(learning_rate=..., **hyper_parameters)`` returns an
``optax.GradientTransformation`` built on a method of ``precond_lab.methods`` (the one
implementation its online estimator and ``train.preconditioner_of`` also use). Kronecker
optimisers precondition leaves with ≥ 2 modes (size ≤ ``max_dim``) and give the others a
fallback (AdamW; RF-RMSProp for IF-Shampoo), selectable with ``labels`` (optax's
partition convention). Every factory works under ``optax.inject_hyperparams``,
``optax.chain``, ``optax.MultiSteps``, ``jit``, ``vmap`` (hyper-parameters included) and
donation; states are ``NamedTuple``s; ``update`` names the leaf whose state does not fit
the gradient; hyper-parameters are checked against their ranges; a step with a non-finite
gradient, update or state is skipped and counted (``SkipState.skipped``).

=================  ============================================================
``kl_shampoo``     KL-Shampoo (the KL-Methods reference defaults)
``kl_soap``        KL-SOAP (Adam in the KL eigenbasis)
``sq_shampoo``     trace-power Shampoo, q = ½ (``vn_shampoo`` q = 1, ``f_shampoo`` q = 2,
                   ``trace_power_shampoo(q)`` any q)
``shampoo``        Shampoo, ``p`` = ½ or ¼, ``graft`` with Adam or not
``soap``           SOAP (Adam in Shampoo's eigenbasis, bias correction)
``muon``           Muon (optax.contrib.muon's arithmetic; AdamW on the other leaves)
``psgd_kron``      PSGD-Kron (psgd_torch's KronWhiten; AdamW on the other leaves)
``splus``          SPlus (kvfrans/splus's arithmetic; sign updates on the other leaves)
``purifying_shampoo`` Purifying Shampoo (eigenvalue-corrected, adaptive refresh, no grafting)
``dykaf``          DyKAF (SOAP on projector-splitting Kronecker factors)
``if_shampoo``     IF-Shampoo (root- and inverse-free; ``batch_size`` required)
``rf_rmsprop``     RF-RMSProp (root-free RMSProp; ``batch_size`` required)
``adamw``, ``sgd`` the baselines (``adamw`` equals ``optax.adamw``)
=================  ============================================================
"""

from __future__ import annotations

from ..methods import (
    METHODS,
    AdamLeaf,
    DyKAFLeaf,
    IFShampooLeaf,
    KLSOAPLeaf,
    KronLeaf,
    KronState,
    MuonLeaf,
    PSGDLeaf,
    PurifyingLeaf,
    RFRMSPropLeaf,
    ShampooLeaf,
    SOAPLeaf,
    SPlusLeaf,
    scale_by_adam,
    scale_by_dykaf,
    scale_by_if_shampoo,
    scale_by_kl_soap,
    scale_by_muon,
    scale_by_psgd_kron,
    scale_by_purifying_shampoo,
    scale_by_rf_rmsprop,
    scale_by_shampoo,
    scale_by_soap,
    scale_by_splus,
    scale_by_trace_power,
    work_shape,
)
from ._common import (
    FALLBACK,
    KRON,
    SkipState,
    StateSize,
    default_labels,
    init_size,
    scale_and_decay,
    skip_nonfinite,
    state_size,
    with_fallback,
)
from ._factories import (
    adamw,
    dykaf,
    f_shampoo,
    if_shampoo,
    kl_shampoo,
    kl_soap,
    muon,
    psgd_kron,
    purifying_shampoo,
    rf_rmsprop,
    sgd,
    shampoo,
    soap,
    splus,
    sq_shampoo,
    trace_power_shampoo,
    vn_shampoo,
)
from ._probes import cached_root_probe

#: name → factory ``(learning_rate=..., **hyper_parameters) -> GradientTransformation``.
OPTIMIZERS = {
    "kl_shampoo": kl_shampoo,
    "kl_soap": kl_soap,
    "sq_shampoo": sq_shampoo,
    "vn_shampoo": vn_shampoo,
    "f_shampoo": f_shampoo,
    "shampoo": shampoo,
    "soap": soap,
    "muon": muon,
    "psgd_kron": psgd_kron,
    "splus": splus,
    "purifying_shampoo": purifying_shampoo,
    "dykaf": dykaf,
    "if_shampoo": if_shampoo,
    "rf_rmsprop": rf_rmsprop,
    "adamw": adamw,
    "sgd": sgd,
}

#: optimisers whose factory requires ``batch_size`` (from the methods' specs).
NEEDS_BATCH_SIZE = frozenset(s.optimizer for s in METHODS.values() if s.needs_batch_size)

__all__ = [
    "cached_root_probe",
    "FALLBACK",
    "NEEDS_BATCH_SIZE",
    "KRON",
    "OPTIMIZERS",
    "AdamLeaf",
    "DyKAFLeaf",
    "PurifyingLeaf",
    "dykaf",
    "purifying_shampoo",
    "scale_by_dykaf",
    "scale_by_purifying_shampoo",
    "IFShampooLeaf",
    "KLSOAPLeaf",
    "KronLeaf",
    "KronState",
    "MuonLeaf",
    "PSGDLeaf",
    "SPlusLeaf",
    "RFRMSPropLeaf",
    "SOAPLeaf",
    "ShampooLeaf",
    "SkipState",
    "StateSize",
    "adamw",
    "default_labels",
    "f_shampoo",
    "if_shampoo",
    "kl_shampoo",
    "kl_soap",
    "muon",
    "psgd_kron",
    "rf_rmsprop",
    "scale_and_decay",
    "scale_by_adam",
    "scale_by_if_shampoo",
    "scale_by_kl_soap",
    "scale_by_muon",
    "scale_by_psgd_kron",
    "scale_by_splus",
    "scale_by_rf_rmsprop",
    "scale_by_shampoo",
    "scale_by_soap",
    "scale_by_trace_power",
    "sgd",
    "shampoo",
    "skip_nonfinite",
    "soap",
    "splus",
    "sq_shampoo",
    "init_size",
    "state_size",
    "trace_power_shampoo",
    "vn_shampoo",
    "with_fallback",
    "work_shape",
]
