"""Online (EMA) estimators: each registered method's rule fed a gradient stream.

``ESTIMATORS`` has one factory per method of ``precond_lab.methods`` (Shampoo, KL-Shampoo,
the trace-power family, SOAP, KL-SOAP, IF-Shampoo, RF-RMSProp, Adam, Muon, PSGD-Kron,
SPlus, Purifying Shampoo, DyKAF), e.g.
``est = online.kl_shampoo(shampoo_beta=0.98, frequency=10)``; its hyper-parameters and
defaults are the method's, the ones its optimiser in ``precond_lab.optim`` uses:

* ``state = est.init(G0)``: an ``OnlineState`` (the step counter and the method's leaf
  state, the same type its optimiser keeps per parameter; two-mode names such as
  ``state.left_basis`` read through);
* ``state = est.update(state, G)``: one step (jitted; ``G`` is ``(m, n)`` or a
  per-example batch ``(N, m, n)``); works under ``jax.jit`` and ``lax.scan``;
* ``est.approximation(state)``: the ``Structure`` approximating ``Σ`` (the method's own
  reader, so the core metrics apply); ``est.power`` is the power the optimiser applies.

``run_online`` scores estimators on a stream and reports each cell's ``Status``.
"""

from ..methods import OnlineState, if_shampoo_stationarity
from ._estimators import ESTIMATORS, bregman_shampoo, estimator
from ._invariance import (
    IF_TIMING_OPS,
    KfacIfShampoo,
    batch_size_response,
    if_shampoo_step_scale,
    if_shampoo_timings,
    initialisation_response,
    kfac_if_shampoo,
    step_scale_levels,
)
from ._runner import fit_stream, run_online, state_is_finite, structure_cosine
from ._scoring import (
    GAP_ROUNDOFF,
    captured_stream,
    checked_gap,
    kronecker_member,
    score_stream,
    segment_plan,
)
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
from ._stationary import run_full_batch, stationary_set

adam = ESTIMATORS["adam"]
dykaf = ESTIMATORS["dykaf"]
f_shampoo = ESTIMATORS["f_shampoo"]
if_shampoo = ESTIMATORS["if_shampoo"]
kl_shampoo = ESTIMATORS["kl_shampoo"]
kl_soap = ESTIMATORS["kl_soap"]
muon = ESTIMATORS["muon"]
psgd_kron = ESTIMATORS["psgd_kron"]
purifying_shampoo = ESTIMATORS["purifying_shampoo"]
rf_rmsprop = ESTIMATORS["rf_rmsprop"]
shampoo = ESTIMATORS["shampoo"]
soap = ESTIMATORS["soap"]
splus = ESTIMATORS["splus"]
sq_shampoo = ESTIMATORS["sq_shampoo"]
vn_shampoo = ESTIMATORS["vn_shampoo"]

__all__ = [
    "ESTIMATORS",
    "GAP_ROUNDOFF",
    "captured_stream",
    "checked_gap",
    "kronecker_member",
    "score_stream",
    "segment_plan",
    "ApproximationFn",
    "InitFn",
    "OnlineEstimator",
    "OnlineState",
    "UpdateFn",
    "adam",
    "dykaf",
    "batch_factor",
    "batch_left",
    "batch_right",
    "batch_size_response",
    "if_shampoo_step_scale",
    "if_shampoo_timings",
    "IF_TIMING_OPS",
    "KfacIfShampoo",
    "kfac_if_shampoo",
    "step_scale_levels",
    "batch_square",
    "bregman_shampoo",
    "estimator",
    "fit_stream",
    "f_shampoo",
    "if_shampoo",
    "if_shampoo_stationarity",
    "initialisation_response",
    "kl_shampoo",
    "kl_soap",
    "muon",
    "psgd_kron",
    "purifying_shampoo",
    "rf_rmsprop",
    "run_online",
    "run_full_batch",
    "shampoo",
    "soap",
    "splus",
    "sq_shampoo",
    "stationary_set",
    "state_is_finite",
    "structure_cosine",
    "vn_shampoo",
]
