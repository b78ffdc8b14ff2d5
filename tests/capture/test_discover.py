"""Layer discovery: K-FAC factors found in the jaxpr of plain JAX, Flax NNX and Equinox models.

Checks: (1) on the built-in models wrapped as plain JAX functions, the discovered layers
and factors equal the Tape-based capture bitwise-close; (2) on Flax NNX and Equinox MLPs and
CNNs, ``G = Σ_r δ_r a_rᵀ`` holds for every per-example gradient and GGN pseudo-gradient
(so the layout, the patch order and the bias are right); (3) on deep linear networks
with a squared loss, where K-FAC is exact, ``E[Σ_c δδᵀ] ⊗ E[aaᵀ]`` equals the dense GGN
block from ``jax.jacfwd``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from precond_lab.capture import load_dataset, make_model, per_example_loss
from precond_lab.capture.discover import discover, kfac_model
from precond_lab.capture.layout import flat_params, merge_params, to_matrix
from precond_lab.capture.per_example import Request, make_capture_fn, run_chunked
from precond_lab.schema import KFAC_ACTIVATIONS, KFAC_BACKPROPS, Kind

ALL = frozenset({"gradients", "ggn", "ggn-mc", "kfac", "kfac-ggn", "kfac-mc"})
GRAD_KINDS = {"gradients": KFAC_BACKPROPS[Kind.GRADIENTS], "ggn": KFAC_BACKPROPS[Kind.GGN]}


def _run(model, params, x, y, layers, rows=None, targets=ALL):
    req = Request(tuple(layers), frozenset(targets), 3, rows or {})
    keys = jax.random.split(jax.random.PRNGKey(1), len(x))
    return run_chunked(make_capture_fn(model, params, req), params, x, y, keys, len(x))


def _layers_and_rows(dm):
    layers, rows = [], {}
    for lay in dm.layers:
        layers.append(lay.weight)
        rows[lay.weight] = lay.row_axes
        if lay.bias is not None:
            layers.append(lay.bias)
            rows[lay.bias] = tuple(range(np.ndim(flat_params(dm.init(None))[lay.bias])))
    return layers, rows


@pytest.mark.parametrize(
    "name,dataset,opts",
    [
        ("mlp", "digits", {"hidden": (8,)}),
        ("cnn", "mnist1d", {"channels": (3, 4), "kernel": 5, "stride": 2}),
        ("transformer", "stdlib-chars", {"width": 8, "heads": 2}),
    ],
)
def test_discovered_factors_equal_tape_capture(name, dataset, opts):
    ds = load_dataset(dataset)
    model = make_model(name, ds, dtype="float64", **opts)
    params = model.init(jax.random.PRNGKey(0))
    x = ds.x_train[:4]
    x = x.astype(np.float64) if x.dtype.kind == "f" else x
    y = ds.y_train[:4]

    def apply_fn(p, xb):
        return jax.vmap(lambda xi: model.apply(p, xi, None))(xb)

    dm = kfac_model(apply_fn, params, x, model.loss)
    assert [lay.name for lay in dm.layers] == [f"{n}/w" for n in model.tape_layers]
    assert all(lay.bias == f"{n}/b" for lay, n in zip(dm.layers, model.tape_layers, strict=True))
    layers, _ = _layers_and_rows(dm)
    targets = ALL if name == "mlp" else ALL - {"ggn-mc", "kfac-mc"}  # MC: same code path
    ref = _run(model, params, x, y, layers, targets=targets)
    got = _run(dm, params, x, y, layers, targets=targets)
    for p in layers:
        assert set(got[p]) == set(ref[p])
        for k in ref[p]:
            np.testing.assert_allclose(got[p][k], ref[p][k], rtol=1e-12, atol=1e-12)


def _check_identity(dm, params, x, y):
    layers, rows = _layers_and_rows(dm)
    res = _run(dm, params, x, y, layers, rows, ALL - {"ggn-mc", "kfac-mc"})
    for p in layers:
        a = res[p][KFAC_ACTIVATIONS]
        if a.ndim == 2:
            a = a[:, None]
        for kind, var in GRAD_KINDS.items():
            d = res[p][var]
            d = d[:, None] if kind == "gradients" else d  # (N, C, [P,] m)
            if d.ndim == 3:
                d = d[:, :, None]
            g = np.einsum("ncrm,nrk->ncmk", d, a)
            want = res[p][kind][:, None] if kind == "gradients" else res[p][kind]
            scale = np.max(np.abs(want))
            assert scale > 0
            np.testing.assert_allclose(g, want, rtol=0, atol=1e-12 * scale)
    return layers


def test_flax_nnx_mlp_and_cnn_identity():
    nnx = pytest.importorskip("flax.nnx")

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(2, 3, (3, 3), strides=(2, 1), padding="SAME", rngs=rngs)
            self.c2 = nnx.Conv(3, 4, (2, 3), padding="VALID", rngs=rngs)
            self.head = nnx.Linear(4, 5, rngs=rngs)

        def __call__(self, x):
            h = jax.nn.relu(self.c2(jax.nn.relu(self.c1(x))))
            return self.head(h.mean(axis=(1, 2)))

    mlp = nnx.Sequential(
        nnx.Linear(6, 7, rngs=nnx.Rngs(0)), jnp.tanh, nnx.Linear(7, 3, rngs=nnx.Rngs(1))
    )
    rng = np.random.default_rng(0)
    for module, x in (
        (mlp, rng.standard_normal((5, 6))),
        (CNN(nnx.Rngs(2)), rng.standard_normal((5, 7, 6, 2))),
    ):
        graphdef, state = nnx.split(module)
        state = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), state)

        def apply_fn(s, xb, graphdef=graphdef):
            return nnx.merge(graphdef, s)(xb)

        y = rng.integers(0, 3, len(x))
        dm = kfac_model(apply_fn, state, x, "cross_entropy")
        layers = _check_identity(dm, state, x, y)
        assert all(
            lay.row_axes == (np.ndim(flat_params(state)[lay.weight]) - 1,) for lay in dm.layers
        )  # Flax: rows = the last (output) axis
        assert len(layers) == 2 * len(dm.layers)  # every bias found


def test_equinox_mlp_and_cnn_identity():
    eqx = pytest.importorskip("equinox")
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    cnn = eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(2, 3, (3, 2), stride=(1, 2), key=keys[0]),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Conv2d(3, 4, 2, padding=1, dilation=2, key=keys[1]),
            eqx.nn.Lambda(lambda h: h.mean(axis=(1, 2))),
            eqx.nn.Linear(4, 3, key=keys[2]),
        ]
    )
    mlp = eqx.nn.MLP(6, 3, 5, 2, activation=jnp.tanh, key=keys[3])
    rng = np.random.default_rng(1)
    for module, x in ((mlp, rng.standard_normal((5, 6))), (cnn, rng.standard_normal((5, 2, 7, 8)))):
        module = jax.tree_util.tree_map(
            lambda v: jnp.asarray(v, jnp.float64) if eqx.is_array(v) else v, module
        )
        params, static = eqx.partition(module, eqx.is_array)

        def apply_fn(p, xb, static=static):
            return jax.vmap(eqx.combine(p, static))(xb)

        y = rng.standard_normal((len(x), 3))
        dm = kfac_model(apply_fn, params, x, "mse")
        layers = _check_identity(dm, params, x, y)
        assert all(lay.row_axes == (0,) for lay in dm.layers)  # Equinox: (out, in[, k…])
        assert len(layers) == 2 * len(dm.layers)


def _dense_ggn(apply_fn, params, x, path, rows, loss):
    leaf = flat_params(params)[path]

    def one(xi):
        def f(w):
            return apply_fn(merge_params(params, {path: w}), xi[None])[0]

        out = f(leaf)
        jac = to_matrix(jax.jacfwd(f)(leaf), 1, leaf.shape, rows).reshape(out.shape[0], -1)
        lam = jax.hessian(lambda o: per_example_loss(loss, o, jnp.zeros_like(o)))(out)
        return jac.T @ lam @ jac

    return np.asarray(jax.vmap(one)(x).mean(axis=0))


def _kfac_dense(res, path):
    a = res[path][KFAC_ACTIVATIONS]
    d = res[path][KFAC_BACKPROPS[Kind.GGN]]
    left = np.einsum("ncm,nck->mk", d, d) / len(a)
    right = np.einsum("nm,nk->mk", a, a) / len(a)
    return np.kron(left, right)


@pytest.mark.parametrize("framework", ["jax", "flax", "equinox"])
def test_kfac_exact_on_deep_linear_networks(framework):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 4))
    if framework == "jax":
        params = {"a": rng.standard_normal((4, 5)), "b": rng.standard_normal((3, 5))}

        def apply_fn(p, xb):
            return (xb @ p["a"]) @ p["b"].T  # (in, out) and (out, in) weights

    elif framework == "flax":
        nnx = pytest.importorskip("flax.nnx")
        module = nnx.Sequential(
            nnx.Linear(4, 5, rngs=nnx.Rngs(0)), nnx.Linear(5, 3, use_bias=False, rngs=nnx.Rngs(1))
        )
        graphdef, params = nnx.split(module)
        params = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), params)

        def apply_fn(s, xb):
            return nnx.merge(graphdef, s)(xb)

    else:
        eqx = pytest.importorskip("equinox")
        module = eqx.nn.MLP(4, 3, 5, 2, activation=lambda h: h, key=jax.random.PRNGKey(0))
        module = jax.tree_util.tree_map(
            lambda v: jnp.asarray(v, jnp.float64) if eqx.is_array(v) else v, module
        )
        params, static = eqx.partition(module, eqx.is_array)

        def apply_fn(p, xb):
            return jax.vmap(eqx.combine(p, static))(xb)

    dm = kfac_model(apply_fn, params, x, "mse")
    weights = [lay for lay in dm.layers]
    assert len(weights) == (2 if framework != "equinox" else 3)
    rows = {lay.weight: lay.row_axes for lay in weights}
    y = rng.standard_normal((len(x), 3))
    res = _run(dm, params, x, y, list(rows), rows, {"kfac-ggn", "ggn"})
    for lay in weights:
        ref = _dense_ggn(apply_fn, params, x, lay.weight, lay.row_axes, "mse")
        got = _kfac_dense(res, lay.weight)
        assert np.linalg.norm(got - ref) <= 1e-10 * np.linalg.norm(ref)
        # the captured GGN pseudo-gradients give the same exact block
        b = res[lay.weight]["ggn"].reshape(len(x), 3, -1)
        exact = np.einsum("ncp,ncq->pq", b, b) / len(x)
        assert np.linalg.norm(exact - ref) <= 1e-10 * np.linalg.norm(ref)


def test_kfac_not_exact_with_a_nonlinearity():
    """The linear-network check can fail: with tanh, K-FAC differs from the GGN block."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 4))
    params = {"a": rng.standard_normal((4, 5)), "b": rng.standard_normal((3, 5))}

    def apply_fn(p, xb):
        return jnp.tanh(xb @ p["a"]) @ p["b"].T

    dm = kfac_model(apply_fn, params, x, "mse")
    lay = dm.layers[0]
    res = _run(dm, params, x, rng.standard_normal((9, 3)), ["a"], {"a": (1,)}, {"kfac-ggn"})
    ref = _dense_ggn(apply_fn, params, x, "a", (1,), "mse")
    assert lay.row_axes == (1,)
    assert np.linalg.norm(_kfac_dense(res, "a") - ref) > 1e-3 * np.linalg.norm(ref)


def test_discover_reports_layers_and_rejects_tied_weights():
    w = jnp.ones((4, 3))
    layers = discover(
        lambda p, xb: xb @ p["w"] + p["b"], {"w": w, "b": jnp.ones(3)}, jnp.ones((2, 4))
    )
    assert [(lay.kind, lay.weight, lay.bias, lay.matrix_shape) for lay in layers] == [
        ("dense", "w", "b", (3, 4))
    ]
    assert "rows = output axes (1,)" in layers[0].meaning
    # a weight used twice has no K-FAC factors: not a layer, recorded as skipped
    tied = {"w": jnp.ones((4, 4)), "v": jnp.ones((4, 2))}
    tied_fn = lambda p, xb: jnp.tanh(jnp.tanh(xb @ p["w"]) @ p["w"]) @ p["v"]  # noqa: E731
    assert [lay.weight for lay in discover(tied_fn, tied, jnp.ones((2, 4)))] == ["v"]
    dm = kfac_model(tied_fn, tied, jnp.ones((2, 4)), "mse")
    assert [p for p, _ in dm.kfac_skipped] == ["w"] and dict(dm.skipped_row_axes) == {"w": (1,)}
    with pytest.raises(ValueError, match=r"no dense .* used once .*w: used by 2"):
        kfac_model(
            lambda p, xb: (xb @ p["w"]) @ p["w"], {"w": jnp.ones((4, 4))}, jnp.ones((2, 4)), "mse"
        )
    with pytest.raises(ValueError, match="no dense"):
        kfac_model(lambda p, xb: xb * p["s"], {"s": jnp.ones(4)}, jnp.ones((2, 4)), "mse")


def test_multi_axis_weight_with_positions_identity():
    """An attention-style ``(d, heads, d_head)`` kernel over tokens: rows = (heads, d_head)."""
    rng = np.random.default_rng(4)
    params = {"qkv": rng.standard_normal((4, 2, 3)), "out": rng.standard_normal((6, 3))}

    def apply_fn(p, xb):  # xb: (B, T, d)
        h = jnp.tanh(jnp.einsum("btd,dhk->bthk", xb, p["qkv"]))
        return jnp.einsum("bthk,hkc->bc", h, p["out"].reshape(2, 3, 3))

    x = rng.standard_normal((5, 7, 4))
    dm = kfac_model(apply_fn, params, x, "cross_entropy")
    lay = {la.weight: la for la in dm.layers}
    assert lay["qkv"].row_axes == (1, 2) and lay["qkv"].matrix_shape == (6, 4)
    assert lay["qkv"].positions == 7
    assert "out" not in lay  # used through a reshape: not a plain weight, left out
    _check_identity(dm, params, x, rng.integers(0, 3, 5))
