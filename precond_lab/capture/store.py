"""The capture store: an ``xarray.DataTree`` in Zarr, written atomically one step at a time.

Schema (``schema = "precond_lab.capture"``, ``schema_version = "2"``)::

    <run>.zarr/                         root group, attributes only (strings/ints/floats):
                                        schema, schema_version, model, model_config (JSON),
                                        dataset, dataset_description, loss, output_dim,
                                        seed, optimizer, learning_rate, batch_size,
                                        num_samples, mc_samples, batch_sizes ("8,32"),
                                        targets ("gradients,ggn,..."), layers ("a/w,b/w"),
                                        layer_shapes ("32x64,10x32": m x n per layer),
                                        dtype, storage (auto | dense | factored),
                                        config_json, created_utc, device,
                                        python_version, jax_version, jaxlib_version,
                                        numpy_version, xarray_version, zarr_version,
                                        optax_version, precond_lab_version
      step_000050/                      one group per captured step; attributes: step,
                                        loss, accuracy, train_loss, test_loss,
                                        test_accuracy (NaN-free: -1 when undefined),
                                        complete = 1 (written last)
        loss        (sample)            per-example loss ℓ_i at this step's parameters
        outputs     (sample, output)    logits / predictions
        labels      (sample[, output])  the real labels
        sample      (sample)            coordinate: training-set index of each example
        checkpoint/                     p0000… (parameter leaves, attr param_paths),
                                        o0000… (optimizer-state leaves): resume state
        <layer path, e.g. layers/0/w>/  one (nested) group per captured parameter;
                                        attrs: param_path, param_shape, row_axes, rows,
                                        cols, and storage_<kind> = "dense" | "factored"
                                        for each captured per-example kind (gradients,
                                        ggn, ggn_mc): factored kinds have no dense array,
                                        only kfac_activations and their kfac_backprops*
                                        (G = Σ_t δ_t a_tᵀ; see ``.storage``)
          param               (row, col)             the matricized parameter
          gradients           (sample, row, col)     per-example gradients G_i = ∇ℓ_i
          ggn                 (sample, class, row, col)
                                        exact GGN pseudo-gradients b_{i,c} = J_iᵀ Λ_i^{1/2} e_c:
                                        (1/N) Σ_{i,c} vec(b)vec(b)ᵀ = the GGN block
          ggn_mc              (sample, mc, row, col)
                                        sampled-label gradients PRE-DIVIDED BY √k:
                                        (1/N) Σ_{i,j} vec(b)vec(b)ᵀ = the MC Fisher estimate
          kfac_activations    (sample, [position,] in)
          kfac_backprops      (sample, [position,] out)           real labels
          kfac_backprops_ggn  (sample, class, [position,] out)    Λ^{1/2} columns
          kfac_backprops_mc   (sample, mc, [position,] out)       sampled labels / √k
          batch_size_<B>/     gradients (batch, row, col): mini-batch mean gradients
                              over consecutive groups of B captured examples, with a
                              `weight` coordinate B/num_batches, so that
                              SampleTarget(as_samples(da)) = mean_j B ḡ_j ḡ_jᵀ
          trajectory/         gradients (train_step, row, col): the training mini-batch
                              gradients of the steps since the previous captured step
                              (this one included; coordinate train_step), weight = 1,
                              so SampleTarget(as_samples(da)) = Σ_s g_s g_sᵀ (Adagrad)

Version 2 added factored storage (``storage``, ``storage_<kind>``); version-1 stores
(every per-example kind dense) still open and validate, but cannot be extended. Read a
per-example kind in either form with ``precond_lab.schema.layer_samples`` (a lazily
rebuilt dense array for a factored kind) or ``precond_lab.capture.layer_target`` (the
factored target itself). Each DataArray above with dims ``(sample, …, row, col)`` feeds
``precond_lab.targets.SampleTarget`` directly (lazily, chunk by chunk); the batch and
trajectory arrays use their own leading dim (a DataTree child must align with its
parent's ``sample``), renamed by ``as_samples``. Arrays are chunked
along ``sample``; every chunk of every array is stored (also all-zero ones) and carries a
crc32c checksum (see ``.integrity``), so corruption and deleted chunks are detected,
and a step holding NaN/Inf is refused before it is written. One process writes at a time
(``writer_lock``). A step is written into a sibling temporary directory
(``.<run>.zarr.step_000050.tmp-*``) and renamed into place, so a crash never leaves a
step that reads as whole; steps without ``complete = 1`` are treated as absent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import StoreError
from ..schema import (
    CHECKPOINT,
    KFAC_ACTIVATIONS,
    KFAC_BACKPROPS,
    SAMPLE_KINDS,
    STEP_VARIABLES,
    STORAGE_DENSE,
    STORAGE_FACTORED,
    TRAJECTORY_GROUP,
    VARIABLE_DIMS,
    WEIGHT,
    CaptureTarget,
    CaptureTree,
    Dim,
    Kind,
    as_samples,
    batch_group,
    is_step_name,
    step_name,
    step_of,
    storage_attr,
)
from .integrity import CHECKSUM_CODECS, check_step_finite, verify_group, writer_lock

__all__ = [
    "SCHEMA",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "StoreError",
    "init_store",
    "check_config",
    "write_step",
    "completed_steps",
    "read_checkpoint",
    "open_capture",
    "validate_store",
    "writer_lock",
    "step_name",
    "as_samples",
]

SCHEMA = __doc__
SCHEMA_NAME = "precond_lab.capture"
SCHEMA_VERSION = "2"
#: Versions ``open_capture`` and ``validate_store`` read (1: every per-example kind dense).
READABLE_VERSIONS = ("1", "2")
REQUIRED_ROOT_ATTRS = (
    "schema",
    "schema_version",
    "model",
    "dataset",
    "loss",
    "output_dim",
    "seed",
    "optimizer",
    "learning_rate",
    "batch_size",
    "num_samples",
    "mc_samples",
    "batch_sizes",
    "targets",
    "layers",
    "layer_shapes",
    "dtype",
    "config_json",
)
_TARGET_VARS = {t.value: t.store_variables for t in CaptureTarget if t.store_variables}
_DIMS = VARIABLE_DIMS
_KIND_NAMES = tuple(k.value for k in SAMPLE_KINDS)


def _root_attrs(path: Path) -> dict:
    import zarr

    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as e:  # noqa: BLE001 - any failure means "not a Zarr group"
        raise StoreError(f"{path} is not a readable Zarr group ({type(e).__name__}: {e})") from e


def _check_root(path: Path, *, write: bool = False) -> dict:
    if not path.exists():
        raise StoreError(f"no capture store at {path}")
    attrs = _root_attrs(path)
    if attrs.get("schema") != SCHEMA_NAME:
        raise StoreError(
            f"{path} is not a precond_lab capture store (root attribute schema = "
            f"{attrs.get('schema')!r}, expected {SCHEMA_NAME!r})"
        )
    version = str(attrs.get("schema_version"))
    if version not in READABLE_VERSIONS:
        raise StoreError(
            f"{path} has schema_version {attrs.get('schema_version')!r}; this version of "
            f"precond_lab reads {', '.join(map(repr, READABLE_VERSIONS))}"
        )
    if write and version != SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema_version {version!r} (written before factored storage): it "
            f"opens and validates, but this version of precond_lab writes only "
            f"{SCHEMA_VERSION!r} stores. Capture into a new store."
        )
    missing = [a for a in REQUIRED_ROOT_ATTRS if a not in attrs]
    if missing:
        raise StoreError(f"{path}: root attributes missing: {', '.join(missing)}")
    return attrs


def init_store(path, attrs: dict) -> None:
    """Create the root group, or check that an existing store has the same configuration.

    Removes temporary step directories left by a crashed writer, so the caller must hold
    the ``writer_lock``.

    Raises:
        StoreError: ``path`` holds something else, or a store written with a different
            ``config_json`` (model, data, seed, optimizer, targets, …).
    """
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.step_*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if path.exists():
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        else:
            check_config(path, attrs)
            return
    xr.DataTree(dataset=xr.Dataset(attrs=attrs)).to_zarr(path, mode="w-", consolidated=False)


def check_config(path, attrs: dict) -> None:
    """Check (read-only) that the store at ``path`` was written with ``attrs['config_json']``.

    Raises:
        StoreError: not a capture store, or a different configuration (the differences named).
    """
    old = _check_root(Path(path), write=True)
    if old["config_json"] != attrs["config_json"]:
        a, b = json.loads(old["config_json"]), json.loads(attrs["config_json"])
        diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
        raise StoreError(
            f"{path} was written with a different configuration; differences "
            f"(stored, requested): {diff}. Use another path or delete it."
        )


def _encoding(tree: xr.DataTree, chunk_bytes: int) -> dict:
    enc = {}
    for node in tree.subtree:
        ds = node.to_dataset(inherit=False)  # the variables this node itself writes
        group = {}
        for name, var in ds.variables.items():
            group[name] = {"compressors": CHECKSUM_CODECS}
            if name in ds.data_vars and var.dims and var.dims[0] == "sample":
                per = max(1, var.dtype.itemsize * math.prod(var.shape[1:]))
                c = max(1, min(var.shape[0], chunk_bytes // per))
                group[name]["chunks"] = (c, *var.shape[1:])
        if group:
            enc[node.path] = group
    return enc


def write_step(path, step: int, tree: xr.DataTree, chunk_bytes: int = 1 << 24) -> None:
    """Write one step's tree atomically (temporary sibling directory, then rename).

    Every array is checksummed and every chunk stored. The caller holds the
    ``writer_lock``.

    Raises:
        NonFiniteError: the tree holds NaN/Inf (nothing is written).
    """
    import zarr

    check_step_finite(tree, step)
    path = Path(path)
    final = path / step_name(step)
    tmp = path.parent / f".{path.name}.{step_name(step)}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tree.to_zarr(
            tmp,
            mode="w-",
            consolidated=False,
            encoding=_encoding(tree, chunk_bytes),
            write_empty_chunks=True,
        )
        zarr.open_group(str(tmp), mode="r+").attrs["complete"] = 1  # the marker, last
        if final.exists():
            shutil.rmtree(final)  # an incomplete leftover (complete steps are skipped)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _step_dirs(path: Path) -> dict[int, Path]:
    steps = {}
    for entry in path.iterdir():
        if is_step_name(entry.name) and entry.is_dir():
            steps[step_of(entry.name)] = entry
    return dict(sorted(steps.items()))


def _is_complete(step_dir: Path) -> bool:
    try:
        return int(_root_attrs(step_dir).get("complete", 0)) == 1
    except StoreError:
        return False


def completed_steps(path) -> list[int]:
    """Steps whose group carries the completion marker."""
    path = Path(path)
    if not path.exists():
        return []
    return [s for s, d in _step_dirs(path).items() if _is_complete(d)]


def read_checkpoint(path, step: int) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """``(param paths, parameter leaves, optimizer-state leaves)`` saved with ``step``.

    Every chunk is read and verified first (checksum, presence, finiteness).

    Raises:
        StoreError: the checkpoint is damaged (naming the array and chunk).
    """
    where = f"{path}/{step_name(step)}/{CHECKPOINT}"
    verify_group(Path(path) / step_name(step) / CHECKPOINT, where, require_checksum=False)
    try:
        ds = xr.open_dataset(
            Path(path) / step_name(step), group=CHECKPOINT, engine="zarr", consolidated=False
        ).load()
    except Exception as e:  # noqa: BLE001 - codec/metadata failures of many classes
        raise StoreError(f"{where}: cannot be read ({type(e).__name__}: {e})") from e
    paths = ds.attrs["param_paths"].split(",") if ds.attrs["param_paths"] else []
    params = [ds[f"p{i:04d}"].values for i in range(len(paths))]
    opt = [ds[f"o{i:04d}"].values for i in range(int(ds.attrs["num_opt_leaves"]))]
    return paths, params, opt


def _open_step(path: Path, name: str) -> xr.DataTree:
    return xr.open_datatree(path, engine="zarr", group=name, consolidated=False, chunks=None)


def open_capture(path, *, load: bool = False, steps=None) -> xr.DataTree:
    """Open a capture store lazily (no data read until used), or in memory with ``load``.

    Incomplete steps (no completion marker) are skipped with a warning. Every chunk file
    of the opened steps must exist; checksums are verified by zarr on each read (a
    mismatch raises there; ``validate_store`` names the damaged chunk).

    Args:
        path: the ``.zarr`` directory.
        load: read everything into memory.
        steps: only these steps (default: all complete ones).

    Raises:
        StoreError: not a capture store, wrong schema version, or a requested step absent.
    """
    path = Path(path)
    attrs = _check_root(path)
    dirs = _step_dirs(path)
    complete = [s for s, d in dirs.items() if _is_complete(d)]
    skipped = sorted(set(dirs) - set(complete))
    if skipped:
        warnings.warn(f"{path}: skipping incomplete step(s) {skipped}", stacklevel=2)
    if steps is not None:
        absent = sorted(set(int(s) for s in steps) - set(complete))
        if absent:
            raise StoreError(f"{path}: step(s) {absent} not captured; available: {complete}")
        complete = sorted(int(s) for s in steps)
    tree = xr.DataTree(dataset=xr.Dataset(attrs=attrs))
    for s in complete:
        where = f"{path}/{step_name(s)}"
        verify_group(path / step_name(s), where, read=False, require_checksum=False)
        try:
            tree[step_name(s)] = _open_step(path, step_name(s))
        except Exception as e:  # noqa: BLE001
            raise StoreError(f"{where}: cannot be opened ({type(e).__name__}: {e})") from e
    tree = CaptureTree.of(tree)  # node["gradients"] also for a kind stored as factors
    if not load:
        return tree
    try:
        return CaptureTree.of(tree.load())
    except Exception as e:  # noqa: BLE001
        raise StoreError(
            f"{path}: reading failed ({type(e).__name__}: {e}); validate_store(path) names the "
            "damaged chunk"
        ) from e


def _fail(where: str, msg: str):
    raise StoreError(f"{where}: {msg}")


def validate_store(path, *, deep: bool = True, check_values: bool | None = None) -> list[int]:
    """Check a capture store against ``SCHEMA``; return its complete steps.

    Every array of every step is checked (gradients, GGN and K-FAC arrays, checkpoint
    parameters and optimizer state, losses, outputs, labels, sample indices): it must
    carry a crc32c checksum and all its chunk files must exist. With ``deep`` (default)
    every chunk is also read, which verifies its checksum, and checked for NaN/Inf;
    cross-entropy labels must lie in ``[0, output_dim)``.

    Args:
        path: the ``.zarr`` directory.
        deep: read and verify every chunk (else only metadata and chunk presence).
        check_values: the former name of ``deep`` (overrides it when given).

    Raises:
        StoreError: naming the first problem: not a capture store, wrong schema version,
            missing root attributes, stray entries, a step without the completion
            marker, missing groups or variables (a factored kind without its factors),
            wrong dims or sizes (factors that do not match the layer), a missing, corrupt
            or unchecksummed chunk (array and chunk named), NaN/Inf values.
    """
    if check_values is not None:
        deep = check_values
    path = Path(path)
    attrs = _check_root(path)
    max_label = int(attrs["output_dim"]) if attrs["loss"] == "cross_entropy" else None
    layers = [x for x in attrs["layers"].split(",") if x]
    targets = [x for x in attrs["targets"].split(",") if x]
    shape_list = [tuple(int(v) for v in s.split("x")) for s in attrs["layer_shapes"].split(",")]
    if len(shape_list) != len(layers) or any(len(s) != 2 for s in shape_list):
        raise StoreError(f"{path}: root attribute layer_shapes does not match layers")
    shapes = dict(zip(layers, shape_list, strict=True))
    sizes = {
        "sample": int(attrs["num_samples"]),
        "class": int(attrs["output_dim"]),
        "mc": int(attrs["mc_samples"]),
    }
    for entry in path.iterdir():
        if entry.name not in ("zarr.json", ".zgroup", ".zattrs") and not is_step_name(entry.name):
            _fail(str(path), f"unexpected entry {entry.name!r} (not a step group)")
    steps = []
    for s, d in _step_dirs(path).items():
        where = f"{path}/{d.name}"
        if not _is_complete(d):
            _fail(where, "incomplete step (no completion marker complete = 1)")
        verify_group(d, where, read=deep, max_label=max_label)
        try:
            tree = _open_step(path, d.name)
        except Exception as e:  # noqa: BLE001
            _fail(where, f"cannot be opened ({type(e).__name__}: {e})")
        if int(tree.attrs.get("step", -1)) != s:
            _fail(where, f"attribute step = {tree.attrs.get('step')!r} does not match the group")
        for var in STEP_VARIABLES:
            if var not in tree.dataset:
                _fail(where, f"missing variable {var!r}")
        if CHECKPOINT not in tree.children:
            _fail(where, "missing group 'checkpoint'")
        for layer in layers:
            _check_layer(tree, layer, targets, shapes[layer], sizes, where, attrs)
        steps.append(s)
    return steps


def _check_factors(ds, kind, shape, lw):
    """The factors of a factored kind: ``out = m``, ``in = n``, the same positions."""
    acts, bp = ds[KFAC_ACTIVATIONS], ds[KFAC_BACKPROPS[Kind(kind)]]
    for da, dim, size in ((bp, Dim.OUT.value, shape[0]), (acts, Dim.IN.value, shape[1])):
        if da.sizes[dim] != size:
            _fail(
                lw,
                f"{kind} is stored factored but {da.name!r} has {dim} = "
                f"{da.sizes[dim]}; expected {size} (the layer is {shape[0]}x{shape[1]})",
            )
    pos = Dim.POSITION.value
    if acts.sizes.get(pos) != bp.sizes.get(pos):
        _fail(
            lw,
            f"{kind} is stored factored but {KFAC_ACTIVATIONS!r} has {pos} = "
            f"{acts.sizes.get(pos)} and {bp.name!r} has {bp.sizes.get(pos)}",
        )


def _check_layer(tree, layer, targets, shape, sizes, where, attrs):
    lw = f"{where}/{layer}"
    version = str(attrs["schema_version"])
    try:
        node = tree[layer]
    except KeyError:
        _fail(lw, "missing layer group")
    ds = node.dataset
    want, factored = ["param"], []
    for t in targets:
        for v in _TARGET_VARS.get(t, ()):
            if v not in _KIND_NAMES:
                want.append(v)
                continue
            form = node.attrs.get(storage_attr(v), STORAGE_DENSE if version == "1" else None)
            if form == STORAGE_DENSE:
                want.append(v)
            elif form == STORAGE_FACTORED:
                want += [KFAC_ACTIVATIONS, KFAC_BACKPROPS[Kind(v)]]
                factored.append(v)
            else:
                _fail(lw, f"attribute {storage_attr(v)} = {form!r}; expected 'dense' or 'factored'")
    expect = {"row": shape[0], "col": shape[1], **sizes}
    for var in dict.fromkeys(want):
        if var not in ds:
            _fail(lw, f"missing variable {var!r}")
        da = ds[var]
        if da.dims not in _DIMS[var]:
            _fail(lw, f"variable {var!r} has dims {da.dims}; expected one of {_DIMS[var]}")
        for dim, size in da.sizes.items():
            if dim in expect and size != expect[dim]:
                _fail(lw, f"variable {var!r} has {dim} = {size}; expected {expect[dim]}")
    for kind in factored:
        _check_factors(ds, kind, shape, lw)
    children = []
    if "batch" in targets:
        children += [batch_group(int(b)) for b in attrs["batch_sizes"].split(",") if b]
    if "trajectory" in targets:
        children.append(TRAJECTORY_GROUP)
    for child in children:
        if child not in node.children:
            _fail(lw, f"missing group {child!r}")
        lead = Dim.TRAIN_STEP.value if child == TRAJECTORY_GROUP else Dim.BATCH.value
        da = node[child].dataset.get("gradients")
        if da is None or da.dims != (lead, "row", "col") or WEIGHT not in da.coords:
            _fail(f"{lw}/{child}", f"needs gradients ({lead}, row, col) with a weight coordinate")
