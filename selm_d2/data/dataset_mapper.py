"""Clip-level dataset mapper: frames, masks and audio of one clip -> model input tensors."""
import copy
import os
import sys

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .audio import RESAMPLERS, load_audio_examples, silent_examples
from .masks import IGNORE_LABEL, read_clip_masks
from ..utils import ConfigError, DataError, MissingFileError

__all__ = ["AVSClipDatasetMapper", "ClipCenterCrop"]

AUDIO_SOURCES = ("auto", "wav", "log_mel", "silence")
CROP_TYPES = ("center", "random")


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


class ClipCenterCrop(T.Augmentation):
    """Crop the centre ``crop_size x crop_size`` (clipped to the image), as torchvision's
    CenterCrop used by the official AVSS training loader."""

    def __init__(self, crop_size):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        crop_h, crop_w = min(self.crop_size, h), min(self.crop_size, w)
        top = int(round((h - crop_h) / 2.0))
        left = int(round((w - crop_w) / 2.0))
        return T.CropTransform(left, top, crop_w, crop_h)


class AVSClipDatasetMapper:
    """Map one clip dict (see ``selm_d2.data.datasets``) to the model's input dict.

    One random transform is drawn per clip and applied to all its frames and masks, so the
    frames stay aligned with each other and with their masks:

    - train: resize the short edge to ``size * s`` (s uniform in `scale_range`), crop
      ``size x size`` (centre or random), optional horizontal flip. A crop larger than the
      resized frame (s < 1) is padded at the bottom/right (image 0, sem_seg ignore).
    - test: resize to ``size x size`` (masks with nearest neighbour).

    Output (T = frames after padding to `pad_to_frames`):
        "image": uint8 [T, 3, H, W] RGB 0..255 (the model normalises),
        "audio": float32 [T, 1, 96, 64] VGGish log-mel examples (zeros on padding frames),
        "sem_seg": int64 [T, H, W] (or mask_size x mask_size); binary 0/1 or AVSS class index; `ignore_label` on
            unannotated and padding frames,
        "frame_mask_flags": bool [T] (frame has ground truth),
        "frame_valid": bool [T] (False = padding frame),
        "height", "width": the original frame size; the other fields of the clip dict are
        kept ("clip_id", "file_names", "sem_seg_file_names", "mask_format", ...).

    Audio: the precomputed ``audio_log_mel_file`` (AVSBench ``<name>.pkl``, used only when
    it pairs with ``audio_file_name`` ``<name>.wav``) when `audio_source` is "log_mel", or
    "auto" and the dict has one; else ``audio_file_name``. So replacing
    ``audio_file_name`` with another clip's audio is enough to swap the audio (illusion
    evaluation); a dict with ``"audio_override": "silence"`` gets the log-mel of digital
    silence instead.
    """

    @configurable
    def __init__(self, is_train=True, *, size, crop, random_flip, scale_range, num_frames,
                 pad_to_frames, audio_source, short_audio_policy, sample_rate,
                 resampler="resampy", mask_size=0, ignore_label=IGNORE_LABEL):
        """
        NOTE: this interface is experimental.

        Args:
            is_train: training (random resize/crop/flip) or test (fixed resize) transforms.
            size: output frame side (INPUT.AVS.SIZE).
            crop: "center" | "random" training crop (INPUT.AVS.CROP).
            random_flip: horizontal flip with probability 0.5 in training.
            scale_range: (min, max) short-edge scale jitter in training, relative to `size`.
            num_frames: frames per clip (INPUT.AVS.NUM_FRAMES); a clip may have fewer only
                when padding (`pad_to_frames` >= num_frames) makes batches uniform.
            pad_to_frames: pad clips with fewer frames to this many (0 = no padding).
            audio_source: "auto" | "wav" | "log_mel" | "silence" (INPUT.AVS.AUDIO.SOURCE).
            short_audio_policy: "repeat_last" | "zero_pad" for audio shorter than the clip.
            sample_rate: the audio front-end's rate (INPUT.AVS.AUDIO.SAMPLE_RATE).
            resampler: "resampy" | "polyphase" for audio not at 16 kHz
                (INPUT.AVS.AUDIO.RESAMPLER).
            mask_size: side of "sem_seg" (nearest neighbour) when it differs from the frames'
                (INPUT.AVS.MASK_SIZE; 0 = the frames' size).
            ignore_label: sem_seg value of unannotated pixels and frames.
        """
        if crop not in CROP_TYPES:
            raise ConfigError("INPUT.AVS.CROP is {!r}; expected one of {}.".format(crop, CROP_TYPES))
        if audio_source not in AUDIO_SOURCES:
            raise ConfigError("INPUT.AVS.AUDIO.SOURCE is {!r}; expected one of {}.".format(
                audio_source, AUDIO_SOURCES))
        if resampler not in RESAMPLERS:
            raise ConfigError("INPUT.AVS.AUDIO.RESAMPLER is {!r}; expected one of {}.".format(
                resampler, RESAMPLERS))
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ConfigError("INPUT.AVS.SCALE_RANGE must be [min, max] with 0 < min <= max; "
                              "got {}.".format(list(scale_range)))
        if num_frames < 1 or pad_to_frames < 0:
            raise ConfigError("INPUT.AVS.NUM_FRAMES must be >= 1 and PAD_TO_FRAMES >= 0; got "
                              "{} and {}.".format(num_frames, pad_to_frames))
        self.is_train = is_train
        self.size = size
        self.num_frames = num_frames
        self.pad_to_frames = pad_to_frames
        self.audio_source = audio_source
        self.short_audio_policy = short_audio_policy
        self.sample_rate = sample_rate
        self.resampler = resampler
        self.ignore_label = ignore_label
        self.mask_size = mask_size
        if is_train:
            short_edges = (int(round(size * scale_range[0])), int(round(size * scale_range[1])))
            augmentations = [
                T.ResizeShortestEdge(short_edges, max_size=sys.maxsize, sample_style="range"),
                ClipCenterCrop(size) if crop == "center"
                else T.RandomCrop("absolute", (size, size)),
            ]
            if random_flip:
                augmentations.append(T.RandomFlip(prob=0.5, horizontal=True, vertical=False))
        else:
            augmentations = [T.Resize((size, size))]
        self.augmentations = T.AugmentationList(augmentations)

    @classmethod
    def from_config(cls, cfg, is_train=True):
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        ignore_label = IGNORE_LABEL
        if len(names):
            ignore_label = MetadataCatalog.get(names[0]).get("ignore_label", IGNORE_LABEL)
        avs = cfg.INPUT.AVS
        return {
            "is_train": is_train,
            "size": avs.SIZE,
            "crop": avs.CROP,
            "random_flip": avs.RANDOM_FLIP,
            "scale_range": tuple(avs.SCALE_RANGE),
            "num_frames": avs.NUM_FRAMES,
            "pad_to_frames": avs.PAD_TO_FRAMES,
            "audio_source": avs.AUDIO.SOURCE,
            "short_audio_policy": avs.AUDIO.SHORT_POLICY,
            "sample_rate": avs.AUDIO.SAMPLE_RATE,
            "resampler": avs.AUDIO.RESAMPLER,
            "mask_size": avs.MASK_SIZE,
            "ignore_label": ignore_label,
        }

    def _check_length(self, dataset_dict):
        count = len(dataset_dict["file_names"])
        if count > self.num_frames or (count < self.num_frames
                                       and self.pad_to_frames < self.num_frames):
            raise ConfigError(
                "Clip {!r} has {} frames but INPUT.AVS.NUM_FRAMES is {} (PAD_TO_FRAMES {}). Set "
                "NUM_FRAMES to the longest clip's frame count, and PAD_TO_FRAMES to it when clip "
                "lengths differ (AVSS mixes 5- and 10-frame clips).".format(
                    dataset_dict["clip_id"], count, self.num_frames, self.pad_to_frames)
            )
        if len(dataset_dict["sem_seg_file_names"]) != count:
            raise DataError("Clip {!r} has {} frames but {} mask entries; give one entry per "
                            "frame (None = not annotated).".format(
                                dataset_dict["clip_id"], count,
                                 len(dataset_dict["sem_seg_file_names"])))
        return count

    @staticmethod
    def _read_frames(dataset_dict):
        """Frames of the clip, uint8 [T_clip, H0, W0, 3] RGB."""
        frames = []
        for path in dataset_dict["file_names"]:
            try:
                frame = utils.read_image(path, format="RGB")
            except FileNotFoundError as e:
                raise MissingFileError(
                    "Frame file not found: {} (clip {!r}). Run `python -m "
                    "selm_d2.data.check_avsbench <root>` to list every missing file.".format(
                        path, dataset_dict["clip_id"])
                ) from e
            except (OSError, ValueError) as e:
                raise DataError("Cannot decode frame {} (clip {!r}): {}. Replace the file with "
                                "a valid image.".format(path, dataset_dict["clip_id"], e)) from e
            if frames and frame.shape != frames[0].shape:
                raise DataError(
                    "Frame {} is {}x{} (WxH) but the first frame of clip {!r} is {}x{}: all "
                    "frames of a clip must have the same size.".format(
                        path, frame.shape[1], frame.shape[0], dataset_dict["clip_id"],
                        frames[0].shape[1], frames[0].shape[0])
                )
            frames.append(frame)
        return np.stack(frames)

    def _read_audio(self, dataset_dict, count):
        """Log-mel examples float32 [count, 1, 96, 64]."""
        override = dataset_dict.get("audio_override")
        if override is None and self.audio_source == "silence":
            override = "silence"  # the visual-only twin: every clip hears digital silence
        if override is not None:
            if override != "silence":
                raise DataError("Clip {!r}: audio_override {!r} is not supported; use "
                                "'silence' or replace audio_file_name.".format(
                                    dataset_dict["clip_id"], override))
            return silent_examples(count)
        path = dataset_dict["audio_file_name"]
        log_mel = dataset_dict.get("audio_log_mel_file")
        # AVSBench pairs <name>.wav with <name>.pkl; a pickle of another name is stale after
        # audio_file_name was swapped (illusion evaluation), so the wav wins.
        if log_mel and _stem(log_mel) != _stem(path):
            log_mel = None
        if self.audio_source == "log_mel":
            if not log_mel:
                raise MissingFileError(
                    "Clip {!r} has no precomputed log-mel file paired with {} "
                    "(audio_log_mel_file; AVSBench ships them for S4/MS3 only) but "
                    "INPUT.AVS.AUDIO.SOURCE is 'log_mel': set it to 'auto' or 'wav'.".format(
                        dataset_dict["clip_id"], path)
                )
            path = log_mel
        elif self.audio_source == "auto" and log_mel:
            path = log_mel
        return load_audio_examples(path, count, self.short_audio_policy, self.sample_rate,
                                   self.resampler)

    def _pad_spatially(self, frames, masks):
        """Pad frames [T,h,w,3] / masks [T,h,w] at the bottom/right to size x size (train
        crops of frames smaller than the crop)."""
        pad_h, pad_w = self.size - frames.shape[1], self.size - frames.shape[2]
        if not self.is_train or (pad_h <= 0 and pad_w <= 0):
            return frames, masks
        pad_h, pad_w = max(pad_h, 0), max(pad_w, 0)
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        masks = np.pad(masks, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=self.ignore_label)
        return frames, masks

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict: one clip dict (see the class docstring).
        Returns:
            dict: the model input of the clip.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        count = self._check_length(dataset_dict)
        frames = self._read_frames(dataset_dict)
        # The decoded size is authoritative (EXIF rotation); masks must match it.
        dataset_dict["height"], dataset_dict["width"] = frames.shape[1:3]
        masks = read_clip_masks(dataset_dict, self.ignore_label)

        transforms = self.augmentations(T.AugInput(frames[0]))
        frames = np.stack([transforms.apply_image(frame) for frame in frames])
        masks = np.stack([transforms.apply_segmentation(mask) for mask in masks])
        frames, masks = self._pad_spatially(frames, masks)
        if self.mask_size and masks.shape[1:] != (self.mask_size, self.mask_size):
            resize = T.ResizeTransform(masks.shape[1], masks.shape[2], self.mask_size,
                                       self.mask_size)
            masks = np.stack([resize.apply_segmentation(mask) for mask in masks])
        audio = self._read_audio(dataset_dict, count)
        annotated = [path is not None for path in dataset_dict["sem_seg_file_names"]]

        pad = max(self.pad_to_frames - count, 0)
        image = torch.as_tensor(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))
        sem_seg = torch.as_tensor(masks.astype(np.int64))
        if pad:
            height, width = image.shape[-2:]
            image = torch.cat([image, image.new_zeros((pad, 3, height, width))])
            sem_seg = torch.cat([sem_seg, sem_seg.new_full((pad,) + tuple(sem_seg.shape[1:]),
                                                           self.ignore_label)])
            # Zero features on padding frames, as the official AVSS loader.
            audio = torch.cat([audio, audio.new_zeros((pad,) + tuple(audio.shape[1:]))])
        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["audio"] = audio
        dataset_dict["frame_mask_flags"] = torch.tensor(annotated + [False] * pad)
        dataset_dict["frame_valid"] = torch.tensor([True] * count + [False] * pad)
        return dataset_dict
