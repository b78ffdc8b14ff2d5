"""Shared fixtures and random-problem generators for the core test suite.

Everything here runs in float64 (``jax_enable_x64``) unless a test asks for float32
explicitly. The dense references in :mod:`precond_lab.reference` are the ground truth.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from precond_lab import DenseTarget, SampleTarget, reference  # noqa: E402

RTOL = 1e-10  # matrix-free vs dense float64 reference


def random_samples(rng, num, m, n, cond_exp=0.0, dtype=np.float64):
    """``(num, m, n)`` Gaussian matrices; columns scaled by ``10^{U(0, cond_exp)}``."""
    g = rng.standard_normal((num, m, n))
    if cond_exp:
        g = g * 10.0 ** rng.uniform(0.0, cond_exp, size=(1, 1, n))
        g = g * 10.0 ** rng.uniform(0.0, cond_exp / 2, size=(1, m, 1))
    return g.astype(dtype)


def random_spd(rng, d, cond_exp=0.0):
    """A random SPD ``d×d`` matrix with eigenvalues in ``[1, 10^cond_exp]`` (times O(1))."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    w = 10.0 ** rng.uniform(0.0, cond_exp, size=d) if cond_exp else rng.uniform(0.5, 2.0, d)
    return (q * w) @ q.T


def random_orthogonal(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def random_nonsymmetric(rng, d):
    """A non-symmetric test matrix (a transpose bug cannot hide behind it)."""
    a = rng.standard_normal((d, d))
    return a + 0.5 * np.triu(np.ones((d, d)))  # asymmetric even when d is small


def assert_close(actual, desired, rtol=RTOL, atol_scale=None, err_msg=""):
    """Relative comparison against the size of ``desired`` (norm-wise, so tiny entries
    of a large matrix are compared at the matrix's scale)."""
    actual = np.asarray(actual, np.float64)
    desired = np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (actual.shape, desired.shape, err_msg)
    scale = np.max(np.abs(desired)) if atol_scale is None else atol_scale
    np.testing.assert_allclose(
        actual, desired, rtol=rtol, atol=rtol * max(scale, 1e-300), err_msg=err_msg
    )


def sample_targets(g, weights=None, center=False, chunk_sizes=(1, 3)):
    """The same Σ as SampleTargets with several chunk sizes on both executors (NumPy/BLAS
    and jitted JAX kernels) and as a DenseTarget."""
    m, n = g.shape[1:]
    out = [
        (
            f"samples[chunk={c}, {ex}]",
            SampleTarget(g, weights, center=center, chunk_size=c, executor=ex),
        )
        for c in chunk_sizes
        for ex in ("numpy", "jax")
    ]
    sigma = reference.target_matrix(g, weights, center=center)
    out.append(("dense", DenseTarget(sigma, (m, n))))
    return out, sigma


# Problems: (N, m, n, weights kind, center). Weight kinds: "default" (1/N), "positive",
# "negative" (some negative weights; Σ may then be indefinite). Few distinct (m, n) and
# chunk sizes, because every new array shape costs a JIT compilation.
PROBLEMS = [
    (7, 3, 2, "default", False),
    (10, 2, 4, "positive", False),
    (5, 1, 3, "default", False),
    (9, 4, 1, "positive", True),
    (30, 3, 2, "positive", False),  # full rank (N > mn)
    (3, 4, 3, "default", False),  # rank deficient: N < mn
    (11, 2, 4, "negative", True),  # some negative weights, centered
    (1, 3, 2, "default", False),  # a single sample
    (50, 5, 8, "positive", False),  # the largest size
]


def make_problem(seed, num, m, n, kind, center):
    rng = np.random.default_rng(seed)
    g = random_samples(rng, num, m, n)
    if kind == "default":
        w = None
    elif kind == "positive":
        w = rng.uniform(0.1, 1.0, num)
    else:  # a few negative weights, positive total
        w = rng.uniform(0.2, 1.0, num)
        w[::4] *= -0.3
    return g, w, center


@pytest.fixture(
    params=range(len(PROBLEMS)), ids=lambda i: "N{}-m{}-n{}-{}-c{}".format(*PROBLEMS[i])
)
def problem(request):
    num, m, n, kind, center = PROBLEMS[request.param]
    return make_problem(100 + request.param, num, m, n, kind, center)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
