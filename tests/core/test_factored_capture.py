"""A captured dense layer's targets from its K-FAC factors equal the dense captures."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

from precond_lab.capture import capture
from precond_lab.capture.factors import layer_factors, layer_target
from precond_lab.targets import FactoredTarget, SampleTarget

TARGETS = ["gradients", "ggn", "ggn-mc", "kfac", "kfac-ggn", "kfac-mc"]


@pytest.fixture(scope="module")
def tree():
    return capture(
        "mlp",
        "digits",
        steps=[0],
        targets=TARGETS,
        layers=["layers/0/w", "layers/1/w", "layers/1/b"],
        num_samples=12,
        mc_samples=2,
        dtype="float64",
        model_options={"hidden": (5,)},
        eval_samples=0,
        storage="dense",  # the dense arrays beside the K-FAC factors, to compare with
    )


@pytest.mark.parametrize("layer", ["layers/0/w", "layers/1/w", "layers/1/b"])
@pytest.mark.parametrize("kind", ["gradients", "ggn", "ggn-mc"])
def test_factored_layer_target_equals_the_dense_capture(tree, layer, kind):
    node = tree[f"step_000000/{layer}"]
    left, right = layer_factors(node, kind)
    fact = FactoredTarget(left, right, mode="factored")
    dense = layer_target(node, kind, prefer_factors=False)
    assert isinstance(dense, SampleTarget)
    sigma = np.asarray(dense.to_dense())
    assert_close(fact.to_dense(), sigma)
    assert_close(fact.frobenius_norm(), np.linalg.norm(sigma))
    # the factored form is chosen where it is smaller: weights yes, a bias (n = 1) no
    chosen = layer_target(node, kind)
    assert isinstance(chosen, FactoredTarget) == layer.endswith("/w")
    assert_close(chosen.to_dense(), sigma)


def test_without_factors_the_dense_capture_is_used(tree):
    node = tree["step_000000/layers/0/w"]
    assert layer_factors(node, "batch_8") is None
    assert isinstance(layer_target(node, "gradients", prefer_factors=False), SampleTarget)
    assert layer_target(node, "trajectory") is None
