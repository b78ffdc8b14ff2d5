"""capture_model / capture_from_fn with discovered layers: layouts, attributes, warnings."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from precond_lab.capture import LayoutWarning, as_apply, capture_from_fn, capture_model
from precond_lab.capture.layout import preset_row_axes
from precond_lab.schema import KFAC_ACTIVATIONS, KFAC_BACKPROPS, Kind


def _identity(node, kind="gradients"):
    a, d = node[KFAC_ACTIVATIONS].values, node[KFAC_BACKPROPS[Kind.GRADIENTS]].values
    g = np.einsum("nm,nk->nmk", d, a) if a.ndim == 2 else np.einsum("nrm,nrk->nmk", d, a)
    np.testing.assert_allclose(g, node[kind].values, rtol=1e-10, atol=1e-12)


def test_capture_model_flax_nnx_kernel_is_out_by_in():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Sequential(
        nnx.Linear(5, 4, rngs=nnx.Rngs(0)), jnp.tanh, nnx.Linear(4, 3, rngs=nnx.Rngs(1))
    )
    model = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), model)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 5)), rng.integers(0, 3, 20)
    tree = capture_model(
        model,
        x,
        y,
        loss="cross_entropy",
        targets=["gradients", "kfac"],
        storage="dense",
        num_samples=6,
        batch_size=4,
    )
    node = tree["step_000000/layers/0/kernel/value"]
    assert node["gradients"].shape == (6, 4, 5)  # (out, in): the kernel is (in, out)
    assert node.attrs["row_axes"] == "1"
    assert node.attrs["matrix_meaning"] == "rows = axes (1,) [4], cols = axes (0,) [5] -> 4x5"
    _identity(node)
    bias = tree["step_000000/layers/0/bias/value"]
    assert bias["gradients"].shape == (6, 4, 1)
    _identity(bias)


def test_capture_model_equinox_cnn():
    eqx = pytest.importorskip("equinox")
    key = jax.random.PRNGKey(0)
    model = eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(2, 3, 3, key=key),
            eqx.nn.Lambda(lambda h: h.mean(axis=(1, 2))),
            eqx.nn.Linear(3, 2, key=key),
        ]
    )
    model = jax.tree_util.tree_map(
        lambda v: jnp.asarray(v, jnp.float64) if eqx.is_array(v) else v, model
    )
    assert as_apply(model)[2] == "torch"
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((12, 2, 5, 5)), rng.standard_normal((12, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)  # discovered: nothing is guessed
        tree = capture_model(
            model,
            x,
            y,
            loss="mse",
            targets=["gradients", "kfac"],
            storage="dense",
            num_samples=4,
            batch_size=4,
        )
    node = tree["step_000000/layers/0/weight"]
    assert node["gradients"].shape == (4, 3, 18)  # OIHW → out × (in·kh·kw)
    assert node[KFAC_ACTIVATIONS].dims == ("sample", "position", "in")
    _identity(node)
    _identity(tree["step_000000/layers/0/bias"])  # a (3, 1, 1) bias → 3 × 1


def test_guessed_layout_warns_and_presets_decide():
    rng = np.random.default_rng(2)
    params = {"k": jnp.asarray(rng.standard_normal((3, 3, 2, 4)))}

    def loss_fn(p, batch):
        return jnp.mean((jnp.einsum("bhwc,ijcd->bd", batch[0], p["k"]) - batch[1]) ** 2)

    x, y = rng.standard_normal((8, 3, 3, 2)), rng.standard_normal((8, 4))
    kw = dict(loss_fn=loss_fn, num_samples=4, batch_size=4)
    with pytest.warns(LayoutWarning, match="'k' of shape \\(3, 3, 2, 4\\): layout guessed"):
        capture_from_fn(params, x, y, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        capture_from_fn(params, x, y, row_axes={"k": (3,)}, **kw)
    assert preset_row_axes((3, 3, 2, 4), "flax") == (3,)
    assert preset_row_axes((4, 2, 3, 3), "torch") == (0,)
    assert preset_row_axes((4,), "flax") is None
    with pytest.raises(ValueError, match="unknown layout"):
        preset_row_axes((4, 4), "tf")


def test_contradicting_override_and_missing_params_raise():
    params = {"w": jnp.ones((4, 3))}
    x, y = np.ones((6, 4)), np.zeros(6, np.int64)

    def apply_fn(p, xb):
        return xb @ p["w"]

    with pytest.raises(ValueError, match="contradict its dense layer"):
        capture_from_fn(
            params,
            x,
            y,
            apply_fn=apply_fn,
            loss="cross_entropy",
            targets=["kfac"],
            row_axes={"w": (0,)},
            num_samples=2,
            batch_size=2,
        )
    with pytest.raises(ValueError, match="needs params="):
        as_apply(apply_fn)


def test_capture_model_flax_linen():
    linen = pytest.importorskip("flax.linen")

    class MLP(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(3)(jnp.tanh(linen.Dense(4)(x)))

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((12, 5)), rng.integers(0, 3, 12)
    model = MLP()
    variables = model.init(jax.random.PRNGKey(0), x[:1])
    variables = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), variables)
    assert as_apply(model, variables)[2] == "flax"
    tree = capture_model(
        model,
        x,
        y,
        loss="cross_entropy",
        params=variables,
        targets=["gradients", "kfac"],
        storage="dense",
        num_samples=4,
        batch_size=4,
    )
    node = tree["step_000000/params/Dense_1/kernel"]  # created second: the inner layer
    assert node["gradients"].shape == (4, 4, 5)
    _identity(node)
    with pytest.raises(ValueError, match="needs params="):
        capture_model(model, x, y, loss="cross_entropy")
