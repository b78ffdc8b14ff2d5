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
# # 03 · The KL view of Shampoo (Lin et al., P1)
#
# Lin, Lowe, Dangel, Eschenhagen, Xu, Grosse, *Understanding and Improving Shampoo and
# SOAP via Kullback–Leibler Minimization* (arXiv 2509.03378) read a Kronecker
# preconditioner `S = S_a ⊗ S_b` as the covariance of a zero-mean Gaussian fitted to the
# gradients by minimising
#
# `KL(Σ + λI, S) = KL( N(0, Σ+λI) ‖ N(0, S) )`   (P1's objective)
#
# — the maximum likelihood of a matrix-normal model. This notebook checks, on real
# per-example gradients of a small MLP's output layer:
#
# 1. **one-sided KL = Shampoo's factor** (Claim 1): the best `A ⊗ I` is `A = L/n (+λI)`;
# 2. **the two-sided fixed point** (Claim 2, "idealized KL-Shampoo"): the flip-flop
#    `S_a = E[G S_b⁻¹ Gᵀ]/n`, `S_b = E[Gᵀ S_a⁻¹ G]/m`;
# 3. **Shampoo's mis-scaling in KL** and what rescaling (and the eigen-correction) fixes;
# 4. **KL vs von Neumann**: the KL optimum is not the von Neumann optimum, which is
#    exactly Shampoo² with trace scaling, `L ⊗ R / tr Σ` (identity D9).
#
# All fits use `Σ + λI` (`target.damped(λ)`); the metrics score against that same matrix.

# %% tags=["parameters"]
QUICK = True
NUM_SAMPLES = 64 if QUICK else 1024
STEP = 20 if QUICK else 200
REL_DAMPING = 1e-3  # λ = REL_DAMPING · tr(Σ)/(mn)

# %%
# %matplotlib inline
import jax

jax.config.update("jax_enable_x64", True)

import numpy as np
import pandas as pd

from precond_lab import Kronecker, SampleTarget, schema
from precond_lab import estimators as est
from precond_lab import metrics as met
from precond_lab.capture import capture

# %% [markdown]
# ## Gradients
#
# Per-example gradients (real labels: the empirical Fisher) of the `10 × 16` output
# layer of a digits MLP after a few SGD steps. The output layer's `Σ` is singular (the
# rows of each `G` sum to zero under softmax), so KL needs `λ > 0`.

# %%
tree = capture(
    "mlp",
    "digits",
    steps=[STEP],
    targets=["gradients"],
    layers=["layers/1/w"],
    num_samples=NUM_SAMPLES,
    model_options={"hidden": (16,)},
    dtype="float64",
    eval_samples=0,
)
G = schema.layer_samples(tree[schema.step_name(STEP)]["layers/1/w"], "gradients").load()
sigma = SampleTarget(G)
m, n = sigma.matrix_shape
lam = REL_DAMPING * float(sigma.trace()) / (m * n)
target = sigma.damped(lam)
L, R = target.second_moments()  # Shampoo's statistics of Σ + λI: E[GGᵀ] + λnI, E[GᵀG] + λmI
print(f"G: {G.shape}, λ = {lam:.3g}")


def kl(s):
    """Forward KL(N(0, Σ+λI) ‖ N(0, S)) (the objective of kl_optimal)."""
    return float(met.kl_divergence(target, s))


# %% [markdown]
# ## 1. One-sided KL is Shampoo's factor (Claim 1)
#
# `one_sided_kl(side="left")` returns `argmin_A KL(Σ+λI, A ⊗ I_n)`: Shampoo's left
# statistic `L` divided by `n`. Any perturbation of it increases the KL.

# %%
one = est.one_sided_kl(target, side="left")
A_star = np.asarray(one.scale * one.left)
print("‖A* − L/n‖ / ‖L/n‖ =", np.linalg.norm(A_star - L / n) / np.linalg.norm(L / n))
best = kl(one)
eye_n = np.eye(n)
E = np.random.default_rng(0).standard_normal((m, m)) / np.sqrt(m)
candidates = {
    "A* = L/n": A_star,
    "1.1 · A*": 1.1 * A_star,
    "0.9 · A*": 0.9 * A_star,
    "(I+εE) A* (I+εE)ᵀ": (np.eye(m) + 0.05 * E) @ A_star @ (np.eye(m) + 0.05 * E).T,
}
for name, a in candidates.items():
    value = kl(Kronecker(a, eye_n))
    print(f"  KL(Σ+λI, [{name}] ⊗ I) = {value:.4f}")
    assert value >= best - 1e-8 * abs(best)

# %% [markdown]
# ## 2. The two-sided fixed point (Claim 2): the flip-flop
#
# `kl_optimal` iterates `S_a ← E[G S_b⁻¹ Gᵀ]/n`, `S_b ← E[Gᵀ S_a⁻¹ G]/m` from the
# identity (here on `Σ + λI`, whose primitives include the damping). Its first half-step
# is Shampoo's `L/n`; the objective decreases monotonically. We check the fixed-point
# equations with the target's own contractions (`contract_left(B) = E[G B Gᵀ]`).

# %%
fit = est.kl_optimal(target)
print(f"converged: {fit.info.converged} after {fit.info.iterations} sweeps")
obj = fit.info.objective
print("objective per sweep (KL up to a constant):", np.round(obj[:6], 4), "…", round(obj[-1], 6))
assert np.all(np.diff(obj) <= 1e-9 * np.abs(obj[:-1]))  # monotone

Sa = np.asarray(fit.scale * fit.left)  # put the whole scale on the left factor
Sb = np.asarray(fit.right)
res_a = Sa - np.asarray(target.contract_left(np.linalg.inv(Sb))) / n
res_b = Sb - np.asarray(target.contract_right(np.linalg.inv(Sa))) / m
print(
    "fixed-point residuals:",
    np.linalg.norm(res_a) / np.linalg.norm(Sa),
    np.linalg.norm(res_b) / np.linalg.norm(Sb),
)
assert np.linalg.norm(res_a) / np.linalg.norm(Sa) < 1e-6
assert np.linalg.norm(res_b) / np.linalg.norm(Sb) < 1e-6

# the two-sided fit beats both one-sided fits (and every other Kronecker product)
right = est.one_sided_kl(target, side="right")
print(f"KL: two-sided {kl(fit):.4f} < one-sided left {kl(one):.4f}, right {kl(right):.4f}")
assert kl(fit) <= min(kl(one), kl(right))

# %% [markdown]
# ## 3. Shampoo's mis-scaling in KL, and what rescaling fixes
#
# KL is not scale-free: `KL(Σ, cS)` has its own optimal scalar `c* = tr(S⁻¹Σ)/mn`
# (`metrics.kl_scale`; `score` reports `kl`, `kl_rescaled`, `kl_scale`). Shampoo's
# `L^{1/2} ⊗ R^{1/2}` is off both in **scale** (fixed by `c*`) and in **shape** (its
# eigenvalues are square roots: not fixed by any scalar). Shampoo² `L ⊗ R / tr Σ` has the
# right shape up to the Kronecker constraint. The eigen-corrected diagonal in Shampoo's
# eigenbasis (SOAP, `eigencorrected`) re-fits all `mn` eigenvalues and is KL-optimal
# for that basis, below every Kronecker product.

# %%
fits = {
    "shampoo": est.shampoo(target),
    "shampoo_squared": est.shampoo_squared(target),
    "kl_optimal": fit,
    "frobenius_optimal": est.frobenius_optimal(target),
    "eigencorrected (SOAP)": est.eigencorrected(target),
}
table = pd.DataFrame({k: met.score(target, s) for k, s in fits.items()}).T
table["kl − kl_rescaled"] = table["kl"] - table["kl_rescaled"]
print(
    table[["kl", "kl_scale", "kl_rescaled", "kl − kl_rescaled", "von_neumann", "cosine"]].to_string(
        float_format=lambda v: f"{v:.4g}"
    )
)

# %% [markdown]
# Shampoo loses most of its KL gap to the optimum by rescaling, but not all of it: the
# remainder is the shape error of the square root. The KL-optimal Kronecker product
# needs no rescaling (`kl_scale = 1`: the fixed point already has the optimal scale).

# %%
assert abs(table.loc["kl_optimal", "kl_scale"] - 1) < 1e-6
assert table.loc["shampoo", "kl_rescaled"] < table.loc["shampoo", "kl"]
assert (
    table.loc["kl_optimal", "kl"]
    <= table.loc[["shampoo", "shampoo_squared", "frobenius_optimal"], "kl_rescaled"].min()
)
assert table.loc["eigencorrected (SOAP)", "kl"] <= table.loc["shampoo_squared", "kl_rescaled"]

# %% [markdown]
# ## 4. KL vs von Neumann
#
# The von Neumann divergence `D_vN(X, Y) = tr(X log X − X log Y − X + Y)` is minimised
# over Kronecker products exactly by Shampoo² with trace scaling, `L ⊗ R / tr(Σ+λI)`
# (stationarity: `A = L / tr B`, `B = R / tr A`). So Shampoo² is the "VN-Shampoo" optimum
# and `kl_optimal` the KL one: each wins its own divergence and loses the other.

# %%
sq, klf = fits["shampoo_squared"], fits["kl_optimal"]
print(f"{'':18}{'KL':>12}{'von Neumann':>14}")
for k in ("shampoo_squared", "kl_optimal"):
    print(f"{k:18}{table.loc[k, 'kl']:12.4f}{table.loc[k, 'von_neumann']:14.5f}")
assert table.loc["shampoo_squared", "von_neumann"] <= table.loc["kl_optimal", "von_neumann"]
assert table.loc["kl_optimal", "kl"] <= table.loc["shampoo_squared", "kl"]

# Shampoo² is a stationary point of D_vN: nudging its scale or factors only increases it.
vn0 = float(met.von_neumann_divergence(target, sq))
Lb = np.asarray(sq.left)
for name, s in {
    "scale × 1.05": Kronecker(sq.left, sq.right, 1.05 * sq.scale),
    "scale × 0.95": Kronecker(sq.left, sq.right, 0.95 * sq.scale),
    "left (I+εE) L (I+εE)ᵀ": Kronecker(
        (np.eye(m) + 0.05 * E) @ Lb @ (np.eye(m) + 0.05 * E).T, sq.right, sq.scale
    ),
    "left halfway to the KL fit": Kronecker(
        0.5 * Lb + 0.5 * np.trace(Lb) * np.asarray(klf.left) / np.trace(np.asarray(klf.left)),
        sq.right,
        sq.scale,
    ),
}.items():
    vn = float(met.von_neumann_divergence(target, s))
    print(f"  D_vN(Shampoo² {name:<24}) − D_vN(Shampoo²) = {vn - vn0:+.3e}")
    assert vn >= vn0 - 1e-9 * abs(vn0)

# %% [markdown]
# Takeaway: Shampoo's factors are the *one-sided* KL optimum; the joint (two-sided)
# KL problem has a different fixed point, whitened by the other factor's inverse. Squared
# and trace-scaled, Shampoo's statistics are instead the exact von Neumann optimum.
