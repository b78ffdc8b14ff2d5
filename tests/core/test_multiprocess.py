"""Two processes on localhost (JAX's multi-controller runtime, gloo collectives on CPU),
each owning part of the samples, agree with the single-process target on every primitive."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_close

from precond_lab.targets import FactoredTarget, SampleTarget

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import multiprocess_worker as worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("mp") / "results.npz"
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "multiprocess_worker.py"), str(pid), str(port), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in (0, 1)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two-process run did not finish in 240 s")
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return dict(np.load(out))


@pytest.mark.parametrize("center", [False, True])
def test_every_primitive_matches_single_process(two_process_results, center):
    got = two_process_results
    assert int(got["devices"]) == 2
    u, v, w, a, b, qa, qb = worker.problem()
    want = worker.primitives(FactoredTarget(u, v, w, center=center), a, b, qa, qb)
    for key, val in want.items():
        assert_close(got[f"{key}-c{int(center)}"], val, err_msg=key)


@pytest.mark.parametrize("center", [False, True])
def test_dense_samples_match_single_process(two_process_results, center):
    got = two_process_results
    u, v, w, a, b, qa, qb = worker.problem()
    g = np.einsum("ktm,ktn->kmn", u, v)
    want = worker.primitives(SampleTarget(g, w, center=center), a, b, qa, qb)
    for key, val in want.items():
        assert_close(got[f"sample-{key}-c{int(center)}"], val, err_msg=key)


def test_nan_in_one_share_is_reported_by_every_process(two_process_results):
    msg = str(two_process_results["nan-message"])
    assert msg.startswith("NonFiniteError"), msg
    assert f"sample index {worker.SPLIT + 2} (global index; in process 1's share)" in msg


def test_default_weights_are_one_over_the_global_count(two_process_results):
    u, v, *_ = worker.problem()
    want = FactoredTarget(u[:, :1], v[:, :1]).left_moment()
    assert_close(two_process_results["default-weights-left"], want)
    g1 = np.einsum("ktm,ktn->kmn", u[:, :1], v[:, :1])
    assert_close(two_process_results["sample-default-weights-left"], want)
    assert_close(SampleTarget(g1).left_moment(), want)
