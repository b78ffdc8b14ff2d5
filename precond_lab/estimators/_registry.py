"""The estimator registry: one ``EstimatorSpec`` per estimator, and the one spec parser.

Each estimator module registers its estimators next to their definitions with
``register``. Everything that lists, labels or builds estimators by name — the sweep
(``precond_lab.sweep.evaluate``), the figures, the demo, the benchmark, the studies —
reads ``ESTIMATORS``, so a new estimator appears everywhere once it is registered.

A spec string names an estimator with optional arguments and fit source::

    "power_iteration(3, variant='gauss-seidel')"   positional and keyword arguments
    "kfac(reduce)"                                  a bare word is a string argument
    "eigencorrected(kl_optimal)"                    an estimator as an argument
    "shampoo_squared@gradients"                     fit on another target kind
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable
from typing import Any

from ..errors import CellSkipped
from ..schema import parse_kind
from ..structures import Structure
from ..targets import Target

__all__ = [
    "ESTIMATORS",
    "EstimatorSpec",
    "FitContext",
    "ParsedEstimator",
    "build",
    "parse_estimator",
    "register",
]


@dataclasses.dataclass(frozen=True)
class FitContext:
    """What an estimator builder gets for one fit.

    Attributes:
        target: the target to fit, already damped (``Σ + λI``).
        damping: the ``λ`` in it.
        kind: the target kind fitted on (e.g. ``"ggn"``).
        kfac_inputs: ``(activations, backprops)`` for that kind, or None.
        batch_size: mini-batch size of the fitted target (1: per-example).
    """

    target: Target
    damping: float = 0.0
    kind: str = "target"
    kfac_inputs: tuple[Any, Any] | None = None
    batch_size: int = 1


@dataclasses.dataclass(frozen=True)
class EstimatorSpec:
    """One registered estimator.

    Attributes:
        name: the registry key and the base of every spec string (``"kl_optimal"``).
        builder: ``builder(ctx: FitContext, *args, **kwargs) -> Structure``; the arguments
            come from the spec string.
        label: the name in figures and tables (``"KL-optimal (KL-Shampoo)"``).
        optimal_for: the metric (a ``precond_lab.metrics.METRICS`` name) that this
            estimator minimises over its family, or None.
        reference: the name of its dense float64 twin in ``precond_lab.reference``.
        summary: one sentence: what it computes.
        color: its figure style (None: assigned from the palette by order).
        marker: its figure style (None: assigned from the palette by order).
        needs_kfac_inputs: built from K-FAC activations/backprops, not from the target.
        example_args: arguments of a representative spec (for the registry's own tests
            and the benchmark), e.g. ``"(3)"`` for power iteration.
    """

    name: str
    builder: Callable[..., Structure]
    label: str
    reference: str
    optimal_for: str | None = None
    summary: str = ""
    color: str | None = None
    marker: str | None = None
    needs_kfac_inputs: bool = False
    example_args: str = ""

    @property
    def example(self) -> str:
        """A representative spec string (name plus ``example_args``)."""
        return self.name + self.example_args


#: Every estimator by name, in registration order.
ESTIMATORS: dict[str, EstimatorSpec] = {}


def register(spec: EstimatorSpec) -> EstimatorSpec:
    """Add ``spec`` to ``ESTIMATORS`` (a name may be registered once)."""
    if spec.name in ESTIMATORS:
        raise ValueError(f"estimator {spec.name!r} is already registered")
    if not re.fullmatch(r"[A-Za-z_]\w*", spec.name):
        raise ValueError(f"estimator names are identifiers; got {spec.name!r}")
    ESTIMATORS[spec.name] = spec
    return spec


def on_target(fn: Callable[..., Structure]) -> Callable[..., Structure]:
    """The common builder: ``fn(ctx.target, *args, **kwargs)``."""

    def builder(ctx: FitContext, *args, **kwargs) -> Structure:
        return fn(ctx.target, *args, **kwargs)

    builder.__name__ = f"on_target({fn.__name__})"
    return builder


_SPEC_RE = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*(?:@\s*([\w\-]+))?\s*$")


@dataclasses.dataclass(frozen=True)
class ParsedEstimator:
    """A parsed spec string, or a user's ``(name, callable)`` pair.

    Attributes:
        name: the normalised spec (the sweep's ``estimator`` coordinate).
        spec: the registry entry, or None for a user callable.
        fn: the user's ``callable(target) -> Structure``, or None.
        args: arguments from the spec string.
        kwargs: arguments from the spec string.
        source: fit on this target kind instead of the scored one, or None.
    """

    name: str
    spec: EstimatorSpec | None
    fn: Callable[[Target], Structure] | None = None
    args: tuple = ()
    kwargs: tuple = ()
    source: str | None = None

    @property
    def base(self) -> str:
        """The registry name (or the user name before any ``@``)."""
        return self.spec.name if self.spec is not None else self.name.split("@", 1)[0]


def _split_args(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch in "([{"
        depth -= ch in ")]}"
        cur += ch
    if cur.strip():
        out.append(cur)
    return [a.strip() for a in out]


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: kfac(reduce), eigencorrected(kl_optimal)


def parse_estimator(item) -> ParsedEstimator:
    """Parse ``"name(arg, key=value)@kind"`` against ``ESTIMATORS``, or a ``(name, fn)`` pair.

    Raises:
        ValueError: malformed spec or unknown estimator name (the message lists them).
        TypeError: neither a string nor a ``(name, callable)`` pair.
    """
    if isinstance(item, ParsedEstimator):
        return item
    if isinstance(item, tuple) and len(item) == 2 and callable(item[1]):
        name = str(item[0])
        source = name.split("@", 1)[1] if "@" in name else None
        return ParsedEstimator(name, None, item[1], source=source)
    if not isinstance(item, str):
        raise TypeError(f"an estimator is a name or a (name, callable) pair; got {item!r}")
    m = _SPEC_RE.match(item)
    if not m:
        raise ValueError(f"cannot parse estimator spec {item!r}; expected 'name(args)@kind'")
    name, argtext, source = m.group(1), m.group(2), m.group(3)
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    args, kwargs = [], {}
    for a in _split_args(argtext or ""):
        key, eq, val = a.partition("=")
        if eq and re.fullmatch(r"[A-Za-z_]\w*", key.strip()):
            kwargs[key.strip()] = _literal(val.strip())
        else:
            args.append(_literal(a))
    return ParsedEstimator(
        item.strip().replace(" ", ""),
        ESTIMATORS[name],
        None,
        tuple(args),
        tuple(kwargs.items()),
        None if source is None else parse_kind(source),
    )


def build(item, ctx: FitContext | Target) -> Structure:
    """Fit a parsed (or unparsed) estimator in a context (or on a bare target)."""
    est = parse_estimator(item)
    if isinstance(ctx, Target):
        ctx = FitContext(ctx)
    if est.fn is not None:
        return est.fn(ctx.target)
    if est.spec.needs_kfac_inputs and ctx.kfac_inputs is None:
        raise CellSkipped(f"no K-FAC activations/backprops for target kind {ctx.kind!r}")
    return est.spec.builder(ctx, *est.args, **dict(est.kwargs))
