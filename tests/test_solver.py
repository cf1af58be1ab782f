"""SGD with momentum and weight decay, learning-rate schedules, train settings."""
import math

import numpy as np
import pytest

import engine
from engine import settings
from engine.errors import ConfigError
from engine.solver import SGD, Schedule


def test_sgd_matches_the_paper_rule():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(1000).astype(np.float32)
    params = {"a.weight": w0.copy(), "a.bias": w0[:10].copy()}
    sgd = SGD(params, momentum=0.9, weight_decay=0.0005,
              multipliers={"a.weight": (2.0, 1.0), "a.bias": (1.0, 0.0)})
    w, v = w0.astype(np.float64), np.zeros(1000)
    b, vb = w0[:10].astype(np.float64), np.zeros(10)
    for step in range(3):
        g = rng.standard_normal(1000).astype(np.float32)
        sgd.step({"a.weight": g, "a.bias": g[:10]}, lr=0.01)
        eps = 0.01 * 2.0
        v = 0.9 * v - 0.0005 * eps * w - eps * g
        w = w + v
        vb = 0.9 * vb - 0.01 * g[:10]           # biases: no weight decay
        b = b + vb
    np.testing.assert_allclose(params["a.weight"], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params["a.bias"], b, rtol=1e-5, atol=1e-6)


def test_frozen_layer_does_not_move():
    params = {"a.weight": np.ones(5, np.float32)}
    sgd = SGD(params, multipliers={"a.weight": (0.0, 1.0)})
    sgd.step({"a.weight": np.ones(5, np.float32)}, lr=1.0)
    assert np.all(params["a.weight"] == 1)


def test_per_layer_multipliers_from_the_net_file():
    net = engine.load("""
input: {shape: [1, 4, 4]}
layers:
  - {name: fc1, type: fc, outputs: 3, lr_w: 0.5, lr_b: 2, wd: 0}
  - {name: prob, type: softmax}
""")
    sgd = SGD.for_net(net)
    assert sgd.multipliers == {"fc1.weight": (0.5, 0.0), "fc1.bias": (2.0, 0.0)}


def test_step_schedule():
    s = Schedule(0.01, "step", epochs=[2, 4], total_epochs=6)
    assert [s.lr(e) for e in range(6)] == pytest.approx([0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4])


def test_exp_and_dexp_schedules():
    e = Schedule(1.0, "exp", factor=100, total_epochs=10)
    assert e.lr(0) == 1.0 and e.lr(5) == pytest.approx(0.1)
    d = Schedule(1.0, "dexp", factor=1000, steps=4, total_epochs=8)
    # four levels 1, 1/10, 1/100, 1/1000, switching at 25%, 50%, 75% of training
    assert [d.lr(ep) for ep in range(8)] == pytest.approx([1, 1, .1, .1, .01, .01, .001, .001])
    assert d.lr(1, 0.99) == 1.0 and d.lr(7, 0.99) == pytest.approx(0.001)


def test_linear_schedule_runs_from_lr_to_lr_over_factor():
    s = Schedule(1.0, "linear", factor=10, total_epochs=10)
    assert [s.lr(e) for e in (0, 5)] == pytest.approx([1.0, 0.55])
    assert s.lr(9, 0.999999) == pytest.approx(0.1, rel=1e-5)


def test_plateau_schedule_divides_by_ten_when_stuck():
    s = Schedule(0.1, "plateau", patience=2, total_epochs=20)
    for err in [0.5, 0.4, 0.3]:
        s.observe(err)
    assert s.lr(3) == 0.1
    s.observe(0.3)
    assert s.lr(4) == 0.1          # one bad epoch: patience not yet used up
    s.observe(0.31)
    assert s.lr(5) == pytest.approx(0.01)
    state = s.state()
    t = Schedule(0.1, "plateau", patience=2, total_epochs=20)
    t.load_state(state)
    assert t.lr(5) == pytest.approx(0.01) and t.best == pytest.approx(0.3)


def test_settings_defaults_file_and_flags():
    s = settings.resolve({"epochs": 3, "lr": 0.1, "schedule": "constant"}, {"lr": 0.5, "batch": None})
    assert (s["epochs"], s["lr"], s["batch"], s["momentum"]) == (3, 0.5, 128, 0.9)
    assert s["schedule"] == {"type": "constant"}


@pytest.mark.parametrize("train, key", [
    ({"epoch": 3}, "epoch"),
    ({"lr": -1.0}, "lr"),
    ({"batch": "big"}, "batch"),
    ({"schedule": {"type": "cosin"}}, "type"),
    ({"schedule": {"type": "step"}}, "schedule.epochs"),
    ({"augment": {"flip": "yes"}}, "flip"),
])
def test_bad_train_settings(train, key):
    with pytest.raises(ConfigError) as info:
        settings.resolve(train)
    assert info.value.key == key


def test_bad_train_section_in_a_file_names_the_line(tmp_path):
    path = tmp_path / "n.yaml"
    path.write_text("input: {shape: [1, 4, 4]}\nlayers:\n  - {name: p, type: softmax}\n"
                    "train:\n  epochs: 2\n  lrr: 0.1\n")
    spec = engine.config.parse_net(str(path))
    with pytest.raises(ConfigError) as info:
        settings.resolve(spec.train, file=spec.file)
    assert info.value.line == 6 and "did you mean 'lr'" in str(info.value)
    assert math.isfinite(settings.resolve({})["lr"])
