"""Factored storage of per-example targets: ``capture(storage="auto" | "dense" | "factored")``.

Every comparison is against a dense-stored capture of the same run (float64).
"""

import functools

import numpy as np
import pytest
import zarr

from precond_lab import estimators as est
from precond_lab import metrics as met
from precond_lab import schema
from precond_lab.capture import StoreError, capture, layer_target, open_capture, validate_store
from precond_lab.capture.integrity import CHECKSUM_CODECS
from precond_lab.capture.store import completed_steps
from precond_lab.targets import FactoredTarget, SampleTarget

KINDS = ("gradients", "ggn", "ggn_mc")
MODELS = {
    "mlp": ("digits", {"hidden": (6,)}, ["layers/0/w", "layers/1/w", "layers/1/b"]),
    "cnn": ("mnist1d", {"channels": (3, 4), "kernel": 5, "stride": 2}, ["convs/0/w", "head/w"]),
    "transformer": ("stdlib-chars", {"width": 8, "heads": 2}, ["blocks/0/q/w", "head/w"]),
}
BASE = dict(steps=[0], num_samples=6, mc_samples=2, dtype="float64", eval_samples=0)


@functools.cache
def _capture(model, storage, targets=("gradients", "ggn", "ggn-mc", "batch")):
    dataset, opts, layers = MODELS[model]
    return capture(
        model,
        dataset,
        targets=list(targets),
        layers=layers,
        model_options=opts,
        storage=storage,
        batch_sizes=(3,),
        **BASE,
    )


def _node(tree, layer, step=0):
    return tree[schema.step_name(step)][layer]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _positions(node):
    acts = node.dataset[schema.KFAC_ACTIVATIONS]
    return acts.sizes.get(schema.Dim.POSITION.value, 1)


@pytest.mark.parametrize("model", list(MODELS))
def test_factored_equals_dense_to_float_precision(model):
    """G = Σ_t δ_t a_tᵀ for every kind: the rebuilt factored samples equal the dense ones."""
    dense, fact = _capture(model, "dense"), _capture(model, "factored")
    for layer in MODELS[model][2]:
        nd, nf = _node(dense, layer), _node(fact, layer)
        for kind in KINDS:
            assert nd.attrs[schema.storage_attr(kind)] == "dense"
            assert nf.attrs[schema.storage_attr(kind)] == "factored"
            assert kind in nd.dataset and kind not in nf.dataset
            ref, got = schema.layer_samples(nd, kind), schema.layer_samples(nf, kind)
            assert got.dims == ref.dims and got.shape == ref.shape
            for c in ref.coords:
                np.testing.assert_array_equal(got[c].values, ref[c].values)
            assert _rel(got.values, ref.values) <= 1e-12, (layer, kind)
        batch = "batch_size_3"
        ref = nd[batch]["gradients"].values
        assert _rel(nf[batch]["gradients"].values, ref) <= 1e-12  # means from the factors
        assert schema.layer_kinds(nf) == schema.layer_kinds(nd)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_auto_factors_where_smaller(model):
    auto, dense = _capture(model, "auto"), _capture(model, "dense")
    for layer in MODELS[model][2]:
        na, nd = _node(auto, layer), _node(dense, layer)
        m, n = nd.attrs["rows"], nd.attrs["cols"]
        forms = {schema.layer_storage(na, k) for k in KINDS}
        if forms == {"factored"}:
            assert _positions(na) * (m + n) < m * n, layer
            assert not any(k in na.dataset for k in KINDS)
        else:
            assert forms == {"dense"}, (layer, forms)
            assert schema.KFAC_ACTIVATIONS not in na.dataset  # no K-FAC target asked for
        for kind in KINDS:
            assert na.attrs[schema.storage_attr(kind)] == schema.layer_storage(na, kind)
            ref = schema.layer_samples(nd, kind).values
            assert _rel(schema.layer_samples(na, kind).values, ref) <= 1e-12
    forms = {schema.layer_storage(_node(auto, p), "ggn") for p in MODELS[model][2]}
    assert "factored" in forms  # each model has at least one layer that factors
    if model == "mlp":
        assert forms == {"factored", "dense"}  # the bias (n = 1) never pays


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_layer_target_scores_agree_with_the_dense_capture(model):
    fact, dense = _capture(model, "factored"), _capture(model, "dense")
    for layer in MODELS[model][2]:
        for kind in KINDS:
            tf = layer_target(_node(fact, layer), kind)
            td = layer_target(_node(dense, layer), kind, prefer_factors=False)
            assert isinstance(tf, FactoredTarget) and isinstance(td, SampleTarget)
            lam = 1e-3 * float(td.trace()) / td.shape[0]
            tf, td = tf.damped(lam), td.damped(lam)
            for fit in (est.shampoo, est.diagonal):  # the same approximation, both targets
                approx = fit(td)
                sf, sd = met.score(tf, approx), met.score(td, approx)
                for name in ("cosine", "kl", "frobenius_scale"):  # well-conditioned
                    assert abs(float(sf[name]) - float(sd[name])) <= 1e-10 * max(
                        1.0, abs(float(sd[name]))
                    ), (layer, kind, name)
            for side in (0, 1):  # and the fits' statistics
                assert _rel(tf.second_moments()[side], td.second_moments()[side]) <= 1e-10
            # prefer_factors=False on a factored-only layer: the lazily rebuilt samples
            rebuilt = layer_target(_node(fact, layer), kind, prefer_factors=False)
            assert isinstance(rebuilt, SampleTarget)
            assert _rel(rebuilt.to_dense(), td.to_dense() - lam * np.eye(td.shape[0])) <= 1e-12


def test_rebuilt_samples_index_lazily():
    fact, dense = _capture("mlp", "factored"), _capture("mlp", "dense")
    got, ref = (schema.layer_samples(_node(t, "layers/0/w"), "ggn") for t in (fact, dense))
    assert got.attrs["storage"] == "factored"
    np.testing.assert_allclose(got[2:5, 1].values, ref[2:5, 1].values, rtol=1e-12, atol=0)
    np.testing.assert_allclose(got[3, :, 1:4, -1].values, ref[3, :, 1:4, -1].values, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(got.sel(sample=ref.sample[0])), ref[0], rtol=1e-12)


def _store(tmp_path, storage="factored", steps=(0, 2), **kw):
    out = tmp_path / f"{storage}.zarr"
    cfg = dict(BASE, steps=list(steps), model_options={"hidden": (4,)}, storage=storage)
    cfg.update(kw)
    capture("mlp", "digits", targets=["gradients", "ggn"], out=out, **cfg)
    return out


def test_store_round_trip_and_validation(tmp_path):
    out = _store(tmp_path)
    assert validate_store(out) == [0, 2]
    tree = open_capture(out)
    node = _node(tree, "layers/0/w", 2)
    assert schema.layer_storage(node, "ggn") == "factored"
    ref = _capture_mem(steps=(0, 2))
    g = schema.layer_samples(_node(ref, "layers/0/w", 2), "ggn").values
    assert _rel(schema.layer_samples(node, "ggn").values, g) <= 1e-12
    assert isinstance(layer_target(node, "ggn"), FactoredTarget)


@functools.cache
def _capture_mem(steps):
    cfg = dict(BASE, steps=list(steps), model_options={"hidden": (4,)}, storage="dense")
    return capture("mlp", "digits", targets=["gradients", "ggn"], **cfg)


def _layer_dir(out, step=2):
    return out / schema.step_name(step) / "layers" / "0" / "w"


def test_validation_catches_a_deleted_factor_array(tmp_path):
    out = _store(tmp_path)
    zarr.open_group(str(_layer_dir(out)), mode="r+").__delitem__(schema.KFAC_ACTIVATIONS)
    with pytest.raises(StoreError, match="missing variable 'kfac_activations'"):
        validate_store(out)


def test_validation_catches_reshaped_factors(tmp_path):
    out = _store(tmp_path)
    group = zarr.open_group(str(_layer_dir(out)), mode="r+")
    old = group[schema.KFAC_ACTIVATIONS]
    n, cols = old.shape
    del group[schema.KFAC_ACTIVATIONS]
    new = group.create_array(
        schema.KFAC_ACTIVATIONS,
        shape=(n, cols + 1),
        dtype=old.dtype,
        dimension_names=("sample", "in"),
        compressors=CHECKSUM_CODECS,
    )
    new[...] = np.ones((n, cols + 1))
    with pytest.raises(StoreError, match=r"stored factored but 'kfac_activations' has in = 65"):
        validate_store(out)


def test_validation_catches_a_corrupt_factor_chunk(tmp_path):
    out = _store(tmp_path)
    chunk = _layer_dir(out) / schema.KFAC_ACTIVATIONS / "c" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"kfac_activations: chunk c/0/0 .* is corrupt"):
        validate_store(out)


def test_validation_catches_a_factored_attribute_without_factors(tmp_path):
    out = _store(tmp_path, storage="dense")
    zarr.open_group(str(_layer_dir(out)), mode="r+").attrs["storage_ggn"] = "factored"
    with pytest.raises(StoreError, match="missing variable 'kfac_activations'"):
        validate_store(out)


def test_resume_after_interruption_with_factored_storage(tmp_path):
    out = tmp_path / "resumed.zarr"
    cfg = dict(BASE, steps=[0, 2, 4], model_options={"hidden": (4,)}, storage="factored")

    def stop(step, tree):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        capture("mlp", "digits", targets=["gradients", "ggn"], out=out, callback=stop, **cfg)
    assert completed_steps(out) == [0, 2]
    capture("mlp", "digits", targets=["gradients", "ggn"], out=out, **cfg)
    assert validate_store(out) == [0, 2, 4]
    ref = _capture_mem(steps=(0, 2, 4))
    for step in (0, 2, 4):
        got = schema.layer_samples(_node(open_capture(out), "layers/0/w", step), "gradients")
        want = schema.layer_samples(_node(ref, "layers/0/w", step), "gradients")
        assert _rel(got.values, want.values) <= 1e-12, step


def test_a_version_1_store_still_opens_but_is_not_extended(tmp_path):
    out = _store(tmp_path, storage="dense", steps=(0,))
    zarr.open_group(str(out), mode="r+").attrs["schema_version"] = "1"
    for attr in ("storage_gradients", "storage_ggn"):  # version 1 wrote none
        del zarr.open_group(str(_layer_dir(out, 0)), mode="r+").attrs[attr]
    assert validate_store(out) == [0]
    node = _node(open_capture(out), "layers/0/w")
    assert schema.layer_storage(node, "gradients") == "dense"
    assert layer_target(node, "ggn") is not None
    with pytest.raises(StoreError, match="schema_version '1'.*Capture into a new store"):
        _store(tmp_path, storage="dense", steps=(0, 2))


def test_bad_storage_options_raise():
    with pytest.raises(ValueError, match="unknown storage"):
        capture("mlp", "digits", storage="sparse", **BASE)
    with pytest.raises(ValueError, match=r"layer 'layers/0/w' cannot factor \(its row axes"):
        capture("mlp", "digits", storage="factored", row_axes={"layers/0/w": (1,)}, **BASE)
    auto = capture("mlp", "digits", storage="auto", row_axes={"layers/0/w": (1,)}, **BASE)
    assert schema.layer_storage(_node(auto, "layers/0/w"), "gradients") == "dense"
    assert schema.layer_storage(_node(auto, "layers/1/w"), "gradients") == "factored"


def test_evaluate_on_a_factored_capture_matches_the_dense_one():
    from precond_lab.evaluate import evaluate

    kw = dict(layers=["layers/0/w"], progress=False)
    kinds = ["gradients", "ggn_mc", "batch_3"]
    fact = evaluate(_capture("mlp", "factored"), ["shampoo", "kfac"], ["cosine", "kl"], kinds, **kw)
    dense = evaluate(_capture("mlp", "dense"), ["shampoo"], ["cosine", "kl"], kinds, **kw)
    forms = fact["target_form"].sel(layer="layers/0/w").squeeze().values.tolist()
    assert forms == ["factored", "factored", "samples"]  # batch means are dense
    got = fact["score"].sel(estimator="shampoo").values
    want = dense["score"].sel(estimator="shampoo").values
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # the factors are K-FAC's inputs too, so K-FAC is fitted without a K-FAC target
    assert (fact["status"].sel(estimator="kfac", target=["gradients", "ggn_mc"]) == "ok").all()


def test_cli_storage_option(tmp_path, capsys):
    import argparse

    from precond_lab.capture.cli import add_parser

    parser = argparse.ArgumentParser(prog="precond-lab")
    add_parser(parser.add_subparsers())
    out = tmp_path / "cli.zarr"
    argv = ["capture", "--num-samples", "4", "--model-options", '{"hidden": [4]}']
    argv += ["--targets", "gradients", "--no-progress", "--out", str(out)]
    args = parser.parse_args([*argv, "--storage", "dense"])
    assert parser.parse_args(argv).storage == "auto"
    assert args.func(args) == 0
    assert open_capture(out).attrs["storage"] == "dense"
    node = _node(open_capture(out), "layers/0/w")
    assert schema.layer_storage(node, "gradients") == "dense"
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--storage", "sparse"])
    assert "invalid choice: 'sparse'" in capsys.readouterr().err


def test_capture_from_fn_stores_discovered_layers_factored():
    import jax
    import jax.numpy as jnp

    from precond_lab.capture import capture_from_fn

    rng = np.random.default_rng(0)
    params = {
        "hidden": {"w": jnp.asarray(rng.standard_normal((5, 7))), "b": jnp.zeros(7)},
        "out": {"w": jnp.asarray(rng.standard_normal((7, 3)))},
    }

    def apply_fn(p, xb):
        return jax.nn.tanh(xb @ p["hidden"]["w"] + p["hidden"]["b"]) @ p["out"]["w"]

    x, y = rng.standard_normal((12, 5)), rng.integers(0, 3, 12)
    kw = dict(apply_fn=apply_fn, loss="cross_entropy", targets=["gradients", "ggn"])
    kw.update(num_samples=6, batch_size=4, eval_samples=0)
    fact = capture_from_fn(params, x, y, storage="factored", **kw)
    dense = capture_from_fn(params, x, y, storage="dense", **kw)
    assert fact.attrs["layers"] == "hidden/w,hidden/b,out/w"  # the discovered layers
    for layer in ("hidden/w", "out/w"):
        nf, nd = _node(fact, layer), _node(dense, layer)
        for kind in ("gradients", "ggn"):
            assert schema.layer_storage(nf, kind) == "factored"
            assert schema.layer_storage(nd, kind) == "dense"
            got, want = schema.layer_samples(nf, kind), schema.layer_samples(nd, kind)
            assert _rel(got.values, want.values) <= 1e-12, (layer, kind)
