"""The optimiser that trains is the estimator that is scored: one gradient stream fed to
``po.kl_shampoo`` and to ``online.kl_shampoo`` gives the same approximation of Σ."""

import jax
import jax.numpy as jnp
import numpy as np

import precond_lab.optim as po
from precond_lab import online
from precond_lab.train import preconditioner_of

jax.config.update("jax_enable_x64", True)
grads = [np.random.default_rng(k).standard_normal((6, 4)) for k in range(23)]

tx, params = po.kl_shampoo(1e-3), {"w": jnp.zeros((6, 4))}
state = tx.init(params)
for g in grads:
    _, state = tx.update({"w": jnp.asarray(g)}, state, params)

est = online.kl_shampoo()  # the same rule, with the same defaults
s = est.init(jnp.asarray(grads[0]))
for g in grads[1:]:
    s = est.update(s, jnp.asarray(g))

a = np.asarray(preconditioner_of(state, "w").to_dense())
b = np.asarray(est.approximation(s).to_dense())
print(f"relative difference {np.linalg.norm(a - b) / np.linalg.norm(b):.1e}")
assert np.linalg.norm(a - b) <= 1e-12 * np.linalg.norm(b)
