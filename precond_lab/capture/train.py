"""Training with optax: the mini-batch schedule, the jitted step and evaluation.

Step ``s`` trains on the mini-batch ``batch_indices(seed, s, ...)`` (drawn without
replacement within the batch from a generator seeded by ``(seed, s)``), so the schedule
depends only on the step: a resumed run sees exactly the batches of an uninterrupted one.
Parameters captured "at step ``s``" are those after ``s`` updates (step 0 = the
initialisation); the mini-batch gradient of step ``s`` is taken at those parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import ggn
from .layout import flat_params, row_axes_for, to_matrix
from .models import Model

__all__ = ["OPTIMIZERS", "make_optimizer", "batch_indices", "make_train_step", "make_eval"]

OPTIMIZERS = ("sgd", "momentum", "adam")


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """``sgd`` (plain), ``momentum`` (heavy ball 0.9) or ``adam`` (optax defaults)."""
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=0.9)
    if name == "adam":
        return optax.adam(learning_rate)
    raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """Training-set indices of the mini-batch of ``step``."""
    return np.random.default_rng([int(seed), int(step)]).choice(n, batch_size, replace=False)


def batch_loss_fn(model: Model) -> Callable:
    """``(params, x, y) -> mean loss`` over a batch."""
    if model.apply is None:
        return lambda params, x, y: model.loss_fn(params, (x, y))

    def loss(params, x, y):
        f = jax.vmap(lambda xi: model.apply(params, xi, None))(x)
        return jnp.mean(jax.vmap(lambda fi, yi: ggn.per_example_loss(model.loss, fi, yi))(f, y))

    return loss


def make_train_step(model: Model, opt: optax.GradientTransformation, layers, row_axes) -> Callable:
    """Jitted ``(params, opt_state, x, y) -> (params, opt_state, loss, {path: gradient})``.

    The returned gradients are the mini-batch gradients of ``layers``, matricized, taken at
    the parameters *before* the update.
    """
    loss_fn = batch_loss_fn(model)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        flat = flat_params(grads)
        sel = {}
        for p in layers:
            shape = flat[p].shape
            sel[p] = to_matrix(flat[p], 0, shape, row_axes_for(shape, row_axes.get(p)))
        return optax.apply_updates(params, updates), opt_state, loss, sel

    return step


def make_eval(model: Model) -> Callable:
    """Jitted ``(params, x, y) -> (mean loss, accuracy)``; accuracy is NaN unless CE."""
    loss_fn = batch_loss_fn(model)

    @jax.jit
    def evaluate(params, x, y):
        loss = loss_fn(params, x, y)
        if model.apply is None or model.loss != "cross_entropy":
            return loss, jnp.nan
        f = jax.vmap(lambda xi: model.apply(params, xi, None))(x)
        return loss, jnp.mean(jnp.argmax(f, axis=-1) == y)

    return evaluate
