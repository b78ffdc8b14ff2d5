"""Reproducer: batched LAPACK custom calls (``eigh``, ``qr``) can deadlock XLA:CPU.

**Mechanism** (gdb stacks of a hung process, jax/jaxlib 0.10.2, 2 CPUs): every thread of
XLA:CPU's intra-op pool (``tf_XLAEigen``, one per CPU) is inside a LAPACK FFI kernel
(``lapack_ssyevd_ffi`` → ``EigenvalueDecompositionSymmetric::Kernel`` →
``jax::ParallelBatchMap`` → ``absl::BlockingCounter::Wait``) called from
``xla::cpu::CustomCallThunk::Execute`` on that same pool. ``ParallelBatchMap`` splits a
*batched* decomposition into chunks, schedules them on the pool it is running on, and blocks
until they finish. When the thunk executor runs as many independent batched decompositions
concurrently as the pool has threads, every worker blocks waiting for chunks that no free
worker can run: a deadlock with 0 % CPU. The kernel parallelises a batch only when
``num_threads > 1`` and ``batch · cost ≥ 2·10⁵`` flops (``cost = 4n³`` for ``syevd``,
``≈ (4/3)n³`` for ``geqrf``; jaxlib's ``GetLapackBatchChunkSize``), so any ``vmap`` of 2 or
more ``eigh``/``qr`` of matrices larger than about 30×30 is exposed; how often it hangs
depends on how many independent batched calls the schedule runs at once (the
``concurrent_qr`` case below, 6 independent batched QRs, hangs every time on 2 CPUs; the
KL-Shampoo sweep sometimes). A batch of 1 (no ``vmap``) runs inline and never hangs.

Cases (each in a subprocess under a hard timeout):

* ``concurrent_qr`` / ``concurrent_eigh``: ``k`` independent ``(B, n, n)`` decompositions in
  one jitted function (no precond_lab);
* ``kl_shampoo``: ``jax.jit(jax.vmap(run))`` over ``B`` learning rates of a 64→128→128→10
  MLP (batch 32) trained with ``po.kl_shampoo`` under ``lax.scan``;
* ``kl_shampoo_looped``: the same with ``eigh``/``qr`` given a ``jax.custom_batching``
  rule that loops (``lax.map``) over the batch instead of one batched call — the fix
  proposed for ``precond_lab/optim/_common.py`` (``eigh_desc``, ``qr_basis``);
* ``*_flag`` variants: with ``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false``
  (a mitigation that happened to avoid the hang here: it changes the schedule, it does not
  remove the blocking wait).

Usage: ``python benchmarks/repro_vmap_lapack_hang.py [--cases ...] [--timeout 60]``; exits
with status 1 when a case without the fix hung, 2 when a fixed case hung. Prints one line
per case (``ok``/``HANG``, seconds).
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
def one(a):
    return jnp.linalg.eigh(a)[1] if op == "eigh" else jnp.linalg.qr(a)[0]
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
if looped:  # the proposed fix, applied from outside
    import precond_lab.optim._common as C, precond_lab.optim._kl as K
    def loop_batch(fn):
        f = jax.custom_batching.custom_vmap(fn)
        @f.def_vmap
        def rule(axis_size, in_batched, *args):
            args = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
                    for a, b in zip(args, in_batched)]
            return lax.map(lambda xs: f(*xs), tuple(args)), True
        return f
    K.eigh_desc, K.qr_basis = loop_batch(C.eigh_desc), loop_batch(C.qr_basis)
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
    if name.endswith("_flag"):
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + FLAG).strip()
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
        default=["concurrent_qr", "kl_shampoo", "kl_shampoo_looped"],
        help="concurrent_qr, concurrent_eigh, kl_shampoo, kl_shampoo_looped, "
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
        base = name.removesuffix("_flag")
        if base.startswith("concurrent"):
            args = [base.split("_")[1], str(cfg.batch), str(cfg.size), str(cfg.calls)]
        else:
            args = [str(cfg.batch), str(cfg.steps), "1" if base.endswith("looped") else "0"]
        _, ok, secs = case(name, args, cfg.timeout)
        print(f"{name:26s} {'ok' if ok else 'HANG/FAIL':9s} {secs:6.1f} s", flush=True)
        if not ok:
            if "looped" in name or name.endswith("_flag"):
                hung_fixed = True
            else:
                hung_plain = True
    return 2 if hung_fixed else (1 if hung_plain else 0)


if __name__ == "__main__":
    sys.exit(main())
