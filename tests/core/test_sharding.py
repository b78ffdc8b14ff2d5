"""Sharding over 4 forced host devices gives the single-device results.

The sharded run happens in a subprocess (``XLA_FLAGS`` must be set before JAX is
imported); it writes its numbers to a file that the parent compares with its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from conftest import assert_close

from precond_lab import SampleTarget
from precond_lab import estimators as est
from precond_lab import metrics as met

CHILD = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from precond_lab import SampleTarget, estimators as est, metrics as met

    data = np.load(sys.argv[1])
    g, w = data["g"], data["w"]
    t = SampleTarget(g, w, center=True, chunk_size=5)
    s2 = est.shampoo_squared(t)
    out = {
        "devices": len(jax.local_devices()),
        "shard": bool(t.shard),
        "chunk_size": t.chunk_size,
        "sharded": "sample" in str(t.chunk(0)[1].sharding),
        "dense": np.asarray(t.to_dense()).tolist(),
        "frobenius_optimal": np.asarray(est.frobenius_optimal(t).to_dense()).tolist(),
        "shampoo_squared": np.asarray(s2.to_dense()).tolist(),
        "kl_optimal": np.asarray(est.kl_optimal(t).to_dense()).tolist(),
        "eigencorrected": np.asarray(est.eigencorrected(t).to_dense()).tolist(),
        "cosine": float(met.cosine_similarity(t, s2)),
        "kl": float(met.kl_divergence(t, s2)),
        "kl_reverse": float(met.kl_divergence(t, s2, direction="reverse")),
        "vn": float(met.von_neumann_divergence(t, s2)),
        "spectrum": np.asarray(met.spectrum(t)).tolist(),
        "frobenius_norm": float(t.frobenius_norm()),
    }
    small = SampleTarget(g[:3], chunk_size=1)  # rank-deficient: sample-space eigh
    out["small_chunk"] = small.chunk_size
    out["small_spectrum"] = np.asarray(met.spectrum(small)).tolist()
    json.dump(out, open(sys.argv[2], "w"))
    """
)


def test_sharded_equals_single_device(tmp_path, rng):
    g = rng.standard_normal((23, 3, 2))
    w = rng.uniform(0.1, 1.0, 23)
    np.savez(tmp_path / "data.npz", g=g, w=w)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data.npz"), str(tmp_path / "out.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["devices"] == 4 and got["shard"] and got["sharded"]
    assert got["chunk_size"] % 4 == 0 and got["chunk_size"] >= 5
    assert got["small_chunk"] % 4 == 0

    t = SampleTarget(g, w, center=True, chunk_size=5)
    assert not t.shard
    s2 = est.shampoo_squared(t)
    want = {
        "dense": t.to_dense(),
        "frobenius_optimal": est.frobenius_optimal(t).to_dense(),
        "shampoo_squared": s2.to_dense(),
        "kl_optimal": est.kl_optimal(t).to_dense(),
        "eigencorrected": est.eigencorrected(t).to_dense(),
        "cosine": met.cosine_similarity(t, s2),
        "kl": met.kl_divergence(t, s2),
        "kl_reverse": met.kl_divergence(t, s2, direction="reverse"),
        "vn": met.von_neumann_divergence(t, s2),
        "spectrum": met.spectrum(t),
        "frobenius_norm": t.frobenius_norm(),
        "small_spectrum": met.spectrum(SampleTarget(g[:3], chunk_size=1)),
    }
    for key, value in want.items():
        # different chunking/padding changes the summation order only
        assert_close(np.asarray(got[key]), value, rtol=1e-9, err_msg=key)
