"""local (unshared convolution): kernels = NumPy reference = PyTorch (unfold with one weight
bank per location), finite differences, conv's keys and checks, the weight layout."""
import numpy as np
import pytest
from helpers import check_filter_layer, close, filter_layer_case, filter_ref_args

import engine
import layers
from engine import gradcheck
from layers.local import reference

# (N, C, H, W, filters, size, stride, padding, padding_end, groups, neuron): odd, non-square
CASES = [
    (2, 4, 5, 6, 6, 3, 1, 1, 0, 2, "tanh[1.7159,0.6667]"),
    (1, 3, 7, 5, 4, 2, 2, 0, 1, 1, "abs"),
    (3, 2, 6, 6, 2, 3, 3, 2, 0, 2, None),
    (2, 6, 4, 7, 3, 2, 1, 0, 0, 3, "relu"),
    (1, 2, 5, 4, 4, 3, 2, 1, 1, 1, "square"),
]


def make(c, h, w, **cfg):
    return layers.get("local")("loc", cfg, [(c, h, w)])


def setup_case(case, seed=0):
    n, c, h, w, f, k, s, p, e, g, fn = case
    return filter_layer_case("local", n, c, h, w, seed, filters=f, size=k, stride=s, padding=p, padding_end=e,
                             groups=g, neuron=fn, init_w=0.3)


def ref_args(layer, params):
    return filter_ref_args(layer, params, "padding_end")


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernels_match_reference(case):
    check_filter_layer(*setup_case(case), reference, "padding_end")


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]], ids=lambda c: "-".join(map(str, c)))
def test_gradient_finite_differences(case):      # smooth activations: no kink within h
    layer, params, x, _ = setup_case(case, seed=1)
    gradcheck.check(layer, [x], params)


def test_reference_gradient_float64():
    layer, params, x, rng = setup_case(CASES[0], seed=2)
    x = x[:1].astype(np.float64)
    args = list(ref_args(layer, params))
    dy = rng.standard_normal((1,) + layer.output_shape)
    dx, dw, db = reference.backward(dy, x, *args)
    h = 1e-6
    for target, grad in ((x, dx), (args[0], dw), (args[1], db)):     # perturbed in place
        for flat in rng.choice(target.size, 12, replace=False):
            idx = np.unravel_index(flat, target.shape)
            old = target[idx]
            vals = []
            for step in (h, -h):
                target[idx] = old + step
                vals.append(np.sum(dy * reference.forward(x, *args)))
            target[idx] = old
            assert abs((vals[0] - vals[1]) / (2 * h) - grad[idx]) < 1e-6 * max(1.0, abs(grad[idx]))


def test_backward_without_dx_then_repeated_backward():
    layer, params, x, rng = setup_case(CASES[0])
    y = layer.forward(x, params)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    none, grads = layer.backward(dy, params, need_dx=False)
    assert none is None
    first = {k: v.copy() for k, v in grads.items()}
    dx1, grads = layer.backward(dy, params)           # cols still valid
    dx1 = dx1.copy()
    dx2, grads2 = layer.backward(dy, params)          # cols was overwritten: redone
    np.testing.assert_array_equal(dx1, dx2)
    for k in first:
        np.testing.assert_array_equal(first[k], grads2[k])


def test_shared_weights_equal_conv():
    """Every location given the same conv filter bank (cuda-convnet's --conv-to-local) is conv."""
    rng = np.random.default_rng(3)
    cfg = dict(filters=4, size=3, stride=2, padding=1, groups=2, neuron="relu")
    conv = layers.get("conv")("conv", cfg, [(4, 7, 6)])
    local = make(4, 7, 6, **cfg)
    assert local.output_shape == conv.output_shape == (4, 4, 3)
    cp = conv.init_params(rng)
    cp["bias"][:] = rng.standard_normal(4)
    lp = {"weight": np.repeat(cp["weight"][None], 12, axis=0),
          "bias": np.repeat(cp["bias"][:, None, None], 12, axis=1).reshape(4, 4, 3)}
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    close(local.forward(x, lp), conv.forward(x, cp))


def test_weight_layout_one_location():
    """weight[p] and bias[:, oy, ox] act on location p = oy*OW + ox alone."""
    layer = make(1, 3, 4, filters=2, size=2)
    assert layer.param_shapes() == {"weight": (6, 2, 1, 2, 2), "bias": (2, 2, 3)}
    params = {"weight": np.zeros((6, 2, 1, 2, 2), np.float32), "bias": np.zeros((2, 2, 3), np.float32)}
    params["weight"][4, 1, 0, 1, 0] = 2.0        # location (1, 1), filter 1, offset (ky=1, kx=0)
    params["bias"][0, 0, 2] = 5.0
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)
    y = layer.forward(x, params)[0]
    want = np.zeros((2, 2, 3), np.float32)
    want[1, 1, 1] = 2.0 * x[0, 0, 2, 1]
    want[0, 0, 2] = 5.0
    np.testing.assert_array_equal(y, want)


def test_keys_checks_shapes_and_macs():
    layer = make(6, 9, 9, filters=4, size=3, stride=2, groups=2)
    assert layer.output_shape == (4, 4, 4)
    assert layer.cfg["init_w"] == 0.01 and layer.cfg["padding"] == 0
    assert layer.macs() == 4 * 3 * 3 * 3 * 16
    assert sum(int(np.prod(s)) for s in layer.param_shapes().values()) == 16 * 4 * 3 * 9 + 4 * 16
    with pytest.raises(layers.LayerError) as e:
        make(6, 9, 9, filters=4, size=3, groups=4)
    assert e.value.key == "groups"
    with pytest.raises(layers.LayerError) as e:
        make(3, 4, 4, filters=2, size=5)
    assert e.value.key == "size"


def test_net_file_errors_name_the_line_and_key():
    text = ("name: t\ninput: {shape: [3, 8, 8]}\nlayers:\n"
            "  - {name: l1, type: local, filters: 4, size: 3, sride: 1}\n"
            "  - {name: prob, type: softmax}\n")
    with pytest.raises(engine.ConfigError) as e:
        engine.load(text)
    assert (e.value.layer, e.value.key, e.value.line) == ("l1", "sride", 4)
    assert "stride" in str(e.value)


def test_in_a_net_with_solver_keys():
    net = engine.load("name: t\ninput: {shape: [2, 5, 5]}\nlayers:\n"
                      "  - {name: l1, type: local, filters: 3, size: 3, neuron: relu, lr_w: 2, wd: 0}\n"
                      "  - {name: f, type: fc, outputs: 4}\n  - {name: prob, type: softmax}\n")
    assert net.state_dict()["l1.weight"].shape == (9, 3, 2, 3, 3)
    x = np.random.default_rng(0).standard_normal((3, 2, 5, 5)).astype(np.float32)
    loss, grads = net.gradients(x, np.array([0, 1, 3]))
    assert np.isfinite(loss) and grads["l1.bias"].shape == (3, 3, 3)


def test_declared_buffers_are_the_allocated_ones():
    for case in CASES[:2]:          # tanh, and abs (which keeps the pre-activation)
        layer, params, x, rng = setup_case(case)
        y = layer.forward(x, params)
        layer.backward(rng.standard_normal(y.shape).astype(np.float32), params)
        declared = layer.buffer_shapes(x.shape[0], backward=True)
        assert {k: b.shape for k, b in layer._buffers.items()} == {k: s for k, (_, s) in declared.items()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_pytorch_unfold(case):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the oracle comparison needs it")
    F = torch.nn.functional
    layer, params, x, rng = setup_case(case, seed=4)
    n, c, h, w, f, k, s, p, e, g, fn = case
    y = layer.forward(x, params)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, grads = layer.backward(dy, params)
    oh, ow = layer.out_hw
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(params["weight"], dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(params["bias"], dtype=torch.float64, requires_grad=True)
    # unfold gives every location's patch; each location multiplies its own filter bank
    cols = F.unfold(F.pad(xt, (p, p + e, p, p + e)), k, stride=s)       # [N, C*k*k, OH*OW]
    cols = cols.reshape(n, g, c // g * k * k, oh * ow)
    wg = wt.reshape(oh * ow, g, f // g, c // g * k * k)
    pre = torch.einsum("ngkl,lgfk->ngfl", cols, wg).reshape(n, f, oh, ow) + bt
    act = {None: lambda a: a, "relu": torch.relu, "abs": torch.abs, "square": lambda a: a * a,
           "tanh[1.7159,0.6667]": lambda a: 1.7159 * torch.tanh(0.6667 * a)}[fn]
    yt = act(pre)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    close(y, yt.detach().numpy())
    close(dx, xt.grad.numpy())
    close(grads["weight"], wt.grad.numpy())
    close(grads["bias"], bt.grad.numpy())
