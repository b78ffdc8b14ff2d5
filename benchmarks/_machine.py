"""Machine description and timing helpers shared by the benchmark scripts.

Everything here is deliberately small and dependency-free beyond JAX/NumPy:

* :func:`machine_info` — hostname, platform, Python/JAX/jaxlib/NumPy versions, CPU count,
  JAX device kind/platform/count, date (UTC), for the header of a results JSON;
* :func:`time_call` — warm-up (compile) runs excluded, then up to ``repeats`` timed runs
  (stopping early once ``budget_s`` is spent), each ended by ``jax.block_until_ready``;
  returns the median and all repeats, plus how many XLA compilations and device→host
  fetches happened inside the timed runs (recompilation / host-sync diagnostics);
* :func:`matmul_throughput` — achieved GFLOP/s of a plain jitted ``jnp.matmul``, the
  yardstick for "fraction of matmul throughput";
* :func:`result_path` — ``<dir>/<prefix>-<hostname>-<device_kind>.json``.

Usage::

    from _machine import machine_info, time_call, matmul_throughput
    t = time_call(lambda: f(x), warmup=1, repeats=3)
    print(t.median, t.all, t.compiles, t.host_fetches)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import resource
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Timing",
    "compile_count",
    "device_memory",
    "host_fetch_count",
    "load_average",
    "machine_info",
    "matmul_throughput",
    "peak_rss_bytes",
    "result_path",
    "time_call",
]

# --------------------------------------------------------------------------------------
# Diagnostics counters: XLA backend compilations and device→host fetches.
# --------------------------------------------------------------------------------------

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_counts = {"compiles": 0, "fetches": 0}
_fetch_patched = False


def _on_duration(event: str, duration: float, **kwargs) -> None:
    if event == _COMPILE_EVENT:
        _counts["compiles"] += 1


try:  # public API since jax 0.4.x
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _COMPILES_AVAILABLE = True
except Exception:  # pragma: no cover - depends on the JAX version
    _COMPILES_AVAILABLE = False


def _patch_fetch_counter() -> bool:
    """Count first materialisations of device arrays on the host (``float(x)``, ``np.asarray``).

    Uses the private ``ArrayImpl._value`` property; degrades to "unavailable" (None in
    the results) if a JAX version lays it out differently.
    """
    global _fetch_patched
    if _fetch_patched:
        return True
    try:
        from jax._src import array as _array

        cls = _array.ArrayImpl
        original = cls.__dict__["_value"]
        if not isinstance(original, property) or original.fget is None:
            return False

        def _value(self):
            if getattr(self, "_npy_value", None) is None:
                _counts["fetches"] += 1
            return original.fget(self)

        cls._value = property(_value)
        _fetch_patched = True
    except Exception:  # pragma: no cover - depends on the JAX version
        return False
    return True


_FETCHES_AVAILABLE = _patch_fetch_counter()


def compile_count() -> int | None:
    """XLA backend compilations so far in this process (None if not observable)."""
    return _counts["compiles"] if _COMPILES_AVAILABLE else None


def host_fetch_count() -> int | None:
    """Device→host array fetches so far (each a sync on an accelerator), or None.

    Counts conversions that go through ``ArrayImpl._value`` (``float(x)``, ``bool(x)``,
    ``x.tolist()``, and ``np.asarray(x)`` on accelerators). On CPU ``np.asarray`` may use
    the buffer protocol and is then not counted, so the CPU figure is a lower bound.
    """
    return _counts["fetches"] if _FETCHES_AVAILABLE else None


# --------------------------------------------------------------------------------------
# Machine description.
# --------------------------------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cpu_count() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def device_memory(device=None) -> dict[str, int] | None:
    """``memory_stats()`` of a JAX device (bytes_limit, peak_bytes_in_use, …) or None (CPU)."""
    device = jax.devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except Exception:
        return None
    if not stats:
        return None
    keep = ("bytes_limit", "bytes_in_use", "peak_bytes_in_use")
    return {k: int(stats[k]) for k in keep if k in stats}


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_extra_bytes(fn) -> int | None:
    """Resident memory ``fn()`` adds at its peak, above what the process held before it
    (Linux: the peak is reset through ``/proc/self/clear_refs``; None elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (the peak) to the current VmRSS
    except OSError:
        return None
    base = _status_bytes("VmRSS")
    fn()
    peak = _status_bytes("VmHWM")
    return None if base is None or peak is None else max(0, peak - base)


def _loadavg() -> list[float] | None:
    """System load averages: on a shared machine, > cpu_count means contended timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def load_average() -> list[float] | None:
    return _loadavg()


def _total_ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """A JSON-ready description of the machine and software stack."""
    import jaxlib

    devices = jax.devices()
    dev = devices[0]
    try:
        import scipy

        scipy_version = scipy.__version__
    except ImportError:  # pragma: no cover
        scipy_version = None
    mem = device_memory(dev)
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": getattr(jaxlib, "__version__", None),
        "numpy": np.__version__,
        "scipy": scipy_version,
        "cpu_model": _cpu_model(),
        "cpu_count": _cpu_count(),
        "ram_bytes": _total_ram(),
        "load_average_1_5_15": _loadavg(),
        "device_platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": len(devices),
        "device_memory_bytes": None if mem is None else mem.get("bytes_limit"),
        "x64_enabled": bool(jax.config.jax_enable_x64),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "unknown"


def result_path(directory: str, prefix: str) -> str:
    """``<directory>/<prefix>-<hostname>-<device_kind>.json`` (names made filename-safe)."""
    host = _slug(socket.gethostname())
    kind = _slug(jax.devices()[0].device_kind).lower()
    return os.path.join(directory, f"{prefix}-{host}-{kind}.json")


def write_result(doc: dict, out: str | None, prefix: str) -> str:
    """Write a benchmark's JSON to ``out`` (default ``results/<prefix>-<host>-<device>``
    next to the benchmarks), creating its directory; returns the path."""
    path = out or result_path(os.path.join(os.path.dirname(__file__), "results"), prefix)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1, default=str)
    print("wrote", path)
    return path


# --------------------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    """Wall-clock seconds of the timed repeats (warm-ups excluded)."""

    all: list[float]
    warmup: list[float]
    cpu: list[float]  # process CPU seconds (all threads) of each timed repeat
    compiles: int | None  # XLA compilations inside the timed repeats (ideally 0)
    host_fetches: float | None  # device→host fetches per timed repeat
    result: Any = None  # the last repeat's return value

    @property
    def median(self) -> float:
        return float(statistics.median(self.all))

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.median,
            "seconds_all": self.all,
            "repeats": len(self.all),
            "warmup_seconds": self.warmup,
            # process CPU seconds / wall seconds: ~#cores when the work is parallel and the
            # machine is otherwise idle; lower values flag contention or serial phases
            "cpu_per_wall": sum(self.cpu) / sum(self.all) if sum(self.all) > 0 else None,
            "compiles_during_timed": self.compiles,
            "host_fetches_per_call": self.host_fetches,
        }


def _block(x):
    try:
        return jax.block_until_ready(x)
    except Exception:  # non-JAX leaves (floats, None, custom objects)
        return x


def time_call(
    fn: Callable[[], Any],
    *,
    warmup: int | Callable[[], Any] = 1,
    repeats: int = 3,
    budget_s: float | None = None,
    min_repeats: int = 1,
) -> Timing:
    """Time ``fn()`` after warm-up: median of up to ``repeats`` runs.

    Args:
        fn: the zero-argument callable to time; its result is passed through
            ``jax.block_until_ready`` before the clock stops.
        warmup: number of untimed calls of ``fn`` first (compilation), or a callable
            to call once instead (e.g. the same work on a smaller input that compiles
            the same kernels).
        repeats: maximum number of timed calls.
        budget_s: stop repeating once the timed calls have used this many seconds
            (at least ``min_repeats`` calls are always made).
    """
    warm_times = []
    calls = [warmup] if callable(warmup) else [fn] * int(warmup)
    for call in calls:
        t0 = time.perf_counter()
        _block(call())
        warm_times.append(time.perf_counter() - t0)
    c0, f0 = compile_count(), host_fetch_count()
    times: list[float] = []
    cpu: list[float] = []
    result = None
    for i in range(max(1, repeats)):
        c_start = time.process_time()
        t0 = time.perf_counter()
        result = _block(fn())
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c_start)
        if budget_s is not None and i + 1 >= min_repeats and sum(times) >= budget_s:
            break
    c1, f1 = compile_count(), host_fetch_count()
    return Timing(
        all=times,
        warmup=warm_times,
        cpu=cpu,
        compiles=None if c0 is None else c1 - c0,
        host_fetches=None if f0 is None else (f1 - f0) / len(times),
        result=result,
    )


def matmul_throughput(
    shape_a: tuple[int, int],
    shape_b: tuple[int, int],
    dtype=jnp.float32,
    *,
    repeats: int = 5,
    budget_s: float | None = 10.0,
    seed: int = 0,
) -> dict[str, Any]:
    """GFLOP/s of a jitted ``jnp.matmul`` of ``(M, K) @ (K, N)`` (``2MKN`` flops)."""
    (m, k), (k2, n) = shape_a, shape_b
    if k != k2:
        raise ValueError(f"inner dimensions differ: {shape_a} @ {shape_b}")
    rng = np.random.default_rng(seed)  # NumPy: jax.random compiles slowly on CPU
    a = jnp.asarray(rng.standard_normal(shape_a, np.float32).astype(np.dtype(dtype)))
    b = jnp.asarray(rng.standard_normal(shape_b, np.float32).astype(np.dtype(dtype)))
    f = jax.jit(jnp.matmul)
    t = time_call(lambda: f(a, b), warmup=1, repeats=repeats, budget_s=budget_s, min_repeats=3)
    flops = 2.0 * m * k * n
    return {
        "shape": [list(shape_a), list(shape_b)],
        "dtype": np.dtype(dtype).name,
        "flops": flops,
        **t.as_dict(),
        "gflops": flops / t.median / 1e9,
        "gflops_best": flops / min(t.all) / 1e9,
    }
