"""DAM: Dual Alignment Module (paper §4.2), early audio-visual fusion between encoder stages.

DAM sits after stage i of both encoders; its outputs feed stage i+1 of *both* encoders.
Every variant here takes and returns the two encoders' native feature maps:

    x_v: visual features [B*T, C_v, h, w]     x_a: audio features [B*T, C_a, h_a, w_a]

Design choices where the paper is silent:

- Audio tokens are the audio feature map average-pooled to one token per second, ``[B, T, C_a]``
  (and visual tokens likewise, one per frame). The token-sequence Conv1D uses kernel size 1:
  each second's audio re-weights its own frame. Temporal context is BCSM's job (Mamba over
  time); a wider kernel would also let padding frames (AVSS clips padded to 10 frames) leak
  into the last real frames.
- The Conv1D over feature positions has no stated width: ``MODEL.SELM.DAM.FEATURE_CONV``
  ``depthwise`` (the configs' choice: a scale and shift per channel, "light-weight") or
  ``pointwise`` (C x C, about 1 GMAC per R50 stage and 5-frame clip).
- Every variant is the identity at initialisation: the last layer of the conditioning branch
  (the branch of the *other* modality) is zero-initialised and the re-weighting is residual,
  ``F^a = F + F ⊙ W``. The encoders are ImageNet/AudioSet pretrained and each later stage
  expects the statistics of the previous one; a plain ``F ⊙ W`` with a random ``W`` would
  rescale every channel arbitrarily at step 0. With the zero init the gradient still reaches
  the conditioning branch (``dW/d(cond) = the other branch's output``, non-zero), so the
  alignment is learned from there.
- The Table 4 baselines: the paper adds or concatenates F and T, average-pooling F and
  repeating T to align them; here ``add`` is ``F + Linear(T)`` and ``concat`` is
  ``F + Conv1x1([F, Linear(T)])``, T broadcast over positions, zero-initialised like DAM, the
  audio features left unchanged.

Variants (paper Tables 4 and 6), selected by :func:`build_dam` from ``MODEL.SELM.DAM.MODE``:
``add``, ``concat`` (fusion baselines applied per stage), ``a2v`` (A2VBlock only),
``v2a`` (V2ABlock only), ``dual`` (both, the paper's DAM); ``none`` builds nothing.
"""
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["A2VBlock", "V2ABlock", "DualAlignmentModule", "AddFusion", "ConcatFusion",
           "build_dam", "dam_writes", "DAM_MODES", "FEATURE_CONVS"]


def _tokens(x, num_frames):
    """[B*T, C, h, w] -> one token per frame, [B, C, T] (channels-first for Conv1d)."""
    tokens = x.mean(dim=(2, 3))
    return tokens.view(-1, num_frames, tokens.shape[1]).transpose(1, 2)


def _per_frame(tokens):
    """[B, C, T] -> [B*T, C, 1, 1], broadcastable over a frame's positions."""
    return tokens.transpose(1, 2).reshape(-1, tokens.shape[1], 1, 1)


FEATURE_CONVS = ("pointwise", "depthwise")


class _ConvBranch(nn.Module):
    """Conv1D (kernel 1) -> GELU -> Dropout over [N, C_in, L] (a token sequence or flattened
    positions). ``depthwise`` (C_in == C_out) gives each channel its own scale and shift
    instead of mixing the channels."""

    def __init__(self, in_channels, out_channels, dropout, zero_init=False, depthwise=False):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=1,
                              groups=out_channels if depthwise else 1)
        if zero_init:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)
        self.depthwise = depthwise
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        if self.depthwise:
            # One multiply-add instead of a grouped convolution (CPU: ~1.5x faster), in place on
            # a buffer holding the bias: out-of-place, addcmul with a broadcast bias takes a
            # slow CPU path ([5, 256, 3136]: 3.1 against 1.5 ms). Same values and gradients.
            x = torch.empty_like(x).copy_(self.conv.bias[:, None]).addcmul_(
                x, self.conv.weight[:, 0])
        else:
            x = self.conv(x)
        return self.dropout(F.gelu(x))


class _ReweightBlock(nn.Module):
    """Re-weights a feature map with a weight map conditioned on the other modality's tokens.

    ``W = Branch_cond(tokens) ⊙ Branch_feat(F)`` (tokens broadcast over positions), then
    ``F + F ⊙ W``. A2VBlock and V2ABlock are this block with the roles swapped.
    ``feature_conv`` is Branch_feat's Conv1D: ``pointwise`` (C x C, mixes channels) or
    ``depthwise`` (per channel).
    """

    def __init__(self, feat_channels, cond_channels, dropout, feature_conv="pointwise"):
        super().__init__()
        if feature_conv not in FEATURE_CONVS:
            raise ValueError("MODEL.SELM.DAM.FEATURE_CONV={!r} is unknown: use one of {}".format(
                feature_conv, ", ".join(FEATURE_CONVS)))
        self.cond_branch = _ConvBranch(cond_channels, feat_channels, dropout, zero_init=True)
        self.feat_branch = _ConvBranch(feat_channels, feat_channels, dropout,
                                       depthwise=feature_conv == "depthwise")

    def forward(self, feats, cond_tokens):
        """
        Args:
            feats: [B*T, C_f, h, w] features to re-weight.
            cond_tokens: [B, C_c, T] tokens of the other modality.
        Returns:
            [B*T, C_f, h, w]
        """
        n, c, h, w = feats.shape
        cond = _per_frame(self.cond_branch(cond_tokens))  # [B*T, C_f, 1, 1]
        weight = self.feat_branch(feats.flatten(2)).view(n, c, h, w).mul_(cond)
        return torch.addcmul(feats, feats, weight)


class A2VBlock(_ReweightBlock):
    """Audio-to-visual alignment: audio tokens re-weight the visual features."""

    def __init__(self, visual_channels, audio_channels, dropout, feature_conv="pointwise"):
        super().__init__(visual_channels, audio_channels, dropout, feature_conv)


class V2ABlock(_ReweightBlock):
    """Visual-to-audio alignment: visual tokens (frames average-pooled) re-weight the audio map."""

    def __init__(self, visual_channels, audio_channels, dropout, feature_conv="pointwise"):
        super().__init__(audio_channels, visual_channels, dropout, feature_conv)


class DualAlignmentModule(nn.Module):
    """DAM with either or both of its sub-blocks; both read the stage's un-aligned features."""

    def __init__(self, visual_channels, audio_channels, dropout, a2v=True, v2a=True,
                 feature_conv="pointwise"):
        super().__init__()
        self.a2v = (A2VBlock(visual_channels, audio_channels, dropout, feature_conv)
                    if a2v else None)
        self.v2a = (V2ABlock(visual_channels, audio_channels, dropout, feature_conv)
                    if v2a else None)

    def forward(self, x_v, x_a, num_frames):
        """
        Args:
            x_v: [B*T, C_v, h, w] visual stage output.
            x_a: [B*T, C_a, h_a, w_a] audio stage output.
            num_frames: T.
        Returns:
            (x_v, x_a) aligned, same shapes.
        """
        out_v, out_a = x_v, x_a
        if self.a2v is not None:
            out_v = self.a2v(x_v, _tokens(x_a, num_frames))
        if self.v2a is not None:
            out_a = self.v2a(x_a, _tokens(x_v, num_frames))
        return out_v, out_a


class AddFusion(nn.Module):
    """Ablation baseline: F + Linear(audio token), broadcast over positions; audio unchanged."""

    def __init__(self, visual_channels, audio_channels, dropout):
        super().__init__()
        self.proj = nn.Linear(audio_channels, visual_channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x_v, x_a, num_frames):
        audio = self.dropout(self.proj(x_a.mean(dim=(2, 3))))  # [B*T, C_v]
        return x_v + audio[:, :, None, None], x_a


class ConcatFusion(nn.Module):
    """Ablation baseline: F + Conv1x1(concat(F, Linear(audio token) broadcast)); audio unchanged."""

    def __init__(self, visual_channels, audio_channels, dropout):
        super().__init__()
        self.proj = nn.Linear(audio_channels, visual_channels)
        self.fuse = nn.Conv2d(2 * visual_channels, visual_channels, kernel_size=1)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x_v, x_a, num_frames):
        audio = self.dropout(self.proj(x_a.mean(dim=(2, 3))))[:, :, None, None]
        fused = self.fuse(torch.cat([x_v, audio.expand_as(x_v)], dim=1))
        return x_v + fused, x_a


_FUSIONS = {"add": AddFusion, "concat": ConcatFusion}
# What each mode re-weights: "visual" (A2V-style, conditioned on audio) and/or "audio" (V2A).
_WRITES = {"none": (), "add": ("visual",), "concat": ("visual",), "a2v": ("visual",),
           "v2a": ("audio",), "dual": ("visual", "audio")}
DAM_MODES = tuple(_WRITES)


def dam_writes(mode):
    """The modalities DAM mode ``mode`` re-weights, a subset of {"visual", "audio"}.

    Each direction reads the *other* modality's tokens.
    """
    if mode not in _WRITES:
        raise ValueError("MODEL.SELM.DAM.MODE={!r} is unknown: use one of {}".format(
            mode, ", ".join(DAM_MODES)))
    return set(_WRITES[mode])


def build_dam(mode, visual_channels, audio_channels, dropout, directions=None,
              feature_conv="pointwise"):
    """Builds the DAM variant for one stage pair, or returns None when it would do nothing.

    Args:
        mode: one of ``DAM_MODES``.
        directions: the subset of ``dam_writes(mode)`` to build (default: all). SelM leaves
            out a direction whose output nothing downstream reads.
        feature_conv: Conv1D of the branch over feature positions in A2V/V2A, one of
            ``FEATURE_CONVS`` (``MODEL.SELM.DAM.FEATURE_CONV``).
    Every variant has ``forward(x_v, x_a, num_frames) -> (x_v, x_a)`` with unchanged shapes.
    """
    writes = dam_writes(mode)
    directions = writes if directions is None else writes & set(directions)
    if not directions:
        return None
    if mode in _FUSIONS:
        return _FUSIONS[mode](visual_channels, audio_channels, dropout)
    return DualAlignmentModule(visual_channels, audio_channels, dropout,
                               a2v="visual" in directions, v2a="audio" in directions,
                               feature_conv=feature_conv)
