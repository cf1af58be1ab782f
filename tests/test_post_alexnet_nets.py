"""The nets after AlexNet (nets/resnet18, resnet34, vgg16, vgg19, googlenet): torchvision's
parameter counts (figures from torchvision's model docs, not computed here), [N, 1000] finite
outputs, and PyTorch twins built from torch.nn layers (torchvision is not importable here)
with our weights copied in, equal in eval mode."""
import os

import numpy as np
import pytest

import engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETS = os.path.join(ROOT, "nets")
COUNTS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "vgg16": 138_357_544,
          "vgg19": 143_667_240, "googlenet": 13_004_888}
GOOGLENET_WITHOUT_HEADS = 6_624_904
BIG = ("vgg16", "vgg19")          # 138M+ parameters: drawing them takes a while
SMALL_INPUT = {"input.shape": [3, 64, 64]}


def path(name):
    return os.path.join(NETS, name + ".yaml")


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("name", [n if n not in BIG else pytest.param(n, marks=pytest.mark.slow)
                                  for n in COUNTS])
def test_parameter_count_is_torchvisions(name):
    net = engine.load(path(name))
    assert net.input_shape == (3, 224, 224)
    assert net.num_params == COUNTS[name]
    if name == "googlenet":
        trunk = sum(v.size for k, v in net.parameters().items() if not k.startswith(("aux1.", "aux2.")))
        assert trunk == GOOGLENET_WITHOUT_HEADS
        assert [(n.name, w) for n, w in net.cost_heads] == [("aux1.loss", 0.3), ("aux2.loss", 0.3), ("prob", 1.0)]


@pytest.mark.parametrize("name", [n if n not in BIG else pytest.param(n, marks=pytest.mark.slow)
                                  for n in COUNTS])
def test_forward_on_a_small_batch_is_finite(name):
    net = engine.load(path(name), overrides=SMALL_INPUT, seed=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    y = net.forward(x)
    assert y.shape == (2, 1000) and np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)        # softmax probabilities


# ---- the PyTorch twins: torchvision's modules rebuilt from torch.nn ---------------------------
def resnet_twin(nn, blocks):
    class BasicBlock(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.downsample = None
            if stride != 1 or cin != width:
                self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width))

        def forward(self, x):
            out = self.bn2(self.conv2(nn.functional.relu(self.bn1(self.conv1(x)))))
            return nn.functional.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512)), 1):
                layers = []
                for j in range(n):
                    layers.append(BasicBlock(cin, width, 2 if j == 0 and i > 1 else 1))
                    cin = width
                setattr(self, f"layer{i}", nn.Sequential(*layers))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            x = self.maxpool(nn.functional.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1)).softmax(1)
    return ResNet()


def scramble_state(net, seed):
    """Random batchnorm statistics and affine parameters, so eval mode is no identity."""
    rng = np.random.default_rng(seed)
    state = net.state_dict()
    for k, v in state.items():
        if k.endswith(("running_mean", ".bn1.bias", ".bn2.bias", ".bn.bias")):
            state[k] = (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
        elif k.endswith("running_var"):
            state[k] = rng.uniform(0.5, 2.0, v.shape).astype(np.float32)
    net.load_state_dict(state)
    return state


def compare_twin(torch, net, model, state, x):
    theirs = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(theirs, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    model.eval()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = net.forward(x)
    assert got.shape == want.shape
    assert rel(got, want) < 1e-4
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


def test_resnet18_equals_its_pytorch_twin_in_eval_mode():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the twin comparison needs it")
    torch.manual_seed(0)
    net = engine.load(path("resnet18"), overrides=SMALL_INPUT, seed=3)
    model = resnet_twin(torch.nn, (2, 2, 2, 2))
    assert sum(p.numel() for p in model.parameters()) == COUNTS["resnet18"]
    state = scramble_state(net, 4)
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 64)).astype(np.float32)
    compare_twin(torch, net, model, state, x)


def googlenet_twin(nn):
    F = nn.functional

    class BasicConv2d(nn.Module):
        def __init__(self, cin, cout, **kw):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    class Inception(nn.Module):
        def __init__(self, cin, c1, c3r, c3, c5r, c5, pool):
            super().__init__()
            self.branch1 = BasicConv2d(cin, c1, kernel_size=1)
            self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, kernel_size=1), BasicConv2d(c3r, c3, kernel_size=3, padding=1))
            self.branch3 = nn.Sequential(BasicConv2d(cin, c5r, kernel_size=1), BasicConv2d(c5r, c5, kernel_size=3, padding=1))
            self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(cin, pool, kernel_size=1))

        def forward(self, x):
            return torch_cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)])

    class InceptionAux(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.conv = BasicConv2d(cin, 128, kernel_size=1)
            self.fc1 = nn.Linear(2048, 1024)
            self.fc2 = nn.Linear(1024, 1000)

    class GoogLeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
            self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2 = BasicConv2d(64, 64, kernel_size=1)
            self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
            self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
            self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
            self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
            self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
            self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
            self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
            self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
            self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
            self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
            self.aux1, self.aux2 = InceptionAux(512), InceptionAux(528)
            self.fc = nn.Linear(1024, 1000)

        def forward(self, x):               # eval mode: the heads do not count (torchvision's too)
            x = self.maxpool1(self.conv1(x))
            x = self.maxpool2(self.conv3(self.conv2(x)))
            x = self.maxpool3(self.inception3b(self.inception3a(x)))
            for name in ("4a", "4b", "4c", "4d", "4e"):
                x = getattr(self, "inception" + name)(x)
            x = self.inception5b(self.inception5a(self.maxpool4(x)))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)).softmax(1)

    import torch
    torch_cat = lambda xs: torch.cat(xs, 1)     # noqa: E731
    return GoogLeNet()


@pytest.mark.slow
def test_googlenet_equals_its_pytorch_twin_in_eval_mode():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the twin comparison needs it")
    net = engine.load(path("googlenet"), overrides=SMALL_INPUT, seed=3)
    model = googlenet_twin(torch.nn)
    assert sum(p.numel() for p in model.parameters()) == COUNTS["googlenet"]
    state = scramble_state(net, 6)
    x = np.random.default_rng(7).standard_normal((2, 3, 64, 64)).astype(np.float32)
    compare_twin(torch, net, model, state, x)
