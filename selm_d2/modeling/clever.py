"""CLEVER: audio-visual Cross-LEVEl Reasoning decoder (paper §4.4), Mask2Former-like.

One AV Transformer layer per level of ``MODEL.SELM.CLEVER.IN_FEATURES``, coarse to fine
(res5, res4, res3). Learnable queries are decoded per frame (batch ``N = B*T``); each layer
runs, on the same queries,

    audio cross-attention  (keys/values: the clip's T selected audio tokens T^s)
    -> video cross-attention (keys/values: the frame's mixed video features)
    -> self-attention -> FFN                       (post-norm, as in Mask2Former)

and carries them to the next layer. Mixed features: layer 1 reads F^s of the coarsest level;
after layers 1 and 2 the layer's mixed features and its per-query mask maps are upsampled,
concatenated with the next level's F^s and projected (1x1 conv + GN + ReLU) into the next
mixed features. The final masks come from the last layer's queries dotted with its mixed
features fused, the same way, with the stride-4 ``MASK_IN_FEATURE`` features.

Choices where the paper is silent:

- Queries get, on top of their learned positional embedding, a sine encoding of their frame's
  index; audio keys get the same encoding of theirs, so frame t's queries can find second t
  among the clip's T audio tokens while still seeing the whole clip. Padding frames' audio
  tokens are masked out of the keys. Video keys get a 2D sine encoding.
- Masks: per-query maps ``einsum(MLP(LayerNorm(q)), mixed)`` ``[N, Nq, h, w]`` are combined by
  a 1x1 conv ``Nq -> C_out`` (1 foreground logit for binary tasks, K+1 class logits for AVSS),
  the same head for the intermediate (auxiliary) and the final masks. This needs no
  bipartite matching, since SelM's targets are per-pixel maps, not instance sets.
- Ablations: ``AUDIO_CROSS_ATTN``/``VIDEO_CROSS_ATTN`` False skip that attention (Table 5);
  ``CROSS_LEVEL`` False (Table 3) makes every layer read the finest IN_FEATURES level with no
  mixing between layers (the final stride-4 fusion is kept so that only the cross-level
  reasoning is ablated).
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

__all__ = ["CLEVERDecoder", "sine_encoding_1d", "sine_encoding_2d"]


def sine_encoding_1d(positions, dim):
    """Transformer sine/cosine encoding. positions: float [L] -> [L, dim] (dim even)."""
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
                      * (-math.log(10000.0) / dim))
    angles = positions.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sine_encoding_2d(height, width, dim, device):
    """DETR-style normalised 2D sine encoding, [height*width, dim] (dim divisible by 4).

    Half the channels encode y, half x; coordinates are scaled to (0, 2*pi) so that padded
    feature maps of different sizes share the same range.
    """
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 * math.pi
    half = dim // 2
    freqs = torch.exp(torch.arange(0, half, 2, dtype=torch.float32, device=device)
                      * (-math.log(10000.0) / half))
    enc_y = torch.cat([(ys[:, None] * freqs).sin(), (ys[:, None] * freqs).cos()], dim=1)
    enc_x = torch.cat([(xs[:, None] * freqs).sin(), (xs[:, None] * freqs).cos()], dim=1)
    grid = torch.cat([enc_y[:, None].expand(-1, width, -1), enc_x[None].expand(height, -1, -1)],
                     dim=2)
    return grid.reshape(height * width, dim)


def _group_norm(channels):
    return nn.GroupNorm(math.gcd(32, channels), channels)


class _Attention(nn.Module):
    """Post-norm attention block: ``norm(q + drop(attn(q + q_pos, k + k_pos, k)))``."""

    def __init__(self, dim, nheads, dropout):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries, query_pos, memory, memory_pos, key_padding_mask=None):
        out = self.attn(queries + query_pos, memory + memory_pos, memory,
                        key_padding_mask=key_padding_mask, need_weights=False)[0]
        return self.norm(queries + self.dropout(out))


class _FFN(nn.Module):
    def __init__(self, dim, dim_feedforward, dropout):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim_feedforward), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(dim_feedforward, dim))
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.norm(x + self.dropout(self.net(x)))


class AVTransformerLayer(nn.Module):
    """Audio cross-attention -> video cross-attention -> self-attention -> FFN."""

    def __init__(self, dim, nheads, dim_feedforward, dropout, audio_cross_attn, video_cross_attn):
        super().__init__()
        self.audio_attn = _Attention(dim, nheads, dropout) if audio_cross_attn else None
        self.video_attn = _Attention(dim, nheads, dropout) if video_cross_attn else None
        self.self_attn = _Attention(dim, nheads, dropout)
        self.ffn = _FFN(dim, dim_feedforward, dropout)

    def forward(self, queries, query_pos, audio, audio_pos, audio_padding, video, video_pos):
        """
        Args:
            queries, query_pos: [N, Nq, d].
            audio: [N, T, d] the clip's selected audio tokens (for every frame of the clip);
            audio_pos: [1, T, d]; audio_padding: [N, T] bool, True = padding frame.
            video: [N, h*w, d] the frame's mixed features; video_pos: [1, h*w, d].
        Returns:
            queries [N, Nq, d].
        """
        if self.audio_attn is not None:
            queries = self.audio_attn(queries, query_pos, audio, audio_pos, audio_padding)
        if self.video_attn is not None:
            queries = self.video_attn(queries, query_pos, video, video_pos)
        queries = self.self_attn(queries, query_pos, queries, query_pos)
        return self.ffn(queries)


class _MixBlock(nn.Module):
    """Mixed features for the next level: up(prev features, prev mask maps) ++ next -> 1x1 conv."""

    def __init__(self, dim, num_queries):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(2 * dim + num_queries, dim, kernel_size=1, bias=False),
                                  _group_norm(dim), nn.ReLU(inplace=True))

    def forward(self, mixed, maps, next_feats):
        prev = F.interpolate(torch.cat([mixed, maps], dim=1), size=next_feats.shape[-2:],
                             mode="bilinear", align_corners=False)
        return self.proj(torch.cat([prev, next_feats], dim=1))


class _MLP(nn.Sequential):
    def __init__(self, dim, num_layers):
        layers = []
        for i in range(num_layers):
            layers.append(nn.Linear(dim, dim))
            if i < num_layers - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class CLEVERDecoder(nn.Module):
    """CLEVER decoder: per-frame queries reasoning over selected audio and multi-level video."""

    @configurable
    def __init__(self, *, in_features, hidden_dim, num_queries, nheads, dim_feedforward,
                 dropout, out_channels, audio_cross_attn=True, video_cross_attn=True,
                 cross_level=True):
        """
        NOTE: this interface is experimental.

        Args:
            in_features: level names ordered coarse to fine; one AV Transformer layer each.
            hidden_dim: d, the width of queries, audio tokens and video features.
            num_queries: Nq learnable queries.
            nheads, dim_feedforward, dropout: transformer hyper-parameters.
            out_channels: C_out, 1 (binary foreground logit) or K+1 (class logits).
            audio_cross_attn, video_cross_attn: False skips that attention (paper Table 5).
            cross_level: False reads only the finest level in every layer (paper Table 3).
        """
        super().__init__()
        if hidden_dim % 4:
            raise ValueError("MODEL.SELM.HIDDEN_DIM={} must be divisible by 4 (2D sine position "
                             "encoding)".format(hidden_dim))
        if hidden_dim % nheads:
            raise ValueError("MODEL.SELM.HIDDEN_DIM={} must be divisible by "
                             "MODEL.SELM.CLEVER.NHEADS={}".format(hidden_dim, nheads))
        self.cross_level = cross_level
        # Level read by each layer.
        num_layers = len(in_features)
        self.layer_levels = list(in_features) if cross_level else [in_features[-1]] * num_layers
        self.hidden_dim = hidden_dim
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList([
            AVTransformerLayer(hidden_dim, nheads, dim_feedforward, dropout, audio_cross_attn,
                               video_cross_attn)
            for _ in self.layer_levels])
        num_mixes = num_layers - 1 if cross_level else 0
        self.level_mix = nn.ModuleList(
            [_MixBlock(hidden_dim, num_queries) for _ in range(num_mixes)])
        self.mask_mix = _MixBlock(hidden_dim, num_queries)
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.mask_embed = _MLP(hidden_dim, 3)
        self.to_logits = nn.Conv2d(num_queries, out_channels, kernel_size=1)

    @classmethod
    def from_config(cls, cfg, input_shape):
        """input_shape: {level name: ShapeSpec} of the visual encoder (for the strides)."""
        clever = cfg.MODEL.SELM.CLEVER
        unknown = [f for f in clever.IN_FEATURES if f not in input_shape]
        if unknown:
            raise ValueError("MODEL.SELM.CLEVER.IN_FEATURES has {} not produced by the backbone "
                             "(available: {})".format(unknown, sorted(input_shape)))
        num_classes = cfg.MODEL.SELM.NUM_CLASSES
        return {
            "in_features": sorted(clever.IN_FEATURES, key=lambda f: -input_shape[f].stride),
            "hidden_dim": cfg.MODEL.SELM.HIDDEN_DIM,
            "num_queries": clever.NUM_QUERIES,
            "nheads": clever.NHEADS,
            "dim_feedforward": clever.DIM_FEEDFORWARD,
            "dropout": clever.DROPOUT,
            "out_channels": 1 if num_classes == 1 else num_classes + 1,
            "audio_cross_attn": clever.AUDIO_CROSS_ATTN,
            "video_cross_attn": clever.VIDEO_CROSS_ATTN,
            "cross_level": clever.CROSS_LEVEL,
        }

    @property
    def reads_audio(self):
        """Whether forward() reads the selected audio tokens (audio cross-attention)."""
        return any(layer.audio_attn is not None for layer in self.layers)

    @property
    def used_levels(self):
        """The levels whose selected features and audio tokens forward() reads."""
        return sorted(set(self.layer_levels))

    def _predict(self, queries, mixed):
        maps = torch.einsum("nqd,ndhw->nqhw", self.mask_embed(self.decoder_norm(queries)), mixed)
        return maps, self.to_logits(maps)

    def forward(self, feats, mask_feats, audio, frame_valid):
        """
        Args:
            feats: {level: F^s [N, d, h, w]} for ``used_levels``, N = B*T (frame-major per clip).
            mask_feats: [N, d, H/4, W/4] projected MASK_IN_FEATURE features.
            audio: {level: T^s [B, T, d]} for ``used_levels``; None when not ``reads_audio``.
            frame_valid: [B, T] bool, False = padding frame.
        Returns:
            {"pred_masks": [N, C_out, H/4, W/4],
             "aux_masks": list over layers of [N, C_out, h_i, w_i] (coarse to fine)}.
        """
        num_clips, num_frames = frame_valid.shape
        n = num_clips * num_frames
        device = mask_feats.device
        temporal = sine_encoding_1d(torch.arange(num_frames, device=device), self.hidden_dim)
        queries = self.query_feat.weight[None].expand(n, -1, -1)
        query_pos = self.query_embed.weight[None] + temporal.repeat(num_clips, 1)[:, None]
        padding = (~frame_valid).repeat_interleave(num_frames, dim=0)  # [N, T]
        # A clip made only of padding frames would leave no key to attend to (NaN softmax).
        padding = padding & ~padding.all(dim=1, keepdim=True)

        aux, mixed, maps = [], None, None
        for i, (level, layer) in enumerate(zip(self.layer_levels, self.layers)):
            if mixed is None or not self.cross_level:
                mixed = feats[level]
            else:
                mixed = self.level_mix[i - 1](mixed, maps, feats[level])
            h, w = mixed.shape[-2:]
            tokens = (audio[level].repeat_interleave(num_frames, dim=0)  # [N, T, d]
                      if self.reads_audio else None)
            video_pos = sine_encoding_2d(h, w, self.hidden_dim, device)[None]
            queries = layer(queries, query_pos, tokens, temporal[None], padding,
                            mixed.flatten(2).transpose(1, 2), video_pos)
            maps, logits = self._predict(queries, mixed)
            aux.append(logits)
        mixed = self.mask_mix(mixed, maps, mask_feats)
        return {"pred_masks": self._predict(queries, mixed)[1], "aux_masks": aux}
