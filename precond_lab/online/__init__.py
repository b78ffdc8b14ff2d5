"""Online (EMA) estimators of Shampoo, KL-Shampoo, SOAP, KL-SOAP, IF-Shampoo, RF-RMSProp, Adam.

Each estimator is three pure functions: ``<name>_init(G0, **hparams) -> state``,
``<name>_update(state, G) -> state`` (jitted; ``G`` is ``(m, n)`` or a per-example
batch ``(N, m, n)``) and ``<name>_preconditioner(state) -> Structure`` (the
approximation of ``Σ``, so the core metrics apply). :data:`ESTIMATORS` bundles them
with the power the optimizer applies; :func:`run_online` scores them on a stream.
"""

from ._invariance import batch_size_response, initialisation_response
from ._kronecker import (
    kl_shampoo_init,
    kl_shampoo_preconditioner,
    kl_shampoo_update,
    kl_soap_init,
    kl_soap_preconditioner,
    kl_soap_update,
    shampoo_init,
    shampoo_preconditioner,
    shampoo_update,
    soap_init,
    soap_preconditioner,
    soap_update,
)
from ._rootfree import (
    adam_init,
    adam_preconditioner,
    adam_update,
    if_shampoo_init,
    if_shampoo_preconditioner,
    if_shampoo_stationarity,
    if_shampoo_update,
    rf_rmsprop_init,
    rf_rmsprop_preconditioner,
    rf_rmsprop_update,
)
from ._runner import ESTIMATORS, run_online, structure_cosine
from ._state import EstimatorState, OnlineEstimator

__all__ = [
    "ESTIMATORS",
    "EstimatorState",
    "OnlineEstimator",
    "adam_init",
    "adam_preconditioner",
    "adam_update",
    "batch_size_response",
    "if_shampoo_init",
    "if_shampoo_preconditioner",
    "if_shampoo_stationarity",
    "if_shampoo_update",
    "initialisation_response",
    "kl_shampoo_init",
    "kl_shampoo_preconditioner",
    "kl_shampoo_update",
    "kl_soap_init",
    "kl_soap_preconditioner",
    "kl_soap_update",
    "rf_rmsprop_init",
    "rf_rmsprop_preconditioner",
    "rf_rmsprop_update",
    "run_online",
    "shampoo_init",
    "shampoo_preconditioner",
    "shampoo_update",
    "soap_init",
    "soap_preconditioner",
    "soap_update",
    "structure_cosine",
]
