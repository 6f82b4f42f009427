"""SelMHead: everything between the DAM-fused encoder stages and the mask logits.

SelM follows Mask2Former's split of a model into encoders, a segmentation head registered in
detectron2's ``SEM_SEG_HEADS_REGISTRY`` and a criterion. SelM's head is

    4 visual stages --1x1 conv + GroupNorm--> [B*T, d, h_i, w_i] --\\
                                                                    BCSM --> CLEVER --> masks
    audio tokens [B, T, d] ---------------------------------------/

and CLEVER is looked up in ``SELM_DECODER_REGISTRY`` (``MODEL.SELM.CLEVER.NAME``).
"""
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from .bcsm import BCSM
from .clever import build_selm_decoder

__all__ = ["SelMHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class SelMHead(nn.Module):
    """Per-level projections, BCSM and CLEVER."""

    @configurable
    def __init__(self, *, in_features, in_proj, bcsm, clever):
        """
        NOTE: this interface is experimental.

        Args:
            in_features: the visual stages read, fine to coarse (res2..res5).
            in_proj: nn.ModuleList, per stage a 1x1 conv + GroupNorm to d.
            bcsm: ``BCSM`` over the four projected stages.
            clever: the decoder, ``forward(features coarse to fine, audio, audio_mask)``.
        """
        super().__init__()
        self.in_features = list(in_features)
        self.in_proj = in_proj
        self.bcsm = bcsm
        self.clever = clever

    @classmethod
    def from_config(cls, cfg, input_shape):
        """input_shape: {stage: ShapeSpec} of the visual encoder."""
        selm = cfg.MODEL.SELM
        dim = selm.HIDDEN_DIM
        in_features = sorted(input_shape, key=lambda name: input_shape[name].stride)
        mamba = selm.MAMBA
        return {
            "in_features": in_features,
            "in_proj": nn.ModuleList([
                nn.Sequential(nn.Conv2d(input_shape[name].channels, dim, kernel_size=1),
                              nn.GroupNorm(32, dim))
                for name in in_features]),
            "bcsm": BCSM(dim, num_levels=len(in_features), num_blocks=selm.BCSM.NUM_BLOCKS,
                         d_state=mamba.D_STATE, d_conv=mamba.D_CONV, expand=mamba.EXPAND,
                         impl=mamba.IMPL),
            "clever": build_selm_decoder(cfg),
        }

    def forward(self, features, audio, frame_valid):
        """
        Args:
            features: {stage: [B*T, C_i, h_i, w_i]} DAM-fused visual stage outputs.
            audio: [B, T, d] audio tokens after the last DAM.
            frame_valid: [B, T] bool, False for padding frames (their features are zeroed).
        Returns:
            (mask logits [B*T, C_out, H', W'], CLEVER's assignment maps (list, coarse to fine,
             [B*T, num_tokens, h_i, w_i]), BCSM's audio gates {stage: [B, T, d]}).
        """
        valid = frame_valid.flatten().to(audio.dtype)[:, None, None, None]
        feats = [proj(features[name]) * valid
                 for name, proj in zip(self.in_features, self.in_proj)]
        feats, audio, gates = self.bcsm(feats, audio)
        logits, maps = self.clever(feats[::-1], audio.flatten(0, 1)[:, None],
                                   frame_valid.flatten()[:, None])
        return logits, maps, {name: gates[i] for i, name in enumerate(self.in_features)}
