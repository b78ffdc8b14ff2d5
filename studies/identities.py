"""Derived identities D1–D9 and the exact claims of P1, P2 and P3.

Every identity in the claims registry that names this study (the derived identities D1–D9,
P3-1, P3-2, P3-9, P1-11, P1-12, P1-15, P1-40 and P2-42; see ``docs/claims.md``) is checked in
float64, matrix-free result against a dense reference built from the explicit ``mn × mn``
matrix, on

* random targets ``Σ = E[ggᵀ]`` of Gaussian per-example matrices (several sizes, seeds and
  row/column conditionings, ``N = 3mn`` samples),
* exact Kronecker targets ``Σ = A ⊗ B`` (dense; where D4/P3-9/P3-2 say something exact),
* real gradients: softmax regression on sklearn digits (empirical Fisher and exact GGN,
  ``precond_lab.demo``) and a small captured MLP layer (``cached_capture``).

Real targets are singular, so every check there is made on ``X = Σ + λI`` with
``λ = damping·tr Σ/(mn)`` — the identities hold for any PSD target, and the KL/IF-Shampoo
ones need ``X`` positive definite. The Dataset holds one relative error per (check, case);
a claim holds when the largest of its checks' errors is within the check's tolerance.

This is dense verification, not a sweep over estimators: it calls the estimators, metrics
and online updates directly and compares each with :mod:`precond_lab.reference` (and, for
P1-40, with JAX autodiff of the dense divergences).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr

from precond_lab import claims as registry
from precond_lab import study
from precond_lab.study import save_figures
from studies._setups import Capture

NAME = "identities"
TITLE = "Derived identities D1–D9 and the exact claims of P1, P2 and P3"


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """One run of the study.

    Attributes:
        sizes: ``(m, n)`` of the random targets (``N = 3mn`` Gaussian samples each).
        seeds: seeds of the random targets.
        conds: row/column conditionings of the random targets (``10^cond`` spreads).
        kronecker: ``(m, n)`` of the exact Kronecker targets.
        digits: add softmax regression on sklearn digits (empirical Fisher and exact GGN).
        capture: a captured MLP layer, or None.
        power_steps: power-iteration steps for D3.
        vn_numeric_max_dim: largest ``mn`` for scipy's von Neumann minimiser (D9).
        if_max_steps: most IF-Shampoo steps when iterating to the fixed point (D6).
        if_iterate_max_dim: largest ``mn`` for which IF-Shampoo is iterated (None: all).
        real_damping: ``λ = real_damping·trΣ/(mn)`` on the real (singular) targets.
    """

    sizes: tuple[tuple[int, int], ...] = ((3, 2),)
    seeds: tuple[int, ...] = (0,)
    conds: tuple[float, ...] = (0.0, 2.0)
    kronecker: tuple[tuple[int, int], ...] = ((3, 2),)
    digits: bool = False
    capture: Capture | None = None
    power_steps: int = 60
    vn_numeric_max_dim: int = 6
    if_max_steps: int = 3000
    if_iterate_max_dim: int | None = None
    real_damping: float = 1e-3


_MLP = Capture(
    "mlp",
    "digits",
    layers=("layers/1/w",),
    steps=(100,),
    num_samples=128,
    model_options=(("hidden", (16,)),),
    dtype="float64",
)

PRESETS = {
    "test": Config(
        sizes=((3, 2),),
        seeds=(0,),
        conds=(0.0, 2.0),
        kronecker=((3, 2),),
        power_steps=60,
        vn_numeric_max_dim=6,
        if_max_steps=3000,
    ),
    "quick": Config(
        sizes=((3, 2), (4, 3), (6, 5)),
        seeds=(0, 1),
        conds=(0.0, 2.0),
        kronecker=((3, 2), (4, 3), (6, 5)),
        digits=True,
        capture=_MLP,
        power_steps=100,
        vn_numeric_max_dim=12,
        if_max_steps=4000,
        if_iterate_max_dim=200,
    ),
    "full": Config(
        sizes=((3, 2), (4, 3), (6, 5), (8, 8), (12, 10)),
        seeds=(0, 1, 2),
        conds=(0.0, 2.0, 4.0),
        kronecker=((3, 2), (4, 3), (6, 5), (12, 10)),
        digits=True,
        capture=dataclasses.replace(
            _MLP, steps=(0, 100, 500), num_samples=256, layers=("layers/0/w", "layers/1/w")
        ),
        power_steps=200,
        vn_numeric_max_dim=12,
        if_max_steps=20000,
    ),
}

EXACT = 1e-10  # exact identities: matrix-free vs dense float64
ITER = 1e-8  # fixed points of converged iterations (fit tolerance 1e-12)
NUMERIC = 1e-5  # against a generic numerical minimiser (scipy, finite differences)
ARGMIN = 1e-3  # location of a finite-difference BFGS minimum in flat directions

# check id -> (claim, tolerance, kind, what)
CHECKS = {
    "D1": ("D1", 1e-12, "exact", "kron(A,B) vec X = vec(A X Bᵀ) (row-major)"),
    "D2-left": ("D2", EXACT, "exact", "R(Σ) vec B = vec E[G B Gᵀ]"),
    "D2-right": ("D2", EXACT, "exact", "R(Σ)ᵀ vec A = vec E[Gᵀ A G]"),
    "D2-norm": ("D2", EXACT, "exact", "‖Σ − A⊗B‖ = ‖R(Σ) − vec A vec Bᵀ‖"),
    "P3-1-left": ("P3-1", EXACT, "exact", "R(Σ) vec I_n = vec L"),
    "P3-1-right": ("P3-1", EXACT, "exact", "R(Σ)ᵀ vec I_m = vec R"),
    "P3-1-power": ("P3-1", EXACT, "exact", "1 power step from I ∝ Shampoo² (matrix-free)"),
    "D3-step": ("D3", EXACT, "exact", "1 dense power step from I = (L, R)/‖·‖"),
    "D3-svd": ("D3", ITER, "iterative", "Lanczos optimum = dense SVD optimum"),
    "D3-power": ("D3", ITER, "iterative", "power iteration → dense SVD optimum"),
    "D3-psd": ("D3", 1e-12, "exact", "optimal factors PSD (−λ_min/λ_max)"),
    "D4-exact": ("D4", EXACT, "exact", "Σ = A⊗B ⇒ L⊗R/trΣ = Σ (matrix-free)"),
    "D4-sqrt": ("D4", EXACT, "exact", "Σ = A⊗B ⇒ L^½⊗R^½ ∝ Σ^½"),
    "P3-9": ("P3-9", EXACT, "exact", "Σ = A⊗B ⇒ dense L⊗R/trΣ = Σ"),
    "D5-residual": ("D5", ITER, "iterative", "flip-flop equations at the KL fit (dense)"),
    "D5-dense": ("D5", ITER, "iterative", "KL fit = dense flip-flop"),
    "D5-scale": ("D5", EXACT, "exact", "KL-optimal scalar = tr(S⁻¹Σ)/mn (matrix-free)"),
    "D5-scale-min": ("D5", NUMERIC, "numerical", "tr(S⁻¹Σ)/mn = argmin_c KL (scipy)"),
    "P1-11-formula": ("P1-11", EXACT, "exact", "one-sided KL fit = (L/n)⊗I, I⊗(R/m)"),
    "P1-11-grad": ("P1-11", EXACT, "exact", "∇ dense KL at (L/n)⊗I = 0 (autodiff)"),
    "P1-11-perturb": ("P1-11", EXACT, "exact", "KL rises under perturbation"),
    "P1-12-grad": ("P1-12", ITER, "iterative", "∇_{L,R} dense KL at the fixed point = 0"),
    "P1-12-perturb": ("P1-12", EXACT, "exact", "KL rises under perturbation"),
    "D6-stationary": ("D6", ITER, "iterative", "IF-Shampoo m_C = m_K = 0 at the KL fixed point"),
    "D6-iterate": ("D6", 1e-6, "iterative", "IF-Shampoo iterated → KL fixed point"),
    "D7": ("D7", EXACT, "exact", "diag(QᵀΣQ) = E[(QaᵀGQb)²] (matrix-free)"),
    "P1-15-grad": ("P1-15", EXACT, "exact", "∇ KL and ∇ Frobenius in the basis = 0"),
    "P1-15-perturb": ("P1-15", EXACT, "exact", "KL and Frobenius rise under perturbation"),
    "D8": ("D8", 1e-14, "exact", "vec_r(δaᵀ) = δ⊗a, vec_c(δaᵀ) = a⊗δ"),
    "P1-40-value": ("P1-40", EXACT, "exact", "B₀(X, S) = tr(XS⁻¹) − log det(XS⁻¹) − d = 2·KL"),
    "P1-40-fisher": (
        "P1-40",
        EXACT,
        "exact",
        "autodiff Hessian of B₀ at S = X = 2 × autodiff Gaussian Fisher = tr(X⁻¹EX⁻¹E)",
    ),
    "P2-42-root": ("P2-42", ITER, "iterative", "loss × c: root update S^-½g unchanged"),
    "P2-42-rootfree": ("P2-42", ITER, "iterative", "loss × c: root-free update S⁻¹g scales 1/c"),
    "P2-42-orthogonal": (
        "P2-42",
        EXACT,
        "exact",
        "IF-Shampoo from (C·O, K·O'): same CCᵀ, KKᵀ over 5 steps (O, O' orthogonal)",
    ),
    "D9-metric": ("D9", EXACT, "exact", "matrix-free vN = dense vN at L⊗R/trΣ"),
    "D9-perturb": ("D9", EXACT, "exact", "vN rises under perturbation of L⊗R/trΣ"),
    "D9-numeric": (
        "D9",
        EXACT,
        "numerical",
        "scipy's minimiser does not beat L⊗R/trΣ: (vN(L⊗R/trΣ) − vN(scipy))₊ / vN (tiny sizes)",
    ),
    "D9-argmin": (
        "D9",
        ARGMIN,
        "numerical",
        "scipy's argmin ≈ L⊗R/trΣ (finite-difference BFGS: argmin accurate to ~√eps only)",
    ),
}

#: The claims this study tests: those of the registry that name it (precond_lab.claims).
CLAIMS = tuple(c.id for c in registry.CLAIMS.values() if NAME in c.studies)
LOSS_SCALES = (0.1, 10.0)  # P2-42: loss scales c


# --------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------


def _random_spd(rng, d, cond_exp):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    w = 10.0 ** rng.uniform(0.0, cond_exp, d) if cond_exp else rng.uniform(0.5, 2.0, d)
    return (q * w) @ q.T


def _cases(config: Config) -> Iterator[dict]:
    """Yield dicts: name, source, m, n, kronecker, target (base), sigma (dense base), damping."""
    from precond_lab import DenseTarget, SampleTarget
    from precond_lab import reference as ref

    for m, n in config.sizes:
        for seed in config.seeds:
            for cond in config.conds:
                rng = np.random.default_rng([seed, m, n, int(10 * cond)])
                g = rng.standard_normal((3 * m * n, m, n))
                if cond:
                    g = g * 10.0 ** rng.uniform(0.0, cond, (1, 1, n))
                    g = g * 10.0 ** rng.uniform(0.0, cond / 2, (1, m, 1))
                yield {
                    "name": f"random {m}x{n} s{seed} c{cond:g}",
                    "source": "random",
                    "m": m,
                    "n": n,
                    "kronecker": 0,
                    "target": SampleTarget(g),
                    "sigma": ref.target_matrix(g),
                    "damping": 0.0,
                }
    for i, (m, n) in enumerate(config.kronecker):
        rng = np.random.default_rng([99, i, m, n])
        sigma = np.kron(_random_spd(rng, m, 2.0), _random_spd(rng, n, 1.0))
        yield {
            "name": f"kronecker {m}x{n}",
            "source": "kronecker",
            "m": m,
            "n": n,
            "kronecker": 1,
            "target": DenseTarget(sigma, (m, n)),
            "sigma": sigma,
            "damping": 0.0,
        }
    rel = float(config.real_damping)
    real = []
    if config.digits:
        from precond_lab.demo import digits_softmax_problem

        p = digits_softmax_problem()
        n_ex = p.gradients.shape[0]
        real.append(("digits softmax EF", "digits", p.gradients, np.full(n_ex, 1.0 / n_ex)))
        ggn = p.ggn.reshape(-1, *p.ggn.shape[-2:])
        real.append(("digits softmax GGN", "digits", ggn, np.full(ggn.shape[0], 1.0 / n_ex)))
    cap = config.capture
    if cap:
        from precond_lab.study import capture_targets

        for step, layer, tgt, arr, w in capture_targets(cap.kwargs()):
            real.append((f"{cap.model} {layer} step {step} {tgt}", "capture", arr, w))
    for label, source, g, w in real:
        m, n = g.shape[1:]
        base = SampleTarget(g, w)
        lam = rel * float(base.trace()) / (m * n)
        yield {
            "name": label,
            "source": source,
            "m": m,
            "n": n,
            "kronecker": 0,
            "target": base,
            "sigma": ref.target_matrix(g, w),
            "damping": lam,
        }


# --------------------------------------------------------------------------------------
# Dense helpers (float64 NumPy / JAX autodiff on the explicit matrices)
# --------------------------------------------------------------------------------------


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x) * (1.0 if np.trace(x) >= 0 else -1.0)


def _sqrtm(x):
    w, q = np.linalg.eigh(x)
    return (q * np.sqrt(np.clip(w, 0, None))) @ q.T


def _sym_perturbations(rng, d, count):
    out = []
    for _ in range(count):
        e = rng.standard_normal((d, d))
        out.append((e + e.T) / np.linalg.norm(e + e.T))
    return out


def _congruence(a, e, eps):
    """``A^½ exp(εE) A^½``: a PD perturbation of ``A``."""
    import scipy.linalg

    r = _sqrtm(a)
    return r @ scipy.linalg.expm(eps * e) @ r


def _dense_kl(x, y):
    from precond_lab import reference as ref

    return ref.kl_divergence(x, y)


def _kl_grad_dense(x, y):
    """``∇_Y KL(N(0,X) ‖ N(0,Y)) = ½(Y⁻¹ − Y⁻¹ X Y⁻¹)`` on the explicit matrices."""
    yi = np.linalg.inv(y)
    return 0.5 * (yi - yi @ x @ yi)


def _kl_grad_factors(x, left, right):
    """Gradient of ``KL(X ‖ L⊗R)`` in ``(L, R)`` by the chain rule on the dense gradient,
    made dimensionless: at a stationary point ``2 L ∇_L = n I − M L⁻¹ = 0``."""
    m, n = left.shape[0], right.shape[0]
    gy = _kl_grad_dense(x, np.kron(left, right)).reshape(m, n, m, n)
    gl = np.einsum("ijkl,jl->ik", gy, right)
    gr = np.einsum("ijkl,ik->jl", gy, left)
    return float(
        np.linalg.norm(2 * left @ gl) / (n * np.sqrt(m))
        + np.linalg.norm(2 * right @ gr) / (m * np.sqrt(n))
    )


# --------------------------------------------------------------------------------------
# The checks of one case
# --------------------------------------------------------------------------------------


def _check_case(case: dict, config: Config, rng) -> tuple[dict, dict]:
    """Every check of one case: ``(errors by check id, extra measurements)``."""
    import jax.numpy as jnp

    from precond_lab import estimators as est
    from precond_lab import metrics as met
    from precond_lab import online
    from precond_lab import reference as ref
    from precond_lab.structures import Kronecker

    m, n, lam = case["m"], case["n"], case["damping"]
    d = m * n
    x_t = case["target"].damped(lam)
    x = case["sigma"] + lam * np.eye(d)
    err, extra = {}, {}

    # D1, D8: vec conventions
    a, b, xm = rng.standard_normal((m, m)), rng.standard_normal((n, n)), rng.standard_normal((m, n))
    err["D1"] = max(
        _rel(np.kron(a, b) @ xm.reshape(-1), (a @ xm @ b.T).reshape(-1)),
        _rel(  # the structure holds symmetric factors (covariances): check it on a + aᵀ, b + bᵀ
            np.asarray(Kronecker(a + a.T, b + b.T).matvec(xm)).reshape(-1),
            np.kron(a + a.T, b + b.T) @ xm.reshape(-1),
        ),
    )
    delta, act = rng.standard_normal(m), rng.standard_normal(n)
    gg = np.outer(delta, act)
    err["D8"] = max(
        _rel(gg.reshape(-1), np.kron(delta, act)),
        _rel(gg.reshape(-1, order="F"), np.kron(act, delta)),
    )

    # D2: rearrangement
    r_sigma = ref.rearrange(x, m, n)
    err["D2-left"] = _rel(np.asarray(x_t.contract_left(b)).reshape(-1), r_sigma @ b.reshape(-1))
    err["D2-right"] = _rel(np.asarray(x_t.contract_right(a)).reshape(-1), r_sigma.T @ a.reshape(-1))
    lhs = np.linalg.norm(x - np.kron(a, b))
    rhs = np.linalg.norm(r_sigma - np.outer(a.reshape(-1), b.reshape(-1)))
    err["D2-norm"] = abs(lhs - rhs) / rhs

    # P3-1 / D3: one power step from the identity = Shampoo's statistics
    left_mf, right_mf = (np.asarray(s) for s in x_t.second_moments())
    err["P3-1-left"] = _rel(r_sigma @ np.eye(n).reshape(-1), left_mf.reshape(-1))
    err["P3-1-right"] = _rel(r_sigma.T @ np.eye(m).reshape(-1), right_mf.reshape(-1))
    p1 = est.power_iteration(x_t, 1)
    sh2 = est.shampoo_squared(x_t)
    err["P3-1-power"] = max(
        _rel(_unit(p1.left), _unit(sh2.left)), _rel(_unit(p1.right), _unit(sh2.right))
    )
    pa, pb = ref.power_iteration(x, m, n, 1)
    l_ref, r_ref = ref.shampoo_statistics(x, m, n)
    err["D3-step"] = max(_rel(pa, _unit(l_ref)), _rel(pb, _unit(r_ref)))
    fa, fb = ref.frobenius_optimal(x, m, n)
    opt_ref = np.kron(fa, fb)
    fro = est.frobenius_optimal(x_t)
    err["D3-svd"] = _rel(np.asarray(fro.to_dense()), opt_ref)
    pk = est.power_iteration(x_t, int(config.power_steps))
    err["D3-power"] = _rel(np.asarray(pk.to_dense()), opt_ref)
    err["D3-psd"] = max(
        max(0.0, -np.linalg.eigvalsh(f).min()) / np.abs(np.linalg.eigvalsh(f)).max()
        for f in (np.asarray(fro.left), np.asarray(fro.right))
    )

    # D4 / P3-9 / P3-2: Shampoo² and the misconception
    sh2_dense = np.asarray(sh2.to_dense())
    sh_dense = np.asarray(est.shampoo(x_t).to_dense())
    extra["kron_gap"] = _rel(sh2_dense, x)
    extra["cos_shampoo_squared"] = float(met.cosine_similarity(x_t, sh2))
    extra["cos_shampoo"] = float(met.cosine_similarity(x_t, est.shampoo(x_t)))
    extra["cos_frobenius_optimal"] = float(met.cosine_similarity(x_t, fro))
    extra["cos_dense_shampoo_squared"] = ref.cosine_similarity(x, sh2_dense)
    extra["cos_dense_shampoo"] = ref.cosine_similarity(x, sh_dense)
    if case["kronecker"]:
        err["D4-exact"] = _rel(sh2_dense, x)
        err["D4-sqrt"] = _rel(sh_dense / np.linalg.norm(sh_dense), _unit(_sqrtm(x)))
        err["P3-9"] = _rel(ref.shampoo_squared(x, m, n), x)

    # D5 / P1-12: the two-sided KL fixed point
    klf = est.kl_optimal(x_t)
    kl_l, kl_r = np.asarray(klf.left) * float(klf.scale), np.asarray(klf.right)
    extra["kl_iterations"] = klf.info.iterations
    blocks = x.reshape(m, n, m, n)
    ri, li = np.linalg.inv(kl_r), np.linalg.inv(kl_l)
    new_l = np.einsum("ijkl,jl->ik", blocks, ri) / n
    new_r = np.einsum("ijkl,ik->jl", blocks, li) / m
    err["D5-residual"] = _rel(new_l, kl_l) + _rel(new_r, kl_r)
    dl, dr = ref.kl_flip_flop(x, m, n)
    err["D5-dense"] = _rel(np.asarray(klf.to_dense()), np.kron(dl, dr))
    c_mf = float(met.kl_scale(x_t, sh2, approx_damping=0.0))
    c_dense = np.trace(np.linalg.solve(sh2_dense, x)) / d
    err["D5-scale"] = abs(c_mf - c_dense) / c_dense
    err["D5-scale-min"] = abs(ref.kl_scale(x, sh2_dense) - c_dense) / c_dense
    err["P1-12-grad"] = _kl_grad_factors(x, kl_l, kl_r)
    kl0 = _dense_kl(x, np.kron(kl_l, kl_r))
    worst = np.inf
    for el, er in zip(_sym_perturbations(rng, m, 3), _sym_perturbations(rng, n, 3), strict=True):
        y = np.kron(_congruence(kl_l, el, 1e-3), _congruence(kl_r, er, 1e-3))
        worst = min(worst, _dense_kl(x, y) - kl0)
    err["P1-12-perturb"] = max(0.0, -worst) / max(abs(kl0), 1.0)

    # P1-11: one-sided KL optimum = Shampoo's factor
    one_l, one_r = est.one_sided_kl(x_t, side="left"), est.one_sided_kl(x_t, side="right")
    err["P1-11-formula"] = max(
        _rel(np.asarray(one_l.to_dense()), np.kron(l_ref / n, np.eye(n))),
        _rel(np.asarray(one_r.to_dense()), np.kron(np.eye(m), r_ref / m)),
    )

    def one_sided_grad(side_mat, left_side):
        if left_side:  # Y = A ⊗ I_n: ∇_A = Σ_j ∇_Y[(i,j),(i',j)]
            gy = _kl_grad_dense(x, np.kron(side_mat, np.eye(n))).reshape(m, n, m, n)
            g, k = np.einsum("ijkj->ik", gy), n
        else:
            gy = _kl_grad_dense(x, np.kron(np.eye(m), side_mat)).reshape(m, n, m, n)
            g, k = np.einsum("ijil->jl", gy), m
        return float(np.linalg.norm(2 * side_mat @ g) / (k * np.sqrt(side_mat.shape[0])))

    err["P1-11-grad"] = max(one_sided_grad(l_ref / n, True), one_sided_grad(r_ref / m, False))
    base_l = _dense_kl(x, np.kron(l_ref / n, np.eye(n)))
    worst = min(
        _dense_kl(x, np.kron(_congruence(l_ref / n, e, 1e-3), np.eye(n))) - base_l
        for e in _sym_perturbations(rng, m, 3)
    )
    err["P1-11-perturb"] = max(0.0, -worst) / max(abs(base_l), 1.0)

    # D6: IF-Shampoo's stationary point is the damped KL fixed point
    g_eq = _equivalent_samples(case["sigma"], m, n)
    scale = float(np.trace(case["sigma"])) / d  # iterate on Σ/scale (equivariant)
    g_eq = g_eq / np.sqrt(scale)
    lam_s = lam / scale
    c_mat = np.linalg.cholesky(np.linalg.inv(kl_l / scale))
    k_mat = np.linalg.cholesky(np.linalg.inv(kl_r))
    state = _if_state(c_mat, k_mat)
    mc, mk = online.if_shampoo_stationarity(state, jnp.asarray(g_eq), damping=lam_s)
    err["D6-stationary"] = float(
        2 * np.linalg.norm(mc) / np.sqrt(m) + 2 * np.linalg.norm(mk) / np.sqrt(n)
    )
    extra["if_history"] = np.zeros(0)
    max_dim = config.if_iterate_max_dim
    if max_dim is None or d <= int(max_dim):  # O((mn)²(m+n)) per step
        hist, c_it, k_it = _iterate_if_shampoo(g_eq, lam_s, int(config.if_max_steps))
        s_if = np.kron(np.linalg.inv(c_it @ c_it.T), np.linalg.inv(k_it @ k_it.T)) * scale
        err["D6-iterate"] = _rel(s_if, np.kron(kl_l, kl_r))
        extra["if_history"] = hist

    # D7 / P1-15: the eigenbasis diagonal
    qa, qb = np.linalg.eigh(l_ref)[1], np.linalg.eigh(r_ref)[1]
    diag_mf = np.asarray(x_t.rotated_diagonal(jnp.asarray(qa), jnp.asarray(qb)))
    diag_ref = ref.eigencorrected(x, qa, qb)
    err["D7"] = _rel(diag_mf, diag_ref)
    ek = est.eigencorrected(x_t)
    dvec = np.asarray(ek.values).reshape(-1)
    q_mf = np.kron(np.asarray(ek.left_basis), np.asarray(ek.right_basis))

    y0 = (q_mf * dvec) @ q_mf.T
    gk = np.diag(q_mf.T @ _kl_grad_dense(x, y0) @ q_mf)  # ∂KL/∂d_i
    gf = np.diag(q_mf.T @ (-2.0 * (x - y0)) @ q_mf)  # ∂‖X − Q diag(d) Qᵀ‖²/∂d_i
    err["P1-15-grad"] = max(
        float(np.linalg.norm(2 * dvec * gk) / np.sqrt(d)),
        float(np.linalg.norm(gf) / (2 * np.linalg.norm(dvec))),
    )
    kl_d0 = _dense_kl(x, (q_mf * dvec) @ q_mf.T)
    fro_d0 = np.linalg.norm(x - (q_mf * dvec) @ q_mf.T) ** 2
    worst = np.inf
    for _ in range(4):
        dv = dvec * np.exp(1e-3 * rng.standard_normal(d))
        y = (q_mf * dv) @ q_mf.T
        worst = min(
            worst,
            (_dense_kl(x, y) - kl_d0) / max(abs(kl_d0), 1.0),
            (np.linalg.norm(x - y) ** 2 - fro_d0) / np.linalg.norm(x) ** 2,
        )
    err["P1-15-perturb"] = max(0.0, -worst)

    # D9: the von Neumann optimum
    vn_mf = float(met.von_neumann_divergence(x_t, sh2))
    vn0 = ref.von_neumann_divergence(x, sh2_dense)
    vn_scale = max(abs(vn0), float(np.trace(x)))  # vN is a difference of O(trΣ) terms
    err["D9-metric"] = abs(vn_mf - vn0) / vn_scale
    l_s, r_s = np.asarray(sh2.left), np.asarray(sh2.right) * float(sh2.scale)
    worst = np.inf
    for el, er in zip(_sym_perturbations(rng, m, 3), _sym_perturbations(rng, n, 3), strict=True):
        for eps in (1e-3, -1e-3):
            y = np.kron(_congruence(l_s, el, eps), _congruence(r_s, er, eps))
            worst = min(worst, ref.von_neumann_divergence(x, y) - vn0)
    for c in (1.001, 0.999):
        worst = min(worst, ref.von_neumann_divergence(x, c * sh2_dense) - vn0)
    err["D9-perturb"] = max(0.0, -worst) / vn_scale
    if d <= int(config.vn_numeric_max_dim):
        err["D9-numeric"], err["D9-argmin"] = _vn_numeric(x, m, n, sh2_dense, rng)

    # P1-40: the LogDet divergence's Hessian is twice the Gaussian Fisher
    err["P1-40-value"], err["P1-40-fisher"] = _logdet_hessian(x, rng)

    # P2-42: P2's exact invariances
    err["P2-42-root"], err["P2-42-rootfree"] = _loss_scaling(x, m, n, rng)
    err["P2-42-orthogonal"] = _if_orthogonal(g_eq, lam_s, rng)
    return err, extra


def _logdet_hessian(x, rng, directions=3):
    """P1-40 on the dense ``X``: ``(value error, Hessian error)``.

    ``B₀(X, S) = tr(XS⁻¹) − log det(XS⁻¹) − d`` against ``2·KL`` of the dense reference (at a
    random PD ``S``; error relative to ``max(2·KL, d)``, the size of its terms), and its
    autodiff Hessian at ``S = X`` in random symmetric directions ``E`` against twice the
    Gaussian Fisher, itself the autodiff Hessian of the expected
    negative log-likelihood ``½ log det S + ½ tr(S⁻¹X)`` (its definition), and against the
    closed form ``tr(X⁻¹EX⁻¹E)``.
    """
    import jax
    import jax.numpy as jnp

    d = x.shape[0]
    xj = jnp.asarray(x)

    def b0(s):
        a = jnp.linalg.solve(s, xj)  # S⁻¹X: same trace and determinant as XS⁻¹
        return jnp.trace(a) - jnp.linalg.slogdet(a)[1] - d

    def nll(s):  # E_{x~N(0,X)}[−log N(x; 0, S)] up to a constant
        return 0.5 * jnp.linalg.slogdet(s)[1] + 0.5 * jnp.trace(jnp.linalg.solve(s, xj))

    def hess(f, e):
        return jax.jvp(jax.grad(f), (xj,), (e,))[1]

    s_rand = _congruence(x, _sym_perturbations(rng, d, 1)[0], 0.3)
    value = abs(float(b0(jnp.asarray(s_rand))) - 2 * _dense_kl(x, s_rand))
    value /= max(2 * abs(_dense_kl(x, s_rand)), d)  # B₀ is a difference of O(d) terms
    xi = np.linalg.inv(x)
    worst = 0.0
    for e in _sym_perturbations(rng, d, directions):
        ej = jnp.asarray(e)
        h_b0 = float(jnp.sum(hess(b0, ej) * ej))
        fisher = float(jnp.sum(hess(nll, ej) * ej))
        closed = float(np.trace(xi @ e @ xi @ e))
        worst = max(worst, abs(h_b0 - 2 * fisher) / abs(closed), abs(h_b0 - closed) / abs(closed))
    return value, worst


def _loss_scaling(x, m, n, rng):
    """P2-42, loss rescaling: gradients ``× c`` make every statistic ``× c²`` (damping relative
    to the trace included), so ``S^-½g`` is unchanged and ``S⁻¹g`` scales by ``1/c``.

    Checked for Shampoo² and the KL-optimal fit (iterative, fit tolerance 1e-12) on
    ``X`` and ``c²X``. Returns the largest relative deviations ``(root, root-free)``.
    """
    from precond_lab import DenseTarget
    from precond_lab import estimators as est

    g = rng.standard_normal((m, n))
    worst = {0.5: 0.0, 1.0: 0.0}
    for fit in (est.shampoo_squared, est.kl_optimal):
        base = fit(DenseTarget(x, (m, n)))
        for c in LOSS_SCALES:
            scaled = fit(DenseTarget(c * c * x, (m, n)))
            for p in worst:
                u1 = np.asarray(base.power(-p, 0.0).matvec(g))
                uc = np.asarray(scaled.power(-p, 0.0).matvec(c * g))
                worst[p] = max(worst[p], _rel(uc, c ** (1 - 2 * p) * u1))
    return worst[0.5], worst[1.0]


def _if_orthogonal(g, damping, rng, steps=5):
    """P2-42, IF-Shampoo: started from ``(C·O, K·O')`` instead of ``(C, K)`` (``O, O'``
    random orthogonal), every step gives the same ``CCᵀ``, ``KKᵀ`` (hence the same update).

    Returns the largest relative difference over ``steps`` full-batch steps with momentum.
    """
    import jax.numpy as jnp

    from precond_lab import online

    m, n = g.shape[1:]
    est = online.if_shampoo(beta2=0.3, alpha2=0.5, damping=float(damping), normalize=True)
    c0 = np.eye(m) + 0.1 * rng.standard_normal((m, m))
    k0 = np.eye(n) + 0.1 * rng.standard_normal((n, n))
    om = np.linalg.qr(rng.standard_normal((m, m)))[0]
    on = np.linalg.qr(rng.standard_normal((n, n)))[0]
    a, b = _if_state(c0, k0), _if_state(c0 @ om, k0 @ on)
    gj = jnp.asarray(g)
    worst = 0.0
    for _ in range(steps):
        a, b = est.update(a, gj), est.update(b, gj)
        for x, y in ((a.c, b.c), (a.k, b.k)):
            x, y = np.asarray(x), np.asarray(y)
            worst = max(worst, _rel(y @ y.T, x @ x.T))
    return worst


def _equivalent_samples(sigma, m, n):
    """``mn`` samples ``√μ_k v_k`` (as ``m×n``) with mean outer product exactly ``Σ``.

    Same ``Σ`` as the original samples, fewer of them: the IF-Shampoo iteration then costs
    ``O((mn)²(m+n))`` per step whatever ``N`` was.
    """
    w, v = np.linalg.eigh(sigma)
    w = np.clip(w, 0.0, None)
    d = m * n
    return (np.sqrt(w * d) * v).T.reshape(d, m, n)  # mean over d samples


def _if_state(c, k):
    """IF-Shampoo's typed state at ``(C, K)`` with zero momenta (step 0)."""
    import jax.numpy as jnp

    from precond_lab.methods import IFShampooLeaf
    from precond_lab.online import OnlineState

    c, k = jnp.asarray(c), jnp.asarray(k)
    mu = jnp.zeros((c.shape[0], k.shape[0]), c.dtype)
    leaf = IFShampooLeaf(ks=(c, k), ms=(jnp.zeros_like(c), jnp.zeros_like(k)), mu=mu)
    return OnlineState(jnp.asarray(0, jnp.int32), leaf)


def _iterate_if_shampoo(g, damping, max_steps, beta2=0.5, alpha2=0.0, tol=1e-12, every=25):
    """Full-batch IF-Shampoo from ``C = K = I`` until ``‖m_C‖ + ‖m_K‖ ≤ tol``.

    Returns:
        The stationarity history (every ``every`` steps) and the final ``C``, ``K``.
    """
    import jax.numpy as jnp

    from precond_lab import online

    m, n = g.shape[1:]
    g = jnp.asarray(g)
    est = online.if_shampoo(
        beta2=float(beta2), alpha2=float(alpha2), damping=float(damping), normalize=True
    )
    state = _if_state(np.eye(m), np.eye(n))
    hist = []
    for step in range(max_steps + 1):
        if step % every == 0:
            mc, mk = online.if_shampoo_stationarity(state, g, damping=float(damping))
            r = float(2 * jnp.linalg.norm(mc) / np.sqrt(m) + 2 * jnp.linalg.norm(mk) / np.sqrt(n))
            hist.append(r)
            if r <= tol or not np.isfinite(r):
                break
        state = est.update(state, g)
    return np.asarray(hist), np.asarray(state.c), np.asarray(state.k)


def _vn_numeric(x, m, n, opt_dense, rng):
    """Minimise the dense von Neumann divergence over ``A⊗B`` (Cholesky parameters).

    Returns ``(how much scipy's minimum beats the closed form, relatively; 0 when it does
    not, which is what D9 claims)`` and the relative distance of the two minimisers (only
    as precise as finite-difference BFGS in the objective's flat directions).
    """
    import scipy.optimize

    from precond_lab import reference as ref

    tri_m, tri_n = np.tril_indices(m), np.tril_indices(n)

    def unpack(p):
        a = np.zeros((m, m))
        b = np.zeros((n, n))
        a[tri_m] = p[: len(tri_m[0])]
        b[tri_n] = p[len(tri_m[0]) :]
        return a @ a.T, b @ b.T

    def f(p):
        a, b = unpack(p)
        try:
            return ref.von_neumann_divergence(x, np.kron(a, b))
        except np.linalg.LinAlgError:
            return np.inf

    scale = (np.trace(x) / (m * n)) ** 0.25
    p0 = np.concatenate(
        [
            (np.eye(m) * scale + 0.1 * scale * np.tril(rng.standard_normal((m, m))))[tri_m],
            (np.eye(n) * scale + 0.1 * scale * np.tril(rng.standard_normal((n, n))))[tri_n],
        ]
    )
    res = scipy.optimize.minimize(f, p0, method="BFGS", options={"gtol": 1e-11, "maxiter": 5000})
    a, b = unpack(res.x)
    closed = ref.von_neumann_divergence(x, opt_dense)
    beaten_by = max(closed - res.fun, 0.0) / max(abs(res.fun), 1e-300)
    return beaten_by, _rel(np.kron(a, b), opt_dense)


# --------------------------------------------------------------------------------------
# run / verdicts / plot
# --------------------------------------------------------------------------------------


def run(config: Config, **overrides) -> xr.Dataset:
    """Every check on every case, float64.

    Args:
        config: a :class:`Config` (e.g. ``PRESETS["quick"]``).
        **overrides: fields of ``config`` to replace (``dataclasses.replace``).

    Returns:
        The Dataset: ``error(check, case)`` and the per-case measurements.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    from precond_lab.provenance import make_attrs

    config = dataclasses.replace(config, **overrides)
    rng = np.random.default_rng(2024)
    cases, errors, extras, seconds = [], [], [], []
    for case in _cases(config):
        t0 = time.perf_counter()
        err, extra = _check_case(case, config, rng)
        seconds.append(time.perf_counter() - t0)
        cases.append(case)
        errors.append([err.get(c, np.nan) for c in CHECKS])
        extras.append(extra)
    hist_len = max(1, max(len(e["if_history"]) for e in extras))
    hist = np.full((len(cases), hist_len), np.nan)
    for i, e in enumerate(extras):
        hist[i, : len(e["if_history"])] = e["if_history"]
    names = [c["name"] for c in cases]
    ds = xr.Dataset(
        {
            "error": (("check", "case"), np.asarray(errors).T),
            "kron_gap": ("case", [e["kron_gap"] for e in extras]),
            "cos_shampoo_squared": ("case", [e["cos_shampoo_squared"] for e in extras]),
            "cos_shampoo": ("case", [e["cos_shampoo"] for e in extras]),
            "cos_frobenius_optimal": ("case", [e["cos_frobenius_optimal"] for e in extras]),
            "cos_dense_shampoo_squared": ("case", [e["cos_dense_shampoo_squared"] for e in extras]),
            "cos_dense_shampoo": ("case", [e["cos_dense_shampoo"] for e in extras]),
            "kl_iterations": ("case", [e["kl_iterations"] for e in extras]),
            "if_history": (("case", "if_check"), hist),
            "seconds": ("case", seconds),
        },
        coords={
            "check": list(CHECKS),
            "claim": ("check", [v[0] for v in CHECKS.values()]),
            "tolerance": ("check", [v[1] for v in CHECKS.values()]),
            "kind": ("check", [v[2] for v in CHECKS.values()]),
            "description": ("check", [v[3] for v in CHECKS.values()]),
            "case": names,
            "source": ("case", [c["source"] for c in cases]),
            "m": ("case", [c["m"] for c in cases]),
            "n": ("case", [c["n"] for c in cases]),
            "kronecker": ("case", [int(c["kronecker"]) for c in cases]),
            "damping": ("case", [c["damping"] for c in cases]),
            "if_check": np.arange(hist_len) * 25,
        },
        attrs=make_attrs(
            TITLE,
            preset=config.preset_name(PRESETS),
            source=", ".join(dict.fromkeys(c["source"] for c in cases)),
            study=NAME,
            dtype="float64",
            power_steps=int(config.power_steps),
            if_max_steps=int(config.if_max_steps),
            if_beta2=0.5,
            if_alpha2=0.0,
            real_damping_relative=float(config.real_damping),
            random_samples_per_dim=3,
            notes=(
                "error = relative error of each check (NaN = not applicable); real targets "
                "are checked on X = Σ + λI, λ = real_damping_relative·trΣ/(mn); "
                "if_history = IF-Shampoo stationarity ‖2m_C‖/√m + ‖2m_K‖/√n every 25 steps"
            ),
        ),
    )
    return ds


def _claim_errors(ds, claim):
    sel = ds["error"].where(ds["claim"] == claim, drop=True)
    return sel


def _evidence_checks(ds, claim):
    """``(ok, evidence)`` from the checks of ``claim``: max error vs tolerance per check."""
    sel = _claim_errors(ds, claim)
    if sel.sizes.get("check", 0) == 0:
        return None, "no checks in this dataset"
    parts, ok, tested = [], True, False
    for chk in sel["check"].values:
        vals = sel.sel(check=chk).values
        tol = float(ds["tolerance"].sel(check=chk))
        finite = vals[~np.isnan(vals)]
        if finite.size == 0:
            continue
        tested = True
        worst = float(np.max(finite)) if np.all(np.isfinite(finite)) else np.inf
        worst_case = str(sel["case"].values[int(np.nanargmax(np.where(np.isnan(vals), -1, vals)))])
        ok &= worst <= tol
        flag = "" if worst <= tol else f" > tol {tol:.0e} ({worst_case})"
        parts.append(f"{chk} max {worst:.1e}{flag} [{finite.size} cases]")
    if not tested:
        return None, "no applicable cases"
    return ok, "; ".join(parts)


def _tol_text(ds, claim):
    sel = ds["tolerance"].where(ds["claim"] == claim, drop=True)
    kinds = ds["kind"].where(ds["claim"] == claim, drop=True)
    return ", ".join(
        f"{c}: {float(t):.0e} ({k})"
        for c, t, k in zip(sel["check"].values, sel.values, kinds.values, strict=True)
    )


def verdicts(ds: xr.Dataset) -> list:
    """One verdict per claim of :data:`CLAIMS`, its kind as registered (paper claim or
    derived)."""
    from precond_lab.study import FAILS, HOLDS, UNTESTED_VERDICT, claim_verdict, judge

    out = []
    sources = sorted(set(ds["source"].values.tolist()))
    scope = f" on {ds.sizes['case']} cases ({', '.join(sources)})"
    for claim in CLAIMS:
        kind = registry.claim(claim).kind
        if claim == "P3-2":
            out.append(_verdict_p3_2(ds, kind))
            continue
        ok, evidence = _evidence_checks(ds, claim)
        if ok is None:
            out.append(claim_verdict(claim, UNTESTED_VERDICT, evidence, kind=kind))
            continue
        if claim in ("P3-9", "D4"):
            nonk = ds["kron_gap"].where(ds["kronecker"] == 0, drop=True)
            if nonk.size:
                evidence += (
                    f"; for contrast, non-Kronecker targets: ‖L⊗R/trΣ − Σ‖/‖Σ‖ = "
                    f"{float(nonk.min()):.2g}–{float(nonk.max()):.2g} (not exact, as expected)"
                )
        verdict = judge(bool(ok))
        assert verdict in (HOLDS, FAILS)
        out.append(claim_verdict(claim, verdict, evidence + scope, _tol_text(ds, claim), kind=kind))
    return out


def _verdict_p3_2(ds, kind):
    from precond_lab.study import UNTESTED_VERDICT, claim_verdict, judge

    cs2 = ds["cos_shampoo_squared"].values
    cs = ds["cos_shampoo"].values
    wins = cs2 > cs
    kron = ds["kronecker"].values == 1
    ok_sqrt, ev_sqrt = None, "no exact-Kronecker case"
    if "D4-sqrt" in ds["check"].values:
        vals = ds["error"].sel(check="D4-sqrt").values[kron]
        vals = vals[~np.isnan(vals)]
        if vals.size:
            ok_sqrt = bool(np.max(vals) <= float(ds["tolerance"].sel(check="D4-sqrt")))
            ev_sqrt = f"exact Kronecker: ‖L^½⊗R^½ − c·Σ^½‖ rel max {np.max(vals):.1e}"
            ck = ds["cos_shampoo"].values[kron]
            ev_sqrt += f", while cos(Σ, L^½⊗R^½) = {ck.min():.4f}–{ck.max():.4f}"
    if ok_sqrt is None and not wins.size:
        return claim_verdict("P3-2", UNTESTED_VERDICT, "no cases", kind=kind)
    real = ds["source"].values != "random"
    real &= ~kron
    parts = [f"cos(Σ,L⊗R) > cos(Σ,L^½⊗R^½) on {int(wins.sum())}/{wins.size} cases"]
    if np.any(~wins):
        bad = [str(c) for c in ds["case"].values[~wins]]
        parts.append("fails on " + ", ".join(bad[:4]) + ("…" if len(bad) > 4 else ""))
    if np.any(real):
        parts.append(
            "real: "
            + ", ".join(
                f"{c}: {a:.4f} vs {b:.4f}"
                for c, a, b in zip(ds["case"].values[real], cs2[real], cs[real], strict=True)
            )
        )
    parts.append(ev_sqrt)
    ok = bool(np.all(wins)) and ok_sqrt is not False
    partial = bool(np.mean(wins) >= 0.5) or bool(ok_sqrt)
    return claim_verdict(
        "P3-2",
        judge(ok, partial=partial),
        "; ".join(parts),
        "cosine comparison strict on every case; exact-Kronecker √ relation 1e-10",
        kind=kind,
    )


def _figures(ds: xr.Dataset) -> dict:
    """The study's figures by file stem (Figures, built without pyplot)."""
    from precond_lab.plotting import OKABE_ITO, estimator_style, figure, legend, style

    colors = {
        "random": OKABE_ITO["blue"],
        "kronecker": OKABE_ITO["bluish_green"],
        "digits": OKABE_ITO["vermillion"],
        "capture": OKABE_ITO["reddish_purple"],
    }
    markers = {"random": "o", "kronecker": "D", "digits": "s", "capture": "^"}
    figs = {}
    with style():
        # 1. errors per check vs tolerance
        checks = [str(c) for c in ds["check"].values]
        fig, axes = figure(1, 1, panel=(max(7.0, 0.28 * len(checks)), 3.6))
        ax = axes[0, 0]
        floor = 1e-18
        for src in dict.fromkeys(ds["source"].values.tolist()):
            sel = ds["error"].where(ds["source"] == src, drop=True)
            xs, ys = [], []
            for i, c in enumerate(checks):
                v = sel.sel(check=c).values
                v = v[~np.isnan(v)]
                xs += [i] * v.size
                ys += list(np.maximum(v, floor))
            jitter = {"random": -0.2, "kronecker": -0.07, "digits": 0.07, "capture": 0.2}
            ax.scatter(
                np.asarray(xs) + jitter.get(src, 0.0),
                ys,
                s=10,
                color=colors.get(src, "k"),
                marker=markers.get(src, "o"),
                label=src,
                alpha=0.8,
            )
        tol = ds["tolerance"].values
        ax.hlines(
            tol,
            np.arange(len(checks)) - 0.4,
            np.arange(len(checks)) + 0.4,
            color="k",
            linewidth=1.2,
            label="tolerance",
        )
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(checks)), checks, rotation=70, fontsize=7)
        ax.set_ylabel(f"relative error (floored at {floor:.0e})")
        ax.set_title("Identity checks: float64 matrix-free vs dense reference")
        legend(fig, axes, ncols=5)
        figs["identities_errors"] = fig

        # 2. P3-2: cos(Σ, L⊗R) vs cos(Σ, L^½⊗R^½)
        fig, axes = figure(1, 1, panel=(4.2, 3.8))
        ax = axes[0, 0]
        for src in dict.fromkeys(ds["source"].values.tolist()):
            sel = ds["source"] == src
            ax.scatter(
                ds["cos_shampoo"].where(sel, drop=True),
                ds["cos_shampoo_squared"].where(sel, drop=True),
                color=colors.get(src, "k"),
                marker=markers.get(src, "o"),
                s=18,
                label=src,
            )
        lo = float(min(ds["cos_shampoo"].min(), ds["cos_shampoo_squared"].min()))
        ax.plot([lo, 1], [lo, 1], color="grey", linestyle="--", linewidth=1, label="equal")
        ax.set_xlabel(r"cos($\Sigma$, $L^{1/2}\otimes R^{1/2}$) (Shampoo)")
        ax.set_ylabel(r"cos($\Sigma$, $L\otimes R$) (Shampoo$^2$)")
        ax.set_title("P3-2: the square is the better approximation")
        legend(fig, axes)
        figs["identities_p3_2_cosines"] = fig

        # 3. D6: IF-Shampoo convergence to the KL fixed point
        fig, axes = figure(1, 1, panel=(5.0, 3.4))
        ax = axes[0, 0]
        st = estimator_style("kl_optimal")
        for i in range(ds.sizes["case"]):
            h = ds["if_history"].isel(case=i).values
            keep = ~np.isnan(h)
            src = str(ds["source"].values[i])
            ax.semilogy(
                ds["if_check"].values[keep],
                np.maximum(h[keep], 1e-17),
                color=colors.get(src, st["color"]),
                linewidth=1.0,
                alpha=0.7,
                label=src,
            )
        ax.set_xlabel("IF-Shampoo step (full batch, β₂ = 0.5, α₂ = 0)")
        ax.set_ylabel(r"stationarity $2\|m_C\|/\sqrt{m} + 2\|m_K\|/\sqrt{n}$")
        ax.set_title("D6: IF-Shampoo converges to the damped KL fixed point")
        legend(fig, axes)  # each source once
        figs["identities_if_shampoo"] = fig
    return figs


def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """Write the study's figures (PNG and PDF) into ``figdir``; return the paths."""
    return save_figures(_figures(ds), figdir)
