"""DAM (Dual Alignment Module): early audio-visual fusion after every visual encoder stage.

The authors' DAM is a LAVT-style pixel-audio attention block that updates both modalities:

    visual x [N, C, hw], audio a [N, d_a, L] (L audio tokens per frame; SelM has L = 1)
    A2V: each pixel attends to the audio tokens; the attended audio, instance-normalised,
         re-weights a projection of x; x <- x + gate(r) * r
    V2A: each audio token attends to the pixels; a <- a + GELU(Conv1d(attended visual))

With the authors' softmax over the audio tokens and one token per frame, the A2V attention
is 1 everywhere: the attended audio is the same at every pixel, and the InstanceNorm over the
pixels then makes it 0, so x's update does not depend on the audio ("softmax", the default:
released checkpoints need it). ``audio_attention="sigmoid"`` scores every pixel-token pair on
its own, so the audio reaches the visual features (a SelM-D2 variant).
"""
import torch
from torch import nn
from ..utils import ConfigError

__all__ = ["DAM", "AUDIO_ATTENTIONS"]

AUDIO_ATTENTIONS = ("softmax", "sigmoid")


def _conv(in_channels, out_channels, norm=False):
    """Per-position linear map of [N, C, L] (Conv1d, kernel 1), optionally InstanceNorm'd."""
    conv = nn.Conv1d(in_channels, out_channels, kernel_size=1)
    return nn.Sequential(conv, nn.InstanceNorm1d(out_channels)) if norm else conv


class DAM(nn.Module):
    """One stage's DAM.

    Args:
        dim: visual channels C of the stage.
        audio_dim: width d_a of the audio tokens (MODEL.SELM.HIDDEN_DIM).
        dropout: after the visual projections.
        audio_attention: "softmax" over the audio tokens (the authors') or "sigmoid".
    """

    def __init__(self, dim, audio_dim, dropout=0.0, audio_attention="softmax"):
        super().__init__()
        if audio_attention not in AUDIO_ATTENTIONS:
            raise ConfigError("MODEL.SELM.DAM.AUDIO_ATTENTION={!r} is unknown: use one of {}"
                              .format(audio_attention, ", ".join(AUDIO_ATTENTIONS)))
        self.audio_attention = audio_attention
        self.scale = dim ** -0.5
        self.vis_project = nn.Sequential(_conv(dim, dim), nn.GELU(), nn.Dropout(dropout))
        # A2V: pixel queries against audio keys, audio values.
        self.vis_query = _conv(dim, dim, norm=True)
        self.vis_query2 = _conv(dim, dim, norm=True)
        self.audio_key = _conv(audio_dim, dim)
        self.audio_value = _conv(audio_dim, dim)
        self.vis_out = _conv(dim, dim, norm=True)
        # Softmax over a single weight: the authors' learnable branch weights (always 1).
        self.vis_weight = nn.Parameter(torch.ones(1))
        # V2A: audio queries against pixel keys and values.
        self.audio_query = nn.Sequential(_conv(audio_dim, dim), _conv(dim, audio_dim))
        self.vis_key = _conv(dim, audio_dim, norm=True)
        self.vis_value = _conv(dim, audio_dim, norm=True)
        self.audio_out = _conv(audio_dim, audio_dim)
        self.audio_weight = nn.Parameter(torch.ones(1))
        self.out_conv = nn.Sequential(_conv(dim, dim), nn.GELU(), nn.Dropout(dropout))
        self.gate = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(),
                                  nn.Linear(dim, dim, bias=False), nn.Tanh())
        self.audio_out_conv = nn.Sequential(_conv(audio_dim, audio_dim), nn.GELU())

    def forward(self, x, audio, audio_mask):
        """
        Args:
            x: [N, C, h, w] visual features of N frames.
            audio: [N, d_a, L] audio tokens of the same frames.
            audio_mask: [N, L, 1], 1 for real tokens, 0 for padding frames' tokens.
        Returns:
            (x [N, C, h, w], audio [N, d_a, L]), both updated.

        The ops and memory layouts are the authors' (pixels as [N, hw, C] tokens, the 1x1
        convs on its transpose, attention as [N, 1, q, k] products). Their InstanceNorm of the
        attended audio normalises a map that is constant over the pixels, so in training the
        gradients carry its rounding, amplified by 1 / sqrt(eps): only the same ops on the same
        layouts give the same gradients.
        """
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2).contiguous()  # [N, hw, C]
        x = tokens.transpose(1, 2)  # [N, C, hw], a view
        mask = audio_mask.transpose(1, 2)  # [N, 1, L]
        # Masked tokens get -1e4 before the normalisation, as in the authors' code.
        bias = (1e4 * mask - 1e4)[:, None]  # [N, 1, 1, L]
        vis = self.vis_project(x)

        # A2V: each pixel attends to the audio tokens.
        value = (self.audio_value(audio) * mask)[:, None]  # [N, 1, C, L]
        query = self.vis_query2(self.vis_query(x).contiguous()).transpose(1, 2)[:, None]
        key = (self.audio_key(audio) * mask)[:, None]  # [N, 1, C, L]
        scores = self.scale * (query @ key) + bias  # [N, 1, hw, L]
        attn = scores.softmax(dim=-1) if self.audio_attention == "softmax" else scores.sigmoid()
        attn = self.vis_weight.softmax(dim=0) * attn
        attended = (attn @ value.transpose(2, 3))[:, 0].contiguous().transpose(1, 2)
        vis = self.out_conv(vis * self.vis_out(attended))  # [N, C, hw]

        # V2A: each audio token attends to the pixels.
        audio_query = self.audio_query(audio).transpose(1, 2) * audio_mask  # [N, L, d_a]
        key = self.vis_key(x)[:, None]  # [N, 1, d_a, hw]
        scores = self.scale * (audio_query[:, None] @ key) + bias.transpose(2, 3)
        attn = scores.softmax(dim=-1) * self.audio_weight.softmax(dim=0)  # [N, 1, L, hw]
        value = self.vis_value(x)[:, None]  # [N, 1, d_a, hw]
        attended = (attn @ value.transpose(2, 3))[:, 0].contiguous().transpose(1, 2)
        audio = audio + self.audio_out_conv(self.audio_out(attended))

        residual = vis.transpose(1, 2)  # [N, hw, C]
        tokens = tokens + self.gate(residual) * residual
        return tokens.transpose(1, 2).contiguous().view(n, c, h, w), audio
