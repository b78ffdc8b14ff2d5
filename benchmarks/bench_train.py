"""Training throughput of tuning runs: runs per minute, one at a time vs vectorised.

A run is :func:`precond_lab.tuning.model_method`'s traced training run (an MLP
64 → h → h → 10 on ``digits``, batch 32, ``--steps`` updates under ``lax.scan`` with a
warmup + cosine schedule, then the test loss). For ``--lrs L`` learning rates of one seed
each optimiser is timed two ways, compiled once each (warm-up excluded):

* ``sequential``: one jitted run, called L times (the learning rate is an input);
* ``vmap``: ``jax.jit(jax.vmap(run))`` over the L rates in one call.

KL-Shampoo's run contains ``eigh`` and ``qr``; jaxlib's batched CPU kernels of them can
deadlock XLA:CPU under ``vmap`` (``benchmarks/repro_vmap_lapack_hang.py``), so the methods
loop over a vmapped batch on CPU (``precond_lab.methods._ops``): its ``vmap`` variant is
that. ``--kl-vmap skip`` leaves it out.

All variants are timed in interleaved rounds (:func:`precond_lab.timing.interleaved`);
the result gives runs per minute (median and quartiles) and the vectorised/sequential
speed-up per optimiser.

Usage: ``python benchmarks/bench_train.py [--hidden 128] [--steps 100] [--lrs 8]``;
``--quick`` is a smoke run. Writes ``benchmarks/results/train-<hostname>-<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _machine import machine_info, write_result  # noqa: E402

import precond_lab.optim as po  # noqa: E402
from precond_lab.capture.data import load_dataset  # noqa: E402
from precond_lab.capture.models import make_model  # noqa: E402
from precond_lab.timing import interleaved  # noqa: E402
from precond_lab.tuning import model_method  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lrs", type=int, default=8, help="learning rates per vectorised call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kl-vmap", choices=("vmap", "skip"), default="vmap")
    ap.add_argument("--quick", action="store_true", help="smoke run: h=32, 5 steps, 2 rates")
    ap.add_argument("--out", default=None)
    cfg = ap.parse_args(argv)
    if cfg.quick:
        cfg.hidden, cfg.steps, cfg.lrs, cfg.repeats = 32, 5, 2, 5
    ds = load_dataset("digits")
    model = make_model("mlp", ds, hidden=(cfg.hidden, cfg.hidden))
    common = dict(steps=cfg.steps, batch_size=32, warmup_steps=max(1, cfg.steps // 10))
    methods = {
        "adamw": model_method("adamw", model, ds, po.adamw, **common),
        "kl_shampoo": model_method("kl_shampoo", model, ds, po.kl_shampoo, **common),
    }
    lrs = jnp.asarray(np.exp2(np.linspace(-12, -6, cfg.lrs)), jnp.float32)
    seed = jnp.int32(0)
    ops, compile_s = {}, {}

    def add(name, fn):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())  # compilation + first run
        compile_s[name] = time.perf_counter() - t0
        ops[name] = fn
        print(f"  {name:24s} first call {compile_s[name]:7.2f} s", flush=True)

    for name, m in methods.items():
        one = jax.jit(m.run)
        add(f"{name}/sequential", lambda one=one: [one(lr, seed) for lr in lrs])
        if name == "adamw" or cfg.kl_vmap == "vmap":
            vec = jax.jit(jax.vmap(m.run, in_axes=(0, None)))
            add(f"{name}/vmap", lambda vec=vec: vec(lrs, seed))
    t = interleaved(ops, repeats=cfg.repeats, warmup=0)
    results = {}
    for name in ops:
        q25, q75 = t.spread(name)
        results[name] = {
            "seconds_per_call": t.median(name),
            "runs_per_call": cfg.lrs,
            "runs_per_minute": 60.0 * cfg.lrs / t.median(name),
            "runs_per_minute_q25_q75": [60.0 * cfg.lrs / q75, 60.0 * cfg.lrs / q25],
            "first_call_seconds": compile_s[name],
        }
        print(f"  {name:24s} {results[name]['runs_per_minute']:9.1f} runs/min", flush=True)
    speedups = {}
    for name in methods:
        vec = [k for k in ops if k.startswith(name + "/vmap")]
        if vec:
            speedups[name] = {
                "variant": vec[0].split("/")[1],
                "vectorised_over_sequential": t.median(f"{name}/sequential") / t.median(vec[0]),
            }
    doc = {
        "benchmark": "train",
        "machine": machine_info(),
        "load_average_after": list(os.getloadavg()),
        "config": {
            "model": f"mlp 64-{cfg.hidden}-{cfg.hidden}-10",
            "dataset": "digits",
            "steps": cfg.steps,
            "batch_size": 32,
            "learning_rates": np.asarray(lrs).tolist(),
            "repeats": cfg.repeats,
            "kl_vmap": cfg.kl_vmap,
            "quick": cfg.quick,
        },
        "timings_per_call": t.as_dict(),
        "variants": results,
        "speedup": speedups,
    }
    print("  speed-up:", speedups, flush=True)
    write_result(doc, cfg.out, "train")
    return doc


if __name__ == "__main__":
    main()
