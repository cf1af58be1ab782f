"""Optimizers (nesterov, adam, adamw) and gradient-norm clipping against torch.optim and
torch.nn.utils.clip_grad_norm_, their state in checkpoints, and their train settings."""
import importlib.util
import os

import numpy as np
import pytest

import engine
from engine import settings
from engine.errors import ConfigError
from engine.solver import CHUNK, SGD, Adam, AdamW, Nesterov
from engine.train import Trainer
from helpers import cli

torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, "nets", "lenet5.yaml")
LR, WD, STEPS = 0.01, 0.01, 6
# weights with lr x2 and wd x0.5 (lr_w, wd), biases with lr x3 and no weight decay (lr_b)
MULT = {"a.weight": (2.0, 0.5), "a.bias": (3.0, 0.0)}


def quiet(*_):
    pass


def problem(seed=0, n=2000):
    rng = np.random.default_rng(seed)
    params = {"a.weight": rng.standard_normal(n).astype(np.float32),
              "a.bias": rng.standard_normal(7).astype(np.float32)}
    grads = [{k: (rng.standard_normal(v.shape) * 0.5).astype(np.float32) for k, v in params.items()}
             for _ in range(STEPS)]
    return params, grads


def torch_run(params, grads, make, clip=None):
    """The same steps with torch.optim: one param group per multiplier pair, as ours."""
    tp = {k: torch.nn.Parameter(torch.tensor(v.copy())) for k, v in params.items()}
    groups = [{"params": [tp[k]], "lr": LR * MULT[k][0], "weight_decay": WD * MULT[k][1]} for k in tp]
    opt = make(groups)
    norms = []
    for g in grads:
        for k, p in tp.items():
            p.grad = torch.tensor(g[k].copy())
        if clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(list(tp.values()), clip)))
        opt.step()
    return {k: p.detach().numpy() for k, p in tp.items()}, opt, norms


def ours(cls, params, grads, **kw):
    params = {k: v.copy() for k, v in params.items()}
    opt = cls(params, weight_decay=WD, multipliers=dict(MULT), **kw)
    for g in grads:
        opt.step({k: v.copy() for k, v in g.items()}, lr=LR)
    return params, opt


CASES = {
    "nesterov": (Nesterov, dict(momentum=0.9), lambda g: torch.optim.SGD(g, momentum=0.9, nesterov=True)),
    "adam": (Adam, dict(betas=(0.9, 0.999), eps=1e-8), lambda g: torch.optim.Adam(g, betas=(0.9, 0.999), eps=1e-8)),
    "adamw": (AdamW, dict(betas=(0.8, 0.99), eps=1e-6), lambda g: torch.optim.AdamW(g, betas=(0.8, 0.99), eps=1e-6)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_steps_match_torch_optim(name):
    cls, kw, make = CASES[name]
    params, grads = problem()
    got, _ = ours(cls, params, grads, **kw)
    want, _, _ = torch_run(params, grads, make)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=2e-6)
        assert not np.array_equal(got[k], params[k])


def test_adam_state_matches_torch_state():
    params, grads = problem(1)
    _, opt = ours(Adam, params, grads)
    _, topt, _ = torch_run(params, grads, lambda g: torch.optim.Adam(g))
    state = opt.state_arrays()
    assert state["adam/step"][0] == STEPS
    for i, k in enumerate(params):
        ts = topt.state[topt.param_groups[i]["params"][0]]
        assert int(ts["step"]) == STEPS
        np.testing.assert_allclose(state[f"exp_avg/{k}"], ts["exp_avg"].numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(state[f"exp_avg_sq/{k}"], ts["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-9)


def test_nesterov_with_a_changing_lr_follows_the_documented_rule():
    params, grads = problem(2, n=50)
    opt = Nesterov({k: v.copy() for k, v in params.items()}, momentum=0.9, weight_decay=WD, multipliers=dict(MULT))
    w = {k: v.astype(np.float64) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    for i, g in enumerate(grads):
        lr = 0.05 / (i + 1)
        opt.step(g, lr)
        for k in w:
            lr_e, wd_e = lr * MULT[k][0], WD * MULT[k][1]
            step = lr_e * (g[k] + wd_e * w[k])
            v[k] = 0.9 * v[k] - step
            w[k] = w[k] + 0.9 * v[k] - step
    for k in w:
        np.testing.assert_allclose(opt.params[k], w[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES) + ["sgd"])
def test_clip_norm_matches_clip_grad_norm(name):
    """A clip below the gradients' norm (every step clipped) and over several chunks."""
    params, grads = problem(3, n=2 * CHUNK + 5)
    if name == "sgd":
        cls, kw = SGD, dict(momentum=0.9)
        # torch.optim.SGD is not cuda-convnet's rule; the clipping is what is tested here
        make = None
    else:
        cls, kw, make = CASES[name]
    got, opt = ours(cls, params, grads, clip_norm=1.5, **kw)
    if make is not None:
        want, _, norms = torch_run(params, grads, make, clip=1.5)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=2e-6)
        assert opt.take_grad_norm() == pytest.approx(np.mean(norms), rel=1e-5)
    # the pre-clip norms, and the gradients scaled in place as clip_grad_norm_ scales them
    g = {k: v.copy() for k, v in grads[0].items()}
    tp = [torch.nn.Parameter(torch.zeros(v.shape)) for v in g.values()]
    for p, v in zip(tp, g.values()):
        p.grad = torch.tensor(v.copy())
    norm = float(torch.nn.utils.clip_grad_norm_(tp, 1.5))
    assert opt.clip(g, list(g)) == pytest.approx(norm, rel=1e-6)
    for k, p in zip(g, tp):
        np.testing.assert_allclose(g[k], p.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_clip_leaves_small_gradients_alone_and_skips_frozen_layers():
    params, grads = problem(4)
    g = {k: v.copy() for k, v in grads[0].items()}
    opt = SGD(params, multipliers={"a.weight": (1.0, 1.0), "a.bias": (0.0, 0.0)}, clip_norm=1e6)
    norm = opt.clip(g, opt.moving())
    assert opt.moving() == ["a.weight"]
    assert norm == pytest.approx(np.linalg.norm(grads[0]["a.weight"].astype(np.float64)), rel=1e-6)
    assert all(np.array_equal(g[k], grads[0][k]) for k in g)       # not even multiplied by 1
    assert opt.take_grad_norm() == pytest.approx(norm) and opt.take_grad_norm() is None   # a new tally
    assert SGD(params).take_grad_norm() is None                     # no clip_norm: nothing to tell


def test_adam_state_round_trip_continues_bit_exactly():
    params, grads = problem(5)
    whole, _ = ours(AdamW, params, grads, clip_norm=2.0)
    first = {k: v.copy() for k, v in params.items()}
    a = AdamW(first, weight_decay=WD, multipliers=dict(MULT), clip_norm=2.0)
    for g in grads[:3]:
        a.step({k: v.copy() for k, v in g.items()}, LR)
    saved = {k: np.array(v) for k, v in a.state_arrays().items()}
    second = {k: v.copy() for k, v in first.items()}
    b = AdamW(second, weight_decay=WD, multipliers=dict(MULT), clip_norm=2.0)
    b.load_state_arrays(saved)
    assert b.t == 3
    for g in grads[3:]:
        b.step({k: v.copy() for k, v in g.items()}, LR)
    assert all(np.array_equal(second[k], whole[k]) for k in whole)


def test_state_of_another_optimizer_is_refused_with_the_reason():
    params, _ = problem(6, n=10)
    sgd_state = SGD(params).state_arrays()
    with pytest.raises(ValueError, match="another optimizer"):
        Adam(params).load_state_arrays(sgd_state)


# ---- settings, the CLI, training ----------------------------------------------------------
@pytest.mark.parametrize("train, key, words", [
    ({"optimizer": "adan"}, "optimizer", "did you mean 'adam'"),
    ({"optimizer": "nesterow"}, "optimizer", "did you mean 'nesterov'"),
    ({"betas": [0.9]}, "betas", "two numbers"),
    ({"betas": [0.9, 1.0]}, "betas", "two numbers"),
    ({"eps": 0}, "eps", "> 0"),
    ({"clip_norm": 0}, "clip_norm", "> 0"),
    ({"clip_norm": "big"}, "clip_norm", "number"),
])
def test_bad_optimizer_settings(train, key, words):
    with pytest.raises(ConfigError) as info:
        settings.resolve(train)
    assert info.value.key == key and words in str(info.value)


def test_defaults_keep_cuda_convnets_sgd():
    s = settings.resolve({})
    assert (s["optimizer"], s["betas"], s["eps"], s["clip_norm"]) == ("sgd", [0.9, 0.999], 1e-8, None)
    net = engine.load(LENET)
    opt = settings.make_optimizer(s, net)
    assert type(opt) is SGD and (opt.momentum, opt.weight_decay, opt.clip_norm) == (0.9, 0.0005, None)
    adam = settings.make_optimizer(settings.resolve({"optimizer": "adamw", "betas": [0.8, 0.9], "eps": 1e-6,
                                                     "weight_decay": 0.05, "clip_norm": 3}), net)
    assert type(adam) is AdamW and (adam.beta1, adam.beta2, adam.eps, adam.weight_decay, adam.clip_norm) == \
        (0.8, 0.9, 1e-6, 0.05, 3.0)


def test_check_verb_suggests_the_optimizer(capsys, tmp_path):
    rc, out, err = cli(capsys, "check", LENET, "--set", "train.optimizer=adamm")
    assert rc == 2 and "optimizer" in err and "did you mean 'adam'" in err
    rc, out, err = cli(capsys, "check", LENET, "--set", "train.optimizer=nesterov", "--set", "train.clip_norm=5")
    assert rc == 0 and "OK" in out


SMALL = dict(epochs=2, batch=128, lr=0.002)


def weights(run_dir):
    return engine.load(None, checkpoint=str(run_dir)).state_dict()


def test_adam_resume_after_a_stop_mid_epoch_is_bit_exact(tmp_path):
    """AdamW with clipping: the moments, the step count and the epoch's norm tally are saved."""
    sets = ["train.optimizer=adamw", "train.clip_norm=0.5"]
    full = Trainer(LENET, out=str(tmp_path / "full"), log=quiet, overrides=sets, **SMALL).run()
    stopped = Trainer(LENET, out=str(tmp_path / "split"), log=quiet, stop_after=40, overrides=sets, **SMALL).run()
    assert stopped["stopped"]
    resumed = Trainer(None, resume=str(tmp_path / "split"), log=quiet).run()
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("time", "images_per_s")} for m in ms]  # noqa: E731
    assert strip(resumed["metrics"]) == strip(full["metrics"])
    assert all("grad_norm" in m and m["grad_norm"] > 0 for m in full["metrics"])
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_adam_resume_after_an_epoch_is_bit_exact_and_the_line_shows_the_norm(tmp_path):
    lines = []
    full = Trainer(LENET, out=str(tmp_path / "full"), log=quiet, optimizer="adam",
                   overrides=["train.clip_norm=0.5"], **SMALL).run()
    Trainer(LENET, out=str(tmp_path / "split"), log=lines.append, optimizer="adam",
            overrides=["train.clip_norm=0.5"], **dict(SMALL, epochs=1)).run()
    assert any(line.startswith("epoch   1") and "grad norm" in line for line in lines)
    resumed = Trainer(None, resume=str(tmp_path / "split"), epochs=2, log=quiet).run()
    assert resumed["metrics"][-1]["train_loss"] == full["metrics"][-1]["train_loss"]
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or importlib.util.find_spec("numba_cuda") is None,
                    reason="PTX checks need numba-cuda (pip install -e '.[gpu]') and no simulator")
@pytest.mark.parametrize("index", range(5))
def test_update_kernels_compile_for_sm90(index):
    from numba import cuda

    from engine import solver_cuda
    kernel, sig = solver_cuda.KERNELS[index]
    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
    assert ".f64" not in ptx, "float64 arithmetic in a float32 kernel"
