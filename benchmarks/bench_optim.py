"""Per-step time and state memory of the optimisers of :mod:`precond_lab.optim`.

For each size ``n`` one ``n×n`` weight matrix is optimised with a fixed gradient. A timed call
runs ``T`` (the refresh interval, ``--frequency``) jitted optimiser steps under ``lax.scan``
from the same post-initialisation state, so each call contains exactly one basis/root
refresh; the per-step time is the call's time divided by ``T``. All optimisers of one size
are timed in interleaved rounds (:func:`precond_lab.timing.interleaved`), and every time is
reported as a ratio to AdamW's in the same rounds, with quartiles. State memory is
:func:`precond_lab.optim.state_size` (bytes), also as a ratio to AdamW's.

The goal of P1-19 on the whole optimiser step, KL-Shampoo's and KL-SOAP's per-step time
within 1.5× of SOAP's at equal refresh interval, is reported per size as
``"below"``/``"above"``/``"inconclusive"`` (:func:`precond_lab.timing.ratio_verdict`).

Usage: ``python benchmarks/bench_optim.py [--sizes 256 1024 4096] [--frequency 10]``; writes
``benchmarks/results/optim-<hostname>-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(__file__))
from _machine import device_memory, machine_info, write_result  # noqa: E402

import precond_lab.optim as po  # noqa: E402
from precond_lab.timing import optimiser_step_timings, ratio, ratio_verdict  # noqa: E402

BATCH = 128  # B of the root-free methods (any value; it only scales their statistics)
GOAL = 1.5  # P1-19: KL-Shampoo/KL-SOAP per-step time ≤ 1.5 × SOAP's


def optimisers(frequency: int, state_dtype) -> dict[str, optax.GradientTransformation]:
    """The benchmarked optimisers at equal refresh interval ``frequency``."""
    dt = {"state_dtype": state_dtype}
    return {
        "adamw": po.adamw(1e-3),
        "kl_shampoo": po.kl_shampoo(1e-3, frequency=frequency, **dt),
        "kl_soap": po.kl_soap(1e-3, frequency=frequency, **dt),
        "sq_shampoo": po.sq_shampoo(1e-3, frequency=frequency, **dt),
        "soap": po.soap(1e-3, frequency=frequency, **dt),
        "shampoo_graft": po.shampoo(1e-3, frequency=frequency, **dt),
        "if_shampoo": po.if_shampoo(1e-3, batch_size=BATCH, frequency=1, **dt),
        "rf_rmsprop": po.rf_rmsprop(1e-3, batch_size=BATCH, **dt),
        "muon": po.muon(1e-3, **dt),
        "psgd_kron": po.psgd_kron(1e-3, **dt),  # updates its factors every step
        "splus": po.splus(1e-3, inverse_every=frequency, **dt),
    }


def bench_size(n: int, *, frequency: int, repeats: int, dtype, state_dtype) -> dict:
    """Time and size every optimiser on one ``n×n`` matrix."""
    t, states = optimiser_step_timings(
        optimisers(frequency, state_dtype), n, steps=frequency, repeats=repeats, dtype=dtype
    )
    ops = list(states)
    sizes = {name: po.state_size(state)._asdict() for name, state in states.items()}
    out = {"timings_per_call": t.as_dict(), "steps_per_call": frequency, "optimisers": {}}
    for name in ops:
        r = ratio(t, name, "adamw")
        out["optimisers"][name] = {
            "per_step_s": t.median(name) / frequency,
            "per_step_q25_s": t.spread(name)[0] / frequency,
            "per_step_q75_s": t.spread(name)[1] / frequency,
            "time_ratio_to_adamw": {"median": r.median, "q25": r.low, "q75": r.high},
            "state": sizes[name],
            "state_bytes_ratio_to_adamw": sizes[name]["bytes"] / sizes["adamw"]["bytes"],
        }
    out["goal_within_1.5x_of_soap"] = {}
    for name in ("kl_shampoo", "kl_soap"):
        r = ratio(t, name, "soap")
        out["goal_within_1.5x_of_soap"][name] = {
            "ratio_to_soap": {"median": r.median, "q25": r.low, "q75": r.high},
            "versus_1.5": ratio_verdict(r, GOAL),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--frequency", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", default="float32", help="parameter/gradient dtype")
    ap.add_argument("--state-dtype", default=None, help="optimiser state dtype (default: dtype)")
    ap.add_argument("--out", default=None)
    cfg = ap.parse_args(argv)
    dtype = jnp.dtype(cfg.dtype)
    state_dtype = None if cfg.state_dtype is None else jnp.dtype(cfg.state_dtype)
    mem = device_memory()
    limit = None if mem is None else mem.get("bytes_limit")
    results, skipped = {}, {}
    for n in cfg.sizes:
        # ~ 8 optimisers' states (≤ 4n² floats each) + scan carries; skip what cannot fit
        need = 40 * n * n * dtype.itemsize
        if limit is not None and need > 0.8 * limit:
            skipped[str(n)] = f"needs ~{need / 2**30:.1f} GiB of {limit / 2**30:.1f} GiB"
            continue
        print(f"n={n} …", flush=True)
        results[str(n)] = bench_size(
            n, frequency=cfg.frequency, repeats=cfg.repeats, dtype=dtype, state_dtype=state_dtype
        )
        for name, row in results[str(n)]["optimisers"].items():
            r = row["time_ratio_to_adamw"]
            print(
                f"  {name:14s} {row['per_step_s'] * 1e3:9.3f} ms/step  "
                f"{r['median']:6.2f}× AdamW [{r['q25']:.2f}–{r['q75']:.2f}]  "
                f"state {row['state_bytes_ratio_to_adamw']:.2f}× AdamW",
                flush=True,
            )
        print("  goal:", json.dumps(results[str(n)]["goal_within_1.5x_of_soap"]), flush=True)
    doc = {
        "benchmark": "optim",
        "machine": machine_info(),
        "config": {
            "sizes": cfg.sizes,
            "frequency": cfg.frequency,
            "repeats": cfg.repeats,
            "dtype": str(dtype),
            "state_dtype": str(state_dtype or dtype),
            "batch_size_root_free": BATCH,
        },
        "sizes": results,
        "skipped": skipped,
    }
    write_result(doc, cfg.out, "optim")
    return doc


if __name__ == "__main__":
    main()
