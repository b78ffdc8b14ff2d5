"""Hyper-parameter checks that also work under ``optax.inject_hyperparams`` and ``vmap``.

A method's numeric hyper-parameters may arrive as Python numbers, concrete arrays (what
``optax.inject_hyperparams`` passes to ``init``) or tracers (what it passes to ``update``
under ``jit``/``vmap``). Concrete values are checked against their valid range, named in
the message; tracers were checked when the state was initialised from the same values and
pass through unchanged. Structural arguments (``max_dim``, ``tensor_mode``, ``state_dtype``)
must be concrete: under ``inject_hyperparams`` they belong in ``static_args``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from .._validation import check_number

__all__ = ["hp", "static_int"]


def _traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def hp(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> Any:
    """``value`` checked against its range (concrete values) or passed through (tracers).

    Returns:
        A Python float/int for a concrete scalar, the tracer itself otherwise (an array
        that ``inject_hyperparams`` made of a number keeps working in arithmetic).

    Raises:
        TypeError: not a real number (or not an integer when ``integer``).
        ValueError: NaN, infinite or outside the range; the message names the range.
    """
    if _traced(value):
        return value
    if integer and isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return check_number(
        value,
        name,
        low=low,
        high=high,
        low_open=low_open,
        high_open=high_open,
        integer=integer,
    )


def static_int(value: Any, name: str, *, low: int | None = None) -> int:
    """A structural integer (it decides shapes or labels): must be concrete.

    Raises:
        TypeError: a tracer (e.g. a number ``optax.inject_hyperparams`` injected); the
            message names ``static_args`` as the way forward.
    """
    if _traced(value):
        raise TypeError(
            f"{name} decides the optimiser's structure and cannot be a traced value; under "
            f"optax.inject_hyperparams pass static_args=({name!r},)"
        )
    return int(check_number(value, name, low=low, integer=True))
