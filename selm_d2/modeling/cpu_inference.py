"""Faster CPU kernels for the same functions at inference, where no gradient flows.

Each layer or function here computes what its PyTorch counterpart computes. On a CPU tensor
with gradients disabled (``torch.inference_mode`` / ``no_grad``: evaluation, the demo, the
benchmark) it takes a kernel that PyTorch's CPU dispatch does not choose by itself; otherwise
(training, CUDA) it is the PyTorch op itself, so trained weights and GPU runs do not change.
Timings below: 2 threads on the project's 2-core CPU VM, torch 2.14.1, inputs of SelM's 5-frame
224² clips.

- ``MaxPool2d``: channels-last memory. PyTorch's CPU max-pool of a contiguous NCHW tensor runs
  the kernel that also returns the indices, several times slower than its channels-last one:
  ResNet's stem pool (``[5, 64, 112, 112]``) 20.6 ms against 4.3 ms with both layout copies,
  VGGish's first pool (``[5, 64, 96, 64]``) 7.9 against 2.4 ms. A maximum is exact: the same
  output to the bit. Training keeps the NCHW kernel: its backward was not faster, and where a
  window holds equal values (ReLU zeros) another kernel may pass the gradient to another one.
- ``conv1x1`` / ``Conv1x1``: a 1x1 convolution that does not shrink the width much
  (C_in < 2 C_out) as one batched matrix product per frame, instead of oneDNN's convolution
  with its layout reorders. To 256 channels, paired ratios over 30 rounds: 0.55 at 128 input
  channels and 28², 0.81-0.91 at 256-257 channels and 28², 0.89-0.98 at 256-320 channels and
  14², 0.72 at 257 channels and 7²; but 1.02 at 512 channels and 28², 1.08 at 1024 and 14²,
  1.16 at 2048 and 7², so wider inputs keep the convolution. Sums in another order: outputs
  differ by rounding (about 1e-6 relative).
- ``upsample_bilinear``: bilinear resizing (``align_corners=False``) as two products with the
  interpolation matrices, which ``F.interpolate`` itself computes (from an identity).
  ``[5, 256, 14, 14]`` to 28²: 0.5 ms against 1.9 ms (``F.interpolate`` of a 256-channel NCHW
  tensor copies it to channels-last and back); differences of rounding (≤ 5e-7 here).
"""
import functools

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MaxPool2d", "Conv1x1", "conv1x1", "upsample_bilinear"]


def _cpu_inference(x):
    """Whether ``x`` takes this module's kernels: a CPU tensor that no gradient flows through."""
    return x.device.type == "cpu" and not (x.requires_grad and torch.is_grad_enabled())


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (same arguments and output, no parameters); channels-last kernel for CPU
    inference. ``[N, C, H, W]`` -> ``[N, C, H', W']``, contiguous."""

    def forward(self, x):
        if not _cpu_inference(x) or self.return_indices or x.dim() != 4:
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


def conv1x1(x, weight, bias=None, add=None):
    """``F.conv2d(x, weight, bias)`` for a 1x1 kernel, plus ``add`` when given (one batched
    product at CPU inference when C_in < 2 C_out; see the module docstring).

    Args:
        x: [N, C_in, H, W]; weight: [C_out, C_in, 1, 1] (a slice of a larger weight is fine);
        bias: [C_out] or None; add: [N, C_out, H, W] or None, added to the output (for CPU
            inference inside the same product).
    Returns:
        [N, C_out, H, W]
    """
    if not (_cpu_inference(x) and _cpu_inference(weight) and x.shape[1] < 2 * weight.shape[0]):
        out = F.conv2d(x, weight, bias)
        return out if add is None else add + out
    n, c_in, h, w = x.shape
    weight = weight.flatten(1).expand(n, -1, -1)  # [N, C_out, C_in], no copy
    x = x.reshape(n, c_in, h * w)
    if add is None and bias is None:
        out = torch.bmm(weight, x)
    else:
        base = add.reshape(n, -1, h * w) if add is not None else 0
        if bias is not None:
            base = base + bias[:, None]
        out = torch.baddbmm(base.expand(n, weight.shape[1], h * w), weight, x)
    return out.view(n, -1, h, w)


class Conv1x1(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)`` (same parameters and
    state-dict keys) that runs ``conv1x1``. ``[N, C_in, H, W]`` -> ``[N, C_out, H, W]``."""

    def __init__(self, in_channels, out_channels, bias=True):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x):
        return conv1x1(x, self.weight, self.bias)


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(size_in, size_out, dtype, device):
    """[size_out, size_in] weights of 1D linear resizing, ``align_corners=False``, as
    ``F.interpolate`` computes them (it resizes an identity). A plain tensor (not an inference
    tensor), made once per size."""
    with torch.inference_mode(False), torch.no_grad():
        eye = torch.eye(size_in, dtype=dtype, device=device)[None]
        return F.interpolate(eye, size=size_out, mode="linear",
                             align_corners=False)[0].t().contiguous()


def upsample_bilinear(x, size):
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)``.

    Args:
        x: [N, C, h, w]; size: (H, W).
    Returns:
        [N, C, H, W], contiguous.
    """
    if not _cpu_inference(x):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    n, c, h, w = x.shape
    height, width = size
    rows = _interpolation_matrix(h, height, x.dtype, x.device)  # [H, h]
    cols = _interpolation_matrix(w, width, x.dtype, x.device)   # [W, w]
    # Rows first, one small product per channel map; then columns, one product for all.
    out = torch.bmm(rows.expand(n * c, -1, -1), x.reshape(n * c, h, w))  # [N*C, H, w]
    return torch.mm(out.view(-1, w), cols.t()).view(n, c, height, width)
