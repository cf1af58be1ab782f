"""Memory: the per-layer estimate matches what the layers allocate, batches and nets that
cannot fit are refused before allocating, and absurd sizes are quick ConfigErrors."""
import os
import time
import tracemalloc

import numpy as np
import pytest

import engine
from engine import ConfigError, MemoryLimitError, graph, memory
from engine.config import parse_net
from engine.solver import SGD
from layers.base import Layer

# Every layer type, fused abs (which keeps pre-activations), max and avg pools, joins along
# channels and flat, a layer read by two layers, dropout.
NET = """\
name: probe
input: {shape: [3, 16, 16]}
layers:
  - {name: c1, type: conv, filters: 8, size: 3, padding: 1, neuron: relu}
  - {name: c2, type: conv, filters: 8, size: 3, padding: 1, neuron: abs, inputs: [data], gpu: 1}
  - {name: p1, type: pool, mode: max, size: 3, stride: 2, inputs: [c1]}
  - {name: p2, type: pool, mode: avg, size: 2, neuron: abs, inputs: [c2], gpu: 1}
  - {name: n1, type: cmrnorm, size: 3, groups: 2, inputs: [p1]}
  - {name: n2, type: rnorm, size: 3, inputs: [p2], gpu: 1}
  - {name: j, type: conv, filters: 6, size: 3, inputs: [n1, n2]}
  - {name: a, type: neuron, fn: abs}
  - {name: t0, type: neuron, fn: linear}
  - {name: f1, type: fc, outputs: 32, neuron: tanh, inputs: [t0, n2]}
  - {name: d1, type: dropout, rate: 0.3}
  - {name: f2, type: fc, outputs: 10, neuron: abs}
  - {name: t, type: neuron, fn: tanh}
  - {name: prob, type: softmax}
"""
N = 16


def batch(n=N):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 3, 16, 16)).astype(np.float32), np.arange(n) % 10


def held(net):
    return {node.name: {tag: b.shape for tag, b in node.layer._buffers.items()} for node in net.layers}


def declared(net, n, train):
    out = {}
    for node in net.layers:
        need_dx = any(i != "data" for i in node.inputs)
        shapes = node.layer.buffer_shapes(n, train, train, need_dx)
        out[node.name] = {tag: tuple(shape) for tag, (_, shape) in shapes.items()}
    return out


def test_declared_buffers_are_exactly_the_allocated_ones():
    x, labels = batch()
    net = engine.load(NET)
    net.forward(x)
    assert held(net) == declared(net, N, train=False)
    net = engine.load(NET)
    net.loss_and_grads(x, labels, train=True)
    assert held(net) == declared(net, N, train=True)


def test_estimate_tracks_traced_allocations():
    x, labels = batch()
    for train in (False, True):
        warm = engine.load(NET)          # compile the kernels outside the measurement
        warm.loss_and_grads(x, labels) if train else warm.forward(x)
        SGD.for_net(warm).step(warm.loss_and_grads(x, labels)[1], 0.01)
        net = engine.load(NET)
        params = sum(a.nbytes for a in net.parameters().values())
        tracemalloc.start()
        try:
            if train:
                solver = SGD.for_net(net)
                solver.step(net.loss_and_grads(x, labels, train=True)[1], 0.01)
            else:
                net.forward(x)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        actual = peak + params + x.nbytes
        est = memory.estimate(net.layers, net.input_shape, N, train)
        assert 0.85 * actual <= est["total"] <= 1.15 * actual, (train, est, actual)
        assert est["total"] == sum(est[k] for k in memory.KINDS)
        if train:
            assert est["parameter_gradients"] == est["momentum"] == est["parameters"] == params
        else:
            assert est["parameter_gradients"] == est["momentum"] == 0


def test_estimate_is_affine_in_batch():
    net = engine.load(NET)
    t = [memory.estimate(net.layers, net.input_shape, n, True)["total"] for n in (1, 2, 7)]
    assert t[2] - t[1] == 5 * (t[1] - t[0]) > 0


def test_forward_refuses_a_batch_that_does_not_fit(monkeypatch):
    net = engine.load(NET)
    one = net.check_memory(1, train=False)
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", str(one * 10))
    x, _ = batch(200)
    with pytest.raises(MemoryLimitError) as info:
        net.forward(x)
    err = info.value
    text = str(err)
    assert "\n" not in text and "batch of 200" in text and "ENGINE_MEMORY_LIMIT" in text
    assert err.available == one * 10 and err.needed > err.available
    assert 1 < err.largest_batch < 200 and f"largest batch that fits is {err.largest_batch}" in text
    assert all(not node.layer._buffers for node in net.layers)      # refused before allocating
    net.forward(x[:err.largest_batch])                               # that one does fit
    with pytest.raises(MemoryLimitError):
        net.forward(x[:err.largest_batch + 1])


def test_training_check_counts_backward_and_momentum(monkeypatch):
    net = engine.load(NET)
    forward, train = net.check_memory(N, train=False), net.check_memory(N, train=True)
    est = memory.estimate(net.layers, net.input_shape, N, True)
    # a training step adds backward buffers, parameter gradients and momentum
    assert train == est["total"] and train - forward > est["momentum"] + est["parameter_gradients"]
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", str((forward + train) // 2))
    net2 = engine.load(NET)
    net2.check_memory(N, train=False)
    with pytest.raises(MemoryLimitError, match="training batch of 16"):
        net2.check_memory(N, train=True)


def test_verdict_is_cached_per_batch_size(monkeypatch):
    net = engine.load(NET)
    calls = []
    real = memory.check_batch
    monkeypatch.setattr(memory, "check_batch", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    x, _ = batch(4)
    for _ in range(3):
        net.forward(x)
    net.forward(x[:2])
    assert calls == [4, 2]


def test_no_limit_known_means_no_refusal(monkeypatch):
    monkeypatch.delenv("ENGINE_MEMORY_LIMIT", raising=False)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: None)
    monkeypatch.setattr(memory, "_cgroup_room", lambda: None)
    assert memory.available() == (None, None)
    net = engine.load(NET)
    assert net.check_memory(10**9) > 10**12


def test_net_too_big_is_refused_at_load_before_allocating(tmp_path, monkeypatch):
    monkeypatch.setattr(Layer, "init_params", lambda *a: pytest.fail("allocated parameters"))
    path = tmp_path / "big.yaml"
    path.write_text("input: {shape: [256, 6, 6]}\nlayers:\n"
                    "  - {name: fc6, type: fc, outputs: 2000000000}\n"
                    "  - {name: fc7, type: fc, outputs: 4096}\n  - {name: prob, type: softmax}\n")
    with pytest.raises(ConfigError) as info:
        engine.load(str(path))
    err = info.value
    assert err.file == str(path) and err.layer == "fc6" and err.line == 3
    assert "parameters alone" in str(err) and "% of them" in str(err) and "available" in str(err)


def test_one_image_that_does_not_fit_is_refused_at_load(monkeypatch):
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "1M")
    with pytest.raises(ConfigError, match="one image's forward pass.*ENGINE_MEMORY_LIMIT=1M") as info:
        engine.load("input: {shape: [3, 300, 300]}\nlayers:\n  - {name: c, type: conv, filters: 64, size: 3}\n")
    assert info.value.layer == "c"


@pytest.mark.parametrize("old,new", [
    ("filters: 4", "filters: 1000000000000000"),
    ("filters: 4", "filters: 2000000000"),
    ("size: 3", "size: 1099511627776"),
    ("padding: 1", "padding: 4611686018427387904"),
    ("padding: 1", "padding: 2000000000"),
    ("stride: 1", "stride: 9223372036854775808"),
    ("[3, 12, 12]", "[3, 1000000000, 1000000000]"),
    ("[3, 12, 12]", "[3, 100000000000000000000, 12]"),
    ("[3, 12, 12]", "[2147483647, 2147483647, 2147483647]"),
    ("outputs: 5", "outputs: 1000000000000"),
    ("outputs: 5", "outputs: 2000000000"),
    ("groups: 1", "groups: 1099511627776"),
])
def test_huge_values_are_quick_config_errors(old, new):
    net = ("input: {shape: [3, 12, 12]}\nlayers:\n"
           "  - {name: conv1, type: conv, filters: 4, size: 3, stride: 1, padding: 1, groups: 1}\n"
           "  - {name: fc1, type: fc, outputs: 5}\n  - {name: prob, type: softmax}\n")
    assert old in net
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        engine.load(net.replace(old, new))
    assert time.perf_counter() - start < 1.0
    assert info.value.layer in ("conv1", "fc1") or info.value.key == "shape"


def test_summary_reports_memory():
    net = engine.load(NET)
    text = net.summary(batch=64)
    for label in ("activations", "activation gradients", "parameters", "parameter gradients",
                  "momentum", "workspace", "batch 1", "batch 64", "total, training step"):
        assert label in text
    est = memory.estimate(net.layers, net.input_shape, 64, True)
    assert memory.fmt(est["total"]) in text
    assert "c1" in text and "MACs/img" in text      # the layer table is still there


def test_available_reads_meminfo_cgroups_and_the_override(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  1000 kB\nMemFree:  10 kB\nMemAvailable:  500 kB\n")
    assert memory._meminfo_available(str(meminfo)) == 500 * 1024
    root = tmp_path / "cg"
    # v2: the process's own cgroup, named in /proc/self/cgroup
    (root / "app").mkdir(parents=True)
    (root / "app" / "memory.max").write_text("1000000\n")
    (root / "app" / "memory.current").write_text("400000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/app\n")
    assert memory._cgroup_room(str(root), str(proc)) == 600000
    (root / "app" / "memory.max").write_text("max\n")
    assert memory._cgroup_room(str(root), str(proc)) is None
    # v1
    (root / "memory" / "job").mkdir(parents=True)
    (root / "memory" / "job" / "memory.limit_in_bytes").write_text("2000000\n")
    (root / "memory" / "job" / "memory.usage_in_bytes").write_text("500000\n")
    proc.write_text("4:memory:/job\n1:cpu:/\n")
    assert memory._cgroup_room(str(root), str(proc)) == 1500000
    (root / "memory" / "job" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory._cgroup_room(str(root), str(proc)) is None
    assert memory._cgroup_room(str(tmp_path / "none"), str(tmp_path / "none")) is None

    monkeypatch.setattr(memory, "_meminfo_available", lambda: 8 << 30)
    monkeypatch.setattr(memory, "_cgroup_room", lambda: 2 << 30)
    monkeypatch.delenv("ENGINE_MEMORY_LIMIT", raising=False)
    assert memory.available() == (2 << 30, "cgroup memory limit")
    assert memory.available(held=1 << 30) == (3 << 30, "cgroup memory limit")
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "1.5G")
    assert memory.available(held=1 << 30) == (int(1.5 * (1 << 30)), "ENGINE_MEMORY_LIMIT=1.5G")
    monkeypatch.setenv("ENGINE_MEMORY_LIMIT", "lots")
    with pytest.raises(ConfigError, match="ENGINE_MEMORY_LIMIT"):
        memory.available()


@pytest.mark.parametrize("text,value", [("123", 123), ("4k", 4096), ("512M", 512 << 20),
                                        ("2GiB", 2 << 30), ("1.5g", 3 << 29), ("1T", 1 << 40)])
def test_parse_size(text, value):
    assert memory.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "-1G", "1X", "G", "1 2"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        memory.parse_size(text)


def test_shipped_alexnet_estimate():
    spec = parse_net(os.path.join(os.path.dirname(__file__), "..", "nets", "alexnet.yaml"))
    est = memory.estimate(graph.build(spec), spec.input_shape, 128, True)   # no weights drawn
    assert est["parameters"] == 60_965_224 * 4
    # AlexNet's activations at batch 128 are some hundreds of MiB (5.4 MiB an image here)
    assert 400 << 20 < est["activations"] < 1 << 30
