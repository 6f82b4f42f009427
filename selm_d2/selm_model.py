"""SelM meta-architecture: audio-visual segmentation with selective mechanisms.

    log-mel -- VGGish -- Linear + LayerNorm --> audio tokens a [B*T, d, 1]
    frames -- stem -- res2 -DAM- res3 -DAM- res4 -DAM- res5 -DAM-   (each DAM updates a too)
        sem_seg_head (SelMHead): 1x1 projections -> BCSM -> CLEVER -> mask logits
        criterion (SelMCriterion)

This is the authors' model (their ``SelM_R50`` / ``SelM_PVT``): VGGish runs whole, frozen,
on one 0.96 s log-mel example per frame; DAM (Dual Alignment Module) fuses the audio tokens
into every visual stage and updates them; the head runs BCSM (Bidirectional Conditioned
Selective Mechanism) and CLEVER (Cross-LEVEl Reasoning decoder). The mask logits are resized
bilinearly (corners aligned) to the ground truth in training and to the output size at
inference.

Padding frames (``frame_valid`` False; AVSS clips padded to 10 frames) are zeroed at the
input, in the audio tokens and after the head's projections, as in the authors' AVSS model,
and are left out of the losses and the outputs.

Building the model reads no file: pretrained encoders are loaded by the trainer at the start
of training (``load_pretrained_encoders``), and a trained checkpoint (``MODEL.WEIGHTS``) holds
everything inference needs.
"""
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.modeling import (
    META_ARCH_REGISTRY,
    SEM_SEG_HEADS_REGISTRY,
    build_backbone,
    build_sem_seg_head,
)

from .modeling.audio import VGGish
from .modeling.criterion import SelMCriterion
from .modeling.dam import DAM
from .modeling.head import SelMHead
from .utils import ConfigError

__all__ = ["SelM", "OUTPUT_FORMATS"]

# What inference returns per clip (the optional "output_format" key of an input clip dict).
OUTPUT_FORMATS = ("probs", "labels")


@META_ARCH_REGISTRY.register()
class SelM(nn.Module):
    """SelM for S4/MS3 (binary) and AVSS (semantic) audio-visual segmentation."""

    @configurable
    def __init__(self, *, backbone, audio_encoder, audio_proj, dam, sem_seg_head, criterion,
                 num_classes, pixel_mean, pixel_std, return_maps=False):
        """
        NOTE: this interface is experimental.

        Args:
            backbone: staged visual encoder (``stage_names``, ``forward_stem``,
                ``forward_stage``).
            audio_encoder: VGGish, [N, 1, 96, 64] log-mel -> [N, E] embeddings.
            audio_proj: [N, E] -> [N, d] audio tokens (Linear + LayerNorm).
            dam: nn.ModuleDict {stage: DAM}, one per visual stage.
            sem_seg_head: a ``SelMHead``.
            criterion: SelMCriterion.
            num_classes: K (1 = binary).
            pixel_mean, pixel_std: per-channel normalisation of the RGB 0..255 input.
            return_maps: add CLEVER's hit maps and BCSM's audio gates to inference outputs.
        """
        super().__init__()
        self.backbone = backbone
        self.audio_encoder = audio_encoder
        self.audio_proj = audio_proj
        self.dam = dam
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_classes = num_classes
        self.return_maps = return_maps
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        selm = cfg.MODEL.SELM
        head_name = cfg.MODEL.SEM_SEG_HEAD.NAME
        if not issubclass(SEM_SEG_HEADS_REGISTRY.get(head_name), SelMHead):
            raise ConfigError(
                "MODEL.SEM_SEG_HEAD.NAME={!r} is not a SelM head: SelM needs \"SelMHead\" (or a "
                "subclass of selm_d2.modeling.SelMHead). detectron2's default is "
                "SemSegFPNHead; configs/Base-SelM.yaml sets SelMHead.".format(head_name))
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        audio_encoder = VGGish(cfg)
        dim = selm.HIDDEN_DIM
        return {
            "backbone": backbone,
            "audio_encoder": audio_encoder,
            "audio_proj": nn.Sequential(nn.Linear(selm.AUDIO.FC_DIMS[-1], dim),
                                        nn.LayerNorm(dim)),
            "dam": nn.ModuleDict({
                name: DAM(shapes[name].channels, dim, dropout=selm.DAM.DROPOUT,
                          audio_attention=selm.DAM.AUDIO_ATTENTION)
                for name in backbone.stage_names}),
            "sem_seg_head": build_sem_seg_head(cfg, shapes),
            "criterion": SelMCriterion(cfg),
            "num_classes": selm.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "return_maps": selm.RETURN_MAPS,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def _preprocess(self, batched_inputs):
        """-> normalised frames [B*T, 3, H, W], audio [B*T, 1, 96, 64], valid [B, T]."""
        sizes = {tuple(x["image"].shape) for x in batched_inputs}
        if len(sizes) != 1:
            raise ConfigError("SelM needs clips of equal frame count and size within a batch "
                              "(INPUT.AVS.SIZE / INPUT.AVS.PAD_TO_FRAMES); got image shapes "
                              "{}".format(sorted(sizes)))
        num_frames = next(iter(sizes))[0]
        for x in batched_inputs:
            if x["audio"].shape[0] != num_frames:
                raise ValueError("clip {}: {} frames but {} audio examples".format(
                    x.get("clip_id", "?"), num_frames, x["audio"].shape[0]))
        images = torch.stack([x["image"] for x in batched_inputs]).to(self.device)
        images = images.to(self.pixel_mean.dtype).sub_(self.pixel_mean).div_(self.pixel_std)
        images = images.flatten(0, 1)
        audio = torch.stack([x["audio"] for x in batched_inputs]).to(self.device).flatten(0, 1)
        valid = torch.stack([x.get("frame_valid", torch.ones(num_frames, dtype=torch.bool))
                             for x in batched_inputs]).to(self.device).bool()
        return images, audio, valid

    def forward_logits(self, images, audio, frame_valid):
        """The network on a batch of clips.

        Args:
            images: [B*T, 3, H, W] normalised frames.
            audio: [B*T, 1, 96, 64] log-mel examples.
            frame_valid: [B, T] bool.
        Returns:
            (mask logits [B*T, C_out, H', W'] at the decoder's output size, CLEVER's
             assignment maps (list, coarse to fine, [B*T, num_tokens, h_i, w_i]),
             BCSM's audio gates {stage: [B, T, d]}).
        """
        b, t = frame_valid.shape
        valid = frame_valid.flatten().to(images.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.audio_encoder.frozen):
            embedding = self.audio_encoder(audio)
        tokens = self.audio_proj(embedding) * valid[:, None]
        tokens = tokens[:, :, None]  # [B*T, d, 1]: one audio token per frame
        audio_mask = valid[:, None, None]
        x = self.backbone.forward_stem(images * valid[:, None, None, None])
        features = {}
        for name in self.backbone.stage_names:
            x = self.backbone.forward_stage(name, x)
            x, tokens = self.dam[name](x, tokens, audio_mask)
            features[name] = x
        logits, maps, gates = self.sem_seg_head(features, tokens[:, :, 0].view(b, t, -1),
                                                frame_valid)
        return logits, maps, gates

    def forward(self, batched_inputs):
        """
        Args:
            batched_inputs: list of clip dicts from ``AVSClipDatasetMapper``: "image" uint8
                [T, 3, H, W] RGB, "audio" [T, 1, 96, 64], "frame_valid" [T] (optional), and
                for training "sem_seg" [T, h, w] (255 = ignore) and "frame_mask_flags" [T].
                Optional at inference, to ask for less than full-resolution probabilities:
                "output_size" (h, w) instead of ("height", "width"), and "output_format"
                "labels" instead of "probs" (see ``_postprocess``).
        Returns:
            training: dict of scalar losses (see SelMCriterion).
            inference: list, per clip, of {"sem_seg": [T', K+1, height, width] probabilities}
            (channel 0 = background; T' = real frames), or with "output_format" "labels"
            {"sem_seg_labels": [T', h, w] int64 argmax class, "sem_seg_scores": [T', h, w]
            its probability}; with MODEL.SELM.RETURN_MAPS also "hit_maps" {layer: [T', h_i,
            w_i]} (CLEVER's assignment of pixels to the audio token) and "bcsm_gates"
            {stage: [T', d]}.
        """
        images, audio, valid = self._preprocess(batched_inputs)
        logits, maps, gates = self.forward_logits(images, audio, valid)
        if self.training:
            targets, flags = self._targets(batched_inputs, valid)
            logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear",
                                   align_corners=True)
            return self.criterion(logits, maps, targets, flags)
        return self._postprocess(logits, maps, gates, batched_inputs, valid)

    def _targets(self, batched_inputs, valid):
        """-> targets [B*T, h, w], frame flags [B*T]."""
        for x in batched_inputs:
            if "sem_seg" not in x or "frame_mask_flags" not in x:
                raise ValueError("SelM training needs 'sem_seg' and 'frame_mask_flags' in every "
                                 "clip dict (clip {}); use AVSClipDatasetMapper with "
                                 "is_train=True".format(x.get("clip_id", "?")))
        targets = torch.stack([x["sem_seg"] for x in batched_inputs]).to(self.device).flatten(0, 1)
        flags = torch.stack([x["frame_mask_flags"] for x in batched_inputs]).to(self.device)
        return targets, (flags.bool() & valid).flatten()

    def _postprocess(self, logits, maps, gates, batched_inputs, valid):
        """Per clip: logits [T, C_out, h, w] -> the requested output at ("height", "width"),
        or at "output_size" when the clip dict gives one (one bilinear resize, corners
        aligned, as the authors resize to the ground truth).

        "labels" output is resized one frame at a time, so a 10-frame 1280x720 AVSS clip
        holds one frame's K+1 channels at full size instead of all ten (2.6 GB for 72).
        """
        num_frames = valid.shape[1]
        height, width = batched_inputs[0]["image"].shape[-2:]
        results = []
        for i, x in enumerate(batched_inputs):
            output_format = x.get("output_format", "probs")
            if output_format not in OUTPUT_FORMATS:
                raise ValueError("clip {}: output_format {!r} is unknown: use one of {}".format(
                    x.get("clip_id", "?"), output_format, OUTPUT_FORMATS))
            out_size = tuple(x.get("output_size", (x.get("height", height), x.get("width", width))))
            keep = valid[i]
            clip = logits[i * num_frames:(i + 1) * num_frames][keep]

            def resize(frames):
                return F.interpolate(frames, size=out_size, mode="bilinear", align_corners=True)

            if output_format == "probs":
                result = {"sem_seg": self._probabilities(resize(clip))}
            else:
                scores, labels = zip(*(self._probabilities(resize(frame[None]))[0].max(dim=0)
                                       for frame in clip))
                result = {"sem_seg_labels": torch.stack(labels),
                          "sem_seg_scores": torch.stack(scores)}
            if self.return_maps:
                frames = slice(i * num_frames, (i + 1) * num_frames)
                result["hit_maps"] = {layer: m[frames][keep][:, -1]
                                      for layer, m in enumerate(maps)}
                result["bcsm_gates"] = {stage: g[i][keep] for stage, g in gates.items()}
            results.append(result)
        return results

    def _probabilities(self, logits):
        """[n, C_out, H, W] logits -> [n, K+1, H, W] class probabilities (0 = background)."""
        if self.num_classes == 1:
            fg = logits.sigmoid()
            return torch.cat([1 - fg, fg], dim=1)
        return logits.softmax(dim=1)
