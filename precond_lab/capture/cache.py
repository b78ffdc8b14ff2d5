"""Compiled capture pieces kept across calls: one bounded LRU keyed on their configuration.

Every ``capture()`` builds jitted functions (the per-example capture function, the training
step, the evaluation) and, for a user's ``apply_fn``, a ``Model`` from its traced jaxpr.
A new ``jax.jit`` object retraces and recompiles even when an identical one ran a moment
ago, so these pieces are looked up here by a hashable key describing everything their code
depends on: the model's functions (by identity), the parameter tree's structure, shapes and
dtypes (``param_signature``), the layers, targets, Monte-Carlo samples, matricization, and
the optimizer. A second call with the same configuration reuses them, and because
``jax.jit`` caches executables per input shape, a call whose chunks have the same shape
compiles nothing.

Functions are keyed by identity and kept alive by the cache (so an id is never reused by
another object); a value that cannot be hashed disables caching for that call. The cache
holds at most ``MAX_ENTRIES`` pieces, least recently used first out; ``clear()`` empties it.

Across processes, ``enable_persistent_cache`` (called when this module is first imported,
which every capture path does) turns on JAX's persistent compilation cache, so a new
process's first capture loads its XLA executables from disk instead of compiling them
(tracing remains).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np

__all__ = [
    "MAX_ENTRIES",
    "cached",
    "clear",
    "enable_persistent_cache",
    "param_signature",
    "row_axes_key",
    "size",
]

MAX_ENTRIES = 64

T = TypeVar("T")
_CACHE: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()


def cached(key: Hashable, build: Callable[[], T]) -> T:
    """The cached value of ``key``, built by ``build()`` (and stored) on a miss.

    Args:
        key: a hashable description of everything ``build``'s result depends on; an
            unhashable key (a list, an unhashable callable) builds without caching.
        build: makes the value; its exceptions propagate and nothing is stored.
    """
    try:
        hit = _CACHE.get(key)
    except TypeError:  # unhashable: no caching for this configuration
        return build()
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    value = build()
    _CACHE[key] = value
    while len(_CACHE) > MAX_ENTRIES:
        _CACHE.popitem(last=False)
    return value


def clear() -> None:
    """Forget every cached piece (the next capture traces and compiles again)."""
    _CACHE.clear()


def size() -> int:
    """How many pieces are cached."""
    return len(_CACHE)


def param_signature(params) -> tuple:
    """The tree structure and each leaf's shape and dtype: what traced code depends on."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    return tree, tuple((tuple(np.shape(x)), str(_dtype(x))) for x in leaves)


def _dtype(x):
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def row_axes_key(row_axes: Mapping[str, tuple[int, ...]] | None, paths=None) -> tuple:
    """``row_axes`` (restricted to ``paths`` when given) as a sorted, hashable tuple."""
    items = (row_axes or {}).items()
    return tuple(
        sorted((p, tuple(int(a) for a in ax)) for p, ax in items if paths is None or p in paths)
    )


def enable_persistent_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache (XLA executables kept on disk).

    Every compilation is cached, however short (a capture's cold cost is many small
    kernels). Nothing changes when the user configured a cache already
    (``jax_compilation_cache_dir`` or ``JAX_COMPILATION_CACHE_DIR``) or set
    ``PRECOND_LAB_JAX_CACHE=off``. JAX reads the setting at its first compilation, so it
    takes effect in a process that had compiled nothing before.

    Args:
        path: the cache folder (default ``PRECOND_LAB_JAX_CACHE``, else
            ``$XDG_CACHE_HOME/precond_lab/jax`` or ``~/.cache/precond_lab/jax``).

    Returns:
        The folder in use, or None when left to the user's setting or turned off.
    """
    env = os.environ.get("PRECOND_LAB_JAX_CACHE", "")
    if env.lower() in ("off", "0", "false", "no"):
        return None
    if jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        path = env or os.path.join(base, "precond_lab", "jax")
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: no persistent cache, nothing else changes
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


enable_persistent_cache()  # a new process's first capture loads its executables from disk
