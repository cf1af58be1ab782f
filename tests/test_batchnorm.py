"""batchnorm: the kernels against reference.py (training and evaluation, after a conv and after
an fc, fused neurons), finite differences, PyTorch's BatchNorm2d/1d as the oracle (outputs,
gradients, running statistics over several steps), and the layer state in the engine:
state_dict keys, the optimizer never touching it, which passes update it, threading modes,
checkpoints and resume, the CLI."""
import json

import numpy as np
import pytest
from helpers import cli, distinct

import engine
import layers
from engine import gradcheck
from engine.checkpoint import sha256_of
from engine.solver import SGD
from engine.train import Trainer
from layers.batchnorm import reference

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (pip install -e '.[torch]')")

SHAPES = [(3, 5, 7), (6,)]          # after a conv (non-square maps), after an fc
NEURONS = [None, "relu", "tanh[1.7,0.66]", "square", "abs"]


def make(shape, **cfg):
    return layers.get("batchnorm")("bn", cfg, [shape])


def params_for(layer, seed=0, stats=True):
    """Random weight and bias, and running statistics away from their init (mean 0, var 1)."""
    rng = np.random.default_rng(seed)
    c = layer.channels
    p = {"weight": rng.uniform(0.5, 1.5, c).astype(np.float32) * rng.choice([-1, 1], c).astype(np.float32),
         "bias": rng.standard_normal(c).astype(np.float32),
         "running_mean": layer.init_state()["running_mean"], "running_var": layer.init_state()["running_var"]}
    if stats:
        p["running_mean"] = rng.standard_normal(c).astype(np.float32)
        p["running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    return p


def batch(shape, n=4, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n,) + shape) * 2 + 1.5).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("neuron", NEURONS)
@pytest.mark.parametrize("train", [True, False])
def test_kernels_match_reference(shape, neuron, train):
    layer = make(shape, neuron=neuron, eps=1e-3)
    p = params_for(layer)
    x = batch(shape)
    y = layer.forward(x, p, train=train)
    x3 = x.reshape(4, layer.channels, -1).astype(np.float64)
    mean, var = reference.statistics(x3) if train else (p["running_mean"], p["running_var"])
    want, _ = reference.forward(x3, p["weight"], p["bias"], mean, var, 1e-3, neuron)
    np.testing.assert_allclose(y.reshape(want.shape), want, rtol=1e-5, atol=1e-5)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(dy, p)
    dx_r, dw_r, db_r = reference.backward(dy.reshape(want.shape).astype(np.float64), x3, p["weight"], p["bias"],
                                          mean, var, 1e-3, train, neuron)
    np.testing.assert_allclose(dx.reshape(dx_r.shape), dx_r, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["weight"], dw_r, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["bias"], db_r, rtol=1e-4, atol=1e-4)
    assert set(grads) == {"weight", "bias"}       # no gradient for the state


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("neuron", [None, "tanh"])
def test_backward_matches_finite_differences(shape, train, neuron):
    layer = make(shape, neuron=neuron)
    p = params_for(layer, seed=3)
    gradcheck.check(layer, [distinct((3,) + shape, seed=4)], p, train=train)


def test_running_statistics_update_and_need_a_training_forward():
    layer = make((3, 5, 7), momentum=0.3)
    p = params_for(layer)
    x = batch((3, 5, 7))
    state = {"running_mean": p["running_mean"].copy(), "running_var": p["running_var"].copy()}
    layer.forward(x, p, train=False)
    with pytest.raises(RuntimeError, match="training forward"):
        layer.update_state(state)
    layer.forward(x, p, train=True)
    layer.update_state(state)
    x3 = x.reshape(4, 3, -1).astype(np.float64)
    mean, var = reference.statistics(x3)
    want_m, want_v = reference.update_running(p["running_mean"], p["running_var"], mean, var, 0.3, 4 * 35)
    np.testing.assert_allclose(state["running_mean"], want_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["running_var"], want_v, rtol=1e-5, atol=1e-6)


def test_training_on_one_value_per_channel_is_refused():
    layer = make((6,))
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer.forward(batch((6,), n=1), params_for(layer), train=True)
    layer.forward(batch((6,), n=1), params_for(layer), train=False)     # evaluation is fine


# ---- PyTorch as the oracle ----------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("shape", SHAPES)
def test_torch_batchnorm_outputs_gradients_and_running_stats(shape):
    layer = make(shape, eps=1e-4, momentum=0.2)
    p = params_for(layer, stats=False)
    module = (torch.nn.BatchNorm2d if len(shape) == 3 else torch.nn.BatchNorm1d)(shape[0], eps=1e-4, momentum=0.2)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(p["weight"]))
        module.bias.copy_(torch.from_numpy(p["bias"]))
    state = {k: p[k] for k in ("running_mean", "running_var")}
    for step in range(3):
        x = batch(shape, n=5, seed=10 + step)
        dy = np.random.default_rng(step).standard_normal(x.shape).astype(np.float32)
        tx = torch.from_numpy(x).requires_grad_(True)
        module.train()
        ty = module(tx)
        ty.backward(torch.from_numpy(dy))
        y = layer.forward(x, p, train=True)
        layer.update_state(state)
        dx, grads = layer.backward(dy, p)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(grads["weight"], module.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(grads["bias"], module.bias.grad.numpy(), rtol=1e-4, atol=1e-5)
        module.weight.grad = module.bias.grad = None
        np.testing.assert_allclose(state["running_mean"], module.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state["running_var"], module.running_var.numpy(), rtol=1e-5, atol=1e-6)
    module.eval()
    x = batch(shape, n=3, seed=20)
    np.testing.assert_allclose(layer.forward(x, p, train=False), module(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)


# ---- the layer state in the engine --------------------------------------------------------
NET = """
name: bn-net
input: {shape: [3, 8, 8]}
defaults: {init_w: 0.3}
layers:
  - {name: c1, type: conv, filters: 4, size: 3, padding: 1}
  - {name: bn1, type: batchnorm, neuron: relu, momentum: 0.2}
  - {name: p1, type: pool, mode: max, size: 2}
  - {name: f2, type: fc, outputs: 6}
  - {name: bn2, type: batchnorm, wd: 0}
  - {name: f3, type: fc, outputs: 3}
  - {name: prob, type: softmax}
train: {data: synthetic, epochs: 2, batch: 16, lr: 0.05, weight_decay: 0.01}
"""
STATE_KEYS = {f"{b}.{s}" for b in ("bn1", "bn2") for s in ("running_mean", "running_var")}


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 8, 8)).astype(np.float32), rng.integers(0, 3, n)


def state_of(net):
    return {k: v for k, v in net.state_dict().items() if k in STATE_KEYS}


def test_state_dict_holds_the_state_and_the_optimizer_never_sees_it():
    net = engine.load(NET)
    keys = list(net.state_dict())
    assert keys[:6] == ["c1.weight", "c1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"]
    assert STATE_KEYS <= set(keys) and not STATE_KEYS & set(net.parameters())
    assert np.all(net.state_dict()["bn1.running_var"] == 1) and np.all(net.state_dict()["bn1.weight"] == 1)
    sgd = SGD.for_net(net, momentum=0.9, weight_decay=0.01)
    assert not STATE_KEYS & set(sgd.params) and not STATE_KEYS & set(sgd.multipliers)
    assert sgd.multipliers["bn2.weight"] == (1.0, 0.0) and sgd.multipliers["bn1.weight"] == (1.0, 1.0)
    x, y = data()
    loss, grads = net.loss_and_grads(x, y, train=True)
    assert not STATE_KEYS & set(grads)
    before = state_of(net)
    sgd.step(grads, lr=0.1)
    assert all(np.array_equal(before[k], v) for k, v in state_of(net).items())   # not touched by the step
    state = net.state_dict()
    state["bn1.running_mean"] = np.full(4, 0.5, np.float32)
    other = engine.load(NET, seed=5)
    other.load_state_dict(state)
    assert all(np.array_equal(other.state_dict()[k], state[k]) for k in state)
    del state["bn2.running_var"]
    with pytest.raises(KeyError, match="missing bn2.running_var"):
        other.load_state_dict(state)


def test_only_a_training_step_updates_the_state():
    net = engine.load(NET)
    x, y = data()
    fresh = state_of(net)
    net.forward(x)
    net.forward(x, train=True)
    net.loss(x, y)
    net.gradients(x, y)                                  # train=False: the running statistics
    net.executor.forward({"data": x}, True)              # check-grads' passes
    assert all(np.array_equal(fresh[k], v) for k, v in state_of(net).items())
    net.loss_and_grads(x, y, train=True)
    moved = state_of(net)
    assert all(not np.array_equal(fresh[k], moved[k]) for k in fresh)
    # bn1 sees c1's output over the whole batch: running mean = 0.2 * the batch mean
    c1 = net.forward(x, outputs=["c1"])["c1"].astype(np.float64)
    np.testing.assert_allclose(moved["bn1.running_mean"], 0.2 * c1.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)


def test_a_batchnorm_net_splits_its_batch_summing_the_statistics_over_the_halves():
    # the whole batch in one pass ("layers") is the oracle: its kernels are checked against
    # NumPy and PyTorch above; two halves on two threads must normalise by the same statistics
    net = engine.load(NET)
    x, y = data(17)                                     # halves of 9 and 8 images
    results = {}
    for mode in ("layers", "batch", "auto"):
        net.threading = mode
        assert net.threading_mode == ("layers" if mode == "layers" else "batch")
        if mode == "auto":
            assert "summed over the halves" in net.threading_reason
        net.load_state_dict(engine.load(NET).state_dict())
        loss, grads = net.loss_and_grads(x, y, train=True)
        results[mode] = (loss, {k: g.copy() for k, g in grads.items()}, state_of(net), net.forward(x))
    assert len(net.executor.copies) == 2
    for mode in ("batch", "auto"):
        loss, grads, state, out = results[mode]
        assert loss == pytest.approx(results["layers"][0], rel=1e-6)
        for k, g in grads.items():       # atol: c1.bias's is 0 up to rounding (bn1 removes the mean)
            np.testing.assert_allclose(g, results["layers"][1][k], rtol=1e-4, atol=1e-6, err_msg=k)
        for k, v in state.items():       # updated once, by the first half, from the whole batch's
            np.testing.assert_allclose(v, results["layers"][2][k], rtol=1e-5, atol=1e-7, err_msg=k)
        assert not np.array_equal(state["bn1.running_mean"], engine.load(NET).state_dict()["bn1.running_mean"])
        np.testing.assert_allclose(out, results["layers"][3], rtol=1e-5, atol=1e-6)
    # after the step each copy's batchnorms are whole again: an evaluation pass sums nothing
    assert all(node.layer.batch_sum is None and not node.layer.parts_weighted
               for copy in net.executor.copies for node in copy)


@pytest.mark.parametrize("half", [0, 1])
def test_an_error_in_either_half_of_a_batchnorm_net_surfaces_and_frees_the_other(half):
    # the other half waits at bn1's sums for this one: it must be released, and the error
    # raised must be the real one, not the broken wait's
    net = engine.load(NET, threading="batch")
    x, y = data(12)
    net.loss_and_grads(x, y, train=True)
    layer = (net.layers if half == 0 else net.executor.copies[1])[0].layer      # c1, before bn1

    def broken(*a, **k):
        raise RuntimeError(f"boom in half {half}")
    layer.forward = broken
    with pytest.raises(RuntimeError, match=f"boom in half {half}"):
        net.loss_and_grads(x, y, train=True)
    del layer.forward
    assert np.isfinite(net.loss_and_grads(x, y, train=True)[0])


def test_engine_gradients_match_finite_differences_in_training():
    """Net-level: the engine's backward through two batchnorms (batch statistics) against
    central differences of the training loss (no dropout: the loss is deterministic; smooth
    functions instead of relu and max pooling, whose kinks a step would cross)."""
    net = engine.load(NET.replace("neuron: relu", "neuron: tanh").replace("mode: max", "mode: avg"), seed=1)
    x, y = data(6, seed=2)
    params = net.parameters()
    loss, grads = net.loss_and_grads(x, y, train=True)
    grads = {k: np.array(g) for k, g in grads.items()}
    state = {k: v.copy() for k, v in net.layer_state().items()}
    rng = np.random.default_rng(0)
    h = 1e-2
    for key in ("bn1.weight", "bn1.bias", "bn2.weight", "c1.weight", "f2.weight"):
        for flat in rng.choice(params[key].size, 3, replace=False):
            ix = np.unravel_index(flat, params[key].shape)
            old = params[key][ix]
            params[key][ix] = old + h
            up = net.loss_and_grads(x, y, train=True)[0]
            params[key][ix] = old - h
            down = net.loss_and_grads(x, y, train=True)[0]
            params[key][ix] = old
            assert (up - down) / (2 * h) == pytest.approx(grads[key][ix], rel=3e-2, abs=2e-4), (key, ix)
    assert any(not np.array_equal(state[k], v) for k, v in net.layer_state().items())


def test_checkpoint_round_trip_and_bit_exact_resume(tmp_path):
    quiet = lambda *_: None      # noqa: E731
    full = Trainer(NET, out=str(tmp_path / "full"), log=quiet).run()
    Trainer(NET, out=str(tmp_path / "split"), log=quiet, epochs=2, stop_after=3).run()
    resumed = Trainer(None, resume=str(tmp_path / "split"), log=quiet).run()
    a = engine.load(None, checkpoint=str(tmp_path / "full")).state_dict()
    b = engine.load(None, checkpoint=str(tmp_path / "split")).state_dict()
    assert STATE_KEYS <= set(a)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.all(a["bn1.running_var"] == 1)       # the state was trained and saved
    assert [m["val_loss"] for m in resumed["metrics"]] == [m["val_loss"] for m in full["metrics"]]
    with np.load(next((tmp_path / "full").glob("2.npz"))) as z:
        assert "param/bn2.running_mean" in z.files and "velocity/bn2.running_mean" not in z.files
    # a checkpoint without the state does not fit the net, and says what is missing
    with np.load(tmp_path / "full" / "2.npz") as z:
        kept = {k: z[k] for k in z.files if k != "param/bn1.running_var"}
    np.savez(tmp_path / "bad.npz", **kept)
    meta = json.loads((tmp_path / "full" / "2.json").read_text())
    meta["sha256"] = sha256_of(tmp_path / "bad.npz")
    (tmp_path / "bad.json").write_text(json.dumps(meta))
    with pytest.raises(engine.CheckpointError, match="missing bn1.running_var"):
        engine.load(None, checkpoint=str(tmp_path / "bad.json"))


def test_cli_trains_a_batchnorm_net_on_synthetic_data(tmp_path, capsys):
    path = tmp_path / "bn.yaml"
    path.write_text(NET)
    rc, out, err = cli(capsys, "train", path, "--epochs", "1", "--out", tmp_path / "run")
    assert rc == 0, err
    assert "epoch 1" in out.lower() or "1/1" in out or "best" in out.lower(), out
    net = engine.load(None, checkpoint=str(tmp_path / "run"))
    assert not np.all(net.state_dict()["bn2.running_var"] == 1)
    rc, out, err = cli(capsys, "summary", path)
    assert rc == 0 and "batchnorm" in out and "summed over the halves" in out


@pytest.mark.parametrize("text, key", [
    ("{name: b, type: batchnorm, eps: 0}", "eps"),
    ("{name: b, type: batchnorm, momentum: 1.5}", "momentum"),
    ("{name: b, type: batchnorm, neuron: nope}", "neuron"),
    ("{name: b, type: batchnorm, init_w: 0.1}", "init_w"),
    ("{name: b, type: batchnorm, wd: -1}", "wd"),
])
def test_bad_keys_are_config_errors(tmp_path, text, key):
    path = tmp_path / "net.yaml"
    path.write_text("name: t\ninput: {shape: [2, 4, 4]}\nlayers:\n"
                    f"  - {text}\n  - {{name: f, type: fc, outputs: 2}}\n  - {{name: s, type: softmax}}\n")
    with pytest.raises(engine.ConfigError) as e:
        engine.load(str(path))
    assert e.value.layer == "b" and e.value.key == key and e.value.line == 4 and e.value.file == str(path)


def test_onnx_export_uses_the_running_statistics():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from engine.tools import export_onnx
    net = engine.load(NET)
    x, y = data()
    for seed in range(3):
        net.loss_and_grads(*data(16, seed), train=True)
    model = export_onnx.to_onnx(net, outputs=["bn1", "bn2"])
    export_onnx.check(model)
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"data": x})))
    ours = net.forward(x, outputs=["bn1", "bn2", "prob"])
    for name in ("bn1", "bn2", "prob"):
        np.testing.assert_allclose(got[name], ours[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert {n.op_type for n in model.graph.node} >= {"BatchNormalization"}


def test_check_grads_passes_and_its_perturbed_passes_leave_the_state():
    from engine.tools import check_grads
    net = engine.load(NET.replace("neuron: relu", "neuron: tanh").replace("mode: max", "mode: avg"), seed=1)
    check_grads.rescale_weights(net)
    seen = []
    real = check_grads.PerturbedForward.cost

    def cost(self, layer):                 # every perturbed pass: the state as the first left it
        seen.append({k: v.copy() for k, v in net.layer_state().items()})
        return real(self, layer)
    check_grads.PerturbedForward.cost = cost
    try:
        results = check_grads.check_net(net, samples=4)
    finally:
        check_grads.PerturbedForward.cost = real
    # a bias right before a batchnorm has no effect (the batch mean removes it): its true
    # gradient is 0, the analytic one rounding noise, so the relative error means nothing there
    redundant = {("c1", "bias"), ("f2", "bias")}
    for r in results:
        if (r["layer"], r["param"]) in redundant:
            assert np.abs(r["analytic"]).max() < 1e-5 and np.abs(r["numeric"]).max() < 1e-3
        else:
            assert r["passed"], (r["layer"], r["param"], r["error"])
    assert {r["layer"] for r in results} >= {"bn1", "bn2"}
    assert seen and all(np.array_equal(s[k], seen[0][k]) for s in seen for k in s)
    assert all(np.array_equal(v, seen[0][k]) for k, v in net.layer_state().items())
