"""`python -m engine VERB ...`: the command line.

Every user error (a bad net file, bad data, a bad checkpoint) is printed in one or two
lines and exits with status 2; a traceback means a bug in the engine.
"""
import argparse
import os
import sys

from engine.errors import ConfigError, DeviceError, MemoryLimitError

EPILOG = """examples:
  python -m engine train nets/lenet5.yaml                   # the embedded MNIST digits
  python -m engine train nets/alexnet.yaml --data ~/imagenet --batch 128
  python -m engine train nets/alexnet.yaml --data synthetic --epochs 1
  python -m engine train --resume runs/lenet5-20260101-120000
  python -m engine test nets/lenet5.yaml --checkpoint runs/lenet5-20260101-120000
  python -m engine predict runs/lenet5-20260101-120000 digit.png
  python -m engine time nets/alexnet.yaml --batch 32 --iterations 5
  python -m engine train examples/plugins/net.yaml --plugins   # a layer type from your own .py file
  python -m engine convert layers-18pct.cfg layer-params-18pct.cfg -o 18pct.yaml --input 3,32,32
  python -m engine export --checkpoint runs/lenet5-20260101-120000 -o lenet5.onnx
"""


def _summary(args):
    from engine.net import load
    print(load(args.net, plugins=args.plugins, overrides=args.overrides).summary(batch=args.batch))
    return 0


def _check(args):
    from engine import settings
    from engine.net import load
    from engine.train import plural
    net = load(args.net, plugins=args.plugins, overrides=args.overrides)
    # the `train:` section too, with the messages `train` would give
    train = settings.resolve(net.spec.train, file=net.spec.file)
    settings.make_schedule(train)
    settings.apply_cost_settings(net.spec, train, file=net.spec.file)     # a cost that cannot take them
    sets = "".join(f" --set {o}" for o in args.overrides)
    print(f"{args.net}{sets}: OK ({plural(len(net.layers), 'layer')}, {net.num_params:,} parameters)")
    return 0


def _train(args):
    from engine import distributed
    from engine.train import Trainer
    if args.net is None and args.resume is None:
        raise ConfigError("give a net file (python -m engine train NET.yaml) or --resume RUN_FOLDER")
    world = distributed.from_environment(args.bucket_mb)     # None without mpirun: mpi4py stays unimported

    def train():
        trainer = Trainer(args.net, data=args.data, epochs=args.epochs, batch=args.batch, lr=args.lr,
                          seed=args.seed, out=args.out, resume=args.resume, test_freq=args.test_freq,
                          device=args.device, plugins=args.plugins, keep=args.keep, overrides=args.overrides,
                          optimizer=args.optimizer, world=world)
        result = trainer.run()
        return result["exit_code"] if result["stopped"] else 0
    if world is None:
        return train()
    # an error on one rank ends the job with its message, instead of leaving the others in a collective
    return distributed.guarded(world, train, _error_codes())


def _error_codes():
    """[(exception types, exit status)] of the errors main() reports in a line, first match wins."""
    from engine.checkpoint import CheckpointError, CheckpointWriteError
    from engine.datasets import DataError
    return [((CheckpointWriteError, FloatingPointError), 1),
            ((ConfigError, DataError, CheckpointError, MemoryLimitError, DeviceError), 2)]


def _test(args):
    from engine.datasets import open_source
    from engine.net import load
    from engine.train import evaluate, plural
    net = load(args.net, checkpoint=args.checkpoint, plugins=args.plugins, overrides=args.overrides)
    data = args.data or net.data_spec
    source = open_source(data, net.input_shape, seed=0, num_classes=net.num_classes)
    r = evaluate(net, source, net.preprocess, batch=args.batch, multiview=args.multiview)
    views = " (ten views averaged)" if args.multiview else ""
    errors = f"  top-1 error {r['top1']:.2%}  top-5 error {r['top5']:.2%}" if net.classifies else ""
    print(f"{net.name} on {source.name} validation, {plural(r['n'], 'image')}{views}: "
          f"loss {r['loss']:.4f}{errors}")
    return 0


def read_image(path, channels):
    """One image file as uint8 [H, W] (grey) or [H, W, 3]; DataError if unreadable.
    Converted as the image folders do (alpha dropped, CMYK to RGB, 16-bit grey to 8 bits)."""
    from engine.datasets.images import read_image as read
    return read(path, channels)


def _predict(args):
    from engine.columns import single_images
    from engine.datasets import DataError
    from engine.net import load
    with single_images():           # one image at a time: each one's work split over the cores
        net = load(None, checkpoint=args.checkpoint, plugins=args.plugins)
        for path in args.images:
            image = read_image(path, channels=net.input_shape[0])
            try:
                top = net.predict(image[None], top=args.top)[0]
            except DataError as e:
                raise DataError(f"{path}: {e}") from None
            shown = ", ".join(f"{name} {p:.1%}" for name, p in top)
            print(f"{path}: {shown}")
    return 0


def _convert(args):
    from engine.checkpoint import write_text
    from engine.convert import convert, convert_caffe, parse_caffe_input, parse_input_shape
    caffe = args.params is None and args.layers.endswith(".prototxt")
    if caffe:
        source = "Caffe"
    elif args.params is None:
        raise ConfigError("give a Caffe NET.prototxt, or a cuda-convnet LAYERS.cfg and PARAMS.cfg")
    elif args.solver or args.train_images:
        raise ConfigError("--solver and --train-images go with a Caffe .prototxt net (one file)")
    elif args.input is None:
        raise ConfigError("--input C,H,W is required for cuda-convnet files (it came from the data provider)")
    else:
        source = "cuda-convnet"
    if os.path.exists(args.out) and not args.force:
        raise ConfigError("already exists: pass --force to overwrite it", file=args.out)
    if caffe:
        result = convert_caffe(args.layers, parse_caffe_input(args.input) if args.input else None,
                               solver=args.solver, name=args.name, epochs=args.epochs,
                               train_images=args.train_images)
    else:
        result = convert(args.layers, args.params, parse_input_shape(args.input), name=args.name,
                         epochs=args.epochs)
    try:
        write_text(args.out, result.text)
    except OSError as e:
        raise ConfigError(f"cannot write: {e.strerror}", file=args.out) from None
    for note in result.notices:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.out}: {len(result.layers)} layers, {result.num_params:,} parameters "
          f"(as in {source})")
    return 0


def _check_grads(args):
    from engine.tools.check_grads import run
    return run(_net(args), samples=args.samples, seed=args.seed, checkpoint=args.checkpoint,
               file_init=args.file_init, plugins=args.plugins)


def _show(args):
    from engine.tools.show import run
    what = "filters" if args.filters else "cost" if args.cost else "preds"
    run(args.checkpoint, what, out=args.out, layer=args.filters, net_path=args.net, data=args.data,
        count=args.count, seed=args.seed, only_errors=args.only_errors, plugins=args.plugins)
    return 0


def _draw(args):
    from engine.tools.draw import run
    run(_net(args), args.out, plugins=args.plugins)
    return 0


def _features(args):
    from engine.tools.features import run
    run(_net(args), args.checkpoint, args.layer, args.out, data=args.data, split=args.split, batch=args.batch,
        plugins=args.plugins)
    return 0


def _import_torch(args):
    from engine.tools.import_torch import run
    run(args.weights, _net(args), args.out, map_path=args.map, torchvision_input=args.torchvision_input,
        mean=args.mean, scale=args.scale, classes=args.classes, plugins=args.plugins)
    return 0


def _time(args):
    from engine.tools.timing import run
    run(_net(args), batch=args.batch, iterations=args.iterations, device=args.device, train=args.train,
        plugins=args.plugins)
    return 0


def _export(args):
    from engine.tools.export_onnx import run
    return run(args.net, args.out, checkpoint=args.checkpoint, seed=args.seed, plugins=args.plugins,
               overrides=args.overrides)


def _set_flag(parser):
    """`--set LAYER.KEY=VALUE` (repeatable) on a verb that reads a net: one line per verb."""
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="LAYER.KEY=VALUE",
                        help="replace a value of the net file, repeatable: --set fc8.outputs=5 --set "
                        "conv1.neuron=relu --set train.epochs=3 --set input.shape=[3,64,64] (VALUE is YAML; "
                        "checked like the file; a checkpoint keeps the net's)")


def _net(args):
    """The verb's net file with its --set overrides, for anything that takes a net source."""
    from engine.config import with_overrides
    return with_overrides(args.net, args.overrides)


def _plugins_flag(parser):
    parser.add_argument("--plugins", action="store_true",
                        help="import the Python files or modules the net's `plugins:` names (its own "
                        "layer types); they run code, so a net that names plugins loads only with this flag")


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m engine", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="cuda-convnet reborn: define nets in YAML, train and run them with Numba kernels.")
    sub = p.add_subparsers(dest="verb", metavar="VERB")

    s = sub.add_parser("summary", help="print a net's layer table (shapes, parameters, multiply-adds) "
                       "and the memory a batch needs")
    s.add_argument("net", metavar="NET.yaml", help="the net file")
    s.add_argument("--batch", type=int, default=128, metavar="N",
                   help="batch size for the memory table (default 128)")
    _plugins_flag(s)
    _set_flag(s)
    s.set_defaults(func=_summary)

    c = sub.add_parser("check", help="validate a net file and report the first problem")
    c.add_argument("net", metavar="NET.yaml", help="the net file")
    _plugins_flag(c)
    _set_flag(c)
    c.set_defaults(func=_check)

    t = sub.add_parser("train", help="train a net; flags override the net file's `train:` section",
                       description="Train a net. Progress on stderr (the first step, which compiles the "
                       "kernels, timed on a line of its own; then a bar on a terminal, a plain line every 10 s "
                       "otherwise), a line per epoch, then a summary: the best epoch, the time, the run folder "
                       "and the commands to try next. A checkpoint after every epoch and on Ctrl-C or SIGTERM "
                       "(the first: finish the batch, "
                       "save, stop with exit 130/143; a second Ctrl-C: stop at once). Exit 1: the run failed "
                       "(NaN/Inf, a checkpoint write failed) with every saved checkpoint intact; 2: bad input.")
    t.add_argument("net", metavar="NET.yaml", nargs="?", help="the net file (optional with --resume)")
    t.add_argument("--data", metavar="SRC", help="digits | synthetic | a cuda-convnet batch folder | "
                   "an ImageNet-layout folder (ROOT/train/<class>/*.jpg, ROOT/val/<class>/*.jpg)")
    t.add_argument("--epochs", type=int, metavar="N", help="total epochs (also extends a resumed run)")
    t.add_argument("--batch", type=int, metavar="N", help="mini-batch size")
    t.add_argument("--lr", type=float, metavar="X", help="base learning rate")
    t.add_argument("--seed", type=int, metavar="N", help="seed for weights, data order, augmentation, dropout")
    t.add_argument("--out", metavar="DIR", help="run folder (default runs/<net>-<time>)")
    t.add_argument("--resume", metavar="DIR|FILE", help="continue a run from its latest (or the given) checkpoint")
    t.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                   help="where to run: cpu (default), cuda (the two columns on two streams), auto")
    t.add_argument("--test-freq", type=int, metavar="N", dest="test_freq", help="validate every N epochs")
    t.add_argument("--optimizer", metavar="NAME", help="sgd (cuda-convnet's, the default) | nesterov | adam | adamw")
    t.add_argument("--keep", type=int, metavar="N", help="keep only the last N epoch checkpoints and the best "
                   "one by validation error, deleting older ones once a new one is saved (default: all)")
    t.add_argument("--bucket-mb", type=float, default=25.0, metavar="MB", dest="bucket_mb",
                   help="under mpirun (data-parallel over the ranks): the size of the gradient buckets "
                   "each summed by one non-blocking allreduce (default 25, as PyTorch DDP)")
    _plugins_flag(t)
    _set_flag(t)
    t.set_defaults(func=_train)

    e = sub.add_parser("test", help="loss, top-1 and top-5 error of a checkpoint on validation data")
    e.add_argument("net", metavar="NET.yaml", nargs="?",
                   help="the net file (default: the one saved in the checkpoint)")
    e.add_argument("--checkpoint", required=True, metavar="CKPT", help="a run folder or a checkpoint file")
    e.add_argument("--data", metavar="SRC", help="data source (default: the one it was trained on)")
    e.add_argument("--batch", type=int, default=128, metavar="N", help="batch size (default 128)")
    e.add_argument("--multiview", action="store_true",
                   help="average the ten views: four corners and centre, and their mirror images (refused "
                   "for data whose mirror images are no images of it: the digits, or flips off in training)")
    _plugins_flag(e)
    _set_flag(e)
    e.set_defaults(func=_test)

    r = sub.add_parser("predict", help="top-5 classes with probabilities for image files")
    r.add_argument("checkpoint", metavar="CKPT", help="a run folder or a checkpoint file")
    r.add_argument("images", metavar="IMAGE", nargs="+", help="image files (PNG, JPEG, ...)")
    r.add_argument("--top", type=int, default=5, metavar="K", help="how many classes to show (default 5)")
    _plugins_flag(r)
    r.set_defaults(func=_predict)

    v = sub.add_parser("convert", help="convert cuda-convnet layer files (.cfg) or a Caffe net (.prototxt) "
                       "to a YAML net",
                       description="Convert a cuda-convnet or cuda-convnet2 layer-definition file and "
                       "its layer-parameter file, or a Caffe net (NET.prototxt, with --solver its solver "
                       "file), to a YAML net with the same layers, wiring, shapes, "
                       "parameter count and learning parameters. Notes on what was dropped or "
                       "approximated go to stderr and into the file's header.")
    v.add_argument("layers", metavar="LAYERS.cfg|NET.prototxt",
                   help="the layer-definition file (--layer-def), or a Caffe net")
    v.add_argument("params", metavar="PARAMS.cfg", nargs="?",
                   help="the layer-parameter file (--layer-params); not with a Caffe net")
    v.add_argument("-o", "--out", required=True, metavar="NET.yaml", help="the YAML file to write")
    v.add_argument("--input", metavar="C,H,W",
                   help="one image's shape, which cuda-convnet took from its data provider (e.g. 3,32,32); "
                   "required for cuda-convnet; for Caffe, default: from the data layer or input shape")
    v.add_argument("--name", help="the net's name (default: the file's name, or the Caffe net's name)")
    v.add_argument("--epochs", type=int, metavar="N",
                   help="train.epochs (cuda-convnet's --epochs; for Caffe: what the solver's max_iter is)")
    v.add_argument("--solver", metavar="SOLVER.prototxt", help="Caffe: the solver file (base_lr, momentum, "
                   "weight_decay, lr_policy, max_iter) for the train: section")
    v.add_argument("--train-images", type=int, metavar="N", dest="train_images",
                   help="Caffe: the number of training images, to turn the solver's iterations into epochs")
    v.add_argument("--force", action="store_true", help="overwrite NET.yaml if it exists")
    v.set_defaults(func=_convert)

    g = sub.add_parser("check-grads", help="every parameter's gradient against finite differences "
                       "(cuda-convnet's --check-grads); exit 1 on any failure",
                       description="Gradient check of a whole net: a batch of 2 random images, each "
                       "parameter tensor's analytic gradient against central differences of the cost, "
                       "each with its measured uncertainty (the cost at w + k h, k = -2..2); an entry "
                       "fails beyond it by cuda-convnet's threshold (0.02 of the gradient). A line per "
                       "tensor; exit status 0 if all pass, 1 if any fails, 2 for a bad net file.")
    g.add_argument("net", metavar="NET.yaml", help="the net file")
    g.add_argument("--samples", type=int, default=16, metavar="N",
                   help="entries checked per tensor: half the largest gradients, half at random; "
                   "smaller tensors whole; 0 = every entry (default 16)")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="seed for weights, images, labels, entries")
    g.add_argument("--checkpoint", metavar="CKPT", help="check at a run's trained weights instead")
    g.add_argument("--file-init", action="store_true", dest="file_init",
                   help="keep the file's init instead of weights drawn with std sqrt(2/fan-in)")
    _plugins_flag(g)
    _set_flag(g)
    g.set_defaults(func=_check_grads)

    w = sub.add_parser("show", help="PNG pictures of a run: filters, cost curves, predictions (shownet.py)",
                       description="What cuda-convnet's shownet.py showed, written as a PNG file.")
    w.add_argument("checkpoint", metavar="CKPT", help="a run folder or a checkpoint file")
    which = w.add_mutually_exclusive_group(required=True)
    which.add_argument("--filters", metavar="LAYER", help="the layer's filters as a grid of images")
    which.add_argument("--cost", action="store_true", help="training and validation loss and error per epoch")
    which.add_argument("--preds", action="store_true",
                       help="validation images with the top-5 predictions, the true class in green")
    w.add_argument("-o", "--out", metavar="FILE.png",
                   help="the PNG to write (default: in the run folder, <net>-filters-<layer>.png, <net>-cost.png, "
                   "<net>-preds.png)")
    w.add_argument("--net", metavar="NET.yaml", help="the net file (default: the one saved in the checkpoint)")
    w.add_argument("--data", metavar="SRC", help="--preds: data source (default: the one it was trained on)")
    w.add_argument("--count", type=int, default=8, metavar="N", help="--preds: how many images (default 8)")
    w.add_argument("--only-errors", action="store_true", dest="only_errors",
                   help="--preds: only misclassified images")
    w.add_argument("--seed", type=int, default=0, metavar="N", help="--preds: which random images")
    _plugins_flag(w)
    w.set_defaults(func=_show)

    d = sub.add_parser("draw", help="draw a net's graph as SVG, PNG or Graphviz DOT",
                       description="Draw the net: a box per layer (type, keys, output shape, parameters), "
                       "the two columns side by side, arrows for inputs (red across columns).")
    d.add_argument("net", metavar="NET.yaml", help="the net file")
    d.add_argument("-o", "--out", required=True, metavar="FILE", help="net.svg, net.png or net.dot")
    _plugins_flag(d)
    _set_flag(d)
    d.set_defaults(func=_draw)

    f = sub.add_parser("features", help="a layer's activations for every image, as .npy (--write-features)",
                       description="Write a layer's activations (flattened, float32 [N, D]) for the "
                       "validation (or training) images, prepared as at test time. FEATS.npy gets its "
                       "labels beside it in FEATS-labels.npy; FEATS.npz holds features, labels, class_names.")
    f.add_argument("net", metavar="NET.yaml", help="the net file")
    f.add_argument("--checkpoint", required=True, metavar="CKPT", help="a run folder or a checkpoint file")
    f.add_argument("--layer", required=True, metavar="NAME[,NAME]",
                   help="the layer (several, comma-separated, are concatenated: fc7a,fc7b)")
    f.add_argument("-o", "--out", required=True, metavar="FEATS.npy|.npz", help="the file to write")
    f.add_argument("--data", metavar="SRC", help="data source (default: the one it was trained on)")
    f.add_argument("--split", choices=("val", "train"), default="val", help="which images (default val)")
    f.add_argument("--batch", type=int, default=128, metavar="N", help="batch size (default 128)")
    _plugins_flag(f)
    _set_flag(f)
    f.set_defaults(func=_features)

    m = sub.add_parser("import-torch", help="PyTorch weights (a state_dict .pth) as a checkpoint of a net",
                       description="Load a PyTorch state_dict (e.g. torchvision's AlexNet into "
                       "nets/alexnet-torchvision.yaml) and write a run folder with checkpoint 0. Modules "
                       "are matched to layers in order, or by a --map file; every mismatch is reported.")
    m.add_argument("weights", metavar="WEIGHTS.pth", help="a state_dict saved with torch.save")
    m.add_argument("net", metavar="NET.yaml", help="the net file whose layers match the weights")
    m.add_argument("-o", "--out", required=True, metavar="RUN_DIR", help="the run folder to write")
    m.add_argument("--map", metavar="MAP.yaml", help="our names to theirs: {conv1: features.0, ...}")
    m.add_argument("--torchvision-input", action="store_true", dest="torchvision_input",
                   help="the weights expect torchvision's input (RGB/255, ImageNet mean and std): store "
                   "that mean and scale and fold the std into the first layer")
    m.add_argument("--mean", metavar="R,G,B|MEAN.npy", help="mean pixel values or image to subtract (default 0)")
    m.add_argument("--scale", type=float, metavar="X", help="multiply pixels by X after the mean (default 1)")
    m.add_argument("--classes", metavar="FILE", help="class names, one per line")
    _plugins_flag(m)
    _set_flag(m)
    m.set_defaults(func=_import_torch)

    tm = sub.add_parser("time", help="time a net layer by layer on random data (caffe time)",
                        description="Random input and labels, warm-up iterations (Numba compile excluded), "
                        "then K training steps layer by layer: each layer's mean forward and backward ms, "
                        "the totals, and whole steps (forward + backward + SGD update) as ms per batch, "
                        "images/s and GFLOP/s (2 x the layers' multiply-adds, x 3 for training).")
    tm.add_argument("net", metavar="NET.yaml", help="the net file")
    tm.add_argument("--batch", type=int, metavar="N", help="batch size (default: the file's train.batch, else 32)")
    tm.add_argument("--iterations", type=int, default=10, metavar="K", help="timed iterations (default 10)")
    tm.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                    help="cpu (default), cuda (CUDA events, synchronised after every layer), auto")
    tm.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                    help="time training steps (default) or, with --no-train, inference (forward only)")
    _plugins_flag(tm)
    _set_flag(tm)
    tm.set_defaults(func=_time)

    x = sub.add_parser("export", help="write a net with its weights as an ONNX model (opset 17)",
                       description="Write an ONNX model (opset 17, batch dimension symbolic) computing "
                       "what Net.forward computes at test time, every column in one graph, with the net's "
                       "name and class names as metadata. Without --checkpoint the weights are those "
                       "engine.load(NET, seed=N) draws. Needs pip install -e '.[onnx]'. Exit 2: bad net, "
                       "a layer type with no ONNX export (named), onnx missing.")
    x.add_argument("net", metavar="NET.yaml", nargs="?",
                   help="the net file (optional with --checkpoint: the net saved in it)")
    x.add_argument("--checkpoint", metavar="CKPT", help="a run folder or a checkpoint file: its trained weights")
    x.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the drawn weights (default 0)")
    x.add_argument("-o", "--out", required=True, metavar="MODEL.onnx", help="the file to write")
    _plugins_flag(x)
    _set_flag(x)
    x.set_defaults(func=_export)
    return p


def cli_device_words(message):
    """A DeviceError's advice in the command line's words (--device cpu), not Python's."""
    for python, cli in (("use device='cpu' (or 'auto')", "use --device cpu (or --device auto)"),
                        ("use the CPU (or auto)", "use --device cpu (or --device auto)"),
                        ("use device='cpu'", "use --device cpu"), ("use the CPU", "use --device cpu")):
        message = message.replace(python, cli)
    return message


def main(argv=None):
    from engine.checkpoint import CheckpointError, CheckpointWriteError
    from engine.datasets import DataError
    from engine.distributed import LaunchError
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (CheckpointWriteError, FloatingPointError) as e:   # the run failed; nothing saved was lost
        print(f"error: {e}", file=sys.stderr)
        return 1
    except DeviceError as e:
        print(f"error: {cli_device_words(str(e))}", file=sys.stderr)
        return 2
    except (ConfigError, DataError, CheckpointError, MemoryLimitError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
