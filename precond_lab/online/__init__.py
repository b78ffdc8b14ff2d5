"""Online (EMA) estimators of Shampoo, KL-Shampoo, SOAP, KL-SOAP, IF-Shampoo, RF-RMSProp, Adam.

Each estimator is an optax-style ``OnlineEstimator`` built by a factory that holds
the hyper-parameters in its closure, e.g. ``est = kl_shampoo(beta=0.98, frequency=10)``:

* ``state = est.init(G0)``: a ``NamedTuple`` state (e.g. ``KLShampooState``), a
  pytree of arrays;
* ``state = est.update(state, G)``: one step (jitted; ``G`` is ``(m, n)`` or a
  per-example batch ``(N, m, n)``); works under ``jax.jit`` and ``lax.scan``;
* ``est.approximation(state)``: the ``Structure``
  approximating ``Σ`` (so the core metrics apply); ``est.power`` is the power the
  optimizer applies.

``ESTIMATORS`` maps names to factories; ``run_online`` scores estimators on a
stream and reports each cell's ``Status``.
"""

from ._bregman import bregman_shampoo, f_shampoo, sq_shampoo, vn_shampoo
from ._invariance import batch_size_response, initialisation_response
from ._kronecker import (
    KLShampooState,
    KLSOAPState,
    ShampooState,
    SOAPState,
    kl_shampoo,
    kl_soap,
    shampoo,
    soap,
)
from ._rootfree import (
    AdamState,
    IFShampooState,
    RFRMSPropState,
    adam,
    if_shampoo,
    if_shampoo_stationarity,
    rf_rmsprop,
)
from ._runner import ESTIMATORS, run_online, state_is_finite, structure_cosine
from ._state import (
    ApproximationFn,
    InitFn,
    OnlineEstimator,
    UpdateFn,
    batch_factor,
    batch_left,
    batch_right,
    batch_square,
)

__all__ = [
    "ESTIMATORS",
    "AdamState",
    "ApproximationFn",
    "IFShampooState",
    "InitFn",
    "KLSOAPState",
    "KLShampooState",
    "OnlineEstimator",
    "RFRMSPropState",
    "SOAPState",
    "ShampooState",
    "UpdateFn",
    "adam",
    "batch_factor",
    "batch_left",
    "batch_right",
    "batch_size_response",
    "batch_square",
    "bregman_shampoo",
    "f_shampoo",
    "if_shampoo",
    "if_shampoo_stationarity",
    "initialisation_response",
    "kl_shampoo",
    "kl_soap",
    "rf_rmsprop",
    "run_online",
    "shampoo",
    "soap",
    "sq_shampoo",
    "state_is_finite",
    "structure_cosine",
    "vn_shampoo",
]
