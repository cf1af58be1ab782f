"""`python -m engine check-grads`: passes on every shipped net, fails on a broken backward."""
import glob
import os
import re
import time

import numpy as np
import pytest

import engine
from engine.cli import main
from engine.tools import check_grads
from engine.tools.draw import structure
from layers.fc import FCLayer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETS = sorted(glob.glob(os.path.join(ROOT, "nets", "*.yaml")))
LENET = os.path.join(ROOT, "nets", "lenet5.yaml")
IS_RESULT = "  error "     # a tensor's line: "conv1  weight  error 0.0e+00  PASS  (...)"
BIG = 10_000_000      # AlexNet-sized nets: one entry per tensor keeps the check under ~20 s each


def test_every_shipped_net_is_found():
    names = {os.path.basename(p) for p in NETS}
    assert {"lenet5.yaml", "alexnet.yaml", "caffenet.yaml", "alexnet-torchvision.yaml"} <= names


SLOW_NETS = {"alexnet.yaml", "caffenet.yaml", "alexnet-torchvision.yaml"}    # 1-3 minutes each
SLOW_NETS |= {f"{n}.yaml" for n in ("resnet18", "resnet34", "vgg16", "vgg19", "resnet-digits")}
# googlenet's whole check takes ~30 s on two Zen 4 cores (`python -m engine check-grads
# nets/googlenet.yaml --samples 1 --set input.shape=[3,32,32]`: ALL 187 TESTS PASSED); its test
# below checks the branch that holds its hardest tensor, with the same settings
GOOGLENET = os.path.join(ROOT, "nets", "googlenet.yaml")
# the deep nets at their smallest inputs (at 224x224 each takes ~30 min; googlenet's unpadded
# pools need 32x32); check-grads takes a batch of 8 where a batchnorm's statistics would see
# fewer than 8 values (check_grads.batch_for)
SMALL_INPUT = {"resnet18.yaml": [3, 16, 16], "resnet34.yaml": [3, 16, 16], "googlenet.yaml": [3, 32, 32],
               "vgg16.yaml": [3, 32, 32], "vgg19.yaml": [3, 32, 32]}


@pytest.mark.parametrize("path", [pytest.param(p, marks=[pytest.mark.slow] if os.path.basename(p) in SLOW_NETS else [])
                                  for p in NETS if p != GOOGLENET],
                         ids=[os.path.basename(p) for p in NETS if p != GOOGLENET])
def test_check_grads_passes_on_shipped_net(path, capsys):
    samples = 1 if structure(path).num_params > BIG else 2
    small = SMALL_INPUT.get(os.path.basename(path))
    shape = ["--set", f"input.shape={small}"] if small else []
    t0 = time.time()
    status = main(["check-grads", path, "--samples", str(samples)] + shape)
    took = time.time() - t0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if IS_RESULT in ln]
    assert status == 0, out
    assert all(" PASS " in ln for ln in lines), out
    assert f"ALL {len(lines)} TESTS PASSED" in out
    errors = [float(ln.split(IS_RESULT)[1].split()[0]) for ln in lines]
    print(f"{os.path.basename(path)}: {len(lines)} tensors, worst relative error {max(errors):.2g}, "
          f"{took:.1f}s")


@pytest.mark.slow
def test_check_grads_passes_on_googlenets_hardest_tensor():
    # as the CLI at the settings above; with samples 1 each tensor's entry is its largest gradient
    # whichever layers are checked. inception4a.branch4.1.bn's scale 25 is drawn at -5.3e-4: the
    # channel's every ReLU crosses zero within one step of its bias: the fits' slopes over +-h/2,
    # h/4, h/8 are two thirds, seven eighths and 0.97 of its derivative (0.2725, float64
    # autograd's too), which check_grads.resolved measures at h/64 (the kinks ~5e-5 apart)
    samples = 1 if structure(GOOGLENET).num_params > BIG else 2
    net = engine.load(GOOGLENET, seed=0, overrides={"input.shape": SMALL_INPUT["googlenet.yaml"]})
    check_grads.rescale_weights(net, 0)
    t0 = time.time()
    results = check_grads.check_net(net, samples=samples, layers={n.name for n in net.layers
                                                                    if n.name.startswith("inception4a.branch4.")})
    failed = [f"{r['layer']}.{r['param']} {r['error']:.2g}" for r in results if not r["passed"]]
    assert len(results) == 3 and not failed, failed
    bias = next(r for r in results if (r["layer"], r["param"]) == ("inception4a.branch4.1.bn", "bias"))
    # resolved: within 5% of the derivative, the measurement's own uncertainty (relative, from the
    # float32 forward's rounding) about check_grads.RESOLUTION
    numeric, analytic = bias["numeric"][0], bias["analytic"][0]
    assert bias["entries"] == 1 and abs(numeric / analytic - 1) < 0.05
    assert bias["uncertainty"] <= 1.5 * check_grads.RESOLUTION
    print(f"googlenet inception4a.branch4: {len(results)} tensors, {time.time() - t0:.1f}s")


class Ramp:
    """An evaluator whose cost, 1 + amplitude tanh(w / width), changes within a third of the
    step check_grads takes for its gradient amplitude / width (as the cost along the bias of a
    channel whose ReLUs all cross zero within the step)."""

    def __init__(self, array, amplitude, width):
        self.array, self.amplitude, self.width = array, amplitude, width
        self.base = self.cost("ramp")

    def cost(self, layer):
        return 1.0 + self.amplitude * np.tanh(float(self.array[0]) / self.width)


# resolved at h/16 by fits of 17-45 points (the 25%-wrong gradient, a larger one, at its h/8): it fails
@pytest.mark.parametrize("wrong, passes", [(1.0, True), (1.25, False)])
def test_a_derivative_varying_within_the_step_is_measured_where_resolved(wrong, passes):
    array = np.zeros(1, np.float32)
    ramp = Ramp(array, amplitude=1e-5, width=1e-3)
    true = ramp.amplitude / ramp.width                      # d/dw of the cost at w = 0
    step = check_grads.step_for(np.array([true]), ramp.base)
    assert step > 2.5 * ramp.width
    # at the tensor's step the central difference is a third of the derivative, no scatter of slopes says so
    numeric, uncertainty = check_grads.measure(ramp, "ramp", array, (0,), step)
    assert numeric < 0.4 * true and abs(numeric - true) > uncertainty + 0.02 * true
    r = check_grads.check_tensor(ramp, "ramp", array, np.array([true * wrong], np.float32), 0,
                                 np.random.default_rng(0))
    assert r["passed"] == passes and r["entries"] == 1, r
    # measured where it is resolved, to the resolution the fits are sized for
    assert abs(r["numeric"][0] / true - 1) < check_grads.RESOLUTION
    assert array[0] == 0


class Kinks(Ramp):
    """googlenet's hardest entry in miniature: a channel whose ReLUs all cross zero within the
    step (the Ramp: cost 14, slope 0.27 at w = 0 over a width of 2e-4, against a step of 1.5e-3),
    40 kinks of slope +-0.03 spaced 5e-5 on it (the nearest 2.5e-5 from w, their slopes below w
    summing to 0), and the float32 cost's rounding: half a unit of it, pseudo-random, drawn from
    w's bits."""
    KINKS = 2.5e-5 + 5e-5 * np.arange(-20, 20)
    SLOPES = 0.03 * (-1.0) ** np.arange(40)

    def cost(self, layer):
        w = np.float32(self.array[0])
        jitter = np.random.default_rng(int(w.view(np.uint32))).standard_normal()
        return 13.0 + super().cost(layer) + float(np.sum(self.SLOPES * np.maximum(0.0, float(w) - self.KINKS))) \
            + 0.5 * np.finfo(np.float32).eps * 14.0 * jitter


# the fits' slopes over +-h/2 .. +-h/16 are 0.4, 0.65, 0.9, 1.0 of the derivative: resolved at
# h/32 (177 evaluations) to 3%, and a gradient 10% off fails there
@pytest.mark.parametrize("wrong, passes", [(1.0, True), (1.1, False)])
def test_kinks_and_rounding_within_the_step_are_resolved(wrong, passes):
    array = np.zeros(1, np.float32)
    kinks = Kinks(array, amplitude=5.4e-5, width=2e-4)
    true = kinks.amplitude / kinks.width
    r = check_grads.check_tensor(kinks, "kinks", array, np.array([true * wrong], np.float32), 0,
                                 np.random.default_rng(0))
    assert r["passed"] == passes and r["entries"] == 1, r
    assert abs(r["numeric"][0] / true - 1) < check_grads.RESOLUTION
    if passes:
        assert r["uncertainty"] <= 1.5 * check_grads.RESOLUTION
    assert array[0] == 0


def test_one_line_per_parameter_tensor(capsys):
    assert main(["check-grads", LENET, "--samples", "2"]) == 0
    lines = [ln.split() for ln in capsys.readouterr().out.splitlines() if IS_RESULT in ln]
    net = engine.load(LENET)
    assert [(ln[0], ln[1]) for ln in lines] == [tuple(k.split(".")) for k in net.state_dict()]


def test_a_wrong_weight_gradient_fails_on_its_layer(monkeypatch, capsys):
    real = FCLayer.backward

    def off_by_ten_percent(self, dy, params, need_dx=True):
        dx, grads = real(self, dy, params, need_dx)
        if self.name == "fc4":
            grads = dict(grads, weight=grads["weight"] * np.float32(1.1))
        return dx, grads
    monkeypatch.setattr(FCLayer, "backward", off_by_ten_percent)
    assert main(["check-grads", LENET, "--samples", "4"]) == 1
    out = capsys.readouterr().out
    verdicts = {tuple(ln.split()[:2]): ln.split()[4] for ln in out.splitlines() if IS_RESULT in ln}
    assert verdicts.pop(("fc4", "weight")) == "FAIL", out
    assert set(verdicts.values()) == {"PASS"}, out
    assert "1/10 TESTS FAILED" in out and "fc4.weight" in out


TINY_BN = """
name: tinybn
input: {shape: [2, 6, 6]}
layers:
  - {name: conv, type: conv, filters: 3, size: 3, bias: false}
  - {name: bn, type: batchnorm, neuron: relu}
  - {name: fc, type: fc, outputs: 3}
  - {name: prob, type: softmax}
"""


@pytest.mark.parametrize("wrong, fails", [("weight", "bn.weight"), ("statistics", "conv.weight")])
def test_a_wrong_batchnorm_backward_fails(wrong, fails, tmp_path, monkeypatch, capsys):
    from layers.batchnorm import BatchNormLayer
    real = BatchNormLayer.backward

    def broken(self, dy, params, need_dx=True):
        if wrong == "statistics":          # dx as if the batch's mean and variance were constants
            self._train = False
        dx, grads = real(self, dy, params, need_dx)
        if wrong == "weight":
            grads = dict(grads, weight=grads["weight"] * np.float32(1.1))
        return dx, grads
    monkeypatch.setattr(BatchNormLayer, "backward", broken)
    path = tmp_path / "tinybn.yaml"
    path.write_text(TINY_BN)
    assert main(["check-grads", str(path), "--samples", "4"]) == 1
    out = capsys.readouterr().out
    verdicts = {".".join(ln.split()[:2]): ln.split()[4] for ln in out.splitlines() if IS_RESULT in ln}
    assert verdicts.pop(fails) == "FAIL", out
    assert set(verdicts.values()) == {"PASS"}, out


RESNET_DIGITS = os.path.join(ROOT, "nets", "resnet-digits.yaml")


def test_a_batchnorm_weight_gradient_5_percent_off_fails_deep_in_resnet_digits(monkeypatch):
    # deep in the BN stack, where ReLU crossings make the cost rough at the step's scale
    from layers.batchnorm import BatchNormLayer
    real = BatchNormLayer.backward

    def off_by_five_percent(self, dy, params, need_dx=True):
        dx, grads = real(self, dy, params, need_dx)
        if self.name == "layer3.0.bn1":
            grads = dict(grads, weight=grads["weight"] * np.float32(1.05))
        return dx, grads
    monkeypatch.setattr(BatchNormLayer, "backward", off_by_five_percent)
    net = engine.load(RESNET_DIGITS)
    check_grads.rescale_weights(net)
    results = check_grads.check_net(net, samples=2, layers={"layer3.0.bn1", "layer3.0.conv2"})
    verdicts = {f"{r['layer']}.{r['param']}": r["passed"] for r in results}
    assert verdicts == {"layer3.0.bn1.weight": False, "layer3.0.bn1.bias": True, "layer3.0.conv2.weight": True}
    wrong = results[0]
    # the numeric derivatives are ~5% below the analytic ones, beyond their measured uncertainty
    ratio = wrong["numeric"][wrong["measurable"]] / wrong["analytic"][wrong["measurable"]]
    assert len(ratio) == 2 and np.all(np.abs(ratio * 1.05 - 1) < 0.03), wrong


def test_a_tensor_without_measurable_entries_fails(tmp_path, capsys):
    # a conv bias right before a batchnorm: the batch mean removes it, its true gradient is 0 and
    # every entry's uncertainty (rounding) exceeds both gradients: reported, not passed
    path = tmp_path / "tinybn.yaml"
    path.write_text(TINY_BN.replace("bias: false", "bias: true"))
    assert main(["check-grads", str(path), "--samples", "4"]) == 1
    out = capsys.readouterr().out
    verdicts = {".".join(ln.split()[:2]): ln.split()[4] for ln in out.splitlines() if IS_RESULT in ln}
    assert verdicts.pop("conv.bias") == "FAIL", out
    assert set(verdicts.values()) == {"PASS"}, out
    assert "(0 entries of 3 wanted: too few measurable" in out


def test_a_batch_large_enough_for_batch_statistics():
    # resnet18's layer4 is 1x1 at 16x16: a batch of 2 would give each channel 2 values
    net = engine.load(os.path.join(ROOT, "nets", "resnet18.yaml"), overrides={"input.shape": [3, 16, 16]})
    assert check_grads.batch_for(net) == 8
    assert check_grads.batch_for(engine.load(LENET)) == 2


def test_dropout_masks_are_the_ones_the_backward_used():
    # one lane, as the replay runs: the column threads' one-thread BLAS rounds differently
    net = engine.load(os.path.join(ROOT, "nets", "alexnet-digits.yaml"), threading="layers")
    x = np.random.default_rng(1).standard_normal((2, 1, 28, 28), dtype=np.float32)
    state = net.rng.bit_generator.state
    loss, _ = net.gradients(x, [3, 5], train=True)
    replay = check_grads.PerturbedForward(net, x, np.array([3, 5]), state)
    assert replay.base == loss                         # same masks, same arithmetic
    assert replay.cost("fc8") == loss                  # a replay from a layer changes nothing
    net.rng.bit_generator.state = state
    other = np.random.default_rng(99).bit_generator.state
    assert check_grads.PerturbedForward(net, x, np.array([3, 5]), other).base != loss


def test_checks_every_entry_with_samples_0(tmp_path, capsys):
    net_text = """
name: tiny
input: {shape: [1, 6, 6]}
layers:
  - {name: conv, type: conv, filters: 2, size: 3, neuron: tanh, init_w: 0.5}
  - {name: fc, type: fc, outputs: 3, init_w: 0.5}
  - {name: prob, type: softmax}
"""
    path = tmp_path / "tiny.yaml"
    path.write_text(net_text)
    assert main(["check-grads", str(path), "--samples", "0", "--file-init"]) == 0
    out = capsys.readouterr().out
    # measurable entries plus those left out (a gradient below the cost's float32 resolution)
    entries = {tuple(ln.split()[:2]): sum(int(n) for n in re.findall(r"(\d+) (?:entr|unmeasurable)", ln))
               for ln in out.splitlines() if IS_RESULT in ln}
    assert entries == {("conv", "weight"): 18, ("conv", "bias"): 2, ("fc", "weight"): 96, ("fc", "bias"): 3}
    assert "every entry" in out and "the net file's init" in out


def test_a_bad_net_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ninput: {shape: [1, 8, 8]}\nlayers:\n  - {name: c, type: conv, filters: 2}\n")
    assert main(["check-grads", str(bad)]) == 2
    assert "size" in capsys.readouterr().err


def test_a_net_without_a_cost_layer_exits_2(tmp_path, capsys):
    net = tmp_path / "nocost.yaml"
    net.write_text("name: nocost\ninput: {shape: [1, 4, 4]}\nlayers:\n  - {name: f, type: fc, outputs: 2}\n")
    assert main(["check-grads", str(net)]) == 2
    assert "not a cost layer" in capsys.readouterr().err


def test_at_a_checkpoints_weights(tmp_path, capsys):
    from engine.train import Trainer
    out = tmp_path / "run"
    Trainer(LENET, out=str(out), stop_after=3, log=lambda *a: None).run()     # three SGD steps
    assert main(["check-grads", LENET, "--checkpoint", str(out), "--samples", "2"]) == 0
    text = capsys.readouterr().out
    assert f"the weights of {out}" in text and "ALL 10 TESTS PASSED" in text
