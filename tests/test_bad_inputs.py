"""Bad inputs give a clear error, never a silent NaN or a wrong number: one row per case.

Each row: a name, a call, the error class it must raise and a regex its message must
match (the message names the problem: which argument, its valid range, or the remedy).
The capture-store faults (corrupted chunks, concurrent writers, kill -9, adding a step)
are the table of ``tests/capture/test_integrity.py``.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import precond_lab.estimators as est
import precond_lab.metrics as met
import precond_lab.online as onl
from precond_lab import linalg
from precond_lab.errors import (
    CheckpointError,
    DegenerateInputError,
    FileFormatError,
    FitNeedsDampingError,
    NonFiniteError,
    NotPositiveDefiniteError,
    NotSymmetricError,
    UnsupportedDtypeError,
    UnsupportedModelError,
)
from precond_lab.structures import Diagonal, EigenKronecker, Kronecker
from precond_lab.targets import DenseTarget, FactoredTarget, SampleTarget


@pytest.fixture(autouse=True, scope="module")
def x64():
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


M, N, K = 3, 4, 20


def _g(dtype=np.float64, scale=1.0):
    return (np.random.default_rng(0).standard_normal((K, M, N)) * scale).astype(dtype)


def _kron(left=None, right=None):
    return Kronecker(np.eye(M) if left is None else left, np.eye(N) if right is None else right)


def _nan_left():
    a = np.eye(M)
    a[1, 1] = np.nan
    return a


def _asym_left():
    a = np.eye(M)
    a[0, 1] = 0.5
    return a


def _spd(d=4):
    a = np.random.default_rng(1).standard_normal((d, d))
    return a @ a.T + d * np.eye(d)


def _neg_weights():
    w = np.full(K, 1.0 / K)
    w[:12] = -1.0
    return w


def _factors(dtype=np.float64, scale=1.0, terms=1):
    rng = np.random.default_rng(2)
    u = rng.standard_normal((K, terms, M)) * scale
    v = rng.standard_normal((K, terms, N)) * scale
    return u.astype(dtype), v.astype(dtype)


def _train(**kwargs):
    import optax

    from precond_lab.train import train

    kwargs = {"steps": 2, "batch_size": 4} | kwargs
    return train("mlp", "teacher", optax.sgd(1e-2), model_options={"hidden": (3,)}, **kwargs)


def _heldout():
    import precond_lab.heldout as heldout

    return heldout


def _quadratic():
    import precond_lab.quadratic as quadratic

    return quadratic


def _fs():
    import precond_lab.finite_sample as fs

    return fs


def _ref():
    from precond_lab import reference

    return reference


def _interop():
    from precond_lab import interop

    return interop


def _capture(**kwargs):
    from precond_lab.capture import capture

    kwargs = {"model": "mlp", "num_samples": 4, "batch_size": 4} | kwargs
    return capture(kwargs.pop("model"), "digits", **kwargs)


def _tuning():
    from precond_lab import tuning

    return tuning


def _toy_method(name="a"):
    return _tuning().Method(name, lambda lr, seed: (lr - 0.5) ** 2 + 0.01 * seed)


def _toy_protocol(**kw):
    return _tuning().Protocol(lr_bounds=(0.25, 1.0), **kw)


def _apply(params, x):
    return x @ params["w"]


def _capture_model(*, loss="cross_entropy", y_shift=0, **kwargs):
    from precond_lab.capture import capture_model

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16) + y_shift
    kwargs = {
        "params": {"w": rng.standard_normal((5, 3))},
        "num_samples": 8,
        "batch_size": 8,
        "targets": ["gradients"],
    } | kwargs
    return capture_model(kwargs.pop("model", _apply), x, y, loss=loss, **kwargs)


def _toy_study():
    t = _tuning()
    methods = [_toy_method("a"), t.Method("b", lambda lr, seed: (lr - 0.5) ** 2 + 0.02 * seed)]
    return t.Study("toy", methods, _toy_protocol(), progress=False).run()


def _train_named(model, **kwargs):
    import optax

    from precond_lab.train import train

    return train(model, "teacher", optax.sgd(1e-2), steps=2, batch_size=4, **kwargs)


def _train_probe(**kwargs):
    from precond_lab.train import Probe

    return _train(probe=Probe(steps=(1,), **kwargs))


def _train_tx(tx):
    from precond_lab.train import train

    return train("mlp", "teacher", tx, steps=2, batch_size=4, model_options={"hidden": (3,)})


def _train_dataset(dataset):
    import optax

    from precond_lab.train import train

    return train("mlp", dataset, optax.sgd(1e-2), steps=2, batch_size=4)


def _probe(**kwargs):
    from precond_lab.train import Probe

    return Probe(**({"steps": (1,)} | kwargs))


def _save(path, data: bytes):
    import tempfile
    from pathlib import Path

    out = Path(tempfile.mkdtemp()) / path
    out.write_bytes(data)
    return out


def _online(fn):
    def run():
        estimator = fn()
        g = jnp.asarray(_g()[:2])
        state = estimator.init(g[0])
        return estimator.update(state, g[1])

    return run


CASES = [
    # --- structures (validated on construction) ---
    ("kronecker NaN factor", lambda: _kron(_nan_left()), NonFiniteError, r"left factor .*NaN"),
    (
        "kronecker Inf factor",
        lambda: _kron(right=np.full((N, N), np.inf)),
        NonFiniteError,
        r"right factor .*Inf",
    ),
    (
        "kronecker non-symmetric",
        lambda: _kron(_asym_left()).eigen(),
        NotSymmetricError,
        r"left factor is not symmetric",
    ),
    (
        "score of a non-symmetric Kronecker",
        lambda: met.score(_g(), _kron(_asym_left()), damping=1e-3),
        NotSymmetricError,
        r"left factor is not symmetric",
    ),
    (
        "kronecker complex",
        lambda: _kron(np.eye(M) * 1j),
        TypeError,
        r"left factor must have a real floating dtype",
    ),
    (
        "kronecker NaN scale",
        lambda: Kronecker(np.eye(M), np.eye(N), np.nan),
        NonFiniteError,
        r"scale .*NaN",
    ),
    (
        "kronecker empty",
        lambda: Kronecker(np.eye(0), np.eye(N)),
        ValueError,
        r"left factor .*at least 1×1",
    ),
    (
        "eigen NaN values",
        lambda: EigenKronecker(np.eye(M), np.eye(N), np.full((M, N), np.nan)),
        NonFiniteError,
        r"values .*NaN",
    ),
    (
        "eigen non-orthogonal basis",
        lambda: EigenKronecker(2 * np.eye(M), np.eye(N), np.ones((M, N))),
        ValueError,
        r"left_basis is not orthogonal",
    ),
    (
        "diagonal Inf",
        lambda: Diagonal(np.full((M, N), np.inf)),
        NonFiniteError,
        r"diagonal values .*Inf",
    ),
    (
        "score of NaN Kronecker",
        lambda: met.score(_g(), Kronecker(_nan_left(), np.eye(N)), damping=1e-3),
        NonFiniteError,
        r"left factor .*NaN",
    ),
    # --- zero and degenerate inputs ---
    (
        "dense target negative shape",
        lambda: DenseTarget(np.eye(4), (-2, -2)),
        ValueError,
        r"shape .*positive.*\(-2, -2\)",
    ),
    (
        "all-zero samples: shampoo²",
        lambda: est.shampoo_squared(np.zeros((K, M, N))),
        DegenerateInputError,
        r"SampleTarget: target zero, tr Σ = 0 \(every sample, or every weight",
    ),
    (
        "all-zero weights",
        lambda: SampleTarget(_g(), weights=np.zeros(K)),
        DegenerateInputError,
        r"weights are all zero",
    ),
    (
        "score of zero approximation",
        lambda: met.score(_g(), Kronecker(np.zeros((M, M)), np.eye(N)), damping=1e-3),
        DegenerateInputError,
        r"approximation is zero",
    ),
    (
        "score against zero target",
        lambda: met.score(np.zeros((K, M, N)), _kron(), damping=1e-3),
        DegenerateInputError,
        r"SampleTarget: target zero",
    ),
    (
        "empty sample axis",
        lambda: SampleTarget(np.zeros((0, M, N))),
        ValueError,
        r"no samples|empty",
    ),
    ("empty row dim", lambda: SampleTarget(np.zeros((K, 0, N))), ValueError, r"m = 0|empty"),
    (
        "DataArray with an empty class dim",
        lambda: SampleTarget(
            xr.DataArray(np.ones((K, 0, M, N)), dims=("sample", "class", "row", "col"))
        ),
        ValueError,
        r"has empty dim\(s\) \['class'\]",
    ),
    (
        "DataArray with an empty row dim",
        lambda: SampleTarget(xr.DataArray(np.ones((K, 0, N)), dims=("sample", "row", "col"))),
        ValueError,
        r"has empty dim\(s\) \['row'\]",
    ),
    # --- float32 range, half precision ---
    (
        "float32 overflow",
        lambda: est.shampoo_squared(_g(np.float32, 1e30)),
        NonFiniteError,
        r"overflow.*float32.*rescale.*float64",
    ),
    (
        "float32 underflow",
        lambda: est.shampoo_squared(_g(np.float32, 1e-30)),
        DegenerateInputError,
        r"underflow.*float32.*rescale.*float64",
    ),
    # --- FactoredTarget: the same checks as SampleTarget (issue 23, item 2) ---
    (
        "factored: dead layer (all-zero factors), cosine",
        lambda: met.cosine_similarity(FactoredTarget(*_factors(scale=0.0)), _kron()),
        DegenerateInputError,
        r"FactoredTarget: target zero, tr Σ = 0 \(every sample, or every weight",
    ),
    (
        "factored: all-zero weights",
        lambda: FactoredTarget(*_factors(), weights=np.zeros(K)),
        DegenerateInputError,
        r"weights are all zero|target zero",
    ),
    (
        "factored: float32 factors ×1e20 overflow",
        lambda: FactoredTarget(*_factors(np.float32, 1e20)),
        NonFiniteError,
        r"FactoredTarget: ‖G‖² of sample 0 overflows float32 although its factors are "
        r"finite.*rescale.*float64",
    ),
    (
        "factored: float32 factors ×1e-12 underflow",
        lambda: FactoredTarget(*_factors(np.float32, 1e-12, terms=2)),
        DegenerateInputError,
        r"FactoredTarget: tr Σ = Σ w‖G‖² underflows to 0 in float32.*rescale.*float64",
    ),
    (
        "factored: NaN in the right factor",
        lambda: FactoredTarget(_factors()[0], np.where(np.arange(N) == 1, np.nan, _factors()[1])),
        NonFiniteError,
        r"right factors contain NaN or Inf: first at sample index 0",
    ),
    (
        "factored: centered, every sample equal",
        lambda: FactoredTarget(np.ones((K, 1, M)), np.ones((K, 1, N)), center=True),
        DegenerateInputError,
        r"FactoredTarget: target zero",
    ),
    (
        "float16 samples",
        lambda: SampleTarget(_g(np.float16)),
        UnsupportedDtypeError,
        r"dtype float16, .*upcast explicitly, e.g. x.astype\(np.float32\)",
    ),
    (
        "bfloat16 samples",
        lambda: SampleTarget(jnp.asarray(_g(), jnp.bfloat16)),
        UnsupportedDtypeError,
        r"dtype bfloat16, .*upcast explicitly",
    ),
    # --- indefinite Σ from negative weights ---
    (
        "kl_optimal indefinite Σ+λI",
        lambda: est.kl_optimal(_g(), weights=_neg_weights(), damping=1e-3),
        NotPositiveDefiniteError,
        r"Σ \+ λI is not positive definite: its smallest eigenvalue is -.*Negative sample weights",
    ),
    (
        "direction_quality indefinite Σ+λI",
        lambda: met.direction_quality(
            SampleTarget(_g(), weights=_neg_weights()), _kron(), _g()[0], damping=1e-3
        ),
        NotPositiveDefiniteError,
        r"Σ \+ λI is not positive definite: its smallest eigenvalue is -.*damping λ >",
    ),
    # --- options ---
    (
        "power_iteration zero init",
        lambda: est.power_iteration(_g(), 3, init=(np.zeros((M, M)), np.zeros((N, N)))),
        ValueError,
        r"init left factor A0 must be finite and non-zero",
    ),
    (
        "power_iteration negative steps",
        lambda: est.power_iteration(_g(), -1),
        ValueError,
        r"steps must be a non-negative integer; got -1",
    ),
    (
        "kl_optimal swapped init",
        lambda: est.kl_optimal(_g(), damping=1e-3, init=(np.eye(N), np.eye(M))),
        ValueError,
        r"init .*\(3, 3\) and \(4, 4\).*swapped",
    ),
    (
        "kl_optimal init='identity'",
        lambda: est.kl_optimal(_g(), damping=1e-3, init="identity"),
        None,
        None,
    ),
    (
        "kl_optimal init='random'",
        lambda: est.kl_optimal(_g(), damping=1e-3, init="random"),
        ValueError,
        r"init must be None, 'identity', a Kronecker or",
    ),
    (
        "kl_optimal max_iter 0",
        lambda: est.kl_optimal(_g(), damping=1e-3, max_iter=0),
        ValueError,
        r"max_iter must be an integer in \[1, inf\); got 0",
    ),
    (
        "kl_optimal string damping",
        lambda: est.kl_optimal(_g(), damping="1e-3"),
        TypeError,
        r"damping must be a real number; got '1e-3'",
    ),
    (
        "linalg unknown option",
        lambda: linalg.matrix_power(_spd(), -0.5, methodd="eigh"),
        TypeError,
        r"unknown option\(s\) \['methodd'\] for method 'eigh'; its options: none",
    ),
    (
        "linalg option of another method",
        lambda: linalg.matrix_power(_spd(), -0.5, steps=3),
        TypeError,
        r"unknown option.*steps.*eigh",
    ),
    (
        "linalg NaN exponent",
        lambda: linalg.matrix_power(_spd(), np.nan),
        ValueError,
        r"exponent must be a real number in \(-inf, inf\); got nan",
    ),
    (
        "linalg max_iter 0",
        lambda: linalg.matrix_power(_spd(), -0.5, method="newton", max_iter=0),
        ValueError,
        r"max_iter must be an integer in \[1, inf\); got 0",
    ),
    (
        "linalg negative qr steps",
        lambda: linalg.matrix_power(_spd(), -0.5, method="qr_refresh", steps=-2),
        ValueError,
        r"steps must be an integer in \[1, inf\); got -2",
    ),
    (
        "linalg string damping",
        lambda: linalg.matrix_power(_spd(), -0.5, "big"),
        TypeError,
        r"damping must be a real number; got 'big'",
    ),
    (
        "linalg NaN tol",
        lambda: linalg.matrix_power(_spd(), -0.5, method="newton", tol=np.nan),
        ValueError,
        r"tol must be a real number in \[0, inf\); got nan",
    ),
    (
        "linalg if_shampoo beta 0",
        lambda: linalg.matrix_power(_spd(), -1.0, method="if_shampoo", beta=0.0),
        ValueError,
        r"beta must be a real number in \(0, inf\); got 0.0",
    ),
    (
        "online shampoo beta=1",
        _online(lambda: onl.shampoo(shampoo_beta=1.0)),
        ValueError,
        r"shampoo_beta must be a real number in \[0, 1\); got 1.0",
    ),
    (
        "online kl_shampoo beta=1",
        _online(lambda: onl.kl_shampoo(shampoo_beta=1.0)),
        ValueError,
        r"shampoo_beta must be a real number in \[0, 1\); got 1.0",
    ),
    (
        "online bregman_shampoo beta=1",
        _online(lambda: onl.bregman_shampoo(0.5, shampoo_beta=1.0)),
        ValueError,
        r"shampoo_beta must be a real number in \[0, 1\); got 1.0",
    ),
    (
        "online bregman_shampoo q nan",
        _online(lambda: onl.bregman_shampoo(float("nan"))),
        ValueError,
        r"q must be a real number in \[0, inf\); got nan",
    ),
    (
        "online soap beta2 nan",
        _online(lambda: onl.soap(b2=float("nan"))),
        ValueError,
        r"b2 must be a real number in \[0, 1\); got nan",
    ),
    (
        "online soap frequency -1",
        _online(lambda: onl.soap(frequency=-1)),
        ValueError,
        r"frequency must be an integer in \[0, inf\); got -1",
    ),
    (
        "online purifying_shampoo tolerance 2",
        _online(lambda: onl.purifying_shampoo(tolerance=2.0)),
        ValueError,
        r"tolerance must be a real number in \[0, 1\]; got 2.0",
    ),
    (
        "online purifying_shampoo solver 'svd'",
        _online(lambda: onl.purifying_shampoo(solver="svd")),
        ValueError,
        r"solver must be one of \('qr', 'eigh'\), got 'svd'",
    ),
    (
        "online purifying_shampoo max_iterations 0",
        _online(lambda: onl.purifying_shampoo(max_iterations=0)),
        ValueError,
        r"max_iterations must be an integer in \[1, inf\); got 0",
    ),
    (
        "online dykaf shampoo_beta 1",
        _online(lambda: onl.dykaf(shampoo_beta=1.0)),
        ValueError,
        r"shampoo_beta must be a real number in \[0, 1\); got 1.0",
    ),
    (
        "online dykaf tensor_mode",
        _online(lambda: onl.dykaf(tensor_mode="matrix")),
        ValueError,
        r"online estimators take matrices \(m, n\): tensor_mode does not apply",
    ),
    (
        "online run every=0",
        lambda: onl.run_online(_g()[:3], ("shampoo",), every=0),
        ValueError,
        r"every must be an integer in \[1, inf\); got 0",
    ),
    (
        "spectrum k=-1",
        lambda: met.spectrum(_g(), k=-1),
        ValueError,
        r"k must be an integer in \[1, inf\); got -1",
    ),
    # --- direction_quality checks its gradient ---
    # --- train: options (issue 23, items 3 and 6) ---
    (
        "train checkpoint_every=0",
        lambda: _train(checkpoint_every=0),
        ValueError,
        r"checkpoint_every must be an integer ≥ 1; got 0",
    ),
    ("train steps=0", lambda: _train(steps=0), ValueError, r"steps must be an integer ≥ 1; got 0"),
    (
        "train steps=2.5",
        lambda: _train(steps=2.5),
        ValueError,
        r"steps must be an integer ≥ 1; got 2\.5",
    ),
    (
        "train batch_size above the training set",
        lambda: _train(batch_size=10**9),
        ValueError,
        r"batch_size must be at most the \d+ training examples",
    ),
    (
        "train eval_every=-1",
        lambda: _train(eval_every=-1),
        ValueError,
        r"eval_every must be an integer ≥ 0",
    ),
    (
        "train divergence_factor nan",
        lambda: _train(divergence_factor=float("nan")),
        ValueError,
        r"divergence_factor must be a number > 1",
    ),
    (
        "train checkpoint into a missing folder",
        lambda: _train(checkpoint="/nonexistent-dir/x.npz"),
        ValueError,
        r"checkpoint: the folder /nonexistent-dir does not exist",
    ),
    # --- gain replacement (P4 App. D.3): heldout.swap_gains, precond_lab.quadratic ---
    (
        "swap_gains part='middle'",
        lambda: _heldout().swap_gains(_kron(), _kron(), part="middle"),
        ValueError,
        r"part must be 'leading' or 'tail'; got 'middle'",
    ),
    (
        "swap_gains fraction=0",
        lambda: _heldout().swap_gains(_kron(), _kron(), fraction=0),
        ValueError,
        r"fraction must be in \(0, 1\] \(the share of directions\); got 0",
    ),
    (
        "swap_gains fraction='half'",
        lambda: _heldout().swap_gains(_kron(), _kron(), fraction="half"),
        TypeError,
        r"fraction must be a number in \(0, 1\], e\.g\. 0\.5",
    ),
    (
        "swap_gains tail of fraction=1",
        lambda: _heldout().swap_gains(_kron(), _kron(), part="tail", fraction=1.0),
        ValueError,
        r"fraction=1\.0 leaves no tail direction of the 12 .*choose a fraction in",
    ),
    (
        "swap_gains shapes differ",
        lambda: _heldout().swap_gains(_kron(), Kronecker(np.eye(N), np.eye(M))),
        ValueError,
        r"base and donor must approximate the same matrix: matrix_shape \(3, 4\) vs \(4, 3\)",
    ),
    (
        "swap_gains singular donor",
        lambda: _heldout().swap_gains(_kron(), _kron(left=np.diag([1.0, 1.0, 0.0]))),
        ValueError,
        r"donor is not positive definite .*fit it with damping > 0",
    ),
    (
        "eigen_gains donor not a structure",
        lambda: _heldout().eigen_gains(_kron(), np.eye(M * N)),
        TypeError,
        r"donor must be a structure .*; got ndarray",
    ),
    (
        "train_gain_swap unknown variant",
        lambda: _quadratic().train_gain_swap(
            _quadratic().make_quadratic(2, 3), jax.random.PRNGKey(0), 1e-3, variant="adam"
        ),
        ValueError,
        r"variant must be one of \('kl', 'f_leading'.*; got 'adam'",
    ),
    (
        "train_gain_swap history=0",
        lambda: _quadratic().train_gain_swap(
            _quadratic().make_quadratic(2, 3), jax.random.PRNGKey(0), 1e-3, history=0
        ),
        ValueError,
        r"history must be an integer ≥ 1; got 0",
    ),
    (
        "make_quadratic scale=0",
        lambda: _quadratic().make_quadratic(2, 3, scale=0.0),
        ValueError,
        r"scale must be a finite number ≥ 0 \(scale > 0\); got 0\.0",
    ),
    # fmt: off
    # --- P4 library (issue 22): finite_sample, heldout, reference, online.fit_stream ---
    (
        "effective_rank negative",
        lambda: _fs().effective_rank([1.0, -0.5]),
        ValueError,
        r"eigenvalues must be finite, ≥ 0 and not all zero",
    ),
    (
        "one_sided_factor_error trials=1",
        lambda: _fs().one_sided_factor_error(np.eye(M), np.eye(N), 0.5, [4], 1),
        ValueError,
        r"trials must be an integer in \[2, inf\); got 1",
    ),
    (
        "one_sided_factor_error left not PD",
        lambda: _fs().one_sided_factor_error(-np.eye(M), np.eye(N), 0.5, [4], 4),
        ValueError,
        r"left must be positive definite",
    ),
    (
        "one_sided_factor_error no sizes",
        lambda: _fs().one_sided_factor_error(np.eye(M), np.eye(N), 0.5, [], 4),
        ValueError,
        r"sizes is empty",
    ),
    (
        "three_component_gradients num=0",
        lambda: _fs().three_component_gradients(0),
        ValueError,
        r"num must be an integer in \[1, inf\); got 0",
    ),
    (
        "three_component_gradients noise<0",
        lambda: _fs().three_component_gradients(4, noise=-1.0),
        ValueError,
        r"noise must be a real number in \[0, inf\)",
    ),
    (
        "kron_relative_error shapes differ",
        lambda: _fs().kron_relative_error(_kron(), Kronecker(np.eye(2), np.eye(N))),
        ValueError,
        r"fit is \(3, 4\) but reference is \(2, 4\)",
    ),
    (
        "kron_relative_error singular reference",
        lambda: _fs().kron_relative_error(_kron(), _kron(left=np.zeros((M, M)))),
        ValueError,
        r"reference left factor must be positive definite",
    ),
    (
        "joint_fit_errors N > pool",
        lambda: _fs().joint_fit_errors(_g(), [0.5], [K + 1], 1),
        ValueError,
        r"sizes \[21\] must be non-empty and ≤ the pool's 20 samples",
    ),
    (
        "joint_fit_errors permutations=0",
        lambda: _fs().joint_fit_errors(_g(), [0.5], [4], 0),
        ValueError,
        r"permutations must be an integer in \[1, inf\); got 0",
    ),
    (
        "minibatch_means batch=0",
        lambda: _heldout().minibatch_means(_g(), 0),
        ValueError,
        r"batch must be an integer in \[1, inf\); got 0",
    ),
    (
        "minibatch_means batch > N",
        lambda: _heldout().minibatch_means(_g(), K + 1),
        ValueError,
        r"samples must be \(N, m, n\) with N ≥ batch 21",
    ),
    (
        "disjoint_blocks too long",
        lambda: _heldout().disjoint_blocks(10, 11),
        ValueError,
        r"10 samples cannot fill one block of length 11",
    ),
    (
        "disjoint_blocks max_blocks=0",
        lambda: _heldout().disjoint_blocks(10, 2, 0),
        ValueError,
        r"max_blocks must be an integer in \[1, inf\); got 0",
    ),
    (
        "spectrum_log_ratio damping<0",
        lambda: _heldout().spectrum_log_ratio(_g(), _kron(), damping=-1.0),
        ValueError,
        r"damping must be a real number in \[0, inf\); got -1",
    ),
    (
        "fold_scale_errors one fold",
        lambda: _heldout().fold_scale_errors(_g(), [np.arange(K)]),
        ValueError,
        r"fold_scale_errors needs ≥ 2 folds; got 1",
    ),
    (
        "trace_power_fit_errors few > N",
        lambda: _heldout().trace_power_fit_errors(_g(), _g(), 0.5, few=K + 1),
        ValueError,
        r"few must be an integer in \[1, 20\]; got 21",
    ),
    (
        "fit_stream one gradient",
        lambda: onl.fit_stream(onl.bregman_shampoo(0.5), _g()[:1]),
        ValueError,
        r"stream must be \(T, m, n\) gradients with T ≥ 2",
    ),
    (
        "fit_stream NaN",
        lambda: onl.fit_stream(onl.bregman_shampoo(0.5), _g() * np.nan),
        ValueError,
        r"stream holds NaN/Inf",
    ),
    (
        "bregman_penalty r=0",
        lambda: _ref().bregman_penalty(0.5, 1.0, 0.0),
        ValueError,
        r"lam and r must be finite and > 0",
    ),
    (
        "bregman_perturbation_increase trials=0",
        lambda: _ref().bregman_perturbation_increase(
            np.eye(12), np.eye(M), np.eye(N), 0.5, trials=0
        ),
        ValueError,
        r"trials must be ≥ 1; got 0",
    ),
    (
        "bregman_optimality_checks 2-d samples",
        lambda: est.bregman_optimality_checks(np.ones((M, N)), 0.5),
        ValueError,
        r"samples must be \(N, m, n\); got shape \(3, 4\)",
    ),
    (
        "bregman_stationarity_residual not a Kronecker",
        lambda: est.bregman_stationarity_residual(_g(), Diagonal(np.ones((M, N))), 0.5),
        TypeError,
        r"fit must be a Kronecker; got Diagonal",
    ),
    # fmt: on
    # --- options: counts, iterations, sizes (issue 23, item 6) ---
    (
        "heldout num_directions=0",
        lambda: _heldout().heldout_scale_error(_g(), _g(), num_directions=0),
        ValueError,
        r"num_directions must be an integer in \[1, inf\); got 0",
    ),
    (
        "heldout num_directions=-1",
        lambda: _heldout().source_directions(_g(), -1),
        ValueError,
        r"num_directions must be an integer in \[1, inf\); got -1",
    ),
    (
        "heldout num_directions=2.5",
        lambda: _heldout().source_directions(_g(), 2.5),
        TypeError,
        r"num_directions must be an integer; got 2\.5",
    ),
    (
        "subspace_overlap k_max=0",
        lambda: _heldout().subspace_overlap(_g(), _kron(), k_max=0),
        ValueError,
        r"k_max must be an integer in \[1, inf\); got 0",
    ),
    (
        "heldout_gain_error approx_damping nan",
        lambda: _heldout().heldout_gain_error(_g(), _g(), _kron(), approx_damping=float("nan")),
        ValueError,
        r"approx_damping must be a real number in \[0, inf\); got nan",
    ),
    (
        "heldout_scale_error no held-out fold",
        lambda: _heldout().heldout_scale_error(_g(), []),
        ValueError,
        r"heldout is an empty list",
    ),
    (
        "inverse_quadratic NaN direction",
        lambda: _heldout().inverse_quadratic(_kron(), np.full((2, M, N), np.nan)),
        NonFiniteError,
        r"directions contains non-finite values \(NaN\) at direction index 0",
    ),
    (
        "directional_scales Inf direction",
        lambda: _heldout().directional_scales(
            _g(), np.where(np.arange(2)[:, None, None] == 1, np.inf, np.ones((2, M, N)))
        ),
        NonFiniteError,
        r"directions contains non-finite values \(Inf\) at direction index 1",
    ),
    (
        "interop as_matrices no samples",
        lambda: _interop().sample_target(np.ones((0, M, N))),
        ValueError,
        r"gradients are empty \(shape \(0, 3, 4\)\): at least one sample is needed",
    ),
    (
        "bregman_optimal max_iter=0",
        lambda: est.bregman_optimal(_g(), 0.5, max_iter=0),
        ValueError,
        r"max_iter must be an integer in \[1, inf\); got 0",
    ),
    (
        "bregman_optimal tol nan",
        lambda: est.bregman_optimal(_g(), 0.5, tol=float("nan")),
        ValueError,
        r"tol must be a real number in \[0, inf\); got nan",
    ),
    (
        "frobenius_optimal max_iter=0",
        lambda: est.frobenius_optimal(_g(), max_iter=0),
        ValueError,
        r"max_iter must be an integer in \[1, inf\); got 0",
    ),
    (
        "frobenius_optimal krylov_dim=0",
        lambda: est.frobenius_optimal(_g(), krylov_dim=0),
        ValueError,
        r"krylov_dim must be an integer in \[1, inf\); got 0",
    ),
    (
        "frobenius_optimal tol -1",
        lambda: est.frobenius_optimal(_g(), tol=-1.0),
        ValueError,
        r"tol must be a real number in \[0, inf\); got -1\.0",
    ),
    (
        "kl_optimal max_iter=0",
        lambda: est.kl_optimal(_g(), max_iter=0),
        ValueError,
        r"max_iter must be an integer in \[1, inf\); got 0",
    ),
    (
        "capture layers=[]",
        lambda: _capture(layers=[]),
        ValueError,
        r"layers is empty: name at least one layer, or omit it",
    ),
    (
        "capture mlp hidden=[0]",
        lambda: _capture(model_options={"hidden": [0]}),
        ValueError,
        r"model 'mlp': hidden must be positive integer\(s\); got \[0\]",
    ),
    (
        "capture cnn kernel=0",
        lambda: _capture(model="cnn", model_options={"kernel": 0}),
        ValueError,
        r"model 'cnn': kernel must be positive integer\(s\); got 0",
    ),
    (
        "direction_quality NaN gradient",
        lambda: met.direction_quality(_g(), _kron(), np.full((M, N), np.nan)),
        NonFiniteError,
        r"gradient contains NaN or Inf \(first at entry \(0, 0\)\)",
    ),
    (
        "direction_quality wrong gradient shape",
        lambda: met.direction_quality(_g(), _kron(), np.ones((N, M))),
        ValueError,
        r"gradient must have shape \(…, m, n\) = \(…, 3, 4\) like the target; got \(4, 3\)",
    ),
    # --- rank-r + flat tail (Pro-KLShampoo, issue 21) ---
    (
        "flat_tail_factor non-square",
        lambda: est.flat_tail_factor(np.ones((3, 4)), 1),
        ValueError,
        r"factor must be a non-empty square matrix; got shape \(3, 4\)",
    ),
    (
        "flat_tail_factor NaN",
        lambda: est.flat_tail_factor(_nan_left(), 1),
        ValueError,
        r"factor contains NaN or Inf",
    ),
    (
        "flat_tail_factor rank -1",
        lambda: est.flat_tail_factor(np.eye(M), -1),
        ValueError,
        r"rank must be an integer in \[0, inf\); got -1",
    ),
    (
        "flat_tail_factor rank 1.5",
        lambda: est.flat_tail_factor(np.eye(M), 1.5),
        TypeError,
        r"rank must be an integer; got 1\.5",
    ),
    (
        "flat_tail of a dense matrix",
        lambda: est.flat_tail(np.eye(M * N), 1),
        TypeError,
        r"flat_tail restricts a Kronecker fit \(e\.g\. kl_optimal's\); got ndarray",
    ),
    (
        "flat_tail rank triple",
        lambda: est.flat_tail(_kron(), (1, 2, 3)),
        ValueError,
        r"rank must be an integer or a pair \(r_left, r_right\); got \(1, 2, 3\)",
    ),
    (
        "flat_tail_value without a tail",
        lambda: est.flat_tail_value([3.0, 2.0], 2),
        ValueError,
        r"rank 2 leaves no tail of the 2 eigenvalues \(need rank < d\)",
    ),
    (
        "spike_profile multiple 1",
        lambda: est.spike_profile(np.eye(M), multiple=1.0),
        ValueError,
        r"multiple must be a real number in \(1, inf\); got 1\.0",
    ),
    (
        "spike_profile NaN eigenvalues",
        lambda: est.spike_profile(np.array([1.0, np.nan])),
        ValueError,
        r"eigenvalues must be a non-empty finite 1-D array",
    ),
    (
        "flat_tail_errors no rank",
        lambda: _heldout().flat_tail_errors(_g(), [], damping=1e-3),
        ValueError,
        r"ranks is empty: give at least one rank",
    ),
    (
        "flat_tail_errors fit not Kronecker",
        lambda: _heldout().flat_tail_errors(_g(), [1], fit=Diagonal(np.ones((M, N)))),
        TypeError,
        r"fit must be a Kronecker \(e\.g\. kl_optimal's\); got Diagonal",
    ),
    (
        "flat_tail_errors fit and KL options",
        lambda: _heldout().flat_tail_errors(_g(), [1], fit=_kron(), tol=1e-9),
        TypeError,
        r"options \['tol'\] fit the KL fit; a given fit takes none",
    ),
    # --- issue 23 walk: bregman_divergence arguments ---
    (
        "bregman q=None",
        lambda: met.bregman_divergence(_g(), _kron(), None),
        TypeError,
        r"the trace power q must be a finite real number; got None",
    ),
    (
        "bregman q='half'",
        lambda: met.bregman_divergence(_g(), _kron(), "half"),
        TypeError,
        r"the trace power q must be a finite real number; got 'half'",
    ),
    (
        "bregman q complex",
        lambda: met.bregman_divergence(_g(), _kron(), 0.5j),
        TypeError,
        r"q must be a finite real number; got 0\.5j",
    ),
    (
        "bregman q list",
        lambda: met.bregman_divergence(_g(), _kron(), [0.5, 1.0]),
        TypeError,
        r"q must be a finite real number; got \[0\.5, 1\.0\]",
    ),
    (
        "bregman q nan",
        lambda: met.bregman_divergence(_g(), _kron(), float("nan")),
        ValueError,
        r"q must be a finite real number; got nan",
    ),
    (
        "bregman q=1e300 overflows",
        lambda: met.bregman_divergence(_g(), _kron(), 1e300),
        NonFiniteError,
        r"at q = 1e\+300 overflows float64.*smaller \|q\|, or rescale",
    ),
    (
        "bregman damping string",
        lambda: met.bregman_divergence(_g(), _kron(), 0.5, damping="1e-3"),
        TypeError,
        r"damping must be a real number ≥ 0; got '1e-3'",
    ),
    (
        "bregman damping -1",
        lambda: met.bregman_divergence(_g(), _kron(), 0.5, damping=-1.0),
        ValueError,
        r"damping must be a finite number ≥ 0; got -1\.0",
    ),
    (
        "bregman approx_damping inf",
        lambda: met.bregman_divergence(_g(), _kron(), 0.5, approx_damping=np.inf),
        ValueError,
        r"approx_damping must be a finite number ≥ 0; got inf",
    ),
    (
        "bregman q<0 on a singular target",
        lambda: met.bregman_divergence(_g()[:2], _kron(), -1.0),
        FitNeedsDampingError,
        r"singular.*Pass damping > 0",
    ),
    (
        "bregman approximation of swapped shape",
        lambda: met.bregman_divergence(_g(), Kronecker(np.eye(N), np.eye(M)), 0.5),
        ValueError,
        r"approximation has matrix_shape \(4, 3\) but the target has \(3, 4\)",
    ),
    (
        "bregman approximation a matrix",
        lambda: met.bregman_divergence(_g(), np.eye(M * N), 0.5),
        TypeError,
        r"approx must be a structure",
    ),
    (
        "bregman chunk_size 0",
        lambda: met.bregman_divergence(_g(), _kron(), 0.5, chunk_size=0),
        ValueError,
        r"chunk_size must be a positive integer; got 0",
    ),
    (
        "bregman weights of the wrong length",
        lambda: met.bregman_divergence(_g(), _kron(), 0.5, weights=np.ones(3)),
        ValueError,
        r"weights must have shape \(N,\) = \(20,\); got \(3,\)",
    ),
    (
        "bregman center='yes'",
        lambda: met.bregman_divergence(_g(), _kron(), 0.5, center="yes"),
        TypeError,
        r"center must be True or False; got 'yes'",
    ),
    # --- issue 23 walk: FactoredTarget arguments ---
    (
        "factored: zero terms",
        lambda: FactoredTarget(_factors()[0][:, :0], _factors()[1][:, :0]),
        ValueError,
        r"factors have T = 0 terms.*at least one term",
    ),
    (
        "factored: sample counts differ",
        lambda: FactoredTarget(_factors()[0], _factors()[1][:5]),
        ValueError,
        r"left and right factors must agree on every axis but the last",
    ),
    (
        "factored: empty sample axis",
        lambda: FactoredTarget(_factors()[0][:0], _factors()[1][:0]),
        ValueError,
        r"factors are empty \(N = 0\)",
    ),
    (
        "factored: empty row side",
        lambda: FactoredTarget(_factors()[0][..., :0], _factors()[1]),
        ValueError,
        r"factors give an empty matrix shape \(0, 4\)",
    ),
    (
        "factored: integer factors",
        lambda: FactoredTarget(np.ones((K, 1, M), int), np.ones((K, 1, N), int)),
        TypeError,
        r"left must have a real floating dtype.*got int64",
    ),
    (
        "factored: float16 factors",
        lambda: FactoredTarget(*(f.astype(np.float16) for f in _factors())),
        UnsupportedDtypeError,
        r"left has dtype float16.*upcast explicitly",
    ),
    (
        "factored: weights (N, 1)",
        lambda: FactoredTarget(*_factors(), weights=np.ones((K, 1))),
        ValueError,
        r"weights must have shape \(N,\) = \(20,\); got \(20, 1\)",
    ),
    (
        "factored: NaN weights",
        lambda: FactoredTarget(*_factors(), weights=np.full(K, np.nan)),
        NonFiniteError,
        r"weights contains non-finite values \(NaN\) at sample index 0",
    ),
    (
        "factored: mode 'fast'",
        lambda: FactoredTarget(*_factors(), mode="fast"),
        ValueError,
        r"mode must be 'auto', 'factored' or 'dense'; got 'fast'",
    ),
    (
        "factored: center='x'",
        lambda: FactoredTarget(*_factors(), center="x"),
        TypeError,
        r"center must be True or False; got 'x'",
    ),
    (
        "sample target center='x'",
        lambda: SampleTarget(_g(), center="x"),
        TypeError,
        r"center must be True or False; got 'x'",
    ),
    (
        "factored: matvec of the wrong size",
        lambda: FactoredTarget(*_factors()).matvec(np.ones(5)),
        ValueError,
        r"cannot multiply an array of shape \(5,\): use \(mn,\) = \(12,\)",
    ),
    # --- issue 23 walk: interop ---
    (
        "interop from_flat shape '34'",
        lambda: _interop().from_flat(np.ones((5, 12)), "34"),
        ValueError,
        r"shape must be the matrix shape \(m, n\): two positive integers.*got '34'",
    ),
    (
        "interop from_flat shape (12,)",
        lambda: _interop().from_flat(np.ones((5, 12)), (12,)),
        ValueError,
        r"shape must be the matrix shape \(m, n\).*got \(12,\)",
    ),
    (
        "interop from_flat shape (-3, -4)",
        lambda: _interop().from_flat(np.ones((5, 12)), (-3, -4)),
        ValueError,
        r"two positive integers.*got \(-3, -4\)",
    ),
    (
        "interop from_flat shape (2, 3, 4)",
        lambda: _interop().sample_target(np.ones((5, 24)), shape=(2, 3, 4)),
        ValueError,
        r"shape must be the matrix shape \(m, n\).*got \(2, 3, 4\)",
    ),
    (
        "interop from_flat columns do not fit",
        lambda: _interop().from_flat(np.ones((5, 12)), (3, 5)),
        ValueError,
        r"gradients of shape \(5, 12\) cannot be \(N, m·n\) for shape \(3, 5\): need 15",
    ),
    (
        "interop from_torch garbage file",
        lambda: _interop().from_torch(str(_save("grads.pt", b"junk"))),
        FileFormatError,
        r"grads\.pt: cannot be read as a torch file.*save it again",
    ),
    (
        "interop from_torch empty mapping",
        lambda: _interop().from_torch({}),
        ValueError,
        r"the mapping of gradients is empty",
    ),
    (
        "interop from_torch unknown key",
        lambda: _interop().from_torch({"fc.weight": np.ones((2, M, N))}, key="fc.bias"),
        KeyError,
        r"'fc\.bias' not in the gradients; keys: fc\.weight",
    ),
    (
        "interop from_backpack no parameters",
        lambda: _interop().from_backpack(iter(())),
        ValueError,
        r"named_parameters yielded no parameter",
    ),
    (
        "interop from_backpack reduction 'max'",
        lambda: _interop().from_backpack([], reduction="max"),
        ValueError,
        r"reduction must be 'mean' or 'sum'; got 'max'",
    ),
    (
        "interop from_xarray of an ndarray",
        lambda: _interop().from_xarray(_g()),
        TypeError,
        r"from_xarray needs an xarray\.DataArray \(wrap an array.*got ndarray",
    ),
    (
        "interop from_xarray of a Dataset",
        lambda: _interop().from_xarray(xr.Dataset({"g": (("sample", "row", "col"), _g())})),
        TypeError,
        r"from_xarray needs an xarray\.DataArray \(a Dataset: pick one variable",
    ),
    (
        "interop from_xarray unnamed dims",
        lambda: _interop().from_xarray(xr.DataArray(_g(), dims=("a", "b", "c"))),
        ValueError,
        r"dims \['sample', 'row', 'col'\] not in the DataArray's dims.*sample=, row=, col=",
    ),
    (
        "interop from_npy truncated file",
        lambda: _interop().from_npy(_save("g.npy", b"\x93NUMPY")),
        FileFormatError,
        r"g\.npy: cannot be read as a NumPy \.npy/\.npz file",
    ),
    (
        "interop from_curvlinops param_shape (0, 4)",
        lambda: _interop().from_curvlinops(np.eye(12), (0, 4)),
        ValueError,
        r"param_shape must be a non-empty shape of positive sizes; got \(0, 4\)",
    ),
    (
        "interop from_curvlinops block of another size",
        lambda: _interop().from_curvlinops(np.eye(12), (3, 5)),
        ValueError,
        r"curvlinops block of shape \(12, 12\) does not fit \(3, 5\)",
    ),
    # --- issue 23 walk: capture_model ---
    (
        "capture_model params of another model",
        lambda: _capture_model(params={"w": np.ones((3, 5))}),
        UnsupportedModelError,
        r"apply function failed on one example of x \(shape \(1, 5\)\) with the given "
        r"parameters \{'w': \(3, 5\)\}.*Check that params belong to this model",
    ),
    (
        "capture_model targets='gradients' (a string)",
        lambda: _capture_model(targets="gradients"),
        TypeError,
        r"targets must be a list of names, e.g. \['gradients'\]",
    ),
    (
        "capture_model default batch_size above the examples",
        lambda: _capture_model(batch_size=32),
        ValueError,
        r"batch_size must be in \[1, 16\] \(the 16 training examples\); got 32 \(the "
        r"training mini-batch size",
    ),
    (
        "capture_model unknown loss",
        lambda: _capture_model(loss="hinge"),
        ValueError,
        r"apply_fn needs loss='cross_entropy' or 'mse'; got 'hinge'",
    ),
    (
        "capture_model labels beyond the outputs",
        lambda: _capture_model(y_shift=5),
        ValueError,
        r"train labels lie in \[5, 7\] but the model has 3 outputs: class labels must lie in "
        r"\[0, 3\)",
    ),
    (
        "capture_model negative labels",
        lambda: _capture_model(y_shift=-5),
        ValueError,
        r"cross_entropy labels must be class indices ≥ 0",
    ),
    (
        "capture_model no params for a function",
        lambda: _capture_model(params=None),
        ValueError,
        r"a plain apply function needs params=",
    ),
    (
        "capture_model num_samples 0",
        lambda: _capture_model(num_samples=0),
        ValueError,
        r"num_samples must be in \[1, 16\]",
    ),
    (
        "capture_model unknown layer",
        lambda: _capture_model(layers=["nope"]),
        ValueError,
        r"unknown layers \['nope'\]; valid layers: w",
    ),
    (
        "capture_model negative step",
        lambda: _capture_model(steps=[-1]),
        ValueError,
        r"steps must be non-negative integers; got \[-1\]",
    ),
    (
        "capture_model storage 'x'",
        lambda: _capture_model(storage="x"),
        ValueError,
        r"unknown storage \['x'\]; valid storage: auto, dense, factored",
    ),
    (
        "capture_model layout 'x'",
        lambda: _capture_model(layout="x"),
        ValueError,
        r"unknown layout 'x'; valid layouts: auto, flax, torch",
    ),
    (
        "capture_model dtype float16",
        lambda: _capture_model(dtype="float16"),
        ValueError,
        r"dtype must be float32 or float64; got 'float16'",
    ),
    # --- issue 23 walk: train (checks that already hold; see the report for the rest) ---
    (
        "train unknown model name",
        lambda: _train_named("nope"),
        ValueError,
        r"unknown model 'nope'; valid models: mlp",
    ),
    (
        "train seed -1",
        lambda: _train(seed=-1),
        ValueError,
        r"seed must be an integer ≥ 0; got -1",
    ),
    (
        "train eval_samples -1",
        lambda: _train(eval_samples=-1),
        ValueError,
        r"eval_samples must be an integer ≥ 0; got -1",
    ),
    (
        "train unknown model option",
        lambda: _train_named("mlp", model_options={"nope": 1}),
        ValueError,
        r"unknown option\(s\) \['nope'\] for model 'mlp'; valid: \['activation', 'hidden'\]",
    ),
    (
        "train hyperparams without inject_hyperparams",
        lambda: _train(hyperparams={"learning_rate": 0.1}),
        ValueError,
        r"hyperparams= needs a transformation built with optax\.inject_hyperparams",
    ),
    (
        "train garbage checkpoint",
        lambda: _train(checkpoint=_save("run.npz", b"garbage")),
        CheckpointError,
        r"run\.npz: not a readable checkpoint.*delete it or pass another checkpoint path",
    ),
    (
        "train Probe target 'nope'",
        lambda: _train_probe(targets=("nope",)),
        ValueError,
        r"probe targets must be among gradients, ggn, ggn-mc; got \['nope'\]",
    ),
    # --- issue 23 walk: tuning (checks that already hold; see the report for the rest) ---
    (
        "tuning paired_interval of one difference",
        lambda: _tuning().paired_interval([1.0]),
        ValueError,
        r"a t-interval needs at least 2 paired differences, got 1",
    ),
    (
        "tuning paired_interval NaN",
        lambda: _tuning().paired_interval([1.0, np.nan]),
        ValueError,
        r"paired differences must be finite \(a failed run has no difference\)",
    ),
    (
        "tuning paired_interval level 1",
        lambda: _tuning().paired_interval([1.0, 2.0], 1.0),
        ValueError,
        r"level must be in \(0, 1\), got 1\.0",
    ),
    (
        "tuning lr_grid low 0",
        lambda: _tuning().lr_grid(0, 1),
        ValueError,
        r"need finite 0 < low ≤ high, got 0, 1",
    ),
    (
        "tuning lr_grid NaN",
        lambda: _tuning().lr_grid(np.nan, 1),
        ValueError,
        r"need finite 0 < low ≤ high, got nan, 1",
    ),
    (
        "tuning lr_grid swapped",
        lambda: _tuning().lr_grid(1, 0.1),
        ValueError,
        r"need finite 0 < low ≤ high, got 1, 0\.1",
    ),
    (
        "tuning lr_grid points_per_octave 0",
        lambda: _tuning().lr_grid(0.1, 1, points_per_octave=0),
        ValueError,
        r"points_per_octave must be an integer ≥ 1; got 0",
    ),
    (
        "tuning lr_grid without a point",
        lambda: _tuning().lr_grid(0.3, 0.4),
        ValueError,
        r"no point 2\^\(k/1\) lies in \[0\.3, 0\.4\]",
    ),
    (
        "tuning make_schedule total_steps 0",
        lambda: _tuning().make_schedule(0.1, total_steps=0),
        ValueError,
        r"total_steps must be an integer ≥ 1; got 0",
    ),
    (
        "tuning make_schedule warmup = total",
        lambda: _tuning().make_schedule(0.1, total_steps=10, warmup_steps=10),
        ValueError,
        r"need 0 ≤ warmup_steps < total_steps, got 10, 10",
    ),
    (
        "tuning make_schedule decay 'exp'",
        lambda: _tuning().make_schedule(0.1, total_steps=10, decay="exp"),
        ValueError,
        r"decay must be 'cosine', 'linear' or 'constant', got 'exp'",
    ),
    (
        "tuning Protocol two seeds",
        lambda: _toy_protocol(seeds=(1, 2)),
        ValueError,
        r"need at least 3 distinct confirmation seeds, got \(1, 2\)",
    ),
    (
        "tuning Protocol repeated seed",
        lambda: _toy_protocol(seeds=(1, 1, 2)),
        ValueError,
        r"need at least 3 distinct confirmation seeds",
    ),
    (
        "tuning Protocol selection seed among the seeds",
        lambda: _toy_protocol(seeds=(0, 1, 2)),
        ValueError,
        r"the confirmation seeds must be fresh \(not the selection seed\)",
    ),
    (
        "tuning Protocol threshold -1",
        lambda: _toy_protocol(threshold=-1),
        ValueError,
        r"max_extensions and threshold must be ≥ 0",
    ),
    (
        "tuning Protocol max_extensions -1",
        lambda: _toy_protocol(max_extensions=-1),
        ValueError,
        r"max_extensions and threshold must be ≥ 0",
    ),
    (
        "tuning Protocol vectorize 'yes'",
        lambda: _toy_protocol(vectorize="yes"),
        ValueError,
        r"vectorize must be 'auto', True or False, got 'yes'",
    ),
    (
        "tuning Study without methods",
        lambda: _tuning().Study("t", [], _toy_protocol(), progress=False),
        ValueError,
        r"need at least one method and distinct names, got \[\]",
    ),
    (
        "tuning Study repeated method name",
        lambda: _tuning().Study(
            "t", [_toy_method(), _toy_method()], _toy_protocol(), progress=False
        ),
        ValueError,
        r"distinct names, got \['a', 'a'\]",
    ),
    (
        "tuning pilot_bounds swapped range",
        lambda: _tuning().pilot_bounds([_toy_method()], low=1, high=0.1),
        ValueError,
        r"need finite 0 < low ≤ high, got 1, 0\.1",
    ),
    (
        "tuning pilot_bounds every run fails",
        lambda: _tuning().pilot_bounds([_tuning().Method("s", lambda lr, seed: np.nan)]),
        ValueError,
        r"every pilot run of 's' failed",
    ),
    # --- the rest of the issue-23 walk over tuning and train, fixed here ---
    (
        "tuning paired_interval strings",
        lambda: _tuning().paired_interval(["a", "b"]),
        TypeError,
        r"paired differences must be numbers",
    ),
    (
        "tuning paired_interval 2-D",
        lambda: _tuning().paired_interval(np.ones((2, 2))),
        ValueError,
        r"1-D sequence; got shape \(2, 2\)",
    ),
    (
        "tuning paired_interval level 'x'",
        lambda: _tuning().paired_interval([1.0, 2.0], "x"),
        TypeError,
        r"level must be a number in \(0, 1\)",
    ),
    (
        "tuning lr_grid high inf",
        lambda: _tuning().lr_grid(0.1, np.inf),
        ValueError,
        r"finite 0 < low ≤ high",
    ),
    (
        "tuning lr_grid points_per_octave 1.5",
        lambda: _tuning().lr_grid(0.1, 1, points_per_octave=1.5),
        ValueError,
        r"points_per_octave must be an integer ≥ 1; got 1\.5",
    ),
    (
        "tuning lr_grid low 'a'",
        lambda: _tuning().lr_grid("a", 1),
        TypeError,
        r"lr_grid low must be a number",
    ),
    (
        "tuning make_schedule peak NaN",
        lambda: _tuning().make_schedule(np.nan, total_steps=10),
        ValueError,
        r"peak learning rate must be finite and > 0",
    ),
    (
        "tuning make_schedule peak -1",
        lambda: _tuning().make_schedule(-1.0, total_steps=10),
        ValueError,
        r"peak learning rate must be finite and > 0",
    ),
    (
        "tuning make_schedule end_factor NaN",
        lambda: _tuning().make_schedule(0.1, total_steps=10, end_factor=np.nan),
        ValueError,
        r"end_factor must be a number in \[0, 1\]",
    ),
    (
        "tuning make_schedule total_steps 2.5",
        lambda: _tuning().make_schedule(0.1, total_steps=2.5),
        ValueError,
        r"total_steps must be an integer ≥ 1; got 2\.5",
    ),
    (
        "tuning Protocol swapped bounds",
        lambda: _tuning().Protocol(lr_bounds=(1.0, 0.1)),
        ValueError,
        r"lr_bounds must be \(low, high\) with finite 0 < low ≤ high",
    ),
    (
        "tuning Protocol one bound",
        lambda: _tuning().Protocol(lr_bounds=(1.0,)),
        ValueError,
        r"lr_bounds must be \(low, high\)",
    ),
    (
        "tuning Protocol NaN bound",
        lambda: _tuning().Protocol(lr_bounds=(np.nan, 1.0)),
        ValueError,
        r"lr_bounds must be",
    ),
    (
        "tuning Protocol points_per_octave 0",
        lambda: _toy_protocol(points_per_octave=0),
        ValueError,
        r"points_per_octave must be an integer ≥ 1",
    ),
    (
        "tuning Protocol threshold NaN",
        lambda: _toy_protocol(threshold=np.nan),
        ValueError,
        r"threshold must be a finite number",
    ),
    (
        "tuning Protocol level 1",
        lambda: _toy_protocol(level=1.0),
        ValueError,
        r"level must be a number in \(0, 1\)",
    ),
    (
        "tuning Protocol negative seed",
        lambda: _toy_protocol(seeds=(1, 2, -3)),
        ValueError,
        r"seeds must be integers ≥ 0",
    ),
    (
        "tuning Protocol seeds '123'",
        lambda: _toy_protocol(seeds="123"),
        ValueError,
        r"seeds must be integers ≥ 0",
    ),
    (
        "tuning Study protocol None",
        lambda: _tuning().Study("t", [_toy_method()], None),
        TypeError,
        r"protocol must be a tuning\.Protocol",
    ),
    (
        "tuning Study a function as method",
        lambda: _tuning().Study("t", [lambda lr, seed: 0.0], _toy_protocol()),
        TypeError,
        r"methods must be a sequence of tuning\.Method",
    ),
    (
        "tuning Study workers 0",
        lambda: _tuning().Study("t", [_toy_method()], _toy_protocol(), workers=0),
        ValueError,
        r"workers must be an integer ≥ 1",
    ),
    (
        "tuning Study workers without recipes",
        lambda: _tuning().Study("t", [_toy_method()], _toy_protocol(), workers=2),
        ValueError,
        r"needs every method's recipe",
    ),
    (
        "tuning Study run returns a string",
        lambda: (
            _tuning()
            .Study(
                "t", [_tuning().Method("s", lambda lr, seed: "x")], _toy_protocol(), progress=False
            )
            .run()
        ),
        TypeError,
        r"the run of method 's' must return one number",
    ),
    (
        "tuning compare unknown baseline",
        lambda: _tuning().compare(_toy_study(), "zz"),
        ValueError,
        r"baseline 'zz' is not a method of the study; methods: \['a', 'b'\]",
    ),
    (
        "tuning compare not a Dataset",
        lambda: _tuning().compare({}, "a"),
        TypeError,
        r"compare needs the Dataset of Study\.run",
    ),
    (
        "tuning pilot_bounds no methods",
        lambda: _tuning().pilot_bounds([]),
        ValueError,
        r"needs at least one Method",
    ),
    (
        "tuning pilot_bounds octaves_per_point 0",
        lambda: _tuning().pilot_bounds([_toy_method()], octaves_per_point=0),
        ValueError,
        r"octaves_per_point must be an integer ≥ 1",
    ),
    (
        "tuning pilot_bounds margin -1",
        lambda: _tuning().pilot_bounds([_toy_method()], margin_octaves=-1),
        ValueError,
        r"margin_octaves must be an integer ≥ 0",
    ),
    (
        "tuning stack nothing",
        lambda: _tuning().stack({}),
        ValueError,
        r"stack needs at least one study",
    ),
    (
        "train tx None",
        lambda: _train_tx(None),
        TypeError,
        r"tx must be an optax\.GradientTransformation",
    ),
    (
        "train tx a function",
        lambda: _train_tx(lambda g: g),
        TypeError,
        r"tx must be an optax\.GradientTransformation",
    ),
    ("train model 3", lambda: _train_named(3), TypeError, r"model must be a precond_lab Model"),
    (
        "train dataset 3",
        lambda: _train_dataset(3),
        TypeError,
        r"dataset must be a precond_lab Dataset or a name",
    ),
    (
        "train probe 'x'",
        lambda: _train(probe="x"),
        TypeError,
        r"probe must be a precond_lab\.train\.Probe",
    ),
    (
        "train model_options [1]",
        lambda: _train_named("mlp", model_options=[1]),
        TypeError,
        r"model_options must be a dict",
    ),
    (
        "train hyperparams NaN",
        lambda: _train(hyperparams={"learning_rate": np.nan}),
        ValueError,
        r"hyperparams\['learning_rate'\] must be finite",
    ),
    (
        "train hyperparams 'x'",
        lambda: _train(hyperparams={"learning_rate": "x"}),
        TypeError,
        r"hyperparams\['learning_rate'\] must be a number",
    ),
    ("train checkpoint 3", lambda: _train(checkpoint=3), TypeError, r"checkpoint must be a path"),
    (
        "train Probe empty steps",
        lambda: _probe(steps=()),
        ValueError,
        r"probe steps must be a non-empty tuple of integers ≥ 0",
    ),
    (
        "train Probe steps '12'",
        lambda: _probe(steps="12"),
        TypeError,
        r"Probe steps must be a tuple of step numbers",
    ),
    (
        "train Probe float steps",
        lambda: _probe(steps=(1.5,)),
        ValueError,
        r"probe steps must be a non-empty tuple of integers",
    ),
    (
        "train Probe num_samples 0",
        lambda: _probe(num_samples=0),
        ValueError,
        r"Probe num_samples must be an integer ≥ 1; got 0",
    ),
    (
        "train Probe mc_samples 0",
        lambda: _probe(mc_samples=0),
        ValueError,
        r"Probe mc_samples must be an integer ≥ 1",
    ),
    (
        "train Probe chunk_size 0",
        lambda: _probe(chunk_size=0),
        ValueError,
        r"Probe chunk_size must be an integer ≥ 1",
    ),
    (
        "train Probe damping NaN",
        lambda: _probe(damping=np.nan),
        ValueError,
        r"Probe damping must be a finite number ≥ 0",
    ),
    (
        "train Probe unknown estimator",
        lambda: _probe(estimators=("nope",)),
        ValueError,
        r"unknown probe estimators \['nope'\]; known: ",
    ),
    (
        "train Probe unknown metric",
        lambda: _probe(metrics=("nope",)),
        ValueError,
        r"unknown probe metrics \['nope'\]; known: ",
    ),
    (
        "train Probe targets a string",
        lambda: _probe(targets="gradients"),
        TypeError,
        r"Probe targets must be a tuple of names",
    ),
    (
        "tuning compare threshold -1",
        lambda: _tuning().compare(_toy_study(), "a", threshold=-1),
        ValueError,
        r"threshold must be ≥ 0, got -1\.0",
    ),
    (
        "tuning compare level 2",
        lambda: _tuning().compare(_toy_study(), "a", level=2),
        ValueError,
        r"level must be in \(0, 1\), got 2\.0",
    ),
    # --- issue 22: the study framework ---
    (
        "study Row with a verdict that is not a Verdict",
        lambda: _study().Row("P3-1", "p", "l", "s", "yes", "e", kind=_study().TestKind.DERIVED),
        ValueError,
        r"claim P3-1: verdict 'yes' is not one of 'holds', .*use precond_lab\.study\.Verdict",
    ),
    (
        "study Rule for an unregistered claim",
        lambda: _study().Rule("P99-1", _study().TestKind.DERIVED, lambda ds: ("holds", "")),
        KeyError,
        r"P99-1",
    ),
    (
        "study Rule whose decide is not a function",
        lambda: _study().Rule("P3-1", _study().TestKind.DERIVED, "holds"),
        TypeError,
        r"rule P3-1: decide must be a function of the Dataset",
    ),
    (
        "study Config.replace with an unknown field",
        lambda: _study_config().replace(stepz=3),
        TypeError,
        r"_Cfg has no field stepz; its fields: steps",
    ),
    # --- issue 22: library pieces moved out of the studies ---
    (
        "online kronecker_member of an Adam state",
        lambda: onl.kronecker_member(onl.adam().init(jnp.ones((M, N))), 0.1),
        TypeError,
        r"neither Shampoo's factors \(left, right\) nor KL-Shampoo's bases and eigenvalues",
    ),
    (
        "online score_stream with too few references",
        lambda: onl.score_stream(onl.shampoo(), jnp.asarray(_g()[:4]), [], [0], damping=0.1),
        ValueError,
        r"0 references for a stream of 4 steps; give one target per stream step",
    ),
    (
        "online score_stream scored step past the stream",
        lambda: onl.score_stream(
            onl.shampoo(), jnp.asarray(_g()[:2]), [SampleTarget(_g())] * 2, [5], damping=0.1
        ),
        ValueError,
        r"scored must be increasing steps in \[0, 2\)",
    ),
    (
        "online captured_stream batch 0",
        lambda: onl.captured_stream({}, [1], "w", batch=0, seed=0, damping_rel=1e-3),
        ValueError,
        r"need batch ≥ 1 and a non-empty plan, got 0",
    ),
    (
        "online segment_plan of no steps",
        lambda: onl.segment_plan([], 5),
        ValueError,
        r"segment_plan: need steps and length ≥ 1, got \[\], 5",
    ),
    (
        "metrics diagonal_kl of a zero eigenvalue",
        lambda: met.diagonal_kl([1.0, 2.0], [1.0, 0.0]),
        ValueError,
        r"both diagonals must be positive and finite \(add the damping to zero eigenvalues",
    ),
    (
        "metrics diagonal_kl of two lengths",
        lambda: met.diagonal_kl([1.0, 2.0], [1.0]),
        ValueError,
        r"must have one shape; got \(2,\) and \(1,\)",
    ),
    (
        "optim state_size field not a name",
        lambda: _po().state_size({}, field=3),
        ValueError,
        r"field must be a state field's name \(e\.g\. 'nu'\), got 3",
    ),
    (
        "timing optimiser_runner steps 0",
        lambda: _timing().optimiser_runner(None, {}, {}, 0),
        ValueError,
        r"optimiser_runner: steps must be ≥ 1, got 0",
    ),
    # --- P1's KL study in the library: shape gap, fixed-point residual, synthetic targets ---
    (
        "kl_fixed_point_residual of a diagonal fit",
        lambda: est.kl_fixed_point_residual(_g(), est.diagonal(_g())),
        TypeError,
        r"fit must be a Kronecker \(e\.g\. kl_optimal\(target\)\); got Diagonal",
    ),
    (
        "kl_fixed_point_residual of another shape's fit",
        lambda: est.kl_fixed_point_residual(_g(), Kronecker(np.eye(N), np.eye(M))),
        ValueError,
        r"fit has matrix_shape \(4, 3\) but the target \(3, 4\): pass the fit of this target",
    ),
    (
        "kl_shape_gap of a flat array",
        lambda: est.kl_shape_gap(np.ones((K, M * N))),
        ValueError,
        r"samples must be \(N, m, n\) per-example matrices; got shape \(20, 12\)",
    ),
    (
        "kl_shape_gap per_example not dividing the samples",
        lambda: est.kl_shape_gap(_g(), per_example=3),
        ValueError,
        r"per_example=3 does not divide the 20 samples: pass the number of pseudo-samples",
    ),
    (
        "kl_shape_gap negative resamples",
        lambda: est.kl_shape_gap(_g(), resamples=-1),
        ValueError,
        r"resamples must be an integer in \[0, inf\); got -1",
    ),
    (
        "kl_shape_gap weights of the wrong length",
        lambda: est.kl_shape_gap(_g(), weights=np.ones(3)),
        ValueError,
        r"weights must have shape \(20,\); got \(3,\)",
    ),
    (
        "mixture_samples fewer samples than components",
        lambda: _synthetic().mixture_samples(3, 2, 1, components=2),
        ValueError,
        r"num must be an integer in \[2, inf\); got 1",
    ),
    (
        "kronecker_samples negative noise",
        lambda: _synthetic().kronecker_samples(3, 2, 10, noise=-0.1),
        ValueError,
        r"noise must be a real number in \[0, inf\); got -0\.1",
    ),
    (
        "vn_optimal_diagonal_kronecker of a vector",
        lambda: _reference().vn_optimal_diagonal_kronecker(np.ones(4)),
        ValueError,
        r"delta must be the \(m, n\) diagonal",
    ),
    (
        "identities.random_case of zero rows",
        lambda: _identities().random_case(0, 2),
        ValueError,
        r"m must be an integer in \[1, inf\); got 0",
    ),
    (
        "identities.kronecker_case of fractional columns",
        lambda: _identities().kronecker_case(3, 1.5),
        TypeError,
        r"n must be an integer; got 1\.5",
    ),
    (
        "identities.random_case negative conditioning",
        lambda: _identities().random_case(3, 2, cond=-1.0),
        ValueError,
        r"cond must be a real number in \[0, inf\)",
    ),
    (
        "identities.sample_case negative damping",
        lambda: _identities().sample_case("c", "s", _g(), relative_damping=-1e-3),
        ValueError,
        r"relative_damping must be a real number in \[0, inf\)",
    ),
    (
        "identities.check_identity unknown check",
        lambda: _identities().check_identity("D10", None),
        KeyError,
        r"unknown identity check 'D10'; known: D1, D2-left",
    ),
    (
        "identities.logdet_hessian_errors of a vector",
        lambda: _identities().logdet_hessian_errors(np.ones(4), np.random.default_rng(0)),
        ValueError,
        r"x must be a square matrix; got shape \(4,\)",
    ),
    (
        "identities.if_shampoo_orthogonality of one matrix",
        lambda: _identities().if_shampoo_orthogonality(np.ones((3, 2)), 0.0, None),
        ValueError,
        r"g must be samples \(N, m, n\); got shape \(3, 2\)",
    ),
    (
        "reference.kl_gradient of mismatched matrices",
        lambda: _reference().kl_gradient(np.eye(3), np.eye(4)),
        ValueError,
        r"x and y must be square matrices of one shape; got \(3, 3\), \(4, 4\)",
    ),
    (
        "reference.equivalent_samples of the wrong size",
        lambda: _reference().equivalent_samples(np.eye(5), 3, 2),
        ValueError,
        r"sigma must be \(6, 6\) for m=3, n=2; got \(5, 5\)",
    ),
    (
        "reference.vn_kronecker_minimiser of the wrong size",
        lambda: _reference().vn_kronecker_minimiser(np.eye(5), 3, 2, None),
        ValueError,
        r"x must be \(6, 6\) for m=3, n=2; got \(5, 5\)",
    ),
    (
        "if_shampoo_step_scale batch_size 0",
        lambda: onl.if_shampoo_step_scale(_g(), 0),
        ValueError,
        r"batch_size must be an integer in \[1, inf\); got 0",
    ),
    (
        "if_shampoo_step_scale steps 1",
        lambda: onl.if_shampoo_step_scale(_g(), 2, steps=1),
        ValueError,
        r"steps must be an integer in \[2, inf\); got 1",
    ),
    (
        "step_scale_levels no batch sizes",
        lambda: onl.step_scale_levels(_g(), ()),
        ValueError,
        r"batch_sizes must name at least one",
    ),
    (
        "step_scale_levels negative damping",
        lambda: onl.step_scale_levels(_g(), (1,), damping=-1.0),
        ValueError,
        r"damping must be a real number in \[0, inf\); got -1.0",
    ),
    (
        "kfac_if_shampoo mismatched N",
        lambda: onl.kfac_if_shampoo(np.ones((5, 3)), np.ones((4, 2)), damping=0.1),
        ValueError,
        r"activations \(N, n\) and backprops \(N, m\) must share N",
    ),
    (
        "kfac_if_shampoo steps 0",
        lambda: onl.kfac_if_shampoo(np.ones((5, 3)), np.ones((5, 2)), damping=0.1, steps=0),
        ValueError,
        r"steps must be an integer in \[1, inf\); got 0",
    ),
    (
        "if_shampoo_timings repeats 3",
        lambda: onl.if_shampoo_timings((4,), repeats=3),
        ValueError,
        r"repeats must be an integer in \[5, inf\); got 3",
    ),
    (
        "if_shampoo_timings no sizes",
        lambda: onl.if_shampoo_timings(()),
        ValueError,
        r"sizes must name at least one size",
    ),
    (
        "direction_cosines no approximations",
        lambda: met.direction_cosines(_g(), _g(), {}),
        ValueError,
        r"approximations must name at least one",
    ),
    (
        "direction_cosines one gradient not batched",
        lambda: met.direction_cosines(_g(), _g()[0], {"s": est.shampoo_squared(_g())}),
        ValueError,
        r"gradients must be \(B, m, n\)",
    ),
    (
        "shampoo_squared negative relative damping",
        lambda: est.shampoo_squared(_g(), relative_damping=-0.1),
        ValueError,
        r"relative_damping must be a real number in \[0, inf\); got -0.1",
    ),
    (
        "precision_on_matrices not square",
        lambda: linalg.precision_on_matrices([np.ones((2, 3))]),
        ValueError,
        r"matrices must be square",
    ),
    (
        "precision_on_matrices negative relative damping",
        lambda: linalg.precision_on_matrices([np.eye(2)], relative_damping=-1.0),
        ValueError,
        r"relative_damping must be a real number in \[0, inf\); got -1.0",
    ),
]


def _identities():
    from precond_lab import identities

    return identities


def _po():
    import precond_lab.optim as po

    return po


def _timing():
    from precond_lab import timing

    return timing


def _synthetic():
    from precond_lab import targets

    return targets


def _reference():
    from precond_lab import reference

    return reference


def _study():
    from precond_lab import study

    return study


def _study_config():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class _Cfg(_study().Config):
        steps: int = 1

    return _Cfg()


@pytest.mark.parametrize("name,call,error,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error(name, call, error, message):
    if error is None:  # a documented, correct result instead of an error
        call()
        return
    with pytest.raises(error, match=message):
        call()


# --- command line: one line on stderr, exit code 2, no traceback, nothing written ---
CLI_CASES = [
    (
        "demo --out into a missing folder",
        ["demo", "--out", "{tmp}/missing/x.nc"],
        r"--out: the folder .*missing does not exist",
    ),
    (
        "demo --out into a file",
        ["demo", "--out", "{tmp}/a_file/x.nc"],
        r"--out: the folder .*a_file does not exist",
    ),
    (
        "reproduce --only ''",
        ["reproduce", "--only", "", "--figures", "{tmp}/figs"],
        r"--only names no study; available: .*identities",
    ),
    (
        "reproduce --only ,",
        ["reproduce", "--only", " , ", "--figures", "{tmp}/figs"],
        r"--only names no study",
    ),
    (
        "capture --layers ,",
        ["capture", "--layers", ",", "--out", "{tmp}/figs/x.zarr", "--no-progress"],
        r"--layers names no layer",
    ),
    (
        "capture --model-options hidden 0",
        ["capture", "--model-options", '{{"hidden": [0]}}', "--out", "{tmp}/figs/x.zarr"],
        r"hidden must be positive integer",
    ),
    (
        "demo --train-steps -3",
        ["demo", "--train-steps", "-3"],
        r"--train-steps must be ≥ 0; got -3",
    ),
    (
        "reproduce --report into a missing folder",
        ["reproduce", "--only", "identities", "--report", "{tmp}/missing/R.md"],
        r"--report: the folder .*missing does not exist",
    ),
    (
        "reproduce --figures onto a file",
        ["reproduce", "--only", "identities", "--figures", "{tmp}/a_file"],
        r"--figures: the folder .*a_file does not exist",
    ),
    (
        "reproduce --only unknown",
        ["reproduce", "--only", "nosuch", "--figures", "{tmp}/figs"],
        r"unknown study \['nosuch'\]; available: .*identities",
    ),
]


@pytest.mark.parametrize("name,argv,message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_user_mistakes_are_one_line(name, argv, message, tmp_path, capsys):
    from precond_lab.cli import main

    (tmp_path / "a_file").write_text("")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "figs").exists()
