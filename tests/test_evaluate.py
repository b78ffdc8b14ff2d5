"""The evaluation sweep: values equal direct metric calls; layout, failures, round trips."""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402

from precond_lab import SampleTarget, Status, reference  # noqa: E402
from precond_lab import estimators as est  # noqa: E402
from precond_lab import metrics as met  # noqa: E402
from precond_lab.evaluate import (  # noqa: E402
    EvaluationWarning,
    evaluate,
    parse_estimator,
    power_iteration_curve,
    spectra,
)

M, N_COLS, N = 4, 3, 24  # one sample count (24) throughout: fewer JIT compilations
RTOL = 1e-10


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((N, M, N_COLS)) * np.array([1.0, 2.0, 0.5])
    ggn = rng.standard_normal((N // 2, 2, M, N_COLS))
    return {"gradients": g, "ggn": ggn}


def _one(x) -> float:
    return float(np.asarray(x).item())


def _close(a, b, rtol=RTOL):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-13)


def test_values_equal_direct_score(data):
    lam = 1e-3
    ests = ["frobenius_optimal", "shampoo_squared", "power_iteration(2)", "kl_optimal"]
    ds = evaluate(data, estimators=ests, damping=lam, progress=False)
    assert (ds["status"] == "ok").all()
    g_t = SampleTarget(data["gradients"]).damped(lam)
    flat = data["ggn"].reshape(-1, M, N_COLS)
    ggn_t = SampleTarget(flat, np.full(len(flat), 2.0 / N)).damped(lam)  # per class: 1/N_ex
    direct = {
        ("gradients", "shampoo_squared"): met.score(g_t, est.shampoo_squared(g_t)),
        ("gradients", "power_iteration(2)"): met.score(g_t, est.power_iteration(g_t, 2)),
        ("ggn", "frobenius_optimal"): met.score(ggn_t, est.frobenius_optimal(ggn_t)),
        ("ggn", "kl_optimal"): met.score(ggn_t, est.kl_optimal(ggn_t)),
    }
    for (kind, name), values in direct.items():
        got = ds["score"].sel(step=0, layer="layer", target=kind, estimator=name)
        _close(got.sel(metric=list(met.SCORE_NAMES)).values, [values[k] for k in met.SCORE_NAMES])
    # the same cells from a DataArray with a class dim, and from a dense reference
    da = xr.DataArray(data["ggn"], dims=("sample", "class", "row", "col"))
    ds_da = evaluate({"ggn": da}, estimators=["shampoo_squared"], damping=lam, progress=False)
    _close(
        ds_da["score"].values.ravel(),
        ds["score"].sel(target="ggn", estimator="shampoo_squared").values.ravel(),
    )
    dense = reference.target_matrix(flat, np.full(len(flat), 2.0 / N)) + lam * np.eye(M * N_COLS)
    cos = reference.cosine_similarity(dense, np.asarray(est.shampoo_squared(ggn_t).to_dense()))
    _close(_one(ds["score"].sel(target="ggn", estimator="shampoo_squared", metric="cosine")), cos)


def test_layout_coords_attrs(data):
    ds = evaluate(
        data,
        estimators=["frobenius_optimal", "shampoo", "shampoo_squared@gradients"],
        metrics=["cosine", "kl"],
        damping=1e-3,
        damping_mode="relative",
        progress=False,
    )
    assert ds["score"].dims == ("step", "layer", "target", "estimator", "metric")
    assert ds["status"].dims == ("step", "layer", "target", "estimator")
    assert list(ds["target"].values) == ["gradients", "ggn"]
    assert list(ds["metric"].values) == ["cosine", "kl"]
    assert list(ds["fit_source"].values) == ["target", "target", "gradients"]
    assert _one(ds["layer_rows"]) == M and _one(ds["layer_cols"]) == N_COLS
    for key, value in ds.attrs.items():
        assert isinstance(value, (str, int, float)) and not isinstance(value, bool), key
    assert ds.attrs["library"] == "precond_lab" and ds.attrs["dtype"] == "float64"
    assert ds.attrs["num_failures"] == 0 and ds.attrs["damping_mode"] == "relative"
    # relative damping: λ = 1e-3 tr(Σ)/(mn), per target
    tr = float(SampleTarget(data["gradients"]).trace())
    _close(_one(ds["damping"].sel(target="gradients")), 1e-3 * tr / (M * N_COLS))
    assert _one(ds["num_samples"].sel(target="ggn")) == N
    sel = ds.sel(step=0, layer="layer", target="gradients")
    assert _one(sel["iterations"].sel(estimator="frobenius_optimal")) > 0
    assert _one(sel["converged"].sel(estimator="frobenius_optimal")) == 1
    assert _one(sel["iterations"].sel(estimator="shampoo")) == -1
    assert _one(sel["converged"].sel(estimator="shampoo")) == -1
    assert _one(sel["fit_seconds"].sel(estimator="shampoo")) > 0
    # fitted on the gradients, scored against the GGN: equals the direct cross score
    lam_g = _one(ds["damping"].sel(target="gradients"))
    lam_n = _one(ds["damping"].sel(target="ggn"))
    flat = data["ggn"].reshape(-1, M, N_COLS)
    ggn_t = SampleTarget(flat, np.full(len(flat), 2.0 / N)).damped(lam_n)
    fit = est.shampoo_squared(SampleTarget(data["gradients"]).damped(lam_g))
    got = ds["score"].sel(target="ggn", estimator="shampoo_squared@gradients", metric="kl")
    _close(_one(got), met.score(ggn_t, fit)["kl"])


def test_failures_are_recorded_not_fatal(data):
    rank_one = data["gradients"][:1]  # one sample: the KL fit needs damping
    with pytest.warns(EvaluationWarning, match="FitNeedsDampingError"):
        ds = evaluate(
            {"gradients": data["gradients"], "single": rank_one},
            estimators=["shampoo_squared", "kl_optimal", "kl_optimal(max_iter=1)", "kfac"],
            progress=False,
        )
    st = ds["status"].sel(step=0, layer="layer")
    assert st.sel(target="single", estimator="kl_optimal") == Status.NEEDS_DAMPING
    msg = ds["message"].sel(step=0, layer="layer", target="single", estimator="kl_optimal")
    assert "FitNeedsDampingError" in str(msg.item())
    assert "singular" in str(
        ds["message"].sel(step=0, layer="layer", target="single", estimator="kl_optimal").values
    )
    assert np.isnan(ds["score"].sel(target="single", estimator="kl_optimal")).all()
    assert st.sel(target="gradients", estimator="kl_optimal") == "ok"
    assert st.sel(target="single", estimator="shampoo_squared") == "ok"
    assert np.isfinite(
        ds["score"].sel(target="single", estimator="shampoo_squared", metric="cosine")
    )
    # non-converged: recorded, values kept
    assert st.sel(target="gradients", estimator="kl_optimal(max_iter=1)") == "not_converged"
    assert _one(ds["converged"].sel(target="gradients", estimator="kl_optimal(max_iter=1)")) == 0
    assert np.isfinite(
        ds["score"].sel(target="gradients", estimator="kl_optimal(max_iter=1)")
    ).all()
    # K-FAC without activations/backprops: skipped with a reason, not a failure
    assert (st.sel(estimator="kfac") == "skipped").all()
    assert "K-FAC" in ds.attrs["skipped"]
    assert ds.attrs["num_failures"] == int(((st != "ok") & (st != "skipped")).sum())
    assert "estimator=kl_optimal:" in ds.attrs["failures"]
    with pytest.raises(Exception, match="singular"):
        evaluate({"single": rank_one}, estimators=["kl_optimal"], progress=False, raise_errors=True)


def test_kfac_inputs_and_user_callables():
    rng = np.random.default_rng(1)
    a, d = rng.standard_normal((N, N_COLS)), rng.standard_normal((N, M))
    g = d[:, :, None] * a[:, None, :]
    ds = evaluate(
        {"gradients": g},
        estimators=["kfac", ("mine", lambda t: est.power_iteration(t, 3))],
        kfac_inputs={"gradients": (a, d)},
        damping=0.01,
        progress=False,
    )
    assert (ds["status"] == "ok").all()
    t = SampleTarget(g).damped(0.01)
    k = est.kfac(a, d)
    damped = type(k)(k.left + 0.1 * np.eye(M), k.right + 0.1 * np.eye(N_COLS))
    _close(_one(ds["score"].sel(estimator="kfac", metric="kl")), met.score(t, damped)["kl"])
    _close(
        _one(ds["score"].sel(estimator="mine", metric="cosine")),
        met.score(t, est.power_iteration(t, 3))["cosine"],
    )
    spec = parse_estimator("power_iteration(3, variant='gauss-seidel')@ggn_mc")
    assert spec.args == (3,) and dict(spec.kwargs) == {"variant": "gauss-seidel"}
    assert spec.source == "ggn_mc"
    with pytest.raises(ValueError, match="unknown estimator"):
        evaluate({"gradients": g}, estimators=["nope"], progress=False)
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate({"gradients": g}, metrics=["nope"], progress=False)


def test_batch_sizes_match_explicit_batch_targets():
    rng = np.random.default_rng(2)
    n, k, b = N, 2, 2
    g = rng.standard_normal((n, M, N_COLS))
    g_mc = rng.standard_normal((n // k, k, M, N_COLS))  # sampled-label gradients
    mc = xr.DataArray(g_mc / np.sqrt(k), dims=("sample", "mc", "row", "col"))  # stored form
    ggn = rng.standard_normal((n // 2, 2, M, N_COLS))
    ds = evaluate(
        {"ggn": ggn, "gradients": g, "ggn_mc": mc},
        estimators=["shampoo_squared@gradients", "shampoo_squared@ggn_mc"],
        targets=["ggn"],
        batch_sizes=[1, b],
        progress=False,
    )
    assert ds["score"].dims == ("step", "layer", "target", "estimator", "batch_size", "metric")
    flat = ggn.reshape(-1, M, N_COLS)
    ggn_t = SampleTarget(flat, np.full(len(flat), 2.0 / n))
    nb = n // b
    means = g.reshape(nb, b, M, N_COLS).mean(1)  # B ḡ ḡᵀ averaged over batches
    real = SampleTarget(means, np.full(nb, b / nb))
    nbm = n // k // b  # batches of the sampled-label examples
    mc_means = g_mc.reshape(nbm, b, k, M, N_COLS).mean(1).reshape(-1, M, N_COLS)
    sampled = SampleTarget(mc_means, np.full(nbm * k, b / (nbm * k)))
    for name, fit_t in (("shampoo_squared@gradients", real), ("shampoo_squared@ggn_mc", sampled)):
        got = ds["score"].sel(estimator=name, batch_size=b).squeeze()
        want = met.score(ggn_t, est.shampoo_squared(fit_t))
        _close(got.sel(metric=list(met.SCORE_NAMES)).values, [want[x] for x in met.SCORE_NAMES])
    got1 = ds["score"].sel(estimator="shampoo_squared@gradients", batch_size=1, metric="cosine")
    want1 = met.score(ggn_t, est.shampoo_squared(SampleTarget(g)))["cosine"]
    _close(_one(got1.squeeze()), want1)


def test_netcdf_and_zarr_round_trip(data, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        ds = evaluate(
            {"gradients": data["gradients"], "single": data["gradients"][:1]},
            estimators=["shampoo_squared", "kl_optimal"],
            metrics=["cosine", "kl", "spectrum"],
            progress=False,
        )
    ds.to_netcdf(tmp_path / "sweep.nc")
    back = xr.open_dataset(tmp_path / "sweep.nc").load()
    xr.testing.assert_equal(back, ds)
    assert back.attrs == ds.attrs
    ds.to_zarr(tmp_path / "sweep.zarr", mode="w", consolidated=False)
    back = xr.open_zarr(tmp_path / "sweep.zarr", consolidated=False).load()
    xr.testing.assert_equal(back, ds)
    assert back["status"].sel(target="single", estimator="kl_optimal") == Status.NEEDS_DAMPING


def test_spectra_match_metrics_spectrum(data):
    g = data["gradients"]
    sp = spectra({"gradients": g}, ["shampoo_squared", "kl_optimal"], rescale=None)
    assert sp["eigenvalue"].dims == ("target", "estimator", "index")
    assert list(sp["estimator"].values) == ["target", "shampoo_squared", "kl_optimal"]
    ev = sp["eigenvalue"].sel(target="gradients")
    t = SampleTarget(g)
    _close(ev.sel(estimator="target").values, np.asarray(met.spectrum(t)))
    _close(ev.sel(estimator="kl_optimal").values, np.asarray(met.spectrum(est.kl_optimal(t))))
    # rescaled by the Frobenius-optimal scalar; damped target: Σ + λI's eigenvalues
    lam = 0.05
    sp = spectra({"gradients": g[:1]}, ["shampoo"], damping=lam, k=7)
    assert sp.sizes["index"] == 7
    t = SampleTarget(g[:1]).damped(lam)
    dense = reference.target_matrix(g[:1], np.ones(1)) + lam * np.eye(M * N_COLS)
    _close(
        sp["eigenvalue"].sel(estimator="target").squeeze().values,
        np.linalg.eigvalsh(dense)[::-1][:7],
    )
    s = est.shampoo(t)
    c = met.score(t, s)["frobenius_scale"]
    _close(
        sp["eigenvalue"].sel(estimator="shampoo").squeeze().values,
        c * np.asarray(met.spectrum(s))[:7],
    )


def _schema_attrs(layers):
    return {
        "schema": "precond_lab.capture",
        "schema_version": "1",
        "model": "toy",
        "dataset": "random",
        "loss": "cross_entropy",
        "output_dim": 2,
        "seed": 0,
        "optimizer": "sgd",
        "learning_rate": 0.1,
        "batch_size": 4,
        "num_samples": 24,
        "mc_samples": 1,
        "batch_sizes": "",
        "targets": "gradients,kfac,trajectory",
        "layers": ",".join(layers),
        "layer_shapes": "4x3",
        "dtype": "float64",
        "config_json": "{}",
    }


def test_capture_store_source(tmp_path):
    from precond_lab.capture import store

    rng = np.random.default_rng(3)
    path = tmp_path / "run.zarr"
    store.init_store(path, _schema_attrs(["fc/w"]))
    cells = {}
    for step in (0, 2):
        a, d = rng.standard_normal((N, N_COLS)), rng.standard_normal((N, M))
        g = d[:, :, None] * a[:, None, :]
        traj = rng.standard_normal((2, M, N_COLS))
        cells[step] = (a, d, g, traj)
        tree = xr.DataTree.from_dict(
            {
                "/": xr.Dataset(
                    {
                        "loss": ("sample", np.ones(N)),
                        "outputs": (("sample", "output"), np.ones((N, 2))),
                        "labels": ("sample", np.zeros(N, int)),
                    },
                    attrs={
                        "step": step,
                        "loss": 1.0 - step / 10,
                        "accuracy": 0.5,
                        "train_loss": 1.0,
                        "test_loss": -1.0,
                        "test_accuracy": -1.0,
                    },
                ),
                "checkpoint": xr.Dataset(attrs={"param_paths": "", "num_opt_leaves": 0}),
                "fc/w": xr.Dataset(
                    {
                        "param": (("row", "col"), np.zeros((M, N_COLS))),
                        "gradients": (("sample", "row", "col"), g),
                        "kfac_activations": (("sample", "in"), a),
                        "kfac_backprops": (("sample", "out"), d),
                    }
                ),
                "fc/w/trajectory": xr.Dataset(
                    {"gradients": (("train_step", "row", "col"), traj)},
                    coords={"train_step": [step - 1, step], "weight": ("train_step", np.ones(2))},
                ),
            }
        )
        store.write_step(path, step, tree)
    ds = evaluate(path, estimators=["kfac", "shampoo_squared"], progress=False)
    assert list(ds["step"].values) == [0, 2] and list(ds["layer"].values) == ["fc/w"]
    assert list(ds["target"].values) == ["gradients", "trajectory"]
    _close(ds["loss"].values, [1.0, 0.8])
    assert np.isnan(ds["test_loss"].values).all()  # -1 in the store means undefined
    assert ds.attrs["source"] == str(path) and ds.attrs["source_model"] == "toy"
    # per-example gradients with K-FAC factors are scored on the factors (smaller here)
    assert (ds["target_form"].sel(target="gradients") == "factored").all()
    assert (ds["target_form"].sel(target="trajectory") == "samples").all()
    a, d, g, traj = cells[2]
    t = SampleTarget(g)
    _close(
        _one(ds["score"].sel(step=2, target="gradients", estimator="kfac", metric="cosine")),
        met.score(t, est.kfac(a, d))["cosine"],
    )
    assert ds["status"].sel(step=2, target="trajectory", estimator="kfac") == "skipped"
    adagrad = SampleTarget(traj, np.ones(2))  # Σ_s g_s g_sᵀ
    _close(
        _one(
            ds["score"].sel(step=2, target="trajectory", estimator="shampoo_squared", metric="kl")
        ),
        met.score(adagrad, est.shampoo_squared(adagrad))["kl"],
    )


def test_power_iteration_curve(data):
    g = data["gradients"]
    curve = power_iteration_curve(g, 6)
    assert curve["score"].dims == ("iteration", "metric")
    assert list(curve["iteration"].values) == list(range(7))
    t = SampleTarget(g)
    # step 1 from the identity is Shampoo² (up to scale: cosine is scale-free)
    _close(
        _one(curve["score"].sel(iteration=1, metric="cosine")),
        met.score(t, est.shampoo_squared(t))["cosine"],
    )
    _close(
        curve["score"].sel(iteration=4).values,
        [met.score(t, est.power_iteration(t, 4))[k] for k in met.SCORE_NAMES],
    )
    opt = met.score(t, est.frobenius_optimal(t))
    _close(curve["optimum_score"].sel(metric="cosine").values, opt["cosine"])
    gap = 1 - curve["cosine_to_optimum"].values
    assert gap[-1] < 1e-6 and gap[-1] < gap[1]
    assert np.isnan(curve["factor_change"].values[0]) and curve["factor_change"].values[1] > 0
    both = power_iteration_curve({"a": g, "b": g[:1]}, 2)
    assert both["score"].dims == ("target", "iteration", "metric")
    assert list(both["target"].values) == ["a", "b"]


def test_float32_kl_fit_at_relative_damping_names_float64_end_to_end():
    """Issue 23: on a float32 capture, kl_optimal at the documented relative damping 1e-3
    fails because a factor looks singular in float32; the error that reaches the user of
    ``evaluate`` says the fit ran in float32 and how to fit in float64, and that advice
    works (the same data with ``dtype=np.float64`` fits)."""
    from precond_lab.errors import FitNeedsDampingError

    rng = np.random.default_rng(0)
    m, n, count = 128, 2, 64
    u, v = rng.standard_normal(m), rng.standard_normal(n)
    g = rng.standard_normal(count)[:, None, None] * np.outer(u, v)[None]
    g = (g + 1e-4 * rng.standard_normal((count, m, n))).astype(np.float32)  # a float32 capture
    kw = dict(
        estimators=["kl_optimal"],
        metrics=["cosine"],
        damping=1e-3,
        damping_mode="relative",
        progress=False,
    )
    with pytest.raises(FitNeedsDampingError) as info:
        evaluate({"gradients": g}, raise_errors=True, **kw)
    text = str(info.value)
    assert "This fit ran in float32" in text
    assert "fit in float64" in text and "evaluate(..., dtype=np.float64)" in text
    assert "jax.config.update('jax_enable_x64', True)" in text
    # without raise_errors the cell is recorded as failed, not scored with a wrong number
    with pytest.warns(EvaluationWarning, match="ran in float32.*fit in float64"):
        ds = evaluate({"gradients": g}, **kw)
    assert not np.isfinite(ds["score"].values).any()
    assert "fit in float64" in str(ds["message"].values.ravel()[0])
    # the advice works: the same float32 data, fitted in float64
    ds64 = evaluate({"gradients": g}, dtype=np.float64, raise_errors=True, **kw)
    assert np.isfinite(ds64["score"].values).all()
