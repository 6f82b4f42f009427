"""BCSM (Bidirectional Conditioned Selective Mechanism): each modality gates the other.

As the authors build it, per visual level i (all four encoder stages, projected to d):

    v_i = MambaStack_i^V(Linear(avgpool(F_i)))      one token per frame, [B, T, d]
    a_i = MambaStack_i^A(A)                          the audio tokens, [B, T, d]
    F_i <- F_i + SiLU(Linear(a_i)) * F_i             audio selects visual channels
    A   <- A + mean_i(SiLU(Linear(v_i))) * A         vision selects audio channels

Every clip is computed on its own. The authors' code orders the gates of levels 2-4 and the
audio gate time-major and so mixes clips when a batch holds more than one; at one clip per
batch the two agree.
"""
from torch import nn

from .mamba import MambaBlock

__all__ = ["BCSM"]


def _mamba_stack(dim, num_blocks, mamba_kwargs):
    return nn.Sequential(*[MambaBlock(dim, **mamba_kwargs) for _ in range(num_blocks)])


def _gate(dim):
    return nn.Sequential(nn.Linear(dim, dim), nn.SiLU())


class BCSM(nn.Module):
    """
    Args:
        dim: width d of the projected visual levels and of the audio tokens.
        num_levels: visual levels selected (4).
        num_blocks: Mamba blocks per stack (3).
        mamba_kwargs: passed to every ``MambaBlock`` (d_state, d_conv, expand, impl).
    """

    def __init__(self, dim, num_levels=4, num_blocks=3, **mamba_kwargs):
        super().__init__()
        self.vis_linear = nn.ModuleList([nn.Linear(dim, dim) for _ in range(num_levels)])
        self.video_encoder = nn.ModuleList(
            [_mamba_stack(dim, num_blocks, mamba_kwargs) for _ in range(num_levels)])
        self.audio_encoder = nn.ModuleList(
            [_mamba_stack(dim, num_blocks, mamba_kwargs) for _ in range(num_levels)])
        self.audio_gated = nn.ModuleList([_gate(dim) for _ in range(num_levels)])
        self.video_gated = nn.ModuleList([_gate(dim) for _ in range(num_levels)])

    def forward(self, features, audio):
        """
        Args:
            features: list of ``num_levels`` visual maps [B*T, d, h_i, w_i].
            audio: [B, T, d] audio tokens.
        Returns:
            (selected features, same list layout; selected audio [B, T, d];
             audio gates {level index: [B, T, d]}: the channel weights each level received).
        """
        b, t, d = audio.shape
        selected, video_gates, audio_gates = [], [], {}
        for i, x in enumerate(features):
            pooled = x.mean(dim=(2, 3)).view(b, t, d)
            video = self.video_encoder[i](self.vis_linear[i](pooled))
            video_gates.append(self.video_gated[i](video))
            audio_gates[i] = self.audio_gated[i](self.audio_encoder[i](audio))
            selected.append(x + audio_gates[i].reshape(b * t, d, 1, 1) * x)
        video_gate = sum(video_gates) / len(video_gates)
        return selected, audio + video_gate * audio, audio_gates
