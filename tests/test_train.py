"""The training loop: schedule, resume, failure detection, and the preconditioner probe."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from precond_lab import online
from precond_lab.capture import load_dataset, make_model
from precond_lab.errors import CheckpointError, Status
from precond_lab.structures import Diagonal, EigenKronecker
from precond_lab.train import Probe, preconditioner_of, state_bytes, train


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _teacher():
    ds = load_dataset("teacher")
    return ds, make_model("mlp", ds, dtype="float64", hidden=(6,))


def test_runs_are_seeded_and_recorded():
    ds, model = _teacher()
    a = train(model, ds, optax.adam(1e-2), steps=12, batch_size=16, seed=3, eval_every=5)
    b = train(model, ds, optax.adam(1e-2), steps=12, batch_size=16, seed=3, eval_every=5)
    c = train(model, ds, optax.adam(1e-2), steps=12, batch_size=16, seed=4, eval_every=5)
    assert a.status is Status.OK and a.failed_step == -1 and not a.failed
    np.testing.assert_array_equal(a.history["train_loss"], b.history["train_loss"])
    assert not np.allclose(a.history["train_loss"], c.history["train_loss"])
    assert list(a.history["eval_step"].values) == [0, 5, 10, 12]
    assert a.history.sizes["step"] == 12 and np.all(a.history["step_seconds"] > 0)
    assert a.final() < float(a.history["eval_loss"][0])  # it learns
    assert np.isnan(a.final("eval_accuracy"))  # MSE model: no accuracy


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path):
    ds, model = _teacher()
    ck = tmp_path / "run.npz"
    whole = train(model, ds, optax.adam(1e-2), steps=20, batch_size=8, seed=1)
    part = train(model, ds, optax.adam(1e-2), steps=10, batch_size=8, seed=1, checkpoint=ck)
    assert ck.exists() and part.history.sizes["step"] == 10
    rest = train(model, ds, optax.adam(1e-2), steps=20, batch_size=8, seed=1, checkpoint=ck)
    np.testing.assert_allclose(rest.history["train_loss"], whole.history["train_loss"], rtol=1e-12)
    for x, y in zip(jax.tree.leaves(rest.params), jax.tree.leaves(whole.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12)
    with pytest.raises(ValueError, match="does not match"):
        train(model, ds, optax.sgd(1e-2), steps=20, batch_size=8, seed=1, checkpoint=ck)


def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(tmp_path):
    """Issue 23: another width, seed, optimiser or a shorter run resumed and reported ok."""
    ds, model = _teacher()
    ck = tmp_path / "run.npz"
    train(model, ds, optax.adam(1e-2), steps=10, batch_size=8, seed=1, checkpoint=ck)
    before = ck.read_bytes()
    wider = make_model("mlp", ds, dtype="float64", hidden=(8,))
    cases = [
        (dict(model=wider), r"model configuration: .*parameter shapes/dtypes: "),
        (dict(seed=2), r"seed: checkpoint 1, this run 2"),
        (dict(tx=optax.sgd(1e-2)), r"optimiser state structure"),
        (dict(batch_size=16), r"batch_size: checkpoint 8, this run 16"),
        (dict(steps=5), r"at step 10, beyond this run's steps=5"),
    ]
    for change, message in cases:
        kwargs = dict(model=model, tx=optax.adam(1e-2), steps=20, batch_size=8, seed=1) | change
        m, tx = kwargs.pop("model"), kwargs.pop("tx")
        with pytest.raises(CheckpointError, match=r"run\.npz: checkpoint does not match"):
            train(m, ds, tx, checkpoint=ck, **kwargs)
        with pytest.raises(CheckpointError, match=message):
            train(m, ds, tx, checkpoint=ck, **kwargs)
    assert ck.read_bytes() == before  # a refused checkpoint is left as it was
    # a truncated or foreign file is named, not a raw zipfile traceback
    ck.write_bytes(before[: len(before) // 2])
    with pytest.raises(CheckpointError, match=r"run\.npz: (not a readable|checkpoint is damaged)"):
        train(model, ds, optax.adam(1e-2), steps=20, batch_size=8, seed=1, checkpoint=ck)
    np.savez(ck, step=np.int64(3), p0=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"run\.npz: checkpoint has no fingerprint"):
        train(model, ds, optax.adam(1e-2), steps=20, batch_size=8, seed=1, checkpoint=ck)


def test_divergence_and_nan_stop_the_run():
    ds, model = _teacher()
    run = train(model, ds, optax.sgd(1e3), steps=50, batch_size=16)
    assert run.status is Status.NONFINITE and 0 <= run.failed_step < 50 and run.failed
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(run.params))  # last finite state


def _nan_at(count: int) -> optax.GradientTransformation:
    """SGD whose update at step ``count`` is NaN (the loss before it is finite)."""

    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(grads, state, params=None):
        scale = jnp.where(state == count, jnp.nan, -1e-2)
        return jax.tree.map(lambda g: scale * g, grads), state + 1

    return optax.GradientTransformation(init, update)


def test_a_run_whose_update_is_nan_keeps_the_last_finite_parameters(tmp_path):
    """Issue 23: the update at step 3 made the parameters NaN with a finite loss; the run
    went on and returned the NaN parameters as its 'last finite' ones."""
    ds, model = _teacher()
    ck = tmp_path / "run.npz"
    run = train(model, ds, _nan_at(3), steps=10, batch_size=8, checkpoint=ck, checkpoint_every=1)
    assert run.status is Status.NONFINITE and run.failed_step == 3
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(run.params))
    three = train(model, ds, _nan_at(99), steps=3, batch_size=8)
    for x, y in zip(jax.tree.leaves(run.params), jax.tree.leaves(three.params), strict=True):
        np.testing.assert_array_equal(x, y)
    assert int(run.opt_state) == 3  # the state that goes with those parameters
    with np.load(ck) as z:  # the last checkpoint is the last finite step
        assert int(z["step"]) == 3


def test_state_bytes_counts_every_array():
    ds, model = _teacher()
    params = model.init(jax.random.PRNGKey(0))
    n = sum(x.nbytes for x in jax.tree.leaves(params))
    count = np.asarray(optax.adam(1e-3).init(params)[0].count).nbytes
    assert state_bytes(optax.adam(1e-3).init(params)) == 2 * n + count
    assert state_bytes(optax.sgd(1e-3).init(params)) == 0


class _LeafStats(NamedTuple):
    stats: dict


def _kl_stats(beta=0.9) -> optax.GradientTransformation:
    """SGD that also keeps an online KL-Shampoo state per matrix leaf (test optimiser)."""
    est = online.kl_shampoo(shampoo_beta=beta, frequency=2)

    def init(params):
        return _LeafStats(
            jax.tree.map(lambda p: est.init(jnp.ones_like(p)) if p.ndim == 2 else (), params)
        )

    def update(grads, state, params=None):
        new = jax.tree.map(
            lambda g, s: est.update(s, g) if g.ndim == 2 else s,
            grads,
            state.stats,
            is_leaf=lambda x: isinstance(x, online.OnlineState),
        )
        return jax.tree.map(lambda g: -0.05 * g, grads), _LeafStats(new)

    return optax.GradientTransformation(init, update)


def test_preconditioner_of_finds_per_leaf_and_tree_states():
    ds, model = _teacher()
    params = model.init(jax.random.PRNGKey(0))
    grads = jax.tree.map(jnp.ones_like, params)
    tx = optax.chain(optax.clip(1.0), optax.adam(1e-3))
    _, state = tx.update(grads, tx.init(params), params)
    s = preconditioner_of(state, "layers/1/w")
    assert isinstance(s, Diagonal)
    np.testing.assert_array_equal(s.values, state[1][0].nu["layers"][1]["w"])
    assert preconditioner_of(state, "layers/1/b").matrix_shape == (4, 1)
    assert preconditioner_of(state, "no/such/w") is None
    assert preconditioner_of(optax.sgd(1.0).init(params), "layers/1/w") is None
    kl = _kl_stats()
    _, st = kl.update(grads, kl.init(params), params)
    own = preconditioner_of(st, "layers/0/w")
    assert isinstance(own, EigenKronecker) and own.matrix_shape == (6, 16)
    leaf = st.stats["layers"][0]["w"]
    np.testing.assert_array_equal(own.values, np.outer(leaf.left_values, leaf.right_values))


def _dense_scores(sigma, s_dense, rel):
    """Reference cosine and KL-rescaled of ``c·S + λI`` against ``Σ + λI`` (dense)."""
    d = sigma.shape[0]
    lam = rel * np.trace(sigma) / d
    x = sigma + lam * np.eye(d)
    y = np.trace(sigma) / np.trace(s_dense) * s_dense + lam * np.eye(d)
    cos = np.sum(x * y) / (np.linalg.norm(x) * np.linalg.norm(y))
    t = np.trace(np.linalg.solve(y, x))
    kl_r = 0.5 * (d * np.log(t / d) + np.linalg.slogdet(y)[1] - np.linalg.slogdet(x)[1])
    return cos, kl_r


@pytest.mark.parametrize("kind", ["adam", "kl"])
def test_probe_scores_match_a_dense_reference(kind):
    ds, model = _teacher()
    tx = optax.adam(1e-2) if kind == "adam" else _kl_stats()
    probe = Probe(
        steps=(4,),
        layers=("layers/1/w",),
        targets=("gradients", "ggn"),
        num_samples=40,
        estimators=("kl_optimal",),
        damping=1e-2,
    )
    run = train(model, ds, tx, steps=4, batch_size=16, probe=probe)
    p = run.probes
    assert p.dims == ("step", "layer", "target", "estimator", "metric")
    assert list(p["estimator"].values) == ["optimizer", "kl_optimal"]
    # the probe's targets, recomputed: per-example gradients at the final parameters
    from precond_lab.train import _Prober

    prober = _Prober(model, ds, run.params, run.opt_state, probe, 0)
    sigma = np.asarray(prober.targets(4, run.params)["layers/1/w"]["gradients"].to_dense())
    s = np.asarray(preconditioner_of(run.opt_state, "layers/1/w").to_dense(), np.float64)
    cos, kl_r = _dense_scores(sigma, s, 1e-2)
    got = p.sel(step=4, layer="layers/1/w", target="gradients", estimator="optimizer")
    np.testing.assert_allclose(float(got.sel(metric="cosine")), cos, rtol=1e-9)
    np.testing.assert_allclose(float(got.sel(metric="kl_rescaled")), kl_r, rtol=1e-8)
    # the KL optimum wins the KL divergence against the optimiser's own statistic
    opt = p.sel(step=4, layer="layers/1/w", estimator="kl_optimal", metric="kl_rescaled")
    own = p.sel(step=4, layer="layers/1/w", estimator="optimizer", metric="kl_rescaled")
    assert np.all(opt.values <= own.values + 1e-12)


def test_probe_rejects_what_it_cannot_score():
    ds, model = _teacher()
    with pytest.raises(ValueError, match="probe targets"):
        Probe(steps=(0,), targets=("kfac",))
    with pytest.raises(ValueError, match="no registered preconditioner"):
        train(model, ds, optax.sgd(0.1), steps=2, probe=Probe(steps=(1,), layers=("layers/0/w",)))
    with pytest.raises(ValueError, match="no probe layer"):
        train(model, ds, optax.sgd(0.1), steps=2, probe=Probe(steps=(1,)))


def test_probe_before_any_statistic_is_skipped_not_failed():
    ds, model = _teacher()
    run = train(model, ds, optax.adam(1e-2), steps=2, probe=Probe(steps=(0, 2), num_samples=16))
    first = run.probes.sel(step=0, estimator="optimizer")
    assert np.all(np.isnan(first.values))  # Adam's ν is zero before the first update
    assert np.all(np.isfinite(run.probes.sel(step=2, estimator="optimizer").values))


def test_injected_hyperparameters_share_one_compilation():
    from precond_lab import train as tr

    ds, model = _teacher()
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=1.0)
    a = train(model, ds, tx, steps=6, batch_size=8, hyperparams={"learning_rate": 1e-2})
    n = len(tr._COMPILED)
    b = train(model, ds, tx, steps=6, batch_size=8, hyperparams={"learning_rate": 3e-2})
    assert len(tr._COMPILED) == n  # the second run reused the first one's step
    ref = train(model, ds, optax.adam(1e-2), steps=6, batch_size=8)
    np.testing.assert_allclose(a.history["train_loss"], ref.history["train_loss"], rtol=1e-12)
    assert not np.allclose(a.history["train_loss"][1:], b.history["train_loss"][1:])
    with pytest.raises(ValueError, match="unknown injected"):
        train(model, ds, tx, steps=1, hyperparams={"momentum": 0.9})
    with pytest.raises(ValueError, match="inject_hyperparams"):
        train(model, ds, optax.adam(1e-2), steps=1, hyperparams={"learning_rate": 0.1})


def test_skipped_steps_are_reported():
    import precond_lab.optim as po
    from precond_lab.train import skipped_steps

    params = {"w": jnp.ones((3, 4))}
    tx = po.kl_shampoo(0.01)
    s = tx.init(params)
    _, s = tx.update({"w": jnp.full((3, 4), jnp.nan)}, s, params)
    assert skipped_steps(s) == 1 and skipped_steps(optax.sgd(0.1).init(params)) == 0
