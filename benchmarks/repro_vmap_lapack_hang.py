"""Reproducer: batched LAPACK custom calls (``eigh``, ``qr``) can deadlock XLA:CPU.

**The deadlock** (gdb stacks of hung processes, jax/jaxlib 0.10.2, 2 CPUs; the process's CPU
time stays flat): every thread of XLA:CPU's intra-op pool (``tf_XLAEigen``, one per CPU) —
and the calling thread — is inside a LAPACK FFI kernel (``lapack_ssyevd_ffi`` or the QR
kernel → ``jax::ParallelBatchMap`` → ``absl::BlockingCounter::Wait``), called from
``xla::cpu::CustomCallThunk::Execute`` on that same pool. ``ParallelBatchMap`` splits a
*batched* decomposition into chunks, schedules them on the pool it is running on and blocks
until they are done; a worker thread schedules onto its own queue. When as many independent
batched decompositions run at once as there are threads to run them, every thread waits for
chunks that no free thread can take. jaxlib parallelises a batch only when ``num_threads > 1``
and ``batch · cost ≥ 2·10⁵`` flops (``cost = 4n³`` for ``syevd``, ``≈ (4/3)n³`` for
``geqrf``; ``GetLapackBatchChunkSize``), so a ``vmap`` of 2 or more ``eigh``/``qr`` of
matrices larger than about 30×30 is exposed, and how often it strikes depends on how many
independent batched calls the schedule runs at once. On a shared 2-CPU machine (load 2–9),
``concurrent_qr`` (6 independent batched 8×128×128 QRs) ran past a 40–90 s timeout in 4 of 5
default runs (the fifth, with 5 calls instead of 20, took 22 s); the KL-Shampoo sweep (10
steps) ran past 60 s in 1 of 3 runs at each of 2, 4, 8 and 16 rates. A batch of 1 (no
``vmap``) runs inline and cannot take part.

**A second effect, a slowdown**: the kernels call scipy's bundled OpenBLAS, itself threaded;
with XLA's threads calling it at once, on a loaded machine, batched ``eigh`` ran 19–62 s where
the looped version ran 3 s (CPU time growing, threads in ``exec_blas``/
``exec_blas_async_wait``); ``OPENBLAS_NUM_THREADS=1`` brought it to 5 s.

Cases (each in a subprocess under a hard timeout):

* ``concurrent_qr`` / ``concurrent_eigh``: ``k`` independent ``(B, n, n)`` decompositions in
  one jitted function (no precond_lab); ``concurrent_qr_looped`` / ``concurrent_eigh_looped``:
  the same as ``lax.map`` loops of unbatched calls;
* ``kl_shampoo``: ``jax.jit(jax.vmap(run))`` over ``B`` learning rates of a 64→128→128→10
  MLP (batch 32) trained with ``po.kl_shampoo`` under ``lax.scan``;
* (the fix, ``eigh``/``qr`` given a ``jax.custom_batching`` rule that loops (``lax.map``)
  over a vmapped batch on CPU, is now in ``precond_lab.methods._ops``: ``kl_shampoo`` runs
  through it and is expected to pass; ``tests/optim/test_methods.py`` holds it);
* suffix ``_flag``: with ``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false``
  (a mitigation that avoided the hang in the runs tried: it changes the schedule, it does not
  remove the blocking wait); suffix ``_ob1``: with ``OPENBLAS_NUM_THREADS=1``.

Usage: ``python benchmarks/repro_vmap_lapack_hang.py [--cases ...] [--timeout 60]``; exits
with status 1 when a case without a fix hung, 2 when a case with a fix or mitigation hung.
Prints one line per case (``ok``/``HANG/FAIL``, seconds).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"

CONCURRENT = """
import sys, jax, jax.numpy as jnp
op, B, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
looped = sys.argv[5] == "1"
def single(a):
    return jnp.linalg.eigh(a)[1] if op == "eigh" else jnp.linalg.qr(a)[0]
def one(a):  # looped: B unbatched calls in a loop instead of one batched call
    return jax.lax.map(single, a) if looped else single(a)
f = jax.jit(lambda xs: [one(x) for x in xs])
xs = [jax.random.normal(jax.random.PRNGKey(i), (B, n, n)) for i in range(k)]
xs = [x + jnp.swapaxes(x, -1, -2) for x in xs]
for _ in range(20):
    jax.block_until_ready(f(xs))
print("done")
"""

KL = """
import sys, jax, jax.numpy as jnp, optax
from jax import lax
import precond_lab.optim as po
B, steps, looped = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
def init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"w1": jax.random.normal(k1, (64, 128)) / 8,
            "w2": jax.random.normal(k2, (128, 128)) / 11,
            "w3": jax.random.normal(k3, (128, 10)) / 11}
def loss(p, x, y):
    h = jnp.tanh(jnp.tanh(x @ p["w1"]) @ p["w2"])
    return optax.softmax_cross_entropy_with_integer_labels(h @ p["w3"], y).mean()
x = jax.random.normal(jax.random.PRNGKey(1), (steps, 32, 64))
y = jax.random.randint(jax.random.PRNGKey(2), (steps, 32), 0, 10)
def run(lr):
    tx = po.kl_shampoo(learning_rate=lr)
    p = init(jax.random.PRNGKey(0))
    def step(c, b):
        p, s = c
        l, g = jax.value_and_grad(loss)(p, *b)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), l
    return lax.scan(step, (p, tx.init(p)), (x, y))[1][-1]
print(jax.jit(jax.vmap(run))(jnp.logspace(-4, -1, B)).block_until_ready())
"""


def case(name: str, args: list[str], timeout: float) -> tuple[str, bool, float]:
    code = CONCURRENT if name.startswith("concurrent") else KL
    env = dict(os.environ, PYTHONPATH=ROOT)
    if "_flag" in name:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + FLAG).strip()
    if "_ob1" in name:
        env["OPENBLAS_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *args], env=env, capture_output=True, timeout=timeout
        )
        ok = proc.returncode == 0
        if not ok:
            print(proc.stderr.decode()[-1500:], file=sys.stderr)
    except subprocess.TimeoutExpired:
        ok = False
    return name, ok, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--cases",
        nargs="+",
        default=["concurrent_qr", "concurrent_qr_looped", "kl_shampoo"],
        help="concurrent_qr, concurrent_eigh, kl_shampoo, their _looped variants, "
        "and any of them with _flag",
    )
    ap.add_argument("--batch", type=int, default=8, help="B: batch of the decompositions / rates")
    ap.add_argument("--size", type=int, default=128, help="n of the concurrent cases")
    ap.add_argument("--calls", type=int, default=6, help="k independent calls (concurrent)")
    ap.add_argument("--steps", type=int, default=10, help="training steps (kl_shampoo)")
    ap.add_argument("--timeout", type=float, default=60.0)
    cfg = ap.parse_args(argv)
    print(f"cpus={len(os.sched_getaffinity(0))} load={os.getloadavg()}")
    hung_plain = hung_fixed = False
    for name in cfg.cases:
        base = name.replace("_flag", "").replace("_ob1", "")
        if base.startswith("concurrent"):
            op = base.split("_")[1]
            looped = "1" if base.endswith("looped") else "0"
            args = [op, str(cfg.batch), str(cfg.size), str(cfg.calls), looped]
        else:
            args = [str(cfg.batch), str(cfg.steps), "1" if base.endswith("looped") else "0"]
        _, ok, secs = case(name, args, cfg.timeout)
        print(f"{name:26s} {'ok' if ok else 'HANG/FAIL':9s} {secs:6.1f} s", flush=True)
        if not ok:
            if base != name or "looped" in name:
                hung_fixed = True
            else:
                hung_plain = True
    return 2 if hung_fixed else (1 if hung_plain else 0)


if __name__ == "__main__":
    sys.exit(main())
