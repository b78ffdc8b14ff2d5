"""A built-in demo: every estimator scored by every metric on real gradients.

The example is a softmax-regression layer (``W`` of shape ``C × (d+1)``) trained for a
few steps on scikit-learn's digits. For a linear layer the per-example quantities are
closed-form, so the demo needs no capture machinery:

* empirical Fisher (real labels): ``G_i = (p_i − e_{y_i}) x_iᵀ``;
* Gauss–Newton / Fisher (exact): pseudo-gradients ``b_{i,c} = √p_{ic} (e_c − p_i) x_iᵀ``,
  since ``Λ = diag(p) − ppᵀ = M Mᵀ`` with columns ``M e_c = √p_c (e_c − p)``;
* K-FAC inputs: ``a_i = x_i`` and ``δ_{i,c} = √p_{ic} (e_c − p_i)``.

``mn`` is small enough (10 × 62 = 620) that the demo also builds the dense ``Σ`` and
reports how far each matrix-free number is from its dense float64 reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
import scipy.linalg

from . import estimators as est
from . import reference as ref
from . import schema
from .sweep import evaluate
from .targets import FactoredTarget

__all__ = [
    "DemoProblem",
    "demo_estimators",
    "demo_targets",
    "digits_softmax_problem",
    "run_demo",
    "format_table",
]


@dataclass
class DemoProblem:
    """Per-example matrices of the demo layer and what they came from."""

    gradients: np.ndarray  # (N, C, d+1) real-label per-example gradients
    ggn: np.ndarray  # (N, C, C, d+1) exact Gauss–Newton pseudo-gradients
    activations: np.ndarray  # (N, d+1)
    backprops: np.ndarray  # (N, C, C)
    accuracy: float
    loss: float


def digits_softmax_problem(steps: int = 30, lr: float = 0.5, seed: int = 0) -> DemoProblem:
    """Train softmax regression on digits with full-batch GD and take its gradients."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data / 16.0
    x = x[:, x.std(axis=0) > 0]  # drop pixels that are constant over the data set
    x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    y = data.target
    n_classes = 10
    onehot = np.eye(n_classes)[y]
    rng = np.random.default_rng(seed)
    w = 0.01 * rng.standard_normal((n_classes, x.shape[1]))
    for _ in range(steps):
        p = _softmax(x @ w.T)
        w -= lr * (p - onehot).T @ x / x.shape[0]
    p = _softmax(x @ w.T)
    loss = float(-np.mean(np.log(p[np.arange(len(y)), y])))
    accuracy = float(np.mean(p.argmax(1) == y))
    gradients = (p - onehot)[:, :, None] * x[:, None, :]
    # δ_{i,c} = √p_c (e_c − p): shape (N, C[class], C[out])
    backprops = np.sqrt(p)[:, :, None] * (np.eye(n_classes)[None] - p[:, None, :])
    ggn = backprops[..., None] * x[:, None, None, :]
    return DemoProblem(gradients, ggn, x, backprops, accuracy, loss)


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def demo_estimators() -> list[str]:
    """The demo's table: every registered estimator (its representative spec), plus
    ``power_iteration(1)`` (Shampoo² by another road) where power iteration is registered."""
    specs = [spec.example for spec in est.ESTIMATORS.values()]
    if "power_iteration" in est.ESTIMATORS:
        specs.insert(specs.index(est.ESTIMATORS["power_iteration"].example), "power_iteration(1)")
    return specs


def demo_targets(problem: DemoProblem, dtype=np.float64) -> dict[str, FactoredTarget]:
    """The demo's two targets from the factors of its rank-one per-example matrices.

    ``G_i = (p_i − e_{y_i}) x_iᵀ`` and ``b_{i,c} = δ_{i,c} x_iᵀ``: a ``FactoredTarget``
    (``K = C`` pseudo-samples per example for the GGN, sharing its weight ``1/N``) makes
    every pass cost ``m + n`` per sample instead of ``m·n``. The dense check of
    ``run_demo`` builds ``Σ`` from the dense matrices instead, independently.
    """
    x = problem.activations.astype(dtype)
    n, c = x.shape[0], problem.gradients.shape[1]
    residual = problem.gradients[:, :, -1]  # the bias column of G_i is (p_i − e_{y_i}) · 1
    return {
        "empirical_fisher": FactoredTarget(residual.astype(dtype), x),
        "ggn": FactoredTarget(
            problem.backprops[:, :, None, :].astype(dtype),
            np.broadcast_to(x[:, None, None, :], (n, c, 1, x.shape[1])),
        ),
    }


def run_demo(check_dense: bool = True, dtype=np.float64, steps: int = 30, progress=False) -> dict:
    """Estimate and score every registered estimator on both demo targets, through the sweep.

    Every estimator fits ``Σ + λI`` with ``λ = 10⁻³ tr(Σ)/(mn)`` (the sweep's relative
    damping); K-FAC, built from activations and backprops, gets ``√λ`` on each factor.

    Returns:
        ``{"problem": DemoProblem, "rows": [dict, ...], "damping": {target: λ},
        "dataset": the sweep's Dataset}`` with one row per (target, estimator): the
        metrics, the fit time, and (if ``check_dense``) the largest relative deviation of
        the metrics from the dense float64 reference.
    """
    problem = digits_softmax_problem(steps=steps)
    samples = {"empirical_fisher": problem.gradients, "ggn": problem.ggn}
    bags = demo_targets(problem, dtype)
    sigmas: dict[str, tuple] = {}  # dense Σ + λI and its eigenvalues, once per target
    dense: dict[tuple[str, str], dict[str, float]] = {}

    def dense_check(cell, target, approx):
        kind = cell["target"]
        if kind not in sigmas:
            sigma = ref.target_matrix(*schema.sample_bag(samples[kind]))
            sigma = sigma + getattr(target, "damping", 0.0) * np.eye(sigma.shape[0])
            sigmas[kind] = (sigma, scipy.linalg.eigh(sigma, eigvals_only=True))
        dense[(kind, cell["estimator"])] = _dense_metrics(*sigmas[kind], approx)

    ds = evaluate(
        bags,
        demo_estimators(),
        damping=1e-3,
        damping_mode="relative",
        kfac_inputs={"ggn": (problem.activations, problem.backprops)},
        progress=progress,
        on_fit=dense_check if check_dense else None,
    )
    cell = ds.isel(step=0, layer=0)
    rows = []
    for target in bags:
        for name in ds["estimator"].values:
            c = cell.sel(target=target, estimator=name)
            if str(c["status"].item()) != "ok":
                continue  # e.g. K-FAC on the empirical Fisher: no activations given
            row = {"target": target, "estimator": str(name), "seconds": float(c["fit_seconds"])}
            row.update(
                {
                    str(k): float(v)
                    for k, v in zip(ds["metric"].values, c["score"].values, strict=True)
                }
            )
            if check_dense:
                row["dense_deviation"] = max(
                    abs(row[k] - v) / max(abs(v), 1e-300)
                    for k, v in dense[(target, str(name))].items()
                )
            rows.append(row)
    damping = {t: float(cell["damping"].sel(target=t)) for t in bags}
    return {"problem": problem, "rows": rows, "damping": damping, "dataset": ds}


def _dense_metrics(sigma, sigma_eigenvalues, approx) -> dict[str, float]:
    """The dense float64 references of the table's checked metrics, from the explicit
    ``(mn, mn)`` matrices. The von Neumann divergence uses ``Σ``'s eigenvalues, computed
    once per target, and one eigendecomposition of ``S`` (``ref.von_neumann_divergence``
    would redo ``Σ``'s each time); KL is ``ref.kl_divergence`` (LU solves, which stay
    accurate for the ill-conditioned fits)."""
    s = np.asarray(approx.to_dense(), np.float64)
    ws, qs = scipy.linalg.eigh(s)
    wx = np.clip(sigma_eigenvalues, 0.0, None)
    x_in_s = np.sum(qs * (sigma @ qs), axis=0)  # diag(Qᵀ Σ Q), Q = S's eigenvectors
    x_log_x = float(np.sum(np.where(wx > 0, wx * np.log(np.where(wx > 0, wx, 1.0)), 0.0)))
    vn = x_log_x - np.sum(x_in_s * np.log(ws)) - np.trace(sigma) + np.sum(ws)
    return {
        "cosine": ref.cosine_similarity(sigma, s),
        "relative_frobenius": ref.relative_frobenius_error(sigma, s),
        "kl": ref.kl_divergence(sigma, s),
        "von_neumann": float(vn),
    }


def format_table(result: dict) -> str:
    """A plain-text table of ``run_demo``'s rows."""
    p = result["problem"]
    cols = [
        ("estimator", "{:<24}"),
        ("cosine", "{:>8.5f}"),
        ("relative_frobenius_rescaled", "{:>9.4f}"),
        ("kl_rescaled", "{:>10.3f}"),
        ("kl", "{:>12.4g}"),
        ("von_neumann", "{:>10.4g}"),
        ("seconds", "{:>8.3f}"),
    ]
    heads = ["estimator", "cosine", "relF(c*)", "KL(c*)", "KL", "vN", "time[s]"]
    has_dense = "dense_deviation" in result["rows"][0]
    if has_dense:
        cols.append(("dense_deviation", "{:>10.1e}"))
        heads.append("vs dense")
    n_ex, n_cls, n_in = p.gradients.shape
    lines = [
        f"precond_lab demo: softmax regression on sklearn digits (N={n_ex}, W is "
        f"{n_cls}×{n_in}, Σ is {n_cls * n_in}×{n_cls * n_in}); train loss {p.loss:.3f}, "
        f"accuracy {p.accuracy:.3f}",
        "Every estimator fits X = Σ + λI. relF(c*): ‖X − c*S‖/‖X‖ at the Frobenius-optimal "
        "scalar; KL = KL(N(0,X) ‖ N(0,S)) (c*: at the KL-optimal scalar), the objective "
        "kl_optimal minimises; vN = D_vN(X, S), which shampoo_squared minimises; vs dense: max "
        "relative deviation of these numbers from the dense float64 reference.",
    ]
    for target in dict.fromkeys(r["target"] for r in result["rows"]):
        lines.append("")
        lines.append(f"target: {target}  (damping λ = {result['damping'][target]:.3g})")
        widths = [len(fmt.format(0 if i else "x")) for i, (_, fmt) in enumerate(cols)]
        pairs = enumerate(zip(heads, widths, strict=True))
        lines.append(" ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in pairs))
        for r in result["rows"]:
            if r["target"] == target:
                lines.append(" ".join(fmt.format(r[k]) for k, fmt in cols))
    return "\n".join(lines)


def main(check_dense: bool = True) -> int:
    """Run the demo in float64 and print its table."""
    jax.config.update("jax_enable_x64", True)
    result = run_demo(check_dense=check_dense, dtype=np.float64)
    print(format_table(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
