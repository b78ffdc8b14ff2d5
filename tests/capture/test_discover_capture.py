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


# ------------------------------------------------------------------ issue 23, item 5


def test_flax_linen_batch_stats_are_neither_captured_nor_trained():
    """The variables' batch_stats were captured as layers and moved by training steps."""
    linen = pytest.importorskip("flax.linen")

    class BNNet(linen.Module):
        @linen.compact
        def __call__(self, x):
            h = linen.BatchNorm(use_running_average=True)(linen.Dense(4)(x))
            return linen.Dense(3)(jnp.tanh(h))

    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    model = BNNet()
    variables = model.init(jax.random.PRNGKey(0), x[:1])
    variables = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64) + 0.5, variables)
    _, diff, _ = as_apply(model, variables)
    assert set(diff) == {"params"}  # batch_stats held fixed, outside the differentiated tree
    tree = capture_model(
        model, x, y, loss="cross_entropy", params=variables, steps=[0, 3], num_samples=4,
        batch_size=4, storage="dense",
    )  # fmt: skip
    layers = tree.attrs["layers"].split(",")
    assert layers and all(p.startswith("params/") for p in layers), layers
    assert "params/Dense_0/kernel" in layers
    assert not any("batch_stats" in p for p in layers)
    # the captured function is the model with its running statistics, and training moved
    # only the parameters
    apply_fn, params, _ = as_apply(model, variables)
    np.testing.assert_allclose(apply_fn(params, x[:2]), model.apply(variables, x[:2]), rtol=1e-12)
    w0 = tree["step_000000/params/Dense_0/kernel"]["param"].values
    w3 = tree["step_000003/params/Dense_0/kernel"]["param"].values
    assert not np.allclose(w0, w3)


def test_flax_nnx_batchnorm_in_training_mode_says_call_eval():
    nnx = pytest.importorskip("flax.nnx")
    from precond_lab.errors import UnsupportedModelError

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(5, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.l2 = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return self.l2(jnp.tanh(self.bn(self.l1(x))))

    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    net = Net(nnx.Rngs(0))
    net = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), net)
    for targets in (["gradients"], ["gradients", "kfac"]):
        with pytest.raises(UnsupportedModelError, match=r"call `model\.eval\(\)`"):
            capture_model(net, x, y, loss="cross_entropy", targets=targets, num_samples=4,
                          batch_size=4)  # fmt: skip
    net.eval()
    tree = capture_model(
        net, x, y, loss="cross_entropy", targets=["gradients"], num_samples=4, batch_size=4
    )
    assert "step_000000" in tree.children


def test_a_weight_used_twice_gets_gradients_and_ggn_not_kfac():
    """``tanh(W tanh(W x))`` with K-FAC targets refused the whole capture."""
    from precond_lab.capture import KFACSkippedWarning

    rng = np.random.default_rng(6)
    params = {"W": rng.standard_normal((4, 4)) / 2, "V": rng.standard_normal((4, 3))}

    def apply(p, xb):
        return jnp.tanh(jnp.tanh(xb @ p["W"]) @ p["W"]) @ p["V"]

    x, y = rng.standard_normal((12, 4)), rng.integers(0, 3, 12)
    with pytest.warns(KFACSkippedWarning, match=r"layer 'W': no K-FAC targets, used by 2"):
        tree = capture_from_fn(
            params, x, y, apply_fn=apply, loss="cross_entropy",
            targets=["kfac", "kfac-ggn"], num_samples=5, batch_size=4, storage="dense",
        )  # fmt: skip
    assert "used by 2 dense/conv operations" in tree.attrs["kfac_skipped"]
    w, v = tree["step_000000/W"], tree["step_000000/V"]
    assert {"gradients", "ggn"} <= set(w.dataset.data_vars)
    assert KFAC_ACTIVATIONS not in w.dataset and KFAC_ACTIVATIONS in v.dataset
    # the per-example gradient of the tied weight is the total over both uses, rows = out
    idx = tree["step_000000"]["sample"].values

    def loss_i(p, xi, yi):
        return -jax.nn.log_softmax(apply(p, xi[None])[0])[yi]

    want = np.stack([jax.grad(loss_i)(params, x[i], y[i])["W"].T for i in idx])
    np.testing.assert_allclose(w["gradients"].values, want, rtol=1e-10, atol=1e-12)


def test_node_gradients_of_a_factored_layer_is_rebuilt_lazily(tmp_path):
    """``node["gradients"]`` raised a bare KeyError for a dense kernel stored as factors."""
    from precond_lab import schema

    rng = np.random.default_rng(7)
    params = {"W": rng.standard_normal((6, 5)), "V": rng.standard_normal((5, 3))}
    x, y = rng.standard_normal((12, 6)), rng.integers(0, 3, 12)
    for out in (None, tmp_path / "s.zarr"):
        tree = capture_from_fn(
            params, x, y, apply_fn=lambda p, xb: jnp.tanh(xb @ p["W"]) @ p["V"],
            loss="cross_entropy", targets=["gradients"], storage="factored", num_samples=5,
            batch_size=4, out=out,
        )  # fmt: skip
        node = tree["step_000000/W"]
        assert "gradients" not in node.dataset  # stored as factors
        g = node["gradients"]
        assert g.shape == (5, 5, 6) and g.attrs["storage"] == "factored"
        np.testing.assert_array_equal(g.values, schema.layer_samples(node, "gradients").values)
        _identity(node)
        with pytest.raises(KeyError):
            node["ggn"]  # not captured at all: still a KeyError
