"""Dense float64 references, built straight from the definitions (NumPy/SciPy only).

These form the explicit ``(mn, mn)`` matrix and are meant for tests and small sizes
(``mn`` up to ~1000). They deliberately share no code with the matrix-free path.
Conventions as everywhere: row-major vec, ``kron(L, R) vec(X) = vec(L X Rᵀ)``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.optimize

__all__ = [
    "flat_tail_factor",
    "kl_flat_tail",
    "target_matrix",
    "rearrange",
    "shampoo_statistics",
    "frobenius_optimal",
    "power_iteration",
    "kl_flip_flop",
    "kl_objective",
    "kfac",
    "eigencorrected",
    "cosine_similarity",
    "relative_frobenius_error",
    "kl_divergence",
    "von_neumann_divergence",
    "logm_psd",
    "psd_power",
    "shampoo",
    "shampoo_squared",
    "shampoo_product",
    "adafactor",
    "vn_optimal_diagonal_kronecker",
    "vn_diagonal_kronecker_objective",
    "adafactor_vs_minimiser",
    "one_sided_kl",
    "diagonal",
    "contract_left",
    "contract_right",
    "frobenius_inner",
    "frobenius_scale",
    "kl_scale",
    "reverse_kl_scale",
    "kl_fixed_point_residual",
    "kfac_samples",
    "spectrum",
    "bregman_divergence",
    "bregman_optimal",
    "bregman_penalty",
    "bregman_identity_errors",
    "bregman_perturbation_increase",
    "kl_gradient",
    "kl_factor_stationarity",
    "congruence",
    "symmetric_directions",
    "equivalent_samples",
    "vn_kronecker_minimiser",
]


def target_matrix(samples, weights=None, center: bool = False) -> np.ndarray:
    """``Σ = Σ_k w_k vec(G_k) vec(G_k)ᵀ`` (centered: ``Σ_k w_k (g_k−ḡ)(g_k−ḡ)ᵀ``)."""
    g = np.asarray(samples, np.float64)
    n_samples = g.shape[0]
    w = np.full(n_samples, 1.0 / n_samples) if weights is None else np.asarray(weights, np.float64)
    x = g.reshape(n_samples, -1)
    if center:
        x = x - (w @ x) / w.sum()
    sigma = np.zeros((x.shape[1], x.shape[1]))
    for k in range(n_samples):
        sigma += w[k] * np.outer(x[k], x[k])
    return sigma


def rearrange(sigma, m: int, n: int) -> np.ndarray:
    """Van Loan–Pitsianis rearrangement ``R(Σ)[(i,i'),(j,j')] = Σ[(i,j),(i',j')]``."""
    out = np.empty((m * m, n * n))
    for i in range(m):
        for ip in range(m):
            block = sigma[i * n : (i + 1) * n, ip * n : (ip + 1) * n]  # Σ[(i,·),(i',·)]
            out[i * m + ip] = block.reshape(-1)
    return out


def shampoo_statistics(sigma, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``L = E[GGᵀ]`` and ``R = E[GᵀG]`` as partial traces of ``Σ``."""
    blocks = np.asarray(sigma).reshape(m, n, m, n)
    left = np.trace(blocks, axis1=1, axis2=3)  # L[i,i'] = Σ_j Σ[(i,j),(i',j)]
    right = np.trace(blocks, axis1=0, axis2=2)  # R[j,j'] = Σ_i Σ[(i,j),(i,j')]
    return left, right


def frobenius_optimal(sigma, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, B)`` minimising ``‖Σ − A⊗B‖_F`` by the SVD of the explicit rearrangement."""
    u, s, vt = np.linalg.svd(rearrange(sigma, m, n))
    a = np.sqrt(s[0]) * u[:, 0].reshape(m, m)
    b = np.sqrt(s[0]) * vt[0].reshape(n, n)
    if np.trace(a) < 0:
        a, b = -a, -b
    return a, b


def power_iteration(sigma, m: int, n: int, steps: int, variant: str = "jacobi"):
    """Power iteration on the explicit rearrangement, from the identity (unit-norm factors)."""
    r = rearrange(sigma, m, n)
    a, b = np.eye(m).reshape(-1), np.eye(n).reshape(-1)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    for _ in range(steps):
        a_new = r @ b
        a_new /= np.linalg.norm(a_new)
        b = r.T @ (a_new if variant == "gauss-seidel" else a)
        b /= np.linalg.norm(b)
        a = a_new
    return a.reshape(m, m), b.reshape(n, n)


def kl_objective(sigma, left, right, damping: float = 0.0) -> float:
    """``KL(N(0, Σ+λI) ‖ N(0, L⊗R))`` with explicit matrices."""
    d = sigma.shape[0]
    x = sigma + damping * np.eye(d)
    y = np.kron(left, right)
    _, logdet_x = np.linalg.slogdet(x)
    _, logdet_y = np.linalg.slogdet(y)
    return 0.5 * (np.trace(np.linalg.solve(y, x)) - d + logdet_y - logdet_x)


def kl_flip_flop(sigma, m: int, n: int, damping: float = 0.0, iters: int = 2000, tol=1e-14):
    """The two-sided KL fixed point by dense flip-flop on the explicit ``Σ``.

    ``L = (Σ_{jj'} Σ[(i,j),(i',j')] (R⁻¹)_{jj'} + λ tr(R⁻¹) I)/n`` and symmetrically.
    Returns ``(L, R)`` with ``tr R = n``.
    """
    blocks = sigma.reshape(m, n, m, n)
    left, right = np.eye(m), np.eye(n)
    for _ in range(iters):
        ri = np.linalg.inv(right)
        new_left = (np.einsum("ijkl,jl->ik", blocks, ri) + damping * np.trace(ri) * np.eye(m)) / n
        li = np.linalg.inv(new_left)
        new_right = (np.einsum("ijkl,ik->jl", blocks, li) + damping * np.trace(li) * np.eye(n)) / m
        c = np.trace(new_right) / n
        new_right, new_left = new_right / c, new_left * c
        change = np.linalg.norm(new_left - left) + np.linalg.norm(new_right - right)
        left, right = new_left, new_right
        if change < tol:
            break
    return left, right


def flat_tail_factor(a, rank: int) -> np.ndarray:
    """``U_r Λ_r U_rᵀ + τ(I − U_r U_rᵀ)`` with ``τ`` the mean of the other eigenvalues (dense)."""
    a = np.asarray(a, np.float64)
    w, q = np.linalg.eigh((a + a.T) / 2)
    w, q = w[::-1], q[:, ::-1]
    if rank >= a.shape[0]:
        return a
    values = np.concatenate([w[:rank], np.full(a.shape[0] - rank, w[rank:].mean())])
    return (q * values) @ q.T


def kl_flat_tail(sigma, m: int, n: int, rank: int, damping: float = 0.0) -> np.ndarray:
    """The dense ``B_L ⊗ B_R``: ``kl_flip_flop``'s factors, each rank ``rank`` + flat tail."""
    left, right = kl_flip_flop(sigma, m, n, damping)
    return np.kron(flat_tail_factor(left, rank), flat_tail_factor(right, rank))


def _kfac_arrays(activations, backprops):
    """``a`` as ``(N, R, n)`` and ``δ`` as ``(N, C, R, m)`` in float64 (R, C = 1 if absent)."""
    a = np.asarray(activations, np.float64)
    d = np.asarray(backprops, np.float64)
    if d.ndim == a.ndim:
        d = d[:, None]
    if a.ndim == 2:
        a, d = a[:, None], d[:, :, None]
    return a, d


def kfac(activations, backprops, weights=None, variant: str = "expand"):
    """K-FAC factors with explicit loops over examples, classes and positions."""
    a, d = _kfac_arrays(activations, backprops)
    n_ex, n_pos = a.shape[0], a.shape[1]
    w = np.full(n_ex, 1.0 / n_ex) if weights is None else np.asarray(weights, np.float64)
    left = np.zeros((d.shape[-1], d.shape[-1]))
    right = np.zeros((a.shape[-1], a.shape[-1]))
    for k in range(n_ex):
        if variant == "reduce":
            a_hat = a[k].mean(axis=0)
            right += w[k] * np.outer(a_hat, a_hat)
            for c in range(d.shape[1]):
                d_hat = d[k, c].sum(axis=0)
                left += w[k] * np.outer(d_hat, d_hat)
        else:
            for r in range(n_pos):
                right += w[k] * np.outer(a[k, r], a[k, r]) / n_pos
                for c in range(d.shape[1]):
                    left += w[k] * np.outer(d[k, c, r], d[k, c, r])
    return left, right / w.sum()


def eigencorrected(sigma, qa, qb) -> np.ndarray:
    """``diag(QᵀΣQ)`` reshaped to ``(m, n)`` for ``Q = qa ⊗ qb``."""
    q = np.kron(qa, qb)
    return np.diag(q.T @ sigma @ q).reshape(qa.shape[0], qb.shape[0])


def cosine_similarity(a, b) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def relative_frobenius_error(target, approx, rescale: bool = False) -> float:
    c = np.sum(target * approx) / np.sum(approx * approx) if rescale else 1.0
    return float(np.linalg.norm(target - c * approx) / np.linalg.norm(target))


def kl_divergence(x, y) -> float:
    """``KL(N(0, X) ‖ N(0, Y))`` for explicit SPD matrices."""
    d = x.shape[0]
    _, ldx = np.linalg.slogdet(x)
    _, ldy = np.linalg.slogdet(y)
    return 0.5 * (np.trace(np.linalg.solve(y, x)) - d + ldy - ldx)


def logm_psd(x) -> np.ndarray:
    """Matrix logarithm of a symmetric positive definite matrix."""
    w, q = scipy.linalg.eigh(x)
    return (q * np.log(w)) @ q.T


def von_neumann_divergence(x, y) -> float:
    """``tr(X log X − X log Y − X + Y)`` with ``0 log 0 = 0`` (X PSD, Y PD)."""
    wx, qx = scipy.linalg.eigh(x)
    wx = np.clip(wx, 0.0, None)
    x_log_x = np.sum(np.where(wx > 0, wx * np.log(np.where(wx > 0, wx, 1.0)), 0.0))
    return float(x_log_x - np.trace(x @ logm_psd(y)) - np.trace(x) + np.trace(y))


# --------------------------------------------------------------------------------------
# Additions for the core test suite: more references, still straight from definitions.
# --------------------------------------------------------------------------------------


def psd_power(x, p: float, damping: float = 0.0) -> np.ndarray:
    """``(X + λI)^p`` of a symmetric PSD matrix by its eigendecomposition."""
    w, q = scipy.linalg.eigh(np.asarray(x, np.float64))
    w = np.clip(w, 0.0, None) + damping
    return (q * w**p) @ q.T


def shampoo(sigma, m: int, n: int) -> np.ndarray:
    """Dense ``L^{1/2} ⊗ R^{1/2}`` with ``L, R`` the partial traces of ``Σ``."""
    left, right = shampoo_statistics(sigma, m, n)
    return np.kron(psd_power(left, 0.5), psd_power(right, 0.5))


def shampoo_squared(sigma, m: int, n: int, relative_damping: float = 0.0) -> np.ndarray:
    """Dense ``L ⊗ R / tr Σ`` (each factor plus ``ε tr(F)/dim·I`` with ``relative_damping``)."""
    left, right = shampoo_statistics(sigma, m, n)
    left = left + relative_damping * np.trace(left) / m * np.eye(m)
    right = right + relative_damping * np.trace(right) / n * np.eye(n)
    return np.kron(left, right) / np.trace(sigma)


def kfac_damped_flip_flop(a_out, a_in, damping: float, iters: int = 200):
    """The damped K-FAC fixed point ``(S_out, S_in)`` by the dense flip-flop:
    ``S_out = [tr(A_in S_in⁻¹) A_out + λ tr(S_in⁻¹) I]/n`` and symmetrically (float64).

    ``S_out ⊗ S_in`` is the KL-optimal Kronecker fit of ``A_out ⊗ A_in + λI``; its inverse
    is IF-Shampoo's fixed point when driven by K-FAC factors (``online.kfac_if_shampoo``).
    """
    ao, ai = np.asarray(a_out, np.float64), np.asarray(a_in, np.float64)
    m, n = ao.shape[0], ai.shape[0]
    so, si = np.eye(m), np.eye(n)
    for _ in range(iters):
        si_inv = np.linalg.inv(si)
        so = (np.trace(ai @ si_inv) * ao + damping * np.trace(si_inv) * np.eye(m)) / n
        so_inv = np.linalg.inv(so)
        si = (np.trace(ao @ so_inv) * ai + damping * np.trace(so_inv) * np.eye(n)) / m
    return so, si


def shampoo_product(sigma, m: int, n: int) -> np.ndarray:
    """Dense ``(L/n) ⊗ (R/m) = L ⊗ R/(mn)``."""
    left, right = shampoo_statistics(sigma, m, n)
    return np.kron(left, right) / (m * n)


def adafactor(sigma, m: int, n: int) -> np.ndarray:
    """Dense ``diag(r ⊗ c)/Σδ``: ``δ = diag Σ`` as ``(m, n)``, ``r``/``c`` its row/column sums."""
    delta = np.diag(np.asarray(sigma, np.float64)).reshape(m, n)
    return np.diag(np.outer(delta.sum(1), delta.sum(0)).ravel() / delta.sum())


def vn_optimal_diagonal_kronecker(delta, seed: int = 0) -> tuple[np.ndarray, float]:
    """Numerically minimise ``D_vN(X, diag(a ⊗ b))`` over positive ``a, b`` (BFGS).

    For a diagonal ``Y``, ``tr(X log Y) = Σ_ij δ_ij log Y_ij`` with ``δ = diag X`` as
    ``(m, n)``, so up to a constant ``D_vN = −Σ δ_ij (log a_i + log b_j) + Σa·Σb``:
    minimised in ``(log a, log b)`` from a random start, with no closed form used.

    Args:
        delta: ``(m, n)`` positive diagonal of ``X`` (``target.rotated_diagonal(None, None)``).
        seed: the random start's seed.

    Returns:
        ``(a bᵀ (m, n), the objective there)``; ``vn_diagonal_kronecker_objective`` gives
        the same objective for any other ``(m, n)`` product.
    """
    delta = np.asarray(delta, np.float64)
    if delta.ndim != 2 or np.any(~(delta > 0)):
        raise ValueError(
            f"delta must be the (m, n) diagonal of X, positive; got shape {delta.shape} "
            "(pass target.rotated_diagonal(None, None) of a damped target)"
        )
    m, n = delta.shape

    def f(p):
        la, lb = p[:m], p[m:]
        return -(delta * (la[:, None] + lb[None, :])).sum() + np.exp(la).sum() * np.exp(lb).sum()

    def grad(p):
        ea, eb = np.exp(p[:m]), np.exp(p[m:])
        return np.concatenate([-delta.sum(1) + ea * eb.sum(), -delta.sum(0) + eb * ea.sum()])

    p0 = np.full(m + n, 0.5 * np.log(delta.sum() / (m * n)))
    p0 = p0 + np.random.default_rng(seed).standard_normal(m + n)
    res = scipy.optimize.minimize(f, p0, jac=grad, method="BFGS", options={"gtol": 1e-13})
    prod = np.outer(np.exp(res.x[:m]), np.exp(res.x[m:]))
    return prod, vn_diagonal_kronecker_objective(delta, prod)


def adafactor_vs_minimiser(delta, values) -> tuple[float, float]:
    """``(‖P − V‖/‖V‖, obj(V) − obj(P))``: a closed-form diagonal Kronecker fit ``V`` (e.g.
    Adafactor's) against the numerical minimiser ``P`` of ``vn_optimal_diagonal_kronecker``
    (the objective difference is the von Neumann divergence difference exactly)."""
    prod, obj = vn_optimal_diagonal_kronecker(delta)
    values = np.asarray(values, np.float64)
    err = float(np.linalg.norm(prod - values) / np.linalg.norm(values))
    return err, vn_diagonal_kronecker_objective(delta, values) - obj


def vn_diagonal_kronecker_objective(delta, product) -> float:
    """``D_vN(X, diag(P)) − const = −Σ δ log P + Σ P`` for a positive ``(m, n)`` ``P``
    (the constant ``tr(X log X) − tr X`` does not depend on ``P``)."""
    delta, product = np.asarray(delta, np.float64), np.asarray(product, np.float64)
    return float(-(delta * np.log(product)).sum() + product.sum())


def one_sided_kl(sigma, m: int, n: int, side: str = "left", damping: float = 0.0):
    """Dense ``(L/n + λI) ⊗ I_n`` (``side="left"``) or ``I_m ⊗ (R/m + λI)``."""
    left, right = shampoo_statistics(sigma, m, n)
    if side == "left":
        return np.kron(left / n + damping * np.eye(m), np.eye(n))
    return np.kron(np.eye(m), right / m + damping * np.eye(n))


def diagonal(sigma) -> np.ndarray:
    """Dense ``diag(diag Σ)``."""
    return np.diag(np.diag(sigma))


def contract_left(samples, weights, b) -> np.ndarray:
    """``Σ_k w_k G_k B G_kᵀ`` with an explicit loop over the samples."""
    g = np.asarray(samples, np.float64)
    out = np.zeros((g.shape[1], g.shape[1]))
    for k in range(g.shape[0]):
        out += weights[k] * g[k] @ np.asarray(b, np.float64) @ g[k].T
    return out


def contract_right(samples, weights, a) -> np.ndarray:
    """``Σ_k w_k G_kᵀ A G_k`` with an explicit loop over the samples."""
    g = np.asarray(samples, np.float64)
    out = np.zeros((g.shape[2], g.shape[2]))
    for k in range(g.shape[0]):
        out += weights[k] * g[k].T @ np.asarray(a, np.float64) @ g[k]
    return out


def frobenius_inner(x, y) -> float:
    return float(np.sum(np.asarray(x) * np.asarray(y)))


def frobenius_scale(target, approx) -> float:
    """``argmin_c ‖Σ − c S‖_F = ⟨Σ, S⟩ / ‖S‖²``."""
    return float(np.sum(target * approx) / np.sum(approx * approx))


def _minimize_log_scale(objective) -> float:
    res = scipy.optimize.minimize_scalar(
        lambda t: objective(np.exp(t)), bracket=(-1.0, 1.0), tol=1e-14
    )
    return float(np.exp(res.x))


def kl_scale(sigma, approx, damping: float = 0.0) -> float:
    """``argmin_c KL(N(0, Σ+λI) ‖ N(0, cS+λI))`` by a 1-D numerical minimisation."""
    eye = np.eye(sigma.shape[0])
    x = sigma + damping * eye
    c0 = np.trace(np.linalg.solve(approx + damping * eye, x)) / sigma.shape[0]
    c = c0 * _minimize_log_scale(lambda c: kl_divergence(x, c * c0 * approx + damping * eye))
    return float(c)


def reverse_kl_scale(sigma, approx, damping: float = 0.0) -> float:
    """``argmin_c KL(N(0, cS+λI) ‖ N(0, Σ+λI))`` by a 1-D numerical minimisation."""
    eye = np.eye(sigma.shape[0])
    x = sigma + damping * eye
    c0 = sigma.shape[0] / np.trace(np.linalg.solve(x, approx + damping * eye))
    c = c0 * _minimize_log_scale(lambda c: kl_divergence(c * c0 * approx + damping * eye, x))
    return float(c)


def kl_fixed_point_residual(sigma, left, right, damping: float = 0.0) -> float:
    """Relative residual of the flip-flop equations ``L = (E[G R⁻¹Gᵀ] + λ tr(R⁻¹) I)/n``,
    ``R = (E[Gᵀ L⁻¹ G] + λ tr(L⁻¹) I)/m``, written with explicit sums over ``Σ``'s entries."""
    m, n = left.shape[0], right.shape[0]
    ri, li = np.linalg.inv(right), np.linalg.inv(left)
    new_left = np.zeros((m, m))
    for i in range(m):
        for k in range(m):
            for j in range(n):
                for l in range(n):
                    new_left[i, k] += sigma[i * n + j, k * n + l] * ri[j, l]
    new_right = np.zeros((n, n))
    for j in range(n):
        for l in range(n):
            for i in range(m):
                for k in range(m):
                    new_right[j, l] += sigma[i * n + j, k * n + l] * li[i, k]
    new_left = (new_left + damping * np.trace(ri) * np.eye(m)) / n
    new_right = (new_right + damping * np.trace(li) * np.eye(n)) / m
    return float(
        np.linalg.norm(new_left - left) / np.linalg.norm(left)
        + np.linalg.norm(new_right - right) / np.linalg.norm(right)
    )


def kfac_samples(activations, backprops, weights=None):
    """Per-(example, class) gradients ``G = Σ_r δ_r a_rᵀ`` and their weights.

    Shapes as for ``kfac``: ``a`` is ``(N, n)`` or ``(N, R, n)``; ``δ`` is ``(N, m)``,
    ``(N, C, m)``, ``(N, R, m)`` or ``(N, C, R, m)``.
    """
    a, d = _kfac_arrays(activations, backprops)
    n_ex, n_cls = a.shape[0], d.shape[1]
    w = np.full(n_ex, 1.0 / n_ex) if weights is None else np.asarray(weights, np.float64)
    grads, ws = [], []
    for k in range(n_ex):
        for c in range(n_cls):
            g = np.zeros((d.shape[-1], a.shape[-1]))
            for r in range(a.shape[1]):
                g += np.outer(d[k, c, r], a[k, r])
            grads.append(g)
            ws.append(w[k])
    return np.stack(grads), np.asarray(ws)


def spectrum(x) -> np.ndarray:
    """All eigenvalues of a symmetric matrix, descending."""
    return np.sort(np.linalg.eigvalsh(np.asarray(x, np.float64)))[::-1]


# --------------------------------------------------------------------------------------
# The trace-power Bregman family (explicit matrices; scipy minimisation for the optimum).
# --------------------------------------------------------------------------------------


def bregman_divergence(x, y, q: float) -> float:
    """``B_q(X, Y) = Φ_q(X) − Φ_q(Y) − ⟨∇Φ_q(Y), X − Y⟩`` with ``Φ_q = tr f_q``.

    ``f_q(t) = (t^q − q t + q − 1)/(q(q−1))``, ``f_1 = t log t − t + 1``,
    ``f_0 = −log t + t − 1``; built from the definition by eigendecompositions.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    wx = scipy.linalg.eigh(x, eigvals_only=True)
    wx = np.where(wx > 1e-12 * np.max(np.abs(wx)), wx, 0.0)  # round-off zeros are zeros
    wy, qy = scipy.linalg.eigh(y)

    # Through expm1, since (t^q − q t + q − 1)/(q(q−1)) and (t^{q−1} − 1)/(q−1) cancel
    # catastrophically near q = 0 and q = 1 (kept separate from precond_lab._trace_power).
    def ratio(p, lt):  # (t^p − 1)/p, log t at p = 0
        return lt if p == 0 else np.expm1(p * lt) / p

    def f(t):
        t = np.maximum(t, 0.0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            lt = np.log(t)
            if q >= 0.5:  # (t·(t^{q−1} − 1)/(q−1) − (t − 1))/q
                return (
                    np.where(t > 0, t * ratio(q - 1, np.where(t > 0, lt, 0.0)), 0.0) - t + 1
                ) / q
            return (ratio(q, lt) - t + 1) / (q - 1)  # ((t^q − 1)/q − (t − 1))/(q − 1)

    def fprime(t):
        with np.errstate(divide="ignore", over="ignore"):
            return ratio(q - 1, np.log(t))

    grad = (qy * fprime(wy)) @ qy.T
    return float(np.sum(f(wx)) - np.sum(f(wy)) - np.sum(grad * (x - y)))


def _bregman_objective_and_grad(x, y, q: float):
    """``J_q(Y) = B_q(X, Y) − Φ_q(X)`` up to a constant, and its gradient in ``Y``."""
    w, u = scipy.linalg.eigh(y)
    if q == 1:
        h, dh, first = np.log(w), 1 / w, np.sum(w)
    elif q == 0:
        h, dh, first = -1 / w, w**-2.0, np.sum(np.log(w))
    else:
        h, dh, first = w ** (q - 1) / (q - 1), w ** (q - 2), np.sum(w**q) / q
    xu = u.T @ x @ u
    value = first - np.sum(h * np.diag(xu))
    diff = w[:, None] - w[None, :]
    close = np.abs(diff) <= 1e-12 * np.max(np.abs(w))
    dd = np.where(
        close,
        0.5 * (dh[:, None] + dh[None, :]),
        (h[:, None] - h[None, :]) / np.where(close, 1.0, diff),
    )
    grad = (u * w ** (q - 1)) @ u.T - u @ (dd * xu) @ u.T
    return value, grad


def bregman_optimal(sigma, m: int, n: int, q: float = 0.5, damping: float = 0.0):
    """``argmin_{L, R} B_q(Σ + λI, L ⊗ R)`` by scipy BFGS on the explicit divergence,
    polished by Newton steps (central-difference Hessian of the analytic gradient).

    ``L = A Aᵀ``, ``R = B Bᵀ`` with lower-triangular ``A, B`` (``A₀₀ = 1`` fixes the free
    scale). Returns ``(L, R)`` with ``tr R = n``.
    """
    x = np.asarray(sigma, np.float64) + damping * np.eye(m * n)
    il, ir = np.tril_indices(m), np.tril_indices(n)
    nl = len(il[0])

    def unpack(theta):
        a = np.zeros((m, m))
        a[il] = np.concatenate([[1.0], theta[: nl - 1]])
        b = np.zeros((n, n))
        b[ir] = theta[nl - 1 :]
        return a, b

    def fun(theta):
        a, b = unpack(theta)
        left, right = a @ a.T, b @ b.T
        value, gy = _bregman_objective_and_grad(x, np.kron(left, right), q)
        g4 = gy.reshape(m, n, m, n)
        gl = np.einsum("ijkl,jl->ik", g4, right)
        gr = np.einsum("ijkl,ik->jl", g4, left)
        ga = (gl + gl.T) @ a
        gb = (gr + gr.T) @ b
        return value, np.concatenate([ga[il][1:], gb[ir]])

    s = np.sqrt(np.trace(x) / (m * n))
    theta0 = np.concatenate([np.eye(m)[il][1:], s * np.eye(n)[ir]])
    res = scipy.optimize.minimize(
        fun, theta0, jac=True, method="BFGS", options={"gtol": 1e-14, "maxiter": 20000}
    )
    theta = res.x
    for _ in range(8):  # Newton polish with a central-difference Hessian of the gradient
        grad = fun(theta)[1]
        h = 1e-6 * max(1.0, np.max(np.abs(theta)))
        eye = np.eye(theta.size)
        hess = np.stack([(fun(theta + h * e)[1] - fun(theta - h * e)[1]) / (2 * h) for e in eye])
        step = np.linalg.lstsq(0.5 * (hess + hess.T), grad, rcond=None)[0]
        theta = theta - step
        if np.max(np.abs(step)) <= 1e-15 * max(1.0, np.max(np.abs(theta))):
            break
    a, b = unpack(theta)
    left, right = a @ a.T, b @ b.T
    c = np.trace(right) / n
    return left * c, right / c


def bregman_penalty(q: float, lam, r):
    """The scalar penalty ``d_q(λ, rλ) = λ^q (1 − r^q − q r^{q−1}(1 − r)) / (q(q−1))``.

    Closed forms: ``q = 2``: ``½λ²(r−1)²``; ``1``: ``λ(r − 1 − log r)``; ``½``:
    ``2√λ(√r + 1/√r − 2)``; ``0``: ``log r + 1/r − 1`` (P4's Eqs. 5–7).

    Raises:
        ValueError: ``λ`` or ``r`` not finite and > 0.
    """
    lam, r = np.asarray(lam, np.float64), np.asarray(r, np.float64)
    if not (
        np.all(np.isfinite(lam)) and np.all(np.isfinite(r)) and np.all(lam > 0) and np.all(r > 0)
    ):
        raise ValueError("lam and r must be finite and > 0 (eigenvalues and their ratio)")
    q = float(q)
    if q == 1:
        return lam * (r - 1 - np.log(r))
    if q == 0:
        return np.log(r) + 1 / r - 1
    return lam**q * (1 - r**q - q * r ** (q - 1) * (1 - r)) / (q * (q - 1))


def _random_spd(rng, d):
    x = rng.standard_normal((d, d * 2))
    return x @ x.T / (2 * d) + 0.1 * np.eye(d)


def bregman_identity_errors(q: float, *, seed: int = 0, pairs: int = 50, matrices: int = 10):
    """The exact identities of P4's Prop. 2 at one ``q``, checked on random draws.

    Returns ``{"scalar": max relative error of d_q(λ, rλ) = λ^q d_q(1, r) = closed form,
    "homogeneity": of B_q(sA, sB) = s^q B_q(A, B), "misalignment": the smallest
    B_q(A, C) − Σ_i d_q(λ_i(A), λ_i(C)) (sorted eigenvalues; ≥ 0), "over_under":
    d_q(1, 2)/d_q(1, ½)}`` (F, VN: > 1, SQ: 1, KL: < 1).
    """
    rng = np.random.default_rng(seed)
    lam, r = 10.0 ** rng.uniform(-2, 2, pairs), 10.0 ** rng.uniform(-1.5, 1.5, pairs)
    b = np.array([bregman_divergence([[x]], [[x * y]], q) for x, y in zip(lam, r, strict=True)])
    homo = lam**q * np.array([bregman_divergence([[1.0]], [[y]], q) for y in r])
    closed = bregman_penalty(q, lam, r)
    scalar = max(np.max(np.abs(b - closed) / closed), np.max(np.abs(b - homo) / homo))
    worst_scale, worst_mis = 0.0, np.inf
    for _ in range(matrices):
        a, c, s = _random_spd(rng, 5), _random_spd(rng, 5), 10.0 ** rng.uniform(-1, 1)
        rhs = s**q * bregman_divergence(a, c, q)
        worst_scale = max(worst_scale, abs(bregman_divergence(s * a, s * c, q) - rhs) / abs(rhs))
        la, lc = np.sort(np.linalg.eigvalsh(a)), np.sort(np.linalg.eigvalsh(c))
        d = sum(bregman_divergence([[x]], [[y]], q) for x, y in zip(la, lc, strict=True))
        worst_mis = min(worst_mis, bregman_divergence(a, c, q) - d)
    ratio = float(bregman_penalty(q, 1.0, 2.0) / bregman_penalty(q, 1.0, 0.5))
    return {"scalar": float(scalar), "homogeneity": float(worst_scale),
            "misalignment": float(worst_mis), "over_under": ratio}  # fmt: skip


def bregman_perturbation_increase(
    sigma,
    left,
    right,
    q: float,
    *,
    scale: float = 1.0,
    trials: int = 8,
    size: float = 0.05,
    seed: int = 0,
) -> float:
    """Smallest relative increase of ``B_q(Σ, c L ⊗ R)`` over random PSD perturbations of
    the factors (``> 0`` at a minimiser): ``min_t (B_q(Σ, Y_t) − B_q(Σ, Y)) / |B_q(Σ, Y)|``.
    """
    if int(trials) < 1:
        raise ValueError(f"trials must be ≥ 1; got {trials}")
    rng = np.random.default_rng(seed)
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
    m, n = len(left), len(right)
    base = bregman_divergence(sigma, scale * np.kron(left, right), q)
    inc = []
    for _ in range(int(trials)):
        da, db = size * rng.standard_normal((m, m)), size * rng.standard_normal((n, n))
        pl = left + da @ da.T - np.trace(da @ da.T) / (2 * m) * np.eye(m)
        pr = right + db @ db.T - np.trace(db @ db.T) / (2 * n) * np.eye(n)
        inc.append(bregman_divergence(sigma, scale * np.kron(pl, pr), q) - base)
    return float(np.min(inc) / max(abs(base), 1e-300))


def psgd_whitening_criterion(c, p) -> float:
    """PSGD's whitening criterion ``tr(PC) + tr(P⁻¹)`` of a dense SPD ``P`` (Li 2018).

    Equals ``½·B_½(C, P⁻²) + 2 tr C^½`` (``bregman_divergence`` at ``q = ½``; claim P6-50).
    """
    c, p = np.asarray(c, np.float64), np.asarray(p, np.float64)
    return float(np.trace(p @ c) + np.trace(np.linalg.inv(p)))


# --------------------------------------------------------------------------------------
# Dense helpers of the identity checks (precond_lab.identities).
# --------------------------------------------------------------------------------------


def _square_pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or x.shape[0] != x.shape[1] or x.shape != y.shape:
        raise ValueError(f"x and y must be square matrices of one shape; got {x.shape}, {y.shape}")
    return x, y


def kl_gradient(x, y) -> np.ndarray:
    """``∇_Y KL(N(0,X) ‖ N(0,Y)) = ½(Y⁻¹ − Y⁻¹XY⁻¹)`` on the explicit matrices."""
    x, y = _square_pair(x, y)
    yi = np.linalg.inv(y)
    return 0.5 * (yi - yi @ x @ yi)


def kl_factor_stationarity(x, left, right=None) -> float:
    """The gradient of ``KL(X ‖ L⊗R)`` in the factors by the chain rule on the dense
    gradient, made dimensionless (0 at a stationary point): ``‖2L∇_L‖/(n√m) +
    ‖2R∇_R‖/(m√n)``. ``right=None``: one-sided in ``L`` (``Y = L⊗I``, ``n = mn/m``);
    ``left=None``: one-sided in ``R``."""
    d = np.asarray(x).shape[0]
    m = d // np.asarray(right).shape[0] if left is None else np.asarray(left).shape[0]
    n = d // m
    a = np.eye(m) if left is None else np.asarray(left, np.float64)
    b = np.eye(n) if right is None else np.asarray(right, np.float64)
    gy = kl_gradient(x, np.kron(a, b)).reshape(m, n, m, n)
    out = 0.0
    if left is not None:
        gl = np.einsum("ijkl,jl->ik", gy, b)
        out += float(np.linalg.norm(2 * a @ gl) / (n * np.sqrt(m)))
    if right is not None:
        gr = np.einsum("ijkl,ik->jl", gy, a)
        out += float(np.linalg.norm(2 * b @ gr) / (m * np.sqrt(n)))
    return out


def congruence(a, e, eps: float) -> np.ndarray:
    """``A^½ exp(εE) A^½``: a PD perturbation of ``A`` in the symmetric direction ``E``."""
    r = psd_power(a, 0.5)
    return r @ scipy.linalg.expm(eps * np.asarray(e, np.float64)) @ r


def symmetric_directions(rng, d: int, count: int) -> list[np.ndarray]:
    """``count`` random symmetric ``d×d`` directions of unit Frobenius norm."""
    out = []
    for _ in range(int(count)):
        e = rng.standard_normal((d, d))
        out.append((e + e.T) / np.linalg.norm(e + e.T))
    return out


def equivalent_samples(sigma, m: int, n: int) -> np.ndarray:
    """``mn`` samples ``√(mn μ_k) v_k`` (as ``m×n``) whose mean outer product is exactly ``Σ``
    (``μ_k, v_k`` its eigenpairs, negative ones clipped)."""
    sigma = np.asarray(sigma, np.float64)
    d = int(m) * int(n)
    if sigma.shape != (d, d):
        raise ValueError(f"sigma must be ({d}, {d}) for m={m}, n={n}; got {sigma.shape}")
    w, v = np.linalg.eigh(sigma)
    return (np.sqrt(np.clip(w, 0.0, None) * d) * v).T.reshape(d, m, n)


def vn_kronecker_minimiser(x, m: int, n: int, rng) -> tuple[np.ndarray, float]:
    """Minimise the von Neumann divergence ``vN(X, A⊗B)`` over Cholesky parameters of ``A``,
    ``B`` (BFGS with the exact gradient, from ``√(trX/mn)·(I + 0.1·noise)``): the minimiser
    ``A⊗B`` and its value.

    With ``log(A⊗B) = log A ⊗ I + I ⊗ log B`` the objective is
    ``tr(X log X) − trX − tr(X_A log A) − tr(X_B log B) + trA·trB`` (``X_A``, ``X_B`` the
    partial traces), whose gradient in ``A`` is ``trB·I − Dlog(A)[X_A]`` (the Fréchet
    derivative of the logarithm in ``A``'s eigenbasis); the location is then found to the
    gradient tolerance, not only to the finite-difference noise of a numerical gradient.
    """
    x = np.asarray(x, np.float64)
    if x.shape != (m * n, m * n):
        raise ValueError(f"x must be ({m * n}, {m * n}) for m={m}, n={n}; got {x.shape}")
    x4 = x.reshape(m, n, m, n)
    xa, xb = np.einsum("iaja->ij", x4), np.einsum("iaib->ab", x4)
    tri_m, tri_n = np.tril_indices(m), np.tril_indices(n)

    def factors(p):
        la, lb = np.zeros((m, m)), np.zeros((n, n))
        la[tri_m], lb[tri_n] = p[: len(tri_m[0])], p[len(tri_m[0]) :]
        return la, lb

    def log_and_adjoint(a, w):
        lam, q = np.linalg.eigh(a)
        if lam.min() <= 0:
            return None, None
        d = lam[:, None] - lam[None, :]
        close = np.abs(d) <= 1e-12 * np.abs(lam).max()
        gam = np.where(close, 1.0 / lam[:, None], np.log(lam)[:, None] - np.log(lam)[None, :])
        gam = np.where(close, gam, gam / np.where(close, 1.0, d))
        return (q * np.log(lam)) @ q.T, q @ (gam * (q.T @ w @ q)) @ q.T

    def f(p):
        la, lb = factors(p)
        a, b = la @ la.T, lb @ lb.T
        log_a, da = log_and_adjoint(a, xa)
        log_b, db = log_and_adjoint(b, xb)
        if log_a is None or log_b is None:
            return np.inf, np.zeros_like(p)
        val = -np.sum(xa * log_a) - np.sum(xb * log_b) + np.trace(a) * np.trace(b)
        ga = np.trace(b) * np.eye(m) - da  # dF/dA (symmetric)
        gb = np.trace(a) * np.eye(n) - db
        return val, np.concatenate([(2 * ga @ la)[tri_m], (2 * gb @ lb)[tri_n]])

    scale = (np.trace(x) / (m * n)) ** 0.25
    p0 = np.concatenate(
        [
            (np.eye(m) * scale + 0.1 * scale * np.tril(rng.standard_normal((m, m))))[tri_m],
            (np.eye(n) * scale + 0.1 * scale * np.tril(rng.standard_normal((n, n))))[tri_n],
        ]
    )
    res = scipy.optimize.minimize(
        f, p0, jac=True, method="BFGS", options={"gtol": 1e-13, "maxiter": 10000}
    )
    la, lb = factors(res.x)
    y = np.kron(la @ la.T, lb @ lb.T)
    return y, float(von_neumann_divergence(x, y))
