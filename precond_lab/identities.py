"""Named identity checks: the exact claims D1–D9, P1, P2 and P3 checked on one target.

Each :class:`IdentityCheck` of :data:`IDENTITY_CHECKS` computes one relative error of a
matrix-free (or iterative, or numerical) result against a dense float64 reference
(:mod:`precond_lab.reference`, JAX autodiff of the dense divergences for P1-40), on an
:class:`IdentityCase`: a target ``Σ`` (dense and matrix-free) checked at ``X = Σ + λI``.
``fn(case)`` returns the error, or None where the check does not apply (the exact-Kronecker
checks on other targets, the costly ones above a size). A claim holds when the largest
error of its checks is within each check's tolerance (``studies/identities.py``).

The work shared by the checks of a case (the fits, Shampoo², the KL fixed point, IF-Shampoo
iterated to it) is computed once per case (cached properties); the random directions of a
check are drawn from ``case.rng(check_id)``, seeded by the case's name and the check's id.
Call with ``jax_enable_x64`` on: the tolerances are float64's.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from . import reference as ref
from ._validation import check_number

__all__ = [
    "ARGMIN",
    "EXACT",
    "IDENTITY_CHECKS",
    "ITER",
    "LOSS_SCALES",
    "NUMERIC",
    "CheckOptions",
    "IdentityCase",
    "IdentityCheck",
    "check_identity",
    "if_shampoo_orthogonality",
    "iterate_if_shampoo",
    "kronecker_case",
    "logdet_hessian_errors",
    "loss_scaling_errors",
    "measurements",
    "random_case",
    "sample_case",
]

EXACT = 1e-10  # exact identities: matrix-free vs dense float64
ITER = 1e-8  # fixed points of converged iterations (fit tolerance 1e-12)
NUMERIC = 1e-5  # against a generic numerical minimiser (scipy, finite differences)
ARGMIN = 1e-3  # location of a finite-difference BFGS minimum in flat directions
LOSS_SCALES = (0.1, 10.0)  # P2-42: loss scales c
IF_EVERY = 25  # IF-Shampoo's stationarity is recorded every IF_EVERY steps


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    """How far the iterative and numerical checks go.

    Attributes:
        power_steps: power-iteration steps for D3.
        vn_numeric_max_dim: largest ``mn`` for scipy's von Neumann minimiser (D9).
        if_max_steps: most IF-Shampoo steps when iterating to the fixed point (D6).
        if_iterate_max_dim: largest ``mn`` for which IF-Shampoo is iterated (None: all).
    """

    power_steps: int = 60
    vn_numeric_max_dim: int = 6
    if_max_steps: int = 3000
    if_iterate_max_dim: int | None = None


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x) * (1.0 if np.trace(x) >= 0 else -1.0)


def _if_state(c, k):
    """IF-Shampoo's typed state at ``(C, K)`` with zero momenta (step 0)."""
    import jax.numpy as jnp

    from .methods import IFShampooLeaf
    from .online import OnlineState

    c, k = jnp.asarray(c), jnp.asarray(k)
    mu = jnp.zeros((c.shape[0], k.shape[0]), c.dtype)
    leaf = IFShampooLeaf(ks=(c, k), ms=(jnp.zeros_like(c), jnp.zeros_like(k)), mu=mu)
    return OnlineState(jnp.asarray(0, jnp.int32), leaf)


def _stationarity(state, g, damping) -> float:
    from . import online

    m, n = g.shape[1:]
    mc, mk = online.if_shampoo_stationarity(state, g, damping=float(damping))
    return float(2 * np.linalg.norm(mc) / np.sqrt(m) + 2 * np.linalg.norm(mk) / np.sqrt(n))


@dataclasses.dataclass(frozen=True, eq=False)
class IdentityCase:
    """One target of the identity checks.

    Attributes:
        name: its label (also seeds its random directions).
        source: where it comes from (``random``, ``kronecker``, ``digits``, …).
        sigma: the dense ``mn×mn`` base target ``Σ``.
        target: the same target matrix-free (a ``precond_lab`` target).
        shape: the leaf's ``(m, n)``.
        damping: ``λ``; the checks are made on ``X = Σ + λI``.
        kronecker: ``Σ`` is exactly a Kronecker product (D4, P3-9, P3-2's √ relation).
        options: the iterative checks' settings.
    """

    name: str
    source: str
    sigma: np.ndarray
    target: Any
    shape: tuple[int, int]
    damping: float = 0.0
    kronecker: bool = False
    options: CheckOptions = CheckOptions()

    def rng(self, salt: str) -> np.random.Generator:
        """A generator seeded by the case's name and ``salt`` (a check's id)."""
        return np.random.default_rng([zlib.crc32(self.name.encode()), zlib.crc32(salt.encode())])

    @functools.cached_property
    def x(self) -> np.ndarray:
        return np.asarray(self.sigma, np.float64) + self.damping * np.eye(len(self.sigma))

    @functools.cached_property
    def xt(self):
        return self.target.damped(self.damping)

    @functools.cached_property
    def probes(self):
        """Random ``A`` (m×m), ``B`` (n×n), ``X`` (m×n) for the vec and rearrangement checks."""
        rng, (m, n) = self.rng("probes"), self.shape
        return rng.standard_normal((m, m)), rng.standard_normal((n, n)), rng.standard_normal((m, n))

    @functools.cached_property
    def statistics(self):
        return ref.shampoo_statistics(self.x, *self.shape)

    @functools.cached_property
    def sh2(self):
        from . import estimators as est

        return est.shampoo_squared(self.xt)

    @functools.cached_property
    def fro(self):
        from . import estimators as est

        return est.frobenius_optimal(self.xt)

    @functools.cached_property
    def opt_ref(self) -> np.ndarray:
        return np.kron(*ref.frobenius_optimal(self.x, *self.shape))

    @functools.cached_property
    def klf(self):
        from . import estimators as est

        return est.kl_optimal(self.xt)

    @functools.cached_property
    def kl_factors(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.klf.left) * float(self.klf.scale), np.asarray(self.klf.right)

    @functools.cached_property
    def if_problem(self):
        """IF-Shampoo's full batch: ``mn`` samples with mean outer product ``Σ/s``, the damping
        ``λ/s`` (``s = trΣ/mn``: the iteration is equivariant) and ``s``."""
        scale = float(np.trace(self.sigma)) / len(self.sigma)
        g = ref.equivalent_samples(self.sigma, *self.shape) / np.sqrt(scale)
        return g, self.damping / scale, scale

    @functools.cached_property
    def if_iterated(self):
        """IF-Shampoo iterated to its fixed point, or None above ``if_iterate_max_dim``."""
        o = self.options
        if o.if_iterate_max_dim is not None and len(self.sigma) > int(o.if_iterate_max_dim):
            return None  # O((mn)²(m+n)) per step
        g, lam, _ = self.if_problem
        return iterate_if_shampoo(g, lam, int(o.if_max_steps))

    @functools.cached_property
    def eigencorrected(self):
        from . import estimators as est

        ek = est.eigencorrected(self.xt)
        q = np.kron(np.asarray(ek.left_basis), np.asarray(ek.right_basis))
        return q, np.asarray(ek.values).reshape(-1)

    @functools.cached_property
    def vn_minimum(self):
        """scipy's von Neumann minimiser and value, or None above ``vn_numeric_max_dim``."""
        if len(self.sigma) > int(self.options.vn_numeric_max_dim):
            return None
        return ref.vn_kronecker_minimiser(self.x, *self.shape, self.rng("D9-numeric"))

    @functools.cached_property
    def logdet(self) -> tuple[float, float]:
        return logdet_hessian_errors(self.x, self.rng("P1-40"))

    @functools.cached_property
    def loss_scaling(self) -> tuple[float, float]:
        return loss_scaling_errors(self.x, *self.shape, self.rng("P2-42"))


def _case(name, source, sigma, target, damping, kronecker, options) -> IdentityCase:
    opts = options if options is not None else CheckOptions()
    shape = tuple(int(s) for s in target.matrix_shape)
    return IdentityCase(name, source, sigma, target, shape, float(damping), bool(kronecker), opts)


def random_case(m: int, n: int, seed: int = 0, cond: float = 0.0, options=None) -> IdentityCase:
    """``Σ = E[ggᵀ]`` of ``3mn`` Gaussian ``m×n`` samples, columns and rows scaled by
    ``10^U(0, cond)`` and ``10^U(0, cond/2)`` (seeded by ``(seed, m, n, 10·cond)``)."""
    from .targets import SampleTarget

    m, n = check_number(m, "m", low=1, integer=True), check_number(n, "n", low=1, integer=True)
    cond = check_number(cond, "cond", low=0.0)
    rng = np.random.default_rng([int(seed), m, n, int(10 * cond)])
    g = rng.standard_normal((3 * m * n, m, n))
    if cond:
        g = g * 10.0 ** rng.uniform(0.0, cond, (1, 1, n))
        g = g * 10.0 ** rng.uniform(0.0, cond / 2, (1, m, 1))
    sigma = ref.target_matrix(g)
    return _case(f"random {m}x{n} s{seed} c{cond:g}", "random", sigma, SampleTarget(g), 0.0,
                 False, options)  # fmt: skip


def _random_spd(rng, d, cond_exp):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    w = 10.0 ** rng.uniform(0.0, cond_exp, d) if cond_exp else rng.uniform(0.5, 2.0, d)
    return (q * w) @ q.T


def kronecker_case(m: int, n: int, index: int = 0, options=None) -> IdentityCase:
    """An exact ``Σ = A ⊗ B`` (random SPD factors of spread ``10²`` and ``10``, seeded by
    ``(99, index, m, n)``), held dense."""
    from .targets import DenseTarget

    m, n = check_number(m, "m", low=1, integer=True), check_number(n, "n", low=1, integer=True)
    rng = np.random.default_rng([99, int(index), m, n])
    sigma = np.kron(_random_spd(rng, m, 2.0), _random_spd(rng, n, 1.0))
    return _case(f"kronecker {m}x{n}", "kronecker", sigma, DenseTarget(sigma, (m, n)), 0.0, True,
                 options)  # fmt: skip


def sample_case(name: str, source: str, samples, weights=None, relative_damping=1e-3,
                options=None) -> IdentityCase:  # fmt: skip
    """A (singular) target of weighted samples ``(N, m, n)``, checked at ``Σ + λI``,
    ``λ = relative_damping·trΣ/(mn)``."""
    from .targets import SampleTarget

    rel = check_number(relative_damping, "relative_damping", low=0.0)
    base = SampleTarget(samples, weights)
    m, n = base.matrix_shape
    lam = rel * float(base.trace()) / (m * n)
    sigma = ref.target_matrix(np.asarray(samples), None if weights is None else np.asarray(weights))
    return _case(name, source, sigma, base, lam, False, options)


class IdentityCheck(NamedTuple):
    """One named check: the claim it tests, its tolerance, its kind (``exact``,
    ``iterative``, ``numerical``), what it compares and ``fn(case) -> error or None``."""

    claim: str
    tolerance: float
    kind: str
    description: str
    fn: Callable[[IdentityCase], float | None]


# ------------------------------------------------------------------------------- checks
def _d1(c):
    from .structures import Kronecker

    a, b, xm = c.probes
    return max(
        _rel(np.kron(a, b) @ xm.reshape(-1), (a @ xm @ b.T).reshape(-1)),
        _rel(  # the structure holds symmetric factors (covariances): check it on a + aᵀ, b + bᵀ
            np.asarray(Kronecker(a + a.T, b + b.T).matvec(xm)).reshape(-1),
            np.kron(a + a.T, b + b.T) @ xm.reshape(-1),
        ),
    )


def _d8(c):
    rng = c.rng("D8")
    gg = np.outer(delta := rng.standard_normal(c.shape[0]), act := rng.standard_normal(c.shape[1]))
    return max(
        _rel(gg.reshape(-1), np.kron(delta, act)),
        _rel(gg.reshape(-1, order="F"), np.kron(act, delta)),
    )


def _r_sigma(c):
    return ref.rearrange(c.x, *c.shape)


def _d2_norm(c):
    a, b, _ = c.probes
    lhs = np.linalg.norm(c.x - np.kron(a, b))
    rhs = np.linalg.norm(_r_sigma(c) - np.outer(a.reshape(-1), b.reshape(-1)))
    return abs(lhs - rhs) / rhs


def _p3_1_power(c):
    from . import estimators as est

    p1 = est.power_iteration(c.xt, 1)
    return max(_rel(_unit(p1.left), _unit(c.sh2.left)), _rel(_unit(p1.right), _unit(c.sh2.right)))


def _d3_step(c):
    pa, pb = ref.power_iteration(c.x, *c.shape, 1)
    return max(_rel(pa, _unit(c.statistics[0])), _rel(pb, _unit(c.statistics[1])))


def _d3_power(c):
    from . import estimators as est

    return _rel(np.asarray(est.power_iteration(c.xt, int(c.options.power_steps)).to_dense()),
                c.opt_ref)  # fmt: skip


def _d3_psd(c):
    return max(
        max(0.0, -np.linalg.eigvalsh(f).min()) / np.abs(np.linalg.eigvalsh(f)).max()
        for f in (np.asarray(c.fro.left), np.asarray(c.fro.right))
    )


def _shampoo_dense(c):
    from . import estimators as est

    return np.asarray(est.shampoo(c.xt).to_dense())


def _d4_sqrt(c):
    sh = _shampoo_dense(c)
    return _rel(sh / np.linalg.norm(sh), _unit(ref.psd_power(c.x, 0.5)))


def _d5_residual(c):
    (m, n), (kl_l, kl_r) = c.shape, c.kl_factors
    blocks = c.x.reshape(m, n, m, n)
    new_l = np.einsum("ijkl,jl->ik", blocks, np.linalg.inv(kl_r)) / n
    new_r = np.einsum("ijkl,ik->jl", blocks, np.linalg.inv(kl_l)) / m
    return _rel(new_l, kl_l) + _rel(new_r, kl_r)


def _kl_scale_dense(c):
    return np.trace(np.linalg.solve(np.asarray(c.sh2.to_dense()), c.x)) / len(c.x)


def _d5_scale(c):
    from . import metrics as met

    dense = _kl_scale_dense(c)
    return abs(float(met.kl_scale(c.xt, c.sh2, approx_damping=0.0)) - dense) / dense


def _d5_scale_min(c):
    dense = _kl_scale_dense(c)
    return abs(ref.kl_scale(c.x, np.asarray(c.sh2.to_dense())) - dense) / dense


def _kl_rise(x, base, ys) -> float:
    """How much the KL falls below ``KL(X‖base)`` over ``ys``, relatively (0: it never does)."""
    kl0 = ref.kl_divergence(x, base)
    return max(0.0, -min(ref.kl_divergence(x, y) - kl0 for y in ys)) / max(abs(kl0), 1.0)


def _p1_12_perturb(c):
    (m, n), (kl_l, kl_r), rng = c.shape, c.kl_factors, c.rng("P1-12-perturb")
    dirs = zip(ref.symmetric_directions(rng, m, 3), ref.symmetric_directions(rng, n, 3),
               strict=True)  # fmt: skip
    ys = [np.kron(ref.congruence(kl_l, el, 1e-3), ref.congruence(kl_r, er, 1e-3))
          for el, er in dirs]  # fmt: skip
    return _kl_rise(c.x, np.kron(kl_l, kl_r), ys)


def _p1_11_formula(c):
    from . import estimators as est

    (m, n), (left, right) = c.shape, c.statistics
    return max(
        _rel(np.asarray(est.one_sided_kl(c.xt, side="left").to_dense()),
             np.kron(left / n, np.eye(n))),
        _rel(np.asarray(est.one_sided_kl(c.xt, side="right").to_dense()),
             np.kron(np.eye(m), right / m)),
    )  # fmt: skip


def _p1_11_grad(c):
    (m, n), (left, right) = c.shape, c.statistics
    return max(ref.kl_factor_stationarity(c.x, left / n, None),
               ref.kl_factor_stationarity(c.x, None, right / m))  # fmt: skip


def _p1_11_perturb(c):
    (m, n), a = c.shape, c.statistics[0] / c.shape[1]
    dirs = ref.symmetric_directions(c.rng("P1-11-perturb"), m, 3)
    ys = [np.kron(ref.congruence(a, e, 1e-3), np.eye(n)) for e in dirs]
    return _kl_rise(c.x, np.kron(a, np.eye(n)), ys)


def _d6_stationary(c):
    g, lam, scale = c.if_problem
    kl_l, kl_r = c.kl_factors
    state = _if_state(np.linalg.cholesky(np.linalg.inv(kl_l / scale)),
                      np.linalg.cholesky(np.linalg.inv(kl_r)))  # fmt: skip
    return _stationarity(state, g, lam)


def _d6_iterate(c):
    if c.if_iterated is None:
        return None
    _, ci, ki = c.if_iterated
    s_if = np.kron(np.linalg.inv(ci @ ci.T), np.linalg.inv(ki @ ki.T)) * c.if_problem[2]
    return _rel(s_if, np.kron(*c.kl_factors))


def _d7(c):
    import jax.numpy as jnp

    qa, qb = (np.linalg.eigh(s)[1] for s in c.statistics)
    got = np.asarray(c.xt.rotated_diagonal(jnp.asarray(qa), jnp.asarray(qb)))
    return _rel(got, ref.eigencorrected(c.x, qa, qb))


def _p1_15_grad(c):
    (q, dvec), x = c.eigencorrected, c.x
    y0 = (q * dvec) @ q.T
    gk = np.diag(q.T @ ref.kl_gradient(x, y0) @ q)  # ∂KL/∂d_i
    gf = np.diag(q.T @ (-2.0 * (x - y0)) @ q)  # ∂‖X − Q diag(d) Qᵀ‖²/∂d_i
    return max(float(np.linalg.norm(2 * dvec * gk) / np.sqrt(len(x))),
               float(np.linalg.norm(gf) / (2 * np.linalg.norm(dvec))))  # fmt: skip


def _p1_15_perturb(c):
    (q, dvec), x, rng = c.eigencorrected, c.x, c.rng("P1-15-perturb")
    kl_d0 = ref.kl_divergence(x, (q * dvec) @ q.T)
    fro_d0 = np.linalg.norm(x - (q * dvec) @ q.T) ** 2
    worst = np.inf
    for _ in range(4):
        y = (q * (dvec * np.exp(1e-3 * rng.standard_normal(len(x))))) @ q.T
        worst = min(worst, (ref.kl_divergence(x, y) - kl_d0) / max(abs(kl_d0), 1.0),
                    (np.linalg.norm(x - y) ** 2 - fro_d0) / np.linalg.norm(x) ** 2)  # fmt: skip
    return max(0.0, -worst)


def _vn(c):
    """The dense vN at ``L⊗R/trΣ`` and its scale (vN is a difference of O(trΣ) terms)."""
    vn0 = ref.von_neumann_divergence(c.x, np.asarray(c.sh2.to_dense()))
    return vn0, max(abs(vn0), float(np.trace(c.x)))


def _d9_metric(c):
    from . import metrics as met

    vn0, scale = _vn(c)
    return abs(float(met.von_neumann_divergence(c.xt, c.sh2)) - vn0) / scale


def _d9_perturb(c):
    (m, n), (vn0, scale), rng = c.shape, _vn(c), c.rng("D9-perturb")
    l_s, r_s = np.asarray(c.sh2.left), np.asarray(c.sh2.right) * float(c.sh2.scale)
    ys = [np.kron(ref.congruence(l_s, el, eps), ref.congruence(r_s, er, eps))
          for el, er in zip(ref.symmetric_directions(rng, m, 3),
                            ref.symmetric_directions(rng, n, 3), strict=True)
          for eps in (1e-3, -1e-3)]  # fmt: skip
    ys += [k * np.asarray(c.sh2.to_dense()) for k in (1.001, 0.999)]
    return max(0.0, -min(ref.von_neumann_divergence(c.x, y) - vn0 for y in ys)) / scale


def _d9_numeric(c):
    if c.vn_minimum is None:
        return None
    fun, closed = c.vn_minimum[1], _vn(c)[0]
    return max(closed - fun, 0.0) / max(abs(fun), 1e-300)


def _d9_argmin(c):
    return None if c.vn_minimum is None else _rel(c.vn_minimum[0], np.asarray(c.sh2.to_dense()))


def logdet_hessian_errors(x, rng, directions: int = 3) -> tuple[float, float]:
    """P1-40 on a dense SPD ``X``: ``(value error, Hessian error)``.

    ``B₀(X, S) = tr(XS⁻¹) − log det(XS⁻¹) − d`` against ``2·KL`` of the dense reference (at a
    random PD ``S``; relative to ``max(2·KL, d)``, the size of its terms), and its autodiff
    Hessian at ``S = X`` in random symmetric directions ``E`` against twice the Gaussian
    Fisher (the autodiff Hessian of the expected negative log-likelihood
    ``½ log det S + ½ tr(S⁻¹X)``) and against the closed form ``tr(X⁻¹EX⁻¹E)``.
    """
    import jax
    import jax.numpy as jnp

    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"x must be a square matrix; got shape {x.shape}")
    d, xj = x.shape[0], jnp.asarray(x)

    def b0(s):
        a = jnp.linalg.solve(s, xj)  # S⁻¹X: same trace and determinant as XS⁻¹
        return jnp.trace(a) - jnp.linalg.slogdet(a)[1] - d

    def nll(s):  # E_{x~N(0,X)}[−log N(x; 0, S)] up to a constant
        return 0.5 * jnp.linalg.slogdet(s)[1] + 0.5 * jnp.trace(jnp.linalg.solve(s, xj))

    def curvature(f, e):
        return float(jnp.sum(jax.jvp(jax.grad(f), (xj,), (e,))[1] * e))

    s_rand = ref.congruence(x, ref.symmetric_directions(rng, d, 1)[0], 0.3)
    kl = ref.kl_divergence(x, s_rand)
    value = abs(float(b0(jnp.asarray(s_rand))) - 2 * kl) / max(2 * abs(kl), d)
    xi, worst = np.linalg.inv(x), 0.0
    for e in ref.symmetric_directions(rng, d, directions):
        h_b0, fisher = curvature(b0, jnp.asarray(e)), curvature(nll, jnp.asarray(e))
        closed = float(np.trace(xi @ e @ xi @ e))
        worst = max(worst, abs(h_b0 - 2 * fisher) / abs(closed), abs(h_b0 - closed) / abs(closed))
    return value, worst


def loss_scaling_errors(x, m: int, n: int, rng) -> tuple[float, float]:
    """P2-42, loss rescaling: gradients ``× c`` make every statistic ``× c²``, so ``S^-½g`` is
    unchanged and ``S⁻¹g`` scales by ``1/c``; checked for Shampoo² and the KL-optimal fit
    on ``X`` and ``c²X`` (``c`` in :data:`LOSS_SCALES`). Returns the largest relative
    deviations ``(root, root-free)``."""
    from . import estimators as est
    from .targets import DenseTarget

    g, worst = rng.standard_normal((m, n)), {0.5: 0.0, 1.0: 0.0}
    for fit in (est.shampoo_squared, est.kl_optimal):
        base = fit(DenseTarget(x, (m, n)))
        for c in LOSS_SCALES:
            scaled = fit(DenseTarget(c * c * np.asarray(x), (m, n)))
            for p in worst:
                u1 = np.asarray(base.power(-p, 0.0).matvec(g))
                uc = np.asarray(scaled.power(-p, 0.0).matvec(c * g))
                worst[p] = max(worst[p], _rel(uc, c ** (1 - 2 * p) * u1))
    return worst[0.5], worst[1.0]


def if_shampoo_orthogonality(g, damping: float, rng, steps: int = 5) -> float:
    """P2-42, IF-Shampoo: started from ``(C·O, K·O')`` instead of ``(C, K)`` (``O, O'`` random
    orthogonal), every full-batch step on the samples ``g`` ``(N, m, n)`` gives the same
    ``CCᵀ``, ``KKᵀ``. Returns the largest relative difference over ``steps`` steps."""
    import jax.numpy as jnp

    from . import online

    g = np.asarray(g, np.float64)
    if g.ndim != 3:
        raise ValueError(f"g must be samples (N, m, n); got shape {g.shape}")
    m, n = g.shape[1:]
    tx = online.if_shampoo(beta2=0.3, alpha2=0.5, damping=float(damping), normalize=True)
    c0 = np.eye(m) + 0.1 * rng.standard_normal((m, m))
    k0 = np.eye(n) + 0.1 * rng.standard_normal((n, n))
    om = np.linalg.qr(rng.standard_normal((m, m)))[0]
    on = np.linalg.qr(rng.standard_normal((n, n)))[0]
    a, b, gj, worst = _if_state(c0, k0), _if_state(c0 @ om, k0 @ on), jnp.asarray(g), 0.0
    for _ in range(int(steps)):
        a, b = tx.update(a, gj), tx.update(b, gj)
        for u, v in ((np.asarray(a.c), np.asarray(b.c)), (np.asarray(a.k), np.asarray(b.k))):
            worst = max(worst, _rel(v @ v.T, u @ u.T))
    return worst


def iterate_if_shampoo(g, damping: float, max_steps: int, beta2=0.5, alpha2=0.0, tol=1e-12):
    """Full-batch IF-Shampoo from ``C = K = I`` until its stationarity ``‖2m_C‖/√m +
    ‖2m_K‖/√n ≤ tol``: the history (every ``IF_EVERY`` steps) and the final ``C``, ``K``."""
    import jax.numpy as jnp

    from . import online

    m, n = np.shape(g)[1:]
    g = jnp.asarray(g)
    tx = online.if_shampoo(beta2=float(beta2), alpha2=float(alpha2), damping=float(damping),
                           normalize=True)  # fmt: skip
    state, hist = _if_state(np.eye(m), np.eye(n)), []
    for step in range(int(max_steps) + 1):
        if step % IF_EVERY == 0:
            hist.append(_stationarity(state, g, damping))
            if hist[-1] <= tol or not np.isfinite(hist[-1]):
                break
        state = tx.update(state, g)
    return np.asarray(hist), np.asarray(state.c), np.asarray(state.k)


def _pair(attr, index):
    return lambda c: getattr(c, attr)[index]


def _if_orthogonal(c):
    g, lam, _ = c.if_problem
    return if_shampoo_orthogonality(g, lam, c.rng("P2-42-orthogonal"))


def _kron_only(fn):
    return lambda c: fn(c) if c.kronecker else None


_C = IdentityCheck
#: The identity checks by id (the study's ``check`` coordinate, in this order).
IDENTITY_CHECKS: dict[str, IdentityCheck] = {
    "D1": _C("D1", 1e-12, "exact", "kron(A,B) vec X = vec(A X Bᵀ) (row-major)", _d1),
    "D2-left": _C("D2", EXACT, "exact", "R(Σ) vec B = vec E[G B Gᵀ]", lambda c: _rel(
        np.asarray(c.xt.contract_left(c.probes[1])).reshape(-1),
        _r_sigma(c) @ c.probes[1].reshape(-1))),
    "D2-right": _C("D2", EXACT, "exact", "R(Σ)ᵀ vec A = vec E[Gᵀ A G]", lambda c: _rel(
        np.asarray(c.xt.contract_right(c.probes[0])).reshape(-1),
        _r_sigma(c).T @ c.probes[0].reshape(-1))),
    "D2-norm": _C("D2", EXACT, "exact", "‖Σ − A⊗B‖ = ‖R(Σ) − vec A vec Bᵀ‖", _d2_norm),
    "P3-1-left": _C("P3-1", EXACT, "exact", "R(Σ) vec I_n = vec L", lambda c: _rel(
        _r_sigma(c) @ np.eye(c.shape[1]).reshape(-1),
        np.asarray(c.xt.second_moments()[0]).reshape(-1))),
    "P3-1-right": _C("P3-1", EXACT, "exact", "R(Σ)ᵀ vec I_m = vec R", lambda c: _rel(
        _r_sigma(c).T @ np.eye(c.shape[0]).reshape(-1),
        np.asarray(c.xt.second_moments()[1]).reshape(-1))),
    "P3-1-power": _C("P3-1", EXACT, "exact", "1 power step from I ∝ Shampoo² (matrix-free)",
                     _p3_1_power),
    "D3-step": _C("D3", EXACT, "exact", "1 dense power step from I = (L, R)/‖·‖", _d3_step),
    "D3-svd": _C("D3", ITER, "iterative", "Lanczos optimum = dense SVD optimum",
                 lambda c: _rel(np.asarray(c.fro.to_dense()), c.opt_ref)),
    "D3-power": _C("D3", ITER, "iterative", "power iteration → dense SVD optimum", _d3_power),
    "D3-psd": _C("D3", 1e-12, "exact", "optimal factors PSD (−λ_min/λ_max)", _d3_psd),
    "D4-exact": _C("D4", EXACT, "exact", "Σ = A⊗B ⇒ L⊗R/trΣ = Σ (matrix-free)",
                   _kron_only(lambda c: _rel(np.asarray(c.sh2.to_dense()), c.x))),
    "D4-sqrt": _C("D4", EXACT, "exact", "Σ = A⊗B ⇒ L^½⊗R^½ ∝ Σ^½", _kron_only(_d4_sqrt)),
    "P3-9": _C("P3-9", EXACT, "exact", "Σ = A⊗B ⇒ dense L⊗R/trΣ = Σ",
               _kron_only(lambda c: _rel(ref.shampoo_squared(c.x, *c.shape), c.x))),
    "D5-residual": _C("D5", ITER, "iterative", "flip-flop equations at the KL fit (dense)",
                      _d5_residual),
    "D5-dense": _C("D5", ITER, "iterative", "KL fit = dense flip-flop", lambda c: _rel(
        np.asarray(c.klf.to_dense()), np.kron(*ref.kl_flip_flop(c.x, *c.shape)))),
    "D5-scale": _C("D5", EXACT, "exact", "KL-optimal scalar = tr(S⁻¹Σ)/mn (matrix-free)",
                   _d5_scale),
    "D5-scale-min": _C("D5", NUMERIC, "numerical", "tr(S⁻¹Σ)/mn = argmin_c KL (scipy)",
                       _d5_scale_min),
    "P1-11-formula": _C("P1-11", EXACT, "exact", "one-sided KL fit = (L/n)⊗I, I⊗(R/m)",
                        _p1_11_formula),
    "P1-11-grad": _C("P1-11", EXACT, "exact", "∇ dense KL at (L/n)⊗I = 0 (autodiff)",
                     _p1_11_grad),
    "P1-11-perturb": _C("P1-11", EXACT, "exact", "KL rises under perturbation", _p1_11_perturb),
    "P1-12-grad": _C("P1-12", ITER, "iterative", "∇_{L,R} dense KL at the fixed point = 0",
                     lambda c: ref.kl_factor_stationarity(c.x, *c.kl_factors)),
    "P1-12-perturb": _C("P1-12", EXACT, "exact", "KL rises under perturbation", _p1_12_perturb),
    "D6-stationary": _C("D6", ITER, "iterative", "IF-Shampoo m_C = m_K = 0 at the KL fixed point",
                        _d6_stationary),
    "D6-iterate": _C("D6", 1e-6, "iterative", "IF-Shampoo iterated → KL fixed point",
                     _d6_iterate),
    "D7": _C("D7", EXACT, "exact", "diag(QᵀΣQ) = E[(QaᵀGQb)²] (matrix-free)", _d7),
    "P1-15-grad": _C("P1-15", EXACT, "exact", "∇ KL and ∇ Frobenius in the basis = 0",
                     _p1_15_grad),
    "P1-15-perturb": _C("P1-15", EXACT, "exact", "KL and Frobenius rise under perturbation",
                        _p1_15_perturb),
    "D8": _C("D8", 1e-14, "exact", "vec_r(δaᵀ) = δ⊗a, vec_c(δaᵀ) = a⊗δ", _d8),
    "P1-40-value": _C("P1-40", EXACT, "exact",
                      "B₀(X, S) = tr(XS⁻¹) − log det(XS⁻¹) − d = 2·KL", _pair("logdet", 0)),
    "P1-40-fisher": _C("P1-40", EXACT, "exact", "autodiff Hessian of B₀ at S = X = 2 × autodiff "
                       "Gaussian Fisher = tr(X⁻¹EX⁻¹E)", _pair("logdet", 1)),
    "P2-42-root": _C("P2-42", ITER, "iterative", "loss × c: root update S^-½g unchanged",
                     _pair("loss_scaling", 0)),
    "P2-42-rootfree": _C("P2-42", ITER, "iterative", "loss × c: root-free update S⁻¹g scales 1/c",
                         _pair("loss_scaling", 1)),
    "P2-42-orthogonal": _C("P2-42", EXACT, "exact", "IF-Shampoo from (C·O, K·O'): same CCᵀ, KKᵀ "
                           "over 5 steps (O, O' orthogonal)", _if_orthogonal),
    "D9-metric": _C("D9", EXACT, "exact", "matrix-free vN = dense vN at L⊗R/trΣ", _d9_metric),
    "D9-perturb": _C("D9", EXACT, "exact", "vN rises under perturbation of L⊗R/trΣ",
                     _d9_perturb),
    "D9-numeric": _C("D9", EXACT, "numerical", "scipy's minimiser does not beat L⊗R/trΣ: "
                     "(vN(L⊗R/trΣ) − vN(scipy))₊ / vN (tiny sizes)", _d9_numeric),
    "D9-argmin": _C("D9", ARGMIN, "numerical", "scipy's argmin ≈ L⊗R/trΣ (finite-difference "
                    "BFGS: argmin accurate to ~√eps only)", _d9_argmin),
}  # fmt: skip


def check_identity(check_id: str, case: IdentityCase) -> float | None:
    """The error of check ``check_id`` on ``case`` (None where it does not apply).

    Raises:
        KeyError: ``check_id`` is not in :data:`IDENTITY_CHECKS` (the known ids listed).
    """
    if check_id not in IDENTITY_CHECKS:
        raise KeyError(f"unknown identity check {check_id!r}; known: {', '.join(IDENTITY_CHECKS)}")
    err = IDENTITY_CHECKS[check_id].fn(case)
    return None if err is None else float(err)


def measurements(case: IdentityCase) -> dict[str, Any]:
    """The case's reported measurements: Shampoo²'s distance to ``X`` (``kron_gap``), the
    Frobenius cosines of Shampoo², Shampoo and the Frobenius optimum with ``X`` (matrix-free
    and dense), the KL fit's iterations and IF-Shampoo's stationarity history (empty when
    not iterated)."""
    from . import estimators as est
    from . import metrics as met

    sh2_dense, sh = np.asarray(case.sh2.to_dense()), est.shampoo(case.xt)
    return {
        "kron_gap": _rel(sh2_dense, case.x),
        "cos_shampoo_squared": float(met.cosine_similarity(case.xt, case.sh2)),
        "cos_shampoo": float(met.cosine_similarity(case.xt, sh)),
        "cos_frobenius_optimal": float(met.cosine_similarity(case.xt, case.fro)),
        "cos_dense_shampoo_squared": ref.cosine_similarity(case.x, sh2_dense),
        "cos_dense_shampoo": ref.cosine_similarity(case.x, np.asarray(sh.to_dense())),
        "kl_iterations": int(case.klf.info.iterations),
        "if_history": np.zeros(0) if case.if_iterated is None else case.if_iterated[0],
    }
