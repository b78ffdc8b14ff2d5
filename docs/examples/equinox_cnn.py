"""Your Equinox CNN, end to end: per-example gradients, GGN, K-FAC, every estimator, a figure.

Equinox (like PyTorch) stores a convolution as ``(out, in, kh, kw)``: it is matricized as
``out × (in·kh·kw)``, and K-FAC's activations are the input patches at every output pixel
(the ``position`` dim, so both expand and reduce variants apply). Run:
``python docs/examples/equinox_cnn.py [outdir]``.
"""

import sys

import equinox as eqx
import jax
from sklearn.datasets import load_digits

from precond_lab.capture import capture_model
from precond_lab.evaluate import ESTIMATORS, evaluate
from precond_lab.plotting import plot_metric_bars, save

out = sys.argv[1] if len(sys.argv) > 1 else "."
digits = load_digits()
x, y = digits.images[:256, None] / 16.0, digits.target[:256]  # (N, 1, 8, 8)
k1, k2 = jax.random.split(jax.random.PRNGKey(0))
model = eqx.nn.Sequential(
    [
        eqx.nn.Conv2d(1, 6, 3, key=k1),
        eqx.nn.Lambda(jax.nn.relu),
        eqx.nn.Lambda(lambda h: h.mean(axis=(1, 2))),
        eqx.nn.Linear(6, 10, key=k2),
    ]
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
    layers=["layers/0/weight"],
    damping=1e-3,
    damping_mode="relative",
    progress=False,
)
fig = plot_metric_bars(ds, ("cosine", "kl_rescaled"), title="Equinox CNN, convolution")
save(fig, f"{out}/equinox_cnn", formats=("png",))
# ----------------------------------------------------------------------------------------
print(tree["step_000000/layers/0/weight"].attrs["matrix_meaning"])
print(ds["score"].sel(metric="cosine").squeeze().to_pandas().T.round(4))
