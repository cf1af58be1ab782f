"""Per-input `lr_w` / `mom_w` lists on CUDA (the simulator in CI): the row-by-row updates of
each input's columns on the device give the CPU's parameters and velocities."""
import numpy as np
from helpers import close

import engine
from engine.solver import SGD

NET = ("name: t\ninput: {shape: [2, 3, 3]}\nlayers:\n"
       "  - {name: a, type: fc, outputs: 4, neuron: tanh}\n"
       "  - name: f\n    type: fc\n    inputs: [data, a]\n    outputs: 3\n"
       "    lr_w: [0.5, 2]\n    mom_w: [0.3, 0.8]\n"
       "  - {name: prob, type: softmax}\n")


def test_sgd_steps_match_cpu():
    cpu = engine.load(NET, seed=0)
    gpu = engine.load(NET, seed=0, device="cuda")
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(np.float32)
    labels = np.array([0, 2])
    opts = [SGD.for_net(n, momentum=0.9, weight_decay=0.001) for n in (cpu, gpu)]
    for _ in range(2):
        for opt, net in zip(opts, (cpu, gpu)):
            opt.step(net.loss_and_grads(x, labels, train=False)[1], 0.1)
    want, got = cpu.state_dict(), gpu.state_dict()
    assert not np.array_equal(want["f.weight"], engine.load(NET, seed=0).state_dict()["f.weight"])
    for k in want:
        close(got[k], want[k], rtol=1e-4, atol=1e-6)
    close(opts[1].state_arrays()["velocity/f.weight"], opts[0].state_arrays()["velocity/f.weight"],
          rtol=1e-4, atol=1e-6)
