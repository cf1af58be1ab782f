"""Per-kernel A/B micro-benchmark of the non-GEMM CPU layers at AlexNet's shapes.

    python bench/bench_kernels.py [--batch 32] [--reps 9] [--threads 1,2] [--old REV]
                                  [--only norm1,pool1] [--no-torch]

Times each layer's forward and backward (through the Layer objects, as the net calls
them) with the parallel kernels (numba.set_num_threads(t) for each t of --threads) and
with the serial twins (inside threads.serial(), as in column mode), and prints median ms.
With --old REV the same layers from git revision REV run in the same process,
interleaved call by call with the current ones (the old `layers` package is extracted
under /tmp as `layers_old`), so machine noise hits both alike. Where torch is installed
its equivalent op runs interleaved too (torch.set_num_threads(t); column "torch").

Shapes (batch 32, one AlexNet column): norm1 cmrnorm 5 on 48x55x55, pool1 max 3/2 on
48x55x55, norm2 on 128x27x27, pool2 max 3/2 on 128x27x27, pool5 max 3/2 on 128x13x13,
dropout on 2048, softmax on 1000.
"""
import argparse
import contextlib
import importlib
import os
import re
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("NUMBA_CACHE_DIR", "/tmp/nbcache")

import numba  # noqa: E402

import layers  # noqa: E402
from layers import threads  # noqa: E402

LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
CASES = [   # name, layer type, cfg, input shape per image
    ("norm1", "cmrnorm", LRN, (48, 55, 55)),
    ("pool1", "pool", dict(mode="max", size=3, stride=2), (48, 55, 55)),
    ("norm2", "cmrnorm", LRN, (128, 27, 27)),
    ("pool2", "pool", dict(mode="max", size=3, stride=2), (128, 27, 27)),
    ("pool5", "pool", dict(mode="max", size=3, stride=2), (128, 13, 13)),
    ("avgpool", "pool", dict(mode="avg", size=3, stride=2), (128, 27, 27)),
    ("dropout", "dropout", dict(rate=0.5), (2048,)),
    ("softmax", "softmax", {}, (1000,)),
]


def load_old(rev):
    """The `layers` package of git revision rev, importable as `layers_old` (own registry,
    own threads module): extracted once under /tmp, so Numba's cache keeps its kernels."""
    sha = subprocess.check_output(["git", "-C", ROOT, "rev-parse", rev], text=True).strip()
    base = f"/tmp/bench_kernels_{sha[:12]}"
    pkg = os.path.join(base, "layers_old")
    if not os.path.isdir(pkg):
        tmp = base + ".part"
        os.makedirs(tmp, exist_ok=True)
        tar = subprocess.check_output(["git", "-C", ROOT, "archive", sha, "layers"])
        subprocess.run(["tar", "-x", "-C", tmp], input=tar, check=True)
        for d, _, files in os.walk(os.path.join(tmp, "layers")):
            for f in files:
                if f.endswith(".py"):
                    p = os.path.join(d, f)
                    with open(p) as fh:
                        src = fh.read()
                    src = re.sub(r"\b(from|import) layers\b", r"\1 layers_old", src)
                    with open(p, "w") as fh:
                        fh.write(src)
        os.rename(os.path.join(tmp, "layers"), os.path.join(tmp, "layers_old"))
        os.rename(tmp, base)
    sys.path.insert(0, base)
    return importlib.import_module("layers_old")


class Impl:
    """One implementation: the `layers` package it comes from, run parallel or serial."""

    def __init__(self, label, package):
        self.label, self.package = label, package
        self.threads = importlib.import_module(package.__name__ + ".threads")

    def mode(self, serial):
        return self.threads.serial() if serial else contextlib.nullcontext()


def ours(impl, kind, cfg, shape, x, g, serial):
    layer = impl.package.get(kind)(kind, dict(cfg), [shape])
    rng = np.random.default_rng(0)
    labels = np.arange(x.shape[0]) % (shape[0])

    def fwd():
        with impl.mode(serial):
            layer.forward(x, {}, train=True, rng=rng)

    def bwd():
        with impl.mode(serial):
            if layer.is_cost:
                layer.cost(labels)
            else:
                layer.backward(g, {})
    fwd()
    bwd()
    return fwd, bwd


def theirs(torch, kind, cfg, x, g):
    F = torch.nn.functional
    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(g)
    labels = torch.arange(x.shape[0]) % x.shape[1] if kind == "softmax" else None
    state = {}

    def op():
        if kind == "cmrnorm":
            return F.local_response_norm(xt, cfg["size"], cfg["alpha"], cfg["beta"], cfg["k"])
        if kind == "pool" and cfg["mode"] == "max":
            return F.max_pool2d(xt, cfg["size"], cfg["stride"], ceil_mode=True)
        if kind == "pool":
            return F.avg_pool2d(xt, cfg["size"], cfg["stride"], ceil_mode=True, count_include_pad=False)
        if kind == "dropout":
            return F.dropout(xt, cfg["rate"], training=True)
        return F.cross_entropy(xt, labels)

    def fwd():
        state["y"] = op()

    def bwd():
        y = state["y"]
        if kind == "softmax":
            y.backward()
        else:
            y.backward(gt[tuple(slice(0, s) for s in y.shape)])
        xt.grad = None
    fwd()
    bwd()
    return fwd, lambda: (fwd(), bwd())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--old", default=None, help="git revision to compare against")
    ap.add_argument("--only", default=None, help="comma-separated case names")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()

    impls = [Impl("new", layers)]
    if args.old:
        impls.insert(0, Impl("old", load_old(args.old)))
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            pass
    counts = [int(t) for t in args.threads.split(",")]
    cases = [c for c in CASES if args.only is None or c[0] in args.only.split(",")]

    cols = [f"{i.label}" for i in impls] + [f"{i.label}-ser" for i in impls]
    if torch is not None:
        cols.append("torch")
    print(f"batch {args.batch}, median of {args.reps} (ms); -ser: serial twins; "
          f"torch: forward, and backward as (forward+backward) - forward")
    print(f"{'case':<9}{'thr':>4} {'pass':<5}" + "".join(f"{c:>10}" for c in cols))
    for name, kind, cfg, shape in cases:
        rng = np.random.default_rng(1)
        x = rng.standard_normal((args.batch,) + shape).astype(np.float32)
        if kind == "cmrnorm":
            x = np.maximum(x, 0) * 30          # relu'd conv output, scale where the window term matters
        out_shape = impls[-1].package.get(kind)(kind, dict(cfg), [shape]).output_shape
        g = rng.standard_normal((args.batch,) + out_shape).astype(np.float32)
        for t in counts:
            numba.set_num_threads(t)
            fns = [ours(i, kind, cfg, shape, x, g, False) for i in impls]
            fns += [ours(i, kind, cfg, shape, x, g, True) for i in impls]
            tf = None
            if torch is not None:
                torch.set_num_threads(t)
                tf = theirs(torch, kind, cfg, x, g)
            times = {c: ([], []) for c in cols}
            for _ in range(args.reps):
                for c, (f, b) in zip(cols, fns):
                    s = time.perf_counter()
                    f()
                    m = time.perf_counter()
                    b()
                    e = time.perf_counter()
                    times[c][0].append(m - s)
                    times[c][1].append(e - m)
                if tf is not None:
                    s = time.perf_counter()
                    tf[0]()
                    m = time.perf_counter()
                    tf[1]()
                    e = time.perf_counter()
                    times["torch"][0].append(m - s)
                    times["torch"][1].append(e - m - (m - s))
            for k, label in enumerate(("fwd", "bwd")):
                row = [1e3 * float(np.median(times[c][k])) for c in cols]
                print(f"{name:<9}{t:>4} {label:<5}" + "".join(f"{v:10.2f}" for v in row))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
