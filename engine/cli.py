"""`python -m engine VERB ...`: the command line."""
import argparse
import sys

from engine.errors import ConfigError


def _summary(args):
    from engine.net import load
    net = load(args.net)
    print(net.summary())
    return 0


def _check(args):
    from engine.net import load
    net = load(args.net)
    print(f"{args.net}: OK ({len(net.layers)} layers, {net.num_params:,} parameters)")
    return 0


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m engine",
        description="cuda-convnet reborn: define nets in YAML, run them with Numba kernels.")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    s = sub.add_parser("summary", help="print a net's layer table (shapes, parameters, multiply-adds)")
    s.add_argument("net", metavar="NET.yaml", help="the net file")
    s.set_defaults(func=_summary)
    c = sub.add_parser("check", help="validate a net file and report problems")
    c.add_argument("net", metavar="NET.yaml", help="the net file")
    c.set_defaults(func=_check)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
