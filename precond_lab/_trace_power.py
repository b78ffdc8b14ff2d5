"""Scalar pieces of the trace-power Bregman family, without cancellation near q = 0 and 1.

``B_q(X, Y) = tr f_q(X) − tr f_q(Y) − ⟨f_q′(Y), X − Y⟩`` with the generator

    f_q(t) = (t^q − q t + q − 1) / (q(q − 1)),    f_q′(t) = (t^{q−1} − 1) / (q − 1).

Written like this, both have removable singularities at ``q = 0`` and ``q = 1``: the
numerators vanish there and a literal evaluation loses every digit (at
``q = 1 − 1e−16`` it returns 0, at ``q = 1e−16`` a value of the wrong sign). Here both
are evaluated through ``expm1``: with ``e_t(a) = expm1(t·a)/t`` (``= a`` at ``t = 0``),

    f_q′(t) = e_{q−1}(log t),
    f_q(t)  = (e_q(log t) − (t − 1)) / (q − 1)       (used for q < ½),
            = (t·e_{q−1}(log t) − (t − 1)) / q       (used for q ≥ ½),

which are exact for every ``q`` where they are defined and tend to the von Neumann
(``t log t − t + 1``, ``log t``) and LogDet (``−log t + t − 1``, ``1 − 1/t``) limits
continuously. Shared by ``metrics.bregman_divergence`` and ``reference.bregman_divergence``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["expm1_ratio", "generator", "generator_derivative", "bregman_from_eigen"]


def expm1_ratio(t: float, a) -> np.ndarray:
    """``expm1(t·a)/t`` elementwise, ``a`` at ``t = 0`` (so ``e^{t log x}`` − 1 over ``t``).

    Args:
        t: the exponent (a finite real).
        a: an array (``−inf`` allowed: the log of a zero eigenvalue).

    Returns:
        A float64 array shaped like ``a``.
    """
    a = np.asarray(a, np.float64)
    if t == 0:
        return a.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        return np.expm1(t * a) / t


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(x)


def generator(x, q: float) -> np.ndarray:
    """``f_q(x) = (x^q − q x + q − 1)/(q(q − 1))`` for ``x ≥ 0``, limits at ``q ∈ {0, 1}``.

    Args:
        x: eigenvalues (``≥ 0``).
        q: the trace power.

    Returns:
        ``f_q(x)`` as float64 (``1/q`` at ``x = 0`` for ``q > 0``, ``inf`` for ``q ≤ 0``).
    """
    x = np.asarray(x, np.float64)
    lx = _log(x)
    with np.errstate(invalid="ignore", over="ignore"):
        if q < 0.5:
            return (expm1_ratio(q, lx) - (x - 1.0)) / (q - 1.0)
        x_e = np.where(x > 0, x * expm1_ratio(q - 1.0, np.where(x > 0, lx, 0.0)), 0.0)
        return (x_e - (x - 1.0)) / q


def generator_derivative(x, q: float) -> np.ndarray:
    """``f_q′(x) = (x^{q−1} − 1)/(q − 1)`` (``log x`` at ``q = 1``, ``1 − 1/x`` at ``q = 0``).

    Args:
        x: eigenvalues (``> 0``; ``0`` gives ``−1/(q−1)`` for ``q > 1`` and ``−inf`` else).
        q: the trace power.

    Returns:
        ``f_q′(x)`` as float64.
    """
    return expm1_ratio(q - 1.0, _log(np.asarray(x, np.float64)))


def bregman_from_eigen(q: float, x_eigs, y_eigs, x_diag_in_y) -> float:
    """``B_q(X, Y)`` from the eigenvalues of ``X``, of ``Y`` and ``diag(Qᵀ X Q)``.

    ``Q`` is the eigenbasis of ``Y``. ``B_q = Σ f_q(x) + Σ_j [e_q(log y_j) −
    (QᵀXQ)_jj f_q′(y_j)]`` (the terms ``Σ x`` and ``Σ_j (QᵀXQ)_jj`` that cancel
    analytically are left out, which is what keeps the value accurate near ``q = 1``).

    Args:
        q: the trace power.
        x_eigs: every eigenvalue of ``X`` (``≥ 0``).
        y_eigs: every eigenvalue of ``Y`` (``≥ 0``; ``> 0`` when ``q ≤ 1``).
        x_diag_in_y: ``diag(Qᵀ X Q)``, aligned with ``y_eigs``.

    Returns:
        The divergence as a Python float.
    """
    y = np.asarray(y_eigs, np.float64).ravel()
    d = np.asarray(x_diag_in_y, np.float64).ravel()
    ly = _log(y)
    y_part = expm1_ratio(q, ly) - d * expm1_ratio(q - 1.0, ly)
    return float(np.sum(generator(x_eigs, q)) + np.sum(y_part))
