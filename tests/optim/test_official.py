"""Cross-check against the official PyTorch code: KL-Shampoo/KL-SOAP, its SOAP, IF-Shampoo,
PSGD-Kron, SPlus, Purifying Shampoo.

The official repository (``yorkerlin/KL-Methods``, ``optim/kl_opt.py`` and ``optim/soap.py``)
is not vendored: point ``PRECOND_LAB_KL_METHODS`` at a checkout to run these tests (they are
skipped otherwise). Both sides run in float64 on the same gradients; ``torch.compile`` is
replaced by the identity while the official module is loaded. The official code always runs
``eigh`` and QR in float32 (``m.data.float()``), so the two agree to float32 accuracy in the
bases (≈1e-8 relative in the weights here); the tolerance is 1e-6, four orders below the
per-step change of the weights.

IF-Shampoo is checked against ``f-dangel/sirfshampoo`` (``PRECOND_LAB_SIRFSHAMPOO``: a folder
from which ``import sirfshampoo`` works; it needs the ``singd`` and ``einops`` packages) in
float64 to 1e-10: its rescaling tricks cancel exactly.

PSGD-Kron is checked against ``lixilinx/psgd_torch``'s ``psgd.py`` ``KronWhiten``
(``PRECOND_LAB_PSGD_TORCH``: a checkout; needs ``opt_einsum``) and SPlus against
``kvfrans/splus``'s ``optax/splus.py`` (``PRECOND_LAB_SPLUS``: a checkout), both in
float64 to 1e-10.

Purifying Shampoo is checked against Meta's Distributed Shampoo
(``facebookresearch/optimizers``, ``EigenvalueCorrectedShampooPreconditionerConfig`` with
``Eigh``/``QREigendecompositionConfig(tolerance)``; ``PRECOND_LAB_DISTRIBUTED_SHAMPOO``: a
checkout from which ``import distributed_shampoo`` works) in float64 to 1e-10, the official
side configured as ``precond_lab/methods/purifying.py`` describes (no merging of the leaf's
dimensions, float64 states and default dtype, a learning rate exact in float32).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import jax
import numpy as np
import pytest

import precond_lab.optim as po

from .test_equations import grads_seq, run

jax.config.update("jax_enable_x64", True)

ROOT = os.environ.get("PRECOND_LAB_KL_METHODS")
needs_kl_methods = pytest.mark.skipif(
    not ROOT or not (Path(ROOT) / "optim" / "kl_opt.py").exists(),
    reason="set PRECOND_LAB_KL_METHODS to a checkout of yorkerlin/KL-Methods",
)


def _official(module: str):
    torch = pytest.importorskip("torch")
    compile_ = torch.compile
    torch.compile = lambda fn=None, **kw: fn if fn is not None else (lambda f: f)
    try:
        spec = importlib.util.spec_from_file_location(module, Path(ROOT) / "optim" / f"{module}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        torch.compile = compile_
    return torch, mod


def assert_close(got, want, tol=1e-6):
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        err = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert err <= tol, f"step {k}: relative error {err:.2e}"
    moved = np.linalg.norm(want[-1] - want[0]) / np.linalg.norm(want[0])
    assert moved > 1e2 * tol  # the weights did move


def _torch_run(torch, make_opt, w0, grads):
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = make_opt([w])
    out = []
    for g in grads:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(w.detach().numpy().copy())
    return out


@needs_kl_methods
@pytest.mark.parametrize("klsoap", [False, True])
def test_kl_shampoo_and_kl_soap_match_the_official_code(klsoap):
    torch, mod = _official("kl_opt")
    w0 = np.random.default_rng(0).standard_normal((6, 6))
    grads = grads_seq((6, 6), 16, seed=1)
    want = _torch_run(
        torch,
        lambda p: mod.KLOpt(
            p, lr=0.05, precondition_frequency=3, using_klsoap=klsoap, cast_dtype=torch.float64
        ),
        w0,
        grads,
    )
    factory = po.kl_soap if klsoap else po.kl_shampoo
    assert_close(run(factory(learning_rate=0.05, frequency=3), w0, grads), want)


@needs_kl_methods
def test_soap_matches_the_vendored_soap_code():
    torch, mod = _official("soap")
    w0 = np.random.default_rng(2).standard_normal((6, 6))
    grads = grads_seq((6, 6), 16, seed=3)
    want = _torch_run(
        torch,
        lambda p: mod.SOAP(p, lr=0.02, precondition_frequency=3, cast_dtype=torch.float64),
        w0,
        grads,
    )
    assert_close(run(po.soap(learning_rate=0.02, frequency=3), w0, grads), want)


def _torch_floats(torch, opt) -> dict[str, int]:
    """Floating-point entries per state key of a torch optimiser (nested lists walked)."""

    def count(x):
        if isinstance(x, torch.Tensor):
            return x.numel() if x.is_floating_point() else 0
        if isinstance(x, (list, tuple)):
            return sum(count(y) for y in x)
        return 0

    (state,) = opt.state.values()
    return {k: count(v) for k, v in state.items() if count(v)}


@needs_kl_methods
@pytest.mark.parametrize("shape", [(6, 10), (12, 12)])
def test_state_sizes_match_the_official_states(shape):
    """P1-41's counts: the official KLOpt (KL-Shampoo) and SOAP keep, after their first
    refreshes, as many floats as our states (SOAP: one scalar more), and only SOAP keeps a
    second moment."""
    import jax
    import jax.numpy as jnp

    torch, kl = _official("kl_opt")
    _, soap = _official("soap")
    grads = grads_seq(shape, 4, seed=7)
    w = torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64))
    official = {
        "kl_shampoo": kl.KLOpt([w], lr=0.01, precondition_frequency=2, cast_dtype=torch.float64),
        "soap": soap.SOAP([w], lr=0.01, precondition_frequency=2, cast_dtype=torch.float64),
    }
    params = {"w": jax.ShapeDtypeStruct(shape, jnp.float64)}
    for name, opt in official.items():
        for g in grads:
            w.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
        theirs = _torch_floats(torch, opt)
        ours = jax.eval_shape(getattr(po, name)(1e-2, frequency=2).init, params)
        # our SOAP keeps its bias correction as one float; the official one recomputes it
        # from its integer step
        extra = 1 if name == "soap" else 0
        assert po.state_size(ours).floats == sum(theirs.values()) + extra, (name, theirs)
        second = theirs.get("exp_avg_sq", 0)
        assert po.state_size(ours, field="nu").floats == second, (name, theirs)


SIRF = os.environ.get("PRECOND_LAB_SIRFSHAMPOO")


@pytest.mark.skipif(not SIRF, reason="set PRECOND_LAB_SIRFSHAMPOO to a sirfshampoo checkout")
@pytest.mark.parametrize("alpha2", [0.5, 0.0])
def test_if_shampoo_matches_sirfshampoo(monkeypatch, alpha2):
    torch = pytest.importorskip("torch")
    monkeypatch.syspath_prepend(SIRF)
    pytest.importorskip("singd")
    from sirfshampoo import SIRFShampoo

    w0 = np.random.default_rng(4).standard_normal((4, 6))
    grads = grads_seq((4, 6), 12, seed=5, scale=0.5)
    model = torch.nn.Linear(6, 4, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(w0))
    kw = dict(beta2=0.05, alpha1=0.9, alpha2=alpha2, lam=1e-3, kappa=0.01)
    opt = SIRFShampoo(model, lr=0.01, batch_size=32, **kw)
    want = []
    for g in grads:
        model.weight.grad = torch.tensor(g)
        opt.step()
        want.append(model.weight.detach().numpy().copy())
    tx = po.if_shampoo(
        0.01, batch_size=32, beta2=0.05, alpha1=0.9, alpha2=alpha2, damping=1e-3, weight_decay=0.01
    )
    assert_close(run(tx, w0, grads), want, tol=1e-10)


# ------------------------------------------------------------------ PSGD-Kron, SPlus
PSGD = os.environ.get("PRECOND_LAB_PSGD_TORCH")


def _psgd_module(monkeypatch):
    """``psgd.py`` of ``lixilinx/psgd_torch`` with its two random norm lower bounds
    replaced by the exact spectral norms (our rule's), so both sides are deterministic
    up to the damping noise ``ε·|G|·randn`` (with ``damping = 0``: ~1e-16 relative)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("opt_einsum")
    spec = importlib.util.spec_from_file_location("psgd_official", Path(PSGD) / "psgd.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    exact = lambda a, k=32, half_iters=2: torch.linalg.matrix_norm(a, 2)  # noqa: E731
    monkeypatch.setattr(mod, "norm_lower_bound_spd", exact)
    monkeypatch.setattr(mod, "norm_lower_bound_skh", exact)
    return torch, mod


@pytest.mark.skipif(
    not PSGD or not (Path(PSGD) / "psgd.py").exists(),
    reason="set PRECOND_LAB_PSGD_TORCH to a checkout of lixilinx/psgd_torch",
)
@pytest.mark.parametrize(("shape", "momentum"), [((6, 4), 0.0), ((5, 5), 0.9)])
def test_psgd_kron_matches_psgd_torch_kron_whiten(monkeypatch, shape, momentum):
    """``KronWhiten`` (dense factors: ``max_skew = ∞``; ``damping = 0``; scale set from the
    first gradient) against ``po.psgd_kron``, float64, 15 steps; tolerance 1e-10."""
    torch, mod = _psgd_module(monkeypatch)
    torch.manual_seed(0)
    w0 = np.random.default_rng(11).standard_normal(shape)
    grads = grads_seq(shape, 15, seed=12, scale=2.0)
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = mod.KronWhiten(
        [w],
        preconditioner_max_skew=float("inf"),
        lr_params=0.05,
        damping=0.0,
        momentum=momentum,
        whiten_grad=True,
    )
    want = []
    for g in grads:
        gt = torch.tensor(g, dtype=torch.float64)
        opt.step(lambda gt=gt: torch.sum(w * gt))
        want.append(w.detach().numpy().copy())
    got = run(po.psgd_kron(0.05, damping=0.0, momentum=momentum), w0, grads)
    assert_close(got, want, tol=1e-10)


SPLUS = os.environ.get("PRECOND_LAB_SPLUS")


@pytest.mark.skipif(
    not SPLUS or not (Path(SPLUS) / "optax" / "splus.py").exists(),
    reason="set PRECOND_LAB_SPLUS to a checkout of kvfrans/splus",
)
@pytest.mark.parametrize("every", [1, 4])
def test_splus_matches_the_official_optax_code(monkeypatch, every):
    """``kvfrans/splus`` ``optax/splus.py`` (its ``chex`` import stubbed, ``jax.tree_map``
    aliased to ``jax.tree.map`` on JAX versions without it) against ``po.splus`` on a
    square matrix (``2/(m+n)``) and a vector (``nonstandard_constant``), float64, 12 steps.
    Square: the one-gradient factors of an ``m×n`` leaf with ``m ≠ n`` are singular at the
    first refresh, the basis of their null space is round-off's choice (``g @ g.T`` here and
    there are summed differently) and the sign in it differs at O(1) (measured 1.5e-2 on a
    6×4 leaf at step 2)."""
    import sys
    import types

    import jax.numpy as jnp
    import optax

    monkeypatch.setitem(sys.modules, "chex", types.SimpleNamespace(Array=object))
    if not hasattr(jax, "tree_map"):
        monkeypatch.setattr(jax, "tree_map", jax.tree.map, raising=False)
    spec = importlib.util.spec_from_file_location(
        "splus_official", Path(SPLUS) / "optax" / "splus.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(13)
    params = {
        "w": jnp.asarray(rng.standard_normal((5, 5))),
        "b": jnp.asarray(rng.standard_normal(4)),
    }
    kw = dict(b1=0.8, b2=0.95, inverse_every=every, weight_decay=0.05)

    def trajectory(tx):
        p, s, out = params, tx.init(params), []
        g_rng = np.random.default_rng(14)
        for _ in range(12):
            g = {k: jnp.asarray(g_rng.standard_normal(v.shape)) for k, v in params.items()}
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
            out.append(p)
        return out

    want = trajectory(mod.splus(0.2, verbose=False, **kw))
    got = trajectory(po.splus(0.2, **kw))
    for key in params:
        assert_close([np.asarray(x[key]) for x in got], [np.asarray(x[key]) for x in want], 1e-10)


SHAMPOO = os.environ.get("PRECOND_LAB_DISTRIBUTED_SHAMPOO")


@pytest.mark.skipif(
    not SHAMPOO or not (Path(SHAMPOO) / "distributed_shampoo" / "distributed_shampoo.py").exists(),
    reason="set PRECOND_LAB_DISTRIBUTED_SHAMPOO to a checkout of facebookresearch/optimizers",
)
@pytest.mark.parametrize("shape", [(6, 6), (5, 4)])
@pytest.mark.parametrize("frequency", [1, 3])
@pytest.mark.parametrize("tolerance", [0.0, 0.05])
@pytest.mark.parametrize("solver", ["eigh", "qr"])
def test_purifying_shampoo_matches_distributed_shampoo(
    monkeypatch, shape, frequency, tolerance, solver
):
    """``DistributedShampoo`` with ``EigenvalueCorrectedShampooPreconditionerConfig`` and an
    ``Eigh``/``QREigendecompositionConfig(tolerance)`` (3 QR iterations) against
    ``po.purifying_shampoo``, float64, 12 steps, ≤1e-10. The official side is configured so
    that it runs the same equations in float64: ``max_preconditioner_dim = max(shape)`` (a
    larger one merges the ``m×n`` leaf into one ``mn``-vector with a single ``mn×mn``
    factor), every state dtype float64 (``corrected_eigenvalues_dtype`` defaults to float32),
    torch's default dtype float64 (``bias_correction2 = torch.tensor(1.0) − β₂^t`` is built in
    it) and a learning rate exact in float32 (it is held in a float32 tensor). ``ε = 1e-6``:
    the refresh at step 1 (``frequency=1``) diagonalises ``Q_aᵀG₁Q_b`` (an SVD), so the
    off-diagonal entries of the direction are round-off over ``ε`` (1.8e-9 apart at ε = 1e-8,
    1.7e-11 at 1e-6)."""
    torch = pytest.importorskip("torch")
    monkeypatch.syspath_prepend(SHAMPOO)
    from distributed_shampoo import DistributedShampoo
    from distributed_shampoo.preconditioner.matrix_functions_types import (
        EighEigendecompositionConfig,
        QREigendecompositionConfig,
    )
    from distributed_shampoo.shampoo_types import EigenvalueCorrectedShampooPreconditionerConfig

    lr, b1, b2, eps, iters = 2.0**-6, 0.9, 0.99, 1e-6, 3
    if solver == "eigh":
        amortized = EighEigendecompositionConfig(tolerance=tolerance)
    else:
        amortized = QREigendecompositionConfig(tolerance=tolerance, max_iterations=iters)
    config = EigenvalueCorrectedShampooPreconditionerConfig(
        amortized_computation_config=amortized,
        factor_matrix_dtype=torch.float64,
        factor_matrix_eigenvectors_dtype=torch.float64,
        corrected_eigenvalues_dtype=torch.float64,
    )
    w0 = np.random.default_rng(0).standard_normal(shape)
    # decaying gradients: the factors settle and the criterion keeps the eigh basis at 16 of
    # the 24 refreshes (frequency 1, τ = 0.05; QR, re-sorted after every refresh, never does)
    grads = [g * 0.7**k for k, g in enumerate(grads_seq(shape, 12, seed=1))]
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        want = _torch_run(
            torch,
            lambda p: DistributedShampoo(
                p,
                lr=lr,
                betas=(b1, b2),
                epsilon=eps,
                precondition_frequency=frequency,
                max_preconditioner_dim=max(shape),
                preconditioner_config=config,
            ),
            w0,
            grads,
        )
    finally:
        torch.set_default_dtype(default_dtype)
    tx = po.purifying_shampoo(
        lr,
        b1=b1,
        b2=b2,
        eps=eps,
        frequency=frequency,
        tolerance=tolerance,
        solver=solver,
        max_iterations=iters,
    )
    assert_close(run(tx, w0, grads), want, 1e-10)
