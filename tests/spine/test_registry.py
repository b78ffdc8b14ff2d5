"""Walk the estimator and metric registries: a forgotten registration, reference, test
case or label fails here, and every registered estimator runs through the sweep."""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from cases import (  # noqa: E402
    ESTIMATOR_CASES,
    METRIC_CASES,
    MINIMISER_REFERENCES,
    _kfac_inputs,
    problem,
)

from precond_lab import (  # noqa: E402
    Status,  # noqa: E402
    plotting,
    reference,
)
from precond_lab import estimators as est  # noqa: E402
from precond_lab import metrics as met  # noqa: E402
from precond_lab.sweep import evaluate  # noqa: E402


def test_every_estimator_has_a_case_and_every_case_an_estimator():
    assert set(ESTIMATOR_CASES) == set(est.ESTIMATORS)


def test_every_metric_has_a_case_and_every_case_a_metric():
    assert set(METRIC_CASES) == set(met.METRICS)


@pytest.mark.parametrize("name", list(est.ESTIMATORS))
def test_estimator_spec_is_complete(name):
    spec = est.ESTIMATORS[name]
    assert callable(getattr(reference, spec.reference, None)), spec.reference
    assert spec.label and spec.label != name
    assert plotting.estimator_label(name).startswith(spec.label)
    assert spec.optimal_for is None or spec.optimal_for in met.METRICS
    assert est.parse_estimator(spec.example).spec is spec


@pytest.mark.parametrize("name", list(met.METRICS))
def test_metric_spec_is_complete(name):
    spec = met.METRICS[name]
    assert callable(getattr(reference, spec.reference, None)), spec.reference
    assert callable(getattr(met, spec.function, None)), spec.function
    assert plotting.metric_label(name) == spec.label
    assert (name in met.SCORE_NAMES) == spec.in_score


@pytest.mark.parametrize("name", list(ESTIMATOR_CASES))
def test_estimator_case_matches_dense_reference(name):
    s, want = ESTIMATOR_CASES[name]()
    got = np.asarray(s.to_dense(), np.float64)
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * scale)


@pytest.mark.parametrize("name", list(METRIC_CASES))
def test_metric_case_matches_dense_reference(name):
    got, want = METRIC_CASES[name]()
    tol = 1e-7 if name in MINIMISER_REFERENCES else 1e-10
    assert abs(got - want) <= tol * max(abs(want), 1.0), (got, want)


def test_evaluate_accepts_every_registered_estimator():
    g, _, _ = problem()
    a, d = _kfac_inputs()
    specs = [spec.example for spec in est.ESTIMATORS.values()]
    ds = evaluate({"gradients": g}, specs, kfac_inputs={"gradients": (a, d)}, progress=False)
    assert list(ds["estimator"].values) == specs
    assert (ds["status"] == Status.OK).all(), ds["message"].values
    assert np.isfinite(ds["score"]).all()


def test_optimum_wins_its_own_divergence():
    """Each estimator registered as optimal for a metric is best at it in the sweep."""
    g, _, _ = problem()
    specs = [s.example for s in est.ESTIMATORS.values() if s.name != "kfac"]
    ds = evaluate({"gradients": g}, specs, damping=1e-3, progress=False)
    scores = ds["score"].isel(step=0, layer=0).sel(target="gradients")
    for spec in est.ESTIMATORS.values():
        if spec.optimal_for is None:
            continue
        col = scores.sel(metric=spec.optimal_for)
        kron = [s for s in specs if s != "eigencorrected" and s != "diagonal"]
        best = float(col.sel(estimator=kron).min())
        assert float(col.sel(estimator=spec.example)) <= best * (1 + 1e-8) + 1e-12, spec.name


def test_registering_twice_fails():
    spec = est.ESTIMATORS["shampoo"]
    with pytest.raises(ValueError, match="already registered"):
        est.register(spec)


def test_score_subset_equals_full_score_and_skips_nothing_asked_for():
    _, _, t = problem()
    s = est.kl_optimal(t)
    full = met.score(t, s, damping=0.1)
    for keys in (("cosine",), ("frobenius_scale", "kl_scale"), ("von_neumann",), ("kl",)):
        part = met.score(t, s, damping=0.1, metrics=keys)
        assert list(part) == list(keys)
        assert all(part[k] == full[k] for k in keys), keys
    with pytest.raises(ValueError, match="unknown metrics"):
        met.score(t, s, metrics=("logdet",))


# ------------------------------------------------------------------------ the model zoo
ZOO_DATASETS = {
    "mlp": "digits",
    "cnn": "digits",
    "transformer": "stdlib-chars",
    "patch_transformer": "mnist",
    "lstm": "stdlib-chars",
}


def test_every_zoo_model_has_a_case_and_builds():
    import jax.numpy as jnp

    from precond_lab.capture.data import load_dataset
    from precond_lab.capture.models import MODEL_SPECS, make_model, register_model

    assert set(ZOO_DATASETS) == set(MODEL_SPECS)  # a new model needs its case here
    for name, spec in MODEL_SPECS.items():
        ds = load_dataset(ZOO_DATASETS[name])
        model = make_model(name, ds)
        params = model.init(jax.random.PRNGKey(0))
        x = jnp.asarray(ds.x_train[0])
        out = model.apply(params, x)
        assert out.shape[-1] == ds.output_dim, name
        with pytest.raises(ValueError, match="unknown option"):
            make_model(name, ds, no_such_option=1)
    with pytest.raises(ValueError, match="already registered"):
        register_model(MODEL_SPECS["mlp"])
    with pytest.raises(ValueError, match="token dataset"):
        make_model("transformer", load_dataset("digits"))
    with pytest.raises(ValueError, match="token dataset"):
        make_model("lstm", load_dataset("digits"))
    with pytest.raises(ValueError, match=r"patch 5 does not divide the image size 28×28"):
        make_model("patch_transformer", load_dataset("mnist"), patch=5)
