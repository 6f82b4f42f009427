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
mixed features. Every layer's masks come from ``MaskHead`` on its queries and mixed features;
the last layer's are the final masks (paper), or, with ``MASK_FUSION`` (ours), the last
layer's mixed features are first fused the same way with the ``MASK_IN_FEATURE`` features
(res2, stride 4; or ResNet's res1, stride 2) and the final masks are made at that stride.

Variants (config switches; paper configs use the first of each):

- ``MASK_HEAD``: ``dot`` (paper: the dot product of the output tokens with the mixed features
  is the mask; one query per output channel, so ``NUM_QUERIES`` is 1 for S4/MS3 and K+1 = 71
  for AVSS), ``mix`` (ours: a 1x1 conv mixes Nq query maps into C_out logits; for AVSS, 71
  logits from Nq maps are rank Nq), ``semantic`` (Mask2Former's semantic inference). See
  ``MaskHead``.
- ``MASK_FUSION``: False (paper) / True (ours: fusion of ``MASK_IN_FEATURE``, res2 or res1).

Choices where the paper is silent:

- How the mixed features are formed: "concatenated with the subsequent F" is all the paper
  says; we upsample the previous mixed features *and its per-query mask maps*, concatenate
  them with the next level's F^s and project back to d (1x1 conv + GN + ReLU).
- Queries get, on top of their learned positional embedding, a sine encoding of their frame's
  index; audio keys get the same encoding of theirs, so frame t's queries can find second t
  among the clip's T audio tokens while still seeing the whole clip (the audio keys are all
  T tokens of the clip, not only frame t's). Padding frames' audio tokens are masked out of
  the keys. Video keys get a 2D sine encoding.
- Number of queries: not given; "dot" fixes it (above), "mix" and "semantic" read
  ``NUM_QUERIES``.
- The same mask head makes the intermediate (auxiliary) and the final masks. No bipartite
  matching: SelM's targets are per-pixel maps, not instance sets.
- Ablations: ``AUDIO_CROSS_ATTN``/``VIDEO_CROSS_ATTN`` False skip that attention (Table 5).
  ``CROSS_LEVEL`` False (Table 3 "w/o CLEVER") makes every layer read the finest IN_FEATURES
  level with no mixing between layers; the paper replaces CLEVER by AVSegFormer's decoder
  there, which is not implemented. With ``MASK_FUSION`` the stride-4 fusion is kept, so that
  only the cross-level reasoning is ablated.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.utils.registry import Registry

from .cpu_inference import Conv1x1, conv1x1, upsample_bilinear

__all__ = ["SELM_DECODER_REGISTRY", "build_selm_decoder", "CLEVERDecoder", "MaskHead",
           "MASK_HEADS", "semantic_log_probs", "sine_encoding_1d", "sine_encoding_2d"]

SELM_DECODER_REGISTRY = Registry("SELM_DECODER")
SELM_DECODER_REGISTRY.__doc__ = """
Registry for SelM's query decoders (CLEVER), like Mask2Former's TRANSFORMER_DECODER_REGISTRY.

A decoder is built as ``decoder(cfg, input_shape)`` ({level: ShapeSpec} of the visual
encoder) and exposes ``used_levels`` (levels whose BCSM-selected features and audio tokens it
reads), ``visual_levels`` (every level it reads) and ``reads_audio``;
``forward(feats, audio, frame_valid)`` returns {"pred_masks", "aux_masks"}.
"""


def build_selm_decoder(cfg, input_shape):
    """The decoder named by ``MODEL.SELM.CLEVER.NAME``."""
    name = cfg.MODEL.SELM.CLEVER.NAME
    if name not in SELM_DECODER_REGISTRY:
        known = sorted(registered for registered, _ in SELM_DECODER_REGISTRY)
        raise ValueError("MODEL.SELM.CLEVER.NAME={!r} is not in SELM_DECODER_REGISTRY: use one "
                         "of {}".format(name, ", ".join(known)))
    return SELM_DECODER_REGISTRY.get(name)(cfg, input_shape)


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
    """Post-norm attention block: ``norm(q + drop(attn(q + q_pos, k + k_pos, k)))``.

    At inference, when there are few queries (Nq * heads < d, e.g. the paper's single query
    for S4/MS3), the attention is computed re-associated (``_few_query_attention``): the same
    function without projecting every key and value.
    """

    def __init__(self, dim, nheads, dropout):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries, query_pos, memory, memory_pos, key_padding_mask=None):
        if not self.training and queries.shape[1] * self.attn.num_heads < self.attn.embed_dim:
            out = _few_query_attention(self.attn, queries + query_pos, memory, memory_pos,
                                       key_padding_mask)
        else:
            out = self.attn(queries + query_pos, memory + memory_pos, memory,
                            key_padding_mask=key_padding_mask, need_weights=False)[0]
        return self.norm(queries + self.dropout(out))


def _few_query_attention(attn, query, memory, memory_pos, key_padding_mask=None):
    """``attn(query, memory + memory_pos, memory)[0]`` (an ``nn.MultiheadAttention``,
    batch_first, no dropout) with the key and value projections moved to the query side.

    Per head h, ``(q W_qh + b_qh)(k W_kh + b_kh)^T`` is ``((q W_qh + b_qh) W_kh^T) k^T`` plus a
    term constant over the keys, which softmax ignores; and since the attention weights sum to
    1, ``sum_l a_l (v_l W_vh + b_vh) = (sum_l a_l v_l) W_vh + b_vh``. Cost O(Nq * H * L * d)
    instead of O(L * d^2) for L keys: less whenever Nq * H < d. The keys' position term is its
    own product, ``q (m + p)^T = q m^T + q p^T``, so ``memory + memory_pos`` is never formed.
    With a single key the result is its value, whatever the query.

    Args:
        query [N, Nq, d]; memory [N, L, d]; memory_pos [N or 1, L, d];
        key_padding_mask [N, L] bool (True = ignore).
    Returns:
        [N, Nq, d]
    """
    n, nq, d = query.shape
    heads, head_dim = attn.num_heads, d // attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, _, b_v = attn.in_proj_bias.chunk(3)
    if memory.shape[1] == 1 and key_padding_mask is None:
        # A single key (self-attention of the paper's one query) has weight 1: its value.
        return attn.out_proj(F.linear(memory, w_v, b_v)).expand(n, nq, d)
    q = F.linear(query, w_q, b_q).view(n * nq, heads, head_dim).transpose(0, 1)
    # Per head, [H, N*Nq, e] @ [H, e, d]: each query head in key space, as [N, Nq*H, d].
    q = torch.bmm(q * head_dim ** -0.5, w_k.view(heads, head_dim, d))
    q = q.transpose(0, 1).reshape(n, nq * heads, d)
    if memory_pos.shape[0] == 1:  # shared by the batch: one [N*Nq*H, d] @ [d, L] product
        memory_pos = memory_pos[0]
    logits = torch.matmul(q, memory_pos.transpose(-1, -2))
    logits = torch.baddbmm(logits, q, memory.transpose(1, 2))  # [N, Nq*H, L]
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, :], float("-inf"))
    pooled = torch.bmm(logits.softmax(dim=-1), memory)  # [N, Nq*H, d]
    # Per head, [H, N*Nq, d] @ [H, d, e]: each head's value projection.
    out = torch.bmm(pooled.view(n * nq, heads, d).transpose(0, 1),
                    w_v.view(heads, head_dim, d).transpose(1, 2))
    return attn.out_proj(out.transpose(0, 1).reshape(n, nq, d) + b_v)


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
    """Mixed features for the next level: up(prev features, prev mask maps) ++ next -> 1x1 conv.

    The 1x1 conv has no bias and bilinear upsampling is linear per channel, so the conv's
    share over the previous level is applied before upsampling, at the coarse resolution
    (4x or more fewer positions): the same function, less work.
    """

    def __init__(self, dim, num_queries):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(2 * dim + num_queries, dim, kernel_size=1, bias=False),
                                  _group_norm(dim), nn.ReLU(inplace=True))

    def forward(self, mixed, maps, next_feats):
        """mixed [N, d, h, w], maps [N, Nq, h, w], next_feats [N, d, H, W] -> [N, d, H, W]"""
        conv, norm_act = self.proj[0], self.proj[1:]
        prev_channels = mixed.shape[1] + maps.shape[1]
        prev = conv1x1(torch.cat([mixed, maps], dim=1), conv.weight[:, :prev_channels])
        prev = upsample_bilinear(prev, next_feats.shape[-2:])
        return norm_act(conv1x1(next_feats, conv.weight[:, prev_channels:], add=prev))


class _MLP(nn.Sequential):
    def __init__(self, dim, num_layers):
        layers = []
        for i in range(num_layers):
            layers.append(nn.Linear(dim, dim))
            if i < num_layers - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


MASK_HEADS = ("dot", "mix", "semantic")


def semantic_log_probs(class_logits, mask_logits):
    """Mask2Former's semantic inference, normalised over classes.

    Args:
        class_logits: [N, Nq, C] per-query class scores.
        mask_logits: [N, Nq, h, w] per-query mask logits.
    Returns:
        [N, C, h, w] log P_c with P_c(x) = sum_q softmax(cls_q)[c] sigmoid(m_q(x)) / Z(x),
        Z(x) = sum_c (...) = sum_q sigmoid(m_q(x)).
    """
    # In fp32 under autocast too: half-precision sums of 71 small terms lose the small classes.
    with torch.autocast(mask_logits.device.type, enabled=False):
        probs = torch.einsum("nqc,nqhw->nchw", class_logits.float().softmax(dim=-1),
                             mask_logits.float().sigmoid())
        probs = probs / probs.sum(dim=1, keepdim=True).clamp(min=1e-12)
        return probs.clamp(min=1e-8).log()


class MaskHead(nn.Module):
    """Masks from a layer's queries and its mixed video features; one head serves the final
    masks and every layer's intermediate (auxiliary) masks.

    Every variant first makes per-query maps ``m_q = <MLP(LayerNorm(q)), mixed>`` [N, Nq, h, w]
    (the paper's "dot product between the learnable tokens of outputs and mixed video
    features"), then C_out logits (1 foreground logit, or K+1 class logits):

    - ``dot`` (paper): one query per output channel, the maps are the logits (Nq == C_out).
    - ``mix`` (ours): a 1x1 conv Nq -> C_out over the maps.
    - ``semantic`` (Mask2Former's semantic inference): each query also scores the K+1 classes
      (background is a class, there is no separate no-object class) and
      ``P_c = sum_q softmax(cls_q)[c] sigmoid(m_q)``, normalised over c; the logits are
      log P_c (AVSS) or log P_1 - log P_0 (binary), so cross-entropy, argmax and sigmoid read
      them as they read the other heads' logits.
    """

    def __init__(self, kind, hidden_dim, num_queries, out_channels):
        super().__init__()
        if kind not in MASK_HEADS:
            raise ValueError("MODEL.SELM.CLEVER.MASK_HEAD={!r} is unknown: use one of {}".format(
                kind, ", ".join(MASK_HEADS)))
        if kind == "dot" and num_queries != out_channels:
            raise ValueError(
                "MODEL.SELM.CLEVER.MASK_HEAD 'dot' makes one output channel per query, so "
                "MODEL.SELM.CLEVER.NUM_QUERIES must equal the number of output channels, {} "
                "(1 for binary tasks, MODEL.SELM.NUM_CLASSES + 1 for semantic ones); got "
                "NUM_QUERIES {}. Set NUM_QUERIES {}, or use MASK_HEAD 'mix' or "
                "'semantic'.".format(out_channels, num_queries, out_channels))
        self.kind = kind
        self.out_channels = out_channels
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.mask_embed = _MLP(hidden_dim, 3)
        if kind == "mix":
            self.to_logits = Conv1x1(num_queries, out_channels)
        elif kind == "semantic":
            # Binary tasks: background and foreground are the two classes.
            self.class_embed = nn.Linear(hidden_dim, max(out_channels, 2))

    def forward(self, queries, mixed):
        """queries [N, Nq, d], mixed [N, d, h, w] -> (maps [N, Nq, h, w], logits [N, C_out, h, w])
        """
        queries = self.decoder_norm(queries)
        maps = torch.einsum("nqd,ndhw->nqhw", self.mask_embed(queries), mixed)
        if self.kind == "dot":
            return maps, maps
        if self.kind == "mix":
            return maps, self.to_logits(maps)
        log_probs = semantic_log_probs(self.class_embed(queries), maps)
        if self.out_channels == 1:
            return maps, log_probs[:, 1:] - log_probs[:, :1]
        return maps, log_probs


@SELM_DECODER_REGISTRY.register()
class CLEVERDecoder(nn.Module):
    """CLEVER decoder: per-frame queries reasoning over selected audio and multi-level video."""

    @configurable
    def __init__(self, *, in_features, hidden_dim, num_queries, nheads, dim_feedforward,
                 dropout, out_channels, mask_head="dot", mask_in_feature=None,
                 audio_cross_attn=True, video_cross_attn=True, cross_level=True):
        """
        NOTE: this interface is experimental.

        Args:
            in_features: level names ordered coarse to fine; one AV Transformer layer each.
            hidden_dim: d, the width of queries, audio tokens and video features.
            num_queries: Nq learnable queries.
            nheads, dim_feedforward, dropout: transformer hyper-parameters.
            out_channels: C_out, 1 (binary foreground logit) or K+1 (class logits).
            mask_head: one of ``MASK_HEADS`` (see ``MaskHead``).
            mask_in_feature: level fused into the final masks after the last layer (ours); None
                = the final masks are the last layer's (paper).
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
        self.mask_in_feature = mask_in_feature
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
        self.mask_mix = _MixBlock(hidden_dim, num_queries) if mask_in_feature else None
        self.mask_head = MaskHead(mask_head, hidden_dim, num_queries, out_channels)

    @classmethod
    def from_config(cls, cfg, input_shape):
        """input_shape: {level name: ShapeSpec} of the visual encoder (for the strides)."""
        clever = cfg.MODEL.SELM.CLEVER
        needed = {"MODEL.SELM.CLEVER.IN_FEATURES": list(clever.IN_FEATURES)}
        if clever.MASK_FUSION:
            needed["MODEL.SELM.CLEVER.MASK_IN_FEATURE"] = [clever.MASK_IN_FEATURE]
        for key, names in needed.items():
            unknown = [f for f in names if f not in input_shape]
            if unknown:
                raise ValueError("{} has {} not produced by the backbone (available: {}; see "
                                 "MODEL.RESNETS.OUT_FEATURES / MODEL.PVT.OUT_FEATURES)".format(
                                     key, unknown, sorted(input_shape)))
        num_classes = cfg.MODEL.SELM.NUM_CLASSES
        return {
            "in_features": sorted(clever.IN_FEATURES, key=lambda f: -input_shape[f].stride),
            "hidden_dim": cfg.MODEL.SELM.HIDDEN_DIM,
            "num_queries": clever.NUM_QUERIES,
            "nheads": clever.NHEADS,
            "dim_feedforward": clever.DIM_FEEDFORWARD,
            "dropout": clever.DROPOUT,
            "out_channels": 1 if num_classes == 1 else num_classes + 1,
            "mask_head": clever.MASK_HEAD,
            "mask_in_feature": clever.MASK_IN_FEATURE if clever.MASK_FUSION else None,
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
        """The levels whose selected features (and audio tokens) the layers read."""
        return sorted(set(self.layer_levels))

    @property
    def visual_levels(self):
        """Every level forward() reads: ``used_levels`` and the mask level when it fuses one."""
        extra = [self.mask_in_feature] if self.mask_in_feature else []
        return sorted(set(self.used_levels + extra))

    def forward(self, feats, audio, frame_valid):
        """
        Args:
            feats: {level: [N, d, h, w]} for ``visual_levels``, N = B*T (frame-major per clip):
                F^s for ``used_levels``, the projected MASK_IN_FEATURE features for the fusion.
            audio: {level: T^s [B, T, d]} for ``used_levels``; None when not ``reads_audio``.
            frame_valid: [B, T] bool, False = padding frame.
        Returns:
            {"pred_masks": [N, C_out, h, w] (at the mask level's size with the fusion, else the
             last layer's), "aux_masks": list over layers of [N, C_out, h_i, w_i] (coarse to
             fine; without the fusion the last one is pred_masks itself)}.
        """
        num_clips, num_frames = frame_valid.shape
        n = num_clips * num_frames
        device = frame_valid.device
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
            maps, logits = self.mask_head(queries, mixed)
            aux.append(logits)
        if self.mask_mix is None:
            return {"pred_masks": aux[-1], "aux_masks": aux}
        mixed = self.mask_mix(mixed, maps, feats[self.mask_in_feature])
        return {"pred_masks": self.mask_head(queries, mixed)[1], "aux_masks": aux}
