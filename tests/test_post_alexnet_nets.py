"""The nets after AlexNet (nets/resnet18, resnet34, vgg16, vgg19, googlenet): torchvision's
parameter counts (figures from torchvision's model docs, not computed here), [N, 1000] finite
outputs, and PyTorch twins built from torch.nn layers as torchvision defines them (torchvision
is not importable here) holding the same weights: equal outputs in eval mode; equal outputs,
loss, gradients and running statistics after a training pass; and `import-torch` of the twin's
state_dict, without a --map, giving the twin's outputs."""
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
# Each returns logits (torchvision's forward); in training GoogLeNet's returns (logits, aux2, aux1)
# as torchvision's GoogLeNetOutputs. `dropout` is torchvision's own constructor argument.
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
            return self.fc(self.avgpool(x).flatten(1))
    return ResNet()


VGG_CFGS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}     # convs per stage (D, E)


def vgg_twin(nn, convs, dropout=0.5):
    layers, cin = [], 3
    for n, width in zip(convs, (64, 128, 256, 512, 512)):
        for _ in range(n):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True)]
            cin = width
        layers.append(nn.MaxPool2d(2, 2))

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(dropout),
                nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(dropout), nn.Linear(4096, 1000))

        def forward(self, x):
            return self.classifier(self.avgpool(self.features(x)).flatten(1))
    return VGG()


def googlenet_twin(nn, dropout=0.2, dropout_aux=0.7):
    import torch
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
            return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)

    class InceptionAux(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.conv = BasicConv2d(cin, 128, kernel_size=1)
            self.fc1 = nn.Linear(2048, 1024)
            self.fc2 = nn.Linear(1024, 1000)
            self.dropout = nn.Dropout(dropout_aux)

        def forward(self, x):
            x = self.conv(F.adaptive_avg_pool2d(x, (4, 4))).flatten(1)
            return self.fc2(self.dropout(F.relu(self.fc1(x))))

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
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(1024, 1000)

        def forward(self, x):               # eval mode: the heads do not run (torchvision's too)
            x = self.maxpool1(self.conv1(x))
            x = self.maxpool2(self.conv3(self.conv2(x)))
            x = self.inception4a(self.maxpool3(self.inception3b(self.inception3a(x))))
            aux1 = self.aux1(x) if self.training else None
            x = self.inception4d(self.inception4c(self.inception4b(x)))
            aux2 = self.aux2(x) if self.training else None
            x = self.inception5b(self.inception5a(self.maxpool4(self.inception4e(x))))
            x = self.fc(self.dropout(F.adaptive_avg_pool2d(x, 1).flatten(1)))
            return (x, aux2, aux1) if self.training else x
    return GoogLeNet()


# Per net: the twin (dropout rate 0, see test_train_mode_...), the overrides that give our net a
# small input and dropout rate 0 too, the batch, and our logit layers with the twin's loss weights.
TWINS = {
    "resnet18": (lambda nn: resnet_twin(nn, (2, 2, 2, 2)), {"input.shape": [3, 64, 64]}, 4, {"fc": 1.0}),
    "resnet34": (lambda nn: resnet_twin(nn, (3, 4, 6, 3)), {"input.shape": [3, 64, 64]}, 4, {"fc": 1.0}),
    "vgg16": (lambda nn: vgg_twin(nn, VGG_CFGS["vgg16"], dropout=0.0),
              {"input.shape": [3, 32, 32], "drop6.rate": 0, "drop7.rate": 0}, 2, {"fc8": 1.0}),
    "vgg19": (lambda nn: vgg_twin(nn, VGG_CFGS["vgg19"], dropout=0.0),
              {"input.shape": [3, 32, 32], "drop6.rate": 0, "drop7.rate": 0}, 2, {"fc8": 1.0}),
    "googlenet": (lambda nn: googlenet_twin(nn, dropout=0.0, dropout_aux=0.0),
                  {"input.shape": [3, 64, 64], "dropout.rate": 0, "aux1.dropout.rate": 0,
                   "aux2.dropout.rate": 0}, 4, {"fc": 1.0, "aux1.fc2": 0.3, "aux2.fc2": 0.3}),
}
SLOW_TWINS = ("vgg16", "vgg19", "resnet34")      # 138M+ parameters in both frameworks; resnet34's depth

# The twin computes in float64, the same (float32) weights and input: a reference with no
# rounding error to speak of. Tolerances are relative norm errors ||ours - twin|| / ||twin|| per
# tensor for our float32: each layer's sums (up to 4608 products, batch statistics over up to
# N*H*W = 4096 values) err by ~1e-6 relative and this grows through 18-22 layers: outputs, loss
# and running statistics measured <= 1e-5, within OUT_TOL = 1e-4. Gradients go back through every
# layer, from three heads in GoogLeNet, and a batchnorm bias gradient is a sum of terms that
# nearly cancel: measured up to 1e-4 (GoogLeNet), within GRAD_TOL = 5e-4.
# A kink is another matter: a ReLU input, or a max pool window's runner-up, closer to the kink
# than float32's error there (up to 1e-4 of the tensor's RMS deep in ResNet-34) falls on the
# other side of it in float32, and the gradient takes the other branch: one ReLU input of
# ResNet-18 (1.3e-7 x RMS) moved a batchnorm bias gradient by 7e-3 and every gradient before it
# by 3e-3, in our float32 and, with other BLAS threads, in PyTorch's. Each such gradient is as
# right as the float64 one, and no seed keeps a million values that far off their kinks, so the
# float64 twin takes our branches (`our_branches`) and the comparison is of everything else.
OUT_TOL, GRAD_TOL = 1e-4, 5e-4


def scramble_state(net, seed):
    """Random batchnorm scales, shifts and statistics, and random biases, so that no batchnorm
    (in eval mode) and no bias is an identity; conv and fc weights keep the net's init."""
    rng = np.random.default_rng(seed)
    state = net.state_dict()
    for node in net.layers:
        for k in (f"{node.name}.{s}" for s in ("weight", "bias", "running_mean", "running_var")):
            if k not in state:
                continue
            shape = state[k].shape
            if node.type == "batchnorm" and k.endswith((".weight", ".running_var")):
                state[k] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
            elif k.endswith((".bias", ".running_mean")):
                state[k] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    net.load_state_dict(state)
    return state


def torch_names(net, model):
    """{our key: the twin's key}: the same names, or for VGG (stage1.conv1, ..., fc8 here;
    features.0, ..., classifier.6 there) the k-th conv/fc layer to the k-th Conv2d/Linear."""
    theirs = [name for name, _ in model.named_parameters()]
    ours = list(net.parameters())
    if set(ours) == set(theirs):
        return {k: k for k in net.state_dict()}
    modules = [name for name, m in model.named_modules() if type(m).__name__ in ("Conv2d", "Linear")]
    layers = [node.name for node in net.layers if node.layer.param_shapes()]
    assert len(modules) == len(layers)
    return {f"{ours_}.{p}": f"{mod}.{p}" for ours_, mod in zip(layers, modules) for p in ("weight", "bias")}


class Twin:
    """Our net and its PyTorch twin holding the same (scrambled) weights."""

    def __init__(self, torch, name, seed=3):
        build, self.overrides, batch, self.heads = TWINS[name]
        self.torch, self.name = torch, name
        self.net = engine.load(path(name), overrides=self.overrides, seed=seed)
        torch.manual_seed(seed)
        self.model = build(torch.nn).double()
        assert sum(p.numel() for p in self.model.parameters()) == COUNTS[name]
        self.state = scramble_state(self.net, seed + 1)
        self.names = torch_names(self.net, self.model)
        rng = np.random.default_rng(seed + 2)
        self.x = rng.standard_normal((batch,) + self.net.input_shape).astype(np.float32)
        self.x64 = torch.from_numpy(self.x.astype(np.float64))
        self.labels = rng.integers(0, 1000, batch)
        self.reset()

    def reset(self):
        """Both back to the scrambled weights and running statistics (the twin's in float64)."""
        self.net.load_state_dict(self.state)
        theirs = {self.names[k]: self.torch.from_numpy(np.array(v)) for k, v in self.state.items()}
        missing, unexpected = self.model.load_state_dict(theirs, strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
        for m in self.model.modules():                   # the step count, as a fresh model has
            if hasattr(m, "num_batches_tracked"):
                m.num_batches_tracked.zero_()

    def eval_logits(self):
        self.model.eval()
        with self.torch.no_grad():
            return self.model(self.x64).numpy()


@pytest.fixture(scope="module", params=[n if n not in SLOW_TWINS else pytest.param(n, marks=pytest.mark.slow)
                                        for n in TWINS])
def twin(request):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the twin comparison needs it")
    t = Twin(torch, request.param)
    yield t
    del t.net, t.model, t.state          # VGG's 138M parameters, twice: free them before the next net


def test_eval_mode_outputs_equal_the_twins(twin):
    twin.reset()
    want = twin.eval_logits()
    main = next(iter(twin.heads))
    got = twin.net.forward(twin.x, outputs=[main])[main]
    assert got.shape == want.shape
    print(f"{twin.name}: eval logits, relative error {rel(got, want):.1e}")
    assert rel(got, want) < OUT_TOL
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    probs = twin.torch.softmax(twin.torch.from_numpy(want), 1).numpy()
    assert rel(twin.net.forward(twin.x), probs) < OUT_TOL               # our softmax output layer


def our_branches(torch, activations):
    """A context in which the torch code run inside it (the float64 twin's forward) takes the
    branches our float32 forward took: each ReLU keeps the values that our layer of the same
    output kept, each max pool picks the cell our pool picked (torch's rule on our float32
    input: the row-major first maximum, ours too). Our layer is found by value: the output
    (of `activations`, every layer's) nearest the twin's, within 1e-3 (a dropout at rate 0
    gives its input's: either will do). `.flips` counts the values whose branch differs from
    float64's own."""
    F = torch.nn.functional

    class OurBranches(torch.overrides.TorchFunctionMode):
        flips = 0

        def ours(self, want):
            """Our (float32) activation equal to `want` (float64 NumPy), as a tensor."""
            ours = min((a for a in activations if a.shape == want.shape), key=lambda a: rel(a, want))
            assert rel(ours, want) < 1e-3, f"none of our layers gives the twin's {list(want.shape)} tensor"
            return torch.from_numpy(ours)

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in (F.relu, torch.relu, torch.relu_):
                x = args[0]
                keep = self.ours(np.maximum(x.detach().numpy(), 0)) > 0
                self.flips += int((keep != (x > 0)).sum())
                inplace = func is torch.relu_ or kwargs.get("inplace") or args[1:] == (True,)
                return x.mul_(keep) if inplace else x * keep
            if func is F.max_pool2d:
                x, kw = args[0], dict(kwargs, return_indices=True)
                _, cells = func(self.ours(x.detach().numpy()), *args[1:], **kw)
                _, own = func(x.detach(), *args[1:], **kw)
                self.flips += int((cells != own).sum())
                return x.flatten(2).gather(2, cells.flatten(2)).view(cells.shape)
            return func(*args, **kwargs)
    return OurBranches()


def twin_training_pass(twin, activations):
    """The float64 twin's training pass from the scrambled weights, on the branches of our
    `activations` (our_branches): ({head: logits}, loss, {our key: gradient}, {our key:
    running statistic}) as NumPy, and the count of branches that are not float64's own."""
    torch, F = twin.torch, twin.torch.nn.functional
    twin.reset()
    model = twin.model.train()
    for p in model.parameters():
        p.grad = None
    with our_branches(torch, activations) as branches:
        outs = model(twin.x64)
    if isinstance(outs, tuple):                             # torchvision's order: logits, aux2, aux1
        outs = {"fc": outs[0], "aux2.fc2": outs[1], "aux1.fc2": outs[2]}
    else:
        outs = {next(iter(twin.heads)): outs}
    target = torch.from_numpy(twin.labels)
    loss = sum(w * F.cross_entropy(outs[h], target) for h, w in twin.heads.items())
    loss.backward()
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    def host(t):                 # a copy: the next reset() overwrites the twin's buffers
        return t.detach().numpy().copy()
    return ({h: host(o) for h, o in outs.items()}, loss.item(),
            {k: host(params[t].grad) for k, t in twin.names.items() if t in params},
            {k: host(buffers[t]) for k, t in twin.names.items() if t in buffers}, branches.flips)


def test_train_mode_outputs_loss_gradients_and_running_stats_equal_the_twins(twin):
    """One training pass on both sides from the same weights. Dropout's masks come from
    different generators in the two frameworks, so its rate is 0 on both sides (the net's
    overrides, torchvision's `dropout=` argument): what is compared is everything else.
    GoogLeNet's loss is torchvision's training loss, main + 0.3 (aux1 + aux2), our weighted
    cost heads. The twin takes our branches at the kinks (see our_branches)."""
    twin.reset()
    layers = [node.name for node in twin.net.layers]
    got = twin.net.forward(twin.x, train=True, outputs=layers)
    outs, loss, want, stats, flips = twin_training_pass(twin, [got[k] for k in layers])
    for h in twin.heads:
        print(f"{twin.name}: train {h}, relative error {rel(got[h], outs[h]):.1e}")
        assert rel(got[h], outs[h]) < OUT_TOL, h

    our_loss, grads = twin.net.gradients(twin.x, twin.labels, train=True)
    assert abs(our_loss - loss) < OUT_TOL * abs(loss)
    assert set(grads) == set(twin.net.parameters()) == set(want)
    errors = {k: rel(g, want[k]) for k, g in grads.items()}
    worst = max(errors, key=errors.get)
    print(f"{twin.name}: {flips} branches not float64's, worst gradient {worst}, relative error {errors[worst]:.1e}")
    assert errors[worst] < GRAD_TOL, worst

    ours = {k: v for k, v in twin.net.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    assert set(ours) == set(stats)
    for k, v in ours.items():
        assert rel(v, stats[k]) < OUT_TOL, k


def test_import_torch_of_the_twins_state_dict_reproduces_its_outputs(twin, tmp_path):
    """The CLI on the net file itself (224x224 input, dropout as shipped: the weights do not
    depend on either), no --map; the run loaded with the small input of the twin."""
    from engine.cli import main
    twin.reset()
    pth = str(tmp_path / f"{twin.name}.pth")
    twin.torch.save({k: v.float() if v.is_floating_point() else v           # as torchvision's files
                     for k, v in twin.model.state_dict().items()}, pth)
    out = str(tmp_path / "run")
    assert main(["import-torch", pth, path(twin.name), "-o", out]) == 0
    os.remove(pth)
    net = engine.load(path(twin.name), checkpoint=out, overrides=twin.overrides)
    main_head = next(iter(twin.heads))
    want = twin.eval_logits()
    assert rel(net.forward(twin.x, outputs=[main_head])[main_head], want) < OUT_TOL
