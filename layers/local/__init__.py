"""`local`: locally connected layer, a convolution whose filters are not shared
(cuda-convnet's `local`), with optional groups and a fused activation.

Keys (padding_end included), output size and checks are conv's. Every output location
p = oy*OW + ox has its own filter bank and biases:

    weight [OH*OW, filters, channels/groups, size, size]   weight[p] is a conv weight
    bias   [filters, OH, OW]                                one per location and filter

(cuda-convnet stores modules*filterSize^2*filterChannels x filters weights and
modules*filters biases: the same numbers.) So for one location, y[:, :, oy, ox] is conv
with weight[p] and bias[:, oy, ox] restricted to that location.

im2col per location (Numba) -> one batched numpy matmul, a [F/groups, Kg] x [Kg, N] GEMM
per location and group -> bias + activation (Numba). Backward mirrors it.
"""
import numpy as np

from layers.conv import ConvLayer
from layers.local import cpu
from layers.registry import register


@register
class LocalLayer(ConvLayer):
    type = "local"
    examples = ({"filters": 6, "size": 3, "padding": 1, "neuron": "softrelu"},)
    # conv's keys but shared_biases (a local layer always has one bias per filter and position)
    # and channel_sets (its kernels read each group's consecutive channels)
    keys = {k: v for k, v in ConvLayer.keys.items() if k not in ("shared_biases", "channel_sets")}
    doc = ("locally connected (unshared) convolution, "
           "weight [out_h*out_w, filters, channels/groups, size, size], bias [filters, out_h, out_w]")

    def weight_fans(self):
        """Each location's weights are a conv weight [filters, channels/groups, size, size]:
        its fans (`init: kaiming | xavier`) are that conv's."""
        taps = self.size * self.size
        return self.channels // self.groups * taps, self.filters * taps

    def param_shapes(self):
        oh, ow = self.out_hw
        return {"weight": (oh * ow, self.filters, self.channels // self.groups, self.size, self.size),
                "bias": (self.filters, oh, ow)}

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        oh, ow = self.out_hw
        f, p_out = self.filters, oh * ow
        out = {"cols": ("workspace", (p_out, self.channels * self.size * self.size, n)),
               "tmp": ("workspace", (p_out, f, n)),
               "y": ("activation", (n, f, oh, ow))}
        if self.act.needs_input:
            out["pre"] = ("workspace", (n, f, p_out))
        if backward:
            out.update(dtmp=("gradient", (p_out, f, n)),          # cols is reused as dcols
                       dweight=("param_grad", self.param_shapes()["weight"]),
                       dbias=("param_grad", (f, oh, ow)))
            if need_dx:
                out["dx"] = ("gradient", (n,) + self.input_shape)
        return out

    # ---- compute ------------------------------------------------------------
    def _operands(self):
        """(P, groups, F/groups, Kg): the batched GEMM's dimensions."""
        oh, ow = self.out_hw
        g = self.groups
        return oh * ow, g, self.filters // g, (self.channels // g) * self.size * self.size

    def _im2col(self, x):
        """x's columns into the "cols" buffer that forward took."""
        oh, ow = self.out_hw
        cols = self._buffers["cols"]
        cpu.im2col(x, self.size, self.stride, self.padding, oh, ow, cols)
        self._cols_valid = True
        return cols

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, np.float32)
        n = x.shape[0]
        p_out, g, fg, kg = self._operands()
        b = self.buffers(n, "forward", train)
        cols = self._im2col(x)
        w4 = np.ascontiguousarray(params["weight"], np.float32).reshape(p_out, g, fg, kg)
        tmp = b["tmp"]
        np.matmul(w4, cols.reshape(p_out, g, kg, n), out=tmp.reshape(p_out, g, fg, n))
        y = b["y"]
        y3 = y.reshape(n, self.filters, p_out)
        keep = self.act.needs_input                      # abs, square: the gradient needs x
        pre = b["pre"] if keep else y3                   # declared only then
        bias = np.ascontiguousarray(params["bias"], np.float32).reshape(self.filters, p_out)
        cpu.bias_act(tmp, bias, *self.act.kernel_args(), keep, y3, pre)
        self._x, self._y3, self._pre = x, y3, pre
        return y

    def backward(self, dy, params, need_dx=True):
        x = self._x
        n = x.shape[0]
        p_out, g, fg, kg = self._operands()
        f = self.filters
        dy3 = np.ascontiguousarray(dy, np.float32).reshape(self._y3.shape)
        b = self.buffers(n, "backward", need_dx=need_dx)
        dtmp, db, dw = b["dtmp"], b["dbias"], b["dweight"]
        cpu.grad_gather(dy3, self._y3, self._pre, *self.act.kernel_args(), dtmp, db.reshape(f, p_out))
        # cols doubles as dcols below; redo it if an earlier backward overwrote it
        cols4 = (self._buffers["cols"] if self._cols_valid else self._im2col(x)).reshape(p_out, g, kg, n)
        dtmp4 = dtmp.reshape(p_out, g, fg, n)
        np.matmul(dtmp4, cols4.transpose(0, 1, 3, 2), out=dw.reshape(p_out, g, fg, kg))
        grads = {"weight": dw, "bias": db}
        if not need_dx:
            return None, grads
        w4 = np.ascontiguousarray(params["weight"], np.float32).reshape(p_out, g, fg, kg)
        self._cols_valid = False         # its contents were last needed for dw: reuse the memory
        np.matmul(w4.transpose(0, 1, 3, 2), dtmp4, out=cols4)
        dx = b["dx"]
        oh, ow = self.out_hw
        cpu.col2im(self._buffers["cols"], self.size, self.stride, self.padding, oh, ow, dx)
        return dx, grads
