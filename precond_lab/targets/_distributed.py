"""The samples axis over all devices of all processes (JAX's multi-controller runtime).

Each process calls ``jax.distributed.initialize(...)`` and passes *its share* of the
samples; ``global_samples`` pads every share to one bucketed length and assembles
global arrays sharded along the samples over ``jax.devices()`` (every device of every
process). Jitted passes over them reduce across processes (XLA inserts the
all-reduce); ``to_host`` brings a result back as a host array on every process, so
everything downstream (estimators, metrics, SciPy) stays process-local and identical.
On CPU the collectives need ``jax.config.update("jax_cpu_collectives_implementation",
"gloo")`` before ``initialize``.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from ._base import bucket

__all__ = ["global_samples", "to_host", "allgather_counts"]


def allgather_counts(count: int) -> np.ndarray:
    """Every process's ``count`` (``(process_count,)``), in process order."""
    return np.asarray(multihost_utils.process_allgather(np.asarray([count]))).reshape(-1)


def _sharding():
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("sample",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("sample"))


def global_samples(arrays, count: int):
    """Pad this process's ``arrays`` (equal leading length ``count``) with zeros to a
    common length and assemble global arrays sharded along the first axis.

    Returns:
        ``(global_arrays, offsets)``: the global arrays, and each process's first global
        index (the padding of a share follows it).
    """
    counts = allgather_counts(count)
    local_devices = jax.local_device_count()
    length = bucket(int(counts.max()))
    length = -(-length // local_devices) * local_devices
    sharding = _sharding()
    out = []
    for x in arrays:
        padded = np.zeros((length, *x.shape[1:]), x.dtype)
        padded[:count] = x
        out.append(jax.make_array_from_process_local_data(sharding, padded))
    return out, np.arange(len(counts)) * length


def to_host(tree):
    """Every leaf as a host NumPy array with its global value, on every process."""
    return jax.tree_util.tree_map(
        lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree
    )
