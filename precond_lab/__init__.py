"""precond_lab: check what Kronecker-factored preconditioners approximate, on real gradients.

Conventions (README, "Conventions"): per-example matrices ``G`` of shape ``(N, m, n)``
(``m`` = output side / rows, ``n`` = input side / columns), weights ``w`` (default
``1/N``), target ``Σ = Σ_k w_k vec(G_k) vec(G_k)ᵀ`` with row-major vec, and
``kron(L, R) @ vec(X) = vec(L X Rᵀ)`` with ``L`` m×m on the left.

Subpackages: ``estimators``, ``metrics``,
``structures``, ``targets``,
``reference`` (dense float64 references), ``linalg``.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from ._version import __version__
from .errors import (
    FitNeedsDampingError,
    NonFiniteError,
    NotPositiveDefiniteError,
    PrecondLabError,
    Status,
)

# The subpackages and the classes below import JAX; they load on first use (PEP 562), so
# ``import precond_lab`` and ``precond-lab --version`` / ``--help`` stay fast.
_LAZY = {
    "estimators": None,
    "metrics": None,
    "schema": None,
    "structures": None,
    "targets": None,
    "Diagonal": "structures",
    "EigenKronecker": "structures",
    "FitInfo": "structures",
    "Kronecker": "structures",
    "DenseTarget": "targets",
    "FactoredTarget": "targets",
    "SampleTarget": "targets",
    "as_target": "targets",
}

if TYPE_CHECKING:  # pragma: no cover
    from . import estimators, metrics, schema, structures, targets
    from .structures import Diagonal, EigenKronecker, FitInfo, Kronecker
    from .targets import DenseTarget, FactoredTarget, SampleTarget, as_target


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)


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
