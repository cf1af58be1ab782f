"""`concat`: joins its inputs into one activation (cuda-convnet2's concat), no parameters.

`mode: channels` (the default) stacks the inputs along channels in `inputs` order; their
other dimensions (H x W) must agree. `mode: flat` flattens each input (C, H, W order) and
puts them one after the other. The engine's join rule (layers.base.join_inputs on the CPU,
layers.cudabase.join_inputs on CUDA) does exactly this for any layer with several
inputs, so the layer is the identity on its joined input, and the engine's split_grad
hands each input its part of the gradient: no kernel of its own (hence no cpu.py).
"""
from layers.base import Key, Layer
from layers.registry import register


@register
class ConcatLayer(Layer):
    type = "concat"
    examples = ({}, {"mode": "flat"})
    doc = "joins its inputs along channels (H x W must agree) or flattened, in `inputs` order"
    keys = {"mode": Key(str, "channels", choices=("channels", "flat"),
                        doc="channels: stack along channels; flat: flatten each input, then join")}

    @property
    def join(self):
        return "flat" if self.cfg["mode"] == "flat" else "concat"

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        return {}          # the output is the joined input; the gradient is dL/dy itself

    def forward(self, x, params, train=False, rng=None):
        return x

    def backward(self, dy, params, need_dx=True):
        if not need_dx:
            return None, {}
        return dy.reshape((dy.shape[0],) + self.input_shape), {}
