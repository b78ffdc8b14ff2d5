"""One process of the two-process test (``test_multiprocess.py``): its share of the samples.

Usage: ``python multiprocess_worker.py PROCESS_ID PORT OUT.npz``. Both processes compute
every primitive of the same FactoredTarget, and of the SampleTarget of the same dense
samples, from their own half of the samples; process 0 writes the results.
"""

from __future__ import annotations

import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_enable_x64", True)


def problem():
    """The full problem, the same in every process (and in the test)."""
    import numpy as np

    rng = np.random.default_rng(11)
    num, t, m, n = 23, 2, 4, 3
    u, v = rng.standard_normal((num, t, m)), rng.standard_normal((num, t, n))
    w = rng.uniform(0.2, 1.0, num)
    b, a = rng.standard_normal((n, n)), rng.standard_normal((m, m))
    qa = np.linalg.qr(rng.standard_normal((m, m)))[0]
    qb = np.linalg.qr(rng.standard_normal((n, n)))[0]
    return u, v, w, a, b, qa, qb


SPLIT = 13  # process 0 holds samples [0, 13), process 1 the other 10


def primitives(t, a, b, qa, qb):
    """Every primitive of a target, as a dict of arrays."""
    import numpy as np

    from precond_lab import estimators as est

    left, right = t.second_moments()
    spec = t.eigh(vectors=True)
    vecs = np.asarray(spec.vectors).reshape(spec.rank, -1)
    kron = est.shampoo_squared(t)
    return {
        "contract_left": t.contract_left(b),
        "contract_right": t.contract_right(a),
        "left": left,
        "right": right,
        "rotated_diagonal": t.rotated_diagonal(qa, qb),
        "diagonal": t.rotated_diagonal(None, None),
        "trace": t.trace(),
        "trace_product": t.trace_product(kron),
        "frobenius": t.frobenius_norm(),
        "eigenvalues": spec.values,
        "projector": (vecs.T * np.asarray(spec.values)) @ vecs,  # V μ Vᵀ = Σ
        "logdet": t.logdet(0.3),
        "dense": t.to_dense(),
    }


def main():
    pid, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid
    )
    import numpy as np

    from precond_lab.targets import FactoredTarget, SampleTarget

    u, v, w, a, b, qa, qb = problem()
    part = slice(0, SPLIT) if pid == 0 else slice(SPLIT, None)
    results = {}
    for center in (False, True):
        t = FactoredTarget(u[part], v[part], w[part], center=center, process_local=True)
        for key, val in primitives(t, a, b, qa, qb).items():
            results[f"{key}-c{int(center)}"] = np.asarray(val)
        g = np.einsum("ktm,ktn->kmn", u[part], v[part])  # the same samples, dense
        t = SampleTarget(g, w[part], center=center, process_local=True)
        for key, val in primitives(t, a, b, qa, qb).items():
            results[f"sample-{key}-c{int(center)}"] = np.asarray(val)
    t = FactoredTarget(u[part, :1], v[part, :1], process_local=True)  # default weights 1/N
    results["default-weights-left"] = np.asarray(t.left_moment())
    g1 = np.einsum("ktm,ktn->kmn", u[part, :1], v[part, :1])
    results["sample-default-weights-left"] = np.asarray(
        SampleTarget(g1, process_local=True).left_moment()
    )
    bad = np.einsum("ktm,ktn->kmn", u[part], v[part])
    if pid == 1:
        bad[2, 0, 0] = np.nan  # global sample SPLIT + 2, held by process 1
    try:
        SampleTarget(bad, process_local=True)
        results["nan-message"] = np.asarray("no error")
    except Exception as exc:  # noqa: BLE001 - the message is the result
        results["nan-message"] = np.asarray(f"{type(exc).__name__}: {exc}")
    results["devices"] = np.asarray(jax.device_count())
    if pid == 0:
        np.savez(out, **results)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
