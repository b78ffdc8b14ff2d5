"""Per-example losses, their logit gradients and Hessian square roots, and sampled labels.

Loss normalisation: the per-example loss ``ℓ_i`` is *not* divided by the batch size; a
batch loss is the mean ``(1/N) Σ_i ℓ_i``.

* ``cross_entropy``: ``ℓ(f, y) = logsumexp(f) − f_y`` for logits ``f`` (C,) and an
  integer label. Hessian w.r.t. ``f``: ``Λ = diag(p) − p pᵀ`` with ``p = softmax(f)``;
  square root ``S = diag(√p) − p √pᵀ`` (``S Sᵀ = diag(p) − 2ppᵀ + p (Σ_c p_c) pᵀ = Λ``).
* ``mse``: ``ℓ(f, y) = ½ ‖f − y‖²`` (summed over outputs), so ``Λ = I = S``.

Gauss–Newton pseudo-gradients ``b_c = Jᵀ S e_c`` give ``Σ_c b_c b_cᵀ = Jᵀ Λ J``, the
example's GGN. Sampled labels (MC Fisher) draw ``y ~ p_θ(y|x)`` (categorical ``p`` for
cross-entropy, ``N(f, I)`` for squared error) and use ``∂ℓ(f, y)/∂f``, whose second
moment is ``Λ``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["LOSSES", "per_example_loss", "loss_grad", "hessian_sqrt", "sampled_grads"]

LOSSES = ("cross_entropy", "mse")


def _check(kind: str) -> None:
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; valid losses: {', '.join(LOSSES)}")


def per_example_loss(kind: str, f: jax.Array, y: jax.Array) -> jax.Array:
    """``ℓ(f, y)`` for one example (see the module docstring)."""
    _check(kind)
    if kind == "cross_entropy":
        return jax.nn.logsumexp(f) - f[y]
    return 0.5 * jnp.sum((f - y) ** 2)


def loss_grad(kind: str, f: jax.Array, y: jax.Array) -> jax.Array:
    """``∂ℓ(f, y)/∂f``, shape ``(C,)``."""
    return jax.grad(lambda f_: per_example_loss(kind, f_, y))(f)


def hessian_sqrt(kind: str, f: jax.Array) -> jax.Array:
    """A ``(C, C)`` matrix ``S`` with ``S Sᵀ = ∇²_f ℓ`` (independent of the label)."""
    _check(kind)
    if kind == "mse":
        return jnp.eye(f.shape[-1], dtype=f.dtype)
    p = jax.nn.softmax(f)
    s = jnp.sqrt(p)
    return jnp.diag(s) - jnp.outer(p, s)


def sampled_grads(kind: str, f: jax.Array, key: jax.Array, k: int) -> jax.Array:
    """``(k, C)`` gradients ``∂ℓ(f, y_j)/∂f`` at labels ``y_j ~ p_θ(y|x)``."""
    _check(kind)
    f = jax.lax.stop_gradient(f)
    if kind == "cross_entropy":
        ys = jax.random.categorical(key, f, shape=(k,))
    else:
        ys = f + jax.random.normal(key, (k, f.shape[-1]), f.dtype)
    return jax.vmap(lambda y: loss_grad(kind, f, y))(ys)
