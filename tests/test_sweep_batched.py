"""The sweep scores all of a target's fits in one batched pass; captures use their factors.

* ``evaluate`` equals the per-estimator path (one ``score`` call per approximation)
  to ≤ 1e-12 relative on a dict source and on a capture, with fewer passes over the
  samples and one Gram matrix per target;
* an approximation whose scoring fails is recorded as its own cell's error;
* a capture with K-FAC factors is scored on a ``FactoredTarget`` (``target_form``) with
  the dense path's values (≤ 1e-10, float64).
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from precond_lab import estimators as est  # noqa: E402
from precond_lab import metrics as met  # noqa: E402
from precond_lab.evaluate import evaluate  # noqa: E402
from precond_lab.structures import Kronecker  # noqa: E402
from precond_lab.sweep import CaptureSource, EvaluationWarning  # noqa: E402
from precond_lab.targets import FactoredTarget, SampleTarget, _gram  # noqa: E402

M, N_COLS, N = 4, 3, 24
ESTS = ["frobenius_optimal", "shampoo_squared", "shampoo", "kl_optimal", "diagonal"]
METRICS = [*met.SCORE_NAMES, "spectrum"]
KINDS = ["gradients", "ggn", "ggn_mc"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {
        "gradients": rng.standard_normal((N, M, N_COLS)) * np.array([1.0, 2.0, 0.5]),
        "ggn": rng.standard_normal((N // 2, 2, M, N_COLS)),
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small float64 capture with per-example, GGN and MC targets and their factors."""
    from precond_lab.capture import capture

    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    path = tmp_path_factory.mktemp("sweep") / "run.zarr"
    capture(
        "mlp",
        "digits",
        model_options={"hidden": (6,)},
        steps=[0],
        num_samples=10,
        targets=["gradients", "ggn", "ggn-mc", "kfac", "kfac-ggn", "kfac-mc"],
        layers=["layers/0/w", "layers/1/w"],
        mc_samples=2,
        dtype="float64",
        out=path,
    )
    jax.config.update("jax_enable_x64", old)
    return path


def _per_approx(monkeypatch):
    """Make the sweep score one approximation per :func:`score` call (the former path)."""
    single = met.score

    def score(target, approx, **kw):
        if isinstance(approx, (list, tuple)):
            return [single(target, a, **kw) for a in approx]
        return single(target, approx, **kw)

    monkeypatch.setattr(met, "score", score)


def _counting(monkeypatch):
    """Count chunk reads of every SampleTarget and every Gram matrix built."""
    counts = {"chunks": 0, "grams": 0}
    chunk, post = SampleTarget.chunk, _gram.Gram.__post_init__

    def counted_chunk(self, i):
        counts["chunks"] += 1
        return chunk(self, i)

    def counted_post(self):
        counts["grams"] += 1
        post(self)

    monkeypatch.setattr(SampleTarget, "chunk", counted_chunk)
    monkeypatch.setattr(_gram.Gram, "__post_init__", counted_post)
    return counts


def _dense_only(monkeypatch):
    """Build every capture target from its dense samples (never from the factors)."""
    monkeypatch.setattr(CaptureSource, "target", lambda self, *a, **k: None)


def _assert_same(a, b, rtol):
    for name in ("score", "eigenvalues", "target_eigenvalues", "damping"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=rtol, atol=0, err_msg=name)
    for name in ("status", "message", "iterations", "converged", "num_samples", "target_form"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def _sweep(source, **kw):
    return evaluate(source, estimators=ESTS, metrics=METRICS, progress=False, **kw)


def test_batched_equals_per_estimator_dict_source(data, monkeypatch):
    # relative damping only: the GGN bag (12 examples × 2 classes) is full rank
    counts = _counting(monkeypatch)
    batched = _sweep(data, damping=1e-3, damping_mode="relative")
    once = dict(counts)
    with monkeypatch.context() as mp:
        _per_approx(mp)
        counts.update(chunks=0, grams=0)
        each = _sweep(data, damping=1e-3, damping_mode="relative")
    assert (batched["status"] == "ok").all()
    assert set(batched["target_form"].values.ravel()) == {"samples"}
    _assert_same(batched, each, rtol=1e-12)
    # chunk reads: fits + one scoring pass per target, against one pass per estimator
    assert once["chunks"] + (len(ESTS) - 1) * 2 <= counts["chunks"]
    assert once["grams"] <= 2  # one Gram per target (trace/‖Σ‖, spectrum, log-det)


def test_batched_equals_per_estimator_capture(run, monkeypatch):
    for dense in (True, False):
        with monkeypatch.context() as mp:
            if dense:
                _dense_only(mp)
            counts = _counting(mp)
            batched = _sweep(run, damping=1e-2)
            once = dict(counts)
            _per_approx(mp)
            counts.update(chunks=0, grams=0)
            each = _sweep(run, damping=1e-2)
        assert (batched["status"] == "ok").all(), batched.attrs["failures"]
        _assert_same(batched, each, rtol=1e-12)
        if dense:
            cells = batched.sizes["layer"] * batched.sizes["target"]
            assert once["chunks"] + (len(ESTS) - 1) * cells <= counts["chunks"]
            assert once["grams"] <= cells


def test_failed_scoring_is_recorded_per_cell(data):
    zero = Kronecker(np.zeros((M, M)), np.zeros((N_COLS, N_COLS)))
    indefinite = Kronecker(-np.eye(M), np.eye(N_COLS))
    seen = []
    with pytest.warns(EvaluationWarning, match="DegenerateInputError"):
        ds = evaluate(
            {"gradients": data["gradients"]},
            estimators=[
                "shampoo_squared",
                ("zero", lambda t: zero),
                ("neg", lambda t: indefinite),
            ],
            damping=1e-3,
            progress=False,
            on_fit=lambda cell, t, s: seen.append(cell["estimator"]),
        )
    st = ds["status"].squeeze()
    msg = ds["message"].squeeze()
    assert st.sel(estimator="shampoo_squared") == "ok" and seen == ["shampoo_squared"]
    assert st.sel(estimator="zero") == "failed" and st.sel(estimator="neg") == "not_spd"
    assert "DegenerateInputError" in str(msg.sel(estimator="zero").item())
    assert "not positive semidefinite" in str(msg.sel(estimator="neg").item())
    assert np.isnan(ds["score"].sel(estimator=["zero", "neg"])).all()
    t = SampleTarget(data["gradients"]).damped(1e-3)
    want = met.score(t, est.shampoo_squared(t))
    np.testing.assert_allclose(
        ds["score"].squeeze().sel(estimator="shampoo_squared").values,
        [want[k] for k in met.SCORE_NAMES],
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="zero"):
        evaluate(
            {"gradients": data["gradients"]},
            estimators=["shampoo_squared", ("zero", lambda t: zero)],
            progress=False,
            raise_errors=True,
        )


def test_capture_scored_on_factors_like_dense(run, monkeypatch):
    ests = [*ESTS, "kfac", "eigencorrected"]
    fact = evaluate(run, estimators=ests, metrics=METRICS, damping=1e-2, progress=False)
    assert list(fact["target"].values) == KINDS
    assert (fact["target_form"] == "factored").all()
    assert (fact["status"] == "ok").all(), fact.attrs["failures"]
    from precond_lab.capture import open_capture

    src = CaptureSource(open_capture(run), str(run))
    for kind in KINDS:
        t = src.target(0, "layers/0/w", kind)
        assert isinstance(t, FactoredTarget) and t.matrix_shape == (6, 64)
        assert (
            int(fact["num_samples"].sel(step=0, layer="layers/0/w", target=kind)) == t.num_samples
        )
    with monkeypatch.context() as mp:
        _dense_only(mp)
        dense = evaluate(run, estimators=ests, metrics=METRICS, damping=1e-2, progress=False)
    assert (dense["target_form"] == "samples").all()
    for name in ("score", "eigenvalues", "target_eigenvalues", "damping"):
        np.testing.assert_allclose(
            fact[name].values, dense[name].values, rtol=1e-10, atol=1e-13, err_msg=name
        )
    np.testing.assert_array_equal(fact["num_samples"].values, dense["num_samples"].values)
    # relative damping reads tr(Σ) from the factors too; a dtype cast keeps the factors
    rel = dict(damping=1e-3, damping_mode="relative", progress=False)
    f32 = evaluate(run, estimators=["shampoo"], metrics=["cosine"], dtype="float32", **rel)
    assert (f32["target_form"] == "factored").all() and f32.attrs["dtype"] == "float32"
    f64 = evaluate(run, estimators=["shampoo"], metrics=["cosine"], **rel)
    np.testing.assert_allclose(f32["score"].values, f64["score"].values, rtol=1e-4)
    with monkeypatch.context() as mp:
        _dense_only(mp)
        d64 = evaluate(run, estimators=["shampoo"], metrics=["cosine"], **rel)
    np.testing.assert_allclose(f64["damping"].values, d64["damping"].values, rtol=1e-10)
