"""Training, evaluation and the run folder.

Every epoch's randomness (data order, augmentation, dropout) comes from generators seeded
by (seed, epoch), and their states are saved with a mid-epoch checkpoint, so a resumed run
repeats the uninterrupted one bit for bit.
"""
import json
import os
import signal
import sys
import time

import numpy as np

from engine import checkpoint, finite, settings as settings_mod
from engine.config import parse_checkpoint_net, parse_net
from engine.datasets import DataError, open_source
from engine.datasets.augment import Preprocess
from engine.errors import ConfigError
from engine.net import Net
from engine.solver import SGD

FORMAT = 1


class Progress:
    """One self-rewriting line per epoch on a terminal; silent otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.live = hasattr(stream, "isatty") and stream.isatty()

    def update(self, epoch, epochs, done, total, loss, rate, elapsed):
        if not self.live:
            return
        frac = done / max(total, 1)
        bar = ("=" * int(frac * 24)).ljust(24)
        eta = (total - done) * elapsed / max(done, 1)
        self.stream.write(f"\repoch {epoch}/{epochs} [{bar}] {frac:4.0%} loss {loss:.4f} "
                          f"{rate:6.0f} img/s ETA {eta:5.0f}s ")
        self.stream.flush()

    def close(self):
        if self.live:
            self.stream.write("\r" + " " * 79 + "\r")
            self.stream.flush()


def topk_errors(probs, labels, k=5):
    """(top-1 error count, top-k error count) for a batch."""
    top1 = probs.argmax(1)
    kk = min(k, probs.shape[1])
    topk = np.argpartition(-probs, kk - 1, axis=1)[:, :kk]
    return int(np.sum(top1 != labels)), int(np.sum(~np.any(topk == labels[:, None], axis=1)))


def evaluate(net, source, pre, batch=128, split="val", multiview=False):
    """{"loss", "top1", "top5", "n"} over a split; multiview averages the ten views.

    A net whose cost does not classify (sum2) gets its own cost as the loss, and NaN top-k."""
    total_loss, e1, e5, n = 0.0, 0, 0, 0
    if not net.classifies:
        for raw, labels in source.batches(split, batch):
            total_loss += net.loss(pre.test(raw), labels) * len(labels)
            n += len(labels)
        return {"loss": total_loss / n if n else float("nan"), "top1": float("nan"),
                "top5": float("nan"), "n": n}
    for raw, labels in source.batches(split, batch):
        if multiview:
            probs = np.mean([net.forward(v) for v in pre.views(raw)], axis=0)
        else:
            probs = net.forward(pre.test(raw))
        # float32 probabilities bottom out near 1e-45: a loss of at most ~103 per image
        p = np.maximum(probs[np.arange(len(labels)), labels].astype(np.float64), 1e-45)
        loss = float(-np.mean(np.log(p)))
        a, b = topk_errors(probs, labels)
        total_loss += loss * len(labels)
        e1, e5, n = e1 + a, e5 + b, n + len(labels)
    if n == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "n": 0}
    return {"loss": total_loss / n, "top1": e1 / n, "top5": e5 / n, "n": n}


def _net_text(spec):
    if spec.text is not None:
        return spec.text
    import yaml
    return yaml.safe_dump(json.loads(json.dumps(spec.data)), sort_keys=False)


class LossTally:
    """The epoch's mean training loss."""

    def __init__(self):
        self.total, self.seen = 0.0, 0

    def add(self, loss, n):
        self.total += loss * n
        self.seen += n

    @property
    def mean(self):
        return self.total / max(self.seen, 1)


class StopFlag:
    """First SIGINT (Ctrl-C) or SIGTERM: finish the batch, save, stop. A second: stop at once.

    Stopping at once raises KeyboardInterrupt; a checkpoint being written then is dropped
    whole (see checkpoint._atomic_write), so the previous one stays the newest."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.stop = False
        self.signum = None
        self._old = {}

    @property
    def name(self):
        return signal.Signals(self.signum).name if self.signum else "a stop request"

    @property
    def exit_code(self):
        """128 + the signal, as a shell reports a process ended by it (130, 143)."""
        return 128 + int(self.signum or signal.SIGINT)

    def __enter__(self):
        def handler(signum, frame):
            if self.stop:
                raise KeyboardInterrupt
            self.stop, self.signum = True, signum
            print(f"\n{signal.Signals(signum).name}: stopping after this batch "
                  "(Ctrl-C again to abort without saving it)", file=sys.stderr)
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, handler)
            except ValueError:   # not the main thread: no handler, signals act as usual
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        return False


class Trainer:
    def __init__(self, net_source=None, data=None, epochs=None, batch=None, lr=None, seed=None,
                 out=None, resume=None, test_freq=None, log=print, stop_after=None, device="cpu", plugins=False):
        self.log = log
        self.resume_meta, arrays, from_checkpoint = None, None, False
        self.last_checkpoint = None
        if resume is not None:
            skipped = []
            arrays, self.resume_meta = checkpoint.load(resume, skipped)
            for path, why in skipped:
                log(f"passing over a damaged checkpoint: {why}")
            self.last_checkpoint = self.resume_meta["path"]
            log(f"resuming from {self.last_checkpoint}")
            if net_source is None:
                net_source = self.resume_meta.get("net_text")
                if not isinstance(net_source, str):
                    raise checkpoint.CheckpointError(f"{self.last_checkpoint}: holds no net text; "
                                                     "give the net file too")
                from_checkpoint = True
        if net_source is None:
            raise ConfigError("no net given")
        self.spec = (parse_checkpoint_net(self.resume_meta, plugins) if from_checkpoint
                     else parse_net(net_source, plugins=plugins))
        overrides = {"data": data, "epochs": epochs, "batch": batch, "lr": lr, "seed": seed,
                     "test_freq": test_freq}
        base_train = self.spec.train
        if self.resume_meta is not None:
            base_train = self.resume_meta["settings"]
        self.settings = settings_mod.resolve(base_train, overrides, file=self.spec.file)
        s = self.settings
        if not s["data"]:
            raise DataError(
                f"no training data: `{self.spec.name}` has no `train.data` and no --data was given.\n"
                "Give --data ROOT for an ImageNet-layout folder (ROOT/train/<class>/*.jpg, ROOT/val/<class>/*.jpg),"
                " a cuda-convnet batch folder, `digits`, or `--data synthetic` for a smoke run.")
        self.net = Net(self.spec, seed=s["seed"])
        # synthetic data takes the net's class count; real data must match it
        self.source = open_source(s["data"], self.net.input_shape, seed=s["seed"],
                                  num_classes=self.net.num_classes)
        if self.net.classifies and self.source.num_classes != self.net.num_classes:
            raise DataError(f"the data has {self.source.num_classes} classes but the net's output "
                            f"layer has {self.net.num_classes}: set `outputs: {self.source.num_classes}` "
                            "on the last fc layer")
        self.schedule = settings_mod.make_schedule(s)
        aug = dict(self.source.default_augment)
        aug.update({k: v for k, v in s["augment"].items() if v is not None})
        self.augment = aug
        if arrays is not None:
            if "mean" not in arrays:
                raise checkpoint.CheckpointError(f"{self.last_checkpoint}: has no mean image: "
                                                 "not a training checkpoint of this engine")
            mean = arrays["mean"]
        else:
            mean = self.source.mean_image()
        pca = self.source.pca() if aug.get("pca", 0.0) > 0 and self.source.is_color else None
        self.pre = Preprocess(self.net.input_shape, mean, scale=aug["scale"], crop=aug["crop"],
                              flip=aug["flip"], pca=aug["pca"] if pca is not None else 0.0, pca_basis=pca,
                              shift=aug.get("shift", 0))
        self.metrics = []
        self.epoch, self.batch_in_epoch = 0, 0
        self.rng_states = None
        self.partial_loss = None     # [loss sum, images] of a stopped epoch's finished batches
        self.net.to(device)
        self.net.check_memory(s["batch"], train=True)     # refused before the first step
        self.solver = SGD.for_net(self.net, s["momentum"], s["weight_decay"])
        if arrays is not None:
            self._restore(arrays, self.resume_meta)
        self.run_dir = out or (os.path.dirname(self.resume_meta["path"]) if self.resume_meta else
                               os.path.join("runs", f"{self.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"))
        self.stop_after = stop_after   # for tests: stop as if Ctrl-C after this many batches

    # ---- state ----------------------------------------------------------------
    def _restore(self, arrays, meta):
        try:
            self.net.load_state_dict({k[len("param/"):]: v for k, v in arrays.items()
                                      if k.startswith("param/")})
            self.solver.load_state_arrays(arrays)
        except (KeyError, ValueError) as e:
            raise checkpoint.CheckpointError(f"{meta['path']}: does not fit net '{self.net.name}': "
                                             f"{e.args[0] if e.args else e}") from None
        self.schedule.load_state(meta["schedule"])
        self.metrics = list(meta["metrics"])
        self.epoch, self.batch_in_epoch = meta["epoch"], meta["batch"]
        self.rng_states = meta.get("rng")
        self.partial_loss = meta.get("partial_loss")

    def save(self, rng_states=None):
        arrays = {f"param/{k}": v for k, v in self.net.state_dict().items()}
        arrays.update(self.solver.state_arrays())
        arrays["mean"] = self.pre.mean
        meta = {
            "format": FORMAT, "net_text": _net_text(self.spec), "net_name": self.spec.name,
            "net_file": self.spec.file, "plugin_dir": self.spec.plugin_dir, "epoch": self.epoch, "batch": self.batch_in_epoch,
            "settings": self.settings, "schedule": self.schedule.state(), "rng": rng_states,
            "preprocess": self.pre.to_json(), "class_names": self.source.class_names,
            "num_classes": self.source.num_classes, "metrics": self.metrics,
            "partial_loss": self.partial_loss if self.batch_in_epoch else None,
        }
        try:
            path = checkpoint.save(self.run_dir, checkpoint.tag_for(self.epoch, self.batch_in_epoch),
                                   arrays, meta)
        except checkpoint.CheckpointWriteError as e:
            kept = (f"the previous checkpoint {self.last_checkpoint} is kept" if self.last_checkpoint
                    else "no checkpoint of this run was written yet")
            raise checkpoint.CheckpointWriteError(f"{e}; {kept}; training stopped") from None
        self.last_checkpoint = path
        metrics_path = os.path.join(self.run_dir, "metrics.jsonl")
        try:
            checkpoint.write_text(metrics_path, "".join(json.dumps(m) + "\n" for m in self.metrics))
        except OSError as e:
            raise checkpoint.CheckpointWriteError(f"cannot write {metrics_path}: {e.strerror or e} "
                                                  f"(checkpoint {path} was saved); training stopped") from None
        return path

    # ---- the loop ---------------------------------------------------------------
    def run(self):
        """Train to the last epoch, or until a stop signal; returns {"stopped", "checkpoint",
        "metrics", "signal"}. Holds the run folder's lock throughout."""
        with checkpoint.RunLock(self.run_dir):
            checkpoint.remove_temporaries(self.run_dir)     # left by a save that was killed
            existing = checkpoint.list_checkpoints(self.run_dir)
            if self.last_checkpoint is None and existing:
                newest = existing[-1]
                raise checkpoint.CheckpointError(
                    f"{self.run_dir} already holds checkpoints of a run (newest {os.path.basename(newest)}); "
                    f"continue it with --resume {self.run_dir}, or choose another --out")
            return self._run()

    def _run(self):
        s = self.settings
        self.log(f"training {self.spec.name} ({self.net.num_params:,} parameters) on {self.source.name}: "
                 f"{self.source.num_train} train / {self.source.num_val} val images, {s['epochs']} epochs, "
                 f"batch {s['batch']}, lr {s['lr']:g}; run folder {self.run_dir}")
        progress = Progress()
        seed = s["seed"]
        steps_taken = 0
        path = self.last_checkpoint
        with StopFlag() as flag:
            while self.epoch < s["epochs"]:
                epoch = self.epoch
                order_rng = np.random.default_rng([seed, epoch, 0])
                aug_rng = np.random.default_rng([seed, epoch, 1])
                self.net.rng = np.random.default_rng([seed, epoch, 2])
                skip = self.batch_in_epoch
                if skip and self.rng_states:
                    aug_rng.bit_generator.state = self.rng_states["augment"]
                    self.net.rng.bit_generator.state = self.rng_states["dropout"]
                n_batches = -(-self.source.num_train // s["batch"])
                t0, tally = time.time(), LossTally()
                if skip and self.partial_loss:      # the stopped part of this epoch counts too
                    tally.total, tally.seen = self.partial_loss
                for b, (raw, labels) in enumerate(self.source.batches("train", s["batch"], rng=order_rng)):
                    if b < skip:
                        continue
                    x = self.pre.train(raw, aug_rng)
                    tally.add(self._step(x, labels, self.schedule.lr(epoch, b / n_batches), epoch, b), len(labels))
                    steps_taken += 1
                    self.batch_in_epoch = b + 1
                    elapsed = time.time() - t0
                    progress.update(epoch + 1, s["epochs"], b + 1, n_batches, tally.mean,
                                    tally.seen / max(elapsed, 1e-9), elapsed)
                    if flag.stop or (self.stop_after is not None and steps_taken >= self.stop_after):
                        progress.close()
                        self.partial_loss = [tally.total, tally.seen]
                        path = self.save({"augment": aug_rng.bit_generator.state,
                                          "dropout": self.net.rng.bit_generator.state})
                        self.log(f"stopped by {flag.name} in epoch {epoch + 1} after batch {b + 1}; saved "
                                 f"{path}; resume with: python -m engine train --resume {self.run_dir}")
                        return {"stopped": True, "checkpoint": path, "signal": flag.signum,
                                "exit_code": flag.exit_code}
                progress.close()
                elapsed = time.time() - t0
                self.epoch, self.batch_in_epoch, self.rng_states = epoch + 1, 0, None
                record = {"epoch": epoch + 1, "train_loss": tally.mean,
                          "lr": self.schedule.lr(epoch, 0.999999), "time": round(elapsed, 3),
                          "images_per_s": round(tally.seen / max(elapsed, 1e-9), 1)}
                if (epoch + 1) % s["test_freq"] == 0 or epoch + 1 == s["epochs"]:
                    val = evaluate(self.net, self.source, self.pre, batch=s["batch"])
                    record["val_loss"] = val["loss"]
                    if self.net.classifies:
                        record.update({"val_top1": val["top1"], "val_top5": val["top5"]})
                    self.schedule.observe(val["top1"] if self.net.classifies else val["loss"])
                self.metrics.append(record)
                self.log(self._line(record))
                path = self.save()
                if flag.stop and self.epoch < s["epochs"]:     # asked during validation or saving
                    self.log(f"stopped by {flag.name} after epoch {self.epoch}; saved {path}; resume "
                             f"with: python -m engine train --resume {self.run_dir}")
                    return {"stopped": True, "checkpoint": path, "signal": flag.signum,
                            "exit_code": flag.exit_code}
        if self.source.skipped:
            self.log(f"skipped {self.source.skipped} unreadable image(s); see the log above for which")
        return {"stopped": False, "checkpoint": path if self.metrics else None, "metrics": self.metrics}

    def _step(self, x, labels, lr, epoch, batch):
        """One SGD step on the net's backend; returns the batch's mean loss. A non-finite
        loss or gradient stops training before the update, naming the layer where it began."""
        rng_state = self.net.rng.bit_generator.state
        with np.errstate(all="ignore"):      # overflow is caught below, with the layer named
            loss, grads = self.net.loss_and_grads(x, labels, train=True)
        bad = None if np.isfinite(loss) else "loss"
        bad = bad or self.net.backend.first_nonfinite(grads)
        if bad:
            what = f"the loss became {loss}" if bad == "loss" else "a gradient became non-finite"
            with np.errstate(all="ignore"):
                where = finite.locate(self.net, x, labels, rng_state)
            what += f" (first non-finite: {where})" if where else ""
            raise finite.NonFiniteError(finite.message(what, f"epoch {epoch + 1}, batch {batch + 1}",
                                                       lr, self.last_checkpoint))
        self.solver.step(grads, lr)
        return loss

    def _line(self, r):
        val = ""
        if "val_loss" in r:
            val = f"  val loss {r['val_loss']:.4f}"
        if "val_top1" in r:
            val += f"  top-1 {r['val_top1']:6.2%}  top-5 {r['val_top5']:6.2%}"
        return (f"epoch {r['epoch']:3d}  train loss {r['train_loss']:.4f}{val}  lr {r['lr']:.3g}  "
                f"{r['time']:.1f}s  ({r['images_per_s']:.0f} img/s)")
