"""Interop: structures and targets as (mn, mn) linear operators; loaders; evaluate's K-FAC inputs.

Dense float64 references: every operator product is checked against ``to_dense() @ vec``.
"""

import re

import jax
import numpy as np
import pytest
import scipy.sparse.linalg as spla
import xarray as xr

from precond_lab import estimators as est
from precond_lab import interop
from precond_lab.errors import FileFormatError, UnsupportedDtypeError
from precond_lab.evaluate import evaluate
from precond_lab.structures import Diagonal, Kronecker
from precond_lab.targets import DenseTarget, FactoredTarget, SampleTarget

M, N, NS = 4, 3, 9


@pytest.fixture(autouse=True)
def x64():
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _spd(rng, k):
    a = rng.standard_normal((k, k))
    return a @ a.T + k * np.eye(k)


def _operators(rng):
    g = rng.standard_normal((NS, M, N))
    u, v = rng.standard_normal((NS, 2, M)), rng.standard_normal((NS, 2, N))
    dense = np.einsum("kp,kq->pq", g.reshape(NS, -1), g.reshape(NS, -1)) / NS
    k = Kronecker(_spd(rng, M), _spd(rng, N), 0.5)
    return {
        "kronecker": k,
        "eigen": k.power(-0.5, damping=0.1),
        "diagonal": Diagonal(rng.uniform(0.5, 2.0, (M, N))),
        "sample": SampleTarget(g),
        "sample-centered": SampleTarget(g, center=True),
        "factored": FactoredTarget(u, v),
        "factored-centered": FactoredTarget(u, v, center=True),
        "dense": DenseTarget(dense, (M, N)),
        "damped": SampleTarget(g).damped(0.3),
    }


@pytest.mark.parametrize(
    "name",
    [
        "kronecker",
        "eigen",
        "diagonal",
        "sample",
        "sample-centered",
        "factored",
        "factored-centered",
        "dense",
        "damped",
    ],
)
def test_operator_products_match_dense(name):
    rng = np.random.default_rng(0)
    op = _operators(rng)[name]
    ref = np.asarray(op.to_dense())
    assert op.operator_shape == (M * N, M * N) and op.matrix_shape == (M, N)
    v = rng.standard_normal(M * N)
    vk = rng.standard_normal((M * N, 2))
    xs = rng.standard_normal((5, 2, M, N))
    tol = 1e-10 * np.linalg.norm(ref)
    assert np.linalg.norm(np.asarray(op @ v) - ref @ v) <= tol
    assert np.linalg.norm(np.asarray(op @ vk) - ref @ vk) <= tol
    want = (xs.reshape(-1, M * N) @ ref.T).reshape(xs.shape)
    assert np.linalg.norm(np.asarray(op @ xs) - want) <= tol * 10
    lin = op.to_scipy()
    assert lin.shape == (M * N, M * N)
    assert np.linalg.norm(lin @ v - ref @ v) <= tol
    assert np.linalg.norm(lin.matmat(vk) - ref @ vk) <= tol
    with pytest.raises(ValueError, match="cannot multiply"):
        op @ np.ones(M * N + 1)


def test_structure_shape_is_the_operator_shape_and_scipy_solves():
    rng = np.random.default_rng(1)
    k = Kronecker(_spd(rng, M), _spd(rng, N))
    assert k.shape == (M * N, M * N)  # aslinearoperator no longer builds an m×n operator
    lin = spla.aslinearoperator(k.to_scipy())
    b = rng.standard_normal(M * N)
    x, info = spla.cg(lin, b, rtol=1e-12, atol=0.0)
    assert info == 0
    np.testing.assert_allclose(np.asarray(k.to_dense()) @ x, b, rtol=1e-9, atol=1e-9)


def test_lineax_operator():
    lx = pytest.importorskip("lineax")
    rng = np.random.default_rng(2)
    k = Kronecker(_spd(rng, M), _spd(rng, N))
    b = rng.standard_normal(M * N)
    sol = lx.linear_solve(
        k.to_lineax(positive_semidefinite=True), b, solver=lx.CG(rtol=1e-12, atol=1e-12)
    )
    np.testing.assert_allclose(np.asarray(k.to_dense()) @ np.asarray(sol.value), b, atol=1e-8)


def test_torch_tensors_pt_files_and_backpack_layout(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    conv = rng.standard_normal((NS, 3, 2, 2, 2))  # (N, out, in, kh, kw)
    lin = rng.standard_normal((NS, 3, 5))
    bias = rng.standard_normal((NS, 3))
    path = tmp_path / "grads.pt"
    torch.save({"conv.weight": torch.tensor(conv), "fc.weight": torch.tensor(lin)}, path)
    got = interop.from_torch(path)
    np.testing.assert_array_equal(got["conv.weight"], conv.reshape(NS, 3, 8))
    np.testing.assert_array_equal(interop.from_torch(path, key="fc.weight"), lin)
    np.testing.assert_array_equal(interop.from_torch(torch.tensor(bias)), bias[:, :, None])
    with pytest.raises(KeyError, match="not in the gradients"):
        interop.from_torch(path, key="nope")
    with pytest.raises(UnsupportedDtypeError, match="float16"):
        interop.from_torch(torch.tensor(lin).half())
    with pytest.raises(UnsupportedDtypeError, match="bfloat16"):
        interop.from_torch({"w": torch.tensor(lin).bfloat16()})

    # BackPACK's BatchGrad: grad_batch = per-example gradient of the *mean* loss (g_i / N)
    model = torch.nn.Linear(5, 3).double()
    xb = torch.tensor(rng.standard_normal((NS, 5)))
    per = [
        torch.autograd.grad(model(xb[i : i + 1]).pow(2).sum(), list(model.parameters()))
        for i in range(NS)
    ]
    for j, p in enumerate(model.parameters()):
        p.grad_batch = torch.stack([g[j] for g in per]) / NS
    out = interop.from_backpack(model.named_parameters())
    np.testing.assert_allclose(out["weight"], torch.stack([g[0] for g in per]).numpy())
    np.testing.assert_allclose(out["bias"][:, :, 0], torch.stack([g[1] for g in per]).numpy())
    delattr(model.weight, "grad_batch")
    with pytest.raises(ValueError, match="has no grad_batch"):
        interop.from_backpack(model.named_parameters())


def test_curvlinops_blocks_flat_arrays_npy_and_xarray(tmp_path):
    rng = np.random.default_rng(4)
    g = rng.standard_normal((NS, 3, 2, 2))  # a conv's per-example grads (out, in, k)
    flat = g.reshape(NS, -1)
    full = np.zeros((20, 20))  # an operator over [12 params of the conv, 8 others]
    block = flat.T @ flat / NS
    full[:12, :12] = block
    full[12:, 12:] = np.eye(8)

    class Operator:  # curvlinops-like: .shape and @ on flattened parameter vectors
        shape = full.shape

        def __matmul__(self, x):
            return full @ x

    t_op = interop.from_curvlinops(Operator(), (3, 2, 2), offset=0)
    t_block = interop.from_curvlinops(block, (3, 2, 2))
    ref = np.asarray(SampleTarget(interop.as_matrices(g)).to_dense())
    np.testing.assert_allclose(np.asarray(t_op.to_dense()), ref, atol=1e-12)
    np.testing.assert_allclose(np.asarray(t_block.to_dense()), ref, atol=1e-12)
    with pytest.raises(ValueError, match="does not fit"):
        interop.from_curvlinops(np.eye(5), (3, 2, 2))

    np.testing.assert_array_equal(interop.from_flat(flat, (3, 4)), flat.reshape(NS, 3, 4))
    with pytest.raises(ValueError, match="need 15 columns"):
        interop.from_flat(flat, (3, 5))
    np.save(tmp_path / "g.npy", flat)
    np.testing.assert_array_equal(
        interop.from_npy(tmp_path / "g.npy", shape=(3, 4)), flat.reshape(NS, 3, 4)
    )
    np.save(tmp_path / "h.npy", flat.astype(np.float16))
    with pytest.raises(UnsupportedDtypeError, match="float16"):
        interop.from_npy(tmp_path / "h.npy", shape=(3, 4))
    with pytest.raises(UnsupportedDtypeError, match="float16"):
        SampleTarget(np.load(tmp_path / "h.npy").reshape(NS, 3, 4))

    m3 = flat.reshape(NS, 3, 4)
    da = xr.DataArray(m3.transpose(2, 0, 1), dims=("input", "example", "output"))
    out = interop.from_xarray(da, sample="example", row="output", col="input")
    assert out.dims == ("sample", "row", "col")
    np.testing.assert_array_equal(out.values, m3)
    t = SampleTarget(out)
    np.testing.assert_allclose(
        np.asarray(t.to_dense()), np.asarray(SampleTarget(m3).to_dense()), atol=1e-12
    )
    with pytest.raises(ValueError, match="not in the DataArray's dims"):
        interop.from_xarray(da)


def test_evaluate_dict_source_kfac_inputs_per_layer():
    rng = np.random.default_rng(5)
    data, kin, want = {}, {}, {}
    for layer, (m, n) in {"l1": (3, 4), "l2": (2, 5)}.items():
        a, d = rng.standard_normal((12, n)), rng.standard_normal((12, m))
        data[layer] = {"gradients": d[:, :, None] * a[:, None, :]}
        kin[(layer, "gradients")] = (a, d)
        want[layer] = est.kfac(a, d)
    ds = evaluate(
        data, estimators=["kfac"], metrics=("cosine",), kfac_inputs=kin, damping=0.0, progress=False
    )
    assert (ds["status"] == "ok").all()
    from precond_lab import metrics as met

    for layer in data:
        ref = float(met.cosine_similarity(SampleTarget(data[layer]["gradients"]), want[layer]))
        got = float(ds["score"].sel(layer=layer, estimator="kfac", metric="cosine").squeeze())
        assert abs(got - ref) <= 1e-10 * abs(ref)
    with pytest.raises(ValueError, match="names no layer"):
        evaluate(
            data,
            estimators=["kfac"],
            kfac_inputs={"gradients": kin[("l1", "gradients")]},
            progress=False,
        )
    with pytest.raises(ValueError, match="no layer 'l3'"):
        evaluate(
            data, estimators=["kfac"], kfac_inputs={("l3", "gradients"): (a, d)}, progress=False
        )
    with pytest.raises(ValueError, match="holds no 'ggn' samples"):
        evaluate(data, estimators=["kfac"], kfac_inputs={("l1", "ggn"): (a, d)}, progress=False)
    tree = xr.DataTree(dataset=xr.Dataset(attrs={"layers": ""}))
    with pytest.raises(ValueError, match="kfac_inputs= is for dict sources"):
        evaluate(tree, estimators=["kfac"], kfac_inputs={"gradients": (a, d)}, progress=False)


# ------------------------------------------------------------------ issue 23, item 4


def test_evaluate_reads_from_torch_results_as_layers_of_gradients(tmp_path):
    """``evaluate(interop.from_torch("grads.pt"))`` took the parameter names for kinds."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    grads = {
        "fc1.weight": rng.standard_normal((16, 3, 4)),
        "fc2.bias": rng.standard_normal((16, 2)),
    }
    torch.save({k: torch.tensor(v) for k, v in grads.items()}, tmp_path / "grads.pt")
    loaded = interop.from_torch(tmp_path / "grads.pt")
    assert isinstance(loaded, dict) and loaded["fc1.weight"].shape == (16, 3, 4)
    ds = evaluate(loaded, estimators=["shampoo_squared"], metrics=["cosine"])
    assert list(ds.coords["layer"].values) == ["fc1.weight", "fc2.bias"]
    assert list(ds.coords["target"].values) == ["gradients"]
    with pytest.raises(ValueError, match=r"look like parameter names.*\{layer: \{'gradients'"):
        evaluate(dict(loaded), estimators=["shampoo_squared"], metrics=["cosine"])


@pytest.mark.parametrize(
    "name,content",
    [
        ("empty.pt", b""),
        ("garbage.pt", b"not a torch file at all" * 10),
        ("empty.npy", b""),
        ("garbage.npy", b"\x93NUMPY garbage"),
        ("garbage.npz", b"PK\x03\x04 garbage"),
    ],
)
def test_unreadable_files_are_named(tmp_path, name, content):
    pytest.importorskip("torch")
    path = tmp_path / name
    path.write_bytes(content)
    reader = interop.from_torch if name.endswith(".pt") else interop.from_npy
    with pytest.raises(FileFormatError, match=rf"{re.escape(str(path))}: cannot be read"):
        reader(path)


def test_truncated_pt_npy_npz_files_are_named(tmp_path):
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(0).standard_normal((8, 3, 4))
    torch.save({"w": torch.tensor(g)}, tmp_path / "g.pt")
    np.save(tmp_path / "g.npy", g)
    np.savez(tmp_path / "g.npz", g=g)
    np.savez(tmp_path / "two.npz", a=g, b=g)
    np.testing.assert_array_equal(interop.from_npy(tmp_path / "g.npz"), g)
    np.testing.assert_array_equal(interop.from_npy(tmp_path / "two.npz", key="b"), g)
    with pytest.raises(FileFormatError, match=r"two\.npz: holds 2 arrays \['a', 'b'\]; pick one"):
        interop.from_npy(tmp_path / "two.npz")
    for name, reader in (
        ("g.pt", interop.from_torch),
        ("g.npy", interop.from_npy),
        ("g.npz", interop.from_npy),
    ):
        path = tmp_path / name
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(FileFormatError, match=rf"{re.escape(name)}: cannot be read"):
            reader(path)
    with pytest.raises(FileFormatError, match=r"missing\.pt: no such file"):
        interop.from_torch(tmp_path / "missing.pt")


def test_from_curvlinops_on_a_real_ggn_operator_by_block_products():
    """A real curvlinops ``GGNLinearOperator`` raised "Input must be tensor" (its test used a
    fake taking NumPy vectors); it is now read with one ``op @ E`` per block of columns."""
    torch = pytest.importorskip("torch")
    curvlinops = pytest.importorskip("curvlinops")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)
    ).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    params = list(model.parameters())
    op = curvlinops.GGNLinearOperator(model, torch.nn.MSELoss(), params, [(x, y)])
    dense = np.stack([op.to_scipy() @ e for e in np.eye(op.shape[1])], axis=1)  # reference
    calls = []
    matmat = op._matmat
    op._matmat = lambda m: calls.append(m[0].shape[-1]) or matmat(m)
    offset = 0
    for p in params:
        size = p.numel()
        t = interop.from_curvlinops(op, tuple(p.shape), offset=offset)
        want = dense[offset : offset + size, offset : offset + size]
        np.testing.assert_allclose(np.asarray(t.to_dense()), want, atol=1e-12)
        offset += size
    assert calls == [p.numel() for p in params]  # one product per parameter, all columns
    with pytest.raises(ValueError, match=r"offset 20 is outside \[0, 17\]"):
        interop.from_curvlinops(op, (2, 3), offset=20)
    with pytest.raises(ValueError, match=r"offset -1 is outside"):
        interop.from_curvlinops(op, (3, 4), offset=-1)
