"""The method registry and the two drivers every method runs under.

A method is written once, as a ``Rule``: ``init(shape, dtype) -> leaf state`` and
``step(leaf, gb, count, param, per_example) -> (direction, leaf state)`` on a batch ``gb``
``(N, *modes)`` of gradients. Two drivers run the same rule:

* ``transformation(rule)``: an optax ``GradientTransformation`` over a parameter tree
  (optax's ``scale_by_*`` style; the state is ``KronState``; each gradient is a batch of one);
* ``precond_lab.online``: an online estimator fed mini-batch means or per-example batches
  (the state is ``OnlineState``, the same leaf state with its step counter).

A ``MethodSpec`` names the rule, its state, the ``approximation(leaf) -> Structure`` that
reads the ``Σ`` the state stands for, the power the optimiser applies, its optimiser and
its NumPy transcription; ``METHODS`` holds them, and ``tests/spine`` fails when a piece is
missing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..structures import Structure
from ._ops import map_leaves, resolve_dtype, work_shape

__all__ = [
    "METHODS",
    "KronState",
    "MethodSpec",
    "OnlineState",
    "Rule",
    "approximation_of",
    "conform",
    "register",
    "transformation",
    "two_mode_aliases",
]


class Rule(NamedTuple):
    """One method's update, built from its hyper-parameters.

    Attributes:
        init: ``init(shape, dtype) -> leaf`` for a working shape.
        step: ``step(leaf, gb, count, param, per_example) -> (direction, leaf)``; ``gb`` is
            ``(N, *shape)``, ``count`` the number of earlier calls, ``param`` the parameter
            in the working shape (or None), ``per_example`` whether ``gb`` holds per-example
            gradients (root-free methods then drop the batch-size factor).
        tensor_mode: how a leaf's shape becomes the working shape (``work_shape``).
        state_dtype: the state's dtype (None: the parameter's).
        needs_params: ``step`` reads ``param`` (weight decay inside the method).
    """

    init: Callable[[tuple[int, ...], Any], Any]
    step: Callable[..., tuple[jax.Array, Any]]
    tensor_mode: str = "modewise"
    state_dtype: Any = None
    needs_params: bool = False


_ALIASES = {
    "left": ("factors", 0),
    "right": ("factors", 1),
    "left_basis": ("bases", 0),
    "right_basis": ("bases", 1),
    "left_values": ("values", 0),
    "right_values": ("values", 1),
    "c": ("ks", 0),
    "k": ("ks", 1),
    "momentum_c": ("ms", 0),
    "momentum_k": ("ms", 1),
}


def two_mode_aliases(*leaf_types: type) -> None:
    """Give leaf state types read-only two-mode names (``left = factors[0]``, ``c = ks[0]``…)
    for the fields they have."""
    for cls in leaf_types:
        for alias, (field, i) in _ALIASES.items():
            if field in cls._fields:
                doc = f"``{field}[{i}]`` (two-mode name)"
                setattr(cls, alias, property(lambda s, f=field, i=i: getattr(s, f)[i], doc=doc))


class KronState(NamedTuple):
    """State of a method's transformation: the step counter and one state per leaf.

    Attributes:
        count: calls so far (0 before the first).
        leaves: per-leaf states (a pytree with the params' structure).
    """

    count: jax.Array
    leaves: Any


class OnlineState(NamedTuple):
    """State of an online estimator: the step counter and the method's leaf state.

    Attribute access falls through to the leaf state, so ``state.left_basis`` reads the
    leaf's ``bases[0]`` (see the leaf types' two-mode aliases).

    Attributes:
        count: updates applied (``init`` applies the first).
        leaf: the method's leaf state (the same type its optimiser keeps per parameter).
    """

    count: jax.Array
    leaf: Any

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.leaf, name)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method: its one rule and everything that reads or tests it.

    Attributes:
        name: registry key (also the online estimator's name).
        label: display name.
        rule: ``rule(**hyper_parameters) -> Rule``, the one implementation.
        leaf_type: the per-leaf state type the rule keeps.
        approximation: ``approximation(leaf) -> Structure | None``: the ``Σ`` the state
            stands for (not its inverse); None for leaves it does not treat as matrices.
        power: the optimiser applies ``Σ̂^{-power}`` (½ root, 1 root-free).
        optimizer: the factory's name in ``precond_lab.optim.OPTIMIZERS``.
        reference: the NumPy transcription's name in ``tests/optim/_reference.py``.
        source: the reference code and paper it follows.
        needs_batch_size: the hyper-parameters include a required ``batch_size``.
        internal_damping: the approximation already holds the damping.
        fixed: hyper-parameters the optimiser fixes for this method (e.g. ``q``).
    """

    name: str
    label: str
    rule: Callable[..., Rule]
    leaf_type: type
    approximation: Callable[[Any], Structure | None]
    power: float
    optimizer: str
    reference: str
    source: str
    needs_batch_size: bool = False
    internal_damping: bool = False
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def build(self, **hyper_parameters: Any) -> Rule:
        """The rule at these hyper-parameters (``fixed`` unless given)."""
        return self.rule(**{**self.fixed, **hyper_parameters})


#: name → MethodSpec, in registration order.
METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method to ``METHODS``.

    Raises:
        ValueError: the name is taken, or the leaf type already has another reader.
    """
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    for other in METHODS.values():
        if other.leaf_type is spec.leaf_type and other.approximation is not spec.approximation:
            raise ValueError(
                f"{spec.name!r} keeps {spec.leaf_type.__name__} as {other.name!r} does but "
                "reads it differently: one leaf type, one approximation"
            )
    METHODS[spec.name] = spec
    return spec


def approximation_of(leaf: Any) -> Structure | None:
    """The ``Σ`` a registered leaf state stands for (its method's ``approximation``).

    Raises:
        TypeError: not a registered method's leaf state.
    """
    for spec in METHODS.values():
        if type(leaf) is spec.leaf_type:
            return spec.approximation(leaf)
    raise TypeError(f"{type(leaf).__name__} is not the leaf state of a registered method")


# --------------------------------------------------------------------- the optax driver
def conform(leaves: Any, init: Callable[[Any], Any], updates: Any) -> Any:
    """The per-leaf states ``leaves`` in the structure ``init(updates).leaves`` would have.

    Containers that rebuild an optimiser state as nested mappings (Flax NNX's ``Optimizer``
    turns the per-leaf ``NamedTuple``s and tuples into ``State``s, keys sorted) keep the
    arrays but not the node types; the leaf states' fields are declared in alphabetical
    order, so the arrays come back in the same order and are re-assembled here.

    Raises:
        ValueError: the state does not fit the gradient tree (another optimiser's state,
            or one initialised for other parameters); the message names the first leaf.
    """
    template = jax.eval_shape(init, updates).leaves
    if jax.tree.structure(leaves) != jax.tree.structure(template):
        arrays = jax.tree.leaves(leaves)
        if len(arrays) != len(jax.tree.leaves(template)):
            raise ValueError(
                f"optimiser state has {len(arrays)} arrays, this optimiser expects "
                f"{len(jax.tree.leaves(template))} for these gradients: was the state "
                "initialised by the same optimiser for these params? Call tx.init(params)."
            )
        leaves = jax.tree.structure(template).unflatten(arrays)
    got = jax.tree_util.tree_flatten_with_path(leaves)[0]
    want = jax.tree.leaves(template)
    for (path, a), b in zip(got, want, strict=True):
        if jnp.shape(a) != b.shape:
            raise ValueError(
                f"gradient leaf {jax.tree_util.keystr(path)} has a state of shape "
                f"{jnp.shape(a)} where this gradient needs {b.shape}: the state was "
                "initialised for other parameters; call tx.init(params) for these"
            )
    return leaves


def transformation(rule: Rule) -> optax.GradientTransformation:
    """The optax transformation that runs ``rule`` on every leaf (state ``KronState``).

    Each gradient is the rule's batch of one; ``count`` is shared by the leaves. The
    parameters are needed when the rule reads them (``needs_params``).
    """

    def init(params):
        def leaf(p):
            if jnp.size(p) == 0 and rule.tensor_mode != "leaf":
                raise ValueError(
                    f"a parameter of shape {jnp.shape(p)} has no entries: label it "
                    "'fallback' (the default labels do) or drop it from the tree"
                )
            return rule.init(
                work_shape(jnp.shape(p), rule.tensor_mode), resolve_dtype(rule.state_dtype, p)
            )

        return KronState(jnp.zeros([], jnp.int32), jax.tree.map(leaf, params))

    def update(updates, state, params=None):
        if not isinstance(state, KronState):
            raise TypeError(
                f"expected the KronState this transformation's init returns, got "
                f"{type(state).__name__}"
            )
        leaves = conform(state.leaves, init, updates)
        if rule.needs_params and params is None:
            raise ValueError("this optimiser reads the params: call update(g, state, params)")

        def one(u, leaf, p):
            shape, dt = leaf.mu.shape, leaf.mu.dtype
            gb = u.reshape((1, *shape)).astype(dt)
            par = None if p is None else p.reshape(shape).astype(dt)
            d, new = rule.step(leaf, gb, state.count, par, False)
            return d.reshape(u.shape).astype(u.dtype), new

        if rule.needs_params:
            new_u, new_leaves = map_leaves(one, updates, leaves, params)
        else:
            new_u, new_leaves = map_leaves(lambda u, leaf: one(u, leaf, None), updates, leaves)
        return new_u, KronState(optax.safe_increment(state.count), new_leaves)

    return optax.GradientTransformation(init, update)
