"""AlexNet on the CPU: our engine beside PyTorch, same machine, same run.

    python bench/bench_cpu.py [--net nets/alexnet.yaml] [--batch 32] [--reps 5] [--threads 2] [--layers]

Times forward (inference) and forward+backward (the gradient of the mean cross-entropy,
dropout on) for both, interleaved rep by rep so that machine noise hits both alike, and
prints images/s (median, min-max) and our/PyTorch ratios. PyTorch runs the same
architecture: each two-column conv as one grouped conv (same multiply-adds), LRN with
the same size/alpha/beta/k, ceil-mode pooling. With --layers it also prints our time per
layer, forward and backward.
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import engine  # noqa: E402


def torch_alexnet(torch, classes=1000):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4, padding=2), nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, classes))


def timed(fn, reps):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def describe(name, batch, times):
    rates = [batch / t for t in times]
    med = float(np.median(rates))
    return med, f"{name:<28} {med:8.1f} img/s  (min {min(rates):.1f}, max {max(rates):.1f})"


def per_layer(net, batch):
    """Our time per layer: the table of `python -m engine time` (engine/tools/timing.py)."""
    from engine.tools.timing import format_timing, measure
    print()
    print(format_timing(measure(net, batch=batch, iterations=2)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default=os.path.join(ROOT, "nets", "alexnet.yaml"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", action="store_true", help="also print our per-layer times")
    args = ap.parse_args()

    net = engine.load(args.net)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch,) + net.input_shape).astype(np.float32)
    labels = rng.integers(0, net.num_classes, args.batch)
    print(f"{net.name}: batch {args.batch}, {args.reps} reps, {os.cpu_count()} CPUs")

    ours_f = lambda: net.forward(x)                               # noqa: E731
    ours_b = lambda: net.loss_and_grads(x, labels, train=True)   # noqa: E731
    t0 = time.perf_counter()
    ours_f()
    ours_b()
    print(f"warm-up (first calls, includes any Numba compile): {time.perf_counter() - t0:.1f}s")

    torch = None
    if net.input_shape != (3, 224, 224):
        print("the PyTorch rival is AlexNet-shaped: printing our figures only for this net")
    else:
        try:
            import torch
        except ImportError:
            print("PyTorch not installed (pip install -e '.[torch]'): printing our figures only")
    if torch is not None:
        torch.set_num_threads(args.threads)
        tnet = torch_alexnet(torch, net.num_classes)
        tx, tl = torch.from_numpy(x), torch.from_numpy(labels)
        loss_fn = torch.nn.CrossEntropyLoss()

        def torch_f():
            tnet.eval()
            with torch.no_grad():
                tnet(tx)

        def torch_b():
            tnet.train()
            tnet.zero_grad(set_to_none=True)
            loss_fn(tnet(tx), tl).backward()
        torch_f()
        torch_b()

    results = {"ours_f": [], "ours_b": [], "torch_f": [], "torch_b": []}
    for _ in range(args.reps):   # interleaved so that noise hits both
        results["ours_f"] += timed(ours_f, 1)
        results["ours_b"] += timed(ours_b, 1)
        if torch is not None:
            results["torch_f"] += timed(torch_f, 1)
            results["torch_b"] += timed(torch_b, 1)

    of, line = describe("ours forward", args.batch, results["ours_f"])
    print(line)
    ob, line = describe("ours forward+backward", args.batch, results["ours_b"])
    print(line)
    if torch is not None:
        tf, line = describe(f"torch {torch.__version__} forward", args.batch, results["torch_f"])
        print(line)
        tb, line = describe(f"torch {torch.__version__} fwd+bwd", args.batch, results["torch_b"])
        print(line)
        print(f"ratio ours/torch: forward {of / tf:.2f}x, forward+backward {ob / tb:.2f}x")
    if args.layers:
        per_layer(net, args.batch)


if __name__ == "__main__":
    main()
