"""The methods: one implementation of each optimiser's statistics, refresh and preconditioner.

Each method is a ``Rule`` (``kl.py``, ``shampoo.py``, ``rootfree.py``, ``muon.py``,
``psgd.py``, ``splus.py``, ``purifying.py``, ``dykaf.py``)
registered with a ``MethodSpec`` in ``METHODS``: its name and label, the power its
optimiser applies, its per-leaf state, the ``approximation(leaf) -> Structure`` that
reads the ``Σ`` the state stands for, the reference code and paper it follows, and its
NumPy transcription in the tests. The same rule runs as

* an optax transformation (``precond_lab.optim``: ``scale_by_*`` here, the optimisers there),
* an online estimator (``precond_lab.online``) fed mini-batch or per-example gradients,

so the optimiser that trains is the estimator that is scored, and
``precond_lab.train.preconditioner_of`` reads a training state through the same
``approximation``.

Example:
    >>> from precond_lab.methods import METHODS
    >>> spec = METHODS["kl_shampoo"]
    >>> rule = spec.build(shampoo_beta=0.95)  # the rule at these hyper-parameters
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import optax

from . import kl, rootfree, shampoo  # noqa: F401  (registered first: METHODS keeps their order)
from ._core import (
    METHODS,
    KronState,
    MethodSpec,
    OnlineState,
    Rule,
    approximation_of,
    conform,
    register,
    transformation,
)
from ._hp import hp, static_int
from ._ops import TENSOR_MODES, all_finite, resolve_dtype, work_shape
from .dykaf import DyKAFLeaf, dykaf_rule, ksl_step
from .kl import EIGENVALUE_UPDATES, KLSOAPLeaf, KronLeaf, kl_soap_rule, trace_power_rule
from .muon import (
    NS_COEFFS,
    MuonLeaf,
    muon_rule,
    newton_schulz,
    one_gradient_shampoo,
    polar_factor,
)
from .psgd import WHITENINGS, PSGDLeaf, procrustes_step, psgd_kron_rule
from .purifying import SOLVERS, PurifyingLeaf, offdiagonal_ratio, purifying_shampoo_rule
from .rootfree import (
    AdamLeaf,
    IFShampooLeaf,
    RFRMSPropLeaf,
    adam_rule,
    if_shampoo_rule,
    if_shampoo_stationarity,
    rf_rmsprop_rule,
)
from .shampoo import ShampooLeaf, SOAPLeaf, shampoo_rule, soap_rule
from .splus import SPlusLeaf, splus_rule


def _scale_by(rule: Callable[..., Rule]) -> Callable[..., optax.GradientTransformation]:
    """The optax transformation of a rule, with the rule's signature (for
    ``optax.inject_hyperparams``)."""

    @functools.wraps(rule)
    def scale_by(*args: Any, **kwargs: Any) -> optax.GradientTransformation:
        return transformation(rule(*args, **kwargs))

    scale_by.__doc__ = (
        f"The direction of ``{rule.__name__}`` as an optax transformation (state "
        f"``KronState``).\n\n{rule.__doc__}"
    )
    scale_by.__name__ = scale_by.__qualname__ = "scale_by_" + rule.__name__.removesuffix("_rule")
    return scale_by


scale_by_trace_power = _scale_by(trace_power_rule)
scale_by_kl_soap = _scale_by(kl_soap_rule)
scale_by_shampoo = _scale_by(shampoo_rule)
scale_by_soap = _scale_by(soap_rule)
scale_by_if_shampoo = _scale_by(if_shampoo_rule)
scale_by_rf_rmsprop = _scale_by(rf_rmsprop_rule)
scale_by_adam = _scale_by(adam_rule)
scale_by_muon = _scale_by(muon_rule)
scale_by_psgd_kron = _scale_by(psgd_kron_rule)
scale_by_splus = _scale_by(splus_rule)
scale_by_purifying_shampoo = _scale_by(purifying_shampoo_rule)
scale_by_dykaf = _scale_by(dykaf_rule)

__all__ = [
    "DyKAFLeaf",
    "PurifyingLeaf",
    "SOLVERS",
    "dykaf_rule",
    "ksl_step",
    "offdiagonal_ratio",
    "purifying_shampoo_rule",
    "scale_by_dykaf",
    "scale_by_purifying_shampoo",
    "scale_by_splus",
    "scale_by_psgd_kron",
    "splus_rule",
    "psgd_kron_rule",
    "procrustes_step",
    "SPlusLeaf",
    "PSGDLeaf",
    "WHITENINGS",
    "EIGENVALUE_UPDATES",
    "METHODS",
    "TENSOR_MODES",
    "AdamLeaf",
    "IFShampooLeaf",
    "KLSOAPLeaf",
    "KronLeaf",
    "KronState",
    "NS_COEFFS",
    "MethodSpec",
    "MuonLeaf",
    "OnlineState",
    "RFRMSPropLeaf",
    "Rule",
    "SOAPLeaf",
    "ShampooLeaf",
    "adam_rule",
    "all_finite",
    "approximation_of",
    "conform",
    "hp",
    "if_shampoo_rule",
    "if_shampoo_stationarity",
    "kl_soap_rule",
    "muon_rule",
    "newton_schulz",
    "one_gradient_shampoo",
    "polar_factor",
    "register",
    "resolve_dtype",
    "rf_rmsprop_rule",
    "scale_by_adam",
    "scale_by_if_shampoo",
    "scale_by_kl_soap",
    "scale_by_muon",
    "scale_by_rf_rmsprop",
    "scale_by_shampoo",
    "scale_by_soap",
    "scale_by_trace_power",
    "shampoo_rule",
    "soap_rule",
    "static_int",
    "trace_power_rule",
    "transformation",
    "work_shape",
]
