"""The demo's pieces (issue 23): its factored targets, its dense check, and a progress bar
that meters the whole job. (The demo itself runs for about a minute: not run here.)"""

from __future__ import annotations

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from precond_lab import estimators as est  # noqa: E402
from precond_lab import reference as ref  # noqa: E402
from precond_lab import schema  # noqa: E402
from precond_lab.demo import _dense_metrics, demo_targets, digits_softmax_problem  # noqa: E402


@pytest.fixture(scope="module")
def problem():
    return digits_softmax_problem(steps=5)


def test_demo_targets_are_the_dense_sample_bags(problem):
    targets = demo_targets(problem)
    for kind, dense in (("empirical_fisher", problem.gradients), ("ggn", problem.ggn)):
        want = ref.target_matrix(*schema.sample_bag(dense))
        got = np.asarray(targets[kind].to_dense())
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14 * np.abs(want).max())


def test_dense_check_matches_the_references():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((40, 4, 3))
    sigma = ref.target_matrix(g) + 1e-2 * np.eye(12)
    for approx in (est.shampoo_squared(g), est.diagonal(g)):
        s = np.asarray(approx.to_dense())
        got = _dense_metrics(sigma, np.linalg.eigvalsh(sigma), approx)
        assert got["von_neumann"] == pytest.approx(ref.von_neumann_divergence(sigma, s), 1e-10)
        assert got["kl"] == pytest.approx(ref.kl_divergence(sigma, s), rel=1e-12)
        assert got["cosine"] == pytest.approx(ref.cosine_similarity(sigma, s), rel=1e-12)


def test_evaluate_bar_is_not_full_while_cells_are_scored_and_checked(monkeypatch):
    """The demo sat silent for minutes after its bar reached 100 %: the bar counted fits
    only, then scoring and the dense check ran."""
    import precond_lab.sweep.loop as loop
    from precond_lab.evaluate import evaluate

    bars = []

    class Bar:
        def __init__(self, total, **kwargs):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, k=1):
            self.n += k

        def set_postfix_str(self, *args, **kwargs):
            pass

        def close(self):
            pass

    monkeypatch.setattr(loop, "tqdm", Bar)
    seen = []
    g = np.random.default_rng(1).standard_normal((30, 3, 4))
    evaluate(
        {"gradients": g, "ggn_mc": g[:, None]},
        ["shampoo_squared", "kl_optimal", "kfac"],  # kfac: no inputs, a cell without a fit
        on_fit=lambda cell, target, approx: seen.append(bars[0].n),
        progress=True,
    )
    bar = bars[0]
    assert bar.total == 2 * 3 * 3 and bar.n == bar.total
    assert seen and all(n < bar.total for n in seen)
