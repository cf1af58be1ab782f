"""AlexNet on one GPU: two streams vs one stream vs PyTorch + cuDNN, same GPU, same run.

    python bench/bench_gpu.py [--net nets/alexnet.yaml] [--batch 128] [--steps 10] [--layers]

Prints training images/s (forward + backward + SGD update, all on the device) for our
engine with the two columns on two CUDA streams, then with both columns on one stream,
then PyTorch's grouped AlexNet with cuDNN (same layer sizes, LRN, ceil-mode pooling,
dropout, SGD with momentum), and the ratios. --layers adds our per-layer forward and
backward times measured with CUDA events on one stream. Needs a real GPU
(pip install -e '.[gpu]'); the simulator cannot time anything.
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import engine  # noqa: E402
from engine.solver import SGD  # noqa: E402


def ours(net, streams, x, labels, steps):
    """Training images/s: forward, backward and the SGD update, all on the device, with the
    net's columns on `streams` CUDA streams."""
    net.to("cuda", streams=streams)
    solver = SGD.for_net(net, 0.9, 0.0005)

    def step():
        loss, grads = net.loss_and_grads(x, labels, train=True)
        solver.step(grads, 0.01)
    for _ in range(2):      # warm-up: JIT compile, allocate buffers
        step()
    net.backend.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    net.backend.synchronize()
    return len(labels) * steps / (time.perf_counter() - t)


def torch_rate(x, labels, steps, classes):
    import torch
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from bench_cpu import torch_alexnet
    torch.backends.cudnn.benchmark = True
    model = torch_alexnet(torch, classes).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx = torch.from_numpy(x).cuda()
    tl = torch.from_numpy(labels.astype(np.int64)).cuda()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(tx), tl).backward()
        opt.step()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return len(labels) * steps / (time.perf_counter() - t), torch.__version__


def per_layer(net, x, labels, reps=3):
    """Per-layer times from CUDA events, with both columns on one stream."""
    net.to("cuda", streams=1)
    net.loss_and_grads(x, labels, train=True)          # warm-up
    t = {}                                             # {(layer, phase): [seconds]}
    for _ in range(reps):
        net.loss_and_grads(x, labels, train=True, timer=t)
    print(f"\n{'layer':<10} {'forward ms':>11} {'backward ms':>12} {'cost ms':>8}")
    totals = {"forward": 0.0, "backward": 0.0, "cost": 0.0}
    for node in net.layers:
        ms = {phase: 1e3 * float(np.mean(t.get((node.name, phase), [0.0]))) for phase in totals}
        for phase in totals:
            totals[phase] += ms[phase]
        print(f"{node.name:<10} {ms['forward']:11.3f} {ms['backward']:12.3f} {ms['cost']:8.3f}")
    print(f"{'total':<10} {totals['forward']:11.3f} {totals['backward']:12.3f} {totals['cost']:8.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default=os.path.join(ROOT, "nets", "alexnet.yaml"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--layers", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    from numba import cuda
    name = cuda.get_current_device().name
    print(f"device: {name.decode() if isinstance(name, bytes) else name}")
    net = engine.load(args.net)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch,) + net.input_shape).astype(np.float32)
    labels = rng.integers(0, net.num_classes, args.batch)
    two = ours(net, 2, x, labels, args.steps)
    one = ours(net, 1, x, labels, args.steps)
    print(f"ours, two streams : {two:8.1f} img/s (training, batch {args.batch})")
    print(f"ours, one stream  : {one:8.1f} img/s   two/one = {two / one:.2f}x")
    if not args.no_torch and net.input_shape == (3, 224, 224):
        try:
            rate, version = torch_rate(x, labels, args.steps, net.num_classes)
            print(f"torch {version} + cuDNN: {rate:8.1f} img/s   ours(two)/torch = {two / rate:.2%}")
        except Exception as e:   # no CUDA build of torch: say so, keep our figures
            print(f"PyTorch+cuDNN not measured: {type(e).__name__}: {e}")
    if args.layers:
        per_layer(net, x, labels)


if __name__ == "__main__":
    main()
