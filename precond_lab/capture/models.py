"""Plain-JAX models for capture: an MLP, a CNN and a small transformer.

Every model is a ``Model``: ``init(key) -> params`` (a pytree of dicts and lists of
arrays) and ``apply(params, x, tape) -> outputs`` for **one** example (batches go through
``jax.vmap``). Parameters are addressed by pytree path, written ``"layers/0/w"``.

Kronecker-factored layers go through ``Tape.linear``, which computes
``s = W a (+ b)`` for an input ``a`` of shape ``(n,)`` or ``(P, n)`` (``P`` positions
sharing the weight: image patches, tokens), records ``a`` and adds a zero perturbation to
``s`` so that its gradient is the output-side backprop ``δ = ∂ℓ/∂s``. The layer named
``"layers/0"`` owns the weight ``"layers/0/w"`` (``m × n``, output rows) and the optional
bias ``"layers/0/b"`` (``m``). Then the per-example weight gradient is exactly
``G = Σ_r δ_r a_rᵀ`` and the bias gradient ``Σ_r δ_r``.

Architectures (all weights stored as ``out × in`` matrices, so no reshaping is needed):

* ``mlp``: ``hidden`` dense layers with ``activation`` (``tanh``, ``relu``, ``gelu`` or
  ``linear`` for deep linear networks), then a dense head. Paths ``layers/<i>/{w,b}``.
* ``cnn``: ``channels`` valid convolutions (``kernel`` wide, ``stride``, ReLU) on
  channel-first inputs (``(C, H, W)`` or ``(C, L)``), global average pooling and a dense
  head. A convolution is im2col + matmul: its weight ``convs/<i>/w`` is already the
  matricization ``out × (in·kh·kw)`` with column index ``c·kh·kw + i·kw + j`` (the
  feature order of ``jax.lax.conv_general_dilated_patches``); positions are output pixels.
* ``transformer``: token + position embeddings (``embed`` ``V × d``, ``pos`` ``T × d``),
  ``blocks`` pre-LayerNorm blocks (no LayerNorm parameters) with multi-head attention
  whose query/key/value/output projections are ``d × d`` matrices ``blocks/<i>/{q,k,v,o}/w``
  (heads concatenated along rows, no 3-D tensors) and an MLP ``blocks/<i>/{fc,proj}/w``,
  all shared over the ``T`` token positions; the head ``head/w`` (``V × d``) reads the last
  token and predicts the next character.
* ``patch_transformer``: a one-block ViT-style model on images: ``patch × patch`` patches,
  a linear embedding ``embed/w`` plus learned positions, pre-LayerNorm attention
  (``q, k, v, o``) and MLP (``fc``, ``proj``), mean pooling and a head; every weight an
  ``out × in`` matrix through ``Tape.linear``, shared over the patches.
* ``lstm``: a one-layer LSTM over a token window (embedding ``embed`` ``V × e``, gate weight
  ``cell/w`` ``4h × (e + h)`` shared over time, so it is not a tape layer: gradient and GGN
  targets work, K-FAC targets do not) whose last state predicts the next token (``head``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .cache import cached

__all__ = ["MODELS", "MODEL_SPECS", "Model", "ModelSpec", "Tape", "make_model", "register_model"]

#: the zoo's model names (kept in step with ``MODEL_SPECS`` by ``register_model``).
MODELS: tuple[str, ...] = ()

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "linear": lambda x: x,
}


class Tape:
    """Records layer inputs and injects output perturbations (see the module docstring).

    Args:
        perturbations: zero arrays keyed by layer name, added to the layer outputs;
            differentiate with respect to them to get ``δ``. Layers without an entry are
            computed normally.
    """

    def __init__(self, perturbations: dict[str, jax.Array] | None = None):
        self.perturbations = dict(perturbations or {})
        self.inputs: dict[str, jax.Array] = {}
        self.output_shapes: dict[str, tuple[int, ...]] = {}

    def linear(self, name: str, a: jax.Array, w: jax.Array, b: jax.Array | None = None):
        """``a @ wᵀ + b`` for ``a``: ``(n,)`` or ``(P, n)`` and ``w``: ``(m, n)``."""
        if name in self.inputs:
            raise ValueError(f"layer {name!r} used twice in one forward pass")
        s = a @ w.T
        if b is not None:
            s = s + b
        self.inputs[name] = a
        self.output_shapes[name] = tuple(s.shape)
        if name in self.perturbations:
            s = s + self.perturbations[name]
        return s


@dataclasses.dataclass(frozen=True)
class Model:
    """A model for capture.

    Attributes:
        name: short name stored as provenance.
        init: ``key -> params``.
        apply: ``(params, x, tape) -> outputs`` for one example; ``tape`` may be None.
            Outputs are logits ``(C,)`` for ``cross_entropy`` or predictions for ``mse``.
        loss: ``"cross_entropy"`` or ``"mse"``.
        config: JSON-serialisable settings (stored as a JSON string attribute).
        tape_layers: names of ``Tape.linear`` layers (empty for user models that do
            not use a tape; K-FAC targets then are unavailable).
        loss_fn: optional user loss ``(params, (x, y)) -> mean loss`` replacing
            ``apply`` + ``loss`` for gradient targets.
    """

    name: str
    init: Callable[[jax.Array], Any]
    apply: Callable[..., jax.Array] | None
    loss: str
    config: dict = dataclasses.field(default_factory=dict)
    tape_layers: tuple[str, ...] = ()
    loss_fn: Callable[..., jax.Array] | None = None

    def config_json(self) -> str:
        return json.dumps(self.config, sort_keys=True)


def _dense_init(key, m, n, dtype):
    return {
        "w": jax.random.normal(key, (m, n), dtype) / math.sqrt(n),
        "b": jnp.zeros((m,), dtype),
    }


def _mlp(in_dim: int, out_dim: int, hidden: Sequence[int], activation: str, dtype) -> Model:
    act = _ACTIVATIONS[activation]
    sizes = [in_dim, *hidden, out_dim]
    names = tuple(f"layers/{i}" for i in range(len(sizes) - 1))

    def init(key):
        keys = jax.random.split(key, len(sizes) - 1)
        return {
            "layers": [
                _dense_init(k, m, n, dtype) for k, n, m in zip(keys, sizes, sizes[1:], strict=False)
            ]
        }

    def apply(params, x, tape=None):
        tape = Tape() if tape is None else tape
        h = x.reshape(-1)
        for i, layer in enumerate(params["layers"]):
            h = tape.linear(names[i], h, layer["w"], layer["b"])
            if i < len(params["layers"]) - 1:
                h = act(h)
        return h

    cfg = {"hidden": list(hidden), "activation": activation}
    return Model("mlp", init, apply, "", cfg, names)


def _cnn(input_shape, out_dim, channels, kernel, stride, dtype) -> Model:
    c_in, *spatial = input_shape
    nd = len(spatial)
    if nd not in (1, 2):
        raise ValueError(f"cnn needs (C, L) or (C, H, W) inputs; got input shape {input_shape}")
    names = tuple(f"convs/{i}" for i in range(len(channels)))
    win = (kernel,) * nd

    def init(key):
        keys = jax.random.split(key, len(channels) + 1)
        convs, c = [], c_in
        for k, c_out in zip(keys, channels, strict=False):
            convs.append(_dense_init(k, c_out, c * kernel**nd, dtype))
            c = c_out
        return {"convs": convs, "head": _dense_init(keys[-1], out_dim, c, dtype)}

    def apply(params, x, tape=None):
        tape = Tape() if tape is None else tape
        h = x.reshape(input_shape)
        for i, conv in enumerate(params["convs"]):
            p = jax.lax.conv_general_dilated_patches(h[None], win, (stride,) * nd, "VALID")[0]
            out_sp = p.shape[1:]
            a = p.reshape(p.shape[0], -1).T  # (positions, in·kh·kw)
            s = jax.nn.relu(tape.linear(names[i], a, conv["w"], conv["b"]))
            h = s.T.reshape(s.shape[1], *out_sp)
        pooled = h.reshape(h.shape[0], -1).mean(axis=1)
        return tape.linear("head", pooled, params["head"]["w"], params["head"]["b"])

    cfg = {"channels": list(channels), "kernel": kernel, "stride": stride}
    return Model("cnn", init, apply, "", cfg, (*names, "head"))


def _layer_norm(h):
    mu = h.mean(axis=-1, keepdims=True)
    return (h - mu) / jnp.sqrt(h.var(axis=-1, keepdims=True) + 1e-5)


def _transformer(vocab, context, width, heads, blocks, dtype) -> Model:
    if width % heads:
        raise ValueError(f"transformer width {width} is not divisible by heads {heads}")
    dh = width // heads
    lin = ("q", "k", "v", "o", "fc", "proj")
    names = tuple(f"blocks/{i}/{p}" for i in range(blocks) for p in lin) + ("head",)

    def init(key):
        keys = iter(jax.random.split(key, 3 + 6 * blocks))
        params = {
            "embed": jax.random.normal(next(keys), (vocab, width), dtype) * 0.5,
            "pos": jax.random.normal(next(keys), (context, width), dtype) * 0.1,
            "blocks": [],
        }
        for _ in range(blocks):
            shapes = {"q": (width, width), "k": (width, width), "v": (width, width)}
            shapes |= {"o": (width, width), "fc": (4 * width, width), "proj": (width, 4 * width)}
            params["blocks"].append({p: _dense_init(next(keys), *shapes[p], dtype) for p in lin})
        params["head"] = _dense_init(next(keys), vocab, width, dtype)
        return params

    def apply(params, x, tape=None):
        tape = Tape() if tape is None else tape
        h = params["embed"][x] + params["pos"]  # (T, d)
        for i, blk in enumerate(params["blocks"]):

            def lin_(p, a, blk=blk, i=i):
                return tape.linear(f"blocks/{i}/{p}", a, blk[p]["w"], blk[p]["b"])

            z = _layer_norm(h)
            q, k, v = (lin_(p, z).reshape(context, heads, dh) for p in ("q", "k", "v"))
            att = jax.nn.softmax(jnp.einsum("thd,shd->hts", q, k) / math.sqrt(dh), axis=-1)
            h = h + lin_("o", jnp.einsum("hts,shd->thd", att, v).reshape(context, width))
            h = h + lin_("proj", jax.nn.gelu(lin_("fc", _layer_norm(h))))
        return tape.linear("head", _layer_norm(h)[-1], params["head"]["w"], params["head"]["b"])

    cfg = {"width": width, "heads": heads, "blocks": blocks, "context": context}
    return Model("transformer", init, apply, "cross_entropy", cfg, names)


def _patch_transformer(input_shape, output_dim, patch, width, heads, dtype) -> Model:
    if len(input_shape) != 3:
        raise ValueError(f"patch_transformer needs (C, H, W) images, got input shape {input_shape}")
    c, h, w = input_shape
    if h % patch or w % patch:
        raise ValueError(f"patch {patch} does not divide the image size {h}×{w}")
    if width % heads:
        raise ValueError(f"patch_transformer width {width} is not divisible by heads {heads}")
    tokens, pdim, dh = (h // patch) * (w // patch), c * patch * patch, width // heads
    names = ("embed", "q", "k", "v", "o", "fc", "proj", "head")
    shapes = {"embed": (width, pdim), "q": (width, width), "k": (width, width)}
    shapes |= {"v": (width, width), "o": (width, width), "fc": (2 * width, width)}
    shapes |= {"proj": (width, 2 * width), "head": (output_dim, width)}

    def init(key):
        keys = jax.random.split(key, len(names) + 1)
        params = {n: _dense_init(k, *shapes[n], dtype) for n, k in zip(names, keys, strict=False)}
        params["pos"] = 0.1 * jax.random.normal(keys[-1], (tokens, width), dtype)
        return params

    def apply(params, x, tape=None):
        tape = Tape() if tape is None else tape
        img = x.reshape(c, h // patch, patch, w // patch, patch)
        a = img.transpose(1, 3, 0, 2, 4).reshape(tokens, pdim)

        def lin(n, z):
            return tape.linear(n, z, params[n]["w"], params[n]["b"])

        z = lin("embed", a) + params["pos"]
        y = _layer_norm(z)
        q, k, v = (lin(n, y).reshape(tokens, heads, dh) for n in ("q", "k", "v"))
        att = jax.nn.softmax(jnp.einsum("thd,shd->hts", q, k) / math.sqrt(dh), axis=-1)
        z = z + lin("o", jnp.einsum("hts,shd->thd", att, v).reshape(tokens, width))
        z = z + lin("proj", jax.nn.gelu(lin("fc", _layer_norm(z))))
        return lin("head", _layer_norm(z).mean(axis=0))

    cfg = {"patch": patch, "width": width, "heads": heads}
    return Model("patch_transformer", init, apply, "", cfg, names)


def _lstm(vocab, width, embed, dtype) -> Model:
    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "embed": 0.5 * jax.random.normal(k1, (vocab, embed), dtype),
            "cell": _dense_init(k2, 4 * width, embed + width, dtype),
            "head": _dense_init(k3, vocab, width, dtype),
        }

    def apply(params, x, tape=None):
        del tape  # the gate weight is shared over time: not a tape layer
        w, b = params["cell"]["w"], params["cell"]["b"]

        def step(carry, e):
            hid, cell = carry
            i, f, g, o = jnp.split(w @ jnp.concatenate([e, hid]) + b, 4)
            cell = jax.nn.sigmoid(f + 1.0) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
            return (jax.nn.sigmoid(o) * jnp.tanh(cell), cell), None

        zero = jnp.zeros((width,), w.dtype)
        (hid, _), _ = jax.lax.scan(step, (zero, zero), params["embed"][x])
        return params["head"]["w"] @ hid + params["head"]["b"]

    return Model("lstm", init, apply, "", {"width": width, "embed": embed}, ())


def make_model(name: str, dataset, dtype: str = "float32", **kwargs) -> Model:
    """Build a named model sized for ``dataset`` (a ``Dataset``).

    The same name, options, dtype and dataset sizes give the same ``Model`` object (built
    once, see ``.cache``), so captures of it share their compiled functions.

    Args:
        name: one of ``MODELS``.
        dataset: provides ``input_shape``, ``output_dim``, ``loss`` (and ``vocab_size``,
            ``context`` for the transformer).
        dtype: parameter dtype (``"float64"`` needs ``jax_enable_x64``).
        **kwargs: ``mlp``: ``hidden=(32,)``, ``activation="tanh"``; ``cnn``:
            ``channels=(8, 8)``, ``kernel=3``, ``stride=1``; ``transformer``: ``width=32``,
            ``heads=4``, ``blocks=1``.

    Raises:
        ValueError: unknown model name, unknown option, or a model/dataset mismatch.
    """
    sizes = (dataset.input_shape, dataset.output_dim, dataset.loss)
    key = ("model", name, *sizes, dataset.vocab_size, dataset.context, str(dtype))
    try:
        key += (json.dumps(kwargs, sort_keys=True),)
    except TypeError:  # options JSON cannot write: build without caching
        return _build(name, dataset, dtype, **kwargs)
    return cached(key, lambda: _build(name, dataset, dtype, **kwargs))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model of the zoo: how to build it for a dataset, and its options.

    Attributes:
        name: registry key (``make_model``'s ``name``).
        build: ``build(dataset, dtype, **options) -> Model`` (options complete).
        options: the options and their defaults.
        tokens: whether it needs a token dataset (``True``) or real-valued inputs.
        check: ``check(options)`` raising ``ValueError`` on a bad option value.
    """

    name: str
    build: Callable[..., Model]
    options: dict[str, Any]
    tokens: bool = False
    check: Callable[[dict[str, Any]], None] = lambda options: None


#: name → ModelSpec, in registration order.
MODEL_SPECS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model to the zoo (``MODEL_SPECS``; ``MODELS`` lists the names).

    Raises:
        ValueError: the name is taken.
    """
    global MODELS
    if spec.name in MODEL_SPECS:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODEL_SPECS[spec.name] = spec
    MODELS = tuple(MODEL_SPECS)
    return spec


def _check_mlp(opts: dict[str, Any]) -> None:
    if opts["activation"] not in _ACTIVATIONS:
        raise ValueError(
            f"unknown activation {opts['activation']!r}; valid: {', '.join(_ACTIVATIONS)}"
        )


register_model(
    ModelSpec(
        "mlp",
        lambda ds, dt, hidden, activation: _mlp(
            math.prod(ds.input_shape), ds.output_dim, tuple(int(h) for h in hidden), activation, dt
        ),
        {"hidden": (32,), "activation": "tanh"},
        check=_check_mlp,
    )
)
register_model(
    ModelSpec(
        "cnn",
        lambda ds, dt, channels, kernel, stride: _cnn(
            ds.input_shape,
            ds.output_dim,
            tuple(int(c) for c in channels),
            int(kernel),
            int(stride),
            dt,
        ),
        {"channels": (8, 8), "kernel": 3, "stride": 1},
    )
)
register_model(
    ModelSpec(
        "transformer",
        lambda ds, dt, width, heads, blocks: _transformer(
            ds.vocab_size, ds.context, int(width), int(heads), int(blocks), dt
        ),
        {"width": 32, "heads": 4, "blocks": 1},
        tokens=True,
    )
)

register_model(
    ModelSpec(
        "patch_transformer",
        lambda ds, dt, patch, width, heads: _patch_transformer(
            ds.input_shape, ds.output_dim, int(patch), int(width), int(heads), dt
        ),
        {"patch": 7, "width": 16, "heads": 2},
    )
)
register_model(
    ModelSpec(
        "lstm",
        lambda ds, dt, width, embed: _lstm(ds.vocab_size, int(width), int(embed), dt),
        {"width": 32, "embed": 16},
        tokens=True,
    )
)


def _check_sizes(model: str, key: str, value) -> None:
    """Sizes of a built-in model (widths, channels, kernel, …): positive integers."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    ok = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in values)
    if not ok:
        raise ValueError(f"model {model!r}: {key} must be positive integer(s); got {value!r}")


def _build(name: str, dataset, dtype: str, **kwargs) -> Model:
    spec = MODEL_SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_SPECS)}")
    if spec.tokens and dataset.vocab_size is None:
        raise ValueError(
            f"the {name} needs a token dataset (e.g. 'stdlib-chars'); {dataset.name!r} is not one"
        )
    if not spec.tokens and dataset.vocab_size is not None:
        raise ValueError(
            f"model {name!r} needs real-valued inputs; {dataset.name!r} is a token dataset"
        )
    unknown = set(kwargs) - set(spec.options)
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for model {name!r}; valid: {sorted(spec.options)}"
        )
    opts = spec.options | kwargs
    for key in (
        "hidden",
        "channels",
        "kernel",
        "stride",
        "width",
        "heads",
        "blocks",
        "patch",
        "embed",
    ):
        if key in opts:
            _check_sizes(name, key, opts[key])
    spec.check(opts)
    model = spec.build(dataset, jnp.dtype(dtype), **opts)
    return dataclasses.replace(model, loss=dataset.loss)
