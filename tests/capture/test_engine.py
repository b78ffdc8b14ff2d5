"""Per-example gradients, GGN pseudo-gradients and K-FAC factors against dense references."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from precond_lab.capture import hessian_sqrt, load_dataset, make_model, per_example_loss
from precond_lab.capture.data import from_arrays
from precond_lab.capture.layout import flat_params, merge_params, to_matrix
from precond_lab.capture.per_example import Request, make_capture_fn, run_chunked
from precond_lab.targets import SampleTarget

ALL = frozenset({"gradients", "ggn", "ggn-mc", "kfac", "kfac-ggn", "kfac-mc"})


def _setup(model_name, dataset, n, **opts):
    ds = load_dataset(dataset) if isinstance(dataset, str) else dataset
    model = make_model(model_name, ds, dtype="float64", **opts)
    params = model.init(jax.random.PRNGKey(0))
    x = ds.x_train[:n]
    x = x.astype(np.float64) if x.dtype.kind == "f" else x
    y = ds.y_train[:n].astype(np.float64) if ds.loss == "mse" else ds.y_train[:n]
    return model, params, x, y


def _run(model, params, x, y, layers, targets=ALL, k=3, chunk=64):
    fn = make_capture_fn(model, params, Request(tuple(layers), frozenset(targets), k))
    keys = jax.random.split(jax.random.PRNGKey(1), len(x))
    return run_chunked(fn, params, x, y, keys, chunk)


def _batch_loss(model, params, x, y):
    f = jax.vmap(lambda xi: model.apply(params, xi, None))(x)
    return jnp.mean(jax.vmap(lambda fi, yi: per_example_loss(model.loss, fi, yi))(f, y))


def _dense_ggn(model, params, x, y, path):
    """(1/N) Σ_i J_iᵀ Λ_i J_i for one parameter, with jacfwd and jax.hessian (jitted, vmapped)."""
    leaf = flat_params(params)[path]

    @jax.jit
    def one(xi, yi):
        def f(w):
            return model.apply(merge_params(params, {path: w}), xi, None)

        out = f(leaf)
        jac = to_matrix(jax.jacfwd(f)(leaf), 1, leaf.shape, (0,)).reshape(out.shape[0], -1)
        lam = jax.hessian(lambda o: per_example_loss(model.loss, o, yi))(out)
        return jac.T @ lam @ jac

    return np.asarray(jax.vmap(one)(x, y).mean(axis=0))


CASES = {
    "mlp-digits": ("mlp", "digits", {"hidden": (8,)}, ["layers/0/w", "layers/0/b", "layers/1/w"]),
    "mlp-teacher": ("mlp", "teacher", {"hidden": (6,)}, ["layers/0/w", "layers/1/w", "layers/1/b"]),
    "cnn-mnist1d": (
        "cnn",
        "mnist1d",
        {"channels": (3, 4), "kernel": 5, "stride": 2},
        ["convs/0/w", "convs/1/w", "convs/1/b", "head/w"],
    ),
    "transformer": (
        "transformer",
        "stdlib-chars",
        {"width": 8, "heads": 2},
        ["blocks/0/q/w", "blocks/0/proj/w", "blocks/0/v/b", "head/w"],
    ),
}


@functools.cache
def _case(name):
    model_name, dataset, opts, layers = CASES[name]
    model, params, x, y = _setup(model_name, dataset, 5, **opts)
    return name, model, params, x, y, layers, _run(model, params, x, y, layers, chunk=2)


@pytest.fixture(params=list(CASES))
def case(request, x64):
    """One model with every target computed once per process on 5 examples (chunks of 2)."""
    return _case(request.param)


@pytest.mark.parametrize("kind", ["cross_entropy", "mse"])
def test_hessian_sqrt_squares_to_loss_hessian(kind):
    f = jnp.asarray(np.random.default_rng(0).standard_normal(7))
    y = jnp.asarray(3) if kind == "cross_entropy" else jnp.ones(7)
    s = hessian_sqrt(kind, f)
    lam = jax.hessian(lambda o: per_example_loss(kind, o, y))(f)
    np.testing.assert_allclose(s @ s.T, lam, atol=1e-14)


def test_per_example_gradients_average_to_batch_gradient(case):
    name, model, params, x, y, layers, res = case
    grads = flat_params(jax.jit(jax.grad(lambda p: _batch_loss(model, p, x, y)))(params))
    for p in layers:
        g = grads[p]
        ref = np.asarray(to_matrix(g, 0, g.shape, (0,)))
        assert res[p]["gradients"].shape == (len(x), *ref.shape)
        assert np.abs(ref).max() > 1e-8
        np.testing.assert_allclose(res[p]["gradients"].mean(0), ref, atol=1e-10, rtol=0)
    losses = jax.vmap(lambda xi, yi: per_example_loss(model.loss, model.apply(params, xi), yi))(
        x, y
    )
    np.testing.assert_allclose(res["loss"], losses, atol=1e-12)


def test_exact_ggn_pseudo_gradients_match_dense_ggn(case):
    name, model, params, x, y, layers, res = case
    path = layers[1]
    b = res[path]["ggn"]
    assert b.shape[1] == model.apply(params, x[0]).shape[0]
    flat = b.reshape(-1, b.shape[-2] * b.shape[-1])
    ours = flat.T @ flat / len(x)
    ref = _dense_ggn(model, params, x, y, path)
    assert np.abs(ref).max() > 1e-6
    np.testing.assert_allclose(ours, ref, atol=1e-10, rtol=0)
    # library convention: a (sample, class, row, col) DataArray is N·C samples of weight 1/N
    import xarray as xr

    da = xr.DataArray(b, dims=("sample", "class", "row", "col"))
    np.testing.assert_allclose(SampleTarget(da).to_dense(), ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dataset", ["digits", "teacher"])
def test_mc_pseudo_gradients_converge_to_exact_ggn(dataset):
    """Relative Frobenius error of the MC Fisher shrinks like 1/√k (fixed seed, so deterministic).

    Tolerance: with k = 2048 the expected relative error is ≈ O(1)/√k ≈ 0.02–0.07; we require
    < 0.15 and at least a 4× improvement over k = 8 (expected ≈ 16×).
    """
    model, params, x, y = _setup("mlp", dataset, 3, hidden=(4,))
    path = "layers/0/w"
    exact = _run(model, params, x, y, [path], {"ggn"})[path]["ggn"]
    ref = np.einsum("ncij,nckl->ijkl", exact, exact) / len(x)
    errs = {}
    for k in (8, 2048):
        mc = _run(model, params, x, y, [path], {"ggn-mc"}, k=k)[path]["ggn_mc"]
        assert mc.shape[1] == k
        est = np.einsum("ncij,nckl->ijkl", mc, mc) / len(x)  # pre-divided by √k
        errs[k] = np.linalg.norm(est - ref) / np.linalg.norm(ref)
    assert errs[2048] < 0.15, errs
    assert errs[2048] < errs[8] / 4, errs


def test_kfac_factors_reproduce_gradients_and_pseudo_gradients(case):
    """G = Σ_r δ_r a_rᵀ exactly, for real-label, exact-GGN and sampled cotangents."""
    name, model, params, x, y, layers, res = case
    for p in layers:
        r = res[p]
        a = r["kfac_activations"]
        shared = a.ndim == 3
        assert shared == (name.startswith(("cnn", "transformer")) and p != "head/w")
        eq = "nrp,nrq->npq" if shared else "np,nq->npq"
        eqk = "nkrp,nrq->nkpq" if shared else "nkp,nq->nkpq"
        np.testing.assert_allclose(
            np.einsum(eq, r["kfac_backprops"], a), r["gradients"], atol=1e-12
        )
        np.testing.assert_allclose(np.einsum(eqk, r["kfac_backprops_ggn"], a), r["ggn"], atol=1e-12)
        np.testing.assert_allclose(
            np.einsum(eqk, r["kfac_backprops_mc"], a), r["ggn_mc"], atol=1e-12
        )
        if p.endswith("/b"):
            assert a.shape[-1] == 1 and np.all(a == 1)


def _kron_factors(delta, a):
    """(Σ_c δδᵀ, aaᵀ) for one example without sharing."""
    return np.einsum("cp,cq->pq", delta, delta), np.outer(a, a)


def test_kfac_exact_for_single_linear_layer_one_example():
    ds = from_arrays(
        np.random.default_rng(0).standard_normal((1, 5)), np.array([2]), loss="cross_entropy"
    )
    ds = dataclasses.replace(ds, output_dim=4)
    model, params, x, y = _setup("mlp", ds, 1, hidden=())
    res = _run(model, params, x, y, ["layers/0/w"], {"kfac-ggn"})["layers/0/w"]
    left, right = _kron_factors(res["kfac_backprops_ggn"][0], res["kfac_activations"][0])
    ref = _dense_ggn(model, params, x, y, "layers/0/w")
    np.testing.assert_allclose(np.kron(left, right), ref, atol=1e-12)


def test_kfac_exact_for_deep_linear_network_squared_error_one_example():
    rng = np.random.default_rng(1)
    ds = from_arrays(rng.standard_normal((1, 6)), rng.standard_normal((1, 3)), loss="mse")
    model, params, x, y = _setup("mlp", ds, 1, hidden=(5, 4), activation="linear")
    layers = ["layers/0/w", "layers/1/w", "layers/2/w"]
    res = _run(model, params, x, y, layers, {"kfac-ggn"})
    for p in layers:
        left, right = _kron_factors(res[p]["kfac_backprops_ggn"][0], res[p]["kfac_activations"][0])
        ref = _dense_ggn(model, params, x, y, p)
        assert np.abs(ref).max() > 1e-3
        np.testing.assert_allclose(np.kron(left, right), ref, atol=1e-12)


def _expand_reduce(a, d):
    """K-FAC expand / reduce factors (K-FAC's two sides) with weights 1/N, in numpy."""
    n, r = a.shape[0], a.shape[1]
    expand = (np.einsum("nrp,nrq->pq", a, a) / (n * r), np.einsum("ncrp,ncrq->pq", d, d) / n)
    ah, dh = a.mean(axis=1), d.sum(axis=2)
    reduce = (np.einsum("np,nq->pq", ah, ah) / n, np.einsum("ncp,ncq->pq", dh, dh) / n)
    return expand, reduce


def test_expand_and_reduce_on_weight_shared_conv():
    """Constant image, so every patch is equal: reduce is exact for one example, expand not."""
    ds = from_arrays(np.full((1, 1, 6, 6), 0.7), np.array([3]), loss="cross_entropy")
    ds = dataclasses.replace(ds, output_dim=5)
    model, params, x, y = _setup("cnn", ds, 1, channels=(3,))
    p = "convs/0/w"
    res = _run(model, params, x, y, [p], {"kfac-ggn", "ggn"})[p]
    a, d = res["kfac_activations"], res["kfac_backprops_ggn"]
    assert a.shape[1] == 16 and np.allclose(a, a[:, :1])
    (ea, eg), (ra, rg) = _expand_reduce(a, d)
    flat = res["ggn"].reshape(res["ggn"].shape[1], -1)
    ggn = flat.T @ flat
    np.testing.assert_allclose(np.kron(rg, ra), ggn, atol=1e-12)
    # all positions are identical here (δ_r = δ, a_r = a), so expand's Σ_r δ_r δ_rᵀ = R δδᵀ
    # while the true factor is (Σ_r δ_r)(Σ_r δ_r)ᵀ = R² δδᵀ: expand is low by exactly R
    r = a.shape[1]
    np.testing.assert_allclose(np.kron(eg, ea) * r, ggn, atol=1e-12)
    assert not np.allclose(np.kron(eg, ea), ggn)


def test_expand_and_reduce_match_estimator_if_available():
    est = pytest.importorskip("precond_lab.estimators")
    if not hasattr(est, "kfac"):
        pytest.skip("precond_lab.estimators.kfac not implemented yet")
    import xarray as xr

    model, params, x, y = _setup("cnn", "digits", 3, channels=(2,))
    p = "convs/0/w"
    res = _run(model, params, x, y, [p], {"kfac-ggn"})[p]
    a = xr.DataArray(res["kfac_activations"], dims=("sample", "position", "in"))
    d = xr.DataArray(res["kfac_backprops_ggn"], dims=("sample", "class", "position", "out"))
    (ea, eg), (ra, rg) = _expand_reduce(res["kfac_activations"], res["kfac_backprops_ggn"])
    for variant, (fa, fg) in (("expand", (ea, eg)), ("reduce", (ra, rg))):
        out = est.kfac(a, d, variant=variant)
        left, right = (out.left, out.right) if hasattr(out, "left") else out
        np.testing.assert_allclose(np.kron(left, right), np.kron(fg, fa), rtol=1e-8, atol=1e-12)
