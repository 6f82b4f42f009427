"""Run a trained SelM on one clip (frames + audio), as detectron2's DefaultPredictor does for
an image: the config, the frames of a clip (a folder, or one frame per second of a video), the
clip-length policy and the prediction. Used by the demos and ``tools/run_demo.py``.
"""
import glob
import logging
import os

import cv2
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from ..config import load_config
from ..data import AVSClipDatasetMapper
from ..utils import ConfigError, DataError, MissingFileError, file_name_key
from .defaults import fall_back_to_cpu

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


def setup_cfg(config_file, opts, hit_maps=False):
    """A frozen SelM config from a file and ``KEY VALUE`` overrides; on CPU when CUDA is absent.

    Args:
        hit_maps: also return CLEVER's hit maps and BCSM's gates (MODEL.SELM.RETURN_MAPS).
    """
    cfg = load_config(config_file, opts)
    if hit_maps:
        cfg.MODEL.SELM.RETURN_MAPS = True
    fall_back_to_cpu(cfg)
    cfg.freeze()
    return cfg


class AVSPredictor:
    """Builds SelM from a config, loads ``MODEL.WEIGHTS`` and predicts one clip.

    The clip goes through the same test-time mapper as evaluation, so resizing and audio
    features are identical to what the model saw in ``train_net.py --eval-only``.
    """

    def __init__(self, cfg, allow_random_weights=False):
        """
        Args:
            cfg: a SelM config; ``MODEL.WEIGHTS`` names the trained checkpoint.
            allow_random_weights: run an untrained model when ``MODEL.WEIGHTS`` is empty
                (for trying the pipeline only); otherwise that is an error.
        """
        if not cfg.MODEL.WEIGHTS and not allow_random_weights:
            raise ConfigError(
                "MODEL.WEIGHTS is empty: the demo would segment with an untrained, random model. "
                "Pass a trained checkpoint (--opts MODEL.WEIGHTS output/model_final.pth; `make demo` "
                "writes one to output/demo/selm/model_final.pth), or --allow-random-weights to run "
                "the pipeline without one.")
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if cfg.MODEL.WEIGHTS:
            DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        else:
            logging.getLogger(__name__).warning(
                "MODEL.WEIGHTS is empty: running an untrained model (--allow-random-weights)")
        self.mapper = AVSClipDatasetMapper(self.cfg, is_train=False)

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict: a clip dict (frame paths, audio path, ...; see selm_d2.data).
        Returns:
            dict: the model output for the clip at its original size: ``"sem_seg_labels"``
            [T, H0, W0] int64 (binary: 1 = sounding; AVSS: class index) and
            ``"sem_seg_scores"`` [T, H0, W0] their probabilities, plus ``"hit_maps"``
            when ``MODEL.SELM.RETURN_MAPS`` is on. Labels, not K+1 probability maps,
            keep a long high-resolution AVSS clip within memory.
        """
        with torch.inference_mode():
            return self.model([self.mapper(dict(dataset_dict, output_format="labels"))])[0]


def clip_dict(frame_paths, audio_path, clip_id="demo"):
    """A dataset dict for an unannotated clip given its frame files and audio file."""
    from PIL import Image

    with Image.open(frame_paths[0]) as im:
        width, height = im.size
    return {
        "clip_id": clip_id,
        "file_names": list(frame_paths),
        "sem_seg_file_names": [None] * len(frame_paths),
        "mask_format": "binary",
        "audio_file_name": audio_path,
        "audio_log_mel_file": None,
        "height": height,
        "width": width,
    }


def list_frames(folder):
    """The frame images of a folder, in natural order of their names."""
    frames = sorted((p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(IMAGE_EXTS)),
                    key=file_name_key)
    if not frames:
        raise MissingFileError("no frames ({}) in {}".format(", ".join(IMAGE_EXTS), folder))
    return frames


def extract_video_frames(video, num_frames, out_dir):
    """One frame per second, at 15/16 of each second as AVSBench's preprocessing samples.

    Takes at most `num_frames` seconds, and only seconds that begin within the video: a last,
    partial second gets the video's last frame. Frames are decoded in order rather than
    seeked to, since containers often report frame counts and seek points inexactly.
    Returns the paths of the PNGs written to `out_dir`.
    """
    cap = cv2.VideoCapture(video)
    if not cap.isOpened():
        raise DataError("cannot open video {} (is it a video file OpenCV can decode?)".format(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    paths, frame, index = [], None, -1
    for second in range(num_frames):
        target = int((second + 15 / 16) * fps)
        while index < target:
            ok, decoded = cap.read()
            if not ok:
                break
            frame, index = decoded, index + 1
        if frame is None or index < second * fps:  # the video ended before this second began
            break
        path = os.path.join(out_dir, "{}.png".format(second))
        cv2.imwrite(path, frame)
        paths.append(path)
    cap.release()
    if not paths:
        raise DataError("could not read any frame from {}".format(video))
    return paths


def fit_clip_length(frame_paths, cfg):
    """The frames to predict for a clip of one frame per second, at the config's clip length.

    The data pipeline trims audio to ``INPUT.AVS.NUM_FRAMES`` seconds and pads short audio by
    ``INPUT.AVS.AUDIO.SHORT_POLICY``; frames follow the same rule. A longer clip keeps its
    first NUM_FRAMES frames. A shorter one is passed as it is when the config pads clips
    (``PAD_TO_FRAMES``, AVSS: the mapper adds padding frames that are not predicted), and
    otherwise gets its last frame repeated, as "repeat_last" repeats the last audio second.

    Returns:
        (frame paths for the model, how many of them are the clip's own seconds).
    """
    avs = cfg.INPUT.AVS
    own = list(frame_paths[:avs.NUM_FRAMES])
    if len(own) < avs.NUM_FRAMES and avs.PAD_TO_FRAMES < avs.NUM_FRAMES:
        return own + own[-1:] * (avs.NUM_FRAMES - len(own)), len(own)
    return own, len(own)


def metadata_for(cfg):
    """Class names/colours of the model's training data (falls back to a binary metadata)."""
    for names in (cfg.DATASETS.TEST, cfg.DATASETS.TRAIN):
        if len(names):
            return MetadataCatalog.get(names[0])
    return MetadataCatalog.get("__selm_demo_binary").set(stuff_classes=["background", "sounding object"])
