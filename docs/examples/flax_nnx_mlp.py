"""Your Flax NNX MLP, end to end: per-example gradients, GGN, K-FAC, every estimator, a figure.

The layers are found in the model's jaxpr (no rewrite of the model), Flax's ``(in, out)``
kernels are matricized output side first, and K-FAC's activations and backprops are
captured alongside the gradients. Run: ``python docs/examples/flax_nnx_mlp.py [outdir]``.
"""

import sys

import jax.numpy as jnp
from flax import nnx
from sklearn.datasets import load_digits

from precond_lab.capture import capture_model
from precond_lab.evaluate import ESTIMATORS, evaluate
from precond_lab.plotting import plot_metric_bars, save

out = sys.argv[1] if len(sys.argv) > 1 else "."
digits = load_digits()
x, y = digits.data[:256] / 16.0, digits.target[:256]
model = nnx.Sequential(
    nnx.Linear(64, 32, rngs=nnx.Rngs(0)), jnp.tanh, nnx.Linear(32, 10, rngs=nnx.Rngs(1))
)

# --- library calls (4) ----------------------------------------------------------------
tree = capture_model(
    model,
    x,
    y,
    loss="cross_entropy",
    num_samples=64,
    targets=["gradients", "ggn", "kfac", "kfac-ggn"],
)
ds = evaluate(
    tree,
    [name + spec.example_args for name, spec in ESTIMATORS.items()],
    layers=["layers/0/kernel/value"],
    damping=1e-3,
    damping_mode="relative",
    progress=False,
)
fig = plot_metric_bars(ds, ("cosine", "kl_rescaled"), title="Flax NNX MLP, first layer")
save(fig, f"{out}/flax_nnx_mlp", formats=("png",))
# ----------------------------------------------------------------------------------------
print(tree["step_000000/layers/0/kernel/value"].attrs["matrix_meaning"])
print(ds["score"].sel(metric="cosine").squeeze().to_pandas().T.round(4))
