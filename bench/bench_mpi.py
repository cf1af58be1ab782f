"""The distributed benchmark: MPI allreduce bandwidth on this machine, and training images/s
with 1, 2 (and, oversubscribed, 4) ranks (needs pip install -e '.[mpi]').

    python bench/bench_mpi.py                                  # allreduce, then lenet5 with 1 and 2 ranks
    python bench/bench_mpi.py --nets lenet5 cifar10-18pct alexnet --ranks 1 2 4 --json mpi.json

allreduce: `mpirun -n 2` runs this file with --allreduce: in-place float32 Allreduce (SUM) of
1-64 MB buffers, the best of --repeats after a warm-up, over shared memory (Open MPI's `sm`,
what ranks of one machine use) and over TCP on the loopback interface (`--mca btl self,tcp
--mca btl_tcp_if_include lo`: the network path without a network). Reported: the buffer's MB
per second of one allreduce (algbw) and the ring's bus bandwidth 2 (N-1)/N x that (busbw,
NCCL's convention: what each link carries).

training: `python -m engine train NET --data synthetic:M --epochs 1` in one process (N = 1,
no MPI) and under `mpirun -n N` (N > 1, each rank 1/N of the machine's cores), on the same
global batch; images/s is the trainer's own epoch figure (the compiling first step left
out), from metrics.jsonl.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES_MB = (1, 4, 16, 64)
# (global batch, training images) per net: a few dozen steps, minutes at most on 2 cores
RUNS = {"lenet5": (128, 128 * 20), "cifar10-18pct": (128, 128 * 10), "alexnet": (32, 32 * 4)}
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def mpirun_cmd(n, transport=None):
    cmd = [shutil.which("mpirun") or os.path.join(os.path.dirname(sys.executable), "mpirun"),
           "-n", str(n), "--oversubscribe"]
    if transport == "tcp":
        cmd += ["--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo"]
    elif transport == "sm":
        cmd += ["--mca", "btl", "self,sm"]
    return cmd


def allreduce_worker(repeats):
    """Run under mpirun: one JSON line from rank 0 with {MB: seconds} (best of `repeats`)."""
    import numpy as np
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    best = {}
    for mb in SIZES_MB:
        buf = np.ones(mb * (1 << 20) // 4, np.float32)
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)          # warm-up: connections, pages
        times = []
        for _ in range(repeats):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            times.append(time.perf_counter() - t0)
        best[mb] = comm.allreduce(min(times), op=MPI.MAX)      # the slowest rank's
    if comm.Get_rank() == 0:
        print(json.dumps({"ranks": comm.Get_size(), "seconds": best}))


def allreduce(n, transport, repeats):
    out = subprocess.run(mpirun_cmd(n, transport) + [sys.executable, __file__, "--allreduce",
                                                      "--repeats", str(repeats)],
                         env=ENV, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(f"mpirun failed: {out.stderr[-2000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    rows = []
    for mb, sec in got["seconds"].items():
        alg = int(mb) * (1 << 20) / sec / 1e9
        rows.append({"transport": transport, "ranks": n, "MB": int(mb), "ms": round(sec * 1e3, 3),
                     "algbw_GBps": round(alg, 2), "busbw_GBps": round(alg * 2 * (n - 1) / n, 2)})
    return rows


def train(net, n):
    batch, images = RUNS[net]
    out = tempfile.mkdtemp(prefix=f"bench-mpi-{net}-{n}-")
    args = [sys.executable, "-m", "engine", "train", os.path.join(ROOT, "nets", f"{net}.yaml"),
            "--data", f"synthetic:{images}", "--epochs", "1", "--batch", str(batch), "--test-freq", "1",
            "--out", out]
    cmd = args if n == 1 else mpirun_cmd(n) + args
    t0 = time.time()
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise SystemExit(f"{net} with {n} rank(s) failed: {done.stderr[-2000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        record = json.loads(f.readline())
    shutil.rmtree(out, ignore_errors=True)
    return {"net": net, "ranks": n, "batch": batch, "images_per_s": record["images_per_s"],
            "wall_s": round(time.time() - t0, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--allreduce", action="store_true", help=argparse.SUPPRESS)     # the mpirun worker
    p.add_argument("--repeats", type=int, default=10, help="allreduce timings per size (best counts)")
    p.add_argument("--nets", nargs="*", default=["lenet5"], choices=sorted(RUNS))
    p.add_argument("--ranks", nargs="*", type=int, default=[1, 2])
    p.add_argument("--json", metavar="FILE", help="write the results here too")
    a = p.parse_args()
    if a.allreduce:
        return allreduce_worker(a.repeats)
    results = {"allreduce": [], "train": []}
    for transport in ("sm", "tcp"):
        for row in allreduce(2, transport, a.repeats):
            results["allreduce"].append(row)
            print(f"allreduce {row['transport']:3s} 2 ranks {row['MB']:3d} MB: {row['ms']:8.2f} ms  "
                  f"algbw {row['algbw_GBps']:6.2f} GB/s  busbw {row['busbw_GBps']:6.2f} GB/s", flush=True)
    for net in a.nets:
        for n in a.ranks:
            row = train(net, n)
            results["train"].append(row)
            print(f"train {net:14s} {n} rank(s), batch {row['batch']}: {row['images_per_s']:8.1f} img/s "
                  f"({row['wall_s']} s in all)", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
