"""Run a trained SelM on one clip (frames + audio) and draw the result with detectron2's Visualizer."""
import logging
import os
import tempfile

import cv2
import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.visualizer import ColorMode, Visualizer

from selm_d2.data import AVSClipDatasetMapper

# The colour of "sounding object" for binary models (detectron2 palette's first warm colour).
_BINARY_COLOR = (1.0, 0.35, 0.1)


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
            ``"sem_seg_scores"`` [T, H0, W0] their probabilities, plus ``"selection_maps"``
            when ``MODEL.SELM.RETURN_SELECTION_MAPS`` is on. Labels, not K+1 probability maps,
            keep a long high-resolution AVSS clip within memory.
        """
        with torch.no_grad():
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
    """Blend a [h, w] map (a BCSM selection map: weights in (0, 1) or, for channel selection,
    feature energies) over the frame as a JET heat map, stretched to the map's own range."""
    height, width = frame_rgb.shape[:2]
    resized = cv2.resize(weight_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    span = resized.max() - resized.min()
    norm = (resized - resized.min()) / span if span > 0 else np.zeros_like(resized)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    return (0.5 * frame_rgb + 0.5 * heat).astype(np.uint8)


def write_image_atomic(path, image):
    """Write an RGB [H, W, 3] or single-channel [H, W] image so that a reader never sees a
    partial file."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    ext = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(suffix=ext, dir=directory)
    os.close(fd)
    try:
        bgr = image[:, :, ::-1] if image.ndim == 3 else image
        if not cv2.imwrite(tmp, np.ascontiguousarray(bgr)):
            raise OSError("could not write image {}".format(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def metadata_for(cfg):
    """Class names/colours of the model's training data (falls back to a binary metadata)."""
    for names in (cfg.DATASETS.TEST, cfg.DATASETS.TRAIN):
        if len(names):
            return MetadataCatalog.get(names[0])
    return MetadataCatalog.get("__selm_demo_binary").set(stuff_classes=["background", "sounding object"])
