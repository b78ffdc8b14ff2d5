"""A tuning protocol for comparing optimisers fairly: one shared learning-rate grid, paired seeds.

The protocol, for one *task* (a model, data, step budget and schedule) and several methods:

1. **One grid for all methods.** Learning rates on a log2 grid (``lr_grid``: ``2^(k/p)``,
   ``p`` points per octave) from given bounds or a short pilot (``pilot_bounds``). Every
   method runs every grid point on the *selection seed*.
2. **Interior optimum.** A method's selected rate is its best finite final loss on the grid.
   If that is an end of the grid, the shared grid is extended by one point on that side (all
   methods run the new point) and selection repeats, at most ``max_extensions`` times; each
   extension is recorded, and an optimum still on an edge afterwards is reported
   (``interior = 0``).
3. **Fresh, paired seeds.** Each method then runs ``≥ 3`` seeds other than the selection seed
   at its selected rate. The run function gets the seed, and uses it for the initialisation
   and the batch order, so seed ``s`` is the same draw for every method (paired).
4. **Decisions on paired differences.** ``d_s = loss(method, s) − loss(baseline, s)``; the
   95 % t-interval of their mean (``paired_interval``) is turned into a ``Decision`` against
   a practical threshold ``δ`` stated with the result (``decide``): ``better`` when the whole
   interval lies below ``−δ`` (so it also excludes 0), ``worse`` when it lies above ``+δ``,
   ``tie`` when it lies within ``[−δ, δ]``, else ``unresolved``. Lower losses are better.
5. **Failures.** A non-finite final loss (NaN, Inf; the adapters also turn a divergence into
   NaN) is a failure; failures are counted over the whole grid per method.

Runs are functions ``run(lr, seed) -> final loss`` (``Method``), so any model works. A
*traceable* run (pure JAX) is jitted once per method with the learning rate and seed as
inputs, and vectorised with ``jax.vmap`` over the learning rates of a seed or the seeds of a
rate, except where that is unsafe: on a multi-threaded CPU, a run whose jaxpr contains LAPACK
decompositions (``eigh``, ``qr``, …) runs its configurations one after another: jaxlib's
batched LAPACK kernels can deadlock XLA:CPU's thread pool
(``benchmarks/repro_vmap_lapack_hang.py``; the methods of ``precond_lab.methods`` loop over
a vmapped batch instead), and a vmapped optimiser step computes both branches of its
``lax.cond``s, which made KL-Shampoo's vectorised sweep 3.3× slower than sequential runs.
``model_method`` builds such a run for ``precond_lab``'s models; ``train_method`` wraps
``precond_lab.train.train`` (a Python loop, one compilation per method through
``optax.inject_hyperparams``, or one per run where the factory does not support it —
recorded and warned).

Every finished run is stored at once as one small JSON file named by a hash of its
configuration (``task``, method name and ``config``, learning rate, seed), written atomically
(temporary file, then ``os.replace``), so a killed study continues where it stopped and no
run is repeated. ``Study.run`` returns an ``xarray.Dataset`` over ``(method, lr, seed)`` with
provenance attributes; ``compare`` gives the decisions against a baseline.

Example:
    >>> import numpy as np
    >>> from precond_lab.tuning import Method, Protocol, Study, compare
    >>> def quad(scale):
    ...     return lambda lr, seed: float((np.log2(lr) + scale) ** 2 + 0.01 * seed)
    >>> ds = Study("toy", [Method("a", quad(3)), Method("b", quad(3))],
    ...            Protocol(lr_bounds=(2**-5, 2**-1)), progress=False).run()
    >>> str(compare(ds, "a")["decision"].sel({"method": "b"}).item())
    'tie'
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from scipy import stats

from ._atomic import atomic_write
from .provenance import make_attrs

__all__ = [
    "LAPACK_PRIMITIVES",
    "Decision",
    "Interval",
    "Method",
    "Protocol",
    "Study",
    "compare",
    "decide",
    "extend_grid",
    "lapack_primitives",
    "lr_grid",
    "make_schedule",
    "model_method",
    "paired_interval",
    "pilot_bounds",
    "stack",
    "train_method",
    "unstack",
]


# ------------------------------------------------------------------------------ decisions
class Decision(str, enum.Enum):
    """The verdict on a method against a baseline (a ``str`` Enum: ``Decision.TIE == "tie"``)."""

    BETTER = "better"  #: the whole interval of (method − baseline) loss lies below −threshold
    WORSE = "worse"  #: the whole interval lies above +threshold
    TIE = "tie"  #: the whole interval lies within ±threshold
    UNRESOLVED = "unresolved"  #: none of these (more seeds would be needed)

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Interval:
    """A t-interval of the mean of paired differences.

    Attributes:
        mean: the mean difference.
        low: lower end of the interval.
        high: upper end of the interval.
        n: number of pairs.
        level: confidence level.
    """

    mean: float
    low: float
    high: float
    n: int
    level: float


def paired_interval(differences: Sequence[float], level: float = 0.95) -> Interval:
    """The ``level`` t-interval (``scipy.stats.t``, ``n − 1`` degrees of freedom) of the mean.

    Args:
        differences: paired differences ``d_s`` (finite).
        level: confidence level in (0, 1).

    Returns:
        ``mean ± t_{(1+level)/2, n−1} · sd/√n`` (zero width when all differences are equal).

    Raises:
        ValueError: fewer than two differences, a non-finite one, or a bad ``level``.
    """
    try:
        d = np.asarray(differences, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"paired differences must be numbers; got {differences!r}") from None
    if d.ndim != 1:
        raise ValueError(f"paired differences must be a 1-D sequence; got shape {d.shape}")
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)):
        raise TypeError(f"level must be a number in (0, 1); got {level!r}")
    if d.size < 2:
        raise ValueError(f"a t-interval needs at least 2 paired differences, got {d.size}")
    if not np.isfinite(d).all():
        raise ValueError("paired differences must be finite (a failed run has no difference)")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    mean = float(d.mean())
    sem = float(d.std(ddof=1) / math.sqrt(d.size))
    half = float(stats.t.ppf(0.5 + level / 2.0, d.size - 1)) * sem
    return Interval(mean, mean - half, mean + half, int(d.size), float(level))


def decide(interval: Interval, threshold: float) -> Decision:
    """The decision for an interval of (method − baseline) losses and a practical threshold.

    Args:
        interval: from ``paired_interval`` (lower losses are better).
        threshold: ``δ ≥ 0``, the smallest difference that matters (e.g. 0.01 nats).

    Returns:
        ``BETTER`` if ``high < −δ`` (and ``high < 0``), ``WORSE`` if ``low > δ`` (and
        ``low > 0``), ``TIE`` if ``−δ ≤ low`` and ``high ≤ δ``, else ``UNRESOLVED``.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be ≥ 0, got {threshold}")
    if interval.high < -threshold and interval.high < 0:
        return Decision.BETTER
    if interval.low > threshold and interval.low > 0:
        return Decision.WORSE
    if -threshold <= interval.low and interval.high <= threshold:
        return Decision.TIE
    return Decision.UNRESOLVED


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1; got {value!r}")
    return int(value)


def _as_loss(method: Method, value: Any) -> float:
    """A run's result as one float, or a clear error naming the method."""
    try:
        arr = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 0:
        raise TypeError(
            f"the run of method {method.name!r} must return one number (the final loss); "
            f"got {value!r}"
        )
    return float(arr)


# ---------------------------------------------------------------------------------- grids
def lr_grid(low: float, high: float, *, points_per_octave: int = 1) -> np.ndarray:
    """Learning rates ``2^(k/p)`` with ``low ≤ 2^(k/p) ≤ high`` (``p = points_per_octave``).

    Raises:
        ValueError: ``0 < low ≤ high`` violated, or no grid point in the range.
    """
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
            raise TypeError(f"lr_grid {name} must be a number; got {v!r}")
    if not (0 < low <= high and np.isfinite(high)):
        raise ValueError(f"need finite 0 < low ≤ high, got {low}, {high}")
    p = _positive_int(points_per_octave, "points_per_octave")
    k0 = math.ceil(math.log2(low) * p - 1e-9)
    k1 = math.floor(math.log2(high) * p + 1e-9)
    if k1 < k0:
        raise ValueError(f"no point 2^(k/{p}) lies in [{low}, {high}]")
    return np.exp2(np.arange(k0, k1 + 1) / p)


def extend_grid(grid: np.ndarray, side: str, *, points_per_octave: int = 1) -> np.ndarray:
    """``grid`` with one more grid point ``2^(k/p)`` beyond its ``"low"`` or ``"high"`` end.

    The new point is computed as ``lr_grid`` computes its points (same value, same cache key).
    """
    g = np.sort(np.asarray(grid, np.float64))
    p = _positive_int(points_per_octave, "points_per_octave")
    if side not in ("low", "high"):
        raise ValueError(f"side must be 'low' or 'high', got {side!r}")
    end = g[0] if side == "low" else g[-1]
    k = round(math.log2(end) * p) + (-1 if side == "low" else 1)
    new = np.exp2(np.array([k]) / p)
    return np.concatenate([new, g]) if side == "low" else np.concatenate([g, new])


def make_schedule(
    peak: Any,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    decay: str = "cosine",
    end_factor: float = 0.0,
) -> optax.Schedule:
    """Linear warmup from 0 to ``peak``, then cosine or linear decay to ``end_factor·peak``.

    ``peak`` may be a traced array (the learning rate as an input of a jitted run).

    Args:
        peak: the peak learning rate (the tuned value).
        total_steps: steps of the whole run (warmup included).
        warmup_steps: linear warmup steps (0: none).
        decay: ``"cosine"``, ``"linear"`` or ``"constant"`` (after the warmup).
        end_factor: the final rate as a fraction of ``peak``.

    Returns:
        An optax schedule ``step -> learning rate``.
    """
    total_steps = _positive_int(total_steps, "total_steps")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)):
        raise TypeError(f"warmup_steps must be an integer; got {warmup_steps!r}")
    if isinstance(peak, (int, float, np.number)) and not (np.isfinite(peak) and peak > 0):
        raise ValueError(f"the peak learning rate must be finite and > 0; got {peak!r}")
    if not (isinstance(end_factor, (int, float)) and 0 <= end_factor <= 1):
        raise ValueError(f"end_factor must be a number in [0, 1]; got {end_factor!r}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 ≤ warmup_steps < total_steps, got {warmup_steps}, {total_steps}")
    rest = total_steps - warmup_steps
    if decay == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=end_factor)
    elif decay == "linear":
        after = optax.linear_schedule(peak, peak * end_factor, rest)
    elif decay == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise ValueError(f"decay must be 'cosine', 'linear' or 'constant', got {decay!r}")
    if warmup_steps == 0:
        return after
    warm = optax.linear_schedule(0.0 * peak, peak, warmup_steps)
    return optax.join_schedules([warm, after], [warmup_steps])


# -------------------------------------------------------------------------------- methods
@dataclasses.dataclass(frozen=True)
class Method:
    """A method to tune: a run function of the learning rate and the seed.

    Attributes:
        name: the method's name (a coordinate of the results).
        run: ``(lr, seed) -> final loss``; the seed must fix the initialisation and the
            batch order (pairing across methods). Non-finite results count as failures.
        traceable: ``run`` is a pure JAX function of array inputs (jitted once; vmapped
            where safe, see the module doc).
        config: the method's other settings, part of the cache key of its runs (change it
            when the run changes, or stored results are reused).
        compile_mode: how the learning rate reaches compiled code (recorded):
            ``"traced"``, ``"inject_hyperparams"``, ``"recompile"`` or ``"python"``.
        recipe: a picklable zero-argument callable that rebuilds this method in another
            process (e.g. ``functools.partial(model_method, name, "transformer", …)``);
            needed by ``Study(workers > 1)``.
    """

    name: str
    run: Callable[[Any, Any], Any]
    traceable: bool = False
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    compile_mode: str = "python"
    recipe: Callable[[], Method] | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The settings of a study.

    Attributes:
        lr_bounds: ``(low, high)`` of the initial grid (e.g. from ``pilot_bounds``).
        points_per_octave: grid points per factor of 2.
        max_extensions: at most this many one-point extensions of the grid in total.
        selection_seed: the seed of the grid runs.
        seeds: the fresh seeds of the confirmation runs (≥ 3, without the selection seed).
        threshold: practical threshold ``δ`` of the decisions (units of the loss).
        level: confidence level of the intervals.
        vectorize: ``"auto"`` (vmap traceable runs where safe), ``True`` (vmap traceable
            runs always) or ``False`` (one run at a time).
        shared_rate: select one rate for all methods (the grid point with the lowest mean
            selection-seed loss over the methods; a point where any method failed is not
            eligible), as papers do that train every method at one rate per setting;
            False: each method gets its own best rate.
    """

    lr_bounds: tuple[float, float]
    points_per_octave: int = 1
    max_extensions: int = 3
    selection_seed: int = 0
    seeds: tuple[int, ...] = (1, 2, 3)
    threshold: float = 0.01
    level: float = 0.95
    vectorize: bool | str = "auto"
    shared_rate: bool = False

    def __post_init__(self) -> None:
        b = self.lr_bounds
        ok = isinstance(b, (tuple, list)) and len(b) == 2
        ok = ok and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b)
        if not (ok and 0 < b[0] <= b[1] and np.isfinite(b[1])):
            raise ValueError(
                f"lr_bounds must be (low, high) with finite 0 < low ≤ high (e.g. from "
                f"pilot_bounds); got {b!r}"
            )
        _positive_int(self.points_per_octave, "points_per_octave")
        if isinstance(self.seeds, (str, bytes)) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0
            for s in self.seeds
        ):
            raise ValueError(f"seeds must be integers ≥ 0, e.g. (1, 2, 3); got {self.seeds!r}")
        if not (isinstance(self.threshold, (int, float)) and np.isfinite(self.threshold)):
            raise ValueError(f"threshold must be a finite number ≥ 0; got {self.threshold!r}")
        if not (isinstance(self.level, float) and 0 < self.level < 1):
            raise ValueError(f"level must be a number in (0, 1), e.g. 0.95; got {self.level!r}")
        seeds = tuple(int(s) for s in self.seeds)
        if len(seeds) < 3 or len(set(seeds)) != len(seeds):
            raise ValueError(f"need at least 3 distinct confirmation seeds, got {self.seeds}")
        if int(self.selection_seed) in seeds:
            raise ValueError("the confirmation seeds must be fresh (not the selection seed)")
        if self.vectorize not in ("auto", True, False):
            raise ValueError(f"vectorize must be 'auto', True or False, got {self.vectorize!r}")
        if self.max_extensions < 0 or self.threshold < 0:
            raise ValueError("max_extensions and threshold must be ≥ 0")
        object.__setattr__(self, "seeds", seeds)


#: Primitives lowered to LAPACK custom calls on CPU (batched under vmap).
LAPACK_PRIMITIVES = frozenset(
    {
        "eigh",
        "eig",
        "qr",
        "geqrf",
        "geqp3",
        "householder_product",
        "orgqr",
        "svd",
        "lu",
        "cholesky",
        "triangular_solve",
        "schur",
        "hessenberg",
        "tridiagonal",
        "tridiagonal_solve",
    }
)


def _subjaxprs(params: Mapping[str, Any]):
    """The jaxprs among an equation's parameters (scan/cond/while/pjit/custom rules)."""
    for v in params.values():
        for x in v if isinstance(v, (list, tuple)) else (v,):
            inner = getattr(x, "jaxpr", x)  # a ClosedJaxpr holds its Jaxpr in .jaxpr
            if hasattr(inner, "eqns"):
                yield inner


def lapack_primitives(fn: Callable, *args: Any) -> set[str]:
    """Names of ``LAPACK_PRIMITIVES`` in the jaxpr of ``fn(*args)`` (sub-jaxprs included).

    Decompositions behind a ``jax.custom_batching.custom_vmap`` rule (the methods' ``eigh``
    and ``qr``, which loop over a vmapped batch on CPU and so cannot deadlock) are reported
    too: on CPU a vmapped run of them is still slower than a loop of runs. Under ``vmap``
    the step counter is batched, so every ``lax.cond`` of the run (an optimiser's first call,
    its basis refresh) computes both branches at every step: KL-Shampoo's 8-rate sweep ran
    3.3× slower vectorised than sequential (``benchmarks/results/train-vm-cpu.json``).
    """
    found: set[str] = set()
    todo = [jax.make_jaxpr(fn)(*args).jaxpr]
    while todo:
        jaxpr = todo.pop()
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in LAPACK_PRIMITIVES:
                found.add(eqn.primitive.name)
            todo.extend(_subjaxprs(eqn.params))
    return found


def _cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - platform dependent
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------- the storage
def _key(task: str, method: Method, lr: float, seed: int) -> str:
    cfg = {
        "task": task,
        "method": method.name,
        "config": json.dumps(dict(method.config), sort_keys=True, default=str),
        "lr": float(lr).hex(),
        "seed": int(seed),
    }
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:24]


def _write_atomic(path: Path, doc: dict) -> None:
    """``doc`` as JSON at ``path``, flushed to disk, through ``precond_lab._atomic``."""

    def write(tmp: Path) -> None:
        with open(tmp, "w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def _lr_label(lr: float) -> float:
    """Learning rates compare by value rounded to 12 significant digits (grid identity)."""
    return float(f"{float(lr):.12g}")


def _run_doc(
    task: str,
    method: Method,
    lr: float,
    seed: int,
    loss: float,
    seconds: float,
    execution: Mapping[str, str],
) -> dict:
    """The stored record of one finished run."""
    return {
        "task": task,
        "method": method.name,
        "config": json.dumps(dict(method.config), sort_keys=True, default=str),
        "lr": float(lr),
        "seed": int(seed),
        "loss": float(loss) if np.isfinite(loss) else None,
        "failed": not bool(np.isfinite(loss)),
        "seconds": float(seconds),
        "execution": execution.get(method.name, ""),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _run_once(method: Method, fn: Callable, lr: float, seed: int) -> float:
    """One run's final loss: ``fn`` is the jitted run of a traceable method (array inputs),
    else the method's Python run (whose result must be one number)."""
    if method.traceable:
        return float(jax.block_until_ready(fn(jnp.float32(lr), jnp.int32(seed))))
    return _as_loss(method, fn(float(lr), int(seed)))


_WORKER_METHODS: dict[bytes, tuple[Method, Callable]] = {}
#: XLA flags of a worker process: one thread each (the workers are the parallelism).
WORKER_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _worker_runs(
    recipe: Callable[[], Method],
    task: str,
    pairs: Sequence[tuple[float, int]],
    store: str | None,
    x64: bool,
    execution: str,
) -> list[dict]:
    """Run ``pairs`` of the method ``recipe()`` builds, in a worker process; each finished
    run is stored at once (as ``Study`` stores it), and the records are returned."""
    import pickle

    jax.config.update("jax_enable_x64", x64)
    tag = pickle.dumps(recipe)
    if tag not in _WORKER_METHODS:
        method = recipe()
        _WORKER_METHODS[tag] = (method, jax.jit(method.run) if method.traceable else method.run)
    method, fn = _WORKER_METHODS[tag]
    docs = []
    for lr, seed in pairs:
        t0 = time.perf_counter()
        loss = _run_once(method, fn, lr, seed)
        secs = time.perf_counter() - t0
        doc = _run_doc(task, method, lr, seed, loss, secs, {method.name: execution})
        if store is not None:
            _write_atomic(Path(store) / f"{_key(task, method, lr, seed)}.json", doc)
        docs.append(doc)
    return docs


# ---------------------------------------------------------------------------------- study
class Study:
    """Run the protocol for ``methods`` on one task (see the module doc).

    Args:
        task: the task's name; part of every run's cache key (include what changes the runs:
            model, data, steps, schedule).
        methods: the methods (distinct names).
        protocol: the protocol's settings.
        directory: where finished runs are stored (``<directory>/runs/<hash>.json``); None
            keeps them in memory only.
        progress: print a progress line with the ETA per finished run (True: to stderr), or
            a callable receiving the line.
        workers: run configurations in this many processes (``spawn``; one XLA thread
            each), a method's pending runs going to one process at a time so that it
            compiles once there. On a small CPU this is the parallelism that pays: a
            small model's training step uses about one core. Every method needs a
            ``recipe``. 1: in this process.
    """

    def __init__(
        self,
        task: str,
        methods: Sequence[Method],
        protocol: Protocol,
        *,
        directory: str | os.PathLike | None = None,
        progress: bool | Callable[[str], None] = True,
        workers: int = 1,
    ) -> None:
        if not isinstance(protocol, Protocol):
            raise TypeError(f"protocol must be a tuning.Protocol; got {type(protocol).__name__}")
        if isinstance(methods, (str, Method)) or not all(isinstance(m, Method) for m in methods):
            raise TypeError(
                "methods must be a sequence of tuning.Method (e.g. from model_method); got "
                f"{methods!r}"
            )
        names = [m.name for m in methods]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"need at least one method and distinct names, got {names}")
        self.task, self.methods, self.protocol = str(task), list(methods), protocol
        self.dir = None if directory is None else Path(directory) / "runs"
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        if progress is True:
            self._say: Callable[[str], None] | None = lambda s: print(s, file=sys.stderr)
        else:
            self._say = progress or None
        self._results: dict[str, dict] = {}
        self._compiled: dict[tuple[str, str], Callable] = {}
        self.execution: dict[str, str] = {}
        self.executed = self.cached = 0
        self._run_seconds = 0.0
        self._planned = 0
        self._t0 = time.perf_counter()
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer ≥ 1, got {workers!r}")
        missing = [m.name for m in self.methods if m.recipe is None]
        if workers > 1 and missing:
            raise ValueError(
                f"workers={workers} needs every method's recipe (a picklable callable that "
                f"rebuilds it in a worker process); missing for {missing}: build them with "
                "model_method, or pass recipe=functools.partial(...), or use workers=1"
            )
        self.workers = workers
        self._pool = None

    # ---------------------------------------------------------------- stored results
    def _lookup(self, key: str) -> dict | None:
        if key in self._results:
            return self._results[key]
        if self.dir is not None:
            path = self.dir / f"{key}.json"
            if path.exists():
                with open(path) as fh:
                    doc = json.load(fh)
                self._results[key] = doc
                return doc
        return None

    def _store(self, method: Method, lr: float, seed: int, loss: float, seconds: float) -> None:
        doc = _run_doc(self.task, method, lr, seed, loss, seconds, self.execution)
        if self.dir is not None:
            _write_atomic(self.dir / f"{_key(self.task, method, lr, seed)}.json", doc)
        self._record(method, doc)

    def _record(self, method: Method, doc: dict) -> None:
        self._results[_key(self.task, method, doc["lr"], doc["seed"])] = doc
        self.executed += 1
        self._run_seconds += doc["seconds"]
        self._report()

    def _report(self) -> None:
        if self._say is None:
            return
        done = self.executed + self.cached
        left = max(self._planned - done, 0)
        per = self._run_seconds / self.executed if self.executed else float("nan")
        eta = per * left / self.workers if self.executed else float("nan")
        fails = sum(1 for d in self._results.values() if d["failed"])
        self._say(
            f"tuning {self.task}: {done}/{self._planned} runs ({self.cached} stored, "
            f"{fails} failed) · {_hms(time.perf_counter() - self._t0)} elapsed · "
            f"ETA {_hms(eta)}"
        )

    # ---------------------------------------------------------------- execution
    def _mode(self, method: Method) -> str:
        if method.name in self.execution:
            return self.execution[method.name]
        vec = self.protocol.vectorize
        if not method.traceable:
            mode = "python"
        elif vec is False:
            mode = "jit"
        else:
            mode = "vmap"
            if vec == "auto" and jax.default_backend() == "cpu" and _cpu_threads() > 1:
                found = lapack_primitives(method.run, jnp.float32(1e-3), jnp.int32(0))
                if found:
                    mode = "jit (no vmap: LAPACK " + ",".join(sorted(found)) + " on CPU)"
        self.execution[method.name] = mode
        return mode

    def _fn(self, method: Method, kind: str) -> Callable:
        key = (method.name, kind)
        if key not in self._compiled:
            if kind == "one":
                self._compiled[key] = jax.jit(method.run)
            elif kind == "lrs":
                self._compiled[key] = jax.jit(jax.vmap(method.run, in_axes=(0, None)))
            else:
                self._compiled[key] = jax.jit(jax.vmap(method.run, in_axes=(None, 0)))
        return self._compiled[key]

    def _evaluate(self, method: Method, pairs: Sequence[tuple[float, int]]) -> None:
        """Run the (lr, seed) pairs of ``method`` that are not stored yet."""
        todo = []
        for lr, seed in pairs:
            if self._lookup(_key(self.task, method, lr, seed)) is None:
                todo.append((lr, seed))
        mode = self._mode(method)
        if mode == "vmap" and len(todo) > 1:
            lrs = {lr for lr, _ in todo}
            seeds = {s for _, s in todo}
            if len(seeds) == 1 or len(lrs) == 1:
                t0 = time.perf_counter()
                if len(seeds) == 1:
                    out = self._fn(method, "lrs")(
                        jnp.asarray([lr for lr, _ in todo], jnp.float32), jnp.int32(todo[0][1])
                    )
                else:
                    out = self._fn(method, "seeds")(
                        jnp.float32(todo[0][0]), jnp.asarray([s for _, s in todo], jnp.int32)
                    )
                out = np.asarray(jax.block_until_ready(out), np.float64)
                each = (time.perf_counter() - t0) / len(todo)
                for (lr, seed), loss in zip(todo, out, strict=True):
                    self._store(method, lr, seed, float(loss), each)
                return
        for lr, seed in todo:
            t0 = time.perf_counter()
            fn = self._fn(method, "one") if method.traceable else method.run
            loss = _run_once(method, fn, lr, seed)
            self._store(method, lr, seed, loss, time.perf_counter() - t0)

    def _evaluate_all(self, jobs: Mapping[str, Sequence[tuple[float, int]]]) -> None:
        """Run every method's pending pairs: here, or across the worker processes."""
        by_name = {m.name: m for m in self.methods}
        if self.workers == 1:
            for name, pairs in jobs.items():
                self._evaluate(by_name[name], pairs)
            return
        chunks = []
        for name, pairs in jobs.items():
            method = by_name[name]
            todo = [
                (lr, s) for lr, s in pairs if self._lookup(_key(self.task, method, lr, s)) is None
            ]
            if todo:
                chunks.append((method, todo))
        while chunks and len(chunks) < self.workers:  # split the longest to fill the workers
            chunks.sort(key=lambda c: -len(c[1]))
            method, todo = chunks[0]
            if len(todo) < 2:
                break
            half = len(todo) // 2
            chunks[0:1] = [(method, todo[:half]), (method, todo[half:])]
        if not chunks:
            return
        import concurrent.futures as cf
        import multiprocessing

        mode = f"jit in {self.workers} worker processes (1 XLA thread each)"
        if self._pool is None:
            old = os.environ.get("XLA_FLAGS")
            os.environ["XLA_FLAGS"] = f"{old or ''} {WORKER_XLA_FLAGS}".strip()
            try:
                self._pool = cf.ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn")
                )
                self._pool.submit(int, 0).result()  # start the processes under these flags
            finally:
                if old is None:
                    os.environ.pop("XLA_FLAGS", None)
                else:
                    os.environ["XLA_FLAGS"] = old
        x64 = bool(jax.config.jax_enable_x64)
        store = None if self.dir is None else str(self.dir)
        futures = {}
        for method, todo in sorted(chunks, key=lambda c: -len(c[1])):
            self.execution.setdefault(method.name, mode)
            fut = self._pool.submit(_worker_runs, method.recipe, self.task, todo, store, x64, mode)
            futures[fut] = method
        pending = {_key(self.task, m, lr, s): m for m, todo in chunks for lr, s in todo}

        def collect(doc: dict, method: Method) -> None:
            mine = json.dumps(dict(method.config), sort_keys=True, default=str)
            if doc["config"] != mine:
                raise RuntimeError(
                    f"the recipe of {method.name!r} rebuilt a different method in a worker "
                    f"(config {doc['config']} vs {mine}); fix its recipe"
                )
            if pending.pop(_key(self.task, method, doc["lr"], doc["seed"]), None) is not None:
                self._record(method, doc)

        left = set(futures)
        while left:
            done, left = cf.wait(left, timeout=5.0, return_when=cf.FIRST_COMPLETED)
            if self.dir is not None:  # report each run as its worker stores it
                for key, method in list(pending.items()):
                    path = self.dir / f"{key}.json"
                    if path.exists():
                        with open(path) as fh:
                            collect(json.load(fh), method)
            for fut in done:
                for doc in fut.result():
                    collect(doc, futures[fut])

    def close(self) -> None:
        """Shut the worker processes down (``run`` does it when it ends)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _loss(self, method: Method, lr: float, seed: int) -> float:
        doc = self._lookup(_key(self.task, method, lr, seed))
        if doc is None or doc["loss"] is None:
            return float("nan")
        return float(doc["loss"])

    def _count_stored(self, pairs: dict[str, list[tuple[float, int]]]) -> None:
        by_name = {m.name: m for m in self.methods}
        for name, ps in pairs.items():
            for lr, seed in ps:
                if self._lookup(_key(self.task, by_name[name], lr, seed)) is not None:
                    self.cached += 1

    # ---------------------------------------------------------------- the protocol
    def select(self) -> tuple[np.ndarray, dict[str, float], dict[str, bool], list[str]]:
        """Grid runs on the selection seed with extensions; returns the grid, the selected
        rate and interiority per method, and the extension log."""
        p = self.protocol
        grid = lr_grid(*p.lr_bounds, points_per_octave=p.points_per_octave)
        seed = int(p.selection_seed)
        log: list[str] = []
        self._planned += len(self.methods) * (len(grid) + len(p.seeds))
        self._count_stored({m.name: [(lr, seed) for lr in grid] for m in self.methods})
        while True:
            self._evaluate_all({m.name: [(float(lr), seed) for lr in grid] for m in self.methods})
            table = {
                m.name: np.array([self._loss(m, float(lr), seed) for lr in grid])
                for m in self.methods
            }
            if p.shared_rate:
                stacked = np.stack(list(table.values()))
                mean = np.where(np.isfinite(stacked).all(axis=0), stacked.mean(axis=0), np.inf)
                i = int(np.argmin(mean)) if np.isfinite(mean).any() else -1
                table = {"all methods": mean}
                best = dict.fromkeys((m.name for m in self.methods), i)
            best_of, edges = {}, set()
            for name, losses in table.items():
                finite = np.isfinite(losses)
                i = int(np.argmin(np.where(finite, losses, np.inf))) if finite.any() else -1
                best_of[name] = i
                if i == 0:
                    edges.add(("low", name))
                elif i == len(grid) - 1:
                    edges.add(("high", name))
            if not p.shared_rate:
                best = best_of
            sides = sorted({s for s, _ in edges})
            if not sides or len(log) >= p.max_extensions:
                break
            for side in sides:
                if len(log) >= p.max_extensions:
                    break
                grid = extend_grid(grid, side, points_per_octave=p.points_per_octave)
                new = grid[0] if side == "low" else grid[-1]
                who = ",".join(sorted(n for s, n in edges if s == side))
                log.append(f"{side}:{new:.6g} (optimum on the {side} edge for {who})")
                self._planned += len(self.methods)
                self._count_stored({m.name: [(float(new), seed)] for m in self.methods})
        selected, interior = {}, {}
        for m in self.methods:
            i = best[m.name]
            selected[m.name] = float(grid[i]) if i >= 0 else float("nan")
            interior[m.name] = 0 < i < len(grid) - 1
        edge = sorted(n for n, inside in interior.items() if not inside)
        if edge:
            warnings.warn(
                f"tuning {self.task}: no interior optimum for {edge} after {len(log)} grid "
                f"extension(s) (max_extensions={p.max_extensions}); reported as interior = 0",
                stacklevel=3,
            )
        return grid, selected, interior, log

    def run(self) -> xr.Dataset:
        """Run (or continue) the whole study; returns the results (see ``to_dataset``)."""
        self._t0 = time.perf_counter()
        p = self.protocol
        try:
            grid, selected, interior, log = self.select()
            confirm = {
                m.name: [(selected[m.name], s) for s in p.seeds]
                for m in self.methods
                if np.isfinite(selected[m.name])
            }
            self._count_stored(confirm)
            self._evaluate_all(confirm)
        finally:
            self.close()
        return self.to_dataset(grid, selected, interior, log)

    def to_dataset(
        self,
        grid: np.ndarray,
        selected: Mapping[str, float],
        interior: Mapping[str, bool],
        log: Sequence[str],
    ) -> xr.Dataset:
        """The results: ``loss``/``ran``/``failed``/``seconds`` (of the run when it ran, also
        if it was stored by an earlier invocation) over ``(method, lr, seed)`` and per
        method ``selected_lr``, ``interior``, ``grid_failures``, ``seed_failures``."""
        p = self.protocol
        seeds = [int(p.selection_seed), *p.seeds]
        lrs = np.sort(np.asarray(grid, np.float64))
        shape = (len(self.methods), len(lrs), len(seeds))
        loss = np.full(shape, np.nan)
        seconds = np.full(shape, np.nan)
        ran = np.zeros(shape, np.int8)
        failed = np.zeros(shape, np.int8)
        lr_index = {_lr_label(v): j for j, v in enumerate(lrs)}
        for i, m in enumerate(self.methods):
            for j, lr in enumerate(lrs):
                for k, s in enumerate(seeds):
                    doc = self._lookup(_key(self.task, m, float(lr), s))
                    if doc is None:
                        continue
                    ran[i, j, k] = 1
                    seconds[i, j, k] = doc["seconds"]
                    failed[i, j, k] = int(doc["failed"])
                    if doc["loss"] is not None:
                        loss[i, j, k] = doc["loss"]
        names = [m.name for m in self.methods]
        sel = np.array([selected[n] for n in names])
        seed_fail = np.zeros(len(names), np.int64)
        for i in range(len(names)):
            if np.isfinite(sel[i]):
                j = lr_index[_lr_label(sel[i])]
                seed_fail[i] = int(failed[i, j, 1:].sum())
        ds = xr.Dataset(
            {
                "loss": (("method", "lr", "seed"), loss),
                "ran": (("method", "lr", "seed"), ran),
                "seconds": (("method", "lr", "seed"), seconds),
                "failed": (("method", "lr", "seed"), failed),
                "selected_lr": ("method", sel),
                "interior": ("method", np.array([int(interior[n]) for n in names], np.int8)),
                "grid_failures": ("method", failed[:, :, 0].sum(axis=1).astype(np.int64)),
                "seed_failures": ("method", seed_fail),
                "execution": ("method", np.array([self.execution.get(n, "") for n in names])),
                "compile_mode": ("method", np.array([m.compile_mode for m in self.methods])),
            },
            coords={"method": names, "lr": lrs, "seed": seeds},
        )
        ds.attrs = make_attrs(
            "precond_lab tuning study",
            seed=int(p.selection_seed),
            source=self.task,
            task=self.task,
            selection_seed=int(p.selection_seed),
            confirmation_seeds=list(p.seeds),
            points_per_octave=int(p.points_per_octave),
            lr_bounds=list(p.lr_bounds),
            max_extensions=int(p.max_extensions),
            extensions="; ".join(log) if log else "none",
            n_extensions=len(log),
            threshold=float(p.threshold),
            level=float(p.level),
            shared_rate=int(p.shared_rate),
            workers=int(self.workers),
            runs_executed=int(self.executed),
            runs_stored_before=int(self.cached),
            wall_seconds=round(time.perf_counter() - self._t0, 3),
            store="" if self.dir is None else str(self.dir),
            method_configs=json.dumps(
                {m.name: dict(m.config) for m in self.methods}, sort_keys=True, default=str
            ),
        )
        return ds


def _hms(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def compare(
    ds: xr.Dataset,
    baseline: str,
    *,
    threshold: float | None = None,
    level: float | None = None,
) -> xr.Dataset:
    """Decisions of every other method against ``baseline`` on the confirmation seeds.

    Each method is taken at its own selected rate; the pairs are the seeds (the selection
    seed is left out: its runs chose the rates).

    Args:
        ds: a ``Study.run`` result.
        baseline: the baseline's method name.
        threshold: the practical threshold (default: the study's).
        level: the confidence level (default: the study's).

    Returns:
        A Dataset over ``method`` (the others): ``mean``, ``low``, ``high`` (of method −
        baseline), ``n`` (pairs), ``decision`` (``Decision`` values as strings); attrs
        ``baseline``, ``threshold``, ``level``. A method with a failed confirmation run (or
        no selected rate) gets ``unresolved`` and NaNs.
    """
    if not isinstance(ds, xr.Dataset) or "selected_lr" not in ds or "method" not in ds.dims:
        raise TypeError(
            f"compare needs the Dataset of Study.run (or tuning.unstack); got {type(ds).__name__}"
        )
    known = [str(m) for m in ds["method"].values]
    if baseline not in known:
        raise ValueError(f"baseline {baseline!r} is not a method of the study; methods: {known}")
    threshold = float(ds.attrs["threshold"] if threshold is None else threshold)
    level = float(ds.attrs["level"] if level is None else level)
    seeds = ds["seed"].values[1:]

    def at_selected(name: str) -> np.ndarray:
        lr = float(ds["selected_lr"].sel({"method": name}))
        if not np.isfinite(lr):
            return np.full(len(seeds), np.nan)
        row = ds["loss"].sel({"method": name}).sel(lr=lr, method="nearest")
        return row.sel(seed=seeds).values.astype(np.float64)

    base = at_selected(baseline)
    others = [str(m) for m in ds["method"].values if str(m) != baseline]
    rows = []
    for name in others:
        d = at_selected(name) - base
        if d.size >= 2 and np.isfinite(d).all():
            iv = paired_interval(d, level)
            rows.append((iv.mean, iv.low, iv.high, iv.n, decide(iv, threshold).value))
        else:
            rows.append((np.nan, np.nan, np.nan, int(np.isfinite(d).sum()), "unresolved"))
    cols = list(zip(*rows, strict=True)) if rows else [[], [], [], [], []]
    return xr.Dataset(
        {
            "mean": ("method", np.asarray(cols[0], np.float64)),
            "low": ("method", np.asarray(cols[1], np.float64)),
            "high": ("method", np.asarray(cols[2], np.float64)),
            "n": ("method", np.asarray(cols[3], np.int64)),
            "decision": ("method", np.asarray(cols[4], dtype=object).astype(str)),
        },
        coords={"method": others},
        attrs={"baseline": baseline, "threshold": threshold, "level": level},
    )


#: Attributes of a study's Dataset that ``stack`` keeps per comparison.
_PER_STUDY = (
    "task",
    "setting",
    "extensions",
    "n_extensions",
    "shared_rate",
    "lr_bounds",
    "points_per_octave",
    "max_extensions",
    "runs_executed",
    "runs_stored_before",
    "wall_seconds",
    "workers",
    "method_configs",
)
_FILL = {
    "loss": np.nan,
    "seconds": np.nan,
    "selected_lr": np.nan,
    "execution": "",
    "compile_mode": "",
}


def stack(studies: Mapping[str, xr.Dataset]) -> xr.Dataset:
    """Several ``Study.run`` results in one Dataset along ``comparison`` (for one file).

    Methods and learning rates are the unions (``used`` marks each comparison's methods;
    runs that did not happen have ``ran = 0``); per-study attributes become variables over
    ``comparison``; the study-wide ones (threshold, level, seeds) must agree.

    Raises:
        ValueError: no studies, or studies with different thresholds, levels or seeds.
    """
    if not studies:
        raise ValueError("stack needs at least one study")
    names = list(studies)
    common = ("threshold", "level", "selection_seed", "confirmation_seeds")
    first = studies[names[0]]
    for n in names[1:]:
        for k in common:
            if str(studies[n].attrs.get(k)) != str(first.attrs.get(k)):
                raise ValueError(
                    f"studies {names[0]!r} and {n!r} differ in {k} "
                    f"({first.attrs.get(k)} vs {studies[n].attrs.get(k)}); stack only "
                    "studies run under one protocol"
                )
    methods = list(dict.fromkeys(m for d in studies.values() for m in d["method"].values.tolist()))
    lrs = np.unique(np.concatenate([d["lr"].values for d in studies.values()]))
    parts = []
    for n in names:
        d = studies[n]
        used = xr.DataArray(np.ones(d.sizes["method"], np.int8), dims="method")
        d = d.assign(used=used)
        fill = {v: _FILL.get(v, 0) for v in d.data_vars}
        parts.append(d.reindex({"method": methods, "lr": lrs}, fill_value=fill))
    out = xr.concat(
        parts,
        dim="comparison",
        data_vars="all",
        coords="minimal",
        compat="override",
        combine_attrs="drop",
    )
    out = out.assign_coords(comparison=names)
    for k in _PER_STUDY:
        vals = [studies[n].attrs.get(k, "") for n in names]
        out[f"study_{k}"] = ("comparison", np.array([str(v) for v in vals]))
    out.attrs = {k: v for k, v in first.attrs.items() if k not in _PER_STUDY}
    for v in ("ran", "failed", "interior", "used"):
        out[v] = out[v].astype(np.int8)
    return out


def unstack(ds: xr.Dataset, comparison: str) -> xr.Dataset:
    """One comparison of a ``stack``ed Dataset, as ``Study.run`` returned it (``compare``
    works on it): its methods, the rates it ran, its attributes."""
    d = ds.sel(comparison=comparison)
    d = d.isel({"method": np.flatnonzero(d["used"].values.astype(bool))})
    ran = d["ran"].values.astype(bool).any(axis=(0, 2))
    d = d.isel(lr=np.flatnonzero(ran))
    attrs = dict(ds.attrs)
    for k in _PER_STUDY:
        text = str(d[f"study_{k}"].item())
        try:
            attrs[k] = json.loads(text) if k in ("lr_bounds",) else _type_of(k)(text)
        except (TypeError, ValueError):
            attrs[k] = text
    keep = [v for v in d.data_vars if not v.startswith("study_") and v != "used"]
    out = d[keep].drop_vars("comparison")
    out.attrs = attrs
    return out


def _type_of(key: str) -> type:
    return (
        int
        if key
        in (
            "n_extensions",
            "shared_rate",
            "points_per_octave",
            "max_extensions",
            "runs_executed",
            "runs_stored_before",
            "workers",
        )
        else (float if key == "wall_seconds" else str)
    )


def pilot_bounds(
    methods: Sequence[Method],
    *,
    low: float = 2.0**-16,
    high: float = 1.0,
    octaves_per_point: int = 2,
    seed: int = 0,
    margin_octaves: int = 2,
) -> tuple[float, float]:
    """Bounds for the shared grid from a short pilot on a coarse grid.

    Runs each method (give them a short step budget) on ``2^(k·octaves_per_point)`` in
    ``[low, high]``, takes each method's best finite rate, and returns the range of these
    rates widened by ``margin_octaves`` octaves on both sides.

    Raises:
        ValueError: every pilot run of some method failed.
    """
    if not methods:
        raise ValueError("pilot_bounds needs at least one Method")
    octaves_per_point = _positive_int(octaves_per_point, "octaves_per_point")
    if (
        isinstance(margin_octaves, bool)
        or not isinstance(margin_octaves, int)
        or margin_octaves < 0
    ):
        raise ValueError(f"margin_octaves must be an integer ≥ 0; got {margin_octaves!r}")
    coarse = lr_grid(low, high, points_per_octave=1)[::octaves_per_point]
    bests = []
    for m in methods:
        run = jax.jit(m.run) if m.traceable else m.run
        losses = np.array([float(run(float(lr), int(seed))) for lr in coarse])
        if not np.isfinite(losses).any():
            raise ValueError(f"every pilot run of {m.name!r} failed on {coarse}")
        bests.append(coarse[int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))])
    f = 2.0**margin_octaves
    return float(min(bests) / f), float(max(bests) * f)


def _describe(factory: Callable) -> str:
    """A factory's name for cache keys, stable across processes (no memory addresses)."""
    import functools

    if isinstance(factory, functools.partial):
        args = ", ".join(
            [repr(a) for a in factory.args]
            + [f"{k}={v!r}" for k, v in sorted(factory.keywords.items())]
        )
        return f"{_describe(factory.func)}({args})"
    name = getattr(factory, "__qualname__", None)
    if name is None:
        return type(factory).__qualname__
    return f"{getattr(factory, '__module__', '')}.{name}"


# ------------------------------------------------------------------------------- adapters
def model_method(
    name: str,
    model: Any,
    dataset: Any,
    factory: Callable[..., optax.GradientTransformation],
    *,
    steps: int,
    batch_size: int = 32,
    warmup_steps: int = 0,
    decay: str = "cosine",
    end_factor: float = 0.0,
    eval_samples: int = 1000,
    divergence_factor: float = 10.0,
    model_options: Mapping[str, Any] | None = None,
    **hyper: Any,
) -> Method:
    """A traceable ``Method`` training a ``precond_lab`` model with ``factory``.

    ``run(lr, seed)``: parameters from ``model.init(PRNGKey(seed))``; mini-batches drawn
    without replacement by ``jax.random`` from ``seed`` (the same order for every method; not
    ``precond_lab.train``'s NumPy schedule); ``factory(learning_rate=schedule, **hyper)``
    with ``make_schedule(lr, ...)`` built inside the traced run (so one compilation serves
    every rate); ``steps`` updates under ``lax.scan``; the mean loss on the first
    ``eval_samples`` test examples, or NaN if a training loss was non-finite or above
    ``divergence_factor`` × the first one.

    Args:
        name: the method's name.
        model: a ``precond_lab.capture.models.Model`` or a name of ``make_model``.
        dataset: a ``precond_lab.capture.data.Dataset`` or a name of ``load_dataset``.
        factory: an optimiser factory taking ``learning_rate`` (e.g. ``po.kl_shampoo``).
        steps: updates per run.
        batch_size: mini-batch size.
        warmup_steps: warmup of the schedule.
        decay: ``"cosine"``, ``"linear"`` or ``"constant"``.
        end_factor: the schedule's final rate as a fraction of the peak.
        eval_samples: test examples of the final loss.
        divergence_factor: see above.
        model_options: options of ``make_model`` when ``model`` is a name.
        **hyper: the factory's other arguments.

    Returns:
        The method (``compile_mode="traced"``).
    """
    import functools

    from .capture.data import load_dataset
    from .capture.models import make_model
    from .capture.train import batch_loss_fn

    recipe = None
    if isinstance(model, str) and isinstance(dataset, str):
        recipe = functools.partial(
            model_method,
            name,
            model,
            dataset,
            factory,
            steps=steps,
            batch_size=batch_size,
            warmup_steps=warmup_steps,
            decay=decay,
            end_factor=end_factor,
            eval_samples=eval_samples,
            divergence_factor=divergence_factor,
            model_options=dict(model_options or {}),
            **hyper,
        )
    ds = load_dataset(dataset) if isinstance(dataset, str) else dataset
    if isinstance(model, str):
        model = make_model(model, ds, **dict(model_options or {}))
    elif model_options:
        raise ValueError("model_options apply only when model is a name of make_model")
    loss_fn = batch_loss_fn(model)
    x_train, y_train = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    n_test = min(eval_samples, len(ds.y_test))
    x_test, y_test = jnp.asarray(ds.x_test[:n_test]), jnp.asarray(ds.y_test[:n_test])
    n = len(ds.y_train)
    if not 1 <= batch_size <= n:
        raise ValueError(f"need 1 ≤ batch_size ≤ {n}")

    def run(lr, seed):
        key = jax.random.PRNGKey(seed)
        k_init, k_data = jax.random.split(key)
        params = model.init(k_init)
        sched = make_schedule(
            lr, total_steps=steps, warmup_steps=warmup_steps, decay=decay, end_factor=end_factor
        )
        tx = factory(learning_rate=sched, **hyper)
        state = tx.init(params)

        def train_step(carry, t):
            params, state, first, bad = carry
            idx = jax.random.choice(jax.random.fold_in(k_data, t), n, (batch_size,), False)
            loss, grads = jax.value_and_grad(loss_fn)(params, x_train[idx], y_train[idx])
            updates, state = tx.update(grads, state, params)
            first = jnp.where(t == 0, loss, first)
            bad = bad | ~jnp.isfinite(loss) | (loss > divergence_factor * jnp.maximum(first, 1e-12))
            return optax.apply_updates(params, updates), state, first, bad

        def step(carry, t):
            # a diverged run skips its remaining steps (one branch runs when not vmapped)
            return jax.lax.cond(carry[3], lambda c, t: c, train_step, carry, t), None

        init = (params, state, jnp.float32(0.0), jnp.bool_(False))
        (params, _, _, bad), _ = jax.lax.scan(step, init, jnp.arange(steps))
        final = loss_fn(params, x_test, y_test)
        return jnp.where(bad | ~jnp.isfinite(final), jnp.nan, final)

    config = {
        "factory": _describe(factory),
        "model": getattr(model, "name", repr(model)),
        "model_config": getattr(model, "config", {}),
        "dataset": getattr(ds, "name", "?"),
        "steps": steps,
        "batch_size": batch_size,
        "warmup_steps": warmup_steps,
        "decay": decay,
        "end_factor": end_factor,
        "eval_samples": n_test,
        "divergence_factor": divergence_factor,
        "adapter": "model_method",
        **{k: repr(v) for k, v in hyper.items()},
    }
    return Method(name, run, traceable=True, config=config, compile_mode="traced", recipe=recipe)


def train_method(
    name: str,
    model: Any,
    dataset: Any,
    factory: Callable[..., optax.GradientTransformation],
    *,
    steps: int,
    batch_size: int = 32,
    warmup_steps: int = 0,
    decay: str = "cosine",
    eval_samples: int = 1000,
    divergence_factor: float = 10.0,
    **hyper: Any,
) -> Method:
    """A ``Method`` running ``precond_lab.train.train`` (its batch schedule and divergence
    stop; a failed run gives NaN).

    The peak rate reaches the compiled step through ``optax.inject_hyperparams`` applied to
    ``peak_lr -> factory(learning_rate=make_schedule(peak_lr, ...), **hyper)``, so ``train``
    compiles once per method; if injecting fails, every run builds its own optimiser (one
    compilation per run), with a warning and ``compile_mode="recompile"``.

    Arguments as ``model_method``.
    """
    from .capture.data import load_dataset
    from .capture.models import make_model
    from .train import train

    ds = load_dataset(dataset) if isinstance(dataset, str) else dataset
    if isinstance(model, str):
        model = make_model(model, ds)

    def build(peak_lr):
        sched = make_schedule(peak_lr, total_steps=steps, warmup_steps=warmup_steps, decay=decay)
        return factory(learning_rate=sched, **hyper)

    injected = None
    try:
        injected = optax.inject_hyperparams(build)(peak_lr=1e-3)
        jax.eval_shape(injected.init, jax.eval_shape(model.init, jax.random.PRNGKey(0)))
        mode = "inject_hyperparams"
    except Exception as err:  # noqa: BLE001 - any failure means: cannot inject
        injected, mode = None, "recompile"
        warnings.warn(
            f"{name}: optax.inject_hyperparams failed ({type(err).__name__}: {err}); every "
            "run compiles its own optimiser",
            stacklevel=2,
        )

    def run(lr, seed):
        kw = dict(
            steps=steps,
            batch_size=batch_size,
            seed=int(seed),
            eval_samples=eval_samples,
            divergence_factor=divergence_factor,
        )
        if injected is not None:
            res = train(model, ds, injected, hyperparams={"peak_lr": float(lr)}, **kw)
        else:
            res = train(model, ds, build(float(lr)), **kw)
        return float("nan") if res.failed else res.final("eval_loss")

    config = {
        "factory": _describe(factory),
        "model": getattr(model, "name", repr(model)),
        "model_config": getattr(model, "config", {}),
        "dataset": getattr(ds, "name", "?"),
        "steps": steps,
        "batch_size": batch_size,
        "warmup_steps": warmup_steps,
        "decay": decay,
        "eval_samples": eval_samples,
        "divergence_factor": divergence_factor,
        "adapter": "train_method",
        **{k: repr(v) for k, v in hyper.items()},
    }
    return Method(name, run, traceable=False, config=config, compile_mode=mode)
