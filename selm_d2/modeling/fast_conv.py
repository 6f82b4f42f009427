"""3x3 convolutions at CPU inference through NNPACK, PyTorch's other CPU convolution library.

On CPUs without AVX-512, oneDNN (what ``nn.Conv2d`` runs on CPU) computes a 3x3 convolution
directly, 9 multiply-adds per input channel and output value. NNPACK, built into PyTorch's
CPU wheels, transforms it (Winograd F(6x6, 3x3) or FFT), which needs several times fewer: the
same function up to float rounding (about 1e-5 of the output's largest value, where oneDNN's
is about 1e-6). PyTorch's own dispatch prefers oneDNN whenever it is built in, so NNPACK is
called here explicitly, and only outside autograd (its backward is the direct one).
PyTorch's own switch turns it off: ``torch.backends.nnpack.set_flags(False)`` (or the
``torch.backends.nnpack.flags()`` context) makes every convolution oneDNN's again.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["band_rows", "conv_inference", "nnpack_applies"]

# Smallest output (pixels per frame) that goes to NNPACK: each call transforms the kernels
# again and hands work to its threads, which on small maps costs more than it saves
# (`python tools/benchmark.py --sections conv3x3` compares the two libraries per size).
MIN_PIXELS = 8192
# Output pixels per NNPACK call. Its workspace holds the transforms of the call's whole input
# (a few times the input's size), allocated outside PyTorch and kept per thread at its
# largest: bands of rows bound it.
# Rows come in multiples of 6, the side of a Winograd F(6x6, 3x3) output tile.
BAND_PIXELS = 16384


def nnpack_applies(conv, x):
    """Whether ``conv_inference(conv, x)`` runs NNPACK: a float32 CPU input without autograd,
    an ``nn.Conv2d`` of 3x3 kernels with stride 1, no dilation or groups, zero padding of 0 or
    1, an output of at least ``MIN_PIXELS`` per frame, and a PyTorch built with NNPACK that is
    not switched off (``torch.backends.nnpack.set_flags(False)``)."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.padding in ((0, 0), (1, 1))
            and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and math.prod(_output_size(conv, x)) >= MIN_PIXELS
            and not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
            and torch._C._get_nnpack_enabled() and torch.backends.nnpack.is_available())


def _output_size(conv, x):
    """(rows, columns) of a 3x3, stride-1 ``conv(x)``."""
    pad_h, pad_w = conv.padding
    return x.shape[-2] + 2 * pad_h - 2, x.shape[-1] + 2 * pad_w - 2


def band_rows(width):
    """Output rows per NNPACK call for outputs ``width`` pixels wide."""
    return max(6, BAND_PIXELS // (6 * width) * 6)


def conv_inference(conv, x):
    """``conv(x)``, through NNPACK where ``nnpack_applies``; x [N, C, H, W] -> [N, K, H', W'].

    NNPACK is called per frame and band of output rows: each band reads its rows plus one
    above and below (zeros at the frame's edges when padded), and its output is copied into
    the result as it comes, so a band is the only extra map.
    """
    if not nnpack_applies(conv, x):
        return conv(x)
    pad = conv.padding[0]
    n, _, h, _ = x.shape
    out_h, out_w = _output_size(conv, x)
    out = x.new_empty(n, conv.out_channels, out_h, out_w)
    rows = band_rows(out_w)
    for i in range(n):
        for top in range(0, out_h, rows):
            bottom = min(out_h, top + rows)
            # Output row r reads input rows r - pad .. r - pad + 2.
            first, last = top - pad, bottom - pad + 2
            band = x[i:i + 1, :, max(first, 0):min(last, h)]
            if first < 0 or last > h:
                band = F.pad(band, (0, 0, max(-first, 0), max(last - h, 0)))
            out[i, :, top:bottom] = torch._nnpack_spatial_convolution(
                band, conv.weight, conv.bias, [0, pad])[0]
    return out
