"""`python -m engine import-torch`: PyTorch state_dicts loaded into net files, outputs equal."""
import os
import sys

import numpy as np
import pytest

import engine
from engine.cli import main
from engine.tools import import_torch
from engine.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALEXNET_TV = os.path.join(ROOT, "nets", "alexnet-torchvision.yaml")
LENET = os.path.join(ROOT, "nets", "lenet5.yaml")


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="import-torch reads .pth files with PyTorch, not installed here")


def torchvision_alexnet(torch):
    """torchvision.models.alexnet's modules and forward, written out (torchvision may be absent)."""
    nn = torch.nn

    class AlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
                nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 1000))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
    return AlexNet()


def lenet(torch, filters=6, extra=()):
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, filters, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(filters, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10), *extra)


def save(torch, model, path):
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.mark.slow       # AlexNet at full size in both frameworks
def test_alexnet_round_trip_gives_pytorchs_outputs(torch, tmp_path):
    torch.manual_seed(0)
    model = torchvision_alexnet(torch).eval()
    pth = save(torch, model, tmp_path / "alexnet.pth")
    out = tmp_path / "imported"
    assert main(["import-torch", pth, ALEXNET_TV, "-o", str(out)]) == 0
    net = engine.load(ALEXNET_TV, checkpoint=str(out))
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        theirs = model(torch.from_numpy(x)).numpy()
    ours = net.forward(x, outputs=["fc8"])["fc8"]
    scale = np.abs(theirs).max()
    print(f"AlexNet logits: max |engine - PyTorch| = {np.abs(ours - theirs).max():.2e} (logits up to {scale:.3f})")
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * scale, rtol=0)
    probs = torch.softmax(torch.from_numpy(theirs), 1).numpy()
    np.testing.assert_allclose(net.forward(x), probs, atol=1e-5)


SMALL_RGB = """
name: small-rgb
input: {shape: [3, 12, 12]}
layers:
  - {name: conv, type: conv, filters: 4, size: 3, padding: 1, neuron: relu}
  - {name: pool, type: pool, mode: max, size: 2}
  - {name: fc, type: fc, outputs: 5}
  - {name: prob, type: softmax}
"""


def test_torchvision_input_folds_the_std_into_the_first_layer(torch, tmp_path):
    """(pixels / 255 - mean) / std in PyTorch = (pixels - 255 mean) / 255 here, std in conv's weights."""
    nn = torch.nn
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5)).eval()
    net_file = tmp_path / "small.yaml"
    net_file.write_text(SMALL_RGB)
    pth = save(torch, model, tmp_path / "small.pth")
    out = tmp_path / "tv"
    assert main(["import-torch", pth, str(net_file), "-o", str(out), "--torchvision-input"]) == 0
    net = engine.load(str(net_file), checkpoint=str(out))
    raw = np.random.default_rng(1).integers(0, 256, (4, 3, 12, 12), dtype=np.uint8)
    mean = torch.tensor(import_torch.TORCHVISION_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(import_torch.TORCHVISION_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        theirs = model((torch.from_numpy(raw).float() / 255 - mean) / std).numpy()
    ours = net.forward(net.preprocess.test(raw), outputs=["fc"])["fc"]
    np.testing.assert_allclose(ours, theirs, atol=1e-5 * np.abs(theirs).max(), rtol=0)


def test_lenet_import_is_a_complete_checkpoint(torch, tmp_path):
    torch.manual_seed(1)
    model = lenet(torch).eval()
    pth = save(torch, model, tmp_path / "lenet.pth")
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"digit {i}\n" for i in range(10)))
    out = tmp_path / "run"
    assert main(["import-torch", pth, LENET, "-o", str(out), "--mean", "33.3", "--scale", "0.0039",
                 "--classes", str(classes)]) == 0
    net = engine.load(None, checkpoint=str(out))            # the net text travels with it
    assert net.class_names[3] == "digit 3" and net.preprocess.scale == 0.0039
    raw = np.random.default_rng(2).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    x = net.preprocess.test(raw)
    np.testing.assert_allclose(x, (raw - np.float32(33.3)) * np.float32(0.0039), rtol=1e-6)
    with torch.no_grad():
        theirs = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(net.forward(x), theirs, atol=1e-5)
    assert main(["import-torch", pth, LENET, "-o", str(out)]) == 2     # never over another run
    # fine-tuning: train --resume continues from the imported weights
    result = Trainer(resume=str(out), epochs=1, log=lambda *a: None).run()
    assert result["metrics"][-1]["epoch"] == 1 and os.path.exists(out / "1.json")


def test_every_mismatch_in_one_error(torch, tmp_path, capsys):
    nn = torch.nn
    model = lenet(torch, filters=8, extra=(nn.BatchNorm1d(10),))
    pth = save(torch, model, tmp_path / "wrong.pth")
    assert main(["import-torch", pth, LENET, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) <= 2, err
    assert "'conv1.weight' <- '0.weight': shape [8, 1, 5, 5], the net's is [6, 1, 5, 5]" in err
    assert "'conv2.weight' <- '3.weight': shape [16, 8, 5, 5], the net's is [16, 6, 5, 5]" in err
    assert "'12.running_mean' is not a weight or bias" in err
    assert "6 modules" in err                                   # BatchNorm's weight and bias
    assert not (tmp_path / "out").exists()


def test_a_map_file_pairs_names(torch, tmp_path, capsys):
    nn = torch.nn
    convs = lenet(torch)
    # modules registered fc first: the positional pairing cannot work, the map does
    model = nn.Module()
    for name, i in (("f1", 7), ("f2", 9), ("f3", 11), ("c1", 0), ("c2", 3)):
        model.add_module(name, convs[i])
    pth = save(torch, model, tmp_path / "named.pth")
    assert main(["import-torch", pth, LENET, "-o", str(tmp_path / "a")]) == 2
    assert "shape" in capsys.readouterr().err
    mapping = tmp_path / "map.yaml"
    mapping.write_text("conv1: c1\nconv2: c2\nfc3: f1\nfc4: f2\nfc5.weight: f3.weight\nfc5.bias: f3.bias\n")
    assert main(["import-torch", pth, LENET, "-o", str(tmp_path / "b"), "--map", str(mapping)]) == 0
    net = engine.load(LENET, checkpoint=str(tmp_path / "b"))
    np.testing.assert_array_equal(net.state_dict()["fc3.weight"], convs[7].weight.detach().numpy())
    mapping.write_text('{"conv1": "c1", "conv9": "c2"}')
    assert main(["import-torch", pth, LENET, "-o", str(tmp_path / "c"), "--map", str(mapping)]) == 2
    err = capsys.readouterr().err
    assert "'conv9', which is no layer" in err and "'fc4.weight' is not mapped" in err


def test_a_pickled_model_is_refused(torch, tmp_path, capsys):
    path = tmp_path / "model.pth"
    torch.save(lenet(torch), path)                   # the whole object, not its state_dict
    assert main(["import-torch", str(path), LENET, "-o", str(tmp_path / "out")]) == 2
    assert "weights_only" in capsys.readouterr().err


def test_without_torch_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)          # import torch raises ImportError
    with pytest.raises(engine.ConfigError, match="needs PyTorch"):
        import_torch.read_state_dict(str(tmp_path / "x.pth"))


def test_alexnet_torchvision_shapes():
    """torchvision's floor-rule pools and our ceil-rule pools agree at 224: 55 -> 27 -> 13 -> 6."""
    net = engine.load(ALEXNET_TV)
    shapes = {n.name: n.output_shape for n in net.layers}
    assert shapes["conv1"] == (64, 55, 55) and shapes["pool1"] == (64, 27, 27)
    assert shapes["pool2"] == (192, 13, 13) and shapes["pool5"] == (256, 6, 6)
    assert net.num_params == 61_100_840                      # torchvision's count
    assert [n.name for n in net.layers if n.layer.param_shapes()] == \
        ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]


SMALL_BN = """
name: small-bn
input: {shape: [3, 8, 8]}
layers:
  - {name: conv, type: conv, filters: 4, size: 3, padding: 1, bias: false}
  - {name: bn, type: batchnorm, neuron: relu}
  - {name: pool, type: pool, mode: max, size: 2, stride: 2}
  - {name: fc, type: fc, outputs: 5}
  - {name: prob, type: softmax}
"""


def small_bn_modules(torch):
    """The modules of SMALL_BN, batchnorm's affine parameters and statistics random."""
    nn = torch.nn
    torch.manual_seed(4)
    conv, bn, fc = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Linear(64, 5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_(0, 0.5)
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return conv, bn, fc


def small_bn_logits(torch, conv, bn, fc, x):
    nn = torch.nn
    with torch.no_grad():
        bn.eval()
        return fc(nn.functional.max_pool2d(nn.functional.relu(bn(conv(torch.from_numpy(x)))), 2).flatten(1)).numpy()


def named_bn_model(torch, conv, bn, fc):
    """The modules under our layer names, fc registered first: only matching by name fits."""
    model = torch.nn.Module()
    for name, m in (("fc", fc), ("conv", conv), ("bn", bn)):
        model.add_module(name, m)
    return model


@pytest.mark.parametrize("named", [False, True], ids=["in-order", "by-name"])
def test_batchnorm_running_statistics_are_imported(torch, tmp_path, named):
    """nn.Sequential's 0/1/5 in order; our names by name; BatchNorm's running statistics with
    its weight and bias, num_batches_tracked skipped; the eval outputs are PyTorch's."""
    conv, bn, fc = small_bn_modules(torch)
    model = (named_bn_model(torch, conv, bn, fc) if named else
             torch.nn.Sequential(conv, bn, torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), fc))
    pth = save(torch, model, tmp_path / "bn.pth")
    net_file = tmp_path / "small-bn.yaml"
    net_file.write_text(SMALL_BN)
    out = tmp_path / "run"
    assert main(["import-torch", pth, str(net_file), "-o", str(out)]) == 0
    net = engine.load(str(net_file), checkpoint=str(out))
    np.testing.assert_array_equal(net.state_dict()["bn.running_var"], bn.running_var.numpy())
    x = np.random.default_rng(3).standard_normal((3, 3, 8, 8), dtype=np.float32)
    theirs = small_bn_logits(torch, conv, bn, fc, x)
    np.testing.assert_allclose(net.forward(x, outputs=["fc"])["fc"], theirs, atol=1e-5 * np.abs(theirs).max(), rtol=0)


def test_weights_lacking_a_key_by_name_are_told_which(torch, tmp_path, capsys):
    conv, bn, fc = small_bn_modules(torch)
    state = named_bn_model(torch, conv, bn, fc).state_dict()
    del state["bn.running_var"]
    pth = tmp_path / "partial.pth"
    torch.save(state, pth)
    net_file = tmp_path / "small-bn.yaml"
    net_file.write_text(SMALL_BN)
    assert main(["import-torch", str(pth), str(net_file), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) <= 2, err
    assert "'conv.weight' <- 'fc.weight': shape [5, 64]" in err                  # in order: fc first
    assert "by name, 6 of the net's 7 tensors are in the weights, missing bn.running_var" in err
    assert not (tmp_path / "out").exists()
