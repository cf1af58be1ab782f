"""From layer specs to a checked graph: wiring, execution order, shapes."""
import heapq
from dataclasses import dataclass

import layers as layer_types
from layers.base import LayerError

from engine.config import INPUT_NAME, NetSpec, named, suggest
from engine.errors import ConfigError


@dataclass
class Node:
    """One layer in the graph: its spec, its Layer object and its place."""
    name: str
    type: str
    gpu: int
    inputs: list
    layer: object
    spec: object

    @property
    def output_shape(self):
        return self.layer.output_shape

    @property
    def has_params(self):
        return bool(self.layer.param_shapes())

    @property
    def block_use(self):
        """(use name, block name) for a layer expanded from a block (engine.blocks), else None."""
        used = getattr(self.spec.mapping, "used", None)
        return None if used is None else (used.name, used.block)

    @property
    def cost_weight(self):
        """A cost layer's weight in the net's loss, as the engine applies it (its `coeff`;
        1 where the layer type applies its own coeff inside its cost)."""
        return self.spec.coeff


def build(spec: NetSpec):
    """Return the nodes in execution order, or raise ConfigError naming the problem."""
    by_name = {s.name: s for s in spec.layers}

    def fail(msg, s, key=None):
        raise ConfigError(msg, file=spec.file, line=s.line(key), layer=s.name, key=key)

    for s in spec.layers:
        for inp in s.inputs:
            if inp != INPUT_NAME and inp not in by_name:
                fail(f"unknown input layer '{named(inp)}'{suggest(inp, list(by_name) + [INPUT_NAME])}",
                     s, "inputs")

    order = _topological_order(spec, by_name, fail)
    consumers = {s.name: [] for s in spec.layers}
    for s in spec.layers:
        for inp in s.inputs:
            if inp != INPUT_NAME:
                consumers[inp].append(s.name)
    # the net's output is the last layer nobody reads; other such layers must be cost layers
    # (auxiliary heads, as GoogLeNet's), whose weighted costs add to the loss
    sinks = [s for s in spec.layers if not consumers[s.name]]
    output = sinks[-1]
    for s in spec.layers:
        cls = layer_types.get(s.type)
        if cls.is_cost and consumers[s.name]:
            fail(f"a {s.type} layer is a cost layer and must be the net's output or an auxiliary head: "
                 f"nothing can read it, but {', '.join(consumers[s.name])} read(s) it", s)
    for s in sinks[:-1]:
        if not layer_types.get(s.type).is_cost:
            fail(f"layer is unused: no layer reads its output, and only one layer ('{output.name}', "
                 "the last) can be the net's output (other unread layers must be cost layers)", s)
        if not layer_types.get(output.type).is_cost:
            fail(f"layer is unused: no layer reads it, and a cost layer is an auxiliary head only when the "
                 f"net's output ('{output.name}', the last unread layer) is a cost layer too, not a "
                 f"{output.type} layer", s)

    order = [s for s in order if s is not output] + [output]    # the output runs last
    shapes = {INPUT_NAME: spec.input_shape}
    nodes = []
    for s in order:
        cls = layer_types.get(s.type)
        try:
            layer = cls(s.name, s.cfg, [shapes[i] for i in s.inputs])
        except LayerError as e:
            detail = ""
            if e.key == "inputs":
                detail = " (input shapes: " + listed([f"{i} {list(shapes[i])}" for i in s.inputs]) + ")"
            fail(e.message + detail, s, e.key)
        shapes[s.name] = layer.output_shape
        nodes.append(Node(name=s.name, type=s.type, gpu=s.gpu, inputs=list(s.inputs), layer=layer, spec=s))
    return nodes


def cost_heads(nodes):
    """[(index, weight)] of the cost layers nobody reads, in graph order (the output last):
    the net's loss is the sum of their weighted costs. Nodes without a spec (a layer run
    alone) weigh 1; a graph without a cost layer has its output as its one head, as before."""
    readers = {i for n in nodes for i in n.inputs}
    heads = [(i, getattr(getattr(n, "spec", None), "coeff", 1.0)) for i, n in enumerate(nodes)
             if n.layer.is_cost and n.name not in readers]
    return heads or [(len(nodes) - 1, 1.0)]


def listed(items, most=8, sep=", "):
    """Items joined for a message, the middle cut out of a long list (one-line errors)."""
    if len(items) > most:
        items = items[:most // 2] + [f"... {len(items) - most + 1} more ..."] + items[1 - most // 2:]
    return sep.join(items)


def _topological_order(spec, by_name, fail):
    """File order where it respects dependencies (Kahn's algorithm, stable); cycles are errors."""
    position = {s.name: i for i, s in enumerate(spec.layers)}
    waiting = {s.name: {i for i in s.inputs if i != INPUT_NAME} for s in spec.layers}
    readers = {s.name: [] for s in spec.layers}
    for s in spec.layers:
        for i in waiting[s.name]:
            readers[i].append(s.name)
    missing = {n: len(deps) for n, deps in waiting.items()}
    ready = [position[n] for n, k in missing.items() if k == 0]
    heapq.heapify(ready)              # the earliest ready layer in the file goes next
    order = []
    while ready:
        s = spec.layers[heapq.heappop(ready)]
        order.append(s)
        for r in readers[s.name]:
            missing[r] -= 1
            if missing[r] == 0:
                heapq.heappush(ready, position[r])
    if len(order) < len(spec.layers):
        left = {n for n, k in missing.items() if k}
        cycle = _find_cycle(left, waiting)
        first = min(cycle, key=position.get)
        fail("the layers form a cycle: " + listed(cycle + [cycle[0]], sep=" -> "), by_name[first], "inputs")
    return order


def _find_cycle(left, waiting):
    # follow any unfinished dependency until a name repeats
    start = min(left)
    path, seen = [], {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(d for d in waiting[node] if d in left)
    cycle = path[seen[node]:]
    cycle.reverse()  # producer -> consumer order reads naturally
    return cycle
