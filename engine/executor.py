"""The one graph walk: forward and backward through a net's layers, over lanes, on any backend.

A lane runs one column (a CPU thread, a CUDA stream); the backend says which lane a
layer runs on and how lanes wait for each other (engine.columns on the CPU, events on
CUDA). Everything else is here: joining a layer's inputs, the cost, handing each input
gradient back to its producer, and summing what a producer's readers sent back in one
fixed order (reverse graph order of the readers), whichever lane finished first.

A net may have several cost layers (auxiliary heads, engine.graph.cost_heads): the loss is
the sum of their costs times their weights, and each sends its weighted gradient back.

A backend may split a batch into halves, each through its own copy of the layers on its
own lane ("batch" threading on the CPU); the halves' gradients are summed into the first
copy's arrays and the loss is the batch mean.

Hooks, instead of copies of this loop:
  watch(kind, layer, array)   every layer's "output" in forward order, "cost", then each
                              "input gradient" and "<param> gradient" in backward order
  timer {(layer, phase): [seconds]}   each layer's forward/backward (and "cost") timed
                              on its own by the backend's clock
watch or timer runs the layers one at a time in graph order on one lane (no batch split).
  on_grads(layer, {param: gradient})  (Executor.on_grads) in a training step, as soon as a
                              layer's parameter gradients are final: on its lane's thread right
                              after its backward, or, where halves of a batch are summed, on
                              the calling thread after the sum, in reverse graph order (the
                              data-parallel exchange starts sending them while backward runs on)

Layer state (Layer.state_shapes: batchnorm's running statistics) is updated by the backend
right after a layer's forward, on its lane, in the training step only (`step` with train
and backward). A split batch's layers of batch statistics (Layer.whole_batch) sum them over
the halves (columns.HalfSums as their batch_sum, for that step), and the first half's
copy updates their state; a batch is never split where a layer keeps other state
(columns.splits).
"""
import contextlib

from engine import columns
from engine.config import INPUT_NAME
from engine.graph import cost_heads
from layers.draw_key import as_key


class Executor:
    def __init__(self, nodes, backend, make_copy=None):
        """nodes: the graph in execution order; make_copy(): a second copy of the layers
        (own buffers, the same parameters) for a split batch."""
        self.copies = [list(nodes)]
        self.backend = backend
        self.make_copy = make_copy
        self.on_grads = None        # the hook above; not called in a watched or timed pass
        self.rank = {node.name: i for i, node in enumerate(nodes)}
        self.stateful = {node.name for node in nodes if node.layer.state_shapes()}
        self.unsplit = not all(columns.splits(node.layer) for node in nodes)
        self.summing = [i for i, node in enumerate(nodes) if node.layer.whole_batch]
        produced = set(self.rank)
        self.readers = {node.name: [] for node in nodes}
        self.graph_inputs = []
        self.heads = cost_heads(nodes)      # [(index, weight)], the output last
        for node in nodes:
            for name in dict.fromkeys(node.inputs):
                if name in produced:
                    self.readers[name].append(node.name)
                elif name not in self.graph_inputs:
                    self.graph_inputs.append(name)

    @property
    def nodes(self):
        return self.copies[0]

    # ---- planning ---------------------------------------------------------------
    def halves(self, n, serial=False):
        """[(copy, start, stop)]: one part, or two halves where the backend splits a batch of n."""
        split_from = self.backend.split_from
        if serial or split_from is None or n < split_from or self.make_copy is None or self.unsplit:
            return [(0, 0, n)]
        if len(self.copies) == 1:
            self.copies.append(self.make_copy())
        h = (n + 1) // 2
        return [(0, 0, h), (1, h, n)]

    # ---- forward ----------------------------------------------------------------
    def forward(self, inputs, train, seeds=None, watch=None, timer=None, copy=0, acts=None, only=None,
                update_state=False):
        """Run the layers on {input name: array}; returns {name: activation} (inputs too).

        seeds: {layer: draw key} for the random layers of a training pass (a
        layers.draw_key.DrawKey, or an int seed: DrawKey(seed)). `acts` and `only`
        rerun just the layers named in `only` over the activations `acts` of an earlier pass.
        `update_state`: each layer with state updates it after its forward (a training step)."""
        backend, seeds = self.backend, seeds or {}
        acts = dict(inputs) if acts is None else acts
        serial = watch is not None or timer is not None or copy > 0

        def work(node):
            xin = backend.join(node, [acts[i] for i in node.inputs], copy)
            acts[node.name] = self._timed(timer, node, "forward", backend.forward, node, xin, train,
                                          seeds.get(node.name))
            if update_state and node.name in self.stateful:
                backend.update_state(node)
            if watch is not None:
                watch("output", node.name, acts[node.name])

        order = self.copies[copy] if only is None else [n for n in self.copies[copy] if n.name in only]
        backend.run(order, self._lane_of(serial), lambda node: node.inputs, work)
        return acts

    # ---- backward ---------------------------------------------------------------
    def backward(self, labels=None, dy=None, weight=1.0, watch=None, timer=None, copy=0, input_grads=False,
                 on_grads=None):
        """Cost (or the given gradient `dy` of the output) and backward through every layer,
        after its forward. Returns (loss or None, {"<layer>.<param>": gradient}, {input: gradient}
        when `input_grads`). `weight` scales the cost's gradient: a half of a batch carries its
        share of the mean. on_grads(layer, {param: gradient}) after each layer's backward."""
        backend, nodes = self.backend, self.copies[copy]
        out = nodes[-1]
        serial = watch is not None or timer is not None or copy > 0
        parts = {}        # producer -> [(reader, gradient part)], read back in a fixed order
        grads, to_inputs = {}, {}
        loss = None
        if dy is None:
            losses = []
            for i, head_weight in reversed(self.heads):
                head = nodes[i]
                head_loss, dy = self._timed(timer, head, "cost", backend.cost, head, labels)
                if weight * head_weight != 1.0:
                    dy = backend.scale(head, dy, weight * head_weight)
                if watch is not None:
                    watch("cost", head.name, backend.loss_array(head_loss))
                    watch("input gradient", head.name, dy)
                self._send_back(head, dy, parts)
                losses.append((head_loss, head_weight))
            loss = self._weighted(losses)
            heads = {nodes[i].name for i, _ in self.heads}
            todo = [node for node in nodes if node.name not in heads]
        else:
            parts[out.name] = [(None, dy)]
            todo = nodes

        def work(node):
            dy = self._gathered(node, copy, parts)
            need_dx = input_grads or any(i in self.readers for i in node.inputs)
            dx, pgrads = self._timed(timer, node, "backward", backend.backward, node, dy, need_dx)
            for pname, g in pgrads.items():
                grads[f"{node.name}.{pname}"] = g
                if watch is not None:
                    watch(f"{pname} gradient", node.name, g)
            if on_grads is not None and pgrads:
                on_grads(node.name, pgrads)
            if need_dx:
                if watch is not None:
                    for part in (dx if isinstance(dx, list) else [dx]):   # "separate" inputs
                        watch("input gradient", node.name, part)
                self._send_back(node, dx, parts)

        backend.run(list(reversed(todo)), self._lane_of(serial), lambda node: self.readers[node.name], work)
        for name in self.graph_inputs:
            if input_grads and name in parts:
                to_inputs[name] = self._gathered_input(name, copy, parts)
        order = [f"{n.name}.{p}" for n in nodes for p in n.layer.param_shapes()]
        grads = {k: grads[k] for k in order}
        return (loss, grads, to_inputs) if input_grads else (loss, grads)

    def cost(self, labels, copy=0):
        """The net's loss (a host float) over the activations of the latest forward of `copy`."""
        nodes = self.copies[copy]
        return float(sum(w * self.backend.value(self.backend.cost(nodes[i], labels)[0])
                         for i, w in self.heads))

    def _weighted(self, losses):
        """The loss from [(head's cost, weight)]: one head of weight 1 keeps the backend's scalar
        (no read back); several are summed on the host, as a float."""
        if len(losses) == 1 and losses[0][1] == 1.0:
            return losses[0][0]
        return float(sum(w * self.backend.value(loss) for loss, w in losses))

    # ---- a whole step -----------------------------------------------------------
    def step(self, x, labels, train, seeds_for, backward=True, watch=None, timer=None):
        """Forward (and with `backward` the cost and backward) of a batch x on the backend.

        seeds_for(nodes) -> {layer: draw key}, called once per pass: a split batch's second
        half gets the keys shifted to its first row (DrawKey.rows_from), so each sample draws
        the same dropout mask however the batch is split. A training step (train and
        backward) updates the layers' state after their forward. Returns [(copy, start,
        stop, acts)] and, with `backward`, (loss, grads) as well; the loss is a backend
        scalar (backend.value reads it)."""
        backend = self.backend
        n = x.shape[0]
        serial = watch is not None or timer is not None
        parts = self.halves(n, serial)
        keys = seeds_for(self.nodes) if train else {}
        seeds = [{name: as_key(k).rows_from(a) for name, k in keys.items()} for _, a, _ in parts]
        on_grads = self.on_grads if train and not serial else None
        if len(parts) == 1:
            acts = self.forward({INPUT_NAME: x}, train, seeds[0], watch, timer,
                                update_state=train and backward)
            if not backward:
                return [(0, 0, n, acts)], None
            return [(0, 0, n, acts)], self.backward(labels, watch=watch, timer=timer, on_grads=on_grads)
        results = [None, None]
        sums = [columns.HalfSums() for _ in self.summing] if train else []

        def half(i):            # forward and backward of one half on one lane, cache-warm
            c, a, b = parts[i]
            try:
                acts = self.forward({INPUT_NAME: x[a:b]}, train, seeds[i], copy=c,
                                    update_state=train and backward and c == 0)
                res = self.backward(_rows(labels, a, b), weight=(b - a) / n, copy=c) if backward else None
            except BaseException:
                for pair in sums:       # the other half, waiting on this one's sums, stops
                    pair.abort()
                raise
            results[i] = (acts, res)
        with self._summed_over_halves(sums):
            backend.run_halves(lambda: half(0), lambda: half(1))
        out = [(c, a, b, results[i][0]) for i, (c, a, b) in enumerate(parts)]
        if not backward:
            return out, None
        (loss0, grads), (loss1, grads1) = results[0][1], results[1][1]
        for key, g in grads.items():         # the first half's arrays hold the sum
            backend.add_into(g, grads1[key])
        if on_grads is not None:
            for node in reversed(self.nodes):
                summed = {p: grads[f"{node.name}.{p}"] for p in node.layer.param_shapes()}
                if summed:
                    on_grads(node.name, summed)
        (_, a0, b0), (_, a1, b1) = parts
        return out, (backend.combine_losses([(loss0, b0 - a0), (loss1, b1 - a1)]), grads)

    def empty_step(self):
        """The training step of a data-parallel process whose share of the global batch is
        empty: only the layers that sum statistics over the processes (Layer.batch_sum) run,
        on zero images, forward in graph order (updating their state) and backward in reverse
        (with the input gradient where a full step computes one), so this process makes the
        collectives the others make, in their order, and keeps the same state. Zero images
        give every other layer nothing to do, and the parameter gradients are zeros."""
        backend = self.backend
        summing = [node for node in self.nodes if node.layer.batch_sum is not None]
        for node in summing:
            layer = node.layer
            shapes = layer.input_shapes if layer.join == "separate" else [layer.input_shape]
            x = [backend.zeros((0,) + tuple(s)) for s in shapes]
            backend.forward(node, x if layer.join == "separate" else x[0], True, None)
            if node.name in self.stateful:
                backend.update_state(node)
        for node in reversed(summing):
            need_dx = any(i in self.readers for i in node.inputs)
            backend.backward(node, backend.zeros((0,) + tuple(node.layer.output_shape)), need_dx)

    # ---- helpers ----------------------------------------------------------------
    @contextlib.contextmanager
    def _summed_over_halves(self, sums):
        """For one split training step: each layer of batch statistics, in both copies, sums
        them over the halves (its HalfSums), its gradients already weighted by their half's
        share of the batch (Layer.parts_weighted); afterwards it is whole again."""
        layers = [[self.copies[c][i].layer for c in (0, 1)] for i in self.summing]
        for pair, both in zip(sums, layers):
            for c, layer in enumerate(both):
                layer.batch_sum, layer.parts_weighted = pair.part(c), True
        try:
            yield
        finally:
            for both in layers:
                for layer in both:
                    layer.batch_sum, layer.parts_weighted = None, False

    def _lane_of(self, serial):
        if serial:
            return lambda node: 0
        return self.backend.lane_of

    def _timed(self, timer, node, phase, fn, *args):
        if timer is None:
            return fn(*args)
        token = self.backend.clock_start(node)
        out = fn(*args)
        timer.setdefault((node.name, phase), []).append(self.backend.clock_stop(token, node))
        return out

    def _send_back(self, node, dx, parts):
        for name, g in zip(node.inputs, self.backend.split(node, dx)):
            parts.setdefault(name, []).append((node.name, g))

    def _gathered(self, node, copy, parts):
        """The gradient of a layer's output: what its readers sent back, summed in reverse
        graph order of the readers."""
        got = sorted(parts.pop(node.name), key=lambda p: -self.rank.get(p[0], -1))
        return self.backend.gather(node, [g for _, g in got], copy)

    def _gathered_input(self, name, copy, parts):
        got = sorted(parts.pop(name), key=lambda p: -self.rank[p[0]])
        if len(got) == 1:
            return got[0][1]
        total = self.backend.copy_of(got[0][1])
        for _, g in got[1:]:
            self.backend.add_into(total, g)
        return total


def _rows(labels, a, b):
    """A half's labels (None stays None: a cost such as sum2 takes none)."""
    return None if labels is None else labels[a:b]
