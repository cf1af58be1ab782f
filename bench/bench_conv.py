"""Single-core conv timings: the GEMM path (im2col + BLAS), the direct kernels, Winograd.

Runs the conv layers of CIFAR-10 18pct, LeNet-5, the digits nets and (with a small --batch)
AlexNet's, ResNet-18's and VGG-16's convolutions as a column thread runs them
(engine.columns.single_core(): serial kernels, one BLAS thread), the paths interleaved in
one process, repetition by repetition, so that the machine's noise hits them alike: GEMM,
direct, where the rule runs the forward alone direct (ConvLayer.use_direct_forward: strided
RGB stems) that mixed path, and Winograd wherever it can run (3x3 or 5x5, stride 1, one group); the
ResNets' convolutions without biases, as in the nets. With --torch PyTorch's conv2d (and the
layer's activation) on one thread as well, interleaved the same way: the rival a column's
kernels meet core for core. Prints min and median ms of forward and backward (with dx, or
without it: --no-dx, as a first layer runs) per layer and path.

    python bench/bench_conv.py [--batch 128] [--reps 15] [--no-dx] [--torch] [--only c10-conv2 ...]
    python bench/bench_conv.py --batch 8 --reps 5 --only alex-conv2 r18-layer1 vgg-conv3
    python bench/bench_conv.py --batch 32 --reps 7 --no-dx --only alex-conv1 r18-stem
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import layers  # noqa: E402
from engine import columns  # noqa: E402

# name: (channels, height, width, filters, size, padding, neuron[, groups[, stride]])
SHAPES = {
    "c10-conv1": (3, 32, 32, 32, 5, 2, None),
    "c10-conv2": (32, 16, 16, 32, 5, 2, "relu"),
    "c10-conv3": (32, 8, 8, 64, 5, 2, "relu"),
    "lenet-conv1": (1, 28, 28, 6, 5, 2, "relu"),
    "lenet-conv2": (6, 14, 14, 16, 5, 0, "relu"),
    "ad-conv1": (1, 28, 28, 16, 5, 2, "relu"),        # alexnet-digits, one column
    "ad-conv2": (16, 14, 14, 32, 5, 2, "relu"),
    "ad-conv5": (48, 7, 7, 32, 3, 1, "relu"),
    "rd-conv1": (1, 28, 28, 16, 3, 1, None),          # resnet-digits
    "rd-layer1": (16, 28, 28, 16, 3, 1, None),
    "rd-layer2": (32, 14, 14, 32, 3, 1, None),
    "rd-layer3": (64, 7, 7, 64, 3, 1, None),
    "rd-down2": (16, 28, 28, 32, 3, 1, None, 1, 2),
    "rd-short2": (16, 28, 28, 32, 1, 0, None, 1, 2),
    "rd-down3": (32, 14, 14, 64, 3, 1, None, 1, 2),
    "rd-short3": (32, 14, 14, 64, 1, 0, None, 1, 2),
    "alex-conv2": (96, 27, 27, 256, 5, 2, "relu", 2),
    "alex-conv3": (256, 13, 13, 384, 3, 1, "relu"),
    "alex-conv4": (384, 13, 13, 384, 3, 1, "relu", 2),
    "alex-conv1": (3, 224, 224, 48, 11, 2, "relu", 1, 4),
    "alex-c2col": (48, 27, 27, 128, 5, 2, "relu"),      # nets/alexnet.yaml's columns: conv2a
    "alex-c3col": (256, 13, 13, 192, 3, 1, "relu"),     # conv3a
    "alex-c4col": (192, 13, 13, 192, 3, 1, "relu"),     # conv4a
    "alex-c5col": (192, 13, 13, 128, 3, 1, "relu"),     # conv5a
    "tv-alex-conv2": (64, 27, 27, 192, 5, 2, "relu"),   # nets/alexnet-torchvision.yaml
    "r18-stem": (3, 224, 224, 64, 7, 3, None, 1, 2),
    "r18-layer1": (64, 56, 56, 64, 3, 1, None),
    "r18-down2": (64, 56, 56, 128, 3, 1, None, 1, 2),
    "r18-short2": (64, 56, 56, 128, 1, 0, None, 1, 2),
    "r18-layer2": (128, 28, 28, 128, 3, 1, None),
    "r18-layer3": (256, 14, 14, 256, 3, 1, None),
    "r18-layer4": (512, 7, 7, 512, 3, 1, None),
    "vgg-conv1_1": (3, 224, 224, 64, 3, 1, "relu"),
    "vgg-conv1": (64, 224, 224, 64, 3, 1, "relu"),
    "mid-112": (64, 112, 112, 64, 3, 1, "relu"),
    "vgg-conv2": (128, 112, 112, 128, 3, 1, "relu"),
    "vgg-conv3": (256, 56, 56, 256, 3, 1, "relu"),
    "vgg-conv4": (512, 28, 28, 512, 3, 1, "relu"),
}
SMALL = [name for name in SHAPES if not name.startswith(("alex", "r18", "vgg"))]


def make(shape, path=None, bias=True):
    """The conv layer of `shape`, on the path asked (ConvLayer.PATHS; None: its rule's)."""
    c, h, w, f, k, p, fn, *rest = shape
    groups, stride = (list(rest) + [1, 1])[:2]
    layer = layers.get("conv")("conv", {"filters": f, "size": k, "padding": p, "neuron": fn, "bias": bias,
                                        "groups": groups, "stride": stride}, [(c, h, w)])
    return layer if path is None else layer.use_path(path)


def torch_conv(torch, shape, layer, params, x, dy, need_dx):
    """PyTorch's forward and backward of the layer's convolution and activation on the same
    tensors (its gradient of x only where need_dx), as two callables."""
    c, h, w, f, k, p, fn, *rest = shape
    groups, stride = (list(rest) + [1, 1])[:2]
    tx = torch.from_numpy(x).requires_grad_(need_dx)
    tw = torch.from_numpy(params["weight"].copy()).requires_grad_(True)
    tb = torch.from_numpy(params["bias"].copy()).requires_grad_(True) if "bias" in params else None
    tdy = torch.from_numpy(dy)
    act = {None: lambda v: v, "relu": torch.relu}[fn]
    out = {}

    def forward():
        out["y"] = act(torch.nn.functional.conv2d(tx, tw, tb, stride, p, 1, groups))

    def backward():
        tw.grad = tx.grad = None
        if tb is not None:
            tb.grad = None
        out["y"].backward(tdy)

    return forward, backward


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--no-dx", action="store_true", help="backward without dx (a first layer's)")
    ap.add_argument("--torch", action="store_true",
                    help="PyTorch's conv2d on one thread too (pip install -e '.[torch]')")
    ap.add_argument("--only", nargs="*", default=SMALL, choices=list(SHAPES),
                    help="layers to time (default: the small nets'; the others want --batch 8)")
    args = ap.parse_args(argv)
    torch = None
    if args.torch:
        import torch
        torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    need_dx = not args.no_dx
    print(f"batch {args.batch}, {args.reps} interleaved repetitions, one core, backward "
          f"{'with' if need_dx else 'without'} dx; ms min / median")
    print(f"{'layer':12s} {'path':7s} {'forward':>15s} {'backward':>15s}   auto picks")
    with columns.single_core():
        for name in args.only:
            shape = SHAPES[name]
            bias = not name.startswith(("rd-", "r18-"))      # the ResNets' convs have none (a batchnorm follows)
            runs = {}
            rule = make(shape, bias=bias)
            auto = ("winograd" if rule._wino_at(args.batch) else "direct" if rule._direct_at(args.batch)
                    else "mixed" if rule.direct_forward else "gemm")
            for path in ("gemm", "direct") + (("mixed",) if auto == "mixed" else ()) + \
                    (("winograd",) if rule._wgeom is not None else ()):
                layer = make(shape, path, bias)
                params = layer.init_params(rng)
                x = rng.standard_normal((args.batch,) + layer.input_shape).astype(np.float32)
                dy = rng.standard_normal((args.batch,) + layer.output_shape).astype(np.float32)
                layer.forward(x, params)
                layer.backward(dy, params, need_dx)     # compile, allocate
                runs[path] = (lambda layer=layer, params=params, x=x: layer.forward(x, params),
                              lambda layer=layer, params=params, dy=dy: layer.backward(dy, params, need_dx),
                              {"fwd": [], "bwd": []})
            if torch is not None:
                forward, backward = torch_conv(torch, shape, layer, params, x, dy, need_dx)
                forward()
                backward()
                runs["torch"] = (forward, backward, {"fwd": [], "bwd": []})
            for _ in range(args.reps):
                for path, (forward, backward, times) in runs.items():
                    t0 = time.perf_counter()
                    forward()
                    t1 = time.perf_counter()
                    backward()
                    t2 = time.perf_counter()
                    times["fwd"].append(t1 - t0)
                    times["bwd"].append(t2 - t1)
            for path, (*_, times) in runs.items():
                cells = [f"{1e3 * min(v):6.2f} /{1e3 * np.median(v):6.2f}" for v in times.values()]
                print(f"{name:12s} {path:8s} {cells[0]:>15s} {cells[1]:>15s}   {auto if path == 'gemm' else ''}")


if __name__ == "__main__":
    main()
