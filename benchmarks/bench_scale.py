#!/usr/bin/env python
"""Benchmark the scale paths: factored targets, the one-Gram spectrum, batched scoring.

Sections (``--sections``, all by default):

* ``naive`` — against a straightforward NumPy/einsum implementation of each quantity
  (L and R by einsum, ``‖Σ‖_F`` and the log-det from one Gram matrix and one
  ``eigvalsh``), on dense samples (``ratio = precond_lab / naive``; goal < 1) and on
  factored samples (the naive code on the rebuilt dense ``G``; goal ≤ 0.1).
* ``passes`` — factored vs dense per pass (``contract_left``, ``second_moments``,
  ``rotated_diagonal``, the Gram matrix) at ``T`` terms per sample, with the cost
  model's choice, and each dense pass's fraction of a yardstick: the best of a square
  and a tall float32 matmul with the pass's flops, timed interleaved with it.
* ``headline`` — a GGN target, ``N`` examples × ``C`` classes, factored ``m × n``: every
  registered estimator, then cosine + forward KL (``damping``) of each through one
  batched :func:`~precond_lab.metrics.score` (one Gram, one Cholesky); wall seconds.
* ``memory`` — peak resident memory each dense pass adds above the samples, in chunks,
  on both executors, and the Gram phase's in ``N × N`` buffers.
* ``compiles`` — XLA compilations for a new ``N`` in the same bucket after warm-up.

Every timing goes through :func:`precond_lab.timing.interleaved` (warm-up excluded,
rotated rounds); the JSON records medians and quartiles, peak RSS and the machine.

Examples::

    python benchmarks/bench_scale.py --quick --out /tmp/scale.json      # smoke, < 1 min
    python benchmarks/bench_scale.py --out benchmarks/results/         # the real sizes
    python benchmarks/bench_scale.py --sections headline --headline 4096x4096x1024x10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import scipy.linalg  # noqa: E402
from _machine import (  # noqa: E402
    compile_count,
    machine_info,
    peak_extra_bytes,
    peak_rss_bytes,
    result_path,
)

from precond_lab import estimators as est  # noqa: E402
from precond_lab import metrics as met  # noqa: E402
from precond_lab.targets import FactoredTarget, SampleTarget  # noqa: E402
from precond_lab.timing import interleaved, ratio  # noqa: E402

DAMPING = 1e-3
_PLAN_KEY = {
    "contract_left": "contract",
    "second_moments": "moments",
    "rotated_diagonal": "rotated_diagonal",
    "gram": "gram",
}


def _ratio_dict(t, num, den):
    r = ratio(t, num, den)
    return {"median": r.median, "low": r.low, "high": r.high}


def _median(t, name):
    return float(np.median(t.seconds[name]))


# --------------------------------------------------------------------------------------
# The naive baseline: what a researcher writes in an afternoon.
# --------------------------------------------------------------------------------------


def naive_moments(g):
    n = g.shape[0]
    return np.einsum("kij,klj->il", g, g) / n, np.einsum("kji,kjl->il", g, g) / n


def naive_shampoo_squared(g):
    left, right = naive_moments(g)
    return left, right, 1.0 / np.trace(left)


def naive_gram_eigs(g):
    x = g.reshape(g.shape[0], -1)
    return scipy.linalg.eigvalsh(x @ x.T / g.shape[0])


def naive_cosine(g, left, right, scale):
    n = g.shape[0]
    inner = scale * np.einsum("kij,il,klm,jm->", g, left, g, right, optimize=True) / n
    x = g.reshape(n, -1)
    k = x @ x.T / n
    norm_t = np.sqrt(np.sum(k * k))
    return inner / (norm_t * abs(scale) * np.linalg.norm(left) * np.linalg.norm(right))


def naive_kl(g, left, right, scale, damping):
    """Forward KL(Σ+λI ‖ S) for S = scale·L⊗R through factor eigendecompositions."""
    n, m, nn = g.shape
    wl, ql = np.linalg.eigh(left)
    wr, qr = np.linalg.eigh(right)
    d = scale * np.outer(wl, wr)
    rot = np.einsum("im,kij,jn->kmn", ql, g, qr, optimize=True)
    delta = np.mean(rot**2, axis=0) + damping
    mu = naive_gram_eigs(g)
    logdet_x = np.sum(np.log(np.maximum(mu, 0) + damping)) + (m * nn - mu.size) * np.log(damping)
    return 0.5 * (np.sum(delta / d) - m * nn + np.sum(np.log(d)) - logdet_x)


def naive_score(g, damping):
    left, right, scale = naive_shampoo_squared(g)
    return naive_cosine(g, left, right, scale), naive_kl(g, left, right, scale, damping)


def _ours(t, approx):
    return {
        "shampoo_squared": lambda: est.shampoo_squared(t).left,
        "cosine_similarity": lambda: met.cosine_similarity(t, approx),
        "kl_divergence": lambda: met.kl_divergence(t, approx, damping=DAMPING),
        # the naive score's two quantities (cosine + forward KL), from one score() call
        "score": lambda: met.score(t, approx, damping=DAMPING, metrics=("cosine", "kl")),
    }


def _theirs(g, approx):
    left, right, scale = (np.asarray(approx.left), np.asarray(approx.right), float(approx.scale))
    return {
        "shampoo_squared": lambda: naive_shampoo_squared(g),
        "cosine_similarity": lambda: naive_cosine(g, left, right, scale),
        "kl_divergence": lambda: naive_kl(g, left, right, scale, DAMPING),
        "score": lambda: naive_score(g, DAMPING),
    }


def section_naive(sizes, repeats, rng):
    out = []
    for m, n, num in sizes:
        u = rng.standard_normal((num, 1, m)).astype(np.float32)
        v = rng.standard_normal((num, 1, n)).astype(np.float32)
        g = np.einsum("ktm,ktn->kmn", u, v)
        g_dense = (g + 0.1 * rng.standard_normal(g.shape)).astype(np.float32)  # full rank
        for form, data in (("dense", g_dense), ("factored", g)):

            def target(form=form, data=data, u=u, v=v):
                if form == "dense":
                    return SampleTarget(data)
                return FactoredTarget(u, v)

            approx = est.shampoo_squared(target())
            ops, base = {}, {}
            for name in _ours(None, approx):
                # a fresh target per call: nothing cached across calls (the Gram included)
                ops[f"ours:{name}"] = lambda name=name, t=target, s=approx: _ours(t(), s)[name]()
                base[f"naive:{name}"] = _theirs(data, approx)[name]
            t = interleaved({**ops, **base}, repeats=repeats)
            for name in _ours(None, approx):
                out.append(
                    {
                        "m": m,
                        "n": n,
                        "N": num,
                        "samples": form,
                        "quantity": name,
                        "seconds": _median(t, f"ours:{name}"),
                        "naive_seconds": _median(t, f"naive:{name}"),
                        "ratio": _ratio_dict(t, f"ours:{name}", f"naive:{name}"),
                    }
                )
                print(
                    f"naive {m}x{n} N={num} {form:8s} {name:18s} "
                    f"ratio {out[-1]['ratio']['median']:.3f}",
                    flush=True,
                )
    return out


# --------------------------------------------------------------------------------------
# Factored vs dense passes, and the matmul yardstick.
# --------------------------------------------------------------------------------------


def _yardstick(flops):
    """Square ``(s×s)(s×s)`` and tall ``(64k×k)(k×k)`` float32 matmuls with about ``flops``
    flops, each by XLA (jitted) and by NumPy's BLAS: the best of them is the yardstick."""
    s = max(8, int(round((flops / 2) ** (1 / 3))))
    tall_k = max(8, int(round((flops / (2 * 64)) ** (1 / 3))))  # (64·k, k) @ (k, k): 128k³ flops
    a = np.random.default_rng(1).standard_normal((s, s)).astype(np.float32)
    a2 = np.random.default_rng(4).standard_normal((s, s)).astype(np.float32)
    b = np.random.default_rng(2).standard_normal((64 * tall_k, tall_k)).astype(np.float32)
    c = np.random.default_rng(3).standard_normal((tall_k, tall_k)).astype(np.float32)
    ja, jb, jc = jnp.asarray(a), jnp.asarray(b), jnp.asarray(c)
    f = jax.jit(jnp.matmul)
    square, tall = 2.0 * s**3, 2.0 * 64 * tall_k**3
    return {
        "square_xla": (lambda: f(ja, jnp.asarray(a2)), square),
        "tall_xla": (lambda: f(jb, jc), tall),
        "square_blas": (lambda: a @ a2, square),  # not a @ a.T: that would be a syrk
        "tall_blas": (lambda: b @ c, tall),
    }


def section_passes(m, n, num, terms_list, repeats, rng):
    out = []
    for terms in terms_list:
        u = rng.standard_normal((num, terms, m)).astype(np.float32)
        v = rng.standard_normal((num, terms, n)).astype(np.float32)
        fac = FactoredTarget(u, v)  # the cost model's choice
        dense = SampleTarget(np.einsum("ktm,ktn->kmn", u, v))
        b = jnp.eye(n, dtype=jnp.float32)
        qa = jnp.asarray(np.linalg.qr(rng.standard_normal((m, m)))[0], jnp.float32)
        qb = jnp.asarray(np.linalg.qr(rng.standard_normal((n, n)))[0], jnp.float32)
        passes = {
            "contract_left": lambda t, b=b: t.contract_left(b),
            "second_moments": lambda t: t.second_moments(),
            "rotated_diagonal": lambda t, qa=qa, qb=qb: t.rotated_diagonal(qa, qb),
            "gram": lambda t: t.gram().k,
        }
        pass_flops = {  # dense flops of each pass
            "contract_left": 2.0 * num * m * n * (m + n),
            "second_moments": 2.0 * num * m * n * (m + n),
            "rotated_diagonal": 2.0 * num * m * n * (m + n),
            "gram": 2.0 * num * num * m * n / 2,
        }
        for name, fn in passes.items():
            ops = {
                "factored": lambda fn=fn, t=fac: fn(_fresh(t)),
                "dense": lambda fn=fn, t=dense: fn(_fresh(t)),
            }
            # the dense pass does not depend on T: its yardstick is timed with T = 1 only
            yard = _yardstick(pass_flops[name]) if terms == terms_list[0] else {}
            ops.update({k: f for k, (f, _) in yard.items()})
            t = interleaved(ops, repeats=repeats)
            best = max((fl / _median(t, k) for k, (_, fl) in yard.items()), default=None)
            achieved = pass_flops[name] / _median(t, "dense")
            row = {
                "m": m,
                "n": n,
                "N": num,
                "T": terms,
                "pass": name,
                "plan": fac.plan[_PLAN_KEY[name]],
                "factored_seconds": _median(t, "factored"),
                "dense_seconds": _median(t, "dense"),
                "speedup": 1.0 / ratio(t, "factored", "dense").median,
                "dense_gflops": achieved / 1e9,
                "dense_executor": dense.executor,
                "yardstick_gflops": None if best is None else best / 1e9,
                "yardstick_seconds": {k: _median(t, k) for k in yard},
                "dense_fraction_of_yardstick": None if best is None else achieved / best,
            }
            out.append(row)
            frac = row["dense_fraction_of_yardstick"]
            print(
                f"pass {m}x{n} N={num} T={terms} {name:16s} plan={row['plan']:8s} "
                f"speedup {row['speedup']:.1f}x dense/yardstick "
                f"{'-' if frac is None else f'{frac:.2f}'}",
                flush=True,
            )
    return out


def _fresh(t):
    t._cache.clear()  # the Gram is cached per target: time the computation, not the cache
    return t


# --------------------------------------------------------------------------------------
# The headline and the compile count.
# --------------------------------------------------------------------------------------


def section_headline(m, n, num, classes, rng):
    u = (rng.standard_normal((num, classes, 1, m)) / np.sqrt(m)).astype(np.float32)
    v = np.broadcast_to(rng.standard_normal((num, 1, 1, n)).astype(np.float32), u.shape[:-1] + (n,))
    t0 = time.perf_counter()
    target = FactoredTarget(u, v)
    # N·C < mn: Σ is singular, so the KL fits and the forward KL need λ > 0; the usual
    # relative damping, λ = 1e-3·tr(Σ)/(mn), for the fits and the scores alike
    damping = DAMPING * float(target.trace()) / (m * n)
    damped = target.damped(damping)
    kfac_inputs = (v[:, 0, 0], u[:, :, 0])  # K-FAC on the same layer: a (N, n), δ (N, C, m)
    fits, fit_seconds = {}, {}
    for name, spec in est.ESTIMATORS.items():
        t1 = time.perf_counter()
        try:
            ctx = est.FitContext(damped, damping=damping, kind="ggn", kfac_inputs=kfac_inputs)
            fits[name] = est.build(spec.example, ctx)
        except Exception as exc:  # recorded, not hidden
            fit_seconds[name] = {
                "failed": f"{type(exc).__name__}: {exc}",
                "seconds": time.perf_counter() - t1,
            }
            print(f"headline fit {name:20s} FAILED {exc}", flush=True)
            continue
        jax.block_until_ready(jax.tree_util.tree_leaves(fits[name]))
        fit_seconds[name] = time.perf_counter() - t1
        print(f"headline fit {name:20s} {fit_seconds[name]:.1f}s", flush=True)
    t1 = time.perf_counter()
    scores = met.score(target, list(fits.values()), damping=damping, metrics=("cosine", "kl"))
    score_seconds = time.perf_counter() - t1
    total = time.perf_counter() - t0
    print(f"headline {m}x{n} N={num}x{classes}: total {total:.1f}s", flush=True)
    return {
        "m": m,
        "n": n,
        "examples": num,
        "classes": classes,
        "plan": target.plan,
        "damping": damping,
        "fit_seconds": fit_seconds,
        "score_seconds": score_seconds,
        "total_seconds": total,
        "goal_seconds": 120,
        "scores": dict(zip(fits, scores, strict=True)),
    }


def section_memory(m, n, num, rng):
    """Peak resident memory each pass adds above the data, in chunks (goal ≤ 1.5), and the
    Gram phase (Gram, ‖Σ‖, Cholesky log-det, spectrum) in N×N buffers (goal ≤ 2)."""
    g = rng.standard_normal((num, m, n)).astype(np.float32)
    b = np.eye(n, dtype=np.float32)
    qa = np.linalg.qr(rng.standard_normal((m, m)))[0].astype(np.float32)
    qb = np.linalg.qr(rng.standard_normal((n, n)))[0].astype(np.float32)
    out = []
    for executor in ("numpy", "jax"):
        t = SampleTarget(g, executor=executor)
        t.trace()  # the checks' pass, and (JAX) the device copy, before measuring
        chunk_bytes = t.chunk_size * m * n * 4
        passes = {
            "contract_left": lambda t=t: jax.block_until_ready(t.contract_left(b)),
            "second_moments": lambda t=t: jax.block_until_ready(t.second_moments()),
            "rotated_diagonal": lambda t=t: jax.block_until_ready(t.rotated_diagonal(qa, qb)),
        }
        for name, fn in passes.items():
            fn()  # warm: compiled, allocator pools filled
            extra = peak_extra_bytes(fn)
            row = {
                "executor": executor,
                "m": m,
                "n": n,
                "N": num,
                "pass": name,
                "data_bytes": g.nbytes,
                "chunk_bytes": chunk_bytes,
                "extra_bytes": extra,
                "extra_chunks": None if extra is None else extra / chunk_bytes,
                "goal": 1.5,
            }
            out.append(row)
            print(
                f"memory {executor:5s} {name:16s} +{(extra or 0) / 2**20:.0f} MiB "
                f"= {row['extra_chunks'] or 0:.2f} chunks",
                flush=True,
            )
    t = SampleTarget(g)
    t.trace()
    nn = float(num) * num * 4

    def gram_phase(t=t):
        t._cache.clear()
        t.frobenius_norm()
        t.logdet(DAMPING)
        t.eigh()

    extra = peak_extra_bytes(gram_phase)
    out.append(
        {
            "executor": t.executor,
            "m": m,
            "n": n,
            "N": num,
            "pass": "gram phase",
            "extra_bytes": extra,
            "extra_nxn": None if extra is None else extra / nn,
            "goal": 2.0,
        }
    )
    print(
        f"memory gram phase +{(extra or 0) / 2**20:.0f} MiB = {(extra or 0) / nn:.2f} N×N buffers",
        flush=True,
    )
    return out


def _memory_in_fresh_process(args, sections, rng):
    """The memory section in a process of its own: after other sections, memory freed
    to the allocator hides a pass's peak from the resident-set counters."""
    if sections == {"memory"}:
        return section_memory(*_size(args.memory, 3), rng)
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "memory.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--sections", "memory"]
        subprocess.run([*cmd, "--memory", args.memory, "--out", path], check=True)
        with open(path) as fh:
            return json.load(fh)["memory"]


def section_compiles(m, n, num, rng):
    def run(count):
        u = rng.standard_normal((count, 1, m)).astype(np.float32)
        v = rng.standard_normal((count, 1, n)).astype(np.float32)
        t = FactoredTarget(u, v)
        met.score(t, est.shampoo_squared(t), damping=DAMPING)

    run(num)
    c0 = compile_count()
    run(num - max(1, num // 50))  # another N in the same bucket
    c1 = compile_count()
    return {
        "N_warm": num,
        "N_new": num - max(1, num // 50),
        "compiles": None if c0 is None else c1 - c0,
    }


def _size(text, parts):
    vals = tuple(int(x) for x in text.lower().split("x"))
    if len(vals) != parts:
        raise argparse.ArgumentTypeError(f"expected {parts} numbers joined by 'x': {text}")
    return vals


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default="naive,passes,memory,headline,compiles")
    p.add_argument("--memory", default="256x256x4096", help="MxNxN for the memory section")
    p.add_argument("--naive-sizes", default="128x128x1024,256x256x1024")
    p.add_argument("--passes", default="512x512x1024", help="MxNxN for the pass section")
    p.add_argument("--terms", default="1,4,16,64")
    p.add_argument("--headline", default="2048x2048x1024x10", help="MxNxEXAMPLESxCLASSES")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.naive_sizes, args.passes, args.terms = "32x32x128", "48x48x128", "1,4"
        args.headline, args.memory = "64x64x64x10", "64x64x256"
    rng = np.random.default_rng(0)
    sections = set(args.sections.split(","))
    result = {"machine": machine_info(), "damping": DAMPING, "quick": args.quick}
    if "naive" in sections:
        sizes = [_size(s, 3) for s in args.naive_sizes.split(",")]
        result["naive"] = section_naive(sizes, args.repeats, rng)
    if "passes" in sections:
        m, n, num = _size(args.passes, 3)
        terms = [int(t) for t in args.terms.split(",")]
        result["passes"] = section_passes(m, n, num, terms, args.repeats, rng)
    if "headline" in sections:
        result["headline"] = section_headline(*_size(args.headline, 4), rng)
    if "memory" in sections:
        result["memory"] = _memory_in_fresh_process(args, sections, rng)
    if "compiles" in sections:
        result["compiles"] = section_compiles(64, 48, 1000, rng)
    result["peak_rss_bytes"] = peak_rss_bytes()
    path = args.out
    if not path.endswith(".json"):
        os.makedirs(path, exist_ok=True)
        path = result_path(path, "bench_scale")
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
