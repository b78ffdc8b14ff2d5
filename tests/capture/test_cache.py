"""Captures reuse their compiled functions: no recompiles for a new N, no unneeded train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from precond_lab.capture import api, cache, capture, capture_from_fn, capture_model, load_dataset
from precond_lab.capture.per_example import chunk_length, sample_keys

_COMPILES = [0]


def _on_event(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


def _compiles(fn):
    """``(result of fn(), XLA backend compilations during the call)``."""
    before = _COMPILES[0]
    out = fn()
    return out, _COMPILES[0] - before


def _arrays(tree):
    """Every data variable of every node, by path (the DataTree's numbers)."""
    out = {}
    for node in tree.subtree:
        for name, var in node.dataset.data_vars.items():
            out[f"{node.path}/{name}"] = np.asarray(var.values)
    return out


def _assert_identical(a, b):
    a, b = _arrays(a), _arrays(b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


MLP = dict(model_options={"hidden": (6,)}, dtype="float64", chunk_size=16, eval_samples=20)
TARGETS = ["gradients", "ggn", "ggn-mc", "kfac-ggn"]


def test_chunk_length_buckets_and_sample_keys_match_fold_in():
    assert [chunk_length(n, 16) for n in (1, 2, 3, 5, 9, 16, 17, 100)] == [
        1,
        2,
        4,
        8,
        16,
        16,
        16,
        16,
    ]
    key = jax.random.PRNGKey(3)
    ids = np.array([5, 0, 9, 2, 7])
    want = np.stack([np.asarray(jax.random.fold_in(key, int(i))) for i in ids])
    np.testing.assert_array_equal(sample_keys(key, ids, 2), want)


def test_second_capture_with_new_num_samples_compiles_nothing_and_is_bit_identical():
    ds = load_dataset("digits")
    kw = dict(MLP, targets=TARGETS, mc_samples=2)
    first = capture("mlp", ds, num_samples=24, **kw)
    for n in (40, 17, 24):  # same chunk length (16): every executable is already there
        again, compiles = _compiles(lambda n=n: capture("mlp", ds, num_samples=n, **kw))
        assert compiles == 0, (n, compiles)
    _assert_identical(first, again)
    cache.clear()
    fresh = capture("mlp", ds, num_samples=24, **kw)  # rebuilt and recompiled
    _assert_identical(first, fresh)


def test_capture_from_fn_reuses_its_trace_with_each_calls_params():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((60, 5)), rng.integers(0, 3, 60)

    def apply_fn(p, xb):
        return jnp.tanh(xb @ p["w1"]) @ p["w2"]

    def params(seed):
        r = np.random.default_rng(seed)
        return {
            "w1": jnp.asarray(r.standard_normal((5, 4))),
            "w2": jnp.asarray(r.standard_normal((4, 3))),
        }

    kw = dict(apply_fn=apply_fn, loss="cross_entropy", targets=["gradients", "kfac"], chunk_size=8)
    capture_from_fn(params(1), x, y, num_samples=20, **kw)
    second, compiles = _compiles(lambda: capture_from_fn(params(2), x, y, num_samples=30, **kw))
    assert compiles == 0
    cache.clear()
    _assert_identical(second, capture_from_fn(params(2), x, y, num_samples=30, **kw))


def test_no_training_step_is_built_without_training(monkeypatch):
    ds = load_dataset("digits")
    kw = dict(MLP, num_samples=8, targets=["gradients"])

    def refuse(*args, **kwargs):
        raise AssertionError("make_train_step called")

    cache.clear()
    monkeypatch.setattr(api, "make_train_step", refuse)
    only0 = capture("mlp", ds, steps=(0,), **kw)
    with pytest.raises(AssertionError, match="make_train_step called"):
        capture("mlp", ds, steps=(0, 1), **kw)
    with pytest.raises(AssertionError, match="make_train_step called"):
        capture("mlp", ds, steps=(0,), **{**kw, "targets": ["gradients", "trajectory"]})
    monkeypatch.undo()
    trained = capture("mlp", ds, steps=(0, 2), **kw)
    # step 0 of a run that trains on is the same as a run that stops there
    _assert_identical(only0["step_000000"], trained["step_000000"])
    assert only0["step_000000"].attrs == trained["step_000000"].attrs


@pytest.mark.parametrize("framework", ["flax.nnx", "equinox"])
def test_framework_models_of_one_structure_share_compiled_functions(framework):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)

    def make(seed):
        if framework == "flax.nnx":
            nnx = pytest.importorskip("flax.nnx")
            r = nnx.Rngs(seed)
            m = nnx.Sequential(nnx.Linear(5, 4, rngs=r), jnp.tanh, nnx.Linear(4, 3, rngs=r))
        else:
            eqx = pytest.importorskip("equinox")
            m = eqx.nn.MLP(5, 3, 4, 1, activation=jnp.tanh, key=jax.random.PRNGKey(seed))
        return jax.tree_util.tree_map(
            lambda v: jnp.asarray(v, jnp.float64) if isinstance(v, jax.Array) else v, m
        )

    kw = dict(loss="cross_entropy", targets=["gradients", "kfac"], num_samples=12, chunk_size=8)
    capture_model(make(0), x, y, **kw)
    other = make(1)  # another instance, other weights: the same compiled functions
    second, compiles = _compiles(lambda: capture_model(other, x, y, **kw))
    assert compiles == 0
    cache.clear()
    _assert_identical(second, capture_model(make(1), x, y, **kw))


_PERSIST = """
import os, sys, jax, jax.numpy as jnp
import precond_lab.capture as cap
folder = cap.cache.enable_persistent_cache()  # already on: a second call changes nothing
print(jax.config.jax_compilation_cache_dir or "none", folder)
jax.jit(lambda x: jnp.sin(x) * 3.0)(jnp.ones(7)).block_until_ready()
"""


@pytest.mark.parametrize("setting", ["default", "off", "user"])
def test_persistent_compilation_cache(tmp_path, setting):
    """A new process's first capture loads its executables from disk: precond_lab.capture
    turns on JAX's persistent cache unless the user set one or turned it off."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("PRECOND_LAB_JAX_CACHE", None)
    if setting == "off":
        env["PRECOND_LAB_JAX_CACHE"] = "off"
    if setting == "user":
        env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "mine")
    out = subprocess.run(
        [sys.executable, "-c", _PERSIST], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    ours = tmp_path / "xdg" / "precond_lab" / "jax"
    if setting == "default":
        assert out.stdout.split()[0] == str(ours)
        assert any(ours.iterdir())  # the executable was written
    elif setting == "off":
        assert out.stdout.split()[0] == "none" and not ours.exists()
    else:
        assert out.stdout.split()[0] == str(tmp_path / "mine") and not ours.exists()
