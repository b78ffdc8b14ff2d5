"""Online Kronecker estimators: Shampoo, KL-Shampoo, SOAP and KL-SOAP (theory.md A.6–A.7).

Hyper-parameter convention: ``beta`` is the weight of the *old* statistic (the
codes' ``shampoo_beta``), ``beta2`` the weight of the old Adam second moment.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ..linalg._direct import qr_refresh_step
from ..structures import EigenKronecker, Kronecker
from ._state import EstimatorState, batch_left, batch_right, batch_square

__all__ = [
    "kl_shampoo_init",
    "kl_shampoo_preconditioner",
    "kl_shampoo_update",
    "kl_soap_init",
    "kl_soap_preconditioner",
    "kl_soap_update",
    "shampoo_init",
    "shampoo_preconditioner",
    "shampoo_update",
    "soap_init",
    "soap_preconditioner",
    "soap_update",
]


def _hp(**kw):
    return tuple(sorted(kw.items()))


def _eigh_desc(s: jax.Array) -> jax.Array:
    """Eigenvectors of a symmetric matrix, eigenvalues descending (as the KL code does)."""
    _, q = jnp.linalg.eigh(0.5 * (s + s.T))
    return q[:, ::-1]


# ----------------------------------------------------------------------------- Shampoo
def shampoo_init(g0: jax.Array, *, beta: float = 0.95) -> EstimatorState:
    """Shampoo's EMA ``L ← βL + (1−β)GGᵀ``, ``R ← βR + (1−β)GᵀG`` from zero, fed ``G0``."""
    g0 = jnp.asarray(g0)
    m, n = g0.shape[-2:]
    z = EstimatorState(
        "shampoo",
        {
            "left": jnp.zeros((m, m), g0.dtype),
            "right": jnp.zeros((n, n), g0.dtype),
            "step": jnp.asarray(0, jnp.int32),
        },
        _hp(beta=float(beta)),
    )
    return shampoo_update(z, g0)


@jax.jit
def shampoo_update(state: EstimatorState, g: jax.Array) -> EstimatorState:
    """One EMA step of ``L`` and ``R``."""
    b = state.hp["beta"]
    return state.replace(
        left=b * state["left"] + (1 - b) * batch_left(g),
        right=b * state["right"] + (1 - b) * batch_right(g),
        step=state["step"] + 1,
    )


def shampoo_preconditioner(state: EstimatorState) -> Kronecker:
    """Shampoo² with trace scaling, ``L ⊗ R / tr L`` (its power −1/2 is Shampoo's step)."""
    left = 0.5 * (state["left"] + state["left"].T)
    right = 0.5 * (state["right"] + state["right"].T)
    return Kronecker(left, right, 1.0 / jnp.trace(left))


# -------------------------------------------------------------------------- KL-Shampoo
def kl_shampoo_init(
    g0: jax.Array,
    *,
    beta: float = 0.98,
    frequency: int = 10,
    init_factor: float = 0.1,
    damping: float = 0.0,
    clamp: bool = True,
) -> EstimatorState:
    """KL-Shampoo's first call (theory.md A.6 step 1): no eigenvalue update.

    ``S_a = (1−β)/d_b·G0G0ᵀ``, ``S_b = (1−β)/d_a·G0ᵀG0``, bases from ``eigh``
    (eigenvalues descending), eigenvalues ``λ = init_factor``.

    Args:
        g0: first gradient ``(m, n)`` or per-example batch ``(N, m, n)``.
        beta: weight of the old statistic (the code's ``shampoo_beta``).
        frequency: QR refresh every ``frequency`` updates (0: never; fixed basis).
        init_factor: initial eigenvalues.
        damping: ``κ`` added (as ``κ·mean(1/λ_other)``) to the eigenvalue targets only.
        clamp: clamp ``λ^{-1/2}`` at ``max(10, min(d, 4000))`` as the code does.
    """
    g0 = jnp.asarray(g0)
    m, n = g0.shape[-2:]
    sa = (1 - beta) / n * batch_left(g0)
    sb = (1 - beta) / m * batch_right(g0)
    arrays = {
        "sa": sa,
        "sb": sb,
        "qa": _eigh_desc(sa),
        "qb": _eigh_desc(sb),
        "la": jnp.full((m,), init_factor, g0.dtype),
        "lb": jnp.full((n,), init_factor, g0.dtype),
        "step": jnp.asarray(0, jnp.int32),
    }
    hp = _hp(beta=float(beta), frequency=int(frequency), damping=float(damping), clamp=bool(clamp))
    return EstimatorState("kl_shampoo", arrays, hp)


def _clamp(lam: jax.Array, dim: int, on: bool) -> jax.Array:
    if not on:
        return lam
    cap = max(10.0, min(float(dim), 4000.0))  # bound on λ^{-1/2}
    return jnp.maximum(lam, 1.0 / cap**2)


def _kl_core(state: EstimatorState, g: jax.Array) -> EstimatorState:
    hp = state.hp
    b, kappa = hp["beta"], hp["damping"]
    m, n = g.shape[-2:]
    qa, qb, la, lb = state["qa"], state["qb"], state["la"], state["lb"]
    sb_inv = (qb / lb[None, :]) @ qb.T  # Ŝ_b^{-1} from the eigen-approximation
    sa_inv = (qa / la[None, :]) @ qa.T
    sa = b * state["sa"] + (1 - b) / n * batch_left(g, sb_inv)
    sb = b * state["sb"] + (1 - b) / m * batch_right(g, sa_inv)
    p2 = batch_square(qa.T @ g @ qb)  # mean_k (Q_aᵀ G_k Q_b)²
    ta = jnp.mean(p2 / lb[None, :], axis=1) + kappa * jnp.mean(1.0 / lb)
    tb = jnp.mean(p2 / la[:, None], axis=0) + kappa * jnp.mean(1.0 / la)
    la = _clamp(b * la + (1 - b) * ta, m, hp["clamp"])
    lb = _clamp(b * lb + (1 - b) * tb, n, hp["clamp"])
    step = state["step"] + 1
    freq = hp["frequency"]
    if freq > 0:
        refresh = step % freq == 0
        qa = lax.cond(refresh, lambda: qr_refresh_step(sa, qa)[0], lambda: qa)
        qb = lax.cond(refresh, lambda: qr_refresh_step(sb, qb)[0], lambda: qb)
    return state.replace(sa=sa, sb=sb, la=la, lb=lb, qa=qa, qb=qb, step=step)


@jax.jit
def kl_shampoo_update(state: EstimatorState, g: jax.Array) -> EstimatorState:
    """One KL-Shampoo step (theory.md A.6 steps 4–6).

    Factors are updated with the other factor's inverse from its eigen-approximation
    ``Q diag(λ)^{-1} Qᵀ``; eigenvalues get their own EMA towards
    ``diag(Q_aᵀ G Ŝ_b^{-1} Gᵀ Q_a)/d_b`` (simultaneously, from the old ``λ``); every
    ``frequency`` steps the bases are refreshed by one power step + QR.
    """
    return _kl_core(state, g)


def kl_shampoo_preconditioner(state: EstimatorState) -> EigenKronecker:
    """``Q_a diag(λ_a) Q_aᵀ ⊗ Q_b diag(λ_b) Q_bᵀ`` (its power −1/2 is KL-Shampoo's step)."""
    return EigenKronecker(state["qa"], state["qb"], jnp.outer(state["la"], state["lb"]))


# ------------------------------------------------------------------------------ KL-SOAP
def kl_soap_init(g0: jax.Array, *, beta2: float = 0.95, **kl_hparams) -> EstimatorState:
    """KL-SOAP: KL-Shampoo's factors/basis plus Adam's second moment ``v`` (zero) in the basis."""
    st = kl_shampoo_init(g0, **kl_hparams)
    hp = tuple(sorted((*st.hparams, ("beta2", float(beta2)))))
    return EstimatorState(
        "kl_soap", {**st.arrays, "v": jnp.zeros(g0.shape[-2:], st["sa"].dtype)}, hp
    )


@jax.jit
def kl_soap_update(state: EstimatorState, g: jax.Array) -> EstimatorState:
    """``v ← β₂v + (1−β₂)(Q_aᵀGQ_b)²`` in the current basis (no bias correction, as the
    code), then the KL-Shampoo factor/eigenvalue/basis step. ``v`` is kept as is when the
    basis is refreshed."""
    b2 = state.hp["beta2"]
    v = b2 * state["v"] + (1 - b2) * batch_square(state["qa"].T @ g @ state["qb"])
    return _kl_core(state.replace(v=v), g)


def kl_soap_preconditioner(state: EstimatorState) -> EigenKronecker:
    """``(Q_a ⊗ Q_b) diag(v) (Q_a ⊗ Q_b)ᵀ`` (Adam in the KL eigenbasis; power −1/2)."""
    return EigenKronecker(state["qa"], state["qb"], state["v"])


# --------------------------------------------------------------------------------- SOAP
def soap_init(
    g0: jax.Array, *, beta: float = 0.95, beta2: float = 0.95, frequency: int = 10
) -> EstimatorState:
    """SOAP's first step: ``L, R`` from ``G0`` (EMA from zero), bases by ``eigh``, ``v = 0``."""
    g0 = jnp.asarray(g0)
    left = (1 - beta) * batch_left(g0)
    right = (1 - beta) * batch_right(g0)
    arrays = {
        "left": left,
        "right": right,
        "qa": _eigh_desc(left),
        "qb": _eigh_desc(right),
        "v": jnp.zeros(g0.shape[-2:], g0.dtype),
        "step": jnp.asarray(0, jnp.int32),
    }
    hp = _hp(beta=float(beta), beta2=float(beta2), frequency=int(frequency))
    return EstimatorState("soap", arrays, hp)


def _sorted_refresh(s, q, v, axis):
    """SOAP's QR refresh: sort by ``diag(QᵀSQ)`` descending, permute ``v``, power step + QR."""
    est = jnp.sum(q * (s @ q), axis=0)
    idx = jnp.argsort(-est)
    q = q[:, idx]
    v = jnp.take(v, idx, axis=axis)
    return qr_refresh_step(s, q)[0], v


@jax.jit
def soap_update(state: EstimatorState, g: jax.Array) -> EstimatorState:
    """One SOAP step: Adam moment in the current basis, then ``L, R`` EMA, refresh every T."""
    hp = state.hp
    b, b2, freq = hp["beta"], hp["beta2"], hp["frequency"]
    qa, qb = state["qa"], state["qb"]
    v = b2 * state["v"] + (1 - b2) * batch_square(qa.T @ g @ qb)
    left = b * state["left"] + (1 - b) * batch_left(g)
    right = b * state["right"] + (1 - b) * batch_right(g)
    step = state["step"] + 1
    if freq > 0:

        def refresh():
            qa2, v2 = _sorted_refresh(left, qa, v, 0)
            qb2, v3 = _sorted_refresh(right, qb, v2, 1)
            return qa2, qb2, v3

        qa, qb, v = lax.cond(step % freq == 0, refresh, lambda: (qa, qb, v))
    return state.replace(left=left, right=right, qa=qa, qb=qb, v=v, step=step)


def soap_preconditioner(state: EstimatorState) -> EigenKronecker:
    """``(Q_a ⊗ Q_b) diag(v̂) (Q_a ⊗ Q_b)ᵀ`` with bias-corrected ``v̂ = v/(1−β₂^t)``."""
    t = state["step"]
    corr = jnp.where(t > 0, 1.0 - state.hp["beta2"] ** t, 1.0)
    return EigenKronecker(state["qa"], state["qb"], state["v"] / corr)
