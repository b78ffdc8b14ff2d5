"""K-FAC factors from capture_model agree with curvlinops' KFACLinearOperator (float64)."""

import jax.numpy as jnp
import numpy as np
import pytest

from precond_lab.capture import capture_model
from precond_lab.estimators import kfac
from precond_lab.schema import KFAC_ACTIVATIONS, KFAC_BACKPROPS, Kind

torch = pytest.importorskip("torch")
curvlinops = pytest.importorskip("curvlinops")

FISHER = {"type-2": ("kfac-ggn", Kind.GGN), "empirical": ("kfac", Kind.GRADIENTS)}


def _mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 4),
        torch.nn.Tanh(),
        torch.nn.Linear(4, 4),
        torch.nn.Tanh(),
        torch.nn.Linear(4, 3, bias=False),
    ).double()


def _apply(params, xb):
    (w0, b0), (w1, b1), w2 = params
    h = jnp.tanh(xb @ w0.T + b0)
    return jnp.tanh(h @ w1.T + b1) @ w2.T


@pytest.mark.parametrize("fisher", sorted(FISHER))
def test_factors_match_curvlinops(fisher):
    rng = np.random.default_rng(0)
    n, chunk = 12, 5  # uneven batches: the last one is short
    x, y = rng.standard_normal((n, 5)), rng.integers(0, 3, n)
    model = _mlp(0)
    w = [p.detach().numpy() for p in model.parameters()]
    params = [(w[0], w[1]), (w[2], w[3]), w[4]]
    params = [
        tuple(jnp.asarray(a) for a in p) if isinstance(p, tuple) else jnp.asarray(p) for p in params
    ]
    target, kind = FISHER[fisher]
    tree = capture_model(
        _apply,
        x,
        y,
        loss="cross_entropy",
        params=params,
        targets=[target],
        num_samples=n,
        batch_size=4,
        chunk_size=chunk,
        dtype="float64",
    )
    step = tree["step_000000"]

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    batches = [(xt[s : s + chunk], yt[s : s + chunk]) for s in range(0, n, chunk)]
    op = curvlinops.KFACLinearOperator(
        model,
        torch.nn.CrossEntropyLoss(),
        list(model.parameters()),
        batches,
        fisher_type=fisher,
        check_deterministic=False,
    )
    op.compute_kronecker_factors()
    for i, name in enumerate(["0", "2", "4"]):
        path = f"{i}/0" if i < 2 else "2"
        node = step[path]
        k = kfac(node[KFAC_ACTIVATIONS].values, node[KFAC_BACKPROPS[kind]].values)
        b_ref = op._gradient_covariances[name].numpy()
        a_ref = op._input_covariances[name].numpy()
        np.testing.assert_allclose(np.asarray(k.left), b_ref, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(np.asarray(k.right), a_ref, rtol=1e-10, atol=1e-14)
        if i < 2:  # the bias is its own layer: inputs one, the weight's output factor
            bias = step[f"{i}/1"]
            kb = kfac(bias[KFAC_ACTIVATIONS].values, bias[KFAC_BACKPROPS[kind]].values)
            np.testing.assert_allclose(np.asarray(kb.left), b_ref, rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(np.asarray(kb.right), [[1.0]], rtol=1e-12)
