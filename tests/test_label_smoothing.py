"""Label smoothing on the softmax cost (PyTorch's CrossEntropyLoss(label_smoothing=e)):
the reference and the kernels against torch, finite differences, train.label_smoothing
reaching the cost layer, refused by a cost that cannot smooth, validation unaffected."""
import os

import numpy as np
import pytest

import engine
import layers
from engine import gradcheck, settings
from engine.errors import ConfigError
from engine.train import Trainer, evaluate
from helpers import cli
from layers import threads
from layers.softmax import cpu, reference

torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, "nets", "lenet5.yaml")
SUM2_NET = """
input: {shape: [1, 3, 3]}
layers:
  - {name: fc1, type: fc, outputs: 4}
  - {name: cost, type: sum2}
train: {data: synthetic, label_smoothing: 0.1}
"""


def make(d, e):
    return layers.get("softmax")("probs", {"label_smoothing": e}, [(d,)])


def torch_xent(x, labels, e):
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(tx, torch.tensor(labels), label_smoothing=e)
    loss.backward()
    return loss.item(), tx.grad.numpy()


@pytest.mark.parametrize("e", [0.1, 0.3, 1.0])
@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_reference_matches_torch(e, scale):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 11)) * scale
    labels = rng.integers(0, 11, 7)
    loss, dx = reference.cost(x, labels, e)
    t_loss, t_dx = torch_xent(x, labels, e)
    assert loss == pytest.approx(t_loss, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(dx, t_dx, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("e", [0.05, 0.5])
@pytest.mark.parametrize("n, d", [(1, 3), (9, 21), (33, 1000)])
def test_cpu_kernel_matches_torch_and_the_reference(e, n, d):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((n, d)) * 3).astype(np.float32)
    labels = rng.integers(0, d, n)
    layer = make(d, e)
    layer.forward(x, {})
    loss, dx = layer.cost(labels)
    t_loss, t_dx = torch_xent(x.astype(np.float64), labels, e)
    assert abs(loss - t_loss) < 1e-6 * max(1.0, t_loss)
    np.testing.assert_allclose(dx, t_dx, rtol=1e-5, atol=1e-7 / n)
    r_loss, r_dx = reference.cost(x, labels, e)
    assert abs(loss - r_loss) < 1e-6 * max(1.0, r_loss)
    np.testing.assert_allclose(dx, r_dx, rtol=1e-5, atol=1e-7 / n)


def test_serial_twin_computes_what_the_parallel_kernel_computes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 17)).astype(np.float32)
    labels = rng.integers(0, 17, 40).astype(np.int64)
    p, lse = np.empty_like(x), np.empty(40)
    cpu.forward(x, p, lse)
    dx_par, dx_ser = np.empty_like(x), np.empty_like(x)
    loss_par = cpu.xent_smoothed(x, lse, labels, p, dx_par, 0.2)
    with threads.serial():
        loss_ser = cpu.xent_smoothed(x, lse, labels, p, dx_ser, 0.2)
    assert loss_par == pytest.approx(loss_ser, rel=1e-12)
    np.testing.assert_allclose(dx_par, dx_ser, rtol=1e-6, atol=1e-9)


def test_gradient_finite_differences():
    x = (np.random.default_rng(4).standard_normal((5, 12)) * 2).astype(np.float32)
    gradcheck.check(make(12, 0.25), [x], labels=np.array([0, 11, 5, 5, 7]))


def test_bad_values_are_config_errors():
    for bad in (-0.1, 1.5, "some"):
        with pytest.raises(ConfigError) as info:
            engine.load("input: {shape: [1, 2, 2]}\nlayers:\n"
                        f"  - {{name: p, type: softmax, label_smoothing: {bad}}}\n")
        assert info.value.key == "label_smoothing" and info.value.layer == "p"
    with pytest.raises(ConfigError) as info:
        settings.resolve({"label_smoothing": 2})
    assert info.value.key == "label_smoothing"


def test_train_setting_reaches_the_cost_of_a_net_and_matches_torch():
    spec = engine.config.parse_net(LENET)
    s = settings.resolve(dict(spec.train, label_smoothing=0.1))
    settings.apply_cost_settings(spec, s)
    net = engine.net.Net(spec, seed=0)
    assert net.layers[-1].layer.label_smoothing == 0.1
    x = np.random.default_rng(5).standard_normal((6, 1, 28, 28)).astype(np.float32)
    labels = np.array([0, 3, 9, 3, 1, 7])
    loss, _ = net.gradients(x, labels)
    logits = net.forward(x, outputs=["fc5"])["fc5"]
    assert loss == pytest.approx(torch_xent(logits.astype(np.float64), labels, 0.1)[0], rel=1e-5)
    plain = settings.resolve(spec.train)            # not given: the layers keep their own (0)
    spec2 = engine.config.parse_net(LENET)
    settings.apply_cost_settings(spec2, plain)
    assert spec2.layers[-1].cfg["label_smoothing"] == 0.0


def test_a_cost_that_cannot_smooth_is_refused(tmp_path, capsys):
    path = tmp_path / "sum2.yaml"
    path.write_text(SUM2_NET)
    with pytest.raises(ConfigError) as info:
        Trainer(str(path), log=lambda *_: None, out=str(tmp_path / "run"))
    e = info.value
    assert e.key == "label_smoothing" and e.line == 6 and e.file == str(path)
    assert "'cost' (sum2) cannot take label_smoothing" in str(e)
    rc, out, err = cli(capsys, "check", path)
    assert rc == 2 and "cannot take label_smoothing" in err
    rc, out, err = cli(capsys, "check", path, "--set", "train.label_smoothing=null")
    assert rc == 0


def test_validation_is_unaffected(tmp_path):
    smoothed = Trainer(LENET, out=str(tmp_path / "a"), log=lambda *_: None, overrides=["train.label_smoothing=0.2"])
    plain = Trainer(LENET, out=str(tmp_path / "b"), log=lambda *_: None)
    assert smoothed.net.layers[-1].layer.label_smoothing == 0.2
    assert plain.net.layers[-1].layer.label_smoothing == 0.0
    a = evaluate(smoothed.net, smoothed.source, smoothed.pre, batch=200)
    b = evaluate(plain.net, plain.source, plain.pre, batch=200)
    assert a == b            # the same weights (seed), the same unsmoothed val loss and errors
