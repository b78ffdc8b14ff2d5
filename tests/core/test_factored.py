"""FactoredTarget against the dense float64 truth: every primitive, every registered
estimator and metric, with T = 1 and T > 1, a class axis, weights of both signs and
centering, in the factored, the dense (rebuilt) and the cost model's form; the one-Gram
paths (Cholesky log-det, eigenvalues without vectors), batched scoring and shape bucketing."""

from __future__ import annotations

import inspect

import jax
import numpy as np
import pytest
from conftest import assert_close

from precond_lab import estimators as est
from precond_lab import metrics as met
from precond_lab import reference
from precond_lab.errors import NonFiniteError
from precond_lab.targets import DenseTarget, FactoredTarget, SampleTarget
from precond_lab.targets._factored import PRIMITIVES, plan

# (N, K, T, m, n, weights, center): K = None for no class axis.
CASES = {
    "T1": (7, None, 1, 3, 4, "positive", False),
    "T3-negative-centered": (9, None, 3, 4, 3, "negative", True),
    "classes-T2-centered": (5, 3, 2, 3, 2, "positive", True),
    "T2-more-samples-than-mn": (30, None, 2, 2, 3, "default", False),
}
MODES = ("factored", "dense", "auto")


def _factors(name, seed=0):
    num, k, t, m, n, kind, center = CASES[name]
    rng = np.random.default_rng(seed)
    shape = (num,) + ((k,) if k else ()) + (t,)
    u, v = rng.standard_normal(shape + (m,)), rng.standard_normal(shape + (n,))
    w = None
    if kind != "default":
        w = rng.uniform(0.2, 1.0, num)
        if kind == "negative":
            w[::3] *= -0.3
    return u, v, w, center


def _dense_twin(u, v, w, center):
    """Σ built from the explicit samples G_k = Σ_t u_t v_tᵀ by the dense reference."""
    g = np.einsum("...tm,...tn->...mn", u, v)
    if g.ndim == 4:  # (N, K, m, n): K samples per example share its weight
        num, k = g.shape[:2]
        w = np.full(num, 1.0 / num) if w is None else w
        g, w = g.reshape(num * k, *g.shape[2:]), np.repeat(w, k)
    sigma = reference.target_matrix(g, w, center=center)
    return DenseTarget(sigma, g.shape[1:]), sigma


@pytest.fixture(params=[(c, mode) for c in CASES for mode in MODES], ids=lambda p: "-".join(p))
def pair(request):
    name, mode = request.param
    u, v, w, center = _factors(name)
    dense, sigma = _dense_twin(u, v, w, center)
    return FactoredTarget(u, v, w, center=center, mode=mode), dense, sigma


def test_every_primitive_matches_dense(pair, rng):
    f, d, sigma = pair
    m, n = f.matrix_shape
    a, b = rng.standard_normal((m, m)), rng.standard_normal((n, n))  # non-symmetric
    qa = np.linalg.qr(rng.standard_normal((m, m)))[0]
    qb = np.linalg.qr(rng.standard_normal((n, n)))[0]
    kron = est.shampoo_squared(d)
    assert_close(f.contract_left(b), d.contract_left(b))
    assert_close(f.contract_right(a), d.contract_right(a))
    for got, want in zip(f.second_moments(), d.second_moments(), strict=True):
        assert_close(got, want)
    assert_close(f.left_moment(), d.second_moments()[0])
    assert_close(f.right_moment(), d.second_moments()[1])
    assert_close(f.rotated_diagonal(qa, qb), d.rotated_diagonal(qa, qb))
    assert_close(f.rotated_diagonal(None, qb), d.rotated_diagonal(None, qb))
    assert_close(f.rotated_diagonal(None, None), d.rotated_diagonal(None, None))
    for got, want in zip(
        f.rotated_diagonals([(qa, qb), (None, None)]),
        [d.rotated_diagonal(qa, qb), d.rotated_diagonal(None, None)],
        strict=True,
    ):
        assert_close(got, want)
    assert_close(f.trace(), np.trace(sigma))
    for s in (kron, kron.eigen(), est.diagonal(d)):
        assert_close(f.trace_product(s), d.trace_product(s))
    assert_close(f.frobenius_norm(), np.linalg.norm(sigma))
    assert_close(f.to_dense(), sigma)


def test_spectrum_and_logdet_match_dense(pair):
    f, d, sigma = pair
    spec = f.eigh(vectors=True)
    want = d.eigh()
    assert spec.rank == want.rank
    assert_close(spec.values, want.values)
    vecs = np.asarray(spec.vectors).reshape(spec.rank, -1)
    assert_close((vecs.T * np.asarray(spec.values)) @ vecs, sigma)  # V μ Vᵀ = Σ
    assert_close(vecs @ vecs.T, np.eye(spec.rank))
    assert_close(f.eigh().values, want.values)  # eigenvalues-only path
    if np.linalg.eigvalsh(sigma).min() > -1e-12:  # PSD: log det(Σ + λI) (Cholesky)
        assert_close(f.logdet(0.3), np.linalg.slogdet(sigma + 0.3 * np.eye(f.dim))[1])
        assert_close(f.damped(0.2).logdet(0.1), f.logdet(0.3))


def test_centering_as_weighting_matches_the_extra_sample():
    """SampleTarget's Gram uses centering as a weighting; it agrees with dense."""
    u, v, w, _ = _factors("T3-negative-centered")
    g = np.einsum("ktm,ktn->kmn", u, v)
    for weights in (w, np.abs(w)):
        t = SampleTarget(g, weights, center=True, chunk_size=4)
        sigma = reference.target_matrix(g, weights, center=True)
        assert_close(t.frobenius_norm(), np.linalg.norm(sigma))
        assert_close(t.eigh().values, DenseTarget(sigma, (4, 3)).eigh().values)


def _fit_cases():
    out = []
    for case in ("T1", "classes-T2-centered"):
        for name, spec in est.ESTIMATORS.items():
            out.append(pytest.param(case, spec.example, id=f"{case}-{name}"))
    return out


@pytest.mark.parametrize(("case", "example"), _fit_cases())
def test_every_registered_estimator_matches_dense(case, example):
    u, v, w, center = _factors(case, seed=1)
    dense, _ = _dense_twin(u, v, w, center)
    kfac_inputs = None
    if u.ndim == 3 and not center:  # T = 1 dense layer: K-FAC's inputs are the factors
        kfac_inputs = (v[:, 0], u[:, 0])
    parsed = est.parse_estimator(example)
    if parsed.spec.needs_kfac_inputs and kfac_inputs is None:
        pytest.skip("K-FAC is built from (a, δ), not from the target")
    want = est.build(parsed, est.FitContext(dense, kfac_inputs=kfac_inputs))
    want = np.asarray(want.to_dense())
    for mode in ("factored", "dense"):
        f = FactoredTarget(u, v, w, center=center, mode=mode)
        got = est.build(parsed, est.FitContext(f, kfac_inputs=kfac_inputs))
        assert_close(got.to_dense(), want, err_msg=f"{example} ({mode})")


def _call_metric(spec, target, approx):
    fn = getattr(met, spec.function)
    kwargs = dict(spec.function_kwargs)
    if "damping" in inspect.signature(fn).parameters:
        kwargs["damping"] = 0.1  # the targets are rank deficient
    return float(fn(target, approx, **kwargs))


@pytest.mark.parametrize("case", ["T1", "classes-T2-centered"])
def test_every_registered_metric_matches_dense(case):
    u, v, w, center = _factors(case, seed=2)
    dense, _ = _dense_twin(u, v, w, center)
    approx = est.shampoo_squared(dense)
    for mode in MODES:
        f = FactoredTarget(u, v, w, center=center, mode=mode)
        for name, spec in met.METRICS.items():
            got, want = _call_metric(spec, f, approx), _call_metric(spec, dense, approx)
            assert abs(got - want) <= 1e-10 * max(abs(want), 1.0), (name, mode, got, want)


def test_score_many_approximations_at_once():
    u, v, w, center = _factors("T3-negative-centered", seed=3)
    w = np.abs(w)
    dense, _ = _dense_twin(u, v, w, center)
    f = FactoredTarget(u, v, w, center=center)
    sample = SampleTarget(np.einsum("ktm,ktn->kmn", u, v), w, center=center, chunk_size=4)
    approxes = [est.shampoo_squared(dense), est.diagonal(dense), est.eigencorrected(dense)]
    for t in (f, sample):
        batch = met.score(t, approxes, damping=0.1)
        assert isinstance(batch, list) and len(batch) == 3
        for s, got in zip(approxes, batch, strict=True):
            want = met.score(dense, s, damping=0.1)
            assert got.keys() == want.keys()
            for key in want:
                assert abs(got[key] - want[key]) <= 1e-10 * max(abs(want[key]), 1.0), key
    assert met.score(f, [], damping=0.1) == []


def test_cost_model_chooses_by_the_crossovers():
    assert set(plan(1, 512, 512)) == set(PRIMITIVES)
    t1 = plan(1, 512, 512)
    assert t1["contract"] == t1["moments"] == t1["gram"] == t1["rotated_diagonal"] == "factored"
    # Gram pays while T ≲ sqrt(mn / (m + n)) = 16 at 512²
    assert plan(16, 512, 512)["gram"] == "factored"  # T² (m+n+1) < 2mn up to T ≈ 22
    assert plan(24, 512, 512)["gram"] == "dense"
    # moments while T(m² + n²) + T²(m + n) < mn(m + n): T ≈ 366 at 512²
    assert plan(256, 512, 512)["moments"] == "factored"
    assert plan(512, 512, 512)["moments"] == "dense"
    assert set(plan(4, 8, 8, mode="dense").values()) == {"dense"}
    with pytest.raises(ValueError, match="mode"):
        plan(1, 2, 2, mode="fast")


def test_recorded_plan_is_the_cost_model():
    u, v, w, _ = _factors("T1")
    f = FactoredTarget(u, v, w)
    assert f.plan == plan(1, 3, 4, rank=min(f.padded, 12))


def test_bad_factors_are_named():
    u, v, w, _ = _factors("T1")
    u = u.copy()
    u[4, 0, 1] = np.nan
    with pytest.raises(NonFiniteError, match="left factors .* sample index 4"):
        FactoredTarget(u, v, w)
    with pytest.raises(ValueError, match="agree on every axis"):
        FactoredTarget(u[:, :, :2], v[:5], w)
    with pytest.raises(ValueError, match="factors must have shape"):
        FactoredTarget(u[0, 0], v[0, 0])
    with pytest.raises(ValueError, match="weights must have shape"):
        FactoredTarget(v, v, w[:3])


def test_a_new_sample_count_in_the_same_bucket_does_not_recompile():
    """FactoredTarget and SampleTarget (NumPy samples)."""
    rng = np.random.default_rng(7)
    compiles = []

    def listener(event, *_args, **_kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    def run(num):
        u, v = rng.standard_normal((num, 1, 40)), rng.standard_normal((num, 1, 30))
        f = FactoredTarget(u, v)  # N < mn: the Gram (sample-space) path, rank = N
        s = est.shampoo_squared(f)
        met.score(f, [s, est.diagonal(f)], damping=0.1)  # every key, von Neumann included
        f.contract_left(np.eye(30))
        g = np.einsum("ktm,ktn->kmn", u, v)
        for chunk in (None, 256):  # one chunk, and several (host slices, the last padded)
            t = SampleTarget(g, chunk_size=chunk)
            met.score(t, [est.shampoo_squared(t), est.diagonal(t)], damping=0.1)

    run(1000)  # warm-up: compiles every kernel for the bucket of 1000 (1024)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        run(1010)  # same bucket
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


@pytest.mark.parametrize("executor", ["numpy", "jax"])
def test_scoring_many_approximations_costs_one_gram_and_one_pass(monkeypatch, executor):
    u, v, w, _ = _factors("T1", seed=4)
    g = np.einsum("ktm,ktn->kmn", u, v)
    sample = SampleTarget(g, w, chunk_size=3, executor=executor)
    reads = []
    original = SampleTarget.chunk
    monkeypatch.setattr(SampleTarget, "chunk", lambda self, i: reads.append(i) or original(self, i))
    approxes = [est.diagonal(sample), est.shampoo_squared(DenseTarget(np.eye(12), (3, 4)))]
    approxes.append(est.eigencorrected(sample))
    reads.clear()
    met.score(sample, approxes, damping=0.1)
    # block pairs i ≤ j on the JAX executor; one product of the in-memory samples on NumPy
    gram_reads = sample.num_chunks * (sample.num_chunks + 1) // 2 if executor == "jax" else 0
    assert len(reads) == sample.num_chunks + gram_reads  # one pass for all three + the Gram
    reads.clear()
    met.score(sample, approxes, damping=0.1)
    met.cosine_similarity(sample, approxes[0])
    assert len(reads) == sample.num_chunks + sample.num_chunks  # the Gram is cached
    from precond_lab.targets._gram import Gram

    cholesky = []
    original_logdet = Gram.logdet
    monkeypatch.setattr(
        Gram, "logdet", lambda self, *a: cholesky.append(1) or original_logdet(self, *a)
    )
    fresh = SampleTarget(g, w, chunk_size=3, executor=executor)
    met.score(fresh, approxes, damping=0.1)
    met.kl_divergence(fresh, approxes[0], damping=0.1)
    assert len(cholesky) == 1  # log det(Σ + λI): one Cholesky per target and λ
    f = FactoredTarget(u, v, w)
    blocks = []
    original_blocks = FactoredTarget._gram_blocks
    monkeypatch.setattr(
        FactoredTarget, "_gram_blocks", lambda self: blocks.append(1) or original_blocks(self)
    )
    met.score(f, approxes, damping=0.1)
    met.kl_divergence(f, approxes[1], damping=0.1)
    met.cosine_similarity(f, approxes[2])
    assert len(blocks) == 1
