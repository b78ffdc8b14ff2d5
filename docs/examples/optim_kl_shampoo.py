"""Train a Flax NNX MLP with KL-Shampoo (and AdamW for comparison) from ``precond_lab.optim``.

``po.kl_shampoo(learning_rate=...)`` is an ordinary ``optax.GradientTransformation``: the
two kernels (matrices) get KL-Shampoo's Kronecker preconditioner, the biases (1-D) its AdamW
fallback; the first call only initialises the factors from the first gradient (no step), as
the reference code does. Run: ``python docs/examples/optim_kl_shampoo.py [steps]``.
"""

import sys

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import precond_lab.optim as po
from precond_lab.capture.data import load_dataset

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
data = load_dataset("digits")  # 8×8 digit images, 10 classes
x, y = jnp.asarray(data.x_train.reshape(len(data.x_train), -1)), jnp.asarray(data.y_train)
xt, yt = jnp.asarray(data.x_test.reshape(len(data.x_test), -1)), jnp.asarray(data.y_test)


def make_model():
    return nnx.Sequential(
        nnx.Linear(x.shape[1], 64, rngs=nnx.Rngs(0)),
        jax.nn.tanh,
        nnx.Linear(64, 10, rngs=nnx.Rngs(1)),
    )


def loss_fn(model, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(model(xb), yb).mean()


def train(tx, batch=128):
    model = make_model()
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, xb, yb):
        loss, grads = nnx.value_and_grad(loss_fn)(model, xb, yb)
        opt.update(model, grads)
        return loss

    key = jax.random.PRNGKey(0)
    for _ in range(steps):
        key, sub = jax.random.split(key)
        idx = jax.random.choice(sub, len(x), (batch,), replace=False)
        step(model, opt, x[idx], y[idx])
    accuracy = float((model(xt).argmax(-1) == yt).mean())
    return float(loss_fn(model, x, y)), accuracy, po.state_size(nnx.as_pure(opt.opt_state))


# --- the library call ------------------------------------------------------------------
results = {
    "kl_shampoo": train(po.kl_shampoo(learning_rate=3e-3, frequency=10)),
    "adamw": train(po.adamw(learning_rate=3e-3)),
}
# ----------------------------------------------------------------------------------------
for name, (loss, acc, size) in results.items():
    print(f"{name:10s} train loss {loss:.4f}  test accuracy {acc:.3f}  state {size.floats} floats")
