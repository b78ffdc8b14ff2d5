"""Store round trip, lazy streaming, atomic steps, resume, validation and user models."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zarr

from precond_lab.capture import (
    StoreError,
    capture,
    capture_from_fn,
    load_dataset,
    make_model,
    open_capture,
    validate_store,
)
from precond_lab.capture.store import as_samples
from precond_lab.targets import SampleTarget

CFG = dict(
    model_options={"hidden": (8,)},
    steps=[0, 2, 4],
    num_samples=12,
    batch_size=16,
    targets=["gradients", "ggn", "ggn-mc", "kfac", "kfac-ggn", "kfac-mc", "batch", "trajectory"],
    layers=["layers/0/w", "layers/1/b"],
    batch_sizes=(4, 6),
    mc_samples=2,
    optimizer="adam",
    learning_rate=0.01,
    dtype="float64",
    chunk_size=5,
    storage="dense",  # the dense schema; factored storage: test_factored_storage.py
)


def _arrays(tree):
    """{group path/var: numpy array} of every data variable and coordinate."""
    out = {}
    for node in tree.subtree:
        for name, var in node.dataset.variables.items():
            out[f"{node.path}/{name}"] = np.asarray(var.values)
    return out


def _assert_same(a, b):
    ta, tb = _arrays(a), _arrays(b)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One uninterrupted stored run and its in-memory twin."""
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    path = tmp_path_factory.mktemp("store") / "run.zarr"
    stored = capture("mlp", "digits", out=path, **CFG)
    memory = capture("mlp", "digits", **CFG)
    yield path, stored, memory
    jax.config.update("jax_enable_x64", old)


def test_round_trip_and_schema(run):
    path, stored, memory = run
    assert validate_store(path) == [0, 2, 4]
    _assert_same(stored.load(), memory)
    attrs = stored.attrs
    for k, v in attrs.items():
        assert isinstance(v, (str, int, float)) and not isinstance(v, bool), (k, v)
    assert attrs["jax_version"] == jax.__version__ and attrs["dataset"] == "digits"
    step = stored["step_000004"]
    assert step.attrs["step"] == 4 and step.attrs["complete"] == 1
    assert 0 <= step.attrs["accuracy"] <= 1 and step.attrs["test_accuracy"] >= 0
    layer = step["layers/0/w"]
    assert layer["gradients"].dims == ("sample", "row", "col")
    assert layer["ggn"].dims == ("sample", "class", "row", "col")
    assert layer["ggn_mc"].dims == ("sample", "mc", "row", "col")
    assert layer["kfac_backprops_mc"].dims == ("sample", "mc", "out")
    assert step["layers/1/b"]["kfac_activations"].shape == (12, 1)
    # the trajectory covers the training steps since the previous capture (3, 4 here)
    assert list(step["layers/0/w/trajectory"]["train_step"].values) == [3, 4]
    assert list(stored["step_000000/layers/0/w/trajectory"]["train_step"].values) == [0]
    # zarr chunks along sample (chunk_bytes default is large: one chunk of 12 here)
    arr = zarr.open_group(str(path / "step_000002" / "layers" / "0" / "w"), mode="r")["gradients"]
    assert arr.chunks[0] <= 12 and arr.chunks[1:] == arr.shape[1:]


def test_lazy_streaming_equals_in_memory(run):
    path, _, memory = run
    tree = open_capture(path)
    da = tree["step_000002/layers/0/w"]["gradients"]
    assert not da.variable._in_memory  # lazily indexed, nothing read yet
    g = memory["step_000002/layers/0/w"]["gradients"].values
    left, right = SampleTarget(da, chunk_size=3).second_moments()
    np.testing.assert_allclose(left, np.einsum("kij,klj->il", g, g) / len(g), rtol=1e-12)
    np.testing.assert_allclose(right, np.einsum("kij,kil->jl", g, g) / len(g), rtol=1e-12)
    b = tree["step_000002/layers/0/w"]["ggn"]
    bm = memory["step_000002/layers/0/w"]["ggn"].values.reshape(-1, *g.shape[1:])
    np.testing.assert_allclose(
        SampleTarget(b, chunk_size=5).second_moments()[0],
        np.einsum("kij,klj->il", bm, bm) / len(g),
        rtol=1e-12,
    )
    # batch gradients: mean of consecutive groups, weighted so the target is mean_j B ḡ ḡᵀ
    bg = tree["step_000002/layers/0/w/batch_size_4"]["gradients"]
    np.testing.assert_allclose(bg.values, g.reshape(3, 4, *g.shape[1:]).mean(1), rtol=1e-12)
    t = SampleTarget(as_samples(bg), chunk_size=2)
    gb = g.reshape(3, 4, *g.shape[1:]).mean(1)
    np.testing.assert_allclose(t.second_moments()[0], 4 * np.einsum("kij,klj->il", gb, gb) / 3)
    # ...and everything can be loaded into memory instead
    loaded = open_capture(path, load=True)
    assert loaded["step_000002/layers/0/w"]["gradients"].variable._in_memory


def test_resume_after_crash_skips_finished_steps(run, tmp_path):
    path, stored, _ = run
    out = tmp_path / "crash.zarr"
    seen = []

    def crash_after_2(step, tree):
        seen.append(step)
        if step == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        capture("mlp", "digits", out=out, callback=crash_after_2, **CFG)
    assert seen == [0, 2] and validate_store(out) == [0, 2]
    mtimes = {s: (out / f"step_{s:06d}" / "zarr.json").stat().st_mtime_ns for s in (0, 2)}
    seen.clear()
    resumed = capture("mlp", "digits", out=out, callback=lambda s, t: seen.append(s), **CFG)
    assert seen == [4]  # finished steps were not recomputed
    assert {s: (out / f"step_{s:06d}" / "zarr.json").stat().st_mtime_ns for s in (0, 2)} == mtimes
    _assert_same(resumed.load(), stored.load())  # the trajectory continued exactly
    seen.clear()
    capture("mlp", "digits", out=out, callback=lambda s, t: seen.append(s), **CFG)
    assert seen == []


def test_config_mismatch_and_bad_input_rejected(run):
    path, _, _ = run
    with pytest.raises(StoreError, match="different configuration.*seed"):
        capture("mlp", "digits", out=path, **{**CFG, "seed": 1})
    with pytest.raises(ValueError, match="unknown targets.*valid targets: gradients"):
        capture("mlp", "digits", **{**CFG, "targets": ["hessian"]})
    with pytest.raises(ValueError, match="unknown layers.*layers/0/w"):
        capture("mlp", "digits", **{**CFG, "layers": ["layers/9/w"]})
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        capture("mlp", "cifar")


def _copy(run, tmp_path):
    dst = tmp_path / "copy.zarr"
    shutil.copytree(run[0], dst)
    return dst


def test_validate_rejects_missing_variable(run, tmp_path):
    dst = _copy(run, tmp_path)
    shutil.rmtree(dst / "step_000002" / "layers" / "0" / "w" / "ggn")
    with pytest.raises(StoreError, match="step_000002"):
        validate_store(dst)


def test_validate_rejects_wrong_version_and_foreign_stores(run, tmp_path):
    dst = _copy(run, tmp_path)
    root = zarr.open_group(str(dst), mode="r+")
    root.attrs["schema_version"] = "0"
    with pytest.raises(StoreError, match="schema_version"):
        validate_store(dst)
    with pytest.raises(StoreError, match="schema_version"):
        open_capture(dst)
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").attrs["hello"] = "world"
    with pytest.raises(StoreError, match="not a precond_lab capture store"):
        validate_store(foreign)
    with pytest.raises(StoreError, match="no capture store"):
        validate_store(tmp_path / "absent.zarr")
    with pytest.raises(StoreError, match="not a precond_lab capture store"):
        capture("mlp", "digits", out=foreign, **CFG)


def test_partial_step_without_marker_is_absent(run, tmp_path):
    dst = _copy(run, tmp_path)
    meta = dst / "step_000004" / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["complete"]
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="incomplete step"):
        validate_store(dst)
    with pytest.warns(UserWarning, match="skipping incomplete"):
        tree = open_capture(dst)
    assert "step_000004" not in tree.children and "step_000002" in tree.children


def test_validate_rejects_nan(run, tmp_path):
    dst = _copy(run, tmp_path)
    arr = zarr.open_array(str(dst / "step_000000" / "layers" / "0" / "w" / "gradients"), mode="r+")
    arr[3, 0, 0] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        validate_store(dst)


def test_capture_from_fn_matches_builtin_model():
    ds = load_dataset("digits")
    model = make_model("mlp", ds, dtype="float64", hidden=(8,))
    params = model.init(jax.random.PRNGKey(0))

    def apply_fn(p, xb):
        return jax.vmap(lambda xi: model.apply(p, xi))(xb)

    def loss_fn(p, batch):
        xb, yb = batch
        f = apply_fn(p, xb)
        return jnp.mean(jax.nn.logsumexp(f, axis=-1) - jnp.take_along_axis(f, yb[:, None], 1)[:, 0])

    x, y = ds.x_train.astype(np.float64), ds.y_train
    kw = dict(layers=["layers/0/w"], num_samples=6, storage="dense")
    ref = capture(model, ds, targets=["gradients", "ggn"], **kw, dtype="float64")
    a = capture_from_fn(
        params, x, y, apply_fn=apply_fn, loss="cross_entropy", targets=["gradients", "ggn"], **kw
    )
    b = capture_from_fn(params, x, y, loss_fn=loss_fn, targets=["gradients"], **kw)
    g = ref["step_000000/layers/0/w"]
    np.testing.assert_allclose(a["step_000000/layers/0/w"]["gradients"], g["gradients"], atol=1e-12)
    np.testing.assert_allclose(a["step_000000/layers/0/w"]["ggn"], g["ggn"], atol=1e-12)
    np.testing.assert_allclose(b["step_000000/layers/0/w"]["gradients"], g["gradients"], atol=1e-12)
    k = capture_from_fn(  # K-FAC layers found in apply_fn's jaxpr (capture.discover)
        params, x, y, apply_fn=apply_fn, loss="cross_entropy", targets=["kfac"], **kw
    )
    kref = capture(model, ds, targets=["kfac"], **kw, dtype="float64")["step_000000/layers/0/w"]
    for var in ("kfac_activations", "kfac_backprops"):
        np.testing.assert_allclose(k["step_000000/layers/0/w"][var], kref[var], atol=1e-12)
    with pytest.raises(ValueError, match="ggn, ggn-mc and K-FAC targets need an apply_fn"):
        capture_from_fn(params, x, y, loss_fn=loss_fn, targets=["ggn"], **kw)


def test_matricization_of_conv_kernel_and_3d_tensor():
    from precond_lab.capture.layout import matrix_shape, row_axes_for, to_matrix

    k = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # (kh, kw, in, out)
    m = to_matrix(k, 0, k.shape, row_axes_for(k.shape))
    assert m.shape == (5, 4 * 2 * 3)
    assert m[1, 2 * 6 + 1 * 3 + 2] == k[1, 2, 2, 1]  # column c·kh·kw + i·kw + j
    t = np.zeros((4, 6, 3))
    assert matrix_shape(t.shape, row_axes_for(t.shape)) == (4, 18)
    assert matrix_shape(t.shape, row_axes_for(t.shape, (1, 2))) == (18, 4)
    assert matrix_shape((7,), row_axes_for((7,))) == (7, 1)
    with pytest.raises(ValueError, match="invalid"):
        row_axes_for((3, 4), (2,))
