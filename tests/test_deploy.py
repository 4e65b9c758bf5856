"""The converter and packed inference: equal to the float simulation, smaller, and strict about files.

The oracle is the float-simulated model itself (``model.eval()``, autograd off): a packed
model's logits, the integer results of its binary layers and the packed bits of its threshold
layers must equal what the simulation computes, on every CPU backend.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minibnn
from minibnn import backend, deploy, models, nn
from minibnn.deploy.convert import Fold, epilogue_values, thresholds
from minibnn.deploy.ops import Bits, Epilogue
from minibnn.io import ModelFileError
from minibnn.nn.models import BasicBlock

BACKENDS = [name for name in backend.available() if name != "cuda"]


def randomize_stats(model, seed: int = 1, tie_channels: bool = True) -> None:
    """Batch-norm statistics and affine parameters far from their defaults (negative scales too).

    With ``tie_channels`` every third channel gets an integer running mean and a zero bias, so
    dot == mean gives an epilogue of exactly 0: a tie that sign() maps to +1.
    """
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.running_mean[...] = rng.normal(0, 4, c)
            m.running_var[...] = rng.uniform(0.3, 40, c)
            m.weight.data[...] = rng.normal(0, 1, c)
            m.bias.data[...] = rng.normal(0, 0.5, c)
            if tie_channels:
                m.running_mean[::3] = rng.integers(-6, 7, len(m.running_mean[::3]))
                m.bias.data[::3] = 0


def simulate(model, x) -> np.ndarray:
    model.eval()
    with minibnn.no_grad():
        return model(minibnn.Tensor(x)).numpy()


def record_outputs(model, x) -> dict[str, np.ndarray]:
    """Every leaf's output in the float simulation, by path."""
    seen = {}
    leaves = [(p, m) for p, m in model.named_modules() if not m._modules]

    def wrap(path, forward):
        def run(*args):
            y = forward(*args)
            seen[path] = y.numpy().copy()
            return y
        return run

    for path, m in leaves:
        object.__setattr__(m, "forward", wrap(path, m.forward))
    try:
        simulate(model, x)
    finally:
        for _, m in leaves:
            object.__delattr__(m, "forward")
    return seen


def check_against_simulation(model, x, name: str, per_layer: bool = True) -> dict:
    """Packed logits == simulated logits, bit for bit, on every backend; threshold bits == simulated signs.

    ``per_layer``: also run each binary layer alone on its simulated input (zoo-shaped models only:
    Sequentials and ResNet blocks, whose layer inputs the helpers below can rebuild)."""
    expected = simulate(model, x)
    packed = deploy.convert(model)
    sim = record_outputs(model, x)
    plan = deploy.fold_plan(model)
    ties = 0
    for backend_name in BACKENDS:
        with minibnn.using(backend_name):
            got = packed.predict(x)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6, err_msg=f"{name} on {backend_name}")
            np.testing.assert_array_equal(got, expected, err_msg=f"{name} on {backend_name}")
            for path, fold in plan.items() if per_layer else ():  # each binary layer alone
                op = dict(packed.layers())[path]
                after = fold.bn or path
                out = op(_input_of(model, path, x, sim))
                if isinstance(out, Bits):
                    signs = backend.kernels().unpack_bits(out.words, out.channels)
                    want = sim[after]
                    want = want.transpose(0, 2, 3, 1) if want.ndim == 4 else want
                    np.testing.assert_array_equal(signs, np.where(want >= 0, 1, -1), err_msg=f"{name}: {path} bits")
                    ties += int(np.sum(want == 0))
                else:
                    np.testing.assert_array_equal(out, sim[after], err_msg=f"{name}: {path}")
    return {"ties": ties, "packed": packed}


def _input_of(model, path, x, sim):
    """The float input the simulation gave the layer at ``path`` (its predecessor's output)."""
    leaves = [p for p, m in model.named_modules() if not m._modules]
    parent = path.rpartition(".")[0]
    i = leaves.index(path)
    if i == 0:
        return x
    previous = leaves[i - 1]
    if previous.rpartition(".")[0] != parent or type(_get(model, parent)).__name__ != "Sequential":
        return _block_input(model, path, x, sim)
    return sim[previous]


def _get(model, path):
    m = model
    for part in path.split(".") if path else ():
        m = m._modules[part]
    return m


def _block_input(model, path, x, sim):
    """Input of conv1/conv2 or a shortcut layer inside a ResNet block, rebuilt from the simulation."""
    block_path, _, leaf = path.rpartition(".")
    if block_path.endswith(".shortcut"):
        block_path = block_path.rpartition(".")[0]
    block = _get(model, block_path)
    body_path, _, index = block_path.rpartition(".")
    block_input = _block_output(model, body_path, int(index) - 1, x, sim)
    if leaf == "conv2":
        shortcut = block_input if not block.shortcut._modules else sim[f"{block_path}.shortcut.1"]
        return sim[f"{block_path}.bn1"] + shortcut
    return block_input


def _block_output(model, body_path, index, x, sim):
    if index < 0:
        return sim["stem.1"]
    block_path = f"{body_path}.{index}"
    block = _get(model, block_path)
    y = sim[f"{block_path}.bn1"] + (_block_output(model, body_path, index - 1, x, sim)
                                     if not block.shortcut._modules else sim[f"{block_path}.shortcut.1"])
    return sim[f"{block_path}.bn2"] + y


def set_layers(model, scaling=None, pad_value=None, bias=False):
    """Switch scaling / pad value / bias on every Q-layer after construction (as a trained model could have)."""
    rng = np.random.default_rng(5)
    for m in model.modules():
        if isinstance(m, (nn.QDense, nn.QConv2d)):
            m.scaling = scaling
            if pad_value is not None and isinstance(m, nn.QConv2d):
                m.pad_value = pad_value
            if bias:
                m.bias = nn.Parameter(rng.normal(0, 2, m.out_size).astype(np.float32))


ZOO = {
    "lenet": (lambda: models.lenet(), (3, 1, 28, 28)),
    "binary_mlp": (lambda: models.binary_mlp(hidden=(100, 70, 65)), (4, 1, 28, 28)),
    "vgg_small": (lambda: models.vgg_small(width=16, image_size=16), (2, 3, 16, 16)),
    "resnet18": (lambda: models.resnet18(width=8), (2, 3, 16, 16)),
    "resnet18_float_shortcut": (lambda: models.resnet18(width=8, shortcut="float"), (2, 3, 12, 12)),
}


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("scaling, pad_value, bias", [(None, None, False), ("channel", 1, False),
                                                      ("channel", -1, True), (None, 0, True)])
def test_zoo_models_equal_the_float_simulation(name, scaling, pad_value, bias):
    minibnn.manual_seed(0)
    build, shape = ZOO[name]
    model = build()
    set_layers(model, scaling, pad_value, bias)
    randomize_stats(model)
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    check_against_simulation(model, x, name)


def test_threshold_layers_meet_exact_ties():
    """Ties (epilogue exactly 0) really occur in these models, and their bits still equal the simulation."""
    minibnn.manual_seed(0)
    model = models.binary_mlp(hidden=(64, 64, 64))
    randomize_stats(model)
    for m in model.modules():  # one fixed input row gives the same dot in many channels
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean[...] = np.round(m.running_mean / 2) * 2
            m.bias.data[...] = 0
    x = np.random.default_rng(1).normal(size=(64, 1, 28, 28)).astype(np.float32)
    result = check_against_simulation(model, x, "binary_mlp")
    assert result["ties"] > 0
    assert any(op.kind == "binary_dense" and op.emits_bits for _, op in result["packed"].layers())


def test_plan_folds_batch_norm_and_emits_bits_only_between_binary_layers():
    plan = deploy.fold_plan(models.vgg_small(width=8, image_size=16))
    assert plan["2"] == Fold(None, False)       # QConv -> MaxPool: float output
    assert plan["5"] == Fold("6", True)         # QConv -> BN -> QConv: threshold bits
    plan = deploy.fold_plan(models.resnet18(width=8))
    assert plan["body.0.conv1"] == Fold("body.0.bn1", False)
    assert plan["body.2.shortcut.0"] == Fold("body.2.shortcut.1", False)


def test_a_sign_between_binary_layers_lets_the_bits_through():
    """QDense -> BN -> QActivation(1) -> QDense (BMXNet's pattern): sign(sign(x)) = sign(x)."""
    minibnn.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dense(12, 70), nn.QDense(70, 65), nn.BatchNorm1d(65),
                          nn.QActivation(1), nn.QDense(65, 9), nn.Dense(9, 3))
    assert deploy.fold_plan(model)["2"] == Fold("3", True, ("4",))
    randomize_stats(model)
    result = check_against_simulation(model, np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32), "sign")
    assert dict(result["packed"].layers())["2"].emits_bits


class ReorderedBlock(BasicBlock):
    """A subclass whose forward applies bn1 before conv1: its inherited fold_pairs must not be used."""

    def forward(self, x):
        y = self.conv1(self.bn1(x)) + self.shortcut(x)
        return self.bn2(self.conv2(y)) + y


class FunctionalBlock(nn.Module):
    """A container whose forward calls functional ops between its layers (they return Tensors)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Dense(12, 40)
        self.q = nn.QDense(40, 20)
        self.head = nn.Dense(20, 3)

    def forward(self, x):
        return self.head(minibnn.functional.relu(self.q(minibnn.functional.relu(self.fc(x)))))


def test_only_the_data_flow_a_class_declares_is_folded():
    block = ReorderedBlock(8, 8)
    assert deploy.fold_plan(block)["conv1"] == Fold(None, False)
    randomize_stats(block)
    x = np.random.default_rng(0).normal(size=(2, 8, 5, 5)).astype(np.float32)
    check_against_simulation(block, x, "block", per_layer=False)
    model = FunctionalBlock()
    x = np.random.default_rng(0).normal(size=(4, 12)).astype(np.float32)
    check_against_simulation(model, x, "functional", per_layer=False)


def test_convert_verifies_its_result_on_the_input_shape():
    class Hidden(nn.Module):  # uses bn on the conv output AND the raw conv output: folding would be wrong
        fold_pairs = (("conv", "bn"),)

        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.QConv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = Hidden()
    randomize_stats(model)
    with pytest.raises(ValueError, match="does not compute what the float model does"):
        deploy.convert(model, (4, 6, 6))
    with pytest.raises(ValueError, match=r"input_shape \(3, 6, 6\) does not fit the model"):
        deploy.convert(models.vgg_small(width=8, image_size=16), (3, 6, 6))


def test_thresholds_follow_the_float_epilogue_through_special_values():
    """Negative, zero, infinite and NaN scales and shifts: the bits equal sign(epilogue) for every dot."""
    specials = np.array([0.0, -0.0, 1.5, -1.5, np.inf, -np.inf, np.nan, 1e38, -1e38, 1e-45], np.float32)
    scale, shift = np.meshgrid(specials, specials)
    e = Epilogue(scale=scale.ravel().astype(np.float32), bias=shift.ravel().astype(np.float32))
    threshold, flip = thresholds(e, 9, scale.size)
    dots = np.arange(-9, 10)
    with np.errstate(invalid="ignore", over="ignore"):
        want = epilogue_values(e, dots) >= 0
    np.testing.assert_array_equal((dots[:, None] >= threshold) != flip, want)


# ---------------------------------------------------------------- random small models

@st.composite
def small_models(draw):
    """A random binary MLP or CNN with batch norms, scaling, biases and pad values drawn."""
    scaling = draw(st.sampled_from([None, "channel"]))
    bias = draw(st.booleans())
    sizes = st.sampled_from([1, 3, 17, 63, 64, 65, 100])
    if draw(st.booleans()):
        f = [draw(sizes) for _ in range(3)]
        layers = [nn.Flatten(), nn.Dense(12, f[0]), nn.BatchNorm1d(f[0])]
        for a, b in zip(f[:-1], f[1:]):
            layers += [nn.QDense(a, b, bias=bias, scaling=scaling)]
            if draw(st.booleans()):
                layers += [nn.BatchNorm1d(b)]
        layers += [nn.Dense(f[-1], 3)]
        return nn.Sequential(*layers), (draw(st.integers(1, 3)), 12)
    c = [draw(st.sampled_from([1, 3, 17, 64, 65])) for _ in range(3)]
    side = draw(st.integers(5, 9))
    layers = [nn.Conv2d(2, c[0], 1), nn.BatchNorm2d(c[0])]
    for a, b in zip(c[:-1], c[1:]):
        layers += [nn.QConv2d(a, b, draw(st.sampled_from([1, 2, 3])), stride=draw(st.sampled_from([1, 2])),
                              padding=draw(st.sampled_from([0, 1])), pad_value=draw(st.sampled_from([0, 1, -1])),
                              bias=bias, scaling=scaling)]
        if draw(st.booleans()):
            layers += [nn.BatchNorm2d(b)]
    layers += [nn.GlobalAvgPool2d(), nn.Dense(c[-1], 3)]
    return nn.Sequential(*layers), (draw(st.integers(1, 3)), 2, side, side)


@settings(max_examples=max(30, settings().max_examples))
@given(drawn=small_models(), seed=st.integers(0, 2**16))
def test_random_small_models_equal_the_float_simulation(drawn, seed):
    model, shape = drawn
    randomize_stats(model, seed)
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    check_against_simulation(model, x, "random model")


# ---------------------------------------------------------------- trained model, real data

def test_trained_lenet_predicts_the_same_classes_on_the_mnist_test_set(tmp_path):
    from minibnn import data, optim, train

    minibnn.manual_seed(0)
    images, labels = data.load_mnist("train")
    x = data.normalize(images[:3000], data.MNIST_MEAN, data.MNIST_STD)
    model = models.lenet()
    train.fit(model, data.DataLoader(x, labels[:3000], 100, shuffle=True, seed=0),
              optim.Adam(model.parameters(), 3e-3), 1, progress=False)
    test_x, test_y = data.load_mnist("test")
    test_x = data.normalize(test_x, data.MNIST_MEAN, data.MNIST_STD)
    expected = np.concatenate([simulate(model, test_x[i:i + 1000]) for i in range(0, len(test_x), 1000)])
    packed = deploy.convert(model, (1, 28, 28), name="lenet")
    packed.save(tmp_path / "binarized_lenet")
    loaded = deploy.load(tmp_path / "binarized_lenet")
    for backend_name in BACKENDS:
        with minibnn.using(backend_name):
            got = loaded.predict(test_x, batch_size=1000)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    assert np.mean(expected.argmax(1) == test_y) > 0.8  # it did learn


# ---------------------------------------------------------------- sizes and the summary

def test_packed_files_hold_one_bit_per_binary_weight(tmp_path):
    model = models.resnet18()
    minibnn.save(model, tmp_path / "resnet")
    packed = deploy.convert(model, (3, 32, 32), name="resnet")
    packed.save(tmp_path / "binarized_resnet")
    header = json.loads((tmp_path / "binarized_resnet.json").read_text())
    binary = [m for m in model.modules() if isinstance(m, nn.QConv2d)]
    bits = sum(m.weight.data.size for m in binary)
    words = sum(v["shape"][0] * np.prod(v["shape"][1:]) for k, v in header["arrays"].items()
                if k.endswith(":weight_bits"))
    assert all(v["dtype"] == "uint64" for k, v in header["arrays"].items() if k.endswith(":weight_bits"))
    assert words == sum(m.weight.data.shape[0] * 9 * -(-m.in_channels // 64) if m.weight.data.shape[2] == 3
                        else m.weight.data.shape[0] * -(-m.in_channels // 64) for m in binary)
    assert words * 64 >= bits
    float_bytes = (tmp_path / "resnet.npz").stat().st_size
    packed_bytes = (tmp_path / "binarized_resnet.npz").stat().st_size
    assert float_bytes / packed_bytes >= 25, f"only {float_bytes / packed_bytes:.1f}x smaller"


def test_summary_counts_bits_macs_and_measured_memory(tmp_path):
    model = models.lenet()
    s = minibnn.summary(model, (1, 28, 28), print_fn=None)
    rows = {r.path: r for r in s.rows}
    assert rows["4"].binary_macs == 64 * 64 * 25 * 8 * 8 and rows["4"].float_macs == 0
    assert rows["0"].float_macs == 64 * 25 * 24 * 24 and rows["0"].input_bits == 32
    assert rows["9"].params == 1024 * 512 and rows["9"].weight_bits == 1
    assert rows["9"].packed_bytes == 512 * 16 * 8 + 2 * 512 * 4  # words + folded batch-norm scale, shift
    assert rows["10"].packed_bytes == 0                            # that batch norm, folded
    assert s.total("params") == sum(p.data.size for p in model.parameters())
    packed = deploy.convert(model, (1, 28, 28))
    assert s.total("packed_bytes") == packed.nbytes
    packed.save(tmp_path / "binarized_lenet")
    text = str(minibnn.summary(deploy.load(tmp_path / "binarized_lenet"), (1, 28, 28), print_fn=None))
    npz = (tmp_path / "binarized_lenet.npz").stat().st_size
    assert "compression" in text and "binary MACs" in text and f"binarized_lenet.npz {npz / 1e3:.2f} KB" in text


# ---------------------------------------------------------------- bad input

@pytest.fixture
def saved_packed(tmp_path):
    model = models.binary_mlp(hidden=(32, 16, 16))
    deploy.convert(model, (1, 28, 28)).save(tmp_path / "binarized_mlp")
    return tmp_path / "binarized_mlp"


def test_a_model_without_binary_layers_converts_to_a_float_copy_with_a_warning():
    model = models.lenet(act_bit=32, weight_bit=32)
    randomize_stats(model)
    x = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
    with pytest.warns(UserWarning, match="no binary or bit-serial layer"):
        packed = deploy.convert(model)
    np.testing.assert_array_equal(packed(x), simulate(model, x))


def test_mixed_q_layers_keep_their_quantized_weights():
    """1-bit input with 3-bit weights has no packed path: float32 weights, the float simulation's output."""
    model = models.lenet(act_bit=1, weight_bit=3)
    randomize_stats(model)
    x = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        packed = deploy.convert(model)
    np.testing.assert_array_equal(packed(x), simulate(model, x))
    op = dict(packed.layers())["4"]
    assert op.kind == "quantized" and len(np.unique(op.weight)) <= 2**3


def test_mismatched_pair_is_refused(tmp_path, saved_packed):
    deploy.convert(models.binary_mlp(hidden=(32, 16, 16)), (1, 28, 28)).save(tmp_path / "other")
    (tmp_path / "binarized_mlp.npz").write_bytes((tmp_path / "other.npz").read_bytes())
    with pytest.raises(ModelFileError, match="binarized_mlp.npz: contents do not match the checksum"):
        deploy.load(saved_packed)


def test_truncated_npz_is_refused(saved_packed):
    npz = saved_packed.with_suffix(".npz")
    npz.write_bytes(npz.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="checksum"):
        deploy.load(saved_packed)


def _edit_header(path, edit):
    json_path = path.with_suffix(".json")
    header = json.loads(json_path.read_text())
    edit(header)
    json_path.write_text(json.dumps(header))


def test_newer_version_is_refused(saved_packed):
    _edit_header(saved_packed, lambda h: h.update(version=99))
    with pytest.raises(ModelFileError, match="version 99 is newer"):
        deploy.load(saved_packed)


def test_not_a_packed_file_is_refused(tmp_path):
    minibnn.save(models.lenet(), tmp_path / "float")
    with pytest.raises(ModelFileError, match="not a minibnn-packed file"):
        deploy.load(tmp_path / "float")


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["layers"]["3"].update(op="magic"), r"layer 3: unknown layer kind 'magic'"),
    (lambda h: h["layers"]["3"]["config"].update(in_features=65), r"layer 3 \(binary_dense\): weight_bits has 1 words"),
    (lambda h: h["layers"]["3"]["config"].update(in_features=33), r"layer 3 .* weights \(16, 33\), the architecture says \(16, 32\)"),
    (lambda h: h["layers"]["7"]["config"]["module"].update(type="ReLU"), r"layer 7 .* ReLU where the architecture has Tanh"),
    (lambda h: h["layers"].pop("5"), r"missing \['5'\]"),
    (lambda h: h["layers"]["4"].update(op="binary_dense"), r"layer 4 .*weight_bits"),
    (lambda h: h["architecture"].update(type="Nope"), "bad architecture"),
])
def test_edited_header_is_refused_naming_the_layer(saved_packed, edit, message):
    _edit_header(saved_packed, edit)
    with pytest.raises(ModelFileError, match=message):
        deploy.load(saved_packed)


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["layers"]["8"].update(op="folded", config={}), r"layer 8 \(folded\): arrays \['bias', 'weight'\]"),
    (lambda h: h["layers"]["3"].update(op=["binary_dense"]), "string 'op'"),
    (lambda h: h["layers"]["3"]["config"].update(in_features="32"), "in_features must be an int"),
    (lambda h: h.update(input_shape="1,28,28"), "input_shape must be a list"),
    (lambda h: h["arrays"].update({"3:weight_bits": 5}), "'arrays' must map"),
])
def test_crafted_headers_are_refused(saved_packed, edit, message):
    _edit_header(saved_packed, edit)
    with pytest.raises(ModelFileError, match=message):
        deploy.load(saved_packed)


def _rewrite(tmp_path, saved, change) -> Path:
    """A consistent (.json, .npz) pair with ``change(header, arrays)`` applied (checksums redone)."""
    from minibnn.io import write_pair

    header = json.loads(saved.with_suffix(".json").read_text())
    with np.load(saved.with_suffix(".npz")) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(header, arrays)
    header = {k: v for k, v in header.items() if k not in ("arrays", "npz", "npz_sha256", "npz_bytes")}
    write_pair(tmp_path / "edited", header, arrays)
    return tmp_path / "edited"


def test_layers_that_contradict_the_architecture_are_refused(tmp_path):
    model = nn.Sequential(nn.QConv2d(3, 8, 3, padding=1, pad_value=1), nn.BatchNorm2d(8), nn.MaxPool2d(2),
                          nn.QConv2d(8, 8, 3, act_bit=2, weight_bit=2), nn.Flatten(), nn.Dense(8, 3))
    deploy.convert(model).save(tmp_path / "m")
    cases = [
        (lambda h, a: h["layers"]["0"]["config"].update(pad_value=-1), "pad_value -1; the architecture says .* 1"),
        (lambda h, a: h["layers"]["3"]["config"].update(act_bit=3), "act_bit 3, the architecture says 2"),
        (lambda h, a: a.update({"3:alpha": np.ones(8, np.float32)}), "alpha / bias do not match"),
        (lambda h, a: a.update({"0:junk": np.ones(8, np.float32)}), r"arrays \[.*junk.*\] differ"),
        (lambda h, a: h["layers"]["0"]["config"].update(stride=[2, 2]), r"stride \(2, 2\)"),
        (lambda h, a: h["layers"]["2"].update(op="folded", config={}), r"layer 2 \(folded\) does not fit .* MaxPool2d"),
        (lambda h, a: (h["layers"]["1"].update(op="float", config={"module": nn.BatchNorm2d(8).to_config()}),
                       a.update({f"1:{k}": v for k, v in nn.BatchNorm2d(8).state_dict().items()})),
         "the converter folds this BatchNorm2d away"),
    ]
    for change, message in cases:
        with pytest.raises(ModelFileError, match=message):
            deploy.load(_rewrite(tmp_path, tmp_path / "m", change))


def test_loading_and_converting_leave_the_global_generator_alone(saved_packed):
    minibnn.manual_seed(0)
    expected = minibnn.random.generator().random()
    minibnn.manual_seed(0)
    deploy.load(saved_packed)
    deploy.convert(models.lenet(), (1, 28, 28))
    minibnn.summary(models.lenet(), (1, 28, 28), print_fn=None)
    # models.lenet() itself draws its initial weights; compare against the same draws without the rest
    after = minibnn.random.generator().random()
    minibnn.manual_seed(0)
    models.lenet(), models.lenet()
    assert after == minibnn.random.generator().random() and expected is not None


def test_edited_arrays_are_refused_naming_the_layer(tmp_path, saved_packed):
    """A consistent .json/.npz pair whose threshold has the wrong dtype: refused by the layer check."""
    header = json.loads(saved_packed.with_suffix(".json").read_text())
    with np.load(saved_packed.with_suffix(".npz")) as npz:
        arrays = {k: npz[k] for k in npz.files}
    key = next(k for k in arrays if k.endswith(":threshold"))
    arrays[key] = arrays[key].astype(np.float32)
    from minibnn.io import write_pair
    header = {k: v for k, v in header.items() if k not in ("arrays", "npz", "npz_sha256", "npz_bytes")}
    write_pair(tmp_path / "edited", header, arrays)
    with pytest.raises(ModelFileError, match=rf"layer {key.split(':')[0]} \(binary_dense\): threshold must have dtype int32"):
        deploy.load(tmp_path / "edited")


def test_predict_rejects_wrong_shapes_and_dtypes(saved_packed):
    packed = deploy.load(saved_packed)
    with pytest.raises(ValueError, match=r"input must have shape \(N, 1, 28, 28\)"):
        packed.predict(np.zeros((2, 1, 27, 28), np.float32))
    with pytest.raises(ValueError, match="floating-point array"):
        packed.predict(np.zeros((2, 1, 28, 28), np.uint8))
    packed.input_shape = None  # without a recorded shape, the layer that cannot take it says so
    with pytest.raises(ValueError, match=r"layer 1 \(float\)"):
        packed.predict(np.zeros((2, 1, 27, 28), np.float32))
    conv = deploy.convert(models.vgg_small(width=8, image_size=16))
    with pytest.raises(ValueError, match=r"layer 3 \(float\): pooling: input \(1, 8, 1, 1\) is smaller"):
        conv.predict(np.zeros((1, 3, 1, 1), np.float32))
    with pytest.raises(ValueError, match=r"layer 2 \(binary_conv2d\): expects input \(N, 8, H, W\)"):
        dict(conv.layers())["2"](np.zeros((1, 5, 8, 8), np.float32))


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    packed = deploy.convert(models.binary_mlp(hidden=(16, 8)))
    import minibnn.io as io
    real = io.atomic_write_bytes

    def fail_on_json(path, data):
        if path.suffix == ".json":
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(io, "atomic_write_bytes", fail_on_json)
    with pytest.raises(OSError, match="disk full"):
        packed.save(tmp_path / "binarized_x")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- command line

def test_cli_convert_eval_summary(tmp_path, capsys):
    from minibnn.cli import main

    minibnn.save(models.lenet(), tmp_path / "lenet")
    assert main(["convert", str(tmp_path / "lenet.json"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "binarized_lenet.json").exists() and (tmp_path / "out" / "binarized_lenet.npz").exists()
    assert "smaller than lenet.json" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "out" / "binarized_lenet")]) == 0
    assert "packed model, test accuracy" in capsys.readouterr().out
    assert main(["summary", str(tmp_path / "out" / "binarized_lenet")]) == 0
    assert "compression" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: file not found" in capsys.readouterr().err
    minibnn.save(models.vgg_small(width=8, image_size=16), tmp_path / "vgg")  # 3 x 16 x 16 input
    assert main(["convert", str(tmp_path / "vgg.json"), "--out", str(tmp_path / "out")]) == 2
    assert "input_shape (1, 28, 28) does not fit the model" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "vgg.json"), "--out", str(tmp_path / "out"), "--input-shape", "3,16,16"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["binarized_lenet.json", "binarized_lenet.npz",
                                                                     "binarized_vgg.json", "binarized_vgg.npz"]
