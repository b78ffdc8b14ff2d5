"""The case table: one entry per registered estimator and metric (lineax's model).

Each estimator case fits the estimator matrix-free on a random problem and returns
``(structure, dense float64 reference)``; each metric case returns
``(matrix-free value, dense reference value)``. ``test_registry.py`` beside it checks
that every registered name has a case here (so a forgotten test entry fails) and runs
them all.
"""

from __future__ import annotations

import numpy as np

from precond_lab import SampleTarget
from precond_lab import estimators as est
from precond_lab import metrics as met
from precond_lab import reference as ref


def problem(seed: int = 0, num: int = 40, m: int = 4, n: int = 3):
    """A random full-rank problem: samples, Σ (dense) and a SampleTarget."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((num, m, n)) * np.linspace(0.5, 2.0, n)
    sigma = ref.target_matrix(g)
    return g, sigma, SampleTarget(g)


def _kfac_inputs(seed=0, num=40, m=4, n=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num, n)), rng.standard_normal((num, m))


def _kfac_case():
    a, d = _kfac_inputs()
    left, right = ref.kfac(a, d)
    return est.kfac(a, d), np.kron(left, right)


def _eig_case():
    g, sigma, t = problem()
    s = est.eigencorrected(t)
    basis = est.shampoo_squared(t)
    qa = np.linalg.eigh(np.asarray(basis.left))[1]
    qb = np.linalg.eigh(np.asarray(basis.right))[1]
    q = np.kron(qa, qb)
    return s, q @ np.diag(ref.eigencorrected(sigma, qa, qb).ravel()) @ q.T


def _power_dense():
    sigma = problem()[1]
    k = np.kron(*ref.power_iteration(sigma, 4, 3, 3))
    return np.sum(sigma * k) * k  # unit factors times the optimal scale ⟨Σ, A⊗B⟩


def _kron(pair):
    return np.kron(*pair)


#: name -> () -> (structure, dense reference matrix)
ESTIMATOR_CASES = {
    "frobenius_optimal": lambda: (
        est.frobenius_optimal(problem()[2]),
        _kron(ref.frobenius_optimal(problem()[1], 4, 3)),
    ),
    "power_iteration": lambda: (est.power_iteration(problem()[2], 3), _power_dense()),
    "shampoo": lambda: (est.shampoo(problem()[2]), ref.shampoo(problem()[1], 4, 3)),
    "shampoo_squared": lambda: (
        est.shampoo_squared(problem()[2]),
        ref.shampoo_squared(problem()[1], 4, 3),
    ),
    "kl_optimal": lambda: (
        est.kl_optimal(problem()[2], tol=1e-14, max_iter=5000),
        _kron(ref.kl_flip_flop(problem()[1], 4, 3)),
    ),
    "kl_flat_tail": lambda: (
        est.kl_flat_tail(problem()[2], 1, tol=1e-14, max_iter=5000),
        ref.kl_flat_tail(problem()[1], 4, 3, 1),
    ),
    "shampoo_product": lambda: (
        est.shampoo_product(problem()[2]),
        ref.shampoo_product(problem()[1], 4, 3),
    ),
    "adafactor": lambda: (est.adafactor(problem()[2]), ref.adafactor(problem()[1], 4, 3)),
    "one_sided_kl": lambda: (est.one_sided_kl(problem()[2]), ref.one_sided_kl(problem()[1], 4, 3)),
    "eigencorrected": _eig_case,
    "diagonal": lambda: (est.diagonal(problem()[2]), ref.diagonal(problem()[1])),
    "kfac": _kfac_case,
    "bregman_optimal": lambda: (
        est.bregman_optimal(problem()[2], 0.5, tol=1e-14),
        _kron(ref.bregman_optimal(problem()[1], 4, 3, 0.5)),
    ),
}


def _approx():
    return est.shampoo_squared(problem(seed=1)[2])


def _metric(name, **kw):
    def case():
        g, sigma, t = problem()
        s = _approx()
        dense = np.asarray(s.to_dense(), np.float64)
        spec = met.METRICS[name]
        fn = getattr(met, spec.function)
        reffn = getattr(ref, spec.reference)
        got = fn(t, s, **dict(spec.function_kwargs), **kw)
        if name == "kl_rescaled":
            want = ref.kl_divergence(sigma, ref.kl_scale(sigma, dense) * dense)
        elif name == "logdet":
            want = 2 * ref.kl_divergence(sigma, dense)
        else:
            want = reffn(sigma, dense, **dict(spec.reference_kwargs))
        return float(got), float(want)

    return case


#: Metrics whose dense reference is a 1-D numerical minimisation (scipy), exact to ~1e-9.
MINIMISER_REFERENCES = {"kl_scale", "kl_rescaled"}

#: name -> () -> (matrix-free value, dense reference value)
METRIC_CASES = {
    name: _metric(name)
    for name in (
        "cosine",
        "relative_frobenius",
        "relative_frobenius_rescaled",
        "frobenius_scale",
        "kl",
        "kl_rescaled",
        "kl_scale",
        "von_neumann",
        "logdet",
        "bregman",
    )
}
