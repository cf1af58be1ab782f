"""`conv`: 2-D convolution with optional groups and a fused activation.

Two ways, chosen per shape (ConvLayer.use_direct), and at batch 1 in a process that runs
single images (layers.threads.latency()) the direct one wherever its planes fit (_direct_at):
- GEMM: zero-padding and im2col (Numba) -> one BLAS GEMM per group (numpy, outside Numba)
  -> bias + activation scatter (Numba). Backward mirrors it: gradient gather -> GEMMs ->
  col2im on a zero-padded plane, cropped.
- direct (up to DIRECT_MAX_TAPS taps per group, fewer with a stride): Numba kernels that
  convolve a zero-padded copy of each image without im2col (cpu.direct_*), their inner
  loops the register tiles of layers.fma_tiles; a stride splits the padded image into
  phase images, on which the convolution is a stride-1 one; backward data is a full
  convolution of the padded gradient with the flipped filters (one per phase), backward
  weights are dot products per tap.
- the direct forward with the GEMM backward (use_direct_forward): strided RGB stems.
- Winograd F(2x2, 3x3) and F(2x2, 5x5) (use_winograd; layers/conv/winograd.py): 3x3 and 5x5
  stride-1 convolutions, forward, dx and dW each as 16 or 36 GEMMs between input and output
  transforms.
Biases: one per filter, or with `shared_biases: false` (cuda-convnet's sharedBiases=0) one
per filter and output position, bias [filters, OH, OW]; the kernels see it as
[filters, 1] or [filters, OH*OW] (`_bias2d`). With `bias: false` there is no bias parameter
(torchvision's convs before a batchnorm): the kernels read a zero [filters, 1] bias, one add
per output of zero, and the bias sum backward computes goes to a scratch nobody reads.
`channel_sets` (cuda-convnet's randSparse filterConns): group g reads the input channels
channel_sets[g], in that order. Forward gathers them into a scratch xg [N, groups*len(set),
H, W] and runs the grouped convolution above on it (self.channels is then xg's channel
count); backward's dx of xg is scatter-added back to the input's channels.
"""
import contextlib

import numpy as np

from layers import threads
from layers.base import (FAN_KEY, INIT_B_KEY, INIT_KEY, INIT_W_KEY, Key, Layer, LayerError, out_size_floor,
                         shown)
from layers.channel_sums import channel_sums
from layers.conv import cpu, winograd
from layers.fma_tiles import LANES, SLACK, TILE4_FILTERS, TILE4_VECTORS, TILE_FILTERS, TILE_VECTORS
from layers.threads import WORKERS
from layers.neuron.spec import IDENT, NEURON_KEY, NONLINEARITY_KEY, RELU, parse as parse_neuron
from layers.registry import register


def _runs(width):
    """Runs of LANES outputs that cover a row of `width`."""
    return -(-width // LANES)


def _blocks(count, per=TILE_FILTERS):
    """Blocks of `per` (a tile's filters) that cover `count` filters (or channels)."""
    return -(-count // per)


def _whole_tiles(runs, per):
    """runs with the last repeated until their count is a multiple of `per`, the runs a tile
    takes at a time."""
    extra = -len(runs) % per
    return np.concatenate([runs] + [runs[-1:]] * extra) if extra else runs


TILES = ((TILE_FILTERS, TILE_VECTORS), (TILE4_FILTERS, TILE4_VECTORS))     # (filters, runs)


def _fitting(count, item_bytes, budget):
    """How many of `count` items of item_bytes each fit in budget bytes: at least one."""
    return int(max(1, min(count, budget // item_bytes)))


def _spans(count, step):
    """(start, stop) ranges of `step` items covering 0 .. count-1, the last one shorter."""
    return [(i, min(count, i + step)) for i in range(0, count, step)]


def _tile(rows, runs):
    """The tile shape (filters, runs) that computes fewest wasted outputs for `rows` filters
    (or dx's channels) a group over `runs` (the runs of each phase, each rounded up to whole
    tiles): 6 x 2, or 4 x 3 where 6 divides the rows badly (16 filters fill 3 blocks of 6,
    32 fill 6: 11% of the multiply-adds wasted). Ties keep 6 x 2."""
    def slots(shape):
        f, v = shape
        return _blocks(rows, f) * f * sum(-(-r // v) * v for r in runs)
    return min(TILES, key=slots)


def _phase_axis(size, k, s, p):
    """One axis of the direct path's dx: for each phase py < min(s, k) (the padded input's
    positions i*s + py) its taps' count ceil((k - py)/s) and the rows i0 .. i0 + count - 1
    that hold input pixels; and the gradient's padding a, the least that keeps every row
    the full convolutions read (i - q + a, q < taps) at or after 0."""
    phases = []
    for py in range(min(s, k)):
        i0 = max(0, -((py - p) // s))
        phases.append((py, -(-(k - py) // s), i0, (size - 1 + p - py) // s + 1 - i0))
    a = max([0] + [taps - 1 - i0 for _, taps, i0, _ in phases])
    return phases, a


def _direct_geometry(size, out, k, s, p):
    """The direct path's layout, stride s = 1 a special case of it. The input as
    min(s, k)^2 phase images (pad_images) of hq rows of width wx, on which tap (ky, kx) is
    the shift (ky // s, kx // s) of phase (ky % s, kx % s): every convolution a stride-1
    one (wx covers the forward's reads; the tiles' lanes past a row's end read the next
    row, and their outputs are dropped). The gradient padded by a in planes of hd rows of
    wc (direct_grad_gather), whose full convolutions give dx phase by phase. wc holds a
    padded row, covers what dx reads for the pixels of every phase and, where the output's
    width is not a multiple of 8, 7 past it: dW's runs of 8 outputs reaching past a row's
    end must read the gradient's zeros (direct_dweight); hd keeps one zero row past the
    last such read."""
    (h, w), (oh, ow) = size, out
    rows, a = _phase_axis(h, k, s, p)
    cols, a_cols = _phase_axis(w, k, s, p)
    a = max(a, a_cols)
    reach = -(-k // s) - 1                       # the largest shift in phase rows
    wc = max(ow + a, ow + LANES - 1 if ow % LANES else 0, max(j0 + nj for _, _, j0, nj in cols) + a)
    hd = max(oh + a + 1, max(i0 + ni for _, _, i0, ni in rows) + a)
    return dict(phases=min(s, k), hq=oh + reach, wx=ow + reach, wc=wc, a=a, hd=hd, rows=rows, cols=cols)


@register
class ConvLayer(Layer):
    type = "conv"
    examples = ({"filters": 6, "size": 3, "padding": 1, "groups": 2, "neuron": "relu"},
                {"filters": 6, "size": 4, "stride": 3, "padding": 2, "padding_end": 1, "neuron": "tanh[1.7,0.6]"},
                {"filters": 4, "size": 3, "stride": 2, "groups": 2, "shared_biases": False, "neuron": "abs"},
                {"filters": 5, "size": 3, "padding": 1, "bias": False},
                {"filters": 4, "size": 3, "groups": 2, "channel_sets": [[5, 0, 3, 1], [2, 4, 0, 5]],
                 "neuron": "relu"},
                {"filters": 6, "size": 2, "stride": 2, "groups": 3, "channel_sets": [[4, 1], [0, 5], [3, 3]],
                 "shared_biases": False})
    doc = "2-D convolution (cross-correlation), weight [filters, channels/groups, size, size]"
    spatial = True
    keys = {
        "filters": Key(int, low=1, doc="output channels, over all groups"),
        "size": Key(int, low=1, doc="side of the square kernel"),
        "stride": Key(int, 1, low=1, doc="step between kernel positions"),
        "padding": Key(int, 0, low=0, doc="zeros added on each side"),
        "padding_end": Key(int, 0, low=0, doc="extra zero rows and columns past the bottom and right "
                           "edges, on top of `padding`; cuda-convnet's output rule "
                           "1 + ceil((in + 2 padding - size) / stride) is "
                           "padding_end = (size - in - 2 padding) mod stride"),
        "groups": Key(int, 1, low=1, doc="split channels and filters into this many independent groups"),
        "shared_biases": Key(bool, True, doc="one bias per filter; false: one per filter and output "
                             "position, bias [filters, out_h, out_w] (cuda-convnet's sharedBiases=0)"),
        "bias": Key(bool, True, doc="false: no bias parameter (a batchnorm follows, as in torchvision's "
                    "ResNet and GoogLeNet)"),
        "channel_sets": Key(list, None, doc="one list of input channels per group, all of one length: "
                            "group g reads channels channel_sets[g] in that order, weight [filters, "
                            "len(set), size, size] (cuda-convnet's randSparse with filterChannels; "
                            "`convert` writes the sets it draws); default: group g reads its "
                            "channels/groups consecutive channels"),
        "neuron": NEURON_KEY,
        "init_w": INIT_W_KEY,
        "init_b": INIT_B_KEY,
        "init": INIT_KEY,
        "fan": FAN_KEY,
        "nonlinearity": NONLINEARITY_KEY,
    }

    def setup(self, input_shape):
        c, h, w = input_shape
        f, k, s, p, g = self.filters, self.size, self.stride, self.padding, self.groups
        sets = self.cfg.get("channel_sets")          # local (a subclass) has no such key
        self._index = None if sets is None else self._check_channel_sets(c)
        if self._index is not None:
            c = self._index.size       # the gathered channels xg, which the convolution reads
        if c % g or f % g:
            raise LayerError("groups", f"groups={g} must divide both the input channels ({c}) "
                                       f"and filters ({f})")
        e = self.padding_end     # the kernels read zeros past the bottom/right edge by themselves
        if k > h + 2 * p + e or k > w + 2 * p + e:
            raise LayerError("size", f"kernel size {k} is larger than the padded input "
                                     f"{h + 2 * p + e}x{w + 2 * p + e} ({h}x{w} with padding {p}"
                                     + (f" and padding_end {e})" if e else ")"))
        if not self.bias and not self.shared_biases:
            raise LayerError("shared_biases", "shared_biases: false needs biases; it cannot go with bias: false")
        self.channels = c
        self._zero_bias = None if self.bias else np.zeros((f, 1), np.float32)
        self.act = parse_neuron(self.neuron)
        self.out_hw = (out_size_floor(h + e, k, s, p), out_size_floor(w + e, k, s, p))
        # the GEMM path's zero-padded planes (pad_images: hp rows of wc per channel); the
        # direct path's phase images and padded gradient (_direct_geometry)
        self._geom = dict(hp=h + 2 * p + e, wc=w + 2 * p + e)
        self._dgeom = _direct_geometry((h, w), self.out_hw, k, s, p)
        self.direct = self.use_direct(c, h, w, f, k, s, p, g)
        self._direct_one = self.planes_fit(c, h, w, p, g)
        self.direct_forward = self.use_direct_forward(c, h, w, k, s, p, g)
        self._wgeom = winograd.Geometry(h, w, *self.out_hw, p, k) if winograd.fits(k, s, p, g, e) else None
        self.winograd = self._wgeom is not None and self.use_winograd(c, f, *self.out_hw, k)
        self._wino_min = self.WINOGRAD_MIN_TILES          # use_path("winograd"): any batch
        self._taps = None          # the direct kernels' tap offsets, made on first use
        self._plain_runs = None    # dW's runs over an unpadded gradient (_plain_dw_runs)
        return (f,) + self.out_hw

    def _check_channel_sets(self, c):
        """channel_sets flattened to one int64 index of the channels xg gathers, or LayerError."""
        sets, g = self.channel_sets, self.groups
        if (not isinstance(sets, list) or len(sets) != g
                or not all(isinstance(one, list) and one for one in sets)):
            raise LayerError("channel_sets", f"needs one non-empty list of input channels per group "
                                             f"(groups={g}), got {shown(sets)}")
        if len({len(one) for one in sets}) != 1:
            raise LayerError("channel_sets", "every group reads the same number of channels; got lists "
                                             f"of lengths {[len(one) for one in sets]}")
        for i, one in enumerate(sets):
            bad = [v for v in one if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < c]
            if bad:
                raise LayerError("channel_sets", f"group {i}: {shown(bad[0])} is not an input channel "
                                                 f"(0..{c - 1})")
        return np.array([v for one in sets for v in one], np.int64)

    # Selection (bench/bench_conv.py, one core, forward + backward): the direct kernels'
    # register tiles run near the core's peak without im2col or BLAS's packing, and win
    # wherever a group's taps (channels x size^2) are few enough for one image's padded
    # planes and a block's weights to stay in cache: every small net's convolution (batch
    # 128: CIFAR-10 conv2 29 vs 46 ms forward, 53 vs 116 backward; the digits ResNet's
    # layer1 10 vs 15 and 23 vs 45; LeNet-5 conv2 2.9 vs 4.9), ResNet-18's layer1 (576
    # taps, batch 8: 30 vs 31, 54 vs 60). From ~1,000 taps (AlexNet's conv2, ResNet-18's
    # layer2 on) OpenBLAS's GEMM at its peak outweighs im2col (VGG-16's 512-channel convs:
    # 359 vs 645 ms forward at batch 8); so it does where a group's padded planes outgrow
    # the caches, each block of filters streaming them again (VGG-16's conv1_2, 13 MB an
    # image: 320 vs 157 ms forward at batch 2; 64 channels of 112x112, 3.5 MB: a tie).
    # Strided convolutions (one core, batch 128 unless said, backward with dx): the phase
    # images make them stride-1 ones, the same tiles at up to ~60-80 GFLOP/s; their dx is one
    # full convolution per phase, with a quarter of the taps each (3x3 stride 2), so backward
    # gains less. Direct won on the digits ResNet's 16->32 3x3 stride 2 (8.0 / 12.0 vs 10.3 /
    # 14.5 ms forward / backward; its 1x1 shortcuts, 1.9 / 3.3 vs 4.4 / 3.0 on the Zen 3 then,
    # lose on the Zen 4 at this code: below); GEMM on its 32->64 3x3 to 7x7 maps (288 taps:
    # 7.6 / 11.4 vs 7.2 / 8.6) and ResNet-18's 64->128 (576 taps: 17 / 38 vs 15 / 26), where
    # BLAS's larger tiles keep more of the work in registers. dx's tile rows are input
    # channels: with fewer than 6 a group (RGB stems) they run partly empty, over every phase:
    # ResNet-18's 7x7 stem, batch 8, 24 / 93 vs 34 / 70 (its forward and dW alone win, 24 + 32
    # vs 36 + 35: a first layer needs no dx, but the rule is the shape's), AlexNet's 11x11
    # conv1 12 / 41 vs 16 / 31. 1x1 convolutions go to GEMM, their im2col a copy (a
    # subsampling with a stride) and their few taps a short loop for the tiles (forward /
    # backward, GEMM against direct): the digits ResNet's shortcuts at batch 64 0.9 / 1.1 vs
    # 2.2 / 1.5 (16->32, stride 2), 0.7 / 0.8 vs 0.7 / 1.3 (32->64), ResNet-18's 64->128 at
    # batch 8 2.5 / 3.4 vs 3.3 / 4.9; stride 1 at batch 32, 64->256 on 14x14 3.7 / 6.6 vs 3.7
    # / 11.9, 256->64 4.6 / 7.1 vs 5.0 / 8.6, 16->32 on 28x28 a tie (1.2 / 1.8 vs 0.9 / 2.0).
    DIRECT_MAX_TAPS = 1024      # channels per group x size x size
    DIRECT_MAX_STRIDED_TAPS = 256
    DIRECT_MAX_PLANES = 4 << 20     # bytes of one image's padded planes, per group

    @classmethod
    def planes_fit(cls, c, h, w, padding, groups):
        """One image's padded planes of a group take at most DIRECT_MAX_PLANES bytes."""
        return 4 * (c // groups) * (h + 2 * padding) * (w + 2 * padding) <= cls.DIRECT_MAX_PLANES

    @classmethod
    def use_direct(cls, c, h, w, f, k, stride, padding, groups):
        """The rule: kernels larger than 1x1, at most DIRECT_MAX_TAPS taps per group and
        DIRECT_MAX_PLANES bytes of padded planes per group; with a stride at most
        DIRECT_MAX_STRIDED_TAPS taps and at least TILE_FILTERS channels per group."""
        cg = c // groups
        if k == 1:
            return False
        if stride > 1 and (cg * k * k > cls.DIRECT_MAX_STRIDED_TAPS or cg < TILE_FILTERS):
            return False
        return cg * k * k <= cls.DIRECT_MAX_TAPS and cls.planes_fit(c, h, w, padding, groups)

    @classmethod
    def use_direct_forward(cls, c, h, w, k, stride, padding, groups):
        """Where the rule says GEMM, the forward alone on the direct path and the backward on
        GEMM: strided convolutions larger than 1x1 of fewer than TILE_FILTERS channels a group
        (RGB stems) whose padded planes fit. Their forward needs no im2col there, but their
        dx's tiles (rows of input channels) run mostly empty and their dW's strided sums lose
        to GEMM.
        One core, batch 32, forward / backward without dx, GEMM against direct: AlexNet's
        11x11 stride-4 conv1 64 / 67 against 47 / 125 ms, ResNet-18's 7x7 stride-2 stem 151 /
        154 against 97 / 196 (bench/bench_conv.py --no-dx)."""
        return k > 1 and stride > 1 and c // groups < TILE_FILTERS and cls.planes_fit(c, h, w, padding, groups)

    # Winograd F(2x2, 3x3) (bench/bench_conv.py, one core, forward / backward ms, against the
    # rule's path before): 2.25x fewer multiply-adds in BLAS's GEMMs, for transforms that cost
    # about what a GEMM with 16 channels does. AlexNet's column convs at batch 32: conv3a 48 /
    # 90 against GEMM's 62 / 127, conv4a 35 / 68 against 47 / 95, conv5a 23 / 44 against 33 /
    # 67; ResNet-18's layer1 at batch 8 17 / 36 against direct's 24 / 48, layer2 16 / 31
    # against GEMM's 24 / 47, layer3 16 / 31 against 23 / 46; the digits ResNet's layer2 (32
    # channels, 14x14) 7.0 / 11.4 against 7.8 / 14.9. It loses with few channels: its layer1
    # (16) 8.3 / 15.6 against 7.8 / 16.8 on one core, but the whole step at batch 128, both
    # halves at once, 107 against 101 ms (the transforms' memory traffic; 32 and up on it:
    # 100), VGG-16's conv1_1 (3) 47 / 187 against 26 / 103; on 7x7 maps (a third of the 8x8
    # tiles' outputs dropped) unless wide (the digits ResNet's 64-channel layer3 at batch 32
    # 2.4 / 4.4 against 2.0 / 4.4; ResNet-18's 512-channel layer4 76 / 151 against 90 / 186);
    # and where a batch has few tiles, the weights' transforms then weighing (layer4 at batch
    # 8: 28 / 52 against 22 / 45).
    # F(2x2, 5x5), 2.78x fewer multiply-adds, wins from 16 channels (batch 128, one core):
    # CIFAR-10's conv2 (32, 16x16) 12.1 / 25.9 against direct's 17.2 / 39.0, conv3 (32 -> 64,
    # 8x8) 6.4 / 16.5 against 8.5 / 20.6, alexnet-digits' conv2 (16 -> 32, 14x14) 6.2 / 13.3
    # against 8.4 / 17.7; AlexNet's column conv2 (48 -> 128, 27x27, batch 32) 40 / 94 against
    # GEMM's 78 / 166. Not with fewer: LeNet-5's conv2 (6 -> 16) 1.45 / 3.9 against 1.28 /
    # 3.15, CIFAR-10's conv1 (3) 10.4 / 28 against 7.2 / 20.
    WINOGRAD_MIN_CHANNELS = {3: 32, 5: 16}
    WINOGRAD_WIDE = 128             # channels from which dropped tile outputs do not matter
    WINOGRAD_MAX_WASTE = 1.2        # tile outputs computed / outputs kept
    WINOGRAD_MIN_TILES = 256        # tiles in a batch (layer4 at batch 8: 128; layer3: 392)
    # A chunk's transforms (input, products, output) stay in L2 between the three passes when
    # they are small: about 256 tiles' worth, at least 2 MB, at most CHUNK_BYTES. Chunks of
    # 8 MB ran the digits ResNet's layers (16-64 channels, b64, one core, fwd / bwd ms) at
    # 3.64 / 9.36, 3.13 / 6.38, 4.14 / 8.33 against 3.31 / 6.67, 2.80 / 5.14, 3.60 / 7.73; 2 MB
    # of 512 channels is 32 tiles, too few for the products (ResNet-18's layer4 at batch 8:
    # 29 / 54 against 25 / 45).
    WINOGRAD_CHUNK_TILES = 256
    WINOGRAD_MIN_CHUNK = 2 << 20

    @classmethod
    def use_winograd(cls, c, f, oh, ow, size=3):
        """The rule for a 3x3 or 5x5 stride-1 convolution of one group (winograd.fits), any batch."""
        narrow = min(c, f)
        waste = (2 * -(-oh // 2)) * (2 * -(-ow // 2)) / (oh * ow)
        return narrow >= cls.WINOGRAD_MIN_CHANNELS[size] and (waste <= cls.WINOGRAD_MAX_WASTE
                                                        or narrow >= cls.WINOGRAD_WIDE)

    PATHS = ("gemm", "direct", "mixed", "winograd")

    def use_path(self, path):
        """Put the layer on one path whatever the rules pick (tests, bench/bench_conv.py):
        "gemm", "direct", "mixed" (the direct forward, the GEMM backward) or "winograd"
        (3x3 stride-1 convolutions of one group)."""
        if path not in self.PATHS:
            raise ValueError(f"path must be one of {', '.join(self.PATHS)}, got {path!r}")
        if path == "winograd" and self._wgeom is None:
            raise ValueError("the winograd path takes 3x3 and 5x5 stride-1 convolutions of one group, "
                             "padding below the size")
        self.direct, self.direct_forward, self.winograd = path == "direct", path == "mixed", path == "winograd"
        self._wino_min = 0
        return self

    def _wino_at(self, n):
        """Whether a batch of n runs on the Winograd path: the rule's, for batches of at least
        WINOGRAD_MIN_TILES tiles (not single images split over the cores: _direct_at)."""
        geo = self._wgeom
        return self.winograd and n * geo.th * geo.tw >= self._wino_min and not self._single(n)

    def _direct_at(self, n):
        """The path of a batch of n: the rule's (`direct`), but at batch 1 where this process
        runs single images over the cores (threads.latency()) the direct kernels wherever a
        group's padded planes fit, whatever the taps, stride and channels: their blocks of
        filters split one image over the cores (BLAS's GEMM gained 1.3x from a second
        thread on ResNet-18's convolutions at batch 1), and they read the weights in place.
        One core, batch 1, forward: the stem 3.1 vs 4.8 ms, layer4 3.4 vs 4.1; layer2 3.4 vs
        3.4 (bench/bench_conv.py --batch 1)."""
        return self._direct_one if self._single(n) else self.direct

    @staticmethod
    def _single(n):
        """A batch of one image in a process that splits single images over the cores."""
        return n == 1 and threads.latency()

    def param_shapes(self):
        shapes = {"weight": (self.filters, self.channels // self.groups, self.size, self.size)}
        if self.bias:
            shapes["bias"] = (self.filters,) if self.shared_biases else (self.filters,) + self.out_hw
        return shapes

    def _bias2d(self, params):
        """The bias as the kernels read it: [filters, 1] shared, [filters, OH*OW] per position,
        zeros [filters, 1] without biases."""
        if not self.bias:
            return self._zero_bias
        return np.ascontiguousarray(params["bias"], np.float32).reshape(self.filters, -1)

    def _dbias_buffer(self):
        """backward's dbias declaration: the bias gradient, or a scratch for the kernels'
        bias sum where there is no bias."""
        if self.bias:
            return ("param_grad", self.param_shapes()["bias"])
        return ("workspace", (self.filters,))

    def _grads(self, dweight, dbias):
        grads = {"weight": dweight.reshape(self.param_shapes()["weight"])}
        if self.bias:
            grads["bias"] = dbias
        return grads

    def macs(self):
        oh, ow = self.out_hw
        return self.filters * (self.channels // self.groups) * self.size * self.size * oh * ow

    def buffer_shapes(self, n, train=False, backward=False, need_dx=True):
        if self._wino_at(n):
            out = self._wino_buffer_shapes(n, backward, need_dx)
        elif self._direct_at(n):
            out = self._direct_buffer_shapes(n, backward, need_dx)
        elif self.direct_forward:
            out = self._mixed_buffer_shapes(n, backward, need_dx)
        else:
            out = self._gemm_buffer_shapes(n, backward, need_dx)
        if self._index is not None:      # the gathered input, and the convolution's dx of it
            xg_shape = (n, self._index.size) + tuple(self.input_shape[1:])
            out["xg"] = ("workspace", xg_shape)
            if backward and need_dx:
                out["dxg"] = ("gradient", xg_shape)
        return out

    def _dx_tag(self):
        """The buffer the convolution writes its dx into: dxg, scattered to dx, with channel_sets."""
        return "dx" if self._index is None else "dxg"

    def _gemm_buffer_shapes(self, n, backward, need_dx):
        oh, ow = self.out_hw
        f, rows = self.filters, self.channels * self.size * self.size
        span = self._chunk(n) * oh * ow                 # columns of one chunk of images
        geo = self._geom
        out = {"xpad": ("workspace", (self._chunk(n) * self.channels * geo["hp"] * geo["wc"],)),
               "cols": ("workspace", (rows * span,)),
               "tmp": ("workspace", (f * span,)),
               "y": ("activation", (n, f, oh, ow))}
        if self.act.needs_input:
            out["pre"] = ("workspace", (n, f, oh * ow))
        if backward:
            out["dtmp"] = ("gradient", (f * span,))     # cols is reused as dcols, xpad as dxpad
            out["dweight"] = ("param_grad", (f, rows // self.groups))
            out["dbias"] = self._dbias_buffer()
            if n > self._chunk(n):
                out["dw_part"] = ("gradient", (f // self.groups, rows // self.groups))
            if need_dx:
                out["dx"] = ("gradient", (n,) + self.input_shape)
        return out

    def _direct_buffer_shapes(self, n, backward, need_dx):
        oh, ow = self.out_hw
        f, c, g, geo = self.filters, self.channels, self.groups, self._dgeom
        k2 = self.size * self.size
        rows = max([oh * _runs(ow) * LANES] + [ni * _runs(nj) * LANES for _, _, _, ni in geo["rows"]
                                                for _, _, _, nj in geo["cols"]])     # a tile's scratch row
        fc = self._tile_shapes()[1][0]
        out = {"xpad": ("workspace", (n * self._phase_span() + SLACK,)),
               # 6 rows of sums for any tile shape: the kernels' row stride is this / 6
               "tiles": ("workspace", (min(WORKERS, n * g * _blocks(max(f, c) // g, TILE4_FILTERS)),
                                       TILE_FILTERS * rows)),
               "y": ("activation", (n, f, oh, ow))}
        if self.act.needs_input:
            out["pre"] = ("workspace", (n, f, oh * ow))
        if backward:
            out["dzp"] = ("gradient", (n * f * geo["hd"] * geo["wc"] + SLACK,))
            out["dweight"] = ("param_grad", (f, c // g * k2))
            out["dbias"] = self._dbias_buffer()
            out["dwsum"] = ("workspace", (WORKERS, cpu.DW_SUMS))
            if need_dx:
                out["dx"] = ("gradient", (n,) + self.input_shape)
                taps = len(self._tap_offsets()[3])
                out["wflip"] = ("workspace", (g * _blocks(c // g, fc), taps * fc))
        return out

    def _wino_groups(self, n):
        """The Winograd path's groups of images, (n0, n1): about CHUNK_BYTES of padded images
        and gradients each (at least one image). Each group is padded on its own, forward and
        again backward (dW reads the padded images then), so that no layer keeps a padded copy
        of its batch (VGG-16's conv1_2: 13 MB an image)."""
        geo = self._wgeom
        per_image = 4 * (self.channels * geo.plane() + self.filters * geo.plane_d())
        return _spans(n, _fitting(n, per_image, self.CHUNK_BYTES))

    def _wino_chunks(self, m, dx=False):
        """The chunks of a group of m images: (u0, u1) ranges of its tile rows (of the output,
        or with dx of the input), about CHUNK_BYTES of transforms each."""
        geo = self._wgeom
        units, tw = (m * geo.thd, geo.twd) if dx else (m * geo.th, geo.tw)
        # a tile row's transforms: n^2 floats a tile and channel, on both sides
        per_tile = 4 * geo.n ** 2 * (self.channels + self.filters)
        budget = min(self.CHUNK_BYTES, max(self.WINOGRAD_MIN_CHUNK, per_tile * self.WINOGRAD_CHUNK_TILES))
        return _spans(units, _fitting(units, per_tile * tw, budget))

    def _wino_tiles(self, n):
        """Tiles of the largest chunk, forward or dx."""
        geo = self._wgeom
        m = self._wino_groups(n)[0][1]
        return max(max(u1 - u0 for u0, u1 in self._wino_chunks(m)) * geo.tw,
                   max(u1 - u0 for u0, u1 in self._wino_chunks(m, True)) * geo.twd)

    def _wino_buffer_shapes(self, n, backward, need_dx):
        oh, ow = self.out_hw
        f, c, geo = self.filters, self.channels, self._wgeom
        tiles, m, nn = self._wino_tiles(n), self._wino_groups(n)[0][1], geo.n ** 2
        out = {"xpad": ("workspace", (m * c * geo.plane() + geo.slack(),)),
               "wv": ("workspace", (winograd.views_size(nn, max(c, f), tiles),)),    # input transforms
               "wm": ("workspace", (winograd.views_size(nn, max(c, f), tiles),)),    # products; dW: gradient ones
               "u": ("workspace", (nn, f, c)),
               "y": ("activation", (n, f, oh, ow))}
        if self.act.needs_input:
            out["pre"] = ("workspace", (n, f, oh * ow))
        if backward:
            out["dzs"] = ("gradient", (m * f * geo.plane_d() + geo.slack(),))
            out["wsum"] = ("workspace", (2, nn, f, c))              # dW's products: the sum, a chunk's
            out["dweight"] = ("param_grad", (f, c * self.size ** 2))
            out["dbias"] = self._dbias_buffer()
            if need_dx:
                out["dx"] = ("gradient", (n,) + self.input_shape)
                out["ut"] = ("workspace", (nn, c, f))
        return out

    def _wino_views(self, t, rows_v, rows_m):
        """[n^2, rows, t] views of the transforms' buffers (winograd.wino_views)."""
        nn = self._wgeom.n ** 2
        return (winograd.wino_views(self._buffers["wv"], nn, rows_v, t),
                winograd.wino_views(self._buffers["wm"], nn, rows_m, t))

    def _wino_split(self, x):
        """The padded, de-interleaved planes of the images x (a group) in xpad."""
        geo = self._wgeom
        xs = self._buffers["xpad"]
        xs[x.shape[0] * self.channels * geo.plane():] = 0.0    # the slack the last tiles' vectors read
        winograd.split_images(x, self.padding, geo.hp, geo.half, xs)
        return xs

    def _wino_forward(self, x, params, train):
        n, f, c = x.shape[0], self.filters, self.channels
        oh, ow = self.out_hw
        geo = self._wgeom
        b = self.buffers(n, "forward", train)
        y3 = b["y"].reshape(n, f, oh * ow)
        keep = self.act.needs_input
        pre = b["pre"] if keep else y3                   # declared only then
        u = b["u"]          # (not the kernel's return: a rehearsal's kernels return nothing)
        winograd.transform_weights(np.ascontiguousarray(params["weight"], np.float32), geo.g, u)
        bias, plain = self._bias2d(params), not self.bias and self.act.identity
        code, pa, pb = self.act.kernel_args()
        for n0, n1 in self._wino_groups(n):
            xs = self._wino_split(x[n0:n1])
            chunks = self._wino_chunks(n1 - n0)
            for i, (u0, u1) in enumerate(chunks):
                v, m = self._wino_views((u1 - u0) * geo.tw, c, f)
                winograd.input_transform(xs, geo.plane(), geo.half, geo.th, geo.tw, u0, u1, v, geo.cols)
                np.matmul(u, v, out=m)
                # a function the kernels do not fuse (neither relu nor the identity) is applied to
                # all of the y it is given after the call (activation_kernel's split): the group's,
                # with its last chunk
                fused = code in (RELU, IDENT) or i == len(chunks) - 1
                winograd.output_transform(m, geo.th, geo.tw, u0, u1, oh, ow, bias, code if fused else IDENT, pa,
                                          pb, keep, plain, y3[n0:n1], pre[n0:n1], geo.taps)
        self._x, self._y3, self._pre = x, y3, pre
        return b["y"]

    def _wino_backward(self, dy, params, need_dx):
        n, f, c = self._x.shape[0], self.filters, self.channels
        oh, ow = self.out_hw
        h, w = self.input_shape[1:]
        geo = self._wgeom
        dy3 = np.ascontiguousarray(dy, np.float32).reshape(self._y3.shape)
        b = self.buffers(n, "backward", need_dx=need_dx)
        dzs, db = b["dzs"], b["dbias"]
        db64, db_group = np.zeros((2, f, db.size // f), np.float64)
        total, part = b["wsum"]
        dx = b[self._dx_tag()] if need_dx else None
        if need_dx:
            ut = b["ut"]
            winograd.transform_weights(np.ascontiguousarray(np.asarray(params["weight"], np.float32)
                                                            .transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]), geo.g, ut)
            zero = np.zeros((c, 1), np.float32)
        first = True
        for n0, n1 in self._wino_groups(n):
            xs = self._wino_split(self._x[n0:n1])
            dzs[(n1 - n0) * f * geo.plane_d():] = 0.0
            winograd.grad_split(dy3[n0:n1], self._y3[n0:n1], self._pre[n0:n1], *self.act.kernel_args(), geo.a, oh,
                                ow, geo.hd, geo.half_d, dzs, db_group)
            db64 += db_group
            for u0, u1 in self._wino_chunks(n1 - n0):
                v, z = self._wino_views((u1 - u0) * geo.tw, c, f)
                winograd.input_transform(xs, geo.plane(), geo.half, geo.th, geo.tw, u0, u1, v, geo.cols)
                winograd.grad_transform(dzs, geo.plane_d(), geo.half_d, geo.a, geo.th, geo.tw, u0, u1, z, geo.taps)
                np.matmul(z, v.transpose(0, 2, 1), out=total if first else part)
                if not first:
                    total += part
                first = False
            if need_dx:
                dx3 = dx[n0:n1].reshape(n1 - n0, c, h * w)
                for u0, u1 in self._wino_chunks(n1 - n0, dx=True):
                    v, m = self._wino_views((u1 - u0) * geo.twd, f, c)
                    winograd.input_transform(dzs, geo.plane_d(), geo.half_d, geo.thd, geo.twd, u0, u1, v,
                                             geo.cols_d)
                    np.matmul(ut, v, out=m)
                    winograd.output_transform(m, geo.thd, geo.twd, u0, u1, h, w, zero, IDENT, 0.0, 0.0, False, True,
                                              dx3, dx3, geo.taps)
        db.reshape(f, -1)[:] = db64
        winograd.weight_gradient(total, geo.g, b["dweight"])
        return dx, self._grads(b["dweight"], db)

    def _mixed_buffer_shapes(self, n, backward, need_dx):
        """The direct forward's buffers, its phase images a chunk of images at a time, and the
        GEMM backward's; its im2col and col2im take the room of the phase images, which it
        does not read."""
        out = self._direct_buffer_shapes(n, False, need_dx)
        gemm = self._gemm_buffer_shapes(n, backward, need_dx)
        phases = self._phase_chunk(n) * self._phase_span() + SLACK
        out["xpad"] = ("workspace", (max(phases, gemm["xpad"][1][0]),))
        if backward:
            out.update((tag, shape) for tag, shape in gemm.items() if tag not in ("xpad", "tmp", "y", "pre"))
        return out

    def _phase_span(self):
        """One image's phase images in xpad (pad_images with the direct geometry)."""
        geo = self._dgeom
        return self.channels * geo["hq"] * self._phase_row()

    def _phase_row(self):
        """The phase images' row stride in xpad: their rows side by side (pad_images)."""
        return self._dgeom["phases"] ** 2 * self._dgeom["wx"]

    def _tap_offsets(self):
        """Made once for the direct path: the taps' flat offsets into the phase images
        (forward, dW), in the weights' (channel, ky, kx) order; the forward's runs of 8
        outputs in whole tiles (_tile_shapes), and dW's: where each starts in the gradient
        and in the input; dx's taps (_dx_taps): their offsets into the padded gradient, the
        (filter, ky, kx) each reads (pack_flipped), and the phase table and runs of direct_dx."""
        if self._taps is None:
            geo, g, k, s = self._dgeom, self.groups, self.size, self.stride
            oh, ow = self.out_hw
            wx, nph, row = geo["wx"], geo["phases"], self._phase_row()
            ch, ky, kx = np.meshgrid(np.arange(self.channels // g), np.arange(k), np.arange(k), indexing="ij")
            off = (ch * geo["hq"] * row + ky // s * row + ((ky % s) * nph + kx % s) * wx + kx // s).ravel()
            runs = self._run_starts(range(oh), 0, ow, row)
            dw_runs = np.stack([self._run_starts(range(oh), 0, ow, geo["wc"])[:, 0], runs[:, 0]], axis=1)
            (_, vf), (_, vc) = self._tile_shapes()
            self._taps = (off.astype(np.int64), _whole_tiles(runs, vf), dw_runs, *self._dx_taps(vc))
        return self._taps

    def _plain_dw_runs(self):
        """dW's runs (as _tap_offsets') where it reads dy unpadded: rows ow apart."""
        if self._plain_runs is None:
            oh, ow = self.out_hw
            _, _, padded, *_ = self._tap_offsets()
            self._plain_runs = np.stack([self._run_starts(range(oh), 0, ow, ow)[:, 0], padded[:, 1]], axis=1)
        return self._plain_runs

    def _tile_shapes(self):
        """The tile shapes (_tile) of the forward (over the filters) and dx (over the channels)."""
        geo, g = self._dgeom, self.groups
        oh, ow = self.out_hw
        return (_tile(self.filters // g, [oh * _runs(ow)]),
                _tile(self.channels // g, [ni * _runs(nj) for _, _, _, ni in geo["rows"]
                                           for _, _, _, nj in geo["cols"] if ni > 0 and nj > 0]))

    def _dx_taps(self, per):
        """dx's taps, phase by phase of the input: each reads the padded gradient of filter
        fl at the shift (a - qy, a - qx) with the weights' tap (qy*s + py, qx*s + px), in
        ascending offsets; offsets [T], sources [T, 3] (fl, ky, kx), the phase table
        (direct_dx's) and the runs of every phase, in whole tiles of `per` runs."""
        geo, s = self._dgeom, self.stride
        wc, a = geo["wc"], geo["a"]
        plane = geo["hd"] * wc
        offq, source, table, vec = [], [], [], []
        for py, ty, i0, ni in geo["rows"]:
            for px, tx, j0, nj in geo["cols"]:
                if ni <= 0 or nj <= 0:          # no input pixel in this phase
                    continue
                fl, ry, rx = np.meshgrid(np.arange(self.filters // self.groups), np.arange(ty), np.arange(tx),
                                         indexing="ij")
                t0 = sum(len(o) for o in offq)
                offq.append((fl * plane + (a - ty + 1 + ry) * wc + a - tx + 1 + rx).ravel())
                source.append(np.stack([fl.ravel(), ((ty - 1 - ry) * s + py).ravel(),
                                        ((tx - 1 - rx) * s + px).ravel()], axis=1))
                table.append((py, px, i0, j0, ni, nj, _runs(nj) * LANES, t0, t0 + offq[-1].size,
                              sum(len(v) for v in vec)))
                vec.append(_whole_tiles(self._run_starts(range(i0, i0 + ni), j0, nj, wc), per))
        if not table:           # no tap reads any input pixel (a 1x1 input, padding, stride > size)
            return np.zeros(0, np.int64), np.zeros((0, 3), np.int64), np.zeros((0, 10), np.int64), \
                np.zeros((0, 2), np.int64)
        return (np.concatenate(offq).astype(np.int64), np.concatenate(source).astype(np.int64),
                np.array(table, np.int64), np.concatenate(vec))

    @staticmethod
    def _run_starts(rows, col, width, stride):
        """[runs, 2] int64: for the runs of 8 outputs covering columns col .. col + width - 1
        of the given rows (`stride` apart), each run's start there and in a tile's scratch
        (its rows one after another, each rounded up to whole runs)."""
        per = _runs(width)
        return np.array([(r * stride + col + i * LANES, (j * per + i) * LANES)
                         for j, r in enumerate(rows) for i in range(per)], np.int64).reshape(-1, 2)

    def _direct_forward(self, x, params, train):
        n, f = x.shape[0], self.filters
        oh, ow = self.out_hw
        geo = self._dgeom
        b = self.buffers(n, "forward", train)
        span = self._phase_span()
        xpad = b["xpad"]
        bias = self._bias2d(params)
        y3 = b["y"].reshape(n, f, oh * ow)
        keep = self.act.needs_input
        pre = b["pre"] if keep else y3                   # declared only then
        off, runs = self._tap_offsets()[:2]
        w = np.ascontiguousarray(params["weight"], np.float32).reshape(-1)     # read in place
        # the direct backward reads every image's phase images; a GEMM one (direct_forward)
        # none, so there they go in chunks
        step = n if self._on_direct else self._phase_chunk(n)
        for n0, n1 in _spans(n, step):
            m = n1 - n0
            xpad[m * span:m * span + SLACK] = 0.0         # the slack the tiles' last runs read
            cpu.pad_images(x[n0:n0 + m], self.padding, self.stride, geo["phases"], geo["hq"], geo["wx"],
                           xpad[:m * span].reshape(m, span))
            cpu.direct_forward(xpad, span, off, w, self._tile_shapes()[0][0], runs, ow, _runs(ow) * LANES, bias,
                               self.groups, *self.act.kernel_args(), keep, b["tiles"], y3[n0:n0 + m],
                               pre[n0:n0 + m])
        self._x, self._y3, self._pre, self._phases = x, y3, pre, xpad
        self._cols_hold = None               # a GEMM backward (direct_forward) makes its columns
        return b["y"]

    def _phase_chunk(self, n):
        """Images a forward of the mixed path pads at once: about CHUNK_BYTES of phase images."""
        return _fitting(n, 4 * self._phase_span(), self.CHUNK_BYTES)

    def _direct_backward(self, dy, params, need_dx):
        n, f = self._x.shape[0], self.filters
        oh, ow = self.out_hw
        geo = self._dgeom
        a, wc = geo["a"], geo["wc"]
        dy3 = np.ascontiguousarray(dy, np.float32).reshape(self._y3.shape)
        b = self.buffers(n, "backward", need_dx=need_dx)
        dzp, dw2, db = b["dzp"], b["dweight"], b["dbias"]
        plane = geo["hd"] * wc
        db64 = np.zeros((f, db.size // f), np.float64)
        off, _, dw_runs, offq, source, phase, dx_runs = self._tap_offsets()
        if not need_dx and self.act.identity and ow % LANES == 0 and db64.shape[1] == 1:
            # dW reads dy as it is: no gradient to pad for dx, none to make, and no run of 8
            # outputs crosses a row's end (CIFAR-10's conv1: a 1.4 ms copy of 8 MB at batch 64)
            channel_sums(dy3, db64.reshape(-1))
            dz, dz_img, start = dy3.reshape(-1), f * oh * ow, 0
            dw_runs = self._plain_dw_runs()
        else:
            dzp[n * f * plane:] = 0.0
            cpu.direct_grad_gather(dy3, self._y3, self._pre, *self.act.kernel_args(), a, oh, ow, wc,
                                   dzp[:n * f * plane].reshape(n, f, plane), db64)
            dz, dz_img, start = dzp, f * plane, a * (wc + 1)
        db.reshape(f, -1)[:] = db64
        cpu.direct_dweight(self._phases, self._phase_span(), dz, dz_img, start, off, self.groups, n, dw_runs,
                           b["dwsum"], dw2)
        dx = None
        if need_dx:
            dx = b[self._dx_tag()]
            cpu.pack_flipped(np.ascontiguousarray(params["weight"], np.float32), self.groups, source, b["wflip"])
            cpu.direct_dx(dzp, f * plane, offq, b["wflip"], dx_runs, phase, self.stride, self.padding,
                          self.groups, self._buffers["tiles"], dx)     # forward's, free now
        return dx, self._grads(dw2, db)

    # ---- compute ------------------------------------------------------------
    # The batch goes through in chunks of images whose im2col matrix is about CHUNK_BYTES:
    # the columns are still in cache when the GEMM reads them, and the workspace stays
    # small however large the batch (AlexNet's conv1 would need 562 MB per column at
    # batch 128). Each chunk's GEMM keeps at least ~700 columns, where BLAS runs at full
    # speed (measured: bench/ notes in the closing note of issue 5).
    CHUNK_BYTES = 8 << 20

    def _chunk(self, n):
        oh, ow = self.out_hw
        per_image = 4 * self.channels * self.size * self.size * oh * ow
        return _fitting(n, per_image, self.CHUNK_BYTES)

    def _blocks(self):
        """Row slices of (filters, cols rows) for each group."""
        fg = self.filters // self.groups
        kg = (self.channels // self.groups) * self.size * self.size
        return [(slice(i * fg, (i + 1) * fg), slice(i * kg, (i + 1) * kg)) for i in range(self.groups)]

    def _views(self, n0, n1, *tags):
        """2-D contiguous views of the flat chunk buffers for images n0..n1."""
        oh, ow = self.out_hw
        m = (n1 - n0) * oh * ow
        rows = {"cols": self.channels * self.size * self.size, "tmp": self.filters, "dtmp": self.filters}
        return [self._buffers[t][:rows[t] * m].reshape(rows[t], m) for t in tags]

    def _xpad(self, n0, n1):
        """The chunk's zero-padded images [n1 - n0, C*hp*wc] (pad_images' layout)."""
        span = self.channels * self._geom["hp"] * self._geom["wc"]
        return self._buffers["xpad"][:(n1 - n0) * span].reshape(n1 - n0, span)

    def _im2col(self, x, n0, n1):
        oh, ow = self.out_hw
        geo = self._geom
        cols, = self._views(n0, n1, "cols")
        xpad = self._xpad(n0, n1)
        cpu.pad_images(x[n0:n1], self.padding, 1, 1, geo["hp"], geo["wc"], xpad)
        cpu.im2col(xpad, self.size, self.stride, geo["hp"], geo["wc"], oh, ow, cols)
        self._cols_hold = (n0, n1)
        return cols

    def _chunks(self, n):
        return _spans(n, self._chunk(n))

    def forward(self, x, params, train=False, rng=None):
        x = np.ascontiguousarray(x, np.float32)
        if self._index is not None:
            xg = self.buffers(x.shape[0], "forward", train)["xg"]
            cpu.gather_channels(x, self._index, xg)
            x = xg
        self._on_wino = self._wino_at(x.shape[0])
        if self._on_wino:
            return self._wino_forward(x, params, train)
        self._on_direct = self._direct_at(x.shape[0])
        if self._on_direct or self.direct_forward:
            with self._split_one(x.shape[0]):
                return self._direct_forward(x, params, train)
        return self._gemm_forward(x, params, train)

    def _split_one(self, n):
        """Where a batch-1 image's work is split over the cores (threads.latency()), the
        direct kernels run parallel however small the image (threads.compute_bound)."""
        return threads.compute_bound() if self._single(n) else contextlib.nullcontext()

    def backward(self, dy, params, need_dx=True):
        if self._on_wino:
            dx, grads = self._wino_backward(dy, params, need_dx)
        elif self._on_direct:
            with self._split_one(dy.shape[0]):
                dx, grads = self._direct_backward(dy, params, need_dx)
        else:
            dx, grads = self._gemm_backward(dy, params, need_dx)
        if need_dx and self._index is not None:
            out = self.buffers(dx.shape[0], "backward", need_dx=True)["dx"]
            cpu.scatter_add_channels(dx, self._index, out)
            dx = out
        return dx, grads

    def _gemm_forward(self, x, params, train):
        n = x.shape[0]
        f = self.filters
        oh, ow = self.out_hw
        b = self.buffers(n, "forward", train)            # cols and tmp: read through _views
        w2 = np.ascontiguousarray(params["weight"], np.float32).reshape(f, -1)
        bias = self._bias2d(params)
        y3 = b["y"].reshape(n, f, oh * ow)
        keep = self.act.needs_input                      # abs, square: the gradient needs x
        pre = b["pre"] if keep else y3                   # declared only then
        for n0, n1 in self._chunks(n):
            cols = self._im2col(x, n0, n1)
            # a chunk of one image (batch 1, or images of more than CHUNK_BYTES of columns:
            # VGG, AlexNet): the GEMM's [F, P] is y's own layout, so it writes y, and the
            # bias and activation run in place or, with neither (ResNet's convs), not at all
            one = n1 - n0 == 1
            tmp = y3[n0] if one else self._views(n0, n1, "tmp")[0]
            for fs, ks in self._blocks():
                np.matmul(w2[fs], cols[ks], out=tmp[fs])
            if not (one and not self.bias and self.act.identity):
                cpu.bias_act(tmp, bias, *self.act.kernel_args(), keep, y3[n0:n1], pre[n0:n1])
        self._x, self._y3, self._pre = x, y3, pre
        return b["y"]

    def _gemm_backward(self, dy, params, need_dx):
        n = self._x.shape[0]
        f = self.filters
        oh, ow = self.out_hw
        dy3 = np.ascontiguousarray(dy, np.float32).reshape(self._y3.shape)
        b = self.buffers(n, "backward", need_dx=need_dx)  # dtmp: read through _views
        w2 = np.ascontiguousarray(params["weight"], np.float32).reshape(f, -1)
        dw2 = b["dweight"]
        db_part = b["dbias"].reshape(f, -1)
        db = np.zeros(db_part.shape, np.float64)
        dx = b[self._dx_tag()] if need_dx else None
        blocks = self._blocks()
        # last chunk first: forward left its columns in the workspace
        for i, (n0, n1) in enumerate(reversed(self._chunks(n))):
            dtmp, = self._views(n0, n1, "dtmp")
            cpu.grad_gather(dy3[n0:n1], self._y3[n0:n1], self._pre[n0:n1], *self.act.kernel_args(),
                            dtmp, db_part)
            db += db_part
            cols = self._views(n0, n1, "cols")[0] if self._cols_hold == (n0, n1) \
                else self._im2col(self._x, n0, n1)
            for fs, ks in blocks:
                if i == 0:
                    np.matmul(dtmp[fs], cols[ks].T, out=dw2[fs])
                else:
                    part = b["dw_part"]            # declared where the batch spans 2+ chunks
                    np.matmul(dtmp[fs], cols[ks].T, out=part)
                    dw2[fs] += part
            if need_dx:
                self._cols_hold = None    # its contents were last needed for dw: reuse as dcols
                for fs, ks in blocks:
                    np.matmul(w2[fs].T, dtmp[fs], out=cols[ks])
                cpu.col2im(cols, self.size, self.stride, self.padding, self._geom["hp"], self._geom["wc"],
                           oh, ow, self._xpad(n0, n1), dx[n0:n1])
        db_part[:] = db
        return dx, self._grads(dw2, b["dbias"])
