"""Matrix functions of SPD matrices, their precision harness, and the spectral helpers.

* ``matrix_power`` / ``inverse_root`` / ``apply_matrix_power``: damped
  powers by eigendecomposition, Cholesky, coupled Newton, Newton–Schulz, IF-Shampoo's
  inverse-free update or QR eigenbasis refresh, each with a ``MatrixFunctionInfo``.
* ``qr_refresh_step``: one power step + QR (KL-Shampoo / SOAP basis refresh).
* ``precision_study``: an ``xarray.Dataset`` of errors against float64 ground truth.
* ``symmetrize``, ``eigh_sym``, ``psd_function``, ``psd_power``,
  ``psd_sqrt``: exact eigendecomposition-based helpers.
"""

from ._api import METHODS, apply_matrix_power, inverse_root, matrix_power
from ._checks import (
    DTYPES,
    ConvergenceError,
    MatrixFunctionInfo,
    NotPositiveDefiniteError,
    NotSymmetricError,
    UnsupportedDtypeError,
    check_spd,
    default_tol,
    dtype_support,
)
from ._direct import qr_refresh_step
from ._harness import (
    STATUS_CODES,
    precision_cases,
    precision_failure_rate,
    precision_on_matrices,
    precision_study,
    spd_with_spectrum,
)
from ._spectral import eigh_sym, psd_function, psd_power, psd_sqrt, symmetrize

__all__ = [
    "DTYPES",
    "METHODS",
    "STATUS_CODES",
    "ConvergenceError",
    "MatrixFunctionInfo",
    "NotPositiveDefiniteError",
    "NotSymmetricError",
    "UnsupportedDtypeError",
    "apply_matrix_power",
    "check_spd",
    "default_tol",
    "dtype_support",
    "eigh_sym",
    "inverse_root",
    "matrix_power",
    "precision_cases",
    "precision_failure_rate",
    "precision_on_matrices",
    "precision_study",
    "psd_function",
    "psd_power",
    "psd_sqrt",
    "qr_refresh_step",
    "spd_with_spectrum",
    "symmetrize",
]
