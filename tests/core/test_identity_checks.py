"""The named identity checks (``precond_lab.identities``): the registry covers every claim of
the identities study, each check passes on a random and an exact-Kronecker target, and the
P1-40 / P2-42 checks are not vacuous."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from precond_lab import claims
from precond_lab import identities as ids
from precond_lab import reference as ref


@pytest.fixture(autouse=True, scope="module")
def x64():
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def test_every_claim_of_the_study_has_its_checks():
    """A claim of the identities study without a check (P3-2 is read from the cosines and
    D4-sqrt) or a check of an unregistered claim fails here."""
    study_claims = {c.id for c in claims.CLAIMS.values() if "identities" in c.studies}
    checked = {c.claim for c in ids.IDENTITY_CHECKS.values()}
    assert checked | {"P3-2"} == study_claims
    for cid, c in ids.IDENTITY_CHECKS.items():
        assert cid == c.claim or cid.startswith(c.claim + "-"), cid
        assert c.kind in ("exact", "iterative", "numerical") and 0 < c.tolerance <= ids.ARGMIN
        assert c.description and callable(c.fn)


@pytest.mark.parametrize("make", [lambda o: ids.random_case(3, 2, 0, 2.0, o),
                                  lambda o: ids.kronecker_case(3, 2, 0, o)])  # fmt: skip
def test_every_check_holds_on_a_small_case(make):
    case = make(ids.CheckOptions(if_max_steps=1500))
    for cid, check in ids.IDENTITY_CHECKS.items():
        err = ids.check_identity(cid, case)
        kron_only = cid in ("D4-exact", "D4-sqrt", "P3-9")
        if kron_only and not case.kronecker:
            assert err is None, cid
            continue
        assert err is not None and 0 <= err <= check.tolerance, (cid, err)
    m = ids.measurements(case)
    assert m["cos_shampoo_squared"] > m["cos_shampoo"] and m["if_history"][-1] <= 1e-12


def test_sample_case_is_damped_relative_to_the_trace():
    g = np.random.default_rng(0).standard_normal((4, 3, 2))  # 4 samples: Σ singular
    case = ids.sample_case("tiny", "samples", g, relative_damping=1e-2)
    assert case.shape == (3, 2)
    assert np.isclose(case.damping, 1e-2 * np.trace(ref.target_matrix(g)) / 6)
    assert np.linalg.eigvalsh(case.x).min() >= case.damping * (1 - 1e-9)


def test_if_shampoo_invariance_needs_an_orthogonal_factor(monkeypatch):
    """P2-42's check is not vacuous: C → C·A with A not orthogonal changes CCᵀ."""
    g = np.random.default_rng(0).standard_normal((6, 3, 2))
    assert ids.if_shampoo_orthogonality(g, 1e-3, np.random.default_rng(1)) < 1e-12
    monkeypatch.setattr(np.linalg, "qr", lambda a: (np.eye(a.shape[0]) + 0.3 * a, None))
    assert ids.if_shampoo_orthogonality(g, 1e-3, np.random.default_rng(1)) > 1e-3


def test_logdet_divergence_is_twice_the_kl_not_once(monkeypatch):
    """P1-40: B₀ = 2·KL and its Hessian = 2 × Fisher; a reference KL off by 2 is caught."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 4))
    x = a @ a.T + np.eye(4)
    value, hessian = ids.logdet_hessian_errors(x, rng)
    assert value < 1e-12 and hessian < 1e-12
    kl = ref.kl_divergence
    monkeypatch.setattr(ref, "kl_divergence", lambda u, v: 2 * kl(u, v))
    assert ids.logdet_hessian_errors(x, rng)[0] > 1e-3  # far above the 1e-10 tolerance


def test_dense_helpers():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 6))
    x = a @ a.T + np.eye(6)
    assert np.allclose(ref.kl_gradient(x, x), 0.0, atol=1e-14)  # the KL's minimum
    g = ref.equivalent_samples(x, 3, 2)
    assert np.allclose(ref.target_matrix(g), x)
    (e,) = ref.symmetric_directions(rng, 3, 1)
    assert np.allclose(e, e.T) and np.isclose(np.linalg.norm(e), 1.0)
    p = ref.congruence(x[:3, :3], e, 0.1)
    assert np.allclose(p, p.T) and np.linalg.eigvalsh(p).min() > 0
    left, right = ref.kl_flip_flop(x, 3, 2)
    assert ref.kl_factor_stationarity(x, left, right) < 1e-8
