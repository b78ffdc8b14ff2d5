"""Bring gradients and curvature from other tools: PyTorch, BackPACK, curvlinops, NumPy, xarray.

Everything here returns what ``SampleTarget`` and
``DenseTarget`` take: ``(N, m, n)`` per-example matrices (rows =
the parameter's output side, row-major vec) or an ``(mn, mn)`` block with its ``(m, n)``.
PyTorch weights are ``(out, in)`` and conv kernels ``(out, in, kh, kw)``, so a per-example
gradient ``(N, out, in, kh, kw)`` becomes ``(N, out, in·kh·kw)`` and a bias ``(N, out)``
becomes ``(N, out, 1)``; the flattening order is PyTorch's own, so a curvlinops block of
one parameter needs no permutation. Half-precision inputs (common with AMP) raise
``UnsupportedDtypeError`` instead of giving wrong numbers.

Example (a PyTorch user's saved per-example gradients)::

    from precond_lab import interop, estimators as est, metrics as met
    g = interop.from_torch("grads.pt")["fc1.weight"]      # (N, out, in)
    t = interop.sample_target(g)
    print(met.score(t.damped(1e-3), est.frobenius_optimal(t)))

    from precond_lab.evaluate import evaluate
    evaluate(interop.from_torch("grads.pt"))  # one layer per parameter, kind "gradients"

``from_torch`` and ``from_backpack`` return a ``ParameterGradients`` (a dict
``{parameter name: (N, m, n)}``) that the evaluation sweep reads as
``{layer: {"gradients": samples}}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from ._validation import check_float_dtype
from .errors import FileFormatError, UnsupportedDtypeError
from .schema import Dim
from .targets import DenseTarget, SampleTarget

__all__ = [
    "ParameterGradients",
    "as_matrices",
    "from_flat",
    "from_torch",
    "from_backpack",
    "from_curvlinops",
    "from_npy",
    "from_xarray",
    "sample_target",
]


class ParameterGradients(dict):
    """``{parameter name: (N, m, n) per-example gradients}`` (from ``from_torch``,
    ``from_backpack``): a plain dict that the sweep reads as one layer per parameter,
    ``{name: {"gradients": samples}}`` (a flat dict is otherwise ``{kind: samples}``)."""

    def as_layers(self) -> dict:
        """``{name: {"gradients": samples}}``, the nested form of ``evaluate``."""
        return {name: {"gradients": g} for name, g in self.items()}


def _unreadable(path, err: BaseException, what: str) -> FileFormatError:
    size = Path(path).stat().st_size if Path(path).exists() else None
    empty = " (the file is empty)" if size == 0 else ""
    return FileFormatError(
        f"{path}: cannot be read as {what}{empty}: {type(err).__name__}: {err}. The file is "
        "truncated, empty or of another format: save it again."
    )


def _numpy(x, what: str) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        if str(x.dtype) in ("torch.float16", "torch.bfloat16"):
            raise UnsupportedDtypeError(
                f"{what} has dtype {str(x.dtype)[6:]} (half precision, e.g. saved under AMP); "
                f"targets need float32 or float64: upcast with .float() or .double() first"
            )
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    check_float_dtype(a.dtype, what)
    return a


def as_matrices(g, what: str = "gradients") -> np.ndarray:
    """``(N, m, n)`` from per-example gradients in PyTorch layout ``(N, out, *rest)``.

    ``(N, out)`` (a bias) → ``(N, out, 1)``; ``(N, out, in)`` unchanged; ``(N, out, in,
    kh, …)`` → ``(N, out, in·kh·…)``.

    Raises:
        ValueError: fewer than two dims (no sample axis and parameter).
        UnsupportedDtypeError: half precision.
    """
    a = _numpy(g, what)
    if a.ndim < 2:
        raise ValueError(f"{what} need a sample axis and a parameter axis; got shape {a.shape}")
    if 0 in a.shape:
        raise ValueError(f"{what} are empty (shape {a.shape}): at least one sample is needed")
    if a.ndim == 2:
        return a[:, :, None]
    return a.reshape(a.shape[0], a.shape[1], -1)


def _matrix_shape(shape) -> tuple[int, int]:
    """``shape`` as ``(m, n)``: two positive integers."""
    ok = isinstance(shape, Sequence) and not isinstance(shape, (str, bytes)) and len(shape) == 2
    ok = ok and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in shape
    )
    if not ok:
        raise ValueError(
            f"shape must be the matrix shape (m, n): two positive integers (rows = the "
            f"parameter's output side); got {shape!r}"
        )
    return int(shape[0]), int(shape[1])


def from_flat(g, shape: Sequence[int], what: str = "gradients") -> np.ndarray:
    """``(N, mn)`` flattened gradients (row-major) → ``(N, m, n)`` with an explicit ``shape``.

    Raises:
        ValueError: ``shape`` is not two positive integers, or does not give ``mn`` columns.
    """
    a = _numpy(g, what)
    m, n = _matrix_shape(shape)
    if a.ndim != 2 or a.shape[1] != m * n:
        raise ValueError(
            f"{what} of shape {a.shape} cannot be (N, m·n) for shape {(m, n)}: need {m * n} columns"
        )
    return a.reshape(a.shape[0], m, n)


def from_torch(obj, *, key: str | None = None):
    """Per-example gradients from a torch tensor, a dict of tensors or a ``.pt`` file.

    Args:
        obj: a tensor ``(N, out, *rest)``, a mapping ``{name: tensor}``, or a path to a
            ``.pt`` file holding either (loaded with ``weights_only=True``).
        key: pick one entry of a mapping.

    Returns:
        ``(N, m, n)`` (see ``as_matrices``), or ``{name: (N, m, n)}`` for a mapping
        without ``key``.

    Raises:
        KeyError: ``key`` not in the mapping.
        ValueError: an empty mapping.
        FileFormatError: the file does not exist, is empty, truncated or not a torch file.
        UnsupportedDtypeError: half precision.
    """
    if isinstance(obj, (str, Path)):
        import pickle
        import struct
        import zipfile

        import torch

        if not Path(obj).is_file():
            raise FileFormatError(f"{obj}: no such file")
        try:
            obj_path, obj = obj, torch.load(str(obj), map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError,
                zipfile.BadZipFile, struct.error, KeyError, AttributeError) as err:  # fmt: skip
            # garbage of another format fails inside torch's unpickler in many ways
            raise _unreadable(obj, err, "a torch file (torch.save)") from err
        if not (isinstance(obj, Mapping) or type(obj).__module__.startswith("torch")):
            raise FileFormatError(
                f"{obj_path}: holds a {type(obj).__name__}, not a tensor or a dict "
                "{name: tensor} of per-example gradients"
            )
    if isinstance(obj, Mapping):
        if not obj:
            raise ValueError(
                "the mapping of gradients is empty: save {parameter name: per-example "
                "gradients} (e.g. torch.save({'fc1.weight': g}, 'grads.pt'))"
            )
        if key is not None:
            if key not in obj:
                raise KeyError(f"{key!r} not in the gradients; keys: {', '.join(map(str, obj))}")
            return as_matrices(obj[key], f"gradients {key!r}")
        return ParameterGradients(
            {str(k): as_matrices(v, f"gradients {k!r}") for k, v in obj.items()}
        )
    return as_matrices(obj)


def from_backpack(named_parameters: Iterable, *, reduction: str = "mean") -> dict:
    """``{name: (N, m, n)}`` from BackPACK's ``BatchGrad`` (``param.grad_batch``).

    BackPACK stores the per-example gradients of the *batch* loss: with
    ``reduction="mean"`` each ``grad_batch[i]`` is ``g_i / N``, so it is multiplied by
    ``N`` here (pass ``reduction="sum"`` when the loss summed over the batch).

    Args:
        named_parameters: ``module.named_parameters()`` after ``backward()`` inside
            ``with backpack(BatchGrad()):``.
        reduction: the loss's reduction, ``"mean"`` or ``"sum"``.

    Raises:
        ValueError: a parameter without ``grad_batch``, no parameter, or an unknown
            ``reduction``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
    out = ParameterGradients()
    for name, p in named_parameters:
        gb = getattr(p, "grad_batch", None)
        if gb is None:
            raise ValueError(
                f"parameter {name!r} has no grad_batch: run backward() inside "
                f"`with backpack(BatchGrad()):` (or skip parameters that need no gradient)"
            )
        g = as_matrices(gb, f"grad_batch of {name!r}")
        out[name] = g * g.shape[0] if reduction == "mean" else g
    if not out:
        raise ValueError(
            "named_parameters yielded no parameter: pass module.named_parameters() (a "
            "generator is used up after one pass: call it again)"
        )
    return out


#: Bytes of one block of unit columns (and of its product) in ``from_curvlinops``.
_OPERATOR_BLOCK_BYTES = 1 << 27


def _operator_block(op, offset: int, size: int) -> np.ndarray:
    """Rows and columns ``offset:offset+size`` of a linear operator, by block products
    ``op @ E`` with many unit columns at once (a torch tensor for a curvlinops operator,
    a NumPy array for anything else with ``@``)."""
    total = int(op.shape[1])
    torch_op = type(op).__module__.startswith("curvlinops") or hasattr(op, "_matmat")
    if torch_op:
        import torch

        dtype = getattr(op, "dtype", torch.float64)
        device = getattr(op, "device", "cpu")
        itemsize = torch.empty((), dtype=dtype).element_size()
    else:
        itemsize = 8
    width = max(1, min(size, _OPERATOR_BLOCK_BYTES // (2 * total * itemsize)))
    out = np.empty((size, size), np.float64)
    for j in range(0, size, width):
        k = min(width, size - j)
        if torch_op:
            e = torch.zeros((total, k), dtype=dtype, device=device)
            e[offset + j + torch.arange(k), torch.arange(k)] = 1
            with torch.no_grad():
                y = op @ e
            y = y.detach().cpu().double().numpy()
        else:
            e = np.zeros((total, k), np.float64)
            e[offset + j + np.arange(k), np.arange(k)] = 1.0
            y = np.asarray(op @ e, np.float64)
        if y.shape != (int(op.shape[0]), k):
            raise ValueError(
                f"the operator maps a ({total}, {k}) block to shape {y.shape}; expected "
                f"({int(op.shape[0])}, {k})"
            )
        out[:, j : j + k] = y[offset : offset + size]
    return out


def from_curvlinops(block, param_shape: Sequence[int], *, offset: int = 0) -> DenseTarget:
    """A ``DenseTarget`` from a curvlinops operator (or its dense block) for one parameter.

    Args:
        block: an ``(P, P)`` dense block (array or tensor) of one parameter, or a linear
            operator over all parameters (``.shape`` and ``@``): a curvlinops operator
            (``GGNLinearOperator``, ``HessianLinearOperator``, …, multiplied by torch
            tensors) or any operator taking NumPy matrices (a SciPy ``LinearOperator``).
            The block is read with ``op @ E`` for blocks of many unit columns at once.
        param_shape: the parameter's PyTorch shape ``(out, in, *kernel)`` (or ``(out,)``).
        offset: the parameter's first index in the operator's flattened parameter vector
            (the sum of ``numel()`` of the parameters before it); ignored for a block.

    Raises:
        ValueError: a block whose size does not match ``param_shape``, a non-square
            operator, or ``offset`` outside ``[0, P_total − P]``.
    """
    shape = tuple(int(s) for s in param_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"param_shape must be a non-empty shape of positive sizes; got {shape}")
    m, n = shape[0], math.prod(shape[1:])
    size = m * n
    if isinstance(block, np.ndarray) or type(block).__module__.startswith(("torch", "jax")):
        mat = _numpy(block, "curvlinops block")
    elif hasattr(block, "shape") and hasattr(block, "__matmul__"):
        rows, cols = (int(s) for s in block.shape)
        if rows != cols:
            raise ValueError(f"the operator must be square; got shape {(rows, cols)}")
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
            raise ValueError(f"offset must be an integer; got {offset!r}")
        if not 0 <= offset <= cols - size:
            raise ValueError(
                f"offset {offset} is outside [0, {cols - size}]: the parameter of shape "
                f"{shape} ({size} entries) must lie within the operator's {cols} parameters"
            )
        mat = _operator_block(block, int(offset), size)
    else:
        raise ValueError(f"expected a dense block or an operator; got {type(block).__name__}")
    if mat.shape != (size, size):
        raise ValueError(f"curvlinops block of shape {mat.shape} does not fit {shape} ({size})")
    return DenseTarget(mat, (m, n))


def from_npy(
    path, *, shape: Sequence[int] | None = None, mmap: bool = True, key: str | None = None
) -> np.ndarray:
    """``(N, m, n)`` gradients from a ``.npy`` file (memory-mapped by default) or ``.npz``.

    Args:
        path: the file; it holds ``(N, m, n)``, or ``(N, mn)`` with ``shape`` given.
        shape: ``(m, n)`` for flattened files.
        mmap: keep the data on disk (``SampleTarget`` streams it in chunks); ``.npy`` only.
        key: the array of an ``.npz`` holding several (one array needs no key).

    Raises:
        FileFormatError: the file is missing, empty, truncated or not a NumPy file, or an
            ``.npz`` holds several arrays and ``key`` names none of them.
        UnsupportedDtypeError: a float16/bfloat16 file (saved under AMP): upcast first.
        ValueError: a flattened file without ``shape``.
    """
    import zipfile

    if not Path(path).is_file():
        raise FileFormatError(f"{path}: no such file")
    try:
        a = np.load(str(path), mmap_mode="r" if mmap else None, allow_pickle=False)
        if isinstance(a, np.lib.npyio.NpzFile):
            with a:
                names = list(a.files)
                if key is None and len(names) != 1:
                    raise FileFormatError(
                        f"{path}: holds {len(names)} arrays {names}; pick one with key="
                    )
                if key is not None and key not in names:
                    raise FileFormatError(f"{path}: no array {key!r}; it holds {names}")
                a = a[names[0] if key is None else key]
    except FileFormatError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise _unreadable(path, err, "a NumPy .npy/.npz file") from err
    check_float_dtype(a.dtype, f"{path}")
    if shape is not None:
        return from_flat(a, shape, str(path))
    if a.ndim != 3:
        raise ValueError(f"{path} holds shape {a.shape}; give shape=(m, n) for (N, m·n) data")
    return a


def from_xarray(
    da: xr.DataArray,
    *,
    sample: str = "sample",
    row: str = "row",
    col: str = "col",
    extra: str | None = None,
) -> xr.DataArray:
    """A DataArray in the library's dim order, found by name, not by position.

    Args:
        da: per-example matrices with dims named in any order.
        sample: the names ``da`` uses for the sample, output and input dims.
        row: the names ``da`` uses for the sample, output and input dims.
        col: the names ``da`` uses for the sample, output and input dims.
        extra: a class / Monte-Carlo dim kept right after the sample dim (renamed to
            ``class``), or None.

    Raises:
        TypeError: ``da`` is not a DataArray (a Dataset: pick its variable, ``ds["g"]``).
        ValueError: a named dim missing, or dims left over.
    """
    if not isinstance(da, xr.DataArray):
        hint = (
            " (a Dataset: pick one variable, e.g. ds['gradients'])"
            if isinstance(da, xr.Dataset)
            else " (wrap an array: xr.DataArray(g, dims=(...)))"
        )
        raise TypeError(f"from_xarray needs an xarray.DataArray{hint}; got {type(da).__name__}")
    names = [sample, *([extra] if extra else []), row, col]
    missing = [d for d in names if d not in da.dims]
    if missing:
        raise ValueError(
            f"dims {missing} not in the DataArray's dims {tuple(da.dims)}; name them with "
            f"sample=, row=, col= (and extra= for a class/mc dim)"
        )
    left = [d for d in da.dims if d not in names]
    if left:
        raise ValueError(f"dims {left} are not sample/row/col/extra: select or stack them first")
    check_float_dtype(da.dtype, "DataArray")
    std = [Dim.SAMPLE.value, *([Dim.CLASS.value] if extra else []), Dim.ROW.value, Dim.COL.value]
    out = da.transpose(*names)
    return out.rename({a: b for a, b in zip(names, std, strict=True) if a != b})


def sample_target(g, *, shape: Sequence[int] | None = None, weights=None, **kwargs):
    """A ``SampleTarget`` from any of the inputs above (tensors, flat arrays, …).

    ``(N, m, n)`` arrays and DataArrays in the library's dims go through as they are;
    torch tensors and ``(N, out, *rest)`` arrays are matricized (``as_matrices``);
    ``(N, mn)`` arrays need ``shape``.
    """
    if isinstance(g, xr.DataArray):
        return SampleTarget(g, weights=weights, **kwargs)
    a = from_flat(g, shape) if shape is not None else as_matrices(g)
    return SampleTarget(a, weights=weights, **kwargs)
