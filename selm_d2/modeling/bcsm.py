"""BCSM: Bidirectional Conditioned Selective Mechanism (paper §4.3), one per CLEVER level.

Two symmetric branches, each a SeM: a stack of Mamba blocks (Mamba + residual + LayerNorm)
that filters one modality and produces weights that *select* the other by element-wise
multiplication:

- V2A-SeM (paper): the visual features F ``[B, T, d, h, w]``, average-pooled to ``p x p``
  per frame and read as one time-major sequence ``[B, T*p*p, d]``, go through the Mamba
  stack; each frame's positions are averaged and a Linear + sigmoid gives channel weights
  ``[B, T, d]``; ``T^s = A ⊙ weights``.
- A2V-SeM, ``MODEL.SELM.BCSM.A2V_SELECTION``:

  - ``channel`` (paper: the lower branch "mirrors" the upper one, audio tokens bypassing the
    pooling): the audio tokens ``[B, T, d]`` go through the same kind of stack, Linear and
    sigmoid to channel weights ``w [B, T, d]``; ``F^s = F ⊙ w`` (broadcast over positions).
  - ``spatial`` (ours): the stack's output is a per-frame selector ``s_t`` and the weights
    are a spatial map ``W_v(t, x, y) = sigmoid(<W_q s_t, W_k F_t(x, y)> / sqrt(d))``
    ``[B, T, h, w]``; ``F^s = F ⊙ W_v``. Extra query/key projections the paper does not have.

- Selection map (``MODEL.SELM.RETURN_SELECTION_MAPS``, heat maps of paper Fig. 5, which shows
  feature maps with and without BCSM): ``spatial`` returns ``W_v`` (in (0, 1)); ``channel``
  returns the per-position energy of the selected features, ``mean_c |F^s|`` ``[B, T, h, w]``
  (not bounded; the demo normalises each map for display).

Choices where the paper is silent:

- V2A pooling: the paper says "average pooling" to sequences; the grid p (``POOL_SIZE``: 1 in
  the paper and SelM-plus configs, one token per frame like the audio tokens of the mirrored
  branch; 2 in the AVS-Synth ones) and the time-major order of the sequence (all positions of
  frame 1, then frame 2, ...) are ours, and the Mamba outputs are averaged per frame before
  the Linear + sigmoid.
- The Mamba scan is causal along time (one direction, as mamba-ssm's). Padding frames
  (AVSS clips padded to 10 frames) are trailing, so they cannot change real frames' weights.
- Selection is a pure multiplication (no residual), as the paper describes it: everything
  after BCSM (CLEVER) is trained from scratch, so there are no pretrained statistics to
  protect, and a residual ``F + F ⊙ W`` could never suppress a silent object below 1x, which
  is what the module exists for.
- Modes (paper Table 7): ``bidirectional`` (both), ``a2v`` (select visual only),
  ``v2a`` (select audio only), ``off`` (identity; no selection map).
- T^s feeds only CLEVER's audio cross-attention: with ``CLEVER.AUDIO_CROSS_ATTN`` off the
  V2A branch is not built (``effective_bcsm_mode``).

``BCSMLevels`` holds one BCSM per CLEVER level; at inference it runs the Mamba stacks of all
levels and both branches as one group (the same result with a sixth of the small ops).
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

from .cpu_inference import Conv1x1
from .mamba import MambaBlock, run_mamba_stacks

__all__ = ["BCSM", "BCSMLevels", "BCSM_MODES", "A2V_SELECTIONS", "effective_bcsm_mode"]

BCSM_MODES = ("off", "a2v", "v2a", "bidirectional")
A2V_SELECTIONS = ("channel", "spatial")


def effective_bcsm_mode(cfg):
    """MODEL.SELM.BCSM.MODE without the V2A branch when CLEVER does not read audio."""
    mode = cfg.MODEL.SELM.BCSM.MODE
    if not cfg.MODEL.SELM.CLEVER.AUDIO_CROSS_ATTN:
        return {"bidirectional": "a2v", "v2a": "off"}.get(mode, mode)
    return mode


def _mamba_stack(dim, num_blocks, mamba_kwargs):
    return nn.Sequential(*[MambaBlock(dim, **mamba_kwargs) for _ in range(num_blocks)])


def _pooled_sequence(feats, pool_size):
    """feats [B, T, d, h, w] -> [B, T*p*p, d]: each frame average-pooled to p x p, time-major."""
    b, t, d = feats.shape[:3]
    pooled = F.adaptive_avg_pool2d(feats.flatten(0, 1), pool_size)  # [B*T, d, p, p]
    return pooled.flatten(2).transpose(1, 2).reshape(b, -1, d)


class _ChannelSeM(nn.Module):
    """A SeM branch with channel weights: a token sequence -> Mamba stack -> per-frame mean ->
    Linear -> sigmoid. V2A-SeM runs it on the pooled visual features, A2V-SeM ("channel") on
    the audio tokens (one per frame, nothing to pool): the paper's two mirrored branches."""

    def __init__(self, dim, num_blocks, mamba_kwargs):
        super().__init__()
        self.mamba = _mamba_stack(dim, num_blocks, mamba_kwargs)
        self.to_weight = nn.Linear(dim, dim)

    def weights(self, scanned, num_frames):
        """scanned: ``self.mamba``'s output [B, T*n, d] for n tokens per frame, time-major ->
        weights [B, T, d] in (0, 1)."""
        b, _, d = scanned.shape
        per_frame = scanned.view(b, num_frames, -1, d).mean(dim=2)
        return torch.sigmoid(self.to_weight(per_frame))


class _SpatialA2VSeM(nn.Module):
    """Audio tokens -> Mamba stack -> per-frame selector -> spatial weights on the frame (ours)."""

    def __init__(self, dim, num_blocks, mamba_kwargs):
        super().__init__()
        self.mamba = _mamba_stack(dim, num_blocks, mamba_kwargs)
        self.query = nn.Linear(dim, dim)
        self.key = Conv1x1(dim, dim)

    def weights(self, feats, scanned):
        """feats [B, T, d, h, w]; scanned: ``self.mamba``'s output on the audio tokens
        [B, T, d] -> spatial weights [B, T, h, w] in (0, 1)."""
        b, t, d, h, w = feats.shape
        selector = self.query(scanned)  # [B, T, d]
        keys = self.key(feats.flatten(0, 1)).view(b, t, d, h, w)
        logits = torch.einsum("btd,btdhw->bthw", selector, keys) / math.sqrt(d)
        return torch.sigmoid(logits)


class BCSM(nn.Module):
    """Bidirectional Conditioned Selective Mechanism for one feature level."""

    @configurable
    def __init__(self, *, dim, mode="bidirectional", a2v_selection="channel", num_blocks=3,
                 pool_size=1, mamba_kwargs=None):
        """
        NOTE: this interface is experimental.

        Args:
            dim: feature width d of both modalities.
            mode: one of ``BCSM_MODES``.
            a2v_selection: one of ``A2V_SELECTIONS``: how A2V-SeM's weights select F.
            num_blocks: Mamba blocks per branch (paper: 3).
            pool_size: visual features are average-pooled to pool_size x pool_size per frame
                before the V2A scan.
            mamba_kwargs: passed to each ``MambaBlock`` (d_state, d_conv, expand, impl).
        """
        super().__init__()
        if mode not in BCSM_MODES:
            raise ValueError("MODEL.SELM.BCSM.MODE={!r} is unknown: use one of {}".format(
                mode, ", ".join(BCSM_MODES)))
        if a2v_selection not in A2V_SELECTIONS:
            raise ValueError("MODEL.SELM.BCSM.A2V_SELECTION={!r} is unknown: use one of {}".format(
                a2v_selection, ", ".join(A2V_SELECTIONS)))
        mamba_kwargs = mamba_kwargs or {}
        self.mode = mode
        self.a2v_selection = a2v_selection
        self.pool_size = pool_size
        self.v2a = (_ChannelSeM(dim, num_blocks, mamba_kwargs)
                    if mode in ("v2a", "bidirectional") else None)
        a2v_cls = _ChannelSeM if a2v_selection == "channel" else _SpatialA2VSeM
        self.a2v = (a2v_cls(dim, num_blocks, mamba_kwargs)
                    if mode in ("a2v", "bidirectional") else None)

    @classmethod
    def from_config(cls, cfg):
        mamba = cfg.MODEL.SELM.MAMBA
        return {
            "dim": cfg.MODEL.SELM.HIDDEN_DIM,
            "mode": effective_bcsm_mode(cfg),
            "a2v_selection": cfg.MODEL.SELM.BCSM.A2V_SELECTION,
            "num_blocks": cfg.MODEL.SELM.BCSM.NUM_BLOCKS,
            "pool_size": cfg.MODEL.SELM.BCSM.POOL_SIZE,
            "mamba_kwargs": {"d_state": mamba.D_STATE, "d_conv": mamba.D_CONV,
                             "expand": mamba.EXPAND, "impl": mamba.IMPL},
        }

    @property
    def has_selection_map(self):
        return self.a2v is not None

    @property
    def reads_audio(self):
        """Whether forward() reads the audio tokens (either branch is built)."""
        return self.a2v is not None or self.v2a is not None

    def sequences(self, feats, audio):
        """The Mamba stacks of the built branches and their input sequences, V2A's first.

        Args:
            feats: F [B, T, d, h, w]; audio: A [B, T, d].
        Returns:
            list of (stack, sequence [B, L, d]): V2A-SeM's on the pooled F, A2V-SeM's on A.
        """
        pairs = []
        if self.v2a is not None:
            pairs.append((self.v2a.mamba, _pooled_sequence(feats, self.pool_size)))
        if self.a2v is not None:
            pairs.append((self.a2v.mamba, audio))
        return pairs

    def select(self, feats, audio, scanned, selection_map=True):
        """BCSM's selection, given a way to get the stacks' outputs.

        Args:
            feats: F [B, T, d, h, w]; audio: A [B, T, d].
            scanned: ``scanned(i)`` is the output of the i-th stack of
                ``sequences(feats, audio)`` on its sequence, [B, L, d]; each is asked for once.
            selection_map: False leaves out the "channel" map (not needed for the masks).
        Returns:
            as ``forward``.
        """
        num_frames = feats.shape[1]
        selected_audio = (audio if self.v2a is None else
                          audio * self.v2a.weights(scanned(0), num_frames))
        if self.a2v is None:
            return feats, selected_audio, None
        a2v = scanned(0 if self.v2a is None else 1)  # sequences() lists V2A's stack first
        if self.a2v_selection == "spatial":
            weight = self.a2v.weights(feats, a2v)
            return feats * weight.unsqueeze(2), selected_audio, weight
        selected = feats * self.a2v.weights(a2v, num_frames)[..., None, None]
        return selected, selected_audio, selected.abs().mean(dim=2) if selection_map else None

    def forward(self, feats, audio, selection_map=True):
        """
        Args:
            feats: F, visual features [B, T, d, h, w].
            audio: A, audio tokens [B, T, d].
            selection_map: False skips the "channel" selection map (None is returned).
        Returns:
            (F^s [B, T, d, h, w], T^s [B, T, d], selection map [B, T, h, w] or None when A2V
            is off). The map is the spatial weight map W_v ("spatial"), or the per-position
            energy of the selected features, mean_c |F^s| ("channel": the paper's Fig. 5
            compares feature maps with and without BCSM).
        """
        pairs = self.sequences(feats, audio)
        return self.select(feats, audio, lambda i: pairs[i][0](pairs[i][1]), selection_map)


class BCSMLevels(nn.ModuleDict):
    """One BCSM per feature level, {level: BCSM}, run together.

    Without gradients, the Mamba stacks of all levels run as one group (``run_mamba_stacks``:
    the same result, up to rounding, with a sixth of the small ops for three levels' two
    branches). The stacked parameters are kept between calls (about the size of BCSM's own
    parameters) until a parameter changes or ``train()``/``eval()`` is called. With
    gradients, each level's BCSM runs in turn: grouping would change the order in which
    gradients are summed, and so the rounding of the training that ``make demo``'s numbers
    come from.
    """

    def __init__(self, modules=None):
        super().__init__(modules)
        self._stacked = {}  # run_mamba_stacks' cache of stacked parameters

    def train(self, mode=True):
        self._stacked.clear()
        return super().train(mode)

    def forward(self, inputs, selection_maps=True):
        """
        Args:
            inputs: {level: (F [B, T, d, h, w], A [B, T, d])} for every level.
            selection_maps: as ``BCSM.forward``'s ``selection_map``.
        Returns:
            {level: BCSM's (F^s, T^s, selection map or None)}.
        """
        if torch.is_grad_enabled():
            return {level: bcsm(*inputs[level], selection_maps) for level, bcsm in self.items()}
        pairs = {level: bcsm.sequences(*inputs[level]) for level, bcsm in self.items()}
        flat = [pair for level_pairs in pairs.values() for pair in level_pairs]
        outputs = iter(run_mamba_stacks([stack for stack, _ in flat], [seq for _, seq in flat],
                                        self._stacked))
        scanned = {level: [next(outputs) for _ in level_pairs]
                   for level, level_pairs in pairs.items()}
        return {level: bcsm.select(*inputs[level], scanned[level].__getitem__, selection_maps)
                for level, bcsm in self.items()}
