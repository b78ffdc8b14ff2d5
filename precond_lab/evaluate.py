"""The evaluation sweep's public face, kept for notebooks and user code: see ``.sweep``.

``from precond_lab.evaluate import evaluate`` and ``precond_lab.sweep.evaluate`` are the
same function.
"""

from .sweep import (
    DEFAULT_ESTIMATORS,
    ESTIMATORS,
    CellSkipped,
    EvaluationWarning,
    FitContext,
    evaluate,
    parse_estimator,
    power_iteration_curve,
    spectra,
)

__all__ = [
    "DEFAULT_ESTIMATORS",
    "ESTIMATORS",
    "CellSkipped",
    "EvaluationWarning",
    "FitContext",
    "evaluate",
    "parse_estimator",
    "power_iteration_curve",
    "spectra",
]
