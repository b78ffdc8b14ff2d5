"""Names, spelled once: target kinds, dims, the capture store's groups and variables.

Every module that reads or writes a capture store, builds a target from one, or lays out
a sweep Dataset takes its names from here, so a grep for a store name (``ggn_mc``,
``batch_size_``, ``step_``) finds only this module. It imports neither zarr nor optax.

Target kinds (``Kind``) are the values of a sweep's ``target`` coordinate and the
names of the sample variables in a store: ``gradients`` (per-example gradients, the
empirical Fisher), ``ggn`` (exact Gauss–Newton pseudo-gradients), ``ggn_mc``
(sampled-label pseudo-gradients, the MC Fisher), ``trajectory`` (Adagrad's
``Σ_s g_s g_sᵀ`` over training mini-batch gradients) and ``batch_<B>`` (mini-batch
gradients of ``B`` captured examples; ``batch_kind``). ``CaptureTarget`` is what
a capture can be asked for (``--targets``); hyphens and underscores are accepted alike by
``CaptureTarget.parse`` and ``parse_kind``.
"""

from __future__ import annotations

import enum
import re

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

__all__ = [
    "CaptureTree",
    "Kind",
    "CaptureTarget",
    "Dim",
    "SAMPLE_KINDS",
    "KFAC_ACTIVATIONS",
    "KFAC_BACKPROPS",
    "PARAM",
    "CHECKPOINT",
    "TRAJECTORY_GROUP",
    "STEP_VARIABLES",
    "VARIABLE_DIMS",
    "WEIGHT",
    "STORAGE_AUTO",
    "STORAGE_DENSE",
    "STORAGE_FACTORED",
    "STORAGES",
    "storage_attr",
    "batch_kind",
    "batch_size_of",
    "batch_group",
    "batch_group_size",
    "step_name",
    "step_of",
    "is_step_name",
    "parse_kind",
    "as_samples",
    "layer_kinds",
    "layer_samples",
    "layer_storage",
    "layer_kfac_inputs",
    "sample_bag",
]


class Kind(str, enum.Enum):
    """A target kind: what the per-example matrices of a target are."""

    GRADIENTS = "gradients"  #: per-example gradients (real labels): the empirical Fisher
    GGN = "ggn"  #: exact Gauss–Newton pseudo-gradients ``J_iᵀ Λ_i^{1/2} e_c``
    GGN_MC = "ggn_mc"  #: sampled-label pseudo-gradients (pre-divided by √k): MC Fisher
    TRAJECTORY = "trajectory"  #: training mini-batch gradients since the last step (Adagrad)

    def __str__(self) -> str:
        return self.value


#: The kinds stored as ``(sample, [class|mc,] row, col)`` variables of a layer group.
SAMPLE_KINDS: tuple[Kind, ...] = (Kind.GRADIENTS, Kind.GGN, Kind.GGN_MC)


class CaptureTarget(str, enum.Enum):
    """What ``precond_lab.capture.capture`` can be asked to record (``--targets``)."""

    GRADIENTS = "gradients"
    GGN = "ggn"
    GGN_MC = "ggn-mc"
    KFAC = "kfac"  #: K-FAC activations and real-label backprops
    KFAC_GGN = "kfac-ggn"  #: … with the exact-GGN backprops (columns of ``Λ^{1/2}``)
    KFAC_MC = "kfac-mc"  #: … with sampled-label backprops
    BATCH = "batch"  #: mini-batch gradients (``batch_size_<B>`` groups)
    TRAJECTORY = "trajectory"  #: training mini-batch gradients between captured steps

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, name: str | CaptureTarget) -> CaptureTarget:
        """``"ggn_mc"`` or ``"ggn-mc"`` → ``GGN_MC``; unknown names raise ``ValueError``."""
        if isinstance(name, cls):
            return name
        key = str(name).strip().replace("_", "-")
        for t in cls:
            if t.value == key:
                return t
        raise ValueError(
            f"unknown capture target {name!r}; valid: {', '.join(t.value for t in cls)}"
        )

    @property
    def store_variables(self) -> tuple[str, ...]:
        """The layer-group variables this target writes (empty for group-level targets)."""
        return _STORE_VARIABLES[self]


class Dim(str, enum.Enum):
    """Dimension names of capture stores and of sweep Datasets."""

    SAMPLE = "sample"
    CLASS = "class"  #: exact-GGN pseudo-gradients per example (one per model output)
    MC = "mc"  #: sampled-label draws per example
    ROW = "row"  #: output side of a matricized parameter (``m``)
    COL = "col"  #: input side (``n``)
    POSITION = "position"  #: shared positions of a K-FAC layer (conv pixels, tokens)
    IN = "in"  #: K-FAC activation features
    OUT = "out"  #: K-FAC backprop features
    OUTPUT = "output"  #: model outputs (logits)
    BATCH = "batch"  #: leading dim of a ``batch_size_<B>`` group's gradients
    TRAIN_STEP = "train_step"  #: leading dim of the trajectory group's gradients
    # sweep Datasets
    STEP = "step"
    LAYER = "layer"
    TARGET = "target"
    ESTIMATOR = "estimator"
    METRIC = "metric"
    BATCH_SIZE = "batch_size"
    INDEX = "index"  #: eigenvalue index (descending)

    def __str__(self) -> str:
        return self.value


PARAM = "param"  #: the matricized parameter of a layer group
KFAC_ACTIVATIONS = "kfac_activations"
#: K-FAC backprop variable per target kind (real labels, exact GGN, sampled labels).
KFAC_BACKPROPS: dict[Kind, str] = {
    Kind.GRADIENTS: "kfac_backprops",
    Kind.GGN: "kfac_backprops_ggn",
    Kind.GGN_MC: "kfac_backprops_mc",
}
CHECKPOINT = "checkpoint"  #: the resume-state group of a step
TRAJECTORY_GROUP = "trajectory"  #: a layer's trajectory group
STEP_VARIABLES = ("loss", "outputs", "labels")  #: per-example variables of a step group
WEIGHT = "weight"  #: the per-sample weight coordinate of batch and trajectory gradients
STORAGE_AUTO = "auto"  #: factors where smaller than the dense arrays (``capture(storage=)``)
STORAGE_DENSE = "dense"  #: a per-example kind stored as its ``(sample, …, row, col)`` array
STORAGE_FACTORED = "factored"  #: … stored as K-FAC activations and backprops only
STORAGES = (STORAGE_AUTO, STORAGE_DENSE, STORAGE_FACTORED)

#: Allowed dims of each layer-group variable (one tuple per allowed layout).
VARIABLE_DIMS: dict[str, list[tuple[str, ...]]] = {
    PARAM: [("row", "col")],
    Kind.GRADIENTS.value: [("sample", "row", "col")],
    Kind.GGN.value: [("sample", "class", "row", "col")],
    Kind.GGN_MC.value: [("sample", "mc", "row", "col")],
    KFAC_ACTIVATIONS: [("sample", "in"), ("sample", "position", "in")],
    KFAC_BACKPROPS[Kind.GRADIENTS]: [("sample", "out"), ("sample", "position", "out")],
    KFAC_BACKPROPS[Kind.GGN]: [("sample", "class", "out"), ("sample", "class", "position", "out")],
    KFAC_BACKPROPS[Kind.GGN_MC]: [("sample", "mc", "out"), ("sample", "mc", "position", "out")],
}

_STORE_VARIABLES = {
    CaptureTarget.GRADIENTS: (Kind.GRADIENTS.value,),
    CaptureTarget.GGN: (Kind.GGN.value,),
    CaptureTarget.GGN_MC: (Kind.GGN_MC.value,),
    CaptureTarget.KFAC: (KFAC_ACTIVATIONS, KFAC_BACKPROPS[Kind.GRADIENTS]),
    CaptureTarget.KFAC_GGN: (KFAC_ACTIVATIONS, KFAC_BACKPROPS[Kind.GGN]),
    CaptureTarget.KFAC_MC: (KFAC_ACTIVATIONS, KFAC_BACKPROPS[Kind.GGN_MC]),
    CaptureTarget.BATCH: (),
    CaptureTarget.TRAJECTORY: (),
}

_STEP_PREFIX = "step_"
_STEP_RE = re.compile(r"^step_(\d{6,})$")
_BATCH_GROUP = "batch_size_"
_BATCH_KIND = "batch_"
_BATCH_KIND_RE = re.compile(r"^batch_(\d+)$")
_BATCH_GROUP_RE = re.compile(r"^batch_size_(\d+)$")


def step_name(step: int) -> str:
    """The group name of a captured step: ``step_000050``."""
    return f"{_STEP_PREFIX}{int(step):06d}"


def is_step_name(name: str) -> bool:
    """Whether ``name`` is a step group's name."""
    return _STEP_RE.fullmatch(str(name)) is not None


def step_of(name: str) -> int:
    """``"step_000050"`` → 50."""
    m = _STEP_RE.fullmatch(str(name))
    if m is None:
        raise ValueError(f"{name!r} is not a step group name (expected 'step_NNNNNN')")
    return int(m.group(1))


def batch_kind(batch_size: int) -> str:
    """The target kind of mini-batch gradients of ``B`` examples: ``batch_<B>``."""
    return f"{_BATCH_KIND}{int(batch_size)}"


def batch_size_of(kind: str) -> int | None:
    """``"batch_32"`` → 32; None for kinds that are not mini-batch kinds."""
    m = _BATCH_KIND_RE.fullmatch(str(kind))
    return int(m.group(1)) if m else None


def batch_group(batch_size: int) -> str:
    """The store group holding mini-batch gradients of ``B`` examples: ``batch_size_<B>``."""
    return f"{_BATCH_GROUP}{int(batch_size)}"


def batch_group_size(name: str) -> int | None:
    """``"batch_size_32"`` → 32; None for other group names."""
    m = _BATCH_GROUP_RE.fullmatch(str(name))
    return int(m.group(1)) if m else None


def parse_kind(name) -> str:
    """A target kind's canonical spelling (``"ggn-mc"`` → ``"ggn_mc"``); others unchanged."""
    text = str(name.value if isinstance(name, enum.Enum) else name).strip()
    alt = text.replace("-", "_")
    for k in Kind:
        if k.value == alt:
            return k.value
    return text


def as_samples(da: xr.DataArray) -> xr.DataArray:
    """Rename the leading dim (``batch``, ``train_step``) to ``sample`` for ``SampleTarget``."""
    if da.dims[0] == Dim.SAMPLE.value:
        return da
    return da.rename({da.dims[0]: Dim.SAMPLE.value})


def storage_attr(kind) -> str:
    """The layer-group attribute recording how ``kind`` is stored: ``storage_ggn_mc``."""
    return f"storage_{parse_kind(kind)}"


def layer_storage(node: xr.DataTree | xr.Dataset, kind) -> str | None:
    """``"dense"``, ``"factored"`` or None: how a captured layer holds per-example ``kind``.

    ``"factored"`` needs the layer attribute ``storage_<kind> = "factored"`` and both the
    activations and the matching backprops; a dense array present counts as dense.
    """
    kind = parse_kind(kind)
    if kind not in (k.value for k in SAMPLE_KINDS):
        return None
    ds = node.dataset if isinstance(node, xr.DataTree) else node
    if kind in ds:
        return STORAGE_DENSE
    factored = node.attrs.get(storage_attr(kind)) == STORAGE_FACTORED
    if factored and KFAC_ACTIVATIONS in ds and KFAC_BACKPROPS[Kind(kind)] in ds:
        return STORAGE_FACTORED
    return None


def layer_kinds(node: xr.DataTree) -> list[str]:
    """The target kinds a captured layer group holds (dense or factored), in canonical order."""
    out = [k.value for k in SAMPLE_KINDS if layer_storage(node, k) is not None]
    if TRAJECTORY_GROUP in node.children:
        out.append(Kind.TRAJECTORY.value)
    sizes = sorted(b for c in node.children if (b := batch_group_size(c)) is not None)
    return out + [batch_kind(b) for b in sizes]


def layer_samples(node: xr.DataTree, kind) -> xr.DataArray | None:
    """The samples of one target kind in a captured layer group (lazy), or None if absent.

    Per-example kinds are ``(sample, [class|mc,] row, col)``; ``trajectory`` and
    ``batch_<B>`` come with their ``weight`` coordinate and the leading dim renamed to
    ``sample`` (``as_samples``), ready for ``SampleTarget``.

    A kind stored factored (``layer_storage``) comes as a lazily rebuilt array
    ``G = Σ_t δ_t a_tᵀ`` with the same dims and coordinates: indexing it reads and rebuilds
    only the selected examples, but loading all of it (``.values``, ``np.asarray``) costs
    ``N·[K·]m·n`` memory, the dense size the factored store avoids. To score it without
    rebuilding, use ``precond_lab.capture.layer_target``.
    """
    kind = parse_kind(kind)
    if kind in (k.value for k in SAMPLE_KINDS):
        form = layer_storage(node, kind)
        if form == STORAGE_FACTORED:
            return _rebuilt(node, kind)
        return node.dataset[kind] if form is not None else None
    if kind == Kind.TRAJECTORY.value:
        child = TRAJECTORY_GROUP
    elif (b := batch_size_of(kind)) is not None:
        child = batch_group(b)
    else:
        return None
    if child in node.children and Kind.GRADIENTS.value in node[child].dataset:
        return as_samples(node[child].dataset[Kind.GRADIENTS.value])
    return None


class _Rebuilt(BackendArray):
    """``(sample, [K,] m, n)`` per-example matrices rebuilt from factors on indexing."""

    def __init__(self, backprops: xr.Variable, activations: xr.Variable, inner: bool):
        self.d, self.a, self.lead = backprops, activations, 2 if inner else 1
        self.positional = activations.ndim == 3
        m, n = backprops.shape[-1], activations.shape[-1]
        self.shape = (*backprops.shape[: self.lead], m, n)
        self.dtype = np.result_type(backprops.dtype, activations.dtype)

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._get
        )

    def _get(self, key: tuple) -> np.ndarray:
        ints = [isinstance(k, (int, np.integer)) for k in key]
        sl = tuple(slice(k, k + 1) if i else k for k, i in zip(key, ints, strict=True))
        d = np.asarray(self.d[sl[: self.lead]].values)
        a = np.asarray(self.a[sl[0]].values)
        if not self.positional:
            d, a = d[..., None, :], a[..., None, :]
        eq = "sktm,stn->skmn" if self.lead == 2 else "stm,stn->smn"
        g = np.einsum(eq, d, a).astype(self.dtype, copy=False)
        g = g[(slice(None),) * self.lead + sl[self.lead :]]
        return g[tuple(0 if i else slice(None) for i in ints)]


def _rebuilt(node, kind: str) -> xr.DataArray:
    ds = node.dataset
    bp, acts = ds[KFAC_BACKPROPS[Kind(kind)]], ds[KFAC_ACTIVATIONS]
    inner = kind != Kind.GRADIENTS.value
    dims = VARIABLE_DIMS[kind][0]
    data = indexing.LazilyIndexedArray(_Rebuilt(bp.variable, acts.variable, inner))
    coords = {k: v for k, v in bp.coords.items() if set(v.dims) <= set(dims)}
    attrs = {"storage": STORAGE_FACTORED}
    return xr.DataArray(xr.Variable(dims, data), coords=coords, name=kind, attrs=attrs)


class CaptureTree(xr.DataTree):
    """The DataTree of a capture (``open_capture``, ``capture``): an ``xr.DataTree`` whose
    layer groups also answer ``node["gradients"]`` (and ``"ggn"``, ``"ggn_mc"``) for a kind
    stored as factors, with the lazily rebuilt array of ``layer_samples``, instead of a
    bare ``KeyError``."""

    __slots__ = ()

    def __getitem__(self, key):
        try:
            return super().__getitem__(key)
        except KeyError:
            if isinstance(key, str) and "/" not in key:
                kind = parse_kind(key)
                if kind in (k.value for k in SAMPLE_KINDS) and (
                    layer_storage(self, kind) == STORAGE_FACTORED
                ):
                    return layer_samples(self, kind)
            raise

    @classmethod
    def of(cls, tree: xr.DataTree) -> CaptureTree:
        """``tree`` (every node, lazily: no data is read) as a ``CaptureTree``."""
        if isinstance(tree, cls) and all(isinstance(n, cls) for n in tree.subtree):
            return tree
        nodes = {path: node.to_dataset(inherit=False) for path, node in tree.subtree_with_keys}
        return cls.from_dict(nodes, name=tree.name)


def layer_kfac_inputs(node: xr.DataTree | xr.Dataset, kind) -> tuple[np.ndarray, np.ndarray] | None:
    """``(activations, backprops)`` of a captured layer (group or its Dataset) for target
    kind ``kind``, or None where they were not captured."""
    kind = parse_kind(kind)
    try:
        bp = KFAC_BACKPROPS[Kind(kind)]
    except (ValueError, KeyError):
        return None
    ds = node.dataset if isinstance(node, xr.DataTree) else node
    if KFAC_ACTIVATIONS not in ds or bp not in ds:
        return None
    return np.asarray(ds[KFAC_ACTIVATIONS].values), np.asarray(ds[bp].values)


def sample_bag(samples, weights=None, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """``(N, [K,] m, n)`` samples → a flat ``(N·K, m, n)`` bag with per-sample weights.

    Each of an example's ``K`` pseudo-samples (classes, MC draws) carries its example's
    weight (default ``1/N``), so ``SampleTarget(*sample_bag(x))`` is the target the
    ``(N, K, m, n)`` array stands for.
    """
    arr = np.asarray(samples.values if isinstance(samples, xr.DataArray) else samples)
    if dtype is not None:
        arr = arr.astype(dtype)
    if arr.ndim not in (3, 4):
        raise ValueError(f"samples must be (N, m, n) or (N, K, m, n); got shape {arr.shape}")
    num = arr.shape[0]
    inner = arr.shape[1] if arr.ndim == 4 else 1
    w = np.full(num, 1.0 / num, arr.dtype) if weights is None else np.asarray(weights)
    return arr.reshape(num * inner, *arr.shape[-2:]), np.repeat(w, inner)
