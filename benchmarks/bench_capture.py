"""K-FAC factors end to end from a model and data: precond_lab's capture vs curvlinops.

The model is an MLP without biases, ``64 → h → h → 10`` with tanh (the hidden layer's
weight is ``h × h``), on ``N`` digits-sized inputs (64 features; the first ``N`` training
examples of the ``digits`` data set, labels its classes) with cross-entropy. Both sides get
the same weights and data, in chunks of ``--chunk`` examples, and compute the Kronecker
factors ``B = (1/N) Σ_n Σ_c δδᵀ`` and ``A = (1/N) Σ_n aaᵀ`` of every layer:

* precond_lab: ``capture_model(apply_fn, x, y, loss="cross_entropy", params=…,
  targets=["kfac-ggn"])`` (exact GGN backprops, the ``C`` columns of ``Λ^{1/2}``; with
  ``--fisher empirical`` the real-label ``kfac`` target), then
  ``precond_lab.estimators.kfac`` on each layer's captured activations and backprops;
* curvlinops: ``KFACLinearOperator(model, CrossEntropyLoss(), params, data,
  fisher_type="type-2")`` (or ``"empirical"``) and ``compute_kronecker_factors()``, told
  ``num_data`` and ``num_per_example_loss_terms`` so that it makes no extra pass.

Timings (``precond_lab.timing.interleaved``, median and quartiles, ratio precond_lab /
curvlinops per round):

* ``warm``: the second and later calls (precond_lab's compiled functions are cached
  across calls, see ``precond_lab.capture.cache``); the goal of the scale issue is a ratio
  ≤ 1 (``"below"``);
* ``cold``: every JAX cache emptied before each precond_lab call (``cache.clear()``,
  ``jax.clear_caches()`` and a garbage collection, on precond_lab's clock: tracing and XLA
  compilation of every kernel, down to the eager ops, included), against the same
  curvlinops call (PyTorch runs eagerly: it has no compile step to redo);
* ``first_call_s``: the very first call of each in this process (one number each).

The factors of the two agree to float rounding; the maximum relative difference (in the
timed dtype) is recorded per layer.

Usage: ``python benchmarks/bench_capture.py [--sizes 64 128 256] [--n 1024]``;
``--quick`` (32², N = 128, 5 rounds) is a smoke run; writes
``benchmarks/results/capture-<hostname>-<device>.json`` unless ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _machine import compile_count, machine_info, write_result  # noqa: E402

from precond_lab.capture import cache, capture_model, load_dataset  # noqa: E402
from precond_lab.estimators import kfac  # noqa: E402
from precond_lab.schema import KFAC_ACTIVATIONS, KFAC_BACKPROPS, Kind  # noqa: E402
from precond_lab.timing import block, interleaved, ratio, ratio_verdict  # noqa: E402

GOAL = 1.0  # warm end to end no slower than curvlinops
TARGET = {"type-2": ("kfac-ggn", Kind.GGN), "empirical": ("kfac", Kind.GRADIENTS)}


def problem(hidden: int, n: int, dtype: str, seed: int = 0):
    """``(weights, x, y)``: the MLP's ``(out, in)`` weights and the data, as NumPy arrays."""
    ds = load_dataset("digits")
    if n > len(ds.y_train):
        raise ValueError(f"--n {n} exceeds the {len(ds.y_train)} digits training examples")
    x = ds.x_train[:n].reshape(n, -1).astype(dtype)
    y = np.asarray(ds.y_train[:n], np.int64)
    rng = np.random.default_rng(seed)
    sizes = [x.shape[1], hidden, hidden, ds.output_dim]
    weights = [
        (rng.standard_normal((m, k)) / np.sqrt(k)).astype(dtype)
        for k, m in zip(sizes, sizes[1:], strict=False)
    ]
    return weights, x, y


def apply_fn(params, xb):
    """The MLP in JAX (weights ``(out, in)`` as PyTorch's ``Linear``)."""
    h = xb
    for i, w in enumerate(params):
        h = h @ w.T
        if i < len(params) - 1:
            h = jax.numpy.tanh(h)
    return h


def precond_lab_factors(weights, x, y, *, chunk: int, fisher: str) -> list:
    """``[(B, A), …]`` per layer (JAX arrays) from ``capture_model`` and ``estimators.kfac``."""
    target, kind = TARGET[fisher]
    params = [jax.device_put(w) for w in weights]
    tree = capture_model(
        apply_fn,
        x,
        y,
        loss="cross_entropy",
        params=params,
        targets=[target],
        num_samples=len(x),
        chunk_size=chunk,
        eval_samples=0,
    )
    step = tree["step_000000"]
    out = []
    for i in range(len(weights)):
        node = step[str(i)]
        k = kfac(node[KFAC_ACTIVATIONS].values, node[KFAC_BACKPROPS[kind]].values)
        out.append((k.left, k.right))
    return block(out)


def torch_problem(weights, x, y, chunk: int):
    """The same MLP and data in PyTorch: ``(model, params, batches)``."""
    import torch

    layers = []
    for i, w in enumerate(weights):
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(torch.nn.Tanh())
    model = torch.nn.Sequential(*layers).to(torch.from_numpy(weights[0]).dtype)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    batches = [(xt[s : s + chunk], yt[s : s + chunk]) for s in range(0, len(x), chunk)]
    return model, [p for p in model.parameters()], batches


def curvlinops_factors(model, params, batches, *, fisher: str) -> list:
    """``[(B, A), …]`` per layer (NumPy) from curvlinops' ``KFACLinearOperator``."""
    import torch
    from curvlinops import KFACLinearOperator

    n = sum(len(b[1]) for b in batches)
    op = KFACLinearOperator(
        model,
        torch.nn.CrossEntropyLoss(),
        params,
        batches,
        fisher_type=fisher,
        check_deterministic=False,
        num_data=n,
        num_per_example_loss_terms=1,
    )
    op.compute_kronecker_factors()
    names = [name for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)]
    return [(op._gradient_covariances[k].numpy(), op._input_covariances[k].numpy()) for k in names]


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _summary(t, name) -> dict:
    lo, hi = t.spread(name)
    return {"median_s": t.median(name), "q25_s": lo, "q75_s": hi}


def bench_size(hidden: int, *, n: int, chunk: int, fisher: str, dtype: str, repeats: int) -> dict:
    """Cold and warm timings, the first calls and the factors' agreement at one width."""
    weights, x, y = problem(hidden, n, dtype)
    model, params, batches = torch_problem(weights, x, y, chunk)

    def pl():
        return precond_lab_factors(weights, x, y, chunk=chunk, fisher=fisher)

    def pl_cold():
        cache.clear()
        jax.clear_caches()
        gc.collect()  # the cleared caches' garbage is collected on this side's clock
        return pl()

    def cl():
        return curvlinops_factors(model, params, batches, fisher=fisher)

    first = {}
    for name, fn in (("precond_lab", pl_cold), ("curvlinops", cl)):
        t0 = time.perf_counter()
        res = block(fn())
        first[name] = time.perf_counter() - t0
        if name == "precond_lab":
            ours = res
        else:
            theirs = res
    agree = {
        f"layer{i}": {"B": _rel(o[0], t[0]), "A": _rel(o[1], t[1])}
        for i, (o, t) in enumerate(zip(ours, theirs, strict=True))
    }
    out = {"first_call_s": first, "factor_rel_diff": agree}
    for mode, ours_fn in (("warm", pl), ("cold", pl_cold)):
        c0 = compile_count()
        t = interleaved({"precond_lab": ours_fn, "curvlinops": cl}, repeats=repeats, warmup=1)
        compiles = None if c0 is None else compile_count() - c0
        r = ratio(t, "precond_lab", "curvlinops")
        out[mode] = {
            "precond_lab": _summary(t, "precond_lab"),
            "curvlinops": _summary(t, "curvlinops"),
            "ratio_precond_lab_to_curvlinops": {"median": r.median, "q25": r.low, "q75": r.high},
            "versus_1": ratio_verdict(r, GOAL),
            "xla_compiles": compiles,
            "timings": t.as_dict(),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--n", type=int, default=1024, help="examples N")
    ap.add_argument("--chunk", type=int, default=256, help="examples per chunk / batch")
    ap.add_argument("--fisher", choices=sorted(TARGET), default="type-2")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="smoke run: size 32, N = 128")
    ap.add_argument("--out", default=None)
    cfg = ap.parse_args(argv)
    if cfg.quick:
        cfg.sizes, cfg.n, cfg.chunk, cfg.repeats = [32], 128, 64, 5
    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import torch

    results = {}
    for h in cfg.sizes:
        print(f"hidden {h}x{h} …", flush=True)
        row = bench_size(
            h, n=cfg.n, chunk=cfg.chunk, fisher=cfg.fisher, dtype=cfg.dtype, repeats=cfg.repeats
        )
        results[f"{h}x{h}"] = row
        for mode in ("warm", "cold"):
            r = row[mode]
            q = r["ratio_precond_lab_to_curvlinops"]
            print(
                f"  {mode}: precond_lab {r['precond_lab']['median_s'] * 1e3:8.1f} ms  "
                f"curvlinops {r['curvlinops']['median_s'] * 1e3:8.1f} ms  "
                f"ratio {q['median']:.2f} [{q['q25']:.2f}–{q['q75']:.2f}] ({r['versus_1']}, "
                f"{r['xla_compiles']} compiles)",
                flush=True,
            )
        worst = max(max(v.values()) for v in row["factor_rel_diff"].values())
        print(f"  first calls {row['first_call_s']}, factors' max rel diff {worst:.1e}")
    doc = {
        "benchmark": "capture",
        "machine": {
            **machine_info(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "config": {
            "model": "mlp 64-h-h-10, tanh, no biases, cross-entropy",
            "data": "digits training inputs (64 features)",
            "sizes": cfg.sizes,
            "n": cfg.n,
            "chunk": cfg.chunk,
            "fisher": cfg.fisher,
            "dtype": cfg.dtype,
            "repeats": cfg.repeats,
            "quick": cfg.quick,
        },
        "goal": "warm end to end ratio precond_lab/curvlinops ≤ 1 ('below')",
        "sizes": results,
    }
    write_result(doc, cfg.out, "capture")
    return doc


if __name__ == "__main__":
    main()
