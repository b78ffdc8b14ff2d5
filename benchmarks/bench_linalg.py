"""Time the matrix functions of :mod:`precond_lab.linalg` per dtype and size.

Measures (median of ``--repeats`` after a warm-up, each ``block_until_ready``):

* full matrix functions ``(S + λI)^{-p}``: ``eigh`` (p = 1/2), ``cholesky`` (p = 1),
  ``newton`` (p = 1/2 and 1/4), ``newton_schulz`` (p = 1/2), ``if_shampoo`` (p = 1, run
  to convergence) — factorization methods at half precision are ``unsupported`` and
  are measured upcast (``eigh@float32`` …, labelled);
* one online step: ``if_shampoo_step`` (one multiplicative update, 3 matmuls, what
  IF-Shampoo does per optimizer step) and ``qr_refresh_step`` (one power step + QR, what
  KL-Shampoo/SOAP do every T steps), and ``matmul`` for scale.

Ratios root-free / root-based in the same run: ``if_shampoo_step / eigh``,
``if_shampoo_step / qr_refresh_step``, ``if_shampoo / newton(p=1/2)``. Writes
``benchmarks/results/linalg-<hostname>-<device>.json``.

Usage: ``python benchmarks/bench_linalg.py [--sizes 64 256 1024] [--dtypes float32 bfloat16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from precond_lab.linalg import (  # noqa: E402
    UnsupportedDtypeError,
    matrix_power,
    qr_refresh_step,
    spd_with_spectrum,
)

CASES = [
    ("eigh", -0.5, {}),
    ("cholesky", -1.0, {}),
    ("newton", -0.5, {}),
    ("newton", -0.25, {}),
    ("newton_schulz", -0.5, {}),
    ("if_shampoo", -1.0, {}),
]


def _time(fn, repeats: int, budget_s: float) -> tuple[float | None, int]:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())  # warm-up / compile
    if time.perf_counter() - t0 > budget_s:
        return None, 0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), repeats


def _step_fns(s: jax.Array):
    eye = jnp.eye(s.shape[0], dtype=s.dtype)

    @jax.jit
    def one_step(a):  # C ← C(I − β m), m = ½(CᵀaC − I), C = I: IF-Shampoo's per-step cost
        c = eye
        m = 0.5 * (c.T @ (a @ c) - eye)
        return c @ (eye - 0.1 * m / jnp.maximum(1.0, jnp.linalg.norm(m)))

    qr = jax.jit(qr_refresh_step)
    mm = jax.jit(lambda a, b: a @ b)
    return {
        "if_shampoo_step": lambda: one_step(s),
        "qr_refresh_step": lambda: qr(s, eye) if s.dtype.itemsize >= 4 else None,
        "matmul": lambda: mm(s, s),
    }


def run(sizes, dtypes, repeats: int, budget_s: float, cond: float) -> dict:
    rows = []
    for dim in sizes:
        s64 = spd_with_spectrum(dim, cond, np.random.default_rng(dim))[0]
        for dt in dtypes:
            s = jnp.asarray(s64).astype(dt)
            for method, expo, opts in CASES:
                for upcast in (None, "float32"):
                    label = method if upcast is None else f"{method}@float32"

                    def call(method=method, expo=expo, upcast=upcast, opts=opts, s=s):
                        return matrix_power(
                            s, expo, 1e-6, method=method, upcast=upcast, check=False, **opts
                        )

                    row = {"method": label, "exponent": expo, "dtype": dt, "size": dim}
                    if upcast is not None and dt in ("float64", "float32"):
                        continue
                    try:
                        _, info = call()
                    except UnsupportedDtypeError:
                        rows.append({**row, "status": "unsupported"})
                        continue
                    med, n = _time(lambda call=call: call()[0], repeats, budget_s)
                    rows.append(
                        {
                            **row,
                            "status": "ok" if med is not None else "skipped_over_budget",
                            "median_s": med,
                            "repeats": n,
                            "iterations": info.iterations,
                            "matmuls": info.matmuls,
                            "converged": info.converged,
                        }
                    )
                    print(rows[-1], flush=True)
            for name, fn in _step_fns(s).items():
                row = {"method": name, "exponent": None, "dtype": dt, "size": dim}
                try:
                    if fn() is None:
                        raise UnsupportedDtypeError
                except (UnsupportedDtypeError, NotImplementedError):
                    rows.append({**row, "status": "unsupported"})
                    continue
                med, n = _time(fn, repeats, budget_s)
                status = "ok" if med is not None else "skipped_over_budget"
                rows.append({**row, "status": status, "median_s": med, "repeats": n})
                print(rows[-1], flush=True)
    return {"rows": rows, "ratios": _ratios(rows)}


def _ratios(rows) -> list[dict]:
    t = {(r["method"], r["exponent"], r["dtype"], r["size"]): r.get("median_s") for r in rows}
    out = []
    for (method, _, dt, dim), val in t.items():
        if method != "if_shampoo_step" or val is None:
            continue
        eig = t.get(("eigh", -0.5, dt, dim)) or t.get(("eigh@float32", -0.5, dt, dim))
        qr = t.get(("qr_refresh_step", None, dt, dim)) or t.get(
            ("qr_refresh_step", None, "float32", dim)
        )
        full_rf = t.get(("if_shampoo", -1.0, dt, dim))
        newton = t.get(("newton", -0.5, dt, dim))
        out.append(
            {
                "dtype": dt,
                "size": dim,
                "if_shampoo_step_over_eigh": val / eig if eig else None,
                "if_shampoo_step_over_qr_refresh_step": val / qr if qr else None,
                "if_shampoo_full_over_newton_root": full_rf / newton
                if full_rf and newton
                else None,
                "root_based_reference": "eigh"
                if t.get(("eigh", -0.5, dt, dim))
                else "eigh@float32",
            }
        )
    return out


def machine_info() -> dict:
    dev = jax.devices()[0]
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
    }


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--budget", type=float, default=20.0, help="skip a case whose warm-up is slower"
    )
    ap.add_argument("--cond", type=float, default=1e3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result = run(args.sizes, args.dtypes, args.repeats, args.budget, args.cond)
    info = machine_info()
    result.update(
        {
            "machine": info,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "damping": 1e-6,
            "total_s": time.perf_counter() - t0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    kind = info["device_kind"].replace(" ", "_").replace("/", "_")
    out = args.out or Path(__file__).parent / "results" / f"linalg-{info['hostname']}-{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} in {result['total_s']:.1f}s")
    for r in result["ratios"]:
        print(r)
    return out


if __name__ == "__main__":
    main()
