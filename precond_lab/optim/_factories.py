"""The papers' optimisers: a method's direction, the step, the fallback, the NaN guard.

Every factory takes its hyper-parameters as explicit keywords (no ``**kwargs``), so it works
under ``optax.inject_hyperparams``; numbers are checked against their valid range when the
state is initialised. Structural arguments (``labels``, ``max_dim``, ``fallback``,
``tensor_mode``, ``state_dtype``) default to None or a string and are not injected; to set
``max_dim`` or ``state_dtype`` under ``inject_hyperparams`` name them in ``static_args``.
"""

from __future__ import annotations

from typing import Any

import optax

from ..methods import (
    hp,
    scale_by_adam,
    scale_by_if_shampoo,
    scale_by_kl_soap,
    scale_by_rf_rmsprop,
    scale_by_shampoo,
    scale_by_soap,
    scale_by_trace_power,
)
from ._common import scale_and_decay, skip_nonfinite, with_fallback

__all__ = [
    "adamw",
    "f_shampoo",
    "if_shampoo",
    "kl_shampoo",
    "kl_soap",
    "rf_rmsprop",
    "sgd",
    "shampoo",
    "soap",
    "sq_shampoo",
    "trace_power_shampoo",
    "vn_shampoo",
]


def _with_adamw(
    direction: optax.GradientTransformation,
    learning_rate: Any,
    *,
    b1: Any,
    b2: Any,
    eps: Any,
    weight_decay: Any,
    labels: Any,
    max_dim: Any,
    fallback: optax.GradientTransformation | None,
    skip_first: bool,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
    """``direction``'s step on the Kronecker leaves, ``fallback`` (default AdamW with the
    same ``b1, b2, eps, weight_decay``) on the others, all behind the NaN guard."""
    kron = optax.chain(
        direction, scale_and_decay(learning_rate, weight_decay, skip_first=skip_first)
    )
    if fallback is None:
        fallback = _adamw(learning_rate, b1, b2, eps, 0.0, weight_decay, state_dtype)
    return skip_nonfinite(with_fallback(kron, fallback, labels=labels, max_dim=max_dim))


def trace_power_shampoo(
    q: float,
    learning_rate: Any = 1e-4,
    *,
    b1: float = 0.9,
    b2: float = 0.98,
    shampoo_beta: float | None = None,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    frequency: int = 10,
    init_factor: float = 0.1,
    damping: float = 0.0,
    clamp: bool = True,
    max_clamp: float = 4000.0,
    eigenvalues: str = "ema",
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
    labels: Any = None,
    max_dim: int | None = None,
    fallback: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """A trace-power Shampoo optimiser (KL-Shampoo's EMA scheme with power ``q``).

    ``W ← W − ηU`` then ``W ← W − η·wd·W`` on Kronecker leaves (the first call only
    initialises); other leaves (see ``default_labels``) get ``fallback`` (default AdamW
    with ``b1``, ``b2``, ``eps``, ``weight_decay``). The direction ``U`` and the other
    arguments are ``precond_lab.methods.trace_power_rule``'s.

    Args:
        q: the power (0 KL, ½ SQ, 1 VN, 2 F).
        learning_rate: ``η`` (a float or an optax schedule).
        b1: momentum.
        b2: the reference code's second beta (the fallback's); ``shampoo_beta`` defaults
            to it.
        shampoo_beta: weight of the old factors (None: ``b2``).
        eps: ``ε``.
        weight_decay: decoupled weight decay (after the step).
        frequency: QR refresh period.
        init_factor: initial eigenvalues.
        damping: ``κ`` on the eigenvalue targets.
        clamp: clamp ``λ^{-1/2}``.
        max_clamp: the clamp's cap.
        eigenvalues: ``"ema"`` (the method) or P1's ablations ``"instant"``, ``"eigh"``.
        tensor_mode: ``"modewise"`` or ``"matrix"`` for order ≥ 3.
        state_dtype: the state's dtype (None: the parameter's).
        labels: per-leaf labels (``"kron"``/``"fallback"``) or a function of the params.
        max_dim: largest mode the default labels precondition (None: 10 000).
        fallback: the transformation for ``"fallback"`` leaves.

    Returns:
        The optimiser (state ``SkipState`` around an ``optax.partition`` state).
    """
    b2 = hp(b2, "b2", low=0.0, high=1.0, high_open=True)  # before shampoo_beta = b2
    direction = scale_by_trace_power(
        q,
        b1=b1,
        shampoo_beta=b2 if shampoo_beta is None else shampoo_beta,
        eps=eps,
        frequency=frequency,
        init_factor=init_factor,
        damping=damping,
        clamp=clamp,
        max_clamp=max_clamp,
        eigenvalues=eigenvalues,
        tensor_mode=tensor_mode,
        state_dtype=state_dtype,
    )
    return _with_adamw(
        direction,
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        labels=labels,
        max_dim=max_dim,
        fallback=fallback,
        skip_first=True,
        state_dtype=state_dtype,
    )


def _trace_power_member(q: float, name: str, doc: str):
    def factory(
        learning_rate: Any = 1e-4,
        *,
        b1: float = 0.9,
        b2: float = 0.98,
        shampoo_beta: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        frequency: int = 10,
        init_factor: float = 0.1,
        damping: float = 0.0,
        clamp: bool = True,
        max_clamp: float = 4000.0,
        eigenvalues: str = "ema",
        tensor_mode: str = "modewise",
        state_dtype: Any = None,
        labels: Any = None,
        max_dim: int | None = None,
        fallback: optax.GradientTransformation | None = None,
    ) -> optax.GradientTransformation:
        return trace_power_shampoo(
            q,
            learning_rate,
            b1=b1,
            b2=b2,
            shampoo_beta=shampoo_beta,
            eps=eps,
            weight_decay=weight_decay,
            frequency=frequency,
            init_factor=init_factor,
            damping=damping,
            clamp=clamp,
            max_clamp=max_clamp,
            eigenvalues=eigenvalues,
            tensor_mode=tensor_mode,
            state_dtype=state_dtype,
            labels=labels,
            max_dim=max_dim,
            fallback=fallback,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"{doc}: ``trace_power_shampoo`` with ``q = {q:g}``, the reference code's defaults "
        "(``lr=1e-4, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.01, frequency=10, "
        "init_factor=0.1, max_clamp=4000``); the arguments are ``trace_power_shampoo``'s."
    )
    return factory


kl_shampoo = _trace_power_member(0.0, "kl_shampoo", "KL-Shampoo")
sq_shampoo = _trace_power_member(0.5, "sq_shampoo", "SQ-Shampoo")
vn_shampoo = _trace_power_member(1.0, "vn_shampoo", "VN-Shampoo")
f_shampoo = _trace_power_member(2.0, "f_shampoo", "F-Shampoo")


def kl_soap(
    learning_rate: Any = 1e-4,
    *,
    b1: float = 0.9,
    b2: float = 0.98,
    shampoo_beta: float | None = None,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    frequency: int = 10,
    init_factor: float = 0.1,
    damping: float = 0.0,
    clamp: bool = True,
    max_clamp: float = 4000.0,
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
    labels: Any = None,
    max_dim: int | None = None,
    fallback: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """KL-SOAP with the reference code's defaults (arguments as ``trace_power_shampoo``;
    ``b2`` is also Adam's second-moment beta in the eigenbasis).

    Returns:
        The optimiser.
    """
    b2 = hp(b2, "b2", low=0.0, high=1.0, high_open=True)  # before shampoo_beta = b2
    direction = scale_by_kl_soap(
        b1=b1,
        b2=b2,
        shampoo_beta=b2 if shampoo_beta is None else shampoo_beta,
        eps=eps,
        frequency=frequency,
        init_factor=init_factor,
        damping=damping,
        clamp=clamp,
        max_clamp=max_clamp,
        tensor_mode=tensor_mode,
        state_dtype=state_dtype,
    )
    return _with_adamw(
        direction,
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        labels=labels,
        max_dim=max_dim,
        fallback=fallback,
        skip_first=True,
        state_dtype=state_dtype,
    )


def shampoo(
    learning_rate: Any = 1e-3,
    *,
    p: float = 0.5,
    b1: float = 0.9,
    b2: float = 0.95,
    graft: bool = True,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    damping: float = 1e-12,
    frequency: int = 10,
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
    labels: Any = None,
    max_dim: int | None = None,
    fallback: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """Shampoo; ``b2`` is the factor EMA's and the grafting Adam's ``β₂``.

    Args:
        learning_rate: ``η`` (float or schedule).
        p: per-factor power (``0.5`` or ``0.25``).
        b1: momentum.
        b2: weight of the old factors and of grafting's second moment.
        graft: Adam grafting.
        eps: Adam's ``ε`` (grafting and fallback).
        weight_decay: decoupled weight decay (after the step).
        damping: ``δ`` in ``(S + δI)^{-p}``.
        frequency: recompute the roots every ``frequency`` steps.
        tensor_mode: ``"modewise"`` or ``"matrix"``.
        state_dtype: the state's dtype.
        labels: leaf partition (see ``with_fallback``).
        max_dim: leaf partition (see ``with_fallback``).
        fallback: transformation for non-matrix leaves (default AdamW).

    Returns:
        The optimiser.
    """
    direction = scale_by_shampoo(
        p=p,
        b1=b1,
        shampoo_beta=b2,
        graft=graft,
        graft_b2=b2,
        eps=eps,
        damping=damping,
        frequency=frequency,
        tensor_mode=tensor_mode,
        state_dtype=state_dtype,
    )
    return _with_adamw(
        direction,
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        labels=labels,
        max_dim=max_dim,
        fallback=fallback,
        skip_first=False,
        state_dtype=state_dtype,
    )


def soap(
    learning_rate: Any = 3e-3,
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float | None = None,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    frequency: int = 10,
    correct_bias: bool = True,
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
    labels: Any = None,
    max_dim: int | None = None,
    fallback: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """SOAP with the SOAP code's defaults (``lr=3e-3, betas=(0.95, 0.95), eps=1e-8,
    weight_decay=0.01, frequency=10``; ``shampoo_beta`` defaults to ``b2``); the other
    arguments as ``kl_soap`` and ``precond_lab.methods.soap_rule``.

    Returns:
        The optimiser.
    """
    b2 = hp(b2, "b2", low=0.0, high=1.0, high_open=True)  # before shampoo_beta = b2
    direction = scale_by_soap(
        b1=b1,
        b2=b2,
        shampoo_beta=b2 if shampoo_beta is None else shampoo_beta,
        eps=eps,
        frequency=frequency,
        correct_bias=correct_bias,
        tensor_mode=tensor_mode,
        state_dtype=state_dtype,
    )
    return _with_adamw(
        direction,
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        labels=labels,
        max_dim=max_dim,
        fallback=fallback,
        skip_first=True,
        state_dtype=state_dtype,
    )


def _rf_rmsprop(learning_rate, **kwargs) -> optax.GradientTransformation:
    return optax.chain(scale_by_rf_rmsprop(**kwargs), scale_and_decay(learning_rate, 0.0))


def rf_rmsprop(
    learning_rate: Any = 1e-3,
    *,
    batch_size: int | None = None,
    beta2: float = 0.01,
    alpha1: float = 0.9,
    damping: float = 1e-4,
    weight_decay: float = 0.0,
    s0: float = 1.0,
    scale_by_batch: bool = True,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
    """RF-RMSProp on every leaf: ``W ← W − β₁μ`` (``precond_lab.methods.rf_rmsprop_rule``).

    Args:
        learning_rate: ``β₁`` (float or schedule).
        batch_size: ``B`` (required: the loss is a mini-batch mean).
        beta2: weight of the new term.
        alpha1: momentum.
        damping: ``λ``.
        weight_decay: ``κ``.
        s0: initial ``s``.
        scale_by_batch: multiply by ``B``.
        state_dtype: the state's dtype.

    Returns:
        The optimiser.
    """
    return skip_nonfinite(
        _rf_rmsprop(
            learning_rate,
            batch_size=batch_size,
            beta2=beta2,
            alpha1=alpha1,
            damping=damping,
            weight_decay=weight_decay,
            s0=s0,
            scale_by_batch=scale_by_batch,
            state_dtype=state_dtype,
        )
    )


def if_shampoo(
    learning_rate: Any = 1e-3,
    *,
    batch_size: int | None = None,
    beta2: float = 0.01,
    alpha1: float = 0.9,
    alpha2: float = 0.5,
    damping: float = 1e-3,
    weight_decay: float = 0.0,
    frequency: int = 1,
    normalize: bool = True,
    init_scale: float = 1.0,
    tensor_mode: str = "modewise",
    state_dtype: Any = None,
    labels: Any = None,
    max_dim: int | None = None,
    fallback: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """IF-Shampoo on Kronecker leaves, RF-RMSProp (the diagonal variant) on the others.

    ``batch_size``, ``beta2``, ``alpha1``, ``damping`` and ``weight_decay`` are shared with
    the RF-RMSProp fallback; the arguments are ``precond_lab.methods.if_shampoo_rule``'s.

    Returns:
        The optimiser.
    """
    common = dict(
        batch_size=batch_size,
        beta2=beta2,
        alpha1=alpha1,
        damping=damping,
        weight_decay=weight_decay,
        state_dtype=state_dtype,
    )
    kron = optax.chain(
        scale_by_if_shampoo(
            alpha2=alpha2,
            frequency=frequency,
            normalize=normalize,
            init_scale=init_scale,
            tensor_mode=tensor_mode,
            **common,
        ),
        scale_and_decay(learning_rate, 0.0),
    )
    if fallback is None:
        fallback = _rf_rmsprop(learning_rate, **common)
    return skip_nonfinite(with_fallback(kron, fallback, labels=labels, max_dim=max_dim))


def _adamw(learning_rate, b1, b2, eps, eps_root, weight_decay, state_dtype=None):
    return optax.chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, state_dtype=state_dtype),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: Any = 1e-3,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 1e-4,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
    """AdamW, the baseline: ``optax.adamw``'s arithmetic and defaults, on the Adam rule
    that ``precond_lab.online.adam`` scores (so its ``v̂`` can be read from the state).

    Returns:
        The optimiser (equal to ``optax.adamw(learning_rate, b1, b2, eps, eps_root,
        weight_decay)`` to round-off; a test holds them together).
    """
    if not callable(learning_rate):
        learning_rate = hp(learning_rate, "learning_rate", low=0.0)
    return skip_nonfinite(_adamw(learning_rate, b1, b2, eps, eps_root, weight_decay, state_dtype))


def sgd(
    learning_rate: Any = 1e-2, *, momentum: float | None = None, nesterov: bool = False
) -> optax.GradientTransformation:
    """optax's SGD (a baseline), behind the same NaN guard as the other optimisers."""
    return skip_nonfinite(optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))
