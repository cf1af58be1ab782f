"""The cosine learning-rate schedule with linear warm-up: the formula, torch's
CosineAnnealingLR, and its settings."""
import math

import pytest

from engine import settings
from engine.errors import ConfigError
from engine.solver import Schedule


def formula(t, lr, total, warmup=0.0, start=0.0, min_lr=0.0):
    if t < warmup:
        return lr * (start + (1 - start) * t / warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


@pytest.mark.parametrize("warmup, start, min_lr", [(0.0, 0.0, 0.0), (1.5, 0.0, 0.0), (2.0, 0.1, 1e-4),
                                                   (0.25, 0.5, 0.02)])
def test_cosine_follows_the_formula_per_batch(warmup, start, min_lr):
    s = Schedule(0.1, "cosine", total_epochs=10, warmup_epochs=warmup, warmup_start=start, min_lr=min_lr)
    for epoch in range(10):
        for fraction in (0.0, 0.25, 0.5, 0.999):
            t = epoch + fraction
            assert s.lr(epoch, fraction) == pytest.approx(formula(t, 0.1, 10, warmup, start, min_lr), rel=1e-12,
                                                          abs=1e-15)


def test_warm_up_runs_from_zero_to_lr_then_down_to_min_lr():
    s = Schedule(0.2, "cosine", total_epochs=8, warmup_epochs=2, min_lr=0.01)
    assert s.lr(0, 0.0) == 0.0
    assert s.lr(1, 0.0) == pytest.approx(0.1)                  # half-way up
    assert s.lr(2, 0.0) == pytest.approx(0.2)                  # the top, where the cosine starts
    assert s.lr(5, 0.0) == pytest.approx(0.105)                # half-way down: (0.2 + 0.01) / 2
    assert s.lr(7, 1.0) == pytest.approx(0.01)                 # the end of the last epoch
    lrs = [s.lr(e, f) for e in range(2, 8) for f in (0.0, 0.5)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))            # strictly decreasing after the warm-up
    assert Schedule(0.2, "cosine", total_epochs=8, warmup_epochs=2, warmup_start=0.25).lr(0) == pytest.approx(0.05)


@pytest.mark.parametrize("eta_min", [0.0, 0.003])
def test_without_warm_up_equals_torch_cosine_annealing(eta_min):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    epochs = 12
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=eta_min)
    ours = Schedule(0.05, "cosine", total_epochs=epochs, min_lr=eta_min)
    for epoch in range(epochs):
        assert ours.lr(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        opt.step()
        sched.step()


def test_settings_build_the_cosine_schedule():
    s = settings.resolve({"epochs": 10, "lr": 0.1, "schedule": {"type": "cosine", "warmup_epochs": 0.5,
                                                                "warmup_start": 0.1, "min_lr": 0.001}})
    sched = settings.make_schedule(s)
    assert (sched.kind, sched.warmup_epochs, sched.warmup_start, sched.min_lr) == ("cosine", 0.5, 0.1, 0.001)
    assert sched.lr(0, 0.25) == pytest.approx(formula(0.25, 0.1, 10, 0.5, 0.1, 0.001))
    assert settings.make_schedule(settings.resolve({"schedule": "cosine", "epochs": 4})).lr(2) == pytest.approx(0.005)


@pytest.mark.parametrize("train, key, words", [
    ({"schedule": {"type": "cosin"}}, "type", "did you mean 'cosine'"),
    ({"schedule": {"type": "step", "epochs": [2], "warmup_epochs": 1}}, "schedule.warmup_epochs", "cosine"),
    ({"schedule": {"type": "constant", "min_lr": 0.1}}, "schedule.min_lr", "cosine"),
    ({"epochs": 3, "schedule": {"type": "cosine", "warmup_epochs": 3}}, "schedule.warmup_epochs", "before the last"),
    ({"lr": 0.01, "schedule": {"type": "cosine", "min_lr": 0.1}}, "schedule.min_lr", "above lr"),
    ({"schedule": {"type": "cosine", "warmup_epochs": -1}}, "warmup_epochs", ">= 0"),
    ({"schedule": {"type": "cosine", "warmup_start": 2}}, "warmup_start", "<= 1"),
])
def test_bad_cosine_settings(train, key, words):
    with pytest.raises(ConfigError) as info:
        settings.resolve(train)
    assert info.value.key == key and words in str(info.value)


def test_bad_cosine_setting_in_a_file_names_the_line(tmp_path):
    import engine
    path = tmp_path / "n.yaml"
    path.write_text("input: {shape: [1, 4, 4]}\nlayers:\n  - {name: p, type: softmax}\n"
                    "train:\n  epochs: 2\n  schedule:\n    type: cosine\n    warmup_epochs: 5\n")
    spec = engine.config.parse_net(str(path))
    with pytest.raises(ConfigError) as info:
        settings.resolve(spec.train, file=spec.file)
    assert info.value.line == 8 and info.value.file == str(path)
