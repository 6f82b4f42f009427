"""BCSM: Bidirectional Conditioned Selective Mechanism (paper §4.3), one per CLEVER level.

Two symmetric branches, each a stack of Mamba blocks (Mamba + residual + LayerNorm) that
filters one modality and produces a weight map that *selects* the other:

- V2A-SeM: the visual features, average-pooled to ``p x p`` per frame and read as one
  time-major sequence ``[B, T*p*p, d]``, go through the Mamba stack; each frame's positions
  are averaged, a Linear + sigmoid turns them into a channel weight map ``[B, T, d]`` and
  ``T^s = A ⊙ weight``.
- A2V-SeM: the audio tokens ``[B, T, d]`` (no pooling) go through the Mamba stack to a
  per-frame selector ``s_t``; the spatial weight map is
  ``W_v(t, x, y) = sigmoid(<W_q s_t, W_k F_t(x, y)> / sqrt(d))`` ``[B, T, h, w]`` and
  ``F^s = F ⊙ W_v``. ``W_v`` is the selection map shown as a heat map (paper Fig. 5).

Choices where the paper is silent:

- Selection is a pure multiplication (no residual), as the paper describes it: everything
  after BCSM (CLEVER) is trained from scratch, so there are no pretrained statistics to
  protect, and a residual ``F + F ⊙ W`` could never suppress a silent object below 1x, which
  is what the module exists for.
- The Mamba scan is causal along time. Padding frames (AVSS clips padded to 10 frames) are
  trailing, so they cannot change real frames' weights.
- Modes (paper Table 7): ``bidirectional`` (both), ``a2v`` (select visual only),
  ``v2a`` (select audio only), ``off`` (identity; no selection map).
- T^s feeds only CLEVER's audio cross-attention: with ``CLEVER.AUDIO_CROSS_ATTN`` off the
  V2A branch is not built (``effective_bcsm_mode``).
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

from .mamba import MambaBlock

__all__ = ["BCSM", "BCSM_MODES", "effective_bcsm_mode"]

BCSM_MODES = ("off", "a2v", "v2a", "bidirectional")


def effective_bcsm_mode(cfg):
    """MODEL.SELM.BCSM.MODE without the V2A branch when CLEVER does not read audio."""
    mode = cfg.MODEL.SELM.BCSM.MODE
    if not cfg.MODEL.SELM.CLEVER.AUDIO_CROSS_ATTN:
        return {"bidirectional": "a2v", "v2a": "off"}.get(mode, mode)
    return mode


def _mamba_stack(dim, num_blocks, mamba_kwargs):
    return nn.Sequential(*[MambaBlock(dim, **mamba_kwargs) for _ in range(num_blocks)])


class _V2ASeM(nn.Module):
    """Visual features -> Mamba stack -> channel weights that select audio tokens."""

    def __init__(self, dim, num_blocks, pool_size, mamba_kwargs):
        super().__init__()
        self.pool_size = pool_size
        self.mamba = _mamba_stack(dim, num_blocks, mamba_kwargs)
        self.to_weight = nn.Linear(dim, dim)

    def forward(self, feats):
        """feats [B, T, d, h, w] -> audio channel weights [B, T, d] in (0, 1)."""
        b, t, d = feats.shape[:3]
        pooled = F.adaptive_avg_pool2d(feats.flatten(0, 1), self.pool_size)  # [B*T, d, p, p]
        seq = pooled.flatten(2).transpose(1, 2).reshape(b, -1, d)  # [B, T*p*p, d], time-major
        per_frame = self.mamba(seq).view(b, t, -1, d).mean(dim=2)
        return torch.sigmoid(self.to_weight(per_frame))


class _A2VSeM(nn.Module):
    """Audio tokens -> Mamba stack -> per-frame selector -> spatial weights on the frame."""

    def __init__(self, dim, num_blocks, mamba_kwargs):
        super().__init__()
        self.mamba = _mamba_stack(dim, num_blocks, mamba_kwargs)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, feats, audio):
        """feats [B, T, d, h, w], audio [B, T, d] -> spatial weights [B, T, h, w] in (0, 1)."""
        b, t, d, h, w = feats.shape
        selector = self.query(self.mamba(audio))  # [B, T, d]
        keys = self.key(feats.flatten(0, 1)).view(b, t, d, h, w)
        logits = torch.einsum("btd,btdhw->bthw", selector, keys) / math.sqrt(d)
        return torch.sigmoid(logits)


class BCSM(nn.Module):
    """Bidirectional Conditioned Selective Mechanism for one feature level."""

    @configurable
    def __init__(self, *, dim, mode="bidirectional", num_blocks=3, pool_size=4, mamba_kwargs=None):
        """
        NOTE: this interface is experimental.

        Args:
            dim: feature width d of both modalities.
            mode: one of ``BCSM_MODES``.
            num_blocks: Mamba blocks per branch (paper: 3).
            pool_size: visual features are average-pooled to pool_size x pool_size per frame
                before the V2A scan.
            mamba_kwargs: passed to each ``MambaBlock`` (d_state, d_conv, expand, impl).
        """
        super().__init__()
        if mode not in BCSM_MODES:
            raise ValueError("MODEL.SELM.BCSM.MODE={!r} is unknown: use one of {}".format(
                mode, ", ".join(BCSM_MODES)))
        mamba_kwargs = mamba_kwargs or {}
        self.mode = mode
        self.v2a = (_V2ASeM(dim, num_blocks, pool_size, mamba_kwargs)
                    if mode in ("v2a", "bidirectional") else None)
        self.a2v = (_A2VSeM(dim, num_blocks, mamba_kwargs)
                    if mode in ("a2v", "bidirectional") else None)

    @classmethod
    def from_config(cls, cfg):
        mamba = cfg.MODEL.SELM.MAMBA
        return {
            "dim": cfg.MODEL.SELM.HIDDEN_DIM,
            "mode": effective_bcsm_mode(cfg),
            "num_blocks": cfg.MODEL.SELM.BCSM.NUM_BLOCKS,
            "pool_size": cfg.MODEL.SELM.BCSM.POOL_SIZE,
            "mamba_kwargs": {"d_state": mamba.D_STATE, "d_conv": mamba.D_CONV,
                             "expand": mamba.EXPAND, "impl": mamba.IMPL},
        }

    @property
    def has_selection_map(self):
        return self.a2v is not None

    def forward(self, feats, audio):
        """
        Args:
            feats: F, visual features [B, T, d, h, w].
            audio: A, audio tokens [B, T, d].
        Returns:
            (F^s [B, T, d, h, w], T^s [B, T, d], W_v [B, T, h, w] or None when A2V is off).
        """
        selected_audio = audio if self.v2a is None else audio * self.v2a(feats)
        if self.a2v is None:
            return feats, selected_audio, None
        weight = self.a2v(feats, audio)
        return feats * weight.unsqueeze(2), selected_audio, weight
