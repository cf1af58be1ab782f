"""The checks both converters run on what they produce.

Every shape and parameter count is computed twice: by the source's own rules while
converting (cuda-convnet's, Caffe's), and by our engine from the YAML written; they must
agree, so a converted net has exactly the original's parameter count and layer output
shapes. Every key written is checked against our layer type's key specification first, so
a value our layer would refuse is reported at the source file's line.
"""
import math

import layers as layer_types
from layers.base import LayerError

from engine.errors import ConfigError


def check_layer(layer, source_type):
    """Our layer type exists and takes each key written, with the value given."""
    cls = layer_types.REGISTRY.get(layer.type)
    if cls is None:
        layer.section.fail("type", f"{source_type} maps to our '{layer.type}' layer, which this engine "
                                   "does not have")
    for key in layer.cfg:
        check_key(layer, cls, key)


def check_key(layer, cls, key):
    spec = cls.keys.get(key)
    if spec is None:
        layer.fail(key, f"needs `{key}`, which our {layer.type} layer does not have")
    if spec.kind is not list:
        try:
            spec.check(key, layer.cfg[key])
        except LayerError as e:
            layer.fail(key, f"our {layer.type} layer's `{key}`: {e.message}")


def check_against_engine(converted, text, source):
    """Build the YAML with our engine: every shape and parameter count must be the source's
    (`source`: "cuda-convnet", "Caffe", as the message names it)."""
    from engine import graph
    from engine.config import parse_net
    by_name = {c.name: c for c in converted}
    try:
        nodes = graph.build(parse_net(text))
    except ConfigError as e:
        c = by_name.get(e.layer)
        if c is None:
            raise
        c.fail(e.key, f"our engine rejects the converted layer: {e.message}")
    for node in nodes:
        c = by_name[node.name]
        ours = sum(math.prod(s) for s in node.layer.param_shapes().values())
        if (c.shape is not None and tuple(node.output_shape) != c.shape) or ours != c.params:
            c.section.fail(None, f"converts to output {list(node.output_shape)} with {ours:,} parameters "
                                 f"where {source} has {list(c.shape)} with {c.params:,}")
    return nodes
