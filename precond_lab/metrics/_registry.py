"""The metric registry: one ``MetricSpec`` per metric, registered next to its definition.

The sweep, the figures, the demo and the benchmark read ``METRICS`` for a metric's
label, its direction ("lower is better") and its dense reference, so a new metric is
listed everywhere once registered. ``SCORE_NAMES`` (the keys of
``score``) are the registered metrics with ``in_score=True``.
"""

from __future__ import annotations

import dataclasses

__all__ = ["METRICS", "MetricSpec", "register_metric", "score_names"]


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One registered metric.

    Attributes:
        name: the registry key, the sweep's ``metric`` coordinate, a key of ``score()``.
        label: the axis / table label (``"KL divergence"``).
        symbol: a short math label for axes whose title names the metric.
        lower_is_better: True for errors and divergences, False for similarities,
            None for quantities that are not a quality (the optimal scales).
        reference: the name of its dense float64 twin in ``precond_lab.reference``.
        function: the public function of ``precond_lab.metrics`` that computes it
            alone, and ``function_kwargs`` for it (e.g. ``rescale=True``).
        in_score: computed by ``score`` (one pass).
        reference_kwargs: keyword arguments for the reference (e.g. ``rescale=True``).
    """

    name: str
    label: str
    reference: str
    function: str
    symbol: str = ""
    lower_is_better: bool | None = True
    in_score: bool = True
    function_kwargs: tuple = ()
    reference_kwargs: tuple = ()


#: Every metric by name, in registration order.
METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` to ``METRICS`` (a name may be registered once)."""
    if spec.name in METRICS:
        raise ValueError(f"metric {spec.name!r} is already registered")
    METRICS[spec.name] = spec
    return spec


def score_names() -> tuple[str, ...]:
    """The registered metrics that ``score`` returns, in order."""
    return tuple(name for name, spec in METRICS.items() if spec.in_score)
