"""The per-example engine: gradients, GGN pseudo-gradients and K-FAC factors in one pass.

For each example one forward pass ``jax.vjp`` is taken with respect to the selected
parameters *and* the layers' output perturbations (see
``Tape``); every requested set of output cotangents is
pulled back through it with ``jax.vmap``:

* real-label gradient ``∂ℓ/∂f`` → per-example gradients ``G_i`` and K-FAC ``δ``;
* the ``C`` columns of ``Λ^{1/2}`` → exact GGN pseudo-gradients ``b_{i,c}`` and ``δ``;
* ``k`` sampled-label gradients divided by ``√k`` → MC pseudo-gradients and ``δ``.

Examples are batched with ``jax.vmap`` and the whole chunk is one ``jax.jit`` call. The
same sampled labels feed ``ggn_mc`` and ``kfac_backprops_mc``. Models given only as a
``loss_fn`` get per-example gradients from ``vmap(grad)`` of the loss on one-example
batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..schema import KFAC_ACTIVATIONS, KFAC_BACKPROPS, Kind
from . import ggn
from .kfac import KFAC_TARGETS, kfac_layer
from .layout import flat_params, matrix_shape, merge_params, row_axes_for, to_matrix
from .models import Model, Tape

__all__ = ["Request", "chunk_length", "make_capture_fn", "run_chunked", "sample_keys"]


@dataclasses.dataclass(frozen=True)
class Request:
    """What to compute.

    Attributes:
        layers: parameter paths.
        targets: subset of ``gradients, ggn, ggn-mc, kfac, kfac-ggn, kfac-mc, batch``.
        mc_samples: ``k`` sampled labels per example.
        row_axes: per-path matricization overrides (see ``.layout``).
        layer_targets: per-path replacements of ``targets`` (e.g. ``{"kfac", "batch"}``
            for a layer whose gradients are stored as factors only); other layers use
            ``targets``.
    """

    layers: tuple[str, ...]
    targets: frozenset[str]
    mc_samples: int = 1
    row_axes: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    layer_targets: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)

    def needs(self, *names: str) -> bool:
        """Whether any layer needs any of ``names``."""
        return any(self.needs_at(p, *names) for p in self.layers)

    def needs_at(self, path: str, *names: str) -> bool:
        """Whether layer ``path`` needs any of ``names``."""
        return bool(self.layer_targets.get(path, self.targets) & set(names))


def make_capture_fn(model: Model, params, req: Request) -> Callable:
    """A jitted ``fn(params, x, y, keys) -> dict`` over a chunk of examples.

    The result has ``"loss"`` ``(N,)``, ``"outputs"`` ``(N, C)`` (when the model has an
    ``apply``) and, per layer path, a dict with the requested arrays among
    ``gradients (N, m, n)``, ``ggn (N, C, m, n)``, ``ggn_mc (N, k, m, n)``,
    ``kfac_activations (N, [P,] n)``, ``kfac_backprops (N, [P,] m)``,
    ``kfac_backprops_ggn (N, C, [P,] m)``, ``kfac_backprops_mc (N, k, [P,] m)``.
    """
    flat = flat_params(params)
    shapes = {p: tuple(flat[p].shape) for p in req.layers}
    rows = {p: row_axes_for(shapes[p], req.row_axes.get(p)) for p in req.layers}
    kinds = {
        "emp": req.needs("gradients", "batch", "kfac"),
        "ggn": req.needs("ggn", "kfac-ggn"),
        "mc": req.needs("ggn-mc", "kfac-mc"),
    }
    owners = {p: kfac_layer(model, p) for p in req.layers if req.needs_at(p, *KFAC_TARGETS)}
    tape_names = sorted({name for name, _ in owners.values()})
    k = int(req.mc_samples)

    if model.apply is None:  # user loss_fn only
        if req.needs("ggn", "ggn-mc", *KFAC_TARGETS):
            raise ValueError("ggn, ggn-mc and K-FAC targets need an apply_fn and a loss name")
        return _make_loss_fn_capture(model, req, shapes, rows)

    def mat(g, lead, p):
        return to_matrix(g, lead, shapes[p], rows[p])

    def one(params, x, y, key):
        sel = {p: flat_params(params)[p] for p in req.layers}
        probe = Tape()
        model.apply(params, x, probe)  # records output shapes; dead code for XLA
        perts = {n: jnp.zeros(probe.output_shapes[n], _dtype(params)) for n in tape_names}

        def fwd(sel, perts):
            tape = Tape(perts)
            out = model.apply(merge_params(params, sel), x, tape)
            return out, {n: tape.inputs[n] for n in tape_names}

        f, vjp, acts = jax.vjp(fwd, sel, perts, has_aux=True)
        cots = {}
        if kinds["emp"]:
            cots["emp"] = ggn.loss_grad(model.loss, f, y)[None]
        if kinds["ggn"]:
            cots["ggn"] = ggn.hessian_sqrt(model.loss, f).T  # row c = column c of S
        if kinds["mc"]:
            cots["mc"] = ggn.sampled_grads(model.loss, f, key, k) / math.sqrt(k)
        pulled = {kind: jax.vmap(vjp)(c) for kind, c in cots.items()}
        res = {"loss": ggn.per_example_loss(model.loss, f, y), "outputs": f}
        for p in req.layers:
            d = {}
            if req.needs_at(p, "gradients", "batch"):
                d["gradients"] = mat(pulled["emp"][0][p], 1, p)[0]
            if req.needs_at(p, "ggn"):
                d["ggn"] = mat(pulled["ggn"][0][p], 1, p)
            if req.needs_at(p, "ggn-mc"):
                d[Kind.GGN_MC.value] = mat(pulled["mc"][0][p], 1, p)
            if p in owners:
                name, is_bias = owners[p]
                a = acts[name]
                d[KFAC_ACTIVATIONS] = jnp.ones((*a.shape[:-1], 1), a.dtype) if is_bias else a
                backprops = {
                    "kfac": ("emp", KFAC_BACKPROPS[Kind.GRADIENTS]),
                    "kfac-ggn": ("ggn", KFAC_BACKPROPS[Kind.GGN]),
                    "kfac-mc": ("mc", KFAC_BACKPROPS[Kind.GGN_MC]),
                }
                for tgt, (kind, var) in backprops.items():
                    if req.needs_at(p, tgt):
                        delta = pulled[kind][1][name]
                        d[var] = delta[0] if kind == "emp" else delta
            res[p] = d
        return res

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)))


def _dtype(params):
    return jax.tree_util.tree_leaves(params)[0].dtype


def _make_loss_fn_capture(model: Model, req: Request, shapes, rows):
    def one(params, x, y, key):
        sel = {p: flat_params(params)[p] for p in req.layers}

        def loss(sel):
            return model.loss_fn(merge_params(params, sel), (x[None], y[None]))

        value, grads = jax.value_and_grad(loss)(sel)
        res = {"loss": value}
        for p in req.layers:
            res[p] = {"gradients": to_matrix(grads[p], 0, shapes[p], rows[p])}
        return res

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)))


def chunk_length(n: int, chunk: int) -> int:
    """Examples per jitted call for ``n`` examples: ``chunk``, or below it the power of two ≥ n.

    Every ``n`` from ``chunk`` up (and every ``n`` in one power-of-two bucket below it)
    gets the same length, so a new number of examples reuses the compiled function; the
    padding wastes less than half a chunk's work.
    """
    chunk = max(1, int(chunk))
    return min(chunk, 1 << max(0, int(n) - 1).bit_length())


def _host(a):
    """A NumPy view of ``a`` (typed PRNG key arrays stay JAX arrays)."""
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        return a
    return np.asarray(a)


def run_chunked(fn: Callable, params, x, y, keys, chunk: int) -> dict:
    """Apply ``fn`` over examples in chunks of ``chunk_length(N, chunk)`` (the last padded).

    The last chunk is padded by repeating examples from the start and its padding rows are
    dropped from the result, so every call has one shape and one compiled executable.
    Returns the same nested dict with NumPy arrays concatenated along the sample axis.
    """
    n = len(x)
    chunk = chunk_length(n, chunk)
    x, y, keys = _host(x), _host(y), _host(keys)  # host indexing: no per-N gather kernels
    parts = []
    for start in range(0, n, chunk):
        idx = np.arange(start, start + chunk) % n  # pad by wrapping: one compiled shape
        out = fn(params, x[idx], y[idx], keys[idx])
        keep = min(chunk, n - start)
        parts.append(jax.tree_util.tree_map(lambda a, keep=keep: np.asarray(a)[:keep], out))
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a, axis=0), *parts)


@jax.jit
def _fold_in(key, ids):
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)


def sample_keys(key, ids, chunk: int) -> np.ndarray:
    """``jax.random.fold_in(key, i)`` for every ``i`` in ``ids``, ``(N, *key.shape)``.

    Computed in padded chunks of ``chunk_length(N, chunk)``, so a new ``N`` compiles
    nothing.
    """
    ids = np.asarray(ids)
    c = chunk_length(len(ids), chunk)
    padded = np.resize(ids, -(-len(ids) // c) * c)  # repeats ids to a whole number of chunks
    out = [np.asarray(_fold_in(key, padded[s : s + c])) for s in range(0, len(padded), c)]
    return np.concatenate(out)[: len(ids)]


def layer_matrix_shapes(params, req: Request) -> dict[str, tuple[int, int]]:
    """``{path: (m, n)}`` of the selected layers."""
    flat = flat_params(params)
    out = {}
    for p in req.layers:
        shape = tuple(flat[p].shape)
        out[p] = matrix_shape(shape, row_axes_for(shape, req.row_axes.get(p)))
    return out
