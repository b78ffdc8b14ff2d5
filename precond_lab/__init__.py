"""precond_lab: check what Kronecker-factored preconditioners approximate, on real gradients.

Conventions (README, "Conventions"): per-example matrices ``G`` of shape ``(N, m, n)``
(``m`` = output side / rows, ``n`` = input side / columns), weights ``w`` (default
``1/N``), target ``Σ = Σ_k w_k vec(G_k) vec(G_k)ᵀ`` with row-major vec, and
``kron(L, R) @ vec(X) = vec(L X Rᵀ)`` with ``L`` m×m on the left.

Subpackages: ``estimators``, ``metrics``,
``structures``, ``targets``,
``reference`` (dense float64 references), ``linalg``.
"""

from . import estimators, metrics, schema, structures, targets
from ._version import __version__
from .errors import (
    FitNeedsDampingError,
    NonFiniteError,
    NotPositiveDefiniteError,
    PrecondLabError,
    Status,
)
from .structures import Diagonal, EigenKronecker, FitInfo, Kronecker
from .targets import DenseTarget, FactoredTarget, SampleTarget, as_target

__all__ = [
    "DenseTarget",
    "FactoredTarget",
    "Diagonal",
    "EigenKronecker",
    "FitInfo",
    "FitNeedsDampingError",
    "Kronecker",
    "NonFiniteError",
    "NotPositiveDefiniteError",
    "PrecondLabError",
    "Status",
    "__version__",
    "SampleTarget",
    "as_target",
    "estimators",
    "metrics",
    "schema",
    "structures",
    "targets",
]
