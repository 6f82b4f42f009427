"""SelMHead: everything between the DAM-aligned encoder features and the mask logits.

SelM follows Mask2Former's split of a model into encoders, a segmentation head registered in
detectron2's ``SEM_SEG_HEADS_REGISTRY`` and a criterion. SelM's head is, per CLEVER level,

    visual stage features --1x1 conv + GN--> F [B*T, d, h, w] --\\
                                                                  BCSM --> (F^s, T^s) --> CLEVER
    audio stage tokens + VGGish embedding --Linear + LN--> A [B, T, d] --/

and CLEVER (``MODEL.SELM.CLEVER.NAME`` in ``SELM_DECODER_REGISTRY``) turns the selected
features into masks. With ``MODEL.SELM.CLEVER.MASK_FUSION`` the ``MASK_IN_FEATURE`` level
(res2, or the stem's res1) is projected too (not selected) and fused into the final masks.

Choices where the paper is silent (README, "Where this implementation departs from the paper"):

- BCSM and CLEVER work at one width d (``MODEL.SELM.HIDDEN_DIM``): each level's visual
  features get a 1x1 conv + GroupNorm to d.
- Each level's audio tokens are ``LayerNorm(Linear(stage tokens) + Linear(VGGish embedding))``:
  the DAM-aligned tokens of the paired VGGish stage (its feature map average-pooled to one
  token per second) plus the 128-d embedding, so every level sees both.

Only what CLEVER reads is built: no audio projection when nothing reads audio tokens, no
mask-level projection without MASK_FUSION. ``visual_levels``, ``audio_levels`` and
``reads_audio`` tell SelM which encoder outputs the head reads, so it can leave out DAM
directions whose outputs nothing reads.
"""
import math

from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from .bcsm import BCSM, BCSMLevels
from .clever import build_selm_decoder
from .cpu_inference import Conv1x1

__all__ = ["SelMHead", "paired_audio_channels"]


def _visual_projection(in_channels, dim):
    return nn.Sequential(Conv1x1(in_channels, dim, bias=False),
                         nn.GroupNorm(math.gcd(32, dim), dim))


class _AudioProjection(nn.Module):
    """Per-level audio tokens: LayerNorm(Linear(stage tokens) + Linear(embedding)) -> [B, T, d]."""

    def __init__(self, stage_channels, embedding_dim, dim):
        super().__init__()
        self.stage = nn.Linear(stage_channels, dim)
        self.embedding = nn.Linear(embedding_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, stage_tokens, embedding):
        return self.norm(self.stage(stage_tokens) + self.embedding(embedding))


def paired_audio_channels(cfg, input_shape):
    """{visual level: channels of the VGGish block paired with it}.

    SelM pairs the i-th visual stage (by stride) with the i-th VGGish conv block, whose width
    is ``MODEL.SELM.AUDIO.CHANNELS[i]``. Stem levels (stride < 4: ResNet's res1) are not
    stages and have no partner.
    """
    levels = sorted((name for name in input_shape if input_shape[name].stride >= 4),
                    key=lambda name: input_shape[name].stride)
    return dict(zip(levels, cfg.MODEL.SELM.AUDIO.CHANNELS))


@SEM_SEG_HEADS_REGISTRY.register()
class SelMHead(nn.Module):
    """Per-level projections, BCSM selection and the CLEVER decoder."""

    @configurable
    def __init__(self, *, visual_proj, audio_proj, bcsm, clever):
        """
        NOTE: this interface is experimental.

        Args:
            visual_proj: nn.ModuleDict {level: 1x1 conv + GN to d} for every level CLEVER reads
                (its layer levels, plus its mask level when it fuses one).
            audio_proj: nn.ModuleDict {level: _AudioProjection} for the levels BCSM selects;
                empty when nothing reads audio tokens.
            bcsm: ``BCSMLevels`` {level: BCSM} for CLEVER's layer levels (``used_levels``).
            clever: the decoder (``SELM_DECODER_REGISTRY``), ``forward(feats, audio, valid)``.
        """
        super().__init__()
        self.visual_proj = visual_proj
        self.audio_proj = audio_proj
        self.bcsm = bcsm
        self.clever = clever

    @classmethod
    def from_config(cls, cfg, input_shape):
        """input_shape: {level: ShapeSpec} of the visual encoder's stages."""
        clever = build_selm_decoder(cfg, input_shape)
        levels = clever.used_levels
        bcsm = BCSMLevels({name: BCSM(cfg) for name in levels})
        reads_audio = clever.reads_audio or any(b.reads_audio for b in bcsm.values())
        dim = cfg.MODEL.SELM.HIDDEN_DIM
        audio_channels = paired_audio_channels(cfg, input_shape)
        embedding_dim = cfg.MODEL.SELM.AUDIO.FC_DIMS[-1]
        return {
            "visual_proj": nn.ModuleDict({
                name: _visual_projection(input_shape[name].channels, dim)
                for name in clever.visual_levels}),
            "audio_proj": nn.ModuleDict({
                name: _AudioProjection(audio_channels[name], embedding_dim, dim)
                for name in (levels if reads_audio else [])}),
            "bcsm": bcsm,
            "clever": clever,
        }

    @property
    def visual_levels(self):
        """Visual encoder levels forward() reads."""
        return list(self.visual_proj)

    @property
    def audio_levels(self):
        """Levels whose audio stage tokens forward() reads (empty when ``not reads_audio``)."""
        return list(self.audio_proj)

    @property
    def reads_audio(self):
        """Whether forward() reads audio tokens (and so the VGGish embedding) at all."""
        return len(self.audio_proj) > 0

    @property
    def has_selection_map(self):
        """Whether every BCSM level returns a selection map (its A2V branch is built)."""
        return all(b.has_selection_map for b in self.bcsm.values())

    def forward(self, features, audio_tokens, embedding, frame_valid, selection_maps=True):
        """
        Args:
            features: {level: [B*T, C, h, w]} DAM-aligned visual stage outputs.
            audio_tokens: {level: [B, T, C_a]} the paired VGGish stage, one token per second.
            embedding: [B, T, E] VGGish embedding, or None when not ``reads_audio``.
            frame_valid: [B, T] bool, False = padding frame.
            selection_maps: False leaves out the maps that only illustrate (see ``BCSM``).
        Returns:
            (CLEVER's outputs {"pred_masks", "aux_masks"},
             {level: BCSM selection map [B, T, h, w]} for levels that have one).
        """
        b, t = frame_valid.shape
        feats = {level: proj(features[level]) for level, proj in self.visual_proj.items()}
        if not frame_valid.all():
            # Padding frames are zeroed after the projections, as in the official AVSS model.
            frame_mask = frame_valid.flatten().float()[:, None, None, None]
            feats = {level: f * frame_mask for level, f in feats.items()}
        inputs = {}
        for level in self.bcsm:
            a = (self.audio_proj[level](audio_tokens[level], embedding)
                 * frame_valid[..., None].float() if self.reads_audio else None)
            f = feats[level]
            inputs[level] = (f.view(b, t, *f.shape[1:]), a)
        audio, selection = {}, {}
        for level, (f_sel, audio[level], weight) in self.bcsm(inputs, selection_maps).items():
            feats[level] = f_sel.flatten(0, 1)
            if weight is not None:
                selection[level] = weight
        outputs = self.clever(feats, audio if self.reads_audio else None, frame_valid)
        return outputs, selection
