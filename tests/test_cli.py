"""The minibnn command: train/eval end to end on a small slice, and clear errors for bad choices."""
from __future__ import annotations

import subprocess
import sys

import pytest

from minibnn.cli import main


@pytest.mark.parametrize("flag, value, choices", [
    ("--model", "alexnet", "binary_mlp, lenet, resnet18, resnet18_imagenet, vgg_small"),
    ("--dataset", "cifar100", "cifar10, fashion-mnist, imagefolder, mnist"),
    ("--optimizer", "rmsprop", "adam, adamw, bop, sgd"),
    ("--schedule", "exp", "constant, cosine, step, warmup-cosine"),
])
def test_unknown_choice_lists_valid_ones(capsys, flag, value, choices):
    assert main(["train", flag, value, "--limit", "10", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"unknown {flag[2:]} {value!r}" in err and choices in err


@pytest.mark.parametrize("bits", ["0", "33"])
def test_bad_bit_width_names_layer_and_range(capsys, bits):
    assert main(["train", "--act-bit", bits, "--limit", "10", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "act_bit must be an integer in 1..32" in err and "QConv2d" in err


def test_missing_fashion_root(capsys, tmp_path):
    assert main(["train", "--dataset", "fashion-mnist", "--data-root", str(tmp_path / "no"),
                 "--limit", "10", "--epochs", "1"]) == 2
    assert "--data-root" in capsys.readouterr().err


def test_train_then_eval(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", "binary_mlp", "--limit", "600", "--epochs", "1", "--batch-size", "100",
                 "--out", str(out), "--quiet"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert (out / "model.json").exists() and (out / "history.json").exists()
    assert (out / "checkpoint.json").exists() and len(list(out.glob("checkpoint.*.npz"))) == 1
    assert main(["eval", str(out / "model")]) == 0
    assert "test accuracy" in capsys.readouterr().out
    # resume with a larger epoch budget continues from the checkpoint
    assert main(["train", "--model", "binary_mlp", "--limit", "600", "--epochs", "2", "--batch-size", "100",
                 "--out", str(out), "--quiet", "--resume"]) == 0
    assert "after 2 epochs" in capsys.readouterr().out


def test_eval_of_missing_model(capsys, tmp_path):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "nope.json: file not found" in capsys.readouterr().err


def test_unknown_backend(capsys):
    assert main(["--backend", "tpu", "eval", "x"]) == 2
    assert "valid choices" in capsys.readouterr().err


def test_backend_after_the_command(capsys, tmp_path):
    """`minibnn train --backend NAME` as well as `minibnn --backend NAME train`."""
    import minibnn

    assert main(["eval", "--backend", "tpu", "x"]) == 2
    assert "unknown backend 'tpu'" in capsys.readouterr().err
    with minibnn.using(minibnn.backend.current()):  # the CLI switches the global backend: restore it
        assert main(["eval", "--backend", "numpy", str(tmp_path / "nope")]) == 2
        assert minibnn.backend.current() == "numpy"
    assert "nope.json: file not found" in capsys.readouterr().err
    if "cuda" not in minibnn.backend.available():
        assert main(["train", "--backend", "cuda"]) == 2
        assert "backend 'cuda' is not available" in capsys.readouterr().err


def test_python_dash_m_runs():
    done = subprocess.run([sys.executable, "-m", "minibnn", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "demo" in done.stdout
