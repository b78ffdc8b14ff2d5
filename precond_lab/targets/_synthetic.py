"""Synthetic per-example matrices with a known structure: Kronecker or not."""

from __future__ import annotations

import numpy as np

from .._validation import check_number

__all__ = ["kronecker_samples", "mixture_samples"]


def _check(m, n, num, components=1):
    m = check_number(m, "m", low=1, integer=True)
    n = check_number(n, "n", low=1, integer=True)
    num = check_number(num, "num", low=components, integer=True)
    return m, n, num


def _spd_root(d: int, spread: float, rng) -> np.ndarray:
    """A Cholesky factor of ``Q diag(10^u) Qᵀ``, ``u ~ U(0, spread)``, Haar-ish ``Q``."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return np.linalg.cholesky((q * 10.0 ** rng.uniform(0, spread, d)) @ q.T)


def mixture_samples(
    m: int, n: int, num: int, *, components: int = 2, spread: float = 1.0, seed: int = 0
) -> np.ndarray:
    """``(num, m, n)`` matrices from a mixture of matrix-normal components (not Kronecker).

    Component ``c`` draws ``A_c Z B_cᵀ`` (``Z`` standard Gaussian) with its own SPD
    ``A_c A_cᵀ``, ``B_c B_cᵀ`` (eigenvalues ``10^U(0, spread)``); ``num // components``
    samples each (the last takes the rest). The second moment is a sum of different
    Kronecker products, so no single Kronecker product equals it (P1's toy layer).

    Raises:
        ValueError: ``m``, ``n``, ``components`` < 1, ``num`` < ``components`` or a negative
            ``spread`` (the message names the argument).
    """
    components = check_number(components, "components", low=1, integer=True)
    m, n, num = _check(m, n, num, components)
    spread = check_number(spread, "spread", low=0.0)
    rng = np.random.default_rng(seed)
    sizes = [num // components] * (components - 1)
    sizes.append(num - sum(sizes))
    out = []
    for k in sizes:
        a, b = _spd_root(m, spread, rng), _spd_root(n, spread, rng)
        out.append(a @ rng.standard_normal((k, m, n)) @ b.T)
    return np.concatenate(out)


def kronecker_samples(
    m: int, n: int, num: int, *, noise: float = 0.0, spread: float = 1.0, seed: int = 0
) -> np.ndarray:
    """``(num, m, n)`` matrices ``A Z Bᵀ + noise·E``: a Kronecker population ``AAᵀ ⊗ BBᵀ``
    (eigenvalues ``10^U(0, spread)``), plus isotropic Gaussian noise of scale ``noise``.

    With ``noise = 0`` the second moment is a Kronecker product up to sampling error; a
    control on which no shape mismatch of a Kronecker fit should be found.

    Raises:
        ValueError: ``m``, ``n``, ``num`` < 1, or a negative ``noise`` or ``spread``.
    """
    m, n, num = _check(m, n, num)
    noise = check_number(noise, "noise", low=0.0)
    spread = check_number(spread, "spread", low=0.0)
    rng = np.random.default_rng(seed)
    a, b = _spd_root(m, spread, rng), _spd_root(n, spread, rng)
    g = a @ rng.standard_normal((num, m, n)) @ b.T
    return g + noise * rng.standard_normal((num, m, n))
