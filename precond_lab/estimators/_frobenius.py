"""Frobenius-optimal Kronecker approximation (Van Loan–Pitsianis) and its power iteration.

With the rearrangement ``R(Σ)[(i,i'),(j,j')] = Σ[(i,j),(i',j')]`` (row-major),
``‖Σ − A⊗B‖_F = ‖R(Σ) − vec(A) vec(B)ᵀ‖_F``, so the optimum is the top singular
triplet of ``R(Σ)``. ``R(Σ)`` (``m² × n²``) is never formed: it is applied through the
target's primitives ``R(Σ) vec(B) = vec(E[G B Gᵀ])`` and
``R(Σ)ᵀ vec(A) = vec(E[Gᵀ A G])``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_number
from ..linalg import symmetrize
from ..structures import FitInfo, Kronecker
from ..targets import Target
from ._common import default_tol, target_of
from ._registry import EstimatorSpec, on_target, register

__all__ = ["frobenius_optimal", "power_iteration", "rearranged_singular_values"]


def _fix_sign(a, b):
    """Flip both factors together so that ``tr(a) ≥ 0`` (the product is unchanged)."""
    s = jnp.where(jnp.trace(a) < 0, -1.0, 1.0).astype(a.dtype)
    return s * a, s * b


def _orthogonalize(x, basis):
    """Two passes of classical Gram–Schmidt of ``x`` against the rows of ``basis``.

    Host-side NumPy (in the vectors' dtype): the basis grows by one vector per step,
    and an eager JAX op would be recompiled for every new basis size.
    """
    if not basis:
        return x
    q = np.stack([np.asarray(b) for b in basis])
    x = np.asarray(x)
    for _ in range(2):
        x = x - q.T @ (q @ x)
    return jnp.asarray(x)


def _ritz(alphas, betas, us, vs, rectangular):
    """Top Ritz triplet from the bidiagonal ``B_k`` (or ``[B_k | β_k e_k]`` at breakdown).

    Returns ``(u, v, σ, relative residual)``; the residual of the square case is
    ``β_k |p_k|/σ``, the standard Golub–Kahan estimate of ``‖R(Σ)ᵀu − σv‖/σ``.
    Host-side NumPy, like ``_orthogonalize`` (the sizes change every step).
    """
    k = len(alphas)
    cols = k + 1 if rectangular else k
    dt = np.asarray(alphas[0]).dtype
    bid = np.zeros((k, cols), dt)
    bid[np.arange(k), np.arange(k)] = [np.asarray(a) for a in alphas]
    if cols > 1:
        bid[np.arange(cols - 1), np.arange(1, cols)] = [np.asarray(b) for b in betas[: cols - 1]]
    left, sv, right_t = np.linalg.svd(bid, full_matrices=False)
    sigma = sv[0]
    u = np.stack([np.asarray(x) for x in us]).T @ left[:, 0]
    v = np.stack([np.asarray(x) for x in vs[:cols]]).T @ right_t[0, :cols]
    res = 0.0 if rectangular else float(abs(np.asarray(betas[k - 1]) * left[k - 1, 0]) / sigma)
    return jnp.asarray(u), jnp.asarray(v), float(sigma), res


def frobenius_optimal(
    samples,
    *,
    weights=None,
    center: bool = False,
    chunk_size: int | None = None,
    tol: float | None = None,
    max_iter: int = 200,
    krylov_dim: int = 40,
) -> Kronecker:
    """The nearest Kronecker product ``A ⊗ B`` to ``Σ`` in Frobenius norm.

    Golub–Kahan–Lanczos bidiagonalization of the rearranged operator ``R(Σ)`` with
    full reorthogonalization and thick restarts from the current Ritz vector, started
    from the identity (the Shampoo direction). Each iteration is one pass of
    ``E[G B Gᵀ]`` and one of ``E[Gᵀ A G]`` over the samples.

    Args:
        samples: ``(N, m, n)`` per-example matrices, a DataArray, or a Target.
        weights: ``(N,)`` sample weights (default ``1/N``).
        center: subtract the weighted mean first.
        chunk_size: samples per streamed chunk.
        tol: stop when the singular-triplet residual ``‖R(Σ)ᵀu − σv‖ ≤ tol·σ``
            (default 1e-12 in float64, 1e-5 in float32).
        max_iter: maximum number of operator applications (pairs).
        krylov_dim: restart length.

    Returns:
        ``Kronecker(left=A, right=B, scale=σ₁)`` with unit-Frobenius-norm PSD factors
        (for PSD ``Σ``) and ``σ₁ = ⟨Σ, A⊗B⟩``. ``info.residuals`` holds the relative
        residual per iteration and ``info.objective`` the estimate of ``σ₁``.
    """
    max_iter = check_number(max_iter, "max_iter", low=1, integer=True)
    krylov_dim = check_number(krylov_dim, "krylov_dim", low=1, integer=True)
    if tol is not None:
        check_number(tol, "tol", low=0.0)
    target = target_of(samples, weights, center, chunk_size)
    m, n = target.matrix_shape
    dt = target.dtype
    tol = default_tol(dt) if tol is None else float(tol)
    dim = min(m * m, n * n)
    krylov_dim = max(1, min(krylov_dim, dim))

    v = jnp.eye(n, dtype=dt).reshape(-1)
    v = v / jnp.linalg.norm(v)
    residuals: list[float] = []
    sigmas: list[float] = []
    it, converged = 0, False
    while True:  # one Lanczos run of up to krylov_dim steps from v, then restart
        us, vs, alphas, betas = [], [v], [], []
        for j in range(krylov_dim):
            p = target.contract_left(vs[j].reshape(n, n)).reshape(-1)
            if j > 0:
                p = p - betas[j - 1] * us[j - 1]
            p = _orthogonalize(p, us)
            alpha = jnp.linalg.norm(p)
            it += 1
            ref = float(alphas[0]) if alphas else abs(float(target.trace()))
            breakdown = float(alpha) <= 10 * float(jnp.finfo(dt).eps) * ref
            if breakdown:
                if j == 0:
                    raise ValueError("R(Σ) annihilates the starting vector: is the target zero?")
                # R v_{j} ∈ span(U): R V_{j+1} = U_j [B_j | β_j e_j] holds exactly.
                u_best, v_best, sigma, res = _ritz(alphas, betas, us, vs, rectangular=True)
                converged = True
            else:
                us.append(p / alpha)
                alphas.append(alpha)
                q = target.contract_right(us[j].reshape(m, m)).reshape(-1) - alpha * vs[j]
                q = _orthogonalize(q, vs)
                betas.append(jnp.linalg.norm(q))
                exhausted = len(alphas) == dim
                if (
                    exhausted
                    and m * m < n * n
                    and float(betas[-1]) > 10 * float(jnp.finfo(dt).eps) * float(alphas[0])
                ):
                    # U spans all of R^{m²}, so R = U_k [B_k | β_k e_k] V_{k+1}ᵀ exactly; the
                    # square B_k would drop the right vector's component along v_{k+1}.
                    vs.append(q / betas[-1])
                    u_best, v_best, sigma, res = _ritz(alphas, betas, us, vs, rectangular=True)
                    converged = True
                else:
                    u_best, v_best, sigma, res = _ritz(alphas, betas, us, vs, rectangular=False)
                    converged = res <= tol or exhausted
            residuals.append(res)
            sigmas.append(sigma)
            if converged or it >= max_iter:
                break
            vs.append(q / betas[-1])
        if converged or it >= max_iter:
            break
        v = v_best / jnp.linalg.norm(v_best)
    sigma = jnp.asarray(sigmas[-1], dt)
    a = symmetrize(u_best.reshape(m, m))
    b = symmetrize(v_best.reshape(n, n))
    a, b = _fix_sign(a / jnp.linalg.norm(a), b / jnp.linalg.norm(b))
    info = FitInfo(
        iterations=it,
        converged=bool(converged),
        residuals=np.asarray(residuals),
        objective=np.asarray(sigmas),
        method="golub-kahan-lanczos",
    )
    return Kronecker(a, b, sigma, info=info)


def _init_factors(init, target: Target, key):
    m, n = target.matrix_shape
    dt = target.dtype
    if isinstance(init, str) and init == "identity":
        return jnp.eye(m, dtype=dt), jnp.eye(n, dtype=dt)
    if isinstance(init, str) and init == "random":
        ka, kb = jax.random.split(jax.random.PRNGKey(0) if key is None else key)
        xa = jax.random.normal(ka, (m, m), dt)
        xb = jax.random.normal(kb, (n, n), dt)
        return xa @ xa.T / m, xb @ xb.T / n
    if isinstance(init, Kronecker):
        init = (init.left, init.right)
    if isinstance(init, tuple) and len(init) == 2:
        a, b = (jnp.asarray(x, dt) for x in init)
        if a.shape != (m, m) or b.shape != (n, n):
            raise ValueError(
                f"init factors must be ({m}, {m}) and ({n}, {n}); got {a.shape}, {b.shape}"
            )
        for name, f in (("init left factor A0", a), ("init right factor B0", b)):
            if not bool(jnp.all(jnp.isfinite(f))) or float(jnp.linalg.norm(f)) == 0:
                raise ValueError(f"{name} must be finite and non-zero (it is normalised)")
        return a, b
    raise ValueError(
        f"init must be 'identity', 'random', a Kronecker or a tuple (A0, B0); got {init!r}"
    )


def power_iteration(
    samples,
    steps: int,
    *,
    init="identity",
    variant: str = "jacobi",
    key: jax.Array | None = None,
    weights=None,
    center: bool = False,
    chunk_size: int | None = None,
) -> Kronecker:
    """``steps`` steps of power iteration for the Frobenius-optimal Kronecker factors.

    ``A_{k+1} ∝ E[G B_k Gᵀ]``, ``B_{k+1} ∝ E[Gᵀ A_k G]`` (``variant="jacobi"``) or
    ``B_{k+1} ∝ E[Gᵀ A_{k+1} G]`` (``"gauss-seidel"``), each normalised to unit
    Frobenius norm. From the identity, one Jacobi step gives Shampoo's ``L`` and ``R``:
    Shampoo² is one power-iteration step (Morwani et al.). It converges to
    ``frobenius_optimal`` at rate ``σ₂/σ₁``.

    Args:
        samples: per-example matrices or a Target.
        steps: number of steps (≥ 0; 0 returns the initial factors).
        init: ``"identity"``, ``"random"`` (with ``key``), a Kronecker, or ``(A0, B0)``.
        variant: ``"jacobi"`` (simultaneous) or ``"gauss-seidel"``.

    Returns:
        ``Kronecker(A_k, B_k, scale=c*)`` with unit-norm factors and the
        Frobenius-optimal scalar ``c* = ⟨Σ, A_k⊗B_k⟩``. ``info.residuals[k]`` is
        ``‖A_{k+1} − A_k‖ + ‖B_{k+1} − B_k‖`` and ``info.objective[k]`` the Rayleigh
        quotient ``⟨Σ, A_k⊗B_k⟩`` before step ``k+1``.
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer; got {steps!r}")
    if variant not in ("jacobi", "gauss-seidel"):
        raise ValueError(f"variant must be 'jacobi' or 'gauss-seidel'; got {variant!r}")
    target = target_of(samples, weights, center, chunk_size)
    a, b = _init_factors(init, target, key)
    a, b = a / jnp.linalg.norm(a), b / jnp.linalg.norm(b)
    residuals, rayleigh = [], []
    for _ in range(int(steps)):
        a_next = target.contract_left(b)
        rayleigh.append(float(jnp.vdot(a, a_next)))
        a_next = a_next / jnp.linalg.norm(a_next)
        b_next = target.contract_right(a_next if variant == "gauss-seidel" else a)
        b_next = b_next / jnp.linalg.norm(b_next)
        a_next, b_next = _fix_sign(a_next, b_next)
        residuals.append(float(jnp.linalg.norm(a_next - a) + jnp.linalg.norm(b_next - b)))
        a, b = symmetrize(a_next), symmetrize(b_next)
    scale = jnp.vdot(a, target.contract_left(b))
    info = FitInfo(
        iterations=int(steps),
        converged=False,
        residuals=np.asarray(residuals),
        objective=np.asarray(rayleigh),
        method=f"power-iteration-{variant}",
    )
    return Kronecker(a, b, scale, info=info)


register(
    EstimatorSpec(
        "frobenius_optimal",
        on_target(frobenius_optimal),
        "Optimal Kronecker",
        reference="frobenius_optimal",
        optimal_for="relative_frobenius",
        summary="Van Loan–Pitsianis: the Kronecker product nearest to Σ in Frobenius norm.",
        color="#0072B2",
        marker="o",
    )
)
register(
    EstimatorSpec(
        "power_iteration",
        lambda ctx, steps=1, **kw: power_iteration(ctx.target, steps, **kw),
        "Power iteration",
        reference="power_iteration",
        summary="k steps of the alternating power iteration from I (1 step: Shampoo²).",
        color="#000000",
        marker=".",
        example_args="(3)",
    )
)


def rearranged_singular_values(samples, *, k: int = 2, steps: int = 40, weights=None) -> np.ndarray:
    """The ``k`` largest singular values of the rearranged ``R(Σ)`` (never formed).

    Golub–Kahan–Lanczos bidiagonalization from ``vec(I)`` with full reorthogonalization
    (host-side, float64), the recursion ``frobenius_optimal`` runs for the top triplet,
    through ``R(Σ)vec(B) = vec(E[GBGᵀ])`` and ``R(Σ)ᵀvec(A) = vec(E[GᵀAG])``. With
    ``steps ≥ min(m², n²)`` the values are exact; fewer give the top Ritz values (lower
    bounds). ``σ₂/σ₁`` is the power iteration's convergence rate (P3).

    Args:
        samples: ``(N, m, n)`` per-example matrices, a DataArray, or a Target.
        k: how many values (``≥ 1``); missing ones (rank of ``R(Σ)`` below ``k``) are 0.
        steps: maximum bidiagonalization steps (``≥ k``).
        weights: ``(N,)`` sample weights (default ``1/N``).

    Returns:
        ``(k,)`` float64, descending.
    """
    k = check_number(k, "k", low=1, integer=True)
    steps = check_number(steps, "steps", low=k, integer=True)
    target = target_of(samples, weights, False, None)
    m, n = target.matrix_shape
    dt = target.dtype
    us: list[np.ndarray] = []
    vs, alphas, betas = [np.eye(n).reshape(-1) / np.sqrt(n)], [], []
    scale = 0.0
    for j in range(min(int(steps), m * m, n * n)):
        p = np.asarray(target.contract_left(vs[j].reshape(n, n).astype(dt)), float).reshape(-1)
        p = p - (betas[-1] * us[-1] if us else 0.0)
        for _ in range(2):
            if us:
                q = np.stack(us)
                p = p - q.T @ (q @ p)
        alpha = float(np.linalg.norm(p))
        scale = max(scale, alpha)
        if alpha <= 1e-13 * scale:
            break
        us.append(p / alpha)
        alphas.append(alpha)
        r = np.asarray(target.contract_right(us[j].reshape(m, m).astype(dt)), float).reshape(-1)
        r = r - alpha * vs[j]
        for _ in range(2):
            q = np.stack(vs)
            r = r - q.T @ (q @ r)
        beta = float(np.linalg.norm(r))
        if beta <= 1e-13 * scale:
            break
        betas.append(beta)
        vs.append(r / beta)
    rows = len(alphas)
    cols = min(len(vs), rows + 1)
    bid = np.zeros((rows, cols))
    bid[np.arange(rows), np.arange(rows)] = alphas
    sup = min(len(betas), cols - 1)
    bid[np.arange(sup), np.arange(1, sup + 1)] = betas[:sup]
    sv = np.linalg.svd(bid, compute_uv=False) if rows else np.zeros(0)
    return np.concatenate([sv[:k], np.zeros(max(0, k - len(sv)))])
