"""Kronecker (and diagonal) approximations of a gradient second moment / Gauss–Newton matrix.

Every estimator takes the per-example matrices ``G`` (``(N, m, n)``; or a DataArray,
or a ``Target`` such as a dense ``(mn, mn)`` matrix) and the
keyword ``weights=`` (default ``1/N``), and returns a structure from
``precond_lab.structures``. Iterative estimators attach their convergence history
as ``.info`` (``FitInfo``).

``ESTIMATORS`` is the registry: one ``EstimatorSpec`` per estimator (builder,
label, dense reference, the divergence it is optimal for), registered next to its
definition; ``parse_estimator`` reads spec strings such as ``"power_iteration(3)"``.
"""

# isort: off
# registration order (= the order of ESTIMATORS in tables and figures)
from . import _frobenius, _shampoo, _kl, _eigen, _kfac, _bregman, _flat_tail  # noqa: F401

# isort: on
from ._bregman import (
    bregman_objective,
    bregman_optimal,
    bregman_optimality_checks,
    bregman_stationarity_residual,
    factor_power,
    trace_power_statistic,
    trace_power_update,
)
from ._eigen import diagonal, eigencorrected
from ._flat_tail import (
    SpikeProfile,
    flat_tail,
    flat_tail_factor,
    flat_tail_value,
    kl_flat_tail,
    spike_profile,
)
from ._frobenius import frobenius_optimal, power_iteration, rearranged_singular_values
from ._kfac import kfac
from ._kl import (
    FlipFlopRecord,
    ShapeGap,
    instantaneous_kl_direction,
    kl_fixed_point_residual,
    kl_flip_flop_record,
    kl_optimal,
    kl_shape_gap,
    one_sided_kl,
)
from ._registry import (
    ESTIMATORS,
    EstimatorSpec,
    FitContext,
    ParsedEstimator,
    build,
    parse_estimator,
    register,
)
from ._shampoo import adafactor, shampoo, shampoo_host, shampoo_product, shampoo_squared

__all__ = [
    "ESTIMATORS",
    "EstimatorSpec",
    "FitContext",
    "ParsedEstimator",
    "FlipFlopRecord",
    "ShapeGap",
    "SpikeProfile",
    "adafactor",
    "bregman_objective",
    "bregman_optimal",
    "bregman_optimality_checks",
    "bregman_stationarity_residual",
    "build",
    "parse_estimator",
    "register",
    "diagonal",
    "eigencorrected",
    "factor_power",
    "flat_tail",
    "flat_tail_factor",
    "flat_tail_value",
    "frobenius_optimal",
    "instantaneous_kl_direction",
    "kfac",
    "kl_flat_tail",
    "kl_fixed_point_residual",
    "kl_flip_flop_record",
    "kl_optimal",
    "kl_shape_gap",
    "one_sided_kl",
    "power_iteration",
    "shampoo",
    "shampoo_host",
    "shampoo_product",
    "rearranged_singular_values",
    "shampoo_squared",
    "spike_profile",
    "trace_power_statistic",
    "trace_power_update",
]
