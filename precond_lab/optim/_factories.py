"""The papers' optimisers, generated from their methods' rules.

Each factory's signature is its rule's (``precond_lab.methods``) plus the optimiser-level
arguments (``learning_rate``, ``weight_decay``, the partition's ``labels``, ``max_dim``,
``fallback``), so the optimiser's defaults *are* the rule's and the online estimator's:
they cannot drift. Every argument is an explicit keyword (no ``**kwargs``), so the
factories work under ``optax.inject_hyperparams``; numbers are range-checked when the
factory is called. Structural arguments (``labels``, ``max_dim``, ``fallback``,
``tensor_mode``, ``state_dtype``) default to None or a string and are not injected; to
set ``max_dim`` or ``state_dtype`` under ``inject_hyperparams``, name them in
``static_args``.

A Kronecker optimiser steps ``W ← W − ηU`` then ``W ← W − η·wd·W`` on its matrix leaves
(``scale_and_decay``) and gives the others a fallback (AdamW with the same ``b1, b2, eps,
weight_decay``; RF-RMSProp for IF-Shampoo), all behind ``skip_nonfinite``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import optax

from ..methods import (
    Rule,
    adam_rule,
    dykaf_rule,
    hp,
    if_shampoo_rule,
    kl_soap_rule,
    muon_rule,
    psgd_kron_rule,
    purifying_shampoo_rule,
    rf_rmsprop_rule,
    shampoo_rule,
    soap_rule,
    splus_rule,
    trace_power_rule,
    transformation,
)
from ._common import scale_and_decay, skip_nonfinite, with_fallback

__all__ = [
    "adamw",
    "dykaf",
    "f_shampoo",
    "if_shampoo",
    "kl_shampoo",
    "kl_soap",
    "muon",
    "psgd_kron",
    "purifying_shampoo",
    "rf_rmsprop",
    "sgd",
    "shampoo",
    "soap",
    "splus",
    "sq_shampoo",
    "trace_power_shampoo",
    "vn_shampoo",
]

_KW = inspect.Parameter.KEYWORD_ONLY
_PARTITION = ("labels", "max_dim", "fallback")
_OPTIMISER_DOCS = {
    "learning_rate": "``η`` (a float ≥ 0 or an optax schedule); ``β₁`` of the root-free papers",
    "weight_decay": "decoupled weight decay (after the step) ``≥ 0``",
    "b2": "the fallback AdamW's ``β₂``; ``shampoo_beta`` defaults to it",
    "labels": "per-leaf labels (``'kron'``/``'fallback'``) or a function of the params",
    "max_dim": "largest mode the default labels precondition (None: 10 000)",
    "fallback": "the transformation of ``'fallback'`` leaves (None: the default)",
    "adam_b1": "the fallback AdamW's ``β₁``",
    "adam_b2": "the fallback AdamW's ``β₂``",
    "adam_eps_root": "the fallback AdamW's ``ε_root ≥ 0`` (its ``ε`` is ``eps``)",
    "adam_weight_decay": "the fallback AdamW's weight decay ``≥ 0`` (optax's, before the step)",
    "adam_eps": "the fallback AdamW's ``ε ≥ 0``",
    "nonfinite": "``'skip'`` a step whose gradient, update or state is not finite (counted "
    "in ``SkipState.skipped``) or ``'propagate'`` it (see ``skip_nonfinite``)",
}


def _adamw(learning_rate, b1, b2, eps, eps_root, weight_decay, state_dtype=None):
    return optax.chain(
        transformation(
            adam_rule(b1=b1, b2=b2, eps=eps, eps_root=eps_root, state_dtype=state_dtype)
        ),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def _rf(learning_rate, **rule_kwargs) -> optax.GradientTransformation:
    return optax.chain(
        transformation(rf_rmsprop_rule(**rule_kwargs)), scale_and_decay(learning_rate, 0.0)
    )


def _rule_args(rule: Callable[..., Rule]) -> dict[str, str]:
    """The ``Args:`` section of a rule's docstring, name → text."""
    doc = inspect.getdoc(rule) or ""
    section = doc.split("Args:", 1)[-1].split("Returns:", 1)[0]
    out: dict[str, str] = {}
    for line in section.splitlines():
        if line.startswith("    ") and not line.startswith("     ") and ":" in line:
            key, text = line.strip().split(":", 1)
            out[key] = text.strip()
        elif out and line.strip():
            last = next(reversed(out))
            out[last] += " " + line.strip()
    return out


def _optimiser(
    rule: Callable[..., Rule],
    name: str,
    summary: str,
    *,
    learning_rate: float,
    defaults: Mapping[str, Any] = {},
    extra: Mapping[str, Any] = {},
    fixed: Mapping[str, Any] = {},
    tied: Mapping[str, str] = {},
    fallback: str | Callable[..., optax.GradientTransformation] | None = "adamw",
    weight_decay: float | None = 0.01,
    skip_first: bool = False,
    leading: str | None = None,
    nonfinite: str = "skip",
) -> Callable[..., optax.GradientTransformation]:
    """Build ``po.<name>`` from ``rule``.

    Args:
        rule: the method's rule factory.
        name: the factory's name.
        summary: its first docstring line.
        learning_rate: the default ``η``.
        defaults: rule arguments whose optimiser default differs (None: tied, below).
        extra: optimiser-level arguments (name → default) that are not the rule's.
        fixed: rule arguments the optimiser fixes (e.g. ``q``).
        tied: rule argument → the argument it takes its value from when hidden or None.
        fallback: ``"adamw"``, ``"rf_rmsprop"``, a function ``(arguments, learning_rate)
            -> GradientTransformation`` of the bound arguments, or None (the rule runs on
            every leaf).
        weight_decay: the default of ``scale_and_decay``'s decay (None: the rule decays).
        skip_first: the first call only initialises (no decay either).
        leading: a rule argument that comes first, positional and required (``q``).
        nonfinite: the default of ``skip_nonfinite``'s mode.
    """
    rule_params = [p for p in inspect.signature(rule).parameters.values() if p.name not in fixed]
    hidden = {k for k, v in tied.items() if k not in defaults}
    lead = (
        []
        if leading is None
        else [inspect.Parameter(leading, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=float)]
    )
    params = lead + [
        inspect.Parameter(
            "learning_rate",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=learning_rate,
            annotation=Any,
        )
    ]
    for p in rule_params:
        if p.name in hidden or p.name == leading:
            continue
        params.append(p.replace(kind=_KW, default=defaults.get(p.name, p.default)))
    for key, default in extra.items():
        params.append(inspect.Parameter(key, _KW, default=default, annotation=Any))
    if weight_decay is not None:
        params.append(
            inspect.Parameter("weight_decay", _KW, default=weight_decay, annotation=float)
        )
    if fallback is not None:
        params += [inspect.Parameter(k, _KW, default=None, annotation=Any) for k in _PARTITION]
    params.append(inspect.Parameter("nonfinite", _KW, default=nonfinite, annotation=str))
    signature = inspect.Signature(params, return_annotation=optax.GradientTransformation)
    names = {p.name for p in rule_params}

    def factory(*args: Any, **kwargs: Any) -> optax.GradientTransformation:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = dict(bound.arguments)
        if "b2" in extra:
            a["b2"] = hp(a["b2"], "b2", low=0.0, high=1.0, high_open=True)
        lr = a["learning_rate"]
        if not callable(lr):
            lr = hp(lr, "learning_rate", low=0.0)
        rule_kwargs = {k: a[k] for k in names if k in a}
        for k, src in tied.items():
            if rule_kwargs.get(k) is None:
                rule_kwargs[k] = a[src]
        direction = transformation(rule(**fixed, **rule_kwargs))
        if fallback is None:
            return skip_nonfinite(optax.chain(direction, scale_and_decay(lr, 0.0)), a["nonfinite"])
        wd = 0.0 if weight_decay is None else a["weight_decay"]
        kron = optax.chain(direction, scale_and_decay(lr, wd, skip_first=skip_first))
        other = a["fallback"]
        if other is None and callable(fallback):
            other = fallback(a, lr)
        elif other is None and fallback == "adamw":
            other = _adamw(lr, a["b1"], a["b2"], a["eps"], 0.0, wd, a.get("state_dtype"))
        elif other is None:
            shared = ("batch_size", "beta2", "alpha1", "damping", "weight_decay", "state_dtype")
            other = _rf(lr, **{k: rule_kwargs[k] for k in shared})
        partitioned = with_fallback(kron, other, labels=a["labels"], max_dim=a["max_dim"])
        return skip_nonfinite(partitioned, a["nonfinite"])

    docs = {**_rule_args(rule), **_OPTIMISER_DOCS}
    for k, src in tied.items():
        if k not in hidden:
            docs[k] = f"as the rule's (None: ``{src}``)"
        else:
            summary += f" ``{k}`` is ``{src}``."
    args = "\n".join(f"    {p.name}: {docs[p.name].rstrip('.')}." for p in params)
    fixed_txt = f" with {', '.join(f'``{k} = {v}``' for k, v in fixed.items())}" if fixed else ""
    factory.__doc__ = (
        f"{summary}\n\nThe direction is ``precond_lab.methods.{rule.__name__}``{fixed_txt}; "
        f"its defaults are the rule's.\n\nArgs:\n{args}\n\nReturns:\n"
        "    The optimiser (state ``SkipState``).\n"
    )
    factory.__signature__ = signature
    factory.__name__ = factory.__qualname__ = name
    return factory


_KL = dict(
    learning_rate=1e-4,
    defaults={"shampoo_beta": None},
    extra={"b2": 0.98},
    tied={"shampoo_beta": "b2"},
    skip_first=True,
)
trace_power_shampoo = _optimiser(
    trace_power_rule,
    "trace_power_shampoo",
    "A trace-power Shampoo optimiser (KL-Shampoo's EMA scheme with power ``q``).",
    leading="q",
    **_KL,
)
kl_shampoo = _optimiser(
    trace_power_rule,
    "kl_shampoo",
    "KL-Shampoo with the reference code's defaults.",
    fixed={"q": 0.0},
    **_KL,
)
sq_shampoo = _optimiser(trace_power_rule, "sq_shampoo", "SQ-Shampoo.", fixed={"q": 0.5}, **_KL)
vn_shampoo = _optimiser(trace_power_rule, "vn_shampoo", "VN-Shampoo.", fixed={"q": 1.0}, **_KL)
f_shampoo = _optimiser(trace_power_rule, "f_shampoo", "F-Shampoo.", fixed={"q": 2.0}, **_KL)
kl_soap = _optimiser(
    kl_soap_rule,
    "kl_soap",
    "KL-SOAP (Adam in the KL eigenbasis) with the reference code's defaults.",
    learning_rate=1e-4,
    defaults={"shampoo_beta": None},
    tied={"shampoo_beta": "b2"},
    skip_first=True,
)
soap = _optimiser(
    soap_rule,
    "soap",
    "SOAP with the SOAP code's defaults (``lr=3e-3, betas=(0.95, 0.95)``).",
    learning_rate=3e-3,
    defaults={"shampoo_beta": None},
    tied={"shampoo_beta": "b2"},
    skip_first=True,
)
shampoo = _optimiser(
    shampoo_rule,
    "shampoo",
    "Shampoo (``p`` = ½ or ¼, Adam grafting or not); ``b2`` is the factor EMA's, the "
    "grafting Adam's and the fallback's ``β₂``.",
    learning_rate=1e-3,
    extra={"b2": 0.95},
    tied={"shampoo_beta": "b2", "graft_b2": "b2"},
    weight_decay=0.0,
)
if_shampoo = _optimiser(
    if_shampoo_rule,
    "if_shampoo",
    "IF-Shampoo on Kronecker leaves, RF-RMSProp (sharing ``batch_size, beta2, alpha1, "
    "damping, weight_decay``) on the others: ``W ← W − β₁μ``.",
    learning_rate=1e-3,
    fallback="rf_rmsprop",
    weight_decay=None,
)
rf_rmsprop = _optimiser(
    rf_rmsprop_rule,
    "rf_rmsprop",
    "RF-RMSProp on every leaf: ``W ← W − β₁μ``.",
    learning_rate=1e-3,
    fallback=None,
    weight_decay=None,
    nonfinite="propagate",
)


def _muon_fallback(a: Mapping[str, Any], lr: Any) -> optax.GradientTransformation:
    """``optax.contrib.muon``'s AdamW for the leaves Muon does not take (Nesterov with
    Muon's ``nesterov``, Muon's ``eps``)."""
    return optax.adamw(
        lr,
        b1=hp(a["adam_b1"], "adam_b1", low=0.0, high=1.0, high_open=True),
        b2=hp(a["adam_b2"], "adam_b2", low=0.0, high=1.0, high_open=True),
        eps=a["eps"],
        eps_root=hp(a["adam_eps_root"], "adam_eps_root", low=0.0),
        weight_decay=hp(a["adam_weight_decay"], "adam_weight_decay", low=0.0),
        nesterov=bool(a["nesterov"]),
    )


muon = _optimiser(
    muon_rule,
    "muon",
    "Muon on matrix leaves (``optax.contrib.muon``'s arithmetic; Keller Jordan's "
    "``lr = 0.02``), ``optax.adamw`` as ``optax.contrib.muon`` builds it on the others. "
    "Weight decay is this package's, after the step (``W ← (W − ηD)(1 − η·wd)``; "
    "optax's is ``W ← W − η(D + wd·W)``, a difference of ``η²·wd·D``). The default "
    "labels give Muon the leaves with two or more modes of size > 1 (order ≥ 3 reshaped to "
    "``(prod(shape[:-1]), shape[-1])``), optax every 2-D leaf: ``labels`` can give the "
    "partition of optax, equal but for an ``n×1`` leaf, scaled here by ``√n`` "
    "(a size-1 axis is dropped, the leaf taken as a ``1×n`` row).",
    learning_rate=0.02,
    extra={"adam_b1": 0.9, "adam_b2": 0.999, "adam_eps_root": 0.0, "adam_weight_decay": 0.0},
    fallback=_muon_fallback,
    weight_decay=0.0,
)


def _psgd_fallback(a: Mapping[str, Any], lr: Any) -> optax.GradientTransformation:
    """``optax.adamw`` for the leaves PSGD-Kron does not take (the official code gives them
    a diagonal PSGD preconditioner; not implemented here)."""
    return optax.adamw(
        lr,
        b1=hp(a["adam_b1"], "adam_b1", low=0.0, high=1.0, high_open=True),
        b2=hp(a["adam_b2"], "adam_b2", low=0.0, high=1.0, high_open=True),
        eps=hp(a["adam_eps"], "adam_eps", low=0.0),
        weight_decay=hp(a["adam_weight_decay"], "adam_weight_decay", low=0.0),
    )


psgd_kron = _optimiser(
    psgd_kron_rule,
    "psgd_kron",
    "PSGD-Kron on leaves with two or more modes (``psgd_torch``'s ``KronWhiten`` with dense "
    "factors on every mode, its defaults ``lr_params = 1e-3``, no weight decay), "
    "``optax.adamw`` on the others.",
    learning_rate=1e-3,
    extra={"adam_b1": 0.9, "adam_b2": 0.999, "adam_eps": 1e-8, "adam_weight_decay": 0.0},
    fallback=_psgd_fallback,
    weight_decay=0.0,
)


def _splus_fallback(a: Mapping[str, Any], lr: Any) -> optax.GradientTransformation:
    """SPlus itself, scaled by ``nonstandard_constant`` (the official code's treatment of
    vectors, scalars and named embedding/layer-norm leaves)."""
    keys = ("b1", "b2", "eps", "inverse_every", "nonstandard_constant", "weight_decay")
    rule = splus_rule(**{k: a[k] for k in keys}, nonstandard=True, state_dtype=a["state_dtype"])
    return optax.chain(transformation(rule), scale_and_decay(lr, 0.0))


splus = _optimiser(
    splus_rule,
    "splus",
    "SPlus with the official code's defaults (``kvfrans/splus``; ``lr = 0.2``, its README's "
    "suggestion): the matrix leaves scaled by ``2/(m + n)``, the ``'fallback'`` leaves (vectors, "
    "scalars; label embeddings or layer norms ``'fallback'`` as the official code does by "
    "name) by ``nonstandard_constant``; weight decay inside the scale, as the official chain.",
    learning_rate=0.2,
    fallback=_splus_fallback,
    weight_decay=None,
)


purifying_shampoo = _optimiser(
    purifying_shampoo_rule,
    "purifying_shampoo",
    "Purifying Shampoo: eigenvalue-corrected Shampoo with the warm-started, criterion-gated "
    "eigenbasis refresh (Distributed Shampoo's arithmetic, ``lr = 1e-3``), no grafting; "
    "AdamW with the same ``b1, b2, eps`` on the other leaves.",
    learning_rate=1e-3,
    weight_decay=0.0,
)
dykaf = _optimiser(
    dykaf_rule,
    "dykaf",
    "DyKAF: SOAP (``lr = 3e-3, betas = (0.95, 0.95)``) in the eigenbasis of Kronecker "
    "factors tracked by a projector-splitting step; AdamW on the other leaves.",
    learning_rate=3e-3,
    defaults={"shampoo_beta": None},
    tied={"shampoo_beta": "b2"},
    skip_first=True,
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
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    """AdamW, the baseline: ``optax.adamw``'s arithmetic and defaults, on the Adam rule
    that ``precond_lab.online.adam`` scores (so its ``v̂`` can be read from the state).

    ``nonfinite`` defaults to ``"propagate"`` (optax's behaviour; see ``skip_nonfinite``).

    Returns:
        The optimiser (equal to ``optax.adamw(learning_rate, b1, b2, eps, eps_root,
        weight_decay)`` to round-off; a test holds them together).
    """
    if not callable(learning_rate):
        learning_rate = hp(learning_rate, "learning_rate", low=0.0)
    return skip_nonfinite(
        _adamw(learning_rate, b1, b2, eps, eps_root, weight_decay, state_dtype), nonfinite
    )


def sgd(
    learning_rate: Any = 1e-2,
    *,
    momentum: float | None = None,
    nesterov: bool = False,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    """optax's SGD (a baseline) in the same ``SkipState`` (``nonfinite`` as ``adamw``)."""
    return skip_nonfinite(optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov), nonfinite)
