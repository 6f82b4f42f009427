"""Running G modules of equal shapes, each with its own weights, as one batched op.

BCSM runs the same stack of small layers at every CLEVER level, on sequences of tens of
tokens. On CPU such layers cost per op launched, not per FLOP, so the levels' layers run in
lockstep: their parameters are stacked to ``[G, ...]`` and applied with batched matmuls. The
modules themselves, and so the state dict, stay one per level.
"""
import functools

import torch

__all__ = ["stacked", "grouped_linear"]


def stacked(modules, name):
    """Parameter ``name`` (dotted, e.g. ``"in_proj.weight"``) of each module as ``[G, ...]``,
    or None when the first module has none (e.g. a Linear without bias). A view for G = 1."""
    tensors = [functools.reduce(getattr, name.split("."), m) for m in modules]
    if tensors[0] is None:
        return None
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def grouped_linear(linears, x, with_bias=True):
    """Linear g applied to x[g]: G ``nn.Linear(in, out)``, x [G, ..., in] -> [G, ..., out].

    ``with_bias=False`` leaves the biases out (a caller that adds them elsewhere).
    """
    weight = stacked(linears, "weight").transpose(1, 2)  # [G, in, out]
    bias = stacked(linears, "bias") if with_bias else None
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    out = torch.bmm(flat, weight) if bias is None else torch.baddbmm(bias[:, None], flat, weight)
    return out.view(*x.shape[:-1], out.shape[-1])
