"""Integrity of a capture store: checksummed chunks, deep verification, one writer at a time.

* Every array the capture writes is encoded with ``zstd`` followed by zarr's ``crc32c``
  codec (``CHECKSUM_CODECS``), and every chunk is stored (``write_empty_chunks``), so
  a flipped bit, a truncated or garbage chunk, or a deleted chunk file can all be detected.
  zarr verifies the checksum on every read; ``verify_group`` reads every chunk of
  every array of a group and turns any failure into a ``StoreError``
  naming the array and the chunk.
* ``check_step_finite`` refuses a step holding NaN/Inf before it is committed.
* ``writer_lock`` is an exclusive lock (``fcntl.flock`` on ``.<run>.zarr.lock`` next to
  the store, holding the owner's pid): a second writer gets "in use by pid N"; a lock left
  by a killed process is stale (the kernel released it) and is taken over.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import NonFiniteError, StoreError

__all__ = ["CHECKSUM_CODECS", "verify_group", "check_step_finite", "writer_lock", "lock_path"]


def _codecs():
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return (ZstdCodec(level=0), Crc32cCodec())


#: The bytes codecs of every stored array: zstd, then a crc32c checksum of the compressed chunk.
CHECKSUM_CODECS = _codecs()


def _has_checksum(arr) -> bool:
    return any(type(c).__name__ == "Crc32cCodec" for c in getattr(arr.metadata, "codecs", ()))


def verify_group(
    path,
    where: str,
    *,
    read: bool = True,
    finite: bool = True,
    max_label: int | None = None,
    require_checksum: bool = True,
) -> int:
    """Check every array below the Zarr group at ``path``; return the number of chunks.

    Every chunk file must exist; with ``read`` each chunk is decoded (which verifies its
    crc32c checksum) and, with ``finite``, float chunks must hold no NaN/Inf. With
    ``max_label``, integer ``labels`` arrays must lie in ``[0, max_label)``. Without
    ``require_checksum``, arrays of older stores (no checksum, empty chunks not stored)
    are skipped instead of rejected.

    Raises:
        StoreError: naming the array and the chunk: missing chunk file, checksum mismatch,
            undecodable (truncated, garbage) chunk, NaN/Inf, out-of-range label, or an array
            written without a checksum.
    """
    import zarr

    root = Path(path)
    try:
        group = zarr.open_group(str(root), mode="r")
        arrays = [(name, a) for name, a in group.members(max_depth=None) if hasattr(a, "dtype")]
    except Exception as e:  # noqa: BLE001 - any failure means the group metadata is damaged
        raise StoreError(f"{where}: group cannot be opened ({type(e).__name__}: {e})") from e
    count = 0
    for name, arr in arrays:
        loc = f"{where}/{name}"
        if not _has_checksum(arr):
            if not require_checksum:
                continue
            raise StoreError(
                f"{loc}: array stored without a crc32c checksum (written by an older "
                "precond_lab?); its chunks cannot be verified. Capture again into a new store."
            )
        for idx in itertools.product(*(range(c) for c in arr.cdata_shape)):
            key = arr.metadata.encode_chunk_key(idx)
            if not (root / name / key).is_file():
                raise StoreError(f"{loc}: chunk {key} ({idx}) is missing")
            count += 1
            if not read:
                continue
            try:
                block = np.asarray(arr.get_block_selection(idx) if idx else arr[...])
            except Exception as e:  # noqa: BLE001 - codec errors come as many classes
                raise StoreError(
                    f"{loc}: chunk {key} ({idx}) is corrupt ({type(e).__name__}: {e})"
                ) from e
            if finite and block.dtype.kind == "f" and not np.isfinite(block).all():
                raise StoreError(f"{loc}: chunk {key} ({idx}) holds NaN or Inf")
            if (
                max_label is not None
                and name.rsplit("/", 1)[-1] == "labels"
                and block.dtype.kind in "iu"
                and block.size
                and (block.min() < 0 or block.max() >= max_label)
            ):
                raise StoreError(
                    f"{loc}: chunk {key} holds labels outside [0, {max_label}) "
                    f"(min {block.min()}, max {block.max()})"
                )
    return count


def check_step_finite(tree: xr.DataTree, step: int) -> None:
    """Raise ``NonFiniteError`` if any float variable of a step's tree holds NaN/Inf.

    The message names the step, the group (layer, ``checkpoint`` or the step root) and the
    quantity, and the first offending index along the leading dim.
    """
    for node in tree.subtree:
        for name, var in node.dataset.variables.items():
            vals = np.asarray(var.values)
            if vals.dtype.kind != "f" or np.isfinite(vals).all():
                continue
            bad = ~np.isfinite(vals.reshape(vals.shape[0], -1)).all(1) if vals.ndim else [True]
            first = int(np.flatnonzero(bad)[0])
            group = node.path.strip("/")
            layer = next(
                (a.attrs["param_path"] for a in node.parents if "param_path" in a.attrs), None
            )
            if "param_path" in node.attrs:
                where = f"layer {group!r}"
            elif layer is not None:
                where = f"layer {layer!r} (group {group!r})"
            else:
                where = f"group {group!r}" if group else "the step's own data"
            lead = f" at {var.dims[0]} index {first}" if var.dims else ""
            raise NonFiniteError(
                f"step {step}, {where}: quantity {name!r} holds NaN or Inf{lead}; the step was "
                "not stored (earlier steps stay and a rerun resumes). Check the inputs, or lower "
                "the learning rate if training diverged."
            )
    for k, v in tree.attrs.items():
        if isinstance(v, float) and not np.isfinite(v):
            raise NonFiniteError(f"step {step}: attribute {k!r} is {v}; the step was not stored")


def lock_path(path) -> Path:
    """The lock file of the store at ``path``: ``.<name>.lock`` in the same directory."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def writer_lock(path):
    """Hold the exclusive writer lock of the store at ``path`` for the ``with`` block.

    Raises:
        StoreError: another live process holds it ("in use by pid N"), or the directory
            cannot be written (read-only, missing permissions).
    """
    import fcntl

    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise StoreError(
                    f"{path} is in use by pid {owner} (another capture is writing it; lock "
                    f"{lock}). Wait for it to finish or write to another path."
                ) from None
            try:  # the file we locked may have been removed by a releasing owner: retry
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    except OSError as e:
        raise StoreError(f"cannot write the store at {path}: {e.strerror or e} ({lock})") from e
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
