"""Corrupted, concurrent, interrupted and inconsistent capture stores are all detected.

One row per fault: bit flips, truncated, garbage and deleted chunks (gradients, checkpoint,
labels, sample indices), NaN steps, out-of-range labels, a second writer, kill -9 during a
write (the resumed store equals an uninterrupted run bit for bit), adding a step.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import zarr

from precond_lab.capture import (
    StoreError,
    capture,
    capture_from_fn,
    load_dataset,
    make_model,
    open_capture,
    validate_store,
)
from precond_lab.capture.integrity import lock_path, writer_lock
from precond_lab.capture.store import completed_steps, read_checkpoint
from precond_lab.errors import NonFiniteError

CFG = dict(
    model_options={"hidden": (4,)},
    steps=[0, 2, 4],
    num_samples=6,
    batch_size=8,
    targets=["gradients", "trajectory"],
    layers=["layers/0/w", "layers/1/w"],
    optimizer="adam",
    learning_rate=0.01,
    dtype="float64",
    eval_samples=16,
    storage="dense",  # the dense schema; factored storage: test_factored_storage.py
)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    path = tmp_path_factory.mktemp("integrity") / "run.zarr"
    capture("mlp", "digits", out=path, **CFG)
    yield path
    jax.config.update("jax_enable_x64", old)


def _copy(src, tmp_path):
    dst = tmp_path / "copy.zarr"
    shutil.copytree(src, dst)
    return dst


def _chunk(path, array):
    files = sorted(p for p in (path / array / "c").rglob("*") if p.is_file())
    assert files, array
    return files[0]


def _flip(f):
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x04
    f.write_bytes(bytes(b))


def _truncate(f):
    f.write_bytes(f.read_bytes()[:5])


def _garbage(f):
    f.write_bytes(os.urandom(len(f.read_bytes())))


GRAD = "step_000002/layers/0/w/gradients"
# (array, damage, the message validate_store must give)
CORRUPTIONS = [
    (GRAD, _flip, r"gradients: chunk c/0/0/0 .*corrupt.*checksum"),
    (GRAD, _truncate, r"gradients: chunk c/0/0/0 .*corrupt"),
    (GRAD, _garbage, r"gradients: chunk c/0/0/0 .*corrupt"),
    (GRAD, os.remove, r"gradients: chunk c/0/0/0 .*missing"),
    ("step_000002/checkpoint/p0000", _flip, r"checkpoint/p0000: chunk c/0\S* .*corrupt"),
    ("step_000002/checkpoint/p0001", os.remove, r"checkpoint/p0001: chunk c/0\S* .*missing"),
    ("step_000002/checkpoint/o0001", _flip, r"checkpoint/o0001: chunk .*corrupt"),
    ("step_000002/labels", _flip, r"labels: chunk c/0 .*corrupt"),
    ("step_000002/sample", os.remove, r"sample: chunk c/0 .*missing"),
    ("step_000004/loss", _truncate, r"loss: chunk c/0 .*corrupt"),
    ("step_000004/layers/1/w/trajectory/gradients", _flip, r"trajectory/gradients: chunk"),
]


@pytest.mark.parametrize(
    "array,damage,message", CORRUPTIONS, ids=lambda v: getattr(v, "__name__", None)
)
def test_corrupted_chunk_is_detected(stored, tmp_path, array, damage, message):
    dst = _copy(stored, tmp_path)
    assert validate_store(dst) == [0, 2, 4]
    damage(_chunk(dst, array))
    with pytest.raises(StoreError, match=message):
        validate_store(dst)


def test_reads_verify_checksums(stored, tmp_path):
    dst = _copy(stored, tmp_path)
    _flip(_chunk(dst, GRAD))
    with pytest.raises(StoreError, match="reading failed.*checksum"):
        open_capture(dst, load=True)
    os.remove(_chunk(dst, GRAD))
    with pytest.raises(StoreError, match="gradients: chunk c/0/0/0 .*missing"):
        open_capture(dst)


@pytest.mark.parametrize("damage", [_flip, os.remove], ids=["bit flip", "deleted chunk"])
def test_damaged_checkpoint_stops_the_resume(stored, tmp_path, damage):
    dst = _copy(stored, tmp_path)
    shutil.rmtree(dst / "step_000004")
    damage(_chunk(dst, "step_000002/checkpoint/p0001"))
    with pytest.raises(StoreError, match=r"checkpoint/p0001: chunk c/0\S* "):
        read_checkpoint(dst, 2)
    with pytest.raises(StoreError, match=r"checkpoint/p0001: chunk c/0\S* "):
        capture("mlp", "digits", out=dst, **CFG)
    assert completed_steps(dst) == [0, 2]  # nothing was committed from bad parameters


def test_store_without_checksums_is_rejected_by_validation(stored, tmp_path):
    dst = _copy(stored, tmp_path)
    arr = zarr.open_array(str(dst / GRAD), mode="r")
    data = arr[...]
    shutil.rmtree(dst / GRAD)
    zarr.create_array(
        str(dst / GRAD), data=data, chunks=arr.chunks, dimension_names=["sample", "row", "col"]
    )
    with pytest.raises(StoreError, match="without a crc32c checksum"):
        validate_store(dst)


def test_nan_step_is_not_committed(tmp_path):
    out = tmp_path / "diverged.zarr"
    cfg = {**CFG, "optimizer": "sgd", "learning_rate": 1e100, "targets": ["gradients"]}
    cfg["model_options"] = {"hidden": (4,), "activation": "linear"}  # diverges to Inf/NaN
    with pytest.raises(NonFiniteError, match=r"step 2, .*quantity 'loss' holds NaN or Inf"):
        capture("mlp", "digits", out=out, **cfg)
    assert validate_store(out) == [0]  # the store stays valid and resumable
    assert not lock_path(out).exists()


def test_nonfinite_inputs_and_options_are_rejected(tmp_path):
    ds = load_dataset("digits")
    model = make_model("mlp", ds, dtype="float64", hidden=(4,))
    params = model.init(jax.random.PRNGKey(0))

    def apply_fn(p, xb):
        return jax.vmap(lambda xi: model.apply(p, xi))(xb)

    x, y = ds.x_train.astype(np.float64), ds.y_train
    kw = dict(apply_fn=apply_fn, loss="cross_entropy", num_samples=4, layers=["layers/0/w"])
    xn = x.copy()
    xn[7, 3] = np.nan
    with pytest.raises(NonFiniteError, match="x holds NaN or Inf .*example index 7"):
        capture_from_fn(params, xn, y, **kw)
    with pytest.raises(ValueError, match=r"labels lie in \[5, 14\] .*10 outputs.*\[0, 10\)"):
        capture_from_fn(params, x, y + 5, **kw)
    with pytest.raises(ValueError, match="learning_rate must be a finite number; got nan"):
        capture_from_fn(params, x, y, steps=(0, 1), learning_rate=float("nan"), **kw)
    with pytest.raises(ValueError, match="class indices ≥ 0"):
        capture_from_fn(params, x, y - 1, **kw)


def test_second_writer_gets_in_use_by_pid(tmp_path):
    out = tmp_path / "busy.zarr"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from precond_lab.capture.integrity import writer_lock
            with writer_lock({str(out)!r}):
                print("locked", flush=True)
                time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=f"in use by pid {holder.pid}"):
            capture("mlp", "digits", out=out, **CFG)
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    with writer_lock(out):  # the killed holder's lock is stale: taken over
        assert lock_path(out).read_text() == str(os.getpid())
    assert not lock_path(out).exists()


_KILLER = """
import os, signal, sys
import jax
jax.config.update("jax_enable_x64", True)
import zarr.storage
from precond_lab.capture import capture
CFG = {cfg!r}
count = [0]
orig = zarr.storage.LocalStore.set

async def set_and_maybe_die(self, key, value):
    if "step_000004" in str(self.root) and key.endswith("/c/0/0"):
        count[0] += 1
        if count[0] == 2:  # kill -9 in the middle of writing step 4's arrays
            os.kill(os.getpid(), signal.SIGKILL)
    return await orig(self, key, value)

zarr.storage.LocalStore.set = set_and_maybe_die
capture("mlp", "digits", out={out!r}, **CFG)
"""


def test_kill_9_mid_write_then_resume_is_bit_identical(stored, tmp_path):
    out = tmp_path / "killed.zarr"
    code = _KILLER.format(cfg=CFG, out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert completed_steps(out) == [0, 2]
    assert list(tmp_path.glob(".killed.zarr.step_000004.tmp-*"))  # the half-written step
    assert lock_path(out).exists()  # left behind by the killed writer: stale
    capture("mlp", "digits", out=out, **CFG)
    assert validate_store(out) == [0, 2, 4]
    assert not list(tmp_path.glob(".killed.zarr.step_*"))
    a, b = open_capture(out, load=True), open_capture(stored, load=True)
    for node in a.subtree:
        for name, var in node.dataset.variables.items():
            ref = b[node.path].dataset.variables[name].values
            np.testing.assert_array_equal(var.values, ref, err_msg=f"{node.path}/{name}")


def test_adding_a_step_never_mixes_step_lists(stored, tmp_path):
    dst = _copy(stored, tmp_path)
    shutil.rmtree(dst / "step_000002")
    with pytest.raises(StoreError, match="cannot add step 2: step 4 is already captured"):
        capture("mlp", "digits", out=dst, **CFG)
    assert completed_steps(dst) == [0, 4]
    # without the trajectory no stored step depends on the step list: adding is exact
    cfg = {**CFG, "targets": ["gradients"]}
    out = tmp_path / "grads.zarr"
    capture("mlp", "digits", out=out, **{**cfg, "steps": [0, 4]})
    capture("mlp", "digits", out=out, **cfg)
    fresh = capture("mlp", "digits", **cfg)
    got = open_capture(out, load=True)["step_000002/layers/0/w"]["gradients"].values
    np.testing.assert_array_equal(got, fresh["step_000002/layers/0/w"]["gradients"].values)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_fails_before_training(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(StoreError, match="cannot write the store"):
            capture("mlp", "digits", out=ro / "x.zarr", **CFG)
    finally:
        ro.chmod(0o755)


def test_unwritable_path_fails_before_training(tmp_path):
    (tmp_path / "a_file").write_text("")
    seen = []
    with pytest.raises(StoreError, match="cannot write the store .*a_file/x.zarr"):
        capture(
            "mlp",
            "digits",
            out=tmp_path / "a_file" / "x.zarr",
            callback=lambda s, t: seen.append(s),
            **CFG,
        )
    assert seen == []
