"""The tuning protocol: decisions, interval maths, grid extension, resume, vectorised runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from precond_lab.tuning import (
    Decision,
    Interval,
    Method,
    Protocol,
    Study,
    compare,
    decide,
    extend_grid,
    lr_grid,
    make_schedule,
    paired_interval,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------ interval maths
def test_paired_interval_matches_scipy():
    d = np.array([0.12, -0.05, 0.2, 0.03, 0.07])
    iv = paired_interval(d, 0.95)
    low, high = stats.t.interval(0.95, d.size - 1, loc=d.mean(), scale=stats.sem(d))
    assert iv.mean == pytest.approx(d.mean(), abs=1e-15)
    assert (iv.low, iv.high) == pytest.approx((low, high), rel=1e-12)
    iv90 = paired_interval(d, 0.90)
    low, high = stats.t.interval(0.90, d.size - 1, loc=d.mean(), scale=stats.sem(d))
    assert (iv90.low, iv90.high) == pytest.approx((low, high), rel=1e-12)
    with pytest.raises(ValueError):
        paired_interval([0.1])
    with pytest.raises(ValueError):
        paired_interval([0.1, np.nan, 0.2])


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (-0.5, -0.02, Decision.BETTER),  # below −δ
        (0.02, 0.3, Decision.WORSE),  # above +δ
        (-0.005, 0.008, Decision.TIE),  # within ±δ
        (0.0, 0.0, Decision.TIE),  # identical methods
        (-0.5, 0.5, Decision.UNRESOLVED),  # wide
        (-0.05, -0.005, Decision.UNRESOLVED),  # excludes 0 but not beyond −δ
        (0.005, 0.05, Decision.UNRESOLVED),
    ],
)
def test_decide(low, high, expected):
    iv = Interval((low + high) / 2, low, high, 3, 0.95)
    assert decide(iv, 0.01) is expected
    assert decide(iv, 0.01) == expected.value


def test_grid_and_schedule():
    g = lr_grid(1e-3, 1e-1)
    assert np.allclose(np.log2(g), np.arange(-9, -3))  # 2^-9 ≈ 1.95e-3 … 2^-4 = 0.0625
    g2 = lr_grid(2**-4, 2**-2, points_per_octave=2)
    assert np.allclose(np.log2(g2), [-4, -3.5, -3, -2.5, -2])
    assert np.allclose(np.log2(extend_grid(g2, "high", points_per_octave=2))[-1], -1.5)
    assert np.allclose(np.log2(extend_grid(g2, "low", points_per_octave=2))[0], -4.5)
    # an extension point is bit-identical to the same point of a wider grid (same cache key)
    g3 = lr_grid(2**-4, 2**-2, points_per_octave=3)
    wide = lr_grid(2**-4, 2**-1.5, points_per_octave=3)
    assert extend_grid(g3, "high", points_per_octave=3)[-1] == wide[-1]
    s = make_schedule(1.0, total_steps=10, warmup_steps=2, decay="cosine")
    assert float(s(0)) == 0.0 and float(s(2)) == pytest.approx(1.0)
    assert float(s(10)) == pytest.approx(0.0, abs=1e-6)
    lin = make_schedule(jnp.float32(2.0), total_steps=10, warmup_steps=0, decay="linear")
    assert float(lin(5)) == pytest.approx(1.0)


# ---------------------------------------------------------------------- protocol studies
def _bowl(centre: float, noise: float = 0.02):
    """A loss with its optimum at lr = 2^centre and a seed-dependent offset."""

    def run(lr, seed):
        return float((np.log2(lr) - centre) ** 2 * 0.1 + noise * np.sin(seed + 1.0))

    return run


def test_aa_is_a_tie():
    m = [Method("a", _bowl(-4)), Method("a_copy", _bowl(-4))]
    ds = Study("aa", m, Protocol(lr_bounds=(2**-7, 2**-1)), progress=False).run()
    c = compare(ds, "a")
    assert c["decision"].sel({"method": "a_copy"}).item() == "tie"
    assert float(ds["selected_lr"].sel({"method": "a"})) == 2**-4
    assert ds["interior"].values.tolist() == [1, 1]
    assert ds.attrs["threshold"] == 0.01 and ds.attrs["extensions"] == "none"
    assert set(ds.sizes) == {"method", "lr", "seed"}


def _quadratic_methods(steps: int = 30, n: int = 20):
    """Plain GD vs GD with the ideal preconditioner ``A⁻¹`` on an ill-conditioned quadratic."""
    lam = jnp.logspace(0, 3, n)  # condition number 1000

    def make(precond: bool):
        def run(lr, seed):
            x = jax.random.normal(jax.random.PRNGKey(seed), (n,))
            p = 1.0 / lam if precond else jnp.ones(n)

            def step(x, _):
                return x - lr * p * (lam * x), None

            x, _ = jax.lax.scan(step, x, None, length=steps)
            loss = 0.5 * jnp.sum(lam * x**2)
            return jnp.where(jnp.isfinite(loss) & (loss < 1e6), loss, jnp.nan)

        return run

    return [
        Method("gd", make(False), traceable=True),
        Method("pgd", make(True), traceable=True),
    ]


def test_ideal_preconditioner_is_better():
    p = Protocol(lr_bounds=(2**-12, 2**1), seeds=(1, 2, 3, 4))
    ds = Study("quadratic", _quadratic_methods(), p, progress=False).run()
    c = compare(ds, "gd")
    assert c["decision"].sel({"method": "pgd"}).item() == Decision.BETTER
    c2 = compare(ds, "pgd")
    assert c2["decision"].sel({"method": "gd"}).item() == Decision.WORSE
    # GD diverges for lr > 2/λ_max = 2^-9: those grid points count as failures
    assert int(ds["grid_failures"].sel({"method": "gd"})) > 0
    assert int(ds["grid_failures"].sel({"method": "pgd"})) == 0  # lr = 2: |1 − 2| = 1, bounded
    assert ds["execution"].sel({"method": "gd"}).item() == "vmap"  # no LAPACK: vmapped


def test_grid_extension_on_the_edge():
    m = [Method("a", _bowl(-2)), Method("b", _bowl(-5))]
    p = Protocol(lr_bounds=(2**-8, 2**-4), max_extensions=4)
    ds = Study("edge", m, p, progress=False).run()
    assert float(ds["selected_lr"].sel({"method": "a"})) == 2**-2
    assert ds["interior"].values.tolist() == [1, 1]
    assert ds.attrs["n_extensions"] == 3  # 2^-3, 2^-2, 2^-1
    assert ds.attrs["extensions"].startswith("high:0.125 (optimum on the high edge for a)")
    assert float(ds["lr"].max()) == 2**-1
    # the shared grid: b ran the extension points too
    assert int(ds["ran"].sel({"method": "b"}).isel(seed=0).sum()) == ds.sizes["lr"]
    # with a bound too small the edge optimum is reported as such
    with pytest.warns(UserWarning, match=r"no interior optimum for \['a'\]"):
        ds1 = Study(
            "edge1", m, Protocol(lr_bounds=(2**-8, 2**-4), max_extensions=1), progress=False
        ).run()
    assert ds1.attrs["n_extensions"] == 1
    assert ds1["interior"].sel({"method": "a"}).item() == 0
    assert float(ds1["selected_lr"].sel({"method": "a"})) == 2**-3


class _Interrupt(Exception):
    pass


def test_resume_reruns_nothing(tmp_path):
    calls = {"n": 0}
    limit = {"n": 10**9}

    def counting(centre):
        f = _bowl(centre)

        def run(lr, seed):
            if calls["n"] >= limit["n"]:
                raise _Interrupt
            calls["n"] += 1
            return f(lr, seed)

        return run

    methods = [Method("a", counting(-3)), Method("b", counting(-4))]
    p = Protocol(lr_bounds=(2**-6, 2**-1))
    lines = []
    limit["n"] = 7  # killed after 7 finished runs
    with pytest.raises(_Interrupt):
        Study("resume", methods, p, directory=tmp_path, progress=lines.append).run()
    stored = list((tmp_path / "runs").glob("*.json"))
    # and no temporary file left (precond_lab._atomic names them ".<key>.<random>.json")
    assert len(stored) == 7 and not list((tmp_path / "runs").glob(".*"))
    assert "ETA" in lines[-1] and "7/" in lines[-1]
    limit["n"] = 10**9
    ds = Study("resume", methods, p, directory=tmp_path, progress=False).run()
    total = 2 * (6 + 3)  # 2 methods × (6 grid points + 3 seeds)
    assert calls["n"] == total  # 7 before the interruption + the rest, nothing twice
    assert ds.attrs["runs_executed"] == total - 7 and ds.attrs["runs_stored_before"] == 7
    calls["n"] = 0
    ds2 = Study("resume", methods, p, directory=tmp_path, progress=False).run()
    assert calls["n"] == 0 and ds2.attrs["runs_executed"] == 0
    np.testing.assert_array_equal(ds["loss"].values, ds2["loss"].values)
    doc = json.loads(stored[0].read_text())
    assert {"task", "method", "lr", "seed", "loss", "failed", "seconds"} <= set(doc)


def test_failures_counted_over_the_grid():
    def fragile(lr, seed):
        return float("nan") if lr > 2**-3 else _bowl(-5)(lr, seed)

    ds = Study(
        "fail", [Method("f", fragile)], Protocol(lr_bounds=(2**-8, 2**-1)), progress=False
    ).run()
    assert int(ds["grid_failures"].item()) == 2  # 2^-2, 2^-1
    assert int(ds["seed_failures"].item()) == 0


def test_lapack_detection():
    from precond_lab.tuning import lapack_primitives

    def scan_eigh(a):
        return jax.lax.scan(lambda c, _: (jnp.linalg.eigh(c)[1], None), a, None, length=2)[0]

    assert lapack_primitives(scan_eigh, jnp.eye(3)) == {"eigh"}
    assert lapack_primitives(lambda a: jnp.linalg.qr(a)[0], jnp.eye(3)) == {"qr"}
    assert lapack_primitives(lambda a: a @ a, jnp.eye(3)) == set()
    looped = jax.custom_batching.custom_vmap(lambda a: jnp.linalg.eigh(a)[1])
    looped.def_vmap(lambda n, b, a: (jax.lax.map(looped, a), True))
    # reported too: looped, it cannot deadlock, but a vmapped run is slower on CPU
    assert lapack_primitives(looped, jnp.eye(3)) == {"eigh"}


def test_pilot_bounds():
    from precond_lab.tuning import pilot_bounds

    low, high = pilot_bounds(
        [Method("a", _bowl(-6)), Method("b", _bowl(-3))], low=2**-12, high=1.0, seed=0
    )
    # coarse grid 2^-12, 2^-10, …, 2^0: bests 2^-6 and 2^-4 (2^-3 is off the coarse grid;
    # 2^-2 and 2^-4 tie, the first wins), widened by 2 octaves
    assert (np.log2(low), np.log2(high)) == (-8.0, -2.0)


def test_protocol_validation():
    with pytest.raises(ValueError, match="3 distinct"):
        Protocol(lr_bounds=(1e-3, 1e-1), seeds=(1, 2))
    with pytest.raises(ValueError, match="fresh"):
        Protocol(lr_bounds=(1e-3, 1e-1), seeds=(0, 1, 2))


def test_kl_shampoo_runs_are_not_vmapped_on_cpu_and_do_not_hang():
    """KL-Shampoo runs (eigh/QR inside) under Study's auto mode run one at a time on a
    multi-threaded CPU (vectorised they ran 3.3× slower: every cond computes both branches);
    run in a subprocess with a hard timeout so that a returning hang fails the test."""
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, optax
        import precond_lab.optim as po
        from precond_lab.tuning import Method, Protocol, Study

        def make(factory):
            def run(lr, seed):
                k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
                w = {"a": jax.random.normal(k1, (48, 48)) / 7,
                     "b": jax.random.normal(k2, (48, 48)) / 7}
                tx = factory(learning_rate=lr)
                s = tx.init(w)
                def step(c, t):
                    w, s = c
                    x = jax.random.normal(jax.random.fold_in(k2, t), (16, 48))
                    f = lambda w: jnp.mean((jnp.tanh(x @ w["a"]) @ w["b"]) ** 2)
                    g = jax.grad(f)(w)
                    u, s = tx.update(g, s, w)
                    return (optax.apply_updates(w, u), s), None
                (w, s), _ = jax.lax.scan(step, (w, s), jnp.arange(4))
                return jnp.mean(w["a"] ** 2)
            return run

        m = Method("kl", make(lambda learning_rate: po.kl_shampoo(learning_rate, frequency=2)),
                   traceable=True)
        p = Protocol(lr_bounds=(2**-8, 2**-3), max_extensions=0)
        ds = Study("hang", [m], p, progress=False).run()
        print(ds["execution"].item())
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.strip().splitlines()[-1]
    if os.cpu_count() and os.cpu_count() > 1:
        assert out.startswith("jit (no vmap: LAPACK"), out


def test_adapters_on_a_precond_lab_model():
    import precond_lab.optim as po
    from precond_lab import train as train_module
    from precond_lab.capture.data import load_dataset
    from precond_lab.capture.models import make_model
    from precond_lab.tuning import model_method, train_method

    ds = load_dataset("digits")
    model = make_model("mlp", ds, hidden=(8,))
    kw = dict(steps=3, warmup_steps=1, eval_samples=64)
    m = train_method("kl", model, ds, po.kl_shampoo, **kw)
    assert m.compile_mode == "inject_hyperparams" and not m.traceable
    before = len(train_module._COMPILED)
    a, b, a2 = m.run(1e-3, 0), m.run(4e-3, 0), m.run(1e-3, 0)
    assert len(train_module._COMPILED) - before == 1  # one compilation for every rate
    assert np.isfinite([a, b]).all() and a == a2 and a != b
    t = model_method("kl", model, ds, po.kl_shampoo, **kw)
    run = jax.jit(t.run)
    assert t.traceable and t.compile_mode == "traced"
    assert np.isfinite(float(run(1e-3, 0))) and float(run(1e-3, 0)) != float(run(1e-3, 1))
    assert np.isnan(float(run(1e3, 0)))  # divergence is a failure


def test_shared_rate_is_one_rate_for_all_methods():
    # a's best is 2^-3, b's 2^-5: the shared rate minimises their mean loss (2^-4)
    m = [Method("a", _bowl(-3)), Method("b", _bowl(-5))]
    p = Protocol(lr_bounds=(2**-8, 2**-1), shared_rate=True)
    ds = Study("shared", m, p, progress=False).run()
    assert ds["selected_lr"].values.tolist() == [2**-4, 2**-4]
    assert ds["interior"].values.tolist() == [1, 1] and ds.attrs["shared_rate"] == 1
    c = compare(ds, "a")  # paired at the one rate: b − a = ((-4+5)² − (-4+3)²) = 0
    assert c["decision"].sel({"method": "b"}).item() == "tie"

    # a grid point where any method failed is not eligible
    def failing_high(lr, seed):
        return float("nan") if lr > 2**-5 else _bowl(-3)(lr, seed)

    m2 = [Method("a", _bowl(-3)), Method("b", failing_high)]
    ds2 = Study("shared2", m2, p, progress=False).run()
    assert ds2["selected_lr"].values.tolist() == [2**-5, 2**-5]
    # an edge optimum of the mean extends the grid for every method
    m3 = [Method("a", _bowl(-1)), Method("b", _bowl(-2))]
    ds3 = Study(
        "shared3", m3, Protocol(lr_bounds=(2**-8, 2**-4), shared_rate=True), progress=False
    ).run()
    assert ds3.attrs["n_extensions"] >= 1 and "all methods" in ds3.attrs["extensions"]


def test_workers_give_the_same_runs_as_one_process(tmp_path):
    """Two spawn workers rebuild each method from its recipe, store every run and agree
    with a run in this process bit for bit (same compiled program on the same CPU)."""
    import precond_lab.optim as po
    from precond_lab.tuning import model_method

    kw = dict(steps=4, warmup_steps=1, eval_samples=32, model_options={"hidden": (4,)})
    methods = [
        model_method("adamw", "mlp", "digits", po.adamw, **kw),
        model_method("sgd", "mlp", "digits", po.sgd, **kw),
    ]
    assert all(m.recipe is not None for m in methods)
    p = Protocol(lr_bounds=(2**-6, 2**-4), max_extensions=0, vectorize=False)
    with pytest.warns(UserWarning, match="no interior optimum"):
        par = Study("w", methods, p, directory=tmp_path, progress=False, workers=2).run()
    assert set(par["execution"].values.tolist()) == {
        "jit in 2 worker processes (1 XLA thread each)"
    }
    stored = list((tmp_path / "runs").glob("*.json"))
    assert len(stored) == int(par["ran"].sum()) == 2 * (3 + 3)
    with pytest.warns(UserWarning, match="no interior optimum"):
        one = Study("w", methods, p, progress=False).run()
    np.testing.assert_array_equal(par["loss"].values, one["loss"].values)
    # a method without a recipe cannot go to a worker
    bare = Method("bare", _bowl(-3))
    with pytest.raises(ValueError, match="recipe"):
        Study("w", [bare], p, workers=2)
    with pytest.raises(ValueError, match="workers"):
        Study("w", [bare], p, workers=0)


def test_a_diverged_model_run_skips_its_remaining_steps():
    import optax

    import precond_lab.optim as po
    from precond_lab.tuning import model_method

    calls = []

    def counted_sgd(learning_rate):
        inner = po.sgd(learning_rate=learning_rate)

        def update(g, s, p=None):
            jax.debug.callback(lambda: calls.append(1))
            return inner.update(g, s, p)

        return optax.GradientTransformation(inner.init, update)

    kw = dict(steps=50, eval_samples=32, model_options={"hidden": (8,)})
    run = jax.jit(model_method("sgd", "mlp", "digits", counted_sgd, **kw).run)
    assert np.isfinite(float(run(jnp.float32(1e-2), jnp.int32(0))))
    assert len(calls) == 50
    calls.clear()
    assert np.isnan(float(run(jnp.float32(1e4), jnp.int32(0))))
    assert 1 <= len(calls) < 10, len(calls)  # the steps after the divergence did not run
