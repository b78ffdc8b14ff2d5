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
# # 01 · Quickstart: capture → estimate → score → plot
#
# A tiny MLP trains for a few steps on scikit-learn's digits. At the last step we
# capture, for its output layer (`10 × 16`), the per-example gradients (empirical
# Fisher), the exact Gauss–Newton pseudo-gradients and the K-FAC inputs. Every
# estimator of `precond_lab.estimators` is then fitted to the damped GGN `Σ + λI` and
# scored with `precond_lab.metrics.score`; finally `precond_lab.evaluate` does the same
# sweep for both targets in one call and `precond_lab.plotting` draws it.
#
# Conventions (README): a layer's per-example matrices are `G` of shape
# `(N, m, n)` (rows = output side), `Σ = Σ_k w_k vec(G_k) vec(G_k)ᵀ` with row-major vec,
# and `kron(L, R) @ vec(X) = vec(L X Rᵀ)`.

# %% tags=["parameters"]
QUICK = True  # small sizes: runs in seconds on a laptop CPU
STEP = 20 if QUICK else 200  # training step at which we capture
NUM_SAMPLES = 64 if QUICK else 512  # captured examples
HIDDEN = (16,) if QUICK else (64,)
LAYER = "layers/1/w"  # the output layer: 10 × hidden
DAMPING = 1e-3  # λ in Σ + λI (KL needs a non-singular target)

# %%
# %matplotlib inline
import time

import jax
from IPython.display import display

jax.config.update("jax_enable_x64", True)  # float64 everywhere (float32 is the default)

import numpy as np
import pandas as pd

from precond_lab import SampleTarget, schema
from precond_lab import estimators as est
from precond_lab import metrics as met
from precond_lab.capture import capture

# %% [markdown]
# ## 1. Capture
#
# `capture` trains with SGD and records the requested targets at the requested steps.
# Without `out=` the result stays in memory (an `xarray.DataTree`); with `out="run.zarr"`
# it is written to Zarr one step at a time and resumable (see `precond_lab/capture/store.py`).

# %%
tree = capture(
    "mlp",
    "digits",
    steps=[STEP],
    targets=["gradients", "ggn", "kfac", "kfac-ggn"],
    num_samples=NUM_SAMPLES,
    model_options={"hidden": HIDDEN},
    dtype="float64",
    eval_samples=200,
)
step = tree[schema.step_name(STEP)]
print(
    f"step {STEP}: train loss {step.attrs['train_loss']:.3f}, "
    f"test accuracy {step.attrs['test_accuracy']:.2f}"
)
layer = step[LAYER].to_dataset().load()
display(layer)

# %% [markdown]
# A dense layer's per-example matrices are rank one, `G = δ aᵀ`, so the capture stores
# `gradients` and `ggn` as their factors (`kfac_activations` `a`, `kfac_backprops*` `δ`)
# where that is smaller (`storage="auto"`, recorded in `storage_<kind>`).
# `schema.layer_samples` returns either form as the dense array: `gradients` is
# `(sample, row, col)`; `ggn` has one more axis, `class`: the exact GGN pseudo-gradients
# `b_{i,c} = J_iᵀ Λ_i^{1/2} e_c` whose outer products average to the Gauss–Newton block.
# `SampleTarget` accepts both DataArrays directly (the `class` axis becomes extra samples,
# each with its example's weight); `capture.layer_target` would use the factors instead.

# %%
ggn = SampleTarget(schema.layer_samples(step[LAYER], "ggn"))
target = ggn.damped(DAMPING)  # Σ + λI, never formed densely
m, n = target.matrix_shape
print(f"layer {LAYER}: m={m}, n={n}, mn={m * n}; samples behind Σ: {ggn.num_samples}")

# %% [markdown]
# ## 2. Estimate: every estimator
#
# K-FAC is built from the layer's inputs (activations) and the Λ^{1/2}-backpropagated
# output gradients, not from `G`; `damping=λ` adds `√λ I` to each of its factors, as
# `evaluate` does.

# %%
kfac_fit = est.kfac(*schema.layer_kfac_inputs(layer, "ggn"), damping=DAMPING)

builders = {
    "frobenius_optimal": lambda: est.frobenius_optimal(target),
    "power_iteration(3)": lambda: est.power_iteration(target, 3),
    "shampoo": lambda: est.shampoo(target),
    "shampoo_squared": lambda: est.shampoo_squared(target),
    "kl_optimal": lambda: est.kl_optimal(target),
    "one_sided_kl": lambda: est.one_sided_kl(target),
    "eigencorrected": lambda: est.eigencorrected(target),
    "kfac": lambda: kfac_fit,
    "diagonal": lambda: est.diagonal(target),
}
fits, seconds = {}, {}
for name, build in builders.items():
    t0 = time.perf_counter()
    fits[name] = build()
    seconds[name] = time.perf_counter() - t0
print("frobenius_optimal:", fits["frobenius_optimal"].info.iterations, "Lanczos iterations")
print(
    "kl_optimal converged:",
    fits["kl_optimal"].info.converged,
    "after",
    fits["kl_optimal"].info.iterations,
    "flip-flop sweeps",
)

# %% [markdown]
# ## 3. Score: every metric in one pass
#
# `score` returns cosine similarity, relative Frobenius error (as fitted and at the
# Frobenius-optimal scale `c*`), forward KL `KL(N(0,Σ+λI) ‖ N(0,S))` (as fitted and at
# its optimal scale) and the von Neumann divergence.

# %%
table = pd.DataFrame({name: met.score(target, s) for name, s in fits.items()}).T
table["fit_s"] = pd.Series(seconds)
cols = ["cosine", "relative_frobenius_rescaled", "kl", "kl_rescaled", "von_neumann", "fit_s"]
print(table[cols].to_string(float_format=lambda v: f"{v:.4g}"))

# %% [markdown]
# Where theory puts the optima (identities D3, D5, D9): the Frobenius optimum has the
# largest cosine among Kronecker products, `kl_optimal` the smallest KL, and Shampoo²
# (`L ⊗ R / tr Σ`) the smallest von Neumann divergence. Shampoo's `L^{1/2} ⊗ R^{1/2}` is
# worse than its square. These are theorems, so we check them:

# %%
kron = [
    "frobenius_optimal",
    "power_iteration(3)",
    "shampoo",
    "shampoo_squared",
    "kl_optimal",
    "kfac",
]
t = table.loc[kron]
assert t["cosine"].idxmax() == "frobenius_optimal" or np.isclose(
    t["cosine"].max(), t.loc["frobenius_optimal", "cosine"], rtol=1e-9
)
assert t["kl"].idxmin() == "kl_optimal"
assert t["von_neumann"].idxmin() == "shampoo_squared"
assert t.loc["shampoo", "cosine"] < t.loc["shampoo_squared", "cosine"]
print("optima where theory puts them")

# %% [markdown]
# ## 4. Plot
#
# A bar chart of two metrics, and the spectra of the target and of each approximation
# (`metrics.spectrum` gives all `mn` eigenvalues; an approximation is shown at its
# Frobenius-optimal scale so that shapes compare).

# %%
import matplotlib.pyplot as plt

show = [
    "frobenius_optimal",
    "shampoo_squared",
    "shampoo",
    "kl_optimal",
    "eigencorrected",
    "kfac",
    "diagonal",
]
fig, axes = plt.subplots(1, 2, figsize=(9, 3), layout="constrained")
for ax, metric in zip(axes, ["cosine", "kl_rescaled"], strict=True):
    ax.bar(range(len(show)), table.loc[show, metric], color="C0")
    ax.set_xticks(range(len(show)), show, rotation=40, ha="right")
    ax.set_title(metric)
axes[1].set_yscale("log")
plt.show()

# %%
fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
ax.semilogy(np.asarray(met.spectrum(target)), "k", lw=2.5, label="target Σ + λI")
for name in ["frobenius_optimal", "shampoo_squared", "shampoo", "kl_optimal", "kfac"]:
    c = table.loc[name, "frobenius_scale"]
    ax.semilogy(c * np.asarray(met.spectrum(fits[name])), lw=1.2, label=name)
ax.set_xlabel("eigenvalue index")
ax.set_ylabel("eigenvalue (c* · S)")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## 5. The same in one call: `evaluate` → xarray Dataset → `plotting`
#
# `evaluate` fits and scores every estimator on every (step, layer, target) cell of a
# capture and returns an `xarray.Dataset` (dims `step, layer, target, estimator,
# metric`); `precond_lab.plotting` turns it into figures. Here both targets: the
# empirical Fisher (real-label gradients) and the Gauss–Newton matrix.

# %%
from precond_lab import plotting
from precond_lab.evaluate import evaluate, spectra

ds = evaluate(tree, layers=[LAYER], damping=DAMPING, progress=False)
print(ds["score"].sel(metric="cosine").squeeze(drop=True).to_pandas().round(4))

# %%
plotting.plot_metric_bars(ds, metrics=("cosine", "kl_rescaled", "von_neumann"))

# %%
plotting.plot_spectra(spectra(tree, layer=LAYER, damping=DAMPING))
