"""Training, evaluation and the run folder.

Every epoch's randomness (data order, augmentation, dropout) comes from generators seeded
by (seed, epoch), and their states are saved with a mid-epoch checkpoint, so a resumed run
repeats the uninterrupted one bit for bit.
"""
import contextlib
import json
import os
import shlex
import signal
import sys
import time

import numpy as np

from engine import checkpoint, columns, compile_ahead, devices, distributed, finite, settings as settings_mod
from engine.config import class_count_message, parse_checkpoint_net, parse_net
from engine.datasets import DataError, open_source
from engine.datasets.augment import Preprocess, multiview_problem
from engine.errors import ConfigError
from engine.net import Net
from layers import threads

FORMAT = 1


def plural(n, word, many=None):
    """'1 epoch', '20 epochs'."""
    return f"{n} {word}" if n == 1 else f"{n} {many or word + 's'}"


class Progress:
    """Training progress on `stream` (stderr), never on the log.

    The run's first step compiles the Numba kernels (seconds to minutes from a cold cache):
    it gets a line of its own, timed, and is left out of the rates, as is any later compiling
    (a kernel first called at a later step, e.g. the identity's loops once a bias is non-zero:
    layers.threads.COMPILING). Then, on a terminal, a
    tqdm bar per epoch (images, img/s, ETA, loss); elsewhere (a file, a pipe) the same as a
    plain line every `interval` seconds."""

    INTERVAL = 10.0

    def __init__(self, stream=None, interval=None, live=None, redraw=0.5):
        self.stream = sys.stderr if stream is None else stream
        self.redraw = redraw            # the bar's least seconds between frames
        self.live = (hasattr(self.stream, "isatty") and self.stream.isatty()) if live is None else live
        self.interval = self.INTERVAL if interval is None else interval
        self.bar = None
        self.first_step = None          # (seconds, images) of the run's first step
        self.first_epoch = None         # the (0-based) epoch it was in
        self._t_first = None
        self._compiled0 = 0.0           # the compile clock where this epoch's rate starts
        self._compiled_first = False    # whether the first step compiled a kernel

    def _write(self, text):
        self.stream.write(text)
        self.stream.flush()

    def epoch(self, epoch, epochs, done, total):
        """Epoch `epoch` (1-based) of `epochs` starts with `done` of its `total` images done."""
        self.desc, self.total = f"epoch {epoch}/{epochs}", total
        self.t0, self.done0, self.last = time.time(), done, time.time()
        self._compiled0 = threads.COMPILING.seconds()
        if self.first_step is None:
            self.first_epoch = epoch - 1
            # said when the first step's first kernel compile starts: a run that finds every
            # kernel in the on-disk cache compiles nothing, and says nothing of compiling
            threads.COMPILING.add_hook(self._compiling_starts)
            self._t_first = time.time()
        else:
            self._open(done)

    def _compiling_starts(self):
        """Called inside the first step's first compile (on the thread compiling)."""
        self._compiled_first = True
        self._write("compiling kernels (first run only)... " if self.live
                    else "compiling kernels (first run only)...\n")

    def _open(self, done):
        if not self.live:
            return
        from tqdm import tqdm
        self.bar = tqdm(total=self.total, initial=done, desc=self.desc, unit="img", file=self.stream,
                        leave=False, dynamic_ncols=True, mininterval=self.redraw, smoothing=0.1)

    def step(self, done, loss):
        """After a step: `done` images of the epoch, the epoch's mean loss so far."""
        now = time.time()
        if self.first_step is None:
            seconds = now - self._t_first
            self.first_step = (seconds, done - self.done0)
            threads.COMPILING.remove_hook(self._compiling_starts)
            self._write(f"done in {seconds:.1f}s\n" if self.live and self._compiled_first
                        else f"first step done in {seconds:.1f}s\n")
            self.t0, self.done0, self.last = now, done, now
            self._compiled0 = threads.COMPILING.seconds()
            self._open(done)
            return
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            self.bar.update(done - self.bar.n)
        elif not self.live and now - self.last >= self.interval:
            self.last = now
            rate = (done - self.done0) / max(now - self.t0, 1e-9)
            eta = f"{(self.total - done) / rate:.0f}s" if rate > 0 else "?"
            self._write(f"{self.desc}  {done}/{self.total} images ({done / max(self.total, 1):.0%})  "
                        f"loss {loss:.4f}  {rate:.0f} img/s  ETA {eta}\n")

    def excluded(self, epoch):
        """(seconds, images) to leave out of epoch `epoch`'s (0-based) rate, the one that just
        ended: the run's first step if it was in it, and the seconds compiled since (or since
        the epoch began)."""
        compiled = threads.COMPILING.seconds() - self._compiled0
        if self.first_step and self.first_epoch == epoch:
            return self.first_step[0] + compiled, self.first_step[1]
        return compiled, 0

    def close(self):
        threads.COMPILING.remove_hook(self._compiling_starts)      # a run that stopped in its first step
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def duration(seconds):
    """'31.4s', '12m 05s', '2h 03m'."""
    if seconds < 120:
        return f"{seconds:.1f}s"
    m, sec = divmod(int(round(seconds)), 60)
    return f"{m}m {sec:02d}s" if m < 60 else f"{m // 60}h {m % 60:02d}m"


def best_record(metrics):
    """The validated epoch's record with the lowest top-1 error (the loss for a net that does
    not classify); the earliest on a tie; None if no epoch was validated."""
    key = "val_top1" if any("val_top1" in m for m in metrics) else "val_loss"
    scored = [m for m in metrics if key in m and m[key] == m[key]]     # NaN never wins
    return min(scored, key=lambda m: m[key]) if scored else None


def device_line(net):
    """'device: cuda (NAME)' or 'device: cpu (why not CUDA)'."""
    if net.device == "cuda":
        try:
            from numba import cuda
            name = cuda.get_current_device().name
            name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:     # the name is a courtesy; the device works
            name = "device 0"
        return f"device: cuda ({name})"
    try:
        from engine.cuda_backend import available
    except ImportError:
        return "device: cpu (numba's CUDA target is not installed: pip install -e '.[gpu]')"
    return "device: cpu (no CUDA device)" if not available() else "device: cpu"


def topk_errors(probs, labels, k=5):
    """(top-1 error count, top-k error count) for a batch."""
    top1 = probs.argmax(1)
    kk = min(k, probs.shape[1])
    topk = np.argpartition(-probs, kk - 1, axis=1)[:, :kk]
    return int(np.sum(top1 != labels)), int(np.sum(~np.any(topk == labels[:, None], axis=1)))


def evaluate(net, source, pre, batch=128, split="val", multiview=False, world=None):
    """{"loss", "top1", "top5", "n"} over a split; multiview averages the ten views.

    A net whose cost does not classify (sum2) gets its own cost as the loss, and NaN top-k.
    Multiview on data that should not be mirrored (digits) is a DataError saying why.
    With a `world` (engine.distributed) each rank reads its share of every batch and the
    counts are summed over the ranks: the figures are the single process's."""
    problem = multiview_problem(source, pre) if multiview else None
    if problem:
        raise DataError(problem)
    part = None if world is None else world.part
    batches = (b for b in source.batches(split, batch, part=part) if len(b[1]))   # a share may be empty
    heads = [(node.name, w) for node, w in net.cost_heads]
    if not net.classifies:
        tallies = _loss_tallies(net, batches, pre)
    elif heads != [(net.output_layer.name, 1.0)]:
        tallies = _head_tallies(net, batches, pre, multiview)
    else:
        tallies = _output_tallies(net, batches, pre, multiview)
    total_loss, e1, e5, n = tallies if world is None else world.sum(tallies)
    if n == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "n": 0}
    top1, top5 = (e1 / n, e5 / n) if net.classifies else (float("nan"), float("nan"))
    return {"loss": total_loss / n, "top1": top1, "top5": top5, "n": int(n)}


def _loss_tallies(net, batches, pre):
    """[loss sum, 0, 0, n] of a net that does not classify: its own cost."""
    total_loss, n = 0.0, 0
    for raw, labels in batches:
        total_loss += net.loss(pre.test(raw), labels) * len(labels)
        n += len(labels)
    return [total_loss, 0, 0, n]


def _output_tallies(net, batches, pre, multiview):
    """[loss sum, top-1 errors, top-5 errors, n] of the output's cross-entropy."""
    total_loss, e1, e5, n = 0.0, 0, 0, 0
    for raw, labels in batches:
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
    return [total_loss, e1, e5, n]


def _head_tallies(net, batches, pre, multiview):
    """_output_tallies for a net whose loss is more than its output's cross-entropy (auxiliary
    heads, a coeff): the loss is the net's, top-k errors are the output's."""
    total_loss, e1, e5, n = 0.0, 0, 0, 0
    for raw, labels in batches:
        views = pre.views(raw) if multiview else [pre.test(raw)]
        results = [net.loss_and_output(v, labels) for v in views]
        probs = np.mean([p for _, p in results], axis=0)
        a, b = topk_errors(probs, labels)
        total_loss += float(np.mean([loss for loss, _ in results])) * len(labels)
        e1, e5, n = e1 + a, e5 + b, n + len(labels)
    return [total_loss, e1, e5, n]


def _net_text(spec):
    if spec.text is not None:
        return spec.text
    import yaml
    return yaml.safe_dump(json.loads(json.dumps(spec.data)), sort_keys=False)


def _quiet(*args, **kwargs):
    """The log of an MPI rank other than 0."""


class _NullStream:
    """Progress of an MPI rank other than 0: nowhere."""

    def write(self, text):
        pass

    def flush(self):
        pass


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
    progress = None     # a Progress to report on (default: a new one on stderr per run)

    def __init__(self, net_source=None, data=None, epochs=None, batch=None, lr=None, seed=None,
                 out=None, resume=None, test_freq=None, log=print, stop_after=None, device="cpu", plugins=False,
                 keep=None, overrides=None, optimizer=None, world=None):
        # world (engine.distributed.World): data-parallel over MPI ranks; rank 0 alone speaks and writes
        self.world = world
        self.log = log if world is None or world.is_root else _quiet
        log = self.log
        self.device_asked = device
        self.resume_meta, arrays, from_checkpoint = None, None, False
        self.last_checkpoint = None
        if world is not None:
            world.share_threads()       # before the net picks its threading
        if resume is not None:
            skipped = []
            if world is None:
                arrays, self.resume_meta = checkpoint.load(resume, skipped)
            else:        # rank 0 reads it: the other ranks need no copy of the run folder
                arrays, self.resume_meta, skipped = world.bcast(
                    tuple(checkpoint.load(resume, skipped)) + (skipped,) if world.is_root else None)
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
        # overrides: `--set LAYER.KEY=VALUE` (engine.config.parse_net); a resumed run's own come back
        self.spec = (parse_checkpoint_net(self.resume_meta, plugins, overrides=overrides) if from_checkpoint
                     else parse_net(net_source, plugins=plugins, overrides=overrides))
        overrides = {"data": data, "epochs": epochs, "batch": batch, "lr": lr, "seed": seed,
                     "test_freq": test_freq, "keep": keep, "optimizer": optimizer}
        base_train = self.spec.train
        if self.resume_meta is not None:      # its settings, with this command's `--set train.KEY=...`
            base_train = dict(self.resume_meta["settings"], **self.spec.train_overrides)
        self.settings = settings_mod.resolve(base_train, overrides, file=self.spec.file)
        s = self.settings
        if not s["data"]:
            raise DataError(
                f"no training data: `{self.spec.name}` has no `train.data` and no --data was given.\n"
                "Give --data ROOT for an ImageNet-layout folder (ROOT/train/<class>/*.jpg, ROOT/val/<class>/*.jpg),"
                " a cuda-convnet batch folder, `digits`, or `--data synthetic` for a smoke run.")
        settings_mod.apply_cost_settings(self.spec, s, file=self.spec.file)   # e.g. label_smoothing
        self.net = Net(self.spec, seed=s["seed"])
        if world is not None:
            self._check_distributable()
        # synthetic data takes the net's class count; real data must match it
        self.source = open_source(s["data"], self.net.input_shape, seed=s["seed"],
                                  num_classes=self.net.num_classes)
        if self.net.classifies and self.source.num_classes != self.net.num_classes:
            raise DataError(class_count_message(
                self.spec, self.source.num_classes, self.source.name, self.net.num_classes,
                where=self.spec.file or (self.resume_meta or {}).get("net_file")))
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
            mean = self._on_root(self.source.mean_image)
        pca = self._on_root(self.source.pca) if aug.get("pca", 0.0) > 0 and self.source.is_color else None
        self.pre = Preprocess(self.net.input_shape, mean, scale=aug["scale"], crop=aug["crop"],
                              flip=aug["flip"], pca=aug["pca"] if pca is not None else 0.0, pca_basis=pca,
                              shift=aug.get("shift", 0))
        self.metrics = []
        self.epoch, self.batch_in_epoch = 0, 0
        self.rng_states = None
        self.partial_loss = None     # [loss sum, images] of a stopped epoch's finished batches
        if world is not None and devices.resolve(device) == "cuda":
            world.select_gpu()
        self.net.to(device)
        share = s["batch"] if world is None else -(-s["batch"] // world.size)
        self.net.check_memory(share, train=True)     # refused before the first step
        self.solver = settings_mod.make_optimizer(s, self.net)
        self.exchange = None if world is None else distributed.GradientExchange(
            world, {k: v.shape for k, v in self.net.parameters().items()}, self.net.backend)
        if world is not None:       # each bucket's allreduce starts during backward
            self.net.executor.on_grads = self.exchange.add
        if arrays is not None:
            self._restore(arrays, self.resume_meta)
        self.run_dir = out or (os.path.dirname(self.resume_meta["path"]) if self.resume_meta else
                               os.path.join("runs", f"{self.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"))
        self.stop_after = stop_after   # for tests: stop as if Ctrl-C after this many batches
        self._stepped = False          # whether this process has taken a step (the first compiles)

    def _on_root(self, compute):
        """compute() in one process; over MPI on rank 0, its result sent to every rank (the
        mean image, the colour basis: statistics one pass over the data gives)."""
        if self.world is None:
            return compute()
        return self.world.bcast(compute() if self.world.is_root else None)

    def _check_distributable(self):
        """Over MPI: the layers that use batch statistics (Layer.whole_batch) sum them over the
        ranks (Layer.batch_sum), so they see the global batch, and the net runs its layers in
        one order (threading picks no concurrent columns): every rank then makes those
        collectives in the same sequence. A layer that keeps state without batch statistics
        would update it from its rank's share alone: refused."""
        for node in self.net.layers:
            if node.layer.whole_batch:
                node.layer.batch_sum = self.world.batch_sum
            elif columns.needs_whole_batch(node.layer):
                raise ConfigError(f"keeps state updated from each batch, which data-parallel training over "
                                  f"{self.world.size} ranks would update from each rank's share alone; that "
                                  "is not supported: train this net in one process",
                                  file=self.spec.file, layer=node.name)
        self.net.threading = self.net.threading        # chosen again, with the batch sums set

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
        if self.world is not None and not self.world.is_root:
            return None          # every rank holds the same weights: rank 0 writes them
        arrays = {f"param/{k}": v for k, v in self.net.state_dict().items()}
        arrays.update(self.solver.state_arrays())
        arrays["mean"] = self.pre.mean
        meta = {
            "format": FORMAT, "net_text": _net_text(self.spec), "net_name": self.spec.name,
            "net_file": self.spec.file, "plugin_dir": self.spec.plugin_dir, "epoch": self.epoch, "batch": self.batch_in_epoch,
            "overrides": self.spec.overrides,    # --set on the net: applied again to net_text on loading
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
        "metrics", "signal"}. Holds the run folder's lock throughout (over MPI, rank 0 alone
        touches the run folder)."""
        if self.world is not None:
            with self.world.kernels():
                return self._run() if not self.world.is_root else self._run_locked()
        return self._run_locked()

    def _run_locked(self):
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
        if self.resume_meta is not None and self.epoch >= s["epochs"] and not self.batch_in_epoch:
            self.log(self._finished_already())
            return {"stopped": False, "checkpoint": self.last_checkpoint, "metrics": self.metrics,
                    "finished_already": True}
        self.log(f"training {self.spec.name} ({self.net.num_params:,} parameters) on {self.source.name}: "
                 f"{self.source.num_train} train / {self.source.num_val} val images, "
                 f"{plural(s['epochs'], 'epoch')}, batch {s['batch']}, lr {s['lr']:g}; "
                 f"run folder {self.run_dir}")
        if self.device_asked != "cpu":
            self.log(device_line(self.net))
        speaks = self.world is None or self.world.is_root
        progress = self.progress or Progress(stream=None if speaks else _NullStream())
        started, first_epoch = time.time(), self.epoch
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
                progress.epoch(epoch + 1, s["epochs"], min(skip * s["batch"], self.source.num_train),
                               self.source.num_train)
                for b, raw, labels, rows in self._train_batches(order_rng):
                    if b < skip:
                        continue
                    lr = self.schedule.lr(epoch, b / n_batches)
                    if self.world is None:
                        tally.add(self._step(self.pre.train(raw, aug_rng), labels, lr, epoch, b), len(labels))
                        stop = flag.stop
                    else:
                        loss, stop = self._shared_step(raw, labels, rows, aug_rng, lr, epoch, b, flag)
                        tally.add(loss, rows[1])
                    steps_taken += 1
                    self.batch_in_epoch = b + 1
                    progress.step(min((b + 1) * s["batch"], self.source.num_train), tally.mean)
                    if stop or (self.stop_after is not None and steps_taken >= self.stop_after):
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
                slow_s, slow_n = progress.excluded(epoch)      # the step that compiled the kernels
                if tally.seen <= slow_n or elapsed <= slow_s:
                    slow_s, slow_n = 0.0, 0
                record = {"epoch": epoch + 1, "train_loss": tally.mean,
                          "lr": self.schedule.lr(epoch, 0.999999), "time": round(elapsed, 3),
                          "images_per_s": round((tally.seen - slow_n) / max(elapsed - slow_s, 1e-9), 1)}
                grad_norm = self.solver.take_grad_norm()       # with clip_norm: the mean pre-clip norm
                if grad_norm is not None:
                    record["grad_norm"] = grad_norm
                if (epoch + 1) % s["test_freq"] == 0 or epoch + 1 == s["epochs"]:
                    val = evaluate(self.net, self.source, self.pre, batch=s["batch"], world=self.world)
                    record["val_loss"] = val["loss"]
                    if self.net.classifies:
                        record.update({"val_top1": val["top1"], "val_top5": val["top5"]})
                    self.schedule.observe(val["top1"] if self.net.classifies else val["loss"])
                self.metrics.append(record)
                self.log(self._line(record))
                path = self.save()
                self._prune(path)
                if self._agree_stop(flag) and self.epoch < s["epochs"]:   # asked in validation or saving
                    self.log(f"stopped by {flag.name} after epoch {self.epoch}; saved {path}; resume "
                             f"with: python -m engine train --resume {self.run_dir}")
                    return {"stopped": True, "checkpoint": path, "signal": flag.signum,
                            "exit_code": flag.exit_code}
        skipped = self.source.skipped if self.world is None else int(self.world.sum([self.source.skipped])[0])
        if skipped:
            self.log(f"skipped {plural(skipped, 'unreadable image')}; see the log above for which")
        for line in self._summary(time.time() - started, first_epoch):
            self.log(line)
        return {"stopped": False, "checkpoint": path if self.metrics else None, "metrics": self.metrics}

    # ---- what the log says around the loop ---------------------------------------
    def _prune(self, newest):
        """--keep N: delete checkpoints older than `newest` but the last N and the best."""
        keep = self.settings.get("keep")
        if keep is None or newest is None:
            return
        best = best_record(self.metrics)
        checkpoint.prune(self.run_dir, newest, keep, best["epoch"] if best else None)

    def _finished_already(self):
        n, asked = self.epoch, self.settings["epochs"]
        ask = f" (--epochs {asked} asks for no more)" if asked < n else ""
        run = shlex.quote(self.run_dir)
        return (f"{self.run_dir} already finished its {plural(n, 'epoch')}{ask}: nothing to do. To train it "
                f"further, give a larger total: python -m engine train --resume {run} --epochs {n + 10} "
                f"(any number above {n})")

    def _summary(self, seconds, first_epoch):
        """The lines after a finished run: best epoch, time, run folder, commands to try next."""
        n = self.settings["epochs"]
        if not first_epoch:
            lines = [f"finished {plural(n, 'epoch')} in {duration(seconds)}"]
        else:
            which = f"epochs {first_epoch + 1}-{n}" if first_epoch + 1 < n else f"epoch {n}"
            lines = [f"finished {plural(n, 'epoch')}; this session trained {which} in {duration(seconds)}"]
        best = best_record(self.metrics)
        if best is not None:
            where = os.path.join(self.run_dir, f"{checkpoint.tag_for(best['epoch'])}.json")
            lines.append(f"best epoch {best['epoch']}: {self._val_text(best, width='').strip()}  ({where})")
        kept = f" (keeping the last {plural(self.settings['keep'], 'epoch checkpoint')} and the best)" \
            if self.settings.get("keep") else ""
        lines.append(f"run folder: {self.run_dir}{kept}")
        run = shlex.quote(self.run_dir)
        # with --set overrides, the net of the checkpoint (which has them), not the file
        net = f" {shlex.quote(self.spec.file)}" if self.spec.file and not self.spec.overrides else ""
        lines += ["try next:",
                  f"  python -m engine test{net} --checkpoint {run}",
                  f"  python -m engine predict {run} IMAGE.png",
                  f"  python -m engine show {run} --cost"]
        return lines

    def _train_batches(self, order_rng):
        """(b, images, labels, rows) for each training batch of the epoch, in the order `order_rng`
        draws. Over MPI the images are this rank's share, rows = (offset, total) where they sit
        in the global batch; a global batch with no image on any rank (every one unreadable) is
        left out, as one process leaves it out. In one process rows is None."""
        batches = self.source.batches("train", self.settings["batch"], rng=order_rng,
                                      part=None if self.world is None else self.world.part)
        if self.world is None:
            for b, (raw, labels) in enumerate(batches):
                yield b, raw, labels, None
            return
        b = 0
        for raw, labels in batches:
            rows = self.world.counts(len(labels))
            if rows[1]:
                yield b, raw, labels, rows
                b += 1

    def _shared_step(self, raw, labels, rows, aug_rng, lr, epoch, batch, flag):
        """One data-parallel step: forward and backward of this rank's share, the gradients
        summed over the ranks each scaled by its share of the batch (so the single-process
        update of the whole batch), the update. Returns the global batch's mean loss and
        whether to stop after this step: a stop asked on any rank, agreed here, so that every
        rank stops after the same step."""
        offset, total = rows
        x = self.pre.train(raw, aug_rng, rows=rows)
        self._key_draws(offset)
        loss, grads = 0.0, None
        self.exchange.start(len(labels) / total)
        if len(labels):
            loss, grads = self._grads(x, labels, lr, epoch, batch)
        else:       # the batch statistics' collectives, as the other ranks make them
            self.net.executor.empty_step()
        summed = self.exchange.finish(grads)
        tallies = self.world.gather([loss * len(labels), flag.signum or 0])
        stop = self._agree_stop(flag, int(tallies[:, 1].max()))
        self.solver.step(summed, lr)
        return float(tallies[:, 0].sum()) / total, stop

    @contextlib.contextmanager
    def _own_statistics(self):
        """Over MPI: the layers normalise by this rank's statistics alone, for a pass that this
        rank makes alone (locating a non-finite value: the others are not there to sum with)."""
        summing = [node.layer for node in self.net.layers if node.layer.batch_sum is not None]
        kept = [layer.batch_sum for layer in summing]
        for layer in summing:
            layer.batch_sum = None
        try:
            yield
        finally:
            for layer, fn in zip(summing, kept):
                layer.batch_sum = fn

    def _key_draws(self, offset):
        """The step's draw key (dropout) as one process draws it, shifted to this rank's first
        global sample, so each sample gets its single-process mask; drawn on every rank, even
        one with an empty share, so their generators stay in step."""
        self.net.draw_key = None
        keys = self.net.draw_layer_seeds()
        self.net.draw_key = next(iter(keys.values())).rows_from(offset) if keys else None

    def _agree_stop(self, flag, signum=None):
        """Whether to stop now: in one process, whether a stop was asked. Over MPI, whether
        one was asked on any rank before this agreement (SIGTERM may reach the ranks one by
        one); a signal that lands after it counts at the next one. A rank never stops on its
        own flag alone: the others would wait for it in their next collective for ever."""
        if self.world is None:
            return flag.stop
        signum = self.world.agree_stop(flag.signum) if signum is None else signum
        if signum and flag.signum is None:
            flag.signum = signum          # what the exit code and the log name
        return bool(signum)

    def _step(self, x, labels, lr, epoch, batch):
        """One SGD step on the net's backend; returns the batch's mean loss. The run's first
        step, if it compiles, has helpers compiling the rest of its kernels (compile_ahead)."""
        first, self._stepped = not self._stepped, True
        with compile_ahead.helping(self, x, labels, lr) if first else contextlib.nullcontext():
            loss, grads = self._grads(x, labels, lr, epoch, batch)
            self.solver.step(grads, lr)
        return loss

    def _grads(self, x, labels, lr, epoch, batch):
        """(mean loss, gradients) of a batch. A non-finite loss or gradient stops training
        before the update, naming the layer where it began."""
        rng_state = self.net.rng.bit_generator.state
        with np.errstate(all="ignore"):      # overflow is caught below, with the layer named
            loss, grads = self.net.loss_and_grads(x, labels, train=True)
        bad = None if np.isfinite(loss) else "loss"
        bad = bad or self.net.backend.first_nonfinite(grads)
        if bad:
            what = f"the loss became {loss}" if bad == "loss" else "a gradient became non-finite"
            with np.errstate(all="ignore"), self._own_statistics():
                where = finite.locate(self.net, x, labels, rng_state)
            what += f" (first non-finite: {where})" if where else ""
            raise finite.NonFiniteError(finite.message(what, f"epoch {epoch + 1}, batch {batch + 1}",
                                                       lr, self.last_checkpoint))
        return loss, grads

    @staticmethod
    def _val_text(r, width="6"):
        val = ""
        if "val_loss" in r:
            val = f"  val loss {r['val_loss']:.4f}"
        if "val_top1" in r:
            val += f"  top-1 error {r['val_top1']:{width}.2%}  top-5 error {r['val_top5']:{width}.2%}"
        return val

    def _line(self, r):
        val = self._val_text(r)
        val += f"  grad norm {r['grad_norm']:.3g}" if "grad_norm" in r else ""
        return (f"epoch {r['epoch']:3d}  train loss {r['train_loss']:.4f}{val}  lr {r['lr']:.3g}  "
                f"{r['time']:.1f}s  ({r['images_per_s']:.0f} img/s)")
