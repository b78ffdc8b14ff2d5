"""Kronecker (and diagonal) approximations of a gradient second moment / Gauss–Newton matrix.

Every estimator takes the per-example matrices ``G`` (``(N, m, n)``; or a DataArray,
or a :class:`~precond_lab.targets.Target` such as a dense ``(mn, mn)`` matrix) and the
keyword ``weights=`` (default ``1/N``), and returns a structure from
:mod:`precond_lab.structures`. Iterative estimators attach their convergence history
as ``.info`` (:class:`~precond_lab.structures.FitInfo`).
"""

from ._eigen import diagonal, eigencorrected
from ._frobenius import frobenius_optimal, power_iteration
from ._kfac import kfac
from ._kl import kl_optimal, one_sided_kl
from ._shampoo import shampoo, shampoo_squared

__all__ = [
    "diagonal",
    "eigencorrected",
    "frobenius_optimal",
    "kfac",
    "kl_optimal",
    "one_sided_kl",
    "power_iteration",
    "shampoo",
    "shampoo_squared",
]
