"""The CLI subcommand, the offline datasets and model construction errors."""

import argparse

import numpy as np
import pytest

from precond_lab.capture import DATASETS, load_dataset, make_model, validate_store
from precond_lab.capture.cli import add_parser


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="precond-lab")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["capture", *argv])
    return args.func(args)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "resnet"], "unknown model 'resnet'; valid models: mlp, cnn, transformer"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'; valid datasets: digits"),
        (
            ["--targets", "gradients,hessian"],
            "unknown targets ['hessian']; valid targets: gradients",
        ),
        (["--layers", "layers/7/w"], "unknown layers ['layers/7/w']; valid layers: layers/0/b"),
        (["--model", "transformer"], "the transformer needs a token dataset"),
    ],
)
def test_cli_rejects_unknown_names(argv, message, tmp_path, capsys):
    assert _run_cli([*argv, "--out", str(tmp_path / "x.zarr"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()


def test_cli_end_to_end_on_digits(tmp_path, capsys):
    out = tmp_path / "run.zarr"
    argv = [
        "--model",
        "mlp",
        "--dataset",
        "digits",
        "--steps",
        "0,3",
        "--targets",
        "gradients,ggn-mc,kfac",
        "--num-samples",
        "8",
        "--model-options",
        '{"hidden": [8]}',
        "--out",
        str(out),
        "--no-progress",
        "--dtype",
        "float64",
    ]
    assert _run_cli(argv) == 0
    text = capsys.readouterr().out
    assert "step 3: loss" in text and "layers/0/w" in text
    assert validate_store(out) == [0, 3]
    assert _run_cli(argv) == 0  # resumed: nothing to do


def test_datasets_load_offline_with_documented_shapes():
    expect = {
        "digits": (10, (1, 8, 8)),
        "mnist": (10, (1, 28, 28)),
        "binary-mnist": (2, (1, 28, 28)),
        "mnist1d": (10, (1, 40)),
        "stdlib-chars": (96, (16,)),
        "teacher": (4, (16,)),
    }
    assert set(expect) == set(DATASETS)
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    for name, (out, shape) in expect.items():
        ds = load_dataset(name)
        assert ds.output_dim == out and ds.input_shape == shape
        assert ds.x_train.shape[1:] == (int(np.prod(shape)),) or ds.x_train.shape[1:] == shape
        assert len(ds.x_train) == len(ds.y_train) > len(ds.y_test) > 0
        if ds.loss == "cross_entropy":
            assert ds.y_train.min() >= 0 and ds.y_train.max() == out - 1
    from precond_lab.capture.data import _LOADERS

    _LOADERS["mnist1d"]()  # uncached: make_dataset seeds NumPy's global generator...
    assert np.array_equal(np.random.get_state()[1], state)  # noqa: NPY002 - ...and we undo it
    assert set(np.unique(load_dataset("binary-mnist").y_train)) == {0, 1}


def test_make_model_errors():
    ds = load_dataset("digits")
    with pytest.raises(ValueError, match="unknown option"):
        make_model("mlp", ds, width=3)
    with pytest.raises(ValueError, match="unknown activation"):
        make_model("mlp", ds, activation="swish")
    with pytest.raises(ValueError, match="real-valued inputs"):
        make_model("cnn", load_dataset("stdlib-chars"))
