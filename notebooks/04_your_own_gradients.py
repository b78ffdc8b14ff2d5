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
# # 04 · Your own gradients
#
# Two ways in:
#
# * **A JAX model you wrote** (a pytree of parameters and an `apply_fn`; no Flax needed)
#   goes through `precond_lab.capture.capture_from_fn`, which computes per-example
#   gradients and exact Gauss–Newton pseudo-gradients for any parameter you name.
# * **Gradients you already have** as a NumPy array of shape `(N, m, n)` (saved with
#   `np.save`, from PyTorch, …) go straight into `SampleTarget` or any estimator.
#
# Then: sample weights, centering, damping, and a dense `(mn, mn)` matrix (an exact
# Hessian block) via `DenseTarget`.

# %% tags=["parameters"]
QUICK = True
HIDDEN = 16
NUM_SAMPLES = 64 if QUICK else 1024
TRAIN_STEPS = 30 if QUICK else 500

# %%
# %matplotlib inline
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

import numpy as np
from sklearn.datasets import load_digits

from precond_lab import DenseTarget, SampleTarget, schema
from precond_lab import estimators as est
from precond_lab import metrics as met
from precond_lab.capture import capture_from_fn

# %% [markdown]
# ## 1. A model in a few lines of JAX
#
# Parameters are any pytree; a `(out, in)` matrix is matricized as is (rows = output
# side). `apply_fn(params, x_batch) -> logits (B, C)`. We train it briefly with plain
# gradient descent — your model would come trained.

# %%
digits = load_digits()
x = (digits.data / 16.0).astype(np.float64)
y = digits.target.astype(np.int64)
key1, key2 = jax.random.split(jax.random.PRNGKey(0))
params = {
    "hidden": {"w": jax.random.normal(key1, (HIDDEN, 64)) / 8.0, "b": jnp.zeros(HIDDEN)},
    "out": {"w": jax.random.normal(key2, (10, HIDDEN)) / np.sqrt(HIDDEN)},
}


def apply_fn(p, xb):
    h = jnp.tanh(xb @ p["hidden"]["w"].T + p["hidden"]["b"])
    return h @ p["out"]["w"].T


def mean_loss(p, xb, yb):
    logits = apply_fn(p, xb)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(len(yb)), yb])


step = jax.jit(lambda p: jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(mean_loss)(p, x, y)))
for _ in range(TRAIN_STEPS):
    params = step(params)
print(f"training loss after {TRAIN_STEPS} steps: {float(mean_loss(params, x, y)):.3f}")

# %% [markdown]
# `capture_from_fn` with `steps=(0,)` captures at the parameters as given. Layers are
# named by their pytree path. `loss="cross_entropy"` enables the Gauss–Newton targets
# (`ggn`: exact, `ggn-mc`: sampled labels); with a `loss_fn` instead of `apply_fn` only
# the gradient targets are available. The dense layers found in `apply_fn` store their
# targets as factors `(δ, a)` where smaller; `schema.layer_samples` returns the
# `(sample, [class,] row, col)` array either way (`storage="dense"` stores it as such).

# %%
tree = capture_from_fn(
    params,
    x,
    y,
    apply_fn=apply_fn,
    loss="cross_entropy",
    targets=["gradients", "ggn"],
    layers=["hidden/w", "out/w"],
    num_samples=NUM_SAMPLES,
)
node = tree[schema.step_name(0)]["out/w"]
g, b = schema.layer_samples(node, "gradients"), schema.layer_samples(node, "ggn")
print(g.dims, g.shape, "|", b.dims, b.shape, "| stored as", node.attrs["storage_ggn"])

ggn = SampleTarget(b)  # the class axis becomes extra samples
grads = SampleTarget(g)
for name, t in {"GGN": ggn, "empirical Fisher": grads}.items():
    c_sq = float(met.cosine_similarity(t, est.shampoo_squared(t)))
    c_opt = float(met.cosine_similarity(t, est.frobenius_optimal(t)))
    print(f"{name:>16}: cosine of Shampoo² {c_sq:.4f}, of the optimal Kronecker {c_opt:.4f}")

# %% [markdown]
# ## 2. Gradients from disk: a NumPy array `(N, m, n)`
#
# Anything you can load as `(N, m, n)` works. `np.load(..., mmap_mode="r")` keeps a large
# file on disk; `SampleTarget` streams it in chunks and never forms the `mn × mn` matrix.
# (Row-major convention: `kron(L, R) vec(G) = vec(L G Rᵀ)`; PyTorch's `(out, in)` weight
# gradients already have that layout. Column-major code swaps the factors.)

# %%
tmp = Path(tempfile.mkdtemp())
hidden = schema.layer_samples(tree[schema.step_name(0)]["hidden/w"], "gradients")
np.save(tmp / "hidden_grads.npy", np.asarray(hidden))

G = np.load(tmp / "hidden_grads.npy", mmap_mode="r")
print("loaded", G.shape, G.dtype)
target = SampleTarget(G, chunk_size=64)
fits = {
    "frobenius_optimal": est.frobenius_optimal(target),
    "shampoo_squared": est.shampoo_squared(target),
    "shampoo": est.shampoo(target),
    "diagonal": est.diagonal(target),
}
for name, s in fits.items():
    print(f"{name:>18}: cosine {float(met.cosine_similarity(target, s)):.4f}")

# %% [markdown]
# ## 3. Weights, centering, damping
#
# * `weights=` (shape `(N,)`, default `1/N`, negatives allowed): `Σ = Σ_k w_k vec(G_k)vec(G_k)ᵀ`.
#   Every estimator and metric takes it too (`est.shampoo(G, weights=w)`).
# * `center=True` subtracts the weighted mean gradient: a covariance instead of the
#   uncentered second moment.
# * Damping: `target.damped(λ)` is `Σ + λI` for estimators and metrics alike; `kl_optimal`
#   also takes `damping=λ`, and metrics take `damping=` (target) and `approx_damping=`.

# %%
N = G.shape[0]
w = np.linspace(1.0, 2.0, N)
w /= w.sum()
weighted = SampleTarget(G, weights=w)
centered = SampleTarget(G, center=True)
print(
    "tr Σ (uniform, weighted, centered):",
    [f"{float(t.trace()):.4g}" for t in (target, weighted, centered)],
)

lam = 1e-3 * float(target.trace()) / np.prod(target.matrix_shape)
damped = target.damped(lam)
kl_fit = est.kl_optimal(damped)  # same as est.kl_optimal(G, damping=lam)
kl_fit2 = est.kl_optimal(G, damping=lam)
same = bool(np.allclose(kl_fit.to_dense(), kl_fit2.to_dense(), rtol=1e-6))
print("KL fit converged:", kl_fit.info.converged, "| same fit either way:", same)
for name, s in {"shampoo_squared": est.shampoo_squared(damped), "kl_optimal": kl_fit}.items():
    sc = met.score(damped, s)
    print(
        f"{name:>16}: KL {sc['kl']:.3f}, KL at best scale {sc['kl_rescaled']:.3f}, "
        f"vN {sc['von_neumann']:.4f}"
    )

# %% [markdown]
# ## 4. A dense `(mn, mn)` matrix: `DenseTarget`
#
# For small layers you can hand over any explicit symmetric matrix, e.g. an exact Hessian
# block from `jax.hessian`. Rows follow the row-major vec: row `i·n + j` is entry `(i, j)`.
# For the output layer of a softmax classifier the Hessian w.r.t. its weights *is* the
# Gauss–Newton block, so it must agree with the `ggn` pseudo-gradients captured above.

# %%
idx = tree[schema.step_name(0)]["sample"].values  # the captured training examples
xs, ys = x[idx], y[idx]
w_out = params["out"]["w"]
m, n = w_out.shape


def loss_of_out(wv):
    p = {**params, "out": {"w": wv.reshape(m, n)}}  # row-major vec
    return mean_loss(p, xs, ys)


H = jax.hessian(loss_of_out)(w_out.reshape(-1))
dense = DenseTarget(H, (m, n))
print(
    "H:",
    H.shape,
    "| ‖H − GGN‖/‖H‖ =",
    float(jnp.linalg.norm(H - ggn.to_dense()) / jnp.linalg.norm(H)),
)
for name, s in {
    "frobenius_optimal": est.frobenius_optimal(dense),
    "shampoo_squared": est.shampoo_squared(dense),
}.items():
    print(f"{name:>18}: cosine with H {float(met.cosine_similarity(dense, s)):.4f}")
assert float(jnp.linalg.norm(H - ggn.to_dense()) / jnp.linalg.norm(H)) < 1e-8

# %% [markdown]
# ## 5. All at once: `evaluate` on a dict of your own targets
#
# `evaluate` takes `{kind: samples}` (arrays, DataArrays or Targets such as `DenseTarget`)
# and returns the usual `xarray.Dataset`.

# %%
from precond_lab.evaluate import evaluate

ds = evaluate(
    {"ggn (samples)": b, "hessian (dense)": dense},
    ["frobenius_optimal", "shampoo_squared", "shampoo", "kl_optimal"],
    ["cosine", "kl_rescaled"],
    damping=1e-4,
    progress=False,
)
print(ds["score"].squeeze(drop=True).to_dataframe("score")["score"].unstack("metric").round(4))
