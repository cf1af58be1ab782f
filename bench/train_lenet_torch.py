"""nets/lenet5.yaml trained by our engine and by PyTorch on the same data, same schedule.

    python bench/train_lenet_torch.py [--threads 2]

Both start from the same initial weights (ours, copied into torch: the layouts agree),
see the same batches in the same order with the same augmentation, and use SGD with
momentum 0.9 and weight decay 0.0005 under the net file's step schedule. PyTorch's SGD
folds weight decay into the gradient before momentum (v = m v + g + wd w; w -= lr v),
which equals the paper's rule (ours) while lr is constant and differs slightly at the
steps. Prints final validation accuracy and wall time of each.
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine.train import Trainer, topk_errors  # noqa: E402


def torch_lenet(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def train_torch(torch, trainer, threads):
    torch.set_num_threads(threads)
    model = torch_lenet(torch)
    ours = trainer.net.state_dict()
    names = ["conv1", "conv2", "fc3", "fc4", "fc5"]
    convs = [m for m in model if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        for name, m in zip(names, convs):
            m.weight.copy_(torch.from_numpy(ours[f"{name}.weight"]))
            m.bias.copy_(torch.from_numpy(ours[f"{name}.bias"]))
    s = trainer.settings
    opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])
    loss_fn = torch.nn.CrossEntropyLoss()
    src, pre, sched = trainer.source, trainer.pre, trainer.schedule
    t0 = time.time()
    for epoch in range(s["epochs"]):
        order_rng = np.random.default_rng([s["seed"], epoch, 0])
        aug_rng = np.random.default_rng([s["seed"], epoch, 1])
        for g in opt.param_groups:
            g["lr"] = sched.lr(epoch)
        model.train()
        for raw, labels in src.batches("train", s["batch"], rng=order_rng):
            x = torch.from_numpy(pre.train(raw, aug_rng))
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), torch.from_numpy(labels)).backward()
            opt.step()
    wall = time.time() - t0
    model.eval()
    wrong, n = 0, 0
    with torch.no_grad():
        for raw, labels in src.batches("val", 256):
            probs = torch.softmax(model(torch.from_numpy(pre.test(raw))), 1).numpy()
            wrong += topk_errors(probs, labels)[0]
            n += len(labels)
    return 1 - wrong / n, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/bench-lenet-ours")
    args = ap.parse_args()
    import torch

    net_file = os.path.join(ROOT, "nets", "lenet5.yaml")
    # warm-up: compile (or load from the cache) every kernel before timing
    Trainer(net_file, epochs=1, out=args.out + "-warmup", log=lambda *a: None).run()
    trainer = Trainer(net_file, out=args.out, log=lambda *a: None)
    t0 = time.time()
    result = trainer.run()
    ours_wall = time.time() - t0
    ours_train = sum(m["time"] for m in result["metrics"])   # epochs only, as timed for torch
    ours_acc = 1 - result["metrics"][-1]["val_top1"]
    fresh = Trainer(os.path.join(ROOT, "nets", "lenet5.yaml"), out=args.out + "-unused", log=lambda *a: None)
    torch_acc, torch_wall = train_torch(torch, fresh, args.threads)
    epochs = trainer.settings["epochs"]
    print(f"lenet5 on digits, {epochs} epochs, batch {trainer.settings['batch']}, {os.cpu_count()} CPUs")
    print(f"ours   : val accuracy {ours_acc:.2%}, training {ours_train:.1f}s "
          f"({ours_wall:.1f}s with validation every epoch and checkpoints)")
    print(f"pytorch: val accuracy {torch_acc:.2%}, training {torch_wall:.1f}s [torch {torch.__version__}]")
    print(f"speed ratio ours/torch (training time): {torch_wall / ours_train:.2f}x")


if __name__ == "__main__":
    main()
