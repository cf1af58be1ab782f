"""The CPU benchmark: our engine beside a PyTorch mirror of the same nets, training and inference.

    python bench/run.py                       # all nets, 3 rounds (~25 min on 2 cores)
    python bench/run.py --quick --nets lenet5 # one round, short measurements
    python bench/run.py --threads 1 --rounds 5 --json results.json
    python bench/run.py --latency             # one image at a time: alexnet, resnet18 (ms)

For each (net, batch) — alexnet b32 and b128, caffenet, lenet5 and cifar10-18pct at b128,
resnet18 at b32, vgg16 at b16, all on synthetic random data — and each mode:

- train: images/s of a training step: for the engine exactly the trainer's step,
  `net.loss_and_grads(x, labels, train=True)` then `SGD.for_net(net).step(grads, lr)`; for
  PyTorch the mirror (bench/torch_mirror.py: the same layers, computing the same function)
  with logits + cross-entropy, backward, torch.optim.SGD (momentum 0.9, weight decay 5e-4
  on weights, as our solver);
- infer: images/s of `net.forward(x)` and of the mirror in eval() under no_grad.

Each framework runs in a child process of its own (`--worker --serve`, JSON lines out), so
peak RSS (VmHWM) is that framework's own. For each (net, batch, mode) the engine's child and
PyTorch's start one after the other, warm up, and stay: then their measurements alternate,
`--rounds` of each, the order flipping each round, `--pause` seconds apart (BLAS threads spin
a while after a call), so that the machine's drift (minutes long here) hits both alike.
Warm-up steps are not counted (the engine's first includes loading its Numba kernels;
NUMBA_CACHE_DIR is set for the children, so they compile once). A measurement takes at
least `--min-steps` steps and about `--budget` seconds. Both frameworks get the
same thread count (OMP/OpenBLAS/MKL/Numba variables in the child's environment, and
torch.set_num_threads / numba.set_num_threads). The sgemm peak (numpy and torch float32
4096x4096 matmul, best of a few) is measured in a child too, with the same threads; the
larger is the peak the engine's GFLOP/s are compared with. FLOPs: 2 x the layers'
multiply-adds (`macs()`), x 3 for a training step. With --latency the engine's child runs
as `predict` does: engine.latency_mode() before anything else.
"""
import argparse
import json
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

RUNS = [("alexnet", 32), ("alexnet", 128), ("caffenet", 128), ("lenet5", 128), ("cifar10-18pct", 128),
        ("cifar10-80sec", 128), ("alexnet-digits", 128), ("resnet-digits", 128),
        ("resnet18", 32), ("vgg16", 16)]
LATENCY_NETS = ("alexnet", "resnet18")     # --latency: one image at a time, what `predict` waits on
MODES = ("train", "infer")
LR, MOMENTUM, WEIGHT_DECAY = 1e-3, 0.9, 5e-4
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def peak_rss_mib():
    """This process's peak resident memory in MiB: VmHWM where /proc has it, else ru_maxrss.

    Linux keeps getrusage's ru_maxrss across execve (getrusage(2), NOTES): a child started
    by a parent of 300 MiB reports at least those 300 MiB. VmHWM belongs to the process's
    own address space, made fresh by the exec, so it is the child's own peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0     # Linux: KiB


def net_path(name):
    return name if name.endswith(".yaml") else os.path.join(ROOT, "nets", f"{name}.yaml")


# ---- the children ------------------------------------------------------------------------
def warm_up(step, steps):
    """Seconds of `steps` steps, not counted (the engine's first loads its kernels)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0


def time_steps(step, min_steps, budget, max_steps):
    """Each step's seconds: at least min_steps and about `budget` seconds."""
    times, start = [], time.perf_counter()
    while len(times) < min_steps or (time.perf_counter() - start < budget and len(times) < max_steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def engine_step(path, batch, mode, threads, latency=False):
    import engine  # noqa: I001  first: it sets what OpenBLAS reads when numpy loads it (layers/__init__)
    import numba
    import numpy as np
    from engine.solver import SGD
    if latency:               # as `predict` runs: before any parallel kernel (set_num_threads starts them)
        engine.latency_mode()
    numba.set_num_threads(threads)
    net = engine.load(path, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + net.input_shape, dtype=np.float32)
    labels = rng.integers(0, net.num_classes, batch)
    if mode == "infer":
        return net, lambda: net.forward(x)
    solver = SGD.for_net(net, MOMENTUM, WEIGHT_DECAY)

    def step():
        _, grads = net.loss_and_grads(x, labels, train=True)
        solver.step(grads, LR)
    return net, step


def torch_step(net_info, batch, mode, threads):
    """net_info: describe_net's dict (no engine import here: the child's memory is torch's)."""
    import torch

    from bench.torch_mirror import Mirror
    torch.set_num_threads(threads)
    model = Mirror(net_info["layers"], seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn([batch] + net_info["input_shape"], generator=g)
    labels = torch.randint(0, net_info["classes"], (batch,), generator=g)
    if mode == "infer":
        model.eval()

        def step():
            with torch.no_grad():
                model(x)
        return step
    model.train()
    opt = torch.optim.SGD(model.parameter_groups(WEIGHT_DECAY), lr=LR, momentum=MOMENTUM)

    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(x, labels).backward()
        opt.step()
    return step


def describe_net(path):
    """What the torch child needs (JSON-able): the net's name, input shape, class count,
    multiply-adds per image and the mirror's layer description."""
    import math

    from bench.torch_mirror import describe
    from engine import graph
    from engine.config import parse_net
    spec = parse_net(path)
    nodes = graph.build(spec)
    return {"name": spec.name, "input_shape": list(spec.input_shape),
            "classes": math.prod(nodes[-1].output_shape), "macs": sum(int(n.layer.macs()) for n in nodes),
            "layers": describe(nodes)}


def worker(args):
    """One measurement: prints one JSON line. With --serve (what the parent runs), the warm-up,
    then a {"ready": true} line, then one measurement (a "block") per "block" line read on
    stdin, each answered by a JSON line, until "quit" or the end of stdin."""
    out = {"framework": args.worker, "net": args.net, "batch": args.batch, "mode": args.mode,
           "threads": args.threads}
    if args.worker == "peak":
        out.update(sgemm_peak(args.threads, args.size, args.reps))
        return _answer(out)
    if args.worker == "engine":
        net, step = engine_step(net_path(args.net), args.batch, args.mode, args.threads, args.latency)
        out.update(version=__import__("engine").__version__, threading=net.threading_mode)
    else:
        with open(args.description) as f:
            step = torch_step(json.load(f), args.batch, args.mode, args.threads)
        out.update(version=__import__("torch").__version__)
    out["warmup_s"] = warm_up(step, args.warmup)

    def block():
        times = time_steps(step, args.min_steps, args.budget, args.max_steps)
        return _answer(dict(out, step_s=times, steps=len(times),
                            images_per_s=args.batch / statistics.median(times)))
    if not args.serve:
        return block()
    _answer({"ready": True})
    for line in sys.stdin:
        if line.strip() != "block":
            break
        block()
    return 0


def _answer(out):
    """Print one JSON result line (with this process's peak memory so far)."""
    out["peak_rss_mib"] = peak_rss_mib()
    out["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps(out), flush=True)
    return 0


def sgemm_peak(threads, n, reps):
    """Best GFLOP/s of a float32 n x n matmul in numpy and (when installed) torch."""
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flop = 2.0 * n ** 3

    def best(fn):
        fn()
        out = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            out.append(flop / (time.perf_counter() - t) / 1e9)
        return max(out)
    result = {"size": n, "numpy_gflops": best(lambda: a @ b)}
    try:
        import torch
    except ImportError:
        result["torch_gflops"] = None
    else:
        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        result["torch_gflops"] = best(lambda: ta @ tb)
    return result


# ---- the parent ---------------------------------------------------------------------------
def child_env(threads):
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "convnet-engine-numba-cache"))
    for var in THREAD_VARS:
        env[var] = str(threads)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _command(argv, threads):
    return [sys.executable, os.path.abspath(__file__), "--worker", *argv, "--threads", str(threads)]


def run_child(argv, threads, timeout):
    """A worker's JSON result, or {"error": why}."""
    try:
        p = subprocess.run(_command(argv, threads), capture_output=True, text=True, env=child_env(threads),
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {p.returncode}: {tail}"}
    return json.loads(lines[-1])


class Server:
    """A worker kept running (--serve): warmed up once, then measuring a block whenever asked,
    so that the engine's and PyTorch's blocks can alternate while both stay warm."""

    def __init__(self, argv, threads, timeout):
        self.timeout, self.error = timeout, None
        self.proc = subprocess.Popen(_command(argv + ["--serve"], threads), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=child_env(threads))
        self.lines = queue.Queue()         # stdout's lines, then None at its end
        self.stderr = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        ready = self._result()
        if "error" in ready:
            self.error = ready["error"]

    @staticmethod
    def _read(stream, put, mark_end=False):
        for line in stream:
            put(line)
        if mark_end:
            put(None)

    def _result(self):
        """The next JSON line, or {"error": why} (the child died, or said nothing in time)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                self.close()
                return {"error": f"timed out after {self.timeout} s"}
            if line is None:
                code = self.proc.wait()
                tail = ("".join(self.stderr).strip().splitlines() or ["no output"])[-1]
                return {"error": f"exit {code}: {tail}"}
            if line.startswith("{"):
                return json.loads(line)

    def block(self):
        """One measurement's result (as run_child's), or {"error": why}."""
        if self.error:
            return {"error": self.error}
        try:
            self.proc.stdin.write("block\n")
            self.proc.stdin.flush()
        except OSError:            # it died while idle: _result reads its end and exit status
            pass
        r = self._result()
        if "error" in r:
            self.error = r["error"]
        return r

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def have_torch():
    """(True, None) or (False, why), without importing torch into this (parent) process."""
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        return False, "No module named 'torch'"
    return True, None


def summarise(batch, results):
    """Images/s from the step times pooled over rounds: at the median step, the slowest and the
    fastest; peak RSS: the largest."""
    good = [r for r in results if "step_s" in r]
    if not good:
        return None
    times = [t for r in good for t in r["step_s"]]
    return {"median": batch / statistics.median(times), "min": batch / max(times), "max": batch / min(times),
            "steps": len(times), "peak_rss_mib": max(r["peak_rss_mib"] for r in good),
            "errors": [r["error"] for r in results if "error" in r]}


def fmt_rate(s):
    return "-" if s is None else f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"


def grid(head, lines, left):
    """Rows of strings in columns, the first `left` columns aligned left, the rest right,
    between rules."""
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]

    def fmt(row):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    rule = "-" * len(fmt(head))
    return "\n".join([rule, fmt(head), rule] + [fmt(x) for x in lines] + [rule])


def table(rows, peak):
    head = ("net", "batch", "mode", "engine img/s", "torch img/s", "eng/torch", "engine GFLOP/s",
            "% peak", "RSS eng MiB", "RSS torch MiB", "RSS eng/torch")
    lines = []
    for r in rows:
        e, t = r["engine"], r["torch"]
        ratio = f"{e['median'] / t['median']:.2f}" if e and t else "-"
        gflops = e["median"] * r["flop_per_image"] / 1e9 if e else None
        pct = f"{100 * gflops / peak:.0f}%" if gflops is not None and peak else "-"
        rss_ratio = f"{e['peak_rss_mib'] / t['peak_rss_mib']:.2f}" if e and t else "-"
        lines.append((r["net"], str(r["batch"]), r["mode"], fmt_rate(e), fmt_rate(t), ratio,
                      "-" if gflops is None else f"{gflops:.1f}", pct,
                      f"{e['peak_rss_mib']:.0f}" if e else "-", f"{t['peak_rss_mib']:.0f}" if t else "-",
                      rss_ratio))
    return grid(head, lines, left=3)


def summary_line(rows, peak):
    """One line for the whole run: per mode, the engine/PyTorch ratio's geometric mean over
    the nets and its range, and the best % of the sgemm peak; None without a pair."""
    parts = []
    for mode in MODES:
        pairs = [(r["net"], r["batch"], r["engine"]["median"] / r["torch"]["median"]) for r in rows
                 if r["mode"] == mode and r["engine"] and r["torch"]]
        if not pairs:
            continue
        ratios = [x for _, _, x in pairs]
        low, high = min(pairs, key=lambda p: p[2]), max(pairs, key=lambda p: p[2])
        part = (f"{mode} {statistics.geometric_mean(ratios):.2f}x PyTorch (geometric mean of {len(pairs)}; "
                f"{low[2]:.2f}x {low[0]} b{low[1]} .. {high[2]:.2f}x {high[0]} b{high[1]})")
        best = max((r["engine"]["median"] * r["flop_per_image"] / 1e9 for r in rows
                    if r["mode"] == mode and r["engine"]), default=None)
        if best is not None and peak:
            part += f", best {100 * best / peak:.0f}% of peak"
        parts.append(part)
    return "summary: " + "; ".join(parts) if parts else None


def latency_table(rows):
    """The --latency rows as milliseconds per image (the median step; fastest-slowest)."""
    def ms(s):
        return "-" if s is None else f"{1e3 / s['median']:.1f} ({1e3 / s['max']:.1f}-{1e3 / s['min']:.1f})"
    head = ("net", "batch", "engine ms", "torch ms", "torch/engine")
    lines = [(r["net"], str(r["batch"]), ms(r["engine"]), ms(r["torch"]),
              f"{r['engine']['median'] / r['torch']['median']:.2f}" if r["engine"] and r["torch"] else "-")
             for r in rows]
    return grid(head, lines, left=2)


def main_parent(args):
    threads = args.threads or os.cpu_count() or 1
    wanted = [n.strip() for n in args.nets.split(",")] if args.nets else None
    if args.latency:          # batch 1, inference: what `predict` of one photo waits on
        runs = [(n, 1) for n in (wanted or LATENCY_NETS)]
    else:
        runs = [(n, b) for n, b in RUNS if wanted is None or n in wanted]
        if args.quick and wanted is None:       # every net once: alexnet at b128 only
            runs = [(n, b) for n, b in runs if (n, b) != ("alexnet", 32)]
        if wanted:
            known = {n for n, _ in RUNS}
            runs += [(n, 128) for n in wanted if n not in known]      # any other net file: batch 128
    if not runs:
        print("no nets to run", file=sys.stderr)
        return 2
    modes = ["infer"] if args.latency else [m.strip() for m in args.modes.split(",")]
    torch_ok, why = have_torch()
    timing = ["--warmup", str(args.warmup), "--min-steps", str(args.min_steps), "--budget", str(args.budget),
              "--max-steps", str(args.max_steps)]
    print(f"bench/run.py: {threads} thread(s), {args.rounds} round(s), about {args.budget:g} s per "
          f"measurement (at least {args.min_steps} steps, after {args.warmup} warm-up), {os.cpu_count()} CPUs; "
          f"NUMBA_CACHE_DIR={child_env(threads)['NUMBA_CACHE_DIR']}")
    if not torch_ok:
        print(f"PyTorch is not importable ({why}): engine figures only (pip install -e '.[torch]')")
    peak_argv = ["peak", "--size", str(args.size), "--reps", str(args.reps)]
    peak = run_child(peak_argv, threads, args.timeout)
    peak_gflops = max([v for v in (peak.get("numpy_gflops"), peak.get("torch_gflops")) if v] or [0.0])
    if "error" in peak:
        print(f"sgemm peak: failed ({peak['error']})")
    else:
        tg = peak.get("torch_gflops")
        print(f"sgemm peak ({peak['size']}x{peak['size']} float32, best of {args.reps}): numpy "
              f"{peak['numpy_gflops']:.1f} GFLOP/s, torch {'-' if tg is None else f'{tg:.1f}'} GFLOP/s; "
              f"peak = {peak_gflops:.1f}")
    tmp = tempfile.mkdtemp(prefix="bench-run-")
    info = {}
    for name, _ in runs:
        net_info = describe_net(net_path(name))
        dpath = os.path.join(tmp, f"{len(info)}-{net_info['name']}.json")
        with open(dpath, "w") as f:
            json.dump(net_info, f)
        info[name] = (dpath, net_info["macs"])
    raw = {}
    frameworks = ["engine", "torch"] if torch_ok else ["engine"]
    for i, (name, batch) in enumerate(runs):
        for mode in modes:
            # both kept warm, one after the other: their blocks alternate round by round (the
            # order flipping), so that the machine's drift over minutes hits both alike
            servers = {}
            try:
                for fw in frameworks:
                    argv = [fw, "--net", name, "--batch", str(batch), "--mode", mode] + timing
                    if args.latency and fw == "engine":
                        argv.append("--latency")          # the engine as `predict` runs it
                    if fw == "torch":
                        argv += ["--description", info[name][0]]
                    servers[fw] = Server(argv, threads, args.timeout)
                for rnd in range(args.rounds):
                    order = frameworks if (rnd + i) % 2 == 0 else frameworks[::-1]
                    for fw in order:
                        time.sleep(args.pause)     # the other's BLAS threads stop spinning first
                        r = servers[fw].block()
                        raw.setdefault((name, batch, mode, fw), []).append(r)
                        what = (f"{r['images_per_s']:.1f} img/s, {r['steps']} steps, "
                                f"{r['peak_rss_mib']:.0f} MiB" if "images_per_s" in r else r["error"])
                        if "threading" in r:
                            what += f", threading {r['threading']}"
                        print(f"  round {rnd + 1}: {name} b{batch} {mode} {fw}: {what}", flush=True)
            finally:
                for server in servers.values():
                    server.close()
    rows = []
    for name, batch in runs:
        for mode in modes:
            macs = info[name][1]
            rows.append({"net": name, "batch": batch, "mode": mode,
                         "flop_per_image": 2 * macs * (3 if mode == "train" else 1),
                         "engine": summarise(batch, raw.get((name, batch, mode, "engine"), [])),
                         "torch": summarise(batch, raw.get((name, batch, mode, "torch"), []))})
    if args.latency:
        print(latency_table(rows))
        print("ms: per image at batch 1 (inference), the median of every timed step of every round "
              "(fastest-slowest); torch/engine > 1: the engine answers sooner")
    print(table(rows, peak_gflops))
    print("img/s: at the median of every timed step of every round (slowest-fastest); GFLOP/s: 2 x multiply-adds "
          f"(x 3 training) at the engine's median; % peak: of {peak_gflops:.1f} GFLOP/s; RSS: peak of "
          "each child process")
    line = summary_line(rows, peak_gflops)
    if line:
        print(line)
    for r in rows:
        for fw in ("engine", "torch"):
            for err in (r[fw] or {}).get("errors", []):
                print(f"note: {r['net']} b{r['batch']} {r['mode']} {fw}: {err}")
    if args.json:
        doc = {"threads": threads, "rounds": args.rounds, "cpus": os.cpu_count(), "peak": peak,
               "peak_gflops": peak_gflops, "torch": torch_ok, "torch_missing": why, "rows": rows,
               "raw": [{"net": k[0], "batch": k[1], "mode": k[2], "framework": k[3], "results": v}
                       for k, v in raw.items()]}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1 round, one warm-up step, ~1 s per measurement (at least one step), every net "
                         "once (alexnet at b128 only), a 2048 sgemm: under 5 minutes on 2 cores; a smoke run, "
                         "not figures to quote")
    ap.add_argument("--nets", metavar="A,B", help=f"comma-separated subset of {', '.join(dict(RUNS))} "
                    "(or other nets/ names or .yaml paths, at batch 128)")
    ap.add_argument("--modes", default="train,infer", help="train,infer (default both)")
    ap.add_argument("--latency", action="store_true",
                    help=f"single-image latency: inference at batch 1 (default nets: {', '.join(LATENCY_NETS)}), "
                         "in milliseconds per image")
    ap.add_argument("--threads", type=int, metavar="N", help="threads for both frameworks (default: all cores)")
    ap.add_argument("--rounds", type=int, metavar="R",
                    help="measurements per framework, the engine's and PyTorch's alternating (default 3)")
    ap.add_argument("--pause", type=float, default=0.25, metavar="S",
                    help="seconds between two measurements (BLAS and OpenMP threads spin a while after "
                         "a call; default 0.25)")
    ap.add_argument("--budget", type=float, metavar="S", help="seconds per measurement (default 8)")
    ap.add_argument("--min-steps", type=int, dest="min_steps", metavar="K", help="at least K timed steps (3)")
    ap.add_argument("--max-steps", type=int, dest="max_steps", default=200, metavar="K",
                    help="at most K timed steps (200)")
    ap.add_argument("--warmup", type=int, metavar="K", help="warm-up steps, not timed (default 2)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--timeout", type=int, default=600, metavar="S", help="limit per child process")
    # the child side
    ap.add_argument("--worker", choices=("engine", "torch", "peak"), help=argparse.SUPPRESS)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--net", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, default="train", help=argparse.SUPPRESS)
    ap.add_argument("--description", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)     # sgemm side (2048 quick, else 4096)
    ap.add_argument("--reps", type=int, help=argparse.SUPPRESS)     # sgemm reps (3 quick, else 5)
    args = ap.parse_args(argv)
    quick = args.quick
    defaults = {"rounds": 1 if quick else 3, "budget": 1.0 if quick else 8.0, "min_steps": 1 if quick else 3,
                "warmup": 1 if quick else 2}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.size = args.size or (2048 if quick else 4096)
    args.reps = args.reps or (3 if quick else 5)
    if args.threads is None and args.worker:
        args.threads = os.cpu_count() or 1
    for k in ("rounds", "min_steps", "warmup", "threads"):
        v = getattr(args, k)
        if v is not None and v < (0 if k == "warmup" else 1):
            ap.error(f"--{k.replace('_', '-')} must be >= {0 if k == 'warmup' else 1}, got {v}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
