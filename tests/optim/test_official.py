"""Cross-check against the official PyTorch code: KL-Shampoo/KL-SOAP, its SOAP, IF-Shampoo.

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
