"""Interleaved wall-clock timing for verdicts and benchmarks, robust to a shared, noisy machine.

One concept, one place: every timing that feeds a verdict (and the benchmarks' comparisons)
goes through ``interleaved``. The compared operations are warmed up (compilation
excluded), then timed in rounds — each round runs every operation once, in a rotated order —
so a burst of load hits all of them alike. ``ratio`` turns two operations' per-round times
into a ratio with its spread, and ``ratio_verdict`` says ``"above"``, ``"below"`` or
``"inconclusive"`` when the spread straddles the threshold.

Example:
    >>> t = interleaved({"a": lambda: sum(range(1000)), "b": lambda: sum(range(10))},
    ...                 repeats=5)
    >>> r = ratio(t, "a", "b")
    >>> r.median > 1
    True
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "Timings",
    "Ratio",
    "interleaved",
    "ratio",
    "ratio_verdict",
    "block",
    "optimiser_runner",
    "optimiser_step_timings",
]

MIN_REPEATS = 5


def block(x: Any) -> Any:
    """Wait for a JAX result (``jax.block_until_ready``); other values pass through."""
    try:
        import jax

        return jax.block_until_ready(x)
    except Exception:  # non-JAX leaves (floats, None, custom objects)
        return x


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclasses.dataclass(frozen=True)
class Timings:
    """Per-round seconds of each operation (warm-up excluded).

    Attributes:
        seconds: ``{name: [seconds of round 0, round 1, …]}``; round ``i`` of every
            operation ran back to back, so same-round entries saw the same load.
        warmup: ``{name: [seconds of each warm-up call]}`` (compilation included).
    """

    seconds: dict[str, list[float]]
    warmup: dict[str, list[float]]

    def median(self, name: str) -> float:
        """Median seconds of ``name``."""
        return float(statistics.median(self.seconds[name]))

    def spread(self, name: str) -> tuple[float, float]:
        """The 25 % and 75 % quantiles of ``name``'s seconds."""
        xs = self.seconds[name]
        return _quantile(xs, 0.25), _quantile(xs, 0.75)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary: median, quartiles, all repeats and warm-ups per operation."""
        return {
            k: {
                "median_s": self.median(k),
                "q25_s": self.spread(k)[0],
                "q75_s": self.spread(k)[1],
                "seconds_all": list(v),
                "warmup_s": list(self.warmup[k]),
                "repeats": len(v),
            }
            for k, v in self.seconds.items()
        }


def interleaved(
    ops: Mapping[str, Callable[[], Any]],
    *,
    repeats: int = 7,
    warmup: int = 1,
) -> Timings:
    """Time several zero-argument callables in interleaved rounds.

    Args:
        ops: ``{name: fn}``; each result is passed through ``block`` before the clock
            stops.
        repeats: timed rounds (at least 5: a verdict needs a median and a spread).
        warmup: untimed calls of each operation first (compilation, caches).

    Returns:
        The per-round ``Timings``.

    Raises:
        ValueError: ``repeats`` < 5, ``warmup`` < 0 or no operations.
    """
    if not ops:
        raise ValueError("interleaved: no operations to time")
    if int(repeats) < MIN_REPEATS:
        raise ValueError(f"interleaved: repeats must be ≥ {MIN_REPEATS}, got {repeats}")
    if int(warmup) < 0:
        raise ValueError(f"interleaved: warmup must be ≥ 0, got {warmup}")
    names = list(ops)
    warm: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(int(warmup)):
        for k in names:
            t0 = time.perf_counter()
            block(ops[k]())
            warm[k].append(time.perf_counter() - t0)
    secs: dict[str, list[float]] = {k: [] for k in names}
    for r in range(int(repeats)):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for k in order:
            t0 = time.perf_counter()
            block(ops[k]())
            secs[k].append(time.perf_counter() - t0)
    return Timings(seconds=secs, warmup=warm)


@dataclasses.dataclass(frozen=True)
class Ratio:
    """``num/den`` per interleaved round: median and quartiles.

    Attributes:
        median: median of the per-round ratios.
        low: their 25 % and 75 % quantiles (the spread a verdict must clear).
        high: their 25 % and 75 % quantiles (the spread a verdict must clear).
        values: the per-round ratios.
    """

    median: float
    low: float
    high: float
    values: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.median:.2f}× [{self.low:.2f}–{self.high:.2f}]"


def ratio(t: Timings, num: str, den: str) -> Ratio:
    """The per-round ratio ``seconds[num]/seconds[den]`` (same-round pairs)."""
    pairs = zip(t.seconds[num], t.seconds[den], strict=True)
    vals = [a / b if b > 0 else float("inf") for a, b in pairs]
    return Ratio(
        median=float(statistics.median(vals)),
        low=_quantile(vals, 0.25),
        high=_quantile(vals, 0.75),
        values=tuple(vals),
    )


def ratio_verdict(r: Ratio, threshold: float) -> str:
    """``"above"`` if the whole spread is ≥ ``threshold``, ``"below"`` if it is all below,
    else ``"inconclusive"`` (the spread straddles the threshold)."""
    if r.low >= threshold:
        return "above"
    if r.high < threshold:
        return "below"
    return "inconclusive"


def optimiser_runner(tx: Any, params: Any, grad: Any, steps: int) -> tuple[Callable[[], Any], Any]:
    """A zero-argument call running ``steps`` jitted optimiser steps (``lax.scan``) from the
    state after the first (initialising) update, for ``interleaved``.

    The gradient is an argument of the jitted run (no constant folding at compile time) and
    every call starts from the same state, so a call with ``steps`` equal to a method's
    refresh interval holds exactly one refresh: the per-step time is the call's / ``steps``.

    Returns:
        ``(run, state)``: the call and the state it starts from.
    """
    import jax
    import optax
    from jax import lax

    if int(steps) < 1:
        raise ValueError(f"optimiser_runner: steps must be ≥ 1, got {steps}")

    @jax.jit
    def run(p, s, g):
        def step(carry, _):
            p, s = carry
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return lax.scan(step, (p, s), None, length=int(steps))[0]

    state = tx.init(params)
    _, state = jax.jit(tx.update)(grad, state, params)
    return (lambda: run(params, state, grad)), state


def optimiser_step_timings(
    optimisers: Mapping[str, Any],
    n: int,
    *,
    steps: int,
    repeats: int = 7,
    dtype: Any = "float32",
    seed: int = 0,
) -> tuple[Timings, dict[str, Any]]:
    """Interleaved timings of each optimiser on one ``n×n`` weight with a fixed gradient.

    Each timed call is ``steps`` steps (``optimiser_runner``); divide by ``steps`` for
    the per-step time. Returns the ``Timings`` and ``{name: state}`` (for
    ``optim.state_size``).
    """
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.standard_normal((n, n)) / np.sqrt(n), dtype)}
    grad = {"w": jnp.asarray(rng.standard_normal((n, n)) * 1e-2, dtype)}
    ops, states = {}, {}
    for name, tx in optimisers.items():
        ops[name], states[name] = optimiser_runner(tx, params, grad, steps)
    return interleaved(ops, repeats=repeats, warmup=1), states
