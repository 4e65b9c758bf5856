"""minibnn.plots and the CLI's --plot: PNG files with the right content, a clear message without matplotlib."""
from __future__ import annotations

import builtins

import numpy as np
import pytest

from minibnn import plots

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def matplotlib():
    """The tests that draw need the plot extra; the counts and the missing-matplotlib message do not."""
    return pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")


def test_confusion_counts_equal_a_plain_count():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    want = np.zeros((7, 7), int)
    for t, p in zip(labels, predictions):
        want[t, p] += 1
    np.testing.assert_array_equal(plots.confusion_counts(labels, predictions), want)
    assert plots.confusion_counts([0, 1], [1, 1], n=4).shape == (4, 4)
    with pytest.raises(ValueError, match="of one length"):
        plots.confusion_counts([0, 1], [1])


def test_training_curves_and_confusion_matrix_are_png_files(tmp_path, matplotlib):
    history = [{"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.45, "lr": 1e-3,
                "flip_ratio": 0.01}, {"epoch": 2, "loss": 0.5, "accuracy": 0.8, "lr": 5e-4, "flip_ratio": 0.004}]
    path = plots.training_curves(history, tmp_path / "curves.png", "a run")
    assert path.read_bytes().startswith(PNG)
    path = plots.confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], tmp_path / "cm.png", classes=["a", "b", "c"])
    assert path.read_bytes().startswith(PNG)
    with pytest.raises(ValueError, match="no epoch"):
        plots.training_curves([], tmp_path / "none.png")


def test_cli_train_and_eval_plot(tmp_path, capsys, matplotlib):
    from minibnn.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "binary_mlp", "--epochs", "1", "--limit", "600", "--out", str(out), "--quiet",
                 "--plot"]) == 0
    assert (out / "training_curves.png").read_bytes().startswith(PNG)
    assert main(["eval", str(out / "model.json"), "--plot"]) == 0
    assert (out / "model_confusion.png").read_bytes().startswith(PNG)


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    from minibnn.cli import main

    assert main(["train", "--model", "binary_mlp", "--epochs", "1", "--limit", "100", "--out", str(tmp_path / "r"),
                 "--quiet", "--plot"]) == 2
    assert "pip install 'minibnn[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # it stopped before training
