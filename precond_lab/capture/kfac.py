"""K-FAC factors: which ``Tape`` layer owns a parameter.

For a captured weight ``"<layer>/w"`` (``m × n``) the stored factors are the layer inputs
``a`` (``kfac_activations``: ``(sample, in)`` or ``(sample, position, in)``) and the
output-side backprops ``δ = ∂ℓ_i/∂s`` (``kfac_backprops*``: ``(sample, [class|mc,]
[position,] out)``), so that the per-example gradient is exactly ``G = Σ_r δ_r a_rᵀ``
(``G = δ aᵀ`` without positions). A bias ``"<layer>/b"`` is its own layer with
activations equal to one (``in = 1``), so ``G_b = Σ_r δ_r`` (matricized ``m × 1``); the
bias is not folded into the weight. ``kfac_backprops`` uses the real labels (empirical),
``kfac_backprops_ggn`` the ``C`` columns of ``Λ^{1/2}`` (exact GGN) and
``kfac_backprops_mc`` the sampled labels, pre-divided by ``√k``.

With weight sharing (``position`` axis, ``R`` positions), Eschenhagen et al.'s variants
are ``expand``: ``[Σ_n w_n (1/R) Σ_r a aᵀ] ⊗ [Σ_n w_n Σ_{c,r} δ δᵀ]`` and ``reduce``:
``[Σ_n w_n â â ᵀ] ⊗ [Σ_n w_n Σ_c δ̂ δ̂ᵀ]`` with ``â = (1/R) Σ_r a_r``, ``δ̂ = Σ_r δ_r``
(computed by ``precond_lab.estimators.kfac``, not here).

Models from ``kfac_model`` (any JAX apply function, Flax,
Equinox) name their layers by the weight's path and map each weight and bias to its layer
(``kfac_owners``); the factors follow the same conventions.
"""

from __future__ import annotations

from .models import Model

__all__ = ["KFAC_TARGETS", "KFAC_DENSE_TWIN", "KFACSkippedWarning", "kfac_layer"]

KFAC_TARGETS = ("kfac", "kfac-ggn", "kfac-mc")

#: The per-example target a K-FAC target's factors stand for (captured instead for a
#: weight without K-FAC factors, e.g. one used twice).
KFAC_DENSE_TWIN = {"kfac": "gradients", "kfac-ggn": "ggn", "kfac-mc": "ggn-mc"}


class KFACSkippedWarning(UserWarning):
    """A layer gets no K-FAC targets (a weight used more than once): its per-example
    gradients / GGN are captured instead, and the store records it (``kfac_skipped``)."""


def kfac_layer(model: Model, path: str) -> tuple[str, bool]:
    """``(tape layer name, is_bias)`` for parameter ``path``.

    Raises:
        ValueError: when ``path`` is not the ``w`` or ``b`` of a tape layer of ``model``.
    """
    owners = getattr(model, "kfac_owners", None)  # a discovered model (see .discover)
    if owners is not None:
        if path in owners:
            return owners[path]
        valid = ", ".join(owners)
        raise ValueError(
            f"layer {path!r} has no K-FAC factors in model {model.name!r} (not the weight or "
            f"bias of a dense/conv layer found in its jaxpr); K-FAC layers: {valid}"
        )
    prefix, _, leaf = path.rpartition("/")
    if leaf in ("w", "b") and prefix in model.tape_layers:
        return prefix, leaf == "b"
    if not model.tape_layers:
        raise ValueError(
            f"K-FAC targets need a model whose layers are known: a built-in model, "
            f"capture_from_fn(apply_fn=...) or capture_model(...) (layers found in the "
            f"jaxpr); model {model.name!r} has none (a loss_fn-only model supports "
            f"gradients, batch and trajectory only)"
        )
    valid = ", ".join(f"{n}/w, {n}/b" for n in model.tape_layers)
    raise ValueError(
        f"layer {path!r} has no K-FAC factors in model {model.name!r}; K-FAC layers: {valid}"
    )
