"""Run a trained SelM on one clip (frames + audio) and draw the result with detectron2's Visualizer.

Shared by the command-line demo (demo.py) and the web demo (app.py): config, frames of a
clip (a folder or one frame per second of a video), the clip-length policy, prediction and
drawing.
"""
import glob
import logging
import math
import os

import cv2
import numpy as np
import torch
import tqdm

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.utils.visualizer import ColorMode, Visualizer

from selm_d2 import load_config
from selm_d2.data import AVSClipDatasetMapper
from selm_d2.utils import atomic_path, file_name_key

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")

# The colour of "sounding object" for binary models (detectron2 palette's first warm colour).
_BINARY_COLOR = (1.0, 0.35, 0.1)


def setup_cfg(config_file, opts, hit_maps=False):
    """A frozen SelM config from a file and ``KEY VALUE`` overrides; on CPU when CUDA is absent.

    Args:
        hit_maps: also return CLEVER's hit maps and BCSM's gates (MODEL.SELM.RETURN_MAPS).
    """
    cfg = load_config(config_file, opts)
    if hit_maps:
        cfg.MODEL.SELM.RETURN_MAPS = True
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
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
            raise ValueError(
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
        raise FileNotFoundError("no frames ({}) in {}".format(", ".join(IMAGE_EXTS), folder))
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
        raise FileNotFoundError("cannot open video {} (is it a video file OpenCV can decode?)".format(video))
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
        raise ValueError("could not read any frame from {}".format(video))
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


def draw_prediction(frame_rgb, label_map, metadata):
    """Overlay one frame's labels; returns an RGB uint8 image.

    Binary models draw one colour; semantic (AVSS) models draw class colours and names.
    Background (label 0) is never drawn.
    """
    vis = Visualizer(frame_rgb, metadata, instance_mode=ColorMode.IMAGE)
    classes = metadata.get("stuff_classes", None)
    if classes is None or len(classes) <= 2:
        if label_map.any():
            # No label text: one class, and text would cover small frames.
            vis.draw_binary_mask(label_map.astype(np.uint8), color=_BINARY_COLOR, alpha=0.5)
        return vis.output.get_image()
    # detectron2 skips labels >= len(stuff_classes): hide the background that way.
    shown = np.where(label_map == 0, 255, label_map)
    vis.draw_sem_seg(shown, alpha=0.5)
    return vis.output.get_image()


def draw_heatmap(frame_rgb, weight_map):
    """Blend a [h, w] map (a CLEVER hit map: the pixels assigned to the audio token) over the
    frame as a JET heat map, stretched to the map's own range."""
    height, width = frame_rgb.shape[:2]
    resized = cv2.resize(weight_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    span = resized.max() - resized.min()
    norm = (resized - resized.min()) / span if span > 0 else np.zeros_like(resized)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    return (0.5 * frame_rgb + 0.5 * heat).astype(np.uint8)


def finest_level(hit_maps):
    """The decoder layer whose hit maps have the most cells (the most detailed map)."""
    return max(hit_maps, key=lambda level: hit_maps[level][0].numel())


def draw_clip(frame_paths, output, metadata):
    """Draw a predicted clip frame by frame.

    Args:
        frame_paths: the clip's frames; the first ``len(frame_paths)`` predicted frames are drawn.
        output: `AVSPredictor` output of the clip.
        metadata: the model's class names and colours (`metadata_for`).
    Returns:
        list, per frame, of dicts: "frame" (RGB uint8 [H, W, 3]), "overlay" (the prediction
        drawn on it), "labels" (int64 [H, W]: 1 = sounding, or the AVSS class) and "heatmaps"
        ({layer: CLEVER hit map drawn on the frame}; empty without hit maps).
    """
    labels = output["sem_seg_labels"].cpu().numpy()
    maps = output.get("hit_maps", {})
    drawn = []
    for k, path in enumerate(tqdm.tqdm(frame_paths, desc="drawing", unit="frame")):
        frame = read_image(path, format="RGB")
        drawn.append({
            "frame": frame,
            "overlay": draw_prediction(frame, labels[k], metadata),
            "labels": labels[k],
            "heatmaps": {level: draw_heatmap(frame, m[k].float().cpu().numpy()) for level, m in maps.items()},
        })
    return drawn


def enlarge(image, min_side):
    """Scale [H, W, ...] up by a whole factor, each pixel repeated (nearest neighbour), until
    the short side is >= min_side. Any dtype: label maps too, so outlines can be drawn on the
    enlarged frame instead of enlarging a drawing of a small one."""
    factor = math.ceil(min_side / min(image.shape[:2]))
    if factor <= 1:
        return image
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def write_image_atomic(path, image):
    """Write an RGB [H, W, 3] or single-channel [H, W] image so that a reader never sees a
    partial file."""
    bgr = image[:, :, ::-1] if image.ndim == 3 else image
    with atomic_path(path) as tmp:
        if not cv2.imwrite(tmp, np.ascontiguousarray(bgr)):
            raise OSError("could not write image {}".format(path))


def metadata_for(cfg):
    """Class names/colours of the model's training data (falls back to a binary metadata)."""
    for names in (cfg.DATASETS.TEST, cfg.DATASETS.TRAIN):
        if len(names):
            return MetadataCatalog.get(names[0])
    return MetadataCatalog.get("__selm_demo_binary").set(stuff_classes=["background", "sounding object"])
