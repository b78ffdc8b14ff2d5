"""A non-Kronecker quadratic trained with Kronecker preconditioners whose gains are swapped.

The task of P4's App. D.3 (Liu et al. 2026) as far as our notes know it: a quadratic loss
``½ (w − w⋆)ᵀ H (w − w⋆)`` on ``vec(W)``, ``W`` of shape ``(m, n)`` (row-major vec), with

    H = s · (A ⊗ B + Σ_k σ_k vec(V_k) vec(V_k)ᵀ + diag(vec D)),

a Kronecker part with log-spaced spectra, a low-rank part along random (not rank-one)
matrices ``V_k`` and a positive diagonal ``D`` of independent entries (neither is a
Kronecker product), and mini-batch gradients ``g = H(w − w⋆) + ξ`` whose noise has the
covariance ``H / batch`` (per-example noise of covariance ``H``: a well-specified model,
Fisher = Hessian), drawn through the structure (no ``mn × mn`` matrix).

``train_gain_swap`` runs ``w ← w − η P g`` in one ``jax.lax.scan`` (jitted once per variant
and setting; the learning rate, the seed's key and the task are inputs). Every
``refit_every`` steps it refits the trace-power Kronecker fits (``trace_power_fit``: the
stationarity iteration of ``estimators.bregman_optimal``, a fixed number of sweeps warm
started from the previous fit) on the last ``history`` mini-batch gradients, damped by
``λ = damping_rel · tr C / mn`` as the library's fits are, and preconditions with
``P = S^power`` for the variant's ``S``: the KL fit, the KL fit with its leading or tail
gains replaced by F's or SQ's (``heldout.swap_gains``), or the F / SQ fit itself. The
noise of step ``t`` depends only on the key and ``t``, so the variants of one seed see the
same task and the same noise (paired).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import estimators as est
from .heldout import swap_gains
from .linalg import eigh_sym
from .structures import EigenKronecker, Kronecker

__all__ = [
    "VARIANTS",
    "QuadraticTask",
    "fit_error",
    "hessian_dense",
    "hessian_matvec",
    "loss",
    "make_quadratic",
    "minibatch_noise",
    "trace_power_fit",
    "train_gain_swap",
]

#: variant → (donor trace power q or None, part): the KL fit (q = 0) with the donor's gains
#: on its ``"leading"`` or ``"tail"`` directions, or the donor's own fit (``"own"``).
VARIANTS = {
    "kl": (None, None),
    "f_leading": (2.0, "leading"),
    "f_tail": (2.0, "tail"),
    "sq_leading": (0.5, "leading"),
    "sq_tail": (0.5, "tail"),
    "f": (2.0, "own"),
    "sq": (0.5, "own"),
}


class QuadraticTask(NamedTuple):
    """The quadratic's Hessian ``H`` (in parts) and optimum ``w⋆`` (a pytree of arrays).

    Attributes:
        left_basis, left_values: ``A = Qa diag(a) Qaᵀ`` (m×m).
        right_basis, right_values: ``B`` (n×n).
        low_rank: ``(r, m, n)`` unit-norm matrices ``V_k``; low_rank_values: ``σ_k``.
        diagonal: ``(m, n)`` entries of ``D``.
        scale: ``s``.
        optimum: ``w⋆`` as an ``(m, n)`` matrix.
    """

    left_basis: jax.Array
    left_values: jax.Array
    right_basis: jax.Array
    right_values: jax.Array
    low_rank: jax.Array
    low_rank_values: jax.Array
    diagonal: jax.Array
    scale: jax.Array
    optimum: jax.Array


def make_quadratic(
    m: int = 16,
    n: int = 24,
    *,
    seed: int = 0,
    decades: float = 3.0,
    rank: int = 8,
    low_rank: float = 0.3,
    diagonal: float = 1e-3,
    scale: float = 1.0,
    optimum: float = 1.0,
    dtype=jnp.float64,
) -> QuadraticTask:
    """A random task: ``a``, ``b`` log-spaced over ``decades/2`` decades each (so ``A ⊗ B``
    spans ``decades`` from 1), ``σ_k = low_rank · 10^(−k/(r−1))`` (one decade), ``D`` entries
    ``diagonal · 10^U(−½, ½)``, random orthogonal bases, ``w⋆ ~ N(0, optimum² I)``; ``H``
    is multiplied by ``scale``.

    Raises:
        ValueError: a size or level out of range.
    """
    for name, v in (("m", m), ("n", n), ("rank", rank)):
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, np.integer))
            or v < (0 if name == "rank" else 1)
        ):
            raise ValueError(f"{name} must be an integer ≥ {0 if name == 'rank' else 1}; got {v!r}")
    for name, v in (
        ("decades", decades),
        ("low_rank", low_rank),
        ("diagonal", diagonal),
        ("scale", scale),
        ("optimum", optimum),
    ):
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0) or (
            name == "scale" and v == 0
        ):
            raise ValueError(f"{name} must be a finite number ≥ 0 (scale > 0); got {v!r}")
    rng = np.random.default_rng(seed)
    qa = np.linalg.qr(rng.standard_normal((m, m)))[0]
    qb = np.linalg.qr(rng.standard_normal((n, n)))[0]
    a = 10.0 ** np.linspace(0.0, -decades / 2, m)
    b = 10.0 ** np.linspace(0.0, -decades / 2, n)
    v = rng.standard_normal((rank, m, n))
    v /= np.linalg.norm(v, axis=(1, 2), keepdims=True)
    sig = low_rank * 10.0 ** (-np.arange(rank) / max(rank - 1, 1))
    d = diagonal * 10.0 ** rng.uniform(-0.5, 0.5, (m, n))
    w_star = optimum * rng.standard_normal((m, n))
    arrays = (qa, a, qb, b, v, sig, d, np.asarray(scale), w_star)
    return QuadraticTask(*(jnp.asarray(x, dtype) for x in arrays))


def hessian_matvec(task: QuadraticTask, x: jax.Array) -> jax.Array:
    """``H vec(x)`` as an ``(m, n)`` matrix (``x`` of shape ``(…, m, n)``)."""
    qa, qb = task.left_basis, task.right_basis
    amat = (qa * task.left_values) @ qa.T
    bmat = (qb * task.right_values) @ qb.T
    kron = amat @ x @ bmat
    coef = jnp.einsum("kij,...ij->...k", task.low_rank, x) * task.low_rank_values
    low = jnp.einsum("...k,kij->...ij", coef, task.low_rank)
    return task.scale * (kron + low + task.diagonal * x)


def hessian_dense(task: QuadraticTask) -> jax.Array:
    """The ``(mn, mn)`` Hessian (references and tests only)."""
    qa, qb = task.left_basis, task.right_basis
    h = jnp.kron((qa * task.left_values) @ qa.T, (qb * task.right_values) @ qb.T)
    v = task.low_rank.reshape(task.low_rank.shape[0], -1)
    h = h + (v.T * task.low_rank_values) @ v + jnp.diag(task.diagonal.reshape(-1))
    return task.scale * h


def loss(task: QuadraticTask, w: jax.Array) -> jax.Array:
    """``½ (w − w⋆)ᵀ H (w − w⋆)``."""
    e = w - task.optimum
    return 0.5 * jnp.sum(e * hessian_matvec(task, e))


def minibatch_noise(task: QuadraticTask, key: jax.Array, batch: int) -> jax.Array:
    """One draw of the mini-batch gradient noise, ``N(0, H/batch)``, as an ``(m, n)`` matrix."""
    k1, k2, k3 = jax.random.split(key, 3)
    m, n = task.diagonal.shape
    dt = task.diagonal.dtype
    qa, qb = task.left_basis, task.right_basis
    ra = (qa * jnp.sqrt(task.left_values)) @ qa.T
    rb = (qb * jnp.sqrt(task.right_values)) @ qb.T
    kron = ra @ jax.random.normal(k1, (m, n), dt) @ rb
    z = jax.random.normal(k2, task.low_rank_values.shape, dt) * jnp.sqrt(task.low_rank_values)
    low = jnp.einsum("k,kij->ij", z, task.low_rank)
    diag = jnp.sqrt(task.diagonal) * jax.random.normal(k3, (m, n), dt)
    return jnp.sqrt(task.scale / batch) * (kron + low + diag)


def _damped_statistic(grads, w, v, q: float, side: str, damping):
    """The stationarity update of one factor over ``C + λI`` (``trace_power_update`` on a
    damped target, for a stack of gradients, jittable)."""
    wp, total = est.factor_power(w, q)
    eye = jnp.eye(grads.shape[1] if side == "left" else grads.shape[2], dtype=grads.dtype)
    return est.trace_power_statistic(grads, w, v, q, side) + damping * jnp.sum(wp) / total * eye


def trace_power_fit(grads, q: float, damping, left, right, sweeps: int):
    """``sweeps`` sweeps of ``bregman_optimal``'s iteration from ``(left, right)``.

    Each sweep is the exact update of the left factor, then of the right one, on the damped
    second moment ``C + λI`` of ``grads`` (``(N, m, n)``, weights ``1/N``), with the gauge
    ``tr R = n`` that ``bregman_optimal`` uses; its fixed point is ``bregman_optimal(grads,
    q, damping=λ)`` (``q = 0``: ``kl_optimal``'s). Jittable (``q`` and ``sweeps`` static).

    Returns:
        ``(left, right)``.
    """
    n = grads.shape[2]

    def sweep(carry, _):
        _, right = carry
        wr, vr = eigh_sym(right)
        new_left = _damped_statistic(grads, wr, vr, q, "left", damping)
        wl, vl = eigh_sym(new_left)
        new_right = _damped_statistic(grads, wl, vl, q, "right", damping)
        gauge = jnp.trace(new_right) / n
        return (new_left * gauge, new_right / gauge), None

    (left, right), _ = jax.lax.scan(sweep, (left, right), None, length=sweeps)
    return left, right


def _needed(variant: str) -> tuple[float, ...]:
    donor, part = VARIANTS[variant]
    if part == "own":
        return (donor,)
    return (0.0,) if donor is None else (0.0, donor)


def _preconditioner(fits, variant: str, fraction: float, power: float) -> EigenKronecker:
    donor, part = VARIANTS[variant]
    if part == "own":
        s = Kronecker(*fits[donor], validate=False).eigen()
    else:
        kl = Kronecker(*fits[0.0], validate=False)
        s = kl.eigen() if donor is None else swap_gains(kl, Kronecker(*fits[donor]), part, fraction)
    tiny = jnp.finfo(s.values.dtype).tiny
    return EigenKronecker(
        s.left_basis, s.right_basis, jnp.maximum(s.values, tiny) ** power, validate=False
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "variant",
        "steps",
        "batch",
        "history",
        "refit_every",
        "sweeps",
        "init_sweeps",
        "fraction",
        "power",
        "damping_rel",
        "blowup",
    ),
)
def _train(
    task,
    key,
    eta,
    *,
    variant,
    steps,
    batch,
    history,
    refit_every,
    sweeps,
    init_sweeps,
    fraction,
    power,
    damping_rel,
    blowup,
):
    m, n = task.diagonal.shape
    dt = task.diagonal.dtype
    k_pre, k_run = jax.random.split(key)
    w0 = jnp.zeros((m, n), dt)
    g0 = hessian_matvec(task, w0 - task.optimum)
    pre = jax.vmap(lambda k: g0 + minibatch_noise(task, k, batch))(jax.random.split(k_pre, history))
    loss0 = loss(task, w0)

    def damping(buf):
        return damping_rel * jnp.mean(jnp.sum(buf * buf, axis=(1, 2))) / (m * n)

    def refit(buf, fits, count):
        lam = damping(buf)
        return {q: trace_power_fit(buf, q, lam, *fits[q], count) for q in fits}, lam

    eye = (jnp.eye(m, dtype=dt), jnp.eye(n, dtype=dt))
    fits, lam = refit(pre, {q: eye for q in _needed(variant)}, init_sweeps)

    def step(carry, t):
        w, buf, fits, lam, fit_buf, dead = carry
        g = hessian_matvec(task, w - task.optimum) + minibatch_noise(
            task, jax.random.fold_in(k_run, t), batch
        )
        buf = buf.at[t % history].set(g)  # the statistics see g before it is preconditioned
        new_fits, new_lam = jax.lax.cond(
            t % refit_every == 0, lambda: refit(buf, fits, sweeps), lambda: (fits, lam)
        )
        fit_buf = jnp.where(t % refit_every == 0, buf, fit_buf)
        p = _preconditioner(new_fits, variant, fraction, power)
        new_w = w - eta * p.matvec(g)
        value = loss(task, new_w)
        bad = dead | ~jnp.isfinite(value) | (value > blowup * loss0)
        w = jnp.where(bad, w, new_w)
        return (w, buf, new_fits, new_lam, fit_buf, bad), jnp.where(bad, jnp.nan, value)

    carry = (w0, pre, fits, lam, pre, jnp.asarray(False))
    (w, _, fits, lam, fit_buf, dead), losses = jax.lax.scan(step, carry, jnp.arange(steps))
    return {
        "loss": losses,
        "initial_loss": loss0,
        "fits": fits,
        "fit_buffer": fit_buf,
        "fit_damping": lam,
        "diverged": dead,
    }


def train_gain_swap(
    task: QuadraticTask,
    key: jax.Array,
    eta,
    *,
    variant: str = "kl",
    steps: int = 1000,
    batch: int = 64,
    history: int = 40,
    refit_every: int = 1,
    sweeps: int = 2,
    init_sweeps: int = 100,
    fraction: float = 0.5,
    power: float = -0.5,
    damping_rel: float = 1e-3,
    blowup: float = 1e6,
) -> dict:
    """Train the quadratic with the variant's preconditioner ``P = S^power``.

    Before step 0, ``history`` mini-batch gradients at ``w₀ = 0`` fill the window and the
    fits start from ``init_sweeps`` sweeps from the identity. At step ``t`` the mini-batch
    gradient ``g_t`` enters the window (replacing the oldest), every ``refit_every`` steps
    the needed fits (KL and the donor, or the donor alone) take ``sweeps`` warm-started
    sweeps on it, and ``w ← w − η S^power g_t``. A run whose loss is not finite or exceeds
    ``blowup`` × the initial loss is stopped (its later losses are NaN, ``diverged`` True).

    Args:
        task: from ``make_quadratic``.
        key: the seed's key (same key → same noise for every variant).
        eta: the learning rate (traced: one compilation for all rates).
        variant: a key of ``VARIANTS``.
        steps, batch, history, refit_every, sweeps, init_sweeps: as above.
        fraction: the share of leading directions (``heldout.swap_gains``).
        power: the preconditioner's power (−½: Shampoo's root; −1: root-free).
        damping_rel: ``λ = damping_rel · tr C / mn`` of every fit.
        blowup: the divergence threshold.

    Returns:
        ``{"loss": (steps,), "initial_loss", "fits": {q: (L, R)} of the last refit,
        "fit_buffer": its window, "fit_damping": its λ, "diverged"}``.

    Raises:
        ValueError: an unknown variant or a count out of range.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {tuple(VARIANTS)}; got {variant!r}")
    for name, v in (
        ("steps", steps),
        ("batch", batch),
        ("history", history),
        ("refit_every", refit_every),
        ("sweeps", sweeps),
        ("init_sweeps", init_sweeps),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer ≥ 1; got {v!r}")
    return _train(
        task,
        key,
        jnp.asarray(eta, task.diagonal.dtype),
        variant=variant,
        steps=int(steps),
        batch=int(batch),
        history=int(history),
        refit_every=int(refit_every),
        sweeps=int(sweeps),
        init_sweeps=int(init_sweeps),
        fraction=float(fraction),
        power=float(power),
        damping_rel=float(damping_rel),
        blowup=float(blowup),
    )


def fit_error(fits, window, damping) -> dict:
    """``‖S − S_lib‖_F / ‖S_lib‖_F`` of in-scan fits ``{q: (L, R)}`` against the library's fit
    (``kl_optimal`` for ``q = 0``, else ``bregman_optimal``) on the same window and ``λ``
    (how closely the warm-started sweeps of ``train_gain_swap`` track the converged fits)."""
    err = {}
    for q, (left, right) in fits.items():
        lam = float(damping)
        ref = (
            est.kl_optimal(window, damping=lam)
            if float(q) == 0.0
            else est.bregman_optimal(window, float(q), damping=lam)
        )
        a, b = np.asarray(ref.scale * ref.left), np.asarray(ref.right)
        left, right = np.asarray(left), np.asarray(right)
        cross = np.sum(a * left) * np.sum(b * right)
        ref2, own2 = np.sum(a * a) * np.sum(b * b), np.sum(left**2) * np.sum(right**2)
        err[float(q)] = float(np.sqrt(max(ref2 + own2 - 2 * cross, 0.0) / ref2))
    return err
