"""Full-dataset training (marked slow: run with `python -m pytest -m slow`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import minibnn
from minibnn import deploy
from minibnn.cli import load_dataset, main

FASHION = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashion-mnist"


@pytest.mark.slow
def test_binary_lenet_reaches_99_percent_on_mnist(tmp_path):
    out = tmp_path / "lenet"
    assert main(["train", "--model", "lenet", "--dataset", "mnist", "--act-bit", "1", "--weight-bit", "1",
                 "--epochs", "10", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "history.json").read_text())["test"]
    assert result["accuracy"] >= 0.990, f"binary LeNet test accuracy {result['accuracy']:.4f} < 0.990"
    # the converted model predicts the same classes as the trained one on every test image
    assert main(["convert", str(out / "model.json")]) == 0
    trained, packed = minibnn.load(out / "model"), deploy.load(out / "binarized_model")
    x, y = load_dataset("mnist", "test")
    trained.eval()
    with minibnn.no_grad():
        expected = np.concatenate([trained(minibnn.Tensor(x[i:i + 500])).numpy() for i in range(0, len(x), 500)])
    got = packed.predict(x, batch_size=500)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    assert np.mean(got.argmax(1) == y) == result["accuracy"]


@pytest.mark.slow
def test_resnet18_trains_on_fashion_mnist(tmp_path):
    if not FASHION.is_dir():
        pytest.fail(f"Fashion-MNIST not found at {FASHION}")
    out = tmp_path / "resnet"
    assert main(["train", "--model", "resnet18", "--dataset", "fashion-mnist", "--data-root", str(FASHION),
                 "--epochs", "1", "--limit", "10000", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "history.json").read_text())["test"]
    assert result["accuracy"] >= 0.65, f"binary ResNet-18 reached only {result['accuracy']:.4f}"
    assert main(["convert", str(out / "model.json")]) == 0
    packed = deploy.load(out / "binarized_model")
    x, y = load_dataset("fashion-mnist", "test", str(FASHION))
    assert np.mean(packed.predict(x, batch_size=500).argmax(1) == y) == result["accuracy"]
    float_bytes = (out / "model.npz").stat().st_size
    assert float_bytes / (out / "binarized_model.npz").stat().st_size >= 25
