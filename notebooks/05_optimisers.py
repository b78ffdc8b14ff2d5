# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · The papers' optimisers in optax: train a Flax NNX model with KL-Shampoo
#
# `precond_lab.optim` holds KL-Shampoo, KL-SOAP, Shampoo (with or without Adam grafting),
# SOAP, IF-Shampoo, RF-RMSProp and the trace-power family (F-, VN-, SQ-Shampoo), each an
# ordinary `optax.GradientTransformation`. Matrices get the Kronecker preconditioner; the
# biases (1-D) get the documented AdamW fallback. Here a small Flax NNX MLP on
# scikit-learn's digits is trained with KL-Shampoo, SOAP and AdamW at one learning rate
# each (not tuned: the training studies in `studies/train_*.py` search learning rates with
# equal budgets), and the optimiser states' sizes are compared (P1's memory claim, P1-41 in
# `docs/claims.md`: KL-Shampoo keeps no m×n second moment, SOAP does).

# %% tags=["parameters"]
QUICK = True  # small sizes: seconds on a laptop CPU
STEPS = 60 if QUICK else 600
BATCH = 128
SEEDS = (0,) if QUICK else (0, 1, 2)

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import precond_lab.optim as po
from precond_lab.capture.data import load_dataset

data = load_dataset("digits")
x = jnp.asarray(data.x_train.reshape(len(data.x_train), -1))
y = jnp.asarray(data.y_train)


def make_model(seed):
    return nnx.Sequential(
        nnx.Linear(x.shape[1], 64, rngs=nnx.Rngs(seed)),
        jax.nn.tanh,
        nnx.Linear(64, 10, rngs=nnx.Rngs(seed + 100)),
    )


def loss_fn(model, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(model(xb), yb).mean()


def train(tx, seed):
    model = make_model(seed)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, xb, yb):
        loss, grads = nnx.value_and_grad(loss_fn)(model, xb, yb)
        opt.update(model, grads)
        return loss

    key, losses = jax.random.PRNGKey(seed), []
    for _ in range(STEPS):
        key, sub = jax.random.split(key)
        idx = jax.random.choice(sub, len(x), (BATCH,), replace=False)
        losses.append(float(step(model, opt, x[idx], y[idx])))
    state = opt.opt_state.value if hasattr(opt.opt_state, "value") else nnx.state(opt.opt_state)
    return np.array(losses), po.state_size(state)


# %% [markdown]
# ## Train

# %%
methods = {
    "KL-Shampoo": lambda: po.kl_shampoo(learning_rate=3e-3, frequency=10),
    "SOAP": lambda: po.soap(learning_rate=3e-3, frequency=10),
    "AdamW": lambda: po.adamw(learning_rate=3e-3),
}
runs = {name: [train(make(), s) for s in SEEDS] for name, make in methods.items()}

# %%
fig, ax = plt.subplots(figsize=(4.5, 3))
for name, rs in runs.items():
    curves = np.stack([r[0] for r in rs])
    mean = curves.mean(0)
    ax.plot(mean, label=name)
    if len(rs) > 1:
        ax.fill_between(np.arange(STEPS), curves.min(0), curves.max(0), alpha=0.2)
ax.set(
    xlabel="step",
    ylabel="mini-batch loss",
    yscale="log",
    title=f"digits MLP, {len(SEEDS)} seed(s){' (band: min–max)' if len(SEEDS) > 1 else ''}",
)
ax.legend()
plt.show()

# %% [markdown]
# ## State sizes

# %%
for name, rs in runs.items():
    size = rs[0][1]
    print(f"{name:10s} state: {size.floats:7d} floats")
for name, rs in runs.items():  # every method trains: the loss drops from its start
    first, last = rs[0][0][:5].mean(), rs[0][0][-5:].mean()
    assert last < first, (name, first, last)
