"""SelM meta-architecture: audio-visual segmentation with selective mechanisms.

    frames ──stem── res2 ─DAM─ res3 ─DAM─ res4 ─DAM─ res5 ─DAM─┐
    log-mel ─────── conv1 ─┘── conv2 ─┘── conv3 ─┘── conv4 ─┘── fc (embedding)
        per CLEVER level: 1x1 projections to d -> BCSM (F^s, T^s) -> CLEVER -> masks

DAM (Dual Alignment Module) sits between the encoder stages and its outputs feed the next
stage of *both* encoders (early fusion, paper §4.2). Each CLEVER level gets its visual stage
features projected to d (1x1 conv + GN) and an audio token per frame, ``Linear(stage tokens)
+ Linear(VGGish embedding)`` + LayerNorm, so every level sees both the stage's DAM-aligned
audio and the 128-d embedding. BCSM (Bidirectional Conditioned Selective Mechanism, §4.3)
selects per level; CLEVER (Cross-LEVEl Reasoning decoder, §4.4) decodes the masks.

Padding frames (``frame_valid`` False; AVSS clips padded to 10 frames) are zeroed after the
projections as in the official AVSS model, masked out of CLEVER's audio keys, left out of the
losses and dropped from the outputs.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone

from .modeling.audio import build_vggish
from .modeling.backbone import load_visual_weights
from .modeling.bcsm import BCSM
from .modeling.clever import CLEVERDecoder
from .modeling.criterion import SelMCriterion
from .modeling.dam import build_dam

__all__ = ["SelM"]


def _visual_projection(in_channels, dim):
    return nn.Sequential(nn.Conv2d(in_channels, dim, kernel_size=1, bias=False),
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


@META_ARCH_REGISTRY.register()
class SelM(nn.Module):
    """SelM for S4/MS3 (binary) and AVSS (semantic) audio-visual segmentation."""

    @configurable
    def __init__(self, *, backbone, audio_encoder, dam, visual_proj, audio_proj, bcsm, clever,
                 criterion, num_classes, mask_in_feature, level_strides, pixel_mean, pixel_std,
                 return_selection_maps=False, size_divisibility=32):
        """
        NOTE: this interface is experimental.

        Args:
            backbone: staged visual encoder (``stage_names``, ``forward_stem``, ``forward_stage``).
            audio_encoder: staged VGGish; visual stage i is paired with audio stage i.
            dam: nn.ModuleDict {visual stage name: DAM variant}; stages not in it are not fused.
            visual_proj: nn.ModuleDict {level: 1x1 conv + GN to d} for the CLEVER levels and
                ``mask_in_feature``.
            audio_proj: nn.ModuleDict {level: _AudioProjection} for the CLEVER levels.
            bcsm: nn.ModuleDict {level: BCSM} for the CLEVER levels.
            clever: CLEVERDecoder.
            criterion: SelMCriterion.
            num_classes: K (1 = binary).
            mask_in_feature: the stride-4 level fused into the final masks.
            level_strides: {level: stride}, to crop selection maps to the un-padded frame.
            pixel_mean, pixel_std: per-channel normalisation of the RGB 0..255 input.
            return_selection_maps: add BCSM's A2V weight maps to inference outputs.
            size_divisibility: frames are zero-padded (after normalisation) to a multiple.
        """
        super().__init__()
        self.backbone = backbone
        self.audio_encoder = audio_encoder
        self.dam = dam
        self.visual_proj = visual_proj
        self.audio_proj = audio_proj
        self.bcsm = bcsm
        self.clever = clever
        self.criterion = criterion
        self.num_classes = num_classes
        self.mask_in_feature = mask_in_feature
        self.level_strides = dict(level_strides)
        self.return_selection_maps = return_selection_maps
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if return_selection_maps and not all(m.has_selection_map for m in bcsm.values()):
            raise ValueError("MODEL.SELM.RETURN_SELECTION_MAPS needs the A2V branch of BCSM: "
                             "set MODEL.SELM.BCSM.MODE to 'a2v' or 'bidirectional'")

    @classmethod
    def from_config(cls, cfg):
        selm = cfg.MODEL.SELM
        backbone = build_backbone(cfg)
        load_visual_weights(backbone, selm.VISUAL_WEIGHTS)
        audio_encoder = build_vggish(cfg)
        shapes = backbone.output_shape()
        stage_names = list(backbone.stage_names)
        if len(stage_names) != len(audio_encoder.stage_names):
            raise ValueError(
                "SelM pairs each visual stage with a VGGish stage ({}), but the backbone runs "
                "{}: list all of res2..res5 in MODEL.RESNETS.OUT_FEATURES / "
                "MODEL.PVT.OUT_FEATURES".format(list(audio_encoder.stage_names), stage_names))
        needed = {"MODEL.SELM.DAM.STAGES": selm.DAM.STAGES,
                  "MODEL.SELM.CLEVER.IN_FEATURES": selm.CLEVER.IN_FEATURES,
                  "MODEL.SELM.CLEVER.MASK_IN_FEATURE": [selm.CLEVER.MASK_IN_FEATURE]}
        for key, names in needed.items():
            missing = [n for n in names if n not in shapes]
            if missing:
                raise ValueError("{} names {} which the backbone does not output (it outputs {}; "
                                 "see MODEL.RESNETS.OUT_FEATURES / MODEL.PVT.OUT_FEATURES)".format(
                                     key, missing, sorted(shapes)))
        if len(selm.LOSS.AUX_WEIGHTS) != len(selm.CLEVER.IN_FEATURES):
            raise ValueError("MODEL.SELM.LOSS.AUX_WEIGHTS needs one weight per "
                             "MODEL.SELM.CLEVER.IN_FEATURES level ({}), got {}".format(
                                 len(selm.CLEVER.IN_FEATURES), list(selm.LOSS.AUX_WEIGHTS)))

        audio_stage = dict(zip(stage_names, audio_encoder.stage_names))
        audio_channels = {v: audio_encoder.stage_channels[a] for v, a in audio_stage.items()}
        dam = nn.ModuleDict()
        for stage in selm.DAM.STAGES:
            module = build_dam(selm.DAM.MODE, shapes[stage].channels, audio_channels[stage],
                               selm.DAM.DROPOUT)
            if module is not None:
                dam[stage] = module

        clever = CLEVERDecoder(cfg, shapes)
        levels = clever.used_levels
        dim = selm.HIDDEN_DIM
        embedding_dim = selm.AUDIO.FC_DIMS[-1]
        visual_proj = nn.ModuleDict({name: _visual_projection(shapes[name].channels, dim)
                                     for name in levels + [selm.CLEVER.MASK_IN_FEATURE]})
        return {
            "backbone": backbone,
            "audio_encoder": audio_encoder,
            "dam": dam,
            "visual_proj": visual_proj,
            "audio_proj": nn.ModuleDict({
                name: _AudioProjection(audio_channels[name], embedding_dim, dim)
                for name in levels}),
            "bcsm": nn.ModuleDict({name: BCSM(cfg) for name in levels}),
            "clever": clever,
            "criterion": SelMCriterion(cfg),
            "num_classes": selm.NUM_CLASSES,
            "mask_in_feature": selm.CLEVER.MASK_IN_FEATURE,
            "level_strides": {name: shapes[name].stride for name in levels},
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "return_selection_maps": selm.RETURN_SELECTION_MAPS,
            "size_divisibility": max(32, backbone.size_divisibility),
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def _preprocess(self, batched_inputs):
        """-> normalised, padded frames [B*T, 3, Hp, Wp], audio [B*T, 1, 96, 64], valid [B, T]."""
        sizes = {tuple(x["image"].shape) for x in batched_inputs}
        if len(sizes) != 1:
            raise ValueError("SelM needs clips of equal frame count and size within a batch "
                             "(INPUT.AVS.SIZE / INPUT.AVS.PAD_TO_FRAMES); got image shapes "
                             "{}".format(sorted(sizes)))
        num_frames = next(iter(sizes))[0]
        for x in batched_inputs:
            if x["audio"].shape[0] != num_frames:
                raise ValueError("clip {}: {} frames but {} audio examples".format(
                    x.get("clip_id", "?"), num_frames, x["audio"].shape[0]))
        images = torch.stack([x["image"] for x in batched_inputs]).to(self.device)
        images = ((images.float() - self.pixel_mean) / self.pixel_std).flatten(0, 1)
        height, width = images.shape[-2:]
        div = self.size_divisibility
        images = F.pad(images, (0, -width % div, 0, -height % div))
        audio = torch.stack([x["audio"] for x in batched_inputs]).to(self.device).flatten(0, 1)
        valid = torch.stack([x.get("frame_valid", torch.ones(num_frames, dtype=torch.bool))
                             for x in batched_inputs]).to(self.device).bool()
        return images, audio, valid

    def _encode(self, images, audio, num_frames):
        """Both encoders stage by stage with DAM in between.

        Returns:
            ({stage: visual features [B*T, C, h, w]}, {stage: audio tokens [B, T, C_a]},
             VGGish embedding [B, T, E]).
        """
        x_v = self.backbone.forward_stem(images)
        x_a = audio
        visual, tokens = {}, {}
        for vname, aname in zip(self.backbone.stage_names, self.audio_encoder.stage_names):
            x_v = self.backbone.forward_stage(vname, x_v)
            x_a = self.audio_encoder.forward_stage(aname, x_a)
            if vname in self.dam:
                x_v, x_a = self.dam[vname](x_v, x_a, num_frames)
            visual[vname] = x_v
            tokens[vname] = x_a.mean(dim=(2, 3)).view(-1, num_frames, x_a.shape[1])
        embedding = self.audio_encoder.forward_embedding(x_a)
        return visual, tokens, embedding.view(-1, num_frames, embedding.shape[-1])

    def _decode(self, visual, tokens, embedding, valid):
        """Projections, BCSM per level, CLEVER. Returns (CLEVER outputs, {level: W_v [B,T,h,w]})."""
        b, t = valid.shape
        frame_mask = valid.flatten().float()[:, None, None, None]
        feats, audio, selection = {}, {}, {}
        for level, bcsm in self.bcsm.items():
            f = self.visual_proj[level](visual[level]) * frame_mask
            a = self.audio_proj[level](tokens[level], embedding) * valid[..., None].float()
            f_sel, audio[level], selection[level] = bcsm(f.view(b, t, *f.shape[1:]), a)
            feats[level] = f_sel.flatten(0, 1)
        mask_level = self.mask_in_feature
        mask_feats = self.visual_proj[mask_level](visual[mask_level]) * frame_mask
        return self.clever(feats, mask_feats, audio, valid), selection

    def forward(self, batched_inputs):
        """
        Args:
            batched_inputs: list of clip dicts from ``AVSClipDatasetMapper``: "image" uint8
                [T, 3, H, W] RGB, "audio" [T, 1, 96, 64], "frame_valid" [T] (optional), and
                for training "sem_seg" [T, H, W] (255 = ignore) and "frame_mask_flags" [T].
        Returns:
            training: dict of scalar losses (see SelMCriterion).
            inference: list, per clip, of {"sem_seg": [T', K+1, height, width] probabilities}
            (channel 0 = background; T' = real frames) plus "selection_maps" {level: [T', h, w]}
            when RETURN_SELECTION_MAPS is on.
        """
        images, audio, valid = self._preprocess(batched_inputs)
        if self.training:
            targets, flags = self._targets(batched_inputs, images.shape[-2:], valid)
        num_frames = valid.shape[1]
        visual, tokens, embedding = self._encode(images, audio, num_frames)
        outputs, selection = self._decode(visual, tokens, embedding, valid)
        if self.training:
            return self.criterion(outputs, targets, flags)
        return self._postprocess(outputs["pred_masks"], selection, batched_inputs, valid,
                                 images.shape[-2:])

    def _targets(self, batched_inputs, padded_size, valid):
        """-> targets [B*T, Hp, Wp] (255 on padding pixels), frame flags [B*T]."""
        for x in batched_inputs:
            if "sem_seg" not in x or "frame_mask_flags" not in x:
                raise ValueError("SelM training needs 'sem_seg' and 'frame_mask_flags' in every "
                                 "clip dict (clip {}); use AVSClipDatasetMapper with "
                                 "is_train=True".format(x.get("clip_id", "?")))
            if x["sem_seg"].shape != x["image"].shape[:1] + x["image"].shape[2:]:
                raise ValueError("clip {}: sem_seg has shape {} but the frames are {}".format(
                    x.get("clip_id", "?"), tuple(x["sem_seg"].shape), tuple(x["image"].shape)))
        targets = torch.stack([x["sem_seg"] for x in batched_inputs]).to(self.device).flatten(0, 1)
        height, width = targets.shape[-2:]
        targets = F.pad(targets, (0, padded_size[1] - width, 0, padded_size[0] - height),
                        value=self.criterion.ignore_value)
        flags = torch.stack([x["frame_mask_flags"] for x in batched_inputs]).to(self.device)
        return targets, (flags.bool() & valid).flatten()

    def _postprocess(self, logits, selection, batched_inputs, valid, padded_size):
        num_frames = valid.shape[1]
        height, width = batched_inputs[0]["image"].shape[-2:]
        results = []
        for i, x in enumerate(batched_inputs):
            keep = valid[i]
            clip = logits[i * num_frames:(i + 1) * num_frames][keep]
            clip = F.interpolate(clip, size=padded_size, mode="bilinear",
                                 align_corners=False)[..., :height, :width]
            out_size = (x.get("height", height), x.get("width", width))
            if out_size != (height, width):
                clip = F.interpolate(clip, size=out_size, mode="bilinear", align_corners=False)
            if self.num_classes == 1:
                fg = clip.sigmoid()
                probs = torch.cat([1 - fg, fg], dim=1)
            else:
                probs = clip.softmax(dim=1)
            result = {"sem_seg": probs}
            if self.return_selection_maps:
                result["selection_maps"] = {
                    level: maps[i][keep][:, :math.ceil(height / self.level_strides[level]),
                                         :math.ceil(width / self.level_strides[level])]
                    for level, maps in selection.items()}
            results.append(result)
        return results
