"""Train your own JAX model with ``precond_lab.train`` and score the optimiser's own
preconditioner (``Probe``) against the exact per-layer targets along the way.

A ``train.Model`` needs ``init(key) -> params`` and ``apply(params, x, tape)`` for **one**
example; layers written as ``tape.linear(name, a, w, b)`` (weight ``"<name>/w"``, ``m × n``)
are the ones a ``Probe`` can capture exact targets for.
"""

import sys

import jax
import jax.numpy as jnp

import precond_lab.optim as po
from precond_lab.capture.models import Tape
from precond_lab.train import Model, Probe, train


def init(key):
    k1, k2 = jax.random.split(key)
    return {
        "hidden": {"w": 0.1 * jax.random.normal(k1, (32, 64)), "b": jnp.zeros(32)},
        "out": {"w": 0.1 * jax.random.normal(k2, (10, 32)), "b": jnp.zeros(10)},
    }


def apply(params, x, tape=None):
    tape = Tape() if tape is None else tape
    h = jnp.tanh(tape.linear("hidden", x, params["hidden"]["w"], params["hidden"]["b"]))
    return tape.linear("out", h, params["out"]["w"], params["out"]["b"])  # logits (10,)


model = Model(
    name="my_mlp",
    init=init,
    apply=apply,
    loss="cross_entropy",
    tape_layers=("hidden", "out"),
)
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 60
result = train(
    model,
    "digits",  # scikit-learn's 8×8 digits, offline
    po.kl_shampoo(learning_rate=3e-3, frequency=10),
    steps=steps,
    eval_every=steps,
    probe=Probe(steps=(10, steps), targets=("gradients", "ggn"), num_samples=64),
)
print(f"status {result.status.value}, test loss {result.final():.3f}")
# cosine of KL-Shampoo's own Σ̂ (and of the batch optima) with each exact target
table = result.probes.sel(metric="cosine").to_series().unstack("estimator")
print(table.round(3))
