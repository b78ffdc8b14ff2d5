"""Every error precond_lab raises, and the one status vocabulary.

All errors derive from ``PrecondLabError``, and each also derives from the builtin
class a caller would expect (``ValueError``, ``TypeError``, ``RuntimeError``), so
``except ValueError`` keeps working. The meaning of each class:

=============================  ==========================================================
class                          raised when
=============================  ==========================================================
``NonFiniteError``        an input holds NaN or Inf (the message names the index)
``NotPositiveDefiniteError``  a matrix that must be positive (semi)definite is not;
                               the message gives its smallest eigenvalue
``NotSymmetricError``     a matrix that must be symmetric is not
``FitNeedsDampingError``  a fit or divergence is ill-posed without damping
                               (singular target or factor): pass ``damping > 0``
``UnsupportedDtypeError`` a dtype the operation cannot run at (never upcast silently)
``ConvergenceError``      an iteration asked to converge (``strict=True``) did not
``DegenerateInputError``  an input is zero or empty where a non-trivial one is needed
                               (all-zero target, weights or approximation; a float32 target
                               whose squares underflow): the message says what to change
``StoreError``            a capture store is missing, foreign, corrupt or in use
``UnsupportedModelError`` a model capture cannot differentiate as given (e.g. a Flax
                               module in training mode): the message says what to call
``FileFormatError``       an input file (``.pt``, ``.npy``, ``.npz``) is empty, truncated or
                               not in the expected format: the message names the file
``CheckpointError``       a training checkpoint is unreadable, or was written by another
                               run (model, parameters, optimiser, seed, data): the message
                               names what differs
``CellSkipped``           (a signal, not an error) a sweep cell cannot be evaluated
=============================  ==========================================================

``Status`` is the status of a fit (``FitInfo``), a
matrix function (``MatrixFunctionInfo``), a sweep cell and an
online run; ``Status.of`` maps an exception to its status.
"""

from __future__ import annotations

import enum

__all__ = [
    "PrecondLabError",
    "NonFiniteError",
    "NotPositiveDefiniteError",
    "NotSymmetricError",
    "FitNeedsDampingError",
    "UnsupportedDtypeError",
    "ConvergenceError",
    "DegenerateInputError",
    "StoreError",
    "UnsupportedModelError",
    "FileFormatError",
    "CheckpointError",
    "CellSkipped",
    "Status",
]


class PrecondLabError(Exception):
    """Base class of every error precond_lab raises on purpose."""


class NonFiniteError(PrecondLabError, ValueError):
    """An input holds NaN or Inf; the message names where."""


class NotPositiveDefiniteError(PrecondLabError, ValueError):
    """A matrix that must be positive (semi)definite is not (the one "not PSD" error)."""


class NotSymmetricError(PrecondLabError, ValueError):
    """A matrix that must be symmetric is not."""


class FitNeedsDampingError(PrecondLabError, ValueError):
    """A fit is ill-posed without damping (singular target or factor)."""


class UnsupportedDtypeError(PrecondLabError, TypeError):
    """The operation cannot run at this dtype on this backend (and will not upcast silently)."""


class ConvergenceError(PrecondLabError, RuntimeError):
    """An iterative method asked to converge (``strict=True``) did not."""


class DegenerateInputError(PrecondLabError, ValueError):
    """An input is zero or empty where a non-trivial one is needed (the message says which)."""


class StoreError(PrecondLabError, ValueError):
    """A capture store is missing, foreign, malformed, corrupt, in use or inconsistent."""


class UnsupportedModelError(PrecondLabError, ValueError):
    """A model capture cannot use as given; the message says what to change."""


class FileFormatError(PrecondLabError, ValueError):
    """An input file is empty, truncated or not in the expected format (the message names it)."""


class CheckpointError(PrecondLabError, ValueError):
    """A training checkpoint is unreadable or belongs to another run (the message says what)."""


class CellSkipped(PrecondLabError):  # noqa: N818 (a signal, not an error)
    """Raised when a sweep cell cannot be evaluated (recorded as skipped, not as failed)."""


class Status(str, enum.Enum):
    """What happened to a fit, a matrix function, a sweep cell or an online run.

    A ``str`` Enum: ``Status.OK == "ok"``, and Datasets store the plain strings. Each
    member has an integer ``code`` for integer status arrays (e.g.
    ``precision_study``).
    """

    OK = "ok"  #: converged, or a direct method with a finite result; a cell that was scored
    NOT_CONVERGED = "not_converged"  #: the iteration limit was reached above the tolerance
    NONFINITE = "nonfinite"  #: NaN/Inf appeared (in the input or during the computation)
    UNSUPPORTED_DTYPE = "unsupported_dtype"  #: the dtype is not supported by the operation
    NOT_SPD = "not_spd"  #: the input is not positive definite (at this dtype)
    UNSUPPORTED_EXPONENT = "unsupported_exponent"  #: the method cannot compute this power
    NOT_APPLICABLE = "not_applicable"  #: the combination makes no sense; nothing ran
    STAGNATED = "stagnated"  #: the residual stopped decreasing above the tolerance
    NEEDS_DAMPING = "needs_damping"  #: ill-posed without damping (FitNeedsDampingError)
    SKIPPED = "skipped"  #: a sweep cell with no data for it (CellSkipped); the message says why
    FAILED = "failed"  #: any other error; the message names its class

    def __str__(self) -> str:
        return self.value

    @property
    def code(self) -> int:
        """A stable small integer for this status (0 is ``OK``)."""
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> Status:
        """The status with integer ``code`` ``code``."""
        return _BY_CODE[int(code)]

    @property
    def ok(self) -> bool:
        """True only for ``OK``."""
        return self is Status.OK

    @property
    def failed(self) -> bool:
        """True when something was attempted and did not give a usable result."""
        return self in (
            Status.NOT_CONVERGED,
            Status.NONFINITE,
            Status.NOT_SPD,
            Status.STAGNATED,
            Status.NEEDS_DAMPING,
            Status.FAILED,
        )

    @classmethod
    def of(cls, exc: BaseException) -> Status:
        """The status that an exception stands for (``_EXCEPTION_STATUS``, else FAILED)."""
        for kind, status in _EXCEPTION_STATUS:
            if isinstance(exc, kind):
                return status
        return cls.FAILED


#: Exception class → status, most specific first (the first match wins).
_EXCEPTION_STATUS: tuple[tuple[type[BaseException], Status], ...] = (
    (CellSkipped, Status.SKIPPED),
    (FitNeedsDampingError, Status.NEEDS_DAMPING),
    (NotPositiveDefiniteError, Status.NOT_SPD),
    (NonFiniteError, Status.NONFINITE),
    (UnsupportedDtypeError, Status.UNSUPPORTED_DTYPE),
    (ConvergenceError, Status.NOT_CONVERGED),
)
_CODES = {s: i for i, s in enumerate(Status)}
_BY_CODE = {i: s for s, i in _CODES.items()}
