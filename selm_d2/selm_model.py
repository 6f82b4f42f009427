"""SelM meta-architecture: audio-visual segmentation with selective mechanisms.

    frames ──stem── res2 ─DAM─ res3 ─DAM─ res4 ─DAM─ res5 ─DAM─┐
    log-mel ─────── conv1 ─┘── conv2 ─┘── conv3 ─┘── conv4 ─┘── fc (embedding)
        sem_seg_head (SelMHead): per level projections -> BCSM (F^s, T^s) -> CLEVER -> masks
        criterion (SelMCriterion)

Mask2Former's split: encoders, a head from detectron2's ``SEM_SEG_HEADS_REGISTRY``
(``MODEL.SEM_SEG_HEAD.NAME`` "SelMHead", ``modeling/head.py``) and a criterion. DAM (Dual
Alignment Module, §4.2) sits between the encoder stages and its outputs feed the next stage
of *both* encoders (early fusion), so it lives here with the encoders. The head runs BCSM
(Bidirectional Conditioned Selective Mechanism, §4.3) and CLEVER (Cross-LEVEl Reasoning
decoder, §4.4).

Padding frames (``frame_valid`` False; AVSS clips padded to 10 frames) are zeroed after the
head's projections as in the official AVSS model, masked out of CLEVER's audio keys, left out
of the losses and dropped from the outputs.

Only modules whose outputs reach the loss are built: the head builds only what its decoder
reads and says which encoder outputs it reads (``visual_levels``, ``audio_levels``,
``reads_audio``); ``_plan_fusion`` then drops DAM directions that feed nothing read, and
encoder parts that must keep the pretrained layout but feed nothing are frozen.
Multi-process (DDP) training then needs no ``find_unused_parameters``.

Building the model reads no file: pretrained encoders are loaded by the trainer at the start
of training (``load_pretrained_encoders``), and a trained checkpoint (``MODEL.WEIGHTS``) holds
everything inference needs.
"""
import logging
import math

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
from .modeling.dam import build_dam, dam_writes
from .modeling.head import SelMHead

__all__ = ["SelM", "OUTPUT_FORMATS"]

logger = logging.getLogger(__name__)

# What inference returns per clip (the optional "output_format" key of an input clip dict).
OUTPUT_FORMATS = ("probs", "labels")


def _plan_fusion(stage_names, dam_mode, dam_stages, read_visual, audio_levels, reads_audio):
    """Which DAM directions to build and which encoder stages can learn, from what is read.

    Walks the stages from the last to the first: a stage's visual (audio) output is needed when
    a decoder level reads it, or the next stage needs its input. The last audio stage also
    feeds the VGGish embedding, which is read whenever audio tokens are.

    Args:
        stage_names: paired encoder stages, first to last (visual names).
        dam_mode, dam_stages: MODEL.SELM.DAM.MODE and STAGES.
        read_visual: visual stages the head reads (``SelMHead.visual_levels``).
        audio_levels: stages whose audio tokens the head reads (``audio_levels``).
        reads_audio: whether the head reads audio at all (``reads_audio``).
    Returns:
        ({stage: set of DAM directions to build, subset of {"visual", "audio"} (what it
        writes)}, {stage: (visual stage trains, audio stage trains)}).
    """
    build, trains = {}, {}
    need_v_in = need_a_in = False  # does the next stage need this stage's outputs?
    for i, stage in reversed(list(enumerate(stage_names))):
        last = i == len(stage_names) - 1
        need_v = stage in read_visual or need_v_in
        need_a = reads_audio and (last or stage in audio_levels) or need_a_in
        writes = dam_writes(dam_mode) if stage in dam_stages else set()
        build[stage] = {d for d in writes if (need_v if d == "visual" else need_a)}
        # Each DAM direction reads the other modality's tokens of this stage.
        need_v_in = need_v or "audio" in build[stage]
        need_a_in = need_a or "visual" in build[stage]
        trains[stage] = (need_v_in, need_a_in)
    return build, trains


def _freeze_unread_stages(backbone, audio_encoder, trains, audio_stage, reads_audio):
    """Encoder stages (and the VGGish embedding) whose outputs nothing reads cannot learn:
    they are kept, so pretrained files still load, but frozen and said so."""
    frozen = []
    for stage, (visual_trains, audio_trains) in trains.items():
        if not visual_trains:
            frozen.append(("visual stage " + stage, backbone.stage_modules(stage)))
        if not audio_trains:
            frozen.append(("VGGish " + audio_stage[stage],
                           audio_encoder.stage_modules(audio_stage[stage])))
    if not reads_audio:
        frozen.append(("VGGish embedding", [audio_encoder.embeddings]))
    for name, modules in frozen:
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        if params:
            for p in params:
                p.requires_grad_(False)
            logger.info("%s feeds nothing this configuration reads: frozen", name)


@META_ARCH_REGISTRY.register()
class SelM(nn.Module):
    """SelM for S4/MS3 (binary) and AVSS (semantic) audio-visual segmentation."""

    @configurable
    def __init__(self, *, backbone, audio_encoder, dam, sem_seg_head, criterion, num_classes,
                 level_strides, pixel_mean, pixel_std, return_selection_maps=False,
                 size_divisibility=32, encoder_chunk_frames=0):
        """
        NOTE: this interface is experimental.

        Args:
            backbone: staged visual encoder (``stage_names``, ``stem_levels``, ``forward_stem``,
                ``forward_stage``).
            audio_encoder: staged VGGish; visual stage i is paired with audio stage i.
            dam: nn.ModuleDict {visual stage name: DAM variant}; stages not in it are not fused.
            sem_seg_head: a ``SelMHead``: ``forward(features, audio_tokens, embedding,
                frame_valid) -> (outputs, selection maps)``.
            criterion: SelMCriterion.
            num_classes: K (1 = binary).
            level_strides: {level: stride} of every level the head reads: stem levels in it are
                kept from the stem, and selection maps are cropped to the un-padded frame.
            pixel_mean, pixel_std: per-channel normalisation of the RGB 0..255 input.
            return_selection_maps: add BCSM's A2V selection maps to inference outputs.
            size_divisibility: frames are zero-padded (after normalisation) to a multiple.
            encoder_chunk_frames: at inference, run the encoders on at most this many frames
                at a time (0 = all frames of the batch at once); the result does not change.
        """
        super().__init__()
        self.backbone = backbone
        self.audio_encoder = audio_encoder
        self.dam = dam
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_classes = num_classes
        self.level_strides = dict(level_strides)
        self.return_selection_maps = return_selection_maps
        self.size_divisibility = size_divisibility
        self.encoder_chunk_frames = encoder_chunk_frames
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if return_selection_maps and not sem_seg_head.has_selection_map:
            raise ValueError("MODEL.SELM.RETURN_SELECTION_MAPS needs the A2V branch of BCSM: "
                             "set MODEL.SELM.BCSM.MODE to 'a2v' or 'bidirectional'")

    @classmethod
    def from_config(cls, cfg):
        selm = cfg.MODEL.SELM
        backbone = build_backbone(cfg)
        audio_encoder = VGGish(cfg)
        shapes = backbone.output_shape()
        stage_names = list(backbone.stage_names)
        if len(stage_names) != len(audio_encoder.stage_names):
            raise ValueError(
                "SelM pairs each visual stage with a VGGish stage ({}), but the backbone runs "
                "{}: list all of res2..res5 in MODEL.RESNETS.OUT_FEATURES / "
                "MODEL.PVT.OUT_FEATURES".format(list(audio_encoder.stage_names), stage_names))
        missing = [n for n in selm.DAM.STAGES if n not in shapes]
        if missing:
            raise ValueError("MODEL.SELM.DAM.STAGES names {} which the backbone does not output "
                             "(it outputs {}; see MODEL.RESNETS.OUT_FEATURES / "
                             "MODEL.PVT.OUT_FEATURES)".format(missing, sorted(shapes)))
        if len(selm.LOSS.AUX_WEIGHTS) != len(selm.CLEVER.IN_FEATURES):
            raise ValueError("MODEL.SELM.LOSS.AUX_WEIGHTS needs one weight per "
                             "MODEL.SELM.CLEVER.IN_FEATURES level ({}), got {}".format(
                                 len(selm.CLEVER.IN_FEATURES), list(selm.LOSS.AUX_WEIGHTS)))
        if (selm.NUM_CLASSES > 1 and selm.LOSS.SEMANTIC == "bce"
                and selm.CLEVER.MASK_HEAD == "semantic"):
            raise ValueError(
                "MODEL.SELM.LOSS.SEMANTIC 'bce' reads each class channel as an independent "
                "logit, but MODEL.SELM.CLEVER.MASK_HEAD 'semantic' outputs log-probabilities "
                "normalised over the classes: use LOSS.SEMANTIC 'ce' with it")
        head_name = cfg.MODEL.SEM_SEG_HEAD.NAME
        if not issubclass(SEM_SEG_HEADS_REGISTRY.get(head_name), SelMHead):
            raise ValueError(
                "MODEL.SEM_SEG_HEAD.NAME={!r} is not a SelM head: SelM needs \"SelMHead\" (or a "
                "subclass of selm_d2.modeling.SelMHead). detectron2's default is "
                "SemSegFPNHead; configs/Base-SelM.yaml sets SelMHead.".format(head_name))
        # The head may also read the stem's own features (ResNet's stride-2 res1) as a mask level.
        head_shapes = dict(shapes, **backbone.stem_levels)
        sem_seg_head = build_sem_seg_head(cfg, head_shapes)

        audio_stage = dict(zip(stage_names, audio_encoder.stage_names))
        audio_channels = {v: audio_encoder.stage_channels[a] for v, a in audio_stage.items()}
        plan, trains = _plan_fusion(
            stage_names, selm.DAM.MODE, selm.DAM.STAGES,
            read_visual=set(sem_seg_head.visual_levels),
            audio_levels=set(sem_seg_head.audio_levels), reads_audio=sem_seg_head.reads_audio)
        dam = nn.ModuleDict()
        for stage in selm.DAM.STAGES:
            module = build_dam(selm.DAM.MODE, shapes[stage].channels, audio_channels[stage],
                               selm.DAM.DROPOUT, directions=plan[stage],
                               feature_conv=selm.DAM.FEATURE_CONV)
            if module is not None:
                dam[stage] = module
        _freeze_unread_stages(backbone, audio_encoder, trains, audio_stage,
                              sem_seg_head.reads_audio)
        return {
            "backbone": backbone,
            "audio_encoder": audio_encoder,
            "dam": dam,
            "sem_seg_head": sem_seg_head,
            "criterion": SelMCriterion(cfg),
            "num_classes": selm.NUM_CLASSES,
            "level_strides": {name: head_shapes[name].stride
                              for name in sem_seg_head.visual_levels},
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "return_selection_maps": selm.RETURN_SELECTION_MAPS,
            "size_divisibility": max(32, backbone.size_divisibility),
            "encoder_chunk_frames": selm.ENCODER_CHUNK_FRAMES,
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
        images = images.float().sub_(self.pixel_mean).div_(self.pixel_std).flatten(0, 1)
        height, width = images.shape[-2:]
        div = self.size_divisibility
        if height % div or width % div:
            images = F.pad(images, (0, -width % div, 0, -height % div))
        audio = torch.stack([x["audio"] for x in batched_inputs]).to(self.device).flatten(0, 1)
        valid = torch.stack([x.get("frame_valid", torch.ones(num_frames, dtype=torch.bool))
                             for x in batched_inputs]).to(self.device).bool()
        return images, audio, valid

    def _encode(self, images, audio, num_frames):
        """Both encoders stage by stage with DAM in between.

        At inference, frames go through the encoders in chunks of at most
        ``encoder_chunk_frames``. DAM works frame by frame (kernel size 1), so the result is the
        same, while a long clip's stage activations stay small: on CPU, T=40 frames at once cost
        more per frame than T=5 (README, benchmark). Training keeps all frames together so that
        BatchNorm sees the whole batch.

        Returns:
            ({stage: visual features [B*T, C, h, w]}, {stage: audio tokens [B, T, C_a]},
             VGGish embedding [B, T, E] or None when no audio tokens are read).
        """
        chunk = self.encoder_chunk_frames
        if self.training or not chunk or images.shape[0] <= chunk:
            visual, pooled, x_a = self._encode_frames(images, audio)
        else:
            parts = [self._encode_frames(i, a) for i, a in zip(images.split(chunk),
                                                                audio.split(chunk))]
            visual, pooled = ({name: torch.cat([part[k][name] for part in parts])
                               for name in parts[0][k]} for k in (0, 1))
            x_a = torch.cat([part[2] for part in parts])
        tokens = {name: t.view(-1, num_frames, t.shape[1]) for name, t in pooled.items()}
        if not self.sem_seg_head.reads_audio:  # the embedding is not needed
            return visual, tokens, None
        embedding = self.audio_encoder.forward_embedding(x_a)
        return visual, tokens, embedding.view(-1, num_frames, embedding.shape[-1])

    def _encode_frames(self, images, audio):
        """Encoders + DAM on n frames [n, 3, H, W] and their audio [n, 1, 96, 64], as one
        sequence (DAM is per frame, so how frames are grouped does not matter).

        Returns:
            ({stage: visual features [n, C, h, w]}, {stage: pooled audio tokens [n, C_a]},
             last audio stage output [n, C_a4, 6, 4]).
        """
        n = images.shape[0]
        x_v, stem_levels = self.backbone.forward_stem(images)
        x_a = audio
        visual = {name: f for name, f in stem_levels.items() if name in self.level_strides}
        pooled = {}
        for vname, aname in zip(self.backbone.stage_names, self.audio_encoder.stage_names):
            x_v = self.backbone.forward_stage(vname, x_v)
            x_a = self.audio_encoder.forward_stage(aname, x_a)
            if vname in self.dam:
                x_v, x_a = self.dam[vname](x_v, x_a, n)
            visual[vname] = x_v
            pooled[vname] = x_a.mean(dim=(2, 3))
        return visual, pooled, x_a

    def forward(self, batched_inputs):
        """
        Args:
            batched_inputs: list of clip dicts from ``AVSClipDatasetMapper``: "image" uint8
                [T, 3, H, W] RGB, "audio" [T, 1, 96, 64], "frame_valid" [T] (optional), and
                for training "sem_seg" [T, H, W] (255 = ignore) and "frame_mask_flags" [T].
                Optional at inference, to ask for less than full-resolution probabilities:
                "output_size" (h, w) instead of ("height", "width"), and "output_format"
                "labels" instead of "probs" (see ``_postprocess``).
        Returns:
            training: dict of scalar losses (see SelMCriterion).
            inference: list, per clip, of {"sem_seg": [T', K+1, height, width] probabilities}
            (channel 0 = background; T' = real frames), or with "output_format" "labels"
            {"sem_seg_labels": [T', h, w] int64 argmax class, "sem_seg_scores": [T', h, w]
            its probability}; plus "selection_maps" {level: [T', h, w]} when
            RETURN_SELECTION_MAPS is on.
        """
        images, audio, valid = self._preprocess(batched_inputs)
        if self.training:
            targets, flags = self._targets(batched_inputs, images.shape[-2:], valid)
        num_frames = valid.shape[1]
        visual, tokens, embedding = self._encode(images, audio, num_frames)
        outputs, selection = self.sem_seg_head(visual, tokens, embedding, valid,
                                               selection_maps=self.return_selection_maps)
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
        """Per clip: logits [T, C_out, h, w] at the decoder's output stride of the padded frames
        (4 with MASK_FUSION, else 8) -> the requested output at ("height", "width"), or at
        "output_size" when the clip dict gives one.

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
                # detectron2's sem_seg_postprocess: to the padded input, crop, to the output.
                frames = F.interpolate(frames, size=padded_size, mode="bilinear",
                                       align_corners=False)[..., :height, :width]
                if out_size != (height, width):
                    frames = F.interpolate(frames, size=out_size, mode="bilinear",
                                           align_corners=False)
                return frames

            if output_format == "probs":
                result = {"sem_seg": self._probabilities(resize(clip))}
            else:
                scores, labels = zip(*(self._probabilities(resize(frame[None]))[0].max(dim=0)
                                       for frame in clip))
                result = {"sem_seg_labels": torch.stack(labels),
                          "sem_seg_scores": torch.stack(scores)}
            if self.return_selection_maps:
                result["selection_maps"] = {
                    level: maps[i][keep][:, :math.ceil(height / self.level_strides[level]),
                                         :math.ceil(width / self.level_strides[level])]
                    for level, maps in selection.items()}
            results.append(result)
        return results

    def _probabilities(self, logits):
        """[n, C_out, H, W] logits -> [n, K+1, H, W] class probabilities (0 = background)."""
        if self.num_classes == 1:
            fg = logits.sigmoid()
            return torch.cat([1 - fg, fg], dim=1)
        return logits.softmax(dim=1)
