"""How much memory a net needs for a batch, how much there is, and refusing what cannot fit.

The estimate adds up, per layer, the float32 buffers its code allocates
(`Layer.buffer_shapes`), plus what the engine allocates around the layers: the input
batch, joined inputs, summed gradients of layers read by several layers, parameters, their
gradients and the solver's momentum. All sizes are Python ints (no int64 overflow for
absurd shapes).
"""
import math
import os
import re

from engine.config import INPUT_NAME
from engine.errors import ConfigError, MemoryLimitError

FLOAT = 4                # bytes per float32
KINDS = ("activations", "activation_gradients", "parameters", "parameter_gradients",
         "momentum", "workspace")
LABELS = {"activations": "activations", "activation_gradients": "activation gradients",
          "parameters": "parameters", "parameter_gradients": "parameter gradients",
          "momentum": "momentum", "workspace": "workspace"}
_BUFFER_KIND = {"activation": "activations", "gradient": "activation_gradients",
                "workspace": "workspace"}   # "param_grad" buffers: counted as parameter_gradients
ENV = "ENGINE_MEMORY_LIMIT"
_UNLIMITED = 2**60       # cgroup v1 writes "no limit" as a huge number


def param_bytes(layer):
    return FLOAT * sum(math.prod(s) for s in layer.param_shapes().values())


def estimate(nodes, input_shape, n, train=False, split_from=None):
    """Bytes a batch of n needs, by kind (KINDS) plus "total": a forward pass, and with
    `train` a training step (dropout, backward, momentum). A batch of at least
    `split_from` runs as two halves (threading "batch"), each through its own copy of
    the layers with its own buffers and parameter gradients."""
    out = dict.fromkeys(KINDS, 0)
    out["activations"] = FLOAT * n * math.prod(input_shape)
    halves = [n] if split_from is None or n < split_from else [(n + 1) // 2, n // 2]
    readers = {}
    for node in nodes:
        for i in node.inputs:
            readers[i] = readers.get(i, 0) + 1
    for node in nodes:
        layer = node.layer
        need_dx = any(i != INPUT_NAME for i in node.inputs)
        for m in halves:
            for kind, shape in layer.buffer_shapes(m, train, train, need_dx).values():
                if kind in _BUFFER_KIND:
                    out[_BUFFER_KIND[kind]] += FLOAT * math.prod(shape)
        if len(node.inputs) > 1 and layer.join != "separate":   # join_inputs concatenates
            out["workspace"] += FLOAT * n * math.prod(layer.input_shape)
        if train and readers.get(node.name, 0) > 1:    # the sum of its readers' gradients
            out["activation_gradients"] += FLOAT * n * math.prod(layer.output_shape)
        p = param_bytes(layer)
        out["parameters"] += p + FLOAT * sum(math.prod(s) for s in layer.state_shapes().values())  # + state
        if train:
            out["parameter_gradients"] += p * len(halves)
            out["momentum"] += p
    out["total"] = sum(out[k] for k in KINDS)
    return out


def largest_batch(nodes, input_shape, train, available, split_from=None):
    """The largest n whose estimate fits in `available` bytes (0 if not even one image)."""
    def need(m):
        return estimate(nodes, input_shape, m, train, split_from)["total"]
    one = need(1)
    per_image = need(2) - one
    if one > available:
        return 0
    n = 1 + (available - one) // max(per_image, 1)     # exact where the estimate is affine in n
    if need(n) <= available:
        if need(n + 1) > available:
            return n
        lo, hi = n, 2 * n          # buffers that stop growing (per-worker scratch): gallop up
        while need(hi) <= available:
            lo, hi = hi, 2 * hi
        hi -= 1
    else:
        lo, hi = 1, n              # a layer whose buffers grow faster (or halves): bisect
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if need(mid) <= available else (lo, mid - 1)
    return lo


# ---- how much there is ------------------------------------------------------
def parse_size(text):
    """"123", "512M", "1.5G", "2GiB" -> bytes; ValueError for anything else."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(text)
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except (OSError, ValueError):
        return None
    if text == "max":
        return _UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _meminfo_available(path="/proc/meminfo"):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room(root="/sys/fs/cgroup", proc="/proc/self/cgroup"):
    """Limit minus usage of this process's memory cgroup (v2 or v1), or None where unlimited."""
    candidates = []
    try:
        with open(proc) as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                path = path.lstrip("/")
                if controllers == "":                        # v2
                    candidates.append((os.path.join(root, path, "memory.max"),
                                       os.path.join(root, path, "memory.current")))
                elif "memory" in controllers.split(","):     # v1
                    candidates.append((os.path.join(root, "memory", path, "memory.limit_in_bytes"),
                                       os.path.join(root, "memory", path, "memory.usage_in_bytes")))
    except (OSError, ValueError):
        pass
    # inside a container the process's own cgroup is usually mounted at the root
    candidates += [(os.path.join(root, "memory.max"), os.path.join(root, "memory.current")),
                   (os.path.join(root, "memory", "memory.limit_in_bytes"),
                    os.path.join(root, "memory", "memory.usage_in_bytes"))]
    for limit_path, usage_path in candidates:
        limit = _read_int(limit_path)
        if limit is None:
            continue
        if limit >= _UNLIMITED:
            return None
        return max(0, limit - (_read_int(usage_path) or 0))
    return None


def available(held=0):
    """(bytes, where the number comes from) the net may use, or (None, None) where unknown.

    MemAvailable from /proc/meminfo, capped by the cgroup limit minus the cgroup's usage,
    plus `held` (what the net already holds and would reuse); then capped by
    ENGINE_MEMORY_LIMIT when set (bytes, or with a K/M/G/T suffix): a cap on all the net
    uses, so a test's limit means the same on every machine.
    """
    found = _meminfo_available()
    source = "MemAvailable" if found is not None else None
    room = _cgroup_room()
    if room is not None and (found is None or room < found):
        found, source = room, "cgroup memory limit"
    if found is not None:
        found += held
    return capped(found, source)


def capped(found, source):
    """(found, source) capped by ENGINE_MEMORY_LIMIT when it is set (and smaller)."""
    text = os.environ.get(ENV)
    if text:
        try:
            limit = parse_size(text)
        except ValueError:
            raise ConfigError(f"{ENV} must be a number of bytes, optionally with a K, M, G or T "
                              f"suffix (e.g. 8G), got {text!r}") from None
        if found is None or limit < found:
            found, source = limit, f"{ENV}={text}"
    return found, source


def fmt(n):
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024


# ---- refusing ---------------------------------------------------------------
def check_batch(name, nodes, input_shape, n, train, held=0, split_from=None, room=None):
    """Bytes a batch of n needs; MemoryLimitError when it cannot fit. `held`: bytes the net
    already holds (parameters, buffers), which it would reuse; `room`: (bytes, source) the
    device has, by default the host's `available(held)`."""
    need = estimate(nodes, input_shape, n, train, split_from)
    room, source = available(held) if room is None else room
    if room is None or need["total"] <= room:
        return need["total"]
    largest = largest_batch(nodes, input_shape, train, room, split_from)
    parts = ", ".join(f"{LABELS[k]} {fmt(need[k])}" for k in KINDS if need[k])
    fits = f"the largest batch that fits is {largest:,}" if largest else "not even one image fits"
    raise MemoryLimitError(
        f"net '{name}': a {'training' if train else 'forward'} batch of {n:,} needs "
        f"{fmt(need['total'])} ({parts}), {fmt(room)} available ({source}); {fits}",
        needed=need["total"], available=room, largest_batch=largest)


def check_load(spec, nodes):
    """Refuse a net whose parameters plus one image's forward pass cannot fit, before any
    parameter is allocated: ConfigError naming the file and the layer most to blame."""
    need = estimate(nodes, spec.input_shape, 1, train=False)
    # init_params draws each weight in float64 before the float32 copy: 8 more bytes a value
    largest_param = max((math.prod(s) for node in nodes for s in node.layer.param_shapes().values()),
                        default=0)
    total = need["total"] + 8 * largest_param
    free, source = available()
    if free is None or total <= free:
        return total
    params = need["parameters"]
    if params > free:
        node = max(nodes, key=lambda nd: param_bytes(nd.layer))
        msg = (f"the net needs {fmt(params)} for its parameters alone, {fmt(free)} available "
               f"({source}); this layer holds {100 * param_bytes(node.layer) / params:.0f}% of them")
    else:
        def one_image(nd):
            return sum(FLOAT * math.prod(s) for _, s in nd.layer.buffer_shapes(1).values())
        node = max(nodes, key=one_image)
        msg = (f"the net needs {fmt(total)} for its parameters ({fmt(params)}) and one image's "
               f"forward pass, {fmt(free)} available ({source}); this layer's buffers take "
               f"{fmt(one_image(node))} of it")
    raise ConfigError(msg, file=spec.file, line=node.spec.line(), layer=node.name)


def table(nodes, input_shape, batch):
    """The summary's memory lines: each kind for one image and for `batch`, in training."""
    one, many = estimate(nodes, input_shape, 1, True), estimate(nodes, input_shape, batch, True)
    rows = [("memory (float32)", "batch 1", f"batch {batch:,}")]
    rows += [(LABELS[k] + (" (im2col, kept for backward)" if k == "workspace" else ""),
              fmt(one[k]), fmt(many[k])) for k in KINDS]
    rows.append(("total, training step", fmt(one["total"]), fmt(many["total"])))
    rows.append(("total, forward only", fmt(estimate(nodes, input_shape, 1)["total"]),
                 fmt(estimate(nodes, input_shape, batch)["total"])))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{a.ljust(widths[0])}  {b.rjust(widths[1])}  {c.rjust(widths[2])}" for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 2, "-" * len(lines[0]))
    room, source = available()
    if room is not None:
        lines.append(f"{fmt(room)} available ({source}): the largest training batch that fits is "
                     f"{largest_batch(nodes, input_shape, True, room):,}, forward only "
                     f"{largest_batch(nodes, input_shape, False, room):,}")
    return lines
